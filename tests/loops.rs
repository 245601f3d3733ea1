//! Several event loops: client connections are spread over them, the connection limits hold in sum
//! over all of them (each loop keeps its quota of a pool's cap; a loop without quota or connection
//! hands its calls to one that has some), steady load moves no connection between loops, and a
//! deploy's invalidation reaches every loop before its answer. Runs against the cluster of
//! `scripts/test.sh`.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::db::query_col;
use common::{Conn, metric, multipart, request, start};
use stonescriptdb_gateway::json::Value;

fn uniq(tag: &str) -> String {
    use std::sync::atomic::AtomicU32;
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{tag}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Drops a platform's main database when the test ends, however it ends.
struct Platform(String);

impl Drop for Platform {
    fn drop(&mut self) {
        common::db::exec("postgres", &format!("DROP DATABASE IF EXISTS \"{}_main\" WITH (FORCE)", self.0));
    }
}

fn deploy(addr: SocketAddr, path: &str, platform: &str, files: &[(&str, &str)]) -> common::Resp {
    let archive = common::archive::tgz(files.iter().copied());
    let (ct, body) = multipart(&[("platform", platform.as_bytes()), ("schema", &archive)]);
    request(addr, "POST", path, &[("Content-Type", ct.as_str())], &body)
}

fn register(addr: SocketAddr, files: &[(&str, &str)]) -> Platform {
    let p = Platform(uniq("lp"));
    let r = deploy(addr, "/register", &p.0, files);
    assert_eq!(r.status, 200, "{}", r.text());
    p
}

fn call_body(platform: &str, function: &str) -> String {
    format!(r#"{{"platform":"{platform}","function":"{function}","params":[]}}"#)
}

/// One `/call` on a kept-alive connection; returns the response.
fn call_on(c: &mut Conn, platform: &str, function: &str) -> common::Resp {
    let body = call_body(platform, function);
    c.send(
        format!(
            "POST /call HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    c.read_response()
}

fn scalar(r: &common::Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    match r.json().get("rows").and_then(|v| v.as_array()).and_then(|a| a.first()).cloned() {
        Some(Value::Object(m)) => m.into_iter().next().map(|(_, v)| v.to_json()).unwrap_or_default(),
        other => panic!("no row: {other:?} in {}", r.text()),
    }
}

fn health_num(addr: SocketAddr, field: &str) -> u64 {
    let r = request(addr, "GET", "/health", &[], b"");
    match r.json().get(field) {
        Some(Value::Number(n)) => n.parse().unwrap(),
        other => panic!("{field}: {other:?} in {}", r.text()),
    }
}

const WHOAMI: &str = "CREATE FUNCTION whoami() RETURNS int LANGUAGE sql AS 'SELECT pg_backend_pid()';";
const WHOAMI_V2: &str = "CREATE FUNCTION whoami() RETURNS int LANGUAGE sql AS 'SELECT pg_backend_pid() + 0';";
const NAP: &str = "CREATE FUNCTION nap() RETURNS int LANGUAGE sql AS 'SELECT 1 FROM pg_sleep(0.003)';";

/// Four client connections land on four loops, each of which opens its own PostgreSQL connection. A
/// `/migrate` that changes the function answers only after every loop has dropped what it cached for
/// the database: right after the answer, each connection's next call runs on a new backend.
#[test]
fn a_deploy_reaches_every_loop_before_its_answer() {
    let g = start(&[("GATEWAY_THREADS", "4"), ("CLIENT_PLACEMENT", "spread")]);
    assert_eq!(health_num(g.addr, "event_loops"), 4);
    let p = register(g.addr, &[("functions/whoami.sql", WHOAMI)]);
    let mut conns: Vec<Conn> = (0..4).map(|_| Conn::open(g.addr)).collect();
    let before: Vec<String> = conns.iter_mut().map(|c| scalar(&call_on(c, &p.0, "whoami"))).collect();
    let distinct: HashSet<&String> = before.iter().collect();
    assert_eq!(distinct.len(), 4, "the four connections did not reach four loops: {before:?}");
    assert_eq!(health_num(g.addr, "total_connections"), 4, "each loop holds its own backend");
    let r = deploy(g.addr, "/migrate", &p.0, &[("functions/whoami.sql", WHOAMI_V2)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let after: Vec<String> = conns.iter_mut().map(|c| scalar(&call_on(c, &p.0, "whoami"))).collect();
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(a, b, "a loop still used a connection from before the deploy: {before:?} → {after:?}");
    }
}

/// Counts the gateway's backends on `databases` every few milliseconds until stopped; returns the
/// largest count seen.
fn watch_backends(databases: Vec<String>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let list = databases.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(",");
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname IN ({list}) \
             AND application_name = 'stonescriptdb-gateway'"
        );
        let mut max = 0;
        while !stop.load(Ordering::Relaxed) {
            let n: usize = query_col("postgres", &sql)[0].as_deref().unwrap_or("0").parse().unwrap();
            max = max.max(n);
            std::thread::sleep(Duration::from_millis(3));
        }
        max
    })
}

/// Clients on every loop call one database whose pool may have two connections: every call is
/// answered 200, and PostgreSQL never sees more than two of the gateway's backends on it.
#[test]
fn one_pools_cap_holds_over_all_loops() {
    let g = start(&[
        ("GATEWAY_THREADS", "4"),
        ("CLIENT_PLACEMENT", "spread"),
        ("MAX_CONNECTIONS_PER_POOL", "2"),
        ("POOL_WAIT_TIMEOUT_MS", "30000"),
    ]);
    let p = register(g.addr, &[("functions/nap.sql", NAP)]);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_backends(vec![format!("{}_main", p.0)], stop.clone());
    let ok = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let (addr, platform, ok) = (g.addr, p.0.clone(), ok.clone());
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                for _ in 0..25 {
                    let r = call_on(&mut c, &platform, "nap");
                    assert_eq!(r.status, 200, "{}", r.text());
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let max = watcher.join().unwrap();
    assert_eq!(ok.load(Ordering::Relaxed), 300);
    assert!((1..=2).contains(&max), "{max} backends on a pool capped at 2");
    assert!(health_num(g.addr, "total_connections") <= 2);
    // Loops 2 and 3 have no quota of a cap of 2: while neither holds a connection, their calls can
    // only run where the connections are, and /metrics counts each one handed over.
    assert!(
        common::db::eventually(Duration::from_secs(2), || metric(
            g.addr,
            "loop_traffic_total{kind=\"call_forwarded\"}"
        ) >= 1.0),
        "no call was handed to another loop"
    );
}

/// Three databases, clients on every loop, and room for two connections in all: every call is
/// answered 200 (loops give up connections to each other), and never more than two backends exist.
#[test]
fn the_total_cap_holds_over_all_loops_and_pools() {
    let g = start(&[
        ("GATEWAY_THREADS", "4"),
        ("CLIENT_PLACEMENT", "spread"),
        ("MAX_TOTAL_CONNECTIONS", "2"),
        ("MAX_CONNECTIONS_PER_POOL", "2"),
        ("POOL_WAIT_TIMEOUT_MS", "30000"),
    ]);
    let platforms: Vec<Platform> = (0..3).map(|_| register(g.addr, &[("functions/nap.sql", NAP)])).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_backends(platforms.iter().map(|p| format!("{}_main", p.0)).collect(), stop.clone());
    let clients: Vec<_> = (0..9)
        .map(|i| {
            let (addr, platform) = (g.addr, platforms[i % 3].0.clone());
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                for _ in 0..10 {
                    let r = call_on(&mut c, &platform, "nap");
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let max = watcher.join().unwrap();
    assert!((1..=2).contains(&max), "{max} backends under a total cap of 2");
}

/// Room for one connection in all, held idle by one loop: a call on the other loop, which holds no
/// connection and no idle one to close, asks for room; the first loop closes its idle connection and
/// hands the slot over, and the call is answered at once (before, it waited for the idle timeout of
/// half an hour, or for its own 503).
#[test]
fn a_loop_without_connections_is_given_room_by_the_loop_that_holds_them() {
    room_across_loops("MAX_TOTAL_CONNECTIONS", false, &["room_request", "room_close", "slot_handover"]);
}

/// The same under the per-server cap: one connection allowed to the server, held idle by one loop;
/// a call of another database on the other loop asks that loop for room on the server and is
/// answered at once. On its own loop first, the call to `a` makes room by closing the idle
/// connection of `b` there, whose pool stays behind empty: the room later made for the other loop
/// must not pick it.
#[test]
fn a_loop_without_connections_is_given_room_on_the_server_by_the_loop_that_holds_them() {
    room_across_loops("MAX_CONNECTIONS_PER_SERVER", true, &["room_request", "room_close"]);
}

/// Two loops, `cap` = 1, two databases; `kinds`: the cross-loop traffic `/metrics` must have counted.
fn room_across_loops(cap: &str, room_on_own_loop_first: bool, kinds: &[&str]) {
    let g = start(&[
        ("GATEWAY_THREADS", "2"),
        ("CLIENT_PLACEMENT", "spread"),
        (cap, "1"),
        ("POOL_WAIT_TIMEOUT_MS", "5000"),
    ]);
    let (a, b) = (register(g.addr, &[("functions/nap.sql", NAP)]), register(g.addr, &[("functions/nap.sql", NAP)]));
    let mut on_first = Conn::open(g.addr);
    let mut on_second = Conn::open(g.addr);
    let served_at_once = |c: &mut Conn, p: &Platform| {
        let started = std::time::Instant::now();
        let r = call_on(c, &p.0, "nap");
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(started.elapsed() < Duration::from_secs(3), "the call waited {:?}", started.elapsed());
    };
    if room_on_own_loop_first {
        assert_eq!(call_on(&mut on_first, &b.0, "nap").status, 200);
    }
    served_at_once(&mut on_first, &a);
    assert_eq!(health_num(g.addr, "total_connections"), 1, "the first loop keeps its connection idle");
    served_at_once(&mut on_second, &b);
    let traffic = |kind: &str| metric(g.addr, &format!("loop_traffic_total{{kind=\"{kind}\"}}"));
    assert!(
        common::db::eventually(Duration::from_secs(2), || kinds.iter().all(|k| traffic(k) >= 1.0)),
        "{:?}",
        kinds.iter().map(|k| (k, traffic(k))).collect::<Vec<_>>()
    );
    // And back: the first loop, now without a connection, gets the slot again the same way.
    assert_eq!(call_on(&mut on_first, &a.0, "nap").status, 200);
    assert!(health_num(g.addr, "total_connections") <= 1);
}

const SLOW_AND_QUICK: &str = "CREATE FUNCTION slow() RETURNS int LANGUAGE sql AS 'SELECT 1 FROM pg_sleep(4)';
CREATE FUNCTION quick() RETURNS int LANGUAGE sql AS 'SELECT 2';";

/// One platform whose databases all run slow functions cannot take every connection: with
/// MAX_CONNECTIONS_PER_PLATFORM below the total, another platform's cheap call is served at once.
#[test]
fn one_platform_cannot_take_every_connection() {
    let g = start(&[
        ("MAX_TOTAL_CONNECTIONS", "3"),
        ("MAX_CONNECTIONS_PER_POOL", "2"),
        ("MAX_CONNECTIONS_PER_PLATFORM", "2"),
        ("POOL_WAIT_TIMEOUT_MS", "10000"),
        // The cap within one loop; how loops share room is what the tests above check.
        ("GATEWAY_THREADS", "1"),
    ]);
    let busy = register(g.addr, &[("functions/f.sql", SLOW_AND_QUICK)]);
    let mut dbs = vec![format!("{}_main", busy.0)];
    for t in ["t1", "t2"] {
        let archive = common::archive::tgz([("functions/f.sql", SLOW_AND_QUICK)]);
        let (ct, body) =
            multipart(&[("platform", busy.0.as_bytes()), ("tenant_id", t.as_bytes()), ("schema", &archive)]);
        let r = request(g.addr, "POST", "/register", &[("Content-Type", ct.as_str())], &body);
        assert_eq!(r.status, 200, "{}", r.text());
        dbs.push(format!("{}_{t}", busy.0));
    }
    let other = register(g.addr, &[("functions/f.sql", SLOW_AND_QUICK)]);
    // One slow call per database of the busy platform: without the cap they would hold all three
    // connections.
    let slow: Vec<_> = ["", r#","tenant_id":"t1""#, r#","tenant_id":"t2""#]
        .into_iter()
        .map(|t| {
            let (addr, body) = (g.addr, format!(r#"{{"platform":"{}"{t},"function":"slow","params":[]}}"#, busy.0));
            std::thread::spawn(move || {
                let r = common::post_json(addr, "/call", &body);
                (r.status, r.text())
            })
        })
        .collect();
    let list = dbs.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(",");
    let running = || {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname IN ({list}) AND state = 'active' \
             AND application_name = 'stonescriptdb-gateway'"
        );
        query_col("postgres", &sql)[0].as_deref().unwrap_or("0").parse::<usize>().unwrap()
    };
    assert!(common::db::eventually(Duration::from_secs(3), || running() >= 2), "the slow calls did not start");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(running(), 2, "the platform runs more calls than its share of connections");
    let t = std::time::Instant::now();
    let r = common::post_json(g.addr, "/call", &call_body(&other.0, "quick"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(t.elapsed() < Duration::from_millis(1500), "the other platform waited {:?}", t.elapsed());
    for s in slow {
        let (status, text) = s.join().unwrap();
        assert_eq!(status, 200, "{text}");
    }
    for db in &dbs[1..] {
        common::db::exec("postgres", &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"));
    }
}

/// Calls waiting for connections are bounded per platform too: once one platform has
/// MAX_WAITING_PER_PLATFORM calls queued over its databases, its next call is refused at once
/// (retryable) instead of queuing without end.
#[test]
fn waiting_calls_are_capped_per_platform() {
    let g = start(&[
        ("MAX_CONNECTIONS_PER_POOL", "1"),
        ("MAX_WAITING_PER_PLATFORM", "1"),
        ("POOL_WAIT_TIMEOUT_MS", "10000"),
        ("GATEWAY_THREADS", "1"),
    ]);
    let p = register(g.addr, &[("functions/f.sql", SLOW_AND_QUICK)]);
    let archive = common::archive::tgz([("functions/f.sql", SLOW_AND_QUICK)]);
    let (ct, body) = multipart(&[("platform", p.0.as_bytes()), ("tenant_id", b"t1"), ("schema", &archive)]);
    let r = request(g.addr, "POST", "/register", &[("Content-Type", ct.as_str())], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let tenant = format!("{}_t1", p.0);
    let send = |t: &str, f: &str| {
        let (addr, body) = (g.addr, format!(r#"{{"platform":"{}"{t},"function":"{f}","params":[]}}"#, p.0));
        std::thread::spawn(move || {
            let r = common::post_json(addr, "/call", &body);
            (r.status, r.text())
        })
    };
    // One slow call per database takes its only connection (one after the other: a call waiting for
    // its connection to open counts as waiting too) …
    let main_running = send("", "slow");
    // Connected and running (a call waiting for its connection to open counts as waiting).
    let settled = |conns: u64| {
        common::db::eventually(Duration::from_secs(10), || {
            health_num(g.addr, "total_connections") == conns && health_num(g.addr, "waiting_requests") == 0
        })
    };
    assert!(settled(1));
    let tenant_running = send(r#","tenant_id":"t1""#, "slow");
    if !settled(2) {
        let health = request(g.addr, "GET", "/health", &[], b"").text();
        panic!("the tenant call did not get its connection: {health}; it answered {:?}", tenant_running.join());
    }
    // … a second call for the main database waits: the platform's one waiting place is taken …
    let waiting = send("", "quick");
    assert!(common::db::eventually(Duration::from_secs(10), || health_num(g.addr, "waiting_requests") == 1));
    // … so a waiting call for its other database is refused at once.
    let t = std::time::Instant::now();
    let body = format!(r#"{{"platform":"{}","tenant_id":"t1","function":"quick","params":[]}}"#, p.0);
    let r = common::post_json(g.addr, "/call", &body);
    assert_eq!((r.status, r.error_code().as_str()), (503, "pool_exhausted"), "{}", r.text());
    assert!(r.text().contains("MAX_WAITING_PER_PLATFORM"), "{}", r.text());
    assert!(t.elapsed() < Duration::from_secs(1));
    for h in [main_running, tenant_running, waiting] {
        let (status, text) = h.join().unwrap();
        assert_eq!(status, 200, "{text}");
    }
    common::db::exec("postgres", &format!("DROP DATABASE IF EXISTS \"{tenant}\" WITH (FORCE)"));
}

/// `/metrics` counters of backend connects and closes: `(connects, closes)`, once two reads in a row
/// agree (each loop publishes its counts at the end of its turn).
fn connects_and_closes(addr: SocketAddr) -> (u64, u64) {
    let read = || (metric(addr, "backend_connects_total") as u64, metric(addr, "backend_closes_total") as u64);
    let mut last = read();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(20));
        let now = read();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Sixteen clients on four loops keep calling one database whose pool may have eight connections
/// (two per loop): once the loops have settled on their quotas, further rounds of the same load open
/// and close no backend connection at all — no loop takes connections from another while both are
/// busy.
#[test]
fn steady_load_opens_and_closes_no_connection_after_warm_up() {
    for placement in ["spread", "pack"] {
        steady_load_with(placement);
    }
}

fn steady_load_with(placement: &str) {
    let g = start(&[
        ("GATEWAY_THREADS", "4"),
        ("CLIENT_PLACEMENT", placement),
        ("MAX_CONNECTIONS_PER_POOL", "8"),
        ("POOL_WAIT_TIMEOUT_MS", "30000"),
    ]);
    let p = register(g.addr, &[("functions/nap.sql", NAP)]);
    let rounds = [40, 60, 60];
    let barrier = Arc::new(std::sync::Barrier::new(17));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (addr, platform, barrier) = (g.addr, p.0.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                for n in rounds {
                    barrier.wait();
                    for _ in 0..n {
                        let r = call_on(&mut c, &platform, "nap");
                        assert_eq!(r.status, 200, "{}", r.text());
                    }
                    barrier.wait();
                }
            })
        })
        .collect();
    let mut counts = Vec::new();
    for _ in rounds {
        barrier.wait();
        barrier.wait();
        counts.push(connects_and_closes(g.addr));
    }
    for c in clients {
        c.join().unwrap();
    }
    let (connects, closes) = counts[0];
    if placement == "spread" {
        assert!(connects >= 4, "every loop opened its own connections: {counts:?}");
    }
    assert!(connects - closes <= 8, "{counts:?}");
    assert_eq!(
        counts[1..],
        [counts[0], counts[0]],
        "{placement}: connects/closes moved under steady load after the warm-up"
    );
}

/// One gauge of `/metrics` by its `loop` label.
fn loop_gauge(addr: SocketAddr, name: &str, lp: usize) -> f64 {
    metric(addr, &format!("{name}{{loop=\"{lp}\"}}"))
}

/// With `CLIENT_PLACEMENT=pack`, a light loop hands its idle keep-alive connections to a busier
/// lower one: the connections keep working across the move, and the light loop ends with none.
/// (`CLIENT_PACK_BELOW_PERCENT=0` places new connections on the least loaded loop, so the four
/// start two and two; the default would put them all on loop 0 at once.)
#[test]
fn light_loops_hand_their_connections_to_a_busier_one() {
    let g = start(&[("GATEWAY_THREADS", "2"), ("CLIENT_PACK_BELOW_PERCENT", "0")]);
    let health = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";
    fn ask(c: &mut Conn, req: &[u8]) {
        c.send(req);
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let mut conns: Vec<Conn> = (0..4).map(|_| Conn::open(g.addr)).collect();
    for c in &mut conns {
        ask(c, health);
    }
    let moves_before = metric(g.addr, "client_moves_total");
    let on_0 = loop_gauge(g.addr, "loop_client_connections", 0);
    assert!(on_0 <= 3.0, "the connections did not start spread: {on_0} on loop 0");
    // Light load: loop 1 gives its connections to loop 0 (the scrape's own connection, opened on
    // the least loaded loop, is the only one left there), and they keep answering.
    let packed = common::db::eventually(Duration::from_secs(20), || {
        for c in &mut conns {
            ask(c, health);
        }
        loop_gauge(g.addr, "loop_client_connections", 0) >= 4.0
    });
    assert!(packed, "loop 0 serves {}", loop_gauge(g.addr, "loop_client_connections", 0));
    for c in &mut conns {
        ask(c, health);
    }
    assert!(metric(g.addr, "client_moves_total") >= moves_before + 1.0);
}

/// Registers `gate()`, which waits for advisory lock `key`, runs it `warm` times on one connection
/// (so that its run time is known there), takes the lock and starts `n` calls of it, each on a
/// connection of its own. The calls end once the returned session lets the lock go.
fn calls_behind_a_lock(
    addr: SocketAddr,
    key: u32,
    warm: usize,
    n: usize,
) -> (Platform, stonescriptdb_gateway::pg::blocking::Client, Vec<std::thread::JoinHandle<String>>) {
    let gate = format!(
        "CREATE FUNCTION gate() RETURNS int LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_advisory_xact_lock_shared({key}); RETURN 1; END $$;"
    );
    let p = register(addr, &[("functions/gate.sql", &gate)]);
    let mut c = Conn::open(addr);
    for _ in 0..warm {
        assert_eq!(scalar(&call_on(&mut c, &p.0, "gate")), "1");
    }
    let mut holder = common::db::su(&format!("{}_main", p.0));
    holder.batch_execute(&format!("SELECT pg_advisory_lock({key})")).unwrap();
    let calls = (0..n)
        .map(|_| {
            let platform = p.0.clone();
            std::thread::spawn(move || scalar(&call_on(&mut Conn::open(addr), &platform, "gate")))
        })
        .collect();
    (p, holder, calls)
}

/// Past `CALL_BUSY_CAP` busy connections, calls pipeline deeper than `CALL_PIPELINE_DEPTH` instead
/// of waiting for (or waking) more backends: with one connection allowed, eight calls stuck behind
/// a lock all travel on it, none waits in the pool's queue, and all are answered once it is free.
#[test]
fn past_the_busy_cap_pipelines_deepen() {
    let g = start(&[
        ("GATEWAY_THREADS", "1"),
        ("MAX_CONNECTIONS_PER_POOL", "1"),
        ("CALL_BUSY_TARGET", "1"),
        ("CALL_BUSY_CAP", "1"),
        ("CALL_PIPELINE_DEPTH", "2"),
        ("CALL_PIPELINE_MAX_WAIT_US", "10000000"),
        ("POOL_WAIT_TIMEOUT_MS", "30000"),
    ]);
    // The connection learns the function's run time (nothing joins a call with none).
    let (_platform, mut holder, calls) = calls_behind_a_lock(g.addr, 4711, 3, 8);
    let all_sent = common::db::eventually(Duration::from_secs(10), || health_num(g.addr, "pipelined_calls") == 7);
    let (pipelined, waiting) = (health_num(g.addr, "pipelined_calls"), health_num(g.addr, "waiting_requests"));
    let health = request(g.addr, "GET", "/health", &[], b"").text();
    holder.batch_execute("SELECT pg_advisory_unlock(4711)").unwrap();
    for t in calls {
        assert_eq!(t.join().unwrap(), "1");
    }
    assert!(all_sent, "pipelined {pipelined}, waiting {waiting}: the pipeline stayed at CALL_PIPELINE_DEPTH: {health}");
    assert_eq!(waiting, 0, "{health}");
    assert_eq!(health_num(g.addr, "total_connections"), 1);
}

/// Past `CALL_BUSY_CAP`, calls that find the pipelines full wait for one to drain rather than wake
/// more backends while those pipelines are of short calls: with room for 8 connections, ten calls
/// stuck behind a lock use one (eight on its pipeline, two waiting), and all are answered once it
/// is free. Without the hold-back the two waiting calls each opened a connection.
#[test]
fn full_short_pipelines_past_the_busy_cap_are_waited_for_not_grown() {
    let g = start(&[
        ("GATEWAY_THREADS", "1"),
        ("MAX_CONNECTIONS_PER_POOL", "8"),
        ("CALL_BUSY_TARGET", "1"),
        ("CALL_BUSY_CAP", "1"),
        ("CALL_PIPELINE_DEPTH", "2"),
        ("CALL_PIPELINE_MAX_WAIT_US", "10000000"),
        ("POOL_WAIT_TIMEOUT_MS", "30000"),
    ]);
    let (_platform, mut holder, calls) = calls_behind_a_lock(g.addr, 4712, 3, 10);
    let settled = common::db::eventually(Duration::from_secs(10), || {
        health_num(g.addr, "pipelined_calls") == 7 && health_num(g.addr, "waiting_requests") == 2
    });
    // Give a wrongly grown connection time to show.
    std::thread::sleep(Duration::from_millis(300));
    let (total, waiting) = (health_num(g.addr, "total_connections"), health_num(g.addr, "waiting_requests"));
    let health = request(g.addr, "GET", "/health", &[], b"").text();
    holder.batch_execute("SELECT pg_advisory_unlock(4712)").unwrap();
    for t in calls {
        assert_eq!(t.join().unwrap(), "1");
    }
    assert!(settled, "{health}");
    assert_eq!((total, waiting), (1, 2), "{health}");
}

/// Past the busy cap, calls whose pipelines are held by a call running longer than
/// `CALL_PIPELINE_MAX_WAIT_US` (a lock here) still open connections of their own: three such calls
/// with a cap of one busy connection end up running side by side on three connections, not one
/// after another on one.
#[test]
fn slow_calls_past_the_busy_cap_still_get_connections() {
    let g = start(&[
        ("GATEWAY_THREADS", "1"),
        ("MAX_CONNECTIONS_PER_POOL", "4"),
        ("CALL_BUSY_TARGET", "1"),
        ("CALL_BUSY_CAP", "1"),
        ("CALL_PIPELINE_MAX_WAIT_US", "1000"),
        ("POOL_WAIT_TIMEOUT_MS", "30000"),
    ]);
    let (p, mut holder, calls) = calls_behind_a_lock(g.addr, 4713, 1, 3);
    let db = format!("{}_main", p.0);
    let side_by_side = common::db::eventually(Duration::from_secs(10), || {
        common::db::query_col(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND wait_event_type = 'Lock' \
                 AND application_name = 'stonescriptdb-gateway'"
            ),
        )[0]
        .as_deref()
            == Some("3")
    });
    let health = request(g.addr, "GET", "/health", &[], b"").text();
    holder.batch_execute("SELECT pg_advisory_unlock(4713)").unwrap();
    for t in calls {
        assert_eq!(t.join().unwrap(), "1");
    }
    assert!(side_by_side, "the calls did not run side by side: {health}");
}

/// A burst of calls on a cold pool opens connections a few at a time (at most the busy cap
/// connecting at once): the first ones up take the waiting calls, and their pipelines more, so the
/// burst does not leave a backend per client behind. Without the limit all 32 calls, arriving
/// before any connection is up, opened one each.
#[test]
fn a_burst_opens_connections_a_few_at_a_time() {
    let g = start(&[
        ("GATEWAY_THREADS", "1"),
        ("MAX_CONNECTIONS_PER_POOL", "32"),
        ("CALL_BUSY_TARGET", "1"),
        ("CALL_BUSY_CAP", "2"),
        // Pipelines take the waiting calls however slowly a loaded machine runs them.
        ("CALL_PIPELINE_MAX_WAIT_US", "10000000"),
        ("POOL_WAIT_TIMEOUT_MS", "30000"),
    ]);
    let p = register(
        g.addr,
        &[("functions/answer.sql", "CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS $$ SELECT 42 $$;")],
    );
    let go = Arc::new(std::sync::Barrier::new(32));
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let (addr, platform, go) = (g.addr, p.0.clone(), go.clone());
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                go.wait();
                (0..5).map(|_| scalar(&call_on(&mut c, &platform, "answer"))).collect::<Vec<_>>()
            })
        })
        .collect();
    for t in calls {
        assert_eq!(t.join().unwrap(), vec!["42"; 5]);
    }
    let total = health_num(g.addr, "total_connections");
    assert!((1..=20).contains(&total), "{total} connections for a burst of 32 calls with CALL_BUSY_CAP=2");
}
