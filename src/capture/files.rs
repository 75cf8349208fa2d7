//! The capture files on disk, and the sink that feeds them from the writer thread.
//! [`FileSet`] names files (`<prefix>_<seq>_<YYYYmmddHHMMSS>.pcapng`, the sequence going on
//! across restarts), keeps them `.part` until finished, applies the ring-buffer limit,
//! creates them with the configured mode and never follows a symlink. [`FileSink`] drives
//! the [`CaptureWriter`]: rotation by size, wall-clock interval or signal, one file per
//! session if asked, flushing, and write errors (logged once per episode, capture dropped
//! and counted, resumed with a fresh self-contained file when one can be opened).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{error, info, warn};

use crate::config::CaptureSettings;
use crate::wire::pcapng::SectionInfo;
use crate::capture::recorder::{Event, LegId, Stats, What};
use crate::capture::writer::{CaptureWriter, Step, Synthesis};

/// Mode of a capture directory wstap creates.
const DIR_MODE: u32 = 0o750;
/// How long after a write error before the next file is tried.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A file being written, counting its bytes.
pub struct Counted {
    inner: BufWriter<File>,
    written: u64,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The files of one capture directory and prefix.
pub struct FileSet {
    dir: PathBuf,
    prefix: String,
    mode: u32,
    /// Finished files to keep; 0 = all.
    keep: usize,
    next_seq: Option<u32>,
}

/// An open `.part` file and the name it gets when finished.
struct OpenFile {
    part: PathBuf,
    path: PathBuf,
}

impl FileSet {
    pub fn new(s: &CaptureSettings) -> FileSet {
        FileSet {
            dir: s.dir.clone(),
            prefix: s.prefix.clone(),
            mode: s.file_mode,
            keep: s.rotate.files,
            next_seq: None,
        }
    }

    /// The sequence number in a file name of this set, if it is one.
    fn seq_of(&self, name: &str) -> Option<u32> {
        let rest = name.strip_prefix(&self.prefix)?.strip_prefix('_')?;
        let (seq, rest) = rest.split_once('_')?;
        (seq.len() == 5 && rest.contains(".pcapng")).then(|| seq.parse().ok()).flatten()
    }

    /// Creates the directory if needed; on first use, finds the next sequence number and
    /// finishes `.part` files a crashed run left behind (they open in tshark as they are).
    fn prepare(&mut self) -> io::Result<()> {
        if !self.dir.is_dir() {
            fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(&self.dir)?;
        }
        if self.next_seq.is_some() {
            return Ok(());
        }
        let mut max = 0;
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(seq) = self.seq_of(&name) {
                max = max.max(seq);
                if let Some(finished) = name.strip_suffix(".part") {
                    let _ = fs::rename(self.dir.join(&name), self.dir.join(finished));
                    warn!(file = finished, "finished a capture file left open by an earlier run");
                }
            }
        }
        self.next_seq = Some(max + 1);
        Ok(())
    }

    /// Opens the next file of the ring, as `.part`. `label` (per-session files) is added
    /// to the name.
    fn create(&mut self, now: SystemTime, label: Option<&str>) -> io::Result<(OpenFile, Counted)> {
        self.prepare()?;
        let seq = self.next_seq.unwrap_or(1);
        self.next_seq = Some(if seq >= 99_999 { 1 } else { seq + 1 });
        let mut name = format!("{}_{seq:05}_{}", self.prefix, timestamp(now));
        if let Some(l) = label {
            name.push('_');
            name.push_str(l);
        }
        let path = self.dir.join(format!("{name}.pcapng"));
        let part = self.dir.join(format!("{name}.pcapng.part"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(self.mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&part)?;
        Ok((OpenFile { part, path }, Counted { inner: BufWriter::with_capacity(256 * 1024, file), written: 0 }))
    }

    /// Flushes, syncs and renames a file to its final name, then trims the ring.
    fn finish(&self, f: OpenFile, w: Counted) -> io::Result<PathBuf> {
        let file = w.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&f.part, &f.path)?;
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        self.trim();
        Ok(f.path)
    }

    /// Deletes the oldest finished files beyond the ring's size.
    fn trim(&self) {
        if self.keep == 0 {
            return;
        }
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        let mut finished: Vec<(u32, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let seq = self.seq_of(&name).filter(|_| name.ends_with(".pcapng"))?;
                Some((seq, e.path()))
            })
            .collect();
        // Sequence order, with wrap-around: the newest seq is the one just below next_seq.
        let next = self.next_seq.unwrap_or(1);
        finished.sort_by_key(|(seq, _)| if *seq < next { u64::from(*seq) + 100_000 } else { u64::from(*seq) });
        let excess = finished.len().saturating_sub(self.keep);
        for (_, path) in finished.into_iter().take(excess) {
            match fs::remove_file(&path) {
                Ok(()) => info!(path = %path.display(), "deleted the oldest capture file (rotate.files)"),
                Err(e) => warn!(path = %path.display(), error = %e, "cannot delete an old capture file"),
            }
        }
    }
}

