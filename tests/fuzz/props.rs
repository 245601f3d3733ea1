//! Property checks shared by the cargo-fuzz targets (`tests/fuzz/fuzz_targets/*.rs`) and the
//! deterministic mutation test (`tests/codec_fuzz.rs`), so CI checks exactly what the fuzzer
//! checks. Every check takes raw bytes: leading bytes pick limits, types or a structured mode,
//! the rest is the codec's input. A check panics only when the codec breaks a property (or
//! panics itself); any input is acceptable. The returned flag says whether the input got past
//! the codec's validation (accepted, decoded, rendered structurally), so the deterministic test
//! can confirm that its mutants exercise both outcomes.
//!
//! Dependencies: the gateway plus `bytes`, `crc32fast`, `miniz_oxide` and `postgres-protocol`,
//! which are already dependencies of the gateway itself.
#![allow(dead_code)]

use std::sync::OnceLock;

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use stonescriptdb_gateway::call::encode::encode_param;
use stonescriptdb_gateway::call::literal::{ArrayEvent, walk_array};
use stonescriptdb_gateway::call::render::{column_format, render_value};
use stonescriptdb_gateway::call::request::CallRequest;
use stonescriptdb_gateway::call::types::{self, TypeInfo, TypeKind, TypeRegistry};
use stonescriptdb_gateway::config::Limits;
use stonescriptdb_gateway::deploy::archive::{ArchiveLimits, Folder, read_archive};
use stonescriptdb_gateway::deploy::form::DeployForm;
use stonescriptdb_gateway::deploy::gzip::{GzipErrorKind, gunzip};
use stonescriptdb_gateway::deploy::sql::{normalize_for_checksum, split_statements};
use stonescriptdb_gateway::error::Kind;
use stonescriptdb_gateway::http::chunked::ChunkedDecoder;
use stonescriptdb_gateway::http::request::parse_head;
use stonescriptdb_gateway::json::{self, Value};
use stonescriptdb_gateway::pg::frame::{Backend, data_row_fields, read_message};
use stonescriptdb_gateway::pg::scram::{MAX_ITERATIONS, Scram};

/// Reads choices off the front of a fuzz input; past the end every read yields zeros.
pub struct Src<'a>(&'a [u8]);

impl<'a> Src<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Src(data)
    }

    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) << 8 | u16::from(self.u8())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) << 16 | u32::from(self.u16())
    }

    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    /// A length byte (reduced modulo `m`), then that many bytes.
    pub fn chunk(&mut self, m: usize) -> &'a [u8] {
        let n = usize::from(self.u8()) % m;
        self.take(n)
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::from(self.u8()) % items.len()]
    }

    pub fn rest(self) -> &'a [u8] {
        self.0
    }
}

// ---------------------------------------------------------------------------------------------
// http_head

/// `parse_head`: no panic, deterministic, `n` within the input and the limit, strict prefixes
/// of an accepted head are incomplete, and heads longer than `max_head_bytes` get 431.
pub fn http_head(data: &[u8]) -> bool {
    let mut src = Src::new(data);
    let sel = src.u8();
    let cut = usize::from(src.u16());
    let buf = src.rest();
    let limits = if sel & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            max_headers: 1 + usize::from(sel >> 1) % 8,
            max_head_bytes: 8 + usize::from(sel >> 4) * 8,
            ..Limits::default()
        }
    };
    let first = parse_head(buf, &limits);
    let shown = format!("{first:?}");
    assert_eq!(shown, format!("{:?}", parse_head(buf, &limits)), "not deterministic");
    match &first {
        Ok(Some((head, n))) => {
            assert!(*n <= buf.len(), "head of {n} bytes in {} bytes", buf.len());
            assert!(*n <= limits.max_head_bytes, "head of {n} bytes accepted");
            assert!(head.path.starts_with('/'));
            // The head is self-delimiting: its own bytes parse the same way.
            let own = parse_head(&buf[..*n], &limits);
            assert_eq!(format!("{own:?}"), shown, "head changes with what follows it");
            // A reader that got the head in pieces must have waited, not failed, before.
            for len in [n - 1, n / 2, cut % n] {
                let part = parse_head(&buf[..len], &limits);
                assert!(matches!(part, Ok(None)), "prefix of {len}/{n} bytes: {part:?}");
            }
        }
        Ok(None) => assert!(
            buf.len() <= limits.max_head_bytes,
            "incomplete head of {} bytes not refused (max {})",
            buf.len(),
            limits.max_head_bytes
        ),
        Err(e) => assert!(matches!(e.kind, Kind::InvalidRequest | Kind::HeadersTooLarge), "{e:?}"),
    }
    // The same bytes without the size limit: what is too long there must be 431 here.
    if buf.len() > limits.max_head_bytes {
        let unlimited = Limits { max_head_bytes: usize::MAX, ..limits.clone() };
        let oversized = match parse_head(buf, &unlimited) {
            Ok(None) => true,
            Ok(Some((_, n))) => n > limits.max_head_bytes,
            Err(_) => false,
        };
        if oversized {
            match &first {
                Err(e) => assert_eq!(e.kind, Kind::HeadersTooLarge, "{e:?}"),
                other => panic!("oversized head accepted: {other:?}"),
            }
            assert_eq!(first.as_ref().unwrap_err().status(), 431);
        }
    }
    matches!(first, Ok(Some(_)))
}

