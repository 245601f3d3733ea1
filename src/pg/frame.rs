//! Inbound framing (sans-IO): cuts backend messages out of a read buffer for any driver.
//!
//! Most messages go straight through `postgres_protocol::message::backend::Message::parse`.
//! A few bodies (ErrorResponse, NoticeResponse, RowDescription, the SASL mechanism list) are
//! only readable through the `fallible_iterator` trait, which is not one of our dependencies,
//! so those frames are decoded here into owned values instead.

use bytes::BytesMut;
use postgres_protocol::message::backend::{DataRowBody, Header, Message};

use super::dberror::{DbError, PgError};

/// Frames above this are treated as corruption: the server caps a message at 1 GiB and a
/// bogus length must not make us reserve unbounded memory.
pub const MAX_FRAME_LEN: usize = (1 << 30) + (1 << 20);

/// Authentication request code for SASL (AuthenticationSASL).
const AUTH_SASL: i32 = 10;

/// One column of a RowDescription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Column label as the query named it.
    pub name: String,
    /// Type OID (see `postgres_types::Type::from_oid`).
    pub type_oid: u32,
}

/// A decoded backend message.
pub enum Backend {
    /// Every message whose body `postgres_protocol` exposes through plain accessors.
    Message(Message),
    /// ErrorResponse.
    Error(DbError),
    /// NoticeResponse.
    Notice(DbError),
    /// RowDescription.
    RowDescription(Vec<Column>),
    /// AuthenticationSASL with the server's mechanism names.
    AuthSasl(Vec<String>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Message(m) => write!(f, "Message({})", message_name(m)),
            Backend::Error(e) => write!(f, "Error({e})"),
            Backend::Notice(e) => write!(f, "Notice({e})"),
            Backend::RowDescription(c) => write!(f, "RowDescription({c:?})"),
            Backend::AuthSasl(m) => write!(f, "AuthSasl({m:?})"),
        }
    }
}

/// Takes one complete message off the front of `buf`; `Ok(None)` means read more bytes first.
pub fn read_message(buf: &mut BytesMut) -> Result<Option<Backend>, PgError> {
    let header = match Header::parse(buf).map_err(protocol)? {
        Some(h) => h,
        None => return Ok(None),
    };
    let len = header.len() as usize;
    if len > MAX_FRAME_LEN {
        return Err(PgError::Protocol(format!("backend frame of {len} bytes")));
    }
    let total = len + 1;
    if buf.len() < total {
        // Grow with what arrives rather than trusting the declared length up front.
        buf.reserve((total - buf.len()).min(64 * 1024));
        return Ok(None);
    }
    let body = &buf[5..total];
    let decoded = match header.tag() {
        b'E' => Backend::Error(DbError::parse(body)?),
        b'N' => Backend::Notice(DbError::parse(body)?),
        b'T' => Backend::RowDescription(parse_row_description(body)?),
        b'R' if body.len() >= 4 && i32::from_be_bytes([body[0], body[1], body[2], body[3]]) == AUTH_SASL => {
            Backend::AuthSasl(parse_mechanisms(&body[4..])?)
        }
        _ => {
            return match Message::parse(buf).map_err(protocol)? {
                Some(m) => Ok(Some(Backend::Message(m))),
                None => Err(PgError::Protocol("frame vanished while parsing".into())),
            };
        }
    };
    let _ = buf.split_to(total);
    Ok(Some(decoded))
}

/// Walks the message headers in `buf` from offset `at` (a message start) as far as they have
/// arrived. `Ok(next)`: every header seen declares at most `max` bytes; `next` is where the next
/// unseen header starts (past the end of `buf` while a body is still arriving). `Err(len)`: a
/// message declares `len` bytes, more than `max`, and should be refused before its body is read.
pub fn scan_lengths(buf: &[u8], mut at: usize, max: usize) -> Result<usize, usize> {
    while buf.len() >= at + 5 {
        let len = i32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]).max(4) as usize;
        if len > max {
            return Err(len);
        }
        at += len + 1;
    }
    Ok(at)
}

/// The column values of a DataRow, `None` for SQL NULL, borrowed from the message.
pub fn data_row_fields(row: &DataRowBody) -> Result<Vec<Option<&[u8]>>, PgError> {
    Ok(row_values(row)?.collect())
}

