//! The deploy operations behind the HTTP routes (`/register`, `/migrate`, `/admin/databases`,
//! `/admin/create-tenant`). Each runs on a worker thread with blocking connections and returns the
//! response plus the databases whose cached `/call` statements must be dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::archive::{ArchiveLimits, SchemaArchive, read_archive};
use super::context::{DeployOptions, DeployReport, SeedMode};
use super::engine::deploy;
use super::form::DeployForm;
use crate::catalog::{self, Catalog, Owner, pg_api};
use crate::config::Config;
use crate::error::{ApiError, Kind};
use crate::http::response::Response;
use crate::json::{ObjectWriter, Value};
use crate::metrics::DeployMetrics;
use crate::pg::blocking::Client;
use crate::pg::dberror::PgError;
use crate::pg::params::ConnectParams;
use crate::security::keys::{Credential, StoredKey};
use crate::security::{names, roles};
use crate::servers::{DEFAULT_SERVER, Servers};

/// What a deploy operation needs: configuration, how to reach PostgreSQL as the gateway's login, who
/// asked, and (once [`DeployCtx::as_platform`] made sure of it) the platform role its SQL runs as.
#[derive(Clone)]
pub struct DeployCtx {
    pub cfg: Arc<Config>,
    /// The gateway's own login on the server this context works on (see [`DeployCtx::on_server`]):
    /// CREATE DATABASE, roles. Never runs platform SQL.
    pub admin: ConnectParams,
    /// The gateway's login on the default server, which holds the catalog.
    pub catalog_admin: ConnectParams,
    /// Every known server.
    pub servers: Arc<Servers>,
    /// The server `admin` reaches.
    pub server: String,
    /// The platform role this context's deploys log in as; `None` until [`DeployCtx::as_platform`].
    pub role: Option<String>,
    /// The platform of `role`.
    pub platform: Option<String>,
    /// What the request presented (platform key or admin token).
    pub cred: Credential,
    /// Deploy counts for `/metrics` and the status page, shared by every context of this gateway.
    pub metrics: Arc<DeployMetrics>,
    /// Deploys running per platform, shared by every context of this gateway.
    pub slots: Arc<PlatformSlots>,
}

/// How many deploys each platform runs right now (`DEPLOY_MAX_PER_PLATFORM`): one platform's slow
/// uploads must leave workers to the others.
#[derive(Default)]
pub struct PlatformSlots {
    running: Mutex<std::collections::HashMap<String, usize>>,
}

/// One running deploy of a platform; dropping it frees the slot.
pub struct Slot {
    slots: Arc<PlatformSlots>,
    platform: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.slots.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.platform) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.platform);
            }
        }
    }
}

/// `application_name` of every deploy session, so an operator (and the gateway at start) can tell
/// them apart in `pg_stat_activity`.
pub const DEPLOY_APPLICATION_NAME: &str = "stonescriptdb-gateway deploy";

/// The `SET`s that bound a deploy session: `statement_timeout`, `idle_in_transaction_session_timeout`
/// and, where the server has it (PostgreSQL 14+), `client_connection_check_interval`, so a deploy whose
/// gateway died stops instead of running on to the end of its migration.
pub fn session_limits(cfg: &crate::config::DeployConfig, server_version_num: u32) -> String {
    let mut sql = format!(
        "SET statement_timeout = {}; SET idle_in_transaction_session_timeout = {};",
        cfg.statement_timeout.as_millis(),
        cfg.idle_timeout.as_millis()
    );
    if server_version_num >= 140000 {
        sql.push_str(&format!(" SET client_connection_check_interval = {};", cfg.connection_check.as_millis()));
    }
    sql
}

/// The response and the databases that changed.
pub type Outcome = (Response, Vec<String>);

fn err(e: ApiError) -> Outcome {
    (Response::error(&e), Vec::new())
}

/// Databases no platform may ever have: PostgreSQL's own.
const SYSTEM_DATABASES: [&str; 3] = ["postgres", "template0", "template1"];

impl DeployCtx {
    pub fn new(cfg: Arc<Config>) -> DeployCtx {
        let admin = cfg.db.connect_params();
        let servers = Servers::new(admin.clone(), cfg.servers.default_replicas.clone());
        DeployCtx::with_servers(cfg, servers)
    }

    /// A context that shares `servers` with the rest of the gateway.
    pub fn with_servers(cfg: Arc<Config>, servers: Arc<Servers>) -> DeployCtx {
        let admin = cfg.db.connect_params();
        DeployCtx {
            cfg,
            catalog_admin: admin.clone(),
            admin,
            servers,
            server: DEFAULT_SERVER.to_string(),
            role: None,
            platform: None,
            cred: Credential::default(),
            metrics: Arc::default(),
            slots: Arc::default(),
        }
    }

    /// The same context for a request that presented `cred`.
    pub fn with_credential(&self, cred: Credential) -> DeployCtx {
        DeployCtx { cred, ..self.clone() }
    }

    /// Takes one of the platform's deploy slots, or refuses with a retryable 503 when it runs
    /// `DEPLOY_MAX_PER_PLATFORM` deploys already (a fleet run takes one slot for all its databases).
    pub fn claim(&self, platform: &str) -> Result<Slot, ApiError> {
        let cap = self.cfg.deploy.max_per_platform;
        let mut m = self.slots.running.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(platform.to_string()).or_insert(0);
        if *n >= cap {
            return Err(ApiError::new(
                Kind::DeployPlatformBusy,
                format!(
                    "platform '{platform}' already runs {n} deploys (DEPLOY_MAX_PER_PLATFORM is {cap}); retry when \
                     one has finished"
                ),
            ));
        }
        *n += 1;
        Ok(Slot { slots: self.slots.clone(), platform: platform.to_string() })
    }