// ---------------------------------------------------------------------------------------------
// chunked

#[derive(Debug, PartialEq)]
enum ChunkedOutcome {
    /// Bytes used so far and whether the body is complete.
    Ok {
        used: usize,
        done: bool,
    },
    Err(Kind, String),
}

/// `ChunkedDecoder`: whole input vs the same input in fuzzer-chosen pieces gives the same
/// bytes and outcome; output never exceeds the limit; a complete body needs only its own bytes.
pub fn chunked(data: &[u8]) -> bool {
    let mut src = Src::new(data);
    let max = src.pick(&[0usize, 1, 7, 64, 1000, 1 << 20]);
    let mut cuts: Vec<usize> = (0..src.u8() % 8).map(|_| usize::from(src.u16())).collect();
    let body = src.rest();
    let (whole_out, whole) = run_chunked(body, &[], max);
    for c in &mut cuts {
        *c %= body.len() + 1;
    }
    cuts.sort_unstable();
    let (split_out, split) = run_chunked(body, &cuts, max);
    assert_eq!(whole, split, "outcome depends on read boundaries {cuts:?}");
    assert_eq!(whole_out, split_out, "output depends on read boundaries {cuts:?}");
    assert!(whole_out.len() <= max, "{} bytes out with max {max}", whole_out.len());
    let (bytewise_out, bytewise) = run_chunked(body, &(0..=body.len()).collect::<Vec<_>>(), max);
    assert_eq!(whole, bytewise, "bytewise outcome differs");
    assert_eq!(whole_out, bytewise_out, "bytewise output differs");
    if let ChunkedOutcome::Ok { used, done: true } = whole {
        let (own_out, own) = run_chunked(&body[..used], &[], max);
        assert_eq!(own, whole);
        assert_eq!(own_out, whole_out);
    }
    matches!(whole, ChunkedOutcome::Ok { done: true, .. })
}

fn run_chunked(body: &[u8], cuts: &[usize], max: usize) -> (Vec<u8>, ChunkedOutcome) {
    let mut d = ChunkedDecoder::new(max);
    let mut out = Vec::new();
    let mut used = 0;
    let mut start = 0;
    for end in cuts.iter().copied().chain([body.len()]) {
        if end < start || d.is_done() {
            continue;
        }
        let piece = &body[start..end];
        match d.feed(piece, &mut out) {
            Ok(n) => {
                assert!(n <= piece.len());
                if n < piece.len() {
                    assert!(d.is_done(), "stopped early without finishing the body");
                }
                used += n;
            }
            Err(e) => return (out, ChunkedOutcome::Err(e.kind, e.into_message())),
        }
        start = end;
    }
    let done = d.is_done();
    (out, ChunkedOutcome::Ok { used, done })
}

// ---------------------------------------------------------------------------------------------
// gzip

const FTEXT: u8 = 0x01;
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;

/// One gzip member built by hand: `flags` chooses the optional header fields.
pub fn gzip_member(data: &[u8], level: u8, flags: u8) -> Vec<u8> {
    let flags = flags & (FTEXT | FHCRC | FEXTRA | FNAME | FCOMMENT);
    let mut v = vec![0x1f, 0x8b, 8, flags, 0, 0, 0, 0, 0, 3];
    if flags & FEXTRA != 0 {
        v.extend_from_slice(&[6, 0, b'S', b'G', 2, 0, 1, 2]);
    }
    if flags & FNAME != 0 {
        v.extend_from_slice(b"schema.tar\0");
    }
    if flags & FCOMMENT != 0 {
        v.extend_from_slice(b"made by props.rs\0");
    }
    if flags & FHCRC != 0 {
        let crc = (crc32fast::hash(&v) & 0xffff) as u16;
        v.extend_from_slice(&crc.to_le_bytes());
    }
    v.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(data, level % 11));
    v.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v
}

