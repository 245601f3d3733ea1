//! The gateway's own records, kept in PostgreSQL (database `CATALOG_DB`): which databases the gateway
//! created and for whom, every deploy run with its per-database results, and (v2) platforms and stored
//! schemas. Shared safely by several gateway instances; used from worker threads with the blocking
//! client, never from the event loop.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use crate::error::{ApiError, DbDetail, Kind};
use crate::pg::blocking::Client;
use crate::pg::dberror::PgError;
use crate::pg::params::ConnectParams;

pub mod idle;
pub mod lookup;
pub mod servers;

/// Catalogs (server and database) whose tables are known to exist in this process. Keyed per catalog,
/// not one flag: a process may serve several catalogs (tests, a changed `CATALOG_DB`), and a catalog
/// database created by this very `open` has no tables yet whatever another catalog had.
static READY: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Held while one thread sets up a catalog's tables.
static SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ready_key(p: &ConnectParams) -> String {
    format!("{:?}|{}|{}", p.host, p.port, p.dbname)
}

fn is_ready(key: &str) -> bool {
    READY.lock().map(|g| g.as_ref().is_some_and(|s| s.contains(key))).unwrap_or(false)
}

fn set_ready(key: String, ready: bool) {
    if let Ok(mut g) = READY.lock() {
        let set = g.get_or_insert_with(HashSet::new);
        if ready {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }
}

const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS platforms (
    name          text PRIMARY KEY,
    registered_at timestamptz NOT NULL DEFAULT now(),
    db_user       text,
    db_password   text
);
CREATE TABLE IF NOT EXISTS schemas (
    platform       text NOT NULL,
    name           text NOT NULL,
    archive        bytea NOT NULL,
    checksum       text NOT NULL,
    uploaded_at    timestamptz NOT NULL DEFAULT now(),
    has_tables     boolean NOT NULL,
    has_functions  boolean NOT NULL,
    has_migrations boolean NOT NULL,
    has_seeders    boolean NOT NULL,
    version        integer NOT NULL,
    PRIMARY KEY (platform, name)
);
CREATE TABLE IF NOT EXISTS databases (
    name           text PRIMARY KEY,
    platform       text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('main', 'tenant', 'schema')),
    tenant_id      text,
    schema_name    text,
    database_id    text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_run_id    text,
    last_status    text,
    last_deploy_at timestamptz
);
CREATE INDEX IF NOT EXISTS databases_platform ON databases (platform, schema_name);
CREATE TABLE IF NOT EXISTS runs (
    id          text PRIMARY KEY,
    kind        text NOT NULL,
    platform    text,
    schema_name text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    status      text NOT NULL DEFAULT 'running',
    total       integer NOT NULL DEFAULT 0,
    gateway_pid integer
);
CREATE TABLE IF NOT EXISTS platform_roles (
    platform   text PRIMARY KEY,
    role       text NOT NULL UNIQUE,
    adopted    boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS platform_keys (
    platform    text NOT NULL,
    key_hash    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    valid_until timestamptz,
    PRIMARY KEY (platform, key_hash)
);
ALTER TABLE databases ADD COLUMN IF NOT EXISTS confined_at timestamptz;
ALTER TABLE databases ADD COLUMN IF NOT EXISTS state text NOT NULL DEFAULT 'ready';
ALTER TABLE databases ADD COLUMN IF NOT EXISTS created_oid oid;
CREATE TABLE IF NOT EXISTS servers (
    name        text PRIMARY KEY,
    host        text NOT NULL,
    port        integer NOT NULL,
    db_user     text,
    db_password text,
    weight      integer NOT NULL DEFAULT 1 CHECK (weight >= 0),
    state       text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'draining')),
    replicas    text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE databases ADD COLUMN IF NOT EXISTS server text NOT NULL DEFAULT 'default';
ALTER TABLE platforms ADD COLUMN IF NOT EXISTS default_server text;
CREATE TABLE IF NOT EXISTS run_results (
    run_id      text NOT NULL,
    database    text NOT NULL,
    status      text NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    result      jsonb NOT NULL,
    PRIMARY KEY (run_id, database)
);
";

/// Who a database belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub platform: String,
    /// `main`, `tenant` or `schema`.
    pub kind: String,
    pub tenant_id: Option<String>,
    pub schema_name: Option<String>,
    pub database_id: Option<String>,
}

/// The parameters `$1`..`$6` of a `databases` row: name, platform, kind, tenant, schema, database id.
fn owner_row<'a>(name: &'a str, o: &'a Owner) -> [Option<&'a str>; 6] {
    [
        Some(name),
        Some(&o.platform),
        Some(&o.kind),
        o.tenant_id.as_deref(),
        o.schema_name.as_deref(),
        o.database_id.as_deref(),
    ]
}

impl Owner {
    /// The `tenant_id` a `/call` to this database gives (`None` for a main database): a v1 tenant's
    /// id, or `{schema_name}_{database_id}` for a database of a v2 schema.
    pub fn call_tenant(&self) -> Option<String> {
        match self.kind.as_str() {
            "tenant" => self.tenant_id.clone(),
            "schema" => Some(format!(
                "{}_{}",
                self.schema_name.as_deref().unwrap_or_default(),
                self.database_id.as_deref().unwrap_or_default()
            )),
            _ => None,
        }
    }

