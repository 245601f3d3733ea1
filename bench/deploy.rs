//! Deploy throughput: starts the gateway in this process against a real PostgreSQL and measures
//! (a) `/register` of an unchanged 100-function schema (the redeploy every CI run makes), and
//! (b) `/migrate` without `tenant_id` over 200 tenant databases after one function changed.
//!
//! PostgreSQL comes from TEST_PG_HOST/TEST_PG_PORT/TEST_PG_SUPERUSER (what `scripts/test.sh --keep`
//! prints) or else the gateway's own DB_* / DATABASE_URL environment. Knobs: BENCH_REDEPLOYS (default
//! 10), BENCH_TENANTS (default 200), BENCH_STEADY=1 (two unchanged `/migrate` runs of the fleet before
//! the changed one, as in a fleet deployed often: the changed run then finds what a process remembers
//! of each database, as it does in steady operation, instead of being the process's first).
//! Every database it creates (platform `bench_deploy_<pid>`) and its catalog database are dropped at
//! the end.

#[path = "../tests/common/archive.rs"]
mod test_archive;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use stonescriptdb_gateway::config::{Config, Settings, Source};
use stonescriptdb_gateway::json::{self, Value};
use stonescriptdb_gateway::pg::blocking::Client;
use stonescriptdb_gateway::server::Server;

const BOUNDARY: &str = "----ssdbBenchBoundary";

fn env_num(k: &str, default: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The schema: one table, one migration, a seeder and `n` functions; `variant` changes the body
/// of function 0 only.
fn schema(n: usize, variant: u32) -> Vec<(String, String)> {
    let mut files = vec![
        (
            "tables/items.sql".to_string(),
            "CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL, qty integer NOT NULL DEFAULT 0);\n"
                .to_string(),
        ),
        (
            "migrations/001_index.sql".to_string(),
            "CREATE INDEX IF NOT EXISTS items_name_idx ON items (name);\n".to_string(),
        ),
        ("seeders/items.sql".to_string(), "INSERT INTO items (id, name) VALUES (1, 'one'), (2, 'two');\n".to_string()),
    ];
    for i in 0..n {
        let extra = if i == 0 { variant } else { 0 };
        files.push((
            format!("functions/fn_{i:03}.sql"),
            format!(
                "CREATE OR REPLACE FUNCTION fn_{i:03}(p_id integer, p_name text DEFAULT NULL)\n\
                 RETURNS TABLE (id integer, name text, qty integer) LANGUAGE sql STABLE AS $$\n    \
                 SELECT i.id, coalesce(p_name, i.name), i.qty + {i} + {extra} FROM items i WHERE i.id = p_id;\n$$;\n"
            ),
        ));
    }
    files
}

/// One POST with a multipart form; returns status and JSON body.
fn post(addr: SocketAddr, path: &str, fields: &[(&str, &str)], archive: &[u8]) -> (u16, Value) {
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"schema\"; filename=\"s.tgz\"\r\n\
             Content-Type: application/gzip\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(archive);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1800))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("response head");
    let status: u16 = std::str::from_utf8(&resp[9..12]).unwrap().parse().unwrap();
    let v = json::parse(&resp[end + 4..])
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&resp[end + 4..])));
    (status, v)
}

fn number(v: &Value, k: &str) -> u64 {
    match v.get(k) {
        Some(Value::Number(n)) => n.parse().unwrap_or(0),
        _ => 0,
    }
}

fn stats(mut ms: Vec<f64>) -> String {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    format!(
        "min {:.1} ms, median {:.1} ms, mean {:.1} ms, max {:.1} ms over {} runs",
        ms[0],
        ms[ms.len() / 2],
        mean,
        ms[ms.len() - 1],
        ms.len()
    )
}