/// The column values of a DataRow as an iterator, for the hot path that renders them as they come
/// (no vector per row). The whole row is checked first, so the iterator itself cannot fail.
pub fn row_values(row: &DataRowBody) -> Result<RowValues<'_>, PgError> {
    let mut check = RowValues(row.buffer());
    while !check.0.is_empty() {
        let (len, after) = take_i32(check.0)?;
        let len = usize::try_from(len).unwrap_or(0);
        if after.len() < len {
            return Err(PgError::Protocol("DataRow value overruns frame".into()));
        }
        check.0 = &after[len..];
    }
    Ok(RowValues(row.buffer()))
}

/// See [`row_values`]: the body after the column count, per column an i32 length (-1 = NULL) then
/// the bytes.
pub struct RowValues<'a>(&'a [u8]);

impl<'a> Iterator for RowValues<'a> {
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        let (len, after) = take_i32(self.0).ok()?;
        match usize::try_from(len) {
            Err(_) => {
                self.0 = after;
                Some(None)
            }
            Ok(len) => {
                let (value, rest) = after.split_at_checked(len)?;
                self.0 = rest;
                Some(Some(value))
            }
        }
    }
}

/// Short name of a message, for protocol error texts.
pub fn message_name(m: &Message) -> &'static str {
    match m {
        Message::AuthenticationCleartextPassword => "AuthenticationCleartextPassword",
        Message::AuthenticationGss => "AuthenticationGSS",
        Message::AuthenticationKerberosV5 => "AuthenticationKerberosV5",
        Message::AuthenticationMd5Password(_) => "AuthenticationMD5Password",
        Message::AuthenticationOk => "AuthenticationOk",
        Message::AuthenticationScmCredential => "AuthenticationSCMCredential",
        Message::AuthenticationSspi => "AuthenticationSSPI",
        Message::AuthenticationGssContinue(_) => "AuthenticationGSSContinue",
        Message::AuthenticationSasl(_) => "AuthenticationSASL",
        Message::AuthenticationSaslContinue(_) => "AuthenticationSASLContinue",
        Message::AuthenticationSaslFinal(_) => "AuthenticationSASLFinal",
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::ErrorResponse(_) => "ErrorResponse",
        Message::NoData => "NoData",
        Message::NoticeResponse(_) => "NoticeResponse",
        Message::NotificationResponse(_) => "NotificationResponse",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ParameterStatus(_) => "ParameterStatus",
        Message::ParseComplete => "ParseComplete",
        Message::PortalSuspended => "PortalSuspended",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "unknown message",
    }
}

fn protocol(e: std::io::Error) -> PgError {
    PgError::Protocol(e.to_string())
}

fn take_i32(b: &[u8]) -> Result<(i32, &[u8]), PgError> {
    match b.split_first_chunk::<4>() {
        Some((n, rest)) => Ok((i32::from_be_bytes(*n), rest)),
        None => Err(PgError::Protocol("truncated integer in backend message".into())),
    }
}

fn take_cstr(b: &[u8]) -> Result<(&str, &[u8]), PgError> {
    let end = b.iter().position(|&c| c == 0).ok_or_else(|| PgError::Protocol("string not NUL-terminated".into()))?;
    let s = std::str::from_utf8(&b[..end]).map_err(|_| PgError::Protocol("backend string is not UTF-8".into()))?;
    Ok((s, &b[end + 1..]))
}

fn parse_row_description(body: &[u8]) -> Result<Vec<Column>, PgError> {
    let (count, mut rest) = match body.split_first_chunk::<2>() {
        Some((n, r)) => (i16::from_be_bytes(*n), r),
        None => return Err(PgError::Protocol("truncated RowDescription".into())),
    };
    let mut cols = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        let (name, after) = take_cstr(rest)?;
        // table oid u32, column number i16, type oid u32, size i16, typmod i32, format i16
        let fixed = after.get(..18).ok_or_else(|| PgError::Protocol("truncated RowDescription field".into()))?;
        let type_oid = u32::from_be_bytes([fixed[6], fixed[7], fixed[8], fixed[9]]);
        cols.push(Column { name: name.to_string(), type_oid });
        rest = &after[18..];
    }
    if !rest.is_empty() {
        return Err(PgError::Protocol("trailing bytes in RowDescription".into()));
    }
    Ok(cols)
}

