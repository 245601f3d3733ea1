//! PostgreSQL stopped and started under traffic: calls fail fast with 503 `connection_failed` (and
//! `Retry-After`) while it is down and succeed again afterwards without restarting the gateway.
//!
//! Runs against its own throwaway cluster (tests/common/cluster.rs), never the shared one, so other
//! test binaries running in parallel are not disturbed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{post_json, request, start};

const BODY: &str = r#"{"platform":"ct_restart","function":"answer","params":[]}"#;

#[test]
fn postgres_restart_under_traffic() {
    // Fail (not skip) outside scripts/test.sh, like every database test.
    let _ = common::pg_env();
    let cluster = Cluster::new();
    {
        let params = cluster.su_params("postgres");
        let role = common::db::provision_on(
            &params,
            "ct_restart",
            "ct_restart_main",
            common::db::main_owner("ct_restart"),
            common::db::DEFAULT_CATALOG,
        );
        let mut c = cluster.su("ct_restart_main");
        c.batch_execute(&format!("SET ROLE {role}; CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 42'"))
            .unwrap();
    }
    let port = cluster.port.to_string();
    let socket = cluster.socket_dir();
    let tcp = start(&[("DB_HOST", "127.0.0.1"), ("DB_PORT", &port), ("MAX_CONNECTIONS_PER_POOL", "4")]);
    let unix = start(&[("DB_HOST", &socket), ("DB_PORT", &port), ("MAX_CONNECTIONS_PER_POOL", "4")]);
    let addrs = [tcp.addr, unix.addr];
    for addr in addrs {
        let r = post_json(addr, "/call", BODY);
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // Background traffic on both gateways for the whole test: every answer must be 200 or a 503
    // connection_failed with Retry-After, and come back quickly.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic: Vec<_> = addrs
        .iter()
        .flat_map(|&addr| (0..2).map(move |_| addr))
        .map(|addr| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut down) = (0usize, 0usize);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = post_json(addr, "/call", BODY);
                    assert!(t.elapsed() < Duration::from_secs(8), "a call took {:?}", t.elapsed());
                    match r.status {
                        200 => ok += 1,
                        503 => {
                            assert_eq!(r.error_code(), "connection_failed", "{}", r.text());
                            assert!(r.header("retry-after").is_some(), "503 without Retry-After");
                            down += 1;
                        }
                        s => panic!("unexpected {s} during restart: {}", r.text()),
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                (ok, down)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    cluster.stop();
    // While it is down: 503 connection_failed, retryable, quickly, on both transports.
    for addr in addrs {
        let t = Instant::now();
        let r = post_json(addr, "/call", BODY);
        assert_eq!((r.status, r.error_code().as_str()), (503, "connection_failed"), "{}", r.text());
        assert!(r.header("retry-after").is_some());
        assert!(t.elapsed() < Duration::from_secs(6), "answer while down took {:?}", t.elapsed());
    }
    let degraded =
        common::db::eventually(Duration::from_secs(5), || request(tcp.addr, "GET", "/health", &[], b"").status == 503);
    assert!(degraded, "/health never reported PostgreSQL down");
    // Long enough for the reconnect backoff to reach its 5 s cap.
    std::thread::sleep(Duration::from_millis(6000));

    cluster.start();
    let up = Instant::now();
    for addr in addrs {
        let recovered =
            common::db::eventually(Duration::from_secs(15), || post_json(addr, "/call", BODY).status == 200);
        assert!(recovered, "gateway {addr} did not recover within 15 s of the restart");
    }
    println!("recovered {:?} after the restart", up.elapsed());
    // The backoff grown during the outage does not outlast it: the health probe (every second) ends it.
    assert!(up.elapsed() < Duration::from_millis(2500), "recovered only {:?} after the restart", up.elapsed());
    // Keep the traffic going a little on the recovered pools.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut total_down = 0;
    for t in traffic {
        let (ok, down) = t.join().unwrap();
        assert!(ok > 0, "a traffic thread never succeeded");
        total_down += down;
    }
    assert!(total_down > 0, "traffic never saw the outage");
    // Steady again: every call succeeds.
    for addr in addrs {
        for _ in 0..20 {
            let r = post_json(addr, "/call", BODY);
            assert_eq!(r.status, 200, "{}", r.text());
        }
        assert!(
            common::db::eventually(Duration::from_secs(5), || request(addr, "GET", "/health", &[], b"").status == 200),
            "/health never recovered"
        );
    }
}
