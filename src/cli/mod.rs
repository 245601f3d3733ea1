//! `stonescriptdb-gateway deploy` and `… migrate`: pack a `postgresql/` folder in-process, upload it
//! to a running gateway, and report. `migrate` covers a whole fleet and draws the NDJSON progress as
//! a bar on a terminal (plain lines otherwise). Exit codes: 0 success, 1 the deploy failed, 2 usage,
//! 3 the gateway stayed unreachable through the retries (the helper scripts' rules: `RETRY_COUNT`
//! attempts in all, `RETRY_DELAY` seconds apart, while nothing answers or the answer is 503; a 4xx
//! or a failed migration is never retried).

pub mod http;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::deploy::pack;
use crate::json::{self, Value};
use http::{Answer, Failure, Target};

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;

const USAGE: &str = "\
usage: stonescriptdb-gateway deploy  [OPTIONS] [DIR]
       stonescriptdb-gateway migrate [OPTIONS] [DIR]

deploy   packs DIR (default ./src/postgresql, or POSTGRESQL_PATH) and deploys it to one database:
         without --schema-name POST /register (the platform's main database, or --tenant's, created
         when missing); with --schema-name the folder is stored as the next version of that schema
         (POST /platform/P/schema) and, with --tenant, that database is migrated to it.
migrate  the same for a fleet: without --schema-name POST /migrate (every database of the platform,
         or --tenant's); with --schema-name the schema is stored, then every database created from
         it is migrated (POST /v2/migrate), with a progress bar on a terminal.

options:
  --url URL             the gateway (default DB_GATEWAY_URL, else http://127.0.0.1:9000)
  --platform P          platform name (default PLATFORM_ID)
  --tenant T            one tenant database (v2: its database_id)
  --schema-name S       a v2 schema type (main_db, tenant_db, ...)
  --dry-run             run everything, then roll back
  --force               accept schema drift and missing seed rows
  --reseed              migrate: insert missing seed rows
  --stop-on-error       migrate with --schema-name: start no database after the first failure
  --token TOKEN         platform key or admin token (default GATEWAY_TOKEN)
  --retries N           attempts in all while unreachable or 503 (default RETRY_COUNT, else 5)
  --retry-delay SECS    seconds between attempts (default RETRY_DELAY, else 3)
  --max-time SECS       seconds one request may take (default CURL_MAX_TIME, else 900)
  -h, --help            this text

exit codes: 0 success, 1 deploy failed, 2 usage error, 3 gateway unreachable after the retries
";

/// What the command line said.
#[derive(Debug, Clone)]
struct Opts {
    fleet: bool,
    url: String,
    platform: String,
    tenant: Option<String>,
    schema_name: Option<String>,
    dry_run: bool,
    force: bool,
    reseed: bool,
    stop_on_error: bool,
    token: Option<String>,
    retries: u32,
    retry_delay: Duration,
    max_time: Duration,
    dir: PathBuf,
}

fn parse(fleet: bool, args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Opts>, String> {
    let mut o = Opts {
        fleet,
        url: env("DB_GATEWAY_URL").unwrap_or_else(|| "http://127.0.0.1:9000".into()),
        platform: env("PLATFORM_ID").unwrap_or_default(),
        tenant: None,
        schema_name: None,
        dry_run: false,
        force: false,
        reseed: false,
        stop_on_error: false,
        token: env("GATEWAY_TOKEN").filter(|t| !t.is_empty()),
        retries: 5,
        retry_delay: Duration::from_secs(3),
        max_time: Duration::from_secs(900),
        dir: PathBuf::from(env("POSTGRESQL_PATH").unwrap_or_else(|| "./src/postgresql".into())),
    };
    let num = |name: &str, v: &str, min: u64| -> Result<u64, String> {
        v.parse::<u64>()
            .ok()
            .filter(|n| *n >= min)
            .ok_or_else(|| format!("{name} must be a whole number >= {min}, got '{v}'"))
    };
    if let Some(v) = env("RETRY_COUNT") {
        o.retries = num("RETRY_COUNT", &v, 1)? as u32;
    }
    if let Some(v) = env("RETRY_DELAY") {
        o.retry_delay = Duration::from_secs(num("RETRY_DELAY", &v, 0)?);
    }
    if let Some(v) = env("CURL_MAX_TIME") {
        o.max_time = Duration::from_secs(num("CURL_MAX_TIME", &v, 1)?);
    }
    let mut dir = None;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a, None),
        };
        let mut value = || -> Result<String, String> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            i += 1;
            args.get(i).cloned().ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--url" => o.url = value()?,
            "--platform" => o.platform = value()?,
            "--tenant" => o.tenant = Some(value()?),
            "--schema-name" => o.schema_name = Some(value()?),
            "--token" => o.token = Some(value()?),
            "--retries" => o.retries = num("--retries", &value()?, 1)? as u32,
            "--retry-delay" => o.retry_delay = Duration::from_secs(num("--retry-delay", &value()?, 0)?),
            "--max-time" => o.max_time = Duration::from_secs(num("--max-time", &value()?, 1)?),
            "--dry-run" => o.dry_run = true,
            "--force" => o.force = true,
            "--reseed" if fleet => o.reseed = true,
            "--stop-on-error" if fleet => o.stop_on_error = true,
            f if f.starts_with('-') && f.len() > 1 => return Err(format!("unknown option {f}")),
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            _ => return Err(format!("unexpected argument '{a}' (one folder only)")),
        }
        i += 1;
    }
    if let Some(d) = dir {
        o.dir = d;
    }
    if o.platform.is_empty() {
        return Err("--platform is required".into());
    }
    if o.stop_on_error && o.schema_name.is_none() {
        return Err("--stop-on-error needs --schema-name".into());
    }
    if o.dry_run && o.schema_name.is_some() && o.tenant.is_none() && !fleet {
        return Err("--dry-run with --schema-name needs --tenant: storing a schema version has no dry run".into());
    }
    Target::parse(&o.url)?;
    Ok(Some(o))
}

