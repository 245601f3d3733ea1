//! What the gateway counts for `/metrics` and the status page, and how the counts are kept cheap.
//!
//! Each event loop owns a [`LoopCounters`]: it is the only writer, so a bump is a relaxed load and a
//! relaxed store (no locked instruction, no lock), and a scrape only reads. A scrape sums the loops'
//! counters into snapshots ([`HistogramSnapshot`], plain arrays) and renders them ([`text`]).
//! Deploys are rare and run on worker threads; their counts ([`DeployMetrics`]) sit behind a mutex.
//! This module owns no sockets and knows nothing of the loops; `server/` hands it what it gathered.

pub mod calls;
pub mod histogram;
pub mod process;
pub mod text;

use histogram::bump;
pub use histogram::{Histogram, HistogramSnapshot, KIND_SLOTS, LATENCY_BOUNDS_US, LATENCY_SLOTS, OTHER};

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::error::Kind;
use crate::http::router::ROUTE_SLOTS;

/// Upper bounds of the deploy duration buckets, in microseconds: 50 ms to 10 min.
pub const DEPLOY_BOUNDS_US: [u64; 10] =
    [50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 10_000_000, 30_000_000, 120_000_000, 600_000_000];

/// One loop's request counters: requests by route and status class, `/call` latency and `/call`
/// errors by code. Written only by that loop, at the end of each request.
pub struct LoopCounters {
    /// `[route][status class 1..=5 → 0..=4]`.
    requests: [[AtomicU64; 5]; ROUTE_SLOTS],
    call_latency: Histogram,
    call_errors: [AtomicU64; KIND_SLOTS],
    /// `/call` figures by platform and function.
    pub calls: calls::CallBook,
}

impl Default for LoopCounters {
    fn default() -> Self {
        LoopCounters {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            call_latency: Histogram::default(),
            call_errors: std::array::from_fn(|_| AtomicU64::new(0)),
            calls: calls::CallBook::default(),
        }
    }
}

impl LoopCounters {
    /// One answered request. `route` is a [`crate::http::router::Route::slot`]; `latency_us` and
    /// `error` matter only for `/call`.
    #[inline]
    pub fn request(&self, route: usize, status: u16, call: bool, latency_us: u64, error: Option<Kind>) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        if let Some(r) = self.requests.get(route) {
            bump(&r[class], 1);
        }
        if call {
            self.call_latency.observe(latency_us);
            if let Some(k) = error
                && let Some(c) = self.call_errors.get(k as usize)
            {
                bump(c, 1);
            }
        }
    }

    /// Adds this loop's `/call` latency into `into`.
    pub fn add_call_latency(&self, into: &mut HistogramSnapshot) {
        self.call_latency.add_to(into);
    }

    /// Adds this loop's counts into `into`.
    pub fn add_to(&self, into: &mut RequestTotals) {
        for (row, src) in into.requests.iter_mut().zip(&self.requests) {
            for (a, b) in row.iter_mut().zip(src) {
                *a += b.load(Ordering::Relaxed);
            }
        }
        self.call_latency.add_to(&mut into.call_latency);
        for (a, b) in into.call_errors.iter_mut().zip(&self.call_errors) {
            *a += b.load(Ordering::Relaxed);
        }
    }
}

/// [`LoopCounters`] summed over the loops.
#[derive(Clone, Debug)]
pub struct RequestTotals {
    pub requests: [[u64; 5]; ROUTE_SLOTS],
    pub call_latency: HistogramSnapshot,
    pub call_errors: [u64; KIND_SLOTS],
}

impl Default for RequestTotals {
    fn default() -> Self {
        RequestTotals {
            requests: [[0; 5]; ROUTE_SLOTS],
            call_latency: HistogramSnapshot::default(),
            call_errors: [0; KIND_SLOTS],
        }
    }
}

/// Calls answered through one server (or one replica of it), over a loop's life.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServedCount {
    pub server: String,
    /// The replica's `host:port`; empty for the server's primary.
    pub replica: String,
    pub calls: u64,
    /// Calls a replica refused as writes (25006) and the primary ran again.
    pub write_retries: u64,
}

/// Adds `more` into `into`, matching on server and replica.
pub fn fold_served(into: &mut Vec<ServedCount>, more: &[ServedCount]) {
    for m in more {
        match into.iter_mut().find(|c| c.server == m.server && c.replica == m.replica) {
            Some(c) => {
                c.calls += m.calls;
                c.write_retries += m.write_retries;
            }
            None => into.push(m.clone()),
        }
    }
}

