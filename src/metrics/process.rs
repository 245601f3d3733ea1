//! The process figures Prometheus' client libraries call `process_*`, read from `/proc/self` (Linux).

/// Resident memory, open descriptors and their limit; `None` where `/proc` does not say.
#[derive(Clone, Debug, Default)]
pub struct ProcessStats {
    pub rss_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

pub fn read() -> ProcessStats {
    ProcessStats { rss_bytes: rss_bytes(), open_fds: open_fds(), max_fds: max_fds() }
}

/// `VmRSS` of `/proc/self/status` (in kB there).
fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn open_fds() -> Option<u64> {
    // The directory handle itself is one of the entries while it is read.
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count().saturating_sub(1) as u64)
}

fn max_fds() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let p = super::read();
        if std::path::Path::new("/proc/self/status").exists() {
            assert!(p.rss_bytes.unwrap() > 0);
            let before = p.open_fds.unwrap();
            let f = std::fs::File::open("/proc/self/status").unwrap();
            assert_eq!(super::read().open_fds.unwrap(), before + 1);
            drop(f);
        }
    }
}