fn main() {
    let redeploys = env_num("BENCH_REDEPLOYS", 10).max(1);
    let tenants = env_num("BENCH_TENANTS", 200);
    let pid = std::process::id();
    let platform = format!("bench_deploy_{pid}");
    let catalog = format!("bench_catalog_{pid}");

    let mut s = Settings::defaults();
    let env: HashMap<String, String> = std::env::vars().collect();
    s.apply_env(&env);
    s.set("GATEWAY_PORT", "0", Source::Flag);
    s.set("GATEWAY_HOST", "127.0.0.1", Source::Flag);
    if let Ok(h) = std::env::var("TEST_PG_HOST") {
        s.set("DB_HOST", &h, Source::Flag);
    }
    if let Ok(p) = std::env::var("TEST_PG_PORT") {
        s.set("DB_PORT", &p, Source::Flag);
    }
    if let Ok(u) = std::env::var("TEST_PG_SUPERUSER") {
        s.set("DB_USER", &u, Source::Flag);
    }
    s.set("CATALOG_DB", &catalog, Source::Flag);
    s.set("LOG_LEVEL", "warn", Source::Flag);
    let cfg = Config::from_settings(&s).expect("configuration (set TEST_PG_* or DB_*)");
    let admin_params = cfg.db.connect_params();
    let parallelism = cfg.deploy.parallelism;
    let _ = stonescriptdb_gateway::log::init(&cfg.log);
    let (server, handle) = Server::bind(cfg).expect("bind");
    let addr = handle.addr;
    let thread = std::thread::spawn(move || server.run());

    // Drops the bench databases when main ends, also when an assertion fails.
    let cleanup = Cleanup { params: admin_params, platform: platform.clone(), catalog: catalog.clone() };

    println!(
        "deploy bench: platform {platform}, {redeploys} redeploys, {tenants} tenants, DEPLOY_PARALLELISM {parallelism}"
    );

    // (a) unchanged redeploy of a 100-function schema.
    let v0 = test_archive::tgz(schema(100, 0));
    let t = Instant::now();
    let (st, v) = post(addr, "/register", &[("platform", &platform)], &v0);
    assert_eq!(st, 200, "{}", v.to_json());
    assert_eq!(number(&v, "functions_deployed"), 100);
    println!("(a) first register (new database, 100 functions): {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    let mut times = Vec::new();
    for _ in 0..redeploys {
        let t = Instant::now();
        let (st, v) = post(addr, "/register", &[("platform", &platform)], &v0);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(st, 200, "{}", v.to_json());
        assert_eq!(number(&v, "functions_skipped"), 100, "{}", v.to_json());
    }
    println!("(a) unchanged redeploy via /register: {}", stats(times));

    // (b) 200 tenants, one changed function, one /migrate.
    if tenants > 0 {
        let t = Instant::now();
        for i in 0..tenants {
            let tenant = format!("t{i:04}");
            let (st, v) = post(addr, "/register", &[("platform", &platform), ("tenant_id", &tenant)], &v0);
            assert_eq!(st, 200, "{}", v.to_json());
        }
        let setup = t.elapsed();
        println!(
            "(b) setup: registered {tenants} tenant databases in {:.1} s ({:.0} ms each)",
            setup.as_secs_f64(),
            setup.as_secs_f64() * 1000.0 / tenants as f64
        );
        if std::env::var("BENCH_STEADY").is_ok_and(|v| v == "1") {
            for round in 1..=2 {
                let t = Instant::now();
                let (st, v) = post(addr, "/migrate", &[("platform", &platform)], &v0);
                assert_eq!(st, 200, "{}", v.to_json());
                println!(
                    "(b) steady: unchanged /migrate {round} before the change: {:.1} ms per database",
                    t.elapsed().as_secs_f64() * 1000.0 / (tenants + 1) as f64
                );
            }
        }
        let v1 = test_archive::tgz(schema(100, 1));
        let t = Instant::now();
        let (st, v) = post(addr, "/migrate", &[("platform", &platform)], &v1);
        let took = t.elapsed();
        assert_eq!(st, 200, "{}", v.to_json());
        let dbs = v.get("results").and_then(Value::as_array).map_or(0, |a| a.len());
        assert_eq!(dbs, tenants + 1, "main + tenants");
        assert_eq!(number(&v, "functions_updated"), dbs as u64);
        println!(
            "(b) /migrate of {dbs} databases (main + {tenants} tenants), 1 of 100 functions changed: {:.2} s ({:.1} ms per database)",
            took.as_secs_f64(),
            took.as_secs_f64() * 1000.0 / dbs as f64
        );
        let t = Instant::now();
        let (st, v) = post(addr, "/migrate", &[("platform", &platform)], &v1);
        assert_eq!(st, 200, "{}", v.to_json());
        let took = t.elapsed().as_secs_f64();
        println!(
            "(b) /migrate again, nothing changed: {took:.2} s ({:.1} ms per database)",
            took * 1000.0 / dbs as f64
        );
        // A fleet migrated often: the third run sees what the second (unchanged) one read.
        let t = Instant::now();
        let (st, v) = post(addr, "/migrate", &[("platform", &platform)], &v1);
        assert_eq!(st, 200, "{}", v.to_json());
        let took = t.elapsed().as_secs_f64();
        println!(
            "(b) /migrate a third time, nothing changed: {took:.2} s ({:.1} ms per database)",
            took * 1000.0 / dbs as f64
        );
    }

    handle.shutdown();
    let _ = thread.join();
    drop(cleanup);
}

struct Cleanup {
    params: stonescriptdb_gateway::pg::params::ConnectParams,
    platform: String,
    catalog: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let t = Instant::now();
        let Ok(mut admin) = Client::connect(&self.params) else {
            eprintln!("cleanup: cannot connect; drop databases {}_* and {} by hand", self.platform, self.catalog);
            return;
        };
        let rows = admin
            .simple_query(&format!(
                "SELECT datname FROM pg_database WHERE starts_with(datname, '{}_') OR datname = '{}'",
                self.platform, self.catalog
            ))
            .unwrap_or_default();
        let n = rows.len();
        for r in rows {
            if let Some(db) = &r[0] {
                let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"));
            }
        }
        admin.close();
        println!("cleanup: dropped {n} bench databases in {:.1} s", t.elapsed().as_secs_f64());
    }
}
