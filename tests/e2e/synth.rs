//! Captures made at run time: closed WebSocket sessions written as a classic pcap of raw
//! IP packets with the writer's own TCP synthesis (`wstap_wire::tcp`), streamed to any
//! `Write`. The reader's tests build small ones; the benchmark builds them by the
//! hundred megabytes (it includes this file).

use std::io::{self, Write};
use std::net::SocketAddr;

use wstap_wire::tcp::Flow;
use wstap_wire::wsframe::encode_frame;
use wstap_wire::{Dir, PerDir};

/// The key of RFC 6455's example and the accept that goes with it.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A classic pcap header for raw IP packets (link type 101), microsecond timestamps.
pub fn pcap_header(out: &mut impl Write) -> io::Result<()> {
    for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 262_144, 101] {
        out.write_all(&if v == 0x0004_0002 { [2, 0, 4, 0] } else { v.to_le_bytes() })?;
    }
    Ok(())
}

/// Writes pcap records, one microsecond apart.
pub struct Records<W: Write> {
    pub out: W,
    pub micros: u64,
}

impl<W: Write> Records<W> {
    pub fn new(mut out: W) -> io::Result<Records<W>> {
        pcap_header(&mut out)?;
        Ok(Records { out, micros: 1_764_000_000_000_000 })
    }

    pub fn packet(&mut self, headers: &[u8], payload: &[u8]) -> io::Result<()> {
        self.micros += 1;
        let len = (headers.len() + payload.len()) as u32;
        let (s, us) = ((self.micros / 1_000_000) as u32, (self.micros % 1_000_000) as u32);
        for v in [s, us, len, len] {
            self.out.write_all(&v.to_le_bytes())?;
        }
        self.out.write_all(headers)?;
        self.out.write_all(payload)
    }
}

/// One WebSocket session from client `n` (10.1.x.y:40000+) to 10.9.0.1:80: the TCP
/// handshake, the Upgrade exchange for `/s/n`, `messages` (the client's masked), a close
/// each way and both FINs.
pub struct Session {
    flow: Flow,
}

impl Session {
    pub fn new(n: u32) -> Session {
        let client: SocketAddr =
            format!("10.1.{}.{}:{}", (n >> 8) & 0xff, n & 0xff, 40000 + (n % 20000)).parse().unwrap();
        let server: SocketAddr = "10.9.0.1:80".parse().unwrap();
        Session { flow: Flow::new(client, server, PerDir::new(n.wrapping_mul(7919), n.wrapping_mul(104_729)), 1460) }
    }

    /// The TCP handshake and the Upgrade exchange.
    pub fn open<W: Write>(&mut self, n: u32, to: &mut Records<W>) -> io::Result<()> {
        self.emit(to, |f, e| f.handshake(e))?;
        let request = format!(
            "GET /s/{n} HTTP/1.1\r\nHost: synth.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        self.send(Dir::Up, request.as_bytes(), to)?;
        let response =
            format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n");
        self.send(Dir::Down, response.as_bytes(), to)
    }

    /// One message sent `dir`: a text frame, masked from the client.
    pub fn message<W: Write>(&mut self, dir: Dir, text: &[u8], to: &mut Records<W>) -> io::Result<()> {
        let mask = (dir == Dir::Up).then_some([1, 2, 3, 4]);
        self.send(dir, &encode_frame(0x81, text, mask), to)
    }

    /// A close each way (code 1000), then the FINs.
    pub fn close<W: Write>(&mut self, to: &mut Records<W>) -> io::Result<()> {
        self.send(Dir::Up, &encode_frame(0x88, &1000u16.to_be_bytes(), Some([5, 6, 7, 8])), to)?;
        self.send(Dir::Down, &encode_frame(0x88, &1000u16.to_be_bytes(), None), to)?;
        self.emit(to, |f, e| f.fin(Dir::Down, e))?;
        self.emit(to, |f, e| f.fin(Dir::Up, e))?;
        self.emit(to, |f, e| f.ack(Dir::Down, e))
    }

    fn send<W: Write>(&mut self, dir: Dir, bytes: &[u8], to: &mut Records<W>) -> io::Result<()> {
        self.emit(to, |f, e| f.data(dir, bytes, e))?;
        self.emit(to, |f, e| f.ack(dir.reverse(), e))
    }

    fn emit<W: Write>(
        &mut self,
        to: &mut Records<W>,
        f: impl FnOnce(&mut Flow, &mut dyn FnMut(Dir, wstap_wire::tcp::Packet<'_>)),
    ) -> io::Result<()> {
        let mut result = Ok(());
        f(&mut self.flow, &mut |_, p| {
            if result.is_ok() {
                result = to.packet(p.headers, p.payload);
            }
        });
        result
    }
}

/// `sessions` closed sessions, `open` at a time (their messages interleaved), each with
/// `messages` text messages of `size` bytes each way: the capture's size is about
/// `sessions × messages × 2 × size`.
pub fn closed_sessions<W: Write>(out: W, sessions: u32, open: u32, messages: u32, size: usize) -> io::Result<W> {
    let mut to = Records::new(out)?;
    let text: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    for wave in (0..sessions).step_by(open.max(1) as usize) {
        let ids: Vec<u32> = (wave..(wave + open.max(1)).min(sessions)).collect();
        let mut live: Vec<Session> = ids.iter().map(|&n| Session::new(n)).collect();
        for (s, &n) in live.iter_mut().zip(&ids) {
            s.open(n, &mut to)?;
        }
        for _ in 0..messages {
            for s in &mut live {
                s.message(Dir::Up, &text, &mut to)?;
                s.message(Dir::Down, &text, &mut to)?;
            }
        }
        for s in &mut live {
            s.close(&mut to)?;
        }
    }
    Ok(to.out)
}
