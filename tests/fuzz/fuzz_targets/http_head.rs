//! Fuzz target: parse_head: no panic, deterministic, consumed bytes within input and limit, 431 past max_head_bytes.
//! The property lives in `tests/fuzz/props.rs`, shared with `tests/codec_fuzz.rs`.
#![no_main]

#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    props::http_head(data);
});
