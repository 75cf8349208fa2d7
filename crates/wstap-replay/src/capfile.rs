//! Capture files as packets: classic pcap (µs or ns timestamps, either byte order) and
//! pcapng (any number of sections and interfaces, any `if_tsresol`, `if_tsoffset`).
//! Reads from any [`Read`] through one record-sized buffer, so memory is the largest
//! record, not the file; every error names the offset where the file stopped making
//! sense. No I/O of its own: opening files, standard input and compressed captures is
//! [`crate::input`]'s.

use std::io::Read;

use wstap_wire::Timestamp;

use crate::dissect::LinkType;

/// One captured packet, as the file holds it, borrowed from the reader's buffer.
#[derive(Debug, Clone, Copy)]
pub struct RawPacket<'a> {
    /// Where its record or block starts in the file.
    pub offset: u64,
    /// When it was captured.
    pub time: Timestamp,
    /// Its interface's link type.
    pub link: LinkType,
    /// The bytes captured, from the link-layer header on.
    pub data: &'a [u8],
    /// The packet's first comment (pcapng `opt_comment`), when it has one in UTF-8.
    pub comment: Option<&'a str>,
}

/// Why the file cannot be read past `offset`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at offset {offset}: {what}")]
pub struct FormatError {
    /// Where the file stops making sense.
    pub offset: u64,
    /// What is wrong there.
    pub what: String,
}

/// Reads packets one by one from `R`; after the first error it yields nothing more.
pub struct Reader<R> {
    src: R,
    /// The record being read: its header, then its body.
    buf: Vec<u8>,
    /// Where the record in `buf` starts in the file.
    at: u64,
    /// `buf` already holds the start of the next record (the magic `new` read).
    carry: bool,
    format: Format,
    failed: bool,
}

enum Format {
    /// A pcap file: its timestamps' fractions count `ns_per_unit` nanoseconds.
    Pcap {
        order: Order,
        ns_per_unit: u64,
        link: LinkType,
    },
    Pcapng {
        order: Order,
        interfaces: Vec<Interface>,
    },
}

#[derive(Debug, Clone, Copy)]
struct Interface {
    link: LinkType,
    /// Timestamp units per second.
    units: u64,
    /// Seconds added to every timestamp.
    offset_s: i64,
}

const SHB: u32 = 0x0A0D_0D0A;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

/// The largest packet either format may hold: a corrupt length above it is an error, not
/// an allocation.
const MAX_PACKET: usize = 256 * 1024;
/// The largest pcapng block: a packet and a megabyte of options.
const MAX_BLOCK: usize = MAX_PACKET + 1024 * 1024;

fn err<T>(offset: u64, what: impl Into<String>) -> Result<T, FormatError> {
    Err(FormatError { offset, what: what.into() })
}

/// A file's (or a pcapng section's) byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Little,
    Big,
}

impl Order {
    fn u16(self, b: &[u8], at: usize) -> Option<u16> {
        let v: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
        Some(if self == Order::Big { u16::from_be_bytes(v) } else { u16::from_le_bytes(v) })
    }

    fn u32(self, b: &[u8], at: usize) -> Option<u32> {
        let v: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if self == Order::Big { u32::from_be_bytes(v) } else { u32::from_le_bytes(v) })
    }

    fn i64(self, v: [u8; 8]) -> i64 {
        if self == Order::Big {
            i64::from_be_bytes(v)
        } else {
            i64::from_le_bytes(v)
        }
    }
}

