//! Just enough WebSocket for the load generator and the echo backend: the client
//! handshake, masked client frames, reading one frame (with `wstap_wire`'s frame
//! codec), and a server that echoes (and answers plain requests, for the keep-alive
//! scenario). Raw on
//! tokio's TcpStream, so the load generator and the backend cost as little CPU as
//! possible: on two shared cores, every cycle they spend is one the proxy does not get.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use wstap_wire::wsframe::{apply_mask, encode_frame, first_byte, FrameHeader, Opcode};

/// A client frame: FIN, `opcode`, masked with `mask`.
pub fn client_frame(opcode: Opcode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    encode_frame(first_byte(true, false, opcode), payload, Some(mask))
}

/// Reads one frame into `payload` (unmasked); returns its opcode.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, payload: &mut Vec<u8>) -> io::Result<Opcode> {
    let mut h = [0u8; 14];
    r.read_exact(&mut h[..2]).await?;
    let size = FrameHeader::size(h[1]);
    r.read_exact(&mut h[2..size]).await?;
    let header = FrameHeader::parse(&h[..size]).ok_or_else(|| io::Error::other("bad frame header"))?;
    payload.resize(header.len as usize, 0);
    r.read_exact(payload).await?;
    if let Some(key) = header.mask {
        apply_mask(payload, key, 0);
    }
    Ok(header.opcode)
}

/// Connects and upgrades; the stream is then positioned at the first frame.
pub async fn connect(addr: &str, path: &str) -> io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut s = BufReader::with_capacity(64 * 1024, s);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.get_mut().write_all(req.as_bytes()).await?;
    let mut line = String::new();
    s.read_line(&mut line).await?;
    if !line.starts_with("HTTP/1.1 101") {
        return Err(io::Error::other(format!("{addr}: upgrade refused: {line:?}")));
    }
    loop {
        line.clear();
        if s.read_line(&mut line).await? <= 2 {
            return Ok(s);
        }
    }
}

/// What the echo backend reads of a request head.
#[derive(Default)]
struct Head {
    target: String,
    /// `Sec-WebSocket-Key`: an Upgrade.
    key: Option<String>,
    content_length: usize,
}

/// Reads a request head (an empty target at the end of the stream).
async fn read_head(s: &mut BufReader<TcpStream>, line: &mut String) -> io::Result<Head> {
    let mut head = Head::default();
    loop {
        line.clear();
        if s.read_line(line).await? == 0 {
            return Ok(head);
        }
        if head.target.is_empty() {
            head.target = line.split(' ').nth(1).unwrap_or("/").to_owned();
        } else if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("sec-websocket-key") {
                head.key = Some(value.trim().to_string());
            } else if name.eq_ignore_ascii_case("content-length") {
                head.content_length = value.trim().parse().unwrap_or(0);
            }
        }
        if line == "\r\n" {
            return Ok(head);
        }
    }
}

/// Answers a plain request: its body read, a body of N bytes for `/bytes/N` (else none),
/// kept alive, or closed after it under `/close/`. Whether the connection goes on.
async fn answer_plain(s: &mut BufReader<TcpStream>, head: &Head) -> io::Result<bool> {
    if head.target.is_empty() {
        return Ok(false);
    }
    let mut body = vec![0u8; head.content_length];
    s.read_exact(&mut body).await?;
    let closes = head.target.starts_with("/close/");
    let size: usize = head.target.rsplit('/').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let connection = if closes { "Connection: close\r\n" } else { "" };
    let mut out = format!("HTTP/1.1 200 OK\r\n{connection}Content-Length: {size}\r\n\r\n").into_bytes();
    out.resize(out.len() + size, b'k');
    s.get_mut().write_all(&out).await?;
    Ok(!closes)
}

/// The echo backend: answers the handshake, echoes data frames unmasked, answers a close.
pub async fn serve_echo(listener: TcpListener) -> io::Result<()> {
    loop {
        let (s, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let _ = echo(s).await;
        });
    }
}

async fn echo(s: TcpStream) -> io::Result<()> {
    let mut s = BufReader::with_capacity(16 * 1024, s);
    let mut line = String::new();
    let key = loop {
        let head = read_head(&mut s, &mut line).await?;
        if let Some(key) = head.key {
            break key;
        }
        if !answer_plain(&mut s, &head).await? {
            return Ok(());
        }
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    s.get_mut().write_all(head.as_bytes()).await?;
    let (mut payload, mut out) = (Vec::new(), Vec::new());
    loop {
        let opcode = read_frame(&mut s, &mut payload).await?;
        out.clear();
        out.extend(FrameHeader::encode(first_byte(true, false, opcode), payload.len() as u64, None));
        out.extend_from_slice(&payload);
        s.get_mut().write_all(&out).await?;
        if opcode == Opcode::Close {
            return Ok(());
        }
    }
}
