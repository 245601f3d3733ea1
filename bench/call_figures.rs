//! What the per-function `/call` figures cost each call, measured alone: the two name copies a parsed
//! call keeps and one `CallBook::record` (lock, two look-ups, a bucket), for a spread of names like a
//! busy gateway's, against the same loop without them. Prints nanoseconds of this thread's CPU time
//! per call (from `/proc/thread-self/schedstat`, so time the thread waited for a core does not count);
//! `bench/ab.sh` measures the same on whole requests, where it is lost in a shared machine's noise.
//!
//!   cargo bench --bench call_figures [-- CALLS]

use std::hint::black_box;
use std::time::Instant;

/// Nanoseconds this thread has run on a CPU (wall time where the file is missing).
fn cpu_ns(wall: Instant) -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| wall.elapsed().as_nanos() as u64)
}

use stonescriptdb_gateway::error::Kind;
use stonescriptdb_gateway::metrics::calls::{CallBook, CallFigures};

fn main() {
    let calls: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5_000_000);
    // 20 platforms with 50 functions each, visited in a scattered order; one call in 50 fails.
    let names: Vec<(String, String)> =
        (0..1000).map(|i| (format!("platform_{:02}", i % 20), format!("get_something_{:03}", i / 20))).collect();
    let order: Vec<usize> = (0..calls).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % names.len()).collect();
    let book = CallBook::default();
    let wall = Instant::now();
    let mut best_on = f64::MAX;
    let mut best_off = f64::MAX;
    for _ in 0..5 {
        let t = cpu_ns(wall);
        for (i, &n) in order.iter().enumerate() {
            let (p, f) = &names[n];
            // As a parsed call does: copy the two names, record when it is answered.
            let note = (black_box(p).clone(), black_box(f).clone());
            let error = (i % 50 == 0).then_some(Kind::FunctionError);
            book.record(Some((&note.0, &note.1)), black_box(300 + (i as u64 & 1023)), error, 1000);
        }
        best_on = best_on.min((cpu_ns(wall) - t) as f64 / calls as f64);
        let t = cpu_ns(wall);
        for (i, &n) in order.iter().enumerate() {
            let (p, f) = &names[n];
            black_box((black_box(p), black_box(f), black_box(300 + (i as u64 & 1023))));
        }
        best_off = best_off.min((cpu_ns(wall) - t) as f64 / calls as f64);
    }
    let mut figures = CallFigures::default();
    book.add_to(&mut figures, true);
    let recorded: u64 = figures.functions.values().map(|f| f.latency.count()).sum();
    assert_eq!(recorded, 5 * calls as u64, "every call was recorded");
    let t = Instant::now();
    let rows = figures.top_functions(20);
    let fold_us = t.elapsed().as_secs_f64() * 1e6;
    println!(
        "calls={calls} names={} recorded_ns_per_call={:.1} baseline_ns_per_call={:.1} cost_ns_per_call={:.1} \
         top20_fold_us={fold_us:.0} rows={}",
        names.len(),
        best_on,
        best_off,
        best_on - best_off,
        rows.len()
    );
}
