//! Logging: one line per request and every lifecycle event, to stderr (journald collects it) and
//! optionally to `LOG_DIR/LOG_FILE_NAME` (`stonescriptdb-gateway.log` unless set), as text or JSON.
//! Callers pass only what is safe to print: never passwords, tokens or call parameter values.

use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::keys::{DEFAULT_LOG_FILE_NAME, OLD_LOG_FILE_NAME};
use crate::config::{Level, LogConfig};
use crate::json::write_string;

struct Logger {
    level: Level,
    json: bool,
    file: Option<Mutex<File>>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Installs the logger once; later calls (e.g. several gateways in one test process) keep the first.
///
/// Earlier versions always wrote `LOG_DIR/gateway.log`. That file is left alone; when it is there and
/// the name is the new default, a warning says where the lines go now and how to keep the old name
/// (`LOG_FILE_NAME=gateway.log`), so whoever still reads the old file finds out from the new one.
pub fn init(cfg: &LogConfig) -> std::io::Result<()> {
    let mut old_file = None;
    let file = match (&cfg.dir, cfg.file_path()) {
        (Some(dir), Some(path)) => {
            std::fs::create_dir_all(dir)?;
            let old = dir.join(OLD_LOG_FILE_NAME);
            if cfg.file_name == DEFAULT_LOG_FILE_NAME && old.is_file() {
                old_file = Some((old, path.clone()));
            }
            Some(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?))
        }
        _ => None,
    };
    let _ = LOGGER.set(Logger { level: cfg.level, json: cfg.json, file });
    if let Some((old, new)) = old_file {
        warn(
            "the log file has a new name; the old one is no longer written (LOG_FILE_NAME=gateway.log keeps the old name)",
            &[("old", &old.display()), ("new", &new.display())],
        );
    }
    Ok(())
}

pub fn enabled(level: Level) -> bool {
    match LOGGER.get() {
        Some(l) => level <= l.level,
        None => level <= Level::Info,
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// UTC time as `2026-11-27T18:34:44.549Z`, computed without a time crate.
pub fn timestamp() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, dd) = civil_from_days(days);
    format!("{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_millis())
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Writes one event with key/value fields.
pub fn event(level: Level, msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    if !enabled(level) {
        return;
    }
    let json = LOGGER.get().is_some_and(|l| l.json);
    let mut line = Vec::with_capacity(128);
    if json {
        line.extend_from_slice(b"{\"ts\":");
        write_string(&mut line, &timestamp());
        line.extend_from_slice(b",\"level\":");
        write_string(&mut line, level_name(level));
        line.extend_from_slice(b",\"msg\":");
        write_string(&mut line, msg);
        for (k, v) in fields {
            line.push(b',');
            write_string(&mut line, k);
            line.push(b':');
            let v = v.to_string();
            if is_plain_number(&v) || v == "true" || v == "false" {
                // Counts, durations, statuses and flags keep their JSON types.
                line.extend_from_slice(v.as_bytes());
            } else {
                write_string(&mut line, &v);
            }
        }
        line.extend_from_slice(b"}\n");
    } else {
        let _ = write!(line, "{} {:<5} {}", timestamp(), level_name(level), msg);
        for (k, v) in fields {
            let v = v.to_string();
            if v.contains(' ') || v.is_empty() {
                let _ = write!(line, " {k}={v:?}");
            } else {
                let _ = write!(line, " {k}={v}");
            }
        }
        line.push(b'\n');
    }
    let _ = std::io::stderr().write_all(&line);
    if let Some(f) = LOGGER.get().and_then(|l| l.file.as_ref()) {
        if let Ok(mut f) = f.lock() {
            let _ = f.write_all(&line);
        }
    }
}

/// `0`, `42`, `-3`, `1.25`: written as a JSON number. Leading zeros (`007`, an id) stay text.
fn is_plain_number(v: &str) -> bool {
    let digits = v.strip_prefix('-').unwrap_or(v);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let all_digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    all_digits(int) && (int == "0" || !int.starts_with('0')) && frac.is_none_or(all_digits)
}

pub fn error(msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    event(Level::Error, msg, fields)
}

pub fn warn(msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    event(Level::Warn, msg, fields)
}

pub fn info(msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    event(Level::Info, msg, fields)
}

pub fn debug(msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    event(Level::Debug, msg, fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_flags_are_recognised_and_nothing_else() {
        for v in ["0", "42", "-3", "1.25", "200"] {
            assert!(is_plain_number(v), "{v}");
        }
        for v in ["", "-", "007", "1.", ".5", "1e3", "127.0.0.1", "12ab", "1.2.3"] {
            assert!(!is_plain_number(v), "{v}");
        }
    }

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
