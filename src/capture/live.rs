//! Where the live stream (`[live]`) meets its subscribers: the [`Hub`] they join, and each
//! [`Subscriber`]'s bounded queue, which the capture writer thread fills (its live writer
//! is `write::live`) and never waits on, and the subscriber's task (`service::live`)
//! writes to its socket. Past its bound a subscriber is cut off, and its task says so.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::sync::lock;

/// One subscriber's queue, shared by the writer thread (which fills it) and the task
/// writing it to the subscriber's socket.
pub struct Subscriber {
    queue: Mutex<Queue>,
    wake: Notify,
    /// Bytes it may have waiting.
    limit: usize,
}

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Bytes>,
    /// Bytes queued or taken and not yet written.
    bytes: usize,
    /// It fell more than `limit` behind: cut off.
    overflowed: bool,
    /// The stream changed under it (its format, by a reload): let go.
    closed: bool,
    /// Its connection is gone: the writer forgets it.
    gone: bool,
}

/// What a subscriber's task gets next.
pub enum Next {
    /// Bytes to write, in order ([`Subscriber::written`] each once written).
    Bytes(Vec<Bytes>),
    /// It fell too far behind.
    Overflowed,
    /// The stream changed under it: it has to connect again.
    Closed,
}

impl Subscriber {
    /// A subscriber that may have `limit` bytes waiting.
    pub fn new(limit: usize) -> Arc<Subscriber> {
        Arc::new(Subscriber { queue: Mutex::default(), wake: Notify::new(), limit })
    }

    /// Queues `bytes`; past the limit, everything waiting is dropped and the subscriber
    /// is cut off (a chunk larger than the limit is taken when nothing waits: its first
    /// section may be). Returns whether it is still wanted.
    pub(crate) fn push(&self, bytes: Bytes) -> bool {
        let mut q = lock(&self.queue);
        if q.gone || q.overflowed || q.closed {
            return false;
        }
        if q.bytes > 0 && q.bytes + bytes.len() > self.limit {
            (q.chunks, q.bytes, q.overflowed) = (VecDeque::new(), 0, true);
        } else {
            q.bytes += bytes.len();
            q.chunks.push_back(bytes);
        }
        drop(q);
        self.wake.notify_one();
        true
    }

    /// Waits for what to write next.
    pub async fn next(&self) -> Next {
        loop {
            let notified = self.wake.notified();
            {
                let mut q = lock(&self.queue);
                if q.overflowed {
                    return Next::Overflowed;
                }
                if !q.chunks.is_empty() {
                    return Next::Bytes(std::mem::take(&mut q.chunks).into());
                }
                if q.closed {
                    return Next::Closed;
                }
            }
            notified.await;
        }
    }

    /// Resolves once the subscriber is cut off (for a task stuck writing to it).
    pub async fn cut_off(&self) {
        loop {
            let notified = self.wake.notified();
            if self.is_cut_off() {
                return;
            }
            notified.await;
        }
    }

    /// Whether it fell too far behind.
    pub fn is_cut_off(&self) -> bool {
        lock(&self.queue).overflowed
    }

    /// `n` bytes it was given went to its socket.
    pub fn written(&self, n: usize) {
        let mut q = lock(&self.queue);
        q.bytes = q.bytes.saturating_sub(n);
    }

    /// Lets it go: the stream changed under it.
    pub(crate) fn close(&self) {
        lock(&self.queue).closed = true;
        self.wake.notify_one();
    }

    pub(crate) fn is_gone(&self) -> bool {
        lock(&self.queue).gone
    }

    /// Its connection is gone.
    pub fn leave(&self) {
        let mut q = lock(&self.queue);
        (q.chunks, q.bytes, q.gone) = (VecDeque::new(), 0, true);
    }
}

/// Where subscribers ask to join, and how many there are. Shared by the writer thread and
/// the live listener; outlives reloads.
pub struct Hub {
    joining: Mutex<Vec<Arc<Subscriber>>>,
    /// Subscribers joined or joining, not yet gone.
    count: AtomicUsize,
    /// Wakes the writer thread, so a subscriber joins without waiting for its next round.
    wake: Box<dyn Fn() + Send + Sync>,
}

impl Hub {
    pub(crate) fn new(wake: Box<dyn Fn() + Send + Sync>) -> Hub {
        Hub { joining: Mutex::default(), count: AtomicUsize::new(0), wake }
    }

    /// `sub` joins at the next moment every session is between frames.
    pub fn join(&self, sub: Arc<Subscriber>) {
        self.count.fetch_add(1, Relaxed);
        let mut joining = lock(&self.joining);
        // (Those that left before the writer came round are forgotten here.)
        joining.retain(|s| !s.is_gone());
        joining.push(sub);
        drop(joining);
        (self.wake)();
    }

    /// A subscriber has gone (after [`Subscriber::leave`]).
    pub fn left(&self) {
        self.count.fetch_sub(1, Relaxed);
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.count.load(Relaxed)
    }

    /// Whether someone waits to join.
    pub(crate) fn has_joiners(&self) -> bool {
        !lock(&self.joining).is_empty()
    }

    /// Those waiting to join, taken out (without those already gone).
    pub(crate) fn take_joiners(&self) -> Vec<Arc<Subscriber>> {
        let mut joining = std::mem::take(&mut *lock(&self.joining));
        joining.retain(|s| !s.is_gone());
        joining
    }
}
