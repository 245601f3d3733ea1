//! What every deploy step shares: the options and the report of a deploy, the step context (`Ctx`: the
//! client inside the deploy's transaction, with error mapping that names the file and line) and SQL
//! quoting. The steps and the engine that runs them import this; it imports none of them.

use std::time::{Duration, Instant};

use super::archive::SqlFile;
use super::sql::Statement;
use crate::error::{ApiError, DbDetail, Kind};
use crate::json::{ArrayWriter, ObjectWriter, write_string};
use crate::pg::blocking::{Client, QueryResult};
use crate::pg::dberror::PgError;

/// What to do with seeders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedMode {
    /// New database or `/register`: run each seeder statement whose table was empty.
    RunIfEmpty,
    /// `/migrate`: check that the rows the seeders define exist.
    Verify,
}

#[derive(Clone, Debug)]
pub struct DeployOptions {
    /// Accept schema drift and missing seed rows.
    pub force: bool,
    /// Run everything, then roll back.
    pub dry_run: bool,
    /// In [`SeedMode::Verify`], insert missing seed rows instead of refusing.
    pub reseed: bool,
    pub seed_mode: SeedMode,
    /// Recorded in the changelog with every change.
    pub run_id: String,
    /// Schemas no extension may live in (`CALL_SCHEMAS`): `/call` must never reach an extension's
    /// functions. Extensions are created in [`EXTENSION_SCHEMA`] unless a file pins another schema.
    pub protected_schemas: Vec<String>,
    /// The whole deploy may take this long (`DEPLOY_TIMEOUT_SECS`); past it the running statement
    /// is cancelled and the deploy fails with `deploy_timeout`. `None`: no limit.
    pub time_limit: Option<Duration>,
}

/// One table or column difference between the table files and the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub table: String,
    /// `None` for a whole-table change.
    pub column: Option<String>,
    pub description: String,
    /// True when the engine applied it (new table, new nullable/defaulted column).
    pub applied: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchemaValidation {
    pub safe: Vec<Change>,
    pub dataloss: Vec<Change>,
    pub incompatible: Vec<Change>,
}

