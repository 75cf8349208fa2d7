//! One leg's capture state: what its [`crate::capture::tee::Tee`] reports (every byte
//! read and written, each end of stream and each reset) the tap turns into recorder
//! events, or, while a connection is only a candidate for capture (`websocket`
//! mode, before its `101`), keeps the most recent bytes in a small ring so that capture
//! can begin at the exact first byte of the Upgrade request. It never blocks the stream.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::UNIX_EPOCH;

use bytes::Bytes;

use crate::capture::chunk::{Keep, Piece};
use crate::capture::event::{now_ns, LegId, Opening, What};
use crate::capture::recorder::Recorder;
use crate::capture::track::{To, Track};
use crate::config::Snap;
use crate::sync::lock;
use wstap_wire::dir::{Dir, Leg, PerDir};

const OFF: u8 = 0;
const PROBE: u8 = 1;
const ON: u8 = 2;

/// One leg's capture state, shared by its [`crate::capture::tee::Tee`] and the proxy.
pub struct Tap {
    recorder: Recorder,
    id: LegId,
    /// The leg's description; a session's comment and label are filled in at its start.
    opening: Opening,
    mode: AtomicU8,
    /// Bytes that crossed the socket each way so far.
    offset: PerDir<AtomicU64>,
    /// Socket offsets where capture began, per direction.
    base: PerDir<AtomicU64>,
    /// Client bytes are being held back until wstap's first write (the `101`).
    holding: AtomicBool,
    state: Mutex<TapState>,
    /// Each direction's frames, once a session is recorded (locked after `state`).
    tracks: PerDir<Mutex<Option<Track>>>,
}

/// While probing, what the server's bytes of the current exchange may be the start of.
#[derive(Default, Debug, PartialEq)]
enum Answer {
    /// Not seen enough of the status line yet: its first bytes so far.
    #[default]
    Undecided,
    Start(Vec<u8>),
    /// A `1xx` head: may be the `101` a session starts with. Kept.
    Interim,
    /// A final response (or no HTTP at all): no session starts in it. Not kept.
    Final,
}

/// `HTTP/1.1 101`: the bytes that decide whether a response may start a session.
const STATUS_PREFIX: usize = "HTTP/1.1 1".len();

#[derive(Default)]
struct TapState {
    /// Recent chunks while probing: (time, dir, socket offset, bytes).
    ring: VecDeque<(u64, Dir, u64, Bytes)>,
    ring_bytes: usize,
    ring_cap: usize,
    /// What the probe makes of the server's bytes in the current exchange.
    answer: Answer,
    /// The direction of the last probed bytes.
    last_dir: Option<Dir>,
    fin_sent: PerDir<bool>,
    reset_sent: bool,
    close_reason: Option<String>,
    /// Bytes read after the Upgrade request's head and before the `101` was written:
    /// (time, captured-stream offset, bytes).
    held: Vec<(u64, u64, Bytes)>,
    /// The leg's bytes are TLS records: the probe keeps them all from the first (the
    /// handshake, without which none decrypts), not the current HTTP exchange.
    encrypted: bool,
    /// More than `ring_cap` bytes crossed an encrypted leg while probing: its start is
    /// gone, and nothing more is kept.
    start_lost: bool,
    /// That was said.
    lost_said: bool,
}

