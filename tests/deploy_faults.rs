//! Deploys under hostile or broken input, against the PostgreSQL cluster that `scripts/test.sh` starts:
//! transaction control and `COPY … FROM STDIN` in deploy files, a statement that ends the deploy's
//! transaction behind the lexer's back, time limits, the per-platform caps, and a gateway killed in
//! the middle of `/register`. Every case checks that the database and its tracking tables hold exactly
//! what the answer says.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::Resp;
use common::db::{eventually, su_params};
use stonescriptdb_gateway::deploy::archive::{ArchiveLimits, SchemaArchive, read_archive};
use stonescriptdb_gateway::deploy::engine::{DeployOptions, SeedMode, deploy};
use stonescriptdb_gateway::error::{ApiError, Kind};
use stonescriptdb_gateway::pg::blocking::Client;

const TOKEN: &str = "deploy-faults-admin-token-0123456789";

// ---------- PostgreSQL ----------

fn q(db: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut c = Client::connect(&su_params(db)).unwrap_or_else(|e| panic!("connect {db}: {e}"));
    let r = c.simple_query(sql).unwrap_or_else(|e| panic!("{db}: {sql}: {e}"));
    c.close();
    r
}

fn one(db: &str, sql: &str) -> String {
    q(db, sql).first().and_then(|r| r.first().cloned()).flatten().unwrap_or_default()
}

fn db_exists(name: &str) -> bool {
    one("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")) == "1"
}

fn drop_db(name: &str) {
    if let Ok(mut c) = Client::connect(&su_params("postgres")) {
        let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
        c.close();
    }
}

/// What a deploy could have changed: user tables (with the transaction that wrote them), recorded
/// migrations and the changelog.
fn state(db: &str) -> String {
    one(
        db,
        "SELECT concat_ws(' | ', \
           (SELECT string_agg(relname || ':' || xmin::text, ',' ORDER BY relname) FROM pg_class \
            WHERE relnamespace = 'public'::regnamespace), \
           (SELECT string_agg(filename || ':' || checksum, ',' ORDER BY filename) FROM _stonescriptdb_gateway_migrations), \
           (SELECT count(*) FROM _stonescriptdb_gateway_changelog))",
    )
}

fn recorded_migrations(db: &str) -> Vec<String> {
    q(db, "SELECT filename FROM _stonescriptdb_gateway_migrations ORDER BY 1")
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect()
}

fn table_exists(db: &str, table: &str) -> bool {
    one(
        db,
        &format!("SELECT count(*) FROM pg_class WHERE relname = '{table}' AND relnamespace = 'public'::regnamespace"),
    ) == "1"
}

/// A database of its own for engine tests, dropped at the end (also on panic).
struct TestDb {
    name: String,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    fn new(tag: &str) -> TestDb {
        common::pg_env();
        let name = format!("ssdb_faults_{tag}_{}_{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        drop_db(&name);
        q("postgres", &format!("CREATE DATABASE {name}"));
        TestDb { name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        drop_db(&self.name);
    }
}

// ---------- archives ----------

fn archive(files: &[(&str, &str)]) -> SchemaArchive {
    read_archive(&tgz(files), &ArchiveLimits::default()).expect("readable archive")
}

fn tgz(files: &[(&str, &str)]) -> Vec<u8> {
    common::archive::tgz(files.iter().copied())
}

fn opts() -> DeployOptions {
    DeployOptions {
        force: false,
        dry_run: false,
        reseed: false,
        seed_mode: SeedMode::RunIfEmpty,
        run_id: "faults".into(),
        protected_schemas: vec!["public".into()],
        time_limit: None,
    }
}

fn run(db: &TestDb, files: &[(&str, &str)]) -> Result<(), ApiError> {
    let mut c = Client::connect(&su_params(&db.name)).expect("connect");
    let r = deploy(&mut c, &db.name, "", &archive(files), &opts()).map(|_| ());
    c.close();
    r
}

fn extra<'a>(e: &'a ApiError, key: &str) -> Option<&'a str> {
    e.extra.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
}

const BASE: (&str, &str) = ("migrations/001_items.sql", "CREATE TABLE items (id int PRIMARY KEY);\n");

// ---------- transaction control and COPY ----------

