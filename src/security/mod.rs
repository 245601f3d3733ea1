//! Who may talk to the gateway: the client-address allowlist (with `X-Forwarded-For` only from trusted
//! proxies), the admin token and admin allowlist, and the naming rules that keep platforms apart.

pub mod cidr;
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

/// Compares without an early exit so the time taken does not reveal how much of a token matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    diff == 0 && a.len() == b.len()
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
        let decoded = String::from_utf8(base64_decode(rest)?).ok()?;
        let (_user, password) = decoded.split_once(':')?;
        return Some(password.to_string());
    }
    None
}

/// Standard base64 (RFC 4648 §4) with or without padding; `None` for anything else.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        return None;
    }
    Some(out)
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
    fn ct_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
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

    #[test]
    fn base64_roundtrips_known_values() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(base64_decode("Zm9vYg").unwrap(), b"foob");
        assert!(base64_decode("Z").is_none());
        assert!(base64_decode("Zm9v YmFy").is_none());
    }
}
