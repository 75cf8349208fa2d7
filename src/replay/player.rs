//! Playing one side of a recorded session against a live peer: [`replay`] is the
//! recorded client against a real server, [`mock`] the recorded server for a real
//! client. Both walk the recording in order: our side's messages are sent (paced by the
//! recorded timing, scaled by `speed`), the peer's are awaited and compared, masked by
//! the `ignore` patterns. Pings and pongs are keep-alives, answered by the library and
//! never compared.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use regex::bytes::Regex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::WebSocketStream;

use super::session::{Kind, Message, Sender, Session};

/// How to play.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scales the recorded gaps between messages (2.0 is twice as fast); `None` sends as
    /// soon as the peer's earlier messages are in.
    pub speed: Option<f64>,
    /// Parts of payloads that may differ (timestamps, ids): masked on both sides.
    pub ignore: Vec<Regex>,
    /// How long to wait for each message from the peer.
    pub wait: Duration,
}

/// What happened to one message of the recording, or one the peer added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Our side's message number `index` (1-based, as `wstap sessions --messages` shows).
    Sent {
        index: usize,
        kind: Kind,
        len: usize,
    },
    Matched {
        index: usize,
        kind: Kind,
        len: usize,
    },
    Different {
        index: usize,
        expected: (Kind, Vec<u8>),
        got: (Kind, Vec<u8>),
    },
    Missing {
        index: usize,
        expected: (Kind, Vec<u8>),
    },
    /// The peer sent a message the recording does not have.
    Extra {
        got: (Kind, Vec<u8>),
    },
    /// The handshake differs from the recorded one (mock: the path asked for).
    Handshake(String),
}

impl Step {
    pub fn is_failure(&self) -> bool {
        !matches!(self, Step::Sent { .. } | Step::Matched { .. })
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let msg = |(k, d): &(Kind, Vec<u8>)| format!("{} {}", kind_name(*k), preview(*k, d, 60));
        match self {
            Step::Sent { index, kind, len } => write!(f, "#{index} sent {} ({len} B)", kind_name(*kind)),
            Step::Matched { index, kind, len } => write!(f, "#{index} ok {} ({len} B)", kind_name(*kind)),
            Step::Different { index, expected, got } => {
                let at = expected
                    .1
                    .iter()
                    .zip(&got.1)
                    .position(|(a, b)| a != b)
                    .unwrap_or(expected.1.len().min(got.1.len()));
                write!(
                    f,
                    "#{index} DIFFERENT at byte {at}:\n    expected {} ({} B)\n    got      {} ({} B)",
                    msg(expected),
                    expected.1.len(),
                    msg(got),
                    got.1.len()
                )
            }
            Step::Missing { index, expected } => write!(f, "#{index} MISSING: expected {}", msg(expected)),
            Step::Extra { got } => write!(f, "EXTRA: got {}", msg(got)),
            Step::Handshake(s) => write!(f, "HANDSHAKE: {s}"),
        }
    }
}

/// The result of one play-through.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub steps: Vec<Step>,
}

impl Report {
    pub fn matched(&self) -> bool {
        !self.steps.iter().any(Step::is_failure)
    }

    pub fn summary(&self) -> String {
        let n = |f: fn(&Step) -> bool| self.steps.iter().filter(|s| f(s)).count();
        let matched = n(|s| matches!(s, Step::Matched { .. }));
        let different = n(|s| matches!(s, Step::Different { .. }));
        let missing = n(|s| matches!(s, Step::Missing { .. }));
        let extra = n(|s| matches!(s, Step::Extra { .. }));
        let sent = n(|s| matches!(s, Step::Sent { .. }));
        let handshake = n(|s| matches!(s, Step::Handshake(_)));
        let verdict = if self.matched() { "MATCH" } else { "MISMATCH" };
        format!(
            "{verdict}: {sent} sent; {matched} of {} expected matched, {different} different, {missing} missing, {extra} extra{}",
            matched + different + missing,
            if handshake > 0 { format!(", {handshake} handshake differences") } else { String::new() }
        )
    }
}

pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Text => "text",
        Kind::Binary => "binary",
        Kind::Ping => "ping",
        Kind::Pong => "pong",
        Kind::Close => "close",
    }
}

/// A short, printable form of a payload: quoted text, or hex for binary.
pub fn preview(kind: Kind, data: &[u8], max: usize) -> String {
    if kind == Kind::Close && data.len() >= 2 {
        let code = u16::from_be_bytes([data[0], data[1]]);
        return format!("code {code} {:?}", String::from_utf8_lossy(&data[2..]));
    }
    match std::str::from_utf8(data) {
        Ok(t) if kind != Kind::Binary => {
            let cut: String = t.chars().take(max).collect();
            format!("{cut:?}{}", if cut.len() < t.len() { "…" } else { "" })
        }
        _ => {
            let hex: String = data.iter().take(max / 2).map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}{}", if data.len() > max / 2 { "…" } else { "" })
        }
    }
}

