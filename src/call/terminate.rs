//! Ending call backends that ignore their cancel (`CALL_TERMINATE_AFTER_MS` after the first
//! CancelRequest). One thread, shared by every loop, does it as the gateway's login on the
//! backend's server: it learns each call connection's `backend_start` when the connection opens
//! (pids are reused, so a pid alone never names a backend), ends a given-up one with
//! `pg_terminate_backend` matched by pid and start, and keeps the connection's [`Permit`] (its place
//! under the pool, platform, server and total caps) until PostgreSQL no longer lists the backend.
//! Nothing here runs on an event loop, and nothing runs in a platform's database.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use super::budget::Permit;
use crate::pg::blocking::Client;
use crate::pg::params::ConnectParams;
use crate::pg::terminate::{Backend, terminate};
use crate::servers::Servers;

/// How often a backend that was told to end is asked about (and told again).
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Admin sessions unused this long are closed.
const IDLE_CLOSE: Duration = Duration::from_secs(30);

/// A call connection, named as PostgreSQL names it plus its cancel key (unique while it lives).
#[derive(Clone, Debug)]
pub struct Conn {
    /// The gateway's login on the server the backend runs on, in the server's admin database.
    pub login: ConnectParams,
    pub pid: i32,
    pub secret: i32,
    pub role: String,
    pub database: String,
}

enum Msg {
    Learn(Conn),
    Forget(i32, i32),
    End(Conn, Option<Permit>),
}

fn sender() -> &'static Option<Sender<Msg>> {
    static TX: OnceLock<Option<Sender<Msg>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = channel();
        match std::thread::Builder::new().name("pg-terminate".into()).spawn(move || run(rx)) {
            Ok(_) => Some(tx),
            Err(e) => {
                crate::log::error(
                    "cannot start the call terminator; stuck calls are only disconnected",
                    &[("error", &e)],
                );
                None
            }
        }
    })
}

fn send(m: Msg) {
    if let Some(tx) = sender() {
        let _ = tx.send(m);
    }
}

/// The login's parameters on the host and port of `pool_params` (a call pool's, whose user is the
/// platform role), in `server`'s admin database.
pub fn login_for(servers: &Servers, server: &str, pool_params: &ConnectParams) -> Option<ConnectParams> {
    let s = servers.get(server)?;
    let login = s.params(servers.base());
    let mut p = pool_params.clone();
    p.user = login.user;
    p.password = login.password;
    p.dbname = login.dbname;
    p.application_name = "stonescriptdb-gateway terminator".into();
    p.options = None;
    Some(p)
}

/// A call connection is ready: its start time is read now, while its pid surely names it.
pub fn learn(c: Conn) {
    send(Msg::Learn(c));
}

/// A call connection closed the ordinary way.
pub fn forget(pid: i32, secret: i32) {
    send(Msg::Forget(pid, secret));
}

/// A call connection is given up on: its backend is ended, and `permit` is held until it is gone.
pub fn end(c: Conn, permit: Option<Permit>) {
    send(Msg::End(c, permit));
}

struct Ending {
    backend: Backend,
    login: ConnectParams,
    permit: Option<Permit>,
    next: Instant,
}

#[derive(Default)]
struct State {
    known: HashMap<(i32, i32), Backend>,
    clients: HashMap<String, (Client, Instant)>,
    ending: Vec<Ending>,
}

fn client_key(p: &ConnectParams) -> String {
    format!("{:?}|{}|{}|{}", p.host, p.port, p.user, p.dbname)
}

impl State {
    /// Runs `f` on the cached login session for `p`, connecting when needed; a failed session is dropped.
    fn with_client<T>(
        &mut self,
        p: &ConnectParams,
        f: impl FnOnce(&mut Client) -> Result<T, crate::pg::dberror::PgError>,
    ) -> Option<T> {
        let key = client_key(p);
        if !self.clients.contains_key(&key) {
            let mut c = Client::connect(p)
                .map_err(|e| crate::log::warn("the call terminator cannot reach PostgreSQL", &[("error", &e)]))
                .ok()?;
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            self.clients.insert(key.clone(), (c, Instant::now()));
        }
        let (c, used) = self.clients.get_mut(&key)?;
        *used = Instant::now();
        match f(c) {
            Ok(v) => Some(v),
            Err(e) => {
                crate::log::warn("the call terminator's query failed", &[("error", &e)]);
                if let Some((c, _)) = self.clients.remove(&key) {
                    c.close();
                }
                None
            }
        }
    }