    /// How the owner is named in messages: `platform 'p'` or `platform 'p' (tenant 't')`.
    pub fn describe(&self) -> String {
        match self.call_tenant() {
            Some(t) => format!("platform '{}' (tenant_id '{t}')", self.platform),
            None => format!("platform '{}' (its main database)", self.platform),
        }
    }
}

/// One row of `databases`.
#[derive(Debug, Clone)]
pub struct DatabaseRecord {
    pub name: String,
    pub owner: Owner,
    pub created_at: String,
    pub last_deploy_at: Option<String>,
    pub last_status: Option<String>,
    /// The server that holds it.
    pub server: String,
}

/// Maps a PostgreSQL failure in catalog work to an API error.
pub fn pg_api(e: PgError, what: &str) -> ApiError {
    match e {
        PgError::Db(d) => {
            let kind = match Kind::from_sqlstate(&d.code) {
                Kind::ConnectionFailed => Kind::ConnectionFailed,
                _ => Kind::QueryFailed,
            };
            ApiError::new(kind, format!("{what}: {}", d.message)).with_db(DbDetail {
                sqlstate: d.code,
                detail: d.detail,
                hint: d.hint,
            })
        }
        other => ApiError::new(Kind::ConnectionFailed, format!("{what}: {other}")),
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A `text[]` literal of `items`, each quoted (a bound parameter, never spliced into SQL).
fn text_array(items: &[String]) -> String {
    let quoted: Vec<String> =
        items.iter().map(|x| format!("\"{}\"", x.replace('\\', "\\\\").replace('"', "\\\""))).collect();
    format!("{{{}}}", quoted.join(","))
}

/// Whether a database of that name exists on the server.
pub fn database_exists(admin: &mut Client, name: &str) -> Result<bool, ApiError> {
    let r = admin
        .query("SELECT 1 FROM pg_database WHERE datname = $1", &[Some(name)])
        .map_err(|e| pg_api(e, "cannot look up databases"))?;
    Ok(!r.rows.is_empty())
}

/// Creates a database; `Ok(false)` when it already existed (also when another gateway won a race).
pub fn create_database(admin: &mut Client, name: &str) -> Result<bool, ApiError> {
    match admin.batch_execute(&format!("CREATE DATABASE {}", quote_ident(name))) {
        Ok(()) => Ok(true),
        // 42P04, or 23505 when another session creates the same name at the same moment.
        Err(PgError::Db(d)) if d.code == "42P04" || (d.code == "23505" && d.message.contains("pg_database")) => {
            Ok(false)
        }
        Err(e) => Err(pg_api(e, &format!("cannot create database '{name}'"))),
    }
}

/// Drops a database, disconnecting its sessions first (PostgreSQL ≥ 13). `Ok(false)` when there was
/// none.
pub fn drop_database(admin: &mut Client, name: &str) -> Result<bool, ApiError> {
    if !database_exists(admin, name)? {
        return Ok(false);
    }
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name)))
        .map_err(|e| pg_api(e, &format!("cannot drop database '{name}'")))?;
    Ok(true)
}

/// One database's result of a run, and its last deploy.
const RESULT_SQL: &str = "WITH r AS (INSERT INTO run_results (run_id, database, status, result) \
     VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (run_id, database) DO UPDATE SET status = EXCLUDED.status, \
     result = EXCLUDED.result, finished_at = now() RETURNING 1) \
     UPDATE databases SET last_run_id = $1, last_status = $3, last_deploy_at = now() WHERE name = $2";
/// One database's result of a dry run: the run's record only.
const DRY_RESULT_SQL: &str = "INSERT INTO run_results (run_id, database, status, result) VALUES ($1, $2, $3, $4::jsonb) \
     ON CONFLICT (run_id, database) DO UPDATE SET status = EXCLUDED.status, result = EXCLUDED.result, \
     finished_at = now()";

