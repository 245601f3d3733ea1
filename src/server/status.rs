//! The operator's views built on a loop: `/metrics` (Prometheus text) and the live half of the status
//! page's data, both summed from what every loop published; and the page itself, one HTML file
//! compiled into the binary.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::shared::Shared;
use crate::error::Kind;
use crate::http::response::Response;
use crate::json::ObjectWriter;
use crate::metrics::calls::CallFigures;
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
    let figures = shared.call_figures(true);
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
        loops: &{
            let (loads, clients) = shared.loads();
            loads.into_iter().zip(clients).collect::<Vec<_>>()
        },
        client_moves: shared.client_moves(),
        deploy: &deploy,
        process: metrics::process::read(),
        served: &shared.served(),
        servers: &shared.server_health(),
        platform_errors: &figures.top_platform_errors(shared.cfg.metrics_top_databases),
        functions: &figures.top_functions(shared.cfg.metrics_top_databases),
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
    let top = shared.cfg.metrics_top_databases;
    {
        // The headline figures: the last minute as one span, not its last second.
        let minute = shared.history.minute().unwrap_or_default();
        let mut m = o.object("minute");
        let calls = minute.latency.count();
        m.u64("seconds", minute.seconds);
        m.u64("calls", calls);
        m.f64("calls_per_second", rounded(calls as f64 / minute.seconds.max(1) as f64));
        m.u64("error_count", minute.errors.errors_by_code().iter().sum());
        ms(&mut m, "p50_ms", minute.latency.quantile_us(0.5));
        ms(&mut m, "p99_ms", minute.latency.quantile_us(0.99));
        errors(&mut m.object("errors"), &minute.errors, top);
    }
    let figures = shared.call_figures(true);
    errors(&mut o.object("errors_since_start"), &figures, top);
    {
        // The functions that took the most time since the start, then the rest as one row.
        let mut a = o.array("functions");
        for f in figures.top_functions(top) {
            let mut e = a.object();
            e.str("platform", &f.platform);
            e.str("function", &f.function);
            e.u64("calls", f.figures.latency.count());
            e.u64("errors", f.figures.errors);
            e.f64("total_ms", rounded(f.figures.latency.sum_us as f64 / 1000.0));
            ms(&mut e, "p50_ms", f.figures.latency.quantile_us(0.5));
            ms(&mut e, "p99_ms", f.figures.latency.quantile_us(0.99));
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

fn rounded(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Microseconds as milliseconds with two decimals, or null.
fn ms(o: &mut ObjectWriter<'_>, key: &str, us: Option<f64>) {
    match us {
        Some(v) => o.f64(key, rounded(v / 1000.0)),
        None => o.null(key),
    };
}

/// `{"by_code": [{code, count}], "by_platform": [{platform, count}]}`, most first, only what is not
/// zero; platforms folded to the top-N (`""`: requests that named none).
fn errors(o: &mut ObjectWriter<'_>, f: &CallFigures, top: usize) {
    let by_code = f.errors_by_code();
    let mut codes: Vec<(&str, u64)> =
        Kind::ALL.iter().map(|k| (k.code(), by_code.get(*k as usize).copied().unwrap_or(0))).collect();
    codes.retain(|c| c.1 > 0);
    codes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    {
        let mut a = o.array("by_code");
        for (code, n) in codes {
            let mut e = a.object();
            e.str("code", code);
            e.u64("count", n);
        }
    }
    let mut a = o.array("by_platform");
    for (platform, counts) in f.top_platform_errors(top) {
        let mut e = a.object();
        e.str("platform", &platform);
        e.u64("count", counts.iter().sum());
        // Its most frequent code, for a glance at what goes wrong there.
        if let Some((i, _)) =
            counts.iter().enumerate().filter(|(_, n)| **n > 0).max_by_key(|(i, n)| (**n, usize::MAX - i))
        {
            e.str("top_code", Kind::ALL.get(i).map_or("", |k| k.code()));
        }
    }
}
