//! Blocking PostgreSQL client for worker threads (deploys, catalog work): one socket, one
//! request at a time, built on the sans-IO framing and startup in this module tree.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use postgres_protocol::IsNull;
use postgres_protocol::message::backend::{CommandCompleteBody, Message};
use postgres_protocol::message::frontend;

use super::dberror::{DbError, PgError};
use super::frame::{Backend, Column, data_row_fields, message_name, read_message};
use super::params::{ConnectParams, Host};
use super::startup::{SessionInfo, Startup, StartupStep, cancel_request, startup_message};

/// How much the read buffer grows per `read` call.
const READ_CHUNK: usize = 16 * 1024;

/// What one request may bring back unless [`Client::set_max_result_bytes`] says otherwise: the
/// largest message, and all rows of a result together.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 64 * 1024 * 1024;
/// Notices and notifications kept until drained; later ones are counted and dropped (a statement can
/// raise them without end).
const MAX_KEPT_ASYNC: usize = 100;

/// Either kind of socket the server may listen on.
enum Stream {
    /// TCP, with TCP_NODELAY set.
    Tcp(TcpStream),
    /// Local Unix socket.
    Unix(UnixStream),
}

impl Stream {
    fn open(host: &Host, port: u16, timeout: Duration) -> Result<Stream, PgError> {
        match host {
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Ok(Stream::Unix(UnixStream::connect(path)?))
            }
            Host::Tcp(name) => {
                let mut last = None;
                for addr in (name.as_str(), port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => {
                            // Requests are written whole; Nagle would only add latency.
                            s.set_nodelay(true)?;
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(PgError::Io(
                    last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "host resolved to no address")),
                ))
            }
        }
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        }
    }

    fn try_clone(&self) -> io::Result<Stream> {
        match self {
            Stream::Tcp(s) => s.try_clone().map(Stream::Tcp),
            Stream::Unix(s) => s.try_clone().map(Stream::Unix),
        }
    }

    fn shutdown(&self) {
        // Best effort: the peer may already be gone.
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// Socket plus its buffers: the part both startup and queries drive.
struct Wire {
    /// The connection.
    stream: Stream,
    /// Bytes read but not yet parsed into messages.
    rbuf: BytesMut,
    /// Encoded messages not yet written.
    wbuf: BytesMut,
    /// The largest message taken: a longer one is refused from its header, before its body is read.
    max_message: usize,
}

impl Wire {
    fn flush(&mut self) -> Result<(), PgError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf)?;
            self.wbuf.clear();
        }
        Ok(())
    }

    fn recv(&mut self) -> Result<Backend, PgError> {
        loop {
            if let Err(len) = super::frame::scan_lengths(&self.rbuf, 0, self.max_message) {
                self.rbuf = BytesMut::new();
                return Err(PgError::Protocol(format!(
                    "the server sent a message of {len} bytes, more than the {} this session takes",
                    self.max_message
                )));
            }
            if let Some(m) = read_message(&mut self.rbuf)? {
                return Ok(m);
            }
            let old = self.rbuf.len();
            self.rbuf.resize(old + READ_CHUNK, 0);
            let n = loop {
                match self.stream.read(&mut self.rbuf[old..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.rbuf.truncate(old);
                        return Err(PgError::Io(e));
                    }
                }
            };
            self.rbuf.truncate(old + n);
            if n == 0 {
                return Err(PgError::Closed);
            }
        }
    }
}

/// A LISTEN notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// PID of the notifying backend.
    pub process_id: i32,
    /// Channel name.
    pub channel: String,
    /// Payload (may be empty).
    pub payload: String,
}

/// Outcome of [`Client::query`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryResult {
    /// Column names and type OIDs; empty for statements that return no rows.
    pub columns: Vec<(String, u32)>,
    /// Rows in text format; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
    /// Count from the command tag (`INSERT 0 5` → 5, `SELECT 3` → 3); 0 when it has none.
    pub rows_affected: u64,
}

