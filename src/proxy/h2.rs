//! HTTP/2 on a client connection (`[[listener]] http2 = true`): ALPN `h2` over TLS, or
//! prior knowledge on cleartext (the connection preface sniffed; HTTP/1.1 still served
//! on the same port). hyper's HTTP/2 server bounds the streams, the header lists and the
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

use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{
    HeaderName, HeaderValue, CONNECTION, COOKIE, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::{debug, info};
use wstap_wire::{Dir, Leg};

use crate::capture::{ConnId, Layer};
use crate::config::CaptureMode;
use crate::config::Http2;
use crate::proxy::admission::Permit;
use crate::proxy::as_http1::{self, Said, TapGuard};
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

/// What hyper buffers for a stream the client does not read, at most.
const SEND_BUFFER: usize = 64 * 1024;

/// How often a connection quiet that long is asked whether its client is still there
/// (an HTTP/2 PING), and how long the answer may take.
const PING_AFTER: Duration = Duration::from_secs(60);
const PING_WAIT: Duration = Duration::from_secs(20);

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
    let b = server(&ctx, h2);
    let idle_limit = ctx.settings.limits.handshake_timeout;
    let permit = Arc::new(permit);
    // Each live stream (a WebSocket session's too) holds the permit: none but ours, idle.
    let live = Arc::downgrade(&permit);
    let streams =
        Arc::new(Streams { ctx, id, client, local, shutdown: shutdown.clone(), permit, count: AtomicU64::new(0), how });
    let service = hyper::service::service_fn(move |req| {
        // Counted here, as hyper accepts each stream (in the order they opened), not
        // when each task first runs.
        let n = streams.count.fetch_add(1, Relaxed) + 1;
        let streams = streams.clone();
        async move { Ok::<_, Infallible>(streams.answer(n, req).await) }
    });
    let conn = b.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let mut draining = shutdown.clone();
    // A drain gives the streams until the end of the grace period; an idle connection's
    // client gets the keep-alive time to answer the GOAWAY's PING (hyper closes once it
    // has), then the connection is dropped.
    let ending = async {
        tokio::select! {
            () = draining.reached(Phase::Draining) => None,
            () = idle(&live, idle_limit) => {
                debug!("HTTP/2 connection idle; closing it");
                Some(idle_limit)
            }
        }
    };
    let result = tokio::select! {
        r = conn.as_mut() => Some(r),
        bound = ending => {
            conn.as_mut().graceful_shutdown();
            let mut closing = shutdown.clone();
            let bounded = async {
                match bound {
                    Some(limit) => tokio::time::sleep(limit).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = conn.as_mut() => Some(r),
                () = closing.reached(Phase::Closing) => None,
                () = bounded => None,
            }
        }
    };
    if let Some(Err(e)) = result {
        // hyper says "http2 error"; the reason is its source's (a flood: ENHANCE_YOUR_CALM).
        let cause = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default();
        info!(error = %e, cause, "HTTP/2 connection error; closed");
    }
    let (bytes_in, bytes_out) = (bytes[Dir::Up].load(Relaxed), bytes[Dir::Down].load(Relaxed));
    info!(bytes_in, bytes_out, secs = started.elapsed().as_secs_f64(), "connection closed");
}

/// hyper's HTTP/2 server, with its bounds (docs/http2.md).
fn server(ctx: &ProxyContext, h2: Http2) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(u32::try_from(ctx.settings.limits.max_header_size).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .max_local_error_reset_streams(Some(MAX_LOCAL_RESETS))
        .max_send_buf_size(SEND_BUFFER)
        .keep_alive_interval(PING_AFTER)
        .keep_alive_timeout(PING_WAIT);
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
    /// `200`).
    async fn answer(self: Arc<Self>, n: u64, mut req: Request<Incoming>) -> Response<Said<Body>> {
        let id = ConnId(self.id.0 | (n << 32));
        let websocket = req.method() == Method::CONNECT
            && req
                .extensions()
                .get::<hyper::ext::Protocol>()
                .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        normalize(&mut req);
        let conn = Arc::new(ClientConn::new(
            self.ctx.clone(),
            id,
            self.client,
            self.shutdown.clone(),
            self.stream_capture(id, websocket),
            self.permit.clone(),
        ));
        let tap = conn.capture.tap.clone();
        // Whatever way the stream ends, its restated connection ends in the capture.
        let mut guard = TapGuard::new(tap.clone());
        // A stream streaming its answer is live: it holds the connection's permit.
        let holds = Some(self.permit.clone() as Arc<dyn Send + Sync>);
        let mut body_tap = None;
        if websocket {
            as_upgrade(&mut req);
            *lock(&conn.upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
            debug!(stream = n, "WebSocket over HTTP/2");
        }
        if let Some(tap) = &tap {
            // Restated as HTTP/1.1 for the capture: the request's body as the upstream
            // takes it, the response's as the client does.
            body_tap = as_http1::request(tap, &req, websocket);
            if let Some(body) = &body_tap {
                req.extensions_mut().insert(body.clone());
            }
        }
        let method = req.method().clone();
        let resp = conn.handle(req).await;
        if websocket && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The session's tee has the tap from here on, and closes it.
            guard.let_go();
            return accepted(resp).map(|b| Said::new(b, None, guard, None));
        }
        let resp = if websocket { accepted(resp) } else { resp };
        let Some(tap) = tap else { return resp.map(|b| Said::new(b, None, guard, holds)) };
        // A body the upstream never took (the request failed before): its end is said, so
        // that the exchange reads on.
        if let Some(body) = body_tap {
            body.end();
        }
        let (parts, body) = resp.into_parts();
        let said = as_http1::response(&tap, &parts, hyper::body::Body::is_end_stream(&body), &method);
        Response::from_parts(parts, Said::new(body, Some(said), guard, holds))
    }

    /// The tap of a stream's client leg, if it may be recorded (a WebSocket's, or any
    /// stream's where a route records whole connections): written as an HTTP/1.1
    /// connection of its own from a port of the client's address made up for it, with
    /// what really carried it.
    fn stream_capture(&self, id: ConnId, websocket: bool) -> LegTap {
        let whole = |r: &crate::config::route::Route| r.policy.mode == CaptureMode::All && r.policy.legs.client;
        if !websocket && !self.ctx.settings.routes.iter().any(whole) {
            return LegTap::default();
        }
        let n = id.0 >> 32;
        let port = synthetic_port();
        let remote = SocketAddr::new(self.client.ip(), port);
        let tap = recording::tap(&self.ctx, Leg::Client, id, self.local, remote, Layer::Http);
        let what = if websocket { "a WebSocket over HTTP/2 (RFC 8441)" } else { "an HTTP/2 request" };
        let carried = format!(
            "is {what}, request {n} of the connection from {} to {} ({}), written as an HTTP/1.1 connection from \
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
fn normalize(req: &mut Request<Incoming>) {
    if let Some(authority) = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
        req.headers_mut().insert(HOST, authority);
    }
    let crumbs: Vec<&[u8]> = req.headers().get_all(COOKIE).iter().map(HeaderValue::as_bytes).collect();
    if crumbs.len() > 1 {
        if let Ok(joined) = HeaderValue::from_bytes(&crumbs.join(&b"; "[..])) {
            req.headers_mut().insert(COOKIE, joined);
        }
    }
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    *req.uri_mut() = target.parse().unwrap_or_default();
}

/// An extended CONNECT made the Upgrade request it stands for: `GET`, `Upgrade:
/// websocket`, and a `Sec-WebSocket-Key` of its own (the stream had none); the
/// version, protocols and extensions as the client sent them.
fn as_upgrade(req: &mut Request<Incoming>) {
    *req.method_mut() = Method::GET;
    req.extensions_mut().remove::<hyper::ext::Protocol>();
    let h = req.headers_mut();
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
