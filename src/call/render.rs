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
//! Array bounds are not kept: `'[2:3]={1,2}'` renders as `[1,2]`. An anonymous `record` (2249)
//! has no field names or types on the wire in text form, so it renders as `{"f1":"…","f2":…}` with
//! every non-NULL field a string of its text form. `void` renders as `null` (it has no value).
//! json/jsonb are embedded unquoted after a syntax check, so a corrupt document becomes a string.

use std::io::Write;

use super::literal::{ArrayEvent, Malformed, R, walk_array, walk_record};
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
            types::TEXT | types::VARCHAR | types::BPCHAR | types::NAME | types::UNKNOWN => Class::Text,
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
        PreparedColumn { key: escaped_key(name), oid, format: column_format(oid, types) }
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
pub fn render_row_prepared<'v>(
    columns: &[PreparedColumn],
    values: impl IntoIterator<Item = Option<&'v [u8]>>,
    types: &TypeRegistry,
    out: &mut Vec<u8>,
) {
    out.push(b'{');
    for (i, (col, value)) in columns.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&col.key);
        render_value(col.oid, col.format, value, types, out);
    }
    out.push(b'}');
}

/// Appends one JSON value for a column value received in `format` (0 text, 1 binary).
pub fn render_value(oid: u32, format: i16, raw: Option<&[u8]>, types: &TypeRegistry, out: &mut Vec<u8>) {
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

/// Nesting levels tracked in a bitmask before spilling to the heap: real documents rarely exceed it,
/// and the check then allocates nothing.
const INLINE_LEVELS: usize = 128;

/// Whether `b` is one complete RFC 8259 document (UTF-8, any nesting depth). PostgreSQL has already
/// validated json/jsonb, but the bytes are embedded unquoted, so a corrupt value must not be able
/// to break the surrounding response; the check is a single non-allocating pass for normal documents.
fn is_json_document(b: &[u8]) -> bool {
    if std::str::from_utf8(b).is_err() {
        return false;
    }
    // Open containers: bit set = object. Levels past INLINE_LEVELS live in `spill`.
    let mut bits: u128 = 0;
    let mut spill: Vec<bool> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0usize;
    let ws = |i: &mut usize| {
        while *i < b.len() && matches!(b[*i], b' ' | b'\n' | b'\r' | b'\t') {
            *i += 1;
        }
    };
    let string = |i: &mut usize| -> bool {
        if b.get(*i) != Some(&b'"') {
            return false;
        }
        *i += 1;
        while let Some(&c) = b.get(*i) {
            *i += 1;
            match c {
                b'"' => return true,
                b'\\' => match b.get(*i) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => *i += 1,
                    Some(b'u') => {
                        // An unpaired surrogate escape is grammatical but no string at all:
                        // strict readers (ours included) refuse the whole document.
                        let unit = |at: usize| {
                            let h = std::str::from_utf8(b.get(at..at + 4)?).ok()?;
                            if !h.bytes().all(|c| c.is_ascii_hexdigit()) {
                                return None;
                            }
                            u16::from_str_radix(h, 16).ok()
                        };
                        match unit(*i + 1) {
                            Some(0xD800..=0xDBFF) => {
                                if b.get(*i + 5..*i + 7) != Some(&b"\\u"[..])
                                    || !matches!(unit(*i + 7), Some(0xDC00..=0xDFFF))
                                {
                                    return false;
                                }
                                *i += 11;
                            }
                            Some(0xDC00..=0xDFFF) | None => return false,
                            Some(_) => *i += 5,
                        }
                    }
                    _ => return false,
                },
                0..=0x1f => return false,
                _ => {}
            }
        }
        false
    };
    'value: loop {
        ws(&mut i);
        match b.get(i) {
            Some(&open @ (b'{' | b'[')) => {
                i += 1;
                ws(&mut i);
                let close = if open == b'{' { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    i += 1;
                } else {
                    let is_obj = open == b'{';
                    if depth < INLINE_LEVELS {
                        bits = (bits & !(1u128 << depth)) | (u128::from(is_obj) << depth);
                    } else {
                        spill.push(is_obj);
                    }
                    depth += 1;
                    if is_obj {
                        if !string(&mut i) {
                            return false;
                        }
                        ws(&mut i);
                        if b.get(i) != Some(&b':') {
                            return false;
                        }
                        i += 1;
                    }
                    continue 'value;
                }
            }
            Some(b'"') => {
                if !string(&mut i) {
                    return false;
                }
            }
            Some(b't') if b[i..].starts_with(b"true") => i += 4,
            Some(b'f') if b[i..].starts_with(b"false") => i += 5,
            Some(b'n') if b[i..].starts_with(b"null") => i += 4,
            Some(_) => {
                let start = i;
                while i < b.len() && matches!(b[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                    i += 1;
                }
                if !is_json_number(&b[start..i]) {
                    return false;
                }
            }
            None => return false,
        }
        // After a value: close containers or move to the next member.
        loop {
            ws(&mut i);
            if depth == 0 {
                return i == b.len();
            }
            let top = depth - 1;
            let is_obj = if top < INLINE_LEVELS { bits & (1u128 << top) != 0 } else { spill[top - INLINE_LEVELS] };
            match b.get(i) {
                Some(b',') => {
                    i += 1;
                    if is_obj {
                        ws(&mut i);
                        if !string(&mut i) {
                            return false;
                        }
                        ws(&mut i);
                        if b.get(i) != Some(&b':') {
                            return false;
                        }
                        i += 1;
                    }
                    continue 'value;
                }
                Some(b'}') if is_obj => {}
                Some(b']') if !is_obj => {}
                _ => return false,
            }
            i += 1;
            depth -= 1;
            if depth >= INLINE_LEVELS {
                spill.pop();
            }
        }
    }
}

