//! The bounded queue between the proxy's threads and the capture writer thread. Taps
//! push [`Event`]s through a [`Recorder`] (stamped under the queue's lock, so queue order
//! is time order); the writer thread takes them a batch at a time, with the requests
//! (rotate, reconfigure, close) asked of it meanwhile. When the queue is full, data
//! events are dropped and counted; the writer then shows the gap as a sequence jump and
//! a packet comment. Proxied traffic never waits for any of this.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{info, warn};
use wstap_wire::Timestamp;

use crate::capture::event::{now, Event, What};

use crate::capture::ids::LegId;
use crate::capture::stats::Stats;
use crate::config::CaptureSettings;
use crate::sync::lock;

/// Queue cost of an event besides its payload.
const EVENT_COST: usize = 64;

/// After a batch, the writer naps this long before taking the next one, so that a busy
/// queue costs one wake-up per nap rather than one per event (each a context switch on
/// a machine whose cores also carry the traffic).
const NAP: Duration = Duration::from_millis(2);

/// Queued bytes that end a nap early.
const WAKE_BYTES: usize = 1 << 20;

/// Where taps send events: the producers' end of the queue. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Bytes of data events the queue holds at most.
    limit: usize,
    stats: Stats,
    next_leg: AtomicU64,
    /// Set while data events are being dropped, to log once per episode.
    dropping: AtomicBool,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Event>,
    /// What the events queued and the batch the writer holds cost: bounded by the limit,
    /// so that captured data waiting in memory, in the queue or in the writer's hands,
    /// never exceeds `capture.queue_size`.
    bytes: usize,
    /// What the batch the writer holds cost (freed when it comes back for the next).
    taken: usize,
    requests: Requests,
    writer: Waiting,
}

/// What the writer thread was asked meanwhile, besides the events.
#[derive(Default)]
pub(crate) struct Requests {
    /// No more events will come: write what is queued and finish.
    pub(crate) close: bool,
    /// Rotate the files now (SIGUSR1).
    pub(crate) rotate: bool,
    /// New settings (SIGHUP), for the next file.
    pub(crate) reconfigure: Option<CaptureSettings>,
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

/// Which bound a push is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// Data: within the queue's limit.
    Data,
    /// Control events, and a whole control frame after a gap: tiny, and they carry the
    /// stream's shape, so they may exceed the limit, up to twice it (a dead writer must
    /// not grow memory without bound).
    Control,
}

