//! The TOML config: a serde file model (`deny_unknown_fields`) and its validation into
//! typed [`Settings`]. Parsing a string is separate from reading a file, and every error
//! names the file, the key path (`route[1].upstream`) and, where known, the line. This
//! module reads nothing but the config file and the TLS files it names (and the system's
//! root certificates for TLS upstreams, and the host's users and groups for `[live]`),
//! looks at the key log's path without opening it, and opens no sockets.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod capture;
mod file;
pub mod keylog;
mod live;
pub mod route;
mod show;
pub mod tls;
mod units;
mod upload;
pub(crate) mod users;
mod validate;

pub use capture::{
    CaptureMode, CaptureSettings, DisplayPort, FilesPer, Legs, Policy, PureAcks, Redact, RotateSettings, Segmentation,
    Snap, TlsCapture,
};
use file::FileConfig;
pub use live::{canonical, LiveFormat, LiveListen, LiveSettings, LiveUser, SocketAccess};
use route::Route;
pub use units::{ByteSize, HumanDuration};
pub use upload::{host_name, parse_url, Credentials, OnFinish, Secret, UploadSettings, Verify};

/// A listener's HTTP/2 (`[[listener]] http2 = true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2 {
    /// WebSocket over HTTP/2 (RFC 8441) is offered: `SETTINGS_ENABLE_CONNECT_PROTOCOL`.
    pub connect_protocol: bool,
}

impl Settings {
    /// The TLS settings of the listener configured at `addr`, if it terminates TLS.
    pub fn tls_at(&self, addr: SocketAddr) -> Option<&tls::ServerTls> {
        self.tls.iter().find(|(a, _)| *a == addr).map(|(_, t)| t)
    }

    /// Whether the listener configured at `addr` speaks HTTP/2, and how.
    pub fn http2_at(&self, addr: SocketAddr) -> Option<Http2> {
        self.http2.iter().find(|(a, _)| *a == addr).map(|(_, h)| *h)
    }
}

/// Validated settings: everything the daemon runs from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file these settings came from (for messages).
    pub source: PathBuf,
    /// The addresses to listen on, in order: `listen`, then each `[[listener]]`.
    pub listen: Vec<SocketAddr>,
    /// The listeners that terminate TLS, with their settings.
    pub tls: Vec<(SocketAddr, tls::ServerTls)>,
    /// The listeners that speak HTTP/2 besides HTTP/1.1 (`http2 = true`).
    pub http2: Vec<(SocketAddr, Http2)>,
    /// Threads running connections: 0 = one per CPU; 1 = every task on one thread.
    pub workers: usize,
    /// In file order; the first match wins.
    pub routes: Vec<Route>,
    /// Connection limits and timeouts.
    pub limits: Limits,
    /// How a SIGTERM drains.
    pub shutdown: ShutdownSettings,
    /// What the proxy does to requests.
    pub proxy: ProxySettings,
    /// What is recorded, and how.
    pub capture: CaptureSettings,
    /// A tracing filter (`info`, `wstap=debug`, …); `RUST_LOG` wins when set.
    pub log_level: String,
    /// Where `/metrics`, `/sessions` and `/healthz` are served; `None`: nowhere.
    pub admin: Option<SocketAddr>,
    /// The live capture stream; `None`: none.
    pub live: Option<LiveSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// The `[limits]` table.
