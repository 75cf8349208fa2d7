//! The typed `[capture]` settings: where files go and how packets are made, the default
//! [`Policy`] (what is recorded of a session, which each `[[route]]` may override), and
//! [`Redact`] (what never reaches a file).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use wstap_wire::dir::Leg;

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

impl CaptureMode {
    /// `"websocket"`, `"all"` or `"off"`, as the config writes it.
    pub fn name(self) -> &'static str {
        match self {
            CaptureMode::Websocket => "websocket",
            CaptureMode::All => "all",
            CaptureMode::Off => "off",
        }
    }
}

/// Which legs of a session are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Legs {
    /// The client leg (client ↔ wstap).
    pub client: bool,
    /// The upstream leg (wstap ↔ upstream).
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

    /// The legs either records.
    pub fn union(self, other: Legs) -> Legs {
        Legs { client: self.client || other.client, upstream: self.upstream || other.upstream }
    }

    /// `["client", "upstream"]`, as the config writes it.
    pub fn names(self) -> String {
        let names: Vec<String> =
            Leg::BOTH.iter().filter(|l| self.has(**l)).map(|l| format!("{:?}", l.name())).collect();
        format!("[{}]", names.join(", "))
    }
}

/// What is recorded of the sessions (and, in mode `"all"`, the connections) on a
/// route: the `[capture]` defaults, overridden by the route's own keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// What gets recorded.
    pub mode: CaptureMode,
    /// Which legs.
    pub legs: Legs,
    /// The fraction of sessions recorded, decided when a session's capture would start.
    pub sample: f64,
    /// How much of each message and each session is kept.
    pub snap: Snap,
}

impl Default for Policy {
    /// WebSocket sessions, their client leg, every one, whole.
    fn default() -> Policy {
        Policy {
            mode: CaptureMode::Websocket,
            legs: Legs { client: true, upstream: false },
            sample: 1.0,
            snap: Snap::default(),
        }
    }
}

impl Policy {
    /// Whether anything of this route is recorded.
    pub fn records(&self) -> bool {
        self.mode != CaptureMode::Off && self.sample > 0.0
    }
}

/// How much payload a leg's capture keeps. A cut message is written as a frame whose
/// header gives the kept length, with a packet comment giving the real one, so that
/// Wireshark decodes every frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snap {
    /// Payload bytes kept of each message (its frames together); `None`: all.
    pub message: Option<u64>,
    /// Payload bytes kept per direction of a session; past them, data frames are written
    /// without their payload (control frames, close included, stay whole). `None`: all.
    pub session: Option<u64>,
}

/// What a TLS leg's capture holds (`capture.tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsCapture {
    /// The decrypted bytes, written and redacted as on a plain leg.
    #[default]
    Plaintext,
    /// The TLS records as they crossed, and the connection's keys in a Decryption
    /// Secrets Block: Wireshark decrypts them from the file alone. Nothing is redacted.
    Encrypted,
}

/// How a leg's data is cut into packets (`capture.segment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Segmentation {
    /// Segments of at most the MSS, as a capture on the wire of a 1500-byte MTU shows.
    #[default]
    Mss,
    /// Each chunk the proxy relayed at once as one segment of up to 65,495 bytes, as a
    /// capture on a host whose network card coalesces (GRO) or splits late (TSO) shows:
    /// up to 45 times fewer packets to write and to dissect. The SYNs still advertise the
    /// MSS.
    Gro,
}

/// Which server port a leg's packets are written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayPort {
    /// The real ports, always.
    Real,
    /// The real ports, unless Wireshark would hand either port of the connection to a
    /// dissector other than HTTP's; then the server side is written as port 80 (the real
    /// one is in the leg's first comment).
    Auto,
    /// This port for the server side of every leg.
    Fixed(u16),
}

/// What never reaches a capture file: header values, query parameter values and payload
/// patterns, each replaced by as many `*` as it had bytes; and, unless nothing is listed
/// at all, the userinfo of URLs and bearer tokens sent as WebSocket subprotocols. The
/// query rules also apply to the request targets log lines show. The proxied traffic is
/// never changed.
#[derive(Debug, Clone, Default)]
pub struct Redact {
    /// Header names (lower case) whose values are redacted in every HTTP head captured.
    pub headers: Vec<String>,
    /// Query parameter names whose values are redacted wherever a URL is shown (request
    /// targets, `Referer`, `Location`, comments, log lines), compared as servers decode
    /// them (`capture::url`).
    pub query: Vec<String>,
    /// Patterns redacted in message payloads (uncompressed ones; see `docs/capture.md`).
    pub payload: Vec<regex::bytes::Regex>,
}

impl Redact {
    /// Headers redacted unless the config says otherwise: HTTP's credentials, and the API
    /// keys and session tokens of widely used APIs (AWS's session token, Google's and
    /// Azure's API keys).
    pub const DEFAULT_HEADERS: [&'static str; 10] = [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-auth-token",
        "x-access-token",
        "x-amz-security-token",
        "x-goog-api-key",
    ];
    /// Query parameters redacted unless the config says otherwise: tokens, keys and
    /// secrets, and the signatures of pre-signed URLs (AWS's, Azure's `sig`).
    pub const DEFAULT_QUERY: [&'static str; 13] = [
        "token",
        "access_token",
        "id_token",
        "refresh_token",
        "auth",
        "password",
        "secret",
        "api_key",
        "apikey",
        "client_secret",
        "sig",
        "x-amz-signature",
        "x-amz-security-token",
    ];

