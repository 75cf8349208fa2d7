//! Config parsing and validation, on any text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(settings) = wstap::Settings::parse(text, std::path::Path::new("fuzz.toml")) {
            // What `wstap check` prints must parse back the same.
            let again = wstap::Settings::parse(&settings.to_string(), std::path::Path::new("fuzz.toml"));
            assert!(again.is_ok(), "{settings}\n{again:?}");
        }
    }
});
