//! The seeders step: reference rows inserted into empty tables (new database, `/register`) or
//! verified by primary key (`/migrate`).
//!
//! The target table of an `INSERT` is what PostgreSQL says it is: `EXPLAIN (VERBOSE, FORMAT JSON)`
//! of the statement (planned, not executed) names the relation and its schema.
//!
//! To learn which rows a seeder defines without touching the real table, the statement is evaluated
//! inside a savepoint where the real table has been renamed away and an empty table of the same
//! shape (`LIKE … INCLUDING DEFAULTS, IDENTITY, GENERATED, INDEXES`) took its name — qualified or not,
//! the statement's text then resolves to the stand-in. Its rows leave the savepoint as JSON text
//! (whatever is written inside it is rolled back) and land in a temporary table made before it. Rows are then matched by primary key (by all
//! columns when the table has none). Column defaults that call `nextval` advance the real sequence
//! during that evaluation; seeders should give their keys explicitly.

use std::collections::HashMap;

use super::archive::SchemaArchive;
use super::context::{At, Ctx, DeployOptions, DeployReport, MissingSeedRows, SeedMode, SeederResult, quote_ident};
use super::sql::{self, Statement};
use crate::error::{ApiError, Kind};
use crate::json;

/// (schema, relation) of an INSERT's target.
fn target(cx: &mut Ctx<'_>, at: At<'_>) -> Result<(String, String), ApiError> {
    let stmt = at.stmt.expect("seeder statement");
    // Planned, not run: a read, so it can be fetched ahead (see `readahead`).
    let res = cx.read(&format!("EXPLAIN (VERBOSE, FORMAT JSON) {}", stmt.text), &[], at, Kind::MigrationFailed, 31)?;
    let text = res.into_iter().flatten().flatten().collect::<Vec<String>>().join("\n");
    let plan = json::parse(text.as_bytes()).ok();
    let node = plan.as_ref().and_then(|v| v.as_array()).and_then(|a| a.first()).and_then(|v| v.get("Plan"));
    let rel = node.and_then(|n| n.get("Relation Name")).and_then(|v| v.as_str());
    let schema = node.and_then(|n| n.get("Schema")).and_then(|v| v.as_str());
    match (schema, rel) {
        (Some(s), Some(r)) => Ok((s.to_string(), r.to_string())),
        _ => Err(cx.fail(Kind::MigrationFailed, at, "cannot tell the target table of this INSERT from its plan")),
    }
}

fn qualified(t: &(String, String)) -> String {
    format!("{}.{}", quote_ident(&t.0), quote_ident(&t.1))
}

/// Insertable columns (not generated, not dropped), quoted, in order. Read only on the way to a
/// stand-in or temporary table, so not fetched ahead next time.
fn insertable_columns(cx: &mut Ctx<'_>, rel: &str, at: At<'_>) -> Result<Vec<String>, ApiError> {
    Ok(cx
        .rows_before_write(
            "SELECT quote_ident(attname) FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 \
             AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            &[Some(rel)],
            at,
        )?
        .into_iter()
        .map(|mut r| r.remove(0))
        .collect())
}

/// The columns a seed row is matched by: the primary key, else every insertable column.
#[derive(Clone)]
struct Keys {
    cols: Vec<String>,
    /// Whether `cols` is the primary key (never NULL, indexed).
    primary: bool,
}

fn key_columns(cx: &mut Ctx<'_>, rel: &str, at: At<'_>) -> Result<Keys, ApiError> {
    let pk: Vec<String> = cx
        .rows_before_write(
            "SELECT quote_ident(a.attname) FROM pg_index i JOIN pg_attribute a \
             ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[]) \
             WHERE i.indrelid = $1::regclass AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[Some(rel)],
            at,
        )?
        .into_iter()
        .map(|mut r| r.remove(0))
        .collect();
    if pk.is_empty() {
        Ok(Keys { cols: insertable_columns(cx, rel, at)?, primary: false })
    } else {
        Ok(Keys { cols: pk, primary: true })
    }
}

