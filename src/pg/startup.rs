//! Sans-IO session startup and authentication (trust, cleartext, MD5, SCRAM-SHA-256), shared by
//! the mio connection state machine and the blocking client.
//!
//! The driver writes [`startup_message`], then feeds every backend message to
//! [`Startup::on_message`] and flushes whatever it appended to `out`, until it gets
//! [`StartupStep::Ready`].

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::SCRAM_SHA_256;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::dberror::PgError;
use super::frame::{Backend, message_name};
use super::params::ConnectParams;
use super::scram::Scram;

/// Appends the StartupMessage for `params`.
///
/// The session settings pin what our text decoding relies on: UTF-8, ISO dates, UTC, and
/// round-trippable floats.
pub fn startup_message(params: &ConnectParams, out: &mut BytesMut) {
    let options = params.options.as_deref().unwrap_or("");
    let all = [
        ("user", params.user.as_str()),
        ("database", params.dbname.as_str()),
        ("application_name", params.application_name.as_str()),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "UTC"),
        ("extra_float_digits", "3"),
        ("bytea_output", "hex"),
        ("options", options),
    ];
    // An empty `options` is left out rather than sent empty.
    let pairs = all.into_iter().filter(|(k, v)| *k != "options" || !v.is_empty());
    // Only fails on an interior NUL. Truncating at the NUL could log us in as a different
    // role or database, so fail closed: a startup packet without a user is refused by the
    // server with a clear FATAL.
    let start = out.len();
    if frontend::startup_message(pairs, out).is_err() {
        out.truncate(start);
        let _ = frontend::startup_message([], out);
    }
}

/// Appends a CancelRequest; it goes on a fresh connection, never on the session's own.
pub fn cancel_request(process_id: i32, secret_key: i32, out: &mut BytesMut) {
    frontend::cancel_request(process_id, secret_key, out);
}

/// What the session looks like once the server is ready for queries.
#[derive(Clone, Debug, Default)]
pub struct SessionInfo {
    /// Backend PID, for cancel requests and logs.
    pub process_id: i32,
    /// Secret for cancel requests.
    pub secret_key: i32,
    /// Every ParameterStatus the server reported during startup, in order.
    pub server_params: Vec<(String, String)>,
    /// `server_version` as a number like `server_version_num` (150004 for 15.4); 0 if unparsable.
    pub server_version_num: u32,
}

/// Result of feeding one message to [`Startup`].
#[derive(Debug)]
pub enum StartupStep {
    /// Keep reading; `out` may have grown and must be flushed first.
    Continue,
    /// The session is ready for queries.
    Ready(SessionInfo),
}

/// Where the handshake is.
enum State {
    /// StartupMessage sent; waiting for the server's authentication request.
    AwaitAuthRequest,
    /// SASLInitialResponse sent; waiting for the server-first-message.
    SaslContinue(Box<Scram>),
    /// Client proof sent; waiting for the server signature.
    SaslFinal(Box<Scram>),
    /// Credentials sent (and the server verified, for SCRAM); waiting for AuthenticationOk.
    AwaitAuthOk,
    /// Authenticated; collecting ParameterStatus and BackendKeyData until ReadyForQuery.
    Settling,
    /// Ready was returned or an error was; nothing more is acceptable.
    Finished,
}

/// The startup/authentication state machine for one connection attempt.
pub struct Startup {
    /// Current handshake state.
    state: State,
    /// Role name, needed again for the MD5 digest.
    user: String,
    /// Password, if configured; its absence only matters if the server asks.
    password: Option<String>,
    /// What we learn on the way, handed out with `Ready`.
    info: SessionInfo,
}

impl Startup {
    /// A handshake for `params`; the caller sends [`startup_message`] itself.
    pub fn new(params: &ConnectParams) -> Startup {
        Startup {
            state: State::AwaitAuthRequest,
            user: params.user.clone(),
            password: params.password.clone(),
            info: SessionInfo::default(),
        }
    }

    /// Advances on one backend message, appending any reply to `out`.
    ///
    /// After an `Err` the connection is unusable and must be closed.
    pub fn on_message(&mut self, msg: Backend, out: &mut BytesMut) -> Result<StartupStep, PgError> {
        let state = std::mem::replace(&mut self.state, State::Finished);
        // Any early return below leaves `Finished`, so a failed handshake cannot be resumed.
        let (next, step) = self.transition(state, msg, out)?;
        self.state = next;
        Ok(step)
    }

