//! One client connection: hyper's HTTP/1.1 server runs over the accepted socket, and each
//! request is forwarded over the upstream connection this connection keeps
//! ([`crate::proxy::upstream`]), so one client connection maps to one upstream
//! connection. A `101 Switching Protocols` answer hands both sockets to the session's
//! relay ([`crate::proxy::session`]); any other answer streams back as is. Capture is
//! driven through [`crate::proxy::recording`].

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, HOST, UPGRADE};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::{debug, info, warn};
use wstap_wire::{Dir, Leg, PerLeg};

use crate::capture::{Layer, Tee};
use crate::config::route::Route;
use crate::proxy::client::{Accepted, ClientConn, ClientSide};
use crate::proxy::context::ProxyContext;
use crate::proxy::error::{Failure, ProxyError};
use crate::proxy::gate::{self, Answer, Gate};
use crate::proxy::headers;
use crate::proxy::metered::Metered;
use crate::proxy::paced::RequestBody;
use crate::proxy::path;
use crate::proxy::recording::{self, Exchange, Recording};
use crate::proxy::shutdown::{Phase, Shutdown};
use crate::proxy::traffic::ByteCounts;
use crate::proxy::upstream;
use crate::sync::lock;

/// Response bodies: streamed from the upstream, or a short one wstap writes itself.
pub type Body = Either<Incoming, Full<Bytes>>;

/// Serves HTTP/1.1 on `stream` until the client leaves, the connection upgrades, or the
/// daemon drains (then in-flight requests finish first). Each request is a turn of its
/// own hyper connection over the [`Gate`]; between them the socket is parked, holding no
/// buffer, for up to `handshake_timeout` (the keep-alive idle time). The connection's
/// state is set up here, at once, so that the future returned holds only what its turns
/// need (an async fn would keep its arguments for its whole life).
pub(super) fn serve<S>(ctx: Arc<ProxyContext>, a: Accepted, stream: S) -> impl std::future::Future<Output = ()> + Send
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Accepted { id, client, local, mut capture, shutdown, permit } = a;
    // The tap over TLS sees what hyper sees; one under it, the records.
    let over = capture.tap_over(|| recording::tap(&ctx, Leg::Client, id, local, client, Layer::Http));
    let conn = Arc::new(ClientConn::new(ctx, id, client, shutdown, capture, Arc::new(permit)));
    info!("connection open");
    let bytes: ByteCounts = Arc::default();
    let stream = Metered::new(Tee::new(stream, over), Leg::Client, conn.ctx.traffic.clone(), Some(bytes.clone()));
    let gate = Gate::new(stream, conn.ctx.settings.limits.max_header_size);
    turns(conn, gate, bytes)
}

/// [`serve`]'s turns, and the parked waits between them. An async block, not an async
/// fn, and nothing but the gate and a few words live across its waits: a parked
/// connection's task is this future (an async fn keeps its arguments twice).
#[allow(clippy::manual_async_fn, reason = "an async fn's future keeps its arguments twice")]
fn turns<S>(conn: Arc<ClientConn>, mut gate: Gate<S>, bytes: ByteCounts) -> impl std::future::Future<Output = ()> + Send
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let started = tokio::time::Instant::now();
        let limits = &conn.ctx.settings.limits;
        let mut shutdown = conn.shutdown.clone();
        let mut first = true;
        loop {
            let parked_at = tokio::time::Instant::now();
            // A new connection's first request comes at once, as a rule: hyper waits for it
            // (its header timeout counts a silent client).
            if !std::mem::take(&mut first) && !next_request(&conn, &mut gate, &mut shutdown).await {
                close(&mut gate, limits.handshake_timeout).await;
                break;
            }
            gate.start_turn();
            let answer = gate.answer();
            // The head's time counts from the start of the wait for it.
            let head_time = limits.handshake_timeout.saturating_sub(parked_at.elapsed()).max(MIN_HEAD_TIME);
            let turn = http(limits, head_time).serve_connection(TokioIo::new(gate), service(&conn, answer.clone()));
            // Boxed: a parked connection's task holds none of it.
            let Some((parts, result)) = Box::pin(run_turn(turn.with_upgrades(), &answer, &mut shutdown)).await else {
                return;
            };
            if let Err(e) = &result {
                if let Some(kind) = log_connection_error(e) {
                    conn.ctx.traffic.request_failed(Leg::Client, kind);
                }
            }
            // Boxed, as the turn.
            let refused = lock(&conn.upgrade).take().and_then(ClientSide::into_upgrade);
            let Some((io, unread)) = Box::pin(after_turn(parts, refused)).await else { break };
            gate = io.into_inner();
            let whole = gate.end_turn(&unread);
            if !(whole && answer.parks() && result.is_ok()) || shutdown.is_draining() {
                close(&mut gate, limits.handshake_timeout).await;
                break;
            }
        }
        if !conn.upgraded.load(Relaxed) {
            let (bytes_in, bytes_out) = (bytes[Dir::Up].load(Relaxed), bytes[Dir::Down].load(Relaxed));
            info!(bytes_in, bytes_out, secs = started.elapsed().as_secs_f64(), "connection closed");
        }
    }
}

