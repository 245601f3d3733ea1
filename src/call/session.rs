//! The `/call` protocol on one backend connection, without I/O: which statements are prepared there,
//! the call it is answering and the calls pipelined behind it, and what each PostgreSQL message does
//! to them. Messages come in, bytes to send are appended to the connection's buffer, and everything
//! else the engine must do (answer a client, send a call back to its pool, send a CancelRequest, give
//! the connection back, close it) comes out as [`Action`]s. The engine owns sockets and pools; this
//! module is tested with scripted PostgreSQL replies.
//!
//! A call goes Preparing (Parse/Describe, with the overload check in the same sync group) →
//! Introspecting (only for types the pool does not know yet) → Executing (Bind/Execute and the
//! session reset) → Done. Each phase ends at its ReadyForQuery; after an error PostgreSQL skips to
//! that Sync, so the phase's first error is kept and acted on there.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::{backend::Message, frontend};

use super::cancel::CancelTimer;
use super::render::{PreparedColumn, render_row_prepared};
use super::request::CallRequest;
use super::stmt::Stmt;
use super::types::{INTROSPECTION_SQL, TypeRegistry};
use crate::config::Config;
use crate::error::{ApiError, DbDetail, Kind};
use crate::http::response::Response;
use crate::pg::dberror::{DbError, PgError};
use crate::pg::frame::{Backend, Column, data_row_fields, row_values};

thread_local! {
    /// The statement-cache key of the call being placed: rebuilt for every call, allocated once per
    /// event loop.
    static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Who waits for a call's answer: a client connection of an event loop, and which of its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The loop that owns the client connection (a call may run on another loop's connection).
    pub loop_id: usize,
    pub client: usize,
    pub generation: u64,
}

/// How often one call may be handed from loop to loop (see [`Waiter::hops`]).
pub const MAX_HOPS: u8 = 8;

/// A call waiting for a connection.
#[derive(Debug)]
pub struct Waiter {
    pub caller: Caller,
    pub req: CallRequest,
    /// When it was accepted (for `execution_time_ms`).
    pub started: Instant,
    /// When waiting turns into 503 `pool_exhausted`.
    pub deadline: Instant,
    /// Sent back to the pool once already after a cancel meant for another call stopped it.
    pub requeued: bool,
    /// Times handed from one loop to another because only that loop had connections of the pool. A
    /// loop that can never serve a call (no connection, no quota) hands it on again, but at most
    /// [`MAX_HOPS`] times in all, so it cannot travel in circles.
    pub hops: u8,
}

/// A statement being prepared.
#[derive(Debug)]
pub struct Pending {
    name: String,
    key: String,
    /// Prepared with parameter types declared from the JSON values.
    declared: bool,
    param_oids: Vec<u32>,
    columns: Vec<Column>,
    /// Candidates of the function for this argument count, from the check sent with the prepare.
    overloads: Option<i64>,
    /// The most volatile of those candidates (`i`, `s` or `v`), from the same check.
    volatility: Option<u8>,
    /// What the session reset needs in this database (same check).
    reset_needs: ResetNeeds,
    /// Type lookups done for this statement so far.
    introspect_rounds: u8,
    introspect_rows: Vec<Vec<Option<String>>>,
}

/// Where a call is; each phase but `Done` waits for one ReadyForQuery.
#[derive(Debug)]
pub enum Phase {
    Preparing(Pending),
    Introspecting(Pending),
    /// Bind/Execute sent; rows are rendered into `body` as they come.
    Executing {
        stmt: Arc<Stmt>,
        body: Vec<u8>,
        rows: u64,
        /// CommandCompletes so far: the call's own first, then one per reset statement. Rows after the
        /// first are the reset's, not the answer's; which reset they belong to is told by this count.
        completes: u8,
        /// The count of CommandCompletes before the row of the look for SQL-level prepared
        /// statements ([`LOOK_STMT`]), when this call's reset has it.
        look_after: Option<u8>,
    },
    /// The function does not exist: the functions of the call schemas are being listed, so the answer
    /// can name the ones that look meant.
    Suggesting {
        error: DbError,
        found: Vec<(String, String)>,
    },
    /// Nothing outstanding.
    Done,
}

/// How the next prepare of an overloaded call declares its parameter types.
#[derive(Debug)]
enum Typing {
    /// Declared from the JSON values when the shape is known to be ambiguous, else untyped.
    Auto,
    /// Untyped even though the shape is ambiguous: the declared types matched no overload. The error
    /// of the declared attempt is kept, as it explains more when the untyped one is ambiguous too.
    Untyped(Option<Box<DbError>>),
}

/// A call on a connection.
#[derive(Debug)]
pub struct Job {
    pub caller: Caller,
    pub req: CallRequest,
    pub started: Instant,
    pub phase: Phase,
    /// Which of `CALL_SCHEMAS` is being tried.
    schema_idx: usize,
    typing: Typing,
    /// The first error of the current phase.
    error: Option<DbError>,
    /// The client got its answer (or left); later results are dropped.
    pub answered: bool,
    /// Re-prepared once after 0A000/26000.
    retried: bool,
    /// The result outgrew `MAX_RESPONSE_BYTES`: the answer is an error.
    too_large: bool,
    /// With `too_large`: it was `MAX_ANSWERS_IN_FLIGHT_BYTES` that had no room (503, retryable).
    over_budget: bool,
    /// The answer's share of `MAX_ANSWERS_IN_FLIGHT_BYTES`.
    answer: super::answers::Share,
    /// See [`Waiter::requeued`].
    requeued: bool,
    /// When the backend began this call (sent it, or finished the one before it in the pipeline).
    run_start: Instant,
    pub timer: CancelTimer,
}

impl Job {
    pub fn new(w: Waiter, timeout: Duration, now: Instant) -> Job {
        Job {
            caller: w.caller,
            req: w.req,
            started: w.started,
            phase: Phase::Done,
            schema_idx: 0,
            typing: Typing::Auto,
            error: None,
            answered: false,
            retried: false,
            too_large: false,
            over_budget: false,
            answer: super::answers::Share::default(),
            requeued: w.requeued,
            run_start: now,
            timer: CancelTimer::new(now + timeout),
        }
    }