    /// Refuses a request on `platform` without its key (or the admin token) when one is needed.
    pub fn authorize(&self, cat: &mut Catalog, platform: &str) -> Result<(), ApiError> {
        let keys: Vec<StoredKey> = cat.platform_keys(Some(platform))?.into_iter().map(|(_, k)| k).collect();
        self.cred.allows(platform, &keys, self.cfg.security.require_platform_keys)
    }

    /// Whether `platform` exists in any form; when it does not, whether this request may create it
    /// (`PLATFORM_REGISTRATION`, `MAX_PLATFORMS`).
    pub fn check_platform_creation(&self, cat: &mut Catalog, platform: &str) -> Result<bool, ApiError> {
        let (role, _) = self.role_of(cat, platform)?;
        if cat.platform_exists_anywhere(platform, &role, &format!("{platform}_main"))? {
            return Ok(true);
        }
        if self.cfg.security.registration == crate::config::Registration::Admin {
            self.require_admin(&format!("creating platform '{platform}' (PLATFORM_REGISTRATION=admin)"))?;
        }
        let cap = self.cfg.security.max_platforms;
        if cap > 0 && cat.platform_count()? >= cap {
            return Err(ApiError::new(
                Kind::PlatformLimitReached,
                format!("this gateway has {cap} platforms, the most MAX_PLATFORMS allows; no more are created"),
            ));
        }
        Ok(false)
    }

