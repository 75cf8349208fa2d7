//! What the commands that read captures share: the filters that pick sessions, how
//! problems and errors are said, and the exit codes (0 matched or listed cleanly, 1 a
//! mismatch or problems in the files, 2 an error).

use std::path::{Path, PathBuf};

use std::process::ExitCode;
use wstap::config::Redact;
use wstap_wire::http;

use wstap_replay::{Endpoint, Filter, Kind, Recording, Session, SessionId};
use wstap_wire::Timestamp;

pub const MATCHED: u8 = 0;
pub const MISMATCH: u8 = 1;
pub const ERROR: u8 = 2;

pub fn report_problems(rec: &Recording) {
    for n in &rec.notes {
        eprintln!("wstap: note: {n}");
    }
    for p in &rec.problems {
        eprintln!("wstap: warning: {p}");
    }
}

pub fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("wstap: {e}");
    ExitCode::from(ERROR)
}

/// The captures to read, and which of their sessions to take.
#[derive(clap::Args)]
pub struct Pick {
    /// Capture files (pcap or pcapng, gzip/zstd/lz4 or not, `-` for standard input), read
    /// as one capture in time order (a rotated set, say). `s3://BUCKET/KEY` reads an
    /// object, `s3://BUCKET/PREFIX/` every capture under it (in key order), streamed.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// For s3:// captures: the store's address, region and credentials are this config's
    /// `[capture.upload]` (else the environment's: AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN).
    #[arg(long, value_name = "CONFIG")]
    pub store_config: Option<PathBuf>,
    #[command(flatten)]
    pub filters: Filters,
}

/// Which sessions to take: every one given must hold (docs/replay.md, "Filters").
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Filters {
    /// The session with this id, as `wstap sessions` shows it.
    #[arg(long, value_name = "ID")]
    pub session: Option<usize>,
    /// Sessions from this client: ADDR or ADDR:PORT ([ADDR]:PORT for IPv6).
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub client: Option<Endpoint>,
    /// Sessions to this server: ADDR or ADDR:PORT.
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub server: Option<Endpoint>,
    /// Sessions whose request target starts with PREFIX (`/chat`, `/feed?room=1`).
    #[arg(long, value_name = "PREFIX")]
    pub path: Option<String>,
    /// Sessions whose Host field names NAME (any case, port ignored).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// Sessions still open at or after TIME (RFC 3339: 2026-12-06T14:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<Timestamp>,
    /// Sessions that began before TIME (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<Timestamp>,
    /// Sessions with a message whose payload (unmasked, inflated) matches REGEX.
    #[arg(long, value_name = "REGEX")]
    pub grep: Option<regex::bytes::Regex>,
    /// Sessions with at least N messages (both ways).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub min_messages: usize,
}

/// An RFC 3339 time: UTC (`Z`), or with an offset (`+01:00`).
fn parse_time(s: &str) -> Result<Timestamp, String> {
    let bad = |e: &dyn std::fmt::Display| format!("{s:?} is not an RFC 3339 time such as 2026-12-06T14:00:00Z ({e})");
    // humantime reads UTC only: an offset is taken off and applied by hand.
    let (utc, offset) = match s.len().checked_sub(6).map(|i| s.split_at(i)) {
        Some((head, tail))
            if tail.len() == 6 && (tail.starts_with('+') || tail.starts_with('-')) && &tail[3..4] == ":" =>
        {
            let (h, m) = (tail[1..3].parse::<i64>(), tail[4..6].parse::<i64>());
            let (Ok(h), Ok(m)) = (h, m) else { return Err(bad(&"a bad offset")) };
            let sign = if tail.starts_with('-') { -1 } else { 1 };
            (format!("{head}Z"), sign * (h * 3600 + m * 60))
        }
        _ => (s.to_string(), 0),
    };
    let t = humantime::parse_rfc3339_weak(&utc).map_err(|e| bad(&e))?;
    let shifted = Timestamp::from_system_time(t).as_nanos() as i128 - i128::from(offset) * 1_000_000_000;
    Ok(Timestamp::saturating_from_nanos(shifted))
}

impl Filters {
    /// The library's filter.
    pub fn filter(&self) -> Filter {
        Filter {
            session: self.session.map(SessionId),
            client: self.client,
            server: self.server,
            path: self.path.clone(),
            host: self.host.clone(),
            since: self.since,
            until: self.until,
            grep: self.grep.clone(),
            min_messages: self.min_messages,
        }
    }

    /// Whether any criterion is given.
    fn any(&self) -> bool {
        self.session.is_some()
            || self.client.is_some()
            || self.server.is_some()
            || self.path.is_some()
            || self.host.is_some()
            || self.since.is_some()
            || self.until.is_some()
            || self.grep.is_some()
            || self.min_messages > 0
    }
}

/// The captures streaming: files, and objects of a store (`s3://`).
pub fn stream(pick: &Pick) -> Result<wstap_replay::Sessions<'static>, String> {
    let is_object = |f: &PathBuf| f.to_str().is_some_and(|s| s.starts_with("s3://"));
    if !pick.files.iter().any(is_object) {
        return wstap_replay::stream(&pick.files).map_err(|e| e.to_string());
    }
    let store = match &pick.store_config {
        Some(config) => match wstap::Settings::load(config) {
            Ok(s) => s.capture.upload.clone(),
            Err(e) => return Err(format!("--store-config: {e:#}")),
        },
        None => None,
    };
    let mut inputs: Vec<(PathBuf, wstap_replay::Opener)> = Vec::new();
    for f in &pick.files {
        match f.to_str().filter(|s| s.starts_with("s3://")) {
            Some(url) => inputs.extend(wstap::ship::read::captures(url, store.as_ref())?),
            None if f.as_os_str() == wstap_replay::input::STDIN => {
                return Err("standard input (`-`) cannot be read together with s3:// captures".into())
            }
            None => {
                let path = f.clone();
                let open: wstap_replay::Opener = Box::new(move || {
                    std::fs::File::open(&path).map(|file| Box::new(file) as Box<dyn std::io::Read + Send>)
                });
                inputs.push((f.clone(), open));
            }
        }
    }
    wstap_replay::stream_opened(inputs).map_err(|e| e.to_string())
}

