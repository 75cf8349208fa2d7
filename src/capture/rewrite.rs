//! What the writer makes of one leg's bytes before they become packets. It follows each
//! direction's stream in one pass: HTTP heads (masked as `capture.redact` says, and kept
//! for the replays that open later files), the bodies after them (by their framing, on a
//! leg recorded from its first byte), then WebSocket frames. Frames are written as they
//! came unless a rule says otherwise, and then the frame's header is rewritten to the
//! payload it keeps, with a comment giving the real length, so that Wireshark decodes
//! every frame:
//!
//! - `max_message_bytes`, `max_session_bytes`: payloads cut (compressed messages are kept
//!   whole or not at all: a cut one would not inflate, and with context takeover would
//!   break every message after it);
//! - a compressed message after the capture lost the deflate window (a drop), or while
//!   payload patterns are set (compressed payloads are not searched): written without
//!   its payload, with a comment;
//! - payload patterns: each message is held until it is whole (up to 1 MiB), masked, and
//!   written in its frames again.
//!
//! The stream written can be shorter than the real one; the writer accounts for that.
//! Pure: bytes in, runs of bytes and comments out.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use crate::capture::redact;
use crate::config::{Redact, Snap};
use wstap_wire::deflate::{self, Allowance, LOST_AT_DROP, NOT_FOLLOWED};
use wstap_wire::dir::{Dir, PerDir};
use wstap_wire::http;
use wstap_wire::wsframe::{apply_mask, FrameHeader, FrameTracker, Walk};

/// The longest HTTP head held to be masked; a longer one is masked whole (the client
/// leg's probe ring, which every connection has, is of the same size).
const MAX_HEAD: usize = 128 * 1024;
/// The most of a head kept for replays in later files.
const MAX_PRELUDE: usize = 64 * 1024;
/// The longest message held to search for payload patterns; a longer one is written
/// without its payload.
const MAX_HELD: usize = 1 << 20;
/// The longest chunk-size line followed.
const MAX_CHUNK_LINE: usize = 1024;
/// Requests remembered while their responses are awaited (pipelining).
const MAX_PENDING: usize = 64;

/// The rules a leg is written by.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) redact: Arc<Redact>,
    pub(crate) snap: Snap,
}

/// Bytes to write: a range of the input, or bytes made instead.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Run {
    Kept(Range<usize>),
    Made(Vec<u8>),
}

/// What feeding bytes gave: runs to write, in order, and comments for their packets.
#[derive(Debug, Default)]
pub(crate) struct Fed {
    pub(crate) runs: Vec<Run>,
    pub(crate) notes: Vec<String>,
}

impl Fed {
    fn keep(&mut self, r: Range<usize>) {
        if r.is_empty() {
            return;
        }
        if let Some(Run::Kept(last)) = self.runs.last_mut() {
            if last.end == r.start {
                last.end = r.end;
                return;
            }
        }
        self.runs.push(Run::Kept(r));
    }

    fn make(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.runs.push(Run::Made(bytes));
        }
    }

    fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// The bytes to write, from `input` (borrowed when nothing was made).
    pub(crate) fn bytes<'a>(&self, input: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        match self.runs.as_slice() {
            [] => std::borrow::Cow::Borrowed(&[]),
            [Run::Kept(r)] => std::borrow::Cow::Borrowed(&input[r.clone()]),
            runs => {
                let mut out = Vec::with_capacity(input.len() + 16);
                for r in runs {
                    out.extend_from_slice(match r {
                        Run::Kept(r) => &input[r.clone()],
                        Run::Made(b) => &b[..],
                    });
                }
                std::borrow::Cow::Owned(out)
            }
        }
    }
}

/// A leg's two streams as the writer rewrites them.
pub(crate) struct Rewriter {
    dirs: PerDir<Side>,
    rules: Rules,
    /// The leg is followed from its first byte (plain HTTP, then maybe a session),
    /// rather than from a session's Upgrade request.
    follow_http: bool,
    /// Requests sent whose responses have not come: whether each was a HEAD.
    pending: VecDeque<bool>,
    /// Each direction's permessage-deflate context, when it is kept across messages.
    pub(crate) deflate: PerDir<Option<deflate::Context>>,
    /// Each direction's last head, as written: what a new file replays.
    pub(crate) prelude: PerDir<Vec<u8>>,
}

/// One direction.
struct Side {
    stage: Stage,
    /// Payload bytes still allowed by `max_session_bytes`.
    session_left: Option<u64>,
    message: Message,
}

