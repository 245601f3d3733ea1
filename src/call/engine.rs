//! The `/call` hot path on the event loop: picks a pooled backend connection, prepares the statement
//! once per connection, sends Bind/Execute/Sync in one write, renders DataRows straight into the
//! response body, and maps PostgreSQL errors. Also owns pool maintenance: wait queues, timeouts,
//! cancellation, reconnect backoff and the total connection cap.

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use fallible_iterator::FallibleIterator;
use mio::{Poll, Token};
use postgres_protocol::message::{backend::Message, frontend};

use super::render::{PreparedColumn, render_row_prepared};
use super::request::CallRequest;
use super::types::{INTROSPECTION_SQL, TypeRegistry};
use crate::catalog::CallOwner;
use crate::config::Config;
use crate::error::{ApiError, DbDetail, Kind};
use crate::http::response::Response;
use crate::pg::conn::{BackendConn, ConnState, Stmt};
use crate::pg::dberror::{DbError, PgError};
use crate::pg::frame::{Backend, Column, data_row_fields};
use crate::pg::params::{ConnectParams, Host};
use crate::pg::pool::{Pool, Pools};
use crate::security::keys::{Credential, StoredKey};
use crate::server::BACKEND_BASE;
use crate::server::slab::Slab;

/// A finished request: (client key, request generation, response).
pub type Done = Vec<(usize, u64, Response)>;

/// A call waiting for a connection.
pub struct Waiter {
    client: usize,
    generation: u64,
    req: CallRequest,
    /// When it was accepted (for `execution_time_ms`).
    started: Instant,
    /// When waiting turns into 503 `pool_exhausted`.
    deadline: Instant,
    /// Sent back to the pool once already after a cancel meant for another call stopped it.
    requeued: bool,
}

/// What a ReadyForQuery in the pipeline closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncPoint {
    Prepare,
    Introspect,
    Execute,
}

/// A statement being prepared.
struct Pending {
    name: String,
    key: String,
    param_oids: Vec<u32>,
    columns: Vec<Column>,
}

/// A call running on a connection.
struct Job {
    client: usize,
    generation: u64,
    req: CallRequest,
    started: Instant,
    /// `CALL_TIMEOUT_MS` from the start of execution: then a CancelRequest goes out.
    deadline: Instant,
    /// Which of `CALL_SCHEMAS` is being tried.
    schema_idx: usize,
    /// Declared parameter types are in use (the call was ambiguous without).
    declared: bool,
    /// Prepare without declared types even though the shape is overloaded (the declared types
    /// matched no overload); the declared attempt's error is kept for the answer.
    untyped: bool,
    declared_error: Option<DbError>,
    /// Candidates of the function for this argument count, from the check sent with the first prepare.
    overloads: Option<i64>,
    /// ReadyForQuery messages still expected, in order.
    syncs: VecDeque<SyncPoint>,
    /// The first error of the current sync group.
    error: Option<DbError>,
    pending: Option<Pending>,
    stmt: Option<Arc<Stmt>>,
    introspect_rounds: u8,
    introspect_rows: Vec<Vec<Option<String>>>,
    body: Vec<u8>,
    rows: u64,
    /// The client got its answer (or left); later results are dropped.
    answered: bool,
    /// Re-prepared once after 0A000/26000.
    retried: bool,
    /// See [`Waiter::requeued`].
    requeued: bool,
    /// When the backend began this call (sent it, or finished the one before it in the pipeline).
    run_start: Instant,
    cancel_sent: bool,
    /// When the first and the latest CancelRequest went out.
    cancel_first: Option<Instant>,
    cancel_last: Option<Instant>,
}

impl Job {
    fn new(w: Waiter, deadline: Instant, now: Instant) -> Job {
        Job {
            client: w.client,
            generation: w.generation,
            req: w.req,
            started: w.started,
            deadline,
            schema_idx: 0,
            declared: false,
            untyped: false,
            declared_error: None,
            overloads: None,
            syncs: VecDeque::with_capacity(2),
            error: None,
            pending: None,
            stmt: None,
            introspect_rounds: 0,
            introspect_rows: Vec::new(),
            body: Vec::with_capacity(512),
            rows: 0,
            answered: false,
            retried: false,
            requeued: w.requeued,
            run_start: now,
            cancel_sent: false,
            cancel_first: None,
            cancel_last: None,
        }
    }

    /// Everything this job will send is sent: only its Execute's answer is outstanding, so calls
    /// may be queued behind it without disturbing the order of the replies.
    fn executing_only(&self) -> bool {
        self.pending.is_none()
            && self.stmt.is_some()
            && self.syncs.len() == 1
            && self.syncs.front() == Some(&SyncPoint::Execute)
            && !self.answered
            && !self.cancel_sent
    }

    fn expected_us(&self) -> Option<u64> {
        self.stmt.as_ref().and_then(|s| s.expected_us())
    }

    /// The same call as a fresh waiter (it goes back to its pool to be sent again).
    fn to_waiter(&self, deadline: Instant, requeued: bool) -> Waiter {
        Waiter {
            client: self.client,
            generation: self.generation,
            req: self.req.clone(),
            started: self.started,
            deadline,
            requeued,
        }
    }
}

const BODY_HEAD: &[u8] = b"{\"rows\":[";

/// The `/call` engine: pools, backend connections and the jobs running on them.
pub struct CallEngine {
    cfg: Arc<Config>,
    base: ConnectParams,
    tcp_addr: Option<SocketAddr>,
    pools: Pools<Waiter>,
    conns: Slab<BackendConn>,
    /// The job each connection is answering, by connection key.
    jobs: Vec<Option<Job>>,
    /// Calls already sent behind that job (pipelined), oldest first, by connection key. Replies come
    /// in this order; the front becomes the connection's job when the one before it is done.
    queued: Vec<VecDeque<Job>>,
    scratch: Vec<u8>,
    /// Answers produced while handling events, handed to the server afterwards.
    done: Done,
    /// Parameter encoding buffers, reused by every call.
    param_buf: Vec<u8>,
    param_spans: Vec<Option<(usize, usize)>>,
    /// Connections given bytes during this loop turn; written out together at its end, so that
    /// calls for the same backend arriving in one turn reach it in one write (one wake-up).
    unflushed: Vec<usize>,
    /// Calls sent behind another call on a busy connection, since the start (`/health`).
    pipelined: u64,
    /// Databases the catalog records: database → who may call it and as which role. A database that
    /// is not here is never served (see [`CallEngine::admit`]).
    owners: std::collections::HashMap<String, Owned>,
    /// Databases the catalog was asked about and does not record, with when it said so.
    unknown: std::collections::HashMap<String, Instant>,
    /// Stored platform keys: platform → keys. A platform missing here has none.
    keys: std::collections::HashMap<String, Vec<StoredKey>>,
}

/// A database as the catalog records it, for `/call`.
#[derive(Debug, Clone)]
struct Owned {
    platform: String,
    /// The `tenant_id` a call must give; `None` for a main database.
    tenant: Option<String>,
    /// The PostgreSQL role its calls log in as (shared: taken on every call without allocating).
    role: Arc<str>,
}

/// What [`CallEngine::admit`] decided about a call before it runs.
#[derive(Debug)]
pub enum Admission {
    /// Known, owned by the caller's platform and tenant, key (if any) presented.
    Go,
    /// The catalog must be asked first: the database is not known to this loop yet.
    AskCatalog,
    /// Refused, with the answer.
    Refused(ApiError),
}

/// How long "the catalog does not record this database" is believed before asking again.
const UNKNOWN_TTL: Duration = Duration::from_secs(2);
/// Bound on the remembered unknown names, so random names cannot grow memory.
const UNKNOWN_MAX: usize = 10_000;

/// The answer for a call to a database the catalog does not record.
fn not_recorded(req: &CallRequest) -> ApiError {
    let what = match &req.tenant {
        Some(t) => format!("tenant '{t}' of platform '{}'", req.platform),
        None => format!("platform '{}'", req.platform),
    };
    ApiError::new(
        Kind::DatabaseNotFound,
        format!(
            "no database '{}' is registered for {what}; create it with POST /register (or /admin/create-tenant, \
             /database/create) first",
            req.database
        ),
    )
    .with_database(&req.database)
}

