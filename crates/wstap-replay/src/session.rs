//! From a reassembled connection to a WebSocket session: the HTTP/1.1 exchanges on it
//! (plain requests first, if any, bodies skipped by their framing), the Upgrade request
//! and its `101`, then RFC 6455 frames in each direction — unmasked, fragments joined,
//! control frames between fragments kept in place, permessage-deflate inflated when the
//! handshake negotiated it. Frames and inflating are `wstap_wire`'s, as in capture. Pure.

use std::net::SocketAddr;

use flate2::Decompress;

use crate::reassembly::Reassembled;
use crate::stream::{Arrival, Hole, Stream};
use wstap_wire::deflate;
use wstap_wire::dir::{Dir, PerDir};
use wstap_wire::http::{self, field, Framer, Head, HeadKind, Part};
use wstap_wire::wsframe::{apply_mask, FrameHeader, Opcode};
use wstap_wire::Timestamp;

/// A message's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A text message (opcode 1), its fragments joined.
    Text,
    /// A binary message (opcode 2), its fragments joined.
    Binary,
    /// A ping (opcode 9).
    Ping,
    /// A pong (opcode 10).
    Pong,
    /// A close (opcode 8): a code and a reason, if any.
    Close,
    /// Not a message: the capture lost bytes here (`lost`), and the messages in them.
    Gap,
}

impl Kind {
    /// `"text"`, `"binary"`, `"ping"`, `"pong"`, `"close"` or `"gap"`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Binary => "binary",
            Kind::Ping => "ping",
            Kind::Pong => "pong",
            Kind::Close => "close",
            Kind::Gap => "gap",
        }
    }
}

/// One WebSocket message, with its payload as the application saw it (unmasked, joined,
/// inflated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Which way it went: `Up` from the client, `Down` from the server.
    pub dir: Dir,
    /// When its last byte was captured.
    pub time: Timestamp,
    /// Its kind.
    pub kind: Kind,
    /// The payload as the application saw it.
    pub data: Vec<u8>,
    /// The frames it came in.
    pub frames: u32,
    /// Sent compressed (permessage-deflate).
    pub compressed: bool,
    /// Some of its bytes are missing from the capture (a gap), it never finished, or it
    /// was compressed after a gap that lost the shared deflate window.
    pub incomplete: bool,
    /// For a [`Kind::Gap`]: the bytes the capture lost there.
    pub lost: u64,
}

impl Message {
    /// The close code of a close message, if it carries one.
    pub fn close_code(&self) -> Option<u16> {
        (self.kind == Kind::Close && self.data.len() >= 2).then(|| u16::from_be_bytes([self.data[0], self.data[1]]))
    }
}

/// An HTTP/1.1 head: `start`, each field, the blank line.
fn head(start: String, fields: &[(String, String)]) -> Vec<u8> {
    let mut text = start;
    for (name, value) in fields {
        text.push_str(&format!("\r\n{name}: {value}"));
    }
    text.push_str("\r\n\r\n");
    text.into_bytes()
}

/// What a session's messages add up to, counted as they stream by (see
/// [`crate::Events`]) or from a whole session ([`Session::tally`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Messages each way (`Up`: the client's), gaps not counted.
    pub messages: PerDir<usize>,
    /// The close code sent each way, if a close message with one went that way.
    pub close: PerDir<Option<u16>>,
}

impl Tally {
    /// Counts `m`.
    pub fn add(&mut self, m: &Message) {
        if m.kind != Kind::Gap {
            self.messages[m.dir] += 1;
        }
        if m.kind == Kind::Close && self.close[m.dir].is_none() {
            self.close[m.dir] = m.close_code();
        }
    }
}

/// A session's number in its capture: 1-based, in the order the capture saw the
/// sessions' first packets (as `wstap sessions` lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct SessionId(pub usize);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A WebSocket session found in a capture.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Session {
    /// Its number in the capture.
    pub id: SessionId,
    /// The client's address.
    pub client: SocketAddr,
    /// The server's address.
    pub server: SocketAddr,
    /// When the connection was first seen: nanoseconds since the Unix epoch.
    #[serde(rename = "start_ts_ns", serialize_with = "nanos")]
    pub start: Timestamp,
    /// The Upgrade request's method (`GET`).
    pub method: String,
    /// The Upgrade request's target, query included.
    pub path: String,
    /// The Upgrade request's header fields, in order.
    pub request_headers: Vec<(String, String)>,
    /// The response's status (101).
    pub status: u16,
    /// The `101` response's header fields, in order.
    pub response_headers: Vec<(String, String)>,
    /// permessage-deflate was negotiated.
    pub deflate: bool,
    #[serde(skip)]
    /// Its messages, both ways, in the order they were captured.
    pub messages: Vec<Message>,
    /// What was wrong with this session's bytes; empty for a clean one.
    pub problems: Vec<String>,
    /// What is worth knowing and is no damage (the capture began after the connection
    /// opened, its handshake still in it).
    pub notes: Vec<String>,
    /// TCP bytes the capture saw twice (retransmissions, overlaps): with `out_of_order`,
    /// how messy the capture was, not problems.
    pub duplicate_bytes: u64,
    /// TCP segments that arrived ahead of a hole in the stream.
    pub out_of_order: u64,
}

impl Session {
    /// The messages that went `dir`; the gaps among them (bytes not captured) are not
    /// messages, and not counted.
    pub fn count(&self, dir: Dir) -> usize {
        self.tally().messages[dir]
    }

    /// The close code sent `dir`, if a close message with one went that way.
    pub fn close_code(&self, dir: Dir) -> Option<u16> {
        self.tally().close[dir]
    }

    /// A session between `client` and `server` with nothing else yet: a `GET /` answered
    /// by a `101`, no headers, no messages, started at the epoch (for tools that build
    /// sessions of their own, and tests).
    pub fn new(id: SessionId, client: SocketAddr, server: SocketAddr) -> Session {
        Session {
            id,
            client,
            server,
            start: Timestamp::EPOCH,
            method: "GET".into(),
            path: "/".into(),
            request_headers: Vec::new(),
            status: 101,
            response_headers: Vec::new(),
            deflate: false,
            messages: Vec::new(),
            problems: Vec::new(),
            notes: Vec::new(),
            duplicate_bytes: 0,
            out_of_order: 0,
        }
    }

    /// The Upgrade request as an HTTP/1.1 head: its line, its fields, the blank line.
    pub fn request_head(&self) -> Vec<u8> {
        head(format!("{} {} HTTP/1.1", self.method, self.path), &self.request_headers)
    }

    /// The answer to it (the `101`) as an HTTP/1.1 head.
    pub fn response_head(&self) -> Vec<u8> {
        let reason = if self.status == 101 { "Switching Protocols" } else { "" };
        head(format!("HTTP/1.1 {} {reason}", self.status), &self.response_headers)
    }

    /// What its messages add up to.
    pub fn tally(&self) -> Tally {
        let mut t = Tally::default();
        self.messages.iter().for_each(|m| t.add(m));
        t
    }

    /// A request header's value (name compared case-insensitively).
    pub fn request_header(&self, name: &str) -> Option<&str> {
        field(&self.request_headers, name)
    }

    /// A header's value in the `101` response (name compared case-insensitively).
    pub fn response_header(&self, name: &str) -> Option<&str> {
        field(&self.response_headers, name)
    }
}

/// A timestamp as JSON shows it: nanoseconds since the epoch.
fn nanos<S: serde::Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(t.as_nanos())
}

/// The largest message or gap this reader will hold in memory.
pub(crate) const MAX_MESSAGE: usize = 64 << 20;
/// Problems listed per direction of a session; past them, only counted.
const MAX_PROBLEMS: usize = 8;

/// What a whole read may inflate, over every message of every session: 64 MiB plus 16
/// times the capture's size. Compressed WebSocket text rarely inflates more than 10
/// times, while a crafted file could ask for a thousand; past the budget, compressed
/// messages are left as they are and marked incomplete.
pub struct InflateBudget {
    left: usize,
}

