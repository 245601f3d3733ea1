//! Integration tests of the PostgreSQL wire client against a real throwaway cluster
//! (set up by `scripts/test.sh`: roles ssdb_trust/ssdb_md5/ssdb_scram/ssdb_clear, database ssdb_test).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use stonescriptdb_gateway::pg::blocking::Client;
use stonescriptdb_gateway::pg::dberror::PgError;
use stonescriptdb_gateway::pg::params::{ConnectParams, Host};

/// Where the test cluster listens, from the environment `scripts/test.sh` sets.
struct Env {
    /// Unix socket directory.
    socket_dir: PathBuf,
    /// Address for the TCP variants.
    tcp_host: String,
    /// Port (TCP and socket file name).
    port: u16,
    /// Superuser role.
    superuser: String,
}

fn env() -> Env {
    let port = std::env::var("TEST_PG_PORT").unwrap_or_else(|_| {
        panic!(
            "TEST_PG_PORT is not set: these tests need a real PostgreSQL cluster; \
             run them through scripts/test.sh"
        )
    });
    Env {
        socket_dir: std::env::var("TEST_PG_HOST")
            .expect("TEST_PG_HOST (Unix socket directory) is not set; run scripts/test.sh")
            .into(),
        tcp_host: std::env::var("TEST_PG_TCP_HOST").unwrap_or_else(|_| "127.0.0.1".into()),
        port: port.parse().expect("TEST_PG_PORT is not a port number"),
        superuser: std::env::var("TEST_PG_SUPERUSER").unwrap_or_else(|_| "postgres".into()),
    }
}

fn params(user: &str, password: Option<&str>, tcp: bool) -> ConnectParams {
    let e = env();
    ConnectParams {
        host: if tcp { Host::Tcp(e.tcp_host) } else { Host::Unix(e.socket_dir) },
        port: e.port,
        user: user.to_string(),
        password: password.map(str::to_string),
        dbname: "ssdb_test".to_string(),
        application_name: "pg_wire_test".to_string(),
        connect_timeout: Duration::from_secs(5),
        options: None,
    }
}

fn superuser() -> Client {
    let e = env();
    Client::connect(&params(&e.superuser, None, false)).expect("superuser connect")
}

fn one(c: &mut Client, sql: &str) -> Option<String> {
    let rows = c.simple_query(sql).unwrap();
    assert_eq!(rows.len(), 1, "{sql}");
    rows[0][0].clone()
}

const LOGINS: [(&str, Option<&str>); 4] = [
    ("ssdb_trust", None),
    ("ssdb_clear", Some("clear_secret")),
    ("ssdb_md5", Some("md5_secret")),
    ("ssdb_scram", Some("scram_secret")),
];

#[test]
fn logins_over_tcp_and_unix_socket() {
    for tcp in [true, false] {
        for (user, pw) in LOGINS {
            let mut c = Client::connect(&params(user, pw, tcp)).unwrap_or_else(|e| panic!("{user} tcp={tcp}: {e}"));
            assert_eq!(one(&mut c, "SELECT current_user").as_deref(), Some(user));
            assert_eq!(c.transaction_status(), b'I');
            assert!(c.session().server_version_num >= 90600);
            assert!(c.session().process_id != 0);
            assert_eq!(c.parameter("client_encoding"), Some("UTF8"));
            assert_eq!(c.parameter("application_name"), Some("pg_wire_test"));
            c.close();
        }
    }
}

#[test]
fn session_settings_from_startup() {
    let mut c = superuser();
    assert_eq!(one(&mut c, "SHOW TimeZone").as_deref(), Some("UTC"));
    assert_eq!(one(&mut c, "SHOW DateStyle").as_deref(), Some("ISO, MDY"));
    assert_eq!(one(&mut c, "SHOW extra_float_digits").as_deref(), Some("3"));
    assert_eq!(one(&mut c, "SHOW IntervalStyle").as_deref(), Some("postgres"));
}