/// Entry point: `args` follow the subcommand name.
pub fn main(fleet: bool, args: &[String]) -> u8 {
    let env = |k: &str| std::env::var(k).ok();
    let opts = match parse(fleet, args, &env) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return EXIT_OK;
        }
        Err(e) => {
            eprintln!("stonescriptdb-gateway: {e}\n\n{USAGE}");
            return EXIT_USAGE;
        }
    };
    let (archive, files) = match pack::pack_folder(&opts.dir) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("stonescriptdb-gateway: cannot pack the schema folder: {e}");
            return EXIT_USAGE;
        }
    };
    let mut out = Out::new();
    out.note(&format!("packed {} ({files} files, {} bytes)", opts.dir.display(), archive.len()));
    let r = match &opts.schema_name {
        None => v1(&opts, &archive, &mut out),
        Some(s) => v2(&opts, s, &archive, &mut out),
    };
    match r {
        Ok(code) => code,
        Err(Stop::Unreachable(e)) => {
            eprintln!("stonescriptdb-gateway: the gateway at {} is unreachable: {e}", opts.url);
            EXIT_UNREACHABLE
        }
        Err(Stop::Failed(e)) => {
            eprintln!("stonescriptdb-gateway: {e}");
            EXIT_FAILED
        }
    }
}

enum Stop {
    Unreachable(String),
    Failed(String),
}

/// Sends a request with the helper scripts' retry rules.
// Each argument is one part of the request or of where its output goes; a struct for one private
// caller set would only rename them.
#[allow(clippy::too_many_arguments)]
fn send(
    o: &Opts,
    out: &mut Out,
    method: &str,
    path: &str,
    content_type: &str,
    extra: &[(&str, String)],
    body: &[u8],
    on_line: &mut dyn FnMut(&[u8]),
) -> Result<Answer, Stop> {
    let t = Target::parse(&o.url).map_err(Stop::Failed)?;
    let mut headers: Vec<(&str, String)> = vec![("Content-Type", content_type.to_string())];
    if let Some(tok) = &o.token {
        headers.push(("Authorization", format!("Bearer {tok}")));
    }
    headers.extend(extra.iter().cloned());
    let mut attempt = 1;
    loop {
        let why = match http::request(&t, method, path, &headers, body, Duration::from_secs(10), o.max_time, on_line) {
            Ok(a) if a.status == 503 => {
                if attempt >= o.retries {
                    return Ok(a);
                }
                "the gateway answered 503 (busy or not ready)".to_string()
            }
            Ok(a) => return Ok(a),
            Err(Failure::Broken(e)) => return Err(Stop::Failed(e)),
            Err(Failure::Unreachable(e)) => {
                if attempt >= o.retries {
                    return Err(Stop::Unreachable(format!("{e} (gave up after attempt {attempt}/{})", o.retries)));
                }
                e
            }
        };
        out.note(&format!("{why}; attempt {attempt}/{}, retrying in {}s", o.retries, o.retry_delay.as_secs()));
        std::thread::sleep(o.retry_delay);
        attempt += 1;
    }
}

fn parse_body(a: &Answer) -> Value {
    json::parse(&a.body).unwrap_or(Value::Null)
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    match v.get(k) {
        Some(Value::String(x)) => x,
        _ => "",
    }
}

fn n(v: &Value, k: &str) -> i64 {
    match v.get(k) {
        Some(Value::Number(x)) => x.parse::<f64>().map_or(0, |f| f as i64),
        Some(Value::Array(a)) => a.len() as i64,
        _ => 0,
    }
}

