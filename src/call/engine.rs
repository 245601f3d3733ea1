//! The `/call` engine of one event loop: its pools and backend connections, socket I/O on them, and
//! pool maintenance (wait queues, timeouts, reconnect backoff, the shared connection limits). What a
//! PostgreSQL message means for a call is decided in [`super::session`]; this module carries out the
//! [`Action`]s that come back. It never blocks: CancelRequests go through [`super::cancel`].

use std::collections::{HashMap, VecDeque};
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

/// Finished requests and their answers.
pub type Done = Vec<(Caller, Response)>;

/// How often a loop short of room asks the other loops again, per pool.
const ROOM_ASK_EVERY: Duration = Duration::from_millis(20);

/// A request to the other loops: close an idle connection (of `pool`, of any pool on `server`, or of
/// any pool when both are `None`) so that this loop can open one under the shared limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomAsk {
    pub pool: Option<String>,
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
    scratch: Vec<u8>,
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
            pipelined: 0,
            connects: 0,
            connect_failures: 0,
            traffic: Default::default(),
            unflushed: Vec::new(),
            scratch: vec![0; 64 * 1024],
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
            look_for_prepared: p.may_prepare,
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
                Action::Learned { function, read_only, may_prepare } => {
                    let pool = self.backends.get(key).and_then(|b| self.pools.pools.get_mut(b.pool));
                    if let Some(p) = pool {
                        p.may_prepare = may_prepare;
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
        let waiter = Waiter { caller, req, started: now, deadline, requeued: false, forwarded: false };
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

    /// Runs the call on an idle connection, behind a short call, or queues it for a connection.
    fn run(&mut self, poll: &mut Poll, waiter: Waiter, role: &str, now: Instant) -> Option<Response> {
        let target = self.route(&waiter.req);
        let pool = match self.pool_for(&waiter.req.database, role, &target, now) {
            Ok(p) => p,
            Err(e) => return Some(Response::error(&e)),
        };
        if target.replica.is_some()
            && self.pools.pools.get(pool).is_some_and(|p| p.backoff_until.is_some_and(|u| now < u))
        {
            // The replica refused a connect a moment ago (down, or it has not replayed this database's
            // creation yet): the primary answers instead of an error.
            let mut w = waiter;
            w.req.primary = true;
            return self.run(poll, w, role, now);
        }
        let p = self.pools.pools.get_mut(pool)?;
        p.last_used = now;
        p.calls += 1;
        // While fewer backends are busy than this loop's share of the cores, an idle connection runs
        // the call at once. Beyond that, more busy backends only take turns on the same cores;
        // queuing the call behind a short one on a busy connection saves a backend wake-up per call.
        let (has_idle, queued) = (!p.idle.is_empty(), !p.waiting().is_empty());
        if has_idle && !queued && self.busy_connections() < self.busy_target {
            let conn = self.pools.pools.get_mut(pool).and_then(|p| p.idle.pop())?;
            self.start_job(poll, conn, waiter, now);
            return None;
        }
        if queued {
            // Calls wait here already: this one goes behind them, and those at the front join the
            // pipelines that have room, in arrival order.
            return self.enqueue(poll, pool, waiter, now);
        }
        let waiter = match self.try_pipeline(poll, pool, waiter, now) {
            Ok(()) => return None,
            Err(w) => w,
        };
        if self.hold_back(pool, now) {
            return self.enqueue(poll, pool, waiter, now);
        }
        let p = self.pools.pools.get_mut(pool)?;
        if let Some(conn) = p.idle.pop() {
            self.start_job(poll, conn, waiter, now);
            return None;
        }
        self.enqueue(poll, pool, waiter, now)
    }

    /// Queues a call for a connection of `pool` (or a place in one of its pipelines), unless the
    /// pool backs off or too many calls wait already.
    fn enqueue(&mut self, poll: &mut Poll, pool: usize, waiter: Waiter, now: Instant) -> Option<Response> {
        let p = self.pools.pools.get_mut(pool)?;
        if let Some(until) = p.backoff_until.filter(|u| now < *u) {
            let e = ApiError::new(
                Kind::ConnectionFailed,
                format!(
                    "cannot connect to PostgreSQL at {} ({}); the next attempt is in {} ms",
                    p.params.target(),
                    p.last_failure.as_deref().unwrap_or("connect failed"),
                    until.saturating_duration_since(now).as_millis() + 1
                ),
            )
            .with_database(&p.database);
            return Some(Response::error(&e));
        }
        if p.share.waiting() >= self.cfg.pool.max_waiting {
            let e = ApiError::new(Kind::PoolExhausted, "too many calls are waiting for this database")
                .with_database(&p.database);
            return Some(Response::error(&e));
        }
        if p.share.platform_waiting() >= self.cfg.pool.max_waiting_per_platform {
            let e = ApiError::new(
                Kind::PoolExhausted,
                "too many calls of this platform are waiting for connections (MAX_WAITING_PER_PLATFORM)",
            )
            .with_database(&p.database);
            return Some(Response::error(&e));
        }
        p.push_waiter(waiter);
        self.hand_out(poll, pool, now);
        None
    }

    /// Beyond this loop's busy target, while every busy connection of `pool` runs short calls that
    /// have run before (all expected to be done within `CALL_PIPELINE_MAX_WAIT_US`), a call waits
    /// for a place on one of them rather than waking another backend (an idle one, or a new one):
    /// more backends would only take turns on the same cores, and a bigger pool would be slower.
    fn hold_back(&self, pool: usize, now: Instant) -> bool {
        if self.cfg.call.pipeline_depth <= 1 || self.busy_connections() < self.busy_target {
            return false;
        }
        let Some(p) = self.pools.pools.get(pool) else { return false };
        let max_wait = self.cfg.call.pipeline_max_wait;
        let max_us = u64::try_from(max_wait.as_micros()).unwrap_or(u64::MAX);
        !p.busy.is_empty()
            && p.busy.iter().all(|&conn| {
                let Some(b) = self.backends.get(conn) else { return false };
                let Some(head) = b.session.job.as_ref() else { return false };
                if head.running_for(now) > max_wait {
                    return false;
                }
                let mut wait = Some(0u64);
                for j in std::iter::once(head).chain(b.session.queued.iter()) {
                    wait = wait.zip(j.expected_us()).map(|(a, b)| a + b);
                }
                wait.is_some_and(|w| w <= max_us)
            })
    }

    /// Moves the calls at the front of `pool`'s queue into pipelines with room, in arrival order.
    fn pipeline_waiters(&mut self, poll: &mut Poll, pool: usize, now: Instant) {
        loop {
            let Some(w) = self.pools.pools.get_mut(pool).and_then(|p| p.pop_waiter()) else { return };
            if let Err(w) = self.try_pipeline(poll, pool, w, now) {
                if let Some(p) = self.pools.pools.get_mut(pool) {
                    p.push_waiter_front(w);
                }
                return;
            }
        }
    }

    /// Sends the call behind others on the busy connection of `pool` with the shortest expected
    /// wait, if one qualifies: its statement is prepared there, the pipeline is shorter than
    /// `CALL_PIPELINE_DEPTH`, every call in it has a known recent run time and together they are
    /// expected to finish within `CALL_PIPELINE_MAX_WAIT_US`. Callers keep arrival order: a new call
    /// comes here only when none waits. `Err` gives the waiter back.
    fn try_pipeline(&mut self, poll: &mut Poll, pool: usize, waiter: Waiter, now: Instant) -> Result<(), Waiter> {
        let depth = self.cfg.call.pipeline_depth;
        let Some(p) = self.pools.pools.get(pool) else { return Err(waiter) };
        if depth <= 1 || p.busy.is_empty() {
            return Err(waiter);
        }
        let Some(schema) = self.cfg.call.schemas.first() else { return Err(waiter) };
        let max_wait = u64::try_from(self.cfg.call.pipeline_max_wait.as_micros()).unwrap_or(u64::MAX);
        let mut best: Option<(usize, u64, Arc<Stmt>)> = None;
        for &conn in &p.busy {
            let Some(b) = self.backends.get(conn) else { continue };
            let s = &b.session;
            let Some(head) = s.job.as_ref() else { continue };
            if s.retire || !matches!(b.conn.state, ConnState::Busy) || !head.executing_only() {
                continue;
            }
            // A call running longer than a queued call may wait is slow this time, whatever its
            // recent runs say: nothing joins it.
            if head.running_for(now) > self.cfg.call.pipeline_max_wait {
                continue;
            }
            if 1 + s.queued.len() >= depth {
                continue;
            }
            let mut wait = Some(0u64);
            for j in std::iter::once(head).chain(s.queued.iter()) {
                wait = wait.zip(j.expected_us()).map(|(a, b)| a + b);
            }
            let Some(wait) = wait else { continue };
            if wait > max_wait || best.as_ref().is_some_and(|b| b.1 <= wait) {
                continue;
            }
            if let Some(stmt) = s.cached_for(&waiter.req, schema) {
                best = Some((conn, wait, stmt.clone()));
            }
        }
        let Some((conn, _, stmt)) = best else { return Err(waiter) };
        let job = Job::new(waiter, self.cfg.call.timeout, now);
        if self.with_session(poll, conn, now, |s, cx| s.pipeline(cx, job, stmt)) == Some(true) {
            self.pipelined += 1;
            self.defer_flush(conn);
        }
        Ok(())
    }

    fn defer_flush(&mut self, conn: usize) {
        if let Some(b) = self.backends.get_mut(conn) {
            if !b.flush_queued {
                b.flush_queued = true;
                self.unflushed.push(conn);
            }
        }
    }

    /// End of a loop turn: writes what this turn queued for each backend connection.
    pub fn flush_deferred(&mut self, poll: &mut Poll, now: Instant) -> Done {
        let mut list = std::mem::take(&mut self.unflushed);
        for &conn in &list {
            let Some(b) = self.backends.get_mut(conn) else { continue };
            if !std::mem::replace(&mut b.flush_queued, false) {
                continue;
            }
            if let Err(e) = b.conn.flush() {
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
            && self.read_only.get(&req.database).and_then(|f| f.get(&req.function)) == Some(&true)
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
        let key = match (&*target.server, target.replica) {
            (DEFAULT_SERVER, None) => format!("{database}@{role}"),
            (s, None) => format!("{s}/{database}@{role}"),
            (s, Some(i)) => format!("{s}~{i}/{database}@{role}"),
        };
        if let Some(&k) = self.pools.by_key.get(&key) {
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
        params.application_name = "stonescriptdb-gateway".into();
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

    /// Opens connections for waiting calls while the shared limits allow. Under the total cap, room
    /// is made by closing an idle connection of this loop's least recently used other pool; when
    /// this loop has none, or the pool's own cap is held by other loops, they are asked for room.
    fn grow(&mut self, poll: &mut Poll, pool: usize, now: Instant) {
        loop {
            let Some(p) = self.pools.pools.get(pool) else { return };
            let want = p.waiting().len().saturating_sub(p.connecting.len());
            if want == 0 || p.backoff_until.is_some_and(|u| now < u) || self.hold_back(pool, now) {
                return;
            }
            let share = p.share.clone();
            let local = p.size();
            if local >= p.quota && share.short_besides(self.loop_id).is_some() {
                // Loops short of their quota of this pool take the free slots first.
                return;
            }
            match self.budget.try_take(&share) {
                Ok(permit) => {
                    if !self.open_conn(poll, pool, permit, now) {
                        return;
                    }
                }
                Err(Full::Pool) => {
                    // Below its quota, this loop marks itself short: loops over theirs give
                    // connections back as they finish calls (see `drained`), and meanwhile its
                    // calls wait for its own. With no quota at all (a cap below the number of
                    // loops) and no connection, its calls go to a loop that holds some.
                    if let Some(p) = self.pools.pools.get_mut(pool) {
                        if p.mark_short(self.loop_id) {
                            self.traffic.room_requests += 1;
                        }
                        if local == 0 && p.quota == 0 {
                            if let Some(to) = share.holder_besides(self.loop_id) {
                                self.forward_waiters(pool, to);
                            }
                        }
                    }
                    return;
                }
                Err(Full::Server) => {
                    // Room among the connections to this server: an idle one of this loop's least
                    // recently used other pool there goes; otherwise the calls wait for one to drain.
                    let server = self.pools.pools.get(pool).map(|p| p.server.clone());
                    let victim = self
                        .pools
                        .pools
                        .iter()
                        .filter(|(k, p)| *k != pool && !p.idle.is_empty() && Some(&p.server) == server.as_ref())
                        .min_by_key(|(_, p)| p.last_used)
                        .map(|(k, _)| k);
                    match victim.and_then(|v| self.pools.pools.get_mut(v)) {
                        Some(v) => {
                            let c = v.idle.remove(0);
                            self.retire_conn(poll, c, now);
                        }
                        // Other loops may hold that server's idle connections.
                        None => self.ask_server_room(pool, now),
                    }
                    return;
                }
                Err(Full::Platform) => {
                    if local == 0 {
                        if let Some(to) = share.holder_besides(self.loop_id) {
                            self.forward_waiters(pool, to);
                            return;
                        }
                    }
                    // Room among this platform's own connections: an idle one of its least recently
                    // used other pool here goes; otherwise the calls wait for one to drain.
                    let role = self.pools.pools.get(pool).map(|p| p.params.user.clone()).unwrap_or_default();
                    let victim = self
                        .pools
                        .pools
                        .iter()
                        .filter(|(k, p)| *k != pool && !p.idle.is_empty() && p.params.user == role)
                        .min_by_key(|(_, p)| p.last_used)
                        .map(|(k, _)| k);
                    if let Some(v) = victim.and_then(|v| self.pools.pools.get_mut(v)) {
                        let c = v.idle.remove(0);
                        self.retire_conn(poll, c, now);
                    }
                    return;
                }
                Err(Full::Total) => {
                    if local == 0 {
                        if let Some(to) = share.holder_besides(self.loop_id) {
                            self.forward_waiters(pool, to);
                            return;
                        }
                    }
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
                        None => {
                            if self.budget.total() > self.backends.len() {
                                self.ask_room(pool, now);
                            }
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Hands the waiting calls of `pool` that have not travelled yet to loop `to`.
    fn forward_waiters(&mut self, pool: usize, to: usize) {
        let id = self.loop_id;
        let Some(p) = self.pools.pools.get_mut(pool) else { return };
        let role: Arc<str> = Arc::from(p.params.user.as_str());
        let mut stay = Vec::new();
        for w in p.drain_waiters() {
            if w.forwarded {
                stay.push(w);
            } else {
                self.traffic.calls_forwarded += 1;
                self.forwards.push((to, Waiter { forwarded: true, ..w }, role.clone()));
            }
        }
        for w in stay {
            p.push_waiter(w);
        }
        p.sync_short(id);
    }

    /// Asks the other loops for room under the total cap for `pool` (at most every
    /// [`ROOM_ASK_EVERY`] per pool).
    fn ask_room(&mut self, pool: usize, now: Instant) {
        let Some(p) = self.pools.pools.get_mut(pool) else { return };
        if p.room_asked.is_some_and(|at| now.saturating_duration_since(at) < ROOM_ASK_EVERY) {
            return;
        }
        p.room_asked = Some(now);
        self.traffic.room_requests += 1;
        self.room_asks.push(RoomAsk { pool: None, server: None });
    }

    /// Asks the other loops for a slot on the server of `pool` (at most every [`ROOM_ASK_EVERY`]).
    fn ask_server_room(&mut self, pool: usize, now: Instant) {
        let Some(p) = self.pools.pools.get_mut(pool) else { return };
        if p.room_asked.is_some_and(|at| now.saturating_duration_since(at) < ROOM_ASK_EVERY) {
            return;
        }
        p.room_asked = Some(now);
        self.traffic.room_requests += 1;
        self.room_asks.push(RoomAsk { pool: None, server: Some(p.server.clone()) });
    }

    /// Another loop (`for_loop`) needs room: closes this loop's oldest idle connection of `pool` (of
    /// the least recently used pool when `None`), if there is one.
    pub fn make_room(
        &mut self,
        poll: &mut Poll,
        pool: Option<&str>,
        server: Option<&str>,
        for_loop: usize,
        now: Instant,
    ) {
        if let Some(server) = server {
            // Under one server's cap: this loop's least recently used idle connection to that server
            // goes, if it has one; nothing is owed (the asking loop's janitor asks again).
            let victim = self
                .pools
                .pools
                .iter()
                .filter(|(_, p)| !p.idle.is_empty() && p.waiting().is_empty() && &*p.server == server)
                .min_by_key(|(_, p)| p.last_used)
                .map(|(k, _)| k);
            if let Some(c) = victim.and_then(|v| self.pools.pools.get_mut(v)).map(|p| p.idle.remove(0)) {
                if let Some(b) = self.backends.get_mut(c) {
                    b.room_for = Some(for_loop);
                }
                self.traffic.room_closes += 1;
                self.retire_conn(poll, c, now);
            }
            return;
        }
        let victim = match pool {
            Some(key) => self
                .pools
                .by_key
                .get(key)
                .copied()
                .filter(|k| self.pools.pools.get(*k).is_some_and(|p| !p.idle.is_empty() && p.waiting().is_empty())),
            None => self.pools.lru_pool_with_idle(usize::MAX),
        };
        let Some(v) = victim else {
            // Nothing idle now: the next connection that finishes a call goes (see `drained`). Calls
            // for one pool are handed to loops that hold it instead, so only the total cap owes.
            if pool.is_none() && !self.owed.contains(&for_loop) {
                self.owed.push_back(for_loop);
            }
            return;
        };
        let Some(p) = self.pools.pools.get_mut(v) else { return };
        let c = p.idle.remove(0);
        if let Some(b) = self.backends.get_mut(c) {
            b.room_for = Some(for_loop);
        }
        self.traffic.room_closes += 1;
        self.retire_conn(poll, c, now);
    }

    fn open_conn(&mut self, poll: &mut Poll, pool: usize, permit: Permit, now: Instant) -> bool {
        let Some(p) = self.pools.pools.get_mut(pool) else { return false };
        match BackendConn::connect(&p.params, p.tcp_addr, now) {
            Ok(mut c) => {
                let key = self.backends.vacant_key();
                if let Err(e) = c.sock.register(poll.registry(), Token(self.token_base + key)) {
                    self.connect_failed(poll, pool, &PgError::Io(e), now);
                    return false;
                }
                let k = self.backends.insert(Backend::new(c, pool, permit));
                debug_assert_eq!(k, key);
                self.set_state(k, ConnState::Connecting);
                true
            }
            Err(e) => {
                self.connect_failed(poll, pool, &PgError::Io(e), now);
                false
            }
        }
    }

    /// A connect of `pool` succeeded: the other pools of this loop that backed off because the same
    /// server was away may connect at once (see [`Pools::server_is_back`]).
    fn server_is_back(&mut self, poll: &mut Poll, pool: usize, now: Instant) {
        if self.pools.server_is_back(pool) {
            self.grow_starved(poll, now);
        }
    }

    /// A connection attempt failed: waiting calls get the error when nothing else can serve them.
    fn connect_failed(&mut self, poll: &mut Poll, pool: usize, err: &PgError, now: Instant) {
        self.connect_failures += 1;
        let Some(p) = self.pools.pools.get_mut(pool) else { return };
        let e = api_from_pg(err, &p.database);
        if let Some(i) = p.replica {
            // A replica that cannot be reached takes no reads until the monitor sees it well again;
            // the calls waiting for it go to the primary instead of failing.
            if let Some(s) = self.servers.get(&p.target.server) {
                if let Some(r) = s.replicas.get(i) {
                    r.mark_failed(&format!("connect failed: {}", e.message));
                }
            }
            crate::log::warn(
                "replica connect failed; its reads go to the primary",
                &[("database", &p.database), ("server", &p.params.target()), ("error", &err)],
            );
            p.note_connect_failure(now, e.message.clone());
            let role = p.params.user.clone();
            let waiters = p.drain_waiters();
            for w in waiters {
                self.reroute(poll, w, &role, now);
            }
            return;
        }
        let fatal_for_pool = e.kind == Kind::DatabaseNotFound;
        if !fatal_for_pool {
            p.server_away = match err {
                PgError::Io(_) | PgError::Closed | PgError::Protocol(_) => true,
                // 57P0x: shutting down, starting up, in recovery; 08: the connection itself failed.
                PgError::Db(d) => d.code.starts_with("57P") || d.code.starts_with("08"),
                PgError::Auth(_) => false,
            };
            p.note_connect_failure(now, e.message.clone());
            crate::log::warn(
                "backend connect failed",
                &[("database", &p.database), ("server", &p.params.target()), ("role", &p.params.user), ("error", &err)],
            );
        }
        if fatal_for_pool || (p.idle.is_empty() && p.busy.is_empty() && p.connecting.is_empty()) {
            let r = Response::error(&e);
            for w in p.drain_waiters() {
                self.done.push((w.caller, r.clone()));
            }
        }
        if fatal_for_pool {
            self.maybe_drop_pool(pool);
        }
    }

    fn maybe_drop_pool(&mut self, pool: usize) {
        let Some(p) = self.pools.pools.get(pool) else { return };
        if p.size() == 0 && p.waiting().is_empty() {
            if let Some(p) = self.pools.pools.get_mut(pool) {
                p.sync_short(self.loop_id);
            }
            let Some(p) = self.pools.pools.get(pool) else { return };
            let (key, database) = (p.key.clone(), p.database.clone());
            self.pools.by_key.remove(&key);
            self.pools.pools.remove(pool);
            // What was learned about its functions goes with the database's last pool here, so a
            // fleet of tenants called once each does not grow it without bound.
            if !self.pools.pools.iter().any(|(_, q)| q.database == database) {
                self.read_only.remove(&database);
            }
        }
    }

    fn closing_count(&self) -> usize {
        self.backends.iter().filter(|(_, b)| matches!(b.conn.state, ConnState::Closing)).count()
    }

    /// Ends a healthy connection gracefully: Terminate, leave its pool, and keep the socket (still
    /// holding its slot) until the server closes it; see [`ConnState::Closing`].
    fn retire_conn(&mut self, poll: &mut Poll, key: usize, now: Instant) {
        self.set_state(key, ConnState::Closing);
        let Some(b) = self.backends.get_mut(key) else { return };
        let mut t = BytesMut::new();
        frontend::terminate(&mut t);
        b.conn.wbuf.extend_from_slice(&t);
        b.conn.last_used = now;
        b.session.job = None;
        if b.conn.flush().is_err() {
            self.close_conn(poll, key);
        }
    }

    /// A slot under the limits came free: pools with unserved waiters may open connections.
    /// A slot another loop gave up for this one: the first pool here with calls waiting beyond its
    /// connects gets a connection on it; when none can use it, it is given back.
    pub fn take_slot(&mut self, poll: &mut Poll, slot: TotalSlot, now: Instant) {
        let mut slot = Some(slot);
        let starved: Vec<usize> =
            self.pools.pools.iter().filter(|(_, q)| q.waiting().len() > q.connecting.len()).map(|(k, _)| k).collect();
        for pool in starved {
            let Some(s) = slot.take() else { break };
            let Some(share) = self.pools.pools.get(pool).map(|p| p.share.clone()) else {
                slot = Some(s);
                continue;
            };
            if self.pools.pools.get(pool).is_some_and(|p| p.backoff_until.is_some_and(|u| now < u)) {
                slot = Some(s);
                continue;
            }
            match self.budget.take_with(&share, s) {
                Ok(permit) => {
                    self.open_conn(poll, pool, permit, now);
                }
                Err((_, s)) => slot = Some(s),
            }
        }
        drop(slot);
        self.grow_starved(poll, now);
    }

    pub fn grow_starved(&mut self, poll: &mut Poll, now: Instant) {
        let starved: Vec<usize> =
            self.pools.pools.iter().filter(|(_, q)| q.waiting().len() > q.connecting.len()).map(|(k, _)| k).collect();
        for s in starved {
            self.grow(poll, s, now);
        }
    }

    /// Removes a backend: its slot is given back, and calls still on it are answered.
    fn close_conn(&mut self, poll: &mut Poll, key: usize) {
        let Some(mut b) = self.backends.remove(key) else { return };
        self.traffic.closes += 1;
        if matches!(b.conn.state, ConnState::Idle) {
            let mut t = BytesMut::new();
            frontend::terminate(&mut t);
            b.conn.wbuf.extend_from_slice(&t);
            let _ = b.conn.flush();
        }
        b.conn.sock.deregister(poll.registry());
        if let Some(p) = self.pools.pools.get_mut(b.pool) {
            p.forget(key);
            p.sync_holder(self.loop_id);
        }
        // Calls sent behind a call that was given up on (e.g. it ignored its cancel): closing the
        // connection rolls back whatever of them had started.
        for job in b.session.take_unanswered() {
            let e = ApiError::new(Kind::ConnectionFailed, "the PostgreSQL connection running this call was closed")
                .with_database(&job.req.database);
            self.answer(job.caller, Response::error(&e));
        }
        if let Some(l) = b.room_for {
            // The slot goes to the loop it was given up for, held on the way, so that no other loop
            // can take it in between (under load that could starve the asking loop for long).
            if let Some(p) = b.take_permit() {
                self.traffic.slot_handovers += 1;
                self.room_freed.push((l, p.into_total_slot()));
            }
        }
    }

    /// A socket event on backend connection `key`.
    /// `readable` says the event reported data (or a hang-up, `hup`); a writable-only event only flushes.
    pub fn backend_event(&mut self, poll: &mut Poll, key: usize, now: Instant, readable: bool, hup: bool) -> Done {
        self.drive(poll, key, now, readable || hup, hup);
        self.take_done()
    }

    fn drive(&mut self, poll: &mut Poll, key: usize, now: Instant, readable: bool, hup: bool) {
        let Some(b) = self.backends.get_mut(key) else { return };
        if matches!(b.conn.state, ConnState::Connecting) {
            let Some(p) = self.pools.pools.get(b.pool) else { return };
            if let Err(e) = b.conn.finish_connect(&p.params) {
                self.conn_broken(poll, key, e, now);
                return;
            }
            if matches!(b.conn.state, ConnState::Connecting) {
                return;
            }
        }
        if let Err(e) = b.conn.flush() {
            self.conn_broken(poll, key, e, now);
            return;
        }
        if !readable {
            return;
        }
        let read = b.conn.read_all(&mut self.scratch, hup);
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
        if let Some(b) = self.backends.get_mut(key) {
            if let Err(e) = b.conn.flush() {
                self.conn_broken(poll, key, e, now);
            }
        }
    }

    /// Handles buffered messages according to the connection state.
    fn process(&mut self, poll: &mut Poll, key: usize, now: Instant) -> Result<(), PgError> {
        loop {
            let Some(b) = self.backends.get_mut(key) else { return Ok(()) };
            match b.conn.state {
                ConnState::Startup(_) => {
                    if !b.conn.drive_startup()? {
                        return Ok(());
                    }
                    let _ = b.conn.flush();
                    b.session.session_user = b.conn.session.as_ref().and_then(|s| {
                        s.server_params.iter().find(|(k, _)| k == "session_authorization").map(|(_, v)| v.clone())
                    });
                    let pool = b.pool;
                    if let Some(p) = self.pools.pools.get_mut(pool) {
                        p.note_connect_success();
                    }
                    self.connects += 1;
                    self.set_state(key, ConnState::Idle);
                    self.hand_out(poll, pool, now);
                    self.server_is_back(poll, pool, now);
                }
                ConnState::Idle => {
                    // Only asynchronous messages arrive on an idle connection; an error here is
                    // usually a FATAL before the server closes it.
                    match b.conn.next_message()? {
                        None => return Ok(()),
                        Some(Msg::Error(e)) => return Err(PgError::Db(e)),
                        Some(_) => {}
                    }
                }
                ConnState::Busy => {
                    let Some(msg) = b.conn.next_message()? else { return Ok(()) };
                    if let Some(Err(e)) = self.with_session(poll, key, now, |s, cx| s.on_message(cx, msg)) {
                        return Err(e);
                    }
                }
                ConnState::Closing => {
                    // Whatever comes before the EOF no longer matters.
                    while b.conn.next_message()?.is_some() {}
                    return Ok(());
                }
                ConnState::Connecting | ConnState::Broken => return Ok(()),
            }
        }
    }

    /// A connection failed: answer its calls, close it, and let waiters retry on others.
    fn conn_broken(&mut self, poll: &mut Poll, key: usize, err: PgError, now: Instant) {
        let Some(b) = self.backends.get(key) else { return };
        if matches!(b.conn.state, ConnState::Closing) {
            // The expected end of a retired connection: its backend is gone, its slot is free. A slot
            // given up for another loop is left to that loop (told by `RoomFreed`): taking it back
            // here at once would starve it.
            let for_other = b.room_for.is_some();
            self.close_conn(poll, key);
            if !for_other {
                self.grow_starved(poll, now);
            }
            return;
        }
        let (pool, was_startup) = (b.pool, b.conn.session.is_none());
        self.set_state(key, ConnState::Broken);
        let jobs = self.backends.get_mut(key).map(|b| b.session.take_unanswered()).unwrap_or_default();
        let on_replica = self.pools.pools.get(pool).and_then(|p| p.replica.map(|_| p.params.user.clone()));
        for job in jobs {
            if let Some(role) = &on_replica {
                // Reads only: running it again on the primary cannot do anything twice.
                let w = job.to_waiter(now + self.cfg.pool.wait_timeout, false);
                self.reroute(poll, w, role, now);
                continue;
            }
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
            self.answer(job.caller, Response::error(&e));
        }
        self.close_conn(poll, key);
        if was_startup {
            self.connect_failed(poll, pool, &err, now);
        } else {
            self.hand_out(poll, pool, now);
        }
    }

    /// Gives idle connections of `pool` to its waiters in arrival order; opens more if waiters remain.
    fn hand_out(&mut self, poll: &mut Poll, pool: usize, now: Instant) {
        loop {
            let Some(p) = self.pools.pools.get(pool) else { return };
            let Some(&conn) = p.idle.last() else { break };
            if p.waiting().is_empty() {
                break;
            }
            // A backend that finished a call in this turn is awake: it takes the next call. Another
            // idle one is woken only when the busy ones would not be free soon (see `hold_back`).
            let awake = self.backends.get(conn).is_some_and(|b| b.conn.last_used == now);
            if !awake && self.hold_back(pool, now) {
                break;
            }
            let Some(p) = self.pools.pools.get_mut(pool) else { return };
            let Some(conn) = p.idle.pop() else { break };
            let Some(w) = p.pop_waiter() else {
                p.idle.push(conn);
                break;
            };
            self.start_job(poll, conn, w, now);
        }
        self.pipeline_waiters(poll, pool, now);
        let Some(p) = self.pools.pools.get(pool) else { return };
        if !p.waiting().is_empty() {
            self.grow(poll, pool, now);
            return;
        }
        // Nobody here waits: if another pool of this loop is starved by the total cap, give it
        // this slot.
        let total_full = self.budget.total() >= self.budget.max_total();
        if !p.idle.is_empty() && (total_full || self.budget.server_full(&p.share)) {
            let max_per_pool = self.budget.max_per_pool();
            let server = p.server.clone();
            let starved = self
                .pools
                .pools
                .iter()
                .find(|(k, q)| {
                    *k != pool
                        && q.waiting().len() > q.connecting.len()
                        && q.share.conns() < max_per_pool
                        && (total_full || q.server == server)
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
        self.set_state(conn, ConnState::Busy);
        if let Some(b) = self.backends.get_mut(conn) {
            b.conn.last_used = now;
        }
        let job = Job::new(w, self.cfg.call.timeout, now);
        self.with_session(poll, conn, now, |s, cx| s.start(cx, job));
        self.defer_flush(conn);
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
                    // The deploy may have brought functions that prepare statements.
                    p.may_prepare = true;
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

    /// Timeouts: waits (503), call deadlines (cancel, then 504), idle and old connections, unused
    /// pools, connects that hang; and pools still short of connections try again.
    pub fn janitor(&mut self, poll: &mut Poll, now: Instant) -> Done {
        self.lend_idle(poll, now);
        for (_, p) in self.pools.pools.iter_mut() {
            p.sync_short(self.loop_id);
            while p.waiting().front().is_some_and(|w| now >= w.deadline) {
                let Some(w) = p.pop_waiter() else { break };
                let e = ApiError::new(
                    Kind::PoolExhausted,
                    format!(
                        "no connection to '{}' became free within {} ms",
                        p.database,
                        self.cfg.pool.wait_timeout.as_millis()
                    ),
                )
                .with_database(&p.database);
                self.done.push((w.caller, Response::error(&e)));
            }
        }
        let mut to_cancel = Vec::new();
        let mut to_kill = Vec::new();
        for (k, b) in self.backends.iter_mut() {
            let Some(j) = b.session.job.as_mut() else { continue };
            if j.timer.overdue(now) {
                // The cancel was not confirmed in time (a frozen backend): answer at the timeout,
                // not when the connection is finally given up on. The calls pipelined behind it
                // cannot run before it ends: each is answered once its own timeout is past too.
                if let Some(answer) = b.session.time_out(&self.cfg) {
                    self.done.push(answer);
                }
                b.session.time_out_queued(&self.cfg, now, &mut self.done);
            }
            let Some(j) = b.session.job.as_mut() else { continue };
            match j.timer.poll(now) {
                Due::Nothing => {}
                Due::Cancel => to_cancel.push(k),
                Due::GiveUp => to_kill.push(k),
            }
        }
        for k in to_cancel {
            self.send_cancel(k);
        }
        for k in to_kill {
            let Some(b) = self.backends.get_mut(k) else { continue };
            if let Some(answer) = b.session.time_out(&self.cfg) {
                self.done.push(answer);
            }
            let pool = b.pool;
            self.close_conn(poll, k);
            self.hand_out(poll, pool, now);
        }
        // Idle connections past their idle timeout or lifetime.
        let mut close = Vec::new();
        for (_, p) in self.pools.pools.iter() {
            for &c in &p.idle {
                if let Some(b) = self.backends.get(c) {
                    if now.saturating_duration_since(b.conn.last_used) >= self.cfg.pool.connection_idle_timeout
                        || now.saturating_duration_since(b.conn.created) >= self.cfg.pool.max_lifetime
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
                    && p.waiting().is_empty()
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
            .backends
            .iter()
            .filter(|(_, b)| {
                matches!(b.conn.state, ConnState::Closing)
                    && now.saturating_duration_since(b.conn.last_used) >= Duration::from_secs(5)
            })
            .map(|(k, _)| k)
            .collect();
        for k in gone {
            self.close_conn(poll, k);
        }
        // Connections stuck connecting past the connect timeout.
        let ct = self.cfg.db.connect_timeout;
        let stuck: Vec<usize> = self
            .backends
            .iter()
            .filter(|(_, b)| b.conn.session.is_none() && now.saturating_duration_since(b.conn.created) >= ct)
            .map(|(k, _)| k)
            .collect();
        for k in stuck {
            self.conn_broken(poll, k, PgError::Protocol("connect timed out".into()), now);
        }
        // Room may have come free in another loop without a word reaching this one.
        self.grow_starved(poll, now);
        self.take_done()
    }

    /// Pools of which this loop holds more than its quota, full over all loops while another loop
    /// is short of its own: an idle connection goes, its slot handed to that loop. (Busy ones go as
    /// they finish a call, see `drained`.)
    fn lend_idle(&mut self, poll: &mut Poll, now: Instant) {
        let max = self.budget.max_per_pool();
        let give: Vec<(usize, usize)> = self
            .pools
            .pools
            .iter()
            .filter(|(_, p)| !p.idle.is_empty() && p.size() > p.quota && p.share.conns() >= max)
            .filter_map(|(_, p)| Some((p.idle[0], p.share.short_besides(self.loop_id)?)))
            .collect();
        for (c, l) in give {
            if let Some(b) = self.backends.get_mut(c) {
                b.room_for = Some(l);
            }
            self.traffic.room_closes += 1;
            self.retire_conn(poll, c, now);
        }
    }

    /// Closes every connection (shutdown).
    pub fn shutdown(&mut self, poll: &mut Poll) {
        for k in self.backends.keys() {
            self.close_conn(poll, k);
        }
    }
}
