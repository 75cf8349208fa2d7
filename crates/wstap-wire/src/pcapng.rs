//! pcapng encoding over any `Write`, via pcap-file: one section header naming wstap, the
//! OS and the host; one interface (IDB) per captured leg; Enhanced Packet Blocks with
//! nanosecond timestamps, direction flags and comments. Knows nothing of TCP or files.

use std::io::Write;

use pcap_file::pcapng::blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness};

use crate::dir::Dir;
use crate::time::Timestamp;

/// pcap-file 2.0 writes option lengths as `u16` without checking: keep comments shorter.
const MAX_COMMENT: usize = 60_000;

/// Who wrote a section: goes into the section header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SectionInfo {
    /// `shb_userappl`, e.g. "wstap 0.1.0".
    pub application: String,
    /// `shb_os`, e.g. "linux 6.1.0".
    pub os: String,
    /// Named in the section comment.
    pub hostname: String,
    /// `shb_hardware`, e.g. "x86_64"; left out when empty.
    pub hardware: String,
    /// The name of the instance that wrote the section, in its comment; left out when
    /// empty.
    pub instance: String,
}

/// The section header's options: comment, hardware, OS, application.
fn section_options(info: &SectionInfo) -> Vec<SectionHeaderOption<'static>> {
    let mut comment = format!("captured by {} on {}", info.application, info.hostname);
    if !info.instance.is_empty() {
        comment.push_str(&format!(", instance {}", info.instance));
    }
    let mut options = vec![SectionHeaderOption::Comment(comment.into())];
    if !info.hardware.is_empty() {
        options.push(SectionHeaderOption::Hardware(info.hardware.clone().into()));
    }
    options.push(SectionHeaderOption::OS(info.os.clone().into()));
    options.push(SectionHeaderOption::UserApplication(info.application.clone().into()));
    options
}

/// A pcapng section being written, with link type RAW IP (packets start at the IP header).
pub struct PcapngWriter<W: Write> {
    inner: PcapNgWriter<W>,
    /// Per interface, the direction its packets arrive in (the EPB flags say inbound).
    inbound: Vec<Dir>,
}

impl<W: Write> PcapngWriter<W> {
    /// Writes the section header.
    pub fn new(w: W, info: &SectionInfo) -> pcap_file::PcapResult<Self> {
        let shb =
            SectionHeaderBlock { endianness: Endianness::Little, options: section_options(info), ..Default::default() };
        Ok(PcapngWriter { inner: PcapNgWriter::with_section_header(w, shb)?, inbound: Vec::new() })
    }

