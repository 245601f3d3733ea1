//! Platform principals: each platform's own PostgreSQL role (its name, its password derived from the
//! gateway's secret), how the gateway creates and checks it, and how a database is confined to it
//! (owner, grants, objects, extensions). Runs on worker threads with the blocking client, always as
//! the gateway's own login; platform SQL never runs in these sessions.

use sha2::{Digest, Sha256};

use crate::catalog::pg_api;
use crate::error::{ApiError, Kind};
use crate::pg::blocking::Client;
use crate::security::digest::hmac_sha256;
use crate::security::names::MAX_IDENTIFIER_BYTES;
use crate::security::random::hex;

pub use crate::config::EXTENSION_SCHEMA;

/// The comment the gateway puts on a role it created; a role without it is never taken over.
fn mark(platform: &str) -> String {
    format!("stonescriptdb-gateway platform role: {platform}")
}

/// Quotes an identifier for SQL text.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The role platform `platform` (already a sanitised name) logs in as.
pub fn role_name(prefix: &str, platform: &str) -> Result<String, ApiError> {
    let r = format!("{prefix}{platform}");
    if r.len() > MAX_IDENTIFIER_BYTES {
        return Err(ApiError::new(
            Kind::InvalidRequest,
            format!(
                "platform name '{platform}' is too long: its PostgreSQL role '{r}' would exceed 63 bytes (at most {} \
                 characters with PLATFORM_ROLE_PREFIX '{prefix}')",
                MAX_IDENTIFIER_BYTES - prefix.len()
            ),
        ));
    }
    Ok(r)
}

/// A platform role's password: derived, so it is stored nowhere and the same on every instance that
/// shares `PLATFORM_SECRET`.
pub fn password(secret: &[u8], role: &str) -> String {
    hex(&hmac_sha256(secret, format!("stonescriptdb-gateway/platform-role/{role}").as_bytes()))
}

/// What PostgreSQL says about a role.
#[derive(Debug, Clone, Default)]
pub struct RoleFacts {
    pub superuser: bool,
    pub createdb: bool,
    pub createrole: bool,
    pub replication: bool,
    pub bypassrls: bool,
    pub login: bool,
    pub comment: Option<String>,
    /// Roles it is a member of (predefined roles included).
    pub member_of: Vec<String>,
}

impl RoleFacts {
    /// Why a platform must not run as this role; empty when it is fit.
    pub fn unfit(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (bad, what) in [
            (self.superuser, "SUPERUSER"),
            (self.createdb, "CREATEDB"),
            (self.createrole, "CREATEROLE"),
            (self.replication, "REPLICATION"),
            (self.bypassrls, "BYPASSRLS"),
        ] {
            if bad {
                v.push(what.to_string());
            }
        }
        if !self.login {
            v.push("NOLOGIN".to_string());
        }
        for m in &self.member_of {
            v.push(format!("member of {m}"));
        }
        v
    }
}

/// The facts of `role`, `None` when there is no such role.
pub fn role_facts(admin: &mut Client, role: &str) -> Result<Option<RoleFacts>, ApiError> {
    let r = admin
        .query(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin, \
                    shobj_description(oid, 'pg_authid'), \
                    (SELECT string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_auth_members m \
                     JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid) \
             FROM pg_roles r WHERE rolname = $1",
            &[Some(role)],
        )
        .map_err(|e| pg_api(e, "cannot look up roles"))?;
    Ok(r.rows.into_iter().next().map(|row| facts_from_row(&row)))
}

/// A role's facts from the first eight columns both role queries share: the attributes as `t`/`f`,
/// the comment, and the roles it is a member of, comma-separated.
fn facts_from_row(row: &[Option<String>]) -> RoleFacts {
    let t = |i: usize| row[i].as_deref() == Some("t");
    RoleFacts {
        superuser: t(0),
        createdb: t(1),
        createrole: t(2),
        replication: t(3),
        bypassrls: t(4),
        login: t(5),
        comment: row[6].clone(),
        member_of: row[7].as_deref().map(|s| s.split(',').map(str::to_string).collect()).unwrap_or_default(),
    }
}

