//! The gateway's own records in PostgreSQL. For now: creating, dropping and probing databases on
//! behalf of deploys (the catalog database and its tables are not written yet).

use crate::error::{ApiError, DbDetail, Kind};
use crate::pg::blocking::Client;
use crate::pg::dberror::PgError;

fn api(e: PgError, name: &str) -> ApiError {
    let kind = match e.sqlstate() {
        Some(s) => Kind::from_sqlstate(s),
        None => Kind::ConnectionFailed,
    };
    let mut err = ApiError::new(kind, e.to_string()).with_database(name);
    if let PgError::Db(d) = e {
        err = err.with_db(DbDetail {
            sqlstate: d.code,
            detail: d.detail,
            hint: d.hint,
        });
    }
    err
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn database_exists(admin: &mut Client, name: &str) -> Result<bool, ApiError> {
    let row = admin
        .query_one_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[Some(name)],
        )
        .map_err(|e| api(e, name))?;
    Ok(row.is_some())
}

/// Creates `name`; `Ok(false)` when it exists already, including when another gateway created it
/// between our check and our `CREATE DATABASE` (SQLSTATE 42P04).
pub fn create_database(admin: &mut Client, name: &str) -> Result<bool, ApiError> {
    if database_exists(admin, name)? {
        return Ok(false);
    }
    match admin.batch_execute(&format!("CREATE DATABASE {}", quote_ident(name))) {
        Ok(()) => Ok(true),
        Err(e) if e.sqlstate() == Some("42P04") => Ok(false),
        Err(e) => Err(api(e, name)),
    }
}

/// Drops `name`, ending its sessions first where the server can (`WITH (FORCE)`, PostgreSQL ≥ 13).
/// `Ok(false)` when it did not exist.
pub fn drop_database(admin: &mut Client, name: &str) -> Result<bool, ApiError> {
    if !database_exists(admin, name)? {
        return Ok(false);
    }
    let major: u32 = admin
        .parameter("server_version")
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let force = if major >= 13 { " WITH (FORCE)" } else { "" };
    match admin.batch_execute(&format!(
        "DROP DATABASE IF EXISTS {}{force}",
        quote_ident(name)
    )) {
        Ok(()) => Ok(true),
        Err(e) => Err(api(e, name)),
    }
}
