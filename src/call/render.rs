//! Owns result rendering: per-column wire format choice and DataRow bytes → JSON, written into one buffer.
//!
//! Format choices (see [`column_format`]): scalars travel as text, because PostgreSQL's text form of
//! numbers is already JSON-compatible and the exact digits of numeric/float are preserved. bytea
//! travels binary so the output never depends on the `bytea_output` setting. Arrays and composites
//! travel binary when every type nested inside them has a binary decoder here (the binary form
//! carries lengths and NULL flags, so there is nothing to unquote); otherwise they travel as text and
//! the array/record literal is parsed with the element/field types in hand.
//!
//! Rendering never fails: a value whose bytes do not parse as its type is written as a JSON string
//! (the lossy UTF-8 text for text format, `"\\x<hex>"` for binary) instead of `null` or a panic.
//! Array bounds are not kept: `'[2:3]={1,2}'` renders as `[1,2]`.

use std::io::Write;

use crate::call::types::{self, MAX_DEPTH, TypeKind, TypeRegistry};
use crate::json::write_string;

/// What rendering needs to know about a type, with domains already resolved to their base.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Class<'a> {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    Json,
    Jsonb,
    Bytea,
    Timestamptz,
    Timestamp,
    Uuid,
    /// Types whose binary form is their UTF-8 text (text, varchar, bpchar, name, unknown, enums).
    Text,
    /// Rendered as a string of the text form; no binary decoder.
    Str,
    Void,
    Array {
        elem: u32,
    },
    Composite(&'a [(String, u32)]),
    /// An anonymous record: field types are unknown, so fields render as strings keyed `f1`, `f2`…
    Record,
}

pub(crate) fn classify(oid: u32, types: &TypeRegistry) -> Class<'_> {
    let mut oid = oid;
    for _ in 0..MAX_DEPTH {
        // Builtins first: the hot path should not pay for a hash lookup per value.
        let class = match oid {
            types::BOOL => Class::Bool,
            types::INT2 => Class::Int2,
            types::INT4 => Class::Int4,
            types::INT8 => Class::Int8,
            types::OID => Class::Oid,
            types::FLOAT4 => Class::Float4,
            types::FLOAT8 => Class::Float8,
            types::NUMERIC => Class::Numeric,
            types::JSON => Class::Json,
            types::JSONB => Class::Jsonb,
            types::BYTEA => Class::Bytea,
            types::TIMESTAMPTZ => Class::Timestamptz,
            types::TIMESTAMP => Class::Timestamp,
            types::UUID => Class::Uuid,
            types::TEXT | types::VARCHAR | types::BPCHAR | types::NAME | types::UNKNOWN => {
                Class::Text
            }
            types::RECORD => Class::Record,
            types::VOID => Class::Void,
            _ => match types.get(oid).map(|t| &t.kind) {
                Some(TypeKind::Domain { base }) => {
                    oid = *base;
                    continue;
                }
                Some(TypeKind::Array { elem }) => Class::Array { elem: *elem },
                Some(TypeKind::Composite { fields }) => Class::Composite(fields),
                Some(TypeKind::Enum) => Class::Text,
                _ => Class::Str,
            },
        };
        return class;
    }
    Class::Str
}

fn binary_ok(oid: u32, types: &TypeRegistry, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    match classify(oid, types) {
        Class::Bool
        | Class::Int2
        | Class::Int4
        | Class::Int8
        | Class::Oid
        | Class::Float4
        | Class::Float8
        | Class::Numeric
        | Class::Json
        | Class::Jsonb
        | Class::Bytea
        | Class::Uuid
        | Class::Text => true,
        Class::Timestamptz | Class::Timestamp | Class::Str | Class::Void | Class::Record => false,
        Class::Array { elem } => binary_ok(elem, types, depth + 1),
        Class::Composite(fields) => fields.iter().all(|(_, t)| binary_ok(*t, types, depth + 1)),
    }
}

