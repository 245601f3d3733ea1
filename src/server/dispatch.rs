//! Routes a complete request to its handler. Quick handlers answer at once; `/call` goes to the backend
//! pools on this loop; deploys go to worker threads and answer through the [`super::Notifier`].

use std::io;
use std::time::Instant;

use mio::Poll;

use super::client::Incoming;
use super::{Notifier, Server};
use crate::config::Config;
use crate::error::{ApiError, Kind};
use crate::http::response::Response;
use crate::http::router::Route;
use crate::json::{self, ObjectWriter, Value};

/// Everything the handlers own: pools, worker handles. Lives inside the [`Server`].
pub struct App {
    #[allow(dead_code)]
    notifier: Notifier,
}

impl App {
    pub fn new(_cfg: &Config, notifier: Notifier) -> io::Result<App> {
        Ok(App { notifier })
    }

    /// An event on a backend socket; returns finished client responses.
    pub fn backend_event(
        &mut self,
        _poll: &mut Poll,
        _key: usize,
        _now: Instant,
    ) -> Vec<(usize, u64, Response)> {
        Vec::new()
    }

    pub fn release_parked(&mut self) {}

    /// Whether work is in flight that shutdown should wait for.
    pub fn busy(&self) -> bool {
        false
    }

    pub fn shutdown(&mut self) {}

    /// Drops cached statements of a database after a deploy changed it.
    pub fn invalidate(&mut self, _database: &str) {}

    /// The client of request (`key`, `generation`) went away: cancel what runs for it.
    pub fn client_gone(&mut self, _key: usize, _generation: u64) {}

    /// Timeouts and pool maintenance; returns responses that became ready (e.g. 503 after a wait).
    pub fn janitor(&mut self, _poll: &mut Poll, _now: Instant) -> Vec<(usize, u64, Response)> {
        Vec::new()
    }
}

/// Parses a JSON request body: malformed → `invalid_json`, not an object → `invalid_request`.
pub fn json_object(body: &[u8], max_depth: usize) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::new(
            Kind::InvalidJson,
            "request body is empty; expected a JSON object",
        ));
    }
    let v = json::parse_with_depth(body, max_depth).map_err(|e| {
        ApiError::new(
            Kind::InvalidJson,
            format!("request body is not valid JSON: {e}"),
        )
    })?;
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
    pub(super) fn dispatch(
        &mut self,
        _key: usize,
        _generation: u64,
        inc: Incoming,
    ) -> Option<Response> {
        let result = match &inc.route {
            Route::Health => Ok(self.health()),
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
        let mut body = Vec::with_capacity(128);
        let mut o = ObjectWriter::new(&mut body);
        o.str("status", "healthy");
        o.str("version", crate::VERSION);
        o.u64(
            "uptime_seconds",
            self.now.saturating_duration_since(self.started).as_secs(),
        );
        o.finish();
        Response::json(200, body)
    }
}
