//! The capture files on disk: [`FileSet`] names files
//! (`<prefix>_<seq>_<YYYYmmddHHMMSS>.pcapng`, the sequence going on across restarts), keeps
//! them `.part` until finished, applies the ring-buffer limit, creates them with the
//! configured mode and never follows a symlink. A file that cannot be finished (a write
//! error, a crash) gets its final name only if it holds a packet, cut to its last whole
//! block; an empty or unreadable one is deleted, so the ring only ever counts captures.
//!
//! Files end on a thread of their own ([`Finisher`]): an fsync can take seconds on a busy
//! disk, and on the writer's thread it would hold up every event queued behind it (and a
//! crash meanwhile would lose them all).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::SystemTime;

use tracing::{info, warn};

use super::direct::DirectFile;

use crate::capture::outbox::Outbox;
use crate::config::CaptureSettings;

/// Mode of a capture directory wstap creates.
const DIR_MODE: u32 = 0o750;

/// A file being written, counting its bytes.
pub struct Counted {
    inner: Out,
    pub(crate) written: u64,
    /// When a direct file's buffer last went out (`None`: not yet).
    flushed: Option<wstap_wire::Timestamp>,
}

/// How a file is written: around the page cache where the filesystem allows it
/// (`capture.direct_io`), else buffered.
enum Out {
    Direct(DirectFile),
    Buffered(BufWriter<File>),
}

impl Counted {
    fn new(inner: Out) -> Counted {
        Counted { inner, written: 0, flushed: None }
    }

    /// The flush after a batch of events, at `now`: a buffered file's buffer goes to the
    /// kernel each time. A direct file's goes out (each time a write to the disk; its
    /// whole buffers go out as they fill anyway) the first time, then once `interval`
    /// has passed, or when the writer is `idle` (no event since the last tick), so that
    /// a trickle waits about one interval at most. A clock set back counts as due.
    pub(crate) fn flush_due(
        &mut self,
        now: wstap_wire::Timestamp,
        interval: std::time::Duration,
        idle: bool,
    ) -> io::Result<()> {
        if let Out::Direct(_) = self.inner {
            let waits = |at: wstap_wire::Timestamp| now >= at && now < at.after(interval);
            if !idle && self.flushed.is_some_and(waits) {
                return Ok(());
            }
            self.flushed = Some(now);
        }
        self.flush()
    }

    /// Writes out what is buffered, and hands back the file to be synced and closed.
    fn into_file(self) -> io::Result<File> {
        match self.inner {
            Out::Direct(d) => d.into_inner(),
            Out::Buffered(b) => b.into_inner().map_err(io::IntoInnerError::into_error),
        }
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.inner {
            Out::Direct(d) => d.write(buf)?,
            Out::Buffered(b) => b.write(buf)?,
        };
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Out::Direct(d) => d.flush(),
            Out::Buffered(b) => b.flush(),
        }
    }
}

/// The files of one capture directory and prefix.
pub struct FileSet {
    ring: Ring,
    mode: u32,
    /// `capture.direct_io`.
    direct: bool,
    /// The `.part` files this process has open, by device and inode (a directory can be
    /// spelled many ways): never mistaken for a crash's leftovers.
    open: HashSet<(u64, u64)>,
    finisher: Finisher,
}

/// Which files form the ring, and how many finished ones it keeps.
#[derive(Clone)]
struct Ring {
    dir: PathBuf,
    prefix: String,
    /// Finished files to keep; 0 = all.
    keep: usize,
    next_seq: Option<u32>,
    /// Where finished files are handed on; the files it holds are not deleted.
    outbox: Option<Arc<Outbox>>,
}

/// An open `.part` file and the name it gets when finished.
pub(crate) struct OpenFile {
    pub(crate) part: PathBuf,
    pub(crate) path: PathBuf,
    /// Device and inode.
    id: (u64, u64),
    /// The ring it was created in (a reload may move the directory before it ends).
    ring: Ring,
}

impl OpenFile {
    /// The ring to trim when it ends: the current one (its latest sequence number) if
    /// the file is in it, else the one it was created in.
    fn ring_now(&self, current: &Ring) -> Ring {
        match self.ring.dir == current.dir && self.ring.prefix == current.prefix {
            true => current.clone(),
            false => self.ring.clone(),
        }
    }
}

impl FileSet {
    pub fn new(s: &CaptureSettings) -> FileSet {
        FileSet {
            ring: Ring {
                dir: s.dir.clone(),
                prefix: s.prefix.clone(),
                keep: s.rotate.files,
                next_seq: None,
                outbox: None,
            },
            mode: s.file_mode,
            direct: s.direct_io,
            open: HashSet::new(),
            finisher: Finisher::start(),
        }
    }

