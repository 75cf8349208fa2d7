//! The capture-file record reader (pcap and pcapng), on any bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(reader) = wstap_replay::capfile::Reader::new(data) {
        for record in reader {
            if record.is_err() {
                break;
            }
        }
    }
});
