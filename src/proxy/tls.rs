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

use crate::sync::lock;

/// The key log file (`capture.tls_keylog`): every TLS connection's keys appended in the
/// NSS key log format (`SSLKEYLOGFILE`), for captures made with other tools. Created with
/// mode 0600, and made so if it existed.
#[derive(Debug)]
pub struct KeyLogFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    /// A write failed (said once, until one succeeds again).
    failing: AtomicBool,
}

impl KeyLogFile {
    /// Opens (creates) the file at `path` for appending.
    pub fn open(path: &Path) -> std::io::Result<Arc<KeyLogFile>> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(Arc::new(KeyLogFile { path: path.to_owned(), file: Mutex::new(file), failing: AtomicBool::new(false) }))
    }

    fn append(&self, line: &str) {
        match lock(&self.file).write_all(line.as_bytes()) {
            Ok(()) => self.failing.store(false, Relaxed),
            Err(e) if !self.failing.swap(true, Relaxed) => {
                warn!(file = %self.path.display(), error = %e, "cannot write the TLS key log file")
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

impl Keys {
    /// Keys to `keep` for the capture, or to append to `file`; `None` when neither.
    pub fn new(keep: bool, file: Option<Arc<KeyLogFile>>) -> Option<Arc<Keys>> {
        (keep || file.is_some()).then(|| Arc::new(Keys { kept: keep.then(Mutex::default), file }))
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
            file.append(&line);
        }
        if let Some(kept) = &self.kept {
            lock(kept).push_str(&line);
        }
    }
}

/// Why a handshake failed: the `reason` label of `wstap_tls_handshake_failures_total`.
pub fn reason(e: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "closed",
            std::io::ErrorKind::TimedOut => "timeout",
            _ => "io",
        };
    };
    match tls {
        E::InvalidMessage(_) => "not_tls",
        E::PeerIncompatible(_) => "incompatible",
        E::NoCertificatesPresented => "no_client_certificate",
        E::InvalidCertificate(_) => "bad_client_certificate",
        E::AlertReceived(_) => "alert",
        _ => "other",
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
