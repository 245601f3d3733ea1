//! PostgreSQL's text literals for arrays (`{a,"b c",NULL}`) and records (`(1,"x y",)`): a walker that
//! reports brackets and unescaped elements. Pure byte-slice code, shared by row rendering and by type
//! introspection.

/// Deepest nesting of arrays, composites and domain chains followed when reading or writing values: a
/// catalog cannot legitimately nest this deep, and the bound keeps corrupt input or a cyclic registry
/// from recursing forever.
pub const MAX_DEPTH: usize = 32;

/// A literal or binary value that does not parse as its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

pub type R = Result<(), Malformed>;

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
        return Err(Malformed);
    }
    let mut scratch = Vec::new();
    walk_level(&mut c, delim, f, &mut scratch, 0)?;
    c.skip_ws();
    if c.i == s.len() { Ok(()) } else { Err(Malformed) }
}

fn walk_level(
    c: &mut Cursor<'_>,
    delim: u8,
    f: &mut dyn FnMut(ArrayEvent<'_>),
    scratch: &mut Vec<u8>,
    depth: usize,
) -> R {
    if depth > MAX_DEPTH {
        return Err(Malformed);
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
            None => return Err(Malformed),
            Some(b'{') => walk_level(c, delim, f, scratch, depth + 1)?,
            Some(b'"') => {
                c.i += 1;
                scratch.clear();
                loop {
                    match c.peek() {
                        None => return Err(Malformed),
                        Some(b'"') => {
                            c.i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            let b = c.s.get(c.i + 1).copied().ok_or(Malformed)?;
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
                            return Err(Malformed);
                        }
                    }
                    c.i += 1;
                }
                let mut token = &c.s[start..c.i];
                while token.last().is_some_and(|b| b.is_ascii_whitespace()) {
                    token = &token[..token.len() - 1];
                }
                if token.is_empty() {
                    return Err(Malformed);
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
            _ => return Err(Malformed),
        }
    }
}

/// Walks a record literal `(a,"b c",)`, calling `f` per field; an empty unquoted field is NULL.
pub fn walk_record(s: &[u8], f: &mut dyn FnMut(Option<&[u8]>)) -> R {
    let mut c = Cursor { s, i: 0 };
    c.skip_ws();
    if c.peek() != Some(b'(') {
        return Err(Malformed);
    }
    c.i += 1;
    let mut scratch = Vec::new();
    loop {
        scratch.clear();
        let mut seen = false;
        let mut in_quotes = false;
        loop {
            let b = c.peek().ok_or(Malformed)?;
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
                        scratch.push(c.s.get(c.i + 1).copied().ok_or(Malformed)?);
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
                    scratch.push(c.s.get(c.i + 1).copied().ok_or(Malformed)?);
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
    if c.i == s.len() { Ok(()) } else { Err(Malformed) }
}