impl SchemaValidation {
    pub(crate) fn has_drift(&self) -> bool {
        !self.dataloss.is_empty() || !self.incompatible.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeederResult {
    /// `schema.table`.
    pub table: String,
    pub inserted: u64,
    /// Rows not inserted because the table already had data (or, in verify mode, already present).
    pub skipped: u64,
}

/// Rows a seeder defines that the table lacks, by primary key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingSeedRows {
    pub table: String,
    /// Each key rendered as PostgreSQL's row text, e.g. `(1)` or `(1,en)`.
    pub keys: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedValidation {
    /// True when the verify mode ran.
    pub checked: bool,
    pub missing: Vec<MissingSeedRows>,
    /// Rows inserted because `reseed=true`.
    pub reseeded: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeployReport {
    pub database: String,
    pub extensions_installed: Vec<String>,
    pub types_deployed: Vec<String>,
    pub tables_created: Vec<String>,
    pub migrations_applied: Vec<String>,
    /// Subset of `migrations_applied` that ran outside the main transaction, after it committed.
    pub no_transaction_migrations: Vec<String>,
    /// Functions of the archive now in place.
    pub functions_total: usize,
    pub functions_changed: Vec<String>,
    pub functions_skipped: usize,
    pub functions_dropped: Vec<String>,
    pub seeders: Vec<SeederResult>,
    pub seed_validation: SeedValidation,
    pub schema_validation: SchemaValidation,
    pub dry_run: bool,
    pub execution_time_ms: u64,
    /// What the deploy did other than the archive said (an extension pinned into a `/call` schema
    /// installed into `extensions`), for the answer's `warnings`.
    pub warnings: Vec<String>,
}

fn names(a: &mut ArrayWriter<'_>, v: &[String]) {
    for s in v {
        a.str(s);
    }
}

pub(crate) fn changes(o: &mut ObjectWriter<'_>, key: &str, v: &[Change]) {
    let mut a = o.array(key);
    for c in v {
        let mut e = a.object();
        e.str("table", &c.table);
        e.opt_str("column", c.column.as_deref());
        e.str("change", &c.description);
        e.bool("applied", c.applied);
    }
}

impl DeployReport {
    /// Writes the `/register` response members except `status`, `database` and `created`.
    pub fn write_fields(&self, o: &mut ObjectWriter) {
        // Counts, as stonescriptdb-gateway 1.x answered (clients compare them with numbers); the
        // names beside them in `*_names`.
        o.u64("extensions_installed", self.extensions_installed.len() as u64);
        names(&mut o.array("extensions_installed_names"), &self.extensions_installed);
        o.u64("types_deployed", self.types_deployed.len() as u64);
        names(&mut o.array("types_deployed_names"), &self.types_deployed);
        o.u64("tables_created", self.tables_created.len() as u64);
        names(&mut o.array("tables_created_names"), &self.tables_created);
        // A count, as in every other answer (clients compare it with -ge); the names beside it.
        o.u64("migrations_applied", self.migrations_applied.len() as u64);
        names(&mut o.array("migrations_applied_names"), &self.migrations_applied);
        names(&mut o.array("no_transaction_migrations"), &self.no_transaction_migrations);
        o.u64("functions_deployed", self.functions_total as u64);
        o.u64("functions_changed", self.functions_changed.len() as u64);
        names(&mut o.array("functions_changed_names"), &self.functions_changed);
        o.u64("functions_skipped", self.functions_skipped as u64);
        names(&mut o.array("functions_dropped"), &self.functions_dropped);
        {
            let mut a = o.array("seeders");
            for s in &self.seeders {
                let mut e = a.object();
                e.str("table", &s.table);
                e.u64("inserted", s.inserted);
                e.u64("skipped", s.skipped);
            }
        }
        if self.seed_validation.checked {
            let mut sv = o.object("seed_validation");
            sv.u64("reseeded", self.seed_validation.reseeded);
            let mut a = sv.array("missing");
            for m in &self.seed_validation.missing {
                let mut e = a.object();
                e.str("table", &m.table);
                names(&mut e.array("keys"), &m.keys);
            }
        }
        {
            let mut sv = o.object("schema_validation");
            changes(&mut sv, "safe", &self.schema_validation.safe);
            changes(&mut sv, "dataloss", &self.schema_validation.dataloss);
            changes(&mut sv, "incompatible", &self.schema_validation.incompatible);
        }
        names(&mut o.array("warnings"), &self.warnings);
        o.bool("dry_run", self.dry_run);
        o.u64("execution_time_ms", self.execution_time_ms);
    }
}

/// Shared state of one deploy: the session, names for errors and the changelog, savepoint numbering.
pub(crate) struct Ctx<'a> {
    pub c: &'a mut Client,
    pub db: &'a str,
    pub run_id: &'a str,
    pub force: bool,
    pub savepoints: u32,
    /// True while the engine holds a transaction open (the main one, or the short one that records a
    /// no-transaction migration): after every statement the session must still be in it. False while
    /// no-transaction migrations run: then no statement may leave one open.
    pub in_tx: bool,
    /// When the whole deploy must be over, and the limit it came from (for the message).
    pub deadline: Option<(Instant, Duration)>,
    /// The database's OID once the deploy's lock is held (empty before, or when unknown): keys what
    /// this process remembers of the database between deploys.
    pub db_oid: String,
    /// Reads fetched ahead in one round trip, and the reads recorded for the next deploy.
    pub ahead: super::readahead::ReadAhead,
}

/// Where a failure happened, for the error body.
#[derive(Clone, Copy)]
pub(crate) struct At<'a> {
    pub step: &'static str,
    pub file: Option<&'a str>,
    pub stmt: Option<&'a Statement>,
}

impl<'a> At<'a> {
    pub fn step(step: &'static str) -> At<'a> {
        At { step, file: None, stmt: None }
    }
    pub fn file(step: &'static str, file: &'a SqlFile) -> At<'a> {
        At { step, file: Some(&file.path), stmt: None }
    }
    pub fn stmt(step: &'static str, file: &'a SqlFile, stmt: &'a Statement) -> At<'a> {
        At { step, file: Some(&file.path), stmt: Some(stmt) }
    }
}

impl<'a> Ctx<'a> {
    /// Runs engine-written SQL (not file text).
    pub fn exec(&mut self, sql: &str, at: At<'_>) -> Result<(), ApiError> {
        self.c.batch_execute(sql).map_err(|e| self.pg_error(Kind::MigrationFailed, at, e, 0))?;
        self.check_tx(at)
    }

    pub fn query(&mut self, sql: &str, params: &[Option<&str>], at: At<'_>) -> Result<QueryResult, ApiError> {
        let r = self.c.query(sql, params).map_err(|e| self.pg_error(Kind::MigrationFailed, at, e, 0))?;
        self.check_tx(at)?;
        Ok(r)
    }

