//! `stonescriptdb-gateway adopt` and `release`: taking over the databases stonescriptdb-gateway 1.x
//! created (recorded in the catalog, given to the platform's role, closed to PUBLIC, extensions out of
//! `/call`'s schemas, the 1.x tracking history kept), and the way back that gives them to the old
//! login again. Run as a PostgreSQL superuser like `setup-db`, whose connection options they share.
//! Every session opened in a platform's database pins `search_path` to `pg_catalog, pg_temp` and names
//! everything schema-qualified, so nothing the platform defined is evaluated by this command.

use std::collections::{BTreeMap, HashMap};

use stonescriptdb_gateway::catalog::{Catalog, pg_api};
use stonescriptdb_gateway::config::Config;
use stonescriptdb_gateway::deploy::upstream;
use stonescriptdb_gateway::error::ApiError;
use stonescriptdb_gateway::pg::blocking::Client;
use stonescriptdb_gateway::pg::params::ConnectParams;
use stonescriptdb_gateway::security::{names, roles};

use crate::setup_db;

pub const HELP: &str = "\
stonescriptdb-gateway adopt: take over the databases stonescriptdb-gateway 1.x created for the named
platforms ({platform}_main and {platform}_{tenant}) that this gateway's catalog does not record yet.
Each is recorded (main or tenant), given with everything in it to the platform's role (created when
missing), closed to PUBLIC, its extensions moved out of CALL_SCHEMAS into `extensions`, and its 1.x
tracking tables extended so every migration 1.x applied counts as applied and never runs again.
Run it as a PostgreSQL superuser after the new gateway has started once (it creates its catalog).
Running it again changes nothing.

stonescriptdb-gateway release: the way back. Gives the named platforms' databases (and everything in
them) to ROLE, opens them to PUBLIC as PostgreSQL creates databases, and removes them from the
catalog, so stonescriptdb-gateway 1.x logging in as ROLE serves them again.

USAGE:
  sudo -u postgres stonescriptdb-gateway adopt --platform NAME [--platform NAME]... [--from-login ROLE] [--dry-run] [OPTIONS]
  sudo -u postgres stonescriptdb-gateway release --platform NAME [--platform NAME]... --to-login ROLE [--dry-run] [OPTIONS]

  --platform NAME     a platform whose databases to take (normalised as the gateway does: lower case,
                      other characters become _); repeat for several
  --from-login ROLE   adopt only databases owned by ROLE (the 1.x gateway's login) or already by the
                      platform's role [default: any owner]
  --to-login ROLE     (release) the login that gets the databases back
  --dry-run           print what would be done; change nothing

OPTIONS (as setup-db): --superuser NAME, --host HOST, --port PORT, --env-file PATH, --KEY=VALUE

Output: one line per database (adopted, released, skipped and why, or failed and why). Exit 0 when
every database was adopted (or released), 1 when some failed or were skipped for a reason a person
must settle, 2 on a usage error.
";

struct Args {
    platforms: Vec<String>,
    login: Option<String>,
    dry_run: bool,
    rest: Vec<String>,
}

fn split_args(args: &[String], login_flag: &str) -> Result<Args, String> {
    let mut a = Args { platforms: Vec::new(), login: None, dry_run: false, rest: Vec::new() };
    // Flags of neither command's own (the connection options, settings) and their values go on to
    // setup-db's parser one argument at a time, as given.
    crate::setup_db::each_flag(args, |fl| {
        match fl.name {
            "--platform" => a.platforms.push(fl.value()?),
            n if n == login_flag => a.login = Some(fl.value()?),
            "--dry-run" if fl.inline.is_none() => a.dry_run = true,
            "--login" | "--new-password" => return Err(format!("{} belongs to setup-db", fl.name)),
            _ => a.rest.push(fl.arg.to_string()),
        }
        Ok(())
    })?;
    Ok(a)
}

/// What one named platform may claim in a database name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    pub platform: String,
    /// `None`: the main database.
    pub tenant: Option<String>,
}