/// The result format to request for a column of this type: 0 text, 1 binary.
pub fn column_format(oid: u32, types: &TypeRegistry) -> i16 {
    match classify(oid, types) {
        Class::Bytea => 1,
        Class::Array { .. } | Class::Composite(_) => i16::from(binary_ok(oid, types, 0)),
        _ => 0,
    }
}

/// `"name":` as JSON, so a caller can compute each column's key once per statement.
pub fn escaped_key(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 3);
    write_string(&mut out, name);
    out.push(b':');
    out
}

/// A result column prepared once per statement.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedColumn {
    /// From [`escaped_key`].
    pub key: Vec<u8>,
    pub oid: u32,
    pub format: i16,
}

impl PreparedColumn {
    pub fn new(name: &str, oid: u32, types: &TypeRegistry) -> Self {
        PreparedColumn {
            key: escaped_key(name),
            oid,
            format: column_format(oid, types),
        }
    }
}

/// Writes `{"col":value,...}` in column order; `columns` are (raw name, type OID, format), the
/// name is escaped here on every call. Prefer [`render_row_prepared`] on the hot path.
pub fn render_row_object(
    columns: &[(String, u32, i16)],
    values: &[Option<&[u8]>],
    types: &TypeRegistry,
    out: &mut Vec<u8>,
) {
    out.push(b'{');
    for (i, ((name, oid, format), value)) in columns.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, name);
        out.push(b':');
        render_value(*oid, *format, *value, types, out);
    }
    out.push(b'}');
}

/// Like [`render_row_object`] with keys escaped in advance.
pub fn render_row_prepared(
    columns: &[PreparedColumn],
    values: &[Option<&[u8]>],
    types: &TypeRegistry,
    out: &mut Vec<u8>,
) {
    out.push(b'{');
    for (i, (col, value)) in columns.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&col.key);
        render_value(col.oid, col.format, *value, types, out);
    }
    out.push(b'}');
}

/// Appends one JSON value for a column value received in `format` (0 text, 1 binary).
pub fn render_value(
    oid: u32,
    format: i16,
    raw: Option<&[u8]>,
    types: &TypeRegistry,
    out: &mut Vec<u8>,
) {
    let Some(raw) = raw else {
        out.extend_from_slice(b"null");
        return;
    };
    let start = out.len();
    if format == 1 {
        if render_binary(oid, raw, types, out, 0).is_err() {
            out.truncate(start);
            write_hex_string(raw, out);
        }
    } else if render_text(oid, raw, types, out, 0).is_err() {
        out.truncate(start);
        write_lossy_string(raw, out);
    }
}

type R = Result<(), ()>;

fn write_lossy_string(raw: &[u8], out: &mut Vec<u8>) {
    write_string(out, &String::from_utf8_lossy(raw));
}

/// `"\\x<hex>"`: PostgreSQL's hex bytea form as a JSON string.
fn write_hex_string(raw: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(raw.len() * 2 + 5);
    out.extend_from_slice(b"\"\\\\x");
    for b in raw {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
    out.push(b'"');
}

/// RFC 8259 number grammar; PostgreSQL's own number output always matches except NaN/Infinity.
fn is_json_number(s: &[u8]) -> bool {
    let mut i = 0;
    let n = s.len();
    if i < n && s[i] == b'-' {
        i += 1;
    }
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while i < n && s[i].is_ascii_digit() {
                i += 1;
            }
        }
        _ => return false,
    }
    if i < n && s[i] == b'.' {
        i += 1;
        let d = i;
        while i < n && s[i].is_ascii_digit() {
            i += 1;
        }
        if i == d {
            return false;
        }
    }
    if i < n && (s[i] == b'e' || s[i] == b'E') {
        i += 1;
        if i < n && (s[i] == b'+' || s[i] == b'-') {
            i += 1;
        }
        let d = i;
        while i < n && s[i].is_ascii_digit() {
            i += 1;
        }
        if i == d {
            return false;
        }
    }
    i == n
}

