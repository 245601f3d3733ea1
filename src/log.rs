//! Logging: request lines (`LOG_REQUESTS`) and every lifecycle event, to stderr (journald collects it)
//! and optionally to `LOG_DIR/LOG_FILE_NAME` (`stonescriptdb-gateway.log` unless set), as text or JSON.
//! Callers only format and queue a line; one writer thread does the writing, so a stalled reader never
//! blocks an event loop (lines are dropped and counted instead).
//! Callers pass only what is safe to print: never passwords, tokens or call parameter values.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::keys::{DEFAULT_LOG_FILE_NAME, OLD_LOG_FILE_NAME};
use crate::config::{Level, LogConfig, RequestLog};
use crate::json::write_string;

/// Lines waiting for the writer thread. A stalled reader of stderr (a hung journald or pipe) fills
/// it; then lines are dropped and counted instead of ever blocking an event loop.
const QUEUE_LINES: usize = 16_384;

enum Item {
    Line(Arc<[u8]>),
    /// Everything queued before it is written; then the sender is told.
    Flush(SyncSender<()>),
}

/// One output (stderr, the file) with its own writer thread and queue, so a stalled stderr reader
/// does not stop the file either.
struct Sink {
    tx: SyncSender<Item>,
}

struct Logger {
    level: Level,
    json: bool,
    requests: RequestLog,
    slow_us: u128,
    sinks: Vec<Sink>,
    /// Lines a full queue refused, not yet reported; the first sink that can write reports them.
    dropped: Arc<AtomicU64>,
    dropped_total: AtomicU64,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Set by SIGHUP and SIGUSR1: the writer reopens the log file (after logrotate renamed it).
static REOPEN: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Installs the logger once; later calls (e.g. several gateways in one test process) keep the first.
/// Lines are written by threads of their own, one for stderr and one for the file when `LOG_DIR` is
/// set.
///
/// Earlier versions always wrote `LOG_DIR/gateway.log`. That file is left alone; when it is there and
/// the name is the new default, a warning says where the lines go now and how to keep the old name
/// (`LOG_FILE_NAME=gateway.log`), so whoever still reads the old file finds out from the new one.
pub fn init(cfg: &LogConfig) -> std::io::Result<()> {
    let mut old_file = None;
    let file = match (&cfg.dir, cfg.file_path()) {
        (Some(dir), Some(path)) => {
            let named = |e: std::io::Error| {
                std::io::Error::new(e.kind(), format!("{} (LOG_DIR={}): {e}", path.display(), dir.display()))
            };
            std::fs::create_dir_all(dir).map_err(named)?;
            let old = dir.join(OLD_LOG_FILE_NAME);
            if cfg.file_name == DEFAULT_LOG_FILE_NAME && old.is_file() {
                old_file = Some((old, path.clone()));
            }
            Some((open(&path).map_err(named)?, path))
        }
        _ => None,
    };
    if LOGGER.get().is_some() {
        return Ok(());
    }
    let dropped = Arc::new(AtomicU64::new(0));
    let reopen = REOPEN.get_or_init(|| Arc::new(AtomicBool::new(false))).clone();
    let mut sinks = vec![start_sink("log-stderr", Output::Stderr, dropped.clone())?];
    if let Some((f, path)) = file {
        sinks.push(start_sink("log-file", Output::File { file: f, path, reopen }, dropped.clone())?);
    }
    let _ = LOGGER.set(Logger {
        level: cfg.level,
        json: cfg.json,
        requests: cfg.requests,
        slow_us: cfg.slow.as_micros(),
        sinks,
        dropped,
        dropped_total: AtomicU64::new(0),
    });
    if let Some((old, new)) = old_file {
        warn(
            "the log file has a new name; the old one is no longer written (LOG_FILE_NAME=gateway.log keeps the old name)",
            &[("old", &old.display()), ("new", &new.display())],
        );
    }
    Ok(())
}

fn open(path: &PathBuf) -> std::io::Result<File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

enum Output {
    Stderr,
    File { file: File, path: PathBuf, reopen: Arc<AtomicBool> },
}

impl Output {
    fn write(&mut self, line: &[u8]) {
        let _ = match self {
            Output::Stderr => std::io::stderr().write_all(line),
            Output::File { file, .. } => file.write_all(line),
        };
    }

