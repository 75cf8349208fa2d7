//! An accepted client connection's first steps: the TLS handshake on a listener that
//! terminates TLS, then HTTP/1.1 ([`conn`]) or, on a listener with `http2 = true`,
//! HTTP/2 ([`h2`]): as ALPN agreed over TLS, or as the connection's first bytes say on
//! cleartext.

use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::{debug, info};
use wstap_wire::Leg;

use crate::capture::{ConnId, Tee};
use crate::proxy::admission::Permit;
use crate::proxy::client::Accepted;
use crate::proxy::conn::serve;
use crate::proxy::context::ProxyContext;
use crate::proxy::recording::{self, LegTap};
use crate::proxy::shutdown::Shutdown;
use crate::proxy::{h2, tls};

/// Takes an accepted client connection: on a listener that terminates TLS, the handshake
/// first (a failure is logged once and counted, and ends only this connection), then
/// [`serve`]. The future is boxed at the size its case needs: a plain connection's task
/// holds no room for a TLS handshake.
pub fn accept(
    ctx: Arc<ProxyContext>,
    id: ConnId,
    stream: TcpStream,
    listener: Listener,
    shutdown: Shutdown,
    permit: Permit,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    let (Ok(client), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else { return Box::pin(async {}) };
    let accepted = Accepted { id, client, local, capture: LegTap::default(), shutdown, permit };
    match listener {
        Listener { tls: None, http2: None } => Box::pin(serve(ctx, accepted, stream)),
        Listener { tls: None, http2: Some(h2) } => Box::pin(async move {
            match h2::sniff(&stream, ctx.settings.limits.handshake_timeout).await {
                Some(true) => h2::serve(ctx, accepted, stream, h2, "cleartext, prior knowledge".to_owned()).await,
                Some(false) => serve(ctx, accepted, stream).await,
                None => debug!("connection closed before its first request"),
            }
        }),
        Listener { tls: Some(config), http2 } => Box::pin(accept_tls(ctx, accepted, stream, config, http2)),
    }
}

/// What a listener speaks besides plain HTTP/1.1.
pub struct Listener {
    /// TLS, with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// HTTP/2 too.
    pub http2: Option<crate::config::Http2>,
}

/// The TLS handshake of an accepted connection, then [`serve`].
async fn accept_tls(
    ctx: Arc<ProxyContext>,
    accepted: Accepted,
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    http2: Option<crate::config::Http2>,
) {
    let (id, client, local) = (accepted.id, accepted.client, accepted.local);
    let (tap, keys) = recording::tls_tap(&ctx, Leg::Client, id, local, client);
    let config = match &keys {
        Some(k) => k.server_config(&config),
        None => config,
    };
    match tls::accept(config, Tee::new(stream, tap.clone()), ctx.settings.limits.handshake_timeout).await {
        Ok(stream) => {
            let server = stream.get_ref().1;
            let about = format!("{}, port {}", tls::describe(server, server.server_name()), local.port());
            debug!(tls = %about, "TLS handshake done");
            let h2 = http2.filter(|_| server.alpn_protocol() == Some(b"h2"));
            let capture = LegTap::over_tls(tap, keys, about.clone());
            match h2 {
                Some(h2) => Box::pin(h2::serve(ctx, Accepted { capture, ..accepted }, stream, h2, about)).await,
                None => Box::pin(serve(ctx, Accepted { capture, ..accepted }, stream)).await,
            }
        }
        Err(e) => {
            let reason = tls::HandshakeFailure::of(&e);
            ctx.traffic.tls_failed(reason);
            info!(reason = reason.label(), error = %e, "TLS handshake failed");
        }
    }
}
