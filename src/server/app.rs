//! One loop's request handlers: routes a complete request to its handler. Quick handlers answer at
//! once; `/call` goes to this loop's call engine; deploys go to the shared worker threads and answer
//! through this loop's [`Notifier`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use mio::Poll;

use super::client::Incoming;
use super::notify::{Message, Notifier};
use super::shared::{Shared, Stale, send_catalog_state};
use crate::call::engine::{CallEngine, Done};
use crate::call::owners::Admission;
use crate::call::request::CallRequest;
use crate::call::session::{Caller, Waiter};
use crate::catalog::lookup::Resolved;
use crate::deploy::service::{self, DeployCtx};
use crate::deploy::v2;
use crate::error::{ApiError, Kind};
use crate::http::response::Response;
use crate::http::router::Route;
use crate::json::{self, ObjectWriter, Value};
use crate::security::keys::Credential;

/// Everything one loop's handlers own: its `/call` engine and the calls waiting for the catalog.
pub struct App {
    /// This loop's index.
    pub(crate) id: usize,
    /// This loop, for answers that come back from other threads.
    pub(crate) notifier: Notifier,
    pub(crate) shared: Arc<Shared>,
    pub(crate) calls: CallEngine,
    /// Deploy jobs handed to workers and not yet answered.
    pub(crate) deploys_in_flight: usize,
    /// Calls waiting for the catalog to say who owns their database, by database.
    pending: HashMap<String, Vec<PendingCall>>,
    /// Their number, bounded by `POOL_MAX_WAITING`.
    pending_count: usize,
    /// The last invalidation epoch this loop acted on.
    seen_epoch: u64,
    /// Calls handed to another loop and not answered yet: (client, generation) → that loop.
    forwarded: HashMap<(usize, u64), usize>,
    /// The health probe's count of PostgreSQL's returns that this loop acted on.
    recoveries_seen: u64,
}

/// A call waiting for the catalog to say who owns its database.
struct PendingCall {
    client: usize,
    generation: u64,
    req: CallRequest,
    cred: Credential,
}

impl App {
    pub fn new(id: usize, shared: Arc<Shared>, notifier: Notifier, token_base: usize) -> App {
        let cfg = shared.cfg.clone();
        let calls = CallEngine::new(
            id,
            cfg.clone(),
            cfg.db.connect_params(),
            shared.budget.clone(),
            shared.canceller.clone(),
            token_base,
            shared.loops.len(),
            shared.servers.clone(),
        );
        App {
            id,
            notifier,
            seen_epoch: shared.invalidations.epoch(),
            shared,
            calls,
            deploys_in_flight: 0,
            pending: HashMap::new(),
            pending_count: 0,
            forwarded: HashMap::new(),
            recoveries_seen: 0,
        }
    }

    /// Answers for this loop's clients; the others go back to the loops that handed their calls over.
    pub fn local(&mut self, done: Done) -> Vec<(usize, u64, Response)> {
        let mut mine = Vec::with_capacity(done.len());
        for (c, response) in done {
            if c.loop_id == self.id {
                mine.push((c.client, c.generation, response));
            } else if let Some(n) = self.shared.loops.get(c.loop_id) {
                n.send(Message::Answer { client: c.client, generation: c.generation, response });
            }
        }
        mine
    }

    /// A call another loop handed over.
    pub fn take_call(
        &mut self,
        poll: &mut Poll,
        waiter: Waiter,
        role: &str,
        now: Instant,
    ) -> Vec<(usize, u64, Response)> {
        let done = self.calls.submit_forwarded(poll, waiter, role, now);
        self.local(done)
    }

    /// The answer to a call this loop handed over came back.
    pub fn call_answered(&mut self, client: usize, generation: u64) {
        self.forwarded.remove(&(client, generation));
    }

