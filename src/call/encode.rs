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
use crate::json::{Value, write_string};

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
            types::TEXT
            | types::VARCHAR
            | types::BPCHAR
            | types::NAME
            | types::CHAR
            | types::UNKNOWN => PClass::TextLike,
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
                    TypeKind::Composite { fields } => PClass::Composite {
                        name: &info.name,
                        fields,
                    },
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
pub fn encode_param(
    value: &Value,
    oid: u32,
    types: &TypeRegistry,
    out: &mut Vec<u8>,
) -> Result<bool, ParamError> {
    if matches!(value, Value::Null) {
        return Ok(true);
    }
    encode_non_null(value, oid, types, out, 0)?;
    Ok(false)
}

fn push_str(s: &str, out: &mut Vec<u8>) -> Result<(), ParamError> {
    if s.contains('\0') {
        return err(
            "string contains a NUL character (\\u0000), which PostgreSQL text cannot hold".into(),
        );
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
        (PClass::Json, v) => write_json(v, out),
        (PClass::Array { elem }, Value::Array(items)) => {
            encode_array(items, elem, types, out, depth)?
        }
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
        (PClass::Decimal | PClass::Strict | PClass::TextLike, Value::Number(n)) => {
            out.extend_from_slice(n.as_bytes())
        }
        (PClass::TextLike, Value::Bool(b)) => {
            out.extend_from_slice(if *b { b"true" } else { b"false" })
        }
        (PClass::TextLike, v @ (Value::Array(_) | Value::Object(_))) => write_json(v, out),
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
    let mut scratch = Vec::new();
    out.push(b'{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
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
                encode_non_null(v, elem, types, &mut scratch, depth + 1).map_err(|e| {
                    ParamError {
                        message: format!("array element {}: {}", i + 1, e.message),
                    }
                })?;
                push_quoted(&scratch, out);
            }
        }
    }
    out.push(b'}');
    Ok(())
}

fn encode_record(
    type_name: &str,
    fields: &[(String, u32)],
    pairs: &[(String, Value)],
    types: &TypeRegistry,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), ParamError> {
    if let Some((k, _)) = pairs
        .iter()
        .find(|(k, _)| !fields.iter().any(|(f, _)| f == k))
    {
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
                encode_non_null(v, *ftype, types, &mut scratch, depth + 1).map_err(|e| {
                    ParamError {
                        message: format!("field \"{fname}\": {}", e.message),
                    }
                })?;
                push_quoted(&scratch, out);
            }
        }
    }
    out.push(b')');
    Ok(())
}

/// Compact JSON text of `v` (numbers as written, no whitespace).
pub fn write_json(v: &Value, out: &mut Vec<u8>) {
    match v {
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
                write_json(item, out);
            }
            out.push(b']');
        }
        Value::Object(pairs) => {
            out.push(b'{');
            for (i, (k, item)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, k);
                out.push(b':');
                write_json(item, out);
            }
            out.push(b'}');
        }
    }
}
