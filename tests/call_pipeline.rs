//! `/call` pipelining: calls sent behind another call on a busy backend connection keep their own
//! transaction, errors and session reset; slow calls are not queued behind; a cancelled call does
//! not take the calls behind it down. Runs against the cluster of `scripts/test.sh`.

mod common;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::db::{TestDb, expect_error, scalar};
use common::{request, start};
use stonescriptdb_gateway::json::{Value, parse};

fn json(s: &str) -> Value {
    parse(s.as_bytes()).unwrap_or_else(|e| panic!("bad JSON in test ({e}): {s}"))
}

fn pipelined_calls(addr: SocketAddr) -> u64 {
    let r = request(addr, "GET", "/health", &[], b"");
    match r.json().get("pipelined_calls") {
        Some(Value::Number(n)) => n.parse().expect("a count"),
        _ => panic!("no pipelined_calls in /health: {}", r.text()),
    }
}

const ISOLATION: &str = "
CREATE TABLE items (id int PRIMARY KEY);
CREATE FUNCTION put(p int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO items VALUES (p);
    PERFORM set_config('work_mem', '1MB', false);
    IF p % 5 = 0 THEN RAISE EXCEPTION 'refused %', p; END IF;
    RETURN p;
END $$;
CREATE FUNCTION mem() RETURNS text LANGUAGE sql AS $$ SELECT current_setting('work_mem') $$;
";

/// Many clients on a pool of two connections: every call gets its own answer, a failing call rolls
/// back only itself, and no call sees another's setting. With depth 1 nothing is pipelined, which
/// shows that the count (and so the pipelining the rest checks) is real.
#[test]
fn pipelined_calls_keep_their_own_results_errors_and_settings() {
    for depth in ["8", "1"] {
        let db = TestDb::new("ct_pipe_iso", ISOLATION);
        let gw = start(&[
            ("MAX_CONNECTIONS_PER_POOL", "2"),
            ("CALL_BUSY_TARGET", "1"),
            // Pipelining shares a connection between calls of one event loop.
            ("GATEWAY_THREADS", "1"),
            ("CALL_PIPELINE_DEPTH", depth),
            ("CALL_PIPELINE_MAX_WAIT_US", "1000000"),
        ]);
        let addr = gw.addr;
        assert_eq!(scalar(&db.call(addr, "put", "[-1]")), json("-1"));
        assert_eq!(scalar(&db.call(addr, "mem", "[]")), json(r#""4MB""#));
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let body = |f: &str, p: &str| format!(r#"{{"platform":"ct_pipe_iso","function":"{f}","params":{p}}}"#);
                thread::spawn(move || {
                    for i in 0..40 {
                        let id = t * 1000 + i + 1;
                        let r = common::post_json(addr, "/call", &body("put", &format!("[{id}]")));
                        if id % 5 == 0 {
                            let e = expect_error(&r, 400, "function_error");
                            let msg = e.get("message").and_then(|m| m.as_str()).unwrap_or_default().to_string();
                            assert_eq!(msg, format!("refused {id}"), "{}", r.text());
                        } else {
                            assert_eq!(scalar(&r), json(&id.to_string()), "{}", r.text());
                        }
                        if i % 4 == 0 {
                            let r = common::post_json(addr, "/call", &body("mem", "[]"));
                            assert_eq!(scalar(&r), json(r#""4MB""#), "a setting leaked");
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("client thread");
        }
        // Exactly the calls that succeeded left a row.
        let r = db.call(addr, "put", "[999999]");
        assert_eq!(r.status, 200);
        let got = common::db::su(&db.name)
            .simple_query("SELECT count(*), count(*) FILTER (WHERE id % 5 = 0) FROM items")
            .unwrap();
        let want = 2 + 16 * 40 - 16 * 8;
        assert_eq!(got[0][0].as_deref(), Some(want.to_string().as_str()), "rows after depth {depth}");
        assert_eq!(got[0][1].as_deref(), Some("0"), "a failed call left its row (depth {depth})");
        let b = db.gateway_backends();
        assert!(b.len() <= 2, "depth {depth}: {b:?}");
        let n = pipelined_calls(addr);
        if depth == "1" {
            assert_eq!(n, 0, "pipelined with CALL_PIPELINE_DEPTH=1");
        } else {
            assert!(n > 0, "nothing was pipelined");
        }
    }
}

const SLOW_FAST: &str = "
CREATE FUNCTION slow() RETURNS int LANGUAGE sql AS 'SELECT 1 FROM pg_sleep(0.4)';
CREATE FUNCTION fast() RETURNS int LANGUAGE sql AS 'SELECT 2';
";

/// A call is not queued behind one whose recent run time is above `CALL_PIPELINE_MAX_WAIT_US`; with
/// a limit above it, it is (so the first half can fail).
#[test]
fn calls_are_not_queued_behind_slow_ones() {
    let db = TestDb::new("ct_pipe_slow", SLOW_FAST);
    for (max_wait, expect_pipelined) in [("2000", false), ("10000000", true)] {
        let gw = one_connection(&[("CALL_PIPELINE_MAX_WAIT_US", max_wait)]);
        let addr = gw.addr;
        // Both statements prepared and timed on the one connection.
        assert_eq!(scalar(&db.call(addr, "slow", "[]")), json("1"));
        assert_eq!(scalar(&db.call(addr, "fast", "[]")), json("2"));
        let body = db.body("slow", Some("[]"));
        let slow = thread::spawn(move || common::post_json(addr, "/call", &body));
        thread::sleep(Duration::from_millis(150));
        let t = Instant::now();
        assert_eq!(scalar(&db.call(addr, "fast", "[]")), json("2"));
        assert!(t.elapsed() >= Duration::from_millis(100), "fast did not wait for the only connection");
        assert_eq!(slow.join().unwrap().status, 200);
        assert_eq!(pipelined_calls(addr) > 0, expect_pipelined, "CALL_PIPELINE_MAX_WAIT_US={max_wait}");
    }
}

const NAP: &str = "CREATE FUNCTION nap(ms int) RETURNS int LANGUAGE sql AS 'SELECT $1 FROM pg_sleep($1 / 1000.0)';";

/// The running call hits `CALL_TIMEOUT_MS` and is cancelled; the calls pipelined behind it still run
/// and answer 200 (also when the cancel reached one of them: it is sent again elsewhere).
#[test]
fn calls_behind_a_cancelled_call_still_succeed() {
    let db = TestDb::new("ct_pipe_cancel", NAP);
    let gw = one_connection(&[("CALL_TIMEOUT_MS", "400")]);
    let addr = gw.addr;
    assert_eq!(scalar(&db.call(addr, "nap", "[0]")), json("0"));
    let body = db.body("nap", Some("[5000]"));
    let head = thread::spawn(move || common::post_json(addr, "/call", &body));
    thread::sleep(Duration::from_millis(150));
    let behind: Vec<_> = (0..4)
        .map(|_| {
            let body = db.body("nap", Some("[0]"));
            thread::spawn(move || common::post_json(addr, "/call", &body))
        })
        .collect();
    let r = head.join().unwrap();
    expect_error(&r, 504, "timeout");
    for t in behind {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(scalar(&r), json("0"));
    }
    assert!(pipelined_calls(addr) > 0, "nothing was pipelined behind the slow call");
    assert_eq!(scalar(&db.call(addr, "nap", "[0]")), json("0"));
}

/// A call whose client leaves while it is queued is cancelled when it starts, so it does not hold the
/// connection for its whole run: the next call is served well before the abandoned one would end.
#[test]
fn a_queued_call_whose_client_left_is_cancelled_when_it_starts() {
    let db = TestDb::new("ct_pipe_gone", NAP);
    let gw = one_connection(&[]);
    let addr = gw.addr;
    assert_eq!(scalar(&db.call(addr, "nap", "[0]")), json("0"));
    let before = pipelined_calls(addr);
    let body = db.body("nap", Some("[500]"));
    let head = thread::spawn(move || common::post_json(addr, "/call", &body));
    thread::sleep(Duration::from_millis(150));
    // Queued behind the running call, then abandoned.
    let body = db.body("nap", Some("[4000]"));
    let mut gone = common::Conn::open(addr);
    gone.send(
        format!(
            "POST /call HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert!(common::db::eventually(Duration::from_secs(2), || pipelined_calls(addr) > before), "not pipelined");
    drop(gone);
    assert_eq!(scalar(&head.join().unwrap()), json("500"));
    let t = Instant::now();
    assert_eq!(scalar(&db.call(addr, "nap", "[0]")), json("0"));
    assert!(t.elapsed() < Duration::from_millis(2500), "waited {:?} for the abandoned call", t.elapsed());
}

const NAP_PID: &str = "CREATE FUNCTION nap_pid(ms int) RETURNS int LANGUAGE sql AS \
                       'SELECT pg_backend_pid() FROM pg_sleep($1 / 1000.0)';";

/// A cancel that reaches a pipelined call it was not meant for (the gateway's own late cancel of the
/// timed-out call before it, or here, to be sure, one sent by hand to that backend) rolls the call
/// back; the gateway sends it again on another connection instead of answering 504.
#[test]
fn a_call_stopped_by_a_cancel_meant_for_another_runs_again() {
    let db = TestDb::new("ct_pipe_stray", NAP_PID);
    let gw = one_connection(&[("CALL_TIMEOUT_MS", "1500")]);
    let addr = gw.addr;
    assert_eq!(db.call(addr, "nap_pid", "[0]").status, 200);
    let before = pipelined_calls(addr);
    let body = db.body("nap_pid", Some("[5000]"));
    let head = thread::spawn(move || common::post_json(addr, "/call", &body));
    let pid = running_backend(&db);
    let started = |pid: &str| {
        let rows = common::db::su("postgres")
            .simple_query(&format!(
                "SELECT query_start::text FROM pg_stat_activity WHERE pid = {pid} AND state = 'active'"
            ))
            .unwrap();
        rows.first().and_then(|r| r[0].clone())
    };
    let head_start = started(&pid).expect("the first call runs");
    let body = db.body("nap_pid", Some("[800]"));
    let behind = thread::spawn(move || common::post_json(addr, "/call", &body));
    assert!(common::db::eventually(Duration::from_secs(2), || pipelined_calls(addr) > before), "not pipelined");
    expect_error(&head.join().unwrap(), 504, "timeout");
    // The call behind now runs on that backend (a query started after the first one's), unless the
    // gateway's own cancel already hit it and sent it elsewhere. Only then is it cancelled from here,
    // so a slow machine cannot make this cancel land on the first call instead.
    let behind_runs_there = common::db::eventually(Duration::from_secs(3), || {
        started(&pid).is_some_and(|s| s != head_start) || behind.is_finished()
    });
    assert!(behind_runs_there, "the call behind neither started on that backend nor finished");
    common::db::su("postgres")
        .simple_query(&format!(
            "SELECT pg_cancel_backend({pid}) FROM pg_stat_activity WHERE pid = {pid} AND state = 'active' \
             AND query_start::text <> '{head_start}'"
        ))
        .unwrap();
    let r = behind.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(scalar(&r), json(&pid), "the call was not sent again on another connection");
}

const PREP_AFTER: &str = "
CREATE FUNCTION prep_after(ms int, make bool) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(ms / 1000.0);
    IF make THEN EXECUTE 'PREPARE x AS SELECT 1'; END IF;
    RETURN ms;
END $$;
CREATE FUNCTION sql_prepared() RETURNS bigint LANGUAGE sql AS
    'SELECT count(*) FROM pg_prepared_statements WHERE from_sql';
";

/// A call pipelined behind one that leaves a SQL-level prepared statement was sent before the session
/// reset found it: its own `PREPARE` of that name fails (42P05), it is rolled back and sent again once
/// the connection dropped the leftover, and answers 200.
#[test]
fn a_call_behind_one_that_left_a_prepared_statement_runs_again_cleanly() {
    let db = TestDb::new("ct_pipe_prep", PREP_AFTER);
    let gw = one_connection(&[]);
    let addr = gw.addr;
    // The statement is prepared and has a recent run time, so calls may queue behind it.
    for _ in 0..3 {
        assert_eq!(scalar(&db.call(addr, "prep_after", "[0, false]")), json("0"));
    }
    let before = pipelined_calls(addr);
    let body = db.body("prep_after", Some("[400, true]"));
    let head = thread::spawn(move || common::post_json(addr, "/call", &body));
    thread::sleep(Duration::from_millis(150));
    let r = db.call(addr, "prep_after", "[0, true]");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(scalar(&r), json("0"));
    assert_eq!(scalar(&head.join().unwrap()), json("400"));
    assert!(pipelined_calls(addr) > before, "the second call was not pipelined behind the first");
    assert_eq!(scalar(&db.call(addr, "sql_prepared", "[]")), json("0"), "a PREPARE outlived its call");
}

/// Sends SIGCONT to a stopped backend when dropped, so a failing test does not leave it frozen.
struct Thaw(String);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

/// Calls pipelined behind a call whose backend freezes (SIGSTOP: it cannot even act on its cancel)
/// are answered 504 `timeout` at their own `CALL_TIMEOUT_MS` (plus the grace a cancel gets), not
/// when the frozen connection is given up on seconds later.
#[test]
fn calls_pipelined_behind_a_frozen_call_are_answered_at_their_own_timeout() {
    let db = TestDb::new("ct_pipe_frozen", NAP_PID);
    let gw = one_connection(&[("CALL_TIMEOUT_MS", "500")]);
    let addr = gw.addr;
    for _ in 0..3 {
        assert_eq!(db.call(addr, "nap_pid", "[0]").status, 200);
    }
    let before = pipelined_calls(addr);
    let body = db.body("nap_pid", Some("[3000]"));
    let head = thread::spawn(move || common::post_json(addr, "/call", &body));
    let pid = running_backend(&db);
    let stopped = std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    assert!(stopped.success());
    let _thaw = Thaw(pid);
    let behind: Vec<_> = (0..3)
        .map(|_| {
            let body = db.body("nap_pid", Some("[0]"));
            thread::spawn(move || {
                let t = Instant::now();
                let r = common::post_json(addr, "/call", &body);
                (r, t.elapsed())
            })
        })
        .collect();
    assert!(
        common::db::eventually(Duration::from_secs(1), || pipelined_calls(addr) >= before + 3),
        "not pipelined behind the frozen call"
    );
    expect_error(&head.join().unwrap(), 504, "timeout");
    for t in behind {
        let (r, took) = t.join().unwrap();
        expect_error(&r, 504, "timeout");
        // 500 ms + 250 ms of grace + a janitor pass; the connection is only given up on 5 s after the
        // frozen call's cancel.
        assert!(took < Duration::from_millis(2000), "a call behind the frozen one was answered after {took:?}");
    }
    drop(_thaw);
    assert!(
        common::db::eventually(Duration::from_secs(10), || db.call(addr, "nap_pid", "[0]").status == 200),
        "the pool did not recover after the backend went on"
    );
}

/// Calls that wait for a pool at its cap go behind a short call as soon as a connection takes the
/// first of them, instead of each waiting for a connection of its own to drain: with depth 2 on one
/// connection, A goes behind the slow call, B and C wait; when the connection is free again B starts
/// and C joins it at once (two pipelined calls; one when waiting calls are never pipelined).
#[test]
fn waiting_calls_are_pipelined_once_a_connection_takes_the_first() {
    let db = TestDb::new("ct_pipe_wait", NAP);
    let gw = one_connection(&[("CALL_PIPELINE_DEPTH", "2")]);
    let addr = gw.addr;
    // The statement prepared and timed on the one connection.
    assert_eq!(scalar(&db.call(addr, "nap", "[0]")), json("0"));
    let before = pipelined_calls(addr);
    let calls: Vec<_> = [(400, 0), (0, 100), (0, 150), (0, 200)]
        .into_iter()
        .map(|(ms, after)| {
            let body = db.body("nap", Some(&format!("[{ms}]")));
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(after));
                common::post_json(addr, "/call", &body)
            })
        })
        .collect();
    for c in calls {
        let r = c.join().expect("client thread");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(pipelined_calls(addr) - before, 2, "the waiting call was not pipelined behind the one that started");
}

/// The backend pid running a `nap_pid` call of `db`, once one is running.
fn running_backend(db: &TestDb) -> String {
    let active = format!(
        "SELECT pid FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'stonescriptdb-gateway' \
         AND state = 'active' AND query LIKE '%nap_pid%'",
        db.name
    );
    let mut pid = String::new();
    assert!(
        common::db::eventually(Duration::from_secs(2), || {
            let rows = common::db::su("postgres").simple_query(&active).unwrap();
            pid = rows.first().and_then(|r| r[0].clone()).unwrap_or_default();
            !pid.is_empty()
        }),
        "the first call never started"
    );
    pid
}

/// A gateway whose calls to a database all share one connection of one event loop, with pipelining
/// allowed behind any call (`CALL_PIPELINE_MAX_WAIT_US` 10 s unless `extra` says otherwise).
fn one_connection(extra: &[(&str, &str)]) -> common::Gateway {
    let mut o = vec![
        ("MAX_CONNECTIONS_PER_POOL", "1"),
        ("CALL_BUSY_TARGET", "1"),
        // Pipelining shares a connection between calls of one event loop.
        ("GATEWAY_THREADS", "1"),
        ("CALL_PIPELINE_MAX_WAIT_US", "10000000"),
    ];
    o.extend_from_slice(extra);
    start(&o)
}
