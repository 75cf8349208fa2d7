//! WebSocket session decoding (HTTP exchanges, the Upgrade, frames, permessage-deflate)
//! on one connection whose two streams are the input, split at its first two bytes: a
//! valid handshake is prefixed half the time so the fuzzer reaches the frames at once.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wstap_replay::decode_within;
use wstap_replay::dissect::Segment;
use wstap_replay::reassembly::Reassembler;
use wstap_replay::InflateBudget;

const UPGRADE: &[u8] = b"GET /f HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
const SWITCH: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let split = (usize::from(data[0]) << 8 | usize::from(data[1])) % (data.len() - 1);
    let (mut up, mut down) = (Vec::new(), Vec::new());
    if data[0] & 0x80 != 0 {
        up.extend_from_slice(UPGRADE);
        down.extend_from_slice(SWITCH);
    }
    up.extend_from_slice(&data[2..2 + split]);
    down.extend_from_slice(&data[2 + split..]);
    let (a, b) = ("10.0.0.1:4000".parse().unwrap(), "10.0.0.2:80".parse().unwrap());
    let mut r = Reassembler::new();
    let seg = |src, dst, seq, syn, payload| Segment { src, dst, seq, ack: None, syn, fin: false, rst: false, payload };
    r.push(wstap_wire::Timestamp::from_nanos(0), &seg(a, b, 0, true, &[]));
    r.push(wstap_wire::Timestamp::from_nanos(1), &seg(b, a, 0, true, &[]));
    for (i, chunk) in up.chunks(1400).enumerate() {
        r.push(wstap_wire::Timestamp::from_nanos(2), &seg(a, b, 1 + (i * 1400) as u32, false, chunk));
    }
    for (i, chunk) in down.chunks(1400).enumerate() {
        r.push(wstap_wire::Timestamp::from_nanos(3), &seg(b, a, 1 + (i * 1400) as u32, false, chunk));
    }
    let mut budget = InflateBudget::for_input(data.len());
    for conn in r.finish() {
        let _ = decode_within(&conn, wstap_replay::SessionId(1), &mut budget);
    }
});
