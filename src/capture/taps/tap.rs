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

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tracing::{debug, info};
use wstap_wire::{Dir, Leg, PerDir, Timestamp};

use super::chunk::{Keep, Piece};
use super::probe::{FirstBytes, Keeps, Probe};
use super::requests::Requests;
use super::track::{To, Track};
use crate::capture::event::{now, Opening, Scope, What};
use crate::capture::ids::LegId;
use crate::capture::note::{Ending, Note, Stop};
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
    /// The leg's id in the capture: a new one each time its capture starts again.
    id: AtomicU64,
    /// The leg's opening; a session's heading and label are filled in at its start.
    opening: Opening,
    mode: AtomicU8,
    /// Bytes that crossed the socket each way so far.
    offset: PerDir<AtomicU64>,
    /// Socket offsets where capture began, per direction.
    base: PerDir<AtomicU64>,
    /// The client's requests are followed (a client leg's plain HTTP, up to its switch).
    follows: AtomicBool,
    state: Mutex<TapState>,
    /// Each direction's frames, once a session is recorded (locked after `state`).
    tracks: PerDir<Mutex<Option<Box<Track>>>>,
}

struct TapState {
    probe: Probe,
    /// The client's requests, while they are followed (boxed: a session's tap, past its
    /// switch, holds no room for them).
    requests: Option<Box<Requests>>,
    /// The end of each stream was sent, and a reset.
    fin_sent: PerDir<bool>,
    reset_sent: bool,
    /// The client's FIN came while its bytes were held: sent when they are.
    fin_held: bool,
    close_reason: Option<Ending>,
    /// Client bytes no route has decided yet (a request not yet routed, or what followed
    /// an Upgrade request before its answer), held back while recording.
    held: VecDeque<Held>,
    /// Bytes in `held`.
    held_bytes: usize,
}

/// Client bytes held back until a route decides them.
struct Held {
    /// When they crossed the socket.
    time: Timestamp,
    /// Their place in the socket stream.
    offset: u64,
    bytes: Bytes,
}

