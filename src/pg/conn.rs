//! One non-blocking PostgreSQL connection driven by the event loop: its socket, its buffers, the
//! startup handshake (shared sans-IO code in `startup.rs`) and the state enum that says whether it is
//! connecting, idle, busy or broken. What a busy connection is doing, its prepared statements and its
//! pool belong to `call/backend.rs`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use mio::event::Source;
use mio::{Interest, Registry, Token};

use super::dberror::PgError;
use super::frame::{Backend, read_message};
use super::params::{ConnectParams, Host};
use super::startup::{SessionInfo, Startup, StartupStep, startup_message};

/// The socket of a backend connection.
#[derive(Debug)]
pub enum Sock {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl Sock {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(b),
            Sock::Unix(s) => s.read(b),
        }
    }

    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(b),
            Sock::Unix(s) => s.write(b),
        }
    }

    fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Sock::Tcp(s) => s.take_error(),
            Sock::Unix(s) => s.take_error(),
        }
    }

    pub fn register(&mut self, r: &Registry, t: Token) -> io::Result<()> {
        let i = Interest::READABLE | Interest::WRITABLE;
        match self {
            Sock::Tcp(s) => s.register(r, t, i),
            Sock::Unix(s) => s.register(r, t, i),
        }
    }

    pub fn deregister(&mut self, r: &Registry) {
        let _ = match self {
            Sock::Tcp(s) => s.deregister(r),
            Sock::Unix(s) => s.deregister(r),
        };
    }
}

/// Where a backend connection is.
pub enum ConnState {
    /// Non-blocking connect in progress; the first writable event finishes it.
    Connecting,
    /// Startup message sent; authenticating and collecting session parameters.
    Startup(Box<Startup>),
    /// Ready for queries and in the pool's idle list.
    Idle,
    /// Running a job.
    Busy,
    /// Terminate sent; kept (and counted against `MAX_TOTAL_CONNECTIONS`) until the server closes
    /// the socket, so a replacement never runs next to a backend that has not exited yet.
    Closing,
    /// Failed; will be closed and removed.
    Broken,
}

/// One backend connection.
pub struct BackendConn {
    /// The socket; registered under a backend token.
    pub sock: Sock,
    /// Connecting → Startup → Idle ⇄ Busy → Broken.
    pub state: ConnState,
    /// Received bytes not yet framed.
    pub rbuf: BytesMut,
    /// Bytes to send.
    pub wbuf: BytesMut,
    /// Known after startup: backend PID and cancel key.
    pub session: Option<SessionInfo>,
    /// For `POOL_MAX_LIFETIME_SECS`.
    pub created: Instant,
    /// For `CONNECTION_IDLE_TIMEOUT_SECS`.
    pub last_used: Instant,
    /// Last ReadyForQuery transaction status.
    pub tx_status: u8,
    /// The largest message this connection takes: one declared longer is refused from its header,
    /// before its body is read (see [`BackendConn::read_all`]).
    pub max_message: usize,
    /// The declared length of the message that was refused; the connection is then unusable.
    pub refused_message: Option<usize>,
}

impl BackendConn {
    /// Starts a non-blocking connect. The startup message is queued to go out once connected.
    pub fn connect(params: &ConnectParams, tcp_addr: Option<SocketAddr>, now: Instant) -> io::Result<BackendConn> {
        let sock = match &params.host {
            Host::Unix(_) => {
                let path = params.socket_path().ok_or_else(|| io::Error::other("no socket path"))?;
                Sock::Unix(mio::net::UnixStream::connect(path)?)
            }
            Host::Tcp(_) => {
                let addr = tcp_addr.ok_or_else(|| io::Error::other("database host did not resolve"))?;
                let s = mio::net::TcpStream::connect(addr)?;
                let _ = s.set_nodelay(true);
                Sock::Tcp(s)
            }
        };
        let mut wbuf = BytesMut::with_capacity(256);
        startup_message(params, &mut wbuf);
        Ok(BackendConn {
            sock,
            state: ConnState::Connecting,
            rbuf: BytesMut::with_capacity(8192),
            wbuf,
            session: None,
            created: now,
            last_used: now,
            max_message: crate::pg::frame::MAX_FRAME_LEN,
            refused_message: None,
            tx_status: b'I',
        })
    }

    /// On a writable event while connecting: did the connect succeed?
    pub fn finish_connect(&mut self, params: &ConnectParams) -> Result<(), PgError> {
        if let Some(e) = self.sock.take_error()? {
            return Err(PgError::Io(e));
        }
        if let Sock::Tcp(s) = &self.sock {
            // Not connected yet (spurious event): peer_addr says NotConnected.
            if let Err(e) = s.peer_addr() {
                if e.kind() == io::ErrorKind::NotConnected {
                    return Ok(());
                }
                return Err(PgError::Io(e));
            }
        }
        self.state = ConnState::Startup(Box::new(Startup::new(params)));
        Ok(())
    }

    /// Reads until `WouldBlock`. EOF or a socket error is an error: a backend never closes cleanly
    /// on its own while we hold it.
    ///
    /// With `drain` false a short read ends the loop: the socket was empty a moment ago and
    /// edge-triggered readiness reports any later byte, so the read that would only say `WouldBlock`
    /// is saved. Pass `drain` when the event also reported a hang-up, so the EOF is seen now.
    pub fn read_all(&mut self, scratch: &mut [u8], drain: bool) -> Result<(), PgError> {
        // rbuf starts with a whole message (read_message takes whole ones only).
        let mut scan = 0;
        loop {
            match self.sock.read(scratch) {
                Ok(0) => return Err(PgError::Closed),
                Ok(n) => {
                    self.rbuf.extend_from_slice(&scratch[..n]);
                    // Each header is looked at once, as soon as it is in: a message declared
                    // longer than the limit is refused before its body fills memory.
                    match crate::pg::frame::scan_lengths(&self.rbuf, scan, self.max_message) {
                        Ok(next) => scan = next,
                        Err(len) => {
                            self.refused_message = Some(len);
                            self.rbuf = BytesMut::new();
                            return Err(PgError::Protocol(format!("a message of {len} bytes was refused")));
                        }
                    }
                    if n < scratch.len() && !drain {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(PgError::Io(e)),
            }
        }
    }

    /// Writes until done or `WouldBlock`.
    pub fn flush(&mut self) -> Result<(), PgError> {
        if matches!(self.state, ConnState::Connecting) {
            return Ok(());
        }
        while !self.wbuf.is_empty() {
            match self.sock.write(&self.wbuf) {
                Ok(0) => return Err(PgError::Closed),
                Ok(n) => {
                    let _ = self.wbuf.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(PgError::Io(e)),
            }
        }
        Ok(())
    }

    /// The next complete backend message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Backend>, PgError> {
        read_message(&mut self.rbuf)
    }

    /// Drives the handshake with what is buffered. `Ok(true)` once the connection is ready.
    pub fn drive_startup(&mut self) -> Result<bool, PgError> {
        loop {
            let ConnState::Startup(st) = &mut self.state else { return Ok(false) };
            let Some(msg) = read_message(&mut self.rbuf)? else { return Ok(false) };
            match st.on_message(msg, &mut self.wbuf)? {
                StartupStep::Continue => {}
                StartupStep::Ready(info) => {
                    self.session = Some(info);
                    self.state = ConnState::Idle;
                    return Ok(true);
                }
            }
        }
    }
}
