//! The admin endpoints (`admin.listen`): `/metrics` (Prometheus text), `/sessions`
//! (JSON), `/healthz` (200 or 503). GET only; one small response per request. Bounded
//! apart from the proxy, so that a probe always gets its answer: at most
//! [`MAX_CONNECTIONS`] connections at once, a new one past that closing the oldest, and
//! [`HEAD_TIMEOUT`] (not the proxy's `limits.handshake_timeout`) to send a request head.
//! A failing accept backs off like the proxy's.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::service::accepting::Accepting;
use crate::service::shared::Shared;
use crate::sync::lock;

/// Admin connections open at once (scrapers and probes need few); a new one past this
/// closes the oldest, so a burst of idle connections cannot keep `/healthz` from answering.
const MAX_CONNECTIONS: usize = 16;

/// Time an admin connection has to send a request head (and between requests): probes
/// and scrapers send theirs at once.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// The admin connections open, oldest first, each with the means to close it.
#[derive(Default)]
struct Slots {
    open: Mutex<VecDeque<(u64, oneshot::Sender<()>)>>,
    next: std::sync::atomic::AtomicU64,
}

/// One admin connection's place; its drop gives the place back.
struct Slot {
    slots: Arc<Slots>,
    id: u64,
}

impl Slots {
    /// A place for a new connection, and what says it must close; at the limit, the
    /// oldest connection is told to close first.
    fn take(self: &Arc<Self>) -> (Slot, oneshot::Receiver<()>) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (close, closing) = oneshot::channel();
        let mut open = lock(&self.open);
        if open.len() >= MAX_CONNECTIONS {
            if let Some((_, oldest)) = open.pop_front() {
                tracing::warn!("admin connection limit reached; the oldest connection is closed");
                let _ = oldest.send(());
            }
        }
        open.push_back((id, close));
        (Slot { slots: self.clone(), id }, closing)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.slots.open).retain(|(id, _)| *id != self.id);
    }
}

/// Serves the endpoints on `listener` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin endpoints served");
    }
    let mut accepting = Accepting::new(listener);
    let slots = Arc::new(Slots::default());
    loop {
        let (stream, _client) = accepting.next().await;
        let (slot, closing) = slots.take();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = respond(req.method(), req.uri().path(), &shared);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let http = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = http => {}
                _ = closing => {}
            }
        });
    }
}

fn respond(method: &Method, path: &str, shared: &Shared) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (method, path) {
        (&Method::GET, "/metrics") => {
            let ctx = shared.ctx();
            let instance = &ctx.settings.capture.instance;
            let body = shared.metrics.render(ctx.capture.as_ref().map(|r| r.stats()), shared.healthy(), instance);
            (200, "text/plain; version=0.0.4; charset=utf-8", body)
        }
        (&Method::GET, "/sessions") => {
            (200, "application/json", shared.metrics.sessions_json(&shared.ctx().settings.capture.instance))
        }
        (&Method::GET, "/healthz") => match shared.healthy() {
            true => (200, "text/plain", "ok\n".to_owned()),
            false => (503, "text/plain", "unhealthy: an accept loop ended or the capture writer is stuck\n".to_owned()),
        },
        (&Method::GET, _) => (404, "text/plain", "not found: try /metrics, /sessions or /healthz\n".to_owned()),
        _ => (405, "text/plain", "GET only\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
