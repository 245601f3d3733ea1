//! Platform keys: a platform that has one is reached only with `Authorization: Bearer <key>` or the
//! admin token. Keys are random, shown once, and kept only as SHA-256 hashes (a key has 192 random
//! bits, so a plain hash is as strong as a slow one and costs nothing on the `/call` path).

use sha2::{Digest, Sha256};

use super::constant_time_eq;
use super::random::{bytes, hex};
pub use crate::catalog::StoredKey;
use crate::error::{ApiError, Kind};

/// Keys start with this, so a leaked one is recognisable in logs and secret scanners.
pub const KEY_PREFIX: &str = "ssdbk_";

/// A new key.
pub fn new_key() -> Result<String, ApiError> {
    let b = bytes(24).map_err(|e| ApiError::new(Kind::Internal, format!("cannot read /dev/urandom: {e}")))?;
    Ok(format!("{KEY_PREFIX}{}", hex(&b)))
}

/// The stored form of a key.
pub fn hash(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What a request presented: a bearer value (a platform key or the admin token), and whether it passed
/// the admin check (token and admin allowlist).
#[derive(Debug, Clone, Default)]
pub struct Credential {
    pub bearer: Option<String>,
    pub admin: bool,
}

impl Credential {
    /// From an `Authorization` header value.
    pub fn from_header(authorization: Option<&str>, admin: bool) -> Credential {
        let bearer = authorization
            .and_then(|a| a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("bearer ")))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        Credential { bearer, admin }
    }

    /// May this request act on `platform`, whose stored keys are `keys`?
    ///
    /// The admin token always may. A platform with keys needs one of them. A platform without one is
    /// open unless `REQUIRE_PLATFORM_KEYS` is on (`require`).
    pub fn allows(&self, platform: &str, keys: &[StoredKey], require: bool) -> Result<(), ApiError> {
        if self.admin {
            return Ok(());
        }
        let now = now_secs();
        let live: Vec<&StoredKey> = keys.iter().filter(|k| k.valid_until.is_none_or(|t| t > now)).collect();
        if live.is_empty() && !require {
            return Ok(());
        }
        let Some(given) = &self.bearer else {
            return Err(ApiError::new(
                Kind::InvalidPlatformKey,
                format!("platform '{platform}' needs its key: send Authorization: Bearer <platform key>"),
            ));
        };
        let h = hash(given);
        // Every stored key is compared, whatever matched first, so timing says nothing about which.
        let mut ok = false;
        for k in &live {
            ok |= constant_time_eq(h.as_bytes(), k.hash.as_bytes());
        }
        if ok {
            Ok(())
        } else if live.is_empty() {
            Err(ApiError::new(
                Kind::InvalidPlatformKey,
                format!("platform '{platform}' has no key yet and this gateway requires one (REQUIRE_PLATFORM_KEYS)"),
            ))
        } else {
            Err(ApiError::new(Kind::InvalidPlatformKey, format!("the key is not valid for platform '{platform}'")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(key: &str) -> StoredKey {
        StoredKey { hash: hash(key), valid_until: None }
    }

    /// The clock read here, not through the code under test.
    fn wall_clock() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn keys_are_random_prefixed_and_hashed() {
        let a = new_key().unwrap();
        let b = new_key().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 48);
        assert_eq!(hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(!hash(&a).contains(&a));
    }

    #[test]
    fn a_keyed_platform_needs_its_key_or_the_admin_token() {
        let keys = [stored("k1")];
        let none = Credential::default();
        assert_eq!(none.allows("p", &keys, false).unwrap_err().kind, Kind::InvalidPlatformKey);
        let wrong = Credential::from_header(Some("Bearer k2"), false);
        assert_eq!(wrong.allows("p", &keys, false).unwrap_err().kind, Kind::InvalidPlatformKey);
        assert!(Credential::from_header(Some("Bearer k1"), false).allows("p", &keys, false).is_ok());
        assert!(Credential::from_header(Some("Bearer admin"), true).allows("p", &keys, false).is_ok());
    }

    #[test]
    fn keyless_platforms_are_open_unless_keys_are_required() {
        assert!(Credential::default().allows("p", &[], false).is_ok());
        assert_eq!(Credential::default().allows("p", &[], true).unwrap_err().kind, Kind::InvalidPlatformKey);
        let any = Credential::from_header(Some("Bearer whatever"), false);
        assert_eq!(any.allows("p", &[], true).unwrap_err().kind, Kind::InvalidPlatformKey);
    }

    #[test]
    fn every_live_key_is_compared_in_constant_time_whichever_matches() {
        use crate::security::ct_probe;
        let keys = [stored("k1"), stored("k2"), stored("k3")];
        ct_probe::take();
        for given in ["k1", "k3", "nope"] {
            let r = Credential::from_header(Some(&format!("Bearer {given}")), false).allows("p", &keys, false);
            assert_eq!(r.is_ok(), given != "nope", "{given}");
            let (calls, steps) = ct_probe::take();
            assert_eq!(calls, keys.len(), "{given}: not every stored key was compared through constant_time_eq");
            assert_eq!(steps, keys.len() * 64, "{given}");
        }
    }

    #[test]
    fn a_rotated_out_key_counts_until_its_grace_ends() {
        let now = wall_clock();
        let keys = [stored("new"), StoredKey { hash: hash("old"), valid_until: Some(now + 60) }];
        assert!(Credential::from_header(Some("Bearer old"), false).allows("p", &keys, false).is_ok());
        let expired = [stored("new"), StoredKey { hash: hash("old"), valid_until: Some(now.saturating_sub(1)) }];
        assert!(Credential::from_header(Some("Bearer old"), false).allows("p", &expired, false).is_err());
        assert!(Credential::from_header(Some("Bearer new"), false).allows("p", &expired, false).is_ok());
    }

    #[test]
    fn a_grace_that_ends_this_second_is_over() {
        let keys = [stored("new"), StoredKey { hash: hash("old"), valid_until: Some(wall_clock()) }];
        assert!(Credential::from_header(Some("Bearer old"), false).allows("p", &keys, false).is_err());
    }
}