impl TapState {
    /// Whether the probe keeps `piece`, going `dir`. Only the current exchange can start
    /// a session: the client's bytes after a response begin a new one (everything older
    /// is dropped), and a final response is not kept at all. So an idle keep-alive
    /// connection keeps its last request head, not the last response body.
    fn probe_keeps(&mut self, dir: Dir, piece: &Piece<'_>) -> bool {
        let turned = self.last_dir.replace(dir) != Some(dir);
        if dir == Dir::Up {
            // After a final response only: bytes sent after an interim one (a body after
            // `100 Continue`) still belong to the exchange that may upgrade.
            if turned && self.answer == Answer::Final {
                self.keep_pipelined();
                self.answer = Answer::Undecided;
            }
            return true;
        }
        let seen = match std::mem::take(&mut self.answer) {
            Answer::Undecided => Vec::new(),
            Answer::Start(seen) => seen,
            decided => {
                let keep = decided == Answer::Interim;
                self.answer = decided;
                return keep;
            }
        };
        let mut seen = seen;
        let want = STATUS_PREFIX - seen.len();
        seen.extend(piece.bytes(0, want.min(piece.len()), Keep::Briefly).iter());
        self.answer = if seen.len() < STATUS_PREFIX {
            Answer::Start(seen)
        } else if seen.starts_with(b"HTTP/1.") && seen[STATUS_PREFIX - 1] == b'1' {
            Answer::Interim
        } else {
            Answer::Final
        };
        self.answer != Answer::Final
    }
}

impl TapState {
    /// A final response ended an exchange: of the kept bytes only a request read before
    /// it stays (pipelined: the request bytes after the last blank line, if they begin
    /// like a request line); the answered request and interim responses go.
    fn keep_pipelined(&mut self) {
        let mut up = Vec::new();
        let mut starts = Vec::new();
        for (time, dir, off, b) in &self.ring {
            if *dir == Dir::Up {
                starts.push((up.len(), *time, *off));
                up.extend_from_slice(b);
            }
        }
        let request_at = |at: usize| {
            let method = up[at..].iter().take_while(|b| b.is_ascii_uppercase()).count();
            method > 0 && up.get(at + method).is_none_or(|&b| b == b' ')
        };
        // The next request starts where the answered one's head ends (a whole pipelined
        // request, and what followed it, stay); after a body, only bytes after the last
        // blank line can be one.
        let ends = |p: usize| p + 4;
        let first = up.windows(4).position(|w| w == b"\r\n\r\n").map(ends);
        let last = up.windows(4).rposition(|w| w == b"\r\n\r\n").map_or(0, ends);
        let tail = first.filter(|&at| at < up.len() && request_at(at)).unwrap_or(last);
        let next = &up[tail..];
        let pipelined = tail < up.len() && request_at(tail);
        let from = starts.iter().rev().find(|(at, ..)| *at <= tail).copied();
        self.ring.clear();
        self.ring.shrink_to(8);
        self.ring_bytes = 0;
        if let Some((at, time, off)) = from.filter(|_| pipelined) {
            self.ring.push_back((time, Dir::Up, off + (tail - at) as u64, Bytes::copy_from_slice(next)));
            self.ring_bytes = next.len();
        }
    }
}

impl Tap {
    /// A tap that records from the connection's first byte: its handshake is written now.
    pub fn recording(recorder: Recorder, opening: Opening) -> Arc<Tap> {
        let tap = Tap::new(recorder, opening, ON, 0);
        tap.recorder.send(tap.id, What::Open(Box::new(tap.opening.clone())));
        Arc::new(tap)
    }

    /// A tap that records nothing until [`Tap::start`], keeping the last `ring_cap` bytes
    /// so that capture can begin a little in the past.
    pub fn probing(recorder: Recorder, opening: Opening, ring_cap: usize) -> Arc<Tap> {
        Arc::new(Tap::new(recorder, opening, PROBE, ring_cap))
    }

    /// A tap under TLS (`capture.tls = "encrypted"`) that records nothing until
    /// [`Tap::start`], keeping every byte from the connection's first while they are no
    /// more than `ring_cap` (see [`Tap::start_just_lost`]).
    pub fn probing_encrypted(recorder: Recorder, opening: Opening, ring_cap: usize) -> Arc<Tap> {
        let tap = Tap::new(recorder, opening, PROBE, ring_cap);
        tap.lock().encrypted = true;
        Arc::new(tap)
    }

    /// Whether an encrypted leg's probe lost the connection's first bytes (its TLS
    /// handshake, without which its capture cannot be decrypted) since this was last
    /// asked: true once.
    pub fn start_just_lost(&self) -> bool {
        let mut state = self.lock();
        state.start_lost && !std::mem::replace(&mut state.lost_said, true)
    }

