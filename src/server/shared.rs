//! What the event loops share, and the threads that serve all of them: the deploy workers, the
//! PostgreSQL health probe, the catalog lookup and sync threads, the CancelRequest thread, the
//! connection limits, the log of databases a deploy changed, and each loop's counts for `/health`.
//! Nothing here is touched per request except two atomic loads (the invalidation epoch, and the
//! client counts when a connection is accepted) and the answering loop's own request counters
//! ([`LoopStats::counters`], written only by that loop).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::notify::{Loops, Message};
use crate::call::budget::Budget;
use crate::call::cancel::Canceller;
use crate::call::engine::Stats;
use crate::catalog::lookup::Lookups;
use crate::config::Config;
use crate::deploy::service::DeployCtx;
use crate::deploy::v2;
use crate::deploy::workers::Workers;
use crate::log;
use crate::metrics::{
    HistogramSnapshot, History, LoopCounters, PoolSnapshot, RequestTotals, ServedCount, ServerHealth, fold_pools,
};
use crate::pg::blocking::Client;
use crate::pg::params::ConnectParams;
use crate::servers::Servers;

/// Databases that deploys changed, in order, numbered by an epoch. A deploy records its databases
/// here before its response is sent, and every loop looks at the epoch before it runs a call, so no
/// call that a client sends after seeing the response can use a statement prepared before the deploy.
pub struct Invalidations {
    epoch: AtomicU64,
    log: Mutex<VecDeque<(u64, String)>>,
}

/// Entries kept; a loop that fell further behind drops all its cached statements instead.
const INVALIDATIONS_KEPT: usize = 4096;

/// What a loop must drop after the epoch it last saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Stale {
    Databases(Vec<String>),
    /// The log no longer reaches back that far.
    Everything,
}

impl Default for Invalidations {
    fn default() -> Self {
        Invalidations { epoch: AtomicU64::new(0), log: Mutex::new(VecDeque::new()) }
    }
}

impl Invalidations {
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn publish(&self, databases: &[String]) {
        if databases.is_empty() {
            return;
        }
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        for db in databases {
            let e = self.epoch.load(Ordering::Relaxed) + 1;
            log.push_back((e, db.clone()));
            while log.len() > INVALIDATIONS_KEPT {
                log.pop_front();
            }
            // Published after the entry is in the log, under the lock: a reader that sees the new
            // epoch finds its entry.
            self.epoch.store(e, Ordering::Release);
        }
    }

    /// What changed after epoch `seen`, and the epoch it brings the reader to.
    pub fn since(&self, seen: u64) -> (Stale, u64) {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.epoch.load(Ordering::Acquire);
        match log.front() {
            Some((first, _)) if *first <= seen + 1 => {
                let dbs = log.iter().filter(|(e, _)| *e > seen).map(|(_, d)| d.clone()).collect();
                (Stale::Databases(dbs), now)
            }
            _ if now == seen => (Stale::Databases(Vec::new()), now),
            _ => (Stale::Everything, now),
        }
    }
}

/// One loop's counts, published by the loop at the end of each turn.
#[derive(Default)]
pub struct LoopStats {
    pools: AtomicUsize,
    connections: AtomicUsize,
    idle: AtomicUsize,
    waiting: AtomicUsize,
    pipelined: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    /// See [`crate::metrics::LoopTraffic`], in its field order.
    traffic: [AtomicU64; 5],
    /// Client connections this loop serves (the accepting loop counts a hand-over at once).
    pub clients: AtomicUsize,
    /// This loop's CPU share over its last janitor turn, per mille of one core (see
    /// [`super::balance`]).
    pub load: AtomicU32,
    /// Client connections this loop handed to another (packing or spilling).
    pub moves: AtomicU64,
    /// Requests this loop answered, `/call` latency and errors; only this loop writes them.
    pub counters: LoopCounters,
    /// This loop's pools as of its last janitor turn (every 100 ms): a lock taken ten times a
    /// second by the loop and once per scrape, never per request.
    pub pools_snapshot: Mutex<Vec<PoolSnapshot>>,
    /// This loop's calls per server and replica, as of its last janitor turn.
    pub served_snapshot: Mutex<Vec<ServedCount>>,
}

