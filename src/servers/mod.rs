//! The PostgreSQL servers databases live on and their streaming replicas: what each one is, how to
//! reach it, where a new database goes, and how healthy every replica is right now. The catalog
//! (on the `default` server) stores the definitions; this module holds them in memory for the event
//! loops and deploy workers, which read them without asking PostgreSQL.

pub mod health;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::pg::params::{ConnectParams, Host};

/// The server named by `DB_HOST`/`DATABASE_URL`; it holds the catalog.
pub const DEFAULT_SERVER: &str = "default";

/// Where a server or replica listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name, IP literal, or a Unix-socket directory (starts with `/`).
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses `host:port` (`[v6]:port`, `/socket/dir:port`).
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let s = s.trim();
        let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("'{s}' is not host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| format!("'{s}' has no valid port"))?;
        if host.is_empty() || port == 0 {
            return Err(format!("'{s}' is not host:port"));
        }
        Ok(Endpoint { host: host.to_string(), port })
    }

    /// `host:port`, for keys, logs and answers.
    pub fn label(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The TCP address to dial (`None` for a socket directory, or a name that does not resolve).
    /// Resolved off the event loops, when the definition is loaded.
    pub fn resolve(&self) -> Option<std::net::SocketAddr> {
        use std::net::ToSocketAddrs;
        if self.host.starts_with('/') {
            return None;
        }
        (self.host.as_str(), self.port).to_socket_addrs().ok().and_then(|mut a| a.next())
    }

    /// `base` (credentials, admin database, timeouts) pointed at this endpoint.
    pub fn params(&self, base: &ConnectParams) -> ConnectParams {
        let host = if self.host.starts_with('/') {
            Host::Unix(PathBuf::from(&self.host))
        } else {
            Host::Tcp(self.host.clone())
        };
        ConnectParams { host, port: self.port, ..base.clone() }
    }
}

/// What an operator set for a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Takes new databases.
    Active,
    /// Serves its databases but gets no new ones.
    Draining,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Active => "active",
            ServerState::Draining => "draining",
        }
    }

    pub fn parse(s: &str) -> ServerState {
        if s == "draining" { ServerState::Draining } else { ServerState::Active }
    }
}

/// One server as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerDef {
    pub name: String,
    pub endpoint: Endpoint,
    /// Login for this server; `None`: the gateway's own (`DB_USER`/`DB_PASSWORD`).
    pub user: Option<String>,
    pub password: Option<String>,
    /// Share of new databases relative to other servers (placement divides counts by it).
    pub weight: u32,
    pub state: ServerState,
    pub replicas: Vec<Endpoint>,
}

/// How one replica is doing, as the health monitor last saw it.
#[derive(Debug)]
pub struct ReplicaHealth {
    pub endpoint: Endpoint,
    pub addr: Option<std::net::SocketAddr>,
    /// Reachable, in recovery and replaying within `MAX_REPLICA_LAG_MS`.
    usable: AtomicBool,
    /// Replay lag in ms as last measured; `u64::MAX` until measured or while unreachable.
    lag_ms: AtomicU64,
    /// Why it is not usable, for `/health`.
    reason: RwLock<Option<String>>,
}

impl ReplicaHealth {
    fn new(endpoint: Endpoint) -> ReplicaHealth {
        ReplicaHealth {
            addr: endpoint.resolve(),
            endpoint,
            usable: AtomicBool::new(false),
            lag_ms: AtomicU64::new(u64::MAX),
            reason: RwLock::new(Some("not checked yet".into())),
        }
    }

    pub fn usable(&self) -> bool {
        self.usable.load(Ordering::Acquire)
    }

    pub fn lag_ms(&self) -> Option<u64> {
        match self.lag_ms.load(Ordering::Acquire) {
            u64::MAX => None,
            v => Some(v),
        }
    }

    pub fn reason(&self) -> Option<String> {
        self.reason.read().map(|r| r.clone()).unwrap_or(None)
    }

    /// The monitor's verdict.
    pub fn set(&self, usable: bool, lag_ms: Option<u64>, reason: Option<String>) {
        self.lag_ms.store(lag_ms.unwrap_or(u64::MAX), Ordering::Release);
        if let Ok(mut r) = self.reason.write() {
            *r = reason;
        }
        self.usable.store(usable, Ordering::Release);
    }

    /// A call could not connect: skipped until the monitor sees it well again.
    pub fn mark_failed(&self, why: &str) {
        self.set(false, None, Some(why.to_string()));
    }
}

/// A server with its live state.
#[derive(Debug)]
pub struct Server {
    pub def: ServerDef,
    /// Where its primary is dialled (see [`Endpoint::resolve`]).
    pub addr: Option<std::net::SocketAddr>,
    pub replicas: Vec<Arc<ReplicaHealth>>,
    /// The primary answered the monitor's last check (`true` until checked).
    reachable: AtomicBool,
}

