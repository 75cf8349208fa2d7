//! An HTTP/2 stream restated as HTTP/1.1 for its capture (`capture.mode = "all"`): its
//! request and response heads as HTTP/1.1 heads, each body framed by its length or in
//! chunks, said to the stream's tap as they cross, and the connection closed after the
//! response. Wireshark then reads the exchange as it reads any HTTP/1.1 one.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderMap, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::http::response::Parts;
use hyper::{Method, Request, StatusCode};

use crate::capture::Tap;

/// Which way a body goes, as its tap sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// From the client: read.
    Client,
    /// To the client: written.
    Wstap,
}

/// A body said to a tap: which way, and whether in chunks.
#[derive(Clone)]
pub(crate) struct BodyTap {
    tap: Arc<Tap>,
    side: Side,
    chunked: bool,
    /// Its end was said.
    ended: Arc<AtomicBool>,
}

impl BodyTap {
    fn say(&self, bytes: &[u8]) {
        match self.side {
            Side::Client => self.tap.on_read(bytes),
            Side::Wstap => self.tap.on_said(bytes),
        }
    }

    /// A piece of the body (none after its end was said: a request body still coming
    /// after an early answer is not restated past that answer).
    pub(crate) fn data(&self, bytes: &[u8]) {
        if bytes.is_empty() || self.ended.load(Relaxed) {
            return;
        }
        match self.chunked {
            true => {
                self.say(format!("{:x}\r\n", bytes.len()).as_bytes());
                self.say(bytes);
                self.say(b"\r\n");
            }
            false => self.say(bytes),
        }
    }

    /// The body's end (once).
    pub(crate) fn end(&self) {
        if !self.ended.swap(true, Relaxed) && self.chunked {
            self.say(b"0\r\n\r\n");
        }
    }
}

/// A stream's tap, closed (both ways, then the connection) when this is dropped, unless
/// it was let go to what closes it itself (a WebSocket session's tee): whatever way the
/// stream ends (a reset while it was being answered, a refusal), its restated connection
/// ends in the capture.
pub(crate) struct TapGuard(Option<Arc<Tap>>);

impl TapGuard {
    pub(crate) fn new(tap: Option<Arc<Tap>>) -> TapGuard {
        TapGuard(tap)
    }

    /// The tap now closes by other means.
    pub(crate) fn let_go(&mut self) {
        self.0 = None;
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        if let Some(tap) = self.0.take() {
            tap.on_shutdown();
            tap.on_read_end();
            tap.on_close();
        }
    }
}

/// Says `req`'s head to `tap` as an HTTP/1.1 head; returns how its body is to be said
/// (none when it has none, or when the stream is a `tunnel` whose bytes follow the
/// exchange: a WebSocket's).
pub(crate) fn request<B: Body>(tap: &Arc<Tap>, req: &Request<B>, tunnel: bool) -> Option<BodyTap> {
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method(), req.uri()).into_bytes();
    let body = !tunnel && !req.body().is_end_stream();
    let chunked = body && !req.headers().contains_key(CONTENT_LENGTH);
    fields(&mut head, req.headers(), chunked);
    tap.on_read(&head);
    body.then(|| BodyTap { tap: tap.clone(), side: Side::Client, chunked, ended: Arc::default() })
}

/// Says a response head to `tap` as an HTTP/1.1 head; returns how its body is to be
/// said.
pub(crate) fn response(tap: &Arc<Tap>, parts: &Parts, ends: bool, method: &Method) -> BodyTap {
    let status = parts.status;
    let bodiless = method == Method::HEAD
        || status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let mut head = format!("HTTP/1.1 {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or("")).into_bytes();
    let sized = parts.headers.contains_key(CONTENT_LENGTH);
    let chunked = !bodiless && !sized && !ends;
    if !bodiless && !sized && ends {
        head.extend_from_slice(b"content-length: 0\r\n");
    }
    fields(&mut head, &parts.headers, chunked);
    tap.on_said(&head);
    BodyTap { tap: tap.clone(), side: Side::Wstap, chunked, ended: Arc::default() }
}

/// Says the upstream's `101` (its `headers`) to `tap` as an HTTP/1.1 head: what a
/// restated WebSocket's client is answered.
pub(crate) fn switched(tap: &Arc<Tap>, headers: &HeaderMap) {
    let mut head = b"HTTP/1.1 101 Switching Protocols\r\n".to_vec();
    fields(&mut head, headers, false);
    tap.on_said(&head);
}

/// The fields of a head, `Host` first, and its end.
fn fields(head: &mut Vec<u8>, headers: &HeaderMap, chunked: bool) {
    let host = headers.get(hyper::header::HOST).into_iter().map(|v| (&hyper::header::HOST, v));
    let rest = headers.iter().filter(|(name, _)| **name != hyper::header::HOST && **name != TRANSFER_ENCODING);
    for (name, value) in host.chain(rest) {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(b"\r\n");
}

/// A response body said to its tap as it goes to the client; at its end (or when it is
/// dropped), the restated connection closes, both ways. It holds what it is given to
/// hold until then (the connection's permit: a stream streaming its answer is live).
pub(crate) struct Said<B> {
    inner: B,
    tap: Option<BodyTap>,
    guard: TapGuard,
    _holds: Option<Arc<dyn Send + Sync>>,
}

impl<B> Said<B> {
    /// `inner`, said to `tap` (none: passed on as it is), `guard` closing the stream's
    /// tap once it ends, holding `holds` until then.
    pub(crate) fn new(inner: B, tap: Option<BodyTap>, guard: TapGuard, holds: Option<Arc<dyn Send + Sync>>) -> Said<B> {
        Said { inner, tap, guard, _holds: holds }
    }

    fn close(&mut self) {
        self.tap = None;
        drop(std::mem::replace(&mut self.guard, TapGuard::new(None)));
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Said<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(t), Some(data)) = (&self.tap, frame.data_ref()) {
                    t.data(data);
                }
                // (hyper may stop at the last frame, when the body says it has ended.)
                self.inner.is_end_stream()
            }
            Poll::Ready(None) => true,
            _ => false,
        };
        if ended {
            if let Some(t) = &self.tap {
                t.end();
            }
            self.close();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
