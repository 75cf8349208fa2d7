//! The capture-file record reader (pcap and pcapng), on any bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut reader) = wstap_replay::capfile::Reader::new(data) {
        while let Some(record) = reader.next() {
            if record.is_err() {
                break;
            }
        }
    }
});
