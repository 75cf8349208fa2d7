//! One leg as the writer keeps it: its synthesized TCP flow, where each end's frames
//! begin and end, the HTTP heads and deflate windows a new file replays, the bytes the
//! capture lost, and the packet comment waiting for its next packet.

use crate::capture::event::LegId;
use crate::dir::{Dir, Leg, PerDir};
use crate::wire::deflate;
use crate::wire::tcp::Flow;
use crate::wire::wsframe::FrameTracker;

/// Most bytes of an HTTP head kept per direction for replay in later files.
const MAX_PRELUDE: usize = 64 * 1024;
/// Recent bytes kept per direction of a leg recorded from its first byte, to find the
/// Upgrade exchange in when a session starts on it.
const RECENT: usize = 128 * 1024;

/// A leg being written.
pub(crate) struct LegState {
    pub(crate) flow: Flow,
    /// Which connection of its session this is.
    pub(crate) leg: Leg,
    /// Comment for the leg's next packet.
    pub(crate) note: Option<String>,
    /// The comment of its first packet, repeated in replays.
    pub(crate) comment: String,
    /// A WebSocket session from its first byte (an Upgrade exchange): replayed with its
    /// heads, and rotation waits for its frame boundaries.
    pub(crate) session: bool,
    /// Each direction's HTTP head (the request `Up`, the response `Down`), for replays.
    pub(crate) prelude: PerDir<Vec<u8>>,
    /// Frame boundaries of each direction's stream.
    pub(crate) frames: PerDir<FrameTracker>,
    /// Each direction's permessage-deflate context, when it is kept across messages.
    pub(crate) deflate: PerDir<Option<deflate::Context>>,
    /// Before a session starts on a leg recorded from its first byte: each direction's
    /// recent bytes and the stream offset of the first of them.
    pub(crate) recent: PerDir<(u64, Vec<u8>)>,
    /// Bytes not captured, per direction.
    pub(crate) lost: PerDir<u64>,
    /// The leg is finished (both FINs, or a reset): its last packet waits for the Close,
    /// which follows within microseconds, to carry the close comment.
    pub(crate) last: Option<Pending>,
    /// The direction of the pure ACK owed for data received (`capture.acks`). Like a real
    /// stack's delayed ACK, it rides on its sender's own next data or FIN when that comes
    /// first; it is written before anything else the leg does, and when the writer has
    /// caught up with its queue ([`crate::capture::writer::CaptureWriter::idle`]).
    pub(crate) ack_due: Option<Dir>,
}

impl LegState {
    /// A leg whose capture starts now, with its flow and the comment for its first packet.
    pub(crate) fn new(leg: Leg, flow: Flow, comment: String, session: bool) -> LegState {
        LegState {
            flow,
            leg,
            note: Some(comment.clone()),
            comment,
            session,
            prelude: PerDir::default(),
            frames: PerDir::default(),
            deflate: PerDir::default(),
            recent: PerDir::default(),
            lost: PerDir::default(),
            last: None,
            ack_due: None,
        }
    }

    /// Brings the stream going `dir` up to `offset`: bytes between were lost, which the
    /// next packet's sequence number (and comment) will show. Returns how many.
    pub(crate) fn catch_up(&mut self, dir: Dir, offset: u64) -> u64 {
        let lost = self.skip_to(dir, offset);
        if lost > 0 {
            let note = format!("capture gap: {lost} bytes of this stream were not captured (capture queue full)");
            add_note(&mut self.note, note);
        }
        lost
    }

    /// The stream going `dir` lost everything up to `until`, where a frame begins (the
    /// tap saw to that): the frames after it decode. Returns the bytes lost.
    pub(crate) fn gap(&mut self, dir: Dir, until: u64, frames: u64, compressed: bool) -> u64 {
        let lost = self.skip_to(dir, until);
        if lost == 0 {
            return 0;
        }
        let s = if frames == 1 { "" } else { "s" };
        let note = format!(
            "capture gap: {lost} bytes ({frames} WebSocket frame{s}) of this stream were not captured \
             (capture queue full); capture resumes at a frame boundary"
        );
        add_note(&mut self.note, note);
        if self.session && self.frames[dir].in_frames() {
            self.frames[dir] = FrameTracker::between_frames();
        }
        if compressed {
            if let Some(ctx) = &mut self.deflate[dir] {
                ctx.lose_window();
            }
        }
        lost
    }

