//! The README's quick start, run as a newcomer would run it: every command of its `console` block,
//! in order, from the repository root, against a gateway started here (on a free port instead of
//! 9000, on the cluster of `scripts/test.sh`); each printed answer must be the one the README shows,
//! except for times and run ids.

mod common;

use std::process::Command;

const README: &str = include_str!("../README.md");

/// (command, expected output lines) of the quick start's `console` block.
fn steps() -> Vec<(String, Vec<String>)> {
    let section = README.split("\n## Quick start\n").nth(1).expect("a Quick start section");
    let section = section.split("\n## ").next().unwrap();
    let block = section.split("```console\n").nth(1).expect("a console block").split("\n```").next().unwrap();
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.lines() {
        match line.strip_prefix("$ ") {
            Some(cmd) => steps.push((cmd.to_string(), Vec::new())),
            None if !line.trim().is_empty() => steps.last_mut().expect("output before a command").1.push(line.into()),
            None => {}
        }
    }
    steps
}

/// Times and run ids differ from run to run.
fn normalise(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let next = |r: &str| [r.find("\"execution_time_ms\":"), r.find("\"run_id\":\"")].into_iter().flatten().min();
    while let Some(i) = next(rest) {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        let key_end = tail.find(':').unwrap() + 1;
        out.push_str(&tail[..key_end]);
        out.push('…');
        let value = &tail[key_end..];
        let end =
            if let Some(v) = value.strip_prefix('"') { v.find('"').map(|e| e + 2) } else { value.find([',', '}']) };
        rest = &value[end.unwrap_or(value.len())..];
    }
    out.push_str(rest);
    out
}

fn drop_databases() {
    for db in ["todos_main", "todos_acme"] {
        common::db::exec("postgres", &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"));
    }
}

#[test]
fn the_readme_quick_start_prints_what_it_shows() {
    let steps = steps();
    assert!(steps.len() >= 6 && steps.len() <= 10, "the quick start has {} commands", steps.len());
    common::pg_env();
    drop_databases();
    let catalog = format!("cat_quickstart_{}", std::process::id());
    common::db::exec("postgres", &format!("DROP DATABASE IF EXISTS \"{catalog}\" WITH (FORCE)"));
    let g = common::start(&[("CATALOG_DB", catalog.as_str())]);
    let root = env!("CARGO_MANIFEST_DIR");
    let scratch = std::env::temp_dir().join(format!("ssdb-quickstart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    for (cmd, expected) in &steps {
        // The gateway of this test, and a scratch folder of its own instead of /tmp.
        let run =
            cmd.replace("localhost:9000", &g.addr.to_string()).replace("/tmp/", &format!("{}/", scratch.display()));
        let out = Command::new("bash").args(["-c", &run]).current_dir(root).output().expect("run bash");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "`{cmd}` failed: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
        let got: Vec<String> = stdout.lines().filter(|l| !l.trim().is_empty()).map(normalise).collect();
        let want: Vec<String> = expected.iter().map(|l| normalise(l)).collect();
        assert_eq!(got, want, "`{cmd}` printed something else than the README shows");
    }
    drop(g);
    drop_databases();
    common::db::exec("postgres", &format!("DROP DATABASE IF EXISTS \"{catalog}\" WITH (FORCE)"));
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn normalising_keeps_everything_but_times_and_run_ids() {
    assert_eq!(
        normalise(r#"{"a":1,"run_id":"run-1x","execution_time_ms":13.5,"b":"run_id"}"#),
        r#"{"a":1,"run_id":…,"execution_time_ms":…,"b":"run_id"}"#
    );
    assert_eq!(normalise(r#"{"execution_time_ms":2}"#), r#"{"execution_time_ms":…}"#);
}
