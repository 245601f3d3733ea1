//! Connection pools of one event loop, one per (database, role). Membership follows state: a
//! connection's key is in exactly one of `connecting`, `idle` or `busy`, placed there by
//! [`Pool::place`] from its [`ConnState`] (the engine's one state-changing function calls it), and
//! waiting calls sit in `waiting`; every count is the length of a collection. What a pool holds over
//! all loops is its [`PoolShare`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::budget::PoolShare;
use crate::pg::conn::ConnState;

use crate::call::types::TypeRegistry;
use crate::pg::params::ConnectParams;
use crate::slab::Slab;

/// Where a call runs: its database's server, or one of that server's replicas.
#[derive(Debug, Clone)]
pub struct CallTarget {
    pub server: Arc<str>,
    pub replica: Option<usize>,
}

/// One pool.
pub struct Pool<W> {
    /// `database` or `database@role`.
    pub key: String,
    pub database: String,
    /// Where its connections go: the server's name, or `server~host:port` for a replica (also its
    /// key in the per-server budget).
    pub server: Arc<str>,
    /// Its connections go to a replica: reads only.
    pub replica: Option<usize>,
    /// The server (and replica) its calls were routed to.
    pub target: CallTarget,
    /// The TCP address to dial, resolved off the loop (`None` for a Unix socket).
    pub tcp_addr: Option<std::net::SocketAddr>,
    /// The reset statements this database's functions could need (every one until a prepare has
    /// looked).
    pub reset_needs: crate::call::session::ResetNeeds,
    /// How to connect (database and role filled in).
    pub params: ConnectParams,
    /// Connections whose connect or startup is under way.
    pub connecting: Vec<usize>,
    /// Ready connections; the most recently used is last, so it is reused first (LIFO keeps warm
    /// connections and their prepared statements hot and lets the others age out).
    pub idle: Vec<usize>,
    /// Connections running a job.
    pub busy: Vec<usize>,
    /// Calls waiting for a connection, oldest first. Changed only through the methods below, which
    /// keep the share's count of waiters over all loops.
    waiting: VecDeque<W>,
    /// This pool over all loops: its connections and waiters.
    pub share: Arc<PoolShare>,
    /// Last time a call used this pool; the pool is closed after `POOL_IDLE_TIMEOUT_SECS`.
    pub last_used: Instant,
    /// Types learned from this database's catalog (enums, composites, domains …).
    pub types: TypeRegistry,
    /// After a failed connect, no new attempt before this instant (capped exponential backoff).
    pub backoff_until: Option<Instant>,
    /// The next backoff step.
    pub backoff: Duration,
    /// Why the last connect failed, for the answers given while backing off.
    pub last_failure: Option<String>,
    /// The last failed connect found the server away (refused, cut off, timed out, starting up or
    /// shutting down), not a fault of this pool's own (its login, its database): a connect of any
    /// pool to the same server that succeeds ends this pool's backoff too.
    pub server_away: bool,
    /// When this loop last asked the other loops for room for this pool.
    pub room_asked: Option<Instant>,
    /// This loop is marked in the share as holding connections of this pool.
    holder: bool,
    /// This loop's quota of `MAX_CONNECTIONS_PER_POOL` (see [`super::budget::quota`]).
    pub quota: usize,
    /// This loop is marked in the share as short of its quota with calls waiting.
    short: bool,
    /// Calls this pool took on this loop since it was opened (ranks databases in `/metrics`).
    pub calls: u64,
}