    fn transition(&mut self, state: State, msg: Backend, out: &mut BytesMut) -> Result<(State, StartupStep), PgError> {
        let cont = StartupStep::Continue;
        match (state, msg) {
            (State::Finished, m) => Err(PgError::Protocol(format!("{} after startup finished", describe(&m)))),
            (_, Backend::Error(e)) => Err(PgError::Db(Box::new(e))),
            // Notices during startup carry nothing a caller can act on.
            (s, Backend::Notice(_)) => Ok((s, cont)),

            (State::AwaitAuthRequest, Backend::Message(Message::AuthenticationOk)) => Ok((State::Settling, cont)),
            (State::AwaitAuthRequest, Backend::Message(Message::AuthenticationCleartextPassword)) => {
                let pw = self.password()?;
                frontend::password_message(pw.as_bytes(), out).map_err(encode)?;
                Ok((State::AwaitAuthOk, cont))
            }
            (State::AwaitAuthRequest, Backend::Message(Message::AuthenticationMd5Password(body))) => {
                let pw = self.password()?;
                let hashed = md5_hash(self.user.as_bytes(), pw.as_bytes(), body.salt());
                frontend::password_message(hashed.as_bytes(), out).map_err(encode)?;
                Ok((State::AwaitAuthOk, cont))
            }
            (State::AwaitAuthRequest, Backend::AuthSasl(mechanisms)) => {
                // Without TLS there is no channel binding, so SCRAM-SHA-256-PLUS is out.
                if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(PgError::Auth(format!(
                        "server offers no supported SASL mechanism ({})",
                        mechanisms.join(", ")
                    )));
                }
                let (scram, first) = Scram::start(self.password()?).map_err(PgError::Auth)?;
                frontend::sasl_initial_response(SCRAM_SHA_256, &first, out).map_err(encode)?;
                Ok((State::SaslContinue(Box::new(scram)), cont))
            }
            (State::SaslContinue(mut scram), Backend::Message(Message::AuthenticationSaslContinue(body))) => {
                let reply = scram
                    .server_first(body.data())
                    .map_err(|e| PgError::Auth(format!("bad SCRAM server-first-message: {e}")))?;
                frontend::sasl_response(&reply, out).map_err(encode)?;
                Ok((State::SaslFinal(scram), cont))
            }
            (State::SaslFinal(mut scram), Backend::Message(Message::AuthenticationSaslFinal(body))) => {
                // A server that cannot prove it knows the password may be an impostor.
                scram
                    .server_final(body.data())
                    .map_err(|e| PgError::Auth(format!("server SCRAM signature did not verify: {e}")))?;
                Ok((State::AwaitAuthOk, cont))
            }
            (State::AwaitAuthRequest, Backend::Message(m)) if is_auth_request(&m) => {
                Err(PgError::Auth(format!("unsupported authentication method {}", message_name(&m))))
            }
            (State::AwaitAuthOk, Backend::Message(Message::AuthenticationOk)) => Ok((State::Settling, cont)),

            (State::Settling, Backend::Message(Message::ParameterStatus(body))) => {
                let name = body.name().map_err(bad)?.to_string();
                let value = body.value().map_err(bad)?.to_string();
                if name == "server_version" {
                    self.info.server_version_num = parse_server_version(&value);
                }
                self.info.server_params.push((name, value));
                Ok((State::Settling, cont))
            }
            (State::Settling, Backend::Message(Message::BackendKeyData(body))) => {
                self.info.process_id = body.process_id();
                self.info.secret_key = body.secret_key();
                Ok((State::Settling, cont))
            }
            (State::Settling, Backend::Message(Message::ReadyForQuery(_))) => {
                Ok((State::Finished, StartupStep::Ready(std::mem::take(&mut self.info))))
            }

            (_, m) => Err(PgError::Protocol(format!("unexpected {} during startup", describe(&m)))),
        }
    }

    fn password(&self) -> Result<&str, PgError> {
        self.password.as_deref().ok_or_else(|| PgError::Auth("password required".into()))
    }
}

fn is_auth_request(m: &Message) -> bool {
    matches!(
        m,
        Message::AuthenticationGss
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationSspi
            | Message::AuthenticationGssContinue(_)
            | Message::AuthenticationSasl(_)
    )
}

fn describe(m: &Backend) -> &'static str {
    match m {
        Backend::Message(m) => message_name(m),
        Backend::Error(_) => "ErrorResponse",
        Backend::Notice(_) => "NoticeResponse",
        Backend::RowDescription(_) => "RowDescription",
        Backend::AuthSasl(_) => "AuthenticationSASL",
    }
}

fn encode(e: std::io::Error) -> PgError {
    PgError::Protocol(format!("cannot encode message: {e}"))
}

fn bad(e: std::io::Error) -> PgError {
    PgError::Protocol(e.to_string())
}