    fn new(recorder: Recorder, opening: Opening, mode: u8, ring_cap: usize) -> Tap {
        Tap {
            id: recorder.new_leg(),
            recorder,
            opening,
            mode: AtomicU8::new(mode),
            offset: Default::default(),
            base: Default::default(),
            holding: AtomicBool::new(false),
            state: Mutex::new(TapState { ring_cap, ..TapState::default() }),
            tracks: PerDir::default(),
        }
    }

    /// Whether the leg is being written (not only probed, nor finished).
    pub fn is_recording(&self) -> bool {
        self.mode.load(Relaxed) == ON
    }

    /// Which connection of its session this tap's is.
    pub fn leg(&self) -> Leg {
        self.opening.leg
    }

    /// The direction of the bytes read on this leg.
    fn inbound(&self) -> Dir {
        self.opening.leg.inbound()
    }

    /// Bytes that crossed the socket going `dir` so far.
    pub fn offset(&self, dir: Dir) -> u64 {
        self.offset[dir].load(Relaxed)
    }

    /// The socket offset of the oldest byte read that is still kept while probing, if any.
    pub fn oldest_read(&self) -> Option<u64> {
        let inbound = self.inbound();
        self.lock().ring.iter().find(|c| c.1 == inbound).map(|c| c.2)
    }

    /// Where the last request head whose first line starts with `line` (such as
    /// `GET /chat HTTP/1.`) lies among the probed bytes read: the socket offsets of its
    /// first byte and of the byte after its blank line.
    pub fn find_head(&self, line: &[u8]) -> Option<(u64, u64)> {
        let inbound = self.inbound();
        let state = self.lock();
        let mut bytes = Vec::with_capacity(state.ring_bytes);
        let mut first = None;
        for (_, dir, off, b) in &state.ring {
            if *dir == inbound {
                first.get_or_insert(*off);
                bytes.extend_from_slice(b);
            }
        }
        let first = first?;
        let start = (0..bytes.len().saturating_sub(line.len() - 1))
            .rev()
            .find(|&i| bytes[i..].starts_with(line) && (i == 0 || bytes[i - 1] == b'\n'))?;
        let end = bytes[start..].windows(4).position(|w| w == b"\r\n\r\n")? + start + 4;
        Some((first + start as u64, first + end as u64))
    }

    /// Starts recording a probing tap: the leg's capture begins at socket offsets `base`;
    /// probed bytes from there on are written with the times they crossed the socket.
    /// `comment` goes on the leg's first packet.
    ///
    /// With `hold_from`, bytes read from that socket offset on (what a client sent right
    /// behind its Upgrade request) are held until wstap's next write (the `101`) and
    /// written just after it, with a comment giving their real arrival: Wireshark decodes
    /// WebSocket frames only after the `101`, in capture order.
    pub fn start(&self, base: PerDir<u64>, hold_from: Option<u64>, start: Start) {
        let mut state = self.lock();
        // An encrypted leg whose first bytes are gone would not decrypt: not started.
        if self.mode.load(Relaxed) != PROBE || state.start_lost {
            return;
        }
        for dir in Dir::BOTH {
            self.base[dir].store(base[dir], Relaxed);
        }
        let kept: Vec<_> = state.ring.drain(..).filter(|(_, dir, off, b)| off + b.len() as u64 > base[*dir]).collect();
        state.ring_bytes = 0;
        let first_time = kept.first().map_or_else(now_ns, |c| c.0);
        let Start { comment, label, session, snap, tls_secrets, .. } = start;
        let encrypted = state.encrypted;
        let opening = Opening { comment, label, session, snap, tls_secrets, ..self.opening.clone() };
        self.recorder.send_at(first_time, self.id, What::Open(Box::new(opening)));
        // TLS records are not frames: a drop is a drop (after it, nothing decrypts).
        if session && !encrypted {
            // A session's streams start with their heads: from here on, drops follow frames.
            for dir in Dir::BOTH {
                *lock(&self.tracks[dir]) = Some(Track::new());
            }
        }
        let hold_from = hold_from.unwrap_or(u64::MAX);
        for (time, dir, off, bytes) in kept {
            let base = base[dir];
            let skip = base.saturating_sub(off) as usize;
            let (offset, mut bytes) = (off.max(base) - base, bytes.slice(skip..));
            let off = off.max(base);
            if dir == self.inbound() && off + bytes.len() as u64 > hold_from {
                let keep = hold_from.saturating_sub(off) as usize;
                let later = bytes.split_off(keep);
                state.held.push((time, offset + keep as u64, later));
            }
            if !bytes.is_empty() {
                self.pass(dir, offset, Piece::Owned(&bytes), Some(time));
            }
        }
        self.holding.store(hold_from != u64::MAX, Relaxed);
        self.mode.store(ON, Relaxed);
    }