/// Whether the session user of `admin` is a superuser.
pub fn is_superuser(admin: &mut Client) -> Result<bool, ApiError> {
    let r = admin
        .query("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[])
        .map_err(|e| pg_api(e, "cannot look up the gateway's login"))?;
    Ok(r.rows.first().is_some_and(|row| row[0].as_deref() == Some("t")))
}

/// A SCRAM verifier of the password, so the password itself never appears in SQL text (and so in no
/// server log line).
fn verifier(secret: &[u8], role: &str) -> String {
    postgres_protocol::password::scram_sha_256(password(secret, role).as_bytes())
}

/// Creates the platform's role, or checks and refreshes the one that exists.
///
/// An existing role is used only when the gateway made it for this platform (its comment says so) or
/// the catalog records it for this platform (`adopted`: an admin named it), and only while it has no
/// attribute or membership a platform must not have. Its password is set to the derived one each time,
/// so a changed `PLATFORM_SECRET` takes effect at the next deploy or start.
pub fn ensure_platform_role(
    admin: &mut Client,
    platform: &str,
    role: &str,
    secret: &[u8],
    adopted: bool,
) -> Result<(), ApiError> {
    // Two sessions changing one role at once fail with "tuple concurrently updated": take turns.
    admin
        .query("SELECT pg_advisory_lock(hashtext('stonescriptdb:role:' || $1))", &[Some(role)])
        .map_err(|e| pg_api(e, "cannot lock the platform role"))?;
    let r = ensure_locked(admin, platform, role, secret, adopted);
    let _ = admin.query("SELECT pg_advisory_unlock(hashtext('stonescriptdb:role:' || $1))", &[Some(role)]);
    r
}

fn ensure_locked(admin: &mut Client, platform: &str, role: &str, secret: &[u8], adopted: bool) -> Result<(), ApiError> {
    let mut facts = role_facts(admin, role)?;
    if facts.is_none() {
        let sql = format!(
            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT \
             PASSWORD {}",
            ident(role),
            literal(&verifier(secret, role))
        );
        match admin.batch_execute(&sql) {
            Ok(()) => {
                admin
                    .batch_execute(&format!("COMMENT ON ROLE {} IS {}", ident(role), literal(&mark(platform))))
                    .map_err(|e| pg_api(e, &format!("cannot mark role '{role}'")))?;
            }
            // Another gateway created it at the same moment: check it like any existing role.
            Err(crate::pg::dberror::PgError::Db(d)) if d.code == "42710" || d.code == "23505" => {}
            Err(e) => {
                return Err(pg_api(e, &format!("cannot create the platform role '{role}'"))
                    .with_cause("the gateway's login needs CREATEROLE (see README, Security model)".to_string()));
            }
        }
        facts = role_facts(admin, role)?;
    } else {
        let f = facts.as_ref().cloned().unwrap_or_default();
        let marked_for_other =
            f.comment.as_deref().is_some_and(|c| c.starts_with(&mark("")) && c != mark(platform).as_str());
        if marked_for_other || (!adopted && f.comment.as_deref() != Some(mark(platform).as_str())) {
            return Err(ApiError::new(
                Kind::NameConflict,
                format!(
                    "a PostgreSQL role named '{role}' already exists and was not created by the gateway for platform \
                     '{platform}'; choose another platform name or drop that role"
                ),
            ));
        }
        // Checked before the password changes: a refused role keeps the password it had (naming the
        // gateway's own login, or `postgres`, must not lock anyone out).
        check_fit(admin, role, &f)?;
        admin
            // INHERIT: the owner's rights on its database's `public` schema come through the implicit
            // pg_database_owner membership, which only an inheriting role receives.
            .batch_execute(&format!("ALTER ROLE {} INHERIT PASSWORD {}", ident(role), literal(&verifier(secret, role))))
            .map_err(|e| pg_api(e, &format!("cannot set the password of role '{role}'")))?;
    }
    let f = facts.ok_or_else(|| ApiError::new(Kind::Internal, format!("role '{role}' vanished while created")))?;
    check_fit(admin, role, &f)?;
    if !is_superuser(admin)? {
        // CREATE DATABASE … OWNER and ALTER … OWNER TO need the caller to be able to act as the new
        // owner. The grant goes to the gateway's login only, never to another platform's role.
        let member = admin
            .query("SELECT pg_has_role(current_user, $1, 'MEMBER')", &[Some(role)])
            .map_err(|e| pg_api(e, "cannot check role membership"))?;
        if member.rows.first().is_none_or(|row| row[0].as_deref() != Some("t")) {
            admin
                .batch_execute(&format!("GRANT {} TO CURRENT_USER", ident(role)))
                .map_err(|e| pg_api(e, &format!("cannot let the gateway act as role '{role}'")))?;
        }
    }
    Ok(())
}

/// Refuses a role a platform must not run as: the gateway's own login, or one with an attribute or
/// membership a platform must not have.
fn check_fit(admin: &mut Client, role: &str, f: &RoleFacts) -> Result<(), ApiError> {
    let r = admin
        .query("SELECT current_user::text, session_user::text", &[])
        .map_err(|e| pg_api(e, "cannot read current_user"))?;
    let me: Vec<String> = r.rows.into_iter().next().unwrap_or_default().into_iter().flatten().collect();
    check_fit_as(&me, role, f)
}

/// [`check_fit`] with the gateway's `current_user` and `session_user` already read.
fn check_fit_as(me: &[String], role: &str, f: &RoleFacts) -> Result<(), ApiError> {
    if me.iter().any(|m| m == role) {
        return Err(ApiError::new(
            Kind::RoleNotAllowed,
            format!("role '{role}' is the gateway's own login; a platform cannot run as it"),
        ));
    }
    // The gateway itself may be a member (it needs that to give databases to the role); anything
    // else the role belongs to is a right the platform would gain.
    let unfit: Vec<String> =
        f.unfit().into_iter().filter(|u| !me.iter().any(|c| *u == format!("member of {c}"))).collect();
    if !unfit.is_empty() {
        return Err(ApiError::new(
            Kind::RoleNotAllowed,
            format!("role '{role}' has rights a platform must not have: {}", unfit.join(", ")),
        ));
    }
    Ok(())
}

/// Where a role's password was set by this process with which secret: (server, gateway login, role,
/// first bytes of the secret's hash).
type Known = (String, String, String, String);

/// Roles whose password this process has set on a server: a later deploy only checks the role.
static PASSWORD_SET: std::sync::Mutex<Option<std::collections::HashSet<Known>>> = std::sync::Mutex::new(None);

fn known_key(target: &str, login: &str, role: &str, secret: &[u8]) -> Known {
    (target.to_string(), login.to_string(), role.to_string(), hex(&Sha256::digest(secret)[..8]))
}

/// What a deploy needs to know of a role whose password this process already set, in one round trip:
/// its facts, whether it still inherits, who the gateway is, and whether the gateway may act as it.
const RECHECK_SQL: &str = "SELECT r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolreplication, r.rolbypassrls, \
     r.rolcanlogin, pg_catalog.shobj_description(r.oid, 'pg_authid'), \
     (SELECT pg_catalog.string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_catalog.pg_auth_members m \
      JOIN pg_catalog.pg_roles g ON g.oid OPERATOR(pg_catalog.=) m.roleid WHERE m.member OPERATOR(pg_catalog.=) r.oid), \
     r.rolinherit, current_user::text, session_user::text, \
     (SELECT s.rolsuper FROM pg_catalog.pg_roles s WHERE s.rolname OPERATOR(pg_catalog.=) current_user), \
     pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER') \
     FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) $1";

/// [`ensure_platform_role`], but the password is set only once per process, server and secret (it is
/// derived, so it cannot have changed unless someone else set it: then [`forget_password`] and call
/// again). Every call still checks the role as the full path does (its mark, its attributes and
/// memberships, `INHERIT`, the gateway's membership), in one round trip; anything that is not as the
/// full path leaves it goes through the full path, which repairs or refuses it.
pub fn ensure_platform_role_known(
    admin: &mut Client,
    target: &str,
    login: &str,
    platform: &str,
    role: &str,
    secret: &[u8],
    adopted: bool,
) -> Result<(), ApiError> {
    let key = known_key(target, login, role, secret);
    let known = PASSWORD_SET.lock().map(|g| g.as_ref().is_some_and(|s| s.contains(&key))).unwrap_or(false);
    if known && recheck(admin, platform, role, adopted)? {
        return Ok(());
    }
    forget_password(target, login, role, secret);
    ensure_platform_role(admin, platform, role, secret, adopted)?;
    if let Ok(mut g) = PASSWORD_SET.lock() {
        g.get_or_insert_with(Default::default).insert(key);
    }
    Ok(())
}

/// Makes the next [`ensure_platform_role_known`] of `role` set its password again (a login as the
/// role was refused: another process set another one).
pub fn forget_password(target: &str, login: &str, role: &str, secret: &[u8]) {
    let key = known_key(target, login, role, secret);
    if let Ok(mut g) = PASSWORD_SET.lock()
        && let Some(s) = g.as_mut()
    {
        s.remove(&key);
    }
}

/// `Ok(true)`: the role is as the full path left it. `Ok(false)`: it is gone or needs the full path
/// (which repairs what it can and refuses the rest with its own errors). `Err`: refused here.
fn recheck(admin: &mut Client, platform: &str, role: &str, adopted: bool) -> Result<bool, ApiError> {
    let r = admin.query(RECHECK_SQL, &[Some(role)]).map_err(|e| pg_api(e, "cannot look up roles"))?;
    let Some(row) = r.rows.into_iter().next() else { return Ok(false) };
    let t = |i: usize| row[i].as_deref() == Some("t");
    let f = facts_from_row(&row);
    let marked_for_other =
        f.comment.as_deref().is_some_and(|c| c.starts_with(&mark("")) && c != mark(platform).as_str());
    if marked_for_other || (!adopted && f.comment.as_deref() != Some(mark(platform).as_str())) {
        return Ok(false);
    }
    let me: Vec<String> = [row[9].clone(), row[10].clone()].into_iter().flatten().collect();
    check_fit_as(&me, role, &f)?;
    // Not inheriting, or the gateway no longer a member: the full path sets both again.
    Ok(t(8) && (t(11) || t(12)))
}

/// Roles whose password this process has set with its secret (role, first bytes of the secret's hash).
static REFRESHED: std::sync::Mutex<Option<std::collections::HashSet<(String, String)>>> = std::sync::Mutex::new(None);

/// [`ensure_platform_role`] once per role and secret in this process: at start every recorded role gets
/// the password this process derives (a new `PLATFORM_SECRET`, or a new random one, takes effect),
/// and later calls of the same role cost nothing.
pub fn ensure_once(
    admin: &mut Client,
    platform: &str,
    role: &str,
    secret: &[u8],
    adopted: bool,
) -> Result<(), ApiError> {
    let key = (role.to_string(), hex(&Sha256::digest(secret)[..8]));
    if REFRESHED.lock().map(|g| g.as_ref().is_some_and(|s| s.contains(&key))).unwrap_or(false) {
        return Ok(());
    }
    ensure_platform_role(admin, platform, role, secret, adopted)?;
    if let Ok(mut g) = REFRESHED.lock() {
        g.get_or_insert_with(Default::default).insert(key);
    }
    Ok(())
}

/// Gives a database to its platform's role and closes it to everyone else. Idempotent.
pub fn confine_database(
    admin: &mut Client,
    database: &str,
    role: &str,
    call_schemas: &[String],
) -> Result<(), ApiError> {
    let mut path = vec!["\"$user\"".to_string()];
    path.extend(call_schemas.iter().map(|s| ident(s)));
    path.push(ident(EXTENSION_SCHEMA));
    let sql = format!(
        "ALTER DATABASE {db} OWNER TO {r}; REVOKE ALL ON DATABASE {db} FROM PUBLIC; \
         ALTER DATABASE {db} SET search_path TO {path}",
        db = ident(database),
        r = ident(role),
        path = path.join(", ")
    );
    admin
        .batch_execute(&sql)
        .map_err(|e| pg_api(e, &format!("cannot give database '{database}' to role '{role}'")).with_database(database))
}

/// Creates a database owned by the platform's role, closed to PUBLIC. `Ok(false)` when it existed.
pub fn create_platform_database(
    admin: &mut Client,
    database: &str,
    role: &str,
    call_schemas: &[String],
) -> Result<bool, ApiError> {
    let created = crate::catalog::create_database(admin, database)?;
    if created && let Err(e) = confine_database(admin, database, role, call_schemas) {
        let _ = crate::catalog::drop_database(admin, database);
        return Err(e);
    }
    Ok(created)
}

/// Installs untrusted extensions (`EXTENSIONS_ALLOWED`) into [`EXTENSION_SCHEMA`] from `db`, a session
/// of the gateway's login in the platform's database. An extension script runs with that schema first
/// on its path, and the schema is the platform role's: an operator or function planted there would run
/// as the login. So the schema is taken from the role first (committed, so no new object can appear in
/// it), transactions that began before are waited for, the install is refused while the schema holds
/// anything that is not part of an extension, and the schema goes back to the role in every case.
pub fn install_extensions(
    db: &mut Client,
    role: &str,
    names: &[String],
    wait: std::time::Duration,
) -> Result<(), ApiError> {
    let (s, r) = (ident(EXTENSION_SCHEMA), ident(role));
    db.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s} AUTHORIZATION {r}; ALTER SCHEMA {s} OWNER TO CURRENT_USER; \
         REVOKE CREATE ON SCHEMA {s} FROM PUBLIC, {r}"
    ))
    .map_err(|e| pg_api(e, "cannot take the extensions schema for the install"))?;
    let installed = install_in_taken_schema(db, names, wait);
    let back = db
        .batch_execute(&format!("ALTER SCHEMA {s} OWNER TO {r}"))
        .map_err(|e| pg_api(e, "cannot give the extensions schema back to the platform's role"));
    installed.and(back)
}

