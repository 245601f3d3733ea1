//! Logs: one line per request and lifecycle events, in JSON when asked, to
//! `LOG_DIR/stonescriptdb-gateway.log` too (or `LOG_FILE_NAME`),
//! and never a password, token or call parameter value.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_stonescriptdb-gateway");

fn request(addr: &str, raw: String) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn log_lines_carry_requests_but_no_secrets() {
    let (host, port, user) = {
        let port = std::env::var("TEST_PG_PORT").expect("TEST_PG_PORT is not set: run scripts/test.sh");
        (std::env::var("TEST_PG_HOST").unwrap(), port, std::env::var("TEST_PG_SUPERUSER").unwrap_or("postgres".into()))
    };
    let dir = std::env::temp_dir().join(format!("ssdb-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let token = "tok-SECRET-0123456789abcdef";
    let password = "pw-SECRET-777";
    let param = "param-SECRET-4242";
    let mut child = Command::new(BIN)
        .env_clear()
        .current_dir(&dir)
        .env("GATEWAY_PORT", "0")
        .env("DB_HOST", &host)
        .env("DB_PORT", &port)
        .env("DB_USER", &user)
        .env("DB_PASSWORD", password)
        .env("ADMIN_TOKEN", token)
        .env("LOG_DIR", dir.join("logs"))
        .env("LOG_FORMAT", "json")
        .env("LOG_REQUESTS", "all")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway");
    // The first log line names the address.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = common::listening_addr(&mut stderr);
    let platform = format!("logtest_{}", std::process::id());
    let body = format!(r#"{{"platform":"{platform}","function":"nothing_here","params":["{param}"]}}"#);
    let r = request(
        &addr,
        format!(
            "POST /call HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    // A deploy that works and one that fails: one line each.
    let deploy = |files: &[(&str, &str)]| {
        let archive = common::archive::tgz(files.iter().copied());
        let (ct, body) = common::multipart(&[("platform", platform.as_bytes()), ("schema", &archive)]);
        let mut raw =
            format!("POST /register HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n", body.len())
                .into_bytes();
        raw.extend_from_slice(&body);
        let mut s = TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(&raw).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let r = deploy(&[
        ("migrations/001_t.sql", "CREATE TABLE t (id int);"),
        ("functions/f.sql", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';"),
    ]);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let body = format!(r#"{{"platform":"{platform}","function":"f"}}"#);
    let r = request(
        &addr,
        format!(
            "POST /call HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = deploy(&[("functions/g.sql", "CREATE FUNCTION g() RETURNS int LANGUAGE sql AS 'SELEC 1';")]);
    assert!(r.starts_with("HTTP/1.1 422"), "{r}");
    let r = request(
        &addr,
        format!(
            "GET /admin/databases?platform=logtest HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = request(
        &addr,
        "GET /health HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer wrong-SECRET-guess\r\nConnection: close\r\n\r\n"
            .into(),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    assert!(child.wait().unwrap().success());

    assert!(!dir.join("logs/gateway.log").exists(), "the old name is not written by default");
    let file =
        std::fs::read_to_string(dir.join("logs/stonescriptdb-gateway.log")).expect("LOG_DIR/stonescriptdb-gateway.log");
    for line in file.lines() {
        let v =
            stonescriptdb_gateway::json::parse(line.as_bytes()).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("ts").is_some() && v.get("level").is_some() && v.get("msg").is_some(), "{line}");
    }
    let requests: Vec<&str> = file.lines().filter(|l| l.contains("\"msg\":\"request\"")).collect();
    let call = requests.iter().find(|l| l.contains("\"path\":\"/call\"")).unwrap_or_else(|| panic!("{file}"));
    // Numbers stay numbers; the line says what failed, for which platform, database and function.
    assert!(call.contains("\"status\":404"), "{call}");
    assert!(call.contains("\"error\":\"database_not_found\""), "{call}");
    assert!(call.contains(&format!("\"platform\":\"{platform}\"")), "{call}");
    assert!(call.contains(&format!("\"database\":\"{platform}_main\"")), "{call}");
    assert!(call.contains("\"function\":\"nothing_here\""), "{call}");
    assert!(call.contains("\"duration_us\":"), "{call}");
    // An answered call names the server that answered it.
    let served = requests
        .iter()
        .find(|l| l.contains("\"path\":\"/call\"") && l.contains("\"status\":200"))
        .unwrap_or_else(|| panic!("{file}"));
    assert!(served.contains("\"server\":\"default\"") && served.contains("\"function\":\"f\""), "{served}");
    assert!(!call.contains("\"server\""), "a call refused before it reached a server names none: {call}");
    let applied = file.lines().find(|l| l.contains("\"msg\":\"deploy applied\"")).unwrap_or_else(|| panic!("{file}"));
    assert!(
        applied.contains(&format!("\"database\":\"{platform}_main\"")) && applied.contains("\"migrations\":1"),
        "{applied}"
    );
    let failed = file.lines().find(|l| l.contains("\"msg\":\"deploy failed\"")).unwrap_or_else(|| panic!("{file}"));
    assert!(failed.contains("\"error\":\"function_deploy_failed\"") && failed.contains("functions/g.sql"), "{failed}");
    common::db::exec("postgres", &format!("DROP DATABASE IF EXISTS \"{platform}_main\" WITH (FORCE)"));
    assert!(requests.iter().any(|l| l.contains("\"path\":\"/admin/databases\"")), "{file}");
    assert!(file.contains("\"msg\":\"stopped\""), "shutdown is logged: {file}");
    for secret in [token, password, param, "wrong-SECRET-guess", "SECRET"] {
        assert!(!file.contains(secret), "log file leaks {secret}");
        assert!(!rest.contains(secret), "stderr leaks {secret}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts the gateway with `LOG_DIR=dir` and `extra` settings, waits until it listens, stops it with
/// SIGTERM and returns its stderr.
fn start_and_stop(dir: &std::path::Path, extra: &[(&str, &str)]) -> String {
    start_and_stop_with(dir, extra, None)
}

/// As [`start_and_stop`], under `ulimit -n open_files` when given.
fn start_and_stop_with(dir: &std::path::Path, extra: &[(&str, &str)], open_files: Option<u32>) -> String {
    let mut c = match open_files {
        Some(n) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("ulimit -n {n} && exec \"$0\""), BIN]);
            c
        }
        None => Command::new(BIN),
    };
    c.env_clear().current_dir(dir).env("GATEWAY_PORT", "0").env("LOG_DIR", dir.join("logs"));
    if let (Ok(h), Ok(p)) = (std::env::var("TEST_PG_HOST"), std::env::var("TEST_PG_PORT")) {
        c.env("DB_HOST", h).env("DB_PORT", p);
    }
    for (k, v) in extra {
        c.env(k, v);
    }
    let mut child = c.stdin(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start the gateway");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "gateway exited early: {seen}");
        seen.push_str(&line);
        if line.contains("listening") {
            break;
        }
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = stderr.read_to_string(&mut seen);
    assert!(child.wait().unwrap().success(), "{seen}");
    seen
}

#[test]
fn an_old_gateway_log_is_left_alone_and_the_new_file_says_so() {
    let dir = std::env::temp_dir().join(format!("ssdb-log-old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::write(dir.join("logs/gateway.log"), "a line of an earlier version\n").unwrap();
    let stderr = start_and_stop(&dir, &[]);
    assert_eq!(std::fs::read_to_string(dir.join("logs/gateway.log")).unwrap(), "a line of an earlier version\n");
    let new = std::fs::read_to_string(dir.join("logs/stonescriptdb-gateway.log")).expect("the new file");
    for text in [&new, &stderr] {
        assert!(text.contains("LOG_FILE_NAME=gateway.log keeps the old name"), "{text}");
        assert!(text.contains("logs/gateway.log"), "{text}");
    }
    assert!(new.contains("listening"), "{new}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn log_file_name_gateway_log_keeps_the_old_file() {
    let dir = std::env::temp_dir().join(format!("ssdb-log-keep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::write(dir.join("logs/gateway.log"), "earlier\n").unwrap();
    let stderr = start_and_stop(&dir, &[("LOG_FILE_NAME", "gateway.log")]);
    assert!(!stderr.contains("new name"), "{stderr}");
    let old = std::fs::read_to_string(dir.join("logs/gateway.log")).unwrap();
    assert!(old.starts_with("earlier\n") && old.contains("listening"), "appended to the old file: {old}");
    assert!(!dir.join("logs/stonescriptdb-gateway.log").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_low_open_files_limit_is_reported_at_start() {
    let dir = std::env::temp_dir().join(format!("ssdb-log-nofile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The default MAX_CLIENT_CONNECTIONS (10000) does not fit in 1000 descriptors …
    let low = start_and_stop_with(&dir, &[], Some(1000));
    assert!(low.contains("the open-files limit is below") && low.contains("limit=1000"), "{low}");
    assert!(low.contains("client connections are capped to fit") && low.contains("max_client_connections="), "{low}");
    // … 200 clients do.
    let fits = start_and_stop_with(
        &dir,
        &[("MAX_CLIENT_CONNECTIONS", "200"), ("MAX_TOTAL_CONNECTIONS", "100"), ("DEPLOY_PARALLELISM", "2")],
        Some(1000),
    );
    assert!(!fits.contains("open-files limit"), "{fits}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts the binary on the test cluster with `env`; returns the child (stderr piped, unread) and the
/// address it listens on, read from the log file in `dir`.
// The child is handed to the caller, which waits for it; the lint cannot follow it there.
#[allow(clippy::zombie_processes)]
fn spawn_with_file_log(dir: &std::path::Path, env: &[(&str, &str)]) -> (std::process::Child, String) {
    let (host, port) = (std::env::var("TEST_PG_HOST").unwrap(), std::env::var("TEST_PG_PORT").unwrap());
    let mut c = Command::new(BIN);
    c.env_clear().current_dir(dir).env("GATEWAY_PORT", "0").env("DB_HOST", host).env("DB_PORT", port);
    c.env("LOG_DIR", dir.join("logs"));
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child =
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start the gateway");
    let log = dir.join("logs/stonescriptdb-gateway.log");
    let started = Instant::now();
    loop {
        if let Some(i) =
            std::fs::read_to_string(&log).ok().and_then(|f| f.find("addr=").map(|i| f[i + 5..].to_string()))
        {
            return (child, i.split_whitespace().next().unwrap().to_string());
        }
        if started.elapsed() >= Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no listening line in {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A log reader that stops reading (a hung journald, a full pipe) never stops the gateway: with
/// stderr never read, thousands of logged requests are all answered promptly, and the lines that
/// did not fit are counted instead of written.
#[test]
fn a_stalled_log_reader_never_blocks_requests() {
    let dir = std::env::temp_dir().join(format!("ssdb-log-stall-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (mut child, addr) = spawn_with_file_log(&dir, &[("LOG_REQUESTS", "all")]);
    // Nobody reads the child's stderr: the pipe (64 KiB) fills after a few hundred lines.
    let mut c = TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    for i in 0..25_000 {
        c.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let n = c.read(&mut buf).unwrap_or_else(|e| panic!("request {i} was not answered: {e}"));
        assert!(n > 0 && buf.starts_with(b"HTTP/1.1 "), "request {i}");
    }
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let mut stderr = child.stderr.take().unwrap();
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    assert!(child.wait().unwrap().success());
    let file = std::fs::read_to_string(dir.join("logs/stonescriptdb-gateway.log")).unwrap();
    assert!(file.contains("log lines dropped"), "the drop was not reported");
    assert!(file.contains("stopped"), "the file kept being written while stderr was stalled");
    let _ = std::fs::remove_dir_all(&dir);
}

/// logrotate renames the file and sends SIGHUP (or SIGUSR1): the gateway goes on, and writes to a new
/// file under the configured name. Under LOG_REQUESTS=errors only failed (or slow) requests get a line.
#[test]
fn sighup_reopens_the_log_file_and_request_lines_can_be_errors_only() {
    let dir = std::env::temp_dir().join(format!("ssdb-log-rotate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (mut child, addr) = spawn_with_file_log(&dir, &[("LOG_REQUESTS", "errors")]);
    let mut stderr = child.stderr.take().unwrap();
    let drain = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
    });
    let log = dir.join("logs/stonescriptdb-gateway.log");
    std::fs::rename(&log, dir.join("logs/rotated.log")).unwrap();
    for sig in ["-HUP", "-USR1"] {
        let _ = Command::new("kill").args([sig, &child.id().to_string()]).status();
        std::thread::sleep(Duration::from_millis(500));
        assert!(child.try_wait().unwrap().is_none(), "{sig} ended the gateway");
    }
    let ok = request(&addr, "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into());
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let missing = request(&addr, "GET /nowhere HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into());
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(child.wait().unwrap().success());
    drain.join().unwrap();
    let new = std::fs::read_to_string(&log).expect("a new log file after SIGHUP");
    assert!(new.contains("path=/nowhere"), "the failed request is logged: {new}");
    assert!(!new.contains("path=/health"), "a quick 200 is not logged under LOG_REQUESTS=errors: {new}");
    assert!(new.contains("stopped"), "{new}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Behind a proxy in `TRUSTED_PROXIES` (nginx terminating TLS), a request line names the client the
/// proxy says it serves (`client=`) besides the proxy's own address (`peer=`); from anyone else the
/// header is not believed and no `client` is written.
#[test]
fn request_lines_name_the_client_a_trusted_proxy_forwards() {
    let dir = std::env::temp_dir().join(format!("ssdb-log-proxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (trusted, expect) in [("127.0.0.1/32", true), ("10.99.0.0/16", false)] {
        let (mut child, addr) = spawn_with_file_log(&dir, &[("LOG_REQUESTS", "all"), ("TRUSTED_PROXIES", trusted)]);
        let mut stderr = child.stderr.take().unwrap();
        let drain = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
        });
        let r = request(
            &addr,
            "GET /health HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 10.1.2.3\r\nConnection: close\r\n\r\n".into(),
        );
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        assert!(child.wait().unwrap().success());
        drain.join().unwrap();
        let log = std::fs::read_to_string(dir.join("logs/stonescriptdb-gateway.log")).unwrap();
        let line = log.lines().find(|l| l.contains("path=/health")).unwrap_or_else(|| panic!("{log}"));
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
        assert_eq!(line.contains("client=10.1.2.3"), expect, "TRUSTED_PROXIES={trusted}: {line}");
        let _ = std::fs::remove_dir_all(dir.join("logs"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
