//! `stonescriptdb-gateway setup-db`: the database side of an installation, run once as a PostgreSQL
//! superuser. It runs `scripts/gateway-login.sql` (compiled in, so the binary and the script never
//! disagree) to create or correct the gateway's least-rights login, gives that login a password when it
//! has none, and prints what the gateway's env file and `pg_hba.conf` need. Running it again changes
//! nothing that works: an existing password is kept unless `--new-password` asks for another.
//!
//! Standard output is an env-file fragment (comments plus `DB_USER=`/`DB_PASSWORD=`), so it can be
//! appended to `/etc/stonescriptdb-gateway/env`; progress and warnings go to standard error.

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use stonescriptdb_gateway::config::{Config, Settings};
use stonescriptdb_gateway::pg::blocking::Client;
use stonescriptdb_gateway::pg::params::{ConnectParams, Host};
use stonescriptdb_gateway::security::random;

/// The SQL that creates the login, exactly as shipped in `scripts/` (and in the package).
const LOGIN_SQL: &str = include_str!("../scripts/gateway-login.sql");
/// The login name the SQL uses; `--login` substitutes another one.
const DEFAULT_LOGIN: &str = "stonescriptdb_gateway";
/// Where Debian and Ubuntu's PostgreSQL puts its socket.
const DEBIAN_SOCKET_DIR: &str = "/var/run/postgresql";

pub const HELP: &str = "\
stonescriptdb-gateway setup-db: create or update the gateway's own PostgreSQL login with the least
rights that work (LOGIN CREATEDB CREATEROLE; no SUPERUSER, REPLICATION, BYPASSRLS), give it a
password when it has none, and print the env-file lines and the pg_hba.conf lines it needs.
Run it once as a PostgreSQL superuser; running it again is safe (the password is kept).

USAGE:
  sudo -u postgres stonescriptdb-gateway setup-db [OPTIONS] [--KEY=VALUE]...
  # then add the printed DB_USER/DB_PASSWORD lines to /etc/stonescriptdb-gateway/env, e.g.
  sudo -u postgres stonescriptdb-gateway setup-db | sudo tee -a /etc/stonescriptdb-gateway/env

OPTIONS:
  --superuser NAME    PostgreSQL superuser to connect as [default: postgres]; its password, if
                      one is asked for, is read from PGPASSWORD
  --host HOST         where to reach PostgreSQL as the superuser: a socket directory (starts with /)
                      or a host [default: DB_HOST when it is a socket directory, else
                      /var/run/postgresql when the server's socket is there, else DB_HOST]
  --port PORT         [default: DB_PORT]
  --login NAME        the gateway's login to create [default: stonescriptdb_gateway]
  --new-password      set a new password even when the login has one (then update DB_PASSWORD and
                      restart the gateway)
  --env-file PATH     read the gateway's settings from PATH instead of ./.env
  --KEY=VALUE         any gateway setting (e.g. --db-host 127.0.0.1), used for the pg_hba.conf lines
                      and to check that the login works the way the gateway will connect

Output: an env-file fragment on stdout; progress on stderr. Exit 0 when the login is set up, 1 when
PostgreSQL refused (not a superuser, unreachable), 2 on a usage error.
";

/// What the command line asked for.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Options {
    pub(crate) superuser: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    pub(crate) login: Option<String>,
    new_password: bool,
    env_file: Option<PathBuf>,
    /// Gateway settings given as flags, passed to the settings parser.
    settings: Vec<String>,
    pub(crate) help: bool,
}

/// One command-line argument of a subcommand, as [`each_flag`] hands it over: `--name=value` and
/// `--name value` read the same.
pub(crate) struct Flag<'a> {
    /// The argument as given.
    pub arg: &'a str,
    /// The flag's name (`--port` of `--port=5432`), or the whole argument when it is no `--x=y`.
    pub name: &'a str,
    /// The value after `=`, when the argument carried one.
    pub inline: Option<&'a str>,
    args: &'a [String],
    i: usize,
}

impl Flag<'_> {
    /// The flag's value: after `=`, or else the next argument (which is then consumed).
    pub fn value(&mut self) -> Result<String, String> {
        if let Some(v) = self.inline {
            return Ok(v.to_string());
        }
        self.i += 1;
        self.args.get(self.i).cloned().ok_or_else(|| format!("{} needs a value", self.name))
    }
}

