//! The TLS handshake on a listener that terminates TLS: bounded by
//! `limits.handshake_timeout`, and a failure named in words a log reader and `/metrics`
//! can use (no shared cipher, not TLS at all, closed mid-handshake, a bad client
//! certificate). What was agreed is described for the session's capture comment. Each
//! connection's keys, when they are wanted, are collected by its own [`Keys`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::warn;

use crate::config::keylog::{self, Refusal};
use crate::sync::lock;

/// The key log file (`capture.tls_keylog`): every TLS connection's keys appended in the
/// NSS key log format (`SSLKEYLOGFILE`), for captures made with other tools. Opened so
/// that it cannot hang or be redirected, and used only if it keeps the rules of
/// [`crate::config::keylog`] (its mode is never changed: one who opened it before would
/// keep reading). Lines are written by a thread of its own, so a slow disk never holds up
/// a handshake; past [`KEYLOG_QUEUE`] lines waiting, lines are dropped (and said once).
#[derive(Debug)]
pub struct KeyLogFile {
    lines: std::sync::mpsc::SyncSender<String>,
    path: PathBuf,
    /// Lines were dropped (said once, until one is queued again).
    dropping: AtomicBool,
}

/// Lines the key log file's thread may have waiting.
const KEYLOG_QUEUE: usize = 4096;

impl KeyLogFile {
    /// Opens (creates, mode 0600) the file at `path` for appending, checks the open file
    /// against the rules, and starts its thread.
    ///
    /// `O_NOFOLLOW`: a symlink there is refused, not followed. `O_NONBLOCK`: a FIFO there
    /// cannot hold the open (without a reader it fails at once, with one it opens and is
    /// refused by `fstat`). The flag stays set: it has no effect on a regular file (open(2)),
    /// the only kind that passes, and clearing it would take an unsafe `fcntl`.
    pub fn open(path: &Path) -> Result<Arc<KeyLogFile>, Refusal> {
        use std::os::unix::fs::OpenOptionsExt;
        let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(flags)
            .open(path)
            .map_err(|e| keylog::explain(path, e))?;
        keylog::judge(&file.metadata()?, keylog::own_uid()?)?;
        let (lines, queue) = std::sync::mpsc::sync_channel::<String>(KEYLOG_QUEUE);
        let shown = path.display().to_string();
        std::thread::Builder::new().name("wstap-keylog".into()).spawn(move || {
            let mut failing = false;
            // Ends when the last connection using this file has gone (a reload opens anew).
            for line in queue {
                match file.write_all(line.as_bytes()) {
                    Ok(()) => failing = false,
                    Err(e) if !std::mem::replace(&mut failing, true) => {
                        warn!(file = %shown, error = %e, "cannot write the TLS key log file")
                    }
                    Err(_) => {}
                }
            }
        })?;
        Ok(Arc::new(KeyLogFile { lines, path: path.to_owned(), dropping: AtomicBool::new(false) }))
    }

    fn append(&self, line: String) {
        match self.lines.try_send(line) {
            Ok(()) => self.dropping.store(false, Relaxed),
            Err(_) if !self.dropping.swap(true, Relaxed) => {
                warn!(file = %self.path.display(), "the TLS key log file is not keeping up: keys dropped")
            }
            Err(_) => {}
        }
    }
}

/// One TLS connection's keys, as rustls derives them: kept for its capture (encrypted
/// legs) and appended to the key log file, if any. A handshake logs at most five lines.
#[derive(Debug)]
pub struct Keys {
    kept: Option<Mutex<String>>,
    file: Option<Arc<KeyLogFile>>,
}

/// Whether a TLS connection's keys are kept for its capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepKeys {
    /// Its leg is captured encrypted: the keys go into the capture's secrets block.
    ForCapture,
    /// Nothing captures it encrypted.
    No,
}

impl Keys {
    /// Keys kept for the capture as `keep` says, or appended to `file`; `None` when
    /// neither.
    pub fn new(keep: KeepKeys, file: Option<Arc<KeyLogFile>>) -> Option<Arc<Keys>> {
        let kept = (keep == KeepKeys::ForCapture).then(Mutex::default);
        (kept.is_some() || file.is_some()).then(|| Arc::new(Keys { kept, file }))
    }

    /// The key log lines kept so far, if this connection's are kept.
    pub fn kept(&self) -> Option<String> {
        self.kept.as_ref().map(|k| lock(k).clone())
    }

    /// `config`, logging into these keys: a copy for this one connection.
    pub fn server_config(self: &Arc<Self>, config: &ServerConfig) -> Arc<ServerConfig> {
        let mut config = config.clone();
        config.key_log = self.clone();
        Arc::new(config)
    }

    /// As [`Keys::server_config`], for a connection wstap opens.
    pub fn client_config(self: &Arc<Self>, config: &rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
        let mut config = config.clone();
        config.key_log = self.clone();
        Arc::new(config)
    }
}

impl rustls::KeyLog for Keys {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let line = format!("{label} {} {}\n", hex(client_random), hex(secret));
        if let Some(file) = &self.file {
            file.append(line.clone());
        }
        if let Some(kept) = &self.kept {
            lock(kept).push_str(&line);
        }
    }
}

