//! The capture point: [`Tee`] wraps a connection's raw stream (under hyper, on both
//! legs) and reports to its [`Tap`] every byte read, every byte actually written, each
//! end of stream and each reset, in the order they happened. The tap turns them into
//! recorder events, or, while a connection is only a candidate for capture (`websocket`
//! mode, before its `101`), keeps the most recent bytes in a small ring so that capture
//! can begin at the exact first byte of the Upgrade request. It never blocks the stream.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::service::metrics::{ByteCounts, Metrics, IN, OUT};
use crate::capture::recorder::{Dir, LegId, LegKind, Opening, Recorder, What};

const OFF: u8 = 0;
const PROBE: u8 = 1;
const ON: u8 = 2;

/// One leg's capture state, shared by its [`Tee`] and the proxy.
pub struct Tap {
    recorder: Recorder,
    leg: LegId,
    /// The leg's description; a session's comment and label are filled in at its start.
    opening: Opening,
    mode: AtomicU8,
    /// Bytes read (`In`) and written (`Out`) on the socket so far.
    offset: [AtomicU64; 2],
    /// Socket offsets where capture began, per direction.
    base: [AtomicU64; 2],
    /// Client bytes are being held back until wstap's first write (the `101`).
    holding: AtomicBool,
    state: Mutex<TapState>,
}

#[derive(Default)]
struct TapState {
    /// Recent chunks while probing: (time, dir, socket offset, bytes).
    ring: VecDeque<(u64, Dir, u64, Bytes)>,
    ring_bytes: usize,
    ring_cap: usize,
    fin_sent: [bool; 2],
    reset_sent: bool,
    close_reason: Option<String>,
    /// Bytes read after the Upgrade request's head and before the `101` was written:
    /// (time, captured-stream offset, bytes).
    held: Vec<(u64, u64, Bytes)>,
}

