//! Platform isolation, tried as an attacker on the allowed network would: a platform's SQL (deploys and
//! calls) never runs with more rights than its own role, reaches no other platform's database nor the
//! catalog, and platform keys lock every route of a platform that has one. Each attack must fail with a
//! clear 4xx and change nothing. Run with a superuser gateway login and with the least-rights login.

mod common;

use std::net::SocketAddr;

use common::db::{exec, one, su, uniq};
use common::{multipart, post_json, request, start};
use stonescriptdb_gateway::json::Value;

const TOKEN: &str = "isolation-admin-token-0123456789";

fn db_exists(name: &str) -> bool {
    one("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")) == "1"
}

/// `POST /register` (or `/migrate`) of `files` for `platform`, with optional tenant and bearer value.
fn deploy(
    addr: SocketAddr,
    path: &str,
    platform: &str,
    tenant: Option<&str>,
    files: &[(&str, &str)],
    bearer: Option<&str>,
) -> common::Resp {
    let archive = common::archive::tgz(files.iter().copied());
    let mut fields: Vec<(&str, &[u8])> = vec![("platform", platform.as_bytes()), ("schema", &archive)];
    if let Some(t) = tenant {
        fields.push(("tenant_id", t.as_bytes()));
    }
    let (ct, body) = multipart(&fields);
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let mut headers = vec![("Content-Type", ct.as_str())];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    request(addr, "POST", path, &headers, &body)
}

fn register(addr: SocketAddr, platform: &str, files: &[(&str, &str)]) -> common::Resp {
    deploy(addr, "/register", platform, None, files, None)
}

fn call(addr: SocketAddr, platform: &str, function: &str, params: &str, bearer: Option<&str>) -> common::Resp {
    let body = format!(r#"{{"platform":"{platform}","function":"{function}","params":{params}}}"#);
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    request(addr, "POST", "/call", &headers, body.as_bytes())
}

fn code(r: &common::Resp) -> (u16, String) {
    (r.status, r.error_code())
}

fn first_value(r: &common::Resp) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    let rows = r.json().get("rows").and_then(Value::as_array).expect("rows").to_vec();
    rows[0].as_object().expect("row")[0].1.clone()
}

/// Drops the databases of the platforms and the catalog when the test ends.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut c = su("postgres");
        for d in &self.0 {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{d}\" WITH (FORCE)"));
        }
    }
}

const WHOAMI: &str = "CREATE FUNCTION whoami() RETURNS TABLE(su text, cu text) LANGUAGE sql AS \
                      $$ SELECT session_user::text, current_user::text $$;";

