//! The JSON writer: string escaping and streaming object/array builders that append to a `Vec<u8>`.
//!
//! The builders close their container when dropped, so an early `?` return or a forgotten
//! `finish` still leaves balanced brackets; `finish` exists to make the end explicit at call sites.

use super::Value;

/// What each byte needs: 0 = copy, 1 = short escape or `\u00XX`, 2 = maybe U+2028/U+2029.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = 1;
        i += 1;
    }
    table[b'"' as usize] = 1;
    table[b'\\' as usize] = 1;
    // U+2028/U+2029 are E2 80 A8/A9; JavaScript before ES2019 treats them as line breaks.
    table[0xE2] = 2;
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `s` as a quoted JSON string.
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let class = ESCAPE[b as usize];
        if class == 0 {
            i += 1;
            continue;
        }
        if class == 2 {
            // `s` is valid UTF-8, so an E2 lead byte is always followed by two more bytes.
            if bytes.get(i + 1) == Some(&0x80) && matches!(bytes.get(i + 2), Some(0xA8 | 0xA9)) {
                out.extend_from_slice(&bytes[run_start..i]);
                out.extend_from_slice(if bytes[i + 2] == 0xA8 { b"\\u2028" } else { b"\\u2029" });
                i += 3;
                run_start = i;
            } else {
                i += 1;
            }
            continue;
        }
        out.extend_from_slice(&bytes[run_start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]),
        }
        i += 1;
        run_start = i;
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

fn write_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    write_u64(out, n.unsigned_abs());
}

/// Finite values get the shortest text that reads back to the same `f64`; NaN and infinities
/// have no JSON form and become `null`.
fn write_f64(out: &mut Vec<u8>, x: f64) {
    use std::io::Write as _;
    if !x.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    // Rust's `{}` and `{:e}` both print the shortest round-tripping digits; plain notation is
    // used where it stays short (the same window JavaScript uses), exponent form elsewhere so
    // 1e300 does not become 301 characters.
    let magnitude = x.abs();
    let written =
        if magnitude == 0.0 || (1e-7..1e21).contains(&magnitude) { write!(out, "{x}") } else { write!(out, "{x:e}") };
    // Writing into a Vec cannot fail.
    debug_assert!(written.is_ok());
}

/// Builds a JSON object into `out`. Writes `{` on creation and `}` on [`finish`](Self::finish)
/// or drop. Keys are not checked for duplicates.
pub struct ObjectWriter<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> ObjectWriter<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        ObjectWriter { out, first: true }
    }

    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_string(self.out, key);
        self.out.push(b':');
        self.out
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        write_string(self.key(key), value);
        self
    }

    /// `None` is written as `null`.
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(s) => self.str(key, s),
            None => self.null(key),
        }
    }

    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        write_u64(self.key(key), value);
        self
    }

    pub fn i64(&mut self, key: &str, value: i64) -> &mut Self {
        write_i64(self.key(key), value);
        self
    }

    /// Non-finite values are written as `null`.
    pub fn f64(&mut self, key: &str, value: f64) -> &mut Self {
        write_f64(self.key(key), value);
        self
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        let text: &[u8] = if value { b"true" } else { b"false" };
        self.key(key).extend_from_slice(text);
        self
    }

    pub fn null(&mut self, key: &str) -> &mut Self {
        self.key(key).extend_from_slice(b"null");
        self
    }

    /// `json` must already be one valid JSON value (e.g. a `json` column from PostgreSQL); it
    /// is copied unchecked.
    pub fn raw(&mut self, key: &str, json: &str) -> &mut Self {
        self.key(key).extend_from_slice(json.as_bytes());
        self
    }

    pub fn value(&mut self, key: &str, value: &Value) -> &mut Self {
        value.write_to(self.key(key));
        self
    }

    /// Starts a nested object; it is closed when the returned writer is finished or dropped.
    pub fn object(&mut self, key: &str) -> ObjectWriter<'_> {
        ObjectWriter::new(self.key(key))
    }

    /// Starts a nested array; it is closed when the returned writer is finished or dropped.
    pub fn array(&mut self, key: &str) -> ArrayWriter<'_> {
        ArrayWriter::new(self.key(key))
    }

    /// Writes the closing `}` (by dropping the writer).
    pub fn finish(self) {}
}

impl Drop for ObjectWriter<'_> {
    fn drop(&mut self) {
        self.out.push(b'}');
    }
}

