//! The client side of a SCRAM-SHA-256 login (RFC 5802, RFC 7677) as PostgreSQL runs it: no channel
//! binding, an empty user name (the startup packet names the role). Bytes in, messages out.
//!
//! The two keys a password yields under one salt and iteration count are remembered for the life of
//! the process. Deriving them is PBKDF2 over 4096 rounds by PostgreSQL's default (0.6 ms of CPU here,
//! 1.1 ms with the library's exchange), and every backend the gateway opens logs in: each database of
//! a fleet deploy, each pool connect (on an event loop). A changed password or a new verifier (new salt) is a different entry, so nothing
//! remembered can outlive the password it came from.

use std::collections::HashMap;
use std::sync::Mutex;

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use sha2::{Digest, Sha256};

use crate::security::base64;
use crate::security::digest::{HmacKey, pbkdf2_sha256};
use crate::security::random;

/// The most PBKDF2 rounds a server may ask for. The count comes from the network and the cost is
/// linear in it: a hostile server could otherwise make one login spin for minutes.
pub const MAX_ITERATIONS: u32 = 100_000;

/// Key pairs remembered at most (one per role and verifier); when full the memo starts afresh.
pub const MAX_REMEMBERED: usize = 4096;

/// Longest salt whose keys are remembered. PostgreSQL's are 16 bytes; a server sending long ones
/// could otherwise fill the memo with them (its keys are then derived on every login).
pub const MAX_REMEMBERED_SALT: usize = 64;

/// Random bytes in the client nonce (24 base64 characters).
const NONCE_BYTES: usize = 18;

/// One login's exchange.
pub struct Scram {
    kind: Kind,
}

enum Kind {
    /// An ASCII password, which SASLprep leaves as it is (or refuses, and PostgreSQL then takes the
    /// raw bytes as well), so its keys can be derived here and remembered.
    Own(Own),
    /// Any other password needs SASLprep's Unicode normalisation, which the library does; its keys
    /// are derived on every login.
    Prepped(Box<ScramSha256>),
}

struct Own {
    password: String,
    /// `n=,r=<client nonce>`: the client-first-message without its GS2 header.
    first_bare: String,
    client_nonce: String,
    step: Step,
}

enum Step {
    /// client-first-message sent.
    SentFirst,
    /// Proof sent; the server must answer with this signature.
    SentProof {
        server_signature: [u8; 32],
    },
    Done,
}

impl Scram {
    /// Starts a login with `password`; returns the client-first-message for SASLInitialResponse.
    pub fn start(password: &str) -> Result<(Scram, Vec<u8>), String> {
        if !password.is_ascii() {
            let lib = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
            let first = lib.message().to_vec();
            return Ok((Scram { kind: Kind::Prepped(Box::new(lib)) }, first));
        }
        let nonce =
            random::bytes(NONCE_BYTES).map_err(|e| format!("cannot read /dev/urandom for a SCRAM nonce: {e}"))?;
        Ok(Scram::with_nonce(password, "", &base64::encode(&nonce)))
    }

    /// An exchange with a chosen nonce and user name: for the published test vectors (which name a
    /// user) and the fuzz target. Logins use [`Scram::start`].
    pub fn with_nonce(password: &str, user: &str, nonce: &str) -> (Scram, Vec<u8>) {
        let first_bare = format!("n={user},r={nonce}");
        let first = format!("n,,{first_bare}").into_bytes();
        let own =
            Own { password: password.to_string(), first_bare, client_nonce: nonce.to_string(), step: Step::SentFirst };
        (Scram { kind: Kind::Own(own) }, first)
    }

