//! One leg's capture state, shared by its [`Tee`](super::tee::Tee) (which reports every
//! byte read and written, each end of stream and each reset) and the proxy (which says
//! when a session starts, and why the leg closes). A recording tap turns what it hears
//! into events on the capture's queue; a probing one (a connection that is only a
//! candidate for capture, before its `101`) keeps what its [`Probe`] says, so that capture
//! can begin at the exact first byte of an Upgrade request. It never blocks the stream.
//!
//! The proxy's whole API: a tap [`Tap::recording`] or [`Tap::probing`], its [`Tap::mark`]
//! when a request begins, [`Tap::begin`] when its route records the exchange,
//! [`Tap::forgo`] when nothing on the connection ever will be, and
//! [`Tap::set_close_reason`] before the socket closes.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tracing::{debug, info};
use wstap_wire::{Dir, Leg, PerDir, Timestamp};

use super::chunk::{Keep, Piece};
use super::probe::{FirstBytes, Keeps, Probe};
use super::track::{To, Track};
use crate::capture::event::{now, Opening, Scope, What};
use crate::capture::ids::LegId;
use crate::capture::note::{Ending, Note};
use crate::capture::queue::Recorder;
use crate::config::Snap;
use crate::sync::lock;

/// What a leg's capture is doing, as the tee's hot path reads it (an atomic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    /// Nothing: never recorded, or finished.
    Off = 0,
    /// Keeping what may start a session.
    Probing = 1,
    /// Writing every byte.
    Recording = 2,
}

impl Mode {
    fn of(bits: u8) -> Mode {
        match bits {
            1 => Mode::Probing,
            2 => Mode::Recording,
            _ => Mode::Off,
        }
    }
}

/// What a probing tap's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// Plain HTTP (under hyper, or over a TLS stream that decrypted it): the probe keeps
    /// the current exchange.
    Http,
    /// TLS records (`capture.tls = "encrypted"`): the probe keeps every byte from the
    /// connection's first, within its bound.
    Tls,
}

/// One leg's capture state, shared by its tee and the proxy.
pub struct Tap {
    recorder: Recorder,
    id: LegId,
    /// The leg's opening; a session's heading and label are filled in at its start.
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

struct TapState {
    probe: Probe,
    /// The end of each stream was sent, and a reset.
    fin_sent: PerDir<bool>,
    reset_sent: bool,
    close_reason: Option<Ending>,
    /// Bytes read after the Upgrade request's head and before the `101` was written.
    held: Vec<Held>,
}

/// Client bytes held back until the `101` is written.
struct Held {
    /// When they crossed the socket.
    time: Timestamp,
    /// Their place in the captured stream.
    offset: u64,
    bytes: Bytes,
}

/// Where an exchange began on a leg: the socket offsets each way when its request was
/// taken ([`Tap::mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark(PerDir<u64>);

/// What the start of a leg's capture tells its tap.
pub struct Start {
    /// The leg's heading, said: for its first packet (or next, on a leg recorded from
    /// its first byte).
    pub heading: String,
    /// For per-session file names.
    pub label: String,
    /// The request's first line up to `HTTP/1.` (`GET /chat HTTP/1.`).
    pub request_line: String,
    /// How much of its payload is kept.
    pub snap: Snap,
    /// An encrypted leg's keys (NSS key log lines); `None` on a leg captured decrypted.
    pub tls_secrets: Option<String>,
}

impl Tap {
    /// A tap that records from the connection's first byte: its handshake is written now.
    pub fn recording(recorder: Recorder, opening: Opening) -> Arc<Tap> {
        let tap = Tap::new(recorder, opening, Mode::Recording, Probe::new(0, Keeps::Exchange));
        tap.recorder.send(tap.id, What::Open(Box::new(tap.opening.clone())));
        Arc::new(tap)
    }

