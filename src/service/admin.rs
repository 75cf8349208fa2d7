//! The admin endpoints (`admin.listen`): `/metrics` (Prometheus text), `/sessions`
//! (JSON), `/healthz` (200 or 503). GET only; one small response per request. At most
//! [`MAX_CONNECTIONS`] connections at once, each with `limits.handshake_timeout` to send
//! a request head; a failing accept backs off like the proxy's.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::proxy::admission::Admission;
use crate::service::accepting::Accepting;
use crate::service::shared::Shared;

/// Admin connections open at once; more are closed at once (scrapers and probes need few).
const MAX_CONNECTIONS: usize = 16;

/// Serves the endpoints on `listener` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin endpoints served");
    }
    let mut accepting = Accepting::new(listener);
    let admission = Arc::new(Admission::default());
    loop {
        let (stream, client) = accepting.next().await;
        let Ok(permit) = admission.admit(client.ip(), MAX_CONNECTIONS, 0) else {
            tracing::warn!(%client, "admin connection limit reached; closed");
            continue;
        };
        let shared = shared.clone();
        let header_timeout = shared.ctx().settings.limits.handshake_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = respond(req.method(), req.uri().path(), &shared);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(method: &Method, path: &str, shared: &Shared) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (method, path) {
        (&Method::GET, "/metrics") => {
            let ctx = shared.ctx();
            let body = shared.metrics.render(ctx.capture.as_ref().map(|r| r.stats()), shared.healthy());
            (200, "text/plain; version=0.0.4; charset=utf-8", body)
        }
        (&Method::GET, "/sessions") => (200, "application/json", shared.metrics.sessions_json()),
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
