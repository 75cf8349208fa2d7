//! Ship: what happens to a capture file once it is finished. It is stored in
//! S3-compatible object storage (`[capture.upload]`) and handed to a command
//! (`capture.on_finish`), on a thread and runtime of their own, so that a slow or absent
//! store never touches the traffic or the capture writer.
//!
//! ```text
//! capture::write::files (finisher) ─▶ capture::Outbox ─▶ Ship (thread "wstap-ship")
//!   ─▶ backlog (oldest first, max_backlog) ─▶ upload (store::open's client) ─▶ journal
//!   ─▶ hook (on_finish, after the upload is done with the file)
//! ```
//!
//! - `worker`: the thread's loop: what arrives, the uploads and runs it starts, what
//!   becomes of each file, the shutdown.
//! - `backlog`: the files waiting, their bytes and their next try (pure).
//! - `upload`: one file stored and checked; `store`: the S3 client and the object keys.
//! - `journal`: what became of each file, so that a start finds the ones still to store.
//! - `hook`: the command run for a file.
//! - `read`: objects read back as captures, for the commands that read them.

mod backlog;
mod hook;
mod journal;
pub mod read;
pub mod store;
mod upload;
mod worker;

use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::error;

use crate::capture::Outbox;
use crate::config::CaptureSettings;
use worker::{Command, Ship};

pub use hook::Ran;
pub use upload::{describe, Failure};

/// What shipping did, for `/metrics`.
#[derive(Default)]
pub struct ShipStats {
    /// Files stored (and checked), and their bytes.
    pub stored_files: AtomicU64,
    /// Bytes of the files stored.
    pub stored_bytes: AtomicU64,
    /// Tries that failed, by [`Failure`].
    pub failures: [AtomicU64; Failure::ALL.len()],
    /// Files whose key holds something else: left alone.
    pub conflicts: AtomicU64,
    /// Files dropped from the backlog (`max_backlog`), and their bytes.
    pub dropped_files: AtomicU64,
    /// Bytes of the files dropped.
    pub dropped_bytes: AtomicU64,
    /// Files waiting now.
    pub backlog_files: AtomicU64,
    /// Bytes waiting now.
    pub backlog_bytes: AtomicU64,
    /// When the oldest waiting file was finished, in seconds since the epoch; 0: none.
    pub oldest_waiting: AtomicU64,
    /// `on_finish` runs, by [`Ran`].
    pub runs: [AtomicU64; Ran::ALL.len()],
}

/// Refuses upload settings the store's client cannot be built from (its address, region
/// or credentials): the reload or start then fails, naming the table.
pub fn check(settings: &CaptureSettings) -> Result<(), String> {
    match &settings.upload {
        Some(u) => store::open(u).map(drop).map_err(|e| format!("key `capture.upload`: {e}")),
        None => Ok(()),
    }
}

/// The shipping thread, and how to reach it.
pub struct Shipper {
    commands: mpsc::UnboundedSender<Command>,
    outbox: Arc<Outbox>,
    done: Option<oneshot::Receiver<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Shipper {
    /// Starts shipping as `settings` say. The files an earlier run left to store are
    /// found (and held from the ring) before this returns.
    pub fn start(settings: &CaptureSettings, stats: Arc<ShipStats>) -> io::Result<Shipper> {
        let outbox = Arc::new(Outbox::default());
        let mut ship = Ship::new(outbox.clone(), stats);
        ship.apply(settings);
        let (commands, rx) = mpsc::unbounded_channel();
        let (done_tx, done) = oneshot::channel();
        // The runtime is made and dropped on its thread, never in the daemon's.
        let thread = std::thread::Builder::new().name("wstap-ship".into()).spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => {
                    runtime.block_on(ship.run(rx));
                    // Reads and name lookups still running are not waited for long.
                    runtime.shutdown_timeout(Duration::from_secs(1));
                }
                Err(e) => error!(error = %e, "cannot start the runtime that ships capture files"),
            }
            let _ = done_tx.send(());
        })?;
        Ok(Shipper { commands, outbox, done: Some(done), thread: Some(thread) })
    }

    /// Where the capture hands its finished files.
    pub fn outbox(&self) -> Arc<Outbox> {
        self.outbox.clone()
    }

    /// New settings (a reload): they apply to the next tries.
    pub fn reconfigure(&self, settings: &CaptureSettings) {
        let _ = self.commands.send(Command::Settings(Box::new(settings.clone())));
    }

    /// At shutdown, once the capture has finished its files: stores what waits within
    /// `upload.shutdown_wait` (the rest is stored at the next start), then runs
    /// `on_finish` for the files it is owed.
    pub async fn finish(mut self) {
        let _ = self.commands.send(Command::Finish);
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}
