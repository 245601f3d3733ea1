//! Several PostgreSQL servers and a streaming replica, each a private cluster started here: placement
//! of new databases, calls and deploys reaching each database's server, a server going down, and
//! reads of STABLE functions served by a replica (with the fallbacks when it lags, stops or refuses a
//! write).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::cluster::Cluster;
use common::db::eventually;
use common::{Gateway, Resp};
use stonescriptdb_gateway::json::Value;

const TOKEN: &str = "servers-admin-token-0123456789abcdef";

fn start_on(primary: &Cluster, extra: &[(&str, &str)]) -> Gateway {
    let port = primary.port.to_string();
    let sock = primary.socket_dir();
    let mut o: Vec<(&str, &str)> = vec![
        ("DB_HOST", &sock),
        ("DB_PORT", &port),
        ("DB_USER", "postgres"),
        ("ADMIN_TOKEN", TOKEN),
        ("REPLICA_CHECK_INTERVAL_MS", "100"),
        ("GATEWAY_THREADS", "2"),
        ("DB_CONNECT_TIMEOUT_MS", "2000"),
    ];
    o.extend_from_slice(extra);
    common::start(&o)
}

fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> Resp {
    let auth = format!("Bearer {TOKEN}");
    common::request(
        addr,
        method,
        path,
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

fn archive(functions: &[(&str, &str)]) -> Vec<u8> {
    let mut files: Vec<(String, String)> = vec![
        ("tables/notes.sql".into(), "CREATE TABLE notes (id serial PRIMARY KEY, body text);".into()),
        ("migrations/001_visits.sql".into(), "CREATE SEQUENCE visit_seq;".into()),
    ];
    for (name, sql) in functions {
        files.push((format!("functions/{name}.sql"), sql.to_string()));
    }
    common::archive::tgz(files)
}

/// `where_am_i()`: the port of the server that ran it and whether that server is a replica.
const WHERE_STABLE: &str = "CREATE OR REPLACE FUNCTION where_am_i() RETURNS TABLE (port text, in_recovery boolean) \
    LANGUAGE sql STABLE AS $$ SELECT current_setting('port'), pg_is_in_recovery() $$;";
const WHERE_VOLATILE: &str = "CREATE OR REPLACE FUNCTION where_am_i_v() RETURNS TABLE (port text, in_recovery boolean) \
    LANGUAGE sql VOLATILE AS $$ SELECT current_setting('port'), pg_is_in_recovery() $$;";
/// Labelled STABLE but writes (nextval): a replica refuses it with 25006.
const MISLABELLED: &str = "CREATE OR REPLACE FUNCTION next_visit() RETURNS bigint \
    LANGUAGE sql STABLE AS $$ SELECT nextval('visit_seq') $$;";

fn register(addr: SocketAddr, platform: &str, tenant: Option<&str>, server: Option<&str>, tgz: &[u8]) -> Resp {
    let mut fields: Vec<(&str, &[u8])> = vec![("platform", platform.as_bytes())];
    if let Some(t) = tenant {
        fields.push(("tenant_id", t.as_bytes()));
    }
    if let Some(s) = server {
        fields.push(("server", s.as_bytes()));
    }
    fields.push(("schema", tgz));
    let (ct, body) = common::multipart(&fields);
    let auth = format!("Bearer {TOKEN}");
    common::request(addr, "POST", "/register", &[("Content-Type", &ct), ("Authorization", &auth)], &body)
}

fn migrate(addr: SocketAddr, platform: &str, tgz: &[u8]) -> Resp {
    let (ct, body) = common::multipart(&[("platform", platform.as_bytes()), ("schema", tgz)]);
    let auth = format!("Bearer {TOKEN}");
    common::request(addr, "POST", "/migrate", &[("Content-Type", &ct), ("Authorization", &auth)], &body)
}

fn call_with(
    addr: SocketAddr,
    platform: &str,
    tenant: Option<&str>,
    function: &str,
    extra: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let tenant = tenant.map(|t| format!(",\"tenant_id\":\"{t}\"")).unwrap_or_default();
    let body = format!("{{\"platform\":\"{platform}\"{tenant},\"function\":\"{function}\",\"params\":[]{extra}}}");
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    common::request(addr, "POST", "/call", &h, body.as_bytes())
}

fn call(addr: SocketAddr, platform: &str, tenant: Option<&str>, function: &str) -> Resp {
    call_with(addr, platform, tenant, function, "", &[])
}

/// (port, in_recovery) from a `where_am_i` answer.
fn place_of(r: &Resp) -> (String, bool) {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let row = &v.get("rows").and_then(Value::as_array).expect("rows")[0];
    let port = row.get("port").and_then(Value::as_str).expect("port").to_string();
    (port, row.get("in_recovery").and_then(Value::as_bool).expect("in_recovery"))
}

fn server_of(r: &Resp) -> String {
    assert!(r.status == 200 || r.status == 201, "{}", r.text());
    r.json().get("server").and_then(Value::as_str).unwrap_or_default().to_string()
}

fn databases_on(c: &Cluster, prefix: &str) -> Vec<String> {
    let mut cl = c.su("postgres");
    let rows = cl
        .simple_query(&format!("SELECT datname FROM pg_database WHERE starts_with(datname, '{prefix}') ORDER BY 1"))
        .unwrap();
    cl.close();
    rows.into_iter().filter_map(|r| r[0].clone()).collect()
}

fn metrics(addr: SocketAddr) -> String {
    admin(addr, "GET", "/metrics", "").text()
}

#[test]
fn databases_spread_over_servers_and_each_is_served_where_it_lives() {
    let p = Cluster::new();
    let s = Cluster::new();
    let g = start_on(&p, &[]);
    // A second gateway on the same catalog, started (and through its first catalog pass, which reads
    // the servers; the next is 15 s later) before the server is added.
    let g2 = start_on(&p, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let addr = g.addr;
    let plat = "spread";
    let tgz = archive(&[("where_am_i", WHERE_STABLE)]);

    // Adding: checked by connecting; bad input and unreachable servers are refused with the reason.
    let r = admin(addr, "POST", "/admin/servers", r#"{"name":"gone","host":"127.0.0.1","port":1}"#);
    assert_eq!((r.status, r.error_code()), (400, "server_unreachable".into()), "{}", r.text());
    let r = admin(addr, "POST", "/admin/servers", r#"{"name":"Bad Name","host":"h"}"#);
    assert_eq!((r.status, r.error_code()), (400, "invalid_request".into()));
    let body = format!(r#"{{"name":"s2","host":"{}","port":{}}}"#, s.socket_dir(), s.port);
    let r = admin(addr, "POST", "/admin/servers", &body);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(admin(addr, "POST", "/admin/servers", &body).error_code(), "server_already_exists");
    let r = common::post_json(addr, "/admin/servers", &body);
    assert_eq!(r.status, 401, "admin routes need the token: {}", r.text());

    // Placement: the fewest databases first (ties go to default); an explicit server wins.
    let mut placed = Vec::new();
    for t in [None, Some("t1"), Some("t2"), Some("t3")] {
        placed.push(server_of(&register(addr, plat, t, None, &tgz)));
    }
    assert_eq!(placed, ["default", "s2", "default", "s2"]);
    assert_eq!(server_of(&register(addr, plat, Some("t4"), Some("s2"), &tgz)), "s2");
    let r = register(addr, plat, Some("t4"), Some("default"), &tgz);
    assert_eq!(r.status, 409, "a database does not move: {}", r.text());
    assert_eq!(server_of(&register(addr, plat, Some("t4"), Some("s2"), &tgz)), "s2", "redeploy where it lives");
    assert_eq!(server_of(&register(addr, plat, Some("t5"), None, &tgz)), "default", "3 on default, 3 on s2");
    assert_eq!(server_of(&register(addr, plat, Some("t6"), None, &tgz)), "default");
    let r = register(addr, plat, Some("t9"), Some("nope"), &tgz);
    assert_eq!((r.status, r.error_code()), (404, "server_not_found".into()), "{}", r.text());
    assert!(databases_on(&p, "spread_t9").is_empty() && databases_on(&s, "spread_t9").is_empty());

    // Each database lives on its server, and calls reach it there.
    assert_eq!(databases_on(&s, "spread_"), ["spread_t1", "spread_t3", "spread_t4"]);
    assert_eq!(databases_on(&p, "spread_"), ["spread_main", "spread_t2", "spread_t5", "spread_t6"]);
    for (t, port) in [(None, p.port), (Some("t1"), s.port), (Some("t2"), p.port), (Some("t4"), s.port)] {
        assert_eq!(place_of(&call(addr, plat, t, "where_am_i")).0, port.to_string(), "tenant {t:?}");
        // The other gateway learns of s2 with its first call there, not 15 s later.
        assert_eq!(place_of(&call(g2.addr, plat, t, "where_am_i")).0, port.to_string(), "other gateway, {t:?}");
    }
    let listing = admin(addr, "GET", "/admin/databases?platform=spread", "").json();
    let dbs = listing.get("databases").and_then(Value::as_array).unwrap().to_vec();
    let t3 = dbs.iter().find(|d| d.get("name").and_then(Value::as_str) == Some("spread_t3")).unwrap();
    assert_eq!(t3.get("server").and_then(Value::as_str), Some("s2"));
    assert!(t3.get("size_mb").is_some_and(|v| !matches!(v, Value::Null)), "its size comes from its server");

    // A drained server keeps serving but gets no new databases, and cannot be removed while it holds any.
    assert_eq!(admin(addr, "POST", "/admin/servers/s2/drain", "").status, 200);
    assert_eq!(server_of(&register(addr, plat, Some("t7"), None, &tgz)), "default", "s2 has fewer but drains");
    let r = register(addr, plat, Some("t8"), Some("s2"), &tgz);
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(place_of(&call(addr, plat, Some("t3"), "where_am_i")).0, s.port.to_string());
    let r = admin(addr, "DELETE", "/admin/servers/s2", "");
    assert_eq!((r.status, r.error_code()), (409, "server_in_use".into()), "{}", r.text());
    let list = admin(addr, "GET", "/admin/servers", "").json();
    let s2 = list
        .get("servers")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .find(|x| x.get("name").and_then(Value::as_str) == Some("s2"))
        .cloned()
        .unwrap();
    assert_eq!(s2.get("state").and_then(Value::as_str), Some("draining"));
    assert_eq!(s2.get("databases"), Some(&Value::Number("3".into())), "{s2:?}");
    assert_eq!(admin(addr, "POST", "/admin/servers/s2/activate", "").status, 200);

    // s2 goes down: only its databases fail; placement skips it and leaves nothing behind.
    s.stop();
    let r = call(addr, plat, Some("t1"), "where_am_i");
    assert_eq!((r.status, r.error_code()), (503, "connection_failed".into()), "{}", r.text());
    assert_eq!(place_of(&call(addr, plat, Some("t2"), "where_am_i")).0, p.port.to_string());
    assert_eq!(place_of(&call(addr, plat, None, "where_am_i")).0, p.port.to_string());
    assert_eq!(server_of(&register(addr, plat, Some("t10"), None, &tgz)), "default", "s2 has the fewest but is down");
    let r = migrate(addr, plat, &tgz);
    assert_eq!(r.status, 500, "{}", r.text());
    let v = r.json();
    assert_eq!(v.get("status").and_then(Value::as_str), Some("completed_with_errors"));
    let mut failed: Vec<String> = v
        .get("results")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .filter(|x| x.get("status").and_then(Value::as_str) == Some("failed"))
        .map(|x| x.get("database").and_then(Value::as_str).unwrap().to_string())
        .collect();
    failed.sort();
    assert_eq!(failed, ["spread_t1", "spread_t3", "spread_t4"], "only s2's databases fail");
    assert!(
        eventually(Duration::from_secs(5), || admin(addr, "GET", "/admin/servers", "")
            .text()
            .contains("\"state\":\"down\"")),
        "the listing shows s2 down"
    );

    // Back up: its databases are served again.
    s.start();
    assert!(eventually(Duration::from_secs(10), || call(addr, plat, Some("t1"), "where_am_i").status == 200));
    assert!(databases_on(&s, "spread_t10").is_empty(), "nothing was made on s2 while it was down");

    // s2 holds 3 and default 6 now: placement by count picks s2, a platform's default server or a
    // named one wins over it.
    let r = admin(addr, "POST", "/admin/create-tenant", r#"{"platform":"spread","tenant_id":"ct","server":"default"}"#);
    assert_eq!((r.status, server_of(&r)), (201, "default".into()), "{}", r.text());
    assert_eq!(
        server_of(&admin(addr, "POST", "/admin/create-tenant", r#"{"platform":"spread","tenant_id":"cu"}"#)),
        "s2"
    );
    let r = admin(addr, "POST", "/platform/register", r#"{"platform":"pinned","server":"default"}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(server_of(&register(addr, "pinned", None, None, &tgz)), "default");
    let r = common::post_json(addr, "/platform/register", r#"{"platform":"pinned2","server":"s2"}"#);
    assert_eq!(r.status, 401, "only an operator pins a platform: {}", r.text());

    // v2: /database/create takes `server` too, and fleet databases are listed with theirs.
    assert_eq!(common::post_json(addr, "/platform/register", r#"{"platform":"vtwo"}"#).status, 201);
    let (ct, body) = common::multipart(&[("schema_name", b"app"), ("schema", &tgz)]);
    let r = common::request(addr, "POST", "/platform/vtwo/schema", &[("Content-Type", &ct)], &body);
    assert!(r.status == 200 || r.status == 201, "{}", r.text());
    let create = |id: &str, server: &str| {
        let extra = if server.is_empty() { String::new() } else { format!(r#","server":"{server}""#) };
        admin(
            addr,
            "POST",
            "/database/create",
            &format!(r#"{{"platform":"vtwo","schema_name":"app","database_id":"{id}"{extra}}}"#),
        )
    };
    assert_eq!(server_of(&create("d1", "default")), "default");
    assert_eq!(server_of(&create("d2", "s2")), "s2");
    assert_eq!(databases_on(&s, "vtwo_"), ["vtwo_app_d2"]);
    let listed = admin(addr, "GET", "/platform/vtwo/databases", "").json();
    let servers: Vec<String> = listed
        .get("databases")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|d| d.get("server").and_then(Value::as_str).unwrap_or_default().to_string())
        .collect();
    assert_eq!(servers, ["default", "s2"]);
    assert_eq!(place_of(&call(addr, "vtwo", Some("app_d2"), "where_am_i")).0, s.port.to_string());
    assert!(metrics(addr).contains("stonescriptdb_gateway_server_calls_total{server=\"s2\",replica=\"\"}"));
    drop(g2);
    drop(g);
}

#[test]
fn reads_of_stable_functions_go_to_a_fresh_replica_and_fall_back_to_the_primary() {
    let p = Cluster::new();
    let replica = p.replica();
    let rep_addr = format!("127.0.0.1:{}", replica.port);
    let g = start_on(&p, &[("DB_REPLICAS", &rep_addr), ("READ_REPLICAS", "on"), ("MAX_REPLICA_LAG_MS", "300")]);
    let addr = g.addr;
    let plat = "reads";
    let tgz = archive(&[("where_am_i", WHERE_STABLE), ("where_am_i_v", WHERE_VOLATILE), ("next_visit", MISLABELLED)]);
    assert_eq!(server_of(&register(addr, plat, None, None, &tgz)), "default");
    let health = || common::request(addr, "GET", "/health", &[], b"").text();
    assert!(eventually(Duration::from_secs(10), || health().contains("\"usable\":true")), "{}", health());

    // A STABLE function is read on the replica once the gateway knows its volatility.
    let on_replica = (replica.port.to_string(), true);
    assert!(
        eventually(Duration::from_secs(10), || place_of(&call(addr, plat, None, "where_am_i")) == on_replica),
        "a STABLE call never reached the replica"
    );
    for _ in 0..5 {
        assert!(!place_of(&call(addr, plat, None, "where_am_i_v")).1, "a VOLATILE call went to the replica");
        let body = place_of(&call_with(addr, plat, None, "where_am_i", ",\"consistency\":\"primary\"", &[]));
        assert!(!body.1, "consistency primary went to the replica");
        let hdr = place_of(&call_with(addr, plat, None, "where_am_i", "", &[("X-Consistency", "primary")]));
        assert!(!hdr.1, "X-Consistency: primary went to the replica");
    }
    let r = call_with(addr, plat, None, "where_am_i", ",\"consistency\":\"sometimes\"", &[]);
    assert_eq!((r.status, r.error_code()), (400, "invalid_request".into()));

    // A function labelled STABLE that writes is refused by the replica and run again on the primary:
    // every call is answered, each ran exactly once (the sequence has no gap), and the retries are
    // counted (the counters are published every 100 ms, so they are read until they show).
    let retries = || {
        metrics(addr)
            .lines()
            .find(|l| l.starts_with("stonescriptdb_gateway_replica_write_retries_total{server=\"default\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut seen: Vec<String> = Vec::new();
    let retried = eventually(Duration::from_secs(10), || {
        let r = call(addr, plat, None, "next_visit");
        assert_eq!(r.status, 200, "{}", r.text());
        match common::db::scalar(&r) {
            Value::Number(n) => seen.push(n),
            other => panic!("{other:?}"),
        }
        seen.len() >= 4 && retries() >= 2
    });
    assert!(retried, "no write retry was counted after {} calls", seen.len());
    let expected: Vec<String> = (1..=seen.len()).map(|i| i.to_string()).collect();
    assert_eq!(seen, expected, "each call ran once, on the primary");
    let m = metrics(addr);
    assert!(
        m.contains(&format!("stonescriptdb_gateway_server_calls_total{{server=\"default\",replica=\"{rep_addr}\"}}"))
    );

    // Replay paused while the primary writes: past MAX_REPLICA_LAG_MS reads go to the primary.
    let mut rc = replica.su("postgres");
    rc.simple_query("SELECT pg_wal_replay_pause()").unwrap();
    let mut pc = p.su("reads_main");
    pc.simple_query("INSERT INTO notes (body) VALUES ('while paused')").unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            pc.simple_query("INSERT INTO notes (body) VALUES ('more')").unwrap();
            !place_of(&call(addr, plat, None, "where_am_i")).1
        }),
        "a lagging replica kept getting reads: {}",
        health()
    );
    assert!(health().contains("\"usable\":false"), "{}", health());
    rc.simple_query("SELECT pg_wal_replay_resume()").unwrap();
    rc.close();
    assert!(eventually(Duration::from_secs(10), || place_of(&call(addr, plat, None, "where_am_i")).1), "{}", health());

    // The replica stops: every read is answered, by the primary.
    replica.stop();
    for _ in 0..20 {
        let (_, on_replica) = place_of(&call(addr, plat, None, "where_am_i"));
        assert!(!on_replica);
    }
    pc.close();
    drop(g);
}

#[test]
fn connections_to_one_server_stay_under_its_cap() {
    let p = Cluster::new();
    let g = start_on(
        &p,
        &[("MAX_CONNECTIONS_PER_SERVER", "3"), ("MAX_CONNECTIONS_PER_POOL", "5"), ("CALL_PIPELINE_DEPTH", "1")],
    );
    let addr = g.addr;
    let sleepy = "CREATE OR REPLACE FUNCTION nap() RETURNS int LANGUAGE sql AS $$ SELECT 1 FROM pg_sleep(0.3) $$;";
    let tgz = archive(&[("nap", sleepy)]);
    for t in ["a", "b"] {
        assert_eq!(register(addr, "capped", Some(t), None, &tgz).status, 200);
    }
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (peak, stop) = (peak.clone(), stop.clone());
        let params = p.su_params("postgres");
        std::thread::spawn(move || {
            let mut c = stonescriptdb_gateway::pg::blocking::Client::connect(&params).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n: usize = c
                    .simple_query(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'stonescriptdb-gateway' AND datname LIKE 'capped%'",
                    )
                    .unwrap()[0][0]
                    .as_deref()
                    .unwrap()
                    .parse()
                    .unwrap();
                peak.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let t = if i % 2 == 0 { "a" } else { "b" };
            std::thread::spawn(move || {
                let r = call(addr, "capped", Some(t), "nap");
                (r.status, r.text())
            })
        })
        .collect();
    let statuses: Vec<(u16, String)> = calls.into_iter().map(|h| h.join().unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    assert_eq!(
        statuses.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![200; 8],
        "the calls wait for a connection, none fails: {statuses:?}"
    );
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!((1..=3).contains(&peak), "{peak} connections to the server (cap 3)");
    drop(g);
}