impl InflateBudget {
    /// The budget for reading `input_bytes` of capture files.
    pub fn for_input(input_bytes: usize) -> InflateBudget {
        InflateBudget { left: (64usize << 20).saturating_add(input_bytes.saturating_mul(16)) }
    }

    /// Grows the budget for `input_bytes` more read.
    pub fn grant(&mut self, input_bytes: usize) {
        self.left = self.left.saturating_add(input_bytes.saturating_mul(16));
    }
}

/// Where the WebSocket frames start in each direction (`Up`: the client's), after the
/// HTTP exchanges.
pub(crate) struct Upgrade {
    pub(crate) request: Head,
    pub(crate) response: Head,
    pub(crate) at: PerDir<u64>,
}

/// The longest HTTP head the reader holds.
const MAX_HEAD: usize = 1 << 20;

/// The HTTP exchanges on a connection walked as its bytes arrive, up to the Upgrade:
/// each request, then its answers, with the HTTP framer. The bytes it has walked are not
/// needed again (a body is skipped as it streams by).
pub(crate) struct Walk {
    /// Which way on the connection the client's bytes go.
    client: Dir,
    framer: Framer,
    /// How far each side has been walked (`Up`: the client's stream), and how far to
    /// the end of its last whole head or body piece (a head in progress is the framer's
    /// until complete: its bytes are still needed if the walk fails).
    at: PerDir<u64>,
    settled: PerDir<u64>,
    /// The head of the message in progress each way.
    head: PerDir<Option<Head>>,
    /// The request whose answer is awaited.
    request: Option<Head>,
    /// Why the exchanges could not be followed, once they could not.
    failed: Option<String>,
}

/// Where a walk got to.
pub(crate) enum Walked {
    /// The Upgrade to WebSocket and its `101`.
    Upgrade(Upgrade),
    /// Nothing yet: more bytes are needed.
    More,
    /// A `101` to a protocol this reader does not read.
    Switched,
}

impl Walk {
    pub(crate) fn new(client: Dir) -> Walk {
        let (framer, at, head) = (Framer::new(MAX_HEAD), PerDir::default(), PerDir::default());
        Walk { client, framer, at, settled: at, head, request: None, failed: None }
    }

    /// How far the stream going `stream` on the connection has been walked past whole
    /// heads and body pieces, while the walk goes well: what is before it is not needed.
    pub(crate) fn walked(&self, stream: Dir) -> Option<u64> {
        let side = if stream == self.client { Dir::Up } else { Dir::Down };
        self.failed.is_none().then_some(self.settled[side])
    }

    /// Walks on over what the streams now hold. `Err` says why the exchanges cannot be
    /// followed (and stays so).
    pub(crate) fn step(&mut self, s: &PerDir<Stream>) -> Result<Walked, String> {
        if let Some(why) = &self.failed {
            return Err(why.clone());
        }
        let walked = self.walk(PerDir::new(&s[self.client], &s[self.client.reverse()]));
        if let Err(why) = &walked {
            self.failed = Some(why.clone());
        }
        walked
    }

    fn walk(&mut self, streams: PerDir<&Stream>) -> Result<Walked, String> {
        loop {
            if self.request.is_none() {
                let (at, head) = ((&mut self.at[Dir::Up], &mut self.settled[Dir::Up]), &mut self.head[Dir::Up]);
                match next_message(&mut self.framer, Dir::Up, streams[Dir::Up], at, head)? {
                    Some(request) => self.request = Some(request),
                    None => return Ok(Walked::More),
                }
            }
            // Interim responses (100 Continue) come before the real one.
            let (at, head) = ((&mut self.at[Dir::Down], &mut self.settled[Dir::Down]), &mut self.head[Dir::Down]);
            let Some(response) = next_message(&mut self.framer, Dir::Down, streams[Dir::Down], at, head)? else {
                return Ok(Walked::More);
            };
            if response.is_interim() {
                continue;
            }
            let request = self.request.take().unwrap_or_else(Head::none);
            if self.framer.switched(Dir::Down) {
                // A 101: to WebSocket, or to a protocol this reader does not read.
                return Ok(match request.asks_websocket() {
                    true => Walked::Upgrade(Upgrade { request, response, at: self.at }),
                    false => Walked::Switched,
                });
            }
        }
    }
}

/// Feeds the framer the stream going `dir` from `at` until a message is complete, and
/// returns its head; `None` when the stream ends first (a body may run to the close, or
/// claim more than was captured), the head seen so far kept in `head`. `at` is where the
/// walk is, and where it settled (past the last whole head or body piece).
fn next_message(
    f: &mut Framer,
    dir: Dir,
    st: &Stream,
    (at, settled): (&mut u64, &mut u64),
    head: &mut Option<Head>,
) -> Result<Option<Head>, String> {
    let what = if dir == Dir::Up { HeadKind::Request } else { HeadKind::Response };
    loop {
        let run = st.contiguous(*at);
        if run.is_empty() {
            let Some(hole) = st.hole_from(*at).filter(|h| h.at <= *at) else { return Ok(None) };
            if f.skip(dir, hole.end - *at).is_err() {
                return Err(format!("the capture lost bytes of an HTTP {what} at stream offset {at}"));
            }
            *at = hole.end;
            continue;
        }
        let step = f.advance(dir, run);
        *at += step.used as u64;
        if !matches!(step.part, Part::HeadSoFar) {
            *settled = *at;
        }
        match step.part {
            Part::HeadSoFar | Part::Body { ends: false } => {}
            Part::Head { head: h, ends: true, .. } => return Ok(Some(h)),
            Part::Head { head: h, ends: false, .. } => *head = Some(h),
            Part::Body { ends: true } => return Ok(head.take()),
            Part::Switched => return Err(format!("the HTTP {what} came after a switch of protocols")),
            Part::HeadTooLong { .. } => return Err(format!("an HTTP {what} head of more than {MAX_HEAD} bytes")),
            Part::Unframed(e) => return Err(format!("the HTTP {what} at stream offset {at}: {e}")),
        }
    }
}

/// One direction's frame decoding, fed as the stream grows.
pub(crate) struct Decoder {
    /// Which way its messages go (`Up`: the client's).
    dir: Dir,
    /// The inflater, when the handshake negotiated permessage-deflate.
    inflate: Option<Inflater>,
    /// The fragmented data message being assembled.
    partial: Option<Message>,
    /// Messages, each with the arrival of its last byte.
    pub(crate) out: Vec<Decoded>,
    problems: Vec<String>,
    /// Problems past [`MAX_PROBLEMS`], counted only.
    more_problems: u64,
    /// The stream offset of a gap after which the shared deflate window is unknown.
    window_lost: Option<u64>,
    /// Looking for the next frame after a lost frame header, while the stream grows.
    resyncing: Option<Resync>,
    /// The fragmented message in progress passed the largest message this reader holds.
    overflowed: bool,
}

/// The search for the next frame after a hole, waiting for more of the stream.
#[derive(Debug, Clone, Copy)]
struct Resync {
    hole: Hole,
    /// Offsets before it are ruled out.
    scan: u64,
    /// The place in the conversation of the hole: every message of this direction from
    /// here on comes after it.
    since: usize,
}

/// Where decoding goes on after a hole.
enum Resume {
    At(u64),
    /// Not enough after the hole yet to tell: the search so far.
    Wait(Resync),
}

/// A direction's inflater.
pub(crate) struct Inflater {
    pub(crate) z: Decompress,
    /// It keeps its context (window) from one message to the next.
    pub(crate) takeover: bool,
}

/// A message read, with when its last byte became readable (for merging both directions).
pub(crate) struct Decoded {
    pub(crate) arrived: Arrival,
    pub(crate) message: Message,
}

impl Decoded {
    /// A message the stream's end left unfinished.
    fn unfinished(message: Message, st: &Stream) -> Decoded {
        Decoded { arrived: Arrival { end: u64::MAX, ..st.arrival(st.len()) }, message }
    }
}

