//! The `export` command: the sessions the filters take as HAR 1.2 (one entry per session,
//! with the WebSocket messages in `_webSocketMessages` as Chrome DevTools writes them, so
//! DevTools, HTTP Toolkit and HAR viewers open it) or as JSON lines (one message a line,
//! for jq and DuckDB). Redacted as the capture redacts: the default rules, or a config's
//! `[capture.redact]` with `--redact`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use data_encoding::BASE64;
use serde_json::{json, Value};
use wstap_replay::{Dir, Kind, Message, Session};

use crate::pick::{fail, open_redacted, redacted, report_problems, Pick, MATCHED, MISMATCH};
use crate::sessions::utc;

/// `wstap export`: writes as the sessions stream (HAR needs them all: its entries are
/// written one by one as each session ends, inside the log's array).
pub fn export(pick: &Pick, format: &str, output: &Path, redact: Option<&Path>) -> ExitCode {
    let (rules, mut stream) = match open_redacted(pick, redact) {
        Ok(opened) => opened,
        Err(e) => return fail(e),
    };
    let mut out: Box<dyn Write> = match output.as_os_str() == "-" {
        true => Box::new(std::io::stdout().lock()),
        false => match std::fs::File::create(output) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => return fail(format!("{}: {e}", output.display())),
        },
    };
    let filter = pick.filters.filter();
    let har = format == "har";
    let mut written = 0;
    let mut result = if har { out.write_all(har_head().as_bytes()) } else { Ok(()) };
    for s in stream.by_ref().filter(|s| filter.admits(s)) {
        let s = redacted(s, &rules);
        result = result.and_then(|()| match har {
            true => {
                let sep = if written == 0 { "\n" } else { ",\n" };
                write!(out, "{sep}{}", har_entry(&s))
            }
            false => s.messages.iter().enumerate().try_for_each(|(i, m)| writeln!(out, "{}", line(&s, i + 1, m))),
        });
        written += 1;
    }
    if har {
        result = result.and_then(|()| out.write_all(b"\n]}}\n"));
    }
    match result.and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return ExitCode::from(MATCHED), // a pager quit
        Err(e) => return fail(format!("{}: {e}", output.display())),
        Ok(()) => {}
    }
    let rec = stream.into_recording();
    report_problems(&rec);
    if written == 0 {
        return fail("no session passes the filters (see `wstap sessions`)");
    }
    eprintln!("wstap: exported {written} session(s)");
    ExitCode::from(if rec.problems.is_empty() { MATCHED } else { MISMATCH })
}

/// A message's payload for JSON: text as it is, anything else (or text that is not
/// UTF-8) as base64.
fn payload(m: &Message) -> (&'static str, Value) {
    match std::str::from_utf8(&m.data) {
        Ok(t) if m.kind == Kind::Text => ("text", t.into()),
        _ => ("base64", BASE64.encode(&m.data).into()),
    }
}

/// One JSON line: a message and the session it belongs to, its payload as text or base64.
fn line(s: &Session, index: usize, m: &Message) -> Value {
    let mut v = crate::sessions::message_fields(s, index, m);
    if m.kind != Kind::Gap {
        let (key, data) = payload(m);
        v[key] = data;
    }
    v
}

/// A message as Chrome writes it in `_webSocketMessages`.
fn har_message(m: &Message) -> Value {
    let opcode = match m.kind {
        Kind::Text => 1,
        Kind::Binary => 2,
        Kind::Close => 8,
        Kind::Ping => 9,
        _ => 10,
    };
    let mut v = json!({
        "type": if m.dir == Dir::Up { "send" } else { "receive" },
        "time": m.time.as_nanos() as f64 / 1e9,
        "opcode": opcode,
    });
    let (encoding, data) = payload(m);
    v["data"] = data;
    if encoding == "base64" {
        v["_encoding"] = "base64".into();
    }
    v
}

/// The HAR document up to its entries' array.
fn har_head() -> String {
    let creator = json!({ "name": "wstap", "version": env!("CARGO_PKG_VERSION") });
    format!("{{\"log\": {{\"version\": \"1.2\", \"creator\": {creator}, \"pages\": [], \"entries\": [")
}

/// One HAR entry: the Upgrade request and its `101`, the messages as Chrome writes them
/// (`type` send or receive, `time` in seconds since the epoch, `opcode`, `data`: binary
/// and control payloads in base64, said by `_encoding`).
fn har_entry(s: &Session) -> Value {
    let headers = |h: &[(String, String)]| -> Vec<Value> {
        h.iter().map(|(name, value)| json!({ "name": name, "value": value })).collect()
    };
    let host = s.request_header("host").map_or_else(|| s.server.to_string(), str::to_owned);
    let query: Vec<Value> = s
        .path
        .split_once('?')
        .map(|(_, q)| q.split('&').filter(|p| !p.is_empty()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            json!({ "name": name, "value": value })
        })
        .collect();
    let last = s.messages.last().map_or(s.start, |m| m.time);
    let messages: Vec<Value> = s.messages.iter().filter(|m| m.kind != Kind::Gap).map(har_message).collect();
    json!({
        "startedDateTime": utc(s.start),
        "time": last.since(s.start).as_secs_f64() * 1000.0,
        "request": {
            "method": s.method,
            "url": format!("ws://{host}{}", s.path),
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": headers(&s.request_headers),
            "queryString": query,
            "headersSize": -1,
            "bodySize": 0,
        },
        "response": {
            "status": s.status,
            "statusText": if s.status == 101 { "Switching Protocols" } else { "" },
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": headers(&s.response_headers),
            "content": { "size": 0, "mimeType": "x-unknown" },
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": 0,
        },
        "cache": {},
        "timings": { "send": 0, "wait": 0, "receive": 0 },
        "serverIPAddress": s.server.ip().to_string(),
        "connection": s.client.port().to_string(),
        "comment": format!("wstap session {} from {} to {}", s.id, s.client, s.server),
        "_resourceType": "websocket",
        "_webSocketMessages": messages,
    })
}
