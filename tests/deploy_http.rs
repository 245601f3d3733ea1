//! The deploy routes end to end: `/register`, `/migrate`, `/admin/databases` and
//! `/admin/create-tenant` over HTTP against an in-process gateway and the PostgreSQL cluster that
//! `scripts/test.sh` starts. Each test has its own platform name and its own catalog database
//! (`CATALOG_DB` override), and drops every database it made when it ends (also on panic).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use common::{Gateway, Resp};
use stonescriptdb_gateway::json::Value;
use stonescriptdb_gateway::pg::blocking::Client;

const TOKEN: &str = "deploy-http-admin-token-0123456789";

// ---------- PostgreSQL ----------

fn q(db: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut c = Client::connect(&common::db::su_params(db)).unwrap_or_else(|e| panic!("connect {db}: {e}"));
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

/// Databases whose names start with `prefix`.
fn databases_with_prefix(prefix: &str) -> Vec<String> {
    q("postgres", &format!("SELECT datname FROM pg_database WHERE starts_with(datname, '{prefix}') ORDER BY 1"))
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect()
}

/// Everything the tracking tables and the user schema hold, to prove a request changed nothing.
fn state(db: &str) -> String {
    one(
        db,
        "SELECT concat_ws(' | ', \
           (SELECT string_agg(filename || ':' || checksum, ',' ORDER BY filename) FROM _stonescriptdb_gateway_migrations), \
           (SELECT string_agg(signature || ':' || checksum, ',' ORDER BY signature) FROM _stonescriptdb_gateway_functions), \
           (SELECT count(*) FROM _stonescriptdb_gateway_changelog), \
           (SELECT string_agg(relname || ':' || xmin::text, ',' ORDER BY relname) FROM pg_class WHERE relnamespace = 'public'::regnamespace), \
           (SELECT string_agg(oid::text || ':' || xmin::text, ',' ORDER BY oid) FROM pg_proc WHERE pronamespace = 'public'::regnamespace), \
           (SELECT string_agg(enumlabel, ',' ORDER BY enumtypid, enumsortorder) FROM pg_enum), \
           (SELECT string_agg(id::text, ',' ORDER BY id) FROM products))",
    )
}

// ---------- archives ----------

/// The sample platform as path (relative to `postgresql/`) → content.
fn platform_files() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/platform/postgresql");
    let mut out = BTreeMap::new();
    for folder in std::fs::read_dir(&root).unwrap() {
        let folder = folder.unwrap().path();
        for f in std::fs::read_dir(&folder).unwrap() {
            let f = f.unwrap().path();
            let rel = f.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            out.insert(rel, std::fs::read_to_string(&f).unwrap());
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Pack {
    /// GNU headers with an entry for `postgresql/` and each folder, as GNU tar writes.
    GnuWithDirs,
    /// POSIX ustar headers and no directory entries at all.
    UstarNoDirs,
}

fn tar_of(files: &BTreeMap<String, String>, pack: Pack) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let header = || match pack {
        Pack::GnuWithDirs => tar::Header::new_gnu(),
        Pack::UstarNoDirs => tar::Header::new_ustar(),
    };
    let mut dirs_done = std::collections::BTreeSet::new();
    for (path, content) in files {
        if pack == Pack::GnuWithDirs {
            let mut dirs = vec!["postgresql/".to_string()];
            if let Some((folder, _)) = path.split_once('/') {
                dirs.push(format!("postgresql/{folder}/"));
            }
            for d in dirs {
                if dirs_done.insert(d.clone()) {
                    let mut h = header();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_mtime(0);
                    b.append_data(&mut h, &d, std::io::empty()).unwrap();
                }
            }
        }
        let mut h = header();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("postgresql/{path}"), content.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

fn tgz(files: &BTreeMap<String, String>) -> Vec<u8> {
    common::archive::gzip(&tar_of(files, Pack::GnuWithDirs))
}

/// A tar with one raw header whose name field is written as given (bypassing the `tar` crate's
/// own path checks), for hostile names.
fn tar_with_raw_name(name: &str, data: &[u8], kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            old.linkname = [0; 100];
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(kind);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, data).unwrap();
    b.into_inner().unwrap()
}

// ---------- HTTP ----------

const BOUNDARY: &str = "----ssdbDeployHttpBoundary7MA4YWxkTrZu0gW";

/// A multipart body: the archive part first (fields may come in any order), then the text fields.
fn multipart(fields: &[(&str, &str)], archive: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut b = Vec::new();
    if let Some((name, data)) = archive {
        b.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"postgresql.tar.gz\"\r\n\
                 Content-Type: application/gzip\r\n\r\n"
            )
            .as_bytes(),
        );
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    for (k, v) in fields {
        b.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes(),
        );
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

fn post_form(addr: SocketAddr, path: &str, fields: &[(&str, &str)], archive: Option<&[u8]>) -> Resp {
    let body = multipart(fields, archive.map(|a| ("schema", a)));
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    common::request(addr, "POST", path, &[("Content-Type", &ct)], &body)
}

/// Walks a dotted path (`results.0.error.error`).
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for part in path.split('.') {
        cur = match part.parse::<usize>() {
            Ok(i) => cur
                .as_array()
                .and_then(|a| a.get(i))
                .unwrap_or_else(|| panic!("no index {i} in {path}: {}", v.to_json())),
            Err(_) => cur.get(part).unwrap_or_else(|| panic!("no member {part} in {path}: {}", v.to_json())),
        };
    }
    cur
}

fn num(v: &Value, path: &str) -> i64 {
    match at(v, path) {
        Value::Number(n) => n.parse().unwrap_or_else(|_| panic!("{path} = {n}")),
        other => panic!("{path} is not a number: {}", other.to_json()),
    }
}

fn text<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path).as_str().unwrap_or_else(|| panic!("{path} is not a string: {}", v.to_json()))
}

fn len(v: &Value, path: &str) -> usize {
    at(v, path).as_array().unwrap_or_else(|| panic!("{path} is not an array: {}", v.to_json())).len()
}