/// The socket back from a turn, and the bytes hyper read past its request: from hyper's
/// parts, or, after an Upgrade the upstream refused, from the upgrade hyper prepared
/// (`refused`). `None` once upgraded: the session has the socket.
async fn after_turn<I, S>(
    parts: Option<hyper::server::conn::http1::Parts<I, S>>,
    refused: Option<hyper::upgrade::OnUpgrade>,
) -> Option<(I, Bytes)>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    match (parts, refused) {
        (Some(parts), _) => Some((parts.io, parts.read_buf)),
        (None, Some(refused)) => taken_back(refused).await,
        (None, None) => None,
    }
}

/// hyper's server for one turn: heads of up to `max_header_size`, read within
/// `head_time`.
fn http(limits: &crate::config::Limits, head_time: std::time::Duration) -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .max_header_size(limits.max_header_size)
        // hyper's read buffer grows with what a request sends (to ~400 KiB by default):
        // bound it by the largest head. It goes with the turn.
        .max_buf_size(read_buffer(limits.max_header_size))
        .preserve_header_case(true)
        .header_read_timeout(head_time);
    http
}

/// Parks `gate` until the client sends the next request's first bytes (true), leaves,
/// stays silent for `handshake_timeout` (the keep-alive idle time), or the daemon drains.
async fn next_request<S>(conn: &ClientConn, gate: &mut Gate<S>, shutdown: &mut Shutdown) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _idle = conn.ctx.traffic.connection_parked();
    tokio::select! {
        r = tokio::time::timeout(conn.ctx.settings.limits.handshake_timeout, gate.park()) => {
            matches!(r, Ok(Ok(true)))
        }
        () = shutdown.reached(Phase::Draining) => false,
    }
}

/// Ends a client connection that did not upgrade: its socket shut down (for TLS, a
/// `close_notify` first) within `limit`, so that a client that stops reading cannot hold
/// the close open.
async fn close<S>(gate: &mut Gate<S>, limit: std::time::Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(limit, gate.close()).await;
}

/// The socket hyper handed to the client's side of an Upgrade the upstream refused (at
/// the end of the turn, as it does after a `101`), and the bytes it had read past it.
async fn taken_back<T: hyper::rt::Read + hyper::rt::Write + Unpin + 'static>(
    refused: hyper::upgrade::OnUpgrade,
) -> Option<(T, Bytes)> {
    let parts = refused.await.ok()?.downcast::<T>().ok()?;
    Some((parts.io, parts.read_buf))
}

/// The least time a turn's hyper gets to read a head whose first bytes came.
const MIN_HEAD_TIME: std::time::Duration = std::time::Duration::from_millis(100);

/// One turn's service: each request answered by `conn`, and what the answer says of
/// the connection told to `answer`.
fn service(
    conn: &Arc<ClientConn>,
    answer: Arc<Answer>,
) -> impl hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible, Future: Send> + Unpin
{
    let conn = conn.clone();
    hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let (conn, answer) = (conn.clone(), answer.clone());
        async move {
            let keeps = gate::keeps_alive(&req);
            *lock(&conn.upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>().map(ClientSide::Upgrade);
            let resp = conn.handle(req).await;
            answer.answered(keeps, &resp);
            Ok::<_, Infallible>(resp)
        }
    })
}

