//! The v2 platform API: registered platforms, stored schema archives with versions, databases created
//! from a stored schema on demand, and migrations of every database of a schema (fleet runs with
//! progress lines and asynchronous runs).

use std::sync::Mutex;
use std::time::Instant;

use super::context::{DeployOptions, SeedMode};
use super::form::DeployForm;
use super::service::{
    DbResult, DeployCtx, Outcome, create_and_deploy, migrate_many, migrate_response, write_db_result,
};
use crate::catalog::{self, Owner};
use crate::error::{ApiError, Kind};
use crate::http::response::Response;
use crate::json::{ObjectWriter, Value};
use crate::security::{keys, names, roles};

fn err(e: ApiError) -> Outcome {
    (Response::error(&e), Vec::new())
}

fn str_field<'a>(body: &'a Value, key: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) if key == "database_id" => Ok(Some(n)),
        Some(v) => Err(ApiError::new(Kind::InvalidRequest, format!("'{key}' must be a string, got {}", v.type_name()))),
    }
}

fn required<'a>(body: &'a Value, key: &str) -> Result<&'a str, ApiError> {
    str_field(body, key)?.ok_or_else(|| ApiError::new(Kind::InvalidRequest, format!("'{key}' is required")))
}

fn bool_field(body: &Value, key: &str) -> Result<bool, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "1" => Ok(true),
        Some(Value::String(s)) if s == "false" || s == "0" => Ok(false),
        Some(v) => {
            Err(ApiError::new(Kind::InvalidRequest, format!("'{key}' must be a boolean, got {}", v.type_name())))
        }
    }
}

/// A schema name as stored: the same identifier rules as database name parts.
fn schema_name(s: &str) -> Result<String, ApiError> {
    if s.trim().is_empty() || s.len() > 63 {
        return Err(ApiError::new(Kind::InvalidRequest, "schema_name must be 1 to 63 bytes"));
    }
    Ok(names::sanitize(s))
}

/// `POST /platform/register` `{"platform", "require_key"?, "db_user"?}`.
///
/// `db_user` names an existing role for the platform instead of the one the gateway creates: only
/// with the admin token, only a role fit for a platform that no other platform has. `require_key`
/// (always, under `REQUIRE_PLATFORM_KEYS`) answers once with the platform's key.
pub fn register_platform(ctx: &DeployCtx, body: &Value) -> Outcome {
    let run = || -> Result<Outcome, ApiError> {
        let p = names::platform(required(body, "platform")?)?;
        let user = str_field(body, "db_user")?;
        if str_field(body, "db_password")?.is_some() {
            return Err(ApiError::new(
                Kind::InvalidRequest,
                "'db_password' is not accepted: the gateway sets the platform role's password itself and stores it \
                 nowhere",
            ));
        }
        let want_key = bool_field(body, "require_key")? || ctx.cfg.security.require_platform_keys;
        if let Some(u) = user {
            ctx.require_admin("'db_user'")?;
            if u.len() > 63 || u.contains('\0') || u.starts_with("pg_") {
                return Err(ApiError::new(Kind::InvalidRequest, "'db_user' is not a valid role name"));
            }
        }
        roles::role_name(&ctx.cfg.security.role_prefix, &p)?;
        let server = str_field(body, "server")?.filter(|s| !s.is_empty());
        let mut cat = ctx.catalog()?;
        if let Some(s) = server {
            // Where the platform's new databases go unless a request names a server: an operator's choice.
            ctx.require_admin("'server'")?;
            if !cat.servers()?.iter().any(|d| d.name == s) {
                return Err(crate::catalog::servers::not_found(s));
            }
        }
        // Who may name this platform, decided before anything is changed: an existing platform (in any
        // form) only its key holder or the admin; a keyless one (which a key would take over) only the
        // admin; a new one as PLATFORM_REGISTRATION says, up to MAX_PLATFORMS.
        if ctx.check_platform_creation(&mut cat, &p)? && !ctx.cred.admin {
            if cat.platform_keys(Some(&p))?.is_empty() {
                return Err(ApiError::new(
                    Kind::AdminTokenInvalid,
                    format!(
                        "platform '{p}' exists and has no key; registering it or giving it a key needs the admin \
                         token (Authorization: Bearer <ADMIN_TOKEN>)"
                    ),
                ));
            }
            ctx.authorize(&mut cat, &p)?;
        }
        if cat.platform(&p)?.is_some() {
            return Err(ApiError::new(Kind::PlatformAlreadyExists, format!("platform '{p}' is already registered")));
        }
        if let Some(u) = user {
            if cat.platform_role(&p)?.is_some_and(|(r, _)| r != u) {
                return Err(ApiError::new(
                    Kind::NameConflict,
                    format!("platform '{p}' already runs as another role; its databases belong to that role"),
                ));
            }
            cat.record_platform_role(&p, u, true)?;
        }
        if let Err(e) = ctx.as_platform(&mut cat, &p) {
            if user.is_some() {
                let _ = cat.client.query("DELETE FROM platform_roles WHERE platform = $1 AND adopted", &[Some(&p)]);
            }
            return Err(e);
        }
        cat.register_platform(&p, user)?;
        if server.is_some() {
            cat.set_platform_default_server(&p, server)?;
        }
        let key = if want_key {
            let k = keys::new_key()?;
            cat.set_platform_key(&p, &keys::hash(&k), 0)?;
            Some(k)
        } else {
            None
        };
        let mut b = Vec::new();
        let mut o = ObjectWriter::new(&mut b);
        o.str("status", "registered");
        o.str("platform", &p);
        o.bool("has_dedicated_credentials", true);
        if let Some(s) = server {
            o.str("default_server", s);
        }
        if let Some(k) = &key {
            o.str("api_key", k);
            o.str(
                "api_key_note",
                "shown once; send it as Authorization: Bearer <api_key> on every route of this platform",
            );
        }
        o.str("message", &format!("platform '{p}' registered; upload schemas with POST /platform/{p}/schema"));
        o.finish();
        Ok((Response::json(201, b), Vec::new()))
    };
    run().unwrap_or_else(err)
}