/// One server or replica as the health monitor last saw it.
#[derive(Clone, Debug, Default)]
pub struct ServerHealth {
    pub server: String,
    /// Empty for the primary.
    pub replica: String,
    pub up: bool,
    /// Replay lag (replicas only, when measured).
    pub lag_ms: Option<u64>,
}

/// What the `/call` engines of the loops did with backend connections and with each other, counted
/// since the start: where the cost of sharing the connection limits over loops shows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoopTraffic {
    /// Backend connections closed (for any reason).
    pub closes: u64,
    /// Requests for room sent to other loops.
    pub room_requests: u64,
    /// Connections closed because another loop asked for room.
    pub room_closes: u64,
    /// Slots of the total cap handed to another loop.
    pub slot_handovers: u64,
    /// Calls handed to another loop to run.
    pub calls_forwarded: u64,
}

impl LoopTraffic {
    pub fn add(&mut self, o: &LoopTraffic) {
        self.closes += o.closes;
        self.room_requests += o.room_requests;
        self.room_closes += o.room_closes;
        self.slot_handovers += o.slot_handovers;
        self.calls_forwarded += o.calls_forwarded;
    }

    /// `(label, count)` of every kind of cross-loop traffic, as `/metrics` names them.
    pub fn kinds(&self) -> [(&'static str, u64); 4] {
        [
            ("room_request", self.room_requests),
            ("room_close", self.room_closes),
            ("slot_handover", self.slot_handovers),
            ("call_forwarded", self.calls_forwarded),
        ]
    }
}

/// One pool of one loop, as the loop last published it (every janitor turn).
#[derive(Clone, Debug, Default)]
pub struct PoolSnapshot {
    pub database: String,
    pub idle: usize,
    pub busy: usize,
    pub waiting: usize,
    /// Calls queued behind another call on a busy connection right now.
    pub pipelined: usize,
    /// Calls this loop's pool took since it was opened: the traffic that ranks databases.
    pub calls: u64,
    /// Milliseconds until the next connect attempt is allowed (0 when not backing off).
    pub backoff_ms: u64,
}

/// Per-database pool figures summed over loops, with at most `top` databases named: those with the
/// most calls; the rest are folded into one row named `other`.
pub fn fold_pools(snaps: impl IntoIterator<Item = PoolSnapshot>, top: usize) -> Vec<PoolSnapshot> {
    let mut by: Vec<PoolSnapshot> = Vec::new();
    for s in snaps {
        match by.iter_mut().find(|p| p.database == s.database) {
            Some(p) => {
                p.idle += s.idle;
                p.busy += s.busy;
                p.waiting += s.waiting;
                p.pipelined += s.pipelined;
                p.calls += s.calls;
                p.backoff_ms = p.backoff_ms.max(s.backoff_ms);
            }
            None => by.push(s),
        }
    }
    // Most traffic first; ties by name so the set is stable between scrapes.
    by.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.database.cmp(&b.database)));
    if by.len() > top {
        let rest = by.split_off(top);
        let mut other = PoolSnapshot { database: OTHER.to_string(), ..PoolSnapshot::default() };
        for s in rest {
            other.idle += s.idle;
            other.busy += s.busy;
            other.waiting += s.waiting;
            other.pipelined += s.pipelined;
            other.calls += s.calls;
            other.backoff_ms = other.backoff_ms.max(s.backoff_ms);
        }
        by.push(other);
    }
    by
}

/// A fleet run this process is executing.
#[derive(Clone, Debug)]
pub struct FleetRun {
    pub run_id: String,
    pub platform: String,
    pub schema: String,
    pub total: usize,
    pub done: usize,
    pub failed: usize,
    pub started: Instant,
}

/// Deploy counts: runs by kind and outcome, their durations, migrations and functions applied, and the
/// fleet runs in progress. Shared by the deploy workers (rare writes) and read by scrapes.
#[derive(Default)]
pub struct DeployMetrics {
    inner: Mutex<DeployInner>,
}

