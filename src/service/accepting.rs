//! Accepting connections on a listening socket: after a failed `accept` (out of file
//! descriptors, say) the loop waits, doubling the pause, so a failing accept never spins.
//! Used by the proxy's listeners, the admin endpoints and the live stream.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// First and longest pause after a failed `accept` (e.g. out of file descriptors).
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts connections; after a failed `accept` (out of file descriptors, say) it
/// waits, doubling the pause up to [`MAX_ACCEPT_BACKOFF`], so a failing accept never spins.
pub(crate) struct Accepting {
    listener: TcpListener,
    backoff: Duration,
}

impl Accepting {
    pub(crate) fn new(listener: TcpListener) -> Accepting {
        Accepting { listener, backoff: MIN_ACCEPT_BACKOFF }
    }

    /// The next connection (cancel-safe).
    pub(crate) async fn next(&mut self) -> (TcpStream, SocketAddr) {
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
