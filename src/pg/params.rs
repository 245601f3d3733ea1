//! Connection parameters for PostgreSQL: the `postgres://` URL parser and where to dial.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Where the server listens.
#[derive(Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP literal (without brackets).
    Tcp(String),
    /// A directory holding the server's Unix socket (`.s.PGSQL.{port}` inside it).
    Unix(PathBuf),
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(h) => write!(f, "Tcp({h:?})"),
            Host::Unix(p) => write!(f, "Unix({p:?})"),
        }
    }
}

/// Everything needed to open and authenticate one session.
#[derive(Clone)]
pub struct ConnectParams {
    /// Where to connect.
    pub host: Host,
    /// TCP port, or the number in the Unix socket file name.
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Password, if the server asks for one.
    pub password: Option<String>,
    /// Database to open.
    pub dbname: String,
    /// Shown in `pg_stat_activity`.
    pub application_name: String,
    /// Bound on the TCP connect (per address tried).
    pub connect_timeout: Duration,
    /// Command-line options for the backend (the startup packet's `options`), set before the session
    /// runs anything, so nothing in the database can race them.
    pub options: Option<String>,
}

/// Secrets must never reach logs, so `Debug` masks the password.
impl fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("options", &self.options)
            .finish()
    }
}

const DEFAULT_PORT: u16 = 5432;
/// The backend options of a session of the gateway's login in a platform's database.
pub const PINNED_SEARCH_PATH: &str = "-c search_path=pg_catalog,pg_temp";
const DEFAULT_APPLICATION_NAME: &str = "stonescriptdb-gateway";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ConnectParams {
    /// Parses `postgres://user:password@host:port/dbname?host=/dir&application_name=x`.
    ///
    /// Errors never echo the URL, because it may hold a password.
    pub fn from_url(url: &str) -> Result<ConnectParams, String> {
        let rest = url
            .strip_prefix("postgresql://")
            .or_else(|| url.strip_prefix("postgres://"))
            .ok_or_else(|| "database URL must start with postgres:// or postgresql://".to_string())?;

        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        // rsplit: a password may legally contain a raw '@' in sloppy URLs; the host never does.
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };

        let (user, password) = match userinfo {
            Some(ui) => match ui.split_once(':') {
                Some((u, p)) => (percent_decode(u)?, Some(percent_decode(p)?)),
                None => (percent_decode(ui)?, None),
            },
            None => (String::new(), None),
        };

        let (host_raw, port) = split_host_port(hostport)?;
        let mut host = if host_raw.is_empty() {
            None
        } else {
            let decoded = percent_decode(&host_raw)?;
            Some(if decoded.starts_with('/') { Host::Unix(PathBuf::from(decoded)) } else { Host::Tcp(decoded) })
        };

        let mut dbname = if path.is_empty() { None } else { Some(percent_decode(path)?) };
        let mut port = port.unwrap_or(DEFAULT_PORT);
        let mut application_name = DEFAULT_APPLICATION_NAME.to_string();
        let mut user = user;
        let mut password = password;
        let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;

        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v)?;
            match k {
                "host" => host = Some(if v.starts_with('/') { Host::Unix(PathBuf::from(v)) } else { Host::Tcp(v) }),
                "port" => port = v.parse().map_err(|_| "invalid port in database URL")?,
                "application_name" => application_name = v,
                "user" => user = v,
                "password" => password = Some(v),
                "dbname" => dbname = Some(v),
                "connect_timeout" => {
                    let secs: u64 = v.parse().map_err(|_| "invalid connect_timeout in database URL")?;
                    connect_timeout = Duration::from_secs(secs.max(1));
                }
                // libpq accepts many knobs we do not implement; failing loudly beats a
                // silent downgrade (e.g. sslmode=require that we would ignore).
                other => return Err(format!("unsupported database URL parameter `{other}`")),
            }
        }

        if user.is_empty() {
            return Err("database URL has no user".to_string());
        }
        let host = host.unwrap_or_else(|| Host::Tcp("localhost".to_string()));
        let dbname = dbname.unwrap_or_else(|| user.clone());
        Ok(ConnectParams { host, port, user, password, dbname, application_name, connect_timeout, options: None })
    }

    /// Same server and credentials, another database.
    pub fn with_dbname(&self, db: &str) -> ConnectParams {
        ConnectParams { dbname: db.to_string(), ..self.clone() }
    }

    /// The gateway's own login in a database someone else (a platform) owns: the search path holds
    /// only `pg_catalog` and `pg_temp` from the first message on, so no function, operator, type or
    /// table the owner put in a schema of theirs can be picked by name resolution and run with the
    /// login's rights. Queries in such a session still qualify operators (`OPERATOR(pg_catalog.=)`).
    pub fn in_foreign_database(&self, db: &str) -> ConnectParams {
        ConnectParams { dbname: db.to_string(), options: Some(PINNED_SEARCH_PATH.to_string()), ..self.clone() }
    }

    /// Where the server is, for messages: `host:port` or the socket file's path (no credentials).
    pub fn target(&self) -> String {
        match &self.host {
            Host::Tcp(h) if h.contains(':') => format!("[{h}]:{}", self.port),
            Host::Tcp(h) => format!("{h}:{}", self.port),
            Host::Unix(dir) => dir.join(format!(".s.PGSQL.{}", self.port)).display().to_string(),
        }
    }

    /// Full path of the Unix socket file, `None` for TCP.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match &self.host {
            Host::Unix(dir) => Some(dir.join(format!(".s.PGSQL.{}", self.port))),
            Host::Tcp(_) => None,
        }
    }
}

