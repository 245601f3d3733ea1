//! The health monitor: one thread that asks every server for its WAL position and every replica for
//! its replay position each `REPLICA_CHECK_INTERVAL_MS`, and from those works out each replica's lag
//! and whether reads may go there. Loops only read the verdicts (atomics in [`super::ReplicaHealth`]).
//!
//! Lag is measured on the gateway's clock, not from commit timestamps: the monitor remembers when
//! it first saw the primary at each WAL position, and a replica that has not replayed up to a position
//! is behind by at least the time since the primary was there. An idle primary gives lag 0 (nothing to
//! replay), and no clock of another machine is trusted.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Server, Servers};
use crate::pg::blocking::Client;

/// `16/B374D848` → its 64-bit position.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// When the primary was first seen at each position, oldest first.
#[derive(Debug, Default)]
pub struct Samples {
    seen: VecDeque<(Instant, u64)>,
}

/// Positions older than this are forgotten (a replica further behind is simply "very late").
const KEEP: usize = 4096;

impl Samples {
    pub fn push(&mut self, at: Instant, lsn: u64) {
        if self.seen.back().is_some_and(|&(_, l)| l >= lsn) {
            return;
        }
        if self.seen.len() >= KEEP {
            self.seen.pop_front();
        }
        self.seen.push_back((at, lsn));
    }

    /// How far behind a replica that has replayed up to `replayed` is at `now`: the time since the
    /// primary first stood past that point; zero when it has replayed all the primary had.
    pub fn lag(&self, replayed: u64, now: Instant) -> Duration {
        match self.seen.iter().find(|&&(_, l)| l > replayed) {
            Some(&(at, _)) => now.saturating_duration_since(at),
            None => Duration::ZERO,
        }
    }

    /// Forgets positions every replica has replayed (keeping the newest).
    pub fn trim(&mut self, replayed_by_all: u64) {
        while self.seen.len() > 1 && self.seen.front().is_some_and(|&(_, l)| l <= replayed_by_all) {
            self.seen.pop_front();
        }
    }
}

/// What the monitor keeps per server between rounds.
#[derive(Default)]
struct Watch {
    primary: Option<Client>,
    replicas: Vec<Option<Client>>,
    samples: Samples,
}

/// Starts the monitor thread; it runs for the life of the process.
pub fn start(servers: Arc<Servers>, max_lag: Duration, interval: Duration) -> std::io::Result<()> {
    std::thread::Builder::new().name("server-health".into()).spawn(move || run(&servers, max_lag, interval))?;
    Ok(())
}

fn run(servers: &Servers, max_lag: Duration, interval: Duration) {
    let mut watches: HashMap<String, (Arc<Server>, Watch)> = HashMap::new();
    loop {
        let list = servers.all();
        watches.retain(|name, (s, _)| list.iter().any(|n| &n.def.name == name && Arc::ptr_eq(n, s)));
        for s in list {
            let (_, w) = watches.entry(s.def.name.clone()).or_insert_with(|| (s.clone(), Watch::default()));
            check(servers, &s, w, max_lag, interval);
        }
        std::thread::sleep(interval);
    }
}

fn connect(p: &crate::pg::params::ConnectParams, interval: Duration) -> Option<Client> {
    let mut p = p.clone();
    p.application_name = "stonescriptdb-gateway health".into();
    p.connect_timeout = p.connect_timeout.min(Duration::from_secs(2));
    let mut c = Client::connect(&p).ok()?;
    let _ = c.set_read_timeout(Some(interval.max(Duration::from_secs(2))));
    Some(c)
}

/// One round for one server.
fn check(servers: &Servers, s: &Server, w: &mut Watch, max_lag: Duration, interval: Duration) {
    let base = servers.base();
    if w.primary.as_ref().is_none_or(Client::is_broken) {
        w.primary = connect(&s.params(base), interval);
    }
    let lsn = w.primary.as_mut().and_then(|c| {
        let r = c.simple_query("SELECT pg_catalog.pg_current_wal_lsn()::text").ok()?;
        r.first().and_then(|row| row.first().cloned().flatten()).and_then(|v| parse_lsn(&v))
    });
    s.set_reachable(lsn.is_some());
    if lsn.is_none() {
        w.primary = None;
    }
    if let Some(l) = lsn {
        w.samples.push(Instant::now(), l);
    }
    w.replicas.resize_with(s.replicas.len(), || None);
    let mut least: Option<u64> = None;
    for (i, health) in s.replicas.iter().enumerate() {
        let slot = &mut w.replicas[i];
        if slot.as_ref().is_none_or(Client::is_broken) {
            *slot = s.replica_params(i, base).and_then(|p| connect(&p, interval));
        }
        let Some(c) = slot.as_mut() else {
            health.set(false, None, Some("unreachable".into()));
            continue;
        };
        let row = c
            .simple_query("SELECT pg_catalog.pg_is_in_recovery()::text, pg_catalog.pg_last_wal_replay_lsn()::text")
            .ok()
            .and_then(|r| r.into_iter().next());
        let Some(row) = row else {
            *slot = None;
            health.set(false, None, Some("unreachable".into()));
            continue;
        };
        if row.first().cloned().flatten().as_deref() != Some("true") {
            health.set(false, None, Some("not in recovery (promoted or not a replica)".into()));
            continue;
        }
        let Some(replayed) = row.get(1).cloned().flatten().and_then(|v| parse_lsn(&v)) else {
            health.set(false, None, Some("no replay position".into()));
            continue;
        };
        least = Some(least.map_or(replayed, |l: u64| l.min(replayed)));
        let lag = w.samples.lag(replayed, Instant::now());
        let ms = u64::try_from(lag.as_millis()).unwrap_or(u64::MAX - 1);
        if lag <= max_lag {
            health.set(true, Some(ms), None);
        } else {
            health.set(false, Some(ms), Some(format!("replay lag {ms} ms is over MAX_REPLICA_LAG_MS")));
        }
    }
    if let Some(l) = least {
        w.samples.trim(l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("x"), None);
        assert_eq!(parse_lsn("1/zz"), None);
    }

    #[test]
    fn lag_is_the_time_since_the_primary_passed_the_replay_point() {
        let t0 = Instant::now();
        let mut s = Samples::default();
        s.push(t0, 100);
        s.push(t0 + Duration::from_secs(1), 100);
        s.push(t0 + Duration::from_secs(2), 200);
        s.push(t0 + Duration::from_secs(3), 300);
        let now = t0 + Duration::from_secs(4);
        assert_eq!(s.lag(300, now), Duration::ZERO, "caught up");
        assert_eq!(s.lag(350, now), Duration::ZERO, "ahead of the last sample");
        assert_eq!(s.lag(200, now), Duration::from_secs(1));
        assert_eq!(s.lag(150, now), Duration::from_secs(2));
        assert_eq!(s.lag(50, now), Duration::from_secs(4), "an idle primary's first sighting counts");
        s.trim(200);
        assert_eq!(s.lag(50, now), Duration::from_secs(1), "trimmed positions are forgotten");
        s.trim(1_000);
        assert_eq!(s.seen.len(), 1, "the newest is kept");
    }
}