    /// A tap that records nothing until [`Tap::begin`], keeping up to `probe` bytes of
    /// what crossed, as `layer` says, so that capture can begin a little in the past.
    pub fn probing(recorder: Recorder, opening: Opening, probe: usize, layer: Layer) -> Arc<Tap> {
        let keeps = match layer {
            Layer::Http => Keeps::Exchange,
            Layer::Tls => Keeps::FromStart(FirstBytes::Kept),
        };
        Arc::new(Tap::new(recorder, opening, Mode::Probing, Probe::new(probe, keeps)))
    }

    fn new(recorder: Recorder, opening: Opening, mode: Mode, probe: Probe) -> Tap {
        let state =
            TapState { probe, fin_sent: PerDir::default(), reset_sent: false, close_reason: None, held: Vec::new() };
        Tap {
            id: recorder.new_leg(),
            recorder,
            opening,
            mode: AtomicU8::new(mode as u8),
            offset: Default::default(),
            base: Default::default(),
            holding: AtomicBool::new(false),
            state: Mutex::new(state),
            tracks: PerDir::default(),
        }
    }

    fn mode(&self) -> Mode {
        Mode::of(self.mode.load(Relaxed))
    }

    /// Whether the leg is being written (not only probed, nor finished).
    pub fn is_recording(&self) -> bool {
        self.mode() == Mode::Recording
    }

    /// The direction of the bytes read on this leg.
    fn inbound(&self) -> Dir {
        self.opening.leg.inbound()
    }

    /// Where an exchange begins: the socket offsets each way now.
    pub fn mark(&self) -> Mark {
        Mark(PerDir::new(self.offset[Dir::Up].load(Relaxed), self.offset[Dir::Down].load(Relaxed)))
    }

    /// The route records an exchange on this leg whose request began at `at`: a
    /// WebSocket session (`Scope::Session`) or, from this request on, the whole connection.
    /// A probing tap starts recording; a tap already recording the connection tells the
    /// writer where a session's Upgrade exchange began, so later files can repeat it.
    /// Returns whether the leg is recorded.
    ///
    /// On the client leg the capture starts at the request head the probe kept (the
    /// last one whose first line is `start.request_line`), and, for a session, bytes the
    /// client sent right behind it are held until wstap's next write (the `101`) and
    /// written just after it: Wireshark decodes frames only after the `101`, in capture
    /// order. A TLS leg starts at the connection's first byte, or (its handshake no
    /// longer kept) not at all: it could not be decrypted.
    pub fn begin(&self, scope: Scope, at: Mark, start: Start) -> bool {
        if self.is_recording() {
            if scope == Scope::Session {
                let Start { heading, snap, .. } = start;
                self.recorder.send(self.id, What::Session { heading, snap });
            }
            return true;
        }
        let mut state = self.lock();
        if self.mode() != Mode::Probing {
            return false;
        }
        if let Keeps::FromStart(_) = state.probe.keeps() {
            if state.probe.start_just_lost() {
                info!(
                    leg = self.opening.leg.name(),
                    "not captured: the TLS handshake is not kept (too much crossed before the session), so its \
                     records could not be decrypted"
                );
            }
            if !state.probe.start_lost() {
                self.start(&mut state, scope, PerDir::default(), None, start);
            }
            return self.is_recording();
        }
        let (base, hold_from) = match self.opening.leg {
            Leg::Upstream => (at.0, None),
            Leg::Client => match state.probe.find_head(self.inbound(), start.request_line.as_bytes()) {
                Some(head) => (PerDir::new(head.first, at.0[Dir::Down]), Some(head.end)),
                None => {
                    debug!("request not among the kept bytes; capture starts at the oldest one");
                    let first = state.probe.oldest_read(self.inbound()).unwrap_or(self.offset[Dir::Up].load(Relaxed));
                    (PerDir::new(first, at.0[Dir::Down]), None)
                }
            },
        };
        let hold_from = hold_from.filter(|_| scope == Scope::Session);
        self.start(&mut state, scope, base, hold_from, start);
        true
    }

