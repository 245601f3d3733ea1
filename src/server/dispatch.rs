//! Routes a complete request to its handler. Quick handlers answer at once; `/call` goes to the backend
//! pools on this loop; deploys go to worker threads and answer through the [`super::Notifier`].

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::Poll;

use super::client::Incoming;
use super::{Message, Notifier, Server};
use std::collections::HashMap;

use crate::call::engine::{Admission, CallEngine};
use crate::call::request::CallRequest;
use crate::catalog::lookup::{Lookups, Resolved};
use crate::config::Config;
use crate::deploy::service::{self, DeployCtx};
use crate::deploy::v2;
use crate::deploy::workers::Workers;
use crate::error::{ApiError, Kind};
use crate::http::response::Response;
use crate::http::router::Route;
use crate::json::{self, ObjectWriter, Value};
use crate::log;
use crate::pg::blocking::Client;
use crate::pg::params::ConnectParams;
use crate::security::keys::Credential;

/// Everything the handlers own: the `/call` engine, the PostgreSQL health probe, worker handles.
/// Lives inside the [`Server`].
pub struct App {
    pub(crate) notifier: Notifier,
    pub(crate) calls: CallEngine,
    health: HealthProbe,
    /// Deploy jobs handed to workers and not yet answered.
    pub(crate) deploys_in_flight: usize,
    workers: Workers,
    deploy: DeployCtx,
    /// Asks the catalog about databases `/call` does not know yet.
    lookups: Lookups,
    /// Calls waiting for such an answer, by database.
    pending: HashMap<String, Vec<PendingCall>>,
    /// Their number, bounded by `POOL_MAX_WAITING`.
    pending_count: usize,
}

/// A call waiting for the catalog to say who owns its database.
struct PendingCall {
    client: usize,
    generation: u64,
    req: CallRequest,
    cred: Credential,
}

