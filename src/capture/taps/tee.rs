//! The capture point: [`Tee`] wraps a connection's raw stream (under hyper, on both
//! legs) and reports to its [`Tap`] every byte read, every byte actually written, each
//! end of stream and each reset, in the order they happened. It never blocks the stream.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::chunk::Piece;
use super::tap::Tap;

/// A stream whose traffic is reported to a [`Tap`] (or, with no tap, a plain stream).
pub struct Tee<S> {
    io: S,
    tap: Option<Arc<Tap>>,
}

impl<S> Tee<S> {
    /// Wraps `io`; with no tap it is a plain stream.
    pub fn new(io: S, tap: Option<Arc<Tap>>) -> Tee<S> {
        Tee { io, tap }
    }

    /// The tap this stream reports to.
    pub fn tap(&self) -> Option<&Arc<Tap>> {
        self.tap.as_ref()
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// After a write: reports what was written (the first `n` bytes of what `written`
    /// makes), or the error, to the tap.
    fn wrote<'a>(&self, result: &Poll<io::Result<usize>>, written: impl FnOnce(usize) -> Piece<'a>) {
        let Some(tap) = &self.tap else { return };
        match result {
            Poll::Ready(Ok(n)) if *n > 0 => tap.on_written(written(*n)),
            Poll::Ready(Err(e)) => tap.on_error(e),
            _ => {}
        }
    }
}

impl<S> Drop for Tee<S> {
    fn drop(&mut self) {
        if let Some(tap) = &self.tap {
            tap.on_close();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tee<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(tap) = &this.tap {
            match &result {
                Poll::Ready(Ok(())) => {
                    let got = &buf.filled()[before..];
                    if !got.is_empty() {
                        tap.on_read(got);
                    } else if had_room {
                        tap.on_read_end();
                    }
                }
                // TLS closed without close_notify: the stream ended (the splice agrees).
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => tap.on_read_cut(),
                Poll::Ready(Err(e)) => tap.on_error(e),
                Poll::Pending => {}
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tee<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(&result, |n| Piece::Slice(&buf[..n]));
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        // Exactly the bytes written, gathered into one chunk, as one write.
        this.wrote(&result, |n| Piece::Vectored(bufs, n));
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_shutdown(cx);
        if let (Some(tap), Poll::Ready(Ok(()))) = (&this.tap, &result) {
            tap.on_shutdown();
        }
        result
    }
}