    /// Writes the held client bytes (after wstap's first write, or at close).
    fn release_held(&self, state: &mut TapState) {
        if !self.holding.swap(false, Relaxed) || state.held.is_empty() {
            return;
        }
        let bytes: usize = state.held.iter().map(|h| h.2.len()).sum();
        let arrived = state.held[0].0;
        self.recorder.send(
            self.id,
            What::Note(format!(
                "the client sent these {bytes} bytes right behind its Upgrade request, before the 101 \
                 (they arrived at {}); wstap shows them after the 101 so that Wireshark decodes them",
                humantime::format_rfc3339_nanos(UNIX_EPOCH + std::time::Duration::from_nanos(arrived))
            )),
        );
        let dir = self.inbound();
        for (_, offset, bytes) in state.held.drain(..) {
            self.pass(dir, offset, Piece::Owned(&bytes), None);
        }
    }

    /// A session starts on this leg: a probing tap starts recording (see
    /// [`Tap::start`]); a tap already recording (`capture.mode = "all"`) tells the writer
    /// where the session's Upgrade exchange began, so later files can replay it.
    pub fn begin(&self, base: PerDir<u64>, hold_from: Option<u64>, start: Start) {
        if self.is_recording() {
            let Start { comment, snap, .. } = start;
            self.recorder.send(self.id, What::Session { comment, snap });
        } else {
            self.start(base, hold_from, start);
        }
    }

    /// A probing tap whose connection will never be recorded (its session started
    /// unrecorded) lets go of what it kept and keeps nothing more.
    pub fn stop_probing(&self) {
        let mut state = self.lock();
        if self.mode.load(Relaxed) == PROBE {
            self.mode.store(OFF, Relaxed);
            (state.ring, state.ring_bytes) = (VecDeque::new(), 0);
        }
    }

    /// Why the connection is about to close: goes on the leg's last packet.
    pub fn set_close_reason(&self, reason: String) {
        self.lock().close_reason = Some(reason);
    }

