//! Fleet migration through the v2 API: starts the gateway in this process, creates `FLEET_DBS` tenant
//! databases (default 500) from a stored schema (3 tables, 20 functions, one migration), uploads a
//! version with one changed function and times `POST /v2/migrate` over all of them, with the default
//! `DEPLOY_PARALLELISM` and with `DEPLOY_PARALLELISM=1`. Creation is not the measured part. Drops
//! every database it created at the end.
//!
//! PostgreSQL: `TEST_PG_HOST`/`TEST_PG_PORT`/`TEST_PG_SUPERUSER` (as set by `scripts/test.sh`), else
//! the gateway's own `DB_*` variables.
//!
//! `cargo bench --bench fleet`

#[path = "../tests/common/archive.rs"]
mod test_archive;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use stonescriptdb_gateway::config::{Config, Settings, Source};
use stonescriptdb_gateway::json::{self, Value};
use stonescriptdb_gateway::pg::blocking::Client;
use stonescriptdb_gateway::server::{Handle, Server};

struct Gateway {
    addr: SocketAddr,
    handle: Handle,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn settings(extra: &[(&str, &str)]) -> Settings {
    let mut s = Settings::defaults();
    let env: HashMap<String, String> = std::env::vars().collect();
    s.apply_env(&env);
    if let Some(h) = env.get("TEST_PG_HOST") {
        s.set("DB_HOST", h, Source::Flag);
    }
    if let Some(p) = env.get("TEST_PG_PORT") {
        s.set("DB_PORT", p, Source::Flag);
    }
    if let Some(u) = env.get("TEST_PG_SUPERUSER") {
        s.set("DB_USER", u, Source::Flag);
    }
    s.set("GATEWAY_HOST", "127.0.0.1", Source::Flag);
    s.set("GATEWAY_PORT", "0", Source::Flag);
    s.set("LOG_LEVEL", "warn", Source::Flag);
    for (k, v) in extra {
        assert!(s.set(k, v, Source::Flag), "unknown key {k}");
    }
    s
}

fn start(extra: &[(&str, &str)]) -> Gateway {
    let cfg = Config::from_settings(&settings(extra)).expect("valid configuration");
    let _ = stonescriptdb_gateway::log::init(&cfg.log);
    let (server, handle) = Server::bind(cfg).expect("bind");
    let addr = handle.addr;
    let thread = std::thread::spawn(move || server.run());
    Gateway { addr, handle, thread: Some(thread) }
}

fn admin() -> Client {
    let cfg = Config::from_settings(&settings(&[])).expect("valid configuration");
    Client::connect(&cfg.db.connect_params()).expect("connect to PostgreSQL (set TEST_PG_* or DB_*)")
}

/// One request with `Connection: close`; (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, ct: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    let status = std::str::from_utf8(&out[9..12]).unwrap().parse().unwrap();
    (status, out[end..].to_vec())
}

fn post_json(addr: SocketAddr, path: &str, body: &str) -> (u16, Value) {
    let (st, b) = http(addr, "POST", path, "application/json", body.as_bytes());
    (st, json::parse(&b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&b))))
}

/// The small tenant schema; `version` changes the body of one function.
fn schema(version: u32) -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    f.insert(
        "tables/customers.sql".into(),
        "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());\n"
            .into(),
    );
    f.insert(
        "tables/orders.sql".into(),
        "CREATE TABLE orders (id serial PRIMARY KEY, customer_id integer NOT NULL REFERENCES customers (id), total numeric(12,2) NOT NULL);\n"
            .into(),
    );
    f.insert(
        "tables/events.sql".into(),
        "CREATE TABLE events (id bigserial PRIMARY KEY, kind text NOT NULL, at timestamptz NOT NULL DEFAULT now());\n"
            .into(),
    );
    f.insert(
        "migrations/001_settings.sql".into(),
        "CREATE TABLE settings (key text PRIMARY KEY, value text NOT NULL);\nINSERT INTO settings VALUES ('schema', '1');\n".into(),
    );
    for i in 0..20 {
        let body = if i == 0 {
            format!(
                "CREATE OR REPLACE FUNCTION schema_version() RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT {version} $$;\n"
            )
        } else {
            format!(
                "CREATE OR REPLACE FUNCTION order_total_{i}(p_customer integer) RETURNS numeric LANGUAGE sql STABLE AS \
                 $$ SELECT coalesce(sum(total), 0) + {i} FROM orders WHERE customer_id = p_customer $$;\n"
            )
        };
        f.insert(format!("functions/f{i:02}.sql"), body);
    }
    f
}