    /// Admin-only operations.
    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.cred.admin {
            Ok(())
        } else {
            Err(ApiError::new(
                Kind::AdminTokenInvalid,
                format!("{what} needs the admin token (Authorization: Bearer <ADMIN_TOKEN>) from ALLOWED_ADMIN_IPS"),
            ))
        }
    }

    /// The role platform `platform` runs as: recorded, or derived from its name.
    pub fn role_of(&self, cat: &mut Catalog, platform: &str) -> Result<(String, bool), ApiError> {
        match cat.platform_role(platform)? {
            Some(r) => Ok(r),
            None => Ok((roles::role_name(&self.cfg.security.role_prefix, platform)?, false)),
        }
    }

    /// Makes sure the platform's role exists and is fit (creating it on a first deploy), and returns a
    /// context whose deploys log in as that role.
    pub fn as_platform(&self, cat: &mut Catalog, platform: &str) -> Result<DeployCtx, ApiError> {
        let mut admin = self.admin_session()?;
        let r = self.as_platform_on(cat, &mut admin, platform);
        self.keep_admin(admin);
        r
    }

    /// [`DeployCtx::as_platform`] with an admin session on this context's server that the caller
    /// already holds.
    pub fn as_platform_on(&self, cat: &mut Catalog, admin: &mut Client, platform: &str) -> Result<DeployCtx, ApiError> {
        let (role, adopted) = self.role_of(cat, platform)?;
        self.ensure_role(admin, platform, &role, adopted)?;
        cat.record_platform_role(platform, &role, adopted)?;
        Ok(DeployCtx { role: Some(role), platform: Some(platform.to_string()), ..self.clone() })
    }

    /// Creates or checks the platform's role on this context's server; its password is set once per
    /// process (see [`roles::ensure_platform_role_known`]).
    fn ensure_role(&self, admin: &mut Client, platform: &str, role: &str, adopted: bool) -> Result<(), ApiError> {
        let secret = &self.cfg.security.platform_secret;
        roles::ensure_platform_role_known(
            admin,
            &self.admin.target(),
            &self.admin.user,
            platform,
            role,
            secret,
            adopted,
        )
    }

    /// A database name that no platform may use: PostgreSQL's own databases and the catalog.
    pub fn check_reserved(&self, name: &str) -> Result<(), ApiError> {
        if SYSTEM_DATABASES.contains(&name) || name == self.cfg.deploy.catalog_db {
            return Err(ApiError::new(
                Kind::NameConflict,
                format!(
                    "database name '{name}' is reserved (PostgreSQL's own or the gateway's catalog); choose other names"
                ),
            )
            .with_database(name));
        }
        Ok(())
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

    /// An admin session on this context's server, one kept from an earlier request when there is one
    /// (see `catalog::idle`); hand it back with [`DeployCtx::keep_admin`].
    fn admin_session(&self) -> Result<Client, ApiError> {
        crate::catalog::idle::connect(&self.admin).map_err(|e| pg_api(e, "cannot connect to PostgreSQL"))
    }

    /// Keeps an admin session that holds no lock for the next request (closed when not clean).
    fn keep_admin(&self, admin: Client) {
        crate::catalog::idle::give_back(&self.admin, admin, 0);
    }

    /// A session in `database` as the platform role (platform SQL runs only in such sessions), its
    /// backend (to end it past the deploy's time limit) and the database's OID.
    fn connect(&self, database: &str) -> Result<(Client, crate::pg::terminate::Backend, String), ApiError> {
        let role = self.role.as_deref().ok_or_else(|| {
            ApiError::new(Kind::Internal, "a deploy session was asked for without a platform role")
                .with_database(database)
        })?;
        let mut params = self.admin.with_dbname(database);
        params.user = role.to_string();
        params.password = Some(roles::password(&self.cfg.security.platform_secret, role));
        params.application_name = DEPLOY_APPLICATION_NAME.to_string();
        let mut login = Client::connect(&params);
        if let Err(PgError::Db(d)) = &login
            && d.code == "28P01"
        {
            // The password this process set once was changed by someone else (another gateway
            // with another secret): set it again, then log in once more.
            let secret = &self.cfg.security.platform_secret;
            roles::forget_password(&self.admin.target(), &self.admin.user, role, secret);
            if let (Some(platform), Ok(mut admin)) = (self.platform.as_deref(), self.admin_client()) {
                let adopted = self.catalog().and_then(|mut cat| self.role_of(&mut cat, platform)).map(|(_, a)| a);
                let again = adopted.and_then(|a| self.ensure_role(&mut admin, platform, role, a));
                admin.close();
                if again.is_ok() {
                    login = Client::connect(&params);
                }
            }
        }
        let mut c = login.map_err(|e| {
            let mut a = pg_api(e, &format!("cannot connect to database '{database}' as role '{role}'"));
            if a.db.as_ref().is_some_and(|d| d.sqlstate == "3D000") {
                a.kind = Kind::DatabaseNotFound;
                a.message = format!("database '{database}' does not exist");
            }
            a.with_database(database)
        })?;
        // What the platform's statements send back is bounded like everything else it sends.
        c.set_max_result_bytes(self.cfg.deploy.max_result_bytes);
        let setup = session_limits(&self.cfg.deploy, c.session().server_version_num);
        // Read before the platform's SQL runs: the session can change its name and settings, never
        // its pid and start time. One round trip with the limits.
        match crate::pg::terminate::own_backend_after(&mut c, &setup) {
            Ok((b, oid)) => Ok((c, b, oid)),
            Err(e) => {
                c.close();
                Err(pg_api(e, "cannot set up the deploy session (time limits, backend identity)")
                    .with_database(database))
            }
        }
    }

    /// Checks the archive's extensions before anything changes: trusted ones are installed by the platform
    /// role, others only when `EXTENSIONS_ALLOWED` lists them. Returns the untrusted ones to install.
    pub fn check_extensions(&self, archive: &SchemaArchive) -> Result<Vec<String>, ApiError> {
        let wanted: Vec<_> = archive.extensions.iter().flat_map(super::engine::wanted_extensions).collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut admin = self.admin_client()?;
        let mut untrusted = Vec::new();
        for w in &wanted {
            // A pin into a `/call` schema (archives written for 1.x have them) is not refused: the
            // engine installs the extension into `extensions` instead and says so in `warnings`.
            let r = admin
                .query(
                    "SELECT bool_or(trusted)::text FROM pg_available_extension_versions WHERE name = $1",
                    &[Some(&w.name)],
                )
                .map_err(|e| pg_api(e, "cannot look up extensions"))?;
            match r.rows.first().and_then(|row| row[0].as_deref()) {
                // Not available at all: the deploy step says so with file and line.
                None => {}
                Some("true") => {}
                Some(_) if self.cfg.security.extensions_allowed.contains(&w.name) => untrusted.push(w.name.clone()),
                Some(_) => {
                    return Err(ApiError::new(
                        Kind::ExtensionNotAllowed,
                        format!(
                            "extension {} is not trusted (it can reach beyond the platform's databases); an operator \
                             may allow it with EXTENSIONS_ALLOWED",
                            w.name
                        ),
                    ));
                }
            }
        }
        admin.close();
        Ok(untrusted)
    }

    /// Installs allowed untrusted extensions into `database` as the gateway's login (a platform role
    /// cannot), into the extensions schema.
    fn install_untrusted(&self, database: &str, names: &[String]) -> Result<(), ApiError> {
        let role = self.role.as_deref().unwrap_or_default();
        let mut c = Client::connect(&self.admin.in_foreign_database(database))
            .map_err(|e| pg_api(e, &format!("cannot connect to database '{database}'")).with_database(database))?;
        let r = roles::install_extensions(&mut c, role, names, Duration::from_secs(10))
            .map_err(|e| e.with_database(database));
        c.close();
        r
    }

    /// Deploys `archive` to one database as the platform role.
    pub fn deploy_one(
        &self,
        database: &str,
        archive: &SchemaArchive,
        opts: &DeployOptions,
        untrusted: &[String],
    ) -> Result<DeployReport, ApiError> {
        if !untrusted.is_empty() && !opts.dry_run {
            self.install_untrusted(database, untrusted)?;
        }
        let (mut c, backend, oid) = self.connect(database)?;
        let r = deploy(&mut c, database, &oid, archive, opts);
        c.close();
        if r.as_ref().is_err_and(|e| e.kind == Kind::DeployTimeout) {
            // The backend may still be busy if the statement ignored the cancel (the watchdog cut our
            // socket); end it so its locks go too, and answer only once it is gone.
            self.end_backend(database, &backend);
        }
        if let Ok(rep) = &r
            && !rep.dry_run
        {
            self.metrics.applied(rep.migrations_applied.len(), rep.functions_changed.len());
        }
        r
    }

    /// Ends a deploy backend that outlived its limit, by pid and start time, and waits for it to go.
    fn end_backend(&self, database: &str, b: &crate::pg::terminate::Backend) {
        let wait = Duration::from_secs(10);
        let gone = self.admin_client().map_err(|e| e.to_string()).and_then(|mut admin| {
            let r = crate::pg::terminate::terminate(&mut admin, b, wait).map_err(|e| e.to_string());
            admin.close();
            r
        });
        match gone {
            Ok(true) => {}
            Ok(false) => crate::log::warn(
                "a timed-out deploy's backend is still listed after its termination",
                &[("database", &database), ("pid", &b.pid)],
            ),
            Err(e) => crate::log::warn(
                "could not end a timed-out deploy's backend",
                &[("database", &database), ("pid", &b.pid), ("error", &e)],
            ),
        }
    }

    /// Creates `name` for `owner` (the caller holds the name's create lock on `admin`), recorded as
    /// `creating` before it exists and with its OID right after, so a gateway killed at any point
    /// leaves something the next start can clean up safely. Refuses past `MAX_DATABASES_PER_PLATFORM`.
    /// `Ok(false)`: the database appeared meanwhile (not created by this call).
    fn create_recorded(
        &self,
        cat: &mut Catalog,
        admin: &mut Client,
        name: &str,
        owner: &Owner,
        recorded: bool,
    ) -> Result<bool, ApiError> {
        let cap = self.cfg.deploy.max_databases_per_platform;
        // Counting and recording under one per-platform lock, so parallel creations cannot both pass.
        let quota_lock = format!("stonescriptdb:create-quota:{}", owner.platform);
        admin
            .query("SELECT pg_advisory_lock(hashtext($1))", &[Some(&quota_lock)])
            .map_err(|e| pg_api(e, "cannot lock the platform's database count"))?;
        let counted = (|| {
            if cap > 0 && !recorded && cat.database_count(&owner.platform)? >= cap {
                return Err(ApiError::new(
                    Kind::DatabaseLimitReached,
                    format!(
                        "platform '{}' has {cap} databases, the most MAX_DATABASES_PER_PLATFORM allows; drop one or \
                         ask the operator for a higher limit",
                        owner.platform
                    ),
                )
                .with_database(name));
            }
            cat.record_creating(name, owner)?;
            cat.set_server_of(name, &self.server)
        })();
        let _ = admin.query("SELECT pg_advisory_unlock(hashtext($1))", &[Some(&quota_lock)]);
        counted?;
        let role = self.role.clone().unwrap_or_default();
        let created = roles::create_platform_database(admin, name, &role, &self.cfg.call.schemas);
        match &created {
            Ok(true) => {
                let oid = admin
                    .query("SELECT oid::text FROM pg_database WHERE datname = $1", &[Some(name)])
                    .ok()
                    .and_then(|r| r.rows.into_iter().next())
                    .and_then(|row| row[0].clone());
                if let Err(e) = cat.mark_created(name, oid.as_deref()) {
                    // The row stays `creating` without an OID: a clean-up then only drops a database
                    // owned by the platform's role or the gateway's login (see clean_unfinished_creations).
                    crate::log::warn("could not record a new database's OID", &[("database", &name), ("error", &e)]);
                }
            }
            Ok(false) | Err(_) => {
                let _ = if recorded { cat.mark_ready(name) } else { cat.forget_database(name) };
            }
        }
        created
    }

    /// The catalog (always on the default server).
    pub fn catalog(&self) -> Result<Catalog, ApiError> {
        Catalog::open_kept(&self.catalog_admin, &self.cfg.deploy.catalog_db)
    }

    /// The same context working on server `name`. A server this process has not heard of yet (another
    /// gateway added it) is looked up in the catalog.
    pub fn on_server(&self, name: &str) -> Result<DeployCtx, ApiError> {
        if name == self.server {
            return Ok(self.clone());
        }
        let s = match self.servers.get(name) {
            Some(s) => s,
            None => {
                let defs = self.catalog()?.servers()?;
                self.servers.replace(defs);
                self.servers.get(name).ok_or_else(|| crate::catalog::servers::not_found(name))?
            }
        };
        Ok(DeployCtx { admin: s.params(self.servers.base()), server: name.to_string(), ..self.clone() })
    }

    /// Makes sure this context's platform role exists on its server (a server that got the platform's
    /// first database there, or a fleet run reaching a server the role was never made on).
    pub fn ensure_role_here(&self) -> Result<(), ApiError> {
        let (Some(role), Some(platform)) = (self.role.as_deref(), self.platform.as_deref()) else { return Ok(()) };
        let mut admin = self.admin_client()?;
        let r = self.ensure_role(&mut admin, platform, role, false);
        admin.close();
        r
    }
}

