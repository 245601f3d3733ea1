//! Responses: status line, the headers every response carries (`Content-Length`, `Content-Type`) and
//! the body, serialised into a connection's write buffer.

use crate::error::{ApiError, Kind};

/// A complete response waiting to be serialised.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// For 405.
    pub allow: Option<&'static str>,
    /// For retryable 503s.
    pub retry_after: Option<u32>,
    /// Close the connection after this response whatever the client asked (e.g. unread body).
    pub close: bool,
    /// The error kind of an error answer (counted by `/metrics`).
    pub error: Option<Kind>,
    /// One more header, e.g. `WWW-Authenticate` for the status page.
    pub header: Option<(&'static str, &'static str)>,
    /// For a `/call`: the server (`name`, or `name~host:port` for a replica) that answered it, for the
    /// request log.
    pub served_by: Option<std::sync::Arc<str>>,
}

pub const JSON: &str = "application/json";

impl Response {
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response::with_type(status, JSON, body)
    }

    pub fn with_type(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type,
            body,
            allow: None,
            retry_after: None,
            close: false,
            error: None,
            header: None,
            served_by: None,
        }
    }

    pub fn error(e: &ApiError) -> Response {
        let mut r = Response::json(e.status(), e.body());
        r.allow = e.allow;
        r.retry_after = e.retry_after();
        r.error = Some(e.kind);
        r
    }

    pub fn closing(mut self) -> Response {
        self.close = true;
        self
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Serialises `r` into `out`. `keep_alive` is the connection's decision; HTTP/1.0 clients get
/// `Connection: keep-alive` spelled out because they do not assume it. `head_only` omits the body (HEAD).
pub fn write(out: &mut Vec<u8>, r: &Response, keep_alive: bool, minor_version: u8, head_only: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, r.status as u64);
    out.push(b' ');
    out.extend_from_slice(reason(r.status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(r.content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    push_u64(out, r.body.len() as u64);
    if let Some(a) = r.allow {
        out.extend_from_slice(b"\r\nAllow: ");
        out.extend_from_slice(a.as_bytes());
    }
    if let Some((name, value)) = r.header {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
    }
    if let Some(s) = r.retry_after {
        out.extend_from_slice(b"\r\nRetry-After: ");
        push_u64(out, s as u64);
    }
    if !keep_alive {
        out.extend_from_slice(b"\r\nConnection: close");
    } else if minor_version == 0 {
        out.extend_from_slice(b"\r\nConnection: keep-alive");
    }
    out.extend_from_slice(b"\r\n\r\n");
    if !head_only {
        out.extend_from_slice(&r.body);
    }
}

/// The interim response for `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Head of a streamed (chunked) response, e.g. NDJSON progress.
pub fn write_stream_head(out: &mut Vec<u8>, status: u16, content_type: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, status as u64);
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nTransfer-Encoding: chunked\r\n\r\n");
}

/// One chunk of a streamed response; an empty `data` is the terminating chunk.
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    if data.is_empty() {
        // "0\r\n" + empty trailer "\r\n" is already complete.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_the_error_table_answers_has_its_reason_phrase() {
        for k in crate::error::Kind::ALL {
            assert_ne!(reason(k.status()), "Unknown", "{:?} answers {}", k, k.status());
        }
        assert_eq!(reason(422), "Unprocessable Content");
    }

    #[test]
    fn serialises() {
        let mut out = Vec::new();
        let mut r = Response::json(405, b"{}".to_vec());
        r.allow = Some("GET");
        write(&mut out, &r, false, 1, false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\
             Allow: GET\r\nConnection: close\r\n\r\n{}"
        );
    }
}
