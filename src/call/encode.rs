//! Owns parameter encoding: a JSON argument + the parameter's type OID → PostgreSQL text-format bytes.
//!
//! Parameters always travel as text so that PostgreSQL's own input functions do the validation; this
//! module only shapes JSON into the literal syntax those functions expect and rejects JSON kinds that
//! cannot mean anything for the type. Array elements and record fields are always double-quoted,
//! which is correct for every element type and sidesteps the rules for when quoting is required.
//!
//! json/jsonb arrays: a nested JSON array inside an array argument is a further dimension, except
//! when the element type is json/jsonb, where it is one element's value (so jsonb[] is 1-D only).

use crate::call::types::{self, MAX_DEPTH, TypeKind, TypeRegistry};
use crate::json::Value;

/// Why one argument could not be encoded; the caller adds which argument it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    pub message: String,
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParamError {}

fn err<T>(message: String) -> Result<T, ParamError> {
    Err(ParamError { message })
}

#[derive(Clone, Copy)]
enum PClass<'a> {
    Bool,
    Int,
    /// float4, float8, numeric: the number's text exactly as written.
    Decimal,
    Json,
    /// Strings as is, anything else as its JSON text.
    TextLike,
    /// Known types with their own syntax (uuid, dates, network, ranges…): strings and numbers only.
    Strict,
    Array {
        elem: u32,
    },
    Composite {
        name: &'a str,
        fields: &'a [(String, u32)],
    },
}

fn classify(oid: u32, types: &TypeRegistry) -> PClass<'_> {
    let mut oid = oid;
    for _ in 0..MAX_DEPTH {
        let class = match oid {
            types::BOOL => PClass::Bool,
            types::INT2 | types::INT4 | types::INT8 | types::OID => PClass::Int,
            types::FLOAT4 | types::FLOAT8 | types::NUMERIC => PClass::Decimal,
            types::JSON | types::JSONB => PClass::Json,
            types::TEXT | types::VARCHAR | types::BPCHAR | types::NAME | types::CHAR | types::UNKNOWN => {
                PClass::TextLike
            }
            types::BYTEA
            | types::XML
            | types::UUID
            | types::DATE
            | types::TIME
            | types::TIMETZ
            | types::TIMESTAMP
            | types::TIMESTAMPTZ
            | types::INTERVAL
            | types::INET
            | types::CIDR
            | types::MACADDR
            | types::MONEY
            | types::BIT
            | types::VARBIT
            | types::RECORD
            | types::VOID => PClass::Strict,
            _ => match types.get(oid) {
                Some(info) => match &info.kind {
                    TypeKind::Domain { base } => {
                        oid = *base;
                        continue;
                    }
                    TypeKind::Array { elem } => PClass::Array { elem: *elem },
                    TypeKind::Composite { fields } => PClass::Composite { name: &info.name, fields },
                    TypeKind::Range | TypeKind::Other => PClass::Strict,
                    TypeKind::Scalar | TypeKind::Enum => PClass::TextLike,
                },
                None => PClass::TextLike,
            },
        };
        return class;
    }
    PClass::TextLike
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Encodes one argument in text format into `out`. `Ok(true)` means SQL NULL (nothing written).
pub fn encode_param(value: &Value, oid: u32, types: &TypeRegistry, out: &mut Vec<u8>) -> Result<bool, ParamError> {
    if matches!(value, Value::Null) {
        return Ok(true);
    }
    encode_non_null(value, oid, types, out, 0)?;
    Ok(false)
}

