//! A client connection's upstream connection: a socket wstap opens itself (owning it is
//! what lets capture tee it under hyper), TLS for a `wss://`/`https://` upstream, and a
//! hyper client connection over it for each request. It is kept for the client
//! connection's next request to the same upstream, parked: the socket alone.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tracing::{debug, Instrument};
use wstap_wire::Leg;

use crate::capture::ConnId;
use crate::capture::{Layer, Tap, Tee};
use crate::config::route::{Route, Upstream};
use crate::config::tls::UpstreamTls;
use crate::proxy::context::ProxyContext;
use crate::proxy::error::ProxyError;
use crate::proxy::headers;
use crate::proxy::metered::Metered;
use crate::proxy::paced::Paced;
use crate::proxy::recording::{self, LegTap};
use crate::proxy::tls;
use crate::sync::lock;

/// The largest read buffer of an upstream connection (hyper grows it as reads fill it):
/// a response head must fit, and a body streams through it.
const UPSTREAM_READ_BUFFER: usize = 64 * 1024;

/// An upstream connection's socket: teed, metered, plain or TLS.
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}
type Socket = Box<dyn Io>;

/// An upstream connection. Each request is sent by a hyper client connection of its own
/// over its socket; between requests the socket is parked, holding no buffer of hyper's
/// (hyper's client keeps ~35 KiB per idle connection: its buffers and the slots of its
/// request queue).
pub(crate) struct UpstreamConn {
    upstream: Upstream,
    tls: Option<UpstreamTls>,
    between: Between,
    /// The upstream leg's capture.
    pub(crate) capture: LegTap,
}

/// Where an upstream connection's socket is between requests.
enum Between {
    /// Parked, ready for the next request.
    Parked(Socket),
    /// hyper's client is finishing the last response (its body streams to the client); it
    /// hands the socket back once done, if the connection carries another request.
    Finishing(oneshot::Receiver<Socket>),
    /// Gone: upgraded, closed, or not reusable.
    Gone,
}

impl UpstreamConn {
    /// Sends `req` (its body paced by `limits.body_timeout`) and waits for the response
    /// head (up to `limits.upstream_timeout`). An `upgrade` request's connection goes to
    /// its session (or, refused, closes); any other is parked again after its response,
    /// when both sides keep it alive.
    pub(crate) async fn send<B: crate::proxy::paced::RequestBody>(
        &mut self,
        ctx: &ProxyContext,
        req: Request<B>,
        upgrade: bool,
    ) -> Result<Response<Incoming>, ProxyError> {
        let Between::Parked(socket) = std::mem::replace(&mut self.between, Between::Gone) else {
            return Err(ProxyError::Connect(std::io::Error::from(std::io::ErrorKind::NotConnected)));
        };
        let keeps = headers::keeps_alive(req.headers(), req.version());
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .preserve_header_case(true)
            .max_buf_size(UPSTREAM_READ_BUFFER)
            .handshake(TokioIo::new(socket))
            .await
            .map_err(ProxyError::Upstream)?;
        let back = match upgrade {
            true => {
                tokio::spawn(finish(conn.with_upgrades()).in_current_span());
                None
            }
            false => {
                let (tx, rx) = oneshot::channel();
                tokio::spawn(hand_back(conn, tx).in_current_span());
                Some(rx)
            }
        };
        let limits = &ctx.settings.limits;
        let stalled = Arc::new(AtomicBool::new(false));
        let (mut parts, body) = req.into_parts();
        // A stream restated as HTTP/1.1 for its capture: its body is said as it goes.
        let said = parts.extensions.remove::<crate::proxy::as_http1::BodyTap>();
        let body = Paced::new(body, limits.body_timeout, stalled.clone()).saying(said);
        let sent = sender.send_request(Request::from_parts(parts, body));
        let resp = match limits.upstream_timeout {
            Some(t) => tokio::time::timeout(t, sent).await.map_err(|_| ProxyError::ResponseTimeout(t))?,
            None => sent.await,
        }
        .map_err(|e| match (stalled.load(Relaxed), limits.body_timeout) {
            (true, Some(t)) => ProxyError::BodyTimeout(t),
            _ => ProxyError::Upstream(e),
        })?;
        // The sender goes with this function: hyper's client ends once the response is
        // read, and hands the socket back.
        if let Some(rx) = back.filter(|_| keeps && reusable(&resp)) {
            self.between = Between::Finishing(rx);
        }
        Ok(resp)
    }

    /// Whether its socket is parked and still open: the last response read whole (waited
    /// for up to `wait`), and nothing from the upstream since (not even its close).
    async fn ready(&mut self, wait: Duration) -> bool {
        if let Between::Finishing(rx) = &mut self.between {
            self.between = match tokio::time::timeout(wait, rx).await {
                Ok(Ok(socket)) => Between::Parked(socket),
                _ => Between::Gone,
            };
        }
        match &mut self.between {
            Between::Parked(socket) => still_open(socket),
            _ => false,
        }
    }
}

