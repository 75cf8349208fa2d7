//! Counters of what capture did and lost, shared by the queue, the writer thread and
//! whoever reports them (`/metrics`).

use std::sync::atomic::AtomicU64;

/// Counters of what capture did and lost.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events dropped because the queue was full (or closed).
    pub events_dropped: AtomicU64,
    /// Payload bytes in the dropped events.
    pub bytes_dropped: AtomicU64,
    /// Packets written to files.
    pub packets_written: AtomicU64,
    /// Payload bytes written to files.
    pub bytes_captured: AtomicU64,
    /// Writes that failed.
    pub write_errors: AtomicU64,
    /// Packet bytes not written because no file could be (a write-error episode).
    pub bytes_unwritten: AtomicU64,
    /// Write-error episodes: each is logged once, however many writes fail in it.
    pub error_episodes: AtomicU64,
    /// Files finished (synced and renamed).
    pub files_finished: AtomicU64,
}