/// Builds a JSON array into `out`. Writes `[` on creation and `]` on [`finish`](Self::finish)
/// or drop.
pub struct ArrayWriter<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> ArrayWriter<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'[');
        ArrayWriter { out, first: true }
    }

    fn item(&mut self) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out
    }

    pub fn str(&mut self, value: &str) -> &mut Self {
        write_string(self.item(), value);
        self
    }

    pub fn u64(&mut self, value: u64) -> &mut Self {
        write_u64(self.item(), value);
        self
    }

    pub fn i64(&mut self, value: i64) -> &mut Self {
        write_i64(self.item(), value);
        self
    }

    /// Non-finite values are written as `null`.
    pub fn f64(&mut self, value: f64) -> &mut Self {
        write_f64(self.item(), value);
        self
    }

    pub fn bool(&mut self, value: bool) -> &mut Self {
        let text: &[u8] = if value { b"true" } else { b"false" };
        self.item().extend_from_slice(text);
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.item().extend_from_slice(b"null");
        self
    }

    /// `json` must already be one valid JSON value; it is copied unchecked.
    pub fn raw(&mut self, json: &str) -> &mut Self {
        self.item().extend_from_slice(json.as_bytes());
        self
    }

    pub fn value(&mut self, value: &Value) -> &mut Self {
        value.write_to(self.item());
        self
    }

    /// Starts a nested object; it is closed when the returned writer is finished or dropped.
    pub fn object(&mut self) -> ObjectWriter<'_> {
        ObjectWriter::new(self.item())
    }

    /// Starts a nested array; it is closed when the returned writer is finished or dropped.
    pub fn array(&mut self) -> ArrayWriter<'_> {
        ArrayWriter::new(self.item())
    }

    /// Writes the closing `]` (by dropping the writer).
    pub fn finish(self) {}
}

impl Drop for ArrayWriter<'_> {
    fn drop(&mut self) {
        self.out.push(b']');
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    fn quoted(s: &str) -> String {
        let mut out = Vec::new();
        write_string(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escaping() {
        assert_eq!(quoted(""), r#""""#);
        assert_eq!(quoted("plain"), r#""plain""#);
        assert_eq!(quoted("a\"b\\c/d"), r#""a\"b\\c/d""#);
        assert_eq!(quoted("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(quoted("\u{0}\u{1f}\u{7f}"), "\"\\u0000\\u001f\u{7f}\"");
        assert_eq!(quoted("x\u{2028}y\u{2029}z"), r#""x\u2028y\u2029z""#);
        // Other characters with an E2 lead byte are copied as they are.
        assert_eq!(quoted("\u{20ac}\u{2027}\u{202a}\u{2100}"), "\"\u{20ac}\u{2027}\u{202a}\u{2100}\"");
        assert_eq!(quoted("\u{e9}\u{1F600}"), "\"\u{e9}\u{1F600}\"");
    }

    #[test]
    fn escaping_round_trips_every_short_string() {
        // All strings of one char from a set covering every escape class, in all pairs.
        let chars: Vec<char> = (0u32..0x80)
            .filter_map(char::from_u32)
            .chain(['\u{e9}', '\u{2027}', '\u{2028}', '\u{2029}', '\u{20ac}', '\u{ffff}', '\u{10ffff}'])
            .collect();
        for &a in &chars {
            for &b in &chars {
                let s: String = [a, b].iter().collect();
                let text = quoted(&s);
                assert_eq!(parse(text.as_bytes()).unwrap().as_str(), Some(s.as_str()), "{text}");
            }
        }
    }

    #[test]
    fn builders() {
        let mut out = Vec::new();
        {
            let mut o = ObjectWriter::new(&mut out);
            o.str("s", "a\"b").opt_str("none", None).opt_str("some", Some("x"));
            o.u64("u", u64::MAX).i64("i", i64::MIN).i64("z", 0);
            o.bool("t", true).bool("f", false).null("n");
            o.raw("r", "[1,2]");
            o.value("v", &Value::Number("1.50".into()));
            {
                let mut inner = o.object("o");
                inner.u64("x", 1);
                let mut arr = inner.array("a");
                arr.str("q").u64(7).i64(-7).bool(true).null().raw("{}");
                arr.object().str("k", "v");
                arr.array().u64(1).u64(2);
                arr.value(&Value::Null).f64(0.5);
                arr.finish();
                inner.finish();
            }
            o.array("empty").finish();
            o.object("e");
            o.finish();
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            r#"{"s":"a\"b","none":null,"some":"x","u":18446744073709551615,"i":-9223372036854775808,"z":0,"t":true,"f":false,"n":null,"r":[1,2],"v":1.50,"o":{"x":1,"a":["q",7,-7,true,null,{},{"k":"v"},[1,2],null,0.5]},"empty":[],"e":{}}"#
        );
        assert!(parse(text.as_bytes()).is_ok());
    }

    #[test]
    fn floats() {
        let f = |x: f64| {
            let mut out = Vec::new();
            ObjectWriter::new(&mut out).f64("x", x);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(f(0.1), r#"{"x":0.1}"#);
        assert_eq!(f(1.0), r#"{"x":1}"#);
        assert_eq!(f(-0.0), r#"{"x":-0}"#);
        assert_eq!(f(1e300), r#"{"x":1e300}"#);
        assert_eq!(f(1.5e-9), r#"{"x":1.5e-9}"#);
        assert_eq!(f(123456789.125), r#"{"x":123456789.125}"#);
        assert_eq!(f(f64::NAN), r#"{"x":null}"#);
        assert_eq!(f(f64::NEG_INFINITY), r#"{"x":null}"#);
        for x in [f64::MAX, f64::MIN_POSITIVE, 5e-324, 1e21, 1e-7, 2.5e20, -3.75] {
            let text = f(x);
            let v = parse(text.as_bytes()).unwrap();
            let Some(Value::Number(n)) = v.get("x") else { panic!("{text}") };
            assert_eq!(n.parse::<f64>().unwrap(), x, "{text}");
        }
    }
}
