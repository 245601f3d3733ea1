//! The `deploy` and `migrate` subcommands of the binary against a running gateway and the test
//! cluster: every exit code (0 success, 1 failed, 2 usage, 3 unreachable after the retries), plain
//! lines when stdout is not a terminal and the redrawn progress bar when it is (through `script`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::db::exec;
use common::{Gateway, post_json, request, start, tools};

const BIN: &str = env!("CARGO_BIN_EXE_stonescriptdb-gateway");
const TOKEN: &str = "cli-admin-token-0123456";

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2").join(p)
}

fn run(gw_url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--url", gw_url, "--retry-delay", "0"])
        .env_remove("DB_GATEWAY_URL")
        .env_remove("GATEWAY_TOKEN")
        .env_remove("PLATFORM_ID")
        .output()
        .expect("run the binary")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn url(gw: &Gateway) -> String {
    format!("http://{}", gw.addr)
}

fn drop_db(name: &str) {
    exec("postgres", &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
}

/// `DIR/postgresql` made of the fixture `base` plus `extra` files.
fn folder(tag: &str, base: &str, extra: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ssdb-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pg = dir.join("postgresql");
    copy(&fixture(base), &pg);
    for (rel, content) in extra {
        let p = pg.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    pg
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let o = run("http://127.0.0.1:9", &["deploy"]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(text(&o).1.contains("--platform is required"));
    let o = run("http://127.0.0.1:9", &["migrate", "--platform", "p", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run("http://127.0.0.1:9", &["deploy", "--platform", "p", "/nonexistent/folder"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("cannot pack"));
    let o = run("http://127.0.0.1:9", &["deploy", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o).0.contains("exit codes"));
}

#[test]
fn unreachable_gateway_exits_3_after_the_retries() {
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = fixture("tenant_db/postgresql");
    let o = run(
        &format!("http://127.0.0.1:{port}"),
        &["deploy", "--platform", "cli_gone", "--retries", "3", dir.to_str().unwrap()],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("attempt 1/3") && err.contains("attempt 2/3"), "{err}");
    assert!(err.contains("gave up after attempt 3/3"), "{err}");
}

#[test]
fn deploy_succeeds_then_a_broken_migration_exits_1() {
    drop_db("cli_one_main");
    let gw = start(&[]);
    let dir = fixture("tenant_db/postgresql");
    let o = run(&url(&gw), &["deploy", "--platform", "cli_one", dir.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("ready cli_one_main: created true, 1 migrations applied"), "{out}");
    // The same folder again changes nothing.
    let o = run(&url(&gw), &["deploy", "--platform", "cli_one", dir.to_str().unwrap()]);
    assert!(text(&o).0.contains("created false, 0 migrations applied, 0 functions changed"), "{:?}", text(&o));
    let broken = folder("broken", "tenant_db/postgresql", &[("migrations/002_broken.sql", "SELEC 1;")]);
    let o = run(&url(&gw), &["deploy", "--platform", "cli_one", broken.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(out.contains("deploy failed (HTTP 422): migration_failed"), "{out}");
    assert!(out.contains("002_broken.sql"), "{out}");
    drop_db("cli_one_main");
}

/// A v2 platform with databases t01..t03 of `tenant_db`, t02 prepared to fail version 2.
fn fleet(gw: &Gateway, platform: &str) {
    for t in ["t01", "t02", "t03"] {
        drop_db(&format!("{platform}_tenant_db_{t}"));
    }
    let r = post_json(gw.addr, "/platform/register", &format!(r#"{{"platform":"{platform}"}}"#));
    assert!(r.status == 201 || r.error_code() == "platform_already_exists", "{}", r.text());
    let dir = fixture("tenant_db/postgresql");
    let o = run(
        &url(gw),
        &["deploy", "--platform", platform, "--schema-name", "tenant_db", "--token", TOKEN, dir.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert!(text(&o).0.contains(&format!("stored {platform}/tenant_db version")));
    for t in ["t01", "t02", "t03"] {
        let body = format!(r#"{{"platform":"{platform}","schema_name":"tenant_db","database_id":"{t}"}}"#);
        let r = request(
            gw.addr,
            "POST",
            "/database/create",
            &[("Content-Type", "application/json"), ("Authorization", &format!("Bearer {TOKEN}"))],
            body.as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // Version 2 creates table tags; one that is already there makes t02 fail.
    exec(&format!("{platform}_tenant_db_t02"), "CREATE TABLE tags (x int)");
}

fn v2_folder(tag: &str) -> PathBuf {
    let extra: Vec<(String, String)> = ["migrations/002_tags.sql", "functions/version.sql"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read_to_string(fixture("tenant_db_v2").join(f)).unwrap()))
        .collect();
    let extra: Vec<(&str, &str)> = extra.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    folder(tag, "tenant_db/postgresql", &extra)
}

#[test]
fn fleet_migrate_prints_plain_lines_and_lists_failures_without_a_terminal() {
    let gw = start(&[("ADMIN_TOKEN", TOKEN)]);
    fleet(&gw, "cli_plain");
    let dir = v2_folder("plain");
    let o = run(
        &url(&gw),
        &["migrate", "--platform", "cli_plain", "--schema-name", "tenant_db", "--token", TOKEN, dir.to_str().unwrap()],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    for line in ["/3] cli_plain_tenant_db_t01 success (1 migrations", "/3] cli_plain_tenant_db_t02 failed"] {
        assert!(out.contains(line), "{line} missing in:\n{out}");
    }
    assert!(!out.contains('\r') && !out.contains("\x1b["), "no terminal control without a terminal: {out:?}");
    assert!(out.contains("completed_with_errors: 3 databases, 2 succeeded, 1 failed"), "{out}");
    let listed = out.split("failed databases:").nth(1).unwrap_or("");
    assert!(listed.contains("cli_plain_tenant_db_t02: migration_failed"), "{out}");
    for t in ["t01", "t02", "t03"] {
        drop_db(&format!("cli_plain_tenant_db_{t}"));
    }
}

#[test]
fn fleet_migrate_draws_a_progress_bar_on_a_terminal() {
    let Some(script) = tools::require("script", "bsdutils") else { return };
    let gw = start(&[("ADMIN_TOKEN", TOKEN)]);
    fleet(&gw, "cli_tty");
    exec("cli_tty_tenant_db_t02", "DROP TABLE tags");
    let dir = v2_folder("tty");
    let cmd = format!(
        "{BIN} migrate --url {} --retry-delay 0 --platform cli_tty --schema-name tenant_db --token {TOKEN} {}",
        url(&gw),
        dir.display()
    );
    // script(1) gives the command a pseudo-terminal; -e passes its exit status on.
    let o = Command::new(script).args(["-qec", &cmd, "/dev/null"]).output().unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("\r\x1b[2K["), "the bar is redrawn in place: {out:?}");
    assert!(out.contains("] 3/3"), "{out:?}");
    assert!(out.contains("[##############################] 3/3"), "a full bar at the end: {out:?}");
    assert!(out.contains("completed: 3 databases, 3 succeeded, 0 failed"), "{out:?}");
    for t in ["t01", "t02", "t03"] {
        drop_db(&format!("cli_tty_tenant_db_t{}", &t[1..]));
    }
}
