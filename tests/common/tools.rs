//! External programs some tests need (promtool, chromium, script). `scripts/test.sh` installs them
//! when it can; a test without one skips with the reason, except under `CI=true`, where it fails.

use std::path::PathBuf;

/// The program's path, or `None` after saying why the test skips. Panics under `CI=true`.
pub fn require(program: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file()));
    if found.is_none() {
        let msg =
            format!("{program} not found (Debian package {package}; scripts/test.sh installs it when run as root)");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}; CI=true needs it");
        }
        eprintln!("SKIPPED: {msg}");
    }
    found
}
