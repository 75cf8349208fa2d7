//! A client connection's upstream connection: a socket wstap opens itself (owning it is
//! what lets capture tee it under hyper), TLS for a `wss://`/`https://` upstream, and
//! hyper's client connection over it. It is kept for the client connection's next
//! request, to the same upstream.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::{debug, Instrument};
use wstap_wire::Leg;

use crate::capture::ConnId;
use crate::capture::{Layer, Tap, Tee};
use crate::config::route::{Route, Upstream};
use crate::config::tls::UpstreamTls;
use crate::config::Limits;
use crate::proxy::context::ProxyContext;
use crate::proxy::error::ProxyError;
use crate::proxy::metered::Metered;
use crate::proxy::paced::Paced;
use crate::proxy::recording::{self, LegTap};
use crate::proxy::tls;
use crate::sync::lock;

/// The largest read buffer of an upstream connection (hyper grows it as reads fill it,
/// and keeps it): a response head must fit, and a body streams through it. The default
/// (~400 KB) stayed with every idle keep-alive connection after a large response.
const UPSTREAM_READ_BUFFER: usize = 64 * 1024;

/// An upstream connection.
pub(crate) struct UpstreamConn {
    upstream: Upstream,
    tls: Option<UpstreamTls>,
    pub(crate) sender: Sender,
    /// The upstream leg's capture.
    pub(crate) capture: LegTap,
}

/// Where requests go to the upstream.
pub(crate) struct Sender(SendRequest<Paced>);

impl Sender {
    /// Sends `req` (its body paced by `limits.body_timeout`) and waits for the response
    /// head (up to `limits.upstream_timeout`).
    pub(crate) async fn send(
        &mut self,
        req: Request<Incoming>,
        limits: &Limits,
    ) -> Result<Response<Incoming>, ProxyError> {
        let stalled = Arc::new(AtomicBool::new(false));
        let (parts, body) = req.into_parts();
        let body = Paced::new(body, limits.body_timeout, stalled.clone());
        let sent = self.0.send_request(Request::from_parts(parts, body));
        match limits.upstream_timeout {
            Some(t) => tokio::time::timeout(t, sent).await.map_err(|_| ProxyError::ResponseTimeout(t))?,
            None => sent.await,
        }
        .map_err(|e| match (stalled.load(Relaxed), limits.body_timeout) {
            (true, Some(t)) => ProxyError::BodyTimeout(t),
            _ => ProxyError::Upstream(e),
        })
    }
}

/// Connection `id`'s upstream connection for `route`: the one `kept` from its previous
/// request if it goes to the same upstream and is still usable; otherwise a new one.
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
        if kept.upstream == *upstream && kept.tls == *tls && !kept.sender.0.is_closed() {
            if let Ok(Ok(())) = tokio::time::timeout(connect_timeout, kept.sender.0.ready()).await {
                return Ok(kept);
            }
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
        let sender = handshake(ctx, stream, capture.tap.clone()).await?;
        return Ok(UpstreamConn { upstream: upstream.clone(), tls: None, sender, capture });
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
    let sender = handshake(ctx, stream, over).await?;
    Ok(UpstreamConn { upstream: upstream.clone(), tls: Some(t.clone()), sender, capture })
}

/// hyper's client on the (teed, metered) upstream stream, plain or TLS; the connection
/// runs on a task of its own.
async fn handshake<S>(ctx: &ProxyContext, stream: S, tap: Option<Arc<Tap>>) -> Result<Sender, ProxyError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = Metered::new(Tee::new(stream, tap), Leg::Upstream, ctx.traffic.clone(), None);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .max_buf_size(UPSTREAM_READ_BUFFER)
        .handshake(TokioIo::new(io))
        .await
        .map_err(ProxyError::Upstream)?;
    tokio::spawn(
        async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(side = %Leg::Upstream.name(), error = %e, "upstream connection ended");
            }
        }
        .in_current_span(),
    );
    Ok(Sender(sender))
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
