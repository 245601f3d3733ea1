//! Fuzz target: ChunkedDecoder: whole vs split reads give the same bytes and outcome; output within the limit.
//! The property lives in `tests/fuzz/props.rs`, shared with `tests/codec_fuzz.rs`.
#![no_main]

#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    props::chunked(data);
});
