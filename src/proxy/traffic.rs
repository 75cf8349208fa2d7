//! What the proxy counts: client connections, WebSocket sessions (and the list of live
//! ones), bytes per leg and direction, and the requests it could not forward. Plain
//! atomics bumped where things happen ([`crate::proxy::metered::Metered`] counts bytes);
//! the service renders them for `/metrics` and `/sessions`. No I/O here.

use crate::capture::ConnId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::Policy;
use crate::proxy::error::Failure;
use crate::proxy::tls::HandshakeFailure;
use crate::sync::lock;
use wstap_wire::dir::{Dir, Leg, PerDir, PerLeg};

/// Bytes moved each way by one connection or session, shared with whoever counts them.
pub type ByteCounts = Arc<PerDir<AtomicU64>>;

/// The proxy's counters.
#[derive(Default)]
pub struct Traffic {
    /// Client connections accepted.
    pub connections_total: AtomicU64,
    /// Client connections open now.
    pub connections_active: AtomicU64,
    /// Client connections waiting for their next request, parked outside hyper.
    pub connections_idle: AtomicU64,
    /// WebSocket sessions started.
    pub sessions_total: AtomicU64,
    /// Bytes per leg and direction, all traffic.
    pub bytes: PerLeg<PerDir<AtomicU64>>,
    /// Failed requests by (the leg at fault, kind).
    errors: Mutex<BTreeMap<(Leg, Failure), u64>>,
    /// Failed TLS handshakes on the listeners, by reason.
    tls_failures: Mutex<BTreeMap<HandshakeFailure, u64>>,
    sessions: Mutex<BTreeMap<ConnId, LiveSession>>,
}

/// A WebSocket session being relayed.
#[derive(Clone)]
pub struct LiveSession {
    /// When it started.
    pub started: Instant,
    /// The client's address.
    pub client: SocketAddr,
    /// The route's path prefix.
    pub path: String,
    /// The upstream it goes to.
    pub upstream: String,
    /// Bytes relayed each way (shared with the relay).
    pub bytes: ByteCounts,
    /// Its route's capture policy.
    pub policy: Policy,
    /// Whether it is being captured (its route records it and it was sampled).
    pub captured: SessionCapture,
}

/// Whether a WebSocket session is captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCapture {
    /// Its route records it (and it was sampled), or its connection is recorded whole.
    Captured,
    /// Not recorded.
    NotCaptured,
}

/// Removes a session from the live list when dropped.
pub struct SessionGuard {
    traffic: Arc<Traffic>,
    id: ConnId,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        lock(&self.traffic.sessions).remove(&self.id);
    }
}

/// Counts an open client connection until dropped.
pub struct ConnectionGuard(Arc<Traffic>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Relaxed);
    }
}

/// Counts a parked client connection until dropped.
pub struct IdleGuard(Arc<Traffic>);

impl Drop for IdleGuard {
    fn drop(&mut self) {
        self.0.connections_idle.fetch_sub(1, Relaxed);
    }
}

impl Traffic {
    /// A client connection opened: it counts as active until the guard drops.
    pub fn connection_opened(self: &Arc<Self>) -> ConnectionGuard {
        self.connections_total.fetch_add(1, Relaxed);
        self.connections_active.fetch_add(1, Relaxed);
        ConnectionGuard(self.clone())
    }

    /// A client connection parks until its next request: it counts as idle until the
    /// guard drops.
    pub fn connection_parked(self: &Arc<Self>) -> IdleGuard {
        self.connections_idle.fetch_add(1, Relaxed);
        IdleGuard(self.clone())
    }

    /// A session starts: it is listed until the guard drops.
    pub fn session_started(self: &Arc<Self>, id: ConnId, session: LiveSession) -> SessionGuard {
        self.sessions_total.fetch_add(1, Relaxed);
        lock(&self.sessions).insert(id, session);
        SessionGuard { traffic: self.clone(), id }
    }

    /// A TLS handshake on a listener failed.
    pub fn tls_failed(&self, reason: HandshakeFailure) {
        *lock(&self.tls_failures).entry(reason).or_default() += 1;
    }

    /// Failed TLS handshakes so far, by reason.
    pub fn tls_failures(&self) -> Vec<(HandshakeFailure, u64)> {
        lock(&self.tls_failures).iter().map(|(r, n)| (*r, *n)).collect()
    }

    /// A request could not be forwarded; `leg` is the side at fault.
    pub fn request_failed(&self, leg: Leg, kind: Failure) {
        *lock(&self.errors).entry((leg, kind)).or_default() += 1;
    }

    /// WebSocket sessions being relayed now.
    pub fn sessions_active(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// The live sessions, by id.
    pub fn sessions(&self) -> Vec<(ConnId, LiveSession)> {
        lock(&self.sessions).iter().map(|(id, s)| (*id, s.clone())).collect()
    }

    /// Failed requests so far, by (the leg at fault, kind).
    pub fn errors(&self) -> Vec<((Leg, Failure), u64)> {
        lock(&self.errors).iter().map(|(k, n)| (*k, *n)).collect()
    }

    /// Bytes moved `dir` by leg `leg` so far.
    pub fn bytes(&self, leg: Leg, dir: Dir) -> u64 {
        self.bytes[leg][dir].load(Relaxed)
    }

    /// Bytes wstap read on both legs so far.
    pub fn bytes_read(&self) -> u64 {
        Leg::BOTH.into_iter().map(|leg| self.bytes(leg, leg.inbound())).sum()
    }

    /// Bytes wstap wrote on both legs so far.
    pub fn bytes_written(&self) -> u64 {
        Leg::BOTH.into_iter().map(|leg| self.bytes(leg, leg.inbound().reverse())).sum()
    }
}