/// Each file (path, text, line of the offending statement) is refused with 400 before anything
/// runs: the earlier migration of the same upload is not applied either, nothing is recorded.
#[test]
fn transaction_control_and_copy_from_stdin_are_refused_before_anything_runs() {
    let cases: &[(&str, &str, usize)] = &[
        ("migrations/002_x.sql", "CREATE TABLE t1 (i int);\nCOMMIT;\nDROP TABLE items;\n", 2),
        ("migrations/002_x.sql", "BEGIN;\nCREATE TABLE t1 (i int);\nINSERT INTO t1 VALUES ('x');\nCOMMIT;\n", 1),
        ("migrations/002_x.sql", "CREATE TABLE t1 (i int);\n\n  rollback;\n", 3),
        ("migrations/002_x.sql", "CREATE TABLE t1 (i int);\nEND;\n", 2),
        ("migrations/002_x.sql", "START TRANSACTION ISOLATION LEVEL SERIALIZABLE;\nCREATE TABLE t1 (i int);\n", 1),
        ("migrations/002_x.sql", "SAVEPOINT a;\nCREATE TABLE t1 (i int);\nRELEASE a;\n", 1),
        ("migrations/002_x.sql", "CREATE TABLE t1 (i int);\n/* rows */ COPY t1 (i) FROM STDIN;\n", 2),
        (
            "migrations/002_x.sql",
            "-- gateway: no-transaction\nCREATE TABLE t1 (i int);\nBEGIN;\nDROP TABLE items;\nCOMMIT;\n",
            3,
        ),
        ("functions/f.sql", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;\nCOMMIT;\n", 2),
        ("seeders/s.sql", "copy items from stdin with (format csv);\n", 1),
    ];
    let db = TestDb::new("refuse");
    run(&db, &[BASE]).expect("base deploy");
    let before = state(&db.name);
    for (path, text, line) in cases {
        let e = run(&db, &[BASE, ("migrations/000_first.sql", "CREATE TABLE t0 (i int);"), (path, text)])
            .expect_err(&format!("{path} must be refused: {text}"));
        assert_eq!(e.kind, Kind::StatementNotAllowed, "{path}: {}", e.message);
        assert_eq!(e.kind.status(), 400);
        assert_eq!(extra(&e, "file"), Some(format!("\"{path}\"").as_str()), "{}", e.message);
        assert_eq!(extra(&e, "line"), Some(line.to_string().as_str()), "{text}: {}", e.message);
        assert!(e.message.contains(path) && e.message.contains("nothing was run"), "{}", e.message);
        assert_eq!(state(&db.name), before, "{path} changed the database: {text}");
        assert_eq!(recorded_migrations(&db.name), ["migrations/001_items.sql"]);
    }
    // The same words inside a function body, a DO block or a string are no transaction control.
    run(
        &db,
        &[
            BASE,
            (
                "migrations/002_ok.sql",
                "DO $$ BEGIN PERFORM 1; END $$;\nCREATE TABLE notes (t text DEFAULT 'COMMIT');\n",
            ),
        ],
    )
    .expect("words in bodies and strings are fine");
    assert!(table_exists(&db.name, "notes"));
}

/// The lexer reads strings with `standard_conforming_strings = on`; a file that turns it off makes
/// PostgreSQL see statements where the lexer saw a string. Inside the deploy's transaction such a
/// statement fails (PostgreSQL refuses several commands in one prepared statement) and nothing is
/// kept; a procedure that commits is refused by PostgreSQL there too.
#[test]
fn statements_hidden_from_the_lexer_cannot_end_the_deploy_transaction() {
    let db = TestDb::new("hidden");
    run(&db, &[BASE]).expect("base deploy");
    let before = state(&db.name);
    let hidden = "CREATE TABLE before_commit (i int);\n\
                  SET standard_conforming_strings = off;\n\
                  SELECT 'a\\'' ; COMMIT ; SELECT 'b\\'';\n\
                  DROP TABLE items;\n";
    let e = run(&db, &[BASE, ("migrations/002_hidden.sql", hidden)]).expect_err("must fail");
    assert_eq!(e.kind, Kind::MigrationFailed, "{}", e.message);
    assert_eq!(state(&db.name), before);
    let proc = "CREATE TABLE t1 (i int);\n\
                CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$;\n\
                CALL p();\n\
                DROP TABLE items;\n";
    let e = run(&db, &[BASE, ("migrations/002_proc.sql", proc)]).expect_err("must fail");
    assert_eq!(e.kind, Kind::MigrationFailed, "{}", e.message);
    assert_eq!(e.db.as_ref().map(|d| d.sqlstate.as_str()), Some("2D000"), "{}", e.message);
    assert_eq!(state(&db.name), before);
    assert_eq!(recorded_migrations(&db.name), ["migrations/001_items.sql"]);
}

/// In a no-transaction migration the same trick runs the hidden statements (autocommit, simple
/// protocol). A hidden `BEGIN` would make everything after it, and the gateway's record of the file,
/// one transaction that a later COMMIT keeps: the status check after the statement stops the file
/// there, rolls the opened transaction back, says so, and does not record the file.
#[test]
fn a_transaction_opened_behind_the_lexer_stops_the_no_transaction_migration() {
    let db = TestDb::new("escape");
    run(&db, &[BASE]).expect("base deploy");
    let hidden = "-- gateway: no-transaction\n\
                  CREATE TABLE before_begin (i int);\n\
                  SET standard_conforming_strings = off;\n\
                  SELECT 'a\\'' ; BEGIN ; SELECT 'b\\'';\n\
                  DROP TABLE items;\n";
    let e = run(&db, &[BASE, ("migrations/002_hidden.sql", hidden)]).expect_err("must fail");
    assert_eq!(e.kind, Kind::TransactionEscaped, "{}", e.message);
    // The platform's file did it: its fault, not the gateway's.
    assert_eq!(e.kind.status(), 422);
    assert_eq!(extra(&e, "line"), Some("4"), "{}", e.message);
    assert!(e.message.contains("left a transaction open") && e.message.contains("stay applied"), "{}", e.message);
    // Exactly what the answer says: the no-transaction statement before it stays, nothing after it ran,
    // the file is not recorded.
    assert!(table_exists(&db.name, "before_begin"));
    assert!(table_exists(&db.name, "items"));
    assert_eq!(recorded_migrations(&db.name), ["migrations/001_items.sql"]);
}

/// `COPY … FROM STDIN` reaching the blocking client (extended and simple protocol) fails at once and
/// leaves the session usable: after CopyFail the server waits for a Sync the client must send.
#[test]
fn copy_from_stdin_fails_without_hanging_the_session() {
    let db = TestDb::new("copy");
    let mut c = Client::connect(&su_params(&db.name)).unwrap();
    c.batch_execute("CREATE TABLE t (i int)").unwrap();
    // A hang would end in this timeout (an I/O error), not in PostgreSQL's COPY error.
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let e = c.query("COPY t FROM STDIN", &[]).expect_err("extended COPY FROM STDIN must fail");
    assert_eq!(e.sqlstate(), Some("57014"), "{e}");
    assert!(!c.is_broken());
    assert_eq!(c.query("SELECT count(*)::text FROM t", &[]).unwrap().rows, vec![vec![Some("0".to_string())]]);
    let e = c.batch_execute("COPY t FROM STDIN").expect_err("simple COPY FROM STDIN must fail");
    assert_eq!(e.sqlstate(), Some("57014"), "{e}");
    assert_eq!(c.simple_query("SELECT 1").unwrap(), vec![vec![Some("1".to_string())]]);
    c.close();
}

// ---------- over HTTP ----------

/// A gateway with its own catalog and platform names, and cleanup of both.
struct World {
    gw: Option<common::Gateway>,
    tag: String,
    catalog: String,
}

impl World {
    fn new(tag: &str, extra: &[(&str, &str)]) -> World {
        common::pg_env();
        let tag = format!("df_{tag}_{}", std::process::id());
        let catalog = format!("cat_{tag}");
        drop_db(&catalog);
        let mut o: Vec<(&str, &str)> = vec![("CATALOG_DB", &catalog), ("ADMIN_TOKEN", TOKEN)];
        o.extend_from_slice(extra);
        let gw = common::start(&o);
        World { gw: Some(gw), tag, catalog }
    }

    fn addr(&self) -> SocketAddr {
        self.gw.as_ref().unwrap().addr
    }

    fn platform(&self, p: &str) -> String {
        format!("{}_{p}", self.tag)
    }

    fn post(&self, path: &str, platform: &str, tenant: Option<&str>, archive: &[u8]) -> Resp {
        post_form(self.addr(), path, platform, tenant, archive)
    }
}

fn post_form(addr: SocketAddr, path: &str, platform: &str, tenant: Option<&str>, archive: &[u8]) -> Resp {
    let mut fields: Vec<(&str, &[u8])> = vec![("platform", platform.as_bytes()), ("schema", archive)];
    if let Some(t) = tenant {
        fields.push(("tenant_id", t.as_bytes()));
    }
    let (ct, body) = common::multipart(&fields);
    common::request(addr, "POST", path, &[("Content-Type", &ct)], &body)
}

impl Drop for World {
    fn drop(&mut self) {
        drop(self.gw.take());
        for r in q("postgres", &format!("SELECT datname FROM pg_database WHERE starts_with(datname, '{}_')", self.tag))
        {
            drop_db(r[0].as_deref().unwrap_or_default());
        }
        drop_db(&self.catalog);
    }
}

#[track_caller]
fn expect(r: &Resp, status: u16, code: &str) -> stonescriptdb_gateway::json::Value {
    assert_eq!(r.status, status, "body: {}", r.text());
    let v = r.json();
    if !code.is_empty() {
        assert_eq!(v.get("error").and_then(|e| e.as_str()), Some(code), "body: {}", r.text());
    }
    v
}

fn cause(v: &stonescriptdb_gateway::json::Value) -> &str {
    v.get("cause").and_then(|c| c.as_str()).unwrap_or_default()
}

/// A statement past `DEPLOY_STATEMENT_TIMEOUT_MS`, and a deploy past `DEPLOY_TIMEOUT_SECS` even
/// though its file turned the statement timeout off, both fail with 504 `deploy_timeout` and leave
/// the database as it was.
#[test]
fn deploys_past_their_time_limits_fail_and_leave_nothing() {
    let w = World::new("timeout", &[("DEPLOY_STATEMENT_TIMEOUT_MS", "1000"), ("DEPLOY_TIMEOUT_SECS", "3")]);
    let p = w.platform("a");
    let db = format!("{p}_main");
    expect(&w.post("/register", &p, None, &tgz(&[BASE])), 200, "");
    let before = state(&db);

    let slow = tgz(&[BASE, ("migrations/002_slow.sql", "CREATE TABLE t1 (i int);\nSELECT pg_sleep(5);\n")]);
    let t0 = Instant::now();
    let v = expect(&w.post("/register", &p, None, &slow), 504, "deploy_timeout");
    assert_eq!(cause(&v), "statement_timeout", "{}", v.to_json());
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert_eq!(state(&db), before);

    // The file lifts the statement timeout; the total limit still holds.
    let sneaky = tgz(&[
        BASE,
        ("migrations/002_slow.sql", "SET statement_timeout = 0;\nCREATE TABLE t1 (i int);\nSELECT pg_sleep(30);\n"),
    ]);
    let t0 = Instant::now();
    let v = expect(&w.post("/register", &p, None, &sneaky), 504, "deploy_timeout");
    assert_eq!(cause(&v), "deploy_timeout", "{}", v.to_json());
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    assert_eq!(state(&db), before);

    // A block that swallows the cancel: the socket is cut a grace period later and the backend ended.
    let stubborn = tgz(&[
        BASE,
        (
            "migrations/002_slow.sql",
            "SET statement_timeout = 0;\nCREATE TABLE t1 (i int);\n\
             DO $$ BEGIN FOR i IN 1..60 LOOP BEGIN PERFORM pg_sleep(1); \
             EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$;\n",
        ),
    ]);
    let t0 = Instant::now();
    let v = expect(&w.post("/register", &p, None, &stubborn), 504, "deploy_timeout");
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?} {}", t0.elapsed(), v.to_json());
    assert!(
        eventually(Duration::from_secs(10), || one(
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'")
        ) == "0"),
        "the deploy's backend still runs"
    );
    assert_eq!(state(&db), before);
}

