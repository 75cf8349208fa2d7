//! TCP reassembly of arbitrary segments between two endpoints: each segment is a 12-byte
//! header (direction and flags, sequence number, acknowledgement, payload length) and its
//! payload. Every connection's streams are then decoded as WebSocket sessions.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wstap_replay::decode_within;
use wstap_replay::dissect::Segment;
use wstap_replay::reassembly::Reassembler;
use wstap_replay::InflateBudget;

fuzz_target!(|data: &[u8]| {
    let (a, b) = ("10.0.0.1:4000".parse().unwrap(), "10.0.0.2:80".parse().unwrap());
    let mut r = Reassembler::new();
    let mut rest = data;
    let mut t = 0;
    while rest.len() >= 12 {
        let (h, tail) = rest.split_at(12);
        let len = (usize::from(h[10]) << 8 | usize::from(h[11])).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        let flags = h[0];
        let (src, dst) = if flags & 1 == 0 { (a, b) } else { (b, a) };
        let seq = u32::from_be_bytes([h[2], h[3], h[4], h[5]]);
        let ack = u32::from_be_bytes([h[6], h[7], h[8], h[9]]);
        let s = Segment {
            src,
            dst,
            seq,
            ack: (flags & 2 != 0).then_some(ack),
            syn: flags & 4 != 0,
            fin: flags & 8 != 0,
            rst: flags & 16 != 0,
            payload,
        };
        r.push(wstap_wire::Timestamp::from_nanos(t), &s);
        t += u64::from(h[1]);
        rest = tail;
    }
    let mut budget = InflateBudget::for_input(data.len());
    for (i, conn) in r.finish().iter().enumerate() {
        let _ = decode_within(conn, wstap_replay::SessionId(i + 1), &mut budget);
    }
});