/// Which of `platforms` (normalised) could own `db`: `{p}_main` is the main database, `{p}_{t}` a
/// tenant's (with `t` as its tenant id, which `/call` maps back to the same name).
pub(crate) fn claims(db: &str, platforms: &[String]) -> Vec<Claim> {
    let mut out = Vec::new();
    for p in platforms {
        let Some(rest) = db.strip_prefix(p.as_str()).and_then(|r| r.strip_prefix('_')) else { continue };
        if rest.is_empty() {
            continue;
        }
        let tenant = if rest == "main" { None } else { Some(rest.to_string()) };
        out.push(Claim { platform: p.clone(), tenant });
    }
    out
}

fn usage(e: &str) -> u8 {
    eprintln!("{e} (see --help)");
    2
}

/// What both commands need from the command line and the gateway's settings.
struct Setup {
    platforms: Vec<String>,
    login: Option<String>,
    dry_run: bool,
    su: ConnectParams,
    cfg: Config,
}

fn setup(cmd: &str, args: &[String], login_flag: &str) -> Result<Setup, u8> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{HELP}");
        return Err(0);
    }
    let a = split_args(args, login_flag).map_err(|e| usage(&format!("{cmd}: {e}")))?;
    let o = setup_db::parse_args(&a.rest).map_err(|e| usage(&format!("{cmd}: {e}")))?;
    if a.platforms.is_empty() {
        return Err(usage(&format!("{cmd}: name at least one --platform")));
    }
    let mut platforms = Vec::new();
    for p in &a.platforms {
        let n = names::platform(p).map_err(|e| usage(&format!("{cmd}: --platform {p}: {}", e.message)))?;
        if !platforms.contains(&n) {
            platforms.push(n);
        }
    }
    if let Some(l) = &a.login
        && (l.is_empty() || l.len() > names::MAX_IDENTIFIER_BYTES)
    {
        return Err(usage(&format!("{cmd}: {login_flag} needs a role name")));
    }
    let env: HashMap<String, String> = std::env::vars().collect();
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let cfg = setup_db::gateway_config(&o, &env, &cwd).map_err(|e| {
        eprintln!("{cmd}: configuration error: {e}");
        2
    })?;
    let su = setup_db::superuser_params(&o, &cfg.db.connect_params(), &env);
    Ok(Setup { platforms, login: a.login, dry_run: a.dry_run, su, cfg })
}

/// A session in a platform's database that evaluates nothing the platform defined.
fn connect_pinned(p: &ConnectParams, db: &str) -> Result<Client, ApiError> {
    let mut c = Client::connect(&p.with_dbname(db))
        .map_err(|e| pg_api(e, &format!("cannot connect to database '{db}'")).with_database(db))?;
    c.batch_execute("SET search_path = pg_catalog, pg_temp").map_err(|e| pg_api(e, "cannot pin search_path"))?;
    Ok(c)
}

fn first(c: &mut Client, sql: &str, params: &[Option<&str>]) -> Result<Option<String>, ApiError> {
    Ok(c.query(sql, params)
        .map_err(|e| pg_api(e, "query failed"))?
        .rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten()))
}

/// The catalog, opened the way the gateway opens it (as its own login, from its settings), so rows
/// and, on a first run, the catalog itself are the login's.
fn open_catalog(cfg: &Config) -> Result<Client, String> {
    let params = cfg.db.connect_params();
    Catalog::open(&params, &cfg.deploy.catalog_db).map(|c| c.client).map_err(|e| {
        format!(
            "cannot open the catalog {} as the gateway's login {} ({}); check DB_USER/DB_PASSWORD/DB_HOST in the env file",
            cfg.deploy.catalog_db, params.user, e.message
        )
    })
}

/// Line printed per database.
fn line(status: &str, db: &str, what: &str) {
    println!("{status:<8} {db}: {what}");
}

pub fn adopt_main(args: &[String]) -> u8 {
    let s = match setup("adopt", args, "--from-login") {
        Ok(s) => s,
        Err(code) => return code,
    };
    match adopt(&s) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("adopt: {e}");
            1
        }
    }
}

/// A database the catalog records: name → platform.
fn recorded(cat: &mut Client) -> Result<BTreeMap<String, String>, String> {
    let r = cat.query("SELECT name, platform FROM public.databases", &[]).map_err(|e| e.to_string())?;
    Ok(r.rows.into_iter().map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default())).collect())
}