/// `gunzip`: never panics, never returns more than `max`; hand-built members round-trip.
pub fn gzip(data: &[u8]) -> bool {
    let mut src = Src::new(data);
    let sel = src.u8();
    match sel % 3 {
        0 => {
            let max = [0usize, 1, 100, 4096, 1 << 20][usize::from(sel >> 2) % 5];
            let result = gunzip(src.rest(), max);
            if let Ok(out) = &result {
                assert!(out.len() <= max, "{} bytes out with max {max}", out.len());
            }
            result.is_ok()
        }
        1 => {
            let level = src.u8();
            let flags = src.u8();
            let split = usize::from(src.u16());
            let padding = usize::from(src.u8() % 4) * 7;
            let payload = src.rest();
            let mut gz = gzip_member(payload, level, flags);
            assert_eq!(gunzip(&gz, payload.len()).as_deref(), Ok(payload), "round trip");
            if !payload.is_empty() {
                let e = gunzip(&gz, payload.len() - 1).unwrap_err();
                assert_eq!(e.kind, GzipErrorKind::TooLarge, "{e}");
            }
            // Two members and zero padding decode to the concatenation.
            let at = split % (payload.len() + 1);
            gz = gzip_member(&payload[..at], level, flags);
            gz.extend_from_slice(&gzip_member(&payload[at..], level.wrapping_add(3), flags >> 1));
            gz.resize(gz.len() + padding, 0);
            assert_eq!(gunzip(&gz, payload.len()).as_deref(), Ok(payload), "two members");
            true
        }
        _ => {
            // A valid member with fuzzer-chosen byte edits: corruption must be an error or
            // stay within the limit, never a panic.
            let level = src.u8();
            let flags = src.u8();
            let edits: Vec<(u16, u8)> = (0..src.u8() % 6).map(|_| (src.u16(), src.u8())).collect();
            let truncate = usize::from(src.u16());
            let payload = src.rest();
            let mut gz = gzip_member(payload, level, flags);
            for (at, b) in edits {
                let i = usize::from(at) % gz.len();
                gz[i] = b;
            }
            if truncate % 3 == 0 {
                gz.truncate(truncate % (gz.len() + 1));
            }
            let max = payload.len() + usize::from(sel >> 4);
            let result = gunzip(&gz, max);
            if let Ok(out) = &result {
                assert!(out.len() <= max);
            }
            result.is_ok()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// archive

/// Path components the structured archive mode builds names from.
const COMPONENTS: &[&str] = &[
    "postgresql",
    "postgresql",
    "tables",
    "functions",
    "migrations",
    "seeders",
    "types",
    "extensions",
    "top",
    "other",
    "..",
    ".",
    "",
    "a.sql",
    "b.pgsql",
    "C.PSSQL",
    "001_init.sql",
    "list.txt",
    ".hidden.sql",
    "..\\up.sql",
    "a\\..\\..\\b.sql",
    "\\abs.sql",
    "x/../y.sql",
    "é.sql",
    "nul\0.sql",
    "/",
    "README.md",
];

const SQL_BODIES: &[&[u8]] = &[
    b"CREATE TABLE t (id int);",
    b"\xEF\xBB\xBFSELECT 1;",
    b"-- gateway: no-transaction\nCREATE INDEX CONCURRENTLY i ON t (id);",
    b"\xff\xfe not utf-8",
    b"",
    b"CREATE EXTENSION pgcrypto;\n",
];

/// Tar entry types offered to the fuzzer: regular (both spellings), contiguous, dir, links,
/// devices, FIFO, pax, GNU long name and sparse, and garbage.
const TAR_KINDS: &[u8] = b"00\x0075123467xgLKSVz";

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    let s = &s.as_bytes()[s.len().saturating_sub(digits)..];
    field[..s.len()].copy_from_slice(s);
    field[digits] = 0;
}

/// One 512-byte tar header. `gnu` picks the GNU magic, otherwise POSIX ustar.
pub fn tar_header(name: &[u8], prefix: &[u8], kind: u8, size: u64, gnu: bool) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = kind;
    if gnu {
        h[257..265].copy_from_slice(b"ustar  \0");
    } else {
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let p = prefix.len().min(155);
        h[345..345 + p].copy_from_slice(&prefix[..p]);
    }
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    octal(&mut h[148..155], u64::from(sum));
    h[155] = b' ';
    h
}

fn tar_push(tar: &mut Vec<u8>, header: &[u8; 512], data: &[u8]) {
    tar.extend_from_slice(header);
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
}

/// Builds a tar from fuzzer-chosen entries: names from [`COMPONENTS`], types, sizes (honest or
/// not) and naming schemes (plain, ustar prefix, GNU long name, pax path).
pub fn fuzz_tar(src: &mut Src<'_>) -> Vec<u8> {
    let mut tar = Vec::new();
    for _ in 0..1 + src.u8() % 8 {
        let style = src.u8();
        // Most entries are well-formed schema files, so whole archives get accepted and
        // the path checks have something to look at; the rest are drawn from hostile parts.
        let sane = style & 0x60 != 0x60;
        let parts: Vec<&str> = if sane {
            let mut p = src.pick(&[&["postgresql"][..], &["top", "postgresql"], &[]]).to_vec();
            p.push(src.pick(&["tables", "functions", "migrations", "seeders", "types", "extensions"]));
            p.push(src.pick(&["a.sql", "b.pgsql", "001_init.sql", "list.txt", "é.sql", "C.PSSQL", "a\\..\\..\\b.sql"]));
            p
        } else {
            (0..1 + src.u8() % 5).map(|_| src.pick(COMPONENTS)).collect()
        };
        let name = parts.join("/");
        let kind = if sane { src.pick(b"00\x007") } else { src.pick(TAR_KINDS) };
        let data: Vec<u8> = match src.u8() % 4 {
            0 => src.chunk(64).to_vec(),
            _ => src.pick(SQL_BODIES).to_vec(),
        };
        let size = match style & 3 {
            0..=2 => data.len() as u64,
            _ if sane => data.len() as u64,
            _ => [0u64, 1, 511, 513, 1 << 20, 0o77777777777][usize::from(src.u8()) % 6],
        };
        let gnu = style & 4 != 0;
        match (style >> 3) & 3 {
            1 if parts.len() > 1 && !gnu => {
                let (last, dirs) = parts.split_last().unwrap();
                let prefix = dirs.join("/");
                tar_push(&mut tar, &tar_header(last.as_bytes(), prefix.as_bytes(), kind, size, gnu), &data);
                continue;
            }
            2 => {
                let mut long = name.clone().into_bytes();
                long.push(0);
                tar_push(&mut tar, &tar_header(b"././@LongLink", b"", b'L', long.len() as u64, true), &long);
            }
            3 => {
                let rec = |k: &str, v: &str| {
                    let body = format!(" {k}={v}\n");
                    let mut len = body.len() + 1;
                    while format!("{len}{body}").len() != len {
                        len += 1;
                    }
                    format!("{len}{body}")
                };
                let mut pax = rec("path", &name);
                if style & 0x80 != 0 {
                    pax.push_str(&rec("size", &data.len().to_string()));
                }
                tar_push(&mut tar, &tar_header(b"PaxHeader", b"", b'x', pax.len() as u64, false), pax.as_bytes());
            }
            _ => {}
        }
        tar_push(&mut tar, &tar_header(name.as_bytes(), b"", kind, size, gnu), &data);
    }
    if !src.u8().is_multiple_of(8) {
        tar.resize(tar.len() + 1024, 0);
    }
    tar
}

/// `read_archive`: never panics on raw bytes nor on gzip'd fuzzer-built tars, and every
/// accepted schema file has a clean relative path under a known folder.
pub fn archive(data: &[u8]) -> bool {
    let mut src = Src::new(data);
    let sel = src.u8();
    let limits = ArchiveLimits {
        max_upload_bytes: 1 << 20,
        max_expanded_bytes: if sel & 2 == 0 { 1 << 20 } else { 4096 },
        max_entries: if sel & 4 == 0 { 100 } else { 3 },
        max_file_bytes: if sel & 8 == 0 { 64 * 1024 } else { 16 },
        max_path_bytes: if sel & 16 == 0 { 512 } else { 24 },
    };
    let upload = if sel & 1 == 0 {
        src.rest().to_vec()
    } else {
        let level = src.u8();
        gzip_member(&fuzz_tar(&mut src), level, 0)
    };
    let Ok(arch) = read_archive(&upload, &limits) else {
        return false;
    };
    assert_eq!(arch.checksum.len(), 64);
    let mut total = 0;
    for folder in Folder::ALL {
        for f in arch.files(folder) {
            total += 1;
            assert_eq!(f.folder, folder);
            let p = &f.path;
            assert!(!p.starts_with('/') && !p.starts_with('\\'), "absolute path {p:?}");
            let comps: Vec<&str> = p.split('/').collect();
            assert!(comps.len() >= 2, "file outside any folder: {p:?}");
            assert_eq!(comps[0], folder.name(), "{p:?} filed under {folder:?}");
            for c in &comps {
                assert!(!c.is_empty() && *c != "." && *c != "..", "unclean path {p:?}");
                assert!(!c.split('\\').any(|s| s == ".."), "path {p:?} climbs with '\\'");
                assert!(!c.contains('\0'), "NUL in {p:?}");
            }
            assert_eq!(&f.name, comps.last().unwrap());
            assert!(!f.content.starts_with('\u{feff}'));
        }
    }
    assert!(total > 0, "an accepted archive has schema files");
    true
}

// ---------------------------------------------------------------------------------------------
// sql_split

/// `split_statements`: no panic, statements are in-order substrings of the input, trimmed and
/// non-empty; `normalize_for_checksum` is idempotent.
pub fn sql_split(data: &[u8]) -> bool {
    let sql = String::from_utf8_lossy(data);
    let stmts = split_statements(&sql);
    let lines = sql.matches('\n').count() + 1;
    let mut pos = 0;
    for st in &stmts {
        let t = &st.text;
        assert!(!t.is_empty());
        let ascii_ws = |c: char| c.is_ascii_whitespace();
        assert!(!t.starts_with(ascii_ws) && !t.ends_with(ascii_ws), "statement not trimmed: {t:?}");
        assert!((1..=lines).contains(&st.line), "line {} of {lines}", st.line);
        // The text is a piece of the input, after the previous one, that ends where a token
        // ends: at the end, before whitespace, `;` or a comment (a match inside a comment may
        // come first, hence the search over every match).
        let ends_token = |end: usize| match sql.as_bytes().get(end) {
            None => true,
            Some(&b) => b.is_ascii_whitespace() || matches!(b, b';' | b'-' | b'/'),
        };
        // Matches may overlap (the real one can start inside a false one), so step by char.
        let mut from = pos;
        let mut found = None;
        while let Some(i) = sql[from..].find(t.as_str()) {
            let start = from + i;
            if ends_token(start + t.len()) {
                found = Some(start + t.len());
                break;
            }
            from = start + sql[start..].chars().next().map_or(1, char::len_utf8);
        }
        pos = found.unwrap_or_else(|| panic!("{t:?} is not a whole piece of the input after byte {pos}"));
        let norm = normalize_for_checksum(t);
        assert_eq!(normalize_for_checksum(&norm), norm, "normalize not idempotent on {t:?}");
    }
    assert_eq!(split_statements(&sql), stmts, "not deterministic");
    let norm = normalize_for_checksum(&sql);
    assert_eq!(normalize_for_checksum(&norm), norm, "normalize not idempotent");
    !stmts.is_empty()
}

// ---------------------------------------------------------------------------------------------
// pg_frame

const PG_TAGS: &[u8] = b"DDDTTERRNCZ123nsItHGWdcAKSVx";

/// Frames from fuzz bytes: a tag, a body, and a length that is honest unless the fuzzer lies.
fn fuzz_frames(src: &mut Src<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + src.u8() % 6 {
        let tag = src.pick(PG_TAGS);
        let style = src.u8();
        let mut body = Vec::new();
        match (tag, style % 4) {
            (b'D', 0 | 1) => {
                let n = src.u8() % 5;
                body.extend_from_slice(&u16::from(n).to_be_bytes());
                for _ in 0..n {
                    let len = match src.u8() % 8 {
                        0 => -1i32,
                        1 => src.u32() as i32,
                        k => i32::from(k) * 3,
                    };
                    body.extend_from_slice(&len.to_be_bytes());
                    body.extend_from_slice(src.take(usize::try_from(len).unwrap_or(0)));
                }
            }
            (b'R', 0 | 1) => {
                body.extend_from_slice(&src.pick(&[0i32, 3, 5, 10, 11, 12, 99]).to_be_bytes());
                body.extend_from_slice(b"SCRAM-SHA-256\0");
                body.extend_from_slice(src.chunk(16));
            }
            _ => body.extend_from_slice(src.chunk(256)),
        }
        let len = if style & 0x80 == 0 { body.len() as u32 + 4 } else { src.u32() };
        out.push(tag);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&body);
    }
    out
}

