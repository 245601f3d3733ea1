//! The `/call` engine of one event loop: its pools and backend connections, socket I/O on them, and
//! pool maintenance (wait queues, timeouts, reconnect backoff, the shared connection limits). What a
//! PostgreSQL message means for a call is decided in [`super::session`]; this module carries out the
//! [`Action`]s that come back. It never blocks: CancelRequests go through [`super::cancel`].

mod conns;
mod dispatch;
mod janitor;
mod limits;

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::{Poll, Token};
use postgres_protocol::message::frontend;

use super::backend::{self, Backend};
use super::budget::{Budget, Full, Permit, TotalSlot};
use super::cancel::{Canceller, Due, Target};
use super::owners::{Admission, Owners, not_recorded};
use super::pool::{CallTarget, Pool, Pools};
use super::request::CallRequest;
use super::session::{Action, Caller, Ctx, Job, Session, Waiter, api_from_db};
use super::stmt::Stmt;
use crate::catalog::CallOwner;
use crate::config::Config;
use crate::error::{ApiError, Kind};
use crate::http::response::Response;
use crate::metrics::PoolSnapshot;
use crate::pg::conn::{BackendConn, ConnState};
use crate::pg::dberror::PgError;
use crate::pg::frame::Backend as Msg;
use crate::pg::params::{ConnectParams, Host};
use crate::security::keys::{Credential, StoredKey};
use crate::servers::{DEFAULT_SERVER, Servers};
use crate::slab::Slab;

/// `application_name` of the `/call` connections: the sessions the connection caps count, told apart
/// in `pg_stat_activity` from the gateway's other sessions (deploy, health, terminator, scan).
pub const CALL_APPLICATION_NAME: &str = "stonescriptdb-gateway";

/// Finished requests and their answers.
pub type Done = Vec<(Caller, Response)>;

/// How often a loop short of room asks the other loops again, per pool.
const ROOM_ASK_EVERY: Duration = Duration::from_millis(20);
/// Busy connections per `busy_target` before pipelines deepen, and by how much they do.
const BUSY_CAP_PER_TARGET: usize = 8;
const DEEP_PIPELINE: usize = 4;

/// A request to the other loops: close an idle connection (of any pool on `server`, or of any pool
/// when `None`) so that this loop can open one under the total or that server's cap. (A pool's own
/// cap needs no request: see the quotas in `engine/limits.rs`.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomAsk {
    pub server: Option<Arc<str>>,
}

/// Counts for `/health`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub pools: usize,
    pub connections: usize,
    pub idle: usize,
    pub waiting: usize,
    pub pipelined: u64,
    /// Backend connections opened (startup finished) since the start.
    pub connects: u64,
    /// Connection attempts that failed since the start.
    pub connect_failures: u64,
    /// Closes and what this loop asked of the others.
    pub traffic: crate::metrics::LoopTraffic,
}

