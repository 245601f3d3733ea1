//! The call protocol driven by scripted PostgreSQL replies: every phase transition, and the bugs the
//! integration tests pinned (re-prepare on 0A000, the late cancel, a changed session user).

use super::*;
use crate::config::{Config, Settings, Source};
use crate::json::Value;
use crate::pg::frame::read_message;

const INT4: u32 = 23;
const TEXT: u32 = 25;

fn cfg_with(extra: &[(&str, &str)]) -> Config {
    let mut s = Settings::defaults();
    for (k, v) in extra {
        assert!(s.set(k, v, Source::Flag));
    }
    Config::from_settings(&s).unwrap()
}

fn req(function: &str, params: Vec<Value>) -> CallRequest {
    let body = Value::Object(vec![
        ("platform".into(), Value::String("acme".into())),
        ("function".into(), Value::String(function.into())),
        ("params".into(), Value::Array(params)),
    ]);
    CallRequest::from_json(body).unwrap()
}

/// A session with everything a test needs around it.
struct Rig {
    cfg: Config,
    types: TypeRegistry,
    wbuf: BytesMut,
    enc: Vec<u8>,
    spans: Vec<Option<(usize, usize)>>,
    actions: Vec<Action>,
    now: Instant,
    s: Session,
    next_client: usize,
    /// The connection is to a replica.
    replica: bool,
    /// The reset statements the pool's database needs.
    needs: ResetNeeds,
}

impl Rig {
    fn new(extra: &[(&str, &str)]) -> Rig {
        Rig {
            cfg: cfg_with(extra),
            types: TypeRegistry::new(),
            wbuf: BytesMut::new(),
            enc: Vec::new(),
            spans: Vec::new(),
            actions: Vec::new(),
            now: Instant::now(),
            s: Session::new(Some("ssdb_acme".into())),
            next_client: 0,
            replica: false,
            needs: ResetNeeds::ALL,
        }
    }