/// Drains `buf` with `read_message`, checking each step; returns what was decoded.
fn drain_frames(buf: &mut BytesMut, log: &mut Vec<String>) -> bool {
    loop {
        let before = buf.to_vec();
        match read_message(buf) {
            Ok(None) => {
                assert_eq!(&buf[..], &before[..], "Ok(None) changed the buffer");
                if before.len() >= 5 {
                    let len = i32::from_be_bytes([before[1], before[2], before[3], before[4]]);
                    assert!(before.len() < len as usize + 1, "complete frame left unread");
                }
                return true;
            }
            Ok(Some(msg)) => {
                let len = i32::from_be_bytes([before[1], before[2], before[3], before[4]]);
                let total = usize::try_from(len).expect("negative length accepted") + 1;
                assert!(total >= 5 && before.len() >= total, "decoded a partial frame");
                assert_eq!(&buf[..], &before[total..], "did not consume exactly one frame");
                if let Backend::Message(Message::DataRow(row)) = &msg {
                    let range = row.buffer().as_ptr_range();
                    if let Ok(fields) = data_row_fields(row) {
                        for f in fields.into_iter().flatten() {
                            let r = f.as_ptr_range();
                            assert!(r.start >= range.start && r.end <= range.end);
                        }
                    }
                }
                log.push(format!("{msg:?}"));
            }
            Err(e) => {
                let len = before.get(1..5).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                let rest_ok = buf[..] == before[..]
                    || len.and_then(|l| usize::try_from(l).ok()).is_some_and(|l| before.get(l + 1..) == Some(&buf[..]));
                assert!(rest_ok, "error consumed a partial frame");
                log.push(format!("error {e}"));
                return false;
            }
        }
    }
}