/// Takes the create lock of database `name` on the catalog session (held until it is released or
/// the session ends): one creation per name at a time, whichever server it goes to.
fn lock_name(cat: &mut Catalog, name: &str) -> Result<(), ApiError> {
    cat.client
        .query("SELECT pg_advisory_lock(hashtext('stonescriptdb:create:' || $1))", &[Some(name)])
        .map(|_| cat.locks_held += 1)
        .map_err(|e| pg_api(e, "cannot lock the database name"))
}

const UNLOCK_NAME_SQL: &str = "SELECT pg_advisory_unlock(hashtext('stonescriptdb:create:' || $1))";

fn unlock_name(cat: &mut Catalog, name: &str) {
    if cat.client.query(UNLOCK_NAME_SQL, &[Some(name)]).is_ok() {
        cat.locks_held = cat.locks_held.saturating_sub(1);
    }
}

/// The server database `name` lives on, or goes to, with an admin session there. A recorded
/// database stays where it is. A new one goes to `requested` if given, else to the platform's default
/// server, else to the active server with the fewest databases for its weight; when a server chosen
/// that way cannot be reached the next one is tried, so a server that is down gets nothing and leaves
/// nothing behind. A requested server must be recorded, active and reachable.
fn place(
    ctx: &DeployCtx,
    cat: &mut Catalog,
    name: &str,
    platform: &str,
    requested: Option<&str>,
) -> Result<(DeployCtx, Client), ApiError> {
    let defs = cat.servers()?;
    ctx.servers.replace(defs.clone());
    let connect = |c: &DeployCtx| {
        c.admin_session().map_err(|e| {
            ApiError::new(
                Kind::ConnectionFailed,
                format!("server '{}' ({}) cannot be reached: {}", c.server, c.admin.target(), e.message),
            )
            .with_database(name)
        })
    };
    if let Some(server) = cat.server_of(name)? {
        if requested.is_some_and(|r| r != server) {
            return Err(ApiError::new(
                Kind::Conflict,
                format!("database '{name}' lives on server '{server}'; a database never moves between servers"),
            )
            .with_database(name));
        }
        let c = ctx.on_server(&server)?;
        let admin = connect(&c)?;
        return Ok((c, admin));
    }
    let preferred = match requested {
        Some(r) => Some(r.to_string()),
        None => cat.platform_default_server(platform)?,
    };
    if let Some(want) = preferred {
        let Some(d) = defs.iter().find(|d| d.name == want) else {
            return Err(crate::catalog::servers::not_found(&want).with_database(name));
        };
        if d.state != crate::servers::ServerState::Active {
            return Err(ApiError::new(
                Kind::Conflict,
                format!("server '{want}' is {}: it takes no new databases", d.state.as_str()),
            )
            .with_database(name));
        }
        let c = ctx.on_server(&want)?;
        let admin = connect(&c)?;
        return Ok((c, admin));
    }
    let counts = cat.databases_per_server()?;
    let candidates: Vec<(crate::servers::ServerDef, u64)> = defs
        .into_iter()
        .map(|d| {
            let n = counts.iter().find(|(s, _)| *s == d.name).map_or(0, |(_, n)| *n);
            (d, n)
        })
        .collect();
    let mut last = None;
    for server in crate::servers::placement_order(&candidates) {
        let c = ctx.on_server(&server)?;
        match connect(&c) {
            Ok(admin) => return Ok((c, admin)),
            Err(e) => {
                crate::log::warn("server skipped for a new database", &[("server", &server), ("error", &e)]);
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        ApiError::new(Kind::ConnectionFailed, "no active server takes new databases (all are draining)")
            .with_database(name)
    }))
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
    server: Option<&str>,
) -> Result<(bool, DeployReport, String), ApiError> {
    ctx.check_reserved(name)?;
    let mut cat = ctx.catalog()?;
    create_and_deploy_in(ctx, &mut cat, name, owner, archive, opts, must_be_new, server)
}

