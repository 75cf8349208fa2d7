//! What the writer makes of one leg's bytes before they become packets. It follows each
//! direction in one pass: the HTTP exchanges (with the connection's
//! [`Framer`](wstap_wire::http::Framer): heads held until whole, redacted as
//! `capture.redact` says and kept for the sections that repeat them; bodies by their
//! framing, written as they came), then, past an Upgrade, WebSocket frames, written as
//! the rules say (`frames`). Where the framing cannot be followed, what follows is
//! blanked out (HTTP could hide a head in it) or not written (frames would decode as
//! garbage), and a note says so.
//!
//! The stream written can be shorter than the real one; the writer accounts for that.
//! Pure: bytes in, runs of bytes and notes out.

use std::ops::Range;
use std::sync::Arc;

use wstap_wire::deflate::{self, Allowance, Follower, Loss};
use wstap_wire::http::{BodyKind, Framer, Head, Part};
use wstap_wire::tcp::Sent;
use wstap_wire::wsframe::{FrameTracker, Until};
use wstap_wire::{Dir, PerDir};

use super::redact;
use crate::capture::event::{Gap, Scope};
use crate::capture::note::{Audience, Note};
use crate::config::{Redact, Snap};
use frames::{FrameWriter, Outgoing};

mod bodies;
mod frames;

/// The longest HTTP head held to be redacted; a longer one is blanked out whole (the
/// client leg's probe, which every connection has, is of the same size).
const MAX_HEAD: usize = 128 * 1024;
/// The most of a head kept to be repeated by later sections.
const MAX_REPEATED_HEAD: usize = 64 * 1024;

/// The rules a leg is written by.
#[derive(Debug, Clone)]
pub(super) struct Rules {
    pub(super) redact: Arc<Redact>,
    pub(super) snap: Snap,
}

/// Bytes to write: a range of the input, or bytes made instead.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Run {
    /// Input bytes, written as they came.
    Input(Range<usize>),
    /// Bytes made in their place (a redacted head, a rewritten frame header).
    New(Vec<u8>),
}

/// What feeding bytes gave: runs to write, in order, and notes for their packets.
#[derive(Debug, Default)]
pub(super) struct Rewritten {
    pub(super) runs: Vec<Run>,
    pub(super) notes: Vec<Note>,
}

impl Rewritten {
    /// Input bytes `r` are written as they came.
    pub(super) fn keep(&mut self, r: Range<usize>) {
        if r.is_empty() {
            return;
        }
        if let Some(Run::Input(last)) = self.runs.last_mut() {
            if last.end == r.start {
                last.end = r.end;
                return;
            }
        }
        self.runs.push(Run::Input(r));
    }

    /// `bytes` are written in the place of input bytes.
    pub(super) fn make(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.runs.push(Run::New(bytes));
        }
    }

    /// A note for the packets, once.
    pub(super) fn note(&mut self, note: Note) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// The bytes to write, from `input` (borrowed when nothing was made).
    pub(super) fn bytes<'a>(&self, input: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        match self.runs.as_slice() {
            [] => std::borrow::Cow::Borrowed(&[]),
            [Run::Input(r)] => std::borrow::Cow::Borrowed(&input[r.clone()]),
            runs => {
                let mut out = Vec::with_capacity(input.len() + 16);
                for r in runs {
                    out.extend_from_slice(match r {
                        Run::Input(r) => &input[r.clone()],
                        Run::New(b) => &b[..],
                    });
                }
                std::borrow::Cow::Owned(out)
            }
        }
    }
}

/// What a new section repeats of a session leg after its synthetic handshake.
#[derive(Debug, Default)]
pub(super) struct HeadsAndPrimers {
    /// Each direction's last head, as written.
    pub(super) heads: PerDir<Vec<u8>>,
    /// A message restoring each direction's deflate window, where one is kept.
    pub(super) primers: PerDir<Option<Vec<u8>>>,
}

impl HeadsAndPrimers {
    /// The parts in the order a file needs them: the heads (request, then the `101`), then
    /// the primers, which Wireshark decodes as frames only after the `101`.
    pub(super) fn sent(&self) -> Vec<Sent<'_>> {
        let heads = self.heads.iter().map(|(dir, bytes)| Sent { dir, bytes });
        let primers = self.primers.iter().filter_map(|(dir, p)| p.as_deref().map(|bytes| Sent { dir, bytes }));
        heads.chain(primers).collect()
    }

    /// Whether a primer restores a deflate window.
    pub(super) fn restores_deflate(&self) -> bool {
        self.primers.iter().any(|(_, p)| p.is_some())
    }
}