/// Drives one turn until hyper is done with it: once its answer parks the connection,
/// hyper is told to close after it rather than idle (the gate keeps the socket open);
/// on a drain, in-flight requests finish first. Returns what is left of the turn (none
/// once upgraded) and how it ended; `None` when the daemon closes.
async fn run_turn<I, S>(
    mut turn: hyper::server::conn::http1::UpgradeableConnection<I, S>,
    answer: &Answer,
    shutdown: &mut Shutdown,
) -> Option<(Option<hyper::server::conn::http1::Parts<I, S>>, hyper::Result<()>)>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body> + Unpin,
{
    use std::future::Future;
    use std::pin::Pin;
    let closing = shutdown.clone();
    let mut draining = std::pin::pin!(shutdown.reached(Phase::Draining));
    // Waited for once the drain has begun.
    let mut closes: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    let mut told = false;
    let result = std::future::poll_fn(|cx| {
        if closes.is_none() && draining.as_mut().poll(cx).is_ready() {
            let mut closing = closing.clone();
            closes = Some(Box::pin(async move { closing.reached(Phase::Closing).await }));
            Pin::new(&mut turn).graceful_shutdown();
        }
        if closes.as_mut().is_some_and(|c| c.as_mut().poll(cx).is_ready()) {
            return std::task::Poll::Ready(None);
        }
        gate::poll_turn(&mut turn, answer, &mut told, cx).map(Some)
    })
    .await?;
    Some((turn.into_parts(), result))
}

/// The most hyper's read buffer of a client connection grows to: a whole head of
/// `max_header_size`, and a little more (hyper takes no less than 8 KiB).
fn read_buffer(max_header_size: usize) -> usize {
    (max_header_size + 8 * 1024).max(16 * 1024)
}

/// Logs why hyper gave up on a client connection, once, and names the kind of failure
/// for the metrics (none when the client just went away). hyper has already answered
/// malformed heads itself (400, or 431 for an oversized head).
fn log_connection_error(e: &hyper::Error) -> Option<Failure> {
    let side = Leg::Client.name();
    if e.is_parse_too_large() {
        info!(%side, status = 431, error = %e, "request head too large");
        Some(Failure::HeadTooLarge)
    } else if e.is_parse() || e.is_parse_status() {
        info!(%side, status = 400, error = %e, "malformed request");
        Some(Failure::Malformed)
    } else if e.is_timeout() {
        info!(%side, error = %e, "request head not received in time; closed");
        Some(Failure::HeadTimeout)
    } else if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        debug!(%side, error = %e, "client went away");
        None
    } else {
        info!(%side, error = %e, "connection error");
        Some(Failure::Connection)
    }
}

/// Where a request goes: its route (a copy, and its place in the config, which its
/// sampler is kept by) and the path to forward.
struct Routed {
    index: usize,
    route: Route,
    path: String,
}

impl ClientConn {
    /// Answers one request.
    pub(super) async fn handle<B: RequestBody>(self: Arc<Self>, req: Request<B>) -> Response<Body> {
        let method = req.method().clone();
        // Logged as the capture shows it: userinfo and the listed query values redacted.
        let target = crate::capture::url::Redacted { url: req.uri().clone(), rules: &self.ctx.settings.capture.redact };
        match self.forward(req).await {
            Ok(resp) => {
                debug!(%method, %target, status = resp.status().as_u16(), "forwarded");
                resp
            }
            Err(e) => {
                let (leg, status) = (e.leg(), e.status());
                self.ctx.traffic.request_failed(leg, e.failure());
                let side = leg.name();
                match leg {
                    Leg::Upstream => {
                        warn!(%side, status = status.as_u16(), %method, %target, error = %e, "request failed")
                    }
                    Leg::Client => {
                        info!(%side, status = status.as_u16(), %method, %target, error = %e, "request refused")
                    }
                }
                error_response(status)
            }
        }
    }

    /// The route for `host` and the raw `path`, and the path to forward: normalised
    /// unless `proxy.normalize_path` is off.
    fn route(&self, host: Option<&str>, raw: &str) -> Result<Routed, ProxyError> {
        let settings = &self.ctx.settings;
        let find = |path: &str| settings.routes.iter().position(|r| r.matches(host, path));
        let path = if settings.proxy.normalize_path {
            let path = path::normalize(raw, settings.proxy.encoded_slash).map_err(ProxyError::BadPath)?;
            // `/ws/../admin` names the route of `/ws` and climbs out of it: refused. Under a
            // catch-all `/`, `/static/../ws` stays inside the route it names, and goes on
            // to the route its normalised path picks.
            let named = find(raw).map(|i| &settings.routes[i]);
            if path::climbs(raw) && named.is_some_and(|r| !r.matches(host, &path)) {
                return Err(ProxyError::BadPath(path::BadPath::OutOfRoute));
            }
            path
        } else {
            raw.to_owned()
        };
        let index = find(&path).ok_or(ProxyError::NoRoute)?;
        Ok(Routed { index, route: settings.routes[index].clone(), path })
    }

