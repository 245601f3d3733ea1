//! multipart/form-data bodies (RFC 7578): parts borrowed from the request body, no copies.
//!
//! Framing follows RFC 2046 §5.1.1: a delimiter is `--boundary` at the very start of the body or
//! `CRLF--boundary` anywhere else, followed by optional transport padding and then CRLF (another
//! part follows) or `--` (the close delimiter). The boundary text appearing anywhere else, e.g.
//! after a bare LF or in the middle of a line of file data, is data.

use std::fmt;

/// Bounds on what one body may make us do. Sizes of the body itself are bounded by the HTTP layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartLimits {
    pub max_parts: usize,
    /// Bytes of one part's header block, including the blank line that ends it.
    pub max_part_header_bytes: usize,
    pub max_headers_per_part: usize,
}

impl Default for MultipartLimits {
    fn default() -> Self {
        MultipartLimits { max_parts: 32, max_part_header_bytes: 8192, max_headers_per_part: 16 }
    }
}

/// One form field or file, borrowing from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    /// The `name` parameter of `Content-Disposition`. A quoted value is returned as written
    /// between the quotes: a backslash escape such as `\"` is honoured when finding the closing
    /// quote but stays in the text, since borrowed data cannot be unescaped.
    pub name: &'a str,
    /// The `filename` parameter, same quoting rules; `filename*` is ignored.
    pub filename: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub data: &'a [u8],
}

impl<'a> Part<'a> {
    /// The data as text, for ordinary (non-file) fields.
    pub fn text(&self) -> Result<&'a str, MultipartError> {
        std::str::from_utf8(self.data)
            .map_err(|_| MultipartError::bad(format!("field {:?} is not valid UTF-8", self.name)))
    }
}

/// Why a body or Content-Type was rejected. `too_large` marks a configured limit being
/// exceeded (HTTP 413) as opposed to a malformed body (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartError {
    pub message: String,
    pub too_large: bool,
}

impl MultipartError {
    fn bad(message: impl Into<String>) -> Self {
        MultipartError { message: message.into(), too_large: false }
    }

    fn limit(message: impl Into<String>) -> Self {
        MultipartError { message: message.into(), too_large: true }
    }
}

impl fmt::Display for MultipartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "multipart/form-data: {}", self.message)
    }
}

impl std::error::Error for MultipartError {}

/// The first part named `name`, if any.
pub fn find<'p, 'a>(parts: &'p [Part<'a>], name: &str) -> Option<&'p Part<'a>> {
    parts.iter().find(|p| p.name == name)
}

/// Extracts the boundary from a `Content-Type` header value, which must be
/// `multipart/form-data` (any case) with a `boundary` parameter, quoted or not.
pub fn boundary(content_type: &str) -> Result<&str, MultipartError> {
    let media_type = content_type.split(';').next().unwrap_or_default();
    if !media_type.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err(MultipartError::bad("Content-Type is not multipart/form-data"));
    }
    // Parameters start at the `;` (if any), which is where `next_param` expects to begin.
    let mut params = &content_type[media_type.len()..];
    let mut found = None;
    while let Some((name, value)) = next_param(&mut params)? {
        if name.eq_ignore_ascii_case("boundary") {
            if found.is_some() {
                return Err(MultipartError::bad("duplicate boundary parameter"));
            }
            found = Some(value);
        }
    }
    let boundary = found.ok_or_else(|| MultipartError::bad("Content-Type has no boundary"))?;
    if !valid_boundary(boundary) {
        return Err(MultipartError::bad("boundary must be 1 to 70 RFC 2046 characters, not ending in a space"));
    }
    Ok(boundary)
}

/// RFC 2046 `boundary := 0*69<bchars> bcharsnospace`.
fn valid_boundary(b: &str) -> bool {
    let is_bchar = |c: u8| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c);
    (1..=70).contains(&b.len()) && b.bytes().all(is_bchar) && !b.ends_with(' ')
}

