//! What of a session direction's WebSocket frames is written, frame by frame, as the
//! rules say: a frame is written as it came unless a rule says otherwise, and then its
//! header is rewritten to the payload it keeps, with a note giving the real length, so
//! that Wireshark decodes every frame:
//!
//! - `max_message_bytes`, `max_session_bytes`: payloads cut (a compressed message is kept
//!   whole or not at all: a cut one would not inflate, and with context takeover would
//!   break every message after it);
//! - a compressed message after the capture lost its deflate window, or while payload
//!   patterns are set (compressed payloads are not searched): written without payload;
//! - payload patterns: each message is held until it is whole (up to 1 MiB), redacted,
//!   and written in its frames again.
//!
//! The direction's deflate window is followed on the way, for the files that follow.

use std::ops::Range;

use wstap_wire::deflate::{self, Allowance, Follower};
use wstap_wire::wsframe::{apply_mask, FrameHeader, Walk};

use super::{Rewritten, Rules};
use crate::capture::note::{Cut, Note};
use crate::capture::write::redact;

/// The longest message held to search for payload patterns; a longer one is written
/// without its payload.
pub(super) const MAX_HELD: usize = 1 << 20;

/// The data message being written, and what is allowed of it.
#[derive(Default)]
pub(super) struct Outgoing {
    compressed: bool,
    /// Payload bytes still allowed by `max_message_bytes`.
    left: Option<u64>,
    /// Why its payload is not written at all.
    removed: Option<Cut>,
    /// Its frames, held until it is whole (payload patterns).
    held: Option<Vec<HeldFrame>>,
    held_bytes: usize,
    /// Payload bytes written of the frame going on.
    frame_keep: u64,
}

impl Outgoing {
    /// A message interrupted by a capture gap: what follows of it (continuation frames)
    /// cannot be searched for payload patterns, so it is written without payload if any
    /// are set.
    pub(super) fn after_gap(patterns: bool) -> Outgoing {
        Outgoing { removed: patterns.then_some(Cut::BeganBeforeGap), ..Outgoing::default() }
    }

    /// Whether frames are held (a message searched for payload patterns).
    pub(super) fn holds(&self) -> bool {
        self.held.is_some()
    }
}

/// A held frame: its header, and its payload (unmasked, for a data frame).
struct HeldFrame {
    header: FrameHeader,
    raw_header: Vec<u8>,
    payload: Vec<u8>,
}

/// How held frames are released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// The message is whole (or will never be): searched, redacted, written.
    Searched,
    /// It grew past [`MAX_HELD`]: written without its payload.
    TooLarge,
}

/// The frames of one direction being written: each step of the frame walk becomes runs
/// of the output.
pub(super) struct FrameWriter<'a> {
    pub(super) m: &'a mut Outgoing,
    /// Payload bytes still allowed by `max_session_bytes`.
    pub(super) session_left: &'a mut Option<u64>,
    pub(super) rules: &'a Rules,
    pub(super) out: &'a mut Rewritten,
}