    /// Forwards one request over the upstream connection, and its answer back: a `101`
    /// starts the session's relay (and, if the route records it, its capture). Each
    /// request's route says what the connection's capture records of it, before a byte
    /// of it goes upstream.
    async fn forward<B: RequestBody>(self: &Arc<Self>, req: Request<B>) -> Result<Response<Body>, ProxyError> {
        let recording = Recording { ctx: &self.ctx, conn: self.id, client: self.client, client_leg: &self.capture };
        let host = req.headers().get(HOST).cloned();
        let host_str = host.as_ref().and_then(|h| h.to_str().ok()).or(req.uri().host());
        let routed = match req.method() == Method::CONNECT {
            true => Err(ProxyError::MethodNotAllowed),
            false => self.route(host_str, req.uri().path()),
        };
        let Routed { index, route, path } = routed.inspect_err(|_| recording.unrouted(req.method().as_str()))?;
        let upgrade = headers::upgrade_protocol(req.headers());
        // Where capture would start on the client leg: this request's line, and wstap's
        // next byte to the client.
        let request_line = format!("{} {} HTTP/1.", req.method(), req.uri());
        let method = req.method().clone();
        let mut ex = Exchange {
            request_line: &request_line,
            method: method.as_str(),
            marks: PerLeg::new(self.capture.tap.as_ref().map(|t| t.mark()), None),
            route: &route,
            index,
        };
        let whole =
            self.capture.is_recording() || lock(&self.upstream).as_ref().is_some_and(|u| u.capture.is_recording());
        let verdict = recording.verdict(&ex, upgrade.is_some(), whole);
        recording.decide(Leg::Client, &self.capture, &ex, verdict);
        let req = self.upstream_request(req, &route, path, host, upgrade.as_ref())?;
        let mut up = upstream::open_or_reuse(&self.ctx, self.id, &self.upstream, &route).await?;
        ex.marks[Leg::Upstream] = up.capture.tap.as_ref().map(|t| t.mark());
        recording.decide(Leg::Upstream, &up.capture, &ex, verdict);
        let mut resp = up.send(&self.ctx, req, upgrade.is_some()).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            *lock(&self.upstream) = Some(up);
            let (mut parts, body) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers, None);
            return Ok(Response::from_parts(parts, Either::Left(body)));
        }
        let client_upgrade = upgrade.is_some().then(|| lock(&self.upgrade).take()).flatten();
        let client_upgrade = client_upgrade.ok_or(ProxyError::UnexpectedUpgrade)?;
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let captured = recording.session(&ex, &up.capture, verdict);
        // A leg written as HTTP/1.1 though it is not (a WebSocket over HTTP/2): the `101`
        // it stands for, before the session's first frame.
        if let (Some(tap), Some(_)) = (&self.capture.tap, &self.capture.carried) {
            crate::proxy::as_http1::switched(tap, resp.headers());
        }
        crate::proxy::session::spawn(self, client_upgrade, upstream_upgrade, route.clone(), up.capture.tap, captured);
        let (mut parts, body) = resp.into_parts();
        let proto = parts.headers.get(UPGRADE).cloned();
        headers::strip_hop_by_hop(&mut parts.headers, proto.as_ref());
        Ok(Response::from_parts(parts, Either::Left(body)))
    }

    /// The request as the upstream gets it: the routed path and the query as it came,
    /// hop-by-hop fields stripped (the upgrade pair kept), `X-Forwarded-*`, and the
    /// upstream's `Host` unless the client's is kept.
    fn upstream_request<B>(
        &self,
        req: Request<B>,
        route: &Route,
        path: String,
        host: Option<HeaderValue>,
        upgrade: Option<&HeaderValue>,
    ) -> Result<Request<B>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let target = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        parts.uri = route.upstream_target(&target).parse().map_err(|_| ProxyError::NoRoute)?;
        parts.version = Version::HTTP_11;
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        if self.ctx.settings.proxy.x_forwarded {
            headers::add_forwarded(&mut parts.headers, self.client.ip(), host.as_ref());
        }
        if !self.ctx.settings.proxy.preserve_host || host.is_none() {
            let authority = route.upstream.authority();
            let default_port = if route.upstream.tls() { 443 } else { 80 };
            let value = if route.upstream.port == default_port { &route.upstream.host } else { &authority };
            if let Ok(v) = HeaderValue::from_str(value) {
                parts.headers.insert(HOST, v);
            }
        }
        Ok(Request::from_parts(parts, body))
    }
}

/// A short plain-text answer for a request wstap could not forward. It names the status
/// only: causes go to the log, not to clients.
pub fn error_response(status: StatusCode) -> Response<Body> {
    let text = format!("{} {}\n", status.as_str(), status.canonical_reason().unwrap_or(""));
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
