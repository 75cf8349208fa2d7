//! The `carve` command: the sessions the filters take, out of any number of captures
//! (wstap's or anyone's), written as a small pcapng of their own, synthesized the way the
//! daemon writes: a TCP handshake, the Upgrade exchange, each message as a frame (the
//! client's masked; compressed again when the session negotiated permessage-deflate, so
//! the file decodes on its own), the closing handshake and FINs, each session's first
//! packet commented with where it came from. Redacted as the capture redacts.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use flate2::{Compress, Compression, FlushCompress};
use wstap_replay::{Dir, Kind, Message, Session};
use wstap_wire::dir::PerDir;
use wstap_wire::http::Head;
use wstap_wire::tcp::Flow;
use wstap_wire::wsframe::{encode_frame, first_byte, Opcode};
use wstap_wire::Timestamp;

use crate::pick::{fail, open_redacted, redacted, report_problems, Pick, MATCHED, MISMATCH};

/// Where synthesized packets go, and what writes some of them.
type Emit<'e> = dyn FnMut(Dir, wstap_wire::tcp::Packet<'_>) + 'e;
type Step<'s> = dyn FnMut(&mut Flow, &mut Emit<'_>) + 's;

/// One packet of the carved file, until all are written in time order.
struct Packet {
    time: Timestamp,
    dir: Dir,
    bytes: Vec<u8>,
    comment: Option<String>,
}

/// `wstap carve`.
pub fn carve(pick: &Pick, output: &Path, redact: Option<&Path>) -> ExitCode {
    let (rules, mut stream) = match open_redacted(pick, redact) {
        Ok(opened) => opened,
        Err(e) => return fail(e),
    };
    let filter = pick.filters.filter();
    let sources: Vec<String> = pick.files.iter().map(|f| f.display().to_string()).collect();
    let mut packets = Vec::new();
    let mut carved = 0;
    for s in stream.by_ref().filter(|s| filter.admits(s)) {
        carved += 1;
        packets.extend(synthesize(&redacted(s, &rules), carved, &sources.join(", ")));
    }
    let rec = stream.into_recording();
    report_problems(&rec);
    if carved == 0 {
        return fail("no session passes the filters (see `wstap sessions`)");
    }
    // In time order; a session's own packets keep theirs.
    packets.sort_by_key(|p| p.time);
    if let Err(e) = write(output, &packets) {
        return fail(format!("{}: {e}", output.display()));
    }
    eprintln!("wstap: carved {carved} session(s), {} packets, into {}", packets.len(), output.display());
    ExitCode::from(if rec.problems.is_empty() { MATCHED } else { MISMATCH })
}

fn write(output: &Path, packets: &[Packet]) -> std::io::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(output)?);
    let mut w = wstap_wire::pcapng::PcapngWriter::new(file, &wstap::capture::section_info(""))
        .map_err(std::io::Error::other)?;
    let ifc =
        w.add_interface("carved", "WebSocket sessions carved by wstap", Dir::Down).map_err(std::io::Error::other)?;
    for p in packets {
        w.packet(ifc, p.time, p.dir, &[&p.bytes], p.comment.as_deref())?;
    }
    w.into_inner().flush()
}

/// The packets of one session: its `n`th carved, from `sources`.
fn synthesize(s: &Session, n: u32, sources: &str) -> Vec<Packet> {
    let shown = wstap::capture::display_port(s.client, s.server, wstap::config::DisplayPort::Auto);
    let server = std::net::SocketAddr::new(s.server.ip(), shown);
    let isn = PerDir::new(n.wrapping_mul(0x9E37_79B9), n.wrapping_mul(0x85EB_CA6B));
    let mut flow = Flow::new(s.client, server, isn, 1460);
    let mut out = Vec::new();
    let mut time = s.start;
    let mut comment = Some(heading(s, sources, shown));
    let mut emit = |flow: &mut Flow, at: Timestamp, f: &mut Step<'_>| {
        time = time.max(at);
        f(flow, &mut |dir, p| {
            let bytes = [p.headers, p.payload].concat();
            out.push(Packet { time, dir, bytes, comment: comment.take() });
        });
    };
    let send = |flow: &mut Flow, dir: Dir, bytes: &[u8], e: &mut Emit<'_>| {
        flow.data(dir, bytes, e);
        flow.ack(dir.reverse(), e);
    };
    emit(&mut flow, s.start, &mut |f, e| f.handshake(e));
    emit(&mut flow, s.start, &mut |f, e| send(f, Dir::Up, &request(s), e));
    emit(&mut flow, s.start, &mut |f, e| send(f, Dir::Down, &response(s), e));
    let mut deflate = deflaters(s);
    for (i, m) in s.messages.iter().enumerate() {
        if m.kind == Kind::Gap {
            flow.skip(m.dir, m.lost);
            continue;
        }
        if m.incomplete {
            // What the source lacks stays lacking: the frame claims one byte more than
            // it holds, and that byte is not captured. Readers say "incomplete", as of
            // the source; the window a compressed one needed is lost with it.
            let frame = incomplete_frame(m, i);
            emit(&mut flow, m.time, &mut |f, e| {
                f.data(m.dir, &frame, e);
                f.skip(m.dir, 1);
            });
            deflate = None;
            continue;
        }
        let frame = frame(m, i, deflate.as_mut());
        emit(&mut flow, m.time, &mut |f, e| send(f, m.dir, &frame, e));
    }
    let end = s.messages.last().map_or(s.start, |m| m.time);
    emit(&mut flow, end, &mut |f, e| {
        f.fin(Dir::Down, e);
        f.fin(Dir::Up, e);
        f.ack(Dir::Down, e);
    });
    out
}

