//! The tracking tables as stonescriptdb-gateway 1.x left them, and the one layout both read: the same
//! table names with a superset of both column sets. [`upgrade_sql`] turns whatever a database holds
//! (the old layout, ours, or a mix after a move back and forth) into that superset; it only ever adds
//! columns and indexes, relaxes an old NOT NULL this gateway does not fill, and copies keys from one
//! side to the other, so no recorded history is lost and the old gateway can still read its tables.
//! See `vendor-notes/upstream-gateway.md` for the choice.

use std::collections::{HashMap, HashSet};

/// The five tracking tables, without their `_stonescriptdb_gateway_` prefix.
pub const TABLES: [&str; 5] = ["migrations", "types", "tables", "functions", "changelog"];

/// Full name of a tracking table, schema-qualified (the deploy session's search path is the
/// platform's, the adopt session's is `pg_catalog`).
pub fn qualified(table: &str) -> String {
    format!("public._stonescriptdb_gateway_{table}")
}

/// Column → type (with default) each layout puts in each table. Columns that are keys on one side
/// are added nullable on the other; uniqueness then comes from an index (see [`upgrade_sql`]).
fn columns(table: &str) -> &'static [(&'static str, &'static str)] {
    match table {
        "migrations" => &[
            // ours
            ("filename", "text"),
            ("checksum", "text"),
            ("applied_at", "timestamptz DEFAULT now()"),
            ("duration_ms", "bigint NOT NULL DEFAULT 0"),
            ("no_transaction", "boolean NOT NULL DEFAULT false"),
            ("run_id", "text"),
            // 1.x
            ("migration_file", "text"),
        ],
        "types" => &[
            ("name", "text"),
            ("checksum", "text"),
            ("file", "text"),
            ("deployed_at", "timestamptz DEFAULT now()"),
            ("type_name", "text"),
            ("type_kind", "text"),
            ("source_file", "text"),
        ],
        "tables" => &[
            ("name", "text"),
            ("checksum", "text"),
            ("file", "text"),
            ("deployed_at", "timestamptz DEFAULT now()"),
            ("table_name", "text"),
            ("source_file", "text"),
        ],
        "functions" => &[
            ("signature", "text"),
            ("kind", "text"),
            ("checksum", "text"),
            ("file", "text"),
            ("deployed_at", "timestamptz DEFAULT now()"),
            ("function_name", "text"),
            ("param_types", "text[]"),
            ("return_type", "text"),
            ("body_checksum", "text"),
            ("source_file", "text"),
        ],
        "changelog" => &[
            ("run_id", "text"),
            ("kind", "text"),
            ("object", "text"),
            ("action", "text"),
            ("checksum", "text"),
            ("forced", "boolean NOT NULL DEFAULT false"),
            ("changed_at", "timestamptz DEFAULT now()"),
            ("change_type", "text"),
            ("object_name", "text"),
            ("change_detail", "jsonb"),
            ("executed_at", "timestamptz DEFAULT now()"),
        ],
        _ => &[],
    }
}

/// Old columns that were NOT NULL and that this gateway's rows leave empty; and ours that the old
/// gateway's rows leave empty (when it runs again after a way back).
fn relaxed(table: &str) -> &'static [&'static str] {
    match table {
        "functions" => &["function_name", "param_types", "return_type", "body_checksum", "source_file", "kind", "file"],
        "changelog" => &["change_type", "object_name", "kind", "object", "action"],
        _ => &[],
    }
}