fn strs(v: &Value, path: &str) -> Vec<String> {
    at(v, path).as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

#[track_caller]
fn expect(r: &Resp, status: u16) -> Value {
    assert_eq!(r.status, status, "body: {}", r.text());
    r.json()
}

// ---------- one test's world ----------

/// A gateway with its own catalog, a platform name of its own, and cleanup of both.
struct World {
    gw: Option<Gateway>,
    platform: String,
    catalog: String,
}

impl World {
    fn new(tag: &str, extra: &[(&str, &str)]) -> World {
        common::pg_env();
        let pid = std::process::id();
        let platform = format!("dh_{tag}_{pid}");
        let catalog = format!("cat_dh_{tag}_{pid}");
        for db in databases_with_prefix(&format!("{platform}_")) {
            drop_db(&db);
        }
        drop_db(&catalog);
        let mut o: Vec<(&str, &str)> = vec![("CATALOG_DB", &catalog), ("ADMIN_TOKEN", TOKEN), ("DEPLOY_WORKERS", "4")];
        o.extend_from_slice(extra);
        let gw = common::start(&o);
        World { gw: Some(gw), platform, catalog }
    }

    fn addr(&self) -> SocketAddr {
        self.gw.as_ref().unwrap().addr
    }

    fn main_db(&self) -> String {
        format!("{}_main", self.platform)
    }

    fn register(&self, extra: &[(&str, &str)], archive: &[u8]) -> Resp {
        let mut f = vec![("platform", self.platform.as_str())];
        f.extend_from_slice(extra);
        post_form(self.addr(), "/register", &f, Some(archive))
    }

    fn migrate(&self, extra: &[(&str, &str)], archive: &[u8]) -> Resp {
        let mut f = vec![("platform", self.platform.as_str())];
        f.extend_from_slice(extra);
        post_form(self.addr(), "/migrate", &f, Some(archive))
    }

    fn admin(&self, method: &str, path: &str, body: &str) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        common::request(
            self.addr(),
            method,
            path,
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    fn call(&self, tenant: Option<&str>, function: &str, params: &str) -> Resp {
        let tenant = tenant.map(|t| format!(",\"tenant_id\":\"{t}\"")).unwrap_or_default();
        common::post_json(
            self.addr(),
            "/call",
            &format!("{{\"platform\":\"{}\"{tenant},\"function\":\"{function}\",\"params\":{params}}}", self.platform),
        )
    }
}

fn drop_db(name: &str) {
    if let Ok(mut c) = Client::connect(&common::db::su_params("postgres")) {
        let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
        c.close();
    }
}

impl Drop for World {
    fn drop(&mut self) {
        drop(self.gw.take());
        for db in databases_with_prefix(&format!("{}_", self.platform)) {
            drop_db(&db);
        }
        drop_db(&self.catalog);
    }
}

/// The fixture with one new migration, one changed and one deleted function.
fn changed_fixture() -> BTreeMap<String, String> {
    changed(platform_files())
}

fn changed(mut files: BTreeMap<String, String>) -> BTreeMap<String, String> {
    files.insert(
        "migrations/011_flag.sql".into(),
        "ALTER TABLE app_settings ADD COLUMN IF NOT EXISTS flag boolean;\n".into(),
    );
    let math = files["functions/math.sql"]
        .replace("'SELECT a + b + c'", "'SELECT a + b + c + 100'")
        .replace("CREATE OR REPLACE FUNCTION to_be_removed() RETURNS integer LANGUAGE sql AS 'SELECT 42';", "");
    files.insert("functions/math.sql".into(), math);
    files
}

// ---------- tests ----------

#[test]
fn register_new_then_unchanged_redeploy_runs_no_changes() {
    let w = World::new("reg", &[]);
    let files = platform_files();
    let archive = tgz(&files);
    let v = expect(&w.register(&[], &archive), 200);
    assert_eq!(text(&v, "status"), "ready");
    assert_eq!(text(&v, "database"), w.main_db());
    assert_eq!(at(&v, "created").as_bool(), Some(true));
    let mut ext = strs(&v, "extensions_installed_names");
    ext.sort();
    assert_eq!(ext, ["pg_trgm", "pgcrypto", "uuid-ossp"]);
    // Counts, as 1.x answered; the lists beside them.
    assert_eq!(num(&v, "extensions_installed"), 3);
    assert_eq!(num(&v, "types_deployed"), 3);
    assert_eq!(len(&v, "types_deployed_names"), 3);
    assert_eq!(num(&v, "tables_created"), 4);
    assert_eq!(len(&v, "tables_created_names"), 4);
    assert_eq!(
        strs(&v, "migrations_applied_names"),
        ["migrations/001_settings.sql", "migrations/002_more.sql", "migrations/010_index.sql"]
    );
    assert_eq!(num(&v, "migrations_applied"), 3, "a count, as /migrate answers and clients read");
    assert_eq!(num(&v, "functions_deployed"), 13);
    assert_eq!(num(&v, "functions_changed"), 13);
    assert_eq!(num(&v, "functions_skipped"), 0);
    assert_eq!(at(&v, "dry_run").as_bool(), Some(false));

    // The deployed functions answer through /call.
    let c = expect(&w.call(None, "add_numbers", "[2, 3]"), 200);
    assert_eq!(num(&c, "row_count"), 1, "{}", c.to_json());
    assert!(c.to_json().contains('5'), "{}", c.to_json());
    let c = expect(&w.call(None, "greet", "{\"p_name\": \"gateway\"}"), 200);
    assert!(c.to_json().contains("hello gateway!"), "{}", c.to_json());

    let db = w.main_db();
    let before = state(&db);
    let changelog = one(&db, "SELECT count(*) FROM _stonescriptdb_gateway_changelog");
    let v = expect(&w.register(&[], &archive), 200);
    assert_eq!(text(&v, "status"), "ready");
    assert_eq!(at(&v, "created").as_bool(), Some(false));
    for k in ["extensions_installed", "types_deployed", "tables_created"] {
        assert_eq!(num(&v, k), 0, "{k}: {}", v.to_json());
    }
    for k in [
        "extensions_installed_names",
        "types_deployed_names",
        "tables_created_names",
        "migrations_applied_names",
        "functions_changed_names",
        "functions_dropped",
    ] {
        assert_eq!(len(&v, k), 0, "{k}: {}", v.to_json());
    }
    assert_eq!(num(&v, "migrations_applied"), 0);
    assert_eq!(num(&v, "functions_changed"), 0);
    assert_eq!(num(&v, "functions_skipped"), num(&v, "functions_deployed"));
    assert_eq!(num(&v, "functions_deployed"), 13);
    // Nothing was written: the changelog did not grow and no catalog row (function, relation) was
    // rewritten — a CREATE OR REPLACE or ALTER would have given the row a new xmin.
    assert_eq!(one(&db, "SELECT count(*) FROM _stonescriptdb_gateway_changelog"), changelog);
    assert_eq!(state(&db), before);
}

/// Issue 23: an unchanged redeploy used to open a new catalog session (and a new admin session) for
/// every request, paying a backend start and cold caches each time. The session a clean request
/// leaves is kept for the next one: the same backend serves every redeploy, and each run is still
/// recorded whole (its result, its end, the database's last deploy).
#[test]
fn unchanged_redeploys_reuse_the_catalog_session_and_record_every_run() {
    let w = World::new("keep", &[]);
    let archive = tgz(&platform_files());
    expect(&w.register(&[], &archive), 200);
    // Catalog sessions left open between requests (before: none, each request closed its own).
    let kept = || {
        q(
            "postgres",
            &format!(
                "SELECT pid::text || '@' || backend_start::text FROM pg_stat_activity \
                 WHERE datname = '{}' AND state = 'idle' AND application_name = 'stonescriptdb-gateway' ORDER BY 1",
                w.catalog
            ),
        )
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect::<Vec<_>>()
    };
    let mut seen = Vec::new();
    for _ in 0..3 {
        let v = expect(&w.register(&[], &archive), 200);
        assert_eq!(num(&v, "functions_changed"), 0, "{}", v.to_json());
        seen.push(kept());
    }
    assert!(!seen[0].is_empty(), "a catalog session kept after a redeploy: {seen:?}");
    assert!(seen.iter().all(|s| *s == seen[0]), "the later redeploys started no catalog backend: {seen:?}");

    let runs = q(
        &w.catalog,
        "SELECT count(*)::text, count(*) FILTER (WHERE status = 'completed' AND finished_at IS NOT NULL)::text \
         FROM runs WHERE kind = 'register'",
    );
    assert_eq!(runs[0], [Some("4".to_string()), Some("4".to_string())], "every register recorded and finished");
    let results = one(
        &w.catalog,
        "SELECT count(*) FROM run_results rr JOIN runs r ON r.id = rr.run_id \
         WHERE r.kind = 'register' AND rr.status = 'success'",
    );
    assert_eq!(results, "4");
    let last = one(
        &w.catalog,
        &format!(
            "SELECT (d.last_run_id = (SELECT id FROM runs WHERE kind = 'register' ORDER BY started_at DESC, id DESC \
             LIMIT 1))::text FROM databases d WHERE d.name = '{}'",
            w.main_db()
        ),
    );
    assert_eq!(last, "true", "the database's last deploy is the last register");
    // No lock of the name outlives its request: a kept session holds none.
    let held = one(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND a.datname = '{}'",
            w.catalog
        ),
    );
    assert_eq!(held, "0");
}

#[test]
fn gnu_tar_with_directories_and_ustar_without_both_register() {
    let w = World::new("tarfmt", &[]);
    let files = platform_files();
    for (tenant, pack) in [("gnu", Pack::GnuWithDirs), ("ustar", Pack::UstarNoDirs)] {
        let tar = tar_of(&files, pack);
        // Make sure the two shapes really differ the way they claim to.
        let has_dirs =
            tar::Archive::new(&tar[..]).entries().unwrap().any(|e| e.unwrap().header().entry_type().is_dir());
        assert_eq!(has_dirs, pack == Pack::GnuWithDirs);
        let magic = &tar[257..263];
        assert_eq!(magic == b"ustar\0", pack == Pack::UstarNoDirs, "{magic:?}");
        let v = expect(&w.register(&[("tenant_id", tenant)], &common::archive::gzip(&tar)), 200);
        assert_eq!(text(&v, "database"), format!("{}_{tenant}", w.platform));
        assert_eq!(num(&v, "functions_deployed"), 13, "{tenant}");
        assert_eq!(num(&v, "tables_created"), 4, "{tenant}");
        assert_eq!(len(&v, "migrations_applied_names"), 3, "{tenant}");
        assert_eq!(num(&v, "migrations_applied"), 3, "{tenant}");
        let c = expect(&w.call(Some(tenant), "product_count", "[]"), 200);
        assert!(c.to_json().contains('3'), "{}", c.to_json());
    }
}

#[test]
fn migrate_applies_replaces_and_drops_exactly_what_changed() {
    let w = World::new("mig", &[]);
    expect(&w.register(&[], &tgz(&platform_files())), 200);
    let db = w.main_db();
    // Warm the /call statement cache so the migrate must invalidate it.
    let c = expect(&w.call(None, "add_numbers", "[1, 2, 3]"), 200);
    assert!(c.to_json().contains('6'), "{}", c.to_json());
    let changelog = one(&db, "SELECT count(*)::int FROM _stonescriptdb_gateway_changelog").parse::<i64>().unwrap();

    let v = expect(&w.migrate(&[], &tgz(&changed_fixture())), 200);
    assert_eq!(text(&v, "status"), "completed");
    assert_eq!(at(&v, "dry_run").as_bool(), Some(false));
    // A platform deployed only through v1 routes is listed with the others.
    let list = expect(&w.admin("GET", "/platforms", ""), 200);
    assert!(
        list.to_json().contains(&format!("\"name\":\"{}\"", w.platform)),
        "v1 platform missing from /platforms: {}",
        list.to_json()
    );
    assert_eq!(text(&v, "platform"), w.platform);
    assert_eq!(strs(&v, "databases_updated"), std::slice::from_ref(&db));
    assert_eq!(num(&v, "migrations_applied"), 1);
    assert_eq!(num(&v, "functions_updated"), 1);
    assert_eq!(num(&v, "functions_dropped"), 1);
    assert_eq!(num(&v, "functions_skipped"), 11);
    assert_eq!(len(&v, "results"), 1);
    assert_eq!(text(&v, "results.0.status"), "success");
    assert!(at(&v, "results.0.error").is_null());
    assert!(v.get("error").is_none(), "{}", v.to_json());

    // In the database: exactly those three changes.
    assert_eq!(
        one(&db, "SELECT string_agg(filename, ',' ORDER BY filename) FROM _stonescriptdb_gateway_migrations"),
        "migrations/001_settings.sql,migrations/002_more.sql,migrations/010_index.sql,migrations/011_flag.sql"
    );
    assert_eq!(
        one(
            &db,
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'app_settings' AND column_name = 'flag'"
        ),
        "1"
    );
    assert_eq!(one(&db, "SELECT to_regprocedure('to_be_removed()') IS NULL"), "t");
    assert_eq!(one(&db, "SELECT add_numbers(1, 2, 3)"), "106");
    assert_eq!(one(&db, "SELECT add_numbers(1, 2)"), "3");
    let new_changes = one(
        &db,
        &format!(
            "SELECT string_agg(kind || ':' || action, ',' ORDER BY kind, action) FROM \
             (SELECT * FROM _stonescriptdb_gateway_changelog ORDER BY 1 OFFSET {changelog}) c"
        ),
    );
    assert_eq!(new_changes.split(',').count(), 3, "{new_changes}");
    assert!(new_changes.contains("migration:apply"), "{new_changes}");
    // /call sees the new body (its cached statements were dropped).
    let c = expect(&w.call(None, "add_numbers", "[1, 2, 3]"), 200);
    assert!(c.to_json().contains("106"), "{}", c.to_json());
    let c = w.call(None, "to_be_removed", "[]");
    assert_eq!(c.status, 404, "{}", c.text());

    // The same archive again: nothing left to do.
    let v = expect(&w.migrate(&[], &tgz(&changed_fixture())), 200);
    assert_eq!(num(&v, "migrations_applied"), 0);
    assert_eq!(num(&v, "functions_updated"), 0);
    assert_eq!(num(&v, "functions_dropped"), 0);
}

#[test]
fn edited_applied_migration_is_refused_naming_the_file() {
    let w = World::new("edit", &[]);
    let mut files = platform_files();
    expect(&w.register(&[], &tgz(&files)), 200);
    let db = w.main_db();
    let before = state(&db);
    files.insert(
        "migrations/002_more.sql".into(),
        "UPDATE app_settings SET value = '3' WHERE key = 'version';\n".into(),
    );
    files.insert("migrations/020_new.sql".into(), "CREATE TABLE never (id int);\n".into());
    let archive = tgz(&files);

    let v = expect(&w.migrate(&[], &archive), 409);
    assert_eq!(text(&v, "status"), "failed");
    assert_eq!(text(&v, "error"), "migration_checksum_mismatch");
    assert_eq!(text(&v, "results.0.status"), "failed");
    assert_eq!(text(&v, "results.0.error.error"), "migration_checksum_mismatch");
    assert_eq!(text(&v, "results.0.error.file"), "migrations/002_more.sql");
    assert!(text(&v, "results.0.error.message").contains("migrations/002_more.sql"));

    let r = w.register(&[], &archive);
    let v = expect(&r, 409);
    assert_eq!(r.error_code(), "migration_checksum_mismatch");
    assert_eq!(text(&v, "file"), "migrations/002_more.sql");
    assert!(text(&v, "message").contains("migrations/002_more.sql"));
    assert_eq!(text(&v, "database"), db);
    assert_eq!(state(&db), before);
}

#[test]
fn migration_failing_halfway_changes_nothing() {
    let w = World::new("half", &[]);
    let mut files = platform_files();
    expect(&w.register(&[], &tgz(&files)), 200);
    let db = w.main_db();
    let before = state(&db);
    files.insert(
        "migrations/030_bad.sql".into(),
        "CREATE TABLE half (id int);\n\nINSERT INTO half VALUES (1);\nSELECT 1/0;\n".into(),
    );
    files
        .insert("functions/extra.sql".into(), "CREATE FUNCTION extra() RETURNS int LANGUAGE sql AS 'SELECT 1';".into());
    let archive = tgz(&files);

    let r = w.register(&[], &archive);
    // The platform's SQL is what is wrong: 422, not a 500 that pages someone.
    let v = expect(&r, 422);
    assert_eq!(r.error_code(), "migration_failed");
    assert_eq!(text(&v, "step"), "migrations");
    assert_eq!(text(&v, "file"), "migrations/030_bad.sql");
    assert_eq!(num(&v, "line"), 4);
    assert_eq!(text(&v, "sqlstate"), "22012");
    assert_eq!(text(&v, "database"), db);
    assert_eq!(state(&db), before);

    let v = expect(&w.migrate(&[], &archive), 422);
    assert_eq!(text(&v, "error"), "migration_failed");
    assert_eq!(text(&v, "results.0.error.step"), "migrations");
    assert_eq!(text(&v, "results.0.error.file"), "migrations/030_bad.sql");
    assert_eq!(num(&v, "results.0.error.line"), 4);
    assert_eq!(text(&v, "results.0.error.sqlstate"), "22012");
    assert_eq!(state(&db), before);
    assert_eq!(one(&db, "SELECT to_regclass('half') IS NULL"), "t");
    assert_eq!(one(&db, "SELECT to_regprocedure('extra()') IS NULL"), "t");
}

#[test]
fn concurrent_migrates_apply_each_migration_once() {
    let w = World::new("conc", &[]);
    let mut files = platform_files();
    expect(&w.register(&[], &tgz(&files)), 200);
    let db = w.main_db();
    // The first new migration holds its transaction open for a while so the two runs overlap; were
    // it applied twice, its CREATE TABLE would fail the second time and the insert would double.
    files.insert(
        "migrations/050_hits.sql".into(),
        "CREATE TABLE hits (n int);\nINSERT INTO hits VALUES (1);\nSELECT pg_sleep(0.5);\n".into(),
    );
    files.insert("migrations/051_more_hits.sql".into(), "INSERT INTO hits VALUES (2);\n".into());
    let archive = tgz(&files);
    let addr = w.addr();
    let platform = w.platform.clone();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let archive = archive.clone();
            let platform = platform.clone();
            std::thread::spawn(move || post_form(addr, "/migrate", &[("platform", &platform)], Some(&archive)))
        })
        .collect();
    let mut applied = Vec::new();
    for t in threads {
        let r = t.join().unwrap();
        let v = expect(&r, 200);
        applied.push(num(&v, "migrations_applied"));
    }
    applied.sort();
    assert_eq!(applied, [0, 2], "one run applied both, the other found them applied");
    assert_eq!(
        one(
            &db,
            "SELECT count(*) FROM _stonescriptdb_gateway_migrations WHERE filename IN \
             ('migrations/050_hits.sql', 'migrations/051_more_hits.sql')"
        ),
        "2"
    );
    assert_eq!(one(&db, "SELECT string_agg(n::text, ',' ORDER BY n) FROM hits"), "1,2");
}

