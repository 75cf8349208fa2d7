//! HTTP/2 on a client connection (`[[listener]] http2 = true`): ALPN `h2` over TLS, or
//! prior knowledge on cleartext (the connection preface sniffed; HTTP/1.1 still served
//! on the same port). The `h2` crate's server (it names each stream's id, which hyper's
//! does not) bounds the streams, the header lists and the
//! resets a client may send (the 2023 rapid-reset and 2024 CONTINUATION floods), and a
//! drain ends the connection with a GOAWAY.
//!
//! Each request is a stream of its own, answered as an HTTP/1.1 request would be
//! ([`ClientConn::handle`]: routing, header rules, limits, `X-Forwarded-*`) over an
//! HTTP/1.1 upstream connection of its own. A WebSocket over HTTP/2 (RFC 8441: an
//! extended CONNECT with `:protocol = websocket`) is bridged to the upstream as an
//! HTTP/1.1 Upgrade, and its client leg is written as an HTTP/1.1 connection of its own:
//! the Upgrade request and the upstream's `101` (with the key the upstream was sent and
//! the accept it gave), then the stream's frames as they crossed. Wireshark decodes it as
//! it decodes any session, which it cannot do for a WebSocket inside HTTP/2.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use ::h2::server::SendResponse;
use ::h2::{RecvStream, SendStream};
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::{
    HeaderName, HeaderValue, CONNECTION, COOKIE, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpStream;
use tracing::{debug, info, Instrument};
use wstap_replay::over_h2::H2Stream;
use wstap_wire::{Dir, Leg};

use crate::capture::{ConnId, Layer};
use crate::config::CaptureMode;
use crate::config::Http2;
use crate::proxy::admission::Permit;
use crate::proxy::as_http1::{self, Said, TapGuard};
use crate::proxy::client::ClientSide;
use crate::proxy::client::{Accepted, ClientConn};
use crate::proxy::conn::Body;
use crate::proxy::context::ProxyContext;
use crate::proxy::metered::Metered;
use crate::proxy::recording::{self, LegTap};
use crate::proxy::shutdown::{Phase, Shutdown};
use crate::proxy::traffic::ByteCounts;
use crate::sync::lock;

/// The client connection preface of HTTP/2.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams a client may have open at once: each is an upstream connection of its own.
const MAX_STREAMS: u32 = 32;

/// What a client may send before wstap reads it, a stream and the whole connection
/// (HTTP/2's default, 64 KiB, would hold a fast client to a window per round trip).
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// What is buffered for a stream the client does not read, at most.
const SEND_BUFFER: usize = 64 * 1024;

/// Streams a client may reset before they were answered, pending at once (rapid reset).
const MAX_PENDING_RESETS: usize = 32;

/// Streams wstap may reset for a client's errors before the connection is closed.
const MAX_LOCAL_RESETS: usize = 256;

/// Whether a cleartext connection opens with HTTP/2's preface: `Some(true)` for
/// HTTP/2, `Some(false)` for anything else (HTTP/1.1), `None` when it sent nothing
/// within `limit` or closed.
pub(super) async fn sniff(stream: &TcpStream, limit: Duration) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; PREFACE.len()];
    let mut wait = Duration::from_millis(5);
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != PREFACE[..n] {
            return Some(false);
        }
        if n == PREFACE.len() {
            return Some(true);
        }
        // Part of the preface: the rest is on its way (rare: it is 24 bytes). Looked at
        // again after 5 ms, then less and less often.
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + wait)).await;
        wait = (wait * 2).min(Duration::from_millis(200));
    }
}

/// What the streams of one HTTP/2 connection share.
struct Streams {
    ctx: Arc<ProxyContext>,
    id: ConnId,
    client: SocketAddr,
    local: SocketAddr,
    shutdown: Shutdown,
    permit: Arc<Permit>,
    /// Requests so far.
    count: AtomicU64,
    /// How the connection came: its TLS (version, suite, SNI, ALPN h2, port), or
    /// cleartext with prior knowledge.
    how: String,
}

