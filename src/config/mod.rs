//! Configuration in two stages: [`Settings`] is what the defaults, `./.env`, the environment and the
//! command line said (as text, with where each value came from); [`Config`] is the validated, typed result
//! that the rest of the gateway reads. An invalid value stops startup with an error naming the key.

pub mod keys;
pub mod limits;
pub mod unknown;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use limits::Limits;

use crate::pg::params::{ConnectParams, Host};
use crate::security::cidr::Cidr;

/// Where deploys put extensions: outside every `CALL_SCHEMAS` entry, so `/call` can never reach their
/// functions.
pub const EXTENSION_SCHEMA: &str = "extensions";

/// Where a setting's value came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Default,
    DotEnv,
    Env,
    Flag,
}

/// Raw settings: key → (text, source). Secrets are redacted by `Debug`.
#[derive(Clone, Default)]
pub struct Settings {
    values: HashMap<&'static str, (String, Source)>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for k in keys::KEYS {
            if let Some((v, _)) = self.values.get(k.name) {
                if k.secret && !v.is_empty() {
                    m.entry(&k.name, &"***");
                } else {
                    m.entry(&k.name, v);
                }
            }
        }
        m.finish()
    }
}

/// What the command line asked for besides settings.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    Help,
    Version,
}

/// A configuration error; the message names the key.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Settings {
    /// Defaults only.
    pub fn defaults() -> Settings {
        let mut s = Settings::default();
        for k in keys::KEYS {
            s.values.insert(k.name, (k.default.to_string(), Source::Default));
        }
        s
    }

    /// Sets a value if `name` is a known key; returns false for unknown keys.
    pub fn set(&mut self, name: &str, value: &str, source: Source) -> bool {
        match keys::find(name) {
            Some(k) => {
                self.values.insert(k.name, (value.to_string(), source));
                true
            }
            None => false,
        }
    }

    pub fn get(&self, name: &str) -> &str {
        self.values.get(name).map(|(v, _)| v.as_str()).unwrap_or("")
    }

    pub fn source(&self, name: &str) -> Source {
        self.values.get(name).map(|(_, s)| *s).unwrap_or(Source::Default)
    }

    /// Reads `KEY=VALUE` lines (optional `export `, `#` comments, single or double quotes).
    pub fn apply_dotenv_text(&mut self, text: &str) -> Result<(), ConfigError> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((k, v)) = line.split_once('=') else {
                return Err(ConfigError(format!(".env line {}: expected KEY=VALUE", i + 1)));
            };
            let k = k.trim();
            let v = v.trim();
            let v = if v.len() >= 2
                && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
            {
                &v[1..v.len() - 1]
            } else {
                // An unquoted value may carry a trailing comment.
                v.split(" #").next().unwrap_or("").trim()
            };
            // Unknown keys in .env are allowed: the file is often shared with other tools.
            self.set(k, v, Source::DotEnv);
        }
        Ok(())
    }

    /// Applies the process environment; `RUST_LOG` fills `LOG_LEVEL` when that is unset.
    pub fn apply_env(&mut self, env: &HashMap<String, String>) {
        for k in keys::KEYS {
            if let Some(v) = env.get(k.name) {
                self.set(k.name, v, Source::Env);
            }
        }
        if !env.contains_key("LOG_LEVEL")
            && self.source("LOG_LEVEL") == Source::Default
            && let Some(v) = env.get("RUST_LOG")
        {
            // RUST_LOG may be `info` or `crate=debug,info`: take the last bare level.
            if let Some(level) = v.split(',').rfind(|p| !p.contains('=')) {
                self.set("LOG_LEVEL", level.trim(), Source::Env);
            }
        }
    }

    /// Applies `--key=value` / `--key value` flags. Returns Help/Version requests.
    pub fn apply_args(&mut self, args: &[String]) -> Result<Option<Command>, ConfigError> {
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            match a.as_str() {
                "--help" | "-h" => return Ok(Some(Command::Help)),
                "--version" | "-V" => return Ok(Some(Command::Version)),
                _ => {}
            }
            let Some(body) = a.strip_prefix("--") else {
                return Err(ConfigError(format!("unexpected argument '{a}' (see --help)")));
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => {
                    i += 1;
                    let Some(v) = args.get(i) else {
                        return Err(ConfigError(format!("flag --{body} needs a value")));
                    };
                    (body.to_string(), v.clone())
                }
            };
            let key = name.replace('-', "_").to_ascii_uppercase();
            if !self.set(&key, &value, Source::Flag) {
                return Err(ConfigError(format!("unknown flag --{name} (see --help)")));
            }
            i += 1;
        }
        Ok(None)
    }
}

