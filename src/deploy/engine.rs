//! The deploy engine: applies one schema archive to one database inside one transaction held under a
//! per-database advisory lock, step by step (extensions, types, tables, migrations, functions,
//! seeders), and produces the report the `/register` and `/migrate` routes return.
//!
//! Design choices worth knowing:
//! - Everything except `-- gateway: no-transaction` migrations happens in one transaction; any error
//!   rolls the whole database back, tracking tables included. `dry_run` runs the same transaction and
//!   rolls it back, so the report says exactly what would change (no-transaction migrations are only
//!   listed, never run, in a dry run).
//! - No-transaction migrations run after the main transaction commits, one statement at a time in
//!   autocommit mode, under the session-level form of the same advisory lock, and are recorded after.
//! - Report arrays hold names (extension names, `schema.type`, table names, migration file names,
//!   function signatures); `functions_deployed` and `functions_skipped` are counts.

use std::time::Instant;

use super::archive::{SchemaArchive, SqlFile};
use super::context::{At, Ctx, SchemaValidation, changes, quote_ident, quote_literal};
pub use super::context::{DeployOptions, DeployReport, SeedMode};
use super::sql;
use super::{functions, readahead, seeders, tables, tracking, types, watchdog};
use crate::error::{ApiError, Kind};
use crate::json::ObjectWriter;
use crate::pg::blocking::Client;
use crate::security::roles::EXTENSION_SCHEMA;

/// Applies `archive` to `database`, which `client` is connected to, and logs one line saying what
/// was applied and how long it took, or which file failed and why. `database_oid`: the database's
/// OID as the session found it (empty: read under the lock).
pub fn deploy(
    client: &mut Client,
    database: &str,
    database_oid: &str,
    archive: &SchemaArchive,
    opts: &DeployOptions,
) -> Result<DeployReport, ApiError> {
    let started = Instant::now();
    let result = apply(client, database, database_oid, archive, opts, started);
    let ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(r) => crate::log::info(
            if opts.dry_run { "deploy checked (dry run, nothing kept)" } else { "deploy applied" },
            &[
                ("database", &database),
                ("migrations", &r.migrations_applied.len()),
                ("functions_changed", &r.functions_changed.len()),
                ("functions_dropped", &r.functions_dropped.len()),
                ("tables_created", &r.tables_created.len()),
                ("seeded_rows", &r.seeders.iter().map(|s| s.inserted).sum::<u64>()),
                ("duration_ms", &ms),
            ],
        ),
        Err(e) => crate::log::warn(
            "deploy failed",
            &[("database", &database), ("error", &e.kind.code()), ("reason", &e.message), ("duration_ms", &ms)],
        ),
    }
    result
}

