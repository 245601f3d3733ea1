//! Who may call which database: the catalog's records of databases (platform, tenant, the role their
//! calls run as), the databases it said it does not record, and the platforms' keys. Each event loop
//! keeps its own copy, filled by messages from the catalog threads, so admitting a call takes no lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::request::CallRequest;
use crate::catalog::CallOwner;
use crate::error::{ApiError, Kind};
use crate::security::keys::{Credential, StoredKey};

/// A database as the catalog records it, for `/call`.
#[derive(Debug, Clone)]
struct Owned {
    platform: String,
    /// The `tenant_id` a call must give; `None` for a main database.
    tenant: Option<String>,
    /// The PostgreSQL role its calls log in as (shared: taken on every call without allocating).
    role: Arc<str>,
    /// The server that holds it.
    server: Arc<str>,
}

/// What [`Owners::admit`] decided about a call before it runs.
#[derive(Debug)]
pub enum Admission {
    /// Known, owned by the caller's platform and tenant, key (if any) presented.
    Go,
    /// The catalog must be asked first: the database is not known to this loop yet.
    AskCatalog,
    /// Refused, with the answer.
    Refused(ApiError),
}

/// How long "the catalog does not record this database" is believed before asking again.
const UNKNOWN_TTL: Duration = Duration::from_secs(2);
/// Bound on the remembered unknown names, so random names cannot grow memory.
const UNKNOWN_MAX: usize = 10_000;

/// The answer for a call to a database the catalog does not record.
pub fn not_recorded(req: &CallRequest) -> ApiError {
    let what = match &req.tenant {
        Some(t) => format!("tenant '{t}' of platform '{}'", req.platform),
        None => format!("platform '{}'", req.platform),
    };
    ApiError::new(
        Kind::DatabaseNotFound,
        format!(
            "no database '{}' is registered for {what}; create it with POST /register (or /admin/create-tenant, \
             /database/create) first; a database of that name made by stonescriptdb-gateway 1.x is served after \
             `{}`",
            req.database,
            crate::deploy::upstream::adopt_command(&req.platform)
        ),
    )
    .with_database(&req.database)
}

/// The records of one loop.
#[derive(Debug, Default)]
pub struct Owners {
    /// Databases the catalog records. A database that is not here is never served.
    owners: HashMap<String, Owned>,
    /// Databases the catalog was asked about and does not record, with when it said so.
    unknown: HashMap<String, Instant>,
    /// Stored platform keys: platform → keys. A platform missing here has none.
    keys: HashMap<String, Vec<StoredKey>>,
    /// `PLATFORM_ROLE_PREFIX`, for records made before platforms had roles.
    role_prefix: String,
    /// `REQUIRE_PLATFORM_KEYS`.
    require_keys: bool,
}

impl Owners {
    pub fn new(role_prefix: &str, require_keys: bool) -> Owners {
        Owners { role_prefix: role_prefix.to_string(), require_keys, ..Owners::default() }
    }

    /// The role calls to `database` run as, if the catalog records it.
    pub fn role_of(&self, database: &str) -> Option<Arc<str>> {
        self.owners.get(database).map(|o| o.role.clone())
    }

    /// The server that holds `database`, if the catalog records it.
    pub fn server_of(&self, database: &str) -> Option<&Arc<str>> {
        self.owners.get(database).map(|o| &o.server)
    }

    /// Adds or refreshes ownership records from the catalog.
    pub fn set_owners(&mut self, list: Vec<CallOwner>) {
        for o in list {
            self.unknown.remove(&o.database);
            let role = match o.role {
                Some(r) => r,
                // Recorded before the platform's role was: the role the gateway derives for it.
                None => format!("{}{}", self.role_prefix, o.platform),
            };
            let server = match self.owners.get(&o.database) {
                Some(cur) if *cur.server == *o.server => cur.server.clone(),
                _ => Arc::from(o.server),
            };
            self.owners
                .insert(o.database, Owned { platform: o.platform, tenant: o.tenant, role: Arc::from(role), server });
        }
    }

    /// Remembers that the catalog does not record `database`.
    pub fn set_unknown(&mut self, database: &str, now: Instant) {
        if self.unknown.len() >= UNKNOWN_MAX {
            self.unknown.retain(|_, at| now.saturating_duration_since(*at) < UNKNOWN_TTL);
            if self.unknown.len() >= UNKNOWN_MAX {
                self.unknown.clear();
            }
        }
        self.unknown.insert(database.to_string(), now);
    }

    /// Replaces the keys of the platforms listed (`complete`: of every platform).
    pub fn set_keys(&mut self, list: Vec<(String, Vec<StoredKey>)>, complete: bool) {
        if complete {
            self.keys.clear();
        }
        for (p, k) in list {
            if k.is_empty() {
                self.keys.remove(&p);
            } else {
                self.keys.insert(p, k);
            }
        }
    }