/// A leg's two streams as the writer rewrites them.
pub(super) struct Rewriter {
    dirs: PerDir<Side>,
    rules: Rules,
    /// Where the leg's capture began: a session's Upgrade request, or its first byte.
    began: Scope,
    /// The connection's HTTP exchanges, both ways.
    http: Framer,
    /// Each direction's permessage-deflate follower, when its context is kept across
    /// messages (boxed: most legs have none).
    deflate: PerDir<Option<Box<Follower>>>,
    /// Each direction's last head, as written: what a new section repeats.
    heads: PerDir<Vec<u8>>,
}

/// One direction.
struct Side {
    stage: Stage,
    /// The body being held for the payload patterns, if one is.
    body: Option<bodies::Body>,
    /// The message whose head was last read has a compressed body.
    compressed: bool,
    /// Payload bytes still allowed by `max_session_bytes`.
    session_left: Option<u64>,
    message: Outgoing,
}

/// Where one direction is.
enum Stage {
    /// In HTTP, as the framer follows it.
    Http,
    /// In a head too long to hold: blanked out to its blank line.
    LongHead,
    /// The HTTP framing could not be followed: everything is blanked out.
    Blanked,
    /// Bytes were lost where no frame boundary was known: nothing more is written.
    Unreadable,
    /// WebSocket frames.
    Frames(FrameTracker),
}

impl Rewriter {
    /// A leg written by `rules`, whose capture began as `scope` says.
    pub(super) fn new(rules: Rules, scope: Scope) -> Rewriter {
        let side = || Side {
            stage: Stage::Http,
            body: None,
            compressed: false,
            session_left: rules.snap.session,
            message: Outgoing::default(),
        };
        Rewriter {
            dirs: PerDir::new(side(), side()),
            rules,
            began: scope,
            http: Framer::new(MAX_HEAD),
            deflate: PerDir::default(),
            heads: PerDir::default(),
        }
    }

    /// New rules (a session starts on a leg recorded from its first byte).
    pub(super) fn set_rules(&mut self, rules: Rules) {
        for dir in Dir::BOTH {
            self.dirs[dir].session_left = rules.snap.session;
        }
        self.rules = rules;
    }

    /// Rewrites `input`, the next bytes going `dir`.
    pub(super) fn feed(&mut self, dir: Dir, input: &[u8], allowance: &mut Allowance) -> Rewritten {
        let mut out = Rewritten::default();
        let mut at = 0;
        while at < input.len() {
            at = self.step(dir, input, at, &mut out, allowance);
        }
        out
    }

    /// Between frames (or heads) in both directions, nothing held: where a file may end.
    pub(super) fn at_boundary(&self) -> bool {
        Dir::BOTH.iter().all(|d| self.side_at_boundary(*d))
    }

    /// Between frames (or heads) going `dir`, nothing held.
    pub(super) fn side_at_boundary(&self, dir: Dir) -> bool {
        let side = &self.dirs[dir];
        match &side.stage {
            Stage::Http => !self.http.inside_head(dir) && side.body.is_none(),
            Stage::Frames(t) => t.at_boundary() && !side.message.holds(),
            _ => true,
        }
    }

    /// Where, in `bytes` (the next going `dir`), the next frame boundary is, if there is
    /// one and a file may end there.
    pub(super) fn boundary_in(&self, dir: Dir, bytes: &[u8]) -> Option<usize> {
        let side = &self.dirs[dir];
        let Stage::Frames(t) = &side.stage else { return None };
        if side.message.holds() {
            return None;
        }
        let mut probe = t.clone();
        let cut = probe.advance(bytes, Until::Boundary, |_| {});
        probe.at_boundary().then_some(cut)
    }

    /// The stream lost bytes up to a frame boundary (the tap saw to that); if some of
    /// them were compressed, its shared deflate window is lost with them.
    pub(super) fn gap(&mut self, gap: &Gap) -> Rewritten {
        let Gap { dir, compressed, .. } = *gap;
        let mut out = self.flush(dir);
        let stage = match self.dirs[dir].stage {
            Stage::Frames(_) => Stage::Frames(FrameTracker::new()),
            Stage::Http => {
                // A head cut by the gap: what was held of it is blanked out, and the
                // frames after the gap follow (a session), or nothing can be followed.
                self.blank_cut_head(dir, &mut out);
                self.after_lost_head()
            }
            _ => std::mem::replace(&mut self.dirs[dir].stage, Stage::Blanked),
        };
        let patterns = !self.rules.redact.payload.is_empty();
        let side = &mut self.dirs[dir];
        side.stage = stage;
        side.message = Outgoing::after_gap(patterns);
        if compressed {
            if let Some(f) = &mut self.deflate[dir] {
                f.lose_window(Loss::AtDrop);
            }
        }
        out
    }

