//! Reading an uploaded schema archive (tar.gz of a `postgresql/` folder) into
//! memory: limits, entry-type and path hygiene, folder layout, UTF-8 content.
//! Nothing is ever written to disk; the `tar` crate is used only as a parser.

use super::gzip::{GzipErrorKind, gunzip};
use super::sql::{self, Statement};
use sha2::{Digest, Sha256};
use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::sync::OnceLock;
use tar::EntryType;

/// Resource limits applied while reading an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveLimits {
    pub max_upload_bytes: usize,
    pub max_expanded_bytes: usize,
    pub max_entries: usize,
    pub max_file_bytes: usize,
    pub max_path_bytes: usize,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_upload_bytes: 50 * 1024 * 1024,
            max_expanded_bytes: 200 * 1024 * 1024,
            max_entries: 10_000,
            max_file_bytes: 10 * 1024 * 1024,
            max_path_bytes: 512,
        }
    }
}

/// The schema folders the deployer understands, in no particular order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Folder {
    Extensions,
    Types,
    Tables,
    Migrations,
    Functions,
    Seeders,
}

impl Folder {
    pub const ALL: [Folder; 6] =
        [Folder::Extensions, Folder::Types, Folder::Tables, Folder::Migrations, Folder::Functions, Folder::Seeders];

