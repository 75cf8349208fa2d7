//! Capture, checked the way a user would: real clients through the real daemon, then
//! the pcapng file read back with tshark and capinfos (Debian's, installed by CI).

use std::path::{Path, PathBuf};
use std::process::Command;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;
use wstap::capture::{ConnId, Ending, LegId, PureAcks, Scope};
use wstap_wire::wsframe::{apply_mask, encode_frame, first_byte, FrameHeader, Opcode};
use wstap_wire::Timestamp;

/// One short WebSocket session through `proxy`, then a clean stop (the file is finished).
async fn one_session_then_stop(proxy: Proxy) {
    let mut w = Witness::open(&proxy.ws_url("/")).await;
    w.check("open").await;
    w.close().await;
    proxy.begin_shutdown().await;
    proxy.stopped().await;
}

/// A fresh capture directory for one test (not created: the daemon creates it).
pub(crate) fn capture_dir(name: &str) -> Scratch {
    Scratch::new(&format!("capture-{name}"))
}

/// `[capture]` settings writing into `dir`, plus `extra` lines. Interval rotation is off
/// unless `extra` sets `[capture.rotate]`: a test must not straddle a wall-clock hour.
/// Both legs are recorded unless `extra` says which (most of these tests check both).
pub(crate) fn capture_toml(dir: &Path, extra: &str) -> String {
    let rotate = if extra.contains("[capture.rotate]") { "" } else { "[capture.rotate]\ninterval = \"0s\"\n" };
    let legs = if extra.contains("legs") { "" } else { "legs = [\"client\", \"upstream\"]\n" };
    format!("[capture]\ndir = {:?}\n{legs}{extra}\n{rotate}", dir.display().to_string())
}

/// Capture settings for the file sink alone, writing into `dir`, both legs.
pub(crate) fn sink_settings(dir: &Path) -> wstap::CaptureSettings {
    let mut s = wstap::CaptureSettings::in_dir(dir);
    s.legs = wstap::config::Legs { client: true, upstream: true };
    s
}

/// The finished capture files in `dir`, in name (= time) order; none left `.part`.
pub(crate) fn the_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.iter().all(|p| p.extension().is_some_and(|e| e == "pcapng")), "only finished files: {files:?}");
    files
}

/// The one finished capture file in `dir`.
fn the_file(dir: &Path) -> PathBuf {
    let files = the_files(dir);
    assert_eq!(files.len(), 1, "one capture file in {}: {files:?}", dir.display());
    files.into_iter().next().unwrap()
}

