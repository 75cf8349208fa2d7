//! What a new section repeats of each live leg, so that it decodes on its own: a
//! synthetic handshake placed in sequence space so the live packets continue it, then a
//! session's original Upgrade exchange and a message restoring each kept deflate window,
//! or an encrypted leg's keys and every TLS record since its first. Every repeated packet
//! says so in its comment. A new file repeats the legs for its own reader; a live
//! subscriber's first section for the subscriber.

use std::collections::BTreeMap;
use std::io::{self, Write};

use super::leg::LegState;
use super::rotation::Boundary;
use super::section::{Comments, Section};
use crate::capture::event::Scope;
use crate::capture::ids::LegId;
use crate::capture::note::{Audience, Note, Repeats};
use crate::capture::stats::Stats;
use wstap_wire::Timestamp;

/// What a section says of the moment it began.
#[derive(Debug, Clone, Copy)]
pub(super) struct Beginning {
    /// For whom the legs are repeated.
    pub(super) audience: Audience,
    /// When the section begins (its repeated packets carry this time).
    pub(super) time: Timestamp,
    /// Bytes a write-error episode could not write before it.
    pub(super) unwritten: u64,
    /// Whether every session was between frames.
    pub(super) boundary: Boundary,
}

/// Writes every live leg at the start of `section`: handshake, Upgrade exchange, deflate
/// windows or TLS records, each packet commented.
pub(super) fn repeat_all<W: Write>(
    legs: &mut BTreeMap<LegId, Box<LegState>>,
    section: &mut Section<W>,
    at: Beginning,
    stats: &Stats,
) -> io::Result<()> {
    for leg in legs.values_mut() {
        match leg.encrypted.is_some() {
            true => repeat_records(leg, section, at, stats)?,
            false => repeat_leg(leg, section, at, stats)?,
        }
    }
    Ok(())
}

/// A leg of plain bytes: its handshake, and a session's heads and deflate windows.
fn repeat_leg<W: Write>(leg: &mut LegState, section: &mut Section<W>, at: Beginning, stats: &Stats) -> io::Result<()> {
    if let Boundary::Forced(waited) = at.boundary {
        if !leg.at_boundary() {
            leg.note(Note::StartsInsideFrame { audience: at.audience, waited });
        }
    }
    let repeated = leg.repeated(at.audience);
    let what = match leg.scope {
        Scope::Session => Repeats::Upgrade { deflate: repeated.restores_deflate() },
        Scope::Connection => Repeats::Handshake,
    };
    let note = Note::Repeated { audience: at.audience, heading: leg.heading.clone(), what, unwritten: at.unwritten };
    let each = note.to_string();
    let parts = repeated.sent();
    let first = leg.comment();
    let comments = Comments { first, each: Some(&each) };
    if section.write(leg.which, &mut leg.flow, at.time, comments, |f, e| f.repeat(&parts, e), stats)? {
        leg.noted();
    }
    Ok(())
}

/// An encrypted leg: its keys, its handshake and every record since the first (or, past
/// the bounds on what is kept, why not). TLS records are repeated whole: the leg is never
/// inside one for rotation.
fn repeat_records<W: Write>(
    leg: &mut LegState,
    section: &mut Section<W>,
    at: Beginning,
    stats: &Stats,
) -> io::Result<()> {
    let Some(enc) = leg.encrypted.take() else { return Ok(()) };
    let records = enc.repeated();
    let what = match &records {
        Ok(_) => Repeats::TlsRecords,
        Err(why) => Repeats::TlsNotKept(*why),
    };
    // Up to a MiB of records: the whole comment on the first packet only.
    leg.note(Note::Repeated { audience: at.audience, heading: leg.heading.clone(), what, unwritten: at.unwritten });
    let parts = records.unwrap_or_default();
    let each = Note::Repeat(at.audience).to_string();
    let written = section.secrets(leg.which, &enc.secrets).and_then(|()| {
        let comments = Comments { first: leg.comment(), each: Some(&each) };
        section.write(leg.which, &mut leg.flow, at.time, comments, |f, e| f.repeat(&parts, e), stats)
    });
    drop(parts);
    // The leg keeps its state whatever the writing gives.
    leg.encrypted = Some(enc);
    if written? {
        leg.noted();
    }
    Ok(())
}