/// The `/call` engine: pools, backend connections and the calls running on them.
pub struct CallEngine {
    /// This loop's index.
    loop_id: usize,
    /// How many loops share the connection limits.
    loops: usize,
    cfg: Arc<Config>,
    base: ConnectParams,
    tcp_addr: Option<SocketAddr>,
    /// Backend `k` is registered with the loop's poll under `Token(token_base + k)`.
    token_base: usize,
    pools: Pools<Waiter>,
    backends: Slab<Backend>,
    budget: Arc<Budget>,
    canceller: Canceller,
    /// Busy backends of this loop beyond which calls rather queue behind a short one (its share of
    /// `CALL_BUSY_TARGET`).
    busy_target: usize,
    /// Busy connections of this loop past which pipelines deepen (see `pipeline_depth_now`).
    busy_cap: usize,
    scratch: Vec<u8>,
    /// The pool key of the call being routed (see `pool_for`).
    key_buf: String,
    /// Answers produced while handling events, handed to the server afterwards.
    done: Done,
    /// What sessions asked for, carried out by [`CallEngine::apply`].
    actions: Vec<Action>,
    /// Parameter encoding buffers, reused by every call.
    param_buf: Vec<u8>,
    param_spans: Vec<Option<(usize, usize)>>,
    /// Connections given bytes during this loop turn; written out together at its end, so that
    /// calls for the same backend arriving in one turn reach it in one write (one wake-up).
    unflushed: Vec<usize>,
    /// Calls sent behind another call on a busy connection, since the start (`/health`).
    pipelined: u64,
    /// See [`Stats::connects`] and [`Stats::connect_failures`].
    connects: u64,
    connect_failures: u64,
    traffic: crate::metrics::LoopTraffic,
    /// Who may call which database (see [`Owners::admit`]).
    pub owners: Owners,
    /// Requests for room to send to the other loops.
    room_asks: Vec<RoomAsk>,
    /// Loops to tell that a slot they asked for is free.
    room_freed: Vec<(usize, TotalSlot)>,
    /// Calls to hand to another loop (which holds the pool's connections), with the role they run as.
    forwards: Vec<(usize, Waiter, Arc<str>)>,
    /// Loops that asked for room under the total cap when this loop had no idle connection: the next
    /// connection that finishes a call here is closed for them.
    owed: VecDeque<usize>,
    /// Every server and replica (shared with the health monitor and the deploy workers).
    servers: Arc<Servers>,
    /// Whether each function only reads (STABLE or IMMUTABLE), per database, as learned when it was
    /// prepared: such calls may go to a replica. Forgotten when a deploy changes the database.
    read_only: HashMap<String, HashMap<String, bool>>,
    /// Calls answered and write retries, per server or replica key (see [`Pool::server`]).
    served: HashMap<Arc<str>, (u64, u64)>,
    /// Reads sent towards replicas by this loop: spreads them over a server's replicas in turn.
    replica_turn: usize,
    /// The servers this loop routed reads to, as of [`Servers::generation`] `server_gen`: routing
    /// reads them here, never taking the shared map's lock.
    server_cache: HashMap<Arc<str>, Arc<crate::servers::Server>>,
    server_gen: u64,
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

impl CallEngine {
    /// `loops` engines share `budget` and `canceller`; `token_base` places backend tokens in the
    /// loop's token space.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        loop_id: usize,
        cfg: Arc<Config>,
        base: ConnectParams,
        budget: Arc<Budget>,
        canceller: Canceller,
        token_base: usize,
        loops: usize,
        servers: Arc<Servers>,
    ) -> CallEngine {
        let tcp_addr = match &base.host {
            Host::Tcp(h) => (h.as_str(), base.port).to_socket_addrs().ok().and_then(|mut a| a.next()),
            Host::Unix(_) => None,
        };
        let busy_target = cfg.call.busy_target.div_ceil(loops.max(1)).max(1);
        let busy_cap = match cfg.call.busy_cap {
            0 => busy_target.saturating_mul(BUSY_CAP_PER_TARGET),
            n => n,
        };
        let owners = Owners::new(&cfg.security.role_prefix, cfg.security.require_platform_keys);
        CallEngine {
            loop_id,
            loops: loops.max(1),
            forwards: Vec::new(),
            owed: VecDeque::new(),
            cfg,
            base,
            tcp_addr,
            token_base,
            pools: Pools::default(),
            backends: Slab::default(),
            budget,
            canceller,
            busy_target,
            busy_cap,
            pipelined: 0,
            connects: 0,
            connect_failures: 0,
            traffic: Default::default(),
            unflushed: Vec::new(),
            scratch: vec![0; 64 * 1024],
            key_buf: String::new(),
            done: Vec::new(),
            actions: Vec::new(),
            owners,
            param_buf: Vec::with_capacity(256),
            param_spans: Vec::with_capacity(16),
            room_asks: Vec::new(),
            room_freed: Vec::new(),
            servers,
            read_only: HashMap::new(),
            served: HashMap::new(),
            replica_turn: 0,
            server_cache: HashMap::new(),
            server_gen: 0,
        }
    }

    pub fn set_owners(&mut self, list: Vec<CallOwner>) {
        self.owners.set_owners(list);
    }

    pub fn set_unknown(&mut self, database: &str, now: Instant) {
        self.owners.set_unknown(database, now);
    }

    pub fn set_keys(&mut self, list: Vec<(String, Vec<StoredKey>)>, complete: bool) {
        self.owners.set_keys(list, complete);
    }

    pub fn admit(&self, req: &CallRequest, cred: &Credential, now: Instant) -> Admission {
        self.owners.admit(req, cred, now)
    }

    /// `POOL_MAX_WAITING`: also bounds calls waiting for the catalog.
    pub fn max_waiting(&self) -> usize {
        self.cfg.pool.max_waiting
    }