    /// Opens the engine's transaction.
    pub fn begin(&mut self, at: At<'_>) -> Result<(), ApiError> {
        self.in_tx = false;
        self.c.batch_execute("BEGIN").map_err(|e| self.pg_error(Kind::MigrationFailed, at, e, 0))?;
        self.in_tx = true;
        self.check_tx(at)
    }

    /// Commits (or with `commit == false` rolls back) the engine's transaction.
    pub fn end(&mut self, commit: bool, at: At<'_>) -> Result<(), ApiError> {
        self.check_tx(at)?;
        let sql = if commit { "COMMIT" } else { "ROLLBACK" };
        let r = self.c.batch_execute(sql).map_err(|e| self.pg_error(Kind::MigrationFailed, at, e, 0));
        self.in_tx = false;
        r?;
        // A COMMIT of a transaction that had failed answers ROLLBACK without an error.
        if commit && self.c.last_command_tag() != "COMMIT" {
            return Err(self.fail(
                Kind::MigrationFailed,
                at,
                format!("the deploy's transaction did not commit (PostgreSQL answered {})", self.c.last_command_tag()),
            ));
        }
        Ok(())
    }

    /// Rolls back whatever transaction the session has, after a failure; never fails itself.
    pub fn abandon(&mut self) {
        if self.c.transaction_status() != b'I' {
            let _ = self.c.batch_execute("ROLLBACK");
        }
        self.in_tx = false;
    }

    /// After a statement: the session must be where the engine expects it (see [`Ctx::in_tx`]).
    pub fn check_tx(&self, at: At<'_>) -> Result<(), ApiError> {
        match self.escaped(at) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The error for a session that is not where the engine expects it, if it is not.
    fn escaped(&self, at: At<'_>) -> Option<ApiError> {
        let status = self.c.transaction_status();
        let tag = self.c.last_command_tag();
        let place = describe(at);
        if self.in_tx && status == b'I' {
            let what = if tag.starts_with("ROLLBACK") {
                format!(
                    "{place} ended the deploy's transaction ({tag}): it was rolled back, so nothing this deploy did \
                     was kept, and nothing after it ran"
                )
            } else {
                format!(
                    "{place} ended the deploy's transaction ({tag}): what this deploy did before it was COMMITTED \
                     and stays in the database (migrations recorded before it stay recorded; this file is not \
                     recorded as applied), and nothing after it ran; check the database before deploying again"
                )
            };
            return Some(self.fail(Kind::TransactionEscaped, at, what).with_cause("transaction_ended"));
        }
        if !self.in_tx && status != b'I' {
            return Some(
                self.fail(
                    Kind::TransactionEscaped,
                    at,
                    format!(
                        "{place} left a transaction open in a no-transaction migration; it was rolled back, \
                         and the file's statements before it stay applied (a no-transaction file is not atomic); \
                         the file is not recorded as applied"
                    ),
                )
                .with_cause("transaction_opened"),
            );
        }
        None
    }

    /// Fails once the deploy is past its time limit.
    pub fn check_deadline(&self, at: At<'_>) -> Result<(), ApiError> {
        match self.deadline {
            Some((end, limit)) if Instant::now() >= end => Err(self.timed_out(at, limit)),
            _ => Ok(()),
        }
    }

    fn timed_out(&self, at: At<'_>, limit: Duration) -> ApiError {
        let kept = if self.in_tx {
            "it was rolled back, nothing was kept"
        } else {
            "the no-transaction migration's statements before it stay applied; the file is not recorded"
        };
        self.fail(
            Kind::DeployTimeout,
            at,
            format!("the deploy ran past DEPLOY_TIMEOUT_SECS ({} s) at {}; {kept}", limit.as_secs(), describe(at)),
        )
        .with_cause("deploy_timeout")
    }

    /// Rows of a query whose columns are all non-null text (missing values become "").
    pub fn rows(&mut self, sql: &str, params: &[Option<&str>], at: At<'_>) -> Result<Vec<Vec<String>>, ApiError> {
        Ok(self
            .read(sql, params, at, Kind::MigrationFailed, 0)?
            .into_iter()
            .map(|r| r.into_iter().map(Option::unwrap_or_default).collect())
            .collect())
    }

    /// Rows of a read the engine makes only because a write follows (a catalog snapshot before a
    /// `CREATE`, the keys of a stand-in table): it ends the recording of reads for the next deploy,
    /// which would otherwise fetch it ahead every time although an unchanged deploy never asks.
    pub fn rows_before_write(
        &mut self,
        sql: &str,
        params: &[Option<&str>],
        at: At<'_>,
    ) -> Result<Vec<Vec<String>>, ApiError> {
        self.ahead.stop();
        self.rows(sql, params, at)
    }

    /// Rows of a statement that only reads: answered from the read-ahead when it was fetched there
    /// (see `readahead`), and recorded for the next deploy. Errors map like [`Ctx::pg_error`].
    pub fn read(
        &mut self,
        sql: &str,
        params: &[Option<&str>],
        at: At<'_>,
        kind: Kind,
        shift: i64,
    ) -> Result<Vec<Vec<Option<String>>>, ApiError> {
        let before = self.c.round_trips();
        if let Some(rows) = self.ahead.take(sql, params, before) {
            self.ahead.note(sql, params, before, before);
            return Ok(rows);
        }
        let r = self.c.query(sql, params).map_err(|e| self.pg_error(kind, at, e, shift))?;
        self.check_tx(at)?;
        self.ahead.note(sql, params, before, self.c.round_trips());
        Ok(r.rows)
    }

    /// Opens the engine's transaction and runs `sql` (a read) in it, in one round trip.
    pub fn begin_with(&mut self, sql: &str, params: &[Option<&str>], at: At<'_>) -> Result<Vec<Vec<String>>, ApiError> {
        self.in_tx = false;
        let r = self.c.pipeline(&[("BEGIN", &[]), (sql, params)]);
        self.in_tx = self.c.transaction_status() != b'I';
        let mut r = r.map_err(|(_, e)| self.pg_error(Kind::MigrationFailed, at, e, 0))?;
        self.check_tx(at)?;
        Ok(r.pop()
            .map(|q| q.rows)
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.into_iter().map(Option::unwrap_or_default).collect())
            .collect())
    }

