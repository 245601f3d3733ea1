//! The connection limits shared by every event loop: `MAX_TOTAL_CONNECTIONS` over all pools and
//! `MAX_CONNECTIONS_PER_POOL` per pool, `MAX_CONNECTIONS_PER_PLATFORM` per platform and
//! `MAX_CONNECTIONS_PER_SERVER` per PostgreSQL server or replica, each exact in sum over the loops. A loop takes a [`Permit`]
//! before it connects and the permit gives the slot back when the connection is dropped, so no path
//! that ends a connection can forget to. Also `POOL_MAX_WAITING` per pool, over all loops.
//!
//! Only connects, closes and queue changes touch these atomics; a call that finds an idle connection
//! in its own loop never does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What one pool (`database@role`) holds over all loops.
#[derive(Debug, Default)]
pub struct PoolShare {
    /// Connections in any state, Closing included (their backends may not have exited yet).
    conns: AtomicUsize,
    /// Calls waiting for a connection.
    waiting: AtomicUsize,
    /// Bit `i` set while loop `i` (below 64) holds connections of this pool: where a loop without
    /// any, and without a quota of the pool's cap, hands its calls when the cap is taken.
    holders: AtomicU64,
    /// Bit `i` set while loop `i` (below 64) has calls waiting for this pool and holds fewer of its
    /// connections than its quota (see [`quota`]): loops over their quota give connections back to
    /// it as they finish calls, and take no free slot themselves meanwhile.
    short: AtomicU64,
    /// Connections of every pool of the same platform (role), for `MAX_CONNECTIONS_PER_PLATFORM`.
    platform: Arc<AtomicUsize>,
    /// Calls waiting in every pool of the same platform, for `MAX_WAITING_PER_PLATFORM`.
    platform_waiting: Arc<AtomicUsize>,
    /// Connections of every pool on the same server (or replica), for `MAX_CONNECTIONS_PER_SERVER`.
    server: Arc<AtomicUsize>,
}

impl PoolShare {
    pub fn conns(&self) -> usize {
        self.conns.load(Ordering::Acquire)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Records whether loop `id` holds connections of this pool.
    pub fn set_holder(&self, id: usize, holds: bool) {
        if id >= 64 {
            return;
        }
        if holds {
            self.holders.fetch_or(1 << id, Ordering::AcqRel);
        } else {
            self.holders.fetch_and(!(1u64 << id), Ordering::AcqRel);
        }
    }

    /// A loop other than `id` that holds connections of this pool, the next one after `id` first (so
    /// that several loops without connections do not all pick the same one).
    pub fn holder_besides(&self, id: usize) -> Option<usize> {
        pick_after(self.holders.load(Ordering::Acquire), id)
    }

    /// Records whether loop `id` is short of its quota of this pool with calls waiting; true when
    /// that changed.
    pub fn set_short(&self, id: usize, short: bool) -> bool {
        if id >= 64 {
            return false;
        }
        let bit = 1u64 << id;
        let before = if short {
            self.short.fetch_or(bit, Ordering::AcqRel)
        } else {
            self.short.fetch_and(!bit, Ordering::AcqRel)
        };
        (before & bit != 0) != short
    }

    /// A loop other than `id` short of its quota of this pool, the next one after `id` first.
    pub fn short_besides(&self, id: usize) -> Option<usize> {
        pick_after(self.short.load(Ordering::Acquire), id)
    }

    /// Records a change in the number of this loop's waiters.
    pub fn add_waiting(&self, delta: isize) {
        for n in [&self.waiting, &*self.platform_waiting] {
            if delta >= 0 {
                n.fetch_add(delta as usize, Ordering::AcqRel);
            } else {
                n.fetch_sub(delta.unsigned_abs(), Ordering::AcqRel);
            }
        }
    }

    /// Calls waiting in all pools of this pool's platform.
    pub fn platform_waiting(&self) -> usize {
        self.platform_waiting.load(Ordering::Acquire)
    }
}

/// The set bit of `mask` other than `id`'s that comes next after `id`, wrapping around.
fn pick_after(mask: u64, id: usize) -> Option<usize> {
    let mask = mask & !(1u64.checked_shl(id as u32).unwrap_or(0));
    if mask == 0 {
        return None;
    }
    let shift = ((id + 1) % 64) as u32;
    let rotated = mask.rotate_right(shift);
    Some((rotated.trailing_zeros() + shift) as usize % 64)
}

/// Loop `id`'s quota of a cap of `cap` connections shared by `loops` loops: an even split, the
/// remainder to the first loops, so the quotas add up to the cap (a loop's quota is 0 when the
/// cap is smaller than the number of loops).
pub fn quota(cap: usize, loops: usize, id: usize) -> usize {
    let loops = loops.max(1);
    cap / loops + usize::from(id < cap % loops)
}

/// Why a connection could not be opened now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `MAX_TOTAL_CONNECTIONS` is reached.
    Total,
    /// `MAX_CONNECTIONS_PER_POOL` is reached for this pool.
    Pool,
    /// `MAX_CONNECTIONS_PER_PLATFORM` is reached for this pool's platform.
    Platform,
    /// `MAX_CONNECTIONS_PER_SERVER` is reached for this pool's server.
    Server,
}