/// `DEPLOY_MAX_PER_PLATFORM`: while one platform runs two slow deploys, its third is refused with a
/// retryable 503, and another platform's deploy is served at once.
#[test]
fn one_platform_cannot_take_every_deploy_worker() {
    let w = World::new("cap", &[("DEPLOY_WORKERS", "3"), ("DEPLOY_MAX_PER_PLATFORM", "2")]);
    let a = w.platform("a");
    let b = w.platform("b");
    for t in ["t1", "t2", "t3"] {
        expect(&w.post("/register", &a, Some(t), &tgz(&[BASE])), 200, "");
    }
    let slow = tgz(&[BASE, ("migrations/002_slow.sql", "SELECT pg_sleep(6);\n")]);
    let addr = w.addr();
    let busy = || {
        one(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE '{a}%' AND query LIKE '%pg_sleep%' \
                 AND application_name = 'stonescriptdb-gateway deploy'"
            ),
        )
    };
    std::thread::scope(|s| {
        let slow_ones: Vec<_> = ["t1", "t2"]
            .into_iter()
            .map(|t| {
                let (a, slow) = (a.clone(), slow.clone());
                s.spawn(move || post_form(addr, "/migrate", &a, Some(t), &slow))
            })
            .collect();
        assert!(eventually(Duration::from_secs(5), || busy() == "2"), "two slow deploys of {a} run");
        let third = w.post("/migrate", &a, Some("t3"), &slow);
        expect(&third, 503, "deploy_platform_busy");
        assert!(third.header("Retry-After").is_some(), "{:?}", third.headers);
        let t0 = Instant::now();
        expect(&w.post("/register", &b, None, &tgz(&[BASE])), 200, "");
        let took = t0.elapsed();
        assert!(busy() == "2", "the other platform was served while both slow deploys still ran");
        assert!(took < Duration::from_secs(4), "{took:?}");
        for h in slow_ones {
            expect(&h.join().unwrap(), 200, "");
        }
    });
    // Its slots are free again.
    expect(&w.post("/migrate", &a, Some("t3"), &tgz(&[BASE])), 200, "");
}