/// What [`Catalog::record_results`] records of one database: name, status, result JSON.
pub type ResultRow = (String, &'static str, String);

/// A connection to the catalog database.
pub struct Catalog {
    pub client: Client,
    /// Where `client` is connected: a clean session goes back to [`idle`] under it.
    params: ConnectParams,
    /// Session-level advisory locks taken through this catalog and not yet released: a session
    /// holding any is never kept for another request.
    pub(crate) locks_held: u32,
}

impl Catalog {
    /// Connects, creating the catalog database and its tables on first use.
    pub fn open(admin_params: &ConnectParams, catalog_db: &str) -> Result<Catalog, ApiError> {
        Catalog::open_as(admin_params, catalog_db, false)
    }

    /// [`Catalog::open`], taking a session an earlier request kept (see [`Catalog::keep`]) when there
    /// is one: what deploy requests use. Background work opens its own, so it never takes theirs.
    pub fn open_kept(admin_params: &ConnectParams, catalog_db: &str) -> Result<Catalog, ApiError> {
        Catalog::open_as(admin_params, catalog_db, true)
    }

    fn open_as(admin_params: &ConnectParams, catalog_db: &str, kept: bool) -> Result<Catalog, ApiError> {
        let params = admin_params.with_dbname(catalog_db);
        let key = ready_key(&params);
        let first = if kept { idle::connect(&params) } else { Client::connect(&params) };
        let mut client = match first {
            Ok(c) => c,
            Err(PgError::Db(d)) if d.code == "3D000" => {
                set_ready(key.clone(), false);
                let mut admin = Client::connect(admin_params).map_err(|e| pg_api(e, "cannot connect to PostgreSQL"))?;
                create_database(&mut admin, catalog_db)?;
                // Platform roles must not even connect to the gateway's records.
                match admin.batch_execute(&format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", quote_ident(catalog_db))) {
                    // Another gateway changed the same row at the same moment (it closes it too).
                    Err(PgError::Db(d)) if d.code == "XX000" => {}
                    r => r.map_err(|e| pg_api(e, "cannot close the catalog to other roles"))?,
                }
                admin.close();
                Client::connect(&params).map_err(|e| pg_api(e, "cannot connect to the catalog"))?
            }
            Err(e) => return Err(pg_api(e, "cannot connect to the catalog")),
        };
        if !is_ready(&key) {
            // One thread of this process sets the tables up while the others wait: a query of another
            // thread running beside the set-up's ALTER TABLEs could deadlock with them.
            let _one = SETUP.lock().unwrap_or_else(|p| p.into_inner());
            if !is_ready(&key) {
                // Two gateways may create the tables at once; a transaction-level lock serialises them.
                let sql = format!(
                    "BEGIN; SELECT pg_advisory_xact_lock(hashtext('stonescriptdb:catalog')); {SCHEMA_SQL} COMMIT;"
                );
                client.batch_execute(&sql).map_err(|e| pg_api(e, "cannot create the catalog tables"))?;
                set_ready(key, true);
            }
        }
        Ok(Catalog { client, params, locks_held: 0 })
    }

    /// Ends this catalog session, keeping it for the next request when it is clean (see [`idle`]).
    pub fn keep(self) {
        idle::give_back(&self.params, self.client, self.locks_held);
    }

    /// The server each of `names` is recorded on, in one round trip (a fleet run's placements).
    pub fn servers_of(&mut self, names: &[String]) -> Result<HashMap<String, String>, ApiError> {
        let list = text_array(names);
        let r = self
            .client
            .query("SELECT name, server FROM databases WHERE name = ANY($1::text[])", &[Some(&list)])
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows.into_iter().filter_map(|row| Some((row[0].clone()?, row[1].clone()?))).collect())
    }

    /// Who owns `name`, if the catalog knows it.
    pub fn owner_of(&mut self, name: &str) -> Result<Option<Owner>, ApiError> {
        let r = self
            .client
            .query(
                "SELECT platform, kind, tenant_id, schema_name, database_id FROM databases WHERE name = $1",
                &[Some(name)],
            )
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows.into_iter().next().map(|row| Owner {
            platform: row[0].clone().unwrap_or_default(),
            kind: row[1].clone().unwrap_or_default(),
            tenant_id: row[2].clone(),
            schema_name: row[3].clone(),
            database_id: row[4].clone(),
        }))
    }

    /// Refuses a request whose database name is already recorded for someone else.
    pub fn check_owner(&mut self, name: &str, want: &Owner) -> Result<(), ApiError> {
        match self.owner_of(name)? {
            Some(o) if o != *want => Err(ApiError::new(
                Kind::NameConflict,
                format!("database '{name}' belongs to {}; choose other names", o.describe()),
            )
            .with_database(name)),
            _ => Ok(()),
        }
    }

    /// Records (or re-records) a database the gateway serves.
    pub fn record_database(&mut self, name: &str, o: &Owner) -> Result<(), ApiError> {
        self.client
            .query(
                "INSERT INTO databases (name, platform, kind, tenant_id, schema_name, database_id, confined_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, now()) ON CONFLICT (name) DO NOTHING",
                &owner_row(name, o),
            )
            .map(|_| ())
            .map_err(|e| pg_api(e, "cannot record the database"))
    }

    /// Records, before `CREATE DATABASE`, that the gateway is creating `name` (state `creating`). A
    /// gateway killed before [`Catalog::mark_ready`] leaves the row so; the next start drops what it
    /// created (see `service::clean_unfinished_creations`).
    pub fn record_creating(&mut self, name: &str, o: &Owner) -> Result<(), ApiError> {
        self.client
            .query(
                "INSERT INTO databases (name, platform, kind, tenant_id, schema_name, database_id, confined_at, state) \
                 VALUES ($1, $2, $3, $4, $5, $6, now(), 'creating') \
                 ON CONFLICT (name) DO UPDATE SET state = 'creating', created_oid = NULL",
                &owner_row(name, o),
            )
            .map(|_| ())
            .map_err(|e| pg_api(e, "cannot record the database"))
    }

    /// Right after `CREATE DATABASE`: which database (by OID, as its server reports it) the gateway
    /// made, so a clean-up never drops another one of the same name.
    pub fn mark_created(&mut self, name: &str, oid: Option<&str>) -> Result<(), ApiError> {
        self.client
            .query("UPDATE databases SET created_oid = $2::oid WHERE name = $1", &[Some(name), oid])
            .map(|_| ())
            .map_err(|e| pg_api(e, "cannot update the catalog"))
    }

    /// The database's creation (and first deploy) finished.
    pub fn mark_ready(&mut self, name: &str) -> Result<(), ApiError> {
        self.client
            .query("UPDATE databases SET state = 'ready' WHERE name = $1", &[Some(name)])
            .map(|_| ())
            .map_err(|e| pg_api(e, "cannot update the catalog"))
    }

    /// Databases still marked `creating`: (name, OID the gateway recorded after creating it).
    pub fn unfinished_creations(&mut self) -> Result<Vec<(String, Option<String>)>, ApiError> {
        let r = self
            .client
            .query("SELECT name, created_oid::text FROM databases WHERE state = 'creating' ORDER BY name", &[])
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows.into_iter().map(|row| (row[0].clone().unwrap_or_default(), row[1].clone())).collect())
    }

    /// The state of one recorded database (`creating` or `ready`) and its recorded OID.
    pub fn creation_state(&mut self, name: &str) -> Result<Option<(String, Option<String>)>, ApiError> {
        let r = self
            .client
            .query("SELECT state, created_oid::text FROM databases WHERE name = $1", &[Some(name)])
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows.into_iter().next().map(|row| (row[0].clone().unwrap_or_default(), row[1].clone())))
    }

    /// How many databases the catalog records for a platform.
    pub fn database_count(&mut self, platform: &str) -> Result<usize, ApiError> {
        let r = self
            .client
            .query("SELECT count(*)::text FROM databases WHERE platform = $1", &[Some(platform)])
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows.first().and_then(|row| row[0].as_deref()).and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    pub fn forget_database(&mut self, name: &str) -> Result<(), ApiError> {
        self.client
            .query("DELETE FROM databases WHERE name = $1", &[Some(name)])
            .map(|_| ())
            .map_err(|e| pg_api(e, "cannot update the catalog"))
    }

    /// Databases of a platform (optionally of one stored schema), main first, then by name.
    pub fn databases(&mut self, platform: &str, schema: Option<&str>) -> Result<Vec<DatabaseRecord>, ApiError> {
        let r = self
            .client
            .query(
                "SELECT name, platform, kind, tenant_id, schema_name, database_id, \
                        to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                        to_char(last_deploy_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), last_status, server \
                 FROM databases WHERE platform = $1 AND ($2::text IS NULL OR schema_name = $2) \
                 ORDER BY kind <> 'main', name",
                &[Some(platform), schema],
            )
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows
            .into_iter()
            .map(|row| DatabaseRecord {
                name: row[0].clone().unwrap_or_default(),
                owner: Owner {
                    platform: row[1].clone().unwrap_or_default(),
                    kind: row[2].clone().unwrap_or_default(),
                    tenant_id: row[3].clone(),
                    schema_name: row[4].clone(),
                    database_id: row[5].clone(),
                },
                created_at: row[6].clone().unwrap_or_default(),
                last_deploy_at: row[7].clone(),
                last_status: row[8].clone(),
                server: row[9].clone().unwrap_or_else(|| crate::servers::DEFAULT_SERVER.to_string()),
            })
            .collect())
    }

    /// Starts a run record; returns its id.
    pub fn start_run(
        &mut self,
        kind: &str,
        platform: Option<&str>,
        schema: Option<&str>,
        total: usize,
    ) -> Result<String, ApiError> {
        let id = new_run_id();
        self.start_run_as(&id, kind, platform, schema, total)?;
        Ok(id)
    }

    /// Starts a run record with a given id. This session holds an advisory lock named after the run
    /// until [`Catalog::finish_run`] (or until the session ends): a starting gateway marks a `running`
    /// run `interrupted` only when nobody holds its lock. The lock is taken before the row exists, so
    /// nobody ever sees a live run unlocked.
    pub fn start_run_as(
        &mut self,
        id: &str,
        kind: &str,
        platform: Option<&str>,
        schema: Option<&str>,
        total: usize,
    ) -> Result<(), ApiError> {
        let total = total.to_string();
        let pid = std::process::id().to_string();
        self.client
            .query("SELECT pg_advisory_lock(hashtext($1))", &[Some(id)])
            .map_err(|e| pg_api(e, "cannot lock the run"))?;
        self.locks_held += 1;
        let r = self.client.query(
            "INSERT INTO runs (id, kind, platform, schema_name, total, gateway_pid) VALUES ($1, $2, $3, $4, $5::int, $6::int)",
            &[Some(id), Some(kind), platform, schema, Some(&total), Some(&pid)],
        );
        if let Err(e) = r {
            if self.client.query("SELECT pg_advisory_unlock(hashtext($1))", &[Some(id)]).is_ok() {
                self.locks_held -= 1;
            }
            return Err(pg_api(e, "cannot record the run"));
        }
        Ok(())
    }

    /// Records one database's result of a run and, unless it was a dry run (nothing was deployed),
    /// the database's last deploy.
    pub fn record_result(
        &mut self,
        run: &str,
        database: &str,
        status: &str,
        result_json: &str,
        dry: bool,
    ) -> Result<(), ApiError> {
        let sql = if dry { DRY_RESULT_SQL } else { RESULT_SQL };
        self.client
            .query(sql, &[Some(run), Some(database), Some(status), Some(result_json)])
            .map(|_| ())
            .map_err(|e| pg_api(e, "cannot record the run result"))
    }

    /// Records a whole run of one database after the fact, in one round trip: the run, its result and
    /// its end in one implicit transaction (so nobody ever sees it running, and it needs no lock),
    /// then `then` (e.g. releasing a lock) in the same round trip. Returns the run's id.
    #[allow(clippy::too_many_arguments)]
    pub fn record_run_once(
        &mut self,
        kind: &str,
        platform: Option<&str>,
        schema: Option<&str>,
        database: &str,
        result: (&str, &str),
        run_status: &str,
        dry_run: bool,
        then: (&str, &[Option<&str>]),
    ) -> Result<String, ApiError> {
        let id = new_run_id();
        let pid = std::process::id().to_string();
        let run = [Some(id.as_str()), Some(kind), platform, schema, Some("1"), Some(pid.as_str())];
        let res = [Some(id.as_str()), Some(database), Some(result.0), Some(result.1)];
        let fin = [Some(id.as_str()), Some(run_status)];
        let stmts: [(&str, &[Option<&str>]); 4] = [
            (
                "INSERT INTO runs (id, kind, platform, schema_name, total, gateway_pid) \
                 VALUES ($1, $2, $3, $4, $5::int, $6::int)",
                &run,
            ),
            (if dry_run { DRY_RESULT_SQL } else { RESULT_SQL }, &res),
            ("UPDATE runs SET finished_at = now(), status = $2 WHERE id = $1", &fin),
            then,
        ];
        match self.client.pipeline(&stmts) {
            Ok(_) => Ok(id),
            Err((i, e)) => {
                // The statements after the failed one never ran: `then` runs on its own.
                if i < 3 {
                    let _ = self.client.query(then.0, then.1);
                }
                Err(pg_api(e, "cannot record the run"))
            }
        }
    }

    /// Records the results of many databases of run `run` in one round trip (a fleet run's end).
    /// They go in as one implicit transaction; if that fails, each is recorded on its own, so one bad
    /// row does not cost the others their record.
    pub fn record_results(&mut self, run: &str, rows: &[ResultRow], dry_run: bool) {
        let sql = if dry_run { DRY_RESULT_SQL } else { RESULT_SQL };
        let params: Vec<[Option<&str>; 4]> =
            rows.iter().map(|(db, st, json)| [Some(run), Some(db.as_str()), Some(*st), Some(json.as_str())]).collect();
        let stmts: Vec<(&str, &[Option<&str>])> = params.iter().map(|p| (sql, &p[..])).collect();
        for chunk in stmts.chunks(500) {
            if self.client.pipeline(chunk).is_err() {
                for (sql, p) in chunk {
                    let _ = self.client.query(sql, p);
                }
            }
        }
    }

    /// Records the end of a run and releases its advisory lock (see [`Catalog::start_run_as`]).
    pub fn finish_run(&mut self, run: &str, status: &str) -> Result<(), ApiError> {
        let r = self
            .client
            .query("UPDATE runs SET finished_at = now(), status = $2 WHERE id = $1", &[Some(run), Some(status)])
            .map(|_| ())
            .map_err(|e| pg_api(e, "cannot finish the run"));
        if self.client.query("SELECT pg_advisory_unlock(hashtext($1))", &[Some(run)]).is_ok() {
            self.locks_held = self.locks_held.saturating_sub(1);
        }
        r
    }

    /// On start: runs left `running` by a gateway that stopped are marked `interrupted`.
    pub fn mark_interrupted(&mut self) -> Result<u64, ApiError> {
        let r = self
            .client
            .query(
                "UPDATE runs SET status = 'interrupted', finished_at = now() \
                 WHERE status = 'running' AND gateway_pid IS DISTINCT FROM $1::int",
                &[Some(&std::process::id().to_string())],
            )
            .map_err(|e| pg_api(e, "cannot mark interrupted runs"))?;
        Ok(r.rows_affected)
    }
}