/// What a deploy session learns of itself in its first round trip: its pid and start time as
/// `pg_stat_activity` lists them, and its database's OID, after the setup statements ran.
#[test]
fn own_backend_names_the_session_and_its_database() {
    let mut c = Client::connect(&params("ssdb_trust", None, false)).expect("connect");
    let (b, oid) = stonescriptdb_gateway::pg::terminate::own_backend_after(&mut c, "SET statement_timeout = 1234;")
        .expect("own backend");
    assert_eq!(b.pid, c.session().process_id);
    assert_eq!(one(&mut c, "SHOW statement_timeout").as_deref(), Some("1234ms"), "the setup ran");
    let mut su = superuser();
    let listed =
        format!("SELECT backend_start::text FROM pg_stat_activity WHERE pid = {} AND datname = 'ssdb_test'", b.pid);
    assert_eq!(one(&mut su, &listed), Some(b.started.clone()));
    assert_eq!(one(&mut su, "SELECT oid::text FROM pg_database WHERE datname = 'ssdb_test'"), Some(oid));
}

#[test]
fn wrong_or_missing_password() {
    for tcp in [true, false] {
        for (user, _) in &LOGINS[1..] {
            match Client::connect(&params(user, Some("wrong"), tcp)) {
                Err(e) => assert_eq!(e.sqlstate(), Some("28P01"), "{user} tcp={tcp}: {e}"),
                Ok(_) => panic!("{user} logged in with a wrong password"),
            }
            match Client::connect(&params(user, None, tcp)) {
                Err(PgError::Auth(m)) => assert_eq!(m, "password required"),
                Err(e) => panic!("{user}: {e}"),
                Ok(_) => panic!("{user} logged in without a password"),
            }
        }
    }
}

#[test]
fn batch_execute_runs_every_statement() {
    let mut c = superuser();
    c.batch_execute(
        "CREATE TEMP TABLE b (x int);
         INSERT INTO b VALUES (1);
         INSERT INTO b VALUES (2), (3);
         UPDATE b SET x = x * 10 WHERE x > 1;",
    )
    .unwrap();
    assert_eq!(one(&mut c, "SELECT sum(x) FROM b").as_deref(), Some("51"));
    c.batch_execute("").unwrap();
    assert_eq!(
        c.simple_query("SELECT 1; SELECT 2 UNION ALL SELECT NULL").unwrap(),
        vec![vec![Some("2".to_string())], vec![None]]
    );
}

#[test]
fn error_mid_batch_leaves_client_usable() {
    let mut c = superuser();
    let err = c.batch_execute("CREATE TEMP TABLE e (x int); SELECT 1/0; INSERT INTO e VALUES (1)").unwrap_err();
    assert_eq!(err.sqlstate(), Some("22012"));
    assert!(!c.is_broken());
    assert_eq!(c.transaction_status(), b'I');
    assert_eq!(one(&mut c, "SELECT 'still here'").as_deref(), Some("still here"));
    // The multi-statement string was one implicit transaction, so the table is gone too.
    let err = c.query("SELECT * FROM e", &[]).unwrap_err();
    assert_eq!(err.sqlstate(), Some("42P01"));

    c.batch_execute("BEGIN").unwrap();
    assert_eq!(c.transaction_status(), b'T');
    assert!(c.batch_execute("SELECT no_such_column").is_err());
    assert_eq!(c.transaction_status(), b'E');
    c.batch_execute("ROLLBACK").unwrap();
    assert_eq!(c.transaction_status(), b'I');
}