    fn lock(&self) -> MutexGuard<'_, TapState> {
        lock(&self.state)
    }

    /// `data` was read from the socket.
    pub(crate) fn on_read(&self, data: &[u8]) {
        self.on_chunk(self.inbound(), Piece::Slice(data));
    }

    /// `written` was written to the socket.
    pub(crate) fn on_written(&self, written: Piece<'_>) {
        self.on_chunk(self.inbound().reverse(), written);
    }

    /// `piece` crossed the socket going `dir`: it is recorded, held, kept in the probe
    /// ring, or ignored, as the tap's state says.
    fn on_chunk(&self, dir: Dir, piece: Piece<'_>) {
        let len = piece.len();
        let off = self.offset[dir].fetch_add(len as u64, Relaxed);
        let captured = |off: u64| off.saturating_sub(self.base[dir].load(Relaxed));
        match self.mode.load(Relaxed) {
            ON if self.holding.load(Relaxed) => {
                let mut state = self.lock();
                if dir == self.inbound() {
                    state.held.push((now_ns(), captured(off), piece.bytes(0, len, Keep::Briefly)));
                } else {
                    self.pass(dir, captured(off), piece, None);
                    self.release_held(&mut state);
                }
            }
            ON => self.pass(dir, captured(off), piece, None),
            PROBE => {
                let mut state = self.lock();
                if self.mode.load(Relaxed) == ON {
                    drop(state);
                    return self.pass(dir, captured(off), piece, None);
                }
                if state.encrypted {
                    if state.start_lost {
                        return;
                    }
                } else if !state.probe_keeps(dir, &piece) {
                    return;
                }
                state.ring.push_back((now_ns(), dir, off, piece.bytes(0, len, Keep::Long)));
                state.ring_bytes += len;
                if state.encrypted && state.ring_bytes > state.ring_cap {
                    state.ring = VecDeque::new();
                    state.ring_bytes = 0;
                    state.start_lost = true;
                }
                while state.ring_bytes > state.ring_cap && state.ring.len() > 1 {
                    let (_, _, _, old) = state.ring.pop_front().expect("ring is not empty");
                    state.ring_bytes -= old.len();
                }
            }
            _ => {}
        }
    }

    /// Records `piece`, which went `dir` from `at` in the captured stream: through the
    /// direction's track once a session is recorded (drops then follow frames).
    fn pass(&self, dir: Dir, at: u64, piece: Piece<'_>, time: Option<u64>) {
        let mut track = lock(&self.tracks[dir]);
        match track.as_mut() {
            Some(t) => t.pass(&To { recorder: &self.recorder, leg: self.id, dir, time }, at, piece),
            None => {
                let bytes = piece.bytes(0, piece.len(), Keep::Briefly);
                self.recorder.push(time, self.id, What::Data { dir, offset: at, bytes });
            }
        }
    }

    /// Length of the captured stream going `dir` so far.
    fn captured(&self, dir: Dir) -> u64 {
        self.offset[dir].load(Relaxed).saturating_sub(self.base[dir].load(Relaxed))
    }

    /// The peer ended its stream (a read returned end of file).
    pub(crate) fn on_read_end(&self) {
        self.on_fin(self.inbound());
    }

    /// The peer's TLS ended without `close_notify`: taken as the end of its stream (a FIN),
    /// which the packet's comment says, since a cut stream looks the same.
    pub(crate) fn on_read_cut(&self) {
        if self.is_recording() {
            let text = "the TLS peer closed without close_notify: its stream ended here (or was cut)";
            self.recorder.send(self.id, What::Note(text.to_owned()));
        }
        self.on_fin(self.inbound());
    }

    /// wstap shut its write side.
    pub(crate) fn on_shutdown(&self) {
        self.on_fin(self.inbound().reverse());
    }

    fn on_fin(&self, dir: Dir) {
        let mut state = self.lock();
        if self.is_recording() && !std::mem::replace(&mut state.fin_sent[dir], true) {
            let offset = self.captured(dir);
            if let Some(track) = lock(&self.tracks[dir]).as_mut() {
                track.end(&To { recorder: &self.recorder, leg: self.id, dir, time: None }, offset);
            }
            self.recorder.send(self.id, What::Fin { dir, offset });
        }
    }

    /// A read or write failed with `e`: a reset is recorded once.
    pub(crate) fn on_error(&self, e: &io::Error) {
        use io::ErrorKind::*;
        if !matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe) {
            return;
        }
        let mut state = self.lock();
        if self.is_recording() && !std::mem::replace(&mut state.reset_sent, true) {
            self.recorder.send(self.id, What::Reset);
        }
    }

    pub(crate) fn on_close(&self) {
        if self.is_recording() {
            let mut state = self.lock();
            self.release_held(&mut state);
            let reason = state.close_reason.take().unwrap_or_else(|| "connection closed".to_owned());
            drop(state);
            let offsets = PerDir::new(self.captured(Dir::Up), self.captured(Dir::Down));
            self.recorder.send(self.id, What::Close { reason, offsets });
            self.mode.store(OFF, Relaxed);
        }
    }
}

