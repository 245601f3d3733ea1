//! The table of every configuration key: its name, default and help text. `--help`, `.env.example` and
//! the README are checked against it.

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// The environment variable name (flags use the same name lower-cased with `-`: `--gateway-port`).
    pub name: &'static str,
    /// The default as text; empty means "unset".
    pub default: &'static str,
    pub help: &'static str,
    /// Never printed by `Debug` or logs.
    pub secret: bool,
}

const fn key(name: &'static str, default: &'static str, help: &'static str) -> Key {
    Key { name, default, help, secret: false }
}

const fn secret(name: &'static str, help: &'static str) -> Key {
    Key { name, default: "", help, secret: true }
}

/// The log file's name in `LOG_DIR` unless `LOG_FILE_NAME` says otherwise (earlier versions wrote
/// `gateway.log`).
pub const DEFAULT_LOG_FILE_NAME: &str = "stonescriptdb-gateway.log";

/// The name earlier versions gave the log file; see [`crate::log::init`].
pub const OLD_LOG_FILE_NAME: &str = "gateway.log";

pub const DEFAULT_ALLOWED_NETWORKS: &str = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16";

/// Every key the gateway reads.
pub const KEYS: &[Key] = &[
    key("GATEWAY_HOST", "127.0.0.1", "address to listen on (IPv4 or IPv6 literal)"),
    key("GATEWAY_PORT", "9000", "port to listen on (0 picks a free port)"),
    key(
        "GATEWAY_THREADS",
        "0",
        "event loops, each on its own thread with its own client and PostgreSQL connections; 0 = CPU count",
    ),
    key(
        "CLIENT_PACK_BELOW_PERCENT",
        "60",
        "with CLIENT_PLACEMENT=pack, a new connection goes to the first event loop using less than this percentage of a core, else to the least loaded (0: always the least loaded)",
    ),
    key(
        "CLIENT_PLACEMENT",
        "pack",
        "where client connections live: pack = on as few event loops as keep up with the load (fewer wake-ups per call; idle keep-alive connections move as loads change), spread = evenly by count, never moved",
    ),
    secret("DATABASE_URL", "postgres://user:password@host:port/dbname; when set it wins over the DB_* keys"),
    key("DB_HOST", "localhost", "PostgreSQL host name or address; a value starting with / is a Unix-socket directory"),
    key("DB_PORT", "5432", "PostgreSQL port"),
    key("DB_NAME", "postgres", "database used for administrative statements (CREATE DATABASE)"),
    key("DB_USER", "postgres", "PostgreSQL role the gateway logs in as"),
    secret("DB_PASSWORD", "password of DB_USER"),
    key("DB_CONNECT_TIMEOUT_MS", "5000", "time allowed to open a PostgreSQL connection"),
    key(
        "DB_REPLICAS",
        "",
        "streaming replicas of the default server, comma-separated host:port (reads may go there with READ_REPLICAS)",
    ),
    key(
        "READ_REPLICAS",
        "off",
        "on: /call of a STABLE or IMMUTABLE function goes to a replica of its database's server when one is within MAX_REPLICA_LAG_MS",
    ),
    key(
        "MAX_REPLICA_LAG_MS",
        "1000",
        "a replica further behind its primary than this gets no reads until it catches up",
    ),
    key(
        "REPLICA_CHECK_INTERVAL_MS",
        "1000",
        "how often the gateway checks each server and measures each replica's lag",
    ),
    key(
        "MAX_CONNECTIONS_PER_POOL",
        "0",
        "backend connections per database over all event loops; 0 = twice GATEWAY_THREADS, at least 10",
    ),
    key("MAX_TOTAL_CONNECTIONS", "200", "backend connections over all pools (hard cap)"),
    key(
        "MAX_CONNECTIONS_PER_SERVER",
        "0",
        "backend connections to one PostgreSQL server (or one replica) over all pools; 0 = MAX_TOTAL_CONNECTIONS",
    ),
    key(
        "MAX_CONNECTIONS_PER_PLATFORM",
        "0",
        "backend connections of all databases of one platform together; 0 = three quarters of MAX_TOTAL_CONNECTIONS, at least MAX_CONNECTIONS_PER_POOL",
    ),
    key("POOL_IDLE_TIMEOUT_SECS", "1800", "a pool unused this long is closed"),
    key("POOL_MAX_LIFETIME_SECS", "3600", "a backend connection older than this is closed when idle"),
    key("CONNECTION_IDLE_TIMEOUT_SECS", "600", "an idle backend connection is closed after this long"),
    key("POOL_WAIT_TIMEOUT_MS", "5000", "how long a call waits for a free connection before 503 pool_exhausted"),
    key("POOL_MAX_WAITING", "1024", "calls that may wait for a connection, per pool"),
    key(
        "MAX_WAITING_PER_PLATFORM",
        "0",
        "calls that may wait for a connection in all pools of one platform together; 0 = four times POOL_MAX_WAITING",
    ),
    key("CALL_TIMEOUT_MS", "30000", "statement timeout of one /call; the backend query is cancelled after it"),
    key(
        "CALL_TERMINATE_AFTER_MS",
        "2000",
        "a /call backend still running this long after its cancel is ended with pg_terminate_backend (its connection counts against the caps until it is gone)",
    ),
    key(
        "CALL_RESET_SESSION",
        "true",
        "reset the session behind every call (settings always; role, temporary tables, advisory locks, LISTEN, cursors, SQL-prepared statements where the database's functions mention them) so nothing leaks to the next call",
    ),
    key("CALL_PIPELINE_DEPTH", "4", "calls in flight on one backend connection under load; 1 turns pipelining off"),
    key(
        "CALL_PIPELINE_MAX_WAIT_US",
        "2000",
        "a call is queued behind others on a busy connection only if their recent run times add up to at most this",
    ),
    key(
        "CALL_BUSY_TARGET",
        "0",
        "busy backend connections (all pools) before calls prefer pipelining to idle connections; 0 = CPU count",
    ),
    key(
        "CALL_BUSY_CAP",
        "0",
        "busy backend connections (all pools of one event loop) past which calls pipeline up to 4 x CALL_PIPELINE_DEPTH deep rather than wake more backends; 0 = 8 x each loop's share of CALL_BUSY_TARGET",
    ),
    key("CALL_SCHEMAS", "public", "comma-separated schemas whose functions /call may run"),
    key("ALLOWED_NETWORKS", DEFAULT_ALLOWED_NETWORKS, "comma-separated CIDRs allowed to use the gateway"),
    key("TRUSTED_PROXIES", "", "comma-separated CIDRs whose X-Forwarded-For is believed"),
    secret("ADMIN_TOKEN", "bearer token for /admin/*; admin routes are off when unset"),
    key(
        "ALLOWED_ADMIN_IPS",
        "127.0.0.0/8,::1/128",
        "comma-separated CIDRs allowed to use /admin/*, /status and /metrics",
    ),
    secret(
        "METRICS_TOKEN",
        "bearer token /metrics wants besides an address in ALLOWED_ADMIN_IPS (the admin token also works); \
         unset: the address alone decides",
    ),
    key(
        "METRICS_TOP_DATABASES",
        "20",
        "databases named in the per-database pool metrics, those with the most calls, and likewise the platforms \
         with the most /call errors and the functions with the most /call time; the rest are summed as other",
    ),
    key(
        "METRICS_TRACKED_NAMES",
        "1000",
        "platforms, and functions, each event loop keeps /call figures for (names come from requests); \
         later names are counted as other; 0: no figures by name",
    ),
    secret(
        "PLATFORM_SECRET",
        "secret (32+ characters) the platform roles' passwords are derived from; all instances sharing a server \
         must use the same; a random one per process when unset",
    ),
    key(
        "PLATFORM_ROLE_PREFIX",
        "ssdb_",
        "prefix of the PostgreSQL role the gateway creates for each platform (role = prefix + platform)",
    ),
    key(
        "EXTENSIONS_ALLOWED",
        "",
        "comma-separated untrusted extensions a deploy may install (created by the gateway's login); trusted ones \
         need no listing",
    ),
    key(
        "REQUIRE_PLATFORM_KEYS",
        "false",
        "true: every platform route needs the platform's key (Authorization: Bearer) or the admin token",
    ),
    key(
        "PLATFORM_REGISTRATION",
        "",
        "who may create a platform with POST /platform/register: admin (the admin token) or open (anyone the \
         address allowlist lets in); unset: admin when REQUIRE_PLATFORM_KEYS is true, else open",
    ),
    key(
        "MAX_PLATFORMS",
        "1000",
        "platforms the gateway records; registering more → 409 platform_limit_reached (0 = no cap)",
    ),
    key(
        "MAX_SCHEMAS_PER_PLATFORM",
        "100",
        "stored schema names per platform; a new name past it → 409 schema_limit_reached (0 = no cap)",
    ),
    key(
        "ALLOWED_HOSTS",
        "",
        "comma-separated host names the gateway answers to in the Host header besides IP literals and localhost \
         (against DNS rebinding); * = any",
    ),
    key(
        "LOG_DIR",
        "",
        "when set, logs are also appended to LOG_DIR/LOG_FILE_NAME (the Debian package sets /var/log/stonescriptdb-gateway)",
    ),
    key(
        "LOG_FILE_NAME",
        DEFAULT_LOG_FILE_NAME,
        "name of the log file in LOG_DIR; gateway.log keeps the name of earlier versions",
    ),
    key("LOG_LEVEL", "info", "error, warn, info, debug or trace (RUST_LOG is read when unset)"),
    key("LOG_FORMAT", "text", "text or json"),
    key(
        "LOG_REQUESTS",
        "errors",
        "request lines: all, errors (status 400 and above, and requests slower than LOG_SLOW_MS) or off",
    ),
    key("LOG_SLOW_MS", "1000", "a request slower than this gets a line under LOG_REQUESTS=errors"),
    key("MAX_CLIENT_CONNECTIONS", "10000", "open client connections; more are refused at accept"),
    key(
        "ADMIN_RESERVED_CONNECTIONS",
        "16",
        "client connections kept free for peers in ALLOWED_ADMIN_IPS: others are refused this many short of \
         MAX_CLIENT_CONNECTIONS, so /health and admin routes stay reachable (at most half of it)",
    ),
    key(
        "MAX_CONNECTIONS_PER_ADDRESS",
        "1000",
        "open client connections from one IP address; more are refused at accept (0 = no cap)",
    ),
    key("MAX_HEADERS", "64", "header fields in one request"),
    key("MAX_HEAD_BYTES", "16384", "bytes of one request head (request line and headers)"),
    key("MAX_CALL_BODY_BYTES", "1048576", "body bytes of /call and other JSON routes"),
    key(
        "MAX_RESPONSE_BYTES",
        "33554432",
        "bytes of one /call answer; a function returning more gets 500 response_too_large, and rendering stops there",
    ),
    key(
        "MAX_ANSWERS_IN_FLIGHT_BYTES",
        "268435456",
        "bytes of /call answers being built at once, over all connections; a call that would take more gets 503 answers_busy",
    ),
    key("MAX_UPLOAD_BYTES", "52428800", "body bytes of schema uploads (multipart routes)"),
    key(
        "MAX_UPLOADS_IN_FLIGHT_BYTES",
        "268435456",
        "request body bytes being received over all connections; a body that would go past it is refused 503 (retryable)",
    ),
    key("MAX_JSON_DEPTH", "64", "nesting depth of JSON bodies"),
    key("MAX_MULTIPART_PARTS", "32", "parts in one multipart/form-data body"),
    key("HEAD_TIMEOUT_MS", "10000", "time allowed to send a request head (408 after)"),
    key("BODY_TIMEOUT_MS", "60000", "time allowed between body bytes (408 after)"),
    key(
        "BODY_TOTAL_TIMEOUT_MS",
        "300000",
        "longest time a request body may take in all, however it trickles in (408 after)",
    ),
    key("KEEPALIVE_TIMEOUT_MS", "75000", "idle keep-alive connections are closed after this"),
    key("SHUTDOWN_GRACE_SECS", "30", "on SIGTERM/SIGINT, in-flight requests get this long to finish"),
    key(
        "SHUTDOWN_IDLE_MS",
        "500",
        "during the drain, a connection with nothing in flight is closed after this long without a byte",
    ),
    key("ARCHIVE_MAX_EXPANDED_BYTES", "209715200", "bytes a schema archive may expand to"),
    key("ARCHIVE_MAX_ENTRIES", "10000", "entries in one schema archive"),
    key("ARCHIVE_MAX_FILE_BYTES", "10485760", "bytes of one file in a schema archive"),
    key("DEPLOY_WORKERS", "4", "threads that run deploys"),
    key("DEPLOY_QUEUE", "64", "deploys that may wait for a worker (503 when full)"),
    key("DEPLOY_PARALLELISM", "0", "databases migrated at once in a fleet run (0: number of CPUs)"),
    key(
        "DEPLOY_MAX_PER_PLATFORM",
        "2",
        "deploys one platform may run at once (a fleet run counts once); never more than DEPLOY_WORKERS - 1, so \
         other platforms always find a worker; more → 503 deploy_platform_busy",
    ),
    key(
        "DEPLOY_STATEMENT_TIMEOUT_MS",
        "300000",
        "statement_timeout of deploy sessions: one statement of a deploy may run this long; 0 = no limit",
    ),
    key(
        "DEPLOY_IDLE_TIMEOUT_MS",
        "60000",
        "idle_in_transaction_session_timeout of deploy sessions: PostgreSQL ends a deploy session whose \
         transaction waits this long for the gateway; 0 = no limit",
    ),
    key(
        "DEPLOY_MAX_RESULT_BYTES",
        "67108864",
        "bytes one statement of a deploy may bring back (its rows, or its largest message); past it the deploy fails and \
         is rolled back",
    ),
    key(
        "DEPLOY_TIMEOUT_SECS",
        "900",
        "time one deploy of one database may take in all; past it the deploy is cancelled and rolled back \
         (504 deploy_timeout)",
    ),
    key(
        "DEPLOY_CONNECTION_CHECK_MS",
        "5000",
        "client_connection_check_interval of deploy sessions (PostgreSQL 14+): a deploy whose gateway is \
         gone stops within this long; 0 = off",
    ),
    key(
        "MAX_DATABASES_PER_PLATFORM",
        "0",
        "databases the gateway creates for one platform (main, tenants, v2); 0 = no limit; more → 409 \
         database_limit_reached",
    ),
    key("CATALOG_DB", "stonescriptdb_gateway", "the gateway's own catalog database"),
];