    /// The folder's name inside `postgresql/`.
    pub fn name(self) -> &'static str {
        match self {
            Folder::Extensions => "extensions",
            Folder::Types => "types",
            Folder::Tables => "tables",
            Folder::Migrations => "migrations",
            Folder::Functions => "functions",
            Folder::Seeders => "seeders",
        }
    }

    fn from_name(name: &str) -> Option<Folder> {
        Folder::ALL.into_iter().find(|f| f.name() == name)
    }

    fn accepts(self, file_name: &str) -> bool {
        let lower = file_name.to_ascii_lowercase();
        let sql = [".pssql", ".pgsql", ".sql"].iter().any(|ext| lower.len() > ext.len() && lower.ends_with(ext));
        // Extension lists are sometimes kept as plain text, one name per line.
        sql || (self == Folder::Extensions && lower.len() > 4 && lower.ends_with(".txt"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlFile {
    pub folder: Folder,
    /// Relative to `postgresql/`, e.g. `functions/users/get_user.pgsql`.
    pub path: String,
    /// The last path component.
    pub name: String,
    /// UTF-8 text with any byte-order mark removed.
    pub content: String,
    /// What the deploy steps read out of `content`, worked out on first use.
    pub derived: Derived,
}

impl SqlFile {
    pub fn new(folder: Folder, path: String, name: String, content: String) -> SqlFile {
        SqlFile { folder, path, name, content, derived: Derived::default() }
    }

    /// The file's statements (see [`sql::split_statements`]).
    pub fn statements(&self) -> &[Statement] {
        self.derived.statements.get_or_init(|| sql::split_statements(&self.content))
    }

    /// Each statement's checksum as the tracking tables record it, in the order of
    /// [`SqlFile::statements`].
    pub fn statement_checksums(&self) -> &[String] {
        self.derived.checksums.get_or_init(|| {
            self.statements().iter().map(|s| sql::checksum(&sql::normalize_for_checksum(&s.text))).collect()
        })
    }

    /// The whole file's checksums: of its normalised text (what this gateway records for a
    /// migration) and of its exact text (what 1.x recorded).
    pub fn file_checksums(&self) -> &(String, String) {
        self.derived
            .file_checksums
            .get_or_init(|| (sql::checksum(&sql::normalize_for_checksum(&self.content)), sql::checksum(&self.content)))
    }

    /// The first statement a deploy never runs, with its line and the reason
    /// (see [`sql::refused_statement`]).
    pub fn refused(&self) -> Option<&(usize, String)> {
        self.derived
            .refused
            .get_or_init(|| self.statements().iter().find_map(|s| sql::refused_statement(&s.text).map(|w| (s.line, w))))
            .as_ref()
    }
}

/// What a file's text yields to the deploy steps (statements, checksums, refusals). A fleet run
/// deploys one archive to every database; this is worked out once per upload instead of once per
/// database. Always equal to what `content` gives, so it takes no part in comparisons.
#[derive(Clone, Default)]
pub struct Derived {
    statements: OnceLock<Vec<Statement>>,
    checksums: OnceLock<Vec<String>>,
    refused: OnceLock<Option<(usize, String)>>,
    file_checksums: OnceLock<(String, String)>,
}

impl PartialEq for Derived {
    fn eq(&self, _: &Derived) -> bool {
        true
    }
}

impl Eq for Derived {}

impl fmt::Debug for Derived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Derived")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SchemaArchive {
    pub extensions: Vec<SqlFile>,
    pub types: Vec<SqlFile>,
    pub tables: Vec<SqlFile>,
    pub migrations: Vec<SqlFile>,
    pub functions: Vec<SqlFile>,
    pub seeders: Vec<SqlFile>,
    /// Regular files that are not schema files, as their paths appear in the archive.
    pub ignored: Vec<String>,
    /// Lower-case hex SHA-256 of the uploaded bytes.
    pub checksum: String,
}

impl SchemaArchive {
    pub fn files(&self, folder: Folder) -> &[SqlFile] {
        match folder {
            Folder::Extensions => &self.extensions,
            Folder::Types => &self.types,
            Folder::Tables => &self.tables,
            Folder::Migrations => &self.migrations,
            Folder::Functions => &self.functions,
            Folder::Seeders => &self.seeders,
        }
    }

    fn files_mut(&mut self, folder: Folder) -> &mut Vec<SqlFile> {
        match folder {
            Folder::Extensions => &mut self.extensions,
            Folder::Types => &mut self.types,
            Folder::Tables => &mut self.tables,
            Folder::Migrations => &mut self.migrations,
            Folder::Functions => &mut self.functions,
            Folder::Seeders => &mut self.seeders,
        }
    }
}

/// Why an upload was refused. `too_large` separates limit breaches (HTTP 413)
/// from malformed or hostile content (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveError {
    pub reason: String,
    pub too_large: bool,
}

impl ArchiveError {
    fn bad(reason: impl Into<String>) -> Self {
        ArchiveError { reason: reason.into(), too_large: false }
    }

    fn large(reason: impl Into<String>) -> Self {
        ArchiveError { reason: reason.into(), too_large: true }
    }
}

impl fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ArchiveError {}

/// A regular file as it came out of the tar stream, before layout mapping.
struct RawFile {
    /// As written in the archive (for messages and `ignored`).
    original: String,
    /// Components with `.` and empty parts removed.
    parts: Vec<String>,
    data: Vec<u8>,
}

/// Read a `.tar.gz` upload entirely in memory. Entry-count and file-size
/// breaches are reported as `too_large` along with the byte limits, since
/// they are all "payload too large" for the caller.
pub fn read_archive(upload: &[u8], limits: &ArchiveLimits) -> Result<SchemaArchive, ArchiveError> {
    if upload.len() > limits.max_upload_bytes {
        return Err(ArchiveError::large(format!(
            "upload is {} bytes; the limit is {}",
            upload.len(),
            limits.max_upload_bytes
        )));
    }
    let checksum = hex(&Sha256::digest(upload));
    let tar_bytes = gunzip(upload, limits.max_expanded_bytes).map_err(|e| {
        let reason = format!("archive is not a valid gzip file: {}", e.message);
        if e.kind == GzipErrorKind::TooLarge {
            ArchiveError::large(format!("archive expands beyond the limit of {} bytes", limits.max_expanded_bytes))
        } else {
            ArchiveError::bad(reason)
        }
    })?;
    let raw = read_tar(&tar_bytes, limits)?;
    drop(tar_bytes);
    arrange(raw, checksum)
}

fn tar_error(e: std::io::Error) -> ArchiveError {
    ArchiveError::bad(format!("archive is not a valid tar file: {e}"))
}

fn read_tar(tar_bytes: &[u8], limits: &ArchiveLimits) -> Result<Vec<RawFile>, ArchiveError> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut files = Vec::new();
    let mut seen: HashSet<Vec<String>> = HashSet::new();
    let mut count = 0usize;
    for entry in archive.entries().map_err(tar_error)? {
        let mut entry = entry.map_err(tar_error)?;
        count += 1;
        if count > limits.max_entries {
            return Err(ArchiveError::large(format!("archive has more than {} entries", limits.max_entries)));
        }
        let path_bytes = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&path_bytes).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            // Archive-wide metadata (e.g. a commit id comment); carries no file.
            continue;
        }
        if path_bytes.len() > limits.max_path_bytes {
            return Err(ArchiveError::bad(format!(
                "entry name longer than {} bytes: {:.80}…",
                limits.max_path_bytes, shown
            )));
        }
        check_header_name_fields(entry.header(), &shown)?;
        if path_bytes.contains(&0) {
            return Err(ArchiveError::bad(format!("entry name contains a NUL byte: {shown:?}")));
        }
        let Ok(path) = String::from_utf8(path_bytes) else {
            return Err(ArchiveError::bad(format!("entry name is not valid UTF-8: {shown:?}")));
        };
        let parts = clean_path(&path)?;
        match kind {
            EntryType::Directory => continue,
            EntryType::Regular | EntryType::Continuous => {}
            other => {
                return Err(ArchiveError::bad(format!(
                    "entry {path:?} is a {}; only regular files and directories are allowed",
                    describe(other)
                )));
            }
        }
        if parts.is_empty() {
            return Err(ArchiveError::bad(format!("file entry {path:?} has no name")));
        }
        // entry.size() already reflects a pax `size` override, and is known before any data is read.
        let size = entry.size();
        if size > limits.max_file_bytes as u64 {
            return Err(ArchiveError::large(format!(
                "file {path:?} is {size} bytes; the limit is {}",
                limits.max_file_bytes
            )));
        }
        let mut data = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut data).map_err(|e| ArchiveError::bad(format!("cannot read {path:?}: {e}")))?;
        if data.len() as u64 != size {
            return Err(ArchiveError::bad(format!("archive is truncated inside {path:?}")));
        }
        if !seen.insert(parts.clone()) {
            return Err(ArchiveError::bad(format!("duplicate path in archive: {path:?}")));
        }
        files.push(RawFile { original: path, parts, data });
    }
    Ok(files)
}

