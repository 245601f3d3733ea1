//! Logs: one line per request and lifecycle events, in JSON when asked, to `LOG_DIR/gateway.log` too,
//! and never a password, token or call parameter value.

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
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway");
    // The first log line names the address.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let started = Instant::now();
    let addr = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "gateway exited early");
        if let Some(i) = line.find("\"addr\":\"") {
            let rest = &line[i + 8..];
            break rest[..rest.find('"').unwrap()].to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no listening line");
    };
    let body = format!(r#"{{"platform":"logtest","function":"nothing_here","params":["{param}"]}}"#);
    let r = request(
        &addr,
        format!("POST /call HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
    );
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r = request(
        &addr,
        format!(
            "GET /admin/databases?platform=logtest HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = request(
        &addr,
        "GET /health HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer wrong-SECRET-guess\r\nConnection: close\r\n\r\n"
            .into(),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    assert!(child.wait().unwrap().success());

    let file = std::fs::read_to_string(dir.join("logs/gateway.log")).expect("LOG_DIR/gateway.log");
    for line in file.lines() {
        let v =
            stonescriptdb_gateway::json::parse(line.as_bytes()).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("ts").is_some() && v.get("level").is_some() && v.get("msg").is_some(), "{line}");
    }
    let requests: Vec<&str> = file.lines().filter(|l| l.contains("\"msg\":\"request\"")).collect();
    assert!(requests.iter().any(|l| l.contains("\"path\":\"/call\"") && l.contains("\"status\":\"404\"")), "{file}");
    assert!(requests.iter().any(|l| l.contains("\"path\":\"/admin/databases\"")), "{file}");
    assert!(file.contains("\"msg\":\"stopped\""), "shutdown is logged: {file}");
    for secret in [token, password, param, "wrong-SECRET-guess", "SECRET"] {
        assert!(!file.contains(secret), "log file leaks {secret}");
        assert!(!rest.contains(secret), "stderr leaks {secret}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
