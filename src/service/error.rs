//! Why the daemon could not start, or a reload could not be applied. Each variant's
//! message names what failed and, where a config key is at fault, the key and the file;
//! the underlying error is part of the message, so a log line or the command's one-line
//! error says it all.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::keylog::Refusal;
use crate::config::ConfigError;

/// Why the daemon could not start, or a reload could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config file could not be read or is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An address the config names could not be bound.
    #[error("cannot listen on {addr} (key `{key}` in {}): {error}", file.display())]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The config key that names it (`listen`, `admin.listen`, `live.listen`).
        key: &'static str,
        /// The config file.
        file: PathBuf,
        /// What binding it said.
        error: std::io::Error,
    },
    /// A unix socket the config names could not be bound.
    #[error("cannot listen on unix:{} (key `{key}` in {}): {error}", path.display(), file.display())]
    ListenUnix {
        /// The socket's path.
        path: PathBuf,
        /// The config key that names it (`live.listen`).
        key: &'static str,
        /// The config file.
        file: PathBuf,
        /// What binding it said.
        error: std::io::Error,
    },
    /// The key log file (`capture.tls_keylog`) could not be opened, or breaks a rule.
    #[error("{}: key `capture.tls_keylog`: {} {error}", file.display(), path.display())]
    KeyLog {
        /// The config file.
        file: PathBuf,
        /// The key log file.
        path: PathBuf,
        /// What is wrong with it.
        error: Refusal,
    },
    /// A reload's files (the config, the files it names) were not read within the time
    /// allowed: a FIFO or an unresponsive mount in place of one. Nothing changed.
    #[error(
        "{}: reading the config and the files it names took longer than {}: nothing changed (is one of them a FIFO \
         or on an unresponsive mount?)",
        file.display(),
        humantime::format_duration(*limit)
    )]
    ReadTimeout {
        /// The config file.
        file: PathBuf,
        /// The time allowed.
        limit: std::time::Duration,
    },
    /// The thread that reads a reload's files could not start.
    #[error("cannot start a thread to read the config: {0}")]
    ReadThread(std::io::Error),
    /// `[capture.upload]` names a store its client cannot be built for.
    #[error("{}: {error}", file.display())]
    Upload {
        /// The config file.
        file: PathBuf,
        /// What was wrong, with the key.
        error: String,
    },
    /// The thread that ships finished files could not start.
    #[error("cannot start the thread that ships capture files: {0}")]
    ShipThread(std::io::Error),
    /// The capture writer's thread could not start.
    #[error("cannot start the capture writer: {0}")]
    CaptureWriter(std::io::Error),
    /// The signal handlers could not be installed.
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
    /// The event loop could not be built.
    #[error("cannot start the event loop: {0}")]
    Runtime(std::io::Error),
}