    /// After logrotate renamed the file: write to a new one under the configured name.
    fn maybe_reopen(&mut self) {
        let Output::File { file, path, reopen } = self else { return };
        if !reopen.swap(false, Ordering::Relaxed) {
            return;
        }
        match open(path) {
            Ok(f) => *file = f,
            Err(e) => {
                let line = format!("{} error cannot reopen the log file {}: {e}\n", timestamp(), path.display());
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }
}

fn start_sink(name: &str, mut out: Output, dropped: Arc<AtomicU64>) -> std::io::Result<Sink> {
    let (tx, rx) = sync_channel::<Item>(QUEUE_LINES);
    std::thread::Builder::new().name(name.into()).spawn(move || {
        loop {
            out.maybe_reopen();
            let n = dropped.swap(0, Ordering::Relaxed);
            if n > 0 {
                let line = format!("{} warn  log lines dropped (a log reader was too slow) dropped={n}\n", timestamp());
                out.write(line.as_bytes());
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Item::Line(l)) => out.write(&l),
                Ok(Item::Flush(done)) => {
                    let _ = done.send(());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    })?;
    Ok(Sink { tx })
}

/// Reopens the log file on SIGHUP and SIGUSR1 (as logrotate's `postrotate` sends), instead of the
/// default action of those signals, which ends the process. Only the binary calls this.
pub fn reopen_on_signals() -> std::io::Result<()> {
    let flag = REOPEN.get_or_init(|| Arc::new(AtomicBool::new(false))).clone();
    signal_hook::flag::register(signal_hook::consts::SIGHUP, flag.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, flag)?;
    Ok(())
}

/// Waits (up to `within` in all) until every line logged so far is written: before the process exits.
pub fn flush(within: Duration) {
    let Some(l) = LOGGER.get() else { return };
    let deadline = std::time::Instant::now() + within;
    for sink in &l.sinks {
        let (tx, rx) = sync_channel(1);
        if sink.tx.try_send(Item::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
        }
    }
}

/// Whether a request line is wanted for an answer with `status` that took `duration_us`.
pub fn request_wanted(status: u16, duration_us: u128) -> bool {
    let Some(l) = LOGGER.get() else { return enabled(Level::Info) };
    if !enabled(Level::Info) {
        return false;
    }
    match l.requests {
        RequestLog::All => true,
        RequestLog::Errors => status >= 400 || duration_us >= l.slow_us,
        RequestLog::Off => false,
    }
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
        write_string(&mut line, &json_safe(msg));
        for (k, v) in fields {
            line.push(b',');
            write_string(&mut line, k);
            line.push(b':');
            let v = v.to_string();
            if is_plain_number(&v) || v == "true" || v == "false" {
                // Counts, durations, statuses and flags keep their JSON types.
                line.extend_from_slice(v.as_bytes());
            } else {
                write_string(&mut line, &json_safe(&v));
            }
        }
        line.extend_from_slice(b"}\n");
    } else {
        let _ = write!(line, "{} {:<5} {}", timestamp(), level_name(level), escape(msg));
        for (k, v) in fields {
            let v = v.to_string();
            // Quoted (and so escaped) whenever the value could end the line or fake another field.
            if v.contains([' ', '"', '=']) || v.is_empty() || needs_escape(&v) {
                let _ = write!(line, " {k}={v:?}");
            } else {
                let _ = write!(line, " {k}={v}");
            }
        }
        line.push(b'\n');
    }
    match LOGGER.get() {
        Some(l) => {
            let line: Arc<[u8]> = line.into();
            for sink in &l.sinks {
                if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                    sink.tx.try_send(Item::Line(line.clone()))
                {
                    l.dropped.fetch_add(1, Ordering::Relaxed);
                    l.dropped_total.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Before `init`: nothing else writes yet.
        None => {
            let _ = std::io::stderr().write_all(&line);
        }
    }
}

/// Characters that must not reach a log or a terminal raw: C0 and C1 controls and DEL (new lines,
/// escape sequences), and the bidirectional overrides that reorder what a reader sees.
fn hostile(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Whether `s` holds a character [`escape`] rewrites.
pub fn needs_escape(s: &str) -> bool {
    s.chars().any(hostile)
}

/// Text from a request, PostgreSQL or a name, made safe for one log line or a terminal: every control
/// or bidi character becomes `\u{XX}`; a backslash is doubled only when something was escaped, so
/// ordinary text reads as it was.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !needs_escape(s) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hostile(c) {
            let _ = std::fmt::Write::write_fmt(&mut out, format_args!("\\u{{{:x}}}", c as u32));
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// For the JSON format: JSON escapes C0 controls itself; DEL, C1 controls and bidi overrides, which
/// it leaves as they are, are escaped as [`escape`] does.
fn json_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(|c| hostile(c) && c >= '\u{7f}') { escape(s) } else { std::borrow::Cow::Borrowed(s) }
}

/// Refusal lines of one peer and error code written in full per interval before the rest are only
/// counted.
pub const REFUSALS_IN_FULL: u32 = 5;

/// The interval of [`REFUSALS_IN_FULL`]; at most one summary line per peer and code per interval.
pub const REFUSAL_INTERVAL: Duration = Duration::from_secs(10);

/// Peers and codes tracked at once; past it, the quietest are forgotten.
const REFUSAL_KEYS: usize = 4096;

struct RefusalState {
    since: std::time::Instant,
    written: u32,
    suppressed: u64,
}

/// What to do with one refusal line.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Write it.
    Write,
    /// Write it, with a summary of this many lines left out in the interval that ended.
    WriteAfter(u64),
    /// Count it only.
    Suppress,
}

/// Decides, per peer address and error code, which refusal lines are written: the first
/// [`REFUSALS_IN_FULL`] per [`REFUSAL_INTERVAL`], then none until the interval ends, when the next one
/// is written with the count left out. A client with no credential cannot fill a disk.
#[derive(Default)]
pub struct Refusals {
    map: std::collections::HashMap<(std::net::IpAddr, &'static str), RefusalState>,
}

impl Refusals {
    pub fn note(&mut self, peer: std::net::IpAddr, code: &'static str, now: std::time::Instant) -> Refusal {
        if self.map.len() >= REFUSAL_KEYS && !self.map.contains_key(&(peer, code)) {
            self.map.retain(|_, st| now.saturating_duration_since(st.since) < REFUSAL_INTERVAL);
            if self.map.len() >= REFUSAL_KEYS {
                // Many peers at once: they share what is written rather than growing the map.
                SUPPRESSED.fetch_add(1, Ordering::Relaxed);
                return Refusal::Suppress;
            }
        }
        let st = self.map.entry((peer, code)).or_insert(RefusalState { since: now, written: 0, suppressed: 0 });
        if now.saturating_duration_since(st.since) >= REFUSAL_INTERVAL {
            let left_out = std::mem::take(&mut st.suppressed);
            st.since = now;
            st.written = 1;
            return if left_out > 0 { Refusal::WriteAfter(left_out) } else { Refusal::Write };
        }
        if st.written < REFUSALS_IN_FULL {
            st.written += 1;
            Refusal::Write
        } else {
            st.suppressed += 1;
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            Refusal::Suppress
        }
    }
}

impl Refusals {
    /// Peers and codes whose interval ended with lines left out: (peer, code, count). Their count
    /// starts again; entries with nothing left out and an ended interval are forgotten.
    pub fn due(&mut self, now: std::time::Instant) -> Vec<(std::net::IpAddr, &'static str, u64)> {
        let mut out = Vec::new();
        self.map.retain(|(peer, code), st| {
            if now.saturating_duration_since(st.since) < REFUSAL_INTERVAL {
                return true;
            }
            if st.suppressed == 0 {
                return false;
            }
            out.push((*peer, *code, std::mem::take(&mut st.suppressed)));
            // The summary used this interval's line: the next refusals are counted, not written.
            st.since = now;
            st.written = REFUSALS_IN_FULL;
            true
        });
        out
    }
}

static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Writes the summary lines of refusal floods that stopped (a flood that goes on gets its summary with
/// its next line). Called from the event loops' periodic work.
pub fn summarise_refusals() {
    let Some(m) = REFUSALS.get() else { return };
    let due = m.lock().unwrap_or_else(|p| p.into_inner()).due(std::time::Instant::now());
    for (peer, code, n) in due {
        warn("refusals left out of the log", &[("peer", &peer), ("error", &code), ("suppressed", &n)]);
    }
}

static REFUSALS: OnceLock<std::sync::Mutex<Refusals>> = OnceLock::new();

/// [`Refusals::note`] over every event loop of the process.
pub fn refusal(peer: std::net::IpAddr, code: &'static str) -> Refusal {
    let m = REFUSALS.get_or_init(Default::default);
    m.lock().unwrap_or_else(|p| p.into_inner()).note(peer, code, std::time::Instant::now())
}

/// Refusal lines left out since the start (`/metrics`).
pub fn suppressed_lines() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

/// Lines a sink dropped since the start because its queue was full.
pub fn dropped_lines() -> u64 {
    LOGGER.get().map_or(0, |l| l.dropped_total.load(Ordering::Relaxed))
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
    fn control_and_bidi_characters_are_escaped() {
        assert_eq!(escape("plain text \\ ok"), "plain text \\ ok");
        assert_eq!(escape("a\nb"), "a\\u{a}b");
        assert_eq!(escape("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(escape("x\u{202e}y\\"), "x\\u{202e}y\\\\");
        assert_eq!(escape("\u{85}\u{7f}"), "\\u{85}\\u{7f}");
        assert!(!escape("tab\there").contains('\t'));
        // JSON keeps its own escapes for C0 and gets ours for what it would leave raw.
        assert_eq!(json_safe("a\nb"), "a\nb");
        assert_eq!(json_safe("a\u{9b}31m"), "a\\u{9b}31m");
    }

    #[test]
    fn refusals_of_one_peer_and_code_are_summarised_per_interval() {
        let mut r = Refusals::default();
        let t0 = std::time::Instant::now();
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let b: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        let written = (0..1000).filter(|_| r.note(a, "invalid_token", t0) != Refusal::Suppress).count();
        assert_eq!(written, REFUSALS_IN_FULL as usize);
        // Another peer, another code: lines of their own.
        assert_eq!(r.note(b, "invalid_token", t0), Refusal::Write);
        assert_eq!(r.note(a, "not_found", t0), Refusal::Write);
        let later = t0 + REFUSAL_INTERVAL;
        assert_eq!(r.note(a, "invalid_token", later), Refusal::WriteAfter(1000 - REFUSALS_IN_FULL as u64));
        assert_eq!(r.note(a, "invalid_token", later), Refusal::Write);
    }

    #[test]
    fn a_flood_that_stops_still_gets_its_summary() {
        let mut r = Refusals::default();
        let t0 = std::time::Instant::now();
        let a: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..50 {
            r.note(a, "invalid_token", t0);
        }
        assert!(r.due(t0).is_empty(), "not before the interval ends");
        let later = t0 + REFUSAL_INTERVAL;
        assert_eq!(r.due(later), vec![(a, "invalid_token", 50 - REFUSALS_IN_FULL as u64)]);
        // Said once; the next interval without refusals forgets the peer.
        assert!(r.due(later).is_empty());
        assert!(r.due(later + REFUSAL_INTERVAL).is_empty());
        assert!(r.map.is_empty());
    }

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
