//! Keep-alive that holds no buffers: a client connection is served one request at a time,
//! each by a hyper connection of its own (a *turn*), and between requests its socket is
//! *parked* outside hyper, holding nothing but the socket, until the next request's first
//! bytes arrive.
//!
//! hyper grows a connection's read and write buffers with what a request sends and keeps
//! them while the connection idles (tens of KiB after a large POST, per connection).
//! [`Gate`] is the socket as a turn's hyper sees it: it lets hyper read one request, up
//! to its last byte (followed with the codebase's HTTP framer), and holds what comes
//! after it (a pipelined request, a session's first frames) for the next turn or the
//! session. The answer decides what follows ([`Answer`]): a keep-alive answer ends the
//! turn once hyper has written it (hyper is told to close instead of idling, and the
//! gate keeps the socket open), a `101` hands the socket to the session, and anything
//! else (HTTP/1.0, `Connection: close`, framing the framer cannot follow) lets hyper
//! serve the rest of the connection as it would without the gate.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::{Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use wstap_wire::http::{Framer, Part};
use wstap_wire::Dir;

use crate::proxy::headers;

/// Bytes read at once while a turn waits for its answer: enough to see the client close
/// (or pipeline), never more held than this past one read of hyper's.
const PEEK: usize = 1024;

/// Bytes a parked connection reads of its next request (hyper reads the rest).
const FIRST: usize = 64;

/// What the answer to a turn's request says of the connection. Shared by the turn's
/// service, which sets it, and its gate and turn loop, which read it.
#[derive(Debug, Default)]
pub(crate) struct Answer(AtomicU8);

/// No answer yet.
const PENDING: u8 = 0;
/// An HTTP/1.1 answer on a connection kept alive: the turn ends after it.
const PARK: u8 = 1;
/// hyper serves the rest of the connection (an upgrade, or one it does not keep alive).
const OPEN: u8 = 2;

impl Answer {
    /// The service answered a request with `resp`; `keeps`: the request keeps the
    /// connection alive ([`keeps_alive`]). The turn parks after an answer that keeps it
    /// alive too; after any other, hyper has the rest of the connection.
    pub(crate) fn answered<B>(&self, keeps: bool, resp: &Response<B>) {
        let parks = keeps
            && resp.status() != StatusCode::SWITCHING_PROTOCOLS
            && !headers::connection_lists(resp.headers(), "close");
        // The gate may have given hyper the connection already (framing it cannot follow).
        let _ = self.0.compare_exchange(PENDING, if parks { PARK } else { OPEN }, AcqRel, Acquire);
    }

    /// Whether the turn ends after its answer.
    pub(crate) fn parks(&self) -> bool {
        self.0.load(Acquire) == PARK
    }

    fn open(&self) -> bool {
        self.0.load(Acquire) == OPEN
    }

    fn reset(&self) {
        self.0.store(PENDING, Release);
    }

    /// hyper has the rest of the connection, whatever the answer says.
    fn give_up(&self) {
        self.0.store(OPEN, Release);
    }
}

/// Whether `req` keeps its connection alive: HTTP/1.1 without `Connection: close`.
pub(crate) fn keeps_alive<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11 && headers::keeps_alive(req.headers(), req.version())
}

/// Where the gate is in a turn.
#[derive(Debug)]
enum Mode {
    /// Between turns.
    Parked,
    /// hyper reads the turn's request, followed up to its end.
    Request(Box<Framer>),
    /// The request has all been read: hyper waits for its answer, and writes it.
    Answering,
    /// hyper reads everything (after a `101`, an answer not kept alive, or framing the
    /// framer could not follow).
    Open,
}