    /// New settings (a reload). Files open now stay open and `.part`; the sequence goes
    /// on unless the directory or prefix changed (then the new one is scanned, once the
    /// files being finished have their final names).
    pub fn reconfigure(&mut self, s: &CaptureSettings) {
        let r = &mut self.ring;
        if s.dir != r.dir || s.prefix != r.prefix {
            r.next_seq = None;
            self.finisher.settle();
        }
        r.dir = s.dir.clone();
        r.prefix = s.prefix.clone();
        r.keep = s.rotate.files;
        self.mode = s.file_mode;
        self.direct = s.direct_io;
    }

    /// Hands each file, once finished, to `outbox`.
    pub(crate) fn ship_to(&mut self, outbox: Arc<Outbox>) {
        self.ring.outbox = Some(outbox);
    }

    /// Creates the directory if needed; on first use, finds the next sequence number and
    /// finishes `.part` files a crashed run left behind (see [`salvage`]).
    fn prepare(&mut self) -> io::Result<()> {
        let r = &mut self.ring;
        if !r.dir.is_dir() {
            fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(&r.dir)?;
        }
        if r.next_seq.is_some() {
            return Ok(());
        }
        // Files being finished are ours, not a crash's: let them get their names first.
        self.finisher.settle();
        let mut max = 0;
        for entry in fs::read_dir(&r.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(seq) = r.seq_of(&name) {
                max = max.max(seq);
                let part = r.dir.join(&name);
                let ours = fs::symlink_metadata(&part).is_ok_and(|m| self.open.contains(&(m.dev(), m.ino())));
                if name.ends_with(".part") && !ours && salvage(&part, Salvaged::LeftOpen) {
                    r.handed_on(&part.with_extension(""));
                }
            }
        }
        r.next_seq = Some(max + 1);
        Ok(())
    }