/// Fixed-width name fields end at the first NUL, which would hide anything
/// after it; a writer that pads correctly leaves only zeros there, so bytes
/// after the terminator mean a smuggled name.
fn check_header_name_fields(header: &tar::Header, shown: &str) -> Result<(), ArchiveError> {
    let mut fields: Vec<&[u8]> = vec![&header.as_old().name];
    if let Some(ustar) = header.as_ustar() {
        fields.push(&ustar.prefix);
    }
    for field in fields {
        let after_nul = field.iter().position(|&b| b == 0).map(|nul| &field[nul..]);
        if after_nul.is_some_and(|rest| rest.iter().any(|&b| b != 0)) {
            return Err(ArchiveError::bad(format!("entry name contains a NUL byte: {shown:?}")));
        }
    }
    Ok(())
}

fn describe(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Symlink => "symbolic link",
        EntryType::Link => "hard link",
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "FIFO",
        EntryType::GNUSparse => "sparse file",
        _ => "unsupported entry type",
    }
}

/// Split a member name into components, refusing anything that could point
/// outside the archive root even though we never touch the filesystem: the
/// names flow into logs, records and error messages, and must mean one thing.
fn clean_path(path: &str) -> Result<Vec<String>, ArchiveError> {
    if path.starts_with('/') || path.starts_with('\\') {
        return Err(ArchiveError::bad(format!("absolute path in archive: {path:?}")));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(ArchiveError::bad(format!("path with '..' in archive: {path:?}")));
            }
            // `\` separates on Windows, so `a\..\..\b` climbs there even though it is one
            // component here: refused too, or the name would mean two things.
            p if p.split('\\').any(|s| s == "..") => {
                return Err(ArchiveError::bad(format!("path with '..' in archive: {path:?}")));
            }
            p => parts.push(p.to_string()),
        }
    }
    Ok(parts)
}

