//! Fuzz target: the `/call` body read straight from its bytes agrees with the generic JSON reader
//! followed by `CallRequest::from_json`. The property lives in `tests/fuzz/props.rs`, shared with
//! `tests/codec_fuzz.rs`.
#![no_main]

#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    props::call_body(data);
});