#[test]
fn fleet_of_twenty_with_one_broken_tenant() {
    let w = World::new("fleet", &[("DEPLOY_PARALLELISM", "4")]);
    let files = platform_files();
    let archive = tgz(&files);
    let tenants: Vec<String> = (0..20).map(|i| format!("t{i:02}")).collect();
    for t in &tenants {
        let r = w.admin(
            "POST",
            "/admin/create-tenant",
            &format!("{{\"platform\":\"{}\",\"tenant_id\":\"{t}\"}}", w.platform),
        );
        expect(&r, 201);
        let v = expect(&w.register(&[("tenant_id", t)], &archive), 200);
        assert_eq!(at(&v, "created").as_bool(), Some(false), "create-tenant made it");
    }
    let broken = format!("{}_t07", w.platform);
    q(&broken, "CREATE TABLE fleet_extra (id int)");
    let mut files2 = files.clone();
    files2.insert("migrations/060_fleet.sql".into(), "CREATE TABLE fleet_extra (id int, note text);\n".into());
    let r = w.migrate(&[], &tgz(&files2));
    let v = expect(&r, 422);
    assert_eq!(text(&v, "status"), "completed_with_errors");
    assert_eq!(text(&v, "error"), "migration_failed");
    assert_eq!(num(&v, "failed_count"), 1);
    assert_eq!(len(&v, "results"), 20);
    assert_eq!(len(&v, "databases_updated"), 19);
    assert_eq!(num(&v, "migrations_applied"), 19);
    let results = at(&v, "results").as_array().unwrap();
    let failed: Vec<&Value> =
        results.iter().filter(|r| r.get("status").and_then(Value::as_str) == Some("failed")).collect();
    let ok = results.iter().filter(|r| r.get("status").and_then(Value::as_str) == Some("success")).count();
    assert_eq!((ok, failed.len()), (19, 1), "{}", v.to_json());
    assert_eq!(text(failed[0], "database"), broken);
    assert_eq!(text(failed[0], "error.error"), "migration_failed");
    assert_eq!(text(failed[0], "error.file"), "migrations/060_fleet.sql");
    assert_eq!(text(failed[0], "error.sqlstate"), "42P07");
    for t in &tenants {
        let db = format!("{}_{t}", w.platform);
        let n = one(
            &db,
            "SELECT count(*) FROM _stonescriptdb_gateway_migrations WHERE filename = 'migrations/060_fleet.sql'",
        );
        assert_eq!(n, if db == broken { "0" } else { "1" }, "{db}");
    }
    // Recorded in the catalog.
    let run = text(&v, "run_id").to_string();
    assert_eq!(
        one(
            &w.catalog,
            &format!(
                "SELECT kind || ' ' || platform || ' ' || status || ' ' || total || ' ' || (finished_at IS NOT NULL) FROM runs WHERE id = '{run}'"
            )
        ),
        format!("migrate {} completed_with_errors 20 true", w.platform)
    );
    assert_eq!(
        one(
            &w.catalog,
            &format!(
                "SELECT string_agg(status || ':' || n, ',' ORDER BY status) FROM \
                      (SELECT status, count(*) n FROM run_results WHERE run_id = '{run}' GROUP BY status) s"
            )
        ),
        "failed:1,success:19"
    );
    assert_eq!(
        one(
            &w.catalog,
            &format!(
                "SELECT result->'error'->>'error' FROM run_results WHERE run_id = '{run}' AND database = '{broken}'"
            )
        ),
        "migration_failed"
    );
    assert_eq!(one(&w.catalog, &format!("SELECT last_status FROM databases WHERE name = '{broken}'")), "failed");
}

