//! The Prometheus text exposition format, version 0.0.4: `# HELP` and `# TYPE` once per family, its
//! samples together, label values escaped, histograms as cumulative `_bucket{le=…}` plus `_sum` and
//! `_count`. No I/O: the caller gathers a [`Scrape`] and sends the bytes.

use super::calls::FunctionRow;
use super::process::ProcessStats;
use super::{
    DEPLOY_BOUNDS_US, DeploySnapshot, LATENCY_BOUNDS_US, PoolSnapshot, RequestTotals, ServedCount, ServerHealth,
};
use crate::error::Kind;
use crate::http::router::ROUTE_NAMES;

/// The media type scrapers ask for.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric name starts with this.
pub const PREFIX: &str = "stonescriptdb_gateway_";

/// Everything one scrape reports.
pub struct Scrape<'a> {
    pub version: &'a str,
    pub uptime_seconds: f64,
    /// Unix time the process started.
    pub start_time_seconds: f64,
    pub postgres_up: bool,
    pub event_loops: usize,
    pub clients: usize,
    pub requests: &'a RequestTotals,
    /// Folded to the top-N (see [`super::fold_pools`]).
    pub pools: &'a [PoolSnapshot],
    pub connects: u64,
    pub connect_failures: u64,
    /// Backend closes and the traffic between loops, summed over loops.
    pub traffic: super::LoopTraffic,
    /// Per event loop: its CPU share (per mille of a core) and its client connections.
    pub loops: &'a [(u32, usize)],
    /// Client connections handed from one loop to another.
    pub client_moves: u64,
    pub deploy: &'a DeploySnapshot,
    pub process: ProcessStats,
    /// Calls per server and replica, summed over loops.
    pub served: &'a [ServedCount],
    pub servers: &'a [ServerHealth],
    /// `/call` errors per platform (top-N and `other`; "" for requests that named none) and code.
    pub platform_errors: &'a [(String, Vec<u64>)],
    /// The functions that took the most time, then `other` (see
    /// [`super::calls::CallFigures::top_functions`]).
    pub functions: &'a [FunctionRow],
}

struct Out {
    b: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.b.push_str("# HELP ");
        self.b.push_str(PREFIX);
        self.b.push_str(name);
        self.b.push(' ');
        self.b.push_str(help);
        self.b.push_str("\n# TYPE ");
        self.b.push_str(PREFIX);
        self.b.push_str(name);
        self.b.push(' ');
        self.b.push_str(kind);
        self.b.push('\n');
    }

    /// A family without the gateway prefix (the conventional `process_*` names).
    fn plain_family(&mut self, name: &str, kind: &str, help: &str) {
        self.b.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.b.push_str(PREFIX);
        self.plain_sample(name, labels, value);
    }

    fn plain_sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.b.push_str(name);
        if !labels.is_empty() {
            self.b.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.b.push(',');
                }
                self.b.push_str(k);
                self.b.push_str("=\"");
                escape_into(&mut self.b, v);
                self.b.push('"');
            }
            self.b.push('}');
        }
        self.b.push(' ');
        self.b.push_str(&number(value));
        self.b.push('\n');
    }

    /// Cumulative buckets from per-bucket `counts` (the last one is `+Inf`), then `_sum` and `_count`.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], bounds_us: &[u64], counts: &[u64], sum_us: u64) {
        let mut cum = 0u64;
        for (i, c) in counts.iter().enumerate() {
            cum += c;
            let le = match bounds_us.get(i) {
                Some(&b) => number(b as f64 / 1e6),
                None => "+Inf".to_string(),
            };
            let mut l: Vec<(&str, &str)> = labels.to_vec();
            l.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &l, cum as f64);
        }
        self.sample(&format!("{name}_sum"), labels, sum_us as f64 / 1e6);
        self.sample(&format!("{name}_count"), labels, cum as f64);
    }
}