fn adopt(s: &Setup) -> Result<u8, String> {
    let catalog_db = s.cfg.deploy.catalog_db.clone();
    let mut admin = Client::connect(&s.su).map_err(|e| format!("cannot connect as {}: {e}", s.su.user))?;
    if !roles::is_superuser(&mut admin).map_err(|e| e.into_message())? {
        return Err(format!("{} is not a PostgreSQL superuser; run adopt as one (e.g. sudo -u postgres …)", s.su.user));
    }
    if let Some(l) = &s.login
        && first(&mut admin, "SELECT 't' FROM pg_catalog.pg_roles WHERE rolname = $1", &[Some(l)])
            .map_err(|e| e.into_message())?
            .is_none()
    {
        return Err(format!("--from-login {l}: no such role"));
    }
    let mut cat = open_catalog(&s.cfg)?;
    let known = recorded(&mut cat)?;
    let dbs = admin
        .query(
            "SELECT datname::text, pg_catalog.pg_get_userbyid(datdba)::text FROM pg_catalog.pg_database \
             WHERE NOT datistemplate AND datname <> $1 ORDER BY datname",
            &[Some(&catalog_db)],
        )
        .map_err(|e| e.to_string())?;
    let login = s.cfg.db.connect_params().user;
    let mut failed = 0;
    let mut roles_ready: HashMap<String, Result<String, String>> = HashMap::new();
    for row in dbs.rows {
        let (db, owner) = (row[0].clone().unwrap_or_default(), row[1].clone().unwrap_or_default());
        let c = claims(&db, &s.platforms);
        if c.is_empty() {
            continue;
        }
        if let Some(p) = known.get(&db) {
            if c.iter().any(|x| &x.platform == p) {
                line("skipped", &db, &format!("already recorded for platform {p} (adopted before, or created here)"));
            } else {
                line("skipped", &db, &format!("recorded for platform {p}"));
            }
            continue;
        }
        if c.len() > 1 {
            let who: Vec<&str> = c.iter().map(|x| x.platform.as_str()).collect();
            line("skipped", &db, &format!("platforms {} could both claim it; adopt it by hand", who.join(" and ")));
            failed += 1;
            continue;
        }
        let claim = &c[0];
        let what = match &claim.tenant {
            None => format!("main database of platform {}", claim.platform),
            Some(t) => format!("tenant {t} of platform {}", claim.platform),
        };
        let role = match platform_role(&mut cat, &s.cfg, &claim.platform) {
            Ok(r) => r,
            Err(e) => {
                line("failed", &db, &e);
                failed += 1;
                continue;
            }
        };
        if let Some(l) = &s.login
            && &owner != l
            && owner != role.0
        {
            line("skipped", &db, &format!("{what}, but owned by {owner}, not --from-login {l}"));
            continue;
        }
        let history = match count_history(&s.su, &db) {
            Ok(n) => n,
            Err(e) => {
                line("failed", &db, &e.message);
                failed += 1;
                continue;
            }
        };
        if s.dry_run {
            line(
                "plan",
                &db,
                &format!(
                    "{what}: would record it, give it (owner {owner}) to role {}, close it to PUBLIC, move extensions \
                     out of CALL_SCHEMAS, keep {history} recorded migration(s)",
                    role.0
                ),
            );
            continue;
        }
        let ready = roles_ready
            .entry(claim.platform.clone())
            .or_insert_with(|| ensure_role(&mut admin, &mut cat, &s.cfg, &claim.platform, &role, &login))
            .clone();
        if let Err(e) = ready {
            line("failed", &db, &e);
            failed += 1;
            continue;
        }
        match adopt_one(s, &mut admin, &mut cat, &db, claim, &role.0) {
            Ok(done) => line(
                "adopted",
                &db,
                &format!(
                    "{what}; owner {owner} -> {}; {} object(s) given; extensions moved: {}; {history} migration(s) kept as applied",
                    role.0,
                    done.objects_reassigned,
                    if done.extensions_moved.is_empty() {
                        "none".to_string()
                    } else {
                        done.extensions_moved.join(", ")
                    }
                ),
            ),
            Err(e) => {
                line("failed", &db, &e);
                failed += 1;
            }
        }
    }
    admin.close();
    cat.close();
    Ok(if failed == 0 { 0 } else { 1 })
}

