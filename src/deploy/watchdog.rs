//! The deploy time limit (`DEPLOY_TIMEOUT_SECS`), enforced from outside the deploy: one thread holds
//! the deadline of every running deploy, sends a cancel request to the backend when one passes, and
//! cuts the socket when the deploy is still running a grace period later (a PL/pgSQL block can catch
//! a cancel; a cut socket frees the worker whatever the backend does). `statement_timeout` cannot be
//! the only bound: the platform's own SQL may `SET` it.

use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::pg::blocking::{AbortHandle, CancelToken};

/// How long a cancelled deploy may take to notice before its socket is cut.
const GRACE: Duration = Duration::from_secs(5);

/// One watched deploy.
struct Entry {
    /// Identifies the entry for [`Watch`]'s drop.
    id: u64,
    /// When the next action is due.
    due: Instant,
    /// Cancel sent already (the next action cuts the socket).
    cancelled: bool,
    cancel: CancelToken,
    abort: Option<AbortHandle>,
}

#[derive(Default)]
struct Watchdog {
    entries: Mutex<(u64, Vec<Entry>)>,
    wake: Condvar,
}

fn watchdog() -> &'static Watchdog {
    static W: OnceLock<&'static Watchdog> = OnceLock::new();
    W.get_or_init(|| {
        let w: &'static Watchdog = Box::leak(Box::default());
        let spawned = std::thread::Builder::new().name("deploy-watchdog".into()).spawn(move || run(w));
        if let Err(e) = spawned {
            crate::log::error("cannot start the deploy watchdog; deploys have no total time limit", &[("error", &e)]);
        }
        w
    })
}

fn run(w: &'static Watchdog) {
    let mut g = w.entries.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let now = Instant::now();
        for e in g.1.iter_mut().filter(|e| e.due <= now) {
            if !e.cancelled {
                // Best effort: the server may be unreachable; the cut below still frees the worker.
                let _ = e.cancel.cancel();
                e.cancelled = true;
                e.due = now + GRACE;
            } else {
                if let Some(a) = e.abort.take() {
                    a.abort();
                }
                e.due = now + Duration::from_secs(3600);
            }
        }
        let next = g.1.iter().map(|e| e.due).min();
        g = match next {
            Some(t) => {
                w.wake.wait_timeout(g, t.saturating_duration_since(Instant::now())).unwrap_or_else(|p| p.into_inner()).0
            }
            None => w.wake.wait(g).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

/// A deploy under watch; dropping it ends the watch.
pub struct Watch {
    id: u64,
}

/// Watches a deploy that must end by `deadline`.
pub fn watch(deadline: Instant, cancel: CancelToken, abort: Option<AbortHandle>) -> Watch {
    let w = watchdog();
    let mut g = w.entries.lock().unwrap_or_else(|p| p.into_inner());
    g.0 += 1;
    let id = g.0;
    g.1.push(Entry { id, due: deadline, cancelled: false, cancel, abort });
    w.wake.notify_one();
    Watch { id }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let w = watchdog();
        let mut g = w.entries.lock().unwrap_or_else(|p| p.into_inner());
        g.1.retain(|e| e.id != self.id);
    }
}
