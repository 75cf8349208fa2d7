//! TCP/IP packet synthesis: turns what happened on one TCP connection (handshake, bytes
//! each way, half-closes, resets) into the IPv4 or IPv6 packets a capture on the wire
//! would have shown, with correct sequence and acknowledgement numbers and checksums
//! (headers and checksums by etherparse). Pure: builds bytes into a reused buffer and
//! hands each packet to a callback; no I/O, no clock.

use std::net::{IpAddr, SocketAddr};

use etherparse::{IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, TcpHeader, TcpOptionElement};

use crate::dir::{Dir, PerDir};

/// Default MSS for IPv4 (Ethernet MTU 1500 − 40).
pub const MSS_IPV4: u16 = 1460;
/// Default MSS for IPv6 (1500 − 60).
pub const MSS_IPV6: u16 = 1440;
/// Largest MSS whose packets still fit IPv4's 16-bit total length.
pub const MSS_MAX: u16 = 65535 - 40;

/// Receive window advertised by both ends: 65535 scaled by 2^7 (8 MiB), so no realistic
/// burst between two ACKs looks like a full window.
const WINDOW: u16 = 65535;
const WINDOW_SHIFT: u8 = 7;
const TTL: u8 = 64;

/// One synthesized TCP connection. Each end is named by the direction it sends in: the
/// end that opened the connection (sent the SYN) sends [`Dir::Up`].
#[derive(Debug, Clone)]
pub struct Flow {
    /// The address each direction's packets come from.
    addr: PerDir<SocketAddr>,
    isn: PerDir<u32>,
    /// Payload bytes sent each way so far (the stream's offset).
    sent: PerDir<u64>,
    /// Whether each end has sent its FIN.
    fin: PerDir<bool>,
    /// The MSS the SYNs advertise.
    mss: usize,
    /// The largest segment's payload: the MSS, or more (see [`Flow::coalesced`]).
    segment: usize,
    ip_id: PerDir<u16>,
}

/// One synthesized packet (an IP datagram) in two parts: its IP and TCP headers, and
/// its payload, which is borrowed from the caller's data rather than copied: the
/// packet's bytes are the two concatenated.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// The IP and TCP headers.
    pub headers: &'a [u8],
    /// The TCP payload.
    pub payload: &'a [u8],
}

impl Packet<'_> {
    /// The packet's size in bytes.
    pub fn size(&self) -> usize {
        self.headers.len() + self.payload.len()
    }

    /// The whole packet, copied into one buffer.
    #[cfg(test)]
    pub fn to_vec(self) -> Vec<u8> {
        [self.headers, self.payload].concat()
    }
}

/// Bytes one end sent: a part of what a repeated flow start holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent<'a> {
    /// Which way they went.
    pub dir: Dir,
    /// The bytes.
    pub bytes: &'a [u8],
}

thread_local! {
    /// Where packets' headers are built, one per thread rather than one per flow: a writer
    /// with thousands of idle sessions keeps no buffer for each.
    static PACKET: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(128));
}

