//! The tables step: declarative `CREATE TABLE` files are read by PostgreSQL itself, then compared
//! with the live tables.
//!
//! How: all table-file statements run in a scratch schema put first on `search_path` (the only
//! "rewrite"), retrying statements that fail with an undefined relation or type until no progress
//! is made — that yields a foreign-key order (ties in file order, files in name order) and reports a
//! cycle as the unresolvable statement's own error (declare cycle-closing foreign keys in a
//! migration). The scratch catalog (`format_type`, `attnotnull`, defaults) is read into memory and
//! the scratch schema dropped. Missing tables are then created by running their file's statements
//! for real in that order. What a scratch run read is remembered per database (OID) for as long as the
//! type, extension and table files, the path and the database's migrations stay the same, so an
//! unchanged redeploy does not run it again.
//!
//! Limits (documented choices): names are compared in the schema that is current for the
//! deploy session (`current_schema()`, normally `public`); a statement with a schema-qualified table
//! name cannot be diverted into the scratch schema, so it creates the table directly when missing
//! and is otherwise left alone (SQLSTATE 42P07) and not compared. Index, constraint and comment
//! changes on existing tables are not diffed: they belong in migrations.
//!
//! After the migrations ran, [`validate`] classifies every remaining difference. New nullable or
//! defaulted columns are added automatically (`ALTER TABLE … ADD COLUMN`, recorded as applied in
//! the `safe` list); other safe differences (widening, dropping NOT NULL) are only reported, since
//! changing a column type rewrites the table and deserves a migration.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};

use super::archive::SchemaArchive;
use super::context::{At, Change, Ctx, DeployReport, quote_ident};
use super::sql::{self, Statement};
use super::tracking;
use crate::error::{ApiError, Kind};
use crate::pg::dberror::PgError;

const SCRATCH: &str = "_ssdb_scratch_tables";

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Column {
    pub name: String,
    /// `format_type` output.
    pub ty: String,
    pub not_null: bool,
    pub default: Option<String>,
}

#[derive(Clone, Debug)]
pub(crate) struct DeclaredTable {
    pub name: String,
    pub columns: Vec<Column>,
    /// Created by this deploy, so identical by construction.
    pub created: bool,
    /// The table file that declares it (`tables/x.sql`), named in drift messages.
    pub file: String,
}

/// What the table files declare, as PostgreSQL read it.
pub(crate) struct Declared {
    /// Schema the declarations are compared in.
    pub schema: String,
    pub tables: Vec<DeclaredTable>,
    /// Tracked table names that no file declares any more.
    pub removed: Vec<String>,
}

/// One statement that succeeded in the scratch run.
struct Ran<'a> {
    file: usize,
    stmt: &'a Statement,
    created: Vec<String>,
}

fn scratch_tables(cx: &mut Ctx<'_>) -> Result<Vec<String>, ApiError> {
    Ok(cx
        .rows(
            &format!(
                "SELECT relname::text FROM pg_class WHERE relnamespace = '{SCRATCH}'::regnamespace \
                 AND relkind IN ('r', 'p') ORDER BY relname"
            ),
            &[],
            At::step("tables"),
        )?
        .into_iter()
        .map(|mut r| r.remove(0))
        .collect())
}

const COLUMNS: &str = "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull::text, \
     pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a \
     LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
     WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum";

fn columns(cx: &mut Ctx<'_>, rel: &str) -> Result<Vec<Column>, ApiError> {
    Ok(cx
        .read(COLUMNS, &[Some(rel)], At::step("tables"), Kind::MigrationFailed, 0)?
        .into_iter()
        .map(|r| Column {
            name: r[0].clone().unwrap_or_default(),
            ty: r[1].clone().unwrap_or_default(),
            not_null: r[2].as_deref() == Some("true"),
            default: r[3].clone(),
        })
        .collect())
}

