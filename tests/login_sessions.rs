//! The gateway's own login in platform databases, tried as a platform's owner would: every hook a
//! database owner can plant (operators and functions that shadow pg_catalog's with closer argument
//! types, views, triggers, rules, defaults, domains, policies) records who ran it, and none may ever
//! run as the login; and a refused request changes no role.

mod common;

use std::time::Duration;

use common::db::{DropDatabases, eventually, exec, one, query_col, su, uniq};
use common::{request, start};
use stonescriptdb_gateway::json::Value;

const TOKEN: &str = "login-sessions-admin-token-0123456789";

fn deploy(addr: std::net::SocketAddr, path: &str, platform: &str, files: &[(&str, &str)]) -> common::Resp {
    common::deploy_files(addr, path, platform, files, TOKEN)
}

fn admin_post(addr: std::net::SocketAddr, path: &str, body: &str) -> common::Resp {
    let auth = format!("Bearer {TOKEN}");
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json"), ("Authorization", auth.as_str())],
        body.as_bytes(),
    )
}

/// Everything a database owner can leave for a privileged reader. Each hook writes the session user
/// into `hook_log` (open to everyone) before doing what the shadowed object does.
const HOOKS: &str = r#"
CREATE TABLE public.hook_log (who text, what text);
GRANT INSERT ON public.hook_log TO PUBLIC;
CREATE FUNCTION public.hook(what text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.hook_log VALUES (session_user, what); RETURN true; END $$;
-- Operators whose argument types match the catalog queries more closely than pg_catalog's.
CREATE FUNCTION public.eq_oid_regclass(oid, regclass) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hook('=(oid,regclass)'); RETURN $1 OPERATOR(pg_catalog.=) $2::oid; END $$;
CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = public.eq_oid_regclass);
CREATE FUNCTION public.ne_oid_regrole(oid, regrole) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hook('<>(oid,regrole)'); RETURN $1 OPERATOR(pg_catalog.<>) $2::oid; END $$;
CREATE OPERATOR public.<> (LEFTARG = oid, RIGHTARG = regrole, FUNCTION = public.ne_oid_regrole);
CREATE FUNCTION public.eq_regclass_oid(regclass, oid) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hook('=(regclass,oid)'); RETURN $1::oid OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR public.= (LEFTARG = regclass, RIGHTARG = oid, FUNCTION = public.eq_regclass_oid);
-- Functions that shadow pg_catalog's for a closer argument type.
CREATE FUNCTION public.quote_ident(name) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hook('quote_ident(name)'); RETURN pg_catalog.quote_ident($1::text); END $$;
CREATE FUNCTION public.has_database_privilege(name, name, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hook('has_database_privilege'); RETURN true; END $$;
-- Objects that run code when read or written.
CREATE DOMAIN public.watched AS int CHECK (public.hook('domain'));
CREATE TABLE public.items (id int DEFAULT (CASE WHEN public.hook('default') THEN 1 END), w public.watched);
CREATE FUNCTION public.trg() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hook('trigger'); RETURN NEW; END $$;
CREATE TRIGGER items_hook BEFORE INSERT OR UPDATE OR DELETE ON public.items FOR EACH ROW EXECUTE FUNCTION public.trg();
CREATE RULE items_rule AS ON UPDATE TO public.items DO ALSO SELECT public.hook('rule');
ALTER TABLE public.items ENABLE ROW LEVEL SECURITY;
CREATE POLICY items_policy ON public.items USING (public.hook('policy'));
CREATE VIEW public.v AS SELECT public.hook('view') AS h;
CREATE SCHEMA app;
CREATE TABLE app.t (x int DEFAULT 1);
"#;

/// Every path on which the gateway's login opens a session in a platform database (the confine pass
/// at start and on demand, installs of allowed extensions) runs nothing the platform defined.
#[test]
fn the_login_never_runs_what_a_platform_planted() {
    let p = uniq("lgh");
    let cat = uniq("cat_lgh");
    let db = format!("{p}_main");
    let role = format!("ssdb_{p}");
    let _clean = DropDatabases(vec![cat.clone(), db.clone()]);
    let settings = [("CATALOG_DB", cat.as_str()), ("ADMIN_TOKEN", TOKEN), ("EXTENSIONS_ALLOWED", "dblink")];
    let g = start(&settings);
    let r = deploy(g.addr, "/register", &p, &[("migrations/001_hooks.sql", HOOKS)]);
    assert_eq!(r.status, 200, "{}", r.text());

    // The hooks are live: a privileged session with the database's default path runs them.
    let mut c = su(&db);
    c.batch_execute(
        "SET search_path = public; SELECT count(*) FROM pg_depend d WHERE d.classid = 'pg_class'::regclass; \
         SELECT count(*) FROM pg_namespace n WHERE n.nspowner <> 'pg_database_owner'::regrole",
    )
    .unwrap();
    c.close();
    assert_eq!(
        one(&db, "SELECT count(DISTINCT what) FROM hook_log WHERE who = 'postgres'"),
        "2",
        "the planted operators work"
    );
    exec(&db, "TRUNCATE hook_log");

    // Objects the login must reassign (made by a superuser, as an old installation left them).
    exec(
        &db,
        "CREATE TABLE public.old_items (id int DEFAULT 1); CREATE SCHEMA old; CREATE FUNCTION old.f() RETURNS int \
         LANGUAGE sql AS 'SELECT 1'; CREATE EXTENSION pgcrypto SCHEMA public",
    );

    // 1. On demand.
    let r = admin_post(g.addr, "/admin/isolate", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().get("status").and_then(Value::as_str), Some("completed"), "{}", r.text());
    assert_eq!(
        one(&db, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'old_items'"),
        role,
        "the pass did its work"
    );
    assert_eq!(
        one(&db, "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pgcrypto'"),
        "extensions"
    );

    // 2. An allowed untrusted extension, installed by the login.
    let r = deploy(g.addr, "/migrate", &p, &[("extensions/dblink.sql", "")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(one(&db, "SELECT count(*) FROM pg_extension WHERE extname = 'dblink'"), "1");

    // 3. The pass at start, for a database not yet confined.
    drop(g);
    exec(&db, "CREATE TABLE public.older (id int)");
    exec(&cat, "UPDATE databases SET confined_at = NULL");
    let g = start(&settings);
    assert!(
        eventually(Duration::from_secs(20), || one(&cat, "SELECT count(*) FROM databases WHERE confined_at IS NULL")
            == "0"),
        "the start pass ran"
    );
    assert_eq!(one(&db, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'older'"), role);
    drop(g);

    let fired = query_col(&db, &format!("SELECT DISTINCT who || ': ' || what FROM hook_log WHERE who <> '{role}'"));
    assert!(fired.is_empty(), "platform code ran as the gateway's login: {fired:?}");
}

fn authid(roles: &[&str]) -> Vec<Option<String>> {
    let list = roles.iter().map(|r| format!("'{r}'")).collect::<Vec<_>>().join(",");
    query_col(
        "postgres",
        &format!(
            "SELECT string_agg(row(rolname, rolpassword, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, \
             rolvaliduntil, s.setconfig)::text, ' | ' ORDER BY rolname) FROM pg_authid a \
             LEFT JOIN pg_db_role_setting s ON s.setrole = a.oid AND s.setdatabase = 0 WHERE rolname IN ({list})"
        ),
    )
}

/// `db_user` naming a role a platform must not run as (the gateway's own login, a superuser, one with
/// CREATEDB) is refused before anything changes: passwords and attributes stay as they were.
fn refused_roles_keep_their_passwords(login: Option<&str>) {
    let cat = uniq("cat_lgr");
    let _clean = DropDatabases(vec![cat.clone()]);
    let victim = uniq("victim");
    exec("postgres", &format!("CREATE ROLE {victim} LOGIN CREATEDB PASSWORD 'victim-password'"));
    let me = login.unwrap_or("postgres").to_string();
    let mut settings = vec![("CATALOG_DB", cat.as_str()), ("ADMIN_TOKEN", TOKEN)];
    if let Some(l) = login {
        settings.push(("DB_USER", l));
    }
    let g = start(&settings);
    let watched = [me.as_str(), "postgres", victim.as_str()];
    let before = authid(&watched);
    for target in [me.as_str(), "postgres", victim.as_str()] {
        let p = uniq("lgr");
        let r = admin_post(g.addr, "/platform/register", &format!(r#"{{"platform":"{p}","db_user":"{target}"}}"#));
        assert_eq!((r.status, r.error_code().as_str()), (403, "role_not_allowed"), "{target}: {}", r.text());
        assert_eq!(authid(&watched), before, "refusing '{target}' changed a role");
    }
    // The gateway still logs in and works.
    assert_eq!(request(g.addr, "GET", "/health", &[], b"").status, 200);
    drop(g);
    // The legacy column takes the same path at start.
    let p = uniq("lgl");
    exec(&cat, &format!("INSERT INTO platforms (name, db_user) VALUES ('{p}', '{victim}')"));
    let g = start(&settings);
    assert!(eventually(Duration::from_secs(20), || {
        one(&cat, &format!("SELECT count(*) FROM platform_roles WHERE platform = '{p}'")) == "1"
    }));
    // The role check follows the row at once; give it a moment to have run.
    std::thread::sleep(Duration::from_secs(1));
    // On demand the same role is refused again, and the report does not say `completed`.
    let r = admin_post(g.addr, "/admin/isolate", "{}");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.error_code(), "isolation_incomplete", "{}", r.text());
    assert_eq!(r.json().get("status").and_then(Value::as_str), Some("completed_with_errors"), "{}", r.text());
    assert!(r.text().contains("role_not_allowed"), "{}", r.text());
    drop(g);
    assert_eq!(authid(&watched), before, "the start pass changed a legacy db_user that is not fit");
    exec("postgres", &format!("DROP ROLE {victim}"));
}

#[test]
fn a_refused_db_user_keeps_its_password_with_a_superuser_login() {
    refused_roles_keep_their_passwords(None);
}

#[test]
fn a_refused_db_user_keeps_its_password_with_the_least_rights_login() {
    let login = uniq("gw_least");
    exec("postgres", &format!("CREATE ROLE {login} LOGIN CREATEDB CREATEROLE PASSWORD 'login-password'"));
    refused_roles_keep_their_passwords(Some(&login));
}

/// A deploy that renames its session, turns off the dead-client check and swallows every cancel is
/// still ended at its limit: by pid and backend start, and the 504 comes once the backend is gone.
#[test]
fn a_deploy_that_renames_itself_and_ignores_cancels_is_ended() {
    let p = uniq("lgd");
    let cat = uniq("cat_lgd");
    let db = format!("{p}_main");
    let _clean = DropDatabases(vec![cat.clone(), db.clone()]);
    let g = start(&[("CATALOG_DB", cat.as_str()), ("ADMIN_TOKEN", TOKEN), ("DEPLOY_TIMEOUT_SECS", "1")]);
    let base = ("functions/f.sql", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';");
    assert_eq!(deploy(g.addr, "/register", &p, &[base]).status, 200);
    let stubborn = "SET application_name = 'stonescriptdb-gateway';\nSET client_connection_check_interval = 0;\n\
                    SET statement_timeout = 0;\nCREATE TABLE t1 (i int);\n\
                    DO $$ BEGIN LOOP BEGIN PERFORM pg_sleep(0.2); \
                    EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$;\n";
    let r = deploy(g.addr, "/migrate", &p, &[base, ("migrations/002_stubborn.sql", stubborn)]);
    assert_eq!(r.error_code(), "deploy_timeout", "{}", r.text());
    let left = query_col(
        "postgres",
        &format!("SELECT pid::text || ' ' || application_name FROM pg_stat_activity WHERE datname = '{db}'"),
    );
    assert!(left.is_empty(), "the deploy's backend outlived the answer: {left:?}");
    assert_eq!(one(&db, "SELECT count(*) FROM pg_class WHERE relname = 't1'"), "0");
}

fn call(addr: std::net::SocketAddr, platform: &str, function: &str) -> common::Resp {
    let body = format!(r#"{{"platform":"{platform}","function":"{function}","params":[]}}"#);
    request(addr, "POST", "/call", &[("Content-Type", "application/json")], body.as_bytes())
}

/// A `WITH HOLD` cursor a call declares does not outlive the call's session reset.
#[test]
fn a_cursor_with_hold_does_not_outlive_its_call() {
    let p = uniq("lgc");
    let cat = uniq("cat_lgc");
    let db = format!("{p}_main");
    let _clean = DropDatabases(vec![cat.clone(), db.clone()]);
    let g = start(&[("CATALOG_DB", cat.as_str()), ("ADMIN_TOKEN", TOKEN), ("MAX_CONNECTIONS_PER_POOL", "1")]);
    let fns = "CREATE FUNCTION hold() RETURNS int LANGUAGE plpgsql AS $$ BEGIN \
               EXECUTE 'DECLARE leak CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 1000) g'; RETURN 1; END $$;\n\
               CREATE FUNCTION held_cursors() RETURNS text LANGUAGE sql AS $$ SELECT string_agg(name, ',') FROM pg_cursors WHERE is_holdable $$;\n\
               CREATE FUNCTION backend() RETURNS int LANGUAGE sql AS $$ SELECT pg_backend_pid() $$;";
    assert_eq!(deploy(g.addr, "/register", &p, &[("functions/f.sql", fns)]).status, 200);
    let pid = common::db::scalar(&call(g.addr, &p, "backend"));
    let r = call(g.addr, &p, "hold");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(common::db::scalar(&call(g.addr, &p, "backend")), pid, "the calls share one connection");
    let r = call(g.addr, &p, "held_cursors");
    assert_eq!(common::db::scalar(&r), Value::Null, "{}", r.text());
}

/// A call that swallows its cancel gets its 504, then its backend is ended (by the login, matched
/// by pid and start), and until PostgreSQL reports it gone its connection still counts against the
/// pool's cap: no second backend is opened beside it.
#[test]
fn a_call_that_ignores_its_cancel_is_ended_and_counted_until_gone() {
    let p = uniq("lgt");
    let cat = uniq("cat_lgt");
    let db = format!("{p}_main");
    let role = format!("ssdb_{p}");
    let _clean = DropDatabases(vec![cat.clone(), db.clone()]);
    let g = start(&[
        ("CATALOG_DB", cat.as_str()),
        ("ADMIN_TOKEN", TOKEN),
        ("MAX_CONNECTIONS_PER_POOL", "1"),
        ("CALL_TIMEOUT_MS", "300"),
        ("CALL_TERMINATE_AFTER_MS", "1500"),
        ("POOL_WAIT_TIMEOUT_MS", "20000"),
    ]);
    let fns = "CREATE FUNCTION stubborn() RETURNS int LANGUAGE plpgsql AS $$ BEGIN \
               PERFORM set_config('application_name', 'stonescriptdb-gateway deploy', false); \
               FOR i IN 1..120 LOOP BEGIN PERFORM pg_sleep(0.25); EXCEPTION WHEN query_canceled THEN NULL; END; \
               END LOOP; RETURN 1; END $$;\n\
               CREATE FUNCTION quick() RETURNS int LANGUAGE sql AS 'SELECT 1';";
    assert_eq!(deploy(g.addr, "/register", &p, &[("functions/f.sql", fns)]).status, 200);
    let backends = || one("postgres", &format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}'"));
    let r = call(g.addr, &p, "stubborn");
    assert_eq!((r.status, r.error_code().as_str()), (504, "timeout"), "{}", r.text());
    let stuck = one("postgres", &format!("SELECT pid FROM pg_stat_activity WHERE usename = '{role}'"));
    assert!(!stuck.is_empty(), "the stubborn backend runs on after the 504");

    // A call meanwhile waits for the one slot instead of opening a second backend beside it.
    let addr = g.addr;
    let p2 = p.clone();
    let quick = std::thread::spawn(move || call(addr, &p2, "quick"));
    let mut most = 0;
    let gone = eventually(Duration::from_secs(15), || {
        most = most.max(backends().parse::<u32>().unwrap_or(0));
        one("postgres", &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {stuck}")) == "0"
    });
    assert!(gone, "the backend that ignored its cancel was not ended");
    let r = quick.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(most <= 1, "a second backend was opened while the first still ran ({most})");
}

/// An allowed untrusted extension is installed by the login with schema `extensions` first on the
/// script's path; the platform owns that schema, so what it planted there is refused first, and the
/// schema is the platform's again afterwards either way.
#[test]
fn an_extension_is_never_installed_beside_objects_the_platform_planted() {
    let p = uniq("lge");
    let cat = uniq("cat_lge");
    let db = format!("{p}_main");
    let role = format!("ssdb_{p}");
    let _clean = DropDatabases(vec![cat.clone(), db.clone()]);
    let g = start(&[("CATALOG_DB", cat.as_str()), ("ADMIN_TOKEN", TOKEN), ("EXTENSIONS_ALLOWED", "dblink")]);
    let plant = "CREATE SCHEMA IF NOT EXISTS extensions;\n\
                 CREATE FUNCTION extensions.texteq(text, name) RETURNS boolean LANGUAGE sql AS 'SELECT true';\n\
                 CREATE OPERATOR extensions.= (LEFTARG = text, RIGHTARG = name, FUNCTION = extensions.texteq);\n";
    let base = ("functions/f.sql", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';");
    let r = deploy(g.addr, "/register", &p, &[base, ("migrations/001_plant.sql", plant)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = deploy(g.addr, "/migrate", &p, &[base, ("migrations/001_plant.sql", plant), ("extensions/dblink.sql", "")]);
    assert_eq!(r.error_code(), "extension_not_allowed", "{}", r.text());
    assert_eq!(one(&db, "SELECT count(*) FROM pg_extension WHERE extname = 'dblink'"), "0");
    let owner = "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'extensions'";
    assert_eq!(one(&db, owner), role, "the schema went back to the platform");
    // Once the platform's own objects are gone, the install goes through.
    let clean = "DROP OPERATOR extensions.= (text, name); DROP FUNCTION extensions.texteq(text, name);\n";
    let files = [base, ("migrations/001_plant.sql", plant), ("migrations/002_clean.sql", clean)];
    let r = deploy(g.addr, "/migrate", &p, &files);
    assert_eq!(r.status, 200, "{}", r.text());
    // (Allowed extensions are installed before the migrations run.)
    let r = deploy(g.addr, "/migrate", &p, &[files[0], files[1], files[2], ("extensions/dblink.sql", "")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(one(&db, "SELECT count(*) FROM pg_extension WHERE extname = 'dblink'"), "1");
    assert_eq!(one(&db, owner), role);
}