fn render_text(oid: u32, raw: &[u8], types: &TypeRegistry, out: &mut Vec<u8>, depth: usize) -> R {
    if depth > MAX_DEPTH {
        return Err(());
    }
    match classify(oid, types) {
        Class::Bool => match raw {
            b"t" => out.extend_from_slice(b"true"),
            b"f" => out.extend_from_slice(b"false"),
            _ => write_lossy_string(raw, out),
        },
        Class::Int2
        | Class::Int4
        | Class::Int8
        | Class::Oid
        | Class::Float4
        | Class::Float8
        | Class::Numeric => {
            if is_json_number(raw) {
                out.extend_from_slice(raw);
            } else {
                // NaN, Infinity, -Infinity have no JSON number form.
                write_lossy_string(raw, out);
            }
        }
        Class::Json | Class::Jsonb => match std::str::from_utf8(raw) {
            // PostgreSQL validated the document on input, so it is embedded as is.
            Ok(s) if !s.trim().is_empty() => out.extend_from_slice(raw),
            _ => write_lossy_string(raw, out),
        },
        Class::Timestamptz => write_timestamp(raw, true, out),
        Class::Timestamp => write_timestamp(raw, false, out),
        Class::Void => out.extend_from_slice(b"null"),
        Class::Bytea | Class::Uuid | Class::Text | Class::Str => write_lossy_string(raw, out),
        Class::Array { elem } => {
            // box is the one builtin whose array delimiter is not a comma (its text has commas).
            let delim = if elem == types::BOX { b';' } else { b',' };
            let mut first = true;
            let mut inner: R = Ok(());
            walk_array(raw, delim, &mut |ev| match ev {
                ArrayEvent::Open => {
                    if !first {
                        out.push(b',');
                    }
                    out.push(b'[');
                    first = true;
                }
                ArrayEvent::Close => {
                    out.push(b']');
                    first = false;
                }
                ArrayEvent::Elem(e) => {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    match e {
                        None => out.extend_from_slice(b"null"),
                        Some(e) => {
                            if render_text(elem, e, types, out, depth + 1).is_err() {
                                inner = Err(());
                            }
                        }
                    }
                }
            })?;
            inner?;
        }
        Class::Composite(fields) => {
            out.push(b'{');
            let mut i = 0usize;
            let mut inner: R = Ok(());
            walk_record(raw, &mut |field| {
                let Some((name, ftype)) = fields.get(i) else {
                    inner = Err(());
                    return;
                };
                if i > 0 {
                    out.push(b',');
                }
                i += 1;
                write_string(out, name);
                out.push(b':');
                match field {
                    None => out.extend_from_slice(b"null"),
                    Some(f) => {
                        if render_text(*ftype, f, types, out, depth + 1).is_err() {
                            inner = Err(());
                        }
                    }
                }
            })?;
            inner?;
            if i != fields.len() {
                return Err(());
            }
            out.push(b'}');
        }
        Class::Record => {
            out.push(b'{');
            let mut i = 0usize;
            walk_record(raw, &mut |field| {
                if i > 0 {
                    out.push(b',');
                }
                i += 1;
                let _ = write!(out, "\"f{i}\":");
                match field {
                    None => out.extend_from_slice(b"null"),
                    Some(f) => write_lossy_string(f, out),
                }
            })?;
            out.push(b'}');
        }
    }
    Ok(())
}