    /// Runs a statement from a file; errors carry the file's line.
    pub fn run_file_stmt(&mut self, kind: Kind, at: At<'_>) -> Result<QueryResult, ApiError> {
        let stmt = at.stmt.expect("file statement");
        self.check_deadline(at)?;
        let r = self
            .c
            .query(&stmt.text, &[])
            .or_else(|e| match e {
                // Several statements in one (e.g. a DO block is fine, but `query` refuses
                // multi-statement text only if the splitter missed a `;`); fall back to simple.
                PgError::Db(ref d) if d.code == "42601" && d.message.contains("multiple") => {
                    self.c.batch_execute(&stmt.text).map(|()| QueryResult::default())
                }
                e => Err(e),
            })
            .map_err(|e| self.pg_error(kind, at, e, 0))?;
        self.check_tx(at)?;
        Ok(r)
    }

    pub fn savepoint(&mut self) -> Result<String, ApiError> {
        self.savepoints += 1;
        let name = format!("ssdb_sp_{}", self.savepoints);
        self.exec(&format!("SAVEPOINT {name}"), At::step("savepoint"))?;
        Ok(name)
    }

    pub fn rollback_to(&mut self, sp: &str) -> Result<(), ApiError> {
        self.exec(&format!("ROLLBACK TO SAVEPOINT {sp}; RELEASE SAVEPOINT {sp}"), At::step("savepoint"))
    }

    pub fn release(&mut self, sp: &str) -> Result<(), ApiError> {
        self.exec(&format!("RELEASE SAVEPOINT {sp}"), At::step("savepoint"))
    }

