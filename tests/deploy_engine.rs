//! The deploy engine against a real PostgreSQL (started by `scripts/test.sh`): the sample platform in
//! `tests/fixtures/platform/`, packed into a tar.gz here and read with the archive reader, deployed
//! into a fresh database per test.

#[path = "common/archive.rs"]
mod test_archive;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use stonescriptdb_gateway::deploy::archive::{ArchiveLimits, SchemaArchive, read_archive};
use stonescriptdb_gateway::deploy::engine::{DeployOptions, DeployReport, SeedMode, deploy};
use stonescriptdb_gateway::error::{ApiError, Kind};
use stonescriptdb_gateway::json::ObjectWriter;
use stonescriptdb_gateway::pg::blocking::Client;
use stonescriptdb_gateway::pg::params::{ConnectParams, Host};

// ---------- cluster and databases ----------

fn params(db: &str) -> ConnectParams {
    let port = std::env::var("TEST_PG_PORT").expect("TEST_PG_PORT is not set: run these tests through scripts/test.sh");
    let host = std::env::var("TEST_PG_HOST").expect("TEST_PG_HOST is not set");
    ConnectParams {
        host: if host.starts_with('/') { Host::Unix(PathBuf::from(host)) } else { Host::Tcp(host) },
        port: port.parse().expect("numeric TEST_PG_PORT"),
        user: std::env::var("TEST_PG_SUPERUSER").unwrap_or_else(|_| "postgres".into()),
        password: None,
        dbname: db.to_string(),
        application_name: "deploy_engine_test".into(),
        connect_timeout: Duration::from_secs(10),
        options: None,
    }
}

/// A database of its own, dropped when the test ends (also on panic).
struct TestDb {
    name: String,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    fn new(tag: &str) -> TestDb {
        let name = format!("ssdb_deploy_{tag}_{}_{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let mut admin = Client::connect(&params("postgres")).expect("connect admin");
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        // What the gateway sets on a platform database: extensions live outside `public`.
        admin
            .batch_execute(&format!("ALTER DATABASE {name} SET search_path TO \"$user\", public, extensions"))
            .unwrap();
        admin.close();
        TestDb { name }
    }

    fn client(&self) -> Client {
        Client::connect(&params(&self.name)).expect("connect test db")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&params("postgres")) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
            admin.close();
        }
    }
}

// ---------- archives ----------

fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/platform")
}

/// The sample platform as path (relative to `postgresql/`) → content.
fn platform() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let root = fixture_root().join("postgresql");
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

fn archive(files: &BTreeMap<String, String>) -> SchemaArchive {
    read_archive(&test_archive::tgz(files), &ArchiveLimits::default()).expect("readable archive")
}

fn opts(mode: SeedMode) -> DeployOptions {
    DeployOptions {
        force: false,
        dry_run: false,
        reseed: false,
        seed_mode: mode,
        run_id: "test-run".into(),
        protected_schemas: vec!["public".into()],
        time_limit: None,
    }
}

fn run(db: &TestDb, files: &BTreeMap<String, String>, o: &DeployOptions) -> Result<DeployReport, ApiError> {
    let mut c = db.client();
    let r = deploy(&mut c, &db.name, "", &archive(files), o);
    c.close();
    r
}

fn ok(db: &TestDb, files: &BTreeMap<String, String>, o: &DeployOptions) -> DeployReport {
    match run(db, files, o) {
        Ok(r) => r,
        Err(e) => panic!("deploy failed: {:?} {} {:?} {:?}", e.kind, e.message, e.db, e.extra),
    }
}

fn q(db: &TestDb, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut c = db.client();
    let r = c.simple_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    c.close();
    r
}

fn one(db: &TestDb, sql: &str) -> String {
    q(db, sql)[0][0].clone().unwrap_or_default()
}

/// Everything the tracking tables and user schema hold, to prove a failed deploy changed nothing.
fn state(db: &TestDb) -> String {
    one(
        db,
        "SELECT concat_ws(' | ', \
           (SELECT string_agg(filename || ':' || checksum, ',' ORDER BY filename) FROM _stonescriptdb_gateway_migrations), \
           (SELECT string_agg(signature || ':' || checksum, ',' ORDER BY signature) FROM _stonescriptdb_gateway_functions), \
           (SELECT count(*) FROM _stonescriptdb_gateway_changelog), \
           (SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relnamespace = 'public'::regnamespace), \
           (SELECT string_agg(proname, ',' ORDER BY proname) FROM pg_proc WHERE pronamespace = 'public'::regnamespace))",
    )
}

// ---------- priority 1 ----------