pub fn find(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// `GATEWAY_PORT` → `--gateway-port`.
pub fn flag_name(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push_str("--");
    for c in name.chars() {
        s.push(if c == '_' { '-' } else { c.to_ascii_lowercase() });
    }
    s
}

/// The `--help` text.
/// Every subcommand of the binary with its one line for `--help` (`main.rs` dispatches on these names).
pub const SUBCOMMANDS: &[(&str, &str)] = &[
    ("setup-db", "create or update the gateway's least-rights PostgreSQL login; run once as a PostgreSQL superuser"),
    ("deploy", "pack a postgresql/ folder and deploy it to one database of a running gateway (/register)"),
    ("migrate", "pack a postgresql/ folder and migrate every database of a platform on a running gateway (/migrate)"),
    ("adopt", "take over the databases stonescriptdb-gateway 1.x made (README: Moving from stonescriptdb-gateway 1.x)"),
    ("release", "the way back: give adopted databases to stonescriptdb-gateway 1.x's login again"),
];

pub fn help_text() -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "stonescriptdb-gateway {}\n\nUSAGE: stonescriptdb-gateway [--KEY=VALUE | --KEY VALUE]... \
         [--help] [--version]\n\nEvery key is read from (lowest to highest priority) its default, \
         ./.env, the environment, then the command line.\n\n",
        crate::VERSION
    ));
    for k in KEYS {
        let def = if k.default.is_empty() { "(unset)" } else { k.default };
        s.push_str(&format!("  {:<30} {}\n  {:<30}   {} [default: {}]\n", k.name, flag_name(k.name), "", k.help, def));
    }
    s.push_str(&format!(
        "\nLOGS:\n  Every line goes to stderr (under systemd: journalctl -u stonescriptdb-gateway -f) and, when\n  \
         LOG_DIR is set, is also appended to LOG_DIR/LOG_FILE_NAME (default {DEFAULT_LOG_FILE_NAME}).\n  \
         The Debian package sets LOG_DIR=/var/log/stonescriptdb-gateway, so:\n    \
         tail -f /var/log/stonescriptdb-gateway/{DEFAULT_LOG_FILE_NAME}\n\nSUBCOMMANDS (each takes --help):\n"
    ));
    for (name, line) in SUBCOMMANDS {
        s.push_str(&format!("  stonescriptdb-gateway {name:<9} {line}\n"));
    }
    s
}