/// Runs an upstream connection that may upgrade, to its end.
async fn finish<F: std::future::Future<Output = hyper::Result<()>>>(conn: F) {
    if let Err(e) = conn.await {
        debug!(side = %Leg::Upstream.name(), error = %e, "upstream connection ended");
    }
}

/// Runs an upstream connection to the end of its one exchange, and hands its socket back
/// (when nothing past the response was read).
async fn hand_back<B: crate::proxy::paced::RequestBody>(
    conn: hyper::client::conn::http1::Connection<TokioIo<Socket>, Paced<B>>,
    tx: oneshot::Sender<Socket>,
) {
    match conn.without_shutdown().await {
        Ok(parts) if parts.read_buf.is_empty() => {
            let mut socket = parts.io.into_inner();
            // The socket's registration holds the waker of the last task that read it,
            // and a waker keeps its task's whole allocation (~2 KiB here) alive: polled
            // once with a waker of no task, the parked socket holds none of this one.
            if still_open(&mut socket) {
                let _ = tx.send(socket);
            }
        }
        Ok(_) => debug!(side = %Leg::Upstream.name(), "upstream sent bytes past its response; closed"),
        Err(e) => debug!(side = %Leg::Upstream.name(), error = %e, "upstream connection ended"),
    }
}

/// Whether the connection can carry another request after `resp`: kept alive, and its
/// body's end known without the close.
fn reusable(resp: &Response<Incoming>) -> bool {
    use hyper::body::Body;
    let h = resp.headers();
    let framed = resp.body().is_end_stream()
        || h.contains_key(hyper::header::CONTENT_LENGTH)
        || h.contains_key(hyper::header::TRANSFER_ENCODING);
    framed && headers::keeps_alive(h, resp.version())
}

/// Whether a parked socket is still open: a read would wait (a close, or bytes nobody
/// asked for, end it).
fn still_open(socket: &mut Socket) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    tokio::io::AsyncRead::poll_read(std::pin::Pin::new(socket), &mut cx, &mut buf).is_pending()
}

/// Connection `id`'s upstream connection for `route`: the one `kept` from its previous
/// request if it goes to the same upstream and is still open; otherwise a new one.
pub(crate) async fn open_or_reuse(
    ctx: &Arc<ProxyContext>,
    id: ConnId,
    kept: &Mutex<Option<UpstreamConn>>,
    route: &Route,
) -> Result<UpstreamConn, ProxyError> {
    let (upstream, tls) = (&route.upstream, &route.tls);
    let connect_timeout = ctx.settings.limits.connect_timeout;
    let kept = lock(kept).take();
    if let Some(mut kept) = kept {
        if kept.upstream == *upstream && kept.tls == *tls && kept.ready(connect_timeout).await {
            return Ok(kept);
        }
    }
    let started = tokio::time::Instant::now();
    let stream = connect(upstream, connect_timeout).await?;
    let (Ok(local), Ok(remote)) = (stream.local_addr(), stream.peer_addr()) else {
        return Err(ProxyError::Connect(std::io::Error::from(std::io::ErrorKind::NotConnected)));
    };
    let tap = |layer| recording::tap(ctx, Leg::Upstream, id, local, remote, layer);
    let Some(t) = tls else {
        let mut capture = LegTap::default();
        capture.tap_over(|| tap(Layer::Http));
        let socket = metered(ctx, stream, capture.tap.clone());
        return Ok(UpstreamConn { upstream: upstream.clone(), tls: None, between: Between::Parked(socket), capture });
    };
    // The tap over TLS sees what hyper sees; one under it, the records.
    let (under, keys) = recording::tls_tap(ctx, Leg::Upstream, id, local, remote);
    let config = keys.as_ref().map_or_else(|| t.config.clone(), |k| k.client_config(&t.config));
    let connecting =
        tokio_rustls::TlsConnector::from(config).connect(t.server_name.clone(), Tee::new(stream, under.clone()));
    // One connect_timeout covers the TCP connect and the handshake.
    let stream = tokio::time::timeout_at(started + connect_timeout, connecting)
        .await
        .map_err(|_| ProxyError::ConnectTimeout(connect_timeout))?
        .map_err(ProxyError::UpstreamTls)?;
    let about = tls::describe(stream.get_ref().1, Some(&t.server_name.to_str()));
    let mut capture = LegTap::over_tls(under, keys, format!("{about}, port {}", upstream.port));
    let over = capture.tap_over(|| tap(Layer::Http));
    let socket = metered(ctx, stream, over);
    Ok(UpstreamConn { upstream: upstream.clone(), tls: Some(t.clone()), between: Between::Parked(socket), capture })
}

/// The upstream stream, plain or TLS, teed and metered.
fn metered<S>(ctx: &ProxyContext, stream: S, tap: Option<Arc<Tap>>) -> Socket
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    Box::new(Metered::new(Tee::new(stream, tap), Leg::Upstream, ctx.traffic.clone(), None))
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
