//! A WebSocket session's task: it waits for both sides to finish switching protocols,
//! lists the session (`/sessions`), relays bytes both ways ([`crate::proxy::splice`])
//! until the session ends, and says why before the sockets close. It runs on its own:
//! hyper's connection ends at the upgrade.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::{info, info_span};
use wstap_wire::{Dir, PerLeg};

use crate::capture::{Ending, Tap, Tee};
use crate::config::route::Route;
use crate::proxy::client::{ClientConn, ClientSide};
use crate::proxy::recording;
use crate::proxy::shutdown::Phase;
use crate::proxy::splice;
use crate::proxy::traffic::SessionCapture;
use crate::proxy::traffic::{ByteCounts, LiveSession};

/// Starts the task of `conn`'s session on `route`, once `client` and `upstream` have
/// switched protocols.
pub(crate) fn spawn(
    conn: &Arc<ClientConn>,
    client: ClientSide,
    upstream: OnUpgrade,
    route: Route,
    upstream_tap: Option<Arc<Tap>>,
    captured: SessionCapture,
) {
    let conn = conn.clone();
    // Entered for its log lines only, not around the task: the relay polls once per
    // chunk, and entering a span each time costs more than the relay's own work.
    let span = info_span!("session", path_prefix = %route.path_prefix, upstream = %route.upstream);
    tokio::spawn(async move {
        let mut shutdown = conn.shutdown.clone();
        let upstream = async { upstream.await.map_err(std::io::Error::other) };
        let (client, upstream) = match tokio::try_join!(client.ready(), upstream) {
            Ok(pair) => pair,
            Err(e) => {
                span.in_scope(|| info!(error = %e, "upgrade did not complete"));
                // A leg the socket's tap does not see ends here, in the capture too.
                if conn.capture.carried.is_some() {
                    drop(crate::proxy::as_http1::TapGuard::new(conn.capture.tap.clone()));
                }
                return;
            }
        };
        conn.upgraded.store(true, Relaxed);
        let started = tokio::time::Instant::now();
        span.in_scope(|| info!("websocket session open"));
        let idle = conn.ctx.settings.limits.idle_timeout;
        // A leg the socket's tap does not see (an HTTP/2 stream) is tapped here.
        let tap = conn.capture.carried.as_ref().and(conn.capture.tap.clone());
        let (mut client, mut upstream) = (Tee::new(client, tap), TokioIo::new(upstream));
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
        // Pinned here, and the relay holds a pointer to it.
        let stop = std::pin::pin!(shutdown.reached(Phase::Closing));
        let done = splice::splice(&mut client, &mut upstream, &counts, idle, stop).await;
        let ending = Ending::Session { conn: conn.id, end: done.end.said() };
        recording::closing(PerLeg::new(conn.capture.tap.as_ref(), upstream_tap.as_ref()), &ending);
        drop((client, upstream));
        let (up, down) = (done.bytes[Dir::Up], done.bytes[Dir::Down]);
        let secs = started.elapsed().as_secs_f64();
        span.in_scope(|| info!(up, down, secs, end = %done.end, "websocket session ended"));
    });
}
