//! End-to-end tests of the schema archive reader: archives built here with the
//! `tar` crate and a hand-rolled gzip writer, real GNU tar / PHP PharData
//! fixtures, hostile inputs, and a deterministic mutation loop.

#[path = "common/archive.rs"]
mod test_archive;

use std::path::PathBuf;
use stonescriptdb_gateway::deploy::archive::{ArchiveError, ArchiveLimits, Folder, SchemaArchive, read_archive};
use stonescriptdb_gateway::deploy::gzip::{GzipErrorKind, gunzip};
use tar::{Builder, EntryType, Header};
use test_archive::gzip;

// ---------- helpers ----------

#[derive(Clone, Copy)]
enum Fmt {
    Gnu,
    Ustar,
}

fn header(fmt: Fmt, kind: EntryType, size: u64) -> Header {
    let mut h = match fmt {
        Fmt::Gnu => Header::new_gnu(),
        Fmt::Ustar => Header::new_ustar(),
    };
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(if kind == EntryType::Directory { 0o755 } else { 0o644 });
    h.set_mtime(0);
    h
}

struct TarBuf(Builder<Vec<u8>>, Fmt);

impl TarBuf {
    fn new(fmt: Fmt) -> Self {
        TarBuf(Builder::new(Vec::new()), fmt)
    }
    fn dir(&mut self, path: &str) -> &mut Self {
        let mut h = header(self.1, EntryType::Directory, 0);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        let mut h = header(self.1, EntryType::Regular, data.len() as u64);
        // append_data writes a GNU long-name record when the path does not fit.
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }
    /// An entry whose name bytes go into the header verbatim, bypassing the
    /// builder's own path checks (needed for `..`, absolute and NUL names).
    fn raw(&mut self, name: &[u8], kind: EntryType, data: &[u8]) -> &mut Self {
        let mut h = header(self.1, kind, data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    fn link(&mut self, kind: EntryType, path: &str, target: &str) -> &mut Self {
        let mut h = header(self.1, kind, 0);
        h.set_path(path).unwrap();
        h.set_link_name(target).unwrap();
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }
    fn pax(&mut self, records: &[(&str, &[u8])], path: &str, data: &[u8]) -> &mut Self {
        self.pax_sized(records, path, data, data.len() as u64)
    }
    /// Like `pax`, but the ustar header declares `header_size` whatever the data length.
    fn pax_sized(&mut self, records: &[(&str, &[u8])], path: &str, data: &[u8], header_size: u64) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = format!(" {k}=").len() + v.len() + 1;
            // The length prefix counts itself; try widths until it is self-consistent.
            let mut n = rest + 1;
            while n != rest + n.to_string().len() {
                n = rest + n.to_string().len();
            }
            body.extend_from_slice(format!("{n} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let mut h = header(Fmt::Ustar, EntryType::XHeader, body.len() as u64);
        h.set_path("PaxHeaders/x").unwrap();
        h.set_cksum();
        self.0.append(&h, &body[..]).unwrap();
        let mut h = header(Fmt::Ustar, EntryType::Regular, header_size);
        h.set_path(path).unwrap();
        h.set_cksum();
        // Builder::append copies exactly header_size bytes, so write the data by hand.
        let inner = self.0.get_mut();
        inner.extend_from_slice(h.as_bytes());
        inner.extend_from_slice(data);
        inner.resize(inner.len().next_multiple_of(512), 0);
        self
    }
    fn tar(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
    fn tgz(self) -> Vec<u8> {
        gzip(&self.tar())
    }
}

fn read(upload: &[u8]) -> Result<SchemaArchive, ArchiveError> {
    read_archive(upload, &ArchiveLimits::default())
}

fn err(upload: &[u8]) -> ArchiveError {
    match read(upload) {
        Ok(a) => panic!("expected an error, got {a:?}"),
        Err(e) => e,
    }
}

fn err_with(upload: &[u8], limits: &ArchiveLimits) -> ArchiveError {
    match read_archive(upload, limits) {
        Ok(a) => panic!("expected an error, got {a:?}"),
        Err(e) => e,
    }
}

fn paths(files: &[stonescriptdb_gateway::deploy::archive::SqlFile]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

fn sample(t: &mut TarBuf, prefix: &str) {
    t.file(&format!("{prefix}tables/users.pgsql"), b"CREATE TABLE users (id int);\n")
        .file(&format!("{prefix}migrations/10_b.sql"), b"SELECT 10;")
        .file(&format!("{prefix}migrations/2_a.sql"), b"SELECT 2;")
        .file(&format!("{prefix}functions/users/get_user.pgsql"), b"SELECT 'f';")
        .file(&format!("{prefix}README.md"), b"# readme");
}

// ---------- layouts ----------

#[test]
fn gnu_with_directory_entries() {
    let mut t = TarBuf::new(Fmt::Gnu);
    t.dir("postgresql/").dir("postgresql/tables/").dir("postgresql/migrations/");
    sample(&mut t, "postgresql/");
    let up = t.tgz();
    let a = read(&up).unwrap();
    assert_eq!(paths(&a.tables), vec!["tables/users.pgsql"]);
    assert_eq!(paths(&a.migrations), vec!["migrations/2_a.sql", "migrations/10_b.sql"]);
    assert_eq!(paths(&a.functions), vec!["functions/users/get_user.pgsql"]);
    assert_eq!(a.functions[0].name, "get_user.pgsql");
    assert_eq!(a.functions[0].folder, Folder::Functions);
    assert_eq!(a.functions[0].content, "SELECT 'f';");
    assert_eq!(a.ignored, vec!["postgresql/README.md"]);
    assert_eq!(a.checksum, hex::sha256(&up));
}

#[test]
fn ustar_without_directory_entries() {
    let mut t = TarBuf::new(Fmt::Ustar);
    sample(&mut t, "postgresql/");
    let a = read(&t.tgz()).unwrap();
    assert_eq!(a.tables.len(), 1);
    assert_eq!(a.migrations.len(), 2);
}

#[test]
fn dot_slash_prefix() {
    // The builder normalises `./` away, so these names are written raw.
    let mut t = TarBuf::new(Fmt::Gnu);
    t.raw(b"./", EntryType::Directory, b"")
        .raw(b"./postgresql/", EntryType::Directory, b"")
        .raw(b"./postgresql/tables/users.pgsql", EntryType::Regular, b"CREATE TABLE u ();")
        .raw(b"./postgresql/README.md", EntryType::Regular, b"hi");
    let a = read(&t.tgz()).unwrap();
    assert_eq!(paths(&a.tables), vec!["tables/users.pgsql"]);
    assert_eq!(a.ignored, vec!["./postgresql/README.md"]);
}

#[test]
fn single_top_folder_holding_postgresql() {
    let mut t = TarBuf::new(Fmt::Ustar);
    t.dir("myapp/").dir("myapp/postgresql/");
    sample(&mut t, "myapp/postgresql/");
    t.file("myapp/composer.json", b"{}");
    let a = read(&t.tgz()).unwrap();
    assert_eq!(paths(&a.migrations), vec!["migrations/2_a.sql", "migrations/10_b.sql"]);
    assert_eq!(a.ignored, vec!["myapp/composer.json", "myapp/postgresql/README.md"]);
}

#[test]
fn folders_at_archive_root() {
    let mut t = TarBuf::new(Fmt::Gnu);
    sample(&mut t, "");
    let a = read(&t.tgz()).unwrap();
    assert_eq!(a.tables.len(), 1);
    assert_eq!(a.ignored, vec!["README.md"]);
}

#[test]
fn two_top_folders_are_ambiguous() {
    let mut t = TarBuf::new(Fmt::Gnu);
    sample(&mut t, "a/postgresql/");
    sample(&mut t, "b/postgresql/");
    assert!(err(&t.tgz()).reason.contains("several top folders"));
}

#[test]
fn every_folder_extension_and_ignore_rule() {
    let mut t = TarBuf::new(Fmt::Gnu);
    t.file("postgresql/extensions/list.txt", b"pgcrypto\n")
        .file("postgresql/extensions/uuid.sql", b"CREATE EXTENSION x;")
        .file("postgresql/types/role.pssql", b"CREATE TYPE r AS ENUM ('a');")
        .file("postgresql/seeders/s.sql", b"INSERT INTO t VALUES (1);")
        .file("postgresql/tables/notes.txt", b"not sql")
        .file("postgresql/tables/._users.pgsql", b"\x00\x05\x16\x07junk\xff")
        .file("postgresql/tables/.hidden/x.sql", b"x")
        .file("postgresql/views/v.sql", b"CREATE VIEW v AS SELECT 1;")
        .file("postgresql/root.sql", b"SELECT 1;")
        .file("postgresql/tables/b.sql", b"\xEF\xBB\xBFCREATE TABLE b ();")
        .file("postgresql/tables/a.SQL", b"CREATE TABLE a ();");
    let a = read(&t.tgz()).unwrap();
    assert_eq!(paths(&a.extensions), vec!["extensions/list.txt", "extensions/uuid.sql"]);
    assert_eq!(paths(&a.types), vec!["types/role.pssql"]);
    assert_eq!(paths(&a.seeders), vec!["seeders/s.sql"]);
    assert_eq!(paths(&a.tables), vec!["tables/a.SQL", "tables/b.sql"]);
    assert_eq!(a.tables[1].content, "CREATE TABLE b ();", "BOM stripped");
    assert_eq!(
        a.ignored,
        vec![
            "postgresql/root.sql",
            "postgresql/tables/._users.pgsql",
            "postgresql/tables/.hidden/x.sql",
            "postgresql/tables/notes.txt",
            "postgresql/views/v.sql",
        ]
    );
}

#[test]
fn migrations_sorted_naturally_across_subfolders() {
    let mut t = TarBuf::new(Fmt::Gnu);
    for name in ["100_z.sql", "9_y.sql", "10_x.sql", "1_w.sql", "010_v.sql"] {
        t.file(&format!("postgresql/migrations/{name}"), b"SELECT 1;");
    }
    let a = read(&t.tgz()).unwrap();
    assert_eq!(
        paths(&a.migrations),
        vec![
            "migrations/1_w.sql",
            "migrations/9_y.sql",
            "migrations/010_v.sql",
            "migrations/10_x.sql",
            "migrations/100_z.sql"
        ]
    );
}

#[test]
fn pax_path_override_is_honoured() {
    let long = format!("postgresql/functions/{}/f.pgsql", "d".repeat(150));
    let mut t = TarBuf::new(Fmt::Ustar);
    t.pax(&[("path", long.as_bytes())], "placeholder", b"SELECT 1;");
    let a = read(&t.tgz()).unwrap();
    assert_eq!(a.functions.len(), 1);
    assert_eq!(a.functions[0].path, long.trim_start_matches("postgresql/"));
}

#[test]
fn pax_size_record_wins_over_header_size() {
    // RUSTSEC-2026-0068: tar < 0.4.45 ignored pax `size` when the header size was
    // non-zero, so the two parsers saw different file boundaries.
    let body = b"CREATE TABLE real ();";
    let size = body.len().to_string();
    let mut t = TarBuf::new(Fmt::Ustar);
    t.pax_sized(&[("size", size.as_bytes())], "postgresql/tables/a.sql", body, 3);
    let a = read(&t.tgz()).unwrap();
    assert_eq!(a.tables[0].content, "CREATE TABLE real ();");
}

#[test]
fn gnu_long_names_are_read() {
    let long = format!("postgresql/tables/{}.pgsql", "t".repeat(200));
    let mut t = TarBuf::new(Fmt::Gnu);
    t.file(&long, b"CREATE TABLE t ();");
    let a = read(&t.tgz()).unwrap();
    assert_eq!(a.tables[0].name.len(), 206);
}

#[test]
fn no_schema_files_is_an_error() {
    let mut t = TarBuf::new(Fmt::Gnu);
    t.dir("postgresql/").file("postgresql/README.md", b"hi");
    assert!(err(&t.tgz()).reason.contains("no schema files found"));
    // An empty tar (just the end-of-archive blocks) as well.
    assert!(err(&TarBuf::new(Fmt::Gnu).tgz()).reason.contains("no schema files found"));
}

#[test]
fn duplicate_paths_are_an_error() {
    let mut t = TarBuf::new(Fmt::Gnu);
    t.file("postgresql/tables/a.sql", b"1").file("./postgresql/tables/a.sql", b"2");
    assert!(err(&t.tgz()).reason.contains("duplicate"));
}

// ---------- real archivers ----------

fn fixture(name: &str) -> Vec<u8> {
    let p: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests/fixtures/archives", name].iter().collect();
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const LONG_FN: &str = "functions/users/a_function_with_a_deliberately_very_long_file_name_to_force_gnu_long_name_records_in_tar_headers.pgsql";

fn check_fixture(name: &str, with_long_name: bool, ignored: &[&str]) -> SchemaArchive {
    let a = read(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(paths(&a.extensions), vec!["extensions/extensions.txt"], "{name}");
    assert_eq!(paths(&a.types), vec!["types/user_role.pgsql"], "{name}");
    assert_eq!(paths(&a.tables), vec!["tables/users.pssql"], "{name}");
    assert!(a.tables[0].content.starts_with("CREATE TABLE users"), "{name}: BOM");
    assert_eq!(paths(&a.migrations), vec!["migrations/2_index.sql", "migrations/10_add_email.sql"], "{name}");
    assert_eq!(paths(&a.seeders), vec!["seeders/users.sql"], "{name}");
    let fns = paths(&a.functions);
    assert!(fns.contains(&"functions/users/get_user.pgsql"), "{name}");
    assert_eq!(fns.contains(&LONG_FN), with_long_name, "{name}");
    assert_eq!(a.ignored, ignored, "{name}");
    assert!(a.functions.iter().any(|f| f.content.contains("$$\n  SELECT * FROM users")));
    a
}

#[test]
fn gnu_tar_fixtures() {
    check_fixture("gnu_postgresql.tar.gz", true, &["postgresql/README.md", "postgresql/tables/._users.pssql"]);
    check_fixture(
        "gnu_top_folder.tar.gz",
        true,
        &["myapp/postgresql/README.md", "myapp/postgresql/tables/._users.pssql"],
    );
    check_fixture("gnu_pax_dotslash.tar.gz", true, &["./postgresql/README.md", "./postgresql/tables/._users.pssql"]);
    check_fixture("gnu_ustar_inside_folder.tar.gz", false, &["./README.md", "./tables/._users.pssql"]);
    check_fixture("gnu_files_only.tar.gz", true, &["postgresql/README.md", "postgresql/tables/._users.pssql"]);
}

#[test]
fn php_phardata_fixture() {
    let a = check_fixture("php_phardata.tar.gz", false, &["postgresql/README.md", "postgresql/tables/._users.pssql"]);
    assert!(paths(&a.functions).contains(
        &"functions/reporting_and_analytics_functions_for_dashboards/monthly_active_user_statistics_by_region.pgsql"
    ));
}

// ---------- hostile gzip ----------

fn valid_upload() -> Vec<u8> {
    let mut t = TarBuf::new(Fmt::Gnu);
    t.dir("postgresql/");
    sample(&mut t, "postgresql/");
    t.tgz()
}

#[test]
fn gzip_bomb_single_member() {
    let zeros = vec![0u8; 16 << 20];
    let bomb = gzip(&zeros);
    assert!(bomb.len() < 64 << 10);
    let limits = ArchiveLimits { max_expanded_bytes: 1 << 20, ..ArchiveLimits::default() };
    let e = err_with(&bomb, &limits);
    assert!(e.too_large, "{e:?}");
}

#[test]
fn gzip_bomb_one_gib_of_concatenated_members() {
    // 1024 members of 1 MiB of zeros each: ~1 GiB declared, ~1 MB on the wire.
    let member = gzip(&vec![0u8; 1 << 20]);
    let mut bomb = Vec::with_capacity(member.len() * 1024);
    for _ in 0..1024 {
        bomb.extend_from_slice(&member);
    }
    let limits = ArchiveLimits { max_expanded_bytes: 32 << 20, ..ArchiveLimits::default() };
    let e = err_with(&bomb, &limits);
    assert!(e.too_large, "{e:?}");
    // The inflater itself stops at the cap.
    assert_eq!(gunzip(&bomb, 32 << 20).unwrap_err().kind, GzipErrorKind::TooLarge);
}

#[test]
fn upload_over_limit_is_too_large() {
    let up = valid_upload();
    let limits = ArchiveLimits { max_upload_bytes: up.len() - 1, ..ArchiveLimits::default() };
    assert!(err_with(&up, &limits).too_large);
    let limits = ArchiveLimits { max_upload_bytes: up.len(), ..ArchiveLimits::default() };
    assert!(read_archive(&up, &limits).is_ok());
}

#[test]
fn truncated_gzip() {
    let up = valid_upload();
    for cut in [0, 1, 5, 10, 20, up.len() / 2, up.len() - 9, up.len() - 4, up.len() - 1] {
        let e = err(&up[..cut]);
        assert!(!e.too_large, "cut {cut}: {e:?}");
    }
}

#[test]
fn corrupt_deflate_bad_crc_bad_isize() {
    let mut up = valid_upload();
    up[10] = 0xff; // BTYPE=11 (reserved) in the first block header
    assert!(err(&up).reason.contains("gzip"));

    let mut up = valid_upload();
    let n = up.len();
    up[n - 6] ^= 0x40;
    assert!(err(&up).reason.to_lowercase().contains("crc"));

    let mut up = valid_upload();
    up[n - 3] ^= 0x01;
    assert!(err(&up).reason.contains("ISIZE"));
}

#[test]
fn not_gzip_and_non_tar_payloads() {
    assert!(err(b"").reason.contains("gzip"));
    assert!(err(b"PK\x03\x04 this is a zip").reason.contains("gzip"));
    assert!(err(&TarBuf::new(Fmt::Gnu).tar()).reason.contains("gzip"));
    let mut text = Vec::new();
    for i in 0..2000 {
        text.extend_from_slice(format!("line {i}: lorem ipsum dolor sit amet\n").as_bytes());
    }
    let e = err(&gzip(&text));
    assert!(e.reason.contains("tar"), "{e:?}");
    assert!(!err(&gzip(b"short")).too_large);
}

// ---------- hostile tar ----------

#[test]
fn links_devices_and_fifos_are_refused() {
    for (kind, what) in [
        (EntryType::Symlink, "symbolic link"),
        (EntryType::Link, "hard link"),
        (EntryType::Char, "character device"),
        (EntryType::Block, "block device"),
        (EntryType::Fifo, "FIFO"),
    ] {
        let mut t = TarBuf::new(Fmt::Gnu);
        sample(&mut t, "postgresql/");
        t.link(kind, "postgresql/tables/evil.sql", "/etc/passwd");
        let e = err(&t.tgz());
        assert!(e.reason.contains(what), "{what}: {e:?}");
        assert!(e.reason.contains("postgresql/tables/evil.sql"), "{e:?}");
        assert!(!e.too_large);
    }
}

#[test]
fn traversal_absolute_and_nul_names_are_refused() {
    let cases: [(&[u8], &str); 5] = [
        (b"../etc/passwd", ".."),
        (b"postgresql/tables/../../../etc/passwd", ".."),
        (b"/abs/postgresql/tables/a.sql", "absolute"),
        (b"postgresql/tables/a.sql\0../../x", "NUL"),
        (b"postgresql/tables/\xff\xfe.sql", "UTF-8"),
    ];
    for (name, what) in cases {
        let mut t = TarBuf::new(Fmt::Ustar);
        sample(&mut t, "postgresql/");
        t.raw(name, EntryType::Regular, b"SELECT 1;");
        let e = err(&t.tgz());
        assert!(e.reason.contains(what), "{name:?}: {e:?}");
    }
    // Traversal through a pax path and a NUL inside a GNU long name.
    let mut t = TarBuf::new(Fmt::Ustar);
    t.pax(&[("path", b"postgresql/../../etc/cron.d/x")], "ok.sql", b"x");
    assert!(err(&t.tgz()).reason.contains(".."));
    let mut t = TarBuf::new(Fmt::Gnu);
    t.raw(b"././@LongLink", EntryType::GNULongName, b"postgresql/tables/a\0b.sql\0").raw(
        b"placeholder",
        EntryType::Regular,
        b"x",
    );
    assert!(err(&t.tgz()).reason.contains("NUL"));
}

#[test]
fn over_long_names_are_refused() {
    let mut t = TarBuf::new(Fmt::Gnu);
    t.file(&format!("postgresql/tables/{}.sql", "n".repeat(600)), b"x");
    let e = err(&t.tgz());
    assert!(e.reason.contains("longer than 512"), "{e:?}");
}

#[test]
fn entry_count_limit() {
    let mut t = TarBuf::new(Fmt::Gnu);
    for i in 0..20 {
        t.file(&format!("postgresql/tables/t{i}.sql"), b"x");
    }
    let up = t.tgz();
    let limits = ArchiveLimits { max_entries: 19, ..ArchiveLimits::default() };
    let e = err_with(&up, &limits);
    assert!(e.too_large && e.reason.contains("entries"), "{e:?}");
    let limits = ArchiveLimits { max_entries: 20, ..ArchiveLimits::default() };
    assert_eq!(read_archive(&up, &limits).unwrap().tables.len(), 20);
}

#[test]
fn path_length_limit_is_exact() {
    // A GNU long name, so the builder does not cut it at 100 bytes.
    let path = format!("postgresql/functions/{}.sql", "f".repeat(150));
    let mut t = TarBuf::new(Fmt::Gnu);
    t.file(&path, b"SELECT 1;");
    let up = t.tgz();
    let limits = ArchiveLimits { max_path_bytes: path.len(), ..ArchiveLimits::default() };
    assert_eq!(read_archive(&up, &limits).unwrap().functions.len(), 1);
    let limits = ArchiveLimits { max_path_bytes: path.len() - 1, ..ArchiveLimits::default() };
    let e = err_with(&up, &limits);
    assert!(!e.too_large && e.reason.contains("longer than"), "{e:?}");
}

#[test]
fn file_size_limit_checked_from_header() {
    let mut t = TarBuf::new(Fmt::Gnu);
    t.file("postgresql/tables/big.sql", &[b'x'; 101]);
    let limits = ArchiveLimits { max_file_bytes: 100, ..ArchiveLimits::default() };
    let e = err_with(&t.tgz(), &limits);
    assert!(e.too_large && e.reason.contains("big.sql"), "{e:?}");
    // Exactly the limit is allowed.
    let mut t = TarBuf::new(Fmt::Gnu);
    t.file("postgresql/tables/fits.sql", &[b'x'; 100]);
    assert_eq!(read_archive(&t.tgz(), &limits).unwrap().tables[0].content.len(), 100);

    // A header claiming 8 GiB with no data behind it must fail on the header alone.
    let mut h = header(Fmt::Gnu, EntryType::Regular, 0);
    h.set_path("postgresql/tables/huge.sql").unwrap();
    h.set_size(8 << 30);
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend_from_slice(&[0u8; 1024]);
    let e = err(&gzip(&tar));
    assert!(e.too_large && e.reason.contains("huge.sql"), "{e:?}");
}

#[test]
fn non_utf8_content_names_the_file() {
    let mut t = TarBuf::new(Fmt::Gnu);
    t.file("postgresql/tables/latin1.sql", b"INSERT INTO t VALUES ('caf\xe9');");
    let e = err(&t.tgz());
    assert!(e.reason.contains("latin1.sql") && e.reason.contains("UTF-8"), "{e:?}");
    // Ignored files may hold any bytes.
    let mut t = TarBuf::new(Fmt::Gnu);
    t.file("postgresql/tables/ok.sql", b"SELECT 1;").file("postgresql/logo.png", b"\x89PNG\r\n\x1a\n\xff\xfe");
    assert!(read(&t.tgz()).is_ok());
}

#[test]
fn truncated_tar_inside_valid_gzip() {
    let mut t = TarBuf::new(Fmt::Gnu);
    t.file("postgresql/tables/a.sql", &[b'a'; 3000]);
    let tar = t.tar();
    for cut in [100, 512, 700, 2048, 3000] {
        let e = err(&gzip(&tar[..cut]));
        assert!(!e.too_large, "cut {cut}: {e:?}");
    }
}

// ---------- mutation loop ----------

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut XorShift, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    match rng.below(4) {
        0 => v.truncate(rng.below(base.len() + 1)),
        1 => {
            let at = rng.below(v.len() + 1);
            let n = rng.below(16) + 1;
            for _ in 0..n {
                v.insert(at, rng.next() as u8);
            }
        }
        _ => {
            for _ in 0..rng.below(4) + 1 {
                let i = rng.below(v.len());
                v[i] = match rng.below(3) {
                    0 => v[i] ^ (1 << rng.below(8)),
                    1 => rng.next() as u8,
                    _ => [0, 0xff, b'/', b'.', b'0', b'5', b'7', b'x'][rng.below(8)],
                };
            }
        }
    }
    v
}

#[test]
fn mutations_never_panic() {
    let mut t = TarBuf::new(Fmt::Gnu);
    t.dir("postgresql/");
    sample(&mut t, "postgresql/");
    t.file(&format!("postgresql/functions/{}.pgsql", "l".repeat(120)), b"SELECT 1;");
    t.link(EntryType::Symlink, "postgresql/x", "y");
    let tar = t.tar();
    let tgz = gzip(&tar);
    let limits = ArchiveLimits { max_expanded_bytes: 1 << 20, ..ArchiveLimits::default() };
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..2000 {
        // Mutating the compressed bytes exercises gzip/deflate handling...
        let up = mutate(&mut rng, &tgz);
        match read_archive(&up, &limits) {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
        // ...and re-compressing a mutated tar reaches the tar parser and layout code.
        let up = gzip(&mutate(&mut rng, &tar));
        match read_archive(&up, &limits) {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    assert_eq!(ok + failed, 4000);
    assert!(failed > 0);
}

mod hex {
    use sha2::{Digest, Sha256};

    pub fn sha256(data: &[u8]) -> String {
        Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
    }
}
