//! The client leg's requests as hyper frames them, followed with the codebase's one HTTP
//! framer ([`Framer`]) over the same bytes hyper read and wrote: where each request
//! begins and ends, which of them the proxy has not yet routed (their bytes wait in the
//! tap until it has), and whether what the client sent after an Upgrade request is HTTP
//! or the new protocol (it waits for the answer). The tap holds back, from
//! [`Requests::undecided_from`] on, what no route has decided yet, so that a request of
//! a route that records nothing never reaches the capture. Pure: offsets in, offsets out.

use std::collections::VecDeque;

use wstap_wire::http::{Framer, FramingError, Part};
use wstap_wire::{Dir, PerDir};

use super::chunk::Piece;

/// A request among the client's bytes: socket offsets of its first byte (any empty
/// lines before it included) and of the byte after its head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Request {
    pub(super) first: u64,
    pub(super) head_end: u64,
    /// Its method, as hyper will hand it to the proxy.
    pub(super) method: String,
    /// It asks to switch to WebSocket.
    pub(super) upgrade: bool,
}

/// One client connection's requests.
pub(super) struct Requests {
    framer: Framer,
    /// The longest head followed.
    max_head: usize,
    /// Bytes followed each way.
    at: PerDir<u64>,
    /// The first byte of the head being read, while one is.
    head_from: Option<u64>,
    /// Requests seen whole and not yet routed, oldest first.
    waiting: VecDeque<Request>,
    /// The last request routed.
    routed: Option<Request>,
    /// Where the client's bytes began to wait for the answer to an Upgrade request.
    awaiting_from: Option<u64>,
    /// The client's bytes since, followed once the answer says what they are.
    awaiting: Vec<u8>,
    /// Where the client's framing was lost, and why.
    lost: Option<(u64, FramingError)>,
}

impl Requests {
    /// A connection at its first byte each way, holding heads of up to `max_head` bytes.
    pub(super) fn new(max_head: usize) -> Requests {
        Requests {
            framer: Framer::new(max_head),
            max_head,
            at: PerDir::default(),
            head_from: None,
            waiting: VecDeque::new(),
            routed: None,
            awaiting_from: None,
            awaiting: Vec::new(),
            lost: None,
        }
    }

    /// Whether the client switched to another protocol (a `101` was written): nothing
    /// more to follow.
    pub(super) fn switched(&self) -> bool {
        self.framer.switched(Dir::Up)
    }

    /// Where, and why, the client's framing was lost.
    pub(super) fn lost(&self) -> Option<&(u64, FramingError)> {
        self.lost.as_ref()
    }

    /// The socket offset of the first client byte no route has decided yet: a request
    /// not yet routed (or being read), or what followed an Upgrade request before its
    /// answer.
    pub(super) fn undecided_from(&self) -> Option<u64> {
        let lost = self.lost.as_ref().map(|l| l.0);
        [self.waiting.front().map(|r| r.first), self.head_from, self.awaiting_from, lost].into_iter().flatten().min()
    }

    /// The request the proxy is routing now (hyper hands them over in order), if the
    /// framer saw it whole and it is the one hyper parsed (`method`); else the framing is
    /// lost from there.
    pub(super) fn route_next(&mut self, method: &str) -> Option<&Request> {
        let next = self.waiting.pop_front();
        if self.waiting.is_empty() {
            // Nothing kept while the connection idles.
            self.waiting = VecDeque::new();
        }
        match next {
            Some(r) if r.method == method => {
                self.routed = Some(r);
                self.routed.as_ref()
            }
            other => {
                let at = other.map_or(self.at[Dir::Up], |r| r.first);
                self.lose(at, FramingError::BytesLost);
                None
            }
        }
    }

    /// The last request routed.
    pub(super) fn routed(&self) -> Option<&Request> {
        self.routed.as_ref()
    }

    /// The first byte of the last request routed, if it asked to switch to WebSocket:
    /// its answer may start a session there.
    pub(super) fn routed_upgrade(&self) -> Option<u64> {
        self.routed.as_ref().filter(|r| r.upgrade).map(|r| r.first)
    }

    /// `piece` crossed the socket going `dir` (`Up`: read from the client).
    pub(super) fn see(&mut self, dir: Dir, piece: &Piece<'_>) {
        for slice in piece.parts_from(0) {
            self.follow(dir, slice);
        }
    }

