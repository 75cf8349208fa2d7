//! What became of each finished file of a capture directory, kept in the directory
//! itself (`.wstap-uploads`, a line per file: `stored NAME`, `dropped NAME` or
//! `conflict NAME`), so that a start finds the files still to store: the finished files
//! the journal does not name. Each line is synced before the file counts as settled; a
//! line lost in a crash only means the file is looked at again, and one already stored
//! with the same content is then recognised, not stored twice.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The journal's file name in a capture directory.
pub(super) const NAME: &str = ".wstap-uploads";

/// What became of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settled {
    /// Stored and verified.
    Stored,
    /// Dropped from the backlog (`max_backlog`).
    Dropped,
    /// A different object has its key: it is left alone, and so is the file.
    Conflict,
}

impl Settled {
    fn word(self) -> &'static str {
        match self {
            Settled::Stored => "stored",
            Settled::Dropped => "dropped",
            Settled::Conflict => "conflict",
        }
    }
}

/// Appends a line for the file at `path` to its directory's journal, and syncs it.
pub(super) fn record(path: &Path, what: Settled) -> io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return Ok(()) };
    let mut journal = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join(NAME))?;
    journal.write_all(format!("{} {}\n", what.word(), name.to_string_lossy()).as_bytes())?;
    journal.sync_data()
}

/// The finished capture files of `dir` (of the ring `prefix` names:
/// `PREFIX_NNNNN_….pcapng`) the journal does not name, with their sizes and
/// modification times, oldest first; the journal is rewritten to name only files still
/// there, so it stays as long as the directory's list. A file that goes while the
/// directory is read (the ring trimmed it) is passed over.
pub(super) fn unsettled(dir: &Path, prefix: &str) -> io::Result<Vec<(PathBuf, u64, SystemTime)>> {
    let journal = dir.join(NAME);
    let text = match fs::read_to_string(&journal) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let settled: HashSet<&str> = text.lines().filter_map(|l| l.split_once(' ').map(|(_, name)| name)).collect();
    let mut present = HashSet::new();
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)?.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = entry.metadata() else { continue };
        if !of_ring(&name, prefix) || !meta.is_file() {
            continue;
        }
        if settled.contains(name.as_str()) {
            present.insert(name);
        } else {
            found.push((entry.path(), meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        }
    }
    found.sort_by_key(|(path, _, modified)| (*modified, path.clone()));
    let kept: String = text
        .lines()
        .filter(|l| l.split_once(' ').is_some_and(|(_, name)| present.contains(name)))
        .map(|l| format!("{l}\n"))
        .collect();
    if kept.len() != text.len() {
        rewrite(&journal, &kept)?;
    }
    Ok(found)
}

/// Whether `name` is a finished file of the ring `prefix` names.
fn of_ring(name: &str, prefix: &str) -> bool {
    let rest = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('_'));
    let seq = rest.and_then(|r| r.get(..6));
    name.ends_with(".pcapng") && seq.is_some_and(|s| s.ends_with('_') && s[..5].bytes().all(|b| b.is_ascii_digit()))
}

/// Replaces the journal with `text`, whole or not at all.
fn rewrite(journal: &Path, text: &str) -> io::Result<()> {
    let tmp = journal.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()?;
    fs::rename(&tmp, journal)?;
    if let Some(dir) = journal.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_finds_the_files_not_yet_settled_and_the_journal_keeps_only_present_ones() {
        let dir = std::env::temp_dir().join(format!("wstap-journal-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let [a, b, c] = ["w_00001_x.pcapng", "w_00002_x.pcapng", "w_00003_x.pcapng"];
        for name in [a, b, c, "w_00004_x.pcapng.part", "notes.txt", "carved.pcapng", "other_00001_x.pcapng"] {
            fs::write(dir.join(name), name).unwrap();
        }
        record(&dir.join(a), Settled::Stored).unwrap();
        record(&dir.join("w_00000_gone.pcapng"), Settled::Dropped).unwrap();
        record(&dir.join(c), Settled::Conflict).unwrap();
        let found: Vec<PathBuf> = unsettled(&dir, "w").unwrap().into_iter().map(|(p, ..)| p).collect();
        assert_eq!(found, [dir.join(b)], "only this ring's finished files not yet settled");
        assert_eq!(fs::read_to_string(dir.join(NAME)).unwrap(), format!("stored {a}\nconflict {c}\n"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
