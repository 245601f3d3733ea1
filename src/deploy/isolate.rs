//! Brings installations deployed before platforms had their own roles under those roles: every
//! recorded database is given to its platform's role with everything in it, closed to PUBLIC, its
//! extensions moved out of `/call`'s reach, and passwords the catalog kept in clear are removed.
//! Idempotent; runs at start for databases not yet done, and on demand (`POST /admin/isolate`).

use super::service::{DeployCtx, Outcome};
use crate::catalog::{Catalog, pg_api};
use crate::error::{ApiError, Kind};
use crate::http::response::Response;
use crate::json::ObjectWriter;
use crate::pg::blocking::Client;
use crate::security::roles;

/// One database's outcome.
#[derive(Debug)]
pub struct DbIsolation {
    pub database: String,
    pub platform: String,
    pub result: Result<roles::Confined, ApiError>,
}

/// What a pass did.
#[derive(Debug, Default)]
pub struct Isolation {
    pub databases: Vec<DbIsolation>,
    pub passwords_removed: u64,
    pub roles_refreshed: usize,
    pub role_problems: Vec<(String, ApiError)>,
}

/// Gives every recorded platform role this process's password, then (all, or those not done yet)
/// confines each recorded database that exists.
pub fn isolate_all(ctx: &DeployCtx, all: bool) -> Result<Isolation, ApiError> {
    let mut out = Isolation::default();
    let mut cat = ctx.catalog()?;
    let mut admin = Client::connect(&ctx.admin).map_err(|e| pg_api(e, "cannot connect to PostgreSQL"))?;
    close_catalog(&mut admin, &ctx.cfg.deploy.catalog_db)?;
    // Dedicated credentials of the v2 API: the role is kept (adopted), the password forgotten.
    cat.client
        .batch_execute(
            "INSERT INTO platform_roles (platform, role, adopted) SELECT name, db_user, true FROM platforms \
             WHERE db_user IS NOT NULL ON CONFLICT DO NOTHING",
        )
        .map_err(|e| pg_api(e, "cannot record dedicated roles"))?;
    out.passwords_removed = cat
        .client
        .query("UPDATE platforms SET db_password = NULL WHERE db_password IS NOT NULL", &[])
        .map_err(|e| pg_api(e, "cannot remove stored passwords"))?
        .rows_affected;
    for (platform, role, adopted) in cat.platform_roles()? {
        match roles::ensure_once(&mut admin, &platform, &role, &ctx.cfg.security.platform_secret, adopted) {
            Ok(()) => out.roles_refreshed += 1,
            Err(e) => out.role_problems.push((platform, e)),
        }
    }
    let todo = cat
        .client
        .query(
            // Only the default server's: databases on other servers were made by this version,
            // confined from the start (the pass is for databases made before platforms had roles).
            "SELECT name, platform FROM databases WHERE ($1::boolean OR confined_at IS NULL) \
             AND server = 'default' AND name IN (SELECT datname FROM pg_database) ORDER BY name",
            &[Some(if all { "true" } else { "false" })],
        )
        .map_err(|e| pg_api(e, "catalog lookup failed"))?;
    for row in todo.rows {
        let (database, platform) = (row[0].clone().unwrap_or_default(), row[1].clone().unwrap_or_default());
        let result = confine_one(ctx, &mut cat, &mut admin, &database, &platform);
        if result.as_ref().is_ok_and(|c| c.problems.is_empty()) {
            let _ = cat.client.query("UPDATE databases SET confined_at = now() WHERE name = $1", &[Some(&database)]);
        }
        out.databases.push(DbIsolation { database, platform, result });
    }
    admin.close();
    Ok(out)
}