    /// Everything this job will send is sent: only its Execute's answer is outstanding, so calls
    /// may be queued behind it without disturbing the order of the replies.
    pub fn executing_only(&self) -> bool {
        matches!(self.phase, Phase::Executing { .. }) && !self.answered && !self.timer.sent()
    }

    /// How long the backend has been on this call.
    pub fn running_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.run_start)
    }

    /// The statement's recent run time, when executing one that has run before.
    pub fn expected_us(&self) -> Option<u64> {
        match &self.phase {
            Phase::Executing { stmt, .. } => stmt.expected_us(),
            _ => None,
        }
    }

    /// The same call as a fresh waiter (it goes back to its pool to be sent again).
    pub fn to_waiter(&self, deadline: Instant, requeued: bool) -> Waiter {
        // It is sent again on this loop, which has connections of its pool: never handed on.
        Waiter { caller: self.caller, req: self.req.clone(), started: self.started, deadline, requeued, hops: MAX_HOPS }
    }

    fn is(&self, caller: Caller) -> bool {
        self.caller == caller
    }
}

/// What the engine must do after the session handled something.
#[derive(Debug)]
pub enum Action {
    /// Deliver a response to its caller.
    Answer(Caller, Response),
    /// Put the call at the front of its pool's queue.
    Requeue(Waiter),
    /// Send a CancelRequest to this backend (the session is already marked cancelled).
    Cancel,
    /// Nothing is outstanding: the connection can go back to its pool (see [`Session::reusable`]).
    Drained,
    /// The connection cannot be used any more: close it and fail what runs on it.
    Broken(PgError),
    /// A prepare found out whether `function` only reads (STABLE/IMMUTABLE) in this database, and
    /// which reset statements its database needs (see [`OVERLOAD_SQL`]).
    Learned { function: String, read_only: bool, reset_needs: ResetNeeds },
    /// A call a replica could not run: run it again on the primary. `wrote`: the replica refused a
    /// write (25006, the function's STABLE/IMMUTABLE label is wrong); otherwise the replica lacks
    /// something the primary has (class 42: a function or table it has not replayed yet).
    Reroute { waiter: Waiter, wrote: bool },
}

/// What the session needs besides itself: settings, the pool's types, the connection's send buffer,
/// scratch space for parameters, and where actions go.
pub struct Ctx<'a> {
    pub cfg: &'a Config,
    pub types: &'a mut TypeRegistry,
    pub wbuf: &'a mut BytesMut,
    pub enc: &'a mut Vec<u8>,
    pub spans: &'a mut Vec<Option<(usize, usize)>>,
    pub actions: &'a mut Vec<Action>,
    pub now: Instant,
    /// The connection is to a replica (reads only).
    pub replica: bool,
    /// The reset statements the pool's database needs behind a call (see [`ResetNeeds`]).
    pub reset_needs: ResetNeeds,
}

impl Ctx<'_> {
    fn answer(&mut self, job: &Job, r: Response) {
        self.actions.push(Action::Answer(job.caller, r));
    }
}

/// The calls and statements of one connection.
#[derive(Debug, Default)]
pub struct Session {
    /// Prepared statements by call shape.
    pub stmts: HashMap<String, Arc<Stmt>>,
    /// Call shapes that PostgreSQL found ambiguous without declared types (overloads).
    pub ambiguous: HashSet<String>,
    next_stmt: u64,
    /// The session-reset statements are prepared on this connection.
    reset_prepared: bool,
    /// After a 26000: some of them may still exist, so they are closed before being prepared again.
    reset_close_first: bool,
    /// The session reset found prepared statements a function made with SQL `PREPARE`: the next call
    /// started here sends `DEALLOCATE ALL` first (and prepares ours again). Set, the connection
    /// takes no pipelined calls, as its statement cache is emptied.
    deallocate: bool,
    /// Last ReadyForQuery transaction status.
    pub tx_status: u8,
    /// The call being answered.
    pub job: Option<Job>,
    /// Calls already sent behind it (pipelined), oldest first; replies come in this order.
    pub queued: VecDeque<Job>,
    /// Close instead of returning to the pool (redeployed database, changed session user, cancel).
    pub retire: bool,
    /// A CancelRequest was sent for a call here. It may still arrive and stop a later call, so the
    /// connection takes no new calls and is closed when its pipeline is done.
    pub cancelled: bool,
    /// `session_authorization` as the server reported it at startup.
    pub session_user: Option<String>,
}

const BODY_HEAD: &[u8] = b"{\"rows\":[";

/// Functions of a name in a schema that a call with `$3` arguments could reach (defaults and
/// VARIADIC counted). More than one means PostgreSQL would resolve the untyped call by its own
/// preferences (an unknown argument prefers the string category: `f(int)`/`f(text)` called with `1`
/// picks `f(text)`), so the call is prepared with types declared from the JSON values instead. The
/// second column is the most volatile of them (`v` > `s` > `i`): only a function that cannot write
/// (STABLE or IMMUTABLE) may be sent to a replica. The third is the [`ResetNeeds`] of the database:
/// which reset statements its functions written in SQL or a procedural language (outside
/// `pg_catalog` and `information_schema`) could need, by the words their source mentions.
const OVERLOAD_SQL: &str = concat!(
    "SELECT count(*), max(p.provolatile::text), ",
    reset_needs_sql!(),
    " FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE n.nspname = $1 AND p.proname = $2 AND p.pronargs - p.pronargdefaults <= $3::int \
     AND (p.pronargs >= $3::int OR p.provariadic <> 0)"
);

/// The [`ResetNeeds`] bits of the database, as one scalar subquery (`\m`/`\M`: word boundaries).
macro_rules! reset_needs_sql {
    () => {
        "(SELECT 1 | COALESCE(pg_catalog.bit_or( \
              CASE WHEN q.prosrc ~* '\\mrole\\M' THEN 2 ELSE 0 END \
            | CASE WHEN q.prosrc ~* '\\mtemp(orary)?\\M|pg_temp' THEN 4 ELSE 0 END \
            | CASE WHEN q.prosrc ~* 'advisory' THEN 8 ELSE 0 END \
            | CASE WHEN q.prosrc ~* '\\mlisten\\M' THEN 16 ELSE 0 END \
            | CASE WHEN q.prosrc ~* '\\mhold\\M' THEN 32 ELSE 0 END \
            | CASE WHEN q.prosrc ~* 'prepare' THEN 64 ELSE 0 END), 0) \
          FROM pg_catalog.pg_proc q WHERE q.prolang NOT IN (12, 13) \
            AND q.pronamespace <> 'pg_catalog'::regnamespace \
            AND q.pronamespace <> 'information_schema'::regnamespace)"
    };
}
use reset_needs_sql;