    /// Opens the next file of the ring, as `.part`. `label` (per-session files) is added
    /// to the name.
    pub(crate) fn create(&mut self, now: SystemTime, label: Option<&str>) -> io::Result<(OpenFile, Counted)> {
        self.prepare()?;
        let r = &mut self.ring;
        let seq = r.next_seq.unwrap_or(1);
        r.next_seq = Some(if seq >= 99_999 { 1 } else { seq + 1 });
        let mut name = format!("{}_{seq:05}_{}", r.prefix, timestamp(now));
        if let Some(l) = label {
            name.push('_');
            name.push_str(l);
        }
        let path = r.dir.join(format!("{name}.pcapng"));
        let part = r.dir.join(format!("{name}.pcapng.part"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(self.mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&part)?;
        let meta = file.metadata()?;
        let id = (meta.dev(), meta.ino());
        self.open.insert(id);
        let direct = match self.direct {
            // A filesystem that refuses O_DIRECT gets buffered writes.
            true => file.try_clone().and_then(|plain| DirectFile::open(&part, plain)).ok(),
            false => None,
        };
        let inner = match direct {
            Some(d) => Out::Direct(d),
            None => Out::Buffered(BufWriter::with_capacity(256 * 1024, file)),
        };
        Ok((OpenFile { part, path, id, ring: self.ring.clone() }, Counted::new(inner)))
    }

    /// Writes out what the file's buffer holds, then hands it to the finisher: synced,
    /// renamed to its final name, the ring trimmed. A write error here gives the file up
    /// ([`FileSet::give_up`]); one in the finisher is logged there and salvages the file.
    pub(crate) fn finish(&mut self, f: OpenFile, w: Counted) -> io::Result<()> {
        match w.into_file() {
            Ok(file) => {
                self.open.remove(&f.id);
                let ring = f.ring_now(&self.ring);
                self.finisher.send(Job::Finish { file, f, ring });
                Ok(())
            }
            Err(e) => {
                self.give_up(f);
                Err(e)
            }
        }
    }

    /// A file that failed: what reached the disk is kept under the final name if it holds
    /// a packet (cut to its last whole block), else deleted.
    pub(crate) fn give_up(&mut self, f: OpenFile) {
        self.open.remove(&f.id);
        let ring = f.ring_now(&self.ring);
        self.finisher.send(Job::GiveUp { f, ring });
    }

    /// Files finished (renamed to their final names) since the last call.
    pub(crate) fn finished(&self) -> u64 {
        self.finisher.finished.swap(0, Relaxed)
    }

    /// Waits until every file handed over so far has ended.
    pub(crate) fn settle(&self) {
        self.finisher.settle();
    }
}

impl Ring {
    /// The sequence number in a file name of this set, if it is one.
    fn seq_of(&self, name: &str) -> Option<u32> {
        let rest = name.strip_prefix(&self.prefix)?.strip_prefix('_')?;
        let (seq, rest) = rest.split_once('_')?;
        (seq.len() == 5 && rest.contains(".pcapng")).then(|| seq.parse().ok()).flatten()
    }

    /// Hands a file that got its final name on, if there is an outbox.
    fn handed_on(&self, path: &Path) {
        if let Some(outbox) = &self.outbox {
            outbox.finished(path);
        }
    }

    /// Deletes the oldest finished files beyond the ring's size, but for those the
    /// outbox holds (still to be uploaded).
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
                let held = self.outbox.as_ref().is_some_and(|o| o.is_held(&e.path()));
                (!held).then(|| (seq, e.path()))
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

/// What the finisher does, in the order it was asked.
enum Job {
    /// Sync, rename to the final name, sync the directory, trim the ring.
    Finish { file: File, f: OpenFile, ring: Ring },
    /// Salvage a file that failed ([`salvage`]), trim the ring.
    GiveUp { f: OpenFile, ring: Ring },
    /// Answer once every earlier job is done.
    Settle(mpsc::SyncSender<()>),
    /// For tests: a disk that takes its time (waits until told).
    #[cfg(test)]
    Stall(mpsc::Receiver<()>),
}

/// Files handed over waiting to end, at most: past that the writer waits for the disk
/// (as it would have without a finisher), so open descriptors stay bounded.
const FINISH_QUEUE: usize = 64;

/// The thread that ends files. Dropping it waits for every file handed over.
struct Finisher {
    jobs: Option<mpsc::SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    finished: Arc<AtomicU64>,
}

impl Finisher {
    fn start() -> Finisher {
        let (jobs, queue) = mpsc::sync_channel(FINISH_QUEUE);
        let finished = Arc::new(AtomicU64::new(0));
        let count = finished.clone();
        let thread = std::thread::Builder::new()
            .name("wstap-finisher".into())
            .spawn(move || queue.into_iter().for_each(|job| run(job, &count)))
            .ok();
        Finisher { jobs: thread.is_some().then_some(jobs), thread, finished }
    }

    /// Queues a job, or (no thread could be started) does it here.
    fn send(&self, job: Job) {
        let job = match &self.jobs {
            Some(jobs) => match jobs.send(job) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        run(job, &self.finished);
    }

    fn settle(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        if let Some(jobs) = &self.jobs {
            if jobs.send(Job::Settle(done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(job: Job, finished: &AtomicU64) {
    match job {
        Job::Finish { file, f, ring } => {
            if end(file, &f, &ring) {
                finished.fetch_add(1, Relaxed);
            }
        }
        Job::GiveUp { f, ring } => {
            if salvage(&f.part, Salvaged::AfterWriteError) {
                ring.handed_on(&f.path);
                ring.trim();
            }
        }
        Job::Settle(done) => {
            let _ = done.send(());
        }
        #[cfg(test)]
        Job::Stall(until) => {
            let _ = until.recv();
        }
    }
}

/// Syncs `file`, gives it its final name and trims the ring; on an error the file is
/// salvaged. Returns whether it got its final name whole.
fn end(file: File, f: &OpenFile, ring: &Ring) -> bool {
    let synced = file.sync_all();
    drop(file);
    let done = synced.and_then(|()| fs::rename(&f.part, &f.path));
    match done {
        Ok(()) => {
            if let Ok(dir) = File::open(&ring.dir) {
                let _ = dir.sync_all();
            }
            info!(path = %f.path.display(), "capture file finished");
            ring.handed_on(&f.path);
            ring.trim();
            true
        }
        Err(e) => {
            warn!(path = %f.part.display(), error = %e, "cannot finish a capture file");
            if salvage(&f.part, Salvaged::AfterWriteError) {
                ring.handed_on(&f.path);
                ring.trim();
            }
            false
        }
    }
}

/// Why a `.part` file is finished as it stands.
#[derive(Debug, Clone, Copy)]
enum Salvaged {
    /// An earlier run left it open (it was killed, or crashed).
    LeftOpen,
    /// Writing it failed.
    AfterWriteError,
}

impl std::fmt::Display for Salvaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Salvaged::LeftOpen => "left open by an earlier run",
            Salvaged::AfterWriteError => "after a write error",
        })
    }
}

/// Finishes a `.part` file that cannot be written on: if its whole blocks hold at least one
/// packet, it is cut after the last of them and renamed to its final name; otherwise it
/// is deleted (an empty file must not take a real capture's place in the ring). Returns
/// whether a file was kept.
fn salvage(part: &Path, why: Salvaged) -> bool {
    let finished = part.with_extension("");
    let kept = (|| {
        let file = OpenOptions::new().write(true).read(true).custom_flags(libc::O_NOFOLLOW).open(part)?;
        let len = file.metadata()?.len();
        let header = |at: u64| {
            let mut h = [0u8; 8];
            file.read_exact_at(&mut h, at).ok().map(|()| h)
        };
        let whole = wstap_wire::pcapng::whole_blocks(header, len);
        if whole.packets == 0 {
            return Ok::<_, io::Error>(false);
        }
        file.set_len(whole.len)?;
        file.sync_all()?;
        fs::rename(part, &finished)?;
        Ok(true)
    })();
    match kept {
        Ok(true) => {
            warn!(file = %finished.display(), "finished a capture file {why}");
            true
        }
        Ok(false) => {
            match fs::remove_file(part) {
                Ok(()) => warn!(file = %part.display(), "deleted a capture file {why}: it held no packet"),
                Err(e) => warn!(file = %part.display(), error = %e, "cannot delete an empty capture file"),
            }
            false
        }
        // Not known to be empty: left as it is, `.part`, for the next start to try again.
        Err(e) => {
            warn!(file = %part.display(), error = %e, "cannot finish a capture file {why}; left as .part");
            false
        }
    }
}

/// `YYYYmmddHHMMSS` in UTC.
fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string().chars().filter(char::is_ascii_digit).collect()
}

/// A label made safe for a file name.
pub(crate) fn sanitize(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn names_and_sequence_numbers() {
        let mut s = CaptureSettings::in_dir(std::env::temp_dir().join(format!("wstap-files-{}", std::process::id())));
        s.prefix = "cap".into();
        let _ = fs::remove_dir_all(&s.dir);
        let mut set = FileSet::new(&s);
        assert_eq!(set.ring.seq_of("cap_00042_20261124181500.pcapng"), Some(42));
        assert_eq!(set.ring.seq_of("cap_00042_20261124181500.pcapng.part"), Some(42));
        assert_eq!(set.ring.seq_of("other_00042_20261124181500.pcapng"), None);
        assert_eq!(set.ring.seq_of("cap_42_x.pcapng"), None);
        let t = UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        let (f, w) = set.create(t, None).unwrap();
        assert_eq!(f.part.file_name().unwrap(), "cap_00001_20251124160000.pcapng.part");
        set.finish(f, w).unwrap();
        set.settle();
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
        set.settle();
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
    fn a_slow_disk_holds_up_the_finisher_not_the_writer() {
        let s = CaptureSettings::in_dir(std::env::temp_dir().join(format!("wstap-slow-{}", std::process::id())));
        let _ = fs::remove_dir_all(&s.dir);
        let mut set = FileSet::new(&s);
        let t = UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        let (f, mut w) = set.create(t, None).unwrap();
        let (go, until) = mpsc::sync_channel(1);
        set.finisher.send(Job::Stall(until));
        w.write_all(b"written before the hand-over").unwrap();
        let (part, path) = (f.part.clone(), f.path.clone());
        set.finish(f, w).unwrap();
        // The writer goes on at once; its bytes are in the file, which is not yet renamed.
        assert_eq!(fs::read(&part).unwrap(), b"written before the hand-over");
        assert!(!path.exists());
        assert_eq!(set.finished(), 0);
        go.send(()).unwrap();
        set.settle();
        assert!(path.exists() && !part.exists());
        assert_eq!(set.finished(), 1);
        fs::remove_dir_all(&s.dir).unwrap();
    }

    #[test]
    fn a_reload_that_spells_the_directory_differently_leaves_the_open_file_alone() {
        let s = CaptureSettings::in_dir(std::env::temp_dir().join(format!("wstap-spell-{}", std::process::id())));
        let _ = fs::remove_dir_all(&s.dir);
        let mut set = FileSet::new(&s);
        let t = UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        let (f, _w) = set.create(t, None).unwrap();
        let mut respelled = s.clone();
        respelled.dir = s.dir.join("..").join(s.dir.file_name().unwrap());
        set.reconfigure(&respelled);
        // The next file scans the "new" directory for leftovers: its own open file is not one.
        let (g, _w) = set.create(t, None).unwrap();
        assert!(f.part.exists(), "the open file is still .part");
        assert_eq!(g.part.file_name().unwrap(), "wstap_00002_20251124160000.pcapng.part");
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
        set.ring.next_seq = Some(1);
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