/// What is needed to cancel a client's running statement from another thread.
#[derive(Clone, Debug)]
pub struct CancelToken {
    /// Server to send the CancelRequest to.
    host: Host,
    /// Its port.
    port: u16,
    /// Bound on the connect.
    connect_timeout: Duration,
    /// Target backend.
    process_id: i32,
    /// Its cancel secret.
    secret_key: i32,
}

impl CancelToken {
    /// Asks the server to cancel whatever the session is running; harmless if it is idle.
    ///
    /// The cancelled statement fails with SQLSTATE 57014 on the client's own connection.
    pub fn cancel(&self) -> Result<(), PgError> {
        let mut stream = Stream::open(&self.host, self.port, self.connect_timeout)?;
        stream.set_read_timeout(Some(self.connect_timeout))?;
        stream.set_write_timeout(Some(self.connect_timeout))?;
        let mut buf = BytesMut::new();
        cancel_request(self.process_id, self.secret_key, &mut buf);
        stream.write_all(&buf)?;
        // The server closes once it has handled the request; waiting for that means the
        // cancel has been delivered by the time we return.
        let mut sink = [0u8; 64];
        loop {
            match stream.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        Ok(())
    }
}

/// Cuts a client's socket from another thread: a read or write the owner is blocked in fails at once
/// and the client is broken. For statements that ignore cancel requests (a PL/pgSQL loop may catch
/// `query_canceled`).
pub struct AbortHandle {
    /// A second descriptor of the client's socket.
    stream: Stream,
}

impl AbortHandle {
    /// Shuts the socket down in both directions; the server sees the client gone.
    pub fn abort(&self) {
        self.stream.shutdown();
    }
}

/// A blocking session. Not thread-safe by design: one worker owns it.
pub struct Client {
    /// Socket and buffers.
    wire: Wire,
    /// What startup told us; ParameterStatus updates land in `server_params`.
    session: SessionInfo,
    /// Where we connected, for cancel requests.
    host: Host,
    /// Port we connected to.
    port: u16,
    /// Connect timeout, reused for cancel connections.
    connect_timeout: Duration,
    /// Status byte of the last ReadyForQuery.
    tx_status: u8,
    /// Tag of the last CommandComplete (`COMMIT`, `ROLLBACK`, `INSERT 0 1`…).
    last_tag: String,
    /// NoticeResponses not yet drained.
    notices: Vec<DbError>,
    /// NotificationResponses not yet drained.
    notifications: Vec<Notification>,
    /// Notices and notifications dropped because [`MAX_KEPT_ASYNC`] were kept already.
    dropped_async: u64,
    /// Bytes of rows one request may bring back (and the largest message).
    max_result_bytes: usize,
    /// Set when the protocol position is unknown (I/O error, timeout, protocol violation, FATAL).
    broken: bool,
    /// Requests sent and answered (one Query, or one Sync behind a statement or a pipeline): what a
    /// deploy's cost in round trips is counted in, and how a caller tells that nothing else was sent.
    round_trips: u64,
}

impl Client {
    /// Connects and authenticates. The whole handshake is bounded by `connect_timeout`
    /// per socket operation.
    pub fn connect(params: &ConnectParams) -> Result<Client, PgError> {
        let stream = Stream::open(&params.host, params.port, params.connect_timeout)?;
        stream.set_read_timeout(Some(params.connect_timeout))?;
        stream.set_write_timeout(Some(params.connect_timeout))?;
        let mut wire = Wire {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
            max_message: DEFAULT_MAX_RESULT_BYTES,
        };
        startup_message(params, &mut wire.wbuf);
        wire.flush()?;
        let mut startup = Startup::new(params);
        let session = loop {
            let msg = wire.recv()?;
            match startup.on_message(msg, &mut wire.wbuf)? {
                StartupStep::Continue => wire.flush()?,
                StartupStep::Ready(info) => break info,
            }
        };
        wire.stream.set_read_timeout(None)?;
        wire.stream.set_write_timeout(None)?;
        Ok(Client {
            wire,
            session,
            host: params.host.clone(),
            port: params.port,
            connect_timeout: params.connect_timeout,
            tx_status: b'I',
            last_tag: String::new(),
            notices: Vec::new(),
            notifications: Vec::new(),
            dropped_async: 0,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            broken: false,
            round_trips: 0,
        })
    }

