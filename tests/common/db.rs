//! Test databases on the throwaway cluster: create one per test (uniquely named), run setup SQL as
//! the superuser, look at `pg_stat_activity`, and drop it at the end.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stonescriptdb_gateway::catalog::{Catalog, Owner};
use stonescriptdb_gateway::json::Value;
use stonescriptdb_gateway::pg::blocking::Client;
use stonescriptdb_gateway::pg::params::ConnectParams;
use stonescriptdb_gateway::security::{random, roles};

use super::{Resp, pg_env, post_json};

/// Superuser connection parameters for `dbname` over the test cluster's Unix socket.
pub fn su_params(dbname: &str) -> ConnectParams {
    let (host, port, user) = pg_env();
    ConnectParams::from_url(&format!("postgres://{user}@localhost:{port}/{dbname}?host={host}"))
        .expect("test connect params")
}

/// A superuser client on `dbname`.
pub fn su(dbname: &str) -> Client {
    Client::connect(&su_params(dbname)).unwrap_or_else(|e| panic!("connect to {dbname} as superuser: {e}"))
}

/// Runs `sql` (one or more statements) as the superuser in `dbname`.
pub fn exec(dbname: &str, sql: &str) {
    let mut c = su(dbname);
    c.batch_execute(sql).unwrap_or_else(|e| panic!("setup SQL failed in {dbname}: {e}\n{sql}"));
}

/// First column of every row of `sql`, run as the superuser in `dbname`.
pub fn query_col(dbname: &str, sql: &str) -> Vec<Option<String>> {
    let mut c = su(dbname);
    c.simple_query(sql)
        .unwrap_or_else(|e| panic!("query failed in {dbname}: {e}\n{sql}"))
        .into_iter()
        .map(|mut r| if r.is_empty() { None } else { r.swap_remove(0) })
        .collect()
}

/// The catalog a gateway uses when a test does not name one.
pub const DEFAULT_CATALOG: &str = "stonescriptdb_gateway";

/// A database `{platform}_main` that lives as long as the value.
pub struct TestDb {
    pub platform: String,
    pub name: String,
    /// The platform's PostgreSQL role, which owns the database and what `setup` made.
    pub role: String,
}

/// Makes `name` a database of `platform` the way a deploy would: the platform's role (created by the
/// gateway's own code), the database owned by it and closed to PUBLIC, recorded in `catalog`.
pub fn provision(platform: &str, name: &str, owner: Owner, catalog: &str) -> String {
    provision_on(&su_params("postgres"), platform, name, owner, catalog)
}

/// [`provision`] on the server that `admin_params` (a superuser on database `postgres`) reaches.
pub fn provision_on(admin_params: &ConnectParams, platform: &str, name: &str, owner: Owner, catalog: &str) -> String {
    let role = roles::role_name("ssdb_", platform).expect("role name");
    let mut admin = Client::connect(admin_params).expect("superuser connection");
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).expect("drop old test database");
    roles::ensure_platform_role(&mut admin, platform, &role, &random::process_secret(), false)
        .unwrap_or_else(|e| panic!("platform role {role}: {e}"));
    roles::create_platform_database(&mut admin, name, &role, &["public".to_string()])
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    let mut cat = Catalog::open(admin_params, catalog).expect("catalog");
    cat.forget_database(name).expect("forget");
    cat.record_database(name, &owner).expect("record");
    cat.record_platform_role(platform, &role, false).expect("record role");
    role
}

/// The owner record of `{platform}_main`.
pub fn main_owner(platform: &str) -> Owner {
    Owner { platform: platform.to_string(), kind: "main".into(), tenant_id: None, schema_name: None, database_id: None }
}

impl TestDb {
    /// Creates `{platform}_main` afresh (recorded in the default catalog) and runs `setup` in it as the
    /// platform's role.
    pub fn new(platform: &str, setup: &str) -> TestDb {
        TestDb::in_catalog(platform, setup, DEFAULT_CATALOG)
    }