    /// Turns a PostgreSQL error into the API error naming step, file and line. `shift` is the number
    /// of characters we prepended to the statement text before sending it.
    pub fn pg_error(&self, kind: Kind, at: At<'_>, e: PgError, shift: i64) -> ApiError {
        // A failure after the transaction ended (e.g. RELEASE SAVEPOINT outside one) is that ending's
        // consequence: say what really happened.
        if let Some(esc) = self.escaped(at) {
            return esc;
        }
        // Past the deadline, a cancelled statement or a socket the watchdog cut is the time limit.
        if let Some((end, limit)) = self.deadline {
            let cut = matches!(&e, PgError::Io(_) | PgError::Closed);
            let cancelled = matches!(&e, PgError::Db(d) if d.code == "57014");
            if (cut || cancelled) && Instant::now() >= end {
                return self.timed_out(at, limit);
            }
        }
        if let PgError::Db(d) = &e
            && d.code == "57014"
            && d.message.contains("statement timeout")
        {
            let kept = if self.in_tx { "it was rolled back, nothing was kept" } else { "the file is not recorded" };
            return self
                .fail(
                    Kind::DeployTimeout,
                    at,
                    format!("{} ran past DEPLOY_STATEMENT_TIMEOUT_MS ({}); {kept}", describe(at), d.message),
                )
                .with_cause("statement_timeout")
                .with_db(DbDetail { sqlstate: d.code.clone(), detail: d.detail.clone(), hint: d.hint.clone() });
        }
        let db = match &e {
            PgError::Db(d) => Some(d.clone()),
            _ => None,
        };
        let kind = match (&e, kind) {
            (PgError::Io(_) | PgError::Closed, _) => Kind::ConnectionFailed,
            (PgError::Db(d), _) if d.code.starts_with("08") || d.code.starts_with("57P") => Kind::ConnectionFailed,
            // The platform's SQL asked for a right its role does not have: its input is wrong, not us.
            (PgError::Db(d), _) if d.code == "42501" => Kind::PermissionDenied,
            // A deferred constraint the platform's SQL broke fails at COMMIT: still the platform's.
            (PgError::Db(d), Kind::MigrationFailed) if at.step == "commit" && d.code.starts_with("23") => {
                Kind::MigrationFailed
            }
            (_, k) => step_kind(k, at.step),
        };
        let line = at.stmt.map(|s| {
            let pos = db.as_ref().and_then(|d| d.position).map(|p| (p as i64 - 1 - shift).max(0) as usize);
            match pos {
                Some(p) => s.line + s.text.chars().take(p).filter(|&ch| ch == '\n').count(),
                None => s.line,
            }
        });
        let msg = match &db {
            Some(d) => d.message.clone(),
            None => e.to_string(),
        };
        let mut text = format!("{} failed", at.step);
        if let Some(f) = at.file {
            text.push_str(&format!(" in {f}"));
        }
        if let Some(l) = line {
            text.push_str(&format!(" at line {l}"));
        }
        text.push_str(": ");
        text.push_str(&msg);
        let mut err = located(ApiError::new(kind, text).with_database(self.db), at, line);
        if let Some(d) = db {
            err = err.with_db(DbDetail { sqlstate: d.code, detail: d.detail, hint: d.hint });
        }
        err
    }

    /// An error of ours (not PostgreSQL's) at a place in the deploy.
    pub fn fail(&self, kind: Kind, at: At<'_>, msg: impl Into<String>) -> ApiError {
        let line = at.stmt.map(|s| s.line);
        located(ApiError::new(step_kind(kind, at.step), msg).with_database(self.db), at, line)
    }

    pub fn log_change(
        &mut self,
        kind: &str,
        object: &str,
        action: &str,
        checksum: Option<&str>,
    ) -> Result<(), ApiError> {
        let run = self.run_id.to_string();
        let forced = if self.force { "true" } else { "false" };
        self.query(
            "INSERT INTO public._stonescriptdb_gateway_changelog (run_id, kind, object, action, checksum, forced) \
             VALUES ($1, $2, $3, $4, $5, $6::boolean)",
            &[Some(&run), Some(kind), Some(object), Some(action), checksum, Some(forced)],
            At::step("tracking"),
        )?;
        Ok(())
    }
}

/// The kind of a deploy failure by the step it happened in: the engine names every failure
/// `MigrationFailed`, and this says whose it is. A step that runs the platform's files has its own 422
/// code; the engine's own statements (transaction, savepoints, tracking tables, lock) failing is the
/// gateway's fault, 500 `deploy_failed`. Every other kind passes as it is.
pub(crate) fn step_kind(kind: Kind, step: &str) -> Kind {
    if kind != Kind::MigrationFailed {
        return kind;
    }
    match step {
        "migrations" => Kind::MigrationFailed,
        "tables" | "schema_validation" => Kind::TableDeployFailed,
        "types" => Kind::TypeDeployFailed,
        "seeders" => Kind::SeederFailed,
        "extensions" => Kind::ExtensionDeployFailed,
        "functions" => Kind::FunctionDeployFailed,
        _ => Kind::DeployFailed,
    }
}

/// `the statement at migrations/x.sql line 3`, `step commit`, … for messages.
fn describe(at: At<'_>) -> String {
    match (at.file, at.stmt) {
        (Some(f), Some(s)) => format!("the statement at {f} line {}", s.line),
        (Some(f), None) => format!("{} ({f})", at.step),
        _ => format!("step {}", at.step),
    }
}

fn located(mut err: ApiError, at: At<'_>, line: Option<usize>) -> ApiError {
    let mut s = Vec::new();
    write_string(&mut s, at.step);
    err = err.with_extra_json("step", String::from_utf8(s).unwrap_or_default());
    if let Some(f) = at.file {
        let mut s = Vec::new();
        write_string(&mut s, f);
        err = err.with_extra_json("file", String::from_utf8(s).unwrap_or_default());
    }
    if let Some(l) = line {
        err = err.with_extra_json("line", l.to_string());
    }
    err
}

pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
