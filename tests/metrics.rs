//! `/metrics` against a gateway serving real calls: the text passes `promtool check metrics`, the
//! counts follow what was sent, the label set stays bounded, and the route is guarded like the admin
//! routes. Also the status page's guard: HTTP Basic with the admin token as password.

mod common;

use std::process::{Command, Stdio};

use common::db::{TestDb, eventually, rows};
use common::tools;
use common::{post_json, request, start};

const TOKEN: &str = "metrics-admin-token-0123";

/// Value of the sample whose line starts with `series ` (name plus labels, exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

fn scrape(addr: std::net::SocketAddr) -> String {
    let r = request(addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    r.text()
}

fn promtool_check(text: &str) {
    let Some(promtool) = tools::require("promtool", "prometheus") else { return };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    // promtool exits 0 for valid text (lint remarks would also print); anything else is a failure.
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- text ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.trim().is_empty(), "promtool has remarks: {said}");
}

#[test]
fn metrics_pass_promtool_and_follow_the_calls() {
    let db = TestDb::new(
        "mt_calls",
        "CREATE FUNCTION slowish(ms int) RETURNS int LANGUAGE sql AS $$ SELECT ms FROM pg_sleep(ms / 1000.0) $$;",
    );
    let gw = start(&[("ADMIN_TOKEN", TOKEN)]);
    let before = scrape(gw.addr);
    promtool_check(&before);
    assert_eq!(sample(&before, r#"stonescriptdb_gateway_http_requests_total{route="call",class="2xx"}"#), Some(0.0));

    for _ in 0..5 {
        rows(&db.call(gw.addr, "slowish", "[30]"));
    }
    let r = db.call(gw.addr, "no_such_function", "[]");
    assert_eq!(r.status, 404);
    let bad = post_json(gw.addr, "/call", "{not json");
    assert_eq!(bad.status, 400);

    // Pool figures are published every janitor turn (100 ms).
    let mut text = String::new();
    assert!(eventually(std::time::Duration::from_secs(3), || {
        text = scrape(gw.addr);
        text.contains(&format!("database=\"{}\"", db.name))
    }));
    promtool_check(&text);
    let get = |s: &str| sample(&text, s).unwrap_or_else(|| panic!("no sample {s} in\n{text}"));
    assert_eq!(get(r#"stonescriptdb_gateway_http_requests_total{route="call",class="2xx"}"#), 5.0);
    assert_eq!(get(r#"stonescriptdb_gateway_http_requests_total{route="call",class="4xx"}"#), 2.0);
    // By code and platform; a request that named no platform has no platform label.
    let p = &db.platform;
    assert_eq!(
        get(&format!(r#"stonescriptdb_gateway_call_errors_total{{code="function_not_found",platform="{p}"}}"#)),
        1.0
    );
    assert_eq!(sample(&text, r#"stonescriptdb_gateway_call_errors_total{code="function_not_found"}"#), None, "{text}");
    assert_eq!(get(r#"stonescriptdb_gateway_call_errors_total{code="invalid_json"}"#), 1.0);
    assert_eq!(get(r#"stonescriptdb_gateway_call_errors_total{code="timeout"}"#), 0.0);
    // Per function: the real one has a row, the missing name none (names of missing functions are
    // the caller's to choose, so they are not kept).
    let f = format!(r#"platform="{p}",function="slowish""#);
    assert_eq!(get(&format!("stonescriptdb_gateway_function_calls_total{{{f}}}")), 5.0);
    assert_eq!(get(&format!("stonescriptdb_gateway_function_errors_total{{{f}}}")), 0.0);
    assert_eq!(get(&format!("stonescriptdb_gateway_function_duration_seconds_count{{{f}}}")), 5.0);
    assert_eq!(get(&format!(r#"stonescriptdb_gateway_function_duration_seconds_bucket{{{f},le="0.025"}}"#)), 0.0);
    assert!(get(&format!("stonescriptdb_gateway_function_duration_seconds_sum{{{f}}}")) >= 0.15);
    assert!(!text.contains("no_such_function"), "{text}");
    assert_eq!(get("stonescriptdb_gateway_call_duration_seconds_count"), 7.0);
    // Five calls slept 30 ms each: none of them is in a bucket below 25 ms.
    assert!(get(r#"stonescriptdb_gateway_call_duration_seconds_bucket{le="0.025"}"#) <= 2.0);
    assert!(get("stonescriptdb_gateway_call_duration_seconds_sum") >= 0.15);
    assert!(get("stonescriptdb_gateway_backend_connects_total") >= 1.0);
    let idle = get(&format!(r#"stonescriptdb_gateway_pool_connections{{database="{}",state="idle"}}"#, db.name));
    assert!(idle >= 1.0, "{text}");
    assert!(get("process_resident_memory_bytes") > 1e6);
    assert!(get("process_open_fds") > 0.0);
    assert!(
        text.contains(&format!("stonescriptdb_gateway_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION")))
    );
}

#[test]
fn databases_beyond_the_top_n_are_folded_into_other() {
    let a = TestDb::new("mt_top_a", "CREATE FUNCTION one() RETURNS int LANGUAGE sql AS 'SELECT 1';");
    let b = TestDb::new("mt_top_b", "CREATE FUNCTION one() RETURNS int LANGUAGE sql AS 'SELECT 1';");
    let gw = start(&[("METRICS_TOP_DATABASES", "1"), ("GATEWAY_THREADS", "2")]);
    for _ in 0..4 {
        rows(&a.call(gw.addr, "one", "[]"));
    }
    rows(&b.call(gw.addr, "one", "[]"));
    let mut text = String::new();
    assert!(eventually(std::time::Duration::from_secs(3), || {
        text = scrape(gw.addr);
        text.contains(r#"database="other""#)
    }));
    promtool_check(&text);
    assert!(text.contains(&format!("database=\"{}\"", a.name)), "the busiest database is named:\n{text}");
    assert!(!text.contains(&format!("database=\"{}\"", b.name)), "the quieter one is folded:\n{text}");
}

#[test]
fn functions_and_platforms_beyond_the_top_n_are_folded_into_other() {
    let a = TestDb::new(
        "mt_fn_a",
        "CREATE FUNCTION slow() RETURNS int LANGUAGE sql AS 'SELECT 1 FROM pg_sleep(0.05)';
         CREATE FUNCTION quick() RETURNS int LANGUAGE sql AS 'SELECT 1';
         CREATE FUNCTION fails() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no'; END $$;",
    );
    let b = TestDb::new("mt_fn_b", "CREATE FUNCTION quick() RETURNS int LANGUAGE sql AS 'SELECT 1';");
    let gw = start(&[("METRICS_TOP_DATABASES", "1"), ("GATEWAY_THREADS", "2")]);
    for _ in 0..2 {
        rows(&a.call(gw.addr, "slow", "[]"));
    }
    for _ in 0..3 {
        rows(&a.call(gw.addr, "quick", "[]"));
        rows(&b.call(gw.addr, "quick", "[]"));
    }
    // Errors: three on a, one on b, so a is the platform named.
    for _ in 0..2 {
        assert_eq!(a.call(gw.addr, "fails", "[]").status / 100, 4);
    }
    assert_eq!(a.call(gw.addr, "missing", "[]").error_code(), "function_not_found");
    assert_eq!(b.call(gw.addr, "missing", "[]").error_code(), "function_not_found");
    let text = scrape(gw.addr);
    promtool_check(&text);
    let get = |s: &str| sample(&text, s).unwrap_or_else(|| panic!("no sample {s} in\n{text}"));
    // The function with the most time is named; the rest (a.quick, a.fails, b.quick) is one row.
    let slow = format!(r#"platform="{}",function="slow""#, a.platform);
    assert_eq!(get(&format!("stonescriptdb_gateway_function_calls_total{{{slow}}}")), 2.0);
    let other = r#"platform="other",function="other""#;
    assert_eq!(get(&format!("stonescriptdb_gateway_function_calls_total{{{other}}}")), 8.0);
    assert_eq!(get(&format!("stonescriptdb_gateway_function_errors_total{{{other}}}")), 2.0);
    assert_eq!(text.matches("stonescriptdb_gateway_function_calls_total{").count(), 2, "{text}");
    // Errors by platform: a named, b folded into other.
    let code = "function_not_found";
    let pa = &a.platform;
    assert_eq!(get(&format!(r#"stonescriptdb_gateway_call_errors_total{{code="{code}",platform="{pa}"}}"#)), 1.0);
    assert_eq!(get(&format!(r#"stonescriptdb_gateway_call_errors_total{{code="{code}",platform="other"}}"#)), 1.0);
    assert!(!text.contains(&format!("platform=\"{}\"", b.platform)), "{text}");
}

#[test]
fn metrics_are_guarded_like_admin_routes() {
    // No METRICS_TOKEN: the allowlist alone decides.
    let gw = start(&[]);
    assert_eq!(request(gw.addr, "GET", "/metrics", &[], b"").status, 200);
    drop(gw);
    let gw = start(&[("ALLOWED_ADMIN_IPS", "10.9.9.0/24")]);
    let r = request(gw.addr, "GET", "/metrics", &[], b"");
    assert_eq!((r.status, r.error_code().as_str()), (403, "unauthorized"));
    drop(gw);
    let gw = start(&[("METRICS_TOKEN", "scrape-secret-0123456"), ("ADMIN_TOKEN", TOKEN)]);
    let r = request(gw.addr, "GET", "/metrics", &[], b"");
    assert_eq!((r.status, r.error_code().as_str()), (401, "invalid_token"));
    let r = request(gw.addr, "GET", "/metrics", &[("Authorization", "Bearer wrong-secret-000000")], b"");
    assert_eq!(r.status, 401);
    let r = request(gw.addr, "GET", "/metrics", &[("Authorization", "Bearer scrape-secret-0123456")], b"");
    assert_eq!(r.status, 200);
    let r = request(gw.addr, "GET", "/metrics", &[("Authorization", &format!("Bearer {TOKEN}"))], b"");
    assert_eq!(r.status, 200);
}

fn basic(user: &str, password: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{user}:{password}").into_bytes();
    let mut out = String::new();
    for c in raw.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

#[test]
fn status_page_asks_for_basic_credentials_and_takes_the_admin_token() {
    let gw = start(&[("ADMIN_TOKEN", TOKEN)]);
    let r = request(gw.addr, "GET", "/status", &[], b"");
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some_and(|h| h.starts_with("Basic realm=")), "{:?}", r.headers);
    let r = request(gw.addr, "GET", "/status", &[("Authorization", &basic("ops", "not-the-token-000"))], b"");
    assert_eq!(r.status, 401);
    let r = request(gw.addr, "GET", "/status", &[("Authorization", &basic("anyone", TOKEN))], b"");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text().contains("<svg"), "the page draws its sparklines inline");
    assert!(!r.text().contains("http://") && !r.text().contains("https://"), "nothing is fetched from elsewhere");
    let r = request(gw.addr, "GET", "/status/data", &[("Authorization", &basic("", TOKEN))], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        v.get("live").and_then(|l| l.get("postgres_connected")),
        Some(&stonescriptdb_gateway::json::Value::Bool(true))
    );
    // The JSON routes the page polls take the same credentials.
    let r = request(gw.addr, "GET", "/runs/run-none", &[("Authorization", &basic("x", TOKEN))], b"");
    assert_eq!(r.error_code(), "run_not_found");
}
