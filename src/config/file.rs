//! The config file as serde reads it: one struct per table, `deny_unknown_fields`, and the
//! defaults a missing key takes. [`super::validate`] turns it into typed settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::route::Upstream;
use super::units::{ByteSize, HumanDuration};
use super::{CaptureMode, CaptureSettings, Legs, RotateSettings};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) listen: Vec<SocketAddr>,
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
    pub(super) display_port: u16,
    pub(super) mss_ipv4: u16,
    pub(super) mss_ipv6: u16,
    pub(super) acks: bool,
    pub(super) queue_size: ByteSize,
    pub(super) flush_interval: HumanDuration,
    pub(super) per_session: bool,
    pub(super) file_mode: String,
    pub(super) rotate: FileRotate,
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

impl From<FileCapture> for CaptureSettings {
    fn from(c: FileCapture) -> CaptureSettings {
        CaptureSettings {
            mode: c.mode,
            dir: c.dir,
            prefix: c.prefix,
            legs: Legs { client: c.legs.contains(&LegName::Client), upstream: c.legs.contains(&LegName::Upstream) },
            display_port: (c.display_port != 0).then_some(c.display_port),
            mss_ipv4: c.mss_ipv4,
            mss_ipv6: c.mss_ipv6,
            acks: c.acks,
            queue_size: c.queue_size.0 as usize,
            flush_interval: c.flush_interval.0,
            per_session: c.per_session,
            file_mode: u32::from_str_radix(&c.file_mode, 8).unwrap_or(0o640),
            rotate: RotateSettings {
                size: c.rotate.size.0,
                interval: (!c.rotate.interval.0.is_zero()).then_some(c.rotate.interval.0),
                files: c.rotate.files,
                max_wait: c.rotate.max_wait.0,
            },
        }
    }
}

impl CaptureSettings {
    /// The default capture settings, writing into `dir`: for applications that record
    /// their own connections with [`crate::Tee`].
    pub fn in_dir(dir: impl Into<PathBuf>) -> CaptureSettings {
        CaptureSettings { dir: dir.into(), ..FileCapture::default().into() }
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
            legs: vec![LegName::Client, LegName::Upstream],
            display_port: 0,
            mss_ipv4: crate::wire::tcp::MSS_IPV4,
            mss_ipv6: crate::wire::tcp::MSS_IPV6,
            acks: true,
            queue_size: ByteSize(64 << 20),
            flush_interval: HumanDuration(Duration::from_secs(1)),
            per_session: false,
            file_mode: "0640".into(),
            rotate: FileRotate::default(),
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
}

pub(super) fn default_path_prefix() -> String {
    "/".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileLimits {
    pub(super) max_connections: usize,
    pub(super) handshake_timeout: HumanDuration,
    pub(super) idle_timeout: HumanDuration,
    pub(super) max_header_size: ByteSize,
    pub(super) connect_timeout: HumanDuration,
    pub(super) upstream_timeout: HumanDuration,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            max_connections: 10_000,
            handshake_timeout: HumanDuration(Duration::from_secs(10)),
            idle_timeout: HumanDuration(Duration::ZERO),
            max_header_size: ByteSize(64 * 1024),
            connect_timeout: HumanDuration(Duration::from_secs(5)),
            upstream_timeout: HumanDuration(Duration::from_secs(60)),
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
}

impl Default for FileProxy {
    fn default() -> Self {
        FileProxy { x_forwarded: true, preserve_host: false }
    }
}