/// First and largest reconnect backoff.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl<W> Pool<W> {
    pub fn new(key: String, database: String, params: ConnectParams, share: Arc<PoolShare>, now: Instant) -> Pool<W> {
        Pool {
            share,
            key,
            database,
            server: Arc::from(crate::servers::DEFAULT_SERVER),
            replica: None,
            target: CallTarget { server: Arc::from(crate::servers::DEFAULT_SERVER), replica: None },
            tcp_addr: None,
            reset_needs: crate::call::session::ResetNeeds::ALL,
            params,
            connecting: Vec::new(),
            idle: Vec::new(),
            busy: Vec::new(),
            waiting: VecDeque::new(),
            last_used: now,
            types: TypeRegistry::new(),
            backoff_until: None,
            backoff: BACKOFF_MIN,
            last_failure: None,
            server_away: false,
            room_asked: None,
            holder: false,
            quota: usize::MAX,
            short: false,
            calls: 0,
        }
    }

    /// Connections this pool holds in any state.
    pub fn size(&self) -> usize {
        self.connecting.len() + self.idle.len() + self.busy.len()
    }

    /// Removes a connection key from whichever list holds it.
    pub fn forget(&mut self, conn: usize) {
        for list in [&mut self.connecting, &mut self.idle, &mut self.busy] {
            if let Some(i) = list.iter().position(|&k| k == conn) {
                list.remove(i);
                return;
            }
        }
    }

    /// Puts a connection key in the list of its state: connecting (connect or startup), idle (last, so
    /// it is reused first), busy, or none (closing, broken).
    pub fn place(&mut self, conn: usize, state: &ConnState) {
        self.forget(conn);
        match state {
            ConnState::Connecting | ConnState::Startup(_) => self.connecting.push(conn),
            ConnState::Idle => self.idle.push(conn),
            ConnState::Busy => self.busy.push(conn),
            ConnState::Closing | ConnState::Broken => {}
        }
    }

    /// Tells the share whether loop `id` holds connections of this pool, when that changed.
    pub fn sync_holder(&mut self, id: usize) {
        let holds = self.size() > 0;
        if holds != self.holder {
            self.holder = holds;
            self.share.set_holder(id, holds);
        }
        self.sync_short(id);
    }

    /// Marks loop `id` short of its quota of this pool (its calls wait while the pool's cap is
    /// taken); true when the mark is new.
    pub fn mark_short(&mut self, id: usize) -> bool {
        if self.short || self.size() >= self.quota || self.waiting.is_empty() {
            return false;
        }
        self.short = true;
        self.share.set_short(id, true)
    }

    /// Clears the mark once nothing waits here or the loop holds its quota.
    pub fn sync_short(&mut self, id: usize) {
        if self.short && (self.waiting.is_empty() || self.size() >= self.quota) {
            self.short = false;
            self.share.set_short(id, false);
        }
    }

    pub fn waiting(&self) -> &VecDeque<W> {
        &self.waiting
    }

    pub fn push_waiter(&mut self, w: W) {
        self.waiting.push_back(w);
        self.share.add_waiting(1);
    }

    /// A call that must go first (it was already running once).
    pub fn push_waiter_front(&mut self, w: W) {
        self.waiting.push_front(w);
        self.share.add_waiting(1);
    }

    pub fn pop_waiter(&mut self) -> Option<W> {
        let w = self.waiting.pop_front()?;
        self.share.add_waiting(-1);
        Some(w)
    }

    /// Keeps the waiters `keep` says to keep.
    pub fn retain_waiters(&mut self, keep: impl FnMut(&W) -> bool) {
        let before = self.waiting.len();
        self.waiting.retain(keep);
        self.share.add_waiting(self.waiting.len() as isize - before as isize);
    }

    pub fn drain_waiters(&mut self) -> Vec<W> {
        let all: Vec<W> = self.waiting.drain(..).collect();
        self.share.add_waiting(-(all.len() as isize));
        all
    }

    /// A connect failed: back off before the next one. Connects that fail together (several were
    /// under way when PostgreSQL went away) are one round and lengthen the backoff once; the wait is
    /// 75–100 % of the step, so pools (and gateways) do not retry in lockstep.
    pub fn note_connect_failure(&mut self, now: Instant, cause: String) {
        self.last_failure = Some(cause);
        if self.backoff_until.is_some_and(|u| now < u) {
            return;
        }
        self.backoff_until = Some(now + backoff_wait(self.backoff, jitter(now)));
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Any success ends the backoff.
    pub fn note_connect_success(&mut self) {
        self.backoff_until = None;
        self.backoff = BACKOFF_MIN;
        self.last_failure = None;
        self.server_away = false;
    }

    /// Whether this pool connects to the same server as `other` (whatever database and role).
    pub fn same_server(&self, other: &Pool<W>) -> bool {
        self.params.host == other.params.host && self.params.port == other.params.port
    }
}

/// The wait for a backoff `step` with `jitter` (0..1000): from the whole step at 0 down to 75 % of it.
fn backoff_wait(step: Duration, jitter: u64) -> Duration {
    let step = step.as_micros() as u64;
    Duration::from_micros(step - step / 4 * jitter.min(999) / 1000)
}

/// 0..1000, different from call to call (the clock's low bits; good enough to spread retries).
fn jitter(now: Instant) -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let mixed = u64::from(nanos).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (now.elapsed().as_nanos() as u64);
    (mixed >> 33) % 1000
}

/// All pools and all backend connections.
pub struct Pools<W> {
    pub pools: Slab<Pool<W>>,
    pub by_key: HashMap<String, usize>,
}

impl<W> Default for Pools<W> {
    fn default() -> Self {
        Pools { pools: Slab::default(), by_key: HashMap::new() }
    }
}

impl<W> Pools<W> {
    pub fn waiting_total(&self) -> usize {
        self.pools.iter().map(|(_, p)| p.waiting.len()).sum()
    }

