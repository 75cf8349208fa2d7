//! Property: what the capture writer writes, the reader reads back exactly, for any
//! chunking of the bytes, any rotation points and any dropped frames. Random cases from
//! fixed seeds (a failure names its seed); no daemon, the writer is fed events directly.

use std::collections::BTreeMap;

use wstap::capture::FileSink;
use wstap::capture::Stats;
use wstap::capture::What;
use wstap::capture::{Event, Gap, LegId};
use wstap::Dir;
use wstap_replay::Kind;

use crate::capture::{capture_dir, sink_settings, synthetic_session, the_files};

/// What one case expects of the client leg, per direction: (kind, payload or lost bytes).
type Expected = BTreeMap<Dir, Vec<(Kind, Vec<u8>, u64)>>;

#[test]
fn the_reader_reads_back_what_the_writer_wrote_for_any_chunking_rotation_and_drop() {
    for seed in 1..=100u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let sizes = [0usize, 1, 125, 126, 1400, 1461, 65_535, 65_536];
        let messages: Vec<Vec<u8>> = (0..1 + rng.usize(..10))
            .map(|_| {
                let len = if rng.bool() { sizes[rng.usize(..sizes.len())] } else { rng.usize(..20_000) };
                (0..len).map(|_| rng.u8(..)).collect()
            })
            .collect();
        let (client, upstream) = (1, 2);
        let events = synthetic_session(1, (client, upstream), &messages, 1_764_000_000_000_000_000, 1000);

        let dir = capture_dir(&format!("property-{seed}"));
        let mut sink = FileSink::new(sink_settings(&dir), wstap::capture::section_info("test"), seed);
        let stats = Stats::default();
        let mut expected: Expected = BTreeMap::new();
        let mut rotations = 0;
        let mut sent = wstap::PerDir::new(0usize, 0usize);
        for ev in events {
            let Event { time, leg, what } = ev;
            match what {
                What::Data { dir: d, offset, bytes } if offset > 0 => {
                    let frame = bytes.len() as u64;
                    if leg == LegId(client) {
                        let payload = messages[sent[d]].clone();
                        sent[d] += 1;
                        // One client-leg frame in five is dropped, as a full queue would.
                        if rng.usize(..5) == 0 {
                            expected.entry(d).or_default().push((Kind::Gap, Vec::new(), frame));
                            let what = What::Gap(Gap { dir: d, until: offset + frame, frames: 1, compressed: false });
                            sink.process(Event { time, leg, what }, &stats);
                            continue;
                        }
                        expected.entry(d).or_default().push((Kind::Binary, payload, 0));
                    }
                    // Any chunking: the frame in random pieces.
                    let mut at = 0usize;
                    while at < bytes.len() {
                        let n = 1 + rng.usize(..bytes.len() - at);
                        let piece = bytes.slice(at..at + n);
                        let what = What::Data { dir: d, offset: offset + at as u64, bytes: piece };
                        sink.process(Event { time, leg, what }, &stats);
                        at += n;
                    }
                }
                what => sink.process(Event { time, leg, what }, &stats),
            }
            // Any rotation point (taken at the next frame boundary).
            if rng.usize(..6) == 0 {
                sink.rotate_soon(time);
                rotations += 1;
            }
            sink.tick(time, &stats);
        }
        sink.finish(&stats);

        let files = the_files(&dir);
        let rec = wstap_replay::open_all(&files).unwrap();
        assert!(rec.problems.is_empty(), "seed {seed}: {:?}", rec.problems);
        // The client leg's parts (one per file it spans), in order, read as one.
        let mut got: Expected = BTreeMap::new();
        for s in rec.sessions.iter().filter(|s| s.client.port() == 40001) {
            for m in s.messages.iter().filter(|m| m.kind != Kind::Close) {
                got.entry(m.dir).or_default().push((m.kind, m.data.clone(), m.lost));
            }
        }
        // Frames lost back to back are one hole in the stream (or two, if a file ends
        // between them): compared with adjacent gaps merged.
        let merge_gaps = |e: &mut Expected| {
            for list in e.values_mut() {
                let mut merged: Vec<(Kind, Vec<u8>, u64)> = Vec::new();
                for m in list.drain(..) {
                    match (merged.last_mut(), m.0) {
                        (Some((Kind::Gap, _, lost)), Kind::Gap) => *lost += m.2,
                        _ => merged.push(m),
                    }
                }
                *list = merged;
            }
        };
        merge_gaps(&mut got);
        merge_gaps(&mut expected);
        let summary = |e: &Expected| -> Vec<(Dir, Kind, usize, u64)> {
            e.iter().flat_map(|(d, v)| v.iter().map(|(k, p, l)| (*d, *k, p.len(), *l))).collect()
        };
        let (m, f) = (messages.len(), files.len());
        let case = format!("seed {seed}: {m} messages, {rotations} rotations asked, {f} files");
        assert_eq!(summary(&got), summary(&expected), "{case}");
        for (d, want) in &expected {
            for (i, (w, g)) in want.iter().zip(&got[d]).enumerate() {
                let at = w.1.iter().zip(&g.1).position(|(a, b)| a != b);
                assert!(at.is_none(), "{case}: {d:?} message {i} ({} bytes) differs first at {at:?}", w.1.len());
            }
        }
    }
}
