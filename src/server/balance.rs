//! Which event loop serves a client connection: new ones go to the first loop with CPU to spare,
//! light loops hand their idle keep-alive connections to a busier one, and a loop near saturation
//! hands some to the least loaded. Decisions read each loop's CPU share, measured per janitor turn.
//!
//! Why: every loop that serves clients wakes for them, and on a machine whose cores PostgreSQL also
//! needs, spreading a light load over every loop means a wake-up (a context switch and an
//! `epoll_wait`) for almost every call instead of one per batch: 17.7 µs of gateway CPU per 1-row
//! call with two loops against 12.9 µs with one on 2 cores. Packing keeps the loops that run busy
//! enough to batch; spilling still spreads a heavy load over all of them.

use std::time::Instant;

/// A loop above this hands some of its idle connections to the least loaded loop...
const SPILL_ABOVE: u32 = 900;
/// ... if that one is under this, moving enough to come down to about `SPILL_TO`.
const SPILL_TARGET_BELOW: u32 = 500;
const SPILL_TO: u32 = 700;
/// A loop gives all its connections to a lower-numbered busy loop when both loads together stay
/// under this; the gap to `SPILL_ABOVE` keeps the two rules from undoing each other (two loops add
/// up to more than one serving the same calls, which has fewer wake-ups).
const PACK_SUM_BELOW: u32 = 800;
/// Janitor turns a loop waits after a move before deciding again, so loads show the move first.
const COOLDOWN_TURNS: u32 = 3;

/// What a loop should do with its idle client connections this turn.
#[derive(Debug, PartialEq, Eq)]
pub enum Move {
    Stay,
    /// Hand up to `count` idle connections to loop `to`.
    Give {
        to: usize,
        count: usize,
    },
}

/// The decision from every loop's load (per mille) and client count, for loop `me`.
pub fn decide(me: usize, loads: &[u32], clients: &[usize]) -> Move {
    let (Some(&load), Some(&mine)) = (loads.get(me), clients.get(me)) else { return Move::Stay };
    if mine == 0 || loads.len() < 2 {
        return Move::Stay;
    }
    if load > SPILL_ABOVE && mine >= 2 {
        let least = (0..loads.len()).filter(|&k| k != me).min_by_key(|&k| (loads[k], clients.get(k).copied()));
        if let Some(k) = least.filter(|&k| loads[k] < SPILL_TARGET_BELOW) {
            let share = (load - SPILL_TO) as usize * mine / load as usize;
            return Move::Give { to: k, count: share.clamp(1, mine - 1) };
        }
        return Move::Stay;
    }
    // Packing goes downwards only, into the busiest lower loop it fits in, so two light loops never
    // trade connections back and forth.
    let fits = (0..me)
        .filter(|&j| clients.get(j).is_some_and(|&c| c > 0) && loads[j] + load < PACK_SUM_BELOW)
        .max_by_key(|&j| loads[j]);
    match fits {
        Some(j) => Move::Give { to: j, count: mine },
        None => Move::Stay,
    }
}

/// Where a new connection goes among `n` loops, `at(k)` being loop k's load and clients: the first
/// loop under `accept_below` per mille of a core (`CLIENT_PACK_BELOW_PERCENT`), else the least
/// loaded one (fewest clients among equals). Read in place: it runs for every accepted connection.
pub fn place(n: usize, at: impl Fn(usize) -> (u32, usize), accept_below: u32) -> usize {
    if let Some(i) = (0..n).find(|&k| at(k).0 < accept_below) {
        return i;
    }
    (0..n).min_by_key(|&k| at(k)).unwrap_or(0)
}

/// One loop's measure of itself.
#[derive(Default)]
pub struct Meter {
    last: Option<(Instant, u64)>,
    cooldown: u32,
}

impl Meter {
    /// This thread's load (per mille of one core) since the last call, `None` the first time or
    /// where the kernel does not tell the thread's CPU time.
    pub fn sample(&mut self, now: Instant) -> Option<u32> {
        let cpu = thread_cpu_ns()?;
        let prev = self.last.replace((now, cpu));
        let (at, was) = prev?;
        let wall = now.saturating_duration_since(at).as_nanos();
        if wall == 0 {
            return None;
        }
        Some(u32::try_from(u128::from(cpu.saturating_sub(was)) * 1000 / wall).unwrap_or(u32::MAX).min(1000))
    }

    /// Whether this turn may move connections; a move starts a cooldown.
    pub fn may_move(&mut self) -> bool {
        if self.cooldown > 0 {
            self.cooldown -= 1;
            return false;
        }
        true
    }

