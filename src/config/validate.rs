//! From the file model to typed [`Settings`], one table at a time. Every check that fails
//! names the key it is about; the caller adds the file.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::file::{FileCapture, FileConfig, FileDisplayPort, FileLimits, FileRedact, FileRoute, LegName};
use super::route::Route;
use super::units::{ByteSize, HumanDuration};
use super::{
    CaptureMode, CaptureSettings, ConfigError, DisplayPort, EncodedSlash, FilesPer, Legs, Limits, Policy,
    ProxySettings, PureAcks, Redact, RotateSettings, Settings, ShutdownSettings, Snap, TlsCapture,
};
use wstap_wire::tcp::MSS_MAX;

/// Most worker threads `workers` may ask for.
const MAX_WORKERS: usize = 1024;
/// The range `limits.max_header_size` must fall in.
/// More connections than any one process can hold open (file descriptors).
const MAX_CONNECTIONS: usize = 1 << 24;
const HEAD_SIZES: std::ops::RangeInclusive<u64> = 1024..=16 << 20;

/// A failed check: the key and what is wrong with it.
struct Invalid {
    key: String,
    msg: String,
}

fn fail<T>(key: impl Into<String>, msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid { key: key.into(), msg: msg.into() })
}

/// The settings `file` (read from `source`) stands for, or the first thing wrong with it.
pub(super) fn validate(file: FileConfig, source: &Path) -> Result<Settings, ConfigError> {
    settings(file, source)
        .map_err(|Invalid { key, msg }| ConfigError(format!("invalid config {}: key `{key}`: {msg}", source.display())))
}

fn settings(mut f: FileConfig, source: &Path) -> Result<Settings, Invalid> {
    let mut listen = std::mem::take(&mut f.listen);
    let mut tls = Vec::new();
    let mut http2 = Vec::new();
    for (i, l) in std::mem::take(&mut f.listeners).into_iter().enumerate() {
        listen.push(l.addr);
        // TLS records captured whole cannot be restated stream by stream, and Wireshark
        // shows no WebSocket inside HTTP/2: with `capture.tls = "encrypted"` a TLS
        // listener offers HTTP/1.1 only (docs/http2.md).
        let h2_over_tls = l.http2 && f.capture.tls != TlsCapture::Encrypted;
        if let Some(t) = l.tls {
            let t = super::tls::server_tls(t, h2_over_tls)
                .map_err(|(key, msg)| Invalid { key: format!("listener[{i}].tls.{key}"), msg })?;
            tls.push((l.addr, t));
        }
        if l.http2 {
            http2.push((l.addr, super::Http2 { connect_protocol: l.connect_protocol }));
        }
    }
    check_listen(&listen)?;
    if f.workers > MAX_WORKERS {
        return fail("workers", format!("{} is more than {MAX_WORKERS}", f.workers));
    }
    let mut capture = capture(f.capture)?;
    let routes = routes(f.routes, &capture.policy)?;
    encrypted_whole(&capture, &routes)?;
    let limits = limits(f.limits)?;
    capture.legs = routes
        .iter()
        .filter(|r| r.policy.records())
        .fold(Legs { client: false, upstream: false }, |all, r| all.union(r.policy.legs));
    let live = super::live::live(f.live).map_err(|(key, msg)| Invalid { key: format!("live.{key}"), msg })?;
    if let Some(super::LiveListen::Tcp(live)) = live.as_ref().map(|l| &l.listen) {
        let taken = |a: &SocketAddr| a == live && a.port() != 0;
        if listen.iter().any(taken) || f.admin.as_ref().is_some_and(|a| taken(&a.listen)) {
            return fail("live.listen", format!("{live} is already a proxy or admin address"));
        }
    }
    capture.live = live.as_ref().map(|l| l.format);
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&f.log.level) {
        return fail("log.level", format!("{:?} is not a log filter: {e}", f.log.level));
    }
    Ok(Settings {
        source: source.to_owned(),
        listen,
        tls,
        http2,
        workers: f.workers,
        routes,
        limits,
        shutdown: ShutdownSettings { grace: f.shutdown.grace.0 },
        proxy: ProxySettings {
            x_forwarded: f.proxy.x_forwarded,
            preserve_host: f.proxy.preserve_host,
            normalize_path: f.proxy.normalize_path,
            encoded_slash: if f.proxy.allow_encoded_slash { EncodedSlash::Kept } else { EncodedSlash::Refused },
        },
        capture,
        log_level: f.log.level,
        admin: f.admin.map(|a| a.listen),
        live,
    })
}