enum Stage {
    /// In an HTTP head: its bytes so far.
    Head(Vec<u8>),
    /// A head too long to follow: masked until its blank line (the last bytes seen).
    HeadMasked(u32),
    /// After an Upgrade request on a leg followed from its first byte: frames if the
    /// next byte is not a letter (a request starts with its method).
    Undecided,
    /// A body of known length.
    Body(u64),
    /// A chunked body.
    Chunked(Chunk),
    /// A response body that runs to the end of the connection.
    Rest,
    /// The HTTP framing could not be followed: everything is masked (and said once,
    /// when `true`).
    Lost(bool),
    /// Bytes were lost where no frame boundary was known: nothing more is written.
    Unreadable,
    /// WebSocket frames.
    Frames(FrameTracker),
}

enum Chunk {
    Size(Vec<u8>),
    Data(u64),
    /// The line end after a chunk's data: bytes of it left.
    DataEnd(u8),
    /// Trailer fields: whether at the start of a line.
    Trailers(bool),
}

/// The data message being written.
#[derive(Default)]
struct Message {
    compressed: bool,
    /// Payload bytes still allowed by `max_message_bytes`.
    left: Option<u64>,
    /// Why its payload is not written at all.
    removed: Option<&'static str>,
    /// Its frames, held until it is whole (payload patterns).
    held: Option<Vec<Held>>,
    held_bytes: usize,
    /// Payload bytes written of the frame going on.
    frame_keep: u64,
}

/// A held frame: its header, and its payload (unmasked, for a data frame).
struct Held {
    header: FrameHeader,
    raw_header: Vec<u8>,
    payload: Vec<u8>,
}

impl Rewriter {
    /// A leg written by `rules`, followed from a session's Upgrade request or, with
    /// `follow_http`, from its first byte.
    pub(crate) fn new(rules: Rules, follow_http: bool) -> Rewriter {
        let side =
            || Side { stage: Stage::Head(Vec::new()), session_left: rules.snap.session, message: Message::default() };
        Rewriter {
            dirs: PerDir::new(side(), side()),
            rules,
            follow_http,
            pending: VecDeque::new(),
            deflate: PerDir::default(),
            prelude: PerDir::default(),
        }
    }

    /// New rules (a session starts on a leg recorded from its first byte).
    pub(crate) fn set_rules(&mut self, rules: Rules) {
        for dir in Dir::BOTH {
            self.dirs[dir].session_left = rules.snap.session;
        }
        self.rules = rules;
    }

    /// Rewrites `input`, the next bytes going `dir`.
    pub(crate) fn feed(&mut self, dir: Dir, input: &[u8], allowance: &mut Allowance) -> Fed {
        let mut fed = Fed::default();
        let mut at = 0;
        while at < input.len() {
            at = self.step(dir, input, at, &mut fed, allowance);
        }
        fed
    }

    /// Between frames (or heads) in both directions, nothing held: where a file may end.
    pub(crate) fn at_boundary(&self) -> bool {
        Dir::BOTH.iter().all(|d| self.side_at_boundary(*d))
    }

    /// Between frames (or heads) going `dir`, nothing held.
    pub(crate) fn side_at_boundary(&self, dir: Dir) -> bool {
        let side = &self.dirs[dir];
        match &side.stage {
            Stage::Head(buf) => buf.is_empty(),
            Stage::Frames(t) => t.at_boundary() && side.message.held.is_none(),
            _ => true,
        }
    }

    /// Where, in `bytes` (the next going `dir`), the next frame boundary is, if there is
    /// one and a file may end there.
    pub(crate) fn boundary_in(&self, dir: Dir, bytes: &[u8]) -> Option<usize> {
        let side = &self.dirs[dir];
        let Stage::Frames(t) = &side.stage else { return None };
        if side.message.held.is_some() {
            return None;
        }
        let mut probe = t.clone();
        let cut = probe.advance(bytes, true, |_| {});
        probe.at_boundary().then_some(cut)
    }

    /// The direction lost bytes up to a frame boundary (the tap saw to that); `compressed`:
    /// some of them were compressed, so the shared deflate window is lost.
    pub(crate) fn gap(&mut self, dir: Dir, compressed: bool) -> Fed {
        let mut fed = self.flush(dir);
        let side = &mut self.dirs[dir];
        match &mut side.stage {
            Stage::Frames(t) => *t = FrameTracker::between_frames(),
            Stage::Head(buf) => {
                // A head cut by the gap: what was held of it is written masked, and the
                // frames after the gap follow (a session), or nothing can be followed.
                let mut head = std::mem::take(buf);
                head.iter_mut().filter(|b| **b != b'\r' && **b != b'\n').for_each(|b| *b = b'*');
                if !head.is_empty() {
                    fed.make(head);
                    fed.note("an HTTP head cut by a capture gap: masked".into());
                }
                side.stage = if self.follow_http { Stage::Lost(false) } else { frames() };
            }
            _ => {}
        }
        // The rest of an interrupted message may follow: its continuation frames cannot
        // be searched for payload patterns, so they are written without payload.
        let patterns = !self.rules.redact.payload.is_empty();
        side.message = Message {
            removed: patterns.then_some("its message began before a capture gap, so it cannot be searched"),
            ..Message::default()
        };
        if compressed {
            if let Some(ctx) = &mut self.deflate[dir] {
                ctx.lose_window(LOST_AT_DROP);
            }
        }
        fed
    }