    fn with<R>(&mut self, f: impl FnOnce(&mut Session, &mut Ctx<'_>) -> R) -> R {
        let mut cx = Ctx {
            cfg: &self.cfg,
            types: &mut self.types,
            wbuf: &mut self.wbuf,
            enc: &mut self.enc,
            spans: &mut self.spans,
            actions: &mut self.actions,
            now: self.now,
            replica: self.replica,
            reset_needs: self.needs,
        };
        f(&mut self.s, &mut cx)
    }

    fn job(&mut self, r: CallRequest) -> Job {
        self.next_client += 1;
        let w = Waiter {
            caller: Caller { loop_id: 0, client: self.next_client, generation: 1 },
            req: r,
            started: self.now,
            deadline: self.now + Duration::from_secs(5),
            requeued: false,
            hops: 0,
        };
        Job::new(w, self.cfg.call.timeout, self.now)
    }

    fn start(&mut self, r: CallRequest) {
        let job = self.job(r);
        self.with(|s, cx| s.start(cx, job));
    }

    /// Feeds PostgreSQL's bytes message by message.
    fn reply(&mut self, bytes: Vec<u8>) -> Result<(), PgError> {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Some(m) = read_message(&mut buf)? {
            self.with(|s, cx| s.on_message(cx, m))?;
        }
        Ok(())
    }

    /// The frontend message tags written since the last call, in order.
    fn sent(&mut self) -> Vec<u8> {
        let mut tags = Vec::new();
        let mut i = 0;
        while i + 5 <= self.wbuf.len() {
            tags.push(self.wbuf[i]);
            let len = i32::from_be_bytes([self.wbuf[i + 1], self.wbuf[i + 2], self.wbuf[i + 3], self.wbuf[i + 4]]);
            i += 1 + len as usize;
        }
        self.wbuf.clear();
        tags
    }

    fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Starts `f(2)` and pipelines `f(3)` behind it on the cached statement; returns the client of
    /// the call behind.
    fn start_with_one_behind(&mut self) -> usize {
        self.start(req("f", vec![Value::Number("2".into())]));
        let stmt = self.s.cached_for(&req("f", vec![Value::Number("3".into())]), "public").cloned().unwrap();
        let behind = self.job(req("f", vec![Value::Number("3".into())]));
        let client = behind.caller.client;
        assert!(self.with(|s, cx| s.pipeline(cx, behind, stmt)));
        client
    }
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn parse_complete() -> Vec<u8> {
    msg(b'1', &[])
}
fn bind_complete() -> Vec<u8> {
    msg(b'2', &[])
}
fn close_complete() -> Vec<u8> {
    msg(b'3', &[])
}
fn no_data() -> Vec<u8> {
    msg(b'n', &[])
}
fn rfq(status: u8) -> Vec<u8> {
    msg(b'Z', &[status])
}
fn command(tag: &str) -> Vec<u8> {
    let mut b = tag.as_bytes().to_vec();
    b.push(0);
    msg(b'C', &b)
}
fn param_desc(oids: &[u32]) -> Vec<u8> {
    let mut b = (oids.len() as i16).to_be_bytes().to_vec();
    for o in oids {
        b.extend_from_slice(&o.to_be_bytes());
    }
    msg(b't', &b)
}
fn row_desc(cols: &[(&str, u32)]) -> Vec<u8> {
    let mut b = (cols.len() as i16).to_be_bytes().to_vec();
    for (name, oid) in cols {
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        b.extend_from_slice(&0u32.to_be_bytes()); // table oid
        b.extend_from_slice(&0i16.to_be_bytes()); // column number
        b.extend_from_slice(&oid.to_be_bytes());
        b.extend_from_slice(&4i16.to_be_bytes()); // size
        b.extend_from_slice(&(-1i32).to_be_bytes()); // modifier
        b.extend_from_slice(&0i16.to_be_bytes()); // format
    }
    msg(b'T', &b)
}
fn data_row(vals: &[Option<&str>]) -> Vec<u8> {
    let mut b = (vals.len() as i16).to_be_bytes().to_vec();
    for v in vals {
        match v {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(s) => {
                b.extend_from_slice(&(s.len() as i32).to_be_bytes());
                b.extend_from_slice(s.as_bytes());
            }
        }
    }
    msg(b'D', &b)
}
fn error(severity: &str, code: &str, text: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (f, v) in [(b'S', severity), (b'V', severity), (b'C', code), (b'M', text)] {
        b.push(f);
        b.extend_from_slice(v.as_bytes());
        b.push(0);
    }
    b.push(0);
    msg(b'E', &b)
}
fn param_status(name: &str, value: &str) -> Vec<u8> {
    let mut b = name.as_bytes().to_vec();
    b.push(0);
    b.extend_from_slice(value.as_bytes());
    b.push(0);
    msg(b'S', &b)
}

/// Bind/Execute of the call, then of each reset statement, then Sync.
fn exec_tags() -> Vec<u8> {
    let mut t = b"B".to_vec();
    for _ in RESET_STMTS {
        t.extend_from_slice(b"EB");
    }
    t.extend_from_slice(b"ES");
    t
}

/// `times` calls sent one after the other.
fn exec_tags_n(times: usize) -> Vec<u8> {
    exec_tags().repeat(times)
}

/// The reset statements prepared (once per connection), then the call.
fn first_exec_tags() -> Vec<u8> {
    let mut t = vec![b'P'; RESET_STMTS.len() + 1];
    t.extend(exec_tags());
    t
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// The replies to Parse/Describe + the overload check for `f(int4) → id int4`, with `overloads`
/// candidates.
fn prepare_ok(overloads: &str) -> Vec<u8> {
    prepare_reply(&[Some(overloads)])
}

/// The replies to Parse/Describe + the overload check whose row is `check_row`.
fn prepare_reply(check_row: &[Option<&str>]) -> Vec<u8> {
    cat(&[
        parse_complete(),
        param_desc(&[INT4]),
        row_desc(&[("id", INT4)]),
        parse_complete(),
        bind_complete(),
        data_row(check_row),
        command("SELECT 1"),
        rfq(b'I'),
    ])
}

/// The replies to Bind/Execute + the resets + Sync, with one row per value.
fn execute_ok(values: &[&str]) -> Vec<u8> {
    execute_leaving(values, &[])
}

/// As [`execute_ok`], the function having left SQL-level prepared statements (`left`, names; only
/// whether there are any reaches the gateway), behind every reset statement.
fn execute_leaving(values: &[&str], left: &[&str]) -> Vec<u8> {
    let all: Vec<&str> = ResetNeeds::ALL.statements().collect();
    execute_reply(values, &all, !left.is_empty())
}

/// The replies to Bind/Execute of a call answering one row per value, then to the reset statements
/// `names` (the look's row saying whether SQL-level prepared statements were left), then Sync.
fn execute_reply(values: &[&str], names: &[&str], left: bool) -> Vec<u8> {
    let mut v = vec![bind_complete()];
    for x in values {
        v.push(data_row(&[Some(x)]));
    }
    v.push(command(&format!("SELECT {}", values.len())));
    for name in names {
        v.push(bind_complete());
        if *name == LOOK_STMT.0 {
            v.push(data_row(&[Some(""), Some(if left { "t" } else { "f" })]));
            v.push(command("SELECT 1"));
        } else if *name == "r_locks" {
            // The reset's own row must not end up in the answer.
            v.push(data_row(&[Some("")]));
            v.push(command("SELECT 1"));
        } else {
            v.push(command("RESET"));
        }
    }
    v.push(rfq(b'I'));
    cat(&v)
}

fn answers(actions: &[Action]) -> Vec<(usize, u16, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Answer(c, r) => Some((c.client, r.status, String::from_utf8_lossy(&r.body).into_owned())),
            _ => None,
        })
        .collect()
}

fn drained(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Drained))
}

/// Runs one call of `f(1)` from scratch to its answer.
fn first_call(r: &mut Rig) {
    r.start(req("f", vec![Value::Number("1".into())]));
    assert_eq!(r.sent(), b"PDPBES".to_vec(), "Parse, Describe, overload check, Sync");
    r.reply(prepare_ok("1")).unwrap();
    assert_eq!(r.sent(), first_exec_tags(), "reset statements prepared once, then Bind/Execute + resets");
    r.reply(execute_ok(&["7"])).unwrap();
}

/// A rig whose connection has run one call (statement and resets prepared), its answer taken.
fn warmed(extra: &[(&str, &str)]) -> Rig {
    let mut r = Rig::new(extra);
    first_call(&mut r);
    r.take_actions();
    r
}