/// `2026-11-27 18:34:44.5+05:30` → `"2026-11-27T18:34:44.5+05:30"`; a bare-hour offset `-03` gets
/// `:00` so the result is ISO 8601 / RFC 3339. Anything else (infinity, BC dates, odd offsets with
/// seconds) is written as the PostgreSQL text, which is what a client would have to interpret anyway.
fn write_timestamp(raw: &[u8], with_offset: bool, out: &mut Vec<u8>) {
    let plain = raw
        .iter()
        .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b':' | b'.' | b' '));
    let Some(space) = raw.iter().position(|&b| b == b' ') else {
        return write_lossy_string(raw, out);
    };
    if !plain || space == 0 {
        return write_lossy_string(raw, out);
    }
    let (date, rest) = (&raw[..space], &raw[space + 1..]);
    if !with_offset {
        if rest.contains(&b' ') {
            return write_lossy_string(raw, out);
        }
        out.push(b'"');
        out.extend_from_slice(date);
        out.push(b'T');
        out.extend_from_slice(rest);
        out.push(b'"');
        return;
    }
    let Some(sign) = rest.iter().rposition(|&b| b == b'+' || b == b'-') else {
        return write_lossy_string(raw, out);
    };
    let (time, offset) = (&rest[..sign], &rest[sign + 1..]);
    let offset_ok = match offset.len() {
        2 => offset.iter().all(u8::is_ascii_digit),
        5 => offset[2] == b':',
        _ => false,
    };
    if !offset_ok || time.is_empty() || time.contains(&b' ') {
        return write_lossy_string(raw, out);
    }
    out.push(b'"');
    out.extend_from_slice(date);
    out.push(b'T');
    out.extend_from_slice(time);
    out.push(rest[sign]);
    out.extend_from_slice(offset);
    if offset.len() == 2 {
        out.extend_from_slice(b":00");
    }
    out.push(b'"');
}

/// One step of walking an array literal.
#[derive(Debug, PartialEq)]
pub enum ArrayEvent<'a> {
    Open,
    Close,
    /// An element, unquoted and unescaped; `None` for an unquoted `NULL`.
    Elem(Option<&'a [u8]>),
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
    }
}