/// `YYYYmmddHHMMSS` in UTC.
fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string().chars().filter(char::is_ascii_digit).collect()
}

fn ns_to_time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// One output: a writer and the file it writes.
struct Output {
    writer: CaptureWriter<Counted>,
    file: Option<OpenFile>,
    opened_at: u64,
    label: Option<String>,
}

/// Feeds events to the writer(s) and manages their files. Runs on the writer thread.
pub struct FileSink {
    settings: CaptureSettings,
    files: FileSet,
    info: SectionInfo,
    seed: u64,
    /// The single output, or in per-session mode one per session id.
    outputs: HashMap<u64, Output, Ids>,
    /// Per-session mode: which session each leg belongs to.
    session_of: HashMap<LegId, u64, Ids>,
    /// In a write-error episode: no file is being written.
    failing: bool,
    retry_at: u64,
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

    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

impl FileSink {
    pub fn new(settings: CaptureSettings, info: SectionInfo, seed: u64) -> FileSink {
        FileSink {
            files: FileSet::new(&settings),
            settings,
            info,
            seed,
            outputs: HashMap::default(),
            session_of: HashMap::default(),
            failing: false,
            retry_at: 0,
        }
    }

    fn synthesis(&self, seed: u64) -> Synthesis {
        let s = &self.settings;
        Synthesis {
            mss_ipv4: s.mss_ipv4,
            mss_ipv6: s.mss_ipv6,
            acks: s.acks,
            display_port: s.display_port,
            isn_seed: seed,
            rotate_wait: s.rotate.max_wait,
        }
    }

    /// Which output an event goes to (per-session mode: the leg's session).
    fn key_of(&mut self, ev: &Event) -> u64 {
        if !self.settings.per_session {
            return 0;
        }
        if let What::Open(o) = &ev.what {
            self.session_of.insert(ev.leg, o.session_id);
        }
        self.session_of.get(&ev.leg).copied().unwrap_or(0)
    }

    pub fn process(&mut self, ev: Event, stats: &Stats) {
        let time = ev.time;
        let key = self.key_of(&ev);
        let closing = matches!(ev.what, What::Close { .. });
        if !self.outputs.contains_key(&key) {
            let label = match &ev.what {
                What::Open(o) if self.settings.per_session => Some(sanitize(&o.label)),
                _ => None,
            };
            let seed = self.seed ^ key.rotate_left(17);
            let writer = CaptureWriter::detached(&self.info, self.settings.legs, self.synthesis(seed));
            self.outputs.insert(key, Output { writer, file: None, opened_at: time, label });
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
                Ok(Step::Done) => {}
                Ok(Step::Rotate { then }) => {
                    self.open_next(key, time, stats);
                    next = then;
                }
                Err(e) => self.write_failed(key, &e, time, stats),
            }
        }
        if let Some(out) = self.outputs.get_mut(&key) {
            let size = self.settings.rotate.size;
            let written = out.writer.get_mut().map_or(0, |w| w.written);
            if !self.settings.per_session && size > 0 && written >= size {
                out.writer.rotation_due(time);
            }
            if closing && self.settings.per_session && out.writer.live() == 0 {
                self.session_of.retain(|_, s| *s != key);
                self.close_output(key, stats);
            }
        }
    }

    /// New settings (a reload): the next file goes where they say and is written as they
    /// say; it starts as soon as every session is between frames.
    pub fn reconfigure(&mut self, settings: CaptureSettings, now: u64) {
        self.files = FileSet::new(&settings);
        self.settings = settings;
        let keys: Vec<u64> = self.outputs.keys().copied().collect();
        for key in keys {
            let synth = self.synthesis(self.seed ^ key.rotate_left(17));
            if let Some(out) = self.outputs.get_mut(&key) {
                out.writer.reconfigure(self.settings.legs, synth);
                out.writer.rotation_due(now);
            }
        }
    }

