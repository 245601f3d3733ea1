//! Memory cost of idle keep-alive connections: starts the gateway in this process, opens N connections
//! that each make one `GET /health` and then sit idle, and reports the growth of the process RSS
//! (`VmRSS` in /proc/self/status) per connection. `IDLE_CONNECTIONS` sets N (default 1000).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use stonescriptdb_gateway::config::{Config, Settings, Source};
use stonescriptdb_gateway::server::Server;

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// One request on `s`; reads exactly one Content-Length framed response so the connection stays idle.
fn health(s: &mut TcpStream, buf: &mut Vec<u8>) {
    s.write_all(HEALTH).unwrap();
    buf.clear();
    let mut tmp = [0u8; 1024];
    loop {
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "server closed the connection");
        buf.extend_from_slice(&tmp[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buf[..end]).unwrap();
        // /health answers 200 with PostgreSQL reachable and 503 without; either keeps the connection
        // open, which is all this measurement needs.
        assert!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.1 503"), "{head}");
        let len: usize = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).unwrap().parse().unwrap();
        if buf.len() >= end + 4 + len {
            return;
        }
    }
}

fn open(addr: SocketAddr, buf: &mut Vec<u8>) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    health(&mut s, buf);
    s
}

fn main() {
    let n: usize = std::env::var("IDLE_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let mut settings = Settings::defaults();
    for (k, v) in [
        ("GATEWAY_PORT", "0"),
        ("LOG_LEVEL", "warn"),
        ("KEEPALIVE_TIMEOUT_MS", "600000"),
        ("MAX_CLIENT_CONNECTIONS", "100000"),
    ] {
        assert!(settings.set(k, v, Source::Flag));
    }
    let cfg = Config::from_settings(&settings).expect("config");
    stonescriptdb_gateway::log::init(&cfg.log).expect("log");
    let (server, handle) = Server::bind(cfg).expect("bind");
    let addr = handle.addr;
    let thread = std::thread::spawn(move || server.run());

    // Warm up: the loop's scratch buffers, allocator arenas and the first slab growth.
    let mut buf = Vec::with_capacity(1024);
    let warm: Vec<TcpStream> = (0..64).map(|_| open(addr, &mut buf)).collect();
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));

    let before = rss_kib();
    let conns: Vec<TcpStream> = (0..n).map(|_| open(addr, &mut buf)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib();
    // Still open and usable: each answers once more.
    let mut conns = conns;
    for s in conns.iter_mut().step_by(97) {
        health(s, &mut buf);
    }

    let grown = after.saturating_sub(before);
    println!("idle keep-alive connections: {n}");
    println!("RSS before: {before} KiB, after: {after} KiB, growth: {grown} KiB");
    println!(
        "per connection: {:.2} KiB (server and client side in one process; kernel socket buffers not included)",
        grown as f64 / n as f64
    );

    drop(conns);
    handle.shutdown();
    thread.join().unwrap().expect("server run");
}
