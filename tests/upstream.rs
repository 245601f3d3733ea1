//! Moving from stonescriptdb-gateway 1.x: databases laid out the way 1.x leaves them (its tracking
//! tables created by SQL in its layout, everything owned by its own login) are refused with a message
//! naming `adopt`; `adopt` takes them over (dry run first, then for real, then again with no change);
//! `/call` serves them and `/migrate` runs exactly the one new migration; `release` gives them back
//! to the old login with a history 1.x reads.

mod common;

use std::process::{Command, Output, Stdio};

use stonescriptdb_gateway::json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_stonescriptdb-gateway");
const SECRET: &str = "upstream-test-secret-0123456789abcdef";

/// The first migration as 1.x applied it; its checksum is SHA-256 of exactly this text.
const M001: &str =
    "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);\nINSERT INTO items VALUES (1, 'one'), (2, 'two');\n";

/// What 1.x creates in a database it deploys (its own DDL, reproduced from its layout).
fn old_layout(login: &str, checksum: &str) -> String {
    format!(
        "SET ROLE {login};
CREATE TABLE _stonescriptdb_gateway_migrations (id SERIAL PRIMARY KEY, migration_file TEXT NOT NULL UNIQUE,
    checksum TEXT NOT NULL, applied_at TIMESTAMPTZ DEFAULT NOW());
CREATE TABLE _stonescriptdb_gateway_functions (id SERIAL PRIMARY KEY, function_name TEXT NOT NULL, signature TEXT NOT NULL,
    param_types TEXT[] NOT NULL, return_type TEXT NOT NULL, body_checksum TEXT NOT NULL, source_file TEXT NOT NULL,
    deployed_at TIMESTAMPTZ DEFAULT NOW(), UNIQUE(function_name, param_types));
CREATE TABLE _stonescriptdb_gateway_types (id SERIAL PRIMARY KEY, type_name TEXT NOT NULL UNIQUE, type_kind TEXT NOT NULL,
    checksum TEXT NOT NULL, source_file TEXT, deployed_at TIMESTAMPTZ DEFAULT NOW());
CREATE TABLE _stonescriptdb_gateway_tables (id SERIAL PRIMARY KEY, table_name TEXT NOT NULL UNIQUE, checksum TEXT NOT NULL,
    source_file TEXT NOT NULL, deployed_at TIMESTAMPTZ DEFAULT NOW());
CREATE TABLE _stonescriptdb_gateway_changelog (id SERIAL PRIMARY KEY, change_type TEXT NOT NULL, object_name TEXT NOT NULL,
    change_detail JSONB, forced BOOLEAN DEFAULT FALSE, executed_at TIMESTAMPTZ DEFAULT NOW());
{M001}
INSERT INTO _stonescriptdb_gateway_migrations (migration_file, checksum) VALUES ('001_init.pssql', '{checksum}');
CREATE FUNCTION get_items() RETURNS TABLE (id int, name text) LANGUAGE sql AS $$ SELECT id, name FROM items ORDER BY id $$;
INSERT INTO _stonescriptdb_gateway_functions (function_name, signature, param_types, return_type, body_checksum, source_file)
    VALUES ('get_items', 'get_items()', '{{}}', 'TABLE (id int, name text)', 'x', 'get_items.pssql');
CREATE TYPE item_state AS ENUM ('new', 'done');
INSERT INTO _stonescriptdb_gateway_types (type_name, type_kind, checksum, source_file) VALUES ('item_state', 'enum', 'x', 'item_state.pssql');
INSERT INTO _stonescriptdb_gateway_changelog (change_type, object_name) VALUES ('migration', '001_init.pssql');
CREATE EXTENSION IF NOT EXISTS pgcrypto SCHEMA public;
RESET ROLE;"
    )
}

fn run(args: &[&str]) -> Output {
    let (host, port, _) = common::pg_env();
    let port = port.to_string();
    Command::new(BIN)
        .env_clear()
        .current_dir(std::env::temp_dir())
        .args(args)
        .args(["--host", &host, "--port", &port, "--db-host", &host, "--db-port", &port, "--db-user", "postgres"])
        .args(["--platform-secret", SECRET])
        .stdin(Stdio::null())
        .output()
        .expect("run the binary")
}

