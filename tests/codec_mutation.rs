//! Deterministic mutation testing of the JSON reader/writer and the multipart parser: seeded
//! corpora are mutated many thousands of times; nothing may panic, and whatever parses must keep
//! its invariants (JSON write → parse gives the same value; multipart parts lie inside the body).
//!
//! This is the always-on, reproducible companion to the coverage-guided targets under `tests/fuzz/`.

use std::path::PathBuf;
use stonescriptdb_gateway::http::multipart::{self, MultipartLimits};
use stonescriptdb_gateway::json;

/// xorshift64*: tiny, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n` for `n > 0`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Applies one to four random edits, inserting from `tokens` to reach interesting states faster
/// than random bytes would.
fn mutate(rng: &mut Rng, input: &[u8], tokens: &[&[u8]]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
            2 => data.truncate(rng.below(len + 1)),
            3 => {
                let at = rng.below(len + 1);
                let token = rng.pick(tokens);
                data.splice(at..at, token.iter().copied());
            }
            4 if len > 0 => {
                let start = rng.below(len);
                let end = start + rng.below(len - start + 1).min(16);
                data.drain(start..end);
            }
            5 if len > 0 => {
                // Duplicate a slice elsewhere: grows nesting and repeats structure.
                let start = rng.below(len);
                let end = start + rng.below(len - start + 1).min(64);
                let chunk = data[start..end].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, chunk);
            }
            6 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.pick(&[0x00, 0x7f, 0x80, 0xbf, 0xc0, 0xed, 0xf4, 0xff]);
            }
            _ => {
                let at = rng.below(len + 1);
                let byte = rng.next() as u8;
                data.insert(at, byte);
            }
        }
    }
    data
}

/// The JSONTestSuite `y_` files: `JSON_TEST_SUITE_DIR`, else the shared conformance folder beside the
/// checkout. `None` (the test is skipped, and says so) when neither is there, except under `CI=true`.
fn json_corpus() -> Option<Vec<Vec<u8>>> {
    let dir = match std::env::var_os("JSON_TEST_SUITE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/conformance/json-test-suite/test_parsing"))
        }
    };
    if !dir.is_dir() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the JSON test suite is missing at {} (set JSON_TEST_SUITE_DIR); CI must run this test",
            dir.display()
        );
        eprintln!("SKIP: no JSON test suite at {} (set JSON_TEST_SUITE_DIR to run this test)", dir.display());
        return None;
    }
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read JSON test suite at {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("y_")))
        .map(|path| std::fs::read(path).expect("read case"))
        .collect();
    corpus.sort();
    assert_eq!(corpus.len(), 95, "y_ corpus incomplete");
    corpus.push(br#"{"platform":"demo","args":[1,-2.5e3,"\u00e9\ud83d\ude00",null,true,{"a":[]}]}"#.to_vec());
    Some(corpus)
}

#[test]
fn json_mutations() {
    let Some(corpus) = json_corpus() else { return };
    let tokens: &[&[u8]] = &[
        b"[",
        b"]",
        b"{",
        b"}",
        b"\"",
        b",",
        b":",
        b"\\",
        b"\\u",
        b"\\ud83d",
        b"\\udc00",
        b"-",
        b"0",
        b"1e",
        b".5",
        b"E+",
        b"true",
        b"null",
        b" ",
        b"\t\r\n",
        "\u{2028}".as_bytes(),
        b"\xef\xbb\xbf",
        b"[[[[[[[[[[[[[[[[",
        b"{\"a\":",
    ];
    let mut rng = Rng(0x0005_EED0_F150_4E77);
    let (mut accepted, mut total) = (0usize, 0usize);
    for _ in 0..200_000 {
        let seed = &corpus[rng.below(corpus.len())];
        let input = mutate(&mut rng, seed, tokens);
        total += 1;
        let depth = rng.pick(&[0, 1, 3, json::DEFAULT_MAX_DEPTH]);
        if let Ok(value) = json::parse_with_depth(&input, depth) {
            accepted += 1;
            let written = value.to_json();
            let again = json::parse_with_depth(written.as_bytes(), depth);
            assert_eq!(again.as_ref(), Ok(&value), "input {input:?} wrote {written:?}");
            // Accepted input is valid UTF-8 by construction.
            assert!(std::str::from_utf8(&input).is_ok());
        }
    }
    eprintln!("json: {accepted} of {total} mutants accepted");
    // The mutator must exercise both outcomes, or the test proves little.
    assert!(accepted > total / 50 && accepted < total, "accepted {accepted} of {total}");
}