/// Calls `f` with each argument in turn; a value `f` takes with [`Flag::value`] is not seen again.
pub(crate) fn each_flag(args: &[String], mut f: impl FnMut(&mut Flag<'_>) -> Result<(), String>) -> Result<(), String> {
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (arg, None),
        };
        let mut flag = Flag { arg, name, inline, args, i };
        f(&mut flag)?;
        i = flag.i + 1;
    }
    Ok(())
}

pub(crate) fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    each_flag(args, |fl| {
        let (arg, name, inline) = (fl.arg, fl.name, fl.inline);
        match name {
            "-h" | "--help" => o.help = true,
            "--new-password" if inline.is_none() => o.new_password = true,
            "--superuser" => o.superuser = Some(fl.value()?),
            "--host" => o.host = Some(fl.value()?),
            "--port" => {
                let v = fl.value()?;
                o.port = Some(v.parse().map_err(|_| format!("--port: '{v}' is not a port number"))?);
            }
            "--login" => o.login = Some(fl.value()?),
            "--env-file" => o.env_file = Some(PathBuf::from(fl.value()?)),
            _ if name.starts_with("--") => {
                o.settings.push(arg.to_string());
                if inline.is_none() {
                    let v = fl.value()?;
                    o.settings.push(v);
                }
            }
            _ => return Err(format!("unexpected argument '{arg}' (see setup-db --help)")),
        }
        Ok(())
    })?;
    Ok(o)
}

/// A role name that needs no quoting: `[a-z_][a-z0-9_]*`, at most 63 bytes.
fn valid_login(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
        && !name.starts_with("pg_")
}

/// The shipped SQL with the login's name put in.
fn login_sql(login: &str) -> String {
    LOGIN_SQL.replace(DEFAULT_LOGIN, login)
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn host_text(h: &Host) -> String {
    match h {
        Host::Tcp(name) => name.clone(),
        Host::Unix(dir) => dir.display().to_string(),
    }
}

/// The `pg_hba.conf` lines that let the gateway's login, and the platform roles it makes, reach
/// the server the way the gateway connects (`gateway`): by socket → `local`, by TCP → `host` lines
/// for the addresses the connection comes from (the server's own address when it is local).
fn hba_lines(login: &str, gateway: &Host) -> Vec<String> {
    let mut lines = Vec::new();
    let mut push = |kind: &str, user: &str, addr: &str| {
        lines.push(format!("{kind:<7} all  {user:<24} {addr:<16} scram-sha-256"));
    };
    match gateway {
        Host::Unix(_) => {
            push("local", login, "");
            push("local", "all", "");
        }
        Host::Tcp(name) => {
            let mut addrs: Vec<IpAddr> = match name.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => {
                    (name.as_str(), 5432).to_socket_addrs().map(|a| a.map(|s| s.ip()).collect()).unwrap_or_default()
                }
            };
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                addrs.push(IpAddr::from([127, 0, 0, 1]));
            }
            for user in [login, "all"] {
                for ip in &addrs {
                    let cidr = if ip.is_ipv4() { format!("{ip}/32") } else { format!("{ip}/128") };
                    push("host", user, &cidr);
                }
            }
        }
    }
    lines
}

/// The gateway's settings the way the binary reads them: defaults, the env file (or `./.env`), the
/// environment, then the flags.
pub(crate) fn gateway_config(o: &Options, env: &HashMap<String, String>, cwd: &Path) -> Result<Config, String> {
    let mut s = Settings::defaults();
    let file = o.env_file.clone().unwrap_or_else(|| cwd.join(".env"));
    match std::fs::read_to_string(&file) {
        Ok(text) => s.apply_dotenv_text(&text).map_err(|e| format!("{}: {e}", file.display()))?,
        Err(e) if o.env_file.is_none() && e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if o.env_file.is_none() => {
            eprintln!("setup-db: not reading {}: {e}", file.display());
        }
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    }
    s.apply_env(env);
    if s.apply_args(&o.settings).map_err(|e| e.0)?.is_some() {
        return Err("--help and --version are not settings".into());
    }
    Config::from_settings(&s).map_err(|e| e.0)
}

