//! A probing tap's memory. While a connection is only a candidate for capture
//! (`websocket` mode, before a `101`), its probe keeps the bytes that could begin a
//! session: the current HTTP exchange (a final response ends one, and is not kept), so
//! that a session's capture can begin at the exact first byte of its Upgrade request.
//! Under TLS (`capture.tls = "encrypted"`) it keeps every record from the connection's
//! first byte instead, the handshake without which none decrypts, within its bound.

use std::collections::VecDeque;

use bytes::Bytes;
use wstap_wire::{Dir, Timestamp};

use super::chunk::{Keep, Piece};

/// `HTTP/1.1 1`: the bytes that tell whether a response may start a session.
const STATUS_PREFIX: usize = "HTTP/1.1 1".len();

/// A probe's ring of recent chunks.
pub(super) struct Probe {
    ring: VecDeque<Kept>,
    /// Bytes in the ring.
    bytes: usize,
    /// The most it keeps.
    cap: usize,
    keeps: Keeps,
    /// What the server's bytes of the current exchange may be the start of.
    answer: Answer,
    /// The direction of the last bytes probed.
    last_dir: Option<Dir>,
}

/// A chunk the probe kept.
pub(super) struct Kept {
    /// When it crossed the socket.
    pub(super) time: Timestamp,
    /// Which way the bytes went.
    pub(super) dir: Dir,
    /// Its first byte's place in that direction's socket stream.
    pub(super) offset: u64,
    /// Its bytes.
    pub(super) bytes: Bytes,
}

/// What a probe keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keeps {
    /// The current HTTP exchange: a session starts at an Upgrade request.
    Exchange,
    /// A client leg whose requests are followed: what the tap hands it of the client's
    /// bytes (the requests no route decided yet, and the routed Upgrade), and the
    /// interim answers of the current exchange.
    Undecided,
    /// Every byte from the connection's first (TLS records), while they fit.
    FromStart(FirstBytes),
    /// Nothing: nothing on the connection will be recorded.
    Nothing,
}

/// Whether a TLS probe still holds the connection's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FirstBytes {
    /// It does.
    Kept,
    /// More than it keeps crossed: the start is gone, and nothing more is kept.
    Lost,
    /// Lost, and that was told.
    LostAndTold,
}

/// While probing, what the server's bytes of the current exchange may be the start of.
#[derive(Debug, Default, PartialEq)]
enum Answer {
    /// Nothing of the answer seen yet.
    #[default]
    Undecided,
    /// Not seen enough of the status line yet: its first bytes so far.
    Start(Vec<u8>),
    /// A `1xx` head: may be the `101` a session starts with. Kept.
    Interim,
    /// A final response (or no HTTP at all): no session starts in it. Not kept.
    Final,
}

impl Probe {
    /// A probe keeping up to `cap` bytes, as `keeps` says.
    pub(super) fn new(cap: usize, keeps: Keeps) -> Probe {
        Probe { ring: VecDeque::new(), bytes: 0, cap, keeps, answer: Answer::default(), last_dir: None }
    }

    /// `piece` crossed the socket going `dir`, from socket offset `offset`: kept, with the
    /// time `time` reads (only then: most probed bytes are not kept), if it may belong
    /// to a session's start.
    pub(super) fn see(&mut self, time: impl FnOnce() -> Timestamp, dir: Dir, offset: u64, piece: &Piece<'_>) {
        let keep = match self.keeps {
            Keeps::FromStart(start) => start == FirstBytes::Kept,
            Keeps::Exchange | Keeps::Undecided => self.may_start_session(dir, piece),
            Keeps::Nothing => false,
        };
        if !keep {
            return;
        }
        let len = piece.len();
        self.ring.push_back(Kept { time: time(), dir, offset, bytes: piece.bytes(0, len, Keep::Long) });
        self.bytes += len;
        if self.keeps == Keeps::FromStart(FirstBytes::Kept) && self.bytes > self.cap {
            (self.ring, self.bytes) = (VecDeque::new(), 0);
            self.keeps = Keeps::FromStart(FirstBytes::Lost);
        }
        while self.bytes > self.cap && self.ring.len() > 1 {
            let old = self.ring.pop_front().expect("the ring is not empty");
            self.bytes -= old.bytes.len();
        }
    }

    /// Bytes it keeps now.
    #[cfg(test)]
    pub(super) fn kept(&self) -> usize {
        self.bytes
    }

