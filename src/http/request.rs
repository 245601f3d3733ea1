//! Request heads: bytes in, a validated [`Head`] out (httparse underneath). Framing rules of RFC 9112
//! §6 live here, including the request-smuggling shapes we refuse.

use crate::config::Limits;
use crate::error::{ApiError, Kind};

/// Methods we route; anything else is kept as `Other` so the router can answer 405.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Other,
}

impl Method {
    fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }
}

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// The parts of a request head the gateway uses. Owned so the read buffer can move on.
#[derive(Debug, Clone)]
pub struct Head {
    pub method: Method,
    /// The path without the query string, still percent-encoded.
    pub path: String,
    pub query: Option<String>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub framing: BodyFraming,
    /// Whether the connection may stay open after the response (before the server's own view).
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    pub x_forwarded_for: Option<String>,
    pub accept: Option<String>,
    /// `X-Consistency` (for `/call`: `primary` keeps a read on the primary).
    pub consistency: Option<String>,
    /// `Host`, as sent.
    pub host: Option<String>,
    /// `Origin`, which browsers send with cross-site requests.
    pub origin: Option<String>,
}

impl Head {
    pub fn query_param(&self, name: &str) -> Option<String> {
        let q = self.query.as_deref()?;
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if percent_decode(k).as_deref() == Some(name) {
                return percent_decode(v);
            }
        }
        None
    }
}

/// Decodes `%XX` escapes and `+` (as in query strings) into UTF-8; None when malformed.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = b.get(i + 1..i + 3)?;
                let v = u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?;
                out.push(v);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Why a head was refused. The connection is always closed afterwards because framing is unknown.
fn bad(message: &str) -> ApiError {
    ApiError::new(Kind::InvalidRequest, message)
}

fn header_value(v: &[u8]) -> Result<&str, ApiError> {
    std::str::from_utf8(v).map(str::trim).map_err(|_| bad("header value is not valid UTF-8"))
}