/// An error answer as one line: code, message and where it happened.
fn error_line(v: &Value) -> String {
    let mut l = format!("{}: {}", s(v, "error"), s(v, "message"));
    for k in ["database", "step", "file", "sqlstate"] {
        if let Some(Value::String(x)) = v.get(k) {
            l.push_str(&format!(" [{k} {x}]"));
        } else if let Some(Value::Number(x)) = v.get(k) {
            l.push_str(&format!(" [{k} {x}]"));
        }
    }
    l
}

fn flag(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// `/register` or `/migrate` (v1).
fn v1(o: &Opts, archive: &[u8], out: &mut Out) -> Result<u8, Stop> {
    let mut fields: Vec<(&str, &str)> =
        vec![("platform", &o.platform), ("force", flag(o.force)), ("dry_run", flag(o.dry_run))];
    if let Some(t) = &o.tenant {
        fields.push(("tenant_id", t));
    }
    if o.fleet {
        fields.push(("reseed", flag(o.reseed)));
    }
    let (ct, body) = http::multipart(&fields, "schema", "postgresql.tar.gz", archive);
    let path = if o.fleet { "/migrate" } else { "/register" };
    out.note(&format!("POST {}{path} (platform {})", o.url, o.platform));
    let a = send(o, out, "POST", path, &ct, &[], &body, &mut |_| {})?;
    let v = parse_body(&a);
    if o.fleet {
        return Ok(fleet_summary(out, &v, a.status));
    }
    if a.status >= 300 {
        out.say(&format!("deploy failed (HTTP {}): {}", a.status, error_line(&v)));
        eprintln!("{}", shown(&String::from_utf8_lossy(&a.body)));
        return Ok(EXIT_FAILED);
    }
    out.say(&format!(
        "{} {}: created {}, {} migrations applied, {} functions changed, {} unchanged{}",
        s(&v, "status"),
        s(&v, "database"),
        matches!(v.get("created"), Some(Value::Bool(true))),
        n(&v, "migrations_applied"),
        n(&v, "functions_changed"),
        n(&v, "functions_skipped"),
        if o.dry_run { " (dry run, rolled back)" } else { "" },
    ));
    Ok(EXIT_OK)
}

/// The summary of a fleet answer (v1 body or the v2 summary line); failures listed at the end.
fn fleet_summary(out: &mut Out, v: &Value, status: u16) -> u8 {
    let results = match v.get("results") {
        Some(Value::Array(a)) => a.as_slice(),
        _ => &[],
    };
    if results.is_empty() && !s(v, "error").is_empty() {
        out.say(&format!("migrate failed (HTTP {status}): {}", error_line(v)));
        return EXIT_FAILED;
    }
    let failed: Vec<&Value> = results.iter().filter(|r| s(r, "status") != "success").collect();
    out.say(&format!(
        "{}: {} databases, {} succeeded, {} failed, {} migrations applied, {} functions updated (run {})",
        s(v, "status"),
        results.len(),
        results.len() - failed.len(),
        failed.len(),
        n(v, "migrations_applied"),
        n(v, "functions_updated"),
        s(v, "run_id"),
    ));
    if !failed.is_empty() {
        out.say("failed databases:");
        for f in &failed {
            let e = f.get("error").cloned().unwrap_or(Value::Null);
            out.say(&format!("  {}: {}", s(f, "database"), error_line(&e)));
        }
    }
    if s(v, "status") == "completed" && failed.is_empty() { EXIT_OK } else { EXIT_FAILED }
}

/// Stores the folder as the schema's next version, then migrates one database or the fleet.
fn v2(o: &Opts, schema: &str, archive: &[u8], out: &mut Out) -> Result<u8, Stop> {
    let (ct, body) = http::multipart(&[("schema_name", schema)], "schema", "postgresql.tar.gz", archive);
    let path = format!("/platform/{}/schema", o.platform);
    out.note(&format!("POST {}{path} (schema {schema})", o.url));
    let a = send(o, out, "POST", &path, &ct, &[], &body, &mut |_| {})?;
    let v = parse_body(&a);
    if a.status >= 300 {
        out.say(&format!("storing the schema failed (HTTP {}): {}", a.status, error_line(&v)));
        return Ok(EXIT_FAILED);
    }
    out.say(&format!("stored {}/{schema} version {}", o.platform, n(&v, "version")));
    if !o.fleet && o.tenant.is_none() {
        return Ok(EXIT_OK);
    }
    let mut req = Vec::new();
    {
        let mut w = json::ObjectWriter::new(&mut req);
        w.str("platform", &o.platform);
        w.str("schema_name", schema);
        if let Some(t) = &o.tenant {
            w.str("database_id", t);
        }
        w.bool("force", o.force);
        w.bool("dry_run", o.dry_run);
        w.bool("reseed", o.reseed);
        w.bool("stop_on_error", o.stop_on_error);
        w.finish();
    }
    let mut bar = Progress::new(out.tty);
    let mut summary: Option<Value> = None;
    let a = {
        let mut on_line = |line: &[u8]| {
            let Ok(v) = json::parse(line) else { return };
            if v.get("total").is_some() && v.get("done").is_some() && v.get("database").is_some() {
                bar.line(&v);
            } else {
                summary = Some(v);
            }
        };
        send(
            o,
            out,
            "POST",
            "/v2/migrate",
            "application/json",
            &[("Accept", "application/x-ndjson".into())],
            &req,
            &mut on_line,
        )?
    };
    bar.finish();
    let v = match summary {
        Some(v) => v,
        None => parse_body(&a),
    };
    Ok(fleet_summary(out, &v, a.status))
}

/// Where messages go: results on stdout, notes (retries, what is sent) on stderr.
struct Out {
    tty: bool,
}

impl Out {
    fn new() -> Out {
        Out { tty: std::io::stdout().is_terminal() }
    }

    fn say(&mut self, line: &str) {
        println!("{}", shown(line));
    }

    fn note(&mut self, line: &str) {
        eprintln!("{}", shown(line));
    }
}

/// A line as the terminal gets it: text the gateway sent (PostgreSQL's messages, names) may hold escape
/// sequences or new lines that would rewrite the screen or fake output; they are shown escaped.
fn shown(line: &str) -> std::borrow::Cow<'_, str> {
    crate::log::escape(line)
}