impl<R: Read> Reader<R> {
    /// Recognises the format from the first bytes.
    pub fn new(src: R) -> Result<Reader<R>, FormatError> {
        let mut r = Reader {
            src,
            buf: Vec::new(),
            at: 0,
            carry: true,
            format: Format::Pcapng { order: Order::Little, interfaces: Vec::new() },
            failed: false,
        };
        let got = r.fill_to(4)?;
        let Some(magic) = Order::Little.u32(&r.buf, 0) else {
            return err(0, format!("{got} bytes is too short for a capture file"));
        };
        match magic {
            0xA1B2_C3D4 | 0xD4C3_B2A1 | 0xA1B2_3C4D | 0x4D3C_B2A1 => {
                let order = if matches!(magic, 0xD4C3_B2A1 | 0x4D3C_B2A1) { Order::Big } else { Order::Little };
                let ns_per_unit = if matches!(magic, 0xA1B2_3C4D | 0x4D3C_B2A1) { 1 } else { 1000 };
                r.fill_to(24)?;
                let Some(link) = order.u32(&r.buf, 20) else {
                    return err(0, "truncated pcap file header");
                };
                r.format = Format::Pcap { order, ns_per_unit, link: LinkType::from_value(link as u16) };
                r.buf.clear();
                (r.at, r.carry) = (24, false);
            }
            SHB => {}
            _ => return err(0, format!("not a pcap or pcapng file (magic {magic:#010x})")),
        }
        Ok(r)
    }

    /// The next packet; `None` at the end of the file or after an error.
    #[allow(clippy::should_implement_trait)] // it lends from the reader: not an Iterator
    pub fn next(&mut self) -> Option<Result<RawPacket<'_>, FormatError>> {
        if self.failed {
            return None;
        }
        let next = match self.format {
            Format::Pcap { order, ns_per_unit, link } => self.next_pcap(order, ns_per_unit, link),
            Format::Pcapng { .. } => self.next_pcapng(),
        };
        match next {
            Ok(Some(at)) => Some(Ok(self.packet(at))),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }

    /// Reads until `buf` holds `n` bytes or the file ends; how many it holds.
    fn fill_to(&mut self, n: usize) -> Result<usize, FormatError> {
        let want = n.saturating_sub(self.buf.len()) as u64;
        let read = (&mut self.src).take(want).read_to_end(&mut self.buf);
        read.map_err(|e| FormatError { offset: self.at + self.buf.len() as u64, what: format!("read failed: {e}") })?;
        Ok(self.buf.len())
    }

    /// Starts the next record: `buf` empty (but for what `new` read), `at` past the last.
    fn start_record(&mut self) {
        if !std::mem::take(&mut self.carry) {
            self.at += self.buf.len() as u64;
            self.buf.clear();
        }
    }

    fn next_pcap(&mut self, order: Order, ns_per_unit: u64, link: LinkType) -> Result<Option<Found>, FormatError> {
        self.start_record();
        let at = self.at;
        match self.fill_to(16)? {
            0 => return Ok(None),
            n if n < 16 => return err(at, format!("truncated record header ({n} of 16 bytes)")),
            _ => {}
        }
        let d = &self.buf;
        let (Some(sec), Some(frac), Some(incl)) = (order.u32(d, 0), order.u32(d, 4), order.u32(d, 8)) else {
            return err(at, "truncated record header");
        };
        let incl = incl as usize;
        if incl > MAX_PACKET {
            return err(at, format!("record claims {incl} captured bytes (more than {MAX_PACKET})"));
        }
        let got = self.fill_to(16 + incl)?;
        if got < 16 + incl {
            return err(at, format!("record of {incl} bytes is cut short: {} remain", got - 16));
        }
        let time = Timestamp::from_nanos(u64::from(sec) * 1_000_000_000 + u64::from(frac) * ns_per_unit);
        Ok(Some(Found { time, link, data: 16..16 + incl, comment: None }))
    }

