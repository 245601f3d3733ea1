//! The deploy operations behind the HTTP routes (`/register`, `/migrate`, `/admin/databases`,
//! `/admin/create-tenant`). Each runs on a worker thread with blocking connections and returns the
//! response plus the databases whose cached `/call` statements must be dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::archive::{ArchiveLimits, SchemaArchive, read_archive};
use super::engine::{DeployOptions, DeployReport, SeedMode, deploy};
use super::form::DeployForm;
use crate::catalog::{self, Catalog, Owner, pg_api};
use crate::config::Config;
use crate::error::{ApiError, Kind};
use crate::http::response::Response;
use crate::json::{ObjectWriter, Value};
use crate::pg::blocking::Client;
use crate::pg::params::ConnectParams;
use crate::security::names;

/// What a deploy operation needs: configuration and how to reach PostgreSQL as the gateway's role.
#[derive(Clone)]
pub struct DeployCtx {
    pub cfg: Arc<Config>,
    pub admin: ConnectParams,
    /// A platform's dedicated PostgreSQL role (user, password): its databases are owned by and deployed
    /// as that role.
    pub role: Option<(String, Option<String>)>,
}

/// The response and the databases that changed.
pub type Outcome = (Response, Vec<String>);

fn err(e: ApiError) -> Outcome {
    (Response::error(&e), Vec::new())
}

impl DeployCtx {
    pub fn new(cfg: Arc<Config>) -> DeployCtx {
        let admin = cfg.db.connect_params();
        DeployCtx { cfg, admin, role: None }
    }

    /// The context for a platform, using its dedicated role when it has one.
    pub fn for_platform(&self, p: &catalog::PlatformRecord) -> DeployCtx {
        let mut c = self.clone();
        c.role = p.db_user.clone().map(|u| (u, p.db_password.clone()));
        c
    }

    fn limits(&self) -> ArchiveLimits {
        ArchiveLimits {
            max_upload_bytes: self.cfg.limits.max_upload_bytes,
            max_expanded_bytes: self.cfg.deploy.archive_max_expanded_bytes,
            max_entries: self.cfg.deploy.archive_max_entries,
            max_file_bytes: self.cfg.deploy.archive_max_file_bytes,
            ..ArchiveLimits::default()
        }
    }

    /// Reads and checks an uploaded archive before anything is touched.
    pub fn read(&self, upload: &[u8]) -> Result<SchemaArchive, ApiError> {
        read_archive(upload, &self.limits()).map_err(|e| {
            let mut a = ApiError::new(Kind::SchemaExtractionFailed, format!("schema archive refused: {}", e.reason));
            if e.too_large {
                a.status_override = Some(413);
            }
            a
        })
    }

    fn admin_client(&self) -> Result<Client, ApiError> {
        Client::connect(&self.admin).map_err(|e| pg_api(e, "cannot connect to PostgreSQL"))
    }

    fn connect(&self, database: &str) -> Result<Client, ApiError> {
        let mut params = self.admin.with_dbname(database);
        if let Some((user, password)) = &self.role {
            params.user = user.clone();
            params.password = password.clone();
        }
        Client::connect(&params).map_err(|e| {
            let mut a = pg_api(e, &format!("cannot connect to database '{database}'"));
            if a.db.as_ref().is_some_and(|d| d.sqlstate == "3D000") {
                a.kind = Kind::DatabaseNotFound;
                a.message = format!("database '{database}' does not exist");
            }
            a.with_database(database)
        })
    }

    fn catalog(&self) -> Result<Catalog, ApiError> {
        Catalog::open(&self.admin, &self.cfg.deploy.catalog_db)
    }
}

fn v1_owner(platform: &str, tenant: Option<&str>) -> Result<(String, Owner), ApiError> {
    let name = names::v1_database(platform, tenant)?;
    let owner = Owner {
        platform: names::platform(platform)?,
        kind: if tenant.is_some() { "tenant" } else { "main" }.into(),
        tenant_id: tenant.map(names::sanitize),
        schema_name: None,
        database_id: None,
    };
    Ok((name, owner))
}