/// [`create_and_deploy`] on a catalog session the caller opened (and holds no create lock on).
#[allow(clippy::too_many_arguments)]
pub fn create_and_deploy_in(
    ctx: &DeployCtx,
    cat: &mut Catalog,
    name: &str,
    owner: &Owner,
    archive: &SchemaArchive,
    opts: &DeployOptions,
    must_be_new: bool,
    server: Option<&str>,
) -> Result<(bool, DeployReport, String), ApiError> {
    ctx.check_reserved(name)?;
    cat.check_owner(name, owner)?;
    // One create-and-first-deploy per database name at a time, across gateways and servers:
    // otherwise a request whose first deploy fails could drop the database another request is
    // deploying to. The lock is the catalog session's: released here, or when the session ends.
    lock_name(cat, name)?;
    let mut released = false;
    let r = locked_create_and_deploy(ctx, cat, name, owner, archive, opts, must_be_new, server, &mut released);
    if !released {
        unlock_name(cat, name);
    }
    r
}

#[allow(clippy::too_many_arguments)]
fn locked_create_and_deploy(
    ctx: &DeployCtx,
    cat: &mut Catalog,
    name: &str,
    owner: &Owner,
    archive: &SchemaArchive,
    opts: &DeployOptions,
    must_be_new: bool,
    server: Option<&str>,
    released: &mut bool,
) -> Result<(bool, DeployReport, String), ApiError> {
    let recorded = cat.owner_of(name)?.is_some();
    // Everything that can be refused is refused before anything is created.
    let untrusted = ctx.check_extensions(archive)?;
    let (placed, mut admin) = place(ctx, cat, name, &owner.platform, server)?;
    let ctx = &placed.as_platform_on(cat, &mut admin, &owner.platform)?;
    let exists = catalog::database_exists(&mut admin, name)?;
    if exists && !recorded {
        // Not the gateway's: serving it would hand someone else's database to this platform.
        return Err(ApiError::new(Kind::NameConflict, super::upstream::unrecorded_message(name, &owner.platform))
            .with_database(name));
    }
    if exists && must_be_new {
        return Err(
            ApiError::new(Kind::DatabaseAlreadyExists, format!("database '{name}' already exists")).with_database(name)
        );
    }
    let created = !exists && ctx.create_recorded(cat, &mut admin, name, owner, recorded)?;
    if must_be_new && !created {
        // Another request created it between the check and CREATE DATABASE: it is theirs.
        return Err(
            ApiError::new(Kind::DatabaseAlreadyExists, format!("database '{name}' already exists")).with_database(name)
        );
    }
    if created || !opts.dry_run {
        cat.record_database(name, owner)?;
    }
    let result = ctx.deploy_one(name, archive, opts, &untrusted);
    let undo = created && (result.is_err() || opts.dry_run);
    if undo {
        if let Err(e) = catalog::drop_database(&mut admin, name) {
            crate::log::error(
                "could not drop a database after its failed first deploy",
                &[("database", &name), ("error", &e)],
            );
        }
        let _ = cat.forget_database(name);
    } else if created {
        // Still under the name's lock: a clean-up at start never sees a finished database as unfinished.
        if let Err(e) = cat.mark_ready(name) {
            crate::log::warn("could not mark a new database ready", &[("database", &name), ("error", &e)]);
        }
    }
    let failed = usize::from(result.is_err());
    // A failed first deploy is recorded too (its database is gone again, so the record is the run's
    // only), so the run says what failed where. The run, its result and the name's release go in
    // one round trip.
    let json = result_json(name, &result);
    let status = if result.is_ok() { if opts.dry_run || undo { "dry_run" } else { "success" } } else { "failed" };
    let recorded_run = cat.record_run_once(
        if must_be_new { "create" } else { "register" },
        Some(&owner.platform),
        owner.schema_name.as_deref(),
        name,
        (status, &json),
        run_status(failed, 1 - failed, opts.dry_run),
        opts.dry_run || undo,
        (UNLOCK_NAME_SQL, &[Some(name)]),
    );
    // The pipeline's last statement released the name; when it failed, its stand-in tried, and the
    // session is not kept (ending it releases whatever it may still hold).
    *released = true;
    match recorded_run {
        Ok(_) => cat.locks_held = cat.locks_held.saturating_sub(1),
        Err(e) => crate::log::warn("could not record a deploy run", &[("database", &name), ("error", &e)]),
    }
    if created {
        admin.close();
    } else {
        // Only the role check and the existence check ran on it: the next request may use it.
        ctx.keep_admin(admin);
    }
    result.map(|r| (created, r, ctx.server.clone())).map_err(|e| e.with_database(name))
}

