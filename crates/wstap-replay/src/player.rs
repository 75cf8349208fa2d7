//! Playing one side of a recorded session against a live peer: [`replay`] is the
//! recorded client against a real server, [`mock`] the recorded server for a real
//! client. Both walk the recording in order: our side's messages are sent (paced by the
//! recorded timing, scaled by `speed`), the peer's are awaited and compared, with what
//! the `ignore` patterns match erased from both. Pings and pongs are keep-alives, answered by the library and
//! never compared.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use regex::bytes::Regex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::WebSocketStream;

use crate::jsonpath::{self, JsonPath};
use crate::session::{Kind, Message, Session};
use wstap_wire::dir::Dir;

/// How to play.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scales the recorded gaps between messages (2.0 is twice as fast); `None` sends as
    /// soon as the peer's earlier messages are in.
    pub speed: Option<f64>,
    /// Parts of payloads that may differ (timestamps, ids): erased from both sides before
    /// comparing.
    pub ignore: Vec<Regex>,
    /// Values inside JSON messages that may differ: erased from both sides, and JSON
    /// messages compared as JSON (key order aside), before the `ignore` patterns apply.
    pub ignore_json: Vec<JsonPath>,
    /// The peer's messages are compared with the recorded ones in any order (a server
    /// whose answers to independent requests may interleave differently).
    pub unordered: bool,
    /// How long to wait for each message from the peer.
    pub wait: Duration,
    /// TLS to a `wss://` target ([`replay()`]): whom to trust.
    pub client_tls: Option<Arc<rustls::ClientConfig>>,
    /// TLS to serve with ([`mock`]): clients connect with `wss://`.
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    /// WebSocket over HTTP/2 (RFC 8441): [`replay()`] sends an extended CONNECT (HTTP/2
    /// with prior knowledge on `ws://`, ALPN `h2` on `wss://`); [`mock`] takes one.
    pub http2: bool,
}

impl Default for Options {
    /// At the recorded pace, nothing ignored, 5 s for each of the peer's messages, no TLS.
    fn default() -> Options {
        Options {
            speed: Some(1.0),
            ignore: Vec::new(),
            ignore_json: Vec::new(),
            unordered: false,
            wait: Duration::from_secs(5),
            client_tls: None,
            server_tls: None,
            http2: false,
        }
    }
}

/// A connection to play over: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Io for S {}

/// What happened to one message of the recording, or one the peer added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Our side's message number `index` (1-based, as `wstap sessions --messages` shows).
    Sent {
        /// 1-based, as `wstap sessions --messages` numbers it.
        index: usize,
        /// Its kind.
        kind: Kind,
        /// Its payload bytes.
        len: usize,
    },
    /// A message from the peer arrived (compared at the end).
    Received {
        /// Its kind.
        kind: Kind,
        /// Its payload bytes.
        len: usize,
    },
    /// The peer's message matched the recorded one.
    Matched {
        /// The recorded message's number.
        index: usize,
        /// Its kind.
        kind: Kind,
        /// Its payload bytes.
        len: usize,
    },
    /// The peer sent a message in the place of recorded one, but different.
    Different {
        /// The recorded message's number.
        index: usize,
        /// The recorded message.
        expected: Content,
        /// What the peer sent.
        got: Content,
    },
    /// The peer never sent a recorded message.
    Missing {
        /// The recorded message's number.
        index: usize,
        /// The recorded message.
        expected: Content,
    },
    /// The peer sent a message the recording does not have.
    Extra {
        /// What the peer sent.
        got: Content,
    },
    /// The handshake differs from the recorded one (mock: the path asked for).
    Handshake(String),
}

/// A data or close message as the player compares it: its kind and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// Text, binary or close.
    pub kind: Kind,
    /// Its payload (a close's: the code, then the reason).
    pub data: Vec<u8>,
}