/// Result JSON of one database, for run records.
fn result_json(db: &str, r: &Result<DeployReport, ApiError>) -> String {
    let mut b = Vec::new();
    let mut o = ObjectWriter::new(&mut b);
    o.str("database", db);
    match r {
        Ok(rep) => {
            o.str("status", "success");
            rep.write_fields(&mut o);
        }
        Err(e) => {
            o.str("status", "failed");
            o.raw("error", &String::from_utf8_lossy(&e.body()));
        }
    }
    o.finish();
    String::from_utf8(b).unwrap_or_default()
}

/// Creates (if needed) and deploys one database: the shared core of `/register` and
/// `/database/create`. A database created here is dropped again when its first deploy fails (or when
/// the run is a dry run), so a retry starts clean.
pub fn create_and_deploy(
    ctx: &DeployCtx,
    name: &str,
    owner: &Owner,
    archive: &SchemaArchive,
    opts: &DeployOptions,
    must_be_new: bool,
) -> Result<(bool, DeployReport), ApiError> {
    let mut cat = ctx.catalog()?;
    cat.check_owner(name, owner)?;
    let mut admin = ctx.admin_client()?;
    // One create-and-first-deploy per database name at a time, across gateways: otherwise a request
    // whose first deploy fails could drop the database another request is deploying to. The lock is
    // the admin session's and ends with it.
    admin
        .query("SELECT pg_advisory_lock(hashtext('stonescriptdb:create:' || $1))", &[Some(name)])
        .map_err(|e| pg_api(e, "cannot lock the database name"))?;
    let exists = catalog::database_exists(&mut admin, name)?;
    if exists && must_be_new {
        return Err(
            ApiError::new(Kind::DatabaseAlreadyExists, format!("database '{name}' already exists")).with_database(name)
        );
    }
    let created = !exists && catalog::create_database(&mut admin, name)?;
    if must_be_new && !created {
        // Another request created it between the check and CREATE DATABASE: it is theirs.
        return Err(
            ApiError::new(Kind::DatabaseAlreadyExists, format!("database '{name}' already exists")).with_database(name)
        );
    }
    if created {
        if let Some((user, _)) = &ctx.role {
            // The platform's role owns its databases, so deploys and calls can run as that role.
            let sql = format!("ALTER DATABASE \"{name}\" OWNER TO \"{}\"", user.replace('"', "\"\""));
            if let Err(e) = admin.batch_execute(&sql) {
                let _ = catalog::drop_database(&mut admin, name);
                return Err(pg_api(e, "cannot give the database to the platform's role").with_database(name));
            }
        }
    }
    if created || !opts.dry_run {
        cat.record_database(name, owner)?;
    }
    let result = ctx.connect(name).and_then(|mut c| {
        let r = deploy(&mut c, name, archive, opts);
        c.close();
        r
    });
    let undo = created && (result.is_err() || opts.dry_run);
    if undo {
        if let Err(e) = catalog::drop_database(&mut admin, name) {
            crate::log::error(
                "could not drop a database after its failed first deploy",
                &[("database", &name), ("error", &e)],
            );
        }
        let _ = cat.forget_database(name);
    }
    let status = if result.is_ok() { "success" } else { "failed" };
    if let Ok(run) = cat.start_run(
        if must_be_new { "create" } else { "register" },
        Some(&owner.platform),
        owner.schema_name.as_deref(),
        1,
    ) {
        if !undo {
            let _ = cat.record_result(&run, name, status, &result_json(name, &result));
        }
        let _ = cat.finish_run(&run, status);
    }
    admin.close();
    result.map(|r| (created, r)).map_err(|e| e.with_database(name))
}

