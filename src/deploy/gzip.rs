//! gzip (RFC 1952) container parsing around a bounded raw-DEFLATE inflater; no I/O.
//!
//! Policy on what follows the first member: further complete gzip members are
//! decoded and appended (RFC 1952 §2.2 says a file is a series of members, and
//! `gzip -d` does the same); trailing bytes that are all zero are tolerated as
//! block padding (tape tools and some uploaders pad); any other trailing bytes
//! are `Corrupt`, because silently dropping data is how smuggling bugs start.

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};
use std::fmt;

/// Why a gzip payload was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GzipErrorKind {
    /// Magic bytes or compression method are not gzip/DEFLATE, or reserved flags are set.
    NotGzip,
    /// The DEFLATE stream or a header field is malformed, or garbage follows the data.
    Corrupt,
    /// Input ended before the member (header, body or trailer) was complete.
    Truncated,
    /// The CRC32 in the trailer does not match the inflated bytes.
    BadCrc,
    /// The ISIZE in the trailer does not match the inflated length (mod 2^32).
    BadSize,
    /// Inflating would exceed the caller's output cap.
    TooLarge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GzipError {
    pub kind: GzipErrorKind,
    pub message: String,
}

impl GzipError {
    fn new(kind: GzipErrorKind, message: impl Into<String>) -> Self {
        GzipError { kind, message: message.into() }
    }
}

