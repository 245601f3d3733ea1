//! The status page in a real headless browser (Debian's `chromium`): it loads with HTTP Basic
//! credentials, shows health, the platform's databases and a running fleet migration whose progress
//! the page sees move, logs nothing to the console (chromium's stderr) and counts no error of its own
//! (the DOM), and leaves a screenshot in
//! `target/test-artifacts/status.png`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::db::{eventually, exec};
use common::{multipart, post_json, request, start, tools};
use stonescriptdb_gateway::deploy::pack;

const TOKEN: &str = "status-page-token-0123";
const PLATFORM: &str = "sp_fleet";
const TENANTS: usize = 5;

fn auth() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}

fn upload(addr: std::net::SocketAddr, entries: &[pack::Entry]) {
    let tgz = pack::gzip(&pack::tar(entries).unwrap());
    let (ct, body) = multipart(&[("schema_name", b"tenant_db"), ("schema", &tgz)]);
    let a = auth();
    let r =
        request(addr, "POST", &format!("/platform/{PLATFORM}/schema"), &[("Content-Type", &ct), (a.0, &a.1)], &body);
    assert_eq!(r.status, 201, "{}", r.text());
}

/// Chromium with the flags a test run needs, its own profile, and `args`; returns (stdout, stderr).
fn chromium(bin: &Path, profile: &Path, args: &[&str]) -> (String, String) {
    let _ = std::fs::remove_dir_all(profile);
    std::fs::create_dir_all(profile).unwrap();
    let o = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium");
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Lines where the page logged to the console or failed to load something (chromium writes both as
/// `CONSOLE` lines with --enable-logging).
fn console_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

/// Every byte but ASCII letters and digits as `%XX`, for a data: URL.
fn percent(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// What follows the tag that holds `marker` (its content and everything after).
fn section<'a>(dom: &'a str, marker: &str) -> &'a str {
    let at = dom.find(marker).unwrap_or_else(|| panic!("no {marker} in:\n{dom}"));
    let rest = &dom[at..];
    &rest[rest.find('>').map_or(rest.len(), |i| i + 1)..]
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
    tag[start..].split('"').next()
}

#[test]
fn status_page_shows_a_fleet_migration_moving_in_headless_chromium() {
    let Some(bin) = tools::require("chromium", "chromium") else { return };
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    // The detector must see an error when there is one, or its silence below proves nothing.
    // Percent-encoded: chromium 148 loads nothing at all for a data: URL with a bare quote in it.
    let probe = format!("data:text/html,{}", percent("<script>console.error('probe-error')</script>"));
    let (_, err) = chromium(&bin, &work.join("probe"), &["--dump-dom", &probe]);
    assert!(console_lines(&err).iter().any(|l| l.contains("probe-error")), "console detector is blind:\n{err}");

    for t in 1..=TENANTS {
        exec("postgres", &format!("DROP DATABASE IF EXISTS \"{PLATFORM}_tenant_db_t{t}\" WITH (FORCE)"));
    }
    let gw = start(&[("ADMIN_TOKEN", TOKEN), ("DEPLOY_PARALLELISM", "1")]);
    // The page's own error count must see an error too: its HTML with a broken script added.
    let a = auth();
    let page = request(gw.addr, "GET", "/status", &[(a.0, &a.1)], b"");
    assert_eq!(page.status, 200);
    let broken = work.join("broken.html");
    let html = page.text().replace("</body>", "<script>noSuchFunction()</script></body>");
    std::fs::write(&broken, html).unwrap();
    let (dom, _) = chromium(&bin, &work.join("broken"), &["--dump-dom", &format!("file://{}", broken.display())]);
    assert!(dom.contains("data-page-errors=\"1\""), "the page's error count is blind:\n{dom}");

    let r = post_json(gw.addr, "/platform/register", &format!(r#"{{"platform":"{PLATFORM}"}}"#));
    assert!(r.status == 201 || r.error_code() == "platform_already_exists", "{}", r.text());
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2/tenant_db/postgresql");
    let mut entries = pack::read_folder(&fixture).unwrap();
    upload(gw.addr, &entries);
    for t in 1..=TENANTS {
        let body = format!(r#"{{"platform":"{PLATFORM}","schema_name":"tenant_db","database_id":"t{t}"}}"#);
        let a = auth();
        let r = request(
            gw.addr,
            "POST",
            "/database/create",
            &[("Content-Type", "application/json"), (a.0, &a.1)],
            body.as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // Traffic for the errors panel and the functions table: three calls of a real function, two of a
    // missing one.
    let call = |function: &str| {
        let body =
            format!(r#"{{"platform":"{PLATFORM}","tenant_id":"tenant_db_t1","function":"{function}","params":[]}}"#);
        post_json(gw.addr, "/call", &body)
    };
    for _ in 0..3 {
        assert_eq!(call("note_count").status, 200);
    }
    for _ in 0..2 {
        assert_eq!(call("no_such_function").error_code(), "function_not_found");
    }

    // Version 2: a migration that takes 0.6 s per database, one database at a time.
    entries.push(pack::Entry {
        path: "postgresql/migrations/002_slow.sql".into(),
        data: b"SELECT pg_sleep(0.6);".to_vec(),
    });
    upload(gw.addr, &entries);
    let a = auth();
    let r = request(
        gw.addr,
        "POST",
        "/v2/migrate",
        &[("Content-Type", "application/json"), (a.0, &a.1)],
        format!(r#"{{"platform":"{PLATFORM}","schema_name":"tenant_db","async":true}}"#).as_bytes(),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let run_id = r.json().get("run_id").and_then(|v| v.as_str()).unwrap().to_string();

    // Virtual time stands still while the page's fetches are under way, so 60 virtual seconds of
    // polling take a few real ones: the run moves on while the page watches it.
    let url = format!("http://ops:{TOKEN}@{}/status", gw.addr);
    let (dom, err) = chromium(&bin, &work.join("watch"), &["--virtual-time-budget=60000", "--dump-dom", &url]);
    assert!(console_lines(&err).is_empty(), "console output:\n{}", console_lines(&err).join("\n"));
    // The page's own count of what went wrong in it, read from the DOM: this holds even where a
    // chromium build logs nothing to stderr.
    assert!(dom.contains("<html") && !dom.contains("data-page-errors=\""), "the page saw errors:\n{dom}");
    assert!(dom.contains(r#"id="health" class="pill ok">healthy<"#), "{dom}");
    assert!(dom.contains(r#"id="pg" class="pill ok">reachable<"#), "{dom}");
    for t in 1..=TENANTS {
        assert!(dom.contains(&format!("{PLATFORM}_tenant_db_t{t}")), "database t{t} not listed:\n{dom}");
    }
    // The errors panel: by code and by platform, in the last minute and since the start.
    for when in ["minute", "start"] {
        let code = section(&dom, &format!("id=\"err-code-{when}\""));
        assert!(code.starts_with(r#"<tr data-code="function_not_found"><td><code>function_not_found</code></td><td class="num bad-n">2</td>"#), "{code}");
        let platform = section(&dom, &format!("id=\"err-platform-{when}\""));
        assert!(platform.starts_with(&format!(r#"<tr data-platform="{PLATFORM}"><td>{PLATFORM}</td><td class="num bad-n">2</td><td><code>function_not_found</code>"#)), "{platform}");
    }
    assert!(dom.contains(r#"id="err-minute" class="bad-n">2<"#), "{dom}");
    // The headline is the minute's: 5 calls, at least one per second's worth, never a blank.
    assert!(!section(&dom, r#"id="rps""#).starts_with('–'), "{dom}");
    assert!(!section(&dom, r#"id="p99""#).starts_with('–'), "{dom}");
    // The functions table names the function that ran, not the missing one.
    let fns = section(&dom, r#"id="fn-rows""#);
    assert!(fns.starts_with(&format!(r#"<tr data-function="{PLATFORM}/note_count"><td>{PLATFORM}</td><td><code>note_count</code></td><td class="num">3</td><td class="num">0</td>"#)), "{fns}");
    assert!(!fns.contains("no_such_function"), "{fns}");
    // The sparklines' axes carry values: a top figure and how far back they reach.
    for chart in ["rps", "lat"] {
        let top = section(&dom, &format!("id=\"spark-{chart}-max\""));
        assert!(top.starts_with(|c: char| c.is_ascii_digit()), "{chart}: {top}");
        let from = section(&dom, &format!("id=\"spark-{chart}-from\""));
        assert!(
            from.split_once(" s ago").is_some_and(|(n, _)| n.parse::<u64>().is_ok_and(|n| n > 0)),
            "{chart}: {from}"
        );
    }

    let tag = dom
        .split("<div class=\"run\"")
        .skip(1)
        .find(|t| t.contains(&format!("data-run=\"{run_id}\"")))
        .unwrap_or_else(|| panic!("run {run_id} not shown:\n{dom}"));
    let seen: Vec<usize> = attr(tag, "data-seen").unwrap().split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert!(seen.len() >= 2, "the page saw no progress ({seen:?}) of run {run_id}:\n{tag}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "progress only moves forward: {seen:?}");
    assert!(seen[0] < TENANTS, "the page saw the run while it was running: {seen:?}");
    assert_eq!(attr(tag, "data-total"), Some(TENANTS.to_string().as_str()));

    // Once the run is over: a screenshot of the whole page, kept as a test artifact.
    assert!(eventually(Duration::from_secs(30), || {
        let r = request(gw.addr, "GET", &format!("/runs/{run_id}"), &[(a.0, &a.1)], b"");
        r.json().get("status").and_then(|v| v.as_str()) != Some("running")
    }));
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status.png");
    let _ = std::fs::remove_file(&shot);
    let (_, err) = chromium(
        &bin,
        &work.join("shot"),
        &["--window-size=1280,1000", "--virtual-time-budget=4000", &format!("--screenshot={}", shot.display()), &url],
    );
    assert!(console_lines(&err).is_empty(), "console output:\n{}", console_lines(&err).join("\n"));
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {} ({e}):\n{err}", shot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "not a real screenshot");
    for t in 1..=TENANTS {
        exec("postgres", &format!("DROP DATABASE IF EXISTS \"{PLATFORM}_tenant_db_t{t}\" WITH (FORCE)"));
    }
}

/// A failed run is shown red, and its details (each failed database with step, file, line and
/// message) open on the page; `/status#run=ID` opens them at once, which is how this test looks.
#[test]
fn status_page_opens_a_failed_runs_details() {
    let Some(bin) = tools::require("chromium", "chromium") else { return };
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page-run");
    let platform = "sp_failed_run";
    exec("postgres", &format!("DROP DATABASE IF EXISTS \"{platform}_main\" WITH (FORCE)"));
    let gw = start(&[("ADMIN_TOKEN", TOKEN)]);
    let entries = vec![pack::Entry {
        path: "postgresql/migrations/001_bad.sql".into(),
        data: b"SELECT 1;\nSELECT 1/0;\n".to_vec(),
    }];
    let tgz = pack::gzip(&pack::tar(&entries).unwrap());
    let (ct, body) = multipart(&[("platform", platform.as_bytes()), ("schema", &tgz)]);
    let r = request(gw.addr, "POST", "/register", &[("Content-Type", &ct)], &body);
    assert_eq!(r.status, 422, "{}", r.text());
    let a = auth();
    let data = request(gw.addr, "GET", "/status/data", &[(a.0, &a.1)], b"").json();
    let run = data
        .get("runs")
        .and_then(|v| v.as_array())
        .and_then(|runs| runs.iter().find(|r| r.get("platform").and_then(|p| p.as_str()) == Some(platform)))
        .and_then(|r| r.get("run_id"))
        .and_then(|v| v.as_str())
        .expect("the failed run is listed")
        .to_string();
    let url = format!("http://ops:{TOKEN}@{}/status#run={run}", gw.addr);
    let (dom, err) = chromium(&bin, &work, &["--virtual-time-budget=5000", "--dump-dom", &url]);
    assert!(console_lines(&err).is_empty(), "console output:\n{}", console_lines(&err).join("\n"));
    let tag = dom
        .split("<div class=\"run failed\"")
        .skip(1)
        .find(|t| t.contains(&format!("data-run=\"{run}\"")))
        .unwrap_or_else(|| panic!("run {run} is not shown as failed:\n{dom}"));
    assert_eq!(attr(tag, "data-status"), Some("failed"));
    let detail = tag.split("class=\"detail\"").nth(1).unwrap_or_else(|| panic!("no details open:\n{tag}"));
    for part in [&format!("{platform}_main"), "migrations/001_bad.sql", "line 2", "division by zero"] {
        assert!(detail.contains(part), "details lack {part}:\n{detail}");
    }
}