/// "15.4 (Debian 15.4-1.pgdg120+1)" → 150004, "9.6.24" → 90624, "17beta2" → 170000.
pub fn parse_server_version(v: &str) -> u32 {
    let numeric: &str = v.split(|c: char| !(c.is_ascii_digit() || c == '.')).next().unwrap_or("");
    let mut parts = numeric.split('.').map(|p| p.parse::<u32>().ok());
    let major = match parts.next().flatten() {
        Some(m) => m,
        None => return 0,
    };
    let minor = parts.next().flatten().unwrap_or(0);
    if major >= 10 {
        major * 10000 + minor
    } else {
        let patch = parts.next().flatten().unwrap_or(0);
        major * 10000 + minor * 100 + patch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::frame::read_message;
    use crate::pg::frame::tests::frame;

    fn params(password: Option<&str>) -> ConnectParams {
        let mut p = ConnectParams::from_url("postgres://alice@localhost/db").unwrap();
        p.password = password.map(str::to_string);
        p
    }

    fn msg(tag: u8, body: &[u8]) -> Backend {
        let mut b = frame(tag, body);
        read_message(&mut b).unwrap().unwrap()
    }

    fn auth(code: i32, extra: &[u8]) -> Backend {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(extra);
        msg(b'R', &body)
    }

    fn settle(s: &mut Startup, out: &mut BytesMut) -> SessionInfo {
        let ps = msg(b'S', b"server_version\x0015.4 (Debian 15.4-1)\0");
        assert!(matches!(s.on_message(ps, out).unwrap(), StartupStep::Continue));
        let mut k = 4242i32.to_be_bytes().to_vec();
        k.extend_from_slice(&(-7i32).to_be_bytes());
        assert!(matches!(s.on_message(msg(b'K', &k), out).unwrap(), StartupStep::Continue));
        let n = msg(b'N', b"SNOTICE\0C00000\0Mhello\0\0");
        assert!(matches!(s.on_message(n, out).unwrap(), StartupStep::Continue));
        match s.on_message(msg(b'Z', b"I"), out).unwrap() {
            StartupStep::Ready(info) => info,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn startup_message_carries_session_settings() {
        let mut out = BytesMut::new();
        startup_message(&params(None), &mut out);
        let text = String::from_utf8_lossy(&out[8..]).into_owned();
        for needle in [
            "user\0alice\0",
            "database\0db\0",
            "client_encoding\0UTF8\0",
            "DateStyle\0ISO\0",
            "TimeZone\0UTC\0",
            "extra_float_digits\x003\0",
        ] {
            assert!(text.contains(needle), "{needle:?} missing");
        }
        assert!(!text.contains("IntervalStyle"));
        assert_eq!(u32::from_be_bytes(out[..4].try_into().unwrap()) as usize, out.len());
    }

    #[test]
    fn startup_message_with_nul_fails_closed() {
        let mut p = params(None);
        p.user = "postgres\0evil".into();
        let mut out = BytesMut::new();
        startup_message(&p, &mut out);
        assert_eq!(&out[..], &[0, 0, 0, 9, 0, 3, 0, 0, 0]);
    }

    #[test]
    fn trust_login() {
        let mut s = Startup::new(&params(None));
        let mut out = BytesMut::new();
        assert!(matches!(s.on_message(auth(0, b""), &mut out).unwrap(), StartupStep::Continue));
        assert!(out.is_empty());
        let info = settle(&mut s, &mut out);
        assert_eq!(info.process_id, 4242);
        assert_eq!(info.secret_key, -7);
        assert_eq!(info.server_version_num, 150004);
        assert_eq!(info.server_params[0].0, "server_version");
        // Nothing may follow Ready on the same state machine.
        assert!(matches!(s.on_message(auth(0, b""), &mut out), Err(PgError::Protocol(_))));
    }

    #[test]
    fn cleartext_and_md5() {
        let mut s = Startup::new(&params(Some("pw")));
        let mut out = BytesMut::new();
        s.on_message(auth(3, b""), &mut out).unwrap();
        assert_eq!(&out[..], b"p\0\0\0\x07pw\0");
        out.clear();
        s.on_message(auth(0, b""), &mut out).unwrap();
        settle(&mut s, &mut out);

        let mut s = Startup::new(&params(Some("pw")));
        s.on_message(auth(5, b"salt"), &mut out).unwrap();
        let expected = md5_hash(b"alice", b"pw", *b"salt");
        assert_eq!(&out[5..out.len() - 1], expected.as_bytes());
        assert!(expected.starts_with("md5"));
    }

    #[test]
    fn missing_password_is_auth_error() {
        for code in [3, 5] {
            let mut s = Startup::new(&params(None));
            let mut out = BytesMut::new();
            let extra: &[u8] = if code == 5 { b"salt" } else { b"" };
            match s.on_message(auth(code, extra), &mut out) {
                Err(PgError::Auth(m)) => assert_eq!(m, "password required"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn error_response_and_unexpected_messages() {
        let mut s = Startup::new(&params(Some("pw")));
        let mut out = BytesMut::new();
        let e = msg(b'E', b"SFATAL\0C28P01\0Mpassword authentication failed\0\0");
        let err = s.on_message(e, &mut out).unwrap_err();
        assert_eq!(err.sqlstate(), Some("28P01"));

        let mut s = Startup::new(&params(Some("pw")));
        assert!(matches!(s.on_message(msg(b'Z', b"I"), &mut out), Err(PgError::Protocol(_))));
        let mut s = Startup::new(&params(Some("pw")));
        assert!(matches!(s.on_message(auth(7, b""), &mut out), Err(PgError::Auth(_))));
        // AuthenticationOk before the server proved itself in SCRAM is refused.
        let mut s = Startup::new(&params(Some("pw")));
        s.on_message(auth(10, b"SCRAM-SHA-256\0\0"), &mut out).unwrap();
        assert!(matches!(s.on_message(auth(0, b""), &mut out), Err(PgError::Protocol(_))));
    }

    #[test]
    fn scram_mechanism_choice_and_bad_server_signature() {
        let mut s = Startup::new(&params(Some("pw")));
        let mut out = BytesMut::new();
        let err = s.on_message(auth(10, b"SCRAM-SHA-256-PLUS\0\0"), &mut out).unwrap_err();
        assert!(matches!(err, PgError::Auth(_)));

        let mut s = Startup::new(&params(Some("pw")));
        let mut out = BytesMut::new();
        s.on_message(auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"), &mut out).unwrap();
        // 'p', len, "SCRAM-SHA-256\0", i32 len, client-first-message
        assert_eq!(&out[5..19], b"SCRAM-SHA-256\0");
        let first = std::str::from_utf8(&out[23..]).unwrap().to_string();
        let nonce = first.strip_prefix("n,,n=,r=").expect(&first).to_string();
        out.clear();

        let server_first = format!("r={nonce}SERVERNONCE,s=c2FsdHNhbHQ=,i=4096");
        s.on_message(auth(11, server_first.as_bytes()), &mut out).unwrap();
        let reply = std::str::from_utf8(&out[5..]).unwrap();
        assert!(reply.starts_with(&format!("c=biws,r={nonce}SERVERNONCE,p=")), "{reply}");
        out.clear();

        let forged = b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        match s.on_message(auth(12, forged), &mut out) {
            Err(PgError::Auth(m)) => assert!(m.contains("did not verify"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn scram_rejects_foreign_nonce() {
        let mut s = Startup::new(&params(Some("pw")));
        let mut out = BytesMut::new();
        s.on_message(auth(10, b"SCRAM-SHA-256\0\0"), &mut out).unwrap();
        let server_first = b"r=notournonce,s=c2FsdA==,i=4096";
        assert!(matches!(s.on_message(auth(11, server_first), &mut out), Err(PgError::Auth(_))));
    }

    #[test]
    fn scram_refuses_absurd_iteration_count() {
        // A hostile server could otherwise make us spin PBKDF2 for minutes (RUSTSEC-2026-0179).
        let mut s = Startup::new(&params(Some("pw")));
        let mut out = BytesMut::new();
        s.on_message(auth(10, b"SCRAM-SHA-256\0\0"), &mut out).unwrap();
        let nonce = std::str::from_utf8(&out[23..]).unwrap()["n,,n=,r=".len()..].to_string();
        let server_first = format!("r={nonce}x,s=c2FsdA==,i=4000000000");
        assert!(matches!(s.on_message(auth(11, server_first.as_bytes()), &mut out), Err(PgError::Auth(_))));
    }

    #[test]
    fn server_versions() {
        assert_eq!(parse_server_version("15.4 (Debian 15.4-1)"), 150004);
        assert_eq!(parse_server_version("9.6.24"), 90624);
        assert_eq!(parse_server_version("17beta2"), 170000);
        assert_eq!(parse_server_version("16.10"), 160010);
        assert_eq!(parse_server_version("garbage"), 0);
    }

    #[test]
    fn cancel_request_layout() {
        let mut out = BytesMut::new();
        cancel_request(1, 2, &mut out);
        assert_eq!(&out[..], &[0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 1, 0, 0, 0, 2]);
    }
}