    /// The stream going `dir` lost bytes at no known boundary (a connection recorded
    /// without frame tracking): its framing cannot be followed any more. HTTP is masked
    /// from here on (a head could hide in what follows); frames are no longer written
    /// (they would decode as garbage). A body running to the close is unaffected.
    pub(crate) fn lose(&mut self, dir: Dir) -> Fed {
        let mut fed = self.flush(dir);
        let side = &mut self.dirs[dir];
        side.message = Message::default();
        side.stage = match side.stage {
            Stage::Rest => Stage::Rest,
            Stage::Frames(_) | Stage::Unreadable => {
                fed.note("bytes lost where no frame boundary was known: the rest of this stream is not written".into());
                Stage::Unreadable
            }
            _ => Stage::Lost(false),
        };
        if let Some(ctx) = &mut self.deflate[dir] {
            ctx.lose_window(LOST_AT_DROP);
        }
        fed
    }

    /// Writes what is held going `dir` (a message held for the payload patterns) as it
    /// stands: a gap took the rest, or the leg ends.
    pub(crate) fn flush(&mut self, dir: Dir) -> Fed {
        let mut fed = Fed::default();
        let side = &mut self.dirs[dir];
        let mut writing =
            Writing { m: &mut side.message, session_left: &mut side.session_left, rules: &self.rules, fed: &mut fed };
        writing.flush();
        fed
    }

    /// What a new file replays for this leg: each direction's head, then (after the 101,
    /// where Wireshark decodes frames) a message restoring each kept deflate context.
    /// `new_file`: a window no longer followed is lost from here on (the file's reader
    /// cannot be given it); otherwise (a live subscriber joining) nothing changes.
    pub(crate) fn replay_parts(&mut self, new_file: bool) -> Vec<(Dir, Vec<u8>)> {
        let mut parts: Vec<(Dir, Vec<u8>)> = self.prelude.iter().map(|(dir, head)| (dir, head.clone())).collect();
        for dir in Dir::BOTH.into_iter().filter(|_| new_file) {
            if let Some(ctx) = self.deflate[dir].as_mut() {
                ctx.new_file();
            }
        }
        for (dir, ctx) in self.deflate.iter() {
            // A client's frames are masked.
            if let Some(frame) = ctx.as_ref().and_then(|c| c.priming_frame(dir == Dir::Up)) {
                parts.push((dir, frame));
            }
        }
        parts
    }

    /// Whether the direction is past its heads, in WebSocket frames.
    #[cfg(test)]
    pub(crate) fn in_frames(&self, dir: Dir) -> bool {
        matches!(self.dirs[dir].stage, Stage::Frames(_))
    }

    /// One step of `input` from `at`; returns where the next begins.
    fn step(&mut self, dir: Dir, input: &[u8], at: usize, fed: &mut Fed, allowance: &mut Allowance) -> usize {
        let rest = &input[at..];
        match &mut self.dirs[dir].stage {
            Stage::Head(_) => self.head(dir, input, at, fed),
            Stage::HeadMasked(tail) => {
                let (n, done) = masked_head(rest, tail, fed);
                if done {
                    // Its framing is unknown: a session's frames follow; otherwise lost.
                    self.dirs[dir].stage = if self.follow_http { Stage::Lost(false) } else { frames() };
                }
                at + n
            }
            Stage::Undecided => {
                self.dirs[dir].stage = if rest[0].is_ascii_uppercase() { Stage::Head(Vec::new()) } else { frames() };
                at
            }
            Stage::Body(left) => {
                let n = (*left).min(rest.len() as u64) as usize;
                *left -= n as u64;
                if *left == 0 {
                    self.dirs[dir].stage = Stage::Head(Vec::new());
                }
                fed.keep(at..at + n);
                at + n
            }
            Stage::Chunked(chunk) => {
                let (n, next) = chunked(chunk, rest);
                fed.keep(at..at + n);
                if let Some(next) = next {
                    self.dirs[dir].stage = next;
                }
                at + n
            }
            Stage::Rest => {
                fed.keep(at..input.len());
                input.len()
            }
            Stage::Lost(said) => {
                let mut masked = rest.to_vec();
                masked.iter_mut().filter(|b| **b != b'\r' && **b != b'\n').for_each(|b| *b = b'*');
                fed.make(masked);
                if !std::mem::replace(said, true) {
                    fed.note("wstap could not follow this stream's HTTP framing: the rest of it is masked".into());
                }
                input.len()
            }
            Stage::Unreadable => input.len(),
            Stage::Frames(_) => self.frames(dir, input, at, fed, allowance),
        }
    }

