//! The gateway's tracking and audit tables inside each deployed database, and the reads and writes
//! the engine makes on them. They live in `public` next to the schema they describe and are written
//! in the deploy's own transaction, so a rolled-back deploy leaves no trace in them either.

use std::collections::HashMap;

use super::context::{At, Ctx};
use super::upstream;
use crate::error::ApiError;

const DDL: &str = "
CREATE TABLE IF NOT EXISTS public._stonescriptdb_gateway_migrations (
    filename text PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    duration_ms bigint NOT NULL DEFAULT 0,
    no_transaction boolean NOT NULL DEFAULT false,
    run_id text
);
CREATE TABLE IF NOT EXISTS public._stonescriptdb_gateway_types (
    name text PRIMARY KEY,
    checksum text NOT NULL,
    file text NOT NULL,
    deployed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS public._stonescriptdb_gateway_tables (
    name text PRIMARY KEY,
    checksum text NOT NULL,
    file text NOT NULL,
    deployed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS public._stonescriptdb_gateway_functions (
    signature text PRIMARY KEY,
    kind text NOT NULL,
    checksum text NOT NULL,
    file text NOT NULL,
    deployed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS public._stonescriptdb_gateway_changelog (
    id bigserial PRIMARY KEY,
    run_id text,
    kind text NOT NULL,
    object text NOT NULL,
    action text NOT NULL,
    checksum text,
    forced boolean NOT NULL DEFAULT false,
    changed_at timestamptz NOT NULL DEFAULT now()
);
";

/// Databases (by OID) whose tracking tables this process found complete in the superset layout.
/// Nothing the gateway does takes a column away, so the layout is not read again; a deploy that fails
/// there forgets its database ([`forget_layout`]), and a database dropped and made again has another
/// OID.
static LAYOUT_COMPLETE: super::memo::DbMemo<String, ()> = super::memo::DbMemo::new();

/// Makes the next deploy of `database` on the server `client` is on read its tracking tables' layout
/// again.
pub(crate) fn forget_layout(client: &crate::pg::blocking::Client, database: &str) {
    LAYOUT_COMPLETE.forget(&client.server_key(), database);
}

/// Creates the tables when missing. Called after the advisory lock is held, so two first deploys
/// cannot race on the catalog. `oid` is the database's (empty when unknown: nothing is remembered).
///
/// Tables the 1.x gateway left (or ours, before the old columns were added) are then brought to the
/// shared superset layout ([`upstream::upgrade_sql`]); rows one side wrote get the other side's keys
/// (in one round trip: the 1.x gateway may write rows between two deploys, never columns).
pub(crate) fn ensure_tables(cx: &mut Ctx<'_>, oid: &str) -> Result<(), ApiError> {
    let at = At::step("tracking");
    let server = cx.c.server_key();
    if let Some(stmts) = known_check(cx.c, cx.db, oid) {
        let list: Vec<(&str, &[Option<&str>])> = stmts.iter().map(|s| (s.as_str(), &[][..])).collect();
        match cx.c.pipeline(&list) {
            Ok(answers) => {
                cx.check_tx(at)?;
                return if fill_wanted(&answers) { fill_keys(cx) } else { Ok(()) };
            }
            Err((_, e)) => known_check_failed(cx, e)?,
        }
    }
    let before = upstream::fold(cx.rows(upstream::COLUMNS_SQL, &[], at)?);
    // Complete before this deploy touched anything, so true whether it commits or rolls back.
    let complete = before.len() == upstream::TABLES.len() && upstream::upgrade_sql(&before).is_empty();
    if before.len() < upstream::TABLES.len() {
        cx.exec(DDL, at)?;
    }
    let cols = if before.len() < upstream::TABLES.len() {
        upstream::fold(cx.rows(upstream::COLUMNS_SQL, &[], at)?)
    } else {
        before
    };
    let mut sql = upstream::upgrade_sql(&cols);
    if sql.is_empty() {
        sql = upstream::fill_sql(&cols);
        if !sql.is_empty() {
            cx.exec(&sql.join(";\n"), at)?;
        }
    } else {
        for stmt in sql {
            cx.exec(&stmt, at)?;
        }
    }
    if complete && !oid.is_empty() {
        LAYOUT_COMPLETE.put(&server, cx.db, oid.to_string(), (), false);
    }
    Ok(())
}

/// When this process knows the tracking tables' layout to be complete, the statements that check
/// whether the other gateway's rows need their keys filled ([`upstream::fill_check_sql`], in a
/// savepoint: a table or column dropped by hand since makes it fail, see [`known_check_failed`]).
/// They can go in a pipeline; [`fill_wanted`] reads the answers, and when it says so
/// [`fill_keys`] runs the fills. `None`: the full path of [`ensure_tables`] must run.
pub(crate) fn known_check(client: &crate::pg::blocking::Client, database: &str, oid: &str) -> Option<Vec<String>> {
    let known = !oid.is_empty() && LAYOUT_COMPLETE.get(&client.server_key(), database, &oid.to_string()).is_some();
    if !known {
        return None;
    }
    Some(vec![
        "SAVEPOINT ssdb_tracking".to_string(),
        upstream::fill_check_sql(),
        "RELEASE SAVEPOINT ssdb_tracking".to_string(),
    ])
}

/// Where the check's answer is among the answers to the [`known_check`] statements.
const FILL_CHECK_AT: usize = 1;

/// Whether the answers to the [`known_check`] statements say some key needs filling.
pub(crate) fn fill_wanted(answers: &[crate::pg::blocking::QueryResult]) -> bool {
    // No answer where one should be: filling is never wrong, only slower.
    answers
        .get(FILL_CHECK_AT)
        .and_then(|q| q.rows.first())
        .and_then(|r| r.first())
        .is_none_or(|v| v.as_deref() != Some("false"))
}

/// Fills the keys rows of the other gateway lack (see [`upstream::fill_sql`]).
pub(crate) fn fill_keys(cx: &mut Ctx<'_>) -> Result<(), ApiError> {
    cx.exec(&upstream::all_fill_sql().join(";\n"), At::step("tracking"))
}

/// The [`known_check`] statements failed with `e`: a table or column gone since (rolled back to the
/// savepoint; the layout is forgotten and the full path of [`ensure_tables`] runs next), or anything
/// else (the deploy fails).
pub(crate) fn known_check_failed(cx: &mut Ctx<'_>, e: crate::pg::dberror::PgError) -> Result<(), ApiError> {
    let at = At::step("tracking");
    match e {
        crate::pg::dberror::PgError::Db(d) if d.code == "42P01" || d.code == "42703" => {
            cx.exec("ROLLBACK TO SAVEPOINT ssdb_tracking; RELEASE SAVEPOINT ssdb_tracking", at)?;
            forget_layout(cx.c, cx.db);
            Ok(())
        }
        e => Err(cx.pg_error(crate::error::Kind::MigrationFailed, at, e, 0)),
    }
}

/// File name → checksum of every recorded migration.
pub(crate) fn applied_migrations(cx: &mut Ctx<'_>) -> Result<HashMap<String, String>, ApiError> {
    Ok(cx
        .rows(
            "SELECT COALESCE(filename, 'migrations/' || migration_file), checksum \
             FROM public._stonescriptdb_gateway_migrations",
            &[],
            At::step("tracking"),
        )?
        .into_iter()
        .map(|mut r| {
            let ck = r.pop().unwrap_or_default();
            (r.pop().unwrap_or_default(), ck)
        })
        .collect())
}

pub(crate) fn record_migration(
    cx: &mut Ctx<'_>,
    file: &str,
    checksum: &str,
    duration_ms: i64,
    no_transaction: bool,
) -> Result<(), ApiError> {
    let run = cx.run_id.to_string();
    let ms = duration_ms.to_string();
    cx.query(
        "INSERT INTO public._stonescriptdb_gateway_migrations \
         (filename, checksum, duration_ms, no_transaction, run_id, migration_file) \
         VALUES ($1, $2, $3::bigint, $4::boolean, $5, $6)",
        &[
            Some(file),
            Some(checksum),
            Some(&ms),
            Some(if no_transaction { "true" } else { "false" }),
            Some(&run),
            // The name 1.x looks for, so a move back finds every migration applied here.
            Some(upstream::upstream_migration_name(file)),
        ],
        At::step("tracking"),
    )?;
    Ok(())
}

/// A tracked object: name → (checksum, file).
pub(crate) fn tracked(cx: &mut Ctx<'_>, table: &str) -> Result<HashMap<String, (String, String)>, ApiError> {
    Ok(cx
        .rows(
            &format!("SELECT name, checksum, file FROM public._stonescriptdb_gateway_{table} WHERE name IS NOT NULL"),
            &[],
            At::step("tracking"),
        )?
        .into_iter()
        .map(|r| (r[0].clone(), (r[1].clone(), r[2].clone())))
        .collect())
}

/// Upserts into `_stonescriptdb_gateway_types` or `_tables`, with the 1.x columns filled too.
pub(crate) fn upsert(cx: &mut Ctx<'_>, table: &str, name: &str, checksum: &str, file: &str) -> Result<(), ApiError> {
    let (old_key, extra_col, extra_val) = if table == "types" {
        (
            "type_name",
            ", type_kind",
            ", COALESCE((SELECT CASE t.typtype WHEN 'e' THEN 'enum' WHEN 'c' THEN 'composite' \
             WHEN 'd' THEN 'domain' WHEN 'r' THEN 'range' ELSE 'other' END FROM pg_catalog.pg_type t \
             WHERE t.oid = pg_catalog.to_regtype($1)), 'other')",
        )
    } else {
        ("table_name", "", "")
    };
    cx.query(
        &format!(
            "INSERT INTO public._stonescriptdb_gateway_{table} (name, checksum, file, {old_key}, source_file{extra_col}) \
             VALUES ($1, $2, $3, $1, $3{extra_val}) \
             ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, file = EXCLUDED.file, \
             source_file = EXCLUDED.source_file, deployed_at = now()"
        ),
        &[Some(name), Some(checksum), Some(file)],
        At::step("tracking"),
    )?;
    Ok(())
}

pub(crate) fn forget(cx: &mut Ctx<'_>, table: &str, name: &str) -> Result<(), ApiError> {
    cx.query(
        &format!("DELETE FROM public._stonescriptdb_gateway_{table} WHERE name = $1"),
        &[Some(name)],
        At::step("tracking"),
    )?;
    Ok(())
}

/// A tracked function.
pub(crate) struct TrackedFunction {
    pub signature: String,
    pub kind: String,
    pub checksum: String,
    pub file: String,
    /// Whether `to_regprocedure` still finds it.
    pub exists: bool,
}

pub(crate) fn tracked_functions(cx: &mut Ctx<'_>) -> Result<Vec<TrackedFunction>, ApiError> {
    Ok(cx
        .rows(
            "SELECT signature, kind, checksum, file, (to_regprocedure(signature) IS NOT NULL)::text \
             FROM public._stonescriptdb_gateway_functions WHERE kind IS NOT NULL ORDER BY signature",
            &[],
            At::step("tracking"),
        )?
        .into_iter()
        .map(|r| TrackedFunction {
            signature: r[0].clone(),
            kind: r[1].clone(),
            checksum: r[2].clone(),
            file: r[3].clone(),
            exists: r[4] == "true",
        })
        .collect())
}

pub(crate) fn upsert_function(
    cx: &mut Ctx<'_>,
    signature: &str,
    kind: &str,
    checksum: &str,
    file: &str,
) -> Result<(), ApiError> {
    cx.query(
        "INSERT INTO public._stonescriptdb_gateway_functions (signature, kind, checksum, file) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (signature) DO UPDATE SET kind = EXCLUDED.kind, \
         checksum = EXCLUDED.checksum, file = EXCLUDED.file, deployed_at = now()",
        &[Some(signature), Some(kind), Some(checksum), Some(file)],
        At::step("tracking"),
    )?;
    Ok(())
}

pub(crate) fn forget_function(cx: &mut Ctx<'_>, signature: &str) -> Result<(), ApiError> {
    cx.query(
        "DELETE FROM public._stonescriptdb_gateway_functions WHERE signature = $1",
        &[Some(signature)],
        At::step("tracking"),
    )?;
    Ok(())
}