/// `MAX_DATABASES_PER_PLATFORM`: the database past the limit is not created, by any route.
#[test]
fn a_platform_cannot_create_more_databases_than_its_limit() {
    let w = World::new("dbcap", &[("MAX_DATABASES_PER_PLATFORM", "2")]);
    let p = w.platform("a");
    expect(&w.post("/register", &p, None, &tgz(&[BASE])), 200, "");
    let auth = format!("Bearer {TOKEN}");
    let tenant = |t: &str| {
        common::request(
            w.addr(),
            "POST",
            "/admin/create-tenant",
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            format!("{{\"platform\":\"{p}\",\"tenant_id\":\"{t}\"}}").as_bytes(),
        )
    };
    expect(&tenant("t1"), 201, "");
    expect(&tenant("t2"), 409, "database_limit_reached");
    expect(&w.post("/register", &p, Some("t3"), &tgz(&[BASE])), 409, "database_limit_reached");
    assert!(!db_exists(&format!("{p}_t2")) && !db_exists(&format!("{p}_t3")));
    // Deploying to the databases it has still works.
    expect(&w.post("/register", &p, Some("t1"), &tgz(&[BASE])), 200, "");
    expect(&w.post("/register", &p, None, &tgz(&[BASE])), 200, "");
}

// ---------- a gateway killed during /register ----------