/// The attacks of one platform against the server and the others, for a gateway started with `extra`.
fn attacks(login: &[(&str, &str)]) {
    let cat = uniq("cat_iso");
    let (a, b) = (uniq("iso_a"), uniq("iso_b"));
    let _clean = Cleanup(vec![format!("{a}_main"), format!("{b}_main"), cat.clone()]);
    let mut settings = vec![("CATALOG_DB", cat.as_str()), ("ADMIN_TOKEN", TOKEN)];
    settings.extend_from_slice(login);
    let g = start(&settings);
    let marker = format!("/tmp/ssdb_pwn_{}", uniq("f"));

    // 1. A migration that runs a program: refused, and the database made for the attempt is gone.
    let r =
        register(g.addr, &a, &[("migrations/001_pwn.sql", &format!("COPY (SELECT 'x') TO PROGRAM 'id > {marker}';"))]);
    assert_eq!(code(&r), (403, "permission_denied".into()), "{}", r.text());
    assert!(!std::path::Path::new(&marker).exists(), "the program ran");
    assert!(!db_exists(&format!("{a}_main")), "the attempt's database was left behind");
    let r = register(g.addr, &a, &[("migrations/001_read.sql", "SELECT pg_read_file('/etc/hostname');")]);
    assert_eq!(code(&r), (403, "permission_denied".into()), "{}", r.text());

    // 2. An untrusted extension is refused before anything exists.
    let r = register(g.addr, &a, &[("extensions/dblink.sql", ""), ("functions/w.sql", WHOAMI)]);
    assert_eq!(code(&r), (403, "extension_not_allowed".into()), "{}", r.text());
    assert!(!db_exists(&format!("{a}_main")));

    // A well-behaved platform B, and A with functions that try the server and B.
    let r = register(g.addr, &b, &[("functions/w.sql", WHOAMI)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let fns = format!(
        "{WHOAMI}
CREATE FUNCTION leak() RETURNS text LANGUAGE sql AS $$ SELECT pg_read_file('/etc/hostname') $$;
CREATE FUNCTION run_program() RETURNS int LANGUAGE plpgsql AS $$
BEGIN EXECUTE 'COPY (SELECT 1) TO PROGRAM ''id > {marker}'''; RETURN 1; END $$;
CREATE FUNCTION reach() RETURNS TABLE(other boolean, catalog boolean) LANGUAGE sql AS $$
    SELECT has_database_privilege('{b}_main', 'CONNECT'), has_database_privilege('{cat}', 'CONNECT') $$;
CREATE FUNCTION steal() RETURNS int LANGUAGE plpgsql AS $$
BEGIN EXECUTE 'ALTER ROLE ssdb_{b} PASSWORD ''owned'''; RETURN 1; END $$;
CREATE FUNCTION escalate() RETURNS int LANGUAGE plpgsql AS $$
BEGIN EXECUTE 'GRANT pg_execute_server_program TO CURRENT_USER'; RETURN 1; END $$;
CREATE FUNCTION make_superuser() RETURNS int LANGUAGE plpgsql AS $$
BEGIN EXECUTE 'CREATE ROLE evil_{a} SUPERUSER LOGIN'; RETURN 1; END $$;
CREATE FUNCTION rows_of_catalog() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;"
    );
    let r = register(g.addr, &a, &[("functions/f.sql", fns.as_str())]);
    assert_eq!(r.status, 200, "{}", r.text());

    // 3. Calls run as the platform's own role, which has none of the dangerous rights.
    let role = format!("ssdb_{a}");
    let r = call(g.addr, &a, "whoami", "[]", None);
    assert_eq!(first_value(&r), Value::String(role.clone()), "session_user");
    let row = r.json().get("rows").and_then(Value::as_array).unwrap()[0].clone();
    assert_eq!(row.get("cu"), Some(&Value::String(role.clone())), "current_user");
    assert_eq!(
        one(
            "postgres",
            &format!(
                "SELECT rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls \
                 OR EXISTS (SELECT 1 FROM pg_auth_members WHERE member = r.oid) FROM pg_roles r WHERE rolname = '{role}'"
            )
        ),
        "f"
    );
    assert_eq!(
        one("postgres", &format!("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{a}_main'")),
        role
    );
    for f in ["leak", "run_program", "steal", "escalate", "make_superuser"] {
        let r = call(g.addr, &a, f, "[]", None);
        assert_eq!(code(&r), (403, "permission_denied".into()), "{f}: {}", r.text());
    }
    assert!(!std::path::Path::new(&marker).exists(), "the program ran");
    assert_eq!(one("postgres", &format!("SELECT count(*) FROM pg_roles WHERE rolname = 'evil_{a}'")), "0");
    // 4. Platform A can open neither B's database nor the catalog.
    let r = call(g.addr, &a, "reach", "[]", None);
    let row = r.json().get("rows").and_then(Value::as_array).unwrap()[0].clone();
    assert_eq!(row.get("other"), Some(&Value::Bool(false)), "{}", r.text());
    assert_eq!(row.get("catalog"), Some(&Value::Bool(false)), "{}", r.text());
    // B still works, as itself.
    assert_eq!(first_value(&call(g.addr, &b, "whoami", "[]", None)), Value::String(format!("ssdb_{b}")));

    // 5. The same through migrations: no new rights, B's role untouched.
    for sql in [
        "GRANT pg_execute_server_program TO CURRENT_USER;".to_string(),
        format!("ALTER ROLE ssdb_{b} PASSWORD 'owned';"),
        format!("CREATE ROLE evil_{a} SUPERUSER;"),
    ] {
        let r = deploy(
            g.addr,
            "/migrate",
            &a,
            None,
            &[("functions/f.sql", fns.as_str()), ("migrations/009_x.sql", &sql)],
            None,
        );
        assert_eq!(code(&r).0, 403, "{sql}: {}", r.text());
    }
    let r = deploy(
        g.addr,
        "/migrate",
        &a,
        None,
        &[
            ("functions/f.sql", fns.as_str()),
            ("migrations/009_sys.sql", "-- gateway: no-transaction\nALTER SYSTEM SET work_mem = '1GB';"),
        ],
        None,
    );
    assert_eq!(code(&r).0, 403, "{}", r.text());
    assert_ne!(one("postgres", "SHOW work_mem"), "1GB");
    // Nothing of the refused migrations stayed.
    assert_eq!(
        one(&format!("{a}_main"), "SELECT count(*) FROM _stonescriptdb_gateway_migrations WHERE filename LIKE '%009%'"),
        "0"
    );
}

#[test]
fn attacks_fail_with_a_superuser_gateway_login() {
    attacks(&[]);
}

#[test]
fn attacks_fail_with_the_least_rights_login() {
    let login = uniq("gw_least");
    exec("postgres", &format!("CREATE ROLE {login} LOGIN CREATEDB CREATEROLE"));
    attacks(&[("DB_USER", login.as_str())]);
    // The login itself stayed as it was made.
    assert_eq!(one("postgres", &format!("SELECT rolsuper FROM pg_roles WHERE rolname = '{login}'")), "f");
    assert_eq!(one("postgres", &format!("SELECT pg_has_role('{login}', 'pg_execute_server_program', 'MEMBER')")), "f");
}

#[test]
fn the_catalog_and_databases_the_gateway_did_not_make_are_never_platform_databases() {
    let p = uniq("isn");
    // The catalog's name is what platform `p` tenant `gateway` maps to.
    let cat = format!("{p}_gateway");
    let ghost = uniq("ghost");
    let _clean = Cleanup(vec![cat.clone(), format!("{ghost}_main"), format!("{p}_main")]);
    let g = start(&[("CATALOG_DB", cat.as_str()), ("ADMIN_TOKEN", TOKEN)]);
    let r = deploy(g.addr, "/register", &p, Some("gateway"), &[("functions/w.sql", WHOAMI)], None);
    assert_eq!(code(&r), (409, "name_conflict".into()), "{}", r.text());
    // Refused before anything was made: the platform, new here, got no role.
    assert_eq!(one("postgres", &format!("SELECT count(*) FROM pg_roles WHERE rolname = 'ssdb_{p}'")), "0");
    assert_eq!(one(&cat, &format!("SELECT count(*) FROM platform_roles WHERE platform = '{p}'")), "0");
    let body = format!(r#"{{"platform":"{p}","tenant_id":"gateway","function":"whoami","params":[]}}"#);
    assert_eq!(code(&post_json(g.addr, "/call", &body)).0, 404);

    // A database with the right name that the gateway did not make: not served, not deployed to.
    exec("postgres", &format!("CREATE DATABASE {ghost}_main"));
    exec(&format!("{ghost}_main"), "CREATE FUNCTION secret() RETURNS int LANGUAGE sql AS 'SELECT 7'");
    assert_eq!(code(&call(g.addr, &ghost, "secret", "[]", None)), (404, "database_not_found".into()));
    let r = register(g.addr, &ghost, &[("functions/w.sql", WHOAMI)]);
    assert_eq!(code(&r), (409, "name_conflict".into()), "{}", r.text());
    let r = deploy(g.addr, "/migrate", &ghost, None, &[("functions/w.sql", WHOAMI)], None);
    assert_eq!(code(&r).0, 404, "{}", r.text());
    assert_eq!(one(&format!("{ghost}_main"), "SELECT count(*) FROM pg_proc WHERE proname = 'whoami'"), "0");
    // A tenant database that /register never made: /migrate says so.
    assert_eq!(register(g.addr, &p, &[("functions/w.sql", WHOAMI)]).status, 200);
    let r = deploy(g.addr, "/migrate", &p, Some("nobody"), &[("functions/w.sql", WHOAMI)], None);
    assert_eq!(code(&r), (404, "database_not_found".into()), "{}", r.text());
}

#[test]
fn extensions_land_outside_the_reach_of_call() {
    let p = uniq("isx");
    let cat = uniq("cat_isx");
    let _clean = Cleanup(vec![cat.clone(), format!("{p}_main")]);
    let g = start(&[("CATALOG_DB", cat.as_str())]);
    // An extension a migration creates in a /call schema: its functions there would be callable, and
    // its objects belong to the bootstrap superuser, so the platform's role cannot move it: refused.
    let r = register(g.addr, &p, &[("migrations/001_trgm.sql", "CREATE EXTENSION IF NOT EXISTS pg_trgm;")]);
    assert_eq!(code(&r), (403, "extension_not_allowed".into()), "{}", r.text());
    assert!(!db_exists(&format!("{p}_main")));
    let files = [
        ("extensions/pgcrypto.sql", ""),
        ("extensions/pg_trgm.sql", ""),
        (
            "functions/token.sql",
            "CREATE FUNCTION token() RETURNS text LANGUAGE sql AS $$ SELECT encode(gen_random_bytes(4), 'hex') $$;",
        ),
    ];
    let r = register(g.addr, &p, &files);
    assert_eq!(r.status, 200, "{}", r.text());
    let db = format!("{p}_main");
    // Created by the platform's role, into the extensions schema; the one a migration put into public moved.
    assert_eq!(
        one(
            &db,
            "SELECT string_agg(extname || ':' || extnamespace::regnamespace::text, ',' ORDER BY extname) FROM pg_extension WHERE extname <> 'plpgsql'"
        ),
        "pg_trgm:extensions,pgcrypto:extensions"
    );
    assert_eq!(first_value(&call(g.addr, &p, "token", "[]", None)).as_str().map(str::len), Some(8));
    for (f, params) in [("gen_salt", r#"["bf"]"#), ("gen_random_bytes", "[4]"), ("similarity", r#"["a","b"]"#)] {
        assert_eq!(code(&call(g.addr, &p, f, params, None)), (404, "function_not_found".into()), "{f}");
    }
    // A pin into a /call schema (archives written for 1.x have them) goes to the extensions schema
    // instead, with a warning; /call still cannot run its functions.
    let r = deploy(g.addr, "/migrate", &p, None, &[("extensions/citext.sql", "-- schema: public\n")], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("installed into schema extensions instead"), "{}", r.text());
    assert_eq!(
        one(&db, "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'citext'"),
        "extensions"
    );
    assert_eq!(code(&call(g.addr, &p, "citext_larger", r#"["a","b"]"#, None)), (404, "function_not_found".into()));
}

#[test]
fn platform_keys_lock_every_route_of_their_platform() {
    let p = uniq("isk");
    let v1 = uniq("iskv");
    let cat = uniq("cat_isk");
    let _clean = Cleanup(vec![cat.clone(), format!("{v1}_main"), format!("{p}_s_d1"), format!("{p}_s_d2")]);
    let g = start(&[("CATALOG_DB", cat.as_str()), ("ADMIN_TOKEN", TOKEN)]);
    let admin = format!("Bearer {TOKEN}");
    let json_req = |path: &str, body: &str, bearer: Option<&str>| {
        let auth = bearer.map(|b| format!("Bearer {b}"));
        let mut h = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            h.push(("Authorization", a.as_str()));
        }
        request(g.addr, "POST", path, &h, body.as_bytes())
    };
    let get = |path: &str, bearer: Option<&str>| {
        let auth = bearer.map(|b| format!("Bearer {b}"));
        let h: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("Authorization", a)]).unwrap_or_default();
        request(g.addr, "GET", path, &h, b"")
    };

    // v2: a key on registration, answered once.
    let r = json_req("/platform/register", &format!(r#"{{"platform":"{p}","require_key":true}}"#), None);
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json().get("api_key").and_then(Value::as_str).expect("api_key").to_string();
    let wrong = "ssdbk_000000000000000000000000000000000000000000000000";
    let archive = common::archive::tgz([("functions/w.sql", WHOAMI)]);
    let upload = |bearer: Option<&str>| {
        let (ct, body) = multipart(&[("schema_name", b"s"), ("schema", &archive)]);
        let auth = bearer.map(|b| format!("Bearer {b}"));
        let mut h = vec![("Content-Type", ct.as_str())];
        if let Some(a) = &auth {
            h.push(("Authorization", a.as_str()));
        }
        request(g.addr, "POST", &format!("/platform/{p}/schema"), &h, &body)
    };
    for bearer in [None, Some(wrong)] {
        assert_eq!(code(&upload(bearer)), (401, "invalid_platform_key".into()));
        assert_eq!(code(&get(&format!("/platform/{p}/schemas"), bearer)), (401, "invalid_platform_key".into()));
        assert_eq!(code(&get(&format!("/platform/{p}/databases"), bearer)), (401, "invalid_platform_key".into()));
    }
    assert_eq!(upload(Some(&key)).status, 201);
    assert_eq!(get(&format!("/platform/{p}/schemas"), Some(&key)).status, 200);
    let create = format!(r#"{{"platform":"{p}","schema_name":"s","database_id":"d1"}}"#);
    assert_eq!(code(&json_req("/database/create", &create, None)).0, 401);
    assert_eq!(code(&json_req("/database/create", &create, Some(wrong))).0, 401);
    assert!(!db_exists(&format!("{p}_s_d1")));
    assert_eq!(json_req("/database/create", &create, Some(&key)).status, 201);
    let body = format!(r#"{{"platform":"{p}","tenant_id":"s_d1","function":"whoami","params":[]}}"#);
    assert_eq!(code(&json_req("/call", &body, None)), (401, "invalid_platform_key".into()));
    assert_eq!(code(&json_req("/call", &body, Some(wrong))), (401, "invalid_platform_key".into()));
    assert_eq!(json_req("/call", &body, Some(&key)).status, 200);
    assert_eq!(json_req("/call", &body, Some(TOKEN)).status, 200, "the admin token works too");
    let mig = format!(r#"{{"platform":"{p}","schema_name":"s"}}"#);
    assert_eq!(code(&json_req("/v2/migrate", &mig, None)), (401, "invalid_platform_key".into()));
    let r = json_req("/v2/migrate", &mig, Some(&key));
    assert_eq!(r.status, 200, "{}", r.text());
    let run = r.json().get("run_id").and_then(Value::as_str).unwrap().to_string();
    assert_eq!(code(&get(&format!("/runs/{run}"), None)), (401, "invalid_platform_key".into()));
    assert_eq!(get(&format!("/runs/{run}"), Some(&key)).status, 200);
    // Listing every platform is the admin's.
    assert_eq!(get("/platforms", Some(&key)).status, 401);
    assert_eq!(request(g.addr, "GET", "/platforms", &[("Authorization", &admin)], b"").status, 200);
    // The key is kept nowhere, only its hash.
    let dump = one(&cat, "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM platform_keys) t");
    assert!(!dump.contains(&key) && dump.contains(&stonescriptdb_gateway::security::keys::hash(&key)), "{dump}");
    let all = one(&cat, "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM platforms) t");
    assert!(!all.contains(&key));

    // v1: an admin gives an existing platform a key; from then on it needs it.
    assert_eq!(register(g.addr, &v1, &[("functions/w.sql", WHOAMI)]).status, 200);
    assert_eq!(call(g.addr, &v1, "whoami", "[]", None).status, 200, "keyless platforms keep working");
    let r = json_req(&format!("/admin/platforms/{v1}/key"), "", None);
    assert_eq!(r.status, 401, "setting a key is the admin's");
    let r = json_req(&format!("/admin/platforms/{v1}/key"), "", Some(TOKEN));
    assert_eq!(r.status, 201, "{}", r.text());
    let k1 = r.json().get("api_key").and_then(Value::as_str).unwrap().to_string();
    assert_eq!(code(&call(g.addr, &v1, "whoami", "[]", None)), (401, "invalid_platform_key".into()));
    assert_eq!(call(g.addr, &v1, "whoami", "[]", Some(&k1)).status, 200);
    let changed = [("functions/w.sql", WHOAMI), ("migrations/001_t.sql", "CREATE TABLE pwned (x int);")];
    for path in ["/register", "/migrate"] {
        let r = deploy(g.addr, path, &v1, None, &changed, None);
        assert_eq!(code(&r), (401, "invalid_platform_key".into()), "{path}");
    }
    assert_eq!(one(&format!("{v1}_main"), "SELECT count(*) FROM pg_tables WHERE tablename = 'pwned'"), "0");
    assert_eq!(deploy(g.addr, "/migrate", &v1, None, &changed, Some(&k1)).status, 200);
    // Rotation with a grace period: both keys work, then only the new one.
    let r = json_req(&format!("/admin/platforms/{v1}/key"), r#"{"grace_seconds":600}"#, Some(TOKEN));
    let k2 = r.json().get("api_key").and_then(Value::as_str).unwrap().to_string();
    assert_eq!(call(g.addr, &v1, "whoami", "[]", Some(&k1)).status, 200);
    assert_eq!(call(g.addr, &v1, "whoami", "[]", Some(&k2)).status, 200);
    let r = json_req(&format!("/admin/platforms/{v1}/key"), r#"{"grace_seconds":0}"#, Some(TOKEN));
    let k3 = r.json().get("api_key").and_then(Value::as_str).unwrap().to_string();
    for old in [&k1, &k2] {
        assert_eq!(code(&call(g.addr, &v1, "whoami", "[]", Some(old))).0, 401);
    }
    assert_eq!(call(g.addr, &v1, "whoami", "[]", Some(&k3)).status, 200);
}

#[test]
fn keys_can_be_required_for_every_platform() {
    let p = uniq("isr");
    let cat = uniq("cat_isr");
    let _clean = Cleanup(vec![cat.clone(), format!("{p}_main")]);
    let g = start(&[("CATALOG_DB", cat.as_str()), ("ADMIN_TOKEN", TOKEN), ("REQUIRE_PLATFORM_KEYS", "true")]);
    let r = register(g.addr, &p, &[("functions/w.sql", WHOAMI)]);
    assert_eq!(code(&r), (401, "invalid_platform_key".into()));
    assert!(!db_exists(&format!("{p}_main")));
    let r = deploy(g.addr, "/register", &p, None, &[("functions/w.sql", WHOAMI)], Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(code(&call(g.addr, &p, "whoami", "[]", None)), (401, "invalid_platform_key".into()));
    assert_eq!(call(g.addr, &p, "whoami", "[]", Some(TOKEN)).status, 200);
}

#[test]
fn an_installation_deployed_before_platform_roles_is_brought_under_them() {
    // What the previous release left: a database made and filled by the gateway's (superuser) login,
    // an extension in public, a v2 password kept in clear in the catalog.
    let p = uniq("isu");
    let cat = uniq("cat_isu");
    let db = format!("{p}_main");
    let _clean = Cleanup(vec![cat.clone(), db.clone()]);
    {
        let mut c = stonescriptdb_gateway::catalog::Catalog::open(&common::db::su_params("postgres"), &cat).unwrap();
        c.record_database(&db, &common::db::main_owner(&p)).unwrap();
        c.client
            .batch_execute(&format!(
                "UPDATE databases SET confined_at = NULL; INSERT INTO platforms (name, db_password) VALUES ('{p}v2', 'cleartext-pw')"
            ))
            .unwrap();
    }
    exec("postgres", &format!("CREATE DATABASE {db}"));
    exec(
        &db,
        "CREATE EXTENSION pgcrypto; CREATE TYPE mood AS ENUM ('ok'); CREATE TABLE items (id serial PRIMARY KEY, m mood);
         CREATE VIEW v AS SELECT id FROM items; CREATE SCHEMA app; CREATE TABLE app.t (x int);
         CREATE FUNCTION count_items() RETURNS bigint LANGUAGE sql SECURITY DEFINER AS 'SELECT count(*) FROM items';
         CREATE FUNCTION whoami() RETURNS TABLE(su text, cu text) LANGUAGE sql AS $$ SELECT session_user::text, current_user::text $$;",
    );
    let g = start(&[("CATALOG_DB", cat.as_str()), ("ADMIN_TOKEN", TOKEN)]);
    let role = format!("ssdb_{p}");
    assert!(
        common::db::eventually(std::time::Duration::from_secs(10), || {
            one("postgres", &format!("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{db}'")) == role
        }),
        "the start-up pass gave the database to the platform's role"
    );
    assert!(common::db::eventually(std::time::Duration::from_secs(10), || {
        one(&cat, "SELECT count(*) FROM databases WHERE confined_at IS NULL") == "0"
    }));
    let not_role = one(
        &db,
        &format!(
            "SELECT count(*) FROM (SELECT relowner AS o FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname IN ('public', 'app') AND c.relkind IN ('r', 'v', 'S')
             UNION ALL SELECT proowner FROM pg_proc WHERE proname IN ('count_items', 'whoami')
             UNION ALL SELECT typowner FROM pg_type WHERE typname = 'mood'
             UNION ALL SELECT nspowner FROM pg_namespace WHERE nspname = 'app') x
             WHERE o <> (SELECT oid FROM pg_roles WHERE rolname = '{role}')"
        ),
    );
    assert_eq!(not_role, "0", "every object is the platform role's");
    assert_eq!(
        one(&db, "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pgcrypto'"),
        "extensions"
    );
    assert_eq!(one("postgres", &format!("SELECT has_database_privilege('public', '{db}', 'CONNECT')")), "f");
    assert_eq!(one("postgres", &format!("SELECT has_database_privilege('public', '{cat}', 'CONNECT')")), "f");
    assert_eq!(one(&cat, "SELECT count(*) FROM platforms WHERE db_password IS NOT NULL"), "0");
    // Calls run as the role, SECURITY DEFINER functions too.
    assert_eq!(first_value(&call(g.addr, &p, "whoami", "[]", None)), Value::String(role.clone()));
    assert_eq!(first_value(&call(g.addr, &p, "count_items", "[]", None)), Value::Number("0".into()));
    // On demand, idempotent, with a report.
    let admin = format!("Bearer {TOKEN}");
    let r = request(g.addr, "POST", "/admin/isolate", &[("Authorization", &admin)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().get("status").and_then(Value::as_str), Some("completed"), "{}", r.text());
    assert_eq!(request(g.addr, "POST", "/admin/isolate", &[], b"").status, 401);
    // A pass that cannot confine a database is not a plain 200: it says so, with the whole report.
    exec("postgres", &format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"));
    let r = request(g.addr, "POST", "/admin/isolate", &[("Authorization", &admin)], b"");
    exec("postgres", &format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"));
    assert_eq!((r.status, r.error_code().as_str()), (500, "isolation_incomplete"), "{}", r.text());
    let v = r.json();
    assert_eq!(v.get("status").and_then(Value::as_str), Some("completed_with_errors"), "{}", r.text());
    let failed = v.get("databases").and_then(Value::as_array).unwrap().iter().find(|d| {
        d.get("database").and_then(Value::as_str) == Some(db.as_str())
            && d.get("status").and_then(Value::as_str) == Some("failed")
    });
    assert!(failed.is_some(), "{}", r.text());
}

#[test]
fn a_garbled_forwarded_for_from_a_trusted_proxy_is_refused() {
    let g = start(&[("TRUSTED_PROXIES", "127.0.0.1/32")]);
    let r = request(g.addr, "GET", "/health", &[("X-Forwarded-For", "not-an-address")], b"");
    assert_eq!(code(&r), (400, "invalid_request".into()), "{}", r.text());
    // A good one is believed: a public address is not in ALLOWED_NETWORKS.
    let r = request(g.addr, "GET", "/health", &[("X-Forwarded-For", "203.0.113.9")], b"");
    assert_eq!(code(&r), (403, "unauthorized".into()));
    // From a peer that is no trusted proxy, the header means nothing either way.
    let g2 = start(&[]);
    let r = request(g2.addr, "GET", "/health", &[("X-Forwarded-For", "not-an-address")], b"");
    assert_ne!(r.status, 400);
    assert_ne!(r.status, 403);
}

/// Regression (issue 15): nothing failed when the ownership check of `/call` was switched off. Names
/// collide by construction: platform `x` with tenant `b_main` maps to `x_b_main`, the main database of
/// platform `x_b`; and platform `x`'s main database is also what its tenant `main` maps to. A call must
/// reach only a database the catalog records for the platform *and* tenant it names.
#[test]
fn a_call_reaches_only_the_database_of_the_platform_and_tenant_it_names() {
    let x = uniq("own");
    let xb = format!("{x}_b");
    let cat = uniq("cat_own");
    let _clean = Cleanup(vec![cat.clone(), format!("{x}_main"), format!("{xb}_main")]);
    let files = [
        ("tables/hits.sql", "CREATE TABLE hits (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());"),
        (
            "functions/touch.sql",
            "CREATE FUNCTION touch() RETURNS text LANGUAGE sql AS \
             $$ INSERT INTO hits DEFAULT VALUES; SELECT current_database()::text $$;",
        ),
    ];
    let g = start(&[("CATALOG_DB", cat.as_str())]);
    for p in [&x, &xb] {
        let r = register(g.addr, p, &files);
        assert_eq!(r.status, 200, "{p}: {}", r.text());
    }
    let hits = |db: &str| one(db, "SELECT count(*) FROM hits");
    let attempt = |addr: SocketAddr, tenant: &str| {
        let body = format!(r#"{{"platform":"{x}","tenant_id":"{tenant}","function":"touch","params":[]}}"#);
        post_json(addr, "/call", &body)
    };
    // Asked of the gateway that made the databases, then of one that learns the owners at start-up.
    let g2 = start(&[("CATALOG_DB", cat.as_str())]);
    for addr in [g.addr, g2.addr] {
        // Platform x, tenant b_main: the name is platform x_b's main database.
        let r = attempt(addr, "b_main");
        assert_eq!(code(&r), (409, "name_conflict".into()), "another platform's database answered: {}", r.text());
        // Platform x, tenant main: the name is x's own main database, which belongs to no tenant.
        let r = attempt(addr, "main");
        assert_eq!(code(&r), (409, "name_conflict".into()), "the main database answered a tenant: {}", r.text());
    }
    assert_eq!(hits(&format!("{xb}_main")), "0", "a refused call ran in platform {xb}'s database");
    assert_eq!(hits(&format!("{x}_main")), "0", "a refused call ran in the main database");
    // Each platform still reaches its own database.
    for (p, db) in [(&x, format!("{x}_main")), (&xb, format!("{xb}_main"))] {
        assert_eq!(first_value(&call(g2.addr, p, "touch", "[]", None)), Value::String(db.clone()));
        assert_eq!(hits(&db), "1");
    }
}

/// Regression (issue 15): nothing failed when `X-Forwarded-For` was believed from any peer, because
/// the tests used an empty `TRUSTED_PROXIES` or a trusted peer. Here the list is not empty and the
/// test's own address (127.0.0.1) is not on it: the header must change nothing, whether it would let a
/// request in or keep it out. The same headers from a trusted peer are believed, so the gateway does
/// read them.
#[test]
fn forwarded_for_from_a_peer_that_is_no_trusted_proxy_is_ignored() {
    let cat = uniq("cat_xff");
    let _clean = Cleanup(vec![cat.clone()]);
    let admin = format!("Bearer {TOKEN}");
    let inside = [("X-Forwarded-For", "10.1.2.3")];
    let outside = [("X-Forwarded-For", "203.0.113.9")];
    let admin_inside = [("X-Forwarded-For", "10.1.2.3"), ("Authorization", admin.as_str())];
    for (proxies, believed) in [("192.0.2.0/24, 198.51.100.7", false), ("192.0.2.0/24, 127.0.0.1/32", true)] {
        let only_10 = [("TRUSTED_PROXIES", proxies), ("ALLOWED_NETWORKS", "10.0.0.0/8")];
        let admin_10 = [
            ("TRUSTED_PROXIES", proxies),
            ("ALLOWED_ADMIN_IPS", "10.0.0.0/8"),
            ("ADMIN_TOKEN", TOKEN),
            ("CATALOG_DB", cat.as_str()),
        ];
        // Only 10/8 may use the gateway; the header claims an address there.
        let g = start(&only_10);
        let r = request(g.addr, "GET", "/health", &inside, b"");
        let want = if believed { (200, String::new()) } else { (403, "unauthorized".into()) };
        assert_eq!(code(&r), want, "TRUSTED_PROXIES={proxies}: {}", r.text());
        // Only 10/8 may use admin routes; the header claims an address there, with the right token.
        let g = start(&admin_10);
        let r = request(g.addr, "GET", "/admin/platforms", &admin_inside, b"");
        assert_eq!(code(&r), want, "TRUSTED_PROXIES={proxies}: {}", r.text());
        // The header names an address outside ALLOWED_NETWORKS (the defaults); the peer is inside.
        let g = start(&[("TRUSTED_PROXIES", proxies)]);
        let r = request(g.addr, "GET", "/health", &outside, b"");
        let want = if believed { (403, "unauthorized".into()) } else { (200, String::new()) };
        assert_eq!(code(&r), want, "TRUSTED_PROXIES={proxies}: {}", r.text());
    }
}