/// Reads the next `; name=value` parameter of a header value, leaving `rest` after it.
/// Quoted values are returned without their quotes (escapes left in place).
fn next_param<'a>(rest: &mut &'a str) -> Result<Option<(&'a str, &'a str)>, MultipartError> {
    let ows = |s: &'a str| s.trim_start_matches([' ', '\t']);
    loop {
        let s = ows(rest);
        if s.is_empty() {
            *rest = s;
            return Ok(None);
        }
        let Some(after) = s.strip_prefix(';') else {
            return Err(MultipartError::bad("expected ';' between header parameters"));
        };
        let s = ows(after);
        // Tolerate `;;` and a trailing `;`, which some hand-built clients emit.
        if s.is_empty() || s.starts_with(';') {
            *rest = s;
            continue;
        }
        let Some((name, value)) = s.split_once('=') else {
            return Err(MultipartError::bad("header parameter without '='"));
        };
        let name = name.trim_end_matches([' ', '\t']);
        if name.is_empty() || name.contains([' ', '\t', ';', '"']) {
            return Err(MultipartError::bad("malformed header parameter name"));
        }
        let value = ows(value);
        if let Some(quoted) = value.strip_prefix('"') {
            let bytes = quoted.as_bytes();
            let mut i = 0;
            loop {
                match bytes.get(i) {
                    None => return Err(MultipartError::bad("unterminated quoted string")),
                    Some(b'"') => break,
                    Some(b'\\') => i += 2,
                    Some(_) => i += 1,
                }
            }
            // `i` may have skipped past the end on a trailing backslash; `get` above caught it,
            // so here `i` indexes the closing quote.
            *rest = &quoted[i + 1..];
            return Ok(Some((name, &quoted[..i])));
        }
        let end = value.find([';', ' ', '\t']).unwrap_or(value.len());
        if end == 0 {
            return Err(MultipartError::bad("empty header parameter value"));
        }
        *rest = &value[end..];
        return Ok(Some((name, &value[..end])));
    }
}

/// What follows a boundary occurrence.
enum Tail {
    /// Another part begins at this offset.
    Part(usize),
    Close,
}

/// Decides whether the boundary text ending at `at` is a real delimiter.
fn tail_at(body: &[u8], at: usize) -> Option<Tail> {
    let rest = &body[at..];
    if rest.starts_with(b"--") {
        return Some(Tail::Close);
    }
    let padding = rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    rest[padding..].starts_with(b"\r\n").then_some(Tail::Part(at + padding + 2))
}

/// Finds the next `CRLF--boundary` delimiter at or after `from`: its start and what follows.
fn next_delimiter(body: &[u8], needle: &[u8], from: usize) -> Option<(usize, Tail)> {
    let mut i = from;
    while i + needle.len() <= body.len() {
        let window = &body[i..=body.len() - needle.len()];
        let at = i + window.iter().position(|&b| b == b'\r')?;
        if body[at..].starts_with(needle)
            && let Some(tail) = tail_at(body, at + needle.len())
        {
            return Some((at, tail));
        }
        i = at + 1;
    }
    None
}

/// Splits a multipart/form-data body into its parts.
pub fn parse<'a>(body: &'a [u8], boundary: &str, limits: &MultipartLimits) -> Result<Vec<Part<'a>>, MultipartError> {
    if !valid_boundary(boundary) {
        return Err(MultipartError::bad("invalid boundary"));
    }
    let mut needle = Vec::with_capacity(boundary.len() + 4);
    needle.extend_from_slice(b"\r\n--");
    needle.extend_from_slice(boundary.as_bytes());
    let dash_boundary = &needle[2..];

    let first = if body.starts_with(dash_boundary) { tail_at(body, dash_boundary.len()) } else { None };
    let mut tail = match first {
        Some(tail) => tail,
        None => match next_delimiter(body, &needle, 0) {
            Some((_, tail)) => tail,
            None => return Err(MultipartError::bad("no opening boundary found")),
        },
    };

    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers_per_part];
    let mut parts = Vec::new();
    while let Tail::Part(start) = tail {
        if parts.len() == limits.max_parts {
            return Err(MultipartError::limit(format!("more than {} parts", limits.max_parts)));
        }
        let Some((end, next)) = next_delimiter(body, &needle, start) else {
            return Err(MultipartError::bad("missing closing boundary (truncated body)"));
        };
        parts.push(part(&body[start..end], &mut headers, limits, parts.len() + 1)?);
        tail = next;
    }
    Ok(parts)
}