impl Server {
    fn new(def: ServerDef) -> Server {
        let replicas = def.replicas.iter().cloned().map(|e| Arc::new(ReplicaHealth::new(e))).collect();
        Server { addr: def.endpoint.resolve(), def, replicas, reachable: AtomicBool::new(true) }
    }

    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }

    pub fn set_reachable(&self, up: bool) {
        self.reachable.store(up, Ordering::Release);
    }

    /// The first usable replica from `turn` on (callers count turns themselves, so that loops do
    /// not share a counter); `None` sends the call to the primary.
    pub fn pick_replica(&self, turn: usize) -> Option<usize> {
        let n = self.replicas.len();
        if n == 0 {
            return None;
        }
        (0..n).map(|i| (turn + i) % n).find(|&i| self.replicas[i].usable())
    }

    /// Admin connection parameters: the gateway's login unless the server has its own.
    pub fn params(&self, base: &ConnectParams) -> ConnectParams {
        let mut p = self.def.endpoint.params(base);
        if let Some(u) = &self.def.user {
            p.user = u.clone();
            p.password = self.def.password.clone();
        }
        p
    }

    /// Like [`Server::params`], for replica `i`.
    pub fn replica_params(&self, i: usize, base: &ConnectParams) -> Option<ConnectParams> {
        let mut p = self.params(base);
        let r = self.replicas.get(i)?.endpoint.params(base);
        p.host = r.host;
        p.port = r.port;
        Some(p)
    }
}

/// Every known server, shared by the loops, the deploy workers and the health monitor.
#[derive(Debug)]
pub struct Servers {
    /// The gateway's own login on the default server (`DB_*`/`DATABASE_URL`).
    base: ConnectParams,
    map: RwLock<HashMap<String, Arc<Server>>>,
    /// Bumped by every [`Servers::replace`]: a loop keeps its own copy of the entries it uses and
    /// reads this (a plain load) to know when to drop it, so no call takes the lock.
    generation: AtomicU64,
}

impl Servers {
    /// Only the default server, from the configuration.
    pub fn new(base: ConnectParams, default_replicas: Vec<Endpoint>) -> Arc<Servers> {
        let def = ServerDef {
            name: DEFAULT_SERVER.into(),
            endpoint: default_endpoint(&base),
            user: None,
            password: None,
            weight: 1,
            state: ServerState::Active,
            replicas: default_replicas,
        };
        let mut map = HashMap::new();
        map.insert(DEFAULT_SERVER.to_string(), Arc::new(Server::new(def)));
        Arc::new(Servers { base, map: RwLock::new(map), generation: AtomicU64::new(0) })
    }

    pub fn base(&self) -> &ConnectParams {
        &self.base
    }