/// What a request's route says of a leg's capture ([`Tap::decide`]).
pub enum Decision {
    /// The request is recorded: a leg not yet recorded is, from this request on, as
    /// `Start` says (the whole connection).
    Record(Start),
    /// The request is not: a leg recorded so far stops just before it (the connection
    /// goes on, and a later request may start its capture again).
    Skip,
    /// As the leg is (a request no route took): recorded if it is.
    AsIs,
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
        let tap = Tap::new(recorder, opening, Mode::Recording, Probe::new(0, Keeps::Exchange), None);
        tap.recorder.send(tap.id(), What::Open(Box::new(tap.opening.clone())));
        Arc::new(tap)
    }

    /// A tap that records nothing until [`Tap::begin`] or [`Tap::decide`], keeping up to
    /// `probe` bytes of what crossed, as `layer` says, so that capture can begin a little
    /// in the past. A client leg's plain HTTP has its requests followed.
    pub fn probing(recorder: Recorder, opening: Opening, probe: usize, layer: Layer) -> Arc<Tap> {
        let (keeps, requests) = match layer {
            Layer::Http if opening.leg == Leg::Client => (Keeps::Undecided, Some(Box::new(Requests::new(probe)))),
            Layer::Http => (Keeps::Exchange, None),
            Layer::Tls => (Keeps::FromStart(FirstBytes::Kept), None),
        };
        Arc::new(Tap::new(recorder, opening, Mode::Probing, Probe::new(probe, keeps), requests))
    }

    fn new(recorder: Recorder, opening: Opening, mode: Mode, probe: Probe, requests: Option<Box<Requests>>) -> Tap {
        let follows = AtomicBool::new(requests.is_some());
        let state = TapState {
            probe,
            requests,
            fin_sent: PerDir::default(),
            reset_sent: false,
            fin_held: false,
            close_reason: None,
            held: VecDeque::new(),
            held_bytes: 0,
        };
        Tap {
            id: AtomicU64::new(recorder.new_leg().0),
            recorder,
            opening,
            mode: AtomicU8::new(mode as u8),
            offset: Default::default(),
            base: Default::default(),
            follows,
            state: Mutex::new(state),
            tracks: PerDir::default(),
        }
    }

    fn id(&self) -> LegId {
        LegId(self.id.load(Relaxed))
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

    /// The proxy routed its next request (`method`, as hyper parsed it, which began at
    /// `at`), and its route says `decision` for this leg. Called once for every request
    /// hyper hands over, in order. Returns whether the leg is recorded.
    ///
    /// On a client leg whose requests are followed, the request is the one the framer
    /// found where hyper did: a leg recorded so far stops exactly at its first byte, or
    /// goes on with its bytes, which waited for this; one not recorded starts there. On
    /// any other leg, at `at`.
    pub fn decide(&self, method: &str, at: Mark, decision: Decision) -> bool {
        let mut state = self.lock();
        let request = state.requests.as_mut().map(|r| r.route_next(method).map(|r| r.first));
        if let Some(None) = request {
            // hyper took a request the framer did not see: nothing can be told apart.
            self.unfollowed(&mut state);
            return self.is_recording();
        }
        // Where the request began on each way of this leg.
        let base = match request.flatten() {
            Some(first) => PerDir::new(first, at.0[Dir::Down]),
            None => at.0,
        };
        match (self.mode(), decision) {
            (Mode::Recording, Decision::Skip) => self.stop(&mut state, base, Stop::RouteNotRecorded),
            (Mode::Recording, _) => self.release(&mut state, false),
            (Mode::Probing, Decision::Record(start)) => match state.probe.holds_records() {
                false => self.start(&mut state, Scope::Connection, base, start),
                true => self.begin_records(&mut state, Scope::Connection, start),
            },
            (Mode::Probing, Decision::Skip) if state.probe.holds_records() => {
                // TLS records hold every request from the first: this one is among them.
                self.forgo_locked(&mut state);
            }
            _ => {}
        }
        self.is_recording()
    }

    /// The route records an exchange on this leg whose request began at `at`: a
    /// WebSocket session (`Scope::Session`) or, from this request on, the whole connection.
    /// A probing tap starts recording; a tap already recording the connection tells the
    /// writer where a session's Upgrade exchange began, so later files can repeat it.
    /// Returns whether the leg is recorded.
    ///
    /// On a client leg the capture starts at the request last routed ([`Tap::decide`]),
    /// and bytes the client sent behind it wait for its answer (the `101`), and are
    /// written just after it: Wireshark decodes frames only after the `101`, in capture
    /// order. A TLS leg starts at the connection's first byte, or (its handshake no
    /// longer kept) not at all: it could not be decrypted.
    pub fn begin(&self, scope: Scope, at: Mark, start: Start) -> bool {
        if self.is_recording() {
            if scope == Scope::Session {
                let Start { heading, snap, .. } = start;
                self.recorder.send(self.id(), What::Session { heading, snap });
            }
            return true;
        }
        let mut state = self.lock();
        if self.mode() != Mode::Probing {
            return false;
        }
        if state.probe.holds_records() {
            self.begin_records(&mut state, scope, start);
            return self.is_recording();
        }
        let first = match self.opening.leg {
            Leg::Upstream => at.0[Dir::Up],
            Leg::Client => match state.requests.as_ref().and_then(|r| r.routed()) {
                Some(request) => request.first,
                None => {
                    debug!("request not followed; capture starts at the oldest byte kept");
                    state.probe.oldest_read(self.inbound()).unwrap_or(at.0[Dir::Up])
                }
            },
        };
        self.start(&mut state, scope, PerDir::new(first, at.0[Dir::Down]), start);
        true
    }

    /// A TLS leg's capture starts at its first byte, if its probe kept it.
    fn begin_records(&self, state: &mut TapState, scope: Scope, start: Start) {
        if state.probe.start_just_lost() {
            info!(
                leg = self.opening.leg.name(),
                "not captured: the TLS handshake is not kept (too much crossed before the session), so its \
                 records could not be decrypted"
            );
        }
        if !state.probe.start_lost() {
            self.start(state, scope, PerDir::default(), start);
        }
    }

    /// Starts recording a probing tap at socket offsets `base`: the probe's bytes from
    /// there on are written with the times they crossed the socket, but client bytes no
    /// route has decided yet are held (see [`Tap::begin`]).
    fn start(&self, state: &mut TapState, scope: Scope, base: PerDir<u64>, start: Start) {
        for dir in Dir::BOTH {
            self.base[dir].store(base[dir], Relaxed);
        }
        let kept = state.probe.take_from(base);
        let first_time = kept.first().map_or_else(now, |k| k.time);
        let Start { heading, label, snap, tls_secrets, .. } = start;
        let tls = tls_secrets.is_some() || state.probe.holds_records();
        let opening = Opening { heading, label, scope, snap, tls_secrets, ..self.opening.clone() };
        self.recorder.send_at(first_time, self.id(), What::Open(Box::new(opening)));
        // TLS records are not frames: a drop is a drop (after it, nothing decrypts).
        if scope == Scope::Session && !tls {
            // A session's streams start with their heads: from here on, drops follow frames.
            for dir in Dir::BOTH {
                *lock(&self.tracks[dir]) = Some(Box::new(Track::new()));
            }
        }
        self.mode.store(Mode::Recording as u8, Relaxed);
        for k in kept {
            let skip = base[k.dir].saturating_sub(k.offset) as usize;
            let bytes = k.bytes.slice(skip..);
            let at = k.offset.max(base[k.dir]);
            match k.dir == self.inbound() {
                true => self.hold_or_pass(state, at, Piece::Owned(&bytes), Some(k.time)),
                false => self.pass(k.dir, at - base[k.dir], Piece::Owned(&bytes), Some(k.time)),
            }
        }
        if state.held.is_empty() && std::mem::take(&mut state.fin_held) {
            let dir = self.inbound();
            self.send_fin(state, dir);
        }
    }

    /// Nothing on this connection will ever be recorded (its session started unrecorded):
    /// a probing tap lets go of what it kept and keeps nothing more.
    pub fn forgo(&self) {
        let mut state = self.lock();
        self.forgo_locked(&mut state);
    }

    fn forgo_locked(&self, state: &mut TapState) {
        if self.mode() == Mode::Probing {
            self.mode.store(Mode::Off as u8, Relaxed);
            state.probe.forget();
            state.requests = None;
            (state.held, state.held_bytes) = (VecDeque::new(), 0);
            self.follows.store(false, Relaxed);
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

    /// `data` was written: for a connection the tap is not under, whose bytes are said
    /// to it (an HTTP/2 stream's WebSocket, written as HTTP/1.1).
    pub(crate) fn on_said(&self, data: &[u8]) {
        self.on_written(Piece::Slice(data));
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
        if self.follows.load(Relaxed) {
            return self.on_http(dir, off, piece);
        }
        match self.mode() {
            Mode::Recording => self.pass_from(dir, off, piece),
            Mode::Probing => {
                let mut state = self.lock();
                if self.mode() == Mode::Recording {
                    drop(state);
                    return self.pass_from(dir, off, piece);
                }
                state.probe.see(now, dir, off, &piece);
            }
            Mode::Off => {}
        }
    }

    /// Records `piece`, which crossed from socket offset `off`, from where capture began
    /// (a capture that began while it was crossing starts inside it).
    fn pass_from(&self, dir: Dir, off: u64, piece: Piece<'_>) {
        let base = self.base[dir].load(Relaxed);
        let skip = base.saturating_sub(off);
        match skip {
            0 => self.pass(dir, off - base, piece, None),
            skip if skip < piece.len() as u64 => {
                let rest = piece.bytes(skip as usize, piece.len(), Keep::Briefly);
                self.pass(dir, 0, Piece::Owned(&rest), None);
            }
            _ => {}
        }
    }

    /// Records `piece`, which went `dir` from `at` in the captured stream: through the
    /// direction's track once a session is recorded (drops then follow frames).
    fn pass(&self, dir: Dir, at: u64, piece: Piece<'_>, time: Option<Timestamp>) {
        let mut track = lock(&self.tracks[dir]);
        match track.as_mut() {
            Some(t) => t.pass(&To { recorder: &self.recorder, leg: self.id(), dir, time }, at, piece),
            None => {
                let bytes = piece.bytes(0, piece.len(), Keep::Briefly);
                self.recorder.push(time, self.id(), What::Data { dir, offset: at, bytes });
            }
        }
    }

    /// Length of the captured stream going `dir` so far (client bytes still held not
    /// counted).
    fn captured(&self, dir: Dir, state: &TapState) -> u64 {
        let end = match (dir == self.inbound(), state.held.front()) {
            (true, Some(held)) => held.offset,
            _ => self.offset[dir].load(Relaxed),
        };
        end.saturating_sub(self.base[dir].load(Relaxed))
    }

    /// The peer ended its stream (a read returned end of file).
    pub(crate) fn on_read_end(&self) {
        self.on_fin(self.inbound());
    }

    /// The peer's TLS ended without `close_notify`: taken as the end of its stream (a FIN),
    /// which the packet's comment says, since a cut stream looks the same.
    pub(crate) fn on_read_cut(&self) {
        if self.is_recording() {
            self.recorder.send(self.id(), What::Note(Note::TlsCutWithoutCloseNotify));
        }
        self.on_fin(self.inbound());
    }

    /// wstap shut its write side.
    pub(crate) fn on_shutdown(&self) {
        self.on_fin(self.inbound().reverse());
    }

    fn on_fin(&self, dir: Dir) {
        let mut state = self.lock();
        if dir == self.inbound() && !state.held.is_empty() {
            state.fin_held = true;
            return;
        }
        self.send_fin(&mut state, dir);
    }

    fn send_fin(&self, state: &mut TapState, dir: Dir) {
        if self.is_recording() && !std::mem::replace(&mut state.fin_sent[dir], true) {
            let offset = self.captured(dir, state);
            if let Some(track) = lock(&self.tracks[dir]).as_mut() {
                track.end(&To { recorder: &self.recorder, leg: self.id(), dir, time: None }, offset);
            }
            self.recorder.send(self.id(), What::Fin { dir, offset });
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
            self.recorder.send(self.id(), What::Reset);
        }
    }

    /// The socket is closing: the leg's last events. Client bytes no route ever decided
    /// (hyper refused them, or the client left first) are not written.
    pub(crate) fn on_close(&self) {
        if self.is_recording() {
            let mut state = self.lock();
            if std::mem::take(&mut state.fin_held) {
                let dir = self.inbound();
                self.send_fin(&mut state, dir);
            }
            let reason = state.close_reason.take().unwrap_or(Ending::Closed);
            let offsets = PerDir::new(self.captured(Dir::Up, &state), self.captured(Dir::Down, &state));
            drop(state);
            self.recorder.send(self.id(), What::Close { reason, offsets });
            self.mode.store(Mode::Off as u8, Relaxed);
        }
    }
}

/// A client leg's requests: what no route decided yet is held, a request not recorded
/// stops the capture at its first byte, a lost framing stops it for good.
impl Tap {
    /// The leg's capture stops at socket offsets `at` (the first byte of a request its
    /// route does not record, or where the client's HTTP was lost), for `why`; the
    /// connection goes on, probed again, so that a later request may start a new capture.
    fn stop(&self, state: &mut TapState, at: PerDir<u64>, why: Stop) {
        let offsets = at.by_ref().map(|dir, at| at.saturating_sub(self.base[dir].load(Relaxed)));
        info!(leg = self.opening.leg.name(), reason = %why, "capture stopped; the connection goes on");
        self.recorder.send(self.id(), What::Close { reason: Ending::Stopped(why), offsets });
        self.mode.store(Mode::Probing as u8, Relaxed);
        self.id.store(self.recorder.new_leg().0, Relaxed);
        for dir in Dir::BOTH {
            *lock(&self.tracks[dir]) = None;
        }
        // A client FIN held behind the bytes still holds: a new capture sends it after them.
        (state.fin_sent, state.reset_sent) = (PerDir::default(), false);
        // What waited is probed again: a later request among it may start a session.
        for held in std::mem::take(&mut state.held) {
            state.probe.see(|| held.time, self.inbound(), held.offset, &Piece::Owned(&held.bytes));
        }
        state.held_bytes = 0;
        if state.probe.holds_records() {
            // TLS records cannot start again in the middle: nothing more is recorded.
            self.forgo_locked(state);
        }
    }

    /// The client's HTTP can no longer be followed: a recorded leg stops where it was
    /// lost, and nothing more of the connection is recorded (any request could hide in
    /// what follows).
    fn unfollowed(&self, state: &mut TapState) {
        let lost = state.requests.as_ref().and_then(|r| r.lost().cloned());
        let (at, why) = lost.unwrap_or((self.offset[Dir::Up].load(Relaxed), wstap_wire::http::FramingError::BytesLost));
        if self.is_recording() {
            self.stop(state, PerDir::new(at, self.offset[Dir::Down].load(Relaxed)), Stop::Unfollowed(why));
        }
        self.forgo_locked(state);
    }

    /// Client bytes from socket offset `at`: written up to the first no route has
    /// decided yet, held from there.
    fn hold_or_pass(&self, state: &mut TapState, at: u64, piece: Piece<'_>, time: Option<Timestamp>) {
        let len = piece.len();
        let undecided = state.requests.as_deref().and_then(Requests::undecided_from);
        let hold_from = match state.held.is_empty() {
            true => undecided.unwrap_or(u64::MAX).max(at),
            false => at,
        };
        let cut = (hold_from.min(at + len as u64) - at) as usize;
        let base = self.base[self.inbound()].load(Relaxed);
        if cut == len {
            return self.pass(self.inbound(), at - base, piece, time);
        }
        if cut > 0 {
            self.pass(self.inbound(), at - base, Piece::Owned(&piece.bytes(0, cut, Keep::Briefly)), time);
        }
        let bytes = piece.bytes(cut, len, Keep::Long);
        state.held_bytes += bytes.len();
        state.held.push_back(Held { time: time.unwrap_or_else(now), offset: at + cut as u64, bytes });
        if state.held_bytes > state.probe.cap() {
            let first = state.held.front().map_or(at, |h| h.offset);
            let kib = state.probe.cap() >> 10;
            self.stop(state, PerDir::new(first, self.offset[Dir::Down].load(Relaxed)), Stop::TooMuchUndecided { kib });
            self.forgo_locked(state);
        }
    }

    /// Writes the held client bytes a route has decided since; `answered`: after wstap
    /// wrote to the client (the answer to an Upgrade request), which the note says.
    fn release(&self, state: &mut TapState, answered: bool) {
        let limit = state.requests.as_deref().and_then(Requests::undecided_from).unwrap_or(u64::MAX);
        let (dir, base) = (self.inbound(), self.base[self.inbound()].load(Relaxed));
        let ready: usize = state
            .held
            .iter()
            .take_while(|h| h.offset < limit)
            .map(|h| ((limit - h.offset) as usize).min(h.bytes.len()))
            .sum();
        if ready > 0 && answered {
            let arrived = state.held[0].time;
            self.recorder.send(self.id(), What::Note(Note::HeldBehindUpgrade { bytes: ready, arrived }));
        }
        let mut left = ready;
        while left > 0 {
            let held = state.held.front_mut().expect("the ready bytes are held");
            let n = left.min(held.bytes.len());
            let (at, bytes) = (held.offset, held.bytes.split_to(n));
            held.offset += n as u64;
            if held.bytes.is_empty() {
                state.held.pop_front();
            }
            (state.held_bytes, left) = (state.held_bytes - n, left - n);
            self.pass(dir, at - base, Piece::Owned(&bytes), None);
        }
        if state.held.is_empty() && std::mem::take(&mut state.fin_held) {
            self.send_fin(state, dir);
        }
    }

    /// `piece` crossed a client leg whose requests are followed, from socket offset
    /// `off`: the framer sees it first, so that what no route decided yet is held.
    fn on_http(&self, dir: Dir, off: u64, piece: Piece<'_>) {
        let mut state = self.lock();
        let Some(requests) = state.requests.as_mut() else { return };
        requests.see(dir, &piece);
        let lost = requests.lost().is_some();
        match (self.mode(), dir == self.inbound()) {
            (Mode::Probing, true) => {
                // Only what no route decided yet may start a session: a request routed
                // without an Upgrade, and its body, are not kept.
                let keep_from = requests.routed_upgrade().or(requests.undecided_from()).unwrap_or(u64::MAX);
                state.probe.drop_before(dir, keep_from);
                let skip = (keep_from.saturating_sub(off) as usize).min(piece.len());
                if skip < piece.len() {
                    let kept = piece.bytes(skip, piece.len(), Keep::Long);
                    state.probe.see(now, dir, off + skip as u64, &Piece::Owned(&kept));
                }
            }
            (Mode::Probing, false) => {
                // An answer may have ended the exchange of the last request routed.
                let keep_from = requests.routed_upgrade().or(requests.undecided_from()).unwrap_or(u64::MAX);
                state.probe.see(now, dir, off, &piece);
                state.probe.drop_before(self.inbound(), keep_from);
            }
            (Mode::Recording, true) => self.hold_or_pass(&mut state, off, piece, None),
            (Mode::Recording, false) => {
                self.pass(dir, off - self.base[dir].load(Relaxed), piece, None);
                self.release(&mut state, true);
            }
            (Mode::Off, _) => {}
        }
        if lost {
            return self.unfollowed(&mut state);
        }
        let done = state.requests.as_deref().is_none_or(Requests::switched) && state.held.is_empty();
        if done || self.mode() == Mode::Off {
            state.requests = None;
            self.follows.store(false, Relaxed);
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

    /// Every client connection holds a tap while it lives (an idle keep-alive one too):
    /// what is needed only while requests are followed, or while a session is recorded,
    /// is boxed apart, so the tap itself stays small.
    #[test]
    fn a_tap_holds_no_room_for_what_it_does_not_do_yet() {
        assert!(std::mem::size_of::<Tap>() <= 480, "{} bytes", std::mem::size_of::<Tap>());
        let recorder = Recorder::new(1 << 20);
        let tap = client_tap(&recorder);
        assert!(tap.tracks.iter().all(|(_, t)| lock(t).is_none()), "no frame tracks before a session");
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
        tap.decide("GET", tap.mark(), Decision::AsIs);
        tap.on_written(Piece::Slice(b"HTTP/1.1 204 No Content\r\n\r\n"));
        tap.on_read(upgrade);
        let at = tap.mark();
        tap.decide("GET", at, Decision::AsIs);
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

    /// A connection recorded whole, whose next request's route records nothing: its
    /// capture stops at that request's first byte (none of it, nor of its body, is
    /// sent), and a later request of a route that records starts a new capture there.
    #[test]
    fn a_request_not_recorded_stops_the_capture_at_its_first_byte() {
        let recorder = Recorder::new(1 << 20);
        let tap = client_tap(&recorder);
        let public = b"GET /public HTTP/1.1\r\n\r\n";
        let private = b"post /private HTTP/1.1\r\nContent-Length: 6\r\n\r\nsecret";
        let again = b"\r\nGET /public HTTP/1.1\n\n";
        // The first request, and the next read with it before its route is known.
        tap.on_read(&[&public[..], &private[..10]].concat());
        assert!(tap.decide("GET", tap.mark(), Decision::Record(start("GET /public HTTP/1."))));
        tap.on_written(Piece::Slice(b"HTTP/1.1 204 No Content\r\n\r\n"));
        tap.on_read(&private[10..]);
        assert!(!tap.decide("POST", tap.mark(), Decision::Skip), "a lowercase method is not hyper's");
        let recorder2 = Recorder::new(1 << 20);
        let tap2 = client_tap(&recorder2);
        tap2.on_read(&[&public[..], &private[..10]].concat());
        assert!(tap2.decide("GET", tap2.mark(), Decision::Record(start("GET /public HTTP/1."))));
        tap2.on_written(Piece::Slice(b"HTTP/1.1 204 No Content\r\n\r\n"));
        tap2.on_read(&private[10..]);
        assert!(!tap2.decide("post", tap2.mark(), Decision::Skip));
        tap2.on_written(Piece::Slice(b"HTTP/1.1 204 No Content\r\n\r\n"));
        tap2.on_read(again);
        assert!(tap2.decide("GET", tap2.mark(), Decision::Record(start("GET /public HTTP/1."))));
        let events = recorder2.take_events();
        let sent: Vec<u8> = events
            .iter()
            .filter_map(|e| match &e.what {
                What::Data { dir: Dir::Up, bytes, .. } => Some(bytes.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(sent, [&public[..], &again[..]].concat(), "nothing of the private request");
        let n = public.len();
        assert_eq!(
            shape(&events)[..4],
            [
                "open Connection".to_owned(),
                format!("Up 0+{n}"),
                "Down 0+27".into(),
                "Close { reason: Stopped(RouteNotRecorded), offsets: PerDir([24, 27]) }".into()
            ]
        );
        assert_eq!(shape(&events)[4..], ["open Connection".to_owned(), format!("Up 0+{}", again.len())]);
        // The first tap: hyper's request was not the framer's; nothing more is recorded.
        let events = recorder.take_events();
        assert!(matches!(
            events.last().map(|e| &e.what),
            Some(What::Close { reason: Ending::Stopped(Stop::Unfollowed(_)), .. })
        ));
    }

    /// An idle keep-alive connection after a large POST keeps none of it: its body is
    /// not kept once its request is routed, and what was read with its head goes with
    /// the answer.
    #[test]
    fn an_idle_connection_after_a_large_post_keeps_nothing_of_it() {
        let recorder = Recorder::new(1 << 20);
        let tap = client_tap(&recorder);
        let post = [&b"POST /p HTTP/1.1\r\nContent-Length: 200000\r\n\r\n"[..], &[b'y'; 200_000]].concat();
        tap.on_read(&post[..16 << 10]);
        tap.decide("POST", tap.mark(), Decision::AsIs);
        for piece in post[16 << 10..].chunks(16 << 10) {
            tap.on_read(piece);
        }
        assert!(tap.lock().probe.kept() <= 16 << 10, "the body read after routing is not kept");
        tap.on_written(Piece::Slice(b"HTTP/1.1 204 No Content\r\n\r\n"));
        assert_eq!(tap.lock().probe.kept(), 0);
        assert!(recorder.take_events().is_empty());
    }

    /// Pipelined requests in the forms hyper takes, each with credentials marked `~A…~`,
    /// `~C…~`, `~Q…~`; and where each request's head ends, and its method.
    fn pipelined_with_credentials() -> (Vec<u8>, Vec<(usize, String)>) {
        use wstap_wire::http::{Framer, Part};
        let mut stream = Vec::new();
        for i in 0..120u32 {
            let (eol, method) = match i % 5 {
                0 | 3 => ("\r\n", "GET"),
                1 => ("\n", "GET"),
                2 => ("\r\n", "get"),
                _ => ("\n", "PUT"),
            };
            if i % 7 == 3 {
                stream.extend_from_slice(eol.as_bytes());
            }
            let body = if i % 3 == 1 { format!("~B{i}~") } else { String::new() };
            let head = format!(
                "{method} /all/{i}?token=~Q{i}~ HTTP/1.1{eol}Host: h{eol}Authorization: Bearer ~A{i}~{eol}\
                 Cookie: sid=~C{i}~{eol}Content-Length: {}{eol}{eol}{body}",
                body.len()
            );
            stream.extend_from_slice(head.as_bytes());
        }
        let (mut framer, mut heads, mut at) = (Framer::new(1 << 16), Vec::new(), 0);
        while at < stream.len() {
            let step = framer.advance(Dir::Up, &stream[at..]);
            if let Part::Head { head, .. } = &step.part {
                heads.push((at + step.used, head.method.clone()));
            }
            at += step.used;
        }
        (stream, heads)
    }

    /// The file the capture writer makes of `events`, with the default redaction.
    fn written(events: Vec<Event>) -> Vec<u8> {
        use crate::capture::write::{CaptureWriter, Processed, Synthesis};
        use crate::config::{DisplayPort, Legs, PureAcks, Redact, Segmentation};
        let synth = Synthesis {
            mss_ipv4: 1460,
            mss_ipv6: 1440,
            segment: Segmentation::Mss,
            acks: PureAcks::Omitted,
            display_port: DisplayPort::Auto,
            redact: Arc::new(Redact::defaults()),
            isn_seed: 7,
            rotate_wait: std::time::Duration::from_millis(5),
            budgets: Default::default(),
        };
        let info = wstap_wire::pcapng::SectionInfo {
            application: "t".into(),
            os: "t".into(),
            hostname: "t".into(),
            ..Default::default()
        };
        let mut w = CaptureWriter::new(Vec::new(), &info, Legs { client: true, upstream: false }, synth).unwrap();
        let stats = crate::capture::Stats::default();
        for e in events {
            assert!(matches!(w.process(e, &stats).unwrap(), Processed::Done));
        }
        w.finish(&stats).unwrap().unwrap()
    }

    /// A connection recorded whole carrying pipelined requests, read in pieces of every
    /// size and routed at every moment hyper could route them (a request once its head is
    /// read, after the answer to the one before): whatever the interleaving, no credential
    /// reaches the file the writer makes.
    #[test]
    fn no_interleaving_of_reads_and_routing_lets_a_credential_through() {
        let (stream, heads) = pipelined_with_credentials();
        let mark = regex::bytes::Regex::new("~[ACQ][0-9]+~").unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..40 {
            let recorder = Recorder::new(64 << 20);
            let tap = client_tap(&recorder);
            let (mut read, mut routed) = (0usize, 0usize);
            while routed < heads.len() {
                if read < stream.len() && rand(3) > 0 {
                    let n = (1 + rand(2000) as usize).min(stream.len() - read);
                    tap.on_read(&stream[read..read + n]);
                    read += n;
                }
                while routed < heads.len() && heads[routed].0 <= read && rand(2) == 0 {
                    tap.decide(&heads[routed].1, tap.mark(), Decision::Record(start("")));
                    tap.on_written(Piece::Slice(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
                    routed += 1;
                }
            }
            tap.on_close();
            let file = written(recorder.take_events());
            if let Some(m) = mark.find(&file) {
                panic!("{} in the file", String::from_utf8_lossy(m.as_bytes()));
            }
            let redacted = file.windows(16).filter(|w| w == b"Cookie: ********").count();
            assert!(redacted >= 10 * 9, "the requests are in the file, redacted: {redacted}");
        }
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
