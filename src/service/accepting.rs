//! Accepting connections on a listening socket: after a failed `accept` (out of file
//! descriptors, say) the loop waits, doubling the pause, so a failing accept never spins.
//! Used by the proxy's listeners, the admin endpoints and the live stream (TCP or unix).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tracing::warn;

/// A listening socket: TCP or unix.
pub(crate) trait Listener {
    /// What `accept` gives: the connection and its peer's address.
    type Conn;
    /// The next connection (cancel-safe).
    async fn accept(&self) -> std::io::Result<Self::Conn>;
}

impl Listener for TcpListener {
    type Conn = (TcpStream, SocketAddr);
    async fn accept(&self) -> std::io::Result<Self::Conn> {
        TcpListener::accept(self).await
    }
}

impl Listener for UnixListener {
    type Conn = (UnixStream, tokio::net::unix::SocketAddr);
    async fn accept(&self) -> std::io::Result<Self::Conn> {
        UnixListener::accept(self).await
    }
}

/// First and longest pause after a failed `accept` (e.g. out of file descriptors).
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts connections; after a failed `accept` (out of file descriptors, say) it
/// waits, doubling the pause up to [`MAX_ACCEPT_BACKOFF`], so a failing accept never spins.
pub(crate) struct Accepting<L = TcpListener> {
    listener: L,
    backoff: Duration,
}

impl<L: Listener> Accepting<L> {
    pub(crate) fn new(listener: L) -> Accepting<L> {
        Accepting { listener, backoff: MIN_ACCEPT_BACKOFF }
    }

    /// The next connection (cancel-safe).
    pub(crate) async fn next(&mut self) -> L::Conn {
        loop {
            match self.listener.accept().await {
                Ok(pair) => {
                    self.backoff = MIN_ACCEPT_BACKOFF;
                    return pair;
                }
                Err(e) => {
                    warn!(error = %e, backoff = ?self.backoff, "accept failed");
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            }
        }
    }
}
