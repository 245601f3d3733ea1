//! The `Transfer-Encoding: chunked` request-body decoder (RFC 9112 §7.1): bytes in, body bytes out,
//! resumable at any byte boundary.

use crate::error::{ApiError, Kind};

/// Longest chunk-size line (size, extensions, CRLF) we accept; extensions are ignored.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex size line; the value so far and bytes seen on the line.
    Size {
        value: u64,
        digits: usize,
        in_ext: bool,
        line: usize,
    },
    /// Expecting LF after the size line's CR.
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty one. `empty` = nothing on this line yet.
    Trailer {
        empty: bool,
        line: usize,
    },
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// Decodes a chunked body, appending the data to a caller's buffer.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    max_body: usize,
}

fn bad(msg: &str) -> ApiError {
    ApiError::new(Kind::InvalidRequest, format!("malformed chunked body: {msg}"))
}

impl ChunkedDecoder {
    pub fn new(max_body: usize) -> ChunkedDecoder {
        ChunkedDecoder { state: State::Size { value: 0, digits: 0, in_ext: false, line: 0 }, max_body }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes from `input`, appending body bytes to `out`. Returns how many input bytes were used; once
    /// the body is complete the remaining input (a pipelined request) is left untouched.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ApiError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                State::Done => return Ok(i),
                State::Size { value, digits, in_ext, line } => {
                    if line >= MAX_LINE {
                        return Err(bad("chunk size line too long"));
                    }
                    match b {
                        b'\r' if digits > 0 => State::SizeLf { value },
                        b';' | b' ' | b'\t' if digits > 0 => {
                            State::Size { value, digits, in_ext: true, line: line + 1 }
                        }
                        _ if in_ext => {
                            if b == b'\n' || b < 0x20 && b != b'\t' {
                                return Err(bad("bad chunk extension"));
                            }
                            State::Size { value, digits, in_ext, line: line + 1 }
                        }
                        _ => {
                            let d = match b {
                                b'0'..=b'9' => b - b'0',
                                b'a'..=b'f' => b - b'a' + 10,
                                b'A'..=b'F' => b - b'A' + 10,
                                _ => return Err(bad("bad chunk size")),
                            };
                            if digits >= 15 {
                                return Err(bad("chunk size too large"));
                            }
                            State::Size { value: value * 16 + d as u64, digits: digits + 1, in_ext, line: line + 1 }
                        }
                    }
                }
                State::SizeLf { value } => {
                    if b != b'\n' {
                        return Err(bad("expected LF after chunk size"));
                    }
                    if value == 0 {
                        State::Trailer { empty: true, line: 0 }
                    } else {
                        if out.len() as u64 + value > self.max_body as u64 {
                            return Err(ApiError::new(Kind::PayloadTooLarge, "request body is too large")
                                .with_cause("max_body_bytes"));
                        }
                        State::Data { remaining: value }
                    }
                }
                State::Data { remaining } => {
                    let take = (remaining as usize).min(input.len() - i);
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 { State::DataCr } else { State::Data { remaining: left } };
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(bad("expected CRLF after chunk data"));
                    }
                    State::DataLf
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(bad("expected CRLF after chunk data"));
                    }
                    State::Size { value: 0, digits: 0, in_ext: false, line: 0 }
                }
                State::Trailer { empty, line } => {
                    if line >= MAX_LINE {
                        return Err(bad("trailer too long"));
                    }
                    match b {
                        b'\r' => State::TrailerLf { empty },
                        // A bare LF ends the body for a peer that takes it as a line end, while we would read
                        // on and swallow the next request as a trailer: refuse the ambiguity.
                        b'\n' => return Err(bad("bare LF in trailer")),
                        _ => State::Trailer { empty: false, line: line + 1 },
                    }
                }
                State::TrailerLf { empty } => {
                    if b != b'\n' {
                        return Err(bad("expected LF in trailer"));
                    }
                    if empty {
                        i += 1;
                        self.state = State::Done;
                        return Ok(i);
                    }
                    State::Trailer { empty: true, line: 0 }
                }
            };
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_and_bytewise() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let mut d = ChunkedDecoder::new(1000);
        let mut out = Vec::new();
        let n = d.feed(body, &mut out).unwrap();
        assert!(d.is_done());
        assert_eq!(&body[n..], b"NEXT");
        assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.");
        let mut d = ChunkedDecoder::new(1000);
        let mut out2 = Vec::new();
        let mut used = 0;
        for i in 0..body.len() {
            if d.is_done() {
                break;
            }
            used += d.feed(&body[i..i + 1], &mut out2).unwrap();
        }
        assert_eq!(out2, out);
        assert_eq!(used, n);
    }

    #[test]
    fn errors() {
        let bad_bodies =
            [&b"zz\r\n"[..], b"4\r\nWikiXX", b"4\nWiki", b"ffffffffffffffffff\r\n", b"0\r\n\n", b"0\r\nX: 1\n\r\n"];
        for b in bad_bodies {
            assert!(ChunkedDecoder::new(100).feed(b, &mut Vec::new()).is_err(), "{b:?}");
        }
        let e = ChunkedDecoder::new(3).feed(b"4\r\nWiki\r\n0\r\n\r\n", &mut Vec::new()).unwrap_err();
        assert_eq!(e.kind, Kind::PayloadTooLarge);
    }
}
