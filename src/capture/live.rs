//! Where the live stream (`[live]`) meets its subscribers: the [`Hub`] they join, and each
//! [`Subscriber`]'s bounded queue, which the capture writer thread fills (its live writer
//! is `write::live`) and never waits on, and the subscriber's task (`service::live`)
//! writes to its socket. Past its bound a subscriber is cut off, and its task says so; its
//! first section counts against the bound too (one that cannot fit is refused). A
//! subscriber holds a [`Slot`] among `live.max_clients`, given back when it is dropped,
//! however its task ends.

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
    /// Wakes every waiter (`notify_waiters`): its task may wait for bytes and for being
    /// cut off at once, and one wake-up must reach both.
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
    /// Its first section was given (or refused): what follows is the stream's.
    sectioned: bool,
    /// Its first section (this many bytes) was more than its bound: refused.
    refused: Option<usize>,
}

/// What a subscriber's task gets next.
pub enum Next {
    /// Bytes to write, in order ([`Subscriber::written`] each once written).
    Bytes(Vec<Bytes>),
    /// It fell too far behind.
    Overflowed,
    /// The stream changed under it: it has to connect again.
    Closed,
    /// Its first section, this many bytes, is more than it may have waiting.
    Refused(usize),
}

impl Subscriber {
    /// A subscriber that may have `limit` bytes waiting.
    pub fn new(limit: usize) -> Arc<Subscriber> {
        Arc::new(Subscriber { queue: Mutex::default(), wake: Notify::new(), limit })
    }

    /// Queues `bytes`; past the limit, everything waiting is dropped and the subscriber
    /// is cut off (a chunk larger than the limit is taken when nothing waits, except its
    /// first section: a first section larger than the limit refuses it). Returns whether
    /// it is still wanted.
    pub(crate) fn push(&self, bytes: Bytes) -> bool {
        let mut q = lock(&self.queue);
        if q.gone || q.overflowed || q.closed || q.refused.is_some() {
            return false;
        }
        if !std::mem::replace(&mut q.sectioned, true) && bytes.len() > self.limit {
            q.refused = Some(bytes.len());
        } else if q.bytes > 0 && q.bytes + bytes.len() > self.limit {
            (q.chunks, q.bytes, q.overflowed) = (VecDeque::new(), 0, true);
        } else {
            q.bytes += bytes.len();
            q.chunks.push_back(bytes);
        }
        let wanted = q.refused.is_none();
        drop(q);
        self.wake.notify_waiters();
        wanted
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
                if let Some(section) = q.refused {
                    return Next::Refused(section);
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
        self.wake.notify_waiters();
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
    /// Subscribers joined or joining, not yet gone: the [`Slot`]s held.
    count: AtomicUsize,
    /// Wakes the writer thread, so a subscriber joins without waiting for its next round.
    wake: Box<dyn Fn() + Send + Sync>,
}

impl Hub {
    pub(crate) fn new(wake: Box<dyn Fn() + Send + Sync>) -> Hub {
        Hub { joining: Mutex::default(), count: AtomicUsize::new(0), wake }
    }

    /// `sub` joins at the next moment every session is between frames, if fewer than
    /// `max` hold a slot; the slot is its until the [`Slot`] is dropped.
    pub fn try_join(self: &Arc<Self>, sub: Arc<Subscriber>, max: usize) -> Option<Slot> {
        self.count.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1)).ok()?;
        let mut joining = lock(&self.joining);
        // (Those that left before the writer came round are forgotten here.)
        joining.retain(|s| !s.is_gone());
        joining.push(sub.clone());
        drop(joining);
        (self.wake)();
        Some(Slot { hub: self.clone(), sub })
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

/// A subscriber's place among `live.max_clients`. Dropping it (its task ended, was
/// aborted, or its listener went with a reload) lets the subscriber go and gives the
/// place back: there is no other way to count one out, so none can leak.
pub struct Slot {
    hub: Arc<Hub>,
    sub: Arc<Subscriber>,
}

impl Slot {
    /// The subscriber holding it.
    pub fn subscriber(&self) -> &Arc<Subscriber> {
        &self.sub
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.sub.leave();
        self.hub.count.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Arc<Hub> {
        Arc::new(Hub::new(Box::new(|| {})))
    }

    #[test]
    fn a_slot_is_given_back_however_its_holder_ends() {
        let hub = hub();
        let a = hub.try_join(Subscriber::new(1 << 20), 2).unwrap();
        let b = hub.try_join(Subscriber::new(1 << 20), 2).unwrap();
        assert!(hub.try_join(Subscriber::new(1 << 20), 2).is_none(), "max reached");
        assert_eq!(hub.subscribers(), 2);
        // A task aborted while it held its slot drops it like any other end.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let held = tokio::spawn(async move {
                let _b = b;
                std::future::pending::<()>().await
            });
            tokio::task::yield_now().await;
            held.abort();
            assert!(held.await.unwrap_err().is_cancelled());
        });
        assert_eq!(hub.subscribers(), 1);
        let sub = a.subscriber().clone();
        drop(a);
        assert!(sub.is_gone() && !sub.push(Bytes::from_static(b"x")), "the writer forgets it");
        assert_eq!(hub.subscribers(), 0);
        assert!(hub.take_joiners().is_empty(), "gone before the writer came round: forgotten");
    }

    #[test]
    fn a_first_section_larger_than_the_bound_refuses_the_subscriber() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let sub = Subscriber::new(100);
        assert!(!sub.push(Bytes::from(vec![0u8; 101])), "not wanted");
        assert!(matches!(rt.block_on(sub.next()), Next::Refused(101)));
        assert!(!sub.push(Bytes::from_static(b"later")), "nothing follows");
        let sub = Subscriber::new(100);
        assert!(sub.push(Bytes::from(vec![0u8; 100])), "a section that fits");
        // Later, a chunk larger than the bound is still taken when nothing waits.
        sub.written(100);
        let _ = rt.block_on(sub.next());
        assert!(sub.push(Bytes::from(vec![0u8; 150])));
        assert!(matches!(rt.block_on(sub.next()), Next::Bytes(b) if b[0].len() == 150));
    }
}
