//! Fuzz target: read_message: no panic, whole frames only, same messages whatever the read boundaries.
//! The property lives in `tests/fuzz/props.rs`, shared with `tests/codec_fuzz.rs`.
#![no_main]

#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    props::pg_frame(data);
});