/// A registered platform.
#[derive(Debug, Clone)]
pub struct PlatformRecord {
    pub name: String,
    pub registered_at: String,
    /// The role an admin named for this platform at registration, if any.
    pub db_user: Option<String>,
}

/// A stored schema version (without the archive bytes).
#[derive(Debug, Clone)]
pub struct SchemaRecord {
    pub platform: String,
    pub name: String,
    pub checksum: String,
    pub uploaded_at: String,
    pub has_tables: bool,
    pub has_functions: bool,
    pub has_migrations: bool,
    pub has_seeders: bool,
    pub version: i64,
}

/// A run and its per-database results.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub id: String,
    pub kind: String,
    pub platform: Option<String>,
    pub schema_name: Option<String>,
    pub status: String,
    pub total: i64,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// (database, status, result JSON)
    pub results: Vec<(String, String, String)>,
}

const TS: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'";

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let h = s.strip_prefix("\\x")?;
    if h.len() % 2 != 0 {
        return None;
    }
    (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok()).collect()
}

fn hex_encode(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + b.len() * 2);
    s.push_str("\\x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn bool_col(v: &Option<String>) -> bool {
    v.as_deref() == Some("t")
}

impl Catalog {
    /// Registers a platform; 409 when it exists.
    pub fn register_platform(&mut self, name: &str, user: Option<&str>) -> Result<(), ApiError> {
        let r = self
            .client
            .query(
                "INSERT INTO platforms (name, db_user) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[Some(name), user],
            )
            .map_err(|e| pg_api(e, "cannot register the platform"))?;
        if r.rows_affected == 0 {
            return Err(ApiError::new(Kind::PlatformAlreadyExists, format!("platform '{name}' is already registered")));
        }
        Ok(())
    }

