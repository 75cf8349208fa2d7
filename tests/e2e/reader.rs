//! The reader on captures of any origin and size: other projects' test captures read
//! message for message as tshark reads them, no session where there is no WebSocket,
//! tunnels opened, losses said, compressed files and standard input streamed, memory
//! that follows the sessions open rather than the file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use wstap_replay::{Dir, Kind, Session};
use wstap_wire::wsframe::Opcode;

use crate::capture::{run, tshark};
use crate::replay::wstap;
use crate::support::*;
use crate::synth;

const WSTAP: &str = env!("CARGO_BIN_EXE_wstap");

fn thirdparty(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/thirdparty").join(name)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Captures with WebSocket sessions: the sessions each holds, and what tshark needs to
/// see them (one has no handshake: tshark sees it only when told the port).
const WEBSOCKET: &[(&str, usize, &[&str])] = &[
    ("zeek-broker-websocket.pcap", 1, &[]),
    ("zeek-fragmented-http-reply.pcap", 1, &[]),
    ("zeek-reply-ping-coalesced.pcap", 1, &[]),
    ("zeek-oversized-close-frame.pcapng", 1, &[]),
    ("zeek-wstunnel-ssh.pcap", 2, &[]),
    ("suricata-websocket-compressed.pcap", 1, &[]),
    ("suricata-websocket-basic.pcap", 1, &[]),
    ("suricata-websocket-ping.pcap", 1, &[]),
    ("arkime-websocket.pcap", 1, &[]),
    ("ndpi-websocket.pcap", 1, &["-d", "tcp.port==12345,websocket"]),
];

/// Captures with TCP that is not WebSocket (TLS, AMQP, XMPP, SMB on port 80, STUN,
/// HTTP in VLANs and tunnels, a lone RST).
const NOT_WEBSOCKET: &[&str] = &[
    "ndpi-amqp.pcap",
    "ndpi-jabber.pcap",
    "arkime-smb-port80.pcap",
    "ndpi-stun_tcp_multiple_msgs_same_pkt.pcap",
    "ndpi-tls_port_80.pcapng",
    "arkime-twovlan.pcap",
    "zeek-single-rst.pcap",
    "zeek-vxlan-encapsulated-http.pcap",
    "arkime-gre-erspan-vxlan.pcap",
];

/// One message as tshark shows it: who sent it, its opcode, its frames, its payload
/// length over all of them, and its text when tshark shows one.
#[derive(Debug)]
struct Shown {
    dir: Dir,
    opcode: Opcode,
    frames: u32,
    len: u64,
    text: Option<String>,
}

/// tshark's messages in `file`, per client port (those of `clients`, the sender's or
/// the receiver's): its frames (several per packet included) joined into messages,
/// continuation frames into the message they continue.
fn tshark_messages(file: &Path, extra: &[&str], clients: &[u16]) -> Vec<(u16, Vec<Shown>)> {
    let sep = "\u{1f}";
    let mut args = extra.to_vec();
    args.extend(["-Y", "websocket", "-T", "fields", "-E", "occurrence=a"]);
    let aggregator = format!("aggregator={sep}");
    args.extend(["-E", &aggregator]);
    for f in [
        "tcp.srcport",
        "tcp.dstport",
        "websocket.opcode",
        "websocket.fin",
        "websocket.payload_length",
        "websocket.payload_length_ext_16",
        "websocket.payload_length_ext_64",
        "websocket.payload.text",
    ] {
        args.extend(["-e", f]);
    }
    let out = tshark(file, &args);
    let mut by_client: Vec<(u16, Vec<Shown>)> = Vec::new();
    for line in out.lines() {
        let cols: Vec<Vec<&str>> =
            line.split('\t').map(|c| if c.is_empty() { vec![] } else { c.split(sep).collect() }).collect();
        let num = |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("{s:?} in {line:?}"));
        let (src, dst) = (num(cols[0][0]) as u16, num(cols[1][0]) as u16);
        let (mut ext16, mut ext64, mut texts) = (cols[5].iter(), cols[6].iter(), cols[7].iter());
        for (opcode, length) in cols[2].iter().zip(&cols[4]) {
            let dir = if clients.contains(&src) { Dir::Up } else { Dir::Down };
            let client = if dir == Dir::Up { src } else { dst };
            let opcode = Opcode::from_bits(num(opcode) as u8);
            let len = match num(length) {
                126 => num(ext16.next().unwrap()),
                127 => num(ext64.next().unwrap()),
                n => n,
            };
            let text = (opcode == Opcode::Text).then(|| texts.next().map(|t| t.to_string())).flatten();
            let at = match by_client.iter().position(|(c, _)| *c == client) {
                Some(at) => at,
                None => {
                    by_client.push((client, Vec::new()));
                    by_client.len() - 1
                }
            };
            let messages = &mut by_client[at].1;
            // A continuation joins the last data message sent the same way.
            let open = messages.iter_mut().rev().find(|m| m.dir == dir && !m.opcode.is_control());
            match (opcode, open) {
                (Opcode::Continuation, Some(m)) => {
                    m.frames += 1;
                    m.len += len;
                }
                _ => messages.push(Shown { dir, opcode, frames: 1, len, text }),
            }
        }
    }
    by_client
}