    /// Calls answered per server and replica since this loop started.
    pub fn served(&self) -> Vec<crate::metrics::ServedCount> {
        self.served
            .iter()
            .map(|(k, &(calls, write_retries))| {
                let (server, replica) = k.split_once('~').unwrap_or((k, ""));
                crate::metrics::ServedCount { server: server.into(), replica: replica.into(), calls, write_retries }
            })
            .collect()
    }

    /// This loop's counts.
    pub fn stats(&self) -> Stats {
        let mut s = self.counts();
        for (_, p) in self.pools.pools.iter() {
            s.idle += p.idle.len();
            s.waiting += p.waiting().len();
        }
        s
    }

    /// The counts that cost nothing to read (no walk over the pools): `idle` and `waiting` are 0.
    pub fn counts(&self) -> Stats {
        Stats {
            pools: self.pools.pools.len(),
            connections: self.backends.len(),
            pipelined: self.pipelined,
            connects: self.connects,
            connect_failures: self.connect_failures,
            traffic: self.traffic,
            ..Stats::default()
        }
    }

    /// Each pool of this loop for `/metrics` and the status page.
    pub fn pool_snapshots(&self, now: Instant) -> Vec<PoolSnapshot> {
        self.pools
            .pools
            .iter()
            .map(|(_, p)| PoolSnapshot {
                database: p.database.clone(),
                idle: p.idle.len(),
                busy: p.busy.len(),
                waiting: p.waiting().len(),
                pipelined: p.busy.iter().filter_map(|c| self.backends.get(*c)).map(|b| b.session.queued.len()).sum(),
                calls: p.calls,
                backoff_ms: p.backoff_until.map_or(0, |u| u.saturating_duration_since(now).as_millis() as u64),
            })
            .collect()
    }

    pub fn busy(&self) -> bool {
        self.backends.iter().any(|(_, b)| b.session.busy()) || self.pools.waiting_total() > 0
    }

    /// Backend connections running calls, over this loop's pools.
    fn busy_connections(&self) -> usize {
        self.pools.pools.iter().map(|(_, p)| p.busy.len()).sum()
    }

    pub fn release_parked(&mut self) {
        self.backends.release_parked();
        self.pools.pools.release_parked();
    }

    fn take_done(&mut self) -> Done {
        std::mem::take(&mut self.done)
    }

    fn answer(&mut self, caller: Caller, r: Response) {
        self.done.push((caller, r));
    }

    /// Calls this loop hands to others: (loop, call, role).
    pub fn take_forwards(&mut self) -> Vec<(usize, Waiter, Arc<str>)> {
        std::mem::take(&mut self.forwards)
    }

    /// Requests for room this loop made since the last call, for the server to pass on.
    pub fn take_room_asks(&mut self) -> Vec<RoomAsk> {
        std::mem::take(&mut self.room_asks)
    }

    /// Loops whose requested slot is now free.
    pub fn take_room_freed(&mut self) -> Vec<(usize, TotalSlot)> {
        std::mem::take(&mut self.room_freed)
    }

    /// The one place a backend changes state; see [`backend::set_state`].
    fn set_state(&mut self, key: usize, state: ConnState) {
        let Some(b) = self.backends.get_mut(key) else { return };
        let Some(pool) = self.pools.pools.get_mut(b.pool) else {
            return backend::set_state::<Waiter>(None, key, b, state);
        };
        backend::set_state(Some(&mut *pool), key, b, state);
        pool.sync_holder(self.loop_id);
    }