    /// A connect of pool `back` succeeded: the other pools that back off because the same server was
    /// away may connect at once, as their backoff grew while it was away and would outlast it (the
    /// step stays, should it go away again). True when one did. A walk over the pools per connect,
    /// which is rare next to calls.
    pub fn server_is_back(&mut self, back: usize) -> bool {
        let Some(b) = self.pools.get(back) else { return false };
        let others: Vec<usize> = self
            .pools
            .iter()
            .filter(|(k, p)| *k != back && p.server_away && p.backoff_until.is_some() && p.same_server(b))
            .map(|(k, _)| k)
            .collect();
        for k in &others {
            if let Some(p) = self.pools.get_mut(*k) {
                p.backoff_until = None;
            }
        }
        !others.is_empty()
    }

    /// The pool whose idle connection should be sacrificed to make room: least recently used first.
    pub fn lru_pool_with_idle(&self, except: usize) -> Option<usize> {
        self.pools
            .iter()
            .filter(|(k, p)| *k != except && !p.idle.is_empty())
            .min_by_key(|(_, p)| p.last_used)
            .map(|(k, _)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ConnectParams {
        ConnectParams::from_url("postgres://u@localhost/db").unwrap()
    }

    fn pool() -> Pool<u32> {
        Pool::new("db@u".into(), "db".into(), params(), Arc::new(PoolShare::default()), Instant::now())
    }

    #[test]
    fn membership_follows_state() {
        let mut p = pool();
        p.place(1, &ConnState::Connecting);
        p.place(2, &ConnState::Connecting);
        p.place(1, &ConnState::Idle);
        p.place(2, &ConnState::Busy);
        assert_eq!((p.connecting.len(), p.idle.len(), p.busy.len(), p.size()), (0, 1, 1, 2));
        p.place(2, &ConnState::Idle);
        assert_eq!(p.idle, vec![1, 2], "the most recently used is last");
        p.place(1, &ConnState::Closing);
        assert_eq!(p.size(), 1);
        p.place(2, &ConnState::Broken);
        assert_eq!(p.size(), 0);
    }

    #[test]
    fn waiters_are_counted_in_the_share() {
        let mut p = pool();
        p.push_waiter(1);
        p.push_waiter(2);
        p.push_waiter_front(0);
        assert_eq!(p.share.waiting(), 3);
        assert_eq!(p.pop_waiter(), Some(0));
        p.retain_waiters(|w| *w != 1);
        assert_eq!(p.share.waiting(), 1);
        assert_eq!(p.drain_waiters(), vec![2]);
        assert_eq!(p.share.waiting(), 0);
    }

    #[test]
    fn backoff_is_capped() {
        let mut p = pool();
        let mut now = Instant::now();
        for _ in 0..20 {
            p.note_connect_failure(now, "refused".into());
            now = p.backoff_until.unwrap();
        }
        assert_eq!(p.backoff, BACKOFF_MAX);
        p.note_connect_success();
        assert_eq!((p.backoff, p.backoff_until, p.last_failure.clone()), (BACKOFF_MIN, None, None));
    }

    #[test]
    fn a_connect_that_succeeds_ends_the_backoffs_of_pools_the_same_server_was_away_for() {
        let mut pools: Pools<u32> = Pools::default();
        let on = |url: &str| ConnectParams::from_url(url).unwrap();
        let now = Instant::now();
        let mut add = |url: &str, away: bool| {
            let mut p: Pool<u32> = Pool::new("k".into(), "db".into(), on(url), Arc::new(PoolShare::default()), now);
            p.note_connect_failure(now, "refused".into());
            p.server_away = away;
            pools.pools.insert(p)
        };
        let back = add("postgres://a@localhost/one", true);
        let same = add("postgres://b@localhost/two", true);
        let own_fault = add("postgres://c@localhost/three", false);
        let other_server = add("postgres://a@otherhost/one", true);
        let other_port = add("postgres://a@localhost:5433/one", true);
        pools.pools.get_mut(back).unwrap().note_connect_success();
        assert!(pools.server_is_back(back));
        let until = |k: usize| pools.pools.get(k).unwrap().backoff_until;
        assert_eq!(until(same), None, "another database and role on the same server");
        assert!(until(own_fault).is_some(), "a pool's own fault (its login) keeps its backoff");
        assert!(until(other_server).is_some() && until(other_port).is_some(), "another server keeps its backoff");
        assert_eq!(pools.pools.get(same).unwrap().backoff, BACKOFF_MIN * 2, "the step stays");
        assert!(!pools.server_is_back(back), "nothing left to end");
    }

    #[test]
    fn connects_failing_together_are_one_round() {
        let mut p = pool();
        let now = Instant::now();
        for _ in 0..10 {
            p.note_connect_failure(now, "refused".into());
        }
        assert_eq!(p.backoff, BACKOFF_MIN * 2, "ten failures of one round double the step once");
        let until = p.backoff_until.unwrap();
        let wait = until - now;
        assert!(wait <= BACKOFF_MIN && wait >= BACKOFF_MIN * 3 / 4, "{wait:?}");
        p.note_connect_failure(until, "refused".into());
        assert_eq!(p.backoff, BACKOFF_MIN * 4);
        assert_eq!(p.last_failure.as_deref(), Some("refused"));
    }

    #[test]
    fn the_holder_mark_follows_the_pools_size() {
        let mut p = pool();
        p.sync_holder(3);
        assert_eq!(p.share.holder_besides(0), None, "an empty pool holds nothing");
        p.place(1, &ConnState::Connecting);
        p.sync_holder(3);
        assert_eq!(p.share.holder_besides(0), Some(3));
        p.place(1, &ConnState::Idle);
        p.sync_holder(3);
        assert_eq!(p.share.holder_besides(0), Some(3), "still held");
        p.place(1, &ConnState::Closing);
        p.sync_holder(3);
        assert_eq!(p.share.holder_besides(0), None, "the last connection gone");
    }

    #[test]
    fn a_loop_is_short_while_calls_wait_and_it_holds_less_than_its_quota() {
        let mut p = pool();
        p.quota = 2;
        assert!(!p.mark_short(3), "nothing waits");
        assert_eq!(p.share.short_besides(0), None);
        p.push_waiter(7);
        assert_eq!(p.waiting().len(), 1);
        assert!(p.mark_short(3), "a waiter and no connection");
        assert_eq!(p.share.short_besides(0), Some(3));
        assert!(!p.mark_short(3), "the mark is not new");
        p.place(1, &ConnState::Busy);
        p.sync_short(3);
        assert_eq!(p.share.short_besides(0), Some(3), "one of two: still short");
        p.place(2, &ConnState::Busy);
        p.sync_short(3);
        assert_eq!(p.share.short_besides(0), None, "the quota held");
        assert!(!p.mark_short(3), "at its quota with calls waiting");
        assert_eq!(p.share.short_besides(0), None);
        p.place(2, &ConnState::Closing);
        assert!(p.mark_short(3), "below its quota again");
        assert_eq!(p.pop_waiter(), Some(7));
        p.sync_holder(3);
        assert_eq!(p.share.short_besides(0), None, "nothing waits any more");
        assert_eq!(p.share.holder_besides(0), Some(3));
    }

    #[test]
    fn the_backoff_wait_is_three_quarters_to_all_of_the_step() {
        let step = Duration::from_millis(400);
        assert_eq!(backoff_wait(step, 0), step);
        assert_eq!(backoff_wait(step, 500), Duration::from_millis(350));
        assert_eq!(backoff_wait(step, 999), Duration::from_micros(300_100));
    }

    #[test]
    fn jitter_spreads_over_its_range() {
        let seen: Vec<u64> = (0..400)
            .map(|_| {
                std::thread::sleep(Duration::from_micros(3));
                jitter(Instant::now())
            })
            .collect();
        assert!(seen.iter().all(|&j| j < 1000), "{seen:?}");
        let distinct: std::collections::HashSet<u64> = seen.iter().copied().collect();
        assert!(distinct.len() > 100, "{} distinct values", distinct.len());
        let low = seen.iter().filter(|&&j| j < 500).count();
        assert!((100..=300).contains(&low), "{low} of 400 below 500");
    }

    #[test]
    fn totals_and_the_pool_to_take_an_idle_connection_from() {
        let mut pools: Pools<u32> = Pools::default();
        let start = Instant::now();
        for (age, idle, waiters) in [(5u64, 0usize, 2u32), (3, 1, 0), (1, 1, 1), (0, 0, 0), (2, 2, 0)] {
            let mut p = pool();
            p.last_used = start - Duration::from_secs(age);
            for c in 0..idle {
                p.place(c, &ConnState::Idle);
            }
            for w in 0..waiters {
                p.push_waiter(w);
            }
            pools.pools.insert(p);
        }
        assert_eq!(pools.waiting_total(), 3);
        assert_eq!(pools.lru_pool_with_idle(usize::MAX), Some(1), "the oldest with an idle connection");
        assert_eq!(pools.lru_pool_with_idle(1), Some(4), "the next oldest, the asking pool left out");
        for k in [1, 2, 4] {
            pools.pools.get_mut(k).unwrap().place(0, &ConnState::Busy);
            pools.pools.get_mut(k).unwrap().place(1, &ConnState::Busy);
        }
        assert_eq!(pools.lru_pool_with_idle(usize::MAX), None, "no idle connection anywhere");
    }
}
