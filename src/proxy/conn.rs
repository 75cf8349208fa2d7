//! One client connection: hyper's HTTP/1.1 server runs over the accepted socket, and each
//! request is forwarded over an upstream socket this module opens itself and hands to
//! hyper's client connection (owning both sockets is what lets capture tee them later).
//! The upstream connection is kept for the client connection's next request, so one
//! client connection maps to one upstream connection. A `101 Switching Protocols`
//! answer hands both sockets to [`crate::proxy::splice`]; any other answer streams back as is.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, HOST, UPGRADE};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::capture::event::Opening;
use crate::capture::recorder::Recorder;
use crate::capture::tap::{Start, Tap};
use crate::capture::tee::Tee;
use crate::config::route::{Route, Upstream};
use crate::config::{CaptureMode, Settings, Snap, TlsCapture};
use crate::proxy::admission::Permit;
use crate::proxy::error::ProxyError;
use crate::proxy::headers;
use crate::proxy::metered::Metered;
use crate::proxy::paced::Paced;
use crate::proxy::path;
use crate::proxy::policy::Samplers;
use crate::proxy::shutdown::{Phase, Shutdown};
use crate::proxy::splice;
use crate::proxy::tls::{self, KeyLogFile, Keys};
use crate::proxy::traffic::{ByteCounts, ConnectionGuard, LiveSession, Traffic};
use crate::sync::lock;
use wstap_wire::dir::{Dir, Leg, PerDir};

/// Response bodies: streamed from the upstream, or a short one wstap writes itself.
pub type Body = Either<Incoming, Full<Bytes>>;

/// What every connection shares.
pub struct Context {
    pub settings: Arc<Settings>,
    /// Where taps send events; `None` when capture is off.
    pub capture: Option<Recorder>,
    pub traffic: Arc<Traffic>,
    /// Which sessions of each route are sampled.
    samplers: Samplers,
    /// Where every TLS connection's keys are appended (`capture.tls_keylog`).
    keylog: Option<Arc<KeyLogFile>>,
}

/// Bytes of recent traffic an upstream connection's tap keeps while it waits to learn
/// whether a session starts (the Upgrade request and the `101` with any early frames).
const UPSTREAM_PROBE: usize = 256 * 1024;

/// The largest read buffer of an upstream connection (hyper grows it as reads fill it,
/// and keeps it): a response head must fit, and a body streams through it. The default
/// (~400 KB) stayed with every idle keep-alive connection after a large response.
const UPSTREAM_READ_BUFFER: usize = 64 * 1024;

impl Context {
    /// The context of connections run with `settings`.
    pub fn new(
        settings: Arc<Settings>,
        capture: Option<Recorder>,
        traffic: Arc<Traffic>,
        keylog: Option<Arc<KeyLogFile>>,
    ) -> Context {
        let samplers = Samplers::new(settings.routes.len(), settings.capture.sample_seed);
        Context { settings, capture, traffic, samplers, keylog }
    }