    /// Starts recording a probing tap at socket offsets `base`: the probe's bytes from
    /// there on are written with the times they crossed the socket, those read from
    /// `hold_from` on held (see [`Tap::begin`]).
    fn start(&self, state: &mut TapState, scope: Scope, base: PerDir<u64>, hold_from: Option<u64>, start: Start) {
        for dir in Dir::BOTH {
            self.base[dir].store(base[dir], Relaxed);
        }
        let kept = state.probe.take_from(base);
        let first_time = kept.first().map_or_else(now, |k| k.time);
        let Start { heading, label, snap, tls_secrets, .. } = start;
        let tls = tls_secrets.is_some() || state.probe.keeps() != Keeps::Exchange;
        let opening = Opening { heading, label, scope, snap, tls_secrets, ..self.opening.clone() };
        self.recorder.send_at(first_time, self.id, What::Open(Box::new(opening)));
        // TLS records are not frames: a drop is a drop (after it, nothing decrypts).
        if scope == Scope::Session && !tls {
            // A session's streams start with their heads: from here on, drops follow frames.
            for dir in Dir::BOTH {
                *lock(&self.tracks[dir]) = Some(Track::new());
            }
        }
        let hold_from = hold_from.unwrap_or(u64::MAX);
        for k in kept {
            let base = base[k.dir];
            let skip = base.saturating_sub(k.offset) as usize;
            let socket_at = k.offset.max(base);
            let (offset, mut bytes) = (socket_at - base, k.bytes.slice(skip..));
            if k.dir == self.inbound() && socket_at + bytes.len() as u64 > hold_from {
                let keep = hold_from.saturating_sub(socket_at) as usize;
                let later = bytes.split_off(keep);
                state.held.push(Held { time: k.time, offset: offset + keep as u64, bytes: later });
            }
            if !bytes.is_empty() {
                self.pass(k.dir, offset, Piece::Owned(&bytes), Some(k.time));
            }
        }
        self.holding.store(hold_from != u64::MAX, Relaxed);
        self.mode.store(Mode::Recording as u8, Relaxed);
    }

    /// Writes the held client bytes (after wstap's first write, or at close).
    fn release_held(&self, state: &mut TapState) {
        if !self.holding.swap(false, Relaxed) || state.held.is_empty() {
            return;
        }
        let bytes: usize = state.held.iter().map(|h| h.bytes.len()).sum();
        let arrived = state.held[0].time;
        self.recorder.send(self.id, What::Note(Note::HeldBehindUpgrade { bytes, arrived }));
        let dir = self.inbound();
        for held in state.held.drain(..) {
            self.pass(dir, held.offset, Piece::Owned(&held.bytes), None);
        }
    }

    /// Nothing on this connection will ever be recorded (its session started unrecorded):
    /// a probing tap lets go of what it kept and keeps nothing more.
    pub fn forgo(&self) {
        let mut state = self.lock();
        if self.mode() == Mode::Probing {
            self.mode.store(Mode::Off as u8, Relaxed);
            state.probe.forget();
        }
    }