/// `read_message`: no panic, consumes whole frames only, DataRows split inside their frame,
/// and bytes arriving in pieces decode to the same messages as all at once.
pub fn pg_frame(data: &[u8]) -> bool {
    let mut src = Src::new(data);
    let sel = src.u8();
    let step = 1 + usize::from(src.u8() % 32);
    let bytes = if sel & 1 == 0 { src.rest().to_vec() } else { fuzz_frames(&mut src) };
    let mut whole = Vec::new();
    let mut buf = BytesMut::from(&bytes[..]);
    drain_frames(&mut buf, &mut whole);
    let mut pieces = Vec::new();
    let mut buf = BytesMut::new();
    for chunk in bytes.chunks(step) {
        buf.extend_from_slice(chunk);
        if !drain_frames(&mut buf, &mut pieces) {
            break;
        }
    }
    assert_eq!(whole, pieces, "messages depend on read boundaries (step {step})");
    whole.iter().any(|m| !m.starts_with("error"))
}

// ---------------------------------------------------------------------------------------------
// SCRAM

/// The nonce `scram` logs in with.
pub const SCRAM_NONCE: &str = "fuzzNonce0123456789abcde";

/// A server-first-message, a NUL, a server-final-message. `Scram`'s exchange never panics; a proof
/// goes out only for a nonce that extends ours, a decodable salt and 1..=MAX_ITERATIONS rounds, and
/// has the RFC's shape; no server-final-message is taken without the signature the keys give.
pub fn scram(data: &[u8]) -> bool {
    let (first, last) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let (mut s, _) = Scram::with_nonce("pencil", "", SCRAM_NONCE);
    let Ok(reply) = s.server_first(first) else { return false };
    let text = std::str::from_utf8(first).expect("accepted server-first-message is UTF-8");
    let mut fields = text.split(',');
    let nonce = fields.next().and_then(|f| f.strip_prefix("r=")).expect("accepted without r=");
    assert!(nonce.starts_with(SCRAM_NONCE) && nonce.len() > SCRAM_NONCE.len(), "{text}");
    let iterations: u32 = fields.nth(1).and_then(|f| f.strip_prefix("i=")).and_then(|i| i.parse().ok()).expect("i=");
    assert!((1..=MAX_ITERATIONS).contains(&iterations), "{text}");
    let reply = String::from_utf8(reply).expect("proof is ASCII");
    let proof = reply.strip_prefix(&format!("c=biws,r={nonce},p=")).expect(&reply);
    assert_eq!(proof.len(), 44, "{reply}");
    if s.server_final(last).is_ok() {
        // A mutation can hardly hit the signature; a forged one that passed is a broken check.
        panic!("server-final-message {last:?} accepted for server-first {text:?}");
    }
    true
}