fn install_in_taken_schema(db: &mut Client, names: &[String], wait: std::time::Duration) -> Result<(), ApiError> {
    // A transaction that passed its privilege check before the schema changed hands may still add
    // an object to it: wait until every transaction older than that change has ended.
    let taken = db
        .query("SELECT pg_catalog.clock_timestamp()::pg_catalog.text", &[])
        .map_err(|e| pg_api(e, "cannot read the clock"))?
        .rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
        .unwrap_or_default();
    let until = std::time::Instant::now() + wait;
    loop {
        let r = db
            .query(
                "SELECT pg_catalog.count(*)::pg_catalog.text FROM pg_catalog.pg_stat_activity a \
                 WHERE a.datname OPERATOR(pg_catalog.=) pg_catalog.current_database() \
                 AND a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid() \
                 AND a.xact_start OPERATOR(pg_catalog.<) $1::pg_catalog.timestamptz",
                &[Some(&taken)],
            )
            .map_err(|e| pg_api(e, "cannot list the database's sessions"))?;
        if r.rows.first().and_then(|row| row[0].as_deref()) == Some("0") {
            break;
        }
        if std::time::Instant::now() >= until {
            return Err(ApiError::new(
                Kind::DeployPlatformBusy,
                "transactions of the platform kept running while an allowed extension was to be installed; retry",
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let foreign = |cat: &str, col: &str, extra: &str| {
        format!(
            "SELECT x.oid FROM pg_catalog.{cat} x WHERE x.{col} OPERATOR(pg_catalog.=) n.oid {extra} \
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                 WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.{cat}'::pg_catalog.regclass::pg_catalog.oid \
                 AND d.objid OPERATOR(pg_catalog.=) x.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'::pg_catalog.char)"
        )
    };
    let sql = format!(
        "SELECT pg_catalog.count(*)::pg_catalog.text FROM pg_catalog.pg_namespace n, LATERAL ({} UNION ALL {} UNION ALL {} \
         UNION ALL {} UNION ALL {} UNION ALL {}) o WHERE n.nspname OPERATOR(pg_catalog.=) $1::pg_catalog.name",
        foreign("pg_proc", "pronamespace", ""),
        foreign("pg_operator", "oprnamespace", ""),
        foreign("pg_class", "relnamespace", ""),
        // Row types follow their relation and array types their element.
        foreign(
            "pg_type",
            "typnamespace",
            "AND x.typrelid OPERATOR(pg_catalog.=) 0::pg_catalog.oid AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e \
             WHERE e.typarray OPERATOR(pg_catalog.=) x.oid)"
        ),
        foreign("pg_collation", "collnamespace", ""),
        foreign("pg_conversion", "connamespace", ""),
    );
    let n = db
        .query(&sql, &[Some(EXTENSION_SCHEMA)])
        .map_err(|e| pg_api(e, "cannot check the extensions schema"))?
        .rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
        .unwrap_or_default();
    if n != "0" {
        return Err(ApiError::new(
            Kind::ExtensionNotAllowed,
            format!(
                "schema {EXTENSION_SCHEMA} holds {n} objects that belong to no extension (made by the platform); an \
                 extension the gateway's login installs is never created beside them: move them to another schema"
            ),
        ));
    }
    let mut sql = String::new();
    for name in names {
        sql.push_str(&format!(
            "CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {};",
            ident(name),
            ident(EXTENSION_SCHEMA)
        ));
    }
    db.batch_execute(&sql)
        .map_err(|e| pg_api(e, "cannot install an allowed extension (the gateway's login may lack the right to)"))
}

/// What [`confine_objects`] changed in one database.
#[derive(Debug, Default, Clone)]
pub struct Confined {
    pub objects_reassigned: usize,
    pub extensions_moved: Vec<String>,
    /// Problems that need a person (an extension that cannot move, an object the gateway cannot give away).
    pub problems: Vec<String>,
}

/// Inside one database (`db` connected as the gateway's login): every schema, table, view, sequence,
/// function and type that is not part of an extension becomes the platform role's, and extensions in
/// a `/call` schema move to [`EXTENSION_SCHEMA`]. For databases deployed before platforms had roles.
pub fn confine_objects(db: &mut Client, role: &str, call_schemas: &[String]) -> Result<Confined, ApiError> {
    let mut out = Confined::default();
    // The session's search path is pinned to pg_catalog (see `ConnectParams::in_foreign_database`);
    // operators are qualified all the same, so these queries resolve to the catalog's alone whatever
    // path a session has.
    let user_schemas = "n.nspname OPERATOR(pg_catalog.!~~) 'pg\\_%' \
                        AND n.nspname OPERATOR(pg_catalog.<>) 'information_schema'::pg_catalog.name";
    let not_ext = |cls: &str, col: &str| {
        format!(
            "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
             WHERE d.classid OPERATOR(pg_catalog.=) '{cls}'::pg_catalog.regclass::pg_catalog.oid \
             AND d.objid OPERATOR(pg_catalog.=) {col} AND d.deptype OPERATOR(pg_catalog.=) 'e'::pg_catalog.char)"
        )
    };
    let owner_is_not = "OPERATOR(pg_catalog.<>) (SELECT r.oid FROM pg_catalog.pg_roles r \
                        WHERE r.rolname OPERATOR(pg_catalog.=) $1::pg_catalog.name)";
    let queries = [
        format!(
            "SELECT 'SCHEMA ' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_namespace n \
             WHERE {user_schemas} AND n.nspowner {owner_is_not} \
             AND n.nspowner OPERATOR(pg_catalog.<>) 'pg_database_owner'::pg_catalog.regrole::pg_catalog.oid AND {}",
            not_ext("pg_catalog.pg_namespace", "n.oid")
        ),
        // Sequences that belong to a column follow their table.
        format!(
            "SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE ' WHEN 'v' THEN 'VIEW ' WHEN 'm' THEN 'MATERIALIZED VIEW ' \
                    WHEN 'f' THEN 'FOREIGN TABLE ' ELSE 'TABLE ' END \
                    OPERATOR(pg_catalog.||) c.oid::pg_catalog.regclass::pg_catalog.text \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             WHERE {user_schemas} AND c.relkind OPERATOR(pg_catalog.=) ANY ('{{r,p,v,m,S,f}}'::pg_catalog.char[]) \
             AND c.relowner {owner_is_not} AND {} \
             AND NOT (c.relkind OPERATOR(pg_catalog.=) 'S'::pg_catalog.char AND EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                 WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid \
                 AND d.objid OPERATOR(pg_catalog.=) c.oid \
                 AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid \
                 AND d.deptype OPERATOR(pg_catalog.=) ANY ('{{a,i}}'::pg_catalog.char[])))",
            not_ext("pg_catalog.pg_class", "c.oid")
        ),
        format!(
            "SELECT 'ROUTINE ' OPERATOR(pg_catalog.||) p.oid::pg_catalog.regprocedure::pg_catalog.text \
             FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace \
             WHERE {user_schemas} AND p.proowner {owner_is_not} AND {}",
            not_ext("pg_catalog.pg_proc", "p.oid")
        ),
        // Enums, ranges, domains and standalone composite types; array and table row types follow.
        format!(
            "SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN ' ELSE 'TYPE ' END \
                    OPERATOR(pg_catalog.||) t.oid::pg_catalog.regtype::pg_catalog.text \
             FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) t.typnamespace \
             WHERE {user_schemas} AND t.typowner {owner_is_not} AND t.typelem OPERATOR(pg_catalog.=) 0::pg_catalog.oid \
             AND (t.typtype OPERATOR(pg_catalog.=) ANY ('{{e,r,d}}'::pg_catalog.char[]) \
                  OR (t.typtype OPERATOR(pg_catalog.=) 'c'::pg_catalog.char AND (SELECT k.relkind FROM pg_catalog.pg_class k \
                      WHERE k.oid OPERATOR(pg_catalog.=) t.typrelid) OPERATOR(pg_catalog.=) 'c'::pg_catalog.char)) \
             AND {}",
            not_ext("pg_catalog.pg_type", "t.oid")
        ),
    ];
    for q in &queries {
        let r = db.query(q, &[Some(role)]).map_err(|e| pg_api(e, "cannot list the database's objects"))?;
        for row in r.rows {
            let Some(obj) = row[0].as_deref() else { continue };
            match db.batch_execute(&format!("ALTER {obj} OWNER TO {}", ident(role))) {
                Ok(()) => out.objects_reassigned += 1,
                Err(e) => out.problems.push(format!("{obj}: {e}")),
            }
        }
    }
    let list = format!("{{{}}}", call_schemas.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(","));
    let r = db
        .query(
            "SELECT e.extname, e.extrelocatable FROM pg_catalog.pg_extension e \
             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace \
             WHERE n.nspname OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.name[])",
            &[Some(&list)],
        )
        .map_err(|e| pg_api(e, "cannot list extensions"))?;
    if !r.rows.is_empty() {
        db.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s} AUTHORIZATION {r}",
            s = ident(EXTENSION_SCHEMA),
            r = ident(role)
        ))
        .map_err(|e| pg_api(e, "cannot create the extensions schema"))?;
    }
    for row in r.rows {
        let name = row[0].clone().unwrap_or_default();
        if row[1].as_deref() != Some("t") {
            out.problems.push(format!("extension {name} is not relocatable and stays where /call can reach it"));
            continue;
        }
        match db.batch_execute(&format!("ALTER EXTENSION {} SET SCHEMA {}", ident(&name), ident(EXTENSION_SCHEMA))) {
            Ok(()) => out.extensions_moved.push(name),
            Err(e) => out.problems.push(format!("extension {name}: {e}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_depend_on_secret_and_role() {
        let a = password(b"one secret that is long enough....", "ssdb_a");
        assert_eq!(a.len(), 64);
        assert_eq!(a, password(b"one secret that is long enough....", "ssdb_a"));
        assert_ne!(a, password(b"one secret that is long enough....", "ssdb_b"));
        assert_ne!(a, password(b"another secret that is long enough", "ssdb_a"));
    }

    #[test]
    fn role_names_are_prefixed_and_bounded() {
        assert_eq!(role_name("ssdb_", "todos").unwrap(), "ssdb_todos");
        assert!(role_name("ssdb_", &"a".repeat(58)).is_ok());
        assert_eq!(role_name("ssdb_", &"a".repeat(59)).unwrap_err().kind, Kind::InvalidRequest);
    }

    #[test]
    fn unfit_roles_name_their_rights() {
        let f = RoleFacts { login: true, ..RoleFacts::default() };
        assert!(f.unfit().is_empty());
        let f = RoleFacts {
            superuser: true,
            createrole: true,
            login: true,
            member_of: vec!["pg_execute_server_program".into()],
            ..RoleFacts::default()
        };
        assert_eq!(f.unfit(), vec!["SUPERUSER", "CREATEROLE", "member of pg_execute_server_program"]);
        assert_eq!(RoleFacts::default().unfit(), vec!["NOLOGIN"]);
    }
}