/// `POST /register`: create the database if missing, then the whole pipeline.
pub fn register(ctx: &DeployCtx, content_type: &str, body: &[u8]) -> Outcome {
    let run = || -> Result<Outcome, ApiError> {
        let form = DeployForm::parse(content_type, body, ctx.cfg.limits.max_multipart_parts)?;
        let platform = form.require_platform()?.to_string();
        let archive = ctx.read(form.require_archive()?)?;
        let (name, owner) = v1_owner(&platform, form.tenant_id.as_deref())?;
        let opts = DeployOptions {
            force: form.force,
            dry_run: form.dry_run,
            reseed: form.reseed,
            seed_mode: SeedMode::RunIfEmpty,
            run_id: catalog::new_run_id(),
        };
        let (created, report) = create_and_deploy(ctx, &name, &owner, &archive, &opts, false)?;
        let mut b = Vec::with_capacity(1024);
        let mut o = ObjectWriter::new(&mut b);
        o.str("status", if opts.dry_run { "dry_run" } else { "ready" });
        o.str("database", &name);
        o.bool("created", created);
        report.write_fields(&mut o);
        if !archive.ignored.is_empty() {
            let mut a = o.array("ignored_files");
            for f in &archive.ignored {
                a.str(f);
            }
        }
        o.finish();
        Ok((Response::json(200, b), vec![name]))
    };
    run().unwrap_or_else(err)
}

/// One database of a migrate run.
pub struct DbResult {
    pub database: String,
    pub result: Result<DeployReport, ApiError>,
}

/// Deploys `archive` to each database, `parallelism` at a time, each in its own transaction, going on
/// past failures unless `stop_on_error`. `on_done` sees each result as it finishes (progress).
pub fn migrate_many(
    ctx: &DeployCtx,
    databases: &[String],
    archive: &SchemaArchive,
    opts: &DeployOptions,
    stop_on_error: bool,
    on_done: &(dyn Fn(&DbResult, usize, usize) + Sync),
) -> Vec<DbResult> {
    let next = AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Mutex<Vec<Option<DbResult>>> = Mutex::new((0..databases.len()).map(|_| None).collect());
    let finished = AtomicUsize::new(0);
    let workers = ctx.cfg.deploy.parallelism.clamp(1, databases.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    if stop_on_error && failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(db) = databases.get(i) else { return };
                    let result = ctx.connect(db).and_then(|mut c| {
                        let r = deploy(&mut c, db, archive, opts);
                        c.close();
                        r
                    });
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    let r = DbResult { database: db.clone(), result: result.map_err(|e| e.with_database(db)) };
                    let n = finished.fetch_add(1, Ordering::Relaxed) + 1;
                    on_done(&r, n, databases.len());
                    if let Ok(mut v) = results.lock() {
                        v[i] = Some(r);
                    }
                }
            });
        }
    });
    results.into_inner().unwrap_or_default().into_iter().flatten().collect()
}

/// Writes one database's line of a migrate response.
pub fn write_db_result(o: &mut ObjectWriter<'_>, r: &DbResult) {
    o.str("database", &r.database);
    match &r.result {
        Ok(rep) => {
            o.str("status", "success");
            o.u64("migrations_applied", rep.migrations_applied.len() as u64);
            o.u64("functions_updated", rep.functions_changed.len() as u64);
            o.null("error");
        }
        Err(e) => {
            o.str("status", "failed");
            o.u64("migrations_applied", 0);
            o.u64("functions_updated", 0);
            o.raw("error", &String::from_utf8_lossy(&e.body()));
        }
    }
}

