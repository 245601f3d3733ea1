//! Repeated deploys of one database in one process: what the gateway remembers between them (the
//! platform role's password, the tracking tables' layout, what the table files declare) never
//! stands in for a check whose answer may have changed.

mod common;

use common::db::{DropDatabases, exec, one, query_col, uniq};
use common::start;
use stonescriptdb_gateway::json::Value;

const TOKEN: &str = "deploy-repeat-admin-token-0123456789";

fn deploy(addr: std::net::SocketAddr, path: &str, platform: &str, files: &[(&str, &str)]) -> common::Resp {
    common::deploy_files(addr, path, platform, files, TOKEN)
}

const SCHEMA: [(&str, &str); 3] = [
    ("tables/items.sql", "CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL);"),
    ("functions/f.sql", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';"),
    ("seeders/items.sql", "INSERT INTO items (id, name) VALUES (1, 'one'), (2, 'two');"),
];

fn number(r: &common::Resp, k: &str) -> String {
    match r.json().get(k) {
        Some(Value::Number(n)) => n.clone(),
        other => format!("{other:?}"),
    }
}

/// The password is set once per process; every later deploy still checks the role and is refused,
/// changing nothing, when the role gained a right a platform must not have; a role that lost
/// `INHERIT` is repaired.
#[test]
fn a_redeploy_sets_the_password_once_and_still_checks_the_role() {
    let p = uniq("drp");
    let cat = uniq("cat_drp");
    let db = format!("{p}_main");
    let role = format!("ssdb_{p}");
    let _clean = DropDatabases(vec![cat.clone(), db.clone()]);
    let g = start(&[("CATALOG_DB", cat.as_str()), ("ADMIN_TOKEN", TOKEN)]);
    let password = || one("postgres", &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"));
    assert_eq!(deploy(g.addr, "/register", &p, &SCHEMA).status, 200);
    let first = password();
    assert!(first.starts_with("SCRAM-SHA-256$"), "{first}");
    let r = deploy(g.addr, "/register", &p, &SCHEMA);
    assert_eq!(r.status, 200, "{}", r.text());
    // A verifier has a random salt: setting the same password again would change it.
    assert_eq!(password(), first, "an unchanged redeploy set the role's password again");

    exec("postgres", &format!("ALTER ROLE {role} CREATEDB"));
    let r = deploy(g.addr, "/register", &p, &SCHEMA);
    assert_eq!((r.status, r.error_code().as_str()), (403, "role_not_allowed"), "{}", r.text());
    assert_eq!(one("postgres", &format!("SELECT rolcreatedb::text FROM pg_roles WHERE rolname = '{role}'")), "true");
    assert_eq!(password(), first, "a refused deploy changed the role");

    exec("postgres", &format!("ALTER ROLE {role} NOCREATEDB NOINHERIT"));
    let r = deploy(g.addr, "/register", &p, &SCHEMA);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(one("postgres", &format!("SELECT rolinherit::text FROM pg_roles WHERE rolname = '{role}'")), "true");
}

/// A tracking table dropped by hand between two deploys is made again by the next one, although the
/// process found the layout complete before (and sends the tracking fill in the read-ahead pipeline).
#[test]
fn a_tracking_table_dropped_between_deploys_is_made_again() {
    let p = uniq("drt");
    let cat = uniq("cat_drt");
    let db = format!("{p}_main");
    let _clean = DropDatabases(vec![cat.clone(), db.clone()]);
    let g = start(&[("CATALOG_DB", cat.as_str()), ("ADMIN_TOKEN", TOKEN)]);
    for _ in 0..3 {
        assert_eq!(deploy(g.addr, "/register", &p, &SCHEMA).status, 200);
    }
    exec(&db, "DROP TABLE public._stonescriptdb_gateway_changelog");
    let changed =
        [SCHEMA[0], ("functions/f.sql", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 2';"), SCHEMA[2]];
    let r = deploy(g.addr, "/register", &p, &changed);
    assert_eq!(r.status, 200, "{}", r.text());
    let logged =
        query_col(&db, "SELECT kind || ' ' || object || ' ' || action FROM public._stonescriptdb_gateway_changelog");
    assert!(!logged.is_empty(), "nothing logged: {}", r.text());

    // A column the tracking check names, dropped by hand: the check fails, and the deploy brings the
    // layout back instead of failing.
    for _ in 0..2 {
        assert_eq!(deploy(g.addr, "/register", &p, &changed).status, 200);
    }
    exec(&db, "ALTER TABLE public._stonescriptdb_gateway_migrations DROP COLUMN migration_file");
    let r = deploy(g.addr, "/register", &p, &changed);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        one(
            &db,
            "SELECT count(*)::text FROM information_schema.columns \
             WHERE table_name = '_stonescriptdb_gateway_migrations' AND column_name = 'migration_file'"
        ),
        "1"
    );
}

/// An unchanged redeploy still counts the seed rows, creates a table dropped by hand, and compares
/// the live tables (changed by a migration) with what the files declare.
#[test]
fn declared_tables_follow_migrations_and_dropped_tables() {
    let p = uniq("drd");
    let cat = uniq("cat_drd");
    let db = format!("{p}_main");
    let _clean = DropDatabases(vec![cat.clone(), db.clone()]);
    let g = start(&[("CATALOG_DB", cat.as_str()), ("ADMIN_TOKEN", TOKEN)]);
    assert_eq!(deploy(g.addr, "/register", &p, &SCHEMA).status, 200);
    let r = deploy(g.addr, "/register", &p, &SCHEMA);
    assert_eq!((r.status, number(&r, "functions_skipped")), (200, "1".to_string()), "{}", r.text());
    let seeded = r.json().get("seeders").map(|s| s.to_json()).unwrap_or_default();
    assert!(seeded.contains("\"skipped\":2"), "{seeded}");

    exec(&db, "DROP TABLE items");
    let r = deploy(g.addr, "/register", &p, &SCHEMA);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"tables_created_names\":[\"items\"]"), "{}", r.text());
    assert_eq!(one(&db, "SELECT count(*) FROM items"), "2");

    // A migration narrows a column the table file declares wider: the next deploy sees the drift.
    let migrated = [
        SCHEMA[0],
        SCHEMA[1],
        SCHEMA[2],
        ("migrations/001_narrow.sql", "ALTER TABLE items ALTER COLUMN id TYPE smallint;"),
    ];
    assert_eq!(deploy(g.addr, "/migrate", &p, &migrated).status, 200);
    let r = deploy(g.addr, "/migrate", &p, &migrated);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("smallint"), "the drift after the migration is not seen: {}", r.text());
}

