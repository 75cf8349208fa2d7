//! The key log file's rules (`capture.tls_keylog`). A file that receives every TLS
//! connection's keys must be a regular file, of the user wstap runs as, that no one else
//! may read or write, and named without a symlink. The rules are judged on metadata: by
//! `wstap check` (and every config load) on the path, without opening or creating
//! anything, and by the daemon on the file it has opened (`fstat`), so that nothing can be
//! swapped in between. Nothing here changes a file: one that breaks a rule is refused,
//! with how to fix it.

use std::fmt;
use std::fs::{FileType, Metadata};
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the key log file cannot be used. Each says what is wrong and how to fix it; the
/// caller puts the key and the path in front.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The path is a symbolic link (never followed there).
    #[error("is a symbolic link, which wstap does not follow there: name the file itself")]
    Symlink,
    /// Something other than a regular file is there (a FIFO, a directory, a device…).
    #[error("is {0}, not a regular file: remove it, or name another path")]
    NotAFile(&'static str),
    /// The file belongs to another user.
    #[error("is owned by uid {owner}, not by the user wstap runs as (uid {own}): remove it, or name another path")]
    NotOurs {
        /// Its owner.
        owner: u32,
        /// The user wstap runs as.
        own: u32,
    },
    /// Group or others may read or write it.
    #[error(
        "can be read or written by group or others (mode {mode:04o}): remove it and wstap creates it anew with mode \
         0600 (wstap does not change the mode itself: whoever opened it already would go on reading keys)"
    )]
    Exposed {
        /// Its permission bits.
        mode: u32,
    },
    /// Nothing is there and its directory does not exist.
    #[error("is not a file in an existing directory")]
    NoDirectory,
    /// Opening or examining it failed.
    #[error("cannot be opened: {0}")]
    Io(#[from] std::io::Error),
}

/// The permission bits that give group or others read or write access.
const SHARED_ACCESS: u32 = 0o066;

/// Judges an open file's (or a path's own, not followed) metadata against every rule;
/// `own` is the user wstap runs as.
pub fn judge(meta: &Metadata, own: u32) -> Result<(), Refusal> {
    judge_kind(meta.file_type())?;
    if meta.uid() != own {
        return Err(Refusal::NotOurs { owner: meta.uid(), own });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & SHARED_ACCESS != 0 {
        return Err(Refusal::Exposed { mode });
    }
    Ok(())
}

/// A symlink, or anything but a regular file, is refused.
fn judge_kind(kind: FileType) -> Result<(), Refusal> {
    match kind {
        k if k.is_symlink() => Err(Refusal::Symlink),
        k if k.is_file() => Ok(()),
        k if k.is_fifo() => Err(Refusal::NotAFile("a FIFO (named pipe)")),
        k if k.is_dir() => Err(Refusal::NotAFile("a directory")),
        k if k.is_socket() => Err(Refusal::NotAFile("a socket")),
        k if k.is_char_device() || k.is_block_device() => Err(Refusal::NotAFile("a device")),
        _ => Err(Refusal::NotAFile("something else")),
    }
}

/// `wstap check`'s judgement of `path`: what is there, not followed and not opened; when
/// nothing is, whether its directory exists (the daemon will create the file).
pub fn check(path: &Path) -> Result<(), Refusal> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => judge(&meta, own_uid()?),
        Err(e) if e.kind() == ErrorKind::NotFound => match directory(path).is_dir() {
            true => Ok(()),
            false => Err(Refusal::NoDirectory),
        },
        Err(e) => Err(Refusal::Io(e)),
    }
}

/// Why opening `path` failed with `error`, in the rules' words when what is there breaks
/// one (`O_NOFOLLOW` on a symlink fails with `ELOOP`; a FIFO without a reader, opened
/// with `O_NONBLOCK`, with `ENXIO`; a directory with `EISDIR`).
pub fn explain(path: &Path, error: std::io::Error) -> Refusal {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => judge_kind(meta.file_type()).err().unwrap_or(Refusal::Io(error)),
        Err(e) if e.kind() == ErrorKind::NotFound && !directory(path).is_dir() => Refusal::NoDirectory,
        Err(_) => Refusal::Io(error),
    }
}

/// The directory the file is (or will be) in.
fn directory(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The user wstap runs as: its effective uid, read from `/proc/self/status` (the crate
/// has no unsafe code to call `geteuid`).
pub fn own_uid() -> Result<u32, Refusal> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"));
    // Real, effective, saved, file system: the effective one owns what wstap creates.
    uids.and_then(|u| u.split_whitespace().nth(1)?.parse().ok())
        .ok_or_else(|| Refusal::Io(std::io::Error::other("/proc/self/status has no Uid line")))
}

/// The key log's directory can be written by anyone: another user can take the file's
/// name first (a FIFO, a symlink, a file of their own, each of which wstap refuses) and,
/// without the sticky bit, also remove or replace the key log itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDirectory {
    /// The directory.
    pub dir: PathBuf,
    /// Its permission bits.
    pub mode: u32,
}

/// The sticky bit: only a file's owner may remove or rename it.
const STICKY: u32 = 0o1000;

impl fmt::Display for SharedDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (dir, mode) = (self.dir.display(), self.mode);
        match mode & STICKY {
            0 => write!(
                f,
                "its directory {dir} can be written by anyone (mode {mode:04o}, no sticky bit): another user can remove \
                 or replace the key log, or put a FIFO or symlink in its place; keep it in a directory only wstap's \
                 user can write"
            ),
            _ => write!(
                f,
                "its directory {dir} can be written by anyone (mode {mode:04o}): another user can take the key log's \
                 name first, and wstap then refuses to start; keep it in a directory only wstap's user can write"
            ),
        }
    }
}

/// Whether the directory of `path` can be written by anyone (a warning, not a refusal).
pub fn shared_directory(path: &Path) -> Option<SharedDirectory> {
    let dir = directory(path);
    let mode = std::fs::metadata(dir).ok()?.permissions().mode() & 0o7777;
    (mode & 0o002 != 0).then(|| SharedDirectory { dir: dir.to_owned(), mode })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn each_rule_is_judged_on_the_path_without_creating_anything() {
        let dir = std::env::temp_dir().join(format!("wstap-keylog-rules-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = dir.join("keys.log");
        assert!(check(&path).is_ok(), "nothing there yet, in an existing directory");
        assert!(!path.exists(), "check creates nothing");
        assert!(matches!(check(&dir.join("no/keys.log")), Err(Refusal::NoDirectory)));
        assert_eq!(shared_directory(&path), None);

        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check(&path).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(check(&path), Err(Refusal::Exposed { mode: 0o640 })));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640, "the mode is left alone");

        let link = dir.join("link.log");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(check(&link), Err(Refusal::Symlink)));
        assert!(matches!(check(&dir), Err(Refusal::NotAFile("a directory"))));

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let shared = shared_directory(&path).expect("a world-writable directory is said");
        assert!(shared.to_string().contains("mode 1777") && shared.to_string().contains("take the key log's name"));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(shared_directory(&path).unwrap().to_string().contains("no sticky bit"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_owner_is_the_effective_user() {
        let own = own_uid().unwrap();
        let mine = std::fs::metadata("/proc/self").unwrap().uid();
        assert_eq!(own, mine);
    }
}