    /// Runs `f` on the session of backend `key` with its context, then carries out what it asked.
    fn with_session<R>(
        &mut self,
        poll: &mut Poll,
        key: usize,
        now: Instant,
        f: impl FnOnce(&mut Session, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let b = self.backends.get_mut(key)?;
        let p = self.pools.pools.get_mut(b.pool)?;
        let mut cx = Ctx {
            cfg: &self.cfg,
            types: &mut p.types,
            wbuf: &mut b.conn.wbuf,
            enc: &mut self.param_buf,
            spans: &mut self.param_spans,
            actions: &mut self.actions,
            now,
            replica: p.replica.is_some(),
            reset_needs: p.reset_needs,
        };
        let r = f(&mut b.session, &mut cx);
        self.apply(poll, key, now);
        Some(r)
    }

    /// Carries out the actions sessions asked for.
    fn apply(&mut self, poll: &mut Poll, key: usize, now: Instant) {
        if self.actions.is_empty() {
            return;
        }
        let mut actions = std::mem::take(&mut self.actions);
        let server = self.backends.get(key).and_then(|b| self.pools.pools.get(b.pool)).map(|p| p.server.clone());
        for a in actions.drain(..) {
            match a {
                Action::Answer(c, mut r) => {
                    if let Some(s) = &server {
                        match self.served.get_mut(s) {
                            Some(n) => n.0 += 1,
                            None => {
                                self.served.insert(s.clone(), (1, 0));
                            }
                        }
                        r.served_by = Some(s.clone());
                    }
                    self.answer(c, r)
                }
                Action::Requeue(w) => {
                    if let Some(pool) = self.backends.get(key).map(|b| b.pool) {
                        self.requeue(poll, pool, w, now);
                    }
                }
                Action::Cancel => self.send_cancel(key),
                Action::Drained => self.drained(poll, key, now),
                Action::Broken(e) => self.conn_broken(poll, key, e, now),
                Action::Learned { function, read_only, reset_needs } => {
                    let pool = self.backends.get(key).and_then(|b| self.pools.pools.get_mut(b.pool));
                    if let Some(p) = pool {
                        p.reset_needs = reset_needs;
                        if self.cfg.servers.read_replicas {
                            let db = p.database.clone();
                            self.read_only.entry(db).or_default().insert(function, read_only);
                        }
                    }
                }
                Action::Reroute { waiter: w, wrote } => {
                    if let Some(s) = server.as_ref().filter(|_| wrote) {
                        self.served.entry(s.clone()).or_default().1 += 1;
                    }
                    let role = self
                        .backends
                        .get(key)
                        .and_then(|b| self.pools.pools.get(b.pool))
                        .map(|p| p.params.user.clone());
                    if wrote {
                        crate::log::warn(
                            "a call on a replica tried to write (its function is labelled STABLE or IMMUTABLE); sent to the primary",
                            &[("database", &w.req.database), ("function", &w.req.function)],
                        );
                    } else {
                        crate::log::debug(
                            "a replica lacks what a call needs (not replayed yet); sent to the primary",
                            &[("database", &w.req.database), ("function", &w.req.function)],
                        );
                    }
                    self.reroute(poll, w, role.as_deref().unwrap_or_default(), now);
                }
            }
        }
        if self.actions.is_empty() {
            // Keep the allocation for the next call.
            self.actions = actions;
        }
    }

    /// Accepts an admitted call. `Some` is an immediate answer; `None` means it will come through
    /// `Done` lists.
    pub fn submit(&mut self, poll: &mut Poll, caller: Caller, req: CallRequest, now: Instant) -> Option<Response> {
        // Only admitted calls get here (see `admit`); the role is the recorded one.
        let Some(role) = self.owners.role_of(&req.database) else {
            return Some(Response::error(&not_recorded(&req)));
        };
        let deadline = now + self.cfg.pool.wait_timeout;
        let waiter = Waiter { caller, req, started: now, deadline, requeued: false, hops: 0 };
        self.run(poll, waiter, &role, now)
    }

    /// A call another loop handed over (admitted there, with the role it runs as). Its answer goes
    /// back to that loop.
    pub fn submit_forwarded(&mut self, poll: &mut Poll, waiter: Waiter, role: &str, now: Instant) -> Done {
        let caller = waiter.caller;
        if let Some(r) = self.run(poll, waiter, role, now) {
            self.answer(caller, r);
        }
        self.take_done()
    }

    /// Puts a call that has to be sent again at the front of its pool's queue.
    fn requeue(&mut self, poll: &mut Poll, pool: usize, w: Waiter, now: Instant) {
        let Some(p) = self.pools.pools.get_mut(pool) else {
            let e = ApiError::new(Kind::ConnectionFailed, "PostgreSQL connection lost").with_database(&w.req.database);
            self.answer(w.caller, Response::error(&e));
            return;
        };
        p.push_waiter_front(w);
        self.hand_out(poll, pool, now);
    }

    /// Runs a call again on its database's primary (a replica failed it or could not be reached);
    /// answers at once when that cannot start.
    fn reroute(&mut self, poll: &mut Poll, mut w: Waiter, role: &str, now: Instant) {
        w.req.primary = true;
        let caller = w.caller;
        if let Some(r) = self.run(poll, w, role, now) {
            self.answer(caller, r);
        }
    }

    /// Where a call goes: its database's server; a replica of it when `READ_REPLICAS` is on, the
    /// function is known to only read, the caller did not ask for the primary, and a replica is
    /// usable (reachable and within `MAX_REPLICA_LAG_MS`).
    fn route(&mut self, req: &CallRequest) -> CallTarget {
        let server = self.owners.server_of(&req.database).cloned().unwrap_or_else(|| Arc::from(DEFAULT_SERVER));
        let mut t = CallTarget { server, replica: None };
        if self.cfg.servers.read_replicas
            && !req.primary
            && self.read_only.get(&req.database).and_then(|f| f.get(&*req.function)) == Some(&true)
        {
            let turn = self.replica_turn;
            self.replica_turn = turn.wrapping_add(1);
            t.replica = self.cached_server(&t.server).and_then(|s| s.pick_replica(turn));
        }
        t
    }

    /// Server `name` from this loop's copy, refreshed when the shared map changed.
    fn cached_server(&mut self, name: &Arc<str>) -> Option<&Arc<crate::servers::Server>> {
        let generation = self.servers.generation();
        if generation != self.server_gen {
            self.server_cache.clear();
            self.server_gen = generation;
        }
        if !self.server_cache.contains_key(name) {
            let s = self.servers.get(name)?;
            self.server_cache.insert(name.clone(), s);
        }
        self.server_cache.get(name)
    }

    /// The pool of `database` as `role` on `target`: a platform's calls log in as the platform's role,
    /// never as the gateway's login, so nothing a function does can reach beyond that role's rights.
    fn pool_for(&mut self, database: &str, role: &str, target: &CallTarget, now: Instant) -> Result<usize, ApiError> {
        // Built in a buffer kept from call to call: the lookup is on every call.
        let mut key = std::mem::take(&mut self.key_buf);
        key.clear();
        let _ = match (&*target.server, target.replica) {
            (DEFAULT_SERVER, None) => write!(key, "{database}@{role}"),
            (s, None) => write!(key, "{s}/{database}@{role}"),
            (s, Some(i)) => write!(key, "{s}~{i}/{database}@{role}"),
        };
        if let Some(&k) = self.pools.by_key.get(key.as_str()) {
            self.key_buf = key;
            return Ok(k);
        }
        let Some(server) = self.servers.get(&target.server) else {
            return Err(ApiError::new(
                Kind::ConnectionFailed,
                format!(
                    "database '{database}' is on server '{}', which this gateway does not know yet; retry shortly",
                    target.server
                ),
            )
            .with_database(database));
        };
        let (mut params, addr, budget_key) = match target.replica {
            None => (server.params(self.servers.base()), server.addr, target.server.to_string()),
            Some(i) => {
                let r = &server.replicas[i];
                let p = server.replica_params(i, self.servers.base()).unwrap_or_else(|| server.params(&self.base));
                (p, r.addr, format!("{}~{}", target.server, r.endpoint.label()))
            }
        };
        params.dbname = database.to_string();
        params.application_name = CALL_APPLICATION_NAME.into();
        params.user = role.to_string();
        params.password = Some(crate::security::roles::password(&self.cfg.security.platform_secret, role));
        let share = self.budget.share_on(&key, role, &budget_key);
        let mut pool = Pool::new(key.clone(), database.to_string(), params, share, now);
        pool.server = Arc::from(budget_key);
        pool.replica = target.replica;
        pool.tcp_addr =
            if target.replica.is_none() && &*target.server == DEFAULT_SERVER { self.tcp_addr } else { addr };
        pool.target = target.clone();
        pool.quota = super::budget::quota(self.budget.max_per_pool(), self.loops, self.loop_id);
        let k = self.pools.pools.insert(pool);
        self.pools.by_key.insert(key, k);
        Ok(k)
    }

    /// The session has nothing outstanding: back to the pool, or retired.
    fn drained(&mut self, poll: &mut Poll, key: usize, now: Instant) {
        let Some(b) = self.backends.get_mut(key) else { return };
        let pool = b.pool;
        let too_old = now.saturating_duration_since(b.conn.created) >= self.cfg.pool.max_lifetime;
        let full = self.budget.total() >= self.budget.max_total();
        let (platform_full, role) = match self.pools.pools.get(pool) {
            Some(p) => (self.budget.platform_full(&p.share), p.params.user.clone()),
            None => (false, String::new()),
        };
        let starved_here =
            (full || platform_full)
                && self.pools.pools.iter().any(|(k, q)| {
                    k != pool && !q.waiting().is_empty() && q.size() == 0 && (full || q.params.user == role)
                });
        let short_loop = self.pools.pools.get(pool).and_then(|p| {
            let over = p.size() > p.quota && p.share.conns() >= self.budget.max_per_pool();
            over.then(|| p.share.short_besides(self.loop_id)).flatten()
        });
        if let Some(l) = short_loop {
            // This loop holds more than its quota of a full pool and another loop is short of its
            // own: this connection goes, its slot handed to that loop.
            b.room_for = Some(l);
            self.traffic.room_closes += 1;
            self.retire_conn(poll, key, now);
        } else if let Some(l) = self.owed.pop_front() {
            // Another loop starves under the total cap: its turn (this one served a call first).
            b.room_for = Some(l);
            self.traffic.room_closes += 1;
            self.retire_conn(poll, key, now);
        } else if starved_here {
            // Under the total cap another pool of this loop has calls waiting and no connection at
            // all: this one served a call, the slot goes round (it is grown when the backend exits).
            self.retire_conn(poll, key, now);
        } else if !b.session.reusable() || too_old || !b.conn.rbuf.is_empty() {
            // Outside a transaction and in sync, or not reusable at all.
            self.retire_conn(poll, key, now);
        } else {
            b.conn.last_used = now;
            self.set_state(key, ConnState::Idle);
        }
        self.hand_out(poll, pool, now);
    }

    /// Sends a CancelRequest for what runs on backend `key` (the session is marked cancelled).
    fn send_cancel(&mut self, key: usize) {
        let Some(b) = self.backends.get_mut(key) else { return };
        b.session.mark_cancelled();
        let (Some(s), Some(p)) = (&b.conn.session, self.pools.pools.get(b.pool)) else { return };
        self.canceller.cancel(Target {
            params: p.params.clone(),
            tcp_addr: self.tcp_addr,
            pid: s.process_id,
            key: s.secret_key,
        });
    }

    /// The client of `caller` left: drop its wait or cancel its query.
    pub fn client_gone(&mut self, caller: Caller) {
        for (_, p) in self.pools.pools.iter_mut() {
            p.retain_waiters(|w| w.caller != caller);
        }
        let now = Instant::now();
        let mut cancel = Vec::new();
        for (k, b) in self.backends.iter_mut() {
            if b.session.client_gone(caller, now) {
                cancel.push(k);
            }
        }
        for k in cancel {
            self.send_cancel(k);
        }
    }

    /// A deploy changed `database`: its cached statements and types are stale.
    pub fn invalidate(&mut self, poll: &mut Poll, database: &str) {
        self.read_only.remove(database);
        let pools: Vec<usize> =
            self.pools.pools.iter().filter(|(_, p)| p.database == database).map(|(k, _)| k).collect();
        for pool in pools {
            let (idle, busy) = match self.pools.pools.get_mut(pool) {
                Some(p) => {
                    p.types = super::types::TypeRegistry::new();
                    // The deploy may have brought functions that need more of the reset.
                    p.reset_needs = super::session::ResetNeeds::ALL;
                    (std::mem::take(&mut p.idle), p.busy.clone())
                }
                None => continue,
            };
            for c in idle {
                self.close_conn(poll, c);
            }
            for c in busy {
                if let Some(b) = self.backends.get_mut(c) {
                    b.session.retire = true;
                }
            }
        }
    }

    /// PostgreSQL answers again (the health probe says so): connects may go at once instead of
    /// waiting out a backoff that grew while it was away.
    pub fn end_backoffs(&mut self, poll: &mut Poll, now: Instant) {
        for (_, p) in self.pools.pools.iter_mut() {
            p.backoff_until = None;
        }
        self.grow_starved(poll, now);
    }

    /// Every database's cached statements are stale (this loop fell behind the invalidation log).
    pub fn invalidate_all(&mut self, poll: &mut Poll) {
        let mut dbs: Vec<String> = self.pools.pools.iter().map(|(_, p)| p.database.clone()).collect();
        dbs.sort();
        dbs.dedup();
        for db in dbs {
            self.invalidate(poll, &db);
        }
    }

    /// Closes every connection (shutdown).
    pub fn shutdown(&mut self, poll: &mut Poll) {
        for k in self.backends.keys() {
            self.close_conn(poll, k);
        }
    }
}
