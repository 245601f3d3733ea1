//! `/call` figures by name: calls, latency and errors per function, and errors per platform and code.
//! They answer "which function is slow" and "whose calls fail" on `/metrics` and the status page.
//!
//! Each loop owns a [`CallBook`] and records into it once per answered `/call`, under a mutex only
//! that loop and a reader (a scrape, the once-a-second sampler) ever take, so the loop almost never
//! waits. Names come from requests, so a book keeps at most `METRICS_TRACKED_NAMES` platforms and as
//! many functions; later names are counted as [`OTHER`] (0 turns the book off). A function that does not exist (or a call
//! refused before it could reach one) counts for its platform's errors but gets no row of its own.

use std::collections::HashMap;
use std::sync::Mutex;

use super::histogram::{HistogramSnapshot, KIND_SLOTS, LATENCY_BOUNDS_US, OTHER};
use crate::error::Kind;

/// One function's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionFigures {
    pub latency: HistogramSnapshot,
    pub errors: u64,
}

impl FunctionFigures {
    fn add(&mut self, o: &FunctionFigures) {
        for (a, b) in self.latency.counts.iter_mut().zip(&o.latency.counts) {
            *a += b;
        }
        self.latency.sum_us += o.latency.sum_us;
        self.errors += o.errors;
    }
}

#[derive(Default)]
struct PlatformEntry {
    errors: Vec<u64>,
    functions: HashMap<Box<str>, FunctionFigures>,
}

#[derive(Default)]
struct Book {
    platforms: HashMap<Box<str>, PlatformEntry>,
    functions: usize,
}

/// One loop's figures by name (see the module note).
#[derive(Default)]
pub struct CallBook {
    inner: Mutex<Book>,
}

/// Errors that say the name itself was wrong or refused: counting a row per such name would let any
/// client grow the figures without bound.
fn names_unchecked(k: Kind) -> bool {
    matches!(
        k,
        Kind::FunctionNotFound
            | Kind::DatabaseNotFound
            | Kind::PlatformNotFound
            | Kind::Unauthorized
            | Kind::InvalidPlatformKey
            | Kind::InvalidJson
            | Kind::InvalidRequest
    )
}

impl CallBook {
    /// One answered `/call`. `call` is (platform, function) when the request named them; `cap` is
    /// `METRICS_TRACKED_NAMES` (0: nothing is recorded).
    pub fn record(&self, call: Option<(&str, &str)>, us: u64, error: Option<Kind>, cap: usize) {
        if cap == 0 {
            return;
        }
        let (platform, function) = call.unwrap_or(("", ""));
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let b = &mut *g;
        let platform = if b.platforms.contains_key(platform) || b.platforms.len() < cap { platform } else { OTHER };
        if !b.platforms.contains_key(platform) {
            b.platforms.insert(platform.into(), PlatformEntry::default());
        }
        let Some(p) = b.platforms.get_mut(platform) else { return };
        if let Some(k) = error {
            if p.errors.is_empty() {
                p.errors = vec![0; KIND_SLOTS];
            }
            if let Some(c) = p.errors.get_mut(k as usize) {
                *c += 1;
            }
        }
        if call.is_none() || error.is_some_and(names_unchecked) {
            return;
        }
        let f = match p.functions.get_mut(function) {
            Some(f) => f,
            None => {
                let name = if b.functions < cap { function } else { OTHER };
                if !p.functions.contains_key(name) {
                    b.functions += 1;
                }
                p.functions.entry(name.into()).or_default()
            }
        };
        f.latency.counts[LATENCY_BOUNDS_US.partition_point(|&b| b < us)] += 1;
        f.latency.sum_us += us;
        f.errors += error.is_some() as u64;
    }

    /// Adds this loop's figures into `into`; the functions' only when `functions`.
    pub fn add_to(&self, into: &mut CallFigures, functions: bool) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (name, p) in &g.platforms {
            if !p.errors.is_empty() {
                let e = into.platform_errors.entry(name.to_string()).or_insert_with(|| vec![0; KIND_SLOTS]);
                for (a, b) in e.iter_mut().zip(&p.errors) {
                    *a += b;
                }
            }
            for (f, figures) in p.functions.iter().filter(|_| functions) {
                into.functions.entry((name.to_string(), f.to_string())).or_default().add(figures);
            }
        }
    }
}

/// [`CallBook`]s summed over the loops.
#[derive(Clone, Debug, Default)]
pub struct CallFigures {
    /// Platform (empty: the request named none) → errors per [`Kind`] slot.
    pub platform_errors: HashMap<String, Vec<u64>>,
    pub functions: HashMap<(String, String), FunctionFigures>,
}

/// One row of a folded function table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionRow {
    pub platform: String,
    pub function: String,
    pub figures: FunctionFigures,
}

impl CallFigures {
    /// The `top` functions that took the most time in all (ties by name), then one row
    /// (`other`, `other`) summing the rest when there is a rest.
    pub fn top_functions(&self, top: usize) -> Vec<FunctionRow> {
        let mut rows: Vec<FunctionRow> = self
            .functions
            .iter()
            .map(|((p, f), v)| FunctionRow { platform: p.clone(), function: f.clone(), figures: v.clone() })
            .collect();
        rows.sort_by(|a, b| {
            b.figures
                .latency
                .sum_us
                .cmp(&a.figures.latency.sum_us)
                .then_with(|| a.platform.cmp(&b.platform))
                .then_with(|| a.function.cmp(&b.function))
        });
        if rows.len() > top {
            let mut other = FunctionRow {
                platform: OTHER.to_string(),
                function: OTHER.to_string(),
                figures: FunctionFigures::default(),
            };
            for r in rows.split_off(top) {
                other.figures.add(&r.figures);
            }
            rows.push(other);
        }
        rows
    }

