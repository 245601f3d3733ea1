//! The functions step: creates, replaces, skips and drops the archive's functions and procedures.
//!
//! A routine's identity (schema, name, input argument types) is never parsed from the file: the
//! statement is executed and the catalog row it created or rewrote is found by comparing
//! `pg_proc`'s `(oid, xmin)` pairs before and after (even `CREATE OR REPLACE` of an identical body
//! writes a new row version). Unchanged statements are recognised by checksum against the tracking
//! table and nothing is executed for them. Statements of a function file that create no routine
//! (`COMMENT ON`, `GRANT`, …) run only when some routine of the same file was (re)created.

use std::collections::{HashMap, HashSet};

use super::archive::SchemaArchive;
use super::context::{At, Ctx, DeployReport};
use super::sql::{self, Statement};
use super::tracking;
use crate::error::{ApiError, Kind};
use crate::pg::dberror::PgError;

/// `Some(needs_or_replace)` when the statement creates a function or procedure.
fn creates_routine(stmt: &str) -> Option<bool> {
    let kw = sql::leading_keywords(stmt, 4);
    let k: Vec<&str> = kw.iter().map(String::as_str).collect();
    match k.as_slice() {
        ["CREATE", "FUNCTION" | "PROCEDURE", ..] => Some(true),
        ["CREATE", "OR", "REPLACE", "FUNCTION" | "PROCEDURE"] => Some(false),
        _ => None,
    }
}

const SNAPSHOT: &str = "SELECT oid::text || ':' || xmin::text FROM pg_proc \
     WHERE pronamespace <> 'pg_catalog'::regnamespace AND pronamespace <> 'information_schema'::regnamespace";

fn snapshot(cx: &mut Ctx<'_>) -> Result<HashSet<String>, ApiError> {
    Ok(cx
        .rows_before_write(SNAPSHOT, &[], At::step("functions"))?
        .into_iter()
        .map(|mut r| r.pop().unwrap_or_default())
        .collect())
}

/// Signature and kind (`f`, `p`, …) of the routines whose catalog rows changed since `before`.
fn written_since(cx: &mut Ctx<'_>, before: &HashSet<String>) -> Result<Vec<(String, String)>, ApiError> {
    let after = snapshot(cx)?;
    let mut out = Vec::new();
    for key in after.difference(before) {
        let oid = key.split(':').next().unwrap_or_default().to_string();
        let rows = cx.rows(
            "SELECT format('%I.%I(%s)', n.nspname, p.proname, oidvectortypes(p.proargtypes)), p.prokind::text \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = $1::oid",
            &[Some(&oid)],
            At::step("functions"),
        )?;
        if let Some(r) = rows.into_iter().next() {
            out.push((r[0].clone(), r[1].clone()));
        }
    }
    out.sort();
    Ok(out)
}

/// Drops a routine; a drop blocked by dependants is refused with PostgreSQL's list of them.
fn drop_routine(cx: &mut Ctx<'_>, signature: &str, at: At<'_>) -> Result<(), ApiError> {
    match cx.c.batch_execute(&format!("DROP ROUTINE {signature}")) {
        Ok(()) => Ok(()),
        Err(PgError::Db(d)) if d.code == "2BP01" => {
            let dependants = d.detail.clone().unwrap_or_default().replace('\n', "; ");
            let msg = format!(
                "cannot drop {signature}: other objects depend on it ({dependants}); change or drop them in a migration first"
            );
            Err(cx
                .pg_error(Kind::FunctionDeployFailed, at, PgError::Db(d), 0)
                .with_cause("dependants")
                .with_message(msg))
        }
        Err(e) => Err(cx.pg_error(Kind::FunctionDeployFailed, at, e, 0)),
    }
}

trait WithMessage {
    fn with_message(self, msg: String) -> Self;
}

impl WithMessage for ApiError {
    fn with_message(mut self, msg: String) -> Self {
        self.message = msg;
        self
    }
}