    fn next_pcapng(&mut self) -> Result<Option<Found>, FormatError> {
        loop {
            self.start_record();
            let at = self.at;
            match self.fill_to(8)? {
                0 => return Ok(None),
                n if n < 8 => return err(at, "truncated block header"),
                _ => {}
            }
            if Order::Little.u32(&self.buf, 0) == Some(SHB) && self.fill_to(12)? < 12 {
                return err(at, "truncated section header");
            }
            let Format::Pcapng { order, interfaces } = &mut self.format else { return Ok(None) };
            let (kind, len) = block_header(&self.buf, at, order)?;
            let order = *order;
            if kind == SHB {
                interfaces.clear();
            }
            let got = self.fill_to(len)?;
            if got < len {
                return err(at, format!("block of {len} bytes is cut short: {got} remain"));
            }
            if order.u32(&self.buf, len - 4) != Some(len as u32) {
                return err(at + len as u64 - 4, "block's trailing length does not match its leading length");
            }
            let Format::Pcapng { interfaces, .. } = &mut self.format else { return Ok(None) };
            let body = &self.buf[8..len - 4];
            let found = match kind {
                1 => {
                    let ifc =
                        interface(body, order).map_err(|(o, w)| FormatError { offset: at + 8 + o as u64, what: w })?;
                    interfaces.push(ifc);
                    None
                }
                6 | 2 => Some(packet_block(at, kind, body, order, interfaces)?),
                3 => Some(simple_packet_block(at, body, order, interfaces)?),
                _ => None,
            };
            if let Some(found) = found {
                return Ok(Some(found.shifted(8)));
            }
        }
    }

    fn packet(&self, f: Found) -> RawPacket<'_> {
        let comment = f.comment.and_then(|c| std::str::from_utf8(&self.buf[c]).ok());
        RawPacket { offset: self.at, time: f.time, link: f.link, data: &self.buf[f.data], comment }
    }
}

/// A packet copied out of the reader: for when packets are kept, not streamed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Where its record or block starts in the file.
    pub offset: u64,
    /// When it was captured.
    pub time: Timestamp,
    /// Its interface's link type.
    pub link: LinkType,
    /// The bytes captured, from the link-layer header on.
    pub data: Vec<u8>,
    /// Its first comment.
    pub comment: Option<String>,
}

impl RawPacket<'_> {
    /// A copy that owns its bytes.
    pub fn owned(&self) -> Packet {
        let (offset, time, link) = (self.offset, self.time, self.link);
        Packet { offset, time, link, data: self.data.to_vec(), comment: self.comment.map(str::to_string) }
    }
}

impl<R: Read> Reader<R> {
    /// Every packet, each copied: an iterator, for tests and small files.
    pub fn packets(mut self) -> impl Iterator<Item = Result<Packet, FormatError>> {
        std::iter::from_fn(move || self.next().map(|p| p.map(|p| p.owned())))
    }
}

/// A packet found in the reader's buffer: where its bytes and comment are.
struct Found {
    time: Timestamp,
    link: LinkType,
    data: std::ops::Range<usize>,
    comment: Option<std::ops::Range<usize>>,
}

impl Found {
    /// Places found in a block's body, moved to the buffer the body starts `by` bytes into.
    fn shifted(self, by: usize) -> Found {
        let shift = |r: std::ops::Range<usize>| r.start + by..r.end + by;
        Found { data: shift(self.data), comment: self.comment.map(shift), ..self }
    }
}

/// The type and length of the pcapng block whose first 8 (a section header's first 12)
/// bytes `d` holds, the length checked. A section header sets `order` (the section's
/// byte order) first.
fn block_header(d: &[u8], at: u64, order: &mut Order) -> Result<(u32, usize), FormatError> {
    let kind = Order::Little.u32(d, 0).unwrap_or_default();
    if kind == SHB {
        *order = match Order::Little.u32(d, 8) {
            Some(BYTE_ORDER_MAGIC) => Order::Little,
            Some(m) if m.swap_bytes() == BYTE_ORDER_MAGIC => Order::Big,
            Some(m) => return err(at + 8, format!("bad byte-order magic {m:#010x} in section header")),
            None => return err(at, "truncated section header"),
        };
    }
    let order = *order;
    let kind = order.u32(d, 0).unwrap_or(kind);
    let len = order.u32(d, 4).unwrap_or_default() as usize;
    if len < 12 || len % 4 != 0 {
        return err(at, format!("block length {len} is not a multiple of 4 of at least 12"));
    }
    if len > MAX_BLOCK {
        return err(at, format!("block length {len} is implausibly large"));
    }
    Ok((kind, len))
}