/// The [`ResetNeeds`] bits of the connected database on their own (what the overload check's third
/// column says).
pub const RESET_NEEDS_SQL: &str = concat!("SELECT ", reset_needs_sql!());

/// The session reset behind every call (`CALL_RESET_SESSION`), as statements prepared once per
/// connection: settings (`RESET ALL` leaves the role alone, it is marked not to be reset by it, hence
/// the second), temporary tables a function made (they would shadow real tables for the next call),
/// session advisory locks with a look for prepared statements made with SQL `PREPARE`,
/// `LISTEN`s, and cursors (`WITH HOLD` ones outlive the transaction). (`DISCARD ALL` would do all of it but cannot run inside the call's transaction, and it
/// would drop our prepared statements too.)
///
/// SQL-level prepared statements share one namespace with ours, so the only way to drop them all is
/// `DEALLOCATE ALL`, which takes ours with them. Doing that after every call would mean preparing
/// everything again for every call (0.41 of the throughput of a 1-row call, see
/// `bench/results/2026-11-30T0325Z-reset-prepared-ab.txt`); instead the lock reset also says whether
/// a function left one (a function that prepares nothing is the normal case), and only a connection
/// where one showed up sends `DEALLOCATE ALL` before its next call (see [`Session::deallocate`]).
/// The look costs ~10 % of that call's throughput (…T0332Z), so it runs only on pools of databases
/// where a function can prepare statements: one whose source mentions `PREPARE` (learned with the
/// overload check, see [`OVERLOAD_SQL`]; until known, and after every deploy, the look runs). Then
/// the lock reset is [`LOOK_STMT`] instead of `r_locks`. Prepared statements a function dropped are
/// handled where they show: a 26000 makes the connection prepare everything again.
pub const RESET_STMTS: [(&str, &str); 6] = [
    ("r_all", "RESET ALL"),
    ("r_role", "RESET ROLE"),
    ("r_temp", "DISCARD TEMP"),
    ("r_locks", "SELECT pg_catalog.pg_advisory_unlock_all()"),
    ("r_listen", "UNLISTEN *"),
    // A `WITH HOLD` cursor outlives the call's transaction (and holds its rows in memory).
    ("r_cursors", "CLOSE ALL"),
];

/// The lock reset with the look for SQL-level prepared statements, in place of `r_locks` (see
/// [`RESET_STMTS`]).
pub const LOOK_STMT: (&str, &str) = (
    "r_look",
    "SELECT pg_catalog.pg_advisory_unlock_all(), \
     EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql)",
);

/// Index in [`RESET_STMTS`] of the lock reset, which [`LOOK_STMT`] replaces where functions can
/// prepare statements.
const PREPARED_CHECK: usize = 3;

/// Which statements of [`RESET_STMTS`] a database's functions could need behind a call, one bit per
/// statement in that order, and bit 6 for [`LOOK_STMT`]. `RESET ALL` always runs (settings change
/// under too many spellings to look for); each other statement runs only where some function's
/// source mentions what it undoes: `role` (`SET ROLE`, `set_config('role', …)`), `temp`/`temporary`/
/// `pg_temp`, `advisory` (session locks), `listen`, `hold` (`WITH HOLD` cursors) and `prepare`. Most
/// databases need none of them, and every statement skipped is a Bind/Execute less for PostgreSQL on
/// every call (`bench/results/2026-12-04T2046Z-reset-needs-ab-2cores.txt`). Functions in C or
/// `internal` are not looked at (their source is a symbol name); a function that builds such a
/// statement from fragments of words is not recognised either, and leaves its state to its own next
/// calls only (pools are per database and role).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetNeeds(u8);

impl ResetNeeds {
    /// Every reset: until the first prepare has looked, and after every deploy.
    pub const ALL: ResetNeeds = ResetNeeds(0x7f);
    const LOOK: u8 = 1 << 6;

    /// The check's column: a bit mask; anything else means every reset.
    fn parse(v: Option<&[u8]>) -> ResetNeeds {
        match v.and_then(|b| std::str::from_utf8(b).ok()).and_then(|t| t.parse::<u8>().ok()) {
            Some(bits) => ResetNeeds((bits & Self::ALL.0) | 1),
            None => Self::ALL,
        }
    }

    /// The names of the prepared reset statements to run, in order.
    fn statements(self) -> impl Iterator<Item = &'static str> {
        RESET_STMTS.into_iter().enumerate().filter_map(move |(i, (name, _))| {
            if i == PREPARED_CHECK && self.0 & Self::LOOK != 0 {
                return Some(LOOK_STMT.0);
            }
            (self.0 & (1 << i) != 0).then_some(name)
        })
    }

    /// How many CommandCompletes (the call's own included) arrive before the look's row.
    fn look_after(self) -> Option<u8> {
        if self.0 & Self::LOOK == 0 {
            return None;
        }
        let before = (0..PREPARED_CHECK).filter(|i| self.0 & (1 << i) != 0).count();
        u8::try_from(before + 1).ok()
    }
}

/// Errors after which a call that ran on a replica runs again on the primary: a refused write
/// (25006), or class 42 (an object the replica has not replayed yet, e.g. a function just deployed).
/// Reads only ran there, so running them again does nothing twice.
fn replica_lacks(sqlstate: &str) -> bool {
    sqlstate == "25006" || sqlstate.starts_with("42")
}

/// `d` in milliseconds with three decimals, as `{:.3}` of the float would print it, by integer
/// arithmetic: float formatting with a precision was 3 % of the gateway's own time per 1-row call.
fn push_millis(out: &mut Vec<u8>, d: Duration) {
    let us = (d.as_nanos() + 500) / 1000;
    let _ = write!(out, "{}.{:03}", us / 1000, us % 1000);
}

/// Execute of the unnamed portal, all rows.
const EXECUTE: &[u8] = &[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0];

