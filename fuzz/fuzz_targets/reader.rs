//! The whole reader, file bytes to sessions, as `wstap sessions` runs it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wstap_replay::read(&[(std::path::Path::new("fuzz.pcapng"), data)]);
});