/// How to reach PostgreSQL, before it is turned into connection parameters.
#[derive(Clone)]
pub struct DbSettings {
    /// `DATABASE_URL`, when set (wins over the rest).
    pub url: Option<String>,
    pub host: String,
    pub port: u16,
    pub name: String,
    pub user: String,
    pub password: Option<String>,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for DbSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbSettings")
            .field("url", &self.url.as_ref().map(|_| "***"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("name", &self.name)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Connection pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub max_per_pool: usize,
    pub max_total: usize,
    /// `MAX_CONNECTIONS_PER_PLATFORM` with 0 resolved: all pools of one platform together.
    pub max_per_platform: usize,
    pub pool_idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub connection_idle_timeout: Duration,
    pub wait_timeout: Duration,
    pub max_waiting: usize,
    /// `MAX_WAITING_PER_PLATFORM` with 0 resolved: calls waiting in all pools of one platform.
    pub max_waiting_per_platform: usize,
    /// `MAX_CONNECTIONS_PER_SERVER` with 0 resolved to the total.
    pub max_per_server: usize,
}

/// `/call` settings.
#[derive(Debug, Clone)]
pub struct CallConfig {
    pub timeout: Duration,
    /// `CALL_TERMINATE_AFTER_MS`: from the first cancel to `pg_terminate_backend`.
    pub terminate_after: Duration,
    /// `CALL_RESET_SESSION`: run `RESET ALL` and `RESET ROLE` behind every call.
    pub reset_session: bool,
    pub schemas: Vec<String>,
    /// `CALL_PIPELINE_DEPTH`: calls in flight on one backend connection (1 = no pipelining).
    pub pipeline_depth: usize,
    /// `CALL_PIPELINE_MAX_WAIT_US`: the expected wait a queued call may accept behind others.
    pub pipeline_max_wait: Duration,
    /// `CALL_BUSY_TARGET` with 0 resolved to the CPU count: below this many busy backend
    /// connections a call takes an idle connection rather than a place in a pipeline.
    pub busy_target: usize,
    /// `CALL_BUSY_CAP`: busy connections of one loop past which pipelines deepen (0: automatic).
    pub busy_cap: usize,
}

/// Allowlists and the admin token.
#[derive(Clone)]
pub struct SecurityConfig {
    pub allowed_networks: Vec<Cidr>,
    pub trusted_proxies: Vec<Cidr>,
    pub admin_token: Option<String>,
    pub admin_ips: Vec<Cidr>,
    /// `PLATFORM_SECRET` (or a random per-process secret): the key platform role passwords are derived from.
    pub platform_secret: std::sync::Arc<[u8]>,
    /// `PLATFORM_ROLE_PREFIX`: platform `p` logs in as `{prefix}{p}`.
    pub role_prefix: String,
    /// `EXTENSIONS_ALLOWED`: untrusted extensions a deploy may install.
    pub extensions_allowed: Vec<String>,
    /// `REQUIRE_PLATFORM_KEYS`: no platform route without a key or the admin token.
    pub require_platform_keys: bool,
    /// `METRICS_TOKEN`: when set, `/metrics` wants it (or the admin token).
    pub metrics_token: Option<String>,
    /// `PLATFORM_REGISTRATION`: whether creating a platform needs the admin token.
    pub registration: Registration,
    /// `MAX_PLATFORMS`: platforms recorded (0 = no cap).
    pub max_platforms: usize,
    /// `MAX_SCHEMAS_PER_PLATFORM`: stored schema names per platform (0 = no cap).
    pub max_schemas_per_platform: usize,
    /// `ALLOWED_HOSTS`: Host names answered besides IP literals and `localhost`, lower-case; `*` = any.
    pub allowed_hosts: Vec<String>,
    /// `ADMIN_RESERVED_CONNECTIONS`: client connections only peers in `ALLOWED_ADMIN_IPS` may take.
    pub admin_reserved_connections: usize,
}

/// Who may create a platform (`PLATFORM_REGISTRATION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Only with the admin token.
    Admin,
    /// Anyone the address allowlist lets in.
    Open,
}

impl std::fmt::Debug for SecurityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityConfig")
            .field("allowed_networks", &self.allowed_networks)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field("admin_ips", &self.admin_ips)
            .field("platform_secret", &"***")
            .field("role_prefix", &self.role_prefix)
            .field("extensions_allowed", &self.extensions_allowed)
            .field("require_platform_keys", &self.require_platform_keys)
            .field("metrics_token", &self.metrics_token.as_ref().map(|_| "***"))
            .field("registration", &self.registration)
            .field("max_platforms", &self.max_platforms)
            .field("max_schemas_per_platform", &self.max_schemas_per_platform)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("admin_reserved_connections", &self.admin_reserved_connections)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `LOG_DIR`: where the log file goes; none means stderr only.
    pub dir: Option<PathBuf>,
    /// `LOG_FILE_NAME`: the file's name in `dir`, a plain name (no `/`).
    pub file_name: String,
    pub level: Level,
    pub json: bool,
    /// `LOG_REQUESTS`: which requests get a line.
    pub requests: RequestLog,
    /// `LOG_SLOW_MS`: a request slower than this is logged under `LOG_REQUESTS=errors` too.
    pub slow: Duration,
}

