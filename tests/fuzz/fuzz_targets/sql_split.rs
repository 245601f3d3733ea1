//! Fuzz target: split_statements: in-order substrings of the input; normalize_for_checksum idempotent.
//! The property lives in `tests/fuzz/props.rs`, shared with `tests/codec_fuzz.rs`.
#![no_main]

#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    props::sql_split(data);
});