fn parse_mechanisms(mut body: &[u8]) -> Result<Vec<String>, PgError> {
    let mut out = Vec::new();
    loop {
        let (name, rest) = take_cstr(body)?;
        body = rest;
        if name.is_empty() {
            break;
        }
        out.push(name.to_string());
    }
    if !body.is_empty() {
        return Err(PgError::Protocol("trailing bytes in AuthenticationSASL".into()));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::BufMut;

    /// Builds a backend frame: tag, length, body.
    pub(crate) fn frame(tag: u8, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(tag);
        b.put_i32(body.len() as i32 + 4);
        b.put_slice(body);
        b
    }

    #[test]
    fn waits_for_full_frame() {
        let full = frame(b'Z', b"I");
        let mut buf = BytesMut::from(&full[..3]);
        assert!(read_message(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&full[3..5]);
        assert!(read_message(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&full[5..]);
        buf.extend_from_slice(&frame(b'Z', b"T"));
        match read_message(&mut buf).unwrap() {
            Some(Backend::Message(Message::ReadyForQuery(b))) => assert_eq!(b.status(), b'I'),
            other => panic!("{other:?}"),
        }
        match read_message(&mut buf).unwrap() {
            Some(Backend::Message(Message::ReadyForQuery(b))) => assert_eq!(b.status(), b'T'),
            other => panic!("{other:?}"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn error_notice_and_row_description() {
        let mut buf = frame(b'E', b"SERROR\0C42P01\0Mno table\0\0");
        buf.extend_from_slice(&frame(b'N', b"SNOTICE\0C00000\0Mhi\0\0"));
        let mut t = vec![0, 2];
        for (name, oid) in [("a", 23u32), ("b", 25)] {
            t.extend_from_slice(name.as_bytes());
            t.push(0);
            t.extend_from_slice(&0u32.to_be_bytes());
            t.extend_from_slice(&0i16.to_be_bytes());
            t.extend_from_slice(&oid.to_be_bytes());
            t.extend_from_slice(&[0; 8]);
        }
        buf.extend_from_slice(&frame(b'T', &t));
        let mut d = vec![0, 3];
        d.extend_from_slice(&2i32.to_be_bytes());
        d.extend_from_slice(b"42");
        d.extend_from_slice(&(-1i32).to_be_bytes());
        d.extend_from_slice(&0i32.to_be_bytes());
        buf.extend_from_slice(&frame(b'D', &d));

        match read_message(&mut buf).unwrap() {
            Some(Backend::Error(e)) => assert_eq!(e.code, "42P01"),
            other => panic!("{other:?}"),
        }
        match read_message(&mut buf).unwrap() {
            Some(Backend::Notice(e)) => assert_eq!(e.message, "hi"),
            other => panic!("{other:?}"),
        }
        match read_message(&mut buf).unwrap() {
            Some(Backend::RowDescription(c)) => {
                assert_eq!(c[0], Column { name: "a".into(), type_oid: 23 });
                assert_eq!(c[1].type_oid, 25);
            }
            other => panic!("{other:?}"),
        }
        match read_message(&mut buf).unwrap() {
            Some(Backend::Message(Message::DataRow(r))) => {
                let f = data_row_fields(&r).unwrap();
                assert_eq!(f, vec![Some(&b"42"[..]), None, Some(&b""[..])]);
            }
            other => panic!("{other:?}"),
        }
        assert!(buf.is_empty());
    }

    fn data_row(fields: &[&[u8]]) -> DataRowBody {
        let mut body = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            body.extend_from_slice(f);
        }
        match read_message(&mut frame(b'D', &body)).unwrap() {
            Some(Backend::Message(Message::DataRow(r))) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn row_values_are_checked_whole_before_any_is_handed_out() {
        let row = data_row(&[b"\0\0\0\x02ab", b"\xff\xff\xff\xff", b"\xff\xff\xff\xfe", b"\0\0\0\0"]);
        let vals: Vec<_> = row_values(&row).unwrap().collect();
        assert_eq!(vals, vec![Some(&b"ab"[..]), None, None, Some(&b""[..])]);
        // A value running past the frame, or a length cut short, fails the row before rendering starts.
        for bad in [&[&b"\0\0\0\x01x"[..], b"\0\0\0\x09ab"][..], &[b"\0\0\0\x01x", b"\0\0"]] {
            assert!(row_values(&data_row(bad)).is_err());
            assert!(data_row_fields(&data_row(bad)).is_err());
        }
    }

    #[test]
    fn rejects_huge_frame() {
        let mut buf = BytesMut::new();
        buf.put_u8(b'D');
        buf.put_i32(i32::MAX);
        assert!(matches!(read_message(&mut buf), Err(PgError::Protocol(_))));
    }
}