/// Which requests the log shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestLog {
    /// Every request.
    All,
    /// Answers with status 400 and above, and slow ones.
    Errors,
    /// None.
    Off,
}

impl LogConfig {
    /// The log file, when `LOG_DIR` is set.
    pub fn file_path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(&self.file_name))
    }
}

/// Deploy settings.
#[derive(Debug, Clone)]
pub struct DeployConfig {
    pub workers: usize,
    pub queue: usize,
    pub parallelism: usize,
    /// `DEPLOY_MAX_PER_PLATFORM`, already capped at `workers - 1` (at least 1).
    pub max_per_platform: usize,
    /// `DEPLOY_STATEMENT_TIMEOUT_MS`; zero = no limit.
    pub statement_timeout: Duration,
    /// `DEPLOY_IDLE_TIMEOUT_MS`; zero = no limit.
    pub idle_timeout: Duration,
    /// `DEPLOY_TIMEOUT_SECS`: one deploy of one database in all.
    pub timeout: Duration,
    /// `DEPLOY_MAX_RESULT_BYTES`: what one statement of a deploy session may bring back (rows, or
    /// its largest message).
    pub max_result_bytes: usize,
    /// `DEPLOY_CONNECTION_CHECK_MS`; zero = off.
    pub connection_check: Duration,
    /// `MAX_DATABASES_PER_PLATFORM`; 0 = no limit.
    pub max_databases_per_platform: usize,
    pub catalog_db: String,
    pub archive_max_expanded_bytes: usize,
    pub archive_max_entries: usize,
    pub archive_max_file_bytes: usize,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `GATEWAY_THREADS` with 0 resolved to the CPU count.
    pub threads: usize,
    /// `CLIENT_PLACEMENT=pack`: client connections live on as few loops as keep up (see
    /// `server::balance`); `spread`: evenly by count, never moved.
    pub pack_loops: bool,
    /// `CLIENT_PACK_BELOW_PERCENT` as per mille of a core.
    pub pack_below_permille: u32,
    pub db: DbSettings,
    pub pool: PoolConfig,
    pub call: CallConfig,
    pub security: SecurityConfig,
    pub log: LogConfig,
    pub limits: Limits,
    pub deploy: DeployConfig,
    pub shutdown_grace: Duration,
    /// `METRICS_TOP_DATABASES`: databases named in `/metrics` pool figures; the rest are `other`.
    pub metrics_top_databases: usize,
    /// `METRICS_TRACKED_NAMES`: platforms, and functions, each loop keeps `/call` figures for; later
    /// names are counted as `other`; 0: no figures by name.
    pub metrics_tracked_names: usize,
    pub servers: ServersConfig,
}

/// Several servers and replicas.
#[derive(Debug, Clone)]
pub struct ServersConfig {
    /// `DB_REPLICAS`: replicas of the default server.
    pub default_replicas: Vec<crate::servers::Endpoint>,
    /// `READ_REPLICAS`.
    pub read_replicas: bool,
    /// `MAX_REPLICA_LAG_MS`.
    pub max_lag: Duration,
    /// `REPLICA_CHECK_INTERVAL_MS`.
    pub check_interval: Duration,
}