fn check_listen(listen: &[SocketAddr]) -> Result<(), Invalid> {
    if listen.is_empty() {
        return fail("listen", "at least one address is required (in `listen` or a [[listener]])");
    }
    for (i, addr) in listen.iter().enumerate() {
        if listen[..i].contains(addr) {
            return fail("listen", format!("{addr} is listed twice (`listen` and [[listener]] together)"));
        }
    }
    Ok(())
}

fn routes(file: Vec<FileRoute>, defaults: &Policy) -> Result<Vec<Route>, Invalid> {
    if file.is_empty() {
        return fail("route", "at least one [[route]] is required");
    }
    let mut routes = Vec::with_capacity(file.len());
    for (i, r) in file.into_iter().enumerate() {
        if !r.path_prefix.starts_with('/') {
            return fail(format!("route[{i}].path_prefix"), format!("{:?} must start with '/'", r.path_prefix));
        }
        let host = match r.host {
            Some(h) if h.is_empty() || h.contains(['/', ' ']) => {
                return fail(format!("route[{i}].host"), format!("{h:?} is not a host name"));
            }
            h => h.map(|h| h.to_ascii_lowercase()),
        };
        let key = |name: &str| format!("route[{i}].{name}");
        let mode = r.capture.unwrap_or(defaults.mode);
        let policy = Policy {
            mode,
            legs: match r.legs {
                Some(names) => legs(&key("legs"), &names, mode)?,
                None => defaults.legs,
            },
            sample: match r.sample {
                Some(s) => sample(&key("sample"), s)?,
                None => defaults.sample,
            },
            snap: Snap {
                message: r.max_message_bytes.map_or(defaults.snap.message, bytes_limit),
                session: r.max_session_bytes.map_or(defaults.snap.session, bytes_limit),
            },
        };
        let tls = match (r.upstream.tls(), r.tls) {
            (true, tls) => Some(
                super::tls::upstream_tls(tls.unwrap_or_default(), r.upstream.connect_host())
                    .map_err(|(k, msg)| Invalid { key: key(&format!("tls.{k}")), msg })?,
            ),
            (false, Some(_)) => {
                return fail(
                    key("tls"),
                    format!("the upstream {} is plain; TLS settings need wss:// or https://", r.upstream),
                );
            }
            (false, None) => None,
        };
        let (path_prefix, strip_prefix, upstream) = (r.path_prefix, r.strip_prefix, r.upstream);
        routes.push(Route { host, path_prefix, strip_prefix, upstream, policy, tls });
    }
    Ok(routes)
}

fn limits(l: FileLimits) -> Result<Limits, Invalid> {
    for (key, n, min) in [
        ("limits.max_connections", l.max_connections, 1),
        ("limits.max_connections_per_client", l.max_connections_per_client, 0),
    ] {
        if !(min..=MAX_CONNECTIONS).contains(&n) {
            return fail(key, format!("must be between {min} and {MAX_CONNECTIONS}, not {n}"));
        }
    }
    if l.handshake_timeout.0.is_zero() {
        return fail("limits.handshake_timeout", "must be more than 0s");
    }
    if l.connect_timeout.0.is_zero() {
        return fail("limits.connect_timeout", "must be more than 0s");
    }
    if !HEAD_SIZES.contains(&l.max_header_size.0) {
        let size = l.max_header_size.0;
        return fail("limits.max_header_size", format!("must be between 1KiB and 16MiB, not {size} bytes"));
    }
    let nonzero = |d: HumanDuration| (!d.0.is_zero()).then_some(d.0);
    Ok(Limits {
        max_connections: l.max_connections,
        max_connections_per_client: l.max_connections_per_client,
        handshake_timeout: l.handshake_timeout.0,
        idle_timeout: nonzero(l.idle_timeout),
        max_header_size: l.max_header_size.0 as usize,
        connect_timeout: l.connect_timeout.0,
        upstream_timeout: nonzero(l.upstream_timeout),
        body_timeout: nonzero(l.body_timeout),
    })
}