    /// Takes the server-first-message; returns the client-final-message with the proof.
    pub fn server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, String> {
        let own = match &mut self.kind {
            Kind::Prepped(lib) => {
                lib.update(msg).map_err(|e| e.to_string())?;
                return Ok(lib.message().to_vec());
            }
            Kind::Own(own) => own,
        };
        if !matches!(own.step, Step::SentFirst) {
            return Err("server-first-message out of turn".into());
        }
        let text = std::str::from_utf8(msg).map_err(|_| "server-first-message is not UTF-8".to_string())?;
        let (nonce, salt, iterations) = parse_server_first(text)?;
        if nonce.len() <= own.client_nonce.len() || !nonce.starts_with(&own.client_nonce) {
            return Err("the server's nonce does not extend ours".into());
        }
        let keys = keys(&own.password, &salt, iterations);
        let final_bare = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{final_bare}", own.first_bare);
        let stored_key: [u8; 32] = Sha256::digest(keys.client).into();
        let signature = HmacKey::new(&stored_key).mac(&[auth_message.as_bytes()]);
        let mut proof = keys.client;
        for (p, s) in proof.iter_mut().zip(signature) {
            *p ^= s;
        }
        let server_signature = HmacKey::new(&keys.server).mac(&[auth_message.as_bytes()]);
        own.step = Step::SentProof { server_signature };
        Ok(format!("{final_bare},p={}", base64::encode(&proof)).into_bytes())
    }

    /// Takes the server-final-message: `Ok` only when the server proved it holds the verifier.
    pub fn server_final(&mut self, msg: &[u8]) -> Result<(), String> {
        let own = match &mut self.kind {
            Kind::Prepped(lib) => return lib.finish(msg).map_err(|e| e.to_string()),
            Kind::Own(own) => own,
        };
        let Step::SentProof { server_signature } = std::mem::replace(&mut own.step, Step::Done) else {
            return Err("server-final-message out of turn".into());
        };
        let text = std::str::from_utf8(msg).map_err(|_| "server-final-message is not UTF-8".to_string())?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(format!("the server refused the proof: {e}"));
        }
        let given = text
            .split(',')
            .next()
            .and_then(|v| v.strip_prefix("v="))
            .and_then(base64::decode)
            .ok_or_else(|| "server-final-message has no verifier (v=)".to_string())?;
        // Compared without an early exit, as signatures are.
        let differs = given.len() != 32 || given.iter().zip(server_signature).fold(0u8, |d, (a, b)| d | (a ^ b)) != 0;
        if differs {
            return Err("the server's signature does not match".into());
        }
        Ok(())
    }
}

/// `r=…,s=…,i=…` (further attributes are extensions and ignored; a leading mandatory one refused).
fn parse_server_first(text: &str) -> Result<(&str, Vec<u8>, u32), String> {
    if text.starts_with("m=") {
        return Err("the server asks for a mandatory extension".into());
    }
    let mut fields = text.split(',');
    let mut field = |name: &str| {
        fields.next().and_then(|f| f.strip_prefix(name)).ok_or_else(|| format!("server-first-message lacks {name}"))
    };
    let nonce = field("r=")?;
    let salt = base64::decode(field("s=")?).ok_or_else(|| "the salt is not base64".to_string())?;
    let iterations: u32 = field("i=")?.parse().map_err(|_| "the iteration count is not a number".to_string())?;
    if iterations == 0 || iterations > MAX_ITERATIONS {
        return Err(format!("the iteration count {iterations} is outside 1..={MAX_ITERATIONS}"));
    }
    if nonce.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        return Err("the server's nonce has characters SCRAM does not allow".into());
    }
    Ok((nonce, salt, iterations))
}

/// ClientKey and ServerKey: what the salted password is used for.
#[derive(Clone, Copy)]
struct Keys {
    client: [u8; 32],
    server: [u8; 32],
}

/// A digest of the password (not the password itself), the salt and the iteration count.
type MemoKey = ([u8; 32], Vec<u8>, u32);

static MEMO: Mutex<Option<HashMap<MemoKey, Keys>>> = Mutex::new(None);

fn memo_key(password: &str, salt: &[u8], iterations: u32) -> MemoKey {
    (Sha256::digest(password.as_bytes()).into(), salt.to_vec(), iterations)
}