    /// The stream going `dir` lost `n` bytes at no known frame boundary (a leg recorded
    /// without frame tracking). Inside an HTTP body of known length that costs nothing;
    /// elsewhere in HTTP what follows is blanked out (a head could hide in it), and past
    /// an Upgrade nothing more is written (frames would decode as garbage).
    pub(super) fn lose(&mut self, dir: Dir, n: u64) -> Rewritten {
        let mut out = self.flush(dir);
        let side = &mut self.dirs[dir];
        side.message = Outgoing::default();
        match side.stage {
            Stage::Http => {
                self.blank_cut_head(dir, &mut out);
                if let Err(why) = self.http.skip(dir, n) {
                    self.blank(dir, &mut out, why);
                }
            }
            Stage::Frames(_) | Stage::Unreadable => {
                out.note(Note::Unreadable);
                side.stage = Stage::Unreadable;
            }
            Stage::LongHead | Stage::Blanked => side.stage = Stage::Blanked,
        }
        if let Some(f) = &mut self.deflate[dir] {
            f.lose_window(Loss::AtDrop);
        }
        out
    }

    /// Writes what is held going `dir` (a message held for the payload patterns) as it
    /// stands: a gap took the rest, or the leg ends.
    pub(super) fn flush(&mut self, dir: Dir) -> Rewritten {
        let mut out = Rewritten::default();
        let side = &mut self.dirs[dir];
        if let Some(body) = side.body.take() {
            body.end(&self.rules, &mut out);
        }
        let mut writing = FrameWriter {
            m: &mut side.message,
            session_left: &mut side.session_left,
            rules: &self.rules,
            out: &mut out,
        };
        writing.flush();
        out
    }

    /// What a new section repeats for this leg: each direction's head, then a message
    /// restoring each kept deflate window. For a new file, a window no longer followed is
    /// lost from here on (the file's reader cannot be given it); a live subscriber
    /// joining changes nothing.
    pub(super) fn repeated(&mut self, audience: Audience) -> HeadsAndPrimers {
        if audience == Audience::File {
            self.deflate.iter_mut().flatten().for_each(|f| f.new_file());
        }
        // A client's frames are masked.
        let primers = self.deflate.by_ref().map(|dir, f| f.as_ref().and_then(|f| f.priming_frame(dir == Dir::Up)));
        HeadsAndPrimers { heads: self.heads.clone(), primers }
    }

    /// Whether the direction is past its heads, in WebSocket frames.
    #[cfg(test)]
    pub(super) fn in_frames(&self, dir: Dir) -> bool {
        matches!(self.dirs[dir].stage, Stage::Frames(_))
    }

    /// One step of `input` from `at`; returns where the next begins.
    fn step(&mut self, dir: Dir, input: &[u8], at: usize, out: &mut Rewritten, allowance: &mut Allowance) -> usize {
        let rest = &input[at..];
        match &mut self.dirs[dir].stage {
            Stage::Http => self.http(dir, input, at, out),
            Stage::LongHead => {
                let step = self.http.advance(dir, rest);
                out.make(blanked(&rest[..step.used]));
                if step.part == (Part::HeadTooLong { ends: true }) {
                    self.dirs[dir].stage = self.after_lost_head();
                }
                at + step.used
            }
            Stage::Blanked => {
                out.make(blanked(rest));
                input.len()
            }
            Stage::Unreadable => input.len(),
            Stage::Frames(_) => self.frames(dir, input, at, out, allowance),
        }
    }

    /// HTTP bytes going `dir`, from `at` in `input`: heads held until whole, then
    /// redacted; bodies as they came.
    fn http(&mut self, dir: Dir, input: &[u8], at: usize, out: &mut Rewritten) -> usize {
        let kind = self.http.body_kind(dir);
        let step = self.http.advance(dir, &input[at..]);
        match step.part {
            Part::HeadSoFar => {}
            Part::Head { head, bytes, .. } => {
                self.head(dir, &head, bytes, out);
                // A `101` switches both directions: frames follow.
                for d in Dir::BOTH {
                    if matches!(self.dirs[d].stage, Stage::Http) && self.http.switched(d) {
                        self.dirs[d].stage = Stage::Frames(FrameTracker::new());
                    }
                }
            }
            Part::HeadTooLong { ends } => {
                let mut held = self.http.take_held(dir);
                if !held.is_empty() {
                    out.note(Note::HeadTooLong { limit: MAX_HEAD });
                }
                held.extend_from_slice(&input[at..at + step.used]);
                out.make(blanked(&held));
                self.dirs[dir].stage = if ends { self.after_lost_head() } else { Stage::LongHead };
            }
            Part::Body { ends } => self.body(dir, kind, input, at..at + step.used, ends, out),
            Part::Switched => self.dirs[dir].stage = Stage::Frames(FrameTracker::new()),
            Part::Unframed(why) => self.blank(dir, out, why),
        }
        at + step.used
    }

