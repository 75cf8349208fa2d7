//! Where finished capture files are handed on: the file finisher puts each file here once
//! it has its final name, and whoever ships files (`[capture.upload]`,
//! `capture.on_finish`) takes them. A file still to be shipped is *held*: the ring
//! (`rotate.files`) does not delete it. Nothing here waits: the finisher never waits
//! for the shipping, and a shipper that falls behind by more than 4,096 files is told
//! to look in the directory instead.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::sync::lock;

/// Files handed over and not yet taken, at most; past it, the taker rescans.
const QUEUE: usize = 4096;

/// Finished files on their way out.
#[derive(Default)]
pub struct Outbox {
    inner: Mutex<Inner>,
    /// Woken when a file arrives.
    arrived: Notify,
}

#[derive(Default)]
struct Inner {
    finished: VecDeque<PathBuf>,
    /// Files were handed over past [`QUEUE`]: the taker must look in the directory.
    overflowed: bool,
    /// Whether arriving files are held (an upload is configured).
    holding: bool,
    held: HashSet<PathBuf>,
}

/// What [`Outbox::take`] gives.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Arrivals {
    /// The files, in the order they were finished.
    pub files: Vec<PathBuf>,
    /// More were finished than the outbox keeps: the directory must be looked at.
    pub rescan: bool,
}

impl Outbox {
    /// A file has its final name (the finisher calls this before it trims the ring).
    pub(crate) fn finished(&self, path: &Path) {
        {
            let mut inner = lock(&self.inner);
            if inner.holding {
                inner.held.insert(path.to_owned());
            }
            match inner.finished.len() < QUEUE {
                true => inner.finished.push_back(path.to_owned()),
                false => inner.overflowed = true,
            }
        }
        self.arrived.notify_one();
    }

    /// Whether the ring must leave `path` alone.
    pub(crate) fn is_held(&self, path: &Path) -> bool {
        lock(&self.inner).held.contains(path)
    }

    /// Whether files arriving from now on are held; turning it off lets every held
    /// file go.
    pub fn hold_arrivals(&self, on: bool) {
        let mut inner = lock(&self.inner);
        inner.holding = on;
        if !on {
            inner.held.clear();
        }
    }

    /// Holds a file found on disk (at start, or in a rescan).
    pub fn hold(&self, path: &Path) {
        lock(&self.inner).held.insert(path.to_owned());
    }

    /// Lets a file go: the ring may delete it.
    pub fn release(&self, path: &Path) {
        lock(&self.inner).held.remove(path);
    }

    /// The files held now.
    pub fn held(&self) -> Vec<PathBuf> {
        lock(&self.inner).held.iter().cloned().collect()
    }

    /// The files finished since the last call.
    pub fn take(&self) -> Arrivals {
        let mut inner = lock(&self.inner);
        Arrivals { files: inner.finished.drain(..).collect(), rescan: std::mem::take(&mut inner.overflowed) }
    }

    /// Waits until a file may have arrived since the last [`Outbox::take`].
    pub async fn arrival(&self) {
        self.arrived.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_come_out_in_order_and_an_overflow_asks_for_a_rescan() {
        let outbox = Outbox::default();
        outbox.hold_arrivals(true);
        for i in 0..QUEUE + 2 {
            outbox.finished(Path::new(&format!("/c/{i}.pcapng")));
        }
        let got = outbox.take();
        assert_eq!(got.files.len(), QUEUE);
        assert_eq!(got.files[0], Path::new("/c/0.pcapng"));
        assert!(got.rescan);
        assert!(outbox.is_held(Path::new("/c/4097.pcapng")), "held even when not queued");
        assert_eq!(outbox.take(), Arrivals::default());
        outbox.release(Path::new("/c/0.pcapng"));
        assert!(!outbox.is_held(Path::new("/c/0.pcapng")));
        outbox.hold_arrivals(false);
        assert!(!outbox.is_held(Path::new("/c/1.pcapng")));
    }
}