impl Flow {
    /// A flow between `opener` (which sends `Up`) and `acceptor`, with the given initial
    /// sequence numbers. Addresses of different families are written as IPv6 (v4-mapped).
    pub fn new(opener: SocketAddr, acceptor: SocketAddr, isn: PerDir<u32>, mss: u16) -> Flow {
        let (a, b) = match (opener, acceptor) {
            (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => (opener, acceptor),
            _ => (to_v6(opener), to_v6(acceptor)),
        };
        Flow {
            addr: PerDir::new(a, b),
            isn,
            sent: PerDir::default(),
            fin: PerDir::default(),
            mss: usize::from(mss.clamp(1, MSS_MAX)),
            segment: usize::from(mss.clamp(1, MSS_MAX)),
            ip_id: PerDir::default(),
        }
    }

    /// The same flow with data cut into segments of up to [`MSS_MAX`] bytes rather than
    /// the MSS (which the SYNs still advertise): what a capture on a host whose network
    /// card coalesces received segments (GRO) or cuts sent ones itself (TSO) shows.
    pub fn coalesced(self) -> Flow {
        Flow { segment: usize::from(MSS_MAX), ..self }
    }

    /// The largest segment's payload.
    pub fn segment(&self) -> usize {
        self.segment
    }

    /// Payload bytes sent `dir` so far.
    #[cfg(test)]
    pub fn sent(&self, dir: Dir) -> u64 {
        self.sent[dir]
    }

    /// Whether the end that sends `dir` has sent its FIN.
    pub fn fin_sent(&self, dir: Dir) -> bool {
        self.fin[dir]
    }

    /// The sequence number of the next byte sent `dir`.
    pub fn next_seq(&self, dir: Dir) -> u32 {
        self.isn[dir].wrapping_add(1).wrapping_add(self.sent[dir] as u32).wrapping_add(u32::from(self.fin[dir]))
    }

    /// SYN, SYN-ACK, ACK, each with MSS, SACK-permitted and window-scale options on the
    /// SYNs.
    pub fn handshake(&mut self, emit: &mut (impl FnMut(Dir, Packet<'_>) + ?Sized)) {
        let syn = Flags { syn: true, ..Flags::default() };
        self.emit(Dir::Up, self.isn[Dir::Up], 0, syn, &[], emit);
        let syn_ack = Flags { syn: true, ack: true, ..Flags::default() };
        self.emit(Dir::Down, self.isn[Dir::Down], self.isn[Dir::Up].wrapping_add(1), syn_ack, &[], emit);
        self.ack(Dir::Up, emit);
    }

    /// Repeats the flow's start in a new section: a synthetic handshake, then `parts` in order
    /// (for a WebSocket session: the Upgrade request `Up`, the `101` response `Down`,
    /// and anything else a file needs to decode), then any FIN already sent, all placed
    /// in sequence space so that they end exactly where the flow stands now. The live
    /// segments that follow continue seamlessly, as if the bytes in between had never
    /// been on this connection. Each part is acknowledged by the other end.
    pub fn repeat(&mut self, parts: &[Sent<'_>], emit: &mut (impl FnMut(Dir, Packet<'_>) + ?Sized)) {
        let real = (self.isn, self.sent, self.fin);
        let live = PerDir::new(self.next_seq(Dir::Up), self.next_seq(Dir::Down));
        let virtual_isn = |dir: Dir| {
            let len: usize = parts.iter().filter(|p| p.dir == dir).map(|p| p.bytes.len()).sum();
            self.next_seq(dir).wrapping_sub(1 + len as u32 + u32::from(self.fin[dir]))
        };
        self.isn = PerDir::new(virtual_isn(Dir::Up), virtual_isn(Dir::Down));
        (self.sent, self.fin) = (PerDir::default(), PerDir::default());
        self.handshake(emit);
        for part in parts.iter().filter(|p| !p.bytes.is_empty()) {
            self.data(part.dir, part.bytes, emit);
            self.ack(part.dir.reverse(), emit);
        }
        for dir in Dir::BOTH {
            if real.2[dir] {
                self.fin(dir, emit);
            }
        }
        debug_assert_eq!(
            PerDir::new(self.next_seq(Dir::Up), self.next_seq(Dir::Down)),
            live,
            "the repeat ends where the flow stands"
        );
        (self.isn, self.sent, self.fin) = real;
    }

    /// `payload` sent `dir`, cut into segments of [`Flow::segment`] bytes; PSH on the
    /// last one.
    pub fn data(&mut self, dir: Dir, payload: &[u8], emit: &mut (impl FnMut(Dir, Packet<'_>) + ?Sized)) {
        let segments = payload.len().div_ceil(self.segment);
        for (i, segment) in payload.chunks(self.segment).enumerate() {
            let flags = Flags { ack: true, psh: i + 1 == segments, ..Flags::default() };
            let (seq, ack) = (self.next_seq(dir), self.next_seq(dir.reverse()));
            self.emit(dir, seq, ack, flags, segment, emit);
            self.sent[dir] += segment.len() as u64;
        }
    }

    /// Moves the stream sent `dir` on by `n` bytes that were not captured: the next
    /// segment shows a sequence jump ("previous segment not captured").
    pub fn skip(&mut self, dir: Dir, n: u64) {
        self.sent[dir] += n;
    }

    /// A pure ACK, sent `dir`, of everything the other end has sent.
    pub fn ack(&mut self, dir: Dir, emit: &mut (impl FnMut(Dir, Packet<'_>) + ?Sized)) {
        let (seq, ack) = (self.next_seq(dir), self.next_seq(dir.reverse()));
        self.emit(dir, seq, ack, Flags { ack: true, ..Flags::default() }, &[], emit);
    }

    /// FIN/ACK sent `dir` (its sender's half-close). A second FIN the same way is ignored.
    pub fn fin(&mut self, dir: Dir, emit: &mut (impl FnMut(Dir, Packet<'_>) + ?Sized)) {
        if self.fin[dir] {
            return;
        }
        let (seq, ack) = (self.next_seq(dir), self.next_seq(dir.reverse()));
        self.emit(dir, seq, ack, Flags { fin: true, ack: true, ..Flags::default() }, &[], emit);
        self.fin[dir] = true;
    }

    /// RST/ACK sent `dir`: its sender aborted the connection.
    pub fn rst(&mut self, dir: Dir, emit: &mut (impl FnMut(Dir, Packet<'_>) + ?Sized)) {
        let (seq, ack) = (self.next_seq(dir), self.next_seq(dir.reverse()));
        self.emit(dir, seq, ack, Flags { rst: true, ack: true, ..Flags::default() }, &[], emit);
    }

    fn emit(
        &mut self,
        dir: Dir,
        seq: u32,
        ack: u32,
        flags: Flags,
        payload: &[u8],
        emit: &mut (impl FnMut(Dir, Packet<'_>) + ?Sized),
    ) {
        let (src, dst) = (self.addr[dir], self.addr[dir.reverse()]);
        let mut tcp = TcpHeader::new(src.port(), dst.port(), seq, WINDOW);
        tcp.syn = flags.syn;
        tcp.ack = flags.ack;
        tcp.fin = flags.fin;
        tcp.rst = flags.rst;
        tcp.psh = flags.psh;
        tcp.acknowledgment_number = if flags.ack { ack } else { 0 };
        if flags.syn {
            let mss = u16::try_from(self.mss).unwrap_or(MSS_MAX);
            let options = [
                TcpOptionElement::MaximumSegmentSize(mss),
                TcpOptionElement::SelectiveAcknowledgementPermitted,
                TcpOptionElement::Noop,
                TcpOptionElement::WindowScale(WINDOW_SHIFT),
            ];
            tcp.set_options(&options).expect("SYN options fit the TCP header");
        }
        let id = &mut self.ip_id[dir];
        *id = id.wrapping_add(1);
        let tcp_len = tcp.header_len() + payload.len();
        PACKET.with_borrow_mut(|buf| {
            buf.clear();
            let pseudo = match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    let mut ip = Ipv4Header::new(tcp_len as u16, TTL, IpNumber::TCP, s.octets(), d.octets())
                        .expect("segments never exceed the IPv4 length limit");
                    ip.dont_fragment = true;
                    ip.identification = *id;
                    ip.header_checksum = ip.calc_header_checksum();
                    ip.write(buf).expect("writing to a Vec cannot fail");
                    ones_sum(&pseudo_v4(s.octets(), d.octets(), tcp_len), 0)
                }
                (s, d) => {
                    let (s, d) = (v6_octets(s), v6_octets(d));
                    let ip = Ipv6Header {
                        traffic_class: 0,
                        flow_label: Ipv6FlowLabel::ZERO,
                        payload_length: tcp_len as u16,
                        next_header: IpNumber::TCP,
                        hop_limit: TTL,
                        source: s,
                        destination: d,
                    };
                    ip.write(buf).expect("writing to a Vec cannot fail");
                    ones_sum(&pseudo_v6(s, d, tcp_len), 0)
                }
            };
            // The checksum is summed over the header as built (its field still zero) and
            // over the payload where it lies (the header's length is a multiple of 4, so
            // the payload's 16-bit words line up), then written in. The payload is never
            // copied here: the packet's consumer takes it from where it is.
            let at = buf.len();
            tcp.checksum = 0;
            tcp.write(buf).expect("writing to a Vec cannot fail");
            let checksum = !fold(ones_sum(payload, ones_sum(&buf[at..], pseudo)));
            buf[at + 16..at + 18].copy_from_slice(&checksum.to_be_bytes());
            emit(dir, Packet { headers: buf, payload });
        });
    }
}

/// The IPv4 pseudo-header that the TCP checksum covers (RFC 793).
fn pseudo_v4(src: [u8; 4], dst: [u8; 4], tcp_len: usize) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[..4].copy_from_slice(&src);
    p[4..8].copy_from_slice(&dst);
    p[9] = 6;
    p[10..].copy_from_slice(&(tcp_len as u16).to_be_bytes());
    p
}

/// The IPv6 pseudo-header that the TCP checksum covers (RFC 8200 §8.1).
fn pseudo_v6(src: [u8; 16], dst: [u8; 16], tcp_len: usize) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[..16].copy_from_slice(&src);
    p[16..32].copy_from_slice(&dst);
    p[32..36].copy_from_slice(&(tcp_len as u32).to_be_bytes());
    p[39] = 6;
    p
}

/// Adds `data`, as big-endian 16-bit words (the last one zero-padded), to the
/// ones'-complement accumulator `acc` (RFC 1071). etherparse's TCP checksum was half of
/// the capture path's time in its profile, and it needs the header serialized apart; this
/// one sums each part where it lies, 8 bytes at a time: 2^16 ≡ 1 (mod 2^16 − 1), so
/// a 64-bit word sums like its four 16-bit parts, and 2^64 of them cannot overflow the
/// 128-bit accumulator. The words are read little-endian (no byte swap per word) and the
/// folded sum swapped once at the end (RFC 1071 §2(B): the sum is byte-order independent).
fn ones_sum(data: &[u8], acc: u64) -> u64 {
    let word = |w: &[u8]| u128::from(u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]));
    let blocks = data.chunks_exact(32);
    let rest = blocks.remainder();
    // Four accumulators: four carry chains the processor runs side by side (measured on
    // 1460 bytes: 32-bit big-endian words 145 ns, one chain 95, two 55, four 48).
    let mut sums = [0u128; 4];
    let mut add = |block: &[u8]| {
        for (sum, w) in sums.iter_mut().zip(block.chunks_exact(8)) {
            *sum += word(w);
        }
    };
    for block in blocks {
        add(block);
    }
    let mut last = [0u8; 32];
    last[..rest.len()].copy_from_slice(rest);
    add(&last);
    let sum: u128 = sums.iter().sum();
    let sum = u128::from(sum as u64) + (sum >> 64);
    let folded = fold(sum as u64 + (sum >> 64) as u64);
    acc + u64::from(folded.swap_bytes())
}

/// Folds a 64-bit ones'-complement sum to 16 bits.
fn fold(mut x: u64) -> u16 {
    while x >> 16 != 0 {
        x = (x & 0xffff) + (x >> 16);
    }
    x as u16
}

#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
    psh: bool,
}

fn to_v6(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    }
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TCP checksum of `tcp` (its checksum field taken as zero) and `payload`.
    fn tcp_checksum(pseudo: &[u8], tcp: &TcpHeader, payload: &[u8]) -> u16 {
        let mut header = tcp.clone();
        header.checksum = 0;
        // Each part starts 16-bit aligned: the pseudo-header and TCP header are multiples of 4.
        !fold(ones_sum(payload, ones_sum(&header.to_bytes(), ones_sum(pseudo, 0))))
    }

    #[test]
    fn the_fast_checksum_equals_etherparses_for_every_length_and_family() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for len in (0..80).chain([1459, 1460, 1461, 2999]) {
            let data = &payload[..len];
            let mut tcp = TcpHeader::new(40000, 443, 0xdead_beef, 512);
            tcp.ack = true;
            tcp.acknowledgment_number = 77;
            if len % 2 == 1 {
                tcp.set_options(&[TcpOptionElement::MaximumSegmentSize(1460)]).unwrap();
            }
            let tcp_len = tcp.header_len() + len;
            let v4 = Ipv4Header::new(tcp_len as u16, 64, IpNumber::TCP, [10, 0, 0, 1], [192, 168, 7, 9]).unwrap();
            let want = tcp.calc_checksum_ipv4(&v4, data).unwrap();
            assert_eq!(
                tcp_checksum(&pseudo_v4(v4.source, v4.destination, tcp_len), &tcp, data),
                want,
                "v4, {len} bytes"
            );
            let (s, d) = ([0xfe; 16], [0x20; 16]);
            let v6 = Ipv6Header {
                payload_length: tcp_len as u16,
                next_header: IpNumber::TCP,
                hop_limit: 64,
                source: s,
                destination: d,
                ..Default::default()
            };
            let want = tcp.calc_checksum_ipv6(&v6, data).unwrap();
            assert_eq!(tcp_checksum(&pseudo_v6(s, d, tcp_len), &tcp, data), want, "v6, {len} bytes");
        }
    }
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    /// A parsed packet: (from, flags "SAFRP", seq, ack, payload length, options).
    #[derive(Debug, PartialEq)]
    struct Seen {
        from: Dir,
        flags: String,
        seq: u32,
        ack: u32,
        len: usize,
        total_len: usize,
    }

    fn collect(f: impl FnOnce(&mut Flow, &mut dyn FnMut(Dir, Packet<'_>)), flow: &mut Flow) -> Vec<Seen> {
        let mut out = Vec::new();
        let mut emit = |from: Dir, packet: Packet<'_>| {
            let bytes = &packet.to_vec()[..];
            let p = SlicedPacket::from_ip(bytes).expect("parses as IP");
            let Some(TransportSlice::Tcp(tcp)) = p.transport else { panic!("not TCP") };
            let checksum_ok = match &p.net {
                Some(NetSlice::Ipv4(ip)) => {
                    let h = ip.header().to_header();
                    h.header_checksum == h.calc_header_checksum()
                        && tcp.calc_checksum_ipv4(ip.header().source(), ip.header().destination()).unwrap()
                            == tcp.checksum()
                }
                Some(NetSlice::Ipv6(ip)) => {
                    tcp.calc_checksum_ipv6(ip.header().source(), ip.header().destination()).unwrap() == tcp.checksum()
                }
                _ => false,
            };
            assert!(checksum_ok, "bad checksum");
            let flags: String =
                [(tcp.syn(), 'S'), (tcp.ack(), 'A'), (tcp.fin(), 'F'), (tcp.rst(), 'R'), (tcp.psh(), 'P')]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, c)| *c)
                    .collect();
            out.push(Seen {
                from,
                flags,
                seq: tcp.sequence_number(),
                ack: tcp.acknowledgment_number(),
                len: tcp.payload().len(),
                total_len: bytes.len(),
            });
        };
        f(flow, &mut emit);
        out
    }

    fn v4_flow(isn: [u32; 2], mss: u16) -> Flow {
        Flow::new("10.0.0.1:40000".parse().unwrap(), "10.0.0.2:8080".parse().unwrap(), PerDir::new(isn[0], isn[1]), mss)
    }

    #[test]
    fn handshake_data_ack_and_teardown_numbers() {
        let mut flow = v4_flow([1000, 5000], 1460);
        let seen = collect(
            |f, e| {
                f.handshake(&mut *e);
                f.data(Dir::Up, b"hello", &mut *e);
                f.ack(Dir::Down, &mut *e);
                f.data(Dir::Down, b"hi!", &mut *e);
                f.ack(Dir::Up, &mut *e);
                f.fin(Dir::Up, &mut *e);
                f.ack(Dir::Down, &mut *e);
                f.fin(Dir::Down, &mut *e);
                f.ack(Dir::Up, &mut *e);
            },
            &mut flow,
        );
        let row = |from, flags: &str, seq, ack, len| (from, flags.to_owned(), seq, ack, len);
        let got: Vec<_> = seen.iter().map(|s| (s.from, s.flags.clone(), s.seq, s.ack, s.len)).collect();
        assert_eq!(
            got,
            vec![
                row(Dir::Up, "S", 1000, 0, 0),
                row(Dir::Down, "SA", 5000, 1001, 0),
                row(Dir::Up, "A", 1001, 5001, 0),
                row(Dir::Up, "AP", 1001, 5001, 5),
                row(Dir::Down, "A", 5001, 1006, 0),
                row(Dir::Down, "AP", 5001, 1006, 3),
                row(Dir::Up, "A", 1006, 5004, 0),
                row(Dir::Up, "AF", 1006, 5004, 0),
                row(Dir::Down, "A", 5004, 1007, 0),
                row(Dir::Down, "AF", 5004, 1007, 0),
                row(Dir::Up, "A", 1007, 5005, 0),
            ]
        );
    }

    #[test]
    fn sequence_numbers_wrap_around() {
        let mut flow = v4_flow([u32::MAX - 2, 7], 4);
        let seen = collect(
            |f, e| {
                f.handshake(&mut *e);
                f.data(Dir::Up, b"0123456789", &mut *e);
                f.ack(Dir::Down, &mut *e);
            },
            &mut flow,
        );
        let seqs: Vec<u32> = seen[3..6].iter().map(|s| s.seq).collect();
        assert_eq!(seqs, vec![u32::MAX - 1, 2, 6], "isn+1, then +4 twice, wrapping");
        assert_eq!(seen[6].ack, 8, "ACK of all 10 bytes: (2^32 - 2) + 10 wraps to 8");
        assert_eq!(flow.sent(Dir::Up), 10);
    }

    #[test]
    fn segments_never_exceed_the_mss_and_only_the_last_has_psh() {
        for (len, mss, want) in
            [(1460, 1460, vec![1460]), (1461, 1460, vec![1460, 1]), (4000, 1000, vec![1000; 4]), (1, 1460, vec![1])]
        {
            let mut flow = v4_flow([1, 1], mss);
            let payload = vec![7u8; len];
            let seen = collect(|f, e| f.data(Dir::Down, &payload, &mut *e), &mut flow);
            let lens: Vec<usize> = seen.iter().map(|s| s.len).collect();
            assert_eq!(lens, want, "len {len} mss {mss}");
            let psh: Vec<bool> = seen.iter().map(|s| s.flags.contains('P')).collect();
            assert_eq!(psh.iter().filter(|p| **p).count(), 1);
            assert!(*psh.last().unwrap());
        }
    }

    #[test]
    fn the_largest_mss_fits_ipv4s_length_field() {
        let mut flow = v4_flow([1, 1], u16::MAX);
        let payload = vec![0u8; 200_000];
        let seen = collect(|f, e| f.data(Dir::Up, &payload, &mut *e), &mut flow);
        assert!(seen.iter().all(|s| s.total_len <= 65535), "no IPv4 packet over 65535 bytes");
        assert_eq!(seen.iter().map(|s| s.len).sum::<usize>(), 200_000);
    }

    #[test]
    fn a_coalesced_flow_cuts_at_the_largest_segment_and_still_advertises_the_mss() {
        for (opener, acceptor) in [("10.0.0.1:40000", "10.0.0.2:8080"), ("[::1]:40000", "[::1]:8080")] {
            let mut flow =
                Flow::new(opener.parse().unwrap(), acceptor.parse().unwrap(), PerDir::new(1, 1), 1460).coalesced();
            let mut syn = Vec::new();
            flow.handshake(&mut |from, packet: Packet<'_>| {
                if from == Dir::Up && syn.is_empty() {
                    syn = packet.to_vec();
                }
            });
            let Some(TransportSlice::Tcp(tcp)) = SlicedPacket::from_ip(&syn).unwrap().transport else { panic!() };
            assert!(tcp.options_iterator().any(|o| o.unwrap() == TcpOptionElement::MaximumSegmentSize(1460)));
            let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            let seen = collect(|f, e| f.data(Dir::Up, &payload, &mut *e), &mut flow);
            let lens: Vec<usize> = seen.iter().map(|s| s.len).collect();
            assert_eq!(lens, [65495, 65495, 65495, 3515], "{opener}");
            assert!(seen.iter().all(|s| s.total_len <= 65535 + 40), "{opener}: within the IP length fields");
        }
    }

    #[test]
    fn syn_options_and_ipv6() {
        let mut flow =
            Flow::new("[::1]:50000".parse().unwrap(), "[::1]:9000".parse().unwrap(), PerDir::new(10, 20), MSS_IPV6);
        let mut syn = Vec::new();
        flow.handshake(&mut |from, packet: Packet<'_>| {
            if from == Dir::Up && syn.is_empty() {
                syn = packet.to_vec();
            }
        });
        let p = SlicedPacket::from_ip(&syn).unwrap();
        assert!(matches!(p.net, Some(NetSlice::Ipv6(_))));
        let Some(TransportSlice::Tcp(tcp)) = p.transport else { panic!() };
        let options: Vec<_> = tcp.options_iterator().map(|o| o.unwrap()).collect();
        assert!(options.contains(&TcpOptionElement::MaximumSegmentSize(1440)));
        assert!(options.contains(&TcpOptionElement::SelectiveAcknowledgementPermitted));
        assert!(options.contains(&TcpOptionElement::WindowScale(7)));
        let seen = collect(|f, e| f.data(Dir::Down, &[1u8; 3000], &mut *e), &mut flow);
        assert_eq!(seen.iter().map(|s| s.len).collect::<Vec<_>>(), vec![1440, 1440, 120]);
    }