#[test]
fn deploy_new_then_redeploy_skips_everything() {
    let db = TestDb::new("basic");
    let files = platform();
    let r = ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    assert_eq!(r.database, db.name);
    let mut ext = r.extensions_installed.clone();
    ext.sort();
    assert_eq!(ext, ["pg_trgm", "pgcrypto", "uuid-ossp"]);
    assert_eq!(r.types_deployed.len(), 3, "{:?}", r.types_deployed);
    let mut t = r.tables_created.clone();
    t.sort();
    assert_eq!(t, ["categories", "orders", "products", "users"]);
    assert_eq!(
        r.migrations_applied,
        ["migrations/001_settings.sql", "migrations/002_more.sql", "migrations/010_index.sql"]
    );
    assert_eq!(r.functions_total, 13);
    assert_eq!(r.functions_changed.len(), 13);
    assert_eq!(r.functions_skipped, 0);
    assert!(r.functions_dropped.is_empty());
    let products = r.seeders.iter().find(|s| s.table == "public.products").unwrap();
    assert_eq!((products.inserted, products.skipped), (3, 0));
    assert!(r.schema_validation.dataloss.is_empty() && r.schema_validation.incompatible.is_empty());

    // The functions work.
    let id = one(&db, "SELECT create_user('a@example.com', 'Alice')");
    assert_eq!(q(&db, &format!("SELECT email FROM get_user({id})"))[0][0].as_deref(), Some("a@example.com"));
    assert_eq!(one(&db, "SELECT add_numbers(1, 2)"), "3");
    assert_eq!(one(&db, "SELECT add_numbers(1.5, 2)"), "3.5");
    assert_eq!(one(&db, "SELECT add_numbers(1, 2, 3)"), "6");
    assert_eq!(one(&db, "SELECT greet()"), "hello world!");
    assert_eq!(one(&db, "SELECT product_count()"), "3");
    assert_eq!(one(&db, "SELECT length(random_token())"), "16");
    q(&db, "CALL set_setting('k', 'v')");
    assert_eq!(one(&db, "SELECT value FROM app_settings WHERE key = 'version'"), "2");
    assert_eq!(one(&db, "SELECT count(*) FROM find_users('Alice')"), "1");
    // The self-reference and FK order made it through.
    assert_eq!(one(&db, "SELECT name FROM categories WHERE parent_id = 1"), "child");

    let mut buf = Vec::new();
    {
        let mut o = ObjectWriter::new(&mut buf);
        r.write_fields(&mut o);
    }
    let json = String::from_utf8(buf).unwrap();
    assert!(json.contains("\"functions_deployed\":13"), "{json}");
    assert!(json.contains("\"migrations_applied\":3,"), "{json}");
    assert!(json.contains("\"migrations_applied_names\":[\"migrations/001_settings.sql\""), "{json}");

    let before = one(&db, "SELECT count(*) FROM _stonescriptdb_gateway_changelog");
    let r2 = ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    assert!(r2.extensions_installed.is_empty());
    assert!(r2.types_deployed.is_empty());
    assert!(r2.tables_created.is_empty());
    assert!(r2.migrations_applied.is_empty());
    assert_eq!(r2.functions_total, 13);
    assert_eq!(r2.functions_skipped, 13);
    assert!(r2.functions_changed.is_empty() && r2.functions_dropped.is_empty());
    let products = r2.seeders.iter().find(|s| s.table == "public.products").unwrap();
    assert_eq!((products.inserted, products.skipped), (0, 3));
    assert_eq!(one(&db, "SELECT count(*) FROM products"), "3");
    assert_eq!(one(&db, "SELECT count(*) FROM _stonescriptdb_gateway_changelog"), before);
}

#[test]
fn changes_apply_exactly_what_changed() {
    let db = TestDb::new("changes");
    let mut files = platform();
    ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    files.insert(
        "migrations/011_flag.sql".into(),
        "ALTER TABLE app_settings ADD COLUMN IF NOT EXISTS flag boolean;\n".into(),
    );
    let math = files["functions/math.sql"]
        .replace("'SELECT a + b + c'", "'SELECT a + b + c + 0'")
        .replace("CREATE OR REPLACE FUNCTION to_be_removed() RETURNS integer LANGUAGE sql AS 'SELECT 42';\n", "");
    files.insert("functions/math.sql".into(), math);
    let r = ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    assert_eq!(r.migrations_applied, ["migrations/011_flag.sql"]);
    assert_eq!(r.functions_changed, ["public.add_numbers(integer, integer, integer)"]);
    assert_eq!(r.functions_dropped, ["public.to_be_removed()"]);
    assert_eq!(r.functions_total, 12);
    assert_eq!(r.functions_skipped, 11);
    assert_eq!(one(&db, "SELECT to_regprocedure('to_be_removed()') IS NULL"), "t");
    assert_eq!(one(&db, "SELECT add_numbers(1, 2, 3)"), "6");
}