/// `POST /admin/platforms/{platform}/key` `{"grace_seconds"?}`: gives a platform (v1 or v2, registered
/// or not yet) a new key, answered once. Keys it had stay valid for `grace_seconds` (default 0).
pub fn rotate_key(ctx: &DeployCtx, platform: &str, body: &Value) -> Outcome {
    let run = || -> Result<Outcome, ApiError> {
        ctx.require_admin("setting a platform key")?;
        let p = names::platform(platform)?;
        let grace = match body.get("grace_seconds") {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) => n.parse::<u64>().ok().filter(|g| *g <= 30 * 86_400).ok_or_else(|| {
                ApiError::new(Kind::InvalidRequest, "'grace_seconds' must be a whole number from 0 to 2592000")
            })?,
            Some(v) => {
                return Err(ApiError::new(
                    Kind::InvalidRequest,
                    format!("'grace_seconds' must be a number, got {}", v.type_name()),
                ));
            }
        };
        let mut cat = ctx.catalog()?;
        let k = keys::new_key()?;
        cat.set_platform_key(&p, &keys::hash(&k), grace)?;
        let mut b = Vec::new();
        let mut o = ObjectWriter::new(&mut b);
        o.str("status", "key_set");
        o.str("platform", &p);
        o.str("api_key", &k);
        o.u64("previous_keys_valid_for_seconds", grace);
        o.finish();
        Ok((Response::json(201, b), Vec::new()))
    };
    run().unwrap_or_else(err)
}