    /// Why the connection is about to close: goes on the leg's last packet.
    pub fn set_close_reason(&self, reason: Ending) {
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

    /// `piece` crossed the socket going `dir`: it is recorded, held, kept by the probe,
    /// or ignored, as the tap's mode says.
    fn on_chunk(&self, dir: Dir, piece: Piece<'_>) {
        let len = piece.len();
        let off = self.offset[dir].fetch_add(len as u64, Relaxed);
        let captured = |off: u64| off.saturating_sub(self.base[dir].load(Relaxed));
        match self.mode() {
            Mode::Recording if self.holding.load(Relaxed) => {
                let mut state = self.lock();
                if dir == self.inbound() {
                    let bytes = piece.bytes(0, len, Keep::Briefly);
                    state.held.push(Held { time: now(), offset: captured(off), bytes });
                } else {
                    self.pass(dir, captured(off), piece, None);
                    self.release_held(&mut state);
                }
            }
            Mode::Recording => self.pass(dir, captured(off), piece, None),
            Mode::Probing => {
                let mut state = self.lock();
                if self.mode() == Mode::Recording {
                    drop(state);
                    return self.pass(dir, captured(off), piece, None);
                }
                state.probe.see(now, dir, off, &piece);
            }
            Mode::Off => {}
        }
    }

    /// Records `piece`, which went `dir` from `at` in the captured stream: through the
    /// direction's track once a session is recorded (drops then follow frames).
    fn pass(&self, dir: Dir, at: u64, piece: Piece<'_>, time: Option<Timestamp>) {
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
            self.recorder.send(self.id, What::Note(Note::TlsCutWithoutCloseNotify));
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

    /// The socket is closing: the leg's last events.
    pub(crate) fn on_close(&self) {
        if self.is_recording() {
            let mut state = self.lock();
            self.release_held(&mut state);
            let reason = state.close_reason.take().unwrap_or(Ending::Closed);
            drop(state);
            let offsets = PerDir::new(self.captured(Dir::Up), self.captured(Dir::Down));
            self.recorder.send(self.id, What::Close { reason, offsets });
            self.mode.store(Mode::Off as u8, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::event::Event;

    fn client_tap(recorder: &Recorder) -> Arc<Tap> {
        let (local, remote) = ("127.0.0.1:80".parse().unwrap(), "127.0.0.1:4000".parse().unwrap());
        Tap::probing(recorder.clone(), Opening::new(Leg::Client, local, remote, ""), 128 << 10, Layer::Http)
    }

    fn start(request_line: &str) -> Start {
        Start {
            heading: "s".into(),
            label: String::new(),
            request_line: request_line.into(),
            snap: Snap::default(),
            tls_secrets: None,
        }
    }

    /// What reached the queue: the data each way, and the notes, in order.
    fn shape(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match &e.what {
                What::Open(o) => format!("open {:?}", o.scope),
                What::Data { dir, offset, bytes } => format!("{dir:?} {offset}+{}", bytes.len()),
                What::Note(Note::HeldBehindUpgrade { bytes, .. }) => format!("held {bytes}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// A session's capture starts at its Upgrade request among the kept bytes (not at the
    /// exchange before it), and what the client sent right behind the request waits for
    /// the 101.
    #[test]
    fn a_session_starts_at_its_request_and_early_frames_follow_the_101() {
        let recorder = Recorder::new(1 << 20);
        let tap = client_tap(&recorder);
        let (before, upgrade) = (b"GET /a HTTP/1.1\r\n\r\n", b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        tap.on_read(before);
        tap.on_written(Piece::Slice(b"HTTP/1.1 204 No Content\r\n\r\n"));
        tap.on_read(upgrade);
        let at = tap.mark();
        tap.on_read(b"\x81\x80abcd");
        assert!(tap.begin(Scope::Session, at, start("GET /ws HTTP/1.")));
        assert!(tap.is_recording());
        tap.on_written(Piece::Slice(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"));
        let got = shape(&recorder.take_events());
        let n = upgrade.len();
        assert_eq!(
            got,
            ["open Session".to_owned(), format!("Up 0+{n}"), "Down 0+36".into(), "held 6".into(), format!("Up {n}+6")]
        );
    }

    /// A session that starts unrecorded: its probe keeps nothing more, and nothing is sent.
    #[test]
    fn a_tap_that_forgoes_records_nothing() {
        let recorder = Recorder::new(1 << 20);
        let tap = client_tap(&recorder);
        tap.on_read(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        tap.forgo();
        tap.on_read(&[0x81; 4096]);
        assert!(!tap.begin(Scope::Session, tap.mark(), start("GET /ws HTTP/1.")));
        drop(tap);
        assert!(recorder.take_events().is_empty());
    }
}