    pub fn platform(&mut self, name: &str) -> Result<Option<PlatformRecord>, ApiError> {
        let sql = format!(
            "SELECT name, to_char(registered_at AT TIME ZONE 'UTC', {TS}), db_user FROM platforms WHERE name = $1"
        );
        let r = self.client.query(&sql, &[Some(name)]).map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows.into_iter().next().map(|row| PlatformRecord {
            name: row[0].clone().unwrap_or_default(),
            registered_at: row[1].clone().unwrap_or_default(),
            db_user: row[2].clone(),
        }))
    }

    /// The platform or 404.
    pub fn require_platform(&mut self, name: &str) -> Result<PlatformRecord, ApiError> {
        self.platform(name)?
            .ok_or_else(|| ApiError::new(Kind::PlatformNotFound, format!("platform '{name}' is not registered")))
    }

    /// Every platform with its counts of schemas and databases.
    pub fn platforms(&mut self) -> Result<Vec<(String, i64, i64)>, ApiError> {
        let r = self
            .client
            .query(
                "SELECT p.name, (SELECT count(*) FROM schemas s WHERE s.platform = p.name)::text, \
                        (SELECT count(*) FROM databases d WHERE d.platform = p.name)::text \
                 FROM (SELECT name FROM platforms UNION SELECT platform FROM databases) p ORDER BY p.name",
                &[],
            )
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows
            .into_iter()
            .map(|row| {
                let n = |i: usize| row[i].as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
                (row[0].clone().unwrap_or_default(), n(1), n(2))
            })
            .collect())
    }

    /// Stores a new version of a schema atomically; returns the version number.
    #[allow(clippy::too_many_arguments)]
    pub fn store_schema(
        &mut self,
        platform: &str,
        name: &str,
        archive: &[u8],
        checksum: &str,
        has: [bool; 4],
    ) -> Result<i64, ApiError> {
        let hex = hex_encode(archive);
        let b = |x: bool| if x { "true" } else { "false" };
        let r = self
            .client
            .query(
                "INSERT INTO schemas (platform, name, archive, checksum, has_tables, has_functions, has_migrations, \
                 has_seeders, version) VALUES ($1, $2, $3::bytea, $4, $5::boolean, $6::boolean, $7::boolean, $8::boolean, 1) \
                 ON CONFLICT (platform, name) DO UPDATE SET archive = EXCLUDED.archive, checksum = EXCLUDED.checksum, \
                 uploaded_at = now(), has_tables = EXCLUDED.has_tables, has_functions = EXCLUDED.has_functions, \
                 has_migrations = EXCLUDED.has_migrations, has_seeders = EXCLUDED.has_seeders, \
                 version = schemas.version + 1 RETURNING version::text",
                &[
                    Some(platform),
                    Some(name),
                    Some(&hex),
                    Some(checksum),
                    Some(b(has[0])),
                    Some(b(has[1])),
                    Some(b(has[2])),
                    Some(b(has[3])),
                ],
            )
            .map_err(|e| pg_api(e, "cannot store the schema"))?;
        Ok(r.rows.first().and_then(|row| row[0].as_deref()).and_then(|v| v.parse().ok()).unwrap_or(1))
    }

    pub fn schemas(&mut self, platform: &str) -> Result<Vec<SchemaRecord>, ApiError> {
        let sql = format!(
            "SELECT platform, name, checksum, to_char(uploaded_at AT TIME ZONE 'UTC', {TS}), has_tables, has_functions, \
             has_migrations, has_seeders, version::text FROM schemas WHERE platform = $1 ORDER BY name"
        );
        let r = self.client.query(&sql, &[Some(platform)]).map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows
            .into_iter()
            .map(|row| SchemaRecord {
                platform: row[0].clone().unwrap_or_default(),
                name: row[1].clone().unwrap_or_default(),
                checksum: row[2].clone().unwrap_or_default(),
                uploaded_at: row[3].clone().unwrap_or_default(),
                has_tables: bool_col(&row[4]),
                has_functions: bool_col(&row[5]),
                has_migrations: bool_col(&row[6]),
                has_seeders: bool_col(&row[7]),
                version: row[8].as_deref().and_then(|v| v.parse().ok()).unwrap_or(0),
            })
            .collect())
    }

    /// The stored archive of a schema or 404.
    pub fn schema_archive(&mut self, platform: &str, name: &str) -> Result<(Vec<u8>, i64), ApiError> {
        let r = self
            .client
            .query(
                "SELECT archive::text, version::text FROM schemas WHERE platform = $1 AND name = $2",
                &[Some(platform), Some(name)],
            )
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        let row = r.rows.into_iter().next().ok_or_else(|| {
            ApiError::new(Kind::SchemaNotFound, format!("platform '{platform}' has no schema '{name}'"))
        })?;
        let bytes = row[0]
            .as_deref()
            .and_then(hex_decode)
            .ok_or_else(|| ApiError::new(Kind::Internal, "stored archive is unreadable"))?;
        Ok((bytes, row[1].as_deref().and_then(|v| v.parse().ok()).unwrap_or(0)))
    }

    /// A run with its per-database results.
    pub fn run(&mut self, id: &str) -> Result<Option<RunRecord>, ApiError> {
        let sql = format!(
            "SELECT id, kind, platform, schema_name, status, total::text, to_char(started_at AT TIME ZONE 'UTC', {TS}), \
             to_char(finished_at AT TIME ZONE 'UTC', {TS}) FROM runs WHERE id = $1"
        );
        let r = self.client.query(&sql, &[Some(id)]).map_err(|e| pg_api(e, "catalog lookup failed"))?;
        let Some(row) = r.rows.into_iter().next() else { return Ok(None) };
        let res = self
            .client
            .query(
                "SELECT database, status, result::text FROM run_results WHERE run_id = $1 ORDER BY finished_at, database",
                &[Some(id)],
            )
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(Some(RunRecord {
            id: row[0].clone().unwrap_or_default(),
            kind: row[1].clone().unwrap_or_default(),
            platform: row[2].clone(),
            schema_name: row[3].clone(),
            status: row[4].clone().unwrap_or_default(),
            total: row[5].as_deref().and_then(|v| v.parse().ok()).unwrap_or(0),
            started_at: row[6].clone().unwrap_or_default(),
            finished_at: row[7].clone(),
            results: res
                .rows
                .into_iter()
                .map(|r| {
                    (
                        r[0].clone().unwrap_or_default(),
                        r[1].clone().unwrap_or_default(),
                        r[2].clone().unwrap_or_default(),
                    )
                })
                .collect(),
        }))
    }
}

