//! `wstap check`: the effective settings printed back as TOML, defaults filled in, so
//! that the output parses back to the same settings.

use std::fmt;
use std::time::Duration;

use super::{
    CaptureSettings, DisplayPort, EncodedSlash, FilesPer, LiveFormat, LiveSettings, Policy, PureAcks, Redact,
    Segmentation, Settings, TlsCapture,
};

/// Prints the effective settings as TOML, defaults filled in (`wstap check`).
impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = self.listen.iter().filter(|a| self.tls_at(**a).is_none() && self.http2_at(**a).is_none());
        let listen: Vec<String> = plain.map(|a| Q(&a.to_string()).to_string()).collect();
        writeln!(f, "# effective settings of {}", self.source.display())?;
        writeln!(f, "listen = [{}]", listen.join(", "))?;
        writeln!(f, "workers = {}", self.workers)?;
        for addr in self.listen.iter().filter(|a| self.tls_at(**a).is_some() || self.http2_at(**a).is_some()) {
            writeln!(f, "\n[[listener]]")?;
            writeln!(f, "addr = {}", Q(&addr.to_string()))?;
            if let Some(h) = self.http2_at(*addr) {
                if self.tls_at(*addr).is_some() && self.capture.tls == TlsCapture::Encrypted {
                    writeln!(
                        f,
                        "# capture.tls = \"encrypted\": over TLS this listener offers HTTP/1.1 only (docs/http2.md)"
                    )?;
                }
                writeln!(f, "http2 = true\nconnect_protocol = {}", h.connect_protocol)?;
            }
            let Some(t) = self.tls_at(*addr) else { continue };
            write!(f, "tls = {{ cert = {}, key = {}", P(&t.cert), P(&t.key))?;
            if let Some(ca) = &t.client_ca {
                write!(f, ", client_ca = {}", P(ca))?;
            }
            let sni: Vec<String> = t
                .sni
                .iter()
                .map(|(n, c, k)| format!("{{ name = {}, cert = {}, key = {} }}", Q(n), P(c), P(k)))
                .collect();
            writeln!(f, ", sni = [{}] }}", sni.join(", "))?;
        }
        for r in &self.routes {
            write_route(f, r)?;
        }
        write_limits(f, self)?;
        write_capture(f, &self.capture)?;
        writeln!(f, "\n[log]\nlevel = {}", Q(&self.log_level))?;
        match self.admin {
            Some(a) => writeln!(f, "\n[admin]\nlisten = {:?}", a.to_string())?,
            None => writeln!(f, "\n# [admin]: off")?,
        }
        let Some(l) = &self.live else { return write!(f, "\n# [live]: off") };
        write_live(f, l, &self.capture)
    }
}

/// The `[live]` table.
fn write_live(f: &mut fmt::Formatter<'_>, l: &LiveSettings, capture: &CaptureSettings) -> fmt::Result {
    writeln!(f, "\n[live]\nlisten = {}", Q(&l.listen.to_string()))?;
    if capture.on() && capture.tls == TlsCapture::Encrypted {
        writeln!(f, "# WARNING: capture.tls = \"encrypted\": every subscriber of the stream receives the TLS keys")?;
    }
    writeln!(f, "format = \"{}\"", if l.format == LiveFormat::Pcap { "pcap" } else { "pcapng" })?;
    writeln!(f, "max_clients = {}", l.max_clients)?;
    let users: Vec<String> =
        l.users.iter().map(|u| u.name.as_deref().map_or(u.uid.to_string(), |n| Q(n).to_string())).collect();
    writeln!(f, "users = [{}]", users.join(", "))?;
    match &l.socket {
        None => {
            let allow: Vec<String> = l.allow.iter().map(|(ip, len)| format!("\"{ip}/{len}\"")).collect();
            writeln!(f, "allow = [{}]", allow.join(", "))?;
        }
        Some(s) => {
            writeln!(f, "mode = \"{:04o}\"", s.mode)?;
            if let Some(g) = &l.group_written {
                writeln!(f, "group = {}", Q(g))?;
            }
        }
    }
    write!(f, "buffer = {}", l.buffer)
}

