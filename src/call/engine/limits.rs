//! The connection limits shared with the other loops: growing a pool under them, per-loop quotas of a pool's cap (short loops and the connections handed back to them), room under the total and per-server caps, and calls handed to another loop.

#[allow(unused_imports)]
use super::*;

impl CallEngine {
    /// Opens connections for waiting calls while the shared limits allow. Under the total cap, room
    /// is made by closing an idle connection of this loop's least recently used other pool; when
    /// this loop has none, or the pool's own cap is held by other loops, they are asked for room.
    pub(super) fn grow(&mut self, poll: &mut Poll, pool: usize, now: Instant) {
        if self.pipelines_absorb(pool, now) {
            return;
        }
        loop {
            let Some(p) = self.pools.pools.get(pool) else { return };
            let want = p.waiting().len().saturating_sub(p.connecting.len());
            // At most busy-cap connects at once per pool: the connections that come up take waiting
            // calls, and their pipelines more, before the next ones are opened. Opening one per
            // waiting call at once left a backend per client of a burst behind (a pool of 256 under
            // 256 clients: 234-256 backends, and still connecting after warm-up).
            let want = want.min(self.busy_cap.saturating_sub(p.connecting.len()));
            if want == 0 || p.backoff_until.is_some_and(|u| now < u) {
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
                        if local == 0
                            && p.quota == 0
                            && let Some(to) = share.holder_besides(self.loop_id)
                        {
                            self.forward_waiters(pool, to);
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
                    if local == 0
                        && let Some(to) = share.holder_besides(self.loop_id)
                    {
                        self.forward_waiters(pool, to);
                        return;
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
                    if local == 0
                        && let Some(to) = share.holder_besides(self.loop_id)
                    {
                        self.forward_waiters(pool, to);
                        return;
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

    /// Hands the waiting calls of `pool` to loop `to`, which holds connections of it while this loop
    /// holds none and has no quota. A call that travelled before goes on too (the loop that took it
    /// may have given its connection away since), up to `MAX_HOPS`; before, a call stranded that way
    /// waited for its 503.
    pub(super) fn forward_waiters(&mut self, pool: usize, to: usize) {
        let id = self.loop_id;
        let Some(p) = self.pools.pools.get_mut(pool) else { return };
        let role: Arc<str> = Arc::from(p.params.user.as_str());
        let mut stay = Vec::new();
        for w in p.drain_waiters() {
            if w.hops >= crate::call::session::MAX_HOPS {
                stay.push(w);
            } else {
                self.traffic.calls_forwarded += 1;
                self.forwards.push((to, Waiter { hops: w.hops + 1, ..w }, role.clone()));
            }
        }
        for w in stay {
            p.push_waiter(w);
        }
        p.sync_short(id);
    }

    /// Asks the other loops for room under the total cap for `pool` (at most every
    /// [`ROOM_ASK_EVERY`] per pool).
    pub(super) fn ask_room(&mut self, pool: usize, now: Instant) {
        let Some(p) = self.pools.pools.get_mut(pool) else { return };
        if p.room_asked.is_some_and(|at| now.saturating_duration_since(at) < ROOM_ASK_EVERY) {
            return;
        }
        p.room_asked = Some(now);
        self.traffic.room_requests += 1;
        self.room_asks.push(RoomAsk { server: None });
    }

    /// Asks the other loops for a slot on the server of `pool` (at most every [`ROOM_ASK_EVERY`]).
    pub(super) fn ask_server_room(&mut self, pool: usize, now: Instant) {
        let Some(p) = self.pools.pools.get_mut(pool) else { return };
        if p.room_asked.is_some_and(|at| now.saturating_duration_since(at) < ROOM_ASK_EVERY) {
            return;
        }
        p.room_asked = Some(now);
        self.traffic.room_requests += 1;
        self.room_asks.push(RoomAsk { server: Some(p.server.clone()) });
    }

    /// Another loop (`for_loop`) needs room: closes this loop's oldest idle connection of `pool` (of
    /// the least recently used pool when `None`), if there is one.
    pub fn make_room(&mut self, poll: &mut Poll, server: Option<&str>, for_loop: usize, now: Instant) {
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
        let Some(v) = self.pools.lru_pool_with_idle(usize::MAX) else {
            // Nothing idle now: the next connection that finishes a call goes (see `drained`).
            if !self.owed.contains(&for_loop) {
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

    /// Past the busy cap, calls that find every pipeline of their pool full wait for one to drain
    /// instead of waking one more backend, while some pipeline there is of short calls (each with a
    /// known run time, none running past `CALL_PIPELINE_MAX_WAIT_US`): such a connection is free
    /// again within about that long, and its drain hands it to the oldest waiting call. Otherwise
    /// every such call past the cap woke one more backend, for good. Pools of slow calls grow as
    /// before (a stricter rule held short calls behind slow ones of the same pool:
    /// `bench/results/2026-12-04T2325Z-growth-rules-mixed-pool-2cores.txt`).
    fn pipelines_absorb(&self, pool: usize, now: Instant) -> bool {
        if self.cfg.call.pipeline_depth <= 1 || self.busy_connections() < self.busy_cap {
            return false;
        }
        let Some(p) = self.pools.pools.get(pool) else { return false };
        let max_wait = self.cfg.call.pipeline_max_wait;
        p.busy.iter().any(|&c| {
            self.backends.get(c).is_some_and(|b| {
                !b.session.retire
                    && b.session.job.as_ref().is_some_and(|j| {
                        j.executing_only() && j.expected_us().is_some() && j.running_for(now) <= max_wait
                    })
            })
        })
    }

    pub fn grow_starved(&mut self, poll: &mut Poll, now: Instant) {
        let starved: Vec<usize> =
            self.pools.pools.iter().filter(|(_, q)| q.waiting().len() > q.connecting.len()).map(|(k, _)| k).collect();
        for s in starved {
            self.grow(poll, s, now);
        }
    }

    /// Pools of which this loop holds more than its quota, full over all loops while another loop
    /// is short of its own: an idle connection goes, its slot handed to that loop. (Busy ones go as
    /// they finish a call, see `drained`.)
    pub(super) fn lend_idle(&mut self, poll: &mut Poll, now: Instant) {
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
}