pub(crate) fn declare_and_create(
    cx: &mut Ctx<'_>,
    archive: &SchemaArchive,
    report: &mut DeployReport,
) -> Result<Declared, ApiError> {
    let at = At::step("tables");
    let r = cx.rows("SELECT current_setting('search_path'), current_schema()::text", &[], at)?;
    let (path, schema) = (r[0][0].clone(), r[0][1].clone());
    let tracked = tracking::tracked(cx, "tables")?;
    if archive.tables.is_empty() {
        return Ok(Declared { schema, tables: Vec::new(), removed: Vec::new() });
    }
    let files: Vec<&[Statement]> = archive.tables.iter().map(|f| f.statements()).collect();
    // The scratch run depends on the files, the path, and the types and extensions they may use: when
    // none of those changed, what it read last time is what it would read now.
    let unchanged_types = report.types_deployed.is_empty() && report.extensions_installed.is_empty();
    let key = scratch_key(cx, archive, &path, &schema);
    let server = cx.c.server_key();
    let cached = if unchanged_types { key.as_ref().and_then(|k| SCRATCH_RUNS.get(&server, cx.db, k)) } else { None };
    let (ran_at, mut tables) = match cached {
        Some(c) => c,
        None => {
            // A run that is remembered is skipped by the next deploy: what is read after it is what
            // that deploy reads at this point.
            let remembered = unchanged_types && key.is_some();
            let going = remembered && cx.ahead.pause();
            let fresh = scratch_run(cx, archive, &files, &path)?;
            cx.ahead.resume(going, cx.c.round_trips());
            if let (true, Some(k)) = (unchanged_types, key) {
                SCRATCH_RUNS.put(&server, cx.db, k, fresh.clone(), true);
            }
            fresh
        }
    };
    let ran: Vec<Ran<'_>> = ran_at
        .into_iter()
        .filter_map(|(file, at, created)| Some(Ran { file, stmt: files.get(file)?.get(at)?, created }))
        .collect();
    let mut owner: HashMap<String, usize> = HashMap::new();
    for r in &ran {
        for t in &r.created {
            owner.insert(t.clone(), r.file);
        }
    }

    let mut missing: HashSet<String> = HashSet::new();
    for t in &tables {
        let rel = format!("{}.{}", quote_ident(&schema), quote_ident(&t.name));
        let exists = cx.rows("SELECT to_regclass($1) IS NOT NULL", &[Some(&rel)], at)?;
        if exists[0][0] != "t" {
            missing.insert(t.name.clone());
        }
    }
    // A file's extra statements (indexes, comments) run only when every table it declares is new.
    let new_files: HashSet<usize> = (0..archive.tables.len())
        .filter(|i| {
            let mine: Vec<&String> = owner.iter().filter(|(_, f)| *f == i).map(|(t, _)| t).collect();
            !mine.is_empty() && mine.iter().all(|t| missing.contains(*t))
        })
        .collect();
    for r in &ran {
        let run = if r.created.is_empty() {
            new_files.contains(&r.file)
        } else {
            r.created.iter().all(|t| missing.contains(t))
        };
        if !run {
            continue;
        }
        let file = &archive.tables[r.file];
        cx.run_file_stmt(Kind::MigrationFailed, At::stmt("tables", file, r.stmt))?;
        for t in &r.created {
            let ck = sql::checksum(&sql::normalize_for_checksum(&r.stmt.text));
            tracking::upsert(cx, "tables", t, &ck, &file.path)?;
            cx.log_change("table", t, "create", Some(&ck))?;
            report.tables_created.push(t.clone());
            report.schema_validation.safe.push(Change {
                table: t.clone(),
                column: None,
                description: "new table".into(),
                applied: true,
            });
        }
    }
    for r in &ran {
        for t in &r.created {
            if !missing.contains(t) {
                let ck = sql::checksum(&sql::normalize_for_checksum(&r.stmt.text));
                if tracked.get(t).is_none_or(|(old, _)| *old != ck) {
                    tracking::upsert(cx, "tables", t, &ck, &archive.tables[r.file].path)?;
                }
            }
        }
    }
    for t in &mut tables {
        t.created = missing.contains(&t.name);
    }
    let declared: HashSet<&String> = tables.iter().map(|t| &t.name).collect();
    let mut removed: Vec<String> = tracked.keys().filter(|t| !declared.contains(t)).cloned().collect();
    removed.sort();
    Ok(Declared { schema, tables, removed })
}