/// Whether the keys of `password` under `salt` and `iterations` are remembered.
pub fn remembers(password: &str, salt: &[u8], iterations: u32) -> bool {
    let id = memo_key(password, salt, iterations);
    MEMO.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|m| m.contains_key(&id))
}

/// The keys of `password` under `salt` and `iterations`, remembered.
fn keys(password: &str, salt: &[u8], iterations: u32) -> Keys {
    if salt.len() > MAX_REMEMBERED_SALT {
        return derive(password, salt, iterations);
    }
    let id = memo_key(password, salt, iterations);
    if let Some(k) = MEMO.lock().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(|m| m.get(&id)) {
        return *k;
    }
    // Derived outside the lock: two first logins of one role may both derive, nothing waits on it.
    let k = derive(password, salt, iterations);
    let mut memo = MEMO.lock().unwrap_or_else(|p| p.into_inner());
    let memo = memo.get_or_insert_with(HashMap::new);
    if memo.len() >= MAX_REMEMBERED {
        memo.clear();
    }
    memo.insert(id, k);
    k
}

/// PBKDF2 of the password, then the two keys (RFC 5802 §3).
fn derive(password: &str, salt: &[u8], iterations: u32) -> Keys {
    let salted = HmacKey::new(&pbkdf2_sha256(password.as_bytes(), salt, iterations));
    Keys { client: salted.mac(&[b"Client Key"]), server: salted.mac(&[b"Server Key"]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 §3: user "user", password "pencil".
    const NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    #[test]
    fn the_rfc_7677_exchange_byte_for_byte() {
        for _ in 0..2 {
            // The second round takes the remembered keys and must give the same proof.
            let (mut s, first) = Scram::with_nonce("pencil", "user", NONCE);
            assert_eq!(first, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
            assert_eq!(s.server_first(SERVER_FIRST.as_bytes()).unwrap(), CLIENT_FINAL.as_bytes());
            s.server_final(SERVER_FINAL.as_bytes()).unwrap();
        }
    }

    #[test]
    fn a_wrong_or_missing_server_signature_fails() {
        for bad in ["v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "v=6rri", "e=invalid-proof", "x=1", ""] {
            let (mut s, _) = Scram::with_nonce("pencil", "user", NONCE);
            s.server_first(SERVER_FIRST.as_bytes()).unwrap();
            assert!(s.server_final(bad.as_bytes()).is_err(), "{bad}");
        }
        // Near misses of the right signature: the same bit flipped in two bytes (differences that
        // cancel if they were summed with XOR instead of collected with OR), one byte more, one less.
        let right = base64::decode(SERVER_FINAL.strip_prefix("v=").unwrap()).unwrap();
        let mut twice = right.clone();
        twice[0] ^= 1;
        twice[1] ^= 1;
        let mut longer = right.clone();
        longer.push(0);
        for bad in [twice, longer, right[..31].to_vec()] {
            let (mut s, _) = Scram::with_nonce("pencil", "user", NONCE);
            s.server_first(SERVER_FIRST.as_bytes()).unwrap();
            let msg = format!("v={}", base64::encode(&bad));
            assert!(s.server_final(msg.as_bytes()).is_err(), "{msg}");
        }
        // The right signature for another password is wrong too.
        let (mut s, _) = Scram::with_nonce("pen", "user", NONCE);
        s.server_first(SERVER_FIRST.as_bytes()).unwrap();
        assert!(s.server_final(SERVER_FINAL.as_bytes()).is_err());
    }

    #[test]
    fn server_first_messages_that_are_refused() {
        for bad in [
            "r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=100001",
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4000000000",
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1",
            "r=rOprNGfwEbeRWgbNEkqOx,s=not base64,i=4096",
            "r=rOprNGfwEbeRWgbNEkqOx,i=4096",
            "m=ext,r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkqO x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        ] {
            let (mut s, _) = Scram::with_nonce("pencil", "user", NONCE);
            assert!(s.server_first(bad.as_bytes()).is_err(), "{bad}");
        }
        let (mut s, _) = Scram::with_nonce("pencil", "user", NONCE);
        assert!(s.server_first(&[0xff, 0xfe]).is_err());
        // Out of turn: a final before the first, a second first.
        let (mut s, _) = Scram::with_nonce("pencil", "user", NONCE);
        assert!(s.server_final(SERVER_FINAL.as_bytes()).is_err());
        let (mut s, _) = Scram::with_nonce("pencil", "user", NONCE);
        s.server_first(SERVER_FIRST.as_bytes()).unwrap();
        assert!(s.server_first(SERVER_FIRST.as_bytes()).is_err());
    }

    #[test]
    fn the_bounds_themselves_are_allowed() {
        let most = format!("r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i={MAX_ITERATIONS}");
        assert_eq!(parse_server_first(&most).map(|(_, _, i)| i), Ok(MAX_ITERATIONS));
        assert_eq!(parse_server_first("r=x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1").map(|(_, _, i)| i), Ok(1));
    }

    #[test]
    fn extensions_after_the_iteration_count_are_ignored() {
        let (mut s, _) = Scram::with_nonce("pencil", "user", NONCE);
        let with_ext = format!("{SERVER_FIRST},x=later");
        let reply = String::from_utf8(s.server_first(with_ext.as_bytes()).unwrap()).unwrap();
        assert!(reply.starts_with("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p="), "{reply}");
    }

    #[test]
    fn keys_are_derived_once_per_password_salt_and_count() {
        let remembered = remembers;
        assert!(!remembered("a password only this test uses", b"salt-1", 64));
        let a = keys("a password only this test uses", b"salt-1", 64);
        assert!(remembered("a password only this test uses", b"salt-1", 64));
        let again = keys("a password only this test uses", b"salt-1", 64);
        assert_eq!((a.client, a.server), (again.client, again.server));
        assert_eq!(a.client, {
            let salted = HmacKey::new(&pbkdf2_sha256(b"a password only this test uses", b"salt-1", 64));
            salted.mac(&[b"Client Key"])
        });
        let longest_salt = [6u8; MAX_REMEMBERED_SALT];
        keys("a password only this test uses", &longest_salt, 64);
        assert!(remembered("a password only this test uses", &longest_salt, 64), "the longest salt remembered");
        let long_salt = [7u8; MAX_REMEMBERED_SALT + 1];
        let long = keys("a password only this test uses", &long_salt, 64);
        assert!(!remembered("a password only this test uses", &long_salt, 64), "long salts are not remembered");
        assert_ne!(long.client, a.client);
        let other_salt = keys("a password only this test uses", b"salt-2", 64);
        let other_count = keys("a password only this test uses", b"salt-1", 65);
        let other_password = keys("another password this test uses", b"salt-1", 64);
        for k in [other_salt, other_count, other_password] {
            assert_ne!(k.client, a.client);
            assert_ne!(k.server, a.server);
        }
        // Far below the bound, entries stay side by side.
        assert!(remembered("a password only this test uses", b"salt-1", 64), "the first entry kept");
        assert!(remembered("a password only this test uses", b"salt-2", 64));
    }

    #[test]
    fn nonces_are_random_printable_and_non_ascii_passwords_take_saslprep() {
        let (_, a) = Scram::start("pw").unwrap();
        let (_, b) = Scram::start("pw").unwrap();
        assert_ne!(a, b);
        let a = String::from_utf8(a).unwrap();
        let nonce = a.strip_prefix("n,,n=,r=").unwrap();
        assert_eq!(nonce.len(), 24);
        assert!(nonce.bytes().all(|c| (0x21..=0x7e).contains(&c) && c != b','));
        let (s, first) = Scram::start("pässwörd").unwrap();
        assert!(matches!(s.kind, Kind::Prepped(_)));
        assert!(first.starts_with(b"n,,n=,r="));
    }
}