fn apply(
    client: &mut Client,
    database: &str,
    database_oid: &str,
    archive: &SchemaArchive,
    opts: &DeployOptions,
    started: Instant,
) -> Result<DeployReport, ApiError> {
    let mut report = DeployReport { database: database.to_string(), dry_run: opts.dry_run, ..DeployReport::default() };
    refuse_statements(database, archive)?;
    let deadline = opts.time_limit.map(|l| (started + l, l));
    // Cancelled at the deadline, cut a little later: see `watchdog`.
    let _watch = deadline.map(|(end, _)| watchdog::watch(end, client.cancel_token(), client.abort_handle().ok()));
    let mut cx = Ctx {
        c: client,
        db: database,
        run_id: &opts.run_id,
        force: opts.force,
        savepoints: 0,
        in_tx: false,
        deadline,
        db_oid: database_oid.to_string(),
        ahead: Default::default(),
    };
    if cx.c.transaction_status() != b'I' {
        // A caller left a transaction open; ours must not nest into it.
        let _ = cx.c.batch_execute("ROLLBACK");
    }
    let pending = match main_transaction(&mut cx, archive, opts, &mut report) {
        Ok(p) => p,
        Err(e) => {
            // Whatever failed, the tracking tables' layout, the table files and the reads it starts
            // with are read again next time.
            tracking::forget_layout(cx.c, database);
            tables::forget_scratch_run(cx.c, database);
            readahead::forget(&cx.c.server_key(), database);
            cx.abandon();
            return Err(e);
        }
    };
    if !pending.is_empty() || !report.migrations_applied.is_empty() {
        // A migration may change a type or function the table files use.
        tables::forget_scratch_run(cx.c, database);
    }
    // The reads this deploy started with are what the next one sends ahead (reads only: they hold
    // whether this transaction commits or rolls back).
    let (server, oid) = (cx.c.server_key(), cx.db_oid.clone());
    cx.ahead.keep(&server, database, &oid);
    if opts.dry_run {
        cx.end(false, At::step("rollback"))?;
        report.no_transaction_migrations = pending.iter().map(|f| f.path.clone()).collect();
    } else {
        cx.end(true, At::step("commit"))?;
        for file in pending {
            if run_no_transaction(&mut cx, file)? {
                report.migrations_applied.push(file.path.clone());
                report.no_transaction_migrations.push(file.path.clone());
            }
        }
    }
    report.execution_time_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Refuses, before anything runs, every statement a deploy never runs (see [`sql::refused_statement`]):
/// transaction control anywhere, and `COPY … FROM STDIN`. Extension files are not run as SQL.
fn refuse_statements(database: &str, archive: &SchemaArchive) -> Result<(), ApiError> {
    let files = [&archive.types, &archive.tables, &archive.migrations, &archive.functions, &archive.seeders];
    for file in files.into_iter().flatten() {
        if let Some((line, why)) = file.refused() {
            let e =
                ApiError::new(Kind::StatementNotAllowed, format!("{} line {line}: {why}; nothing was run", file.path))
                    .with_database(database);
            return Err(with_place(e, file, *line));
        }
    }
    Ok(())
}

fn with_place(e: ApiError, file: &SqlFile, line: usize) -> ApiError {
    let mut f = Vec::new();
    crate::json::write_string(&mut f, &file.path);
    e.with_extra_json("step", "\"check\"".into())
        .with_extra_json("file", String::from_utf8(f).unwrap_or_default())
        .with_extra_json("line", line.to_string())
}

/// Everything inside the main transaction; returns the no-transaction migrations still to run.
fn main_transaction<'f>(
    cx: &mut Ctx<'_>,
    archive: &'f SchemaArchive,
    opts: &DeployOptions,
    report: &mut DeployReport,
) -> Result<Vec<&'f SqlFile>, ApiError> {
    let db = cx.db.to_string();
    const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('stonescriptdb:' || $1))::text";
    if cx.db_oid.is_empty() {
        let locked = cx.begin_with(
            &format!(
                "{LOCK}, (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname OPERATOR(pg_catalog.=) \
                 pg_catalog.current_database())::text"
            ),
            &[Some(&db)],
            At::step("lock"),
        )?;
        cx.db_oid = locked.first().and_then(|r| r.get(1)).cloned().unwrap_or_default();
    } else {
        cx.begin_with(LOCK, &[Some(&db)], At::step("lock"))?;
    }
    let oid = cx.db_oid.clone();
    // A database deployed before in this process: the tracking tables' check goes in the read-ahead's
    // round trip; if it fails (a table dropped by hand), the full path runs and the reads go after.
    if !read_ahead(cx, &oid, true)? {
        tracking::ensure_tables(cx, &oid)?;
        read_ahead(cx, &oid, false)?;
    }
    extensions(cx, archive, opts, report)?;
    types::deploy_types(cx, archive, report)?;
    let declared = tables::declare_and_create(cx, archive, report)?;
    let pending = migrations(cx, archive, report)?;
    tables::validate(cx, &declared, report)?;
    if report.schema_validation.has_drift() && !opts.force {
        let mut list = Vec::new();
        for c in report.schema_validation.dataloss.iter().chain(&report.schema_validation.incompatible) {
            match &c.column {
                Some(col) => list.push(format!("{}.{}: {}", c.table, col, c.description)),
                None => list.push(format!("{}: {}", c.table, c.description)),
            }
        }
        return Err(cx
            .fail(
                Kind::SchemaDrift,
                At::step("schema_validation"),
                format!(
                    "tables differ from the table files in ways that lose data or are incompatible: {}",
                    list.join("; ")
                ),
            )
            .with_extra_json("schema_validation", validation_json(&report.schema_validation)));
    }
    functions::deploy_functions(cx, archive, report)?;
    seeders::run(cx, archive, opts, report)?;
    extensions_out_of_reach(cx, &opts.protected_schemas)?;
    Ok(pending)
}

