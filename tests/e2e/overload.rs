//! Capture under overload: a queue far too small for the traffic. Traffic must stay
//! exact; the capture drops whole frames, shows each gap (sequence jump and comment), and
//! every frame it kept decodes, in Wireshark and in `wstap sessions`.

use std::collections::HashSet;
use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::capture::*;
use crate::support::*;

/// A 64 KiB text message that says which session and which message it is.
fn big_message(session: usize, i: usize) -> String {
    let mut m = format!("session {session} message {i} ");
    let fill = (b'a' + ((session * 7 + i) % 26) as u8) as char;
    m.extend(std::iter::repeat_n(fill, 64 * 1024 - m.len()));
    m
}

/// The drop count of each interface's statistics block in `file`.
fn isb_drops(file: &Path) -> Vec<u64> {
    use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption;
    use pcap_file::pcapng::{Block, PcapNgReader};
    let bytes = std::fs::read(file).unwrap();
    let mut r = PcapNgReader::new(&bytes[..]).unwrap();
    let mut drops = Vec::new();
    while let Some(block) = r.next_block() {
        if let Block::InterfaceStatistics(s) = block.unwrap() {
            drops.extend(s.options.iter().filter_map(|o| match o {
                InterfaceStatisticsOption::IsbIfDrop(n) => Some(*n),
                _ => None,
            }));
        }
    }
    drops
}

#[tokio::test]
async fn under_overload_whole_frames_are_dropped_and_every_kept_frame_decodes() {
    within(async {
        let dir = capture_dir("overload");
        let extra = "legs = [\"client\"]\nqueue_size = \"256KiB\"";
        let proxy = Proxy::start(&config(echo_upstream().await, &capture_toml(&dir, extra))).await;
        // Session 0 asks for a rotation (SIGUSR1) twice while the queue overflows: the
        // rotation's wait for frame boundaries must work across drops.
        let (rotate, mut rotations) = tokio::sync::mpsc::unbounded_channel();
        let sessions = (0..4)
            .map(|s| {
                let url = proxy.ws_url(&format!("/overload/{s}"));
                let rotate = rotate.clone();
                tokio::spawn(async move {
                    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                    let mut sent = Vec::new();
                    for i in 0..60 {
                        let m = big_message(s, i);
                        ws.send(Message::text(m.clone())).await.unwrap();
                        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(m.clone()), "traffic is exact");
                        sent.push(m);
                        if s == 0 && (i == 20 || i == 40) {
                            rotate.send(()).unwrap();
                        }
                    }
                    ws.close(None).await.unwrap();
                    while let Some(Ok(_)) = ws.next().await {}
                    sent
                })
            })
            .collect::<Vec<_>>();
        drop(rotate);
        let all = futures_util::future::join_all(sessions);
        tokio::pin!(all);
        let results = loop {
            tokio::select! {
                results = &mut all => break results,
                Some(()) = rotations.recv() => proxy.rotate().await,
            }
        };
        let mut sent = HashSet::new();
        for s in results {
            sent.extend(s.unwrap());
        }
        proxy.begin_shutdown().await;
        proxy.stopped().await;

        let files = the_files(&dir);
        assert!(files.len() >= 3, "two rotations: {files:?}");
        let (mut decoded, mut gaps) = (0, 0);
        for file in &files {
            let expert = tshark(file, &["-q", "-z", "expert"]);
            assert!(
                !expert.contains("Dissector for Websocket Opcode"),
                "bogus frames in {}:\n{expert}",
                file.display()
            );
            assert!(!expert.contains("Malformed"), "malformed packets in {}:\n{expert}", file.display());
            for row in fields(file, "websocket.opcode == 1", &["websocket.payload.text"]) {
                assert!(sent.contains(&row[0]), "a decoded frame is a message that was sent, exactly");
                decoded += 1;
            }
            let comments = fields(file, "frame.comment contains \"capture gap\"", &["frame.comment"]);
            assert!(comments.iter().all(|c| c[0].contains("WebSocket frame")), "{comments:?}");
            gaps += comments.len();
            let info = run("capinfos", &[file.to_str().unwrap()]);
            assert!(info.contains("Number of stat entries = 1"), "{info}");
        }
        assert!(gaps > 0, "the queue was too small for this traffic: something must have been dropped");
        assert!(decoded > 0, "and something kept");
        assert!(files.iter().flat_map(|f| isb_drops(f)).sum::<u64>() > 0, "the statistics blocks count the drops");

        // wstap's own reader: no damage, the gaps listed with their sizes, every message
        // it decodes exactly one that was sent.
        let rec = wstap_replay::open_all(&files).unwrap();
        assert!(rec.problems.is_empty(), "{:?}", rec.problems);
        let (mut listed_gaps, mut after_a_gap) = (0, 0);
        for s in &rec.sessions {
            let mut seen_gap = wstap::PerDir::new(false, false);
            for m in &s.messages {
                match m.kind {
                    wstap_replay::Kind::Gap => {
                        assert!(m.lost > 0);
                        listed_gaps += 1;
                        seen_gap[m.dir] = true;
                    }
                    wstap_replay::Kind::Text => {
                        assert!(sent.contains(std::str::from_utf8(&m.data).unwrap()), "exact payload");
                        after_a_gap += usize::from(seen_gap[m.dir]);
                    }
                    _ => {}
                }
            }
        }
        assert!(listed_gaps > 0, "the gaps are listed as gaps");
        assert!(after_a_gap > 0, "messages after a gap decode");
    })
    .await;
}
