//! A request body that must keep coming: at most `limits.body_timeout` between two of its
//! pieces (nginx's `client_body_timeout`). A client that sends a head with a body and then
//! trickles or stalls would otherwise hold its connection, and an upstream one, for as
//! long as the upstream waits. On expiry the body ends with an error, the upstream request
//! is abandoned, and the client gets `408`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::proxy::as_http1::BodyTap;

/// What a request's body may be: hyper's (HTTP/1.1), or an HTTP/2 stream's.
pub trait RequestBody:
    Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + Unpin + 'static
{
}

impl<B> RequestBody for B where
    B: Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + Unpin + 'static
{
}

/// A request body, with a deadline between frames.
pub struct Paced<B = Incoming> {
    inner: B,
    limit: Option<Duration>,
    deadline: Pin<Box<Sleep>>,
    /// Set when the deadline passed: the request failed because of the client.
    expired: Arc<AtomicBool>,
    /// The body has been asked for (the clock runs from then).
    started: bool,
    /// Where the body is said as it goes, restated as HTTP/1.1 (an HTTP/2 stream's).
    said: Option<BodyTap>,
}

/// Why a paced body ended early.
#[derive(Debug)]
pub struct Stalled(pub Duration);

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client sent no body bytes for {}", humantime::format_duration(self.0))
    }
}

impl std::error::Error for Stalled {}

impl<B> Paced<B> {
    /// `inner`, allowed `limit` between frames (none: no limit); `expired` is set on expiry.
    pub fn new(inner: B, limit: Option<Duration>, expired: Arc<AtomicBool>) -> Paced<B> {
        let deadline = Box::pin(tokio::time::sleep(limit.unwrap_or(Duration::ZERO)));
        Paced { inner, limit, deadline, expired, started: false, said: None }
    }

    /// The body, said to `said` as it goes.
    pub(crate) fn saying(self, said: Option<BodyTap>) -> Paced<B> {
        Paced { said, ..self }
    }
}

impl<B: RequestBody> Body for Paced<B> {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let (false, Some(limit)) = (std::mem::replace(&mut this.started, true), this.limit) {
            this.deadline.as_mut().reset(Instant::now() + limit);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(limit) = this.limit {
                    this.deadline.as_mut().reset(Instant::now() + limit);
                }
                // (hyper may stop at the last frame, when the body says it has ended.)
                let ended = frame.is_none() || this.inner.is_end_stream();
                if let Some(said) = &this.said {
                    if let Some(Ok(f)) = &frame {
                        f.data_ref().into_iter().for_each(|d| said.data(d));
                    }
                }
                if let Some(said) = this.said.take_if(|_| ended) {
                    said.end();
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.limit {
                Some(limit) if this.deadline.as_mut().poll(cx).is_ready() => {
                    this.expired.store(true, Relaxed);
                    Poll::Ready(Some(Err(Box::new(Stalled(limit)))))
                }
                _ => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