#[test]
fn edited_applied_migration_is_refused() {
    let db = TestDb::new("edited");
    let mut files = platform();
    ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    let before = state(&db);
    files.insert("migrations/002_more.sql".into(), "UPDATE app_settings SET value = '3';\n".into());
    files.insert("migrations/020_new.sql".into(), "CREATE TABLE never (id int);\n".into());
    let e = run(&db, &files, &opts(SeedMode::RunIfEmpty)).unwrap_err();
    assert_eq!(e.kind, Kind::MigrationChecksumMismatch);
    assert!(e.message.contains("migrations/002_more.sql"), "{}", e.message);
    assert_eq!(state(&db), before);
}

#[test]
fn failing_migration_leaves_everything_unchanged() {
    let db = TestDb::new("failing");
    let mut files = platform();
    ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    let before = state(&db);
    files.insert(
        "migrations/030_bad.sql".into(),
        "CREATE TABLE half (id int);\n\nINSERT INTO half VALUES (1);\nSELECT 1/0;\n".into(),
    );
    files
        .insert("functions/extra.sql".into(), "CREATE FUNCTION extra() RETURNS int LANGUAGE sql AS 'SELECT 1';".into());
    let e = run(&db, &files, &opts(SeedMode::RunIfEmpty)).unwrap_err();
    assert_eq!(e.kind, Kind::MigrationFailed);
    assert_eq!(e.db.as_ref().unwrap().sqlstate, "22012");
    let extra: Vec<_> = e.extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert!(extra.contains(&"file=\"migrations/030_bad.sql\"".to_string()), "{extra:?}");
    assert!(extra.contains(&"line=4".to_string()), "{extra:?}");
    assert!(extra.contains(&"step=\"migrations\"".to_string()), "{extra:?}");
    assert_eq!(state(&db), before);
}

#[test]
fn dry_run_changes_nothing() {
    let db = TestDb::new("dry");
    let files = platform();
    let mut o = opts(SeedMode::RunIfEmpty);
    o.dry_run = true;
    let r = ok(&db, &files, &o);
    assert!(r.dry_run);
    assert_eq!(r.tables_created.len(), 4);
    assert_eq!(r.functions_changed.len(), 13);
    assert_eq!(one(&db, "SELECT to_regclass('_stonescriptdb_gateway_migrations') IS NULL"), "t");
    assert_eq!(one(&db, "SELECT to_regclass('users') IS NULL"), "t");
    assert_eq!(one(&db, "SELECT count(*) FROM pg_extension WHERE extname = 'pgcrypto'"), "0");
}

#[test]
fn missing_extension_is_named() {
    let db = TestDb::new("noext");
    let mut files = platform();
    files.insert("extensions/no_such_ext.sql".into(), String::new());
    let e = run(&db, &files, &opts(SeedMode::RunIfEmpty)).unwrap_err();
    assert_eq!(e.kind, Kind::ExtensionNotAvailable);
    assert!(e.message.contains("no_such_ext"), "{}", e.message);
}

// ---------- priority 2 ----------

#[test]
fn enum_gains_a_value_other_type_changes_refused() {
    let db = TestDb::new("enum");
    let mut files = platform();
    ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    files.insert(
        "types/user_status.sql".into(),
        "CREATE TYPE user_status AS ENUM ('active', 'suspended', 'deleted');\n".into(),
    );
    let r = ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    assert_eq!(r.types_deployed, ["public.user_status"]);
    assert_eq!(
        one(
            &db,
            "SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = 'user_status'::regtype"
        ),
        "active,suspended,deleted"
    );
    files.insert("types/user_status.sql".into(), "CREATE TYPE user_status AS ENUM ('deleted', 'active');\n".into());
    let e = run(&db, &files, &opts(SeedMode::RunIfEmpty)).unwrap_err();
    assert!(e.message.contains("migration"), "{}", e.message);
}

