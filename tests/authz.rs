//! The authorization table end to end: who may register which platform (no takeover of a keyless one),
//! registration and storage caps, cross-site requests and DNS rebinding, 401 before 404 for keyed
//! platforms, bounded and escaped logs under a flood of refusals, and the connection reserve for the
//! operator's addresses.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Resp, post_json, request};
use stonescriptdb_gateway::json::Value;

const TOKEN: &str = "authz-admin-token-0123456789";

static SEQ: AtomicU32 = AtomicU32::new(0);

fn uniq(tag: &str) -> String {
    format!("{tag}_{:x}{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Drops the catalog, the platforms' databases and roles when the test ends (also on panic).
struct Cleanup {
    catalog: String,
    platforms: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(mut c) = stonescriptdb_gateway::pg::blocking::Client::connect(&common::db::su_params("postgres")) else {
            return;
        };
        let mut dbs = vec![self.catalog.clone()];
        for p in &self.platforms {
            if let Ok(rows) = c.simple_query(&format!("SELECT datname FROM pg_database WHERE datname LIKE '{p}\\_%'")) {
                dbs.extend(rows.into_iter().filter_map(|r| r[0].clone()));
            }
        }
        for d in dbs {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{d}\" WITH (FORCE)"));
        }
        for p in &self.platforms {
            let _ = c.batch_execute(&format!("DROP ROLE IF EXISTS \"ssdb_{p}\""));
        }
        c.close();
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn admin_json(addr: SocketAddr, path: &str, body: &str) -> Resp {
    let a = bearer(TOKEN);
    request(addr, "POST", path, &[("Content-Type", "application/json"), ("Authorization", &a)], body.as_bytes())
}

fn keyed_json(addr: SocketAddr, path: &str, key: &str, body: &str) -> Resp {
    let a = bearer(key);
    request(addr, "POST", path, &[("Content-Type", "application/json"), ("Authorization", &a)], body.as_bytes())
}

/// A v1 deploy of one function `hello()` to the platform's main database.
fn deploy_v1(addr: SocketAddr, platform: &str, auth: Option<&str>) -> Resp {
    let archive = common::archive::tgz([(
        "functions/hello.sql",
        "CREATE OR REPLACE FUNCTION hello() RETURNS int LANGUAGE sql AS 'SELECT 1';",
    )]);
    let (ct, body) = common::multipart(&[("platform", platform.as_bytes()), ("schema", &archive)]);
    let mut h = vec![("Content-Type", ct.clone())];
    if let Some(a) = auth {
        h.push(("Authorization", a.to_string()));
    }
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    request(addr, "POST", "/register", &h, &body)
}

fn call(addr: SocketAddr, platform: &str, tenant: Option<&str>, key: Option<&str>) -> Resp {
    let body = match tenant {
        Some(t) => format!(r#"{{"platform":"{platform}","tenant_id":"{t}","function":"hello","params":[]}}"#),
        None => format!(r#"{{"platform":"{platform}","function":"hello","params":[]}}"#),
    };
    match key {
        Some(k) => keyed_json(addr, "/call", k, &body),
        None => post_json(addr, "/call", &body),
    }
}

fn code(r: &Resp) -> (u16, String) {
    (r.status, r.error_code())
}

fn api_key(r: &Resp) -> String {
    match r.json().get("api_key") {
        Some(Value::String(k)) => k.clone(),
        _ => panic!("no api_key in {}", r.text()),
    }
}

#[test]
fn a_keyless_platform_cannot_be_taken_over_by_registering_it() {
    let catalog = uniq("authzcat");
    let (victim, role_only, fresh) = (uniq("victim"), uniq("roleonly"), uniq("fresh"));
    let _c = Cleanup { catalog: catalog.clone(), platforms: vec![victim.clone(), role_only.clone(), fresh.clone()] };
    let g = common::start(&[("CATALOG_DB", &catalog), ("ADMIN_TOKEN", TOKEN)]);

    // The owner deploys without a key (REQUIRE_PLATFORM_KEYS off) and calls without one.
    assert_eq!(deploy_v1(g.addr, &victim, None).status, 200);
    assert_eq!(call(g.addr, &victim, None, None).status, 200);

    // An anonymous client naming it: refused, with or without asking for a key, and no key is made.
    for body in [format!(r#"{{"platform":"{victim}","require_key":true}}"#), format!(r#"{{"platform":"{victim}"}}"#)] {
        let r = post_json(g.addr, "/platform/register", &body);
        assert_eq!(code(&r), (401, "invalid_token".into()), "{}", r.text());
        assert!(r.json().get("api_key").is_none());
    }
    // A key of another platform is no better.
    let r = post_json(g.addr, "/platform/register", &format!(r#"{{"platform":"{fresh}","require_key":true}}"#));
    assert_eq!(r.status, 201, "a new platform is open under PLATFORM_REGISTRATION=open: {}", r.text());
    let fresh_key = api_key(&r);
    let r = keyed_json(
        g.addr,
        "/platform/register",
        &fresh_key,
        &format!(r#"{{"platform":"{victim}","require_key":true}}"#),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    // The owner's keyless calls still work.
    assert_eq!(call(g.addr, &victim, None, None).status, 200);

    // A platform that exists only as its PostgreSQL role counts as existing too.
    common::db::exec("postgres", &format!("CREATE ROLE \"ssdb_{role_only}\" NOLOGIN"));
    let r = post_json(g.addr, "/platform/register", &format!(r#"{{"platform":"{role_only}"}}"#));
    assert_eq!(code(&r), (401, "invalid_token".into()), "{}", r.text());

    // The operator may give the keyless platform a key.
    let r = admin_json(g.addr, "/platform/register", &format!(r#"{{"platform":"{victim}","require_key":true}}"#));
    assert_eq!(r.status, 201, "{}", r.text());
    let key = api_key(&r);
    assert_eq!(code(&call(g.addr, &victim, None, None)), (401, "invalid_platform_key".into()));
    assert_eq!(call(g.addr, &victim, None, Some(&key)).status, 200);
    // Now that it has a key, its holder may name it (and learns only that it is registered already).
    let r = keyed_json(g.addr, "/platform/register", &key, &format!(r#"{{"platform":"{victim}"}}"#));
    assert_eq!(code(&r), (409, "platform_already_exists".into()), "{}", r.text());
    let r = post_json(g.addr, "/platform/register", &format!(r#"{{"platform":"{victim}"}}"#));
    assert_eq!(code(&r), (401, "invalid_platform_key".into()), "{}", r.text());
}

#[test]
fn with_required_keys_only_the_admin_creates_platforms_and_keyed_calls_answer_401_first() {
    let catalog = uniq("authzcat");
    let (p, v1) = (uniq("keyed"), uniq("adminv1"));
    let _c = Cleanup { catalog: catalog.clone(), platforms: vec![p.clone(), v1.clone()] };
    let g = common::start(&[("CATALOG_DB", &catalog), ("ADMIN_TOKEN", TOKEN), ("REQUIRE_PLATFORM_KEYS", "true")]);

    let r = post_json(g.addr, "/platform/register", &format!(r#"{{"platform":"{p}"}}"#));
    assert_eq!(code(&r), (401, "invalid_token".into()), "{}", r.text());
    let r = admin_json(g.addr, "/platform/register", &format!(r#"{{"platform":"{p}"}}"#));
    assert_eq!(r.status, 201, "{}", r.text());
    let key = api_key(&r);

    // A v1 platform the operator deployed starts without a key; nobody else can claim one for it.
    let auth = bearer(TOKEN);
    assert_eq!(deploy_v1(g.addr, &v1, Some(&auth)).status, 200);
    let r = post_json(g.addr, "/platform/register", &format!(r#"{{"platform":"{v1}","require_key":true}}"#));
    assert_eq!(r.status, 401, "{}", r.text());
    let r = keyed_json(g.addr, "/platform/register", &key, &format!(r#"{{"platform":"{v1}","require_key":true}}"#));
    assert_eq!(r.status, 401, "{}", r.text());

    // Without the key, an existing tenant and a missing one look the same.
    assert_eq!(call(g.addr, &v1, None, Some(TOKEN)).status, 200);
    let r1 = call(g.addr, &v1, None, None);
    let r2 = call(g.addr, &v1, Some("nosuchtenant"), None);
    let r3 = call(g.addr, &p, Some("nosuchtenant"), None);
    for r in [&r1, &r2, &r3] {
        assert_eq!(code(r), (401, "invalid_platform_key".into()), "{}", r.text());
    }
    assert_eq!(code(&call(g.addr, &p, Some("nosuchtenant"), Some(&key))), (404, "database_not_found".into()));
}

#[test]
fn platforms_and_stored_schemas_are_capped() {
    let catalog = uniq("authzcat");
    let (a, b, c) = (uniq("capa"), uniq("capb"), uniq("capc"));
    let _c = Cleanup { catalog: catalog.clone(), platforms: vec![a.clone(), b.clone(), c.clone()] };
    let g = common::start(&[
        ("CATALOG_DB", &catalog),
        ("ADMIN_TOKEN", TOKEN),
        ("MAX_PLATFORMS", "2"),
        ("MAX_SCHEMAS_PER_PLATFORM", "1"),
    ]);
    for p in [&a, &b] {
        let r = post_json(g.addr, "/platform/register", &format!(r#"{{"platform":"{p}"}}"#));
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = post_json(g.addr, "/platform/register", &format!(r#"{{"platform":"{c}"}}"#));
    assert_eq!(code(&r), (409, "platform_limit_reached".into()), "{}", r.text());
    // A first v1 deploy creates a platform too.
    assert_eq!(code(&deploy_v1(g.addr, &c, None)), (409, "platform_limit_reached".into()));

    let upload = |name: &str| {
        let archive =
            common::archive::tgz([("functions/f.sql", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';")]);
        let (ct, body) = common::multipart(&[("schema_name", name.as_bytes()), ("schema", &archive)]);
        request(g.addr, "POST", &format!("/platform/{a}/schema"), &[("Content-Type", &ct)], &body)
    };
    assert_eq!(upload("one").status, 201);
    // A new version of a stored schema is not a new schema.
    assert_eq!(upload("one").status, 201);
    let r = upload("two");
    assert_eq!(code(&r), (409, "schema_limit_reached".into()), "{}", r.text());
}

#[test]
fn browsers_cannot_change_anything_or_reach_the_gateway_by_another_name() {
    let g = common::start(&[("ADMIN_TOKEN", TOKEN), ("ALLOWED_HOSTS", "gw.example.internal")]);
    let basic = {
        // "ops:<token>" in base64, as a browser sends after the status page's login.
        let raw = format!("ops:{TOKEN}");
        let t = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for ch in raw.as_bytes().chunks(3) {
            let n = (ch[0] as u32) << 16 | (*ch.get(1).unwrap_or(&0) as u32) << 8 | *ch.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                out.push(if i <= ch.len() { t[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
            }
        }
        format!("Basic {out}")
    };
    let b = bearer(TOKEN);
    let drain = "/admin/servers/no-such-server/drain";
    // A text/plain form post carrying the browser's Basic login: refused before anything runs.
    let r = request(g.addr, "POST", drain, &[("Content-Type", "text/plain"), ("Authorization", &basic)], b"x=1");
    assert_eq!(code(&r), (401, "invalid_token".into()), "{}", r.text());
    let r = request(g.addr, "POST", drain, &[("Content-Type", "text/plain"), ("Authorization", &b)], b"x=1");
    assert_eq!(code(&r), (415, "unsupported_media_type".into()), "{}", r.text());
    let r = request(
        g.addr,
        "POST",
        drain,
        &[("Content-Type", "application/json"), ("Authorization", &b), ("Origin", "https://evil.example")],
        b"{}",
    );
    assert_eq!(code(&r), (403, "origin_not_allowed".into()), "{}", r.text());
    // The same request as a deliberate client sends it gets past the table (and finds no server).
    let r = request(g.addr, "POST", drain, &[("Content-Type", "application/json"), ("Authorization", &b)], b"{}");
    assert_eq!(code(&r), (404, "server_not_found".into()), "{}", r.text());
    // Basic still reads the status page's data.
    assert_eq!(request(g.addr, "GET", "/status/data", &[("Authorization", &basic)], b"").status, 200);

    // Not only admin routes: a cross-site /call or registration is refused too.
    let r = request(g.addr, "POST", "/call", &[("Origin", "null")], br#"{"platform":"p","function":"f"}"#);
    assert_eq!(code(&r), (403, "origin_not_allowed".into()), "{}", r.text());
    let r = request(g.addr, "POST", "/platform/register", &[("Origin", "http://a.example")], br#"{"platform":"p"}"#);
    assert_eq!(code(&r), (403, "origin_not_allowed".into()), "{}", r.text());

    // DNS rebinding: a page's own name pointed at the gateway.
    let raw = |host: &str| {
        let mut s = TcpStream::connect(g.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req =
            format!("GET /status/data HTTP/1.1\r\nHost: {host}\r\nAuthorization: {basic}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let r = raw("rebind.attacker.example:9000");
    assert!(r.starts_with("HTTP/1.1 421"), "{r}");
    assert!(r.contains("host_not_allowed"), "{r}");
    assert!(raw("gw.example.internal:9000").starts_with("HTTP/1.1 200"));
    assert!(raw(&g.addr.to_string()).starts_with("HTTP/1.1 200"));
}

const BIN: &str = env!("CARGO_BIN_EXE_stonescriptdb-gateway");

/// Sends `n` copies of `req` on one connection and reads until the server closes it (the last copy
/// asks it to).
fn flood(addr: &str, req: &str, n: usize) -> usize {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let keep = req.replace("{conn}", "keep-alive");
    let last = req.replace("{conn}", "close");
    let reader = {
        let mut r = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = r.read_to_end(&mut out);
            String::from_utf8_lossy(&out).matches("HTTP/1.1 401").count()
        })
    };
    let mut all = keep.repeat(n - 1);
    all.push_str(&last);
    s.write_all(all.as_bytes()).unwrap();
    reader.join().unwrap()
}

#[test]
fn twenty_thousand_refusals_write_a_bounded_and_escaped_log() {
    let (host, port, user) = common::pg_env();
    let dir = std::env::temp_dir().join(format!("ssdb-authz-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let catalog = uniq("authzcat");
    let platform = uniq("logesc");
    let _c = Cleanup { catalog: catalog.clone(), platforms: vec![platform.clone()] };
    let mut child = Command::new(BIN)
        .env_clear()
        .current_dir(&dir)
        .env("CATALOG_DB", &catalog)
        .env("GATEWAY_PORT", "0")
        .env("DB_HOST", &host)
        .env("DB_PORT", port.to_string())
        .env("DB_USER", &user)
        .env("ADMIN_TOKEN", TOKEN)
        .env("LOG_DIR", dir.join("logs"))
        .env("LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway");
    // Stopped also when an assertion below fails, so no gateway outlives the test.
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-KILL", &self.0.to_string()]).status();
        }
    }
    let _stop = Stop(child.id());
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    // The text format's first lines: `… listening addr=127.0.0.1:PORT …`.
    let addr = loop {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0, "gateway exited early");
        if let Some(rest) = line.split(" addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep stderr drained so the gateway never blocks on it.
    let drain = std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = stderr.read_to_end(&mut sink);
    });

    let req = "GET /admin/databases HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer wrong-token-0000000000\r\nConnection: {conn}\r\n\r\n";
    let refused: usize = (0..20).map(|_| flood(&addr, req, 1000)).sum();
    assert_eq!(refused, 20_000);

    // A migration whose error message holds an escape sequence and a new line: logged, never raw.
    let archive = common::archive::tgz([(
        "migrations/001_boom.sql",
        r"DO $$ BEGIN RAISE EXCEPTION E'boom\033[2J\nfake line'; END $$;",
    )]);
    let (ct, body) = common::multipart(&[("platform", platform.as_bytes()), ("schema", &archive)]);
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut raw = format!(
        "POST /register HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    s.write_all(&raw).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 422"), "{out}");

    let mut m = TcpStream::connect(&addr).unwrap();
    m.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    m.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut metrics = String::new();
    let _ = m.read_to_string(&mut metrics);
    let suppressed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("stonescriptdb_gateway_log_lines_suppressed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no log_lines_suppressed_total in {metrics}"));
    assert!(suppressed >= 19_000.0, "{suppressed}");

    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(child.wait().unwrap().success());
    let _ = drain.join();
    let log = std::fs::read(dir.join("logs/stonescriptdb-gateway.log")).unwrap();
    assert!(log.len() <= 256 * 1024, "20,000 refusals wrote {} bytes of log", log.len());
    assert!(!log.contains(&0x1b), "an escape character reached the log");
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains(r"boom\u{1b}[2J\nfake line"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("fake line")), "a request forged a log line");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_operators_address_gets_in_when_the_connection_table_is_full() {
    // Dual stack: the flood comes from 127.0.0.1, the operator from ::1 (the only admin address).
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    }
    let g = common::start(&[
        ("GATEWAY_HOST", "::"),
        ("ALLOWED_NETWORKS", "127.0.0.0/8,::1/128"),
        ("ALLOWED_ADMIN_IPS", "::1/128"),
        ("MAX_CLIENT_CONNECTIONS", "8"),
        ("ADMIN_RESERVED_CONNECTIONS", "2"),
        ("MAX_CONNECTIONS_PER_ADDRESS", "0"),
    ]);
    let port = g.addr.port();
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    // Six connections that are each answered once (so the gateway has adopted them) and stay open.
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut c = common::Conn::open(v4);
        c.send(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert_eq!(c.read_response().status, 200);
        held.push(c);
    }
    // The seventh from a client address finds the table full (two places are the operator's).
    let mut c = common::Conn::open(v4);
    // The gateway may already have reset it: a failed write is the same answer.
    let _ = c.sock.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(c.try_read_response().is_none(), "a client took a reserved place");
    // The operator still reaches /health.
    let r = request(v6, "GET", "/health", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    drop(held);
}