#[test]
fn extended_query_with_null_params_and_text_results() {
    let mut c = superuser();
    let r = c
        .query(
            "SELECT $1::text AS t, $2::int + 1 AS n, $3::text IS NULL AS isnull, $3::text AS nothing",
            &[Some("héllo ☃"), Some("41"), None],
        )
        .unwrap();
    assert_eq!(
        r.columns,
        vec![("t".to_string(), 25), ("n".to_string(), 23), ("isnull".to_string(), 16), ("nothing".to_string(), 25)]
    );
    assert_eq!(r.rows, vec![vec![Some("héllo ☃".to_string()), Some("42".to_string()), Some("t".to_string()), None]]);
    assert_eq!(r.rows_affected, 1);

    c.batch_execute("CREATE TEMP TABLE q (x int)").unwrap();
    let r = c.query("INSERT INTO q SELECT generate_series(1, $1::int)", &[Some("5")]).unwrap();
    assert_eq!(r.rows_affected, 5);
    assert!(r.columns.is_empty() && r.rows.is_empty());
    let r = c.query("DELETE FROM q WHERE x > $1", &[Some("3")]).unwrap();
    assert_eq!(r.rows_affected, 2);
    assert_eq!(
        c.query_one_opt("SELECT x FROM q WHERE x = $1", &[Some("2")]).unwrap(),
        Some(vec![Some("2".to_string())])
    );
    assert_eq!(c.query_one_opt("SELECT x FROM q WHERE x = 99", &[]).unwrap(), None);

    let err = c.query("SELECT $1::int", &[Some("not a number")]).unwrap_err();
    assert_eq!(err.sqlstate(), Some("22P02"));
    assert_eq!(c.transaction_status(), b'I');
    let err = c.query("SELEC 1", &[]).unwrap_err();
    assert_eq!(err.sqlstate(), Some("42601"));
    match &err {
        PgError::Db(e) => assert_eq!(e.position, Some(1)),
        other => panic!("{other}"),
    }
    assert_eq!(c.query("SELECT 7", &[]).unwrap().rows[0][0].as_deref(), Some("7"));
}

#[test]
fn notices_and_notifications_between_messages() {
    let mut c = superuser();
    c.batch_execute("DO $$ BEGIN RAISE NOTICE 'note %', 1; RAISE WARNING 'careful'; END $$").unwrap();
    let notices = c.notices();
    assert_eq!(notices.len(), 2);
    assert_eq!(notices[0].message, "note 1");
    assert_eq!(notices[0].severity, "NOTICE");
    assert_eq!(notices[1].severity, "WARNING");
    assert!(c.notices().is_empty());

    c.batch_execute("LISTEN ssdb_chan").unwrap();
    c.batch_execute("NOTIFY ssdb_chan, 'hello'").unwrap();
    let r = c.query("SELECT pg_notify('ssdb_chan', $1), 5 AS five", &[Some("again")]).unwrap();
    assert_eq!(r.rows[0][1].as_deref(), Some("5"));
    let n = c.notifications();
    assert_eq!(n.len(), 2);
    assert_eq!(n[0].channel, "ssdb_chan");
    assert_eq!(n[0].payload, "hello");
    assert_eq!(n[1].payload, "again");
    assert_eq!(n[0].process_id, c.session().process_id);

    // A ParameterStatus arrives mid-response and must be absorbed too.
    c.batch_execute("SET application_name = 'renamed'").unwrap();
    assert_eq!(c.parameter("application_name"), Some("renamed"));
    assert_eq!(one(&mut c, "SELECT 1").as_deref(), Some("1"));
}

#[test]
fn cancel_from_another_thread() {
    for tcp in [true, false] {
        let mut c = Client::connect(&params("ssdb_trust", None, tcp)).unwrap();
        let token = c.cancel_token();
        let started = Instant::now();
        let worker = std::thread::spawn(move || {
            let r = c.query("SELECT pg_sleep(10)", &[]);
            (c, r)
        });
        std::thread::sleep(Duration::from_millis(300));
        token.cancel().unwrap();
        let (mut c, r) = worker.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(r.unwrap_err().sqlstate(), Some("57014"));
        assert!(!c.is_broken());
        assert_eq!(c.transaction_status(), b'I');
        assert_eq!(one(&mut c, "SELECT 'reusable'").as_deref(), Some("reusable"));
    }
}

#[test]
fn read_timeout_breaks_the_client() {
    let mut c = superuser();
    c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let token = c.cancel_token();
    match c.batch_execute("SELECT pg_sleep(3)") {
        Err(PgError::Io(_)) => {}
        other => panic!("{other:?}"),
    }
    assert!(c.is_broken());
    assert!(matches!(c.simple_query("SELECT 1"), Err(PgError::Closed)));
    token.cancel().unwrap();
}