#[test]
fn enum_value_drift_seeds_and_dry_run_through_migrate() {
    let w = World::new("opts", &[]);
    let mut files = platform_files();
    expect(&w.register(&[], &tgz(&files)), 200);
    let db = w.main_db();

    // An enum gains a value.
    files.insert(
        "types/user_status.sql".into(),
        "CREATE TYPE user_status AS ENUM ('active', 'suspended', 'deleted');\n".into(),
    );
    let v = expect(&w.migrate(&[], &tgz(&files)), 200);
    assert_eq!(text(&v, "status"), "completed");
    assert_eq!(
        one(
            &db,
            "SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = 'user_status'::regtype"
        ),
        "active,suspended,deleted"
    );

    // Drift: a column that exists in the database vanished from the table file.
    let mut drifted = files.clone();
    drifted.insert(
        "tables/users.sql".into(),
        files["tables/users.sql"]
            .replace("    display_name varchar(100),\n", "")
            .replace("CREATE INDEX users_name_trgm ON users USING gin (display_name gin_trgm_ops);\n", ""),
    );
    let before = state(&db);
    let v = expect(&w.migrate(&[], &tgz(&drifted)), 409);
    assert_eq!(text(&v, "error"), "schema_drift");
    assert_eq!(text(&v, "results.0.error.error"), "schema_drift");
    assert!(text(&v, "results.0.error.message").contains("display_name"));
    assert_eq!(state(&db), before);
    let r = w.register(&[], &tgz(&drifted));
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.error_code(), "schema_drift");
    let v = expect(&w.migrate(&[("force", "true")], &tgz(&drifted)), 200);
    assert_eq!(text(&v, "status"), "completed");
    assert_eq!(len(&v, "schema_validation_databases"), 1, "{}", v.to_json());
    assert!(len(&v, "schema_validation_databases.0.dataloss") >= 1);
    assert!(len(&v, "schema_validation.dataloss_changes") >= 1, "{}", v.to_json());
    // Forcing accepts the drift; it drops nothing.
    assert_eq!(
        one(
            &db,
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'display_name'"
        ),
        "1"
    );

    // Missing seed rows.
    q(&db, "DELETE FROM products WHERE id = 2");
    let v = expect(&w.migrate(&[], &tgz(&files)), 409);
    assert_eq!(text(&v, "error"), "seed_data_missing");
    assert!(text(&v, "results.0.error.message").contains("products"));
    assert_eq!(one(&db, "SELECT count(*) FROM products"), "2");
    let v = expect(&w.migrate(&[("reseed", "true")], &tgz(&files)), 200);
    assert_eq!(num(&v, "seeder_validations.0.reseeded"), 1, "{}", v.to_json());
    assert_eq!(one(&db, "SELECT name FROM products WHERE id = 2"), "Gadget");
    let v = expect(&w.migrate(&[], &tgz(&files)), 200);
    assert_eq!(len(&v, "seeder_validations.0.missing"), 0);

    // dry_run: the report says what would change, the database keeps what it had.
    let before = state(&db);
    let v = expect(&w.migrate(&[("dry_run", "true")], &tgz(&changed(files.clone()))), 200);
    assert_eq!(text(&v, "status"), "dry_run", "a dry run says it changed nothing: {}", v.to_json());
    assert_eq!(at(&v, "dry_run").as_bool(), Some(true));
    assert_eq!(num(&v, "migrations_applied"), 1);
    assert_eq!(num(&v, "functions_updated"), 1);
    assert_eq!(num(&v, "functions_dropped"), 1);
    let v = expect(&w.register(&[("dry_run", "true")], &tgz(&changed(files.clone()))), 200);
    assert_eq!(text(&v, "status"), "dry_run");
    assert_eq!(at(&v, "dry_run").as_bool(), Some(true));
    assert_eq!(len(&v, "migrations_applied_names"), 1);
    assert_eq!(num(&v, "migrations_applied"), 1);
    assert_eq!(state(&db), before);
    assert_eq!(one(&db, "SELECT to_regprocedure('to_be_removed()') IS NOT NULL"), "t");

    // dry_run of a new database: reported, then the database is gone again.
    let v = expect(&w.register(&[("dry_run", "true"), ("tenant_id", "dry")], &tgz(&files)), 200);
    assert_eq!(text(&v, "status"), "dry_run");
    assert_eq!(num(&v, "functions_deployed"), 13);
    assert!(!db_exists(&format!("{}_dry", w.platform)));
}

