//! Ending a backend that ignores its cancel. A backend is named by its pid together with its start
//! time (`pg_stat_activity.backend_start`): pids are reused, and everything else a session shows
//! (`application_name`, its settings) it can `SET` itself. The gateway's login does the ending (it
//! is a member of every platform role, which `pg_terminate_backend` needs) and then waits until
//! PostgreSQL no longer lists the backend, so a caller knows when the connection is really gone.

use std::time::{Duration, Instant};

use super::blocking::Client;
use super::dberror::PgError;

/// One backend, as the gateway names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub pid: i32,
    /// `backend_start` as text (ISO, UTC: the session settings every gateway session starts with).
    pub started: String,
}

/// The function behind `pg_stat_activity`, asked for this backend only: the view reads every
/// backend's entry and joins the role and database catalogs, a cold first read in a new session.
/// Every name is qualified, so an object the database's owner made cannot answer in place of the
/// catalog.
const OWN_BACKEND_SQL: &str = "SELECT a.backend_start::pg_catalog.text, a.datid::pg_catalog.text \
     FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) a";

/// The backend behind `c`, and the OID of the database it is connected to (which cannot be dropped,
/// or dropped and made again, while the session lasts), read before anything else runs in it, in
/// the same round trip as `setup` (statements ending in `;`, or empty), which runs first.
pub fn own_backend_after(c: &mut Client, setup: &str) -> Result<(Backend, String), PgError> {
    let rows = c.simple_query(&format!("{setup} {OWN_BACKEND_SQL}"))?;
    let mut row = rows.into_iter().next().unwrap_or_default().into_iter();
    let started = row.next().flatten().unwrap_or_default();
    let database_oid = row.next().flatten().unwrap_or_default();
    Ok((Backend { pid: c.session().process_id, started }, database_oid))
}

const STILL_THERE: &str = "SELECT pg_catalog.count(*)::pg_catalog.text FROM pg_catalog.pg_stat_activity a \
                           WHERE a.pid OPERATOR(pg_catalog.=) $1::pg_catalog.int4 \
                           AND a.backend_start OPERATOR(pg_catalog.=) $2::pg_catalog.timestamptz";

/// Terminates `b` from `admin` (a session of the gateway's login, outside any platform database) and
/// waits up to `wait` for it to be gone. `Ok(true)`: PostgreSQL no longer lists it.
pub fn terminate(admin: &mut Client, b: &Backend, wait: Duration) -> Result<bool, PgError> {
    if b.started.is_empty() {
        return Ok(false);
    }
    let pid = b.pid.to_string();
    let args = [Some(pid.as_str()), Some(b.started.as_str())];
    admin.query(
        "SELECT pg_catalog.pg_terminate_backend(a.pid) FROM pg_catalog.pg_stat_activity a \
         WHERE a.pid OPERATOR(pg_catalog.=) $1::pg_catalog.int4 \
         AND a.backend_start OPERATOR(pg_catalog.=) $2::pg_catalog.timestamptz",
        &args,
    )?;
    gone_within(admin, b, wait)
}

/// Whether `b` has left `pg_stat_activity` within `wait` (asked every 20 ms).
pub fn gone_within(admin: &mut Client, b: &Backend, wait: Duration) -> Result<bool, PgError> {
    let pid = b.pid.to_string();
    let args = [Some(pid.as_str()), Some(b.started.as_str())];
    let until = Instant::now() + wait;
    loop {
        let r = admin.query(STILL_THERE, &args)?;
        if r.rows.first().and_then(|row| row[0].as_deref()) == Some("0") {
            return Ok(true);
        }
        if Instant::now() >= until {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