/// The whole command; returns the process exit code.
pub fn main(args: &[String]) -> u8 {
    let o = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("setup-db: {e}");
            return 2;
        }
    };
    if o.help {
        print!("{HELP}");
        return 0;
    }
    let login = o.login.clone().unwrap_or_else(|| DEFAULT_LOGIN.to_string());
    if !valid_login(&login) {
        eprintln!("setup-db: --login must be [a-z_][a-z0-9_]*, at most 63 bytes, not pg_*");
        return 2;
    }
    let env: HashMap<String, String> = std::env::vars().collect();
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let cfg = match gateway_config(&o, &env, &cwd) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("setup-db: configuration error: {e}");
            return 2;
        }
    };
    let gateway = cfg.db.connect_params();
    let su = superuser_params(&o, &gateway, &env);
    match run(&su, &gateway, &login, o.new_password, cfg.deploy.catalog_db.as_str()) {
        Ok(fragment) => {
            print!("{fragment}");
            0
        }
        Err(e) => {
            eprintln!("setup-db: {e}");
            1
        }
    }
}

/// How to reach PostgreSQL as the superuser: `--superuser`, `--host`, `--port`, else from the
/// gateway's own settings (its socket directory, or Debian's when the server listens there).
pub(crate) fn superuser_params(o: &Options, gateway: &ConnectParams, env: &HashMap<String, String>) -> ConnectParams {
    let mut su = gateway.clone();
    su.user = o.superuser.clone().unwrap_or_else(|| "postgres".into());
    su.password = env.get("PGPASSWORD").filter(|p| !p.is_empty()).cloned();
    su.port = o.port.unwrap_or(gateway.port);
    su.host = match &o.host {
        Some(h) if h.starts_with('/') => Host::Unix(PathBuf::from(h)),
        Some(h) => Host::Tcp(h.trim_start_matches('[').trim_end_matches(']').to_string()),
        None => match &gateway.host {
            Host::Unix(d) => Host::Unix(d.clone()),
            Host::Tcp(_) if Path::new(DEBIAN_SOCKET_DIR).join(format!(".s.PGSQL.{}", su.port)).exists() => {
                Host::Unix(PathBuf::from(DEBIAN_SOCKET_DIR))
            }
            Host::Tcp(h) => Host::Tcp(h.clone()),
        },
    };
    su
}

fn one(c: &mut Client, sql: &str, params: &[Option<&str>]) -> Result<Option<String>, String> {
    c.query_one_opt(sql, params).map(|r| r.and_then(|row| row.into_iter().next().flatten())).map_err(|e| e.to_string())
}