    /// Bounds every socket read and write (`None` = wait forever). A timeout breaks the client:
    /// the response is still in flight, so the protocol position is lost; cancel the statement
    /// with a [`CancelToken`] and drop the client.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<(), PgError> {
        self.wire.stream.set_read_timeout(timeout)?;
        self.wire.stream.set_write_timeout(timeout)?;
        Ok(())
    }

    /// Bounds what one request may bring back: its largest message and its rows together. Past it
    /// the request fails and the client is broken (the rest is never read).
    pub fn set_max_result_bytes(&mut self, max: usize) {
        self.max_result_bytes = max;
        self.wire.max_message = max;
    }

    /// Notices and notifications that were dropped rather than kept.
    pub fn dropped_async(&self) -> u64 {
        self.dropped_async
    }

    fn too_much(&self) -> PgError {
        PgError::Protocol(format!("the result is larger than the {} bytes this session takes", self.max_result_bytes))
    }

    /// Runs one or more `;`-separated statements with the simple query protocol.
    pub fn batch_execute(&mut self, sql: &str) -> Result<(), PgError> {
        self.simple(sql, false, |_| {}).map(|_| ())
    }

    /// Runs `sql` with the simple query protocol and returns the rows of the last result set.
    pub fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        let mut rows = Vec::new();
        self.simple(sql, true, |event| match event {
            SimpleEvent::NewResult => rows.clear(),
            SimpleEvent::Row(r) => rows.push(r),
        })?;
        Ok(rows)
    }

    /// Runs one statement with the extended protocol; parameters and results are text.
    ///
    /// Parameter types are left for the server to infer, so write `$1::int` where it cannot.
    pub fn query(&mut self, sql: &str, params: &[Option<&str>]) -> Result<QueryResult, PgError> {
        self.check()?;
        let w = &mut self.wire.wbuf;
        let start = w.len();
        if let Err(e) = encode_statement(sql, params, w) {
            // Nothing was sent, so the session is still in sync.
            w.truncate(start);
            return Err(e);
        }
        frontend::sync(w);
        let mut done = Vec::with_capacity(1);
        self.guard(|c| c.run_extended(&mut done))?;
        Ok(done.pop().unwrap_or_default())
    }

    /// The first row of [`Client::query`], or `None` when it returned no rows.
    pub fn query_one_opt(
        &mut self,
        sql: &str,
        params: &[Option<&str>],
    ) -> Result<Option<Vec<Option<String>>>, PgError> {
        Ok(self.query(sql, params)?.rows.into_iter().next())
    }

    /// Requests this client has sent since it connected (see the field).
    pub fn round_trips(&self) -> u64 {
        self.round_trips
    }

    /// Runs several statements with the extended protocol behind one Sync: one round trip for all.
    /// The server stops at the first error (the rest are skipped); the error comes back with the index
    /// of the statement that failed. Results are those of [`Client::query`], one a statement.
    pub fn pipeline(&mut self, stmts: &[(&str, &[Option<&str>])]) -> Result<Vec<QueryResult>, (usize, PgError)> {
        self.check().map_err(|e| (0, e))?;
        let w = &mut self.wire.wbuf;
        let start = w.len();
        for (i, (sql, params)) in stmts.iter().enumerate() {
            if let Err(e) = encode_statement(sql, params, w) {
                // Nothing was sent, so the session is still in sync.
                w.truncate(start);
                return Err((i, e));
            }
        }
        frontend::sync(w);
        let n = stmts.len();
        let mut done: Vec<QueryResult> = Vec::with_capacity(n);
        let r = self.guard(|c| c.run_extended(&mut done));
        match r {
            Ok(()) if done.len() == n => Ok(done),
            Ok(()) => Err((done.len(), PgError::Protocol("a pipeline ended before every statement answered".into()))),
            Err(e) => Err((done.len().min(n.saturating_sub(1)), e)),
        }
    }

    /// Whether this session can serve another request as it is: in sync, outside a transaction, and
    /// its socket neither closed by the server (a restart, `pg_terminate_backend`) nor holding bytes
    /// nobody asked for (a FATAL sent before closing). Looks without waiting.
    pub fn is_reusable(&mut self) -> bool {
        if self.broken || self.tx_status != b'I' || !self.wire.rbuf.is_empty() {
            return false;
        }
        let mut b = [0u8; 1];
        // UnixStream has no stable peek: a non-blocking read tells the same, and a byte read here
        // would be one nobody expects anyway (the session is then not reused).
        let (looked, restored) = match &self.wire.stream {
            Stream::Tcp(s) => (s.set_nonblocking(true).and_then(|()| s.peek(&mut b)), s.set_nonblocking(false)),
            Stream::Unix(s) => (s.set_nonblocking(true).and_then(|()| (&*s).read(&mut b)), s.set_nonblocking(false)),
        };
        matches!(looked, Err(ref e) if e.kind() == io::ErrorKind::WouldBlock) && restored.is_ok()
    }

    /// `b'I'` idle, `b'T'` in a transaction, `b'E'` in a failed transaction.
    pub fn transaction_status(&self) -> u8 {
        self.tx_status
    }

    /// The command tag of the last statement that completed (`COMMIT`, `ROLLBACK`, `CREATE TABLE`…):
    /// after a transaction ended unexpectedly it says whether it was committed or rolled back.
    pub fn last_command_tag(&self) -> &str {
        &self.last_tag
    }

    /// Takes the notices (RAISE NOTICE, warnings) received so far.
    pub fn notices(&mut self) -> Vec<DbError> {
        std::mem::take(&mut self.notices)
    }

    /// Takes the LISTEN notifications received so far.
    pub fn notifications(&mut self) -> Vec<Notification> {
        std::mem::take(&mut self.notifications)
    }

    /// A handle that can cancel this session's running statement from another thread.
    pub fn cancel_token(&self) -> CancelToken {
        CancelToken {
            host: self.host.clone(),
            port: self.port,
            connect_timeout: self.connect_timeout,
            process_id: self.session.process_id,
            secret_key: self.session.secret_key,
        }
    }

    /// A handle that can cut this session's socket from another thread.
    pub fn abort_handle(&self) -> Result<AbortHandle, PgError> {
        Ok(AbortHandle { stream: self.wire.stream.try_clone()? })
    }

    /// Session facts from startup, with later ParameterStatus changes applied.
    pub fn session(&self) -> &SessionInfo {
        &self.session
    }

    /// Current value of a server-reported parameter (`server_version`, `TimeZone`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.session.server_params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Which server this session is on (host or socket directory, and port), for keys of what a
    /// process remembers per server.
    pub fn server_key(&self) -> String {
        format!("{:?}:{}", self.host, self.port)
    }

    /// True once the connection can no longer be used; the pool must drop it.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Says goodbye politely so the server logs a clean disconnect.
    pub fn close(mut self) {
        if !self.broken {
            frontend::terminate(&mut self.wire.wbuf);
            let _ = self.wire.flush();
        }
        self.wire.stream.shutdown();
    }

    fn check(&self) -> Result<(), PgError> {
        if self.broken { Err(PgError::Closed) } else { Ok(()) }
    }

    /// Runs a request and marks the client broken if the failure left the stream out of sync.
    fn guard<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T, PgError>) -> Result<T, PgError> {
        let r = f(self);
        if let Err(e) = &r {
            let fatal = match e {
                PgError::Db(db) => matches!(db.severity.as_str(), "FATAL" | "PANIC"),
                _ => true,
            };
            if fatal {
                self.broken = true;
                self.wire.wbuf.clear();
                self.wire.stream.shutdown();
            }
        }
        r
    }

    /// Next message that belongs to the current request; asynchronous ones are absorbed.
    fn next(&mut self) -> Result<Backend, PgError> {
        loop {
            match self.wire.recv()? {
                Backend::Notice(_) | Backend::Message(Message::NotificationResponse(_))
                    if self.notices.len() + self.notifications.len() >= MAX_KEPT_ASYNC =>
                {
                    self.dropped_async += 1;
                }
                Backend::Notice(n) => self.notices.push(n),
                Backend::Message(Message::NotificationResponse(body)) => {
                    let channel = body.channel().map_err(bad)?.to_string();
                    let payload = body.message().map_err(bad)?.to_string();
                    self.notifications.push(Notification { process_id: body.process_id(), channel, payload });
                }
                Backend::Message(Message::ParameterStatus(body)) => {
                    let name = body.name().map_err(bad)?;
                    let value = body.value().map_err(bad)?.to_string();
                    match self.session.server_params.iter_mut().find(|(k, _)| k == name) {
                        Some(slot) => slot.1 = value,
                        None => self.session.server_params.push((name.to_string(), value)),
                    }
                }
                other => return Ok(other),
            }
        }
    }

    /// `keep`: the sink keeps the rows, so they count against `max_result_bytes`.
    fn simple(&mut self, sql: &str, keep: bool, mut sink: impl FnMut(SimpleEvent)) -> Result<(), PgError> {
        self.check()?;
        frontend::query(sql, &mut self.wire.wbuf).map_err(|e| {
            self.wire.wbuf.clear();
            PgError::Protocol(format!("cannot encode Query: {e}"))
        })?;
        self.guard(|c| {
            c.round_trips += 1;
            c.wire.flush()?;
            let mut error = None;
            let mut bytes = 0usize;
            loop {
                match c.next()? {
                    Backend::Message(Message::ReadyForQuery(b)) => {
                        c.tx_status = b.status();
                        return error.map_or(Ok(()), |e| Err(PgError::Db(e)));
                    }
                    // A FATAL ends the session; no ReadyForQuery will come.
                    Backend::Error(e) if e.severity == "FATAL" || e.severity == "PANIC" => {
                        return Err(PgError::Db(Box::new(e)));
                    }
                    Backend::Error(e) => error = Some(Box::new(e)),
                    Backend::RowDescription(_) => sink(SimpleEvent::NewResult),
                    Backend::Message(Message::DataRow(row)) => {
                        bytes += row.buffer().len() + 64;
                        if keep && bytes > c.max_result_bytes {
                            return Err(c.too_much());
                        }
                        sink(SimpleEvent::Row(text_row(&row)?));
                    }
                    Backend::Message(Message::CommandComplete(body)) => {
                        c.last_tag = body.tag().map_err(bad)?.to_string();
                    }
                    Backend::Message(Message::EmptyQueryResponse) => {}
                    // COPY needs a data source or sink we do not offer; refuse it cleanly and
                    // let the server report the failure.
                    Backend::Message(Message::CopyInResponse(_)) => {
                        frontend::copy_fail("COPY FROM STDIN is not supported", &mut c.wire.wbuf).map_err(bad)?;
                        c.wire.flush()?;
                    }
                    Backend::Message(Message::CopyOutResponse(_) | Message::CopyData(_) | Message::CopyDone) => {}
                    other => return Err(unexpected(&other)),
                }
            }
        })
    }

    /// Reads the answers to the statements sent behind one Sync, up to its ReadyForQuery: each
    /// statement's result goes to `done` at its CommandComplete. After an error the server skips to
    /// the Sync, so the statements behind it have no result; the error is returned at the end.
    fn run_extended(&mut self, done: &mut Vec<QueryResult>) -> Result<(), PgError> {
        self.round_trips += 1;
        self.wire.flush()?;
        let mut cur = QueryResult::default();
        let mut error = None;
        let mut bytes = 0usize;
        loop {
            match self.next()? {
                Backend::Message(Message::ReadyForQuery(b)) => {
                    self.tx_status = b.status();
                    return error.map_or(Ok(()), |e| Err(PgError::Db(e)));
                }
                Backend::Error(e) if e.severity == "FATAL" || e.severity == "PANIC" => {
                    return Err(PgError::Db(Box::new(e)));
                }
                Backend::Error(e) => error = Some(Box::new(e)),
                Backend::Message(Message::ParseComplete | Message::BindComplete | Message::NoData) => {}
                Backend::RowDescription(cols) => {
                    cur.columns = cols.into_iter().map(|Column { name, type_oid }| (name, type_oid)).collect();
                }
                Backend::Message(Message::DataRow(row)) => {
                    // What a row takes here: its bytes and a little for the vectors around them.
                    bytes += row.buffer().len() + 64;
                    if bytes > self.max_result_bytes {
                        return Err(self.too_much());
                    }
                    cur.rows.push(text_row(&row)?);
                }
                Backend::Message(Message::CommandComplete(body)) => {
                    cur.rows_affected = rows_affected(&body)?;
                    self.last_tag = body.tag().map_err(bad)?.to_string();
                    done.push(std::mem::take(&mut cur));
                }
                Backend::Message(Message::EmptyQueryResponse) => done.push(std::mem::take(&mut cur)),
                Backend::Message(Message::PortalSuspended) => {}
                // The Sync sent behind Execute was swallowed by copy-in mode (the server ignores Sync
                // there), and after CopyFail an extended-protocol COPY waits for a Sync before it
                // answers ReadyForQuery: send one more, or both sides wait for each other forever.
                // https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-COPY
                Backend::Message(Message::CopyInResponse(_)) => {
                    frontend::copy_fail("COPY FROM STDIN is not supported", &mut self.wire.wbuf).map_err(bad)?;
                    frontend::sync(&mut self.wire.wbuf);
                    self.wire.flush()?;
                }
                Backend::Message(Message::CopyOutResponse(_) | Message::CopyData(_) | Message::CopyDone) => {}
                other => return Err(unexpected(&other)),
            }
        }
    }
}

