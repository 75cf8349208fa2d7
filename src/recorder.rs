//! Turns connection events into a pcapng file, off the async workers. Taps push
//! [`Event`]s into a bounded queue (stamped under its lock, so queue order is time
//! order); a writer thread drains it, keeps one synthesized [`Flow`] per connection leg,
//! and writes the packets. When the queue is full, data events are dropped and counted;
//! the writer then shows the gap as a sequence jump plus a packet comment. Proxied
//! traffic never waits for any of this.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tracing::{error, info, warn};

use crate::config::{CaptureSettings, Legs};
use crate::packet::{End, Flow};
use crate::pcapng::{Direction, PcapngWriter, SectionInfo};

/// Identifies one leg of one connection in the event stream.
pub type LegId = u64;

/// The two connections of a proxied session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegKind {
    /// Client ↔ wstap's listener. The client opened it.
    Client,
    /// wstap ↔ upstream. wstap opened it.
    Upstream,
}

impl LegKind {
    pub fn name(self) -> &'static str {
        match self {
            LegKind::Client => "client",
            LegKind::Upstream => "upstream",
        }
    }
}

/// Which way bytes went, seen from wstap: `In` was read from the socket, `Out` written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    In,
    Out,
}

/// Something that happened on one leg, at `time` (ns since the Unix epoch).
#[derive(Debug, Clone)]
pub struct Event {
    pub time: u64,
    pub leg: LegId,
    pub what: What,
}

#[derive(Debug, Clone)]
pub enum What {
    /// The leg's capture starts: synthesize its handshake. `comment` goes on the SYN.
    Open(Box<Opening>),
    /// Bytes that crossed the socket; `offset` is their position in that direction's
    /// captured stream (a jump means bytes were lost).
    Data { dir: Dir, offset: u64, bytes: Bytes },
    /// End of stream: `In` = the peer's FIN was read, `Out` = wstap shut its write side.
    /// `offset` is the stream's length (bytes lost just before it still count).
    Fin { dir: Dir, offset: u64 },
    /// The peer reset the connection (seen while reading, `In`, or writing, `Out`).
    Reset { dir: Dir },
    /// A comment for the leg's next packet.
    Note(String),
    /// The socket was closed; `reason` goes on the leg's last packet. `offsets` are the
    /// captured streams' lengths (`In`, `Out`).
    Close { reason: String, offsets: [u64; 2] },
}

#[derive(Debug, Clone)]
pub struct Opening {
    pub kind: LegKind,
    /// wstap's end of the connection.
    pub local: SocketAddr,
    /// The client (client leg) or the upstream (upstream leg).
    pub remote: SocketAddr,
    pub comment: String,
}

/// Counters of what capture did and lost.
#[derive(Debug, Default)]
pub struct Stats {
    pub events_dropped: AtomicU64,
    pub bytes_dropped: AtomicU64,
    pub packets_written: AtomicU64,
    pub bytes_captured: AtomicU64,
    pub write_errors: AtomicU64,
}

/// Queue cost of an event besides its payload.
const EVENT_COST: usize = 64;

/// Where taps send events. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    limit: usize,
    stats: Stats,
    next_leg: AtomicU64,
    /// Set while data events are being dropped, to log once per episode.
    dropping: AtomicBool,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Event>,
    bytes: usize,
    closed: bool,
    writer_waiting: bool,
}

