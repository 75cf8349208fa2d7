//! Where the messages of one HTTP/1.1 connection begin and end, both ways, as its bytes
//! arrive in pieces of any size (RFC 9112 §6): each head, held until it is whole; a body
//! by its `Content-Length`, its chunks (and trailers), or to the end of the connection;
//! none after a `HEAD` request, a `1xx`, `204` or `304`; and the switch to another
//! protocol after a `101`. Capture's rewriter follows each leg with it, and the replay
//! reader walks a recorded connection's exchanges to its Upgrade with it.

use std::collections::VecDeque;

use super::{request, response, Head, HeadEnd, HeadError, HeadKind};
use crate::dir::{Dir, PerDir};

/// The shortest request a framer follows: `G / HTTP/1.1\n\n`. Requests followed ahead
/// of their responses (pipelining) are bounded by how many of them a head's worth of
/// bytes holds: all a client can pipeline into a server's read buffer.
const SHORTEST_REQUEST: usize = 14;
/// The longest chunk-size line followed (extensions included).
const MAX_CHUNK_LINE: usize = 1024;

/// Why the framing of one direction can no longer be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A head httparse cannot read.
    #[error(transparent)]
    BadHead(#[from] HeadError),
    /// A head longer than the framer holds.
    #[error("an HTTP head of more than {0} bytes")]
    HeadTooLong(usize),
    /// A `Content-Length` that is not a number.
    #[error("bad Content-Length {0:?}")]
    BadContentLength(String),
    /// A chunk-size line that is not a hexadecimal size.
    #[error("a bad chunk-size line")]
    BadChunkSize,
    /// A chunk-size line longer than any real one.
    #[error("a chunk-size line of more than {MAX_CHUNK_LINE} bytes")]
    ChunkLineTooLong,
    /// A line of a chunked body (a chunk-size line, a chunk's end, a trailer) that does
    /// not end with CRLF: hyper reads a bare LF there differently, or refuses it.
    #[error("a line of a chunked body that does not end with CRLF")]
    BareLineFeed,
    /// More requests ahead of their responses than are followed: which response has no
    /// body (a `HEAD`'s) is unknown from there on.
    #[error("more than {0} requests ahead of their responses")]
    TooManyPipelined(usize),
    /// Bytes were lost where the framing needs them.
    #[error("bytes lost where the HTTP framing needs them")]
    BytesLost,
}

/// What bytes of a body are ([`Framer::body_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// The content.
    Content,
    /// A chunk-size line, or the line end after a chunk's data.
    Framing,
    /// The trailer fields after the last chunk.
    Trailers,
}

/// What the bytes an [`Framer::advance`] took are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Bytes of a head that is not complete yet: the framer holds them.
    HeadSoFar,
    /// The last bytes of a head: the whole head, and what it says; `ends` when no body
    /// follows it.
    Head {
        /// What the head says.
        head: Head,
        /// All its bytes (held across inputs), its blank line included.
        bytes: Vec<u8>,
        /// The message ends with its head.
        ends: bool,
    },
    /// Bytes of a head longer than the framer holds (what it held before is taken with
    /// [`Framer::take_held`]); `ends` at its blank line. This direction's framing is lost
    /// after it.
    HeadTooLong {
        /// The head's blank line is among these bytes, at their end.
        ends: bool,
    },
    /// Body bytes (a chunked body's sizes and trailers included); `ends` on the
    /// message's last.
    Body {
        /// The message's last bytes.
        ends: bool,
    },
    /// Nothing taken: from here on the bytes going this way belong to the protocol the
    /// connection switched to.
    Switched,
    /// This direction's framing cannot be followed from here on. Nothing is taken, unless
    /// a head just ended (one that does not parse, or whose framing is bad): its bytes
    /// are taken, and held with the head's earlier bytes for [`Framer::take_held`].
    Unframed(FramingError),
}

/// How many bytes an [`Framer::advance`] took, and what they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    /// Bytes taken from the start of the input.
    pub used: usize,
    /// What they are.
    pub part: Part,
}

