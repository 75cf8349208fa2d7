//! The state of one accepted client connection, shared by its requests and its
//! WebSocket session: who it is, what it shares with every connection, its capture, the
//! upstream connection kept for its next request, and the permits it holds while it
//! lives.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use hyper::upgrade::OnUpgrade;

use crate::capture::ConnId;
use crate::proxy::admission::Permit;
use crate::proxy::context::ProxyContext;
use crate::proxy::recording::LegTap;
use crate::proxy::shutdown::Shutdown;
use crate::proxy::upstream::UpstreamConn;

/// A client connection as accepted.
pub(crate) struct Accepted {
    pub(crate) id: ConnId,
    pub(crate) client: SocketAddr,
    pub(crate) local: SocketAddr,
    /// Its capture so far: a tap under its TLS with its keys (`capture.tls =
    /// "encrypted"`), and what its TLS agreed.
    pub(crate) capture: LegTap,
    pub(crate) shutdown: Shutdown,
    pub(crate) permit: Permit,
}

/// State of one accepted client connection, shared by its requests and its session.
pub struct ClientConn {
    pub(crate) id: ConnId,
    pub(crate) client: SocketAddr,
    pub(crate) ctx: Arc<ProxyContext>,
    pub(crate) shutdown: Shutdown,
    /// The client leg's capture.
    pub(crate) capture: LegTap,
    /// The upstream connection of the previous request, kept for reuse.
    pub(crate) upstream: Mutex<Option<UpstreamConn>>,
    /// Held for as long as the connection or its WebSocket session lives (it also counts
    /// the connection as open); an HTTP/2 connection's streams share it.
    _permit: Arc<Permit>,
    /// Switched to WebSocket: the session logs the end, not the connection.
    pub(crate) upgraded: AtomicBool,
    /// The client's side of the upgrade hyper prepared for the turn's request (it does for
    /// any request with an `Upgrade` field, and a CONNECT): the session takes it after a
    /// `101`; after any other answer hyper hands the socket to it at the end of the turn
    /// all the same, and the next turn takes it back.
    pub(crate) upgrade: Mutex<Option<ClientSide>>,
}

/// A byte stream both ways.
pub(crate) trait Duplex: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Duplex for T {}

/// A connection's client side as a session's relay takes it.
pub(crate) type ClientIo = Box<dyn Duplex>;

/// The client's side of a session, once it has switched protocols.
pub(crate) enum ClientSide {
    /// hyper's upgrade of an HTTP/1.1 connection.
    Upgrade(OnUpgrade),
    /// An HTTP/2 stream, handed over once its `200` is sent.
    Stream(tokio::sync::oneshot::Receiver<ClientIo>),
}

impl ClientSide {
    /// The client's side, once switched.
    pub(crate) async fn ready(self) -> std::io::Result<ClientIo> {
        match self {
            ClientSide::Upgrade(u) => match u.await {
                Ok(up) => Ok(Box::new(hyper_util::rt::TokioIo::new(up))),
                Err(e) => Err(std::io::Error::other(e)),
            },
            ClientSide::Stream(rx) => {
                rx.await.map_err(|_| std::io::Error::other("the stream ended before the session began"))
            }
        }
    }

    /// hyper's upgrade, if it is one.
    pub(crate) fn into_upgrade(self) -> Option<OnUpgrade> {
        match self {
            ClientSide::Upgrade(u) => Some(u),
            ClientSide::Stream(_) => None,
        }
    }
}

impl ClientConn {
    /// A connection accepted as `id` from `client`, holding its `permit` while it lives.
    pub(crate) fn new(
        ctx: Arc<ProxyContext>,
        id: ConnId,
        client: SocketAddr,
        shutdown: Shutdown,
        capture: LegTap,
        permit: Arc<Permit>,
    ) -> ClientConn {
        ClientConn {
            id,
            client,
            shutdown,
            capture,
            upstream: Mutex::new(None),
            _permit: permit,
            upgraded: AtomicBool::new(false),
            upgrade: Mutex::new(None),
            ctx,
        }
    }
}
