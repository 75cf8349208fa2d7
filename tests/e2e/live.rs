//! The live capture stream (`[live]`): tshark reads it as a PCAP-over-IP interface
//! (`-i TCP@host:port`) while sessions run, in pcapng and in classic pcap; a session
//! that began before tshark connected, and a permessage-deflate one with context
//! takeover, decode from the moment it joined.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::capture::*;
use crate::support::*;

/// An upstream that accepts permessage-deflate (with context takeover) and echoes each
/// compressed frame back as it came (the same deflate stream the other way).
async fn deflate_echo_upstream() -> SocketAddr {
    serve(|s| async move {
        let mut r = BufReader::new(s);
        read_head(&mut r).await;
        let answer = SWITCHED.replace("\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n");
        if r.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        loop {
            let mut head = [0u8; 6];
            if r.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = usize::from(head[1] & 0x7f);
            assert!(len < 126, "the test's frames are small");
            let mut payload = vec![0u8; len];
            if r.read_exact(&mut payload).await.is_err() {
                return;
            }
            payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= head[2 + i % 4]);
            let mut frame = vec![head[0], len as u8];
            frame.extend_from_slice(&payload);
            if head[0] & 0x0f == 8 || r.get_mut().write_all(&frame).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// A raw client session with permessage-deflate through the proxy.
struct DeflateClient {
    socket: BufReader<TcpStream>,
    z: Deflater,
}

impl DeflateClient {
    async fn open(proxy: SocketAddr) -> DeflateClient {
        let mut socket = BufReader::new(TcpStream::connect(proxy).await.unwrap());
        let upgrade = UPGRADE.replace("/chat", "/deflate").replace(
            "Sec-WebSocket-Version: 13\r\n",
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n",
        );
        socket.get_mut().write_all(upgrade.as_bytes()).await.unwrap();
        assert_eq!(status_of(&read_head(&mut socket).await), 101);
        DeflateClient { socket, z: Deflater::new(true) }
    }

    /// Sends `text` compressed and reads the echo.
    async fn round_trip(&mut self, text: &str) {
        let frame = deflate_frame(&self.z.message(text.as_bytes()), true);
        self.socket.get_mut().write_all(&frame).await.unwrap();
        let mut echo = vec![0u8; frame.len() - 4];
        self.socket.read_exact(&mut echo).await.unwrap();
        assert_eq!(echo[0], 0xc1, "a compressed text frame comes back");
    }
}

/// Runs the scenario with the stream in `format`: returns the capture tshark wrote.
async fn watch_live(format: &str, name: &str) -> (Scratch, std::path::PathBuf) {
    let (logs, _capturing) = Logs::capture();
    let dir = capture_dir(name);
    std::fs::create_dir_all(&*dir).unwrap();
    let plain = echo_upstream().await;
    let deflating = deflate_echo_upstream().await;
    let toml = format!(
        "listen = [\"127.0.0.1:0\"]\n[[route]]\npath_prefix = \"/deflate\"\nupstream = \"ws://{deflating}\"\n\
         [[route]]\nupstream = \"ws://{plain}\"\n[live]\nlisten = \"127.0.0.1:0\"\nformat = \"{format}\"\n{}",
        capture_toml(&dir.join("files"), "")
    );
    let proxy = Proxy::start(&toml).await;
    eventually("the stream listens", || !logs.lines_with(&["live stream: listening"]).is_empty()).await;
    let live = addr_in(&logs.lines_with(&["live stream: listening"])[0]);

    // Two sessions that begin before anyone watches.
    let (mut early, _) = tokio_tungstenite::connect_async(proxy.ws_url("/early")).await.unwrap();
    early.send(Message::text("before tshark")).await.unwrap();
    early.next().await.unwrap().unwrap();
    let mut deflate = DeflateClient::open(proxy.addr()).await;
    for i in 0..3 {
        deflate.round_trip(&format!("compressed before tshark, the same words again and again {i}")).await;
    }

    let out = dir.join("live.pcapng");
    let mut tshark = tokio::process::Command::new("tshark")
        .args(["-q", "-i", &format!("TCP@{live}"), "-a", "duration:30", "-w", out.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Joined: its section (headers and the live sessions) is on its socket.
    eventually_long("tshark joined", || !logs.lines_with(&["live stream: subscriber joined"]).is_empty()).await;

    for i in 0..3 {
        let m = Message::text(format!("early session, watched {i}"));
        early.send(m.clone()).await.unwrap();
        assert_eq!(early.next().await.unwrap().unwrap(), m);
        deflate.round_trip(&format!("compressed while watched, the same words again and again {i}")).await;
    }
    let (mut late, _) = tokio_tungstenite::connect_async(proxy.ws_url("/late")).await.unwrap();
    late.send(Message::text("a session begun while watched")).await.unwrap();
    late.next().await.unwrap().unwrap();
    for ws in [&mut early, &mut late] {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    drop((early, late, deflate));
    proxy.begin_shutdown().await;
    proxy.stopped().await;
    // The stream ends with the daemon: tshark sees the end and stops.
    let status = tshark.wait().await.unwrap();
    let mut err = String::new();
    tshark.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
    assert!(status.success(), "tshark: {err}");
    (dir, out)
}

/// What tshark decodes in `file`: each text message on the client leg (interface 0),
/// both ways.
fn client_leg_texts(file: &Path) -> Vec<String> {
    fields(file, "websocket.opcode == 1 && frame.interface_id == 0", &["websocket.payload.text"]).concat()
}

fn assert_watched(file: &Path) {
    let texts = client_leg_texts(file);
    for i in 0..3 {
        let want = [
            format!("early session, watched {i}"),
            format!("compressed while watched, the same words again and again {i}"),
        ];
        for w in want {
            assert_eq!(texts.iter().filter(|t| **t == w).count(), 2, "{w:?} both ways: {texts:?}");
        }
    }
    assert_eq!(texts.iter().filter(|t| *t == "a session begun while watched").count(), 2, "{texts:?}");
    assert!(!texts.iter().any(|t| t.contains("before tshark")), "what came before is not repeated: {texts:?}");
}

#[tokio::test]
async fn tshark_watching_the_live_stream_decodes_every_session_from_when_it_joined() {
    within(async {
        let (_dir, file) = watch_live("pcapng", "live-pcapng").await;
        assert_clean(&file, 2);
        assert_watched(&file);
        let comments = fields(&file, "frame.comment", &["frame.comment"]).concat();
        assert!(comments.iter().any(|c| c.contains("in progress when this stream began")), "{comments:?}");
        assert!(comments.iter().any(|c| c.contains("restores the permessage-deflate context")), "{comments:?}");
    })
    .await;
}

#[tokio::test]
async fn in_pcap_format_the_stream_is_classic_pcap_over_ethernet_and_decodes_too() {
    within(async {
        let (_dir, file) = watch_live("pcap", "live-pcap").await;
        let info = run("capinfos", &[file.to_str().unwrap()]);
        assert!(info.contains("Ethernet"), "{info}");
        let expert = tshark(&file, &["-q", "-z", "expert"]);
        assert!(!expert.contains("Warnings (") && !expert.contains("Errors ("), "expert info:\n{expert}");
        let macs = fields(&file, "eth", &["eth.src", "eth.dst"]);
        assert!(macs.iter().all(|m| m[0].starts_with("02:00:00:00:00:0")), "{macs:?}");
        // No interfaces to tell legs apart: every message shows on both legs, both ways.
        let texts = fields(&file, "websocket.opcode == 1", &["websocket.payload.text"]).concat();
        let w = "compressed while watched, the same words again and again 2";
        assert_eq!(texts.iter().filter(|t| *t == w).count(), 4, "{texts:?}");
    })
    .await;
}

/// As [`eventually`], for a process starting (up to twenty seconds).
async fn eventually_long(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 20 s");
}