/// `POST /platform/{platform}/schema` (multipart: `schema_name`/`name`, `schema`/`file`).
pub fn upload_schema(ctx: &DeployCtx, platform: &str, content_type: &str, body: &[u8]) -> Outcome {
    let run = || -> Result<Outcome, ApiError> {
        let p = names::platform(platform)?;
        let form = DeployForm::parse(content_type, body, ctx.cfg.limits.max_multipart_parts)?;
        let name =
            schema_name(form.schema_name.as_deref().ok_or_else(|| {
                ApiError::new(Kind::InvalidRequest, "form field 'schema_name' (or 'name') is required")
            })?)?;
        let upload = form.require_archive()?;
        let mut cat = ctx.catalog()?;
        ctx.authorize(&mut cat, &p)?;
        cat.require_platform(&p)?;
        // The same reader and statement splitter as a deploy: a broken archive is refused before it
        // replaces a good one.
        let archive = ctx.read(upload)?;
        for f in archive.types.iter().chain(&archive.tables).chain(&archive.functions) {
            let _ = super::sql::split_statements(&f.content);
        }
        let has = [
            !archive.tables.is_empty(),
            !archive.functions.is_empty(),
            !archive.migrations.is_empty(),
            !archive.seeders.is_empty(),
        ];
        let cap = ctx.cfg.security.max_schemas_per_platform;
        let (stored, known) = cat.schema_count(&p, &name)?;
        if cap > 0 && !known && stored >= cap {
            return Err(ApiError::new(
                Kind::SchemaLimitReached,
                format!(
                    "platform '{p}' stores {stored} schemas, the most MAX_SCHEMAS_PER_PLATFORM allows; upload a new \
                     version of one of them instead"
                ),
            ));
        }
        let version = cat.store_schema(&p, &name, upload, &archive.checksum, has)?;
        let mut b = Vec::new();
        let mut o = ObjectWriter::new(&mut b);
        o.str("status", "registered");
        o.str("platform", &p);
        o.str("schema_name", &name);
        o.bool("has_tables", has[0]);
        o.bool("has_functions", has[1]);
        o.bool("has_migrations", has[2]);
        o.bool("has_seeders", has[3]);
        o.str("checksum", &archive.checksum);
        o.i64("version", version);
        o.finish();
        Ok((Response::json(201, b), Vec::new()))
    };
    run().unwrap_or_else(err)
}

/// `GET /platform/{platform}/schemas`.
pub fn list_schemas(ctx: &DeployCtx, platform: &str) -> Outcome {
    let run = || -> Result<Outcome, ApiError> {
        let p = names::platform(platform)?;
        let mut cat = ctx.catalog()?;
        ctx.authorize(&mut cat, &p)?;
        cat.require_platform(&p)?;
        let list = cat.schemas(&p)?;
        let mut b = Vec::new();
        let mut o = ObjectWriter::new(&mut b);
        o.str("platform", &p);
        {
            let mut a = o.array("schemas");
            for s in &list {
                let mut e = a.object();
                e.str("name", &s.name);
                e.bool("has_tables", s.has_tables);
                e.bool("has_functions", s.has_functions);
                e.bool("has_migrations", s.has_migrations);
                e.bool("has_seeders", s.has_seeders);
                e.str("checksum", &s.checksum);
                e.i64("version", s.version);
                e.str("uploaded_at", &s.uploaded_at);
            }
        }
        o.u64("count", list.len() as u64);
        o.finish();
        Ok((Response::json(200, b), Vec::new()))
    };
    run().unwrap_or_else(err)
}

/// `GET /platform/{platform}/databases?schema=S`.
pub fn list_databases(ctx: &DeployCtx, platform: &str, schema: Option<String>) -> Outcome {
    let run = || -> Result<Outcome, ApiError> {
        let p = names::platform(platform)?;
        let schema = schema.filter(|s| !s.is_empty()).map(|s| schema_name(&s)).transpose()?;
        let mut cat = ctx.catalog()?;
        ctx.authorize(&mut cat, &p)?;
        cat.require_platform(&p)?;
        let recs: Vec<_> =
            cat.databases(&p, schema.as_deref())?.into_iter().filter(|r| r.owner.kind == "schema").collect();
        let mut b = Vec::new();
        let mut o = ObjectWriter::new(&mut b);
        o.str("platform", &p);
        {
            let mut a = o.array("databases");
            for r in &recs {
                let mut e = a.object();
                e.opt_str("id", r.owner.database_id.as_deref());
                e.str("database_name", &r.name);
                e.opt_str("schema_name", r.owner.schema_name.as_deref());
                e.str("created_at", &r.created_at);
                e.str("server", &r.server);
            }
        }
        o.u64("count", recs.len() as u64);
        o.finish();
        Ok((Response::json(200, b), Vec::new()))
    };
    run().unwrap_or_else(err)
}