    /// Writes an interface description; returns its id for [`PcapngWriter::packet`].
    /// Packets going `inbound` on it are flagged inbound, the others outbound.
    pub fn add_interface(&mut self, name: &str, description: &str, inbound: Dir) -> pcap_file::PcapResult<u32> {
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::RAW,
            snaplen: 0,
            options: vec![
                InterfaceDescriptionOption::IfName(name.to_owned().into()),
                InterfaceDescriptionOption::IfDescription(description.to_owned().into()),
                // pcap-file 2.0 writes EPB timestamps in ns whatever the IDB says; say so.
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        self.inner.write_pcapng_block(idb)?;
        self.inbound.push(inbound);
        Ok(self.inbound.len() as u32 - 1)
    }

    /// Writes one packet (an IP datagram, the concatenation of `parts`) that went `dir`,
    /// seen at `time`.
    ///
    /// Encoded here rather than by pcap-file, which allocates an option list and
    /// serializes every block twice (once to measure it): this runs once per packet.
    /// The bytes are the same (the golden fixture test holds them to it).
    pub fn packet(
        &mut self,
        interface: u32,
        time: Timestamp,
        dir: Dir,
        parts: &[&[u8]],
        comment: Option<&str>,
    ) -> std::io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let inbound = self.inbound.get(interface as usize) == Some(&dir);
        let flags: u32 = if inbound { 0b01 } else { 0b10 };
        let comment = comment.map(|c| truncate(c, MAX_COMMENT).as_bytes());
        let pad = |n: usize| (4 - n % 4) % 4;
        // Options: flags (8 bytes), the comment if any, end of options (4 bytes).
        let comment_len = comment.map_or(0, |c| 4 + c.len() + pad(c.len()));
        let block_len = 12 + 20 + len + pad(len) + 8 + comment_len + 4;
        let ts = time.as_nanos();
        let mut head = [0u8; 28];
        for (i, v) in [6, block_len as u32, interface, (ts >> 32) as u32, ts as u32, len as u32, len as u32]
            .into_iter()
            .enumerate()
        {
            head[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        let w = self.inner.get_mut();
        w.write_all(&head)?;
        for part in parts {
            w.write_all(part)?;
        }
        // What follows the data, in as few writes as it takes (this runs per packet): its
        // padding, the flags option, the comment option if any, the end of options and
        // the block's length again.
        let mut tail = [0u8; 3 + 8 + 4 + 4 + 4];
        let mut n = pad(len);
        tail[n..n + 4].copy_from_slice(&[2, 0, 4, 0]);
        tail[n + 4..n + 8].copy_from_slice(&flags.to_le_bytes());
        n += 8;
        if let Some(comment) = comment {
            tail[n..n + 2].copy_from_slice(&1u16.to_le_bytes());
            tail[n + 2..n + 4].copy_from_slice(&(comment.len() as u16).to_le_bytes());
            w.write_all(&tail[..n + 4])?;
            w.write_all(comment)?;
            n = pad(comment.len());
            tail[..n].fill(0);
        }
        tail[n..n + 4].fill(0);
        tail[n + 4..n + 8].copy_from_slice(&(block_len as u32).to_le_bytes());
        w.write_all(&tail[..n + 8])?;
        Ok(())
    }

    /// Writes an Interface Statistics Block for `interface`: what it saw from `start`
    /// to `end`, `received` and `dropped` packets, and a comment.
    /// Wireshark's Capture File Properties and `capinfos` show them.
    pub fn statistics(&mut self, interface: u32, stats: &InterfaceStats, comment: Option<&str>) -> std::io::Result<()> {
        let pad = |n: usize| (4 - n % 4) % 4;
        let comment = comment.map(|c| truncate(c, MAX_COMMENT).as_bytes());
        let mut opts = Vec::with_capacity(64);
        let mut option = |code: u16, value: &[u8]| {
            opts.extend(code.to_le_bytes());
            opts.extend((value.len() as u16).to_le_bytes());
            opts.extend(value);
            opts.extend(&[0; 3][..pad(value.len())]);
        };
        if let Some(c) = comment {
            option(1, c);
        }
        option(2, &timestamp(stats.start));
        option(3, &timestamp(stats.end));
        option(4, &stats.received.to_le_bytes());
        option(5, &stats.dropped.to_le_bytes());
        option(0, &[]);
        // Type, length, interface, timestamp, options, length again.
        let block_len = 4 + 4 + 4 + 8 + opts.len() + 4;
        let w = self.inner.get_mut();
        for v in [5u32, block_len as u32, interface] {
            w.write_all(&v.to_le_bytes())?;
        }
        w.write_all(&timestamp(stats.end))?;
        w.write_all(&opts)?;
        w.write_all(&(block_len as u32).to_le_bytes())
    }

    /// Writes a Decryption Secrets Block of TLS key log lines (NSS format): Wireshark
    /// decrypts with them the TLS records of the packets that follow it.
    pub fn tls_secrets(&mut self, keylog: &[u8]) -> std::io::Result<()> {
        const TLS_KEY_LOG: u32 = 0x544c_534b;
        let pad = (4 - keylog.len() % 4) % 4;
        // Type, length, secrets type, secrets length, the secrets, no options, length again.
        let block_len = 4 + 4 + 4 + 4 + keylog.len() + pad + 4;
        let w = self.inner.get_mut();
        for v in [0x0Au32, block_len as u32, TLS_KEY_LOG, keylog.len() as u32] {
            w.write_all(&v.to_le_bytes())?;
        }
        w.write_all(keylog)?;
        w.write_all(&[0; 3][..pad])?;
        w.write_all(&(block_len as u32).to_le_bytes())
    }

    /// The output the section is written to.
    pub fn get_mut(&mut self) -> &mut W {
        self.inner.get_mut()
    }

    /// Ends the section (nothing more is written) and hands back the output.
    pub fn into_inner(self) -> W {
        self.inner.into_inner()
    }
}

/// What an interface saw over a section: for its Interface Statistics Block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    /// When it saw its first packet.
    pub start: Timestamp,
    /// When it saw its last packet.
    pub end: Timestamp,
    /// Packets received (written, and dropped).
    pub received: u64,
    /// Packets not captured.
    pub dropped: u64,
}

/// The start of a pcapng file that is whole blocks: what [`whole_blocks`] finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WholeBlocks {
    /// Its length in bytes.
    pub len: u64,
    /// The packets in it.
    pub packets: u64,
}