    /// The most it keeps.
    pub(super) fn cap(&self) -> usize {
        self.cap
    }

    /// Whether it keeps TLS records from the connection's first byte.
    pub(super) fn holds_records(&self) -> bool {
        matches!(self.keeps, Keeps::FromStart(_))
    }

    /// Lets go of the bytes going `dir` before socket offset `offset`.
    pub(super) fn drop_before(&mut self, dir: Dir, offset: u64) {
        let bytes = &mut self.bytes;
        self.ring.retain_mut(|k| {
            if k.dir != dir {
                return true;
            }
            let skip = offset.saturating_sub(k.offset).min(k.bytes.len() as u64) as usize;
            *bytes -= skip;
            k.bytes = k.bytes.slice(skip..);
            k.offset += skip as u64;
            !k.bytes.is_empty()
        });
        if self.ring.is_empty() {
            self.ring.shrink_to(8);
        }
    }

    /// Whether a TLS probe lost the connection's start (see [`FirstBytes`]).
    pub(super) fn start_lost(&self) -> bool {
        matches!(self.keeps, Keeps::FromStart(FirstBytes::Lost | FirstBytes::LostAndTold))
    }

    /// Whether a TLS probe lost the connection's start since this was last asked: true once.
    pub(super) fn start_just_lost(&mut self) -> bool {
        let lost = self.keeps == Keeps::FromStart(FirstBytes::Lost);
        if lost {
            self.keeps = Keeps::FromStart(FirstBytes::LostAndTold);
        }
        lost
    }

    /// The kept chunks that reach past `base` (per direction), taken out.
    pub(super) fn take_from(&mut self, base: wstap_wire::PerDir<u64>) -> Vec<Kept> {
        self.bytes = 0;
        // The ring's room goes too: a recorded session's tap keeps none of it.
        let ring = std::mem::take(&mut self.ring);
        ring.into_iter().filter(|k| k.offset + k.bytes.len() as u64 > base[k.dir]).collect()
    }

    /// Lets go of what it kept, and keeps nothing more.
    pub(super) fn forget(&mut self) {
        (self.ring, self.bytes, self.keeps) = (VecDeque::new(), 0, Keeps::Nothing);
    }

    /// The socket offset of the oldest byte read (going `inbound`) that is still kept.
    pub(super) fn oldest_read(&self, inbound: Dir) -> Option<u64> {
        self.ring.iter().find(|k| k.dir == inbound).map(|k| k.offset)
    }

    /// Whether bytes going `dir` may belong to a session's start. Only the current
    /// exchange can start one: the client's bytes after a response begin a new one
    /// (everything older is dropped), and a final response is not kept at all. So an idle
    /// keep-alive connection keeps its last request head, not the last response body.
    fn may_start_session(&mut self, dir: Dir, piece: &Piece<'_>) -> bool {
        let turned = self.last_dir.replace(dir) != Some(dir);
        if dir == Dir::Up {
            // After a final response only: bytes sent after an interim one (a body after
            // `100 Continue`) still belong to the exchange that may upgrade.
            if turned && self.answer == Answer::Final {
                self.answer = Answer::Undecided;
            }
            return true;
        }
        let mut seen = match std::mem::take(&mut self.answer) {
            Answer::Undecided => Vec::new(),
            Answer::Start(seen) => seen,
            decided => {
                let keep = decided == Answer::Interim;
                self.answer = decided;
                return keep;
            }
        };
        let want = STATUS_PREFIX - seen.len();
        seen.extend(piece.bytes(0, want.min(piece.len()), Keep::Briefly).iter());
        self.answer = if seen.len() < STATUS_PREFIX {
            Answer::Start(seen)
        } else if seen.starts_with(b"HTTP/1.") && seen[STATUS_PREFIX - 1] == b'1' {
            Answer::Interim
        } else {
            Answer::Final
        };
        if self.answer == Answer::Final {
            self.exchange_ended();
        }
        self.answer != Answer::Final
    }

