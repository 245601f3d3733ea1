//! The server: `GATEWAY_THREADS` event loops, each on its own thread with its own client and backend
//! sockets (see [`event_loop`]), and the threads they share (see [`shared`]). This module builds them,
//! starts them and waits for them; it is the only one that knows all of them.

pub mod app;
pub mod balance;
pub mod client;
pub mod event_loop;
pub mod notify;
pub mod shared;
pub mod status;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::channel;

use mio::net::TcpListener;
use mio::{Interest, Poll, Waker};

use crate::config::Config;
use crate::log;
use event_loop::{LISTENER, Loop, WAKER};
use notify::{Loops, Message, Notifier};
use shared::Shared;

/// Returned by [`Server::bind`]: the bound address and a way to stop the server.
#[derive(Clone)]
pub struct Handle {
    pub addr: SocketAddr,
    loops: Loops,
}

impl Handle {
    /// Starts graceful shutdown (as SIGTERM does).
    pub fn shutdown(&self) {
        self.loops.send_all(|| Message::Shutdown);
    }
}

/// The gateway's loops, bound and ready to run.
pub struct Server {
    loops: Vec<Loop>,
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl Server {
    /// Binds the listener (port 0 picks a free port) and prepares the loops.
    pub fn bind(cfg: Config) -> io::Result<(Server, Handle)> {
        let cfg = Arc::new(cfg);
        let n = cfg.threads.max(1);
        // "Address already in use" alone names neither the address nor what to change.
        let listener = TcpListener::bind(cfg.listen).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot listen on {}: {e}; choose another port with GATEWAY_PORT (or GATEWAY_HOST)",
                    cfg.listen
                ),
            )
        })?;
        let addr = listener.local_addr()?;
        let mut parts = Vec::with_capacity(n);
        let mut notifiers = Vec::with_capacity(n);
        for _ in 0..n {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (tx, rx) = channel();
            notifiers.push(Notifier::new(tx, waker));
            parts.push((poll, rx));
        }
        let loops = Loops::new(notifiers.clone());
        let shared = Shared::start(cfg.clone(), loops.clone())?;
        let mut listener = Some(listener);
        let mut built = Vec::with_capacity(n);
        for (id, ((poll, rx), notifier)) in parts.into_iter().zip(notifiers).enumerate() {
            let mut l = if id == 0 { listener.take() } else { None };
            if let Some(l) = l.as_mut() {
                poll.registry().register(l, LISTENER, Interest::READABLE)?;
            }
            built.push(Loop::new(id, poll, l, addr, rx, shared.clone(), notifier));
        }
        Ok((Server { loops: built, shared, addr }, Handle { addr, loops }))
    }

    /// Turns SIGTERM and SIGINT into graceful shutdown. Only the binary calls this: signals are
    /// process-wide.
    pub fn watch_signals(&mut self) -> io::Result<()> {
        match self.loops.first_mut() {
            Some(l) => l.watch_signals(),
            None => Ok(()),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs every loop until shutdown completes: loop 0 on this thread, the others on their own.
    pub fn run(self) -> io::Result<()> {
        let mut loops = self.loops.into_iter();
        let Some(first) = loops.next() else { return Ok(()) };
        let mut threads = Vec::new();
        for (i, l) in loops.enumerate() {
            threads.push(std::thread::Builder::new().name(format!("loop-{}", i + 1)).spawn(move || l.run())?);
        }
        let result = first.run();
        let mut deadline = result.as_ref().ok().copied();
        let mut failure = result.err();
        for t in threads {
            match t.join() {
                Ok(Ok(d)) => deadline = Some(deadline.map_or(d, |x| x.max(d))),
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(_) => failure = failure.or(Some(io::Error::other("an event loop panicked"))),
            }
        }
        // Deploys still running get what is left of the grace period; past it the process exits
        // under them and PostgreSQL rolls their transactions back.
        self.shared.shutdown(deadline.unwrap_or_else(std::time::Instant::now));
        // The login sessions kept between deploys end with the gateway.
        crate::catalog::idle::clear();
        log::info("stopped", &[("uptime_s", &self.shared.started.elapsed().as_secs())]);
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