/// What a response has to know of the request it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// A `HEAD`: its response has no body.
    Head,
    /// An Upgrade to WebSocket: a `101` switches the connection.
    Upgrade,
    /// Anything else.
    Other,
}

/// Where one direction is.
#[derive(Debug, Clone)]
enum State {
    /// In a head, held in `Side::held`.
    Head(HeadEnd),
    /// In a head too long to hold, up to its blank line.
    LongHead(HeadEnd),
    /// In a body of known length: bytes left.
    Body(u64),
    /// In a chunked body.
    Chunked(Chunk),
    /// In a response body that runs to the end of the connection.
    ToClose,
    /// After an Upgrade request, before its response says whether the connection switches.
    AwaitingSwitch,
    /// Past the switch: another protocol.
    Switched,
    /// The framing is lost, and why.
    Lost(FramingError),
}

/// Where a chunked body is.
#[derive(Debug, Clone)]
enum Chunk {
    /// In a chunk-size line: its bytes so far.
    Size(Vec<u8>),
    /// In a chunk's data: bytes left.
    Data(u64),
    /// In the line end after a chunk's data: bytes of it left.
    DataEnd(u8),
    /// In the trailer fields, which end at an empty line.
    Trailers(Line),
}

/// Where in a line the trailers are. Every line of a chunked body ends with CRLF, as
/// hyper reads it: a bare LF is refused, not taken for a line end (hyper takes it for a
/// byte of a trailer field, so the two would part ways).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the start of a line: a line end here is the empty line.
    Start,
    /// After a CR at the start of a line.
    StartCr,
    /// Inside a line.
    Within,
    /// After a CR inside a line.
    WithinCr,
}

/// One direction: its state and the head it holds.
#[derive(Debug, Clone)]
struct Side {
    state: State,
    /// The bytes of the head being read.
    held: Vec<u8>,
}

/// One HTTP/1.1 connection's framing, both ways.
#[derive(Debug, Clone)]
pub struct Framer {
    sides: PerDir<Side>,
    /// Requests sent whose final response has not come, oldest first.
    asked: VecDeque<Asked>,
    /// The longest head held.
    max_head: usize,
}

impl Framer {
    /// A connection at its first byte each way, holding heads of up to `max_head` bytes.
    pub fn new(max_head: usize) -> Framer {
        let side = || Side { state: State::Head(HeadEnd::new()), held: Vec::new() };
        Framer { sides: PerDir::new(side(), side()), asked: VecDeque::new(), max_head }
    }

    /// Takes the next bytes going `dir` (`Up`: requests), up to the end of whatever they
    /// are part of; `input` is not empty.
    pub fn advance(&mut self, dir: Dir, input: &[u8]) -> Advance {
        let side = &mut self.sides[dir];
        match &mut side.state {
            State::Head(end) => {
                let Some(n) = end.scan(input) else {
                    side.held.extend_from_slice(input);
                    return self.head_so_far(dir, input.len());
                };
                side.held.extend_from_slice(&input[..n]);
                let part = self.head(dir);
                Advance { used: n, part }
            }
            State::LongHead(end) => match end.scan(input) {
                Some(n) => {
                    side.state = State::Lost(FramingError::HeadTooLong(self.max_head));
                    Advance { used: n, part: Part::HeadTooLong { ends: true } }
                }
                None => Advance { used: input.len(), part: Part::HeadTooLong { ends: false } },
            },
            State::Body(left) => {
                let n = (*left).min(input.len() as u64);
                *left -= n;
                let ends = *left == 0;
                if ends {
                    self.message_ended(dir);
                }
                Advance { used: n as usize, part: Part::Body { ends } }
            }
            State::Chunked(chunk) => match chunk.advance(input) {
                Ok((used, ends)) => {
                    if ends {
                        self.message_ended(dir);
                    }
                    Advance { used, part: Part::Body { ends } }
                }
                Err(e) => self.lose(dir, e),
            },
            State::ToClose => Advance { used: input.len(), part: Part::Body { ends: false } },
            State::AwaitingSwitch => {
                // No answer yet: bytes that may begin a request (a method's token
                // character, or the empty lines allowed before one) mean the client went
                // on with HTTP; anything else is the new protocol, sent before the answer.
                // A WebSocket client's first frame byte is never one of those: its RSV
                // bits are clear before an extension is agreed, so it is 0x0_ or 0x8_,
                // and a control frame (opcode 0x8 to 0xf) has FIN set.
                side.state = match may_begin_request(input[0]) {
                    true => State::Head(HeadEnd::new()),
                    false => State::Switched,
                };
                self.advance(dir, input)
            }
            State::Switched => Advance { used: 0, part: Part::Switched },
            State::Lost(e) => Advance { used: 0, part: Part::Unframed(e.clone()) },
        }
    }