/// A client socket as each turn's hyper sees it.
#[derive(Debug)]
pub(crate) struct Gate<S> {
    io: S,
    /// Bytes read from the socket and not given to hyper yet, from `start`.
    held: Vec<u8>,
    start: usize,
    /// The client closed its side.
    eof: bool,
    mode: Mode,
    answer: Arc<Answer>,
    max_head: usize,
    /// The turn's response head as hyper writes it, until its end: a `Connection: close`
    /// of hyper's own (a request it must not keep alive, as one with both
    /// `Transfer-Encoding` and `Content-Length`) ends the connection after the turn.
    written: Option<Vec<u8>>,
    /// The connection ends: a shutdown is one.
    closing: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Gate<S> {
    /// `io` parked, its requests' heads of up to `max_head` bytes.
    pub(crate) fn new(io: S, max_head: usize) -> Gate<S> {
        Gate {
            io,
            held: Vec::new(),
            start: 0,
            eof: false,
            mode: Mode::Parked,
            answer: Arc::default(),
            max_head,
            written: None,
            closing: false,
        }
    }

    /// What the next turn's service says of its answer.
    pub(crate) fn answer(&self) -> Arc<Answer> {
        self.answer.clone()
    }

    /// Waits, holding no buffer, until the client sends the next request's first bytes
    /// (true; at once when some are held) or closes (false). Empty lines before a request
    /// (RFC 9112 §2.2) wait here too, dropped as hyper would. The future is a pointer: a
    /// parked connection's task holds no read buffer of it.
    pub(crate) async fn park(&mut self) -> io::Result<bool> {
        self.mode = Mode::Parked;
        std::future::poll_fn(|cx| self.poll_park(cx)).await
    }

    fn poll_park(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            let empty = self.held[self.start..].iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
            self.start += empty;
            if self.has_held() {
                return Poll::Ready(Ok(true));
            }
            (self.held, self.start) = (Vec::new(), 0);
            if self.eof {
                return Poll::Ready(Ok(false));
            }
            let mut first = [0u8; FIRST];
            let mut buf = ReadBuf::new(&mut first);
            std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            self.eof = buf.filled().is_empty();
            self.held.extend_from_slice(buf.filled());
        }
    }

    /// Ends the connection: shuts the socket down (for TLS, a `close_notify` first).
    pub(crate) async fn close(&mut self) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.closing = true;
        self.shutdown().await
    }

    /// Starts a turn: hyper reads the next request.
    pub(crate) fn start_turn(&mut self) {
        self.answer.reset();
        self.written = Some(Vec::new());
        self.mode = Mode::Request(Box::new(Framer::new(self.max_head)));
    }

    /// Ends a turn: `unread` are bytes hyper read and did not use. Whether the turn's
    /// request was read whole, so the connection can park for the next.
    pub(crate) fn end_turn(&mut self, unread: &[u8]) -> bool {
        if !unread.is_empty() {
            let mut held = unread.to_vec();
            held.extend_from_slice(&self.held[self.start..]);
            (self.held, self.start) = (held, 0);
        }
        let whole = matches!(self.mode, Mode::Answering) && unread.is_empty();
        self.mode = Mode::Parked;
        whole
    }

    fn has_held(&self) -> bool {
        self.start < self.held.len()
    }

    /// Up to `buf`'s room of the held bytes, into `buf`.
    fn give_held(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.held.len() - self.start);
        buf.put_slice(&self.held[self.start..self.start + n]);
        self.start += n;
        if self.start == self.held.len() {
            // Nothing kept between turns: the allocation goes with the bytes.
            (self.held, self.start) = (Vec::new(), 0);
        }
    }

    /// Reads for hyper (held bytes first), then hands back what lies past the request's
    /// end, if this read reached it.
    fn read_request(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        if self.has_held() {
            self.give_held(buf);
        } else if !self.eof {
            std::task::ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
            self.eof = buf.filled().len() == before;
        }
        let Mode::Request(framer) = &mut self.mode else { return Poll::Ready(Ok(())) };
        let new = &buf.filled()[before..];
        let mut used = 0;
        let next = loop {
            if used == new.len() {
                break None;
            }
            let advance = framer.advance(Dir::Up, &new[used..]);
            used += advance.used;
            match advance.part {
                Part::Head { ends: true, .. } | Part::Body { ends: true } => break Some(Mode::Answering),
                Part::HeadSoFar | Part::Head { ends: false, .. } | Part::Body { ends: false } => {}
                // hyper answers what the framer cannot follow (a 400 or a 431), or reads
                // it differently: it has the connection from here on.
                Part::HeadTooLong { .. } | Part::Unframed(_) | Part::Switched => break Some(Mode::Open),
            }
        };
        match next {
            Some(Mode::Answering) => {
                let past = new[used..].to_vec();
                buf.set_filled(before + used);
                if !past.is_empty() {
                    let mut held = past;
                    held.extend_from_slice(&self.held[self.start..]);
                    (self.held, self.start) = (held, 0);
                }
                self.mode = Mode::Answering;
            }
            Some(mode) => {
                self.answer.give_up();
                self.mode = mode;
            }
            None => {}
        }
        Poll::Ready(Ok(()))
    }

    /// A read while hyper waits for the answer, or has written it: nothing for hyper
    /// until the next turn, but a client that closes is seen (hyper drops the request's
    /// service then, as it would have).
    fn read_answering(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.answer.open() {
            self.mode = Mode::Open;
            return self.poll_read_open(cx, buf);
        }
        if self.eof && !self.has_held() {
            return Poll::Ready(Ok(()));
        }
        if self.has_held() {
            return Poll::Pending;
        }
        let mut peek = [0u8; PEEK];
        let mut into = ReadBuf::new(&mut peek);
        std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut into))?;
        match into.filled() {
            [] => {
                self.eof = true;
                Poll::Ready(Ok(()))
            }
            some => {
                self.held.extend_from_slice(some);
                Poll::Pending
            }
        }
    }

    fn poll_read_open(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.has_held() {
            self.give_held(buf);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Gate<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.mode {
            Mode::Request(_) => self.read_request(cx, buf),
            Mode::Answering => self.read_answering(cx, buf),
            Mode::Open | Mode::Parked => self.poll_read_open(cx, buf),
        }
    }
}

