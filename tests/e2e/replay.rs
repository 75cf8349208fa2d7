//! Captures as fixtures: sessions recorded by the daemon are read back with the library
//! and the `sessions` command, replayed against a live upstream with `replay`, and served
//! to a live client with `mock`. Foreign captures (tcpdump, dumpcap, hand-made) decode
//! message for message; damaged files give errors, never panics.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use wstap_replay::{Dir, Kind};

use crate::capture::{capture_dir, capture_toml, the_files};
use crate::support::*;

const WSTAP: &str = env!("CARGO_BIN_EXE_wstap");

/// Runs `wstap args…` to the end: (exit code, stdout, stderr).
pub(crate) async fn wstap(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(WSTAP).args(args).output().await.unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

/// The client messages of the recorded session, as the test sends them.
fn conversation() -> Vec<Message> {
    vec![
        Message::text("héllo wörld"),
        Message::binary((0..=255u8).collect::<Vec<_>>()),
        Message::binary(noise(200 * 1024)),
        Message::text(r#"{"op":"time","at":1764000000123}"#),
    ]
}

/// Records one session through the daemon to an echo upstream; returns the capture.
pub(crate) async fn record(name: &str) -> (Scratch, PathBuf) {
    let dir = capture_dir(name);
    let proxy = Proxy::start(&config(echo_upstream().await, &capture_toml(&dir, ""))).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(proxy.ws_url("/chat?room=7")).await.unwrap();
    for m in conversation() {
        ws.send(m.clone()).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), m);
    }
    fragmented_round_trip(&mut ws).await;
    close_and_stop(ws, proxy).await;
    let file = the_files(&dir).remove(0);
    (dir, file)
}