#[test]
fn hostile_archives_are_refused_before_any_database_exists() {
    let w = World::new(
        "hostile",
        &[
            ("ARCHIVE_MAX_EXPANDED_BYTES", "1000000"),
            ("ARCHIVE_MAX_FILE_BYTES", "100000"),
            ("ARCHIVE_MAX_ENTRIES", "40"),
        ],
    );
    let good = tgz(&platform_files());
    let mut bomb = BTreeMap::new();
    bomb.insert("functions/zeros.sql".to_string(), "\0".repeat(20_000_000));
    let bomb = tgz(&bomb);
    assert!(bomb.len() < 100_000, "a bomb is small: {}", bomb.len());
    let mut big = platform_files();
    big.insert("functions/big.sql".to_string(), format!("-- {}\n", "x".repeat(200_000)));
    // Each limit set here must be the one that refuses (the defaults would let these through): more
    // entries than ARCHIVE_MAX_ENTRIES, and files each under ARCHIVE_MAX_FILE_BYTES that together
    // expand past ARCHIVE_MAX_EXPANDED_BYTES.
    let mut many = platform_files();
    for i in 0..30 {
        many.insert(
            format!("functions/f{i}.sql"),
            format!("CREATE FUNCTION f{i}() RETURNS int LANGUAGE sql AS 'SELECT {i}';"),
        );
    }
    let mut wide = BTreeMap::new();
    for i in 0..15 {
        wide.insert(format!("functions/w{i}.sql"), format!("-- {}\n", "y".repeat(90_000)));
    }
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("notgzip", b"this is plain text, not a gzip stream".to_vec(), 400),
        ("truncated", good[..good.len() / 2].to_vec(), 400),
        ("bomb", bomb, 413),
        (
            "symlink",
            common::archive::gzip(&tar_with_raw_name(
                "postgresql/functions/evil.sql",
                b"",
                tar::EntryType::Symlink,
                Some("/etc/passwd"),
            )),
            400,
        ),
        (
            "dotdot",
            common::archive::gzip(&tar_with_raw_name(
                "postgresql/../../etc/cron.d/x.sql",
                b"SELECT 1;",
                tar::EntryType::Regular,
                None,
            )),
            400,
        ),
        (
            "absolute",
            common::archive::gzip(&tar_with_raw_name(
                "/postgresql/functions/x.sql",
                b"SELECT 1;",
                tar::EntryType::Regular,
                None,
            )),
            400,
        ),
        ("bigfile", tgz(&big), 413),
        ("many", tgz(&many), 413),
        ("wide", tgz(&wide), 413),
    ];
    for (tenant, archive, status) in cases {
        for route in ["/register", "/migrate"] {
            let r = post_form(w.addr(), route, &[("platform", &w.platform), ("tenant_id", tenant)], Some(&archive));
            assert_eq!(r.status, status, "{tenant} {route}: {}", r.text());
            assert_eq!(r.error_code(), "schema_extraction_failed", "{tenant}: {}", r.text());
        }
    }
    assert_eq!(databases_with_prefix(&format!("{}_", w.platform)), Vec::<String>::new());
    // The same gateway takes a good archive.
    let v = expect(&w.register(&[], &good), 200);
    assert_eq!(at(&v, "created").as_bool(), Some(true));
}