/// How much of a pcapng file, given block by block through `header(offset)` (the 8 bytes
/// of block type and length at `offset`, or `None` past the end), is whole blocks in
/// wstap's byte order. A file a crash or a full disk cut short is readable up to there.
pub fn whole_blocks(mut header: impl FnMut(u64) -> Option<[u8; 8]>, file_len: u64) -> WholeBlocks {
    const SHB: u32 = 0x0A0D_0D0A;
    const EPB: u32 = 6;
    let (mut at, mut packets) = (0u64, 0u64);
    while let Some(h) = header(at) {
        let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let len = u64::from(u32::from_le_bytes([h[4], h[5], h[6], h[7]]));
        let first_ok = at != 0 || kind == SHB;
        if !first_ok || len < 12 || len % 4 != 0 || at + len > file_len {
            break;
        }
        packets += u64::from(kind == EPB);
        at += len;
    }
    WholeBlocks { len: at, packets }
}

/// A nanosecond timestamp as pcapng writes it: high 32 bits, then low, each little-endian.
fn timestamp(t: Timestamp) -> [u8; 8] {
    let ns = t.as_nanos();
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&((ns >> 32) as u32).to_le_bytes());
    b[4..].copy_from_slice(&(ns as u32).to_le_bytes());
    b
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
    use pcap_file::pcapng::{Block, PcapNgReader};

    #[test]
    fn blocks_read_back_with_their_options() {
        let info = SectionInfo {
            application: "wstap 9.9".into(),
            os: "testos".into(),
            hostname: "h1".into(),
            hardware: "x86_64".into(),
            instance: "eu-1a".into(),
        };
        let mut w = PcapngWriter::new(Vec::new(), &info).unwrap();
        assert_eq!(w.add_interface("client", "client leg", Dir::Up).unwrap(), 0);
        assert_eq!(w.add_interface("upstream", "upstream leg", Dir::Down).unwrap(), 1);
        let long = "é".repeat(40_000);
        w.packet(1, Timestamp::from_nanos(1_700_000_000_123_456_789), Dir::Up, &[&[0x45, 0], &[0, 20]], Some(&long))
            .unwrap();
        let bytes = w.into_inner();

        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let shb = r.section().clone();
        assert!(shb.options.contains(&SectionHeaderOption::UserApplication("wstap 9.9".into())));
        assert!(shb.options.contains(&SectionHeaderOption::OS("testos".into())));
        assert!(shb.options.contains(&SectionHeaderOption::Hardware("x86_64".into())));
        let comment = SectionHeaderOption::Comment("captured by wstap 9.9 on h1, instance eu-1a".into());
        assert!(shb.options.contains(&comment), "{:?}", shb.options);
        let mut blocks = Vec::new();
        while let Some(b) = r.next_block() {
            blocks.push(b.unwrap().into_owned());
        }
        let Block::InterfaceDescription(idb) = &blocks[0] else { panic!("{:?}", blocks[0]) };
        assert_eq!(idb.linktype, DataLink::RAW);
        assert!(idb.options.contains(&InterfaceDescriptionOption::IfTsResol(9)));
        let Block::EnhancedPacket(epb) = &blocks[2] else { panic!("{:?}", blocks[2]) };
        assert_eq!((epb.interface_id, epb.timestamp.as_nanos()), (1, 1_700_000_000_123_456_789));
        assert!(epb.options.contains(&EnhancedPacketOption::Flags(2)));
        let comment = epb.options.iter().find_map(|o| match o {
            EnhancedPacketOption::Comment(c) => Some(c.len()),
            _ => None,
        });
        assert!(comment.unwrap() <= MAX_COMMENT, "long comments are cut to fit the u16 length");
    }

    #[test]
    fn statistics_blocks_read_back() {
        use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption;
        let info = SectionInfo { application: "t".into(), os: "t".into(), hostname: "t".into(), ..Default::default() };
        let mut w = PcapngWriter::new(Vec::new(), &info).unwrap();
        w.add_interface("client", "client leg", Dir::Up).unwrap();
        let stats = InterfaceStats {
            start: Timestamp::from_nanos(1_700_000_000_000_000_005),
            end: Timestamp::from_nanos(1_700_000_001_000_000_007),
            received: 10,
            dropped: 3,
        };
        w.statistics(0, &stats, Some("three lost")).unwrap();
        let bytes = w.into_inner();
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut isb = None;
        while let Some(b) = r.next_block() {
            if let Block::InterfaceStatistics(s) = b.unwrap() {
                isb = Some(s.into_owned());
            }
        }
        let isb = isb.expect("an ISB");
        assert_eq!(isb.interface_id, 0);
        assert!(isb.options.contains(&InterfaceStatisticsOption::IsbIfRecv(10)), "{:?}", isb.options);
        assert!(isb.options.contains(&InterfaceStatisticsOption::IsbIfDrop(3)), "{:?}", isb.options);
        assert!(isb.options.contains(&InterfaceStatisticsOption::Comment("three lost".into())), "{:?}", isb.options);
    }
}
