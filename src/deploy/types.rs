//! The types step: `CREATE TYPE` / `CREATE DOMAIN` statements, each tracked by its catalog name and
//! the checksum of its normalised text.
//!
//! A new statement is simply executed; the type it created is read back from `pg_type`. When the
//! type already exists (SQLSTATE 42710) the statement is executed again in a scratch schema placed
//! first on `search_path` (so only unqualified names can be compared) and the two catalog entries are
//! compared: identical → only the tracking row changes; an enum whose old labels are a prefix of the
//! new ones → `ALTER TYPE … ADD VALUE` for the new labels; anything else is refused, since changing
//! a type in use is a migration's job.
//!
//! PostgreSQL ≥ 12 accepts `ADD VALUE` inside the deploy transaction, but a value added there cannot
//! be *used* before the transaction commits (SQLSTATE 55P04): seeders or migrations of the same
//! deploy must not insert the new label; deploy again (or use a later migration) for that.

use std::collections::HashSet;

use super::archive::SchemaArchive;
use super::context::{At, Ctx, DeployReport, quote_ident, quote_literal};
use super::sql::{self, Statement};
use super::tracking;
use crate::error::{ApiError, Kind};
use crate::pg::dberror::PgError;

const SCRATCH: &str = "_ssdb_scratch_types";

fn creates_type(stmt: &str) -> bool {
    let kw = sql::leading_keywords(stmt, 2);
    kw.len() == 2 && kw[0] == "CREATE" && (kw[1] == "TYPE" || kw[1] == "DOMAIN")
}

const SNAPSHOT: &str = "SELECT t.oid::text || ':' || t.xmin::text FROM pg_type t \
     WHERE t.typnamespace <> 'pg_catalog'::regnamespace AND t.typnamespace <> 'information_schema'::regnamespace";

fn snapshot(cx: &mut Ctx<'_>) -> Result<HashSet<String>, ApiError> {
    Ok(cx
        .rows_before_write(SNAPSHOT, &[], At::step("types"))?
        .into_iter()
        .map(|mut r| r.pop().unwrap_or_default())
        .collect())
}

/// Qualified names of the types created since `before`, leaving out the implicit array types.
fn created_since(cx: &mut Ctx<'_>, before: &HashSet<String>) -> Result<Vec<String>, ApiError> {
    let after = snapshot(cx)?;
    let mut out = Vec::new();
    for key in after.difference(before) {
        let oid = key.split(':').next().unwrap_or_default().to_string();
        let rows = cx.rows(
            "SELECT format('%I.%I', n.nspname, t.typname) FROM pg_type t \
             JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE t.oid = $1::oid AND NOT EXISTS (SELECT 1 FROM pg_type o WHERE o.typarray = t.oid)",
            &[Some(&oid)],
            At::step("types"),
        )?;
        out.extend(rows.into_iter().map(|mut r| r.remove(0)));
    }
    out.sort();
    Ok(out)
}

/// Everything that defines a type apart from its name and schema, as text.
const FINGERPRINT: &str = "SELECT t.typtype::text || '|' || CASE t.typtype \
   WHEN 'e' THEN (SELECT string_agg(quote_literal(enumlabel), ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid) \
   WHEN 'c' THEN (SELECT string_agg(quote_ident(attname) || ' ' || format_type(atttypid, atttypmod), ',' ORDER BY attnum) \
                  FROM pg_attribute WHERE attrelid = t.typrelid AND attnum > 0 AND NOT attisdropped) \
   WHEN 'd' THEN format_type(t.typbasetype, t.typtypmod) || ' ' || t.typnotnull::text || ' ' \
                 || coalesce(pg_get_expr(t.typdefaultbin, 0), '') || ' ' \
                 || coalesce((SELECT string_agg(pg_get_constraintdef(c.oid), ',' ORDER BY pg_get_constraintdef(c.oid)) \
                              FROM pg_constraint c WHERE c.contypid = t.oid), '') \
   ELSE coalesce(t.typinput::text, '') END \
   FROM pg_type t WHERE t.oid = $1::oid";

fn enum_labels(cx: &mut Ctx<'_>, oid: &str) -> Result<Vec<String>, ApiError> {
    Ok(cx
        .rows(
            "SELECT enumlabel::text FROM pg_enum WHERE enumtypid = $1::oid ORDER BY enumsortorder",
            &[Some(oid)],
            At::step("types"),
        )?
        .into_iter()
        .map(|mut r| r.remove(0))
        .collect())
}