// ---------------------------------------------------------------------------------------------
// call types

/// Builtins plus user types like the ones a catalog returns: enum, composites (one naming
/// itself), domains (one naming itself), arrays of all of those.
pub fn registry() -> &'static TypeRegistry {
    static REG: OnceLock<TypeRegistry> = OnceLock::new();
    REG.get_or_init(|| {
        let mut reg = TypeRegistry::new();
        let f = |fields: &[(&str, u32)]| TypeKind::Composite {
            fields: fields.iter().map(|(n, t)| (n.to_string(), *t)).collect(),
        };
        let user = [
            (90001, "mood", TypeKind::Enum),
            (90002, "_mood", TypeKind::Array { elem: 90001 }),
            (90003, "inner_t", f(&[("x", types::INT4), ("y", types::TEXT)])),
            (90004, "_inner_t", TypeKind::Array { elem: 90003 }),
            (
                90005,
                "outer_t",
                f(&[("id", 20), ("tags", 1009), ("inn", 90003), ("m", 90001), ("n", 1700), ("j", 3802), ("b", 17)]),
            ),
            (90006, "posint", TypeKind::Domain { base: types::INT4 }),
            (90007, "tagarr", TypeKind::Domain { base: 1009 }),
            (90008, "withts", f(&[("t", types::TIMESTAMPTZ), ("r", 3904)])),
            (90009, "selfref", f(&[("me", 90009), ("v", types::INT4)])),
            (90010, "loopdom", TypeKind::Domain { base: 90010 }),
            (90011, "_posint", TypeKind::Array { elem: 90006 }),
            (90012, "_outer_t", TypeKind::Array { elem: 90005 }),
            (90013, "we\"ird", f(&[("we,ird \"name", 1007), ("q", 1020), ("u", types::UUID)])),
            (90014, "_selfref", TypeKind::Array { elem: 90009 }),
            (90015, "_tagarr", TypeKind::Array { elem: 90007 }),
        ];
        for (oid, name, kind) in user {
            reg.insert(TypeInfo { oid, name: name.to_string(), kind });
        }
        reg
    })
}