/// Plays the recorded client of `session` against the server at `target` (`ws://host:port`,
/// optionally with a path that replaces the recorded one).
pub async fn replay(
    session: &Session,
    target: &str,
    opts: &Options,
    on_step: impl FnMut(&Step),
) -> anyhow::Result<Report> {
    let url = url_for(session, target)?;
    let mut request = url.as_str().into_client_request()?;
    for (name, value) in &session.request_headers {
        if !forwarded(name) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            request.headers_mut().append(n, v);
        }
    }
    let connect = tokio_tungstenite::connect_async(request);
    let (ws, response) = tokio::time::timeout(opts.wait, connect)
        .await
        .map_err(|_| anyhow::anyhow!("{url}: no WebSocket handshake within {:?}", opts.wait))?
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let mut report = Report::default();
    let recorded = session.response_headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"));
    let got = response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok());
    if recorded.map(|(_, v)| v.as_str()) != got {
        report.steps.push(Step::Handshake(format!("subprotocol: recorded {:?}, got {got:?}", recorded.map(|r| &r.1))));
    }
    converse(ws, session, Sender::Client, opts, report, on_step).await
}

/// The URL to connect to: the target's authority, with its path or the recorded one.
fn url_for(session: &Session, target: &str) -> anyhow::Result<String> {
    let rest = target.strip_prefix("ws://").ok_or_else(|| {
        anyhow::anyhow!("--target {target:?}: expected ws://HOST:PORT[/PATH] (wss is not supported yet)")
    })?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.is_empty() {
        anyhow::bail!("--target {target:?}: no host");
    }
    let path = if path.is_empty() || path == "/" { session.path.as_str() } else { path };
    Ok(format!("ws://{authority}{path}"))
}

/// Recorded request fields worth sending again: not the ones the handshake makes fresh
/// (key, version, Host), not hop-by-hop ones, and not extensions this player cannot speak.
fn forwarded(name: &str) -> bool {
    const FRESH: &[&str] = &[
        "host",
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "content-length",
        "transfer-encoding",
        "keep-alive",
        "te",
        "trailer",
        "proxy-connection",
    ];
    !FRESH.iter().any(|f| f.eq_ignore_ascii_case(name))
}

/// Serves the recorded server of `session` to the next client that connects to `listener`.
pub async fn mock(
    session: &Session,
    listener: &tokio::net::TcpListener,
    opts: &Options,
    on_step: impl FnMut(&Step),
) -> anyhow::Result<Report> {
    let (socket, _) = listener.accept().await?;
    let mut report = Report::default();
    let mut asked = String::new();
    let protocol = session
        .response_headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"))
        .and_then(|(_, v)| HeaderValue::try_from(v.as_str()).ok());
    // The signature is tungstenite's: its error type is what it is.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut res: Response| -> Result<Response, ErrorResponse> {
        asked = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
        if let Some(p) = protocol {
            res.headers_mut().insert("sec-websocket-protocol", p);
        }
        Ok(res)
    };
    let ws = tokio::time::timeout(opts.wait, tokio_tungstenite::accept_hdr_async(socket, callback))
        .await
        .map_err(|_| anyhow::anyhow!("no WebSocket handshake within {:?}", opts.wait))??;
    if asked != session.path {
        report.steps.push(Step::Handshake(format!("path: recorded {:?}, client asked for {asked:?}", session.path)));
    }
    converse(ws, session, Sender::Server, opts, report, on_step).await
}

/// Walks the recording as `me`.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    session: &Session,
    me: Sender,
    opts: &Options,
    mut report: Report,
    mut on_step: impl FnMut(&Step),
) -> anyhow::Result<Report> {
    report.steps.iter().for_each(&mut on_step);
    let mut step = |report: &mut Report, s: Step| {
        on_step(&s);
        report.steps.push(s);
    };
    let start = Instant::now();
    let (mut closed_by_me, mut closed_by_peer) = (false, false);
    for (i, m) in session.messages.iter().enumerate() {
        let index = i + 1;
        if m.sender == me {
            if m.kind == Kind::Pong || closed_by_me {
                continue;
            }
            if let Some(speed) = opts.speed {
                let after = (m.ts_ns - session.start_ts_ns).max(0) as f64 / speed;
                tokio::time::sleep_until(start + Duration::from_nanos(after as u64)).await;
            }
            closed_by_me |= m.kind == Kind::Close;
            if closed_by_peer && m.kind != Kind::Close {
                continue;
            }
            ws.send(to_ws(m)).await?;
            step(&mut report, Step::Sent { index, kind: m.kind, len: m.data.len() });
            continue;
        }
        if matches!(m.kind, Kind::Ping | Kind::Pong) {
            continue;
        }
        let expected = (m.kind, m.data.clone());
        let got = if closed_by_peer { None } else { wait_for(&mut ws, opts.wait).await };
        match got {
            None => {
                closed_by_peer = true;
                step(&mut report, Step::Missing { index, expected });
            }
            Some(got) => {
                closed_by_peer |= got.0 == Kind::Close;
                if same(&expected, &got, &opts.ignore) {
                    step(&mut report, Step::Matched { index, kind: got.0, len: got.1.len() });
                } else {
                    step(&mut report, Step::Different { index, expected, got });
                }
            }
        }
    }
    // The recording is over: close if it did not, and anything the peer still sends
    // before its close is more than the recording had.
    if !closed_by_me && !closed_by_peer {
        ws.send(Ws::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))).await?;
    }
    while let Some(got) = wait_for(&mut ws, opts.wait).await {
        if got.0 == Kind::Close {
            break;
        }
        step(&mut report, Step::Extra { got });
    }
    Ok(report)
}

