//! Link layer → IP → TCP, for every link type the reader knows: the first two bytes
//! choose the link type, the rest is the frame.
#![no_main]
use libfuzzer_sys::fuzz_target;

const LINKS: [u16; 8] = [0, 1, 101, 108, 113, 228, 229, 276];

fuzz_target!(|data: &[u8]| {
    let Some((&which, frame)) = data.split_first() else { return };
    let link = wstap_replay::dissect::LinkType::from_value(LINKS[usize::from(which) % LINKS.len()]);
    let _ = wstap_replay::dissect::segment(link, frame);
});
