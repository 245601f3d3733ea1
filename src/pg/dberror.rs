//! Errors of the PostgreSQL client: server-reported `DbError` (ErrorResponse/NoticeResponse) and `PgError`.

use std::fmt;
use std::io;

/// One ErrorResponse or NoticeResponse, field by field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbError {
    /// Non-localized severity (`V` field, falling back to `S`): ERROR, FATAL, PANIC, WARNING, NOTICE, ...
    pub severity: String,
    /// SQLSTATE, five characters.
    pub code: String,
    /// Primary human-readable message.
    pub message: String,
    /// Optional secondary message.
    pub detail: Option<String>,
    /// Optional suggestion.
    pub hint: Option<String>,
    /// 1-based character offset into the query text.
    pub position: Option<u32>,
    /// Call-stack context (PL/pgSQL lines and the like).
    pub where_: Option<String>,
    /// Schema of the object involved.
    pub schema: Option<String>,
    /// Table of the object involved.
    pub table: Option<String>,
    /// Column of the object involved.
    pub column: Option<String>,
    /// Constraint that was violated.
    pub constraint: Option<String>,
    /// Server source routine that raised it (useful when reporting server bugs).
    pub routine: Option<String>,
}

impl DbError {
    /// Parses the body of an ErrorResponse or NoticeResponse: `(type byte, cstring)*` then a 0.
    ///
    /// This is the layout that `postgres_protocol`'s `ErrorFields` walks; we read it ourselves
    /// because that iterator is only usable through the `fallible_iterator` trait, which is not
    /// one of our dependencies.
    pub fn parse(body: &[u8]) -> Result<DbError, PgError> {
        let mut e = DbError::default();
        let mut localized_severity = None;
        let mut rest = body;
        loop {
            let (&ty, after) =
                rest.split_first().ok_or_else(|| PgError::Protocol("error fields not terminated".into()))?;
            if ty == 0 {
                if !after.is_empty() {
                    return Err(PgError::Protocol("trailing bytes after error fields".into()));
                }
                break;
            }
            let end = after
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| PgError::Protocol("error field not NUL-terminated".into()))?;
            // Lossy: a server message in a legacy encoding should still surface, not become a
            // protocol error that hides the real cause.
            let value = String::from_utf8_lossy(&after[..end]).into_owned();
            rest = &after[end + 1..];
            match ty {
                b'S' => localized_severity = Some(value),
                b'V' => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                b'P' => e.position = value.parse().ok(),
                b'W' => e.where_ = Some(value),
                b's' => e.schema = Some(value),
                b't' => e.table = Some(value),
                b'c' => e.column = Some(value),
                b'n' => e.constraint = Some(value),
                b'R' => e.routine = Some(value),
                // Unknown fields must be ignored per the protocol docs; servers add new ones.
                _ => {}
            }
        }
        if e.severity.is_empty() {
            // Servers before 9.6 send only the localized `S` field.
            e.severity = localized_severity.unwrap_or_default();
        }
        if e.code.is_empty() {
            return Err(PgError::Protocol("error response without SQLSTATE".into()));
        }
        Ok(e)
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for DbError {}

/// Anything that can go wrong talking to PostgreSQL.
#[derive(Debug)]
pub enum PgError {
    /// The socket failed (includes timeouts).
    Io(io::Error),
    /// The server reported an error.
    Db(Box<DbError>),
    /// The server sent something the protocol does not allow here.
    Protocol(String),
    /// Authentication could not proceed on our side (no password, unsupported method, bad server proof).
    Auth(String),
    /// The server closed the connection, or the client is broken and must be discarded.
    Closed,
}

impl PgError {
    /// SQLSTATE of a server-reported error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Db(e) => Some(&e.code),
            _ => None,
        }
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::Io(e) => write!(f, "postgres i/o error: {e}"),
            PgError::Db(e) => write!(f, "postgres: {e}"),
            PgError::Protocol(m) => write!(f, "postgres protocol error: {m}"),
            PgError::Auth(m) => write!(f, "postgres authentication failed: {m}"),
            PgError::Closed => f.write_str("postgres connection closed"),
        }
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PgError::Io(e) => Some(e),
            PgError::Db(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for PgError {
    fn from(e: io::Error) -> PgError {
        PgError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut v = Vec::new();
        for (t, s) in fields {
            v.push(*t);
            v.extend_from_slice(s.as_bytes());
            v.push(0);
        }
        v.push(0);
        v
    }

    #[test]
    fn parses_all_fields() {
        let b = body(&[
            (b'S', "ERREUR"),
            (b'V', "ERROR"),
            (b'C', "23505"),
            (b'M', "duplicate key"),
            (b'D', "Key (id)=(1) exists."),
            (b'H', "pick another"),
            (b'P', "17"),
            (b'W', "PL/pgSQL function f()"),
            (b's', "public"),
            (b't', "t"),
            (b'c', "id"),
            (b'n', "t_pkey"),
            (b'R', "_bt_check_unique"),
            (b'Z', "future field"),
        ]);
        let e = DbError::parse(&b).unwrap();
        assert_eq!(e.severity, "ERROR");
        assert_eq!(e.code, "23505");
        assert_eq!(e.position, Some(17));
        assert_eq!(e.constraint.as_deref(), Some("t_pkey"));
        assert_eq!(e.where_.as_deref(), Some("PL/pgSQL function f()"));
        assert_eq!(e.routine.as_deref(), Some("_bt_check_unique"));
        let pe = PgError::Db(Box::new(e));
        assert_eq!(pe.sqlstate(), Some("23505"));
        assert!(pe.to_string().contains("duplicate key"));
    }

    #[test]
    fn falls_back_to_localized_severity() {
        let e = DbError::parse(&body(&[(b'S', "FATAL"), (b'C', "28P01"), (b'M', "x")])).unwrap();
        assert_eq!(e.severity, "FATAL");
    }

    #[test]
    fn rejects_malformed() {
        assert!(DbError::parse(b"").is_err());
        assert!(DbError::parse(b"Mno-nul").is_err());
        assert!(DbError::parse(&body(&[(b'M', "no code")])).is_err());
        let mut b = body(&[(b'C', "XX000")]);
        b.push(b'x');
        assert!(DbError::parse(&b).is_err());
        assert_eq!(PgError::Closed.sqlstate(), None);
    }
}
