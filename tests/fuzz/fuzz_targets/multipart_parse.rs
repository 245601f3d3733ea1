//! Fuzz target: the multipart parser never panics. The first input byte picks the boundary and
//! limits so short and long boundaries and tight limits all get explored.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stonescriptdb_gateway::http::multipart::{self, MultipartLimits};

const BOUNDARIES: [&str; 4] = [
    "x",
    "------------------------5ae9e2bf3874f5b6",
    "----PHPBoundary5f1a2b",
    "a b",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let boundary = BOUNDARIES[usize::from(selector & 3)];
    let limits = if selector & 4 == 0 {
        MultipartLimits::default()
    } else {
        MultipartLimits {
            max_parts: 2,
            max_part_header_bytes: 64,
            max_headers_per_part: 1,
        }
    };
    if let Ok(parts) = multipart::parse(body, boundary, &limits) {
        assert!(parts.len() <= limits.max_parts);
        for part in &parts {
            let _ = part.text();
        }
    }
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = multipart::boundary(text);
    }
});