impl Content {
    /// What is compared of it: for a close its code alone, for data its payload with the
    /// `ignore_json` paths erased (a JSON message, in canonical form) and then what the
    /// `ignore` patterns match erased (each match becomes one NUL byte).
    fn compared(&self, opts: &Options) -> (Kind, Vec<u8>) {
        let data = match self.kind {
            Kind::Close => self.data.get(..2).unwrap_or_default().to_vec(),
            _ => {
                let json = (!opts.ignore_json.is_empty()).then(|| jsonpath::erased(&self.data, &opts.ignore_json));
                let data = json.flatten().unwrap_or_else(|| self.data.clone());
                opts.ignore.iter().fold(data, |d, re| re.replace_all(&d, &b"\0"[..]).into_owned())
            }
        };
        (self.kind, data)
    }
}

impl std::fmt::Display for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.name(), preview(self.kind, &self.data, 60))
    }
}

/// A message the peer sent in the recording, with its number there.
struct Recorded {
    index: usize,
    content: Content,
}

impl Step {
    /// Whether this step makes the play-through a mismatch.
    pub fn is_failure(&self) -> bool {
        !matches!(self, Step::Sent { .. } | Step::Received { .. } | Step::Matched { .. })
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Sent { index, kind, len } => write!(f, "#{index} sent {} ({len} B)", kind.name()),
            Step::Received { kind, len } => write!(f, "received {} ({len} B)", kind.name()),
            Step::Matched { index, kind, len } => write!(f, "#{index} ok {} ({len} B)", kind.name()),
            Step::Different { index, expected, got } => {
                let (e, g) = (&expected.data, &got.data);
                let at = e.iter().zip(g).position(|(a, b)| a != b).unwrap_or(e.len().min(g.len()));
                write!(
                    f,
                    "#{index} DIFFERENT at byte {at}:\n    expected {expected} ({} B)\n    got      {got} ({} B)",
                    e.len(),
                    g.len()
                )
            }
            Step::Missing { index, expected } => write!(f, "#{index} MISSING: expected {expected}"),
            Step::Extra { got } => write!(f, "EXTRA: got {got}"),
            Step::Handshake(s) => write!(f, "HANDSHAKE: {s}"),
        }
    }
}

/// The result of one play-through.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Every step, in order.
    pub steps: Vec<Step>,
}

impl Report {
    /// Everything the peer sent matched the recording.
    pub fn matched(&self) -> bool {
        !self.steps.iter().any(Step::is_failure)
    }

    /// One line: the verdict and the counts.
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

/// Why a play-through could not run (a peer that answers differently is a [`Report`],
/// not an error).
#[derive(Debug, thiserror::Error)]
pub enum PlayError {
    /// The target is not `ws://` or `wss://HOST[:PORT][/PATH]`.
    #[error("--target {target:?}: {why}")]
    Target {
        /// The target as given.
        target: String,
        /// What is wrong with it.
        why: BadTarget,
    },
    /// A `wss://` target, but [`Options::client_tls`] is not set.
    #[error("{url}: no TLS settings for a wss:// target")]
    NoTls {
        /// The URL played against.
        url: String,
    },
    /// No WebSocket handshake within [`Options::wait`].
    #[error("{}no WebSocket handshake within {wait:?}", at(url))]
    Timeout {
        /// The URL played against (none for a mock).
        url: Option<String>,
        /// How long it waited.
        wait: Duration,
    },
    /// The connection, its TLS or its WebSocket handshake failed.
    #[error("{}{source}", at(url))]
    Handshake {
        /// The URL played against (none for a mock).
        url: Option<String>,
        /// What failed.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The mock's listener failed to accept a client.
    #[error("accepting a client: {0}")]
    Accept(#[source] std::io::Error),
}

/// `URL: ` before an error's text, when there is a URL.
fn at(url: &Option<String>) -> String {
    url.as_ref().map_or_else(String::new, |u| format!("{u}: "))
}

/// Plays the recorded client of `session` against the server at `target` (`ws://` or
/// `wss://host:port`, optionally with a path that replaces the recorded one).
pub async fn replay(
    session: &Session,
    target: &str,
    opts: &Options,
    on_step: impl FnMut(&Step),
) -> Result<Report, PlayError> {
    let url = url_for(session, target)?;
    let failed =
        |source: Box<dyn std::error::Error + Send + Sync>| PlayError::Handshake { url: Some(url.clone()), source };
    let mut request = url.as_str().into_client_request().map_err(|e| failed(e.into()))?;
    for (name, value) in &session.request_headers {
        if !forwarded(name) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            request.headers_mut().append(n, v);
        }
    }
    let tls = url.starts_with("wss://");
    let host = request.uri().host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = request.uri().port_u16().unwrap_or(if tls { 443 } else { 80 });
    if tls && opts.client_tls.is_none() {
        return Err(PlayError::NoTls { url });
    }
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let stream: Box<dyn Io> = match &opts.client_tls {
            Some(config) if tls => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())?;
                let config = match opts.http2 {
                    true => {
                        let mut h2 = (**config).clone();
                        h2.alpn_protocols = vec![b"h2".to_vec()];
                        Arc::new(h2)
                    }
                    false => config.clone(),
                };
                Box::new(tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?)
            }
            _ => Box::new(tcp),
        };
        if opts.http2 {
            let (stream, headers) = crate::over_h2::connect(stream, request).await?;
            let ws = WebSocketStream::from_raw_socket(Box::new(stream) as Box<dyn Io>, Role::Client, None).await;
            return Ok::<_, Box<dyn std::error::Error + Send + Sync>>((ws, headers));
        }
        let (ws, response) = tokio_tungstenite::client_async(request, stream).await?;
        Ok((ws, response.headers().clone()))
    };
    let (ws, headers) = tokio::time::timeout(opts.wait, connect)
        .await
        .map_err(|_| PlayError::Timeout { url: Some(url.clone()), wait: opts.wait })?
        .map_err(failed)?;
    let mut report = Report::default();
    let recorded = session.response_header("sec-websocket-protocol");
    let got = headers.get("sec-websocket-protocol").and_then(|v| v.to_str().ok());
    if recorded != got {
        report.steps.push(Step::Handshake(format!("subprotocol: recorded {recorded:?}, got {got:?}")));
    }
    converse(ws, session, Dir::Up, opts, report, on_step).await
}