impl FrameWriter<'_> {
    /// One step of the frame walk over `data` (which starts `base` bytes into the input).
    pub(super) fn walk(
        &mut self,
        w: Walk<'_>,
        data: &[u8],
        base: usize,
        follower: &mut Option<Box<Follower>>,
        allowance: &mut Allowance,
    ) {
        match w {
            Walk::Header { header, bytes, in_data } => {
                // A header that straddled two inputs is made again from the tracker's copy.
                let within = in_data.map(|r| base + r.start..base + r.end);
                self.header(header, bytes, within, follower.as_deref())
            }
            Walk::Payload { header: h, range, pos, last: end } => {
                let piece = &data[range.clone()];
                if let Some(f) = follower.as_mut().filter(|_| !h.opcode.is_control()) {
                    let followed = !f.stopped();
                    feed_deflate(f, &h, piece, pos, end, allowance);
                    if followed && f.stopped() {
                        self.out.note(Note::DeflateUnfollowed { limit_mib: deflate::MAX_FOLLOWED_MESSAGE >> 20 });
                    }
                }
                self.payload(h, range.start + base, piece, pos);
                if end && !h.opcode.is_control() && h.fin && self.m.held.is_some() {
                    self.release_held(Release::Searched);
                }
            }
        }
    }

    /// A frame begins: decide what of it is written, and write its header (or hold it).
    fn header(&mut self, h: FrameHeader, raw: &[u8], within: Option<Range<usize>>, follower: Option<&Follower>) {
        if h.opcode.starts_message() {
            if self.m.held.is_some() {
                self.release_held(Release::Searched); // the previous message never finished
            }
            *self.m = self.start_message(h, follower);
        }
        if let Some(held) = self.m.held.as_mut() {
            held.push(HeldFrame { header: h, raw_header: raw.to_vec(), payload: Vec::new() });
            self.m.frame_keep = h.len;
            return;
        }
        let keep = self.kept(&h);
        self.m.frame_keep = keep;
        match within {
            // Written as it came: a run of the input, not a copy.
            Some(range) if keep == h.len => self.out.keep(range),
            _ => self.write_header(&h, raw, keep),
        }
    }

    fn write_header(&mut self, h: &FrameHeader, raw: &[u8], keep: u64) {
        if keep == h.len {
            self.out.make(raw.to_vec());
            return;
        }
        self.out.make(FrameHeader::encode(raw[0], keep, h.mask));
        let why = match self.m.removed {
            Some(why) => why,
            None if *self.session_left == Some(0) && self.m.left.is_none_or(|l| l > 0) => Cut::MaxSession,
            None => Cut::MaxMessage,
        };
        self.out.note(Note::FrameCut { kept: keep, len: h.len, why });
    }

    /// What a data message starting with frame `h` is written as.
    fn start_message(&mut self, h: FrameHeader, follower: Option<&Follower>) -> Outgoing {
        let patterns = !self.rules.redact.payload.is_empty();
        let mut m = Outgoing { compressed: h.rsv1, left: self.rules.snap.message, ..Outgoing::default() };
        if h.rsv1 {
            m.left = None; // a compressed message is kept whole or not at all
            m.removed = if let Some(loss) = follower.and_then(Follower::window_lost) {
                Some(Cut::Undecodable(loss))
            } else if patterns {
                Some(Cut::CompressedUnsearched)
            } else if *self.session_left == Some(0) {
                Some(Cut::MaxSession)
            } else {
                None
            };
        } else if patterns {
            m.held = Some(Vec::new());
        }
        m
    }

    /// Payload bytes frame `h` keeps, taken from the budgets.
    fn kept(&mut self, h: &FrameHeader) -> u64 {
        if h.opcode.is_control() {
            return h.len;
        }
        if self.m.removed.is_some() {
            return 0;
        }
        if self.m.compressed {
            // Whole, even past the session's budget: it inflates, or it is removed.
            *self.session_left = self.session_left.map(|l| l.saturating_sub(h.len));
            return h.len;
        }
        let keep = [Some(h.len), self.m.left, *self.session_left].into_iter().flatten().min().unwrap_or(h.len);
        self.m.left = self.m.left.map(|l| l - keep);
        *self.session_left = self.session_left.map(|l| l - keep);
        keep
    }

    /// Payload bytes of the frame being written, `pos` into it, at `start` in the input.
    fn payload(&mut self, h: FrameHeader, start: usize, piece: &[u8], pos: u64) {
        if let Some(held) = self.m.held.as_mut() {
            let frame = held.last_mut().expect("a held frame's header came first");
            let from = frame.payload.len();
            frame.payload.extend_from_slice(piece);
            if let Some(key) = h.mask {
                apply_mask(&mut frame.payload[from..], key, pos);
            }
            self.m.held_bytes += piece.len();
            if self.m.held_bytes > MAX_HELD {
                self.release_held(Release::TooLarge);
            }
            return;
        }
        let end = (pos + piece.len() as u64).min(self.m.frame_keep);
        if end > pos {
            self.out.keep(start..start + (end - pos) as usize);
        }
    }

    /// Writes the held frames: redacted where the payload patterns match, or, when the
    /// message grew too large to hold, without their payloads.
    fn release_held(&mut self, how: Release) {
        let frames = self.m.held.take().unwrap_or_default();
        self.m.held_bytes = 0;
        if how == Release::TooLarge {
            self.m.removed = Some(Cut::TooLargeToSearch { limit_mib: MAX_HELD >> 20 });
            self.m.frame_keep = 0;
        }
        let data = |f: &&HeldFrame| !f.header.opcode.is_control();
        let mut text: Vec<u8> = frames.iter().filter(data).flat_map(|f| f.payload.iter().copied()).collect();
        if how == Release::Searched {
            for what in redact::payload(&mut text, &self.rules.redact) {
                self.out.note(Note::Redacted(what));
            }
        }
        let mut at = 0;
        for f in frames {
            let is_data = !f.header.opcode.is_control();
            let mut payload = if is_data {
                at += f.payload.len();
                text[at - f.payload.len()..at].to_vec()
            } else {
                f.payload
            };
            let keep = if how == Release::TooLarge && is_data { 0 } else { self.kept(&f.header) };
            self.write_header(&f.header, &f.raw_header, keep);
            payload.truncate(keep as usize);
            if let Some(key) = f.header.mask {
                apply_mask(&mut payload, key, 0);
            }
            self.out.make(payload);
        }
    }

    /// The message held is written as it stands (a gap took the rest, or the leg ends).
    pub(super) fn flush(&mut self) {
        if self.m.held.is_some() {
            self.release_held(Release::Searched);
        }
    }
}

/// Feeds a piece of payload, unmasked, to the direction's deflate follower.
fn feed_deflate(f: &mut Follower, h: &FrameHeader, piece: &[u8], pos: u64, end: bool, allowance: &mut Allowance) {
    match h.mask {
        Some(key) => {
            let mut unmasked = piece.to_vec();
            apply_mask(&mut unmasked, key, pos);
            f.feed(h, &unmasked, end, allowance);
        }
        None => f.feed(h, piece, end, allowance),
    }
}
