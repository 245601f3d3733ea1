//! A private throwaway PostgreSQL cluster for tests that stop and start the server, so the shared
//! cluster of `scripts/test.sh` (and every test running against it) is never disturbed. Built with the
//! same shell library the scripts use (`scripts/lib/pg-cluster.sh`: initdb as the `postgres` OS user
//! when running as root, loopback TCP + its own socket directory, the ssdb_* test roles).

use std::path::PathBuf;
use std::process::Command;

use stonescriptdb_gateway::pg::blocking::Client;
use stonescriptdb_gateway::pg::params::ConnectParams;

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    bindir: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `script` in bash with the cluster library loaded; returns stdout, panics with stderr.
fn lib_sh(bindir: &str, script: &str) -> String {
    let lib = root().join("scripts/lib/pg-cluster.sh");
    let full = format!("set -euo pipefail\nsource '{}'\nPG_BINDIR='{bindir}'\n{script}", lib.display());
    let out = Command::new("bash").arg("-c").arg(&full).output().expect("run bash");
    assert!(
        out.status.success(),
        "cluster script failed ({}):\n{script}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Cluster {
    /// initdb + start on a free port + test roles. Needs TEST_PG_BINDIR (set by scripts/test.sh).
    pub fn new() -> Cluster {
        let bindir = std::env::var("TEST_PG_BINDIR")
            .expect("TEST_PG_BINDIR is not set: run the suite with scripts/test.sh (it finds the PostgreSQL binaries)");
        let out = lib_sh(
            &bindir,
            r#"dir="$(mktemp -d /tmp/ssdb-own-pg.XXXXXX)"
pg_cluster_init "$dir" test
port="$(pg_cluster_start_free "$dir")"
pg_test_roles "$dir" "$port"
printf '%s %s\n' "$dir" "$port""#,
        );
        Cluster::from_output(&out, bindir)
    }

    /// A streaming replica of this cluster (`pg_basebackup -R`), started on its own port and socket
    /// directory, listening on 127.0.0.1 like its primary; returns once it accepts connections.
    pub fn replica(&self) -> Cluster {
        let script = format!(
            r#"dir="$(mktemp -d /tmp/ssdb-replica.XXXXXX)"
pg_replica_init '{}' {} "$dir"
port="$(pg_cluster_start_free "$dir")"
printf '%s %s\n' "$dir" "$port""#,
            self.dir.display(),
            self.port
        );
        Cluster::from_output(&lib_sh(&self.bindir, &script), self.bindir.clone())
    }

    /// The cluster a script described with its last line, `DIR PORT`.
    fn from_output(out: &str, bindir: String) -> Cluster {
        let mut it = out.lines().last().unwrap_or("").split_whitespace();
        let dir = PathBuf::from(it.next().expect("cluster dir"));
        let port = it.next().expect("cluster port").parse().expect("port number");
        Cluster { dir, port, bindir }
    }

    pub fn socket_dir(&self) -> String {
        self.dir.join("socket").display().to_string()
    }

    /// Fast shutdown; returns when the server is gone.
    pub fn stop(&self) {
        lib_sh(&self.bindir, &format!("pg_cluster_stop '{}'", self.dir.display()));
    }

    /// Starts again on the same port; returns when it accepts connections.
    pub fn start(&self) {
        lib_sh(&self.bindir, &format!("pg_cluster_start '{}' {}", self.dir.display(), self.port));
    }

    /// Fast shutdown, then started again on the same port at once (a restart of the service);
    /// returns when it accepts connections again.
    pub fn restart(&self) {
        lib_sh(
            &self.bindir,
            &format!("pg_cluster_stop '{0}'\npg_cluster_start '{0}' {1}", self.dir.display(), self.port),
        );
    }

    /// Superuser connection parameters for `dbname` over the socket.
    pub fn su_params(&self, dbname: &str) -> ConnectParams {
        let url = format!("postgres://postgres@localhost:{}/{dbname}?host={}", self.port, self.socket_dir());
        ConnectParams::from_url(&url).expect("cluster params")
    }

    /// A superuser client on `dbname` over the socket.
    pub fn su(&self, dbname: &str) -> Client {
        Client::connect(&self.su_params(dbname)).unwrap_or_else(|e| panic!("connect to own cluster {dbname}: {e}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = format!("pg_cluster_stop '{0}' || true\nrm -rf -- '{0}'", self.dir.display());
        let lib = root().join("scripts/lib/pg-cluster.sh");
        let full = format!("source '{}'\nPG_BINDIR='{}'\n{script}", lib.display(), self.bindir);
        let _ = Command::new("bash").arg("-c").arg(&full).output();
    }
}
