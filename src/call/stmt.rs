//! A statement prepared on one backend connection: its name, the parameter types PostgreSQL chose,
//! the result columns ready for rendering, and its recent run time (which decides pipelining).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::render::PreparedColumn;

/// A prepared statement cached on one connection.
#[derive(Debug)]
pub struct Stmt {
    /// Server-side statement name (`s1`, `s2`, … per connection).
    pub name: String,
    /// Parameter types as PostgreSQL resolved them.
    pub param_oids: Vec<u32>,
    /// Result columns with their pre-escaped JSON keys and chosen formats.
    pub columns: Vec<PreparedColumn>,
    /// Result format codes, in column order, for Bind.
    pub formats: Vec<i16>,
    /// Recent run time in µs, exponentially weighted; `u32::MAX` until a first run has finished.
    /// Decides whether other calls may queue behind this one (see `call/engine.rs`).
    pub run_us: AtomicU32,
}

impl Stmt {
    pub fn new(name: String, param_oids: Vec<u32>, columns: Vec<PreparedColumn>) -> Stmt {
        let formats = columns.iter().map(|c| c.format).collect();
        Stmt { name, param_oids, columns, formats, run_us: AtomicU32::new(u32::MAX) }
    }

    /// The recent run time, once known.
    pub fn expected_us(&self) -> Option<u64> {
        match self.run_us.load(Ordering::Relaxed) {
            u32::MAX => None,
            us => Some(u64::from(us)),
        }
    }

    /// Folds one run into the average (weight 1/4, so a slow spell shows within a few calls).
    pub fn note_run(&self, took: Duration) {
        let sample = u32::try_from(took.as_micros()).unwrap_or(u32::MAX - 1).min(u32::MAX - 1);
        let avg = match self.run_us.load(Ordering::Relaxed) {
            u32::MAX => sample,
            old => ((u64::from(old) * 3 + u64::from(sample)) / 4) as u32,
        };
        self.run_us.store(avg, Ordering::Relaxed);
    }
}