/// Serves HTTP/2 on `stream` until the client leaves or the drain closes it (a GOAWAY
/// first; the streams open get until the end of the grace period).
pub(super) async fn serve<S>(ctx: Arc<ProxyContext>, a: Accepted, stream: S, h2: Http2, how: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Accepted { id, client, local, shutdown, permit, .. } = a;
    info!(how = %how, "connection open (HTTP/2)");
    let started = tokio::time::Instant::now();
    let bytes: ByteCounts = Arc::default();
    let stream = Metered::new(stream, Leg::Client, ctx.traffic.clone(), Some(bytes.clone()));
    let idle_limit = ctx.settings.limits.handshake_timeout;
    let handshake = server(&ctx, h2).handshake::<_, Bytes>(stream);
    let mut conn = match tokio::time::timeout(idle_limit, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return info!(error = %e, "HTTP/2 handshake failed"),
        Err(_) => return info!("HTTP/2 handshake not done in time; closed"),
    };
    let permit = Arc::new(permit);
    // Each live stream (a WebSocket session's too) holds the permit: none but ours, idle.
    let live = Arc::downgrade(&permit);
    let streams =
        Arc::new(Streams { ctx, id, client, local, shutdown: shutdown.clone(), permit, count: AtomicU64::new(0), how });
    let mut draining = shutdown.clone();
    // A drain gives the streams until the end of the grace period; an idle connection's
    // client gets the keep-alive time to answer the GOAWAY's PING, then it is dropped.
    let ending = async {
        tokio::select! {
            () = draining.reached(Phase::Draining) => None,
            () = idle(&live, idle_limit) => Some(idle_limit),
        }
    };
    let mut ending = std::pin::pin!(ending);
    let mut bound: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = Box::pin(std::future::pending());
    let closing = shutdown.clone();
    let mut goaway = false;
    let result = loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    let n = streams.count.fetch_add(1, Relaxed) + 1;
                    tokio::spawn(streams.clone().answer(n, req, respond).in_current_span());
                }
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            },
            limit = &mut ending, if !goaway => {
                goaway = true;
                debug!("HTTP/2 connection closing (a drain, or idle)");
                conn.graceful_shutdown();
                bound = match limit {
                    Some(limit) => Box::pin(tokio::time::sleep(limit)),
                    None => {
                        let mut closing = closing.clone();
                        Box::pin(async move { closing.reached(Phase::Closing).await })
                    }
                };
            }
            () = &mut bound => break Ok(()),
        }
    };
    if let Err(e) = result {
        info!(error = %e, "HTTP/2 connection error; closed");
    }
    let (bytes_in, bytes_out) = (bytes[Dir::Up].load(Relaxed), bytes[Dir::Down].load(Relaxed));
    info!(bytes_in, bytes_out, secs = started.elapsed().as_secs_f64(), "connection closed");
}

/// The HTTP/2 server (the `h2` crate's: it names each stream), with its bounds
/// (docs/http2.md).
fn server(ctx: &ProxyContext, h2: Http2) -> ::h2::server::Builder {
    let mut b = ::h2::server::Builder::new();
    b.max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(u32::try_from(ctx.settings.limits.max_header_size).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_RESETS))
        .max_send_buffer_size(SEND_BUFFER)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    if h2.connect_protocol {
        b.enable_connect_protocol();
    }
    b
}

/// Ends once the connection has had no stream open for `limit` (the keep-alive idle
/// time, `limits.handshake_timeout`, as for HTTP/1.1): then a GOAWAY closes it.
async fn idle(live: &std::sync::Weak<Permit>, limit: Duration) {
    let step = (limit / 4).max(Duration::from_millis(100));
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(step).await;
        quiet = if live.strong_count() <= 1 { quiet + step } else { Duration::ZERO };
        if quiet >= limit {
            return;
        }
    }
}

