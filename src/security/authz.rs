//! The authorization table: for every route and method, who may call it and whether it changes state.
//! [`check_head`] applies it once per request, from the head, before the body is read or any work is
//! queued; a route and method with no entry is refused (deny by default).
//!
//! What the head alone cannot decide — whether a key belongs to the platform a request names, whether
//! that platform has keys at all — needs the catalog. The table says which rule applies; the rule is
//! finished by the one key check ([`crate::security::keys::Credential::allows`]), which the deploy
//! handlers reach through `DeployCtx::authorize` and `/call` through its owner records.

use std::net::IpAddr;

use crate::config::SecurityConfig;
use crate::error::{ApiError, Kind};
use crate::http::request::{Head, Method};
use crate::http::router::{BodyKind, Route};
use crate::security::keys::Credential;
use crate::security::{check_admin, check_metrics};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// Anyone the address allowlist lets in.
    Anyone,
    /// A peer in `ALLOWED_ADMIN_IPS`, with `METRICS_TOKEN` (or the admin token) when one is set.
    Metrics,
    /// The admin token as `Authorization: Bearer`, or as the password of HTTP Basic credentials (what a
    /// browser can send): the status page, which only reads.
    AdminRead,
    /// The admin token as `Authorization: Bearer` only, from `ALLOWED_ADMIN_IPS`.
    Admin,
    /// The named platform's key, or the admin token; a platform without a key is open unless
    /// `REQUIRE_PLATFORM_KEYS` is on.
    Platform,
    /// The named platform's key, or the admin token; a platform without a key only with the admin token.
    PlatformKeyed,
    /// `/platform/register`: the admin token; for a platform that exists in any form (databases, a v2
    /// record, its role), also its key; for a new platform anyone when `PLATFORM_REGISTRATION=open`.
    /// Asking for a key on a platform that has none is admin-only.
    Registration,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The route's name in [`crate::http::router::ROUTE_NAMES`].
    pub route: &'static str,
    /// `GET` also covers `HEAD`.
    pub method: &'static str,
    pub who: Who,
    /// Changes state: a foreign `Origin` is refused.
    pub changes_state: bool,
}

const fn e(route: &'static str, method: &'static str, who: Who, changes_state: bool) -> Entry {
    Entry { route, method, who, changes_state }
}

/// Every route the router knows, by method. Paths under `/admin/` (`/admin/platforms`,
/// `/admin/database/create`) need the admin token whatever their row says.
pub const TABLE: &[Entry] = &[
    e("health", "GET", Who::Anyone, false),
    e("call", "POST", Who::Platform, true),
    e("register", "POST", Who::Platform, true),
    e("migrate", "POST", Who::Platform, true),
    e("admin_databases", "GET", Who::Admin, false),
    e("admin_create_tenant", "POST", Who::Admin, true),
    e("platform_register", "POST", Who::Registration, true),
    e("platform_schema_upload", "POST", Who::Platform, true),
    e("platform_schemas", "GET", Who::Platform, false),
    e("platform_databases", "GET", Who::Platform, false),
    e("platforms", "GET", Who::Admin, false),
    e("database_create", "POST", Who::PlatformKeyed, true),
    e("v2_migrate", "POST", Who::Platform, true),
    e("v2_migrate_all", "POST", Who::Platform, true),
    e("run", "GET", Who::Platform, false),
    e("admin_platform_key", "POST", Who::Admin, true),
    e("admin_isolate", "POST", Who::Admin, true),
    e("metrics", "GET", Who::Metrics, false),
    e("status", "GET", Who::AdminRead, false),
    e("status_data", "GET", Who::AdminRead, false),
    e("admin_servers", "GET", Who::Admin, false),
    e("admin_server_add", "POST", Who::Admin, true),
    e("admin_server_drain", "POST", Who::Admin, true),
    e("admin_server_activate", "POST", Who::Admin, true),
    e("admin_server_delete", "DELETE", Who::Admin, true),
];

/// The rule for a route and method, or none (then the request is refused).
pub fn entry(route: &Route, method: Method) -> Option<&'static Entry> {
    let m = match method {
        Method::Head => "GET",
        m => m.as_str(),
    };
    TABLE.iter().find(|x| x.route == route.name() && x.method == m)
}

/// The rule that applies to this path: under `/admin/` at least the admin token.
pub fn effective(entry: &Entry, path: &str) -> Who {
    if path.starts_with("/admin/") && !matches!(entry.who, Who::Admin | Who::AdminRead | Who::Metrics) {
        Who::Admin
    } else {
        entry.who
    }
}