/// The body and status of a migrate over `results`.
pub fn migrate_response(results: &[DbResult], started: Instant, extra: &dyn Fn(&mut ObjectWriter<'_>)) -> Response {
    let failed: Vec<&ApiError> = results.iter().filter_map(|r| r.result.as_ref().err()).collect();
    let ok: Vec<&DbResult> = results.iter().filter(|r| r.result.is_ok()).collect();
    let status = if failed.is_empty() {
        "completed"
    } else if ok.is_empty() {
        "failed"
    } else {
        "completed_with_errors"
    };
    let http = if failed.is_empty() {
        200
    } else if failed.iter().all(|e| e.status() == 409) {
        409
    } else if failed.iter().all(|e| e.status() < 500) {
        failed[0].status()
    } else {
        500
    };
    let mut b = Vec::with_capacity(1024);
    let mut o = ObjectWriter::new(&mut b);
    o.str("status", status);
    if let Some(first) = failed.first() {
        // The cause at the top level too, so a client (or a shell script) sees why without walking
        // `results`: the first failed database's code and message (each is in `results` as well).
        o.str("error", first.kind.code());
        o.str("message", &format!("{} of {} databases failed; first: {}", failed.len(), results.len(), first.message));
        o.u64("failed_count", failed.len() as u64);
    }
    extra(&mut o);
    {
        let mut a = o.array("databases_updated");
        for r in &ok {
            a.str(&r.database);
        }
    }
    {
        let mut a = o.array("results");
        for r in results {
            let mut e = a.object();
            write_db_result(&mut e, r);
        }
    }
    let reps: Vec<&DeployReport> = ok.iter().filter_map(|r| r.result.as_ref().ok()).collect();
    o.u64("migrations_applied", reps.iter().map(|r| r.migrations_applied.len() as u64).sum());
    o.u64("functions_updated", reps.iter().map(|r| r.functions_changed.len() as u64).sum());
    o.u64("functions_skipped", reps.iter().map(|r| r.functions_skipped as u64).sum());
    o.u64("functions_dropped", reps.iter().map(|r| r.functions_dropped.len() as u64).sum());
    {
        let mut a = o.array("seeder_validations");
        for r in &reps {
            if r.seed_validation.checked {
                let mut e = a.object();
                e.str("database", &r.database);
                e.u64("reseeded", r.seed_validation.reseeded);
                let mut m = e.array("missing");
                for t in &r.seed_validation.missing {
                    let mut x = m.object();
                    x.str("table", &t.table);
                    let mut k = x.array("keys");
                    for key in &t.keys {
                        k.str(key);
                    }
                }
            }
        }
    }
    {
        let mut a = o.array("schema_validation");
        for r in &reps {
            let v = &r.schema_validation;
            if v.safe.is_empty() && v.dataloss.is_empty() && v.incompatible.is_empty() {
                continue;
            }
            let mut e = a.object();
            e.str("database", &r.database);
            for (k, list) in [("safe", &v.safe), ("dataloss", &v.dataloss), ("incompatible", &v.incompatible)] {
                let mut l = e.array(k);
                for c in list.iter() {
                    let mut x = l.object();
                    x.str("table", &c.table);
                    x.opt_str("column", c.column.as_deref());
                    x.str("change", &c.description);
                    x.bool("applied", c.applied);
                }
            }
        }
    }
    o.u64("execution_time_ms", started.elapsed().as_millis() as u64);
    o.finish();
    Response::json(http, b)
}

/// `POST /migrate`: one tenant database, or the platform's main database and every tenant database
/// the catalog records for it.
pub fn migrate(ctx: &DeployCtx, content_type: &str, body: &[u8]) -> Outcome {
    let started = Instant::now();
    let run = || -> Result<Outcome, ApiError> {
        let form = DeployForm::parse(content_type, body, ctx.cfg.limits.max_multipart_parts)?;
        let platform = form.require_platform()?.to_string();
        let archive = ctx.read(form.require_archive()?)?;
        let mut cat = ctx.catalog()?;
        let mut admin = ctx.admin_client()?;
        let databases: Vec<String> = match form.tenant_id.as_deref() {
            Some(t) => {
                let (name, owner) = v1_owner(&platform, Some(t))?;
                cat.check_owner(&name, &owner)?;
                if !catalog::database_exists(&mut admin, &name)? {
                    return Err(ApiError::new(Kind::DatabaseNotFound, format!("database '{name}' does not exist"))
                        .with_database(name));
                }
                vec![name]
            }
            None => {
                let (main, owner) = v1_owner(&platform, None)?;
                cat.check_owner(&main, &owner)?;
                let p = names::platform(&platform)?;
                let mut list = Vec::new();
                if catalog::database_exists(&mut admin, &main)? {
                    list.push(main.clone());
                }
                for rec in cat.databases(&p, None)? {
                    if rec.owner.kind == "tenant" && !list.contains(&rec.name) {
                        list.push(rec.name);
                    }
                }
                if list.is_empty() {
                    return Err(ApiError::new(
                        Kind::DatabaseNotFound,
                        format!("platform '{p}' has no databases; register it first"),
                    )
                    .with_database(main));
                }
                list
            }
        };
        admin.close();
        let opts = DeployOptions {
            force: form.force,
            dry_run: form.dry_run,
            reseed: form.reseed,
            seed_mode: SeedMode::Verify,
            run_id: catalog::new_run_id(),
        };
        let run = cat.start_run("migrate", Some(&names::platform(&platform)?), None, databases.len())?;
        let results = migrate_many(ctx, &databases, &archive, &opts, false, &|_, _, _| {});
        for r in &results {
            let status = if r.result.is_ok() { "success" } else { "failed" };
            let _ = cat.record_result(&run, &r.database, status, &result_json(&r.database, &r.result));
        }
        let any_failed = results.iter().any(|r| r.result.is_err());
        let _ = cat.finish_run(&run, if any_failed { "completed_with_errors" } else { "completed" });
        let changed: Vec<String> = results.iter().filter(|r| r.result.is_ok()).map(|r| r.database.clone()).collect();
        let resp = migrate_response(&results, started, &|o| {
            o.str("platform", &platform);
            o.str("run_id", &run);
        });
        Ok((resp, changed))
    };
    run().unwrap_or_else(err)
}

/// `GET /admin/databases?platform=P`.
pub fn admin_databases(ctx: &DeployCtx, platform: Option<String>) -> Outcome {
    let run = || -> Result<Outcome, ApiError> {
        let platform = platform
            .filter(|p| !p.is_empty())
            .ok_or_else(|| ApiError::new(Kind::InvalidRequest, "query parameter 'platform' is required"))?;
        let p = names::platform(&platform)?;
        let mut cat = ctx.catalog()?;
        let recs = cat.databases(&p, None)?;
        let names_: Vec<&str> = recs.iter().map(|r| r.name.as_str()).collect();
        let list = format!("{{{}}}", names_.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(","));
        let sizes = cat
            .client
            .query(
                "SELECT datname::text, round(pg_database_size(datname) / 1048576.0, 2)::text \
                 FROM pg_database WHERE datname = ANY($1::text[])",
                &[Some(&list)],
            )
            .map_err(|e| pg_api(e, "cannot read database sizes"))?;
        let mut b = Vec::with_capacity(512);
        let mut o = ObjectWriter::new(&mut b);
        o.str("platform", &p);
        {
            let mut a = o.array("databases");
            for r in &recs {
                let mut e = a.object();
                e.str("name", &r.name);
                e.str("type", if r.owner.kind == "main" { "main" } else { "tenant" });
                e.opt_str("tenant_id", r.owner.tenant_id.as_deref().or(r.owner.database_id.as_deref()));
                match sizes.rows.iter().find(|row| row[0].as_deref() == Some(r.name.as_str())) {
                    Some(row) => e.raw("size_mb", row[1].as_deref().unwrap_or("null")),
                    None => e.null("size_mb"),
                };
                e.str("created_at", &r.created_at);
                e.opt_str("last_deploy", r.last_deploy_at.as_deref());
            }
        }
        o.u64("count", recs.len() as u64);
        o.finish();
        Ok((Response::json(200, b), Vec::new()))
    };
    run().unwrap_or_else(err)
}

/// `POST /admin/create-tenant` `{"platform", "tenant_id"}`: an empty, recorded database.
pub fn create_tenant(ctx: &DeployCtx, body: &Value) -> Outcome {
    let run = || -> Result<Outcome, ApiError> {
        let get = |k: &str| body.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        let platform = get("platform").ok_or_else(|| ApiError::new(Kind::InvalidRequest, "'platform' is required"))?;
        let tenant = get("tenant_id").ok_or_else(|| ApiError::new(Kind::InvalidRequest, "'tenant_id' is required"))?;
        let (name, owner) = v1_owner(platform, Some(tenant))?;
        let mut cat = ctx.catalog()?;
        cat.check_owner(&name, &owner)?;
        let mut admin = ctx.admin_client()?;
        if !catalog::create_database(&mut admin, &name)? {
            return Err(ApiError::new(Kind::DatabaseAlreadyExists, format!("database '{name}' already exists"))
                .with_database(name));
        }
        cat.record_database(&name, &owner)?;
        let mut b = Vec::new();
        let mut o = ObjectWriter::new(&mut b);
        o.str("status", "created");
        o.str("database", &name);
        o.str("platform", &owner.platform);
        o.opt_str("tenant_id", owner.tenant_id.as_deref());
        o.finish();
        Ok((Response::json(201, b), Vec::new()))
    };
    run().unwrap_or_else(err)
}