    /// The bytes of an incomplete head `dir` holds, taken out: when the head turned out
    /// too long, or the caller gives up on it.
    pub fn take_held(&mut self, dir: Dir) -> Vec<u8> {
        std::mem::take(&mut self.sides[dir].held)
    }

    /// Whether `dir` holds bytes of a head that is not complete.
    pub fn inside_head(&self, dir: Dir) -> bool {
        !self.sides[dir].held.is_empty()
    }

    /// What the next bytes going `dir` are, inside a body: its content, the framing of
    /// its chunks, or its trailer fields; `None` outside a body. Each
    /// [`Framer::advance`] takes bytes of one kind.
    pub fn body_kind(&self, dir: Dir) -> Option<BodyKind> {
        match &self.sides[dir].state {
            State::Body(_) | State::ToClose | State::Chunked(Chunk::Data(_)) => Some(BodyKind::Content),
            State::Chunked(Chunk::Trailers(_)) => Some(BodyKind::Trailers),
            State::Chunked(_) => Some(BodyKind::Framing),
            _ => None,
        }
    }

    /// Whether the requests wait for the answer to an Upgrade request: until it comes,
    /// what the client sends next may be HTTP or the new protocol.
    pub fn awaiting_switch(&self) -> bool {
        matches!(self.sides[Dir::Up].state, State::AwaitingSwitch)
    }

    /// Whether `dir`'s framing was lost.
    pub fn lost(&self, dir: Dir) -> bool {
        matches!(self.sides[dir].state, State::Lost(_))
    }

    /// Whether `dir` switched to another protocol.
    pub fn switched(&self, dir: Dir) -> bool {
        matches!(self.sides[dir].state, State::Switched)
    }

    /// `n` bytes going `dir` were lost. Inside a body of known length, or past the end of
    /// the framing (a body to the close, another protocol), that costs nothing; anywhere
    /// else this direction's framing is lost, and the error says so.
    pub fn skip(&mut self, dir: Dir, n: u64) -> Result<(), FramingError> {
        let state = &mut self.sides[dir].state;
        match state {
            State::Body(left) if n <= *left => {
                *left -= n;
                if *left == 0 {
                    self.message_ended(dir);
                }
            }
            State::Chunked(Chunk::Data(left)) if n <= *left => {
                *left -= n;
                if *left == 0 {
                    *state = State::Chunked(Chunk::DataEnd(2));
                }
            }
            State::ToClose | State::Switched => {}
            State::Lost(e) => return Err(e.clone()),
            _ => {
                *state = State::Lost(FramingError::BytesLost);
                return Err(FramingError::BytesLost);
            }
        }
        Ok(())
    }

    /// `used` more bytes of a head: held, unless the head grew too long.
    fn head_so_far(&mut self, dir: Dir, used: usize) -> Advance {
        let side = &mut self.sides[dir];
        if side.held.len() <= self.max_head {
            return Advance { used, part: Part::HeadSoFar };
        }
        if let State::Head(end) = &side.state {
            side.state = State::LongHead(end.clone());
        }
        // These bytes are the part's, not held: the caller has them in its input.
        side.held.truncate(side.held.len() - used);
        Advance { used, part: Part::HeadTooLong { ends: false } }
    }