    /// Like [`TestDb::new`], first running `su_sql(role)` as the superuser (things a platform may not do
    /// itself, such as creating other roles).
    pub fn with_su(platform: &str, su_sql: impl Fn(&str) -> String, setup: &str) -> TestDb {
        let db = TestDb::in_catalog(platform, "", DEFAULT_CATALOG);
        db.exec(&su_sql(&db.role));
        if !setup.is_empty() {
            exec(&db.name, &format!("SET ROLE \"{}\";\n{setup}", db.role));
        }
        db
    }

    /// Like [`TestDb::new`], recorded in `catalog`.
    pub fn in_catalog(platform: &str, setup: &str, catalog: &str) -> TestDb {
        let name = format!("{platform}_main");
        let owner = Owner {
            platform: platform.to_string(),
            kind: "main".into(),
            tenant_id: None,
            schema_name: None,
            database_id: None,
        };
        let role = provision(platform, &name, owner, catalog);
        if !setup.is_empty() {
            exec(&name, &format!("SET ROLE \"{role}\";\n{setup}"));
        }
        TestDb { platform: platform.to_string(), name, role }
    }

    pub fn exec(&self, sql: &str) {
        exec(&self.name, sql);
    }

    /// `(state, query)` of the gateway's backends on this database.
    pub fn gateway_backends(&self) -> Vec<(String, String)> {
        let mut c = su("postgres");
        let sql = format!(
            "SELECT coalesce(state, ''), coalesce(query, '') FROM pg_stat_activity \
             WHERE datname = '{}' AND application_name = 'stonescriptdb-gateway'",
            self.name
        );
        c.simple_query(&sql)
            .expect("pg_stat_activity")
            .into_iter()
            .map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default()))
            .collect()
    }

    /// Gateway backends on this database whose state is `active`.
    pub fn active_gateway_backends(&self) -> usize {
        self.gateway_backends().iter().filter(|(s, _)| s == "active").count()
    }

    /// A `/call` body for `function` with `params` (JSON text, or `None` to leave it out).
    pub fn body(&self, function: &str, params: Option<&str>) -> String {
        match params {
            Some(p) => format!(r#"{{"platform":"{}","function":"{function}","params":{p}}}"#, self.platform),
            None => format!(r#"{{"platform":"{}","function":"{function}"}}"#, self.platform),
        }
    }

    /// Calls `function` through the gateway at `addr`.
    pub fn call(&self, addr: SocketAddr, function: &str, params: &str) -> Resp {
        post_json(addr, "/call", &self.body(function, Some(params)))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut c) = Client::connect(&su_params("postgres")) {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name));
        }
    }
}

/// The `rows` of a 200 response; panics with the body otherwise.
pub fn rows(r: &Resp) -> Vec<Value> {
    assert_eq!(r.status, 200, "expected 200, got {}: {}", r.status, r.text());
    r.json().get("rows").and_then(|v| v.as_array()).expect("rows array").to_vec()
}

/// The single value of the single column of the single row.
pub fn scalar(r: &Resp) -> Value {
    let rows = rows(r);
    assert_eq!(rows.len(), 1, "expected one row: {}", r.text());
    let obj = rows[0].as_object().expect("row object");
    assert_eq!(obj.len(), 1, "expected one column: {}", r.text());
    obj[0].1.clone()
}

/// Asserts an error response: status, `error` code; returns the parsed body.
pub fn expect_error(r: &Resp, status: u16, code: &str) -> Value {
    assert_eq!((r.status, r.error_code().as_str()), (status, code), "body: {}", r.text());
    r.json()
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `tag` made unique to this test process and call, for database and platform names.
pub fn uniq(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{tag}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The first column of the first row of `sql` in `dbname`, as text ("" for none or NULL).
pub fn one(dbname: &str, sql: &str) -> String {
    query_col(dbname, sql).into_iter().next().flatten().unwrap_or_default()
}

/// Drops the named databases when the test ends, whatever happened.
pub struct DropDatabases(pub Vec<String>);

impl Drop for DropDatabases {
    fn drop(&mut self) {
        let mut c = su("postgres");
        for d in &self.0 {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{d}\" WITH (FORCE)"));
        }
    }
}