fn push_str(s: &str, out: &mut Vec<u8>) -> Result<(), ParamError> {
    if s.contains('\0') {
        return err("string contains a NUL character (\\u0000), which PostgreSQL text cannot hold".into());
    }
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn encode_non_null(
    value: &Value,
    oid: u32,
    types: &TypeRegistry,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), ParamError> {
    if depth > MAX_DEPTH {
        return err("value is nested too deeply".into());
    }
    match (classify(oid, types), value) {
        (_, Value::Null) => return err("null is not allowed here".into()),
        (PClass::Json, v) => v.write_to(out),
        (PClass::Array { elem }, Value::Array(items)) => encode_array(items, elem, types, out, depth)?,
        (PClass::Composite { name, fields }, Value::Object(pairs)) => {
            encode_record(name, fields, pairs, types, out, depth)?
        }
        // A string is the type's own literal syntax, whatever the type: PostgreSQL validates it.
        (_, Value::String(s)) => push_str(s, out)?,
        (PClass::Bool, Value::Bool(b)) => out.push(if *b { b't' } else { b'f' }),
        (PClass::Int, Value::Number(n)) => {
            if n.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
                return err(format!("expected an integer, got {n}"));
            }
            out.extend_from_slice(n.as_bytes());
        }
        (PClass::Decimal | PClass::Strict | PClass::TextLike, Value::Number(n)) => out.extend_from_slice(n.as_bytes()),
        (PClass::TextLike, Value::Bool(b)) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        (PClass::TextLike, v @ (Value::Array(_) | Value::Object(_))) => v.write_to(out),
        (PClass::Bool, v) => return err(format!("expected a boolean, got {}", kind_name(v))),
        (PClass::Int, v) => return err(format!("expected an integer, got {}", kind_name(v))),
        (PClass::Decimal, v) => return err(format!("expected a number, got {}", kind_name(v))),
        (PClass::Array { .. }, v) => {
            return err(format!("expected an array, got {}", kind_name(v)));
        }
        (PClass::Composite { .. }, v) => {
            return err(format!("expected an object, got {}", kind_name(v)));
        }
        (PClass::Strict, v) => return err(format!("expected a string, got {}", kind_name(v))),
    }
    Ok(())
}