#[test]
fn platform_and_tenant_mapping_to_one_name_conflict() {
    let w = World::new("nc", &[]);
    let archive = tgz(&platform_files());
    let v = expect(&w.register(&[("tenant_id", "b_main")], &archive), 200);
    let name = format!("{}_b_main", w.platform);
    assert_eq!(text(&v, "database"), name);
    let other = format!("{}_b", w.platform);
    let r = post_form(w.addr(), "/register", &[("platform", &other)], Some(&archive));
    let v = expect(&r, 409);
    assert_eq!(r.error_code(), "name_conflict");
    assert_eq!(text(&v, "database"), name);
    let r = post_form(w.addr(), "/migrate", &[("platform", &other)], Some(&archive));
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.error_code(), "name_conflict");
    // The first owner's database is untouched and still recorded as theirs.
    assert_eq!(
        one(
            &w.catalog,
            &format!("SELECT platform || ' ' || kind || ' ' || tenant_id FROM databases WHERE name = '{name}'")
        ),
        format!("{} tenant b_main", w.platform)
    );
}

#[test]
fn failed_first_deploy_drops_the_new_database() {
    let w = World::new("first", &[]);
    let mut files = platform_files();
    files.insert(
        "functions/broken.sql".into(),
        "CREATE FUNCTION broken() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN nope; END $$;\n\
         CREATE FUNCTION broken2( RETURNS int;\n"
            .into(),
    );
    let r = w.register(&[], &tgz(&files));
    assert!(r.status >= 400, "{}", r.text());
    assert!(!db_exists(&w.main_db()), "the new database was dropped again");
    assert_eq!(one(&w.catalog, &format!("SELECT count(*) FROM databases WHERE name = '{}'", w.main_db())), "0");
    // A retry starts clean.
    let v = expect(&w.register(&[], &tgz(&platform_files())), 200);
    assert_eq!(at(&v, "created").as_bool(), Some(true));
    assert_eq!(len(&v, "migrations_applied_names"), 3);
    assert_eq!(num(&v, "migrations_applied"), 3);
}