/// What the simple-query loop reports to its caller.
enum SimpleEvent {
    /// A RowDescription: a new result set starts.
    NewResult,
    /// One row of the current result set.
    Row(Vec<Option<String>>),
}

/// Parse + Bind + Describe + Execute of one statement of the unnamed portal, text in and out. On
/// error the caller truncates what was written (nothing was sent).
fn encode_statement(sql: &str, params: &[Option<&str>], w: &mut BytesMut) -> Result<(), PgError> {
    frontend::parse("", sql, [], w).map_err(|e| PgError::Protocol(format!("cannot encode Parse: {e}")))?;
    frontend::bind(
        "",
        "",
        [0i16],
        params.iter().copied(),
        |v, buf| match v {
            Some(s) => {
                buf.put_slice(s.as_bytes());
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        },
        [0i16],
        w,
    )
    .map_err(|_| PgError::Protocol("cannot encode Bind (too many parameters?)".into()))?;
    frontend::describe(b'P', "", w)
        .and_then(|()| frontend::execute("", 0, w))
        .map_err(|e| PgError::Protocol(format!("cannot encode Execute: {e}")))
}

fn text_row(row: &postgres_protocol::message::backend::DataRowBody) -> Result<Vec<Option<String>>, PgError> {
    data_row_fields(row)?
        .into_iter()
        .map(|f| {
            f.map(|b| String::from_utf8(b.to_vec()).map_err(|_| PgError::Protocol("text value is not UTF-8".into())))
                .transpose()
        })
        .collect()
}

fn rows_affected(body: &CommandCompleteBody) -> Result<u64, PgError> {
    let tag = body.tag().map_err(bad)?;
    Ok(tag.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0))
}

fn unexpected(m: &Backend) -> PgError {
    let name = match m {
        Backend::Message(m) => message_name(m),
        Backend::Error(_) => "ErrorResponse",
        Backend::Notice(_) => "NoticeResponse",
        Backend::RowDescription(_) => "RowDescription",
        Backend::AuthSasl(_) => "AuthenticationSASL",
    };
    PgError::Protocol(format!("unexpected {name} in query response"))
}

fn bad(e: io::Error) -> PgError {
    PgError::Protocol(e.to_string())
}
