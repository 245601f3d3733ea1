//! Test archives: a minimal gzip writer (a single member around `compress_to_vec`, so tests do not
//! depend on the gzip reader they check) and a tar.gz of a `postgresql/` folder given as
//! (path, content) pairs. Shared by the tests and the deploy benchmarks.
#![allow(dead_code)]

/// One gzip member: fixed header, raw DEFLATE, CRC32 and size trailer.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut v = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    v.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(data, 6));
    v.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v
}

/// A GNU tar.gz with each file at `postgresql/<path>` (no directory entries).
pub fn tgz<P: AsRef<str>, C: AsRef<str>>(files: impl IntoIterator<Item = (P, C)>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let content = content.as_ref();
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("postgresql/{}", path.as_ref()), content.as_bytes()).unwrap();
    }
    gzip(&b.into_inner().unwrap())
}
