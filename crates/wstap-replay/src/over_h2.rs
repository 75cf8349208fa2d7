//! WebSocket over HTTP/2 (RFC 8441) for the player (`--http2`): the client's extended
//! CONNECT (`:protocol = websocket`), the server's acceptance of one, and the stream as
//! the byte pipe the WebSocket's frames then go over, flow control kept.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::http::{HeaderMap, Method, Request, Response, StatusCode};

/// An HTTP/2 stream as a byte pipe. Dropped, it ends its side and waits a moment for
/// the peer to end its own (a stream dropped open is reset, and what it still had to
/// send, a close's answer, goes with it).
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: Option<RecvStream>,
    /// Received, not yet read.
    buf: Bytes,
}

/// How long a dropped stream waits for its peer to end it.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

impl H2Stream {
    /// The stream whose halves these are.
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> H2Stream {
        H2Stream { send, recv: Some(recv), buf: Bytes::new() }
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        let _ = self.send.send_data(Bytes::new(), true);
        let (Some(mut recv), Ok(runtime)) = (self.recv.take(), tokio::runtime::Handle::try_current()) else { return };
        runtime.spawn(async move {
            let _ = tokio::time::timeout(LINGER, async {
                while let Some(Ok(data)) = recv.data().await {
                    let _ = recv.flow_control().release_capacity(data.len());
                }
            })
            .await;
        });
    }
}

fn broken(e: h2::Error) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, e)
}

impl AsyncRead for H2Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        while self.buf.is_empty() {
            let Some(recv) = self.recv.as_mut() else { return Poll::Ready(Ok(())) };
            match ready!(recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    self.buf = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(broken(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = out.remaining().min(self.buf.len());
        out.put_slice(&self.buf[..n]);
        self.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(data.len());
        let n = loop {
            match ready!(self.send.poll_capacity(cx)) {
                // (None yet: the peer's window is shut; poll_capacity waits again.)
                Some(Ok(0)) => continue,
                Some(Ok(n)) => break n.min(data.len()),
                Some(Err(e)) => return Poll::Ready(Err(broken(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        };
        self.send.send_data(Bytes::copy_from_slice(&data[..n]), false).map_err(broken)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = self.send.send_data(Bytes::new(), true);
        Poll::Ready(Ok(()))
    }
}

/// The extended CONNECT of `req` (its URI, and its fields but the HTTP/1.1 upgrade
/// ones) over a new HTTP/2 connection on `io`; the stream and the answer's fields.
pub async fn connect<T>(
    io: T,
    req: Request<()>,
) -> Result<(H2Stream, HeaderMap), Box<dyn std::error::Error + Send + Sync>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await?;
    let (parts, ()) = req.into_parts();
    // `:scheme` is http or https (RFC 8441 §4), for ws:// and wss:// alike.
    let scheme = if parts.uri.scheme_str() == Some("wss") { "https" } else { "http" };
    let authority = parts.uri.authority().map_or("", |a| a.as_str());
    let uri = format!("{scheme}://{authority}{}", parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    let mut connect =
        Request::builder().method(Method::CONNECT).uri(uri).extension(h2::ext::Protocol::from("websocket"));
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if !["host", "connection", "upgrade", "sec-websocket-key"].contains(&n) {
            connect = connect.header(name, value);
        }
    }
    if !parts.headers.contains_key("sec-websocket-version") {
        connect = connect.header("sec-websocket-version", "13");
    }
    let (response, stream) = send.send_request(connect.body(())?, false)?;
    let response = response.await?;
    if !response.status().is_success() {
        return Err(format!("the server answered the extended CONNECT with {}", response.status()).into());
    }
    let (parts, recv) = response.into_parts();
    Ok((H2Stream::new(stream, recv), parts.headers))
}

/// Accepts an HTTP/2 connection on `io` and its first stream, which must be an extended
/// CONNECT for a WebSocket; answers it `200` with `protocol` as its subprotocol. The
/// stream, and the target the client asked for.
pub async fn accept<T>(
    io: T,
    protocol: Option<&str>,
) -> Result<(H2Stream, String), Box<dyn std::error::Error + Send + Sync>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = h2::server::Builder::new().enable_connect_protocol().handshake::<_, Bytes>(io).await?;
    let (req, mut respond) = conn.accept().await.ok_or("the client left before its first request")??;
    // The connection goes on being driven (and further streams refused) apart.
    tokio::spawn(async move {
        while let Some(Ok((_, mut other))) = conn.accept().await {
            other.send_reset(h2::Reason::REFUSED_STREAM);
        }
    });
    let websocket = req.method() == Method::CONNECT
        && req.extensions().get::<h2::ext::Protocol>().is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    if !websocket {
        let refusal = Response::builder().status(StatusCode::BAD_REQUEST).body(())?;
        respond.send_response(refusal, true)?;
        return Err("the client's first stream is not an extended CONNECT for a WebSocket".into());
    }
    let asked = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let mut answer = Response::builder().status(StatusCode::OK);
    if let Some(p) = protocol {
        answer = answer.header("sec-websocket-protocol", p);
    }
    let send = respond.send_response(answer.body(())?, false)?;
    Ok((H2Stream::new(send, req.into_body()), asked))
}
