//! Database naming: `{platform}_main`, `{platform}_{tenant}` and `{platform}_{schema}_{id}`; lower-cased,
//! other characters become `_`, never longer than PostgreSQL's 63-byte identifier limit.

use crate::error::{ApiError, Kind};

/// PostgreSQL truncates identifiers beyond this; we refuse instead.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Lower-cases ASCII letters and turns every other non `[a-z0-9_]` character into `_`.
pub fn sanitize(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    push_sanitized(&mut out, part);
    out
}

fn push_sanitized(out: &mut String, part: &str) {
    out.extend(part.chars().map(|c| {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' { c } else { '_' }
    }));
}

fn check_part(what: &str, v: &str) -> Result<(), ApiError> {
    if v.trim().is_empty() {
        return Err(ApiError::new(Kind::InvalidRequest, format!("{what} must not be empty")));
    }
    if v.len() > MAX_IDENTIFIER_BYTES {
        return Err(ApiError::new(Kind::InvalidRequest, format!("{what} is longer than 63 bytes")));
    }
    Ok(())
}

fn finish(name: String) -> Result<String, ApiError> {
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Err(ApiError::new(
            Kind::InvalidRequest,
            format!("database name '{name}' would be longer than 63 bytes"),
        ));
    }
    Ok(name)
}

/// The platform part, validated.
pub fn platform(p: &str) -> Result<String, ApiError> {
    check_part("platform", p)?;
    let s = sanitize(p);
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(ApiError::new(Kind::InvalidRequest, "platform must not start with a digit"));
    }
    Ok(s)
}

/// v1 names: no tenant (or empty) → `{platform}_main`, else `{platform}_{tenant}`.
pub fn v1_database(platform_name: &str, tenant: Option<&str>) -> Result<String, ApiError> {
    v1_database_of(&platform(platform_name)?, tenant)
}

/// [`v1_database`] of a platform name [`platform`] already gave.
pub fn v1_database_of(platform: &str, tenant: Option<&str>) -> Result<String, ApiError> {
    let suffix = tenant.map_or(0, str::len).max(4);
    let mut p = String::with_capacity(platform.len() + 1 + suffix);
    p.push_str(platform);
    match tenant {
        None | Some("") => p.push_str("_main"),
        Some(t) => {
            check_part("tenant_id", t)?;
            p.push('_');
            push_sanitized(&mut p, t);
        }
    }
    finish(p)
}

/// v2 names: `{platform}_{schema}_{id}`.
pub fn v2_database(platform_name: &str, schema: &str, id: &str) -> Result<String, ApiError> {
    let p = platform(platform_name)?;
    check_part("schema_name", schema)?;
    check_part("database_id", id)?;
    finish(format!("{p}_{}_{}", sanitize(schema), sanitize(id)))
}

/// A function name as `/call` accepts it: `[a-z_][a-z0-9_]*`, at most 63 bytes.
pub fn is_function_name(f: &str) -> bool {
    !f.is_empty()
        && f.len() <= MAX_IDENTIFIER_BYTES
        && f.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !f.as_bytes()[0].is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(v1_database("MyApp", None).unwrap(), "myapp_main");
        assert_eq!(v1_database("MyApp", Some("")).unwrap(), "myapp_main");
        assert_eq!(v1_database("my-app", Some("Tenant.1")).unwrap(), "my_app_tenant_1");
        assert_eq!(v2_database("p", "tenant_db", "42").unwrap(), "p_tenant_db_42");
        assert!(v1_database(&"a".repeat(60), Some("tenant")).is_err());
        assert!(v1_database("", None).is_err());
        assert!(v1_database("1abc", None).is_err());
        assert!(is_function_name("get_user2"));
        assert!(!is_function_name("pg_catalog.version"));
        assert!(!is_function_name("Get"));
        assert!(!is_function_name("2x"));
    }

    #[test]
    fn sixty_three_bytes_fit_sixty_four_do_not() {
        let p63 = "a".repeat(63);
        assert_eq!(platform(&p63).unwrap(), p63);
        assert!(platform(&"a".repeat(64)).is_err());
        // `_main` makes 58 + 5 = 63 bytes.
        assert_eq!(v1_database(&"b".repeat(58), None).unwrap().len(), 63);
        assert!(v1_database(&"b".repeat(59), None).is_err());
        assert_eq!(v1_database("p", Some(&"t".repeat(61))).unwrap().len(), 63);
        assert!(v1_database("p", Some(&"t".repeat(62))).is_err());
        assert!(v1_database("p", Some(&"t".repeat(64))).is_err());
        assert_eq!(v2_database("p", "s", &"d".repeat(59)).unwrap().len(), 63);
        assert!(v2_database("p", "s", &"d".repeat(60)).is_err());
    }
}
