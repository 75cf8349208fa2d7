//! The TOML config: a serde file model (`deny_unknown_fields`) and its validation into
//! typed [`Settings`]. Parsing a string is separate from reading a file, and every error
//! names the file, the key path (`route[1].upstream`) and, where known, the line. This
//! module reads nothing but the config file and opens no sockets.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod route;

use route::{Route, Upstream};

use crate::dir::Leg;

/// Validated settings: everything the daemon runs from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file these settings came from (for messages).
    pub source: PathBuf,
    pub listen: Vec<SocketAddr>,
    /// Threads running connections: 0 = one per CPU; 1 = every task on one thread.
    pub workers: usize,
    /// In file order; the first match wins.
    pub routes: Vec<Route>,
    pub limits: Limits,
    pub shutdown: ShutdownSettings,
    pub proxy: ProxySettings,
    pub capture: CaptureSettings,
    /// A tracing filter (`info`, `wstap=debug`, …); `RUST_LOG` wins when set.
    pub log_level: String,
    /// Where `/metrics`, `/sessions` and `/healthz` are served; `None`: nowhere.
    pub admin: Option<SocketAddr>,
}

/// What gets recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// WebSocket sessions only: the Upgrade exchange and everything after it.
    Websocket,
    /// Every connection, plain HTTP included.
    All,
    /// Nothing.
    Off,
}

/// Which legs of a session are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Legs {
    pub client: bool,
    pub upstream: bool,
}

impl Legs {
    /// Whether `leg` is recorded.
    pub fn has(self, leg: Leg) -> bool {
        match leg {
            Leg::Client => self.client,
            Leg::Upstream => self.upstream,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSettings {
    pub mode: CaptureMode,
    /// Created if missing. Relative paths are relative to the working directory.
    pub dir: PathBuf,
    pub prefix: String,
    pub legs: Legs,
    /// Write the server side of each leg with this port (for ports another Wireshark
    /// dissector claims).
    pub display_port: Option<u16>,
    pub mss_ipv4: u16,
    pub mss_ipv6: u16,
    /// A pure ACK from the receiver after each chunk of data.
    pub acks: bool,
    /// Bytes of captured data allowed to wait for the writer; past it, data is dropped.
    pub queue_size: usize,
    /// Data reaches the OS at least this often.
    pub flush_interval: Duration,
    /// One file per session instead of one rotating series.
    pub per_session: bool,
    /// Mode of created files (the umask applies too).
    pub file_mode: u32,
    pub rotate: RotateSettings,
}

/// When files rotate and how many are kept (dumpcap's `-b filesize:`, `-b interval:`,
/// `-b files:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotateSettings {
    /// Rotate once a file reaches this many bytes; 0 = never.
    pub size: u64,
    /// Rotate at wall-clock multiples of this; `None` = never.
    pub interval: Option<Duration>,
    /// Finished files kept; the oldest beyond are deleted; 0 = all.
    pub files: usize,
    /// Longest a due rotation waits for every session to be between frames.
    pub max_wait: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Client connections open at once; past it, new ones get `503` and are closed.
    pub max_connections: usize,
    /// Time a client has to send a complete request head (also the keep-alive idle time
    /// between requests). On expiry the connection is closed.
    pub handshake_timeout: Duration,
    /// Close a WebSocket session after this long without a byte either way.
    pub idle_timeout: Option<Duration>,
    /// Largest request head accepted; past it, `431`.
    pub max_header_size: usize,
    /// Time allowed to open the TCP connection to an upstream; past it, `504`.
    pub connect_timeout: Duration,
    /// Time allowed for the upstream's response head once the request is sent; past it, `504`.
    pub upstream_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownSettings {
    /// How long in-flight requests and sessions may run on after SIGTERM/SIGINT.
    pub grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// Add `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host`.
    pub x_forwarded: bool,
    /// Pass the client's `Host` header to the upstream instead of the upstream's authority.
    pub preserve_host: bool,
}

/// A config error, already phrased for the operator.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Settings {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config {}: {e}", path.display())))?;
        Settings::parse(&text, path)
    }

    /// Parses and validates config text; `source` is used in messages only.
    pub fn parse(text: &str, source: &Path) -> Result<Settings, ConfigError> {
        let file = parse_file(text, source)?;
        file.validate(source)
    }
}

fn parse_file(text: &str, source: &Path) -> Result<FileConfig, ConfigError> {
    let at = |key: &str, span: Option<std::ops::Range<usize>>, msg: &str| {
        let mut out = format!("invalid config {}", source.display());
        if let Some(span) = span {
            let (line, col) = line_col(text, span.start);
            out += &format!(":{line}:{col}");
        }
        if !key.is_empty() && key != "." {
            out += &format!(": key `{key}`");
        }
        out + ": " + msg.trim_end()
    };
    let de = toml::de::Deserializer::parse(text).map_err(|e| ConfigError(at("", e.span(), e.message())))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        ConfigError(at(&key, inner.span(), inner.message()))
    })
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, col)
}

