//! Routing: (method, path) → [`Route`], with 404 for unknown paths and 405 + `Allow` for known paths
//! asked with the wrong method. Also says which body limit and body kind each route takes.

use super::request::{Method, percent_decode};
use crate::error::{ApiError, Kind};

/// Every endpoint. Captured path segments are already percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Call,
    Register,
    Migrate,
    AdminDatabases,
    AdminCreateTenant,
    PlatformRegister,
    PlatformSchemaUpload(String),
    PlatformSchemas(String),
    PlatformDatabases(String),
    Platforms,
    DatabaseCreate,
    V2Migrate,
    V2MigrateAll,
    Run(String),
    AdminPlatformKey(String),
    AdminIsolate,
    Metrics,
    Status,
    StatusData,
    AdminServers,
    AdminServerAdd,
    AdminServerDrain(String),
    AdminServerActivate(String),
    AdminServerDelete(String),
}

/// Route names in [`Route::slot`] order (labels of `/metrics`); requests that matched no route count
/// in one more slot after these.
pub const ROUTE_NAMES: [&str; 25] = [
    "health",
    "call",
    "register",
    "migrate",
    "admin_databases",
    "admin_create_tenant",
    "platform_register",
    "platform_schema_upload",
    "platform_schemas",
    "platform_databases",
    "platforms",
    "database_create",
    "v2_migrate",
    "v2_migrate_all",
    "run",
    "admin_platform_key",
    "admin_isolate",
    "metrics",
    "status",
    "status_data",
    "admin_servers",
    "admin_server_add",
    "admin_server_drain",
    "admin_server_activate",
    "admin_server_delete",
];

/// Counter slots per route: every route plus requests that matched none.
pub const ROUTE_SLOTS: usize = ROUTE_NAMES.len() + 1;

/// The slot of requests that matched no route (404, 405, or refused before routing).
pub const UNMATCHED: usize = ROUTE_NAMES.len();

/// What body a route expects; decides the size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Json,
    Multipart,
}

impl Route {
    pub fn body_kind(&self) -> BodyKind {
        match self {
            Route::Health
            | Route::AdminDatabases
            | Route::PlatformSchemas(_)
            | Route::PlatformDatabases(_)
            | Route::Platforms
            | Route::Run(_)
            | Route::AdminIsolate
            | Route::Metrics
            | Route::Status
            | Route::StatusData
            | Route::AdminServers
            | Route::AdminServerDrain(_)
            | Route::AdminServerActivate(_)
            | Route::AdminServerDelete(_) => BodyKind::None,
            Route::Register | Route::Migrate | Route::PlatformSchemaUpload(_) => BodyKind::Multipart,
            _ => BodyKind::Json,
        }
    }

    /// Index into [`ROUTE_NAMES`] and the per-route counters.
    pub fn slot(&self) -> usize {
        match self {
            Route::Health => 0,
            Route::Call => 1,
            Route::Register => 2,
            Route::Migrate => 3,
            Route::AdminDatabases => 4,
            Route::AdminCreateTenant => 5,
            Route::PlatformRegister => 6,
            Route::PlatformSchemaUpload(_) => 7,
            Route::PlatformSchemas(_) => 8,
            Route::PlatformDatabases(_) => 9,
            Route::Platforms => 10,
            Route::DatabaseCreate => 11,
            Route::V2Migrate => 12,
            Route::V2MigrateAll => 13,
            Route::Run(_) => 14,
            Route::AdminPlatformKey(_) => 15,
            Route::AdminIsolate => 16,
            Route::Metrics => 17,
            Route::Status => 18,
            Route::StatusData => 19,
            Route::AdminServers => 20,
            Route::AdminServerAdd => 21,
            Route::AdminServerDrain(_) => 22,
            Route::AdminServerActivate(_) => 23,
            Route::AdminServerDelete(_) => 24,
        }
    }

    pub fn name(&self) -> &'static str {
        ROUTE_NAMES[self.slot()]
    }
}

fn segment(s: &str) -> Result<String, ApiError> {
    let d = percent_decode(s).ok_or_else(|| ApiError::new(Kind::InvalidRequest, "malformed path segment"))?;
    // A decoded segment must stay one segment: no separators, no dot-segments, no control bytes.
    if d.is_empty() || d == "." || d == ".." || d.contains('/') || d.contains('\\') || d.chars().any(char::is_control) {
        return Err(ApiError::new(Kind::InvalidRequest, "invalid path segment"));
    }
    Ok(d)
}

/// The most path segments a route has (`/admin/servers/{name}/drain`).
const MAX_SEGMENTS: usize = 4;