/// One stored key: its hash and, for a key being rotated out, until when it still counts (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub hash: String,
    pub valid_until: Option<u64>,
}

/// A database as `/call` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOwner {
    pub database: String,
    pub platform: String,
    /// The `tenant_id` a call must give; `None` for a main database.
    pub tenant: Option<String>,
    /// The PostgreSQL role its calls log in as (`None`: the platform has no recorded role yet, the
    /// derived name applies).
    pub role: Option<String>,
    /// The server that holds it.
    pub server: String,
}

impl Catalog {
    /// Owners as `/call` checks them. `names` limits the lookup; `None` reads all.
    pub fn call_owners(&mut self, names: Option<&[String]>) -> Result<Vec<CallOwner>, ApiError> {
        let list = names.map(|n| format!("{{{}}}", n.iter().map(|x| format!("\"{x}\"")).collect::<Vec<_>>().join(",")));
        let r = self
            .client
            .query(
                "SELECT d.name, d.platform, CASE d.kind WHEN 'main' THEN NULL WHEN 'tenant' THEN d.tenant_id \
                 ELSE d.schema_name || '_' || d.database_id END, r.role, d.server FROM databases d \
                 LEFT JOIN platform_roles r ON r.platform = d.platform \
                 WHERE $1::text[] IS NULL OR d.name = ANY($1::text[])",
                &[list.as_deref()],
            )
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows
            .into_iter()
            .map(|row| CallOwner {
                database: row[0].clone().unwrap_or_default(),
                platform: row[1].clone().unwrap_or_default(),
                tenant: row[2].clone(),
                role: row[3].clone(),
                server: row[4].clone().unwrap_or_else(|| crate::servers::DEFAULT_SERVER.to_string()),
            })
            .collect())
    }

    /// Whether `platform` exists in any form: a v2 record, recorded databases, stored schemas, keys, a
    /// recorded role, its role `role` in PostgreSQL, or a database named `main_db`.
    pub fn platform_exists_anywhere(&mut self, platform: &str, role: &str, main_db: &str) -> Result<bool, ApiError> {
        // One table per statement: a statement that waits for one table while holding another could
        // deadlock with another gateway's catalog set-up.
        let checks: [(&str, &str); 7] = [
            ("SELECT 1 FROM platforms WHERE name = $1", platform),
            ("SELECT 1 FROM databases WHERE platform = $1 LIMIT 1", platform),
            ("SELECT 1 FROM schemas WHERE platform = $1 LIMIT 1", platform),
            ("SELECT 1 FROM platform_keys WHERE platform = $1 LIMIT 1", platform),
            ("SELECT 1 FROM platform_roles WHERE platform = $1", platform),
            ("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) $1", role),
            ("SELECT 1 FROM pg_catalog.pg_database WHERE datname OPERATOR(pg_catalog.=) $1", main_db),
        ];
        for (sql, arg) in checks {
            let r = self.client.query(sql, &[Some(arg)]).map_err(|e| pg_api(e, "catalog lookup failed"))?;
            if !r.rows.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Platforms the catalog records (v2 records and platforms with databases).
    pub fn platform_count(&mut self) -> Result<usize, ApiError> {
        let r = self
            .client
            .query(
                "SELECT count(*)::text FROM (SELECT name FROM platforms UNION SELECT platform FROM databases) p",
                &[],
            )
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows.first().and_then(|row| row[0].as_deref()).and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Stored schema names of a platform, and whether `name` is one of them.
    pub fn schema_count(&mut self, platform: &str, name: &str) -> Result<(usize, bool), ApiError> {
        let r = self
            .client
            .query(
                "SELECT count(*)::text, bool_or(name = $2)::text FROM schemas WHERE platform = $1",
                &[Some(platform), Some(name)],
            )
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        let row = r.rows.first();
        let n = row.and_then(|row| row[0].as_deref()).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok((n, row.and_then(|row| row[1].as_deref()) == Some("true")))
    }

    /// The role recorded for a platform: (role, adopted).
    pub fn platform_role(&mut self, platform: &str) -> Result<Option<(String, bool)>, ApiError> {
        let r = self
            .client
            .query("SELECT role, adopted FROM platform_roles WHERE platform = $1", &[Some(platform)])
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows.into_iter().next().map(|row| (row[0].clone().unwrap_or_default(), row[1].as_deref() == Some("t"))))
    }

    /// Records that `platform` runs as `role`; 409 when another platform has that role.
    pub fn record_platform_role(&mut self, platform: &str, role: &str, adopted: bool) -> Result<(), ApiError> {
        let r = self.client.query(
            "INSERT INTO platform_roles (platform, role, adopted) VALUES ($1, $2, $3::boolean) \
             ON CONFLICT (platform) DO NOTHING",
            &[Some(platform), Some(role), Some(if adopted { "true" } else { "false" })],
        );
        match r {
            Ok(_) => Ok(()),
            Err(crate::pg::dberror::PgError::Db(d)) if d.code == "23505" => {
                Err(ApiError::new(Kind::NameConflict, format!("role '{role}' already belongs to another platform")))
            }
            Err(e) => Err(pg_api(e, "cannot record the platform's role")),
        }
    }

    /// Every recorded platform role: (platform, role, adopted).
    pub fn platform_roles(&mut self) -> Result<Vec<(String, String, bool)>, ApiError> {
        let r = self
            .client
            .query("SELECT platform, role, adopted FROM platform_roles ORDER BY platform", &[])
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows
            .into_iter()
            .map(|row| {
                (row[0].clone().unwrap_or_default(), row[1].clone().unwrap_or_default(), row[2].as_deref() == Some("t"))
            })
            .collect())
    }

    /// Stored keys of a platform (or of every platform with `None`), expired ones left out:
    /// (platform, key).
    pub fn platform_keys(&mut self, platform: Option<&str>) -> Result<Vec<(String, StoredKey)>, ApiError> {
        let r = self
            .client
            .query(
                "SELECT platform, key_hash, extract(epoch FROM valid_until)::bigint::text FROM platform_keys \
                 WHERE ($1::text IS NULL OR platform = $1) AND (valid_until IS NULL OR valid_until > now())",
                &[platform],
            )
            .map_err(|e| pg_api(e, "catalog lookup failed"))?;
        Ok(r.rows
            .into_iter()
            .map(|row| {
                (
                    row[0].clone().unwrap_or_default(),
                    StoredKey {
                        hash: row[1].clone().unwrap_or_default(),
                        valid_until: row[2].as_deref().and_then(|v| v.parse().ok()),
                    },
                )
            })
            .collect())
    }

    /// Stores a new key hash for a platform. Keys it had stay valid for `grace_secs` more (0: not at all).
    pub fn set_platform_key(&mut self, platform: &str, key_hash: &str, grace_secs: u64) -> Result<(), ApiError> {
        let grace = grace_secs.to_string();
        self.client
            .batch_execute("BEGIN")
            .and_then(|_| {
                self.client.query(
                    "DELETE FROM platform_keys WHERE platform = $1 AND (valid_until IS NOT NULL AND valid_until <= now() \
                     OR $2::bigint = 0)",
                    &[Some(platform), Some(&grace)],
                )
            })
            .and_then(|_| {
                self.client.query(
                    "UPDATE platform_keys SET valid_until = least(coalesce(valid_until, 'infinity'), \
                     now() + make_interval(secs => $2::bigint)) WHERE platform = $1",
                    &[Some(platform), Some(&grace)],
                )
            })
            .and_then(|_| {
                self.client
                    .query("INSERT INTO platform_keys (platform, key_hash) VALUES ($1, $2)", &[Some(platform), Some(key_hash)])
            })
            .and_then(|_| self.client.batch_execute("COMMIT"))
            .map_err(|e| {
                let _ = self.client.batch_execute("ROLLBACK");
                pg_api(e, "cannot store the platform key")
            })
    }
}

/// A run id unique enough across gateways: time plus process id plus a counter.
pub fn new_run_id() -> String {
    use std::sync::atomic::AtomicU64;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("run-{:x}-{:x}-{:x}", t.as_millis(), std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}