/// Statements that created tables in the scratch run, as (file, statement index, tables created),
/// in the order they succeeded; and the tables declared, as PostgreSQL read them.
type ScratchRun = (Vec<(usize, usize, Vec<String>)>, Vec<DeclaredTable>);

/// (the database's OID, search path, current schema, digest of the type, extension and table files)
/// → what the scratch run read; one entry a database.
type ScratchKey = (String, String, String, String);

static SCRATCH_RUNS: super::memo::DbMemo<ScratchKey, ScratchRun> = super::memo::DbMemo::new();

fn scratch_key(cx: &Ctx<'_>, archive: &SchemaArchive, path: &str, schema: &str) -> Option<ScratchKey> {
    if cx.db_oid.is_empty() {
        return None;
    }
    let mut h = Sha256::new();
    for f in archive.extensions.iter().chain(&archive.types).chain(&archive.tables) {
        for part in [f.path.as_bytes(), f.content.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    let digest = crate::security::random::hex(&h.finalize());
    Some((cx.db_oid.clone(), path.to_string(), schema.to_string(), digest))
}

/// Makes the next deploy of `database` (on the server `client` is on) count seed rows and run the table files in the
/// scratch schema again: after a migration (it may have changed a type or function the files use) or
/// a failed deploy.
pub(crate) fn forget_scratch_run(client: &crate::pg::blocking::Client, database: &str) {
    let server = client.server_key();
    super::seeders::forget_counts(&server, database);
    SCRATCH_RUNS.forget(&server, database);
}

/// Runs the table files in the scratch schema (see the module docs) and reads what they declare.
fn scratch_run(
    cx: &mut Ctx<'_>,
    archive: &SchemaArchive,
    files: &[&[Statement]],
    path: &str,
) -> Result<ScratchRun, ApiError> {
    let at = At::step("tables");
    cx.exec(
        &format!("DROP SCHEMA IF EXISTS {SCRATCH} CASCADE; CREATE SCHEMA {SCRATCH}; SET LOCAL search_path TO {SCRATCH}, {path}"),
        at,
    )?;
    let mut pending: Vec<(usize, usize, &Statement)> =
        files.iter().enumerate().flat_map(|(i, v)| v.iter().enumerate().map(move |(j, s)| (i, j, s))).collect();
    let mut ran: Vec<(usize, usize, Vec<String>)> = Vec::new();
    let mut known: HashSet<String> = HashSet::new();
    loop {
        let mut progress = false;
        let mut retry = Vec::new();
        let mut last_err = None;
        for (i, j, stmt) in pending {
            let sp = cx.savepoint()?;
            match cx.c.query(&stmt.text, &[]) {
                Ok(_) => {
                    cx.check_tx(At::stmt("tables", &archive.tables[i], stmt))?;
                    cx.release(&sp)?;
                    let now = scratch_tables(cx)?;
                    let created: Vec<String> = now.into_iter().filter(|t| known.insert(t.clone())).collect();
                    ran.push((i, j, created));
                    progress = true;
                }
                // Qualified name of a table that exists: not ours to compare (see module docs).
                Err(PgError::Db(d)) if d.code == "42P07" => cx.rollback_to(&sp)?,
                Err(PgError::Db(d)) if matches!(d.code.as_str(), "42P01" | "42704" | "3F000") => {
                    cx.rollback_to(&sp)?;
                    retry.push((i, j, stmt));
                    last_err = Some((i, stmt, PgError::Db(d)));
                }
                Err(e) => {
                    let err = cx.pg_error(Kind::MigrationFailed, At::stmt("tables", &archive.tables[i], stmt), e, 0);
                    return Err(err);
                }
            }
        }
        pending = retry;
        if pending.is_empty() {
            break;
        }
        if !progress {
            let (i, stmt, e) = last_err.expect("a pending statement failed");
            let mut err = cx.pg_error(Kind::MigrationFailed, At::stmt("tables", &archive.tables[i], stmt), e, 0);
            err.message.push_str(
                " (a foreign-key cycle or a reference to a table no file declares; close cycles with ALTER TABLE in a migration)",
            );
            return Err(err);
        }
    }
    let mut tables = Vec::new();
    for (file, _, created) in &ran {
        for t in created {
            let cols = columns(cx, &format!("{SCRATCH}.{}", quote_ident(t)))?;
            let file = archive.tables.get(*file).map(|f| f.path.clone()).unwrap_or_default();
            tables.push(DeclaredTable { name: t.clone(), columns: cols, created: false, file });
        }
    }
    cx.exec(&format!("SET LOCAL search_path TO {path}; DROP SCHEMA {SCRATCH} CASCADE"), at)?;
    Ok((ran, tables))
}

/// How a column type change is classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Safe,
    Dataloss,
    Incompatible,
}

fn int_rank(t: &str) -> Option<u8> {
    match t {
        "smallint" => Some(1),
        "integer" => Some(2),
        "bigint" => Some(3),
        _ => None,
    }
}

/// `None` = unbounded (text, varchar without a limit).
fn text_len(t: &str) -> Option<Option<u32>> {
    if t == "text" || t == "character varying" {
        return Some(None);
    }
    let n = t.strip_prefix("character varying(")?.strip_suffix(')')?;
    n.parse().ok().map(Some)
}

fn numeric_ps(t: &str) -> Option<Option<(i64, i64)>> {
    if t == "numeric" {
        return Some(None);
    }
    let inner = t.strip_prefix("numeric(")?.strip_suffix(')')?;
    let (p, s) = inner.split_once(',').unwrap_or((inner, "0"));
    Some(Some((p.trim().parse().ok()?, s.trim().parse().ok()?)))
}

/// Classifies changing a column from `live` to `declared` (both `format_type` text).
pub(crate) fn classify_type_change(live: &str, declared: &str) -> Class {
    let widen = |ok: bool| if ok { Class::Safe } else { Class::Dataloss };
    if let (Some(a), Some(b)) = (int_rank(live), int_rank(declared)) {
        return widen(b > a);
    }
    if let (Some(a), Some(b)) = (text_len(live), text_len(declared)) {
        return match (a, b) {
            (_, None) => Class::Safe,
            (None, Some(_)) => Class::Dataloss,
            (Some(a), Some(b)) => widen(b >= a),
        };
    }
    if let (Some(a), Some(b)) = (numeric_ps(live), numeric_ps(declared)) {
        return match (a, b) {
            (_, None) => Class::Safe,
            (None, Some(_)) => Class::Dataloss,
            (Some((p1, s1)), Some((p2, s2))) => widen(s2 >= s1 && p2 - s2 >= p1 - s1),
        };
    }
    match (live, declared) {
        ("real", "double precision") => Class::Safe,
        ("double precision", "real") => Class::Dataloss,
        _ => Class::Incompatible,
    }
}

fn change(table: &str, column: Option<&str>, description: String, applied: bool) -> Change {
    Change { table: table.to_string(), column: column.map(str::to_string), description, applied }
}

/// Compares declarations with the live tables after the migrations ran; adds safe new columns.
pub(crate) fn validate(cx: &mut Ctx<'_>, declared: &Declared, report: &mut DeployReport) -> Result<(), ApiError> {
    let at = At::step("schema_validation");
    for name in &declared.removed {
        let rel = format!("{}.{}", quote_ident(&declared.schema), quote_ident(name));
        let exists = cx.rows("SELECT to_regclass($1) IS NOT NULL", &[Some(&rel)], at)?;
        if exists[0][0] == "t" {
            report.schema_validation.dataloss.push(change(
                name,
                None,
                "table no longer declared in the table files".into(),
                false,
            ));
        }
        if cx.force || exists[0][0] != "t" {
            tracking::forget(cx, "tables", name)?;
        }
    }
    for t in &declared.tables {
        if t.created {
            continue;
        }
        let rel = format!("{}.{}", quote_ident(&declared.schema), quote_ident(&t.name));
        let live = columns(cx, &rel)?;
        for col in &t.columns {
            let Some(l) = live.iter().find(|l| l.name == col.name) else {
                let v = &mut report.schema_validation;
                if col.default.as_deref().is_some_and(|d| d.contains("nextval(")) {
                    v.incompatible.push(change(
                        &t.name,
                        Some(&col.name),
                        "new column with a sequence default (serial): add it in a migration".into(),
                        false,
                    ));
                } else if col.not_null && col.default.is_none() {
                    v.dataloss.push(change(
                        &t.name,
                        Some(&col.name),
                        format!("new NOT NULL column without default ({})", col.ty),
                        false,
                    ));
                } else {
                    let mut sql = format!("ALTER TABLE {rel} ADD COLUMN {} {}", quote_ident(&col.name), col.ty);
                    if let Some(d) = &col.default {
                        sql.push_str(&format!(" DEFAULT {d}"));
                    }
                    if col.not_null {
                        sql.push_str(" NOT NULL");
                    }
                    cx.exec(&sql, at)?;
                    cx.log_change("column", &format!("{}.{}", t.name, col.name), "add", None)?;
                    report.schema_validation.safe.push(change(
                        &t.name,
                        Some(&col.name),
                        format!("new column {}", col.ty),
                        true,
                    ));
                }
                continue;
            };
            let v = &mut report.schema_validation;
            if l.ty != col.ty {
                let d = format!("type {} -> {}", l.ty, col.ty);
                match classify_type_change(&l.ty, &col.ty) {
                    Class::Safe => v.safe.push(change(&t.name, Some(&col.name), d, false)),
                    Class::Dataloss => v.dataloss.push(change(&t.name, Some(&col.name), d, false)),
                    Class::Incompatible => v.incompatible.push(change(&t.name, Some(&col.name), d, false)),
                }
            }
            if l.not_null && !col.not_null {
                v.safe.push(change(&t.name, Some(&col.name), "drop NOT NULL".into(), false));
            } else if !l.not_null && col.not_null {
                v.dataloss.push(change(&t.name, Some(&col.name), "add NOT NULL".into(), false));
            }
        }
        let v = &mut report.schema_validation;
        for l in &live {
            if !t.columns.iter().any(|c| c.name == l.name) {
                // Most often a migration just added it and the table file was not updated yet; or
                // the file dropped it. Either way the fix is in that file, or force to keep it as is.
                v.dataloss.push(change(
                    &t.name,
                    Some(&l.name),
                    format!(
                        "column exists in the database but {} does not declare it: declare it there (a \
                         migration that adds a column needs it in the table file too), or deploy with \
                         force=true to keep it undeclared (force never drops it)",
                        if t.file.is_empty() { "the table file" } else { t.file.as_str() }
                    ),
                    false,
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Class, classify_type_change as c};

    #[test]
    fn type_change_classes() {
        assert_eq!(c("integer", "bigint"), Class::Safe);
        assert_eq!(c("bigint", "integer"), Class::Dataloss);
        assert_eq!(c("character varying(50)", "character varying(100)"), Class::Safe);
        assert_eq!(c("character varying(100)", "character varying(50)"), Class::Dataloss);
        assert_eq!(c("character varying(100)", "text"), Class::Safe);
        assert_eq!(c("text", "character varying(10)"), Class::Dataloss);
        assert_eq!(c("numeric(10,2)", "numeric(12,2)"), Class::Safe);
        assert_eq!(c("numeric(12,2)", "numeric(10,2)"), Class::Dataloss);
        assert_eq!(c("integer", "text"), Class::Incompatible);
        assert_eq!(c("timestamp without time zone", "timestamp with time zone"), Class::Incompatible);
    }
}