/// The comment on a session's first packet: where it was carved from.
fn heading(s: &Session, sources: &str, shown: u16) -> String {
    let mut c = format!(
        "carved by wstap from {sources}: session {}: {} from {} to {}, begun {}{}",
        s.id,
        if has_handshake(s) { format!("{} {}", s.method, s.path) } else { "(no handshake)".into() },
        s.client,
        s.server,
        humantime::format_rfc3339_micros(s.start.to_system_time()),
        if has_handshake(s) { "" } else { "; the source held no handshake: this one is made up, as is the path" }
    );
    if shown != s.server.port() {
        c.push_str(&format!(
            "; the server port {} is written as {shown}, so that Wireshark decodes the session",
            s.server.port()
        ));
    }
    c
}

/// The key of RFC 6455's example, and the accept that goes with it: the handshake of a
/// session whose own the source did not hold.
const KEY: (&str, &str) = ("dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");

/// Whether the source held the session's handshake (a session found by its frames alone
/// has neither request line nor status).
fn has_handshake(s: &Session) -> bool {
    !s.method.is_empty() && s.status == 101
}

/// The Upgrade request as recorded (redacted), or a minimal one when the source had none.
fn request(s: &Session) -> Vec<u8> {
    if has_handshake(s) {
        return s.request_head();
    }
    let fields = [
        ("Host", s.server.to_string()),
        ("Upgrade", "websocket".into()),
        ("Connection", "Upgrade".into()),
        ("Sec-WebSocket-Key", KEY.0.into()),
        ("Sec-WebSocket-Version", "13".into()),
    ];
    let request_headers = fields.map(|(n, v)| (n.to_string(), v)).to_vec();
    Session { method: "GET".into(), path: "/".into(), request_headers, ..Session::new(s.id, s.client, s.server) }
        .request_head()
}

/// The `101` as recorded (redacted), or a minimal one when the source had none.
fn response(s: &Session) -> Vec<u8> {
    if has_handshake(s) {
        return s.response_head();
    }
    let fields = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", KEY.1)];
    let response_headers = fields.map(|(n, v)| (n.to_string(), v.to_string())).to_vec();
    Session { response_headers, ..Session::new(s.id, s.client, s.server) }.response_head()
}

/// Each direction's compressor, and whether it keeps its window, when the session
/// negotiated permessage-deflate: with the window the `101` gave it
/// (`client_max_window_bits`, `server_max_window_bits`), so that a peer holding only that
/// much inflates it.
fn deflaters(s: &Session) -> Option<PerDir<(Compress, bool)>> {
    let response = Head { headers: s.response_headers.clone(), ..Head::none() };
    let takeover = wstap_wire::deflate::takeover(&response)?;
    let ext = response.field("sec-websocket-extensions").unwrap_or_default().to_ascii_lowercase();
    let bits = |param: &str| {
        let value = ext
            .split(';')
            .find_map(|p| p.trim().strip_prefix(param)?.trim().strip_prefix('=')?.trim().parse::<u8>().ok());
        value.unwrap_or(15).clamp(9, 15)
    };
    let bits = PerDir::new(bits("client_max_window_bits"), bits("server_max_window_bits"));
    Some(takeover.map(|dir, keeps| (Compress::new_with_window_bits(Compression::default(), false, bits[dir]), keeps)))
}

/// A message the source lacks bytes of, as a frame of what it held that claims one byte
/// more (the writer skips that byte), sent uncompressed.
fn incomplete_frame(m: &Message, index: usize) -> Vec<u8> {
    let opcode = match m.kind {
        Kind::Text => Opcode::Text,
        Kind::Close => Opcode::Close,
        Kind::Ping => Opcode::Ping,
        Kind::Pong => Opcode::Pong,
        _ => Opcode::Binary,
    };
    let mask = (m.dir == Dir::Up).then(|| (index as u32 ^ 0x5A5A_A5A5).max(1).to_be_bytes());
    let mut frame =
        wstap_wire::wsframe::FrameHeader::encode(first_byte(true, false, opcode), m.data.len() as u64 + 1, mask);
    let mut payload = m.data.clone();
    if let Some(key) = mask {
        wstap_wire::wsframe::apply_mask(&mut payload, key, 0);
    }
    frame.extend(payload);
    frame
}

/// A message as one frame: masked from the client, compressed again when the session
/// compresses (data messages only).
fn frame(m: &Message, index: usize, deflate: Option<&mut PerDir<(Compress, bool)>>) -> Vec<u8> {
    let opcode = match m.kind {
        Kind::Text => Opcode::Text,
        Kind::Binary => Opcode::Binary,
        Kind::Close => Opcode::Close,
        Kind::Ping => Opcode::Ping,
        _ => Opcode::Pong,
    };
    let mask = (m.dir == Dir::Up).then(|| (index as u32 ^ 0x5A5A_A5A5).max(1).to_be_bytes());
    match deflate.filter(|_| !opcode.is_control()) {
        Some(d) => {
            let (z, keeps) = &mut d[m.dir];
            if !*keeps {
                z.reset();
            }
            encode_frame(first_byte(true, true, opcode), &compressed(z, &m.data), mask)
        }
        None => encode_frame(first_byte(true, false, opcode), &m.data, mask),
    }
}

/// `data` compressed as permessage-deflate sends it: a sync flush, its final empty
/// block's `00 00 ff ff` taken off.
fn compressed(z: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let start = z.total_in();
    loop {
        let done = (z.total_in() - start) as usize;
        if z.compress_vec(&data[done..], &mut out, FlushCompress::Sync).is_err() {
            break;
        }
        // All taken, and room left: the flush is complete.
        if (z.total_in() - start) as usize == data.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(1024));
    }
    if out.ends_with(&[0, 0, 0xff, 0xff]) {
        out.truncate(out.len() - 4);
    }
    out
}