    /// Rotate now (SIGUSR1): as soon as every session is between frames.
    pub fn rotate_soon(&mut self, now: u64) {
        for out in self.outputs.values_mut() {
            out.writer.rotation_due(now);
        }
    }

    /// Called at least every flush interval: flushes, starts interval rotations, rotates
    /// idle outputs that are due, and retries after a write error.
    pub fn tick(&mut self, now: u64, stats: &Stats) {
        let keys: Vec<u64> = self.outputs.keys().copied().collect();
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
                if let Err(e) = w.flush() {
                    self.write_failed(key, &e, now, stats);
                }
            }
        }
    }

    /// Makes a rotation due when `now` is in a later interval than the file's start
    /// (boundaries at wall-clock multiples of the interval, as dumpcap's `interval:`).
    fn check_interval(&mut self, key: u64, now: u64) {
        let Some(iv) = self.settings.rotate.interval.filter(|_| !self.settings.per_session) else { return };
        let iv = iv.as_nanos() as u64;
        if let Some(out) = self.outputs.get_mut(&key) {
            if now / iv != out.opened_at / iv {
                out.writer.rotation_due(now);
            }
        }
    }

    /// Starts the output's next file (rotation, first file, or resumption), finishing the
    /// previous one.
    fn open_next(&mut self, key: u64, now: u64, stats: &Stats) {
        let Some(out) = self.outputs.get_mut(&key) else { return };
        match self.files.create(ns_to_time(now.max(1)), out.label.as_deref()) {
            Ok((file, w)) => {
                let old = out.writer.rotate(w, stats);
                let old_file = out.file.replace(file);
                out.opened_at = now;
                // A new file is a valid capture from its first moment (a crash right
                // after rotating leaves a file tshark opens): header and replay go out now.
                if let Some(Err(e)) = out.writer.get_mut().map(Write::flush) {
                    self.write_failed(key, &e, now, stats);
                    return;
                }
                match old {
                    Ok(old_w) => {
                        if let (Some(f), Some(w)) = (old_file, old_w) {
                            self.finish_file(f, w, stats);
                        }
                    }
                    Err(e) => self.write_failed(key, &e, now, stats),
                }
                if self.failing {
                    self.failing = false;
                    info!(dir = %self.settings.dir.display(), "capture resumed");
                }
            }
            Err(e) => {
                if let Some(w) = out.writer.lose_output() {
                    if let Some(f) = out.file.take() {
                        self.finish_file(f, w, stats);
                    }
                }
                self.episode(&e, now, "cannot create a capture file", stats);
            }
        }
    }

    /// Finishes the output's current file without starting another.
    fn finish_current(&mut self, key: u64, now: u64, stats: &Stats) {
        let Some(out) = self.outputs.get_mut(&key) else { return };
        out.writer.rotation_done();
        match out.writer.finish(stats) {
            Ok(Some(w)) => {
                if let Some(f) = out.file.take() {
                    self.finish_file(f, w, stats);
                }
            }
            Ok(None) => {}
            Err(e) => self.write_failed(key, &e, now, stats),
        }
    }

    fn finish_file(&self, f: OpenFile, w: Counted, stats: &Stats) {
        let part = f.part.clone();
        match self.files.finish(f, w) {
            Ok(path) => {
                stats.files_finished.fetch_add(1, Relaxed);
                info!(path = %path.display(), "capture file finished");
            }
            Err(e) => warn!(path = %part.display(), error = %e, "cannot finish a capture file"),
        }
    }

    fn write_failed(&mut self, key: u64, e: &io::Error, now: u64, stats: &Stats) {
        stats.write_errors.fetch_add(1, Relaxed);
        if let Some(out) = self.outputs.get_mut(&key) {
            // The bytes in the buffer are lost with the file; keep what reached the disk.
            if let (Some(_), Some(f)) = (out.writer.lose_output(), out.file.take()) {
                let _ = fs::rename(&f.part, &f.path);
            }
        }
        self.episode(e, now, "capture write failed", stats);
    }

    /// Logs the first error of an episode; capture drops until the next file opens.
    fn episode(&mut self, e: &io::Error, now: u64, what: &str, stats: &Stats) {
        if !self.failing {
            stats.error_episodes.fetch_add(1, Relaxed);
            error!(dir = %self.settings.dir.display(), error = %e, "{what}; capture is dropped (traffic is not affected) until a file can be written");
        }
        self.failing = true;
        self.retry_at = now + RETRY_AFTER.as_nanos() as u64;
    }

    fn close_output(&mut self, key: u64, stats: &Stats) {
        if let Some(mut out) = self.outputs.remove(&key) {
            match out.writer.finish(stats) {
                Ok(Some(w)) => {
                    if let Some(f) = out.file.take() {
                        self.finish_file(f, w, stats);
                    }
                }
                Ok(None) => {}
                Err(e) => self.write_failed(key, &e, 0, stats),
            }
        }
    }

    /// Clean shutdown: every file flushed, synced, closed and renamed.
    pub fn finish(&mut self, stats: &Stats) {
        let keys: Vec<u64> = self.outputs.keys().copied().collect();
        for key in keys {
            self.close_output(key, stats);
        }
    }
}

