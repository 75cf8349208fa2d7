//! The finished files waiting to be stored, oldest first, with their bytes counted
//! against `max_backlog` and each one's next try. No I/O here.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The longest wait between two tries of a file.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A file waiting to be stored.
#[derive(Debug, Clone)]
pub(super) struct Waiting {
    pub(super) path: PathBuf,
    pub(super) size: u64,
    /// When it was finished (its modification time).
    pub(super) finished: SystemTime,
    /// Tries that failed.
    pub(super) attempts: u32,
    next_try: Instant,
    /// Being uploaded now.
    busy: bool,
}

/// The files waiting, oldest first.
#[derive(Debug, Default)]
pub(super) struct Backlog {
    waiting: VecDeque<Waiting>,
    bytes: u64,
}

impl Backlog {
    /// Adds a file (once; a file already waiting is left as it is), in the order of
    /// when it was finished.
    pub(super) fn add(&mut self, path: PathBuf, size: u64, finished: SystemTime, now: Instant) {
        if self.waiting.iter().any(|w| w.path == path) {
            return;
        }
        let at = self.waiting.iter().rposition(|w| w.finished <= finished).map_or(0, |i| i + 1);
        self.bytes += size;
        self.waiting.insert(at, Waiting { path, size, finished, attempts: 0, next_try: now, busy: false });
    }

    /// Drops the oldest files not being uploaded until at most `max` bytes wait; returns
    /// them.
    pub(super) fn over(&mut self, max: u64) -> Vec<Waiting> {
        let mut dropped = Vec::new();
        while self.bytes > max {
            let Some(i) = self.waiting.iter().position(|w| !w.busy) else { break };
            let w = self.waiting.remove(i).expect("a position found");
            self.bytes -= w.size;
            dropped.push(w);
        }
        dropped
    }

    /// The oldest file due for a try, marked busy.
    pub(super) fn next_due(&mut self, now: Instant) -> Option<Waiting> {
        let w = self.waiting.iter_mut().find(|w| !w.busy && w.next_try <= now)?;
        w.busy = true;
        Some(w.clone())
    }

    /// Takes a file out (stored, or gone).
    pub(super) fn remove(&mut self, path: &Path) -> Option<Waiting> {
        let i = self.waiting.iter().position(|w| w.path == path)?;
        let w = self.waiting.remove(i)?;
        self.bytes -= w.size;
        Some(w)
    }

    /// A try failed: the file waits longer each time, up to [`MAX_BACKOFF`]. Returns
    /// when it is tried again.
    pub(super) fn failed(&mut self, path: &Path, now: Instant) -> Instant {
        let Some(w) = self.waiting.iter_mut().find(|w| w.path == path) else { return now };
        w.busy = false;
        w.attempts += 1;
        w.next_try = now + backoff(w.attempts);
        w.next_try
    }

    /// The store failed as a whole (unreachable, refusing the credentials): no file is
    /// tried before `until`, so that one file probes it, not every file.
    pub(super) fn hold_off(&mut self, until: Instant) {
        self.waiting.iter_mut().filter(|w| !w.busy).for_each(|w| w.next_try = w.next_try.max(until));
    }

    /// A file was stored: the store answers again, so every file is due now.
    pub(super) fn store_answers(&mut self, now: Instant) {
        self.waiting.iter_mut().for_each(|w| w.next_try = w.next_try.min(now));
    }

    /// When the next file not being uploaded is due.
    pub(super) fn next_try(&self) -> Option<Instant> {
        self.waiting.iter().filter(|w| !w.busy).map(|w| w.next_try).min()
    }

    /// Files and bytes waiting.
    pub(super) fn size(&self) -> (usize, u64) {
        (self.waiting.len(), self.bytes)
    }

    /// When the oldest waiting file was finished.
    pub(super) fn oldest(&self) -> Option<SystemTime> {
        self.waiting.iter().map(|w| w.finished).min()
    }

    /// Whether a file waits (or is being uploaded).
    pub(super) fn contains(&self, path: &Path) -> bool {
        self.waiting.iter().any(|w| w.path == path)
    }

    /// Every file, the backlog emptied.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = Waiting> + '_ {
        self.bytes = 0;
        self.waiting.drain(..)
    }

    /// Whether nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// The wait after `attempts` failed tries: 1 s, 2 s, 4 s … up to [`MAX_BACKOFF`].
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(6)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn the_oldest_file_not_being_uploaded_is_dropped_first() {
        let now = Instant::now();
        let mut b = Backlog::default();
        b.add("/c/b".into(), 40, at(20), now);
        b.add("/c/a".into(), 40, at(10), now);
        b.add("/c/c".into(), 40, at(30), now);
        b.add("/c/c".into(), 40, at(30), now);
        assert_eq!(b.size(), (3, 120));
        let busy = b.next_due(now).unwrap();
        assert_eq!(busy.path, Path::new("/c/a"), "oldest first");
        let dropped: Vec<_> = b.over(50).into_iter().map(|w| w.path).collect();
        assert_eq!(dropped, [PathBuf::from("/c/b"), PathBuf::from("/c/c")], "the busy one stays");
        assert_eq!(b.size(), (1, 40));
        assert!(b.over(10).is_empty(), "nothing but the busy file is left");
    }

    #[test]
    fn failures_back_off_and_a_stored_file_makes_all_due() {
        let secs = |n| backoff(n).as_secs();
        assert_eq!([secs(1), secs(2), secs(3), secs(5), secs(6), secs(40)], [1, 2, 4, 16, 30, 30]);
        let now = Instant::now();
        let mut b = Backlog::default();
        b.add("/c/a".into(), 1, at(1), now);
        b.add("/c/b".into(), 1, at(2), now);
        let a = b.next_due(now).unwrap();
        b.failed(&a.path, now);
        b.failed(&a.path, now);
        assert_eq!(b.next_due(now).unwrap().path, Path::new("/c/b"), "a waits; b is due");
        assert_eq!(b.next_due(now).map(|w| w.path), None);
        assert_eq!(b.next_try(), Some(now + Duration::from_secs(2)), "a's second failure: 2 s");
        b.store_answers(now);
        assert_eq!(b.next_due(now).unwrap().path, Path::new("/c/a"));
        let until = b.failed(Path::new("/c/a"), now);
        b.failed(Path::new("/c/b"), now);
        b.hold_off(until);
        assert_eq!(b.next_try(), Some(until), "b waits for a's next try");
        b.store_answers(now);
        assert!(b.remove(Path::new("/c/a")).is_some());
        assert_eq!(b.size(), (1, 1));
    }
}
