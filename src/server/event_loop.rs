//! One event loop: a mio `Poll` owning its client sockets and its `/call` backend sockets, run to
//! completion on its own thread. Each turn reads the clock once, dispatches events (draining to
//! `WouldBlock`), then runs a throttled janitor. Loop 0 also owns the listener and hands accepted
//! connections to a loop with CPU to spare; loops hand idle connections on to pack or spread the load
//! (see [`super::balance`]). Other threads reach a loop only through its channel and its `Waker`
//! (see [`super::notify`]).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use super::app::App;
use super::client::{BodyBudget, Client, Incoming, Phase, ReqInfo};
use super::notify::Message;
use super::shared::Shared;
use crate::call::request::CallRequest;
use crate::config::Config;
use crate::error::{ApiError, Kind};
use crate::http::chunked::ChunkedDecoder;
use crate::http::request::{BodyFraming, Method, parse_head};
use crate::http::response::{self, CONTINUE, Response};
use crate::http::router::{self, BodyKind};
use crate::log;
use crate::security;
use crate::slab::Slab;

pub(super) const LISTENER: Token = Token(0);
pub(super) const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);
/// Client tokens start here; backend tokens live above `BACKEND_BASE`.
const CLIENT_BASE: usize = 16;
pub(super) const BACKEND_BASE: usize = 1 << 40;
/// The counter slot of `/call`, whose answers also feed the latency histogram.
const CALL_SLOT: usize = 1;
/// How often the janitor looks at deadlines.
const JANITOR_EVERY: Duration = Duration::from_millis(100);
/// Bytes read per `read` call into the shared scratch buffer.
const SCRATCH: usize = 64 * 1024;
/// Buffers larger than this are released when a connection goes idle, so idle connections stay small.
const KEEP_CAPACITY: usize = 16 * 1024;

/// One event loop and everything it owns.
pub struct Loop {
    poll: Poll,
    listener: Option<TcpListener>,
    addr: SocketAddr,
    clients: Slab<Client>,
    cfg: Arc<Config>,
    inbox: Receiver<Message>,
    signals: Option<mio::net::UnixStream>,
    /// Set once shutdown began: the time by which we exit regardless.
    shutdown_deadline: Option<Instant>,
    /// When the drain began: requests begun later are answered 503 `shutting_down`.
    drain_started: Option<Instant>,
    /// The clock, read once per turn.
    now: Instant,
    scratch: Vec<u8>,
    last_janitor: Instant,
    /// Source of request ids (`generation`), increasing over all connections.
    next_generation: u64,
    /// This loop's CPU share, for where client connections live.
    meter: super::balance::Meter,
    app: App,
}

impl Loop {
    /// A loop over `poll` (whose waker is registered under [`WAKER`]), with the listener when it is
    /// the accepting loop.
    pub(super) fn new(
        id: usize,
        poll: Poll,
        listener: Option<TcpListener>,
        addr: SocketAddr,
        inbox: Receiver<Message>,
        shared: Arc<Shared>,
        notifier: super::notify::Notifier,
    ) -> Loop {
        let now = Instant::now();
        let cfg = shared.cfg.clone();
        Loop {
            app: App::new(id, shared, notifier, BACKEND_BASE),
            poll,
            listener,
            addr,
            clients: Slab::default(),
            cfg,
            inbox,
            signals: None,
            shutdown_deadline: None,
            drain_started: None,
            now,
            scratch: vec![0; SCRATCH],
            last_janitor: now,
            next_generation: 0,
            meter: super::balance::Meter::default(),
        }
    }

