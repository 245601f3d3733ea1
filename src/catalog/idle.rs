//! Sessions of the gateway's own login (catalog and admin) kept between deploy requests, so that an
//! unchanged redeploy does not pay two backend starts and their cold caches each time. Only sessions
//! a request handed back clean are kept: outside a transaction, in sync, holding no session-level
//! advisory lock, and alive when taken again. Platform roles' sessions are never kept here.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pg::blocking::Client;
use crate::pg::params::ConnectParams;

/// Sessions kept per connection target; more than the deploy workers rarely find use.
const PER_KEY: usize = 4;
/// A kept session older than this is closed instead of reused: the server's caches of it may be
/// stale, and an idle login session should not sit on a server for long.
const MAX_IDLE: Duration = Duration::from_secs(10);

struct Kept {
    key: String,
    since: Instant,
    client: Client,
}

static KEPT: Mutex<Vec<Kept>> = Mutex::new(Vec::new());

/// Everything that makes two sessions interchangeable. The password is part of it (in memory only),
/// so a changed server definition never reuses a session of the old one.
fn key(p: &ConnectParams) -> String {
    format!(
        "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
        p.target(),
        p.user,
        p.dbname,
        p.password.as_deref().unwrap_or(""),
        p.options.as_deref().unwrap_or(""),
        p.application_name
    )
}

/// A kept session for `params`, else a new one.
pub fn connect(params: &ConnectParams) -> Result<Client, crate::pg::dberror::PgError> {
    match take(params) {
        Some(c) => Ok(c),
        None => Client::connect(params),
    }
}

/// A kept session for `params` that is still usable, if any. Expired ones go on the way.
pub fn take(params: &ConnectParams) -> Option<Client> {
    let k = key(params);
    let mut stale = Vec::new();
    let found = {
        let mut g = KEPT.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (old, keep): (Vec<Kept>, Vec<Kept>) =
            std::mem::take(&mut *g).into_iter().partition(|e| now.duration_since(e.since) > MAX_IDLE);
        *g = keep;
        stale.extend(old);
        // The most recently kept first: its caches are the warmest.
        let i = g.iter().rposition(|e| e.key == k);
        i.map(|i| g.remove(i).client)
    };
    // Closing sends Terminate: done outside the lock.
    for e in stale {
        e.client.close();
    }
    let mut c = found?;
    if c.is_reusable() {
        Some(c)
    } else {
        c.close();
        None
    }
}

/// Hands a session back for reuse when it is clean (see the module); closes it otherwise.
/// `locks_held`: session-level advisory locks the caller knows it still holds.
pub fn give_back(params: &ConnectParams, mut client: Client, locks_held: u32) {
    if locks_held != 0 || !client.is_reusable() {
        client.close();
        return;
    }
    let k = key(params);
    let mut g = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    if g.iter().filter(|e| e.key == k).count() >= PER_KEY {
        drop(g);
        client.close();
        return;
    }
    g.push(Kept { key: k, since: Instant::now(), client });
}

/// Closes every kept session (a gateway shutting down, or a test that wants none left).
pub fn clear() {
    let all = std::mem::take(&mut *KEPT.lock().unwrap_or_else(|p| p.into_inner()));
    for e in all {
        e.client.close();
    }
}

/// How many sessions are kept now.
pub fn count() -> usize {
    KEPT.lock().unwrap_or_else(|p| p.into_inner()).len()
}