impl Streams {
    /// Answers one stream (the `n`-th the connection accepted): as an HTTP/1.1 request
    /// would be, a WebSocket's extended CONNECT as an Upgrade (its `101` answered with a
    /// `200`). A stream the client resets is given up.
    async fn answer(self: Arc<Self>, n: u64, req: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
        let sid = u32::from(respond.stream_id());
        let id = ConnId(self.id.0 | (n << 32));
        let websocket = req.method() == Method::CONNECT
            && req
                .extensions()
                .get::<::h2::ext::Protocol>()
                .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        let (mut parts, recv) = req.into_parts();
        normalize(&mut parts);
        let conn = Arc::new(ClientConn::new(
            self.ctx.clone(),
            id,
            self.client,
            self.shutdown.clone(),
            self.stream_capture(id, sid, websocket),
            self.permit.clone(),
        ));
        let tap = conn.capture.tap.clone();
        // Whatever way the stream ends, its restated connection ends in the capture.
        let guard = TapGuard::new(tap.clone());
        let method = parts.method.clone();
        let answered = match websocket {
            true => self.websocket(&conn, parts, recv, &mut respond, guard).await,
            false => {
                let mut req = Request::from_parts(parts, RecvBody(recv));
                // Restated as HTTP/1.1 for the capture: the request's body as the upstream
                // takes it, the response's as the client does.
                let body_tap = tap.as_ref().and_then(|t| as_http1::request(t, &req, false));
                if let Some(body) = &body_tap {
                    req.extensions_mut().insert(body.clone());
                }
                let resp = until_reset(&mut respond, conn.handle(req)).await;
                // A body the upstream never took (the request failed before): its end is
                // said, so that the exchange reads on.
                body_tap.inspect(as_http1::BodyTap::end);
                resp.map(|r| (r, guard))
            }
        };
        let Some((resp, guard)) = answered else { return };
        // A stream streaming its answer is live: it holds the connection's permit.
        let holds = Some(self.permit.clone() as Arc<dyn Send + Sync>);
        let (parts, body) = resp.into_parts();
        let said = tap.map(|t| as_http1::response(&t, &parts, hyper::body::Body::is_end_stream(&body), &method));
        send_response(respond, Response::from_parts(parts, Said::new(body, said, guard, holds))).await;
    }

    /// An extended CONNECT for a WebSocket: bridged as an Upgrade; once the upstream has
    /// switched, the stream's `200` goes out and the stream is the session's. Any other
    /// answer is handed back, to be sent as any.
    async fn websocket(
        &self,
        conn: &Arc<ClientConn>,
        mut parts: hyper::http::request::Parts,
        recv: RecvStream,
        respond: &mut SendResponse<Bytes>,
        mut guard: TapGuard,
    ) -> Option<(Response<Body>, TapGuard)> {
        as_upgrade(&mut parts);
        let (tx, rx) = tokio::sync::oneshot::channel();
        *lock(&conn.upgrade) = Some(ClientSide::Stream(rx));
        let req = Request::from_parts(parts, http_body_util::Empty::<Bytes>::new());
        if let Some(tap) = &conn.capture.tap {
            as_http1::request(tap, &req, true);
        }
        let resp = until_reset(respond, conn.clone().handle(req)).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Some((accepted(resp), guard));
        }
        // The session's tee has the tap from here on, and closes it.
        guard.let_go();
        let (parts, _) = accepted(resp).into_parts();
        if let Ok(send) = respond.send_response(Response::from_parts(parts, ()), false) {
            let _ = tx.send(Box::new(H2Stream::new(send, recv)));
        }
        None
    }

    /// The tap of a stream's client leg, if it may be recorded (a WebSocket's, or any
    /// stream's where a route records whole connections): written as an HTTP/1.1
    /// connection of its own from a port of the client's address made up for it, with
    /// what really carried it.
    fn stream_capture(&self, id: ConnId, sid: u32, websocket: bool) -> LegTap {
        let whole = |r: &crate::config::route::Route| r.policy.mode == CaptureMode::All && r.policy.legs.client;
        if !websocket && !self.ctx.settings.routes.iter().any(whole) {
            return LegTap::default();
        }
        let port = synthetic_port();
        let remote = SocketAddr::new(self.client.ip(), port);
        let tap = recording::tap(&self.ctx, Leg::Client, id, self.local, remote, Layer::Http);
        let what = if websocket { "a WebSocket over HTTP/2 (RFC 8441)" } else { "an HTTP/2 request" };
        let carried = format!(
            "is {what}, stream {sid} of the connection from {} to {} ({}), written as an HTTP/1.1 connection from \
             port {port}",
            self.client, self.local, self.how
        );
        LegTap { tap, carried: Some(carried), ..LegTap::default() }
    }
}

/// The ports restated connections come from, in turn: 49152–65535 (the dynamic range),
/// so that two of them share an address and port only 16,384 streams apart.
fn synthetic_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    49_152 + (NEXT.fetch_add(1, Relaxed) % 16_384) as u16
}

/// The request as HTTP/1.1 forwards it: `:authority` is its Host (RFC 9113 §8.3.1),
/// cookie crumbs joined again into one field (§8.2.3), the target in origin form.
fn normalize(req: &mut hyper::http::request::Parts) {
    if let Some(authority) = req.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
        req.headers.insert(HOST, authority);
    }
    let crumbs: Vec<&[u8]> = req.headers.get_all(COOKIE).iter().map(HeaderValue::as_bytes).collect();
    if crumbs.len() > 1 {
        if let Ok(joined) = HeaderValue::from_bytes(&crumbs.join(&b"; "[..])) {
            req.headers.insert(COOKIE, joined);
        }
    }
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    req.uri = target.parse().unwrap_or_default();
}

