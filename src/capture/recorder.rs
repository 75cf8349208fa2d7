//! Carries connection events to the capture files, off the async workers. Taps push
//! [`Event`]s into a bounded queue (stamped under its lock, so queue order is time
//! order); a writer thread drains it into a [`FileSink`], which owns the files and the
//! packet writer. When the queue is full, data events are dropped and counted; the writer
//! then shows the gap as a sequence jump plus a packet comment. Proxied traffic never
//! waits for any of this.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{error, info, warn};

use crate::capture::event::{now_ns, Event, LegId, What};
use crate::capture::live::{Feed, Hub};
use crate::capture::sink::FileSink;
use crate::capture::stats::Stats;
use crate::capture::writer::Synthesis;
use crate::config::CaptureSettings;
use crate::sync::lock;

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
    /// When the writer thread last went round its loop (ns since the epoch).
    heartbeat: AtomicU64,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Event>,
    bytes: usize,
    closed: bool,
    /// Rotate the files now (SIGUSR1).
    rotate: bool,
    /// New settings (SIGHUP), for the next file.
    reconfigure: Option<CaptureSettings>,
    writer_waiting: Waiting,
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

    /// Queues an event at `time` (now if `None`). Data may use up the budget; control
    /// events are tiny and carry the stream's shape, so they may exceed it, up to twice
    /// it (a dead writer must not grow memory without bound). Returns false if dropped.
    pub(crate) fn push(&self, time: Option<u64>, leg: LegId, what: What) -> bool {
        let payload = match &what {
            What::Data { bytes, .. } => bytes.len(),
            _ => 0,
        };
        self.push_all(time, leg, [what].into_iter(), payload, payload == 0)
    }

    /// Queues `first` and then `second` at `time`, both or neither; `small` lets them use
    /// the control events' budget (a whole control frame after a gap).
    pub(crate) fn push_pair(&self, time: Option<u64>, leg: LegId, first: What, second: What, small: bool) -> bool {
        let payload = [&first, &second]
            .iter()
            .map(|w| match w {
                What::Data { bytes, .. } => bytes.len(),
                _ => 0,
            })
            .sum();
        self.push_all(time, leg, [first, second].into_iter(), payload, small)
    }

    fn push_all(
        &self,
        time: Option<u64>,
        leg: LegId,
        events: impl ExactSizeIterator<Item = What>,
        payload: usize,
        small: bool,
    ) -> bool {
        let cost = payload + EVENT_COST * events.len();
        let mut q = self.lock();
        let limit = if small { self.shared.limit * 2 } else { self.shared.limit };
        if q.closed || q.bytes + cost > limit {
            drop(q);
            self.dropped(payload);
            return false;
        }
        let time = time.unwrap_or_else(now_ns);
        q.events.extend(events.map(|what| Event { time, leg, what }));
        q.bytes += cost;
        let wake = match q.writer_waiting {
            Waiting::Asleep => true,
            Waiting::Napping => q.bytes >= WAKE_BYTES,
            Waiting::No => false,
        };
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
        lock(&self.shared.queue)
    }
}

/// When the writer thread last went round its loop.
#[derive(Clone)]
pub struct Heartbeat(Arc<Shared>);

impl Heartbeat {
    /// Time since then. The writer goes round at least every flush interval, so a long
    /// silence means it is stuck (a hung disk, a bug).
    pub fn idle(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(now_ns().saturating_sub(self.0.heartbeat.load(Relaxed)))
    }
}

/// The running capture: the recorder taps send to and the writer thread behind it.
pub struct Capture {
    recorder: Recorder,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Where live-stream subscribers join.
    hub: Arc<Hub>,
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
            heartbeat: AtomicU64::new(now_ns()),
        });
        let recorder = Recorder { shared };
        let thread_recorder = recorder.clone();
        let waker = recorder.clone();
        let hub = Arc::new(Hub::new(Box::new(move || waker.shared.wake.notify_one())));
        let thread_hub = hub.clone();
        let thread = std::thread::Builder::new()
            .name("wstap-capture".into())
            .spawn(move || writer_thread(thread_recorder, settings, thread_hub))?;
        Ok(Capture { recorder, thread: Some(thread), hub })
    }

    /// Where live-stream subscribers join (`[live]`).
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Where taps send their events.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// The writer thread's heartbeat, for the watchdog.
    pub fn heartbeat(&self) -> Heartbeat {
        Heartbeat(self.recorder.shared.clone())
    }

    /// New capture settings (a reload): they apply from the next file, which starts as
    /// soon as every session is between frames.
    pub fn reconfigure(&self, settings: CaptureSettings) {
        self.recorder.lock().reconfigure = Some(settings);
        self.recorder.shared.wake.notify_one();
    }

    /// Rotates the capture files as soon as every session is between frames.
    pub fn rotate(&self) {
        self.recorder.lock().rotate = true;
        self.recorder.shared.wake.notify_one();
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

/// What the writer thread is doing when it is not writing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Waiting {
    /// Working: producers need not wake it.
    #[default]
    No,
    /// Between two batches of a busy queue: woken early only when `WAKE_BYTES` are queued.
    Napping,
    /// Nothing to do: the next event wakes it.
    Asleep,
}

