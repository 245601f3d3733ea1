//! Our JSON: a strict RFC 8259 reader into [`Value`] (numbers kept as source text) and a writer.
//!
//! Numbers stay as their source text so that values such as `numeric` columns or 64-bit ids pass
//! through the gateway without ever being rounded by a float conversion.

mod parse;
mod write;

pub use parse::{DEFAULT_MAX_DEPTH, JsonError, Member, object_members, parse, parse_with_depth};
pub use write::{ArrayWriter, ObjectWriter, write_string};

/// A parsed JSON document.
///
/// Deeply nested values are dropped, compared and written recursively; values produced by
/// [`parse`] are bounded by its depth limit, so keep hand-built values similarly shallow.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// The number exactly as it appeared in the source (already validated by the reader).
    Number(String),
    String(String),
    Array(Vec<Value>),
    /// Members in input order; duplicate keys are kept (see [`Value::get`]).
    Object(Vec<(String, Value)>),
}

impl Value {
    /// Looks a key up in an object. With duplicate keys the last one wins, matching what
    /// PostgreSQL's `jsonb` and most JavaScript engines do, so we agree with the database.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Object(members) => Some(members),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The JSON type name, for error messages shown to API clients.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// Compact serialization.
    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        self.write_to(&mut out);
        // Everything written comes from `str`s and ASCII punctuation, so this cannot fail; the
        // lossy fallback only keeps the function panic-free.
        String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// Appends the compact serialization to `out`. A [`Value::Number`] is written verbatim: a
    /// hand-built one must already hold valid JSON number text.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(true) => out.extend_from_slice(b"true"),
            Value::Bool(false) => out.extend_from_slice(b"false"),
            Value::Number(n) => out.extend_from_slice(n.as_bytes()),
            Value::String(s) => write_string(out, s),
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write_to(out);
                }
                out.push(b']');
            }
            Value::Object(members) => {
                out.push(b'{');
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_string(out, key);
                    out.push(b':');
                    value.write_to(out);
                }
                out.push(b'}');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_last_duplicate_wins() {
        let v = parse(br#"{"a":1,"b":2,"a":3}"#).unwrap();
        assert_eq!(v.get("a"), Some(&Value::Number("3".into())));
        assert_eq!(v.as_object().unwrap().len(), 3);
        assert_eq!(v.get("zz"), None);
        assert_eq!(v.to_json(), r#"{"a":1,"b":2,"a":3}"#);
    }

    #[test]
    fn accessors_and_type_names() {
        let v = parse(br#"[null,true,1.5,"s",[],{}]"#).unwrap();
        let items = v.as_array().unwrap();
        let names: Vec<_> = items.iter().map(Value::type_name).collect();
        assert_eq!(names, ["null", "boolean", "number", "string", "array", "object"]);
        assert!(items[0].is_null());
        assert_eq!(items[1].as_bool(), Some(true));
        assert_eq!(items[3].as_str(), Some("s"));
        assert_eq!(items[3].as_bool(), None);
        assert_eq!(items[5].as_object().map(<[_]>::len), Some(0));
        assert_eq!(items[4].get("x"), None);
    }

    #[test]
    fn numbers_kept_exactly() {
        let text = r#"[12345678901234567890123.000100,-0,1E+400,-0.0e-0]"#;
        let v = parse(text.as_bytes()).unwrap();
        assert_eq!(v.as_array().unwrap()[0], Value::Number("12345678901234567890123.000100".into()));
        assert_eq!(v.to_json(), text);
    }

    #[test]
    fn write_then_parse_round_trip() {
        let text = "{\"k\\u0000\":\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u001f\\u2028\\u2029 \u{e9}\u{1F600}\",\
                    \"n\":[1,2,{\"x\":null}],\"t\":true,\"f\":false}";
        let v = parse(text.as_bytes()).unwrap();
        let written = v.to_json();
        assert_eq!(parse(written.as_bytes()).unwrap(), v);
        // The writer's own choice of escapes: `/` is not escaped, U+2028/9 are.
        assert!(written.contains(r#"c/d"#));
        assert!(written.contains(r#"\u2028\u2029"#));
    }
}