#[derive(Default)]
struct DeployInner {
    /// (kind, outcome) → count.
    runs: Vec<((&'static str, &'static str), u64)>,
    /// kind → (counts per bucket incl. +Inf, sum in µs).
    durations: Vec<(&'static str, [u64; DEPLOY_BOUNDS_US.len() + 1], u64)>,
    migrations_applied: u64,
    functions_applied: u64,
    fleet: Vec<FleetRun>,
    /// Fleet runs that ended here, most recent last (a few, for the status page).
    finished: VecDeque<(FleetRun, &'static str)>,
}

/// Finished fleet runs kept for the status page.
const FINISHED_KEPT: usize = 10;

/// What a scrape reads of [`DeployMetrics`].
#[derive(Clone, Debug, Default)]
pub struct DeploySnapshot {
    pub runs: Vec<((&'static str, &'static str), u64)>,
    pub durations: Vec<(&'static str, Vec<u64>, u64)>,
    pub migrations_applied: u64,
    pub functions_applied: u64,
    pub fleet: Vec<FleetRun>,
    pub finished: Vec<(FleetRun, &'static str)>,
}

impl DeployMetrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, DeployInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A deploy request of `kind` ended with `outcome` after `us` microseconds.
    pub fn run_finished(&self, kind: &'static str, outcome: &'static str, us: u64) {
        let mut g = self.lock();
        match g.runs.iter_mut().find(|(k, _)| *k == (kind, outcome)) {
            Some((_, n)) => *n += 1,
            None => g.runs.push(((kind, outcome), 1)),
        }
        let i = DEPLOY_BOUNDS_US.partition_point(|&b| b < us);
        match g.durations.iter_mut().find(|(k, _, _)| *k == kind) {
            Some((_, c, s)) => {
                c[i] += 1;
                *s += us;
            }
            None => {
                let mut c = [0; DEPLOY_BOUNDS_US.len() + 1];
                c[i] = 1;
                g.durations.push((kind, c, us));
            }
        }
    }

    /// One database was deployed (dry runs are not counted).
    pub fn applied(&self, migrations: usize, functions: usize) {
        let mut g = self.lock();
        g.migrations_applied += migrations as u64;
        g.functions_applied += functions as u64;
    }

    pub fn fleet_started(&self, run_id: &str, platform: &str, schema: &str, total: usize) {
        self.lock().fleet.push(FleetRun {
            run_id: run_id.to_string(),
            platform: platform.to_string(),
            schema: schema.to_string(),
            total,
            done: 0,
            failed: 0,
            started: Instant::now(),
        });
    }

    pub fn fleet_progress(&self, run_id: &str, done: usize, failed: bool) {
        let mut g = self.lock();
        if let Some(r) = g.fleet.iter_mut().find(|r| r.run_id == run_id) {
            r.done = r.done.max(done);
            r.failed += failed as usize;
        }
    }

    pub fn fleet_finished(&self, run_id: &str, status: &'static str) {
        let mut g = self.lock();
        if let Some(i) = g.fleet.iter().position(|r| r.run_id == run_id) {
            let r = g.fleet.remove(i);
            g.finished.push_back((r, status));
            while g.finished.len() > FINISHED_KEPT {
                g.finished.pop_front();
            }
        }
    }

    pub fn snapshot(&self) -> DeploySnapshot {
        let g = self.lock();
        DeploySnapshot {
            runs: g.runs.clone(),
            durations: g.durations.iter().map(|(k, c, s)| (*k, c.to_vec(), *s)).collect(),
            migrations_applied: g.migrations_applied,
            functions_applied: g.functions_applied,
            fleet: g.fleet.clone(),
            finished: g.finished.iter().cloned().collect(),
        }
    }
}

/// One second of `/call` traffic for the status page.
#[derive(Clone, Debug, Default)]
pub struct Second {
    /// Seconds since the gateway started.
    pub at: u64,
    pub calls: u64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
}

/// The last minute of `/call` traffic, one entry per second, built from successive histogram totals.
#[derive(Default)]
pub struct History {
    inner: Mutex<HistoryInner>,
}

#[derive(Default)]
struct HistoryInner {
    last: Option<HistogramSnapshot>,
    seconds: VecDeque<Second>,
    /// Totals once a second, oldest first, reaching a minute back: what the last minute is the
    /// difference of.
    window: VecDeque<(u64, HistogramSnapshot, calls::CallFigures)>,
}

/// Seconds kept.
pub const HISTORY_SECONDS: usize = 60;

/// `/call` traffic over the last minute (or since start, when that is shorter).
#[derive(Clone, Debug, Default)]
pub struct Minute {
    /// Seconds the figures cover.
    pub seconds: u64,
    pub latency: HistogramSnapshot,
    /// Errors only (see [`calls::CallFigures::errors_since`]).
    pub errors: calls::CallFigures,
}

impl History {
    /// Called once a second with the current totals: `/call` latency and errors by platform.
    pub fn sample(&self, at: u64, now: HistogramSnapshot, errors: calls::CallFigures) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = &g.last {
            let d = now.minus(last);
            let s = Second { at, calls: d.count(), p50_us: d.quantile_us(0.5), p99_us: d.quantile_us(0.99) };
            g.seconds.push_back(s);
            while g.seconds.len() > HISTORY_SECONDS {
                g.seconds.pop_front();
            }
        }
        g.window.push_back((at, now.clone(), errors));
        while g.window.len() > HISTORY_SECONDS + 1 {
            g.window.pop_front();
        }
        g.last = Some(now);
    }

    /// The last minute and the latency quantiles over all of it.
    pub fn read(&self) -> (Vec<Second>, Option<HistogramSnapshot>) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (g.seconds.iter().cloned().collect(), g.last.clone())
    }

    /// The last minute as one span: from the oldest sample kept to the newest. `None` before the
    /// second sample.
    pub fn minute(&self) -> Option<Minute> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (first, last) = (g.window.front()?, g.window.back()?);
        if g.window.len() < 2 {
            return None;
        }
        Some(Minute {
            seconds: last.0.saturating_sub(first.0).max(1),
            latency: last.1.minus(&first.1),
            errors: last.2.errors_since(&first.2),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_take_values_at_their_upper_bound_and_the_rest_goes_to_inf() {
        let h = Histogram::default();
        for us in [0, 100, 101, 10_000_000, 10_000_001] {
            h.observe(us);
        }
        let mut s = HistogramSnapshot::default();
        h.add_to(&mut s);
        assert_eq!(s.counts[0], 2);
        assert_eq!(s.counts[1], 1);
        assert_eq!(s.counts[LATENCY_SLOTS - 2], 1);
        assert_eq!(s.counts[LATENCY_SLOTS - 1], 1);
        assert_eq!(s.sum_us, 100 + 101 + 10_000_000 + 10_000_001);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let h = Histogram::default();
        for _ in 0..99 {
            h.observe(300); // (250, 500]
        }
        h.observe(2_000_000); // (1 s, 2.5 s]
        let mut s = HistogramSnapshot::default();
        h.add_to(&mut s);
        let p50 = s.quantile_us(0.5).unwrap();
        assert!(p50 > 250.0 && p50 <= 500.0, "{p50}");
        let p999 = s.quantile_us(0.999).unwrap();
        assert!(p999 > 1_000_000.0 && p999 <= 2_500_000.0, "{p999}");
        assert_eq!(HistogramSnapshot::default().quantile_us(0.5), None);
    }

    #[test]
    fn pools_beyond_the_top_n_fold_into_other() {
        let snap = |db: &str, calls, idle| PoolSnapshot { database: db.into(), calls, idle, ..Default::default() };
        let folded =
            fold_pools(vec![snap("a", 5, 1), snap("b", 50, 1), snap("a", 10, 2), snap("c", 1, 3), snap("d", 2, 4)], 2);
        let names: Vec<&str> = folded.iter().map(|p| p.database.as_str()).collect();
        assert_eq!(names, ["b", "a", "other"]);
        assert_eq!(folded[1].calls, 15);
        assert_eq!(folded[1].idle, 3);
        assert_eq!(folded[2].idle, 7);
        assert_eq!(fold_pools(vec![snap("x", 1, 1)], 2).len(), 1);
    }

    #[test]
    fn the_minute_spans_the_samples_kept_and_forgets_older_calls() {
        let h = History::default();
        let mut totals = HistogramSnapshot::default();
        assert!(h.minute().is_none());
        totals.counts[0] = 500; // calls long before the minute
        h.sample(0, totals.clone(), calls::CallFigures::default());
        for at in 1..=(HISTORY_SECONDS as u64 + 5) {
            totals.counts[3] += 2;
            h.sample(at, totals.clone(), calls::CallFigures::default());
        }
        let m = h.minute().unwrap();
        assert_eq!(m.seconds, HISTORY_SECONDS as u64);
        assert_eq!(m.latency.count(), 2 * HISTORY_SECONDS as u64);
        assert_eq!(m.latency.counts[0], 0);
    }

    #[test]
    fn fleet_runs_move_from_in_progress_to_finished() {
        let d = DeployMetrics::default();
        d.fleet_started("run-1", "p", "s", 3);
        d.fleet_progress("run-1", 2, true);
        let s = d.snapshot();
        assert_eq!((s.fleet[0].done, s.fleet[0].failed, s.fleet[0].total), (2, 1, 3));
        d.fleet_finished("run-1", "completed_with_errors");
        let s = d.snapshot();
        assert!(s.fleet.is_empty());
        assert_eq!(s.finished[0].1, "completed_with_errors");
    }
}
