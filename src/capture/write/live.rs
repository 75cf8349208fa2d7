//! The live stream's writer (`[live]`), on the capture writer thread: a writer of its
//! own, fed every event the files get (so a subscriber sees what the files would, no
//! more), whose packets go to every subscriber. A subscriber that joins mid-run first gets
//! a section of its own ([`CaptureWriter::snapshot`]): the section header, the
//! interfaces, and each live leg as a new file would repeat it (handshake, Upgrade
//! exchange, deflate windows, TLS records with their keys), made where every session is
//! between frames, so every message after it decodes. For `format = "pcap"` the stream
//! is classic pcap of Ethernet frames instead.

use std::sync::Arc;
use wstap_wire::repeat::{MAC_PEER, MAC_PEER_REPEATED, MAC_WSTAP, MAC_WSTAP_REPEATED};

use bytes::Bytes;
use wstap_wire::Timestamp;

use super::writer::{Budgets, CaptureWriter, Processed, Synthesis};
use crate::capture::event::Event;
use crate::capture::live::{Hub, Subscriber};
use crate::capture::stats::Stats;
use crate::config::{CaptureSettings, Legs, LiveFormat};

/// The live writer and the joined subscribers.
pub(crate) struct LiveWriter {
    writer: CaptureWriter<Vec<u8>>,
    format: LiveFormat,
    hub: Arc<Hub>,
    joined: Vec<Arc<Subscriber>>,
    /// The live writer's own counts (the files' are the capture's).
    stats: Stats,
    /// Its inflate allowance and record budget, kept across reloads.
    budgets: Budgets,
    /// Seed of its ISNs.
    seed: u64,
}

impl LiveWriter {
    /// A live writer for `hub`'s subscribers, writing as `settings` and `format` say, with
    /// ISNs from `seed`.
    pub(crate) fn new(settings: &CaptureSettings, seed: u64, format: LiveFormat, hub: Arc<Hub>) -> LiveWriter {
        let budgets = Budgets::default();
        let synth = Synthesis::new(settings, seed, budgets.clone());
        // Both interfaces always, so that their ids never change under a subscriber (the
        // taps send only the legs the config records).
        let mut writer =
            CaptureWriter::detached(&crate::capture::host::section_info(&settings.instance), BOTH_LEGS, synth);
        let _ = writer.rotate(Vec::new(), &Stats::default());
        // Its own section is nobody's: each subscriber gets one of its own.
        if let Some(out) = writer.get_mut() {
            out.clear();
        }
        LiveWriter { writer, format, hub, joined: Vec::new(), stats: Stats::default(), budgets, seed }
    }

    /// New settings (a reload): legs opened from now on are written by them. Subscribers
    /// of another format are let go (their stream would no longer parse).
    pub(crate) fn reconfigure(&mut self, settings: &CaptureSettings, format: LiveFormat) {
        self.writer.reconfigure(BOTH_LEGS, Synthesis::new(settings, self.seed, self.budgets.clone()));
        if format != self.format {
            self.joined.drain(..).for_each(|s| s.close());
            self.hub.take_joiners().iter().for_each(|s| s.close());
        }
        self.format = format;
    }

    /// Writes `ev` for the subscribers.
    pub(crate) fn process(&mut self, ev: &Event) {
        if self.hub.has_joiners() {
            self.writer.rotation_due(ev.time);
        }
        let mut next = Some(ev.clone());
        while let Some(ev) = next.take() {
            match self.writer.process(ev, &self.stats) {
                Ok(Processed::Done) | Err(_) => {}
                Ok(Processed::RotateFirst { then }) => {
                    self.send();
                    self.admit();
                    next = then;
                }
            }
        }
        // A long batch goes out in pieces: no one chunk near a subscriber's bound.
        if self.writer.get_mut().is_some_and(|out| out.len() >= SEND_AT) {
            self.send();
        }
    }

    /// Called after each batch of events, and at least every flush interval: sends what
    /// the batch made (one chunk per batch, not per event: fewer wake-ups and writes for
    /// each subscriber), admits subscribers waiting when nothing happens, and writes the
    /// ACKs owed.
    pub(crate) fn tick(&mut self, now: Timestamp) {
        if self.hub.has_joiners() {
            self.writer.rotation_due(now);
            if self.writer.ready_to_rotate(now) || self.writer.live() == 0 {
                self.send();
                self.admit();
            }
        }
        let _ = self.writer.idle(&self.stats);
        self.send();
    }