/// Runs the current seeder statement against an empty stand-in of table `t` (same columns, defaults,
/// identity and indexes) inside a savepoint, reads what `read` asks of the stand-in, and rolls back:
/// the real table is never touched.
fn in_stand_in<T>(
    cx: &mut Ctx<'_>,
    t: &(String, String),
    n: usize,
    at: At<'_>,
    read: impl FnOnce(&mut Ctx<'_>, &str) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let rel = qualified(t);
    let real = format!("_ssdb_seed_real_{n}");
    let sp = cx.savepoint()?;
    let r = (|| {
        cx.exec(
            &format!(
                "ALTER TABLE {rel} RENAME TO {real}; CREATE TABLE {rel} (LIKE {}.{real} \
                 INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING GENERATED INCLUDING INDEXES)",
                quote_ident(&t.0)
            ),
            at,
        )?;
        cx.run_file_stmt(Kind::MigrationFailed, at)?;
        read(cx, &rel)
    })();
    cx.rollback_to(&sp)?;
    r
}

/// Evaluates an INSERT into a stand-in table and returns the temporary table holding its rows.
fn evaluate(cx: &mut Ctx<'_>, t: &(String, String), n: usize, at: At<'_>) -> Result<String, ApiError> {
    let rel = qualified(t);
    let tmp = format!("pg_temp._ssdb_seed_{n}");
    let cols = insertable_columns(cx, &rel, at)?.join(", ");
    cx.exec(&format!("CREATE TEMP TABLE _ssdb_seed_{n} (LIKE {rel} INCLUDING DEFAULTS) ON COMMIT DROP"), at)?;
    // The rows leave the savepoint as JSON text: anything written inside it is rolled back.
    let json = in_stand_in(cx, t, n, at, |cx, rel| {
        let rows = cx.query(&format!("SELECT coalesce(json_agg(s), '[]')::text FROM {rel} s"), &[], at)?;
        Ok(rows.rows[0][0].clone().unwrap_or_else(|| "[]".into()))
    })?;
    cx.query(
        &format!("INSERT INTO {tmp} ({cols}) SELECT {cols} FROM json_populate_recordset(NULL::{tmp}, $1::json)"),
        &[Some(&json)],
        at,
    )?;
    Ok(tmp)
}

/// (database OID, statement) → rows the statement defines, for seeders on tables that have rows:
/// counted once per process while the database's tables, types and migrations stay as they were.
static COUNTS: super::memo::DbMemo<(String, String), u64> = super::memo::DbMemo::new();

/// (database OID, statement) → the key columns of its table and the rows it defines (JSON), for
/// `/migrate`'s check of literal-VALUES seeders: evaluated in the stand-in once per process while the
/// database's tables, types and migrations stay as they were, then compared with the real table
/// directly (one read, no DDL).
static DEFINED: super::memo::DbMemo<(String, String), Defined> = super::memo::DbMemo::new();

/// What a literal-VALUES seeder defined: its table's key columns, its rows as JSON, and how many.
#[derive(Clone)]
struct Defined {
    keys: Keys,
    rows: String,
    count: u64,
}

/// Rows a remembered evaluation may hold: past this the stand-in is used every time.
const MAX_DEFINED_JSON: usize = 64 * 1024;

/// Forgets the counts of `database` on `server` (a migration ran, or a deploy failed).
pub(crate) fn forget_counts(server: &str, database: &str) {
    COUNTS.forget(server, database);
    DEFINED.forget(server, database);
}

/// Whether what a literal-VALUES seeder defines is what it defined last time: nothing the table's
/// shape depends on changed in this deploy (see `forget_counts` for what changes between deploys).
fn same_as_last_time(cx: &Ctx<'_>, report: &DeployReport, stmt: &Statement) -> bool {
    report.types_deployed.is_empty()
        && report.extensions_installed.is_empty()
        && report.tables_created.is_empty()
        && report.migrations_applied.is_empty()
        && !cx.db_oid.is_empty()
        && !stmt.text.to_ascii_uppercase().contains("SELECT")
}

/// The condition that a seeder's row `s` is absent from the real table `real` (compared by key), and
/// a key's text. A primary key is looked up row by row in a subquery the planner keeps as one (an
/// index probe per seed row, whatever it guesses of a stand-in's size); `IS NOT DISTINCT FROM`,
/// which columns that may be NULL need, is never answered by an index, so there the planner chooses
/// how to join.
fn key_match(keys: &Keys, real: &str) -> (String, String) {
    let absent = if keys.primary {
        let cond = keys.cols.iter().map(|k| format!("r.{k} = s.{k}")).collect::<Vec<_>>().join(" AND ");
        format!("(SELECT true FROM {real} r WHERE {cond} LIMIT 1) IS NULL")
    } else {
        let cond =
            keys.cols.iter().map(|k| format!("r.{k} IS NOT DISTINCT FROM s.{k}")).collect::<Vec<_>>().join(" AND ");
        format!("NOT EXISTS (SELECT 1 FROM {real} r WHERE {cond})")
    };
    let key_text = if keys.cols.len() == 1 {
        format!("s.{}::text", keys.cols[0])
    } else {
        format!("ROW({})::text", keys.cols.iter().map(|k| format!("s.{k}")).collect::<Vec<_>>().join(", "))
    };
    (absent, key_text)
}

/// (rows defined, keys missing) from a row of (count, JSON array of key texts).
fn parse_missing(row: &[String]) -> (u64, Vec<String>) {
    let total = row.first().and_then(|c| c.parse::<u64>().ok()).unwrap_or(0);
    (total, parse_keys(row.get(1).map_or("", String::as_str)))
}

/// Key texts from a JSON array of them (SQL NULL, i.e. nothing missing, reads as empty).
fn parse_keys(json_array: &str) -> Vec<String> {
    json::parse(json_array.as_bytes())
        .ok()
        .and_then(|v| v.as_array().map(|a| a.iter().map(|k| k.as_str().unwrap_or_default().to_string()).collect()))
        .unwrap_or_default()
}

/// How many rows an INSERT defines, evaluated like [`evaluate`] but only counted: a seeder skipped
/// on a table that has rows needs no more, and this takes no temporary table.
fn count_rows(cx: &mut Ctx<'_>, t: &(String, String), n: usize, at: At<'_>) -> Result<u64, ApiError> {
    in_stand_in(cx, t, n, at, |cx, rel| {
        let rows = cx.query(&format!("SELECT count(*)::text FROM {rel}"), &[], at)?;
        Ok(rows.rows[0][0].as_deref().and_then(|c| c.parse::<u64>().ok()).unwrap_or(0))
    })
}

/// The rows an INSERT defines (count) and the keys of those the real table lacks, in key order:
/// evaluated like [`evaluate`], then compared with the real table (renamed inside the savepoint).
/// With `remember`, what the statement defined is kept and, next time, compared directly.
fn missing_keys(
    cx: &mut Ctx<'_>,
    t: &(String, String),
    n: usize,
    at: At<'_>,
    remember: bool,
) -> Result<(u64, Vec<String>), ApiError> {
    let rel = qualified(t);
    let server = cx.c.server_key();
    let stmt = at.stmt.expect("seeder statement");
    let memo_key = (cx.db_oid.clone(), stmt.text.clone());
    if let Some(d) = remember.then(|| DEFINED.get(&server, cx.db, &memo_key)).flatten() {
        let (absent, key_text) = key_match(&d.keys, &rel);
        let found = cx.rows(
            &format!(
                "SELECT json_agg(k ORDER BY k)::text FROM (SELECT {key_text} AS k \
                 FROM pg_catalog.json_populate_recordset(NULL::{rel}, $1::json) s \
                 WHERE {absent}) m"
            ),
            &[Some(&d.rows)],
            at,
        )?;
        let missing = found.into_iter().next().and_then(|mut r| r.pop()).unwrap_or_default();
        return Ok((d.count, parse_keys(&missing)));
    }
    let keys = key_columns(cx, &rel, at)?;
    let real = format!("_ssdb_seed_real_{n}");
    let real_rel = format!("{}.{real}", quote_ident(&t.0));
    let sp = cx.savepoint()?;
    let r = (|| {
        cx.exec(
            &format!(
                "ALTER TABLE {rel} RENAME TO {real}; CREATE TABLE {rel} (LIKE {real_rel} \
                 INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING GENERATED INCLUDING INDEXES)"
            ),
            at,
        )?;
        cx.run_file_stmt(Kind::MigrationFailed, at)?;
        let (absent, key_text) = key_match(&keys, &real_rel);
        let rows = cx.rows(
            &format!(
                "SELECT (SELECT count(*) FROM {rel})::text, \
                 (SELECT json_agg(k ORDER BY k)::text FROM (SELECT {key_text} AS k FROM {rel} s \
                  WHERE {absent}) m), \
                 (SELECT coalesce(json_agg(s), '[]')::text FROM {rel} s)"
            ),
            &[],
            at,
        )?;
        let row = rows.into_iter().next().unwrap_or_default();
        let (count, missing) = parse_missing(&row);
        if remember && row.get(2).is_some_and(|j| j.len() <= MAX_DEFINED_JSON) {
            let d = Defined { keys: keys.clone(), rows: row[2].clone(), count };
            DEFINED.put(&server, cx.db, memo_key.clone(), d, false);
        }
        Ok((count, missing))
    })();
    cx.rollback_to(&sp)?;
    r
}

fn is_insert(stmt: &Statement) -> bool {
    let kw = sql::leading_keywords(&stmt.text, 1);
    kw.first().is_some_and(|k| k == "INSERT")
}

/// Whether `rel` was created by the running deploy: in the tables step, or by a migration (its row
/// type was written by this transaction; an `ALTER TABLE` rewrites the table's `pg_class` row but not
/// that one).
fn new_in_this_deploy(cx: &mut Ctx<'_>, rel: &str, created_now: bool, at: At<'_>) -> Result<bool, ApiError> {
    if created_now {
        return Ok(true);
    }
    let r = cx.rows(
        &format!(
            "SELECT (t.xmin = pg_catalog.pg_current_xact_id()::xid)::text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_type t ON t.oid = c.reltype WHERE c.oid = '{}'::regclass",
            rel.replace('\'', "''")
        ),
        &[],
        at,
    )?;
    Ok(r.first().is_some_and(|row| row[0] == "true"))
}

pub(crate) fn run(
    cx: &mut Ctx<'_>,
    archive: &SchemaArchive,
    opts: &DeployOptions,
    report: &mut DeployReport,
) -> Result<(), ApiError> {
    let mut results: Vec<SeederResult> = Vec::new();
    let mut empty_at_start: HashMap<String, bool> = HashMap::new();
    let mut counter = 0usize;
    let verify = opts.seed_mode == SeedMode::Verify;
    for file in &archive.seeders {
        let mut inserted_any = false;
        let mut others = Vec::new();
        for stmt in file.statements() {
            if !is_insert(stmt) {
                others.push(stmt);
                continue;
            }
            let at = At::stmt("seeders", file, stmt);
            let t = target(cx, at)?;
            let rel = qualified(&t);
            let shown = format!("{}.{}", t.0, t.1);
            let idx = match results.iter().position(|r| r.table == shown) {
                Some(i) => i,
                None => {
                    results.push(SeederResult { table: shown.clone(), inserted: 0, skipped: 0 });
                    results.len() - 1
                }
            };
            // A table this very deploy created (a new table, or a database that never had its schema,
            // e.g. made by /admin/create-tenant) is seeded as on first creation, even on /migrate.
            let created_now = report.tables_created.iter().any(|c| *c == t.1 || *c == shown);
            let mut filling = false;
            if !verify || created_now {
                let empty = match empty_at_start.get(&rel) {
                    Some(e) => *e,
                    None => {
                        let e = cx.rows(&format!("SELECT NOT EXISTS (SELECT 1 FROM {rel})"), &[], at)?[0][0] == "t";
                        empty_at_start.insert(rel.clone(), e);
                        e
                    }
                };
                if empty {
                    let r = cx.run_file_stmt(Kind::MigrationFailed, at)?;
                    results[idx].inserted += r.rows_affected;
                    inserted_any = true;
                    continue;
                }
                // A table this deploy created that a migration of the same deploy already filled (as
                // archives written for 1.x do, which seeded at /register and migrated later): its seed
                // rows are added by key below, so the next /migrate of the same archive finds them.
                if !new_in_this_deploy(cx, &rel, created_now, at)? || key_columns(cx, &rel, at)?.cols.is_empty() {
                    counter += 1;
                    // Rows given as literal VALUES count the same as last time while nothing the
                    // table's shape depends on changed (see `forget_counts`).
                    let still = same_as_last_time(cx, report, stmt);
                    let server = cx.c.server_key();
                    let key = (cx.db_oid.clone(), stmt.text.clone());
                    let known = if still { COUNTS.get(&server, cx.db, &key) } else { None };
                    let n = match known {
                        Some(n) => n,
                        None => {
                            let n = count_rows(cx, &t, counter, at)?;
                            if still {
                                COUNTS.put(&server, cx.db, key, n, false);
                            }
                            n
                        }
                    };
                    results[idx].skipped += n;
                    continue;
                }
                filling = true;
            }
            counter += 1;
            if !opts.reseed && !filling {
                // Only checked: the stand-in's rows are compared with the real table inside the
                // savepoint, without a temporary table.
                let remember = same_as_last_time(cx, report, stmt);
                let (total, missing) = missing_keys(cx, &t, counter, at, remember)?;
                if !missing.is_empty() {
                    match report.seed_validation.missing.iter_mut().find(|m| m.table == shown) {
                        Some(m) => m.keys.extend(missing.iter().cloned()),
                        None => report
                            .seed_validation
                            .missing
                            .push(MissingSeedRows { table: shown.clone(), keys: missing.clone() }),
                    }
                }
                results[idx].skipped += total - missing.len() as u64;
                continue;
            }
            let tmp = evaluate(cx, &t, counter, at)?;
            let keys = key_columns(cx, &rel, at)?;
            let (absent, key_text) = key_match(&keys, &rel);
            let total = cx.rows(&format!("SELECT count(*) FROM {tmp}"), &[], at)?[0][0].parse::<u64>().unwrap_or(0);
            let missing: Vec<String> = cx
                .rows(&format!("SELECT {key_text} FROM {tmp} s WHERE {absent} ORDER BY 1"), &[], at)?
                .into_iter()
                .map(|mut r| r.remove(0))
                .collect();
            if !missing.is_empty() && (opts.reseed || filling) {
                let cols = insertable_columns(cx, &rel, at)?.join(", ");
                let scols = cols.split(", ").map(|c| format!("s.{c}")).collect::<Vec<_>>().join(", ");
                let r = cx.query(
                    &format!("INSERT INTO {rel} ({cols}) SELECT {scols} FROM {tmp} s WHERE {absent}"),
                    &[],
                    at,
                )?;
                results[idx].inserted += r.rows_affected;
                if !filling {
                    report.seed_validation.reseeded += r.rows_affected;
                }
                cx.log_change("seed", &shown, if filling { "insert-missing" } else { "reseed" }, None)?;
            } else if !missing.is_empty() {
                match report.seed_validation.missing.iter_mut().find(|m| m.table == shown) {
                    Some(m) => m.keys.extend(missing.iter().cloned()),
                    None => report
                        .seed_validation
                        .missing
                        .push(MissingSeedRows { table: shown.clone(), keys: missing.clone() }),
                }
            }
            results[idx].skipped += total - missing.len() as u64;
            cx.exec(&format!("DROP TABLE {tmp}"), at)?;
        }
        if inserted_any {
            for stmt in others {
                cx.run_file_stmt(Kind::MigrationFailed, At::stmt("seeders", file, stmt))?;
            }
        }
    }
    for r in &results {
        if r.inserted > 0 && !verify {
            cx.log_change("seed", &r.table, "insert", None)?;
        }
    }
    report.seeders = results;
    if verify {
        report.seed_validation.checked = true;
        if !report.seed_validation.missing.is_empty() && !opts.force {
            let list: Vec<String> =
                report.seed_validation.missing.iter().map(|m| format!("{} {}", m.table, m.keys.join(", "))).collect();
            return Err(cx.fail(
                Kind::SeedDataMissing,
                At::step("seeders"),
                format!("rows defined by seeders are missing: {}", list.join("; ")),
            ));
        }
    }
    Ok(())
}