/// Copies a row's key from the side that wrote it to the side that did not, so each gateway finds
/// every row: `(SET, WHERE)` of each `UPDATE`. Idempotent (`WHERE … IS NULL`).
fn fill_parts(table: &str) -> &'static [(&'static str, &'static str)] {
    match table {
        // 1.x recorded bare file names of `migrations/`; our paths are relative to `postgresql/`.
        "migrations" => &[
            ("filename = 'migrations/' || migration_file", "filename IS NULL AND migration_file IS NOT NULL"),
            (
                "migration_file = pg_catalog.regexp_replace(filename, '^migrations/', '')",
                "migration_file IS NULL AND filename IS NOT NULL",
            ),
        ],
        "types" => &[
            ("name = type_name", "name IS NULL AND type_name IS NOT NULL"),
            ("file = COALESCE(source_file, '')", "file IS NULL"),
        ],
        "tables" => &[
            ("name = table_name", "name IS NULL AND table_name IS NOT NULL"),
            ("file = COALESCE(source_file, '')", "file IS NULL"),
        ],
        _ => &[],
    }
}

fn fills(table: &str) -> Vec<String> {
    let t = qualified(table);
    fill_parts(table).iter().map(|(set, cond)| format!("UPDATE {t} SET {set} WHERE {cond}")).collect()
}

/// One read that says (`true`/`false`) whether any [`fill_sql`] statement has a row to fill, for
/// tables already in the superset layout. It names every tracking table and every column the fills
/// use, so a table or column dropped since makes it fail (42P01, 42703) as the fills would. Rows
/// the other gateway wrote are rare (only after a move back), so an unchanged deploy reads instead
/// of planning and running six `UPDATE`s.
pub fn fill_check_sql() -> String {
    let any = TABLES
        .iter()
        .map(|t| {
            let conds: Vec<String> = fill_parts(t).iter().map(|(_, c)| format!("({c})")).collect();
            let cond = if conds.is_empty() { "false".to_string() } else { conds.join(" OR ") };
            format!("EXISTS (SELECT 1 FROM {} WHERE {cond})", qualified(t))
        })
        .collect::<Vec<_>>()
        .join(" OR ");
    format!("SELECT ({any})::text")
}

/// Unique indexes the superset needs for the keys the other side's writes rely on.
fn indexes(table: &str) -> Vec<String> {
    let t = qualified(table);
    let idx = |name: &str, cols: &str| {
        format!("CREATE UNIQUE INDEX IF NOT EXISTS _stonescriptdb_gateway_{table}_{name}_key ON {t} ({cols})")
    };
    match table {
        "migrations" => vec![idx("filename", "filename"), idx("migration_file", "migration_file")],
        "types" => vec![idx("name", "name"), idx("type_name", "type_name")],
        "tables" => vec![idx("name", "name"), idx("table_name", "table_name")],
        "functions" => vec![idx("signature", "signature")],
        _ => Vec::new(),
    }
}

/// Which of the tracking tables exist and with which columns: the query, and its rows folded.
pub const COLUMNS_SQL: &str = "SELECT substr(c.relname, 24), a.attname::text FROM pg_catalog.pg_attribute a \
     JOIN pg_catalog.pg_class c ON c.oid = a.attrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname LIKE '\\_stonescriptdb\\_gateway\\_%' \
     AND a.attnum > 0 AND NOT a.attisdropped";

/// Table → its columns, from rows of [`COLUMNS_SQL`].
pub fn fold(rows: Vec<Vec<String>>) -> HashMap<String, HashSet<String>> {
    let mut m: HashMap<String, HashSet<String>> = HashMap::new();
    for mut r in rows {
        if r.len() == 2 {
            let col = r.pop().unwrap_or_default();
            m.entry(r.pop().unwrap_or_default()).or_default().insert(col);
        }
    }
    m
}

/// Whether a database carries the 1.x layout somewhere (its `migrations` table keyed by file name).
pub fn has_upstream_layout(cols: &HashMap<String, HashSet<String>>) -> bool {
    cols.get("migrations").is_some_and(|c| c.contains("migration_file"))
}