    fn follow(&mut self, dir: Dir, mut input: &[u8]) {
        while !input.is_empty() && self.follows(dir) {
            if let Some(from) = self.awaiting_from.filter(|_| dir == Dir::Up) {
                // HTTP or the new protocol: the answer will say.
                self.awaiting.extend_from_slice(input);
                self.at[dir] += input.len() as u64;
                if self.awaiting.len() > self.max_head {
                    self.lose(from, FramingError::HeadTooLong(self.max_head));
                }
                return;
            }
            let used = match dir {
                Dir::Up => self.request_bytes(input),
                Dir::Down => self.response_bytes(input),
            };
            if used == 0 {
                break;
            }
            input = &input[used..];
        }
        self.at[dir] += input.len() as u64;
    }

    /// Whether bytes going `dir` are still followed.
    fn follows(&self, dir: Dir) -> bool {
        self.lost.is_none() && !self.framer.switched(dir) && !self.framer.lost(dir)
    }

    /// The next client bytes: returns how many were taken.
    fn request_bytes(&mut self, input: &[u8]) -> usize {
        let from = self.at[Dir::Up];
        let step = self.framer.advance(Dir::Up, input);
        let end = from + step.used as u64;
        match step.part {
            Part::HeadSoFar => {
                self.head_from.get_or_insert(from);
            }
            Part::Head { head, .. } => {
                let first = self.head_from.take().unwrap_or(from);
                // As many as the framer follows ahead of their answers: all that fit in
                // hyper's read buffer, and the bytes held are bounded apart.
                if self.waiting.len() >= self.max_head {
                    self.lose(first, FramingError::TooManyPipelined(self.max_head));
                    return 0;
                }
                let upgrade = head.asks_websocket();
                self.waiting.push_back(Request { first, head_end: end, method: head.method, upgrade });
            }
            Part::Body { .. } => {}
            Part::Switched => self.awaiting_from = None,
            Part::HeadTooLong { .. } => {
                let first = self.head_from.take().unwrap_or(from);
                self.lose(first, FramingError::HeadTooLong(self.max_head));
                return 0;
            }
            Part::Unframed(why) => {
                let first = self.head_from.take().unwrap_or(from);
                self.lose(first, why);
                return 0;
            }
        }
        if self.framer.awaiting_switch() {
            self.awaiting_from.get_or_insert(end);
        }
        self.at[Dir::Up] = end;
        step.used
    }

    /// The next bytes wstap wrote to the client: an answer that is not a `101` after an
    /// Upgrade request means the client's next bytes are HTTP again.
    fn response_bytes(&mut self, input: &[u8]) -> usize {
        let step = self.framer.advance(Dir::Down, input);
        if let Part::Head { head, .. } = &step.part {
            if !head.is_interim() && head.status != 101 {
                // The last request routed was answered: no session starts there.
                self.routed.iter_mut().for_each(|r| r.upgrade = false);
            }
        }
        if let Part::Unframed(why) = step.part {
            // Whether the client switched can no longer be told.
            if let Some(at) = self.awaiting_from {
                self.lose(at, why);
            }
            return 0;
        }
        self.at[Dir::Down] += step.used as u64;
        if let Some(from) = self.awaiting_from.filter(|_| !self.framer.awaiting_switch()) {
            // Answered: what the client sent since is followed as the answer says.
            self.awaiting_from = None;
            let (waited, end) = (std::mem::take(&mut self.awaiting), self.at[Dir::Up]);
            self.at[Dir::Up] = from;
            self.follow(Dir::Up, &waited);
            self.at[Dir::Up] = end;
        }
        step.used
    }