/// The platform's role name and whether an admin named it (`adopted` in `platform_roles`).
fn platform_role(cat: &mut Client, cfg: &Config, platform: &str) -> Result<(String, bool), String> {
    let r = cat
        .query("SELECT role, adopted FROM public.platform_roles WHERE platform = $1", &[Some(platform)])
        .map_err(|e| e.to_string())?;
    if let Some(row) = r.rows.into_iter().next() {
        return Ok((row[0].clone().unwrap_or_default(), row[1].as_deref() == Some("t")));
    }
    Ok((roles::role_name(&cfg.security.role_prefix, platform).map_err(|e| e.into_message())?, false))
}

/// Makes sure of the platform, its role, the catalog's record of the role, and that the gateway's
/// login may act as the role (it gives databases to it at deploys).
fn ensure_role(
    admin: &mut Client,
    cat: &mut Client,
    cfg: &Config,
    platform: &str,
    role: &(String, bool),
    login: &str,
) -> Result<String, String> {
    roles::ensure_platform_role(admin, platform, &role.0, &cfg.security.platform_secret, role.1)
        .map_err(|e| format!("platform role {}: {}", role.0, e.message))?;
    let member = first(
        admin,
        "SELECT pg_catalog.pg_has_role($1, $2, 'MEMBER')::text FROM pg_catalog.pg_roles WHERE rolname = $1",
        &[Some(login), Some(&role.0)],
    )
    .map_err(|e| e.into_message())?;
    match member.as_deref() {
        Some("true") => {}
        Some(_) => admin
            .batch_execute(&format!("GRANT {} TO {}", roles::ident(&role.0), roles::ident(login)))
            .map_err(|e| format!("cannot let {login} act as {}: {e}", role.0))?,
        None => return Err(format!("the gateway's login {login} (DB_USER) does not exist; run setup-db first")),
    }
    cat.query("INSERT INTO public.platforms (name) VALUES ($1) ON CONFLICT (name) DO NOTHING", &[Some(platform)])
        .map_err(|e| format!("cannot record platform {platform}: {e}"))?;
    cat.query(
        "INSERT INTO public.platform_roles (platform, role, adopted) VALUES ($1, $2, $3::boolean) \
         ON CONFLICT (platform) DO NOTHING",
        &[Some(platform), Some(&role.0), Some(if role.1 { "true" } else { "false" })],
    )
    .map_err(|e| format!("cannot record role {} of platform {platform}: {e}", role.0))?;
    Ok(role.0.clone())
}

/// How many migrations the database's tracking table records (0 when it has none).
fn count_history(su: &ConnectParams, db: &str) -> Result<i64, ApiError> {
    let mut c = connect_pinned(su, db)?;
    let n = if first(&mut c, "SELECT pg_catalog.to_regclass('public._stonescriptdb_gateway_migrations')::text", &[])?
        .is_some()
    {
        first(&mut c, "SELECT pg_catalog.count(*)::text FROM public._stonescriptdb_gateway_migrations", &[])?
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    } else {
        0
    };
    c.close();
    Ok(n)
}

/// Inside the database, in one transaction: tracking tables to the shared layout, every object to the
/// role, extensions out of the `/call` schemas. Then the database itself, then the catalog row.
fn adopt_one(
    s: &Setup,
    admin: &mut Client,
    cat: &mut Client,
    db: &str,
    claim: &Claim,
    role: &str,
) -> Result<roles::Confined, String> {
    let mut c = connect_pinned(&s.su, db).map_err(|e| e.into_message())?;
    let inside = (|| -> Result<roles::Confined, String> {
        c.batch_execute("BEGIN").map_err(|e| e.to_string())?;
        let cols = upstream::fold(
            c.query(upstream::COLUMNS_SQL, &[])
                .map_err(|e| e.to_string())?
                .rows
                .into_iter()
                .map(|r| r.into_iter().map(Option::unwrap_or_default).collect())
                .collect(),
        );
        let mut sql = upstream::upgrade_sql(&cols);
        if sql.is_empty() {
            sql = upstream::fill_sql(&cols);
        }
        for stmt in sql {
            c.batch_execute(&stmt).map_err(|e| format!("tracking tables: {e}"))?;
        }
        let done = roles::confine_objects(&mut c, role, &s.cfg.call.schemas).map_err(|e| e.into_message())?;
        if !done.problems.is_empty() {
            return Err(format!("nothing changed: {}", done.problems.join("; ")));
        }
        c.batch_execute("COMMIT").map_err(|e| e.to_string())?;
        Ok(done)
    })();
    if inside.is_err() {
        let _ = c.batch_execute("ROLLBACK");
    }
    c.close();
    let done = inside?;
    roles::confine_database(admin, db, role, &s.cfg.call.schemas).map_err(|e| e.into_message())?;
    cat.query(
        "INSERT INTO public.databases (name, platform, kind, tenant_id, confined_at) VALUES ($1, $2, $3, $4, now()) \
         ON CONFLICT (name) DO NOTHING",
        &[
            Some(db),
            Some(&claim.platform),
            Some(if claim.tenant.is_some() { "tenant" } else { "main" }),
            claim.tenant.as_deref(),
        ],
    )
    .map_err(|e| format!("given to {role}, but recording it in the catalog failed (run adopt again): {e}"))?;
    Ok(done)
}