    #[test]
    fn a_repeat_ends_where_the_live_flow_continues() {
        let mut flow = v4_flow([u32::MAX - 100, 5000], 1460);
        let mut sink = |_: Dir, _: Packet<'_>| {};
        flow.handshake(&mut sink);
        flow.data(Dir::Up, &[0u8; 3000], &mut sink);
        flow.data(Dir::Down, &[0u8; 200], &mut sink);
        let (next_a, next_b) = (flow.next_seq(Dir::Up), flow.next_seq(Dir::Down));
        let seen = collect(
            |f, e| {
                let parts = [
                    Sent { dir: Dir::Up, bytes: b"GET / HTTP/1.1\r\n\r\n" },
                    Sent { dir: Dir::Down, bytes: b"HTTP/1.1 101 OK\r\n\r\n" },
                ];
                f.repeat(&parts, &mut *e);
                f.data(Dir::Up, b"live", &mut *e);
            },
            &mut flow,
        );
        let flags: Vec<&str> = seen.iter().map(|s| s.flags.as_str()).collect();
        assert_eq!(flags, vec!["S", "SA", "A", "AP", "A", "AP", "A", "AP"]);
        assert_eq!(seen[3].seq.wrapping_add(seen[3].len as u32), next_a, "request ends where A's stream stands");
        assert_eq!(seen[5].seq.wrapping_add(seen[5].len as u32), next_b, "response ends where B's stream stands");
        assert_eq!((seen[7].seq, seen[7].ack), (next_a, next_b), "live data continues seamlessly");
        assert_eq!(flow.sent(Dir::Up), 3004, "byte counts are the whole stream's");
    }

    #[test]
    fn a_gap_shows_as_a_sequence_jump_and_rst_carries_current_numbers() {
        let mut flow = v4_flow([100, 200], 1460);
        let seen = collect(
            |f, e| {
                f.data(Dir::Up, b"abc", &mut *e);
                f.skip(Dir::Up, 1000);
                f.data(Dir::Up, b"def", &mut *e);
                f.rst(Dir::Down, &mut *e);
            },
            &mut flow,
        );
        assert_eq!(seen[0].seq, 101);
        assert_eq!(seen[1].seq, 101 + 3 + 1000);
        assert_eq!((seen[2].flags.as_str(), seen[2].seq, seen[2].ack), ("AR", 201, 101 + 1006));
    }
}
