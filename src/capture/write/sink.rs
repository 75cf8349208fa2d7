//! The sink the writer thread feeds: it drives one [`CaptureWriter`] (or one per session)
//! and its files: rotation by size, wall-clock interval or signal, one file per session if
//! asked, flushing, and write errors (logged once per episode, capture dropped and
//! counted, resumed with a fresh self-contained file when one can be opened).

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tracing::{error, info, warn};
use wstap_wire::pcapng::SectionInfo;
use wstap_wire::Timestamp;

use super::files::{sanitize, Counted, FileSet, OpenFile};
use super::writer::{Budgets, CaptureWriter, Processed, Synthesis};
use crate::capture::event::{Event, What};
use crate::capture::ids::{ConnId, LegId};
use crate::capture::stats::Stats;
use crate::config::{CaptureSettings, FilesPer};

/// How long after a write error before the next file is tried.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What failed, starting a write-error episode.
#[derive(Debug, Clone, Copy)]
enum Failed {
    /// A new capture file could not be created.
    Create,
    /// Writing to the open file failed.
    Write,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Failed::Create => "cannot create a capture file",
            Failed::Write => "capture write failed",
        })
    }
}

/// Which output an event goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// The one output, when files are not per session.
    All,
    /// A session's own output (`per_session`).
    Conn(ConnId),
}

/// One word to hash, as the writer's ids hash (connection ids start at 1).
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64(match self {
            Key::All => 0,
            Key::Conn(conn) => conn.0,
        });
    }
}

impl Key {
    /// The ISN seed of this output's writer.
    fn seed(self, seed: u64) -> u64 {
        match self {
            Key::All => seed,
            Key::Conn(conn) => seed ^ conn.0.rotate_left(17),
        }
    }
}

/// One output: a writer and the file it writes.
struct Output {
    writer: CaptureWriter<Counted>,
    file: Option<OpenFile>,
    opened_at: Timestamp,
    /// Bytes the file began with: its headers and what it repeats of live legs (not
    /// counted against `rotate.size`, or a file repeating more than the size would rotate
    /// at every event).
    preamble: u64,
    label: Option<String>,
}

/// Feeds events to the writer(s) and manages their files. Runs on the writer thread.
pub struct FileSink {
    settings: CaptureSettings,
    files: FileSet,
    info: SectionInfo,
    seed: u64,
    /// The single output, or in per-session mode one per session.
    outputs: HashMap<Key, Output, Ids>,
    /// Per-session mode: which session each leg belongs to.
    session_of: HashMap<LegId, ConnId, Ids>,
    /// In a write-error episode: no file is being written.
    failing: bool,
    /// An event came since the last tick (else the writer is idle, and flushes).
    busy: bool,
    retry_at: Timestamp,
    /// What every output's writer shares: inflating and records kept.
    budgets: Budgets,
}

/// Hashes the writer's own ids (session and leg numbers) for its maps, looked up for
/// every event: a multiply, where the default SipHash was a visible part of the
/// writer's profile. The keys come from counters, not from the network.
#[derive(Default, Clone, Copy)]
struct Ids;

#[derive(Default)]
struct IdHasher(u64);

impl std::hash::BuildHasher for Ids {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

impl FileSink {
    /// Hands each file, once finished, to `outbox`.
    pub fn ship_to(&mut self, outbox: std::sync::Arc<crate::capture::Outbox>) {
        self.files.ship_to(outbox);
    }

    /// A sink writing files as `settings` say; `seed` varies the synthesized ISNs.
    pub fn new(settings: CaptureSettings, info: SectionInfo, seed: u64) -> FileSink {
        FileSink {
            files: FileSet::new(&settings),
            settings,
            info,
            seed,
            outputs: HashMap::default(),
            session_of: HashMap::default(),
            failing: false,
            busy: false,
            retry_at: Timestamp::EPOCH,
            budgets: Budgets::default(),
        }
    }

    fn synthesis(&self, seed: u64) -> Synthesis {
        Synthesis::new(&self.settings, seed, self.budgets.clone())
    }

    /// Which output an event goes to (per-session mode: the leg's session).
    fn key_of(&mut self, ev: &Event) -> Key {
        if self.settings.files == FilesPer::Capture {
            return Key::All;
        }
        if let What::Open(o) = &ev.what {
            self.session_of.insert(ev.leg, o.conn);
        }
        Key::Conn(self.session_of.get(&ev.leg).copied().unwrap_or_default())
    }

