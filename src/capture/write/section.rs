//! The pcapng section a writer writes into: its header, an interface per captured leg,
//! each packet with its comment, Decryption Secrets Blocks, and at its end the
//! statistics of each interface. While no output can be written (a write-error
//! episode) packets are only counted, so that every flow stays in step and the next
//! section can say how much went unwritten.

use std::io::{self, Write};
use std::sync::atomic::Ordering::Relaxed;

use wstap_wire::pcapng::{PcapngWriter, SectionInfo};
use wstap_wire::tcp::{Flow, Packet};
use wstap_wire::{Dir, Leg, PerLeg, Timestamp};

use super::statistics::{self, Counts};
use crate::capture::stats::Stats;
use crate::config::Legs;

/// The section being written, or none.
pub(super) struct Section<W: Write> {
    out: Option<PcapngWriter<W>>,
    /// Each captured leg's interface.
    interfaces: PerLeg<Option<u32>>,
    /// What each interface saw.
    counts: PerLeg<Counts>,
    /// Packet bytes not written since the last section began without output.
    unwritten: u64,
}

/// The comments a batch of packets carries: one for the first packet, one for each.
#[derive(Debug, Default)]
pub(super) struct Comments<'a> {
    /// For the first packet only (the leg's notes).
    pub(super) first: Option<String>,
    /// For every packet (what a repeated leg's packets say).
    pub(super) each: Option<&'a str>,
}

impl<W: Write> Section<W> {
    /// No section: what a writer has before its first output.
    pub(super) fn none() -> Section<W> {
        Section { out: None, interfaces: PerLeg::default(), counts: PerLeg::default(), unwritten: 0 }
    }

    /// Begins a section in `w`: its header and an interface for each of `legs`. What went
    /// unwritten before is carried over, to be said by the legs it repeats.
    pub(super) fn begin(&mut self, w: W, info: &SectionInfo, legs: Legs) -> io::Result<()> {
        let mut out = PcapngWriter::new(w, info).map_err(io::Error::other)?;
        self.interfaces = PerLeg::default();
        self.counts = PerLeg::default();
        for (leg, description) in [(Leg::Client, "client <-> wstap listener"), (Leg::Upstream, "wstap <-> upstream")] {
            if legs.has(leg) {
                let id = out.add_interface(leg.name(), description, leg.inbound()).map_err(io::Error::other)?;
                self.interfaces[leg] = Some(id);
            }
        }
        self.out = Some(out);
        Ok(())
    }

    /// Ends the section: each interface's statistics, and the output handed back.
    pub(super) fn end(&mut self, now: Timestamp) -> io::Result<Option<W>> {
        let Some(out) = self.out.as_mut() else { return Ok(None) };
        statistics::write(out, &self.interfaces, &self.counts, now)?;
        Ok(self.out.take().map(PcapngWriter::into_inner))
    }

    /// Gives up the output (it failed): packets are counted, not written, from here on.
    pub(super) fn abandon(&mut self) -> Option<W> {
        self.out.take().map(PcapngWriter::into_inner)
    }

    /// The output, if there is one.
    pub(super) fn output(&mut self) -> Option<&mut W> {
        self.out.as_mut().map(PcapngWriter::get_mut)
    }

    /// Bytes that could not be written since the last time this was asked.
    pub(super) fn take_unwritten(&mut self) -> u64 {
        std::mem::take(&mut self.unwritten)
    }

    /// What `leg`'s interface saw.
    pub(super) fn counts(&mut self, leg: Leg) -> &mut Counts {
        &mut self.counts[leg]
    }

    /// Writes `keys` (NSS key log lines) in a Decryption Secrets Block, if `leg` has an
    /// interface here: before the first packet they decrypt.
    pub(super) fn secrets(&mut self, leg: Leg, keys: &str) -> io::Result<()> {
        match self.out.as_mut() {
            // (No interface: a reload took the leg's out of the files; nothing to decrypt.)
            Some(out) if !keys.is_empty() && self.interfaces[leg].is_some() => out.tls_secrets(keys.as_bytes()),
            _ => Ok(()),
        }
    }

    /// Writes the packets `make` makes on `flow` (a leg of kind `leg`) at `time`, with
    /// `comments`; returns whether the first comment was written (else it waits).
    pub(super) fn write(
        &mut self,
        leg: Leg,
        flow: &mut Flow,
        time: Timestamp,
        comments: Comments<'_>,
        make: impl FnOnce(&mut Flow, &mut dyn FnMut(Dir, Packet<'_>)),
        stats: &Stats,
    ) -> io::Result<bool> {
        let Some(out) = self.out.as_mut() else {
            // No output: the flow still moves on, so the next section starts in step.
            let mut dropped = 0;
            make(flow, &mut |_, packet| dropped += packet.size() as u64);
            self.unwritten += dropped;
            stats.bytes_unwritten.fetch_add(dropped, Relaxed);
            return Ok(false);
        };
        let Some(interface) = self.interfaces[leg] else { return Ok(false) };
        let count = &mut self.counts[leg];
        let Comments { mut first, each } = comments;
        let (mut result, mut written) = (Ok(()), 0);
        make(flow, &mut |dir, packet| {
            if result.is_err() {
                return;
            }
            let comment = match (first.take(), each) {
                (Some(n), Some(e)) => Some(format!("{e}; {n}")),
                (n, e) => n.or(e.map(str::to_owned)),
            };
            result = out.packet(interface, time, dir, &[packet.headers, packet.payload], comment.as_deref());
            count.packet(time);
            written += 1;
        });
        stats.packets_written.fetch_add(written, Relaxed);
        result.map(|()| true)
    }
}