    /// Drops cached statements of databases deploys changed since this loop last looked.
    pub fn catch_up(&mut self, poll: &mut Poll) {
        let inv = &self.shared.invalidations;
        if inv.epoch() == self.seen_epoch {
            return;
        }
        let (stale, epoch) = inv.since(self.seen_epoch);
        self.seen_epoch = epoch;
        match stale {
            Stale::Databases(dbs) => {
                for db in dbs {
                    self.calls.invalidate(poll, &db);
                }
            }
            Stale::Everything => self.calls.invalidate_all(poll),
        }
    }

    /// Passes this loop's requests for room and calls it hands over to the others, and tells loops
    /// their room is free. Returns answers for calls that could not be handed over.
    pub fn send_to_loops(&mut self) -> Vec<(usize, u64, Response)> {
        let mut failed = Vec::new();
        let forwards = self.calls.take_forwards();
        for (to, w, role) in forwards {
            let c = w.caller;
            let sent = self.shared.loops.get(to).is_some_and(|n| n.send(Message::Call { waiter: Box::new(w), role }));
            if sent {
                // Only this loop's own clients: a call passed on again belongs to another loop's.
                if c.loop_id == self.id {
                    self.forwarded.insert((c.client, c.generation), to);
                }
            } else {
                let e = ApiError::new(Kind::PoolExhausted, "no connection became free for this call; retry shortly");
                failed.push((c, Response::error(&e)));
            }
        }
        for ask in self.calls.take_room_asks() {
            let from = self.id;
            if let Some(server) = ask.server {
                // Under one server's cap: any loop may hold an idle connection to it.
                self.shared.loops.send_others(from, || Message::RoomWanted { from, server: Some(server.clone()) });
                continue;
            }
            // Under the total cap, one slot is wanted: asked of the loop holding the most, which owes
            // it when it has nothing idle (so several loops do not all give one up).
            if let Some(n) = self.shared.fullest_besides(from).and_then(|l| self.shared.loops.get(l)) {
                n.send(Message::RoomWanted { from, server: None });
            }
        }
        for (l, slot) in self.calls.take_room_freed() {
            // Dropped (given back) if that loop is gone.
            if let Some(n) = self.shared.loops.get(l) {
                n.send(Message::RoomFreed(slot));
            }
        }
        self.local(failed)
    }

    /// An event on a backend socket; returns finished client responses.
    pub fn backend_event(
        &mut self,
        poll: &mut Poll,
        key: usize,
        now: Instant,
        readable: bool,
        hup: bool,
    ) -> Vec<(usize, u64, Response)> {
        let done = self.calls.backend_event(poll, key, now, readable, hup);
        self.local(done)
    }

    pub fn release_parked(&mut self) {
        self.calls.release_parked();
    }

    /// Whether work is in flight that shutdown should wait for.
    pub fn busy(&self) -> bool {
        self.calls.busy() || self.deploys_in_flight > 0
    }

    pub fn shutdown(&mut self, poll: &mut Poll) {
        self.calls.shutdown(poll);
    }