    pub fn get(&self, name: &str) -> Option<Arc<Server>> {
        self.map.read().ok()?.get(name).cloned()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Every server, `default` first, then by name.
    pub fn all(&self) -> Vec<Arc<Server>> {
        let mut v: Vec<Arc<Server>> = self.map.read().map(|m| m.values().cloned().collect()).unwrap_or_default();
        v.sort_by(|a, b| (a.def.name != DEFAULT_SERVER, &a.def.name).cmp(&(b.def.name != DEFAULT_SERVER, &b.def.name)));
        v
    }

    /// Puts the catalog's definitions in place. The default server keeps its connection settings
    /// from the configuration; its state and weight come from the catalog. A definition that did not
    /// change keeps its live state (replica health, counters).
    pub fn replace(&self, defs: Vec<ServerDef>) {
        // Built outside the lock: a new entry resolves its host names, which may take a while, and
        // the loops read the map on their way.
        let current: HashMap<String, Arc<Server>> = match self.map.read() {
            Ok(m) => m.clone(),
            Err(_) => return,
        };
        let default = current.get(DEFAULT_SERVER).cloned();
        let mut next: HashMap<String, Arc<Server>> = HashMap::new();
        for mut d in defs {
            if d.name == DEFAULT_SERVER {
                let Some(cur) = &default else { continue };
                d.endpoint = cur.def.endpoint.clone();
                d.user = None;
                d.password = None;
                d.replicas = cur.def.replicas.clone();
            }
            let s = match current.get(&d.name) {
                Some(cur) if cur.def == d => cur.clone(),
                _ => Arc::new(Server::new(d)),
            };
            next.insert(s.def.name.clone(), s);
        }
        if !next.contains_key(DEFAULT_SERVER)
            && let Some(d) = default
        {
            next.insert(DEFAULT_SERVER.to_string(), d);
        }
        let Ok(mut m) = self.map.write() else { return };
        *m = next;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

fn default_endpoint(base: &ConnectParams) -> Endpoint {
    let host = match &base.host {
        Host::Tcp(h) => h.clone(),
        Host::Unix(d) => d.display().to_string(),
    };
    Endpoint { host, port: base.port }
}

/// Where a new database goes when the request does not say: the active server with the fewest
/// databases for its weight (ties: `default`, then by name). Returns candidates best first, so the
/// caller can go on to the next when one cannot be reached.
pub fn placement_order(candidates: &[(ServerDef, u64)]) -> Vec<String> {
    let mut v: Vec<&(ServerDef, u64)> =
        candidates.iter().filter(|(d, _)| d.state == ServerState::Active && d.weight > 0).collect();
    // count / weight compared without division: a/wa < b/wb ⇔ a·wb < b·wa.
    v.sort_by(|(a, ca), (b, cb)| {
        let l = u128::from(*ca) * u128::from(b.weight);
        let r = u128::from(*cb) * u128::from(a.weight);
        l.cmp(&r).then((a.name != DEFAULT_SERVER).cmp(&(b.name != DEFAULT_SERVER))).then(a.name.cmp(&b.name))
    });
    v.into_iter().map(|(d, _)| d.name.clone()).collect()
}

/// A server name: lower-case letters, digits and `_`, at most 63 bytes.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && s.as_bytes()[0].is_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, weight: u32, state: ServerState) -> ServerDef {
        ServerDef {
            name: name.into(),
            endpoint: Endpoint { host: "h".into(), port: 5432 },
            user: None,
            password: None,
            weight,
            state,
            replicas: vec![],
        }
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(Endpoint::parse("db2:5433").unwrap(), Endpoint { host: "db2".into(), port: 5433 });
        assert_eq!(Endpoint::parse("[::1]:5432").unwrap().host, "::1");
        assert_eq!(Endpoint::parse("/tmp/sock:6000").unwrap().host, "/tmp/sock");
        assert_eq!(Endpoint::parse("[::1]:5432").unwrap().label(), "[::1]:5432");
        for bad in ["db2", "db2:", ":5432", "db2:x", "db2:0", "db2:70000"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn placement_prefers_the_fewest_databases_per_weight_and_skips_draining() {
        let c = vec![
            (def("default", 1, ServerState::Active), 4),
            (def("b", 2, ServerState::Active), 6),
            (def("c", 1, ServerState::Draining), 0),
            (def("d", 0, ServerState::Active), 0),
        ];
        // b: 6/2 = 3 < default's 4/1.
        assert_eq!(placement_order(&c), vec!["b".to_string(), "default".to_string()]);
        let c = vec![(def("x", 1, ServerState::Active), 2), (def("default", 1, ServerState::Active), 2)];
        assert_eq!(placement_order(&c), vec!["default".to_string(), "x".to_string()], "ties go to default");
    }

    #[test]
    fn replicas_are_taken_in_turn_and_unusable_ones_skipped() {
        let mut d = def("s", 1, ServerState::Active);
        d.replicas = vec![Endpoint { host: "r1".into(), port: 1 }, Endpoint { host: "r2".into(), port: 2 }];
        let s = Server::new(d);
        assert_eq!(s.pick_replica(0), None, "unchecked replicas are not used");
        s.replicas[0].set(true, Some(0), None);
        s.replicas[1].set(true, Some(3), None);
        let picks: Vec<_> = (0..4).map(|t| s.pick_replica(t).unwrap()).collect();
        assert_eq!(picks, [0, 1, 0, 1]);
        s.replicas[0].mark_failed("refused");
        assert!((0..4).all(|t| s.pick_replica(t) == Some(1)));
        assert_eq!(s.replicas[0].lag_ms(), None);
        assert_eq!(s.replicas[0].reason().as_deref(), Some("refused"));
    }

    #[test]
    fn replacing_keeps_the_default_servers_connection_and_live_state() {
        let base = ConnectParams::from_url("postgres://gw@pg1:5432/postgres").unwrap();
        let servers = Servers::new(base, vec![Endpoint { host: "pg1r".into(), port: 5432 }]);
        let before = servers.get(DEFAULT_SERVER).unwrap();
        before.replicas[0].set(true, Some(1), None);
        let mut stored_default = def(DEFAULT_SERVER, 1, ServerState::Active);
        stored_default.endpoint = Endpoint { host: "elsewhere".into(), port: 1 };
        servers.replace(vec![stored_default, def("b", 1, ServerState::Active)]);
        let after = servers.get(DEFAULT_SERVER).unwrap();
        assert_eq!(after.def.endpoint, Endpoint { host: "pg1".into(), port: 5432 });
        assert!(Arc::ptr_eq(&before, &after), "unchanged: the same live entry");
        assert_eq!(servers.all().iter().map(|s| s.def.name.clone()).collect::<Vec<_>>(), ["default", "b"]);
        servers.replace(vec![def(DEFAULT_SERVER, 1, ServerState::Draining)]);
        assert!(servers.get("b").is_none());
        assert_eq!(servers.get(DEFAULT_SERVER).unwrap().def.state, ServerState::Draining);
    }
}