    /// Moves the stream going `dir` on to `offset` without writing the bytes between.
    fn skip_to(&mut self, dir: Dir, offset: u64) -> u64 {
        let lost = offset.saturating_sub(self.flow.sent(dir));
        self.flow.skip(dir, lost);
        self.lost[dir] += lost;
        lost
    }

    /// Between frames in both directions (always, for a leg that is not a session).
    pub(crate) fn at_boundary(&self) -> bool {
        !self.session || self.frames.iter().all(|(_, f)| f.at_boundary())
    }

    /// Keeps the recent bytes of a leg that is not (yet) a session.
    pub(crate) fn remember(&mut self, dir: Dir, bytes: &[u8]) {
        let (start, buf) = &mut self.recent[dir];
        buf.extend_from_slice(bytes);
        if buf.len() > 2 * RECENT {
            let cut = buf.len() - RECENT;
            buf.drain(..cut);
            *start += cut as u64;
        }
    }

    /// A session starts on this leg at stream offsets `at` (`None`: the last line starting
    /// with `request_line`): follow both directions from there as a session.
    pub(crate) fn begin_session(&mut self, request_line: &[u8], at: PerDir<Option<u64>>) {
        self.session = true;
        let recent = std::mem::take(&mut self.recent);
        // What wstap read first, then what it wrote.
        for dir in [self.leg.inbound(), self.leg.inbound().reverse()] {
            let (start, buf) = &recent[dir];
            let from = match at[dir] {
                Some(off) => off.saturating_sub(*start) as usize,
                None => (0..buf.len().saturating_sub(request_line.len()))
                    .rev()
                    .find(|&i| buf[i..].starts_with(request_line) && (i == 0 || buf[i - 1] == b'\n'))
                    .unwrap_or(0),
            };
            self.track(dir, &buf[from.min(buf.len())..]);
        }
    }

    /// Follows the stream going `dir`: its HTTP head (kept for replays), then frame
    /// boundaries, and the deflate context where one is kept across messages.
    pub(crate) fn track(&mut self, dir: Dir, mut bytes: &[u8]) {
        if !self.frames[dir].in_frames() {
            let head = self.frames[dir].advance(bytes, true, |_| {});
            let room = MAX_PRELUDE.saturating_sub(self.prelude[dir].len()).min(head);
            self.prelude[dir].extend_from_slice(&bytes[..room]);
            bytes = &bytes[head..];
            // The 101 says whether (and which way) permessage-deflate keeps its context.
            if dir == Dir::Down && self.frames[dir].in_frames() {
                if let Some(keep) = deflate::takeover(&self.prelude[dir]) {
                    self.deflate = keep.map(|_, keep| keep.then(deflate::Context::new));
                }
            }
        }
        match &mut self.deflate[dir] {
            Some(ctx) => self.frames[dir].advance_with_payload(bytes, &mut |h, p, end| ctx.feed(h, p, end)),
            None => self.frames[dir].advance(bytes, false, |_| {}),
        };
    }

    /// What a new file replays for this leg: each direction's HTTP head, then (after the
    /// 101, where Wireshark decodes frames) a message restoring each kept deflate context.
    pub(crate) fn replay_parts(&self) -> Vec<(Dir, Vec<u8>)> {
        let mut parts: Vec<(Dir, Vec<u8>)> = self.prelude.iter().map(|(dir, head)| (dir, head.clone())).collect();
        for (dir, ctx) in self.deflate.iter() {
            // A client's frames are masked.
            if let Some(frame) = ctx.as_ref().and_then(|c| c.priming_frame(dir == Dir::Up)) {
                parts.push((dir, frame));
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
    /// The direction the packet goes.
    pub(crate) dir: Dir,
    pub(crate) kind: Final,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Final {
    Ack,
    Rst,
}