fn render_text(oid: u32, raw: &[u8], types: &TypeRegistry, out: &mut Vec<u8>, depth: usize) -> R {
    if depth > MAX_DEPTH {
        return Err(Malformed);
    }
    match classify(oid, types) {
        Class::Bool => match raw {
            b"t" => out.extend_from_slice(b"true"),
            b"f" => out.extend_from_slice(b"false"),
            _ => write_lossy_string(raw, out),
        },
        Class::Int2 | Class::Int4 | Class::Int8 | Class::Oid | Class::Float4 | Class::Float8 | Class::Numeric => {
            if is_json_number(raw) {
                out.extend_from_slice(raw);
            } else {
                // NaN, Infinity, -Infinity have no JSON number form.
                write_lossy_string(raw, out);
            }
        }
        Class::Json | Class::Jsonb => {
            if is_json_document(raw) {
                out.extend_from_slice(raw);
            } else {
                write_lossy_string(raw, out);
            }
        }
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
                                inner = Err(Malformed);
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
                    inner = Err(Malformed);
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
                            inner = Err(Malformed);
                        }
                    }
                }
            })?;
            inner?;
            if i != fields.len() {
                return Err(Malformed);
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
    let plain = raw.iter().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b':' | b'.' | b' '));
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

fn be_u32(b: &[u8], at: usize) -> Result<u32, Malformed> {
    let s = b.get(at..at + 4).ok_or(Malformed)?;
    Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be_i32(b: &[u8], at: usize) -> Result<i32, Malformed> {
    be_u32(b, at).map(|v| v as i32)
}

/// One length-prefixed item (`-1` = NULL) starting at `*at`; advances `*at`.
fn take_item<'a>(b: &'a [u8], at: &mut usize) -> Result<Option<&'a [u8]>, Malformed> {
    let len = be_i32(b, *at)?;
    *at += 4;
    if len == -1 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| Malformed)?;
    let item = b.get(*at..*at + len).ok_or(Malformed)?;
    *at += len;
    Ok(Some(item))
}