/// `GET /platforms`.
pub fn list_platforms(ctx: &DeployCtx) -> Outcome {
    let run = || -> Result<Outcome, ApiError> {
        ctx.require_admin("listing every platform")?;
        let mut cat = ctx.catalog()?;
        let list = cat.platforms()?;
        let mut b = Vec::new();
        let mut o = ObjectWriter::new(&mut b);
        {
            let mut a = o.array("platforms");
            for (name, schemas, dbs) in &list {
                let mut e = a.object();
                e.str("name", name);
                e.i64("schemas", *schemas);
                e.i64("databases", *dbs);
            }
        }
        o.u64("count", list.len() as u64);
        o.finish();
        Ok((Response::json(200, b), Vec::new()))
    };
    run().unwrap_or_else(err)
}

/// `POST /database/create` `{"platform", "schema_name", "database_id"}`.
pub fn create_database(ctx: &DeployCtx, body: &Value) -> Outcome {
    let run = || -> Result<Outcome, ApiError> {
        let p = names::platform(required(body, "platform")?)?;
        let schema = schema_name(required(body, "schema_name")?)?;
        let id_raw = required(body, "database_id")?;
        let name = names::v2_database(&p, &schema, id_raw)?;
        let mut cat = ctx.catalog()?;
        // Creating databases is the platform's own business only when it proves who it is.
        if cat.platform_keys(Some(&p))?.is_empty() {
            ctx.require_admin(&format!("creating a database for platform '{p}', which has no key,"))?;
        }
        ctx.authorize(&mut cat, &p)?;
        cat.require_platform(&p)?;
        let (bytes, version) = cat.schema_archive(&p, &schema)?;
        let _slot = ctx.claim(&p)?;
        let archive = ctx.read(&bytes)?;
        let owner = Owner {
            platform: p.clone(),
            kind: "schema".into(),
            tenant_id: None,
            schema_name: Some(schema.clone()),
            database_id: Some(names::sanitize(id_raw)),
        };
        let opts = DeployOptions {
            force: bool_field(body, "force")?,
            dry_run: false,
            reseed: false,
            seed_mode: SeedMode::RunIfEmpty,
            run_id: catalog::new_run_id(),
            protected_schemas: ctx.cfg.call.schemas.clone(),
            time_limit: Some(ctx.cfg.deploy.timeout),
        };
        drop(cat);
        let server = str_field(body, "server")?.filter(|s| !s.is_empty());
        let (_, report, server) = create_and_deploy(ctx, &name, &owner, &archive, &opts, true, server)?;
        let mut b = Vec::with_capacity(1024);
        let mut o = ObjectWriter::new(&mut b);
        o.str("status", "created");
        o.str("database", &name);
        o.str("platform", &p);
        o.str("schema_name", &schema);
        o.str("database_id", owner.database_id.as_deref().unwrap_or(""));
        o.i64("schema_version", version);
        o.bool("created", true);
        o.str("server", &server);
        report.write_fields(&mut o);
        o.finish();
        Ok((Response::json(201, b), vec![name]))
    };
    run().unwrap_or_else(err)
}

/// How a v2 migrate reports.
pub enum Progress<'a> {
    /// One response at the end.
    None,
    /// One NDJSON line per database as it finishes, then a summary line.
    Lines(&'a (dyn Fn(Vec<u8>) + Sync)),
}

/// A parsed v2 migrate request, checked before any work starts.
pub struct MigratePlan {
    pub platform: String,
    pub schema: String,
    pub databases: Vec<String>,
    pub opts: DeployOptions,
    pub stop_on_error: bool,
    pub archive: super::archive::SchemaArchive,
    pub version: i64,
    /// Deploys as the platform's role.
    pub ctx: DeployCtx,
    /// Allowed untrusted extensions the gateway installs first.
    pub untrusted: Vec<String>,
    /// The platform's deploy slot, held until the run (and the plan) ends.
    pub slot: super::service::Slot,
}