/// Every OID the registry knows (builtins and the user types above), plus two it does not.
pub fn type_oids() -> &'static [u32] {
    static OIDS: OnceLock<Vec<u32>> = OnceLock::new();
    OIDS.get_or_init(|| {
        let reg = registry();
        let mut v: Vec<u32> = (0..20_000).chain(90_001..90_016).filter(|&o| reg.get(o).is_some()).collect();
        for o in [types::RECORD, types::VOID, types::UNKNOWN, 0, 77_777] {
            if !v.contains(&o) {
                v.push(o);
            }
        }
        v
    })
}

/// Deep documents are legitimate inside json columns; the depth here only keeps the
/// recursive drop of the parsed value shallow enough for the stack.
const RENDER_JSON_DEPTH: usize = 20_000;

/// `render_value`: any bytes as any known type in either format give a JSON document.
pub fn call_render(data: &[u8]) -> bool {
    let mut src = Src::new(data);
    let oids = type_oids();
    let oid = oids[usize::from(src.u16()) % oids.len()];
    let sel = src.u8();
    let reg = registry();
    let format = match sel & 3 {
        0 => 0,
        1 => 1,
        _ => column_format(oid, reg),
    };
    let raw = if sel & 4 == 0 {
        src.rest().to_vec()
    } else {
        // A binary array header around the rest, so element decoding is reached quickly.
        let ndim = src.u8() % 4;
        let mut v = Vec::new();
        v.extend_from_slice(&i32::from(ndim).to_be_bytes());
        v.extend_from_slice(&i32::from(src.u8() & 1).to_be_bytes());
        v.extend_from_slice(&src.u32().to_be_bytes());
        for _ in 0..ndim {
            let size = match src.u8() % 8 {
                0 => 0,
                1 => src.u32() as i32,
                k => i32::from(k) - 1,
            };
            v.extend_from_slice(&size.to_be_bytes());
            v.extend_from_slice(&1i32.to_be_bytes());
        }
        v.extend_from_slice(src.rest());
        v
    };
    let mut out = Vec::new();
    render_value(oid, format, Some(&raw), reg, &mut out);
    if let Err(e) = json::parse_with_depth(&out, RENDER_JSON_DEPTH) {
        panic!("oid {oid} format {format}: output is not JSON ({e}): {}", String::from_utf8_lossy(&out));
    }
    let mut again = Vec::new();
    render_value(oid, format, Some(&raw), reg, &mut again);
    assert_eq!(out, again, "not deterministic");
    let mut null = Vec::new();
    render_value(oid, format, None, reg, &mut null);
    assert_eq!(null, b"null");
    !out.starts_with(b"\"")
}

/// The element type if `oid` is an array type, after resolving domains.
fn array_elem(mut oid: u32) -> Option<u32> {
    for _ in 0..64 {
        match &registry().get(oid)?.kind {
            TypeKind::Domain { base } => oid = *base,
            TypeKind::Array { elem } => return Some(*elem),
            _ => return None,
        }
    }
    None
}

/// Array literal delimiter of an element type: `;` for box, `,` otherwise.
fn delimiter(elem: u32) -> u8 {
    let mut oid = elem;
    for _ in 0..64 {
        match registry().get(oid).map(|t| &t.kind) {
            Some(TypeKind::Domain { base }) => oid = *base,
            _ => break,
        }
    }
    if oid == types::BOX { b';' } else { b',' }
}