/// The statements that make every existing tracking table the superset, in order; empty when
/// nothing is missing (then only [`fill_sql`] is worth running).
pub fn upgrade_sql(cols: &HashMap<String, HashSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for table in TABLES {
        let Some(have) = cols.get(table) else { continue };
        let missing: Vec<&(&str, &str)> = columns(table).iter().filter(|(c, _)| !have.contains(*c)).collect();
        if missing.is_empty() {
            continue;
        }
        let t = qualified(table);
        for (c, ty) in &missing {
            out.push(format!("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {c} {ty}"));
        }
        for c in relaxed(table) {
            out.push(format!("ALTER TABLE {t} ALTER COLUMN {c} DROP NOT NULL"));
        }
        if table == "migrations" && !have.contains("id") {
            // 1.x lists its history `ORDER BY id`.
            out.push(format!("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS id bigserial"));
        }
        out.extend(fills(table));
        out.extend(indexes(table));
    }
    out
}

/// The copy of keys between the two sides, for tables already in the superset layout (rows the
/// old gateway wrote after a move back have only its own columns).
pub fn fill_sql(cols: &HashMap<String, HashSet<String>>) -> Vec<String> {
    TABLES.iter().filter(|t| cols.contains_key(**t)).flat_map(|t| fills(t)).collect()
}

/// [`fill_sql`] for every tracking table (a layout known to be complete).
pub fn all_fill_sql() -> Vec<String> {
    TABLES.iter().flat_map(|t| fills(t)).collect()
}

/// The file name 1.x would record for one of our migration paths.
pub fn upstream_migration_name(path: &str) -> &str {
    path.strip_prefix("migrations/").unwrap_or(path)
}

/// The command that takes over databases the catalog does not record, for messages.
pub fn adopt_command(platform: &str) -> String {
    format!("stonescriptdb-gateway adopt --platform {platform}")
}

/// The message for a database that exists but the catalog does not record: made by 1.x (or by hand),
/// so it is served only after `adopt`.
pub fn unrecorded_message(database: &str, platform: &str) -> String {
    format!(
        "database '{database}' exists but this gateway's catalog does not record it (a database made by \
         stonescriptdb-gateway 1.x, or by hand); take it over with `{}` as a PostgreSQL superuser (README: \
         Moving from stonescriptdb-gateway 1.x), or choose other names",
        adopt_command(platform)
    )
}

/// Whether `database` exists on the server `c` is connected to.
pub fn database_exists(c: &mut crate::pg::blocking::Client, database: &str) -> bool {
    c.query("SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1", &[Some(database)])
        .is_ok_and(|r| !r.rows.is_empty())
}

/// What the gateway's own login may do, as checked at start (`/health` shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginRights {
    pub createdb: bool,
    pub createrole: bool,
    pub superuser: bool,
}

impl LoginRights {
    /// Whether new platforms and tenants can be made: databases, and a role per platform.
    pub fn sufficient(&self) -> bool {
        self.superuser || (self.createdb && self.createrole)
    }

    /// The rights it lacks, for messages.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if !self.superuser && !self.createdb {
            m.push("CREATEDB");
        }
        if !self.superuser && !self.createrole {
            m.push("CREATEROLE");
        }
        m
    }
}

static LOGIN_RIGHTS: std::sync::Mutex<Option<LoginRights>> = std::sync::Mutex::new(None);

/// The rights found by the last check at start; `None` before PostgreSQL answered.
pub fn login_rights() -> Option<LoginRights> {
    LOGIN_RIGHTS.lock().ok().and_then(|g| *g)
}

/// Keeps what the check at start found, for `/health`.
pub fn remember_login_rights(r: LoginRights) {
    if let Ok(mut g) = LOGIN_RIGHTS.lock() {
        *g = Some(r);
    }
}

/// Reads the current login's attributes.
pub fn check_login(admin: &mut crate::pg::blocking::Client) -> Result<LoginRights, crate::pg::dberror::PgError> {
    let r = admin.query(
        "SELECT rolcreatedb::text, rolcreaterole::text, rolsuper::text FROM pg_catalog.pg_roles \
         WHERE rolname = current_user",
        &[],
    )?;
    let row = r.rows.into_iter().next().unwrap_or_default();
    let t = |i: usize| row.get(i).and_then(|v| v.as_deref()) == Some("true");
    Ok(LoginRights { createdb: t(0), createrole: t(1), superuser: t(2) })
}