/// Map raw files onto the schema layout, decode the schema ones, and sort.
fn arrange(raw: Vec<RawFile>, checksum: String) -> Result<SchemaArchive, ArchiveError> {
    let prefix = find_root(&raw)?;
    let mut out = SchemaArchive { checksum, ..SchemaArchive::default() };
    for file in raw {
        let Some(rel) = file.parts.strip_prefix(prefix.as_slice()) else {
            out.ignored.push(file.original);
            continue;
        };
        let folder = match rel {
            [top, .., name] if !rel.iter().any(|p| p.starts_with('.')) => {
                Folder::from_name(top).filter(|f| f.accepts(name))
            }
            _ => None,
        };
        let Some(folder) = folder else {
            out.ignored.push(file.original);
            continue;
        };
        let bytes = file.data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&file.data);
        let content = match std::str::from_utf8(bytes) {
            Ok(text) => text.to_string(),
            Err(e) => {
                return Err(ArchiveError::bad(format!(
                    "file {:?} is not valid UTF-8 (at byte {})",
                    file.original,
                    e.valid_up_to()
                )));
            }
        };
        let name = rel[rel.len() - 1].clone();
        out.files_mut(folder).push(SqlFile::new(folder, rel.join("/"), name, content));
    }
    if Folder::ALL.iter().all(|&f| out.files(f).is_empty()) {
        return Err(ArchiveError::bad(
            "no schema files found (expected postgresql/{extensions,types,tables,migrations,functions,seeders}/…)",
        ));
    }
    for folder in Folder::ALL {
        let files = out.files_mut(folder);
        if folder == Folder::Migrations {
            files.sort_by(|a, b| natural_cmp(&a.path, &b.path));
        } else {
            files.sort_by(|a, b| a.path.cmp(&b.path));
        }
    }
    out.ignored.sort();
    Ok(out)
}

/// Where `postgresql/` sits: at the top, inside exactly one top folder, or
/// absent (the archive was made from inside the folder itself).
fn find_root(raw: &[RawFile]) -> Result<Vec<String>, ArchiveError> {
    if raw.iter().any(|f| f.parts.len() > 1 && f.parts[0] == "postgresql") {
        return Ok(vec!["postgresql".to_string()]);
    }
    let mut tops: Vec<&str> =
        raw.iter().filter(|f| f.parts.len() > 2 && f.parts[1] == "postgresql").map(|f| f.parts[0].as_str()).collect();
    tops.sort_unstable();
    tops.dedup();
    match tops.as_slice() {
        [] => Ok(Vec::new()),
        [top] => Ok(vec![top.to_string(), "postgresql".to_string()]),
        many => Err(ArchiveError::bad(format!("several top folders hold a postgresql/ folder: {}", many.join(", ")))),
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[(b >> 4) as usize]));
        s.push(char::from(DIGITS[(b & 15) as usize]));
    }
    s
}