/// Reads the files and keeps the sessions the filters take (only those are held while
/// the files stream), each checked playable; an error when none is taken.
pub fn chosen(pick: &Pick) -> Result<Vec<Session>, String> {
    let filter = pick.filters.filter();
    let mut stream = stream(pick)?;
    let (mut chosen, mut count) = (Vec::new(), 0);
    for s in stream.by_ref() {
        count += 1;
        if filter.admits(&s) {
            chosen.push(s);
        }
    }
    report_problems(&stream.into_recording());
    if chosen.is_empty() {
        let others = Filters { session: None, ..pick.filters.clone() }.any();
        return Err(match (count, pick.filters.session) {
            (0, _) => "the capture holds no WebSocket session".to_string(),
            (_, Some(id)) if !others => format!("no session {id}: the capture has {count} (see `wstap sessions`)"),
            _ => format!("none of the capture's {count} sessions passes the filters (see `wstap sessions`)"),
        });
    }
    chosen.sort_by_key(|s| s.id);
    chosen.iter().try_for_each(playable)?;
    Ok(chosen)
}

/// The one session the filters take (the only one, with none given).
pub fn one(pick: &Pick) -> Result<Session, String> {
    let mut chosen = chosen(pick)?;
    match chosen.len() {
        1 => Ok(chosen.remove(0)),
        n => Err(format!("{n} sessions pass: choose one with --session or the filters (see `wstap sessions`)")),
    }
}

/// Whether a session can be played: no bytes missing from it.
fn playable(s: &Session) -> Result<(), String> {
    if let Some(m) = s.messages.iter().position(|m| m.kind == wstap_replay::Kind::Gap) {
        let lost = s.messages[m].lost;
        return Err(format!(
            "session {}: the capture lost {lost} bytes at #{} (a gap), so it cannot be played",
            s.id,
            m + 1
        ));
    }
    if let Some(m) = s.messages.iter().position(|m| m.incomplete) {
        return Err(format!(
            "session {}: message #{} is incomplete in the capture, so it cannot be played",
            s.id,
            m + 1
        ));
    }
    Ok(())
}

/// The captures streaming, and the redaction rules of `--redact CONFIG`: what export and
/// carve start from.
pub fn open_redacted(pick: &Pick, redact: Option<&Path>) -> Result<(Redact, wstap_replay::Sessions<'static>), String> {
    let rules = redaction(redact)?;
    Ok((rules, stream(pick)?))
}

/// The redaction rules of `--redact CONFIG` (its `[capture.redact]`), or the capture's
/// defaults: what export and carve leave out.
pub fn redaction(config: Option<&Path>) -> Result<Redact, String> {
    match config {
        None => Ok(Redact::defaults()),
        Some(config) => match wstap::Settings::load(config) {
            Ok(settings) => Ok(settings.capture.redact.clone()),
            Err(e) => Err(format!("--redact: {e:#}")),
        },
    }
}

/// A session with what `rules` names redacted: the heads' credentials, and payload
/// patterns in its messages (each byte of what they match becomes `*`).
pub fn redacted(mut s: Session, rules: &Redact) -> Session {
    let (mut request, mut response) = (s.request_head(), s.response_head());
    wstap::capture::redact_head(&mut request, rules);
    wstap::capture::redact_head(&mut response, rules);
    if let Ok(Some(h)) = http::request(&request) {
        (s.path, s.request_headers) = (h.path, h.headers);
    }
    if let Ok(Some(h)) = http::response(&response) {
        s.response_headers = h.headers;
    }
    for m in s.messages.iter_mut().filter(|m| matches!(m.kind, Kind::Text | Kind::Binary)) {
        wstap::capture::redact_payload(&mut m.data, rules);
    }
    s
}

/// A request target with what the capture's default rules redact in it (token-like
/// query parameters, userinfo): for reports that leave the machine (JUnit files).
pub fn redacted_target(target: &str) -> String {
    let mut line = format!("GET {target} HTTP/1.1\r\n\r\n").into_bytes();
    wstap::capture::redact_head(&mut line, &Redact::defaults());
    match http::request(&line) {
        Ok(Some(h)) => h.path,
        _ => target.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339_in_utc_or_with_an_offset() {
        let utc = parse_time("2026-12-06T14:00:00Z").unwrap();
        assert_eq!(parse_time("2026-12-06T15:00:00+01:00").unwrap(), utc);
        assert_eq!(parse_time("2026-12-06T09:30:00-04:30").unwrap(), utc);
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
        assert!(parse_time("2026-12-06T15:00:00+1x:00").is_err());
    }

    #[test]
    fn reports_name_targets_without_their_tokens() {
        let shown = redacted_target("/chat?room=1&token=abcdef");
        assert!(shown.starts_with("/chat?room=1&token=") && !shown.contains("abcdef"), "{shown}");
    }
}
