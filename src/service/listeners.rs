//! Listening sockets and their accept loops: each accepted connection takes a permit of
//! the connection limit (or gets a `503` and is closed) and is handed to the proxy with
//! the context in force; a failed `accept` backs off and the loop goes on.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, info_span, warn, Instrument};

use crate::capture::ConnId;
use crate::proxy::accept;
use crate::proxy::admission::Refused;
use crate::proxy::shutdown::{Coordinator, Phase, Shutdown};
use crate::service::accepting::Accepting;
use crate::service::error::DaemonError;
use crate::service::shared::{Listening, Shared};
use crate::sync::lock;

/// Sent, raw, to a connection over `limits.max_connections`; then it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
/// Sent, raw, to a connection over `limits.max_connections_per_client`.
const REFUSAL_PER_CLIENT: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
/// How long a refused client gets to take its 503 before the socket closes.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Binds `addr`, configured as `key` in the config file `source`.
pub(crate) async fn bind(addr: SocketAddr, key: &'static str, source: &Path) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr).await.map_err(|error| DaemonError::Listen { addr, key, file: source.to_owned(), error })
}

/// Starts accepting on a bound listener.
pub(crate) fn listen(
    shared: &Arc<Shared>,
    configured: SocketAddr,
    listener: TcpListener,
    coordinator: &Coordinator,
) -> Result<(), DaemonError> {
    let file = shared.ctx().settings.source.clone();
    let bound =
        listener.local_addr().map_err(|error| DaemonError::Listen { addr: configured, key: "listen", file, error })?;
    info!(addr = %bound, tls = shared.ctx().settings.tls_at(configured).is_some(), "listening");
    let task = tokio::spawn(accept_loop(configured, listener, shared.clone(), coordinator.handle()));
    lock(&shared.listeners).push(Listening { configured, bound, task });
    Ok(())
}

async fn accept_loop(configured: SocketAddr, listener: TcpListener, shared: Arc<Shared>, mut shutdown: Shutdown) {
    let mut accepting = Accepting::new(listener);
    loop {
        let (stream, client) = tokio::select! {
            () = shutdown.reached(Phase::Draining) => return,
            pair = accepting.next() => pair,
        };
        let _ = stream.set_nodelay(true);
        let id = ConnId(shared.next_id.fetch_add(1, Relaxed));
        let span = info_span!("conn", id = id.0, %client);
        let ctx = shared.ctx();
        let limits = &ctx.settings.limits;
        match shared.admission.admit(client.ip(), limits.max_connections, limits.max_connections_per_client) {
            Ok(permit) => {
                let permit = permit.counted_in(&ctx.traffic);
                let tls = ctx.settings.tls_at(configured).map(|t| t.config.clone());
                let tls = accept::Listener { tls, http2: ctx.settings.http2_at(configured) };
                // Set up in the connection's span: a plain connection's state is made at once.
                let serving = span.in_scope(|| accept::accept(ctx, id, stream, tls, shutdown.clone(), permit));
                tokio::spawn(serving.instrument(span));
            }
            // A TLS client would read a plaintext answer as garbage: it is closed instead.
            Err(why) if ctx.settings.tls_at(configured).is_some() => {
                let _enter = span.enter();
                warn!(side = "client", limit = ?why, "connection limit reached on a TLS listener; closed");
                drop(stream);
            }
            Err(why) => {
                tokio::spawn(refuse(stream, why).instrument(span));
            }
        }
    }
}

/// Answers `503` (or `429`, over the per-client limit) to a connection over the limit
/// and closes it. The request is drained briefly so the close does not turn into a reset
/// that would eat the answer.
async fn refuse(mut stream: TcpStream, why: Refused) {
    let answer = match why {
        Refused::Total => {
            warn!(side = "client", status = 503, "connection limit reached; refused");
            REFUSAL
        }
        Refused::PerClient => {
            warn!(side = "client", status = 429, "per-client connection limit reached; refused");
            REFUSAL_PER_CLIENT
        }
    };
    let linger = async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
}
