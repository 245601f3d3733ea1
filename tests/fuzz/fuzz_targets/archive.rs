//! Fuzz target: read_archive: no panic on raw bytes or gzip'd fuzzer-built tars; accepted paths are clean.
//! The property lives in `tests/fuzz/props.rs`, shared with `tests/codec_fuzz.rs`.
#![no_main]

#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    props::archive(data);
});