/// An enhanced (6) or obsolete (2) packet block: the same layout but for a 16-bit
/// interface id followed by a drop count in the old one. Places are in `body`.
fn packet_block(at: u64, kind: u32, body: &[u8], order: Order, interfaces: &[Interface]) -> Result<Found, FormatError> {
    let id = if kind == 6 { order.u32(body, 0) } else { order.u16(body, 0).map(u32::from) };
    let (Some(id), Some(hi), Some(lo), Some(caplen)) =
        (id, order.u32(body, 4), order.u32(body, 8), order.u32(body, 12))
    else {
        return err(at, "packet block too short for its fixed fields");
    };
    let data = 20..20 + caplen as usize;
    if data.end > body.len() {
        let holds = body.len().saturating_sub(20);
        return err(at, format!("packet block claims {caplen} captured bytes but holds {holds}"));
    }
    let Some(ifc) = interfaces.get(id as usize) else {
        return err(at, format!("packet block names interface {id}, but the section has {}", interfaces.len()));
    };
    let comment = options(body, 20 + (caplen as usize).div_ceil(4) * 4, order).find(|(code, _)| *code == 1);
    Ok(found(ifc, (u64::from(hi) << 32) | u64::from(lo), data, comment.map(|(_, v)| v)))
}

/// A simple packet block: interface 0, no timestamp.
fn simple_packet_block(at: u64, body: &[u8], order: Order, interfaces: &[Interface]) -> Result<Found, FormatError> {
    let Some(ifc) = interfaces.first() else {
        return err(at, "simple packet block before any interface description");
    };
    let orig = order.u32(body, 0).unwrap_or(0) as usize;
    Ok(found(ifc, 0, 4.min(body.len())..(4 + orig).min(body.len()), None))
}

fn found(ifc: &Interface, ts: u64, data: std::ops::Range<usize>, comment: Option<std::ops::Range<usize>>) -> Found {
    let ts = i128::from(ts);
    let units = i128::from(ifc.units);
    let ns = ts / units * 1_000_000_000 + ts % units * 1_000_000_000 / units + i128::from(ifc.offset_s) * 1_000_000_000;
    Found { time: Timestamp::saturating_from_nanos(ns), link: ifc.link, data, comment }
}

/// A block's options from `at` in `body`: each code and where its value is, up to
/// `opt_endofopt` or the first that overruns the block (a packet's options are only
/// read for its comment: a bad one ends them, it does not fail the packet).
fn options(body: &[u8], mut at: usize, order: Order) -> impl Iterator<Item = (u16, std::ops::Range<usize>)> + '_ {
    std::iter::from_fn(move || {
        let (code, len) = (order.u16(body, at)?, usize::from(order.u16(body, at + 2)?));
        let value = at + 4..at + 4 + len;
        if code == 0 || value.end > body.len() {
            return None;
        }
        at += 4 + len.div_ceil(4) * 4;
        Some((code, value))
    })
}