#[test]
fn drift_refused_unless_forced_and_safe_columns_added() {
    let db = TestDb::new("drift");
    let mut files = platform();
    ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    // Safe: a new nullable column is added by the deployer itself.
    let products = files["tables/products.sql"]
        .replace("name varchar(200) NOT NULL,", "name varchar(200) NOT NULL,\n    description text,");
    files.insert("tables/products.sql".into(), products);
    let r = ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    assert!(r.schema_validation.safe.iter().any(|c| c.column.as_deref() == Some("description") && c.applied));
    assert_eq!(
        one(
            &db,
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'products' AND column_name = 'description'"
        ),
        "1"
    );
    // Dataloss: a column that exists in the database disappears from the file; narrowing a type.
    let users = files["tables/users.sql"]
        .replace("    display_name varchar(100),\n", "")
        .replace("CREATE INDEX users_name_trgm ON users USING gin (display_name gin_trgm_ops);\n", "");
    let mut drifted = files.clone();
    drifted.insert("tables/users.sql".into(), users);
    drifted.insert(
        "tables/products.sql".into(),
        files["tables/products.sql"].replace("name varchar(200)", "name varchar(20)"),
    );
    let e = run(&db, &drifted, &opts(SeedMode::RunIfEmpty)).unwrap_err();
    assert_eq!(e.kind, Kind::SchemaDrift, "{}", e.message);
    assert!(e.message.contains("display_name") && e.message.contains("name"), "{}", e.message);
    let mut forced = opts(SeedMode::RunIfEmpty);
    forced.force = true;
    let r = ok(&db, &drifted, &forced);
    assert_eq!(r.schema_validation.dataloss.len(), 2, "{:?}", r.schema_validation);
    // Forcing accepts the drift; it never drops or narrows anything itself.
    assert_eq!(
        one(
            &db,
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'display_name'"
        ),
        "1"
    );
}

#[test]
fn missing_seed_rows_refused_or_reseeded() {
    let db = TestDb::new("seeds");
    let files = platform();
    ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    q(&db, "DELETE FROM products WHERE id = 2");
    let e = run(&db, &files, &opts(SeedMode::Verify)).unwrap_err();
    assert_eq!(e.kind, Kind::SeedDataMissing);
    assert!(e.message.contains("public.products 2"), "{}", e.message);
    let mut forced = opts(SeedMode::Verify);
    forced.force = true;
    let r = ok(&db, &files, &forced);
    assert_eq!(r.seed_validation.missing[0].keys, ["2"]);
    assert_eq!(one(&db, "SELECT count(*) FROM products"), "2");
    let mut reseed = opts(SeedMode::Verify);
    reseed.reseed = true;
    let r = ok(&db, &files, &reseed);
    assert_eq!(r.seed_validation.reseeded, 1);
    assert_eq!(one(&db, "SELECT name FROM products WHERE id = 2"), "Gadget");
    let r = ok(&db, &files, &opts(SeedMode::Verify));
    assert!(r.seed_validation.missing.is_empty());
}

#[test]
fn concurrent_deploys_apply_each_migration_once() {
    let db = TestDb::new("concurrent");
    let files = platform();
    let name = db.name.clone();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let files = files.clone();
            let name = name.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&params(&name)).unwrap();
                let r = deploy(&mut c, &name, "", &archive(&files), &opts(SeedMode::RunIfEmpty));
                r.map(|r| r.migrations_applied.len()).map_err(|e| e.into_message())
            })
        })
        .collect();
    let applied: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap().unwrap()).collect();
    assert_eq!(applied.iter().sum::<usize>(), 3, "{applied:?}");
    assert_eq!(one(&db, "SELECT count(*) FROM _stonescriptdb_gateway_migrations"), "3");
    assert_eq!(one(&db, "SELECT count(*) FROM products"), "3");
}

#[test]
fn no_transaction_migration_runs_after_commit() {
    let db = TestDb::new("notx");
    let mut files = platform();
    files.insert(
        "migrations/005_concurrently.sql".into(),
        "-- gateway: no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS products_name_idx ON products (name);\n"
            .into(),
    );
    let r = ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    assert_eq!(r.no_transaction_migrations, ["migrations/005_concurrently.sql"]);
    assert!(r.migrations_applied.contains(&"migrations/005_concurrently.sql".to_string()));
    assert_eq!(one(&db, "SELECT to_regclass('products_name_idx') IS NOT NULL"), "t");
    assert_eq!(
        one(
            &db,
            "SELECT no_transaction FROM _stonescriptdb_gateway_migrations WHERE filename = 'migrations/005_concurrently.sql'"
        ),
        "t"
    );
    let r = ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    assert!(r.migrations_applied.is_empty() && r.no_transaction_migrations.is_empty());
}

#[test]
fn blocked_drop_names_dependant_and_return_type_change_recreates() {
    let db = TestDb::new("depend");
    let mut files = platform();
    ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    // Return type change: integer → bigint needs DROP + CREATE.
    let math = files["functions/math.sql"]
        .replace("double_it(x integer) RETURNS integer", "double_it(x integer) RETURNS bigint");
    files.insert("functions/math.sql".into(), math);
    let r = ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    assert_eq!(r.functions_changed, ["public.double_it(integer)"]);
    assert_eq!(one(&db, "SELECT pg_typeof(double_it(2))::text"), "bigint");
    // A view made by a migration depends on a function the files no longer declare.
    files.insert("migrations/040_view.sql".into(), "CREATE VIEW answer AS SELECT to_be_removed() AS v;\n".into());
    ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    let math = files["functions/math.sql"]
        .replace("CREATE OR REPLACE FUNCTION to_be_removed() RETURNS integer LANGUAGE sql AS 'SELECT 42';\n", "");
    files.insert("functions/math.sql".into(), math);
    let e = run(&db, &files, &opts(SeedMode::RunIfEmpty)).unwrap_err();
    assert_eq!(e.kind, Kind::FunctionDeployFailed);
    assert!(e.message.contains("view answer"), "{}", e.message);
    assert_eq!(one(&db, "SELECT to_regprocedure('to_be_removed()') IS NOT NULL"), "t");
}

