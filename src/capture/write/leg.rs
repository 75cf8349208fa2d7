//! One leg as the writer keeps it: its synthesized TCP flow, what it makes of each
//! direction's bytes (its [`Rewriter`]: redacted heads, frames cut to the policy, the
//! heads and deflate windows a new file repeats), how far each real stream has got, the
//! bytes the capture lost, and the notes waiting for its next packet.

use wstap_wire::tcp::Flow;
use wstap_wire::{Dir, Leg, PerDir, Timestamp};

use crate::capture::ids::LegId;

use super::encrypted::Encrypted;
use super::rewrite::{HeadsAndPrimers, Rewriter, Rules};
use crate::capture::event::Scope;
use crate::capture::note::{comment, Audience, Note};

/// A leg being written.
pub(super) struct LegState {
    pub(super) flow: Flow,
    /// Which connection of its session this is.
    pub(super) which: Leg,
    /// Notes for the leg's next packet.
    notes: Vec<Note>,
    /// What the leg is (its first packet's comment), repeated by new sections.
    pub(super) heading: String,
    /// What its capture covers: a session is repeated with its heads, and rotation
    /// waits for its frame boundaries.
    pub(super) scope: Scope,
    /// What is written of each direction's bytes.
    pub(super) rewrite: Rewriter,
    /// How far each direction's real stream has got: bytes written, cut by the rules,
    /// and lost. The written stream (the flow) may be shorter.
    pub(super) real: PerDir<u64>,
    /// Bytes not captured, per direction.
    pub(super) lost: PerDir<u64>,
    /// The leg is finished (both FINs, or a reset): its last packet waits for the Close,
    /// which follows within microseconds, to carry the close comment.
    pub(super) last: Option<Final>,
    /// The direction of the pure ACK owed for data received (`capture.acks`): see
    /// [`super::acks`].
    pub(super) ack_due: Option<Dir>,
    /// The leg's bytes are TLS records, written as they crossed, with the keys.
    pub(super) encrypted: Option<Encrypted>,
}

impl LegState {
    /// A leg whose capture starts now, with its flow, its heading (its first packet's
    /// comment, which a new section's repeat quotes), what the capture covers, and the rules its bytes are written by.
    pub(super) fn new(which: Leg, flow: Flow, heading: String, scope: Scope, rules: Rules) -> LegState {
        LegState {
            flow,
            which,
            notes: vec![Note::Heading(heading.clone())],
            heading,
            scope,
            rewrite: Rewriter::new(rules, scope),
            real: PerDir::default(),
            lost: PerDir::default(),
            last: None,
            ack_due: None,
            encrypted: None,
        }
    }

    /// A note for the leg's next packet.
    pub(super) fn note(&mut self, note: Note) {
        self.notes.push(note);
    }

    /// The comment for the leg's next packet, if it has notes (they stay until
    /// [`LegState::noted`]).
    pub(super) fn comment(&self) -> Option<String> {
        comment(&self.notes)
    }

    /// The notes were written.
    pub(super) fn noted(&mut self) {
        self.notes.clear();
    }

    /// The notes waiting, taken aside (a live subscriber's section is written meanwhile).
    pub(super) fn set_notes_aside(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    /// The notes set aside, waiting again.
    pub(super) fn put_notes_back(&mut self, notes: Vec<Note>) {
        self.notes = notes;
    }

    /// Brings the stream going `dir` up to `offset`: bytes between were lost, which the
    /// next packet's sequence number (and comment) will show. Returns how many.
    pub(super) fn catch_up(&mut self, dir: Dir, offset: u64) -> u64 {
        let lost = self.skip_to(dir, offset);
        if lost > 0 {
            self.note(Note::QueueLoss { bytes: lost });
        }
        lost
    }

    /// The stream going `dir` lost everything up to `until`, where a frame begins (the
    /// tap saw to that, and the rewriter knows): the frames after it decode. Returns the
    /// bytes lost.
    pub(super) fn gap(&mut self, dir: Dir, until: u64, frames: u64) -> u64 {
        let lost = self.skip_to(dir, until);
        if lost > 0 {
            self.note(Note::FramesLost { bytes: lost, frames });
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
    pub(super) fn at_boundary(&self) -> bool {
        self.scope == Scope::Connection || self.rewrite.at_boundary()
    }

    /// A session starts on a leg recorded from its first byte: from here on, rotation
    /// waits for its frame boundaries and new sections repeat its Upgrade exchange (the
    /// rewriter has followed its HTTP all along, and kept the heads).
    pub(super) fn begin_session(&mut self, rules: Rules) {
        self.scope = Scope::Session;
        self.rewrite.set_rules(rules);
    }

    /// What a new section repeats of this leg after its synthetic handshake: a session's
    /// heads and deflate windows; nothing for a connection without one.
    pub(super) fn repeated(&mut self, audience: Audience) -> HeadsAndPrimers {
        match self.scope {
            Scope::Session => self.rewrite.repeated(audience),
            Scope::Connection => HeadsAndPrimers::default(),
        }
    }
}

/// A leg's last packet, held back for its close comment.
#[derive(Debug, Clone, Copy)]
pub(super) struct Final {
    /// The leg it ends.
    pub(super) leg: LegId,
    /// When it happened.
    pub(super) time: Timestamp,
    /// The direction the packet goes.
    pub(super) dir: Dir,
    /// What it is.
    pub(super) kind: FinalKind,
}

/// What a held-back last packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FinalKind {
    /// The ACK of the other end's FIN.
    Ack,
    /// The remote end's reset.
    Rst,
}