/// A platform's connections and its waiting calls, over all its pools and loops.
type PlatformCounts = (Arc<AtomicUsize>, Arc<AtomicUsize>);

/// The shared limits.
#[derive(Debug)]
pub struct Budget {
    max_total: usize,
    max_per_pool: usize,
    max_per_platform: usize,
    max_per_server: usize,
    total: AtomicUsize,
    /// Pool key → its share; entries are created on first use and kept (a few bytes per pool).
    shares: Mutex<HashMap<String, Arc<PoolShare>>>,
    /// Platform (role) → its connections and its waiting calls over all its pools.
    platforms: Mutex<HashMap<String, PlatformCounts>>,
    /// Server (or replica) → its connections over all pools.
    servers: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

/// One connection slot, held by the connection for its whole life.
#[derive(Debug)]
pub struct Permit {
    budget: Arc<Budget>,
    share: Arc<PoolShare>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.share.conns.fetch_sub(1, Ordering::AcqRel);
        self.share.platform.fetch_sub(1, Ordering::AcqRel);
        self.share.server.fetch_sub(1, Ordering::AcqRel);
        self.budget.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One unit of `MAX_TOTAL_CONNECTIONS` held for a loop that asked for room: a loop that closes a
/// connection for another hands its slot over as this, so no third loop can take it in between.
/// Dropping it gives the unit back.
#[derive(Debug)]
pub struct TotalSlot {
    budget: Arc<Budget>,
}

impl Drop for TotalSlot {
    fn drop(&mut self) {
        self.budget.total.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Permit {
    /// Gives back what the connection held of its pool, platform and server, and keeps its unit of
    /// the total for another connection.
    pub fn into_total_slot(self) -> TotalSlot {
        let slot = TotalSlot { budget: self.budget.clone() };
        self.share.conns.fetch_sub(1, Ordering::AcqRel);
        self.share.platform.fetch_sub(1, Ordering::AcqRel);
        self.share.server.fetch_sub(1, Ordering::AcqRel);
        // The total stays taken: it moved into `slot`.
        std::mem::forget(self);
        slot
    }
}

/// Adds one to `n` if it stays at or below `max`.
fn take(n: &AtomicUsize, max: usize) -> bool {
    n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| (v < max).then_some(v + 1)).is_ok()
}

impl Budget {
    pub fn new(max_total: usize, max_per_pool: usize, max_per_platform: usize) -> Arc<Budget> {
        Budget::with_server_cap(max_total, max_per_pool, max_per_platform, max_total)
    }

    pub fn with_server_cap(
        max_total: usize,
        max_per_pool: usize,
        max_per_platform: usize,
        max_per_server: usize,
    ) -> Arc<Budget> {
        Arc::new(Budget {
            max_total,
            max_per_pool,
            max_per_platform,
            max_per_server,
            total: AtomicUsize::new(0),
            shares: Mutex::new(HashMap::new()),
            platforms: Mutex::new(HashMap::new()),
            servers: Mutex::new(HashMap::new()),
        })
    }

    /// The share of pool `key` of `platform` on the default server (created when first asked for).
    pub fn share(&self, key: &str, platform: &str) -> Arc<PoolShare> {
        self.share_on(key, platform, crate::servers::DEFAULT_SERVER)
    }

    /// The share of pool `key` of `platform` on `server` (a server name, or a replica's key).
    pub fn share_on(&self, key: &str, platform: &str, server: &str) -> Arc<PoolShare> {
        let mut m = self.shares.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = m.get(key) {
            return s.clone();
        }
        let (platform, platform_waiting) = {
            let mut p = self.platforms.lock().unwrap_or_else(|p| p.into_inner());
            p.entry(platform.to_string()).or_default().clone()
        };
        let server =
            self.servers.lock().unwrap_or_else(|p| p.into_inner()).entry(server.to_string()).or_default().clone();
        let s = Arc::new(PoolShare { platform, platform_waiting, server, ..PoolShare::default() });
        m.insert(key.to_string(), s.clone());
        s
    }

