//! Routes a complete request to its handler. Quick handlers answer at once; `/call` goes to the backend
//! pools on this loop; deploys go to worker threads and answer through the [`super::Notifier`].

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::Poll;

use super::client::Incoming;
use super::{Notifier, Server};
use crate::call::engine::CallEngine;
use crate::call::request::CallRequest;
use crate::config::Config;
use crate::log;
use crate::pg::blocking::Client;
use crate::pg::params::ConnectParams;
use crate::error::{ApiError, Kind};
use crate::http::response::Response;
use crate::http::router::Route;
use crate::json::{self, ObjectWriter, Value};

/// Everything the handlers own: the `/call` engine, the PostgreSQL health probe, worker handles.
/// Lives inside the [`Server`].
pub struct App {
    #[allow(dead_code)]
    notifier: Notifier,
    pub(crate) calls: CallEngine,
    health: HealthProbe,
    /// Deploy jobs handed to workers and not yet answered.
    pub(crate) deploys_in_flight: usize,
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
        HealthProbe { ok, stop }
    }
}

impl App {
    pub fn new(cfg: &Arc<Config>, notifier: Notifier) -> io::Result<App> {
        let params = cfg.db.connect_params();
        Ok(App {
            notifier,
            calls: CallEngine::new(cfg.clone(), params.clone()),
            health: HealthProbe::start(params),
            deploys_in_flight: 0,
        })
    }

    /// An event on a backend socket; returns finished client responses.
    pub fn backend_event(&mut self, poll: &mut Poll, key: usize, now: Instant) -> Vec<(usize, u64, Response)> {
        self.calls.backend_event(poll, key, now)
    }

    pub fn release_parked(&mut self) {
        self.calls.release_parked();
    }

    /// Whether work is in flight that shutdown should wait for.
    pub fn busy(&self) -> bool {
        self.calls.busy() || self.deploys_in_flight > 0
    }

    pub fn shutdown(&mut self, poll: &mut Poll) {
        self.health.stop.store(true, Ordering::Relaxed);
        self.calls.shutdown(poll);
    }

    /// Drops cached statements of a database after a deploy changed it.
    pub fn invalidate(&mut self, poll: &mut Poll, database: &str) {
        self.calls.invalidate(poll, database);
    }

    /// The client of request (`key`, `generation`) went away: cancel what runs for it.
    pub fn client_gone(&mut self, key: usize, generation: u64) {
        self.calls.client_gone(key, generation);
    }

    /// Timeouts and pool maintenance; returns responses that became ready (e.g. 503 after a wait).
    pub fn janitor(&mut self, poll: &mut Poll, now: Instant) -> Vec<(usize, u64, Response)> {
        self.calls.janitor(poll, now)
    }
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
        let result = match &inc.route {
            Route::Health => Ok(self.health()),
            Route::Call => match json_object(&inc.body, self.cfg.limits.max_json_depth)
                .and_then(|v| CallRequest::from_json(&v))
            {
                Ok(req) => return self.app.calls.submit(&mut self.poll, key, generation, req, self.now),
                Err(e) => Err(e),
            },
            other => Err(ApiError::new(
                Kind::NotFound,
                format!("{} is not available in this build yet", other.name()),
            )),
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
        o.finish();
        Response::json(if connected { 200 } else { 503 }, body)
    }
}