/// Why a handshake on a listener failed: `wstap_tls_handshake_failures_total` by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HandshakeFailure {
    /// The client closed the connection mid-handshake.
    Closed,
    /// No handshake within `handshake_timeout`.
    Timeout,
    /// Another I/O error.
    Io,
    /// What arrived was not a TLS record (plain HTTP to a TLS port, most often).
    NotTls,
    /// No protocol version or cipher suite in common.
    Incompatible,
    /// The client offered ALPN protocols, none of them `http/1.1` (an `h2`-only client).
    NoCommonAlpn,
    /// A client certificate was required and none was sent.
    NoClientCertificate,
    /// The client's certificate did not verify.
    BadClientCertificate,
    /// The client sent an alert.
    Alert,
    /// Any other TLS error.
    Other,
}

impl HandshakeFailure {
    /// Classifies the error a handshake returned.
    pub fn of(e: &std::io::Error) -> HandshakeFailure {
        use rustls::Error as E;
        let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) else {
            return match e.kind() {
                std::io::ErrorKind::UnexpectedEof => HandshakeFailure::Closed,
                std::io::ErrorKind::TimedOut => HandshakeFailure::Timeout,
                _ => HandshakeFailure::Io,
            };
        };
        match tls {
            E::InvalidMessage(_) => HandshakeFailure::NotTls,
            E::PeerIncompatible(_) => HandshakeFailure::Incompatible,
            E::NoApplicationProtocol => HandshakeFailure::NoCommonAlpn,
            E::NoCertificatesPresented => HandshakeFailure::NoClientCertificate,
            E::InvalidCertificate(_) => HandshakeFailure::BadClientCertificate,
            E::AlertReceived(_) => HandshakeFailure::Alert,
            _ => HandshakeFailure::Other,
        }
    }

    /// The metrics label `reason` and the log field of the same name.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Io => "io",
            HandshakeFailure::NotTls => "not_tls",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::NoCommonAlpn => "no_common_alpn",
            HandshakeFailure::NoClientCertificate => "no_client_certificate",
            HandshakeFailure::BadClientCertificate => "bad_client_certificate",
            HandshakeFailure::Alert => "alert",
            HandshakeFailure::Other => "other",
        }
    }
}

/// Runs the server side of a handshake on `stream`, within `limit`.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    config: Arc<ServerConfig>,
    stream: S,
    limit: Duration,
) -> Result<TlsStream<S>, std::io::Error> {
    match tokio::time::timeout(limit, TlsAcceptor::from(config).accept(stream)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no TLS handshake within handshake_timeout")),
    }
}

/// What a finished handshake agreed: `TLS 1.3, TLS13_AES_128_GCM_SHA256, SNI a.example,
/// ALPN http/1.1`. `sni`: the name the client asked for.
pub fn describe(tls: &rustls::CommonState, sni: Option<&str>) -> String {
    let version = match tls.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_owned(),
        v => format!("{v:?}"),
    };
    let suite = tls.negotiated_cipher_suite().map_or_else(|| "no suite".to_owned(), |s| format!("{:?}", s.suite()));
    let sni = sni.map_or_else(|| "no SNI".to_owned(), |n| format!("SNI {n}"));
    let alpn =
        tls.alpn_protocol().map_or_else(|| "no ALPN".to_owned(), |a| format!("ALPN {}", String::from_utf8_lossy(a)));
    format!("{version}, {suite}, {sni}, {alpn}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_log_file_is_the_owners_alone_and_never_a_symlink_or_a_fifo() {
        let dir = std::env::temp_dir().join(format!("wstap-keylog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A new file is made 0600; lines arrive (by its thread).
        let path = dir.join("keys.log");
        let file = KeyLogFile::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let keys = Keys::new(KeepKeys::ForCapture, Some(file.clone())).unwrap();
        rustls::KeyLog::log(&*keys, "CLIENT_RANDOM", &[0xab; 2], &[0xcd; 2]);
        assert_eq!(keys.kept().unwrap(), "CLIENT_RANDOM abab cdcd\n");
        drop((keys, file)); // the thread writes what is queued, then ends
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(&path).unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "CLIENT_RANDOM abab cdcd\n");
        // An existing file others can read is refused, and its mode left as it was.
        let exposed = dir.join("exposed.log");
        std::fs::write(&exposed, "").unwrap();
        std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(KeyLogFile::open(&exposed), Err(Refusal::Exposed { mode: 0o644 })));
        assert_eq!(std::fs::metadata(&exposed).unwrap().permissions().mode() & 0o777, 0o644);
        // A symlink planted where the file goes is not followed.
        let link = dir.join("link.log");
        std::os::unix::fs::symlink(dir.join("elsewhere"), &link).unwrap();
        assert!(matches!(KeyLogFile::open(&link), Err(Refusal::Symlink)));
        assert!(!dir.join("elsewhere").exists());
        // A FIFO is refused at once, with no reader (the open fails) and with one (fstat).
        let fifo = dir.join("fifo.log");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(matches!(KeyLogFile::open(&fifo), Err(Refusal::NotAFile(_))));
        let reader = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap()
        };
        assert!(matches!(KeyLogFile::open(&fifo), Err(Refusal::NotAFile(_))));
        drop(reader);
        // A file someone else owns (planted in a shared directory) is refused.
        let foreign = dir.join("foreign.log");
        std::fs::write(&foreign, "").unwrap();
        std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o600)).unwrap();
        if std::os::unix::fs::chown(&foreign, Some(65534), None).is_ok() {
            let e = KeyLogFile::open(&foreign).unwrap_err();
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
