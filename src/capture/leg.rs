//! One leg as the writer keeps it: its synthesized TCP flow, where each end's frames
//! begin and end, the HTTP heads and deflate windows a new file replays, the bytes the
//! capture lost, and the packet comment waiting for its next packet.

use crate::capture::event::{Dir, LegId};
use crate::wire::deflate;
use crate::wire::tcp::{End, Flow};
use crate::wire::wsframe::FrameTracker;

/// Most bytes of an HTTP head kept per direction for replay in later files.
const MAX_PRELUDE: usize = 64 * 1024;
/// Recent bytes kept per direction of a leg recorded from its first byte, to find the
/// Upgrade exchange in when a session starts on it.
const RECENT: usize = 128 * 1024;

/// A leg being written.
pub(crate) struct LegState {
    pub(crate) flow: Flow,
    /// Which packet end wstap is (the other is the remote).
    pub(crate) local: End,
    pub(crate) interface: u32,
    /// Comment for the leg's next packet.
    pub(crate) note: Option<String>,
    pub(crate) name: &'static str,
    /// The comment of its first packet, repeated in replays.
    pub(crate) comment: String,
    /// A WebSocket session from its first byte (an Upgrade exchange): replayed with its
    /// heads, and rotation waits for its frame boundaries.
    pub(crate) session: bool,
    /// Each end's HTTP head (A's request, B's response), for replays.
    pub(crate) prelude: [Vec<u8>; 2],
    /// Frame boundaries of each end's stream.
    pub(crate) frames: [FrameTracker; 2],
    /// Each end's permessage-deflate context, when it is kept across messages.
    pub(crate) deflate: [Option<deflate::Context>; 2],
    /// Before a session starts on a leg recorded from its first byte: each end's recent
    /// bytes and the stream offset of the first of them.
    pub(crate) recent: [(u64, Vec<u8>); 2],
    /// Bytes not captured, per end.
    pub(crate) lost: [u64; 2],
    /// The leg is finished (both FINs, or a reset): its last packet waits for the Close,
    /// which follows within microseconds, to carry the close comment.
    pub(crate) last: Option<Pending>,
    /// The end that owes a pure ACK for data it received (`capture.acks`). Like a real
    /// stack's delayed ACK, it rides on that end's own next data or FIN when that comes
    /// first; it is written before anything else the leg does, and when the writer has
    /// caught up with its queue ([`CaptureWriter::idle`]).
    pub(crate) ack_due: Option<End>,
}

impl LegState {
    pub(crate) fn end_of(&self, dir: Dir) -> End {
        match dir {
            Dir::In => self.local.peer(),
            Dir::Out => self.local,
        }
    }

    /// Brings `from`'s stream up to `offset`: bytes between were lost, which the next
    /// packet's sequence number (and comment) will show.
    pub(crate) fn catch_up(&mut self, from: End, offset: u64) {
        let sent = self.flow.sent(from);
        if offset > sent {
            let lost = offset - sent;
            self.flow.skip(from, lost);
            self.lost[from as usize] += lost;
            add_note(
                &mut self.note,
                format!("capture gap: {lost} bytes of this stream were not captured (capture queue full)"),
            );
        }
    }

    pub(crate) fn at_boundary(&self) -> bool {
        !self.session || self.frames.iter().all(FrameTracker::at_boundary)
    }

    /// Keeps the recent bytes of a leg that is not (yet) a session.
    pub(crate) fn remember(&mut self, from: End, bytes: &[u8]) {
        let (start, buf) = &mut self.recent[from as usize];
        buf.extend_from_slice(bytes);
        if buf.len() > 2 * RECENT {
            let cut = buf.len() - RECENT;
            buf.drain(..cut);
            *start += cut as u64;
        }
    }

    /// A session starts on this leg at `at` (`In`, `Out` stream offsets; `None`: the last
    /// line starting with `request_line`): follow both ends from there as a session.
    pub(crate) fn begin_session(&mut self, request_line: &[u8], at: [Option<u64>; 2]) {
        self.session = true;
        let recent = std::mem::take(&mut self.recent);
        for (dir_at, dir) in at.into_iter().zip([Dir::In, Dir::Out]) {
            let end = self.end_of(dir);
            let (start, buf) = &recent[end as usize];
            let from = match dir_at {
                Some(off) => off.saturating_sub(*start) as usize,
                None => (0..buf.len().saturating_sub(request_line.len()))
                    .rev()
                    .find(|&i| buf[i..].starts_with(request_line) && (i == 0 || buf[i - 1] == b'\n'))
                    .unwrap_or(0),
            };
            self.track(end, &buf[from.min(buf.len())..]);
        }
    }

    /// Follows `from`'s stream: its HTTP head (kept for replays), then frame boundaries,
    /// and the deflate context where one is kept across messages.
    pub(crate) fn track(&mut self, from: End, mut bytes: &[u8]) {
        let i = from as usize;
        if !self.frames[i].in_frames() {
            let head = self.frames[i].advance(bytes, true, |_| {});
            let room = MAX_PRELUDE.saturating_sub(self.prelude[i].len()).min(head);
            self.prelude[i].extend_from_slice(&bytes[..room]);
            bytes = &bytes[head..];
            // The 101 says whether (and which way) permessage-deflate keeps its context.
            if from == End::B && self.frames[i].in_frames() {
                if let Some(keep) = deflate::takeover(&self.prelude[i]) {
                    for end in [End::A, End::B] {
                        self.deflate[end as usize] = keep[end as usize].then(deflate::Context::new);
                    }
                }
            }
        }
        match &mut self.deflate[i] {
            Some(ctx) => self.frames[i].advance_with_payload(bytes, &mut |h, p, end| ctx.feed(h, p, end)),
            None => self.frames[i].advance(bytes, false, |_| {}),
        };
    }

    /// What a new file replays for this leg: each end's HTTP head, then (after the 101,
    /// where Wireshark decodes frames) a message restoring each kept deflate context.
    pub(crate) fn replay_parts(&self) -> Vec<(End, Vec<u8>)> {
        let mut parts = vec![(End::A, self.prelude[0].clone()), (End::B, self.prelude[1].clone())];
        for end in [End::A, End::B] {
            if let Some(frame) = self.deflate[end as usize].as_ref().and_then(|c| c.priming_frame(end == End::A)) {
                parts.push((end, frame));
            }
        }
        parts
    }
}

pub(crate) fn add_note(note: &mut Option<String>, text: String) {
    match note {
        Some(n) => {
            n.push_str("; ");
            n.push_str(&text);
        }
        None => *note = Some(text),
    }
}

/// A packet held back until the next event, so that the leg's Close can put its comment
/// on it (every leg's last packet then carries how it ended).
pub(crate) struct Pending {
    pub(crate) leg: LegId,
    pub(crate) time: u64,
    pub(crate) from: End,
    pub(crate) kind: Final,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Final {
    Ack,
    Rst,
}