fn opcode(kind: Kind) -> Opcode {
    match kind {
        Kind::Text => Opcode::Text,
        Kind::Binary => Opcode::Binary,
        Kind::Close => Opcode::Close,
        Kind::Ping => Opcode::Ping,
        Kind::Pong => Opcode::Pong,
        other => panic!("{other:?} has no opcode"),
    }
}

/// Our session's messages against tshark's, one direction at a time.
fn assert_same(name: &str, s: &Session, shown: &[Shown]) {
    for dir in Dir::BOTH {
        let ours: Vec<_> = s.messages.iter().filter(|m| m.dir == dir).collect();
        let theirs: Vec<_> = shown.iter().filter(|m| m.dir == dir).collect();
        assert_eq!(ours.len(), theirs.len(), "{name} {}: {ours:?}\nvs tshark {theirs:?}", s.id);
        for (i, (m, t)) in ours.iter().zip(&theirs).enumerate() {
            let at = format!("{name} session {} {dir:?} message #{}", s.id, i + 1);
            assert_eq!((opcode(m.kind), m.frames), (t.opcode, t.frames), "{at}");
            assert!(!m.incomplete, "{at}");
            if !m.compressed {
                assert_eq!(m.data.len() as u64, t.len, "{at}");
            }
            if let Some(text) = &t.text {
                assert_eq!(String::from_utf8_lossy(&m.data), *text, "{at}");
            }
        }
    }
}

#[test]
fn other_projects_captures_read_message_for_message_as_tshark_reads_them() {
    for &(name, sessions, extra) in WEBSOCKET {
        let rec = wstap_replay::open(thirdparty(name)).unwrap();
        assert_eq!(rec.sessions.len(), sessions, "{name}: {:?}", rec.problems);
        let clients: Vec<u16> = rec.sessions.iter().map(|s| s.client.port()).collect();
        let shown = tshark_messages(&thirdparty(name), extra, &clients);
        assert_eq!(shown.len(), sessions, "{name}: tshark's sessions");
        for s in &rec.sessions {
            let (_, messages) = shown
                .iter()
                .find(|(port, _)| *port == s.client.port())
                .unwrap_or_else(|| panic!("{name}: tshark has no session from {}", s.client));
            assert_same(name, s, messages);
        }
        // Sessions with their handshake are whole and clean; the one without says so.
        let damaged = rec.sessions.iter().any(|s| !s.problems.is_empty());
        assert_eq!(damaged, !extra.is_empty(), "{name}: {:?}", rec.problems);
    }
    let compressed = wstap_replay::open(thirdparty("suricata-websocket-compressed.pcap")).unwrap();
    assert!(compressed.sessions[0].deflate && compressed.sessions[0].messages.iter().all(|m| m.compressed));
}

