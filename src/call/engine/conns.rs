//! Backend connections of one loop: connecting, reading and driving them, and closing or retiring them (a closed connection's slot goes back to the shared limits through its permit).

#[allow(unused_imports)]
use super::*;

impl CallEngine {
    pub(super) fn open_conn(&mut self, poll: &mut Poll, pool: usize, permit: Permit, now: Instant) -> bool {
        let Some(p) = self.pools.pools.get_mut(pool) else { return false };
        match BackendConn::connect(&p.params, p.tcp_addr, now) {
            Ok(mut c) => {
                c.max_message = crate::call::answers::max_message(&self.cfg);
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
    pub(super) fn server_is_back(&mut self, poll: &mut Poll, pool: usize, now: Instant) {
        if self.pools.server_is_back(pool) {
            self.grow_starved(poll, now);
        }
    }

    /// A connection attempt failed: waiting calls get the error when nothing else can serve them.
    pub(super) fn connect_failed(&mut self, poll: &mut Poll, pool: usize, err: &PgError, now: Instant) {
        self.connect_failures += 1;
        let Some(p) = self.pools.pools.get_mut(pool) else { return };
        let e = api_from_pg(err, &p.database);
        if let Some(i) = p.replica {
            // A replica that cannot be reached takes no reads until the monitor sees it well again;
            // the calls waiting for it go to the primary instead of failing.
            if let Some(s) = self.servers.get(&p.target.server)
                && let Some(r) = s.replicas.get(i)
            {
                r.mark_failed(&format!("connect failed: {}", e.message));
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

    pub(super) fn maybe_drop_pool(&mut self, pool: usize) {
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

    pub(super) fn closing_count(&self) -> usize {
        self.backends.iter().filter(|(_, b)| matches!(b.conn.state, ConnState::Closing)).count()
    }

    /// Ends a healthy connection gracefully: Terminate, leave its pool, and keep the socket (still
    /// holding its slot) until the server closes it; see [`ConnState::Closing`].
    pub(super) fn retire_conn(&mut self, poll: &mut Poll, key: usize, now: Instant) {
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

    /// Removes a backend: its slot is given back, and calls still on it are answered.
    pub(super) fn close_conn(&mut self, poll: &mut Poll, key: usize) {
        let Some(mut b) = self.backends.remove(key) else { return };
        self.traffic.closes += 1;
        if let Some(s) = &b.conn.session {
            crate::call::terminate::forget(s.process_id, s.secret_key);
        }
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

    pub(super) fn drive(&mut self, poll: &mut Poll, key: usize, now: Instant, readable: bool, hup: bool) {
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
        if let Some(b) = self.backends.get_mut(key)
            && let Err(e) = b.conn.flush()
        {
            self.conn_broken(poll, key, e, now);
        }
    }

    /// Handles buffered messages according to the connection state.
    pub(super) fn process(&mut self, poll: &mut Poll, key: usize, now: Instant) -> Result<(), PgError> {
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
                        // Its start time, so that it can be ended by pid and start if it ever hangs.
                        if let Some(c) = crate::call::terminate::conn_of(&self.servers, p, b) {
                            crate::call::terminate::learn(c);
                        }
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
                        Some(Msg::Error(e)) => return Err(PgError::Db(Box::new(e))),
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
    pub(super) fn conn_broken(&mut self, poll: &mut Poll, key: usize, err: PgError, now: Instant) {
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
        let refused = self.backends.get(key).and_then(|b| b.conn.refused_message);
        if refused.is_some() {
            // The backend is still sending the message we refused: stop it, the socket goes below.
            self.send_cancel(key);
        }
        let mut refused = refused.map(|len| crate::call::answers::refused(len, &self.cfg));
        let on_replica = self.pools.pools.get(pool).and_then(|p| p.replica.map(|_| p.params.user.clone()));
        for job in jobs {
            if let Some(role) = on_replica.as_ref().filter(|_| refused.is_none()) {
                // Reads only: running it again on the primary cannot do anything twice.
                let w = job.to_waiter(now + self.cfg.pool.wait_timeout, false);
                self.reroute(poll, w, role, now);
                continue;
            }
            let e = match &err {
                // The call whose answer was refused (the first still unanswered) says so.
                _ if refused.is_some() => {
                    refused.take().map(|e| e.with_database(&job.req.database)).unwrap_or_else(|| {
                        ApiError::new(Kind::ConnectionFailed, "PostgreSQL connection lost")
                            .with_database(&job.req.database)
                    })
                }
                PgError::Db(d) => api_from_db(d, &job.req.database),
                _ => ApiError::new(Kind::ConnectionFailed, format!("PostgreSQL connection lost: {err}"))
                    .with_database(&job.req.database),
            };
            // A FATAL like 57P01 during a call is a connection failure, not the call's fault.
            let e = if matches!(&err, PgError::Db(d) if d.severity == "FATAL" || d.severity == "PANIC") {
                e.with_kind(Kind::ConnectionFailed)
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
}