impl LoopStats {
    pub fn publish(&self, s: &Stats) {
        self.publish_counts(s);
        self.idle.store(s.idle, Ordering::Relaxed);
        self.waiting.store(s.waiting, Ordering::Relaxed);
    }

    /// The counts every turn can afford (see `CallEngine::counts`); idle and waiting stay as the
    /// last full publish left them.
    pub fn publish_counts(&self, s: &Stats) {
        self.pools.store(s.pools, Ordering::Relaxed);
        self.connections.store(s.connections, Ordering::Relaxed);
        self.pipelined.store(s.pipelined, Ordering::Relaxed);
        self.connects.store(s.connects, Ordering::Relaxed);
        self.connect_failures.store(s.connect_failures, Ordering::Relaxed);
        let t = &s.traffic;
        let v = [t.closes, t.room_requests, t.room_closes, t.slot_handovers, t.calls_forwarded];
        for (a, v) in self.traffic.iter().zip(v) {
            a.store(v, Ordering::Relaxed);
        }
    }

    pub fn publish_pools(&self, pools: Vec<PoolSnapshot>) {
        *self.pools_snapshot.lock().unwrap_or_else(|p| p.into_inner()) = pools;
    }

    pub fn publish_served(&self, served: Vec<ServedCount>) {
        *self.served_snapshot.lock().unwrap_or_else(|p| p.into_inner()) = served;
    }

    fn read(&self) -> Stats {
        Stats {
            pools: self.pools.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            idle: self.idle.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            pipelined: self.pipelined.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            traffic: {
                let [closes, room_requests, room_closes, slot_handovers, calls_forwarded] =
                    self.traffic.each_ref().map(|a| a.load(Ordering::Relaxed));
                crate::metrics::LoopTraffic { closes, room_requests, room_closes, slot_handovers, calls_forwarded }
            },
        }
    }
}

/// How often the probe asks while PostgreSQL answers, and while it does not: one connect attempt per
/// tenth of a second while it is away is nothing for a server, and its return is then seen (and the
/// pools' reconnect backoffs ended, see `App::janitor`) within that tenth, not after a backoff that
/// grew while it was away (issue 10: a 130 ms restart cost seconds of 503s).
const PROBE_EVERY_UP: Duration = Duration::from_secs(1);
const PROBE_EVERY_DOWN: Duration = Duration::from_millis(100);

/// Whether PostgreSQL answers, checked off the loops by a small thread.
pub struct HealthProbe {
    pub ok: Arc<AtomicBool>,
    /// How many times the probe found PostgreSQL answering again after a failed round. Counted, not
    /// only flagged, so that a loop whose janitor never saw `ok` false (an outage shorter than its
    /// pass) still learns of it.
    pub recoveries: Arc<AtomicU64>,
}