impl Recorder {
    /// A queue that holds up to `limit` bytes of data.
    pub fn new(limit: usize) -> Recorder {
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

    /// A new leg's id.
    pub fn new_leg(&self) -> LegId {
        LegId(self.shared.next_leg.fetch_add(1, Relaxed))
    }

    /// What capture did and lost.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Queues an event stamped now. Returns false if it was dropped.
    pub fn send(&self, leg: LegId, what: What) -> bool {
        self.push(None, leg, what)
    }

    /// Queues an event that happened at `time`.
    pub fn send_at(&self, time: Timestamp, leg: LegId, what: What) -> bool {
        self.push(Some(time), leg, what)
    }

    /// Queues an event at `time` (now if `None`): data within the budget, anything else
    /// as a control event. Returns false if it was dropped.
    pub(crate) fn push(&self, time: Option<Timestamp>, leg: LegId, what: What) -> bool {
        let (payload, bound) = match &what {
            What::Data { bytes, .. } => (bytes.len(), Bound::Data),
            _ => (0, Bound::Control),
        };
        self.push_all(time, leg, [what].into_iter(), payload, bound)
    }

    /// Queues the two events of `pair` in order at `time`, both or neither, within `bound`.
    pub(crate) fn push_pair(&self, time: Option<Timestamp>, leg: LegId, pair: [What; 2], bound: Bound) -> bool {
        let payload = pair
            .iter()
            .map(|w| match w {
                What::Data { bytes, .. } => bytes.len(),
                _ => 0,
            })
            .sum();
        self.push_all(time, leg, pair.into_iter(), payload, bound)
    }

    fn push_all(
        &self,
        time: Option<Timestamp>,
        leg: LegId,
        events: impl ExactSizeIterator<Item = What>,
        payload: usize,
        bound: Bound,
    ) -> bool {
        let cost = payload + EVENT_COST * events.len();
        let mut q = self.lock();
        let limit = match bound {
            Bound::Data => self.shared.limit,
            Bound::Control => self.shared.limit * 2,
        };
        if q.requests.close || q.bytes + cost > limit {
            drop(q);
            self.dropped(payload);
            return false;
        }
        let time = time.unwrap_or_else(now);
        q.events.extend(events.map(|what| Event { time, leg, what }));
        q.bytes += cost;
        let wake = match q.writer {
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

    /// Asks the writer thread for something (and wakes it).
    pub(crate) fn request(&self, ask: impl FnOnce(&mut Requests)) {
        ask(&mut self.lock().requests);
        self.wake();
    }

    /// Wakes the writer thread (a live subscriber is waiting to join, say).
    pub(crate) fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// The writer thread's side: waits for events (a nap after a busy batch, up to
    /// `idle` when there were none), moves them into `batch`, and returns what was
    /// asked meanwhile.
    pub(crate) fn take(&self, busy: bool, idle: Duration, batch: &mut VecDeque<Event>) -> Requests {
        let mut q = self.lock();
        // The batch handed out last time is written: its room is free again.
        q.bytes -= std::mem::take(&mut q.taken);
        let asked = q.requests.close || q.requests.rotate || q.requests.reconfigure.is_some();
        let wait = if asked || q.bytes >= WAKE_BYTES {
            None
        } else if busy {
            Some((Waiting::Napping, NAP))
        } else if q.events.is_empty() {
            Some((Waiting::Asleep, idle))
        } else {
            None
        };
        if let Some((how, long)) = wait {
            q.writer = how;
            q = self.shared.wake.wait_timeout(q, long).map(|(q, _)| q).unwrap_or_else(|p| p.into_inner().0);
            q.writer = Waiting::No;
        }
        std::mem::swap(&mut q.events, batch);
        q.taken = q.bytes;
        let Requests { close, rotate, reconfigure } = &mut q.requests;
        Requests { close: *close, rotate: std::mem::take(rotate), reconfigure: reconfigure.take() }
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().events.is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        lock(&self.shared.queue)
    }
}

impl Recorder {
    /// Takes every queued event: for a [`CaptureWriter`](crate::capture::CaptureWriter)
    /// driven by hand (tests, fuzzing) rather than by the capture's thread.
    pub fn take_events(&self) -> Vec<Event> {
        let mut q = self.lock();
        (q.bytes, q.taken) = (0, 0);
        q.events.drain(..).collect()
    }
}

/// For tests: ways to look into the queue.
#[cfg(test)]
impl Recorder {
    /// Makes the queue look full of data (control events still fit).
    pub(crate) fn fill(&self) {
        self.lock().bytes = self.shared.limit;
    }

    /// Makes it look empty again.
    pub(crate) fn unfill(&self) {
        let mut q = self.lock();
        (q.bytes, q.taken) = (0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use wstap_wire::Dir;

    fn data(dir: Dir, offset: u64, bytes: &[u8]) -> What {
        What::Data { dir, offset, bytes: Bytes::copy_from_slice(bytes) }
    }

    /// The batch the writer holds counts until it comes back for the next: captured data
    /// in memory is bounded by the limit, not twice it.
    #[test]
    fn the_batch_being_written_still_counts_against_the_limit() {
        let rec = Recorder::new(1000);
        let leg = rec.new_leg();
        assert!(rec.send(leg, data(Dir::Up, 0, &[0; 800])));
        let mut batch = VecDeque::new();
        rec.take(false, Duration::ZERO, &mut batch);
        assert_eq!(batch.len(), 1);
        assert!(!rec.send(leg, data(Dir::Up, 800, &[0; 800])), "the writer still holds 800 bytes");
        batch.clear();
        rec.take(false, Duration::ZERO, &mut batch);
        assert!(rec.send(leg, data(Dir::Up, 1600, &[0; 800])), "written: room again");
    }

    #[test]
    fn a_full_queue_drops_data_but_keeps_control_events() {
        let rec = Recorder::new(1000);
        let leg = rec.new_leg();
        assert!(rec.send(leg, data(Dir::Up, 0, &[0; 800])));
        assert!(!rec.send(leg, data(Dir::Up, 800, &[0; 800])), "over the budget");
        assert!(rec.send(leg, What::Fin { dir: Dir::Up, offset: 1600 }), "control events still fit");
        let s = rec.stats();
        assert_eq!((s.events_dropped.load(Relaxed), s.bytes_dropped.load(Relaxed)), (1, 800));
        let events = rec.take_events();
        assert_eq!(events.len(), 2);
        assert!(events[0].time <= events[1].time, "stamped in queue order");
    }
}