/// Runs a tool and returns its stdout; fails the test if the tool fails.
pub(crate) fn run(tool: &str, args: &[&str]) -> String {
    let out =
        Command::new(tool).args(args).output().unwrap_or_else(|e| panic!("{tool} not runnable ({e}): CI installs it"));
    assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

pub(crate) fn tshark(file: &Path, args: &[&str]) -> String {
    let mut all = vec!["-r", file.to_str().unwrap()];
    all.extend_from_slice(args);
    run("tshark", &all)
}

/// Rows of `-T fields` output for `fields`, filtered by `filter`.
pub(crate) fn fields(file: &Path, filter: &str, fields: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec!["-Y", filter, "-T", "fields", "-E", "occurrence=f"];
    for f in fields {
        args.extend(["-e", f]);
    }
    tshark(file, &args).lines().map(|l| l.split('\t').map(str::to_owned).collect()).collect()
}

/// The clean-session bar: no expert Warnings or Errors, good IP and TCP checksums,
/// both interfaces with ns resolution, strict time order.
pub(crate) fn assert_clean(file: &Path, interfaces: usize) {
    let expert = tshark(file, &["-q", "-z", "expert"]);
    assert!(!expert.contains("Warnings (") && !expert.contains("Errors ("), "expert info:\n{expert}");
    let sums = tshark(
        file,
        &[
            "-o",
            "tcp.check_checksum:TRUE",
            "-o",
            "ip.check_checksum:TRUE",
            "-T",
            "fields",
            "-e",
            "ip.checksum.status",
            "-e",
            "tcp.checksum.status",
        ],
    );
    for line in sums.lines() {
        assert!(line.split('\t').filter(|s| !s.is_empty()).all(|s| s == "1"), "checksum status {line:?}");
    }
    let info = run("capinfos", &[file.to_str().unwrap()]);
    assert!(info.contains(&format!("Number of interfaces in file: {interfaces}")), "{info}");
    assert_eq!(info.matches("Time resolution = 0x09").count(), interfaces, "{info}");
    assert!(info.contains("Strict time order:   True"), "{info}");
}

/// Both directions of TCP stream `stream`, reassembled by tshark: (from the opener,
/// from the other end).
pub(crate) fn follow(file: &Path, stream: &str) -> (Vec<u8>, Vec<u8>) {
    parse_follow(&tshark(file, &["-q", "-z", &format!("follow,tcp,raw,{stream}")]))
}

/// The two directions of `tshark -z follow,tcp,raw` output.
pub(crate) fn parse_follow(out: &str) -> (Vec<u8>, Vec<u8>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let hex =
        |s: &str| (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect::<Vec<u8>>();
    for line in out.lines().skip_while(|l| !l.starts_with("Node 1:")).skip(1) {
        if line.starts_with("====") {
            break;
        }
        match line.strip_prefix('\t') {
            Some(h) => b.extend(hex(h.trim())),
            None => a.extend(hex(line.trim())),
        }
    }
    (a, b)
}

/// The tcp.stream index of each interface's first connection.
pub(crate) fn stream_of(file: &Path, interface: u32) -> String {
    try_stream_of(file, interface).unwrap_or_else(|| panic!("{}: no packet on interface {interface}", file.display()))
}

pub(crate) fn try_stream_of(file: &Path, interface: u32) -> Option<String> {
    fields(file, &format!("frame.interface_id == {interface}"), &["tcp.stream"]).first().map(|r| r[0].clone())
}

/// WebSocket messages (opcode, unmasked payload) after the HTTP head in `bytes`;
/// fragments are joined, control frames listed where they stand.
/// A WebSocket message: opcode and payload.
pub(crate) type WsMessage = (Opcode, Vec<u8>);

pub(crate) fn ws_messages(bytes: &[u8]) -> Vec<WsMessage> {
    ws_messages_until(bytes, true)
}

/// As [`ws_messages`]; with `strict` false, a frame cut off at the end (a file a crash
/// truncated) ends the list instead of failing.
pub(crate) fn ws_messages_until(bytes: &[u8], strict: bool) -> Vec<WsMessage> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP head") + 4;
    let mut rest = &bytes[head_end..];
    let (mut out, mut partial): (Vec<WsMessage>, Option<WsMessage>) = (Vec::new(), None);
    while !rest.is_empty() {
        let whole = FrameHeader::parse(rest).filter(|h| rest.len() as u64 >= h.header_len as u64 + h.len);
        let Some(h) = whole else {
            assert!(!strict, "a frame is cut off at the end of the stream ({} bytes left)", rest.len());
            break;
        };
        let mut payload = rest[h.header_len..h.header_len + h.len as usize].to_vec();
        if let Some(key) = h.mask {
            apply_mask(&mut payload, key, 0);
        }
        rest = &rest[h.header_len + h.len as usize..];
        match (h.opcode, partial.as_mut()) {
            (Opcode::Continuation, Some((_, acc))) => acc.extend(payload),
            (op, _) if op.is_control() => out.push((op, payload)),
            (op, _) => partial = Some((op, payload)),
        }
        if h.fin && !h.opcode.is_control() {
            out.extend(partial.take());
        }
    }
    out
}

#[tokio::test]
async fn a_full_session_decodes_message_for_message_on_both_legs() {
    within(async {
        let dir = capture_dir("full");
        let proxy = Proxy::start(&config(echo_upstream().await, &capture_toml(&dir, ""))).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(proxy.ws_url("/chat?room=7")).await.unwrap();
        let sent = vec![
            Message::text("héllo wörld"),
            Message::binary((0..=255u8).collect::<Vec<_>>()),
            Message::binary(noise(100 * 1024)),
            Message::binary(noise(1 << 20)),
        ];
        for m in &sent {
            ws.send(m.clone()).await.unwrap();
            assert_eq!(&ws.next().await.unwrap().unwrap(), m);
        }
        fragmented_round_trip(&mut ws).await;
        ws.send(Message::Ping(b"ping!".to_vec().into())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Pong(b"ping!".to_vec().into()));
        close_and_stop(ws, proxy).await;

        let file = the_file(&dir);
        assert_clean(&file, 2);

        // Every message, exactly, in order, both ways, on both legs.
        let mut want: Vec<WsMessage> = vec![
            (Opcode::Text, "héllo wörld".into()),
            (Opcode::Binary, (0..=255u8).collect()),
            (Opcode::Binary, noise(100 * 1024)),
            (Opcode::Binary, noise(1 << 20)),
            (Opcode::Text, b"fragmented".to_vec()),
        ];
        let mut want_client = want.clone();
        want_client.extend([(Opcode::Ping, b"ping!".to_vec()), (Opcode::Close, Vec::new())]);
        want.extend([(Opcode::Pong, b"ping!".to_vec()), (Opcode::Close, Vec::new())]);
        for interface in [0, 1] {
            let (from_opener, from_server) = follow(&file, &stream_of(&file, interface));
            let head = String::from_utf8_lossy(&from_opener[..200]);
            assert!(head.starts_with("GET /chat?room=7 HTTP/1.1\r\n"), "leg {interface}: {head}");
            assert!(String::from_utf8_lossy(&from_server).starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
            assert_eq!(ws_messages(&from_opener), want_client, "client → server messages, leg {interface}");
            assert_eq!(ws_messages(&from_server), want, "server → client messages, leg {interface}");
        }

        // And Wireshark's own dissector finds every frame and the text on both legs.
        let frames =
            tshark(&file, &["-Y", "websocket", "-T", "fields", "-e", "frame.interface_id", "-e", "websocket.opcode"]);
        for interface in ["0", "1"] {
            let opcodes: Vec<&str> = frames
                .lines()
                .filter_map(|l| l.split_once('\t'))
                .filter(|(i, _)| *i == interface)
                .flat_map(|(_, ops)| ops.split(','))
                .collect();
            assert_eq!(
                opcodes.len(),
                9 + 7,
                "9 frames from the client (3 fragments), 7 back, on {interface}: {opcodes:?}"
            );
        }
        let texts = fields(&file, "websocket.payload.text", &["websocket.payload.text"]);
        assert_eq!(texts.iter().filter(|r| r[0] == "héllo wörld").count(), 4, "{texts:?}");

        // Session comments: first packet of each leg, and its last.
        let comments = fields(&file, "frame.comment", &["frame.interface_id", "tcp.flags.syn", "frame.comment"]);
        let first: Vec<_> = comments.iter().filter(|r| r[1] == "1").collect();
        assert_eq!(first.len(), 2, "{comments:?}");
        for r in &first {
            assert!(r[2].contains("wstap session 1: GET /chat?room=7") && r[2].contains("ws://"), "{r:?}");
        }
        let last: Vec<_> = comments.iter().filter(|r| r[2].contains("leg closed")).collect();
        assert_eq!(last.len(), 2, "{comments:?}");
        assert!(
            last.iter().all(|r| r[2].contains("closed by both sides") && r[2].contains("bytes from wstap")),
            "{last:?}"
        );
        let all_frames = fields(&file, "frame", &["frame.number", "frame.interface_id", "frame.comment"]);
        for r in &last {
            let final_of_leg = all_frames.iter().rfind(|f| f[1] == r[0]).unwrap();
            assert!(
                final_of_leg[2].contains("leg closed"),
                "the close comment is on the leg's last packet: {final_of_leg:?}"
            );
        }
    })
    .await;
}

/// `capture.segment = "gro"`: each relayed chunk is one segment of up to 65,495 bytes (as
/// on a host whose card coalesces), the SYNs still advertise the MSS, and the capture is
/// as clean and as exact as with MSS-sized segments.
#[tokio::test]
async fn gro_segments_are_as_large_as_relayed_and_decode_clean() {
    within(async {
        let dir = capture_dir("gro");
        let proxy = Proxy::start(&config(echo_upstream().await, &capture_toml(&dir, "segment = \"gro\"\n"))).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(proxy.ws_url("/gro")).await.unwrap();
        let sent = [Message::text("small"), Message::binary(noise(100 * 1024)), Message::binary(noise(1 << 20))];
        for m in &sent {
            ws.send(m.clone()).await.unwrap();
            assert_eq!(&ws.next().await.unwrap().unwrap(), m);
        }
        close_and_stop(ws, proxy).await;

        let file = the_file(&dir);
        assert_clean(&file, 2);
        let want: Vec<WsMessage> = vec![
            (Opcode::Text, b"small".to_vec()),
            (Opcode::Binary, noise(100 * 1024)),
            (Opcode::Binary, noise(1 << 20)),
        ];
        for interface in [0, 1] {
            let (from_opener, from_server) = follow(&file, &stream_of(&file, interface));
            let (up, down) = (ws_messages(&from_opener), ws_messages(&from_server));
            assert_eq!(up[..3], want[..], "client → server, leg {interface}");
            assert_eq!(down[..3], want[..], "server → client, leg {interface}");
        }
        let lens: Vec<usize> =
            fields(&file, "tcp.len > 0", &["tcp.len"]).iter().map(|r| r[0].parse().unwrap()).collect();
        let largest = lens.iter().copied().max().unwrap();
        assert!(largest > 1460 && largest <= 65495, "segments larger than the MSS, within IPv4's limit: {largest}");
        // Far fewer segments than 1460-byte ones would take: the relay reads what is there.
        let average = lens.iter().sum::<usize>() / lens.len();
        assert!(average > 2 * 1460, "{} data segments of {average} bytes on average", lens.len());
        let mss = fields(&file, "tcp.flags.syn == 1", &["tcp.options.mss_val"]);
        assert!(mss.len() >= 4 && mss.iter().all(|r| r[0] == "1460"), "the SYNs advertise the MSS: {mss:?}");
    })
    .await;
}

#[tokio::test]
async fn an_ipv6_session_with_a_frame_in_the_upgrade_write_decodes() {
    within(async {
        let dir = capture_dir("ipv6");
        let echo = echo_upstream().await;
        let toml = format!("listen = [\"[::1]:0\"]\n[[route]]\nupstream = \"ws://{echo}\"\n{}", capture_toml(&dir, ""));
        let proxy = Proxy::start(&toml).await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut first_write = UPGRADE.as_bytes().to_vec();
        first_write.extend(masked_text_frame(b"early bird"));
        s.write_all(&first_write).await.unwrap();
        let mut r = BufReader::new(s);
        assert_eq!(status_of(&read_head(&mut r).await), 101);
        let mut echo_frame = [0u8; 12];
        r.read_exact(&mut echo_frame).await.unwrap();
        r.get_mut().shutdown().await.unwrap();
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        drop(r);
        proxy.begin_shutdown().await;
        proxy.stopped().await;

        let file = the_file(&dir);
        assert_clean(&file, 2);
        let client_leg = fields(&file, "frame.interface_id == 0", &["ipv6.src", "tcp.srcport"]);
        assert!(client_leg.iter().all(|r| r[0] == "::1"), "client leg is IPv6: {client_leg:?}");
        let texts = fields(&file, "websocket.payload.text", &["frame.interface_id", "websocket.payload.text"]);
        let early: Vec<_> = texts.iter().filter(|r| r[1] == "early bird").collect();
        assert_eq!(early.len(), 4, "sent and echoed on both legs: {texts:?}");
        // The request and the frame arrived in one segment; the 101 was written before
        // the echo, and the capture keeps that order.
        let (from_client, from_proxy) = follow(&file, &stream_of(&file, 0));
        assert_eq!(from_client, first_write);
        assert!(from_proxy.ends_with(&echo_frame));
    })
    .await;
}

#[tokio::test]
async fn a_half_close_shows_fins_in_the_order_they_happened() {
    within(async {
        let dir = capture_dir("halfclose");
        let upstream = switching_upstream(|mut s, _| async move {
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(b"after your FIN").await.unwrap();
            s.shutdown().await.unwrap();
        })
        .await;
        let proxy = Proxy::start(&config(upstream, &capture_toml(&dir, ""))).await;
        let (mut s, _) = raw_session(&proxy).await;
        s.write_all(b"bye").await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"after your FIN");
        drop(s);
        proxy.begin_shutdown().await;
        proxy.stopped().await;

        let file = the_file(&dir);
        assert_clean(&file, 2);
        let rows = fields(&file, "frame.interface_id == 0", &["tcp.srcport", "tcp.flags.fin", "tcp.len"]);
        let client_port = rows[0][0].clone();
        let client_fin = rows.iter().position(|r| r[0] == client_port && r[1] == "1").expect("client FIN");
        let late_data = rows
            .iter()
            .position(|r| r[0] != client_port && r[2] != "0" && rows[client_fin..].contains(r))
            .expect("data after it");
        let proxy_fin = rows.iter().position(|r| r[0] != client_port && r[1] == "1").expect("proxy FIN");
        assert!(client_fin < late_data && late_data < proxy_fin, "FIN, data the other way, then its FIN: {rows:?}");
    })
    .await;
}

#[tokio::test]
async fn an_aborted_session_shows_a_reset() {
    within(async {
        let dir = capture_dir("reset");
        let proxy = Proxy::start(&config(echo_upstream().await, &capture_toml(&dir, ""))).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(proxy.ws_url("/")).await.unwrap();
        ws.send(Message::text("then I vanish")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("then I vanish"));
        let tcp = match ws.get_ref() {
            tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
            _ => unreachable!(),
        };
        tcp.set_zero_linger().unwrap();
        drop(ws); // close with SO_LINGER 0: the kernel sends RST
        proxy.begin_shutdown().await;
        proxy.stopped().await;

        let file = the_file(&dir);
        let rst = fields(&file, "tcp.flags.reset == 1", &["frame.interface_id", "frame.comment"]);
        assert_eq!(rst.len(), 1, "{rst:?}");
        assert_eq!(rst[0][0], "0", "the reset is on the client leg");
        assert!(rst[0][1].contains("aborted"), "{rst:?}");
        let texts = fields(&file, "websocket.payload.text", &["websocket.payload.text"]);
        assert_eq!(texts.len(), 4, "{texts:?}");
    })
    .await;
}

/// A plain GET and then an upgrade on one client connection.
async fn plain_then_upgrade(proxy: &Proxy) {
    let mut r = BufReader::new(TcpStream::connect(proxy.addr()).await.unwrap());
    r.get_mut().write_all(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let head = read_head(&mut r).await;
    assert_eq!(status_of(&head), 200, "{head}");
    let mut body = [0u8; 5];
    r.read_exact(&mut body).await.unwrap();
    r.get_mut().write_all(UPGRADE.as_bytes()).await.unwrap();
    assert_eq!(status_of(&read_head(&mut r).await), 101);
    r.get_mut().write_all(&masked_text_frame(b"upgraded later")).await.unwrap();
    let mut frame = [0u8; 16];
    r.read_exact(&mut frame).await.unwrap();
    assert_eq!(&frame[2..], b"upgraded later");
}

/// An upstream that answers a plain GET, then a WebSocket upgrade on the same connection
/// (echoing one frame).
async fn plain_and_ws_upstream() -> std::net::SocketAddr {
    serve(|s| async move {
        let mut r = BufReader::new(s);
        loop {
            let head = read_head(&mut r).await;
            if head.is_empty() {
                return;
            }
            if !head.to_ascii_lowercase().contains("upgrade: websocket") {
                r.get_mut().write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain").await.unwrap();
                continue;
            }
            r.get_mut().write_all(SWITCHED.as_bytes()).await.unwrap();
            let mut hdr = [0u8; 6];
            r.read_exact(&mut hdr).await.unwrap();
            let h = FrameHeader::parse(&hdr).expect("a masked frame of under 126 bytes");
            let mut payload = vec![0u8; h.len as usize];
            r.read_exact(&mut payload).await.unwrap();
            apply_mask(&mut payload, h.mask.expect("a client's frame is masked"), 0);
            let out = encode_frame(first_byte(true, false, Opcode::Text), &payload, None);
            r.get_mut().write_all(&out).await.unwrap();
        }
    })
    .await
}

#[tokio::test]
async fn websocket_mode_starts_at_the_upgrade_and_all_mode_keeps_plain_http() {
    within(async {
        for (mode, plain_seen) in [("websocket", false), ("all", true)] {
            let dir = capture_dir(&format!("mode-{mode}"));
            let upstream = plain_and_ws_upstream().await;
            let proxy = Proxy::start(&config(upstream, &capture_toml(&dir, &format!("mode = {mode:?}")))).await;
            plain_then_upgrade(&proxy).await;
            proxy.begin_shutdown().await;
            proxy.stopped().await;

            let file = the_file(&dir);
            assert_clean(&file, 2);
            let uris = fields(&file, "http.request", &["frame.interface_id", "http.request.uri"]);
            let plain = uris.iter().filter(|r| r[1] == "/plain").count();
            assert_eq!(plain, if plain_seen { 2 } else { 0 }, "mode {mode}: {uris:?}");
            assert_eq!(uris.iter().filter(|r| r[1] == "/chat").count(), 2, "mode {mode}: {uris:?}");
            let texts = fields(&file, "websocket.payload.text", &["frame.interface_id", "websocket.payload.text"]);
            assert_eq!(texts.iter().filter(|r| r[1] == "upgraded later").count(), 4, "mode {mode}: {texts:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn mode_off_writes_nothing_and_display_port_rewrites_the_server_port() {
    within(async {
        let off = capture_dir("off");
        let proxy = Proxy::start(&config(echo_upstream().await, &capture_toml(&off, "mode = \"off\""))).await;
        one_session_then_stop(proxy).await;
        assert!(!off.exists(), "mode off creates no directory and no file");

        let dir = capture_dir("display-port");
        let proxy = Proxy::start(&config(echo_upstream().await, &capture_toml(&dir, "display_port = 80"))).await;
        one_session_then_stop(proxy).await;
        let file = the_file(&dir);
        assert_clean(&file, 2);
        let syns = fields(&file, "tcp.flags.syn == 1 && tcp.flags.ack == 0", &["tcp.dstport"]);
        assert_eq!(syns, vec![vec!["80".to_owned()], vec!["80".to_owned()]]);
        assert_eq!(fields(&file, "websocket.payload.text", &["websocket.payload.text"]).len(), 4);
    })
    .await;
}

#[tokio::test]
async fn only_the_configured_legs_are_written() {
    within(async {
        let dir = capture_dir("legs");
        let proxy = Proxy::start(&config(echo_upstream().await, &capture_toml(&dir, "legs = [\"upstream\"]"))).await;
        one_session_then_stop(proxy).await;
        let file = the_file(&dir);
        assert_clean(&file, 1);
        let info = run("capinfos", &[file.to_str().unwrap()]);
        assert!(info.contains("Interface #0 info:\n                     Name = upstream"), "{info}");
    })
    .await;
}

/// A deterministic session (fixed clock, ISNs and section info) must give exactly the
/// committed file. `WSTAP_BLESS=1 cargo test golden` rewrites it after a deliberate change.
#[test]
fn golden_a_deterministic_session_gives_a_byte_identical_file() {
    use wstap::capture::CaptureWriter;
    use wstap::capture::Event;
    use wstap::capture::Processed;
    use wstap::capture::SectionInfo;
    use wstap::capture::Stats;
    use wstap::capture::Synthesis;
    use wstap::capture::What;
    use wstap::config::Legs;
    use wstap::Opening;
    use wstap::{Dir, Leg, PerDir};

    let request = UPGRADE.as_bytes();
    let response = SWITCHED.as_bytes();
    let hello = masked_text_frame(b"hello, golden file");
    let echo = encode_frame(first_byte(true, false, Opcode::Text), b"hello, golden file", None);
    let open = |kind, local: &str, remote: &str| {
        What::Open(Box::new(Opening {
            leg: kind,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            heading: format!("golden {kind:?} leg"),
            scope: Scope::Session,
            conn: ConnId(1),
            label: String::new(),
            snap: Default::default(),
            tls_secrets: None,
        }))
    };
    let data =
        |dir, offset: usize, bytes: &[u8]| What::Data { dir, offset: offset as u64, bytes: bytes.to_vec().into() };
    let (client, upstream) = (1, 2);
    let events = vec![
        (client, open(Leg::Client, "127.0.0.1:8080", "127.0.0.1:40000")),
        (client, data(Dir::Up, 0, request)),
        (upstream, open(Leg::Upstream, "127.0.0.1:50000", "127.0.0.1:9000")),
        (upstream, data(Dir::Up, 0, request)),
        (upstream, data(Dir::Down, 0, response)),
        (client, data(Dir::Down, 0, response)),
        (client, data(Dir::Up, request.len(), &hello)),
        (upstream, data(Dir::Up, request.len(), &hello)),
        (upstream, data(Dir::Down, response.len(), &echo)),
        (client, data(Dir::Down, response.len(), &echo)),
        (client, What::Fin { dir: Dir::Up, offset: (request.len() + hello.len()) as u64 }),
        (upstream, What::Fin { dir: Dir::Up, offset: (request.len() + hello.len()) as u64 }),
        (upstream, What::Fin { dir: Dir::Down, offset: (response.len() + echo.len()) as u64 }),
        (client, What::Fin { dir: Dir::Down, offset: (response.len() + echo.len()) as u64 }),
        (
            client,
            What::Close {
                reason: Ending::Said("golden end".into()),
                offsets: PerDir::new((request.len() + hello.len()) as u64, (response.len() + echo.len()) as u64),
            },
        ),
        (
            upstream,
            What::Close {
                reason: Ending::Said("golden end".into()),
                offsets: PerDir::new((request.len() + hello.len()) as u64, (response.len() + echo.len()) as u64),
            },
        ),
    ];
    let info = SectionInfo {
        application: "wstap golden".into(),
        os: "golden-os".into(),
        hostname: "golden-host".into(),
        ..Default::default()
    };
    let synth = Synthesis {
        mss_ipv4: 1460,
        mss_ipv6: 1440,
        segment: Default::default(),
        acks: PureAcks::Written,
        display_port: wstap::config::DisplayPort::Real,
        redact: Default::default(),
        isn_seed: 0x5eed,
        rotate_wait: std::time::Duration::from_secs(5),
        budgets: Default::default(),
    };
    let mut w = CaptureWriter::new(Vec::new(), &info, Legs { client: true, upstream: true }, synth).unwrap();
    let stats = Stats::default();
    for (i, (leg, what)) in events.into_iter().enumerate() {
        let step = w
            .process(
                Event {
                    time: Timestamp::from_nanos(1_764_000_000_000_000_000 + i as u64 * 250_000),
                    leg: LegId(leg),
                    what,
                },
                &stats,
            )
            .unwrap();
        assert!(matches!(step, Processed::Done));
    }
    let bytes = w.finish(&stats).unwrap().unwrap();

    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden-session.pcapng");
    if std::env::var_os("WSTAP_BLESS").is_some() {
        std::fs::write(&fixture, &bytes).unwrap();
    }
    let want = std::fs::read(&fixture).expect("fixture exists (WSTAP_BLESS=1 writes it)");
    assert!(bytes == want, "output differs from {}; if the change is deliberate, bless it", fixture.display());

    // The fixture itself is a clean, decodable session.
    assert_clean(&fixture, 2);
    let texts = fields(&fixture, "websocket.payload.text", &["websocket.payload.text"]);
    assert_eq!(texts.len(), 4, "{texts:?}");
    assert!(texts.iter().all(|t| t[0] == "hello, golden file"));
}

#[tokio::test]
async fn an_unwritable_capture_directory_never_hurts_traffic() {
    within(async {
        let blocker = capture_dir("blocker");
        std::fs::write(&blocker, b"a file where the capture directory should be").unwrap();
        let dir = blocker.join("captures");
        let proxy = Proxy::start(&config(echo_upstream().await, &capture_toml(&dir, ""))).await;
        for round in 0..2 {
            let mut w = Witness::open(&proxy.ws_url("/")).await;
            w.check(&format!("capture failed, round {round}")).await;
            w.close().await;
        }
        one_session_then_stop(proxy).await;
        assert!(!dir.exists());
    })
    .await;
}

/// Every file decodes on its own: clean, and its client-leg stream parses into whole
/// messages. Returns each file's (client → server, server → client) messages.
pub(crate) fn decode_each(files: &[PathBuf], interfaces: usize) -> Vec<(Vec<WsMessage>, Vec<WsMessage>)> {
    files
        .iter()
        .map(|file| {
            assert_clean(file, interfaces);
            let (up, down) = follow(file, &stream_of(file, 0));
            let head = String::from_utf8_lossy(&up[..up.len().min(40)]).into_owned();
            assert!(head.starts_with("GET /"), "{} starts with the Upgrade request: {head}", file.display());
            let frames = fields(file, "websocket", &["frame.number"]).len();
            let (up, down) = (ws_messages(&up), ws_messages(&down));
            assert!(frames > 0 || (up.is_empty() && down.is_empty()), "{}: tshark decodes its frames", file.display());
            (up, down)
        })
        .collect()
}

#[tokio::test]
async fn a_session_across_rotations_decodes_in_every_file_and_adds_up() {
    within(async {
        let dir = capture_dir("rotate");
        let rotate = "[capture.rotate]\nsize = \"64KiB\"\ninterval = \"0s\"";
        let proxy = Proxy::start(&config(echo_upstream().await, &capture_toml(&dir, rotate))).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(proxy.ws_url("/rotating?x=1")).await.unwrap();
        let mut sent = Vec::new();
        for i in 0..30u32 {
            let m = if i % 3 == 0 {
                Message::text(format!("message {i}"))
            } else {
                Message::binary(noise(2000 + i as usize * 150))
            };
            ws.send(m.clone()).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), m);
            sent.push(m);
            if i == 10 || i == 20 {
                proxy.rotate().await; // SIGUSR1
            }
        }
        close_and_stop(ws, proxy).await;

        let files = the_files(&dir);
        assert!(files.len() >= 4, "at least three rotations: {files:?}");
        let per_file = decode_each(&files, 2);
        let want: Vec<WsMessage> = sent
            .iter()
            .map(|m| match m {
                Message::Text(t) => (Opcode::Text, t.as_bytes().to_vec()),
                Message::Binary(b) => (Opcode::Binary, b.to_vec()),
                _ => unreachable!(),
            })
            .chain([(Opcode::Close, Vec::new())])
            .collect();
        let up: Vec<WsMessage> = per_file.iter().flat_map(|(u, _)| u.clone()).collect();
        let down: Vec<WsMessage> = per_file.iter().flat_map(|(_, d)| d.clone()).collect();
        assert_eq!(up.len(), want.len(), "client messages across all files");
        assert!(up == want, "client messages across all files add up exactly to those sent");
        assert!(down == want, "echoes across all files add up exactly");
        // wstap's own reader: read together, the files hold one session per leg, whole
        // (what each file repeated is dropped); read alone, each file holds its part of
        // each leg, beginning with the repeated Upgrade, and the parts add up.
        let rec = wstap_replay::open_all(&files).unwrap();
        assert!(rec.problems.is_empty(), "{:?}", rec.problems);
        assert_eq!(rec.sessions.len(), 2, "one session per leg");
        // Given out of order, the files are read in time order, and a note says so.
        let reversed: Vec<_> = files.iter().rev().cloned().collect();
        let back = wstap_replay::open_all(&reversed).unwrap();
        let summary = |r: &wstap_replay::Recording| -> Vec<_> {
            r.sessions
                .iter()
                .map(|s| (s.client, s.messages.iter().map(|m| m.data.clone()).collect::<Vec<_>>()))
                .collect()
        };
        assert!(summary(&back) == summary(&rec), "the same sessions, whatever the order given");
        assert!(back.notes.iter().any(|n| n.contains("not given in time order")), "{:?}", back.notes);
        assert!(!rec.notes.iter().any(|n| n.contains("time order")), "{:?}", rec.notes);
        let client = |sessions: &[&wstap_replay::Session]| -> Vec<WsMessage> {
            sessions
                .iter()
                .flat_map(|s| &s.messages)
                .filter(|m| m.dir == wstap::Dir::Up)
                .map(|m| {
                    let op = match m.kind {
                        wstap_replay::Kind::Text => Opcode::Text,
                        wstap_replay::Kind::Close => Opcode::Close,
                        _ => Opcode::Binary,
                    };
                    (op, m.data.clone())
                })
                .collect()
        };
        for s in &rec.sessions {
            assert!(s.path == "/rotating?x=1" && s.status == 101);
            assert!(client(&[s]) == want, "leg {}: one session, what was sent", s.client);
        }
        let alone: Vec<_> = files.iter().map(|f| wstap_replay::open(f).unwrap()).collect();
        for leg in [rec.sessions[0].client, rec.sessions[1].client] {
            let parts: Vec<_> = alone.iter().flat_map(|r| &r.sessions).filter(|s| s.client == leg).collect();
            assert!(parts.len() >= 3, "leg {leg}: {} parts", parts.len());
            assert!(parts.iter().all(|s| s.path == "/rotating?x=1" && s.status == 101));
            assert!(parts[1..].iter().all(|s| s.notes.iter().any(|n| n.contains("began before this capture"))));
            assert!(client(&parts) == want, "the parts of leg {leg} add up to what was sent");
        }
        // Files after the first begin with the replayed, commented handshake.
        for file in &files[1..] {
            let first = fields(file, "frame.number == 1", &["frame.comment"]);
            assert!(first[0][0].contains("repeated from an earlier file"), "{}: {first:?}", file.display());
        }
    })
    .await;
}

/// The events of one WebSocket session (both legs) that sends `messages` and has each
/// echoed: time starts at `t0` and moves by `step` ns per event.
pub(crate) fn synthetic_session(
    session_id: u64,
    legs: (u64, u64),
    messages: &[Vec<u8>],
    t0: u64,
    step: u64,
) -> Vec<wstap::capture::Event> {
    use wstap::capture::Event;
    use wstap::capture::What;
    use wstap::Opening;
    use wstap::{Dir, Leg, PerDir};
    let (client, upstream) = legs;
    let open = |kind, local: &str, remote: &str| {
        What::Open(Box::new(Opening {
            leg: kind,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            heading: format!("synthetic session {session_id}"),
            scope: Scope::Session,
            conn: ConnId(session_id),
            label: format!("127.0.0.1-4000{session_id}_/"),
            snap: Default::default(),
            tls_secrets: None,
        }))
    };
    let mut ev = Vec::new();
    let mut push = |leg, what| ev.push((leg, what));
    let data =
        |dir, offset: usize, bytes: &[u8]| What::Data { dir, offset: offset as u64, bytes: bytes.to_vec().into() };
    let (req, resp) = (UPGRADE.as_bytes(), SWITCHED.as_bytes());
    push(client, open(Leg::Client, "127.0.0.1:8080", &format!("127.0.0.1:4000{session_id}")));
    push(client, data(Dir::Up, 0, req));
    push(upstream, open(Leg::Upstream, &format!("127.0.0.1:5000{session_id}"), "127.0.0.1:9000"));
    push(upstream, data(Dir::Up, 0, req));
    push(upstream, data(Dir::Down, 0, resp));
    push(client, data(Dir::Down, 0, resp));
    let (mut up, mut down) = (req.len(), resp.len());
    for m in messages {
        let masked = masked_frame(m);
        let plain = plain_frame(m);
        push(client, data(Dir::Up, up, &masked));
        push(upstream, data(Dir::Up, up, &masked));
        push(upstream, data(Dir::Down, down, &plain));
        push(client, data(Dir::Down, down, &plain));
        (up, down) = (up + masked.len(), down + plain.len());
    }
    for leg in [client, upstream] {
        let offsets = PerDir::new(up as u64, down as u64);
        push(leg, What::Close { reason: Ending::Said("synthetic end".into()), offsets });
    }
    ev.into_iter()
        .enumerate()
        .map(|(i, (leg, what))| Event { time: Timestamp::from_nanos(t0 + i as u64 * step), leg: LegId(leg), what })
        .collect()
}

/// A masked binary frame (key 0x01020304), as a client sends it.
fn masked_frame(payload: &[u8]) -> Vec<u8> {
    encode_frame(first_byte(true, false, Opcode::Binary), payload, Some([1, 2, 3, 4]))
}

/// A binary frame as a server sends it.
fn plain_frame(payload: &[u8]) -> Vec<u8> {
    encode_frame(first_byte(true, false, Opcode::Binary), payload, None)
}

/// Runs events through a FileSink with `settings`, ticking the injected clock at each
/// event's time.
fn sink_run(settings: wstap::config::CaptureSettings, events: Vec<wstap::capture::Event>) {
    use wstap::capture::FileSink;
    use wstap::capture::SectionInfo;
    let stats = wstap::capture::Stats::default();
    let info = SectionInfo {
        application: "wstap test".into(),
        os: "test".into(),
        hostname: "test".into(),
        ..Default::default()
    };
    let mut sink = FileSink::new(settings, info, 99);
    for ev in events {
        let now = ev.time;
        sink.process(ev, &stats);
        sink.tick(now, &stats);
    }
    sink.finish(&stats);
}

#[test]
fn interval_rotation_at_wall_clock_multiples_keeps_every_file_whole() {
    let dir = capture_dir("interval");
    let mut s = sink_settings(&dir);
    s.rotate.size = 0;
    s.rotate.interval = Some(std::time::Duration::from_secs(1));
    let messages: Vec<Vec<u8>> = (0..40).map(|i| noise(500 + i * 31)).collect();
    // 4 events per message, 25 ms apart: the session spans about 4 s (5 wall-clock seconds).
    let t0 = 1_764_000_000_400_000_000; // 0.4 s past a whole second
    sink_run(s, synthetic_session(1, (1, 2), &messages, t0, 25_000_000));

    let files = the_files(&dir);
    assert!(files.len() >= 4, "one file per wall-clock second: {files:?}");
    let per_file = decode_each(&files, 2);
    let up: Vec<Vec<u8>> = per_file.iter().flat_map(|(u, _)| u.iter().map(|m| m.1.clone())).collect();
    assert!(up == messages, "all messages, in order, across the files");
    // Each file covers one wall-clock second (dumpcap's interval semantics).
    for file in &files {
        let seconds: std::collections::BTreeSet<String> = fields(file, "websocket", &["frame.time_epoch"])
            .iter()
            .map(|r| r[0].split('.').next().unwrap().to_owned())
            .collect();
        assert!(seconds.len() <= 1, "{} holds frames of one second: {seconds:?}", file.display());
    }
}

#[test]
fn per_session_files_hold_one_session_each() {
    let dir = capture_dir("per-session");
    let mut s = sink_settings(&dir);
    s.files = wstap::config::FilesPer::Session;
    let a = synthetic_session(1, (1, 2), &[b"first session".to_vec()], 1_764_000_000_000_000_000, 1000);
    let b =
        synthetic_session(2, (3, 4), &[b"second session".to_vec(), b"again".to_vec()], 1_764_000_000_000_000_500, 1000);
    let mut events: Vec<_> = a.into_iter().chain(b).collect();
    events.sort_by_key(|e| e.time);
    sink_run(s, events);

    let files = the_files(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert!(
        names[0].contains("127.0.0.1-40001") && names[1].contains("127.0.0.1-40002"),
        "named by client and route: {names:?}"
    );
    let per_file = decode_each(&files, 2);
    assert_eq!(per_file[0].0, vec![(Opcode::Binary, b"first session".to_vec())]);
    assert_eq!(per_file[1].0, vec![(Opcode::Binary, b"second session".to_vec()), (Opcode::Binary, b"again".to_vec())]);
}

/// permessage-deflate (RFC 7692): a compressor per direction, with or without context
/// takeover.
pub(crate) struct Deflater(flate2::Compress, bool);

impl Deflater {
    pub(crate) fn new(takeover: bool) -> Deflater {
        Deflater(flate2::Compress::new(flate2::Compression::default(), false), takeover)
    }

    /// One message's compressed payload (sync flush, the 00 00 ff ff tail removed).
    pub(crate) fn message(&mut self, text: &[u8]) -> Vec<u8> {
        if !self.1 {
            self.0.reset();
        }
        let mut out = Vec::with_capacity(text.len() + 64);
        self.0.compress_vec(text, &mut out, flate2::FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&wstap_wire::deflate::MESSAGE_TAIL));
        out.truncate(out.len() - 4);
        out
    }
}

/// A text message compressed: RSV1 set.
pub(crate) fn deflate_frame(payload: &[u8], masked: bool) -> Vec<u8> {
    encode_frame(first_byte(true, true, Opcode::Text), payload, masked.then_some([1, 2, 3, 4]))
}

/// A deflate session's events: `texts` sent and echoed, each direction compressing with
/// its own context.
fn deflate_session(texts: &[String], takeover: bool, t0: u64, step: u64) -> Vec<wstap::capture::Event> {
    use wstap::capture::Event;
    use wstap::capture::What;
    use wstap::Opening;
    use wstap::{Dir, Leg};
    let ext = if takeover {
        "permessage-deflate"
    } else {
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    };
    let req = String::from(
        "GET /deflate HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
    );
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Extensions: {ext}\r\n\r\n"
    );
    let open = |kind, local: &str, remote: &str| {
        What::Open(Box::new(Opening {
            leg: kind,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            heading: "deflate session".into(),
            scope: Scope::Session,
            conn: ConnId(1),
            label: String::new(),
            snap: Default::default(),
            tls_secrets: None,
        }))
    };
    let data =
        |dir, offset: usize, bytes: &[u8]| What::Data { dir, offset: offset as u64, bytes: bytes.to_vec().into() };
    let mut ev = vec![
        (1, open(Leg::Client, "127.0.0.1:8080", "127.0.0.1:40001")),
        (1, data(Dir::Up, 0, req.as_bytes())),
        (2, open(Leg::Upstream, "127.0.0.1:50001", "127.0.0.1:9000")),
        (2, data(Dir::Up, 0, req.as_bytes())),
        (2, data(Dir::Down, 0, resp.as_bytes())),
        (1, data(Dir::Down, 0, resp.as_bytes())),
    ];
    let (mut client_z, mut server_z) = (Deflater::new(takeover), Deflater::new(takeover));
    let (mut up, mut down) = (req.len(), resp.len());
    for t in texts {
        let masked = deflate_frame(&client_z.message(t.as_bytes()), true);
        let plain = deflate_frame(&server_z.message(t.as_bytes()), false);
        ev.push((1, data(Dir::Up, up, &masked)));
        ev.push((2, data(Dir::Up, up, &masked)));
        ev.push((2, data(Dir::Down, down, &plain)));
        ev.push((1, data(Dir::Down, down, &plain)));
        (up, down) = (up + masked.len(), down + plain.len());
    }
    ev.into_iter()
        .enumerate()
        .map(|(i, (leg, what))| Event { time: Timestamp::from_nanos(t0 + i as u64 * step), leg: LegId(leg), what })
        .collect()
}

#[test]
fn permessage_deflate_sessions_decompress_in_every_file() {
    for takeover in [false, true] {
        let dir = capture_dir(&format!("deflate-{takeover}"));
        let mut s = sink_settings(&dir);
        s.rotate.size = 0;
        s.rotate.interval = Some(std::time::Duration::from_secs(1));
        // Repetitive texts: with context takeover, later messages refer back to earlier ones.
        let texts: Vec<String> =
            (0..40).map(|i| format!("the quick brown fox jumps over the lazy dog, message {i}")).collect();
        sink_run(s, deflate_session(&texts, takeover, 1_764_000_000_400_000_000, 25_000_000));
        let files = the_files(&dir);
        assert!(files.len() >= 4, "{files:?}");
        let mut decoded = Vec::new();
        for file in &files {
            assert_clean(file, 2);
            let rows = fields(
                file,
                "websocket && frame.interface_id == 0 && tcp.srcport == 40001",
                &["websocket.payload.text"],
            );
            let texts_here: Vec<String> =
                rows.into_iter().map(|r| r[0].clone()).filter(|t| t.starts_with("the quick")).collect();
            assert!(!texts_here.is_empty(), "takeover {takeover}: {} decompresses its messages", file.display());
            decoded.extend(texts_here);
        }
        assert_eq!(decoded, texts, "takeover {takeover}: every message, decompressed, across the files");
    }
}

#[tokio::test]
async fn in_mode_all_a_later_file_still_replays_the_sessions_upgrade() {
    within(async {
        let dir = capture_dir("all-rotate");
        let upstream = plain_and_ws_upstream().await;
        let rotate = "mode = \"all\"\n[capture.rotate]\ninterval = \"0s\"";
        let proxy = Proxy::start(&config(upstream, &capture_toml(&dir, rotate))).await;
        // Plain HTTP, then an upgrade on the same connection, then a rotation mid-session.
        let mut r = BufReader::new(TcpStream::connect(proxy.addr()).await.unwrap());
        r.get_mut().write_all(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(status_of(&read_head(&mut r).await), 200);
        let mut body = [0u8; 5];
        r.read_exact(&mut body).await.unwrap();
        r.get_mut().write_all(UPGRADE.as_bytes()).await.unwrap();
        assert_eq!(status_of(&read_head(&mut r).await), 101);
        eventually("the first file exists", || dir.is_dir()).await;
        proxy.rotate().await;
        let count = || std::fs::read_dir(&*dir).map(|d| d.count()).unwrap_or(0);
        eventually("the rotation happened", || count() == 2).await;
        r.get_mut().write_all(&masked_text_frame(b"after the rotation")).await.unwrap();
        let mut frame = [0u8; 20];
        r.read_exact(&mut frame).await.unwrap();
        assert_eq!(&frame[2..], b"after the rotation");
        drop(r);
        proxy.begin_shutdown().await;
        proxy.stopped().await;

        let files = the_files(&dir);
        assert_eq!(files.len(), 2, "{files:?}");
        let (up, down) = &decode_each(&files[1..], 2)[0];
        assert_eq!(
            up,
            &vec![(Opcode::Text, b"after the rotation".to_vec())],
            "the second file decodes the session on its own"
        );
        assert_eq!(down, up);
        let uris = fields(&files[1], "http.request", &["http.request.uri"]);
        assert!(uris.iter().all(|u| u[0] == "/chat"), "it replays the Upgrade, not the plain request: {uris:?}");
    })
    .await;
}
