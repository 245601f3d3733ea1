//! Packing a `postgresql/` folder into the tar.gz the deploy routes take, in memory: a ustar writer
//! and a gzip (RFC 1952) member around `miniz_oxide`'s DEFLATE. The reverse of [`super::archive`] and
//! [`super::gzip`]; the deploy command uses it so a build machine needs neither `tar` nor `gzip`.
//! Entries are sorted, owned by 0:0, mode 0644 and dated 0, so the same folder packs to the same bytes.

use std::path::{Path, PathBuf};

/// A file to pack: its path inside the archive (`/`-separated) and its bytes.
pub struct Entry {
    pub path: String,
    pub data: Vec<u8>,
}

/// Why a folder could not be packed.
#[derive(Debug)]
pub struct PackError(pub String);

impl std::fmt::Display for PackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads every regular file under `dir` into entries named `postgresql/<relative path>`, sorted.
/// Symbolic links and other special files are refused (the gateway would refuse them too).
pub fn read_folder(dir: &Path) -> Result<Vec<Entry>, PackError> {
    let meta = std::fs::metadata(dir).map_err(|e| PackError(format!("{}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(PackError(format!("{} is not a folder", dir.display())));
    }
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| PackError(format!("{}: {e}", d.display())))?;
        for item in rd {
            let item = item.map_err(|e| PackError(format!("{}: {e}", d.display())))?;
            let p = item.path();
            let ft = item.file_type().map_err(|e| PackError(format!("{}: {e}", p.display())))?;
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let rel =
                    p.strip_prefix(dir).map_err(|_| PackError(format!("{} is outside the folder", p.display())))?;
                let mut name = String::from("postgresql");
                for c in rel.components() {
                    let c = c
                        .as_os_str()
                        .to_str()
                        .ok_or_else(|| PackError(format!("{}: file names must be UTF-8", p.display())))?;
                    name.push('/');
                    name.push_str(c);
                }
                let data = std::fs::read(&p).map_err(|e| PackError(format!("{}: {e}", p.display())))?;
                out.push(Entry { path: name, data });
            } else {
                return Err(PackError(format!("{}: only regular files and folders can be packed", p.display())));
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// A ustar archive of `entries` (regular files only), ended by two zero blocks.
pub fn tar(entries: &[Entry]) -> Result<Vec<u8>, PackError> {
    let mut out =
        Vec::with_capacity(entries.iter().map(|e| 512 + e.data.len().div_ceil(512) * 512).sum::<usize>() + 1024);
    for e in entries {
        let mut h = [0u8; 512];
        let (prefix, name) = split_name(&e.path)?;
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], 0o644);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], e.data.len() as u64);
        octal(&mut h[136..148], 0);
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        // The checksum is computed with its own field read as eight spaces.
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        let field = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(field.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

/// ustar keeps names of up to 100 bytes, or 155 + `/` + 100 split at a slash.
fn split_name(path: &str) -> Result<(&str, &str), PackError> {
    if path.len() <= 100 {
        return Ok(("", path));
    }
    for (i, _) in path.match_indices('/') {
        let (prefix, name) = (&path[..i], &path[i + 1..]);
        if prefix.len() <= 155 && name.len() <= 100 && !name.is_empty() {
            return Ok((prefix, name));
        }
    }
    Err(PackError(format!("{path}: path too long for a ustar archive")))
}

/// `value` as zero-padded octal ending in NUL, filling `field`.
fn octal(field: &mut [u8], value: u64) {
    let s = format!("{:0width$o}\0", value, width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

/// One gzip member: a 10-byte header (no name, mtime 0, OS unknown), raw DEFLATE, CRC-32 and size.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let deflated = miniz_oxide::deflate::compress_to_vec(data, 6);
    let mut out = Vec::with_capacity(deflated.len() + 18);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    out.extend_from_slice(&deflated);
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// The tar.gz of a `postgresql/` folder.
pub fn pack_folder(dir: &Path) -> Result<(Vec<u8>, usize), PackError> {
    let entries = read_folder(dir)?;
    if entries.is_empty() {
        return Err(PackError(format!("{} holds no files", dir.display())));
    }
    Ok((gzip(&tar(&entries)?), entries.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::archive::{ArchiveLimits, Folder, read_archive};

    #[test]
    fn packed_archives_read_back_through_the_gateways_reader() {
        let long = format!("postgresql/functions/{}/f.sql", "d".repeat(120));
        let entries = vec![
            Entry {
                path: "postgresql/functions/a.sql".into(),
                data: b"CREATE FUNCTION a() RETURNS int AS 'SELECT 1' LANGUAGE sql;".to_vec(),
            },
            Entry { path: long.clone(), data: b"CREATE FUNCTION f() RETURNS int AS 'SELECT 2' LANGUAGE sql;".to_vec() },
            Entry { path: "postgresql/migrations/001_x.sql".into(), data: vec![b'-'; 1500] },
        ];
        let tgz = gzip(&tar(&entries).unwrap());
        let a = read_archive(&tgz, &ArchiveLimits::default()).unwrap();
        assert_eq!(a.files(Folder::Functions).len(), 2);
        assert_eq!(a.files(Folder::Migrations)[0].content.len(), 1500);
        // Byte for byte the same when packed again.
        assert_eq!(tgz, gzip(&tar(&entries).unwrap()));
    }

    #[test]
    fn gzip_output_inflates_to_the_input() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(crate::deploy::gzip::gunzip(&gzip(&data), 1 << 20).unwrap(), data);
    }

    #[test]
    fn names_over_the_ustar_limits_are_refused() {
        assert!(split_name(&"x".repeat(101)).is_err());
        assert_eq!(split_name("a/b").unwrap(), ("", "a/b"));
    }
}
