//! What each interface of a section saw, for the Interface Statistics Block that ends
//! it: its first and last packet, the packets written, and what the capture lost (in
//! packets the lost bytes would have made, in bytes, and in WebSocket frames).
//! Wireshark's Capture File Properties and `capinfos` show them.

use std::io::{self, Write};

use wstap_wire::pcapng::{InterfaceStats, PcapngWriter};
use wstap_wire::{PerLeg, Timestamp};

use crate::capture::note::{comment, Note};

/// What one interface saw in the current section.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counts {
    /// The time of its first packet, and of its last.
    first: Option<Timestamp>,
    last: Timestamp,
    packets: u64,
    /// Packets the lost bytes would have made, and the bytes.
    dropped: u64,
    lost_bytes: u64,
    /// WebSocket frames lost, whole or in part, when the tap could tell.
    lost_frames: u64,
}

impl Counts {
    /// A packet was written at `time`.
    pub(super) fn packet(&mut self, time: Timestamp) {
        self.first.get_or_insert(time);
        self.last = time;
        self.packets += 1;
    }

    /// `bytes` were lost, in segments of up to `segment` bytes.
    pub(super) fn lost(&mut self, bytes: u64, segment: usize) {
        self.lost_bytes += bytes;
        self.dropped += bytes.div_ceil(segment.max(1) as u64);
    }

    /// `frames` WebSocket frames were lost, whole or in part.
    pub(super) fn lost_frames(&mut self, frames: u64) {
        self.lost_frames += frames;
    }
}

/// Writes one statistics block per interface (`interfaces`, with each one's counts);
/// `now` stands for the times of an interface that saw nothing.
pub(super) fn write<W: Write>(
    out: &mut PcapngWriter<W>,
    interfaces: &PerLeg<Option<u32>>,
    counts: &PerLeg<Counts>,
    now: Timestamp,
) -> io::Result<()> {
    for (leg, interface) in interfaces.iter() {
        let Some(interface) = interface else { continue };
        let c = counts[leg];
        let first = c.first.unwrap_or(now);
        let stats = InterfaceStats {
            start: first,
            end: c.last.max(first),
            received: c.packets + c.dropped,
            dropped: c.dropped,
        };
        let loss = (c.lost_bytes > 0).then_some(Note::SectionLoss { bytes: c.lost_bytes, frames: c.lost_frames });
        out.statistics(*interface, &stats, comment(loss.as_slice()).as_deref())?;
    }
    Ok(())
}