/// An interface description block's body: link type, then options.
fn interface(body: &[u8], order: Order) -> Result<Interface, (usize, String)> {
    let link = order.u16(body, 0).ok_or((0, "interface description too short".to_string()))?;
    let mut ifc = Interface { link: LinkType::from_value(link), units: 1_000_000, offset_s: 0 };
    let mut at = 8;
    while let (Some(code), Some(len)) = (order.u16(body, at), order.u16(body, at + 2)) {
        let len = usize::from(len);
        let value =
            body.get(at + 4..at + 4 + len).ok_or((at, format!("option {code} of {len} bytes overruns its block")))?;
        match (code, value) {
            (0, _) => break,
            (9, &[r]) => {
                let exp = u32::from(r & 0x7f);
                let units = if r & 0x80 == 0 { 10u64.checked_pow(exp) } else { 2u64.checked_pow(exp) };
                ifc.units = units.filter(|&u| u > 0).ok_or((at, format!("if_tsresol {r:#04x} is out of range")))?;
            }
            (14, v) if v.len() == 8 => {
                let v: [u8; 8] = v.try_into().unwrap_or_default();
                ifc.offset_s = order.i64(v);
            }
            _ => {}
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    Ok(ifc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap(big: bool, nanos: bool, records: &[(u32, u32, &[u8])]) -> Vec<u8> {
        let w32 = |v: u32| if big { v.to_be_bytes() } else { v.to_le_bytes() };
        let w16 = |v: u16| if big { v.to_be_bytes() } else { v.to_le_bytes() };
        let mut f = Vec::new();
        f.extend(w32(if nanos { 0xA1B2_3C4D } else { 0xA1B2_C3D4 }));
        f.extend(w16(2));
        f.extend(w16(4));
        f.extend([0; 8]);
        f.extend(w32(65535));
        f.extend(w32(101));
        for (s, frac, data) in records {
            f.extend(w32(*s));
            f.extend(w32(*frac));
            f.extend(w32(data.len() as u32));
            f.extend(w32(data.len() as u32));
            f.extend(*data);
        }
        f
    }

    #[test]
    fn pcap_in_both_byte_orders_and_resolutions() {
        for big in [false, true] {
            for nanos in [false, true] {
                let f = pcap(big, nanos, &[(10, 5, b"abc"), (11, 0, b"")]);
                let p: Vec<_> = Reader::new(&f[..]).unwrap().packets().collect::<Result<_, _>>().unwrap();
                assert_eq!(p.len(), 2);
                assert_eq!(p[0].time.as_nanos(), 10_000_000_000 + if nanos { 5 } else { 5000 });
                assert_eq!((p[0].link, &p[0].data[..], p[0].offset), (LinkType::Raw, &b"abc"[..], 24));
                assert_eq!(p[1].offset, 24 + 16 + 3);
            }
        }
    }

    #[test]
    fn truncated_pcap_names_the_record() {
        let f = pcap(false, false, &[(1, 0, b"abcdef")]);
        let mut r = Reader::new(&f[..f.len() - 2]).unwrap();
        let e = r.next().unwrap().unwrap_err();
        assert_eq!(e.offset, 24);
        assert!(e.what.contains("cut short"), "{e}");
        assert!(r.next().is_none());
    }

    fn block(kind: u32, body: &[u8], big: bool) -> Vec<u8> {
        let w32 = |v: u32| if big { v.to_be_bytes() } else { v.to_le_bytes() };
        let mut body = body.to_vec();
        body.resize(body.len().div_ceil(4) * 4, 0);
        let len = body.len() as u32 + 12;
        [&w32(kind)[..], &w32(len), &body, &w32(len)].concat()
    }

    fn pcapng_section(big: bool, tsresol: Option<u8>, packets: &[(u64, &[u8])]) -> Vec<u8> {
        let w32 = |v: u32| if big { v.to_be_bytes() } else { v.to_le_bytes() };
        let w16 = |v: u16| if big { v.to_be_bytes() } else { v.to_le_bytes() };
        let mut f = block(SHB, &[&w32(BYTE_ORDER_MAGIC)[..], &w16(1), &w16(0), &[0xff; 8]].concat(), big);
        let mut idb = [&w16(1)[..], &w16(0), &w32(0)].concat();
        if let Some(r) = tsresol {
            idb.extend([&w16(9)[..], &w16(1), &[r, 0, 0, 0], &w16(0), &w16(0)].concat());
        }
        f.extend(block(1, &idb, big));
        for (ts, data) in packets {
            let epb = [
                &w32(0)[..],
                &w32((ts >> 32) as u32),
                &w32(*ts as u32),
                &w32(data.len() as u32),
                &w32(data.len() as u32),
                data,
            ]
            .concat();
            f.extend(block(6, &epb, big));
        }
        f
    }

    #[test]
    fn pcapng_sections_resolutions_and_byte_orders() {
        let mut f = pcapng_section(false, None, &[(1_500_000, b"one")]);
        f.extend(pcapng_section(true, Some(9), &[(2_000_000_001, b"two")]));
        f.extend(pcapng_section(false, Some(0x80 | 10), &[(3 << 10, b"three")]));
        let p: Vec<_> = Reader::new(&f[..]).unwrap().packets().collect::<Result<_, _>>().unwrap();
        let got: Vec<_> = p.iter().map(|p| (p.time.as_nanos(), &p.data[..], p.link)).collect();
        assert_eq!(
            got,
            [
                (1_500_000_000, &b"one"[..], LinkType::Ethernet),
                (2_000_000_001, &b"two"[..], LinkType::Ethernet),
                (3_000_000_000, &b"three"[..], LinkType::Ethernet)
            ]
        );
    }

    #[test]
    fn pcapng_errors_name_offsets() {
        let f = pcapng_section(false, None, &[(1, b"abcd")]);
        let epb_at = f.len() - 36;
        let mut bad = f.clone();
        bad[epb_at + 4] = 0x30; // the leading length no longer matches the trailing one
        let e = Reader::new(&bad[..]).unwrap().packets().find_map(Result::err).unwrap();
        assert!(e.offset as usize >= epb_at, "{e}");
        let e = Reader::new(&f[..f.len() - 3]).unwrap().packets().find_map(Result::err).unwrap();
        assert_eq!((e.offset as usize, e.what.contains("cut short")), (epb_at, true), "{e}");
        let e = Reader::new(&b"hello, world"[..]).err().unwrap();
        assert!(e.what.contains("not a pcap"), "{e}");
        let mut no_ifc = f.clone();
        no_ifc[epb_at + 8] = 3; // interface 3 of 1
        let e = Reader::new(&no_ifc[..]).unwrap().packets().find_map(Result::err).unwrap();
        assert!(e.what.contains("interface 3"), "{e}");
    }

    /// Hands out one byte per read, as a pipe may.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some((&b, rest)) = self.0.split_first() else { return Ok(0) };
            match buf.first_mut() {
                Some(slot) => {
                    *slot = b;
                    self.0 = rest;
                    Ok(1)
                }
                None => Ok(0),
            }
        }
    }

    #[test]
    fn records_stream_through_short_reads_and_packet_comments_are_read() {
        let mut f = pcapng_section(false, None, &[(1, b"one")]);
        let w16 = |v: u16| v.to_le_bytes();
        let comment = b"repeated from an earlier file: s";
        let epb = [
            &0u32.to_le_bytes()[..],
            &0u32.to_le_bytes(),
            &2u32.to_le_bytes(),
            &3u32.to_le_bytes(),
            &3u32.to_le_bytes(),
            b"two\0",
            &w16(1),
            &w16(comment.len() as u16),
            comment,
            &[0; 3], // to 4 bytes
            &w16(0),
            &w16(0),
        ]
        .concat();
        f.extend(block(6, &epb, false));
        let mut r = Reader::new(Trickle(&f)).unwrap();
        let one = r.next().unwrap().unwrap().owned();
        assert_eq!((&one.data[..], one.comment), (&b"one"[..], None));
        let two = r.next().unwrap().unwrap();
        assert_eq!((two.data, two.comment), (&b"two"[..], Some("repeated from an earlier file: s")));
        assert!(r.next().is_none());
        let pcap = pcap(false, false, &[(1, 0, b"abc"), (2, 0, b"defg")]);
        let got: Vec<_> = Reader::new(Trickle(&pcap)).unwrap().packets().map(|p| p.unwrap().data).collect();
        assert_eq!(got, [b"abc".to_vec(), b"defg".to_vec()]);
    }
}
