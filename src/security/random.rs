//! Secrets from the operating system's random source: platform keys and the per-process fallback for
//! `PLATFORM_SECRET`.

use std::io::Read;
use std::sync::{Arc, OnceLock};

/// `n` random bytes from `/dev/urandom`. The kernel's pool never blocks once seeded and a failure to
/// read it means the machine cannot make secrets at all, so that is a hard error for the caller.
pub fn bytes(n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 15) as usize] as char);
    }
    s
}

/// One secret per process when `PLATFORM_SECRET` is unset: every gateway in this process (tests run
/// several) derives the same role passwords, and a restart re-sets them at start (see `roles`).
pub fn process_secret() -> Arc<[u8]> {
    static SECRET: OnceLock<Arc<[u8]>> = OnceLock::new();
    SECRET
        .get_or_init(|| {
            let b = bytes(32).unwrap_or_else(|e| panic!("cannot read /dev/urandom for a platform secret: {e}"));
            Arc::from(b)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_differ_and_hex_is_lower_case() {
        let a = bytes(16).unwrap();
        let b = bytes(16).unwrap();
        assert_ne!(a, b);
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
        assert_eq!(process_secret(), process_secret());
    }
}
