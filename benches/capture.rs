//! Micro-benchmark of the capture path alone (issue 7): data events through
//! `CaptureWriter` (segmentation, headers, checksums, pcapng blocks) into a buffered file,
//! as the writer thread does. Prints synthesized packets per second and payload bytes per
//! second, best of several runs. `cargo bench --bench capture` (or `make bench-capture`).

use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use wstap::config::Legs;
use wstap::internals::SectionInfo;
use wstap::internals::Stats;
use wstap::internals::{CaptureWriter, Step, Synthesis};
use wstap::internals::{Event, What};
use wstap::Opening;
use wstap::{Dir, Leg};

/// Payload per data event: 16 KiB (a large read; the proxy reads up to 64 KiB at a time),
/// i.e. 12 segments of 1460 bytes.
const CHUNK: usize = 16 * 1024;
const EVENTS: usize = 20_000;
const RUNS: usize = 5;

fn run(acks: bool) -> (f64, f64) {
    let sink = std::fs::File::create("/dev/null").expect("/dev/null");
    let info = SectionInfo { application: "bench".into(), os: "bench".into(), hostname: "bench".into() };
    let synth = Synthesis {
        mss_ipv4: 1460,
        mss_ipv6: 1440,
        acks,
        display_port: wstap::config::DisplayPort::Real,
        redact: Default::default(),
        inflate: Default::default(),
        isn_seed: 1,
        rotate_wait: Duration::from_secs(5),
        history: Default::default(),
    };
    let legs = Legs { client: true, upstream: true };
    let mut w = CaptureWriter::new(BufWriter::with_capacity(256 * 1024, sink), &info, legs, synth).unwrap();
    let stats = Stats::default();
    let open = Opening {
        leg: Leg::Client,
        local: "127.0.0.1:8080".parse().unwrap(),
        remote: "127.0.0.1:40000".parse().unwrap(),
        comment: "bench".into(),
        session: true,
        session_id: 1,
        label: String::new(),
        snap: Default::default(),
        tls_secrets: None,
    };
    w.process(Event { time: 1, leg: 1, what: What::Open(Box::new(open)) }, &stats).unwrap();
    let head = b"GET / HTTP/1.1\r\n\r\n";
    w.process(
        Event { time: 2, leg: 1, what: What::Data { dir: Dir::Up, offset: 0, bytes: head.to_vec().into() } },
        &stats,
    )
    .unwrap();
    // One binary frame header, then its payload as a stream of chunks.
    let mut first = vec![0x82, 0x7f];
    first.extend(((EVENTS * CHUNK) as u64).to_be_bytes());
    let payload = bytes::Bytes::from(vec![0x5a; CHUNK]);
    let mut offset = head.len() as u64;
    w.process(
        Event { time: 3, leg: 1, what: What::Data { dir: Dir::Up, offset, bytes: first.clone().into() } },
        &stats,
    )
    .unwrap();
    offset += first.len() as u64;
    let packets0 = stats.packets_written.load(std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    for i in 0..EVENTS {
        let ev =
            Event { time: 4 + i as u64, leg: 1, what: What::Data { dir: Dir::Up, offset, bytes: payload.clone() } };
        assert!(matches!(w.process(ev, &stats).unwrap(), Step::Done));
        offset += CHUNK as u64;
    }
    w.get_mut().unwrap().flush().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let packets = stats.packets_written.load(std::sync::atomic::Ordering::Relaxed) - packets0;
    (packets as f64 / secs, (EVENTS * CHUNK) as f64 / secs)
}

fn main() {
    println!("capture path alone: {EVENTS} events of {CHUNK} bytes (1460-byte segments), best of {RUNS}");
    for acks in [false, true] {
        let (mut best_pps, mut best_bps) = (0.0f64, 0.0f64);
        for _ in 0..RUNS {
            let (pps, bps) = run(acks);
            (best_pps, best_bps) = (best_pps.max(pps), best_bps.max(bps));
        }
        println!("  acks={acks:<5}  {:>8.2} M packets/s  {:>8.1} MB/s payload", best_pps / 1e6, best_bps / 1e6);
    }
}