/// The host part of a `Host` header value (no port, no brackets, lower-case, no trailing dot).
fn host_name(value: &str) -> std::borrow::Cow<'_, str> {
    let v = value.trim();
    let host = if let Some(rest) = v.strip_prefix('[') {
        // `[v6]` or `[v6]:port`, nothing else: `[::1].evil.example` is not an address.
        match rest.split_once(']') {
            Some((addr, "")) => addr,
            Some((addr, port)) if port.strip_prefix(':').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())) => addr,
            _ => return lower(v),
        }
    } else {
        match v.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => v,
        }
    };
    lower(host.trim_end_matches('.'))
}

/// Lower case, copied only when there is an upper-case letter (every request has a `Host`).
fn lower(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) { s.to_ascii_lowercase().into() } else { s.into() }
}

/// The gateway answers to IP literals, `localhost` and `ALLOWED_HOSTS` only, so a web page that rebinds
/// its own name to this address cannot talk to it. A request with no `Host` (HTTP/1.0) is no browser's.
pub fn check_host(host: Option<&str>, cfg: &SecurityConfig) -> Result<(), ApiError> {
    let Some(value) = host else { return Ok(()) };
    let name = host_name(value);
    let ok = name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || cfg.allowed_hosts.iter().any(|h| h == "*" || *h == *name);
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            Kind::HostNotAllowed,
            format!("this gateway does not answer to host '{}'; add it to ALLOWED_HOSTS", crate::log::escape(&name)),
        ))
    }
}

/// Whether `Origin` names another site than the one the request was sent to. `null` (sandboxed pages,
/// some redirects) is foreign.
pub fn foreign_origin(origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(o) = origin.map(str::trim) else { return false };
    let Some(authority) = o.split_once("://").map(|(_, a)| a.trim_end_matches('/')) else { return true };
    match host {
        Some(h) => !authority.eq_ignore_ascii_case(h.trim()),
        None => true,
    }
}

/// Whether the `Authorization` header uses HTTP Basic.
fn is_basic(authorization: Option<&str>) -> bool {
    authorization.and_then(|a| a.trim().split_once(' ')).is_some_and(|(s, _)| s.eq_ignore_ascii_case("basic"))
}

/// The admin token as a bearer value only: what the platform routes count as the admin's credential.
fn bearer_admin(ip: IpAddr, authorization: Option<&str>, cfg: &SecurityConfig) -> bool {
    authorization.is_some() && !is_basic(authorization) && check_admin(ip, authorization, cfg).is_ok()
}

/// Applies the table to a request head; on success, the credential its handler acts with.
pub fn check_head(route: &Route, head: &Head, ip: IpAddr, cfg: &SecurityConfig) -> Result<Credential, ApiError> {
    check_host(head.host.as_deref(), cfg)?;
    let Some(entry) = entry(route, head.method) else {
        return Err(ApiError::new(
            Kind::Unauthorized,
            format!("no authorization rule for {} {}; refused", head.method.as_str(), route.name()),
        ));
    };
    if entry.changes_state && foreign_origin(head.origin.as_deref(), head.host.as_deref()) {
        return Err(ApiError::new(
            Kind::OriginNotAllowed,
            "a web page of another origin may not change anything here (Origin header)",
        ));
    }
    let auth = head.authorization.as_deref();
    let who = effective(entry, &head.path);
    match who {
        Who::Anyone => Ok(Credential::from_header(auth, bearer_admin(ip, auth, cfg))),
        Who::Metrics => {
            check_metrics(ip, auth, cfg)?;
            Ok(Credential::from_header(auth, false))
        }
        Who::AdminRead => {
            check_admin(ip, auth, cfg)?;
            Ok(Credential::from_header(auth, true))
        }
        Who::Admin => {
            if is_basic(auth) && cfg.admin_token.is_some() {
                // A browser resends Basic credentials by itself; only a deliberate client sends Bearer.
                return Err(ApiError::new(
                    Kind::AdminTokenInvalid,
                    "admin routes take Authorization: Bearer <ADMIN_TOKEN>; HTTP Basic is only for the status page",
                ));
            }
            check_admin(ip, auth, cfg)?;
            if entry.changes_state && route.body_kind() != BodyKind::Multipart {
                check_json_body(head)?;
            }
            Ok(Credential::from_header(auth, true))
        }
        Who::Platform | Who::PlatformKeyed | Who::Registration => {
            // Reading (the status page polls `/runs/{id}`) may use the browser's Basic login; changing
            // may not.
            let admin = if entry.changes_state {
                bearer_admin(ip, auth, cfg)
            } else {
                auth.is_some() && check_admin(ip, auth, cfg).is_ok()
            };
            Ok(Credential::from_header(auth, admin))
        }
    }
}