/// An upstream that echoes, but upper-cases text and adds an extra message after the
/// third one: a new build that behaves differently.
async fn changed_upstream() -> std::net::SocketAddr {
    serve(|stream| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
        let mut n = 0;
        while let Some(Ok(msg)) = ws.next().await {
            n += 1;
            let reply = match msg {
                Message::Text(t) => Message::text(t.to_uppercase()),
                Message::Binary(b) => Message::Binary(b),
                _ => continue,
            };
            if ws.send(reply).await.is_err() || (n == 3 && ws.send(Message::text("surprise")).await.is_err()) {
                break;
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_captured_session_reads_back_message_for_message() {
    within(async {
        let (_dir, file) = record("replay-read").await;
        let rec = wstap_replay::open(&file).unwrap();
        assert!(rec.problems.is_empty(), "{:?}", rec.problems);
        // Both legs: client ↔ wstap and wstap ↔ upstream.
        assert_eq!(rec.sessions.len(), 2, "{:?}", rec.sessions);
        let mut want: Vec<(Kind, Vec<u8>)> = conversation()
            .into_iter()
            .map(|m| match m {
                Message::Text(t) => (Kind::Text, t.as_bytes().to_vec()),
                other => (Kind::Binary, other.into_data().to_vec()),
            })
            .collect();
        want.push((Kind::Text, b"fragmented".to_vec()));
        for s in &rec.sessions {
            assert_eq!((s.method.as_str(), s.path.as_str(), s.status), ("GET", "/chat?room=7", 101));
            for who in [Dir::Up, Dir::Down] {
                let got: Vec<_> = s
                    .messages
                    .iter()
                    .filter(|m| m.dir == who && m.kind != Kind::Close)
                    .map(|m| (m.kind, m.data.clone()))
                    .collect();
                assert_eq!(got, want, "session {} {who:?}", s.id);
            }
            assert_eq!(s.messages.iter().find(|m| m.data == b"fragmented").unwrap().frames, 3);
            assert_eq!(s.messages.last().unwrap().kind, Kind::Close);
            // In order: each echo follows its message.
            let order: Vec<Dir> = s.messages.iter().map(|m| m.dir).collect();
            assert!(order.chunks(2).all(|p| p == [Dir::Up, Dir::Down]), "{order:?}");
        }

        let (code, out, err) = wstap(&["sessions", file.to_str().unwrap(), "--messages"]).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("/chat?room=7") && out.contains("\"héllo wörld\"") && out.contains("0x000102"), "{out}");
        let (code, out, _) = wstap(&["sessions", file.to_str().unwrap(), "--json"]).await;
        assert_eq!(code, 0);
        let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(
            (first["messages_client"].as_u64(), first["messages_server"].as_u64()),
            (Some(6), Some(6)),
            "{first}"
        );
    })
    .await;
}

#[tokio::test]
async fn replay_matches_the_same_upstream_and_diffs_a_changed_one() {
    within(async {
        let (_dir, file) = record("replay-run").await;
        let f = file.to_str().unwrap();
        let same = format!("ws://{}", echo_upstream().await);
        let (code, out, err) = wstap(&["replay", f, "--session", "2", "--target", &same, "--speed", "max"]).await;
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(out.contains("MATCH: 6 sent; 6 of 6 expected matched, 0 different, 0 missing, 0 extra"), "{out}");
        // Recorded pacing is kept (at 50× here) and still matches.
        let (code, out, _) = wstap(&["replay", f, "--session", "1", "--target", &same, "--speed", "50"]).await;
        assert_eq!(code, 0, "{out}");

        let changed = format!("ws://{}", changed_upstream().await);
        let (code, out, _) = wstap(&["replay", f, "--session", "1", "--target", &changed, "--speed", "max"]).await;
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("#2 DIFFERENT at byte 0:"), "{out}");
        assert!(
            out.contains(r#"expected text "héllo wörld" (13 B)"#)
                && out.contains(r#"got      text "HÉLLO WÖRLD" (13 B)"#),
            "{out}"
        );
        assert!(out.contains("EXTRA: got text \"surprise\""), "{out}");
        assert!(out.contains("#8 DIFFERENT") && out.contains(r#"got      text "{\"OP\":\"TIME\""#), "{out}");
        assert!(out.contains("#10 DIFFERENT") && out.contains(r#"got      text "FRAGMENTED""#), "{out}");
        assert!(out.contains("MISMATCH: 6 sent; 3 of 6 expected matched, 3 different, 0 missing, 1 extra"), "{out}");

        // Masking what legitimately differs: letters, here; the added message is still one
        // too many.
        let (code, out, _) =
            wstap(&["replay", f, "--session", "1", "--target", &changed, "--speed", "max", "--ignore", "(?i)[a-zéö]"])
                .await;
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("6 of 6 expected matched, 0 different, 0 missing, 1 extra"), "{out}");

        // No session given: every one is replayed (both legs of the recording).
        let (code, out, err) = wstap(&["replay", f, "--target", &same, "--speed", "max"]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("replaying session 1") && out.contains("replaying session 2"), "{out}");
        assert!(out.contains("2 sessions: 2 matched, 0 did not"), "{out}");
        // A filter no session passes, and a target that is down: errors, exit 2.
        let (code, _, err) = wstap(&["replay", f, "--target", &same, "--path", "/nowhere"]).await;
        assert_eq!(code, 2);
        assert!(err.contains("none of the capture's 2 sessions passes the filters"), "{err}");
        let down = format!("ws://{}", closed_port().await);
        let (code, _, err) = wstap(&["replay", f, "--session", "1", "--target", &down]).await;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(&down), "{err}");
    })
    .await;
}

/// Starts `wstap mock` on a free port; returns the child and its ws:// (or wss://) URL.
pub(crate) async fn start_mock(file: &Path, extra: &[&str]) -> (tokio::process::Child, String) {
    let mut args = vec!["mock", file.to_str().unwrap(), "--listen", "127.0.0.1:0", "--once"];
    args.extend_from_slice(extra);
    let mut child =
        tokio::process::Command::new(WSTAP).args(&args).stdout(Stdio::piped()).kill_on_drop(true).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    let url = first.split_whitespace().find(|w| w.starts_with("ws://") || w.starts_with("wss://")).unwrap().to_string();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

#[tokio::test]
async fn mock_serves_the_recorded_server_and_reports_a_diverging_client() {
    within(async {
        let (_dir, file) = record("replay-mock").await;
        let (mut child, url) = start_mock(&file, &["--session", "1", "--speed", "max"]).await;
        assert!(url.ends_with("/chat?room=7"), "{url}");
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        for m in conversation() {
            ws.send(m.clone()).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), m, "the mock answers as recorded");
        }
        fragmented_round_trip(&mut ws).await;
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        assert_eq!(child.wait().await.unwrap().code(), Some(0));

        let (mut child, url) = start_mock(&file, &["--session", "1", "--speed", "max", "--wait", "2s"]).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        ws.send(Message::text("something else")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("héllo wörld"), "the recording goes on");
        drop(ws);
        assert_eq!(child.wait().await.unwrap().code(), Some(1), "divergence is reported");
    })
    .await;
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Foreign captures: tcpdump, dumpcap and a hand-made one, recorded as
/// scripts/fixtures/record.sh says (real python `websockets` peers on loopback).
const FOREIGN: &[(&str, usize)] = &[
    ("dumpcap-lo.pcapng", 70_000),
    ("tcpdump-lo-ipv6.pcap", 3000),
    ("tcpdump-any-sll.pcap", 3000),
    ("dumpcap-any-deflate.pcapng", 70_000),
    ("handmade-reordered.pcap", 3000),
];

#[test]
fn foreign_captures_decode_message_for_message() {
    for &(name, big) in FOREIGN {
        let rec = wstap_replay::open(fixture(name)).unwrap();
        assert!(rec.problems.is_empty(), "{name}: {:?}", rec.problems);
        assert_eq!(rec.sessions.len(), 1, "{name}");
        let s = &rec.sessions[0];
        assert!(s.path.starts_with("/fixture?tool="), "{name}: {}", s.path);
        assert_eq!(s.request_header("x-fixture"), Some("wstap"), "{name}");
        assert_eq!(s.request_header("sec-websocket-protocol"), Some("wstap.test"), "{name}");
        let deflate = name.contains("deflate");
        assert_eq!(s.deflate, deflate, "{name}");
        let big_text: String =
            (0..).map(|i| format!("{i:06},")).take(big / 7 + 1).collect::<String>()[..big].to_string();
        let text = |t: &str| (Kind::Text, t.as_bytes().to_vec());
        let mut want = Vec::new();
        for m in [
            text("hello from a real client"),
            (Kind::Binary, (0..=255u8).collect()),
            text(&big_text),
            text("fragmented"),
        ] {
            want.push((Dir::Up, m.clone()));
            want.push((Dir::Down, m));
        }
        want.push((Dir::Up, (Kind::Ping, b"are you there".to_vec())));
        want.push((Dir::Down, (Kind::Pong, b"are you there".to_vec())));
        want.push((Dir::Up, text("burst")));
        for t in ["burst", "b1", "b2", "b3", "b4", "b5"] {
            want.push((Dir::Down, text(t)));
        }
        let bye = (Kind::Close, [&1000u16.to_be_bytes()[..], b"bye"].concat());
        want.push((Dir::Up, bye.clone()));
        want.push((Dir::Down, bye));
        let got: Vec<_> = s.messages.iter().map(|m| (m.dir, (m.kind, m.data.clone()))).collect();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g == w,
                "{name}: message #{} is {:?} {} B, not {:?} {} B",
                i + 1,
                g.1 .0,
                g.1 .1.len(),
                w.1 .0,
                w.1 .1.len()
            );
        }
        // python's websockets ends a fragmented message with an empty final frame.
        assert_eq!(s.messages[6].frames, 4, "{name}: fragmented in three, then the FIN frame");
        assert!(s.messages.windows(2).all(|w| w[0].time <= w[1].time), "{name}: in time order");
        let compressed = s.messages.iter().filter(|m| m.compressed).count();
        assert_eq!(compressed > 0, deflate, "{name}: {compressed} compressed");
    }
}

#[test]
fn the_hand_made_capture_is_messy_and_still_reads_as_its_source() {
    let clean = wstap_replay::open(fixture("tcpdump-lo-ipv6.pcap")).unwrap();
    let messy = wstap_replay::open(fixture("handmade-reordered.pcap")).unwrap();
    let (c, m) = (&clean.sessions[0], &messy.sessions[0]);
    assert_eq!((c.duplicate_bytes, c.out_of_order), (0, 0));
    assert!(m.out_of_order >= 2, "segments came ahead of holes: {}", m.out_of_order);
    assert!(m.duplicate_bytes >= 2000, "retransmitted and overlapping bytes were dropped: {}", m.duplicate_bytes);
    assert_eq!(c.messages, m.messages, "the first copy of every byte won");
}

/// Mutations of every fixture — bytes flipped, cut short, spliced — read without a
/// panic; what cannot be read is an error or a problem naming its offset. Seeded, so a
/// failure repeats; WSTAP_MUTATIONS raises the count.
#[test]
fn damaged_captures_give_errors_not_panics() {
    let rounds: usize = std::env::var("WSTAP_MUTATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(150);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rand = move |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n.max(1) as u64) as usize
    };
    let mut names: Vec<&str> = FOREIGN.iter().map(|f| f.0).collect();
    names.push("golden-session.pcapng");
    let (mut errors, mut damaged) = (0, 0);
    for name in names {
        let original = std::fs::read(fixture(name)).unwrap();
        for _ in 0..rounds {
            let mut b = original.clone();
            match rand(4) {
                0 => b.truncate(rand(b.len())),
                1 => (0..1 + rand(8)).for_each(|_| {
                    let i = rand(b.len());
                    b[i] ^= 1 << rand(8);
                }),
                2 => {
                    // A plausible-looking length field somewhere: huge or zero.
                    let i = rand(b.len() - 4);
                    b[i..i + 4].copy_from_slice(if rand(2) == 0 { &[0xff; 4] } else { &[0; 4] });
                }
                _ => {
                    let (i, j) = (rand(b.len()), rand(b.len()));
                    let piece = b[j..(j + 1 + rand(64)).min(b.len())].to_vec();
                    b.splice(i..i, piece);
                }
            }
            let path = Path::new(name);
            match wstap_replay::read(&[(path, &b)]) {
                Err(e) => {
                    errors += 1;
                    assert!(e.to_string().contains("at offset"), "{e}");
                }
                Ok(rec) => {
                    let format = rec.problems.iter().filter(|p| p.contains("nothing after it was read")).count();
                    damaged += usize::from(format > 0);
                    assert!(rec
                        .problems
                        .iter()
                        .filter(|p| p.contains("nothing after"))
                        .all(|p| p.contains("at offset")));
                }
            }
        }
    }
    assert!(errors + damaged > 0, "some mutations must be caught");
}

#[test]
fn a_capture_started_after_the_handshake_still_yields_every_message() {
    let full = std::fs::read(fixture("tcpdump-lo-ipv6.pcap")).unwrap();
    let packets: Vec<_> =
        wstap_replay::capfile::Reader::new(&full[..]).unwrap().packets().map(Result::unwrap).collect();
    let switched = packets.iter().position(|p| p.data.windows(12).any(|w| w == b"HTTP/1.1 101")).unwrap();
    let late = [&full[..24], &full[packets[switched + 1].offset as usize..]].concat();
    let rec = wstap_replay::read(&[(Path::new("late.pcap"), &late)]).unwrap();
    let whole = wstap_replay::open(fixture("tcpdump-lo-ipv6.pcap")).unwrap();
    assert_eq!(rec.sessions.len(), 1);
    let s = &rec.sessions[0];
    assert_eq!((s.client, s.path.as_str()), (whole.sessions[0].client, ""));
    assert!(s.problems.iter().any(|p| p.contains("no handshake")), "{:?}", s.problems);
    assert_eq!(s.messages, whole.sessions[0].messages);
}

/// Each foreign fixture played against itself: `mock` as its server, `replay` as its
/// client. Both must find the other exactly as recorded — the deflate one included,
/// whose replay is uncompressed and compares with the inflated recording.
#[tokio::test]
async fn every_foreign_fixture_replays_against_its_own_mock() {
    within(async {
        for &(name, _) in FOREIGN {
            let file = fixture(name);
            let (mut mock, url) = start_mock(&file, &["--speed", "max"]).await;
            let (code, out, err) = wstap(&["replay", file.to_str().unwrap(), "--target", &url, "--speed", "max"]).await;
            assert_eq!(code, 0, "{name}: {out}\n{err}");
            assert!(
                out.contains("MATCH: 7 sent; 11 of 11 expected matched, 0 different, 0 missing, 0 extra"),
                "{name}: {out}"
            );
            assert_eq!(mock.wait().await.unwrap().code(), Some(0), "{name}: the mock saw the recorded client");
        }
    })
    .await;
}

#[test]
fn the_fixtures_have_what_they_claim() {
    // TCP timestamps and SACK-permitted on the SYNs, and a segment holding several frames.
    let tshark = |name: &str, filter: &str| crate::capture::fields(&fixture(name), filter, &["frame.number"]).len();
    assert!(tshark("dumpcap-lo.pcapng", "tcp.options.sack_perm && tcp.options.timestamp.tsval") >= 2);
    for &(name, _) in FOREIGN {
        let opcodes =
            crate::capture::tshark(&fixture(name), &["-Y", "websocket", "-T", "fields", "-e", "websocket.opcode"]);
        let coalesced = opcodes.lines().filter(|l| l.contains(',')).count();
        assert!(coalesced >= 1, "{name}: frames share a segment");
    }
    let (ipv6, sll) = (tshark("tcpdump-lo-ipv6.pcap", "ipv6"), tshark("tcpdump-any-sll.pcap", "sll"));
    assert!(ipv6 > 0 && sll > 0);
    assert!(tshark("dumpcap-any-deflate.pcapng", "sll.pkttype") > 0, "SLL2 carries the packet type");
}

#[test]
fn a_damaged_file_still_gives_the_sessions_before_the_damage() {
    let good = std::fs::read(fixture("dumpcap-lo.pcapng")).unwrap();
    let cut = std::fs::read(fixture("tcpdump-lo-ipv6.pcap")).unwrap();
    let cut = &cut[..cut.len() / 2];
    let rec = wstap_replay::read(&[(Path::new("good.pcapng"), &good), (Path::new("cut.pcap"), cut)]).unwrap();
    assert_eq!(rec.sessions.len(), 2);
    assert_eq!(rec.sessions[0].messages.len(), 19, "the intact session is whole");
    assert!(rec.sessions[0].problems.is_empty());
    let file_problem = rec.problems.iter().find(|p| p.starts_with("cut.pcap: at offset")).unwrap();
    assert!(file_problem.contains("cut short"), "{file_problem}");
    assert!(rec.sessions[1].messages.len() < 19, "the cut one has what the file holds");
}

/// A classic pcap (RAW IP) of `packets`, one microsecond apart.
fn raw_pcap(packets: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65535, 101] {
        out.extend(if v == 0x0004_0002 { [2, 0, 4, 0] } else { v.to_le_bytes() });
    }
    for (i, p) in packets.iter().enumerate() {
        for v in [1u32, i as u32, p.len() as u32, p.len() as u32] {
            out.extend(v.to_le_bytes());
        }
        out.extend_from_slice(p);
    }
    out
}

/// An IPv4 TCP segment from `from` (0: client 10.0.0.1:5000, 1: server 10.0.0.2:80).
fn segment(from: usize, seq: u32, ack: u32, syn: bool, payload: &[u8]) -> Vec<u8> {
    let (src, dst, sp, dp) =
        if from == 0 { ([10, 0, 0, 1], [10, 0, 0, 2], 5000, 80) } else { ([10, 0, 0, 2], [10, 0, 0, 1], 80, 5000) };
    let mut b = etherparse::PacketBuilder::ipv4(src, dst, 64).tcp(sp, dp, seq, 65535).ack(ack);
    if syn {
        b = b.syn();
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

/// `wstap sessions FILE --messages` with its address space capped at `mib`: (exit code,
/// stderr). An allocation past the cap aborts the process.
fn sessions_within(file: &Path, mib: u64) -> (i32, String) {
    let script = format!("ulimit -v {}; exec \"$0\" sessions \"$1\" --messages", mib * 1024);
    let out = std::process::Command::new("sh").args(["-c", &script, WSTAP, file.to_str().unwrap()]).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn holes_cost_what_was_captured_not_what_is_missing() {
    // A 60-hole stream in each direction, 64 MiB apart, each declared by the other side
    // acknowledging past it: a few KB of file that once asked for 7.5 GiB of zeros.
    let (c0, s0) = (1000u32, 5000u32);
    let mut packets =
        vec![segment(0, c0, 0, true, b""), segment(1, s0, c0 + 1, true, b""), segment(0, c0 + 1, s0 + 1, false, b"")];
    packets.push(segment(0, c0 + 1, s0 + 1, false, b"GET /x HTTP/1.1\r\n"));
    for k in 1..=60u32 {
        let jump = k.wrapping_mul(64 << 20);
        let (cs, ss) = ((c0 + 1).wrapping_add(jump), (s0 + 1).wrapping_add(jump));
        packets.push(segment(0, cs, ss, false, b"a"));
        packets.push(segment(1, ss, cs.wrapping_add(1), false, b"b"));
    }
    let scratch = scratch_dir("holes");
    let file = scratch.join("holes.pcap");
    let bytes = raw_pcap(&packets);
    assert!(bytes.len() < 16 * 1024, "{} bytes", bytes.len());
    std::fs::write(&file, &bytes).unwrap();
    let (code, stderr) = sessions_within(&file, 256);
    assert!(code == 0 || code == 1, "exit {code}: {stderr}");
    assert!(!stderr.contains("memory allocation"), "{stderr}");
}

/// The schema docs/replay.md gives for `kind`'s objects: key → (type, optional).
fn documented_schema(kind: &str) -> Vec<(String, String, bool)> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/replay.md")).unwrap();
    let table = doc.split(&format!("<!-- schema: {kind} -->")).nth(1).expect("the schema is in docs/replay.md");
    table
        .lines()
        .skip(3)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let (key, ty) = (cells[1].trim_matches('`').to_owned(), cells[2]);
            (key, ty.trim_end_matches('?').to_owned(), ty.ends_with('?'))
        })
        .collect()
}

/// Whether `v` is of a documented `ty` ("string", "number or null", …).
fn of_type(v: &serde_json::Value, ty: &str) -> bool {
    ty.split(" or ").any(|t| match t {
        "string" => v.is_string(),
        "number" => v.is_u64(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "null" => v.is_null(),
        other => panic!("docs/replay.md names an unknown type {other:?}"),
    })
}

/// `wstap sessions --json --messages` prints exactly the keys docs/replay.md lists, of
/// the types it gives, for every session and message of the foreign fixtures.
#[tokio::test]
async fn the_json_output_is_the_documented_schema() {
    let schemas = [("session", documented_schema("session")), ("message", documented_schema("message"))];
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in FOREIGN {
        let path = fixture(name);
        let (_, out, err) = wstap(&["sessions", path.to_str().unwrap(), "--json", "--messages"]).await;
        assert!(!out.is_empty(), "{name}: {err}");
        for line in out.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let kind = v["type"].as_str().unwrap();
            let (_, schema) = schemas.iter().find(|(k, _)| *k == kind).unwrap_or_else(|| panic!("type {kind}"));
            let object = v.as_object().unwrap();
            for key in object.keys() {
                assert!(schema.iter().any(|(k, ..)| k == key), "{name}: {kind} key {key:?} is not documented");
            }
            for (key, ty, optional) in schema {
                match object.get(key) {
                    Some(value) => assert!(of_type(value, ty), "{name}: {kind}.{key} = {value} is not {ty}"),
                    None => assert!(*optional, "{name}: {kind} has no {key:?}: {line}"),
                }
                if object.contains_key(key) {
                    seen.insert(format!("{kind}.{key}"));
                }
            }
        }
    }
    // Every documented key shows in some object of these captures (a gap's `lost` aside).
    for (kind, schema) in &schemas {
        for (key, ..) in schema.iter().filter(|(k, ..)| k != "lost") {
            assert!(seen.contains(&format!("{kind}.{key}")), "{kind}.{key} never printed");
        }
    }
}
