//! From a captured frame to its TCP segment: the link layer (Ethernet with any number of
//! VLAN tags, RAW IP, Linux cooked SLL and SLL2, BSD loopback/NULL), then IPv4 or IPv6
//! (extension headers included, via etherparse), then TCP. Anything else — ARP, UDP,
//! IP fragments, frames cut short by the snap length — is not a segment. Pure.

use std::net::{IpAddr, SocketAddr};

use etherparse::{IpNumber, IpSlice, TcpSlice};

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
    let ip = IpSlice::from_slice(ip_payload(link, frame)?).map_err(|e| Skip::Malformed(format!("IP: {e}")))?;
    let payload = ip.payload();
    if payload.ip_number != IpNumber::TCP {
        return Err(Skip::NotTcp);
    }
    if payload.fragmented {
        return Err(Skip::NotTcp);
    }
    let tcp = TcpSlice::from_slice(payload.payload).map_err(|e| Skip::Malformed(format!("TCP: {e}")))?;
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
}