/// Sends the reads the last deploy of this database started with in one round trip, inside a
/// savepoint (one that fails, e.g. a table dropped by hand since, is rolled back and nothing is
/// fetched ahead), then records the reads this deploy starts with (see `readahead`).
///
/// With `with_tracking`, the tracking tables are made sure of first: by the known layout's check in the
/// same round trip (see `tracking::known_check`), else by `tracking::ensure_tables` on its own. `Ok(false)`:
/// the check found a table gone and was rolled back; nothing was read, the caller takes the full path.
fn read_ahead(cx: &mut Ctx<'_>, oid: &str, with_tracking: bool) -> Result<bool, ApiError> {
    let at = At::step("tracking");
    let server = cx.c.server_key();
    let reads = (!oid.is_empty()).then(|| readahead::remembered(&server, cx.db, oid)).flatten();
    let Some(reads) = reads else {
        if with_tracking {
            tracking::ensure_tables(cx, oid)?;
        }
        cx.ahead.record_from(cx.c.round_trips());
        return Ok(true);
    };
    let check = if with_tracking { tracking::known_check(cx.c, cx.db, oid) } else { None };
    if with_tracking && check.is_none() {
        tracking::ensure_tables(cx, oid)?;
    }
    let check = check.unwrap_or_default();
    let mut stmts: Vec<(&str, Vec<Option<&str>>)> = Vec::with_capacity(check.len() + reads.len() + 2);
    for sql in &check {
        stmts.push((sql, Vec::new()));
    }
    stmts.push(("SAVEPOINT ssdb_ahead", Vec::new()));
    for (sql, params) in &reads {
        stmts.push((sql, params.iter().map(|p| p.as_deref()).collect()));
    }
    stmts.push(("RELEASE SAVEPOINT ssdb_ahead", Vec::new()));
    let list: Vec<(&str, &[Option<&str>])> = stmts.iter().map(|(s, p)| (*s, p.as_slice())).collect();
    let first_read = check.len();
    match cx.c.pipeline(&list) {
        Ok(mut answers) => {
            cx.check_tx(at)?;
            if first_read > 0 && tracking::fill_wanted(&answers[..first_read]) {
                // The reads ran before the keys were filled and may have missed the other gateway's
                // rows: their answers are dropped and the engine reads again.
                tracking::fill_keys(cx)?;
            } else {
                answers.pop();
                let rows = answers.into_iter().skip(first_read + 1).map(|q| q.rows).collect();
                cx.ahead.fill(reads, rows, cx.c.round_trips());
            }
        }
        // The tracking check failed: nothing after it ran (the reads neither).
        Err((i, e)) if i < first_read => {
            tracking::known_check_failed(cx, e)?;
            return Ok(false);
        }
        // The savepoint was made: a read that fails now is rolled back and the deploy reads as usual.
        Err((i, crate::pg::dberror::PgError::Db(d)))
            if i > first_read && !matches!(d.severity.as_str(), "FATAL" | "PANIC") =>
        {
            readahead::forget(&server, cx.db);
            cx.exec("ROLLBACK TO SAVEPOINT ssdb_ahead; RELEASE SAVEPOINT ssdb_ahead", at)?;
        }
        Err((_, e)) => return Err(cx.pg_error(Kind::MigrationFailed, at, e, 0)),
    }
    cx.ahead.record_from(cx.c.round_trips());
    Ok(true)
}

