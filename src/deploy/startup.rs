//! What the gateway tells once at start about the cluster it finds: its login's rights and the
//! databases of stonescriptdb-gateway 1.x it does not serve until they are adopted.

use super::service::DeployCtx;
use super::upstream;

/// Once at start, after the catalog answered: the login's rights (log and `/health`), and databases
/// of 1.x that are not served until adopted (log, with the command).
pub fn startup_tells(ctx: &DeployCtx) {
    use crate::log;
    let Ok(mut admin) = crate::pg::blocking::Client::connect(&ctx.admin) else { return };
    let rights = upstream::check_login(&mut admin);
    admin.close();
    match rights {
        Ok(r) => {
            upstream::remember_login_rights(r);
            if r.sufficient() {
                log::info("the gateway's login may create databases and roles", &[("user", &ctx.admin.user)]);
            } else {
                log::warn(
                    "the gateway's login lacks rights that new platforms and tenants need; /register of a new \
                     database will fail until they are granted",
                    &[
                        ("user", &ctx.admin.user),
                        ("missing", &r.missing().join(", ")),
                        (
                            "fix",
                            &"sudo -u postgres stonescriptdb-gateway setup-db (or ALTER ROLE … CREATEDB CREATEROLE)",
                        ),
                    ],
                );
            }
        }
        Err(e) => log::warn("the gateway's login rights could not be read", &[("error", &e)]),
    }
    let recorded: Vec<String> = match ctx.catalog() {
        Ok(mut cat) => {
            let r = cat.client.query("SELECT name FROM databases", &[]);
            cat.client.close();
            match r {
                Ok(r) => r.rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect(),
                Err(_) => return,
            }
        }
        Err(_) => return,
    };
    match upstream::unrecorded_upstream(&ctx.admin, &recorded, &ctx.cfg.deploy.catalog_db) {
        Ok(dbs) if !dbs.is_empty() => {
            let platforms = upstream::suggested_platforms(&dbs);
            let flags: Vec<String> = platforms.iter().map(|p| format!("--platform {p}")).collect();
            log::warn(
                "databases made by stonescriptdb-gateway 1.x are not recorded in the catalog and are not served \
                 until adopted",
                &[
                    ("databases", &dbs.join(", ")),
                    ("command", &format!("sudo -u postgres stonescriptdb-gateway adopt {}", flags.join(" "))),
                ],
            );
        }
        Ok(_) => {}
        Err(e) => log::debug("databases of stonescriptdb-gateway 1.x not looked for", &[("error", &e)]),
    }
}