    /// A blank line ended a head going `dir`: what it says, and what follows it.
    fn head(&mut self, dir: Dir) -> Part {
        let side = &mut self.sides[dir];
        let parsed = match dir {
            Dir::Up => request(&side.held),
            Dir::Down => response(&side.held),
        };
        let head = match parsed {
            Ok(Some(head)) => head,
            // Only empty lines so far (allowed before a request line): the head is still to come.
            Ok(None) => {
                side.state = State::Head(HeadEnd::new());
                return Part::HeadSoFar;
            }
            Err(e) => return self.lose(dir, e.into()).part,
        };
        let bytes = std::mem::take(&mut side.held);
        let next = match dir {
            Dir::Up => self.after_request(&head),
            Dir::Down => self.after_response(&head),
        };
        let ends = match next {
            Ok(After::Body(state)) => {
                self.sides[dir].state = state;
                false
            }
            Ok(After::End) => {
                self.message_ended(dir);
                true
            }
            Ok(After::Switch) => {
                self.sides[dir].state = State::Switched;
                true
            }
            Err(e) => {
                // The head is held again: whoever gives up on the framing takes it.
                self.sides[dir].held = bytes;
                return self.lose(dir, e).part;
            }
        };
        Part::Head { head, bytes, ends }
    }

    /// What follows a request head.
    fn after_request(&mut self, head: &Head) -> Result<After, FramingError> {
        let most = (self.max_head / SHORTEST_REQUEST).max(64);
        if self.asked.len() >= most {
            return Err(FramingError::TooManyPipelined(most));
        }
        self.asked.push_back(match () {
            () if head.method == "HEAD" => Asked::Head,
            () if head.asks_websocket() => Asked::Upgrade,
            () => Asked::Other,
        });
        body(head, HeadKind::Request)
    }

    /// What follows a response head: another head (interim), the switch (`101`), or its
    /// body.
    fn after_response(&mut self, head: &Head) -> Result<After, FramingError> {
        if head.is_interim() {
            return Ok(After::End);
        }
        let asked = self.asked.pop_front().unwrap_or(Asked::Other);
        if head.status == 101 {
            let up = &mut self.sides[Dir::Up];
            if matches!(&up.state, State::AwaitingSwitch) || matches!(&up.state, State::Head(e) if !e.started()) {
                up.state = State::Switched;
            }
            return Ok(After::Switch);
        }
        if asked == Asked::Upgrade && matches!(self.sides[Dir::Up].state, State::AwaitingSwitch) {
            // Refused: the client's next bytes are HTTP again.
            self.sides[Dir::Up].state = State::Head(HeadEnd::new());
        }
        if asked == Asked::Head || head.status == 204 || head.status == 304 {
            return Ok(After::End);
        }
        body(head, HeadKind::Response)
    }

    /// A message going `dir` ended: the next head, or (after an Upgrade request) the wait
    /// for its answer.
    fn message_ended(&mut self, dir: Dir) {
        let awaiting = dir == Dir::Up && self.asked.back() == Some(&Asked::Upgrade);
        self.sides[dir].state = match awaiting {
            true => State::AwaitingSwitch,
            false => State::Head(HeadEnd::new()),
        };
    }

    /// `dir`'s framing is lost, for `e`.
    fn lose(&mut self, dir: Dir, e: FramingError) -> Advance {
        self.sides[dir].state = State::Lost(e.clone());
        Advance { used: 0, part: Part::Unframed(e) }
    }
}

/// Whether `b` may be a request's first byte: a token character (RFC 9110 §5.6.2) or a
/// line end (RFC 9112 §2.2).
fn may_begin_request(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~\r\n".contains(&b)
}

