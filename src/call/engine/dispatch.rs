//! Where a call runs: at once on an idle connection, behind a short call on a busy one, or in its pool's queue; and the end-of-turn flush of what the turn wrote to backends.

#[allow(unused_imports)]
use super::*;

impl CallEngine {
    /// Runs the call on an idle connection, behind a short call, or queues it for a connection.
    pub(super) fn run(&mut self, poll: &mut Poll, waiter: Waiter, role: &str, now: Instant) -> Option<Response> {
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
        let has_idle = !p.idle.is_empty();
        let busy = self.busy_connections();
        if has_idle && busy < self.busy_target {
            let conn = self.pools.pools.get_mut(pool).and_then(|p| p.idle.pop())?;
            self.start_job(poll, conn, waiter, now);
            return None;
        }
        // Calls already waiting go first: behind short calls on busy connections where they fit,
        // oldest first; the new call joins a pipeline only once none waits before it.
        self.pipeline_waiters(poll, pool, now);
        let queue_empty = self.pools.pools.get(pool).is_some_and(|p| p.waiting().is_empty());
        let depth = self.pipeline_depth(busy);
        if let Some((conn, stmt)) = self.pipeline_place(pool, &waiter, now, depth).filter(|_| queue_empty) {
            self.pipeline_onto(poll, conn, stmt, waiter, now);
            return None;
        }
        let p = self.pools.pools.get_mut(pool)?;
        if let Some(conn) = p.idle.pop() {
            self.start_job(poll, conn, waiter, now);
            return None;
        }
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
        self.grow(poll, pool, now);
        None
    }

    /// Sends the call behind others on the busy connection of `pool` with the shortest expected
    /// wait, if one qualifies: its statement is prepared there, the pipeline is shorter than
    /// `CALL_PIPELINE_DEPTH`, every call in it has a known recent run time and together they are
    /// expected to finish within `CALL_PIPELINE_MAX_WAIT_US`. Callers keep arrival order: a new
    /// call is tried only when none waits (see [`Self::pipeline_waiters`]). Chooses only:
    /// [`Self::pipeline_onto`] sends.
    pub(super) fn pipeline_place(
        &self,
        pool: usize,
        waiter: &Waiter,
        now: Instant,
        depth: usize,
    ) -> Option<(usize, Arc<Stmt>)> {
        let p = self.pools.pools.get(pool)?;
        if depth <= 1 || p.busy.is_empty() {
            return None;
        }
        let schema = self.cfg.call.schemas.first()?;
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
        best.map(|(conn, _, stmt)| (conn, stmt))
    }

    /// Sends the call behind the others on `conn`, the place [`Self::pipeline_place`] chose.
    fn pipeline_onto(&mut self, poll: &mut Poll, conn: usize, stmt: Arc<Stmt>, waiter: Waiter, now: Instant) {
        let job = Job::new(waiter, self.cfg.call.timeout, now);
        if self.with_session(poll, conn, now, |s, cx| s.pipeline(cx, job, stmt)) == Some(true) {
            self.pipelined += 1;
            self.defer_flush(conn);
        }
    }

    /// Sends the calls waiting for `pool` behind short calls on its busy connections, oldest first,
    /// until one does not fit. A pool at its cap thus keeps pipelining under a queue instead of
    /// serving each waiting call on a connection of its own as one drains (one backend wake-up per
    /// call rather than per batch: half the throughput at 64 clients on a pool of 16).
    pub(super) fn pipeline_waiters(&mut self, poll: &mut Poll, pool: usize, now: Instant) {
        // Pipelining adds no busy connection: the depth, read once there is a waiter, holds for the
        // whole round.
        let mut depth = None;
        loop {
            let Some(p) = self.pools.pools.get_mut(pool) else { return };
            if p.busy.is_empty() {
                return;
            }
            let Some(w) = p.pop_waiter() else { return };
            let depth = *depth.get_or_insert_with(|| self.pipeline_depth(self.busy_connections()));
            match self.pipeline_place(pool, &w, now, depth) {
                Some((conn, stmt)) => self.pipeline_onto(poll, conn, stmt, w, now),
                None => {
                    if let Some(p) = self.pools.pools.get_mut(pool) {
                        p.push_waiter_front(w);
                    }
                    return;
                }
            }
        }
    }

    /// How many calls one busy connection may carry with `busy` connections of this loop busy:
    /// `CALL_PIPELINE_DEPTH`, and [`DEEP_PIPELINE`] times that from `busy_cap` on. Every backend
    /// woken for one short call costs PostgreSQL a context switch the machine's cores pay for; past
    /// a few per core, more busy backends only take turns (256 clients on 2 cores: 15-21k req/s with
    /// pool 256 and depth 4, 70k with depth 16 — the same pool, a sixth of the busy backends). Slow
    /// calls still get connections of their own: nothing joins a call that has run longer than
    /// `CALL_PIPELINE_MAX_WAIT_US`, nor a pipeline expected to take longer.
    pub(super) fn pipeline_depth(&self, busy: usize) -> usize {
        let depth = self.cfg.call.pipeline_depth;
        if depth > 1 && busy >= self.busy_cap {
            return depth.saturating_mul(DEEP_PIPELINE).min(64);
        }
        depth
    }

    pub(super) fn defer_flush(&mut self, conn: usize) {
        if let Some(b) = self.backends.get_mut(conn)
            && !b.flush_queued
        {
            b.flush_queued = true;
            self.unflushed.push(conn);
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

    /// Gives idle connections of `pool` to its waiters in arrival order; opens more if waiters remain.
    pub(super) fn hand_out(&mut self, poll: &mut Poll, pool: usize, now: Instant) {
        loop {
            let Some(p) = self.pools.pools.get_mut(pool) else { return };
            if p.idle.is_empty() {
                break;
            }
            let Some(w) = p.pop_waiter() else { break };
            let conn = p.idle.pop().unwrap_or_else(|| unreachable!());
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

    pub(super) fn start_job(&mut self, poll: &mut Poll, conn: usize, w: Waiter, now: Instant) {
        self.set_state(conn, ConnState::Busy);
        if let Some(b) = self.backends.get_mut(conn) {
            b.conn.last_used = now;
        }
        let job = Job::new(w, self.cfg.call.timeout, now);
        self.with_session(poll, conn, now, |s, cx| s.start(cx, job));
        self.defer_flush(conn);
    }
}