/// Walks a PostgreSQL array literal (`{...}`, optionally prefixed by `[lo:hi]=` bounds), calling `f`
/// for every bracket and element. Err on any syntax error; `f` may have been called before that.
pub fn walk_array(s: &[u8], delim: u8, f: &mut dyn FnMut(ArrayEvent<'_>)) -> R {
    let mut c = Cursor { s, i: 0 };
    c.skip_ws();
    if c.peek() == Some(b'[') {
        // Bounds decoration: JSON arrays have no lower bound, so it is dropped.
        while let Some(b) = c.peek() {
            c.i += 1;
            if b == b'=' {
                break;
            }
        }
        c.skip_ws();
    }
    if c.peek() != Some(b'{') {
        return Err(());
    }
    let mut scratch = Vec::new();
    walk_level(&mut c, delim, f, &mut scratch, 0)?;
    c.skip_ws();
    if c.i == s.len() { Ok(()) } else { Err(()) }
}

fn walk_level(
    c: &mut Cursor<'_>,
    delim: u8,
    f: &mut dyn FnMut(ArrayEvent<'_>),
    scratch: &mut Vec<u8>,
    depth: usize,
) -> R {
    if depth > MAX_DEPTH {
        return Err(());
    }
    // Caller saw '{'.
    c.i += 1;
    f(ArrayEvent::Open);
    c.skip_ws();
    if c.peek() == Some(b'}') {
        c.i += 1;
        f(ArrayEvent::Close);
        return Ok(());
    }
    loop {
        c.skip_ws();
        match c.peek() {
            None => return Err(()),
            Some(b'{') => walk_level(c, delim, f, scratch, depth + 1)?,
            Some(b'"') => {
                c.i += 1;
                scratch.clear();
                loop {
                    match c.peek() {
                        None => return Err(()),
                        Some(b'"') => {
                            c.i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            let b = c.s.get(c.i + 1).copied().ok_or(())?;
                            scratch.push(b);
                            c.i += 2;
                        }
                        Some(b) => {
                            scratch.push(b);
                            c.i += 1;
                        }
                    }
                }
                f(ArrayEvent::Elem(Some(scratch)));
            }
            Some(_) => {
                let start = c.i;
                let mut escaped = false;
                while let Some(b) = c.peek() {
                    if b == delim || b == b'}' || b == b'{' || b == b'"' {
                        break;
                    }
                    if b == b'\\' {
                        escaped = true;
                        c.i += 1;
                        if c.peek().is_none() {
                            return Err(());
                        }
                    }
                    c.i += 1;
                }
                let mut token = &c.s[start..c.i];
                while token.last().is_some_and(|b| b.is_ascii_whitespace()) {
                    token = &token[..token.len() - 1];
                }
                if token.is_empty() {
                    return Err(());
                }
                if escaped {
                    scratch.clear();
                    let mut it = token.iter();
                    while let Some(&b) = it.next() {
                        if b == b'\\' {
                            scratch.extend(it.next());
                        } else {
                            scratch.push(b);
                        }
                    }
                    f(ArrayEvent::Elem(Some(scratch)));
                } else if token.eq_ignore_ascii_case(b"NULL") {
                    f(ArrayEvent::Elem(None));
                } else {
                    f(ArrayEvent::Elem(Some(token)));
                }
            }
        }
        c.skip_ws();
        match c.peek() {
            Some(b) if b == delim => c.i += 1,
            Some(b'}') => {
                c.i += 1;
                f(ArrayEvent::Close);
                return Ok(());
            }
            _ => return Err(()),
        }
    }
}

/// Walks a record literal `(a,"b c",)`, calling `f` per field; an empty unquoted field is NULL.
pub fn walk_record(s: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) -> R {
    let mut c = Cursor { s, i: 0 };
    c.skip_ws();
    if c.peek() != Some(b'(') {
        return Err(());
    }
    c.i += 1;
    let mut scratch = Vec::new();
    loop {
        scratch.clear();
        let mut seen = false;
        let mut in_quotes = false;
        loop {
            let b = c.peek().ok_or(())?;
            if in_quotes {
                match b {
                    b'"' if c.s.get(c.i + 1) == Some(&b'"') => {
                        scratch.push(b'"');
                        c.i += 2;
                    }
                    b'"' => {
                        in_quotes = false;
                        c.i += 1;
                    }
                    b'\\' => {
                        scratch.push(c.s.get(c.i + 1).copied().ok_or(())?);
                        c.i += 2;
                    }
                    _ => {
                        scratch.push(b);
                        c.i += 1;
                    }
                }
                continue;
            }
            match b {
                b',' | b')' => break,
                b'"' => {
                    seen = true;
                    in_quotes = true;
                    c.i += 1;
                }
                b'\\' => {
                    seen = true;
                    scratch.push(c.s.get(c.i + 1).copied().ok_or(())?);
                    c.i += 2;
                }
                _ => {
                    seen = true;
                    scratch.push(b);
                    c.i += 1;
                }
            }
        }
        f(if seen { Some(&scratch) } else { None });
        let end = c.peek() == Some(b')');
        c.i += 1;
        if end {
            break;
        }
    }
    c.skip_ws();
    if c.i == s.len() { Ok(()) } else { Err(()) }
}

fn be_u32(b: &[u8], at: usize) -> Result<u32, ()> {
    let s = b.get(at..at + 4).ok_or(())?;
    Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be_i32(b: &[u8], at: usize) -> Result<i32, ()> {
    be_u32(b, at).map(|v| v as i32)
}

/// One length-prefixed item (`-1` = NULL) starting at `*at`; advances `*at`.
fn take_item<'a>(b: &'a [u8], at: &mut usize) -> Result<Option<&'a [u8]>, ()> {
    let len = be_i32(b, *at)?;
    *at += 4;
    if len == -1 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| ())?;
    let item = b.get(*at..*at + len).ok_or(())?;
    *at += len;
    Ok(Some(item))
}

