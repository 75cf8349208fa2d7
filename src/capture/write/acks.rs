//! When the synthesized receivers acknowledge, as a real stack's delayed ACKs do: the pure
//! ACK owed for data received rides on the receiver's own next data or FIN when that
//! comes first, and is written on its own before anything else the leg does, or when
//! the writer has caught up with its queue (`capture.acks`). And the packet held back
//! at a leg's end: its last packet waits for the Close, which follows within
//! microseconds, so that it carries how the leg ended.

use wstap_wire::{Dir, Timestamp};

use super::leg::{Final, FinalKind, LegState};
use crate::capture::event::{Event, What};
use crate::capture::ids::LegId;
use crate::config::PureAcks;

/// What a leg's last packet is, at its close.
#[derive(Debug, Clone, Copy)]
pub(super) enum LastPacket {
    /// One held back: written now, with the close comment.
    Held(Final),
    /// The socket closed without a shutdown: the kernel's FIN, sent `dir`.
    Fin(Dir),
    /// Both FINs were written: a last ACK, sent `dir`.
    Ack(Dir),
}

/// The ACKs owed and the packet held back.
#[derive(Debug, Default)]
pub(super) struct Acks {
    policy: PureAcks,
    /// Legs that came to owe an ACK since the writer last caught up (some may have
    /// settled it since), so that catching up does not scan every leg.
    owed: Vec<LegId>,
    /// A leg's last packet, held until the next event (unless that closes the leg).
    held: Option<Final>,
}

impl Acks {
    /// ACKs written as `policy` says.
    pub(super) fn new(policy: PureAcks) -> Acks {
        Acks { policy, ..Acks::default() }
    }

    /// New settings (a reload).
    pub(super) fn set_policy(&mut self, policy: PureAcks) {
        self.policy = policy;
    }

    /// Whether pure ACKs are written at all.
    pub(super) fn written(&self) -> bool {
        self.policy == PureAcks::Written
    }

    /// Leg `id` received data going `dir`: its receiver owes an ACK (sent the other way).
    pub(super) fn owe(&mut self, id: LegId, leg: &mut LegState, dir: Dir) {
        if self.written() && leg.ack_due.replace(dir.reverse()).is_none() {
            self.owed.push(id);
        }
    }

    /// Before `ev` on `leg`, at `time`: the packet held back, to write first (unless `ev`
    /// closes its leg, whose comment it waits for), and the ACK the leg owes, unless `ev`
    /// carries it.
    pub(super) fn before(
        &mut self,
        ev: &Event,
        time: Timestamp,
        leg: Option<&mut LegState>,
    ) -> (Option<Final>, Option<Dir>) {
        let closing = matches!(ev.what, What::Close { .. });
        let mut held = match self.held {
            Some(f) if closing && f.leg == ev.leg => None,
            _ => self.held.take(),
        };
        let Some(leg) = leg else { return (held, None) };
        let ack = match &ev.what {
            // The ACK it owes is the leg's last packet, unless it already has one: held for
            // the close comment (whatever was held goes first).
            What::Close { .. } if leg.last.is_none() => {
                if let Some(dir) = leg.ack_due.take() {
                    held = held.or(self.held.take());
                    self.held = Some(Final { leg: ev.leg, time, dir, kind: FinalKind::Ack });
                }
                None
            }
            What::Note(_) | What::Open(_) => None,
            What::Data { dir, .. } | What::Fin { dir, .. } => Acks::due(leg, Some(*dir)),
            _ => Acks::due(leg, None),
        };
        (held, ack)
    }

    /// The ACK `leg` owes, if it is to be written on its own: not when the leg is about to
    /// send data or a FIN `next` the way the ACK goes, which carries it.
    pub(super) fn due(leg: &mut LegState, next: Option<Dir>) -> Option<Dir> {
        let due = leg.ack_due.take()?;
        (next != Some(due)).then_some(due)
    }

    /// The legs that may owe an ACK, taken (the writer caught up with its queue).
    pub(super) fn take_owed(&mut self) -> Vec<LegId> {
        std::mem::take(&mut self.owed)
    }

    /// Legs whose owed ACKs could not be written yet.
    pub(super) fn still_owed(&mut self, legs: &[LegId]) {
        self.owed.extend_from_slice(legs);
    }

    /// The end sending `dir` on leg `id` half-closed at `time`: the other end's ACK of its
    /// FIN is held, the leg's own last packet if both have now closed.
    pub(super) fn fin(&mut self, id: LegId, leg: &mut LegState, time: Timestamp, dir: Dir) {
        let ack = Final { leg: id, time, dir: dir.reverse(), kind: FinalKind::Ack };
        match leg.flow.fin_sent(dir.reverse()) {
            true => leg.last = Some(ack),
            false => self.held = Some(ack),
        }
    }

    /// The remote end of leg `id` reset it at `time`: its RST is the leg's last packet.
    pub(super) fn reset(id: LegId, leg: &mut LegState, time: Timestamp) {
        let dir = leg.which.inbound();
        leg.last.get_or_insert(Final { leg: id, time, dir, kind: FinalKind::Rst });
    }

    /// What leg `id`'s last packet is, now that it closes at `time`.
    pub(super) fn last_packet(&mut self, id: LegId, leg: &mut LegState, time: Timestamp) -> LastPacket {
        // What wstap sent is the other way from what it read.
        let local = leg.which.inbound().reverse();
        if let Some(last) = leg.last.take() {
            return LastPacket::Held(Final { time, ..last });
        }
        match self.held {
            Some(f) if f.leg == id => LastPacket::Held(self.held.take().unwrap_or(f)),
            _ if !leg.flow.fin_sent(local) => LastPacket::Fin(local),
            _ => LastPacket::Ack(local),
        }
    }

    /// The packet held back, taken (the section ends).
    pub(super) fn take_held(&mut self) -> Option<Final> {
        self.held.take()
    }

    /// Forgets the packet held back (its section's output failed).
    pub(super) fn drop_held(&mut self) {
        self.held = None;
    }
}