fn invalid(s: &Settings, key: &str, expected: &str) -> ConfigError {
    let v = s.get(key);
    let shown = if keys::find(key).is_some_and(|k| k.secret) { "***" } else { v };
    let from = match s.source(key) {
        Source::Default => "default",
        Source::DotEnv => ".env",
        Source::Env => "environment",
        Source::Flag => "command line",
    };
    ConfigError(format!("invalid value for {key}: '{shown}' (from {from}); expected {expected}"))
}

fn num<T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display>(
    s: &Settings,
    key: &str,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    match s.get(key).trim().parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(invalid(s, key, &format!("a whole number from {min} to {max}"))),
    }
}

fn millis(s: &Settings, key: &str) -> Result<Duration, ConfigError> {
    Ok(Duration::from_millis(num::<u64>(s, key, 1, 86_400_000)?))
}

fn secs(s: &Settings, key: &str) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(num::<u64>(s, key, 1, 31_536_000)?))
}

fn boolean(s: &Settings, key: &str) -> Result<bool, ConfigError> {
    match s.get(key).trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(s, key, "true or false")),
    }
}

fn opt(s: &Settings, key: &str) -> Option<String> {
    let v = s.get(key);
    if v.is_empty() { None } else { Some(v.to_string()) }
}

fn cidrs(s: &Settings, key: &str) -> Result<Vec<Cidr>, ConfigError> {
    Cidr::parse_list(s.get(key)).map_err(|e| invalid(s, key, &format!("comma-separated CIDR blocks ({e})")))
}

/// A PostgreSQL identifier-ish name for our own databases.
fn db_name(s: &Settings, key: &str) -> Result<String, ConfigError> {
    let v = s.get(key);
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !v.as_bytes()[0].is_ascii_digit();
    if ok { Ok(v.to_string()) } else { Err(invalid(s, key, "a lower-case identifier of at most 63 bytes")) }
}

impl DbSettings {
    /// Connection parameters for the administrative database (`DB_NAME` or the URL's database).
    pub fn connect_params(&self) -> ConnectParams {
        if let Some(u) = &self.url
            && let Ok(mut p) = ConnectParams::from_url(u)
        {
            p.connect_timeout = self.connect_timeout;
            return p;
        }
        let host = if self.host.starts_with('/') {
            Host::Unix(PathBuf::from(&self.host))
        } else {
            Host::Tcp(self.host.trim_start_matches('[').trim_end_matches(']').to_string())
        };
        ConnectParams {
            host,
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            dbname: self.name.clone(),
            application_name: "stonescriptdb-gateway".into(),
            connect_timeout: self.connect_timeout,
            options: None,
        }
    }
}

