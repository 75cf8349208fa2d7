//! One leg as the writer keeps it: its synthesized TCP flow, what it makes of each
//! direction's bytes (the [`Rewriter`]: masked heads, frames cut to the policy, the heads
//! and deflate windows a new file replays), how far each real stream has got, the bytes
//! the capture lost, and the packet comment waiting for its next packet.

use crate::capture::encrypted::Encrypted;
use crate::capture::event::LegId;
use crate::capture::rewrite::{Rewriter, Rules};
use wstap_wire::dir::{Dir, Leg, PerDir};
use wstap_wire::tcp::Flow;

/// A leg being written.
pub(crate) struct LegState {
    pub(crate) flow: Flow,
    /// Which connection of its session this is.
    pub(crate) leg: Leg,
    /// Comment for the leg's next packet.
    pub(crate) note: Option<String>,
    /// The comment of its first packet, repeated in replays.
    pub(crate) comment: String,
    /// A WebSocket session (an Upgrade exchange): replayed with its heads, and rotation
    /// waits for its frame boundaries.
    pub(crate) session: bool,
    /// What is written of each direction's bytes.
    pub(crate) rewrite: Rewriter,
    /// How far each direction's real stream has got: bytes written, cut by the rules,
    /// and lost. The written stream (the flow) may be shorter.
    pub(crate) real: PerDir<u64>,
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
    /// The leg's bytes are TLS records, written as they crossed, with the keys.
    pub(crate) encrypted: Option<Encrypted>,
}

impl LegState {
    /// A leg whose capture starts now, with its flow, the comment for its first packet,
    /// and the rules its bytes are written by. A session's capture starts at its Upgrade
    /// request; any other leg's at the connection's first byte (its HTTP is followed).
    pub(crate) fn new(leg: Leg, flow: Flow, comment: String, session: bool, rules: Rules) -> LegState {
        LegState {
            flow,
            leg,
            note: Some(comment.clone()),
            comment,
            session,
            rewrite: Rewriter::new(rules, !session),
            real: PerDir::default(),
            lost: PerDir::default(),
            last: None,
            ack_due: None,
            encrypted: None,
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
    /// tap saw to that, and the rewriter knows): the frames after it decode. Returns the
    /// bytes lost.
    pub(crate) fn gap(&mut self, dir: Dir, until: u64, frames: u64) -> u64 {
        let lost = self.skip_to(dir, until);
        if lost > 0 {
            let s = if frames == 1 { "" } else { "s" };
            let note = format!(
                "capture gap: {lost} bytes ({frames} WebSocket frame{s}) of this stream were not captured \
                 (capture queue full); capture resumes at a frame boundary"
            );
            add_note(&mut self.note, note);
        }
        lost
    }

    /// Moves the stream going `dir` on to `offset` without writing the bytes between.
    fn skip_to(&mut self, dir: Dir, offset: u64) -> u64 {
        let lost = offset.saturating_sub(self.real[dir]);
        self.flow.skip(dir, lost);
        self.real[dir] += lost;
        self.lost[dir] += lost;
        lost
    }

    /// Between frames in both directions (always, for a leg that is not a session).
    pub(crate) fn at_boundary(&self) -> bool {
        !self.session || self.rewrite.at_boundary()
    }

    /// A session starts on a leg recorded from its first byte: from here on, rotation
    /// waits for its frame boundaries and new files replay its Upgrade exchange (the
    /// rewriter has followed its HTTP all along, and kept the heads).
    pub(crate) fn begin_session(&mut self, rules: Rules) {
        self.session = true;
        self.rewrite.set_rules(rules);
    }

    /// What a new file (or, not `new_file`, a live subscriber) replays for this leg: a
    /// session's heads and deflate windows; nothing but the handshake for a connection
    /// without one.
    pub(crate) fn replay_parts(&mut self, new_file: bool) -> Vec<(Dir, Vec<u8>)> {
        if self.session {
            self.rewrite.replay_parts(new_file)
        } else {
            Vec::new()
        }
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
