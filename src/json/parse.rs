//! The strict RFC 8259 reader: bytes → [`Value`], with a nesting limit and byte-offset errors.
//!
//! The reader is iterative (an explicit stack of open containers), so no input and no depth
//! limit can make it overflow the thread's stack.

use super::Value;
use std::borrow::Cow;
use std::fmt;

/// Nesting limit used by [`parse`]: far deeper than any real request body, far shallower than
/// what would make recursive drop or serialization of the result a concern.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Why and where a document was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// Byte offset into the input where the problem was found.
    pub offset: usize,
    pub message: &'static str,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.message, self.offset)
    }
}

impl std::error::Error for JsonError {}

/// Parses one JSON document with [`DEFAULT_MAX_DEPTH`].
pub fn parse(input: &[u8]) -> Result<Value, JsonError> {
    parse_with_depth(input, DEFAULT_MAX_DEPTH)
}

/// Parses one JSON document; more than `max_depth` nested arrays/objects is an error
/// (`max_depth` 0 admits only scalars).
pub fn parse_with_depth(input: &[u8], max_depth: usize) -> Result<Value, JsonError> {
    // Validating UTF-8 once up front lets the string reader slice `text` freely, and rejects
    // bad bytes wherever they are (inside strings or not).
    let text =
        std::str::from_utf8(input).map_err(|e| JsonError { offset: e.valid_up_to(), message: "invalid UTF-8" })?;
    Reader { text, bytes: input, pos: 0 }.document(max_depth)
}

/// A member value handed out by [`object_members`]: strings borrowed from the input when they hold
/// no escape, every other value parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Member<'a> {
    Str(Cow<'a, str>),
    Other(Value),
}

/// Reads a document that must be an object, handing each member to `each` in input order without
/// building the object. Accepts and refuses exactly what [`parse_with_depth`] does for objects, so
/// a caller may fall back to it for the wording of an error; any other document is an error here.
pub fn object_members<'a>(
    input: &'a [u8],
    max_depth: usize,
    mut each: impl FnMut(Cow<'a, str>, Member<'a>),
) -> Result<(), JsonError> {
    let text =
        std::str::from_utf8(input).map_err(|e| JsonError { offset: e.valid_up_to(), message: "invalid UTF-8" })?;
    let mut r = Reader { text, bytes: input, pos: 0 };
    r.skip_ws();
    if r.peek() != Some(b'{') {
        return r.err("expected an object");
    }
    if max_depth == 0 {
        return r.err("nesting too deep");
    }
    r.pos += 1;
    r.skip_ws();
    if r.peek() == Some(b'}') {
        r.pos += 1;
    } else {
        loop {
            if r.peek() != Some(b'"') {
                return r.err("expected a string key");
            }
            let key = r.string()?;
            r.skip_ws();
            r.expect(b':', "expected ':' after key")?;
            r.skip_ws();
            let value =
                if r.peek() == Some(b'"') { Member::Str(r.string()?) } else { Member::Other(r.value(max_depth - 1)?) };
            each(key, value);
            r.skip_ws();
            match r.peek() {
                Some(b',') => {
                    r.pos += 1;
                    r.skip_ws();
                }
                Some(b'}') => {
                    r.pos += 1;
                    break;
                }
                None => return r.err("unexpected end of input in object"),
                Some(_) => return r.err("expected ',' or '}'"),
            }
        }
    }
    r.skip_ws();
    if r.pos != r.bytes.len() {
        return r.err("trailing characters after the value");
    }
    Ok(())
}

/// An open container waiting for its next element.
enum Frame {
    Array(Vec<Value>),
    /// Members so far and the key of the member whose value is being read.
    Object(Vec<(String, Value)>, String),
}

struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err<T>(&self, message: &'static str) -> Result<T, JsonError> {
        Err(JsonError { offset: self.pos, message })
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8, message: &'static str) -> Result<(), JsonError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            self.err(message)
        }
    }

    fn document(mut self, max_depth: usize) -> Result<Value, JsonError> {
        let value = self.value(max_depth)?;
        if self.pos != self.bytes.len() {
            return self.err("trailing characters after the value");
        }
        Ok(value)
    }

    /// Reads one value and the whitespace after it.
    fn value(&mut self, max_depth: usize) -> Result<Value, JsonError> {
        let mut stack: Vec<Frame> = Vec::new();
        'value: loop {
            self.skip_ws();
            // Read one value; containers with content push a frame and go round again.
            let mut value = match self.peek() {
                Some(open @ (b'[' | b'{')) => {
                    if stack.len() >= max_depth {
                        return self.err("nesting too deep");
                    }
                    self.pos += 1;
                    self.skip_ws();
                    if open == b'[' {
                        if self.peek() == Some(b']') {
                            self.pos += 1;
                            Value::Array(Vec::new())
                        } else {
                            stack.push(Frame::Array(Vec::new()));
                            continue 'value;
                        }
                    } else if self.peek() == Some(b'}') {
                        self.pos += 1;
                        Value::Object(Vec::new())
                    } else {
                        let key = self.member_key()?;
                        stack.push(Frame::Object(Vec::new(), key));
                        continue 'value;
                    }
                }
                Some(b'"') => Value::String(self.string()?.into_owned()),
                Some(b'-' | b'0'..=b'9') => Value::Number(self.number()?),
                Some(b't') => self.literal("true", Value::Bool(true))?,
                Some(b'f') => self.literal("false", Value::Bool(false))?,
                Some(b'n') => self.literal("null", Value::Null)?,
                Some(_) => return self.err("expected a value"),
                None => return self.err("unexpected end of input"),
            };
            // Attach the finished value to its container, closing as many containers as end here.
            loop {
                self.skip_ws();
                match stack.last_mut() {
                    None => return Ok(value),
                    Some(Frame::Array(items)) => {
                        items.push(value);
                        match self.peek() {
                            Some(b',') => {
                                self.pos += 1;
                                continue 'value;
                            }
                            Some(b']') => self.pos += 1,
                            None => return self.err("unexpected end of input in array"),
                            Some(_) => return self.err("expected ',' or ']'"),
                        }
                    }
                    Some(Frame::Object(members, key)) => {
                        members.push((std::mem::take(key), value));
                        match self.peek() {
                            Some(b',') => {
                                self.pos += 1;
                                self.skip_ws();
                                *key = self.member_key()?;
                                continue 'value;
                            }
                            Some(b'}') => self.pos += 1,
                            None => return self.err("unexpected end of input in object"),
                            Some(_) => return self.err("expected ',' or '}'"),
                        }
                    }
                }
                value = match stack.pop() {
                    Some(Frame::Array(items)) => Value::Array(items),
                    Some(Frame::Object(members, _)) => Value::Object(members),
                    None => unreachable!("a frame was just inspected"),
                };
            }
        }
    }

    /// Reads `"key"` and the `:` after it (whitespace before the key already skipped).
    fn member_key(&mut self) -> Result<String, JsonError> {
        if self.peek() != Some(b'"') {
            return self.err("expected a string key");
        }
        let key = self.string()?.into_owned();
        self.skip_ws();
        self.expect(b':', "expected ':' after key")?;
        Ok(key)
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, JsonError> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            self.err("invalid literal")
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<String, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return self.err("leading zero in number");
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("expected a digit"),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return self.err("expected a digit after '.'");
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return self.err("expected a digit in exponent");
            }
        }
        Ok(self.text[start..self.pos].to_owned())
    }

    /// Reads a string starting at its opening quote: borrowed from the input unless it has escapes.
    fn string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        self.pos += 1;
        let mut out = String::new();
        let mut run_start = self.pos;
        let start = self.pos;
        let mut escaped = false;
        loop {
            let Some(b) = self.peek() else {
                return self.err("unterminated string");
            };
            match b {
                b'"' => {
                    let end = self.pos;
                    self.pos += 1;
                    if !escaped {
                        return Ok(Cow::Borrowed(&self.text[start..end]));
                    }
                    out.push_str(&self.text[run_start..end]);
                    return Ok(Cow::Owned(out));
                }
                b'\\' => {
                    escaped = true;
                    out.push_str(&self.text[run_start..self.pos]);
                    self.pos += 1;
                    self.escape(&mut out)?;
                    run_start = self.pos;
                }
                0x00..=0x1f => return self.err("unescaped control character in string"),
                // Multi-byte UTF-8 sequences never contain bytes below 0x80, so stepping byte by
                // byte keeps every run boundary on a char boundary.
                _ => self.pos += 1,
            }
        }
    }

    /// Decodes the escape after a backslash.
    fn escape(&mut self, out: &mut String) -> Result<(), JsonError> {
        let Some(b) = self.peek() else {
            return self.err("unterminated string");
        };
        let c = match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let escape_start = self.pos - 1;
                self.pos += 1;
                let unit = self.hex4()?;
                let code = match unit {
                    0xD800..=0xDBFF => {
                        if !self.bytes[self.pos..].starts_with(b"\\u") {
                            return self.lone_surrogate(escape_start);
                        }
                        self.pos += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return self.lone_surrogate(escape_start);
                        }
                        0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return self.lone_surrogate(escape_start),
                    _ => u32::from(unit),
                };
                // Surrogates were handled above, so every remaining code is a scalar value.
                match char::from_u32(code) {
                    Some(c) => out.push(c),
                    None => return self.lone_surrogate(escape_start),
                }
                return Ok(());
            }
            _ => return self.err("invalid escape"),
        };
        out.push(c);
        self.pos += 1;
        Ok(())
    }

    fn lone_surrogate<T>(&self, offset: usize) -> Result<T, JsonError> {
        // A Rust `String` cannot hold an unpaired surrogate, and silently replacing it would
        // change the caller's data.
        Err(JsonError { offset, message: "unpaired surrogate in \\u escape" })
    }

    fn hex4(&mut self) -> Result<u16, JsonError> {
        let mut unit: u16 = 0;
        for _ in 0..4 {
            let digit = match self.peek() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return self.err("expected four hex digits in \\u escape"),
            };
            unit = unit << 4 | u16::from(digit);
            self.pos += 1;
        }
        Ok(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejects(input: &str) -> JsonError {
        parse(input.as_bytes()).expect_err(input)
    }

    #[test]
    fn scalars_at_top_level() {
        assert_eq!(parse(b" null ").unwrap(), Value::Null);
        assert_eq!(parse(b"true").unwrap(), Value::Bool(true));
        assert_eq!(parse(b"\t\r\n-1.5e+3\n").unwrap(), Value::Number("-1.5e+3".into()));
        assert_eq!(parse(br#""x""#).unwrap(), Value::String("x".into()));
    }

    #[test]
    fn rejects_non_rfc_input() {
        for bad in [
            "",
            " ",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "-01",
            "+1",
            "1.",
            ".5",
            "1e",
            "1e+",
            "NaN",
            "Infinity",
            "-Infinity",
            "[1 2]",
            "{\"a\" 1}",
            "{a:1}",
            "'x'",
            "\"a\tb\"",
            "\"\\x\"",
            "\"\\u12\"",
            "nul",
            "truex",
            "1 2",
            "[",
            "{",
            "\"abc",
            "\u{feff}1",
            "\u{a0}1",
            "[1]]",
            "{\"a\":1}}",
            "\u{c}1",
        ] {
            rejects(bad);
        }
    }

    #[test]
    fn error_offset_and_display() {
        let e = rejects("[1, 2,]");
        assert_eq!(e.offset, 6);
        assert_eq!(e.to_string(), "expected a value at byte 6");
        let e = parse(b"[\"a\xff\"]").unwrap_err();
        assert_eq!((e.offset, e.message), (3, "invalid UTF-8"));
    }

    #[test]
    fn surrogates() {
        assert_eq!(parse(br#""\ud83d\ude00""#).unwrap(), Value::String("\u{1F600}".into()));
        for bad in [r#""\ud83d""#, r#""\ud83dx""#, r#""\ud83d\u0041""#, r#""\ude00""#, r#""\ud83d\ud83d""#] {
            assert_eq!(rejects(bad).message, "unpaired surrogate in \\u escape", "{bad}");
        }
        assert_eq!(rejects(r#""\ud83d\u00"#).message, "expected four hex digits in \\u escape");
    }

    #[test]
    fn depth_limit() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse(nested(64).as_bytes()).is_ok());
        let e = parse(nested(65).as_bytes()).unwrap_err();
        assert_eq!((e.offset, e.message), (64, "nesting too deep"));
        assert!(parse_with_depth(b"1", 0).is_ok());
        assert!(parse_with_depth(b"[]", 0).is_err());
        assert!(parse_with_depth(br#"{"a":{"b":[]}}"#, 3).is_ok());
        assert!(parse_with_depth(br#"{"a":{"b":[]}}"#, 2).is_err());
        // A huge hostile input fails fast and without touching the stack.
        let deep = "[{\"a\":".repeat(200_000);
        assert_eq!(rejects(&deep).message, "nesting too deep");
        assert!(parse_with_depth(deep.as_bytes(), usize::MAX).is_err());
    }

    #[test]
    fn duplicates_kept_in_order() {
        let v = parse(br#"{"a":1,"a":{"a":2}}"#).unwrap();
        let members = v.as_object().unwrap();
        assert_eq!(members[0].0, "a");
        assert_eq!(members[1].1.get("a"), Some(&Value::Number("2".into())));
    }

    #[test]
    fn escapes_decoded() {
        let v = parse(br#""\"\\\/\b\f\n\r\t\u0041\u00e9\u20AC""#).unwrap();
        assert_eq!(v.as_str(), Some("\"\\/\u{8}\u{c}\n\r\tA\u{e9}\u{20ac}"));
        let v = parse("\"plain \u{e9}\u{1F600} text\"".as_bytes()).unwrap();
        assert_eq!(v.as_str(), Some("plain \u{e9}\u{1F600} text"));
    }

    #[test]
    fn object_members_borrow_plain_strings_and_parse_the_rest() {
        let mut seen = Vec::new();
        object_members(br#" {"a":"x","b\u0063":"y\n","c":[1,{"d":null}]} "#, 3, |k, v| seen.push((k, v))).unwrap();
        assert!(matches!(&seen[0], (Cow::Borrowed("a"), Member::Str(Cow::Borrowed("x")))), "{seen:?}");
        assert!(matches!(&seen[1], (Cow::Owned(k), Member::Str(Cow::Owned(v))) if k == "bc" && v == "y\n"), "{seen:?}");
        assert_eq!(seen[2].1, Member::Other(parse(br#"[1,{"d":null}]"#).unwrap()));
        // The depth counts the object itself, as parse_with_depth does.
        assert!(object_members(br#"{"c":[1,{"d":null}]}"#, 2, |_, _| {}).is_err());
        assert!(parse_with_depth(br#"{"c":[1,{"d":null}]}"#, 2).is_err());
        for bad in [&b"[]"[..], b"{} x", b"{\"a\":1,}", b"", b"{\"a\" 1}", b"\"s\""] {
            assert!(object_members(bad, 8, |_, _| {}).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