    /// Writes one event into the output it belongs to, opening or rotating files as due.
    pub fn process(&mut self, ev: Event, stats: &Stats) {
        self.busy = true;
        let time = ev.time;
        let key = self.key_of(&ev);
        let closing = matches!(ev.what, What::Close { .. });
        if !self.outputs.contains_key(&key) {
            let label = match &ev.what {
                What::Open(o) if self.settings.files == FilesPer::Session => Some(sanitize(&o.label)),
                _ => None,
            };
            let seed = key.seed(self.seed);
            let writer = CaptureWriter::detached(&self.info, self.settings.legs, self.synthesis(seed));
            self.outputs.insert(key, Output { writer, file: None, opened_at: time, preamble: 0, label });
        }
        // No file yet, or the last one was finished while nothing was live: start one.
        if self.outputs.get(&key).is_some_and(|o| o.file.is_none()) && !self.failing {
            self.open_next(key, time, stats);
        }
        self.check_interval(key, time);
        let mut next = Some(ev);
        while let Some(ev) = next.take() {
            let Some(out) = self.outputs.get_mut(&key) else { return };
            match out.writer.process(ev, stats) {
                Ok(Processed::Done) => {}
                Ok(Processed::RotateFirst { then }) => {
                    self.open_next(key, time, stats);
                    next = then;
                }
                Err(e) => self.write_failed(key, &e, time, stats),
            }
        }
        if let Some(out) = self.outputs.get_mut(&key) {
            let size = self.settings.rotate.size;
            let written = out.writer.get_mut().map_or(0, |w| w.written).saturating_sub(out.preamble);
            if self.settings.files == FilesPer::Capture && size > 0 && written >= size {
                out.writer.rotation_due(time);
            }
            if closing && self.settings.files == FilesPer::Session && out.writer.live() == 0 {
                self.session_of.retain(|_, s| Key::Conn(*s) != key);
                self.close_output(key, stats);
            }
        }
    }

    /// New settings (a reload): the next file goes where they say and is written as they
    /// say; it starts as soon as every session is between frames.
    pub fn reconfigure(&mut self, settings: CaptureSettings, now: Timestamp) {
        self.files.reconfigure(&settings);
        self.info.instance.clone_from(&settings.instance);
        self.settings = settings;
        let keys: Vec<Key> = self.outputs.keys().copied().collect();
        for key in keys {
            let synth = self.synthesis(key.seed(self.seed));
            if let Some(out) = self.outputs.get_mut(&key) {
                out.writer.reconfigure(self.settings.legs, synth);
                out.writer.info.instance.clone_from(&self.info.instance);
                out.writer.rotation_due(now);
            }
        }
    }

    /// Rotate now (SIGUSR1): as soon as every session is between frames.
    pub fn rotate_soon(&mut self, now: Timestamp) {
        for out in self.outputs.values_mut() {
            out.writer.rotation_due(now);
        }
    }

    /// Called at least every flush interval: flushes, starts interval rotations, rotates
    /// idle outputs that are due, and retries after a write error.
    pub fn tick(&mut self, now: Timestamp, stats: &Stats) {
        let idle = !std::mem::take(&mut self.busy);
        stats.files_finished.fetch_add(self.files.finished(), Relaxed);
        let keys: Vec<Key> = self.outputs.keys().copied().collect();
        for key in keys {
            self.check_interval(key, now);
            let Some(out) = self.outputs.get_mut(&key) else { continue };
            if out.writer.ready_to_rotate(now) && out.writer.live() == 0 {
                // Nothing live to start a new file with: finish this one; the next event
                // opens the next (no files that hold only headers).
                self.finish_current(key, now, stats);
            } else if out.writer.ready_to_rotate(now) || (self.failing && now >= self.retry_at && out.file.is_none()) {
                self.open_next(key, now, stats);
            }
            let Some(out) = self.outputs.get_mut(&key) else { continue };
            if let Err(e) = out.writer.idle(stats) {
                self.write_failed(key, &e, now, stats);
            }
            if let Some(w) = self.outputs.get_mut(&key).and_then(|o| o.writer.get_mut()) {
                if let Err(e) = w.flush_due(now, self.settings.flush_interval, idle) {
                    self.write_failed(key, &e, now, stats);
                }
            }
        }
    }

    /// Makes a rotation due when `now` is in a later interval than the file's start
    /// (boundaries at wall-clock multiples of the interval, as dumpcap's `interval:`).
    fn check_interval(&mut self, key: Key, now: Timestamp) {
        let Some(iv) = self.settings.rotate.interval.filter(|_| self.settings.files == FilesPer::Capture) else {
            return;
        };
        let iv = iv.as_nanos() as u64;
        if let Some(out) = self.outputs.get_mut(&key) {
            if now.as_nanos() / iv != out.opened_at.as_nanos() / iv {
                out.writer.rotation_due(now);
            }
        }
    }