/// Order strings so that runs of ASCII digits compare by numeric value
/// (`2_x` < `10_x`), other text bytewise. Only when everything else is equal
/// does zero padding decide (`2` < `02`), then plain byte order, so the result
/// is a total order consistent with `==`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let mut padding = Ordering::Equal;
    while i < x.len() && j < y.len() {
        if x[i].is_ascii_digit() && y[j].is_ascii_digit() {
            let si = i;
            while i < x.len() && x[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < y.len() && y[j].is_ascii_digit() {
                j += 1;
            }
            let (da, db) = (&x[si..i], &y[sj..j]);
            // Comparing without leading zeros by length, then digits, avoids overflow on long runs.
            let ta = trim_zeros(da);
            let tb = trim_zeros(db);
            let ord = ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb));
            if ord != Ordering::Equal {
                return ord;
            }
            padding = padding.then(da.len().cmp(&db.len()));
        } else {
            match x[i].cmp(&y[j]) {
                Ordering::Equal => {
                    i += 1;
                    j += 1;
                }
                ord => return ord,
            }
        }
    }
    (x.len() - i).cmp(&(y.len() - j)).then(padding).then_with(|| x.cmp(y))
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|&&c| c == b'0').count();
    &d[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_file_yields_is_what_its_text_gives() {
        let text = "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;\n\
                    COMMENT ON FUNCTION f() IS 'x';\n\nCOMMIT;\nSELECT 2;";
        let f = SqlFile::new(Folder::Functions, "functions/f.sql".into(), "f.sql".into(), text.into());
        let direct = sql::split_statements(text);
        assert_eq!(f.statements(), direct.as_slice());
        assert_eq!(f.statements().len(), 4);
        let sums: Vec<String> = direct.iter().map(|s| sql::checksum(&sql::normalize_for_checksum(&s.text))).collect();
        assert_eq!(f.statement_checksums(), sums.as_slice());
        let (line, why) = f.refused().expect("COMMIT is refused");
        assert_eq!((*line, why.as_str()), (4, sql::refused_statement("COMMIT").unwrap().as_str()));
        // Worked out or not, two files with the same text are the same file.
        let fresh = SqlFile::new(Folder::Functions, "functions/f.sql".into(), "f.sql".into(), text.into());
        assert_eq!(f, fresh);
        assert_eq!(f.clone().statements(), direct.as_slice());
        let clean = SqlFile::new(Folder::Functions, "functions/g.sql".into(), "g.sql".into(), "SELECT 1;".into());
        assert_eq!(clean.refused(), None);
    }

    #[test]
    fn natural_order() {
        let mut v = vec![
            "migrations/10_add.sql",
            "migrations/2_init.sql",
            "migrations/1_base.sql",
            "migrations/002_x.sql",
            "migrations/02_x.sql",
            "migrations/a.sql",
            "migrations/99999999999999999999999_huge.sql",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            vec![
                "migrations/1_base.sql",
                "migrations/2_init.sql",
                "migrations/02_x.sql",
                "migrations/002_x.sql",
                "migrations/10_add.sql",
                "migrations/99999999999999999999999_huge.sql",
                "migrations/a.sql",
            ]
        );
        assert_eq!(natural_cmp("a", "a"), Ordering::Equal);
        assert_eq!(natural_cmp("a", "ab"), Ordering::Less);
        assert_eq!(natural_cmp("x2", "x10"), Ordering::Less);
        assert_eq!(natural_cmp("", "0"), Ordering::Less);
        assert_eq!(natural_cmp("v2", "v02"), Ordering::Less);
        assert_eq!(natural_cmp("v02a", "v2b"), Ordering::Less);
    }

    #[test]
    fn paths_are_cleaned() {
        assert_eq!(clean_path("./a//b/./c").unwrap(), vec!["a", "b", "c"]);
        assert!(clean_path("/etc/passwd").is_err());
        assert!(clean_path("a/../../b").is_err());
        assert!(clean_path("..").is_err());
    }

    /// Found by the `archive` fuzz property: `postgresql/migrations/a\..\..\b.sql` was
    /// accepted, a name that climbs two levels wherever `\` is a separator.
    #[test]
    fn backslash_dotdot_is_refused() {
        assert!(clean_path("postgresql/migrations/a\\..\\..\\b.sql").is_err());
        assert!(clean_path("postgresql/tables/..\\x.sql").is_err());
        assert!(clean_path("tables/x\\..").is_err());
        assert_eq!(clean_path("tables/a..b\\c.sql").unwrap(), vec!["tables", "a..b\\c.sql"]);
    }

    #[test]
    fn extension_rules() {
        assert!(Folder::Tables.accepts("users.pgsql"));
        assert!(Folder::Tables.accepts("users.PSSQL"));
        assert!(Folder::Tables.accepts("users.sql"));
        assert!(!Folder::Tables.accepts("users.txt"));
        assert!(Folder::Extensions.accepts("list.txt"));
        assert!(!Folder::Tables.accepts(".sql"));
        assert!(!Folder::Tables.accepts("README.md"));
    }
}