impl Decoder {
    pub(crate) fn new(dir: Dir, inflate: Option<Inflater>) -> Decoder {
        let (partial, out, problems) = (None, Vec::new(), Vec::new());
        let (resyncing, overflowed) = (None, false);
        Decoder { dir, inflate, partial, out, problems, more_problems: 0, window_lost: None, resyncing, overflowed }
    }

    /// Notes a problem: the first few in full, the rest counted (a stream of broken frames
    /// must not cost a string each).
    fn problem(&mut self, what: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(format!("{}: {what}", self.dir.arrow()));
        } else {
            self.more_problems += 1;
        }
    }

    /// The stream `st` ended: a fragmented message still open is incomplete.
    pub(crate) fn finish(&mut self, st: &Stream) {
        if let Some(mut unfinished) = self.partial.take() {
            self.problem("the capture ends inside a fragmented message".into());
            unfinished.incomplete = true;
            self.out.push(Decoded::unfinished(unfinished, st));
        }
    }

    /// The problems, with the count of those not listed.
    pub(crate) fn take_problems(&mut self) -> Vec<String> {
        let mut all = std::mem::take(&mut self.problems);
        if self.more_problems > 0 {
            all.push(format!("{}: {} more problems like these", self.dir.arrow(), self.more_problems));
        }
        all
    }

    /// Decodes the frames of `st` from offset `at`: to its end when `last` (the stream
    /// has ended), else those whose bytes are all in (a frame the stream's current end
    /// cuts waits for the rest). Where the capture lost a frame header (a hole where one
    /// starts, or across one), decoding goes on at the next frame ([`Decoder::resync`]).
    /// Returns where to go on from (nothing before it is needed again); `None` when the
    /// rest of the direction cannot be read.
    pub(crate) fn run(&mut self, st: &Stream, mut at: u64, last: bool, budget: &mut InflateBudget) -> Option<u64> {
        if let Some(r) = self.resyncing.take() {
            match self.resync(st, r, last)? {
                Resume::At(next) => at = next,
                Resume::Wait(r) => return Some(self.wait(r)),
            }
        }
        while at < st.len() {
            let run = st.contiguous(at);
            let Some(header) = FrameHeader::parse(run) else {
                match st.hole_from(at).filter(|h| h.at <= at + run.len() as u64) {
                    Some(hole) => {
                        let since = st.arrival(hole.end).order;
                        match self.resync(st, Resync { hole, scan: hole.end, since }, last)? {
                            Resume::At(next) => {
                                at = next;
                                continue;
                            }
                            Resume::Wait(r) => return Some(self.wait(r)),
                        }
                    }
                    None if !last => return Some(at),
                    None => break,
                }
            };
            if let Opcode::Reserved(bits) = header.opcode {
                self.problem(format!("bad frame header at stream offset {at}: reserved opcode {bits:#x}"));
                return None;
            }
            let (start, len) = (at + header.header_len as u64, header.len);
            if len > MAX_MESSAGE as u64 {
                self.problem(format!("frame at stream offset {at} claims {len} bytes, more than this reader holds"));
                return None;
            }
            let end = start + len;
            if end > st.len() && !last {
                return Some(at);
            }
            let (payload, gap) = payload(st, start, end, header.mask);
            let arrived = Arrival { end, ..st.arrival(end.min(st.len())) };
            self.frame(&header, payload, gap, arrived, budget);
            if end > st.len() {
                self.problem(format!("the stream ends inside a {len}-byte frame at stream offset {at}"));
                return None;
            }
            if gap {
                let missing = len - st.runs(start, end).iter().map(|(_, b)| b.len() as u64).sum::<u64>();
                self.problem(format!(
                    "the capture lost {missing} of the {len} bytes of the frame at stream offset {at}: its message is incomplete"
                ));
            }
            at = end;
        }
        if at < st.len() {
            self.problem(format!("the stream ends inside a frame header at stream offset {at}"));
        }
        Some(at)
    }

    /// Waits, searching after a hole: nothing before the search's place is needed again.
    fn wait(&mut self, r: Resync) -> u64 {
        self.resyncing = Some(r);
        r.scan
    }

    /// Where in the conversation this direction's next message can come from, while it
    /// waits for what follows a hole: messages the other way after it must wait too.
    pub(crate) fn waiting_since(&self) -> Option<usize> {
        self.resyncing.map(|r| r.since)
    }

    /// A hole where a frame header should be: lists it as a gap and says where decoding
    /// goes on: at its end when a sound header starts there (wstap's own captures), else
    /// at the next frame that parses and is followed by another (or by the stream's end),
    /// the bytes skipped to it lost too and said so; `None` when no frame follows. Before
    /// the stream's end (`last` false) it waits while what follows the hole cannot tell,
    /// so that the frame found is the one a read of the whole stream finds.
    fn resync(&mut self, st: &Stream, r: Resync, last: bool) -> Option<Resume> {
        let (hole, masked) = (r.hole, self.dir == Dir::Up);
        let resume = match hole.end >= st.len() {
            true if !last => return Some(Resume::Wait(r)),
            true => hole.end,
            false => match next_frame(st, hole.end, r.scan, masked, !last) {
                Scan::At(at) => at,
                Scan::Wait(scan) => return Some(Resume::Wait(Resync { scan, ..r })),
                Scan::Nothing => {
                    self.problem(format!(
                        "the capture lost {} bytes at stream offset {}, and no frame header follows them; \
                         the rest of this direction is unreadable",
                        hole.end - hole.at,
                        hole.at
                    ));
                    return None;
                }
            },
        };
        if resume > hole.end {
            self.problem(format!(
                "the capture lost {} bytes at stream offset {}, a frame header among them: {} bytes after \
                 them were skipped to the next frame, at stream offset {resume}",
                hole.end - hole.at,
                hole.at,
                resume - hole.end
            ));
        }
        let (lost, arrived) = (resume - hole.at, st.arrival(resume.min(st.len())));
        if let Some(partial) = self.partial.as_mut() {
            partial.incomplete = true;
            let n = partial.data.len();
            self.problem(format!(
                "the capture lost {lost} bytes at stream offset {} inside a fragmented message ({n} bytes so far): it is incomplete",
                hole.at
            ));
        }
        if self.inflate.as_ref().is_some_and(|i| i.takeover) {
            // What the lost frames compressed is gone from the shared window.
            self.window_lost.get_or_insert(hole.at);
        }
        let gap = Message {
            dir: self.dir,
            time: arrived.time,
            kind: Kind::Gap,
            data: Vec::new(),
            frames: 0,
            compressed: false,
            incomplete: false,
            lost,
        };
        self.out.push(Decoded { arrived, message: gap });
        Some(Resume::At(resume))
    }

    /// One frame, whose last byte `arrived`.
    fn frame(&mut self, h: &FrameHeader, data: Vec<u8>, gap: bool, arrived: Arrival, budget: &mut InflateBudget) {
        let dir = self.dir;
        let message = move |kind, data, compressed| Message {
            dir,
            time: arrived.time,
            kind,
            data,
            frames: 1,
            compressed,
            incomplete: gap,
            lost: 0,
        };
        match h.opcode {
            Opcode::Close | Opcode::Ping | Opcode::Pong => {
                let kind = match h.opcode {
                    Opcode::Close => Kind::Close,
                    Opcode::Ping => Kind::Ping,
                    _ => Kind::Pong,
                };
                self.out.push(Decoded { arrived, message: message(kind, data, false) });
            }
            Opcode::Continuation => self.continuation(h.fin, &data, gap, arrived, budget),
            Opcode::Text | Opcode::Binary => {
                let kind = if h.opcode == Opcode::Text { Kind::Text } else { Kind::Binary };
                let m = message(kind, data, h.rsv1);
                if let Some(mut unfinished) = self.partial.take() {
                    let n = unfinished.data.len();
                    self.problem(format!("a new message began before the fragmented one ({n} bytes so far) ended"));
                    unfinished.incomplete = true;
                    self.out.push(Decoded { arrived, message: unfinished });
                }
                if h.fin {
                    self.complete(m, arrived, budget);
                } else {
                    self.partial = Some(m);
                }
            }
            // Reserved opcodes stopped the decoding at their header.
            Opcode::Reserved(_) => {}
        }
    }

    /// A continuation frame, whose last byte `arrived`: more of the fragmented message. A
    /// message is held up to the largest this reader holds; past it the rest is dropped
    /// and the message marked incomplete.
    fn continuation(&mut self, fin: bool, data: &[u8], gap: bool, arrived: Arrival, budget: &mut InflateBudget) {
        let end = arrived.end;
        let Some(p) = self.partial.as_mut() else {
            return self
                .problem(format!("continuation frame with no message to continue, ending at stream offset {end}"));
        };
        let room = MAX_MESSAGE.saturating_sub(p.data.len());
        let take = data.len().min(room);
        if p.data.len() + take > p.data.capacity() {
            // Grown by doubling, but never past the largest message.
            let want = (p.data.capacity() * 2).max(p.data.len() + take).min(MAX_MESSAGE);
            p.data.reserve_exact(want - p.data.len());
        }
        p.data.extend_from_slice(&data[..take]);
        p.frames += 1;
        p.incomplete |= gap || data.len() > room;
        p.time = arrived.time;
        if data.len() > room && !std::mem::replace(&mut self.overflowed, true) {
            self.problem(format!(
                "a fragmented message ending at stream offset {end} runs past {MAX_MESSAGE} bytes, the largest \
                 this reader holds: cut there, incomplete"
            ));
        }
        if fin {
            self.overflowed = false;
            let m = self.partial.take();
            m.into_iter().for_each(|m| self.complete(m, arrived, budget));
        }
    }

    /// A message's last frame arrived: inflate it if it was compressed.
    fn complete(&mut self, mut m: Message, arrived: Arrival, budget: &mut InflateBudget) {
        // After a gap that took compressed bytes, the shared window is unknown.
        if m.compressed && !m.incomplete {
            if let Some(at) = self.window_lost {
                m.incomplete = true;
                self.problem(format!(
                    "a compressed message ending at stream offset {} cannot be inflated: the capture lost bytes \
                     of the compression window at stream offset {at}",
                    arrived.end
                ));
            }
        }
        if m.compressed && !m.incomplete {
            self.inflate(&mut m, arrived.end, budget);
        }
        self.out.push(Decoded { arrived, message: m });
    }

    /// Inflates a compressed message's payload in place. One that fails, or finds the
    /// read's budget spent, stays as it was and is marked incomplete (with a problem); one
    /// cut at a limit keeps what it got, marked incomplete, and (with context takeover)
    /// the window is lost from there.
    fn inflate(&mut self, m: &mut Message, end: u64, budget: &mut InflateBudget) {
        m.incomplete = true;
        let Some(Inflater { z, takeover }) = self.inflate.as_mut() else {
            self.problem(format!(
                "compressed message (RSV1) ending at stream offset {end}, but no permessage-deflate was negotiated"
            ));
            return;
        };
        if !*takeover {
            z.reset(false);
        }
        let limit = MAX_MESSAGE.min(budget.left);
        if limit == 0 {
            self.problem(format!(
                "compressed message ending at stream offset {end} left compressed: the read's inflate budget is spent"
            ));
            return;
        }
        let takeover = *takeover;
        let input = [&m.data[..], &deflate::MESSAGE_TAIL].concat();
        let mut out = Vec::with_capacity((input.len() * 3).min(limit));
        let result = deflate::inflate(z, &input, limit, |piece| out.extend_from_slice(piece));
        budget.left -= out.len();
        match result {
            Ok(done) if done.cut => {
                let why = if limit == MAX_MESSAGE {
                    "the largest message this reader holds"
                } else {
                    "the read's inflate budget"
                };
                self.problem(format!(
                    "message ending at stream offset {end} inflates to more than {limit} bytes ({why}): cut there, incomplete"
                ));
                if takeover {
                    self.window_lost.get_or_insert(end);
                }
                m.data = out;
            }
            Ok(_) => (m.data, m.incomplete) = (out, false),
            Err(e) => self.problem(format!("message ending at stream offset {end} does not inflate: {e}")),
        }
    }
}

