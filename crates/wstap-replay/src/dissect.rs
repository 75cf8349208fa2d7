//! From a captured frame to its TCP segment: the link layer (Ethernet with any number of
//! VLAN tags, RAW IP, Linux cooked SLL and SLL2, BSD loopback/NULL), then IPv4 or IPv6
//! (extension headers included, via etherparse), through the tunnels of cloud and
//! mobile networks (IP-in-IP, GRE, ERSPAN, VXLAN, Geneve, GTP-U: the segment's
//! addresses are the innermost), then TCP. A segment cut by the snap length keeps what
//! was captured (reassembly sees the rest as missing). Anything else — ARP, UDP, IP
//! fragments — is not a segment. Pure.

use std::net::{IpAddr, SocketAddr};

use etherparse::{IpNumber, LaxIpSlice, TcpSlice};

/// One TCP segment as it was seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Its sender.
    pub src: SocketAddr,
    /// Its receiver.
    pub dst: SocketAddr,
    /// Its sequence number.
    pub seq: u32,
    /// Its acknowledgement number, if the ACK flag is set.
    pub ack: Option<u32>,
    /// SYN flag.
    pub syn: bool,
    /// FIN flag.
    pub fin: bool,
    /// RST flag.
    pub rst: bool,
    /// The TCP payload.
    pub payload: &'a [u8],
}

/// A capture interface's link type (its `LINKTYPE_` value): what header comes before the
/// IP packet in each of its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// 0, BSD loopback: a 4-byte address family in the capturing host's byte order.
    Null,
    /// 1, Ethernet II, with any number of VLAN tags.
    Ethernet,
    /// 101 (and 12 or 14 in some old files): the IP header first, as wstap writes.
    Raw,
    /// 108, OpenBSD loopback: a 4-byte address family, big-endian.
    Loop,
    /// 113, Linux cooked capture (`tcpdump -i any` before 2020).
    LinuxSll,
    /// 228: IPv4 only, the IP header first.
    Ipv4,
    /// 229: IPv6 only, the IP header first.
    Ipv6,
    /// 276, Linux cooked capture version 2 (`tcpdump -i any` since).
    LinuxSll2,
    /// Any other: its frames are not read.
    Other(u16),
}

impl LinkType {
    /// The link type a file's `LINKTYPE_` value names.
    pub fn from_value(value: u16) -> LinkType {
        match value {
            0 => LinkType::Null,
            1 => LinkType::Ethernet,
            12 | 14 | 101 => LinkType::Raw,
            108 => LinkType::Loop,
            113 => LinkType::LinuxSll,
            228 => LinkType::Ipv4,
            229 => LinkType::Ipv6,
            276 => LinkType::LinuxSll2,
            other => LinkType::Other(other),
        }
    }
}

/// Why a frame is not a TCP segment; `Unsupported` frames are counted, not reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Not TCP over IP (ARP, UDP, an IP fragment, …).
    NotTcp,
    /// A link type this reader does not know.
    Link(LinkType),
    /// Claims to be IP/TCP but its headers are cut short or malformed.
    Malformed(String),
}

/// The IP packet inside a frame of link type `link`, if it carries one.
fn ip_payload(link: LinkType, frame: &[u8]) -> Result<&[u8], Skip> {
    fn ethertype_ip(t: u16, rest: &[u8]) -> Result<&[u8], Skip> {
        match t {
            0x0800 | 0x86DD => Ok(rest),
            _ => Err(Skip::NotTcp),
        }
    }
    let short = || Skip::Malformed(format!("{}-byte frame is shorter than its link header", frame.len()));
    let be16 = |at: usize| frame.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or_else(short);
    match link {
        LinkType::Raw | LinkType::Ipv4 | LinkType::Ipv6 => Ok(frame),
        LinkType::Ethernet => {
            let mut at = 12;
            loop {
                match be16(at)? {
                    0x8100 | 0x88A8 | 0x9100 => at += 4,
                    t => return ethertype_ip(t, &frame[at + 2..]),
                }
            }
        }
        LinkType::LinuxSll => ethertype_ip(be16(14)?, frame.get(16..).ok_or_else(short)?),
        LinkType::LinuxSll2 => ethertype_ip(be16(0)?, frame.get(20..).ok_or_else(short)?),
        LinkType::Null | LinkType::Loop => {
            let family = frame.get(..4).ok_or_else(short)?;
            let family = if link == LinkType::Loop {
                u32::from_be_bytes(family.try_into().unwrap_or_default())
            } else {
                // The host's byte order, which the file does not record: whichever reads small.
                let le = u32::from_le_bytes(family.try_into().unwrap_or_default());
                if le > 0xffff {
                    le.swap_bytes()
                } else {
                    le
                }
            };
            match family {
                2 | 24 | 28 | 30 => Ok(&frame[4..]),
                _ => Err(Skip::NotTcp),
            }
        }
        LinkType::Other(_) => Err(Skip::Link(link)),
    }
}

