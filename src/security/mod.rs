//! Who may talk to the gateway: the client-address allowlist (with `X-Forwarded-For` only from trusted
//! proxies), the admin token and admin allowlist, and the naming rules that keep platforms apart.

pub mod authz;
pub mod base64;
pub mod cidr;
pub mod digest;
pub mod keys;
pub mod names;
pub mod random;
pub mod roles;

use std::net::IpAddr;

use crate::config::SecurityConfig;
use crate::error::{ApiError, Kind};
use cidr::any_contains;

/// The address a request is judged by. `X-Forwarded-For` is read right to left, skipping trusted
/// proxies, and only when the peer itself is a trusted proxy; otherwise the peer address counts.
///
/// An entry that is not an address, where the chain still speaks for a trusted proxy, refuses the
/// request: falling back to the proxy's own address would let anyone behind it pass as the proxy.
pub fn client_ip(peer: IpAddr, xff: Option<&str>, cfg: &SecurityConfig) -> Result<IpAddr, ApiError> {
    if cfg.trusted_proxies.is_empty() || !any_contains(&cfg.trusted_proxies, peer) {
        return Ok(peer);
    }
    let Some(xff) = xff else { return Ok(peer) };
    let mut ip = peer;
    for part in xff.rsplit(',') {
        match part.trim().parse::<IpAddr>() {
            Ok(a) => {
                ip = a;
                if !any_contains(&cfg.trusted_proxies, a) {
                    break;
                }
            }
            Err(_) => {
                return Err(ApiError::new(
                    Kind::InvalidRequest,
                    "X-Forwarded-For from a trusted proxy holds an entry that is not an IP address",
                ));
            }
        }
    }
    Ok(ip)
}

pub fn check_allowed(ip: IpAddr, cfg: &SecurityConfig) -> Result<(), ApiError> {
    if any_contains(&cfg.allowed_networks, ip) {
        Ok(())
    } else {
        Err(ApiError::new(Kind::Unauthorized, format!("address {ip} is not in ALLOWED_NETWORKS")))
    }
}

/// The one comparison for secrets (the admin token, platform key hashes). Every byte of the longer
/// input is read and the differences are folded together with no early exit, so the time taken
/// depends on the lengths only, never on how much of a token matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    #[cfg(test)]
    ct_probe::call();
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        #[cfg(test)]
        ct_probe::step();
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    // Keeps the optimiser from turning the fold back into a compare that stops at the first difference.
    std::hint::black_box(diff) == 0
}

/// Counts, per thread, the calls of [`constant_time_eq`] and the bytes it read, so unit tests can see
/// that a secret went through it and that it read every byte whatever the first difference.
#[cfg(test)]
pub(crate) mod ct_probe {
    use std::cell::Cell;

    thread_local! {
        static CALLS: Cell<usize> = const { Cell::new(0) };
        static STEPS: Cell<usize> = const { Cell::new(0) };
    }

    pub fn call() {
        CALLS.with(|c| c.set(c.get() + 1));
    }

    pub fn step() {
        STEPS.with(|c| c.set(c.get() + 1));
    }

    /// `(calls, bytes read)` since the last `take` on this thread.
    pub fn take() -> (usize, usize) {
        (CALLS.with(|c| c.replace(0)), STEPS.with(|c| c.replace(0)))
    }
}

/// The secret an `Authorization` header presents: a bearer token, or the password of HTTP Basic
/// credentials (any user name; a browser can send only those).
pub fn presented_secret(authorization: Option<&str>) -> Option<String> {
    let a = authorization?.trim();
    let (scheme, rest) = a.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = String::from_utf8(base64::decode(rest)?).ok()?;
        let (_user, password) = decoded.split_once(':')?;
        return Some(password.to_string());
    }
    None
}

/// Admin routes: a configured token, a peer in `ALLOWED_ADMIN_IPS`, and the token as
/// `Authorization: Bearer <token>` or as the password of HTTP Basic credentials.
pub fn check_admin(ip: IpAddr, authorization: Option<&str>, cfg: &SecurityConfig) -> Result<(), ApiError> {
    let Some(token) = &cfg.admin_token else {
        return Err(ApiError::new(
            Kind::AdminDisabled,
            "admin routes are disabled: set ADMIN_TOKEN (at least 16 characters) to enable them",
        ));
    };
    if !any_contains(&cfg.admin_ips, ip) {
        return Err(ApiError::new(Kind::Unauthorized, format!("address {ip} is not in ALLOWED_ADMIN_IPS")));
    }
    match presented_secret(authorization) {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(Kind::AdminTokenInvalid, "admin token is wrong")),
        None => Err(ApiError::new(Kind::AdminTokenInvalid, "missing Authorization: Bearer <ADMIN_TOKEN>")),
    }
}