    /// Turns SIGTERM and SIGINT into graceful shutdown of every loop.
    pub(super) fn watch_signals(&mut self) -> io::Result<()> {
        let (read, write) = std::os::unix::net::UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let write2 = write.try_clone()?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, write)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, write2)?;
        let mut read = mio::net::UnixStream::from_std(read);
        self.poll.registry().register(&mut read, SIGNALS, Interest::READABLE)?;
        self.signals = Some(read);
        Ok(())
    }

    /// Runs until shutdown completes; returns the shutdown deadline it kept to.
    pub(super) fn run(mut self) -> io::Result<Instant> {
        if self.listener.is_some() {
            log::info(
                "listening",
                &[("addr", &self.addr), ("version", &crate::VERSION), ("event_loops", &self.app.shared.loops.len())],
            );
        }
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.now = Instant::now();
            // Requests first, so the calls they start reach PostgreSQL (in one write per backend)
            // before this turn spends its time sending answers; then PostgreSQL's replies.
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_all(),
                    WAKER => self.drain_inbox(),
                    SIGNALS => self.drain_signals(),
                    Token(t) if t >= BACKEND_BASE => {}
                    Token(t) if t >= CLIENT_BASE => {
                        let key = t - CLIENT_BASE;
                        // Spurious or stale events are harmless: every handler re-checks state.
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.client_readable(key, ev.is_read_closed() || ev.is_error());
                        }
                        if ev.is_writable() {
                            self.flush(key);
                        }
                    }
                    _ => {}
                }
            }
            let done = self.app.flush_backends(&mut self.poll, self.now);
            self.deliver(done);
            for ev in events.iter().filter(|ev| ev.token().0 >= BACKEND_BASE) {
                let hup = ev.is_read_closed() || ev.is_error();
                let key = ev.token().0 - BACKEND_BASE;
                let done = self.app.backend_event(&mut self.poll, key, self.now, ev.is_readable(), hup);
                self.deliver(done);
            }
            if self.now.duration_since(self.last_janitor) >= JANITOR_EVERY {
                self.last_janitor = self.now;
                self.janitor();
            }
            let done = self.app.flush_backends(&mut self.poll, self.now);
            self.deliver(done);
            let failed = self.app.send_to_loops();
            self.deliver(failed);
            self.clients.release_parked();
            self.app.release_parked();
            // Cheap counts every turn; the walk over the pools (idle, waiting) in the janitor.
            if let Some(s) = self.app.shared.stats.get(self.app.id) {
                s.publish_counts(&self.app.calls.counts());
            }
            if let Some(deadline) = self.shutdown_deadline {
                // Every connection counts, idle ones too: each ends after an answer with
                // `Connection: close` or after SHUTDOWN_IDLE_MS without a byte (see the janitor), never
                // under a request that is already on its way.
                let busy = !self.clients.is_empty() || self.app.busy();
                if !busy || self.now >= deadline {
                    if busy {
                        log::warn("shutdown deadline reached with requests in flight", &[("loop", &self.app.id)]);
                        self.answer_all_shutting_down();
                    }
                    self.app.shutdown(&mut self.poll);
                    for key in self.clients.keys() {
                        self.close(key);
                    }
                    return Ok(deadline);
                }
            }
        }
    }

    fn next_timeout(&self) -> Duration {
        JANITOR_EVERY
            .saturating_sub(Instant::now().saturating_duration_since(self.last_janitor))
            .max(Duration::from_millis(1))
    }

    fn drain_signals(&mut self) {
        let mut got = false;
        if let Some(s) = &mut self.signals {
            let mut b = [0u8; 16];
            loop {
                match s.read(&mut b) {
                    Ok(0) => break,
                    Ok(_) => got = true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        }
        if got {
            log::info("signal received, shutting down", &[]);
            self.begin_shutdown();
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline = Some(self.now + self.cfg.shutdown_grace);
        self.drain_started = Some(self.now);
        // Connections the kernel already completed are in the backlog, and their clients may have sent
        // a request: closing the listener would reset them. They are taken here (by this loop, as the
        // others may be about to exit) and drained like the rest.
        self.accept_all();
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        // A signal reaches one loop; every loop drains. Told only now that the listener is closed: their
        // answers say `Connection: close`, and a client that reconnects then is refused, never queued
        // behind a listener about to close.
        let me = self.app.id;
        self.app.shared.loops.send_others(me, || Message::Shutdown);
        // Idle keep-alive connections: a request may already be on its way. What is there is read
        // (and answered 503 shutting_down, `Connection: close`); a connection that stays without a
        // byte for SHUTDOWN_IDLE_MS is then closed by the janitor.
        let idle_end = self.now + self.cfg.limits.shutdown_idle;
        for key in self.clients.keys() {
            if self.clients.get(key).is_some_and(|c| !c.busy()) {
                self.client_readable(key, true);
            }
            if let Some(c) = self.clients.get_mut(key)
                && !c.busy()
            {
                c.deadline = c.deadline.min(idle_end);
            }
        }
        log::info("draining", &[("in_flight", &self.clients.len())]);
    }

    /// At the drain deadline: every request still waiting gets 503 `shutting_down` (its call may
    /// still be running; the connection close rolls it back), written as far as the sockets take it.
    fn answer_all_shutting_down(&mut self) {
        let e = ApiError::new(Kind::ShuttingDown, "the gateway stopped before this request finished; retry");
        for key in self.clients.keys() {
            match self.clients.get(key).map(|c| &c.phase) {
                Some(Phase::Waiting) => self.respond(key, Response::error(&e).closing()),
                Some(Phase::Streaming) => {
                    let generation = self.clients.get(key).map_or(0, |c| c.generation);
                    let mut line = e.body();
                    line.push(b'\n');
                    self.stream_chunk(key, generation, line, true);
                }
                _ => {}
            }
        }
    }

    fn drain_inbox(&mut self) {
        while let Ok(m) = self.inbox.try_recv() {
            match m {
                Message::Complete { client, generation, response } => {
                    self.app.deploys_in_flight = self.app.deploys_in_flight.saturating_sub(1);
                    // The deploy recorded what it changed before answering.
                    self.app.catch_up(&mut self.poll);
                    self.deliver(vec![(client, generation, response)]);
                }
                Message::Chunk { client, generation, data, last } => {
                    if last {
                        self.app.deploys_in_flight = self.app.deploys_in_flight.saturating_sub(1);
                        self.app.catch_up(&mut self.poll);
                    }
                    self.stream_chunk(client, generation, data, last)
                }
                Message::Call { waiter, role } => {
                    let answers = self.app.take_call(&mut self.poll, *waiter, &role, self.now);
                    self.deliver(answers);
                }
                Message::Answer { client, generation, response } => {
                    self.app.call_answered(client, generation);
                    self.deliver(vec![(client, generation, response)]);
                }
                Message::CallGone(caller) => self.app.calls.client_gone(caller),
                Message::Adopt(sock, peer) => self.adopt(sock, peer),
                Message::Owners(list) => self.app.calls.set_owners(list.as_ref().clone()),
                Message::Keys { keys, complete } => self.app.calls.set_keys(keys.as_ref().clone(), complete),
                Message::Resolved(r) => {
                    let answers = self.app.resolved(&mut self.poll, &r, self.now);
                    self.deliver(answers);
                }
                Message::RoomWanted { from, server } => {
                    self.app.calls.make_room(&mut self.poll, server.as_deref(), from, self.now);
                }
                Message::RoomFreed(slot) => self.app.calls.take_slot(&mut self.poll, slot, self.now),
                Message::Shutdown => self.begin_shutdown(),
            }
        }
    }

    /// Starts serving a client connection (accepted here or handed over by the accepting loop, which
    /// already counted it for this loop).
    fn adopt(&mut self, mut sock: mio::net::TcpStream, peer: SocketAddr) {
        let key = self.clients.vacant_key();
        if self
            .poll
            .registry()
            .register(&mut sock, Token(CLIENT_BASE + key), Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            self.count_clients(-1);
            self.app.shared.release_address(peer.ip());
            return;
        }
        let wait = match self.shutdown_deadline {
            Some(_) => self.cfg.limits.shutdown_idle.min(self.cfg.limits.keepalive_timeout),
            None => self.cfg.limits.keepalive_timeout,
        };
        let k = self.clients.insert(Client::new(sock, peer, self.now + wait));
        debug_assert_eq!(k, key);
    }

    fn count_clients(&self, delta: isize) {
        if let Some(s) = self.app.shared.stats.get(self.app.id) {
            if delta >= 0 {
                s.clients.fetch_add(delta as usize, Ordering::Relaxed);
            } else {
                s.clients.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
            }
        }
    }

    /// Accepts every pending connection and gives each to the first loop with CPU to spare (see
    /// [`super::balance::place`]). One accepting loop rather than a listener per loop: the standard
    /// library cannot set `SO_REUSEPORT`, and the kernel's hash cannot know which loops are busy.
    fn accept_all(&mut self) {
        loop {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((sock, peer)) => {
                    let shared = &self.app.shared;
                    if shared.clients() >= client_cap(&self.cfg, peer.ip()) {
                        // Over the limit: dropping the socket closes it; the client sees a reset.
                        if log::refusal(peer.ip(), "max_client_connections") != log::Refusal::Suppress {
                            log::warn("client connection refused: MAX_CLIENT_CONNECTIONS", &[("peer", &peer)]);
                        }
                        continue;
                    }
                    if !shared.take_address(peer.ip()) {
                        if log::refusal(peer.ip(), "max_connections_per_address") != log::Refusal::Suppress {
                            log::warn("client connection refused: MAX_CONNECTIONS_PER_ADDRESS", &[("peer", &peer)]);
                        }
                        continue;
                    }
                    let _ = sock.set_nodelay(true);
                    // While draining, connections stay here: another loop may already have exited.
                    let target = if self.shutdown_deadline.is_some() { self.app.id } else { shared.place() };
                    if let Some(s) = shared.stats.get(target) {
                        s.clients.fetch_add(1, Ordering::Relaxed);
                    }
                    if target == self.app.id {
                        self.adopt(sock, peer);
                    } else if let Some(n) = shared.loops.get(target)
                        && !n.send(Message::Adopt(sock, peer))
                    {
                        if let Some(s) = shared.stats.get(target) {
                            s.clients.fetch_sub(1, Ordering::Relaxed);
                        }
                        shared.release_address(peer.ip());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log and try again on the next event rather than spin.
                    log::error("accept failed", &[("error", &e)]);
                    return;
                }
            }
        }
    }

    /// The most a connection buffers before we stop reading from it, by phase.
    fn read_cap(&self, c: &Client) -> usize {
        let l = &self.cfg.limits;
        match &c.phase {
            Phase::Head => l.max_head_bytes + SCRATCH,
            Phase::Body(inc) => inc.limit.saturating_sub(inc.body.len()) + l.max_head_bytes + SCRATCH,
            Phase::Waiting | Phase::Streaming => l.max_head_bytes + SCRATCH,
            Phase::Closing => usize::MAX,
        }
    }

    /// Reads what the client sent. A read shorter than the buffer means the socket was empty a moment
    /// ago, and with edge-triggered readiness any later byte brings a new event, so the extra read
    /// that would only return `WouldBlock` is skipped (one syscall per request). When the event also
    /// reported the peer's FIN (`hup`), reading goes on to the end so the EOF is seen now.
    fn client_readable(&mut self, key: usize, hup: bool) {
        let Some(c) = self.clients.get(key) else { return };
        let cap = self.read_cap(c);
        let mut eof = false;
        let mut paused = false;
        let Some(c) = self.clients.get_mut(key) else { return };
        loop {
            if c.rbuf.len() >= cap {
                paused = true;
                break;
            }
            match c.sock.read(&mut self.scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    if matches!(c.phase, Phase::Closing) {
                        continue; // discard: we are only flushing
                    }
                    c.rbuf.extend_from_slice(&self.scratch[..n]);
                    if n < self.scratch.len() && !hup {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        c.read_paused = paused;
        if eof {
            c.peer_closed = true;
        }
        self.advance(key);
        let Some(c) = self.clients.get(key) else { return };
        if c.peer_closed {
            match c.phase {
                // The client went away mid-call: the app cancels the backend query.
                Phase::Waiting | Phase::Streaming => {
                    let gen_ = c.generation;
                    self.app.client_gone(key, gen_);
                    self.close(key);
                }
                Phase::Closing if c.wpos < c.wbuf.len() => {}
                // Answers to earlier pipelined requests are still queued: send them, then close.
                _ if c.wpos < c.wbuf.len() => {
                    if let Some(c) = self.clients.get_mut(key) {
                        c.phase = Phase::Closing;
                    }
                }
                _ => self.close(key),
            }
        }
    }

    /// Moves a connection forward with the bytes it has: parse heads, collect bodies, dispatch.
    fn advance(&mut self, key: usize) {
        loop {
            let Some(c) = self.clients.get_mut(key) else { return };
            match &mut c.phase {
                Phase::Head => {
                    if c.rbuf.is_empty() {
                        return;
                    }
                    let parsed = parse_head(&c.rbuf, &self.cfg.limits);
                    match parsed {
                        Ok(None) => {
                            if c.req.is_none() {
                                // First bytes of a new request: the head clock starts now.
                                c.deadline = self.now + self.cfg.limits.head_timeout;
                                c.req = Some(ReqInfo {
                                    method: Method::Other,
                                    path: String::new(),
                                    route: router::UNMATCHED,
                                    started: self.now,
                                    minor_version: 1,
                                    keep_alive: false,
                                    call: None,
                                    forwarded_for: None,
                                });
                            }
                            return;
                        }
                        Err(e) => {
                            c.rbuf.clear();
                            self.respond(key, Response::error(&e).closing());
                            return;
                        }
                        Ok(Some((head, n))) => {
                            c.rbuf.drain(..n);
                            let started = c.req.as_ref().map(|r| r.started).unwrap_or(self.now);
                            c.req = Some(ReqInfo {
                                method: head.method,
                                path: head.path.clone(),
                                route: router::UNMATCHED,
                                started,
                                minor_version: head.minor_version,
                                keep_alive: head.keep_alive,
                                call: None,
                                forwarded_for: None,
                            });
                            // Unique over the server's life, so a late answer for a closed connection can
                            // never reach a new connection that reuses its slot.
                            self.next_generation += 1;
                            c.generation = self.next_generation;
                            let peer = c.peer;
                            // A browser asks for the status page's credentials only when challenged.
                            let status_page = head.path == "/status" || head.path.starts_with("/status/");
                            match self.accept_head(peer, head) {
                                Err((e, body_unread)) => {
                                    let mut r = Response::error(&e);
                                    if status_page && e.kind == Kind::AdminTokenInvalid {
                                        r.header = Some(("WWW-Authenticate", "Basic realm=\"stonescriptdb-gateway\""));
                                    }
                                    // Without reading the body we cannot find the next request.
                                    let r = if body_unread { r.closing() } else { r };
                                    self.respond(key, r);
                                    if body_unread {
                                        return;
                                    }
                                }
                                Ok(inc) => {
                                    let Some(c) = self.clients.get_mut(key) else { return };
                                    if let Some(i) = c.req.as_mut() {
                                        i.route = inc.route.slot();
                                        i.forwarded_for = Some(inc.client_ip).filter(|ip| *ip != peer.ip());
                                    }
                                    let has_body = inc.remaining > 0 || inc.chunked.is_some();
                                    if inc.head.expect_continue && has_body && c.rbuf.is_empty() {
                                        c.wbuf.extend_from_slice(CONTINUE);
                                    }
                                    c.deadline = (self.now + self.cfg.limits.body_timeout).min(inc.total_deadline);
                                    c.phase = Phase::Body(inc);
                                    self.flush(key);
                                }
                            }
                        }
                    }
                }
                Phase::Body(inc) => {
                    let before = c.rbuf.len();
                    if let Some(dec) = &mut inc.chunked {
                        match dec.feed(&c.rbuf, &mut inc.body) {
                            Ok(n) => {
                                c.rbuf.drain(..n);
                            }
                            Err(e) => {
                                c.rbuf.clear();
                                let e = if e.kind == Kind::PayloadTooLarge {
                                    too_large(None, inc.limit, inc.route.body_kind())
                                } else {
                                    e
                                };
                                self.respond(key, Response::error(&e).closing());
                                return;
                            }
                        }
                    } else {
                        let take = (inc.remaining as usize).min(c.rbuf.len());
                        inc.body.extend_from_slice(&c.rbuf[..take]);
                        c.rbuf.drain(..take);
                        inc.remaining -= take as u64;
                    }
                    if c.rbuf.len() != before {
                        // Silence is timed from the last byte, the whole body from its start: a body
                        // trickling a byte at a time still ends at BODY_TOTAL_TIMEOUT_MS.
                        c.deadline = (self.now + self.cfg.limits.body_timeout).min(inc.total_deadline);
                    }
                    if inc.chunked.is_some()
                        && !inc.budget.grow(inc.body.len(), self.cfg.limits.max_uploads_in_flight_bytes)
                    {
                        c.rbuf.clear();
                        self.respond(key, Response::error(&uploads_busy()).closing());
                        return;
                    }
                    let complete = match &inc.chunked {
                        Some(d) => d.is_done(),
                        None => inc.remaining == 0,
                    };
                    if !complete {
                        if c.read_paused {
                            // The cap stopped reading before the body was in: read more now.
                            c.read_paused = false;
                            self.client_readable(key, true);
                        }
                        return;
                    }
                    let Phase::Body(inc) = std::mem::replace(&mut c.phase, Phase::Waiting) else { return };
                    let started = c.req.as_ref().map_or(self.now, |r| r.started);
                    if self.drain_started.is_some_and(|d| started >= d) {
                        // Begun after the drain began: answered, never dropped, and the connection ends.
                        // A request begun before it is served as usual.
                        let e = ApiError::new(Kind::ShuttingDown, "the gateway is stopping; retry on another instance");
                        self.respond(key, Response::error(&e).closing());
                        return;
                    }
                    let generation = c.generation;
                    let mut note = None;
                    let answer = self.app.dispatch(&mut self.poll, self.now, key, generation, *inc, &mut note);
                    if let Some(r) = self.clients.get_mut(key).and_then(|c| c.req.as_mut()) {
                        r.call = note;
                    }
                    match answer {
                        Some(r) => self.respond(key, r),
                        None => return,
                    }
                }
                Phase::Waiting | Phase::Streaming | Phase::Closing => return,
            }
        }
    }

    /// Decides on a head before its body is read: allowlist, route, admin, body limits.
    /// On refusal, says whether a body was left unread (then the connection must close).
    fn accept_head(
        &mut self,
        peer: SocketAddr,
        head: crate::http::request::Head,
    ) -> Result<Box<Incoming>, (ApiError, bool)> {
        let has_body = head.framing != BodyFraming::None;
        let fail = |e: ApiError| (e, has_body);
        let client_ip =
            security::client_ip(peer.ip(), head.x_forwarded_for.as_deref(), &self.cfg.security).map_err(fail)?;
        security::check_allowed(client_ip, &self.cfg.security).map_err(fail)?;
        let route = router::route(head.method, &head.path).map_err(fail)?;
        // The one authorization decision (security/authz.rs), before the body is read.
        let cred = security::authz::check_head(&route, &head, client_ip, &self.cfg.security).map_err(fail)?;
        let limit = match route.body_kind() {
            BodyKind::Multipart => self.cfg.limits.max_upload_bytes,
            BodyKind::Json | BodyKind::None => self.cfg.limits.max_call_body_bytes,
        };
        if route.body_kind() == BodyKind::Multipart {
            let ct = head.content_type.as_deref().unwrap_or("");
            if !ct.to_ascii_lowercase().starts_with("multipart/form-data") {
                return Err(fail(ApiError::new(
                    Kind::UnsupportedMediaType,
                    "this route takes multipart/form-data (curl -F)",
                )));
            }
        }
        let (remaining, chunked) = match head.framing {
            BodyFraming::None => (0, None),
            BodyFraming::Length(n) => {
                if n > limit as u64 {
                    return Err(fail(too_large(Some(n), limit, route.body_kind())));
                }
                (n, None)
            }
            BodyFraming::Chunked => (0, Some(ChunkedDecoder::new(limit))),
        };
        // Reserve at most 64 KiB up front: a declared length is a promise, not a guarantee.
        let cap = if chunked.is_some() { 0 } else { (remaining as usize).min(64 * 1024) };
        let mut budget = BodyBudget::new(self.app.shared.uploads.clone());
        if !budget.grow(remaining as usize, self.cfg.limits.max_uploads_in_flight_bytes) {
            return Err(fail(uploads_busy()));
        }
        let total_deadline = self.now + self.cfg.limits.body_total_timeout;
        Ok(Box::new(Incoming {
            head,
            route,
            client_ip,
            cred,
            body: Vec::with_capacity(cap),
            chunked,
            remaining,
            limit,
            budget,
            total_deadline,
        }))
    }

    /// Hands finished responses to their clients, if those still wait for them.
    fn deliver(&mut self, done: Vec<(usize, u64, Response)>) {
        for (key, generation, r) in done {
            let ok =
                self.clients.get(key).is_some_and(|c| c.generation == generation && matches!(c.phase, Phase::Waiting));
            if ok {
                self.respond(key, r);
                self.advance(key);
            }
        }
    }

    /// Queues a complete response, logs the request, and moves the connection on.
    fn respond(&mut self, key: usize, r: Response) {
        let shutting_down = self.shutdown_deadline.is_some();
        let now = self.now;
        let Some(c) = self.clients.get_mut(key) else { return };
        let info = c.req.take();
        let (keep_alive, minor, head_only) = match &info {
            Some(i) => (i.keep_alive, i.minor_version, i.method == Method::Head),
            None => (false, 1, false),
        };
        // A peer that half-closed after pipelining still gets an answer to every complete request it sent;
        // the connection closes after the last one.
        let keep = keep_alive && !r.close && !shutting_down && (!c.peer_closed || !c.rbuf.is_empty());
        response::write(&mut c.wbuf, &r, keep, minor, head_only);
        if let Some(i) = &info {
            // The turn's clock is coarse for quick requests; the log line reads a fresh one.
            let us = Instant::now().saturating_duration_since(i.started).as_micros();
            if let Some(s) = self.app.shared.stats.get(self.app.id) {
                s.counters.request(i.route, r.status, i.route == CALL_SLOT, us as u64, r.error);
                if i.route == CALL_SLOT {
                    let names = i.call.as_ref().map(|n| (&*n.platform, &*n.function));
                    s.counters.calls.record(names, us as u64, r.error, self.cfg.metrics_tracked_names);
                }
            }
            if log::request_wanted(r.status, us) {
                log_request(c.peer, i, &r, us);
            }
        }
        if keep {
            c.phase = Phase::Head;
            c.deadline = now + self.cfg.limits.keepalive_timeout;
        } else {
            c.phase = Phase::Closing;
        }
        self.flush(key);
    }

    /// Writes as much as the socket takes; closes when a closing connection is flushed.
    fn flush(&mut self, key: usize) {
        let Some(c) = self.clients.get_mut(key) else { return };
        let mut broken = false;
        while c.wpos < c.wbuf.len() {
            match c.sock.write(&c.wbuf[c.wpos..]) {
                Ok(0) => {
                    broken = true;
                    break;
                }
                Ok(n) => c.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if c.wpos == c.wbuf.len() {
            c.wbuf.clear();
            c.wpos = 0;
            if c.wbuf.capacity() > KEEP_CAPACITY {
                c.wbuf = Vec::new();
            }
            if matches!(c.phase, Phase::Head) && c.rbuf.is_empty() && c.rbuf.capacity() > KEEP_CAPACITY {
                c.rbuf = Vec::new();
            }
        }
        let closing_done = matches!(c.phase, Phase::Closing) && c.wbuf.is_empty();
        if broken || closing_done {
            if matches!(c.phase, Phase::Waiting | Phase::Streaming) {
                let g = c.generation;
                self.app.client_gone(key, g);
            }
            if closing_done && !broken {
                // Let the peer read everything before the FIN; the kernel sends queued bytes first.
                let _ = c.sock.shutdown(std::net::Shutdown::Write);
            }
            self.close(key);
            return;
        }
        // A paused reader resumes once the connection is back between requests.
        if matches!(c.phase, Phase::Head) && c.read_paused {
            c.read_paused = false;
            self.client_readable(key, true);
        }
    }

    fn stream_chunk(&mut self, key: usize, generation: u64, data: Vec<u8>, last: bool) {
        let Some(c) = self.clients.get_mut(key) else { return };
        if c.generation != generation {
            return;
        }
        match c.phase {
            Phase::Waiting => {
                response::write_stream_head(&mut c.wbuf, 200, "application/x-ndjson");
                c.phase = Phase::Streaming;
            }
            Phase::Streaming => {}
            _ => return,
        }
        if !data.is_empty() {
            response::write_chunk(&mut c.wbuf, &data);
        }
        if last {
            response::write_chunk(&mut c.wbuf, b"");
            let keep = c.req.as_ref().is_some_and(|r| r.keep_alive) && self.shutdown_deadline.is_none();
            if let Some(i) = c.req.take() {
                if let Some(s) = self.app.shared.stats.get(self.app.id) {
                    s.counters.request(i.route, 200, false, 0, None);
                }
                let us = self.now.saturating_duration_since(i.started).as_micros();
                if log::request_wanted(200, us) {
                    log::info(
                        "request",
                        &[
                            ("peer", &c.peer),
                            ("method", &i.method.as_str()),
                            ("path", &i.path),
                            ("status", &200),
                            ("streamed", &true),
                            ("duration_us", &us),
                        ],
                    );
                }
            }
            c.phase = if keep { Phase::Head } else { Phase::Closing };
            c.deadline = self.now + self.cfg.limits.keepalive_timeout;
        }
        self.flush(key);
        if last {
            self.advance(key);
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut c) = self.clients.remove(key) {
            let _ = self.poll.registry().deregister(&mut c.sock);
            self.count_clients(-1);
            self.app.shared.release_address(c.peer.ip());
        }
    }

    /// Deadlines: slow heads and bodies get 408, idle keep-alive connections are closed. Then the app's
    /// own maintenance (pool timeouts, call timeouts, waiting queues).
    fn janitor(&mut self) {
        let now = self.now;
        for key in self.clients.keys() {
            let Some(c) = self.clients.get(key) else { continue };
            if now < c.deadline {
                continue;
            }
            match &c.phase {
                Phase::Head if c.rbuf.is_empty() && c.wbuf.is_empty() => {
                    if self.shutdown_deadline.is_some() {
                        // A request that arrived since the last turn is answered rather than cut off.
                        self.client_readable(key, true);
                        if self.clients.get(key).is_none_or(|c| c.busy()) {
                            continue;
                        }
                    }
                    self.close(key)
                }
                Phase::Head => {
                    let e = ApiError::new(Kind::RequestTimeout, "request head not received in time")
                        .with_cause("head_timeout");
                    if let Some(c) = self.clients.get_mut(key) {
                        c.rbuf.clear();
                        if c.req.is_none() {
                            c.req = Some(ReqInfo {
                                method: Method::Other,
                                path: String::new(),
                                route: router::UNMATCHED,
                                started: now,
                                minor_version: 1,
                                keep_alive: false,
                                call: None,
                                forwarded_for: None,
                            });
                        }
                    }
                    self.respond(key, Response::error(&e).closing());
                }
                Phase::Body(_) => {
                    let e = ApiError::new(Kind::RequestTimeout, "request body not received in time")
                        .with_cause("body_timeout");
                    if let Some(c) = self.clients.get_mut(key) {
                        c.phase = Phase::Waiting;
                    }
                    self.respond(key, Response::error(&e).closing());
                }
                Phase::Closing => self.close(key),
                Phase::Waiting | Phase::Streaming => {}
            }
        }
        self.app.catch_up(&mut self.poll);
        let done = self.app.janitor(&mut self.poll, now);
        self.deliver(done);
        self.balance();
        if let Some(s) = self.app.shared.stats.get(self.app.id) {
            s.publish(&self.app.calls.stats());
        }
        if let Some(s) = self.app.shared.stats.get(self.app.id) {
            s.publish_pools(self.app.calls.pool_snapshots(now));
            s.publish_served(self.app.calls.served());
        }
    }
}

impl Loop {
    /// Publishes this loop's load, then packs or spreads its idle client connections as
    /// [`super::balance::decide`] says. Only connections between requests move (nothing buffered,
    /// nothing in flight); the receiving loop registers the socket, and a request that arrived
    /// meanwhile shows as readable there.
    fn balance(&mut self) {
        use super::balance::{Move, decide};
        let me = self.app.id;
        let shared = self.app.shared.clone();
        let Some(stats) = shared.stats.get(me) else { return };
        if let Some(load) = self.meter.sample(self.now) {
            stats.load.store(load, Ordering::Relaxed);
        }
        if !self.cfg.pack_loops || self.shutdown_deadline.is_some() || !self.meter.may_move() {
            return;
        }
        let (loads, clients) = shared.loads();
        let Move::Give { to, count } = decide(me, &loads, &clients) else { return };
        let Some(target) = shared.loops.get(to) else { return };
        let idle: Vec<usize> = self
            .clients
            .keys()
            .into_iter()
            .filter(|&k| {
                self.clients.get(k).is_some_and(|c| {
                    matches!(c.phase, Phase::Head)
                        && !c.busy()
                        && c.wbuf.is_empty()
                        && c.req.is_none()
                        && !c.peer_closed
                        && !c.read_paused
                })
            })
            .take(count)
            .collect();
        if idle.is_empty() {
            return;
        }
        for key in idle {
            let Some(mut c) = self.clients.remove(key) else { continue };
            let _ = self.poll.registry().deregister(&mut c.sock);
            stats.clients.fetch_sub(1, Ordering::Relaxed);
            if let Some(t) = shared.stats.get(to) {
                t.clients.fetch_add(1, Ordering::Relaxed);
            }
            stats.moves.fetch_add(1, Ordering::Relaxed);
            let peer = c.peer;
            if !target.send(Message::Adopt(c.sock, peer)) {
                // The other loop is gone (shutting down): the socket closed with the message.
                if let Some(t) = shared.stats.get(to) {
                    t.clients.fetch_sub(1, Ordering::Relaxed);
                }
                shared.release_address(peer.ip());
            }
        }
        self.meter.moved();
    }
}

/// 413 for a body over its route's limit, naming the setting that sets it.
fn too_large(declared: Option<u64>, limit: usize, kind: BodyKind) -> ApiError {
    let setting = match kind {
        BodyKind::Multipart => "MAX_UPLOAD_BYTES",
        BodyKind::Json | BodyKind::None => "MAX_CALL_BODY_BYTES",
    };
    let size = declared.map(|n| format!("of {n} bytes ")).unwrap_or_default();
    ApiError::new(
        Kind::PayloadTooLarge,
        format!("request body {size}exceeds the limit of {limit} bytes set by {setting}"),
    )
    .with_cause("max_body_bytes")
}

/// 503 for a body that would take request-body memory past `MAX_UPLOADS_IN_FLIGHT_BYTES`.
fn uploads_busy() -> ApiError {
    ApiError::new(
        Kind::UploadsBusy,
        "too many request bodies are being received at once (MAX_UPLOADS_IN_FLIGHT_BYTES); retry shortly",
    )
}

/// Writes a request line. For a `/call` it names the platform, database and function, read again from
/// the body only now: most answers get no line, so the hot path copies nothing for it.
/// The client connections a new peer may find open: all of `MAX_CLIENT_CONNECTIONS` for a peer in
/// `ALLOWED_ADMIN_IPS` (the peer's own address: a forwarded one cannot be known before the request), that
/// less `ADMIN_RESERVED_CONNECTIONS` (at most half of it) for everyone else, so a flood of connections
/// leaves the operator a way in to `/health` and the admin routes.
fn client_cap(cfg: &crate::config::Config, peer: std::net::IpAddr) -> usize {
    let max = cfg.limits.max_client_connections;
    if crate::security::cidr::any_contains(&cfg.security.admin_ips, peer) {
        max
    } else {
        max - cfg.security.admin_reserved_connections.min(max / 2)
    }
}

fn log_request(peer: SocketAddr, i: &ReqInfo, r: &Response, us: u128) {
    let (method, bytes) = (i.method.as_str(), r.body.len());
    let mut fields: Vec<(&str, &dyn std::fmt::Display)> = vec![
        ("peer", &peer),
        ("method", &method),
        ("path", &i.path),
        ("status", &r.status),
        ("bytes", &bytes),
        ("duration_us", &us),
    ];
    if let Some(ip) = &i.forwarded_for {
        fields.push(("client", ip));
    }
    let code = r.error.map(|k| k.code()).unwrap_or("");
    if r.status >= 400 {
        // Refusals repeat as fast as a client sends them: summarised per peer and code.
        match log::refusal(peer.ip(), if code.is_empty() { "http_error" } else { code }) {
            log::Refusal::Write => {}
            log::Refusal::WriteAfter(n) => log::warn(
                "refusals left out of the log",
                &[("peer", &peer.ip()), ("error", &code), ("status", &r.status), ("suppressed", &n)],
            ),
            log::Refusal::Suppress => return,
        }
    }
    if r.error.is_some() {
        fields.push(("error", &code));
    }
    let call = i
        .call
        .as_ref()
        .map(|n| n.body.as_slice())
        .and_then(|b| CallRequest::from_body(b, crate::json::DEFAULT_MAX_DEPTH))
        .and_then(Result::ok);
    if let Some(call) = &call {
        fields.push(("platform", &call.platform));
        fields.push(("database", &call.database));
        fields.push(("function", &call.function));
    }
    let (server, replica) = match r.served_by.as_deref() {
        Some(s) => s.split_once('~').unwrap_or((s, "")),
        None => ("", ""),
    };
    if !server.is_empty() {
        fields.push(("server", &server));
    }
    if !replica.is_empty() {
        fields.push(("replica", &replica));
    }
    log::info("request", &fields);
}
