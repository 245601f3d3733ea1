//! Test support: start a gateway on port 0 in this process, talk raw HTTP/1.1 to it, and reach the
//! throwaway PostgreSQL cluster that `scripts/test.sh` starts.
#![allow(dead_code)]

pub mod archive;
pub mod cluster;
pub mod db;
pub mod tools;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use stonescriptdb_gateway::config::{Config, Settings, Source};
use stonescriptdb_gateway::server::{Handle, Server};

/// A running gateway; shut down and joined on drop.
pub struct Gateway {
    pub addr: SocketAddr,
    pub handle: Handle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Gateway {
    /// Stops it and waits; returns what `run` returned.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.handle.shutdown();
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.handle.shutdown();
            let _ = t.join();
        }
    }
}

/// Settings pointing at the test cluster (when one is configured) plus the given overrides.
pub fn settings(overrides: &[(&str, &str)]) -> Settings {
    let mut s = Settings::defaults();
    s.set("GATEWAY_PORT", "0", Source::Flag);
    if let Ok(host) = std::env::var("TEST_PG_HOST") {
        s.set("DB_HOST", &host, Source::Flag);
    }
    if let Ok(port) = std::env::var("TEST_PG_PORT") {
        s.set("DB_PORT", &port, Source::Flag);
    }
    s.set("DB_USER", &std::env::var("TEST_PG_SUPERUSER").unwrap_or_else(|_| "postgres".into()), Source::Flag);
    s.set("LOG_LEVEL", "warn", Source::Flag);
    for (k, v) in overrides {
        assert!(s.set(k, v, Source::Flag), "unknown key {k}");
    }
    s
}

pub fn start(overrides: &[(&str, &str)]) -> Gateway {
    let cfg = Config::from_settings(&settings(overrides)).expect("valid test config");
    start_with(cfg)
}

pub fn start_with(cfg: Config) -> Gateway {
    // The first gateway of the test process sets the log level for all of them.
    let _ = stonescriptdb_gateway::log::init(&cfg.log);
    let (server, handle) = Server::bind(cfg).expect("bind");
    let addr = handle.addr;
    let thread = std::thread::spawn(move || server.run());
    Gateway { addr, handle, thread: Some(thread) }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> stonescriptdb_gateway::json::Value {
        stonescriptdb_gateway::json::parse(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.text()))
    }

    /// The `error` code of a JSON error body.
    pub fn error_code(&self) -> String {
        self.json().get("error").and_then(|v| v.as_str()).unwrap_or("").to_string()
    }
}

/// A client connection with its own read buffer, so pipelined responses can be read one by one.
pub struct Conn {
    pub sock: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        sock.set_nodelay(true).unwrap();
        Conn { sock, buf: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("write");
    }

    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 65536];
        match self.sock.read(&mut tmp) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
            // A reset is the server closing too (e.g. it refused the connection at accept).
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Reads one response (Content-Length or chunked framing). Panics on EOF before a full response.
    pub fn read_response(&mut self) -> Resp {
        self.try_read_response().expect("connection closed before a full response")
    }

    pub fn try_read_response(&mut self) -> Option<Resp> {
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if !self.fill() {
                return None;
            }
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).expect("utf8 head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_string(), v.trim().to_string())
            })
            .collect();
        self.buf.drain(..head_end);
        let mut r = Resp { status, headers, body: Vec::new() };
        if status == 100 {
            return Some(r);
        }
        if r.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    if !self.fill() {
                        return None;
                    }
                };
                let size = usize::from_str_radix(std::str::from_utf8(&self.buf[..line_end]).unwrap(), 16).unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    if !self.fill() {
                        return None;
                    }
                }
                r.body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    return Some(r);
                }
            }
        }
        let len: usize = r.header("content-length").expect("content-length").parse().unwrap();
        while self.buf.len() < len {
            if !self.fill() {
                return None;
            }
        }
        r.body = self.buf.drain(..len).collect();
        Some(r)
    }

    /// True when the server closed the connection (EOF) with nothing more to read.
    pub fn is_closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill()
    }
}

/// The value of one series of the gateway's `/metrics` (`series`: the name after the
/// `stonescriptdb_gateway_` prefix, with its labels); panics when it is missing.
pub fn metric(addr: SocketAddr, series: &str) -> f64 {
    let r = request(addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let prefix = format!("stonescriptdb_gateway_{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

/// One request on a new connection with `Connection: close`.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut c = Conn::open(addr);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    c.send(&bytes);
    c.read_response()
}

pub fn post_json(addr: SocketAddr, path: &str, body: &str) -> Resp {
    request(addr, "POST", path, &[("Content-Type", "application/json")], body.as_bytes())
}

/// Connection parameters for the test cluster; fails loudly when the suite was not started by
/// `scripts/test.sh`.
pub fn pg_env() -> (String, u16, String) {
    let port = std::env::var("TEST_PG_PORT")
        .expect("TEST_PG_PORT is not set: run the suite with scripts/test.sh, which starts a throwaway PostgreSQL");
    let host = std::env::var("TEST_PG_HOST").expect("TEST_PG_HOST is not set: run scripts/test.sh");
    let user = std::env::var("TEST_PG_SUPERUSER").unwrap_or_else(|_| "postgres".into());
    (host, port.parse().unwrap(), user)
}

/// A multipart/form-data body: (content type, bytes). A field named `schema` is sent as a file.
pub fn multipart(fields: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "----ssdbtest5e2a";
    let mut body = Vec::new();
    for (name, data) in fields {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
        if *name == "schema" {
            body.extend_from_slice(b"; filename=\"s.tar.gz\"\r\nContent-Type: application/gzip");
        }
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Reads a gateway's JSON log lines (stderr of the real binary, `LOG_FORMAT=json`) until the one that
/// names the address it listens on; returns that address.
pub fn listening_addr(stderr: &mut impl std::io::BufRead) -> String {
    let started = std::time::Instant::now();
    loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "gateway exited early");
        if let Some(i) = line.find("\"addr\":\"") {
            let rest = &line[i + 8..];
            return rest[..rest.find('"').unwrap()].to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no listening line");
    }
}

/// Uploads `files` as a tar.gz `schema` field for `platform` to `path` (`/register`, `/migrate`) with
/// the admin token `token`.
pub fn deploy_files(addr: SocketAddr, path: &str, platform: &str, files: &[(&str, &str)], token: &str) -> Resp {
    let archive = archive::tgz(files.iter().copied());
    let fields: Vec<(&str, &[u8])> = vec![("platform", platform.as_bytes()), ("schema", &archive)];
    let (ct, body) = multipart(&fields);
    let auth = format!("Bearer {token}");
    request(addr, "POST", path, &[("Content-Type", ct.as_str()), ("Authorization", auth.as_str())], &body)
}