impl fmt::Display for GzipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gzip {:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for GzipError {}

const FTEXT: u8 = 0x01;
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
// FTEXT is only a hint about the content: accepted, nothing to skip.
const RESERVED: u8 = !(FTEXT | FHCRC | FEXTRA | FNAME | FCOMMENT);

/// FNAME/FCOMMENT are unbounded zero-terminated strings in the format; cap them so
/// a header cannot make us scan the whole upload looking for a NUL.
const MAX_HEADER_STRING: usize = 64 * 1024;

/// First output buffer size; growth doubles from here, never past `max_output + 1`.
const INITIAL_OUTPUT: usize = 64 * 1024;

/// Inflate a complete in-memory gzip payload, refusing to produce more than
/// `max_output` bytes. Output memory never exceeds `max_output + 1` bytes: the
/// extra byte is how an overflow is detected without trusting ISIZE.
pub fn gunzip(input: &[u8], max_output: usize) -> Result<Vec<u8>, GzipError> {
    if input.len() < 2 || input[0] != 0x1f || input[1] != 0x8b {
        return Err(GzipError::new(GzipErrorKind::NotGzip, "missing gzip magic bytes 1f 8b"));
    }
    let mut out: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    loop {
        pos = read_member(input, pos, &mut out, max_output)?;
        let rest = &input[pos..];
        if rest.is_empty() || rest.iter().all(|&b| b == 0) {
            return Ok(out);
        }
        if rest.len() >= 2 && rest[0] == 0x1f && rest[1] == 0x8b {
            continue;
        }
        return Err(GzipError::new(
            GzipErrorKind::Corrupt,
            format!("{} bytes of trailing garbage after gzip member", rest.len()),
        ));
    }
}

/// Decode one member starting at `start`, appending to `out`; returns the offset after its trailer.
fn read_member(input: &[u8], start: usize, out: &mut Vec<u8>, max_output: usize) -> Result<usize, GzipError> {
    let body = parse_header(input, start)?;
    let member_start = out.len();
    let consumed = inflate_into(&input[body..], out, member_start, max_output)?;
    let trailer = body + consumed;
    let Some(t) = input.get(trailer..trailer + 8) else {
        return Err(GzipError::new(GzipErrorKind::Truncated, "input ends inside the gzip trailer"));
    };
    let want_crc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
    let want_size = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
    let member = &out[member_start..];
    let got_crc = crc32fast::hash(member);
    if got_crc != want_crc {
        return Err(GzipError::new(
            GzipErrorKind::BadCrc,
            format!("CRC32 mismatch: trailer {want_crc:08x}, data {got_crc:08x}"),
        ));
    }
    // ISIZE is the length modulo 2^32 by definition; truncation is the point.
    let got_size = member.len() as u32;
    if got_size != want_size {
        return Err(GzipError::new(
            GzipErrorKind::BadSize,
            format!("ISIZE mismatch: trailer {want_size}, data {got_size}"),
        ));
    }
    Ok(trailer + 8)
}

/// Validate the fixed header and skip optional fields; returns the offset of the DEFLATE body.
fn parse_header(input: &[u8], start: usize) -> Result<usize, GzipError> {
    let truncated = || GzipError::new(GzipErrorKind::Truncated, "input ends inside the gzip header");
    let h = input.get(start..start + 10).ok_or_else(truncated)?;
    if h[0] != 0x1f || h[1] != 0x8b {
        return Err(GzipError::new(GzipErrorKind::NotGzip, "missing gzip magic bytes 1f 8b"));
    }
    if h[2] != 8 {
        return Err(GzipError::new(GzipErrorKind::NotGzip, format!("unsupported compression method {}", h[2])));
    }
    let flags = h[3];
    if flags & RESERVED != 0 {
        return Err(GzipError::new(GzipErrorKind::NotGzip, format!("reserved gzip flag bits set ({flags:#04x})")));
    }
    let mut pos = start + 10;
    if flags & FEXTRA != 0 {
        let x = input.get(pos..pos + 2).ok_or_else(truncated)?;
        let xlen = u16::from_le_bytes([x[0], x[1]]) as usize;
        pos += 2;
        if input.len() - pos < xlen {
            return Err(truncated());
        }
        pos += xlen;
    }
    for (flag, what) in [(FNAME, "file name"), (FCOMMENT, "comment")] {
        if flags & flag == 0 {
            continue;
        }
        let window = &input[pos..input.len().min(pos + MAX_HEADER_STRING + 1)];
        match window.iter().position(|&b| b == 0) {
            Some(n) => pos += n + 1,
            None if window.len() > MAX_HEADER_STRING => {
                return Err(GzipError::new(
                    GzipErrorKind::Corrupt,
                    format!("gzip header {what} longer than {MAX_HEADER_STRING} bytes"),
                ));
            }
            None => return Err(truncated()),
        }
    }
    if flags & FHCRC != 0 {
        let c = input.get(pos..pos + 2).ok_or_else(truncated)?;
        let want = u16::from_le_bytes([c[0], c[1]]);
        let got = (crc32fast::hash(&input[start..pos]) & 0xffff) as u16;
        if want != got {
            return Err(GzipError::new(
                GzipErrorKind::BadCrc,
                format!("header CRC16 mismatch: header {want:04x}, computed {got:04x}"),
            ));
        }
        pos += 2;
    }
    Ok(pos)
}

/// Inflate one raw DEFLATE stream into `out[member_start..]`; returns input bytes consumed.
///
/// The decompressor works on a non-wrapping buffer that we grow ourselves, so
/// every growth step is a place to enforce the cap before memory is committed.
fn inflate_into(
    mut input: &[u8],
    out: &mut Vec<u8>,
    member_start: usize,
    max_output: usize,
) -> Result<usize, GzipError> {
    let hard_cap = max_output.saturating_add(1);
    let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
    let mut decomp = Box::<DecompressorOxide>::default();
    let mut consumed_total = 0usize;
    // out_pos is relative to member_start so back-references cannot reach an earlier member.
    let mut out_pos = 0usize;
    loop {
        if out.len() == member_start + out_pos {
            let cur = out.len();
            if cur >= hard_cap {
                return Err(too_large(max_output));
            }
            let want = cur.saturating_mul(2).max(INITIAL_OUTPUT).min(hard_cap);
            // reserve_exact keeps Vec's amortised doubling from overshooting the cap.
            out.reserve_exact(want - cur);
            out.resize(want, 0);
        }
        let (status, used, written) = decompress(&mut decomp, input, &mut out[member_start..], out_pos, flags);
        out_pos += written;
        consumed_total += used;
        input = input.get(used..).unwrap_or(&[]);
        if member_start + out_pos > max_output {
            out.truncate(member_start + out_pos);
            return Err(too_large(max_output));
        }
        match status {
            TINFLStatus::Done => {
                out.truncate(member_start + out_pos);
                return Ok(consumed_total);
            }
            TINFLStatus::HasMoreOutput => {
                // Only a full buffer should ask for more room; anything else would spin.
                if out.len() != member_start + out_pos && used == 0 && written == 0 {
                    return Err(GzipError::new(GzipErrorKind::Corrupt, "DEFLATE decoder made no progress"));
                }
            }
            TINFLStatus::NeedsMoreInput | TINFLStatus::FailedCannotMakeProgress => {
                return Err(GzipError::new(GzipErrorKind::Truncated, "input ends inside the DEFLATE stream"));
            }
            other => {
                return Err(GzipError::new(GzipErrorKind::Corrupt, format!("invalid DEFLATE data ({other:?})")));
            }
        }
    }
}

fn too_large(max_output: usize) -> GzipError {
    GzipError::new(GzipErrorKind::TooLarge, format!("inflated data exceeds the limit of {max_output} bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use miniz_oxide::deflate::compress_to_vec;

    fn gz(data: &[u8], flags: u8, extra: &[u8]) -> Vec<u8> {
        let mut v = vec![0x1f, 0x8b, 8, flags, 0, 0, 0, 0, 0, 3];
        v.extend_from_slice(extra);
        v.extend_from_slice(&compress_to_vec(data, 6));
        v.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v
    }

    #[test]
    fn round_trip_plain() {
        let data = b"hello gzip world".repeat(1000);
        assert_eq!(gunzip(&gz(&data, 0, &[]), 1 << 20).unwrap(), data);
    }

    #[test]
    fn empty_payload_round_trips() {
        assert_eq!(gunzip(&gz(b"", 0, &[]), 10).unwrap(), b"");
    }

    #[test]
    fn optional_fields_are_skipped() {
        let mut extra = vec![4, 0, b'a', b'b', 2, 0];
        extra.extend_from_slice(b"name.tar\0comment\0");
        let g = gz(b"x", FEXTRA | FNAME | FCOMMENT | FTEXT, &extra);
        assert_eq!(gunzip(&g, 10).unwrap(), b"x");
    }

    #[test]
    fn header_crc_checked() {
        let mut head = vec![0x1f, 0x8b, 8, FHCRC, 0, 0, 0, 0, 0, 3];
        let crc = (crc32fast::hash(&head) & 0xffff) as u16;
        let mut good = head.clone();
        good.extend_from_slice(&crc.to_le_bytes());
        good.extend_from_slice(&gz(b"abc", 0, &[])[10..]);
        assert_eq!(gunzip(&good, 10).unwrap(), b"abc");
        head.extend_from_slice(&(crc ^ 1).to_le_bytes());
        head.extend_from_slice(&gz(b"abc", 0, &[])[10..]);
        assert_eq!(gunzip(&head, 10).unwrap_err().kind, GzipErrorKind::BadCrc);
    }

    #[test]
    fn reserved_flags_rejected() {
        let g = gz(b"x", 0x20, &[]);
        assert_eq!(gunzip(&g, 10).unwrap_err().kind, GzipErrorKind::NotGzip);
    }

    #[test]
    fn wrong_method_and_magic() {
        let mut g = gz(b"x", 0, &[]);
        g[2] = 7;
        assert_eq!(gunzip(&g, 10).unwrap_err().kind, GzipErrorKind::NotGzip);
        assert_eq!(gunzip(b"PK\x03\x04", 10).unwrap_err().kind, GzipErrorKind::NotGzip);
        assert_eq!(gunzip(b"", 10).unwrap_err().kind, GzipErrorKind::NotGzip);
    }

    #[test]
    fn truncation_everywhere_is_an_error() {
        let data = b"some data that compresses somewhat somewhat somewhat".repeat(50);
        let g = gz(&data, FNAME, b"f\0");
        for cut in 0..g.len() {
            let e = gunzip(&g[..cut], 1 << 20).unwrap_err();
            assert!(matches!(e.kind, GzipErrorKind::Truncated | GzipErrorKind::NotGzip), "cut {cut}: {e}");
        }
    }

    #[test]
    fn crc_and_size_mismatch() {
        let mut g = gz(b"abcdef", 0, &[]);
        let n = g.len();
        g[n - 8] ^= 1;
        assert_eq!(gunzip(&g, 100).unwrap_err().kind, GzipErrorKind::BadCrc);
        g[n - 8] ^= 1;
        g[n - 4] ^= 1;
        assert_eq!(gunzip(&g, 100).unwrap_err().kind, GzipErrorKind::BadSize);
    }

    #[test]
    fn cap_is_enforced_exactly() {
        let data = vec![0u8; 1000];
        let g = gz(&data, 0, &[]);
        assert_eq!(gunzip(&g, 1000).unwrap().len(), 1000);
        assert_eq!(gunzip(&g, 999).unwrap_err().kind, GzipErrorKind::TooLarge);
    }

    #[test]
    fn the_cap_covers_members_of_every_size_together() {
        // Whatever the split between two members, one byte over the cap is refused and the cap
        // itself is accepted.
        for a in 1..=6usize {
            for b in 1..=6usize {
                let first: Vec<u8> = (0..a).map(|i| b'a' + i as u8).collect();
                let second: Vec<u8> = (0..b).map(|i| b'A' + i as u8).collect();
                let mut g = gz(&first, 0, &[]);
                g.extend_from_slice(&gz(&second, 0, &[]));
                let whole = [first.clone(), second.clone()].concat();
                assert_eq!(gunzip(&g, a + b).unwrap(), whole, "{a}+{b}");
                assert_eq!(gunzip(&g, a + b - 1).unwrap_err().kind, GzipErrorKind::TooLarge, "{a}+{b}");
            }
        }
    }

    #[test]
    fn output_memory_stays_within_the_cap() {
        // The buffer grows by doubling from INITIAL_OUTPUT; its capacity must never pass cap + 1.
        for len in [INITIAL_OUTPUT + 1, 150_000, 3 * INITIAL_OUTPUT] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let out = gunzip(&gz(&data, 0, &[]), len).unwrap();
            assert_eq!(out, data);
            assert!(out.capacity() <= len + 1, "{len} bytes kept in a buffer of {}", out.capacity());
        }
    }

    #[test]
    fn bomb_never_allocates_past_cap() {
        let data = vec![0u8; 8 << 20];
        let g = gz(&data, 0, &[]);
        let e = gunzip(&g, 100_000).unwrap_err();
        assert_eq!(e.kind, GzipErrorKind::TooLarge);
    }

    #[test]
    fn concatenated_members_and_padding() {
        let mut g = gz(b"one ", 0, &[]);
        g.extend_from_slice(&gz(b"two", 0, &[]));
        assert_eq!(gunzip(&g, 100).unwrap(), b"one two");
        g.extend_from_slice(&[0; 512]);
        assert_eq!(gunzip(&g, 100).unwrap(), b"one two");
        // The cap covers all members together.
        assert_eq!(gunzip(&g, 5).unwrap_err().kind, GzipErrorKind::TooLarge);
        g.push(7);
        assert_eq!(gunzip(&g, 100).unwrap_err().kind, GzipErrorKind::Corrupt);
    }

    #[test]
    fn corrupt_deflate() {
        let mut g = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        // BTYPE=11 is reserved in DEFLATE.
        g.extend_from_slice(&[0x07, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(gunzip(&g, 100).unwrap_err().kind, GzipErrorKind::Corrupt);
    }
}