/// A session found on a connection: which way its client's bytes go, where its frames
/// start, and what is missing of its handshake.
pub(crate) struct Found {
    pub(crate) client: Dir,
    pub(crate) up: Upgrade,
    pub(crate) problem: Option<String>,
}

/// Whether a connection carries a session, as far as its streams so far tell.
pub(crate) enum Look {
    Found(Box<Found>),
    /// Not yet known.
    NotYet,
    /// No session.
    Never,
}

/// The client's side of a connection: the SYN's sender; for a connection picked up
/// mid-way, whoever talks HTTP.
pub(crate) fn client_side(s: &PerDir<Stream>, midstream: bool) -> Dir {
    let looks_http = |st: &Stream| {
        let b = st.contiguous(st.start());
        b.first().is_some_and(u8::is_ascii_uppercase) && http::request(b).is_ok()
    };
    if midstream && !looks_http(&s[Dir::Up]) && looks_http(&s[Dir::Down]) {
        Dir::Down
    } else {
        Dir::Up
    }
}

/// Whether the connection whose streams so far are `s` carries a session: its Upgrade
/// exchange, walked on by `walk`, or (when `frames_too`) frames that say it is one
/// without it. With `last` (the streams are whole) the answer is final.
pub(crate) fn detect(s: &PerDir<Stream>, walk: &mut Walk, midstream: bool, frames_too: bool, last: bool) -> Look {
    let client = walk.client;
    match walk.step(s) {
        Ok(Walked::Upgrade(up)) => Look::Found(Box::new(Found { client, up, problem: None })),
        Ok(Walked::Switched) => Look::Never,
        // Whole HTTP exchanges and no Upgrade: no session (yet).
        Ok(Walked::More) if !midstream => match last {
            true => Look::Never,
            false => Look::NotYet,
        },
        // The exchange was cut (by the snap length, a lost packet, the capture's start):
        // a session only if the frames after it say so.
        _ if frames_too => match without_handshake(s, midstream) {
            Some((client, up, problem)) => Look::Found(Box::new(Found { client, up, problem: Some(problem) })),
            None if last => Look::Never,
            None => Look::NotYet,
        },
        _ => Look::NotYet,
    }
}

/// A session's header: everything but its messages.
pub(crate) fn header(conn: &Reassembled, id: SessionId, found: &Found) -> Session {
    let (mut problems, mut notes) = (Vec::new(), Vec::new());
    if conn.midstream {
        notes.push("the capture began after this connection opened (its SYN is not in it)".to_string());
    }
    let up = &found.up;
    problems.extend(found.problem.clone());
    problems.extend(wrong_accept(&up.request, &up.response));
    let (client, server) = if found.client == Dir::Up { (conn.a, conn.b) } else { (conn.b, conn.a) };
    Session {
        id,
        client,
        server,
        start: conn.first_seen,
        method: up.request.method.clone(),
        path: up.request.path.clone(),
        request_headers: up.request.headers.clone(),
        status: up.response.status,
        response_headers: up.response.headers.clone(),
        deflate: deflate::takeover(&up.response).is_some(),
        messages: Vec::new(),
        problems,
        notes,
        duplicate_bytes: conn.duplicate_bytes,
        out_of_order: conn.out_of_order,
    }
}

/// A `101` whose `Sec-WebSocket-Accept` is not the one the request's key asks for (RFC
/// 6455 §4.2.2): a client must refuse it, so what follows is no session it accepted.
fn wrong_accept(request: &Head, response: &Head) -> Option<String> {
    let key = request.field("sec-websocket-key")?;
    let want = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    match response.field("sec-websocket-accept") {
        Some(got) if got.trim() == want => None,
        Some(got) => Some(format!("the server's Sec-WebSocket-Accept {got:?} is not {want:?}, the key's")),
        None => Some("the server's 101 has no Sec-WebSocket-Accept".to_string()),
    }
}

