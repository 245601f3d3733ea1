//! The engine's periodic work (every janitor turn of the loop): waits and call deadlines, idle and old connections, unused pools, connects that hang.

#[allow(unused_imports)]
use super::*;

impl CallEngine {
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
            match j.timer.poll(now, self.cfg.call.terminate_after) {
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
            // Closing our end does not stop a backend that ignores cancels: it is ended by the
            // login, and its slots stay taken until PostgreSQL reports it gone.
            if let Some(c) =
                self.pools.pools.get(pool).and_then(|p| crate::call::terminate::conn_of(&self.servers, p, b))
            {
                crate::call::terminate::end(c, b.take_permit());
            }
            self.close_conn(poll, k);
            self.hand_out(poll, pool, now);
        }
        // Idle connections past their idle timeout or lifetime.
        let mut close = Vec::new();
        for (_, p) in self.pools.pools.iter() {
            for &c in &p.idle {
                if let Some(b) = self.backends.get(c)
                    && (now.saturating_duration_since(b.conn.last_used) >= self.cfg.pool.connection_idle_timeout
                        || now.saturating_duration_since(b.conn.created) >= self.cfg.pool.max_lifetime)
                {
                    close.push(c);
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
}
