//! The one error table: every failure a client can see has a [`Kind`], and each kind maps to exactly one
//! HTTP status, one stable `error` code and a retryable flag. PostgreSQL's SQLSTATE, message, detail and
//! hint pass through to the JSON body.

use crate::json::ObjectWriter;

/// Every error a client can receive. Adding a kind means adding one row to [`Kind::row`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    InvalidJson,
    InvalidRequest,
    InvalidParameter,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    HeadersTooLarge,
    RequestTimeout,
    LengthRequired,
    UnsupportedMediaType,
    Unauthorized,
    AdminTokenInvalid,
    AdminDisabled,
    InvalidPlatformKey,
    DatabaseNotFound,
    DatabaseAlreadyExists,
    PlatformNotFound,
    PlatformAlreadyExists,
    SchemaNotFound,
    FunctionNotFound,
    RunNotFound,
    NameConflict,
    ConstraintViolation,
    FunctionError,
    Timeout,
    Conflict,
    PermissionDenied,
    ConnectionFailed,
    PoolExhausted,
    DeployQueueFull,
    UploadsBusy,
    AnswersBusy,
    ResponseTooLarge,
    DeployPlatformBusy,
    ShuttingDown,
    QueryFailed,
    MigrationFailed,
    MigrationChecksumMismatch,
    FunctionDeployFailed,
    TableDeployFailed,
    TypeDeployFailed,
    SeederFailed,
    ExtensionDeployFailed,
    DeployFailed,
    IsolationIncomplete,
    ExtensionNotAvailable,
    ExtensionNotAllowed,
    RoleNotAllowed,
    SchemaExtractionFailed,
    SchemaDrift,
    SeedDataMissing,
    StatementNotAllowed,
    TransactionEscaped,
    DeployTimeout,
    DatabaseLimitReached,
    PlatformLimitReached,
    SchemaLimitReached,
    OriginNotAllowed,
    HostNotAllowed,
    ServerNotFound,
    ServerAlreadyExists,
    ServerInUse,
    ServerUnreachable,
    Internal,
}

/// One row of the error table.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub status: u16,
    pub code: &'static str,
    pub retryable: bool,
    /// What the code means, for the README table.
    pub meaning: &'static str,
}

const fn row(status: u16, code: &'static str, retryable: bool, meaning: &'static str) -> Row {
    Row { status, code, retryable, meaning }
}