/// What is wrong with a `--target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadTarget {
    /// It is neither `ws://` nor `wss://`.
    #[error("expected ws:// or wss://HOST[:PORT][/PATH]")]
    Scheme,
    /// Its authority is empty.
    #[error("no host")]
    NoHost,
}

/// The URL to connect to: the target's scheme and authority, with its path or the
/// recorded one.
fn url_for(session: &Session, target: &str) -> Result<String, PlayError> {
    let bad = |why| PlayError::Target { target: target.to_owned(), why };
    let (scheme, rest) = match (target.strip_prefix("ws://"), target.strip_prefix("wss://")) {
        (Some(rest), _) => ("ws", rest),
        (_, Some(rest)) => ("wss", rest),
        _ => return Err(bad(BadTarget::Scheme)),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.is_empty() {
        return Err(bad(BadTarget::NoHost));
    }
    let path = if path.is_empty() || path == "/" { session.path.as_str() } else { path };
    Ok(format!("{scheme}://{authority}{path}"))
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
) -> Result<Report, PlayError> {
    let (socket, _) = listener.accept().await.map_err(PlayError::Accept)?;
    let mut report = Report::default();
    let mut asked = String::new();
    let protocol = session.response_header("sec-websocket-protocol").and_then(|v| HeaderValue::try_from(v).ok());
    // The signature is tungstenite's: its error type is what it is.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut res: Response| -> Result<Response, ErrorResponse> {
        asked = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
        if let Some(p) = protocol {
            res.headers_mut().insert("sec-websocket-protocol", p);
        }
        Ok(res)
    };
    let protocol_name = session.response_header("sec-websocket-protocol").map(str::to_owned);
    let (http2, mut h2_asked) = (opts.http2, None);
    let handshake = async {
        let stream: Box<dyn Io> = match &opts.server_tls {
            Some(config) => {
                let config = match http2 {
                    true => {
                        let mut h2 = (**config).clone();
                        h2.alpn_protocols = vec![b"h2".to_vec()];
                        Arc::new(h2)
                    }
                    false => config.clone(),
                };
                Box::new(tokio_rustls::TlsAcceptor::from(config).accept(socket).await?)
            }
            None => Box::new(socket),
        };
        if http2 {
            let (stream, path) = crate::over_h2::accept(stream, protocol_name.as_deref()).await?;
            h2_asked = Some(path);
            let ws = WebSocketStream::from_raw_socket(Box::new(stream) as Box<dyn Io>, Role::Server, None).await;
            return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(ws);
        }
        Ok(tokio_tungstenite::accept_hdr_async(stream, callback).await?)
    };
    let ws = tokio::time::timeout(opts.wait, handshake)
        .await
        .map_err(|_| PlayError::Timeout { url: None, wait: opts.wait })?
        .map_err(|source| PlayError::Handshake { url: None, source })?;
    if let Some(path) = h2_asked {
        asked = path;
    }
    // A session captured without its handshake has no recorded path to hold the client to.
    if !session.path.is_empty() && asked != session.path {
        report.steps.push(Step::Handshake(format!("path: recorded {:?}, client asked for {asked:?}", session.path)));
    }
    converse(ws, session, Dir::Down, opts, report, on_step).await
}