/// A `[[route]]` table.
fn write_route(f: &mut fmt::Formatter<'_>, r: &super::route::Route) -> fmt::Result {
    writeln!(f, "\n[[route]]")?;
    if let Some(h) = &r.host {
        writeln!(f, "host = {}", Q(h))?;
    }
    writeln!(f, "path_prefix = {}", Q(&r.path_prefix))?;
    writeln!(f, "strip_prefix = {}", r.strip_prefix)?;
    writeln!(f, "upstream = {}", Q(&r.upstream.to_string()))?;
    if let Some(t) = &r.tls {
        write!(f, "tls = {{ server_name = {}", Q(&t.server_name.to_str()))?;
        if let Some(ca) = &t.ca_file {
            write!(f, ", ca_file = {}", P(ca))?;
        }
        if let Some((cert, key)) = &t.cert {
            write!(f, ", cert = {}, key = {}", P(cert), P(key))?;
        }
        writeln!(f, ", insecure_skip_verify = {} }}", t.insecure_skip_verify)?;
    }
    write_policy(f, &r.policy, "capture")
}

/// The `[limits]`, `[shutdown]` and `[proxy]` tables.
fn write_limits(f: &mut fmt::Formatter<'_>, s: &Settings) -> fmt::Result {
    let dur = |d: Option<Duration>| humantime::format_duration(d.unwrap_or_default()).to_string();
    let l = &s.limits;
    writeln!(f, "\n[limits]")?;
    writeln!(f, "max_connections = {}", l.max_connections)?;
    writeln!(f, "max_connections_per_client = {}", l.max_connections_per_client)?;
    writeln!(f, "handshake_timeout = {:?}", dur(Some(l.handshake_timeout)))?;
    writeln!(f, "idle_timeout = {:?}", dur(l.idle_timeout))?;
    writeln!(f, "max_header_size = {}", l.max_header_size)?;
    writeln!(f, "connect_timeout = {:?}", dur(Some(l.connect_timeout)))?;
    writeln!(f, "upstream_timeout = {:?}", dur(l.upstream_timeout))?;
    writeln!(f, "body_timeout = {:?}", dur(l.body_timeout))?;
    writeln!(f, "\n[shutdown]")?;
    writeln!(f, "grace = {:?}", dur(Some(s.shutdown.grace)))?;
    writeln!(f, "\n[proxy]")?;
    writeln!(f, "x_forwarded = {}", s.proxy.x_forwarded)?;
    writeln!(f, "normalize_path = {}", s.proxy.normalize_path)?;
    writeln!(f, "allow_encoded_slash = {}", s.proxy.encoded_slash == EncodedSlash::Kept)?;
    writeln!(f, "preserve_host = {}", s.proxy.preserve_host)
}

/// A policy's keys; `mode` is the name its mode goes by (`mode` in `[capture]`,
/// `capture` in a route).
fn write_policy(f: &mut fmt::Formatter<'_>, p: &Policy, mode: &str) -> fmt::Result {
    writeln!(f, "{mode} = {:?}", p.mode.name())?;
    writeln!(f, "legs = {}", p.legs.names())?;
    writeln!(f, "sample = {:?}", p.sample)?;
    writeln!(f, "max_session_bytes = {}", p.snap.session.unwrap_or(0))?;
    writeln!(f, "max_message_bytes = {}", p.snap.message.unwrap_or(0))
}

