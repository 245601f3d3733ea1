//! The operator's views built on a loop: `/metrics` (Prometheus text) and the live half of the status
//! page's data, both summed from what every loop published; and the page itself, one HTML file
//! compiled into the binary.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::shared::Shared;
use crate::http::response::Response;
use crate::json::ObjectWriter;
use crate::metrics::{self, text};

/// The status page: HTML, CSS and script in one file, nothing fetched from elsewhere.
pub const PAGE: &str = include_str!("status.html");

pub fn page() -> Response {
    let mut r = Response::with_type(200, "text/html; charset=utf-8", PAGE.as_bytes().to_vec());
    // The page and its data are for one operator's eyes: never cached by anything in between.
    r.header = Some(("Cache-Control", "no-store"));
    r
}

/// `GET /metrics`.
pub fn metrics(shared: &Shared, now: Instant) -> Response {
    let totals = shared.totals();
    let requests = shared.request_totals();
    let pools = shared.pools();
    let deploy = shared.deploy.metrics.snapshot();
    let uptime = now.saturating_duration_since(shared.started).as_secs_f64();
    let unix_now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let scrape = text::Scrape {
        version: crate::VERSION,
        uptime_seconds: uptime,
        start_time_seconds: unix_now - uptime,
        postgres_up: shared.health.ok.load(std::sync::atomic::Ordering::Relaxed),
        event_loops: shared.loops.len(),
        clients: shared.clients(),
        requests: &requests,
        pools: &pools,
        connects: totals.connects,
        connect_failures: totals.connect_failures,
        traffic: totals.traffic,
        deploy: &deploy,
        process: metrics::process::read(),
        served: &shared.served(),
        servers: &shared.server_health(),
    };
    Response::with_type(200, text::CONTENT_TYPE, text::render(&scrape).into_bytes())
}

/// Health, pools, the last minute of `/call` traffic and this gateway's fleet runs, as JSON.
pub fn live(shared: &Shared, now: Instant) -> Vec<u8> {
    let connected = shared.health.ok.load(std::sync::atomic::Ordering::Relaxed);
    let totals = shared.totals();
    let pools = shared.pools();
    let (seconds, _) = shared.history.read();
    let deploy = shared.deploy.metrics.snapshot();
    let mut b = Vec::with_capacity(2048);
    let mut o = ObjectWriter::new(&mut b);
    o.str("status", if connected { "healthy" } else { "degraded" });
    o.bool("postgres_connected", connected);
    o.str("version", crate::VERSION);
    o.u64("uptime_seconds", now.saturating_duration_since(shared.started).as_secs());
    o.u64("event_loops", shared.loops.len() as u64);
    o.u64("client_connections", shared.clients() as u64);
    o.u64("total_connections", totals.connections as u64);
    o.u64("connect_failures", totals.connect_failures);
    {
        let mut a = o.array("pools");
        for p in &pools {
            let mut e = a.object();
            e.str("database", &p.database);
            e.u64("idle", p.idle as u64);
            e.u64("busy", p.busy as u64);
            e.u64("waiting", p.waiting as u64);
            e.u64("pipelined", p.pipelined as u64);
            e.u64("calls", p.calls);
            e.u64("backoff_ms", p.backoff_ms);
        }
    }
    {
        // One entry per second, oldest first: calls in that second and its p50/p99 in milliseconds.
        let mut a = o.array("traffic");
        for s in &seconds {
            let mut e = a.object();
            e.u64("at", s.at);
            e.u64("calls", s.calls);
            match s.p50_us {
                Some(v) => e.f64("p50_ms", (v / 10.0).round() / 100.0),
                None => e.null("p50_ms"),
            };
            match s.p99_us {
                Some(v) => e.f64("p99_ms", (v / 10.0).round() / 100.0),
                None => e.null("p99_ms"),
            };
        }
    }
    {
        let mut a = o.array("fleet_runs");
        for r in &deploy.fleet {
            let mut e = a.object();
            e.str("run_id", &r.run_id);
            e.str("platform", &r.platform);
            e.str("schema_name", &r.schema);
            e.u64("done", r.done as u64);
            e.u64("failed", r.failed as u64);
            e.u64("total", r.total as u64);
            e.u64("running_seconds", now.saturating_duration_since(r.started).as_secs());
        }
    }
    o.finish();
    b
}