/// Walks the recording as the side whose messages go `me`: each of our messages is sent once the peer's messages
/// recorded before it are in (or the peer went quiet for `wait`) and its time has come;
/// then everything the peer sent is compared with what it sent in the recording.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    session: &Session,
    me: Dir,
    opts: &Options,
    mut report: Report,
    mut on_step: impl FnMut(&Step),
) -> Result<Report, PlayError> {
    let expected: Vec<Recorded> = session
        .messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.dir != me && matches!(m.kind, Kind::Text | Kind::Binary | Kind::Close))
        .map(|(i, m)| Recorded { index: i + 1, content: Content { kind: m.kind, data: m.data.clone() } })
        .collect();
    let mut peer = Peer { got: Vec::new(), closed: false, quiet: false };
    let start = Instant::now();
    let mut closed_by_me = false;
    for (i, m) in session.messages.iter().enumerate() {
        // Pongs answer pings by themselves; a gap is not a message.
        if m.dir != me || matches!(m.kind, Kind::Pong | Kind::Gap) || closed_by_me {
            continue;
        }
        let due = expected.partition_point(|e| e.index < i + 1);
        peer.collect(&mut ws, due, opts.wait, &mut on_step).await;
        if let Some(speed) = opts.speed {
            let after = m.time.since(session.start).as_nanos() as f64 / speed;
            tokio::time::sleep_until(start + Duration::from_nanos(after as u64)).await;
        }
        closed_by_me |= m.kind == Kind::Close;
        if peer.closed {
            // The peer closed first: the library has answered its close already.
            continue;
        }
        if ws.send(to_ws(m)).await.is_err() {
            // Gone: what it did not get shows as missing replies.
            peer.closed = true;
            continue;
        }
        let sent = Step::Sent { index: i + 1, kind: m.kind, len: m.data.len() };
        on_step(&sent);
        report.steps.push(sent);
    }
    peer.collect(&mut ws, expected.len(), opts.wait, &mut on_step).await;
    // The recording is over: close if it did not; whatever the peer still sends before
    // its close is more than the recording had.
    let ending = !closed_by_me && !peer.closed;
    if ending {
        peer.closed =
            ws.send(Ws::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))).await.is_err();
    }
    peer.quiet = false;
    peer.collect(&mut ws, usize::MAX, opts.wait, &mut on_step).await;
    // A recording that stops without a close (a part of a session cut by rotation, or
    // by the capture's end): the peer's close answers the one the player sent, and is
    // not a message more than the recording had.
    let answers_ours = ending && !expected.iter().any(|e| e.content.kind == Kind::Close);
    if answers_ours && peer.got.last().is_some_and(|c| c.kind == Kind::Close) {
        peer.got.pop();
    }
    // Finish the closing handshake: this flushes the library's answer to the peer's close.
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(opts.wait, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    report.steps.extend(diff(&expected, &peer.got, opts));
    Ok(report)
}

/// What the peer sent so far.
struct Peer {
    got: Vec<Content>,
    closed: bool,
    /// It let `wait` pass without a message: later waits do not wait again until it speaks.
    quiet: bool,
}