/// `POST /v2/migrate` and `/v2/migrate-all`: resolve the target databases from the catalog.
pub fn plan_migrate(ctx: &DeployCtx, body: &Value, all: bool) -> Result<MigratePlan, ApiError> {
    let p = names::platform(required(body, "platform")?)?;
    let schema = schema_name(required(body, "schema_name")?)?;
    let id = if all { None } else { str_field(body, "database_id")? };
    let mut cat = ctx.catalog()?;
    ctx.authorize(&mut cat, &p)?;
    cat.require_platform(&p)?;
    let (bytes, version) = cat.schema_archive(&p, &schema)?;
    let slot = ctx.claim(&p)?;
    let archive = ctx.read(&bytes)?;
    let databases: Vec<String> = match id {
        Some(id) if id != "all" => {
            let name = names::v2_database(&p, &schema, id)?;
            let want = Owner {
                platform: p.clone(),
                kind: "schema".into(),
                tenant_id: None,
                schema_name: Some(schema.clone()),
                database_id: Some(names::sanitize(id)),
            };
            match cat.owner_of(&name)? {
                Some(o) if o == want => vec![name],
                Some(_) => {
                    return Err(ApiError::new(
                        Kind::NameConflict,
                        format!("database '{name}' belongs to someone else"),
                    )
                    .with_database(name));
                }
                None => {
                    return Err(ApiError::new(
                        Kind::DatabaseNotFound,
                        format!("database '{name}' was not created from schema '{schema}'"),
                    )
                    .with_database(name));
                }
            }
        }
        _ => {
            cat.databases(&p, Some(&schema))?.into_iter().filter(|r| r.owner.kind == "schema").map(|r| r.name).collect()
        }
    };
    let opts = DeployOptions {
        force: bool_field(body, "force")?,
        dry_run: bool_field(body, "dry_run")?,
        reseed: bool_field(body, "reseed")?,
        seed_mode: SeedMode::Verify,
        run_id: catalog::new_run_id(),
        protected_schemas: ctx.cfg.call.schemas.clone(),
        time_limit: Some(ctx.cfg.deploy.timeout),
    };
    let untrusted = ctx.check_extensions(&archive)?;
    let ctx = ctx.as_platform(&mut cat, &p)?;
    Ok(MigratePlan {
        platform: p,
        schema,
        databases,
        opts,
        stop_on_error: bool_field(body, "stop_on_error")?,
        archive,
        version,
        ctx,
        untrusted,
        slot,
    })
}

/// Runs a planned migrate: records the run (its id goes to `on_started` first, e.g. for a 202), holds
/// an advisory lock named after it while it runs, records each result as it finishes.
pub fn run_migrate(
    plan: &MigratePlan,
    on_started: &mut dyn FnMut(&str),
    progress: Progress<'_>,
) -> (Response, Vec<String>) {
    let started = Instant::now();
    let mut c = match plan.ctx.catalog() {
        Ok(c) => c,
        Err(e) => return err(e),
    };
    // The run's id is the one the deploys write into each database's changelog.
    let run_id = plan.opts.run_id.clone();
    if let Err(e) =
        c.start_run_as(&run_id, "v2_migrate", Some(&plan.platform), Some(&plan.schema), plan.databases.len())
    {
        return err(e);
    }
    plan.ctx.metrics.fleet_started(&run_id, &plan.platform, &plan.schema, plan.databases.len());
    on_started(&run_id);
    let cat = Mutex::new(c);
    let run_id = run_id.as_str();
    let on_done = |r: &DbResult, done: usize, total: usize| {
        let mut line = Vec::with_capacity(256);
        {
            let mut o = ObjectWriter::new(&mut line);
            write_db_result(&mut o, r);
            o.u64("done", done as u64);
            o.u64("total", total as u64);
        }
        if let Ok(mut c) = cat.lock() {
            let json = String::from_utf8_lossy(&line);
            super::service::record_db_result(&mut c, run_id, &r.database, r.result.is_ok(), plan.opts.dry_run, &json);
        }
        plan.ctx.metrics.fleet_progress(run_id, done, r.result.is_err());
        if let Progress::Lines(send) = &progress {
            line.push(b'\n');
            send(line);
        }
    };
    let results = migrate_many(
        &plan.ctx,
        &plan.databases,
        &plan.archive,
        &plan.opts,
        &plan.untrusted,
        plan.stop_on_error,
        &on_done,
    );
    let failed = results.iter().filter(|r| r.result.is_err()).count();
    let not_started = plan.databases.len() - results.len();
    let status = super::service::run_status(failed, results.len() - failed, plan.opts.dry_run);
    if let Ok(mut c) = cat.lock() {
        let _ = c.finish_run(run_id, status);
    }
    plan.ctx.metrics.fleet_finished(run_id, status);
    let changed = if plan.opts.dry_run {
        Vec::new()
    } else {
        results.iter().filter(|r| r.result.is_ok()).map(|r| r.database.clone()).collect()
    };
    let resp = migrate_response(&results, started, plan.opts.dry_run, &|o| {
        o.str("platform", &plan.platform);
        o.str("schema_name", &plan.schema);
        o.str("run_id", run_id);
        let mut v = o.object("verification");
        v.i64("schema_version", plan.version);
        v.str("checksum", &plan.archive.checksum);
        v.u64("databases_total", plan.databases.len() as u64);
        v.u64("databases_succeeded", results.iter().filter(|r| r.result.is_ok()).count() as u64);
        v.u64("databases_failed", results.iter().filter(|r| r.result.is_err()).count() as u64);
        v.u64("databases_not_started", not_started as u64);
        super::service::write_verification(&mut v, &results);
    });
    (resp, changed)
}

