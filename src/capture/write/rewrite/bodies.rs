//! HTTP bodies, when payload patterns are set (`capture.redact.payload`): a pattern is a
//! promise that what it matches never reaches the file, in a request's body as in a
//! WebSocket message. A body is held until whole (up to [`MAX_HELD`]), its content
//! searched as the application reads it (a chunked body's chunks joined, so a match
//! split across chunks is found) and its trailer fields searched, and every match
//! blanked in place, lengths kept. One too large to hold, or compressed (wstap does not
//! decompress bodies), is written blanked instead, its chunks' framing kept so that it
//! still parses. Pure.

use std::ops::Range;

use wstap_wire::http::{BodyKind, Head};

use super::frames::MAX_HELD;
use super::{blanked, redact, Rewritten, Rules};
use crate::capture::note::{Cut, Note};

/// One body going one way, while payload patterns are set.
pub(super) struct Body {
    /// What is held of it, and what each run of those bytes is.
    held: Vec<u8>,
    runs: Vec<(BodyKind, Range<usize>)>,
    /// Written blanked as it comes, and why.
    blanking: Option<Cut>,
    /// Its length so far, framing included.
    len: u64,
}

/// Whether the body after `head` is compressed (a content or transfer coding other than
/// `chunked` and `identity`).
pub(super) fn compressed(head: &Head) -> bool {
    let coded = |name: &str| {
        head.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).any(|(_, v)| {
            v.split(',')
                .map(str::trim)
                .any(|c| !c.is_empty() && !["chunked", "identity"].iter().any(|k| c.eq_ignore_ascii_case(k)))
        })
    };
    coded("content-encoding") || coded("transfer-encoding")
}

impl Body {
    /// A body at its first byte; `compressed` ones are written blanked.
    pub(super) fn new(compressed: bool) -> Body {
        let blanking = compressed.then_some(Cut::CompressedUnsearched);
        Body { held: Vec::new(), runs: Vec::new(), blanking, len: 0 }
    }

    /// The next bytes of the body, all of `kind`: held, or (blanking) written blanked.
    pub(super) fn take(&mut self, kind: BodyKind, bytes: &[u8], out: &mut Rewritten) {
        self.len += bytes.len() as u64;
        if self.blanking.is_none() && self.held.len() + bytes.len() > MAX_HELD {
            self.blanking = Some(Cut::TooLargeToSearch { limit_mib: MAX_HELD >> 20 });
            let held = std::mem::take(&mut self.held);
            for (kind, run) in std::mem::take(&mut self.runs) {
                out.make(blank(kind, &held[run]));
            }
        }
        if self.blanking.is_some() {
            out.make(blank(kind, bytes));
            return;
        }
        let start = self.held.len();
        self.held.extend_from_slice(bytes);
        match self.runs.last_mut() {
            Some((k, run)) if *k == kind => run.end = self.held.len(),
            _ => self.runs.push((kind, start..self.held.len())),
        }
    }

    /// The body ended (or the stream did): what is held is written, every match of the
    /// patterns blanked, and the notes say what was redacted or why it was blanked.
    pub(super) fn end(mut self, rules: &Rules, out: &mut Rewritten) {
        if let Some(why) = self.blanking {
            out.note(Note::BodyBlanked { len: self.len, why });
            return;
        }
        for kind in [BodyKind::Content, BodyKind::Trailers] {
            let runs: Vec<Range<usize>> =
                self.runs.iter().filter(|(k, _)| *k == kind).map(|(_, r)| r.clone()).collect();
            let mut joined: Vec<u8> = runs.iter().flat_map(|r| self.held[r.clone()].iter().copied()).collect();
            for what in redact::payload(&mut joined, &rules.redact) {
                out.note(Note::Redacted(what));
            }
            let mut searched = joined.into_iter();
            for run in runs {
                self.held[run].iter_mut().for_each(|b| *b = searched.next().unwrap_or(*b));
            }
        }
        out.make(self.held);
    }
}

/// Body bytes of `kind` that cannot be searched: content and trailers blanked (line ends
/// kept, so that the trailers still end), a chunk's framing as it came.
fn blank(kind: BodyKind, bytes: &[u8]) -> Vec<u8> {
    match kind {
        BodyKind::Framing => bytes.to_vec(),
        BodyKind::Content | BodyKind::Trailers => blanked(bytes),
    }
}