fn to_ws(m: &Message) -> Ws {
    match m.kind {
        Kind::Text => match String::from_utf8(m.data.clone()) {
            Ok(t) => Ws::Text(t.into()),
            Err(e) => Ws::Binary(e.into_bytes().into()),
        },
        Kind::Binary => Ws::Binary(m.data.clone().into()),
        Kind::Ping => Ws::Ping(m.data.clone().into()),
        Kind::Pong => Ws::Pong(m.data.clone().into()),
        Kind::Close => Ws::Close(m.close_code().map(|code| CloseFrame {
            code: CloseCode::from(code),
            reason: String::from_utf8_lossy(&m.data[2..]).into_owned().into(),
        })),
    }
}

/// The peer's next data or close message; `None` when it is gone or silent for `wait`.
async fn wait_for<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    wait: Duration,
) -> Option<(Kind, Vec<u8>)> {
    loop {
        let msg = tokio::time::timeout(wait, ws.next()).await.ok()??.ok()?;
        return Some(match msg {
            Ws::Text(t) => (Kind::Text, t.as_bytes().to_vec()),
            Ws::Binary(b) => (Kind::Binary, b.to_vec()),
            Ws::Close(c) => {
                let data = c.map(|c| [&u16::from(c.code).to_be_bytes()[..], c.reason.as_bytes()].concat());
                (Kind::Close, data.unwrap_or_default())
            }
            Ws::Ping(_) | Ws::Pong(_) | Ws::Frame(_) => continue,
        });
    }
}

/// Equal once the ignored parts are masked; close messages compare by code alone.
fn same(expected: &(Kind, Vec<u8>), got: &(Kind, Vec<u8>), ignore: &[Regex]) -> bool {
    if expected.0 != got.0 {
        return false;
    }
    if expected.0 == Kind::Close {
        return expected.1.get(..2) == got.1.get(..2);
    }
    mask(&expected.1, ignore) == mask(&got.1, ignore)
}

fn mask(data: &[u8], ignore: &[Regex]) -> Vec<u8> {
    ignore.iter().fold(data.to_vec(), |d, re| re.replace_all(&d, &b"\0"[..]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_patterns_mask_both_sides() {
        let re = vec![Regex::new(r#""ts":\d+"#).unwrap()];
        let a = (Kind::Text, br#"{"ts":1700000000,"v":1}"#.to_vec());
        let b = (Kind::Text, br#"{"ts":1800000001,"v":1}"#.to_vec());
        let c = (Kind::Text, br#"{"ts":1800000001,"v":2}"#.to_vec());
        assert!(!same(&a, &b, &[]));
        assert!(same(&a, &b, &re));
        assert!(!same(&a, &c, &re));
        assert!(!same(&a, &(Kind::Binary, a.1.clone()), &[]));
        assert!(same(&(Kind::Close, vec![3, 232, b'x']), &(Kind::Close, vec![3, 232]), &[]));
    }

    #[test]
    fn previews_and_diffs_are_readable() {
        assert_eq!(preview(Kind::Text, b"hi\n", 10), "\"hi\\n\"");
        assert_eq!(preview(Kind::Binary, &[1, 2, 255], 10), "0x0102ff");
        assert_eq!(preview(Kind::Close, &[3, 232, b'b', b'y', b'e'], 10), "code 1000 \"bye\"");
        let d = Step::Different {
            index: 4,
            expected: (Kind::Text, b"hello".to_vec()),
            got: (Kind::Text, b"heLLo".to_vec()),
        };
        let s = d.to_string();
        assert!(s.contains("#4 DIFFERENT at byte 2") && s.contains("\"hello\"") && s.contains("\"heLLo\""), "{s}");
    }

    #[test]
    fn targets_keep_the_recorded_path_unless_they_name_one() {
        let s = crate::replay::session::tests::session_with_path("/chat?room=1");
        assert_eq!(url_for(&s, "ws://127.0.0.1:9").unwrap(), "ws://127.0.0.1:9/chat?room=1");
        assert_eq!(url_for(&s, "ws://h:9/").unwrap(), "ws://h:9/chat?room=1");
        assert_eq!(url_for(&s, "ws://h:9/other").unwrap(), "ws://h:9/other");
        assert!(url_for(&s, "http://h:9").is_err());
        assert!(forwarded("Cookie") && forwarded("Sec-WebSocket-Protocol") && !forwarded("sec-websocket-key"));
    }
}
