//! What PostgreSQL sends on the call path is bounded before it is read: a row longer than
//! `MAX_RESPONSE_BYTES` is refused from its message header, so the gateway's memory does not grow
//! with it.

mod common;

use common::db::{TestDb, expect_error};
use common::start;

fn peak_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

fn uniq(tag: &str) -> String {
    format!("{tag}_{}", std::process::id())
}

/// A 300 MB text value: refused with a clear error, and the process (gateway and test together)
/// never holds more than 128 MB. The connection is dropped, and the next call is served.
#[test]
fn a_row_longer_than_the_answer_limit_is_refused_unread() {
    let db = TestDb::new(
        &uniq("bb_big"),
        "CREATE FUNCTION big() RETURNS text LANGUAGE sql AS $$ SELECT repeat('x', 300000000) $$;
         CREATE FUNCTION small() RETURNS int LANGUAGE sql AS 'SELECT 7';",
    );
    let g = start(&[("CATALOG_DB", common::db::DEFAULT_CATALOG)]);
    let r = db.call(g.addr, "big", "[]");
    let v = expect_error(&r, 500, "response_too_large");
    let msg = v.get("message").and_then(|m| m.as_str()).unwrap_or_default().to_string();
    assert!(msg.contains("MAX_RESPONSE_BYTES"), "{msg}");
    let peak = peak_rss_kib();
    assert!(peak <= 128 * 1024, "peak RSS {peak} KiB with a 300 MB value");
    let r = db.call(g.addr, "small", "[]");
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Answers being built share one budget: an answer that would take it past
/// `MAX_ANSWERS_IN_FLIGHT_BYTES` gets a retryable 503, and what it held is given back.
#[test]
fn answers_being_built_share_one_budget() {
    let db = TestDb::new(
        &uniq("bb_budget"),
        "CREATE FUNCTION two_mb() RETURNS text LANGUAGE sql AS $$ SELECT repeat('y', 2000000) $$;
         CREATE FUNCTION half_mb() RETURNS text LANGUAGE sql AS $$ SELECT repeat('z', 500000) $$;",
    );
    let g = start(&[("CATALOG_DB", common::db::DEFAULT_CATALOG), ("MAX_ANSWERS_IN_FLIGHT_BYTES", "1048576")]);
    let r = db.call(g.addr, "two_mb", "[]");
    let v = expect_error(&r, 503, "answers_busy");
    assert_eq!(v.get("retryable").and_then(|b| b.as_bool()), Some(true), "{}", r.text());
    for _ in 0..3 {
        let r = db.call(g.addr, "half_mb", "[]");
        assert_eq!(r.status, 200, "the budget was given back: {}", &r.text()[..200.min(r.text().len())]);
    }
}
