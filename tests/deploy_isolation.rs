//! A long deploy runs on a worker thread: `/call` keeps being answered while it runs, and the loop
//! drops cached statements of the deployed database when the deploy commits.

mod common;

use common::multipart;

use std::time::{Duration, Instant};

use stonescriptdb_gateway::pg::blocking::Client;

fn admin() -> Client {
    common::db::su("postgres")
}

#[test]
fn calls_are_answered_while_a_long_deploy_runs() {
    let mut a = admin();
    let uniq = std::process::id();
    let slow_platform = format!("iso_slow_{uniq}");
    let fast_db = format!("iso_fast_{uniq}_main");
    let catalog = format!("cat_iso_{uniq}");
    let fast_platform = format!("iso_fast_{uniq}");
    let role = common::db::provision(&fast_platform, &fast_db, common::db::main_owner(&fast_platform), &catalog);
    {
        let mut c = common::db::su(&fast_db);
        c.batch_execute(&format!(
            "SET ROLE {role}; CREATE FUNCTION ping(x int) RETURNS int LANGUAGE sql AS $$ SELECT x $$"
        ))
        .unwrap();
    }
    let g = common::start(&[("CATALOG_DB", &catalog)]);
    let addr = g.addr;
    let archive = common::archive::tgz([
        ("migrations/001_slow.sql", "SELECT pg_sleep(3);\nCREATE TABLE t (id int);"),
        ("functions/f.sql", "CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;"),
    ]);
    let deploy = std::thread::spawn({
        let slow_platform = slow_platform.clone();
        move || {
            let (ct, body) = multipart(&[("platform", slow_platform.as_bytes()), ("schema", &archive)]);
            let started = Instant::now();
            let r = common::request(addr, "POST", "/register", &[("Content-Type", &ct)], &body);
            (r, started.elapsed())
        }
    });
    // While the deploy sleeps in its migration, calls on another database are answered.
    std::thread::sleep(Duration::from_millis(300));
    let mut answered_during = 0;
    while !deploy.is_finished() {
        let r = common::post_json(
            addr,
            "/call",
            &format!(r#"{{"platform":"iso_fast_{uniq}","function":"ping","params":[7]}}"#),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains("\"ping\":7"), "{}", r.text());
        if !deploy.is_finished() {
            answered_during += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (r, took) = deploy.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(took >= Duration::from_secs(3), "the migration really was slow");
    assert!(answered_during >= 5, "calls were answered while the deploy ran ({answered_during})");
    // The deployed database serves its new function.
    let r = common::post_json(addr, "/call", &format!(r#"{{"platform":"{slow_platform}","function":"answer"}}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    drop(g);
    for db in [fast_db, format!("{slow_platform}_main"), catalog] {
        a.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).unwrap();
    }
}

#[test]
fn a_full_deploy_queue_is_refused_with_a_retryable_503() {
    let mut a = admin();
    let uniq = std::process::id();
    let catalog = format!("cat_isoq_{uniq}");
    let g = common::start(&[("CATALOG_DB", &catalog), ("DEPLOY_WORKERS", "1"), ("DEPLOY_QUEUE", "1")]);
    let addr = g.addr;
    let archive = common::archive::tgz([("migrations/001_slow.sql", "SELECT pg_sleep(1.5);")]);
    // One deploy runs, one waits in the queue, the rest find it full.
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let archive = archive.clone();
            std::thread::spawn(move || {
                let platform = format!("isoq_{uniq}_{i}");
                let (ct, body) = multipart(&[("platform", platform.as_bytes()), ("schema", &archive)]);
                std::thread::sleep(Duration::from_millis(100 * i as u64));
                (platform, common::request(addr, "POST", "/register", &[("Content-Type", &ct)], &body))
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = results.iter().filter(|(_, r)| r.status == 200).count();
    let full: Vec<_> = results.iter().filter(|(_, r)| r.status == 503).collect();
    assert!(
        ok >= 2,
        "the running and the queued deploy succeed: {:?}",
        results.iter().map(|(_, r)| r.text()).collect::<Vec<_>>()
    );
    assert!(!full.is_empty(), "some deploys found the queue full");
    for (_, r) in &full {
        assert_eq!(r.error_code(), "deploy_queue_full", "{}", r.text());
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert_eq!(ok + full.len(), 4);
    drop(g);
    for (p, _) in &results {
        a.batch_execute(&format!("DROP DATABASE IF EXISTS {p}_main WITH (FORCE)")).unwrap();
    }
    a.batch_execute(&format!("DROP DATABASE IF EXISTS {catalog} WITH (FORCE)")).unwrap();
}
