//! The shipping thread's loop: files arrive from the outbox; each goes to the backlog
//! (with `[capture.upload]`) and is uploaded, then to `on_finish`, then is let go (the
//! ring may delete it; `delete_after` deletes it). A file is held from the ring from
//! the moment it is finished until it is let go.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use object_store::ObjectStore;
use tokio::sync::mpsc;
use tokio::task::{Id, JoinError, JoinSet};
use tracing::{error, info, warn};

use super::backlog::Backlog;
use super::journal::{self, Settled};
use super::upload::{self, Failed, Failure, Outcome};
use super::{hook, store, Ran, ShipStats};
use crate::capture::{Arrivals, Outbox};
use crate::config::{CaptureSettings, OnFinish, UploadSettings};

/// Files that may wait for `on_finish` at most; past it, a file's run is skipped.
const MAX_WAITING_RUNS: usize = 1024;

/// Journal lines written between two compactions, at most.
const COMPACT_AFTER: usize = 4096;

/// What the daemon tells the thread.
pub(super) enum Command {
    Settings(Box<CaptureSettings>),
    Finish,
}

/// A file owed its `on_finish` run, and whether it goes after it (`delete_after`).
type Owed = (PathBuf, bool);

type Uploaded = (PathBuf, Result<Outcome, Failed>);

/// The shipping thread's state.
pub(super) struct Ship {
    outbox: Arc<Outbox>,
    stats: Arc<ShipStats>,
    instance: String,
    dir: PathBuf,
    /// The ring's prefix: the files of the directory that are this instance's.
    prefix: String,
    upload: Option<(UploadSettings, Arc<dyn ObjectStore>)>,
    hook: Option<OnFinish>,
    backlog: Backlog,
    uploads: JoinSet<Uploaded>,
    uploading: HashMap<Id, PathBuf>,
    owed: VecDeque<Owed>,
    runs: JoinSet<Ran>,
    running: HashMap<Id, Owed>,
    /// Journal lines written since the directory was last scanned.
    recorded: usize,
    /// Shutting down, past `shutdown_wait`: no upload starts.
    closing: bool,
}

impl Ship {
    pub(super) fn new(outbox: Arc<Outbox>, stats: Arc<ShipStats>) -> Ship {
        Ship {
            outbox,
            stats,
            instance: String::new(),
            dir: PathBuf::new(),
            prefix: String::new(),
            upload: None,
            hook: None,
            backlog: Backlog::default(),
            uploads: JoinSet::new(),
            uploading: HashMap::new(),
            owed: VecDeque::new(),
            runs: JoinSet::new(),
            running: HashMap::new(),
            recorded: 0,
            closing: false,
        }
    }

    /// Takes `s`: a store opened anew if its settings changed, and the directory
    /// scanned when uploads start or the directory moves.
    pub(super) fn apply(&mut self, s: &CaptureSettings) {
        let moved = s.dir != self.dir || s.prefix != self.prefix;
        self.instance.clone_from(&s.instance);
        self.dir.clone_from(&s.dir);
        self.prefix.clone_from(&s.prefix);
        self.hook.clone_from(&s.on_finish);
        let same = self.upload.as_ref().map(|(u, _)| u) == s.upload.as_ref();
        if !same {
            self.switch_store(s.upload.as_ref());
        }
        let holding = self.upload.is_some() || self.hook.is_some();
        self.outbox.hold_arrivals(holding);
        if self.upload.is_some() && (moved || !same) {
            self.scan();
        }
        self.publish();
    }

    /// A store opened for new upload settings; with none, what waited is let go and
    /// what was being uploaded is given up (it is found again when uploads resume).
    fn switch_store(&mut self, settings: Option<&UploadSettings>) {
        let was_on = self.upload.is_some();
        self.upload = settings.and_then(|u| match store::open(u) {
            Ok(store) => Some((u.clone(), store)),
            Err(e) => {
                error!(url = %u.url, error = %e, "capture.upload: cannot use the store; files are not uploaded");
                None
            }
        });
        self.uploads.abort_all();
        for w in self.backlog.drain() {
            self.outbox.release(&w.path);
        }
        match &self.upload {
            Some((u, _)) => {
                let endpoint = u.endpoint.as_deref().unwrap_or("AWS");
                info!(url = %u.url, endpoint, "capture.upload: storing finished files");
            }
            None if was_on => info!("capture.upload: off; the files waiting stay where they are"),
            None => {}
        }
    }