    /// A v2 migrate: answered at the end, streamed as NDJSON lines, or answered 202 at once (`async`).
    fn submit_v2_migrate(
        &mut self,
        key: usize,
        generation: u64,
        cred: Credential,
        body: Value,
        all: bool,
        ndjson: bool,
    ) -> Option<Response> {
        let ctx = self.shared.deploy.with_credential(cred);
        let notifier = self.notifier.clone();
        let shared = self.shared.clone();
        let is_async = match body.get("async") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) if s == "true" || s == "1" => true,
            Some(Value::String(s)) if s == "false" || s == "0" => false,
            Some(v) => {
                return Some(Response::error(&ApiError::new(
                    Kind::InvalidRequest,
                    format!("'async' must be a boolean, got {}", v.type_name()),
                )));
            }
        };
        let kind = if all { "v2_migrate_all" } else { "v2_migrate" };
        let task = Box::new(move || {
            let started = Instant::now();
            let record = |status: u16| {
                ctx.metrics.run_finished(kind, outcome(status), started.elapsed().as_micros() as u64);
            };
            let answered = AtomicBool::new(false);
            let streaming = AtomicBool::new(false);
            let complete = |response: Response, invalidate: Vec<String>| {
                answered.store(true, Ordering::Relaxed);
                shared.invalidations.publish(&invalidate);
                notifier.send(Message::Complete { client: key, generation, response });
            };
            let run = std::panic::AssertUnwindSafe(|| {
                let plan = match v2::plan_migrate(&ctx, &body, all) {
                    Ok(p) => p,
                    Err(e) => {
                        let r = Response::error(&e);
                        record(r.status);
                        return complete(r, Vec::new());
                    }
                };
                if is_async {
                    let mut answered = false;
                    let (resp, changed) = v2::run_migrate(
                        &plan,
                        &mut |run_id| {
                            let mut b = Vec::new();
                            let mut o = crate::json::ObjectWriter::new(&mut b);
                            o.str("status", "running");
                            o.str("run_id", run_id);
                            o.u64("total", plan.databases.len() as u64);
                            o.str("poll", &format!("/runs/{run_id}"));
                            o.finish();
                            complete(Response::json(202, b), Vec::new());
                            answered = true;
                        },
                        v2::Progress::None,
                    );
                    record(resp.status);
                    if answered {
                        shared.invalidations.publish(&changed);
                    } else {
                        complete(resp, changed);
                    }
                } else if ndjson {
                    let chunk = |data: Vec<u8>| {
                        streaming.store(true, Ordering::Relaxed);
                        notifier.send(Message::Chunk { client: key, generation, data, last: false });
                    };
                    let (resp, changed) = v2::run_migrate(&plan, &mut |_| {}, v2::Progress::Lines(&chunk));
                    record(resp.status);
                    if streaming.load(Ordering::Relaxed) {
                        shared.invalidations.publish(&changed);
                        let mut summary = resp.body;
                        summary.push(b'\n');
                        notifier.send(Message::Chunk { client: key, generation, data: summary, last: true });
                    } else {
                        // Nothing was streamed (no databases, or the run could not start): a plain
                        // answer keeps its real status.
                        complete(resp, changed);
                    }
                } else {
                    let (resp, changed) = v2::run_migrate(&plan, &mut |_| {}, v2::Progress::None);
                    record(resp.status);
                    complete(resp, changed);
                }
            });
            if std::panic::catch_unwind(run).is_err() {
                // A bug in a deploy must still end its client's request.
                if streaming.load(Ordering::Relaxed) {
                    let mut line = internal_panic().body();
                    line.push(b'\n');
                    notifier.send(Message::Chunk { client: key, generation, data: line, last: true });
                } else if !answered.load(Ordering::Relaxed) {
                    notifier.send(Message::Complete {
                        client: key,
                        generation,
                        response: Response::error(&internal_panic()),
                    });
                }
            }
        });
        self.queue(task)
    }

    /// Hands a task to the deploy workers; a full queue is refused at once (503, retryable).
    fn queue(&mut self, task: crate::deploy::workers::Task) -> Option<Response> {
        let submitted = self.shared.workers.lock().unwrap_or_else(|p| p.into_inner()).try_submit(task);
        match submitted {
            Ok(()) => {
                self.deploys_in_flight += 1;
                None
            }
            Err(_) => Some(Response::error(&ApiError::new(
                Kind::DeployQueueFull,
                "too many deploys are queued; retry shortly",
            ))),
        }
    }

    /// Runs `op` on a deploy worker; its response comes back through the notifier. A full queue is
    /// refused at once.
    fn submit_deploy(
        &mut self,
        key: usize,
        generation: u64,
        cred: Credential,
        op: impl FnOnce(&DeployCtx) -> (Response, Vec<String>) + Send + 'static,
    ) -> Option<Response> {
        self.submit_counted(key, generation, cred, None, op)
    }

    /// As [`App::submit_deploy`]; a `kind` counts the request as a deploy of that kind in `/metrics`.
    fn submit_counted(
        &mut self,
        key: usize,
        generation: u64,
        cred: Credential,
        kind: Option<&'static str>,
        op: impl FnOnce(&DeployCtx) -> (Response, Vec<String>) + Send + 'static,
    ) -> Option<Response> {
        let ctx = self.shared.deploy.with_credential(cred);
        let notifier = self.notifier.clone();
        let shared = self.shared.clone();
        let task = Box::new(move || {
            let started = Instant::now();
            // A bug in a deploy must still answer its client, not leave it waiting for ever.
            let (response, invalidate) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&ctx)))
                .unwrap_or_else(|_| (Response::error(&internal_panic()), Vec::new()));
            if let Some(kind) = kind {
                ctx.metrics.run_finished(kind, outcome(response.status), started.elapsed().as_micros() as u64);
            }
            if response.status < 300 {
                // Databases this deploy created or changed, keys it set: tell /call right away.
                if let Ok(mut cat) = ctx.catalog() {
                    send_catalog_state(&mut cat, &shared.loops);
                    cat.keep();
                }
            }
            // Recorded before the answer goes out: see `Invalidations`.
            shared.invalidations.publish(&invalidate);
            notifier.send(Message::Complete { client: key, generation, response });
        });
        self.queue(task)
    }

    /// A call that passed parsing: runs it, refuses it, or parks it until the catalog says who owns its
    /// database.
    fn call(
        &mut self,
        poll: &mut Poll,
        key: usize,
        generation: u64,
        req: CallRequest,
        cred: Credential,
        now: Instant,
    ) -> Option<Response> {
        self.catch_up(poll);
        match self.calls.admit(&req, &cred, now) {
            Admission::Go => {
                let caller = Caller { loop_id: self.id, client: key, generation };
                self.calls.submit(poll, caller, req, now)
            }
            Admission::Refused(e) => Some(Response::error(&e)),
            Admission::AskCatalog => {
                if self.pending_count >= self.calls.max_waiting() {
                    return Some(Response::error(&ApiError::new(
                        Kind::PoolExhausted,
                        "too many calls are waiting for the catalog; retry shortly",
                    )));
                }
                let first = !self.pending.contains_key(&req.database);
                if first && !self.shared.lookups.ask(&req.database) {
                    return Some(Response::error(&ApiError::new(Kind::Internal, "the catalog lookup thread is gone")));
                }
                self.pending_count += 1;
                self.pending.entry(req.database.clone()).or_default().push(PendingCall {
                    client: key,
                    generation,
                    req,
                    cred,
                });
                None
            }
        }
    }

    /// The catalog answered about a database: the calls that waited on it run or are refused.
    pub fn resolved(&mut self, poll: &mut Poll, r: &Resolved, now: Instant) -> Vec<(usize, u64, Response)> {
        let waiting = self.pending.remove(&r.database).unwrap_or_default();
        self.pending_count = self.pending_count.saturating_sub(waiting.len());
        match &r.owner {
            Ok(Some((owner, keys))) => {
                self.calls.set_owners(vec![owner.clone()]);
                self.calls.set_keys(vec![(owner.platform.clone(), keys.clone())], false);
            }
            Ok(None) => self.calls.set_unknown(&r.database, now),
            Err(e) => {
                let e = e.clone().with_kind(Kind::ConnectionFailed);
                return waiting.into_iter().map(|w| (w.client, w.generation, Response::error(&e))).collect();
            }
        }
        let mut out = Vec::new();
        for w in waiting {
            let answer = match self.calls.admit(&w.req, &w.cred, now) {
                Admission::Go => {
                    let caller = Caller { loop_id: self.id, client: w.client, generation: w.generation };
                    self.calls.submit(poll, caller, w.req, now)
                }
                Admission::Refused(e) => Some(Response::error(&e)),
                // Known neither as owned nor as unknown: only if the answer was lost; refuse, never guess.
                Admission::AskCatalog => Some(Response::error(&ApiError::new(
                    Kind::ConnectionFailed,
                    "the catalog did not say who owns this database; retry",
                ))),
            };
            if let Some(a) = answer {
                out.push((w.client, w.generation, a));
            }
        }
        out
    }

    /// Drops cached statements of a database after a deploy changed it.
    pub fn invalidate(&mut self, poll: &mut Poll, database: &str) {
        self.calls.invalidate(poll, database);
    }

    /// The client of request (`key`, `generation`) went away: cancel what runs for it.
    pub fn client_gone(&mut self, key: usize, generation: u64) {
        // A call still waiting for the catalog must not start once its answer comes.
        let mut removed = 0;
        for list in self.pending.values_mut() {
            let before = list.len();
            list.retain(|w| !(w.client == key && w.generation == generation));
            removed += before - list.len();
        }
        self.pending_count = self.pending_count.saturating_sub(removed);
        let caller = Caller { loop_id: self.id, client: key, generation };
        self.calls.client_gone(caller);
        if let Some(to) = self.forwarded.remove(&(key, generation))
            && let Some(n) = self.shared.loops.get(to)
        {
            n.send(Message::CallGone(caller));
        }
    }

    /// Timeouts and pool maintenance; returns responses that became ready (e.g. 503 after a wait).
    /// End of a loop turn: backend writes queued during it go out.
    pub fn flush_backends(&mut self, poll: &mut Poll, now: Instant) -> Vec<(usize, u64, Response)> {
        let done = self.calls.flush_deferred(poll, now);
        self.local(done)
    }

    pub fn janitor(&mut self, poll: &mut Poll, now: Instant) -> Vec<(usize, u64, Response)> {
        if self.id == 0 {
            crate::log::summarise_refusals();
        }
        let recoveries = self.shared.health.recoveries.load(Ordering::Acquire);
        if recoveries != self.recoveries_seen {
            self.recoveries_seen = recoveries;
            self.calls.end_backoffs(poll, now);
        }
        let done = self.calls.janitor(poll, now);
        self.local(done)
    }
}