/// Does the work against the server; returns the env-file fragment to print.
fn run(
    su: &ConnectParams,
    gateway: &ConnectParams,
    login: &str,
    new_password: bool,
    catalog: &str,
) -> Result<String, String> {
    let where_ = format!("{}:{}", host_text(&su.host), su.port);
    eprintln!("setup-db: connecting to PostgreSQL at {where_} as {}", su.user);
    let mut c = Client::connect(su).map_err(|e| format!("cannot connect to {where_} as {}: {e}", su.user))?;
    let is_super = one(&mut c, "SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user", &[])?;
    if is_super.as_deref() != Some("true") {
        return Err(format!(
            "{} is not a PostgreSQL superuser; run setup-db as one (e.g. sudo -u postgres stonescriptdb-gateway setup-db)",
            su.user
        ));
    }
    let version = one(&mut c, "SHOW server_version", &[])?.unwrap_or_default();
    let existed = one(&mut c, "SELECT 't' FROM pg_roles WHERE rolname = $1", &[Some(login)])?.is_some();
    c.batch_execute(&login_sql(login)).map_err(|e| format!("creating the login {login} failed: {e}"))?;
    let has_password =
        one(&mut c, "SELECT (rolpassword IS NOT NULL)::text FROM pg_authid WHERE rolname = $1", &[Some(login)])?;
    let mut password = None;
    if new_password || has_password.as_deref() != Some("true") {
        let p = random::hex(&random::bytes(24).map_err(|e| format!("cannot make a password: {e}"))?);
        // Only the SCRAM verifier travels, so the password is in no server log line.
        let verifier = postgres_protocol::password::scram_sha_256(p.as_bytes());
        c.batch_execute(&format!("ALTER ROLE {login} PASSWORD {}", literal(&verifier)))
            .map_err(|e| format!("setting the password of {login} failed: {e}"))?;
        password = Some(p);
    }
    // The SQL grants no predefined role; one granted by hand would undo the least rights.
    let memberships = one(
        &mut c,
        "SELECT string_agg(g.rolname, ', ' ORDER BY g.rolname) FROM pg_auth_members m \
         JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member \
         WHERE u.rolname = $1 AND g.rolname LIKE 'pg\\_%'",
        &[Some(login)],
    )?;
    let catalog_owner =
        one(&mut c, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", &[Some(catalog)])?;
    c.close();

    let mut out = String::new();
    let mut line = |s: &str| {
        out.push_str(s);
        out.push('\n');
    };
    line(&format!("# --- stonescriptdb-gateway setup-db: PostgreSQL {version} at {where_} ---"));
    line(&format!(
        "# login {login} {}: LOGIN CREATEDB CREATEROLE, no SUPERUSER, REPLICATION or BYPASSRLS",
        if existed { "updated" } else { "created" }
    ));
    if let Some(m) = &memberships {
        eprintln!("setup-db: WARNING: {login} is a member of {m}; revoke that: REVOKE {m} FROM {login};");
        line(&format!("# WARNING: {login} is a member of {m}; revoke that (REVOKE {m} FROM {login};)"));
    }
    if let Some(owner) = catalog_owner.filter(|o| o != login) {
        eprintln!("setup-db: note: the catalog database {catalog} belongs to {owner}, not {login}");
        line(&format!(
            "# note: the catalog {catalog} was made by {owner}; for {login} to use it: ALTER DATABASE {catalog} OWNER TO {login};"
        ));
    }
    line("# pg_hba.conf needs these lines (above any peer/ident/reject line that matches first;");
    line("# Debian's default pg_hba.conf already has the 127.0.0.1 and ::1 ones), then SELECT pg_reload_conf();");
    for l in hba_lines(login, &gateway.host) {
        line(&format!("#   {l}"));
    }
    line(&format!("DB_USER={login}"));
    match &password {
        Some(p) => line(&format!("DB_PASSWORD={p}")),
        None => line("# DB_PASSWORD unchanged: the login has one already (--new-password sets another)"),
    }

    // Log in the way the gateway will, when the password is known.
    let mut check = gateway.clone();
    // A configured DB_PASSWORD is this login's only when DB_USER names it.
    if password.is_some() || check.user != login {
        check.password = password.clone();
    }
    check.user = login.to_string();
    if check.password.is_some() {
        let to = format!("{}:{}", host_text(&check.host), check.port);
        match Client::connect(&check) {
            Ok(c) => {
                c.close();
                eprintln!("setup-db: {login} logs in at {to}: ok");
            }
            Err(e) => {
                eprintln!("setup-db: {login} cannot log in at {to} yet ({e}); add the pg_hba.conf lines and reload");
                line(&format!("# {login} could not log in at {to} yet: add the pg_hba.conf lines above and reload"));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_and_gateway_settings_are_told_apart() {
        let o = parse_args(&args(&["--superuser", "admin", "--port=5433", "--db-host", "127.0.0.1", "--new-password"]))
            .unwrap();
        assert_eq!(o.superuser.as_deref(), Some("admin"));
        assert_eq!(o.port, Some(5433));
        assert!(o.new_password);
        assert_eq!(o.settings, args(&["--db-host", "127.0.0.1"]));
        assert!(parse_args(&args(&["stray"])).is_err());
        assert!(parse_args(&args(&["--port", "x"])).is_err());
        assert!(parse_args(&args(&["--login"])).is_err());
    }

    #[test]
    fn the_shipped_sql_is_used_with_the_login_put_in() {
        assert!(LOGIN_SQL.contains("CREATE ROLE stonescriptdb_gateway LOGIN CREATEDB CREATEROLE NOSUPERUSER"));
        let sql = login_sql("gw_other");
        assert!(sql.contains("CREATE ROLE gw_other LOGIN CREATEDB CREATEROLE") && !sql.contains(DEFAULT_LOGIN));
        assert!(valid_login("stonescriptdb_gateway"));
        for bad in ["", "Gw", "1gw", "pg_gw", "gw;drop", &"x".repeat(64)] {
            assert!(!valid_login(bad), "{bad}");
        }
    }

    #[test]
    fn hba_lines_follow_how_the_gateway_connects() {
        let l = hba_lines("gw", &Host::Unix(PathBuf::from("/var/run/postgresql")));
        assert_eq!(l.len(), 2);
        assert!(l[0].starts_with("local") && l[0].contains(" gw ") && l[0].ends_with("scram-sha-256"));
        assert!(l[1].starts_with("local") && l[1].contains(" all "));
        let l = hba_lines("gw", &Host::Tcp("10.1.2.3".into()));
        assert_eq!(l.len(), 2);
        assert!(l[0].contains(" gw ") && l[0].contains("10.1.2.3/32"));
        let l = hba_lines("gw", &Host::Tcp("::1".into()));
        assert!(l[0].contains("::1/128"));
    }
}
