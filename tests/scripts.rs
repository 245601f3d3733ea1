//! The helper scripts platforms copy (`scripts/register-with-gateway.sh`, `scripts/migrate-schema.sh`),
//! run with bash against an in-process gateway on port 0 (and, to count attempts exactly, against a
//! small scripted HTTP server), with the PostgreSQL cluster that `scripts/test.sh` starts.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use stonescriptdb_gateway::pg::blocking::Client;

fn one(db: &str, sql: &str) -> String {
    let mut c = Client::connect(&common::db::su_params(db)).unwrap();
    let r = c.simple_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    c.close();
    r.first().and_then(|r| r.first().cloned()).flatten().unwrap_or_default()
}

fn drop_db(name: &str) {
    if let Ok(mut c) = Client::connect(&common::db::su_params("postgres")) {
        let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
        c.close();
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory with the fixture copied to `src/postgresql` and an empty `tmp/` that the
/// scripts get as TMPDIR (so leftovers are visible); removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ssdb-scripts-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let src = root().join("tests/fixtures/platform/postgresql");
        let dst = dir.join("src/postgresql");
        for folder in std::fs::read_dir(&src).unwrap() {
            let folder = folder.unwrap().path();
            let to = dst.join(folder.file_name().unwrap());
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(&folder).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
            }
        }
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        Scratch { dir }
    }

    fn tmp_entries(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Runs a script from the repository with a clean environment plus `env`.
    fn run(&self, script: &str, env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(root().join("scripts").join(script))
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TMPDIR", self.dir.join("tmp"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run bash")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A one-purpose HTTP server: answers every request with `status` and counts the requests.
fn scripted_server(status: u16) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut tmp = [0u8; 65536];
            // Read the head, then as many body bytes as Content-Length says.
            let need = loop {
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if head.contains("expect: 100-continue") {
                        let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    break Some(p + 4 + len);
                }
            };
            if let Some(need) = need {
                while buf.len() < need {
                    match s.read(&mut tmp) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
            }
            h.fetch_add(1, Ordering::SeqCst);
            let body = format!("{{\"error\":\"scripted\",\"message\":\"status {status}\"}}");
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 {status} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    (port, hits)
}

#[test]
fn register_then_migrate_through_the_scripts() {
    common::pg_env();
    let pid = std::process::id();
    let platform = format!("sc_ok_{pid}");
    let catalog = format!("cat_sc_ok_{pid}");
    let main = format!("{platform}_main");
    drop_db(&main);
    drop_db(&catalog);
    let gw = common::start(&[("CATALOG_DB", &catalog)]);
    let url = format!("http://{}", gw.addr);
    let s = Scratch::new("ok");
    let env = [("DB_GATEWAY_URL", url.as_str()), ("PLATFORM_ID", platform.as_str()), ("RETRY_DELAY", "0")];

    let o = s.run("register-with-gateway.sh", &env);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let result = std::panic::catch_unwind(|| {
        assert!(o.status.success(), "{}", show(&o));
        assert!(out.contains("HTTP 200"), "{}", show(&o));
        assert!(out.contains("status: ready"), "{}", show(&o));
        assert!(out.contains(&format!("database: {main}")), "{}", show(&o));
        assert!(out.contains("created: true"), "{}", show(&o));
        assert!(out.contains("migrations_applied: 3"), "{}", show(&o));
        assert!(out.contains("functions_deployed: 13"), "{}", show(&o));
        assert_eq!(one(&main, "SELECT add_numbers(2, 2)"), "4");
        assert!(s.tmp_entries().is_empty(), "{:?}", s.tmp_entries());

        // A new migration, then the migrate script.
        std::fs::write(s.dir.join("src/postgresql/migrations/020_scripts.sql"), "CREATE TABLE from_script (id int);\n")
            .unwrap();
        let o = s.run("migrate-schema.sh", &env);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{}", show(&o));
        assert!(out.contains("status: completed"), "{}", show(&o));
        assert!(out.contains("migrations_applied: 1"), "{}", show(&o));
        assert_eq!(one(&main, "SELECT to_regclass('from_script') IS NOT NULL"), "t");
        assert!(s.tmp_entries().is_empty(), "{:?}", s.tmp_entries());

        // A failed migration is reported and exits non-zero (once: 422 is not retried).
        std::fs::write(s.dir.join("src/postgresql/migrations/021_bad.sql"), "SELECT 1/0;\n").unwrap();
        let o = s.run("migrate-schema.sh", &env);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{}", show(&o));
        assert!(err.contains("HTTP 422"), "{}", show(&o));
        assert!(err.contains("migration_failed"), "{}", show(&o));
        assert!(!err.contains("retrying"), "{}", show(&o));
        assert!(s.tmp_entries().is_empty(), "{:?}", s.tmp_entries());
    });
    drop(gw);
    drop_db(&main);
    drop_db(&catalog);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn client_errors_are_not_retried() {
    common::pg_env();
    let catalog = format!("cat_sc_4xx_{}", std::process::id());
    drop_db(&catalog);
    let gw = common::start(&[("CATALOG_DB", &catalog)]);
    let url = format!("http://{}", gw.addr);
    let s = Scratch::new("4xx");
    let started = Instant::now();
    let o = s.run(
        "register-with-gateway.sh",
        &[("DB_GATEWAY_URL", &url), ("PLATFORM_ID", "9-not-a-platform"), ("RETRY_COUNT", "5"), ("RETRY_DELAY", "3")],
    );
    let took = started.elapsed();
    drop(gw);
    drop_db(&catalog);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(err.contains("HTTP 400"), "{}", show(&o));
    assert!(err.contains("invalid_request"), "{}", show(&o));
    assert!(!err.contains("retrying"), "{}", show(&o));
    // One retry would have slept RETRY_DELAY (3 s) first.
    assert!(took < Duration::from_millis(2500), "took {took:?}: {}", show(&o));
    assert!(s.tmp_entries().is_empty(), "{:?}", s.tmp_entries());

    // Counted exactly on a server that always answers 404 (and, for contrast, 503).
    let (port, hits) = scripted_server(404);
    let o = s.run(
        "migrate-schema.sh",
        &[
            ("DB_GATEWAY_URL", &format!("http://127.0.0.1:{port}")),
            ("PLATFORM_ID", "acme"),
            ("RETRY_COUNT", "4"),
            ("RETRY_DELAY", "0"),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert_eq!(hits.load(Ordering::SeqCst), 1, "{}", show(&o));
    let (port, hits) = scripted_server(503);
    let o = s.run(
        "register-with-gateway.sh",
        &[
            ("DB_GATEWAY_URL", &format!("http://127.0.0.1:{port}")),
            ("PLATFORM_ID", "acme"),
            ("RETRY_COUNT", "4"),
            ("RETRY_DELAY", "0"),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert_eq!(hits.load(Ordering::SeqCst), 4, "{}", show(&o));
    assert!(s.tmp_entries().is_empty(), "{:?}", s.tmp_entries());
}

#[test]
fn unreachable_gateway_is_retried_then_fails() {
    // A port that was just free and is closed now.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = Scratch::new("down");
    for script in ["register-with-gateway.sh", "migrate-schema.sh"] {
        let started = Instant::now();
        let o = s.run(
            script,
            &[
                ("DB_GATEWAY_URL", &format!("http://127.0.0.1:{port}")),
                ("PLATFORM_ID", "acme"),
                ("TENANT_ID", "t1"),
                ("RETRY_COUNT", "3"),
                ("RETRY_DELAY", "1"),
                ("FORCE", "true"),
            ],
        );
        let took = started.elapsed();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{}", show(&o));
        assert!(err.contains("attempt 1/3, retrying in 1s"), "{}", show(&o));
        assert!(err.contains("attempt 2/3, retrying in 1s"), "{}", show(&o));
        assert!(err.contains("giving up after attempt 3/3"), "{}", show(&o));
        assert!(err.contains("curl exit 7"), "{}", show(&o));
        assert!(took >= Duration::from_secs(2), "two delays: {took:?}");
        assert!(s.tmp_entries().is_empty(), "{:?}", s.tmp_entries());
    }
    // Usage errors: exit 2 before anything is sent.
    let o = s.run("register-with-gateway.sh", &[("PLATFORM_ID", "acme")]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let o = s.run(
        "migrate-schema.sh",
        &[("DB_GATEWAY_URL", "http://127.0.0.1:1"), ("PLATFORM_ID", "acme"), ("FORCE", "yes please")],
    );
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(s.tmp_entries().is_empty(), "{:?}", s.tmp_entries());
}

/// `scripts/run.sh` prints the address the gateway really listens on: `GATEWAY_HOST`/`GATEWAY_PORT`
/// (environment or `.env`), overridden by the flags given to the gateway, wildcards shown as loopback.
#[test]
fn run_sh_prints_the_address_the_gateway_uses() {
    let root = env!("CARGO_MANIFEST_DIR");
    let run_sh = std::fs::read_to_string(format!("{root}/scripts/run.sh")).unwrap();
    assert!(
        run_sh.contains(r#"url="$(listen_url "$(setting GATEWAY_HOST)" "$(setting GATEWAY_PORT)" "$@")""#),
        "run.sh must print the address from listen_url with the gateway's own arguments"
    );
    let url = |host: &str, port: &str, args: &[&str]| {
        let o = Command::new("bash")
            .arg("-c")
            .arg(format!("source {root}/scripts/lib/listen-addr.sh && listen_url \"$@\""))
            .arg("bash")
            .args([host, port])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    assert_eq!(url("", "", &[]), "http://127.0.0.1:9000");
    assert_eq!(url("", "9100", &[]), "http://127.0.0.1:9100");
    assert_eq!(url("", "9100", &["--gateway-port", "9200"]), "http://127.0.0.1:9200");
    assert_eq!(url("10.0.0.5", "9100", &["--log-level=info", "--gateway-port=9300"]), "http://10.0.0.5:9300");
    assert_eq!(url("0.0.0.0", "", &[]), "http://127.0.0.1:9000");
    assert_eq!(url("", "", &["--gateway-host", "::"]), "http://[::1]:9000");
    assert_eq!(url("::1", "9000", &[]), "http://[::1]:9000");
    assert_eq!(url("", "0", &[]), "http://127.0.0.1:0");
}