#[test]
fn admin_lists_databases_and_creates_tenants() {
    let w = World::new("admin", &[]);
    let archive = tgz(&platform_files());
    expect(&w.register(&[], &archive), 200);
    let body = format!("{{\"platform\":\"{}\",\"tenant_id\":\"t1\"}}", w.platform);
    let v = expect(&w.admin("POST", "/admin/create-tenant", &body), 201);
    assert_eq!(text(&v, "database"), format!("{}_t1", w.platform));
    assert!(db_exists(&format!("{}_t1", w.platform)));
    let r = w.admin("POST", "/admin/create-tenant", &body);
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.error_code(), "database_already_exists");
    expect(&w.register(&[("tenant_id", "t2")], &archive), 200);

    // Without the token: refused.
    let r = common::request(w.addr(), "GET", &format!("/admin/databases?platform={}", w.platform), &[], b"");
    assert_eq!(r.status, 401, "{}", r.text());
    let r = w.admin("GET", "/admin/create-tenant", "");
    assert_eq!(r.status, 405, "{}", r.text());

    let v = expect(&w.admin("GET", &format!("/admin/databases?platform={}", w.platform), ""), 200);
    assert_eq!(num(&v, "count"), 3, "{}", v.to_json());
    assert_eq!(text(&v, "platform"), w.platform);
    let names: Vec<String> =
        at(&v, "databases").as_array().unwrap().iter().map(|d| text(d, "name").to_string()).collect();
    assert_eq!(names, [w.main_db(), format!("{}_t1", w.platform), format!("{}_t2", w.platform)]);
    assert_eq!(text(&v, "databases.0.type"), "main");
    assert!(at(&v, "databases.0.tenant_id").is_null());
    assert_eq!(text(&v, "databases.1.type"), "tenant");
    assert_eq!(text(&v, "databases.1.tenant_id"), "t1");
    assert_eq!(text(&v, "databases.2.tenant_id"), "t2");
    for i in 0..3 {
        let size = match at(&v, &format!("databases.{i}.size_mb")) {
            Value::Number(n) => n.parse::<f64>().unwrap(),
            other => panic!("size_mb: {}", other.to_json()),
        };
        assert!(size > 1.0, "size_mb {size}");
        assert!(text(&v, &format!("databases.{i}.created_at")).ends_with('Z'));
    }
    // Deployed databases have a last deploy; the tenant that was only created has none.
    assert!(text(&v, "databases.0.last_deploy").ends_with('Z'));
    assert!(at(&v, "databases.1.last_deploy").is_null());
    assert!(text(&v, "databases.2.last_deploy").ends_with('Z'));

    let r = w.admin("GET", "/admin/databases", "");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code(), "invalid_request");
    let r = w.admin("POST", "/admin/create-tenant", "{\"platform\":\"x\"}");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code(), "invalid_request");
}

#[test]
fn malformed_requests_are_refused() {
    let w = World::new("form", &[]);
    let archive = tgz(&platform_files());
    for route in ["/register", "/migrate"] {
        // No platform.
        let r = post_form(w.addr(), route, &[("tenant_id", "x")], Some(&archive));
        assert_eq!(r.status, 400, "{route}: {}", r.text());
        assert_eq!(r.error_code(), "invalid_request");
        // No archive.
        let r = post_form(w.addr(), route, &[("platform", &w.platform)], None);
        assert_eq!(r.status, 400, "{route}: {}", r.text());
        assert_eq!(r.error_code(), "invalid_request");
        assert!(r.text().contains("schema"), "{}", r.text());
        // Bad flag.
        let r = post_form(w.addr(), route, &[("platform", &w.platform), ("force", "maybe")], Some(&archive));
        assert_eq!(r.status, 400, "{route}: {}", r.text());
        assert_eq!(r.error_code(), "invalid_request");
        // Not multipart.
        let r = common::post_json(w.addr(), route, &format!("{{\"platform\":\"{}\"}}", w.platform));
        assert_eq!(r.status, 415, "{route}: {}", r.text());
        assert_eq!(r.error_code(), "unsupported_media_type");
        // Bad platform name.
        let r = post_form(w.addr(), route, &[("platform", "9lives")], Some(&archive));
        assert_eq!(r.status, 400, "{route}: {}", r.text());
        assert_eq!(r.error_code(), "invalid_request");
    }
    // /migrate of a platform that has no database yet.
    let r = w.migrate(&[], &archive);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.error_code(), "database_not_found");
    // The `file` alias, fields after the file part.
    let body = multipart(&[("platform", &w.platform)], Some(("file", &archive)));
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let r = common::request(w.addr(), "POST", "/register", &[("Content-Type", &ct)], &body);
    let v = expect(&r, 200);
    assert_eq!(text(&v, "status"), "ready");
    assert!(databases_with_prefix("9lives").is_empty());
}

/// A platform name given in another spelling (`Todos-App`) is normalised (`todos_app`), and the answers
/// of /register and /migrate say which name the gateway uses.
#[test]
fn a_normalised_platform_name_is_reported() {
    let w = World::new("norm", &[]);
    let given = w.platform.replace('_', "-").to_uppercase();
    let files: BTreeMap<String, String> =
        [("functions/f.sql".to_string(), "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';".to_string())]
            .into();
    let archive = tgz(&files);
    for route in ["/register", "/migrate"] {
        let v = expect(&post_form(w.addr(), route, &[("platform", &given)], Some(&archive)), 200);
        assert_eq!(text(&v, "platform"), w.platform, "{route}: {}", v.to_json());
        assert_eq!(text(&v, "platform_given"), given, "{route}: {}", v.to_json());
    }
    // Given as the gateway writes it, nothing more is said.
    let v = expect(&w.register(&[], &archive), 200);
    assert!(v.get("platform_given").is_none(), "{}", v.to_json());
}

/// A function file PostgreSQL refuses is the platform's mistake: 422 with the file and the line, and
/// nothing of the deploy is kept.
#[test]
fn a_broken_function_file_is_422_with_file_and_line() {
    let w = World::new("badfn", &[]);
    let files: BTreeMap<String, String> = [
        (
            "functions/good.sql".to_string(),
            "CREATE FUNCTION good() RETURNS int LANGUAGE sql AS 'SELECT 1';".to_string(),
        ),
        (
            "functions/bad.sql".to_string(),
            "-- a comment\n\nCREATE FUNCTION bad() RETURNS int LANGUAGE sql AS 'SELEC 1';\n".to_string(),
        ),
    ]
    .into();
    let r = w.register(&[], &tgz(&files));
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.error_code(), "function_deploy_failed");
    assert!(r.text().contains("functions/bad.sql"), "{}", r.text());
    assert!(r.text().contains("line 3"), "{}", r.text());
    assert!(!db_exists(&w.main_db()), "the new database was not kept");
}

