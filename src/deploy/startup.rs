//! What the gateway tells once at start about the cluster it finds: its login's rights, whether
//! PostgreSQL's shared memory is in huge pages, and the databases of stonescriptdb-gateway 1.x it
//! does not serve until they are adopted.

use super::service::DeployCtx;
use super::upstream;

/// Once at start, after the catalog answered: the login's rights (log and `/health`), and databases
/// of 1.x that are not served until adopted (log, with the command).
pub fn startup_tells(ctx: &DeployCtx) {
    use crate::log;
    let Ok(mut admin) = crate::pg::blocking::Client::connect(&ctx.admin) else { return };
    let rights = upstream::check_login(&mut admin);
    let huge = admin.simple_query("SELECT current_setting('huge_pages'), current_setting('huge_pages_status', true)");
    admin.close();
    if let Some(row) = huge.ok().and_then(|rows| rows.into_iter().next()) {
        let mut cols = row.into_iter();
        let setting = cols.next().flatten().unwrap_or_default();
        let status = cols.next().flatten();
        let local = is_local(&ctx.admin.host).then(local_huge_pages).flatten();
        if huge_pages_missing(&setting, status.as_deref(), local) {
            log::info(
                "PostgreSQL's shared memory is not in huge pages: every new backend (each database of a fleet \
                 deploy, each pool connect) pays page faults for it; in bench/ huge pages cut PostgreSQL's CPU \
                 per database of an unchanged fleet /migrate by 15-29 % (README, \"Fleet runs\")",
                &[
                    ("huge_pages", &setting),
                    ("fix", &"vm.nr_hugepages >= SHOW shared_memory_size_in_huge_pages, huge_pages = on, restart"),
                ],
            );
        }
    }
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

/// Whether PostgreSQL's shared memory is (most likely) not in huge pages: its `huge_pages` setting,
/// `huge_pages_status` where the server has it (PostgreSQL 17+), and `HugePages_Total` of this
/// machine when the server runs here. `try` without that status is only known to fall back when this
/// machine has none to give.
pub(crate) fn huge_pages_missing(setting: &str, status: Option<&str>, local_total: Option<u64>) -> bool {
    match status {
        Some(s) => s == "off",
        None => setting == "off" || (setting == "try" && local_total == Some(0)),
    }
}

/// A server reached through a Unix socket or a loopback address runs on this machine.
fn is_local(host: &crate::pg::params::Host) -> bool {
    use crate::pg::params::Host;
    match host {
        Host::Unix(_) => true,
        Host::Tcp(h) => h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
    }
}

/// `HugePages_Total` of this machine, from `/proc/meminfo`.
fn local_huge_pages() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    hugepages_total(&text)
}

fn hugepages_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| l.strip_prefix("HugePages_Total:")).and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_missing_only_when_the_server_or_this_machine_says_so() {
        // PostgreSQL 17+ says what it got.
        assert!(huge_pages_missing("try", Some("off"), Some(100)));
        assert!(!huge_pages_missing("try", Some("on"), Some(0)));
        assert!(!huge_pages_missing("try", Some("unknown"), None));
        // Older servers: the setting, and this machine's pages when the server runs here.
        assert!(huge_pages_missing("off", None, None));
        assert!(huge_pages_missing("try", None, Some(0)));
        assert!(!huge_pages_missing("try", None, Some(80)));
        assert!(!huge_pages_missing("try", None, None), "a remote server is not guessed at");
        assert!(!huge_pages_missing("on", None, Some(0)), "on: PostgreSQL would not have started without");
    }

    #[test]
    fn meminfo_and_local_hosts() {
        let m = "MemTotal:       24683268 kB\nHugePages_Total:     100\nHugePages_Free:       89\n";
        assert_eq!(hugepages_total(m), Some(100));
        assert_eq!(hugepages_total("MemTotal: 1 kB\n"), None);
        use crate::pg::params::Host;
        assert!(is_local(&Host::Unix("/run/postgresql".into())));
        assert!(is_local(&Host::Tcp("127.0.0.1".into())));
        assert!(is_local(&Host::Tcp("::1".into())));
        assert!(is_local(&Host::Tcp("localhost".into())));
        assert!(!is_local(&Host::Tcp("10.0.0.5".into())));
        assert!(!is_local(&Host::Tcp("db.example".into())));
    }
}