    /// Takes a slot in the pool, its platform and the total, or says which limit is reached.
    pub fn try_take(self: &Arc<Self>, share: &Arc<PoolShare>) -> Result<Permit, Full> {
        if !take(&share.conns, self.max_per_pool) {
            return Err(Full::Pool);
        }
        if !take(&share.platform, self.max_per_platform) {
            share.conns.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::Platform);
        }
        // The total before the server: with one server (cap = total by default) a full gateway is
        // `Total`, which other loops help with.
        if !take(&self.total, self.max_total) {
            share.conns.fetch_sub(1, Ordering::AcqRel);
            share.platform.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::Total);
        }
        if !take(&share.server, self.max_per_server) {
            share.conns.fetch_sub(1, Ordering::AcqRel);
            share.platform.fetch_sub(1, Ordering::AcqRel);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::Server);
        }
        Ok(Permit { budget: self.clone(), share: share.clone() })
    }

    /// Like [`Budget::try_take`] with the total already held in `slot`; the slot comes back when
    /// another limit is reached.
    pub fn take_with(self: &Arc<Self>, share: &Arc<PoolShare>, slot: TotalSlot) -> Result<Permit, (Full, TotalSlot)> {
        if !take(&share.conns, self.max_per_pool) {
            return Err((Full::Pool, slot));
        }
        if !take(&share.platform, self.max_per_platform) {
            share.conns.fetch_sub(1, Ordering::AcqRel);
            return Err((Full::Platform, slot));
        }
        if !take(&share.server, self.max_per_server) {
            share.conns.fetch_sub(1, Ordering::AcqRel);
            share.platform.fetch_sub(1, Ordering::AcqRel);
            return Err((Full::Server, slot));
        }
        std::mem::forget(slot);
        Ok(Permit { budget: self.clone(), share: share.clone() })
    }

    /// Whether the platform of `share` holds all the connections it may.
    pub fn platform_full(&self, share: &PoolShare) -> bool {
        share.platform.load(Ordering::Acquire) >= self.max_per_platform
    }

    /// Whether the server of `share` holds all the connections it may.
    pub fn server_full(&self, share: &PoolShare) -> bool {
        share.server.load(Ordering::Acquire) >= self.max_per_server
    }