/// `GET /runs/{id}`.
pub fn get_run(ctx: &DeployCtx, id: &str) -> Outcome {
    let run = || -> Result<Outcome, ApiError> {
        let mut cat = ctx.catalog()?;
        let r = cat.run(id)?.ok_or_else(|| ApiError::new(Kind::RunNotFound, format!("no run '{id}'")))?;
        match &r.platform {
            Some(p) => ctx.authorize(&mut cat, p)?,
            None => ctx.require_admin("reading a run that belongs to no platform")?,
        }
        let mut b = Vec::with_capacity(512);
        let mut o = ObjectWriter::new(&mut b);
        o.str("run_id", &r.id);
        o.str("kind", &r.kind);
        o.opt_str("platform", r.platform.as_deref());
        o.opt_str("schema_name", r.schema_name.as_deref());
        o.str("status", &r.status);
        o.bool("dry_run", r.status.starts_with("dry_run"));
        o.i64("total", r.total);
        o.u64("done", r.results.len() as u64);
        o.u64("failed", r.results.iter().filter(|x| x.1 == "failed").count() as u64);
        o.str("started_at", &r.started_at);
        o.opt_str("finished_at", r.finished_at.as_deref());
        {
            let mut a = o.array("results");
            for (_, _, json) in &r.results {
                a.raw(json);
            }
        }
        o.finish();
        Ok((Response::json(200, b), Vec::new()))
    };
    run().unwrap_or_else(err)
}

/// Marks runs whose gateway is gone as interrupted: a live run holds an advisory lock named after it.
pub fn mark_interrupted_runs(ctx: &DeployCtx) -> Result<usize, ApiError> {
    let mut cat = ctx.catalog()?;
    let r = cat
        .client
        .query("SELECT id FROM runs WHERE status = 'running'", &[])
        .map_err(|e| catalog::pg_api(e, "catalog lookup failed"))?;
    let mut n = 0;
    for row in r.rows {
        let Some(id) = row[0].as_deref() else { continue };
        let free = cat
            .client
            .query("SELECT pg_try_advisory_lock(hashtext($1))::text", &[Some(id)])
            .map_err(|e| catalog::pg_api(e, "catalog lookup failed"))?;
        if free.rows.first().and_then(|r| r[0].as_deref()) == Some("true") {
            let _ = cat.client.query(
                "UPDATE runs SET status = 'interrupted', finished_at = now() WHERE id = $1 AND status = 'running'",
                &[Some(id)],
            );
            let _ = cat.client.query("SELECT pg_advisory_unlock(hashtext($1))", &[Some(id)]);
            n += 1;
        }
    }
    Ok(n)
}