pub struct Limits {
    /// Client connections open at once; past it, new ones get `503` and are closed.
    pub max_connections: usize,
    /// Client connections open at once from one IP address; past it, new ones get `429`
    /// and are closed. 0: no such limit.
    pub max_connections_per_client: usize,
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
    /// Longest pause between two pieces of a request body; past it, `408`.
    pub body_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// The `[shutdown]` table.
pub struct ShutdownSettings {
    /// How long in-flight requests and sessions may run on after SIGTERM/SIGINT.
    pub grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// The `[proxy]` table.
pub struct ProxySettings {
    /// Add `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host`.
    pub x_forwarded: bool,
    /// Pass the client's `Host` header to the upstream instead of the upstream's authority.
    pub preserve_host: bool,
    /// Route (and forward) the normalised path: unreserved escapes decoded, slashes
    /// merged, dot-segments removed; paths that climb above the root or out of their
    /// route get `400`.
    pub normalize_path: bool,
    /// What an escaped slash in a path does (`proxy.allow_encoded_slash`).
    pub encoded_slash: EncodedSlash,
}

/// What an escaped `/` or `\` (`%2F`, `%5C`) in a path does (`proxy.allow_encoded_slash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodedSlash {
    /// The request gets `400`: the escape could hide a path segment from the route.
    Refused,
    /// The escape stays as it is, an opaque part of its segment.
    Kept,
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
        validate::validate(parse_file(text, source)?, source)
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
        assert_eq!(s.capture.policy.mode, CaptureMode::Websocket);
        assert_eq!(s.capture.legs, Legs { client: true, upstream: false }, "the client leg only, by default");
        assert_eq!(s.routes[0].policy, Policy::default());
        assert_eq!((s.capture.mss_ipv4, s.capture.mss_ipv6, s.capture.display_port), (1460, 1440, DisplayPort::Auto));
        assert_eq!(s.capture.redact, Redact::defaults(), "credentials are redacted unless the config says otherwise");
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
        assert_eq!(s.capture.policy.mode, CaptureMode::All);
        assert_eq!(s.capture.legs, Legs { client: false, upstream: true });
        assert_eq!(s.capture.display_port, DisplayPort::Fixed(80));
        assert_eq!(
            parse(&format!("{MINIMAL}[capture]\ndisplay_port = 0\n")).unwrap().capture.display_port,
            DisplayPort::Real
        );
        let err = parse(&format!("{MINIMAL}[capture]\ndisplay_port = \"sometimes\"\n")).unwrap_err();
        assert!(err.contains("capture.display_port"), "{err}");
        let err = parse(&format!("{MINIMAL}[capture]\nmode = \"some\"\n")).unwrap_err();
        assert!(err.contains("capture.mode") && err.contains("test.toml:5:"), "{err}");
        let err = parse(&format!("{MINIMAL}[capture]\nlegs = [\"sideways\"]\n")).unwrap_err();
        assert!(err.contains("capture.legs[0]"), "{err}");
        let err = parse(&format!("{MINIMAL}[capture]\nmss_ipv4 = 70000\n")).unwrap_err();
        assert!(err.contains("capture.mss_ipv4"), "{err}");
        assert_eq!(parse(MINIMAL).unwrap().capture.segment, Segmentation::Mss, "MSS-sized segments by default");
        let gro = parse(&format!("{MINIMAL}[capture]\nsegment = \"gro\"\n")).unwrap();
        assert_eq!(gro.capture.segment, Segmentation::Gro);
        let err = parse(&format!("{MINIMAL}[capture]\nsegment = \"jumbo\"\n")).unwrap_err();
        assert!(err.contains("capture.segment") && err.contains("test.toml:5:"), "{err}");
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
        // Strings TOML escapes differently from Rust's Debug: a quote in a path, a
        // combining accent, a backslash, a tab.
        let odd = format!("{MINIMAL}[capture]\ndir = \"caps/bob's \\\"x\\\" \\\\ e\u{301}\\t\"\n");
        let s = parse(&odd).unwrap();
        assert_eq!(s.capture.dir, Path::new("caps/bob's \"x\" \\ e\u{301}\t"));
        let again = parse(&s.to_string()).unwrap();
        assert_eq!(again.capture.dir, s.capture.dir);
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
            // Values `run` could not honour: each named, with the allowed range.
            (
                "listen = [\"127.0.0.1:1\"]\n[[route]]\nupstream = \"ws://a:1\"\n[limits]\nmax_connections = 9223372036854775807\n",
                &["key `limits.max_connections`", "between 1 and 16777216"],
            ),
            (
                "listen = [\"127.0.0.1:1\"]\n[[route]]\nupstream = \"ws://a:1\"\n[limits]\nidle_timeout = \"1000000 years\"\n",
                &["limits.idle_timeout", "at most 10 years"],
            ),
            (
                "listen = [\"127.0.0.1:1\"]\n[[route]]\nupstream = \"ws://a:1\"\n[capture.rotate]\ninterval = \"18446744073709551616ns\"\n",
                &["capture.rotate.interval"],
            ),
            (
                "listen = [\"127.0.0.1:1\"]\n[[route]]\nupstream = \"ws://a:1\"\n[shutdown]\ngrace = \"600 years\"\n",
                &["shutdown.grace", "at most 10 years"],
            ),
            (
                "listen = [\"127.0.0.1:1\"]\n[[route]]\nupstream = \"ws://a:1\"\n[capture]\ntls = \"sealed\"\n",
                &["test.toml:5:", "capture.tls", "`plaintext` or `encrypted`"],
            ),
            (
                "listen = [\"127.0.0.1:1\"]\n[[route]]\npath_prefix = \"/a\"\nupstream = \"ws://a:1\"\ncapture = \"all\"\n\
                 [[route]]\nupstream = \"ws://a:1\"\ncapture = \"off\"\n[capture]\ntls = \"encrypted\"\n",
                &["route[1].capture", "route[0] records whole", "capture.tls = \"decrypted\""],
            ),
            (
                "listen = [\"127.0.0.1:1\"]\n[[route]]\nupstream = \"ws://a:1\"\n[capture]\ntls_keylog = \"/no/such/dir/keys\"\n",
                &["capture.tls_keylog", "/no/such/dir/keys", "not a file in an existing directory"],
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

    #[test]
    fn routes_override_the_capture_policy_and_the_files_get_the_legs_any_route_records() {
        let text = "listen = [\"127.0.0.1:1\"]\n\
            [[route]]\npath_prefix = \"/health\"\nupstream = \"ws://a:1\"\ncapture = \"off\"\n\
            [[route]]\npath_prefix = \"/bulk\"\nupstream = \"ws://a:1\"\nsample = 0.25\nmax_message_bytes = \"1KiB\"\n\
            [[route]]\nupstream = \"ws://a:1\"\nlegs = [\"client\", \"upstream\"]\n\
            [capture]\nmax_session_bytes = \"1MiB\"\nsample_seed = 7\n";
        let s = parse(text).unwrap();
        let p: Vec<&Policy> = s.routes.iter().map(|r| &r.policy).collect();
        assert_eq!((p[0].mode, p[0].records()), (CaptureMode::Off, false));
        assert_eq!((p[1].sample, p[1].snap), (0.25, Snap { message: Some(1024), session: Some(1 << 20) }));
        assert_eq!(p[2].legs, Legs { client: true, upstream: true });
        assert_eq!(s.capture.legs, Legs { client: true, upstream: true }, "one route records the upstream leg");
        assert_eq!(s.capture.sample_seed, Some(7));
        let again = parse(&s.to_string()).unwrap();
        assert_eq!(
            again.routes.iter().map(|r| r.policy).collect::<Vec<_>>(),
            s.routes.iter().map(|r| r.policy).collect::<Vec<_>>()
        );
        for (bad, key) in [
            ("sample = 1.5", "route[0].sample"),
            ("legs = []", "route[0].legs"),
            ("capture = \"sometimes\"", "route[0].capture"),
        ] {
            let err =
                parse(&format!("listen = [\"127.0.0.1:1\"]\n[[route]]\nupstream = \"ws://a:1\"\n{bad}\n")).unwrap_err();
            assert!(err.contains(key), "{bad}: {err}");
        }
        let off = parse(&format!("{MINIMAL}[capture]\nmode = \"off\"\n")).unwrap();
        assert!(!off.capture.on(), "no route records anything: no capture writer");
    }

    #[test]
    fn redaction_is_on_by_default_configurable_and_loud_when_off() {
        let s = parse(&format!(
            "{MINIMAL}[capture.redact]\nheaders = [\"X-Api-Key\"]\nquery = [\"sig\"]\npayload = ['\"password\":\"[^\"]*\"']\n"
        ))
        .unwrap();
        assert_eq!(
            (s.capture.redact.headers.clone(), s.capture.redact.query.clone()),
            (vec!["x-api-key".to_owned()], vec!["sig".to_owned()])
        );
        assert_eq!(s.capture.redact.payload[0].as_str(), r#""password":"[^"]*""#);
        assert_eq!(parse(&s.to_string()).unwrap().capture.redact, s.capture.redact, "printed back as it was read");
        let off = parse(&format!("{MINIMAL}[capture]\nredact = false\n")).unwrap();
        assert!(off.capture.redact.is_off());
        assert!(off.to_string().contains("# WARNING: redaction is off"), "{off}");
        assert!(parse(&off.to_string()).unwrap().capture.redact.is_off());
        let err = parse(&format!("{MINIMAL}[capture.redact]\npayload = [\"(unclosed\"]\n")).unwrap_err();
        assert!(err.contains("capture.redact.payload[0]"), "{err}");
        let err = parse(&format!("{MINIMAL}[capture.redact]\nheaders = [\"bad header\"]\n")).unwrap_err();
        assert!(err.contains("capture.redact.headers[0]"), "{err}");
    }
}