impl Peer {
    /// Receives until `n` messages are in, the peer closes, or it stays quiet.
    async fn collect<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        n: usize,
        wait: Duration,
        on_step: &mut impl FnMut(&Step),
    ) {
        while self.got.len() < n && !self.closed {
            let Some(got) = wait_for(ws, if self.quiet { Duration::ZERO } else { wait }).await else {
                self.quiet = true;
                return;
            };
            self.quiet = false;
            self.closed = got.kind == Kind::Close;
            on_step(&Step::Received { kind: got.kind, len: got.data.len() });
            self.got.push(got);
        }
    }
}

/// Pairs the recorded messages with the received ones: the longest common subsequence
/// of equal messages matches; between two matches, messages of the same kind and
/// similar size are the same message changed; the rest are missing or extra. So one
/// added or lost message is reported as that, not as every later message differing.
fn diff(expected: &[Recorded], got: &[Content], opts: &Options) -> Vec<Step> {
    // What is compared, made once for each message (the LCS compares every pair).
    let compared_exp: Vec<_> = expected.iter().map(|e| e.content.compared(opts)).collect();
    let compared_got: Vec<_> = got.iter().map(|g| g.compared(opts)).collect();
    if opts.unordered {
        return unordered(expected, got, &compared_exp, &compared_got);
    }
    let equal = lcs(expected.len(), got.len(), |i, j| compared_exp[i] == compared_got[j]);
    let exp = |i: usize| expected[i].content.clone();
    let mut steps = Vec::new();
    let (mut i, mut j) = (0, 0);
    for &(mi, mj) in equal.iter().chain(&[(expected.len(), got.len())]) {
        // A hunk: expected[i..mi] against got[j..mj].
        let similar = |a: usize, b: usize| {
            let (e, g) = (&expected[i + a].content, &got[j + b]);
            e.kind == g.kind && likeness(&e.data, &g.data) >= 0.5
        };
        let pairs = lcs(mi - i, mj - j, similar);
        let (mut a, mut b) = (0, 0);
        for &(pa, pb) in pairs.iter().chain(&[(mi - i, mj - j)]) {
            steps.extend((a..pa).map(|k| Step::Missing { index: expected[i + k].index, expected: exp(i + k) }));
            steps.extend((b..pb).map(|k| Step::Extra { got: got[j + k].clone() }));
            if pa < mi - i {
                steps.push(Step::Different {
                    index: expected[i + pa].index,
                    expected: exp(i + pa),
                    got: got[j + pb].clone(),
                });
            }
            (a, b) = (pa + 1, pb + 1);
        }
        if mi < expected.len() {
            steps.push(Step::Matched { index: expected[mi].index, kind: got[mj].kind, len: got[mj].data.len() });
        }
        (i, j) = (mi + 1, mj + 1);
    }
    steps
}

/// The comparison in any order: each recorded message matches the first equal one the
/// peer sent that no other matched; what is left pairs up by kind as different, in the
/// order each side had it; then missing and extra.
fn unordered(expected: &[Recorded], got: &[Content], exp: &[(Kind, Vec<u8>)], gotc: &[(Kind, Vec<u8>)]) -> Vec<Step> {
    // The peer's messages by what is compared of them, each list in the order sent.
    let mut by_content: HashMap<&(Kind, Vec<u8>), VecDeque<usize>> = HashMap::new();
    for (j, c) in gotc.iter().enumerate() {
        by_content.entry(c).or_default().push_back(j);
    }
    let mut taken = vec![false; got.len()];
    let mut left = Vec::new();
    let mut steps = Vec::new();
    for (i, e) in expected.iter().enumerate() {
        match by_content.get_mut(&exp[i]).and_then(VecDeque::pop_front) {
            Some(j) => {
                taken[j] = true;
                steps.push(Step::Matched { index: e.index, kind: got[j].kind, len: got[j].data.len() });
            }
            None => left.push(i),
        }
    }
    // What is left pairs up by kind, in order: one pass over each kind's leftovers.
    let mut leftover: HashMap<Kind, VecDeque<usize>> = HashMap::new();
    for j in (0..got.len()).filter(|&j| !taken[j]) {
        leftover.entry(got[j].kind).or_default().push_back(j);
    }
    for i in left {
        let e = &expected[i];
        match leftover.get_mut(&e.content.kind).and_then(VecDeque::pop_front) {
            Some(j) => {
                taken[j] = true;
                steps.push(Step::Different { index: e.index, expected: e.content.clone(), got: got[j].clone() });
            }
            None => steps.push(Step::Missing { index: e.index, expected: e.content.clone() }),
        }
    }
    steps.extend((0..got.len()).filter(|&j| !taken[j]).map(|j| Step::Extra { got: got[j].clone() }));
    steps
}