/// After a batch, the writer naps this long before taking the next one, so that a busy
/// queue costs one wake-up per nap rather than one per event (each a context switch on
/// a machine whose cores also carry the traffic).
const NAP: Duration = Duration::from_millis(2);

/// Queued bytes that end a nap early.
const WAKE_BYTES: usize = 1 << 20;

fn writer_thread(recorder: Recorder, settings: CaptureSettings, hub: Arc<Hub>) {
    let shared = &recorder.shared;
    let flush_interval = settings.flush_interval;
    let seed = random_seed();
    let live_seed = seed.rotate_left(29) ^ 0x11fe;
    let mut feed = settings.live.map(|format| Feed::new(Synthesis::new(&settings, live_seed), format, hub.clone()));
    let mut sink = FileSink::new(settings, crate::capture::host::section_info(), seed);
    let mut batch = VecDeque::new();
    let mut busy = false;
    loop {
        shared.heartbeat.store(now_ns(), Relaxed);
        let (closed, rotate, reconfigure) = {
            let mut q = recorder.lock();
            let asked = q.closed || q.rotate || q.reconfigure.is_some();
            let wait = if asked || q.bytes >= WAKE_BYTES {
                None
            } else if busy {
                Some((Waiting::Napping, NAP))
            } else if q.events.is_empty() {
                Some((Waiting::Asleep, flush_interval))
            } else {
                None
            };
            if let Some((how, long)) = wait {
                q.writer_waiting = how;
                q = shared.wake.wait_timeout(q, long).map(|(q, _)| q).unwrap_or_else(|p| p.into_inner().0);
                q.writer_waiting = Waiting::No;
            }
            busy = !q.events.is_empty();
            std::mem::swap(&mut q.events, &mut batch);
            q.bytes = 0;
            (q.closed, std::mem::take(&mut q.rotate), q.reconfigure.take())
        };
        for (i, event) in batch.drain(..).enumerate() {
            // Liveness is progress, not idleness: a long batch still beats.
            if i % 256 == 255 {
                shared.heartbeat.store(now_ns(), Relaxed);
            }
            if let Some(feed) = feed.as_mut() {
                feed.process(&event);
            }
            sink.process(event, &shared.stats);
        }
        // Asked for after the events already queued, so applied after them.
        if let Some(settings) = reconfigure {
            // A stream turned on by a reload shows the sessions that start from then on.
            feed = match (feed.take(), settings.live) {
                (_, None) => None,
                (Some(mut feed), Some(format)) => {
                    feed.reconfigure(Synthesis::new(&settings, live_seed), format);
                    Some(feed)
                }
                (None, Some(format)) => Some(Feed::new(Synthesis::new(&settings, live_seed), format, hub.clone())),
            };
            sink.reconfigure(settings, now_ns());
        }
        if let Some(feed) = feed.as_mut() {
            feed.tick(now_ns());
        }
        if rotate {
            sink.rotate_soon(now_ns());
        }
        sink.tick(now_ns(), &shared.stats);
        if closed && recorder.lock().events.is_empty() {
            sink.finish(&shared.stats);
            return;
        }
    }
}

fn random_seed() -> u64 {
    let t = now_ns();
    let here = &t as *const u64 as u64;
    t ^ here.rotate_left(32) ^ u64::from(std::process::id()).rotate_left(16)
}

/// For tests: a recorder with no writer thread, and ways to look into its queue.
#[cfg(test)]
impl Recorder {
    pub(crate) fn detached(limit: usize) -> Recorder {
        Recorder {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                wake: Condvar::new(),
                limit,
                stats: Stats::default(),
                next_leg: AtomicU64::new(1),
                dropping: AtomicBool::new(false),
                heartbeat: AtomicU64::new(0),
            }),
        }
    }

    /// Takes every queued event.
    pub(crate) fn take_events(&self) -> Vec<Event> {
        let mut q = self.lock();
        q.bytes = 0;
        q.events.drain(..).collect()
    }

    /// Makes the queue look full of data (control events still fit).
    pub(crate) fn fill(&self) {
        self.lock().bytes = self.shared.limit;
    }

    /// Makes it look empty again.
    pub(crate) fn unfill(&self) {
        self.lock().bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use wstap_wire::dir::Dir;

    fn data(dir: Dir, offset: u64, bytes: &[u8]) -> What {
        What::Data { dir, offset, bytes: Bytes::copy_from_slice(bytes) }
    }

    #[test]
    fn a_full_queue_drops_data_but_keeps_control_events() {
        let rec = Recorder::detached(1000);
        assert!(rec.send(1, data(Dir::Up, 0, &[0; 800])));
        assert!(!rec.send(1, data(Dir::Up, 800, &[0; 800])), "over the budget");
        assert!(rec.send(1, What::Fin { dir: Dir::Up, offset: 1600 }), "control events still fit");
        let s = rec.stats();
        assert_eq!((s.events_dropped.load(Relaxed), s.bytes_dropped.load(Relaxed)), (1, 800));
        let q = rec.lock();
        assert_eq!(q.events.len(), 2);
        assert!(q.events[0].time <= q.events[1].time, "stamped in queue order");
    }
}