impl Config {
    /// Validates raw settings.
    pub fn from_settings(s: &Settings) -> Result<Config, ConfigError> {
        let host: IpAddr = s
            .get("GATEWAY_HOST")
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| invalid(s, "GATEWAY_HOST", "an IPv4 or IPv6 address literal"))?;
        let port = num::<u16>(s, "GATEWAY_PORT", 0, 65535)?;
        let url = opt(s, "DATABASE_URL");
        if let Some(u) = &url
            && let Err(e) = ConnectParams::from_url(u)
        {
            return Err(invalid(s, "DATABASE_URL", &format!("a postgres:// or postgresql:// URL ({e})")));
        }
        let db = DbSettings {
            url,
            host: {
                let h = s.get("DB_HOST").trim().to_string();
                if h.is_empty() {
                    return Err(invalid(s, "DB_HOST", "a host name, address or socket directory"));
                }
                h
            },
            port: num::<u16>(s, "DB_PORT", 1, 65535)?,
            name: {
                let n = s.get("DB_NAME").to_string();
                if n.is_empty() {
                    return Err(invalid(s, "DB_NAME", "a database name"));
                }
                n
            },
            user: {
                let u = s.get("DB_USER").to_string();
                if u.is_empty() {
                    return Err(invalid(s, "DB_USER", "a role name"));
                }
                u
            },
            password: opt(s, "DB_PASSWORD"),
            connect_timeout: millis(s, "DB_CONNECT_TIMEOUT_MS")?,
        };
        let threads = match num(s, "GATEWAY_THREADS", 0usize, 1024)? {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let max_total = num(s, "MAX_TOTAL_CONNECTIONS", 1usize, 100_000)?;
        let pool = PoolConfig {
            // Automatic: room for every loop to hold connections of a busy database (fewer make loops
            // hand their calls to each other), and never above the total.
            max_per_pool: match num(s, "MAX_CONNECTIONS_PER_POOL", 0usize, 10_000)? {
                0 => (2 * threads).max(10).min(max_total),
                n => n,
            },
            max_total,
            // Automatic: three quarters of the total, so other platforms keep room, but never less
            // than one pool may hold. Resolved below, once the pool size is known.
            max_per_platform: num(s, "MAX_CONNECTIONS_PER_PLATFORM", 0usize, 100_000)?,
            pool_idle_timeout: secs(s, "POOL_IDLE_TIMEOUT_SECS")?,
            max_lifetime: secs(s, "POOL_MAX_LIFETIME_SECS")?,
            connection_idle_timeout: secs(s, "CONNECTION_IDLE_TIMEOUT_SECS")?,
            wait_timeout: millis(s, "POOL_WAIT_TIMEOUT_MS")?,
            max_waiting: num(s, "POOL_MAX_WAITING", 0usize, 1_000_000)?,
            max_waiting_per_platform: num(s, "MAX_WAITING_PER_PLATFORM", 0usize, 10_000_000)?,
            max_per_server: match num(s, "MAX_CONNECTIONS_PER_SERVER", 0usize, 100_000)? {
                0 => max_total,
                n => n,
            },
        };
        let mut pool = pool;
        if pool.max_waiting_per_platform == 0 {
            pool.max_waiting_per_platform = pool.max_waiting.saturating_mul(4);
        }
        if pool.max_per_platform == 0 {
            pool.max_per_platform = (pool.max_total * 3 / 4).max(pool.max_per_pool).max(1);
        }
        if pool.max_per_pool > pool.max_total {
            return Err(ConfigError(format!(
                "invalid value for MAX_CONNECTIONS_PER_POOL: {} is more than MAX_TOTAL_CONNECTIONS ({})",
                pool.max_per_pool, pool.max_total
            )));
        }
        let schemas: Vec<String> =
            s.get("CALL_SCHEMAS").split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect();
        if schemas.is_empty()
            || schemas.iter().any(|x| !x.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
            || schemas.iter().any(|x| x.starts_with("pg_") || x == "information_schema" || x == EXTENSION_SCHEMA)
        {
            return Err(invalid(
                s,
                "CALL_SCHEMAS",
                "comma-separated lower-case schema names, not pg_* schemas nor the extensions schema",
            ));
        }
        let call = CallConfig {
            timeout: millis(s, "CALL_TIMEOUT_MS")?,
            terminate_after: millis(s, "CALL_TERMINATE_AFTER_MS")?,
            reset_session: boolean(s, "CALL_RESET_SESSION")?,
            schemas,
            pipeline_depth: num(s, "CALL_PIPELINE_DEPTH", 1usize, 64)?,
            pipeline_max_wait: Duration::from_micros(num::<u64>(s, "CALL_PIPELINE_MAX_WAIT_US", 0, 10_000_000)?),
            busy_target: match num(s, "CALL_BUSY_TARGET", 0usize, 10_000)? {
                0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
                n => n,
            },
            busy_cap: num(s, "CALL_BUSY_CAP", 0usize, 100_000)?,
        };
        let security = SecurityConfig {
            allowed_networks: cidrs(s, "ALLOWED_NETWORKS")?,
            trusted_proxies: cidrs(s, "TRUSTED_PROXIES")?,
            admin_token: match opt(s, "ADMIN_TOKEN") {
                Some(t) if t.len() < 16 => {
                    return Err(invalid(s, "ADMIN_TOKEN", "a token of at least 16 characters"));
                }
                t => t,
            },
            admin_ips: cidrs(s, "ALLOWED_ADMIN_IPS")?,
            platform_secret: match opt(s, "PLATFORM_SECRET") {
                Some(t) if t.len() < 32 => {
                    return Err(invalid(s, "PLATFORM_SECRET", "a secret of at least 32 characters"));
                }
                Some(t) => std::sync::Arc::from(t.into_bytes()),
                None => crate::security::random::process_secret(),
            },
            role_prefix: {
                let p = s.get("PLATFORM_ROLE_PREFIX").trim().to_string();
                let ok = !p.is_empty()
                    && p.len() <= 16
                    && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    && !p.starts_with("pg_")
                    && !p.as_bytes()[0].is_ascii_digit();
                if !ok {
                    return Err(invalid(
                        s,
                        "PLATFORM_ROLE_PREFIX",
                        "1 to 16 characters of [a-z0-9_], not starting with a digit or pg_",
                    ));
                }
                p
            },
            extensions_allowed: s
                .get("EXTENSIONS_ALLOWED")
                .split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect(),
            require_platform_keys: boolean(s, "REQUIRE_PLATFORM_KEYS")?,
            metrics_token: match opt(s, "METRICS_TOKEN") {
                Some(t) if t.len() < 16 => {
                    return Err(invalid(s, "METRICS_TOKEN", "a token of at least 16 characters"));
                }
                t => t,
            },
            registration: match s.get("PLATFORM_REGISTRATION").trim().to_ascii_lowercase().as_str() {
                "admin" => Registration::Admin,
                "open" => Registration::Open,
                "" if boolean(s, "REQUIRE_PLATFORM_KEYS")? => Registration::Admin,
                "" => Registration::Open,
                _ => return Err(invalid(s, "PLATFORM_REGISTRATION", "admin or open")),
            },
            max_platforms: num(s, "MAX_PLATFORMS", 0usize, 10_000_000)?,
            max_schemas_per_platform: num(s, "MAX_SCHEMAS_PER_PLATFORM", 0usize, 1_000_000)?,
            allowed_hosts: {
                let list: Vec<String> = s
                    .get("ALLOWED_HOSTS")
                    .split(',')
                    .map(|x| x.trim().trim_end_matches('.').to_ascii_lowercase())
                    .filter(|x| !x.is_empty())
                    .collect();
                if list
                    .iter()
                    .any(|h| h != "*" && !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
                {
                    return Err(invalid(
                        s,
                        "ALLOWED_HOSTS",
                        "comma-separated host names (letters, digits, '-', '.') or *",
                    ));
                }
                list
            },
            admin_reserved_connections: num(s, "ADMIN_RESERVED_CONNECTIONS", 0usize, 100_000)?,
        };
        let level = match s.get("LOG_LEVEL").trim().to_ascii_lowercase().as_str() {
            "error" => Level::Error,
            "warn" | "warning" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            "trace" => Level::Trace,
            _ => return Err(invalid(s, "LOG_LEVEL", "one of error, warn, info, debug, trace")),
        };
        let json = match s.get("LOG_FORMAT").trim() {
            "text" => false,
            "json" => true,
            _ => return Err(invalid(s, "LOG_FORMAT", "text or json")),
        };
        let file_name = s.get("LOG_FILE_NAME").trim().to_string();
        if file_name.is_empty() || file_name == "." || file_name == ".." || file_name.contains(['/', '\0']) {
            return Err(invalid(s, "LOG_FILE_NAME", "a file name without '/'"));
        }
        let requests = match s.get("LOG_REQUESTS").to_ascii_lowercase().as_str() {
            "all" => RequestLog::All,
            "errors" => RequestLog::Errors,
            "off" => RequestLog::Off,
            _ => return Err(invalid(s, "LOG_REQUESTS", "all, errors or off")),
        };
        let log = LogConfig {
            dir: opt(s, "LOG_DIR").map(PathBuf::from),
            file_name,
            level,
            json,
            requests,
            slow: millis(s, "LOG_SLOW_MS")?,
        };
        let limits = Limits {
            max_client_connections: num(s, "MAX_CLIENT_CONNECTIONS", 1usize, 1_000_000)?,
            max_headers: num(s, "MAX_HEADERS", 8usize, 256)?,
            max_head_bytes: num(s, "MAX_HEAD_BYTES", 1024usize, 1 << 20)?,
            max_call_body_bytes: num(s, "MAX_CALL_BODY_BYTES", 64usize, 1 << 30)?,
            max_upload_bytes: num(s, "MAX_UPLOAD_BYTES", 1024usize, 4 << 30)?,
            max_json_depth: num(s, "MAX_JSON_DEPTH", 2usize, 512)?,
            max_multipart_parts: num(s, "MAX_MULTIPART_PARTS", 1usize, 1024)?,
            head_timeout: millis(s, "HEAD_TIMEOUT_MS")?,
            body_timeout: millis(s, "BODY_TIMEOUT_MS")?,
            keepalive_timeout: millis(s, "KEEPALIVE_TIMEOUT_MS")?,
            shutdown_idle: millis(s, "SHUTDOWN_IDLE_MS")?,
            max_connections_per_address: num(s, "MAX_CONNECTIONS_PER_ADDRESS", 0usize, 1_000_000)?,
            body_total_timeout: millis(s, "BODY_TOTAL_TIMEOUT_MS")?,
            max_uploads_in_flight_bytes: num(s, "MAX_UPLOADS_IN_FLIGHT_BYTES", 1024usize, 1 << 40)?,
            max_response_bytes: num(s, "MAX_RESPONSE_BYTES", 1024usize, 1 << 34)?,
            max_answers_in_flight_bytes: num(s, "MAX_ANSWERS_IN_FLIGHT_BYTES", 1024usize, 1 << 40)?,
        };
        let workers = num(s, "DEPLOY_WORKERS", 1usize, 256)?;
        let deploy = DeployConfig {
            workers,
            max_per_platform: num(s, "DEPLOY_MAX_PER_PLATFORM", 1usize, 256)?.min(workers.saturating_sub(1)).max(1),
            statement_timeout: Duration::from_millis(num::<u64>(s, "DEPLOY_STATEMENT_TIMEOUT_MS", 0, 86_400_000)?),
            idle_timeout: Duration::from_millis(num::<u64>(s, "DEPLOY_IDLE_TIMEOUT_MS", 0, 86_400_000)?),
            timeout: secs(s, "DEPLOY_TIMEOUT_SECS")?,
            max_result_bytes: num(s, "DEPLOY_MAX_RESULT_BYTES", 65536usize, 1 << 30)?,
            connection_check: Duration::from_millis(num::<u64>(s, "DEPLOY_CONNECTION_CHECK_MS", 0, 86_400_000)?),
            max_databases_per_platform: num(s, "MAX_DATABASES_PER_PLATFORM", 0usize, 1_000_000)?,
            queue: num(s, "DEPLOY_QUEUE", 1usize, 100_000)?,
            parallelism: match num(s, "DEPLOY_PARALLELISM", 0usize, 256)? {
                0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2),
                n => n,
            },
            catalog_db: db_name(s, "CATALOG_DB")?,
            archive_max_expanded_bytes: num(s, "ARCHIVE_MAX_EXPANDED_BYTES", 1024usize, 16 << 30)?,
            archive_max_entries: num(s, "ARCHIVE_MAX_ENTRIES", 1usize, 10_000_000)?,
            archive_max_file_bytes: num(s, "ARCHIVE_MAX_FILE_BYTES", 1usize, 1 << 30)?,
        };
        Ok(Config {
            listen: SocketAddr::new(host, port),
            threads,
            db,
            pool,
            call,
            security,
            log,
            limits,
            deploy,
            shutdown_grace: secs(s, "SHUTDOWN_GRACE_SECS")?,
            pack_loops: match s.get("CLIENT_PLACEMENT") {
                "pack" => true,
                "spread" => false,
                _ => return Err(invalid(s, "CLIENT_PLACEMENT", "pack or spread")),
            },
            pack_below_permille: num::<u32>(s, "CLIENT_PACK_BELOW_PERCENT", 0, 100)? * 10,
            metrics_top_databases: num(s, "METRICS_TOP_DATABASES", 1usize, 1000)?,
            metrics_tracked_names: num(s, "METRICS_TRACKED_NAMES", 0usize, 100_000)?,
            servers: ServersConfig {
                default_replicas: s
                    .get("DB_REPLICAS")
                    .split(',')
                    .filter(|x| !x.trim().is_empty())
                    .map(crate::servers::Endpoint::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|_| invalid(s, "DB_REPLICAS", "comma-separated host:port"))?,
                read_replicas: boolean(s, "READ_REPLICAS")?,
                max_lag: Duration::from_millis(num::<u64>(s, "MAX_REPLICA_LAG_MS", 0, 86_400_000)?),
                check_interval: millis(s, "REPLICA_CHECK_INTERVAL_MS")?,
            },
        })
    }

    /// Defaults, for tests and embedding.
    pub fn defaults() -> Config {
        Config::from_settings(&Settings::defaults()).expect("defaults are valid")
    }
}

/// Builds the configuration the way the binary does: defaults, then `.env` in `dir`, then `env`, then
/// `args` (without the program name).
pub fn load(dir: &Path, env: &HashMap<String, String>, args: &[String]) -> Result<Command, ConfigError> {
    let mut s = Settings::defaults();
    let dotenv = dir.join(".env");
    match std::fs::read_to_string(&dotenv) {
        Ok(text) => s.apply_dotenv_text(&text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ConfigError(format!("cannot read {}: {e}", dotenv.display()))),
    }
    s.apply_env(env);
    if let Some(cmd) = s.apply_args(args)? {
        return Ok(cmd);
    }
    Ok(Command::Run(Box::new(Config::from_settings(&s)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(env: &[(&str, &str)], args: &[&str]) -> Result<Config, ConfigError> {
        let mut s = Settings::defaults();
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        s.apply_env(&env);
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        assert!(s.apply_args(&args)?.is_none());
        Config::from_settings(&s)
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::defaults();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.pool.max_per_pool, (2 * c.threads).max(10));
        assert_eq!(c.pool.max_total, 200);
    }

    #[test]
    fn precedence_env_then_flags() {
        let c = run(&[("GATEWAY_PORT", "9100")], &[]).unwrap();
        assert_eq!(c.listen.port(), 9100);
        let c = run(&[("GATEWAY_PORT", "9100")], &["--gateway-port", "9200"]).unwrap();
        assert_eq!(c.listen.port(), 9200);
        let c = run(&[], &["--gateway-host=::1"]).unwrap();
        assert_eq!(c.listen.to_string(), "[::1]:9000");
    }

    #[test]
    fn dotenv_is_lowest() {
        let mut s = Settings::defaults();
        s.apply_dotenv_text("# c\nexport GATEWAY_PORT=9300\nDB_USER='app'\nOTHER=1\n").unwrap();
        let env: HashMap<String, String> = [("DB_USER".to_string(), "envuser".to_string())].into();
        s.apply_env(&env);
        let c = Config::from_settings(&s).unwrap();
        assert_eq!(c.listen.port(), 9300);
        assert_eq!(c.db.user, "envuser");
    }

    #[test]
    fn errors_name_the_key() {
        for (k, v) in [
            ("GATEWAY_PORT", "abc"),
            ("GATEWAY_HOST", "nohost"),
            ("MAX_CONNECTIONS_PER_POOL", "-1"),
            ("ALLOWED_NETWORKS", "10.0.0.0/99"),
            ("LOG_LEVEL", "loud"),
            ("CALL_SCHEMAS", "pg_catalog"),
            ("DATABASE_URL", "mysql://x"),
        ] {
            let e = run(&[(k, v)], &[]).unwrap_err();
            assert!(e.0.contains(k), "{e}");
        }
        let e = run(&[], &["--no-such-key=1"]).unwrap_err();
        assert!(e.0.contains("no-such-key"), "{e}");
    }

    #[test]
    fn debug_hides_secrets() {
        let c = run(
            &[("DB_PASSWORD", "hunter2secret"), ("ADMIN_TOKEN", "tok-abcdefghijklmnop")],
            &["--database-url=postgres://u:pw-secret@h/db"],
        )
        .unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2secret") && !d.contains("tok-abcdefghijklmnop") && !d.contains("pw-secret"));
        let mut s = Settings::defaults();
        s.set("DB_PASSWORD", "hunter2secret", Source::Env);
        assert!(!format!("{s:?}").contains("hunter2secret"));
    }

    #[test]
    fn log_file_name_defaults_to_the_guide_and_keeps_the_old_name_on_request() {
        let c = run(&[("LOG_DIR", "/var/log/stonescriptdb-gateway")], &[]).unwrap();
        assert_eq!(
            c.log.file_path().unwrap(),
            PathBuf::from("/var/log/stonescriptdb-gateway/stonescriptdb-gateway.log")
        );
        let c = run(&[("LOG_DIR", "/srv/logs"), ("LOG_FILE_NAME", "gateway.log")], &[]).unwrap();
        assert_eq!(c.log.file_path().unwrap(), PathBuf::from("/srv/logs/gateway.log"));
        assert_eq!(run(&[], &[]).unwrap().log.file_path(), None);
        for bad in ["", "..", "a/b", "/etc/passwd"] {
            let e = run(&[("LOG_FILE_NAME", bad)], &[]).unwrap_err();
            assert!(e.0.contains("LOG_FILE_NAME"), "{e}");
        }
    }

    #[test]
    fn rust_log_fills_level() {
        let c = run(&[("RUST_LOG", "stonescriptdb=trace,debug")], &[]).unwrap();
        assert_eq!(c.log.level, Level::Debug);
    }
}
