//! Stopping calls: when a CancelRequest is due for a running call (its timer), and one thread that
//! sends CancelRequests for every loop. A CancelRequest travels on a fresh connection to PostgreSQL,
//! which may take a while to connect; that never happens on an event loop, and a burst of timeouts
//! costs queued messages, not a thread each.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::pg::params::{ConnectParams, Host};

/// After the first CancelRequest, how long a backend may take to stop before its connection is
/// closed under it and the backend is ended (`CALL_TERMINATE_AFTER_MS`, this by default).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(2);
/// A CancelRequest only stops what runs when it arrives; one that lands between two messages of a
/// pipeline is dropped by the server, so it is repeated this often until the call ends.
pub const RESEND_EVERY: Duration = Duration::from_millis(300);

/// After its deadline, how long a call waits for PostgreSQL to confirm the cancel (its answer then
/// carries SQLSTATE 57014) before the client is answered 504 anyway: a frozen backend must not hold
/// the answer.
pub const ANSWER_GRACE: Duration = Duration::from_millis(250);

/// What a call's timer says at a janitor pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Nothing,
    /// Send a CancelRequest (first or repeated).
    Cancel,
    /// The backend ignored the cancels: close its connection and answer 504.
    GiveUp,
}

/// The cancel timer of one call.
#[derive(Debug, Clone)]
pub struct CancelTimer {
    /// `CALL_TIMEOUT_MS` from the start of execution.
    pub deadline: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl CancelTimer {
    pub fn new(deadline: Instant) -> CancelTimer {
        CancelTimer { deadline, first: None, last: None }
    }

    /// A cancel was sent (or is being sent) now, e.g. because the client left.
    pub fn mark_sent(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    pub fn sent(&self) -> bool {
        self.first.is_some()
    }

    /// Past the deadline by more than [`ANSWER_GRACE`]: the client gets its 504 now.
    pub fn overdue(&self, now: Instant) -> bool {
        now >= self.deadline + ANSWER_GRACE
    }

    /// Decides what is due at `now`, recording a cancel it asks for; `give_up` after the first
    /// cancel the backend is ended.
    pub fn poll(&mut self, now: Instant, give_up: Duration) -> Due {
        match (self.first, self.last) {
            (None, _) if now >= self.deadline => {
                self.mark_sent(now);
                Due::Cancel
            }
            (Some(f), _) if now >= f + give_up => Due::GiveUp,
            (Some(_), Some(l)) if now >= l + RESEND_EVERY => {
                self.last = Some(now);
                Due::Cancel
            }
            _ => Due::Nothing,
        }
    }
}

/// Where a CancelRequest goes and what it says.
pub struct Target {
    pub params: ConnectParams,
    pub tcp_addr: Option<SocketAddr>,
    pub pid: i32,
    pub key: i32,
}

/// Sends CancelRequests from one thread. Cloning shares the thread.
#[derive(Clone)]
pub struct Canceller {
    tx: Sender<Target>,
}

impl Canceller {
    pub fn start() -> std::io::Result<Canceller> {
        let (tx, rx) = channel();
        std::thread::Builder::new().name("pg-cancel".into()).spawn(move || run(rx))?;
        Ok(Canceller { tx })
    }

    /// Queues a CancelRequest; never blocks.
    pub fn cancel(&self, t: Target) {
        if self.tx.send(t).is_err() {
            crate::log::warn("cancel request dropped: the cancel thread is gone", &[]);
        }
    }
}

fn run(rx: Receiver<Target>) {
    while let Ok(t) = rx.recv() {
        if let Err(e) = send(&t) {
            crate::log::warn("cancel request failed", &[("error", &e)]);
        }
    }
}

fn send(t: &Target) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    crate::pg::startup::cancel_request(t.pid, t.key, &mut buf);
    let timeout = Duration::from_secs(2);
    match &t.params.host {
        Host::Unix(_) => {
            let path = t.params.socket_path().ok_or_else(|| std::io::Error::other("no socket path"))?;
            let mut s = std::os::unix::net::UnixStream::connect(path)?;
            s.set_write_timeout(Some(timeout))?;
            s.write_all(&buf)
        }
        Host::Tcp(_) => {
            let a = t.tcp_addr.ok_or_else(|| std::io::Error::other("database host did not resolve"))?;
            let mut s = std::net::TcpStream::connect_timeout(&a, timeout)?;
            s.set_write_timeout(Some(timeout))?;
            s.write_all(&buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_cancels_at_the_deadline_then_repeats_then_gives_up() {
        let t0 = Instant::now();
        let mut t = CancelTimer::new(t0 + Duration::from_millis(100));
        assert_eq!(t.poll(t0, GIVE_UP_AFTER), Due::Nothing);
        assert_eq!(t.poll(t0 + Duration::from_millis(100), GIVE_UP_AFTER), Due::Cancel);
        assert!(t.sent());
        assert_eq!(t.poll(t0 + Duration::from_millis(200), GIVE_UP_AFTER), Due::Nothing);
        assert_eq!(t.poll(t0 + Duration::from_millis(400), GIVE_UP_AFTER), Due::Cancel);
        assert_eq!(t.poll(t0 + Duration::from_millis(500), GIVE_UP_AFTER), Due::Nothing);
        assert_eq!(t.poll(t0 + Duration::from_millis(100) + GIVE_UP_AFTER, GIVE_UP_AFTER), Due::GiveUp);
    }

    #[test]
    fn the_answer_is_due_shortly_after_the_deadline() {
        let t0 = Instant::now();
        let t = CancelTimer::new(t0 + Duration::from_millis(100));
        assert!(!t.overdue(t0 + Duration::from_millis(100)));
        assert!(t.overdue(t0 + Duration::from_millis(100) + ANSWER_GRACE));
    }

    #[test]
    fn a_cancel_for_a_client_that_left_starts_the_clock() {
        let t0 = Instant::now();
        let mut t = CancelTimer::new(t0 + Duration::from_secs(60));
        t.mark_sent(t0);
        assert_eq!(t.poll(t0 + RESEND_EVERY, GIVE_UP_AFTER), Due::Cancel);
        assert_eq!(t.poll(t0 + GIVE_UP_AFTER, GIVE_UP_AFTER), Due::GiveUp);
    }

    #[test]
    fn cancel_requests_reach_a_listener() {
        use std::io::Read;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = Canceller::start().unwrap();
        let params = ConnectParams::from_url(&format!("postgres://u@127.0.0.1:{}/db", addr.port())).unwrap();
        c.cancel(Target { params, tcp_addr: Some(addr), pid: 42, key: 7 });
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 16];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b[0..4], &16i32.to_be_bytes());
        assert_eq!(&b[4..8], &80877102i32.to_be_bytes());
        assert_eq!(&b[8..12], &42i32.to_be_bytes());
        assert_eq!(&b[12..16], &7i32.to_be_bytes());
    }
}