/// Takes PUBLIC's rights on the catalog away, when it still has them (two gateways starting together
/// would otherwise change the same row at once).
fn close_catalog(admin: &mut Client, catalog_db: &str) -> Result<(), ApiError> {
    let open = admin
        .query("SELECT has_database_privilege('public', $1, 'CONNECT')::text", &[Some(catalog_db)])
        .map_err(|e| pg_api(e, "cannot check the catalog's grants"))?;
    if open.rows.first().and_then(|r| r[0].as_deref()) != Some("true") {
        return Ok(());
    }
    match admin.batch_execute(&format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", roles::ident(catalog_db))) {
        Ok(()) => Ok(()),
        // Another gateway did it at the same moment.
        Err(crate::pg::dberror::PgError::Db(d)) if d.code == "XX000" => Ok(()),
        Err(e) => Err(pg_api(e, "cannot close the catalog to other roles")),
    }
}

fn confine_one(
    ctx: &DeployCtx,
    cat: &mut Catalog,
    admin: &mut Client,
    database: &str,
    platform: &str,
) -> Result<roles::Confined, ApiError> {
    let pctx = ctx.as_platform(cat, platform)?;
    let role = pctx.role.unwrap_or_default();
    roles::confine_database(admin, database, &role, &ctx.cfg.call.schemas)?;
    let mut db = Client::connect(&ctx.admin.in_foreign_database(database))
        .map_err(|e| pg_api(e, &format!("cannot connect to database '{database}'")).with_database(database))?;
    let r = roles::confine_objects(&mut db, &role, &ctx.cfg.call.schemas);
    db.close();
    r
}

/// `POST /admin/isolate`: a pass over every recorded database, with its report.
pub fn isolate_route(ctx: &DeployCtx) -> Outcome {
    let run = || -> Result<Outcome, ApiError> {
        ctx.require_admin("isolating platforms")?;
        let r = isolate_all(ctx, true)?;
        let failed = r.databases.iter().filter(|d| d.result.as_ref().map_or(true, |c| !c.problems.is_empty())).count();
        let complete = failed == 0 && r.role_problems.is_empty();
        let mut b = Vec::with_capacity(1024);
        let mut o = ObjectWriter::new(&mut b);
        o.str("status", if complete { "completed" } else { "completed_with_errors" });
        if !complete {
            // Not a plain 200: a monitor or script sees that the pass left work undone.
            o.str("error", Kind::IsolationIncomplete.code());
            o.str(
                "message",
                &format!(
                    "{failed} of {} databases and {} of {} platform roles could not be confined; see databases and role_problems",
                    r.databases.len(),
                    r.role_problems.len(),
                    r.roles_refreshed + r.role_problems.len()
                ),
            );
        }
        o.u64("passwords_removed", r.passwords_removed);
        o.u64("roles_refreshed", r.roles_refreshed as u64);
        {
            let mut a = o.array("role_problems");
            for (p, e) in &r.role_problems {
                let mut x = a.object();
                x.str("platform", p);
                x.str("error", e.kind.code());
                x.str("message", &e.message);
            }
        }
        {
            let mut a = o.array("databases");
            for d in &r.databases {
                let mut x = a.object();
                x.str("database", &d.database);
                x.str("platform", &d.platform);
                match &d.result {
                    Ok(c) => {
                        x.str("status", if c.problems.is_empty() { "confined" } else { "incomplete" });
                        x.u64("objects_reassigned", c.objects_reassigned as u64);
                        let mut m = x.array("extensions_moved");
                        for e in &c.extensions_moved {
                            m.str(e);
                        }
                        drop(m);
                        let mut p = x.array("problems");
                        for e in &c.problems {
                            p.str(e);
                        }
                    }
                    Err(e) => {
                        x.str("status", "failed");
                        x.str("error", e.kind.code());
                        x.str("message", &e.message);
                    }
                }
            }
        }
        o.u64("failed_count", failed as u64);
        o.finish();
        let status = if complete { 200 } else { Kind::IsolationIncomplete.status() };
        let mut resp = Response::json(status, b);
        if !complete {
            resp.error = Some(Kind::IsolationIncomplete);
        }
        Ok((resp, r.databases.iter().map(|d| d.database.clone()).collect()))
    };
    run().unwrap_or_else(|e| (Response::error(&e), Vec::new()))
}