fn idx(dir: Dir) -> usize {
    match dir {
        Dir::In => 0,
        Dir::Out => 1,
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Tap {
    /// A tap that records from the connection's first byte: its handshake is written now.
    pub fn recording(recorder: Recorder, opening: Opening) -> Arc<Tap> {
        let tap = Tap::new(recorder, opening, ON, 0);
        tap.recorder.send(tap.leg, What::Open(Box::new(tap.opening.clone())));
        Arc::new(tap)
    }

    /// A tap that records nothing until [`Tap::start`], keeping the last `ring_cap` bytes
    /// so that capture can begin a little in the past.
    pub fn probing(recorder: Recorder, opening: Opening, ring_cap: usize) -> Arc<Tap> {
        Arc::new(Tap::new(recorder, opening, PROBE, ring_cap))
    }

    fn new(recorder: Recorder, opening: Opening, mode: u8, ring_cap: usize) -> Tap {
        Tap {
            leg: recorder.new_leg(),
            recorder,
            opening,
            mode: AtomicU8::new(mode),
            offset: Default::default(),
            base: Default::default(),
            holding: AtomicBool::new(false),
            state: Mutex::new(TapState { ring_cap, ..TapState::default() }),
        }
    }

    pub fn is_recording(&self) -> bool {
        self.mode.load(Relaxed) == ON
    }

    /// Bytes read (`In`) or written (`Out`) on the socket so far.
    pub fn offset(&self, dir: Dir) -> u64 {
        self.offset[idx(dir)].load(Relaxed)
    }

    /// The socket offset of the oldest `In` byte still kept while probing, if any.
    pub fn oldest_in(&self) -> Option<u64> {
        self.lock().ring.iter().find(|c| c.1 == Dir::In).map(|c| c.2)
    }

    /// Where the last request head whose first line starts with `line` (such as
    /// `GET /chat HTTP/1.`) lies among the probed `In` bytes: the socket offsets of its
    /// first byte and of the byte after its blank line.
    pub fn find_head(&self, line: &[u8]) -> Option<(u64, u64)> {
        let state = self.lock();
        let mut bytes = Vec::with_capacity(state.ring_bytes);
        let mut first = None;
        for (_, dir, off, b) in &state.ring {
            if *dir == Dir::In {
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

    /// Starts recording a probing tap: the leg's capture begins at socket offsets
    /// `base_in` / `base_out`; probed bytes from there on are written with the times they
    /// crossed the socket. `comment` goes on the leg's first packet.
    ///
    /// With `hold_from`, `In` bytes from that socket offset on (what a client sent right
    /// behind its Upgrade request) are held until wstap's next write (the `101`) and
    /// written just after it, with a comment giving their real arrival: Wireshark decodes
    /// WebSocket frames only after the `101`, in capture order.
    pub fn start(&self, base_in: u64, base_out: u64, hold_from: Option<u64>, comment: String, label: String) {
        let mut state = self.lock();
        if self.mode.load(Relaxed) != PROBE {
            return;
        }
        let base = [base_in, base_out];
        self.base[0].store(base_in, Relaxed);
        self.base[1].store(base_out, Relaxed);
        let kept: Vec<_> =
            state.ring.drain(..).filter(|(_, dir, off, b)| off + b.len() as u64 > base[idx(*dir)]).collect();
        state.ring_bytes = 0;
        let first_time = kept.first().map_or_else(now_ns, |c| c.0);
        let opening = Opening { comment, label, session: true, ..self.opening.clone() };
        self.recorder.send_at(first_time, self.leg, What::Open(Box::new(opening)));
        let hold_from = hold_from.unwrap_or(u64::MAX);
        for (time, dir, off, bytes) in kept {
            let base = base[idx(dir)];
            let skip = base.saturating_sub(off) as usize;
            let (offset, mut bytes) = (off.max(base) - base, bytes.slice(skip..));
            let off = off.max(base);
            if dir == Dir::In && off + bytes.len() as u64 > hold_from {
                let keep = hold_from.saturating_sub(off) as usize;
                let later = bytes.split_off(keep);
                state.held.push((time, offset + keep as u64, later));
            }
            if !bytes.is_empty() {
                self.recorder.send_at(time, self.leg, What::Data { dir, offset, bytes });
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
            self.leg,
            What::Note(format!(
                "the client sent these {bytes} bytes right behind its Upgrade request, before the 101 \
                 (they arrived at {}); wstap shows them after the 101 so that Wireshark decodes them",
                humantime::format_rfc3339_nanos(UNIX_EPOCH + std::time::Duration::from_nanos(arrived))
            )),
        );
        for (_, offset, bytes) in state.held.drain(..) {
            self.recorder.send(self.leg, What::Data { dir: Dir::In, offset, bytes });
        }
    }

    /// A session starts on this leg: a probing tap starts recording (see
    /// [`Tap::start`]); a tap already recording (`capture.mode = "all"`) tells the writer
    /// where the session's Upgrade exchange began, so later files can replay it.
    pub fn begin(&self, base_in: u64, base_out: u64, hold_from: Option<u64>, session: SessionStart) {
        if self.is_recording() {
            let at = match self.opening.kind {
                // Where the request began among what was read is found by its line.
                LegKind::Client => [None, Some(base_out)],
                LegKind::Upstream => [Some(base_in), Some(base_out)],
            };
            let SessionStart { comment, request_line, .. } = session;
            self.recorder.send(self.leg, What::Session { comment, request_line, at });
        } else {
            self.start(base_in, base_out, hold_from, session.comment, session.label);
        }
    }

    /// Why the connection is about to close: goes on the leg's last packet.
    pub fn set_close_reason(&self, reason: String) {
        self.lock().close_reason = Some(reason);
    }

    fn lock(&self) -> MutexGuard<'_, TapState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn on_bytes(&self, dir: Dir, data: &[u8]) {
        self.on_chunk(dir, data.len(), |keep| copy_chunk([data], data.len(), keep));
    }

    /// `len` bytes crossed the socket; `copy` makes them (only called if they are kept).
    fn on_chunk(&self, dir: Dir, len: usize, copy: impl FnOnce(Keep) -> Bytes) {
        let off = self.offset[idx(dir)].fetch_add(len as u64, Relaxed);
        match self.mode.load(Relaxed) {
            ON if self.holding.load(Relaxed) => {
                let mut state = self.lock();
                match dir {
                    Dir::In => {
                        let offset = off.saturating_sub(self.base[0].load(Relaxed));
                        state.held.push((now_ns(), offset, copy(Keep::Briefly)));
                    }
                    Dir::Out => {
                        self.send_data(dir, off, copy(Keep::Briefly));
                        self.release_held(&mut state);
                    }
                }
            }
            ON => self.send_data(dir, off, copy(Keep::Briefly)),
            PROBE => {
                let mut state = self.lock();
                if self.mode.load(Relaxed) == ON {
                    drop(state);
                    return self.send_data(dir, off, copy(Keep::Briefly));
                }
                state.ring.push_back((now_ns(), dir, off, copy(Keep::Long)));
                state.ring_bytes += len;
                while state.ring_bytes > state.ring_cap && state.ring.len() > 1 {
                    let (_, _, _, old) = state.ring.pop_front().expect("ring is not empty");
                    state.ring_bytes -= old.len();
                }
            }
            _ => {}
        }
    }

    fn send_data(&self, dir: Dir, off: u64, bytes: Bytes) {
        let base = self.base[idx(dir)].load(Relaxed);
        let offset = off.saturating_sub(base);
        self.recorder.send(self.leg, What::Data { dir, offset, bytes });
    }

    /// Length of the captured stream in `dir` so far.
    fn captured(&self, dir: Dir) -> u64 {
        self.offset[idx(dir)].load(Relaxed).saturating_sub(self.base[idx(dir)].load(Relaxed))
    }

    fn on_fin(&self, dir: Dir) {
        let mut state = self.lock();
        if self.is_recording() && !std::mem::replace(&mut state.fin_sent[idx(dir)], true) {
            let offset = self.captured(dir);
            self.recorder.send(self.leg, What::Fin { dir, offset });
        }
    }

    fn on_error(&self, dir: Dir, e: &io::Error) {
        use io::ErrorKind::*;
        if !matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe) {
            return;
        }
        let mut state = self.lock();
        if self.is_recording() && !std::mem::replace(&mut state.reset_sent, true) {
            self.recorder.send(self.leg, What::Reset { dir });
        }
    }

    fn on_close(&self) {
        if self.is_recording() {
            let mut state = self.lock();
            self.release_held(&mut state);
            let reason = state.close_reason.take().unwrap_or_else(|| "connection closed".to_owned());
            drop(state);
            let offsets = [self.captured(Dir::In), self.captured(Dir::Out)];
            self.recorder.send(self.leg, What::Close { reason, offsets });
            self.mode.store(OFF, Relaxed);
        }
    }
}

/// How long a captured chunk will live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// On its way to the writer, which drops it within milliseconds.
    Briefly,
    /// In a probe ring, perhaps for the connection's life.
    Long,
}

/// Chunks shorter than this that are kept briefly share the thread's slab.
const SLAB_CHUNK: usize = 16 * 1024;
/// Below the allocator's mmap threshold (128 KiB), so that a new slab reuses warm heap
/// memory: 256 KiB slabs came fresh from mmap, and faulting their pages in cost more
/// than the allocations they saved.
const SLAB: usize = 64 * 1024;

thread_local! {
    /// Where this thread copies captured chunks: one allocation cut into many `Bytes`,
    /// freed by the writer thread when it drops the last of them. Per chunk that is a
    /// reference count instead of an allocation here and a free on another thread.
    static SLAB_BUF: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// The first `n` bytes of `parts`, copied. A chunk kept long gets its own allocation,
/// so that it never pins a shared slab.
fn copy_chunk<'a>(parts: impl IntoIterator<Item = &'a [u8]>, n: usize, keep: Keep) -> Bytes {
    let gather = |out: &mut BytesMut| {
        let mut left = n;
        for p in parts {
            let take = left.min(p.len());
            out.extend_from_slice(&p[..take]);
            left -= take;
        }
    };
    if keep == Keep::Long || n > SLAB_CHUNK {
        let mut own = BytesMut::with_capacity(n);
        gather(&mut own);
        return own.freeze();
    }
    SLAB_BUF.with_borrow_mut(|slab| {
        if slab.capacity() - slab.len() < n {
            *slab = BytesMut::with_capacity(SLAB);
        }
        gather(slab);
        slab.split().freeze()
    })
}

/// What a session start tells a tap.
pub struct SessionStart {
    /// For the leg's first packet (or next, on a leg recorded from its first byte).
    pub comment: String,
    /// For per-session file names.
    pub label: String,
    /// The Upgrade request's first line up to `HTTP/1.` (`GET /chat HTTP/1.`).
    pub request_line: String,
}

/// A stream whose traffic is reported to a [`Tap`] (or, with no tap, a plain stream).
pub struct Tee<S> {
    io: S,
    tap: Option<Arc<Tap>>,
    /// Byte counters of this leg (in, out), if metered: the daemon's, and the
    /// connection's own.
    meter: Option<(Arc<Metrics>, usize, Option<ByteCounts>)>,
}

impl<S> Tee<S> {
    pub fn new(io: S, tap: Option<Arc<Tap>>) -> Tee<S> {
        Tee { io, tap, meter: None }
    }

    /// Also counts the bytes read and written, as leg `leg` of `metrics`, and into
    /// `own` (in, out) when given.
    pub fn metered(mut self, metrics: Arc<Metrics>, leg: usize, own: Option<ByteCounts>) -> Tee<S> {
        self.meter = Some((metrics, leg, own));
        self
    }

    fn count(&self, dir: usize, n: usize) {
        if let Some((m, leg, own)) = &self.meter {
            m.bytes[*leg][dir].fetch_add(n as u64, Relaxed);
            if let Some(own) = own {
                own[dir].fetch_add(n as u64, Relaxed);
            }
        }
    }

    pub fn tap(&self) -> Option<&Arc<Tap>> {
        self.tap.as_ref()
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

impl<S> Drop for Tee<S> {
    fn drop(&mut self) {
        if let Some(tap) = &self.tap {
            tap.on_close();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tee<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &result {
            this.count(IN, buf.filled().len() - before);
        }
        if let Some(tap) = &this.tap {
            match &result {
                Poll::Ready(Ok(())) => {
                    let got = &buf.filled()[before..];
                    if !got.is_empty() {
                        tap.on_bytes(Dir::In, got);
                    } else if had_room {
                        tap.on_fin(Dir::In);
                    }
                }
                Poll::Ready(Err(e)) => tap.on_error(Dir::In, e),
                Poll::Pending => {}
            }
        }
        result
    }
}

impl<S> Tee<S> {
    /// After a write: counts what was written and reports it (or the error) to the tap.
    /// `written` makes the bytes, only if the tap keeps them.
    fn wrote(&self, result: &Poll<io::Result<usize>>, written: impl FnOnce(usize, Keep) -> Bytes) {
        match result {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.count(OUT, *n);
                if let Some(tap) = &self.tap {
                    tap.on_chunk(Dir::Out, *n, |keep| written(*n, keep));
                }
            }
            Poll::Ready(Err(e)) => {
                if let Some(tap) = &self.tap {
                    tap.on_error(Dir::Out, e);
                }
            }
            _ => {}
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tee<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(&result, |n, keep| copy_chunk([buf], n, keep));
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        // Exactly the bytes written, gathered into one chunk, as one write.
        this.wrote(&result, |n, keep| copy_chunk(bufs.iter().map(|b| &b[..]), n, keep));
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_shutdown(cx);
        if let (Some(tap), Poll::Ready(Ok(()))) = (&this.tap, &result) {
            tap.on_fin(Dir::Out);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brief_chunks_share_a_slab_and_long_ones_do_not() {
        let a = copy_chunk([&b"hello "[..], b"world, and more"], 11, Keep::Briefly);
        let b = copy_chunk([&b"again"[..]], 5, Keep::Briefly);
        assert_eq!((&a[..], &b[..]), (&b"hello world"[..], &b"again"[..]));
        assert_eq!(b.as_ptr(), a.as_ptr().wrapping_add(a.len()), "cut from one slab");
        let long = copy_chunk([&b"kept for long"[..]], 13, Keep::Long);
        assert_eq!(&long[..], b"kept for long");
        let c = copy_chunk([&b"next"[..]], 4, Keep::Briefly);
        assert_eq!(c.as_ptr(), b.as_ptr().wrapping_add(b.len()), "a long chunk takes nothing from the slab");
        // Filling the slab starts another; what was cut from the old one stays intact.
        let big = vec![7u8; SLAB_CHUNK];
        let many: Vec<Bytes> =
            (0..2 * SLAB / SLAB_CHUNK).map(|_| copy_chunk([&big[..]], big.len(), Keep::Briefly)).collect();
        assert!(many.iter().all(|m| m[..] == big[..]));
        assert_eq!((&a[..], &b[..], &c[..]), (&b"hello world"[..], &b"again"[..], &b"next"[..]));
    }
}