    /// The framing is lost at `at`: from there, or from the first request not yet
    /// routed before it, nothing can be told apart.
    fn lose(&mut self, at: u64, why: FramingError) {
        let at = self.undecided_from().map_or(at, |u| u.min(at));
        self.lost.get_or_insert((at, why));
        self.waiting.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(r: &mut Requests, bytes: &[u8]) {
        r.see(Dir::Up, &Piece::Slice(bytes));
    }

    fn written(r: &mut Requests, bytes: &[u8]) {
        r.see(Dir::Down, &Piece::Slice(bytes));
    }

    /// Requests in the forms hyper takes (empty lines first, a lowercase method, bare LF
    /// line ends, absolute-form, a body), pipelined in one read: each is found where it
    /// begins, and waits until routed.
    #[test]
    fn pipelined_requests_in_every_form_hyper_takes_are_found_where_they_begin() {
        let reqs: [&[u8]; 5] = [
            b"\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"post /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"GET http://x/c?token=1 HTTP/1.1\nHost: x\n\n",
            b"PUT /d HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\nT: 1\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
        ];
        let all = reqs.concat();
        for piece in [1, 5, all.len()] {
            let mut r = Requests::new(1 << 16);
            for chunk in all.chunks(piece) {
                read(&mut r, chunk);
            }
            let mut first = 0;
            for (req, method) in reqs.iter().zip(["GET", "post", "GET", "PUT", "GET"]) {
                assert_eq!(r.undecided_from(), Some(first), "piece {piece}");
                let got = r.route_next(method).unwrap_or_else(|| panic!("{method} at {first}, piece {piece}")).clone();
                assert_eq!(got.first, first);
                first += req.len() as u64;
            }
            assert_eq!(r.undecided_from(), Some(first), "after the Upgrade request, the client waits for its answer");
            written(&mut r, b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
            assert!(r.switched() && r.undecided_from().is_none());
        }
    }

    /// After an Upgrade refused, the client's next bytes are HTTP, in whatever form; the
    /// wait ends with the answer.
    #[test]
    fn after_a_refused_upgrade_the_next_request_is_found() {
        let mut r = Requests::new(1 << 16);
        read(&mut r, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        r.route_next("GET");
        read(&mut r, b"\r\nget /x HTTP/1.1\r\n\r\n");
        assert_eq!(r.undecided_from(), Some(40), "held: HTTP or frames, the answer will say");
        written(&mut r, b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.undecided_from(), Some(40));
        assert_eq!(r.route_next("get").map(|q| q.first), Some(40));
        assert!(r.lost().is_none() && r.undecided_from().is_none());
    }

    /// Frames sent in the same read as their Upgrade request wait for its answer: a
    /// `101` makes them the new protocol's, and nothing more is followed.
    #[test]
    fn frames_behind_an_upgrade_request_wait_for_its_answer() {
        let mut r = Requests::new(1 << 16);
        let upgrade = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n";
        read(&mut r, &[&upgrade[..], b"\x81\x85abcde"].concat());
        r.route_next("GET");
        assert_eq!(r.undecided_from(), Some(upgrade.len() as u64));
        written(&mut r, b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert!(r.switched() && r.undecided_from().is_none() && r.lost().is_none());
    }

    /// A framing lost behind requests not yet routed is lost from the first of them.
    #[test]
    fn a_framing_lost_behind_waiting_requests_is_lost_from_the_first() {
        let mut r = Requests::new(1 << 16);
        read(
            &mut r,
            b"GET /a HTTP/1.1\r\n\r\n\nPUT /off HTTP/1.1\nContent-Length: 1\n\nx\x04\r\nGET / HTTP/1.1\r\n\r\n",
        );
        assert_eq!(r.lost().map(|l| l.0), Some(0));
        assert_eq!(r.undecided_from(), Some(0));
    }

    /// A bare LF in a chunked body's trailers, which hyper takes for a trailer byte, is a
    /// lost framing, not the end of the body (the framer would part ways with hyper and
    /// take the requests behind it for a body); so are 1,000 requests pipelined in one
    /// read not.
    #[test]
    fn a_bare_line_feed_in_trailers_is_lost_and_deep_pipelining_is_followed() {
        let mut r = Requests::new(1 << 16);
        read(&mut r, b"GET /a HTTP/1.1\r\n\r\n");
        assert_eq!(r.route_next("GET").map(|q| q.first), Some(0));
        read(&mut r, b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\nGET /x HTTP/1.1\r\n\r\n");
        let lost = r.lost().cloned();
        assert_eq!(lost, Some((19, FramingError::BareLineFeed)), "lost from the POST, not yet routed");
        let mut r = Requests::new(64 << 10);
        read(&mut r, &b"GET / HTTP/1.1\r\n\r\n".repeat(1000));
        for i in 0..1000 {
            assert_eq!(r.route_next("GET").map(|q| q.first), Some(i * 18), "request {i}");
        }
        assert!(r.lost().is_none());
    }

    /// A request hyper parsed that the framer did not see whole (they disagree): lost,
    /// never guessed.
    #[test]
    fn a_request_the_framer_did_not_see_is_a_lost_framing() {
        let mut r = Requests::new(1 << 16);
        read(&mut r, b"GET /a HTTP/1.1\r\n\r\n");
        assert!(r.route_next("POST").is_none());
        assert_eq!(r.lost().map(|l| l.0), Some(0));
        let mut r = Requests::new(32);
        for piece in b"GET /a HTTP/1.1\r\nX: a long long long value\r\n\r\n".chunks(8) {
            read(&mut r, piece);
        }
        assert_eq!(r.lost().map(|l| l.0), Some(0), "a head longer than followed");
    }
}
