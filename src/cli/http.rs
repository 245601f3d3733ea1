//! The deploy command's HTTP/1.1 client: one request per connection (`Connection: close`), a body
//! read by `Content-Length`, chunks or EOF, and NDJSON streams handed over line by line. Plain HTTP
//! only, as the gateway speaks it.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::http::chunked::ChunkedDecoder;

/// Where the gateway is: `http://host:port` plus an optional path prefix.
#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub base_path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| format!("'{url}': only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| format!("'{url}': bad port '{p}'"))?)
            }
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("'{url}': no host"));
        }
        Ok(Target {
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port,
            base_path: path.into(),
        })
    }
}

/// How a request went wrong.
#[derive(Debug)]
pub enum Failure {
    /// Nothing (or no complete answer head) came back: connect refused, timed out, reset, empty reply.
    Unreachable(String),
    /// The answer broke off after its head.
    Broken(String),
}

/// A response head and, unless streamed, its body.
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// One request. `on_line` gets each line of a chunked `application/x-ndjson` body as it arrives (the
/// body is then left empty).
#[allow(clippy::too_many_arguments)]
pub fn request(
    t: &Target,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    connect_timeout: Duration,
    max_time: Duration,
    on_line: &mut dyn FnMut(&[u8]),
) -> Result<Answer, Failure> {
    let addrs: Vec<_> = (t.host.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|e| Failure::Unreachable(format!("cannot resolve {}: {e}", t.host)))?
        .collect();
    let mut last = String::from("no address");
    let mut sock = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, connect_timeout) {
            Ok(s) => {
                sock = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {a}: {e}"),
        }
    }
    let mut s = sock.ok_or(Failure::Unreachable(last))?;
    let _ = s.set_read_timeout(Some(max_time));
    let _ = s.set_write_timeout(Some(max_time));
    let mut head = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: stonescriptdb-gateway/{}\r\nConnection: close\r\nContent-Length: {}\r\n",
        t.base_path,
        t.host,
        t.port,
        crate::VERSION,
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let unreachable = |e: std::io::Error| Failure::Unreachable(format!("sending the request failed: {e}"));
    s.write_all(head.as_bytes()).map_err(unreachable)?;
    s.write_all(body).map_err(unreachable)?;

    // The head.
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 16384];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(Failure::Unreachable("the gateway closed the connection without an answer".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(Failure::Unreachable(format!("no answer: {e}"))),
        }
        if buf.len() > 64 * 1024 {
            return Err(Failure::Broken("answer head too large".into()));
        }
    };
    let text = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Failure::Broken("malformed status line".into()))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut content_type = String::new();
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = v.parse().ok(),
            "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
            "content-type" => content_type = v.to_string(),
            _ => {}
        }
    }
    let mut rest = buf.split_off(end);
    let broken = |e: std::io::Error| Failure::Broken(format!("the answer broke off: {e}"));
    let mut body = Vec::new();
    if chunked {
        let stream = content_type.starts_with("application/x-ndjson");
        let mut dec = ChunkedDecoder::new(usize::MAX);
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let mut out = Vec::new();
            let used =
                dec.feed(&rest, &mut out).map_err(|e| Failure::Broken(format!("bad chunked body: {}", e.message)))?;
            rest.drain(..used);
            if stream {
                pending.extend_from_slice(&out);
                while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    on_line(&line[..line.len() - 1]);
                }
            } else {
                body.extend_from_slice(&out);
            }
            if dec.is_done() {
                break;
            }
            match s.read(&mut chunk) {
                Ok(0) => return Err(Failure::Broken("the answer broke off before its end".into())),
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(broken(e)),
            }
        }
        if stream && !pending.is_empty() {
            on_line(&pending);
        }
    } else {
        body = rest;
        loop {
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
            match s.read(&mut chunk) {
                Ok(0) if length.is_none() => break,
                Ok(0) => return Err(Failure::Broken("the answer broke off before its end".into())),
                Ok(n) => body.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(broken(e)),
            }
        }
        if let Some(n) = length {
            body.truncate(n);
        }
    }
    Ok(Answer { status, content_type, body })
}

/// A multipart/form-data body: text fields and one file field named `file_field`.
pub fn multipart(fields: &[(&str, &str)], file_field: &str, file_name: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = format!("----stonescriptdb-{:016x}", crc32fast::hash(data) as u64 * 0x9e37_79b9 + data.len() as u64);
    let mut b = Vec::with_capacity(data.len() + 1024);
    for (k, v) in fields {
        b.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes(),
        );
    }
    b.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{file_field}\"; filename=\"{file_name}\"\r\n\
             Content-Type: application/gzip\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(data);
    b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://10.0.0.5:9100/gw/").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.base_path.as_str()), ("10.0.0.5", 9100, "/gw"));
        let t = Target::parse("http://[::1]:9000").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        assert_eq!(Target::parse("http://gw").unwrap().port, 80);
        assert!(Target::parse("https://gw").is_err());
        assert!(Target::parse("http://gw:x").is_err());
    }
}
