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
}

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
            | Route::AdminIsolate => BodyKind::None,
            Route::Register | Route::Migrate | Route::PlatformSchemaUpload(_) => BodyKind::Multipart,
            _ => BodyKind::Json,
        }
    }

    /// True for routes under `/admin/` (token and admin allowlist required).
    pub fn is_admin(&self, path: &str) -> bool {
        path.starts_with("/admin/")
    }

    pub fn name(&self) -> &'static str {
        match self {
            Route::Health => "health",
            Route::Call => "call",
            Route::Register => "register",
            Route::Migrate => "migrate",
            Route::AdminDatabases => "admin_databases",
            Route::AdminCreateTenant => "admin_create_tenant",
            Route::PlatformRegister => "platform_register",
            Route::PlatformSchemaUpload(_) => "platform_schema_upload",
            Route::PlatformSchemas(_) => "platform_schemas",
            Route::PlatformDatabases(_) => "platform_databases",
            Route::Platforms => "platforms",
            Route::DatabaseCreate => "database_create",
            Route::V2Migrate => "v2_migrate",
            Route::V2MigrateAll => "v2_migrate_all",
            Route::Run(_) => "run",
            Route::AdminPlatformKey(_) => "admin_platform_key",
            Route::AdminIsolate => "admin_isolate",
        }
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

/// Resolves a request. `HEAD` is accepted wherever `GET` is.
pub fn route(method: Method, path: &str) -> Result<Route, ApiError> {
    let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let (route, allow): (Route, &'static str) = match parts.as_slice() {
        ["health"] => (Route::Health, "GET, HEAD"),
        ["call"] => (Route::Call, "POST"),
        ["register"] => (Route::Register, "POST"),
        ["migrate"] => (Route::Migrate, "POST"),
        ["admin", "databases"] => (Route::AdminDatabases, "GET, HEAD"),
        ["admin", "create-tenant"] => (Route::AdminCreateTenant, "POST"),
        ["admin", "platforms"] | ["platforms"] => (Route::Platforms, "GET, HEAD"),
        ["admin", "platforms", p, "key"] => (Route::AdminPlatformKey(segment(p)?), "POST"),
        ["admin", "isolate"] => (Route::AdminIsolate, "POST"),
        ["admin", "database", "create"] | ["database", "create"] => (Route::DatabaseCreate, "POST"),
        ["platform", "register"] => (Route::PlatformRegister, "POST"),
        ["platform", p, "schema"] => (Route::PlatformSchemaUpload(segment(p)?), "POST"),
        ["platform", p, "schemas"] => (Route::PlatformSchemas(segment(p)?), "GET, HEAD"),
        ["platform", p, "databases"] => (Route::PlatformDatabases(segment(p)?), "GET, HEAD"),
        ["v2", "migrate"] => (Route::V2Migrate, "POST"),
        ["v2", "migrate-all"] => (Route::V2MigrateAll, "POST"),
        ["runs", id] => (Route::Run(segment(id)?), "GET, HEAD"),
        _ => return Err(ApiError::new(Kind::NotFound, format!("no route for {path}"))),
    };
    let ok = match method {
        Method::Get | Method::Head => allow.starts_with("GET"),
        Method::Post => allow == "POST",
        _ => false,
    };
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
        let e = route(Method::Get, "/call").unwrap_err();
        assert_eq!(e.kind, Kind::MethodNotAllowed);
        assert_eq!(e.allow, Some("POST"));
        assert_eq!(route(Method::Get, "/platform/..%2Fetc/schemas").unwrap_err().kind, Kind::InvalidRequest);
        assert_eq!(route(Method::Get, "/platform/%2e%2e/schemas").unwrap_err().kind, Kind::InvalidRequest);
    }
}