/// How alike two payloads are, 0 to 1: the share of positions holding the same byte
/// (ASCII case aside), over the longer length.
fn likeness(a: &[u8], b: &[u8]) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x.eq_ignore_ascii_case(y)).count();
    if a.is_empty() && b.is_empty() {
        1.0
    } else {
        same as f64 / a.len().max(b.len()) as f64
    }
}

/// The index pairs of a longest common subsequence under `eq`. Quadratic, so beyond
/// a few thousand messages a side it falls back to pairing in order.
fn lcs(n: usize, m: usize, eq: impl Fn(usize, usize) -> bool) -> Vec<(usize, usize)> {
    if n.saturating_mul(m) > 16_000_000 {
        return (0..n.min(m)).filter(|&k| eq(k, k)).map(|k| (k, k)).collect();
    }
    // len[i * w + j]: the LCS length of the suffixes from i and from j.
    let w = m + 1;
    let mut len = vec![0u32; (n + 1) * w];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            len[i * w + j] =
                if eq(i, j) { len[(i + 1) * w + j + 1] + 1 } else { len[(i + 1) * w + j].max(len[i * w + j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n && j < m {
        if eq(i, j) && len[i * w + j] == len[(i + 1) * w + j + 1] + 1 {
            out.push((i, j));
            (i, j) = (i + 1, j + 1);
        } else if len[(i + 1) * w + j] >= len[i * w + j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

fn to_ws(m: &Message) -> Ws {
    match m.kind {
        // Never sent: the players skip gaps.
        Kind::Gap => Ws::Binary(Default::default()),
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
async fn wait_for<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, wait: Duration) -> Option<Content> {
    loop {
        let msg = tokio::time::timeout(wait, ws.next()).await.ok()??.ok()?;
        return Some(match msg {
            Ws::Text(t) => Content { kind: Kind::Text, data: t.as_bytes().to_vec() },
            Ws::Binary(b) => Content { kind: Kind::Binary, data: b.to_vec() },
            Ws::Close(c) => {
                let data = c.map(|c| [&u16::from(c.code).to_be_bytes()[..], c.reason.as_bytes()].concat());
                Content { kind: Kind::Close, data: data.unwrap_or_default() }
            }
            Ws::Ping(_) | Ws::Pong(_) | Ws::Frame(_) => continue,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_patterns_erase_from_both_sides() {
        let re = vec![Regex::new(r#""ts":\d+"#).unwrap()];
        let same = |a: &Content, b: &Content, ignore: &[Regex]| {
            let opts = Options { ignore: ignore.to_vec(), ..Options::default() };
            a.compared(&opts) == b.compared(&opts)
        };
        let a = text(r#"{"ts":1700000000,"v":1}"#);
        let b = text(r#"{"ts":1800000001,"v":1}"#);
        let c = text(r#"{"ts":1800000001,"v":2}"#);
        assert!(!same(&a, &b, &[]));
        assert!(same(&a, &b, &re));
        assert!(!same(&a, &c, &re));
        assert!(!same(&a, &Content { kind: Kind::Binary, data: a.data.clone() }, &[]));
        let close = |data: &[u8]| Content { kind: Kind::Close, data: data.to_vec() };
        assert!(same(&close(&[3, 232, b'x']), &close(&[3, 232]), &[]));
    }

    fn text(s: &str) -> Content {
        Content { kind: Kind::Text, data: s.as_bytes().to_vec() }
    }

    #[test]
    fn an_added_message_is_extra_not_a_shift_of_everything_after_it() {
        let expected: Vec<_> = ["hello", "json-one", "fragment"]
            .iter()
            .enumerate()
            .map(|(i, s)| Recorded { index: 2 * i + 2, content: text(s) })
            .collect();
        let got = vec![text("HELLO"), text("surprise!!"), text("JSON-ONE"), text("fragment"), text("more")];
        let steps = diff(&expected, &got, &Options::default());
        assert_eq!(
            steps,
            [
                Step::Different { index: 2, expected: text("hello"), got: text("HELLO") },
                Step::Extra { got: text("surprise!!") },
                Step::Different { index: 4, expected: text("json-one"), got: text("JSON-ONE") },
                Step::Matched { index: 6, kind: Kind::Text, len: 8 },
                Step::Extra { got: text("more") },
            ]
        );
        let lost = diff(&expected, &[text("hello"), text("fragment")], &Options::default());
        assert_eq!(lost[1], Step::Missing { index: 4, expected: text("json-one") });
        assert_eq!(lost.iter().filter(|s| s.is_failure()).count(), 1);
    }

    #[test]
    fn json_paths_are_erased_and_order_may_not_count() {
        let json = |s: &str| text(s);
        let recorded = [r#"{"op":"quote","id":1,"ts":100}"#, r#"{"op":"fill","id":2,"ts":101}"#];
        let expected: Vec<_> =
            recorded.iter().enumerate().map(|(i, s)| Recorded { index: 2 * i + 2, content: json(s) }).collect();
        let ignore_json = vec!["ts".parse().unwrap(), "/id".parse().unwrap()];
        let opts = Options { ignore_json, ..Options::default() };
        let later = [json(r#"{"ts":900,"id":7,"op":"quote"}"#), json(r#"{"op":"fill","ts":901,"id":8}"#)];
        assert!(diff(&expected, &later, &opts).iter().all(|s| !s.is_failure()), "timestamps and ids may differ");
        let changed = [json(r#"{"op":"quote","id":1,"ts":100}"#), json(r#"{"op":"cancel","id":2,"ts":101}"#)];
        assert!(diff(&expected, &changed, &opts).iter().any(Step::is_failure), "content may not");
        let swapped = [later[1].clone(), later[0].clone()];
        assert!(diff(&expected, &swapped, &opts).iter().any(Step::is_failure), "in order by default");
        let any_order = Options { unordered: true, ..opts };
        assert!(diff(&expected, &swapped, &any_order).iter().all(|s| !s.is_failure()), "in any order");
        let steps = diff(&expected, &[later[1].clone(), json(r#"{"op":"x"}"#), json("{}")], &any_order);
        assert_eq!(steps.iter().filter(|s| matches!(s, Step::Different { .. })).count(), 1);
        assert_eq!(steps.iter().filter(|s| matches!(s, Step::Extra { .. })).count(), 1);
    }

    #[test]
    fn previews_and_diffs_are_readable() {
        assert_eq!(preview(Kind::Text, b"hi\n", 10), "\"hi\\n\"");
        assert_eq!(preview(Kind::Binary, &[1, 2, 255], 10), "0x0102ff");
        assert_eq!(preview(Kind::Close, &[3, 232, b'b', b'y', b'e'], 10), "code 1000 \"bye\"");
        let d = Step::Different { index: 4, expected: text("hello"), got: text("heLLo") };
        let s = d.to_string();
        assert!(s.contains("#4 DIFFERENT at byte 2") && s.contains("\"hello\"") && s.contains("\"heLLo\""), "{s}");
    }

    #[test]
    fn targets_keep_the_recorded_path_unless_they_name_one() {
        let s = crate::session::session_with_path("/chat?room=1");
        assert_eq!(url_for(&s, "ws://127.0.0.1:9").unwrap(), "ws://127.0.0.1:9/chat?room=1");
        assert_eq!(url_for(&s, "ws://h:9/").unwrap(), "ws://h:9/chat?room=1");
        assert_eq!(url_for(&s, "ws://h:9/other").unwrap(), "ws://h:9/other");
        assert!(url_for(&s, "http://h:9").is_err());
        assert!(forwarded("Cookie") && forwarded("Sec-WebSocket-Protocol") && !forwarded("sec-websocket-key"));
    }
}