    /// Errors per platform and code with at most `top` platforms named (those with the most errors);
    /// the rest summed as `other`. The platform "" (a request that named none) is kept apart and
    /// never folded. Only platforms with errors appear.
    pub fn top_platform_errors(&self, top: usize) -> Vec<(String, Vec<u64>)> {
        let total = |v: &Vec<u64>| v.iter().sum::<u64>();
        let mut rows: Vec<(String, Vec<u64>)> = self
            .platform_errors
            .iter()
            .filter(|(p, v)| !p.is_empty() && total(v) > 0)
            .map(|(p, v)| (p.clone(), v.clone()))
            .collect();
        rows.sort_by(|a, b| total(&b.1).cmp(&total(&a.1)).then_with(|| a.0.cmp(&b.0)));
        if rows.len() > top {
            let mut other = vec![0; KIND_SLOTS];
            for (_, v) in rows.split_off(top) {
                for (a, b) in other.iter_mut().zip(&v) {
                    *a += b;
                }
            }
            // A platform really named `other` shares the row.
            match rows.iter_mut().find(|(p, _)| p == OTHER) {
                Some((_, v)) => v.iter_mut().zip(&other).for_each(|(a, b)| *a += b),
                None => rows.push((OTHER.to_string(), other)),
            }
        }
        if let Some(v) = self.platform_errors.get("").filter(|v| total(v) > 0) {
            rows.push((String::new(), v.clone()));
        }
        rows
    }

    /// Errors per code over every platform.
    pub fn errors_by_code(&self) -> Vec<u64> {
        let mut out = vec![0; KIND_SLOTS];
        for v in self.platform_errors.values() {
            for (a, b) in out.iter_mut().zip(v) {
                *a += b;
            }
        }
        out
    }

    /// What happened between `earlier` and `self` (errors only: the status page's last minute).
    pub fn errors_since(&self, earlier: &CallFigures) -> CallFigures {
        let mut d = CallFigures::default();
        for (p, v) in &self.platform_errors {
            let before = earlier.platform_errors.get(p);
            let diff: Vec<u64> = v
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(before.and_then(|b| b.get(i)).copied().unwrap_or(0)))
                .collect();
            if diff.iter().any(|&n| n > 0) {
                d.platform_errors.insert(p.clone(), diff);
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(book: &CallBook) -> CallFigures {
        let mut f = CallFigures::default();
        book.add_to(&mut f, true);
        f
    }

    #[test]
    fn functions_are_ranked_by_time_and_the_rest_is_summed() {
        let b = CallBook::default();
        for _ in 0..10 {
            b.record(Some(("p", "fast")), 100, None, 100);
        }
        b.record(Some(("p", "slow")), 2_000_000, None, 100);
        b.record(Some(("q", "mid")), 5_000, Some(Kind::FunctionError), 100);
        b.record(Some(("q", "mid")), 5_000, None, 100);
        let rows = figures(&b).top_functions(2);
        let names: Vec<(&str, &str)> = rows.iter().map(|r| (r.platform.as_str(), r.function.as_str())).collect();
        assert_eq!(names, [("p", "slow"), ("q", "mid"), (OTHER, OTHER)]);
        assert_eq!(rows[1].figures.errors, 1);
        assert_eq!(rows[1].figures.latency.count(), 2);
        assert_eq!(rows[2].figures.latency.count(), 10);
        assert_eq!(figures(&b).top_functions(5).len(), 3);
    }

    #[test]
    fn errors_count_per_platform_and_unknown_names_get_no_function_row() {
        let b = CallBook::default();
        for i in 0..50 {
            b.record(Some(("p", &format!("nope_{i}"))), 300, Some(Kind::FunctionNotFound), 1000);
        }
        b.record(None, 10, Some(Kind::InvalidJson), 1000);
        let f = figures(&b);
        assert!(f.functions.is_empty(), "{:?}", f.functions);
        let rows = f.top_platform_errors(5);
        assert_eq!(rows[0].0, "p");
        assert_eq!(rows[0].1[Kind::FunctionNotFound as usize], 50);
        assert_eq!(rows[1].0, "");
        assert_eq!(f.errors_by_code()[Kind::InvalidJson as usize], 1);
    }

    #[test]
    fn names_beyond_the_cap_are_counted_as_other() {
        let b = CallBook::default();
        for i in 0..5 {
            b.record(Some((&format!("p{i}"), &format!("f{i}"))), 100, Some(Kind::FunctionError), 2);
        }
        let f = figures(&b);
        assert_eq!(f.platform_errors.len(), 3, "{:?}", f.platform_errors.keys());
        assert_eq!(f.platform_errors[OTHER][Kind::FunctionError as usize], 3);
        assert_eq!(f.functions.len(), 3, "{:?}", f.functions.keys());
        assert_eq!(f.functions[&(OTHER.to_string(), OTHER.to_string())].latency.count(), 3);
    }

    #[test]
    fn platforms_beyond_the_top_n_fold_into_other_and_a_minute_is_a_difference() {
        let b = CallBook::default();
        for (p, n) in [("a", 3), ("b", 2), ("c", 1)] {
            for _ in 0..n {
                b.record(Some((p, "f")), 100, Some(Kind::Timeout), 100);
            }
        }
        let before = figures(&b);
        let rows = before.top_platform_errors(1);
        assert_eq!(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["a", OTHER]);
        assert_eq!(rows[1].1[Kind::Timeout as usize], 3);
        b.record(Some(("c", "f")), 100, Some(Kind::Timeout), 100);
        let minute = figures(&b).errors_since(&before);
        assert_eq!(minute.platform_errors.len(), 1);
        assert_eq!(minute.platform_errors["c"][Kind::Timeout as usize], 1);
    }
}
