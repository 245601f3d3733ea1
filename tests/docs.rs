//! The documentation stays true to the code: the README lists every error code and configuration key,
//! and `scripts/.env.example` documents every key.

use stonescriptdb_gateway::config::keys::KEYS;
use stonescriptdb_gateway::error::Kind;

fn read(path: &str) -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_string() + path)
        .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

#[test]
fn readme_lists_every_error_code_with_its_status() {
    let readme = read("README.md");
    for k in Kind::ALL {
        let row = format!("| `{}` | {} |", k.code(), k.status());
        assert!(readme.contains(&row), "README.md error table lacks {row}");
    }
}

#[test]
fn readme_and_env_example_list_every_key() {
    let readme = read("README.md");
    let example = read("scripts/.env.example");
    for k in KEYS {
        assert!(readme.contains(&format!("| `{}` |", k.name)), "README.md lacks key {}", k.name);
        assert!(example.contains(&format!("# {}=", k.name)), "scripts/.env.example lacks key {}", k.name);
    }
}

#[test]
fn readme_shows_the_two_commands() {
    let readme = read("README.md");
    assert!(readme.contains("scripts/run.sh") && readme.contains("scripts/test.sh"));
    let ci = read(".ci/run");
    assert!(ci.contains("scripts/test.sh"), ".ci/run must call the README's test command");
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    let t = heading.trim_start_matches('#').trim().to_lowercase();
    t.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .collect::<String>()
        .replace(' ', "-")
}

#[test]
fn readme_contents_links_every_section() {
    let readme = read("README.md");
    let contents = readme.split("\n## Contents\n").nth(1).expect("a Contents section").split("\n## ").next().unwrap();
    let quick = readme.find("\n## Quick start\n").expect("a Quick start section");
    assert!(quick < readme.find("\n## Contents\n").unwrap(), "Contents comes right after the quick start");
    let headings: Vec<&str> = readme.lines().filter(|l| l.starts_with("## ") || l.starts_with("### ")).collect();
    for h in &headings {
        if h.starts_with("## ") && !matches!(*h, "## Quick start" | "## Contents") {
            assert!(contents.contains(&format!("](#{})", anchor(h))), "Contents lacks {h}");
        }
    }
    // Every link in it leads somewhere.
    for link in contents.split("](#").skip(1).map(|s| s.split(')').next().unwrap()) {
        assert!(headings.iter().any(|h| anchor(h) == link), "Contents links to #{link}, which is no heading");
    }
}