    /// Bytes of a body going `dir`, all of `kind`: written as they came, or, with payload
    /// patterns, held and searched (`bodies`).
    fn body(
        &mut self,
        dir: Dir,
        kind: Option<BodyKind>,
        input: &[u8],
        r: Range<usize>,
        ends: bool,
        out: &mut Rewritten,
    ) {
        let side = &mut self.dirs[dir];
        if self.rules.redact.payload.is_empty() {
            return out.keep(r);
        }
        let body = side.body.get_or_insert_with(|| bodies::Body::new(side.compressed));
        body.take(kind.unwrap_or(BodyKind::Content), &input[r], out);
        if ends {
            if let Some(body) = side.body.take() {
                body.end(&self.rules, out);
            }
        }
    }

    /// A complete head going `dir`: redacted, kept for repeats, written; a `101` that
    /// accepted permessage-deflate starts following the compression.
    fn head(&mut self, dir: Dir, head: &Head, mut bytes: Vec<u8>, out: &mut Rewritten) {
        for what in redact::head(&mut bytes, &self.rules.redact) {
            out.note(Note::Redacted(what));
        }
        if dir == Dir::Down && head.status == 101 {
            if let Some(keep) = deflate::takeover(head) {
                self.deflate = keep.map(|_, keep| keep.then(|| Box::new(Follower::new())));
            }
        }
        self.dirs[dir].compressed = bodies::compressed(head);
        self.heads[dir] = bytes[..bytes.len().min(MAX_REPEATED_HEAD)].to_vec();
        out.make(bytes);
    }

    /// The framing going `dir` is lost, for `why`: what the framer held and all that
    /// follows is blanked out, and the note says why.
    fn blank(&mut self, dir: Dir, out: &mut Rewritten, why: wstap_wire::http::FramingError) {
        self.blank_held(dir, out);
        out.note(Note::Unframed(why));
        self.dirs[dir].stage = Stage::Blanked;
    }

    /// Writes what the framer holds of a head going `dir` blanked out; returns whether
    /// it held anything.
    fn blank_held(&mut self, dir: Dir, out: &mut Rewritten) -> bool {
        let held = self.http.take_held(dir);
        if !held.is_empty() {
            out.make(blanked(&held));
        }
        !held.is_empty()
    }

    /// A head going `dir` was cut by a capture gap: what was held of it is blanked out,
    /// with a note that says so.
    fn blank_cut_head(&mut self, dir: Dir, out: &mut Rewritten) {
        if self.blank_held(dir, out) {
            out.note(Note::HeadCutByGap);
        }
    }

    /// Where a direction goes after a head it could not read: a session's frames follow
    /// its Upgrade exchange; on a connection followed from its first byte nothing can be.
    fn after_lost_head(&self) -> Stage {
        match self.began {
            Scope::Session => Stage::Frames(FrameTracker::new()),
            Scope::Connection => Stage::Blanked,
        }
    }

    /// Frames going `dir`, from `at` in `input`.
    fn frames(&mut self, dir: Dir, input: &[u8], at: usize, out: &mut Rewritten, allowance: &mut Allowance) -> usize {
        let (dirs, deflate, rules) = (&mut self.dirs, &mut self.deflate, &self.rules);
        let side = &mut dirs[dir];
        let Stage::Frames(tracker) = &mut side.stage else { return at };
        let mut writing = FrameWriter { m: &mut side.message, session_left: &mut side.session_left, rules, out };
        let follower = &mut deflate[dir];
        let consumed =
            tracker.walk(&input[at..], Until::End, |w| writing.walk(w, &input[at..], at, follower, allowance));
        at + consumed
    }
}

/// `bytes` blanked out, line ends kept.
fn blanked(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().map(|&b| if b == b'\r' || b == b'\n' { b } else { redact::BLANK }).collect()
}

#[cfg(test)]
mod tests {
    use super::frames::MAX_HELD;
    use super::*;
    use crate::capture::note::{Cut, Redaction};
    use wstap_wire::wsframe::{apply_mask, first_byte, FrameHeader, Opcode};

    /// First bytes of the frames the tests send: FIN, RSV1 and the opcode.
    const TEXT: u8 = first_byte(true, false, Opcode::Text);
    const BINARY: u8 = first_byte(true, false, Opcode::Binary);
    const PING: u8 = first_byte(true, false, Opcode::Ping);
    const CLOSE: u8 = first_byte(true, false, Opcode::Close);
    /// A fragmented text message's first frame, and a last continuation frame.
    const TEXT_OPENS: u8 = first_byte(false, false, Opcode::Text);
    const CONTINUATION_ENDS: u8 = first_byte(true, false, Opcode::Continuation);
    /// A compressed (permessage-deflate) text message in one frame.
    const TEXT_COMPRESSED: u8 = first_byte(true, true, Opcode::Text);