    /// Starts the output's next file (rotation, first file, or resumption), finishing the
    /// previous one.
    fn open_next(&mut self, key: Key, now: Timestamp, stats: &Stats) {
        let Some(out) = self.outputs.get_mut(&key) else { return };
        match self.files.create(now.to_system_time(), out.label.as_deref()) {
            Ok((file, w)) => {
                let old = out.writer.rotate(w, stats);
                let old_file = out.file.replace(file);
                out.opened_at = now;
                out.preamble = out.writer.get_mut().map_or(0, |w| w.written);
                // The previous file first: finished, or (its last writes failed) given up.
                match old {
                    Ok(old_w) => {
                        if let (Some(f), Some(w)) = (old_file, old_w) {
                            self.finish_file(f, w);
                        }
                    }
                    Err(e) => {
                        if let Some(f) = old_file {
                            self.files.give_up(f);
                        }
                        self.write_failed(key, &e, now, stats);
                        return;
                    }
                }
                // A new file is a valid capture from its first moment (a crash right
                // after rotating leaves a file tshark opens): header and repeats go out now.
                let Some(out) = self.outputs.get_mut(&key) else { return };
                if let Some(Err(e)) = out.writer.get_mut().map(Write::flush) {
                    self.write_failed(key, &e, now, stats);
                    return;
                }
                if self.failing {
                    self.failing = false;
                    info!(dir = %self.settings.dir.display(), "capture resumed");
                }
            }
            Err(e) => {
                // No file to rotate into: the rotation is over (else every event would
                // ask for it again, at once, for ever). The retry opens the next file.
                out.writer.rotation_done();
                if let Some(w) = out.writer.lose_output() {
                    if let Some(f) = out.file.take() {
                        self.finish_file(f, w);
                    }
                }
                self.episode(&e, now, Failed::Create, stats);
            }
        }
    }

    /// Finishes the output's current file without starting another.
    fn finish_current(&mut self, key: Key, now: Timestamp, stats: &Stats) {
        let Some(out) = self.outputs.get_mut(&key) else { return };
        out.writer.rotation_done();
        match out.writer.finish(stats) {
            Ok(Some(w)) => {
                if let Some(f) = out.file.take() {
                    self.finish_file(f, w);
                }
            }
            Ok(None) => {}
            Err(e) => self.write_failed(key, &e, now, stats),
        }
    }

    /// Hands a file over to be finished (off this thread: see [`FileSet`]).
    fn finish_file(&mut self, f: OpenFile, w: Counted) {
        let part = f.part.clone();
        if let Err(e) = self.files.finish(f, w) {
            warn!(path = %part.display(), error = %e, "cannot finish a capture file");
        }
    }

    fn write_failed(&mut self, key: Key, e: &io::Error, now: Timestamp, stats: &Stats) {
        stats.write_errors.fetch_add(1, Relaxed);
        if let Some(out) = self.outputs.get_mut(&key) {
            // The bytes in the buffer are lost with the file; keep what reached the disk.
            // The writer (and its buffer, whose drop would try to flush) goes first.
            drop(out.writer.lose_output());
            if let Some(f) = out.file.take() {
                self.files.give_up(f);
            }
        }
        self.episode(e, now, Failed::Write, stats);
    }

    /// Logs the first error of an episode; capture drops until the next file opens.
    fn episode(&mut self, e: &io::Error, now: Timestamp, what: Failed, stats: &Stats) {
        if !self.failing {
            stats.error_episodes.fetch_add(1, Relaxed);
            error!(dir = %self.settings.dir.display(), error = %e, "{what}; capture is dropped (traffic is not affected) until a file can be written");
        }
        self.failing = true;
        self.retry_at = now.after(RETRY_AFTER);
    }

    fn close_output(&mut self, key: Key, stats: &Stats) {
        if let Some(mut out) = self.outputs.remove(&key) {
            match out.writer.finish(stats) {
                Ok(Some(w)) => {
                    if let Some(f) = out.file.take() {
                        self.finish_file(f, w);
                    }
                }
                Ok(None) => {}
                Err(e) => self.write_failed(key, &e, Timestamp::EPOCH, stats),
            }
        }
    }

    /// Clean shutdown: every file flushed, synced, closed and renamed.
    pub fn finish(&mut self, stats: &Stats) {
        let keys: Vec<Key> = self.outputs.keys().copied().collect();
        for key in keys {
            self.close_output(key, stats);
        }
        self.settle(stats);
    }

    /// Waits until every file handed over to be finished has its final name (and is
    /// counted): for whoever reads the directory next.
    pub fn settle(&mut self, stats: &Stats) {
        self.files.settle();
        stats.files_finished.fetch_add(self.files.finished(), Relaxed);
    }
}