pub(crate) fn deploy_functions(
    cx: &mut Ctx<'_>,
    archive: &SchemaArchive,
    report: &mut DeployReport,
) -> Result<(), ApiError> {
    let tracked = tracking::tracked_functions(cx)?;
    // Checksum → the first existing tracked routine with it (what a scan in signature order finds).
    let mut by_checksum: HashMap<&str, &tracking::TrackedFunction> = HashMap::with_capacity(tracked.len());
    for t in tracked.iter().filter(|t| t.exists) {
        by_checksum.entry(t.checksum.as_str()).or_insert(t);
    }
    let mut seen: HashSet<String> = HashSet::new();
    for file in &archive.functions {
        let mut others: Vec<&Statement> = Vec::new();
        let mut file_changed = false;
        for (stmt, ck) in file.statements().iter().zip(file.statement_checksums()) {
            let Some(add_or_replace) = creates_routine(&stmt.text) else {
                others.push(stmt);
                continue;
            };
            let at = At::stmt("functions", file, stmt);
            let ck = ck.as_str();
            if let Some(t) = by_checksum.get(ck) {
                seen.insert(t.signature.clone());
                report.functions_skipped += 1;
                report.functions_total += 1;
                continue;
            }
            // `CREATE FUNCTION` of an existing routine fails; the file states the wanted definition,
            // so it is sent as `CREATE OR REPLACE` (the only rewrite made, and positions are shifted back).
            let (text, shift) = if add_or_replace {
                (format!("CREATE OR REPLACE{}", &stmt.text[6..]), 11)
            } else {
                (stmt.text.clone(), 0)
            };
            let before = snapshot(cx)?;
            let sp = cx.savepoint()?;
            let mut action = "create-or-replace";
            match cx.c.query(&text, &[]) {
                Ok(_) => {
                    cx.check_tx(at)?;
                    cx.release(&sp)?
                }
                Err(PgError::Db(d)) if d.code == "42P13" => {
                    cx.rollback_to(&sp)?;
                    // Return type or parameter names changed: PostgreSQL needs a drop first. Which
                    // tracked routine is the old one is for PostgreSQL to say: try each not yet
                    // claimed by this deploy until the statement goes through.
                    let mut done = false;
                    let mut blocked = None;
                    for t in tracked.iter().filter(|t| t.exists && !seen.contains(&t.signature)) {
                        let sp2 = cx.savepoint()?;
                        if let Err(e) = drop_routine(cx, &t.signature, at) {
                            cx.rollback_to(&sp2)?;
                            blocked.get_or_insert(e);
                            continue;
                        }
                        match cx.c.query(&text, &[]) {
                            Ok(_) => {
                                cx.check_tx(at)?;
                                cx.release(&sp2)?;
                                cx.log_change("function", &t.signature, "drop-for-recreate", None)?;
                                done = true;
                                break;
                            }
                            Err(PgError::Db(_)) => cx.rollback_to(&sp2)?,
                            Err(e) => {
                                return Err(cx.pg_error(Kind::FunctionDeployFailed, at, e, shift));
                            }
                        }
                    }
                    if !done {
                        if let Some(e) = blocked {
                            return Err(e);
                        }
                        return Err(cx.pg_error(Kind::FunctionDeployFailed, at, PgError::Db(d), shift));
                    }
                    action = "drop-and-create";
                }
                Err(e) => return Err(cx.pg_error(Kind::FunctionDeployFailed, at, e, shift)),
            }
            let written = written_since(cx, &before)?;
            let Some((sig, kind)) = written.into_iter().next() else {
                return Err(cx.fail(
                    Kind::FunctionDeployFailed,
                    at,
                    "the statement ran but no function or procedure was created",
                ));
            };
            tracking::upsert_function(cx, &sig, &kind, ck, &file.path)?;
            cx.log_change("function", &sig, action, Some(ck))?;
            seen.insert(sig.clone());
            report.functions_changed.push(sig);
            report.functions_total += 1;
            file_changed = true;
        }
        if file_changed {
            for stmt in others {
                cx.run_file_stmt(Kind::FunctionDeployFailed, At::stmt("functions", file, stmt))?;
            }
        }
    }
    for t in &tracked {
        if seen.contains(&t.signature) {
            continue;
        }
        if t.exists {
            let at = At { step: "functions", file: Some(&t.file), stmt: None };
            drop_routine(cx, &t.signature, at)?;
            cx.log_change("function", &t.signature, "drop", Some(&t.checksum))?;
            report.functions_dropped.push(t.signature.clone());
        }
        tracking::forget_function(cx, &t.signature)?;
        let _ = &t.kind;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::creates_routine;

    #[test]
    fn classifies_routine_statements() {
        assert_eq!(creates_routine("CREATE FUNCTION f() RETURNS int"), Some(true));
        assert_eq!(creates_routine("create or replace procedure p()"), Some(false));
        assert_eq!(creates_routine("COMMENT ON FUNCTION f() IS 'x'"), None);
        assert_eq!(creates_routine("CREATE OR REPLACE VIEW v AS SELECT 1"), None);
    }
}