    const UPGRADE: &[u8] = b"GET /chat?token=abc HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer xyz\r\n\
        Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    const SWITCHED: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nSet-Cookie: sid=1\r\n\r\n";

    /// A gap on `dir` up to a frame boundary, of compressed frames or not.
    fn lost(dir: Dir, compressed: bool) -> Gap {
        Gap { dir, until: 0, frames: 1, compressed }
    }

    fn rules(snap: Snap, patterns: &[&str]) -> Rules {
        let payload = patterns.iter().map(|p| regex::bytes::Regex::new(p).unwrap()).collect();
        Rules { redact: Arc::new(Redact { payload, ..Redact::defaults() }), snap }
    }

    /// A frame whose first byte (FIN, RSV bits, opcode) is `first`, masked or not.
    fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        wstap_wire::wsframe::encode_frame(first, payload, masked.then_some([1, 2, 3, 4]))
    }

    /// The frames in `bytes`: (first byte, unmasked payload).
    fn frames_in(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(h) = FrameHeader::parse(&bytes[at..]) {
            let start = at + h.header_len;
            let mut p = bytes[start..start + h.len as usize].to_vec();
            if let Some(k) = h.mask {
                apply_mask(&mut p, k, 0);
            }
            out.push((bytes[at], p));
            at = start + h.len as usize;
        }
        assert_eq!(at, bytes.len(), "whole frames");
        out
    }

    /// Feeds `input` in pieces of `piece` bytes; returns what is written and the notes.
    fn feed(r: &mut Rewriter, dir: Dir, input: &[u8], piece: usize) -> (Vec<u8>, Vec<Note>) {
        let (mut out, mut notes) = (Vec::new(), Vec::new());
        for chunk in input.chunks(piece) {
            let fed = r.feed(dir, chunk, &mut Allowance::new(u64::MAX));
            out.extend_from_slice(&fed.bytes(chunk));
            notes.extend(fed.notes);
        }
        (out, notes)
    }

    fn session(r: &mut Rewriter) {
        let (req, notes) = feed(r, Dir::Up, UPGRADE, 7);
        assert_eq!(req.len(), UPGRADE.len());
        let text = String::from_utf8(req).unwrap();
        assert!(text.contains("?token=***") && text.contains("Authorization: **********") && !text.contains("xyz"));
        let redacted = |r| Note::Redacted(r);
        assert_eq!(
            notes,
            [redacted(Redaction::Query("token".into())), redacted(Redaction::Header("authorization".into()))]
        );
        let (res, notes) = feed(r, Dir::Down, SWITCHED, 1000);
        assert!(!String::from_utf8_lossy(&res).contains("sid=1") && res.len() == SWITCHED.len());
        assert_eq!(notes, [Note::Redacted(Redaction::Header("set-cookie".into()))]);
        assert!(r.in_frames(Dir::Up) && r.in_frames(Dir::Down));
        assert!(!String::from_utf8_lossy(&r.heads[Dir::Up]).contains("xyz"), "what later files repeat is redacted");
    }

    #[test]
    fn heads_are_redacted_and_frames_pass_untouched_by_default() {
        let mut r = Rewriter::new(rules(Snap::default(), &[]), Scope::Session);
        session(&mut r);
        let frames = [frame(TEXT, b"hello", true), frame(PING, b"p", true), frame(BINARY, &[7; 300], true)].concat();
        let fed = r.feed(Dir::Up, &frames, &mut Allowance::new(u64::MAX));
        assert_eq!(fed.runs.len(), 1, "headers and payloads kept in place, one run: {:?}", fed.runs);
        assert_eq!(&fed.bytes(&frames)[..], &frames[..], "every byte as it came");
        assert!(fed.notes.is_empty());
    }

    #[test]
    fn snaps_cut_payloads_keep_control_frames_and_say_so() {
        let mut r = Rewriter::new(rules(Snap { message: Some(10), session: Some(20) }, &[]), Scope::Session);
        session(&mut r);
        let input = [
            frame(TEXT_OPENS, &[b'a'; 6], true),         // a fragmented message: 6 ...
            frame(CONTINUATION_ENDS, &[b'b'; 20], true), // ... then 20, of which 4 fit the message's 10
            frame(PING, b"ping", true),                  // control frames stay whole
            frame(BINARY, &[b'c'; 40], true),            // 10 of the session's 20 are left
            frame(BINARY, &[b'd'; 5], true),             // and then nothing
            frame(CLOSE, &[3, 232], true),               // the close stays
        ]
        .concat();
        let (out, notes) = feed(&mut r, Dir::Up, &input, 9);
        let got: Vec<(u8, usize)> = frames_in(&out).iter().map(|(b, p)| (*b, p.len())).collect();
        assert_eq!(got, [(TEXT_OPENS, 6), (CONTINUATION_ENDS, 4), (PING, 4), (BINARY, 10), (BINARY, 0), (CLOSE, 2)]);
        assert!(notes.contains(&Note::FrameCut { kept: 4, len: 20, why: Cut::MaxMessage }), "{notes:?}");
        assert!(notes.contains(&Note::FrameCut { kept: 0, len: 5, why: Cut::MaxSession }), "{notes:?}");
    }

    #[test]
    fn payload_patterns_are_redacted_across_chunks_and_frames() {
        let mut r = Rewriter::new(rules(Snap::default(), &[r#""password":"[^"]*""#]), Scope::Session);
        session(&mut r);
        let secret = br#"{"user":"a","password":"hunter2","n":1}"#;
        let input = [
            frame(TEXT_OPENS, &secret[..20], true),
            frame(PING, b"x", true),
            frame(CONTINUATION_ENDS, &secret[20..], true),
        ]
        .concat();
        let (out, notes) = feed(&mut r, Dir::Up, &input, 5);
        assert_eq!(out.len(), input.len(), "lengths kept");
        let frames = frames_in(&out);
        let text: Vec<u8> =
            frames.iter().filter(|f| Opcode::from_bits(f.0) != Opcode::Ping).flat_map(|f| f.1.clone()).collect();
        assert_eq!(&text[..], br#"{"user":"a",********************,"n":1}"#);
        assert_eq!(frames[1], (PING, b"x".to_vec()), "the ping stays in its place");
        assert_eq!(notes, [Note::Redacted(Redaction::Payload { pattern: 0, matches: 1 })]);
    }

    #[test]
    fn plain_http_is_followed_heads_redacted_bodies_untouched_then_a_session() {
        let mut r = Rewriter::new(rules(Snap::default(), &[]), Scope::Connection);
        let up = [
            &b"POST /a HTTP/1.1\r\nCookie: c=1\r\nContent-Length: 6\r\n\r\nCookie"[..], // a body that looks like a field
            b"HEAD /b HTTP/1.1\r\n\r\n",
            UPGRADE,
            &frame(TEXT, b"hi", true),
        ]
        .concat();
        let down = [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nSet-\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nSet-Cookie: x\r\n\r\n", // a HEAD's answer: no body
            SWITCHED,
            &frame(TEXT, b"hello", false),
        ]
        .concat();
        let (u, _) = feed(&mut r, Dir::Up, &up, 3);
        let (d, notes) = feed(&mut r, Dir::Down, &down, 4);
        let after_101 =
            d.windows(SWITCHED.len()).position(|w| w.starts_with(b"HTTP/1.1 101")).unwrap() + SWITCHED.len();
        assert_eq!(frames_in(&d[after_101..])[0].1, b"hello");
        let (u, d) = (String::from_utf8_lossy(&u).into_owned(), String::from_utf8_lossy(&d).into_owned());
        assert!(u.contains("Cookie: ***\r\n") && u.contains("\r\n\r\nCookie"), "{u}");
        assert!(!u.contains("xyz") && !d.contains("sid=1") && d.contains("Set-Cookie: *\r\n"), "{d}");
        assert!(d.contains("\r\n4\r\nSet-\r\n0\r\n\r\n"), "the chunked body untouched: {d}");
        assert!(r.in_frames(Dir::Up) && r.in_frames(Dir::Down), "{notes:?}");
    }

    /// Payload patterns reach HTTP bodies: a match split across chunks, one in the
    /// trailers and one in a body of known length are blanked, lengths and the chunks'
    /// framing kept; a compressed body and one too large to hold are written blanked.
    #[test]
    fn payload_patterns_search_http_bodies_joined_across_chunks_and_their_trailers() {
        let mut r = Rewriter::new(rules(Snap::default(), &["hunter2", "s3cr3t"]), Scope::Connection);
        let up = [
            &b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"5\r\n{\"p\":\r\n6\r\n\"hunte\r\n3\r\nr2\"\r\n0\r\nX-Sig: s3cr3t\r\n\r\n",
            b"PUT /b HTTP/1.1\r\nContent-Length: 9\r\n\r\n[hunter2]",
            b"PUT /c HTTP/1.1\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nzzzz",
        ]
        .concat();
        for piece in [1, 7, up.len()] {
            let mut r = Rewriter::new(rules(Snap::default(), &["hunter2", "s3cr3t"]), Scope::Connection);
            let (out, notes) = feed(&mut r, Dir::Up, &up, piece);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text.len(), up.len(), "lengths kept");
            assert!(!text.contains("hunte") && !text.contains("s3cr3t") && !text.contains("zzzz"), "{text}");
            assert!(text.contains("6\r\n\"*****\r\n3\r\n**\"\r\n0\r\nX-Sig: ******\r\n\r\n"), "{text}");
            assert!(text.contains("[*******]PUT /c"), "{text}");
            assert!(notes.contains(&Note::BodyBlanked { len: 4, why: Cut::CompressedUnsearched }), "{notes:?}");
            assert!(r.at_boundary());
        }
        let big = [
            &b"POST /d HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n"[..],
            &vec![b'Q'; 1 << 20],
            b"\r\n0\r\n\r\n",
        ]
        .concat();
        let (out, notes) = feed(&mut r, Dir::Up, &big, 64 << 10);
        assert_eq!(out.len(), big.len());
        assert!(!out.contains(&b'Q') && out.ends_with(b"\r\n0\r\n\r\n"), "blanked, the framing kept");
        assert!(String::from_utf8_lossy(&out).contains("\r\n100000\r\n"));
        let len = (big.len() - 48) as u64;
        assert_eq!(notes, [Note::BodyBlanked { len, why: Cut::TooLargeToSearch { limit_mib: 1 } }]);
    }

    #[test]
    fn bytes_lost_at_no_frame_boundary_never_let_a_secret_through_or_garbage_in() {
        // HTTP followed from the first byte: bytes lost inside a body of known length cost
        // nothing; the next head is found, and redacted.
        let mut r = Rewriter::new(rules(Snap::default(), &[]), Scope::Connection);
        feed(&mut r, Dir::Up, b"POST /a HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789", 100);
        assert!(r.lose(Dir::Up, 90).runs.is_empty());
        let (out, notes) = feed(&mut r, Dir::Up, UPGRADE, 7);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("?token=*** HTTP/1.1") && !text.contains("xyz"), "{text}");
        assert_eq!(notes.len(), 2, "the query and the header redacted: {notes:?}");
        // Bytes lost inside a head: where it ends is unknown, so what was held of it and
        // everything after is blanked out.
        let mut r = Rewriter::new(rules(Snap::default(), &[]), Scope::Connection);
        feed(&mut r, Dir::Up, &UPGRADE[..30], 100);
        let held = r.lose(Dir::Up, 5);
        assert_eq!(held.bytes(&[]).len(), 30, "lengths kept");
        assert!(!String::from_utf8_lossy(&held.bytes(&[])).contains("token"), "nothing held leaks");
        assert!(held.notes.contains(&Note::Unframed(wstap_wire::http::FramingError::BytesLost)), "{:?}", held.notes);
        let (out, _) = feed(&mut r, Dir::Up, UPGRADE, 7);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.len(), UPGRADE.len(), "lengths kept");
        assert!(!text.contains("abc") && !text.contains("xyz") && !text.contains("Host"), "{text}");
        // Frames: bytes lost mid-frame leave no boundary to resume at; nothing more is written.
        let mut r = Rewriter::new(rules(Snap::default(), &[]), Scope::Session);
        session(&mut r);
        assert_eq!(r.lose(Dir::Up, 2).notes, [Note::Unreadable]);
        let (out, _) = feed(&mut r, Dir::Up, &frame(TEXT, b"hello", true)[3..], 4);
        assert!(out.is_empty());
    }

    #[test]
    fn a_head_that_does_not_parse_is_blanked_and_said_unframed_not_cut() {
        let mut r = Rewriter::new(rules(Snap::default(), &[]), Scope::Connection);
        let bad = b"GET /a?token=abc HTTP/1.1\r\nBad Header Name: x\r\n\r\nmore";
        let (out, notes) = feed(&mut r, Dir::Up, bad, 100);
        assert_eq!(out.len(), bad.len(), "lengths kept");
        assert!(!String::from_utf8_lossy(&out).contains("abc"), "nothing held leaks");
        assert!(matches!(notes[..], [Note::Unframed(wstap_wire::http::FramingError::BadHead(_))]), "{notes:?}");
        // A head that parses but whose framing is bad: blanked whole, lengths kept.
        let mut r = Rewriter::new(rules(Snap::default(), &[]), Scope::Connection);
        let bad = b"POST /a?token=abc HTTP/1.1\r\nContent-Length: ten\r\n\r\nbody";
        let (out, notes) = feed(&mut r, Dir::Up, bad, 7);
        assert_eq!(out.len(), bad.len(), "lengths kept");
        assert!(!String::from_utf8_lossy(&out).contains("abc"), "nothing held leaks");
        let why = wstap_wire::http::FramingError::BadContentLength("ten".into());
        assert_eq!(notes, [Note::Unframed(why)]);
    }

    /// A rewriter past an Upgrade whose 101 accepted permessage-deflate.
    fn deflate_session() -> Rewriter {
        let mut r = Rewriter::new(rules(Snap::default(), &[]), Scope::Session);
        feed(&mut r, Dir::Up, UPGRADE, 100);
        let switched = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n";
        feed(&mut r, Dir::Down, switched, 100);
        r
    }

    #[test]
    fn an_interim_response_before_the_101_is_a_head_and_the_101_is_redacted() {
        let mut r = Rewriter::new(rules(Snap::default(), &[]), Scope::Session);
        feed(&mut r, Dir::Up, UPGRADE, 100);
        let (out, notes) = feed(&mut r, Dir::Down, &[&b"HTTP/1.1 100 Continue\r\n\r\n"[..], SWITCHED].concat(), 9);
        assert!(!String::from_utf8_lossy(&out).contains("sid=1"), "{notes:?}");
        assert_eq!(notes, [Note::Redacted(Redaction::Header("set-cookie".into()))]);
        assert!(r.in_frames(Dir::Down));
    }

    #[test]
    fn a_gap_inside_a_head_or_a_searched_message_leaks_nothing() {
        // The Upgrade request cut by a gap: what was held is blanked out.
        let mut r = Rewriter::new(rules(Snap::default(), &["secret"]), Scope::Session);
        let (out, _) = feed(&mut r, Dir::Up, &UPGRADE[..40], 100);
        assert!(out.is_empty(), "a head is held until it is whole");
        let held = r.gap(&lost(Dir::Up, false));
        assert!(!String::from_utf8_lossy(&held.bytes(&[])).contains("token=abc"));
        // A message interrupted by a gap: its continuation is written without payload.
        let mut r = Rewriter::new(rules(Snap::default(), &["secret"]), Scope::Session);
        session(&mut r);
        r.gap(&lost(Dir::Up, false));
        let (out, _) = feed(&mut r, Dir::Up, &frame(CONTINUATION_ENDS, b"the secret", true), 100);
        assert_eq!(frames_in(&out), [(CONTINUATION_ENDS, vec![])]);
    }

    #[test]
    fn after_a_lost_window_compressed_messages_are_written_without_payload() {
        let mut r = deflate_session();
        assert!(r.deflate[Dir::Down].is_some());
        r.gap(&lost(Dir::Down, true));
        let input = [frame(TEXT_COMPRESSED, &[1, 2, 3, 4, 5], false), frame(TEXT, b"plain", false)].concat();
        let (out, notes) = feed(&mut r, Dir::Down, &input, 100);
        assert_eq!(frames_in(&out), [(TEXT_COMPRESSED, vec![]), (TEXT, b"plain".to_vec())]);
        assert_eq!(notes, [Note::FrameCut { kept: 0, len: 5, why: Cut::Undecodable(Loss::AtDrop) }]);
    }

    #[test]
    fn a_message_that_inflates_too_far_stops_the_following_not_the_writing() {
        use flate2::{Compress, Compression, FlushCompress};
        let mut r = deflate_session();
        let mut z = Compress::new(Compression::default(), false);
        let mut deflate = |text: &[u8]| {
            let mut out = Vec::with_capacity(text.len() / 100 + 64);
            z.compress_vec(text, &mut out, FlushCompress::Sync).unwrap();
            out.truncate(out.len() - 4);
            out
        };
        let bomb = frame(0xc2, &deflate(&vec![0u8; 64 << 20]), false);
        let (out, notes) = feed(&mut r, Dir::Down, &bomb, 1 << 16);
        assert_eq!(out, bomb, "written as it came: this file decodes it");
        assert!(notes.contains(&Note::DeflateUnfollowed { limit_mib: 8 }), "{notes:?}");
        let repeated = r.repeated(Audience::File);
        assert!(!repeated.restores_deflate(), "a new file: the heads, but no window to give it");
        assert_eq!(repeated.sent().len(), 2);
        let next = frame(TEXT_COMPRESSED, &deflate(b"after"), false);
        let (out, notes) = feed(&mut r, Dir::Down, &next, 100);
        assert_eq!(frames_in(&out), [(TEXT_COMPRESSED, vec![])]);
        let len = FrameHeader::parse(&next).unwrap().len;
        assert_eq!(notes[0], Note::FrameCut { kept: 0, len, why: Cut::Undecodable(Loss::NotFollowed) });
    }

    #[test]
    fn a_message_too_large_to_search_is_written_without_its_payload() {
        let mut r = Rewriter::new(rules(Snap::default(), &["secret"]), Scope::Session);
        session(&mut r);
        let big = frame(BINARY, &vec![b's'; MAX_HELD + 10], true);
        let (out, notes) = feed(&mut r, Dir::Up, &big, 64 * 1024);
        assert_eq!(frames_in(&out), [(BINARY, vec![])]);
        let len = (MAX_HELD + 10) as u64;
        assert_eq!(notes, [Note::FrameCut { kept: 0, len, why: Cut::TooLargeToSearch { limit_mib: 1 } }]);
    }
}