/// A deploy's outcome label from its HTTP status.
fn outcome(status: u16) -> &'static str {
    if status < 300 { "success" } else { "failed" }
}

fn internal_panic() -> ApiError {
    ApiError::new(Kind::Internal, "the deploy stopped on an internal error; nothing after it was kept")
}

/// Parses a JSON request body: malformed → `invalid_json`, not an object → `invalid_request`.
pub fn json_object(body: &[u8], max_depth: usize) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::new(Kind::InvalidJson, "request body is empty; expected a JSON object"));
    }
    let v = json::parse_with_depth(body, max_depth)
        .map_err(|e| ApiError::new(Kind::InvalidJson, format!("request body is not valid JSON: {e}")))?;
    if !matches!(v, Value::Object(_)) {
        return Err(ApiError::new(
            Kind::InvalidRequest,
            format!("request body must be a JSON object, got {}", v.type_name()),
        ));
    }
    Ok(v)
}

impl App {
    /// Runs the handler of a complete request. `None` means the answer comes later.
    pub fn dispatch(
        &mut self,
        poll: &mut Poll,
        now: Instant,
        key: usize,
        generation: u64,
        inc: Incoming,
        note: &mut Option<super::client::CallNote>,
    ) -> Option<Response> {
        let cfg = self.shared.cfg.clone();
        // Judged from the head by the authorization table (security/authz.rs).
        let cred = inc.cred.clone();
        let depth = cfg.limits.max_json_depth;
        let result = match &inc.route {
            Route::Health => Ok(self.health(now)),
            Route::Metrics => {
                self.publish_own(now);
                Ok(super::status::metrics(&self.shared, now))
            }
            Route::Status => Ok(super::status::page()),
            Route::StatusData => {
                self.publish_own(now);
                let live = super::status::live(&self.shared, now);
                return self.submit_deploy(key, generation, cred, move |ctx| {
                    let (mut r, changed) = crate::deploy::overview::status_data(ctx, &live);
                    r.header = Some(("Cache-Control", "no-store"));
                    (r, changed)
                });
            }
            Route::Call => match CallRequest::from_body(&inc.body, depth)
                .unwrap_or_else(|| json_object(&inc.body, depth).and_then(CallRequest::from_json))
                .and_then(|mut r| {
                    if let Some(c) = inc.head.consistency.as_deref() {
                        r.primary |= crate::call::request::consistency_primary(c)?;
                    }
                    Ok(r)
                }) {
                Ok(req) => {
                    *note = Some(super::client::CallNote {
                        platform: req.platform.clone(),
                        function: req.function.clone(),
                        body: inc.body,
                    });
                    return self.call(poll, key, generation, req, cred, now);
                }
                Err(e) => Err(e),
            },
            Route::Register | Route::Migrate => {
                let ct = inc.head.content_type.clone().unwrap_or_default();
                let body = inc.body;
                let register = inc.route == Route::Register;
                let kind = inc.route.name();
                return self.submit_counted(key, generation, cred, Some(kind), move |ctx| {
                    if register { service::register(ctx, &ct, &body) } else { service::migrate(ctx, &ct, &body) }
                });
            }
            Route::AdminDatabases => {
                let platform = inc.head.query_param("platform");
                return self.submit_deploy(key, generation, cred, move |ctx| service::admin_databases(ctx, platform));
            }
            Route::AdminCreateTenant => match json_object(&inc.body, depth) {
                Ok(v) => {
                    return self.submit_deploy(key, generation, cred, move |ctx| service::create_tenant(ctx, &v));
                }
                Err(e) => Err(e),
            },
            Route::PlatformRegister => match json_object(&inc.body, depth) {
                Ok(v) => {
                    return self.submit_deploy(key, generation, cred, move |ctx| v2::register_platform(ctx, &v));
                }
                Err(e) => Err(e),
            },
            Route::AdminPlatformKey(p) => {
                let body =
                    if inc.body.is_empty() { Ok(Value::Object(Vec::new())) } else { json_object(&inc.body, depth) };
                match body {
                    Ok(v) => {
                        let p = p.clone();
                        return self.submit_deploy(key, generation, cred, move |ctx| v2::rotate_key(ctx, &p, &v));
                    }
                    Err(e) => Err(e),
                }
            }
            Route::AdminIsolate => {
                return self.submit_deploy(key, generation, cred, crate::deploy::isolate::isolate_route);
            }
            Route::AdminServers => return self.submit_deploy(key, generation, cred, crate::deploy::servers::list),
            Route::AdminServerAdd => match json_object(&inc.body, depth) {
                Ok(v) => {
                    return self.submit_deploy(key, generation, cred, move |ctx| crate::deploy::servers::add(ctx, &v));
                }
                Err(e) => Err(e),
            },
            Route::AdminServerDrain(n) | Route::AdminServerActivate(n) => {
                let (n, state) = (
                    n.clone(),
                    match inc.route {
                        Route::AdminServerDrain(_) => crate::servers::ServerState::Draining,
                        _ => crate::servers::ServerState::Active,
                    },
                );
                return self.submit_deploy(key, generation, cred, move |ctx| {
                    crate::deploy::servers::set_state(ctx, &n, state)
                });
            }
            Route::AdminServerDelete(n) => {
                let n = n.clone();
                return self.submit_deploy(key, generation, cred, move |ctx| crate::deploy::servers::remove(ctx, &n));
            }
            Route::PlatformSchemaUpload(p) => {
                let (p, ct, body) = (p.clone(), inc.head.content_type.clone().unwrap_or_default(), inc.body);
                let kind = Some(inc.route.name());
                return self
                    .submit_counted(key, generation, cred, kind, move |ctx| v2::upload_schema(ctx, &p, &ct, &body));
            }
            Route::PlatformSchemas(p) => {
                let p = p.clone();
                return self.submit_deploy(key, generation, cred, move |ctx| v2::list_schemas(ctx, &p));
            }
            Route::PlatformDatabases(p) => {
                let (p, schema) = (p.clone(), inc.head.query_param("schema"));
                return self.submit_deploy(key, generation, cred, move |ctx| v2::list_databases(ctx, &p, schema));
            }
            Route::Platforms => return self.submit_deploy(key, generation, cred, v2::list_platforms),
            Route::Run(id) => {
                let id = id.clone();
                return self.submit_deploy(key, generation, cred, move |ctx| v2::get_run(ctx, &id));
            }
            Route::DatabaseCreate => match json_object(&inc.body, depth) {
                Ok(v) => {
                    let kind = Some(inc.route.name());
                    return self.submit_counted(key, generation, cred, kind, move |ctx| v2::create_database(ctx, &v));
                }
                Err(e) => Err(e),
            },
            Route::V2Migrate | Route::V2MigrateAll => match json_object(&inc.body, depth) {
                Ok(v) => {
                    let all = inc.route == Route::V2MigrateAll;
                    let ndjson = inc.head.accept.as_deref().is_some_and(|a| a.contains("application/x-ndjson"));
                    return self.submit_v2_migrate(key, generation, cred, v, all, ndjson);
                }
                Err(e) => Err(e),
            },
        };
        Some(match result {
            Ok(r) => r,
            Err(e) => Response::error(&e),
        })
    }

