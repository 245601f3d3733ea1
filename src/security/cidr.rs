//! CIDR blocks and address matching for the allowlists.

use std::net::IpAddr;

/// An address block such as `10.0.0.0/8` or `::1/128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| format!("'{s}' is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("'{s}' has an invalid prefix length")),
            },
        };
        Ok(Cidr { addr, prefix })
    }

    /// Parses a comma-separated list; empty items are skipped.
    pub fn parse_list(s: &str) -> Result<Vec<Cidr>, String> {
        s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(Cidr::parse).collect()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d; compare it as IPv4.
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => ip,
            },
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix as u32) };
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix as u32) };
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// True when any block contains `ip`.
pub fn any_contains(list: &[Cidr], ip: IpAddr) -> bool {
    list.iter().any(|c| c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        let l = Cidr::parse_list("127.0.0.0/8, ::1/128,10.0.0.0/8,172.16.0.0/12").unwrap();
        assert!(any_contains(&l, "127.1.2.3".parse().unwrap()));
        assert!(any_contains(&l, "::1".parse().unwrap()));
        assert!(any_contains(&l, "::ffff:10.9.9.9".parse().unwrap()));
        assert!(any_contains(&l, "172.31.255.255".parse().unwrap()));
        assert!(!any_contains(&l, "172.32.0.1".parse().unwrap()));
        assert!(!any_contains(&l, "8.8.8.8".parse().unwrap()));
        assert!(!any_contains(&l, "::2".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn ipv6_blocks_compare_only_their_prefix() {
        let l = Cidr::parse_list("fd00::/8, 2001:db8:1::/48").unwrap();
        assert!(any_contains(&l, "fd12:3456::1".parse().unwrap()));
        assert!(!any_contains(&l, "fe00::1".parse().unwrap()));
        assert!(any_contains(&l, "2001:db8:1:ffff::9".parse().unwrap()));
        assert!(!any_contains(&l, "2001:db8:2::1".parse().unwrap()));
        // A whole address: its last bit counts too.
        let one = Cidr::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::".parse().unwrap()));
        assert!(Cidr::parse("::/0").unwrap().contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn shown_as_address_and_prefix() {
        assert_eq!(Cidr::parse(" 10.0.0.0/8 ").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(Cidr::parse("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
        assert_eq!(Cidr::parse("::1").unwrap().to_string(), "::1/128");
    }

    #[test]
    fn bad_input() {
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
        assert!(Cidr::parse("::/129").is_err());
    }
}
