//! The live capture stream (`[live]`): tshark reads it as a PCAP-over-IP interface
//! (`-i TCP@host:port`) while sessions run, in pcapng and in classic pcap; a session
//! that began before tshark connected, and a permessage-deflate one with context
//! takeover, decode from the moment it joined. Who may subscribe is in `owner`; the
//! stream's bounds (slots, buffers, reloads) in `bounds`.

mod bounds;
mod owner;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::capture::*;
use crate::support::*;
use crate::tls::metric;

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

/// How tshark watches the stream.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// `-i TCP@host:port` (PCAP-over-IP).
    PcapOverIp,
    /// `-i wstap`, the extcap interface, told the address by `WSTAP_LIVE`.
    Extcap,
}

/// Runs the scenario with the stream in `format`: returns the capture tshark wrote.
async fn watch_live(format: &str, name: &str, via: Via) -> (Scratch, std::path::PathBuf) {
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
    let interface = match via {
        Via::PcapOverIp => format!("TCP@{live}"),
        Via::Extcap => "wstap".to_owned(),
    };
    let mut tshark = tokio::process::Command::new("tshark")
        .args(["-q", "-i", &interface, "-a", "duration:30", "-w", out.to_str().unwrap()])
        .env("WSTAP_LIVE", live.to_string())
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

/// wstap's own reader on the saved stream: the deflate session that began before the
/// join holds, on each leg, only what crossed after it: what the join repeated (the
/// handshake, the deflate priming) is no message.
fn assert_read_back(file: &Path) {
    let rec = wstap_replay::open(file).unwrap();
    let deflate: Vec<_> = rec.sessions.iter().filter(|s| s.path == "/deflate").collect();
    assert_eq!(deflate.len(), 2, "both legs: {:?}", rec.sessions.iter().map(|s| &s.path).collect::<Vec<_>>());
    let watched: Vec<String> =
        (0..3).map(|i| format!("compressed while watched, the same words again and again {i}")).collect();
    for s in deflate {
        let up: Vec<String> = s
            .messages
            .iter()
            .filter(|m| m.dir == wstap_replay::Dir::Up && m.kind != wstap_replay::Kind::Close)
            .map(|m| String::from_utf8_lossy(&m.data).into_owned())
            .collect();
        assert_eq!(up, watched, "{}: {:?}", s.client, s.problems);
        assert!(s.notes.iter().any(|n| n.contains("began before this capture")), "{:?}", s.notes);
    }
}

#[tokio::test]
async fn tshark_watching_the_live_stream_decodes_every_session_from_when_it_joined() {
    within(async {
        let (_dir, file) = watch_live("pcapng", "live-pcapng", Via::PcapOverIp).await;
        assert_clean(&file, 2);
        assert_watched(&file);
        let comments = fields(&file, "frame.comment", &["frame.comment"]).concat();
        assert!(comments.iter().any(|c| c.contains("in progress when this stream began")), "{comments:?}");
        assert!(comments.iter().any(|c| c.contains("restores the permessage-deflate context")), "{comments:?}");
        assert_read_back(&file);
    })
    .await;
}

#[tokio::test]
async fn in_pcap_format_the_stream_is_classic_pcap_over_ethernet_and_decodes_too() {
    within(async {
        let (_dir, file) = watch_live("pcap", "live-pcap", Via::PcapOverIp).await;
        let info = run("capinfos", &[file.to_str().unwrap()]);
        assert!(info.contains("Ethernet"), "{info}");
        let expert = tshark(&file, &["-q", "-z", "expert"]);
        assert!(!expert.contains("Warnings (") && !expert.contains("Errors ("), "expert info:\n{expert}");
        let macs = fields(&file, "eth", &["eth.src", "eth.dst"]);
        assert!(macs.iter().all(|m| m[0].starts_with("02:00:00:00:0")), "{macs:?}");
        // What the join repeated is marked by its addresses, classic pcap having no comments.
        let repeated = macs.iter().filter(|m| m[0].starts_with("02:00:00:00:01:0")).count();
        assert!(repeated > 0 && repeated < macs.len(), "{repeated} of {}", macs.len());
        assert_read_back(&file);
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

/// RSS of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_off_and_hurts_nothing() {
    within(async {
        let dir = capture_dir("live-stalled");
        std::fs::create_dir_all(&*dir).unwrap();
        let config = dir.join("wstap.toml");
        let toml = format!(
            "listen = [\"127.0.0.1:0\"]\nworkers = 1\n[[route]]\nupstream = \"ws://{}\"\n[capture]\ndir = \"captures\"\n\
             [capture.rotate]\ninterval = \"0s\"\n[live]\nlisten = \"127.0.0.1:0\"\nbuffer = \"1MiB\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n",
            echo_upstream().await
        );
        std::fs::write(&config, toml).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wstap"));
        // Freed memory goes back at once, so RSS shows what is held, not what was.
        command.args(["run", "-c"]).arg(&config).env("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0");
        let (mut daemon, addr, log) = spawn_daemon_command(command, &config).await;
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        std::thread::spawn(move || log.iter().for_each(|l| sink.lock().unwrap().push(l)));
        let said = |what: &str| lines.lock().unwrap().iter().find(|l| l.contains(what)).cloned();
        eventually("the stream listens", || said("live stream: listening").is_some()).await;
        let live = addr_in(&said("live stream: listening").unwrap());
        eventually("the admin endpoints", || said("admin endpoints served").is_some()).await;
        let admin = addr_in(&said("admin endpoints served").unwrap());

        // A subscriber that never reads.
        let stalled = TcpStream::connect(live).await.unwrap();
        eventually("it joined", || said("live stream: subscriber joined").is_some()).await;
        let before = rss_kib(daemon.id());
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/flood")).await.unwrap();
        let count = 400;
        for i in 0..count {
            let m = Message::binary(noise(64 * 1024 + i));
            ws.send(m.clone()).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), m, "the traffic is untouched");
        }
        eventually("it was cut off", || said("fell more than live.buffer bytes behind").is_some()).await;
        // Once the writer has caught up, 2 x 25 MiB have gone by (50 MiB of packets for
        // the subscriber, which has not read a byte): held for it, at most its 1 MiB.
        let payload: u64 = (0..count as u64).map(|i| 2 * (64 * 1024 + i)).sum();
        for _ in 0..2000 {
            if metric(admin, "wstap_capture_bytes_total").await >= payload {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(metric(admin, "wstap_capture_bytes_total").await >= payload, "the writer caught up");
        assert_eq!(metric(admin, "wstap_live_cut_off_total").await, 1);
        let grown = rss_kib(daemon.id()).saturating_sub(before);
        assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        drop((ws, stalled));
        std::process::Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status().unwrap();
        assert!(daemon.wait().unwrap().success());
        // The files have every message.
        let files = the_files(&dir.join("captures"));
        let rec = wstap_replay::open_all(&files).unwrap();
        assert!(rec.problems.is_empty(), "{:?}", rec.problems);
        let binaries = rec.sessions[0].messages.iter().filter(|m| m.kind == wstap_replay::Kind::Binary).count();
        assert_eq!(binaries, 2 * count, "every message, both ways, in the files");
    })
    .await;
}

/// Reads from `sub` until its bytes hold `text` (a server's unmasked frame carries it as is).
async fn until_seen(sub: &mut (impl tokio::io::AsyncRead + Unpin), text: &[u8]) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    while !seen.windows(text.len()).any(|w| w == text) {
        let n = sub.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended before {:?}", String::from_utf8_lossy(text));
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_reload_keeps_subscribers_unless_their_listener_moves() {
    let (logs, _capturing) = Logs::capture();
    within(async {
        let dir = capture_dir("live-reload");
        std::fs::create_dir_all(&*dir).unwrap();
        let config = dir.join("wstap.toml");
        let base = format!(
            "listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"ws://{}\"\n{}",
            echo_upstream().await,
            capture_toml(&dir.join("files"), "")
        );
        std::fs::write(&config, format!("{base}[live]\nlisten = \"127.0.0.1:0\"\nmax_clients = 8\n")).unwrap();
        let proxy = Proxy::start_file(&config).await;
        eventually("the stream listens", || !logs.lines_with(&["live stream: listening"]).is_empty()).await;
        let live = addr_in(&logs.lines_with(&["live stream: listening"])[0]);
        let mut sub = TcpStream::connect(live).await.unwrap();
        // What came before its section is not repeated: it joins first.
        eventually("joined", || logs.lines_with(&["subscriber joined"]).len() == 1).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(proxy.ws_url("/r")).await.unwrap();
        let mut say = async |text: &str| {
            ws.send(Message::text(text)).await.unwrap();
            ws.next().await.unwrap().unwrap();
        };
        say("before the reload").await;
        until_seen(&mut sub, b"before the reload").await;

        // Other [live] settings, same address: the subscriber stays and goes on.
        std::fs::write(
            &config,
            format!("{base}[live]\nlisten = \"127.0.0.1:0\"\nmax_clients = 2\nbuffer = \"2MiB\"\n"),
        )
        .unwrap();
        proxy.reload().await;
        eventually("reloaded", || !logs.lines_with(&["config reloaded"]).is_empty()).await;
        say("after the reload").await;
        until_seen(&mut sub, b"after the reload").await;
        assert_eq!(logs.lines_with(&["live stream: listening"]).len(), 1, "the same listener");

        // Another format: its stream would no longer parse, so it is let go; a new one
        // gets the new format from its first byte.
        std::fs::write(&config, format!("{base}[live]\nlisten = \"127.0.0.1:0\"\nformat = \"pcap\"\n")).unwrap();
        proxy.reload().await;
        eventually("reloaded again", || logs.lines_with(&["config reloaded"]).len() == 2).await;
        let mut rest = Vec::new();
        sub.read_to_end(&mut rest).await.unwrap();
        assert_eq!(logs.lines_with(&["subscriber gone", "format changed"]).len(), 1);
        let mut sub = TcpStream::connect(live).await.unwrap();
        let mut magic = [0u8; 4];
        sub.read_exact(&mut magic).await.unwrap();
        assert_eq!(magic, [0xd4, 0xc3, 0xb2, 0xa1], "classic pcap, little-endian");

        // Another address: a new listener; the old one's subscribers are let go.
        std::fs::write(&config, format!("{base}[live]\nlisten = \"127.0.0.2:0\"\n")).unwrap();
        proxy.reload().await;
        eventually("moved", || logs.lines_with(&["live stream: listening"]).len() == 2).await;
        let mut rest = Vec::new();
        sub.read_to_end(&mut rest).await.unwrap();
        assert!(TcpStream::connect(live).await.is_err(), "the old address is closed");
        let moved = addr_in(&logs.lines_with(&["live stream: listening"])[1]);
        let mut sub = TcpStream::connect(moved).await.unwrap();
        // (Joined before: the first subscriber and the classic pcap one.)
        eventually("joined the new one", || logs.lines_with(&["subscriber joined"]).len() == 3).await;
        say("at the new address").await;
        until_seen(&mut sub, b"at the new address").await;
        drop(ws);
        proxy.begin_shutdown().await;
        proxy.stopped().await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs root: Wireshark 4.0's only extcap folder is the global one"]
async fn the_extcap_interface_lists_in_tshark_and_decodes_the_live_sessions() {
    within(async {
        // What `make install-extcap` does, with this build: linked into the folder tshark names.
        let bin = env!("CARGO_BIN_EXE_wstap");
        let make = std::process::Command::new("make")
            .args(["-s", "-C", env!("CARGO_MANIFEST_DIR"), "link-extcap", &format!("BIN={bin}")])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&make.stdout).into_owned() + &String::from_utf8_lossy(&make.stderr);
        assert!(said.contains("linked"), "{said}");
        let interfaces = run("tshark", &["-D"]);
        assert!(interfaces.contains("wstap (wstap live capture"), "{interfaces}");
        let (_dir, file) = watch_live("pcapng", "live-extcap", Via::Extcap).await;
        assert_clean(&file, 2);
        assert_watched(&file);
    })
    .await;
}

#[tokio::test]
async fn past_max_clients_a_subscriber_is_closed_and_counted() {
    let (logs, _capturing) = Logs::capture();
    within(async {
        let dir = capture_dir("live-max");
        let toml = format!(
            "listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"ws://{}\"\n{}[live]\nlisten = \"127.0.0.1:0\"\n\
             max_clients = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            echo_upstream().await,
            capture_toml(&dir, "")
        );
        let proxy = Proxy::start(&toml).await;
        eventually("the stream listens", || !logs.lines_with(&["live stream: listening"]).is_empty()).await;
        let live = addr_in(&logs.lines_with(&["live stream: listening"])[0]);
        let mut first = TcpStream::connect(live).await.unwrap();
        let mut header = [0u8; 4];
        first.read_exact(&mut header).await.unwrap();
        assert_eq!(header, [0x0a, 0x0d, 0x0d, 0x0a], "a pcapng section header first");
        let mut second = TcpStream::connect(live).await.unwrap();
        assert_eq!(second.read(&mut [0u8; 16]).await.unwrap(), 0, "closed at once");
        assert_eq!(logs.lines_with(&["live stream: refused", "max_clients"]).len(), 1);
        let metrics =
            raw_exchange(proxy.admin.unwrap(), b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(metrics.contains("wstap_live_subscribers 1\n"), "{metrics}");
        assert!(metrics.contains("wstap_live_refused_total{reason=\"max_clients\"} 1\n"), "{metrics}");
        drop(first);
        proxy.begin_shutdown().await;
        proxy.stopped().await;
    })
    .await;
}

/// A section header block's type: the first bytes of a pcapng stream.
const PCAPNG: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// A daemon in-process with a capture, the admin endpoints and `[live]` as `live` says,
/// from a config file a reload reads again.
struct LiveDaemon {
    proxy: Proxy,
    config: std::path::PathBuf,
    /// The config without its `[live]` table.
    base: String,
    dir: Scratch,
}

impl LiveDaemon {
    /// Starts it and waits for the stream to listen (its `live stream: listening` line).
    async fn start(name: &str, live: &str, logs: &Logs) -> LiveDaemon {
        LiveDaemon::start_with(name, "", live, logs).await
    }

    /// As [`LiveDaemon::start`], with `capture` lines in its `[capture]`.
    async fn start_with(name: &str, capture: &str, live: &str, logs: &Logs) -> LiveDaemon {
        let dir = capture_dir(name);
        std::fs::create_dir_all(&*dir).unwrap();
        let config = dir.join("wstap.toml");
        let base = format!(
            "listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"ws://{}\"\n{}[admin]\nlisten = \"127.0.0.1:0\"\n",
            echo_upstream().await,
            capture_toml(&dir.join("files"), capture)
        );
        std::fs::write(&config, format!("{base}[live]\n{live}")).unwrap();
        let proxy = Proxy::start_file(&config).await;
        eventually("the stream listens", || !logs.lines_with(&["live stream: listening"]).is_empty()).await;
        LiveDaemon { proxy, config, base, dir }
    }

    /// The address of the `n`th listener it opened (`n` from 0).
    fn live(&self, logs: &Logs, n: usize) -> SocketAddr {
        addr_in(&logs.lines_with(&["live stream: listening"])[n])
    }

    fn admin(&self) -> SocketAddr {
        self.proxy.admin.unwrap()
    }

    /// Rewrites its `[live]` and reloads; returns once the reload is logged.
    async fn reload(&self, live: &str, logs: &Logs) {
        let before = logs.lines_with(&["config reloaded"]).len();
        std::fs::write(&self.config, format!("{}[live]\n{live}", self.base)).unwrap();
        self.proxy.reload().await;
        eventually("reloaded", || logs.lines_with(&["config reloaded"]).len() > before).await;
    }

    async fn stop(self) {
        self.proxy.begin_shutdown().await;
        self.proxy.stopped().await;
    }
}

/// Waits up to five seconds for the metric `line` (name and labels) to read `want`.
async fn until_metric(admin: SocketAddr, line: &str, want: u64) {
    let mut now = 0;
    for _ in 0..500 {
        now = metric(admin, line).await;
        if now == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{line}: {now}, not {want}, within 5 s");
}

/// Reads a stream's first four bytes: a pcapng one begins with a section header.
async fn assert_pcapng(sub: &mut (impl tokio::io::AsyncRead + Unpin)) {
    let mut magic = [0u8; 4];
    sub.read_exact(&mut magic).await.unwrap();
    assert_eq!(magic, PCAPNG, "a pcapng section header first");
}