/// Execute of the unnamed portal, all rows, then Sync.
const EXECUTE_SYNC: &[u8] = &[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0, b'S', 0, 0, 0, 4];

/// Appends Bind (text parameters, chosen result formats) for the unnamed portal.
fn write_bind<'a>(
    out: &mut BytesMut,
    stmt: &str,
    params: impl ExactSizeIterator<Item = Option<&'a [u8]>>,
    formats: &[i16],
) {
    let start = out.len();
    out.put_u8(b'B');
    out.put_i32(0);
    out.put_u8(0); // unnamed portal
    out.put_slice(stmt.as_bytes());
    out.put_u8(0);
    out.put_i16(0); // all parameters in text format
    out.put_i16(params.len() as i16);
    for p in params {
        match p {
            None => out.put_i32(-1),
            Some(b) => {
                out.put_i32(b.len() as i32);
                out.put_slice(b);
            }
        }
    }
    out.put_i16(formats.len() as i16);
    for f in formats {
        out.put_i16(*f);
    }
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// The API error for a PostgreSQL error on a call to `database`.
pub fn api_from_db(e: &DbError, database: &str) -> ApiError {
    let kind = Kind::from_sqlstate(&e.code);
    let message = match kind {
        Kind::DatabaseNotFound => format!("database '{database}' does not exist"),
        _ => e.message.clone(),
    };
    ApiError::new(kind, message).with_database(database).with_db(DbDetail {
        sqlstate: e.code.clone(),
        detail: e.detail.clone(),
        hint: e.hint.clone(),
    })
}

fn timeout_error(cfg: &Config, job: &Job) -> ApiError {
    ApiError::new(Kind::Timeout, format!("call exceeded {} ms", cfg.call.timeout.as_millis()))
        .with_database(&job.req.database)
}

impl Session {
    pub fn new(session_user: Option<String>) -> Session {
        Session { tx_status: b'I', session_user, ..Session::default() }
    }

    fn next_stmt_name(&mut self) -> String {
        self.next_stmt += 1;
        format!("s{}", self.next_stmt)
    }

    /// Whether a call that has not been answered runs or waits here.
    pub fn busy(&self) -> bool {
        self.job.iter().chain(self.queued.iter()).any(|j| !j.answered)
    }

    /// Whether the connection may take new calls once drained.
    pub fn reusable(&self) -> bool {
        !self.retire && self.tx_status == b'I'
    }

    /// Starts `job` on this idle connection: executes from the statement cache or prepares first.
    pub fn start(&mut self, cx: &mut Ctx<'_>, job: Job) {
        self.job = Some(job);
        self.begin(cx);
        self.finish_if_done(cx);
    }

    /// The prepared statement a pipelined call of this shape would use, if this connection has it.
    pub fn cached_for(&self, req: &CallRequest, schema: &str) -> Option<&Arc<Stmt>> {
        KEY.with_borrow_mut(|k| self.lookup(req, schema, k).0)
    }

    /// The cached statement for `req` and whether its function is overloaded; leaves the key in `k`.
    fn lookup(&self, req: &CallRequest, schema: &str, k: &mut String) -> (Option<&Arc<Stmt>>, bool) {
        req.write_shape_key(schema, k);
        let overloaded = self.ambiguous.contains(k.as_str());
        if overloaded {
            // Cached per JSON kinds: `f(1)` and `f("x")` are different statements.
            req.push_kinds(k);
        }
        (self.stmts.get(k.as_str()), overloaded)
    }

    /// Sends `job` behind the running call with the cached `stmt`. Returns false (with the answer
    /// among the actions) when a parameter does not fit.
    pub fn pipeline(&mut self, cx: &mut Ctx<'_>, mut job: Job, stmt: Arc<Stmt>) -> bool {
        match self.write_execute(cx, &mut job, stmt) {
            Ok(()) => {
                self.queued.push_back(job);
                true
            }
            Err(e) => {
                cx.answer(&job, Response::error(&e));
                false
            }
        }
    }

    /// Executes from the cache or prepares first.
    fn begin(&mut self, cx: &mut Ctx<'_>) {
        let Some(job) = self.job.as_ref() else { return };
        let Some(schema) = cx.cfg.call.schemas.get(job.schema_idx) else { return };
        if self.deallocate {
            // An earlier call left SQL-level prepared statements. Nothing is pipelined behind a call
            // that begins here, so they go now, ahead of the prepare and in its sync group (it cannot
            // fail); ours go with them and are prepared again as calls need them.
            self.deallocate = false;
            self.stmts.clear();
            self.reset_prepared = false;
            self.reset_close_first = false;
            let _ = frontend::parse("", "DEALLOCATE ALL", std::iter::empty(), cx.wbuf);
            write_bind(cx.wbuf, "", std::iter::empty(), &[]);
            cx.wbuf.extend_from_slice(EXECUTE);
        }
        let (found, overloaded, key) = KEY.with_borrow_mut(|k| {
            let (found, overloaded) = self.lookup(&job.req, schema, k);
            let found = found.cloned();
            // The key is kept only for a statement about to be prepared.
            let key = if found.is_none() { k.clone() } else { String::new() };
            (found, overloaded, key)
        });
        let declared = overloaded && matches!(job.typing, Typing::Auto);
        match found {
            Some(stmt) => self.send_execute(cx, stmt),
            None => self.send_prepare(cx, key, declared, !overloaded),
        }
    }

    /// Parse + Describe (+ the overload check when `check`) + Sync.
    fn send_prepare(&mut self, cx: &mut Ctx<'_>, key: String, declared: bool, check: bool) {
        let name = self.next_stmt_name();
        let Some(job) = self.job.as_mut() else { return };
        let schema = &cx.cfg.call.schemas[job.schema_idx];
        let sql = job.req.sql(schema);
        let types = if declared { job.req.declared_types() } else { Vec::new() };
        let ok = frontend::parse(&name, &sql, types.iter().copied(), cx.wbuf).is_ok()
            && frontend::describe(b'S', &name, cx.wbuf).is_ok();
        debug_assert!(ok, "names and SQL are generated without NUL bytes");
        if check {
            // Same sync group, so it costs no round trip; skipped by the server if Parse failed.
            let nargs = job.req.params.len().to_string();
            let _ = frontend::parse("", OVERLOAD_SQL, std::iter::empty(), cx.wbuf);
            let fparams = [Some(schema.as_bytes()), Some(job.req.function.as_bytes()), Some(nargs.as_bytes())];
            write_bind(cx.wbuf, "", fparams.iter().copied(), &[0]);
            cx.wbuf.extend_from_slice(EXECUTE_SYNC);
        } else {
            frontend::sync(cx.wbuf);
        }
        job.error = None;
        job.phase = Phase::Preparing(Pending {
            name,
            key,
            declared,
            param_oids: Vec::new(),
            columns: Vec::new(),
            overloads: None,
            volatility: None,
            reset_needs: ResetNeeds::ALL,
            introspect_rounds: 0,
            introspect_rows: Vec::new(),
        });
    }

    /// Sends the head job with `stmt`: Bind + Execute (+ the session reset) + Sync.
    fn send_execute(&mut self, cx: &mut Ctx<'_>, stmt: Arc<Stmt>) {
        let Some(mut job) = self.job.take() else { return };
        if job.answered || job.timer.sent() {
            // Nobody waits for it, or it is already past its deadline (see `after_prepare`).
            self.job = Some(job);
            self.abandon(cx);
            return;
        }
        job.run_start = cx.now;
        if let Err(e) = self.write_execute(cx, &mut job, stmt) {
            job.answered = true;
            cx.answer(&job, Response::error(&e));
        }
        self.job = Some(job);
    }

    /// Encodes the parameters for `stmt` and appends Bind + Execute (+ the session reset) + Sync.
    /// `Err` is the answer when a parameter does not fit its declared type; nothing is written then.
    fn write_execute(&mut self, cx: &mut Ctx<'_>, job: &mut Job, stmt: Arc<Stmt>) -> Result<(), ApiError> {
        // Every parameter goes into one buffer, then Bind borrows slices of it. Both buffers are the
        // engine's, reused from call to call.
        cx.enc.clear();
        cx.spans.clear();
        for (i, v) in job.req.params.iter().enumerate() {
            let oid = stmt.param_oids.get(i).copied().unwrap_or(0);
            let start = cx.enc.len();
            match super::encode::encode_param(v, oid, cx.types, cx.enc) {
                Ok(true) => cx.spans.push(None),
                Ok(false) => cx.spans.push(Some((start, cx.enc.len()))),
                Err(pe) => {
                    let arg = super::hints::param_label(&job.req, i, oid, cx.types);
                    return Err(ApiError::new(Kind::InvalidParameter, format!("parameter {arg}: {}", pe.message))
                        .with_database(&job.req.database));
                }
            }
        }
        let reset = cx.cfg.call.reset_session;
        if reset && !self.reset_prepared {
            // Prepared once per connection, ahead of the call so that a failing call (which makes
            // PostgreSQL skip to Sync) cannot skip them; prepared statements outlive a rollback.
            for (name, sql) in RESET_STMTS.into_iter().chain([LOOK_STMT]) {
                if self.reset_close_first {
                    let _ = frontend::close(b'S', name, cx.wbuf);
                }
                let _ = frontend::parse(name, sql, std::iter::empty(), cx.wbuf);
            }
            self.reset_prepared = true;
            self.reset_close_first = false;
        }
        let (enc, spans) = (&*cx.enc, &*cx.spans);
        write_bind(cx.wbuf, &stmt.name, spans.iter().map(|s| s.map(|(a, b)| &enc[a..b])), &stmt.formats);
        if reset {
            // Settings a function changed with set_config(..., false), SET or SET ROLE must not leak
            // into the next call on this connection. The resets run in the call's own implicit
            // transaction, before its Sync: no extra round trip, transaction or ReadyForQuery. If the
            // call fails, PostgreSQL skips to Sync and the rollback already undoes what the call set;
            // if a reset itself fails (a late cancel), the whole transaction rolls back and the call is
            // answered with that error. SET SESSION AUTHORIZATION is caught by its ParameterStatus.
            for name in cx.reset_needs.statements() {
                cx.wbuf.extend_from_slice(EXECUTE);
                write_bind(cx.wbuf, name, std::iter::empty(), &[]);
            }
        }
        cx.wbuf.extend_from_slice(EXECUTE_SYNC);
        job.error = None;
        let mut body = Vec::with_capacity(512);
        body.extend_from_slice(BODY_HEAD);
        let look_after = if reset { cx.reset_needs.look_after() } else { None };
        job.phase = Phase::Executing { stmt, body, rows: 0, completes: 0, look_after };
        Ok(())
    }

    /// One message for the head job. `Err` means the connection is unusable.
    pub fn on_message(&mut self, cx: &mut Ctx<'_>, msg: Backend) -> Result<(), PgError> {
        let Some(job) = self.job.as_mut() else {
            return Err(PgError::Protocol("message on a busy connection without a call".into()));
        };
        match msg {
            Backend::Error(e) => {
                if e.severity == "FATAL" || e.severity == "PANIC" {
                    return Err(PgError::Db(Box::new(e)));
                }
                job.error.get_or_insert(e);
            }
            Backend::Notice(_) => {}
            Backend::RowDescription(cols) => {
                if let Phase::Preparing(p) = &mut job.phase {
                    p.columns = cols;
                }
            }
            Backend::AuthSasl(_) => {
                return Err(PgError::Protocol("authentication request on a ready connection".into()));
            }
            Backend::Message(m) => match m {
                Message::DataRow(row) => match &mut job.phase {
                    Phase::Executing { stmt, body, rows, completes: 0, .. }
                        if job.error.is_none() && !job.answered && !job.too_large =>
                    {
                        let vals = row_values(&row)?;
                        if *rows > 0 {
                            body.push(b',');
                        }
                        render_row_prepared(&stmt.columns, vals, cx.types, body);
                        *rows += 1;
                        if body.len() > cx.cfg.limits.max_response_bytes {
                            // Stop here and give the memory back; the rest of the rows are read and dropped.
                            job.too_large = true;
                            *body = Vec::new();
                            job.answer.release();
                        } else if !job.answer.cover(body.capacity(), cx.cfg.limits.max_answers_in_flight_bytes) {
                            job.too_large = true;
                            job.over_budget = true;
                            *body = Vec::new();
                        }
                    }
                    Phase::Executing { completes, look_after, .. } if *look_after == Some(*completes)
                        && data_row_fields(&row)?.get(1).copied().flatten() == Some(b"t".as_slice()) => {
                            // A prepared statement made with SQL PREPARE outlives the call: the
                            // connection drops them all before its next call (see RESET_STMTS). Its
                            // cache of our statements is emptied now, so no call is pipelined onto it
                            // meanwhile.
                            self.deallocate = true;
                            self.stmts.clear();
                        }
                    Phase::Preparing(p) if job.error.is_none() => {
                        let vals = data_row_fields(&row)?;
                        p.overloads = vals
                            .first()
                            .copied()
                            .flatten()
                            .and_then(|b| std::str::from_utf8(b).ok())
                            .and_then(|t| t.parse().ok());
                        p.volatility = vals.get(1).copied().flatten().and_then(|b| b.first().copied());
                        p.reset_needs = ResetNeeds::parse(vals.get(2).copied().flatten());
                    }
                    Phase::Introspecting(p) => {
                        let vals = data_row_fields(&row)?;
                        p.introspect_rows
                            .push(vals.iter().map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned())).collect());
                    }
                    Phase::Suggesting { found, .. } if job.error.is_none() => {
                        let vals = data_row_fields(&row)?;
                        let text = |i: usize| {
                            vals.get(i)
                                .copied()
                                .flatten()
                                .map(|b| String::from_utf8_lossy(b).into_owned())
                                .unwrap_or_default()
                        };
                        found.push((text(0), text(1)));
                    }
                    _ => {}
                },
                Message::ParameterDescription(pd) => {
                    if let Phase::Preparing(p) = &mut job.phase {
                        let mut it = pd.parameters();
                        let mut oids = Vec::new();
                        while let Ok(Some(o)) = it.next() {
                            oids.push(o);
                        }
                        p.param_oids = oids;
                    }
                }
                Message::ParameterStatus(body)
                    // SET SESSION AUTHORIZATION survives the resets: a connection whose session user
                    // changed is not reused (the server reports every change of this setting).
                    if body.name().ok() == Some("session_authorization")
                        && self.session_user.as_deref() != body.value().ok()
                    => {
                        self.retire = true;
                    }
                Message::NoData => {
                    if let Phase::Preparing(p) = &mut job.phase {
                        p.columns.clear();
                    }
                }
                Message::CommandComplete(_) => {
                    if let Phase::Executing { completes, .. } = &mut job.phase {
                        *completes = completes.saturating_add(1);
                    }
                }
                Message::ReadyForQuery(b) => {
                    self.tx_status = b.status();
                    let phase = std::mem::replace(&mut job.phase, Phase::Done);
                    match phase {
                        Phase::Done => return Err(PgError::Protocol("unexpected ReadyForQuery".into())),
                        Phase::Preparing(p) => self.prepared(cx, p),
                        Phase::Introspecting(p) => self.introspected(cx, p),
                        Phase::Executing { stmt, body, rows, .. } => self.executed(cx, stmt, body, rows),
                        Phase::Suggesting { error, found } => self.suggested(cx, error, found),
                    }
                    self.finish_if_done(cx);
                }
                _ => {}
            },
        }
        Ok(())
    }

    /// The prepare's Sync arrived.
    fn prepared(&mut self, cx: &mut Ctx<'_>, mut p: Pending) {
        let Some(job) = self.job.as_mut() else { return };
        let schemas = &cx.cfg.call.schemas;
        let untyped = matches!(job.typing, Typing::Untyped(_));
        if let Some(mut e) = job.error.take() {
            if cx.replica && replica_lacks(&e.code) && !job.answered {
                // The replica may not have replayed the function (or a type) yet: the primary knows.
                let mut w = job.to_waiter(cx.now + cx.cfg.pool.wait_timeout, job.requeued);
                w.req.primary = true;
                job.answered = true;
                self.finish_if_done(cx);
                cx.actions.push(Action::Reroute { waiter: w, wrote: false });
                return;
            }
            if e.code == "42883" && p.declared && !job.answered {
                // No overload takes the declared types (e.g. a string for a date): let PostgreSQL
                // resolve the call with untyped arguments after all.
                job.typing = Typing::Untyped(Some(Box::new(e)));
                return self.begin(cx);
            }
            if e.code == "42725" && untyped {
                // Untyped is ambiguous and declared matched nothing: the declared error says more.
                if let Typing::Untyped(d) = &mut job.typing
                    && let Some(d) = d.take()
                {
                    e = *d;
                }
            }
            if e.code == "42883" && job.schema_idx + 1 < schemas.len() && !job.answered {
                job.schema_idx += 1;
                job.typing = Typing::Auto;
                return self.begin(cx);
            }
            if e.code == "42725" && !p.declared && !untyped && !job.answered {
                // Overloads PostgreSQL cannot choose between with untyped arguments: remember the
                // shape and declare types from the JSON values.
                self.ambiguous.insert(job.req.shape_key(&schemas[job.schema_idx]));
                return self.begin(cx);
            }
            if e.code == "42883" && !p.declared && !untyped && !job.answered {
                // Not a question of types (those keep PostgreSQL's words): name or arguments are wrong.
                return self.suggest(cx, e);
            }
            let e = api_from_db(&e, &job.req.database);
            return self.fail(cx, e);
        }
        if let Some(v) = p.volatility.take() {
            cx.actions.push(Action::Learned {
                function: job.req.function.to_string(),
                read_only: v == b's' || v == b'i',
                reset_needs: p.reset_needs,
            });
        }
        if !p.declared && !untyped && p.overloads.take().is_some_and(|n| n > 1) && !job.answered {
            // Overloaded: drop the untyped statement and prepare with declared types.
            let _ = frontend::close(b'S', &p.name, cx.wbuf);
            self.ambiguous.insert(job.req.shape_key(&schemas[job.schema_idx]));
            return self.begin(cx);
        }
        self.after_prepare(cx, p);
    }

    /// Lists the functions of the call schemas (same sync group rules as any step) to explain a 42883.
    fn suggest(&mut self, cx: &mut Ctx<'_>, error: DbError) {
        let Some(job) = self.job.as_mut() else { return };
        let schemas = format!("{{{}}}", cx.cfg.call.schemas.join(","));
        let _ = frontend::parse("", super::hints::FUNCTIONS_SQL, std::iter::empty(), cx.wbuf);
        write_bind(cx.wbuf, "", [Some(schemas.as_bytes())].into_iter(), &[0]);
        cx.wbuf.extend_from_slice(EXECUTE_SYNC);
        job.error = None;
        job.phase = Phase::Suggesting { error, found: Vec::new() };
    }

    /// The function list came back: the answer names what exists.
    fn suggested(&mut self, cx: &mut Ctx<'_>, error: DbError, found: Vec<(String, String)>) {
        let Some(job) = self.job.as_mut() else { return };
        let mut e = api_from_db(&error, &job.req.database);
        if job.error.take().is_none() {
            e.message = super::hints::not_found(&job.req, &cx.cfg.call.schemas, &found);
            // PostgreSQL's hint (explicit type casts) misleads for a name or argument mistake.
            if let Some(d) = e.db.as_mut() {
                d.hint = None;
            }
        }
        self.fail(cx, e);
    }

    /// Type lookups for a prepared statement came back.
    fn introspected(&mut self, cx: &mut Ctx<'_>, mut p: Pending) {
        let Some(job) = self.job.as_mut() else { return };
        let rows = std::mem::take(&mut p.introspect_rows);
        match job.error.take() {
            Some(e) => crate::log::warn("type introspection failed", &[("database", &job.req.database), ("error", &e)]),
            None => {
                if let Err(e) = cx.types.add_rows(&rows) {
                    crate::log::warn("type introspection rows unreadable", &[("error", &e)]);
                }
            }
        }
        self.after_prepare(cx, p);
    }

    /// After Parse/Describe (and any type lookups): learn missing types, cache the statement, execute.
    fn after_prepare(&mut self, cx: &mut Ctx<'_>, mut p: Pending) {
        let Some(job) = self.job.as_mut() else { return };
        if job.answered || job.timer.sent() {
            return self.abandon(cx);
        }
        let mut oids: Vec<u32> = p.param_oids.clone();
        oids.extend(p.columns.iter().map(|c| c.type_oid));
        let missing = cx.types.missing(&oids);
        if !missing.is_empty() && p.introspect_rounds < 4 {
            p.introspect_rounds += 1;
            let list = format!("{{{}}}", missing.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(","));
            let _ = frontend::parse("", INTROSPECTION_SQL, std::iter::empty(), cx.wbuf);
            write_bind(cx.wbuf, "", [Some(list.as_bytes())].into_iter(), &[0]);
            cx.wbuf.extend_from_slice(EXECUTE_SYNC);
            job.error = None;
            job.phase = Phase::Introspecting(p);
            return;
        }
        let types: &TypeRegistry = cx.types;
        let columns: Vec<PreparedColumn> =
            p.columns.iter().map(|col| PreparedColumn::new(&col.name, col.type_oid, types)).collect();
        let stmt = Arc::new(Stmt::new(p.name, p.param_oids, columns));
        self.stmts.insert(p.key, stmt.clone());
        self.send_execute(cx, stmt);
    }

    /// The execute's Sync arrived.
    fn executed(&mut self, cx: &mut Ctx<'_>, stmt: Arc<Stmt>, mut body: Vec<u8>, rows: u64) {
        let pipelined = !self.queued.is_empty();
        let cancelled = self.cancelled;
        let Some(job) = self.job.as_mut() else { return };
        let now = cx.now;
        if let Some(e) = job.error.take() {
            let stale = matches!(e.code.as_str(), "0A000" | "26000");
            if e.code == "26000" {
                // A prepared statement of ours is gone: a function ran DEALLOCATE ALL (or DEALLOCATE
                // of one of ours). Trust none of them; everything is prepared again as needed.
                self.stmts.clear();
                self.reset_prepared = false;
                self.reset_close_first = true;
            }
            if stale && !job.retried && !job.answered {
                // The function changed under a cached plan: prepare afresh once.
                job.retried = true;
                self.stmts.retain(|_, s| !Arc::ptr_eq(s, &stmt));
                let _ = frontend::close(b'S', &stmt.name, cx.wbuf);
                if !pipelined {
                    return self.begin(cx);
                }
                // Calls already sent behind this one keep their place, so it cannot prepare here; it
                // goes back to the pool (its transaction rolled back: nothing ran).
                let w = job.to_waiter(now + cx.cfg.pool.wait_timeout, job.requeued);
                job.answered = true;
                self.finish_if_done(cx);
                cx.actions.push(Action::Requeue(w));
                return;
            }
            if e.code == "57014" && cancelled && !job.timer.sent() && !job.requeued && !job.answered {
                // A CancelRequest sent for an earlier call on this connection arrived late and stopped
                // this one. Its transaction rolled back, so it is sent again elsewhere.
                let w = job.to_waiter(now + cx.cfg.pool.wait_timeout, true);
                job.answered = true;
                self.finish_if_done(cx);
                cx.actions.push(Action::Requeue(w));
                return;
            }
            if e.code == "42P05" && self.deallocate && !job.requeued && !job.answered {
                // The function's PREPARE met a statement of the same name that an earlier call on this
                // connection left (this call was already sent behind it when the reset found it). Its
                // transaction rolled back: it runs again once the connection has dropped them.
                let w = job.to_waiter(now + cx.cfg.pool.wait_timeout, true);
                job.answered = true;
                self.finish_if_done(cx);
                cx.actions.push(Action::Requeue(w));
                return;
            }
            if cx.replica && replica_lacks(&e.code) && !job.answered {
                // A write refused (the function is labelled STABLE or IMMUTABLE but wrote: on a replica
                // that fails before anything changes), or something the replica has not replayed
                // yet: the call runs again on the primary, once.
                let mut w = job.to_waiter(now + cx.cfg.pool.wait_timeout, job.requeued);
                w.req.primary = true;
                job.answered = true;
                self.finish_if_done(cx);
                cx.actions.push(Action::Reroute { waiter: w, wrote: e.code == "25006" });
                return;
            }
            let mut api = api_from_db(&e, &job.req.database);
            if e.code == "26000" {
                api.message = format!(
                    "{}: the function removed prepared statements the gateway uses (DEALLOCATE); its work was \
                     rolled back, and the connection prepares them again",
                    e.message
                );
            }
            if let Some(i) = super::hints::bind_param_index(e.where_.as_deref()) {
                // PostgreSQL rejected a value while binding it: say which parameter, and its type.
                let oid = stmt.param_oids.get(i).copied().unwrap_or(0);
                api.kind = Kind::InvalidParameter;
                api.message =
                    format!("parameter {}: {}", super::hints::param_label(&job.req, i, oid, cx.types), e.message);
            }
            return self.fail(cx, api);
        }
        stmt.note_run(now.saturating_duration_since(job.run_start));
        if job.over_budget {
            let e = super::answers::busy(cx.cfg).with_database(&job.req.database);
            return self.fail(cx, e);
        }
        if job.too_large {
            let e = ApiError::new(
                Kind::ResponseTooLarge,
                format!(
                    "the result of {} is larger than MAX_RESPONSE_BYTES ({} bytes); return fewer rows (paginate)",
                    job.req.function, cx.cfg.limits.max_response_bytes
                ),
            )
            .with_database(&job.req.database);
            return self.fail(cx, e);
        }
        if !job.answered {
            job.answered = true;
            body.extend_from_slice(b"],\"row_count\":");
            let _ = write!(body, "{rows}");
            body.extend_from_slice(b",\"execution_time_ms\":");
            push_millis(&mut body, now.saturating_duration_since(job.started));
            body.push(b'}');
            cx.answer(job, Response::json(200, body));
        }
    }

    /// The client left, or the deadline passed, before the function was started (while the statement
    /// was being prepared). A CancelRequest that reached the backend between pipeline steps found
    /// nothing to cancel, so the function must not be started now: it would run to its end for
    /// nobody. Answers 504 when the client still waits; the connection is then retired like any
    /// connection that had a cancel sent.
    fn abandon(&mut self, cx: &mut Ctx<'_>) {
        let Some(job) = self.job.as_mut() else { return };
        job.phase = Phase::Done;
        if !job.answered {
            job.answered = true;
            let e = timeout_error(cx.cfg, job);
            cx.answer(job, Response::error(&e));
        }
    }

    fn fail(&mut self, cx: &mut Ctx<'_>, e: ApiError) {
        if let Some(job) = self.job.as_mut()
            && !job.answered
        {
            job.answered = true;
            cx.answer(job, Response::error(&e));
        }
    }

    /// When the head job has nothing outstanding, the next pipelined call takes its place, or the
    /// connection is drained.
    fn finish_if_done(&mut self, cx: &mut Ctx<'_>) {
        let Some(job) = self.job.as_ref() else { return };
        if !matches!(job.phase, Phase::Done) {
            return;
        }
        // A CancelRequest travels on another socket and can reach the backend after this job is over,
        // while the next job's statement runs, and cancel that one instead (tests/call.rs
        // a_late_cancel_never_hits_the_next_call). A connection that had a cancel sent is therefore
        // never reused.
        if job.timer.sent() {
            self.retire = true;
        }
        self.job = None;
        let Some(mut next) = self.queued.pop_front() else {
            cx.actions.push(Action::Drained);
            return;
        };
        if self.tx_status != b'I' {
            // A function call in its own implicit transaction cannot leave one open; if the server
            // says otherwise, the calls behind must not run inside it. Closing rolls it back.
            let e = PgError::Protocol(format!("transaction status '{}' after a call", self.tx_status as char));
            self.job = Some(next);
            cx.actions.push(Action::Broken(e));
            return;
        }
        // The backend starts the next call now.
        next.run_start = cx.now;
        next.timer = CancelTimer::new(cx.now + cx.cfg.call.timeout);
        let gone = next.answered;
        self.job = Some(next);
        if gone {
            // Its client left while it was queued: stop it like a running call.
            self.cancel(cx);
        }
    }

    /// Marks the head call cancelled and asks the engine to send a CancelRequest.
    fn cancel(&mut self, cx: &mut Ctx<'_>) {
        if let Some(j) = self.job.as_mut() {
            j.timer.mark_sent(cx.now);
        }
        self.mark_cancelled();
        cx.actions.push(Action::Cancel);
    }

    /// A CancelRequest goes out for this connection: it is never reused afterwards.
    pub fn mark_cancelled(&mut self) {
        self.cancelled = true;
        self.retire = true;
    }

    /// The client of `caller` left. True when a CancelRequest must go out for the
    /// call running here (see [`Session::mark_cancelled`]); a call still queued is cancelled when it
    /// starts.
    pub fn client_gone(&mut self, caller: Caller, now: Instant) -> bool {
        for j in self.queued.iter_mut().filter(|j| j.is(caller)) {
            j.answered = true;
        }
        let Some(j) = self.job.as_mut().filter(|j| j.is(caller) && !j.answered) else {
            return false;
        };
        j.answered = true;
        if j.timer.sent() {
            return false;
        }
        j.timer.mark_sent(now);
        self.mark_cancelled();
        true
    }

    /// Every call here that still waits for an answer, taken out (the connection is going away).
    pub fn take_unanswered(&mut self) -> Vec<Job> {
        self.job.take().into_iter().chain(self.queued.drain(..)).filter(|j| !j.answered).collect()
    }

    /// Answers with a timeout the calls pipelined behind the head whose own timeout (counted from
    /// when they were sent) is past by the grace a cancel gets, see [`CancelTimer::overdue`]. They
    /// are on the wire: they cannot be taken back and sent elsewhere, as the backend may still run
    /// them once it goes on; what they return then is dropped (a call answered while queued is
    /// cancelled when its turn comes).
    pub fn time_out_queued(&mut self, cfg: &Config, now: Instant, out: &mut Vec<(Caller, Response)>) {
        for j in self.queued.iter_mut().filter(|j| !j.answered && j.timer.overdue(now)) {
            j.answered = true;
            out.push((j.caller, Response::error(&timeout_error(cfg, j))));
        }
    }

    /// Answers the head call with a timeout if it still waits (the engine is giving up on it).
    pub fn time_out(&mut self, cfg: &Config) -> Option<(Caller, Response)> {
        let j = self.job.as_mut().filter(|j| !j.answered)?;
        j.answered = true;
        Some((j.caller, Response::error(&timeout_error(cfg, j))))
    }
}

#[cfg(test)]
mod tests;