    /// Gives each subscriber waiting to join its section: headers and the live legs.
    fn admit(&mut self) {
        let joining = self.hub.take_joiners();
        if joining.is_empty() {
            self.writer.rotation_done();
            return;
        }
        // ACKs owed go to those already watching, not after the new ones' repeats.
        let _ = self.writer.idle(&self.stats);
        self.send();
        let snapshot = self.writer.snapshot(&self.stats).unwrap_or_default();
        let section = Bytes::from(match self.format {
            LiveFormat::Pcapng => snapshot,
            LiveFormat::Pcap => {
                let mut out = pcap_header().to_vec();
                to_pcap(&snapshot, &mut out);
                out
            }
        });
        for sub in joining.into_iter().filter(|sub| sub.push(section.clone())) {
            self.joined.push(sub);
        }
    }

    /// Sends what the live writer wrote since the last time to every joined subscriber.
    fn send(&mut self) {
        let Some(out) = self.writer.get_mut() else { return };
        if out.is_empty() {
            return;
        }
        let bytes = match self.format {
            LiveFormat::Pcapng => Bytes::from(std::mem::take(out)),
            LiveFormat::Pcap => {
                let mut records = Vec::with_capacity(out.len() + out.len() / 8);
                to_pcap(out, &mut records);
                out.clear();
                Bytes::from(records)
            }
        };
        // A subscriber cut off or gone is forgotten (its task counts it out).
        self.joined.retain(|sub| sub.push(bytes.clone()));
    }
}

/// What the live writer holds before it sends within a batch.
const SEND_AT: usize = 256 * 1024;

const BOTH_LEGS: Legs = Legs { client: true, upstream: true };

/// Classic pcap's file header: microsecond timestamps, Ethernet, 256 KiB snap length.
fn pcap_header() -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    h[16..20].copy_from_slice(&262_144u32.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h
}

/// The packets (EPBs) of `blocks`, pcapng as the writer writes it (little-endian), as
/// classic pcap records of Ethernet II frames; other blocks have no classic form.
fn to_pcap(blocks: &[u8], out: &mut Vec<u8>) {
    let u32_at = |b: &[u8], at: usize| b.get(at..at + 4).map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")));
    let mut at = 0;
    while let (Some(kind), Some(len)) = (u32_at(blocks, at), u32_at(blocks, at + 4)) {
        let len = len as usize;
        let Some(block) = blocks.get(at..at + len).filter(|_| len >= 12) else { return };
        at += len;
        if kind != 6 {
            continue;
        }
        let body = &block[8..len - 4];
        let (Some(hi), Some(lo), Some(caplen)) = (u32_at(body, 4), u32_at(body, 8), u32_at(body, 12)) else { continue };
        let caplen = caplen as usize;
        let Some(data) = body.get(20..20 + caplen) else { continue };
        let ts = (u64::from(hi) << 32) | u64::from(lo);
        let (flags, repeated) = epb_options(body.get(20 + caplen.next_multiple_of(4)..).unwrap_or_default());
        // Classic pcap has no comments: a repeated packet says so by its addresses.
        let (wstap, peer) = match repeated {
            true => (MAC_WSTAP_REPEATED, MAC_PEER_REPEATED),
            false => (MAC_WSTAP, MAC_PEER),
        };
        let (src, dst) = if flags & 0b11 == 0b01 { (peer, wstap) } else { (wstap, peer) };
        let ethertype: u16 = if data.first().is_some_and(|b| b >> 4 == 6) { 0x86dd } else { 0x0800 };
        let frame_len = (14 + caplen) as u32;
        for v in [(ts / 1_000_000_000) as u32, (ts % 1_000_000_000 / 1000) as u32, frame_len, frame_len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&dst);
        out.extend_from_slice(&src);
        out.extend_from_slice(&ethertype.to_be_bytes());
        out.extend_from_slice(data);
    }
}

/// The `epb_flags` option's value among an EPB's options (or 0), and whether its
/// comment marks it as repeated.
fn epb_options(mut options: &[u8]) -> (u32, bool) {
    let (mut flags, mut repeated) = (0, false);
    while options.len() >= 4 {
        let code = u16::from_le_bytes([options[0], options[1]]);
        let len = usize::from(u16::from_le_bytes([options[2], options[3]]));
        let Some(value) = options.get(4..4 + len) else { break };
        match code {
            0 => break,
            1 => repeated |= std::str::from_utf8(value).is_ok_and(wstap_wire::repeat::is_repeat),
            2 if len == 4 => flags = u32::from_le_bytes(value.try_into().expect("4 bytes")),
            _ => {}
        }
        options = &options[(4 + len.next_multiple_of(4)).min(options.len())..];
    }
    (flags, repeated)
}