// ---- file model ----------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Vec<SocketAddr>,
    #[serde(default)]
    workers: usize,
    #[serde(rename = "route", default)]
    routes: Vec<FileRoute>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    shutdown: FileShutdown,
    #[serde(default)]
    proxy: FileProxy,
    #[serde(default)]
    capture: FileCapture,
    #[serde(default)]
    log: FileLog,
    /// Present (even empty): serve the admin endpoints.
    admin: Option<FileAdmin>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    /// Loopback by default: the endpoints are unauthenticated.
    #[serde(default = "default_admin_listen")]
    listen: SocketAddr,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9180))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileLog {
    level: String,
}

impl Default for FileLog {
    fn default() -> Self {
        FileLog { level: "info".into() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileCapture {
    mode: CaptureMode,
    dir: PathBuf,
    prefix: String,
    legs: Vec<LegName>,
    display_port: u16,
    mss_ipv4: u16,
    mss_ipv6: u16,
    acks: bool,
    queue_size: ByteSize,
    flush_interval: HumanDuration,
    per_session: bool,
    file_mode: String,
    rotate: FileRotate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileRotate {
    size: ByteSize,
    interval: HumanDuration,
    files: usize,
    max_wait: HumanDuration,
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
    /// their own connections with [`crate::capture::tap::Tee`].
    pub fn in_dir(dir: impl Into<PathBuf>) -> CaptureSettings {
        CaptureSettings { dir: dir.into(), ..FileCapture::default().into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LegName {
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
struct FileRoute {
    #[serde(default = "default_path_prefix")]
    path_prefix: String,
    host: Option<String>,
    upstream: Upstream,
    #[serde(default)]
    strip_prefix: bool,
}

fn default_path_prefix() -> String {
    "/".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileLimits {
    max_connections: usize,
    handshake_timeout: HumanDuration,
    idle_timeout: HumanDuration,
    max_header_size: ByteSize,
    connect_timeout: HumanDuration,
    upstream_timeout: HumanDuration,
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
struct FileShutdown {
    grace: HumanDuration,
}

impl Default for FileShutdown {
    fn default() -> Self {
        FileShutdown { grace: HumanDuration(Duration::from_secs(30)) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileProxy {
    x_forwarded: bool,
    preserve_host: bool,
}

impl Default for FileProxy {
    fn default() -> Self {
        FileProxy { x_forwarded: true, preserve_host: false }
    }
}

/// A humantime duration written as a string: `"10s"`, `"1m 30s"`, `"250ms"`, `"0s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

/// A byte size: an integer, or a string such as `"64KiB"`, `"100 MiB"`, `"1GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(digits);
        let num: u64 = num
            .parse()
            .map_err(|_| format!("invalid byte size {s:?}: expected a number and a unit such as \"64KiB\""))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            other => {
                return Err(format!(
                    "invalid byte size {s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
                ))
            }
        };
        num.checked_mul(mult).map(ByteSize).ok_or_else(|| format!("invalid byte size {s:?}: too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

// ---- validation ------------------------------------------------------------------------

impl FileConfig {
    fn validate(self, source: &Path) -> Result<Settings, ConfigError> {
        const MAX_WORKERS: usize = 1024;
        let fail = |key: &str, msg: String| {
            Err(ConfigError(format!("invalid config {}: key `{key}`: {msg}", source.display())))
        };
        if self.listen.is_empty() {
            return fail("listen", "at least one address is required".into());
        }
        for (i, addr) in self.listen.iter().enumerate() {
            if self.listen[..i].contains(addr) {
                return fail(&format!("listen[{i}]"), format!("{addr} is listed twice"));
            }
        }
        if self.workers > MAX_WORKERS {
            return fail("workers", format!("{} is more than {MAX_WORKERS}", self.workers));
        }
        if self.routes.is_empty() {
            return fail("route", "at least one [[route]] is required".into());
        }
        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, r) in self.routes.into_iter().enumerate() {
            if !r.path_prefix.starts_with('/') {
                return fail(&format!("route[{i}].path_prefix"), format!("{:?} must start with '/'", r.path_prefix));
            }
            let host = match r.host {
                Some(h) if h.is_empty() || h.contains(['/', ' ']) => {
                    return fail(&format!("route[{i}].host"), format!("{h:?} is not a host name"));
                }
                h => h.map(|h| h.to_ascii_lowercase()),
            };
            routes.push(Route { host, path_prefix: r.path_prefix, strip_prefix: r.strip_prefix, upstream: r.upstream });
        }
        let l = self.limits;
        if l.max_connections == 0 {
            return fail("limits.max_connections", "must be at least 1".into());
        }
        if l.handshake_timeout.0.is_zero() {
            return fail("limits.handshake_timeout", "must be more than 0s".into());
        }
        if l.connect_timeout.0.is_zero() {
            return fail("limits.connect_timeout", "must be more than 0s".into());
        }
        const MIN_HEAD: u64 = 1024;
        const MAX_HEAD: u64 = 16 << 20;
        if !(MIN_HEAD..=MAX_HEAD).contains(&l.max_header_size.0) {
            return fail(
                "limits.max_header_size",
                format!("must be between 1KiB and 16MiB, not {} bytes", l.max_header_size.0),
            );
        }
        let c = self.capture;
        if c.prefix.is_empty() || c.prefix.contains(['/', '\\', '\0']) {
            return fail("capture.prefix", format!("{:?} must be a non-empty file name part", c.prefix));
        }
        if c.mode != CaptureMode::Off && c.legs.is_empty() {
            return fail(
                "capture.legs",
                "list at least one of \"client\", \"upstream\" (or set mode = \"off\")".into(),
            );
        }
        for (key, mss) in [("capture.mss_ipv4", c.mss_ipv4), ("capture.mss_ipv6", c.mss_ipv6)] {
            if !(64..=crate::wire::tcp::MSS_MAX).contains(&mss) {
                return fail(key, format!("must be between 64 and {}, not {mss}", crate::wire::tcp::MSS_MAX));
            }
        }
        if c.queue_size.0 < 64 * 1024 {
            return fail("capture.queue_size", "must be at least 64KiB".into());
        }
        if c.flush_interval.0.is_zero() {
            return fail("capture.flush_interval", "must be more than 0s".into());
        }
        match u32::from_str_radix(&c.file_mode, 8) {
            Ok(m) if m <= 0o777 && c.file_mode.len() <= 4 => {}
            _ => {
                return fail(
                    "capture.file_mode",
                    format!("{:?} is not an octal file mode such as \"0640\"", c.file_mode),
                )
            }
        }
        let iv = c.rotate.interval.0;
        if !iv.is_zero() && iv < Duration::from_secs(1) {
            return fail("capture.rotate.interval", "must be 0s (never) or at least 1s".into());
        }
        if c.rotate.size.0 != 0 && c.rotate.size.0 < 64 * 1024 {
            return fail("capture.rotate.size", "must be 0 (never) or at least 64KiB".into());
        }
        let capture = CaptureSettings::from(c);
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return fail("log.level", format!("{:?} is not a log filter: {e}", self.log.level));
        }
        let nonzero = |d: HumanDuration| (!d.0.is_zero()).then_some(d.0);
        Ok(Settings {
            source: source.to_owned(),
            listen: self.listen,
            workers: self.workers,
            routes,
            limits: Limits {
                max_connections: l.max_connections,
                handshake_timeout: l.handshake_timeout.0,
                idle_timeout: nonzero(l.idle_timeout),
                max_header_size: l.max_header_size.0 as usize,
                connect_timeout: l.connect_timeout.0,
                upstream_timeout: nonzero(l.upstream_timeout),
            },
            shutdown: ShutdownSettings { grace: self.shutdown.grace.0 },
            proxy: ProxySettings { x_forwarded: self.proxy.x_forwarded, preserve_host: self.proxy.preserve_host },
            capture,
            log_level: self.log.level,
            admin: self.admin.map(|a| a.listen),
        })
    }
}

/// Prints the effective settings as TOML, defaults filled in (`wstap check`).
impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dur = |d: Option<Duration>| humantime::format_duration(d.unwrap_or_default()).to_string();
        let listen: Vec<String> = self.listen.iter().map(|a| format!("{:?}", a.to_string())).collect();
        writeln!(f, "# effective settings of {}", self.source.display())?;
        writeln!(f, "listen = [{}]", listen.join(", "))?;
        writeln!(f, "workers = {}", self.workers)?;
        for r in &self.routes {
            writeln!(f, "\n[[route]]")?;
            if let Some(h) = &r.host {
                writeln!(f, "host = {h:?}")?;
            }
            writeln!(f, "path_prefix = {:?}", r.path_prefix)?;
            writeln!(f, "strip_prefix = {}", r.strip_prefix)?;
            writeln!(f, "upstream = {:?}", r.upstream.to_string())?;
        }
        let l = &self.limits;
        writeln!(f, "\n[limits]")?;
        writeln!(f, "max_connections = {}", l.max_connections)?;
        writeln!(f, "handshake_timeout = {:?}", dur(Some(l.handshake_timeout)))?;
        writeln!(f, "idle_timeout = {:?}", dur(l.idle_timeout))?;
        writeln!(f, "max_header_size = {}", l.max_header_size)?;
        writeln!(f, "connect_timeout = {:?}", dur(Some(l.connect_timeout)))?;
        writeln!(f, "upstream_timeout = {:?}", dur(l.upstream_timeout))?;
        writeln!(f, "\n[shutdown]")?;
        writeln!(f, "grace = {:?}", dur(Some(self.shutdown.grace)))?;
        writeln!(f, "\n[proxy]")?;
        writeln!(f, "x_forwarded = {}", self.proxy.x_forwarded)?;
        writeln!(f, "preserve_host = {}", self.proxy.preserve_host)?;
        let c = &self.capture;
        let mode = match c.mode {
            CaptureMode::Websocket => "websocket",
            CaptureMode::All => "all",
            CaptureMode::Off => "off",
        };
        let legs: Vec<&str> = [(c.legs.client, "\"client\""), (c.legs.upstream, "\"upstream\"")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        writeln!(f, "\n[capture]")?;
        writeln!(f, "mode = {mode:?}")?;
        writeln!(f, "dir = {:?}", c.dir.display().to_string())?;
        writeln!(f, "prefix = {:?}", c.prefix)?;
        writeln!(f, "legs = [{}]", legs.join(", "))?;
        writeln!(f, "display_port = {}", c.display_port.unwrap_or(0))?;
        writeln!(f, "mss_ipv4 = {}", c.mss_ipv4)?;
        writeln!(f, "mss_ipv6 = {}", c.mss_ipv6)?;
        writeln!(f, "acks = {}", c.acks)?;
        writeln!(f, "queue_size = {}", c.queue_size)?;
        writeln!(f, "flush_interval = {:?}", dur(Some(c.flush_interval)))?;
        writeln!(f, "per_session = {}", c.per_session)?;
        writeln!(f, "file_mode = \"{:04o}\"", c.file_mode)?;
        let r = &c.rotate;
        writeln!(f, "\n[capture.rotate]")?;
        writeln!(f, "size = {}", r.size)?;
        writeln!(f, "interval = {:?}", dur(r.interval))?;
        writeln!(f, "files = {}", r.files)?;
        writeln!(f, "max_wait = {:?}", dur(Some(r.max_wait)))?;
        writeln!(f, "\n[log]\nlevel = {:?}", self.log_level)?;
        match self.admin {
            Some(a) => write!(f, "\n[admin]\nlisten = {:?}", a.to_string()),
            None => write!(f, "\n# [admin]: off"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, String> {
        Settings::parse(text, Path::new("test.toml")).map_err(|e| e.to_string())
    }

    const MINIMAL: &str = "listen = [\"127.0.0.1:8080\"]\n[[route]]\nupstream = \"ws://127.0.0.1:9000\"\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.routes[0].path_prefix, "/");
        assert_eq!(s.workers, 0, "one per CPU");
        assert_eq!(s.limits.max_connections, 10_000);
        assert_eq!(s.limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(s.limits.idle_timeout, None);
        assert_eq!(s.limits.max_header_size, 65536);
        assert_eq!(s.shutdown.grace, Duration::from_secs(30));
        assert!(s.proxy.x_forwarded);
        assert_eq!(s.capture.mode, CaptureMode::Websocket);
        assert_eq!(s.capture.legs, Legs { client: true, upstream: true });
        assert_eq!((s.capture.mss_ipv4, s.capture.mss_ipv6, s.capture.display_port), (1460, 1440, None));
    }

    #[test]
    fn workers() {
        assert_eq!(parse(&format!("workers = 1\n{MINIMAL}")).unwrap().workers, 1);
        let err = parse(&format!("workers = 5000\n{MINIMAL}")).unwrap_err();
        assert!(err.contains("key `workers`") && err.contains("test.toml"), "{err}");
        let err = parse(&format!("workers = -1\n{MINIMAL}")).unwrap_err();
        assert!(err.contains("workers") && err.contains("test.toml:1:"), "{err}");
    }

    #[test]
    fn capture_section() {
        let s =
            parse(&format!("{MINIMAL}[capture]\nmode = \"all\"\nlegs = [\"upstream\"]\ndisplay_port = 80\n")).unwrap();
        assert_eq!(s.capture.mode, CaptureMode::All);
        assert_eq!(s.capture.legs, Legs { client: false, upstream: true });
        assert_eq!(s.capture.display_port, Some(80));
        let err = parse(&format!("{MINIMAL}[capture]\nmode = \"some\"\n")).unwrap_err();
        assert!(err.contains("capture.mode") && err.contains("test.toml:5:"), "{err}");
        let err = parse(&format!("{MINIMAL}[capture]\nlegs = [\"sideways\"]\n")).unwrap_err();
        assert!(err.contains("capture.legs[0]"), "{err}");
        let err = parse(&format!("{MINIMAL}[capture]\nmss_ipv4 = 70000\n")).unwrap_err();
        assert!(err.contains("capture.mss_ipv4"), "{err}");
        assert_eq!(parse(MINIMAL).unwrap().admin, None, "no admin endpoints unless asked");
        let on = parse(&format!("{MINIMAL}[admin]\n")).unwrap();
        assert_eq!(on.admin, Some("127.0.0.1:9180".parse().unwrap()), "loopback by default");
        let err = parse(&format!("{MINIMAL}[log]\nlevel = \"wstap=loud\"\n")).unwrap_err();
        assert!(err.contains("log.level"), "{err}");
        assert_eq!(parse(&format!("{MINIMAL}[log]\nlevel = \"wstap=debug\"\n")).unwrap().log_level, "wstap=debug");
        let err = parse(&format!("{MINIMAL}[capture]\nfile_mode = \"0999\"\n")).unwrap_err();
        assert!(err.contains("capture.file_mode"), "{err}");
        let err = parse(&format!("{MINIMAL}[capture.rotate]\nsize = \"1KiB\"\n")).unwrap_err();
        assert!(err.contains("capture.rotate.size"), "{err}");
        let s = parse(&format!("{MINIMAL}[capture.rotate]\nsize = 0\ninterval = \"0s\"\nfiles = 3\n")).unwrap();
        assert_eq!((s.capture.rotate.size, s.capture.rotate.interval, s.capture.rotate.files), (0, None, 3));
    }

    #[test]
    fn effective_settings_parse_back_to_the_same() {
        let s = parse(MINIMAL).unwrap();
        let again = parse(&s.to_string()).unwrap();
        assert_eq!(s.to_string(), again.to_string());
        assert_eq!(s.limits, again.limits);
    }

    #[test]
    fn errors_name_key_file_and_line() {
        let cases: &[(&str, &[&str])] = &[
            (
                "listen = [\"127.0.0.1:8080\"]\n[[route]]\nupstream = \"ftp://x:1\"\n",
                &["test.toml:3:", "route[0].upstream", "ws://"],
            ),
            (
                "listen = [\"127.0.0.1:8080\"]\n[[route]]\nupstream = \"ws://a:1\"\n[limits]\nhandshake_timeout = \"10 parsecs\"\n",
                &["test.toml:5:", "limits.handshake_timeout", "invalid duration"],
            ),
            (
                "listen = [\"127.0.0.1:8080\"]\n[[route]]\nupstream = \"ws://a:1\"\n[limits]\nmax_header_size = \"64 KB/s\"\n",
                &["test.toml:5:", "limits.max_header_size", "unknown unit"],
            ),
            (
                "listen = [\"127.0.0.1:8080\"]\n[[route]]\nupstream = \"ws://a:1\"\nbogus = 1\n",
                &["test.toml:4:", "route[0]", "unknown field `bogus`"],
            ),
            ("listen = [\"nonsense\"]\n", &["test.toml:1:", "listen[0]", "invalid socket address"]),
            ("listen = [\"127.0.0.1:1\"]\n", &["key `route`", "at least one"]),
            (
                "listen = [\"127.0.0.1:1\"]\n[[route]]\npath_prefix = \"api\"\nupstream = \"ws://a:1\"\n",
                &["key `route[0].path_prefix`", "must start with '/'"],
            ),
            (
                "listen = [\"127.0.0.1:1\"]\n[[route]]\nupstream = \"ws://a:1\"\n[limits]\nmax_connections = 0\n",
                &["key `limits.max_connections`"],
            ),
            ("listen = [\n", &["test.toml:"]),
        ];
        for (text, wants) in cases {
            let err = parse(text).expect_err(text);
            for want in *wants {
                assert!(err.contains(want), "error for {text:?} should contain {want:?}: {err}");
            }
        }
    }

    #[test]
    fn byte_sizes() {
        for (s, n) in [("64KiB", 65536), ("64 KiB", 65536), ("1MB", 1_000_000), ("100", 100), ("2GiB", 2 << 30)] {
            assert_eq!(ByteSize::parse(s), Ok(ByteSize(n)), "{s}");
        }
        for s in ["", "KiB", "1.5MiB", "-1", "99999999999999TiB"] {
            assert!(ByteSize::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn ipv6_listen_and_zero_timeouts() {
        let s = parse(
            "listen = [\"[::1]:0\", \"127.0.0.1:0\"]\n[[route]]\nupstream = \"http://[::1]:9\"\n[limits]\nidle_timeout = \"0s\"\nupstream_timeout = \"0s\"\n",
        )
        .unwrap();
        assert!(s.listen[0].is_ipv6());
        assert_eq!(s.limits.upstream_timeout, None);
    }
}