#[test]
fn a_first_call_prepares_then_executes_and_answers() {
    let mut r = Rig::new(&[]);
    first_call(&mut r);
    let a = r.take_actions();
    let ans = answers(&a);
    assert_eq!(ans.len(), 1);
    assert_eq!(ans[0].1, 200);
    assert!(ans[0].2.starts_with(r#"{"rows":[{"id":7}],"row_count":1,"execution_time_ms":"#), "{}", ans[0].2);
    assert!(drained(&a));
    assert!(r.s.job.is_none());
    assert_eq!(r.s.stmts.len(), 1);
    assert!(r.s.reusable());
}

#[test]
fn the_next_call_of_the_same_shape_uses_the_cached_statement() {
    let mut r = warmed(&[]);
    r.start(req("f", vec![Value::Number("2".into())]));
    assert_eq!(r.sent(), exec_tags(), "no Parse for a cached statement");
    r.reply(execute_ok(&["2", "3"])).unwrap();
    let ans = answers(&r.take_actions());
    assert!(ans[0].2.starts_with(r#"{"rows":[{"id":2},{"id":3}],"row_count":2"#), "{}", ans[0].2);
}

#[test]
fn without_the_session_reset_only_bind_execute_sync_go_out() {
    let mut r = Rig::new(&[("CALL_RESET_SESSION", "false")]);
    r.start(req("f", vec![Value::Number("1".into())]));
    r.sent();
    r.reply(prepare_ok("1")).unwrap();
    assert_eq!(r.sent(), b"BES".to_vec());
}

#[test]
fn a_stale_plan_is_prepared_again_once() {
    let mut r = warmed(&[]);
    r.start(req("f", vec![Value::Number("2".into())]));
    r.sent();
    r.reply(cat(&[error("ERROR", "0A000", "cached plan must not change result type"), rfq(b'I')])).unwrap();
    assert_eq!(r.sent(), b"CPDPBES".to_vec(), "Close of the stale statement, then a fresh prepare");
    assert!(r.s.stmts.is_empty(), "the stale statement left the cache");
    assert!(answers(&r.take_actions()).is_empty(), "the client is not answered yet");
    r.reply(cat(&[close_complete(), prepare_ok("1")])).unwrap();
    r.sent();
    // A second stale plan is an answer, not a loop.
    r.reply(cat(&[error("ERROR", "0A000", "cached plan must not change result type"), rfq(b'I')])).unwrap();
    let a = r.take_actions();
    let ans = answers(&a);
    assert_eq!(ans.len(), 1);
    assert!(ans[0].2.contains("0A000"), "{}", ans[0].2);
    assert!(drained(&a));
}

#[test]
fn a_stale_plan_with_calls_pipelined_behind_goes_back_to_the_pool() {
    let mut r = warmed(&[]);
    let behind_client = r.start_with_one_behind();
    r.sent();
    r.reply(cat(&[error("ERROR", "0A000", "cached plan must not change result type"), rfq(b'I')])).unwrap();
    let a = r.take_actions();
    let requeued: Vec<_> = a.iter().filter_map(|a| if let Action::Requeue(w) = a { Some(w) } else { None }).collect();
    assert_eq!(requeued.len(), 1);
    assert!(!requeued[0].requeued, "not a cancel victim");
    assert!(answers(&a).is_empty());
    assert_eq!(r.s.job.as_ref().map(|j| j.caller.client), Some(behind_client), "the call behind runs now");
}

#[test]
fn a_missing_function_is_looked_up_in_the_next_schema_then_answered() {
    let mut r = Rig::new(&[("CALL_SCHEMAS", "api,public")]);
    r.start(req("g", vec![]));
    r.sent();
    r.reply(cat(&[error("ERROR", "42883", "function api.g() does not exist"), rfq(b'I')])).unwrap();
    assert_eq!(r.sent(), b"PDPBES".to_vec(), "prepared again for the second schema");
    assert!(r.take_actions().is_empty());
    r.reply(cat(&[error("ERROR", "42883", "function public.g() does not exist"), rfq(b'I')])).unwrap();
    assert_eq!(r.sent(), b"PBES".to_vec(), "the functions of the call schemas are listed");
    assert!(r.take_actions().is_empty());
    r.reply(cat(&[
        parse_complete(),
        bind_complete(),
        data_row(&[Some("gg"), Some("p_x integer")]),
        data_row(&[Some("unrelated_thing"), Some("")]),
        command("SELECT 2"),
        rfq(b'I'),
    ]))
    .unwrap();
    let a = r.take_actions();
    let ans = answers(&a);
    assert_eq!(ans.len(), 1);
    assert_eq!(ans[0].1, 404);
    assert!(ans[0].2.contains("function_not_found"), "{}", ans[0].2);
    assert!(ans[0].2.contains("perhaps you meant gg(p_x integer)"), "{}", ans[0].2);
    assert!(!ans[0].2.contains("unrelated_thing"), "{}", ans[0].2);
    assert!(drained(&a));
}

#[test]
fn overloads_are_prepared_again_with_declared_types() {
    let mut r = Rig::new(&[]);
    r.start(req("h", vec![Value::Number("1".into())]));
    r.sent();
    r.reply(prepare_ok("2")).unwrap();
    assert_eq!(r.sent(), b"CPDS".to_vec(), "untyped statement closed; declared prepare without the check");
    assert!(r.s.ambiguous.contains("public.h/1"));
    r.reply(cat(&[close_complete(), parse_complete(), param_desc(&[INT4]), row_desc(&[("id", INT4)]), rfq(b'I')]))
        .unwrap();
    assert_eq!(r.sent(), first_exec_tags());
    assert!(r.s.stmts.keys().any(|k| k.starts_with("public.h/1|")), "{:?}", r.s.stmts.keys());
}

#[test]
fn declared_types_that_match_no_overload_fall_back_to_untyped_and_keep_the_better_error() {
    let mut r = Rig::new(&[]);
    r.s.ambiguous.insert("public.h/1".into());
    r.start(req("h", vec![Value::String("2024-01-01".into())]));
    assert_eq!(r.sent(), b"PDS".to_vec());
    r.reply(cat(&[error("ERROR", "42883", "function public.h(text) does not exist"), rfq(b'I')])).unwrap();
    assert_eq!(r.sent(), b"PDS".to_vec(), "untyped prepare");
    r.reply(cat(&[error("ERROR", "42725", "function public.h(unknown) is not unique"), rfq(b'I')])).unwrap();
    let ans = answers(&r.take_actions());
    assert!(ans[0].2.contains("h(text) does not exist"), "the declared attempt's error: {}", ans[0].2);
}

#[test]
fn a_late_cancel_sends_the_call_again_elsewhere_once() {
    let mut r = warmed(&[]);
    r.s.cancelled = true;
    r.start(req("f", vec![Value::Number("2".into())]));
    r.sent();
    r.reply(cat(&[error("ERROR", "57014", "canceling statement due to user request"), rfq(b'I')])).unwrap();
    let a = r.take_actions();
    let w = a.iter().find_map(|a| if let Action::Requeue(w) = a { Some(w) } else { None }).unwrap();
    assert!(w.requeued, "marked, so a second late cancel is answered instead");
    assert!(answers(&a).is_empty());
    assert!(drained(&a));
}

#[test]
fn a_cancel_for_a_call_itself_is_answered() {
    let mut r = warmed(&[]);
    r.start(req("f", vec![Value::Number("2".into())]));
    r.sent();
    let now = r.now;
    r.s.job.as_mut().unwrap().timer.mark_sent(now);
    r.s.mark_cancelled();
    r.reply(cat(&[error("ERROR", "57014", "canceling statement due to statement timeout"), rfq(b'I')])).unwrap();
    let a = r.take_actions();
    assert!(!a.iter().any(|a| matches!(a, Action::Requeue(_))));
    assert_eq!(answers(&a).len(), 1);
    assert!(!r.s.reusable(), "a connection that had a cancel sent is never reused");
}

#[test]
fn a_changed_session_user_retires_the_connection() {
    let mut r = warmed(&[]);
    r.start(req("f", vec![Value::Number("2".into())]));
    r.sent();
    let mut reply = vec![param_status("session_authorization", "postgres")];
    reply.push(execute_ok(&["1"]));
    r.reply(cat(&reply)).unwrap();
    assert!(drained(&r.take_actions()));
    assert!(!r.s.reusable());
    // The same value as at startup changes nothing.
    let mut r = warmed(&[]);
    r.start(req("f", vec![Value::Number("2".into())]));
    r.reply(cat(&[param_status("session_authorization", "ssdb_acme"), execute_ok(&["1"])])).unwrap();
    assert!(r.s.reusable());
}

#[test]
fn pipelined_calls_are_answered_in_order_and_a_gone_client_is_cancelled_when_its_turn_comes() {
    let mut r = warmed(&[]);
    r.start(req("f", vec![Value::Number("2".into())]));
    let head = r.s.job.as_ref().unwrap().caller.client;
    let stmt = r.s.cached_for(&req("f", vec![Value::Number("3".into())]), "public").cloned().unwrap();
    let j2 = r.job(req("f", vec![Value::Number("3".into())]));
    let j3 = r.job(req("f", vec![Value::Number("4".into())]));
    let (c2, c3) = (j2.caller, j3.caller.client);
    assert!(r.with(|s, cx| s.pipeline(cx, j2, stmt.clone())));
    assert!(r.with(|s, cx| s.pipeline(cx, j3, stmt)));
    assert_eq!(r.sent(), exec_tags_n(3));
    assert!(!r.s.client_gone(c2, r.now), "a queued call needs no cancel yet");
    r.now += Duration::from_millis(50);
    r.reply(execute_ok(&["2"])).unwrap();
    let a = r.take_actions();
    assert_eq!(answers(&a).iter().map(|x| x.0).collect::<Vec<_>>(), vec![head]);
    assert!(a.iter().any(|a| matches!(a, Action::Cancel)), "the gone client's call is stopped when it starts");
    assert!(r.s.cancelled, "a connection that had a cancel sent is marked so");
    let promoted = r.s.job.as_ref().unwrap();
    assert_eq!(promoted.timer.deadline, r.now + r.cfg.call.timeout, "its timeout runs from when it starts");
    r.reply(cat(&[error("ERROR", "57014", "canceling statement due to user request"), rfq(b'I')])).unwrap();
    let a = r.take_actions();
    assert!(answers(&a).is_empty(), "nobody waits for the cancelled call");
    assert!(!a.iter().any(|a| matches!(a, Action::Requeue(_))), "its own cancel is not a late one");
    r.reply(execute_ok(&["4"])).unwrap();
    let a = r.take_actions();
    assert_eq!(answers(&a).iter().map(|x| x.0).collect::<Vec<_>>(), vec![c3]);
    assert!(drained(&a));
    assert!(!r.s.reusable());
}

#[test]
fn an_open_transaction_after_a_call_breaks_the_pipeline() {
    let mut r = warmed(&[]);
    r.start_with_one_behind();
    let mut reply = execute_ok(&["2"]);
    let n = reply.len();
    reply[n - 1] = b'T';
    r.reply(reply).unwrap();
    let a = r.take_actions();
    assert!(a.iter().any(|a| matches!(a, Action::Broken(_))));
    assert_eq!(r.s.take_unanswered().len(), 1, "the call behind is failed by the engine, not run");
}

#[test]
fn a_call_past_its_deadline_during_prepare_is_never_started() {
    let mut r = Rig::new(&[]);
    r.start(req("f", vec![Value::Number("1".into())]));
    r.sent();
    let now = r.now;
    r.s.job.as_mut().unwrap().timer.mark_sent(now);
    r.reply(prepare_ok("1")).unwrap();
    assert!(r.sent().is_empty(), "no Execute after the deadline");
    let a = r.take_actions();
    let ans = answers(&a);
    assert_eq!(ans[0].1, 504);
    assert!(drained(&a));
}

#[test]
fn a_parameter_that_does_not_fit_is_answered_without_sending() {
    let mut r = warmed(&[]);
    r.start(req("f", vec![Value::String("a\0b".into())]));
    let a = r.take_actions();
    let ans = answers(&a);
    assert_eq!(ans.len(), 1);
    assert!(ans[0].2.contains("invalid_parameter"), "{}", ans[0].2);
    assert!(drained(&a));
    assert!(r.sent().iter().all(|t| *t != b'B'), "nothing bound");
}

#[test]
fn protocol_violations_break_the_connection() {
    let mut r = Rig::new(&[]);
    assert!(r.reply(rfq(b'I')).is_err(), "a message without a call");
    let mut r = Rig::new(&[]);
    r.start(req("f", vec![Value::Number("1".into())]));
    assert!(r.reply(error("FATAL", "57P01", "terminating connection")).is_err());
}

#[test]
fn unknown_types_are_looked_up_before_the_statement_is_cached() {
    let mut r = Rig::new(&[]);
    r.start(req("f", vec![]));
    r.sent();
    let mood = 40_000;
    r.reply(cat(&[
        parse_complete(),
        param_desc(&[]),
        row_desc(&[("m", mood)]),
        parse_complete(),
        bind_complete(),
        data_row(&[Some("1")]),
        command("SELECT 1"),
        rfq(b'I'),
    ]))
    .unwrap();
    assert_eq!(r.sent(), b"PBES".to_vec(), "the introspection query");
    assert!(r.s.stmts.is_empty());
    // The lookup finds nothing usable: after four rounds the call runs anyway (values as text).
    for _ in 0..3 {
        r.reply(cat(&[parse_complete(), bind_complete(), command("SELECT 0"), rfq(b'I')])).unwrap();
        assert_eq!(r.sent(), b"PBES".to_vec());
    }
    r.reply(cat(&[parse_complete(), bind_complete(), command("SELECT 0"), rfq(b'I')])).unwrap();
    assert_eq!(r.sent(), first_exec_tags());
    r.reply(execute_ok(&["happy"])).unwrap();
    let ans = answers(&r.take_actions());
    assert!(ans[0].2.starts_with(r#"{"rows":[{"m":"happy"}]"#), "{}", ans[0].2);
    let _ = TEXT;
}

#[test]
fn no_data_functions_answer_empty_rows() {
    let mut r = Rig::new(&[("CALL_RESET_SESSION", "false")]);
    r.start(req("p", vec![]));
    r.sent();
    r.reply(cat(&[
        parse_complete(),
        param_desc(&[]),
        no_data(),
        parse_complete(),
        bind_complete(),
        data_row(&[Some("1")]),
        command("SELECT 1"),
        rfq(b'I'),
    ]))
    .unwrap();
    assert_eq!(r.sent(), b"BES".to_vec());
    r.reply(cat(&[bind_complete(), command("SELECT 0"), rfq(b'I')])).unwrap();
    let ans = answers(&r.take_actions());
    assert!(ans[0].2.starts_with(r#"{"rows":[],"row_count":0"#), "{}", ans[0].2);
}

#[test]
fn a_value_postgresql_refuses_at_bind_names_its_parameter_and_type() {
    let mut r = warmed(&[]);
    r.start(req("f", vec![Value::String("one".into())]));
    r.sent();
    let mut b = Vec::new();
    for (f, v) in [
        (b'S', "ERROR"),
        (b'C', "22P02"),
        (b'M', "invalid input syntax for type integer: \"one\""),
        (b'W', "unnamed portal parameter $1 = '...'"),
    ] {
        b.push(f);
        b.extend_from_slice(v.as_bytes());
        b.push(0);
    }
    b.push(0);
    r.reply(cat(&[msg(b'E', &b), rfq(b'I')])).unwrap();
    let ans = answers(&r.take_actions());
    assert_eq!(ans[0].1, 400);
    assert!(ans[0].2.contains("invalid_parameter"), "{}", ans[0].2);
    assert!(ans[0].2.contains("parameter $1 (int4): invalid input syntax"), "{}", ans[0].2);
}

#[test]
fn a_result_past_max_response_bytes_is_an_error_and_its_rows_are_not_kept() {
    let mut r = warmed(&[("MAX_RESPONSE_BYTES", "1024")]);
    r.start(req("f", vec![Value::Number("2".into())]));
    r.sent();
    let values: Vec<String> = (0..500).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    r.reply(execute_ok(&refs)).unwrap();
    let a = r.take_actions();
    let ans = answers(&a);
    assert_eq!(ans[0].1, 500);
    assert!(ans[0].2.contains("response_too_large") && ans[0].2.contains("MAX_RESPONSE_BYTES"), "{}", ans[0].2);
    assert!(drained(&a), "the connection stays usable");
    assert!(r.s.reusable());
}

#[test]
fn a_function_that_deallocates_our_statements_makes_the_connection_prepare_everything_again() {
    let mut r = warmed(&[]);
    r.start(req("f", vec![Value::Number("2".into())]));
    r.sent();
    r.reply(cat(&[error("ERROR", "26000", "prepared statement \"r_all\" does not exist"), rfq(b'I')])).unwrap();
    assert!(r.s.stmts.is_empty(), "no statement of this connection is trusted");
    assert_eq!(r.sent(), b"CPDPBES".to_vec(), "the call is prepared again");
    r.reply(cat(&[close_complete(), prepare_ok("1")])).unwrap();
    let mut want = b"CP".repeat(RESET_STMTS.len() + 1);
    want.extend(exec_tags());
    assert_eq!(r.sent(), want, "the reset statements are closed (some may exist) and prepared again");
    let mut reply: Vec<Vec<u8>> = (0..=RESET_STMTS.len()).flat_map(|_| [close_complete(), parse_complete()]).collect();
    reply.push(execute_ok(&["5"]));
    r.reply(cat(&reply)).unwrap();
    let ans = answers(&r.take_actions());
    assert!(ans[0].2.starts_with(r#"{"rows":[{"id":5}]"#), "{}", ans[0].2);
}

#[test]
fn the_look_for_sql_prepared_statements_is_the_reset_statement_its_rows_are_read_for() {
    assert_eq!(RESET_STMTS[PREPARED_CHECK].0, "r_locks");
    assert!(LOOK_STMT.1.contains("from_sql") && LOOK_STMT.1.contains("pg_advisory_unlock_all"));
    assert!(!RESET_STMTS[PREPARED_CHECK].1.contains("from_sql"));
}

#[test]
fn prepared_statements_a_function_left_are_deallocated_before_the_next_call() {
    let mut r = warmed(&[]);
    r.start(req("f", vec![Value::Number("2".into())]));
    r.sent();
    r.reply(execute_leaving(&["2"], &["mine"])).unwrap();
    let a = r.take_actions();
    let ans = answers(&a);
    assert!(
        ans[0].2.starts_with(r#"{"rows":[{"id":2}],"row_count":1"#),
        "the check's row is not the answer's: {}",
        ans[0].2
    );
    assert!(drained(&a));
    assert!(r.s.reusable(), "the connection is cleaned, not thrown away");
    assert!(
        r.s.cached_for(&req("f", vec![Value::Number("3".into())]), "public").is_none(),
        "nothing is pipelined onto it"
    );
    r.start(req("f", vec![Value::Number("3".into())]));
    assert_eq!(r.sent(), b"PBEPDPBES".to_vec(), "DEALLOCATE ALL, then the call prepared again in the same sync group");
    r.reply(cat(&[parse_complete(), bind_complete(), command("DEALLOCATE ALL"), prepare_ok("1")])).unwrap();
    assert_eq!(r.sent(), first_exec_tags(), "the reset statements are prepared again (none is left to close)");
    r.reply(execute_ok(&["3"])).unwrap();
    let ans = answers(&r.take_actions());
    assert!(ans[0].2.starts_with(r#"{"rows":[{"id":3}]"#), "{}", ans[0].2);
    r.start(req("f", vec![Value::Number("4".into())]));
    assert_eq!(r.sent(), exec_tags(), "clean again: the cached statement, no DEALLOCATE");
}

#[test]
fn a_call_sent_behind_one_that_left_a_prepared_statement_runs_again_when_its_prepare_collides() {
    let mut r = warmed(&[]);
    r.start_with_one_behind();
    r.sent();
    r.reply(execute_leaving(&["2"], &["x"])).unwrap();
    assert_eq!(answers(&r.take_actions()).len(), 1, "the head is answered");
    r.reply(cat(&[error("ERROR", "42P05", "prepared statement \"x\" already exists"), rfq(b'I')])).unwrap();
    let a = r.take_actions();
    let w = a.iter().find_map(|a| if let Action::Requeue(w) = a { Some(w) } else { None }).expect("sent again");
    assert!(w.requeued, "only once");
    assert!(answers(&a).is_empty());
    assert!(drained(&a));
    // Its own collision, on a clean connection, is its answer.
    let mut r = warmed(&[]);
    r.start(req("f", vec![Value::Number("2".into())]));
    r.sent();
    r.reply(cat(&[error("ERROR", "42P05", "prepared statement \"x\" already exists"), rfq(b'I')])).unwrap();
    let a = r.take_actions();
    assert!(!a.iter().any(|a| matches!(a, Action::Requeue(_))));
    assert!(answers(&a)[0].2.contains("42P05"));
}

#[test]
fn calls_queued_behind_a_stuck_call_are_answered_at_their_own_timeout_and_their_results_dropped() {
    let mut r = warmed(&[("CALL_TIMEOUT_MS", "500")]);
    let t0 = r.now;
    r.start(req("f", vec![Value::Number("2".into())]));
    let stmt = r.s.cached_for(&req("f", vec![Value::Number("3".into())]), "public").cloned().unwrap();
    r.now += Duration::from_millis(100);
    let behind = r.job(req("f", vec![Value::Number("3".into())]));
    let behind_client = behind.caller.client;
    assert!(r.with(|s, cx| s.pipeline(cx, behind, stmt)));
    r.sent();
    let cfg = r.cfg.clone();
    let grace = crate::call::cancel::ANSWER_GRACE;
    let mut out = Vec::new();
    r.s.time_out_queued(&cfg, t0 + Duration::from_millis(500) + grace, &mut out);
    assert!(out.is_empty(), "its own timeout is not past yet");
    r.s.time_out_queued(&cfg, t0 + Duration::from_millis(600) + grace, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0.client, out[0].1.status), (behind_client, 504));
    assert!(String::from_utf8_lossy(&out[0].1.body).contains("\"timeout\""));
    r.s.time_out_queued(&cfg, t0 + Duration::from_secs(2), &mut out);
    assert_eq!(out.len(), 1, "answered once");
    // The stuck call goes on after all: the one behind is stopped when its turn comes, and what it
    // returns reaches nobody.
    r.reply(execute_ok(&["2"])).unwrap();
    let a = r.take_actions();
    assert_eq!(answers(&a).len(), 1, "only the head's own answer");
    assert!(a.iter().any(|a| matches!(a, Action::Cancel)));
    r.reply(execute_ok(&["3"])).unwrap();
    let a = r.take_actions();
    assert!(answers(&a).is_empty());
    assert!(drained(&a));
}

/// Replies to Parse/Describe + the overload check, with the candidates' highest volatility.
fn prepare_ok_volatility(volatility: &str) -> Vec<u8> {
    prepare_reply(&[Some("1"), Some(volatility)])
}

fn learned(actions: &[Action]) -> Vec<(String, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Learned { function, read_only, .. } => Some((function.clone(), *read_only)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_prepare_tells_whether_the_function_only_reads() {
    for (v, read_only) in [("s", true), ("i", true), ("v", false)] {
        let mut r = Rig::new(&[]);
        r.start(req("f", vec![Value::Number("1".into())]));
        r.sent();
        r.reply(prepare_ok_volatility(v)).unwrap();
        assert_eq!(learned(&r.take_actions()), vec![("f".to_string(), read_only)], "provolatile {v}");
    }
    // No volatility column (or none found): nothing is learned, so the call stays on the primary.
    let mut r = Rig::new(&[]);
    first_call(&mut r);
    assert!(learned(&r.take_actions()).is_empty());
}

#[test]
fn a_write_refused_by_a_replica_goes_back_to_the_primary_once() {
    let mut r = warmed(&[]);
    r.replica = true;
    r.start(req("f", vec![Value::Number("2".into())]));
    r.sent();
    r.reply(cat(&[
        bind_complete(),
        error("ERROR", "25006", "cannot execute INSERT in a read-only transaction"),
        rfq(b'I'),
    ]))
    .unwrap();
    let a = r.take_actions();
    assert!(answers(&a).is_empty(), "the client gets no error: {:?}", answers(&a));
    let rerouted: Vec<&Waiter> = a
        .iter()
        .filter_map(|x| match x {
            Action::Reroute { waiter, wrote: true } => Some(waiter),
            _ => None,
        })
        .collect();
    assert_eq!(rerouted.len(), 1);
    assert!(rerouted[0].req.primary, "the retry must not land on a replica again");
    assert!(drained(&a));

    // On a primary the same error is the answer.
    let mut r = warmed(&[]);
    r.start(req("f", vec![Value::Number("2".into())]));
    r.sent();
    r.reply(cat(&[bind_complete(), error("ERROR", "25006", "read-only"), rfq(b'I')])).unwrap();
    let a = r.take_actions();
    assert!(!a.iter().any(|x| matches!(x, Action::Reroute { .. })));
    assert_eq!(answers(&a).len(), 1);
}

#[test]
fn a_function_a_replica_has_not_replayed_yet_is_asked_of_the_primary() {
    let mut r = Rig::new(&[]);
    r.replica = true;
    r.start(req("f", vec![Value::Number("1".into())]));
    r.sent();
    r.reply(cat(&[error("ERROR", "42883", "function f(unknown) does not exist"), rfq(b'I')])).unwrap();
    let a = r.take_actions();
    assert!(answers(&a).is_empty(), "{:?}", answers(&a));
    assert!(a.iter().any(|x| matches!(x, Action::Reroute { waiter, wrote: false } if waiter.req.primary)), "{a:?}");
    assert_eq!(r.sent(), Vec::<u8>::new(), "no suggestion query on the replica");
}

/// Whether the bytes sent bind the statement `name`.
fn binds(sent: &[u8], name: &str) -> bool {
    let mut needle = vec![0u8];
    needle.extend_from_slice(name.as_bytes());
    needle.push(0);
    sent.windows(needle.len()).any(|w| w == needle.as_slice())
}

#[test]
fn the_reset_looks_for_prepared_statements_only_where_a_function_can_prepare() {
    for look in [true, false] {
        let mut r = warmed(&[]);
        r.needs = if look { ResetNeeds::ALL } else { ResetNeeds(ResetNeeds::ALL.0 & !ResetNeeds::LOOK) };
        r.start(req("f", vec![Value::Number("2".into())]));
        let sent = r.wbuf.to_vec();
        assert_eq!(binds(&sent, LOOK_STMT.0), look, "look {look}");
        assert_eq!(binds(&sent, "r_locks"), !look, "look {look}");
        r.sent();
        r.reply(execute_ok(&["2"])).unwrap();
        assert_eq!(answers(&r.take_actions()).len(), 1);
    }
}

#[test]
fn the_reset_runs_only_the_statements_the_database_functions_need() {
    // (bits of the check's column, the reset statements bound behind the call, in order)
    let cases: [(&str, &[&str]); 6] = [
        ("1", &["r_all"]),
        ("0", &["r_all"]),
        ("2", &["r_all", "r_role"]),
        ("12", &["r_all", "r_temp", "r_locks"]),
        ("48", &["r_all", "r_listen", "r_cursors"]),
        ("64", &["r_all", LOOK_STMT.0]),
    ];
    for (bits, want) in cases {
        let needs = ResetNeeds::parse(Some(bits.as_bytes()));
        assert_eq!(needs.statements().collect::<Vec<_>>(), want, "bits {bits}");
        let mut r = warmed(&[]);
        r.needs = needs;
        r.start(req("f", vec![Value::Number("2".into())]));
        let sent = r.wbuf.to_vec();
        for (name, _) in RESET_STMTS.iter().chain([&LOOK_STMT]) {
            assert_eq!(binds(&sent, name), want.contains(name), "bits {bits}: {name}");
        }
        let mut tags = b"B".to_vec();
        for _ in want {
            tags.extend_from_slice(b"EB");
        }
        tags.extend_from_slice(b"ES");
        assert_eq!(r.sent(), tags, "bits {bits}");
        // A look that finds statements a function prepared is read at its place in the shorter reset.
        r.reply(execute_reply(&["2"], want, true)).unwrap();
        let ans = answers(&r.take_actions());
        assert_eq!(ans.len(), 1, "bits {bits}");
        assert!(ans[0].2.starts_with(r#"{"rows":[{"id":2}]"#), "bits {bits}: {}", ans[0].2);
        assert_eq!(r.s.deallocate, want.contains(&LOOK_STMT.0), "bits {bits}");
    }
    // Anything but a number from the check means every reset.
    for odd in [None, Some(b"t".as_slice()), Some(b"".as_slice()), Some(b"999".as_slice())] {
        assert_eq!(ResetNeeds::parse(odd), ResetNeeds::ALL, "{odd:?}");
    }
    assert_eq!(ResetNeeds::ALL.statements().count(), RESET_STMTS.len());
}

#[test]
fn a_prepare_tells_which_resets_the_database_functions_need() {
    for (col, want) in [("1", ResetNeeds(1)), ("65", ResetNeeds(65)), ("f", ResetNeeds::ALL)] {
        let mut r = Rig::new(&[]);
        r.start(req("f", vec![Value::Number("1".into())]));
        r.sent();
        r.reply(prepare_reply(&[Some("1"), Some("s"), Some(col)])).unwrap();
        let got: Vec<ResetNeeds> = r
            .take_actions()
            .iter()
            .filter_map(|a| match a {
                Action::Learned { reset_needs, .. } => Some(*reset_needs),
                _ => None,
            })
            .collect();
        assert_eq!(got, vec![want], "third column {col}");
    }
}

#[test]
fn execution_time_is_milliseconds_with_three_decimals() {
    use std::time::Duration;
    for (d, want) in [
        (Duration::ZERO, "0.000"),
        (Duration::from_nanos(1_499), "0.001"),
        (Duration::from_micros(999), "0.999"),
        (Duration::from_micros(1_000), "1.000"),
        (Duration::from_micros(12_345), "12.345"),
        (Duration::from_nanos(2_000_500), "2.001"),
        (Duration::from_secs(75), "75000.000"),
    ] {
        let mut out = Vec::new();
        push_millis(&mut out, d);
        assert_eq!(String::from_utf8(out).unwrap(), want, "{d:?}");
        let float = format!("{:.3}", d.as_secs_f64() * 1000.0);
        // The float's own rounding may differ by the last digit at exact halves.
        assert!((float.parse::<f64>().unwrap() - want.parse::<f64>().unwrap()).abs() <= 0.001, "{d:?}: {float}");
    }
}