pub fn release_main(args: &[String]) -> u8 {
    let s = match setup("release", args, "--to-login") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let Some(to) = s.login.clone() else {
        return usage("release: --to-login ROLE names the login that gets the databases back");
    };
    match release(&s, &to) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("release: {e}");
            1
        }
    }
}

fn release(s: &Setup, to: &str) -> Result<u8, String> {
    let mut admin = Client::connect(&s.su).map_err(|e| format!("cannot connect as {}: {e}", s.su.user))?;
    if !roles::is_superuser(&mut admin).map_err(|e| e.into_message())? {
        return Err(format!("{} is not a PostgreSQL superuser; run release as one", s.su.user));
    }
    if first(&mut admin, "SELECT 't' FROM pg_catalog.pg_roles WHERE rolname = $1", &[Some(to)])
        .map_err(|e| e.into_message())?
        .is_none()
    {
        return Err(format!("--to-login {to}: no such role"));
    }
    let mut cat = open_catalog(&s.cfg)?;
    let mut failed = 0;
    for p in &s.platforms {
        let rows = cat
            .query(
                "SELECT d.name, r.role FROM public.databases d LEFT JOIN public.platform_roles r ON r.platform = d.platform \
                 WHERE d.platform = $1 AND d.kind IN ('main', 'tenant') AND d.server = 'default' ORDER BY d.name",
                &[Some(p)],
            )
            .map_err(|e| e.to_string())?;
        if rows.rows.is_empty() {
            eprintln!("release: the catalog records no database of platform {p}");
        }
        for r in rows.rows {
            let db = r[0].clone().unwrap_or_default();
            let Some(role) = r[1].clone() else {
                line("skipped", &db, "its platform has no role of its own; nothing to give back");
                continue;
            };
            if s.dry_run {
                line("plan", &db, &format!("would give it and its objects from {role} to {to}, open it, forget it"));
                continue;
            }
            match release_one(s, &mut admin, &mut cat, &db, &role, to) {
                Ok(()) => {
                    line("released", &db, &format!("owner {role} -> {to}; open to PUBLIC; no longer in the catalog"))
                }
                Err(e) => {
                    line("failed", &db, &e);
                    failed += 1;
                }
            }
        }
    }
    admin.close();
    cat.close();
    Ok(if failed == 0 { 0 } else { 1 })
}