fn api_from_db(e: &DbError, database: &str) -> ApiError {
    let kind = Kind::from_sqlstate(&e.code);
    let message = match kind {
        Kind::DatabaseNotFound => format!("database '{database}' does not exist"),
        _ => e.message.clone(),
    };
    ApiError::new(kind, message).with_database(database).with_db(DbDetail {
        sqlstate: e.code.clone(),
        detail: e.detail.clone(),
        hint: e.hint.clone(),
    })
}

fn api_from_pg(e: &PgError, database: &str) -> ApiError {
    match e {
        PgError::Db(d) => {
            let mut a = api_from_db(d, database);
            if d.code.starts_with("28") {
                a.kind = Kind::ConnectionFailed;
                a.message = format!("cannot log in to PostgreSQL: {}", d.message);
            }
            a
        }
        other => ApiError::new(Kind::ConnectionFailed, format!("PostgreSQL connection failed: {other}"))
            .with_database(database),
    }
}

/// Sends a CancelRequest on a fresh connection from a short-lived thread so the loop never blocks.
fn send_cancel(params: &ConnectParams, tcp_addr: Option<SocketAddr>, pid: i32, key: i32) {
    let mut buf = BytesMut::new();
    crate::pg::startup::cancel_request(pid, key, &mut buf);
    let params = params.clone();
    std::thread::spawn(move || {
        use std::io::Write;
        let timeout = Duration::from_secs(5);
        let res = match &params.host {
            Host::Unix(_) => params
                .socket_path()
                .ok_or_else(|| std::io::Error::other("no socket"))
                .and_then(std::os::unix::net::UnixStream::connect)
                .and_then(|mut s| s.write_all(&buf)),
            Host::Tcp(_) => tcp_addr
                .ok_or_else(|| std::io::Error::other("no address"))
                .and_then(|a| std::net::TcpStream::connect_timeout(&a, timeout))
                .and_then(|mut s| s.write_all(&buf)),
        };
        if let Err(e) = res {
            crate::log::warn("cancel request failed", &[("error", &e)]);
        }
    });
}

