//! Fuzz target: the JSON reader never panics, and whatever it accepts survives write → parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stonescriptdb_gateway::json;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = json::parse(data) {
        let written = value.to_json();
        let again = json::parse(written.as_bytes()).expect("our own output must parse");
        assert_eq!(again, value, "round trip changed the value");
    }
});