    /// A final response ended an exchange, which then cannot start a session: its bytes
    /// go. On a client leg whose requests are followed, its tap lets go of the requests
    /// itself (one pipelined behind may still start a session); on an upstream leg,
    /// where wstap sends the next request only after this answer, nothing stays.
    fn exchange_ended(&mut self) {
        match self.keeps {
            Keeps::Undecided => self.drop_before(Dir::Down, u64::MAX),
            _ => {
                (self.ring, self.bytes) = (VecDeque::new(), 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client leg's probe, and what was fed to it each way.
    struct Fed {
        probe: Probe,
        offsets: wstap_wire::PerDir<u64>,
    }

    impl Fed {
        fn new() -> Fed {
            Fed { probe: Probe::new(128 << 10, Keeps::Exchange), offsets: Default::default() }
        }

        fn read(&mut self, bytes: &[u8]) {
            self.see(Dir::Up, bytes);
        }

        fn written(&mut self, bytes: &[u8]) {
            self.see(Dir::Down, bytes);
        }

        fn see(&mut self, dir: Dir, bytes: &[u8]) {
            self.probe.see(|| Timestamp::EPOCH, dir, self.offsets[dir], &Piece::Slice(bytes));
            self.offsets[dir] += bytes.len() as u64;
        }
    }

    #[test]
    fn a_probe_that_forgets_keeps_nothing() {
        let mut p = Fed::new();
        p.read(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        p.written(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert!(p.probe.bytes > 0);
        p.probe.forget();
        p.read(&[0x81; 4096]);
        assert_eq!((p.probe.bytes, p.probe.ring.capacity()), (0, 0));
    }

    /// An idle keep-alive connection keeps its last request, not the responses before.
    #[test]
    fn the_probe_keeps_only_what_can_start_a_session() {
        let mut p = Fed::new();
        let response = [&b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"[..], &[b'x'; 100_000]].concat();
        for _ in 0..3 {
            p.read(b"GET /big HTTP/1.1\r\n\r\n");
            for piece in response.chunks(7000) {
                p.written(piece);
            }
        }
        assert_eq!(p.probe.bytes, 0, "a final response ends the exchange: nothing is kept");
        // An idle keep-alive connection after a large POST keeps none of it.
        p.read(&[&b"POST /p HTTP/1.1\r\nContent-Length: 200000\r\n\r\n"[..], &[b'y'; 200_000]].concat());
        p.written(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((p.probe.bytes, p.probe.ring.len()), (0, 0));
        // The next exchange is an upgrade: its request and its 101 (split anywhere) are kept.
        p.read(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(p.probe.bytes, 40, "the previous exchange is gone");
        p.written(b"HTTP/1");
        p.written(b".1 101 Switching Protocols\r\n\r\n");
        let want = "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n";
        assert_eq!(p.probe.bytes, want.len());
    }

    /// A client leg's probe lets go of what its tap no longer needs, to the byte.
    #[test]
    fn dropping_before_an_offset_cuts_inside_a_chunk_and_leaves_the_other_way() {
        let mut p = Fed { probe: Probe::new(128 << 10, Keeps::Undecided), offsets: Default::default() };
        p.read(b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
        p.written(b"HTTP/1.1 100 Continue\r\n\r\n");
        p.read(b"GET /ws HTTP/1.1\r\n\r\n");
        p.probe.drop_before(Dir::Up, 44);
        let up: Vec<u8> = p.probe.ring.iter().filter(|k| k.dir == Dir::Up).flat_map(|k| k.bytes.to_vec()).collect();
        assert_eq!(&up[..], b"GET /ws HTTP/1.1\r\n\r\n");
        assert_eq!(p.probe.ring.iter().filter(|k| k.dir == Dir::Down).count(), 1, "the other way stays");
        assert_eq!(p.probe.take_from(Default::default()).iter().map(|k| k.offset).min(), Some(0));
        assert_eq!(p.probe.bytes, 0);
    }

    /// Under TLS the probe keeps the connection's start, or says once that it lost it.
    #[test]
    fn a_tls_probe_keeps_the_start_or_says_once_it_lost_it() {
        let mut p = Probe::new(100, Keeps::FromStart(FirstBytes::Kept));
        p.see(|| Timestamp::EPOCH, Dir::Up, 0, &Piece::Slice(&[0x16; 60]));
        p.see(|| Timestamp::EPOCH, Dir::Down, 0, &Piece::Slice(&[0x16; 30]));
        assert!(!p.start_lost() && p.bytes == 90);
        p.see(|| Timestamp::EPOCH, Dir::Up, 60, &Piece::Slice(&[0x17; 30]));
        assert!(p.start_lost() && p.bytes == 0, "past its bound, nothing is kept");
        assert!(p.start_just_lost());
        assert!(!p.start_just_lost(), "told once");
    }
}