impl Recorder {
    pub fn new_leg(&self) -> LegId {
        self.shared.next_leg.fetch_add(1, Relaxed)
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Queues an event stamped now. Returns false if it was dropped.
    pub fn send(&self, leg: LegId, what: What) -> bool {
        self.push(None, leg, what)
    }

    /// Queues an event that happened at `time` (ns since the epoch).
    pub fn send_at(&self, time: u64, leg: LegId, what: What) -> bool {
        self.push(Some(time), leg, what)
    }

    fn push(&self, time: Option<u64>, leg: LegId, what: What) -> bool {
        let payload = match &what {
            What::Data { bytes, .. } => bytes.len(),
            _ => 0,
        };
        let cost = payload + EVENT_COST;
        let mut q = self.lock();
        // Control events are tiny and carry the stream's shape: they may exceed the
        // budget, up to twice it (a dead writer must not grow memory without bound).
        let limit = if payload > 0 { self.shared.limit } else { self.shared.limit * 2 };
        if q.closed || q.bytes + cost > limit {
            drop(q);
            self.dropped(payload);
            return false;
        }
        let time = time.unwrap_or_else(now_ns);
        q.events.push_back(Event { time, leg, what });
        q.bytes += cost;
        let wake = q.writer_waiting;
        drop(q);
        if wake {
            self.shared.wake.notify_one();
        }
        if self.shared.dropping.load(Relaxed) && self.shared.dropping.swap(false, Relaxed) {
            let s = &self.shared.stats;
            info!(bytes_dropped = s.bytes_dropped.load(Relaxed), "capture queue has room again");
        }
        true
    }

    fn dropped(&self, bytes: usize) {
        let s = &self.shared.stats;
        s.events_dropped.fetch_add(1, Relaxed);
        s.bytes_dropped.fetch_add(bytes as u64, Relaxed);
        if !self.shared.dropping.swap(true, Relaxed) {
            warn!(limit = self.shared.limit, "capture queue full: dropping captured data (traffic is unaffected)");
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.shared.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The running capture: the recorder taps send to and the writer thread behind it.
pub struct Capture {
    recorder: Recorder,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Capture {
    /// Starts the writer thread. The file is created when the first event arrives.
    pub fn start(settings: CaptureSettings) -> io::Result<Capture> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            limit: settings.queue_size,
            stats: Stats::default(),
            next_leg: AtomicU64::new(1),
            dropping: AtomicBool::new(false),
        });
        let recorder = Recorder { shared };
        let thread_recorder = recorder.clone();
        let thread = std::thread::Builder::new()
            .name("wstap-capture".into())
            .spawn(move || writer_thread(thread_recorder, settings))?;
        Ok(Capture { recorder, thread: Some(thread) })
    }

    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Stops taking events, writes what is queued, flushes, syncs and closes the file.
    pub fn finish(mut self) {
        self.close();
    }

    fn close(&mut self) {
        self.recorder.lock().closed = true;
        self.recorder.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                error!("capture writer thread panicked");
            }
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer_thread(recorder: Recorder, settings: CaptureSettings) {
    let shared = &recorder.shared;
    let mut sink = FileSink { settings, writer: None, failed: false, path: None };
    let mut batch = VecDeque::new();
    loop {
        let closed = {
            let mut q = recorder.lock();
            if q.events.is_empty() && !q.closed {
                q.writer_waiting = true;
                let flush_interval = sink.settings.flush_interval;
                q = shared.wake.wait_timeout(q, flush_interval).map(|(q, _)| q).unwrap_or_else(|p| p.into_inner().0);
                q.writer_waiting = false;
            }
            std::mem::swap(&mut q.events, &mut batch);
            q.bytes = 0;
            q.closed
        };
        for event in batch.drain(..) {
            sink.process(event, &shared.stats);
        }
        sink.flush(&shared.stats);
        if closed && recorder.lock().events.is_empty() {
            sink.finish(&shared.stats);
            return;
        }
    }
}

/// The capture file, opened on first use.
struct FileSink {
    settings: CaptureSettings,
    writer: Option<CaptureWriter<BufWriter<File>>>,
    failed: bool,
    path: Option<PathBuf>,
}

impl FileSink {
    fn process(&mut self, event: Event, stats: &Stats) {
        if self.writer.is_none() && !self.failed {
            match self.open() {
                Ok(w) => self.writer = Some(w),
                Err(e) => {
                    error!(dir = %self.settings.dir.display(), error = %e, "cannot create capture file; capture is off for this run");
                    self.failed = true;
                }
            }
        }
        let Some(w) = self.writer.as_mut() else {
            stats.events_dropped.fetch_add(1, Relaxed);
            return;
        };
        if let Err(e) = w.process(event, stats) {
            stats.write_errors.fetch_add(1, Relaxed);
            error!(error = %e, "capture write failed; capture is off for this run");
            self.writer = None;
            self.failed = true;
        }
    }

    fn open(&mut self) -> io::Result<CaptureWriter<BufWriter<File>>> {
        let s = &self.settings;
        std::fs::create_dir_all(&s.dir)?;
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let stamp: String = stamp.chars().filter(char::is_ascii_digit).collect();
        let (file, path) = (1..)
            .map(|n| {
                let suffix = if n == 1 { String::new() } else { format!("-{n}") };
                s.dir.join(format!("{}_{stamp}{suffix}.pcapng", s.prefix))
            })
            .find_map(|path| match File::options().write(true).create_new(true).open(&path) {
                Ok(f) => Some(Ok((f, path))),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => None,
                Err(e) => Some(Err(e)),
            })
            .expect("an unused name exists")?;
        info!(path = %path.display(), "capture file opened");
        self.path = Some(path);
        let synth = Synthesis::from_settings(s, random_seed());
        CaptureWriter::new(BufWriter::with_capacity(256 * 1024, file), &SectionInfo::current(), s.legs, synth)
    }

    fn flush(&mut self, stats: &Stats) {
        if let Some(w) = self.writer.as_mut() {
            if let Err(e) = w.get_mut().flush() {
                stats.write_errors.fetch_add(1, Relaxed);
                error!(error = %e, "capture flush failed; capture is off for this run");
                self.writer = None;
                self.failed = true;
            }
        }
    }

    fn finish(&mut self, stats: &Stats) {
        self.flush(stats);
        if let Some(w) = self.writer.take() {
            if let Ok(file) = w.into_inner().into_inner() {
                if let Err(e) = file.sync_all() {
                    error!(error = %e, "capture fsync failed");
                }
            }
            if let Some(p) = &self.path {
                info!(path = %p.display(), "capture file closed");
            }
        }
    }
}

fn random_seed() -> u64 {
    let t = now_ns();
    let here = &t as *const u64 as u64;
    t ^ here.rotate_left(32) ^ u64::from(std::process::id()).rotate_left(16)
}

/// How packets are synthesized.
#[derive(Debug, Clone)]
pub struct Synthesis {
    pub mss_ipv4: u16,
    pub mss_ipv6: u16,
    /// A pure ACK from the receiver after each chunk of data.
    pub acks: bool,
    /// Write the server side of each leg with this port instead of the real one.
    pub display_port: Option<u16>,
    /// Seed of the ISN generator (xorshift; ISNs need to look random, not be secret).
    pub isn_seed: u64,
}

impl Synthesis {
    pub fn from_settings(s: &CaptureSettings, isn_seed: u64) -> Synthesis {
        Synthesis { mss_ipv4: s.mss_ipv4, mss_ipv6: s.mss_ipv6, acks: s.acks, display_port: s.display_port, isn_seed }
    }
}

/// A leg being written.
struct LegState {
    flow: Flow,
    /// Which packet end wstap is (the other is `remote`).
    local: End,
    interface: u32,
    /// Comment for the leg's next packet.
    note: Option<String>,
    name: &'static str,
    /// Bytes not captured, per end (A, B).
    lost: [u64; 2],
    /// The leg is finished (both FINs, or a reset): its last packet waits for the Close,
    /// which follows within microseconds, to carry the close comment.
    last: Option<Pending>,
}

impl LegState {
    fn end_of(&self, dir: Dir) -> End {
        match dir {
            Dir::In => self.local.peer(),
            Dir::Out => self.local,
        }
    }

    /// Brings `from`'s stream up to `offset`: bytes between were lost, which the next
    /// packet's sequence number (and comment) will show.
    fn catch_up(&mut self, from: End, offset: u64) {
        let sent = self.flow.sent(from);
        if offset > sent {
            let lost = offset - sent;
            self.flow.skip(from, lost);
            self.lost[from as usize] += lost;
            add_note(
                &mut self.note,
                format!("capture gap: {lost} bytes of this stream were not captured (capture queue full)"),
            );
        }
    }
}

/// A packet held back until the next event, so that the leg's Close can put its comment
/// on it (every leg's last packet then carries how it ended).
struct Pending {
    leg: LegId,
    time: u64,
    from: End,
    kind: Final,
}

#[derive(Debug, Clone, Copy)]
enum Final {
    Ack,
    Rst,
}

/// Turns events into pcapng packets. Pure apart from writing to `W`.
pub struct CaptureWriter<W: Write> {
    out: PcapngWriter<W>,
    interfaces: [Option<u32>; 2],
    legs: HashMap<LegId, LegState>,
    synth: Synthesis,
    isn_state: u64,
    last_time: u64,
    pending: Option<Pending>,
}

impl<W: Write> CaptureWriter<W> {
    pub fn new(w: W, info: &SectionInfo, legs: Legs, synth: Synthesis) -> io::Result<Self> {
        let mut out = PcapngWriter::new(w, info).map_err(io::Error::other)?;
        let mut interfaces = [None, None];
        if legs.client {
            interfaces[0] = Some(out.add_interface("client", "client <-> wstap listener").map_err(io::Error::other)?);
        }
        if legs.upstream {
            interfaces[1] = Some(out.add_interface("upstream", "wstap <-> upstream").map_err(io::Error::other)?);
        }
        let isn_state = synth.isn_seed | 1;
        Ok(CaptureWriter { out, interfaces, legs: HashMap::new(), synth, isn_state, last_time: 0, pending: None })
    }

    pub fn get_mut(&mut self) -> &mut W {
        self.out.get_mut()
    }

    pub fn into_inner(self) -> W {
        self.out.into_inner()
    }

    fn next_isn(&mut self) -> u32 {
        let x = &mut self.isn_state;
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        (*x >> 16) as u32
    }

    /// Writes the packets one event stands for.
    pub fn process(&mut self, ev: Event, stats: &Stats) -> io::Result<()> {
        // Timestamps stay in file order even when two legs' events race by a few µs.
        let time = ev.time.max(self.last_time);
        self.last_time = time;
        let closing_this_leg =
            matches!(ev.what, What::Close { .. }) && self.pending.as_ref().is_some_and(|p| p.leg == ev.leg);
        if !closing_this_leg {
            self.write_pending(stats)?;
        }
        match ev.what {
            What::Open(o) => self.open(ev.leg, time, *o, stats),
            What::Data { dir, offset, bytes } => {
                let Some(leg) = self.legs.get_mut(&ev.leg) else { return Ok(()) };
                let from = leg.end_of(dir);
                leg.catch_up(from, offset);
                let sent = leg.flow.sent(from);
                let payload = &bytes[((sent - offset.min(sent)) as usize).min(bytes.len())..];
                if payload.is_empty() {
                    return Ok(());
                }
                stats.bytes_captured.fetch_add(payload.len() as u64, Relaxed);
                self.emit(ev.leg, time, |f, e| f.data(from, payload, e), stats)?;
                if self.synth.acks {
                    self.pending = Some(Pending { leg: ev.leg, time, from: from.peer(), kind: Final::Ack });
                }
                Ok(())
            }
            What::Fin { dir, offset } => {
                let Some(leg) = self.legs.get_mut(&ev.leg) else { return Ok(()) };
                let from = leg.end_of(dir);
                leg.catch_up(from, offset);
                if leg.flow.fin_sent(from) {
                    return Ok(());
                }
                self.emit(ev.leg, time, |f, e| f.fin(from, e), stats)?;
                let ack = Pending { leg: ev.leg, time, from: from.peer(), kind: Final::Ack };
                match self.legs.get_mut(&ev.leg) {
                    Some(leg) if leg.flow.fin_sent(from.peer()) => leg.last = Some(ack),
                    _ => self.pending = Some(ack),
                }
                Ok(())
            }
            What::Reset { .. } => {
                let Some(leg) = self.legs.get_mut(&ev.leg) else { return Ok(()) };
                let remote = leg.local.peer();
                leg.last.get_or_insert(Pending { leg: ev.leg, time, from: remote, kind: Final::Rst });
                Ok(())
            }
            What::Note(text) => {
                if let Some(leg) = self.legs.get_mut(&ev.leg) {
                    add_note(&mut leg.note, text);
                }
                Ok(())
            }
            What::Close { reason, offsets } => self.close(ev.leg, time, &reason, offsets, stats),
        }
    }

    fn open(&mut self, id: LegId, time: u64, o: Opening, stats: &Stats) -> io::Result<()> {
        let kind_idx = match o.kind {
            LegKind::Client => 0,
            LegKind::Upstream => 1,
        };
        let Some(interface) = self.interfaces[kind_idx] else { return Ok(()) };
        // The opener is end A: the client on the client leg, wstap on the upstream leg.
        // The server side (B) may be shown with the display port.
        let (mut a, mut b, local) = match o.kind {
            LegKind::Client => (o.remote, o.local, End::B),
            LegKind::Upstream => (o.local, o.remote, End::A),
        };
        if let Some(port) = self.synth.display_port {
            b.set_port(port);
        }
        if a == b {
            a.set_port(a.port().wrapping_add(1));
        }
        let mss = if b.is_ipv4() { self.synth.mss_ipv4 } else { self.synth.mss_ipv6 };
        let isn = [self.next_isn(), self.next_isn()];
        let flow = Flow::new(a, b, isn, mss);
        self.legs.insert(
            id,
            LegState { flow, local, interface, note: Some(o.comment), name: o.kind.name(), lost: [0; 2], last: None },
        );
        self.emit(id, time, |f, e| f.handshake(e), stats)
    }

    fn close(&mut self, id: LegId, time: u64, reason: &str, offsets: [u64; 2], stats: &Stats) -> io::Result<()> {
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        let (local, remote) = (leg.local, leg.local.peer());
        leg.catch_up(remote, offsets[0]);
        leg.catch_up(local, offsets[1]);
        let count = |end: End| match leg.lost[end as usize] {
            0 => format!("{} bytes", leg.flow.sent(end)),
            lost => format!("{} bytes ({lost} not captured)", leg.flow.sent(end)),
        };
        let comment = format!(
            "{} leg closed: {reason}; {} from {}, {} from wstap",
            leg.name,
            count(remote),
            leg.name,
            count(local)
        );
        add_note(&mut leg.note, comment);
        if let Some(mut last) = leg.last.take() {
            last.time = time;
            self.pending = Some(last);
            self.write_pending(stats)?;
        } else if self.pending.as_ref().is_some_and(|p| p.leg == id) {
            self.write_pending(stats)?;
        } else if !leg.flow.fin_sent(local) {
            // The socket was closed without a shutdown first: the kernel sends a FIN.
            self.emit(id, time, |f, e| f.fin(local, e), stats)?;
        } else {
            self.emit(id, time, |f, e| f.ack(local, e), stats)?;
        }
        self.legs.remove(&id);
        Ok(())
    }

    fn write_pending(&mut self, stats: &Stats) -> io::Result<()> {
        let Some(p) = self.pending.take() else { return Ok(()) };
        match p.kind {
            Final::Ack => self.emit(p.leg, p.time, |f, e| f.ack(p.from, e), stats),
            Final::Rst => self.emit(p.leg, p.time, |f, e| f.rst(p.from, e), stats),
        }
    }

    /// Runs `make` on the leg's flow and writes every packet it produces; the leg's note,
    /// if any, goes on the first one.
    fn emit(
        &mut self,
        id: LegId,
        time: u64,
        make: impl FnOnce(&mut Flow, &mut dyn FnMut(End, &[u8])),
        stats: &Stats,
    ) -> io::Result<()> {
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        let out = &mut self.out;
        let (interface, local) = (leg.interface, leg.local);
        let mut note = leg.note.take();
        let mut result = Ok(());
        let ts = Duration::from_nanos(time);
        make(&mut leg.flow, &mut |from, bytes| {
            if result.is_err() {
                return;
            }
            let direction = if from == local { Direction::Outbound } else { Direction::Inbound };
            result = out.packet(interface, ts, direction, bytes, note.take().as_deref()).map_err(io::Error::other);
            stats.packets_written.fetch_add(1, Relaxed);
        });
        result
    }
}

fn add_note(note: &mut Option<String>, text: String) {
    match note {
        Some(n) => {
            n.push_str("; ");
            n.push_str(&text);
        }
        None => *note = Some(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{SlicedPacket, TransportSlice};
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
    use pcap_file::pcapng::{Block, PcapNgReader};

    fn detached(limit: usize) -> Recorder {
        Recorder {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                wake: Condvar::new(),
                limit,
                stats: Stats::default(),
                next_leg: AtomicU64::new(1),
                dropping: AtomicBool::new(false),
            }),
        }
    }

    fn data(dir: Dir, offset: u64, bytes: &[u8]) -> What {
        What::Data { dir, offset, bytes: Bytes::copy_from_slice(bytes) }
    }

    #[test]
    fn a_full_queue_drops_data_but_keeps_control_events() {
        let rec = detached(1000);
        assert!(rec.send(1, data(Dir::In, 0, &[0; 800])));
        assert!(!rec.send(1, data(Dir::In, 800, &[0; 800])), "over the budget");
        assert!(rec.send(1, What::Fin { dir: Dir::In, offset: 1600 }), "control events still fit");
        let s = rec.stats();
        assert_eq!((s.events_dropped.load(Relaxed), s.bytes_dropped.load(Relaxed)), (1, 800));
        let q = rec.lock();
        assert_eq!(q.events.len(), 2);
        assert!(q.events[0].time <= q.events[1].time, "stamped in queue order");
    }

    /// (seq, payload length, comment) of each packet in a pcapng written by `events`.
    fn written(events: Vec<What>) -> Vec<(u32, usize, Option<String>)> {
        let info = SectionInfo { application: "t".into(), os: "t".into(), hostname: "t".into() };
        let synth = Synthesis { mss_ipv4: 1460, mss_ipv6: 1440, acks: false, display_port: None, isn_seed: 7 };
        let mut w = CaptureWriter::new(Vec::new(), &info, Legs { client: true, upstream: true }, synth).unwrap();
        let stats = Stats::default();
        for (i, what) in events.into_iter().enumerate() {
            w.process(Event { time: 1_000 + i as u64, leg: 1, what }, &stats).unwrap();
        }
        let bytes = w.into_inner();
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut out = Vec::new();
        while let Some(b) = r.next_block() {
            if let Block::EnhancedPacket(p) = b.unwrap() {
                let sliced = SlicedPacket::from_ip(&p.data).unwrap();
                let Some(TransportSlice::Tcp(tcp)) = sliced.transport else { panic!() };
                let comment = p.options.iter().find_map(|o| match o {
                    EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                    _ => None,
                });
                out.push((tcp.sequence_number(), tcp.payload().len(), comment));
            }
        }
        out
    }

    #[test]
    fn lost_bytes_show_as_a_sequence_jump_with_a_comment() {
        let opening = Opening {
            kind: LegKind::Client,
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: "127.0.0.1:40000".parse().unwrap(),
            comment: "first".into(),
        };
        let packets = written(vec![
            What::Open(Box::new(opening)),
            data(Dir::In, 0, b"abc"),
            data(Dir::In, 503, b"def"),              // 500 bytes were dropped in between
            What::Fin { dir: Dir::Out, offset: 10 }, // and all 10 bytes wstap sent
            What::Close { reason: "done".into(), offsets: [506, 10] },
        ]);
        assert_eq!(packets[0].2.as_deref(), Some("first"), "the session comment is on the SYN");
        let (seq_abc, seq_def) = (packets[3].0, packets[4].0);
        assert_eq!(seq_def.wrapping_sub(seq_abc), 503);
        let gap = packets[4].2.as_deref().unwrap();
        assert!(gap.contains("500 bytes") && gap.contains("capture queue full"), "{gap}");
        let last = packets.last().unwrap().2.as_deref().unwrap();
        assert_eq!(
            last,
            "client leg closed: done; 506 bytes (500 not captured) from client, 10 bytes (10 not captured) from wstap"
        );
        let fin = &packets[5];
        assert_eq!(fin.2.as_deref().map(|c| c.contains("10 bytes")), Some(true), "{fin:?}");
    }
}