const CURL_BODY: &[u8] = include_bytes!("fixtures/multipart/curl_form.bin");
const CURL_BOUNDARY: &str = "------------------------5ae9e2bf3874f5b6";
const PHP_BOUNDARY: &str = "----PHPBoundary5f1a2b";

fn php_body() -> Vec<u8> {
    let b = PHP_BOUNDARY;
    let mut raw = format!(
        "preamble\r\n--{b}\r\ncontent-disposition: form-data; name=\"schema\"; filename=\"p.tar.gz\"\r\n\
         content-type: application/gzip\r\n\r\n"
    )
    .into_bytes();
    raw.extend_from_slice(b"\x1f\x8b\0\r\n--\r\n\0--");
    raw.extend_from_slice(
        format!("\r\n--{b}\r\nContent-Disposition: form-data; name=platform\r\n\r\ndemo\r\n--{b}--\r\nepilogue")
            .as_bytes(),
    );
    raw
}

#[test]
fn multipart_mutations() {
    let samples: Vec<(Vec<u8>, &str)> = vec![(CURL_BODY.to_vec(), CURL_BOUNDARY), (php_body(), PHP_BOUNDARY)];
    let tight = MultipartLimits { max_parts: 2, max_part_header_bytes: 80, max_headers_per_part: 1 };
    let mut rng = Rng(0xB0DA_17F0_11C7_0005);
    let (mut accepted, mut total) = (0usize, 0usize);
    for _ in 0..100_000 {
        let (body, b) = &samples[rng.below(samples.len())];
        let delimiter = format!("\r\n--{b}");
        let close = format!("--{b}--");
        let tokens: &[&[u8]] = &[
            delimiter.as_bytes(),
            close.as_bytes(),
            b"\r\n",
            b"\r\n\r\n",
            b"--",
            b"\"",
            b";",
            b"=",
            b" \t",
            b"\\",
            b"; name=x",
            b"; filename=\"",
            b"Content-Disposition: form-data; name=\"y\"\r\n",
            b"\0",
        ];
        let input = mutate(&mut rng, body, tokens);
        let limits = if rng.below(4) == 0 { tight.clone() } else { MultipartLimits::default() };
        total += 1;
        if let Ok(parts) = multipart::parse(&input, b, &limits) {
            accepted += 1;
            assert!(parts.len() <= limits.max_parts);
            let range = input.as_ptr_range();
            for part in &parts {
                let end = part.data.as_ptr_range().end;
                assert!(range.contains(&part.data.as_ptr()) || part.data.as_ptr() == range.end);
                assert!(end <= range.end);
                let _ = part.text();
            }
            let _ = multipart::find(&parts, "schema");
        }
    }
    eprintln!("multipart: {accepted} of {total} mutants accepted");
    assert!(accepted > total / 50 && accepted < total, "accepted {accepted} of {total}");
}

#[test]
fn content_type_mutations() {
    let seeds: &[&[u8]] = &[
        b"multipart/form-data; boundary=------------------------5ae9e2bf3874f5b6",
        b"Multipart/Form-Data; charset=utf-8; boundary=\"a b:c\"",
    ];
    let tokens: &[&[u8]] = &[b";", b"\"", b"=", b" ", b"\\", b"boundary", b"\xc3\xa9"];
    let mut rng = Rng(0xC047_E77E);
    for _ in 0..20_000 {
        let seed = rng.pick(seeds);
        let input = mutate(&mut rng, seed, tokens);
        if let Ok(text) = std::str::from_utf8(&input)
            && let Ok(b) = multipart::boundary(text)
        {
            assert!((1..=70).contains(&b.len()), "{text:?}");
        }
    }
}