fn capture(c: FileCapture) -> Result<CaptureSettings, Invalid> {
    let named = |(key, msg): (String, String)| Invalid { key, msg };
    let (instance, prefix) = super::upload::naming(c.instance, &c.prefix).map_err(named)?;
    let (on_finish, upload) =
        super::upload::shipping(c.on_finish, c.on_finish_timeout, c.on_finish_concurrency, c.upload).map_err(named)?;
    let policy = Policy {
        mode: c.mode,
        legs: legs("capture.legs", &c.legs, c.mode)?,
        sample: sample("capture.sample", c.sample)?,
        snap: Snap { message: bytes_limit(c.max_message_bytes), session: bytes_limit(c.max_session_bytes) },
    };
    for (key, mss) in [("capture.mss_ipv4", c.mss_ipv4), ("capture.mss_ipv6", c.mss_ipv6)] {
        if !(64..=MSS_MAX).contains(&mss) {
            return fail(key, format!("must be between 64 and {MSS_MAX}, not {mss}"));
        }
    }
    if c.queue_size.0 < 64 * 1024 {
        return fail("capture.queue_size", "must be at least 64KiB");
    }
    if c.flush_interval.0.is_zero() {
        return fail("capture.flush_interval", "must be more than 0s");
    }
    let file_mode = match u32::from_str_radix(&c.file_mode, 8) {
        Ok(m) if m <= 0o777 && c.file_mode.len() <= 4 => m,
        _ => return fail("capture.file_mode", format!("{:?} is not an octal file mode such as \"0640\"", c.file_mode)),
    };
    let iv = c.rotate.interval.0;
    if !iv.is_zero() && iv < Duration::from_secs(1) {
        return fail("capture.rotate.interval", "must be 0s (never) or at least 1s");
    }
    if c.rotate.size.0 != 0 && c.rotate.size.0 < 64 * 1024 {
        return fail("capture.rotate.size", "must be 0 (never) or at least 64KiB");
    }
    if let Some(path) = &c.tls_keylog {
        if let Err(refusal) = super::keylog::check(path) {
            return fail("capture.tls_keylog", format!("{} {refusal}", path.display()));
        }
    }
    Ok(CaptureSettings {
        policy,
        legs: policy.legs,
        dir: c.dir,
        prefix,
        display_port: display_port(c.display_port)?,
        mss_ipv4: c.mss_ipv4,
        mss_ipv6: c.mss_ipv6,
        segment: c.segment,
        acks: if c.acks { PureAcks::Written } else { PureAcks::Omitted },
        queue_size: c.queue_size.0 as usize,
        flush_interval: c.flush_interval.0,
        direct_io: c.direct_io,
        files: if c.per_session { FilesPer::Session } else { FilesPer::Capture },
        file_mode,
        rotate: RotateSettings {
            size: c.rotate.size.0,
            interval: (!iv.is_zero()).then_some(iv),
            files: c.rotate.files,
            max_wait: c.rotate.max_wait.0,
        },
        redact: redact(c.redact)?,
        sample_seed: c.sample_seed,
        tls: c.tls,
        tls_keylog: c.tls_keylog,
        live: None,
        instance,
        on_finish,
        upload,
    })
}