fn upload(addr: SocketAddr, platform: &str, version: u32) {
    let boundary = "----fleetBenchBoundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"schema_name\"\r\n\r\ntenant_db\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"schema\"; filename=\"s.tar.gz\"\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&test_archive::tgz(&schema(version)));
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let (st, b) = http(
        addr,
        "POST",
        &format!("/platform/{platform}/schema"),
        &format!("multipart/form-data; boundary={boundary}"),
        &body,
    );
    assert_eq!(st, 201, "{}", String::from_utf8_lossy(&b));
}

fn num(v: &Value, k: &str) -> i64 {
    match v.get(k) {
        Some(Value::Number(n)) => n.parse().unwrap(),
        other => panic!("{k}: {other:?}"),
    }
}

/// Times one fleet migrate; checks every database succeeded with one function updated.
fn timed_migrate(addr: SocketAddr, platform: &str, total: usize, label: &str) -> Duration {
    let t0 = Instant::now();
    let (st, v) = post_json(addr, "/v2/migrate", &format!(r#"{{"platform":"{platform}","schema_name":"tenant_db"}}"#));
    let took = t0.elapsed();
    assert_eq!(st, 200, "{}", v.to_json());
    let results = v.get("results").and_then(Value::as_array).unwrap();
    assert_eq!(results.len(), total);
    assert_eq!(num(&v, "functions_updated") as usize, total, "one changed function per database");
    println!(
        "{label:<34} {total} databases in {:>7.2} s  ({:.1} ms/database, {:.0} databases/s)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / total as f64,
        total as f64 / took.as_secs_f64()
    );
    took
}

fn main() {
    let total: usize = std::env::var("FLEET_DBS").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let pid = std::process::id();
    let platform = format!("fleet_{pid:x}");
    let catalog = format!("fleet_bench_cat_{pid}");
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("fleet bench: {total} databases, {cpus} CPUs, catalog {catalog}, platform {platform}");

    let cleanup = || {
        let mut a = admin();
        let rows = a
            .simple_query(&format!(
                "SELECT datname FROM pg_database WHERE datname LIKE '{platform}\\_%' OR datname = '{catalog}'"
            ))
            .unwrap();
        let t0 = Instant::now();
        for r in &rows {
            let _ = a.batch_execute(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", r[0].as_deref().unwrap()));
        }
        println!("dropped {} databases in {:.1} s", rows.len(), t0.elapsed().as_secs_f64());
        a.close();
    };

    let result = std::panic::catch_unwind(|| {
        let g = start(&[("CATALOG_DB", &catalog), ("DEPLOY_WORKERS", "2"), ("DEPLOY_QUEUE", "1024")]);
        let (st, v) = post_json(g.addr, "/platform/register", &format!(r#"{{"platform":"{platform}"}}"#));
        assert_eq!(st, 201, "{}", v.to_json());
        upload(g.addr, &platform, 1);

        let t0 = Instant::now();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= total {
                            return;
                        }
                        let (st, v) = post_json(
                            g.addr,
                            "/database/create",
                            &format!(
                                r#"{{"platform":"{platform}","schema_name":"tenant_db","database_id":"t{i:04}"}}"#
                            ),
                        );
                        assert_eq!(st, 201, "{}", v.to_json());
                        if (i + 1).is_multiple_of(100) {
                            println!("  created {} databases ({:.0} s)", i + 1, t0.elapsed().as_secs_f64());
                        }
                    }
                });
            }
        });
        println!("setup (not measured): created {total} databases in {:.1} s", t0.elapsed().as_secs_f64());
        drop(g);

        let g = start(&[("CATALOG_DB", &catalog)]);
        upload(g.addr, &platform, 2);
        let default = timed_migrate(g.addr, &platform, total, &format!("migrate, DEPLOY_PARALLELISM=0 ({cpus})"));
        drop(g);

        let g = start(&[("CATALOG_DB", &catalog), ("DEPLOY_PARALLELISM", "1")]);
        upload(g.addr, &platform, 3);
        let one = timed_migrate(g.addr, &platform, total, "migrate, DEPLOY_PARALLELISM=1");
        drop(g);

        let g = start(&[("CATALOG_DB", &catalog), ("DEPLOY_PARALLELISM", "4")]);
        upload(g.addr, &platform, 4);
        timed_migrate(g.addr, &platform, total, "migrate, DEPLOY_PARALLELISM=4");
        drop(g);
        println!(
            "target: <= 60 s for {total} databases with the default: {}",
            if default.as_secs() <= 60 { "met" } else { "MISSED" }
        );
        let _ = one;
    });
    cleanup();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