/// After every step: an extension that a migration created in a `/call` schema is moved out of it, or
/// the deploy fails. Its functions would otherwise be callable through `/call`.
fn extensions_out_of_reach(cx: &mut Ctx<'_>, protected: &[String]) -> Result<(), ApiError> {
    if protected.is_empty() {
        return Ok(());
    }
    let list = format!("{{{}}}", protected.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(","));
    let found = cx.rows(
        "SELECT e.extname, e.extrelocatable::text, n.nspname FROM pg_extension e \
         JOIN pg_namespace n ON n.oid = e.extnamespace WHERE n.nspname = ANY($1::text[]) ORDER BY 1",
        &[Some(&list)],
        At::step("extensions"),
    )?;
    for row in found {
        let (name, relocatable, schema) = (&row[0], row[1] == "true", &row[2]);
        let refuse = |why: &str| {
            ApiError::new(
                Kind::ExtensionNotAllowed,
                format!(
                    "extension {name} is in schema {schema}, where /call could run its functions, and {why}; \
                     install it from extensions/ (it goes to schema {EXTENSION_SCHEMA})"
                ),
            )
            .with_database(cx.db)
        };
        if !relocatable {
            return Err(refuse("it cannot be moved"));
        }
        let sql = format!(
            "CREATE SCHEMA IF NOT EXISTS {s}; ALTER EXTENSION {e} SET SCHEMA {s}",
            s = quote_ident(EXTENSION_SCHEMA),
            e = quote_ident(name)
        );
        cx.c.batch_execute(&sql).map_err(|e| refuse(&format!("moving it failed ({e})")))?;
    }
    Ok(())
}

fn validation_json(v: &SchemaValidation) -> String {
    let mut out = Vec::new();
    {
        let mut o = ObjectWriter::new(&mut out);
        changes(&mut o, "safe", &v.safe);
        changes(&mut o, "dataloss", &v.dataloss);
        changes(&mut o, "incompatible", &v.incompatible);
    }
    String::from_utf8(out).unwrap_or_default()
}

/// An extension wanted by a file: name, optional pinned version and schema.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct WantedExtension {
    pub name: String,
    pub version: Option<String>,
    pub schema: Option<String>,
}

/// Reads an extension file: the file name (without extension) names the extension, except in a
/// `.txt` list where each non-comment line does; `-- version:` and `-- schema:` lines pin them.
pub(crate) fn wanted_extensions(file: &SqlFile) -> Vec<WantedExtension> {
    let mut version = None;
    let mut schema = None;
    let mut listed = Vec::new();
    for line in file.content.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("--") {
            let rest = rest.trim();
            if let Some((k, v)) = rest.split_once(':') {
                let v = v.trim().to_string();
                match k.trim().to_ascii_lowercase().as_str() {
                    "version" if !v.is_empty() => version = Some(v),
                    "schema" if !v.is_empty() => schema = Some(v),
                    _ => {}
                }
            }
        } else if !t.is_empty() && file.name.to_ascii_lowercase().ends_with(".txt") {
            listed.push(t.to_string());
        }
    }
    let canonical = |n: &str| {
        if n == "pgvector" { "vector".to_string() } else { n.to_string() }
    };
    if file.name.to_ascii_lowercase().ends_with(".txt") {
        return listed.iter().map(|n| WantedExtension { name: canonical(n), version: None, schema: None }).collect();
    }
    let stem = file.name.rsplit_once('.').map_or(file.name.as_str(), |(s, _)| s);
    vec![WantedExtension { name: canonical(stem), version, schema }]
}

