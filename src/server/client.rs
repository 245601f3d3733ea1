//! One client connection: its socket, buffers and the single state enum that says where it is in the
//! request/response cycle. The transitions themselves are driven from `server/mod.rs`.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use mio::net::TcpStream;

use crate::http::chunked::ChunkedDecoder;
use crate::http::request::{Head, Method};
use crate::http::router::Route;

/// A request whose head was accepted and whose body is being received.
#[derive(Debug)]
pub struct Incoming {
    pub head: Head,
    pub route: Route,
    pub client_ip: IpAddr,
    /// What the head presented, as the authorization table judged it.
    pub cred: crate::security::keys::Credential,
    pub body: Vec<u8>,
    /// `Some` for chunked bodies.
    pub chunked: Option<ChunkedDecoder>,
    /// Bytes still expected for `Content-Length` bodies.
    pub remaining: u64,
    /// The route's body limit.
    pub limit: usize,
    /// This body's share of `MAX_UPLOADS_IN_FLIGHT_BYTES`.
    pub budget: BodyBudget,
    /// `BODY_TOTAL_TIMEOUT_MS` from the end of the head: the body must be in by then.
    pub total_deadline: std::time::Instant,
}

/// Bytes of request bodies being received, counted over all loops against
/// `MAX_UPLOADS_IN_FLIGHT_BYTES`; a body's bytes are given back when its `Incoming` is dropped
/// (complete, refused, timed out or its connection closed).
#[derive(Debug)]
pub struct BodyBudget {
    total: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    held: usize,
}

impl BodyBudget {
    pub fn new(total: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> BodyBudget {
        BodyBudget { total, held: 0 }
    }

    /// Holds `to` bytes in all (only ever grows); false, holding what it held, when that would pass `max`.
    pub fn grow(&mut self, to: usize, max: usize) -> bool {
        use std::sync::atomic::Ordering;
        if to <= self.held {
            return true;
        }
        let add = to - self.held;
        let ok = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_add(add).filter(|n| *n <= max))
            .is_ok();
        if ok {
            self.held = to;
        }
        ok
    }
}

impl Drop for BodyBudget {
    fn drop(&mut self) {
        self.total.fetch_sub(self.held, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Where a connection is. Exactly one of these at a time.
#[derive(Debug)]
pub enum Phase {
    /// Between requests or reading a head.
    Head,
    /// Receiving a body.
    Body(Box<Incoming>),
    /// Dispatched; the response will come from the pool or a worker.
    Waiting,
    /// Streaming a chunked response (NDJSON progress); more chunks will come from a worker.
    Streaming,
    /// Flushing the last response; close when the write buffer is empty.
    Closing,
}

/// What the request log line needs about the request in progress.
#[derive(Debug, Clone)]
pub struct ReqInfo {
    pub method: Method,
    pub path: String,
    /// The route's counter slot ([`crate::http::router::UNMATCHED`] until routed).
    pub route: usize,
    pub started: Instant,
    pub minor_version: u8,
    pub keep_alive: bool,
    /// A `/call` that parsed: what its answer is counted under, and its body.
    pub call: Option<CallNote>,
    /// The client's address as a proxy in `TRUSTED_PROXIES` named it, when that is not the peer's.
    pub forwarded_for: Option<std::net::IpAddr>,
}

/// A parsed `/call`'s names, for the per-function figures, and its body, kept (moved, not copied) so
/// that a request line, when one is written, can name the database too; the body is read only then.
#[derive(Debug, Clone)]
pub struct CallNote {
    pub platform: std::sync::Arc<str>,
    pub function: std::sync::Arc<str>,
    pub body: Vec<u8>,
}

/// A client connection.
#[derive(Debug)]
pub struct Client {
    /// The socket; only `server/` touches it.
    pub sock: TcpStream,
    pub peer: SocketAddr,
    pub phase: Phase,
    /// Bytes read but not yet consumed (a partial head, pipelined requests).
    pub rbuf: Vec<u8>,
    /// Bytes to send; `wpos` of them are sent.
    pub wbuf: Vec<u8>,
    pub wpos: usize,
    /// Bumped for every request so late completions for an old request are dropped.
    pub generation: u64,
    /// The request being answered, for the log line.
    pub req: Option<ReqInfo>,
    /// When the current wait (head, body, keep-alive idle) runs out.
    pub deadline: Instant,
    /// The peer sent EOF.
    pub peer_closed: bool,
    /// Reading was paused because `rbuf` reached its cap; resume after the next transition.
    pub read_paused: bool,
}

impl Client {
    pub fn new(sock: TcpStream, peer: SocketAddr, deadline: Instant) -> Client {
        Client {
            sock,
            peer,
            phase: Phase::Head,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            generation: 0,
            req: None,
            deadline,
            peer_closed: false,
            read_paused: false,
        }
    }

    /// Whether a request is in progress (used by graceful shutdown and the janitor).
    pub fn busy(&self) -> bool {
        match self.phase {
            Phase::Head => !self.rbuf.is_empty() || self.wpos < self.wbuf.len(),
            Phase::Closing => self.wpos < self.wbuf.len(),
            _ => true,
        }
    }
}