    pub fn moved(&mut self) {
        self.cooldown = COOLDOWN_TURNS;
    }
}

/// CPU time of the calling thread in nanoseconds (the first field of its `schedstat`).
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn light_loops_pack_downwards_into_the_busiest_that_fits() {
        // Two loops at 38 % each: the second gives everything to the first.
        assert_eq!(decide(1, &[380, 380], &[8, 8]), Move::Give { to: 0, count: 8 });
        // The first never gives to the second (no trading back and forth).
        assert_eq!(decide(0, &[380, 380], &[8, 8]), Move::Stay);
        // Into the busiest lower loop that still fits, not into an empty one.
        assert_eq!(decide(3, &[100, 500, 0, 200], &[4, 10, 0, 3]), Move::Give { to: 1, count: 3 });
        assert_eq!(decide(3, &[100, 700, 0, 200], &[4, 10, 0, 3]), Move::Give { to: 0, count: 3 });
        // Too heavy together: stay.
        assert_eq!(decide(1, &[600, 300], &[8, 8]), Move::Stay);
        // Nothing to give, or one loop only.
        assert_eq!(decide(1, &[100, 100], &[3, 0]), Move::Stay);
        assert_eq!(decide(0, &[100], &[3]), Move::Stay);
    }

    #[test]
    fn a_saturated_loop_spills_to_the_least_loaded() {
        // At 100 % with 20 connections: about 30 % of them go, to the idlest loop.
        assert_eq!(decide(0, &[1000, 300, 100], &[20, 5, 0]), Move::Give { to: 2, count: 6 });
        // Keeps at least one, gives at least one.
        assert_eq!(decide(0, &[950, 0], &[2, 0]), Move::Give { to: 1, count: 1 });
        // Everyone else busy too: stay.
        assert_eq!(decide(0, &[1000, 600], &[20, 20]), Move::Stay);
        // A single connection cannot be split.
        assert_eq!(decide(0, &[1000, 0], &[1, 0]), Move::Stay);
    }

    #[test]
    fn the_rules_do_not_undo_each_other() {
        // What packing makes (under PACK_SUM_BELOW) never spills. A spill moves about
        // SPILL_ABOVE - SPILL_TO of load and leaves about SPILL_TO: together over PACK_SUM_BELOW, so
        // the receiver does not pack it back.
        const { assert!(PACK_SUM_BELOW < SPILL_ABOVE && SPILL_TO < SPILL_ABOVE && SPILL_TO < PACK_SUM_BELOW) };
        let after_pack = PACK_SUM_BELOW - 1;
        assert_eq!(decide(0, &[after_pack, 0], &[16, 0]), Move::Stay);
        let (giver, receiver) = (SPILL_TO, SPILL_ABOVE - SPILL_TO);
        assert_eq!(decide(1, &[giver, receiver], &[14, 6]), Move::Stay);
    }

    #[test]
    fn new_connections_go_to_the_first_loop_with_cpu_to_spare() {
        let place_in = |loads: &[u32], clients: &[usize], below| place(loads.len(), |k| (loads[k], clients[k]), below);
        assert_eq!(place_in(&[0, 0, 0], &[0, 0, 0], 600), 0);
        assert_eq!(place_in(&[700, 100, 0], &[10, 2, 0], 600), 1);
        assert_eq!(place_in(&[900, 800, 700], &[10, 9, 5], 600), 2);
        assert_eq!(place_in(&[900, 700, 700], &[10, 9, 5], 600), 2);
        // 0: always the least loaded, fewest clients among equals.
        assert_eq!(place_in(&[0, 0, 0], &[1, 0, 1], 0), 1);
    }

    #[test]
    fn the_meter_reads_this_thread_cpu_time() {
        let mut m = Meter::default();
        let t0 = Instant::now();
        assert_eq!(m.sample(t0), None, "nothing to compare with yet");
        // Spin for a while: this thread's share of a core is high.
        let until = t0 + std::time::Duration::from_millis(60);
        let mut x = 0u64;
        while Instant::now() < until {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let busy = m.sample(Instant::now()).expect("schedstat on Linux");
        std::thread::sleep(std::time::Duration::from_millis(60));
        let idle = m.sample(Instant::now()).expect("schedstat on Linux");
        assert!(busy > idle, "spinning {busy} vs sleeping {idle}");
        assert!(idle < 300, "sleeping {idle}");
    }
}
