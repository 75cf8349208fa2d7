//! The config file as serde reads it: one struct per table, `deny_unknown_fields`, and the
//! defaults a missing key takes. [`super::validate`] turns it into typed settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::route::Upstream;
use super::tls::{FileServerTls, FileUpstreamTls};
use super::units::{ByteSize, HumanDuration};
use super::{CaptureMode, Segmentation, TlsCapture};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    pub(super) listen: Vec<SocketAddr>,
    /// Listeners with options (TLS).
    #[serde(rename = "listener", default)]
    pub(super) listeners: Vec<FileListener>,
    #[serde(default)]
    pub(super) workers: usize,
    #[serde(rename = "route", default)]
    pub(super) routes: Vec<FileRoute>,
    #[serde(default)]
    pub(super) limits: FileLimits,
    #[serde(default)]
    pub(super) shutdown: FileShutdown,
    #[serde(default)]
    pub(super) proxy: FileProxy,
    #[serde(default)]
    pub(super) capture: FileCapture,
    #[serde(default)]
    pub(super) log: FileLog,
    /// Present (even empty): serve the admin endpoints.
    pub(super) admin: Option<FileAdmin>,
    /// The live capture stream.
    pub(super) live: Option<super::live::FileLive>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileListener {
    pub(super) addr: SocketAddr,
    pub(super) tls: Option<FileServerTls>,
    /// HTTP/2 besides HTTP/1.1: ALPN `h2` over TLS, prior knowledge on cleartext.
    #[serde(default)]
    pub(super) http2: bool,
    /// With `http2`: WebSocket over HTTP/2 (RFC 8441) is offered.
    #[serde(default = "default_true")]
    pub(super) connect_protocol: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAdmin {
    /// Loopback by default: the endpoints are unauthenticated.
    #[serde(default = "default_admin_listen")]
    pub(super) listen: SocketAddr,
}

pub(super) fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9180))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileLog {
    pub(super) level: String,
}

