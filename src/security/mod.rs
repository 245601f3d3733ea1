//! Who may talk to the gateway: the client-address allowlist (with `X-Forwarded-For` only from trusted
//! proxies), the admin token and admin allowlist, and the naming rules that keep platforms apart.

pub mod cidr;
pub mod names;

use std::net::IpAddr;

use crate::config::SecurityConfig;
use crate::error::{ApiError, Kind};
use cidr::any_contains;

/// The address a request is judged by. `X-Forwarded-For` is read right to left, skipping trusted
/// proxies, and only when the peer itself is a trusted proxy; otherwise the peer address counts.
pub fn client_ip(peer: IpAddr, xff: Option<&str>, cfg: &SecurityConfig) -> IpAddr {
    if cfg.trusted_proxies.is_empty() || !any_contains(&cfg.trusted_proxies, peer) {
        return peer;
    }
    let Some(xff) = xff else { return peer };
    let mut ip = peer;
    for part in xff.rsplit(',') {
        match part.trim().parse::<IpAddr>() {
            Ok(a) => {
                ip = a;
                if !any_contains(&cfg.trusted_proxies, a) {
                    break;
                }
            }
            // A garbled entry: stop at the last address we could trust.
            Err(_) => break,
        }
    }
    ip
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

/// Admin routes: a configured token, a peer in `ALLOWED_ADMIN_IPS`, and `Authorization: Bearer <token>`.
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
    let given =
        authorization.and_then(|a| a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("bearer "))).map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(Kind::AdminTokenInvalid, "admin token is wrong")),
        None => Err(ApiError::new(Kind::AdminTokenInvalid, "missing Authorization: Bearer <ADMIN_TOKEN>")),
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
        assert_eq!(client_ip(peer, Some("8.8.8.8"), &c), peer);
        c.trusted_proxies = cidr::Cidr::parse_list("10.1.1.0/24").unwrap();
        assert_eq!(client_ip(peer, Some("8.8.8.8"), &c), "8.8.8.8".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(peer, Some("1.1.1.1, 8.8.8.8, 10.1.1.7"), &c), "8.8.8.8".parse::<IpAddr>().unwrap());
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
    }
}
