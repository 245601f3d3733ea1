//! Tests of the real binary: `--help`, `--version`, configuration errors (environment, flags, `.env`)
//! and graceful shutdown on SIGTERM and SIGINT with a request in flight.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use stonescriptdb_gateway::config::keys::KEYS;

const BIN: &str = env!("CARGO_BIN_EXE_stonescriptdb-gateway");

/// An empty scratch directory (so no stray `.env` is read), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("ssdb-gw-bin-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary with a clean environment, run in `dir`.
fn cmd(dir: &TempDir) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear().current_dir(&dir.0);
    // Point at the test cluster when there is one (the server must not need it to start).
    if let Ok(h) = std::env::var("TEST_PG_HOST") {
        c.env("DB_HOST", h);
    }
    if let Ok(p) = std::env::var("TEST_PG_PORT") {
        c.env("DB_PORT", p);
    }
    c
}

fn run(c: &mut Command) -> Output {
    c.stdin(Stdio::null()).output().expect("run the binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_lists_every_key() {
    let d = TempDir::new("help");
    let o = run(cmd(&d).arg("--help"));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    for k in KEYS {
        assert!(out.contains(k.name), "--help does not mention {}", k.name);
    }
}

#[test]
fn help_says_where_the_log_goes_and_names_setup_db() {
    let d = TempDir::new("help-log");
    let o = run(cmd(&d).arg("--help"));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("LOG_DIR/LOG_FILE_NAME"), "{out}");
    assert!(out.contains("tail -f /var/log/stonescriptdb-gateway/stonescriptdb-gateway.log"), "{out}");
    assert!(out.contains("journalctl -u stonescriptdb-gateway"), "{out}");
    assert!(out.contains("setup-db"), "{out}");
    let o = run(cmd(&d).args(["setup-db", "--help"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8(o.stdout).unwrap().contains("pg_hba.conf"));
    let o = run(cmd(&d).args(["setup-db", "--no-such-flag=1"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = run(cmd(&d).args(["setup-db", "--login", "pg_evil"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn version_prints_the_version() {
    let d = TempDir::new("version");
    let o = run(cmd(&d).arg("--version"));
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
}

fn assert_config_error(o: &Output, needles: &[&str]) {
    assert!(!o.status.success(), "expected failure, got {:?}", o.status);
    let err = stderr(o);
    for n in needles {
        assert!(err.contains(n), "stderr does not name {n}: {err}");
    }
}

#[test]
fn invalid_values_name_their_key() {
    let d = TempDir::new("invalid");
    assert_config_error(&run(cmd(&d).env("GATEWAY_PORT", "abc")), &["GATEWAY_PORT"]);
    assert_config_error(&run(cmd(&d).arg("--max-headers=nope")), &["MAX_HEADERS"]);
    assert_config_error(&run(cmd(&d).args(["--max-headers", "nope"])), &["MAX_HEADERS"]);
    assert_config_error(&run(cmd(&d).env("ALLOWED_NETWORKS", "10.0.0.0/99")), &["ALLOWED_NETWORKS"]);
    assert_config_error(&run(cmd(&d).arg("--no-such-flag=1")), &["no-such-flag"]);
}

#[test]
fn dotenv_in_the_working_directory_is_read() {
    let d = TempDir::new("dotenv");
    std::fs::write(d.0.join(".env"), "# comment\nLOG_LEVEL=warn\nGATEWAY_PORT=not-a-port\n").unwrap();
    assert_config_error(&run(&mut cmd(&d)), &["GATEWAY_PORT", ".env"]);
    // The environment wins over .env: with a valid port from the environment, the error moves on.
    let o = run(cmd(&d).env("GATEWAY_PORT", "0").arg("--max-headers=nope"));
    assert_config_error(&o, &["MAX_HEADERS"]);
    assert!(!stderr(&o).contains("GATEWAY_PORT"), "{}", stderr(&o));
}

/// A running binary with its stderr lines forwarded to a channel.
struct Running {
    child: Child,
    lines: Receiver<String>,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_gateway(name: &str) -> Running {
    let d = TempDir::new(name);
    let mut child = cmd(&d)
        .env("GATEWAY_PORT", "0")
        .env("LOG_LEVEL", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (tx, lines) = channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("no 'listening' log line");
        if let Some(rest) = line.split("listening addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().parse::<SocketAddr>().expect("address");
        }
    };
    Running { child, lines, addr, _dir: d }
}

fn wait_exit(r: &mut Running, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = r.child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "the gateway did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal_finishes_in_flight_request(sig: &str) {
    let mut g = spawn_gateway(&sig.to_ascii_lowercase());
    let mut s = TcpStream::connect(g.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n12345").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = g.child.id().to_string();
    let st = Command::new("kill").args([&format!("-{sig}"), &pid]).status().expect("kill");
    assert!(st.success());
    // The loop notices the signal and stops accepting.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let line = g.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("no draining log");
        if line.contains("draining") {
            break;
        }
    }
    assert!(g.child.try_wait().unwrap().is_none(), "exited with a request in flight");
    s.write_all(b"67890").unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.contains("Connection: close"), "{text}");
    assert!(text.ends_with('}'), "incomplete body: {text}");
    let status = wait_exit(&mut g, Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn sigterm_is_a_graceful_shutdown() {
    signal_finishes_in_flight_request("TERM");
}

#[test]
fn sigint_is_a_graceful_shutdown() {
    signal_finishes_in_flight_request("INT");
}

#[test]
fn sigterm_when_idle_exits_at_once() {
    let mut g = spawn_gateway("idle");
    // An idle keep-alive connection must not hold up the exit.
    let mut s = TcpStream::connect(g.addr).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut b = [0u8; 512];
    assert!(s.read(&mut b).unwrap() > 0);
    let pid = g.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = wait_exit(&mut g, Duration::from_secs(5));
    assert!(status.success(), "exit status {status:?}");
}

/// Reads one response from `s` (Content-Length framing): its status, whether it said
/// `Connection: close`, and its body. `Err` when the connection ended (EOF or reset) before it was
/// complete.
fn read_one(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u16, bool, String), String> {
    let mut tmp = [0u8; 4096];
    let mut fill = |s: &mut TcpStream, buf: &mut Vec<u8>| match s.read(&mut tmp) {
        Ok(0) => Err("EOF before a full response".to_string()),
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            Ok(())
        }
        Err(e) => Err(format!("read: {e}")),
    };
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        fill(s, buf)?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status: u16 = head.split(' ').nth(1).and_then(|x| x.parse().ok()).ok_or("no status")?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no content-length")?;
    let close = head.lines().any(|l| l.starts_with("connection:") && l.contains("close"));
    while buf.len() < end + len {
        fill(s, buf)?;
    }
    let body = String::from_utf8_lossy(&buf[end..end + len]).into_owned();
    buf.drain(..end + len);
    Ok((status, close, body))
}

/// One keep-alive client: requests back to back on one connection, a new connection after each
/// `Connection: close`, until connecting is refused. Returns the requests it sent that got no answer.
fn keep_alive_client(addr: SocketAddr, answered: &std::sync::atomic::AtomicUsize) -> Vec<String> {
    let mut lost = Vec::new();
    while let Ok(mut s) = TcpStream::connect(addr) {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = Vec::new();
        loop {
            if let Err(e) = s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n") {
                lost.push(format!("write: {e}"));
                break;
            }
            match read_one(&mut s, &mut buf) {
                Ok((status, close, body)) => {
                    let ok = status == 200 || (status == 503 && body.contains("\"shutting_down\"") && close);
                    assert!(ok, "unexpected answer {status} (close: {close}): {body}");
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if close {
                        break;
                    }
                }
                Err(e) => {
                    lost.push(e);
                    break;
                }
            }
        }
    }
    lost
}

/// SIGTERM under keep-alive load: every request a client sent is answered (served, or 503
/// `shutting_down` with `Connection: close`); connections end only after such an answer, and new ones
/// are refused. Repeated, as the moment the signal lands differs each time.
#[test]
fn sigterm_under_keep_alive_load_answers_every_request() {
    for round in 0..4 {
        let mut g = spawn_gateway(&format!("drain-load-{round}"));
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let (addr, answered) = (g.addr, answered.clone());
                std::thread::spawn(move || keep_alive_client(addr, &answered))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while answered.load(std::sync::atomic::Ordering::Relaxed) < 400 {
            assert!(Instant::now() < deadline, "the load did not get going");
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = g.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let lost: Vec<String> = clients.into_iter().flat_map(|t| t.join().unwrap()).collect();
        assert!(lost.is_empty(), "round {round}: {} requests got no answer: {lost:?}", lost.len());
        let status = wait_exit(&mut g, Duration::from_secs(10));
        assert!(status.success(), "exit status {status:?}");
    }
}

/// `--help` has a line for every subcommand `main.rs` dispatches on, and each of them takes `--help`.
#[test]
fn help_lists_every_subcommand() {
    use stonescriptdb_gateway::config::keys::SUBCOMMANDS;
    let main = include_str!("../src/main.rs");
    let dispatched: Vec<&str> = main.split("Some(\"").skip(1).filter_map(|s| s.split('"').next()).collect();
    assert!(dispatched.len() >= 3, "{dispatched:?}");
    for name in &dispatched {
        assert!(SUBCOMMANDS.iter().any(|(n, _)| n == name), "subcommand {name} has no --help line");
    }
    let d = TempDir::new("help-sub");
    let o = run(cmd(&d).arg("--help"));
    let out = String::from_utf8(o.stdout).unwrap();
    for (name, line) in SUBCOMMANDS {
        assert!(out.contains(&format!("stonescriptdb-gateway {name:<9} {line}")), "{name} missing:\n{out}");
        let o = run(cmd(&d).args([*name, "--help"]));
        assert!(o.status.success(), "{name} --help: {}", stderr(&o));
    }
}

/// A port already taken: the error names the address and the key that changes it.
#[test]
fn a_taken_port_names_the_address_and_gateway_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let d = TempDir::new("taken");
    let o = run(cmd(&d).env("GATEWAY_PORT", &port).env("GATEWAY_HOST", "127.0.0.1"));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("GATEWAY_PORT"), "{err}");
}