#[test]
fn fatal_error_breaks_the_client() {
    let mut victim = superuser();
    let pid = victim.session().process_id.to_string();
    let mut admin = superuser();
    admin.query("SELECT pg_terminate_backend($1::int)", &[Some(&pid)]).unwrap();
    let err = victim.simple_query("SELECT 1").unwrap_err();
    assert!(victim.is_broken(), "{err}");
}

/// The salt and iteration count of a role's SCRAM verifier (`SCRAM-SHA-256$<i>:<salt>$<keys>`).
fn verifier_salt(role: &str) -> (Vec<u8>, u32) {
    let v = one(&mut superuser(), &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")).unwrap();
    let (head, _) = v.strip_prefix("SCRAM-SHA-256$").expect(&v).split_once('$').unwrap();
    let (i, salt) = head.split_once(':').unwrap();
    (stonescriptdb_gateway::security::base64::decode(salt).unwrap(), i.parse().unwrap())
}

/// A SCRAM login leaves the keys its verifier's salt gives remembered; a new verifier (same password,
/// new salt) is a different entry, so the next login derives again and still gets in.
#[test]
fn scram_logins_remember_keys_per_verifier() {
    use stonescriptdb_gateway::pg::scram::remembers;
    let (salt, i) = verifier_salt("ssdb_scram");
    for tcp in [true, false] {
        let mut c = Client::connect(&params("ssdb_scram", Some("scram_secret"), tcp)).expect("scram login");
        assert_eq!(one(&mut c, "SELECT current_user").as_deref(), Some("ssdb_scram"));
        c.close();
        assert!(remembers("scram_secret", &salt, i));
    }
    superuser()
        .simple_query("SET password_encryption = 'scram-sha-256'; ALTER ROLE ssdb_scram PASSWORD 'scram_secret'")
        .unwrap();
    let (salt2, i2) = verifier_salt("ssdb_scram");
    assert_ne!(salt, salt2, "a new verifier has a new salt");
    assert!(!remembers("scram_secret", &salt2, i2));
    let mut c = Client::connect(&params("ssdb_scram", Some("scram_secret"), true)).expect("login after a new verifier");
    assert_eq!(one(&mut c, "SELECT current_user").as_deref(), Some("ssdb_scram"));
    c.close();
    assert!(remembers("scram_secret", &salt2, i2));
    // Remembered keys of the right password do not let a wrong one in.
    match Client::connect(&params("ssdb_scram", Some("not the secret"), true)) {
        Err(e) => assert_eq!(e.sqlstate(), Some("28P01"), "{e}"),
        Ok(_) => panic!("a wrong password logged in"),
    }
}

/// SCRAM passwords that are not plain: one SASLprep normalises (non-ASCII, goes through the library's
/// exchange, and its NFKC twin logs in too) and one SASLprep refuses (a control character; PostgreSQL
/// then takes the bytes as they are, and so does our exchange for ASCII).
#[test]
fn scram_logins_with_passwords_saslprep_changes_or_refuses() {
    for tcp in [true, false] {
        for (user, pw) in
            [("ssdb_scram_uni", "pässwörd Ⅸ"), ("ssdb_scram_uni", "pässwörd IX"), ("ssdb_scram_ctl", "ctl\tpw")]
        {
            let mut c = Client::connect(&params(user, Some(pw), tcp)).unwrap_or_else(|e| panic!("{user} {pw:?}: {e}"));
            assert_eq!(one(&mut c, "SELECT current_user").as_deref(), Some(user));
            c.close();
        }
        for (user, pw) in [("ssdb_scram_uni", "passwoerd IX"), ("ssdb_scram_ctl", "ctl pw")] {
            match Client::connect(&params(user, Some(pw), tcp)) {
                Err(e) => assert_eq!(e.sqlstate(), Some("28P01"), "{user} {pw:?}: {e}"),
                Ok(_) => panic!("{user} logged in with {pw:?}"),
            }
        }
    }
}