/// A statistics counter of `db` (`sql` reads one number) once every deploy session has ended: a
/// backend's counts are flushed as it exits, before it leaves `pg_stat_activity`, so once no other
/// session is on the database a fresh one reads them all.
fn count_after_sessions(db: &str, sql: &str) -> i64 {
    let alone = "SELECT count(*)::text FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid()";
    assert!(common::db::eventually(std::time::Duration::from_secs(10), || one(db, alone) == "0"));
    one(db, &format!("SELECT ({sql})::text")).parse::<i64>().expect("a count")
}

/// The reads a changed deploy made only because it was about to write (the `pg_proc` snapshot
/// taken before a `CREATE FUNCTION`) are not fetched ahead by the next deploy, which changes
/// nothing: PostgreSQL counts no scan of `pg_proc` in it, while the changed deploy made some.
#[test]
fn an_unchanged_deploy_after_a_changed_one_does_not_read_the_catalog_snapshot() {
    let p = uniq("drs");
    let cat = uniq("cat_drs");
    let db = format!("{p}_main");
    let _clean = DropDatabases(vec![cat.clone(), db.clone()]);
    let g = start(&[("CATALOG_DB", cat.as_str()), ("ADMIN_TOKEN", TOKEN)]);
    let scans = || {
        count_after_sessions(
            &db,
            "SELECT seq_scan FROM pg_stat_sys_tables WHERE relid = 'pg_catalog.pg_proc'::regclass",
        )
    };
    for _ in 0..2 {
        assert_eq!(deploy(g.addr, "/register", &p, &SCHEMA).status, 200);
    }
    let changed =
        [SCHEMA[0], ("functions/f.sql", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 2';"), SCHEMA[2]];
    let before = scans();
    let r = deploy(g.addr, "/register", &p, &changed);
    assert_eq!(r.status, 200, "{}", r.text());
    let after_changed = scans();
    assert!(after_changed > before, "the changed deploy took its snapshots: {before} -> {after_changed}");
    let r = deploy(g.addr, "/register", &p, &changed);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(number(&r, "functions_changed"), "0", "{}", r.text());
    assert_eq!(scans(), after_changed, "the unchanged deploy scanned pg_proc");
}

/// `/migrate` checks that the seed rows are present by their primary key, which the table's index
/// answers: a table with many rows is never read whole, neither the first time (against the
/// stand-in) nor later (against the rows remembered from it).
#[test]
fn the_seed_check_finds_rows_by_primary_key_without_reading_the_table() {
    let p = uniq("drk");
    let cat = uniq("cat_drk");
    let db = format!("{p}_main");
    let _clean = DropDatabases(vec![cat.clone(), db.clone()]);
    let g = start(&[("CATALOG_DB", cat.as_str()), ("ADMIN_TOKEN", TOKEN)]);
    assert_eq!(deploy(g.addr, "/register", &p, &SCHEMA).status, 200);
    exec(&db, "INSERT INTO items SELECT g, 'row ' || g FROM generate_series(3, 50000) g; ANALYZE items");
    let read = || {
        count_after_sessions(&db, "SELECT seq_tup_read FROM pg_stat_user_tables WHERE relid = 'public.items'::regclass")
    };
    for run in ["first", "second"] {
        let before = read();
        let r = deploy(g.addr, "/migrate", &p, &SCHEMA);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains(r#""seeders_verified":true"#), "{run}: {}", r.text());
        let rows_read = read() - before;
        assert!(rows_read < 1000, "{run} /migrate read {rows_read} rows of items sequentially");
    }
    // A seed row deleted by hand is still found missing, by key.
    exec(&db, "DELETE FROM items WHERE id = 2");
    let r = deploy(g.addr, "/migrate", &p, &SCHEMA);
    assert!(r.status != 200 && r.text().contains("items"), "{}", r.text());
}