    fn start_of(&mut self, c: &Conn) -> Option<String> {
        let pid = c.pid.to_string();
        self.with_client(&c.login, |cl| {
            let r = cl.query(
                "SELECT a.backend_start::pg_catalog.text FROM pg_catalog.pg_stat_activity a \
                 WHERE a.pid OPERATOR(pg_catalog.=) $1::pg_catalog.int4 \
                 AND a.usename OPERATOR(pg_catalog.=) $2::pg_catalog.name \
                 AND a.datname OPERATOR(pg_catalog.=) $3::pg_catalog.name",
                &[Some(&pid), Some(&c.role), Some(&c.database)],
            )?;
            Ok(r.rows.into_iter().next().and_then(|row| row.into_iter().next().flatten()))
        })
        .flatten()
    }

    fn on(&mut self, m: Msg) {
        match m {
            Msg::Learn(c) => {
                if let Some(started) = self.start_of(&c) {
                    self.known.insert((c.pid, c.secret), Backend { pid: c.pid, started });
                }
            }
            Msg::Forget(pid, secret) => {
                self.known.remove(&(pid, secret));
            }
            Msg::End(c, permit) => {
                // Learned when it opened; read now only if that failed (the connection is still
                // open on our side, so its pid cannot have been reused yet).
                let backend = match self.known.remove(&(c.pid, c.secret)) {
                    Some(b) => b,
                    None => match self.start_of(&c) {
                        Some(started) => Backend { pid: c.pid, started },
                        None => {
                            crate::log::warn(
                                "a stuck call's backend could not be found to end it",
                                &[("pid", &c.pid), ("database", &c.database)],
                            );
                            return;
                        }
                    },
                };
                crate::log::warn(
                    "ending a call's backend that ignored its cancel",
                    &[("pid", &c.pid), ("database", &c.database), ("role", &c.role)],
                );
                self.ending.push(Ending { backend, login: c.login, permit, next: Instant::now() });
            }
        }
    }

    /// Terminates (again) what is due and lets go of what is gone.
    fn tick(&mut self) {
        let now = Instant::now();
        let mut ending = std::mem::take(&mut self.ending);
        ending.retain_mut(|e| {
            if now < e.next {
                return true;
            }
            e.next = now + RETRY_EVERY;
            let b = e.backend.clone();
            let gone = self.with_client(&e.login, |cl| terminate(cl, &b, Duration::from_millis(100))).unwrap_or(false);
            if gone {
                // Dropping the permit gives its slots back.
                drop(e.permit.take());
            }
            !gone
        });
        self.ending = ending;
        self.clients.retain(|_, (_, used)| now.saturating_duration_since(*used) < IDLE_CLOSE);
    }
}

fn run(rx: Receiver<Msg>) {
    let mut st = State::default();
    loop {
        let wait = if st.ending.is_empty() { IDLE_CLOSE } else { Duration::from_millis(50) };
        match rx.recv_timeout(wait) {
            Ok(m) => st.on(m),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(m) = rx.try_recv() {
            st.on(m);
        }
        st.tick();
    }
}

/// The call connection `b` of pool `p`, once its session is up.
pub fn conn_of<W>(servers: &Servers, p: &super::pool::Pool<W>, b: &super::backend::Backend) -> Option<Conn> {
    let s = b.conn.session.as_ref()?;
    Some(Conn {
        login: login_for(servers, &p.target.server, &p.params)?,
        pid: s.process_id,
        secret: s.secret_key,
        role: p.params.user.clone(),
        database: p.database.clone(),
    })
}
