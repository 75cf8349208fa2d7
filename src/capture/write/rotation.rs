//! When a section may end. A rotation (a file's size or age, a signal, a reload, a live
//! subscriber's join) becomes due at some moment; the section ends at the next point
//! where every live session is between frames, so that no frame is cut across two files,
//! or when it has waited as long as it may (`capture.rotate.max_wait`), and then the new
//! section says it starts inside a frame. Legs inside a frame are counted as they move,
//! so that a due rotation does not scan every leg per event.

use std::time::Duration;

use bytes::Bytes;
use wstap_wire::Timestamp;

use super::leg::LegState;
use crate::capture::event::{Event, Scope, What};

/// A writer's rotation.
#[derive(Debug)]
pub(super) struct Rotation {
    /// When a rotation became due.
    due: Option<Timestamp>,
    /// The longest a due rotation waits for every session to be between frames.
    wait: Duration,
    /// Live legs inside a frame.
    mid_frame: usize,
}

/// How a due rotation begins its section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Boundary {
    /// Every session between frames.
    Clean,
    /// It waited this long, and some session is inside a frame.
    Forced(Duration),
}

impl Rotation {
    /// No rotation due; one that comes due waits up to `wait`.
    pub(super) fn new(wait: Duration) -> Rotation {
        Rotation { due: None, wait, mid_frame: 0 }
    }

    /// New settings (a reload).
    pub(super) fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
    }

    /// A rotation is asked for at `time` (if none is due already).
    pub(super) fn due(&mut self, time: Timestamp) {
        self.due.get_or_insert(time);
    }

    /// Whether a rotation is due.
    pub(super) fn is_due(&self) -> bool {
        self.due.is_some()
    }

    /// The due rotation is taken care of without a new section (nothing was live).
    pub(super) fn done(&mut self) {
        self.due = None;
    }

    /// Whether the due rotation may happen at `now`: every session between frames, or
    /// it waited as long as it may.
    pub(super) fn ready(&self, now: Timestamp) -> bool {
        self.due.is_some_and(|due| self.mid_frame == 0 || now >= due.after(self.wait))
    }

    /// The rotation happens now: how its section begins.
    pub(super) fn happen(&mut self) -> Boundary {
        match self.due.take() {
            Some(_) if self.mid_frame > 0 => Boundary::Forced(self.wait),
            _ => Boundary::Clean,
        }
    }

    /// A leg moved from being (`was`) between frames or not to `now`.
    pub(super) fn moved(&mut self, was: bool, now: bool) {
        match (was, now) {
            (true, false) => self.mid_frame += 1,
            (false, true) => self.mid_frame -= 1,
            _ => {}
        }
    }

    /// A leg inside a frame or not (`at_boundary`) ended.
    pub(super) fn ended(&mut self, at_boundary: bool) {
        self.moved(at_boundary, true);
    }

    /// For data on `leg` while a rotation is due and this leg is the only one inside a
    /// frame, and only going the data's way: the data cut at its frame boundary, the part
    /// before it to write in this section and the rest to write in the next.
    pub(super) fn split(&self, leg: &LegState, ev: &Event) -> Option<(Event, Event)> {
        let What::Data { dir, offset, bytes } = &ev.what else { return None };
        let others_ready = self.mid_frame == 1 && !leg.at_boundary() && leg.rewrite.side_at_boundary(dir.reverse());
        if !others_ready || leg.scope != Scope::Session {
            return None;
        }
        let skip = leg.real[*dir].saturating_sub(*offset).min(bytes.len() as u64) as usize;
        let cut = skip + leg.rewrite.boundary_in(*dir, &bytes[skip..])?;
        if cut >= bytes.len() {
            return None;
        }
        let part = |offset: u64, bytes: Bytes| Event {
            time: ev.time,
            leg: ev.leg,
            what: What::Data { dir: *dir, offset, bytes },
        };
        Some((part(*offset, bytes.slice(..cut)), part(offset + cut as u64, bytes.slice(cut..))))
    }
}