/// At start: databases whose creation never finished (a gateway killed during `/register`,
/// `/database/create` or `/admin/create-tenant`) are dropped and forgotten. Only what the catalog
/// marks `creating`, only when no live gateway holds the name's create lock, and only the database the
/// gateway made: the OID it recorded, or (when it died before recording one) a database owned by the
/// platform's role or the gateway's login. Anything else of that name is left alone and only the row
/// goes. Returns the databases dropped; logs each.
pub fn clean_unfinished_creations(ctx: &DeployCtx) -> Result<Vec<String>, ApiError> {
    let mut cat = ctx.catalog()?;
    let rows = cat.unfinished_creations()?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut dropped = Vec::new();
    for (name, _) in rows {
        let lock = cat
            .client
            .query("SELECT pg_try_advisory_lock(hashtext('stonescriptdb:create:' || $1))::text", &[Some(&name)])
            .map_err(|e| pg_api(e, "cannot lock the database name"))?;
        if lock.rows.first().and_then(|r| r[0].as_deref()) != Some("true") {
            continue; // a live gateway is creating it right now
        }
        let r = (|| -> Result<(), ApiError> {
            let server = cat.server_of(&name)?.unwrap_or_else(|| DEFAULT_SERVER.to_string());
            let mut admin = ctx.on_server(&server)?.admin_client()?;
            // Read again under the lock: its creator may have finished in between.
            let Some((state, oid)) = cat.creation_state(&name)? else { return Ok(()) };
            if state != "creating" {
                return Ok(());
            }
            let owner = cat.owner_of(&name)?.map(|o| o.platform).unwrap_or_default();
            let role = ctx.role_of(&mut cat, &owner).map(|(r, _)| r).unwrap_or_default();
            let ours = admin
                .query(
                    "SELECT d.oid::text, (d.oid::text = $2 OR ($2 IS NULL AND r.rolname IN ($3, current_user)))::text \
                     FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = $1",
                    &[Some(&name), oid.as_deref(), Some(&role)],
                )
                .map_err(|e| pg_api(e, "cannot look up databases"))?;
            match ours.rows.first() {
                Some(row) if row[1].as_deref() == Some("true") => {
                    catalog::drop_database(&mut admin, &name)?;
                    crate::log::warn(
                        "dropped a database whose creation never finished (its gateway stopped during it)",
                        &[("database", &name)],
                    );
                    dropped.push(name.clone());
                }
                Some(_) => crate::log::warn(
                    "a database marked as being created is not the one the gateway made; left alone, only the \
                     catalog row is removed",
                    &[("database", &name)],
                ),
                None => {}
            }
            admin.close();
            cat.forget_database(&name)
        })();
        unlock_name(&mut cat, &name);
        if let Err(e) = r {
            // One server that cannot be reached leaves its rows for a later start; the rest go on.
            crate::log::warn(
                "an unfinished database creation could not be cleaned up",
                &[("database", &name), ("error", &e)],
            );
        }
    }
    Ok(dropped)
}