    /// Bytes of a head: held until it is whole, then masked and written.
    fn head(&mut self, dir: Dir, input: &[u8], at: usize, fed: &mut Fed) -> usize {
        let Stage::Head(buf) = &mut self.dirs[dir].stage else { return at };
        let before = buf.len();
        let search_from = before.saturating_sub(3);
        buf.extend_from_slice(&input[at..]);
        let Some(end) = buf[search_from..].windows(4).position(|w| w == b"\r\n\r\n").map(|i| search_from + i + 4)
        else {
            if buf.len() > MAX_HEAD {
                // Too long to follow: masked whole, to its blank line.
                let mut head = std::mem::take(buf);
                let tail = head[head.len() - 4..].iter().fold(0u32, |t, b| (t << 8) | u32::from(*b));
                head.iter_mut().filter(|b| **b != b'\r' && **b != b'\n').for_each(|b| *b = b'*');
                fed.make(head);
                fed.note(format!("an HTTP head of more than {MAX_HEAD} bytes: masked whole"));
                self.dirs[dir].stage = Stage::HeadMasked(tail);
            }
            return input.len();
        };
        let mut head = std::mem::take(buf);
        head.truncate(end);
        let consumed = at + (end - before);
        for what in redact::head(&mut head, &self.rules.redact) {
            fed.note(format!("redacted {what}"));
        }
        self.prelude[dir] = head[..head.len().min(MAX_PRELUDE)].to_vec();
        let next = self.after_head(dir, &head);
        fed.make(head);
        self.dirs[dir].stage = next;
        consumed
    }

    /// What follows a complete head going `dir`.
    fn after_head(&mut self, dir: Dir, head: &[u8]) -> Stage {
        if dir == Dir::Down {
            if let Some(keep) = deflate::takeover(head).filter(|_| head.windows(4).any(|w| w == b" 101")) {
                self.deflate = keep.map(|_, keep| keep.then(deflate::Context::new));
            }
        }
        if !self.follow_http {
            // A session's Upgrade request and its 101: frames follow both. An interim
            // response (100, 103) before the 101 is a head of its own.
            let interim = dir == Dir::Down
                && http::response(head)
                    .ok()
                    .flatten()
                    .is_some_and(|r| (100..200).contains(&r.status) && r.status != 101);
            return if interim { Stage::Head(Vec::new()) } else { frames() };
        }
        match dir {
            Dir::Up => self.after_request(head),
            Dir::Down => self.after_response(head),
        }
    }

    fn after_request(&mut self, head: &[u8]) -> Stage {
        let Ok(Some(req)) = http::request(head) else { return Stage::Lost(false) };
        if self.pending.len() >= MAX_PENDING {
            // More requests ahead of their responses than followed: which response has
            // no body (HEAD) is unknown from here, so nothing more can be followed.
            return Stage::Lost(false);
        }
        self.pending.push_back(req.method == "HEAD");
        if req.has_token("upgrade", "websocket") {
            return Stage::Undecided;
        }
        body_stage(&req, false)
    }

    fn after_response(&mut self, head: &[u8]) -> Stage {
        let Ok(Some(res)) = http::response(head) else { return Stage::Lost(false) };
        if res.status == 101 {
            self.pending.pop_front();
            return frames();
        }
        if (100..200).contains(&res.status) {
            return Stage::Head(Vec::new());
        }
        let to_head = self.pending.pop_front().unwrap_or(false);
        body_stage(&res, to_head || res.status == 204 || res.status == 304)
    }

    /// Frames going `dir`, from `at` in `input`.
    fn frames(&mut self, dir: Dir, input: &[u8], at: usize, fed: &mut Fed, allowance: &mut Allowance) -> usize {
        let (dirs, deflate, rules) = (&mut self.dirs, &mut self.deflate, &self.rules);
        let side = &mut dirs[dir];
        let Stage::Frames(tracker) = &mut side.stage else { return at };
        let mut writing = Writing { m: &mut side.message, session_left: &mut side.session_left, rules, fed };
        let ctx = &mut deflate[dir];
        let consumed = tracker.walk(&input[at..], false, |w| writing.walk(w, &input[at..], at, ctx, allowance));
        at + consumed
    }
}