/// An extended CONNECT made the Upgrade request it stands for: `GET`, `Upgrade:
/// websocket`, and a `Sec-WebSocket-Key` of its own (the stream had none); the
/// version, protocols and extensions as the client sent them.
fn as_upgrade(req: &mut hyper::http::request::Parts) {
    req.method = Method::GET;
    req.extensions.remove::<::h2::ext::Protocol>();
    let h = &mut req.headers;
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(key) = HeaderValue::from_str(&new_key()) {
        h.insert(SEC_WEBSOCKET_KEY, key);
    }
    h.entry(HeaderName::from_static("sec-websocket-version")).or_insert(HeaderValue::from_static("13"));
}

/// A fresh `Sec-WebSocket-Key`: 16 bytes no one can guess, in base64.
fn new_key() -> String {
    let random = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.finish().to_le_bytes()
    };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&random(nanos));
    key[8..].copy_from_slice(&random(!nanos));
    data_encoding::BASE64.encode(&key)
}

/// The answer to an extended CONNECT: the upstream's `101` becomes a `200` (its
/// protocol and extensions kept, the HTTP/1.1 upgrade fields gone); anything else is
/// passed on as it came.
fn accepted(resp: Response<Body>) -> Response<Body> {
    // Any other 2xx would be a tunnel to the client (RFC 8441 §5): not a WebSocket.
    if resp.status().is_success() {
        info!(status = resp.status().as_u16(), "upstream answered a WebSocket request without switching; 502");
        return crate::proxy::conn::error_response(StatusCode::BAD_GATEWAY);
    }
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return resp;
    }
    let (mut parts, _) = resp.into_parts();
    parts.status = StatusCode::OK;
    for name in [UPGRADE, CONNECTION, SEC_WEBSOCKET_ACCEPT] {
        parts.headers.remove(name);
    }
    Response::from_parts(parts, Either::Right(Full::new(Bytes::new())))
}

/// Runs `answering` unless the client resets the stream first (then `None`: the work is
/// dropped, as the client no longer waits for it).
async fn until_reset<T>(
    respond: &mut SendResponse<Bytes>,
    answering: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        answer = answering => Some(answer),
        _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => None,
    }
}

/// Sends a response on its stream: the head, then the body within the stream's flow
/// control, then its trailers or its end.
async fn send_response(mut respond: SendResponse<Bytes>, resp: Response<Said<Body>>) {
    use http_body_util::BodyExt;
    let (parts, mut body) = resp.into_parts();
    let end = hyper::body::Body::is_end_stream(&body);
    let Ok(mut send) = respond.send_response(Response::from_parts(parts, ()), end) else { return };
    if end {
        return;
    }
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            send.send_reset(::h2::Reason::INTERNAL_ERROR);
            return;
        };
        match frame.into_data() {
            Ok(data) => {
                if send_all(&mut send, data).await.is_err() {
                    return;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = send.send_trailers(trailers);
                }
                return;
            }
        }
    }
    let _ = send.send_data(Bytes::new(), true);
}

/// Sends `data` as the stream's window allows.
async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), ()> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            // (None yet: poll_capacity waits again.)
            Some(Ok(0)) => {}
            Some(Ok(n)) => send.send_data(data.split_to(n.min(data.len())), false).map_err(drop)?,
            Some(Err(_)) | None => return Err(()),
        }
    }
    Ok(())
}

/// A request's body, from its HTTP/2 stream (the window released as it is read).
struct RecvBody(RecvStream);

impl hyper::body::Body for RecvBody {
    type Data = Bytes;
    type Error = ::h2::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, ::h2::Error>>> {
        use std::task::{ready, Poll};
        match ready!(self.0.poll_data(cx)) {
            Some(Ok(data)) => {
                let _ = self.0.flow_control().release_capacity(data.len());
                Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => match ready!(self.0.poll_trailers(cx)) {
                Ok(Some(trailers)) => Poll::Ready(Some(Ok(hyper::body::Frame::trailers(trailers)))),
                Ok(None) => Poll::Ready(None),
                Err(e) => Poll::Ready(Some(Err(e))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}