impl HealthProbe {
    fn start(params: ConnectParams, stop: Arc<AtomicBool>) -> HealthProbe {
        let ok = Arc::new(AtomicBool::new(false));
        let ok2 = ok.clone();
        let recoveries = Arc::new(AtomicU64::new(0));
        let recoveries2 = recoveries.clone();
        let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
        let _ = std::thread::Builder::new().name("pg-health".into()).spawn(move || {
            let mut client: Option<Client> = None;
            let mut was = None;
            let target = params.target();
            while !stop.load(Ordering::Relaxed) {
                let mut reason = String::new();
                let good = match client.as_mut() {
                    Some(c) if !c.is_broken() => match c.simple_query("SELECT 1") {
                        Ok(_) => true,
                        Err(e) => {
                            reason = e.to_string();
                            false
                        }
                    },
                    _ => match Client::connect(&params) {
                        Ok(mut c) => {
                            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                            let r = match c.simple_query("SELECT 1") {
                                Ok(_) => true,
                                Err(e) => {
                                    reason = e.to_string();
                                    false
                                }
                            };
                            client = Some(c);
                            r
                        }
                        Err(e) => {
                            reason = e.to_string();
                            false
                        }
                    },
                };
                if !good {
                    client = None;
                }
                ok2.store(good, Ordering::Relaxed);
                if good && was == Some(false) {
                    recoveries2.fetch_add(1, Ordering::Release);
                }
                let _ = first_tx.send(());
                if was != Some(good) {
                    if good {
                        log::info("postgres reachable", &[("server", &target)]);
                    } else {
                        log::warn("postgres unreachable", &[("server", &target), ("reason", &reason)]);
                    }
                    was = Some(good);
                }
                let pause = if good { PROBE_EVERY_UP } else { PROBE_EVERY_DOWN };
                for _ in 0..pause.as_millis().div_ceil(100) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        // A gateway that just started should not report "degraded" only because the first probe has
        // not finished; wait for it briefly.
        let _ = first_rx.recv_timeout(Duration::from_secs(1));
        HealthProbe { ok, recoveries }
    }
}

/// Everything the loops share.
pub struct Shared {
    pub cfg: Arc<Config>,
    pub loops: Loops,
    pub started: Instant,
    pub health: HealthProbe,
    pub workers: Mutex<Workers>,
    pub lookups: Lookups,
    pub budget: Arc<Budget>,
    pub canceller: Canceller,
    pub invalidations: Invalidations,
    pub stats: Vec<LoopStats>,
    pub deploy: DeployCtx,
    /// Every PostgreSQL server and replica (also inside `deploy`).
    pub servers: Arc<Servers>,
    /// The last minute of `/call` traffic, sampled every second (status page).
    pub history: Arc<History>,
    /// Stops the helper threads at shutdown.
    pub stop: Arc<AtomicBool>,
    /// Request body bytes being received over all loops (`MAX_UPLOADS_IN_FLIGHT_BYTES`).
    pub uploads: Arc<AtomicUsize>,
    /// Open client connections by peer address (`MAX_CONNECTIONS_PER_ADDRESS`); only connects and
    /// closes touch it.
    per_address: Mutex<HashMap<std::net::IpAddr, usize>>,
}

impl Shared {
    /// Starts the shared threads. `loops` must already address every loop.
    pub fn start(cfg: Arc<Config>, loops: Loops) -> std::io::Result<Arc<Shared>> {
        let params = cfg.db.connect_params();
        let stop = Arc::new(AtomicBool::new(false));
        let servers = Servers::new(params.clone(), cfg.servers.default_replicas.clone());
        crate::servers::health::start(servers.clone(), cfg.servers.max_lag, cfg.servers.check_interval)?;
        let deploy = DeployCtx::with_servers(cfg.clone(), servers.clone());
        let health = HealthProbe::start(params.clone(), stop.clone());
        start_catalog_sync(deploy.clone(), loops.clone(), stop.clone());
        let lookups = {
            let loops = loops.clone();
            Lookups::start(
                params.clone(),
                cfg.deploy.catalog_db.clone(),
                servers.clone(),
                Box::new(move |r| {
                    // Every loop learns the answer; the ones with calls waiting on it run them.
                    let r = Arc::new(r);
                    loops.send_all(|| Message::Resolved(r.clone()));
                }),
            )?
        };
        let n = loops.len();
        let history = Arc::new(History::default());
        let shared = Arc::new(Shared {
            budget: Budget::with_server_cap(
                cfg.pool.max_total,
                cfg.pool.max_per_pool,
                cfg.pool.max_per_platform,
                cfg.pool.max_per_server,
            ),
            canceller: Canceller::start()?,
            workers: Mutex::new(Workers::new(cfg.deploy.workers, cfg.deploy.queue)?),
            started: Instant::now(),
            stats: (0..n).map(|_| LoopStats::default()).collect(),
            invalidations: Invalidations::default(),
            history,
            health,
            lookups,
            deploy,
            stop,
            loops,
            uploads: Arc::new(AtomicUsize::new(0)),
            servers,
            per_address: Mutex::new(HashMap::new()),
            cfg,
        });
        start_sampler(Arc::downgrade(&shared));
        Ok(shared)
    }

    /// Request counters summed over every loop.
    pub fn request_totals(&self) -> RequestTotals {
        let mut t = RequestTotals::default();
        for s in &self.stats {
            s.counters.add_to(&mut t);
        }
        t
    }

    /// `/call` latency summed over every loop.
    pub fn call_latency(&self) -> HistogramSnapshot {
        let mut h = HistogramSnapshot::default();
        for s in &self.stats {
            s.counters.add_call_latency(&mut h);
        }
        h
    }

    /// `/call` figures by platform (and by function when `functions`), summed over every loop.
    pub fn call_figures(&self, functions: bool) -> crate::metrics::calls::CallFigures {
        let mut f = crate::metrics::calls::CallFigures::default();
        for s in &self.stats {
            s.counters.calls.add_to(&mut f, functions);
        }
        f
    }

    /// Every loop's pools as last published, summed per database and folded to the top-N.
    pub fn pools(&self) -> Vec<PoolSnapshot> {
        let mut all = Vec::new();
        for s in &self.stats {
            all.extend(s.pools_snapshot.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned());
        }
        fold_pools(all, self.cfg.metrics_top_databases)
    }

    /// Calls per server and replica, summed over every loop.
    pub fn served(&self) -> Vec<ServedCount> {
        let mut all = Vec::new();
        for s in &self.stats {
            crate::metrics::fold_served(&mut all, &s.served_snapshot.lock().unwrap_or_else(|p| p.into_inner()));
        }
        all
    }

    /// Every server and replica as the health monitor last saw it.
    pub fn server_health(&self) -> Vec<ServerHealth> {
        let mut out = Vec::new();
        for s in self.servers.all() {
            out.push(ServerHealth {
                server: s.def.name.clone(),
                replica: String::new(),
                up: s.reachable(),
                lag_ms: None,
            });
            for r in &s.replicas {
                out.push(ServerHealth {
                    server: s.def.name.clone(),
                    replica: r.endpoint.label(),
                    up: r.usable(),
                    lag_ms: r.lag_ms(),
                });
            }
        }
        out
    }

    /// Counts summed over every loop.
    pub fn totals(&self) -> Stats {
        let mut t = Stats::default();
        for s in &self.stats {
            let s = s.read();
            t.pools += s.pools;
            t.connections += s.connections;
            t.idle += s.idle;
            t.waiting += s.waiting;
            t.pipelined += s.pipelined;
            t.connects += s.connects;
            t.connect_failures += s.connect_failures;
            t.traffic.add(&s.traffic);
        }
        t
    }

    /// Client connections over all loops.
    pub fn clients(&self) -> usize {
        self.stats.iter().map(|s| s.clients.load(Ordering::Relaxed)).sum()
    }

    /// Every loop's load (per mille of a core) and client connections, in loop order.
    pub fn loads(&self) -> (Vec<u32>, Vec<usize>) {
        self.stats.iter().map(|s| (s.load.load(Ordering::Relaxed), s.clients.load(Ordering::Relaxed))).unzip()
    }

    /// The loop a new client connection goes to: see [`super::balance::place`], or the one with
    /// the fewest clients with `CLIENT_PLACEMENT=spread`.
    pub fn place(&self) -> usize {
        let clients = |k: usize| self.stats[k].clients.load(Ordering::Relaxed);
        if !self.cfg.pack_loops {
            return (0..self.stats.len()).min_by_key(|&k| clients(k)).unwrap_or(0);
        }
        let at = |k: usize| (self.stats[k].load.load(Ordering::Relaxed), clients(k));
        super::balance::place(self.stats.len(), at, self.cfg.pack_below_permille)
    }

    /// Client connections handed from one loop to another so far.
    pub fn client_moves(&self) -> u64 {
        self.stats.iter().map(|s| s.moves.load(Ordering::Relaxed)).sum()
    }

    /// Counts a client connection from `ip`; false (nothing counted) when that address already has
    /// `MAX_CONNECTIONS_PER_ADDRESS` (0: no cap).
    pub fn take_address(&self, ip: std::net::IpAddr) -> bool {
        let max = self.cfg.limits.max_connections_per_address;
        let mut m = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// A client connection from `ip` closed.
    pub fn release_address(&self, ip: std::net::IpAddr) {
        let mut m = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }

    /// The loop other than `id` with the most PostgreSQL connections.
    pub fn fullest_besides(&self, id: usize) -> Option<usize> {
        self.stats
            .iter()
            .enumerate()
            .filter(|(i, s)| *i != id && s.connections.load(Ordering::Relaxed) > 0)
            .max_by_key(|(_, s)| s.connections.load(Ordering::Relaxed))
            .map(|(i, _)| i)
    }

    /// After the loops have stopped: deploys get until `deadline`, helper threads end.
    pub fn shutdown(&self, deadline: Instant) {
        self.stop.store(true, Ordering::Relaxed);
        self.workers.lock().unwrap_or_else(|p| p.into_inner()).shutdown(deadline);
    }
}

/// Once a second: the `/call` latency and error totals go into the one-minute history. Holds only a weak
/// reference, so it ends with the server.
fn start_sampler(shared: std::sync::Weak<Shared>) {
    let _ = std::thread::Builder::new().name("stats-sampler".into()).spawn(move || {
        loop {
            let Some(s) = shared.upgrade() else { return };
            if s.stop.load(Ordering::Relaxed) {
                return;
            }
            s.history.sample(s.started.elapsed().as_secs(), s.call_latency(), s.call_figures(false));
            drop(s);
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

/// Sends who owns which database and every platform's keys to every loop.
pub fn send_catalog_state(cat: &mut crate::catalog::Catalog, loops: &Loops) {
    if let Ok(list) = cat.call_owners(None) {
        let list = Arc::new(list);
        loops.send_all(|| Message::Owners(list.clone()));
    }
    if let Ok(list) = cat.platform_keys(None) {
        let mut by: HashMap<String, Vec<crate::security::keys::StoredKey>> = HashMap::new();
        for (p, k) in list {
            by.entry(p).or_default().push(k);
        }
        let keys = Arc::new(by.into_iter().collect::<Vec<_>>());
        loops.send_all(|| Message::Keys { keys: keys.clone(), complete: true });
    }
}

/// Once at start: marks runs of gateways that stopped mid-run as interrupted, and brings databases
/// deployed before platforms had roles under their roles. Then every 15 s: hands owners and keys to
/// the loops, so instances sharing a catalog learn each other's registrations.
fn start_catalog_sync(ctx: DeployCtx, loops: Loops, stop: Arc<AtomicBool>) {
    let _ = std::thread::Builder::new().name("catalog-sync".into()).spawn(move || {
        let mut marked = false;
        let mut isolated = false;
        loop {
            if !marked {
                match v2::mark_interrupted_runs(&ctx) {
                    Ok(n) => {
                        marked = true;
                        let _ = crate::deploy::service::clean_unfinished_creations(&ctx)
                            .map_err(|e| log::warn("unfinished database creations not cleaned up", &[("error", &e)]));
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
                        // On a thread of its own: it may open a connection per database, and the
                        // owners must reach the loops meanwhile.
                        let tells = ctx.clone();
                        let _ = std::thread::Builder::new()
                            .name("upstream-tells".into())
                            .spawn(move || crate::deploy::startup::startup_tells(&tells));
                    }
                    Err(e) => log::debug("isolation pass postponed", &[("error", &e)]),
                }
            }
            if let Ok(mut cat) = ctx.catalog() {
                // Servers other gateways added, or whose state changed.
                match cat.servers() {
                    Ok(defs) => ctx.servers.replace(defs),
                    Err(e) => log::debug("servers not read from the catalog", &[("error", &e)]),
                }
                send_catalog_state(&mut cat, &loops);
                cat.keep();
            }
            for _ in 0..150 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_reach_readers_in_order_and_a_reader_far_behind_drops_everything() {
        let inv = Invalidations::default();
        let (s, e0) = inv.since(0);
        assert_eq!((s, e0), (Stale::Databases(vec![]), 0));
        inv.publish(&["a".into(), "b".into()]);
        let (s, e1) = inv.since(e0);
        assert_eq!(s, Stale::Databases(vec!["a".into(), "b".into()]));
        assert_eq!(e1, 2);
        inv.publish(&["c".into()]);
        assert_eq!(inv.since(e1).0, Stale::Databases(vec!["c".into()]));
        for i in 0..INVALIDATIONS_KEPT {
            inv.publish(&[format!("d{i}")]);
        }
        assert_eq!(inv.since(e1).0, Stale::Everything);
        let latest = inv.epoch();
        assert_eq!(inv.since(latest).0, Stale::Databases(vec![]));
    }
}