fn render_binary(oid: u32, raw: &[u8], types: &TypeRegistry, out: &mut Vec<u8>, depth: usize) -> R {
    if depth > MAX_DEPTH {
        return Err(Malformed);
    }
    match classify(oid, types) {
        Class::Bool => match raw {
            [0] => out.extend_from_slice(b"false"),
            [1] => out.extend_from_slice(b"true"),
            _ => return Err(Malformed),
        },
        Class::Int2 => {
            let v = i16::from_be_bytes(raw.try_into().map_err(|_| Malformed)?);
            let _ = write!(out, "{v}");
        }
        Class::Int4 => {
            let v = i32::from_be_bytes(raw.try_into().map_err(|_| Malformed)?);
            let _ = write!(out, "{v}");
        }
        Class::Oid => {
            let v = u32::from_be_bytes(raw.try_into().map_err(|_| Malformed)?);
            let _ = write!(out, "{v}");
        }
        Class::Int8 => {
            let v = i64::from_be_bytes(raw.try_into().map_err(|_| Malformed)?);
            let _ = write!(out, "{v}");
        }
        Class::Float4 => {
            let v = f32::from_be_bytes(raw.try_into().map_err(|_| Malformed)?);
            write_float(f64::from(v), v.is_finite(), out, |out| {
                let _ = write!(out, "{v:?}");
            });
        }
        Class::Float8 => {
            let v = f64::from_be_bytes(raw.try_into().map_err(|_| Malformed)?);
            write_float(v, v.is_finite(), out, |out| {
                let _ = write!(out, "{v:?}");
            });
        }
        Class::Numeric => write_numeric(raw, out)?,
        Class::Json if is_json_document(raw) => out.extend_from_slice(raw),
        // jsonb's binary form is a version byte (1) followed by the text form.
        Class::Jsonb => match raw.split_first() {
            Some((1, doc)) if is_json_document(doc) => out.extend_from_slice(doc),
            _ => return Err(Malformed),
        },
        Class::Json => return Err(Malformed),
        Class::Bytea => write_hex_string(raw, out),
        Class::Uuid => {
            if raw.len() != 16 {
                return Err(Malformed);
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
        Class::Text => write_string(out, std::str::from_utf8(raw).map_err(|_| Malformed)?),
        // Never requested in binary (see column_format); no decoder, so the caller's hex fallback.
        Class::Timestamptz | Class::Timestamp | Class::Str | Class::Record | Class::Void => {
            return Err(Malformed);
        }
        Class::Array { elem } => render_binary_array(elem, raw, types, out, depth)?,
        Class::Composite(fields) => {
            let n = be_i32(raw, 0)?;
            if usize::try_from(n).ok() != Some(fields.len()) {
                return Err(Malformed);
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
                return Err(Malformed);
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

fn render_binary_array(elem: u32, raw: &[u8], types: &TypeRegistry, out: &mut Vec<u8>, depth: usize) -> R {
    let ndim = be_i32(raw, 0)?;
    if ndim == 0 {
        out.extend_from_slice(b"[]");
        return Ok(());
    }
    let ndim = usize::try_from(ndim).map_err(|_| Malformed)?;
    if ndim > MAX_DEPTH {
        return Err(Malformed);
    }
    // Header: ndim, has-null flag, element OID, then (size, lower bound) per dimension.
    let mut dims = [0usize; MAX_DEPTH];
    let mut total: usize = 1;
    for (d, dim) in dims.iter_mut().enumerate().take(ndim) {
        let size = usize::try_from(be_i32(raw, 12 + d * 8)?).map_err(|_| Malformed)?;
        *dim = size;
        total = total.checked_mul(size).ok_or(Malformed)?;
    }
    let mut at = 12 + ndim * 8;
    // PostgreSQL sends an empty array as ndim 0, never as a zero-length dimension; allowing one
    // would let `[huge, 0]` pass the size check below and emit `huge` empty brackets.
    if total == 0 {
        return Err(Malformed);
    }
    // Each element takes at least its 4-byte length, which bounds what a lying header can claim.
    if total > raw.len().saturating_sub(at) / 4 {
        return Err(Malformed);
    }
    emit_dim(elem, raw, &dims[..ndim], &mut at, types, out, depth)?;
    if at == raw.len() { Ok(()) } else { Err(Malformed) }
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
    let hdr = |i: usize| -> Result<u16, Malformed> {
        let s = raw.get(i..i + 2).ok_or(Malformed)?;
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
        _ => return Err(Malformed),
    }
    let ndigits = usize::try_from(ndigits).map_err(|_| Malformed)?;
    if raw.len() != 8 + 2 * ndigits || dscale > 0x3FFF {
        return Err(Malformed);
    }
    let digit = |k: i32| -> Result<u16, Malformed> {
        match usize::try_from(k) {
            Ok(k) if k < ndigits => {
                let d = hdr(8 + 2 * k)?;
                if d > 9999 { Err(Malformed) } else { Ok(d) }
            }
            _ => Ok(0),
        }
    };
    // PostgreSQL strips leading zero digits (zero itself has weight 0), so a zero first digit
    // with more digits after it is not its output, and would print as `00000…`, not a number.
    if weight > 0 && digit(0)? == 0 {
        return Err(Malformed);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::types::test_registry;

    // OIDs of the test cluster's user types (see types::TEST_ROWS).
    const MOOD: u32 = 16385;
    const MOOD_ARR: u32 = 16384;
    const INNER: u32 = 16391;
    const INNER_ARR: u32 = 16390;
    const OUTER: u32 = 16394;
    const POSINT: u32 = 16396;
    const TAGARR: u32 = 16399;
    const WITHTS: u32 = 16402;
    const DROPT: u32 = 16409;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn bin(oid: u32, h: &str) -> String {
        let mut out = Vec::new();
        render_value(oid, 1, Some(&hex(h)), &test_registry(), &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(json_ok(&s), "invalid JSON: {s}");
        s
    }

    /// Found by the `call_render` fuzz property: a json value holding an unpaired surrogate
    /// escape (PostgreSQL's `json` type stores it as written) was embedded unquoted, and strict
    /// readers, our own `json::parse` among them, reject the whole response.
    #[test]
    fn json_with_unpaired_surrogate_becomes_a_string() {
        for doc in [r#""\ude00""#, r#"["\ud83d"]"#, r#"{"a":"\ud83dx"}"#, r#""\ud83d\u0041""#] {
            let out = txt(types::JSON, doc);
            assert!(out.starts_with('"'), "{doc} -> {out}");
            assert!(crate::json::parse(out.as_bytes()).is_ok(), "{out}");
            let mut bin = Vec::new();
            render_value(types::JSONB, 1, Some(&[&b"\x01"[..], doc.as_bytes()].concat()), &test_registry(), &mut bin);
            assert!(bin.starts_with(b"\"\\\\x01"), "{}", String::from_utf8_lossy(&bin));
        }
        assert_eq!(txt(types::JSON, r#""\ud83d\ude00""#), r#""\ud83d\ude00""#);
        assert_eq!(txt(types::JSON, r#"["\u00e9\uD83D\uDE00"]"#), r#"["\u00e9\uD83D\uDE00"]"#);
    }

    /// Found while writing the `call_render` fuzz property's binary-array mode: a header with
    /// dimensions `[2147483647, 0]` claims no elements, so it passed the size check, and 2^31
    /// empty brackets (6.4 GB) were written for a 28-byte value.
    #[test]
    fn binary_array_with_zero_length_dimension_is_malformed() {
        let mut raw = Vec::new();
        for x in [2i32, 0, 23, i32::MAX, 1, 0, 1] {
            raw.extend_from_slice(&x.to_be_bytes());
        }
        let mut out = Vec::new();
        render_value(1007, 1, Some(&raw), &test_registry(), &mut out);
        assert!(out.starts_with(b"\"\\\\x00000002"), "{}", String::from_utf8_lossy(&out[..40.min(out.len())]));
        assert_eq!(
            bin(1007, "000000010000000000000017000000000000000100000000"),
            "\"\\\\x000000010000000000000017000000000000000100000000\""
        );
        assert_eq!(bin(1007, "000000000000000000000017"), "[]");
    }

    /// Found by the `call_render` fuzzer: a binary numeric with weight > 0 and a zero (or
    /// absent) first digit, e.g. ndigits 0, weight 10496, printed `0` and then 10496 `0000`
    /// groups: a number with leading zeros, which is not JSON.
    #[test]
    fn binary_numeric_with_leading_zero_digit_is_malformed() {
        assert_eq!(bin(types::NUMERIC, "0000000100000000"), "\"\\\\x0000000100000000\"");
        assert_eq!(bin(types::NUMERIC, "0002000100000000000004d2"), "\"\\\\x0002000100000000000004d2\"");
        assert_eq!(bin(types::NUMERIC, "0002000100000000000104d2"), "11234");
        assert_eq!(bin(types::NUMERIC, "0000000000000002"), "0.00");
    }

    fn txt(oid: u32, t: &str) -> String {
        let mut out = Vec::new();
        render_value(oid, 0, Some(t.as_bytes()), &test_registry(), &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(json_ok(&s), "invalid JSON: {s}");
        s
    }

    /// A strict RFC 8259 syntax check, so the fuzz tests can tell valid output from garbage.
    fn json_ok(s: &str) -> bool {
        fn ws(b: &[u8], i: &mut usize) {
            while *i < b.len() && matches!(b[*i], b' ' | b'\n' | b'\r' | b'\t') {
                *i += 1;
            }
        }
        fn val(b: &[u8], i: &mut usize, d: usize) -> bool {
            if d > 200 {
                return false;
            }
            ws(b, i);
            match b.get(*i) {
                Some(b'{') | Some(b'[') => {
                    let obj = b[*i] == b'{';
                    let close = if obj { b'}' } else { b']' };
                    *i += 1;
                    ws(b, i);
                    if b.get(*i) == Some(&close) {
                        *i += 1;
                        return true;
                    }
                    loop {
                        if obj {
                            ws(b, i);
                            if b.get(*i) != Some(&b'"') || !string(b, i) {
                                return false;
                            }
                            ws(b, i);
                            if b.get(*i) != Some(&b':') {
                                return false;
                            }
                            *i += 1;
                        }
                        if !val(b, i, d + 1) {
                            return false;
                        }
                        ws(b, i);
                        match b.get(*i) {
                            Some(b',') => *i += 1,
                            Some(c) if *c == close => {
                                *i += 1;
                                break true;
                            }
                            _ => return false,
                        }
                    }
                }
                Some(b'"') => string(b, i),
                Some(b't') => lit(b, i, b"true"),
                Some(b'f') => lit(b, i, b"false"),
                Some(b'n') => lit(b, i, b"null"),
                Some(_) => {
                    let start = *i;
                    while *i < b.len() && matches!(b[*i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                        *i += 1;
                    }
                    is_json_number(&b[start..*i])
                }
                None => false,
            }
        }
        fn lit(b: &[u8], i: &mut usize, l: &[u8]) -> bool {
            let ok = b[*i..].starts_with(l);
            *i += l.len();
            ok
        }
        fn string(b: &[u8], i: &mut usize) -> bool {
            *i += 1;
            while let Some(&c) = b.get(*i) {
                *i += 1;
                match c {
                    b'"' => return true,
                    b'\\' => match b.get(*i) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => *i += 1,
                        Some(b'u') => {
                            if !b.get(*i + 1..*i + 5).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return false;
                            }
                            *i += 5;
                        }
                        _ => return false,
                    },
                    c if c < 0x20 => return false,
                    _ => {}
                }
            }
            false
        }
        let b = s.as_bytes();
        let mut i = 0;
        let ok = val(b, &mut i, 0);
        ws(b, &mut i);
        ok && i == b.len()
    }

    #[test]
    fn nulls_and_bools() {
        let mut out = Vec::new();
        render_value(types::INT4, 0, None, &test_registry(), &mut out);
        assert_eq!(out, b"null");
        assert_eq!(txt(types::BOOL, "t"), "true");
        assert_eq!(txt(types::BOOL, "f"), "false");
        assert_eq!(bin(types::BOOL, "01"), "true");
        assert_eq!(txt(types::VOID, ""), "null");
    }

    #[test]
    fn integers_exact() {
        assert_eq!(txt(types::INT8, "9223372036854775807"), "9223372036854775807");
        assert_eq!(txt(types::INT8, "-9223372036854775808"), "-9223372036854775808");
        assert_eq!(bin(types::INT8, "7fffffffffffffff"), "9223372036854775807");
        assert_eq!(bin(types::INT2, "ffff"), "-1");
        assert_eq!(bin(types::INT4, "00000017"), "23");
        assert_eq!(bin(types::OID, "ffffffff"), "4294967295");
        assert_eq!(txt(types::OID, "4294967295"), "4294967295");
        assert_eq!(txt(POSINT, "5"), "5");
    }

    #[test]
    fn numeric_exact_text_and_binary() {
        let big = "123456789012345678901234567890.123456789";
        assert_eq!(txt(types::NUMERIC, big), big);
        assert_eq!(bin(types::NUMERIC, "000b000700000009000c0d801ed204d2162e23340d801ed204d2162e2328"), big);
        assert_eq!(txt(types::NUMERIC, "NaN"), "\"NaN\"");
        assert_eq!(txt(types::NUMERIC, "-Infinity"), "\"-Infinity\"");
        assert_eq!(bin(types::NUMERIC, "00000000c0000000"), "\"NaN\"");
        assert_eq!(bin(types::NUMERIC, "00000000d0000020"), "\"Infinity\"");
        assert_eq!(bin(types::NUMERIC, "00000000f0000020"), "\"-Infinity\"");
        assert_eq!(bin(types::NUMERIC, "0002ffff40000006000107d0"), "-0.000120");
        assert_eq!(bin(types::NUMERIC, "0000000000000000"), "0");
        assert_eq!(bin(types::NUMERIC, "00010001000000000001"), "10000");
        assert_eq!(bin(types::NUMERIC, "000200000000000100011388"), "1.5");
        assert_eq!(bin(types::NUMERIC, "0000000000000002"), "0.00");
    }

    #[test]
    fn floats() {
        assert_eq!(txt(types::FLOAT8, "0.1"), "0.1");
        assert_eq!(txt(types::FLOAT8, "1e+100"), "1e+100");
        assert_eq!(txt(types::FLOAT8, "1e-07"), "1e-07");
        assert_eq!(txt(types::FLOAT8, "NaN"), "\"NaN\"");
        assert_eq!(txt(types::FLOAT8, "Infinity"), "\"Infinity\"");
        assert_eq!(txt(types::FLOAT4, "-Infinity"), "\"-Infinity\"");
        assert_eq!(bin(types::FLOAT8, "3fb999999999999a"), "0.1");
        assert_eq!(bin(types::FLOAT8, "7ff8000000000000"), "\"NaN\"");
        assert_eq!(bin(types::FLOAT4, "3dcccccd"), "0.1");
        // float8[] {0.1,NaN,1e100} from array_send.
        assert_eq!(
            bin(
                1022,
                "0000000100000000000002bd0000000300000001000000083fb999999999999a000000087ff80000000000000000000854b249ad2594c37d"
            ),
            "[0.1,\"NaN\",1e100]"
        );
    }

    #[test]
    fn strings_and_string_like_types() {
        assert_eq!(txt(types::TEXT, "a \"q\" \\ \n"), r#""a \"q\" \\ \n""#);
        assert_eq!(txt(types::VARCHAR, ""), "\"\"");
        assert_eq!(txt(types::BPCHAR, "ab  "), "\"ab  \"");
        assert_eq!(txt(MOOD, "sad ok"), "\"sad ok\"");
        assert_eq!(
            txt(types::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""
        );
        assert_eq!(bin(types::UUID, "a0eebc999c0b4ef8bb6d6bb9bd380a11"), "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"");
        assert_eq!(txt(types::INTERVAL, "1 year 2 mons 3 days 04:05:06.5"), "\"1 year 2 mons 3 days 04:05:06.5\"");
        assert_eq!(txt(types::INTERVAL, "-1 days"), "\"-1 days\"");
        assert_eq!(txt(types::INET, "10.0.0.1/8"), "\"10.0.0.1/8\"");
        assert_eq!(txt(types::MONEY, "$1,000.00"), "\"$1,000.00\"");
        assert_eq!(txt(types::DATE, "2026-11-27"), "\"2026-11-27\"");
        assert_eq!(txt(types::TIMETZ, "18:34:44+05:30"), "\"18:34:44+05:30\"");
        assert_eq!(txt(types::BIT, "101"), "\"101\"");
        assert_eq!(txt(3904, "[1,5)"), "\"[1,5)\"");
        assert_eq!(txt(types::XML, "<a>x</a>"), "\"<a>x</a>\"");
        assert_eq!(txt(99999, "whatever"), "\"whatever\"");
        // Invalid UTF-8 still gives a string, never null.
        assert_eq!(txt(types::TEXT, "x"), "\"x\"");
        let mut out = Vec::new();
        render_value(types::TEXT, 0, Some(b"a\xffb"), &test_registry(), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "\"a\u{fffd}b\"");
    }

    #[test]
    fn bytea_both_forms() {
        let reg = test_registry();
        assert_eq!(column_format(types::BYTEA, &reg), 1);
        assert_eq!(bin(types::BYTEA, "deadbeef"), r#""\\xdeadbeef""#);
        assert_eq!(bin(types::BYTEA, ""), r#""\\x""#);
        assert_eq!(txt(types::BYTEA, r"\xdeadbeef"), r#""\\xdeadbeef""#);
        assert_eq!(txt(1001, r#"{"\\xdead"}"#), r#"["\\xdead"]"#);
    }

    #[test]
    fn json_embedded() {
        assert_eq!(txt(types::JSONB, r#"{"a": "x", "b": [1, 2]}"#), r#"{"a": "x", "b": [1, 2]}"#);
        assert_eq!(txt(types::JSON, " [1,\n2] "), " [1,\n2] ");
        assert_eq!(bin(types::JSONB, "017b2261223a202278222c202262223a205b312c20325d7d"), r#"{"a": "x", "b": [1, 2]}"#);
        // Unknown jsonb version: the raw bytes as a hex string rather than guessing.
        assert_eq!(bin(types::JSONB, "027b7d"), r#""\\x027b7d""#);
        assert_eq!(
            bin(3807, "000000010000000000000eda000000020000000100000009017b2261223a20317d00000005016e756c6c"),
            r#"[{"a": 1},null]"#
        );
        assert_eq!(txt(3807, r#"{"{\"a\": 1}","\"s\""}"#), r#"[{"a": 1},"s"]"#);
    }

    #[test]
    fn timestamps() {
        assert_eq!(txt(types::TIMESTAMPTZ, "2026-11-27 18:34:44.549313+00"), "\"2026-11-27T18:34:44.549313+00:00\"");
        assert_eq!(txt(types::TIMESTAMPTZ, "2026-11-28 00:04:44.549313+05:30"), "\"2026-11-28T00:04:44.549313+05:30\"");
        assert_eq!(txt(types::TIMESTAMPTZ, "2026-11-27 15:34:44-03"), "\"2026-11-27T15:34:44-03:00\"");
        assert_eq!(txt(types::TIMESTAMPTZ, "infinity"), "\"infinity\"");
        assert_eq!(txt(types::TIMESTAMPTZ, "-infinity"), "\"-infinity\"");
        assert_eq!(txt(types::TIMESTAMPTZ, "0044-03-15 12:00:00+00 BC"), "\"0044-03-15 12:00:00+00 BC\"");
        assert_eq!(txt(types::TIMESTAMPTZ, "1890-01-01 00:00:00+00:53:28"), "\"1890-01-01 00:00:00+00:53:28\"");
        assert_eq!(txt(types::TIMESTAMP, "2026-11-27 18:34:44"), "\"2026-11-27T18:34:44\"");
        assert_eq!(txt(types::TIMESTAMP, "infinity"), "\"infinity\"");
        assert_eq!(txt(types::TIMESTAMP, "0044-03-15 12:00:00 BC"), "\"0044-03-15 12:00:00 BC\"");
        // timestamptz[] goes as text, elements rewritten the same way.
        assert_eq!(column_format(1185, &test_registry()), 0);
        assert_eq!(txt(1185, r#"{"2026-01-02 03:04:05+00",NULL}"#), r#"["2026-01-02T03:04:05+00:00",null]"#);
    }

    const ARR2D: &str = r#"[["a,b","{"],["\"","\\"],[null,"NULL"],[""," sp "]]"#;

    #[test]
    fn arrays_2d_with_quoting() {
        let reg = test_registry();
        assert_eq!(column_format(1009, &reg), 1);
        assert_eq!(
            bin(
                1009,
                "0000000200000001000000190000000400000001000000020000000100000003612c62000000017b0000000122000000015cffffffff000000044e554c4c000000000000000420737020"
            ),
            ARR2D
        );
        assert_eq!(txt(1009, r#"{{"a,b","{"},{"\"","\\"},{NULL,"NULL"},{""," sp "}}"#), ARR2D);
        assert_eq!(txt(TAGARR, "{a,b}"), r#"["a","b"]"#);
        assert_eq!(column_format(TAGARR, &reg), 1);
    }

    #[test]
    fn arrays_bounds_empty_and_3d() {
        assert_eq!(bin(1007, "000000010000000000000017000000020000000200000004000000010000000400000002"), "[1,2]");
        assert_eq!(txt(1007, "[2:3]={1,2}"), "[1,2]");
        assert_eq!(bin(1007, "000000000000000000000017"), "[]");
        assert_eq!(txt(1007, "{}"), "[]");
        assert_eq!(txt(1009, "{}"), "[]");
        assert_eq!(
            bin(
                1007,
                "0000000300000000000000170000000200000001000000010000000100000002000000010000000400000001000000040000000200000004000000030000000400000004"
            ),
            "[[[1,2]],[[3,4]]]"
        );
        assert_eq!(txt(1007, "{{{1,2}},{{3,4}}}"), "[[[1,2]],[[3,4]]]");
        assert_eq!(
            bin(
                1231,
                "0000000100000001000006a400000003000000010000000c000200000000000100011388ffffffff0000000a00010000400000000002"
            ),
            "[1.5,null,-2]"
        );
        assert_eq!(txt(1231, "{1.5,NULL,-2,NaN}"), r#"[1.5,null,-2,"NaN"]"#);
        assert_eq!(bin(1000, "000000010000000000000010000000020000000100000001010000000100"), "[true,false]");
        assert_eq!(txt(1000, "{t,f}"), "[true,false]");
        assert_eq!(txt(MOOD_ARR, r#"{happy,"sad ok"}"#), r#"["happy","sad ok"]"#);
        assert_eq!(txt(1020, "{(1,1),(0,0);(2,2),(1,1)}"), r#"["(1,1),(0,0)","(2,2),(1,1)"]"#);
    }

    const OUTER_JSON: &str = r#"{"id":7,"tags":["x y",null,"q\""],"inn":{"x":1,"y":"in,ner"},"m":"sad ok","n":3.25}"#;

    #[test]
    fn composites() {
        let reg = test_registry();
        assert_eq!(column_format(OUTER, &reg), 1);
        assert_eq!(
            bin(
                OUTER,
                "0000000500000014000000080000000000000007000003f100000025000000010000000100000019000000030000000100000003782079ffffffff000000027122000040070000001e000000020000001700000004000000010000001900000006696e2c6e65720000400100000006736164206f6b000006a40000000c0002000000000002000309c4"
            ),
            OUTER_JSON
        );
        assert_eq!(txt(OUTER, r#"(7,"{""x y"",NULL,""q\\""""}","(1,""in,ner"")","sad ok",3.25)"#), OUTER_JSON);
        let arr = r#"[{"x":1,"y":"a"},null,{"x":null,"y":""}]"#;
        assert_eq!(
            bin(
                INNER_ARR,
                "00000001000000010000400700000003000000010000001900000002000000170000000400000001000000190000000161ffffffff000000140000000200000017ffffffff0000001900000000"
            ),
            arr
        );
        assert_eq!(txt(INNER_ARR, r#"{"(1,a)",NULL,"(,\"\")"}"#), arr);
        assert_eq!(txt(INNER, "(,)"), r#"{"x":null,"y":null}"#);
        // Dropped attributes are absent on the wire; keys are escaped.
        let dropt = r#"{"a":1,"we,ird \"name":[2]}"#;
        assert_eq!(
            bin(
                DROPT,
                "00000002000000170000000400000001000003ef0000001c00000001000000000000001700000001000000010000000400000002"
            ),
            dropt
        );
        assert_eq!(txt(DROPT, "(1,{2})"), dropt);
        // A range field forces text for the whole column.
        assert_eq!(column_format(WITHTS, &reg), 0);
        assert_eq!(
            txt(WITHTS, r#"("2026-01-02 03:04:05+00","[1,5)")"#),
            r#"{"t":"2026-01-02T03:04:05+00:00","r":"[1,5)"}"#
        );
        // Field-count mismatch: the text itself, not a half-object.
        assert_eq!(txt(INNER, "(1,a,b)"), r#""(1,a,b)""#);
        assert_eq!(txt(INNER, "(1)"), r#""(1)""#);
    }

    #[test]
    fn anonymous_records() {
        assert_eq!(column_format(types::RECORD, &test_registry()), 0);
        assert_eq!(txt(types::RECORD, r#"(1,"a b",)"#), r#"{"f1":"1","f2":"a b","f3":null}"#);
        assert_eq!(txt(2287, r#"{"(1,x)",NULL}"#), r#"[{"f1":"1","f2":"x"},null]"#);
    }

    #[test]
    fn rows_and_keys() {
        let reg = test_registry();
        assert_eq!(escaped_key("a\"b"), br#""a\"b":"#.to_vec());
        let mut out = Vec::new();
        render_row_object(
            &[("id".into(), types::INT4, 0), ("n\"m".into(), types::TEXT, 0)],
            &[Some(b"1"), None],
            &reg,
            &mut out,
        );
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"id":1,"n\"m":null}"#);
        let cols = [PreparedColumn::new("b", types::BYTEA, &reg), PreparedColumn::new("t", 1009, &reg)];
        assert_eq!(cols[0].format, 1);
        let mut out = Vec::new();
        let t = hex("000000000000000000000019");
        render_row_prepared(&cols, [Some(&b"\x01"[..]), Some(&t[..])], &reg, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"b":"\\x01","t":[]}"#);
    }

    #[test]
    fn malformed_input_falls_back_to_strings() {
        assert_eq!(bin(types::INT4, "0001"), r#""\\x0001""#);
        assert_eq!(bin(types::BOOL, "02"), r#""\\x02""#);
        assert_eq!(bin(types::NUMERIC, "0001"), r#""\\x0001""#);
        assert_eq!(bin(types::NUMERIC, "00010000000000002710"), r#""\\x00010000000000002710""#);
        assert_eq!(
            bin(1007, "7fffffff00000000000000177fffffff00000001"),
            r#""\\x7fffffff00000000000000177fffffff00000001""#
        );
        assert_eq!(txt(types::INT4, "12abc"), r#""12abc""#);
        assert_eq!(txt(1007, "{1,2"), r#""{1,2""#);
        assert_eq!(txt(1007, "{1,\"2}"), r#""{1,\"2}""#);
        assert_eq!(txt(INNER, "(1,\"a"), r#""(1,\"a""#);
        assert_eq!(txt(types::JSONB, ""), r#""""#);
    }

    /// Every captured binary value, truncated at every length and with bytes flipped, and random
    /// bytes in both formats for every interesting type: never a panic, always valid JSON.
    #[test]
    fn fuzz_never_panics() {
        let reg = test_registry();
        let samples: &[(u32, &str)] = &[
            (
                OUTER,
                "0000000500000014000000080000000000000007000003f100000025000000010000000100000019000000030000000100000003782079ffffffff000000027122000040070000001e000000020000001700000004000000010000001900000006696e2c6e65720000400100000006736164206f6b000006a40000000c0002000000000002000309c4",
            ),
            (
                1009,
                "0000000200000001000000190000000400000001000000020000000100000003612c62000000017b0000000122000000015cffffffff000000044e554c4c000000000000000420737020",
            ),
            (
                INNER_ARR,
                "00000001000000010000400700000003000000010000001900000002000000170000000400000001000000190000000161ffffffff000000140000000200000017ffffffff0000001900000000",
            ),
            (types::NUMERIC, "000b000700000009000c0d801ed204d2162e23340d801ed204d2162e2328"),
            (
                1022,
                "0000000100000000000002bd0000000300000001000000083fb999999999999a000000087ff80000000000000000000854b249ad2594c37d",
            ),
        ];
        let oids = [
            types::BOOL,
            types::INT2,
            types::INT4,
            types::INT8,
            types::OID,
            types::FLOAT4,
            types::FLOAT8,
            types::NUMERIC,
            types::JSON,
            types::JSONB,
            types::BYTEA,
            types::TIMESTAMPTZ,
            types::TIMESTAMP,
            types::UUID,
            types::TEXT,
            types::RECORD,
            1007,
            1009,
            1231,
            3807,
            2287,
            1185,
            OUTER,
            INNER,
            INNER_ARR,
            DROPT,
            WITHTS,
            MOOD,
            POSINT,
            TAGARR,
        ];
        let check = |oid: u32, fmt: i16, raw: &[u8]| {
            let mut out = Vec::new();
            render_value(oid, fmt, Some(raw), &reg, &mut out);
            let s = String::from_utf8(out).expect("utf8");
            assert!(json_ok(&s), "oid {oid} fmt {fmt} raw {raw:?}: {s}");
            assert_ne!(s, "null");
        };
        for (oid, h) in samples {
            let raw = hex(h);
            for n in 0..=raw.len() {
                check(*oid, 1, &raw[..n]);
            }
            for i in 0..raw.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut r = raw.clone();
                    r[i] ^= flip;
                    check(*oid, 1, &r);
                }
            }
        }
        let texts = [
            r#"(7,"{""x y"",NULL,""q\\""""}","(1,""in,ner"")","sad ok",3.25)"#,
            r#"{{"a,b","{"},{"\"","\\"},{NULL,"NULL"},{""," sp "}}"#,
            r#"{"(1,a)",NULL,"(,\"\")"}"#,
            "[2:3]={1,2}",
            "2026-11-27 15:34:44-03",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for t in texts {
            let t = t.as_bytes();
            for &oid in &oids {
                for n in 0..=t.len() {
                    check(oid, 0, &t[..n]);
                }
            }
        }
        for _ in 0..3000 {
            let len = (next() % 40) as usize;
            let alphabet = b"{}()\",\\ NUL0123456789:-+.e\x00\xff\x01[]=";
            let raw: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 3 == 0 { (r >> 8) as u8 } else { alphabet[(r >> 8) as usize % alphabet.len()] }
                })
                .collect();
            let oid = oids[(next() % oids.len() as u64) as usize];
            check(oid, (next() % 2) as i16, &raw);
        }
    }
}

#[cfg(test)]
mod json_check_tests {
    use super::is_json_document as ok;

    #[test]
    fn accepts_documents() {
        for d in [
            "1",
            "-0.5e+3",
            "\"a\\u00e9\\n\"",
            "true",
            " null ",
            "[]",
            "{}",
            "[1,[2,[3]]]",
            "{\"a\": {\"b\": [1, {\"c\": null}]}, \"d\": \"x\"}",
            "[\"\u{e9}\"]",
        ] {
            assert!(ok(d.as_bytes()), "{d}");
        }
        let deep = format!("{}1{}", "[".repeat(1000), "]".repeat(1000));
        assert!(ok(deep.as_bytes()));
        let deep_obj = format!("{}1{}", "{\"k\":[".repeat(300), "]}".repeat(300));
        assert!(ok(deep_obj.as_bytes()));
    }

    #[test]
    fn rejects_garbage() {
        for d in [
            "",
            " ",
            "(",
            "[1,]",
            "{\"a\"}",
            "{\"a\":1,}",
            "[1 2]",
            "01",
            "1.",
            "\"\\x\"",
            "\"a",
            "[1]]",
            "{\"a\":1]",
            "[\"\u{1}\"]",
            "tru",
            "nul",
            "NaN",
            "{1:2}",
            "[1]x",
        ] {
            assert!(!ok(d.as_bytes()), "{d:?}");
        }
        assert!(!ok(b"\"\xff\""));
        let unbalanced = format!("{}1{}", "[".repeat(200), "]".repeat(199));
        assert!(!ok(unbalanced.as_bytes()));
        let mixed = format!("{}1{}", "[".repeat(150), "}".repeat(150));
        assert!(!ok(mixed.as_bytes()));
    }
}