impl Default for FileLog {
    fn default() -> Self {
        FileLog { level: "info".into() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileCapture {
    pub(super) mode: CaptureMode,
    pub(super) dir: PathBuf,
    pub(super) prefix: String,
    pub(super) legs: Vec<LegName>,
    pub(super) sample: f64,
    pub(super) sample_seed: Option<u64>,
    pub(super) max_session_bytes: ByteSize,
    pub(super) max_message_bytes: ByteSize,
    pub(super) display_port: FileDisplayPort,
    pub(super) redact: FileRedact,
    pub(super) mss_ipv4: u16,
    pub(super) mss_ipv6: u16,
    pub(super) segment: Segmentation,
    pub(super) acks: bool,
    pub(super) queue_size: ByteSize,
    pub(super) flush_interval: HumanDuration,
    pub(super) direct_io: bool,
    pub(super) per_session: bool,
    pub(super) file_mode: String,
    pub(super) rotate: FileRotate,
    pub(super) tls: TlsCapture,
    pub(super) tls_keylog: Option<PathBuf>,
    pub(super) instance: Option<String>,
    pub(super) on_finish: Vec<String>,
    pub(super) on_finish_timeout: HumanDuration,
    pub(super) on_finish_concurrency: usize,
    pub(super) upload: Option<super::upload::FileUpload>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileRotate {
    pub(super) size: ByteSize,
    pub(super) interval: HumanDuration,
    pub(super) files: usize,
    pub(super) max_wait: HumanDuration,
}

impl Default for FileRotate {
    fn default() -> Self {
        FileRotate {
            size: ByteSize(100 << 20),
            interval: HumanDuration(Duration::from_secs(3600)),
            files: 24,
            max_wait: HumanDuration(Duration::from_secs(5)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum LegName {
    Client,
    Upstream,
}

impl Default for FileCapture {
    fn default() -> Self {
        FileCapture {
            mode: CaptureMode::Websocket,
            dir: "captures".into(),
            prefix: "wstap".into(),
            legs: vec![LegName::Client],
            sample: 1.0,
            sample_seed: None,
            max_session_bytes: ByteSize(0),
            max_message_bytes: ByteSize(0),
            display_port: FileDisplayPort::Name("auto".into()),
            redact: FileRedact::Table(FileRedactTable::default()),
            mss_ipv4: wstap_wire::tcp::MSS_IPV4,
            mss_ipv6: wstap_wire::tcp::MSS_IPV6,
            segment: Segmentation::Mss,
            acks: true,
            queue_size: ByteSize(64 << 20),
            flush_interval: HumanDuration(Duration::from_secs(1)),
            direct_io: true,
            per_session: false,
            file_mode: "0640".into(),
            rotate: FileRotate::default(),
            tls: TlsCapture::Plaintext,
            tls_keylog: None,
            instance: None,
            on_finish: Vec::new(),
            on_finish_timeout: HumanDuration(Duration::from_secs(60)),
            on_finish_concurrency: 2,
            upload: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRoute {
    #[serde(default = "default_path_prefix")]
    pub(super) path_prefix: String,
    pub(super) host: Option<String>,
    pub(super) upstream: Upstream,
    #[serde(default)]
    pub(super) strip_prefix: bool,
    /// The route's own capture policy, over `[capture]`'s.
    pub(super) capture: Option<CaptureMode>,
    pub(super) legs: Option<Vec<LegName>>,
    pub(super) sample: Option<f64>,
    pub(super) max_session_bytes: Option<ByteSize>,
    pub(super) max_message_bytes: Option<ByteSize>,
    /// TLS to a `wss://` or `https://` upstream.
    pub(super) tls: Option<FileUpstreamTls>,
}

pub(super) fn default_path_prefix() -> String {
    "/".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileLimits {
    pub(super) max_connections: usize,
    pub(super) max_connections_per_client: usize,
    pub(super) handshake_timeout: HumanDuration,
    pub(super) idle_timeout: HumanDuration,
    pub(super) max_header_size: ByteSize,
    pub(super) connect_timeout: HumanDuration,
    pub(super) upstream_timeout: HumanDuration,
    pub(super) body_timeout: HumanDuration,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            max_connections: 10_000,
            max_connections_per_client: 0,
            handshake_timeout: HumanDuration(Duration::from_secs(10)),
            idle_timeout: HumanDuration(Duration::ZERO),
            max_header_size: ByteSize(64 * 1024),
            connect_timeout: HumanDuration(Duration::from_secs(5)),
            upstream_timeout: HumanDuration(Duration::from_secs(60)),
            body_timeout: HumanDuration(Duration::from_secs(60)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileShutdown {
    pub(super) grace: HumanDuration,
}

impl Default for FileShutdown {
    fn default() -> Self {
        FileShutdown { grace: HumanDuration(Duration::from_secs(30)) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileProxy {
    pub(super) x_forwarded: bool,
    pub(super) preserve_host: bool,
    pub(super) normalize_path: bool,
    pub(super) allow_encoded_slash: bool,
}

impl Default for FileProxy {
    fn default() -> Self {
        FileProxy { x_forwarded: true, preserve_host: false, normalize_path: true, allow_encoded_slash: false }
    }
}

/// `display_port`: a port number (0: the real ports) or `"auto"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum FileDisplayPort {
    Port(u16),
    Name(String),
}

/// `redact`: `false` (nothing is redacted), `true` (the defaults), or a table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum FileRedact {
    Switch(bool),
    Table(FileRedactTable),
}

/// `[capture.redact]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileRedactTable {
    pub(super) headers: Vec<String>,
    pub(super) query: Vec<String>,
    pub(super) payload: Vec<String>,
}

impl Default for FileRedactTable {
    fn default() -> Self {
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect();
        FileRedactTable {
            headers: names(&super::Redact::DEFAULT_HEADERS),
            query: names(&super::Redact::DEFAULT_QUERY),
            payload: Vec::new(),
        }
    }
}