fn split_host_port(hostport: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("unterminated [ in database URL host")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("garbage after ] in database URL host")?),
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) => Some(p.parse::<u16>().map_err(|_| "invalid port in database URL".to_string())?),
    };
    Ok((host, port))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or("truncated percent escape in database URL")?;
            let hi = hex_val(hex[0]).ok_or("bad percent escape in database URL")?;
            let lo = hex_val(hex[1]).ok_or("bad percent escape in database URL")?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    // NUL cannot travel in the startup packet and would otherwise surface far from its cause.
    if out.contains(&0) {
        return Err("NUL byte in database URL".to_string());
    }
    String::from_utf8(out).map_err(|_| "percent escape in database URL is not UTF-8".to_string())
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_tcp_url() {
        let p = ConnectParams::from_url("postgres://alice:p%40ss%3Aw@db.example:6543/app").unwrap();
        assert_eq!(p.host, Host::Tcp("db.example".into()));
        assert_eq!(p.port, 6543);
        assert_eq!(p.user, "alice");
        assert_eq!(p.password.as_deref(), Some("p@ss:w"));
        assert_eq!(p.dbname, "app");
        assert_eq!(p.application_name, DEFAULT_APPLICATION_NAME);
        assert_eq!(p.socket_path(), None);
    }

    #[test]
    fn defaults_port_and_dbname() {
        let p = ConnectParams::from_url("postgresql://bob@localhost").unwrap();
        assert_eq!(p.port, 5432);
        assert_eq!(p.dbname, "bob");
        assert_eq!(p.password, None);
    }

    #[test]
    fn ipv6_literal() {
        let p = ConnectParams::from_url("postgres://u:pw@[::1]:5433/d").unwrap();
        assert_eq!(p.host, Host::Tcp("::1".into()));
        assert_eq!(p.port, 5433);
        let p = ConnectParams::from_url("postgres://u@[::1]/d").unwrap();
        assert_eq!(p.port, 5432);
    }

    #[test]
    fn percent_encoded_socket_dir() {
        let p = ConnectParams::from_url("postgres://u@%2Frun%2Fpostgresql:5439/d").unwrap();
        assert_eq!(p.host, Host::Unix("/run/postgresql".into()));
        assert_eq!(p.socket_path(), Some(PathBuf::from("/run/postgresql/.s.PGSQL.5439")));
    }

    #[test]
    fn query_host_and_application_name() {
        let p =
            ConnectParams::from_url("postgres://u:x@/d?host=/var/run/postgresql&application_name=gw%20test").unwrap();
        assert_eq!(p.host, Host::Unix("/var/run/postgresql".into()));
        assert_eq!(p.application_name, "gw test");
        assert_eq!(p.socket_path(), Some(PathBuf::from("/var/run/postgresql/.s.PGSQL.5432")));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(ConnectParams::from_url("mysql://u@h/d").is_err());
        assert!(ConnectParams::from_url("postgres://u@h:notaport/d").is_err());
        assert!(ConnectParams::from_url("postgres://u@h/d?sslmode=require").is_err());
        assert!(ConnectParams::from_url("postgres://h/d").is_err());
        assert!(ConnectParams::from_url("postgres://u:%zz@h/d").is_err());
        assert!(ConnectParams::from_url("postgres://u%00x@h/d").is_err());
        let err = ConnectParams::from_url("postgres://u:secret@h:99999/d").unwrap_err();
        assert!(!err.contains("secret"));
    }

    #[test]
    fn debug_masks_password() {
        let p = ConnectParams::from_url("postgres://u:hunter2@h/d").unwrap();
        let s = format!("{p:?}");
        assert!(s.contains(r#"password: Some("***")"#), "{s}");
        assert!(!s.contains("hunter2"));
    }

    #[test]
    fn with_dbname_keeps_the_rest() {
        let p = ConnectParams::from_url("postgres://u:pw@h:1/a").unwrap();
        let q = p.with_dbname("b");
        assert_eq!(q.dbname, "b");
        assert_eq!(q.user, "u");
        assert_eq!(q.password.as_deref(), Some("pw"));
        assert_eq!(q.port, 1);
    }
}