/// `\`, `"` and newline are the only characters a label value escapes.
fn escape_into(out: &mut String, v: &str) {
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Renders a scrape.
pub fn render(s: &Scrape<'_>) -> String {
    let mut o = Out { b: String::with_capacity(16 * 1024) };

    o.family("build_info", "gauge", "Always 1; the version is a label.");
    o.sample("build_info", &[("version", s.version)], 1.0);
    o.family("uptime_seconds", "gauge", "Seconds since the gateway started.");
    o.sample("uptime_seconds", &[], (s.uptime_seconds * 1000.0).round() / 1000.0);
    o.family("postgres_up", "gauge", "1 when the background probe reached PostgreSQL in its last round.");
    o.sample("postgres_up", &[], if s.postgres_up { 1.0 } else { 0.0 });
    o.family("event_loops", "gauge", "Event loops (GATEWAY_THREADS).");
    o.sample("event_loops", &[], s.event_loops as f64);
    o.family("client_connections", "gauge", "Open client connections.");
    o.sample("client_connections", &[], s.clients as f64);
    o.family(
        "log_lines_suppressed_total",
        "counter",
        "Refusal log lines left out because one peer repeated one error (a summary line counts them).",
    );
    o.sample("log_lines_suppressed_total", &[], crate::log::suppressed_lines() as f64);

    o.family("http_requests_total", "counter", "Answered HTTP requests by route and status class.");
    for (r, row) in s.requests.requests.iter().enumerate() {
        let route = ROUTE_NAMES.get(r).copied().unwrap_or("unmatched");
        for (c, n) in row.iter().enumerate() {
            // Classes a route never answered stay out; 2xx is always there so a route shows at all.
            if *n > 0 || c == 1 {
                o.sample("http_requests_total", &[("route", route), ("class", CLASSES[c])], *n as f64);
            }
        }
    }

    o.family("call_duration_seconds", "histogram", "Time from a /call request's first byte to its answer.");
    let h = &s.requests.call_latency;
    o.histogram("call_duration_seconds", &[], &LATENCY_BOUNDS_US, &h.counts, h.sum_us);

    o.family(
        "call_errors_total",
        "counter",
        "/call answers that were errors, by stable error code and platform (none: the request named no platform).",
    );
    for k in Kind::ALL {
        let i = *k as usize;
        let mut named = 0;
        for (platform, counts) in s.platform_errors.iter().filter(|(p, _)| !p.is_empty()) {
            let n = counts.get(i).copied().unwrap_or(0);
            if n > 0 {
                o.sample("call_errors_total", &[("code", k.code()), ("platform", platform)], n as f64);
                named += n;
            }
        }
        // Without a platform label: errors of requests that named none, and every code from the start
        // (the platform rows appear with their first error).
        let unnamed = s.requests.call_errors.get(i).copied().unwrap_or(0).saturating_sub(named);
        if unnamed > 0 || named == 0 {
            o.sample("call_errors_total", &[("code", k.code())], unnamed as f64);
        }
    }

    o.family(
        "function_calls_total",
        "counter",
        "/call answers per function, for the functions that took the most time in all (the rest: other).",
    );
    for f in s.functions {
        let l = [("platform", f.platform.as_str()), ("function", f.function.as_str())];
        o.sample("function_calls_total", &l, f.figures.latency.count() as f64);
    }
    o.family("function_errors_total", "counter", "/call answers per function that were errors.");
    for f in s.functions {
        let l = [("platform", f.platform.as_str()), ("function", f.function.as_str())];
        o.sample("function_errors_total", &l, f.figures.errors as f64);
    }
    o.family("function_duration_seconds", "histogram", "/call duration per function, first byte to answer.");
    for f in s.functions {
        let l = [("platform", f.platform.as_str()), ("function", f.function.as_str())];
        let h = &f.figures.latency;
        o.histogram("function_duration_seconds", &l, &LATENCY_BOUNDS_US, &h.counts, h.sum_us);
    }

    o.family("pool_connections", "gauge", "Backend connections of the /call pools by database and state.");
    for p in s.pools {
        o.sample("pool_connections", &[("database", &p.database), ("state", "idle")], p.idle as f64);
        o.sample("pool_connections", &[("database", &p.database), ("state", "busy")], p.busy as f64);
    }
    o.family("pool_waiting", "gauge", "Calls waiting for a backend connection, by database.");
    for p in s.pools {
        o.sample("pool_waiting", &[("database", &p.database)], p.waiting as f64);
    }
    o.family("pool_pipelined", "gauge", "Calls queued behind another call on a busy connection, by database.");
    for p in s.pools {
        o.sample("pool_pipelined", &[("database", &p.database)], p.pipelined as f64);
    }
    o.family("pool_backoff_seconds", "gauge", "Seconds until the next connect attempt of a database's pool.");
    for p in s.pools {
        o.sample("pool_backoff_seconds", &[("database", &p.database)], p.backoff_ms as f64 / 1000.0);
    }
    o.family("backend_connects_total", "counter", "Backend connections the /call pools opened.");
    o.sample("backend_connects_total", &[], s.connects as f64);
    o.family("backend_connect_failures_total", "counter", "Backend connection attempts that failed.");
    o.sample("backend_connect_failures_total", &[], s.connect_failures as f64);
    o.family("backend_closes_total", "counter", "Backend connections the /call pools closed.");
    o.sample("backend_closes_total", &[], s.traffic.closes as f64);
    o.family(
        "loop_traffic_total",
        "counter",
        "What event loops asked of each other for the connection limits, by kind.",
    );
    for (kind, n) in s.traffic.kinds() {
        o.sample("loop_traffic_total", &[("kind", kind)], n as f64);
    }
    o.family("loop_cpu_ratio", "gauge", "Each event loop's share of one core over its last 100 ms.");
    for (i, (load, _)) in s.loops.iter().enumerate() {
        o.sample("loop_cpu_ratio", &[("loop", &i.to_string())], f64::from(*load) / 1000.0);
    }
    o.family("loop_client_connections", "gauge", "Client connections each event loop serves.");
    for (i, (_, clients)) in s.loops.iter().enumerate() {
        o.sample("loop_client_connections", &[("loop", &i.to_string())], *clients as f64);
    }
    o.family(
        "client_moves_total",
        "counter",
        "Idle client connections handed from one event loop to another (packing light loops, spreading a saturated one).",
    );
    o.sample("client_moves_total", &[], s.client_moves as f64);

    o.family(
        "server_calls_total",
        "counter",
        "Calls answered per PostgreSQL server; replica is empty for the primary.",
    );
    for c in s.served {
        o.sample("server_calls_total", &[("server", &c.server), ("replica", &c.replica)], c.calls as f64);
    }
    o.family(
        "replica_write_retries_total",
        "counter",
        "Calls a replica refused as writes (a STABLE/IMMUTABLE label that was wrong), run again on the primary.",
    );
    for c in s.served.iter().filter(|c| !c.replica.is_empty()) {
        o.sample(
            "replica_write_retries_total",
            &[("server", &c.server), ("replica", &c.replica)],
            c.write_retries as f64,
        );
    }
    o.family(
        "server_up",
        "gauge",
        "1 when the health monitor reaches the server (or replica) and, for a replica, reads may go there.",
    );
    for h in s.servers {
        o.sample("server_up", &[("server", &h.server), ("replica", &h.replica)], if h.up { 1.0 } else { 0.0 });
    }
    o.family("replica_lag_seconds", "gauge", "Replay lag of each replica as the gateway measured it.");
    for h in s.servers.iter().filter(|h| !h.replica.is_empty()) {
        if let Some(l) = h.lag_ms {
            o.sample("replica_lag_seconds", &[("server", &h.server), ("replica", &h.replica)], l as f64 / 1000.0);
        }
    }

    o.family("deploys_total", "counter", "Deploy requests by kind (route) and outcome.");
    for ((kind, outcome), n) in &s.deploy.runs {
        o.sample("deploys_total", &[("kind", kind), ("outcome", outcome)], *n as f64);
    }
    o.family("deploy_duration_seconds", "histogram", "Duration of deploy requests by kind (route).");
    for (kind, counts, sum) in &s.deploy.durations {
        o.histogram("deploy_duration_seconds", &[("kind", kind)], &DEPLOY_BOUNDS_US, counts, *sum);
    }
    o.family("migrations_applied_total", "counter", "Migration files applied to databases (not dry runs).");
    o.sample("migrations_applied_total", &[], s.deploy.migrations_applied as f64);
    o.family("functions_applied_total", "counter", "Functions created or replaced in databases (not dry runs).");
    o.sample("functions_applied_total", &[], s.deploy.functions_applied as f64);

    o.family("fleet_runs_in_progress", "gauge", "Fleet migrations this gateway is running.");
    o.sample("fleet_runs_in_progress", &[], s.deploy.fleet.len() as f64);
    o.family("fleet_run_databases_done", "gauge", "Databases a running fleet migration has finished.");
    for r in &s.deploy.fleet {
        let l = [("run_id", r.run_id.as_str()), ("platform", r.platform.as_str()), ("schema", r.schema.as_str())];
        o.sample("fleet_run_databases_done", &l, r.done as f64);
    }
    o.family("fleet_run_databases_total", "gauge", "Databases a running fleet migration covers.");
    for r in &s.deploy.fleet {
        let l = [("run_id", r.run_id.as_str()), ("platform", r.platform.as_str()), ("schema", r.schema.as_str())];
        o.sample("fleet_run_databases_total", &l, r.total as f64);
    }

    if let Some(v) = s.process.rss_bytes {
        o.plain_family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
        o.plain_sample("process_resident_memory_bytes", &[], v as f64);
    }
    if let Some(v) = s.process.open_fds {
        o.plain_family("process_open_fds", "gauge", "Open file descriptors.");
        o.plain_sample("process_open_fds", &[], v as f64);
    }
    if let Some(v) = s.process.max_fds {
        o.plain_family("process_max_fds", "gauge", "Limit of open file descriptors.");
        o.plain_sample("process_max_fds", &[], v as f64);
    }
    o.plain_family("process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch.");
    o.plain_sample("process_start_time_seconds", &[], s.start_time_seconds.floor());
    o.b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_numbers_are_plain() {
        let mut s = String::new();
        escape_into(&mut s, "a\"b\\c\nd");
        assert_eq!(s, "a\\\"b\\\\c\\nd");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.00025), "0.00025");
    }

    #[test]
    fn call_errors_carry_the_platform_and_the_rest_has_none() {
        let mut totals = RequestTotals::default();
        let nf = Kind::FunctionNotFound as usize;
        totals.call_errors[nf] = 5;
        totals.call_errors[Kind::InvalidJson as usize] = 1;
        let mut acme = vec![0; Kind::ALL.len()];
        acme[nf] = 4;
        let dep = DeploySnapshot::default();
        let s = Scrape {
            version: "1",
            uptime_seconds: 1.0,
            start_time_seconds: 0.0,
            postgres_up: true,
            event_loops: 1,
            clients: 0,
            requests: &totals,
            pools: &[],
            connects: 0,
            connect_failures: 0,
            deploy: &dep,
            process: ProcessStats::default(),
            served: &[],
            servers: &[],
            platform_errors: &[("acme".to_string(), acme)],
            functions: &[],
            traffic: Default::default(),
            loops: &[(250, 3), (0, 0)],
            client_moves: 7,
        };
        let t = render(&s);
        let p = "stonescriptdb_gateway_call_errors_total";
        assert!(t.contains(&format!("{p}{{code=\"function_not_found\",platform=\"acme\"}} 4\n")), "{t}");
        // The fifth named no platform (or was counted before the platform rows were read).
        assert!(t.contains(&format!("{p}{{code=\"function_not_found\"}} 1\n")), "{t}");
        assert!(t.contains(&format!("{p}{{code=\"invalid_json\"}} 1\n")), "{t}");
        assert!(t.contains(&format!("{p}{{code=\"timeout\"}} 0\n")), "{t}");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_count_matches_inf() {
        let totals = RequestTotals::default();
        let mut totals2 = totals.clone();
        totals2.call_latency.counts[0] = 2;
        totals2.call_latency.counts[3] = 1;
        totals2.call_latency.counts[super::super::LATENCY_SLOTS - 1] = 4;
        let dep = DeploySnapshot::default();
        let s = Scrape {
            version: "1",
            uptime_seconds: 1.0,
            start_time_seconds: 0.0,
            postgres_up: true,
            event_loops: 1,
            clients: 0,
            requests: &totals2,
            pools: &[],
            connects: 0,
            connect_failures: 0,
            traffic: Default::default(),
            loops: &[(250, 3), (0, 0)],
            client_moves: 7,
            deploy: &dep,
            process: ProcessStats::default(),
            served: &[ServedCount { server: "s2".into(), replica: "10.0.0.3:5432".into(), calls: 5, write_retries: 1 }],
            servers: &[],
            platform_errors: &[],
            functions: &[],
        };
        let t = render(&s);
        assert!(t.contains("stonescriptdb_gateway_call_duration_seconds_bucket{le=\"0.0001\"} 2\n"), "{t}");
        assert!(t.contains("stonescriptdb_gateway_call_duration_seconds_bucket{le=\"0.001\"} 3\n"), "{t}");
        assert!(t.contains("stonescriptdb_gateway_call_duration_seconds_bucket{le=\"+Inf\"} 7\n"), "{t}");
        assert!(t.contains("stonescriptdb_gateway_call_duration_seconds_count 7\n"), "{t}");
        assert!(
            t.contains("stonescriptdb_gateway_server_calls_total{server=\"s2\",replica=\"10.0.0.3:5432\"} 5\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "stonescriptdb_gateway_replica_write_retries_total{server=\"s2\",replica=\"10.0.0.3:5432\"} 1\n"
            ),
            "{t}"
        );
    }
}
