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

const TOKEN: &str = "bounded-buffers-admin-token-0123456789";

fn deploy(addr: std::net::SocketAddr, path: &str, platform: &str, files: &[(&str, &str)]) -> common::Resp {
    let archive = common::archive::tgz(files.iter().copied());
    let fields: Vec<(&str, &[u8])> = vec![("platform", platform.as_bytes()), ("schema", &archive)];
    let (ct, body) = common::multipart(&fields);
    let auth = format!("Bearer {TOKEN}");
    common::request(addr, "POST", path, &[("Content-Type", ct.as_str()), ("Authorization", auth.as_str())], &body)
}

struct Dbs(Vec<String>);

impl Drop for Dbs {
    fn drop(&mut self) {
        let mut c = common::db::su("postgres");
        for d in &self.0 {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{d}\" WITH (FORCE)"));
        }
    }
}

const BASE: (&str, &str) = ("functions/f.sql", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';");

/// A deploy statement that sends back more than `DEPLOY_MAX_RESULT_BYTES`, in one value or in many
/// rows, fails the deploy (rolled back) instead of being held in memory.
#[test]
fn deploy_statements_bring_back_a_bounded_result() {
    let p = uniq("bb_dep");
    let cat = format!("cat_{p}");
    let db = format!("{p}_main");
    let _clean = Dbs(vec![cat.clone(), db.clone()]);
    let g = start(&[("CATALOG_DB", cat.as_str()), ("ADMIN_TOKEN", TOKEN), ("DEPLOY_MAX_RESULT_BYTES", "1048576")]);
    assert_eq!(deploy(g.addr, "/register", &p, &[BASE]).status, 200);
    for (what, sql) in [
        ("one value", "CREATE TABLE t1 (i int);\nSELECT repeat('x', 5000000);\n"),
        ("many rows", "CREATE TABLE t1 (i int);\nSELECT g FROM generate_series(1, 2000000) g;\n"),
    ] {
        let r = deploy(g.addr, "/migrate", &p, &[BASE, ("migrations/002_big.sql", sql)]);
        assert!(r.status >= 400, "{what}: {}", r.text());
        assert!(r.text().contains("bytes"), "{what}: {}", r.text());
        assert_eq!(
            common::db::query_col(&db, "SELECT count(*) FROM pg_class WHERE relname = 't1'")[0].as_deref(),
            Some("0"),
            "{what}: the deploy was rolled back"
        );
    }
    // A statement whose rows are not kept is not limited by them.
    let r = deploy(
        g.addr,
        "/migrate",
        &p,
        &[BASE, ("migrations/002_ok.sql", "CREATE TABLE t2 AS SELECT g FROM generate_series(1, 200000) g;\n")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A migration that raises notices without end: the deploy goes through, and the process's memory
/// does not grow with them.
#[test]
fn a_notice_flood_in_a_deploy_takes_bounded_memory() {
    let p = uniq("bb_note");
    let cat = format!("cat_{p}");
    let db = format!("{p}_main");
    let _clean = Dbs(vec![cat.clone(), db.clone()]);
    let g = start(&[("CATALOG_DB", cat.as_str()), ("ADMIN_TOKEN", TOKEN)]);
    let flood = "DO $$ BEGIN FOR i IN 1..150000 LOOP RAISE NOTICE '%', repeat('n', 1000); END LOOP; END $$;\n";
    let r = deploy(g.addr, "/register", &p, &[BASE, ("migrations/001_flood.sql", flood)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let peak = peak_rss_kib();
    assert!(peak <= 128 * 1024, "peak RSS {peak} KiB after 150 MB of notices");
}