fn release_one(s: &Setup, admin: &mut Client, cat: &mut Client, db: &str, role: &str, to: &str) -> Result<(), String> {
    let mut c = connect_pinned(&s.su, db).map_err(|e| e.into_message())?;
    let inside = (|| -> Result<(), String> {
        c.batch_execute("BEGIN").map_err(|e| e.to_string())?;
        // Objects only: the role's databases are given one at a time below, and its other databases
        // (other tenants) stay until their turn.
        let objs = c
            .query(
                "SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE ' WHEN 'v' THEN 'VIEW ' WHEN 'm' THEN 'MATERIALIZED VIEW ' \
                 WHEN 'f' THEN 'FOREIGN TABLE ' ELSE 'TABLE ' END || c.oid::pg_catalog.regclass::text \
                 FROM pg_catalog.pg_class c WHERE c.relowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1) \
                 AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 \
                 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                 AND d.objid = c.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i'))) \
                 UNION ALL SELECT 'ROUTINE ' || p.oid::pg_catalog.regprocedure::text FROM pg_catalog.pg_proc p \
                 WHERE p.proowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1) \
                 UNION ALL SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN ' ELSE 'TYPE ' END || t.oid::pg_catalog.regtype::text \
                 FROM pg_catalog.pg_type t WHERE t.typowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1) \
                 AND t.typelem = 0 AND (t.typtype IN ('e', 'r', 'd') OR (t.typtype = 'c' AND \
                 (SELECT relkind FROM pg_catalog.pg_class WHERE oid = t.typrelid) = 'c')) \
                 UNION ALL SELECT 'SCHEMA ' || pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_namespace n \
                 WHERE n.nspowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1)",
                &[Some(role)],
            )
            .map_err(|e| e.to_string())?;
        // Sequences owned by a column move with their table (left out above).
        for o in objs.rows.into_iter().filter_map(|r| r.into_iter().next().flatten()) {
            c.batch_execute(&format!("ALTER {o} OWNER TO {}", roles::ident(to))).map_err(|e| format!("{o}: {e}"))?;
        }
        // Rows this gateway wrote that lack the keys 1.x reads (it would fail on their NULLs).
        let cols = upstream::fold(
            c.query(upstream::COLUMNS_SQL, &[])
                .map_err(|e| e.to_string())?
                .rows
                .into_iter()
                .map(|r| r.into_iter().map(Option::unwrap_or_default).collect())
                .collect(),
        );
        if cols.get("functions").is_some_and(|f| f.contains("function_name")) {
            c.batch_execute("DELETE FROM public._stonescriptdb_gateway_functions WHERE function_name IS NULL")
                .map_err(|e| e.to_string())?;
        }
        if cols.get("changelog").is_some_and(|f| f.contains("change_type")) {
            c.batch_execute(
                "UPDATE public._stonescriptdb_gateway_changelog SET change_type = kind || ':' || action, \
                 object_name = object WHERE change_type IS NULL",
            )
            .map_err(|e| e.to_string())?;
        }
        c.batch_execute("COMMIT").map_err(|e| e.to_string())
    })();
    if inside.is_err() {
        let _ = c.batch_execute("ROLLBACK");
    }
    c.close();
    inside?;
    // `extensions` stays on the path: the extensions adopt moved there are still found.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db} OWNER TO {to}; GRANT CONNECT, TEMPORARY ON DATABASE {db} TO PUBLIC; \
             ALTER DATABASE {db} SET search_path TO \"$user\", public, {ext}",
            db = roles::ident(db),
            to = roles::ident(to),
            ext = roles::ident(roles::EXTENSION_SCHEMA)
        ))
        .map_err(|e| e.to_string())?;
    cat.query("DELETE FROM public.databases WHERE name = $1", &[Some(db)]).map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_map_to_main_and_tenants() {
        let p = v(&["acme"]);
        assert_eq!(claims("acme_main", &p), vec![Claim { platform: "acme".into(), tenant: None }]);
        assert_eq!(claims("acme_t1", &p), vec![Claim { platform: "acme".into(), tenant: Some("t1".into()) }]);
        assert!(claims("acme", &p).is_empty());
        assert!(claims("acme_", &p).is_empty());
        assert!(claims("acmex_main", &p).is_empty());
    }

    #[test]
    fn a_name_two_platforms_fit_is_claimed_by_both() {
        let c = claims("a_b_main", &v(&["a", "a_b"]));
        assert_eq!(c.len(), 2);
        assert_eq!(c[0], Claim { platform: "a".into(), tenant: Some("b_main".into()) });
        assert_eq!(c[1], Claim { platform: "a_b".into(), tenant: None });
    }

    #[test]
    fn own_flags_are_taken_and_the_rest_left_for_setup_db() {
        let a = split_args(
            &v(&["--platform", "x", "--platform=y", "--from-login", "old", "--dry-run", "--port", "1"]),
            "--from-login",
        )
        .unwrap();
        assert_eq!(a.platforms, v(&["x", "y"]));
        assert_eq!(a.login.as_deref(), Some("old"));
        assert!(a.dry_run);
        assert_eq!(a.rest, v(&["--port", "1"]));
        assert!(split_args(&v(&["--platform"]), "--from-login").is_err());
        assert!(split_args(&v(&["--login", "x"]), "--from-login").is_err());
    }
}