/// What the search for the next frame after a hole found.
enum Scan {
    /// A frame starts here.
    At(u64),
    /// Not known yet: offsets before this one are ruled out, and the rest waits for more
    /// of the stream.
    Wait(u64),
    /// No frame in the captured bytes after the hole.
    Nothing,
}

/// Where the next frame starts in the captured bytes from `from` (up to the next hole),
/// offsets before `scan` already ruled out: at `from` if a sound header (masked as
/// `masked` says) starts there; further on, a sound header whose frame is followed by
/// another, or ends where the captured bytes do (one header alone could be payload bytes
/// that look like one). `open`: the stream may grow: a candidate that needs bytes past
/// its current end waits for them. Each offset is looked at once, whatever the waits.
fn next_frame(st: &Stream, from: u64, scan: u64, masked: bool, open: bool) -> Scan {
    // What was ruled out may be released: the search goes on from `scan`.
    let start = scan.max(from);
    let run = st.contiguous(start);
    let end = start + run.len() as u64;
    let open = open && end == st.len();
    let header = |p: u64| FrameHeader::parse(run.get((p - start) as usize..)?);
    let sound = |h: &FrameHeader| h.is_sound() && h.masked() == masked && h.len <= MAX_MESSAGE as u64;
    // A header the stream's current end may be cutting.
    let cut = |p: u64| open && end - p < 14;
    if start == from {
        // Right at `from` one sound header is enough: wstap's own captures resume there.
        match header(from) {
            Some(h) if sound(&h) => return Scan::At(from),
            None if cut(from) => return Scan::Wait(from),
            _ => {}
        }
    }
    let first = if start == from { from + 1 } else { start };
    for p in first..end {
        let Some(h) = header(p) else {
            match cut(p) {
                true => return Scan::Wait(p),
                false => continue,
            }
        };
        if !sound(&h) {
            continue;
        }
        let next = p + h.header_len as u64 + h.len;
        if next >= end {
            match open {
                true => return Scan::Wait(p),
                false if next == end || next == st.len() => return Scan::At(p),
                false => continue,
            }
        }
        match header(next) {
            Some(h) if sound(&h) => return Scan::At(p),
            None if cut(next) => return Scan::Wait(p),
            _ => {}
        }
    }
    match open {
        true => Scan::Wait(end.max(first)),
        false => Scan::Nothing,
    }
}

/// The session on a connection whose Upgrade exchange could not be read, if its bytes
/// say it is one, with a problem saying what is missing. The server's `101` counts when
/// it was captured whole (its fields say which extensions were agreed); then frames
/// must follow it, and the client's side must be frames from where its request was cut
/// (or silent). Without a `101`, both sides must be seen speaking WebSocket: frames from
/// the start of what was captured, after an HTTP head, or after a hole (see
/// [`plausible_at`]). `Up` is taken as the client unless `midstream` leaves it open.
fn without_handshake(s: &PerDir<Stream>, midstream: bool) -> Option<(Dir, Upgrade, String)> {
    let clients: &[Dir] = if midstream { &[Dir::Up, Dir::Down] } else { &[Dir::Up] };
    clients.iter().find_map(|&client| {
        let (cs, ss) = (&s[client], &s[client.reverse()]);
        let request = http::request(cs.contiguous(cs.start())).ok().flatten().filter(Head::asks_websocket);
        let response = switching(ss);
        // After a 101, one sound frame header where the client's frames may start is enough.
        let seen = response.is_some();
        let server_at = match &response {
            Some((_, end)) => Some(*end).filter(|&at| at == ss.len() || plausible_at(ss, at, false, true))?,
            None => frame_starts(ss).find(|&at| plausible_at(ss, at, false, false))?,
        };
        let client_at = match frame_starts(cs).find(|&at| plausible_at(cs, at, true, seen)) {
            Some(at) => at,
            None if seen => cs.len(),
            None => return None,
        };
        let problem = match (&request, &response) {
            (Some(_), Some(_)) => "the Upgrade exchange could not be followed",
            (Some(_), None) => "the server's 101 was not captured whole: compression unknown",
            (None, Some(_)) => "the client's Upgrade request was not captured whole: no path or request headers",
            (None, None) if midstream => "no handshake in the capture: no path or headers, and compression unknown",
            (None, None) => {
                "the handshake was not captured whole (cut by the snap length, or lost): no path or headers, and \
                 compression unknown"
            }
        };
        let request = request.unwrap_or_else(Head::none);
        let response = response.map_or_else(Head::none, |(head, _)| head);
        let at = PerDir::new(client_at, server_at);
        Some((client, Upgrade { request, response, at }, problem.to_string()))
    })
}

/// How far into a stream its first frame is looked for.
const SCAN: u64 = 64 << 10;

/// Where frames may start in a stream whose HTTP could not be followed: its start (what
/// was walked of it released), after each HTTP head's blank line, after each hole, in
/// the first [`SCAN`] bytes.
fn frame_starts(st: &Stream) -> impl Iterator<Item = u64> + '_ {
    let mut at = st.start();
    let mut found = vec![at];
    let scan = at + SCAN;
    while at < st.len().min(scan) {
        match st.hole_from(at).filter(|h| h.at <= at) {
            Some(h) => {
                found.push(h.end);
                at = h.end;
            }
            None => {
                let run = st.contiguous(at);
                let run = &run[..run.len().min((scan - at.min(scan)) as usize + 3)];
                found.extend(
                    run.windows(4).enumerate().filter(|(_, w)| w == b"\r\n\r\n").map(|(i, _)| at + i as u64 + 4),
                );
                at += run.len().max(1) as u64;
            }
        }
    }
    found.dedup();
    found.into_iter()
}

/// The server's `101` switching to WebSocket, captured whole in the first [`SCAN`]
/// bytes of its stream, and where it ends.
fn switching(st: &Stream) -> Option<(Head, u64)> {
    frame_starts(st).find_map(|at| {
        let run = st.contiguous(at);
        let start = run[..run.len().min(SCAN as usize)].windows(9).position(|w| w == b"HTTP/1.1 ")?;
        let head = http::response(&run[start..]).ok()??;
        let ws = head.status == 101 && head.has_token("upgrade", "websocket");
        ws.then(|| {
            let end = at + (start + head.len) as u64;
            (head, end)
        })
    })
}

/// Whether a stream seen without its handshake starts as one side of a WebSocket session
/// does at `from`: frames with sound headers, masked as `masked` says, the first a message's start
/// (no continuation) and no control frame fragmented, each frame's length landing on the
/// next header, for three frames or up to the end of what was captured. Nothing at all
/// never does: bare ACKs, FINs and RSTs are no session, and a session picked up mid-way
/// is one only when both sides are seen to speak it. `one`: the first sound header is
/// enough (the server's `101` was seen).
fn plausible_at(st: &Stream, from: u64, masked: bool, one: bool) -> bool {
    let run = st.contiguous(from);
    let mut at = 0;
    for i in 0..3 {
        if at == run.len() {
            return i > 0;
        }
        let Some(h) = FrameHeader::parse(&run[at..]) else {
            // A header cut by the end of the captured bytes.
            return i > 0 && run.len() - at < 14;
        };
        let fragmented_control = h.opcode.is_control() && !h.fin;
        let continues = i == 0 && h.opcode == Opcode::Continuation;
        if !h.is_sound() || h.masked() != masked || h.len > MAX_MESSAGE as u64 || fragmented_control || continues {
            return false;
        }
        let next = (at + h.header_len) as u64 + h.len;
        if one || next > run.len() as u64 {
            // It runs past what was captured: only a later frame may (or, when one is
            // enough, this one).
            return one || i > 0;
        }
        at = next as usize;
    }
    true
}