fn write_capture(f: &mut fmt::Formatter<'_>, c: &CaptureSettings) -> fmt::Result {
    let dur = |d: Option<Duration>| humantime::format_duration(d.unwrap_or_default()).to_string();
    writeln!(f, "\n[capture]")?;
    write_policy(f, &c.policy, "mode")?;
    if let Some(seed) = c.sample_seed {
        writeln!(f, "sample_seed = {seed}")?;
    }
    writeln!(f, "dir = {}", P(&c.dir))?;
    writeln!(f, "instance = {}", Q(&c.instance))?;
    writeln!(f, "prefix = {}", Q(&c.prefix))?;
    match c.display_port {
        DisplayPort::Auto => writeln!(f, "display_port = \"auto\"")?,
        DisplayPort::Real => writeln!(f, "display_port = 0")?,
        DisplayPort::Fixed(p) => writeln!(f, "display_port = {p}")?,
    }
    writeln!(f, "mss_ipv4 = {}", c.mss_ipv4)?;
    writeln!(f, "mss_ipv6 = {}", c.mss_ipv6)?;
    if c.segment == Segmentation::Gro {
        writeln!(f, "segment = \"gro\"")?;
    }
    writeln!(f, "acks = {}", c.acks == PureAcks::Written)?;
    writeln!(f, "queue_size = {}", c.queue_size)?;
    writeln!(f, "flush_interval = {:?}", dur(Some(c.flush_interval)))?;
    writeln!(f, "direct_io = {}", c.direct_io)?;
    writeln!(f, "per_session = {}", c.files == FilesPer::Session)?;
    writeln!(f, "file_mode = \"{:04o}\"", c.file_mode)?;
    if c.tls == TlsCapture::Encrypted {
        writeln!(f, "# WARNING: TLS legs are captured encrypted with their keys: nothing in them is redacted")?;
        writeln!(f, "tls = \"encrypted\"")?;
    }
    if let Some(keylog) = &c.tls_keylog {
        writeln!(f, "tls_keylog = {}", P(keylog))?;
    }
    if c.redact.is_off() {
        writeln!(f, "# WARNING: redaction is off: capture files hold every credential that crossed wstap")?;
        writeln!(f, "redact = false")?;
    }
    if let Some(hook) = &c.on_finish {
        let argv: Vec<String> = hook.command.iter().map(|a| Q(a).to_string()).collect();
        writeln!(f, "on_finish = [{}]", argv.join(", "))?;
        writeln!(f, "on_finish_timeout = {:?}", dur(Some(hook.timeout)))?;
        writeln!(f, "on_finish_concurrency = {}", hook.concurrency)?;
    }
    let r = &c.rotate;
    writeln!(f, "\n[capture.rotate]")?;
    writeln!(f, "size = {}", r.size)?;
    writeln!(f, "interval = {:?}", dur(r.interval))?;
    writeln!(f, "files = {}", r.files)?;
    writeln!(f, "max_wait = {:?}", dur(Some(r.max_wait)))?;
    if !c.redact.is_off() {
        write_redact(f, &c.redact)?;
    }
    match &c.upload {
        Some(u) => write_upload(f, u),
        None => Ok(()),
    }
}

/// `[capture.upload]`: the credential files by name, never what they hold.
fn write_upload(f: &mut fmt::Formatter<'_>, u: &super::UploadSettings) -> fmt::Result {
    writeln!(f, "\n[capture.upload]")?;
    writeln!(f, "url = {}", Q(&u.url))?;
    if let Some(e) = &u.endpoint {
        writeln!(f, "endpoint = {}", Q(e))?;
    }
    if let Some(r) = &u.region {
        writeln!(f, "region = {}", Q(r))?;
    }
    match &u.credentials {
        Some(c) => {
            let keys = ["access_key_id_file", "secret_access_key_file", "session_token_file"];
            for (key, file) in keys.iter().zip(&c.files) {
                writeln!(f, "{key} = {}", P(file))?;
            }
        }
        None => writeln!(f, "# credentials: from the environment or the instance's role")?,
    }
    if let Some(ca) = &u.ca_file {
        writeln!(f, "ca_file = {}", P(ca))?;
    }
    writeln!(f, "delete_after = {}", u.delete_after)?;
    writeln!(f, "concurrency = {}", u.concurrency)?;
    writeln!(f, "max_backlog = {}", u.max_backlog)?;
    let verify = if u.verify == super::Verify::Etag { "etag" } else { "size" };
    writeln!(f, "verify = \"{verify}\"")?;
    writeln!(f, "shutdown_wait = {:?}", humantime::format_duration(u.shutdown_wait).to_string())
}

fn write_redact(f: &mut fmt::Formatter<'_>, r: &Redact) -> fmt::Result {
    let list = |items: Vec<&str>| items.iter().map(|i| Q(i).to_string()).collect::<Vec<_>>().join(", ");
    writeln!(f, "\n[capture.redact]")?;
    writeln!(f, "headers = [{}]", list(r.headers.iter().map(String::as_str).collect()))?;
    writeln!(f, "query = [{}]", list(r.query.iter().map(String::as_str).collect()))?;
    writeln!(f, "payload = [{}]", list(r.payload.iter().map(|p| p.as_str()).collect()))
}

/// A TOML basic string: quotes, backslashes and control characters escaped as TOML
/// escapes them (Rust's `{:?}` writes some, such as `\'` in a path or `\u{301}`, that
/// TOML does not read).
struct Q<'a>(&'a str);

impl fmt::Display for Q<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if c.is_control() => write!(f, "\\u{:04X}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

/// A path as a TOML string (a path that is not UTF-8 is shown with U+FFFD where it is not).
struct P<'a>(&'a std::path::Path);

impl fmt::Display for P<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Q(&self.0.to_string_lossy()).fmt(f)
    }
}
