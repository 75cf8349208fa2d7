//! Byte counting beside the stream (as pingora keeps its instrumentation): [`Metered`]
//! wraps a leg's stream and adds what is read and written to the daemon's [`Traffic`]
//! and, when asked, to the connection's own counts. It does nothing else.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::traffic::{ByteCounts, Traffic};
use wstap_wire::dir::{Dir, Leg};

/// A stream on leg `leg` whose bytes are counted.
pub struct Metered<S> {
    io: S,
    leg: Leg,
    traffic: Arc<Traffic>,
    own: Option<ByteCounts>,
}

impl<S> Metered<S> {
    /// Counts `io`'s bytes as leg `leg` of `traffic`, and into `own` when given.
    pub fn new(io: S, leg: Leg, traffic: Arc<Traffic>, own: Option<ByteCounts>) -> Metered<S> {
        Metered { io, leg, traffic, own }
    }

    fn count(&self, dir: Dir, n: usize) {
        self.traffic.bytes[self.leg][dir].fetch_add(n as u64, Relaxed);
        if let Some(own) = &self.own {
            own[dir].fetch_add(n as u64, Relaxed);
        }
    }

    fn wrote(&self, result: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = result {
            self.count(self.leg.inbound().reverse(), *n);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            self.count(self.leg.inbound(), buf.filled().len() - before);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