/// The payload of the frame at `start..end`, unmasked, and whether bytes of it are
/// missing (each captured run is unmasked at its own place in the payload).
fn payload(st: &Stream, start: u64, end: u64, mask: Option<[u8; 4]>) -> (Vec<u8>, bool) {
    let (bytes, gap) = match st.slice(start, end) {
        Some(b) => (vec![(start, b)], false),
        None => (st.runs(start, end), true),
    };
    let mut out = Vec::with_capacity(bytes.iter().map(|(_, b)| b.len()).sum());
    for (at, run) in bytes {
        let from = out.len();
        out.extend_from_slice(run);
        if let Some(key) = mask {
            apply_mask(&mut out[from..], key, at - start);
        }
    }
    (out, gap)
}

/// A session with `path` and nothing else, for tests.
#[cfg(test)]
pub(crate) fn session_with_path(path: &str) -> Session {
    let ends = ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
    Session { path: path.into(), ..Session::new(SessionId(1), ends.0, ends.1) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{decode, decode_within};
    use crate::reassembly::{Delivery, Readable};
    use flate2::{Compress, Compression, FlushCompress};
    use wstap_wire::wsframe::{encode_frame, first_byte};

    /// A frame as a client (masked) or server would send it.
    fn frame(fin: bool, rsv1: bool, opcode: Opcode, payload: &[u8], masked: bool) -> Vec<u8> {
        encode_frame(first_byte(fin, rsv1, opcode), payload, masked.then_some([1, 2, 3, 4]))
    }

    const UPGRADE: &[u8] = b"GET /chat?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    const SWITCH: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";

    fn conn(pieces: Vec<(Dir, Readable)>) -> Reassembled {
        let deliveries = pieces
            .into_iter()
            .enumerate()
            .map(|(t, (from, what))| Delivery { from, time: Timestamp::from_nanos(t as u64), what })
            .collect();
        Reassembled {
            a: "10.0.0.1:5000".parse().unwrap(),
            b: "10.0.0.2:80".parse().unwrap(),
            first_seen: Timestamp::EPOCH,
            midstream: false,
            deliveries,
            duplicate_bytes: 0,
            out_of_order: 0,
            repeated: PerDir::default(),
        }
    }

    fn data(from: Dir, b: &[u8]) -> (Dir, Readable) {
        (from, Readable::Data(b.to_vec()))
    }

    fn summary(s: &Session) -> Vec<(Dir, Kind, Vec<u8>, u32)> {
        s.messages.iter().map(|m| (m.dir, m.kind, m.data.clone(), m.frames)).collect()
    }

    #[test]
    fn plain_requests_then_upgrade_then_fragments_with_a_ping_between() {
        let big = vec![7u8; 70_000];
        let c = conn(vec![
            data(Dir::Up, b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz"),
            data(Dir::Down, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
            data(Dir::Up, b"GET /b HTTP/1.1\r\n\r\n"),
            data(Dir::Down, b"HTTP/1.1 204 No Content\r\n\r\n"),
            data(Dir::Up, UPGRADE),
            data(Dir::Down, format!("{SWITCH}\r\n").as_bytes()),
            data(
                Dir::Up,
                &[frame(false, false, Opcode::Text, b"hel", true), frame(true, false, Opcode::Ping, b"p", true)]
                    .concat(),
            ),
            data(Dir::Up, &frame(true, false, Opcode::Continuation, b"lo", true)),
            data(Dir::Down, &frame(true, false, Opcode::Binary, &big, false)),
            data(Dir::Up, &frame(true, false, Opcode::Close, &[3, 232, b'o', b'k'], true)),
            data(Dir::Down, &frame(true, false, Opcode::Close, &[3, 232], false)),
            (Dir::Up, Readable::Fin),
        ]);
        let s = decode(&c, SessionId(1)).unwrap();
        assert_eq!((s.method.as_str(), s.path.as_str(), s.status), ("GET", "/chat?x=1", 101));
        assert_eq!(s.request_header("sec-websocket-version"), Some("13"));
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(
            summary(&s),
            [
                (Dir::Up, Kind::Ping, b"p".to_vec(), 1),
                (Dir::Up, Kind::Text, b"hello".to_vec(), 2),
                (Dir::Down, Kind::Binary, big, 1),
                (Dir::Up, Kind::Close, vec![3, 232, b'o', b'k'], 1),
                (Dir::Down, Kind::Close, vec![3, 232], 1),
            ]
        );
        assert_eq!((s.close_code(Dir::Up), s.close_code(Dir::Down)), (Some(1000), Some(1000)));
        assert_eq!(s.messages[1].time.as_nanos(), 7, "a message is timed by its last byte");
        assert_eq!((s.count(Dir::Up), s.count(Dir::Down)), (3, 2));
    }

    fn deflate(z: &mut Compress, text: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len() + 64);
        z.compress_vec(text, &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&deflate::MESSAGE_TAIL));
        out.truncate(out.len() - 4);
        out
    }

    #[test]
    fn permessage_deflate_with_and_without_context_takeover() {
        for (params, reset) in [("", false), ("; server_no_context_takeover; client_no_context_takeover", true)] {
            let mut z = Compress::new(Compression::default(), false);
            let mut msgs = Vec::new();
            for text in [&b"hello hello hello"[..], b"hello hello hello again"] {
                if reset {
                    z.reset();
                }
                msgs.push(frame(true, true, Opcode::Text, &deflate(&mut z, text), false));
            }
            let c = conn(vec![
                data(Dir::Up, UPGRADE),
                data(
                    Dir::Down,
                    format!("{SWITCH}Sec-WebSocket-Extensions: permessage-deflate{params}\r\n\r\n").as_bytes(),
                ),
                data(Dir::Down, &msgs.concat()),
            ]);
            let s = decode(&c, SessionId(1)).unwrap();
            assert!(s.deflate && s.problems.is_empty(), "{params}: {:?}", s.problems);
            let texts: Vec<_> = s.messages.iter().map(|m| (m.compressed, m.data.clone())).collect();
            assert_eq!(
                texts,
                [(true, b"hello hello hello".to_vec()), (true, b"hello hello hello again".to_vec())],
                "{params}"
            );
        }
    }

    #[test]
    fn gaps_inside_payloads_mark_messages_and_gaps_in_headers_stop_the_direction() {
        let f = frame(true, false, Opcode::Binary, b"0123456789", false);
        let c = conn(vec![
            data(Dir::Up, UPGRADE),
            data(Dir::Down, format!("{SWITCH}\r\n").as_bytes()),
            data(Dir::Down, &f[..4]),
            (Dir::Down, Readable::Gap(3)),
            data(Dir::Down, &f[7..]),
            data(Dir::Down, &frame(true, false, Opcode::Text, b"after", false)),
            (Dir::Down, Readable::Gap(2)),
            data(Dir::Down, b"junk"),
        ]);
        let s = decode(&c, SessionId(1)).unwrap();
        assert_eq!(s.messages.len(), 2);
        assert!(s.messages[0].incomplete && !s.messages[1].incomplete);
        assert_eq!(s.messages[1].data, b"after");
        assert!(s.problems.iter().any(|p| p.contains("no frame header follows them")), "{:?}", s.problems);
    }

    /// wstap's own captures resume after a loss at a frame boundary: the frames after
    /// the hole decode and the hole is listed as a gap; the message it cut into is
    /// incomplete, and a problem says so (every loss is said).
    #[test]
    fn a_gap_that_ends_on_a_frame_boundary_is_listed_and_the_frames_after_it_decode() {
        let big = frame(true, false, Opcode::Binary, &[9; 5000], true);
        let c = conn(vec![
            data(Dir::Up, UPGRADE),
            data(Dir::Down, format!("{SWITCH}\r\n").as_bytes()),
            data(Dir::Up, &frame(true, false, Opcode::Text, b"before", true)),
            data(Dir::Up, &big[..1000]), // the rest of it and two more frames were lost
            (Dir::Up, Readable::Gap((big.len() - 1000 + 40) as u64)),
            data(
                Dir::Up,
                &[frame(true, false, Opcode::Text, b"after", true), frame(true, false, Opcode::Ping, b"p", true)]
                    .concat(),
            ),
            (Dir::Up, Readable::Gap(1 << 40)), // a huge hole costs nothing, at the end too
        ]);
        let s = decode(&c, SessionId(1)).unwrap();
        // The message the hole cut into is a problem; the hole past it is not.
        assert_eq!(
            s.problems,
            ["C→S: the capture lost 4008 of the 5000 bytes of the frame at stream offset 160: its message is incomplete"]
        );
        let kinds: Vec<(Kind, u64, bool)> = s.messages.iter().map(|m| (m.kind, m.lost, m.incomplete)).collect();
        assert_eq!(
            kinds,
            [
                (Kind::Text, 0, false),
                (Kind::Binary, 0, true),
                (Kind::Gap, (big.len() - 1000 + 40) as u64, false),
                (Kind::Text, 0, false),
                (Kind::Ping, 0, false),
                (Kind::Gap, 1 << 40, false),
            ]
        );
        assert_eq!(s.messages[3].data, b"after");
        assert_eq!(s.count(Dir::Up), 4, "gaps are not messages");
    }

    /// A capture that began after the SYN but before the Upgrade has the whole session:
    /// a note says where it began, and nothing calls it damaged.
    #[test]
    fn a_session_whose_syn_was_not_captured_is_not_damaged() {
        let mut c = conn(vec![
            data(Dir::Up, UPGRADE),
            data(Dir::Down, format!("{SWITCH}\r\n").as_bytes()),
            data(Dir::Up, &frame(true, false, Opcode::Text, b"hi", true)),
        ]);
        c.midstream = true;
        let s = decode(&c, SessionId(1)).unwrap();
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert!(s.notes.iter().any(|n| n.contains("SYN")), "{:?}", s.notes);
        assert_eq!(s.path, "/chat?x=1");
    }

    /// A `101` whose `Sec-WebSocket-Accept` is not the key's (or is missing) is a problem:
    /// no client would have accepted it.
    #[test]
    fn a_wrong_sec_websocket_accept_is_a_problem() {
        for (accept, says) in [("Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n", "is not"), ("", "has no")] {
            let switch = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{accept}\r\n"
            );
            let c = conn(vec![data(Dir::Up, UPGRADE), data(Dir::Down, switch.as_bytes())]);
            let s = decode(&c, SessionId(1)).unwrap();
            assert!(
                s.problems.iter().any(|p| p.contains("Sec-WebSocket-Accept") && p.contains(says)),
                "{:?}",
                s.problems
            );
        }
    }

    /// A third-party capture that lost a frame header in the middle of a frame: decoding
    /// goes on at the next frame (the rest of the cut frame skipped, and said), instead
    /// of giving up on the rest of the direction.
    #[test]
    fn after_a_lost_frame_header_decoding_resumes_at_the_next_frame() {
        let cut = frame(true, false, Opcode::Text, &[b'x'; 300], true);
        let after: Vec<u8> =
            (0..5).flat_map(|i| frame(true, false, Opcode::Text, format!("after {i}").as_bytes(), true)).collect();
        let c = conn(vec![
            data(Dir::Up, UPGRADE),
            data(Dir::Down, format!("{SWITCH}\r\n").as_bytes()),
            data(Dir::Up, &frame(true, false, Opcode::Text, b"before", true)),
            (Dir::Up, Readable::Gap(20)), // the cut frame's header and some of its payload
            data(Dir::Up, &[&cut[20..], &after[..]].concat()),
        ]);
        let s = decode(&c, SessionId(1)).unwrap();
        let texts: Vec<&[u8]> = s.messages.iter().filter(|m| m.kind == Kind::Text).map(|m| &m.data[..]).collect();
        let want: Vec<Vec<u8>> =
            ["before", "after 0", "after 1", "after 2", "after 3", "after 4"].map(|t| t.into()).into();
        assert_eq!(texts, want.iter().map(|w| &w[..]).collect::<Vec<_>>());
        let gap = s.messages.iter().find(|m| m.kind == Kind::Gap).unwrap();
        assert_eq!(gap.lost, cut.len() as u64, "the hole and the rest of the cut frame");
        assert!(s.problems.iter().any(|p| p.contains("skipped to the next frame")), "{:?}", s.problems);
    }

    /// Without a handshake, a connection is a session only when both sides' bytes parse
    /// as frames that chain: bare control packets, TLS, other protocols, one side alone,
    /// or a lone plausible byte pair are none.
    #[test]
    fn flows_without_a_handshake_that_are_not_websocket_give_no_session() {
        let masked = |op, p: &[u8]| frame(true, false, op, p, true);
        let plain = |op, p: &[u8]| frame(true, false, op, p, false);
        let tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec();
        let amqp = b"AMQP\x00\x00\x09\x01".to_vec();
        let stun = b"\x00\x01\x00\x08\x21\x12\xa4\x42".to_vec();
        let cases: [(&str, Vec<u8>, Vec<u8>); 6] = [
            ("bare ACK/FIN/RST", Vec::new(), Vec::new()),
            ("one side alone", masked(Opcode::Text, b"hi"), Vec::new()),
            ("TLS", tls_hello.clone(), tls_hello),
            ("AMQP", amqp.clone(), amqp),
            ("STUN", stun.clone(), stun),
            // Plausible first frames whose lengths land on garbage.
            (
                "a header on garbage",
                [masked(Opcode::Text, b"ab"), vec![0x7f; 20]].concat(),
                [plain(Opcode::Text, b"x"), vec![0x3f; 9]].concat(),
            ),
        ];
        for (what, up, down) in cases {
            let mut pieces = Vec::new();
            if !up.is_empty() {
                pieces.push(data(Dir::Up, &up));
            }
            if !down.is_empty() {
                pieces.push(data(Dir::Down, &down));
            }
            let mut c = conn(pieces);
            c.midstream = true;
            assert!(decode(&c, SessionId(1)).is_none(), "{what}");
        }
    }

    #[test]
    fn a_session_picked_up_after_its_handshake_still_yields_its_messages() {
        let mut c = conn(vec![
            data(Dir::Down, &frame(true, false, Opcode::Text, b"server first", false)),
            data(Dir::Up, &frame(true, false, Opcode::Binary, b"\x01\x02", true)),
        ]);
        c.midstream = true;
        let s = decode(&c, SessionId(3)).unwrap();
        assert_eq!(s.client, c.a, "the masking side is the client");
        assert_eq!(
            summary(&s),
            [(Dir::Down, Kind::Text, b"server first".to_vec(), 1), (Dir::Up, Kind::Binary, vec![1, 2], 1)]
        );
        assert!(s.problems.iter().any(|p| p.contains("no handshake")), "{:?}", s.problems);
        // Not frames at all (mid-way through a payload, or not WebSocket): no session.
        let mut junk = conn(vec![data(Dir::Up, b"\x7f\xfe\x00garbage"), data(Dir::Down, b"more")]);
        junk.midstream = true;
        assert!(decode(&junk, SessionId(1)).is_none());
    }

    /// A session whose server sends `messages`, each compressed with context takeover.
    fn compressed_session(messages: &[&[u8]]) -> Reassembled {
        let mut z = Compress::new(Compression::default(), false);
        let frames: Vec<u8> =
            messages.iter().flat_map(|m| frame(true, true, Opcode::Binary, &deflate(&mut z, m), false)).collect();
        conn(vec![
            data(Dir::Up, UPGRADE),
            data(Dir::Down, format!("{SWITCH}Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n").as_bytes()),
            data(Dir::Down, &frames),
        ])
    }

    #[test]
    fn a_deflate_bomb_is_cut_marked_incomplete_and_never_returned_as_whole() {
        // 200 MiB of zeros compress to ~200 KB: the message is cut at 64 MiB, said so.
        let bomb = vec![0u8; 200 << 20];
        let s = decode(&compressed_session(&[&bomb, b"after"]), SessionId(1)).unwrap();
        let m = &s.messages[0];
        assert!(m.incomplete && m.data.len() == MAX_MESSAGE, "{} bytes, incomplete {}", m.data.len(), m.incomplete);
        assert!(s.problems.iter().any(|p| p.contains("cut there, incomplete")), "{:?}", s.problems);
        assert!(s.messages[1].incomplete, "the shared window is lost after a cut: {:?}", s.messages[1].data);
    }

    #[test]
    fn a_read_inflates_within_one_budget_across_messages() {
        let ten_mib = vec![b'a'; 10 << 20];
        let messages: Vec<&[u8]> = (0..10).map(|_| &ten_mib[..]).collect();
        let c = compressed_session(&messages);
        let mut budget = InflateBudget::for_input(0); // 64 MiB
        let s = decode_within(&c, SessionId(1), &mut budget).unwrap();
        // Six whole, the seventh cut; the rest keep their (small) compressed bytes.
        let inflated: usize = s.messages[..7].iter().map(|m| m.data.len()).sum();
        assert_eq!(inflated, 64 << 20);
        assert!(s.messages[7..].iter().all(|m| m.incomplete && m.data.len() < 1 << 20));
        let whole = s.messages.iter().filter(|m| !m.incomplete).count();
        assert_eq!(whole, 6, "six whole messages fit, the seventh is cut, the rest left compressed");
        assert!(s.problems.iter().any(|p| p.contains("inflate budget")), "{:?}", s.problems);
    }

    #[test]
    fn a_flood_of_bad_frames_costs_a_few_problems_and_a_count() {
        let stray: Vec<u8> = (0..100_000).flat_map(|_| frame(true, false, Opcode::Continuation, b"", false)).collect();
        let c = conn(vec![
            data(Dir::Up, UPGRADE),
            data(Dir::Down, format!("{SWITCH}\r\n").as_bytes()),
            data(Dir::Down, &stray),
        ]);
        let s = decode(&c, SessionId(1)).unwrap();
        assert!(s.problems.len() <= MAX_PROBLEMS + 1, "{}", s.problems.len());
        assert!(s.problems.last().unwrap().contains("99992 more problems"), "{:?}", s.problems.last());
    }

    #[test]
    fn absurd_body_lengths_end_the_search_without_overflow() {
        let huge = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", usize::MAX);
        let chunked = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", usize::MAX);
        let c = conn(vec![data(Dir::Up, huge.as_bytes()), data(Dir::Down, chunked.as_bytes()), data(Dir::Up, UPGRADE)]);
        assert!(decode(&c, SessionId(1)).is_none());
        let c = conn(vec![
            data(Dir::Up, b"GET / HTTP/1.1\r\n\r\n"),
            data(Dir::Down, chunked.as_bytes()),
            data(Dir::Up, UPGRADE),
        ]);
        assert!(decode(&c, SessionId(1)).is_none());
    }

    #[test]
    fn not_websocket_is_no_session_and_bad_frames_are_reported() {
        let plain = conn(vec![
            data(Dir::Up, b"GET / HTTP/1.1\r\n\r\n"),
            data(Dir::Down, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ]);
        assert!(decode(&plain, SessionId(1)).is_none());
        assert!(decode(&conn(vec![data(Dir::Up, b"\x16\x03\x01 tls hello")]), SessionId(1)).is_none());
        let bad = conn(vec![
            data(Dir::Up, UPGRADE),
            data(Dir::Down, format!("{SWITCH}\r\n").as_bytes()),
            data(Dir::Down, &[0x83, 0x00]), // a reserved opcode
        ]);
        let s = decode(&bad, SessionId(1)).unwrap();
        assert!(s.problems.iter().any(|p| p.contains("opcode")), "{:?}", s.problems);
        let cont = conn(vec![
            data(Dir::Up, UPGRADE),
            data(Dir::Down, format!("{SWITCH}\r\n").as_bytes()),
            data(Dir::Down, &frame(true, false, Opcode::Continuation, b"x", false)),
        ]);
        assert!(decode(&cont, SessionId(1)).unwrap().problems.iter().any(|p| p.contains("continuation")));
    }

    #[test]
    fn a_handshake_cut_by_the_snap_length_still_gives_the_session_with_a_problem() {
        let text = |m: &[u8], masked| frame(true, false, Opcode::Text, m, masked);
        let switch = format!("{SWITCH}\r\n");
        // The request's tail was cut (and, the second time, the 101's too).
        for response_cut in [false, true] {
            let response: Vec<(Dir, Readable)> = match response_cut {
                false => vec![data(Dir::Down, switch.as_bytes())],
                true => vec![
                    data(Dir::Down, &switch.as_bytes()[..40]),
                    (Dir::Down, Readable::Gap(switch.len() as u64 - 40)),
                ],
            };
            let c = conn(
                [
                    vec![data(Dir::Up, &UPGRADE[..60]), (Dir::Up, Readable::Gap(UPGRADE.len() as u64 - 60))],
                    response,
                    vec![
                        data(Dir::Up, &text(b"one", true)),
                        data(Dir::Down, &text(b"two", false)),
                        data(Dir::Up, &text(b"three", true)),
                        data(Dir::Down, &text(b"four", false)),
                    ],
                ]
                .concat(),
            );
            let s = decode(&c, SessionId(1)).unwrap_or_else(|| panic!("response cut {response_cut}: no session"));
            let texts: Vec<_> = s.messages.iter().map(|m| (m.dir, m.data.clone())).collect();
            assert_eq!(
                texts,
                [
                    (Dir::Up, b"one".to_vec()),
                    (Dir::Down, b"two".to_vec()),
                    (Dir::Up, b"three".to_vec()),
                    (Dir::Down, b"four".to_vec())
                ],
                "response cut {response_cut}"
            );
            let want = if response_cut {
                "the handshake was not captured whole"
            } else {
                "the client's Upgrade request was not captured whole"
            };
            assert!(s.problems.iter().any(|p| p.starts_with(want)), "{:?}", s.problems);
            assert_eq!(s.status, if response_cut { 0 } else { 101 });
        }
        // A plain HTTP exchange cut the same way is no session.
        let c = conn(vec![
            data(Dir::Up, b"GET /x HTTP/1.1\r\nHost: h\r\nX-Long: "),
            (Dir::Up, Readable::Gap(300)),
            data(Dir::Down, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        ]);
        assert!(decode(&c, SessionId(1)).is_none());
    }

    #[test]
    fn what_the_capture_repeated_primes_the_inflater_and_is_not_a_message() {
        // A rotated file: the Upgrade exchange and a priming message were repeated by the
        // writer; the live part follows, compressed with the context the priming set.
        let mut z = Compress::new(Compression::default(), false);
        let prime = frame(true, true, Opcode::Binary, &deflate(&mut z, b"the window so far"), false);
        let live = frame(true, true, Opcode::Text, &deflate(&mut z, b"the window so far, again"), false);
        let response = format!("{SWITCH}Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n");
        let mut c = conn(vec![
            data(Dir::Up, UPGRADE),
            data(Dir::Down, response.as_bytes()),
            data(Dir::Down, &prime),
            data(Dir::Down, &live),
        ]);
        c.repeated = PerDir::new(UPGRADE.len() as u64, (response.len() + prime.len()) as u64);
        let s = decode(&c, SessionId(1)).unwrap();
        assert_eq!(summary(&s), [(Dir::Down, Kind::Text, b"the window so far, again".to_vec(), 1)]);
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert!(s.notes.iter().any(|n| n.contains("1 message(s) restoring the compression context")), "{:?}", s.notes);
        assert_eq!(s.path, "/chat?x=1", "the repeated handshake is the part's handshake");
    }
}