fn render_binary(oid: u32, raw: &[u8], types: &TypeRegistry, out: &mut Vec<u8>, depth: usize) -> R {
    if depth > MAX_DEPTH {
        return Err(());
    }
    match classify(oid, types) {
        Class::Bool => match raw {
            [0] => out.extend_from_slice(b"false"),
            [1] => out.extend_from_slice(b"true"),
            _ => return Err(()),
        },
        Class::Int2 => {
            let v = i16::from_be_bytes(raw.try_into().map_err(|_| ())?);
            let _ = write!(out, "{v}");
        }
        Class::Int4 => {
            let v = i32::from_be_bytes(raw.try_into().map_err(|_| ())?);
            let _ = write!(out, "{v}");
        }
        Class::Oid => {
            let v = u32::from_be_bytes(raw.try_into().map_err(|_| ())?);
            let _ = write!(out, "{v}");
        }
        Class::Int8 => {
            let v = i64::from_be_bytes(raw.try_into().map_err(|_| ())?);
            let _ = write!(out, "{v}");
        }
        Class::Float4 => {
            let v = f32::from_be_bytes(raw.try_into().map_err(|_| ())?);
            write_float(f64::from(v), v.is_finite(), out, |out| {
                let _ = write!(out, "{v:?}");
            });
        }
        Class::Float8 => {
            let v = f64::from_be_bytes(raw.try_into().map_err(|_| ())?);
            write_float(v, v.is_finite(), out, |out| {
                let _ = write!(out, "{v:?}");
            });
        }
        Class::Numeric => write_numeric(raw, out)?,
        Class::Json => {
            let s = std::str::from_utf8(raw).map_err(|_| ())?;
            if s.trim().is_empty() {
                return Err(());
            }
            out.extend_from_slice(raw);
        }
        Class::Jsonb => match raw.split_first() {
            Some((1, doc)) if std::str::from_utf8(doc).is_ok_and(|s| !s.trim().is_empty()) => {
                out.extend_from_slice(doc)
            }
            _ => return Err(()),
        },
        Class::Bytea => write_hex_string(raw, out),
        Class::Uuid => {
            if raw.len() != 16 {
                return Err(());
            }
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push(b'"');
            for (i, b) in raw.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    out.push(b'-');
                }
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
            out.push(b'"');
        }
        Class::Text => write_string(out, std::str::from_utf8(raw).map_err(|_| ())?),
        // Never requested in binary (see column_format); no decoder, so the caller's hex fallback.
        Class::Timestamptz | Class::Timestamp | Class::Str | Class::Record | Class::Void => {
            return Err(());
        }
        Class::Array { elem } => render_binary_array(elem, raw, types, out, depth)?,
        Class::Composite(fields) => {
            let n = be_i32(raw, 0)?;
            if usize::try_from(n).ok() != Some(fields.len()) {
                return Err(());
            }
            let mut at = 4;
            out.push(b'{');
            for (i, (name, ftype)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, name);
                out.push(b':');
                // The wire also carries the field's type OID; the registry's is used instead
                // because it names the domain (if any) that the field was declared with.
                at += 4;
                match take_item(raw, &mut at)? {
                    None => out.extend_from_slice(b"null"),
                    Some(v) => render_binary(*ftype, v, types, out, depth + 1)?,
                }
            }
            if at != raw.len() {
                return Err(());
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_float(v: f64, finite: bool, out: &mut Vec<u8>, digits: impl FnOnce(&mut Vec<u8>)) {
    if finite {
        // Debug is the shortest text that reads back to the same float, and is JSON-valid
        // (`1e100`, `0.1`, `-0.0`).
        digits(out);
    } else if v.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if v > 0.0 {
        out.extend_from_slice(b"\"Infinity\"");
    } else {
        out.extend_from_slice(b"\"-Infinity\"");
    }
}

fn render_binary_array(
    elem: u32,
    raw: &[u8],
    types: &TypeRegistry,
    out: &mut Vec<u8>,
    depth: usize,
) -> R {
    let ndim = be_i32(raw, 0)?;
    if ndim == 0 {
        out.extend_from_slice(b"[]");
        return Ok(());
    }
    let ndim = usize::try_from(ndim).map_err(|_| ())?;
    if ndim > MAX_DEPTH {
        return Err(());
    }
    // Header: ndim, has-null flag, element OID, then (size, lower bound) per dimension.
    let mut dims = [0usize; MAX_DEPTH];
    let mut total: usize = 1;
    for (d, dim) in dims.iter_mut().enumerate().take(ndim) {
        let size = usize::try_from(be_i32(raw, 12 + d * 8)?).map_err(|_| ())?;
        *dim = size;
        total = total.checked_mul(size).ok_or(())?;
    }
    let mut at = 12 + ndim * 8;
    // Each element takes at least its 4-byte length, which bounds what a lying header can claim.
    if total > raw.len().saturating_sub(at) / 4 {
        return Err(());
    }
    emit_dim(elem, raw, &dims[..ndim], &mut at, types, out, depth)?;
    if at == raw.len() { Ok(()) } else { Err(()) }
}

fn emit_dim(
    elem: u32,
    raw: &[u8],
    dims: &[usize],
    at: &mut usize,
    types: &TypeRegistry,
    out: &mut Vec<u8>,
    depth: usize,
) -> R {
    out.push(b'[');
    for i in 0..dims[0] {
        if i > 0 {
            out.push(b',');
        }
        if dims.len() > 1 {
            emit_dim(elem, raw, &dims[1..], at, types, out, depth)?;
        } else {
            match take_item(raw, at)? {
                None => out.extend_from_slice(b"null"),
                Some(v) => render_binary(elem, v, types, out, depth + 1)?,
            }
        }
    }
    out.push(b']');
    Ok(())
}

/// Binary numeric: ndigits, weight (of the first base-10000 digit), sign, display scale, digits.
fn write_numeric(raw: &[u8], out: &mut Vec<u8>) -> R {
    let hdr = |i: usize| -> Result<u16, ()> {
        let s = raw.get(i..i + 2).ok_or(())?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    };
    let ndigits = hdr(0)? as i16;
    let weight = i32::from(hdr(2)? as i16);
    let sign = hdr(4)?;
    let dscale = usize::from(hdr(6)?);
    match sign {
        0xC000 => {
            out.extend_from_slice(b"\"NaN\"");
            return Ok(());
        }
        0xD000 => {
            out.extend_from_slice(b"\"Infinity\"");
            return Ok(());
        }
        0xF000 => {
            out.extend_from_slice(b"\"-Infinity\"");
            return Ok(());
        }
        0x0000 | 0x4000 => {}
        _ => return Err(()),
    }
    let ndigits = usize::try_from(ndigits).map_err(|_| ())?;
    if raw.len() != 8 + 2 * ndigits || dscale > 0x3FFF {
        return Err(());
    }
    let digit = |k: i32| -> Result<u16, ()> {
        match usize::try_from(k) {
            Ok(k) if k < ndigits => {
                let d = hdr(8 + 2 * k)?;
                if d > 9999 { Err(()) } else { Ok(d) }
            }
            _ => Ok(0),
        }
    };
    if sign == 0x4000 {
        out.push(b'-');
    }
    if weight < 0 {
        out.push(b'0');
    } else {
        let _ = write!(out, "{}", digit(0)?);
        for k in 1..=weight {
            let _ = write!(out, "{:04}", digit(k)?);
        }
    }
    if dscale > 0 {
        out.push(b'.');
        let frac_start = out.len();
        let mut k = weight + 1;
        while out.len() - frac_start < dscale {
            let _ = write!(out, "{:04}", digit(k)?);
            k += 1;
        }
        out.truncate(frac_start + dscale);
    }
    Ok(())
}