/// `/metrics`: a peer in `ALLOWED_ADMIN_IPS`, and when `METRICS_TOKEN` is set, that token (or the admin
/// token) presented as for admin routes. Without `METRICS_TOKEN` the address alone decides, so a
/// Prometheus on the VM scrapes without a secret.
pub fn check_metrics(ip: IpAddr, authorization: Option<&str>, cfg: &SecurityConfig) -> Result<(), ApiError> {
    if !any_contains(&cfg.admin_ips, ip) {
        return Err(ApiError::new(Kind::Unauthorized, format!("address {ip} is not in ALLOWED_ADMIN_IPS")));
    }
    let Some(token) = &cfg.metrics_token else { return Ok(()) };
    let given = presented_secret(authorization);
    let ok = given.as_deref().is_some_and(|g| {
        constant_time_eq(g.as_bytes(), token.as_bytes())
            || cfg.admin_token.as_deref().is_some_and(|a| constant_time_eq(g.as_bytes(), a.as_bytes()))
    });
    if ok {
        Ok(())
    } else if given.is_some() {
        Err(ApiError::new(Kind::AdminTokenInvalid, "metrics token is wrong"))
    } else {
        Err(ApiError::new(Kind::AdminTokenInvalid, "missing Authorization: Bearer <METRICS_TOKEN>"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn xff_only_from_trusted_proxies() {
        let mut c = Config::defaults().security;
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        assert_eq!(client_ip(peer, Some("8.8.8.8"), &c).unwrap(), peer);
        c.trusted_proxies = cidr::Cidr::parse_list("10.1.1.0/24").unwrap();
        assert_eq!(client_ip(peer, Some("8.8.8.8"), &c).unwrap(), "8.8.8.8".parse::<IpAddr>().unwrap());
        assert_eq!(
            client_ip(peer, Some("1.1.1.1, 8.8.8.8, 10.1.1.7"), &c).unwrap(),
            "8.8.8.8".parse::<IpAddr>().unwrap()
        );
        // A peer that is not a trusted proxy: its header is ignored, garbled or not.
        let stranger: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(client_ip(stranger, Some("8.8.8.8"), &c).unwrap(), stranger);
        assert_eq!(client_ip(stranger, Some("garbage"), &c).unwrap(), stranger);
    }

    #[test]
    fn garbled_xff_from_a_trusted_proxy_is_refused_not_replaced_by_the_proxy() {
        let mut c = Config::defaults().security;
        c.trusted_proxies = cidr::Cidr::parse_list("10.1.1.0/24").unwrap();
        let proxy: IpAddr = "10.1.1.1".parse().unwrap();
        assert_eq!(client_ip(proxy, Some("not-an-ip"), &c).unwrap_err().kind, Kind::InvalidRequest);
        assert_eq!(client_ip(proxy, Some("8.8.8.8, bogus"), &c).unwrap_err().kind, Kind::InvalidRequest);
        // Past the first untrusted address, what a client wrote further left does not matter.
        assert_eq!(client_ip(proxy, Some("bogus, 8.8.8.8"), &c).unwrap(), "8.8.8.8".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn only_addresses_in_allowed_networks_pass() {
        let mut c = Config::defaults().security;
        c.allowed_networks = cidr::Cidr::parse_list("10.0.0.0/8, ::1/128").unwrap();
        for ok in ["10.2.3.4", "::1", "::ffff:10.9.9.9"] {
            assert!(check_allowed(ok.parse().unwrap(), &c).is_ok(), "{ok}");
        }
        for refused in ["11.0.0.1", "127.0.0.1", "::2"] {
            assert_eq!(check_allowed(refused.parse().unwrap(), &c).unwrap_err().kind, Kind::Unauthorized, "{refused}");
        }
    }

    #[test]
    fn ct_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"xbc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"", b"a"));
        // A shorter input is not equal to a longer one padded with zero bytes.
        assert!(!constant_time_eq(b"ab", b"ab\0"));
        // Two differences must not cancel each other out.
        assert!(!constant_time_eq(b"ab", b"ba"));
        // Lengths that differ by a multiple of 256.
        assert!(!constant_time_eq(&[7u8; 3], &[7u8; 259]));
        assert!(constant_time_eq(&[0xffu8; 300], &[0xffu8; 300]));
    }

    #[test]
    fn ct_eq_reads_every_byte_wherever_the_first_difference_is() {
        let token = b"0123456789abcdef0123456789abcdef";
        ct_probe::take();
        for at in [0, 1, 15, 31] {
            let mut other = *token;
            other[at] ^= 0x20;
            assert!(!constant_time_eq(&other, token));
            assert_eq!(ct_probe::take(), (1, token.len()), "difference at byte {at}");
        }
        assert!(constant_time_eq(token, token));
        assert_eq!(ct_probe::take(), (1, token.len()));
        // A length mismatch is not a shortcut either: the longer input is read to its end.
        assert!(!constant_time_eq(b"x", token));
        assert_eq!(ct_probe::take(), (1, token.len()));
    }

    #[test]
    fn the_admin_token_is_compared_only_in_constant_time() {
        let mut c = Config::defaults().security;
        let token = "0123456789abcdef";
        c.admin_token = Some(token.into());
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        ct_probe::take();
        for given in ["Xnope-same-lengt", "0123456789abcdeX", "short", "0123456789abcdef-and-more"] {
            let header = format!("Bearer {given}");
            assert_eq!(check_admin(lo, Some(&header), &c).unwrap_err().kind, Kind::AdminTokenInvalid, "{given}");
            let (calls, steps) = ct_probe::take();
            assert_eq!(calls, 1, "'{given}' was not compared through constant_time_eq");
            assert_eq!(steps, given.len().max(token.len()), "{given}");
        }
        assert!(check_admin(lo, Some("Bearer 0123456789abcdef"), &c).is_ok());
        assert_eq!(ct_probe::take(), (1, token.len()), "the right token goes through it too");
    }

    #[test]
    fn admin_checks() {
        let mut c = Config::defaults().security;
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(check_admin(lo, None, &c).unwrap_err().kind, Kind::AdminDisabled);
        c.admin_token = Some("0123456789abcdef".into());
        assert_eq!(check_admin(lo, None, &c).unwrap_err().kind, Kind::AdminTokenInvalid);
        assert_eq!(check_admin(lo, Some("Bearer nope"), &c).unwrap_err().kind, Kind::AdminTokenInvalid);
        assert!(check_admin(lo, Some("Bearer 0123456789abcdef"), &c).is_ok());
        let far: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(check_admin(far, Some("Bearer 0123456789abcdef"), &c).unwrap_err().kind, Kind::Unauthorized);
        // HTTP Basic: any user, the token as password ("any:0123456789abcdef", "u:wrong").
        assert!(check_admin(lo, Some("Basic YW55OjAxMjM0NTY3ODlhYmNkZWY="), &c).is_ok());
        assert_eq!(check_admin(lo, Some("Basic dTp3cm9uZw=="), &c).unwrap_err().kind, Kind::AdminTokenInvalid);
        assert_eq!(check_admin(lo, Some("Basic !!!"), &c).unwrap_err().kind, Kind::AdminTokenInvalid);
    }

    #[test]
    fn metrics_checks() {
        let mut c = Config::defaults().security;
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let far: IpAddr = "10.0.0.5".parse().unwrap();
        assert!(check_metrics(lo, None, &c).is_ok());
        assert_eq!(check_metrics(far, None, &c).unwrap_err().kind, Kind::Unauthorized);
        c.metrics_token = Some("metrics-secret".into());
        c.admin_token = Some("0123456789abcdef".into());
        assert_eq!(check_metrics(lo, None, &c).unwrap_err().kind, Kind::AdminTokenInvalid);
        assert_eq!(check_metrics(lo, Some("Bearer nope"), &c).unwrap_err().kind, Kind::AdminTokenInvalid);
        assert!(check_metrics(lo, Some("Bearer metrics-secret"), &c).is_ok());
        assert!(check_metrics(lo, Some("Bearer 0123456789abcdef"), &c).is_ok());
    }
}
