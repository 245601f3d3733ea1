//! The Debian package, end to end: `scripts/test-package.sh` builds it from this test build's binary,
//! inspects it, installs, runs, upgrades, removes and purges it on this machine (as root with dpkg, as in
//! CI; elsewhere the script says SKIP and why).

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_stonescriptdb-gateway");

#[test]
fn the_debian_package_installs_runs_upgrades_and_purges() {
    if std::env::var_os("SKIP_PACKAGE_TEST").is_some() {
        println!("SKIPPED: SKIP_PACKAGE_TEST is set");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-package.sh");
    let out = Command::new("bash")
        .args([script, "--binary", BIN])
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/test-package.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stderr}");
    assert!(out.status.success(), "scripts/test-package.sh failed:\n{stderr}");
    if let Some(line) = stderr.lines().find(|l| l.contains("SKIP:")) {
        println!("SKIPPED: {line}");
    } else {
        assert!(stderr.contains("[test-package] package test passed"), "{stderr}");
        assert!(stderr.contains("ok: purge removed the user"), "{stderr}");
    }
}