    /// This loop's own counts are made current; the others' are as of their last turn.
    fn publish_own(&self, now: Instant) {
        if let Some(s) = self.shared.stats.get(self.id) {
            s.publish(&self.calls.stats());
            s.publish_pools(self.calls.pool_snapshots(now));
            s.publish_served(self.calls.served());
        }
    }

    fn health(&self, now: Instant) -> Response {
        let connected = self.shared.health.ok.load(Ordering::Relaxed);
        if let Some(s) = self.shared.stats.get(self.id) {
            s.publish(&self.calls.stats());
        }
        let c = self.shared.totals();
        let mut body = Vec::with_capacity(256);
        let mut o = ObjectWriter::new(&mut body);
        o.str("status", if connected { "healthy" } else { "degraded" });
        o.str("version", crate::VERSION);
        o.u64("uptime_seconds", now.saturating_duration_since(self.shared.started).as_secs());
        o.bool("postgres_connected", connected);
        o.u64("active_pools", c.pools as u64);
        o.u64("total_connections", c.connections as u64);
        o.u64("idle_connections", c.idle as u64);
        o.u64("waiting_requests", c.waiting as u64);
        o.u64("pipelined_calls", c.pipelined);
        o.u64("event_loops", self.shared.loops.len() as u64);
        if let Some(r) = crate::deploy::upstream::login_rights() {
            // Checked at start, so a login that cannot make tenants shows here before a tenant fails.
            let mut l = o.object("login_rights");
            l.bool("createdb", r.createdb);
            l.bool("createrole", r.createrole);
            l.bool("superuser", r.superuser);
            l.bool("sufficient", r.sufficient());
        }
        {
            // Every server and replica as the health monitor last saw it.
            let mut a = o.array("servers");
            for srv in self.shared.servers.all() {
                let mut e = a.object();
                e.str("name", &srv.def.name);
                e.str("state", if srv.reachable() { srv.def.state.as_str() } else { "down" });
                e.bool("reachable", srv.reachable());
                let mut r = e.array("replicas");
                for rep in &srv.replicas {
                    let mut x = r.object();
                    x.str("address", &rep.endpoint.label());
                    x.bool("usable", rep.usable());
                    match rep.lag_ms() {
                        Some(l) => x.u64("lag_ms", l),
                        None => x.null("lag_ms"),
                    };
                }
            }
        }
        o.finish();
        Response::json(if connected { 200 } else { 503 }, body)
    }
}