impl Kind {
    /// Every kind, in the order the README documents them.
    pub const ALL: &'static [Kind] = &[
        Kind::InvalidJson,
        Kind::InvalidRequest,
        Kind::InvalidParameter,
        Kind::NotFound,
        Kind::MethodNotAllowed,
        Kind::PayloadTooLarge,
        Kind::HeadersTooLarge,
        Kind::RequestTimeout,
        Kind::LengthRequired,
        Kind::UnsupportedMediaType,
        Kind::Unauthorized,
        Kind::AdminTokenInvalid,
        Kind::AdminDisabled,
        Kind::InvalidPlatformKey,
        Kind::DatabaseNotFound,
        Kind::DatabaseAlreadyExists,
        Kind::PlatformNotFound,
        Kind::PlatformAlreadyExists,
        Kind::SchemaNotFound,
        Kind::FunctionNotFound,
        Kind::RunNotFound,
        Kind::NameConflict,
        Kind::ConstraintViolation,
        Kind::FunctionError,
        Kind::Timeout,
        Kind::Conflict,
        Kind::PermissionDenied,
        Kind::ConnectionFailed,
        Kind::PoolExhausted,
        Kind::DeployQueueFull,
        Kind::UploadsBusy,
        Kind::AnswersBusy,
        Kind::ResponseTooLarge,
        Kind::DeployPlatformBusy,
        Kind::ShuttingDown,
        Kind::QueryFailed,
        Kind::MigrationFailed,
        Kind::MigrationChecksumMismatch,
        Kind::FunctionDeployFailed,
        Kind::TableDeployFailed,
        Kind::TypeDeployFailed,
        Kind::SeederFailed,
        Kind::ExtensionDeployFailed,
        Kind::DeployFailed,
        Kind::IsolationIncomplete,
        Kind::ExtensionNotAvailable,
        Kind::ExtensionNotAllowed,
        Kind::RoleNotAllowed,
        Kind::SchemaExtractionFailed,
        Kind::SchemaDrift,
        Kind::SeedDataMissing,
        Kind::StatementNotAllowed,
        Kind::TransactionEscaped,
        Kind::DeployTimeout,
        Kind::DatabaseLimitReached,
        Kind::PlatformLimitReached,
        Kind::SchemaLimitReached,
        Kind::OriginNotAllowed,
        Kind::HostNotAllowed,
        Kind::ServerNotFound,
        Kind::ServerAlreadyExists,
        Kind::ServerInUse,
        Kind::ServerUnreachable,
        Kind::Internal,
    ];

    /// The table itself.
    pub const fn row(self) -> Row {
        match self {
            Kind::InvalidJson => row(400, "invalid_json", false, "the body is not well-formed JSON"),
            Kind::InvalidRequest => row(
                400,
                "invalid_request",
                false,
                "well-formed input of the wrong shape, a malformed HTTP request or a refused name",
            ),
            Kind::InvalidParameter => row(
                400,
                "invalid_parameter",
                false,
                "a call parameter does not fit its PostgreSQL type (SQLSTATE class 22)",
            ),
            Kind::NotFound => row(404, "not_found", false, "no such path"),
            Kind::MethodNotAllowed => {
                row(405, "method_not_allowed", false, "the path exists but not for this method; see the Allow header")
            }
            Kind::PayloadTooLarge => row(413, "payload_too_large", false, "the body exceeds the route's limit"),
            Kind::HeadersTooLarge => {
                row(431, "headers_too_large", false, "the request head has too many or too large header fields")
            }
            Kind::RequestTimeout => row(408, "request_timeout", false, "the request head or body came too slowly"),
            Kind::LengthRequired => row(411, "length_required", false, "a body is required but none was declared"),
            Kind::UnsupportedMediaType => {
                row(415, "unsupported_media_type", false, "the body has a Content-Type this route does not take")
            }
            Kind::Unauthorized => row(403, "unauthorized", false, "the client address is not allowed"),
            Kind::AdminTokenInvalid => row(401, "invalid_token", false, "admin token missing or wrong"),
            Kind::AdminDisabled => {
                row(503, "admin_disabled", false, "admin routes are off because no ADMIN_TOKEN is configured")
            }
            Kind::InvalidPlatformKey => row(
                401,
                "invalid_platform_key",
                false,
                "the platform has a key (or REQUIRE_PLATFORM_KEYS is on) and the request did not bring it",
            ),
            Kind::DatabaseNotFound => row(404, "database_not_found", false, "the target database does not exist"),
            Kind::DatabaseAlreadyExists => row(409, "database_already_exists", false, "the database exists already"),
            Kind::PlatformNotFound => row(404, "platform_not_found", false, "the platform is not registered"),
            Kind::PlatformAlreadyExists => {
                row(409, "platform_already_exists", false, "the platform is registered already")
            }
            Kind::SchemaNotFound => row(404, "schema_not_found", false, "no stored schema of that name"),
            Kind::FunctionNotFound => row(
                404,
                "function_not_found",
                false,
                "no callable function of that name and argument shape (SQLSTATE 42883)",
            ),
            Kind::RunNotFound => row(404, "run_not_found", false, "no deploy run with that id"),
            Kind::NameConflict => row(
                409,
                "name_conflict",
                false,
                "the computed database name belongs to another platform, tenant or schema",
            ),
            Kind::ConstraintViolation => row(
                409,
                "constraint_violation",
                false,
                "unique, foreign-key or check constraint violated (23505, 23503, 23514)",
            ),
            Kind::FunctionError => {
                row(400, "function_error", false, "the function raised an exception (P0001); its message is passed on")
            }
            Kind::Timeout => row(504, "timeout", false, "the call exceeded CALL_TIMEOUT_MS or was cancelled (57014)"),
            Kind::Conflict => row(409, "conflict", true, "serialization failure or deadlock (40001, 40P01); retry"),
            Kind::PermissionDenied => row(403, "permission_denied", false, "PostgreSQL refused access (42501)"),
            Kind::ConnectionFailed => {
                row(503, "connection_failed", true, "PostgreSQL is unreachable or restarting (class 08, 57P01-57P03)")
            }
            Kind::PoolExhausted => {
                row(503, "pool_exhausted", true, "no connection became free within the wait timeout")
            }
            Kind::DeployQueueFull => row(503, "deploy_queue_full", true, "too many deploys are queued"),
            Kind::UploadsBusy => {
                row(503, "uploads_busy", true, "request bodies being received use up MAX_UPLOADS_IN_FLIGHT_BYTES")
            }
            Kind::AnswersBusy => {
                row(503, "answers_busy", true, "answers being built use up MAX_ANSWERS_IN_FLIGHT_BYTES")
            }
            Kind::ResponseTooLarge => {
                row(500, "response_too_large", false, "a function's result is larger than MAX_RESPONSE_BYTES")
            }
            Kind::DeployPlatformBusy => row(
                503,
                "deploy_platform_busy",
                true,
                "the platform already runs DEPLOY_MAX_PER_PLATFORM deploys; retry when one has finished",
            ),
            Kind::ShuttingDown => row(503, "shutting_down", true, "the gateway is stopping"),
            Kind::QueryFailed => row(500, "query_failed", false, "any other PostgreSQL error"),
            // A platform's SQL that PostgreSQL refused is the platform's input that is wrong (422, one
            // code per deploy step); 500 is kept for the gateway's own faults (`deploy_failed`).
            Kind::MigrationFailed => row(
                422,
                "migration_failed",
                false,
                "the platform's migration file failed (step migrations, file, line, sqlstate); nothing was kept",
            ),
            Kind::MigrationChecksumMismatch => {
                row(409, "migration_checksum_mismatch", false, "an applied migration file was edited")
            }
            // The platform's function file is what is wrong (PostgreSQL refused it), not the gateway.
            Kind::FunctionDeployFailed => {
                row(422, "function_deploy_failed", false, "a function could not be created, replaced or dropped")
            }
            Kind::TableDeployFailed => row(
                422,
                "table_deploy_failed",
                false,
                "the platform's table file (or a change the gateway derived from it) failed; nothing was kept",
            ),
            Kind::TypeDeployFailed => {
                row(422, "type_deploy_failed", false, "the platform's type file failed; nothing was kept")
            }
            Kind::SeederFailed => {
                row(422, "seeder_failed", false, "the platform's seeder file failed; nothing was kept")
            }
            Kind::ExtensionDeployFailed => row(
                422,
                "extension_deploy_failed",
                false,
                "an extension the schema declares could not be created or updated; nothing was kept",
            ),
            Kind::DeployFailed => row(
                500,
                "deploy_failed",
                false,
                "the gateway's own deploy statements (transaction, savepoints, tracking tables) failed; nothing was kept",
            ),
            Kind::IsolationIncomplete => row(
                500,
                "isolation_incomplete",
                false,
                "POST /admin/isolate could not confine every database or role; the body is the full report",
            ),
            Kind::ExtensionNotAvailable => row(
                400,
                "extension_not_available",
                false,
                "an extension the schema needs is not installed on the server",
            ),
            Kind::ExtensionNotAllowed => row(
                403,
                "extension_not_allowed",
                false,
                "the schema needs an untrusted extension not in EXTENSIONS_ALLOWED, or puts one where /call reaches it",
            ),
            Kind::RoleNotAllowed => row(
                403,
                "role_not_allowed",
                false,
                "the PostgreSQL role named for a platform has rights a platform must not have (or is not the gateway's)",
            ),
            Kind::SchemaExtractionFailed => row(
                400,
                "schema_extraction_failed",
                false,
                "the uploaded archive is unreadable, hostile or over a limit (413 when over a limit)",
            ),
            Kind::SchemaDrift => {
                row(409, "schema_drift", false, "tables differ from the files in a way that loses data; use force=true")
            }
            Kind::SeedDataMissing => row(
                409,
                "seed_data_missing",
                false,
                "rows defined by seeders are missing; use reseed=true or force=true",
            ),
            Kind::StatementNotAllowed => row(
                400,
                "statement_not_allowed",
                false,
                "a deploy file holds transaction control or COPY FROM STDIN; refused before anything ran (file, line)",
            ),
            Kind::TransactionEscaped => row(
                422,
                "deploy_transaction_escaped",
                false,
                "a statement ended the deploy's transaction; the message says what was kept",
            ),
            Kind::DeployTimeout => row(
                504,
                "deploy_timeout",
                false,
                "a deploy ran past DEPLOY_STATEMENT_TIMEOUT_MS or DEPLOY_TIMEOUT_SECS; it was rolled back",
            ),
            Kind::DatabaseLimitReached => row(
                409,
                "database_limit_reached",
                false,
                "the platform has MAX_DATABASES_PER_PLATFORM databases; no more are created",
            ),
            Kind::PlatformLimitReached => row(
                409,
                "platform_limit_reached",
                false,
                "the gateway has MAX_PLATFORMS platforms; no more are registered",
            ),
            Kind::SchemaLimitReached => row(
                409,
                "schema_limit_reached",
                false,
                "the platform stores MAX_SCHEMAS_PER_PLATFORM schemas; a new name is refused (new versions are not)",
            ),
            Kind::OriginNotAllowed => row(
                403,
                "origin_not_allowed",
                false,
                "a request that changes state came from a web page of another origin (Origin header), or an admin \
                 change used HTTP Basic instead of Authorization: Bearer",
            ),
            Kind::HostNotAllowed => row(
                421,
                "host_not_allowed",
                false,
                "the Host header names neither an IP address, localhost nor a name in ALLOWED_HOSTS",
            ),
            Kind::ServerNotFound => {
                row(404, "server_not_found", false, "no PostgreSQL server of that name is recorded")
            }
            Kind::ServerAlreadyExists => {
                row(409, "server_already_exists", false, "a server of that name is recorded already")
            }
            Kind::ServerInUse => row(
                409,
                "server_in_use",
                false,
                "the server still holds databases (move or drop them first; drain it to stop new ones)",
            ),
            Kind::ServerUnreachable => row(
                400,
                "server_unreachable",
                false,
                "the gateway could not connect to the server being added; the message names the reason",
            ),
            Kind::Internal => row(500, "internal_error", false, "a bug in the gateway"),
        }
    }

    pub fn status(self) -> u16 {
        self.row().status
    }

    pub fn code(self) -> &'static str {
        self.row().code
    }

    pub fn retryable(self) -> bool {
        self.row().retryable
    }

    /// Maps a PostgreSQL SQLSTATE met while serving `/call` to a kind.
    pub fn from_sqlstate(state: &str) -> Kind {
        match state {
            "42883" => Kind::FunctionNotFound,
            // Overloads PostgreSQL cannot choose between for these arguments: the caller's input.
            "42725" => Kind::InvalidParameter,
            "23505" | "23503" | "23514" | "23502" => Kind::ConstraintViolation,
            "P0001" => Kind::FunctionError,
            "57014" => Kind::Timeout,
            "40001" | "40P01" => Kind::Conflict,
            "42501" => Kind::PermissionDenied,
            "3D000" => Kind::DatabaseNotFound,
            "57P01" | "57P02" | "57P03" | "53300" => Kind::ConnectionFailed,
            s if s.starts_with("08") => Kind::ConnectionFailed,
            s if s.starts_with("22") => Kind::InvalidParameter,
            _ => Kind::QueryFailed,
        }
    }
}