/// The frames of one direction being written: the walk's steps become runs.
struct Writing<'a> {
    m: &'a mut Message,
    session_left: &'a mut Option<u64>,
    rules: &'a Rules,
    fed: &'a mut Fed,
}

impl Writing<'_> {
    /// One step of the frame walk over `data` (which starts `base` bytes into the input).
    fn walk(
        &mut self,
        w: Walk<'_>,
        data: &[u8],
        base: usize,
        ctx: &mut Option<deflate::Context>,
        allowance: &mut Allowance,
    ) {
        match w {
            Walk::Header(h, raw) => {
                // Where the header lies in the input, when it lies there whole (one that
                // straddled two inputs comes from the tracker's own buffer).
                let at = (raw.as_ptr() as usize).wrapping_sub(data.as_ptr() as usize);
                let within =
                    (at <= data.len() && data.len() - at >= raw.len()).then(|| base + at..base + at + raw.len());
                self.header(h, raw, within, ctx)
            }
            Walk::Payload(h, range, pos, end) => {
                let piece = &data[range.clone()];
                if let Some(ctx) = ctx.as_mut().filter(|_| !h.opcode.is_control()) {
                    let followed = ctx.unfollowed().is_none();
                    feed_deflate(ctx, &h, piece, pos, end, allowance);
                    if followed && ctx.unfollowed().is_some() {
                        self.fed.note(format!(
                            "{NOT_FOLLOWED}: a message inflated past {} MiB, or the writer's inflating allowance \
                             was spent; this file decodes, the next ones will not decode its compressed messages",
                            deflate::MAX_FOLLOWED_MESSAGE >> 20
                        ));
                    }
                }
                self.payload(h, range.start + base, piece, pos);
                if end && !h.opcode.is_control() && h.fin && self.m.held.is_some() {
                    self.release_held(false);
                }
            }
        }
    }

    /// A frame begins: decide what of it is written, and write its header (or hold it).
    fn header(&mut self, h: FrameHeader, raw: &[u8], within: Option<Range<usize>>, ctx: &Option<deflate::Context>) {
        if h.opcode.starts_message() {
            if self.m.held.is_some() {
                self.release_held(false); // the previous message never finished
            }
            *self.m = self.start_message(h, ctx);
        }
        if let Some(held) = self.m.held.as_mut() {
            held.push(Held { header: h, raw_header: raw.to_vec(), payload: Vec::new() });
            self.m.frame_keep = h.len;
            return;
        }
        let keep = self.kept(&h);
        self.m.frame_keep = keep;
        match within {
            // Written as it came: a run of the input, not a copy.
            Some(range) if keep == h.len => self.fed.keep(range),
            _ => self.write_header(&h, raw, keep),
        }
    }

    fn write_header(&mut self, h: &FrameHeader, raw: &[u8], keep: u64) {
        if keep == h.len {
            self.fed.make(raw.to_vec());
            return;
        }
        self.fed.make(FrameHeader::encode(raw[0], keep, h.mask));
        let why = match self.m.removed {
            Some(why) => why,
            None if *self.session_left == Some(0) && self.m.left.is_none_or(|l| l > 0) => "max_session_bytes",
            None => "max_message_bytes",
        };
        self.fed.note(format!("a WebSocket frame written with {keep} of its {} payload bytes ({why})", h.len));
    }

    /// What a data message starting with frame `h` is written as.
    fn start_message(&mut self, h: FrameHeader, ctx: &Option<deflate::Context>) -> Message {
        let patterns = !self.rules.redact.payload.is_empty();
        let mut m = Message { compressed: h.rsv1, left: self.rules.snap.message, ..Message::default() };
        if h.rsv1 {
            m.left = None; // a compressed message is kept whole or not at all
            m.removed = if let Some(why) = ctx.as_ref().and_then(|c| c.window_lost()) {
                Some(if why == LOST_AT_DROP {
                    "not decodable (window lost at drop)"
                } else {
                    "not decodable (wstap stopped following this direction's compression)"
                })
            } else if patterns {
                Some("compressed, and capture.redact.payload is set: wstap does not search compressed messages")
            } else if *self.session_left == Some(0) {
                Some("max_session_bytes")
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
                self.release_held(true);
            }
            return;
        }
        let end = (pos + piece.len() as u64).min(self.m.frame_keep);
        if end > pos {
            self.fed.keep(start..start + (end - pos) as usize);
        }
    }

    /// Writes the held frames: masked where the payload patterns match, or, when the
    /// message grew too large to hold, without their payloads.
    fn release_held(&mut self, too_big: bool) {
        let frames = self.m.held.take().unwrap_or_default();
        self.m.held_bytes = 0;
        if too_big {
            self.m.removed = Some("too large to search for payload patterns (more than 1 MiB)");
            self.m.frame_keep = 0;
        }
        let mut text: Vec<u8> =
            frames.iter().filter(|f| !f.header.opcode.is_control()).flat_map(|f| f.payload.iter().copied()).collect();
        if !too_big {
            for what in redact::payload(&mut text, &self.rules.redact) {
                self.fed.note(format!("redacted {what}"));
            }
        }
        let mut at = 0;
        for f in frames {
            let mut payload = if !f.header.opcode.is_control() {
                at += f.payload.len();
                text[at - f.payload.len()..at].to_vec()
            } else {
                f.payload
            };
            let keep = if too_big && !f.header.opcode.is_control() { 0 } else { self.kept(&f.header) };
            self.write_header(&f.header, &f.raw_header, keep);
            payload.truncate(keep as usize);
            if let Some(key) = f.header.mask {
                apply_mask(&mut payload, key, 0);
            }
            self.fed.make(payload);
        }
    }

    /// The message held is written as it stands (a gap took the rest, or the leg ends).
    fn flush(&mut self) {
        if self.m.held.is_some() {
            self.release_held(false);
        }
    }
}