/// A label made safe for a file name.
fn sanitize(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sequence_numbers() {
        let mut s = CaptureSettings::in_dir(std::env::temp_dir().join(format!("wstap-files-{}", std::process::id())));
        s.prefix = "cap".into();
        let _ = fs::remove_dir_all(&s.dir);
        let mut set = FileSet::new(&s);
        assert_eq!(set.seq_of("cap_00042_20261124181500.pcapng"), Some(42));
        assert_eq!(set.seq_of("cap_00042_20261124181500.pcapng.part"), Some(42));
        assert_eq!(set.seq_of("other_00042_20261124181500.pcapng"), None);
        assert_eq!(set.seq_of("cap_42_x.pcapng"), None);
        let t = UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        let (f, w) = set.create(t, None).unwrap();
        assert_eq!(f.part.file_name().unwrap(), "cap_00001_20251124160000.pcapng.part");
        set.finish(f, w).unwrap();
        // A new set (a restart) goes on from the highest number present.
        let mut again = FileSet::new(&s);
        let (f, _) = again.create(t, Some("client")).unwrap();
        assert_eq!(f.part.file_name().unwrap(), "cap_00002_20251124160000_client.pcapng.part");
        fs::remove_dir_all(&s.dir).unwrap();
    }

    #[test]
    fn the_ring_keeps_the_newest_files_and_modes_apply() {
        let mut s = CaptureSettings::in_dir(std::env::temp_dir().join(format!("wstap-ring-{}", std::process::id())));
        s.rotate.files = 2;
        let _ = fs::remove_dir_all(&s.dir);
        let mut set = FileSet::new(&s);
        let t = UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        for _ in 0..4 {
            let (f, w) = set.create(t, None).unwrap();
            set.finish(f, w).unwrap();
        }
        let mut left: Vec<String> =
            fs::read_dir(&s.dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["wstap_00003_20251124160000.pcapng", "wstap_00004_20251124160000.pcapng"]);
        use std::os::unix::fs::PermissionsExt;
        let file_mode = fs::metadata(s.dir.join(&left[0])).unwrap().permissions().mode() & 0o777;
        let dir_mode = fs::metadata(&s.dir).unwrap().permissions().mode() & 0o777;
        assert_eq!((file_mode, dir_mode), (0o640 & !umask(), 0o750 & !umask()));
        fs::remove_dir_all(&s.dir).unwrap();
    }

    #[test]
    fn a_symlink_at_the_target_is_not_followed() {
        let s = CaptureSettings::in_dir(std::env::temp_dir().join(format!("wstap-link-{}", std::process::id())));
        let _ = fs::remove_dir_all(&s.dir);
        fs::create_dir_all(&s.dir).unwrap();
        let victim = s.dir.join("victim");
        fs::write(&victim, b"keep me").unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        std::os::unix::fs::symlink(&victim, s.dir.join("wstap_00001_20251124160000.pcapng.part")).unwrap();
        let mut set = FileSet::new(&s);
        set.next_seq = Some(1);
        assert!(set.create(t, None).is_err(), "an existing name (a symlink) is never opened");
        assert_eq!(fs::read(&victim).unwrap(), b"keep me");
        fs::remove_dir_all(&s.dir).unwrap();
    }

    fn umask() -> u32 {
        // The test process's umask, read without changing it.
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            .unwrap_or(0o022)
    }
}