// ---------- priority 3: database helpers ----------

#[test]
fn create_and_drop_database_helpers() {
    use stonescriptdb_gateway::catalog::{create_database, database_exists, drop_database};
    let name = format!("ssdb_deploy_helpers_{}", std::process::id());
    let mut admin = Client::connect(&params("postgres")).unwrap();
    let _ = drop_database(&mut admin, &name);
    assert!(create_database(&mut admin, &name).unwrap());
    assert!(!create_database(&mut admin, &name).unwrap());
    assert!(database_exists(&mut admin, &name).unwrap());
    let held = Client::connect(&params(&name)).unwrap();
    assert!(drop_database(&mut admin, &name).unwrap());
    assert!(!database_exists(&mut admin, &name).unwrap());
    assert!(!drop_database(&mut admin, &name).unwrap());
    drop(held);
    admin.close();
}

/// Regression: a database that never had its schema (e.g. made by /admin/create-tenant) and is first
/// deployed by a fleet /migrate gets its seed rows, instead of a 409 for rows that were never there.
#[test]
fn migrate_of_a_never_deployed_database_seeds_its_new_tables() {
    let db = TestDb::new("verify_new");
    let files = platform();
    let rep = ok(&db, &files, &opts(SeedMode::Verify));
    assert!(!rep.tables_created.is_empty());
    let seeded: u64 = rep.seeders.iter().map(|s| s.inserted).sum();
    assert!(seeded > 0, "seed rows inserted into the tables this deploy created: {:?}", rep.seeders);
    assert!(rep.seed_validation.missing.is_empty(), "{:?}", rep.seed_validation);
    assert_eq!(one(&db, "SELECT count(*) FROM products"), "3");
    // A second verify finds everything in place and inserts nothing.
    let rep = ok(&db, &files, &opts(SeedMode::Verify));
    assert_eq!(rep.seeders.iter().map(|s| s.inserted).sum::<u64>(), 0);
    assert!(rep.seed_validation.missing.is_empty());
}

// ---------- issue 15: a deploy that fails leaves nothing behind ----------
//
// PostgreSQL aborts a transaction on its own errors, so a COMMIT after one of those still rolls back.
// The errors the engine raises itself (schema drift, missing seed rows, an unknown directive) leave the
// transaction healthy: only the engine's ROLLBACK keeps what ran before them out of the database.

/// Files that change the database before the step that fails: a new table, a migration and a function.
fn with_changes_before_the_failure(mut files: BTreeMap<String, String>) -> BTreeMap<String, String> {
    files.insert("tables/notes.sql".into(), "CREATE TABLE notes (id integer PRIMARY KEY, body text);\n".into());
    files.insert(
        "migrations/020_good.sql".into(),
        "CREATE TABLE made_by_020 (id int);\nUPDATE app_settings SET value = '20' WHERE key = 'version';\n".into(),
    );
    files.insert(
        "functions/later.sql".into(),
        "CREATE FUNCTION added_later() RETURNS int LANGUAGE sql AS 'SELECT 20';\n".into(),
    );
    files
}

/// Nothing of [`with_changes_before_the_failure`] is in the database, and nothing else changed.
fn assert_nothing_left(db: &TestDb, before: &str, failure: &str) {
    assert_eq!(state(db), before, "the deploy that failed on {failure} left something behind");
    assert_eq!(one(db, "SELECT value FROM app_settings WHERE key = 'version'"), "2");
    assert_eq!(one(db, "SELECT to_regclass('made_by_020') IS NULL AND to_regclass('notes') IS NULL"), "t");
}

#[test]
fn schema_drift_refusal_rolls_back_what_ran_before_it() {
    let db = TestDb::new("drift_rb");
    let files = platform();
    ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    let before = state(&db);
    let mut drifted = with_changes_before_the_failure(files.clone());
    drifted.insert("tables/products.sql".into(), files["tables/products.sql"].replace("varchar(200)", "varchar(20)"));
    let e = run(&db, &drifted, &opts(SeedMode::RunIfEmpty)).unwrap_err();
    assert_eq!(e.kind, Kind::SchemaDrift, "{}", e.message);
    assert!(e.db.is_none(), "the engine's own error, not PostgreSQL's: {:?}", e.db);
    assert_nothing_left(&db, &before, "schema drift");
    // The same files without the drift deploy: the refusal was the drift's alone.
    let r = ok(&db, &with_changes_before_the_failure(files), &opts(SeedMode::RunIfEmpty));
    assert_eq!(r.migrations_applied, ["migrations/020_good.sql"]);
}