/// Feeds a piece of payload, unmasked, to the direction's deflate context.
fn feed_deflate(
    ctx: &mut deflate::Context,
    h: &FrameHeader,
    piece: &[u8],
    pos: u64,
    end: bool,
    allowance: &mut Allowance,
) {
    match h.mask {
        Some(key) => {
            let mut unmasked = piece.to_vec();
            apply_mask(&mut unmasked, key, pos);
            ctx.feed(h, &unmasked, end, allowance);
        }
        None => ctx.feed(h, piece, end, allowance),
    }
}

fn frames() -> Stage {
    Stage::Frames(FrameTracker::between_frames())
}

/// What follows a head: its body, by its framing (none, if `no_body`).
fn body_stage(head: &http::Head, no_body: bool) -> Stage {
    if no_body {
        return Stage::Head(Vec::new());
    }
    if head.has_token("transfer-encoding", "chunked") {
        return Stage::Chunked(Chunk::Size(Vec::new()));
    }
    match head.field("content-length").map(|v| v.trim().parse::<u64>()) {
        Some(Ok(0)) => Stage::Head(Vec::new()),
        Some(Ok(n)) => Stage::Body(n),
        Some(Err(_)) => Stage::Lost(false),
        None if head.status == 0 => Stage::Head(Vec::new()),
        None => Stage::Rest,
    }
}

/// Bytes of a head too long to follow, masked, up to its blank line: (bytes consumed,
/// whether the head ended).
fn masked_head(rest: &[u8], tail: &mut u32, fed: &mut Fed) -> (usize, bool) {
    let mut out = Vec::with_capacity(rest.len());
    for (i, b) in rest.iter().enumerate() {
        *tail = (*tail << 8) | u32::from(*b);
        out.push(if *b == b'\r' || *b == b'\n' { *b } else { b'*' });
        if *tail == u32::from_be_bytes(*b"\r\n\r\n") {
            fed.make(out);
            return (i + 1, true);
        }
    }
    fed.make(out);
    (rest.len(), false)
}

