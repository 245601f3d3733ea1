//! The v2 platform API end to end against a real PostgreSQL (started by `scripts/test.sh`): platforms,
//! stored schemas with versions, `/database/create`, fleet migrations (plain, NDJSON, async), run
//! records, interrupted runs, dedicated credentials and two gateways sharing one catalog.
//!
//! Each test has its own catalog database and platform names, and drops what it created at the end
//! (also on panic). Schemas come from `tests/fixtures/v2/`, packed into a tar.gz in memory.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Gateway, Resp, post_json, request};
use stonescriptdb_gateway::json::Value;
use stonescriptdb_gateway::pg::blocking::Client;

// ---------- PostgreSQL ----------

fn pg(db: &str) -> Client {
    Client::connect(&common::db::su_params(db)).unwrap_or_else(|e| panic!("connect {db}: {e}"))
}

/// Rows of `sql` (simple protocol) in database `db`.
fn q(db: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut c = pg(db);
    let r = c.simple_query(sql).unwrap_or_else(|e| panic!("{db}: {sql}: {e}"));
    c.close();
    r
}

fn one(db: &str, sql: &str) -> String {
    q(db, sql)[0][0].clone().unwrap_or_default()
}

fn exists(db: &str) -> bool {
    one("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'")) == "1"
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this test process: `{tag}_{pid}{n}`.
fn uniq(tag: &str) -> String {
    format!("{tag}_{:x}{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Drops the databases of the given platforms, the catalog and roles when the test ends (also on
/// panic). Declare it before the gateways so it is dropped after them.
struct Cleanup {
    platforms: Vec<String>,
    catalog: String,
    roles: Vec<String>,
}

impl Cleanup {
    fn new(catalog: &str, platforms: &[&str]) -> Cleanup {
        common::pg_env();
        Cleanup {
            platforms: platforms.iter().map(|s| s.to_string()).collect(),
            catalog: catalog.into(),
            roles: Vec::new(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(mut c) = Client::connect(&common::db::su_params("postgres")) else {
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
        for r in &self.roles {
            let _ = c.batch_execute(&format!("DROP ROLE IF EXISTS \"{r}\""));
        }
        c.close();
    }
}

// ---------- schema archives ----------

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2").join(rel)
}

/// Files under `dir` as path relative to it → content.
fn files(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for folder in std::fs::read_dir(dir).unwrap() {
        let folder = folder.unwrap().path();
        for f in std::fs::read_dir(&folder).unwrap() {
            let f = f.unwrap().path();
            out.insert(
                f.strip_prefix(dir).unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&f).unwrap(),
            );
        }
    }
    out
}

fn main_db() -> BTreeMap<String, String> {
    files(&fixture("main_db/postgresql"))
}

fn tenant_v1() -> BTreeMap<String, String> {
    files(&fixture("tenant_db/postgresql"))
}

/// Version 2: `tenant_db_v2/` overlaid on version 1 (one changed function, one new migration).
fn tenant_v2() -> BTreeMap<String, String> {
    let mut f = tenant_v1();
    f.extend(files(&fixture("tenant_db_v2")));
    f
}

// ---------- HTTP ----------

const TOKEN: &str = "v2-test-admin-token-0123456789";

fn gateway(catalog: &str, extra: &[(&str, &str)]) -> Gateway {
    let mut o = vec![("CATALOG_DB", catalog), ("ADMIN_TOKEN", TOKEN)];
    o.extend_from_slice(extra);
    common::start(&o)
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"")
}

fn upload(addr: SocketAddr, platform: &str, schema: &str, files: &BTreeMap<String, String>) -> Resp {
    let boundary = "----v2apiTestBoundary7MA4YWxk";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"schema_name\"\r\n\r\n{schema}\r\n").as_bytes(),
    );
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"schema\"; filename=\"{schema}.tar.gz\"\r\n\
             Content-Type: application/gzip\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&common::archive::tgz(files));
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    request(addr, "POST", &format!("/platform/{platform}/schema"), &[("Content-Type", &ct)], &body)
}

fn ok(r: &Resp, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    r.json()
}

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Number(n)) => n.clone(),
        other => panic!("'{key}' is not a string: {other:?} in {}", v.to_json()),
    }
}

fn n(v: &Value, key: &str) -> i64 {
    match v.get(key) {
        Some(Value::Number(x)) => x.parse().unwrap(),
        other => panic!("'{key}' is not a number: {other:?} in {}", v.to_json()),
    }
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).unwrap_or_else(|| panic!("'{key}' is not an array in {}", v.to_json()))
}