/// `POST /register`: create the database if missing, then the whole pipeline.
pub fn register(ctx: &DeployCtx, content_type: &str, body: &[u8]) -> Outcome {
    let run = || -> Result<Outcome, ApiError> {
        let form = DeployForm::parse(content_type, body, ctx.cfg.limits.max_multipart_parts)?;
        let platform = form.require_platform()?.to_string();
        let (name, owner) = v1_owner(&platform, form.tenant_id.as_deref())?;
        // One catalog session for the checks and the deploy's records.
        let mut cat = ctx.catalog()?;
        ctx.authorize(&mut cat, &owner.platform)?;
        ctx.check_platform_creation(&mut cat, &owner.platform)?;
        let _slot = ctx.claim(&owner.platform)?;
        let archive = ctx.read(form.require_archive()?)?;
        let opts = DeployOptions {
            force: form.force,
            dry_run: form.dry_run,
            reseed: form.reseed,
            seed_mode: SeedMode::RunIfEmpty,
            run_id: catalog::new_run_id(),
            protected_schemas: ctx.cfg.call.schemas.clone(),
            time_limit: Some(ctx.cfg.deploy.timeout),
        };
        let (created, report, server) =
            create_and_deploy_in(ctx, &mut cat, &name, &owner, &archive, &opts, false, form.server.as_deref())?;
        cat.keep();
        let mut b = Vec::with_capacity(1024);
        let mut o = ObjectWriter::new(&mut b);
        o.str("status", if opts.dry_run { "dry_run" } else { "ready" });
        o.str("database", &name);
        // As normalised (`Todos-App` → `todos_app`): the name calls and later deploys use.
        o.str("platform", &owner.platform);
        if owner.platform != platform {
            o.str("platform_given", &platform);
        }
        o.bool("created", created);
        o.str("server", &server);
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
#[allow(clippy::too_many_arguments)]
pub fn migrate_many(
    ctx: &DeployCtx,
    databases: &[String],
    archive: &SchemaArchive,
    opts: &DeployOptions,
    untrusted: &[String],
    stop_on_error: bool,
    on_done: &(dyn Fn(&DbResult, usize, usize) + Sync),
) -> Vec<DbResult> {
    let next = AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Mutex<Vec<Option<DbResult>>> = Mutex::new((0..databases.len()).map(|_| None).collect());
    let finished = AtomicUsize::new(0);
    let workers = ctx.cfg.deploy.parallelism.clamp(1, databases.len().max(1));
    // Each database is deployed on its own server; the platform's role is made sure of once per
    // server other than the one the context was made on.
    // Where each database lives, read in one round trip for the whole fleet.
    let placed: Result<HashMap<String, String>, ApiError> = ctx.catalog().and_then(|mut c| {
        let m = c.servers_of(databases);
        c.keep();
        m
    });
    let on_servers: Mutex<HashMap<String, Result<DeployCtx, ApiError>>> = Mutex::new(HashMap::new());
    let ctx_for = |db: &str| -> Result<DeployCtx, ApiError> {
        let server = match &placed {
            Ok(m) => m.get(db).cloned().unwrap_or_else(|| DEFAULT_SERVER.to_string()),
            Err(e) => return Err(e.clone()),
        };
        if server == ctx.server {
            return Ok(ctx.clone());
        }
        let mut m = on_servers.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(server.clone())
            .or_insert_with(|| {
                let c = ctx.on_server(&server)?;
                c.ensure_role_here()?;
                Ok(c)
            })
            .clone()
    };
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    if stop_on_error && failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(db) = databases.get(i) else { return };
                    let result = ctx_for(db).and_then(|c| c.deploy_one(db, archive, opts, untrusted));
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

/// The members of 1.x's `verification` object, from a migrate's results: a database that deployed has
/// what its files declare; what may be left is seed rows reported missing.
pub fn write_verification(v: &mut ObjectWriter<'_>, results: &[DbResult]) {
    let failed = results.iter().find_map(|r| r.result.as_ref().err());
    let seeds_ok = results.iter().filter_map(|r| r.result.as_ref().ok()).all(|r| r.seed_validation.missing.is_empty());
    v.bool("passed", failed.is_none() && seeds_ok);
    v.bool("extensions_verified", failed.is_none());
    v.bool("types_verified", failed.is_none());
    v.bool("tables_verified", failed.is_none());
    v.bool("seeders_verified", seeds_ok);
    match failed {
        Some(e) => v.str("error_log", &e.message),
        None => v.null("error_log"),
    };
}

/// A run's status from what happened to its databases: the same word in the answer and in the run's
/// record. A dry run's statuses say that nothing changed.
pub fn run_status(failed: usize, ok: usize, dry_run: bool) -> &'static str {
    match (failed == 0, ok == 0, dry_run) {
        (true, _, false) => "completed",
        (false, true, false) => "failed",
        (false, false, false) => "completed_with_errors",
        (true, _, true) => "dry_run",
        (false, true, true) => "dry_run_failed",
        (false, false, true) => "dry_run_with_errors",
    }
}

/// Records one database's outcome in run `run`: `success` or `failed`, or for a dry run `dry_run` or
/// `failed` without touching the database's last deploy.
pub fn record_db_result(cat: &mut Catalog, run: &str, database: &str, ok: bool, dry_run: bool, json: &str) {
    let _ = match (ok, dry_run) {
        (true, false) => cat.record_result(run, database, "success", json, false),
        (false, false) => cat.record_result(run, database, "failed", json, false),
        (true, true) => cat.record_result(run, database, "dry_run", json, true),
        (false, true) => cat.record_result(run, database, "failed", json, true),
    };
}

/// Records every database's outcome of run `run` as [`record_db_result`] does, in one round trip.
pub fn record_db_results(cat: &mut Catalog, run: &str, results: &[DbResult], dry_run: bool) {
    let rows: Vec<crate::catalog::ResultRow> = results
        .iter()
        .map(|r| {
            let status = match (r.result.is_ok(), dry_run) {
                (true, false) => "success",
                (true, true) => "dry_run",
                (false, _) => "failed",
            };
            (r.database.clone(), status, result_json(&r.database, &r.result))
        })
        .collect();
    cat.record_results(run, &rows, dry_run);
}

/// The body and status of a migrate over `results`.
/// A dry run's statuses say that nothing changed.
pub fn migrate_response(
    results: &[DbResult],
    started: Instant,
    dry_run: bool,
    extra: &dyn Fn(&mut ObjectWriter<'_>),
) -> Response {
    let failed: Vec<&ApiError> = results.iter().filter_map(|r| r.result.as_ref().err()).collect();
    let ok: Vec<&DbResult> = results.iter().filter(|r| r.result.is_ok()).collect();
    let status = run_status(failed.len(), ok.len(), dry_run);
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
    o.bool("dry_run", dry_run);
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
    o.u64("tables_created", reps.iter().map(|r| r.tables_created.len() as u64).sum());
    {
        let mut a = o.array("warnings");
        for r in &reps {
            for w in &r.warnings {
                a.str(&format!("{}: {w}", r.database));
            }
        }
    }
    {
        // 1.x's shape: one object of three lists (each change names its database here).
        let mut sv = o.object("schema_validation");
        for (k, pick) in [("safe_changes", 0usize), ("dataloss_changes", 1), ("incompatible_changes", 2)] {
            let mut l = sv.array(k);
            for r in &reps {
                let v = &r.schema_validation;
                for c in [&v.safe, &v.dataloss, &v.incompatible][pick].iter() {
                    let mut x = l.object();
                    x.str("database", &r.database);
                    x.str("table", &c.table);
                    x.opt_str("column", c.column.as_deref());
                    x.str("change", &c.description);
                    x.bool("applied", c.applied);
                }
            }
        }
    }
    {
        let mut a = o.array("schema_validation_databases");
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
        let p = names::platform(&platform)?;
        let mut cat = ctx.catalog()?;
        ctx.authorize(&mut cat, &p)?;
        let _slot = ctx.claim(&p)?;
        let archive = ctx.read(form.require_archive()?)?;
        // Only databases the catalog records for this platform: a database that merely has the right
        // name was not made by the gateway and is never touched.
        let databases: Vec<String> = match form.tenant_id.as_deref() {
            Some(t) => {
                let (name, owner) = v1_owner(&platform, Some(t))?;
                ctx.check_reserved(&name)?;
                cat.check_owner(&name, &owner)?;
                if cat.owner_of(&name)?.is_none() {
                    if super::upstream::database_exists(&mut cat.client, &name) {
                        return Err(ApiError::new(
                            Kind::DatabaseNotFound,
                            super::upstream::unrecorded_message(&name, &p),
                        )
                        .with_database(name));
                    }
                    return Err(ApiError::new(
                        Kind::DatabaseNotFound,
                        format!(
                            "platform '{p}' has no tenant database '{name}'; create it with POST /register \
                             (platform, tenant_id, schema) or /admin/create-tenant"
                        ),
                    )
                    .with_database(name));
                }
                vec![name]
            }
            None => {
                let (main, owner) = v1_owner(&platform, None)?;
                ctx.check_reserved(&main)?;
                cat.check_owner(&main, &owner)?;
                let mut list = Vec::new();
                for rec in cat.databases(&p, None)? {
                    if (rec.owner.kind == "tenant" || rec.owner.kind == "main") && !list.contains(&rec.name) {
                        list.push(rec.name);
                    }
                }
                if list.is_empty() {
                    if super::upstream::database_exists(&mut cat.client, &main) {
                        return Err(ApiError::new(
                            Kind::DatabaseNotFound,
                            super::upstream::unrecorded_message(&main, &p),
                        )
                        .with_database(main));
                    }
                    return Err(ApiError::new(
                        Kind::DatabaseNotFound,
                        format!("platform '{p}' has no databases; register it first with POST /register"),
                    )
                    .with_database(main));
                }
                list
            }
        };
        let untrusted = ctx.check_extensions(&archive)?;
        let ctx = &ctx.as_platform(&mut cat, &p)?;
        let opts = DeployOptions {
            force: form.force,
            dry_run: form.dry_run,
            reseed: form.reseed,
            seed_mode: SeedMode::Verify,
            run_id: catalog::new_run_id(),
            protected_schemas: ctx.cfg.call.schemas.clone(),
            time_limit: Some(ctx.cfg.deploy.timeout),
        };
        let run = cat.start_run("migrate", Some(&names::platform(&platform)?), None, databases.len())?;
        ctx.metrics.fleet_started(&run, &p, "", databases.len());
        let progress = |r: &DbResult, done: usize, _total: usize| {
            ctx.metrics.fleet_progress(&run, done, r.result.is_err());
        };
        let results = migrate_many(ctx, &databases, &archive, &opts, &untrusted, false, &progress);
        record_db_results(&mut cat, &run, &results, opts.dry_run);
        let failed = results.iter().filter(|r| r.result.is_err()).count();
        let status = run_status(failed, results.len() - failed, opts.dry_run);
        let _ = cat.finish_run(&run, status);
        cat.keep();
        ctx.metrics.fleet_finished(&run, status);
        let changed: Vec<String> = if opts.dry_run {
            Vec::new()
        } else {
            results.iter().filter(|r| r.result.is_ok()).map(|r| r.database.clone()).collect()
        };
        let resp = migrate_response(&results, started, opts.dry_run, &|o| {
            o.str("platform", &p);
            if p != platform {
                o.str("platform_given", &platform);
            }
            o.str("run_id", &run);
            write_verification(&mut o.object("verification"), &results);
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
        // Sizes are asked of each database's own server; one that cannot be reached gives nulls.
        let mut sizes: Vec<Vec<Option<String>>> = Vec::new();
        let mut servers_: Vec<&str> = recs.iter().map(|r| r.server.as_str()).collect();
        servers_.sort_unstable();
        servers_.dedup();
        for server in servers_ {
            let names_: Vec<&str> = recs.iter().filter(|r| r.server == server).map(|r| r.name.as_str()).collect();
            let list = format!("{{{}}}", names_.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(","));
            let sql = "SELECT datname::text, round(pg_database_size(datname) / 1048576.0, 2)::text \
                       FROM pg_database WHERE datname = ANY($1::text[])";
            let rows = if server == DEFAULT_SERVER {
                cat.client.query(sql, &[Some(&list)]).map_err(|e| pg_api(e, "cannot read database sizes"))?.rows
            } else {
                let found = ctx.on_server(server).and_then(|c| c.admin_client()).ok().and_then(|mut c| {
                    let r = c.query(sql, &[Some(&list)]).ok();
                    c.close();
                    r
                });
                found.map(|r| r.rows).unwrap_or_default()
            };
            sizes.extend(rows);
        }
        let mut b = Vec::with_capacity(512);
        let mut o = ObjectWriter::new(&mut b);
        o.str("platform", &p);
        {
            let mut a = o.array("databases");
            for r in &recs {
                let mut e = a.object();
                e.str("name", &r.name);
                e.str("type", if r.owner.kind == "main" { "main" } else { "tenant" });
                // The tenant_id a /call gives to reach this database.
                e.opt_str("tenant_id", r.owner.call_tenant().as_deref());
                match sizes.iter().find(|row| row[0].as_deref() == Some(r.name.as_str())) {
                    Some(row) => e.raw("size_mb", row[1].as_deref().unwrap_or("null")),
                    None => e.null("size_mb"),
                };
                e.str("created_at", &r.created_at);
                e.opt_str("last_deploy", r.last_deploy_at.as_deref());
                e.str("server", &r.server);
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
        let server = match body.get("server") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.as_str()),
            Some(_) => return Err(ApiError::new(Kind::InvalidRequest, "'server' must be a server name")),
        };
        let (name, owner) = v1_owner(platform, Some(tenant))?;
        ctx.check_reserved(&name)?;
        let mut cat = ctx.catalog()?;
        cat.check_owner(&name, &owner)?;
        lock_name(&mut cat, &name)?;
        let recorded = cat.owner_of(&name)?.is_some();
        let (placed, mut admin) = place(ctx, &mut cat, &name, &owner.platform, server)?;
        let ctx = &placed.as_platform(&mut cat, &owner.platform)?;
        if catalog::database_exists(&mut admin, &name)? {
            return Err(ApiError::new(Kind::DatabaseAlreadyExists, format!("database '{name}' already exists"))
                .with_database(name));
        }
        if !ctx.create_recorded(&mut cat, &mut admin, &name, &owner, recorded)? {
            return Err(ApiError::new(Kind::DatabaseAlreadyExists, format!("database '{name}' already exists"))
                .with_database(name));
        }
        cat.mark_ready(&name)?;
        admin.close();
        let mut b = Vec::new();
        let mut o = ObjectWriter::new(&mut b);
        o.str("status", "created");
        o.str("database", &name);
        o.str("platform", &owner.platform);
        o.opt_str("tenant_id", owner.tenant_id.as_deref());
        o.str("server", &ctx.server);
        o.finish();
        Ok((Response::json(201, b), Vec::new()))
    };
    run().unwrap_or_else(err)
}