const BIN: &str = env!("CARGO_BIN_EXE_stonescriptdb-gateway");

/// Starts the real binary and returns it with its address.
fn spawn_gateway(catalog: &str) -> (Child, SocketAddr) {
    let (host, port, user) = common::pg_env();
    let dir = std::env::temp_dir().join(format!("ssdb-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(BIN)
        .env_clear()
        .current_dir(&dir)
        .env("GATEWAY_PORT", "0")
        .env("DB_HOST", &host)
        .env("DB_PORT", port.to_string())
        .env("DB_USER", &user)
        .env("CATALOG_DB", catalog)
        .env("PLATFORM_SECRET", "faults-platform-secret-0123456789abcdef")
        .env("DEPLOY_CONNECTION_CHECK_MS", "500")
        .env("LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = common::listening_addr(&mut stderr).parse().unwrap();
    // Keep draining stderr so the gateway never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while stderr.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    (child, addr)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGKILL while `/register` runs a slow first migration: the deploy's backend stops by itself (the
/// connection check), and the next start drops the half-made database and its catalog row.
#[test]
fn a_register_killed_midway_is_cleaned_up_at_the_next_start() {
    common::pg_env();
    let tag = format!("df_kill_{}", std::process::id());
    let catalog = format!("cat_{tag}");
    let db = format!("{tag}_main");
    drop_db(&catalog);
    drop_db(&db);
    let (child, addr) = spawn_gateway(&catalog);
    let mut gw = Killed(child);
    let slow = tgz(&[BASE, ("migrations/002_slow.sql", "SELECT pg_sleep(60);\n")]);
    let tag2 = tag.clone();
    std::thread::spawn(move || {
        let _ = std::panic::catch_unwind(|| post_form(addr, "/register", &tag2, None, &slow));
    });
    let running = || {
        one(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' \
                 AND application_name = 'stonescriptdb-gateway deploy' AND query LIKE '%pg_sleep%'"
            ),
        ) == "1"
    };
    assert!(eventually(Duration::from_secs(15), running), "the slow first deploy runs");
    assert_eq!(one(&catalog, &format!("SELECT state FROM databases WHERE name = '{db}'")), "creating");
    gw.0.kill().unwrap();
    gw.0.wait().unwrap();
    // The backend notices its client is gone (client_connection_check_interval) and stops.
    assert!(eventually(Duration::from_secs(10), || !running()), "the killed gateway's deploy still runs");
    assert!(db_exists(&db), "the half-made database is there until a gateway starts");

    let (child, _) = spawn_gateway(&catalog);
    let _gw = Killed(child);
    assert!(eventually(Duration::from_secs(20), || !db_exists(&db)), "the half-made database was not dropped");
    assert_eq!(one(&catalog, &format!("SELECT count(*) FROM databases WHERE name = '{db}'")), "0");
    drop(_gw);
    drop_db(&catalog);
}