#[test]
fn missing_seed_rows_refusal_rolls_back_what_ran_before_it() {
    let db = TestDb::new("seed_rb");
    let files = platform();
    ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    q(&db, "DELETE FROM products WHERE id = 2");
    let before = state(&db);
    let e = run(&db, &with_changes_before_the_failure(files.clone()), &opts(SeedMode::Verify)).unwrap_err();
    assert_eq!(e.kind, Kind::SeedDataMissing, "{}", e.message);
    assert!(e.db.is_none(), "the engine's own error, not PostgreSQL's: {:?}", e.db);
    assert_nothing_left(&db, &before, "missing seed rows");
    assert_eq!(one(&db, "SELECT to_regprocedure('added_later()') IS NULL"), "t");
    assert_eq!(one(&db, "SELECT count(*) FROM products"), "2");
}

#[test]
fn a_good_migration_then_a_failing_one_leave_nothing_behind() {
    let db = TestDb::new("good_bad");
    let files = platform();
    ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    let before = state(&db);
    // The second migration fails in PostgreSQL, then on a check of the engine's own.
    for (bad, kind) in [
        ("INSERT INTO made_by_020 VALUES (1);\nSELECT 1/0;\n", Kind::MigrationFailed),
        ("-- gateway: sometimes\nINSERT INTO made_by_020 VALUES (1);\n", Kind::MigrationFailed),
    ] {
        let mut next = with_changes_before_the_failure(files.clone());
        next.insert("migrations/021_bad.sql".into(), bad.into());
        let e = run(&db, &next, &opts(SeedMode::RunIfEmpty)).unwrap_err();
        assert_eq!(e.kind, kind, "{bad}: {}", e.message);
        assert!(e.extra.iter().any(|(k, v)| *k == "file" && v.contains("021_bad.sql")), "{:?}", e.extra);
        assert_nothing_left(&db, &before, bad);
    }
    // On a database that never had a deploy, not even the tracking tables stay.
    let fresh = TestDb::new("good_bad_new");
    let mut next = files.clone();
    next.insert("migrations/021_bad.sql".into(), "SELECT 1/0;\n".into());
    run(&fresh, &next, &opts(SeedMode::RunIfEmpty)).unwrap_err();
    assert_eq!(
        one(&fresh, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"),
        "0",
        "tables of the failed first deploy stayed"
    );
}

/// A session handed to the engine inside an open transaction (left by its caller): what that
/// transaction did is not the deploy's, and must not be committed with it.
#[test]
fn a_transaction_the_caller_left_open_is_not_committed_by_the_deploy() {
    let db = TestDb::new("open_tx");
    let files = platform();
    let mut c = db.client();
    c.batch_execute("BEGIN; CREATE TABLE left_open (id int); INSERT INTO left_open VALUES (1)").unwrap();
    assert_eq!(c.transaction_status(), b'T');
    let r = deploy(&mut c, &db.name, "", &archive(&files), &opts(SeedMode::RunIfEmpty));
    c.close();
    assert!(r.is_ok(), "{:?}", r.err().map(|e| e.into_message()));
    assert_eq!(one(&db, "SELECT to_regclass('left_open') IS NULL"), "t", "the caller's open work was committed");
    assert_eq!(one(&db, "SELECT count(*) FROM products"), "3");
}

// ---------- issue 15: no-transaction migrations when two deploys race ----------

/// The deploy lock's key, as the engine computes it.
fn deploy_lock(db: &TestDb) -> String {
    format!("hashtext('stonescriptdb:{}')", db.name)
}

/// Runs `first` and `second` at once, in a known order: both wait on the deploy lock held here, in
/// that order, so both pass their main transaction (where the no-transaction migration is not yet
/// applied) before either runs it. `first` runs it; `second` then finds it applied.
#[allow(clippy::result_large_err)] // the engine's own result type, passed through
fn race(
    db: &TestDb,
    first: &BTreeMap<String, String>,
    second: &BTreeMap<String, String>,
) -> (Result<DeployReport, ApiError>, Result<DeployReport, ApiError>) {
    let mut holder = db.client();
    holder.simple_query(&format!("SELECT pg_advisory_lock({})", deploy_lock(db))).unwrap();
    let spawn = |app: &str, files: &BTreeMap<String, String>| {
        let (name, app, archive) = (db.name.clone(), app.to_string(), archive(files));
        std::thread::spawn(move || {
            let mut p = params(&name);
            p.application_name = app;
            let mut c = Client::connect(&p).expect("connect");
            let r = deploy(&mut c, &name, "", &archive, &opts(SeedMode::RunIfEmpty));
            c.close();
            r
        })
    };
    let a = spawn("ssdb_race_first", first);
    queued(&mut holder, db, "ssdb_race_first", &a);
    let b = spawn("ssdb_race_second", second);
    queued(&mut holder, db, "ssdb_race_second", &b);
    holder.simple_query(&format!("SELECT pg_advisory_unlock({})", deploy_lock(db))).unwrap();
    holder.close();
    (a.join().expect("first deploy panicked"), b.join().expect("second deploy panicked"))
}

/// Returns once the deploy named `app` waits for a lock; on failure, says what the sessions were doing.
/// Asks through `holder` (the session holding the deploy lock) rather than a new connection per look.
fn queued<T>(holder: &mut Client, db: &TestDb, app: &str, deploy: &std::thread::JoinHandle<T>) {
    // This database only: the other race test names its deploys the same and may run at the same time.
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND application_name = '{app}' \
         AND wait_event_type = 'Lock'",
        db.name
    );
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < end && !deploy.is_finished() {
        let n = holder.simple_query(&sql).expect("pg_stat_activity");
        if n[0][0].as_deref() == Some("1") {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let sessions = holder
        .simple_query(&format!(
            "SELECT application_name, state, wait_event_type, wait_event, left(query, 80) FROM pg_stat_activity \
             WHERE datname = '{}'",
            db.name
        ))
        .expect("pg_stat_activity");
    panic!("the deploy {app} never queued on the deploy lock (finished: {}): {sessions:?}", deploy.is_finished());
}

fn with_no_tx(files: &BTreeMap<String, String>, sql: &str) -> BTreeMap<String, String> {
    let mut f = files.clone();
    f.insert("migrations/050_race.sql".into(), format!("-- gateway: no-transaction\n{sql}\n"));
    f
}

/// Regression (issue 15): nothing failed when the no-transaction path skipped its own look at what
/// was applied, which matters only when a second deploy ran the same file meanwhile.
#[test]
fn racing_deploys_run_a_no_transaction_migration_once() {
    let db = TestDb::new("race_same");
    let files = platform();
    ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    // Running this twice fails (the table exists), so a second run cannot go unnoticed.
    let same = with_no_tx(&files, "CREATE TABLE race_once (id int);");
    let (a, b) = race(&db, &same, &same);
    let (a, b) = (a.expect("first deploy"), b.expect("second deploy"));
    assert_eq!(a.no_transaction_migrations, ["migrations/050_race.sql"]);
    assert!(b.no_transaction_migrations.is_empty(), "ran twice: {:?}", b.no_transaction_migrations);
    assert!(!b.migrations_applied.contains(&"migrations/050_race.sql".to_string()));
    assert_eq!(one(&db, "SELECT count(*) FROM _stonescriptdb_gateway_migrations WHERE filename LIKE '%050%'"), "1");
}

/// The loser of the race brought another text of the same file: it is refused as edited, not counted
/// as applied, and its text never runs.
#[test]
fn racing_deploys_with_different_texts_of_a_no_transaction_migration_refuse_the_second() {
    let db = TestDb::new("race_diff");
    let files = platform();
    ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    let first = with_no_tx(&files, "CREATE TABLE race_first (id int);");
    let second = with_no_tx(&files, "CREATE TABLE race_second (id int);");
    let (a, b) = race(&db, &first, &second);
    assert_eq!(a.expect("first deploy").no_transaction_migrations, ["migrations/050_race.sql"]);
    let e = b.expect_err("the second deploy's text of 050_race.sql differs from the applied one");
    assert_eq!(e.kind, Kind::MigrationChecksumMismatch, "{}", e.message);
    assert!(e.message.contains("050_race.sql"), "{}", e.message);
    assert_eq!(one(&db, "SELECT to_regclass('race_first') IS NOT NULL AND to_regclass('race_second') IS NULL"), "t");
}

/// A deploy on a fresh session of `db`, with the round trips it took (requests answered, counted by
/// the client).
fn run_counted(
    db: &TestDb,
    files: &BTreeMap<String, String>,
    o: &DeployOptions,
) -> (Result<DeployReport, ApiError>, u64) {
    let mut c = db.client();
    let before = c.round_trips();
    let r = deploy(&mut c, &db.name, "", &archive(files), o);
    let n = c.round_trips() - before;
    c.close();
    (r, n)
}

/// Issue 23: an unchanged `/migrate` of a database took about twenty round trips (one per catalog or
/// tracking read, and a stand-in table for every seeder). Once a database was deployed twice in the
/// process, its reads go ahead in one pipeline; state changed by hand since is still found.
#[test]
fn an_unchanged_redeploy_reads_ahead_in_few_round_trips() {
    let db = TestDb::new("ahead");
    let files = platform();
    ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    for _ in 0..2 {
        let (r, _) = run_counted(&db, &files, &opts(SeedMode::Verify));
        r.expect("unchanged migrate");
    }
    let (r, trips) = run_counted(&db, &files, &opts(SeedMode::Verify));
    let r = r.expect("unchanged migrate");
    assert!(r.functions_changed.is_empty() && r.migrations_applied.is_empty(), "{r:?}");
    assert!(r.seed_validation.missing.is_empty(), "{r:?}");
    // BEGIN with the lock, the tracking tables' fill with the reads ahead (one pipeline), COMMIT.
    assert!(trips <= 3, "an unchanged migrate took {trips} round trips");

    // A seed row deleted by hand is still missed, a routine dropped by hand is made again.
    q(&db, "DELETE FROM products WHERE id = 2");
    let (e, _) = run_counted(&db, &files, &opts(SeedMode::Verify));
    let e = e.unwrap_err();
    assert_eq!(e.kind, Kind::SeedDataMissing, "{}", e.message);
    assert!(e.message.contains("public.products 2"), "{}", e.message);
    q(&db, "INSERT INTO products (id, name) VALUES (2, 'Gadget')");
    let sig = one(&db, "SELECT signature FROM _stonescriptdb_gateway_functions ORDER BY signature LIMIT 1");
    q(&db, &format!("DROP ROUTINE {sig}"));
    let r = ok(&db, &files, &opts(SeedMode::Verify));
    assert_eq!(r.functions_changed, [sig], "{r:?}");
    // The deploy after a change reads as usual (what it reads is remembered again), the next goes ahead.
    let mut trips = Vec::new();
    for _ in 0..2 {
        let (r, n) = run_counted(&db, &files, &opts(SeedMode::Verify));
        assert!(r.expect("unchanged migrate").functions_changed.is_empty());
        trips.push(n);
    }
    assert!(trips[1] <= 3, "round trips after a change: {trips:?}");

    // The routines' catalog rows are remembered now: one renamed by hand is found missing and made
    // again under its name; one granted by hand (its row changed, the routine did not) is left be.
    let sigs: Vec<String> = q(&db, "SELECT signature FROM _stonescriptdb_gateway_functions ORDER BY signature")
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect();
    assert!(sigs.len() >= 2, "{sigs:?}");
    q(&db, &format!("ALTER ROUTINE {} RENAME TO renamed_by_hand", sigs[0]));
    q(&db, &format!("GRANT EXECUTE ON ROUTINE {} TO PUBLIC", sigs[1]));
    let r = ok(&db, &files, &opts(SeedMode::Verify));
    assert_eq!(r.functions_changed, [sigs[0].clone()], "{r:?}");
    assert_eq!(one(&db, &format!("SELECT to_regprocedure('{}') IS NOT NULL", sigs[0])), "t");
    let r = ok(&db, &files, &opts(SeedMode::Verify));
    assert!(r.functions_changed.is_empty(), "{r:?}");
}

/// A deploy that runs the tables' scratch run (nothing is remembered of it after a migration) goes on
/// recording the reads after it: the scratch run leaves nothing behind and the next deploy skips it,
/// so that deploy finds the table, migration and routine reads fetched ahead as well.
#[test]
fn reads_after_a_scratch_run_are_fetched_ahead_by_the_next_deploy() {
    let db = TestDb::new("ahead_scratch");
    let mut files = platform();
    ok(&db, &files, &opts(SeedMode::RunIfEmpty));
    ok(&db, &files, &opts(SeedMode::Verify));
    files.insert("migrations/020_note.sql".into(), "COMMENT ON TABLE products IS 'noted';\n".into());
    assert_eq!(ok(&db, &files, &opts(SeedMode::Verify)).migrations_applied.len(), 1);
    // The migration made the next deploy run the scratch run again; a routine changes in it too.
    let math = files["functions/math.sql"].replace("SELECT a + b + c", "SELECT c + b + a");
    files.insert("functions/math.sql".into(), math);
    let r = ok(&db, &files, &opts(SeedMode::Verify));
    assert_eq!(r.functions_changed.len(), 1, "{r:?}");
    let (r, trips) = run_counted(&db, &files, &opts(SeedMode::Verify));
    assert!(r.expect("unchanged migrate").functions_changed.is_empty());
    // The reads up to the routines' come ahead; only the seed checks that followed the changed routine
    // are read one by one (8 round trips; 18 when the recording ended at the scratch run).
    assert!(trips <= 9, "after the scratch run: {trips} round trips");
}