/// What follows a complete head.
enum After {
    /// A body, read in this state.
    Body(State),
    /// Nothing: the message ended with its head.
    End,
    /// The connection switches protocols (a `101`).
    Switch,
}

/// What follows `head`, a head of `kind`, by its framing: a body (by its chunks, its
/// length, or for a response without either, to the close), or nothing.
fn body(head: &Head, kind: HeadKind) -> Result<After, FramingError> {
    if head.has_token("transfer-encoding", "chunked") {
        return Ok(After::Body(State::Chunked(Chunk::Size(Vec::new()))));
    }
    match head.field("content-length").map(|v| (v, v.trim().parse::<u64>())) {
        Some((_, Ok(0))) => Ok(After::End),
        Some((_, Ok(n))) => Ok(After::Body(State::Body(n))),
        Some((v, Err(_))) => Err(FramingError::BadContentLength(v.to_owned())),
        // A request without a length has no body; a response runs to the close.
        None => Ok(match kind {
            HeadKind::Request => After::End,
            HeadKind::Response => After::Body(State::ToClose),
        }),
    }
}

impl Chunk {
    /// Takes bytes of a chunked body from the start of `input`: how many, and whether the
    /// body ended with them.
    fn advance(&mut self, input: &[u8]) -> Result<(usize, bool), FramingError> {
        match self {
            Chunk::Size(line) => {
                let Some(nl) = input.iter().position(|b| *b == b'\n') else {
                    line.extend_from_slice(input);
                    return match line.len() > MAX_CHUNK_LINE {
                        true => Err(FramingError::ChunkLineTooLong),
                        false => Ok((input.len(), false)),
                    };
                };
                line.extend_from_slice(&input[..nl]);
                let Some(line) = line.strip_suffix(b"\r") else { return Err(FramingError::BareLineFeed) };
                let size = std::str::from_utf8(line)
                    .ok()
                    .and_then(|l| u64::from_str_radix(l.split(';').next()?.trim_end_matches([' ', '\t']), 16).ok());
                *self = match size {
                    Some(0) => Chunk::Trailers(Line::Start),
                    Some(n) => Chunk::Data(n),
                    None => return Err(FramingError::BadChunkSize),
                };
                Ok((nl + 1, false))
            }
            Chunk::Data(left) => {
                let n = (*left).min(input.len() as u64);
                *left -= n;
                if *left == 0 {
                    *self = Chunk::DataEnd(2);
                }
                Ok((n as usize, false))
            }
            Chunk::DataEnd(left) => {
                let n = usize::from(*left).min(input.len());
                let want = &b"\r\n"[2 - usize::from(*left)..][..n];
                if &input[..n] != want {
                    return Err(FramingError::BareLineFeed);
                }
                *left -= n as u8;
                if *left == 0 {
                    *self = Chunk::Size(Vec::new());
                }
                Ok((n, false))
            }
            Chunk::Trailers(line) => {
                for (i, b) in input.iter().enumerate() {
                    *line = match (b, *line) {
                        (b'\n', Line::StartCr) => return Ok((i + 1, true)),
                        (b'\n', Line::WithinCr) => Line::Start,
                        (b'\n', _) | (_, Line::StartCr | Line::WithinCr) => return Err(FramingError::BareLineFeed),
                        (b'\r', Line::Start) => Line::StartCr,
                        (b'\r', _) => Line::WithinCr,
                        _ => Line::Within,
                    };
                }
                Ok((input.len(), false))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http;

    /// What the framer makes of `input` going `dir`, fed in pieces of `piece` bytes:
    /// (bytes, what) per part, neighbouring pieces of one part merged.
    fn parts(f: &mut Framer, dir: Dir, input: &[u8], piece: usize) -> Vec<(usize, String)> {
        let mut out: Vec<(usize, String)> = Vec::new();
        for chunk in input.chunks(piece) {
            let mut at = 0;
            while at < chunk.len() {
                let a = f.advance(dir, &chunk[at..]);
                let what = match &a.part {
                    Part::Head { head, bytes, ends } => {
                        assert_eq!(bytes.len(), head.len, "the head's bytes come with it");
                        format!("head {} {}{}", head.method, head.status, ends_word(*ends))
                    }
                    Part::Body { ends } => format!("body{}", ends_word(*ends)),
                    Part::HeadTooLong { ends } => format!("long head{}", ends_word(*ends)),
                    other => format!("{other:?}"),
                };
                if a.used == 0 {
                    out.push((0, what));
                    return out;
                }
                at += a.used;
                // Pieces of one part merge: a head's (held, then complete) and a body's.
                let kind =
                    |w: &str| if w == "HeadSoFar" { "head".to_owned() } else { w.trim_end_matches(" end").to_owned() };
                match out.last_mut() {
                    Some(last) if !last.1.ends_with(" end") && kind(&last.1).starts_with(&kind(&what)[..4]) => {
                        *last = (last.0 + a.used, what)
                    }
                    _ => out.push((a.used, what)),
                }
            }
        }
        out
    }

    fn ends_word(ends: bool) -> &'static str {
        if ends {
            " end"
        } else {
            ""
        }
    }

    #[test]
    fn bodies_are_framed_by_length_chunks_or_the_close_whatever_the_pieces() {
        let up = b"POST /a HTTP/1.1\r\nContent-Length: 6\r\n\r\nCookieHEAD /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
        let down = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nSet-\r\n0\r\nX: y\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 200 OK\r\n\r\nto the close";
        for piece in [1, 2, 3, 7, 1000] {
            let mut f = Framer::new(1 << 16);
            let got_up = parts(&mut f, Dir::Up, up, piece);
            assert_eq!(
                got_up,
                [
                    (39, "head POST 0".to_owned()),
                    (6, "body end".to_owned()),
                    (20, "head HEAD 0 end".to_owned()),
                    (19, "head GET 0 end".to_owned())
                ],
                "piece {piece}"
            );
            let got_down = parts(&mut f, Dir::Down, down, piece);
            assert_eq!(
                got_down,
                [
                    (47, "head  200".to_owned()),
                    (20, "body end".to_owned()),
                    (39, "head  200 end".to_owned()),
                    (19, "head  200".to_owned()),
                    (12, "body".to_owned())
                ],
                "piece {piece}: the HEAD's answer has no body, the last runs to the close"
            );
        }
    }

    #[test]
    fn an_upgrade_switches_both_ways_after_interim_answers_and_a_refusal_does_not() {
        let mut f = Framer::new(1 << 16);
        let upgrade = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(parts(&mut f, Dir::Up, upgrade, 5), [(upgrade.len(), "head GET 0 end".to_owned())]);
        let answers = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n";
        let got = parts(&mut f, Dir::Down, answers, 4);
        assert_eq!(got, [(25, "head  100 end".to_owned()), (36, "head  101 end".to_owned())]);
        assert!(f.switched(Dir::Up) && f.switched(Dir::Down));
        assert_eq!(f.advance(Dir::Up, &[0x81, 0x80]).part, Part::Switched);

        let mut refused = Framer::new(1 << 16);
        parts(&mut refused, Dir::Up, upgrade, 100);
        parts(&mut refused, Dir::Down, b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n", 100);
        let next = parts(&mut refused, Dir::Up, b"GET /again HTTP/1.1\r\n\r\n", 3);
        assert_eq!(next, [(23, "head GET 0 end".to_owned())], "the client goes on with HTTP");

        // A request pipelined behind the Upgrade request, before its answer: HTTP goes on,
        // and its bytes are taken (only a switch or a lost framing takes nothing).
        let mut pipelined = Framer::new(1 << 16);
        parts(&mut pipelined, Dir::Up, upgrade, 100);
        let next = parts(&mut pipelined, Dir::Up, b"GET /next HTTP/1.1\r\n\r\n", 4);
        assert_eq!(next, [(22, "head GET 0 end".to_owned())]);

        // A request pipelined behind it in a form hyper takes: empty lines first, a
        // lowercase method, bare LF line ends.
        for next in [&b"\r\nGET /n HTTP/1.1\r\n\r\n"[..], b"get /n HTTP/1.1\r\n\r\n", b"GET /n HTTP/1.1\n\n"] {
            let mut pipelined = Framer::new(1 << 16);
            parts(&mut pipelined, Dir::Up, upgrade, 100);
            let got = parts(&mut pipelined, Dir::Up, next, 3);
            assert_eq!(got.len(), 1, "{got:?}");
            assert!(got[0].1.starts_with("head ") && got[0].0 == next.len(), "{got:?}");
        }

        // Frames sent right behind the Upgrade request, before its answer.
        let mut early = Framer::new(1 << 16);
        parts(&mut early, Dir::Up, upgrade, 100);
        assert_eq!(early.advance(Dir::Up, &[0x81, 0x85]).part, Part::Switched);
    }

    #[test]
    fn broken_framing_is_said_and_lost_bytes_cost_nothing_inside_a_known_length() {
        let mut f = Framer::new(1 << 16);
        let bad = b"POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n";
        let a = f.advance(Dir::Up, bad);
        assert_eq!(a.part, Part::Unframed(FramingError::BadContentLength("ten".into())));
        assert!(f.skip(Dir::Up, 1).is_err());

        let mut f = Framer::new(1 << 16);
        f.advance(Dir::Up, b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n");
        assert_eq!(f.skip(Dir::Up, 60), Ok(()));
        assert_eq!(f.advance(Dir::Up, &[7; 30]).part, Part::Body { ends: false });
        assert_eq!(f.skip(Dir::Up, 10), Ok(()), "a loss that ends the body ends the message");
        assert_eq!(
            f.advance(Dir::Up, b"GET / HTTP/1.1\r\n\r\n").part,
            Part::Head {
                head: http::request(b"GET / HTTP/1.1\r\n\r\n").unwrap().unwrap(),
                bytes: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
                ends: true
            }
        );
        f.advance(Dir::Up, b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(f.skip(Dir::Up, 6), Err(FramingError::BytesLost), "a loss past the body's end");

        let mut f = Framer::new(16);
        let long = b"GET / HTTP/1.1\r\nX: yyyyyyyyyyyyyyyyyyyyyyyy\r\n\r\nGET";
        assert_eq!(
            parts(&mut f, Dir::Up, long, 8),
            [
                (16, "HeadSoFar".to_owned()),
                (31, "long head end".to_owned()),
                (0, "Unframed(HeadTooLong(16))".to_owned())
            ]
        );
        assert_eq!(f.take_held(Dir::Up), &long[..16], "what was held before the head grew too long");
        // Every line of a chunked body ends with CRLF, as hyper reads it: a bare LF in a
        // chunk-size line, a chunk's end or the trailers is refused, never taken for a
        // line end (hyper would take the bytes after it for trailers).
        for body in
            [&b"0\r\n\nGET /x HTTP/1.1\r\n\r\n"[..], b"0\r\nX: y\n\n", b"3\nabc\r\n", b"3\r\nabc\n0\r\n", b"0\r\n\r\r"]
        {
            let mut f = Framer::new(1 << 16);
            let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
            let got = parts(&mut f, Dir::Up, &[&head[..], body].concat(), 3);
            assert_eq!(got.last().unwrap().1, "Unframed(BareLineFeed)", "{:?}", String::from_utf8_lossy(body));
        }
        let mut f = Framer::new(1 << 16);
        let good = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1 \r\nabc\r\n0\r\nA: b\r\nC: d\r\n\r\n";
        assert_eq!(parts(&mut f, Dir::Up, good, 2).last().unwrap().1, "body end");
        let mut f = Framer::new(1 << 16);
        let chunks = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        let got = parts(&mut f, Dir::Down, chunks, 100);
        assert_eq!(got.last().unwrap().1, "Unframed(BadChunkSize)");
    }
}
