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

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use object_store::ObjectStore;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::capture::{Arrivals, Outbox};
use crate::config::{CaptureSettings, OnFinish, UploadSettings};
use backlog::Backlog;
use journal::Settled;
use upload::{Failed, Outcome};

pub use hook::Ran;
pub use upload::Failure;

/// Files that may wait for `on_finish` at most; past it, a file's run is skipped.
const MAX_WAITING_RUNS: usize = 1024;

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

/// Refuses upload settings the store's client cannot be built from (the reload or
/// start then fails, naming the key).
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

enum Command {
    Settings(Box<CaptureSettings>),
    Finish,
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
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name("wstap-ship".into()).spawn(move || {
            runtime.block_on(ship.run(rx));
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
            let _ = t.join();
        }
    }
}

/// The shipping thread's state.
struct Ship {
    outbox: Arc<Outbox>,
    stats: Arc<ShipStats>,
    instance: String,
    dir: PathBuf,
    upload: Option<(UploadSettings, Arc<dyn ObjectStore>)>,
    hook: Option<OnFinish>,
    backlog: Backlog,
    uploads: JoinSet<(PathBuf, Result<Outcome, Failed>)>,
    /// Files waiting for `on_finish`.
    owed: VecDeque<PathBuf>,
    runs: JoinSet<Ran>,
}

impl Ship {
    fn new(outbox: Arc<Outbox>, stats: Arc<ShipStats>) -> Ship {
        Ship {
            outbox,
            stats,
            instance: String::new(),
            dir: PathBuf::new(),
            upload: None,
            hook: None,
            backlog: Backlog::default(),
            uploads: JoinSet::new(),
            owed: VecDeque::new(),
            runs: JoinSet::new(),
        }
    }

    /// Takes `s`: a store opened anew if its settings changed, and the directory
    /// scanned when uploads start or the directory moved.
    fn apply(&mut self, s: &CaptureSettings) {
        let moved = s.dir != self.dir;
        (self.instance, self.dir, self.hook) = (s.instance.clone(), s.dir.clone(), s.on_finish.clone());
        let same = self.upload.as_ref().map(|(u, _)| u) == s.upload.as_ref();
        if !same {
            let was_on = self.upload.is_some();
            self.upload = s.upload.as_ref().and_then(|u| match store::open(u) {
                Ok(store) => Some((u.clone(), store)),
                Err(e) => {
                    error!(url = %u.url, error = %e, "capture.upload: cannot use the store; files are not uploaded");
                    None
                }
            });
            if let Some((u, _)) = &self.upload {
                info!(url = %u.url, endpoint = u.endpoint.as_deref().unwrap_or("AWS"), "capture.upload: storing finished files");
            } else if was_on {
                info!("capture.upload: off; files waiting stay where they are");
                self.backlog = Backlog::default();
            }
        }
        self.outbox.hold_arrivals(self.upload.is_some());
        if self.upload.is_some() && (moved || !same) {
            self.scan();
        }
        self.publish();
    }

