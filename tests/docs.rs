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