/// What the start of a leg's capture tells its tap.
pub struct Start {
    /// For the leg's first packet (or next, on a leg recorded from its first byte).
    pub comment: String,
    /// For per-session file names.
    pub label: String,
    /// The request's first line up to `HTTP/1.` (`GET /chat HTTP/1.`).
    pub request_line: String,
    /// A WebSocket session starts (at an Upgrade exchange), not a connection's capture.
    pub session: bool,
    /// How much of its payload is kept.
    pub snap: Snap,
    /// An encrypted leg's keys (NSS key log lines); `None` on a leg captured decrypted.
    pub tls_secrets: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_tap() -> Arc<Tap> {
        let opening = Opening::new(
            Leg::Client,
            "127.0.0.1:80".parse().unwrap(),
            "127.0.0.1:4000".parse().unwrap(),
            String::new(),
        );
        Tap::probing(Recorder::detached(1 << 20), opening, 128 << 10)
    }

    /// A session that starts unrecorded: its probe keeps nothing more.
    #[test]
    fn a_probe_that_stops_keeps_nothing() {
        let tap = client_tap();
        tap.on_read(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        tap.on_written(Piece::Slice(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"));
        assert!(tap.lock().ring_bytes > 0);
        tap.stop_probing();
        tap.on_read(&[0x81; 4096]);
        let state = tap.lock();
        assert_eq!((state.ring_bytes, state.ring.capacity()), (0, 0));
        drop(state);
        assert!(!tap.is_recording());
    }

    /// An idle keep-alive connection keeps its last request, not the responses before.
    #[test]
    fn the_probe_keeps_only_what_can_start_a_session() {
        let tap = client_tap();
        let response = [&b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"[..], &[b'x'; 100_000]].concat();
        for _ in 0..3 {
            tap.on_read(b"GET /big HTTP/1.1\r\n\r\n");
            for piece in response.chunks(7000) {
                tap.on_written(Piece::Slice(piece));
            }
        }
        assert_eq!(tap.lock().ring_bytes, "GET /big HTTP/1.1\r\n\r\n".len(), "a final response is not kept");
        // The next exchange is an upgrade: its request and its 101 (split anywhere) are kept.
        tap.on_read(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(tap.find_head(b"GET /big HTTP/1."), None, "the previous exchange is gone");
        assert!(tap.find_head(b"GET /ws HTTP/1.").is_some());
        tap.on_written(Piece::Slice(b"HTTP/1"));
        tap.on_written(Piece::Slice(b".1 101 Switching Protocols\r\n\r\n"));
        let kept = tap.lock().ring_bytes;
        assert_eq!(
            kept,
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n".len()
        );
    }

    /// A request read before the previous response (pipelined), split across reads, is
    /// found whole once it upgrades; a body left over is not kept.
    #[test]
    fn a_pipelined_upgrade_read_before_the_previous_response_is_kept() {
        let tap = client_tap();
        let first = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        tap.on_read(first);
        tap.on_read(b"GET /ws HT");
        tap.on_written(Piece::Slice(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        tap.on_read(b"TP/1.1\r\nUpgrade: websocket\r\n\r\n");
        let want = "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(tap.find_head(b"GET /ws HTTP/1."), Some((first.len() as u64, (first.len() + want.len()) as u64)));
        assert_eq!(tap.lock().ring_bytes, want.len(), "the answered request is gone");
        // A whole pipelined Upgrade with an early frame behind it, read before the answer
        // to the request ahead of it: the Upgrade and the frame stay.
        let tap = client_tap();
        tap.on_read(first);
        tap.on_read(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\x81\x85abcd");
        tap.on_written(Piece::Slice(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        tap.on_read(b"more");
        assert_eq!(tap.find_head(b"GET /ws HTTP/1."), Some((first.len() as u64, (first.len() + want.len()) as u64)));
        // A POST whose body is answered: nothing stays.
        tap.on_read(b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
        tap.on_written(Piece::Slice(b"HTTP/1.1 204 No Content\r\n\r\n"));
        tap.on_read(b"G");
        assert_eq!(tap.lock().ring_bytes, 1);
    }
}