impl<S> Gate<S> {
    /// `n` more bytes of `bufs` were written: while the response head is not all
    /// written, they are followed.
    fn wrote(&mut self, bufs: &[IoSlice<'_>], n: usize) {
        let Some(head) = &mut self.written else { return };
        let mut left = n;
        for b in bufs {
            let take = left.min(b.len());
            head.extend_from_slice(&b[..take]);
            left -= take;
            if left == 0 {
                break;
            }
        }
        loop {
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
                if head.len() > RESPONSE_HEAD {
                    // Not a head hyper writes: no keep-alive is assumed.
                    self.answer.give_up();
                    self.written = None;
                }
                return;
            };
            // An interim answer (`100 Continue`) comes before the one that counts.
            if head.starts_with(b"HTTP/1.1 1") && !head.starts_with(b"HTTP/1.1 101") {
                head.drain(..end);
                continue;
            }
            if closes_in(&head[..end]) {
                self.answer.give_up();
            }
            self.written = None;
            return;
        }
    }
}

/// The longest response head followed.
const RESPONSE_HEAD: usize = 64 * 1024;

/// Whether a response head's `Connection` field lists `close`.
fn closes_in(head: &[u8]) -> bool {
    head.split(|b| *b == b'\n').skip(1).any(|line| {
        let Some(colon) = line.iter().position(|b| *b == b':') else { return false };
        line[..colon].eq_ignore_ascii_case(b"connection")
            && line[colon + 1..].split(|b| *b == b',').any(|o| o.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gate<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.wrote(&[IoSlice::new(buf)], n);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            self.wrote(bufs, n);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// hyper ends a turn that parks as it ends a connection: the socket stays open (its
    /// writes flushed) for the next turn.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.answer.parks() && !self.eof && !self.closing {
            true => Pin::new(&mut self.io).poll_flush(cx),
            false => Pin::new(&mut self.io).poll_shutdown(cx),
        }
    }
}

/// Polls a turn's hyper connection: once the answer parks the connection, hyper is told
/// (once, `told`) to close after the exchange rather than idle, and polled again.
pub(crate) fn poll_turn<I, S, B>(
    turn: &mut hyper::server::conn::http1::UpgradeableConnection<I, S>,
    answer: &Answer,
    told: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<hyper::Result<()>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B> + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use std::future::Future;
    loop {
        let polled = Pin::new(&mut *turn).poll(cx);
        if polled.is_ready() || *told || !answer.parks() {
            return polled;
        }
        *told = true;
        Pin::new(&mut *turn).graceful_shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncWriteExt, DuplexStream};

    /// A gate over one end of a pipe, and the client's end.
    fn gate() -> (Gate<DuplexStream>, DuplexStream) {
        let (client, server) = tokio::io::duplex(1 << 20);
        (Gate::new(server, 8192), client)
    }

    /// What hyper gets from `gate` until it would wait (or the client closed); out of
    /// tokio's budget, which would make the pipe wait too.
    async fn reads(gate: &mut Gate<DuplexStream>) -> Vec<u8> {
        tokio::task::unconstrained(async { reads_now(gate) }).await
    }

    fn reads_now(gate: &mut Gate<DuplexStream>) -> Vec<u8> {
        let mut got = Vec::new();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        loop {
            let mut room = [0u8; 700];
            let mut buf = ReadBuf::new(&mut room);
            match Pin::new(&mut *gate).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => got.extend_from_slice(buf.filled()),
                _ => return got,
            }
        }
    }

    fn ok() -> Response<()> {
        Response::new(())
    }

    /// A turn over `gate`: parks for the next request and reads it.
    async fn turn(gate: &mut Gate<DuplexStream>) -> Vec<u8> {
        assert!(gate.park().await.unwrap(), "a request came");
        gate.start_turn();
        reads(gate).await
    }

    #[tokio::test]
    async fn each_turn_reads_one_request_and_the_next_waits_for_its_own() {
        let (mut gate, mut client) = gate();
        let post = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".as_slice();
        let get = b"\r\nget /b HTTP/1.1\nHost: h\n\n".as_slice();
        client.write_all(&[post, get].concat()).await.unwrap();
        assert_eq!(turn(&mut gate).await, post);
        gate.answer().answered(true, &ok());
        assert!(gate.answer().parks());
        assert!(gate.end_turn(&[]), "the request was read whole");
        // The empty line before it waits parked, dropped as hyper drops it.
        assert_eq!(turn(&mut gate).await, &get[2..]);
    }

    #[tokio::test]
    async fn a_request_whose_end_comes_byte_by_byte_is_followed_to_it() {
        let (mut gate, mut client) = gate();
        let post = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n";
        client.write_all(&post[..1]).await.unwrap();
        let mut got = turn(&mut gate).await;
        for b in &post[1..] {
            client.write_all(&[*b]).await.unwrap();
            got.extend(reads(&mut gate).await);
        }
        client.write_all(b"GET /next HTTP/1.1\r\n\r\n").await.unwrap();
        got.extend(reads(&mut gate).await);
        assert_eq!(got, post, "nothing past the request's end");
    }

    #[tokio::test]
    async fn a_parked_connection_holds_no_buffer_after_a_large_post() {
        let (mut gate, mut client) = gate();
        let body = vec![b'x'; 200_000];
        let head = format!("POST /up HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
        client.write_all(head.as_bytes()).await.unwrap();
        client.write_all(&body).await.unwrap();
        assert_eq!(turn(&mut gate).await.len(), head.len() + body.len());
        gate.answer().answered(true, &ok());
        assert!(gate.end_turn(&[]));
        assert_eq!(gate.held.capacity(), 0, "no bytes kept");
        assert!(matches!(gate.mode, Mode::Parked), "no framer kept");
    }

    #[tokio::test]
    async fn after_a_switch_the_session_reads_the_frames_sent_before_the_answer() {
        let (mut gate, mut client) = gate();
        let upgrade = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".as_slice();
        let frame = b"\x81\x85abcd\x09\x07\x0f\x08\x0e".as_slice();
        client.write_all(&[upgrade, frame].concat()).await.unwrap();
        assert_eq!(turn(&mut gate).await, upgrade);
        let mut switching = Response::new(());
        *switching.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        gate.answer().answered(true, &switching);
        assert!(!gate.answer().parks());
        assert_eq!(reads(&mut gate).await, frame);
    }

    #[tokio::test]
    async fn framing_the_framer_cannot_follow_leaves_the_connection_to_hyper() {
        let (mut gate, mut client) = gate();
        let bad = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET /b HTTP/1.1\r\n\r\n";
        client.write_all(bad).await.unwrap();
        assert_eq!(turn(&mut gate).await, bad, "all of it, as hyper would read it");
        gate.answer().answered(true, &ok());
        assert!(!gate.answer().parks(), "hyper keeps the connection");
        assert!(!gate.end_turn(&[]));
    }

    #[tokio::test]
    async fn answers_that_do_not_keep_the_connection_alive_never_park() {
        let (gate, _client) = gate();
        let mut close = ok();
        close.headers_mut().insert(hyper::header::CONNECTION, "Close".parse().unwrap());
        let http10 = Request::builder().version(Version::HTTP_10).body(()).unwrap();
        let asks_close = Request::builder().header("connection", "keep-alive, close").body(()).unwrap();
        assert!(keeps_alive(&Request::new(())));
        assert!(!keeps_alive(&http10) && !keeps_alive(&asks_close));
        gate.answer().answered(true, &close);
        assert!(!gate.answer().parks());
    }

    #[tokio::test]
    async fn a_client_that_closes_while_waiting_for_its_answer_is_seen() {
        let (mut gate, mut client) = gate();
        client.write_all(b"GET /slow HTTP/1.1\r\n\r\n").await.unwrap();
        turn(&mut gate).await;
        drop(client);
        let mut room = [0u8; 16];
        let mut buf = ReadBuf::new(&mut room);
        std::future::poll_fn(|cx| Pin::new(&mut gate).poll_read(cx, &mut buf)).await.unwrap();
        assert!(buf.filled().is_empty(), "end of stream");
    }

    #[tokio::test]
    async fn a_turn_that_parks_ends_without_closing_the_socket() {
        use tokio::io::AsyncReadExt;
        let (mut gate, mut client) = gate();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        turn(&mut gate).await;
        gate.answer().answered(true, &ok());
        gate.write_all(b"answer").await.unwrap();
        gate.shutdown().await.unwrap();
        gate.write_all(b"+next").await.unwrap();
        let mut got = [0u8; 11];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"answer+next");
    }

    #[tokio::test]
    async fn a_connection_close_of_hypers_own_in_the_answer_ends_the_connection() {
        let (mut gate, mut client) = gate();
        client.write_all(b"POST /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await.unwrap();
        turn(&mut gate).await;
        gate.answer().answered(true, &ok());
        assert!(gate.answer().parks());
        let head = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\nConnection: keep-alive, Close\r\n\r\n";
        // Written in two pieces, as a socket may take it.
        gate.write_all(&head[..30]).await.unwrap();
        assert!(gate.answer().parks(), "an interim answer says nothing");
        gate.write_all(&head[30..]).await.unwrap();
        assert!(!gate.answer().parks());
    }

    #[tokio::test]
    async fn empty_lines_between_requests_wait_parked() {
        let (mut gate, mut client) = gate();
        client.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        turn(&mut gate).await;
        gate.answer().answered(true, &ok());
        assert!(gate.end_turn(&[]));
        client.write_all(b"\r\n\n\r\n").await.unwrap();
        {
            let parked = gate.park();
            tokio::pin!(parked);
            let waker = std::task::Waker::noop();
            let polled = std::future::Future::poll(parked.as_mut(), &mut Context::from_waker(waker));
            assert!(polled.is_pending(), "empty lines are no request");
        }
        client.write_all(b"GET /b HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(turn(&mut gate).await, b"GET /b HTTP/1.1\r\n\r\n");
    }

    /// A client stream of requests in the forms hyper takes (lowercase methods, bare LF
    /// line ends, empty lines before a request, absolute form), with bodies of every
    /// framing and now and then raw bytes or an Upgrade, and where it is cut into writes.
    fn client_stream(rng: &mut fastrand::Rng) -> (Vec<u8>, Vec<usize>) {
        let (mut out, mut cuts) = (Vec::new(), Vec::new());
        for n in 0..rng.usize(1..6) {
            let eol: &[u8] = if rng.u8(..) < 40 { b"\n" } else { b"\r\n" };
            if rng.u8(..) < 30 {
                out.extend_from_slice(eol);
            }
            let method = ["GET", "get", "POST", "PUT", "HEAD"][rng.usize(..5)];
            let absolute = if rng.bool() { "http://h" } else { "" };
            let path = if rng.u8(..) < 25 { "/ws" } else { "/p" };
            out.extend_from_slice(format!("{method} {absolute}{path}/{n} HTTP/1.1").as_bytes());
            out.extend_from_slice(eol);
            let mut field = |f: String| {
                out.extend_from_slice(f.as_bytes());
                out.extend_from_slice(eol);
            };
            field("Host: h".into());
            if path == "/ws" {
                field("Upgrade: websocket".into());
                field("Connection: Upgrade".into());
            }
            let body: Vec<u8> = (0..rng.usize(..40)).map(|_| rng.alphanumeric() as u8).collect();
            let framing = rng.usize(..3);
            match framing {
                1 => field(format!("Content-Length: {}", body.len())),
                2 => field("Transfer-Encoding: chunked".into()),
                _ => {}
            }
            out.extend_from_slice(eol);
            match framing {
                1 => out.extend_from_slice(&body),
                2 => {
                    for piece in body.chunks(rng.usize(1..9)) {
                        let ext = if rng.u8(..) < 40 { ";x=y" } else { "" };
                        out.extend_from_slice(format!("{:x}{ext}\r\n", piece.len()).as_bytes());
                        out.extend_from_slice(piece);
                        out.extend_from_slice(b"\r\n");
                    }
                    let trailer = if rng.u8(..) < 60 { "X-T: 1\r\n" } else { "" };
                    out.extend_from_slice(format!("0\r\n{trailer}\r\n").as_bytes());
                }
                _ => {}
            }
            if rng.u8(..) < 15 {
                out.extend((0..rng.usize(1..6)).map(|_| rng.u8(..)));
            }
        }
        for _ in 0..rng.usize(..6) {
            cuts.push(rng.usize(..=out.len()));
        }
        cuts.sort_unstable();
        (out, cuts)
    }

    /// Writes `stream` in pieces at `cuts`, then reads what comes back until the end.
    async fn client(end: DuplexStream, stream: Vec<u8>, cuts: Vec<usize>) {
        use tokio::io::AsyncReadExt;
        let (mut rd, mut wr) = tokio::io::split(end);
        let reading = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = rd.read_to_end(&mut sink).await;
        });
        let mut at = 0;
        for cut in cuts.into_iter().chain([stream.len()]) {
            if wr.write_all(&stream[at..cut]).await.is_err() {
                break;
            }
            at = cut;
            tokio::task::yield_now().await;
        }
        let _ = wr.shutdown().await;
        let _ = reading.await;
    }

    type Requests = Arc<std::sync::Mutex<Vec<String>>>;

    /// A service that notes each request (method, target, body) and answers `200`, or
    /// `101` to an Upgrade to `/ws`; told to `answer` when given.
    fn noting(
        seen: Requests,
        answer: Option<Arc<Answer>>,
    ) -> impl hyper::service::Service<
        Request<hyper::body::Incoming>,
        Response = Response<http_body_util::Full<bytes::Bytes>>,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone
           + Unpin {
        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let (seen, answer) = (seen.clone(), answer.clone());
            async move {
                use http_body_util::BodyExt;
                let keeps = keeps_alive(&req);
                let upgrade = req.headers().contains_key("upgrade") && req.uri().path().starts_with("/ws");
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                seen.lock().unwrap().push(format!("{} {} {:?}", parts.method, parts.uri, body));
                let mut resp = Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")));
                if upgrade {
                    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    resp.headers_mut().insert("upgrade", "websocket".parse().unwrap());
                    resp.headers_mut().insert("connection", "upgrade".parse().unwrap());
                }
                if let Some(answer) = answer {
                    answer.answered(keeps, &resp);
                }
                Ok(resp)
            }
        })
    }

    /// The requests hyper hands over serving `stream` as one connection, as it would.
    async fn served_whole(stream: Vec<u8>, cuts: Vec<usize>) -> Vec<String> {
        let (end, server) = tokio::io::duplex(1 << 16);
        let seen = Requests::default();
        let serving = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(server), noting(seen.clone(), None))
            .with_upgrades();
        let (_, _) = tokio::join!(serving, client(end, stream, cuts));
        let seen = seen.lock().unwrap().clone();
        seen
    }

    /// The requests hyper hands over serving `stream` a turn at a time over a gate, as
    /// the proxy does (`proxy::conn::serve`).
    async fn served_in_turns(stream: Vec<u8>, cuts: Vec<usize>) -> Vec<String> {
        let (end, server) = tokio::io::duplex(1 << 16);
        let seen = Requests::default();
        let turns = async {
            let mut gate = Gate::new(server, 8192);
            let mut first = true;
            loop {
                if !std::mem::take(&mut first) && !matches!(gate.park().await, Ok(true)) {
                    break;
                }
                gate.start_turn();
                let answer = gate.answer();
                let service = noting(seen.clone(), Some(answer.clone()));
                let mut turn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(gate), service)
                    .with_upgrades();
                let mut told = false;
                let result = std::future::poll_fn(|cx| poll_turn(&mut turn, &answer, &mut told, cx)).await;
                let Some(parts) = turn.into_parts() else { break };
                gate = parts.io.into_inner();
                if !(gate.end_turn(&parts.read_buf) && answer.parks() && result.is_ok()) {
                    break;
                }
            }
        };
        tokio::join!(turns, client(end, stream, cuts));
        let seen = seen.lock().unwrap().clone();
        seen
    }

    /// Served a turn at a time, a connection's requests are the ones hyper reads serving
    /// it whole: none lost, split, merged or added, in every form and cut.
    #[tokio::test]
    async fn turns_hand_hyper_the_requests_it_reads_on_its_own() {
        for seed in 0..1000 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let (stream, cuts) = client_stream(&mut rng);
            let whole = served_whole(stream.clone(), cuts.clone()).await;
            let turns = served_in_turns(stream.clone(), cuts).await;
            assert_eq!(turns, whole, "seed {seed}: {:?}", String::from_utf8_lossy(&stream));
        }
    }
}