    /// Connections held over all loops.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    pub fn max_total(&self) -> usize {
        self.max_total
    }

    pub fn max_per_pool(&self) -> usize {
        self.max_per_pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_permits_give_back() {
        let b = Budget::new(3, 2, 3);
        assert_eq!((b.max_total(), b.max_per_pool()), (3, 2), "the caps the loops read (quotas, lending)");
        let a = b.share("a@r", "r");
        let c = b.share("c@q", "q");
        let p1 = b.try_take(&a).unwrap();
        let p2 = b.try_take(&a).unwrap();
        assert_eq!(b.try_take(&a).unwrap_err(), Full::Pool);
        let p3 = b.try_take(&c).unwrap();
        assert_eq!(b.try_take(&c).unwrap_err(), Full::Total);
        // A refusal by the total leaves the pool's count as it was.
        assert_eq!(c.conns(), 1);
        assert_eq!(b.total(), 3);
        drop(p1);
        assert_eq!((a.conns(), b.total()), (1, 2));
        let p4 = b.try_take(&c).unwrap();
        drop((p2, p3, p4));
        assert_eq!((a.conns(), c.conns(), b.total()), (0, 0, 0));
    }

    #[test]
    fn many_threads_never_exceed_the_limits() {
        let b = Budget::new(8, 5, 8);
        let shares: Vec<_> = (0..3).map(|i| b.share(&format!("db{i}@r"), "r")).collect();
        let peak = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for t in 0..8 {
                let (b, shares, peak) = (b.clone(), shares.clone(), peak.clone());
                s.spawn(move || {
                    for i in 0..2000 {
                        let share = &shares[(t + i) % 3];
                        if let Ok(p) = b.try_take(share) {
                            peak.fetch_max(b.total(), Ordering::Relaxed);
                            assert!(share.conns() <= 5);
                            drop(p);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 8);
        assert_eq!(b.total(), 0);
    }

    #[test]
    fn holders_are_found_starting_after_the_asking_loop() {
        let s = PoolShare::default();
        assert_eq!(s.holder_besides(0), None);
        s.set_holder(2, true);
        s.set_holder(5, true);
        assert_eq!(s.holder_besides(0), Some(2));
        assert_eq!(s.holder_besides(2), Some(5), "not itself");
        assert_eq!(s.holder_besides(3), Some(5));
        assert_eq!(s.holder_besides(6), Some(2), "wraps around");
        s.set_holder(5, false);
        assert_eq!(s.holder_besides(2), None);
        s.set_holder(63, true);
        assert_eq!(s.holder_besides(2), Some(63));
        s.set_holder(70, true);
        assert_eq!(s.holder_besides(63), Some(2), "loops past 63 are not tracked");
    }

    #[test]
    fn quotas_add_up_to_the_cap() {
        for (cap, loops) in [(64, 8), (16, 3), (2, 4), (0, 2), (7, 1), (280, 16)] {
            let q: Vec<usize> = (0..loops).map(|i| quota(cap, loops, i)).collect();
            assert_eq!(q.iter().sum::<usize>(), cap, "{cap} over {loops}: {q:?}");
            assert!(q.iter().max().unwrap() - q.iter().min().unwrap() <= 1, "{q:?}");
        }
        assert_eq!((quota(2, 4, 1), quota(2, 4, 2)), (1, 0));
    }

    #[test]
    fn short_loops_are_found_and_flags_report_changes() {
        let s = PoolShare::default();
        assert!(s.set_short(3, true));
        assert!(!s.set_short(3, true), "no change");
        assert_eq!(s.short_besides(3), None, "not itself");
        assert_eq!(s.short_besides(0), Some(3));
        assert!(s.set_short(3, false));
        assert_eq!(s.short_besides(0), None);
    }

    #[test]
    fn waiting_counts_add_up() {
        let b = Budget::new(1, 1, 1);
        let s = b.share("x", "r");
        s.add_waiting(3);
        s.add_waiting(-2);
        assert_eq!(s.waiting(), 1);
        assert!(Arc::ptr_eq(&s, &b.share("x", "r")));
        let other_pool_same_platform = b.share("y", "r");
        other_pool_same_platform.add_waiting(2);
        assert_eq!((s.platform_waiting(), other_pool_same_platform.waiting()), (3, 2));
    }

    #[test]
    fn a_slot_handed_over_keeps_the_total_and_frees_the_rest() {
        let b = Budget::new(1, 1, 1);
        let (a, c) = (b.share("a@r", "r"), b.share("c@q", "q"));
        let slot = b.try_take(&a).unwrap().into_total_slot();
        assert_eq!((a.conns(), b.total()), (0, 1), "the pool's count is free, the total is held");
        assert_eq!(b.try_take(&c).unwrap_err(), Full::Total, "nobody else can take the slot");
        let p = b.take_with(&c, slot).unwrap();
        assert_eq!((c.conns(), b.total()), (1, 1));
        drop(p);
        assert_eq!(b.total(), 0);
        let slot = b.try_take(&a).unwrap().into_total_slot();
        let _held = b.try_take(&a).map(|_| ()).unwrap_err();
        drop(slot);
        assert_eq!((a.conns(), b.total()), (0, 0), "a slot nobody used gives the unit back");
    }

    #[test]
    fn one_server_holds_at_most_its_cap() {
        let b = Budget::with_server_cap(10, 5, 10, 3);
        let (a, c, other) =
            (b.share_on("s1/a@r", "r", "s1"), b.share_on("s1/c@q", "q", "s1"), b.share_on("s2/a@r", "r", "s2"));
        let held: Vec<_> = [&a, &a, &c].iter().map(|s| b.try_take(s).unwrap()).collect();
        assert_eq!(b.try_take(&c).unwrap_err(), Full::Server);
        assert_eq!(
            (c.conns(), c.platform.load(Ordering::Acquire)),
            (1, 1),
            "a refusal by the server leaves the rest as it was"
        );
        assert!(b.server_full(&a));
        let o = b.try_take(&other).expect("another server still gets a connection");
        drop(held);
        assert!(!b.server_full(&a));
        assert_eq!(b.total(), 1);
        drop(o);
        assert_eq!(other.server.load(Ordering::Acquire), 0);
    }

    #[test]
    fn one_platform_cannot_take_every_connection() {
        let b = Budget::new(10, 5, 3);
        let (a1, a2, other) = (b.share("a1@ra", "ra"), b.share("a2@ra", "ra"), b.share("o@rb", "rb"));
        let held: Vec<_> = [&a1, &a1, &a2].iter().map(|s| b.try_take(s).unwrap()).collect();
        assert_eq!(b.try_take(&a2).unwrap_err(), Full::Platform);
        assert_eq!(a2.conns(), 1, "a refusal by the platform leaves the pool's count as it was");
        assert!(b.platform_full(&a1));
        assert!(b.try_take(&other).is_ok(), "another platform still gets a connection");
        drop(held);
        assert!(!b.platform_full(&a1));
    }
}