    /// Adds the directory's finished files not yet stored to the backlog (and
    /// compacts its journal).
    fn scan(&mut self) {
        self.recorded = 0;
        match journal::unsettled(&self.dir, &self.prefix) {
            Ok(found) => {
                let now = Instant::now();
                for (path, size, finished) in found {
                    if !self.is_known(&path) {
                        self.outbox.hold(&path);
                        self.backlog.add(path, size, finished, now);
                    }
                }
                let (files, _) = self.backlog.size();
                if files > 0 {
                    info!(dir = %self.dir.display(), files, "capture.upload: files to store");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(dir = %self.dir.display(), error = %e, "capture.upload: cannot look for files to store"),
        }
    }

    /// Whether a file is on its way already: waiting, being uploaded, owed or run.
    fn is_known(&self, path: &Path) -> bool {
        self.backlog.contains(path)
            || self.owed.iter().any(|(p, _)| p == path)
            || self.running.values().any(|(p, _)| p == path)
    }

    /// Takes what the outbox got. After an overflow, the files it holds that are on no
    /// way yet are the ones it could not queue.
    fn intake(&mut self, arrivals: Arrivals) {
        let mut files = arrivals.files;
        if arrivals.rescan {
            warn!("more files were finished than were taken in time: taking the files held");
            files.extend(self.outbox.held().into_iter().filter(|p| !self.is_known(p)));
        }
        let now = Instant::now();
        for path in files {
            if self.upload.is_none() {
                self.owe(path, false);
                continue;
            }
            match std::fs::metadata(&path) {
                Ok(m) => self.backlog.add(path, m.len(), m.modified().unwrap_or_else(|_| SystemTime::now()), now),
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "capture.upload: a finished file is gone");
                    self.outbox.release(&path);
                }
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

    /// The upload is done with a file: journaled, then owed its `on_finish` run.
    fn settle(&mut self, path: &Path, how: Settled, delete: bool) {
        if let Err(e) = journal::record(path, how) {
            warn!(file = %path.display(), error = %e, "capture.upload: cannot record what became of a file");
        }
        self.recorded += 1;
        self.owe(path.to_owned(), delete);
    }

    /// Queues a file for `on_finish`; with no command (or too many files waiting for
    /// it), the file is let go at once.
    fn owe(&mut self, path: PathBuf, delete: bool) {
        match &self.hook {
            Some(_) if self.owed.len() < MAX_WAITING_RUNS => self.owed.push_back((path, delete)),
            Some(_) => {
                warn!(file = %path.display(), "capture.on_finish: {MAX_WAITING_RUNS} files wait for the command already; not run for this one");
                self.stats.runs[Ran::Skipped as usize].fetch_add(1, Relaxed);
                self.let_go(&path, delete);
            }
            None => self.let_go(&path, delete),
        }
    }

    /// Done with a file: the ring may delete it, and with `delete_after` it goes now.
    fn let_go(&self, path: &Path, delete: bool) {
        self.outbox.release(path);
        if delete {
            match std::fs::remove_file(path) {
                Ok(()) => info!(file = %path.display(), "capture.upload: local file deleted (delete_after)"),
                Err(e) => warn!(file = %path.display(), error = %e, "capture.upload: cannot delete the local file"),
            }
        }
    }

    /// Starts the uploads and runs that may start.
    fn start(&mut self) {
        if let Some((u, store)) = self.upload.as_ref().filter(|_| !self.closing) {
            while self.uploads.len() < u.concurrency {
                let Some(w) = self.backlog.next_due(Instant::now()) else { break };
                let name = w.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let key = store::key(&u.prefix, &self.instance, &name, w.finished);
                let (store, verify, path) = (store.clone(), u.verify, w.path.clone());
                let task =
                    self.uploads.spawn(async move { (path.clone(), upload::store(store, path, key, verify).await) });
                self.uploading.insert(task.id(), w.path);
            }
        }
        if let Some(hook) = &self.hook {
            while self.runs.len() < hook.concurrency {
                let Some((path, delete)) = self.owed.pop_front() else { break };
                let (hook, instance, file) = (hook.clone(), self.instance.clone(), path.clone());
                let task = self.runs.spawn(async move { hook::run(&hook, &file, &instance).await });
                self.running.insert(task.id(), (path, delete));
            }
        }
    }

    /// An upload task ended (a task that panicked counts as a failed try; one aborted
    /// because uploads stopped is forgotten).
    fn joined(&mut self, done: Result<(Id, Uploaded), JoinError>) {
        match done {
            Ok((id, (path, result))) => {
                self.uploading.remove(&id);
                self.uploaded(path, result);
            }
            Err(e) => {
                let Some(path) = self.uploading.remove(&e.id()) else { return };
                if e.is_panic() {
                    let detail = format!("the upload task failed: {e}");
                    self.uploaded(path, Err(Failed { reason: Failure::Store, detail }));
                }
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
            Err(Failed { reason, detail }) => self.failed(&path, reason, &detail, now),
        }
    }

    /// A try failed: the file waits, and when the store failed as a whole, every file
    /// waits with it, so that one file probes the store.
    fn failed(&mut self, path: &Path, reason: Failure, detail: &str, now: Instant) {
        self.stats.failures[reason as usize].fetch_add(1, Relaxed);
        let again = self.backlog.failed(path, now);
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

    /// A run ended: counted, and its file let go.
    fn ran(&mut self, done: Result<(Id, Ran), JoinError>) {
        let (id, ran) = match done {
            Ok((id, ran)) => (id, ran),
            Err(e) => (e.id(), if e.is_cancelled() { Ran::Skipped } else { Ran::Failed }),
        };
        self.stats.runs[ran as usize].fetch_add(1, Relaxed);
        if let Some((path, delete)) = self.running.remove(&id) {
            self.let_go(&path, delete);
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
        if self.recorded > COMPACT_AFTER && self.upload.is_some() {
            self.scan();
        }
        self.start();
        self.publish();
    }

    /// When the next upload is due, if one may start.
    fn next_try(&self) -> Option<tokio::time::Instant> {
        let free = self.upload.as_ref().is_some_and(|(u, _)| self.uploads.len() < u.concurrency) && !self.closing;
        free.then(|| self.backlog.next_try()).flatten().map(tokio::time::Instant::from_std)
    }

    pub(super) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            self.turn();
            let due = self.next_try();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Settings(s)) => self.apply(&s),
                    Some(Command::Finish) | None => break,
                },
                () = self.outbox.arrival() => {}
                Some(done) = self.uploads.join_next_with_id(), if !self.uploads.is_empty() => self.joined(done),
                Some(done) = self.runs.join_next_with_id(), if !self.runs.is_empty() => self.ran(done),
                () = sleep_until(due), if due.is_some() => {}
            }
        }
        self.finish().await;
    }

    /// The shutdown: the files left are stored within `shutdown_wait` (the rest at the
    /// next start); then the runs owed are made within one `on_finish_timeout` (the
    /// rest are skipped, counted).
    async fn finish(&mut self) {
        let wait = self.upload.as_ref().map_or(Duration::ZERO, |(u, _)| u.shutdown_wait);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.turn();
            if (self.backlog.is_empty() && self.uploads.is_empty()) || tokio::time::Instant::now() >= deadline {
                break;
            }
            let due = self.next_try().map_or(deadline, |d| d.min(deadline));
            tokio::select! {
                Some(done) = self.uploads.join_next_with_id(), if !self.uploads.is_empty() => self.joined(done),
                Some(done) = self.runs.join_next_with_id(), if !self.runs.is_empty() => self.ran(done),
                () = tokio::time::sleep_until(due) => {}
            }
        }
        self.closing = true;
        if !self.backlog.is_empty() {
            let (files, bytes) = self.backlog.size();
            warn!(
                files,
                bytes, "capture.upload: files not stored by the end of shutdown_wait; stored at the next start"
            );
            self.uploads.abort_all();
        }
        self.publish();
        self.last_runs().await;
    }

    /// The runs owed at shutdown, within one `on_finish_timeout`.
    async fn last_runs(&mut self) {
        let Some(timeout) = self.hook.as_ref().map(|h| h.timeout) else { return };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.start();
            if self.runs.is_empty() {
                break;
            }
            tokio::select! {
                Some(done) = self.runs.join_next_with_id() => self.ran(done),
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let left = self.owed.len() + self.runs.len();
        if left > 0 {
            warn!(files = left, "capture.on_finish: not run for these files by the end of the shutdown");
            self.stats.runs[Ran::Skipped as usize].fetch_add(self.owed.len() as u64, Relaxed);
            self.runs.abort_all();
            while let Some(done) = self.runs.join_next_with_id().await {
                self.ran(done);
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