/// Appends Bind (text parameters, chosen result formats) for the unnamed portal.
fn write_bind<'a>(
    out: &mut BytesMut,
    stmt: &str,
    params: impl ExactSizeIterator<Item = Option<&'a [u8]>>,
    formats: &[i16],
) {
    let start = out.len();
    out.put_u8(b'B');
    out.put_i32(0);
    out.put_u8(0); // unnamed portal
    out.put_slice(stmt.as_bytes());
    out.put_u8(0);
    out.put_i16(0); // all parameters in text format
    out.put_i16(params.len() as i16);
    for p in params {
        match p {
            None => out.put_i32(-1),
            Some(b) => {
                out.put_i32(b.len() as i32);
                out.put_slice(b);
            }
        }
    }
    out.put_i16(formats.len() as i16);
    for f in formats {
        out.put_i16(*f);
    }
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// Functions of a name in a schema that a call with `$3` arguments could reach (defaults and
/// VARIADIC counted). More than one means PostgreSQL would resolve the untyped call by its own
/// preferences (an unknown argument prefers the string category: `f(int)`/`f(text)` called with `1`
/// picks `f(text)`), so the call is prepared with types declared from the JSON values instead.
const OVERLOAD_SQL: &str = "SELECT count(*) FROM pg_catalog.pg_proc p \
     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE n.nspname = $1 AND p.proname = $2 AND p.pronargs - p.pronargdefaults <= $3::int \
     AND (p.pronargs >= $3::int OR p.provariadic <> 0)";

/// The session reset behind every call (`CALL_RESET_SESSION`), as statements prepared once per
/// connection. `RESET ALL` leaves the role alone (it is marked not to be reset by it), hence the
/// second statement.
const RESET_STMTS: [(&str, &str); 2] = [("r_all", "RESET ALL"), ("r_role", "RESET ROLE")];

/// Execute of the unnamed portal, all rows.
const EXECUTE: &[u8] = &[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0];

/// Execute of the unnamed portal, all rows, then Sync.
const EXECUTE_SYNC: &[u8] = &[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0, b'S', 0, 0, 0, 4];

/// Encodes `job`'s parameters for its prepared statement and appends Bind + Execute (+ the session
/// reset) + Sync to the connection's buffer. `Err` is the answer when a parameter does not fit its
/// declared type; nothing is written then.
fn write_execute(
    cfg: &Config,
    c: &mut BackendConn,
    job: &mut Job,
    types: &TypeRegistry,
    enc: &mut Vec<u8>,
    spans: &mut Vec<Option<(usize, usize)>>,
) -> Result<(), ApiError> {
    let Some(stmt) = job.stmt.clone() else {
        return Err(ApiError::new(Kind::QueryFailed, "no prepared statement").with_database(&job.req.database));
    };
    // Every parameter goes into one buffer, then Bind borrows slices of it. Both buffers are the
    // engine's, reused from call to call.
    enc.clear();
    spans.clear();
    for (i, v) in job.req.params.iter().enumerate() {
        let oid = stmt.param_oids.get(i).copied().unwrap_or(0);
        let start = enc.len();
        match super::encode::encode_param(v, oid, types, enc) {
            Ok(true) => spans.push(None),
            Ok(false) => spans.push(Some((start, enc.len()))),
            Err(pe) => {
                let arg = match &job.req.args {
                    super::request::Args::Named(n) => format!("'{}'", n[i]),
                    super::request::Args::Positional => format!("{} (${})", i + 1, i + 1),
                };
                return Err(ApiError::new(Kind::InvalidParameter, format!("parameter {arg}: {}", pe.message))
                    .with_database(&job.req.database));
            }
        }
    }
    let reset = cfg.call.reset_session;
    if reset && !c.reset_prepared {
        // Prepared once per connection, ahead of the call so that a failing call (which makes
        // PostgreSQL skip to Sync) cannot skip them; prepared statements outlive a rollback.
        for (name, sql) in RESET_STMTS {
            let _ = frontend::parse(name, sql, std::iter::empty(), &mut c.wbuf);
        }
        c.reset_prepared = true;
    }
    write_bind(&mut c.wbuf, &stmt.name, spans.iter().map(|s| s.map(|(a, b)| &enc[a..b])), &stmt.formats);
    if reset {
        // Settings a function changed with set_config(..., false), SET or SET ROLE must not leak
        // into the next call on this connection. The resets run in the call's own implicit
        // transaction, before its Sync: no extra round trip, transaction or ReadyForQuery. If the
        // call fails, PostgreSQL skips to Sync and the rollback already undoes what the call set;
        // if a reset itself fails (a late cancel), the whole transaction rolls back and the call is
        // answered with that error. SET SESSION AUTHORIZATION is caught by its ParameterStatus.
        for (name, _) in RESET_STMTS {
            c.wbuf.extend_from_slice(EXECUTE);
            write_bind(&mut c.wbuf, name, std::iter::empty(), &[]);
        }
    }
    c.wbuf.extend_from_slice(EXECUTE_SYNC);
    job.syncs.push_back(SyncPoint::Execute);
    job.error = None;
    job.body.clear();
    job.body.extend_from_slice(BODY_HEAD);
    job.rows = 0;
    Ok(())
}

impl CallEngine {
    pub fn new(cfg: Arc<Config>, base: ConnectParams) -> CallEngine {
        let tcp_addr = match &base.host {
            Host::Tcp(h) => (h.as_str(), base.port).to_socket_addrs().ok().and_then(|mut a| a.next()),
            Host::Unix(_) => None,
        };
        CallEngine {
            cfg,
            base,
            tcp_addr,
            pools: Pools::default(),
            conns: Slab::default(),
            jobs: Vec::new(),
            queued: Vec::new(),
            pipelined: 0,
            unflushed: Vec::new(),
            scratch: vec![0; 64 * 1024],
            done: Vec::new(),
            owners: Default::default(),
            unknown: Default::default(),
            keys: Default::default(),
            param_buf: Vec::with_capacity(256),
            param_spans: Vec::with_capacity(16),
        }
    }

    /// Adds or refreshes ownership records from the catalog.
    pub fn set_owners(&mut self, list: Vec<CallOwner>) {
        for o in list {
            self.unknown.remove(&o.database);
            let role = match o.role {
                Some(r) => r,
                // Recorded before the platform's role was: the role the gateway derives for it.
                None => format!("{}{}", self.cfg.security.role_prefix, o.platform),
            };
            self.owners.insert(o.database, Owned { platform: o.platform, tenant: o.tenant, role: Arc::from(role) });
        }
    }

    /// Remembers that the catalog does not record `database`.
    pub fn set_unknown(&mut self, database: &str, now: Instant) {
        if self.unknown.len() >= UNKNOWN_MAX {
            self.unknown.retain(|_, at| now.saturating_duration_since(*at) < UNKNOWN_TTL);
            if self.unknown.len() >= UNKNOWN_MAX {
                self.unknown.clear();
            }
        }
        self.unknown.insert(database.to_string(), now);
    }

    /// Replaces the keys of the platforms listed (`complete`: of every platform).
    pub fn set_keys(&mut self, list: Vec<(String, Vec<StoredKey>)>, complete: bool) {
        if complete {
            self.keys.clear();
        }
        for (p, k) in list {
            if k.is_empty() {
                self.keys.remove(&p);
            } else {
                self.keys.insert(p, k);
            }
        }
    }

    /// Decides whether a call may run, before it takes a connection: the database must be one the
    /// catalog records, for this platform and tenant (platform `a` tenant `b_main` and platform `a_b` both
    /// give `a_b_main`), and the caller must bring the platform's key when it has one.
    pub fn admit(&self, req: &CallRequest, cred: &Credential, now: Instant) -> Admission {
        let Some(o) = self.owners.get(&req.database) else {
            return match self.unknown.get(&req.database) {
                Some(at) if now.saturating_duration_since(*at) < UNKNOWN_TTL => Admission::Refused(not_recorded(req)),
                _ => Admission::AskCatalog,
            };
        };
        if o.platform != req.platform || o.tenant != req.tenant {
            return Admission::Refused(
                ApiError::new(
                    Kind::NameConflict,
                    format!(
                        "database '{}' belongs to platform '{}'{}, not to this platform and tenant",
                        req.database,
                        o.platform,
                        o.tenant.as_deref().map(|t| format!(" (tenant '{t}')")).unwrap_or_default()
                    ),
                )
                .with_database(&req.database),
            );
        }
        let keys = self.keys.get(&o.platform).map(Vec::as_slice).unwrap_or(&[]);
        match cred.allows(&o.platform, keys, self.cfg.security.require_platform_keys) {
            Ok(()) => Admission::Go,
            Err(e) => Admission::Refused(e),
        }
    }

    /// `POOL_MAX_WAITING`: also bounds calls waiting for the catalog.
    pub fn max_waiting(&self) -> usize {
        self.cfg.pool.max_waiting
    }

    /// Live backend connections.
    pub fn total_connections(&self) -> usize {
        self.conns.len()
    }

    pub fn idle_connections(&self) -> usize {
        self.pools.idle_total()
    }

    pub fn waiting_requests(&self) -> usize {
        self.pools.waiting_total()
    }

    pub fn pipelined_calls(&self) -> u64 {
        self.pipelined
    }

    pub fn active_pools(&self) -> usize {
        self.pools.pools.len()
    }

    pub fn busy(&self) -> bool {
        self.jobs.iter().any(|j| j.as_ref().is_some_and(|j| !j.answered))
            || self.queued.iter().flatten().any(|j| !j.answered)
            || self.pools.waiting_total() > 0
    }

    /// Backend connections running calls, over all pools.
    fn busy_connections(&self) -> usize {
        self.pools.pools.iter().map(|(_, p)| p.busy.len()).sum()
    }

    pub fn release_parked(&mut self) {
        self.conns.release_parked();
        self.pools.pools.release_parked();
    }

    fn job_mut(&mut self, conn: usize) -> Option<&mut Job> {
        self.jobs.get_mut(conn).and_then(Option::as_mut)
    }

    fn take_done(&mut self) -> Done {
        std::mem::take(&mut self.done)
    }

    fn answer(&mut self, client: usize, generation: u64, r: Response) {
        self.done.push((client, generation, r));
    }

    /// Accepts a call. `Some` is an immediate answer; `None` means it will come through `Done` lists.
    pub fn submit(
        &mut self,
        poll: &mut Poll,
        client: usize,
        generation: u64,
        req: CallRequest,
        now: Instant,
    ) -> Option<Response> {
        // Only admitted calls get here (see `admit`); the role is the recorded one.
        let Some(role) = self.owners.get(&req.database).map(|o| o.role.clone()) else {
            return Some(Response::error(&not_recorded(&req)));
        };
        let pool = self.pool_for(&req.database, &role, now);
        let p = self.pools.pools.get_mut(pool)?;
        p.last_used = now;
        let waiter = Waiter {
            client,
            generation,
            req,
            started: now,
            deadline: now + self.cfg.pool.wait_timeout,
            requeued: false,
        };
        // While fewer backends are busy than the machine has cores, an idle connection runs the call
        // at once. Beyond that, more busy backends only take turns on the same cores; queuing the
        // call behind a short one on a busy connection saves a backend wake-up per call instead.
        let has_idle = !p.idle.is_empty();
        if has_idle && self.busy_connections() < self.cfg.call.busy_target {
            let conn = self.pools.pools.get_mut(pool).and_then(|p| p.idle.pop())?;
            self.start_job(poll, conn, waiter, now);
            return None;
        }
        let waiter = match self.try_pipeline(pool, waiter, now) {
            Ok(()) => return None,
            Err(w) => w,
        };
        let p = self.pools.pools.get_mut(pool)?;
        if let Some(conn) = p.idle.pop() {
            self.start_job(poll, conn, waiter, now);
            return None;
        }
        if let Some(until) = p.backoff_until {
            if now < until {
                let e = ApiError::new(Kind::ConnectionFailed, "PostgreSQL is unreachable; retrying shortly")
                    .with_database(&p.database);
                return Some(Response::error(&e));
            }
        }
        if p.waiting.len() >= self.cfg.pool.max_waiting {
            let e = ApiError::new(Kind::PoolExhausted, "too many calls are waiting for this database")
                .with_database(&p.database);
            return Some(Response::error(&e));
        }
        p.waiting.push_back(waiter);
        self.grow(poll, pool, now);
        None
    }

    /// Sends the call behind others on the busy connection of `pool` with the shortest expected
    /// wait, if one qualifies: its statement is prepared there, the pipeline is shorter than
    /// `CALL_PIPELINE_DEPTH`, every call in it has a known recent run time and together they are
    /// expected to finish within `CALL_PIPELINE_MAX_WAIT_US`. Not while calls wait for this pool:
    /// connections must drain to serve them in turn. `Err` gives the waiter back.
    fn try_pipeline(&mut self, pool: usize, waiter: Waiter, now: Instant) -> Result<(), Waiter> {
        let depth = self.cfg.call.pipeline_depth;
        let Some(p) = self.pools.pools.get(pool) else { return Err(waiter) };
        if depth <= 1 || p.busy.is_empty() || !p.waiting.is_empty() {
            return Err(waiter);
        }
        let Some(schema) = self.cfg.call.schemas.first() else { return Err(waiter) };
        let max_wait = u64::try_from(self.cfg.call.pipeline_max_wait.as_micros()).unwrap_or(u64::MAX);
        let shape = waiter.req.shape_key(schema);
        let mut typed: Option<String> = None;
        let mut best: Option<(usize, u64, Arc<Stmt>)> = None;
        for &conn in &p.busy {
            let (Some(c), Some(head)) = (self.conns.get(conn), self.jobs.get(conn).and_then(Option::as_ref)) else {
                continue;
            };
            let queue = self.queued.get(conn);
            if c.retire || !matches!(c.state, ConnState::Busy) || !head.executing_only() {
                continue;
            }
            if 1 + queue.map_or(0, VecDeque::len) >= depth {
                continue;
            }
            let mut wait = Some(0u64);
            for j in std::iter::once(head).chain(queue.into_iter().flatten()) {
                wait = wait.zip(j.expected_us()).map(|(a, b)| a + b);
            }
            let Some(wait) = wait else { continue };
            if wait > max_wait || best.as_ref().is_some_and(|b| b.1 <= wait) {
                continue;
            }
            let stmt = if c.ambiguous.contains(&shape) {
                let key = typed.get_or_insert_with(|| waiter.req.typed_key(schema));
                c.stmts.get(key.as_str())
            } else {
                c.stmts.get(&shape)
            };
            if let Some(stmt) = stmt {
                best = Some((conn, wait, stmt.clone()));
            }
        }
        let Some((conn, _, stmt)) = best else { return Err(waiter) };
        let mut job = Job::new(waiter, now + self.cfg.call.timeout, now);
        job.stmt = Some(stmt);
        let (Some(c), Some(p)) = (self.conns.get_mut(conn), self.pools.pools.get(pool)) else { return Ok(()) };
        match write_execute(&self.cfg, c, &mut job, &p.types, &mut self.param_buf, &mut self.param_spans) {
            Ok(()) => {
                if self.queued.len() <= conn {
                    self.queued.resize_with(conn + 1, VecDeque::new);
                }
                self.queued[conn].push_back(job);
                self.pipelined += 1;
                self.defer_flush(conn);
            }
            Err(e) => self.answer(job.client, job.generation, Response::error(&e)),
        }
        Ok(())
    }

    fn defer_flush(&mut self, conn: usize) {
        if let Some(c) = self.conns.get_mut(conn) {
            if !c.flush_queued {
                c.flush_queued = true;
                self.unflushed.push(conn);
            }
        }
    }

    /// End of a loop turn: writes what this turn queued for each backend connection.
    pub fn flush_deferred(&mut self, poll: &mut Poll, now: Instant) -> Done {
        let mut list = std::mem::take(&mut self.unflushed);
        for &conn in &list {
            let Some(c) = self.conns.get_mut(conn) else { continue };
            if !std::mem::replace(&mut c.flush_queued, false) {
                continue;
            }
            if let Err(e) = c.flush() {
                self.conn_broken(poll, conn, e, now);
            }
        }
        list.clear();
        if self.unflushed.is_empty() {
            // Keep the allocation for the next turn.
            self.unflushed = list;
        }
        self.take_done()
    }

    /// Puts a call that has to be sent again at the front of its pool's queue.
    fn requeue(&mut self, poll: &mut Poll, pool: usize, w: Waiter, now: Instant) {
        let Some(p) = self.pools.pools.get_mut(pool) else {
            let e = ApiError::new(Kind::ConnectionFailed, "PostgreSQL connection lost").with_database(&w.req.database);
            self.answer(w.client, w.generation, Response::error(&e));
            return;
        };
        p.waiting.push_front(w);
        self.hand_out(poll, pool, now);
    }

    /// The pool of `database` as `role`: a platform's calls log in as the platform's role, never as
    /// the gateway's login, so nothing a function does can reach beyond that role's rights.
    fn pool_for(&mut self, database: &str, role: &str, now: Instant) -> usize {
        let key = format!("{database}@{role}");
        if let Some(&k) = self.pools.by_key.get(&key) {
            return k;
        }
        let mut params = self.base.with_dbname(database);
        params.application_name = "stonescriptdb-gateway".into();
        params.user = role.to_string();
        params.password = Some(crate::security::roles::password(&self.cfg.security.platform_secret, role));
        let k = self.pools.pools.insert(Pool::new(key.clone(), database.to_string(), params, now));
        self.pools.by_key.insert(key, k);
        k
    }

    /// Opens connections for waiting calls while limits allow, making room under the total cap by
    /// closing idle connections of the least recently used other pools.
    fn grow(&mut self, poll: &mut Poll, pool: usize, now: Instant) {
        loop {
            let Some(p) = self.pools.pools.get(pool) else { return };
            let want = p.waiting.len().saturating_sub(p.connecting.len());
            if want == 0 || p.size() >= self.cfg.pool.max_per_pool {
                return;
            }
            if p.backoff_until.is_some_and(|u| now < u) {
                return;
            }
            if self.conns.len() >= self.cfg.pool.max_total {
                // Connections already on their way out free a slot when their backend has exited.
                if self.closing_count() >= want {
                    return;
                }
                match self.pools.lru_pool_with_idle(pool) {
                    Some(victim) => {
                        // The oldest idle connection of that pool is the front of its LIFO list.
                        let Some(v) = self.pools.pools.get_mut(victim) else { return };
                        let c = v.idle.remove(0);
                        self.retire_conn(poll, c, now);
                    }
                    None => return,
                }
                continue;
            }
            if !self.open_conn(poll, pool, now) {
                return;
            }
        }
    }

    fn open_conn(&mut self, poll: &mut Poll, pool: usize, now: Instant) -> bool {
        let Some(p) = self.pools.pools.get_mut(pool) else { return false };
        match BackendConn::connect(&p.params, self.tcp_addr, pool, now) {
            Ok(mut c) => {
                let key = self.conns.vacant_key();
                if let Err(e) = c.sock.register(poll.registry(), Token(BACKEND_BASE + key)) {
                    self.connect_failed(pool, &PgError::Io(e), now);
                    return false;
                }
                let k = self.conns.insert(c);
                debug_assert_eq!(k, key);
                p.connecting.push(k);
                if self.jobs.len() <= k {
                    self.jobs.resize_with(k + 1, || None);
                }
                if self.queued.len() <= k {
                    self.queued.resize_with(k + 1, VecDeque::new);
                }
                true
            }
            Err(e) => {
                self.connect_failed(pool, &PgError::Io(e), now);
                false
            }
        }
    }

    /// A connection attempt failed: waiting calls get the error when nothing else can serve them.
    fn connect_failed(&mut self, pool: usize, err: &PgError, now: Instant) {
        let Some(p) = self.pools.pools.get_mut(pool) else { return };
        let e = api_from_pg(err, &p.database);
        let fatal_for_pool = e.kind == Kind::DatabaseNotFound;
        if !fatal_for_pool {
            p.note_connect_failure(now);
            crate::log::warn("backend connect failed", &[("database", &p.database), ("error", &err)]);
        }
        if fatal_for_pool || (p.idle.is_empty() && p.busy.is_empty() && p.connecting.is_empty()) {
            let waiters: Vec<Waiter> = p.waiting.drain(..).collect();
            let r = Response::error(&e);
            for w in waiters {
                self.answer(w.client, w.generation, r.clone());
            }
        }
        if fatal_for_pool {
            self.maybe_drop_pool(pool);
        }
    }

    fn maybe_drop_pool(&mut self, pool: usize) {
        let Some(p) = self.pools.pools.get(pool) else { return };
        if p.size() == 0 && p.waiting.is_empty() {
            let key = p.key.clone();
            self.pools.by_key.remove(&key);
            self.pools.pools.remove(pool);
        }
    }

    fn closing_count(&self) -> usize {
        self.conns.iter().filter(|(_, c)| matches!(c.state, ConnState::Closing)).count()
    }

    /// Ends a healthy connection gracefully: Terminate, leave its pool, and keep the socket (still
    /// counted in the total) until the server closes it; see [`ConnState::Closing`].
    fn retire_conn(&mut self, poll: &mut Poll, key: usize, now: Instant) {
        let Some(c) = self.conns.get_mut(key) else { return };
        let mut b = BytesMut::new();
        frontend::terminate(&mut b);
        c.wbuf.extend_from_slice(&b);
        c.state = ConnState::Closing;
        c.last_used = now;
        let pool = c.pool;
        let flushed = c.flush();
        if let Some(p) = self.pools.pools.get_mut(pool) {
            p.forget(key);
        }
        if let Some(slot) = self.jobs.get_mut(key) {
            *slot = None;
        }
        if flushed.is_err() {
            self.close_conn(poll, key);
        }
    }

    /// A slot under the total cap came free: pools with unserved waiters may open connections.
    fn grow_starved(&mut self, poll: &mut Poll, now: Instant) {
        let starved: Vec<usize> =
            self.pools.pools.iter().filter(|(_, q)| q.waiting.len() > q.connecting.len()).map(|(k, _)| k).collect();
        for s in starved {
            if self.conns.len() >= self.cfg.pool.max_total {
                return;
            }
            self.grow(poll, s, now);
        }
    }

    fn close_conn(&mut self, poll: &mut Poll, key: usize) {
        if let Some(mut c) = self.conns.remove(key) {
            if matches!(c.state, ConnState::Idle) {
                let mut b = BytesMut::new();
                frontend::terminate(&mut b);
                c.wbuf.extend_from_slice(&b);
                let _ = c.flush();
            }
            c.sock.deregister(poll.registry());
            if let Some(p) = self.pools.pools.get_mut(c.pool) {
                p.forget(key);
            }
        }
        if let Some(slot) = self.jobs.get_mut(key) {
            *slot = None;
        }
        // Calls sent behind a job that was given up on (e.g. it ignored its cancel): closing the
        // connection rolls back whatever of them had started.
        let queued = self.queued.get_mut(key).map(std::mem::take).unwrap_or_default();
        for job in queued.into_iter().filter(|j| !j.answered) {
            let e = ApiError::new(Kind::ConnectionFailed, "the PostgreSQL connection running this call was closed")
                .with_database(&job.req.database);
            self.answer(job.client, job.generation, Response::error(&e));
        }
    }

    /// A socket event on backend connection `key`.
    /// `readable` says the event reported data (or a hang-up, `hup`); a writable-only event only flushes.
    pub fn backend_event(&mut self, poll: &mut Poll, key: usize, now: Instant, readable: bool, hup: bool) -> Done {
        self.drive(poll, key, now, readable || hup, hup);
        self.take_done()
    }

    fn drive(&mut self, poll: &mut Poll, key: usize, now: Instant, readable: bool, hup: bool) {
        let Some(c) = self.conns.get_mut(key) else { return };
        let pool = c.pool;
        if matches!(c.state, ConnState::Connecting) {
            let params = match self.pools.pools.get(pool) {
                Some(p) => p.params.clone(),
                None => return,
            };
            if let Err(e) = c.finish_connect(&params) {
                self.conn_broken(poll, key, e, now);
                return;
            }
            if matches!(c.state, ConnState::Connecting) {
                return;
            }
        }
        if let Err(e) = c.flush() {
            self.conn_broken(poll, key, e, now);
            return;
        }
        if !readable {
            return;
        }
        let read = c.read_all(&mut self.scratch, hup);
        // Process what arrived even if the socket then failed: an ErrorResponse often precedes EOF.
        let processed = self.process(poll, key, now);
        // The server's own error (e.g. FATAL 3D000) explains an EOF better than the EOF does.
        let read = match (read, processed) {
            (_, Err(e)) | (Err(e), Ok(())) => Err(e),
            _ => Ok(()),
        };
        if let Err(e) = read {
            self.conn_broken(poll, key, e, now);
            return;
        }
        if let Some(c) = self.conns.get_mut(key) {
            if let Err(e) = c.flush() {
                self.conn_broken(poll, key, e, now);
            }
        }
    }

    /// Handles buffered messages according to the connection state.
    fn process(&mut self, poll: &mut Poll, key: usize, now: Instant) -> Result<(), PgError> {
        loop {
            let Some(c) = self.conns.get_mut(key) else { return Ok(()) };
            match c.state {
                ConnState::Startup(_) => {
                    if !c.drive_startup()? {
                        return Ok(());
                    }
                    let _ = c.flush();
                    let pool = c.pool;
                    if let Some(p) = self.pools.pools.get_mut(pool) {
                        p.note_connect_success();
                        p.set_idle(key);
                    }
                    self.hand_out(poll, pool, now);
                }
                ConnState::Idle => {
                    // Only asynchronous messages arrive on an idle connection; an error here is
                    // usually a FATAL before the server closes it.
                    match c.next_message()? {
                        None => return Ok(()),
                        Some(Backend::Error(e)) => return Err(PgError::Db(e)),
                        Some(_) => {}
                    }
                }
                ConnState::Busy => {
                    let Some(msg) = c.next_message()? else { return Ok(()) };
                    self.on_job_message(poll, key, msg, now)?;
                }
                ConnState::Closing => {
                    // Whatever comes before the EOF no longer matters.
                    while c.next_message()?.is_some() {}
                    return Ok(());
                }
                ConnState::Connecting | ConnState::Broken => return Ok(()),
            }
        }
    }

    /// A connection failed: answer its job, close it, and let waiters retry on others.
    fn conn_broken(&mut self, poll: &mut Poll, key: usize, err: PgError, now: Instant) {
        let Some(c) = self.conns.get_mut(key) else { return };
        if matches!(c.state, ConnState::Closing) {
            // The expected end of a retired connection: its backend is gone, its slot is free.
            self.close_conn(poll, key);
            self.grow_starved(poll, now);
            return;
        }
        c.state = ConnState::Broken;
        let pool = c.pool;
        let was_startup = c.session.is_none();
        let head = self.jobs.get_mut(key).and_then(Option::take);
        let queued = self.queued.get_mut(key).map(std::mem::take).unwrap_or_default();
        for job in head.into_iter().chain(queued).filter(|j| !j.answered) {
            let e = match &err {
                PgError::Db(d) => api_from_db(d, &job.req.database),
                _ => ApiError::new(Kind::ConnectionFailed, format!("PostgreSQL connection lost: {err}"))
                    .with_database(&job.req.database),
            };
            // A FATAL like 57P01 during a call is a connection failure, not the call's fault.
            let e = if matches!(&err, PgError::Db(d) if d.severity == "FATAL" || d.severity == "PANIC") {
                ApiError { kind: Kind::ConnectionFailed, ..e }
            } else {
                e
            };
            self.answer(job.client, job.generation, Response::error(&e));
        }
        self.close_conn(poll, key);
        if was_startup {
            self.connect_failed(pool, &err, now);
        } else {
            self.hand_out(poll, pool, now);
        }
    }

    /// Gives idle connections of `pool` to its waiters; opens more if waiters remain.
    fn hand_out(&mut self, poll: &mut Poll, pool: usize, now: Instant) {
        loop {
            let Some(p) = self.pools.pools.get_mut(pool) else { return };
            if p.waiting.is_empty() || p.idle.is_empty() {
                break;
            }
            let w = p.waiting.pop_front().unwrap_or_else(|| unreachable!());
            let conn = p.idle.pop().unwrap_or_else(|| unreachable!());
            self.start_job(poll, conn, w, now);
        }
        let Some(p) = self.pools.pools.get(pool) else { return };
        if !p.waiting.is_empty() {
            self.grow(poll, pool, now);
            return;
        }
        // Nobody here waits: if another pool is starved by the total cap, give it this slot.
        if !p.idle.is_empty() && self.conns.len() >= self.cfg.pool.max_total {
            let starved = self
                .pools
                .pools
                .iter()
                .find(|(k, q)| {
                    *k != pool && q.waiting.len() > q.connecting.len() && q.size() < self.cfg.pool.max_per_pool
                })
                .map(|(k, _)| k);
            if let Some(s) = starved {
                let c = self.pools.pools.get_mut(pool).map(|p| p.idle.remove(0));
                if let Some(c) = c {
                    self.retire_conn(poll, c, now);
                }
                self.grow(poll, s, now);
            }
        }
    }

    fn start_job(&mut self, poll: &mut Poll, conn: usize, w: Waiter, now: Instant) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        c.state = ConnState::Busy;
        c.last_used = now;
        let pool = c.pool;
        if let Some(p) = self.pools.pools.get_mut(pool) {
            p.set_busy(conn);
        }
        let job = Job::new(w, now + self.cfg.call.timeout, now);
        if self.jobs.len() <= conn {
            self.jobs.resize_with(conn + 1, || None);
        }
        self.jobs[conn] = Some(job);
        self.begin(poll, conn, now);
    }

    /// Executes from the cache or prepares first.
    fn begin(&mut self, poll: &mut Poll, conn: usize, now: Instant) {
        let Some(job) = self.jobs.get(conn).and_then(Option::as_ref) else { return };
        let Some(schema) = self.cfg.call.schemas.get(job.schema_idx) else { return };
        let Some(c) = self.conns.get_mut(conn) else { return };
        let mut key = job.req.shape_key(schema);
        let overloaded = c.ambiguous.contains(&key);
        if overloaded {
            // Cached per JSON kinds: `f(1)` and `f("x")` are different statements.
            key = job.req.typed_key(schema);
        }
        let declared = overloaded && !job.untyped;
        if let Some(stmt) = c.stmts.get(&key).cloned() {
            if let Some(job) = self.job_mut(conn) {
                job.stmt = Some(stmt);
            }
            self.send_execute(poll, conn, now);
        } else {
            self.send_prepare(conn, key, declared, !overloaded);
        }
        self.defer_flush(conn);
    }

    /// Parse + Describe (+ the overload check when `check`) + Sync.
    fn send_prepare(&mut self, conn: usize, key: String, declared: bool, check: bool) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        let Some(job) = self.jobs.get_mut(conn).and_then(Option::as_mut) else { return };
        let schema = &self.cfg.call.schemas[job.schema_idx];
        let name = c.next_stmt_name();
        let sql = job.req.sql(schema);
        let types = if declared { job.req.declared_types() } else { Vec::new() };
        job.declared = declared;
        let ok = frontend::parse(&name, &sql, types.iter().copied(), &mut c.wbuf).is_ok()
            && frontend::describe(b'S', &name, &mut c.wbuf).is_ok();
        debug_assert!(ok, "names and SQL are generated without NUL bytes");
        job.overloads = None;
        if check {
            // Same sync group, so it costs no round trip; skipped by the server if Parse failed.
            let nargs = job.req.params.len().to_string();
            let _ = frontend::parse("", OVERLOAD_SQL, std::iter::empty(), &mut c.wbuf);
            let fparams = [Some(schema.as_bytes()), Some(job.req.function.as_bytes()), Some(nargs.as_bytes())];
            write_bind(&mut c.wbuf, "", fparams.iter().copied(), &[0]);
            c.wbuf.extend_from_slice(EXECUTE_SYNC);
        } else {
            frontend::sync(&mut c.wbuf);
        }
        job.syncs.push_back(SyncPoint::Prepare);
        job.error = None;
        job.pending = Some(Pending { name, key, param_oids: Vec::new(), columns: Vec::new() });
    }

    /// Sends the connection's job: Bind + Execute (+ the session reset) + Sync, in one write.
    fn send_execute(&mut self, poll: &mut Poll, conn: usize, now: Instant) {
        let Some(job) = self.jobs.get_mut(conn).and_then(Option::as_mut) else { return };
        if job.answered || job.cancel_sent {
            // Nobody waits for it, or it is already past its deadline (see after_prepare).
            self.abandon(poll, conn, now);
            return;
        }
        let (Some(c), Some(job)) = (self.conns.get_mut(conn), self.jobs.get_mut(conn).and_then(Option::as_mut)) else {
            return;
        };
        let Some(p) = self.pools.pools.get(c.pool) else { return };
        job.run_start = now;
        if let Err(e) = write_execute(&self.cfg, c, job, &p.types, &mut self.param_buf, &mut self.param_spans) {
            job.answered = true;
            let (client, g) = (job.client, job.generation);
            self.answer(client, g, Response::error(&e));
            self.finish_if_done(poll, conn, now);
        }
    }

    fn on_job_message(&mut self, poll: &mut Poll, conn: usize, msg: Backend, now: Instant) -> Result<(), PgError> {
        let Some(c) = self.conns.get(conn) else { return Ok(()) };
        let pool = c.pool;
        let Some(job) = self.jobs.get_mut(conn).and_then(Option::as_mut) else {
            return Err(PgError::Protocol("message on a busy connection without a job".into()));
        };
        let front = job.syncs.front().copied();
        match msg {
            Backend::Error(e) => {
                if e.severity == "FATAL" || e.severity == "PANIC" {
                    return Err(PgError::Db(e));
                }
                if job.error.is_none() {
                    job.error = Some(e);
                }
            }
            Backend::Notice(_) => {}
            Backend::RowDescription(cols) => {
                if let Some(p) = &mut job.pending {
                    if front == Some(SyncPoint::Prepare) {
                        p.columns = cols;
                    }
                }
            }
            Backend::AuthSasl(_) => {
                return Err(PgError::Protocol("authentication request on a ready connection".into()));
            }
            Backend::Message(m) => match m {
                Message::DataRow(row) => match front {
                    Some(SyncPoint::Execute) if job.error.is_none() && !job.answered => {
                        let vals = data_row_fields(&row)?;
                        if let (Some(stmt), Some(p)) = (&job.stmt, self.pools.pools.get(pool)) {
                            if job.rows > 0 {
                                job.body.push(b',');
                            }
                            render_row_prepared(&stmt.columns, &vals, &p.types, &mut job.body);
                            job.rows += 1;
                        }
                    }
                    Some(SyncPoint::Prepare) if job.error.is_none() => {
                        let vals = data_row_fields(&row)?;
                        job.overloads = vals
                            .first()
                            .copied()
                            .flatten()
                            .and_then(|b| std::str::from_utf8(b).ok())
                            .and_then(|t| t.parse().ok());
                    }
                    Some(SyncPoint::Introspect) => {
                        let vals = data_row_fields(&row)?;
                        job.introspect_rows
                            .push(vals.iter().map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned())).collect());
                    }
                    _ => {}
                },
                Message::ParameterDescription(pd) => {
                    if let Some(p) = &mut job.pending {
                        let mut it = pd.parameters();
                        let mut oids = Vec::new();
                        while let Ok(Some(o)) = it.next() {
                            oids.push(o);
                        }
                        p.param_oids = oids;
                    }
                }
                Message::ParameterStatus(body) => {
                    // SET SESSION AUTHORIZATION survives the resets: a connection whose session user
                    // changed is not reused (the server reports every change of this setting).
                    if body.name().ok() == Some("session_authorization") {
                        if let Some(c) = self.conns.get_mut(conn) {
                            let original = c.session.as_ref().and_then(|s| {
                                s.server_params.iter().find(|(k, _)| k == "session_authorization").map(|(_, v)| v)
                            });
                            if original.map(String::as_str) != body.value().ok() {
                                c.retire = true;
                            }
                        }
                    }
                }
                Message::NoData => {
                    if let Some(p) = &mut job.pending {
                        p.columns.clear();
                    }
                }
                Message::ReadyForQuery(b) => {
                    let status = b.status();
                    if let Some(c) = self.conns.get_mut(conn) {
                        c.tx_status = status;
                    }
                    let Some(point) = job.syncs.pop_front() else {
                        return Err(PgError::Protocol("unexpected ReadyForQuery".into()));
                    };
                    self.on_sync(poll, conn, point, now);
                }
                _ => {}
            },
        }
        Ok(())
    }

    /// One pipeline step finished (its ReadyForQuery arrived).
    fn on_sync(&mut self, poll: &mut Poll, conn: usize, point: SyncPoint, now: Instant) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        let pool = c.pool;
        let Some(job) = self.jobs.get_mut(conn).and_then(Option::as_mut) else { return };
        match point {
            SyncPoint::Prepare => {
                if let Some(mut e) = job.error.take() {
                    job.pending = None;
                    if e.code == "42883" && job.declared && !job.answered {
                        // No overload takes the declared types (e.g. a string for a date): let
                        // PostgreSQL resolve the call with untyped arguments after all.
                        job.untyped = true;
                        job.declared_error = Some(e);
                        self.begin(poll, conn, now);
                        return;
                    }
                    if e.code == "42725" && job.untyped {
                        // Untyped is ambiguous and declared matched nothing: the declared error says more.
                        if let Some(d) = job.declared_error.take() {
                            e = d;
                        }
                    }
                    let more_schemas = job.schema_idx + 1 < self.cfg.call.schemas.len();
                    if e.code == "42883" && more_schemas && !job.answered {
                        job.schema_idx += 1;
                        job.untyped = false;
                        job.declared_error = None;
                        self.begin(poll, conn, now);
                        return;
                    }
                    if e.code == "42725" && !job.declared && !job.untyped && !job.answered {
                        // Overloads PostgreSQL cannot choose between with untyped arguments: remember
                        // the shape and declare types from the JSON values.
                        let schema = &self.cfg.call.schemas[job.schema_idx];
                        c.ambiguous.insert(job.req.shape_key(schema));
                        self.begin(poll, conn, now);
                        return;
                    }
                    let e = api_from_db(&e, &job.req.database);
                    self.fail(poll, conn, e, now);
                    return;
                }
                if !job.declared && !job.untyped && job.overloads.take().is_some_and(|n| n > 1) && !job.answered {
                    // Overloaded: drop the untyped statement and prepare with declared types.
                    if let Some(p) = job.pending.take() {
                        let _ = frontend::close(b'S', &p.name, &mut c.wbuf);
                    }
                    let schema = &self.cfg.call.schemas[job.schema_idx];
                    c.ambiguous.insert(job.req.shape_key(schema));
                    self.begin(poll, conn, now);
                    return;
                }
                self.after_prepare(poll, conn, now);
            }
            SyncPoint::Introspect => {
                let rows = std::mem::take(&mut job.introspect_rows);
                let err = job.error.take();
                if let Some(p) = self.pools.pools.get_mut(pool) {
                    if let Some(e) = err {
                        crate::log::warn("type introspection failed", &[("database", &p.database), ("error", &e)]);
                    } else if let Err(e) = p.types.add_rows(&rows) {
                        crate::log::warn("type introspection rows unreadable", &[("error", &e)]);
                    }
                }
                self.after_prepare(poll, conn, now);
            }
            SyncPoint::Execute => {
                if let Some(e) = job.error.take() {
                    let stale = matches!(e.code.as_str(), "0A000" | "26000");
                    let pipelined = self.queued.get(conn).is_some_and(|q| !q.is_empty());
                    if stale && !job.retried && !job.answered {
                        // The function changed under a cached plan: prepare afresh once.
                        job.retried = true;
                        if let Some(stmt) = job.stmt.take() {
                            c.stmts.retain(|_, s| !Arc::ptr_eq(s, &stmt));
                            let _ = frontend::close(b'S', &stmt.name, &mut c.wbuf);
                        }
                        if !pipelined {
                            self.begin(poll, conn, now);
                            return;
                        }
                        // Calls already sent behind this one keep their place, so it cannot prepare
                        // here; it goes back to the pool (its transaction rolled back: nothing ran).
                        let w = job.to_waiter(now + self.cfg.pool.wait_timeout, job.requeued);
                        job.answered = true;
                        self.finish_if_done(poll, conn, now);
                        self.requeue(poll, pool, w, now);
                        return;
                    }
                    if e.code == "57014" && c.cancelled && !job.cancel_sent && !job.requeued && !job.answered {
                        // A CancelRequest sent for an earlier call on this connection arrived late and
                        // stopped this one. Its transaction rolled back, so it is sent again elsewhere.
                        let w = job.to_waiter(now + self.cfg.pool.wait_timeout, true);
                        job.answered = true;
                        self.finish_if_done(poll, conn, now);
                        self.requeue(poll, pool, w, now);
                        return;
                    }
                    let e = api_from_db(&e, &job.req.database);
                    self.fail(poll, conn, e, now);
                    return;
                }
                if let Some(stmt) = &job.stmt {
                    stmt.note_run(now.saturating_duration_since(job.run_start));
                }
                if !job.answered {
                    job.answered = true;
                    let mut body = std::mem::take(&mut job.body);
                    body.extend_from_slice(b"],\"row_count\":");
                    body.extend_from_slice(job.rows.to_string().as_bytes());
                    body.extend_from_slice(b",\"execution_time_ms\":");
                    let ms = now.saturating_duration_since(job.started).as_secs_f64() * 1000.0;
                    body.extend_from_slice(format!("{ms:.3}").as_bytes());
                    body.push(b'}');
                    let (client, g) = (job.client, job.generation);
                    self.answer(client, g, Response::json(200, body));
                }
            }
        }
        self.finish_if_done(poll, conn, now);
    }

    /// The client left, or the deadline passed, before the function was started (while the
    /// statement was being prepared). A CancelRequest that reached the backend between pipeline
    /// steps found nothing to cancel, so the function must not be started now: it would run to its
    /// end for nobody. Answers 504 when the client still waits; the connection is then retired
    /// like any connection that had a cancel sent.
    fn abandon(&mut self, poll: &mut Poll, conn: usize, now: Instant) {
        let timeout = self.cfg.call.timeout;
        let Some(job) = self.job_mut(conn) else { return };
        job.pending = None;
        if !job.answered {
            job.answered = true;
            let e = ApiError::new(Kind::Timeout, format!("call exceeded {} ms", timeout.as_millis()))
                .with_database(&job.req.database);
            let (client, g) = (job.client, job.generation);
            self.answer(client, g, Response::error(&e));
        }
        self.finish_if_done(poll, conn, now);
    }

    /// After Parse/Describe (and any type lookups): learn missing types, cache the statement, execute.
    fn after_prepare(&mut self, poll: &mut Poll, conn: usize, now: Instant) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        let Some(job) = self.jobs.get_mut(conn).and_then(Option::as_mut) else { return };
        if job.answered || job.cancel_sent {
            self.abandon(poll, conn, now);
            return;
        }
        let Some(p) = self.pools.pools.get(c.pool) else { return };
        let Some(pending) = &job.pending else { return };
        let mut oids: Vec<u32> = pending.param_oids.clone();
        oids.extend(pending.columns.iter().map(|c| c.type_oid));
        let missing = p.types.missing(&oids);
        if !missing.is_empty() && job.introspect_rounds < 4 {
            job.introspect_rounds += 1;
            let list = format!("{{{}}}", missing.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(","));
            let _ = frontend::parse("", INTROSPECTION_SQL, std::iter::empty(), &mut c.wbuf);
            write_bind(&mut c.wbuf, "", [Some(list.as_bytes())].into_iter(), &[0]);
            c.wbuf.extend_from_slice(EXECUTE_SYNC);
            job.syncs.push_back(SyncPoint::Introspect);
            job.error = None;
            if let Err(e) = c.flush() {
                self.conn_broken(poll, conn, e, now);
            }
            return;
        }
        let Some(pending) = job.pending.take() else { return };
        let types: &TypeRegistry = &p.types;
        let columns: Vec<PreparedColumn> =
            pending.columns.iter().map(|col| PreparedColumn::new(&col.name, col.type_oid, types)).collect();
        let stmt = Arc::new(Stmt::new(pending.name, pending.param_oids, columns));
        c.stmts.insert(pending.key, stmt.clone());
        job.stmt = Some(stmt);
        self.send_execute(poll, conn, now);
        if let Some(c) = self.conns.get_mut(conn) {
            if let Err(e) = c.flush() {
                self.conn_broken(poll, conn, e, now);
            }
        }
    }

    fn fail(&mut self, poll: &mut Poll, conn: usize, e: ApiError, now: Instant) {
        if let Some(job) = self.job_mut(conn) {
            if !job.answered {
                job.answered = true;
                let (client, g) = (job.client, job.generation);
                self.answer(client, g, Response::error(&e));
            }
        }
        self.finish_if_done(poll, conn, now);
    }

    /// When the pipeline is drained, the connection goes back to the pool (or is closed).
    fn finish_if_done(&mut self, poll: &mut Poll, conn: usize, now: Instant) {
        let Some(job) = self.jobs.get(conn).and_then(Option::as_ref) else { return };
        if !job.syncs.is_empty() {
            return;
        }
        // A CancelRequest travels on another socket from a helper thread and can reach the backend
        // after this job is over, while the next job's statement runs, and cancel that one instead
        // (tests/call.rs a_late_cancel_never_hits_the_next_call; it happened even when this job had
        // already seen a 57014). A connection that had a cancel sent is therefore never reused.
        let cancelled = job.cancel_sent;
        self.jobs[conn] = None;
        let Some(c) = self.conns.get_mut(conn) else { return };
        if cancelled {
            c.retire = true;
        }
        if let Some(next) = self.queued.get_mut(conn).and_then(VecDeque::pop_front) {
            if c.tx_status != b'I' {
                // A function call in its own implicit transaction cannot leave one open; if the server
                // says otherwise, the calls behind must not run inside it. Closing rolls it back.
                self.jobs[conn] = Some(next);
                let e = PgError::Protocol(format!("transaction status '{}' after a call", c.tx_status as char));
                self.conn_broken(poll, conn, e, now);
                return;
            }
            self.promote(conn, next, now);
            return;
        }
        let pool = c.pool;
        let too_old = now.saturating_duration_since(c.created) >= self.cfg.pool.max_lifetime;
        if c.retire || c.tx_status != b'I' || too_old || !c.rbuf.is_empty() {
            // Outside a transaction and in sync, or not reusable at all.
            self.retire_conn(poll, conn, now);
            self.hand_out(poll, pool, now);
            return;
        }
        c.state = ConnState::Idle;
        c.last_used = now;
        if let Some(p) = self.pools.pools.get_mut(pool) {
            p.set_idle(conn);
        }
        self.hand_out(poll, pool, now);
    }

    /// The next pipelined call becomes the connection's job: the backend starts it now.
    fn promote(&mut self, conn: usize, mut job: Job, now: Instant) {
        job.run_start = now;
        job.deadline = now + self.cfg.call.timeout;
        let gone = job.answered;
        if gone {
            // Its client left while it was queued: stop it like a running call.
            job.cancel_sent = true;
            job.cancel_first = Some(now);
            job.cancel_last = Some(now);
        }
        self.jobs[conn] = Some(job);
        if gone {
            self.cancel_conn(conn);
        }
    }

    /// The client of (`client`, `generation`) left: drop its wait or cancel its query.
    pub fn client_gone(&mut self, client: usize, generation: u64) {
        for (_, p) in self.pools.pools.iter_mut() {
            p.waiting.retain(|w| !(w.client == client && w.generation == generation));
        }
        // A call still queued in a pipeline is cancelled when it starts (see `promote`).
        for j in self.queued.iter_mut().flatten() {
            if j.client == client && j.generation == generation {
                j.answered = true;
            }
        }
        let mut cancel = None;
        for (k, slot) in self.jobs.iter_mut().enumerate() {
            if let Some(j) = slot {
                if j.client == client && j.generation == generation && !j.answered {
                    j.answered = true;
                    if !j.cancel_sent {
                        let now = Instant::now();
                        j.cancel_sent = true;
                        j.cancel_first = Some(now);
                        j.cancel_last = Some(now);
                        cancel = Some(k);
                    }
                }
            }
        }
        if let Some(k) = cancel {
            self.cancel_conn(k);
        }
    }

    fn cancel_conn(&mut self, conn: usize) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        c.cancelled = true;
        c.retire = true;
        let (Some(s), Some(p)) = (&c.session, self.pools.pools.get(c.pool)) else { return };
        send_cancel(&p.params, self.tcp_addr, s.process_id, s.secret_key);
    }

    /// A deploy changed `database`: its cached statements and types are stale.
    pub fn invalidate(&mut self, poll: &mut Poll, database: &str) {
        let pools: Vec<usize> =
            self.pools.pools.iter().filter(|(_, p)| p.database == database).map(|(k, _)| k).collect();
        for pool in pools {
            let (idle, busy) = match self.pools.pools.get_mut(pool) {
                Some(p) => {
                    p.types = TypeRegistry::new();
                    (std::mem::take(&mut p.idle), p.busy.clone())
                }
                None => continue,
            };
            for c in idle {
                self.close_conn(poll, c);
            }
            for c in busy {
                if let Some(c) = self.conns.get_mut(c) {
                    c.retire = true;
                }
            }
        }
    }

    /// Timeouts: waits (503), call deadlines (cancel, then 504), idle and old connections, unused pools.
    pub fn janitor(&mut self, poll: &mut Poll, now: Instant) -> Done {
        // Waiters past their deadline.
        let mut expired = Vec::new();
        for (_, p) in self.pools.pools.iter_mut() {
            while p.waiting.front().is_some_and(|w| now >= w.deadline) {
                if let Some(w) = p.waiting.pop_front() {
                    expired.push((w, p.database.clone()));
                }
            }
        }
        for (w, db) in expired {
            let e = ApiError::new(
                Kind::PoolExhausted,
                format!("no connection to '{db}' became free within {} ms", self.cfg.pool.wait_timeout.as_millis()),
            )
            .with_database(db);
            self.answer(w.client, w.generation, Response::error(&e));
        }
        // Calls past CALL_TIMEOUT_MS: cancel; if the backend does not answer the cancel, give up on it.
        // A CancelRequest only stops the statement running when it arrives; one that arrives while
        // the backend waits for the next message of the pipeline is dropped. So it is repeated until
        // the job ends.
        let grace = Duration::from_secs(5);
        let resend = Duration::from_millis(300);
        let mut to_cancel = Vec::new();
        let mut to_kill = Vec::new();
        for (k, slot) in self.jobs.iter_mut().enumerate() {
            let Some(j) = slot else { continue };
            if now >= j.deadline && !j.cancel_sent {
                j.cancel_sent = true;
                j.cancel_first = Some(now);
                j.cancel_last = Some(now);
                to_cancel.push(k);
            } else if j.cancel_first.is_some_and(|f| now >= f + grace) {
                to_kill.push(k);
            } else if j.cancel_last.is_some_and(|l| now >= l + resend) {
                j.cancel_last = Some(now);
                to_cancel.push(k);
            }
        }
        for k in to_cancel {
            self.cancel_conn(k);
        }
        for k in to_kill {
            let timeout = self.cfg.call.timeout;
            if let Some(j) = self.job_mut(k) {
                if !j.answered {
                    j.answered = true;
                    let e = ApiError::new(Kind::Timeout, format!("call exceeded {} ms", timeout.as_millis()))
                        .with_database(&j.req.database);
                    let (c, g) = (j.client, j.generation);
                    self.answer(c, g, Response::error(&e));
                }
            }
            let pool = self.conns.get(k).map(|c| c.pool);
            self.close_conn(poll, k);
            if let Some(p) = pool {
                self.hand_out(poll, p, now);
            }
        }
        // Idle connections past their idle timeout or lifetime.
        let mut close = Vec::new();
        for (_, p) in self.pools.pools.iter() {
            for &c in &p.idle {
                if let Some(conn) = self.conns.get(c) {
                    if now.saturating_duration_since(conn.last_used) >= self.cfg.pool.connection_idle_timeout
                        || now.saturating_duration_since(conn.created) >= self.cfg.pool.max_lifetime
                    {
                        close.push(c);
                    }
                }
            }
        }
        for c in close {
            self.close_conn(poll, c);
        }
        // Whole pools unused for POOL_IDLE_TIMEOUT_SECS.
        let stale: Vec<usize> = self
            .pools
            .pools
            .iter()
            .filter(|(_, p)| {
                p.busy.is_empty()
                    && p.waiting.is_empty()
                    && p.connecting.is_empty()
                    && now.saturating_duration_since(p.last_used) >= self.cfg.pool.pool_idle_timeout
            })
            .map(|(k, _)| k)
            .collect();
        for pool in stale {
            let idle = self.pools.pools.get_mut(pool).map(|p| std::mem::take(&mut p.idle)).unwrap_or_default();
            for c in idle {
                self.close_conn(poll, c);
            }
            self.maybe_drop_pool(pool);
        }
        // Retired connections whose backend never closed the socket: drop them anyway.
        let gone: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(c.state, ConnState::Closing)
                    && now.saturating_duration_since(c.last_used) >= Duration::from_secs(5)
            })
            .map(|(k, _)| k)
            .collect();
        if !gone.is_empty() {
            for k in gone {
                self.close_conn(poll, k);
            }
            self.grow_starved(poll, now);
        }
        // Connections stuck connecting past the connect timeout.
        let ct = self.cfg.db.connect_timeout;
        let stuck: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.session.is_none() && now.saturating_duration_since(c.created) >= ct)
            .map(|(k, _)| k)
            .collect();
        for k in stuck {
            self.conn_broken(poll, k, PgError::Protocol("connect timed out".into()), now);
        }
        self.take_done()
    }

    /// Closes every connection (shutdown).
    pub fn shutdown(&mut self, poll: &mut Poll) {
        for k in self.conns.keys() {
            self.close_conn(poll, k);
        }
    }
}