    /// The defaults: credential headers and token-like query parameters, no payload
    /// patterns.
    pub fn defaults() -> Redact {
        Redact {
            headers: Redact::DEFAULT_HEADERS.map(str::to_owned).to_vec(),
            query: Redact::DEFAULT_QUERY.map(str::to_owned).to_vec(),
            payload: Vec::new(),
        }
    }

    /// Nothing is redacted.
    pub fn is_off(&self) -> bool {
        self.headers.is_empty() && self.query.is_empty() && self.payload.is_empty()
    }
}

impl PartialEq for Redact {
    fn eq(&self, other: &Redact) -> bool {
        let patterns = |r: &Redact| r.payload.iter().map(|p| p.as_str().to_owned()).collect::<Vec<_>>();
        self.headers == other.headers && self.query == other.query && patterns(self) == patterns(other)
    }
}

/// Whether the receivers' pure ACKs are written (`capture.acks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PureAcks {
    /// Each chunk of data is acknowledged: on the receiver's own next data or FIN when
    /// that comes first, else with a pure ACK.
    #[default]
    Written,
    /// Only data, handshakes and teardowns are written.
    Omitted,
}

/// What a capture file holds (`capture.per_session`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FilesPer {
    /// Every session, in one rotating series of files.
    #[default]
    Capture,
    /// One session each: a file per session, finished when it closes.
    Session,
}

/// The `[capture]` table: what is recorded, where, and how packets are made.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureSettings {
    /// What is recorded of a route that does not say otherwise.
    pub policy: Policy,
    /// The legs any route records: the interfaces each file has.
    pub legs: Legs,
    /// Created if missing. Relative paths are relative to the working directory.
    pub dir: PathBuf,
    /// The start of every file name.
    pub prefix: String,
    /// Which server port packets are written with.
    pub display_port: DisplayPort,
    /// Largest synthesized segment over IPv4.
    pub mss_ipv4: u16,
    /// Largest synthesized segment over IPv6.
    pub mss_ipv6: u16,
    /// Segments of the MSS, or as large as the proxy relayed them.
    pub segment: Segmentation,
    /// Whether the receivers' pure ACKs are written (`capture.acks`).
    pub acks: PureAcks,
    /// Bytes of captured data allowed to wait for the writer; past it, data is dropped.
    pub queue_size: usize,
    /// Data reaches the OS at least this often.
    pub flush_interval: Duration,
    /// Files are written around the page cache (`O_DIRECT`) where the filesystem allows.
    pub direct_io: bool,
    /// One rotating series of files, or one file per session (`capture.per_session`).
    pub files: FilesPer,
    /// Mode of created files (the umask applies too).
    pub file_mode: u32,
    /// When files rotate and how many are kept.
    pub rotate: RotateSettings,
    /// What is redacted before it is written.
    pub redact: Redact,
    /// Seeds the choice of sampled sessions, for runs that must repeat; `None`: random.
    pub sample_seed: Option<u64>,
    /// What a TLS leg's capture holds.
    pub tls: TlsCapture,
    /// A key log file (`SSLKEYLOGFILE` format) every TLS connection's keys are appended
    /// to, for captures made by other tools; `None`: none.
    pub tls_keylog: Option<PathBuf>,
    /// A live stream is served (`[live]`), in this format: the writer keeps what a
    /// subscriber joining at any moment needs.
    pub live: Option<super::LiveFormat>,
    /// The name this instance gives its files (`{instance}` in `prefix`), their section
    /// headers and their objects' keys.
    pub instance: String,
    /// A command run for every finished file (`capture.on_finish`).
    pub on_finish: Option<super::OnFinish>,
    /// Finished files are stored in object storage (`[capture.upload]`).
    pub upload: Option<super::UploadSettings>,
}

impl CaptureSettings {
    /// The default capture settings, writing into `dir`: for applications that record
    /// their own connections with [`crate::Tee`].
    pub fn in_dir(dir: impl Into<PathBuf>) -> CaptureSettings {
        let policy = Policy::default();
        CaptureSettings {
            policy,
            legs: policy.legs,
            dir: dir.into(),
            prefix: "wstap".into(),
            display_port: DisplayPort::Auto,
            mss_ipv4: wstap_wire::tcp::MSS_IPV4,
            mss_ipv6: wstap_wire::tcp::MSS_IPV6,
            segment: Segmentation::Mss,
            acks: PureAcks::Written,
            queue_size: 64 << 20,
            flush_interval: Duration::from_secs(1),
            direct_io: true,
            files: FilesPer::Capture,
            file_mode: 0o640,
            rotate: RotateSettings {
                size: 100 << 20,
                interval: Some(Duration::from_secs(3600)),
                files: 24,
                max_wait: Duration::from_secs(5),
            },
            redact: Redact::defaults(),
            sample_seed: None,
            tls: TlsCapture::Plaintext,
            tls_keylog: None,
            live: None,
            instance: super::host_name(),
            on_finish: None,
            upload: None,
        }
    }

    /// Whether anything at all can be recorded: some route records something.
    pub fn on(&self) -> bool {
        self.legs.client || self.legs.upstream
    }
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