/// Resolves a request. `HEAD` is accepted wherever `GET` is.
pub fn route(method: Method, path: &str) -> Result<Route, ApiError> {
    let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
    // No route has more than MAX_SEGMENTS segments: one more read is enough to match none, and the
    // segments fit on the stack (this runs for every request).
    let mut segments = [""; MAX_SEGMENTS + 1];
    let mut n = 0;
    for s in path.split('/').skip(1).take(MAX_SEGMENTS + 1) {
        segments[n] = s;
        n += 1;
    }
    let (route, allow): (Route, &'static str) = match &segments[..n] {
        ["health"] => (Route::Health, "GET, HEAD"),
        ["call"] => (Route::Call, "POST"),
        ["register"] => (Route::Register, "POST"),
        ["migrate"] => (Route::Migrate, "POST"),
        ["admin", "databases"] => (Route::AdminDatabases, "GET, HEAD"),
        ["admin", "create-tenant"] => (Route::AdminCreateTenant, "POST"),
        ["admin", "platforms"] | ["platforms"] => (Route::Platforms, "GET, HEAD"),
        ["admin", "platforms", p, "key"] => (Route::AdminPlatformKey(segment(p)?), "POST"),
        ["admin", "isolate"] => (Route::AdminIsolate, "POST"),
        ["admin", "servers"] if method == Method::Post => (Route::AdminServerAdd, "GET, HEAD, POST"),
        ["admin", "servers"] => (Route::AdminServers, "GET, HEAD, POST"),
        ["admin", "servers", n, "drain"] => (Route::AdminServerDrain(segment(n)?), "POST"),
        ["admin", "servers", n, "activate"] => (Route::AdminServerActivate(segment(n)?), "POST"),
        ["admin", "servers", n] => (Route::AdminServerDelete(segment(n)?), "DELETE"),
        ["admin", "database", "create"] | ["database", "create"] => (Route::DatabaseCreate, "POST"),
        ["platform", "register"] => (Route::PlatformRegister, "POST"),
        ["platform", p, "schema"] => (Route::PlatformSchemaUpload(segment(p)?), "POST"),
        ["platform", p, "schemas"] => (Route::PlatformSchemas(segment(p)?), "GET, HEAD"),
        ["platform", p, "databases"] => (Route::PlatformDatabases(segment(p)?), "GET, HEAD"),
        ["v2", "migrate"] => (Route::V2Migrate, "POST"),
        ["v2", "migrate-all"] => (Route::V2MigrateAll, "POST"),
        ["runs", id] => (Route::Run(segment(id)?), "GET, HEAD"),
        ["metrics"] => (Route::Metrics, "GET, HEAD"),
        ["status"] => (Route::Status, "GET, HEAD"),
        ["status", "data"] => (Route::StatusData, "GET, HEAD"),
        _ => return Err(ApiError::new(Kind::NotFound, format!("no route for {path}"))),
    };
    let ok = allow.split(", ").any(|m| m == method.as_str());
    if ok {
        Ok(route)
    } else {
        let mut e =
            ApiError::new(Kind::MethodNotAllowed, format!("{} is not allowed on {path}; use {allow}", method.as_str()));
        e.allow = Some(allow);
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route(Method::Post, "/call").unwrap(), Route::Call);
        assert_eq!(route(Method::Get, "/health/").unwrap(), Route::Health);
        assert_eq!(route(Method::Head, "/health").unwrap(), Route::Health);
        assert_eq!(
            route(Method::Post, "/platform/my%20app/schema").unwrap(),
            Route::PlatformSchemaUpload("my app".into())
        );
        assert_eq!(route(Method::Get, "/nope").unwrap_err().kind, Kind::NotFound);
        // Longer than any route, with a route's segments in front: still no route.
        assert_eq!(route(Method::Post, "/admin/servers/b/drain").unwrap(), Route::AdminServerDrain("b".into()));
        assert_eq!(route(Method::Post, "/admin/servers/b/drain/x").unwrap_err().kind, Kind::NotFound);
        assert_eq!(route(Method::Post, "/admin/servers/b/drain/x/y/z").unwrap_err().kind, Kind::NotFound);
        let e = route(Method::Get, "/call").unwrap_err();
        assert_eq!(e.kind, Kind::MethodNotAllowed);
        assert_eq!(e.allow, Some("POST"));
        assert_eq!(route(Method::Get, "/platform/..%2Fetc/schemas").unwrap_err().kind, Kind::InvalidRequest);
        assert_eq!(route(Method::Get, "/platform/%2e%2e/schemas").unwrap_err().kind, Kind::InvalidRequest);
        assert_eq!(route(Method::Get, "/metrics").unwrap(), Route::Metrics);
        assert_eq!(route(Method::Get, "/status/data").unwrap(), Route::StatusData);
        assert_eq!(route(Method::Get, "/admin/servers").unwrap(), Route::AdminServers);
        assert_eq!(route(Method::Post, "/admin/servers").unwrap(), Route::AdminServerAdd);
        assert_eq!(route(Method::Delete, "/admin/servers").unwrap_err().allow, Some("GET, HEAD, POST"));
        assert_eq!(route(Method::Delete, "/admin/servers/b").unwrap(), Route::AdminServerDelete("b".into()));
        assert_eq!(route(Method::Get, "/admin/servers/b").unwrap_err().allow, Some("DELETE"));
        assert_eq!(route(Method::Post, "/admin/servers/b/drain").unwrap(), Route::AdminServerDrain("b".into()));
    }

    #[test]
    fn every_route_has_its_own_slot_and_name() {
        let all = [
            Route::Health,
            Route::Call,
            Route::Register,
            Route::Migrate,
            Route::AdminDatabases,
            Route::AdminCreateTenant,
            Route::PlatformRegister,
            Route::PlatformSchemaUpload(String::new()),
            Route::PlatformSchemas(String::new()),
            Route::PlatformDatabases(String::new()),
            Route::Platforms,
            Route::DatabaseCreate,
            Route::V2Migrate,
            Route::V2MigrateAll,
            Route::Run(String::new()),
            Route::AdminPlatformKey(String::new()),
            Route::AdminIsolate,
            Route::Metrics,
            Route::Status,
            Route::StatusData,
            Route::AdminServers,
            Route::AdminServerAdd,
            Route::AdminServerDrain(String::new()),
            Route::AdminServerActivate(String::new()),
            Route::AdminServerDelete(String::new()),
        ];
        let slots: std::collections::HashSet<usize> = all.iter().map(Route::slot).collect();
        assert_eq!(slots.len(), ROUTE_NAMES.len());
        assert!(slots.iter().all(|s| *s < UNMATCHED));
    }
}