/// An admin change takes `application/json` or no body: the types a form or a no-cors `fetch` can send
/// (`text/plain`, `application/x-www-form-urlencoded`, `multipart/form-data`) are refused.
fn check_json_body(head: &Head) -> Result<(), ApiError> {
    use crate::http::request::BodyFraming;
    let has_body = !matches!(head.framing, BodyFraming::None);
    let json = head.content_type.as_deref().map(|c| {
        let mime = c.split(';').next().unwrap_or("").trim();
        mime.eq_ignore_ascii_case("application/json")
    });
    match json {
        Some(true) => Ok(()),
        None if !has_body => Ok(()),
        _ => Err(ApiError::new(
            Kind::UnsupportedMediaType,
            "admin routes take a body of Content-Type: application/json (or none)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::http::router::{ROUTE_NAMES, route};

    /// A path for each route name; a route added without one fails here.
    fn sample(name: &str) -> &'static str {
        match name {
            "health" => "/health",
            "call" => "/call",
            "register" => "/register",
            "migrate" => "/migrate",
            "admin_databases" => "/admin/databases",
            "admin_create_tenant" => "/admin/create-tenant",
            "platform_register" => "/platform/register",
            "platform_schema_upload" => "/platform/p/schema",
            "platform_schemas" => "/platform/p/schemas",
            "platform_databases" => "/platform/p/databases",
            "platforms" => "/platforms",
            "database_create" => "/database/create",
            "v2_migrate" => "/v2/migrate",
            "v2_migrate_all" => "/v2/migrate-all",
            "run" => "/runs/r1",
            "admin_platform_key" => "/admin/platforms/p/key",
            "admin_isolate" => "/admin/isolate",
            "metrics" => "/metrics",
            "status" => "/status",
            "status_data" => "/status/data",
            "admin_servers" => "/admin/servers",
            "admin_server_add" => "/admin/servers",
            "admin_server_drain" => "/admin/servers/s/drain",
            "admin_server_activate" => "/admin/servers/s/activate",
            "admin_server_delete" => "/admin/servers/s",
            other => panic!("route '{other}' has no sample path in the authorization test"),
        }
    }

    const METHODS: [Method; 6] =
        [Method::Get, Method::Head, Method::Post, Method::Put, Method::Delete, Method::Options];

    #[test]
    fn every_route_and_method_the_router_accepts_has_a_rule() {
        let mut seen = std::collections::HashSet::new();
        for name in ROUTE_NAMES {
            let path = sample(name);
            let mut any = false;
            for m in METHODS {
                if let Ok(r) = route(m, path) {
                    if r.name() != name {
                        continue;
                    }
                    any = true;
                    let x = entry(&r, m).unwrap_or_else(|| panic!("no authorization rule for {} {name}", m.as_str()));
                    seen.insert((x.route, x.method));
                }
            }
            assert!(any, "the router accepts no method on {path} for {name}");
        }
        // No stale rows: every row is reached by some route and method.
        for x in TABLE {
            assert!(seen.contains(&(x.route, x.method)), "row {} {} matches no route", x.method, x.route);
        }
    }

    fn head(method: Method, path: &str, headers: &[(&str, &str)]) -> Head {
        let mut raw = format!("{} {path} HTTP/1.1\r\n", method.as_str());
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        crate::http::request::parse_head(raw.as_bytes(), &crate::config::limits::Limits::default()).unwrap().unwrap().0
    }

    const TOKEN: &str = "0123456789abcdef";

    fn cfg() -> SecurityConfig {
        let mut c = Config::defaults().security;
        c.admin_token = Some(TOKEN.into());
        c
    }

    fn check(method: Method, path: &str, headers: &[(&str, &str)]) -> Result<Credential, ApiError> {
        let h = head(method, path, headers);
        let r = route(method, &h.path).unwrap();
        check_head(&r, &h, "127.0.0.1".parse().unwrap(), &cfg())
    }

    #[test]
    fn a_route_without_a_row_is_refused() {
        let h = head(Method::Put, "/health", &[("Host", "localhost")]);
        let e = check_head(&Route::Health, &h, "127.0.0.1".parse().unwrap(), &cfg()).unwrap_err();
        assert_eq!(e.kind, Kind::Unauthorized);
    }

    #[test]
    fn admin_changes_need_bearer_json_and_no_foreign_origin() {
        let bearer = format!("Bearer {TOKEN}");
        let basic = format!("Basic {}", crate::security::base64::encode(format!("ops:{TOKEN}").as_bytes()));
        let ok = [("Host", "127.0.0.1:9000"), ("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
        assert!(check(Method::Post, "/admin/isolate", &ok).unwrap().admin);
        // A form post from another site, with the Basic login the browser keeps.
        let form = [
            ("Host", "127.0.0.1:9000"),
            ("Authorization", basic.as_str()),
            ("Content-Type", "text/plain"),
            ("Content-Length", "3"),
        ];
        assert_eq!(check(Method::Post, "/admin/platforms/p/key", &form).unwrap_err().kind, Kind::AdminTokenInvalid);
        let mut plain = ok;
        plain[2] = ("Content-Type", "text/plain");
        assert_eq!(check(Method::Post, "/admin/isolate", &plain).unwrap_err().kind, Kind::UnsupportedMediaType);
        let foreign = [ok[0], ok[1], ok[2], ("Origin", "http://evil.example")];
        assert_eq!(check(Method::Post, "/admin/isolate", &foreign).unwrap_err().kind, Kind::OriginNotAllowed);
        let same = [ok[0], ok[1], ok[2], ("Origin", "http://127.0.0.1:9000")];
        assert!(check(Method::Post, "/admin/isolate", &same).is_ok());
        // Basic still reads the status page.
        assert!(check(Method::Get, "/status/data", &[("Host", "localhost"), ("Authorization", &basic)]).is_ok());
        assert_eq!(
            check(Method::Get, "/admin/servers", &[("Host", "localhost"), ("Authorization", &basic)]).unwrap_err().kind,
            Kind::AdminTokenInvalid
        );
    }

    #[test]
    fn every_state_changing_route_refuses_a_foreign_origin() {
        for x in TABLE.iter().filter(|x| x.changes_state) {
            let m = match x.method {
                "POST" => Method::Post,
                "DELETE" => Method::Delete,
                other => panic!("{other}"),
            };
            let path = sample(x.route);
            let r = route(m, path).unwrap();
            let h = head(m, path, &[("Host", "localhost:9000"), ("Origin", "https://attacker.example")]);
            let e = check_head(&r, &h, "127.0.0.1".parse().unwrap(), &cfg()).unwrap_err();
            assert_eq!(e.kind, Kind::OriginNotAllowed, "{}", x.route);
        }
        // Reading is not refused for its Origin (the answer is not readable cross-site anyway).
        assert!(check(Method::Get, "/health", &[("Host", "localhost"), ("Origin", "https://a.example")]).is_ok());
    }

    #[test]
    fn only_ip_literals_localhost_and_allowed_hosts_are_answered() {
        let mut c = cfg();
        for ok in ["127.0.0.1", "127.0.0.1:9000", "[::1]:9000", "localhost", "LOCALHOST.:80", "10.1.2.3"] {
            assert!(check_host(Some(ok), &c).is_ok(), "{ok}");
        }
        for refused in
            ["evil.example", "rebind.attacker.example:9000", "gw.internal", "[::1].evil.example", "[::1]x:80"]
        {
            assert_eq!(check_host(Some(refused), &c).unwrap_err().kind, Kind::HostNotAllowed, "{refused}");
        }
        c.allowed_hosts = vec!["gw.internal".into()];
        assert!(check_host(Some("GW.internal:9000"), &c).is_ok());
        assert!(check_host(Some("evil.example"), &c).is_err());
        let h = head(Method::Get, "/health", &[("Host", "evil.example")]);
        assert_eq!(
            check_head(&Route::Health, &h, "127.0.0.1".parse().unwrap(), &cfg()).unwrap_err().kind,
            Kind::HostNotAllowed
        );
    }

    #[test]
    fn basic_credentials_never_make_a_platform_request_an_admin_one() {
        let basic = format!("Basic {}", crate::security::base64::encode(format!("ops:{TOKEN}").as_bytes()));
        let c = check(Method::Post, "/call", &[("Host", "localhost"), ("Authorization", &basic)]).unwrap();
        assert!(!c.admin);
        let bearer = format!("Bearer {TOKEN}");
        assert!(check(Method::Post, "/call", &[("Host", "localhost"), ("Authorization", &bearer)]).unwrap().admin);
        // The status page reads runs with it.
        assert!(check(Method::Get, "/runs/r1", &[("Host", "localhost"), ("Authorization", &basic)]).unwrap().admin);
        // /admin/database/create is an admin route whatever /database/create's row says.
        assert_eq!(
            check(Method::Post, "/admin/database/create", &[("Host", "localhost")]).unwrap_err().kind,
            Kind::AdminTokenInvalid
        );
        assert!(check(Method::Post, "/database/create", &[("Host", "localhost")]).is_ok());
    }
}
