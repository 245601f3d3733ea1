//! Fuzz target: the client side of a SCRAM-SHA-256 login: no panic, a proof only for a valid
//! server-first-message, no forged server signature taken.
//! The property lives in `tests/fuzz/props.rs`, shared with `tests/codec_fuzz.rs`.
#![no_main]

#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    props::scram(data);
});