fn text(o: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn one(db: &str, sql: &str) -> String {
    common::db::query_col(db, sql).into_iter().next().flatten().unwrap_or_default()
}

fn form(addr: std::net::SocketAddr, path: &str, platform: &str, tenant: Option<&str>, archive: &[u8]) -> common::Resp {
    let mut fields: Vec<(&str, &[u8])> = vec![("platform", platform.as_bytes()), ("schema", archive)];
    if let Some(t) = tenant {
        fields.push(("tenant_id", t.as_bytes()));
    }
    let (ct, body) = common::multipart(&fields);
    common::request(addr, "POST", path, &[("Content-Type", &ct)], &body)
}

struct Cleanup {
    dbs: Vec<String>,
    roles: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut c = common::db::su("postgres");
        for d in &self.dbs {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{d}\" WITH (FORCE)"));
        }
        for r in &self.roles {
            let _ = c.batch_execute(&format!("DROP ROLE IF EXISTS \"{r}\""));
        }
    }
}

fn sha256_hex(s: &str) -> String {
    stonescriptdb_gateway::deploy::sql::checksum(s)
}

#[test]
fn databases_of_the_old_gateway_are_adopted_served_migrated_and_given_back() {
    let uniq = std::process::id();
    let p = format!("up_{uniq}");
    let old = format!("up_old_{uniq}");
    let catalog = format!("cat_up_{uniq}");
    let role = format!("ssdb_{p}");
    let (main, tenant) = (format!("{p}_main"), format!("{p}_t1"));
    let _cleanup =
        Cleanup { dbs: vec![main.clone(), tenant.clone(), catalog.clone()], roles: vec![role.clone(), old.clone()] };

    common::db::exec("postgres", &format!("CREATE ROLE {old} LOGIN CREATEDB"));
    for db in [&main, &tenant] {
        common::db::exec("postgres", &format!("CREATE DATABASE {db} OWNER {old}"));
    }
    for db in [&main, &tenant] {
        common::db::exec(db, &old_layout(&old, &sha256_hex(M001)));
    }

    let g = common::start(&[("CATALOG_DB", &catalog), ("PLATFORM_SECRET", SECRET)]);
    let call = |tenant: Option<&str>| {
        let t = tenant.map(|t| format!(r#","tenant_id":"{t}""#)).unwrap_or_default();
        common::post_json(g.addr, "/call", &format!(r#"{{"platform":"{p}"{t},"function":"get_items"}}"#))
    };

    // Start-up tells: the databases 1.x made are found, the login's rights are in /health.
    let found =
        stonescriptdb_gateway::deploy::upstream::unrecorded_upstream(&common::db::su_params("postgres"), &[], &catalog)
            .expect("scan");
    assert!(found.contains(&main) && found.contains(&tenant), "{found:?}");
    assert!(
        common::db::eventually(std::time::Duration::from_secs(10), || {
            common::request(g.addr, "GET", "/health", &[], b"").text().contains(r#""login_rights":{"createdb":true"#)
        }),
        "{}",
        common::request(g.addr, "GET", "/health", &[], b"").text()
    );

    // Before: the messages lead to adopt, and nothing is touched.
    let r = call(None);
    assert!(r.status == 404 && r.text().contains(&format!("adopt --platform {p}")), "{}", r.text());
    let probe = common::archive::tgz([("migrations/001_init.pssql", M001)]);
    let r = form(g.addr, "/register", &p, None, &probe);
    assert!(r.status == 409 && r.text().contains(&format!("adopt --platform {p}")), "{}", r.text());
    for t in [None, Some("t1")] {
        let r = form(g.addr, "/migrate", &p, t, &probe);
        assert!(
            r.status == 404 && r.text().contains("exists but this gateway's catalog does not record it"),
            "{}",
            r.text()
        );
    }
    assert_eq!(
        one(
            &main,
            "SELECT count(*) FROM information_schema.columns WHERE table_name = '_stonescriptdb_gateway_migrations'"
        ),
        "4"
    );

    // A dry run prints the plan and changes nothing.
    let o = run(&["adopt", "--platform", &p, "--dry-run", "--catalog-db", &catalog]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains(&format!("plan     {main}:")) && out.contains(&format!("plan     {tenant}:")), "{out}");
    assert!(out.contains("keep 1 recorded migration"), "{out}");
    assert_eq!(
        one("postgres", &format!("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{main}'")),
        old
    );
    assert_eq!(one(&catalog, "SELECT count(*) FROM databases"), "0");
    assert_eq!(
        one(
            &main,
            "SELECT count(*) FROM information_schema.columns WHERE table_name = '_stonescriptdb_gateway_migrations'"
        ),
        "4"
    );

    // For real.
    let o = run(&["adopt", "--platform", &p, "--from-login", &old, "--catalog-db", &catalog]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains(&format!("adopted  {main}: main database of platform {p}")), "{out}");
    assert!(out.contains(&format!("adopted  {tenant}: tenant t1 of platform {p}")), "{out}");
    assert!(out.contains("extensions moved: pgcrypto"), "{out}");
    for db in [&main, &tenant] {
        assert_eq!(
            one("postgres", &format!("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{db}'")),
            role
        );
        assert_eq!(one("postgres", &format!("SELECT has_database_privilege('public', '{db}', 'CONNECT')")), "f");
        assert_eq!(one(db, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'items'"), role);
        assert_eq!(
            one(db, "SELECT extnamespace::regnamespace FROM pg_extension WHERE extname = 'pgcrypto'"),
            "extensions"
        );
        assert_eq!(one(db, "SELECT filename FROM _stonescriptdb_gateway_migrations"), "migrations/001_init.pssql");
    }
    assert_eq!(
        common::db::query_col(
            &catalog,
            "SELECT name || ':' || kind || ':' || coalesce(tenant_id, '-') FROM databases ORDER BY name"
        ),
        vec![Some(format!("{main}:main:-")), Some(format!("{tenant}:tenant:t1"))]
    );

    // Again: nothing to do, nothing changed.
    let o = run(&["adopt", "--platform", &p, "--catalog-db", &catalog]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(&format!("skipped  {main}: already recorded"))
            && !out.contains("\nadopted  ")
            && !out.starts_with("adopted"),
        "{out}"
    );

    // Served, once the loops stop believing the catalog's earlier "unknown" (a couple of seconds).
    assert!(
        common::db::eventually(std::time::Duration::from_secs(10), || call(None).status == 200),
        "{}",
        call(None).text()
    );
    for t in [None, Some("t1")] {
        let r = call(t);
        let rows = common::db::rows(&r);
        assert_eq!(rows.len(), 2, "{}", r.text());
    }

    // /migrate of the old archive plus one new migration: only the new one runs (001 would fail:
    // its table exists), and 1.x's name for it is recorded too.
    let archive = common::archive::tgz([
        ("migrations/001_init.pssql", M001),
        ("migrations/002_note.pssql", "ALTER TABLE items ADD COLUMN note text;"),
        (
            "functions/get_items.pssql",
            "CREATE OR REPLACE FUNCTION get_items() RETURNS TABLE (id int, name text) LANGUAGE sql AS $$ SELECT id, name FROM items ORDER BY id $$;",
        ),
    ]);
    // Without tenant_id, /migrate goes to every database of the platform: one new migration each.
    let r = form(g.addr, "/migrate", &p, None, &archive);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j.get("migrations_applied"), Some(&Value::Number("2".into())), "{}", r.text());
    let results = j.get("results").and_then(Value::as_array).expect("results");
    assert_eq!(results.len(), 2, "{}", r.text());
    for x in results {
        assert_eq!(x.get("migrations_applied"), Some(&Value::Number("1".into())), "{}", r.text());
    }
    // Again, for the tenant alone: nothing left to run.
    let r = form(g.addr, "/migrate", &p, Some("t1"), &archive);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(r#""migrations_applied":0"#), "{}", r.text());
    assert_eq!(
        common::db::query_col(&main, "SELECT migration_file FROM _stonescriptdb_gateway_migrations ORDER BY id"),
        vec![Some("001_init.pssql".into()), Some("002_note.pssql".into())]
    );
    assert_eq!(common::db::rows(&call(None)).len(), 2);

    // A migration the old gateway applied meanwhile (a row with only its own key), found by the
    // next deploy of this process (which checks the tracking tables in the round trip of its first
    // reads): recorded as applied, so it is not run again (it would fail: the column exists).
    const M003: &str = "ALTER TABLE items ADD COLUMN done boolean;";
    common::db::exec(
        &tenant,
        &format!(
            "SET ROLE {role}; {M003} INSERT INTO _stonescriptdb_gateway_migrations (migration_file, checksum) \
             VALUES ('003_done.pssql', '{}'); RESET ROLE",
            sha256_hex(M003)
        ),
    );
    let with_003 = common::archive::tgz([
        ("migrations/001_init.pssql", M001),
        ("migrations/002_note.pssql", "ALTER TABLE items ADD COLUMN note text;"),
        ("migrations/003_done.pssql", M003),
        (
            "functions/get_items.pssql",
            "CREATE OR REPLACE FUNCTION get_items() RETURNS TABLE (id int, name text) LANGUAGE sql AS $$ SELECT id, name FROM items ORDER BY id $$;",
        ),
    ]);
    let r = form(g.addr, "/migrate", &p, Some("t1"), &with_003);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(r#""migrations_applied":0"#), "{}", r.text());
    assert_eq!(
        one(&tenant, "SELECT filename FROM _stonescriptdb_gateway_migrations WHERE migration_file = '003_done.pssql'"),
        "migrations/003_done.pssql"
    );

    // The way back (the new gateway stopped first): the old login gets its databases again, with a
    // history 1.x reads.
    drop(g);
    let o = run(&["release", "--platform", &p, "--to-login", &old, "--catalog-db", &catalog]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains(&format!("released {main}:")) && out.contains(&format!("released {tenant}:")), "{out}");
    assert_eq!(one(&catalog, "SELECT count(*) FROM databases"), "0");
    for db in [&main, &tenant] {
        assert_eq!(
            one("postgres", &format!("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{db}'")),
            old
        );
        assert_eq!(one(db, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'items'"), old);
        // What 1.x asks at each deploy, as the old login.
        let got = common::db::query_col(
            db,
            &format!("SET ROLE {old}; SELECT migration_file FROM _stonescriptdb_gateway_migrations ORDER BY id"),
        );
        let mut want = vec!["001_init.pssql", "002_note.pssql"];
        if db == &tenant {
            want.push("003_done.pssql");
        }
        assert_eq!(got.into_iter().flatten().collect::<Vec<_>>(), want, "{db}");
        assert_eq!(one(db, "SELECT count(*) FROM _stonescriptdb_gateway_functions WHERE function_name IS NULL"), "0");
    }
    // A gateway started now (the old one would be running instead) serves none of them again.
    let g2 = common::start(&[("CATALOG_DB", &catalog), ("PLATFORM_SECRET", SECRET)]);
    let r = common::post_json(g2.addr, "/call", &format!(r#"{{"platform":"{p}","function":"get_items"}}"#));
    assert!(r.status == 404 && r.text().contains("adopt --platform"), "{}", r.text());
}

#[test]
fn a_database_two_named_platforms_could_claim_is_skipped_and_usage_errors_exit_2() {
    let uniq = std::process::id();
    let (a, ab) = (format!("upa_{uniq}"), format!("upa_{uniq}_b"));
    let catalog = format!("cat_upa_{uniq}");
    let db = format!("{ab}_main");
    let _cleanup =
        Cleanup { dbs: vec![db.clone(), catalog.clone()], roles: vec![format!("ssdb_{a}"), format!("ssdb_{ab}")] };
    common::db::exec("postgres", &format!("CREATE DATABASE {db}"));
    let g = common::start(&[("CATALOG_DB", &catalog)]);
    let o = run(&["adopt", "--platform", &a, "--platform", &ab, "--catalog-db", &catalog]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("skipped  {db}: platforms {a} and {ab} could both claim it")), "{out}");
    assert_eq!(one(&catalog, "SELECT count(*) FROM databases"), "0");
    assert_eq!(run(&["adopt", "--catalog-db", &catalog]).status.code(), Some(2));
    assert_eq!(run(&["release", "--platform", &a, "--catalog-db", &catalog]).status.code(), Some(2));
    drop(g);
}

/// The JSON type of a value, as a client written for 1.x tests it.
fn kind(v: Option<&Value>) -> &'static str {
    match v {
        None => "missing",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "bool",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    }
}

/// Every field 1.x answered with, and its type there.
fn assert_shape(what: &str, v: &Value, fields: &[(&str, &str)]) {
    for (f, want) in fields {
        assert_eq!(kind(v.get(f)), *want, "{what}: field {f}: {}", v.to_json());
    }
}

#[test]
fn an_unchanged_archive_whose_migration_fills_a_seeded_table_deploys_again_and_old_answers_keep_their_shape() {
    let uniq = std::process::id();
    let p = format!("upshape_{uniq}");
    let catalog = format!("cat_upshape_{uniq}");
    let _cleanup = Cleanup { dbs: vec![format!("{p}_main"), catalog.clone()], roles: vec![format!("ssdb_{p}")] };
    let g = common::start(&[("CATALOG_DB", &catalog)]);
    // As written for 1.x: the seeder and a migration both put rows into `statuses`.
    let archive = common::archive::tgz([
        ("tables/statuses.pssql", "CREATE TABLE statuses (id int PRIMARY KEY, name text NOT NULL);"),
        ("migrations/001_first_status.pssql", "INSERT INTO statuses VALUES (1, 'open');"),
        ("seeders/statuses.pssql", "INSERT INTO statuses VALUES (1, 'open'), (2, 'closed');"),
        (
            "functions/list_statuses.pssql",
            "CREATE FUNCTION list_statuses() RETURNS TABLE (id int, name text) LANGUAGE sql AS $$ SELECT id, name FROM statuses ORDER BY id $$;",
        ),
    ]);
    let r = form(g.addr, "/register", &p, None, &archive);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_shape(
        "/register",
        &v,
        &[
            ("status", "string"),
            ("database", "string"),
            ("extensions_installed", "number"),
            ("types_deployed", "number"),
            ("tables_created", "number"),
            ("functions_deployed", "number"),
            ("seeders", "array"),
            ("execution_time_ms", "number"),
            ("tables_created_names", "array"),
        ],
    );
    assert_eq!(v.get("tables_created"), Some(&Value::Number("1".into())));
    let seeder = &v.get("seeders").and_then(Value::as_array).expect("seeders")[0];
    assert_shape("/register seeders[0]", seeder, &[("table", "string"), ("inserted", "number"), ("skipped", "number")]);
    assert_eq!(
        common::db::query_col(&format!("{p}_main"), "SELECT name FROM statuses ORDER BY id"),
        vec![Some("open".into()), Some("closed".into())],
        "the seed row the migration did not add is there, the one it added is not doubled"
    );

    // The very same archive again, through /migrate: no missing seed rows, no refusal.
    let r = form(g.addr, "/migrate", &p, None, &archive);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_shape(
        "/migrate",
        &v,
        &[
            ("status", "string"),
            ("platform", "string"),
            ("databases_updated", "array"),
            ("migrations_applied", "number"),
            ("tables_created", "number"),
            ("functions_updated", "number"),
            ("seeder_validations", "array"),
            ("schema_validation", "object"),
            ("verification", "object"),
            ("execution_time_ms", "number"),
        ],
    );
    let sv = v.get("schema_validation").expect("schema_validation");
    assert_shape(
        "/migrate schema_validation",
        sv,
        &[("safe_changes", "array"), ("dataloss_changes", "array"), ("incompatible_changes", "array")],
    );
    let ver = v.get("verification").expect("verification");
    assert_shape(
        "/migrate verification",
        ver,
        &[
            ("passed", "bool"),
            ("extensions_verified", "bool"),
            ("types_verified", "bool"),
            ("tables_verified", "bool"),
            ("seeders_verified", "bool"),
            ("error_log", "null"),
        ],
    );
    assert_eq!(ver.get("passed"), Some(&Value::Bool(true)), "{}", v.to_json());

    let r =
        common::post_json(g.addr, "/call", &format!(r#"{{"platform":"{p}","function":"list_statuses","params":[]}}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_shape("/call", &r.json(), &[("rows", "array"), ("row_count", "number"), ("execution_time_ms", "number")]);

    let r = common::request(g.addr, "GET", "/health", &[], b"");
    assert_shape(
        "/health",
        &r.json(),
        &[
            ("status", "string"),
            ("version", "string"),
            ("postgres_connected", "bool"),
            ("active_pools", "number"),
            ("total_connections", "number"),
            ("uptime_seconds", "number"),
        ],
    );
}

#[test]
fn start_up_names_the_old_data_dir_and_other_keys_the_gateway_does_not_read() {
    let dir = std::env::temp_dir().join(format!("ssdb-upstream-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".env"), "DATA_DIR=/opt/stonescriptdb-gateway/data\nGATEWAY_PORT=9\nSOMETHING_ELSE=1\n")
        .unwrap();
    // An address this host does not have: the gateway stops right after reading its settings.
    let o = Command::new(BIN)
        .env_clear()
        .env("GATEWAY_HOST", "192.0.2.1")
        .env("GATEWAY_THREDS", "2")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("run the gateway");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let warned = |key: &str| err.lines().any(|l| l.contains("does not read") && l.contains(&format!("key={key} ")));
    assert!(warned("DATA_DIR") && err.contains("no longer used"), "{err}");
    assert!(warned("SOMETHING_ELSE") && warned("GATEWAY_THREDS"), "{err}");
    assert!(!warned("GATEWAY_PORT") && !warned("GATEWAY_HOST"), "{err}");
}