/// A platform's SQL that PostgreSQL refuses in any deploy step is the platform's fault: 422 with the
/// step's own code (and step, file, line), never a 500 that pages someone.
#[test]
fn a_platforms_sql_error_in_any_step_is_422_with_the_steps_code() {
    let w = World::new("steps", &[]);
    let files = platform_files();
    expect(&w.register(&[], &tgz(&files)), 200);
    let db = w.main_db();
    let before = state(&db);
    let cases = [
        (
            "tables/broken.sql",
            "CREATE TABLE broken (id integer,\n  note no_such_type);\n",
            "table_deploy_failed",
            "tables",
        ),
        ("types/broken.sql", "CREATE TYPE broken AS (a no_such_type);\n", "type_deploy_failed", "types"),
        ("migrations/090_broken.sql", "SELECT 1;\nSELECT 1/0;\n", "migration_failed", "migrations"),
        ("seeders/broken.sql", "INSERT INTO no_such_table (id) VALUES (1);\n", "seeder_failed", "seeders"),
    ];
    for (file, sql, code, step) in cases {
        let mut f = files.clone();
        f.insert(file.into(), sql.into());
        let v = expect(&w.migrate(&[], &tgz(&f)), 422);
        assert_eq!(text(&v, "error"), code, "{file}: {}", v.to_json());
        assert_eq!(text(&v, "results.0.error.error"), code, "{file}");
        assert_eq!(text(&v, "results.0.error.step"), step, "{file}");
        assert_eq!(text(&v, "results.0.error.file"), file, "{file}");
        assert!(num(&v, "results.0.error.line") >= 1, "{file}");
        assert_eq!(state(&db), before, "{file} left something behind");
    }
}

/// Runs tell what happened: all databases failed → `failed` (as the answer said), a dry run is
/// recorded as one and leaves each database's last deploy alone, a failed `/register` records which
/// database failed where, and `GET /runs/{id}` has the times and each failed database's step, file,
/// line and message.
#[test]
fn runs_record_what_happened() {
    let w = World::new("runs", &[]);
    let mut files = platform_files();
    let v = expect(&w.register(&[], &tgz(&files)), 200);
    let db = w.main_db();
    let last_run = |w: &World| one(&w.catalog, &format!("SELECT last_run_id FROM databases WHERE name = '{db}'"));
    let registered = last_run(&w);
    assert!(registered.starts_with("run-"), "{registered} ({})", v.to_json());
    let admin = format!("Bearer {TOKEN}");
    let get_run = |run: &str| {
        let r = common::request(w.addr(), "GET", &format!("/runs/{run}"), &[("Authorization", &admin)], b"");
        expect(&r, 200)
    };

    // One database, and it failed: the run is `failed`, as the answer says.
    let mut bad = files.clone();
    bad.insert("migrations/090_bad.sql".into(), "SELECT 1;\n\nSELECT 1/0;\n".into());
    let v = expect(&w.migrate(&[], &tgz(&bad)), 422);
    assert_eq!(text(&v, "status"), "failed");
    let run = text(&v, "run_id").to_string();
    let r = get_run(&run);
    assert_eq!(text(&r, "status"), "failed");
    assert!(text(&r, "started_at").ends_with('Z') && text(&r, "finished_at").ends_with('Z'), "{}", r.to_json());
    assert_eq!((num(&r, "done"), num(&r, "failed")), (1, 1));
    assert_eq!(text(&r, "results.0.database"), db);
    assert_eq!(text(&r, "results.0.error.step"), "migrations");
    assert_eq!(text(&r, "results.0.error.file"), "migrations/090_bad.sql");
    assert_eq!(num(&r, "results.0.error.line"), 3);
    assert!(text(&r, "results.0.error.message").contains("division by zero"), "{}", r.to_json());

    // A dry run: recorded as a dry run, and the database's last deploy is still the failed run's.
    files.insert("migrations/091_fine.sql".into(), "CREATE TABLE fine (id int);\n".into());
    let v = expect(&w.migrate(&[("dry_run", "true")], &tgz(&files)), 200);
    assert_eq!(text(&v, "status"), "dry_run");
    let dry = text(&v, "run_id").to_string();
    let r = get_run(&dry);
    assert_eq!(text(&r, "status"), "dry_run");
    assert_eq!(at(&r, "dry_run").as_bool(), Some(true));
    assert_eq!(at(&r, "results.0.dry_run").as_bool(), Some(true), "{}", r.to_json());
    assert_eq!(one(&w.catalog, &format!("SELECT status FROM run_results WHERE run_id = '{dry}'")), "dry_run");
    assert_eq!(last_run(&w), run, "a dry run is not the database's last deploy");
    let v = expect(&w.migrate(&[], &tgz(&files)), 200);
    assert_eq!(text(&get_run(text(&v, "run_id")), "status"), "completed");

    // A /register whose first deploy fails: its database is gone again, the run says what failed.
    let other = format!("{}_x", w.platform);
    let r = post_form(w.addr(), "/register", &[("platform", &other)], Some(&tgz(&bad)));
    expect(&r, 422);
    let run = one(
        &w.catalog,
        &format!(
            "SELECT id FROM runs WHERE platform = '{other}' AND kind = 'register' ORDER BY started_at DESC LIMIT 1"
        ),
    );
    let r = get_run(&run);
    assert_eq!(text(&r, "status"), "failed");
    assert_eq!((num(&r, "done"), num(&r, "failed")), (1, 1), "{}", r.to_json());
    assert_eq!(text(&r, "results.0.error.file"), "migrations/090_bad.sql");
    drop_db(&format!("{other}_main"));
}

/// A migration adds a column the table file does not declare yet: the drift message says which file
/// to declare it in (and that force keeps it undeclared), not that data would be lost.
#[test]
fn an_undeclared_new_column_names_the_file_to_declare_it_in() {
    let w = World::new("undecl", &[]);
    let mut files = platform_files();
    expect(&w.register(&[], &tgz(&files)), 200);
    files.insert("migrations/095_extra.sql".into(), "ALTER TABLE products ADD COLUMN extra text;\n".into());
    let v = expect(&w.migrate(&[], &tgz(&files)), 409);
    assert_eq!(text(&v, "error"), "schema_drift");
    let message = text(&v, "results.0.error.message");
    assert!(message.contains("products.extra"), "{message}");
    assert!(message.contains("tables/products.sql does not declare it"), "{message}");
    assert!(message.contains("force=true"), "{message}");
    assert!(!message.contains("no longer declared"), "{message}");
}