/// Fleet progress: a bar redrawn in place on a terminal, one plain line per database otherwise.
struct Progress {
    tty: bool,
    started: Instant,
    failed: usize,
    drawn: bool,
}

impl Progress {
    fn new(tty: bool) -> Progress {
        Progress { tty, started: Instant::now(), failed: 0, drawn: false }
    }

    fn line(&mut self, v: &Value) {
        let (done, total) = (n(v, "done").max(0) as usize, n(v, "total").max(0) as usize);
        let ok = s(v, "status") == "success";
        if !ok {
            self.failed += 1;
        }
        let mut stdout = std::io::stdout();
        if self.tty {
            const WIDTH: usize = 30;
            let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
            let bar: String = "#".repeat(filled) + &".".repeat(WIDTH - filled);
            let _ = write!(
                stdout,
                "\r\x1b[2K[{bar}] {done}/{total}{} {:.0}s {}",
                if self.failed > 0 { format!(" ({} failed)", self.failed) } else { String::new() },
                self.started.elapsed().as_secs_f64(),
                shown(s(v, "database")),
            );
            self.drawn = true;
        } else {
            let _ = writeln!(
                stdout,
                "[{done}/{total}] {} {}{}",
                shown(s(v, "database")),
                if ok { "success" } else { "failed" },
                if ok {
                    format!(" ({} migrations, {} functions)", n(v, "migrations_applied"), n(v, "functions_updated"))
                } else {
                    String::new()
                },
            );
        }
        let _ = stdout.flush();
    }

    fn finish(&mut self) {
        if self.drawn {
            println!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str], env: &[(&str, &str)]) -> Result<Option<Opts>, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse(true, &args, &|k| env.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn server_text_reaches_the_terminal_escaped() {
        let v = json::parse(
            br#"{"error":"migration_failed","message":"boom\u001b]0;owned\u0007\nfake: ok","database":"d\u001b[2J"}"#,
        )
        .unwrap();
        let line = shown(&error_line(&v)).into_owned();
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains("\\u{1b}") && line.contains("\\u{a}"), "{line:?}");
    }

    #[test]
    fn flags_env_and_usage_errors() {
        let o = p(&["--platform", "acme", "--retries=2", "dir"], &[("RETRY_DELAY", "0")]).unwrap().unwrap();
        assert_eq!((o.platform.as_str(), o.retries, o.retry_delay.as_secs()), ("acme", 2, 0));
        assert_eq!(o.dir, PathBuf::from("dir"));
        assert_eq!(o.url, "http://127.0.0.1:9000");
        let o = p(&[], &[("PLATFORM_ID", "x"), ("DB_GATEWAY_URL", "http://gw:1")]).unwrap().unwrap();
        assert_eq!((o.platform.as_str(), o.url.as_str()), ("x", "http://gw:1"));
        assert!(p(&["--help"], &[]).unwrap().is_none());
        assert!(p(&[], &[]).is_err());
        assert!(p(&["--platform", "a", "--bogus"], &[]).is_err());
        assert!(p(&["--platform", "a", "--retries", "0"], &[]).is_err());
        assert!(p(&["--platform", "a", "x", "y"], &[]).is_err());
        assert!(p(&["--platform", "a", "--url", "https://x"], &[]).is_err());
        assert!(p(&["--platform", "a", "--stop-on-error"], &[]).is_err());
    }
}