/// Follows a chunked body over `rest`: (bytes it consumed, the stage after it, if it ends).
fn chunked(chunk: &mut Chunk, rest: &[u8]) -> (usize, Option<Stage>) {
    match chunk {
        Chunk::Size(line) => {
            let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
                line.extend_from_slice(rest);
                let lost = line.len() > MAX_CHUNK_LINE;
                return (rest.len(), lost.then_some(Stage::Lost(false)));
            };
            line.extend_from_slice(&rest[..nl]);
            let size = std::str::from_utf8(line)
                .ok()
                .and_then(|l| u64::from_str_radix(l.trim_end_matches('\r').split(';').next()?.trim(), 16).ok());
            *chunk = match size {
                Some(0) => Chunk::Trailers(true),
                Some(n) => Chunk::Data(n),
                None => return (nl + 1, Some(Stage::Lost(false))),
            };
            (nl + 1, None)
        }
        Chunk::Data(left) => {
            let n = (*left).min(rest.len() as u64);
            *left -= n;
            if *left == 0 {
                *chunk = Chunk::DataEnd(2);
            }
            (n as usize, None)
        }
        Chunk::DataEnd(left) => {
            let n = usize::from(*left).min(rest.len());
            *left -= n as u8;
            if *left == 0 {
                *chunk = Chunk::Size(Vec::new());
            }
            (n, None)
        }
        Chunk::Trailers(line_start) => {
            for (i, b) in rest.iter().enumerate() {
                match b {
                    b'\n' if *line_start => return (i + 1, Some(Stage::Head(Vec::new()))),
                    b'\n' => *line_start = true,
                    b'\r' => {}
                    _ => *line_start = false,
                }
            }
            (rest.len(), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /chat?token=abc HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer xyz\r\n\
        Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    const SWITCHED: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nSet-Cookie: sid=1\r\n\r\n";

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
    fn feed(r: &mut Rewriter, dir: Dir, input: &[u8], piece: usize) -> (Vec<u8>, Vec<String>) {
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
        assert_eq!(notes, ["redacted query token", "redacted header authorization"]);
        let (res, notes) = feed(r, Dir::Down, SWITCHED, 1000);
        assert!(!String::from_utf8_lossy(&res).contains("sid=1") && res.len() == SWITCHED.len());
        assert_eq!(notes, ["redacted header set-cookie"]);
        assert!(r.in_frames(Dir::Up) && r.in_frames(Dir::Down));
        assert!(!String::from_utf8_lossy(&r.prelude[Dir::Up]).contains("xyz"), "what later files replay is masked");
    }

    #[test]
    fn heads_are_masked_and_frames_pass_untouched_by_default() {
        let mut r = Rewriter::new(rules(Snap::default(), &[]), false);
        session(&mut r);
        let frames = [frame(0x81, b"hello", true), frame(0x89, b"p", true), frame(0x82, &[7; 300], true)].concat();
        let fed = r.feed(Dir::Up, &frames, &mut Allowance::new(u64::MAX));
        assert_eq!(fed.runs.len(), 6, "each header made again, each payload kept in place: {:?}", fed.runs);
        assert_eq!(&fed.bytes(&frames)[..], &frames[..], "every byte as it came");
        assert!(fed.notes.is_empty());
    }

    #[test]
    fn snaps_cut_payloads_keep_control_frames_and_say_so() {
        let mut r = Rewriter::new(rules(Snap { message: Some(10), session: Some(20) }, &[]), false);
        session(&mut r);
        let input = [
            frame(0x01, &[b'a'; 6], true),  // a fragmented message: 6 ...
            frame(0x80, &[b'b'; 20], true), // ... then 20, of which 4 fit the message's 10
            frame(0x89, b"ping", true),     // control frames stay whole
            frame(0x82, &[b'c'; 40], true), // 10 of the session's 20 are left
            frame(0x82, &[b'd'; 5], true),  // and then nothing
            frame(0x88, &[3, 232], true),   // the close stays
        ]
        .concat();
        let (out, notes) = feed(&mut r, Dir::Up, &input, 9);
        let got: Vec<(u8, usize)> = frames_in(&out).iter().map(|(b, p)| (*b, p.len())).collect();
        assert_eq!(got, [(0x01, 6), (0x80, 4), (0x89, 4), (0x82, 10), (0x82, 0), (0x88, 2)]);
        assert!(notes.iter().any(|n| n.contains("4 of its 20 payload bytes (max_message_bytes)")), "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("0 of its 5 payload bytes (max_session_bytes)")), "{notes:?}");
    }

    #[test]
    fn payload_patterns_are_masked_across_chunks_and_frames() {
        let mut r = Rewriter::new(rules(Snap::default(), &[r#""password":"[^"]*""#]), false);
        session(&mut r);
        let secret = br#"{"user":"a","password":"hunter2","n":1}"#;
        let input =
            [frame(0x01, &secret[..20], true), frame(0x89, b"x", true), frame(0x80, &secret[20..], true)].concat();
        let (out, notes) = feed(&mut r, Dir::Up, &input, 5);
        assert_eq!(out.len(), input.len(), "lengths kept");
        let frames = frames_in(&out);
        let text: Vec<u8> = frames.iter().filter(|f| f.0 & 0x0f != 9).flat_map(|f| f.1.clone()).collect();
        assert_eq!(&text[..], br#"{"user":"a",********************,"n":1}"#);
        assert_eq!(frames[1], (0x89, b"x".to_vec()), "the ping stays in its place");
        assert_eq!(notes, ["redacted payload pattern 0"]);
    }

    #[test]
    fn plain_http_is_followed_heads_masked_bodies_untouched_then_a_session() {
        let mut r = Rewriter::new(rules(Snap::default(), &[]), true);
        let up = [
            &b"POST /a HTTP/1.1\r\nCookie: c=1\r\nContent-Length: 6\r\n\r\nCookie"[..], // a body that looks like a field
            b"HEAD /b HTTP/1.1\r\n\r\n",
            UPGRADE,
            &frame(0x81, b"hi", true),
        ]
        .concat();
        let down = [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nSet-\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nSet-Cookie: x\r\n\r\n", // a HEAD's answer: no body
            SWITCHED,
            &frame(0x81, b"hello", false),
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

    #[test]
    fn bytes_lost_at_no_boundary_never_let_a_secret_through_or_garbage_in() {
        // HTTP followed from the first byte: a body of known length loses bytes, so where
        // the next head begins is unknown; everything after is masked.
        let mut r = Rewriter::new(rules(Snap::default(), &[]), true);
        feed(&mut r, Dir::Up, b"POST /a HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789", 100);
        r.lose(Dir::Up);
        let (out, notes) = feed(&mut r, Dir::Up, UPGRADE, 7);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.len(), UPGRADE.len(), "lengths kept");
        assert!(!text.contains("abc") && !text.contains("xyz") && !text.contains("Host"), "{text}");
        assert!(notes[0].contains("could not follow"), "{notes:?}");
        // Frames: bytes lost mid-frame leave no boundary to resume at; nothing more is written.
        let mut r = Rewriter::new(rules(Snap::default(), &[]), false);
        session(&mut r);
        r.lose(Dir::Up);
        let (out, _) = feed(&mut r, Dir::Up, &frame(0x81, b"hello", true)[3..], 4);
        assert!(out.is_empty());
    }

    /// A rewriter past an Upgrade whose 101 accepted permessage-deflate.
    fn deflate_session() -> Rewriter {
        let mut r = Rewriter::new(rules(Snap::default(), &[]), false);
        feed(&mut r, Dir::Up, UPGRADE, 100);
        let switched = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n";
        feed(&mut r, Dir::Down, switched, 100);
        r
    }

    #[test]
    fn an_interim_response_before_the_101_is_a_head_and_the_101_is_masked() {
        let mut r = Rewriter::new(rules(Snap::default(), &[]), false);
        feed(&mut r, Dir::Up, UPGRADE, 100);
        let (out, notes) = feed(&mut r, Dir::Down, &[&b"HTTP/1.1 100 Continue\r\n\r\n"[..], SWITCHED].concat(), 9);
        assert!(!String::from_utf8_lossy(&out).contains("sid=1"), "{notes:?}");
        assert_eq!(notes, ["redacted header set-cookie"]);
        assert!(r.in_frames(Dir::Down));
    }

    #[test]
    fn a_gap_inside_a_head_or_a_searched_message_leaks_nothing() {
        // The Upgrade request cut by a gap: what was held is masked.
        let mut r = Rewriter::new(rules(Snap::default(), &["secret"]), false);
        let (out, _) = feed(&mut r, Dir::Up, &UPGRADE[..40], 100);
        assert!(out.is_empty(), "a head is held until it is whole");
        let held = r.gap(Dir::Up, false);
        assert!(!String::from_utf8_lossy(&held.bytes(&[])).contains("token=abc"));
        // A message interrupted by a gap: its continuation is written without payload.
        let mut r = Rewriter::new(rules(Snap::default(), &["secret"]), false);
        session(&mut r);
        r.gap(Dir::Up, false);
        let (out, _) = feed(&mut r, Dir::Up, &frame(0x80, b"the secret", true), 100);
        assert_eq!(frames_in(&out), [(0x80, vec![])]);
    }

    #[test]
    fn after_a_lost_window_compressed_messages_are_written_without_payload() {
        let mut r = deflate_session();
        assert!(r.deflate[Dir::Down].is_some());
        r.gap(Dir::Down, true);
        let input = [frame(0xc1, &[1, 2, 3, 4, 5], false), frame(0x81, b"plain", false)].concat();
        let (out, notes) = feed(&mut r, Dir::Down, &input, 100);
        assert_eq!(frames_in(&out), [(0xc1, vec![]), (0x81, b"plain".to_vec())]);
        assert!(notes[0].contains("not decodable (window lost at drop)"), "{notes:?}");
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
        assert!(notes.iter().any(|n| n.contains(NOT_FOLLOWED)), "{notes:?}");
        assert!(r.replay_parts(true).len() == 2, "a new file: the heads, but no window to give it");
        let next = frame(0xc1, &deflate(b"after"), false);
        let (out, notes) = feed(&mut r, Dir::Down, &next, 100);
        assert_eq!(frames_in(&out), [(0xc1, vec![])]);
        assert!(notes[0].contains("not decodable (wstap stopped following"), "{notes:?}");
    }

    #[test]
    fn a_message_too_large_to_search_is_written_without_its_payload() {
        let mut r = Rewriter::new(rules(Snap::default(), &["secret"]), false);
        session(&mut r);
        let big = frame(0x82, &vec![b's'; MAX_HELD + 10], true);
        let (out, notes) = feed(&mut r, Dir::Up, &big, 64 * 1024);
        assert_eq!(frames_in(&out), [(0x82, vec![])]);
        assert!(notes[0].contains("too large to search"), "{notes:?}");
    }
}
