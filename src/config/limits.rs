//! Every bound on network input, as typed values with defaults. A breach of each has its own error.

use std::time::Duration;

/// Limits on client input. Built from configuration keys of the same names (see `keys.rs`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// `MAX_CLIENT_CONNECTIONS`: open client sockets; further accepts are closed at once.
    pub max_client_connections: usize,
    /// `MAX_HEADERS`: header fields per request (431 beyond).
    pub max_headers: usize,
    /// `MAX_HEAD_BYTES`: request line plus headers (431 beyond).
    pub max_head_bytes: usize,
    /// `MAX_CALL_BODY_BYTES`: JSON bodies (413 beyond).
    pub max_call_body_bytes: usize,
    /// `MAX_UPLOAD_BYTES`: multipart schema uploads (413 beyond).
    pub max_upload_bytes: usize,
    /// `MAX_JSON_DEPTH`: nesting of JSON bodies (400 invalid_json beyond).
    pub max_json_depth: usize,
    /// `MAX_MULTIPART_PARTS`: parts per multipart body.
    pub max_multipart_parts: usize,
    /// `HEAD_TIMEOUT_MS`: from the first byte of a request to the end of its head (408).
    pub head_timeout: Duration,
    /// `BODY_TIMEOUT_MS`: longest silence while a body is being received (408).
    pub body_timeout: Duration,
    /// `KEEPALIVE_TIMEOUT_MS`: idle time between requests before the connection is closed.
    pub keepalive_timeout: Duration,
    /// `SHUTDOWN_IDLE_MS`: during the drain, how long a connection with nothing in flight waits for a
    /// request that may already be on its way before it is closed.
    pub shutdown_idle: Duration,
    /// `MAX_CONNECTIONS_PER_ADDRESS`: client sockets from one IP (0 = no cap).
    pub max_connections_per_address: usize,
    /// `BODY_TOTAL_TIMEOUT_MS`: from the end of a head to the end of its body, however it trickles.
    pub body_total_timeout: Duration,
    /// `MAX_UPLOADS_IN_FLIGHT_BYTES`: body bytes being received over all connections (503 beyond).
    pub max_uploads_in_flight_bytes: usize,
    /// `MAX_RESPONSE_BYTES`: one `/call` answer (500 `response_too_large` beyond).
    pub max_response_bytes: usize,
    /// `MAX_ANSWERS_IN_FLIGHT_BYTES`: `/call` answers being built, over all loops (503 beyond).
    pub max_answers_in_flight_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_client_connections: 10_000,
            max_headers: 64,
            max_head_bytes: 16 * 1024,
            max_call_body_bytes: 1024 * 1024,
            max_upload_bytes: 50 * 1024 * 1024,
            max_json_depth: 64,
            max_multipart_parts: 32,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(75),
            shutdown_idle: Duration::from_millis(500),
            max_connections_per_address: 1000,
            body_total_timeout: Duration::from_secs(300),
            max_uploads_in_flight_bytes: 256 * 1024 * 1024,
            max_response_bytes: 32 * 1024 * 1024,
            max_answers_in_flight_bytes: 256 * 1024 * 1024,
        }
    }
}
