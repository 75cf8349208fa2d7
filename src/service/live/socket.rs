//! The live stream's listening socket: a TCP address, or a unix socket whose file gets
//! `live.mode` and `live.group`. A file left at the socket's path is replaced only if it
//! is a socket no one listens on; the file is removed when the listener goes (a reload
//! that moves it, the daemon's end), if it is still the one bound.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};

use crate::config::{LiveListen, Settings, SocketAccess};
use crate::service::error::DaemonError;

/// A bound live-stream socket, not yet listened on by anyone.
pub(crate) enum LiveSocket {
    /// `live.listen = "host:port"`.
    Tcp(TcpListener),
    /// `live.listen = "unix:/path"`, and its file.
    Unix(UnixListener, SocketFile),
}

/// Binds the stream `settings` describe (key `live.listen` in `source`'s file).
pub(crate) fn bind(settings: &Settings) -> Result<Option<LiveSocket>, DaemonError> {
    let Some(live) = &settings.live else { return Ok(None) };
    let file = settings.source.clone();
    match &live.listen {
        LiveListen::Tcp(addr) => {
            let bind = || {
                let l = std::net::TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            };
            let listener =
                bind().map_err(|error| DaemonError::Listen { addr: *addr, key: "live.listen", file, error })?;
            Ok(Some(LiveSocket::Tcp(listener)))
        }
        LiveListen::Unix(path) => {
            let access = live.socket.unwrap_or(SocketAccess { mode: 0o600, group: None });
            let (listener, socket_file) = bind_unix(path, access).map_err(|error| DaemonError::ListenUnix {
                path: path.clone(),
                key: "live.listen",
                file,
                error,
            })?;
            Ok(Some(LiveSocket::Unix(listener, socket_file)))
        }
    }
}

fn bind_unix(path: &Path, access: SocketAccess) -> io::Result<(UnixListener, SocketFile)> {
    remove_stale(path)?;
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    // Until its mode is set the file has the umask's; the user rule holds meanwhile.
    let file = SocketFile::of(path)?;
    set_access(path, access)?;
    listener.set_nonblocking(true)?;
    Ok((UnixListener::from_std(listener)?, file))
}

/// Removes what is at `path` if it is a socket no one listens on (left by a daemon that
/// did not stop cleanly); anything else there is an error.
fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "a file that is not a socket is there"));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(io::ErrorKind::AddrInUse, "another process listens on it"));
    }
    std::fs::remove_file(path)
}

/// Gives the socket file at `path` its mode and group.
pub(crate) fn set_access(path: &Path, access: SocketAccess) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.mode))?;
    match access.group {
        Some(gid) => std::os::unix::fs::chown(path, None, Some(gid)),
        None => Ok(()),
    }
}

/// A unix socket's file, removed when this is dropped if it is still the one bound (the
/// same device and inode: never a socket another daemon bound there since).
pub(crate) struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl SocketFile {
    fn of(path: &Path) -> io::Result<SocketFile> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(SocketFile { path: path.to_owned(), id: (meta.dev(), meta.ino()) })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_anything_else_is_not_and_the_file_goes_at_the_end() {
        let dir = std::env::temp_dir().join(format!("wstap-unit-live-socket-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("live.sock");
        let own_group = std::fs::metadata("/proc/self").unwrap().gid();
        let access = SocketAccess { mode: 0o640, group: Some(own_group) };
        // A socket left behind, no one listening.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let (listener, file) = bind_unix(&path, access).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o640, own_group));
        let err = bind_unix(&path, access).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "a live socket is never taken over");
        drop(listener);
        drop(file);
        assert!(!path.exists(), "removed at the end");
        std::fs::write(&path, "not a socket").unwrap();
        assert_eq!(bind_unix(&path, access).err().unwrap().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket", "left alone");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