/// Appends `s` double-quoted with `"` and `\` backslash-escaped: valid inside both array and
/// record literals.
fn push_quoted(s: &[u8], out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    for &b in s {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

fn encode_array(
    items: &[Value],
    elem: u32,
    types: &TypeRegistry,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), ParamError> {
    let elem_is_json = matches!(classify(elem, types), PClass::Json);
    let delim = array_delimiter(elem, types);
    let mut scratch = Vec::new();
    out.push(b'{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(delim);
        }
        match item {
            Value::Null => out.extend_from_slice(b"NULL"),
            Value::Array(sub) if !elem_is_json => {
                if depth >= MAX_DEPTH {
                    return err("array is nested too deeply".into());
                }
                encode_array(sub, elem, types, out, depth + 1)?;
            }
            v => {
                scratch.clear();
                encode_non_null(v, elem, types, &mut scratch, depth + 1)
                    .map_err(|e| ParamError { message: format!("array element {}: {}", i + 1, e.message) })?;
                push_quoted(&scratch, out);
            }
        }
    }
    out.push(b'}');
    Ok(())
}

/// The element separator PostgreSQL's array input expects: the element type's `typdelim`, which
/// is `;` for box (its text form contains commas) and `,` for every other builtin. Domains
/// inherit their base type's delimiter.
fn array_delimiter(elem: u32, types: &TypeRegistry) -> u8 {
    let mut oid = elem;
    for _ in 0..MAX_DEPTH {
        match types.get(oid).map(|t| &t.kind) {
            Some(TypeKind::Domain { base }) => oid = *base,
            _ => break,
        }
    }
    if oid == types::BOX { b';' } else { b',' }
}

fn encode_record(
    type_name: &str,
    fields: &[(String, u32)],
    pairs: &[(String, Value)],
    types: &TypeRegistry,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), ParamError> {
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !fields.iter().any(|(f, _)| f == k)) {
        return err(format!("unknown field \"{k}\" for type {type_name}"));
    }
    let mut scratch = Vec::new();
    out.push(b'(');
    for (i, (fname, ftype)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // The last occurrence wins, as in most JSON consumers.
        let value = pairs.iter().rev().find(|(k, _)| k == fname).map(|(_, v)| v);
        match value {
            None | Some(Value::Null) => {}
            Some(v) => {
                scratch.clear();
                encode_non_null(v, *ftype, types, &mut scratch, depth + 1)
                    .map_err(|e| ParamError { message: format!("field \"{fname}\": {}", e.message) })?;
                push_quoted(&scratch, out);
            }
        }
    }
    out.push(b')');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::types::test_registry;

    const MOOD: u32 = 16385;
    const INNER: u32 = 16391;
    const OUTER: u32 = 16394;
    const OUTER_ARR: u32 = 16393;
    const POSINT: u32 = 16396;
    const TAGARR: u32 = 16399;
    const DROPT: u32 = 16409;

    /// Found by the `call_encode` fuzz property: box[] elements were joined with `,`, but box's
    /// array delimiter is `;`, so PostgreSQL rejected any box[] argument with two or more boxes.
    #[test]
    fn box_array_uses_semicolon_delimiter() {
        let reg = test_registry();
        let v = Value::Array(vec![s("(1,2),(3,4)"), s("(5,6),(7,8)"), Value::Null]);
        let mut out = Vec::new();
        assert_eq!(encode_param(&v, 1020, &reg, &mut out), Ok(false));
        assert_eq!(out, br#"{"(1,2),(3,4)";"(5,6),(7,8)";NULL}"#);
        let v = Value::Array(vec![Value::Array(vec![s("(1,1),(0,0)")]), Value::Array(vec![s("(2,2),(0,0)")])]);
        out.clear();
        assert_eq!(encode_param(&v, 1020, &reg, &mut out), Ok(false));
        assert_eq!(out, br#"{{"(1,1),(0,0)"};{"(2,2),(0,0)"}}"#);
    }

    fn n(s: &str) -> Value {
        Value::Number(s.into())
    }
    fn s(s: &str) -> Value {
        Value::String(s.into())
    }
    fn a(v: Vec<Value>) -> Value {
        Value::Array(v)
    }
    fn o(v: Vec<(&str, Value)>) -> Value {
        Value::Object(v.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    fn enc(v: &Value, oid: u32) -> Result<String, String> {
        let mut out = Vec::new();
        match encode_param(v, oid, &test_registry(), &mut out) {
            Ok(true) => {
                assert!(out.is_empty());
                Ok("<NULL>".into())
            }
            Ok(false) => Ok(String::from_utf8(out).unwrap()),
            Err(e) => Err(e.message),
        }
    }

    #[test]
    fn null_is_sql_null_for_every_type() {
        for oid in [types::INT4, types::TEXT, types::JSONB, 1009, OUTER, POSINT, types::UUID] {
            assert_eq!(enc(&Value::Null, oid).unwrap(), "<NULL>");
        }
    }

    #[test]
    fn booleans() {
        assert_eq!(enc(&Value::Bool(true), types::BOOL).unwrap(), "t");
        assert_eq!(enc(&Value::Bool(false), types::BOOL).unwrap(), "f");
        assert_eq!(enc(&s("yes"), types::BOOL).unwrap(), "yes");
        assert_eq!(enc(&n("1"), types::BOOL).unwrap_err(), "expected a boolean, got a number");
    }

    #[test]
    fn integers() {
        assert_eq!(enc(&n("9223372036854775807"), types::INT8).unwrap(), "9223372036854775807");
        assert_eq!(enc(&n("-5"), types::INT2).unwrap(), "-5");
        assert_eq!(enc(&n("4294967295"), types::OID).unwrap(), "4294967295");
        assert_eq!(enc(&n("1.5"), types::INT4).unwrap_err(), "expected an integer, got 1.5");
        assert_eq!(enc(&n("1e3"), types::INT8).unwrap_err(), "expected an integer, got 1e3");
        assert_eq!(enc(&s("42"), types::INT4).unwrap(), "42");
        assert_eq!(enc(&Value::Bool(true), types::INT4).unwrap_err(), "expected an integer, got a boolean");
        assert_eq!(enc(&a(vec![]), types::INT4).unwrap_err(), "expected an integer, got an array");
        assert_eq!(enc(&o(vec![]), types::INT4).unwrap_err(), "expected an integer, got an object");
        // Domains encode as their base type.
        assert_eq!(enc(&n("5"), POSINT).unwrap(), "5");
        assert_eq!(enc(&n("5.5"), POSINT).unwrap_err(), "expected an integer, got 5.5");
    }

    #[test]
    fn decimals_keep_the_text_as_written() {
        let big = "123456789012345678901234567890.123456789";
        assert_eq!(enc(&n(big), types::NUMERIC).unwrap(), big);
        assert_eq!(enc(&n("1E-400"), types::FLOAT8).unwrap(), "1E-400");
        assert_eq!(enc(&n("0.1"), types::FLOAT4).unwrap(), "0.1");
        assert_eq!(enc(&s("NaN"), types::FLOAT8).unwrap(), "NaN");
        assert_eq!(enc(&Value::Bool(false), types::NUMERIC).unwrap_err(), "expected a number, got a boolean");
    }

    #[test]
    fn text_like() {
        assert_eq!(enc(&s("héllo, \"world\""), types::TEXT).unwrap(), "héllo, \"world\"");
        assert_eq!(enc(&s(""), types::VARCHAR).unwrap(), "");
        assert_eq!(enc(&n("12.50"), types::TEXT).unwrap(), "12.50");
        assert_eq!(enc(&Value::Bool(true), types::BPCHAR).unwrap(), "true");
        assert_eq!(enc(&a(vec![n("1"), s("a")]), types::TEXT).unwrap(), r#"[1,"a"]"#);
        assert_eq!(enc(&o(vec![("k", Value::Null)]), types::UNKNOWN).unwrap(), r#"{"k":null}"#);
        assert_eq!(enc(&s("sad ok"), MOOD).unwrap(), "sad ok");
        assert_eq!(enc(&s("x"), types::NAME).unwrap(), "x");
        // An extension's base type (unknown to the registry) is treated as text.
        assert_eq!(enc(&Value::Bool(false), 99999).unwrap(), "false");
    }

    #[test]
    fn json_and_jsonb() {
        assert_eq!(enc(&s("a"), types::JSON).unwrap(), r#""a""#);
        assert_eq!(enc(&n("1.50"), types::JSONB).unwrap(), "1.50");
        assert_eq!(enc(&Value::Bool(true), types::JSONB).unwrap(), "true");
        assert_eq!(
            enc(&o(vec![("a", a(vec![n("1"), Value::Null, s("x\"\u{1}")]))]), types::JSONB).unwrap(),
            r#"{"a":[1,null,"x\"\u0001"]}"#
        );
        // NUL is fine inside JSON text: it is escaped there.
        assert_eq!(enc(&s("a\0"), types::JSON).unwrap(), r#""a\u0000""#);
    }

    #[test]
    fn strict_types() {
        let u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        assert_eq!(enc(&s(u), types::UUID).unwrap(), u);
        assert_eq!(enc(&s("2026-11-27T18:34:44+05:30"), types::TIMESTAMPTZ).unwrap(), "2026-11-27T18:34:44+05:30");
        assert_eq!(enc(&s("1 day"), types::INTERVAL).unwrap(), "1 day");
        assert_eq!(enc(&s("[1,5)"), 3904).unwrap(), "[1,5)");
        assert_eq!(enc(&s(r"\xdeadbeef"), types::BYTEA).unwrap(), r"\xdeadbeef");
        assert_eq!(enc(&n("12.5"), types::MONEY).unwrap(), "12.5");
        assert_eq!(enc(&Value::Bool(true), types::UUID).unwrap_err(), "expected a string, got a boolean");
        assert_eq!(enc(&a(vec![]), types::DATE).unwrap_err(), "expected a string, got an array");
        assert_eq!(enc(&o(vec![]), 3904).unwrap_err(), "expected a string, got an object");
    }

    #[test]
    fn nul_bytes_rejected() {
        let e = enc(&s("a\0b"), types::TEXT).unwrap_err();
        assert!(e.contains("NUL"), "{e}");
        assert!(enc(&s("\0"), types::UUID).is_err());
        let e = enc(&a(vec![s("ok"), s("x\0")]), 1009).unwrap_err();
        assert!(e.starts_with("array element 2: "), "{e}");
        let e = enc(&o(vec![("y", s("\0"))]), INNER).unwrap_err();
        assert!(e.starts_with("field \"y\": "), "{e}");
    }

    /// Literal checked on PostgreSQL 15 to equal
    /// `ARRAY[['a,b','{'],['"','\'],[NULL,'NULL'],['',' sp ']]`.
    pub(crate) const ARR2D_LITERAL: &str = r#"{{"a,b","{"},{"\"","\\"},{NULL,"NULL"},{""," sp "}}"#;

    #[test]
    fn arrays() {
        let v = a(vec![
            a(vec![s("a,b"), s("{")]),
            a(vec![s("\""), s("\\")]),
            a(vec![Value::Null, s("NULL")]),
            a(vec![s(""), s(" sp ")]),
        ]);
        assert_eq!(enc(&v, 1009).unwrap(), ARR2D_LITERAL);
        assert_eq!(enc(&v, TAGARR).unwrap(), ARR2D_LITERAL);
        assert_eq!(enc(&a(vec![n("1"), Value::Null, n("-3")]), 1007).unwrap(), r#"{"1",NULL,"-3"}"#);
        assert_eq!(enc(&a(vec![]), 1007).unwrap(), "{}");
        assert_eq!(enc(&a(vec![n("1"), n("1.5")]), 1016).unwrap_err(), "array element 2: expected an integer, got 1.5");
        assert_eq!(enc(&a(vec![Value::Bool(true), s("f")]), 1000).unwrap(), r#"{"t","f"}"#);
        assert_eq!(enc(&a(vec![n("1.10"), s("NaN")]), 1231).unwrap(), r#"{"1.10","NaN"}"#);
        assert_eq!(enc(&a(vec![s("happy"), s("sad ok")]), 16384).unwrap(), r#"{"happy","sad ok"}"#);
        // A string is the array literal itself.
        assert_eq!(enc(&s("{1,2}"), 1007).unwrap(), "{1,2}");
        assert_eq!(enc(&n("1"), 1007).unwrap_err(), "expected an array, got a number");
        // json/jsonb elements: nested arrays are element values, strings become JSON strings.
        assert_eq!(
            enc(&a(vec![o(vec![("a", n("1"))]), a(vec![n("1"), n("2")]), s("s"), Value::Null]), 3807).unwrap(),
            r#"{"{\"a\":1}","[1,2]","\"s\"",NULL}"#
        );
        // Text elements from non-strings use their JSON text.
        assert_eq!(enc(&a(vec![n("1"), o(vec![])]), 1009).unwrap(), r#"{"1","{}"}"#);
    }

    /// Literal checked on PostgreSQL 15 to equal
    /// `row(7, ARRAY['x y',NULL,'q"'], row(1,'in,ner')::inner_t, 'sad ok', 3.25)::outer_t`.
    const OUTER_LITERAL: &str = r#"("7","{\"x y\",NULL,\"q\\\"\"}","(\"1\",\"in,ner\")","sad ok","3.25")"#;

    #[test]
    fn composites() {
        let v = o(vec![
            ("id", n("7")),
            ("tags", a(vec![s("x y"), Value::Null, s("q\"")])),
            ("inn", o(vec![("x", n("1")), ("y", s("in,ner"))])),
            ("m", s("sad ok")),
            ("n", n("3.25")),
        ]);
        assert_eq!(enc(&v, OUTER).unwrap(), OUTER_LITERAL);
        // Missing and null fields are NULL; an empty string is not.
        assert_eq!(enc(&o(vec![("y", s(""))]), INNER).unwrap(), r#"(,"")"#);
        assert_eq!(enc(&o(vec![("x", Value::Null)]), INNER).unwrap(), "(,)");
        assert_eq!(enc(&o(vec![("z", n("1"))]), INNER).unwrap_err(), "unknown field \"z\" for type inner_t");
        assert_eq!(enc(&o(vec![("x", n("1.5"))]), INNER).unwrap_err(), "field \"x\": expected an integer, got 1.5");
        assert_eq!(enc(&s("(1,a)"), INNER).unwrap(), "(1,a)");
        assert_eq!(enc(&a(vec![]), INNER).unwrap_err(), "expected an object, got an array");
        assert_eq!(
            enc(&o(vec![("we,ird \"name", a(vec![n("2")])), ("a", n("1"))]), DROPT).unwrap(),
            r#"("1","{\"2\"}")"#
        );
        // Arrays of composites.
        assert_eq!(enc(&a(vec![o(vec![("id", n("1"))]), Value::Null]), OUTER_ARR).unwrap(), r#"{"(\"1\",,,,)",NULL}"#);
    }
}