    /// Adds the directory's finished files not yet stored to the backlog.
    fn scan(&mut self) {
        match journal::unsettled(&self.dir) {
            Ok(found) => {
                if !found.is_empty() {
                    info!(dir = %self.dir.display(), files = found.len(), "capture.upload: files still to store");
                }
                let now = Instant::now();
                for (path, size, finished) in found {
                    self.outbox.hold(&path);
                    self.backlog.add(path, size, finished, now);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(dir = %self.dir.display(), error = %e, "capture.upload: cannot look for files to store"),
        }
    }

    /// Takes what the outbox got.
    fn intake(&mut self, arrivals: Arrivals) {
        let now = Instant::now();
        for path in arrivals.files {
            if self.upload.is_none() {
                self.owe(path);
                continue;
            }
            match std::fs::metadata(&path) {
                Ok(m) => self.backlog.add(path, m.len(), m.modified().unwrap_or_else(|_| SystemTime::now()), now),
                Err(e) => warn!(file = %path.display(), error = %e, "capture.upload: a finished file is gone"),
            }
        }
        if arrivals.rescan {
            warn!("more files were finished than were taken in time: looking in the directory");
            if self.upload.is_some() {
                self.scan();
            }
        }
        self.bound();
    }

    /// Drops the oldest files past `max_backlog`.
    fn bound(&mut self) {
        let Some((u, _)) = &self.upload else { return };
        let delete = u.delete_after;
        for w in self.backlog.over(u.max_backlog) {
            error!(
                file = %w.path.display(),
                bytes = w.size,
                tries = w.attempts,
                "capture.upload: backlog past max_backlog: the oldest file waiting is dropped and will not be stored"
            );
            self.stats.dropped_files.fetch_add(1, Relaxed);
            self.stats.dropped_bytes.fetch_add(w.size, Relaxed);
            self.settle(&w.path, Settled::Dropped, delete);
        }
    }

    /// A file leaves the backlog: journaled, released to the ring, deleted if asked,
    /// and owed its `on_finish` run.
    fn settle(&mut self, path: &Path, how: Settled, delete: bool) {
        if let Err(e) = journal::record(path, how) {
            warn!(file = %path.display(), error = %e, "capture.upload: cannot record what became of a file");
        }
        self.outbox.release(path);
        if delete {
            match std::fs::remove_file(path) {
                Ok(()) => info!(file = %path.display(), "capture.upload: local file deleted (delete_after)"),
                Err(e) => warn!(file = %path.display(), error = %e, "capture.upload: cannot delete the local file"),
            }
        } else {
            self.owe(path.to_owned());
        }
    }

    /// Queues a file for `on_finish`, if there is one.
    fn owe(&mut self, path: PathBuf) {
        if self.hook.is_none() {
            return;
        }
        if self.owed.len() >= MAX_WAITING_RUNS {
            warn!(file = %path.display(), "capture.on_finish: {MAX_WAITING_RUNS} files wait for the command already; not run for this one");
            self.stats.runs[Ran::Skipped as usize].fetch_add(1, Relaxed);
            return;
        }
        self.owed.push_back(path);
    }

    /// Starts the uploads and runs that may start.
    fn start(&mut self) {
        if let Some((u, store)) = &self.upload {
            while self.uploads.len() < u.concurrency {
                let Some(w) = self.backlog.next_due(Instant::now()) else { break };
                let name = w.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let key = store::key(&u.prefix, &self.instance, &name, w.finished);
                let (store, verify, path) = (store.clone(), u.verify, w.path.clone());
                self.uploads.spawn(async move { (path.clone(), upload::store(store, path, key, verify).await) });
            }
        }
        if let Some(hook) = &self.hook {
            while self.runs.len() < hook.concurrency {
                let Some(path) = self.owed.pop_front() else { break };
                let (hook, instance) = (hook.clone(), self.instance.clone());
                self.runs.spawn(async move { hook::run(&hook, &path, &instance).await });
            }
        }
    }

    /// An upload ended.
    fn uploaded(&mut self, path: PathBuf, result: Result<Outcome, Failed>) {
        let now = Instant::now();
        let delete = self.upload.as_ref().is_some_and(|(u, _)| u.delete_after);
        let size = |b: &mut Backlog| b.remove(&path).map_or(0, |w| w.size);
        match result {
            Ok(Outcome::Stored | Outcome::AlreadyThere) => {
                let bytes = size(&mut self.backlog);
                info!(file = %path.display(), bytes, "capture.upload: stored");
                self.stats.stored_files.fetch_add(1, Relaxed);
                self.stats.stored_bytes.fetch_add(bytes, Relaxed);
                self.backlog.store_answers(now);
                self.settle(&path, Settled::Stored, delete);
            }
            Ok(Outcome::Conflict) => {
                size(&mut self.backlog);
                error!(file = %path.display(), "capture.upload: its key holds a different object; neither is touched");
                self.stats.conflicts.fetch_add(1, Relaxed);
                self.settle(&path, Settled::Conflict, false);
            }
            Err(Failed { reason: Failure::Local, detail }) if !path.exists() => {
                size(&mut self.backlog);
                warn!(file = %path.display(), error = %detail, "capture.upload: the file is gone; nothing to store");
                self.stats.failures[Failure::Local as usize].fetch_add(1, Relaxed);
                self.outbox.release(&path);
            }
            Err(Failed { reason, detail }) => {
                self.stats.failures[reason as usize].fetch_add(1, Relaxed);
                let again = self.backlog.failed(&path, now);
                if !matches!(reason, Failure::Local | Failure::Verify) {
                    self.backlog.hold_off(again);
                }
                let (files, bytes) = self.backlog.size();
                warn!(
                    file = %path.display(),
                    reason = reason.label(),
                    error = %detail,
                    waiting_files = files,
                    waiting_bytes = bytes,
                    "capture.upload: not stored; it waits and is tried again"
                );
            }
        }
    }

    fn publish(&self) {
        let (files, bytes) = self.backlog.size();
        self.stats.backlog_files.store(files as u64, Relaxed);
        self.stats.backlog_bytes.store(bytes, Relaxed);
        let oldest = self.backlog.oldest().and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
        self.stats.oldest_waiting.store(oldest.map_or(0, |d| d.as_secs().max(1)), Relaxed);
    }

    /// One turn: what arrived taken in, what may start started, the metrics published.
    fn turn(&mut self) {
        self.intake(self.outbox.take());
        self.start();
        self.publish();
    }

    /// When the next upload is due, if one may start.
    fn next_try(&self) -> Option<tokio::time::Instant> {
        let free = self.upload.as_ref().is_some_and(|(u, _)| self.uploads.len() < u.concurrency);
        free.then(|| self.backlog.next_try()).flatten().map(tokio::time::Instant::from_std)
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            self.turn();
            let due = self.next_try();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Settings(s)) => self.apply(&s),
                    Some(Command::Finish) | None => break,
                },
                () = self.outbox.arrival() => {}
                Some(done) = self.uploads.join_next(), if !self.uploads.is_empty() => self.joined(done),
                Some(ran) = self.runs.join_next(), if !self.runs.is_empty() => self.ran(ran),
                () = sleep_until(due), if due.is_some() => {}
            }
        }
        self.finish().await;
    }

    fn joined(&mut self, done: Result<(PathBuf, Result<Outcome, Failed>), tokio::task::JoinError>) {
        match done {
            Ok((path, result)) => self.uploaded(path, result),
            Err(e) => error!(error = %e, "capture.upload: an upload task failed"),
        }
    }

    fn ran(&mut self, ran: Result<Ran, tokio::task::JoinError>) {
        let ran = ran.unwrap_or(Ran::Failed);
        self.stats.runs[ran as usize].fetch_add(1, Relaxed);
    }

    /// The shutdown: the files left are stored within `shutdown_wait`, then every run
    /// owed is made.
    async fn finish(&mut self) {
        let wait = self.upload.as_ref().map_or(std::time::Duration::ZERO, |(u, _)| u.shutdown_wait);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.turn();
            if self.backlog.is_empty() && self.uploads.is_empty() {
                break;
            }
            let due = self.next_try().map_or(deadline, |d| d.min(deadline));
            tokio::select! {
                Some(done) = self.uploads.join_next(), if !self.uploads.is_empty() => self.joined(done),
                Some(ran) = self.runs.join_next(), if !self.runs.is_empty() => self.ran(ran),
                () = tokio::time::sleep_until(due) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        if self.backlog.any_busy() || !self.backlog.is_empty() {
            let (files, bytes) = self.backlog.size();
            warn!(
                files,
                bytes, "capture.upload: files not stored by the end of shutdown_wait; stored at the next start"
            );
            self.uploads.abort_all();
        }
        self.publish();
        loop {
            self.start();
            match self.runs.join_next().await {
                Some(ran) => self.ran(ran),
                None if self.owed.is_empty() || self.hook.is_none() => break,
                None => {}
            }
        }
    }
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