/// Parses a head from the start of `buf`. `Ok(None)` means more bytes are needed; `Ok(Some((head, n)))`
/// means the head took `n` bytes.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<(Head, usize)>, ApiError> {
    // httparse needs the header array up front; its length is the header-count limit.
    let mut storage = [httparse::EMPTY_HEADER; 256];
    let headers = &mut storage[..limits.max_headers.min(256)];
    let mut req = httparse::Request::new(headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_head_bytes {
                return Err(
                    ApiError::new(Kind::HeadersTooLarge, "request head is too large").with_cause("max_head_bytes")
                );
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ApiError::new(Kind::HeadersTooLarge, "too many header fields").with_cause("max_headers"));
        }
        Err(e) => return Err(bad(&format!("malformed request head: {e}"))),
    };
    if n > limits.max_head_bytes {
        return Err(ApiError::new(Kind::HeadersTooLarge, "request head is too large").with_cause("max_head_bytes"));
    }
    let method = Method::parse(req.method.unwrap_or(""));
    let target = req.path.unwrap_or("/");
    if !target.starts_with('/') {
        return Err(bad("request target must be an absolute path"));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let minor_version = req.version.unwrap_or(1);

    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<String> = None;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut expect_continue = false;
    let mut content_type = None;
    let mut authorization = None;
    let mut xff: Option<String> = None;
    let mut accept = None;
    let mut consistency = None;
    let mut host: Option<String> = None;
    let mut origin: Option<String> = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let v = header_value(h.value)?;
            // A list like "5, 5" is the same length repeated; differing values are a smuggling shape.
            for part in v.split(',') {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) || part.len() > 18 {
                    return Err(bad("invalid Content-Length"));
                }
                let len: u64 = part.parse().map_err(|_| bad("invalid Content-Length"))?;
                match content_length {
                    Some(prev) if prev != len => return Err(bad("conflicting Content-Length headers")),
                    _ => content_length = Some(len),
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let v = header_value(h.value)?.to_ascii_lowercase();
            transfer_encoding = Some(match transfer_encoding {
                Some(prev) => format!("{prev},{v}"),
                None => v,
            });
        } else if name.eq_ignore_ascii_case("connection") {
            for t in header_value(h.value)?.split(',') {
                let t = t.trim();
                if t.eq_ignore_ascii_case("close") {
                    conn_close = true;
                } else if t.eq_ignore_ascii_case("keep-alive") {
                    conn_keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            let v = header_value(h.value)?;
            if v.eq_ignore_ascii_case("100-continue") {
                expect_continue = true;
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(header_value(h.value)?.to_string());
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(header_value(h.value)?.to_string());
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            let v = header_value(h.value)?;
            xff = Some(match xff {
                Some(prev) => format!("{prev}, {v}"),
                None => v.to_string(),
            });
        } else if name.eq_ignore_ascii_case("accept") {
            accept = Some(header_value(h.value)?.to_string());
        } else if name.eq_ignore_ascii_case("x-consistency") {
            consistency = Some(header_value(h.value)?.trim().to_ascii_lowercase());
        } else if name.eq_ignore_ascii_case("host") {
            // Two Host fields could be read differently by a proxy and by the Host check.
            if host.is_some() {
                return Err(bad("more than one Host header"));
            }
            host = Some(header_value(h.value)?.to_string());
        } else if name.eq_ignore_ascii_case("origin") {
            if origin.is_some() {
                return Err(bad("more than one Origin header"));
            }
            origin = Some(header_value(h.value)?.to_string());
        }
    }

    let framing = match (&transfer_encoding, content_length) {
        (Some(_), Some(_)) => return Err(bad("both Transfer-Encoding and Content-Length")),
        (Some(te), None) => {
            // Only exactly "chunked" is accepted: any other coding, or chunked not last, cannot be framed.
            let codings: Vec<&str> = te.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
            if codings != ["chunked"] {
                return Err(bad("unsupported Transfer-Encoding (only chunked is accepted)"));
            }
            if minor_version == 0 {
                return Err(bad("Transfer-Encoding is not allowed in HTTP/1.0"));
            }
            BodyFraming::Chunked
        }
        (None, Some(0)) | (None, None) => BodyFraming::None,
        (None, Some(n)) => BodyFraming::Length(n),
    };
    let keep_alive = if minor_version == 0 { conn_keep_alive && !conn_close } else { !conn_close };
    Ok(Some((
        Head {
            method,
            path,
            query,
            minor_version,
            framing,
            keep_alive,
            consistency,
            expect_continue: expect_continue && minor_version == 1,
            content_type,
            authorization,
            x_forwarded_for: xff,
            accept,
            host,
            origin,
        },
        n,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Option<(Head, usize)>, ApiError> {
        parse_head(s.as_bytes(), &Limits::default())
    }

    #[test]
    fn simple_and_partial() {
        assert!(p("GET /health HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let (h, n) = p("GET /health?x=1 HTTP/1.1\r\nHost: x\r\n\r\nrest").unwrap().unwrap();
        assert_eq!(n, 37);
        assert_eq!(h.path, "/health");
        assert_eq!(h.query.as_deref(), Some("x=1"));
        assert!(h.keep_alive);
        assert_eq!(h.framing, BodyFraming::None);
    }

    #[test]
    fn http10_and_connection() {
        let (h, _) = p("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let (h, _) = p("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap().unwrap();
        assert!(h.keep_alive);
        let (h, _) = p("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn smuggling_shapes() {
        for s in [
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
        ] {
            let e = p(s).unwrap_err();
            assert_eq!(e.kind, Kind::InvalidRequest, "{s:?}");
        }
        let (h, _) = p("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.framing, BodyFraming::Length(3));
        let (h, _) = p("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.framing, BodyFraming::Chunked);
    }

    #[test]
    fn limits() {
        let l = Limits { max_headers: 8, max_head_bytes: 1024, ..Limits::default() };
        let mut s = String::from("GET / HTTP/1.1\r\n");
        for i in 0..9 {
            s.push_str(&format!("X-{i}: y\r\n"));
        }
        s.push_str("\r\n");
        assert_eq!(parse_head(s.as_bytes(), &l).unwrap_err().kind, Kind::HeadersTooLarge);
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(2000));
        assert_eq!(parse_head(big.as_bytes(), &l).unwrap_err().kind, Kind::HeadersTooLarge);
    }

    #[test]
    fn query_params() {
        let (h, _) = p("GET /admin/databases?platform=a%20b&x=1 HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.query_param("platform").as_deref(), Some("a b"));
        assert_eq!(h.query_param("nope"), None);
    }
}
