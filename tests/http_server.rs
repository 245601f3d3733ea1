//! Over-the-socket tests of the HTTP layer: keep-alive, pipelining, `Expect: 100-continue`, chunked
//! bodies, smuggling shapes, limits and timeouts, allowlist, admin token, graceful shutdown. No
//! PostgreSQL is needed: they use `/health` and the framing/refusal paths that answer before dispatch.

mod common;

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Conn, Resp, start};

const TOKEN: &str = "0123456789abcdef-admin";

/// A connection whose reads give up after 5 s, so a server that fails to answer fails the test quickly.
fn open(addr: SocketAddr) -> Conn {
    let c = Conn::open(addr);
    c.sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

/// Asserts the common shape of every response: framed by `Content-Length`, JSON typed and parseable.
fn check_json(r: &Resp) {
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    let len: usize = r.header("content-length").expect("Content-Length").parse().unwrap();
    assert_eq!(len, r.body.len());
    let _ = r.json();
}

/// Reads the next response and checks its status and JSON shape.
fn expect_status(c: &mut Conn, status: u16) -> Resp {
    let r = c.read_response();
    assert_eq!(r.status, status, "body: {}", r.text());
    check_json(&r);
    r
}

/// Asserts that the server closed the connection with nothing more to say.
fn expect_eof(c: &mut Conn) {
    assert!(c.is_closed(), "expected the server to close the connection");
}

/// True when nothing arrives and the connection stays open for `wait`.
fn stays_open(c: &mut Conn, wait: Duration) -> bool {
    c.sock.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 1];
    let open = match c.sock.read(&mut b) {
        Ok(0) => false,
        Ok(_) => panic!("unexpected bytes from the server"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => true,
        Err(_) => false,
    };
    c.sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    open
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";

fn status_of(addr: SocketAddr, req: &str) -> Resp {
    let mut c = open(addr);
    c.send(req.as_bytes());
    let r = c.read_response();
    check_json(&r);
    r
}

// ---------------------------------------------------------------------------------------------------
// Connection management

#[test]
fn keep_alive_reuses_one_socket() {
    let g = start(&[]);
    let mut c = open(g.addr);
    for _ in 0..3 {
        c.send(HEALTH);
        let r = expect_status(&mut c, 200);
        assert_eq!(r.json().get("status").and_then(|v| v.as_str()), Some("healthy"));
        assert_eq!(r.header("connection"), None);
    }
    assert!(stays_open(&mut c, Duration::from_millis(200)));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let g = start(&[]);
    let mut c = open(g.addr);
    let mut batch = Vec::new();
    batch.extend_from_slice(HEALTH);
    batch.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n");
    batch.extend_from_slice(b"PUT /health HTTP/1.1\r\nHost: localhost\r\n\r\n");
    batch.extend_from_slice(HEALTH);
    c.send(&batch);
    expect_status(&mut c, 200);
    expect_status(&mut c, 404);
    expect_status(&mut c, 405);
    expect_status(&mut c, 200);
    assert!(stays_open(&mut c, Duration::from_millis(200)));
}

#[test]
fn pipelined_requests_with_bodies_stay_framed() {
    let g = start(&[]);
    let mut c = open(g.addr);
    let mut batch = Vec::new();
    batch.extend_from_slice(
        b"POST /call HTTP/1.1\r\nHost: localhost\r\nContent-Length: 21\r\n\r\nGET /nope HTTP/1.1\r\n\r\n",
    );
    batch.extend_from_slice(HEALTH);
    c.send(&batch);
    let first = c.read_response();
    check_json(&first);
    // The body was read as a body (and refused as JSON), not as a request.
    assert_eq!((first.status, first.error_code().as_str()), (400, "invalid_json"), "{}", first.text());
    // The body that looks like a request must not have been taken as one.
    expect_status(&mut c, 200);
}

#[test]
fn connection_close_is_honoured() {
    let g = start(&[]);
    let mut c = open(g.addr);
    c.send(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let r = expect_status(&mut c, 200);
    assert_eq!(r.header("connection"), Some("close"));
    expect_eof(&mut c);
}

#[test]
fn http10_without_keep_alive_closes() {
    let g = start(&[]);
    let mut c = open(g.addr);
    c.send(b"GET /health HTTP/1.0\r\n\r\n");
    let r = expect_status(&mut c, 200);
    assert_eq!(r.header("connection"), Some("close"));
    expect_eof(&mut c);
}

#[test]
fn http10_with_keep_alive_stays_open() {
    let g = start(&[]);
    let mut c = open(g.addr);
    for _ in 0..2 {
        c.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = expect_status(&mut c, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    assert!(stays_open(&mut c, Duration::from_millis(200)));
}

#[test]
fn head_has_headers_but_no_body() {
    let g = start(&[]);
    let get = status_of(g.addr, "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut c = open(g.addr);
    c.send(b"HEAD /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut raw = Vec::new();
    c.sock.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(body.is_empty(), "HEAD response carried a body: {body:?}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains(&format!("content-length: {}", get.body.len())), "{head}");
    assert!(lower.contains("content-type: application/json"), "{head}");
}

// ---------------------------------------------------------------------------------------------------
// Routing and response shape

#[test]
fn unknown_path_is_404_json() {
    let g = start(&[]);
    let r = status_of(g.addr, "GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "not_found");
}

#[test]
fn wrong_method_is_405_with_allow() {
    let g = start(&[]);
    let r = status_of(g.addr, "GET /call HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = status_of(g.addr, "DELETE /health HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

// ---------------------------------------------------------------------------------------------------
// Expect: 100-continue

#[test]
fn expect_continue_then_large_body() {
    let g = start(&[("MAX_CALL_BODY_BYTES", "4194304")]);
    let mut c = open(g.addr);
    let len = 2 * 1024 * 1024;
    c.send(
        format!(
            "POST /call HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\
             Expect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    );
    let interim = c.read_response();
    assert_eq!(interim.status, 100, "expected 100 Continue before the body");
    // A JSON string of exactly `len` bytes.
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(b"{\"platform\":\"httptest_nodb\",\"function\":\"f\",\"x\":\"");
    body.resize(len - 2, b'a');
    body.extend_from_slice(b"\"}");
    c.send(&body);
    let r = c.read_response();
    check_json(&r);
    // The whole 2 MiB body was received and parsed: the call got as far as the database lookup.
    assert_eq!((r.status, r.error_code().as_str()), (404, "database_not_found"), "{}", r.text());
    // The connection is still usable: the body was consumed exactly.
    c.send(HEALTH);
    expect_status(&mut c, 200);
}

/// Sends a head with `Expect: 100-continue` and a declared body, never the body; the final answer must
/// come at once (no 100 first), and the connection must then close.
fn refused_before_body(addr: SocketAddr, method: &str, path: &str, extra: &str, len: usize) -> Resp {
    let mut c = open(addr);
    c.send(
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\nExpect: 100-continue\r\n{extra}\r\n")
            .as_bytes(),
    );
    let r = c.read_response();
    assert_ne!(r.status, 100, "a refused head must not get 100 Continue");
    check_json(&r);
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    expect_eof(&mut c);
    r
}

#[test]
fn expect_continue_refusals_come_before_the_body() {
    let g = start(&[]);
    let r = refused_before_body(g.addr, "POST", "/call", "", 2 * 1024 * 1024);
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "payload_too_large");
    assert_eq!(refused_before_body(g.addr, "POST", "/nope", "", 10).status, 404);
    let r = refused_before_body(g.addr, "PUT", "/call", "", 10);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    // No ADMIN_TOKEN configured: admin routes are off.
    assert_eq!(refused_before_body(g.addr, "POST", "/admin/create-tenant", "", 10).status, 503);
    // Multipart routes refuse other content types.
    let r = refused_before_body(g.addr, "POST", "/register", "Content-Type: application/json\r\n", 10);
    assert_eq!(r.status, 415);
    drop(g);

    let g = start(&[("ADMIN_TOKEN", TOKEN)]);
    assert_eq!(refused_before_body(g.addr, "POST", "/admin/create-tenant", "", 10).status, 401);
    drop(g);

    let g = start(&[("ALLOWED_NETWORKS", "10.0.0.0/8")]);
    let r = refused_before_body(g.addr, "POST", "/call", "", 10);
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "unauthorized");
}

#[test]
fn refusal_with_body_already_sent_still_delivers_the_answer() {
    // The client sent the whole (refused) body with the head; the server answers and closes without
    // reading it. The answer must reach the client intact rather than be lost to a reset.
    let g = start(&[("MAX_CALL_BODY_BYTES", "1024")]);
    for _ in 0..20 {
        let mut c = open(g.addr);
        let body = vec![b'x'; 200 * 1024];
        let mut req =
            format!("POST /call HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        req.extend_from_slice(&body[..32 * 1024]);
        c.send(&req);
        std::thread::sleep(Duration::from_millis(20));
        let _ = std::io::Write::write_all(&mut c.sock, &body[32 * 1024..]);
        let r = expect_status(&mut c, 413);
        assert_eq!(r.header("connection"), Some("close"));
    }
}

// ---------------------------------------------------------------------------------------------------
// Chunked request bodies

#[test]
fn chunked_body_across_writes_with_extensions_and_trailers() {
    let g = start(&[]);
    let mut c = open(g.addr);
    let parts: [&[u8]; 7] = [
        b"POST /call HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5;name=value\r\n{\"pla",
        b"\r\n",
        b"28\r",
        b"\ntform\":\"httptest_nodb\",\"function\":\"fn\"}\n\r\n",
        b"0;last\r\nX-Trailer: yes\r\n",
        b"\r\n",
    ];
    for p in parts {
        c.send(p);
        std::thread::sleep(Duration::from_millis(30));
    }
    let r = c.read_response();
    check_json(&r);
    // The assembled body is the whole call: it got as far as the database lookup.
    assert_eq!((r.status, r.error_code().as_str()), (404, "database_not_found"), "{}", r.text());
    // The decoder stopped exactly at the end of the trailers: the next request is parsed cleanly.
    c.send(HEALTH);
    expect_status(&mut c, 200);

    // Same on a route that ignores its body, pipelined in one write.
    let mut c = open(g.addr);
    let mut batch = b"GET /health HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    batch.extend_from_slice(b"a\r\n0123456789\r\n0\r\n\r\n");
    batch.extend_from_slice(HEALTH);
    c.send(&batch);
    expect_status(&mut c, 200);
    expect_status(&mut c, 200);
}

#[test]
fn chunked_body_over_the_limit_is_413() {
    let g = start(&[("MAX_CALL_BODY_BYTES", "1024")]);
    let mut c = open(g.addr);
    c.send(b"POST /call HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..4 {
        c.send(b"200\r\n");
        c.send(&[b'x'; 0x200]);
        c.send(b"\r\n");
    }
    let r = expect_status(&mut c, 413);
    assert_eq!(r.error_code(), "payload_too_large");
    assert!(r.text().contains("MAX_CALL_BODY_BYTES"), "the answer names the setting: {}", r.text());
    expect_eof(&mut c);
}

#[test]
fn malformed_chunk_size_is_400_and_close() {
    let g = start(&[]);
    let mut c = open(g.addr);
    c.send(b"POST /call HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n");
    expect_status(&mut c, 400);
    expect_eof(&mut c);
}

// ---------------------------------------------------------------------------------------------------
// Request smuggling shapes

#[test]
fn smuggling_shapes_are_refused_and_closed() {
    let g = start(&[]);
    let smuggled = "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for head in [
        "POST /call HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        "POST /call HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "POST /call HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3, 4\r\n\r\n",
        "POST /call HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST /call HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        "POST /call HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST /call HTTP/1.0\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
    ] {
        let mut c = open(g.addr);
        c.send(format!("{head}0\r\n\r\n{smuggled}").as_bytes());
        let r = c.read_response();
        assert_eq!(r.status, 400, "{head:?}: {}", r.text());
        check_json(&r);
        assert_eq!(r.header("connection"), Some("close"), "{head:?}");
        // Nothing after the refused head is treated as a request.
        expect_eof(&mut c);
    }
}

// ---------------------------------------------------------------------------------------------------
// Limits and timeouts

#[test]
fn too_many_headers_is_431() {
    let g = start(&[("MAX_HEADERS", "8")]);
    let mut req = String::from("GET /health HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..10 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let mut c = open(g.addr);
    c.send(req.as_bytes());
    let r = expect_status(&mut c, 431);
    assert_eq!(r.error_code(), "headers_too_large");
    expect_eof(&mut c);
    // At the limit is fine.
    let mut req = String::from("GET /health HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..7 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    assert_eq!(status_of(g.addr, &req).status, 200);
}

#[test]
fn oversized_head_is_431() {
    let g = start(&[("MAX_HEAD_BYTES", "2048")]);
    // Complete but too big.
    let r =
        status_of(g.addr, &format!("GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(3000)));
    assert_eq!(r.status, 431);
    // Incomplete and already too big: refused without waiting for the end of the head.
    let mut c = open(g.addr);
    c.send(format!("GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: {}", "a".repeat(3000)).as_bytes());
    expect_status(&mut c, 431);
    expect_eof(&mut c);
}

#[test]
fn body_over_the_limit_is_413() {
    let g = start(&[("MAX_CALL_BODY_BYTES", "1024")]);
    let mut c = open(g.addr);
    c.send(b"POST /call HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1025\r\n\r\n");
    let r = expect_status(&mut c, 413);
    assert_eq!(r.error_code(), "payload_too_large");
    assert!(r.text().contains("limit of 1024 bytes set by MAX_CALL_BODY_BYTES"), "{}", r.text());
    expect_eof(&mut c);
}

#[test]
fn slow_head_gets_408_then_close() {
    let g = start(&[("HEAD_TIMEOUT_MS", "300")]);
    let mut c = open(g.addr);
    let t = Instant::now();
    c.send(b"GET /health HTTP/1.1\r\nHo");
    // Trickling more bytes does not extend the head deadline.
    std::thread::sleep(Duration::from_millis(150));
    c.send(b"st: t\r\n");
    let r = expect_status(&mut c, 408);
    assert_eq!(r.error_code(), "request_timeout");
    assert!(t.elapsed() >= Duration::from_millis(290), "408 came too early: {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(3), "408 came too late: {:?}", t.elapsed());
    expect_eof(&mut c);
}

#[test]
fn slow_body_gets_408() {
    let g = start(&[("BODY_TIMEOUT_MS", "300")]);
    let mut c = open(g.addr);
    let t = Instant::now();
    c.send(b"POST /call HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n12345");
    let r = expect_status(&mut c, 408);
    assert_eq!(r.error_code(), "request_timeout");
    assert!(t.elapsed() >= Duration::from_millis(290));
    expect_eof(&mut c);
}

#[test]
fn idle_keep_alive_is_closed_silently() {
    let g = start(&[("KEEPALIVE_TIMEOUT_MS", "300")]);
    let mut c = open(g.addr);
    c.send(HEALTH);
    expect_status(&mut c, 200);
    let t = Instant::now();
    expect_eof(&mut c);
    assert!(t.elapsed() >= Duration::from_millis(250), "closed too early: {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(3));
    // A connection that never sent anything is idle too.
    let mut c = open(g.addr);
    expect_eof(&mut c);
}

// ---------------------------------------------------------------------------------------------------
// Allowlist and admin token

fn get_with(addr: SocketAddr, path: &str, headers: &str) -> Resp {
    status_of(addr, &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n"))
}

#[test]
fn allowlist_refuses_other_networks() {
    let g = start(&[("ALLOWED_NETWORKS", "10.0.0.0/8")]);
    let r = get_with(g.addr, "/health", "");
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "unauthorized");
    // Without TRUSTED_PROXIES the header is ignored.
    let r = get_with(g.addr, "/health", "X-Forwarded-For: 10.1.2.3\r\n");
    assert_eq!(r.status, 403);
}

#[test]
fn forwarded_for_counts_only_from_trusted_proxies() {
    let g = start(&[("ALLOWED_NETWORKS", "10.0.0.0/8"), ("TRUSTED_PROXIES", "127.0.0.0/8")]);
    assert_eq!(get_with(g.addr, "/health", "X-Forwarded-For: 10.1.2.3\r\n").status, 200);
    let r = get_with(g.addr, "/health", "X-Forwarded-For: 8.8.8.8\r\n");
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "unauthorized");
    // The proxy itself is not in ALLOWED_NETWORKS.
    assert_eq!(get_with(g.addr, "/health", "").status, 403);
}

#[test]
fn admin_routes_are_off_without_a_token() {
    let g = start(&[]);
    let r = get_with(g.addr, "/admin/databases", &format!("Authorization: Bearer {TOKEN}\r\n"));
    assert_eq!(r.status, 503);
    assert!(r.text().contains("ADMIN_TOKEN"), "should say how to enable: {}", r.text());
}

#[test]
fn admin_token_is_checked() {
    let g = start(&[("ADMIN_TOKEN", TOKEN)]);
    let r = get_with(g.addr, "/admin/databases", "");
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "invalid_token");
    let r = get_with(g.addr, "/admin/databases", "Authorization: Bearer wrong-token-wrong-token\r\n");
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "invalid_token");
    let r = get_with(g.addr, "/admin/databases", &format!("Authorization: Basic {TOKEN}\r\n"));
    assert_eq!(r.status, 401);
    let r = get_with(g.addr, "/admin/databases", &format!("Authorization: Bearer {TOKEN}\r\n"));
    assert!(!matches!(r.status, 401 | 403 | 503), "{} {}", r.status, r.text());
}

#[test]
fn admin_allowlist_applies_even_with_the_right_token() {
    let g = start(&[("ADMIN_TOKEN", TOKEN), ("ALLOWED_ADMIN_IPS", "10.0.0.0/8")]);
    let r = get_with(g.addr, "/admin/databases", &format!("Authorization: Bearer {TOKEN}\r\n"));
    assert_eq!(r.status, 403);
    // Non-admin routes are unaffected.
    assert_eq!(get_with(g.addr, "/health", "").status, 200);
}

// ---------------------------------------------------------------------------------------------------
// Graceful shutdown

/// Waits until a new connection is refused, reset or closed without an answer.
fn wait_refused(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Err(_) => return,
            Ok(mut s) => {
                let _ = std::io::Write::write_all(&mut s, HEALTH);
                s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
                let mut b = [0u8; 1];
                match s.read(&mut b) {
                    Ok(0) => return,
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
                    _ => {}
                }
            }
        }
        assert!(Instant::now() < deadline, "new connections are still served after shutdown");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shutdown_lets_an_in_flight_request_finish() {
    let g = start(&[]);
    let mut idle = open(g.addr);
    idle.send(HEALTH);
    expect_status(&mut idle, 200);

    let mut c = open(g.addr);
    c.send(b"POST /call HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\":");
    std::thread::sleep(Duration::from_millis(100));
    g.handle.shutdown();
    wait_refused(g.addr);
    // The idle keep-alive connection was closed.
    expect_eof(&mut idle);
    c.send(b"\"bcd\"}");
    let r = c.read_response();
    check_json(&r);
    // The whole body arrived after shutdown began and was parsed: well-formed, wrong shape.
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_request"), "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    expect_eof(&mut c);
    g.stop().expect("run returns Ok");
}

/// A request already on its way over a keep-alive connection that looked idle when the drain began is
/// answered (served, or 503 `shutting_down` with `Connection: close`), never cut off; a new request
/// on a connection that was busy when the drain began gets 503 `shutting_down`.
#[test]
fn shutdown_answers_requests_on_idle_connections() {
    for _ in 0..5 {
        let g = start(&[]);
        let mut c = open(g.addr);
        c.send(HEALTH);
        expect_status(&mut c, 200);
        c.send(HEALTH);
        g.handle.shutdown();
        let r = c.read_response();
        match r.status {
            200 => {}
            503 => {
                assert_eq!(r.error_code(), "shutting_down", "{}", r.text());
                assert_eq!(r.header("connection"), Some("close"));
            }
            s => panic!("unexpected {s}: {}", r.text()),
        }
        g.stop().expect("run returns Ok");
    }
}

#[test]
fn shutdown_without_traffic_returns_promptly() {
    let g = start(&[]);
    let t = Instant::now();
    g.stop().expect("run returns Ok");
    assert!(t.elapsed() < Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------------
// Edge cases found while reading the server

#[test]
fn bare_lf_in_chunked_trailer_is_refused() {
    // "0\r\n\n" ends the body for a peer that accepts bare LF; if we instead read on, the request after
    // it is swallowed as a trailer: a desync between us and such a front proxy. Refuse it.
    let g = start(&[]);
    let mut c = open(g.addr);
    c.send(b"POST /call HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\nGET /admin/databases HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let r = expect_status(&mut c, 400);
    assert_eq!(r.header("connection"), Some("close"));
    expect_eof(&mut c);
}

#[test]
fn pipelined_requests_then_half_close_are_all_answered() {
    let g = start(&[]);
    let mut c = open(g.addr);
    let mut batch = Vec::new();
    for _ in 0..3 {
        batch.extend_from_slice(HEALTH);
    }
    c.send(&batch);
    c.sock.shutdown(std::net::Shutdown::Write).unwrap();
    expect_status(&mut c, 200);
    expect_status(&mut c, 200);
    let _last = expect_status(&mut c, 200);
    // Whether the last answer says `Connection: close` depends on whether the FIN arrived with the
    // requests or a moment later; either way every answer is sent and then the connection is closed.
    expect_eof(&mut c);
}

#[test]
fn connections_over_the_limit_are_refused() {
    let g = start(&[("MAX_CLIENT_CONNECTIONS", "2")]);
    let mut a = open(g.addr);
    let mut b = open(g.addr);
    a.send(HEALTH);
    b.send(HEALTH);
    expect_status(&mut a, 200);
    expect_status(&mut b, 200);
    let mut c = open(g.addr);
    c.send(HEALTH);
    expect_eof(&mut c);
    drop(a);
    // A freed slot is usable again.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut d = open(g.addr);
        d.send(HEALTH);
        if d.try_read_response().is_some_and(|r| r.status == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "slot not freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------------
// Limits that keep one client from hurting the others

#[test]
fn connections_per_address_are_capped() {
    let g = start(&[("MAX_CONNECTIONS_PER_ADDRESS", "3")]);
    let mut held: Vec<Conn> = (0..3).map(|_| open(g.addr)).collect();
    for c in &mut held {
        c.send(HEALTH);
        expect_status(c, 200);
    }
    // The fourth from the same address is refused at accept.
    let mut extra = open(g.addr);
    extra.send(HEALTH);
    expect_eof(&mut extra);
    // One closes: there is room again.
    drop(held.pop());
    let ok = common::db::eventually(Duration::from_secs(2), || {
        let mut c = open(g.addr);
        c.send(HEALTH);
        c.try_read_response().is_some_and(|r| r.status == 200)
    });
    assert!(ok, "no room after a connection closed");
}

#[test]
fn a_body_trickling_in_ends_at_the_total_body_timeout() {
    let g = start(&[("BODY_TIMEOUT_MS", "5000"), ("BODY_TOTAL_TIMEOUT_MS", "1000")]);
    let mut c = open(g.addr);
    c.send(b"POST /call HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n");
    let t = Instant::now();
    // One byte every 200 ms: never silent for BODY_TIMEOUT_MS, never done either.
    let mut w = c.sock.try_clone().unwrap();
    let drip = std::thread::spawn(move || {
        use std::io::Write;
        for _ in 0..20 {
            if w.write_all(b" ").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let r = c.read_response();
    let took = t.elapsed();
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(took < Duration::from_millis(2500), "refused after {took:?}");
    drip.join().unwrap();
}

#[test]
fn bodies_in_flight_share_one_memory_budget() {
    let g = start(&[("MAX_UPLOADS_IN_FLIGHT_BYTES", "2048")]);
    // An unfinished body of 1500 bytes holds its share …
    let mut first = open(g.addr);
    first.send(b"POST /call HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1500\r\n\r\n{\"platform\":");
    std::thread::sleep(Duration::from_millis(200));
    // … so a second one that would pass the budget is refused, retryable.
    let mut second = open(g.addr);
    second.send(b"POST /call HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1500\r\n\r\n");
    let r = second.read_response();
    assert_eq!((r.status, r.error_code().as_str()), (503, "uploads_busy"), "{}", r.text());
    assert!(r.header("retry-after").is_some());
    // Once the first connection is gone its share is given back.
    drop(first);
    let ok = common::db::eventually(Duration::from_secs(2), || {
        let mut c = open(g.addr);
        c.send(b"POST /call HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1500\r\n\r\n");
        c.send(&[b' '; 1500]);
        c.try_read_response().is_some_and(|r| r.status != 503)
    });
    assert!(ok, "the budget was not given back");
}