pub(crate) fn deploy_types(
    cx: &mut Ctx<'_>,
    archive: &SchemaArchive,
    report: &mut DeployReport,
) -> Result<(), ApiError> {
    let tracked = tracking::tracked(cx, "types")?;
    let known: HashSet<&str> = tracked.values().map(|(ck, _)| ck.as_str()).collect();
    for file in &archive.types {
        let mut others: Vec<&Statement> = Vec::new();
        let mut changed = false;
        for (stmt, ck) in file.statements().iter().zip(file.statement_checksums()) {
            if !creates_type(&stmt.text) {
                others.push(stmt);
                continue;
            }
            let at = At::stmt("types", file, stmt);
            if known.contains(ck.as_str()) {
                continue;
            }
            let before = snapshot(cx)?;
            let sp = cx.savepoint()?;
            match cx.c.query(&stmt.text, &[]) {
                Ok(_) => {
                    cx.check_tx(at)?;
                    cx.release(&sp)?;
                    for name in created_since(cx, &before)? {
                        tracking::upsert(cx, "types", &name, ck, &file.path)?;
                        cx.log_change("type", &name, "create", Some(ck))?;
                        report.types_deployed.push(name);
                    }
                    changed = true;
                }
                Err(PgError::Db(d)) if d.code == "42710" => {
                    cx.rollback_to(&sp)?;
                    if let Some(name) = alter_existing(cx, at, ck)? {
                        tracking::upsert(cx, "types", &name, ck, &file.path)?;
                        report.types_deployed.push(name);
                        changed = true;
                    }
                }
                Err(e) => return Err(cx.pg_error(Kind::MigrationFailed, at, e, 0)),
            }
        }
        if changed {
            for stmt in others {
                cx.run_file_stmt(Kind::MigrationFailed, At::stmt("types", file, stmt))?;
            }
        }
    }
    Ok(())
}

/// The statement names a type that exists already: compare it through a scratch copy. Returns the
/// type's name when it was altered (or only re-tracked), `None` when nothing was needed.
fn alter_existing(cx: &mut Ctx<'_>, at: At<'_>, ck: &str) -> Result<Option<String>, ApiError> {
    let stmt = at.stmt.expect("type statement");
    let path = cx.rows("SELECT current_setting('search_path')", &[], at)?[0][0].clone();
    cx.exec(
        &format!("DROP SCHEMA IF EXISTS {SCRATCH} CASCADE; CREATE SCHEMA {SCRATCH}; SET LOCAL search_path TO {SCRATCH}, {path}"),
        at,
    )?;
    let result = (|| {
        if let Err(e) = cx.c.query(&stmt.text, &[]) {
            if e.sqlstate() == Some("42710") {
                return Err(cx.fail(
                    Kind::MigrationFailed,
                    at,
                    "this schema-qualified type exists with another definition; changing it needs a migration",
                ));
            }
            return Err(cx.pg_error(Kind::MigrationFailed, at, e, 0));
        }
        let rows = cx.rows(
            &format!(
                "SELECT t.oid::text, t.typname::text FROM pg_type t WHERE t.typnamespace = '{SCRATCH}'::regnamespace \
                 AND NOT EXISTS (SELECT 1 FROM pg_type o WHERE o.typarray = t.oid) ORDER BY t.oid LIMIT 1"
            ),
            &[],
            at,
        )?;
        let Some(row) = rows.into_iter().next() else {
            return Err(cx.fail(Kind::MigrationFailed, at, "the statement created no type"));
        };
        let (new_oid, typname) = (row[0].clone(), row[1].clone());
        let real = cx.rows(
            &format!(
                "SELECT t.oid::text, format('%I.%I', n.nspname, t.typname) FROM pg_type t \
                 JOIN pg_namespace n ON n.oid = t.typnamespace \
                 WHERE t.typname = $1 AND n.nspname <> '{SCRATCH}' \
                 ORDER BY array_position(current_schemas(false), n.nspname::text) NULLS LAST LIMIT 1"
            ),
            &[Some(&typname)],
            at,
        )?;
        let Some(real) = real.into_iter().next() else {
            return Err(cx.fail(Kind::MigrationFailed, at, format!("type {typname} not found")));
        };
        let (old_oid, name) = (real[0].clone(), real[1].clone());
        let fp_new = cx.rows(FINGERPRINT, &[Some(&new_oid)], at)?[0][0].clone();
        let fp_old = cx.rows(FINGERPRINT, &[Some(&old_oid)], at)?[0][0].clone();
        if fp_new == fp_old {
            return Ok((name, Vec::new()));
        }
        if fp_new.starts_with("e|") && fp_old.starts_with("e|") {
            let new_labels = enum_labels(cx, &new_oid)?;
            let old_labels = enum_labels(cx, &old_oid)?;
            if new_labels.len() > old_labels.len() && new_labels.starts_with(&old_labels) {
                return Ok((name, new_labels[old_labels.len()..].to_vec()));
            }
        }
        Err(cx.fail(
            Kind::MigrationFailed,
            at,
            format!(
                "type {name} changed in a way the deployer does not apply (only appending enum values is automatic); write a migration for it"
            ),
        ))
    })();
    cx.exec(&format!("SET LOCAL search_path TO {path}; DROP SCHEMA IF EXISTS {SCRATCH} CASCADE"), at)?;
    let (name, added) = result?;
    for label in &added {
        // `name` is already quoted by format('%I.%I').
        cx.exec(&format!("ALTER TYPE {name} ADD VALUE {}", quote_literal(label)), at)?;
        cx.log_change("type", &name, &format!("add-value {label}"), Some(ck))?;
    }
    if added.is_empty() {
        cx.log_change("type", &name, "retrack", Some(ck))?;
    }
    let _ = quote_ident;
    Ok(Some(name))
}

#[cfg(test)]
mod tests {
    #[test]
    fn classifies_type_statements() {
        assert!(super::creates_type("CREATE TYPE s AS ENUM ('a')"));
        assert!(super::creates_type("create domain email as text"));
        assert!(!super::creates_type("COMMENT ON TYPE s IS 'x'"));
    }
}