/// `encode_param`: any JSON value for any known type never panics; a JSON array encoded for
/// an array type is a `{…}` literal that reads back (with the element type's delimiter) into
/// the same number of elements, and flat string arrays into the same strings.
pub fn call_encode(data: &[u8]) -> bool {
    let mut src = Src::new(data);
    let oids = type_oids();
    let oid = oids[usize::from(src.u16()) % oids.len()];
    let Ok(value) = json::parse(src.rest()) else {
        return false;
    };
    let reg = registry();
    let mut out = Vec::new();
    let result = encode_param(&value, oid, reg, &mut out);
    let Ok(false) = result else {
        if let Ok(true) = result {
            assert!(value.is_null() && out.is_empty());
        }
        return false;
    };
    let (Some(elem), Value::Array(items)) = (array_elem(oid), &value) else {
        return false;
    };
    assert!(out.first() == Some(&b'{') && out.last() == Some(&b'}'), "oid {oid}: {}", String::from_utf8_lossy(&out));
    let mut events = Vec::new();
    let walked = walk_array(&out, delimiter(elem), &mut |ev| {
        events.push(match ev {
            ArrayEvent::Open => "{".to_string(),
            ArrayEvent::Close => "}".to_string(),
            ArrayEvent::Elem(None) => "NULL".to_string(),
            ArrayEvent::Elem(Some(b)) => format!("={}", String::from_utf8_lossy(b)),
        })
    });
    assert!(walked.is_ok(), "oid {oid} (elem {elem}): literal does not read back: {}", String::from_utf8_lossy(&out));
    let flat = items.iter().all(|v| matches!(v, Value::String(_) | Value::Null));
    if flat && matches!(elem, types::TEXT | types::VARCHAR | types::BPCHAR | types::NAME) {
        let want: Vec<String> = std::iter::once("{".to_string())
            .chain(items.iter().map(|v| match v {
                Value::String(s) => format!("={s}"),
                _ => "NULL".to_string(),
            }))
            .chain(std::iter::once("}".to_string()))
            .collect();
        assert_eq!(events, want, "text[] elements changed in {}", String::from_utf8_lossy(&out));
    }
    true
}

// ---------------------------------------------------------------------------------------------
// deploy_form

const BOUNDARIES: &[&str] = &["x", "------------------------5ae9e2bf3874f5b6", "----PHPBoundary5f1a2b", "a b"];

/// `DeployForm::parse`: no panic; an accepted archive is bytes of the body; flags and text
/// fields come from the body too.
pub fn deploy_form(data: &[u8]) -> bool {
    let mut src = Src::new(data);
    let sel = src.u8();
    let b = BOUNDARIES[usize::from(sel) % BOUNDARIES.len()];
    let content_type = match (sel >> 2) % 4 {
        0 => format!("multipart/form-data; boundary={b}"),
        1 => format!("multipart/form-data; boundary=\"{b}\""),
        2 => format!("Multipart/Form-Data; charset=utf-8; boundary={b}; x=y"),
        _ => String::from_utf8_lossy(src.chunk(80)).into_owned(),
    };
    let max_parts = 1 + usize::from(sel >> 4);
    let body = src.rest();
    let parsed = DeployForm::parse(&content_type, body, max_parts);
    if let Ok(form) = &parsed {
        if let Some(a) = &form.archive {
            assert!(a.is_empty() || body.windows(a.len()).any(|w| w == &a[..]));
        }
        for t in [&form.platform, &form.tenant_id, &form.schema_name].into_iter().flatten() {
            assert_eq!(t.trim(), t);
        }
    }
    parsed.is_ok()
}

/// `CallRequest::from_body` (members read straight from the bytes) agrees with the generic reader
/// followed by `CallRequest::from_json`: it declines exactly the bodies that are not a JSON object
/// within the depth limit (the first byte picks it, 0-7), and otherwise gives the same request or
/// the same refusal. Accepted: both read it as an object.
pub fn call_body(data: &[u8]) -> bool {
    let mut src = Src::new(data);
    let depth = usize::from(src.u8() % 8);
    let body = src.rest();
    let generic = json::parse_with_depth(body, depth).ok().filter(|v| matches!(v, Value::Object(_)));
    let direct = CallRequest::from_body(body, depth);
    match (generic, direct) {
        (None, None) => false,
        (Some(tree), Some(direct)) => {
            let generic = CallRequest::from_json(tree);
            match (&generic, &direct) {
                (Ok(g), Ok(d)) => assert_eq!(format!("{g:?}"), format!("{d:?}"), "{:?}", String::from_utf8_lossy(body)),
                (Err(g), Err(d)) => assert_eq!((g.kind, &g.message), (d.kind, &d.message)),
                _ => panic!("readers disagree on {:?}: {generic:?} / {direct:?}", String::from_utf8_lossy(body)),
            }
            true
        }
        (g, d) => panic!("only one reader took {:?} as an object: {g:?} / {d:?}", String::from_utf8_lossy(body)),
    }
}