/// The TCP segment in a frame.
pub fn segment(link: LinkType, frame: &[u8]) -> Result<Segment<'_>, Skip> {
    ip_segment(ip_payload(link, frame)?, 0)
}

/// Tunnels inside tunnels followed at most this deep.
const MAX_DEPTH: u8 = 4;

/// The TCP segment in an IP packet, through any tunnel it travels in; `depth`: the
/// tunnels already opened.
fn ip_segment(packet: &[u8], depth: u8) -> Result<Segment<'_>, Skip> {
    let (ip, _) = LaxIpSlice::from_slice(packet).map_err(|e| Skip::Malformed(format!("IP: {e}")))?;
    let payload = ip.payload();
    if payload.fragmented {
        return Err(Skip::NotTcp);
    }
    let inner = match payload.ip_number {
        IpNumber::TCP => return tcp(&ip, payload.payload),
        _ if depth >= MAX_DEPTH => return Err(Skip::NotTcp),
        IpNumber::IPV4 | IpNumber::IPV6 => payload.payload,
        IpNumber::GRE => gre(payload.payload)?,
        IpNumber::UDP => udp_tunnel(payload.payload)?,
        _ => return Err(Skip::NotTcp),
    };
    ip_segment(inner, depth + 1)
}

fn tcp<'a>(ip: &LaxIpSlice<'a>, payload: &'a [u8]) -> Result<Segment<'a>, Skip> {
    let tcp = TcpSlice::from_slice(payload).map_err(|e| Skip::Malformed(format!("TCP: {e}")))?;
    let addr = |ip: IpAddr, port| SocketAddr::new(ip, port);
    Ok(Segment {
        src: addr(ip.source_addr(), tcp.source_port()),
        dst: addr(ip.destination_addr(), tcp.destination_port()),
        seq: tcp.sequence_number(),
        ack: tcp.ack().then(|| tcp.acknowledgment_number()),
        syn: tcp.syn(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        payload: tcp.payload(),
    })
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// A tunnel's inner frame: an IP packet, or an Ethernet frame (its IP packet taken).
fn inner(ethertype: u16, rest: &[u8]) -> Result<&[u8], Skip> {
    match ethertype {
        0x0800 | 0x86DD => Ok(rest),
        0x6558 => ip_payload(LinkType::Ethernet, rest),
        _ => Err(Skip::NotTcp),
    }
}

/// The packet a GRE header (RFC 2784, 2890) carries: IP, bridged Ethernet, or ERSPAN
/// types I, II and III (Ethernet after their own header).
fn gre(b: &[u8]) -> Result<&[u8], Skip> {
    let short = || Skip::Malformed("GRE header cut short".into());
    let (flags, proto) = (be16(b, 0).ok_or_else(short)?, be16(b, 2).ok_or_else(short)?);
    if flags & 0x0007 != 0 || flags & 0x4000 != 0 {
        return Err(Skip::NotTcp); // version 1 (PPTP) or source routing: not read
    }
    let at = 4 + 4 * [0x8000, 0x2000, 0x1000].iter().filter(|&&f| flags & f != 0).count();
    let rest = b.get(at..).ok_or_else(short)?;
    let erspan = |skip: usize| ip_payload(LinkType::Ethernet, rest.get(skip..).ok_or_else(short)?);
    match proto {
        // ERSPAN type I has no sequence number and no header of its own; type II has both.
        0x88BE if flags & 0x1000 == 0 => erspan(0),
        0x88BE => erspan(8),
        // Type III: 12 bytes, and 8 more when its O flag says a platform subheader follows.
        0x22EB => erspan(if rest.get(11).is_some_and(|o| o & 1 != 0) { 20 } else { 12 }),
        t => inner(t, rest),
    }
}

/// The packet a UDP datagram carries when one of its ports (the destination's first,
/// as Wireshark looks) is a tunnel's: VXLAN (4789, and 8472 as Linux's first default),
/// Geneve (6081), GTP-U (2152).
fn udp_tunnel(b: &[u8]) -> Result<&[u8], Skip> {
    let short = || Skip::Malformed("tunnel header cut short".into());
    let tunnel = |p: &u16| matches!(p, 4789 | 8472 | 6081 | 2152);
    let ports = [be16(b, 2).ok_or_else(short)?, be16(b, 0).ok_or_else(short)?];
    let body = b.get(8..).ok_or_else(short)?;
    match ports.into_iter().find(tunnel).unwrap_or_default() {
        4789 | 8472 => ip_payload(LinkType::Ethernet, body.get(8..).ok_or_else(short)?),
        6081 => {
            let options = usize::from(body.first().ok_or_else(short)? & 0x3f) * 4;
            inner(be16(body, 2).ok_or_else(short)?, body.get(8 + options..).ok_or_else(short)?)
        }
        2152 => gtp_u(body),
        _ => Err(Skip::NotTcp),
    }
}

/// The user packet a GTP-U G-PDU carries (3GPP TS 29.281): version 1, message type 255,
/// past the optional fields and the chain of extension headers.
fn gtp_u(b: &[u8]) -> Result<&[u8], Skip> {
    let short = || Skip::Malformed("GTP-U header cut short".into());
    let flags = *b.first().ok_or_else(short)?;
    if flags >> 5 != 1 || b.get(1) != Some(&0xFF) {
        return Err(Skip::NotTcp); // not version 1, or a signalling message
    }
    if flags & 0x07 == 0 {
        return b.get(8..).ok_or_else(short);
    }
    // Sequence number, N-PDU number, next extension header type.
    let (mut at, mut next) = (12, *b.get(11).ok_or_else(short)?);
    while next != 0 {
        let len = usize::from(*b.get(at).ok_or_else(short)?) * 4;
        if len == 0 {
            return Err(Skip::Malformed("GTP-U extension header of length 0".into()));
        }
        next = *b.get(at + len - 1).ok_or_else(short)?;
        at += len;
    }
    b.get(at..).ok_or_else(short)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn ipv4_tcp(payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).tcp(4000, 80, 1000, 512).ack(77);
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    fn ipv6_tcp(payload: &[u8]) -> Vec<u8> {
        let mut src = [0; 16];
        src[15] = 1;
        let b = PacketBuilder::ipv6(src, src, 64).tcp(4000, 80, 5, 512).syn();
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn every_link_type_reaches_the_segment() {
        let ip = ipv4_tcp(b"hello");
        let eth = [&[0u8; 12][..], &[0x81, 0x00, 0, 5], &[0x88, 0xA8, 0, 6], &[0x08, 0x00], &ip].concat();
        let sll = [&[0u8; 14][..], &[0x08, 0x00], &ip].concat();
        let sll2 = [&[0x08, 0x00][..], &[0u8; 18], &ip].concat();
        let null_le = [&2u32.to_le_bytes()[..], &ip].concat();
        let null_be = [&2u32.to_be_bytes()[..], &ip].concat();
        for (link, frame) in [
            (LinkType::Ethernet, &eth),
            (LinkType::Raw, &ip),
            (LinkType::LinuxSll, &sll),
            (LinkType::LinuxSll2, &sll2),
            (LinkType::Null, &null_le),
            (LinkType::Null, &null_be),
            (LinkType::Loop, &null_be),
        ] {
            let s = segment(link, frame).unwrap_or_else(|e| panic!("{link:?}: {e:?}"));
            assert_eq!(s.payload, b"hello", "{link:?}");
            assert_eq!((s.src.port(), s.dst.port(), s.seq, s.ack), (4000, 80, 1000, Some(77)));
            assert!(!s.syn && !s.fin && !s.rst);
        }
        let v6 = ipv6_tcp(b"x");
        let v6 = segment(LinkType::Raw, &v6).unwrap();
        assert!(v6.src.is_ipv6() && v6.syn && v6.ack.is_none());
    }

    #[test]
    fn other_traffic_and_damage_are_skipped_not_fatal() {
        let arp = [&[0u8; 12][..], &[0x08, 0x06], &[0; 28]].concat();
        assert_eq!(segment(LinkType::Ethernet, &arp), Err(Skip::NotTcp));
        let unknown = LinkType::from_value(999);
        assert_eq!(segment(unknown, b"x"), Err(Skip::Link(LinkType::Other(999))));
        let ip = ipv4_tcp(b"hello");
        assert!(matches!(segment(LinkType::Raw, &ip[..30]), Err(Skip::Malformed(_))));
        assert!(matches!(segment(LinkType::Ethernet, &[0; 5]), Err(Skip::Malformed(_))));
    }

    /// An outer IPv4 packet from 192.0.2.1 to 192.0.2.2 carrying `payload` as protocol `proto`.
    fn outer(proto: u8, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv4([192, 0, 2, 1], [192, 0, 2, 2], 64);
        let mut out = Vec::new();
        b.write(&mut out, IpNumber(proto), payload).unwrap();
        out
    }

    fn udp(port: u16, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv4([192, 0, 2, 1], [192, 0, 2, 2], 64).udp(50000, port);
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn tunnels_are_opened_and_the_segment_has_the_inner_addresses() {
        let ip = ipv4_tcp(b"inside");
        let eth = [&[0u8; 12][..], &[0x08, 0x00], &ip].concat();
        let gtp_ext = [&[0x34, 0xFF, 0, 0][..], &[0; 4], &[0, 0, 0, 0x85], &[1, 0x09, 0x01, 0], &ip].concat();
        let tunnels = [
            ("IP-in-IP", outer(4, &ip)),
            ("GRE", outer(47, &[&[0, 0, 0x08, 0x00][..], &ip].concat())),
            ("GRE with checksum and key", outer(47, &[&[0xA0, 0, 0x08, 0x00][..], &[0; 8], &ip].concat())),
            ("GRE bridging", outer(47, &[&[0, 0, 0x65, 0x58][..], &eth].concat())),
            ("ERSPAN I", outer(47, &[&[0, 0, 0x88, 0xBE][..], &eth].concat())),
            ("ERSPAN II", outer(47, &[&[0x10, 0, 0x88, 0xBE][..], &[0; 4], &[0; 8], &eth].concat())),
            ("ERSPAN III", outer(47, &[&[0x10, 0, 0x22, 0xEB][..], &[0; 4], &[0; 12], &eth].concat())),
            ("VXLAN", udp(4789, &[&[0x08, 0, 0, 0, 0, 0, 1, 0][..], &eth].concat())),
            ("Geneve", udp(6081, &[&[0x01, 0, 0x65, 0x58, 0, 0, 1, 0][..], &[0; 4], &eth].concat())),
            ("GTP-U", udp(2152, &[&[0x30, 0xFF, 0, 0][..], &[0; 4], &ip].concat())),
            ("GTP-U with an extension header", udp(2152, &gtp_ext)),
            (
                "VXLAN in GRE in IP-in-IP",
                outer(
                    4,
                    &outer(
                        47,
                        &[&[0, 0, 0x08, 0x00][..], &udp(4789, &[&[0x08, 0, 0, 0, 0, 0, 1, 0][..], &eth].concat())]
                            .concat(),
                    ),
                ),
            ),
        ];
        for (name, frame) in &tunnels {
            let s = segment(LinkType::Raw, frame).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(s.payload, b"inside", "{name}");
            assert_eq!(
                (s.src.to_string(), s.dst.to_string()),
                ("10.0.0.1:4000".into(), "10.0.0.2:80".into()),
                "{name}"
            );
        }
        // Other UDP, PPTP's GRE and GTP signalling are not segments; nesting is bounded.
        assert_eq!(segment(LinkType::Raw, &udp(53, &ip)), Err(Skip::NotTcp));
        assert_eq!(
            segment(LinkType::Raw, &outer(47, &[&[0x30, 0x01, 0x88, 0x0B][..], &ip].concat())),
            Err(Skip::NotTcp)
        );
        assert_eq!(
            segment(LinkType::Raw, &udp(2152, &[&[0x30, 0x01, 0, 0][..], &[0; 4], &ip].concat())),
            Err(Skip::NotTcp)
        );
        let mut deep = ip.clone();
        for _ in 0..=MAX_DEPTH {
            deep = outer(4, &deep);
        }
        assert_eq!(segment(LinkType::Raw, &deep), Err(Skip::NotTcp));
    }

    #[test]
    fn a_segment_cut_by_the_snap_length_keeps_what_was_captured() {
        let ip = ipv4_tcp(&[b'x'; 500]);
        let s = segment(LinkType::Raw, &ip[..200]).unwrap();
        assert_eq!(s.payload.len(), 200 - 40);
    }
}