    /// For a new TLS connection on `leg`: a tap under its TLS, if its records are
    /// captured (`capture.tls = "encrypted"` and some route records the leg), and what
    /// collects its keys, if they are kept or logged.
    fn tls_capture(
        &self,
        leg: Leg,
        id: u64,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> (Option<Arc<Tap>>, Option<Arc<Keys>>) {
        let encrypted = self.settings.capture.tls == TlsCapture::Encrypted;
        let tap = encrypted.then(|| self.tap(leg, id, local, remote, true)).flatten();
        let keys = Keys::new(tap.is_some(), self.keylog.clone());
        (tap, keys)
    }

    /// A tap for a new connection leg, if any route records that leg: it probes (keeps its
    /// recent bytes) until a request's route says what to record. An `encrypted` one is
    /// under TLS and keeps the connection's first bytes.
    fn tap(&self, leg: Leg, id: u64, local: SocketAddr, remote: SocketAddr, encrypted: bool) -> Option<Arc<Tap>> {
        let rec = self.capture.as_ref()?;
        let capture = &self.settings.capture;
        let wanted = capture.legs.has(leg);
        let probe = match leg {
            Leg::Client => self.settings.limits.max_header_size + 64 * 1024,
            Leg::Upstream => UPSTREAM_PROBE,
        };
        let opening = Opening {
            leg,
            local,
            remote,
            comment: String::new(),
            session: false,
            session_id: id,
            label: String::new(),
            snap: Snap::default(),
            tls_secrets: None,
        };
        match encrypted {
            true => wanted.then(|| Tap::probing_encrypted(rec.clone(), opening, probe)),
            false => wanted.then(|| Tap::probing(rec.clone(), opening, probe)),
        }
    }
}

/// State of one accepted client connection, shared by its requests and its session.
pub struct Conn {
    pub id: u64,
    pub client: SocketAddr,
    pub ctx: Arc<Context>,
    pub shutdown: Shutdown,
    client_tap: Option<Arc<Tap>>,
    /// The client connection's TLS keys, when `client_tap` is under its TLS.
    client_keys: Option<Arc<Keys>>,
    /// The upstream connection of the previous request, kept for reuse.
    upstream: Mutex<Option<UpstreamConn>>,
    /// Held for as long as the connection or its WebSocket session lives.
    _permit: Permit,
    _open: ConnectionGuard,
    /// Switched to WebSocket: the session logs the end, not the connection.
    upgraded: AtomicBool,
    /// The TLS the client connection runs over, described: `TLS 1.3, …, port 8443`.
    tls: Option<String>,
}

struct UpstreamConn {
    upstream: Upstream,
    tls: Option<crate::config::tls::UpstreamTls>,
    /// The TLS to the upstream, described for the capture.
    tls_about: Option<String>,
    sender: SendRequest<Paced>,
    tap: Option<Arc<Tap>>,
    /// The upstream connection's TLS keys, when `tap` is under its TLS.
    keys: Option<Arc<Keys>>,
}

/// Takes an accepted client connection: on a listener that terminates TLS, the handshake
/// first (a failure is logged once and counted, and ends only this connection), then
/// [`serve`].
pub async fn accept(
    ctx: Arc<Context>,
    id: u64,
    stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: Shutdown,
    permit: Permit,
) {
    let (Ok(client), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else { return };
    let accepted = Accepted { id, client, local, tls: None, raw: None, shutdown, permit };
    let Some(config) = tls else { return serve(ctx, accepted, stream).await };
    let (tap, keys) = ctx.tls_capture(Leg::Client, id, local, client);
    let config = match &keys {
        Some(k) => k.server_config(&config),
        None => config,
    };
    match tls::accept(config, Tee::new(stream, tap.clone()), ctx.settings.limits.handshake_timeout).await {
        Ok(stream) => {
            let server = stream.get_ref().1;
            let about = format!("{}, port {}", tls::describe(server, server.server_name()), local.port());
            debug!(tls = %about, "TLS handshake done");
            let raw = tap.zip(keys);
            serve(ctx, Accepted { tls: Some(about), raw, ..accepted }, stream).await;
        }
        Err(e) => {
            let reason = tls::reason(&e);
            ctx.traffic.tls_failed(reason);
            info!(reason, error = %e, "TLS handshake failed");
        }
    }
}

/// A client connection as accepted.
struct Accepted {
    id: u64,
    client: SocketAddr,
    local: SocketAddr,
    tls: Option<String>,
    /// A tap under the connection's TLS, and its keys (`capture.tls = "encrypted"`).
    raw: Option<(Arc<Tap>, Arc<Keys>)>,
    shutdown: Shutdown,
    permit: Permit,
}

/// Serves HTTP/1.1 on `stream` until the client leaves, the connection upgrades, or the
/// daemon drains (then in-flight requests finish first).
async fn serve<S>(ctx: Arc<Context>, a: Accepted, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Accepted { id, client, local, tls, raw, shutdown, permit } = a;
    // The tap over TLS sees what hyper sees; one under it, the records.
    let (plain_tap, client_tap, client_keys) = match raw {
        Some((tap, keys)) => (None, Some(tap), Some(keys)),
        None => {
            let tap = ctx.tap(Leg::Client, id, local, client, false);
            (tap.clone(), tap, None)
        }
    };
    let conn = Arc::new(Conn {
        id,
        client,
        shutdown,
        client_tap,
        client_keys,
        upstream: Mutex::new(None),
        _permit: permit,
        _open: ctx.traffic.connection_opened(),
        upgraded: AtomicBool::new(false),
        tls,
        ctx,
    });
    let started = tokio::time::Instant::now();
    info!("connection open");
    let bytes: ByteCounts = Arc::default();
    let stream = Metered::new(Tee::new(stream, plain_tap), Leg::Client, conn.ctx.traffic.clone(), Some(bytes.clone()));
    let limits = &conn.ctx.settings.limits;
    let svc_conn = conn.clone();
    let service = hyper::service::service_fn(move |req| {
        let conn = svc_conn.clone();
        async move { Ok::<_, Infallible>(conn.handle(req).await) }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .max_header_size(limits.max_header_size)
        .preserve_header_case(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(http);
    let mut shutdown = conn.shutdown.clone();
    let result = tokio::select! {
        r = http.as_mut() => r,
        () = shutdown.reached(Phase::Draining) => {
            http.as_mut().graceful_shutdown();
            tokio::select! {
                r = http.as_mut() => r,
                () = shutdown.reached(Phase::Closing) => return,
            }
        }
    };
    if let Err(e) = result {
        if let Some(kind) = log_connection_error(&e) {
            conn.ctx.traffic.request_failed(Leg::Client, kind);
        }
    }
    if !conn.upgraded.load(Relaxed) {
        let (bytes_in, bytes_out) = (bytes[Dir::Up].load(Relaxed), bytes[Dir::Down].load(Relaxed));
        info!(bytes_in, bytes_out, secs = started.elapsed().as_secs_f64(), "connection closed");
    }
}

/// Logs why hyper gave up on a client connection, once, and names the kind of failure
/// for the metrics (none when the client just went away). hyper has already answered
/// malformed heads itself (400, or 431 for an oversized head).
fn log_connection_error(e: &hyper::Error) -> Option<&'static str> {
    let side = Leg::Client.side();
    if e.is_parse_too_large() {
        info!(%side, status = 431, error = %e, "request head too large");
        Some("head_too_large")
    } else if e.is_parse() || e.is_parse_status() {
        info!(%side, status = 400, error = %e, "malformed request");
        Some("malformed")
    } else if e.is_timeout() {
        info!(%side, error = %e, "request head not received in time; closed");
        Some("head_timeout")
    } else if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        debug!(%side, error = %e, "client went away");
        None
    } else {
        info!(%side, error = %e, "connection error");
        Some("connection")
    }
}

impl Conn {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let target = req.uri().clone();
        match self.forward(req).await {
            Ok(resp) => {
                debug!(%method, %target, status = resp.status().as_u16(), "forwarded");
                resp
            }
            Err(e) => {
                let (leg, status) = (e.leg(), e.status());
                self.ctx.traffic.request_failed(leg, e.kind());
                let side = leg.side();
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

    /// The route for `host` and the raw `path` (its place in the config, a copy), and the
    /// path to forward: normalised unless `proxy.normalize_path` is off.
    fn route(&self, host: Option<&str>, raw: &str) -> Result<(usize, Route, String), ProxyError> {
        let settings = &self.ctx.settings;
        let find = |path: &str| settings.routes.iter().position(|r| r.matches(host, path));
        let path = if settings.proxy.normalize_path {
            let path = path::normalize(raw, settings.proxy.allow_encoded_slash).map_err(ProxyError::BadPath)?;
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
        Ok((index, settings.routes[index].clone(), path))
    }

    async fn forward(self: &Arc<Self>, mut req: Request<Incoming>) -> Result<Response<Body>, ProxyError> {
        if req.method() == Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed);
        }
        let host = req.headers().get(HOST).cloned();
        let host_str = host.as_ref().and_then(|h| h.to_str().ok()).or(req.uri().host());
        let (index, route, path) = self.route(host_str, req.uri().path())?;
        let upgrade = headers::upgrade_protocol(req.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        // Where capture would start on the client leg: this request's line, and wstap's
        // next byte to the client.
        let request_line = format!("{} {} HTTP/1.", req.method(), req.uri());
        let client_down_base = self.client_tap.as_ref().map_or(0, |t| t.offset(Dir::Down));

        let (mut parts, body) = req.into_parts();
        // The upstream gets the path that was routed, and the query as it came.
        let target = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        parts.uri = route.upstream_target(&target).parse().map_err(|_| ProxyError::NoRoute)?;
        parts.version = Version::HTTP_11;
        headers::strip_hop_by_hop(&mut parts.headers, upgrade.as_ref());
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

        let UpstreamConn { upstream, tls, tls_about, mut sender, tap: upstream_tap, keys } =
            self.upstream_conn(&route).await?;
        let upstream_bases = upstream_tap.as_ref().map(|t| PerDir::new(t.offset(Dir::Up), t.offset(Dir::Down)));
        let start = CaptureStart {
            request_line: &request_line,
            client_down_base,
            upstream: upstream_tap.as_deref().zip(upstream_bases),
            upstream_keys: keys.as_deref(),
            upstream_tls: tls_about.as_deref(),
            route: &route,
            index,
        };
        // A connection recorded whole starts with this request, before a byte of it
        // goes upstream: what follows is recorded as it crosses, not kept in a probe.
        if route.policy.mode == CaptureMode::All {
            self.capture_connection(&start);
        }
        let limits = &self.ctx.settings.limits;
        let stalled = Arc::new(AtomicBool::new(false));
        let body = Paced::new(body, limits.body_timeout, stalled.clone());
        let sent = sender.send_request(Request::from_parts(parts, body));
        let mut resp = match limits.upstream_timeout {
            Some(t) => tokio::time::timeout(t, sent).await.map_err(|_| ProxyError::ResponseTimeout(t))?,
            None => sent.await,
        }
        .map_err(|e| match (stalled.load(Relaxed), limits.body_timeout) {
            (true, Some(t)) => ProxyError::BodyTimeout(t),
            _ => ProxyError::Upstream(e),
        })?;

        let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switched {
            let client_upgrade = client_upgrade.ok_or(ProxyError::UnexpectedUpgrade)?;
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let captured = self.capture_session(&start);
            if !captured {
                // The connection is this session's until it ends: nothing more to probe for.
                for tap in [self.client_tap.as_deref(), upstream_tap.as_deref()].into_iter().flatten() {
                    tap.stop_probing();
                }
            }
            self.spawn_session(client_upgrade, upstream_upgrade, route.clone(), upstream_tap, captured);
        } else {
            *lock(&self.upstream) = Some(UpstreamConn { upstream, tls, tls_about, sender, tap: upstream_tap, keys });
        }
        let (mut parts, body) = resp.into_parts();
        let proto = switched.then(|| parts.headers.get(UPGRADE).cloned()).flatten();
        headers::strip_hop_by_hop(&mut parts.headers, proto.as_ref());
        Ok(Response::from_parts(parts, Either::Left(body)))
    }

    /// A session starts, and the route records it (sampled): each leg it records begins
    /// where the Upgrade exchange began. Returns whether it is captured.
    fn capture_session(&self, at: &CaptureStart<'_>) -> bool {
        let policy = at.route.policy;
        let recording = self.client_tap.as_ref().is_some_and(|t| t.is_recording())
            || at.upstream.is_some_and(|(t, _)| t.is_recording());
        // A connection recorded from its first byte (`all`) records its sessions anyway.
        let sampled = || policy.records() && self.ctx.samplers.pick(at.index, policy.sample);
        if !(recording || sampled()) {
            return false;
        }
        let line = at.request_line.trim_end_matches(" HTTP/1.");
        let (client, route) = (self.client, at.route);
        let mut comment = format!(
            "wstap session {}: {line} from {client} via route {:?} to {}",
            self.id, route.path_prefix, route.upstream
        );
        let how = |encrypted: bool| match encrypted {
            true => "captured as TLS records; the keys that decrypt them are in this file",
            false => "captured decrypted",
        };
        if let Some(tls) = &self.tls {
            comment.push_str(&format!("; client leg over {tls} ({})", how(self.client_keys.is_some())));
        }
        if let Some(tls) = at.upstream_tls {
            comment.push_str(&format!("; upstream leg over {tls} ({})", how(at.upstream_keys.is_some())));
        }
        self.start_legs(at, comment, true)
    }

    /// The route records whole connections (`all`): each leg it records is captured from
    /// this request on (the connection's first byte, for its first request), unless it
    /// already is or the connection is not sampled.
    fn capture_connection(&self, at: &CaptureStart<'_>) {
        let client_probing = self.client_tap.as_ref().is_some_and(|t| !t.is_recording());
        if !client_probing || !self.ctx.samplers.pick(at.index, at.route.policy.sample) {
            return;
        }
        let comment = format!("wstap connection {} from {}", self.id, self.client);
        self.start_legs(at, comment, false);
    }

    /// Starts (or, on a leg already recorded, marks) the capture of the legs the route
    /// records. On the client leg it begins at the last `request_line` among the kept
    /// bytes; bytes after a session's request head are held until the `101` is written
    /// (see [`Tap::begin`]). Returns whether any leg is recorded.
    fn start_legs(&self, at: &CaptureStart<'_>, comment: String, session: bool) -> bool {
        let policy = at.route.policy;
        // Per-session file names: client address and route.
        let label = format!("{}-{}_{}", self.client.ip(), self.client.port(), at.route.path_prefix);
        let start = |comment, keys: Option<&Keys>| Start {
            comment,
            label: label.clone(),
            request_line: at.request_line.into(),
            session,
            snap: policy.snap,
            tls_secrets: keys.and_then(Keys::kept),
        };
        let mut recorded = false;
        let client_tap = self.client_tap.as_ref().filter(|_| policy.legs.client);
        if let (Some(tap), Some(keys)) = (client_tap, &self.client_keys) {
            recorded |= begin_encrypted(tap, start(comment.clone(), Some(keys)));
        } else if let Some(tap) = client_tap {
            let (first, end) = match tap.find_head(at.request_line.as_bytes()) {
                Some((first, end)) => (first, Some(end)),
                None => {
                    if !tap.is_recording() {
                        debug!("request not among the kept bytes; capture starts at the oldest one");
                    }
                    (tap.oldest_read().unwrap_or_else(|| tap.offset(Dir::Up)), None)
                }
            };
            tap.begin(PerDir::new(first, at.client_down_base), end.filter(|_| session), start(comment.clone(), None));
            recorded = true;
        }
        if let Some((tap, bases)) = at.upstream.filter(|_| policy.legs.upstream) {
            let comment = match session {
                true => comment,
                false => format!("wstap upstream connection of connection {} to {}", self.id, at.route.upstream),
            };
            recorded |= match at.upstream_keys {
                Some(keys) => begin_encrypted(tap, start(comment, Some(keys))),
                None => {
                    tap.begin(bases, None, start(comment, None));
                    true
                }
            };
        }
        recorded
    }

    /// The upstream connection of the previous request if it goes to the same upstream
    /// and is still usable; otherwise a new one.
    async fn upstream_conn(&self, route: &Route) -> Result<UpstreamConn, ProxyError> {
        let (upstream, tls) = (&route.upstream, &route.tls);
        let connect_timeout = self.ctx.settings.limits.connect_timeout;
        let kept = lock(&self.upstream).take();
        if let Some(mut kept) = kept {
            if kept.upstream == *upstream && kept.tls == *tls && !kept.sender.is_closed() {
                if let Ok(Ok(())) = tokio::time::timeout(connect_timeout, kept.sender.ready()).await {
                    return Ok(kept);
                }
            }
        }
        let started = tokio::time::Instant::now();
        let stream = connect(upstream, connect_timeout).await?;
        let (Ok(local), Ok(remote)) = (stream.local_addr(), stream.peer_addr()) else {
            return Err(ProxyError::Connect(std::io::Error::from(std::io::ErrorKind::NotConnected)));
        };
        let port = upstream.port;
        let Some(t) = tls else {
            let tap = self.ctx.tap(Leg::Upstream, self.id, local, remote, false);
            let sender = self.upstream_handshake(stream, tap.clone()).await?;
            return Ok(UpstreamConn {
                upstream: upstream.clone(),
                tls: None,
                tls_about: None,
                sender,
                tap,
                keys: None,
            });
        };
        // The tap over TLS sees what hyper sees; one under it, the records.
        let (raw, keys) = self.ctx.tls_capture(Leg::Upstream, self.id, local, remote);
        let config = keys.as_ref().map_or_else(|| t.config.clone(), |k| k.client_config(&t.config));
        let connecting =
            tokio_rustls::TlsConnector::from(config).connect(t.server_name.clone(), Tee::new(stream, raw.clone()));
        // One connect_timeout covers the TCP connect and the handshake.
        let stream = tokio::time::timeout_at(started + connect_timeout, connecting)
            .await
            .map_err(|_| ProxyError::ConnectTimeout(connect_timeout))?
            .map_err(ProxyError::UpstreamTls)?;
        let about = tls::describe(stream.get_ref().1, Some(&t.server_name.to_str()));
        let (tap, keys) = match raw {
            Some(raw) => (None, Some(raw).zip(keys)),
            None => (self.ctx.tap(Leg::Upstream, self.id, local, remote, false), None),
        };
        let sender = self.upstream_handshake(stream, tap.clone()).await?;
        let (tap, keys) = match keys {
            Some((raw, keys)) => (Some(raw), Some(keys)),
            None => (tap, None),
        };
        let tls_about = Some(format!("{about}, port {port}"));
        Ok(UpstreamConn { upstream: upstream.clone(), tls: Some(t.clone()), tls_about, sender, tap, keys })
    }

    /// hyper's client on the (teed, metered) upstream stream, plain or TLS; the
    /// connection runs on a task of its own.
    async fn upstream_handshake<S>(&self, stream: S, tap: Option<Arc<Tap>>) -> Result<SendRequest<Paced>, ProxyError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = Metered::new(Tee::new(stream, tap), Leg::Upstream, self.ctx.traffic.clone(), None);
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .preserve_header_case(true)
            .max_buf_size(UPSTREAM_READ_BUFFER)
            .handshake(TokioIo::new(io))
            .await
            .map_err(ProxyError::Upstream)?;
        tokio::spawn(
            async move {
                if let Err(e) = conn.with_upgrades().await {
                    debug!(side = %Leg::Upstream.side(), error = %e, "upstream connection ended");
                }
            }
            .in_current_span(),
        );
        Ok(sender)
    }

    /// Waits for both sides to finish switching protocols, then relays bytes until the
    /// session ends. Runs as its own task: hyper's connection ends at the upgrade.
    fn spawn_session(
        self: &Arc<Self>,
        client: OnUpgrade,
        upstream: OnUpgrade,
        route: Route,
        upstream_tap: Option<Arc<Tap>>,
        captured: bool,
    ) {
        let conn = self.clone();
        // Entered for its log lines only, not around the task: the relay polls once per
        // chunk, and entering a span each time costs more than the relay's own work.
        let span = info_span!("session", path_prefix = %route.path_prefix, upstream = %route.upstream);
        tokio::spawn(async move {
            let mut shutdown = conn.shutdown.clone();
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(pair) => pair,
                Err(e) => {
                    span.in_scope(|| info!(error = %e, "upgrade did not complete"));
                    return;
                }
            };
            conn.upgraded.store(true, Relaxed);
            let started = tokio::time::Instant::now();
            span.in_scope(|| info!("websocket session open"));
            let idle = conn.ctx.settings.limits.idle_timeout;
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            let counts: ByteCounts = Arc::default();
            let live = LiveSession {
                started: std::time::Instant::now(),
                client: conn.client,
                path: route.path_prefix.clone(),
                upstream: route.upstream.to_string(),
                bytes: counts.clone(),
                policy: route.policy,
                captured,
            };
            let _listed = conn.ctx.traffic.session_started(conn.id, live);
            let done =
                splice::splice(&mut client, &mut upstream, &counts, idle, shutdown.reached(Phase::Closing)).await;
            // Say why before the sockets close: it goes on each leg's last captured packet.
            for tap in [&conn.client_tap, &upstream_tap].into_iter().flatten() {
                tap.set_close_reason(format!("WebSocket session {} {}", conn.id, done.end));
            }
            drop((client, upstream));
            let (up, down) = (done.bytes[Dir::Up], done.bytes[Dir::Down]);
            let secs = started.elapsed().as_secs_f64();
            span.in_scope(|| info!(up, down, secs, end = %done.end, "websocket session ended"));
        });
    }
}

/// Starts (or, recording already, marks) the capture of a leg whose tap is under its TLS:
/// from the connection's first byte, its handshake, without which nothing decrypts. When
/// more than the probe holds crossed before, the leg is not captured, and the log says so
/// (once per connection). Returns whether the leg is recorded.
fn begin_encrypted(tap: &Tap, start: Start) -> bool {
    tap.begin(PerDir::default(), None, start);
    if tap.start_just_lost() {
        info!(
            leg = tap.leg().name(),
            "not captured: the TLS handshake is not kept (too much crossed before the session), so its records could not be decrypted"
        );
    }
    tap.is_recording()
}

/// Opens a TCP connection to the first reachable address of `upstream` within `limit`.
async fn connect(upstream: &Upstream, limit: Duration) -> Result<TcpStream, ProxyError> {
    let attempt = async {
        let mut last = None;
        for addr in tokio::net::lookup_host((upstream.connect_host(), upstream.port)).await? {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("host name resolved to no address")))
    };
    let stream = tokio::time::timeout(limit, attempt)
        .await
        .map_err(|_| ProxyError::ConnectTimeout(limit))?
        .map_err(ProxyError::Connect)?;
    // WebSocket messages are small and latency-bound; never wait for Nagle.
    let _ = stream.set_nodelay(true);
    Ok(stream)
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

/// Where a request's capture would start, and under which route.
struct CaptureStart<'a> {
    /// The request's first line up to `HTTP/1.`.
    request_line: &'a str,
    /// wstap's next byte to the client.
    client_down_base: u64,
    /// The upstream leg's tap, and where the request and the response began on it.
    upstream: Option<(&'a Tap, PerDir<u64>)>,
    /// The TLS to the upstream, described.
    upstream_tls: Option<&'a str>,
    /// The upstream connection's keys, when its tap is under its TLS.
    upstream_keys: Option<&'a Keys>,
    route: &'a Route,
    /// The route's place in the config.
    index: usize,
}