#[test]
fn captures_without_websocket_give_no_session() {
    for name in NOT_WEBSOCKET {
        let rec = wstap_replay::open(thirdparty(name)).unwrap();
        assert!(rec.sessions.is_empty(), "{name}: {:?}", rec.sessions.iter().map(|s| s.client).collect::<Vec<_>>());
        assert!(rec.problems.is_empty(), "{name}: {:?}", rec.problems);
        let (code, stdout, _) = block_on(wstap(&["sessions", thirdparty(name).to_str().unwrap()]));
        assert_eq!((code, stdout.lines().count()), (0, 1), "{name}: the header line alone");
    }
    // A lone RST, and the TLS that tshark itself leaves undecoded on port 80.
    let rst = wstap_replay::open(thirdparty("zeek-single-rst.pcap")).unwrap();
    assert_eq!((rst.packets, rst.other_connections), (1, 1));
    let tls = wstap_replay::open(thirdparty("ndpi-tls_port_80.pcapng")).unwrap();
    assert_eq!(tls.tls_connections, 1);
    assert!(tls.notes.iter().any(|n| n.contains("Wireshark and tshark decrypt them")), "{:?}", tls.notes);
    assert!(!tls.notes.iter().any(|n| n.contains("capture.tls")), "the capture's words, not wstap's config");
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

#[test]
fn tunnels_are_opened_and_sessions_have_the_inner_addresses() {
    // A WebSocket Upgrade and its 101 inside GTP-U (a mobile network's capture).
    let gtp = wstap_replay::open(thirdparty("ndpi-http_origin_different_than_host.pcap")).unwrap();
    assert_eq!(gtp.sessions.len(), 1, "{:?}", gtp.problems);
    let s = &gtp.sessions[0];
    assert_eq!((s.client.ip().to_string(), s.status), ("10.140.206.74".to_string(), 101));
    assert!(s.path.starts_with("/?topreferer="), "{}", s.path);
    // HTTP inside VXLAN, and inside VXLAN inside ERSPAN inside GRE: the connections are
    // found (they are not WebSocket, so no session).
    for name in ["zeek-vxlan-encapsulated-http.pcap", "arkime-gre-erspan-vxlan.pcap"] {
        let rec = wstap_replay::open(thirdparty(name)).unwrap();
        assert!(rec.other_connections >= 1 && rec.skipped < rec.packets, "{name}: {rec:?}");
    }
}

/// A fixture's packets with the snap length cut to `snap` bytes.
fn snapped(name: &str, snap: u32, scratch: &Path) -> PathBuf {
    let out = scratch.join(format!("snap{snap}-{name}"));
    run("editcap", &["-s", &snap.to_string(), fixture(name).to_str().unwrap(), out.to_str().unwrap()]);
    out
}

#[test]
fn a_handshake_cut_by_the_snap_length_still_gives_the_session_and_says_so() {
    let scratch = scratch_dir("snaplen");
    let whole = wstap_replay::open(fixture("tcpdump-lo-ipv6.pcap")).unwrap();
    for snap in [300, 200] {
        let file = snapped("tcpdump-lo-ipv6.pcap", snap, &scratch);
        let rec = wstap_replay::open(&file).unwrap();
        assert_eq!(rec.sessions.len(), 1, "snap {snap}: {:?}", rec.problems);
        let s = &rec.sessions[0];
        assert!(s.problems.iter().any(|p| p.contains("not captured whole")), "snap {snap}: {:?}", s.problems);
        // Every message is there; those longer than the snap length are incomplete.
        assert_eq!(s.messages.len(), whole.sessions[0].messages.len(), "snap {snap}");
        for dir in Dir::BOTH {
            let of = |s: &Session| s.messages.iter().filter(|m| m.dir == dir).cloned().collect::<Vec<_>>();
            for (m, w) in of(s).iter().zip(&of(&whole.sessions[0])) {
                assert_eq!(m.kind, w.kind, "snap {snap}");
                assert!(m.data == w.data || m.incomplete, "snap {snap}: {m:?}");
            }
        }
        assert!(s.messages.iter().any(|m| m.incomplete), "snap {snap}: the long ones lost their tails");
        let (code, stdout, stderr) = block_on(wstap(&["sessions", file.to_str().unwrap()]));
        assert_eq!(code, 1, "a loss is a problem: {stderr}");
        assert!(stdout.contains("(damaged)") && stderr.contains("not captured whole"), "{stdout}{stderr}");
    }
}

#[test]
fn compressed_captures_and_standard_input_read_as_the_file_does() {
    let scratch = scratch_dir("compressed");
    let plain = fixture("dumpcap-any-deflate.pcapng");
    let (code, want, _) = block_on(wstap(&["sessions", "--messages", plain.to_str().unwrap()]));
    assert_eq!(code, 0);
    let bytes = std::fs::read(&plain).unwrap();
    let gz = scratch.join("capture.pcapng.gz");
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut z, &bytes).unwrap();
    std::fs::write(&gz, z.finish().unwrap()).unwrap();
    let (code, got, stderr) = block_on(wstap(&["sessions", "--messages", gz.to_str().unwrap()]));
    assert_eq!((code, got.as_str()), (0, want.as_str()), "gzip: {stderr}");
    // `tcpdump -w - | wstap sessions -`: a plain and a gzipped capture on standard input.
    for input in [&bytes, &std::fs::read(&gz).unwrap()] {
        let mut child = Command::new(WSTAP)
            .args(["sessions", "--messages", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.clone();
        let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert_eq!((out.status.code(), String::from_utf8(out.stdout).unwrap()), (Some(0), want.clone()));
    }
    // Not a capture, compressed or not: the error names the offset.
    let junk = scratch.join("junk.gz");
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut z, b"hello, this is no capture").unwrap();
    std::fs::write(&junk, z.finish().unwrap()).unwrap();
    let (code, _, stderr) = block_on(wstap(&["sessions", junk.to_str().unwrap()]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("at offset 0: not a pcap or pcapng file"), "{stderr}");
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

#[test]
fn sessions_are_handed_out_as_their_connections_end_not_at_the_end_of_the_file() {
    let capture = synth::closed_sessions(Vec::new(), 40, 1, 20, 2000).unwrap();
    let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let src = Counting { inner: &capture[..], read: read.clone() };
    let mut sessions = wstap_replay::stream_from("synth.pcap", src).unwrap();
    let first = sessions.next().unwrap();
    let at_first = read.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!((first.id.0, first.path.as_str(), first.messages.len()), (1, "/s/0", 42));
    assert!(at_first < capture.len() as u64 / 10, "{at_first} of {} bytes read for the first session", capture.len());
    let rest: Vec<Session> = sessions.by_ref().collect();
    assert_eq!(rest.len(), 39);
    assert!(rest.iter().all(|s| s.messages.len() == 42 && s.problems.is_empty()));
    let rec = sessions.into_recording();
    assert!(rec.sessions.is_empty() && rec.problems.is_empty(), "{:?}", rec.problems);

    // One long session, event by event: its messages come out as they complete.
    let capture = synth::closed_sessions(Vec::new(), 1, 1, 2000, 2000).unwrap();
    let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let src = Counting { inner: &capture[..], read: read.clone() };
    let mut events = wstap_replay::stream_from("long.pcap", src).unwrap().into_events();
    let Some(wstap_replay::Event::Opened(opened)) = events.next() else { panic!("the session opens first") };
    assert_eq!((opened.path.as_str(), opened.messages.len()), ("/s/0", 0));
    let Some(wstap_replay::Event::Message(id, first)) = events.next() else { panic!("then its messages") };
    let at_first = read.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!((id, first.dir, first.data.len()), (opened.id, Dir::Up, 2000));
    assert!(at_first < capture.len() as u64 / 10, "{at_first} of {} bytes read for the first message", capture.len());
    let mut tally = wstap_replay::Tally::default();
    tally.add(&first);
    let mut closed = None;
    for e in events.by_ref() {
        match e {
            wstap_replay::Event::Message(_, m) => tally.add(&m),
            wstap_replay::Event::Closed(s) => closed = Some(s),
            wstap_replay::Event::Opened(s) => panic!("one session only: {}", s.id),
        }
    }
    let closed = closed.expect("it closes at the end");
    assert!(closed.messages.is_empty() && closed.problems.is_empty(), "{:?}", closed.problems);
    assert_eq!(tally.messages, wstap_wire::PerDir::new(2001, 2001));
    assert_eq!(tally.close, wstap_wire::PerDir::new(Some(1000), Some(1000)));
}

#[test]
fn a_capture_larger_than_the_memory_allowed_reads_within_it() {
    // 96 MiB read with a 160 MiB address space (the binary's own mappings take much of
    // it): the whole file alone would take most of it, and once took three times the
    // file. Once as 96 sessions four at a time, once as a single session: a day-long
    // session is held as the frame in progress, not as what it carried.
    let scratch = scratch_dir("big");
    for (name, sessions, open, messages) in [("many", 96, 4, 64), ("one", 1, 1, 96 * 64)] {
        let file = scratch.join(format!("{name}.pcap"));
        let out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let out = synth::closed_sessions(out, sessions, open, messages, 8 * 1024).unwrap();
        out.into_inner().unwrap().sync_all().unwrap();
        let size = std::fs::metadata(&file).unwrap().len();
        assert!(size > 96 << 20, "{size}");
        let script = "ulimit -v 163840; exec \"$0\" sessions \"$1\"";
        let out = Command::new("sh").args(["-c", script, WSTAP, file.to_str().unwrap()]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout.lines().count(), 1 + sessions as usize, "{name}");
        let counts = format!("{:>5} {:>5}  1000/1000", messages + 1, messages + 1);
        assert!(stdout.lines().skip(1).all(|l| l.contains(&counts)), "{name}: {stdout}");
        std::fs::remove_file(&file).unwrap();
    }
}

/// The python peers of `peers/deflate.py`.
fn peers() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/peers/deflate.py")
}

/// A message as the python peers log it: (kind, bytes).
fn logged(line: &str) -> (String, Vec<u8>) {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let hex = v["hex"].as_str().unwrap();
    let bytes = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    (v["kind"].as_str().unwrap().to_string(), bytes)
}

fn client_messages(s: &Session) -> Vec<(String, Vec<u8>)> {
    s.messages
        .iter()
        .filter(|m| m.dir == Dir::Up && matches!(m.kind, Kind::Text | Kind::Binary))
        .map(|m| (m.kind.name().to_string(), m.data.clone()))
        .collect()
}

#[tokio::test]
async fn a_rotated_deflate_session_reads_whole_together_and_replays_exactly_in_parts() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    within(async {
        let scratch = scratch_dir("rotated-deflate");
        let log = scratch.join("received.jsonl");
        let mut server = tokio::process::Command::new("/usr/bin/python3")
            .args([peers().to_str().unwrap(), "server", log.to_str().unwrap()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
        let port: u16 = lines.next_line().await.unwrap().unwrap().parse().unwrap();
        let upstream: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let dir = crate::capture::capture_dir("rotated-deflate");
        let proxy = Proxy::start(&config(upstream, &crate::capture::capture_toml(&dir, ""))).await;
        let front = proxy.addr();
        let mut client = tokio::process::Command::new("/usr/bin/python3")
            .args([peers().to_str().unwrap(), "client", &proxy.ws_url("/feed?room=3")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdin = client.stdin.take().unwrap();
        let mut out = BufReader::new(client.stdout.take().unwrap()).lines();
        let mut sent = Vec::new();
        while let Some(line) = out.next_line().await.unwrap() {
            match line.strip_prefix("sent ") {
                Some(m) => sent.push(logged(m)),
                None => {
                    assert_eq!(line, "rotate");
                    let files = std::fs::read_dir(&dir).unwrap().count();
                    proxy.rotate().await; // SIGUSR1, mid-session
                    eventually("the rotation finished a file", || std::fs::read_dir(&dir).unwrap().count() > files)
                        .await;
                    stdin.write_all(b"go\n").await.unwrap();
                }
            }
        }
        assert!(client.wait().await.unwrap().success());
        assert_eq!(sent.len(), 12);
        proxy.begin_shutdown().await;
        proxy.stopped().await;
        let files = crate::capture::the_files(&dir);
        assert!(files.len() >= 3, "{files:?}");

        // Read together: one client-leg session, every message once, compressed.
        let rec = wstap_replay::open_all(&files).unwrap();
        assert!(rec.problems.is_empty(), "{:?}", rec.problems);
        let whole: Vec<_> = rec.sessions.iter().filter(|s| s.server == front).collect();
        assert_eq!(whole.len(), 1);
        let data = |m: &&wstap_replay::Message| m.dir == Dir::Up && m.kind != Kind::Close;
        assert!(whole[0].deflate && whole[0].messages.iter().filter(data).all(|m| m.compressed));
        assert!(client_messages(whole[0]) == sent, "read together: exactly what the client sent");

        // Each file alone: its part of the session, replayed; the server receives exactly
        // that part, and the parts add up to what the client sent: no priming message.
        std::fs::write(&log, "").unwrap();
        let mut received = Vec::new();
        for file in &files {
            let part = wstap_replay::open(file).unwrap();
            assert!(part.problems.is_empty(), "{}: {:?}", file.display(), part.problems);
            let Some(s) = part.sessions.iter().find(|s| s.server == front) else { continue };
            let args = ["replay", file.to_str().unwrap(), "--session", &s.id.to_string(), "--target"];
            let target = format!("ws://{upstream}");
            let (code, stdout, stderr) = crate::replay::wstap(&[&args[..], &[target.as_str()]].concat()).await;
            assert_eq!(code, 0, "{}: {stdout}{stderr}", file.display());
            let got: Vec<_> = std::fs::read_to_string(&log).unwrap().lines().map(logged).collect();
            std::fs::write(&log, "").unwrap();
            assert!(got == client_messages(s), "{}: the server got the part's messages", file.display());
            received.extend(got);
        }
        assert_eq!(received.len(), sent.len());
        assert!(received == sent, "the parts' replays sent exactly what the client sent");
        drop(server.kill().await);
    })
    .await;
}