/// PostgreSQL's own description of an error, passed through to the client.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DbDetail {
    pub sqlstate: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

/// An error on its way to a client. The fields live behind one box ([`ErrorFields`], reached through
/// `Deref`), so a `Result<_, ApiError>` stays one word wide on the paths that succeed.
#[derive(Clone, Debug)]
pub struct ApiError(Box<ErrorFields>);

/// What an [`ApiError`] says.
#[derive(Clone, Debug)]
pub struct ErrorFields {
    pub kind: Kind,
    pub message: String,
    /// The database the request was aimed at, when known.
    pub database: Option<String>,
    /// A short machine-readable reason below the code (e.g. which limit).
    pub cause: Option<String>,
    pub db: Option<DbDetail>,
    /// For 405: the methods the path takes.
    pub allow: Option<&'static str>,
    /// Extra JSON members (already-encoded values), e.g. the step and file of a failed deploy.
    pub extra: Vec<(&'static str, String)>,
    /// A status other than the table's, for the one documented case: `schema_extraction_failed` is 413
    /// when an archive breaches a size limit.
    pub status_override: Option<u16>,
}

impl std::ops::Deref for ApiError {
    type Target = ErrorFields;
    fn deref(&self) -> &ErrorFields {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut ErrorFields {
        &mut self.0
    }
}

/// Longest text an error body repeats from PostgreSQL or a cause: a function can raise a message of
/// any size, and an error answer should stay an error answer, not a data channel.
pub const MAX_ERROR_TEXT_BYTES: usize = 2048;

/// `s` cut to [`MAX_ERROR_TEXT_BYTES`] on a character boundary, marked with `…` when cut.
fn cut(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= MAX_ERROR_TEXT_BYTES {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = MAX_ERROR_TEXT_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", &s[..end]))
}

impl ApiError {
    pub fn new(kind: Kind, message: impl Into<String>) -> ApiError {
        ApiError(Box::new(ErrorFields {
            kind,
            message: message.into(),
            database: None,
            cause: None,
            db: None,
            allow: None,
            extra: Vec::new(),
            status_override: None,
        }))
    }

    /// Its message, for callers that report text only (the command-line tools).
    pub fn into_message(self) -> String {
        self.0.message
    }

    /// The same error under another kind (e.g. a FATAL during a call is a connection failure).
    pub fn with_kind(mut self, kind: Kind) -> ApiError {
        self.kind = kind;
        self
    }

    pub fn with_database(mut self, db: impl Into<String>) -> ApiError {
        self.database = Some(db.into());
        self
    }

    pub fn with_cause(mut self, cause: impl Into<String>) -> ApiError {
        self.cause = Some(cause.into());
        self
    }

    pub fn with_db(mut self, db: DbDetail) -> ApiError {
        self.db = Some(db);
        self
    }

    /// Adds a member whose value is already JSON text.
    pub fn with_extra_json(mut self, key: &'static str, json: String) -> ApiError {
        self.extra.push((key, json));
        self
    }

    pub fn status(&self) -> u16 {
        self.status_override.unwrap_or(self.kind.status())
    }

    /// Seconds a client should wait before retrying, for retryable errors.
    pub fn retry_after(&self) -> Option<u32> {
        if self.kind.retryable() { Some(1) } else { None }
    }

    /// The JSON body: `{"error", "message", ...}` with optional members only when known.
    pub fn write_body(&self, out: &mut Vec<u8>) {
        let mut o = ObjectWriter::new(out);
        o.str("error", self.kind.code());
        o.str("message", &cut(&self.message));
        if let Some(d) = &self.database {
            o.str("database", d);
        }
        if let Some(c) = &self.cause {
            o.str("cause", &cut(c));
        }
        if let Some(db) = &self.db {
            o.str("sqlstate", &db.sqlstate);
            if let Some(d) = &db.detail {
                o.str("detail", &cut(d));
            }
            if let Some(h) = &db.hint {
                o.str("hint", &cut(h));
            }
        }
        if self.kind.retryable() {
            o.bool("retryable", true);
        }
        for (k, v) in &self.extra {
            o.raw(k, v);
        }
        o.finish();
    }

    pub fn body(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(96 + self.message.len());
        self.write_body(&mut v);
        v
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_TEXT_BYTES);
        let e = ApiError::new(Kind::FunctionError, long.clone());
        let body = String::from_utf8(e.body()).unwrap();
        assert!(body.len() < MAX_ERROR_TEXT_BYTES + 200, "{}", body.len());
        assert!(body.contains('…'));
        assert!(cut("short") == "short");
    }

    #[test]
    fn codes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for k in Kind::ALL {
            assert!(seen.insert(k.code()), "duplicate code {}", k.code());
        }
        assert_eq!(seen.len(), Kind::ALL.len());
    }

    #[test]
    fn retryable_kinds_are_503_or_409() {
        for k in Kind::ALL {
            if k.retryable() {
                assert!(matches!(k.status(), 503 | 409), "{:?}", k);
            }
        }
    }

    #[test]
    fn sqlstate_mapping() {
        assert_eq!(Kind::from_sqlstate("42883"), Kind::FunctionNotFound);
        assert_eq!(Kind::from_sqlstate("22P02"), Kind::InvalidParameter);
        assert_eq!(Kind::from_sqlstate("08006"), Kind::ConnectionFailed);
        assert_eq!(Kind::from_sqlstate("57P01"), Kind::ConnectionFailed);
        assert_eq!(Kind::from_sqlstate("40P01"), Kind::Conflict);
        assert_eq!(Kind::from_sqlstate("XX000"), Kind::QueryFailed);
    }
}