fn extensions(
    cx: &mut Ctx<'_>,
    archive: &SchemaArchive,
    opts: &DeployOptions,
    report: &mut DeployReport,
) -> Result<(), ApiError> {
    for file in &archive.extensions {
        let at = At::file("extensions", file);
        for w in wanted_extensions(file) {
            let available = cx.rows(
                "SELECT (SELECT extversion FROM pg_extension WHERE extname = $1), \
                 EXISTS (SELECT 1 FROM pg_available_extension_versions WHERE name = $1 \
                         AND ($2::text IS NULL OR version = $2))",
                &[Some(&w.name), w.version.as_deref()],
                at,
            )?;
            let row = &available[0];
            let installed = (!row[0].is_empty()).then(|| row[0].clone());
            if (installed.is_none() || w.version.as_ref().is_some_and(|v| Some(v) != installed.as_ref()))
                && row[1] != "t"
            {
                let what = match &w.version {
                    Some(v) => format!("{} version {v}", w.name),
                    None => w.name.clone(),
                };
                return Err(cx.fail(
                    Kind::ExtensionNotAvailable,
                    at,
                    format!("extension {what} is not available on the server (pg_available_extensions)"),
                ));
            }
            let version = w.version.as_ref().map(|v| format!(" VERSION {}", quote_literal(v)));
            match installed {
                None => {
                    let mut schema = w.schema.as_deref().unwrap_or(EXTENSION_SCHEMA);
                    if opts.protected_schemas.iter().any(|p| p == schema) {
                        // `/call` would reach its functions there. Archives written for 1.x pin
                        // `-- schema: public`; the database's search path still finds `extensions`.
                        let msg = format!(
                            "{}: extension {} is pinned to schema {schema}, where /call could run its functions; \
                             installed into schema {EXTENSION_SCHEMA} instead",
                            file.path, w.name
                        );
                        crate::log::warn(
                            "extension pinned into a /call schema installed into the extensions schema",
                            &[("database", &cx.db), ("extension", &w.name), ("pinned", &schema)],
                        );
                        report.warnings.push(msg);
                        schema = EXTENSION_SCHEMA;
                    }
                    let mut sql = String::new();
                    sql.push_str(&format!("CREATE SCHEMA IF NOT EXISTS {};", quote_ident(schema)));
                    sql.push_str(&format!(
                        "CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {}",
                        quote_ident(&w.name),
                        quote_ident(schema)
                    ));
                    sql.push_str(version.as_deref().unwrap_or(""));
                    cx.c.batch_execute(&sql).map_err(|e| cx.pg_error(Kind::MigrationFailed, at, e, 0))?;
                    cx.log_change("extension", &w.name, "install", w.version.as_deref())?;
                    report.extensions_installed.push(w.name.clone());
                }
                Some(v) if w.version.as_ref().is_some_and(|want| *want != v) => {
                    let want = w.version.clone().unwrap_or_default();
                    cx.exec(
                        &format!("ALTER EXTENSION {} UPDATE TO {}", quote_ident(&w.name), quote_literal(&want)),
                        at,
                    )?;
                    cx.log_change("extension", &w.name, "update", Some(&want))?;
                    report.extensions_installed.push(w.name.clone());
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

fn migration_checksum(file: &SqlFile) -> String {
    file.file_checksums().0.clone()
}

/// Whether a recorded checksum is this file's: ours (of the normalised text), or the one
/// stonescriptdb-gateway 1.x recorded (SHA-256 of the file's exact text).
fn same_migration(recorded: &str, file: &SqlFile) -> bool {
    let (ours, exact) = file.file_checksums();
    recorded == ours || recorded == exact
}

fn is_no_transaction(file: &SqlFile) -> bool {
    sql::first_line_directive(&file.content).is_some_and(|d| d.eq_ignore_ascii_case("no-transaction"))
}

fn migrations<'f>(
    cx: &mut Ctx<'_>,
    archive: &'f SchemaArchive,
    report: &mut DeployReport,
) -> Result<Vec<&'f SqlFile>, ApiError> {
    let applied = tracking::applied_migrations(cx)?;
    // Refuse before applying anything: an edited file means the history is no longer what ran.
    for file in &archive.migrations {
        if let Some(old) = applied.get(&file.path)
            && !same_migration(old, file)
        {
            return Err(cx.fail(
                Kind::MigrationChecksumMismatch,
                At::file("migrations", file),
                format!(
                    "migration {} was edited after it was applied (checksum differs); add a new migration instead",
                    file.path
                ),
            ));
        }
    }
    let mut pending = Vec::new();
    for file in &archive.migrations {
        if applied.contains_key(&file.path) {
            continue;
        }
        if let Some(d) = sql::first_line_directive(&file.content)
            && !d.eq_ignore_ascii_case("no-transaction")
        {
            return Err(cx.fail(
                Kind::MigrationFailed,
                At::file("migrations", file),
                format!("unknown directive `-- gateway: {d}`"),
            ));
        }
        if is_no_transaction(file) {
            pending.push(file);
            continue;
        }
        let t0 = Instant::now();
        for stmt in sql::split_statements(&file.content) {
            cx.run_file_stmt(Kind::MigrationFailed, At::stmt("migrations", file, &stmt))?;
        }
        let ms = t0.elapsed().as_millis() as i64;
        let ck = migration_checksum(file);
        tracking::record_migration(cx, &file.path, &ck, ms, false)?;
        cx.log_change("migration", &file.path, "apply", Some(&ck))?;
        report.migrations_applied.push(file.path.clone());
    }
    Ok(pending)
}

/// Runs one no-transaction migration under the session advisory lock; false when another deploy
/// applied it meanwhile.
fn run_no_transaction(cx: &mut Ctx<'_>, file: &SqlFile) -> Result<bool, ApiError> {
    let db = cx.db.to_string();
    let at = At::file("migrations", file);
    cx.query("SELECT pg_advisory_lock(hashtext('stonescriptdb:' || $1))", &[Some(&db)], at)?;
    let result = (|| {
        let applied = tracking::applied_migrations(cx)?;
        let ck = migration_checksum(file);
        if let Some(old) = applied.get(&file.path) {
            if !same_migration(old, file) {
                return Err(cx.fail(
                    Kind::MigrationChecksumMismatch,
                    at,
                    format!("migration {} was edited after it was applied", file.path),
                ));
            }
            return Ok(false);
        }
        let t0 = Instant::now();
        for stmt in sql::split_statements(&file.content) {
            cx.run_file_stmt(Kind::MigrationFailed, At::stmt("migrations", file, &stmt))?;
        }
        let ms = t0.elapsed().as_millis() as i64;
        cx.begin(at)?;
        tracking::record_migration(cx, &file.path, &ck, ms, true)?;
        cx.log_change("migration", &file.path, "apply-no-transaction", Some(&ck))?;
        cx.end(true, at)?;
        Ok(true)
    })();
    if result.is_err() {
        cx.abandon();
    }
    let _ = cx.c.query("SELECT pg_advisory_unlock(hashtext('stonescriptdb:' || $1))", &[Some(&db)]);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::archive::Folder;

    fn file(name: &str, content: &str) -> SqlFile {
        SqlFile::new(Folder::Extensions, format!("extensions/{name}"), name.to_string(), content.to_string())
    }

    #[test]
    fn extension_file_names_and_pins() {
        let w = wanted_extensions(&file("pgvector.sql", "-- version: 0.5.1\n-- schema: ext\n"));
        assert_eq!(
            w,
            vec![WantedExtension { name: "vector".into(), version: Some("0.5.1".into()), schema: Some("ext".into()) }]
        );
        let w = wanted_extensions(&file("uuid-ossp.sql", ""));
        assert_eq!(w[0].name, "uuid-ossp");
        assert_eq!(w[0].version, None);
        let w = wanted_extensions(&file("list.txt", "pg_trgm\n\n-- c\npgcrypto\n"));
        assert_eq!(w.len(), 2);
        assert_eq!(w[1].name, "pgcrypto");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