/// The legs `names` lists (at least one, unless `mode` records nothing).
/// With `capture.tls = "encrypted"`, a connection recorded whole is its TLS records,
/// which cannot be cut between requests: a route that would leave out a request of such
/// a connection (`capture = "off"`, or fewer legs) is refused, not quietly recorded.
fn encrypted_whole(capture: &CaptureSettings, routes: &[Route]) -> Result<(), Invalid> {
    if capture.tls != TlsCapture::Encrypted {
        return Ok(());
    }
    let whole = routes.iter().enumerate().filter(|(_, r)| r.policy.mode == CaptureMode::All);
    for (a, all) in whole {
        let covers = |l: Legs| (!all.policy.legs.client || l.client) && (!all.policy.legs.upstream || l.upstream);
        let short = routes.iter().position(|r| r.policy.mode == CaptureMode::Off || !covers(r.policy.legs));
        if let Some(i) = short {
            return fail(
                format!("route[{i}].capture"),
                format!(
                    "with capture.tls = \"encrypted\" a connection that route[{a}] records whole keeps every request \
                     it carries (its TLS records cannot be cut between requests), so route[{i}] cannot record less; \
                     use capture.tls = \"decrypted\", or give both routes the same capture"
                ),
            );
        }
    }
    Ok(())
}

fn legs(key: &str, names: &[LegName], mode: CaptureMode) -> Result<Legs, Invalid> {
    if mode != CaptureMode::Off && names.is_empty() {
        return fail(key, "list at least one of \"client\", \"upstream\" (or set the mode to \"off\")");
    }
    Ok(Legs { client: names.contains(&LegName::Client), upstream: names.contains(&LegName::Upstream) })
}

fn sample(key: &str, fraction: f64) -> Result<f64, Invalid> {
    match fraction {
        f if (0.0..=1.0).contains(&f) => Ok(f),
        f => fail(key, format!("{f} is not a fraction between 0.0 and 1.0")),
    }
}

/// A byte limit, where 0 means none.
fn bytes_limit(size: ByteSize) -> Option<u64> {
    (size.0 != 0).then_some(size.0)
}

fn display_port(port: FileDisplayPort) -> Result<DisplayPort, Invalid> {
    match port {
        FileDisplayPort::Port(0) => Ok(DisplayPort::Real),
        FileDisplayPort::Port(p) => Ok(DisplayPort::Fixed(p)),
        FileDisplayPort::Name(n) if n == "auto" => Ok(DisplayPort::Auto),
        FileDisplayPort::Name(n) => {
            fail("capture.display_port", format!("{n:?} is neither \"auto\" nor a port number"))
        }
    }
}

fn redact(r: FileRedact) -> Result<Redact, Invalid> {
    let t = match r {
        FileRedact::Switch(false) => return Ok(Redact::default()),
        FileRedact::Switch(true) => return Ok(Redact::defaults()),
        FileRedact::Table(t) => t,
    };
    let mut headers = Vec::with_capacity(t.headers.len());
    for (i, h) in t.headers.iter().enumerate() {
        match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) => headers.push(name.as_str().to_owned()),
            Err(_) => return fail(format!("capture.redact.headers[{i}]"), format!("{h:?} is not a header name")),
        }
    }
    for (i, q) in t.query.iter().enumerate() {
        if q.is_empty() || q.contains(['&', '=', '#', ' ']) {
            return fail(format!("capture.redact.query[{i}]"), format!("{q:?} is not a query parameter name"));
        }
    }
    let mut payload = Vec::with_capacity(t.payload.len());
    for (i, p) in t.payload.iter().enumerate() {
        match regex::bytes::RegexBuilder::new(p).size_limit(1 << 20).build() {
            Ok(re) => payload.push(re),
            Err(e) => {
                return fail(format!("capture.redact.payload[{i}]"), format!("{p:?} is not a usable pattern: {e}"))
            }
        }
    }
    Ok(Redact { headers, query: t.query, payload })
}