/// Whether PostgreSQL answers, checked off the loop by a small thread every second.
struct HealthProbe {
    ok: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl HealthProbe {
    fn start(params: ConnectParams) -> HealthProbe {
        let ok = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (ok2, stop2) = (ok.clone(), stop.clone());
        let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
        let _ = std::thread::Builder::new().name("pg-health".into()).spawn(move || {
            let mut client: Option<Client> = None;
            let mut was = None;
            while !stop2.load(Ordering::Relaxed) {
                let good = match client.as_mut() {
                    Some(c) if !c.is_broken() => c.simple_query("SELECT 1").is_ok(),
                    _ => match Client::connect(&params) {
                        Ok(mut c) => {
                            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                            let r = c.simple_query("SELECT 1").is_ok();
                            client = Some(c);
                            r
                        }
                        Err(_) => false,
                    },
                };
                if !good {
                    client = None;
                }
                ok2.store(good, Ordering::Relaxed);
                let _ = first_tx.send(());
                if was != Some(good) {
                    if good {
                        log::info("postgres reachable", &[]);
                    } else {
                        log::warn("postgres unreachable", &[]);
                    }
                    was = Some(good);
                }
                for _ in 0..10 {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        // A gateway that just started should not report "degraded" only because the first probe has
        // not finished; wait for it briefly.
        let _ = first_rx.recv_timeout(Duration::from_secs(1));
        HealthProbe { ok, stop }
    }
}

/// Sends who owns which database and every platform's keys to the loop.
fn send_catalog_state(cat: &mut crate::catalog::Catalog, notifier: &Notifier) {
    if let Ok(list) = cat.call_owners(None) {
        notifier.send(Message::Owners(list));
    }
    if let Ok(list) = cat.platform_keys(None) {
        let mut by: HashMap<String, Vec<crate::security::keys::StoredKey>> = HashMap::new();
        for (p, k) in list {
            by.entry(p).or_default().push(k);
        }
        notifier.send(Message::Keys { keys: by.into_iter().collect(), complete: true });
    }
}

/// Once at start: marks runs of gateways that stopped mid-run as interrupted, and brings databases
/// deployed before platforms had roles under their roles. Then every 15 s: hands owners and keys to the
/// loop, so instances sharing a catalog learn each other's registrations.
fn start_catalog_sync(ctx: DeployCtx, notifier: Notifier, stop: Arc<AtomicBool>) {
    let _ = std::thread::Builder::new().name("catalog-sync".into()).spawn(move || {
        let mut marked = false;
        let mut isolated = false;
        loop {
            if !marked {
                match v2::mark_interrupted_runs(&ctx) {
                    Ok(n) => {
                        marked = true;
                        if n > 0 {
                            log::warn("runs interrupted by a stop were marked", &[("runs", &n)]);
                        }
                    }
                    Err(e) => log::debug("catalog not reachable yet", &[("error", &e)]),
                }
            }
            if !isolated {
                match crate::deploy::isolate::isolate_all(&ctx, false) {
                    Ok(r) => {
                        isolated = true;
                        for d in &r.databases {
                            match &d.result {
                                Ok(c) if c.problems.is_empty() => {
                                    log::info("database confined to its platform's role", &[("database", &d.database)])
                                }
                                Ok(c) => log::warn(
                                    "database only partly confined to its platform's role",
                                    &[("database", &d.database), ("problems", &c.problems.join("; "))],
                                ),
                                Err(e) => log::warn(
                                    "database could not be confined to its platform's role",
                                    &[("database", &d.database), ("error", &e)],
                                ),
                            }
                        }
                        for (p, e) in &r.role_problems {
                            log::warn("platform role refused", &[("platform", p), ("error", e)]);
                        }
                    }
                    Err(e) => log::debug("isolation pass postponed", &[("error", &e)]),
                }
            }
            if let Ok(mut cat) = crate::catalog::Catalog::open(&ctx.admin, &ctx.cfg.deploy.catalog_db) {
                send_catalog_state(&mut cat, &notifier);
                cat.client.close();
            }
            for _ in 0..150 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // The loop is gone once the notifier cannot deliver; then stop.
            if !notifier.alive() {
                return;
            }
        }
    });
}

impl App {
    pub fn new(cfg: &Arc<Config>, notifier: Notifier) -> io::Result<App> {
        let params = cfg.db.connect_params();
        let deploy = DeployCtx::new(cfg.clone());
        let health = HealthProbe::start(params.clone());
        start_catalog_sync(deploy.clone(), notifier.clone(), health.stop.clone());
        let lookups = {
            let notifier = notifier.clone();
            Lookups::start(
                params.clone(),
                cfg.deploy.catalog_db.clone(),
                Box::new(move |r| notifier.send(Message::Resolved(r))),
            )?
        };
        Ok(App {
            lookups,
            pending: HashMap::new(),
            pending_count: 0,
            notifier,
            calls: CallEngine::new(cfg.clone(), params.clone()),
            health,
            deploys_in_flight: 0,
            workers: Workers::new(cfg.deploy.workers, cfg.deploy.queue)?,
            deploy,
        })
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
        self.calls.backend_event(poll, key, now, readable, hup)
    }

    pub fn release_parked(&mut self) {
        self.calls.release_parked();
    }

    /// Whether work is in flight that shutdown should wait for.
    pub fn busy(&self) -> bool {
        self.calls.busy() || self.deploys_in_flight > 0
    }

    pub fn shutdown(&mut self, poll: &mut Poll, deadline: Instant) {
        self.health.stop.store(true, Ordering::Relaxed);
        self.calls.shutdown(poll);
        // Deploys still running get what is left of the grace period; past it the process exits
        // under them and PostgreSQL rolls their transactions back.
        self.workers.shutdown(deadline);
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
        let ctx = self.deploy.with_credential(cred);
        let notifier = self.notifier.clone();
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
        let task = Box::new(move || {
            let answered = AtomicBool::new(false);
            let streaming = AtomicBool::new(false);
            let complete = |response: Response, invalidate: Vec<String>| {
                answered.store(true, Ordering::Relaxed);
                notifier.send(Message::Complete { client: key, generation, response, invalidate });
            };
            let run = std::panic::AssertUnwindSafe(|| {
                let plan = match v2::plan_migrate(&ctx, &body, all) {
                    Ok(p) => p,
                    Err(e) => return complete(Response::error(&e), Vec::new()),
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
                    if answered {
                        notifier.send(Message::Invalidate(changed));
                    } else {
                        complete(resp, changed);
                    }
                } else if ndjson {
                    let chunk = |data: Vec<u8>| {
                        streaming.store(true, Ordering::Relaxed);
                        notifier.send(Message::Chunk { client: key, generation, data, last: false });
                    };
                    let (resp, changed) = v2::run_migrate(&plan, &mut |_| {}, v2::Progress::Lines(&chunk));
                    if streaming.load(Ordering::Relaxed) {
                        notifier.send(Message::Invalidate(changed));
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
                        invalidate: Vec::new(),
                    });
                }
            }
        });
        self.queue(task)
    }

    /// Hands a task to the deploy workers; a full queue is refused at once (503, retryable).
    fn queue(&mut self, task: crate::deploy::workers::Task) -> Option<Response> {
        match self.workers.try_submit(task) {
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
        let ctx = self.deploy.with_credential(cred);
        let notifier = self.notifier.clone();
        let task = Box::new(move || {
            // A bug in a deploy must still answer its client, not leave it waiting for ever.
            let (response, invalidate) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&ctx)))
                .unwrap_or_else(|_| (Response::error(&internal_panic()), Vec::new()));
            if response.status < 300 {
                // Databases this deploy created or changed, keys it set: tell /call right away.
                if let Ok(mut cat) = crate::catalog::Catalog::open(&ctx.admin, &ctx.cfg.deploy.catalog_db) {
                    send_catalog_state(&mut cat, &notifier);
                    cat.client.close();
                }
            }
            notifier.send(Message::Complete { client: key, generation, response, invalidate });
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
        match self.calls.admit(&req, &cred, now) {
            Admission::Go => self.calls.submit(poll, key, generation, req, now),
            Admission::Refused(e) => Some(Response::error(&e)),
            Admission::AskCatalog => {
                if self.pending_count >= self.calls.max_waiting() {
                    return Some(Response::error(&ApiError::new(
                        Kind::PoolExhausted,
                        "too many calls are waiting for the catalog; retry shortly",
                    )));
                }
                let first = !self.pending.contains_key(&req.database);
                if first && !self.lookups.ask(&req.database) {
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
    pub fn resolved(&mut self, poll: &mut Poll, r: Resolved, now: Instant) -> Vec<(usize, u64, Response)> {
        let waiting = self.pending.remove(&r.database).unwrap_or_default();
        self.pending_count = self.pending_count.saturating_sub(waiting.len());
        match r.owner {
            Ok(Some((owner, keys))) => {
                let platform = owner.platform.clone();
                self.calls.set_owners(vec![owner]);
                self.calls.set_keys(vec![(platform, keys)], false);
            }
            Ok(None) => self.calls.set_unknown(&r.database, now),
            Err(e) => {
                let e = ApiError { kind: Kind::ConnectionFailed, ..e };
                return waiting.into_iter().map(|w| (w.client, w.generation, Response::error(&e))).collect();
            }
        }
        let mut out = Vec::new();
        for w in waiting {
            let answer = match self.calls.admit(&w.req, &w.cred, now) {
                Admission::Go => self.calls.submit(poll, w.client, w.generation, w.req, now),
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
        self.calls.client_gone(key, generation);
    }

    /// Timeouts and pool maintenance; returns responses that became ready (e.g. 503 after a wait).
    /// End of a loop turn: backend writes queued during it go out.
    pub fn flush_backends(&mut self, poll: &mut Poll, now: Instant) -> Vec<(usize, u64, Response)> {
        self.calls.flush_deferred(poll, now)
    }

    pub fn janitor(&mut self, poll: &mut Poll, now: Instant) -> Vec<(usize, u64, Response)> {
        self.calls.janitor(poll, now)
    }
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

impl Server {
    /// Runs the handler of a complete request. `None` means the answer comes later.
    pub(super) fn dispatch(&mut self, key: usize, generation: u64, inc: Incoming) -> Option<Response> {
        // A bearer value is either a platform key or the admin token; the admin check also wants the
        // address in ALLOWED_ADMIN_IPS.
        let auth = inc.head.authorization.as_deref();
        let admin = auth.is_some() && crate::security::check_admin(inc.client_ip, auth, &self.cfg.security).is_ok();
        let cred = Credential::from_header(auth, admin);
        let depth = self.cfg.limits.max_json_depth;
        let result = match &inc.route {
            Route::Health => Ok(self.health()),
            Route::Call => match json_object(&inc.body, depth).and_then(CallRequest::from_json) {
                Ok(req) => return self.app.call(&mut self.poll, key, generation, req, cred, self.now),
                Err(e) => Err(e),
            },
            Route::Register | Route::Migrate => {
                let ct = inc.head.content_type.clone().unwrap_or_default();
                let body = inc.body;
                let register = inc.route == Route::Register;
                return self.app.submit_deploy(key, generation, cred, move |ctx| {
                    if register { service::register(ctx, &ct, &body) } else { service::migrate(ctx, &ct, &body) }
                });
            }
            Route::AdminDatabases => {
                let platform = inc.head.query_param("platform");
                return self
                    .app
                    .submit_deploy(key, generation, cred, move |ctx| service::admin_databases(ctx, platform));
            }
            Route::AdminCreateTenant => match json_object(&inc.body, depth) {
                Ok(v) => {
                    return self.app.submit_deploy(key, generation, cred, move |ctx| service::create_tenant(ctx, &v));
                }
                Err(e) => Err(e),
            },
            Route::PlatformRegister => match json_object(&inc.body, depth) {
                Ok(v) => {
                    return self.app.submit_deploy(key, generation, cred, move |ctx| v2::register_platform(ctx, &v));
                }
                Err(e) => Err(e),
            },
            Route::AdminPlatformKey(p) => {
                let body =
                    if inc.body.is_empty() { Ok(Value::Object(Vec::new())) } else { json_object(&inc.body, depth) };
                match body {
                    Ok(v) => {
                        let p = p.clone();
                        return self.app.submit_deploy(key, generation, cred, move |ctx| v2::rotate_key(ctx, &p, &v));
                    }
                    Err(e) => Err(e),
                }
            }
            Route::AdminIsolate => {
                return self.app.submit_deploy(key, generation, cred, crate::deploy::isolate::isolate_route);
            }
            Route::PlatformSchemaUpload(p) => {
                let (p, ct, body) = (p.clone(), inc.head.content_type.clone().unwrap_or_default(), inc.body);
                return self
                    .app
                    .submit_deploy(key, generation, cred, move |ctx| v2::upload_schema(ctx, &p, &ct, &body));
            }
            Route::PlatformSchemas(p) => {
                let p = p.clone();
                return self.app.submit_deploy(key, generation, cred, move |ctx| v2::list_schemas(ctx, &p));
            }
            Route::PlatformDatabases(p) => {
                let (p, schema) = (p.clone(), inc.head.query_param("schema"));
                return self.app.submit_deploy(key, generation, cred, move |ctx| v2::list_databases(ctx, &p, schema));
            }
            Route::Platforms => return self.app.submit_deploy(key, generation, cred, v2::list_platforms),
            Route::Run(id) => {
                let id = id.clone();
                return self.app.submit_deploy(key, generation, cred, move |ctx| v2::get_run(ctx, &id));
            }
            Route::DatabaseCreate => match json_object(&inc.body, depth) {
                Ok(v) => return self.app.submit_deploy(key, generation, cred, move |ctx| v2::create_database(ctx, &v)),
                Err(e) => Err(e),
            },
            Route::V2Migrate | Route::V2MigrateAll => match json_object(&inc.body, depth) {
                Ok(v) => {
                    let all = inc.route == Route::V2MigrateAll;
                    let ndjson = inc.head.accept.as_deref().is_some_and(|a| a.contains("application/x-ndjson"));
                    return self.app.submit_v2_migrate(key, generation, cred, v, all, ndjson);
                }
                Err(e) => Err(e),
            },
        };
        Some(match result {
            Ok(r) => r,
            Err(e) => Response::error(&e),
        })
    }

    fn health(&self) -> Response {
        let connected = self.app.health.ok.load(Ordering::Relaxed);
        let c = &self.app.calls;
        let mut body = Vec::with_capacity(256);
        let mut o = ObjectWriter::new(&mut body);
        o.str("status", if connected { "healthy" } else { "degraded" });
        o.str("version", crate::VERSION);
        o.u64("uptime_seconds", self.now.saturating_duration_since(self.started).as_secs());
        o.bool("postgres_connected", connected);
        o.u64("active_pools", c.active_pools() as u64);
        o.u64("total_connections", c.total_connections() as u64);
        o.u64("idle_connections", c.idle_connections() as u64);
        o.u64("waiting_requests", c.waiting_requests() as u64);
        o.u64("pipelined_calls", c.pipelined_calls());
        o.finish();
        Response::json(if connected { 200 } else { 503 }, body)
    }
}