fn register(addr: SocketAddr, platform: &str) {
    ok(&post_json(addr, "/platform/register", &format!(r#"{{"platform":"{platform}"}}"#)), 201);
}

/// `/database/create` with the admin token: a platform without a key creates databases only that way.
fn create(addr: SocketAddr, platform: &str, schema: &str, id: &str) -> Resp {
    let auth = format!("Bearer {TOKEN}");
    request(
        addr,
        "POST",
        "/database/create",
        &[("Content-Type", "application/json"), ("Authorization", &auth)],
        format!(r#"{{"platform":"{platform}","schema_name":"{schema}","database_id":"{id}"}}"#).as_bytes(),
    )
}

/// Creates databases `ids` of `schema`, two requests at a time (the default DEPLOY_WORKERS).
fn create_all(addr: SocketAddr, platform: &str, schema: &str, ids: &[String]) {
    std::thread::scope(|sc| {
        for half in ids.chunks(ids.len().div_ceil(2).max(1)) {
            sc.spawn(move || {
                for id in half {
                    let r = create(addr, platform, schema, id);
                    assert_eq!(r.status, 201, "create {id}: {}", r.text());
                }
            });
        }
    });
}

fn call(addr: SocketAddr, platform: &str, tenant: &str, function: &str, params: &str) -> Resp {
    post_json(
        addr,
        "/call",
        &format!(r#"{{"platform":"{platform}","tenant_id":"{tenant}","function":"{function}","params":{params}}}"#),
    )
}

/// The single value of a one-row, one-column `/call` answer, as JSON text.
fn call_value(addr: SocketAddr, platform: &str, tenant: &str, function: &str, params: &str) -> String {
    let v = ok(&call(addr, platform, tenant, function, params), 200);
    let rows = arr(&v, "rows");
    assert_eq!(rows.len(), 1, "{}", v.to_json());
    let cols = rows[0].as_object().unwrap();
    assert_eq!(cols.len(), 1, "{}", v.to_json());
    cols[0].1.to_json()
}

fn migrate(addr: SocketAddr, body: &str) -> Resp {
    post_json(addr, "/v2/migrate", body)
}

/// Polls `GET /runs/{id}` until `done(status)` or the deadline.
fn wait_run(addr: SocketAddr, id: &str, within: Duration, done: impl Fn(&str) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = ok(&get(addr, &format!("/runs/{id}")), 200);
        if done(&s(&v, "status")) {
            return v;
        }
        assert!(Instant::now() < deadline, "run {id} still {} after {within:?}", s(&v, "status"));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ids(prefix: &str, count: usize) -> Vec<String> {
    (1..=count).map(|i| format!("{prefix}{i:02}")).collect()
}

/// Result objects by database name.
fn by_db(results: &[Value]) -> BTreeMap<String, Value> {
    results.iter().map(|r| (s(r, "database"), r.clone())).collect()
}

// ---------- the flow ----------

#[test]
fn flow_register_upload_create_call_migrate_with_one_broken_tenant() {
    let p = uniq("flow");
    let cat = format!("cat_flow_{}", std::process::id());
    let _clean = Cleanup::new(&cat, &[&p]);
    let g = gateway(&cat, &[]);

    // Register; listed by /platforms and (with the token) /admin/platforms.
    let v = ok(&post_json(g.addr, "/platform/register", &format!(r#"{{"platform":"{p}"}}"#)), 201);
    assert_eq!(s(&v, "platform"), p);
    // Every platform has its own role now.
    assert_eq!(v.get("has_dedicated_credentials"), Some(&Value::Bool(true)));
    // Listing every platform is the admin's business.
    assert_eq!(get(g.addr, "/platforms").status, 401);
    assert_eq!(get(g.addr, "/admin/platforms").status, 401);
    let auth = format!("Bearer {TOKEN}");
    let v = ok(&request(g.addr, "GET", "/admin/platforms", &[("Authorization", &auth)], b""), 200);
    assert!(arr(&v, "platforms").iter().any(|x| s(x, "name") == p));

    // Two schema types.
    let v = ok(&upload(g.addr, &p, "main_db", &main_db()), 201);
    assert_eq!(n(&v, "version"), 1);
    assert_eq!(v.get("has_migrations"), Some(&Value::Bool(false)));
    let v = ok(&upload(g.addr, &p, "tenant_db", &tenant_v1()), 201);
    assert_eq!(n(&v, "version"), 1);
    assert_eq!(v.get("has_migrations"), Some(&Value::Bool(true)));
    let v = ok(&get(g.addr, &format!("/platform/{p}/schemas")), 200);
    assert_eq!(n(&v, "count"), 2, "{}", v.to_json());

    // The main database and 30 tenant databases.
    let v = ok(&create(g.addr, &p, "main_db", "main"), 201);
    assert_eq!(s(&v, "database"), format!("{p}_main_db_main"));
    assert_eq!(n(&v, "schema_version"), 1);
    let tenants = ids("t", 30);
    create_all(g.addr, &p, "tenant_db", &tenants);
    let v = ok(&get(g.addr, &format!("/platform/{p}/databases?schema=tenant_db")), 200);
    assert_eq!(n(&v, "count"), 30, "{}", v.to_json());
    let v = ok(&get(g.addr, &format!("/platform/{p}/databases")), 200);
    assert_eq!(n(&v, "count"), 31);

    // /call reaches them with tenant_id = {schema_name}_{database_id}.
    assert_eq!(call_value(g.addr, &p, "main_db_main", "add_account", r#"["t01"]"#), "1");
    assert_eq!(call_value(g.addr, &p, "main_db_main", "account_count", "[]"), "1");
    for t in ["t01", "t02", "t29"] {
        let tenant = format!("tenant_db_{t}");
        call_value(g.addr, &p, &tenant, "add_note", r#"["hello"]"#);
        assert_eq!(call_value(g.addr, &p, &tenant, "note_count", "[]"), "1");
        assert_eq!(call_value(g.addr, &p, &tenant, "tenant_version", "[]"), "\"v1\"");
    }
    assert_eq!(call_value(g.addr, &p, "tenant_db_t03", "note_count", "[]"), "0");
    // The tenant_id the admin listing shows is the one /call accepts.
    let auth = format!("Bearer {TOKEN}");
    let v =
        ok(&request(g.addr, "GET", &format!("/admin/databases?platform={p}"), &[("Authorization", &auth)], b""), 200);
    let t03 = format!("{p}_tenant_db_t03");
    let listed = arr(&v, "databases")
        .iter()
        .find(|d| d.get("name").and_then(Value::as_str) == Some(t03.as_str()))
        .and_then(|d| d.get("tenant_id").and_then(Value::as_str))
        .unwrap_or_else(|| panic!("{t03} without a tenant_id in {}", v.to_json()))
        .to_string();
    assert_eq!(call_value(g.addr, &p, &listed, "note_count", "[]"), "0");

    // Break t17: the new migration creates `tags`, which now exists there.
    let broken = format!("{p}_tenant_db_t17");
    q(&broken, "CREATE TABLE tags (x integer)");

    let v = ok(&upload(g.addr, &p, "tenant_db", &tenant_v2()), 201);
    assert_eq!(n(&v, "version"), 2);

    let r = migrate(g.addr, &format!(r#"{{"platform":"{p}","schema_name":"tenant_db"}}"#));
    assert_ne!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(s(&v, "status"), "completed_with_errors");
    let results = by_db(arr(&v, "results"));
    assert_eq!(results.len(), 30, "the main database is not a tenant_db database: {}", v.to_json());
    let failed: Vec<_> = results.values().filter(|x| s(x, "status") == "failed").collect();
    assert_eq!(failed.len(), 1, "{}", v.to_json());
    assert_eq!(s(failed[0], "database"), broken);
    let e = failed[0].get("error").unwrap();
    assert_eq!(s(e, "error"), "migration_failed", "{}", e.to_json());
    assert!(s(e, "message").contains("tags"), "{}", e.to_json());
    for (db, x) in &results {
        if *db != broken {
            assert_eq!(s(x, "status"), "success", "{}", x.to_json());
            assert_eq!(n(x, "migrations_applied"), 1, "{}", x.to_json());
            assert_eq!(n(x, "functions_updated"), 1, "only tenant_version changed: {}", x.to_json());
        }
    }
    assert_eq!(arr(&v, "databases_updated").len(), 29);
    let ver = v.get("verification").unwrap();
    assert_eq!(n(ver, "schema_version"), 2);
    assert_eq!((n(ver, "databases_succeeded"), n(ver, "databases_failed")), (29, 1));

    // The run and its 30 results are recorded.
    let run = s(&v, "run_id");
    assert_eq!(
        one(&cat, &format!("SELECT status || ' ' || total || ' ' || kind FROM runs WHERE id = '{run}'")),
        "completed_with_errors 30 v2_migrate"
    );
    assert_eq!(
        one(
            &cat,
            &format!(
                "SELECT count(*) || ' ' || count(*) FILTER (WHERE status = 'failed') FROM run_results WHERE run_id = '{run}'"
            )
        ),
        "30 1"
    );
    let rv = ok(&get(g.addr, &format!("/runs/{run}")), 200);
    assert_eq!((n(&rv, "total"), n(&rv, "done"), n(&rv, "failed")), (30, 30, 1));
    // Each database's changelog names the run that changed it.
    let t01 = format!("{p}_tenant_db_t01");
    assert_eq!(
        one(&t01, &format!("SELECT count(*) FROM _stonescriptdb_gateway_changelog WHERE run_id = '{run}'")),
        "2",
        "migration + function of run {run}"
    );

    // The migrated tenants serve version 2 at once; the broken one still serves version 1 untouched.
    assert_eq!(call_value(g.addr, &p, "tenant_db_t01", "tenant_version", "[]"), "\"v2\"");
    assert_eq!(call_value(g.addr, &p, "tenant_db_t01", "note_count", "[]"), "1");
    assert_eq!(call_value(g.addr, &p, "tenant_db_t17", "tenant_version", "[]"), "\"v1\"");
    assert_eq!(one(&broken, "SELECT value FROM settings WHERE key = 'schema'"), "1");
    assert_eq!(one(&t01, "SELECT value FROM settings WHERE key = 'schema'"), "2");

    // Fix t17 and migrate just that one ("database_id"); the others are untouched by that run.
    q(&broken, "DROP TABLE tags");
    let v =
        ok(&migrate(g.addr, &format!(r#"{{"platform":"{p}","schema_name":"tenant_db","database_id":"t17"}}"#)), 200);
    assert_eq!(arr(&v, "results").len(), 1);
    assert_eq!(n(&arr(&v, "results")[0], "migrations_applied"), 1);
    assert_eq!(call_value(g.addr, &p, "tenant_db_t17", "tenant_version", "[]"), "\"v2\"");
}

// ---------- NDJSON progress ----------

/// Reads one chunk of a chunked body; `None` at the terminating zero-size chunk.
fn read_chunk(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let fill = |sock: &mut TcpStream, buf: &mut Vec<u8>| {
        let mut tmp = [0u8; 16384];
        let n = sock.read(&mut tmp).expect("read");
        assert!(n > 0, "connection closed inside a chunked body");
        buf.extend_from_slice(&tmp[..n]);
    };
    let line_end = loop {
        if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
            break p;
        }
        fill(sock, buf);
    };
    let size = usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap().trim(), 16).unwrap();
    while buf.len() < line_end + 2 + size + 2 {
        fill(sock, buf);
    }
    let data = buf[line_end + 2..line_end + 2 + size].to_vec();
    buf.drain(..line_end + 2 + size + 2);
    if size == 0 { None } else { Some(data) }
}

#[test]
fn ndjson_progress_lines_arrive_while_the_run_is_still_going() {
    let p = uniq("ndj");
    let cat = format!("cat_ndjson_{}", std::process::id());
    let _clean = Cleanup::new(&cat, &[&p]);
    let g = gateway(&cat, &[("DEPLOY_PARALLELISM", "1")]);
    register(g.addr, &p);
    ok(&upload(g.addr, &p, "tenant_db", &tenant_v1()), 201);
    let tenants = ids("n", 10);
    create_all(g.addr, &p, "tenant_db", &tenants);
    // Each database takes at least 0.3 s in version 2, one at a time: the run lasts ≥ 3 s.
    let mut v2 = tenant_v2();
    v2.insert("migrations/003_slow.sql".into(), "SELECT pg_sleep(0.3);\n".into());
    ok(&upload(g.addr, &p, "tenant_db", &v2), 201);

    let body = format!(r#"{{"platform":"{p}","schema_name":"tenant_db"}}"#);
    let mut sock = TcpStream::connect(g.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let started = Instant::now();
    sock.write_all(
        format!(
            "POST /v2/migrate HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n\
             Accept: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(x) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break x + 4;
        }
        let mut tmp = [0u8; 4096];
        let k = sock.read(&mut tmp).unwrap();
        assert!(k > 0, "closed before the head");
        buf.extend_from_slice(&tmp[..k]);
    };
    let head = String::from_utf8(buf.drain(..head_end).collect()).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: application/x-ndjson"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");

    // Lines may share a chunk or span two; split the stream into lines as it arrives.
    let mut pending = Vec::new();
    let mut lines: Vec<(Instant, Value)> = Vec::new();
    let mut running_at_first_line = None;
    while let Some(chunk) = read_chunk(&mut sock, &mut buf) {
        pending.extend_from_slice(&chunk);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let v = stonescriptdb_gateway::json::parse(&line[..line.len() - 1]).expect("each line is JSON");
            if lines.is_empty() {
                // Received while the run is still recorded as running in the catalog.
                running_at_first_line = Some(one(
                    &cat,
                    &format!("SELECT count(*) FROM runs WHERE platform = '{p}' AND status = 'running'"),
                ));
            }
            lines.push((Instant::now(), v));
        }
    }
    assert!(pending.is_empty(), "the stream ends with a newline");
    assert_eq!(lines.len(), 11, "10 progress lines and a summary");
    let first = &lines[0].1;
    assert_eq!(n(first, "total"), 10);
    assert!(n(first, "done") < n(first, "total"), "{}", first.to_json());
    assert_eq!(s(first, "status"), "success");
    assert_eq!(running_at_first_line.as_deref(), Some("1"), "the first line came before the run ended");
    // The remaining nine databases take ≥ 2.7 s after the first line; allow a wide margin.
    let gap = lines[10].0 - lines[0].0;
    assert!(gap >= Duration::from_millis(1500), "first line only {gap:?} before the summary");
    for (i, (_, v)) in lines[..10].iter().enumerate() {
        assert_eq!(n(v, "done"), i as i64 + 1);
        assert_eq!(n(v, "migrations_applied"), 2, "{}", v.to_json());
    }
    let summary = &lines[10].1;
    assert_eq!(s(summary, "status"), "completed");
    assert_eq!(arr(summary, "results").len(), 10);
    let run = s(summary, "run_id");
    assert_eq!(one(&cat, &format!("SELECT status FROM runs WHERE id = '{run}'")), "completed");
    assert!(started.elapsed() >= Duration::from_secs(3));
}

// ---------- async runs ----------

#[test]
fn async_run_answers_202_and_is_polled_to_completion() {
    let p = uniq("asy");
    let cat = format!("cat_async_{}", std::process::id());
    let _clean = Cleanup::new(&cat, &[&p]);
    let g = gateway(&cat, &[("DEPLOY_PARALLELISM", "2")]);
    register(g.addr, &p);
    ok(&upload(g.addr, &p, "tenant_db", &tenant_v1()), 201);
    create_all(g.addr, &p, "tenant_db", &ids("a", 6));
    // The new migration waits for an advisory lock this test holds in every database: the run cannot
    // finish before the test lets it, so the 202 provably came before the work (no clock involved,
    // which a loaded machine would defeat).
    let mut v2 = tenant_v2();
    v2.insert("migrations/003_gate.sql".into(), "SELECT pg_advisory_xact_lock(4242);\n".into());
    ok(&upload(g.addr, &p, "tenant_db", &v2), 201);
    let gates: Vec<Client> = ids("a", 6)
        .iter()
        .map(|id| {
            let mut c = pg(&format!("{p}_tenant_db_{id}"));
            c.simple_query("SELECT pg_advisory_lock(4242)").unwrap();
            c
        })
        .collect();

    let v = ok(
        &post_json(
            g.addr,
            "/v2/migrate-all",
            &format!(r#"{{"platform":"{p}","schema_name":"tenant_db","async":true}}"#),
        ),
        202,
    );
    assert_eq!(s(&v, "status"), "running");
    assert_eq!(n(&v, "total"), 6);
    let run = s(&v, "run_id");
    assert_eq!(s(&v, "poll"), format!("/runs/{run}"));

    let first = ok(&get(g.addr, &format!("/runs/{run}")), 200);
    assert_eq!((s(&first, "status").as_str(), n(&first, "done")), ("running", 0), "{}", first.to_json());
    for c in gates {
        c.close();
    }
    let v = wait_run(g.addr, &run, Duration::from_secs(60), |st| st == "completed" || st == "completed_with_errors");
    assert_eq!(s(&v, "status"), "completed", "{}", v.to_json());
    assert_eq!((n(&v, "total"), n(&v, "done"), n(&v, "failed")), (6, 6, 0));
    assert!(v.get("finished_at").is_some_and(|f| !f.is_null()));
    let results = by_db(arr(&v, "results"));
    assert_eq!(results.len(), 6);
    for (db, r) in &results {
        assert!(db.starts_with(&format!("{p}_tenant_db_a")), "{db}");
        assert_eq!(s(r, "status"), "success");
        assert_eq!(n(r, "migrations_applied"), 2, "{}", r.to_json());
    }
    // The async run's changes reached /call (cached statements were dropped).
    assert_eq!(call_value(g.addr, &p, "tenant_db_a03", "tenant_version", "[]"), "\"v2\"");
    // Unknown runs are 404.
    let r = get(g.addr, "/runs/run-does-not-exist");
    assert_eq!((r.status, r.error_code().as_str()), (404, "run_not_found"));
}

// ---------- interrupted runs ----------

#[test]
fn interrupted_run_is_marked_and_a_rerun_finishes_the_rest() {
    let p = uniq("rst");
    let cat = format!("cat_restart_{}", std::process::id());
    let _clean = Cleanup::new(&cat, &[&p]);
    let tenants = ids("r", 10);
    let dbs: Vec<String> = tenants.iter().map(|t| format!("{p}_tenant_db_{t}")).collect();
    let a = gateway(&cat, &[("DEPLOY_PARALLELISM", "1")]);
    register(a.addr, &p);
    ok(&upload(a.addr, &p, "tenant_db", &tenant_v1()), 201);
    create_all(a.addr, &p, "tenant_db", &tenants);
    let mut v2 = tenant_v2();
    v2.insert("migrations/003_slow.sql".into(), "SELECT pg_sleep(0.3);\n".into());
    ok(&upload(a.addr, &p, "tenant_db", &v2), 201);

    // A live run of gateway A is not marked interrupted by gateway B starting on the same catalog.
    let v = ok(&migrate(a.addr, &format!(r#"{{"platform":"{p}","schema_name":"tenant_db","async":true}}"#)), 202);
    let live = s(&v, "run_id");
    wait_run(a.addr, &live, Duration::from_secs(30), |_| {
        one(&cat, &format!("SELECT count(*) FROM run_results WHERE run_id = '{live}'")) != "0"
    });
    let b = gateway(&cat, &[("DEPLOY_PARALLELISM", "1")]);
    // B's start-up check runs at once; give it time, then the run must still be A's.
    std::thread::sleep(Duration::from_millis(800));
    let st = s(&ok(&get(b.addr, &format!("/runs/{live}")), 200), "status");
    assert_ne!(st, "interrupted", "a live run was marked interrupted by another gateway");
    // Stopping A waits for its workers: the run completes.
    drop(a);
    let v = wait_run(b.addr, &live, Duration::from_secs(30), |st| st != "running");
    assert_eq!(s(&v, "status"), "completed", "{}", v.to_json());

    // Version 3 (one changed function, one more slow migration), and a gateway that "crashed" after
    // four databases: its run row stays `running` with four results, and nobody holds its lock.
    let mut v3 = v2.clone();
    v3.insert(
        "migrations/004_more.sql".into(),
        "SELECT pg_sleep(0.3);\nCREATE INDEX notes_created_idx ON notes (created_at);\n".into(),
    );
    v3.insert(
        "functions/version.sql".into(),
        "CREATE OR REPLACE FUNCTION tenant_version() RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'v3' $$;\n"
            .into(),
    );
    ok(&upload(b.addr, &p, "tenant_db", &v3), 201);
    let crashed = format!("run-crashed-{p}");
    q(
        &cat,
        &format!(
            "INSERT INTO runs (id, kind, platform, schema_name, total, gateway_pid) \
             VALUES ('{crashed}', 'v2_migrate', '{p}', 'tenant_db', 10, 999999)"
        ),
    );
    for t in &tenants[..4] {
        let v = ok(
            &migrate(b.addr, &format!(r#"{{"platform":"{p}","schema_name":"tenant_db","database_id":"{t}"}}"#)),
            200,
        );
        let r = &arr(&v, "results")[0];
        assert_eq!(n(r, "migrations_applied"), 1);
        let json = r.to_json().replace('\'', "''");
        q(
            &cat,
            &format!(
                "INSERT INTO run_results (run_id, database, status, result) VALUES ('{crashed}', '{}', 'success', '{json}')",
                s(r, "database")
            ),
        );
    }
    drop(b);

    // A new gateway marks it interrupted.
    let c = gateway(&cat, &[("DEPLOY_PARALLELISM", "1")]);
    let v = wait_run(c.addr, &crashed, Duration::from_secs(15), |st| st != "running");
    assert_eq!(s(&v, "status"), "interrupted");
    assert_eq!((n(&v, "total"), n(&v, "done")), (10, 4));
    assert!(v.get("finished_at").is_some_and(|f| !f.is_null()));
    // ... and leaves finished runs alone.
    assert_eq!(s(&ok(&get(c.addr, &format!("/runs/{live}")), 200), "status"), "completed");

    // The same migrate again finishes the other six; the four already at version 3 are skipped.
    let v = ok(&migrate(c.addr, &format!(r#"{{"platform":"{p}","schema_name":"tenant_db"}}"#)), 200);
    let results = by_db(arr(&v, "results"));
    assert_eq!(results.len(), 10);
    for (i, db) in dbs.iter().enumerate() {
        let r = &results[db];
        assert_eq!(s(r, "status"), "success");
        let want = if i < 4 { (0, 0) } else { (1, 1) };
        assert_eq!((n(r, "migrations_applied"), n(r, "functions_updated")), want, "{db}: {}", r.to_json());
        assert_eq!(one(db, "SELECT count(*) FROM _stonescriptdb_gateway_migrations"), "4");
    }
    assert_eq!(n(&v, "migrations_applied"), 6);
    assert_eq!(call_value(c.addr, &p, "tenant_db_r10", "tenant_version", "[]"), "\"v3\"");
}

// ---------- errors ----------

#[test]
fn errors_names_conflicts_and_failed_creates() {
    let p = uniq("err");
    let cat = format!("cat_errors_{}", std::process::id());
    let _clean = Cleanup::new(&cat, &[&p]);
    let g = gateway(&cat, &[]);
    let code = |r: &Resp| (r.status, r.error_code());

    register(g.addr, &p);
    // Naming a platform that exists is the admin's (or its key holder's) business: anonymously 401,
    // with the token 409.
    let r = post_json(g.addr, "/platform/register", &format!(r#"{{"platform":"{p}"}}"#));
    assert_eq!(code(&r), (401, "invalid_token".into()));
    let admin_register = |name: &str| {
        let auth = format!("Bearer {TOKEN}");
        request(
            g.addr,
            "POST",
            "/platform/register",
            &[("Content-Type", "application/json"), ("Authorization", &auth)],
            format!(r#"{{"platform":"{name}"}}"#).as_bytes(),
        )
    };
    assert_eq!(code(&admin_register(&p)), (409, "platform_already_exists".into()));
    // Sanitised to the same name: also a duplicate.
    assert_eq!(code(&admin_register(&p.to_uppercase())), (409, "platform_already_exists".into()));
    ok(&upload(g.addr, &p, "tenant_db", &tenant_v1()), 201);

    // Unknown platform: upload, list, create, migrate.
    let ghost = uniq("ghost");
    assert_eq!(code(&upload(g.addr, &ghost, "tenant_db", &tenant_v1())), (404, "platform_not_found".into()));
    assert_eq!(code(&get(g.addr, &format!("/platform/{ghost}/schemas"))), (404, "platform_not_found".into()));
    assert_eq!(code(&get(g.addr, &format!("/platform/{ghost}/databases"))), (404, "platform_not_found".into()));
    assert_eq!(code(&create(g.addr, &ghost, "tenant_db", "x1")), (404, "platform_not_found".into()));
    let r = migrate(g.addr, &format!(r#"{{"platform":"{ghost}","schema_name":"tenant_db"}}"#));
    assert_eq!(code(&r), (404, "platform_not_found".into()));
    assert!(!exists(&format!("{ghost}_tenant_db_x1")));

    // Unknown schema.
    assert_eq!(code(&create(g.addr, &p, "nosuch", "x1")), (404, "schema_not_found".into()));
    let r = migrate(g.addr, &format!(r#"{{"platform":"{p}","schema_name":"nosuch"}}"#));
    assert_eq!(code(&r), (404, "schema_not_found".into()));
    assert!(!exists(&format!("{p}_nosuch_x1")));
    // A database that was never created from the schema.
    let r = migrate(g.addr, &format!(r#"{{"platform":"{p}","schema_name":"tenant_db","database_id":"never"}}"#));
    assert_eq!(code(&r), (404, "database_not_found".into()));

    // Bad names.
    let bad = |r: Resp, what: &str| assert_eq!(code(&r), (400, "invalid_request".into()), "{what}: {}", r.text());
    bad(post_json(g.addr, "/platform/register", r#"{"platform":""}"#), "empty platform");
    bad(post_json(g.addr, "/platform/register", r#"{"platform":"   "}"#), "blank platform");
    bad(
        post_json(g.addr, "/platform/register", &format!(r#"{{"platform":"{}"}}"#, "p".repeat(64))),
        "64-byte platform",
    );
    bad(post_json(g.addr, "/platform/register", r#"{"platform":"1abc"}"#), "leading digit");
    bad(post_json(g.addr, "/platform/register", r#"{}"#), "no platform");
    bad(upload(g.addr, &p, "", &tenant_v1()), "empty schema name");
    bad(upload(g.addr, &p, &"s".repeat(64), &tenant_v1()), "64-byte schema name");
    bad(create(g.addr, &p, "tenant_db", ""), "empty database_id");
    // Each part fits, the database name would not: {p}_tenant_db_{id} > 63 bytes.
    let long_id = "i".repeat(63 - p.len() - "_tenant_db_".len() + 1);
    bad(create(g.addr, &p, "tenant_db", &long_id), "database name of 64 bytes");
    assert!(!exists(&format!("{p}_tenant_db_{long_id}")[..63]));
    let fits = "i".repeat(63 - p.len() - "_tenant_db_".len());
    bad(
        migrate(g.addr, &format!(r#"{{"platform":"{p}","schema_name":"tenant_db","database_id":"{long_id}"}}"#)),
        "migrate with a too-long name",
    );
    bad(
        post_json(
            g.addr,
            "/database/create",
            &format!(r#"{{"platform":"{p}","schema_name":"tenant_db","database_id":[1]}}"#),
        ),
        "array id",
    );
    assert_eq!(code(&post_json(g.addr, "/database/create", "{nope")), (400, "invalid_json".into()));

    // Path traversal in path segments.
    for path in [
        "/platform/..%2Fx/schemas",
        "/platform/%2e%2e/schemas",
        "/platform/%2E%2E/databases",
        "/platform/a%2Fb/schemas",
        "/platform/a%5Cb/schemas",
    ] {
        bad(get(g.addr, path), path);
    }
    bad(upload(g.addr, "..%2F..%2Fetc", "tenant_db", &tenant_v1()), "upload traversal");

    // Create: 201, then 409; the longest name that fits works.
    ok(&create(g.addr, &p, "tenant_db", "dup"), 201);
    let r = create(g.addr, &p, "tenant_db", "dup");
    assert_eq!(code(&r), (409, "database_already_exists".into()));
    assert_eq!(code(&create(g.addr, &p, "tenant_db", "DUP")).0, 409);
    // A platform without a key creates databases only through the admin.
    assert_eq!(
        code(&post_json(
            g.addr,
            "/database/create",
            &format!(r#"{{"platform":"{p}","schema_name":"tenant_db","database_id":"nokey"}}"#)
        )),
        (401, "invalid_token".into())
    );
    assert!(!exists(&format!("{p}_tenant_db_nokey")));
    let v = ok(&create(g.addr, &p, "tenant_db", &fits), 201);
    assert_eq!(s(&v, "database").len(), 63);
    // The admin route needs the token.
    let body = format!(r#"{{"platform":"{p}","schema_name":"tenant_db","database_id":"adm"}}"#);
    assert_eq!(post_json(g.addr, "/admin/database/create", &body).status, 401);
    let auth = format!("Bearer {TOKEN}");
    let r = request(
        g.addr,
        "POST",
        "/admin/database/create",
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        body.as_bytes(),
    );
    ok(&r, 201);

    // A create whose pipeline fails leaves no database and no record.
    let mut broken = tenant_v1();
    broken.insert("migrations/002_boom.sql".into(), "SELECT 1 / 0;\n".into());
    ok(&upload(g.addr, &p, "broken_db", &broken), 201);
    let r = create(g.addr, &p, "broken_db", "b1");
    assert_eq!(code(&r), (422, "migration_failed".into()), "{}", r.text());
    assert!(!exists(&format!("{p}_broken_db_b1")));
    let v = ok(&get(g.addr, &format!("/platform/{p}/databases?schema=broken_db")), 200);
    assert_eq!(n(&v, "count"), 0);
    assert_eq!(one(&cat, &format!("SELECT count(*) FROM databases WHERE name = '{p}_broken_db_b1'")), "0");
    // And can be retried once the schema is fixed.
    ok(&upload(g.addr, &p, "broken_db", &tenant_v1()), 201);
    ok(&create(g.addr, &p, "broken_db", "b1"), 201);

    // A broken archive is refused and does not replace the stored version.
    let r = request(
        g.addr,
        "POST",
        &format!("/platform/{p}/schema"),
        &[("Content-Type", "multipart/form-data; boundary=xx")],
        b"--xx\r\nContent-Disposition: form-data; name=\"schema_name\"\r\n\r\ntenant_db\r\n--xx\r\nContent-Disposition: form-data; name=\"schema\"; filename=\"a.tar.gz\"\r\n\r\nnot a gzip\r\n--xx--\r\n",
    );
    assert_eq!(code(&r), (400, "schema_extraction_failed".into()));
    let v = ok(&get(g.addr, &format!("/platform/{p}/schemas")), 200);
    let t = arr(&v, "schemas").iter().find(|x| s(x, "name") == "tenant_db").unwrap().clone();
    assert_eq!(n(&t, "version"), 1);
}

// ---------- dedicated credentials ----------

#[test]
fn dedicated_credentials_own_the_database_and_serve_calls() {
    let p = uniq("cred");
    let cat = format!("cat_cred_{}", std::process::id());
    let role = format!("v2role_{p}");
    let password = format!("pw-{p}-Secret9");
    let mut clean = Cleanup::new(&cat, &[&p]);
    clean.roles.push(role.clone());
    q("postgres", &format!("CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'"));
    let g = gateway(&cat, &[]);
    let mut bodies = Vec::new();
    let auth = format!("Bearer {TOKEN}");
    let body = format!(r#"{{"platform":"{p}","db_user":"{role}"}}"#);
    let admin_post = |path: &str, body: &str| {
        request(
            g.addr,
            "POST",
            path,
            &[("Content-Type", "application/json"), ("Authorization", &auth)],
            body.as_bytes(),
        )
    };

    // A client names the role only with the admin token, and never sends its password.
    assert_eq!(post_json(g.addr, "/platform/register", &body).status, 401);
    let with_pw = format!(r#"{{"platform":"{p}","db_user":"{role}","db_password":"{password}"}}"#);
    assert_eq!(admin_post("/platform/register", &with_pw).status, 400);
    // A superuser or another platform's role is refused.
    let r = admin_post("/platform/register", &format!(r#"{{"platform":"{p}x","db_user":"postgres"}}"#));
    assert_eq!((r.status, r.error_code()), (403, "role_not_allowed".to_string()), "{}", r.text());
    let r = admin_post("/platform/register", &body);
    let v = ok(&r, 201);
    assert_eq!(v.get("has_dedicated_credentials"), Some(&Value::Bool(true)));
    bodies.push(r.text());
    let other = uniq("credo");
    let r = admin_post("/platform/register", &format!(r#"{{"platform":"{other}","db_user":"{role}"}}"#));
    assert_eq!((r.status, r.error_code()), (409, "name_conflict".to_string()), "{}", r.text());
    let r = upload(g.addr, &p, "tenant_db", &tenant_v1());
    ok(&r, 201);
    bodies.push(r.text());
    let r = create(g.addr, &p, "tenant_db", "c1");
    ok(&r, 201);
    bodies.push(r.text());
    let db = format!("{p}_tenant_db_c1");
    assert_eq!(
        one("postgres", &format!("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{db}'")),
        role
    );
    // Deployed as the role: it owns what the deploy created.
    assert_eq!(one(&db, "SELECT tableowner FROM pg_tables WHERE tablename = 'notes'"), role);
    assert_eq!(one(&db, "SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'tenant_version'"), role);
    assert_eq!(one(&db, "SELECT count(*) FROM pg_extension WHERE extname = 'pgcrypto'"), "1");

    // A slow call: its backend logs in as the platform role.
    let addr = g.addr;
    let pc = p.clone();
    let slow = std::thread::spawn(move || call(addr, &pc, "tenant_db_c1", "slow_note_count", "[]"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let users = loop {
        let rows = q(
            "postgres",
            &format!(
                "SELECT usename FROM pg_stat_activity WHERE datname = '{db}' AND query LIKE '%slow_note_count%' \
                 AND pid <> pg_backend_pid()"
            ),
        );
        if !rows.is_empty() {
            break rows;
        }
        assert!(Instant::now() < deadline, "the slow call never showed up in pg_stat_activity");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(users.iter().all(|r| r[0].as_deref() == Some(role.as_str())), "{users:?}");
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    bodies.push(r.text());
    // Every backend of that database is the role's, none the superuser's.
    let all = q("postgres", &format!("SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = '{db}'"));
    assert!(all.iter().all(|r| r[0].as_deref() == Some(role.as_str())), "{all:?}");

    // A migrate runs as the role too (the new table is the role's).
    ok(&upload(g.addr, &p, "tenant_db", &tenant_v2()), 201);
    let r = migrate(g.addr, &format!(r#"{{"platform":"{p}","schema_name":"tenant_db"}}"#));
    ok(&r, 200);
    bodies.push(r.text());
    assert_eq!(one(&db, "SELECT tableowner FROM pg_tables WHERE tablename = 'tags'"), role);

    // The password appears in no response.
    for path in [format!("/platform/{p}/schemas"), format!("/platform/{p}/databases")] {
        bodies.push(get(g.addr, &path).text());
    }
    bodies.push(request(g.addr, "GET", "/admin/platforms", &[("Authorization", &auth)], b"").text());
    for b in &bodies {
        assert!(!b.contains(&password), "password leaked: {b}");
    }
    // The catalog keeps no password.
    assert_eq!(one(&cat, "SELECT count(*) FROM platforms WHERE db_password IS NOT NULL"), "0");
    drop(g);
}

// ---------- two gateways, one catalog ----------

#[test]
fn two_gateways_on_one_catalog_apply_each_migration_once() {
    let p = uniq("two");
    let cat = format!("cat_two_{}", std::process::id());
    let _clean = Cleanup::new(&cat, &[&p]);
    let g1 = gateway(&cat, &[("DEPLOY_PARALLELISM", "2")]);
    let g2 = gateway(&cat, &[("DEPLOY_PARALLELISM", "2")]);
    register(g1.addr, &p);
    // The platform registered through one is known to the other.
    ok(&upload(g2.addr, &p, "tenant_db", &tenant_v1()), 201);
    let tenants = ids("d", 8);
    create_all(g1.addr, &p, "tenant_db", &tenants);
    let mut v2 = tenant_v2();
    // Not idempotent: applied twice it would fail (duplicate key), so a double apply cannot hide.
    v2.insert(
        "migrations/003_once.sql".into(),
        "SELECT pg_sleep(0.05);\nINSERT INTO settings VALUES ('once', '1');\n".into(),
    );
    ok(&upload(g1.addr, &p, "tenant_db", &v2), 201);

    let body = format!(r#"{{"platform":"{p}","schema_name":"tenant_db"}}"#);
    let (r1, r2) = std::thread::scope(|sc| {
        let a = sc.spawn(|| migrate(g1.addr, &body));
        let b = sc.spawn(|| migrate(g2.addr, &body));
        (a.join().unwrap(), b.join().unwrap())
    });
    let v1 = ok(&r1, 200);
    let v2 = ok(&r2, 200);
    assert_eq!(arr(&v1, "results").len(), 8);
    assert_eq!(arr(&v2, "results").len(), 8);
    // Between them, each database got its two migrations exactly once.
    let (a, b) = (by_db(arr(&v1, "results")), by_db(arr(&v2, "results")));
    for t in &tenants {
        let db = format!("{p}_tenant_db_{t}");
        assert_eq!(n(&a[&db], "migrations_applied") + n(&b[&db], "migrations_applied"), 2, "{db}");
        assert_eq!(
            one(&db, "SELECT count(*) FROM _stonescriptdb_gateway_migrations"),
            "3",
            "{db}: 001, 002, 003 once each"
        );
        assert_eq!(
            one(
                &db,
                "SELECT count(*) FROM _stonescriptdb_gateway_changelog WHERE kind = 'migration' AND action LIKE 'apply%'"
            ),
            "3"
        );
        assert_eq!(one(&db, "SELECT count(*) FROM settings WHERE key = 'once'"), "1");
    }
    // Two runs recorded, each with eight results.
    assert_eq!(
        one(
            &cat,
            &format!(
                "SELECT string_agg(r.c::text, ',') FROM (SELECT count(*) AS c FROM run_results rr JOIN runs ON runs.id = rr.run_id WHERE runs.platform = '{p}' AND runs.kind = 'v2_migrate' GROUP BY rr.run_id) r"
            )
        ),
        "8,8"
    );
}

// ---------- stop_on_error ----------

#[test]
fn stop_on_error_stops_starting_databases_after_the_first_failure() {
    let p = uniq("stop");
    let cat = format!("cat_stop_{}", std::process::id());
    let _clean = Cleanup::new(&cat, &[&p]);
    // One database at a time, so "after the first failure" is well defined.
    let g = gateway(&cat, &[("DEPLOY_PARALLELISM", "1")]);
    register(g.addr, &p);
    ok(&upload(g.addr, &p, "tenant_db", &tenant_v1()), 201);
    let tenants = ids("t", 6);
    create_all(g.addr, &p, "tenant_db", &tenants);
    // The first database in catalog order breaks: the new migration creates `tags`, which exists there.
    let first = format!("{p}_tenant_db_t01");
    q(&first, "CREATE TABLE tags (x integer)");
    ok(&upload(g.addr, &p, "tenant_db", &tenant_v2()), 201);

    let r = migrate(g.addr, &format!(r#"{{"platform":"{p}","schema_name":"tenant_db","stop_on_error":true}}"#));
    assert_ne!(r.status, 200, "{}", r.text());
    let v = r.json();
    let results = arr(&v, "results");
    assert_eq!(results.len(), 1, "nothing was started after the failure: {}", v.to_json());
    assert_eq!(s(&results[0], "database"), first);
    assert_eq!(s(&results[0], "status"), "failed");
    let ver = v.get("verification").expect("verification");
    assert_eq!(n(ver, "databases_not_started"), 5, "{}", v.to_json());
    // The others are untouched: still on version 1.
    assert_eq!(one(&format!("{p}_tenant_db_t02"), "SELECT count(*) FROM pg_tables WHERE tablename = 'tags'"), "0");

    // Without stop_on_error the run goes on past the broken database.
    let r = migrate(g.addr, &format!(r#"{{"platform":"{p}","schema_name":"tenant_db"}}"#));
    let v = r.json();
    let results = by_db(arr(&v, "results"));
    assert_eq!(results.len(), 6, "{}", v.to_json());
    assert_eq!(results.values().filter(|x| s(x, "status") == "success").count(), 5);
    assert_eq!(s(&results[&first], "status"), "failed");
}
