//! What the daemon's tasks share: the proxy context new connections take (a reload swaps
//! it), the connection limit, connection ids, the bound listeners with their accept loops,
//! the capture writer's heartbeat and the metrics; and from them, the daemon's health.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::capture::Heartbeat;
use crate::proxy::admission::Admission;
use crate::proxy::context::ProxyContext;
use crate::service::live::LiveListener;
use crate::service::metrics::Metrics;
use crate::sync::lock;

/// Shared by the accept loops, the admin endpoints, the systemd pulse and reloads.
pub(crate) struct Shared {
    /// Swapped on reload: new connections take the current one, live ones keep theirs.
    ctx: RwLock<Arc<ProxyContext>>,
    /// The open client connections, against the current context's limits.
    pub(crate) admission: Arc<Admission>,
    pub(crate) next_id: AtomicU64,
    /// The capture writer's heartbeat, while there is one.
    pub(crate) writer: Mutex<Option<Heartbeat>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) listeners: Mutex<Vec<Listening>>,
    /// The live capture stream, if served.
    pub(crate) live: Mutex<Option<LiveListener>>,
}

/// A bound listener and its accept loop.
pub(crate) struct Listening {
    /// As written in the config (`127.0.0.1:0` stays that, whatever port it got).
    pub(crate) configured: SocketAddr,
    pub(crate) bound: SocketAddr,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl Shared {
    /// State for a daemon that runs `ctx`, with no listener yet.
    pub(crate) fn new(ctx: ProxyContext, writer: Option<Heartbeat>, metrics: Arc<Metrics>) -> Arc<Shared> {
        Arc::new(Shared {
            ctx: RwLock::new(Arc::new(ctx)),
            admission: Arc::default(),
            next_id: AtomicU64::new(1),
            writer: Mutex::new(writer),
            metrics,
            listeners: Mutex::new(Vec::new()),
            live: Mutex::new(None),
        })
    }

    /// The context a new connection takes.
    pub(crate) fn ctx(&self) -> Arc<ProxyContext> {
        self.ctx.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// From now on, new connections take `ctx`.
    pub(crate) fn set_ctx(&self, ctx: Arc<ProxyContext>) {
        *self.ctx.write().unwrap_or_else(|p| p.into_inner()) = ctx;
    }

    /// Client connections open now.
    pub(crate) fn open_connections(&self) -> usize {
        self.admission.open()
    }

    /// The bound addresses, in the order they were bound.
    pub(crate) fn bound(&self) -> Vec<SocketAddr> {
        lock(&self.listeners).iter().map(|l| l.bound).collect()
    }

    /// The bound addresses, for messages.
    pub(crate) fn bound_list(&self) -> String {
        self.bound().iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(", ")
    }

    /// Every accept loop runs and the capture writer is not stuck: the watchdog's rule,
    /// and `/healthz`'s.
    pub(crate) fn healthy(&self) -> bool {
        let accepting = lock(&self.listeners).iter().all(|l| !l.task.is_finished());
        let writer_idle = lock(&self.writer).as_ref().map(Heartbeat::idle);
        healthy(accepting, writer_idle, self.ctx().settings.capture.flush_interval)
    }
}

/// Whether the daemon is well enough to ping the watchdog: every accept loop still runs,
/// and the capture writer (if any) went round its loop recently. It goes round at least
/// every flush interval, so a writer silent for three of them is stuck.
fn healthy(accepting: bool, writer_idle: Option<Duration>, flush_interval: Duration) -> bool {
    accepting && writer_idle.is_none_or(|idle| idle <= flush_interval * 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_writer_or_a_dead_accept_loop_stops_the_pings() {
        let flush = Duration::from_secs(1);
        assert!(healthy(true, None, flush), "no capture");
        assert!(healthy(true, Some(Duration::from_millis(1500)), flush));
        assert!(!healthy(true, Some(Duration::from_secs(4)), flush), "writer stuck");
        assert!(!healthy(false, Some(Duration::ZERO), flush), "accept loop gone");
    }
}
