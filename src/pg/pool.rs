//! Connection pools, one per (database, role). Membership follows state: a connection's key is in
//! exactly one of `connecting`, `idle` or `busy`, and waiting calls sit in `waiting`; every count is
//! the length of a collection. The event-loop logic that moves keys between them is in `call/engine.rs`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::params::ConnectParams;
use crate::call::types::TypeRegistry;
use crate::server::slab::Slab;

/// One pool.
pub struct Pool<W> {
    /// `database` or `database@role`.
    pub key: String,
    pub database: String,
    /// How to connect (database and role filled in).
    pub params: ConnectParams,
    /// Connections whose connect or startup is under way.
    pub connecting: Vec<usize>,
    /// Ready connections; the most recently used is last, so it is reused first (LIFO keeps warm
    /// connections and their prepared statements hot and lets the others age out).
    pub idle: Vec<usize>,
    /// Connections running a job.
    pub busy: Vec<usize>,
    /// Calls waiting for a connection, oldest first.
    pub waiting: VecDeque<W>,
    /// Last time a call used this pool; the pool is closed after `POOL_IDLE_TIMEOUT_SECS`.
    pub last_used: Instant,
    /// Types learned from this database's catalog (enums, composites, domains …).
    pub types: TypeRegistry,
    /// After a failed connect, no new attempt before this instant (capped exponential backoff).
    pub backoff_until: Option<Instant>,
    /// The next backoff step.
    pub backoff: Duration,
}

/// First and largest reconnect backoff.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl<W> Pool<W> {
    pub fn new(key: String, database: String, params: ConnectParams, now: Instant) -> Pool<W> {
        Pool {
            key,
            database,
            params,
            connecting: Vec::new(),
            idle: Vec::new(),
            busy: Vec::new(),
            waiting: VecDeque::new(),
            last_used: now,
            types: TypeRegistry::new(),
            backoff_until: None,
            backoff: BACKOFF_MIN,
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

    /// Moves a connection key to the list of its new state.
    pub fn set_idle(&mut self, conn: usize) {
        self.forget(conn);
        self.idle.push(conn);
    }

    pub fn set_busy(&mut self, conn: usize) {
        self.forget(conn);
        self.busy.push(conn);
    }

    /// A connect failed: back off before the next one.
    pub fn note_connect_failure(&mut self, now: Instant) {
        self.backoff_until = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    pub fn note_connect_success(&mut self) {
        self.backoff_until = None;
        self.backoff = BACKOFF_MIN;
    }
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
    /// Live backend connections over all pools.
    pub fn total(&self) -> usize {
        self.pools.iter().map(|(_, p)| p.size()).sum()
    }

    pub fn idle_total(&self) -> usize {
        self.pools.iter().map(|(_, p)| p.idle.len()).sum()
    }

    pub fn waiting_total(&self) -> usize {
        self.pools.iter().map(|(_, p)| p.waiting.len()).sum()
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

    #[test]
    fn membership_is_structural() {
        let now = Instant::now();
        let mut p: Pool<()> = Pool::new("db".into(), "db".into(), params(), now);
        p.connecting.push(1);
        p.connecting.push(2);
        p.set_idle(1);
        p.set_busy(2);
        assert_eq!((p.connecting.len(), p.idle.len(), p.busy.len(), p.size()), (0, 1, 1, 2));
        p.set_idle(2);
        assert_eq!(p.idle, vec![1, 2]);
        p.forget(1);
        assert_eq!(p.size(), 1);
    }

    #[test]
    fn backoff_is_capped() {
        let now = Instant::now();
        let mut p: Pool<()> = Pool::new("db".into(), "db".into(), params(), now);
        for _ in 0..20 {
            p.note_connect_failure(now);
        }
        assert_eq!(p.backoff, BACKOFF_MAX);
        p.note_connect_success();
        assert_eq!(p.backoff, BACKOFF_MIN);
    }
}
