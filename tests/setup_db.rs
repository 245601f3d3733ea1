//! `stonescriptdb-gateway setup-db` against the test cluster: it makes the least-rights login from
//! `scripts/gateway-login.sql`, gives it a password once, keeps it on the next run, puts back rights
//! someone changed, prints the env and `pg_hba.conf` lines, and refuses to run as a non-superuser.

use std::process::{Command, Output, Stdio};

use stonescriptdb_gateway::pg::blocking::Client;
use stonescriptdb_gateway::pg::params::ConnectParams;

const BIN: &str = env!("CARGO_BIN_EXE_stonescriptdb-gateway");

fn pg() -> (String, String) {
    let port = std::env::var("TEST_PG_PORT").expect("TEST_PG_PORT is not set: run scripts/test.sh");
    (std::env::var("TEST_PG_HOST").expect("TEST_PG_HOST"), port)
}

fn su() -> Client {
    let (host, port) = pg();
    let p = ConnectParams::from_url(&format!("postgres://postgres@localhost:{port}/postgres?host={host}")).unwrap();
    Client::connect(&p).expect("superuser connection")
}

fn one(sql: &str, login: &str) -> Option<String> {
    su().query_one_opt(sql, &[Some(login)]).unwrap().and_then(|r| r.into_iter().next().flatten())
}

/// Runs `setup-db` as `superuser` over the cluster's socket; the gateway itself would connect by TCP.
fn setup_db(superuser: &str, login: &str, extra: &[&str]) -> Output {
    let (host, port) = pg();
    let dir = std::env::temp_dir().join(format!("ssdb-setup-db-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(BIN)
        .env_clear()
        .current_dir(&dir)
        .args(["setup-db", "--superuser", superuser, "--host", &host, "--port", &port, "--login", login])
        .args(["--db-host", "127.0.0.1", "--db-port", &port])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run setup-db");
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

struct DropRole(String);

impl Drop for DropRole {
    fn drop(&mut self) {
        let _ = su().batch_execute(&format!("DROP ROLE IF EXISTS {}", self.0));
    }
}

const RIGHTS: &str = "SELECT concat_ws(',', rolcanlogin, rolcreatedb, rolcreaterole, rolsuper, rolreplication, \
                      rolbypassrls) FROM pg_roles WHERE rolname = $1";

#[test]
fn setup_db_makes_the_least_rights_login_once_and_keeps_its_password() {
    let login = format!("gw_setup_{}", std::process::id());
    let _cleanup = DropRole(login.clone());

    let o = setup_db("postgres", &login, &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert_eq!(one(RIGHTS, &login).as_deref(), Some("t,t,t,f,f,f"), "{err}");
    assert!(out.contains(&format!("login {login} created")), "{out}");
    assert!(out.contains(&format!("\nDB_USER={login}\n")), "{out}");
    let password = out
        .lines()
        .find_map(|l| l.strip_prefix("DB_PASSWORD="))
        .unwrap_or_else(|| panic!("no DB_PASSWORD line: {out}"))
        .to_string();
    assert!(password.len() >= 32 && password.bytes().all(|b| b.is_ascii_hexdigit()), "{password}");
    let hba = format!("host    all  {login:<24} 127.0.0.1/32     scram-sha-256");
    assert!(out.contains(&hba), "no line {hba:?} in {out}");
    assert!(out.contains("host    all  all"), "{out}");
    // Everything but the two settings is a comment, so the output can be appended to the env file.
    for line in out.lines() {
        assert!(line.starts_with('#') || line.starts_with("DB_USER=") || line.starts_with("DB_PASSWORD="), "{line}");
    }
    // Only a SCRAM verifier reached the server, never the password.
    let verifier = one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &login).unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:") && !verifier.contains(&password), "{verifier}");
    // The test cluster trusts TCP logins, so this checks only that the login can log in.
    assert!(err.contains(&format!("{login} logs in at 127.0.0.1:")), "{err}");

    // Someone gave it too much; the next run takes it back and keeps the password.
    su().batch_execute(&format!("ALTER ROLE {login} SUPERUSER NOCREATEDB")).unwrap();
    let o = setup_db("postgres", &login, &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert_eq!(one(RIGHTS, &login).as_deref(), Some("t,t,t,f,f,f"));
    assert!(out.contains(&format!("login {login} updated")), "{out}");
    assert!(!out.contains("DB_PASSWORD=") && out.contains("# DB_PASSWORD unchanged"), "{out}");
    assert_eq!(one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &login).as_deref(), Some(&*verifier));

    // A predefined role granted by hand is named.
    su().batch_execute(&format!("GRANT pg_read_server_files TO {login}")).unwrap();
    let (out, err) = text(&setup_db("postgres", &login, &[]));
    assert!(out.contains("WARNING") && out.contains("pg_read_server_files"), "{out}");
    assert!(err.contains("REVOKE pg_read_server_files FROM"), "{err}");
    su().batch_execute(&format!("REVOKE pg_read_server_files FROM {login}")).unwrap();

    // --new-password rotates it.
    let o = setup_db("postgres", &login, &["--new-password"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let again = out.lines().find_map(|l| l.strip_prefix("DB_PASSWORD=")).expect("a new password");
    assert_ne!(again, password);
    assert_ne!(one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &login).unwrap(), verifier);
}

#[test]
fn setup_db_refuses_a_login_that_is_not_a_superuser() {
    let login = format!("gw_setup_ns_{}", std::process::id());
    let _cleanup = DropRole(login.clone());
    // ssdb_trust (made by scripts/test.sh) can log in and create databases, but is no superuser.
    let o = setup_db("ssdb_trust", &login, &[]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains("ssdb_trust is not a PostgreSQL superuser"), "{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(one("SELECT 'x' FROM pg_roles WHERE rolname = $1", &login), None);
}