    /// Decides whether a call may run, before it takes a connection: the database must be one the
    /// catalog records, for this platform and tenant (platform `a` tenant `b_main` and platform `a_b` both
    /// give `a_b_main`), and the caller must bring the platform's key when it has one.
    pub fn admit(&self, req: &CallRequest, cred: &Credential, now: Instant) -> Admission {
        // The named platform's key comes first: without it, nothing is said about which of its
        // tenants exist (401 whether the database is there or not).
        let named = self.keys.get(&*req.platform).map(Vec::as_slice).unwrap_or(&[]);
        if let Err(e) = cred.allows(&req.platform, named, self.require_keys) {
            return Admission::Refused(e);
        }
        let Some(o) = self.owners.get(&req.database) else {
            return match self.unknown.get(&req.database) {
                Some(at) if now.saturating_duration_since(*at) < UNKNOWN_TTL => Admission::Refused(not_recorded(req)),
                _ => Admission::AskCatalog,
            };
        };
        if *o.platform != *req.platform || o.tenant != req.tenant {
            return Admission::Refused(
                ApiError::new(
                    Kind::NameConflict,
                    format!(
                        "database '{}' belongs to platform '{}'{}, not to this platform and tenant",
                        req.database,
                        o.platform,
                        o.tenant.as_deref().map(|t| format!(" (tenant '{t}')")).unwrap_or_default()
                    ),
                )
                .with_database(&req.database),
            );
        }
        let keys = self.keys.get(&o.platform).map(Vec::as_slice).unwrap_or(&[]);
        match cred.allows(&o.platform, keys, self.require_keys) {
            Ok(()) => Admission::Go,
            Err(e) => Admission::Refused(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Value;

    fn call(platform: &str, tenant: Option<&str>) -> CallRequest {
        let mut m = vec![
            ("platform".to_string(), Value::String(platform.into())),
            ("function".to_string(), Value::String("f".into())),
        ];
        if let Some(t) = tenant {
            m.push(("tenant_id".to_string(), Value::String(t.into())));
        }
        CallRequest::from_json(Value::Object(m)).unwrap()
    }

    fn owner(database: &str, platform: &str, tenant: Option<&str>) -> CallOwner {
        CallOwner {
            database: database.into(),
            platform: platform.into(),
            tenant: tenant.map(str::to_string),
            role: Some(format!("ssdb_{platform}")),
            server: crate::servers::DEFAULT_SERVER.into(),
        }
    }

    #[test]
    fn only_the_owning_platform_and_tenant_get_in() {
        let mut o = Owners::new("ssdb_", false);
        let now = Instant::now();
        o.set_owners(vec![owner("a_b_main", "a_b", None), owner("x_t1", "x", Some("t1"))]);
        let anyone = Credential::from_header(None, false);
        assert!(matches!(o.admit(&call("a_b", None), &anyone, now), Admission::Go));
        // Platform `a`, tenant `b_main` names the same database as platform `a_b`.
        match o.admit(&call("a", Some("b_main")), &anyone, now) {
            Admission::Refused(e) => assert_eq!(e.kind, Kind::NameConflict),
            other => panic!("{other:?}"),
        }
        assert!(matches!(o.admit(&call("x", Some("t1")), &anyone, now), Admission::Go));
        // Same platform, other tenant, same database name: tenant `main` of `x` is `x_main`.
        o.set_owners(vec![owner("x_main", "x", None)]);
        match o.admit(&call("x", Some("main")), &anyone, now) {
            Admission::Refused(e) => assert_eq!(e.kind, Kind::NameConflict),
            other => panic!("{other:?}"),
        }
        assert!(matches!(o.admit(&call("x", None), &anyone, now), Admission::Go));
        assert!(matches!(o.admit(&call("x", Some("t2")), &anyone, now), Admission::AskCatalog));
        o.set_unknown("x_t2", now);
        match o.admit(&call("x", Some("t2")), &anyone, now) {
            Admission::Refused(e) => assert_eq!(e.kind, Kind::DatabaseNotFound),
            other => panic!("{other:?}"),
        }
        assert!(matches!(o.admit(&call("x", Some("t2")), &anyone, now + UNKNOWN_TTL), Admission::AskCatalog));
        assert_eq!(o.role_of("x_t1").as_deref(), Some("ssdb_x"));
    }

    #[test]
    fn a_keyed_platform_answers_401_before_saying_whether_a_tenant_exists() {
        let mut o = Owners::new("ssdb_", false);
        let now = Instant::now();
        o.set_owners(vec![owner("k_t1", "k", Some("t1"))]);
        o.set_keys(
            vec![("k".into(), vec![StoredKey { hash: crate::security::keys::hash("key1"), valid_until: None }])],
            true,
        );
        o.set_unknown("k_t9", now);
        let anyone = Credential::from_header(None, false);
        for tenant in ["t1", "t9", "never_asked"] {
            match o.admit(&call("k", Some(tenant)), &anyone, now) {
                Admission::Refused(e) => assert_eq!(e.kind, Kind::InvalidPlatformKey, "{tenant}"),
                other => panic!("{tenant}: {other:?}"),
            }
        }
        let keyed = Credential::from_header(Some("Bearer key1"), false);
        assert!(matches!(o.admit(&call("k", Some("t1")), &keyed, now), Admission::Go));
        match o.admit(&call("k", Some("t9")), &keyed, now) {
            Admission::Refused(e) => assert_eq!(e.kind, Kind::DatabaseNotFound),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_record_without_a_role_gets_the_derived_one() {
        let mut o = Owners::new("pfx_", false);
        o.set_owners(vec![CallOwner { role: None, ..owner("p_main", "p", None) }]);
        assert_eq!(o.role_of("p_main").as_deref(), Some("pfx_p"));
    }
}