/// Parses one part's header block and takes the rest as its data.
fn part<'a>(
    content: &'a [u8],
    headers: &mut [httparse::Header<'a>],
    limits: &MultipartLimits,
    number: usize,
) -> Result<Part<'a>, MultipartError> {
    let limited = &content[..content.len().min(limits.max_part_header_bytes)];
    let (header_len, parsed) = match httparse::parse_headers(limited, headers) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) if limited.len() < content.len() => {
            return Err(MultipartError::limit(format!(
                "part {number}: headers exceed {} bytes",
                limits.max_part_header_bytes
            )));
        }
        Ok(httparse::Status::Partial) => {
            return Err(MultipartError::bad(format!("part {number}: headers not terminated by a blank line")));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(MultipartError::limit(format!(
                "part {number}: more than {} headers",
                limits.max_headers_per_part
            )));
        }
        Err(e) => {
            return Err(MultipartError::bad(format!("part {number}: malformed header ({e})")));
        }
    };

    let mut disposition = None;
    let mut content_type = None;
    for header in parsed {
        let slot = if header.name.eq_ignore_ascii_case("content-disposition") {
            &mut disposition
        } else if header.name.eq_ignore_ascii_case("content-type") {
            &mut content_type
        } else {
            continue;
        };
        if slot.is_some() {
            return Err(MultipartError::bad(format!("part {number}: duplicate {} header", header.name)));
        }
        let value = std::str::from_utf8(header.value)
            .map_err(|_| MultipartError::bad(format!("part {number}: {} is not UTF-8", header.name)))?;
        *slot = Some(value.trim_matches([' ', '\t']));
    }

    let disposition =
        disposition.ok_or_else(|| MultipartError::bad(format!("part {number}: no Content-Disposition header")))?;
    let (kind, _) = disposition.split_once(';').unwrap_or((disposition, ""));
    if !kind.trim_end().eq_ignore_ascii_case("form-data") {
        return Err(MultipartError::bad(format!("part {number}: Content-Disposition is not form-data")));
    }
    let mut params = &disposition[kind.len()..];
    let (mut name, mut filename) = (None, None);
    while let Some((key, value)) =
        next_param(&mut params).map_err(|e| MultipartError::bad(format!("part {number}: {}", e.message)))?
    {
        let slot = if key.eq_ignore_ascii_case("name") {
            &mut name
        } else if key.eq_ignore_ascii_case("filename") {
            &mut filename
        } else {
            continue;
        };
        if slot.replace(value).is_some() {
            return Err(MultipartError::bad(format!("part {number}: duplicate {key} parameter")));
        }
    }
    let name = name.ok_or_else(|| MultipartError::bad(format!("part {number}: part without a name")))?;

    Ok(Part { name, filename, content_type, data: &content[header_len..] })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CURL_BODY: &[u8] = include_bytes!("../../tests/fixtures/multipart/curl_form.bin");
    const CURL_FILE: &[u8] = include_bytes!("../../tests/fixtures/multipart/curl_form_schema.bin");
    /// From the captured request's `Content-Type` header (curl 7.88.1).
    const CURL_CONTENT_TYPE: &str = "multipart/form-data; boundary=------------------------5ae9e2bf3874f5b6";

    fn parse_default<'a>(body: &'a [u8], b: &str) -> Result<Vec<Part<'a>>, MultipartError> {
        parse(body, b, &MultipartLimits::default())
    }

    fn body(b: &str, parts: &[(&str, &[u8])], close: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for (headers, data) in parts {
            out.extend_from_slice(format!("--{b}\r\n{headers}\r\n\r\n").as_bytes());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{b}--{close}").as_bytes());
        out
    }

    #[test]
    fn boundary_from_content_type() {
        assert_eq!(boundary(CURL_CONTENT_TYPE).unwrap(), "------------------------5ae9e2bf3874f5b6");
        assert_eq!(boundary("Multipart/Form-Data;boundary=abc").unwrap(), "abc");
        assert_eq!(boundary("multipart/form-data; BOUNDARY=\"a b:c\"").unwrap(), "a b:c");
        assert_eq!(
            boundary("multipart/form-data; charset=utf-8; boundary=----PHPBoundary5f1a2b ").unwrap(),
            "----PHPBoundary5f1a2b"
        );
        assert_eq!(boundary("multipart/form-data; x=\"q;uoted\"; boundary=z").unwrap(), "z");
        let seventy = "a".repeat(70);
        assert_eq!(boundary(&format!("multipart/form-data; boundary={seventy}")).unwrap(), seventy);
        for bad in [
            "multipart/mixed; boundary=abc",
            "application/json",
            "multipart/form-data",
            "multipart/form-data; charset=utf-8",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=\"\"",
            "multipart/form-data; boundary=\"abc \"",
            "multipart/form-data; boundary=\"ab",
            "multipart/form-data; boundary=a\"b",
            "multipart/form-data; boundary=a;b",
            "multipart/form-data; boundary=a; boundary=b",
            "multipart/form-data; boundary=ab*c",
            "multipart/form-data boundary=abc",
        ] {
            assert!(boundary(bad).is_err(), "{bad}");
        }
        let long = format!("multipart/form-data; boundary={}", "a".repeat(71));
        assert!(boundary(&long).is_err());
    }

    #[test]
    fn real_curl_body() {
        let b = boundary(CURL_CONTENT_TYPE).unwrap();
        let parts = parse_default(CURL_BODY, b).unwrap();
        assert_eq!(parts.len(), 3);
        let platform = find(&parts, "platform").unwrap();
        assert_eq!(platform.text().unwrap(), "demo");
        assert_eq!((platform.filename, platform.content_type), (None, None));
        assert_eq!(find(&parts, "tenant_id").unwrap().text().unwrap(), "t1");
        let schema = find(&parts, "schema").unwrap();
        assert_eq!(schema.filename, Some("postgresql.tar.gz"));
        assert_eq!(schema.content_type, Some("application/octet-stream"));
        assert_eq!(schema.data, CURL_FILE);
        // The fixture's file holds every awkward byte the framing must leave alone.
        for needle in [&b"\r\n--"[..], b"\0", b"\r\n\r\n", b"\n--"] {
            assert!(schema.data.windows(needle.len()).any(|w| w == needle));
        }
        // Borrowed, not copied.
        let range = CURL_BODY.as_ptr_range();
        assert!(range.contains(&schema.data.as_ptr()));
        assert!(find(&parts, "missing").is_none());
    }

    #[test]
    fn boundary_text_not_after_crlf_stays_in_data() {
        let b = "------------------------d74496d66958873e";
        let data =
            format!("\x1f\u{8b}\0--{b}\r\nX\n--{b}\r\nY\r--{b}--\r\nZ\r\n--{b}x\r\n\r\n--{b}-\r\n--{b}\t!\r\nend");
        let raw = body(
            b,
            &[
                (
                    "Content-Disposition: form-data; name=\"schema\"; filename=\"postgresql.tar.gz\"\r\nContent-Type: application/gzip",
                    data.as_bytes(),
                ),
                ("Content-Disposition: form-data; name=\"platform\"", b"demo"),
            ],
            "\r\n",
        );
        let parts = parse_default(&raw, b).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].data, data.as_bytes());
        assert_eq!(parts[0].content_type, Some("application/gzip"));
        assert_eq!(parts[1].text().unwrap(), "demo");
    }

    #[test]
    fn php_stream_context_body() {
        // As built by hand in PHP with file_get_contents + stream_context_create: file first,
        // fields after, lower-case header names, no trailing CRLF after the close delimiter.
        let b = "----PHPBoundary5f1a2b";
        let tarball: &[u8] = b"\x1f\x8b\x08\0\r\n--\0\0--\r\n----PHPBoundary5f1a2\r\n\xff";
        let mut raw = Vec::new();
        raw.extend_from_slice(format!("--{b}\r\ncontent-disposition: form-data; name=\"schema\"; filename=\"postgresql.tar.gz\"\r\ncontent-type: application/gzip\r\n\r\n").as_bytes());
        raw.extend_from_slice(tarball);
        raw.extend_from_slice(format!("\r\n--{b}\r\nContent-Disposition: form-data; name=\"platform\"\r\n\r\ndemo\r\n--{b}\r\nContent-Disposition: form-data; name=\"tenant_id\"\r\n\r\nt1\r\n--{b}--").as_bytes());
        let ct = format!("multipart/form-data; boundary={b}");
        let parts = parse_default(&raw, boundary(&ct).unwrap()).unwrap();
        let names: Vec<_> = parts.iter().map(|p| p.name).collect();
        assert_eq!(names, ["schema", "platform", "tenant_id"]);
        assert_eq!(parts[0].data, tarball);
        assert_eq!(parts[0].content_type, Some("application/gzip"));
        assert!(parts[0].text().is_err());
        assert_eq!(find(&parts, "tenant_id").unwrap().text().unwrap(), "t1");
    }

    #[test]
    fn php_curlfile_body_matches_curl_shape() {
        // PHP's CURLFile goes through libcurl, so the body has curl's layout.
        let b = "------------------------d74496d66958873e";
        let raw = body(
            b,
            &[
                ("Content-Disposition: form-data; name=\"platform\"", b"demo"),
                ("Content-Disposition: form-data; name=\"tenant_id\"", b"t1"),
                (
                    "Content-Disposition: form-data; name=\"schema\"; filename=\"postgresql.tar.gz\"\r\nContent-Type: application/gzip",
                    b"\0\r\n\r\n--\r\n",
                ),
            ],
            "\r\n",
        );
        let parts = parse_default(&raw, b).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2].data, b"\0\r\n\r\n--\r\n");
    }

    #[test]
    fn preamble_epilogue_padding_and_empty_data() {
        let raw = b"This is a preamble.\r\n--xyz \t\r\nContent-Disposition: form-data; name=a\r\n\r\n\r\n--xyz\r\nContent-Disposition: form-data; name=\"b\"; filename=\"\"\r\n\r\n\r\n--xyz--  \r\nepilogue --xyz\r\n";
        let parts = parse_default(raw, "xyz").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].name, parts[0].data), ("a", &b""[..]));
        assert_eq!(parts[1].filename, Some(""));
        assert_eq!(parts[1].data, b"");
        // A close delimiter with nothing after it, and no parts at all.
        assert_eq!(parse_default(b"--xyz--", "xyz").unwrap(), vec![]);
    }

    #[test]
    fn disposition_parameters() {
        let raw = body(
            "q",
            &[
                ("Content-Disposition: form-data; name=platform", b"1"),
                (
                    "CONTENT-DISPOSITION:Form-Data;NAME=\"x\";  filename=\"a\\\"b.tgz\"; filename*=UTF-8''a%22b.tgz",
                    b"2",
                ),
                ("Content-Disposition: form-data; name=\"platform\"; ;", b"3"),
                ("X-Other: ignored\r\nContent-Disposition: form-data; name=\"semi;colon\"", b"4"),
            ],
            "",
        );
        let parts = parse_default(&raw, "q").unwrap();
        assert_eq!(parts[0].name, "platform");
        assert_eq!(parts[1].name, "x");
        assert_eq!(parts[1].filename, Some("a\\\"b.tgz"));
        assert_eq!(parts[3].name, "semi;colon");
        // Duplicates are allowed; `find` returns the first.
        assert_eq!(find(&parts, "platform").unwrap().data, b"1");
    }

    #[test]
    fn malformed_bodies() {
        let ok = "Content-Disposition: form-data; name=\"a\"";
        let cases: &[(&[u8], &str)] = &[
            (b"", "no opening boundary"),
            (b"--xyzzy\r\n", "no opening boundary"),
            (b"--xyz\r\nContent-Disposition: form-data; name=a\r\n\r\ndata", "missing closing"),
            (b"--xyz\r\nContent-Disposition: form-data; name=a\r\n\r\ndata\r\n--xyz", "missing closing"),
            (b"--xyz\r\nContent-Disposition: form-data; name=a\r\n\r\ndata\n--xyz--", "missing closing"),
            (b"--xyz\r\nContent-Disposition: form-d", "missing closing"),
            (b"--xyz\r\nContent-Disposition: form-data; name=a\r\n--xyz--", "not terminated"),
            (b"--xyz\r\n\r\ndata\r\n--xyz--", "no Content-Disposition"),
            (b"--xyz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--xyz--", "without a name"),
            (b"--xyz\r\nContent-Disposition: form-data; filename=\"f\"\r\n\r\nx\r\n--xyz--", "without a name"),
            (b"--xyz\r\nContent-Disposition: attachment; name=a\r\n\r\nx\r\n--xyz--", "not form-data"),
            (b"--xyz\r\nContent-Disposition: form-data; name=\"a\r\n\r\nx\r\n--xyz--", "unterminated"),
            (b"--xyz\r\nContent-Disposition: form-data; name=a; name=b\r\n\r\nx\r\n--xyz--", "duplicate name"),
            (b"--xyz\r\nContent-Disposition: form-data; name=a\r\nContent-Disposition: form-data; name=b\r\n\r\nx\r\n--xyz--", "duplicate"),
            (b"--xyz\r\nContent-Disposition: form-data; name\r\n\r\nx\r\n--xyz--", "without '='"),
            (b"--xyz\r\nContent-Disposition: form-data; name=a b\r\n\r\nx\r\n--xyz--", "expected ';'"),
            (b"--xyz\r\nContent-Disposition: form-data; name=\xff\r\n\r\nx\r\n--xyz--", "not UTF-8"),
            (b"--xyz\r\nBad Header: x\r\n\r\nx\r\n--xyz--", "malformed header"),
        ];
        for (raw, expect) in cases {
            let e = parse_default(raw, "xyz").expect_err(expect);
            assert!(e.message.contains(expect), "{expect}: got {e}");
            assert!(!e.too_large, "{e}");
        }
        assert!(parse_default(&body("a", &[(ok, b"")], ""), "").is_err());
        assert!(parse_default(&body("a", &[(ok, b"")], ""), "a\r\n").is_err());
    }

    #[test]
    fn limits() {
        let field = "Content-Disposition: form-data; name=\"f\"";
        let limits = MultipartLimits { max_parts: 2, max_part_header_bytes: 64, max_headers_per_part: 2 };
        let two = body("b", &[(field, b"1"), (field, b"2")], "");
        assert_eq!(parse(&two, "b", &limits).unwrap().len(), 2);
        let three = body("b", &[(field, b"1"), (field, b"2"), (field, b"3")], "");
        let e = parse(&three, "b", &limits).unwrap_err();
        assert!(e.too_large && e.message.contains("more than 2 parts"), "{e}");

        let long = format!("{field}\r\nX-Pad: {}", "p".repeat(40));
        let e = parse(&body("b", &[(&long, b"1")], ""), "b", &limits).unwrap_err();
        assert!(e.too_large && e.message.contains("exceed 64 bytes"), "{e}");
        // A header block of exactly the limit (its blank line included) is fine.
        let exact = format!("{field}\r\nX: {}", "p".repeat(64 - 4 - field.len() - 5));
        assert_eq!(exact.len() + 4, 64);
        assert!(parse(&body("b", &[(&exact, b"1")], ""), "b", &limits).is_ok());

        let many = format!("{field}\r\nA: 1\r\nB: 2");
        let e = parse(&body("b", &[(&many, b"1")], ""), "b", &limits).unwrap_err();
        assert!(e.too_large && e.message.contains("more than 2 headers"), "{e}");
        assert_eq!(
            MultipartLimits::default(),
            MultipartLimits { max_parts: 32, max_part_header_bytes: 8192, max_headers_per_part: 16 }
        );
    }

    #[test]
    fn error_display() {
        let e = parse_default(b"", "x").unwrap_err();
        assert_eq!(e.to_string(), "multipart/form-data: no opening boundary found");
        let part = Part { name: "n", filename: None, content_type: None, data: b"\xc3" };
        assert!(part.text().unwrap_err().message.contains("\"n\""));
    }
}