/// Platforms to name in the `adopt` command for these database names: `{p}_main` names `p`; a tenant
/// database goes with a platform whose main database is in the list, else with its first part.
pub fn suggested_platforms(dbs: &[String]) -> Vec<String> {
    let mains: Vec<&str> = dbs.iter().filter_map(|d| d.strip_suffix("_main")).filter(|p| !p.is_empty()).collect();
    let mut out: Vec<String> = Vec::new();
    for d in dbs {
        let p = if let Some(p) = d.strip_suffix("_main").filter(|p| !p.is_empty()) {
            p.to_string()
        } else if let Some(m) = mains.iter().filter(|m| d.starts_with(&format!("{m}_"))).max_by_key(|m| m.len()) {
            m.to_string()
        } else {
            d.split('_').next().unwrap_or(d).to_string()
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// At most this many unrecorded databases are looked into at start (each costs a connection).
const SCAN_LIMIT: usize = 200;

/// `application_name` of the sessions that look into unrecorded databases at start: in
/// `pg_stat_activity` they are not mistaken for `/call` connections, which are counted against the
/// connection caps (another gateway of the same cluster may be serving those databases).
pub const SCAN_APPLICATION_NAME: &str = "stonescriptdb-gateway scan";

fn scan_params(admin_params: &crate::pg::params::ConnectParams, db: &str) -> crate::pg::params::ConnectParams {
    let mut params = admin_params.with_dbname(db);
    params.application_name = SCAN_APPLICATION_NAME.to_string();
    params
}

/// Databases the catalog does not record that carry the 1.x tracking table.
pub fn unrecorded_upstream(
    admin_params: &crate::pg::params::ConnectParams,
    recorded: &[String],
    catalog_db: &str,
) -> Result<Vec<String>, crate::pg::dberror::PgError> {
    let mut admin = crate::pg::blocking::Client::connect(admin_params)?;
    let r = admin.query(
        "SELECT datname::text FROM pg_catalog.pg_database WHERE NOT datistemplate AND datallowconn \
         AND datname NOT IN ('postgres', $1) ORDER BY datname",
        &[Some(catalog_db)],
    )?;
    admin.close();
    let mut out = Vec::new();
    let candidates =
        r.rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).filter(|d| !recorded.contains(d));
    for db in candidates.take(SCAN_LIMIT) {
        // A database the login cannot enter is not one it can serve either; it is left alone.
        let Ok(mut c) = crate::pg::blocking::Client::connect(&scan_params(admin_params, &db)) else { continue };
        // Someone else's database: nothing its owner defined (an operator, a function on its search
        // path) may be evaluated by the gateway's login.
        if c.batch_execute("SET search_path = pg_catalog, pg_temp").is_err() {
            c.close();
            continue;
        }
        let has = c.query(
            "SELECT 1 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' \
             AND c.relname = '_stonescriptdb_gateway_migrations' AND a.attname = 'migration_file' AND NOT a.attisdropped",
            &[],
        );
        c.close();
        if has.is_ok_and(|r| !r.rows.is_empty()) {
            out.push(db);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(t: &[(&str, &[&str])]) -> HashMap<String, HashSet<String>> {
        t.iter().map(|(n, c)| (n.to_string(), c.iter().map(|s| s.to_string()).collect())).collect()
    }

    /// The start-up scan enters databases another gateway of the cluster may serve: its sessions must
    /// not look like that gateway's `/call` connections, which the connection caps count.
    #[test]
    fn the_start_scan_is_not_mistaken_for_call_connections() {
        let admin = crate::pg::params::ConnectParams::from_url("postgres://gw@/postgres?host=/tmp").unwrap();
        let p = scan_params(&admin, "acme_main");
        assert_eq!(p.dbname, "acme_main");
        assert_eq!(p.application_name, SCAN_APPLICATION_NAME);
        assert_ne!(p.application_name, crate::call::engine::CALL_APPLICATION_NAME);
        assert_ne!(p.application_name, crate::deploy::service::DEPLOY_APPLICATION_NAME);
    }

    #[test]
    fn the_old_layout_gains_our_columns_and_keeps_its_own() {
        let old = layout(&[
            ("migrations", &["id", "migration_file", "checksum", "applied_at"]),
            (
                "functions",
                &[
                    "id",
                    "function_name",
                    "signature",
                    "param_types",
                    "return_type",
                    "body_checksum",
                    "source_file",
                    "deployed_at",
                ],
            ),
        ]);
        assert!(has_upstream_layout(&old));
        let sql = upgrade_sql(&old).join(";\n");
        assert!(sql.contains("ADD COLUMN IF NOT EXISTS filename text"));
        assert!(sql.contains("ADD COLUMN IF NOT EXISTS duration_ms bigint NOT NULL DEFAULT 0"));
        assert!(!sql.contains("ADD COLUMN IF NOT EXISTS migration_file"));
        assert!(!sql.contains("id bigserial"), "the old table has its id");
        assert!(sql.contains("SET filename = 'migrations/' || migration_file"));
        assert!(sql.contains("ALTER COLUMN function_name DROP NOT NULL"));
        assert!(sql.contains("_functions_signature_key ON public._stonescriptdb_gateway_functions (signature)"));
        assert!(!sql.contains("DROP COLUMN") && !sql.contains("DELETE"));
    }

    #[test]
    fn our_layout_gains_the_old_columns_once() {
        let ours = layout(&[(
            "migrations",
            &["filename", "checksum", "applied_at", "duration_ms", "no_transaction", "run_id"],
        )]);
        assert!(!has_upstream_layout(&ours));
        let sql = upgrade_sql(&ours).join(";\n");
        assert!(sql.contains("ADD COLUMN IF NOT EXISTS migration_file text"));
        assert!(sql.contains("id bigserial"));
        let mut whole = ours.clone();
        whole.get_mut("migrations").unwrap().extend(["migration_file".to_string(), "id".to_string()]);
        assert!(upgrade_sql(&whole).is_empty());
        assert_eq!(fill_sql(&whole).len(), 2);
    }

    #[test]
    fn the_fill_check_asks_what_every_fill_would_change() {
        let all: HashMap<String, HashSet<String>> = TABLES.iter().map(|t| (t.to_string(), HashSet::new())).collect();
        assert_eq!(all_fill_sql(), fill_sql(&all));
        let check = fill_check_sql();
        for t in TABLES {
            assert!(check.contains(&format!("FROM {} WHERE", qualified(t))), "{t} not probed: {check}");
        }
        for stmt in all_fill_sql() {
            let cond = stmt.split(" WHERE ").nth(1).expect("a WHERE");
            assert!(check.contains(&format!("({cond})")), "{cond} not checked: {check}");
        }
    }

    #[test]
    fn migration_paths_map_to_bare_names() {
        assert_eq!(upstream_migration_name("migrations/001_init.pssql"), "001_init.pssql");
        assert_eq!(upstream_migration_name("migrations/sub/x.sql"), "sub/x.sql");
    }

    #[test]
    fn suggested_platforms_follow_main_databases() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            suggested_platforms(&v(&["shop_main", "shop_t1", "my_app_main", "my_app_x", "lone_t"])),
            v(&["lone", "my_app", "shop"])
        );
    }

    #[test]
    fn rights_name_what_is_missing() {
        let r = LoginRights { createdb: true, createrole: false, superuser: false };
        assert!(!r.sufficient());
        assert_eq!(r.missing(), ["CREATEROLE"]);
        assert!(LoginRights { createdb: false, createrole: false, superuser: true }.sufficient());
    }

    #[test]
    fn fold_groups_columns_by_table() {
        let m = fold(vec![vec!["migrations".into(), "id".into()], vec!["migrations".into(), "checksum".into()]]);
        assert_eq!(m["migrations"].len(), 2);
    }
}
