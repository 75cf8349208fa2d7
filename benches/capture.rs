//! Micro-benchmark of the capture path alone (issue 16's goal 3): 64 KiB WebSocket
//! messages, echoed (one event each way, as the proxy reads them), through
//! `CaptureWriter` (framing, segmentation, headers, checksums, ACKs, pcapng blocks) into a
//! buffered sink that discards (`/dev/null`), on one core, as the writer thread does.
//! Prints message payload per second and synthesized packets per second, best of several
//! runs, for `capture.segment = "mss"` (1460-byte segments) and `"gro"`; then issue 7's
//! measure, for comparison with earlier figures: one message streamed one way as 16 KiB
//! chunks, 1460-byte segments.
//! `cargo bench --bench capture` (or `make bench-capture`).

use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use wstap::capture::{CaptureWriter, ConnId, Event, LegId, Opening, Processed, PureAcks, Scope};
use wstap::capture::{SectionInfo, Stats, Synthesis, What};
use wstap::config::{Legs, Segmentation};
use wstap::{Dir, Leg};
use wstap_wire::Timestamp;

/// A message's payload, and how many are echoed per run.
const MESSAGE: usize = 64 * 1024;
const MESSAGES: usize = 10_000;
/// A chunk, and how many are streamed per run.
const CHUNK: usize = 16 * 1024;
const CHUNKS: usize = 20_000;
const RUNS: usize = 5;

/// What is fed to the writer.
#[derive(Clone, Copy, PartialEq)]
enum Load {
    /// 64 KiB messages, each as one event up (masked) and one down.
    Echo,
    /// One long message up, as 16 KiB events.
    Stream,
}

/// Payload bytes and packets written per second.
fn run(segment: Segmentation, load: Load) -> (f64, f64) {
    let sink = std::fs::File::create("/dev/null").expect("/dev/null");
    let info = SectionInfo { application: "bench".into(), os: "bench".into(), hostname: "bench".into() };
    let synth = Synthesis {
        mss_ipv4: 1460,
        mss_ipv6: 1440,
        segment,
        acks: PureAcks::Written,
        display_port: wstap::config::DisplayPort::Real,
        // As shipped: credentials in the Upgrade request masked.
        redact: std::sync::Arc::new(wstap::config::Redact::defaults()),
        inflate: Default::default(),
        isn_seed: 1,
        rotate_wait: Duration::from_secs(5),
        history: Default::default(),
    };
    let legs = Legs { client: true, upstream: false };
    let mut w = CaptureWriter::new(BufWriter::with_capacity(256 * 1024, sink), &info, legs, synth).unwrap();
    let stats = Stats::default();
    let open = Opening {
        leg: Leg::Client,
        local: "127.0.0.1:8080".parse().unwrap(),
        remote: "127.0.0.1:40000".parse().unwrap(),
        comment: "bench".into(),
        scope: Scope::Session,
        conn: ConnId(1),
        label: String::new(),
        snap: Default::default(),
        tls_secrets: None,
    };
    let mut time = 1;
    let mut event = |w: &mut CaptureWriter<_>, what| {
        time += 1;
        let ev = Event { time: Timestamp::from_nanos(time), leg: LegId(1), what };
        assert!(matches!(w.process(ev, &stats).unwrap(), Processed::Done));
    };
    event(&mut w, What::Open(Box::new(open)));
    let mut offset = [0u64; 2];
    let mut data = |w: &mut CaptureWriter<_>, dir: Dir, bytes: bytes::Bytes| {
        let at = &mut offset[dir as usize];
        event(w, What::Data { dir, offset: *at, bytes: bytes.clone() });
        *at += bytes.len() as u64;
    };
    let upgrade = "GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let accept = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    data(&mut w, Dir::Up, upgrade.as_bytes().to_vec().into());
    data(&mut w, Dir::Down, accept.as_bytes().to_vec().into());
    // A masked binary message up (as a client sends it), the same unmasked down.
    let frame = |mask: bool| {
        let mut f = vec![0x82, if mask { 0xff } else { 0x7f }];
        f.extend((MESSAGE as u64).to_be_bytes());
        if mask {
            f.extend([0x11, 0x22, 0x33, 0x44]);
        }
        f.extend((0..MESSAGE).map(|i| (i * 7) as u8));
        bytes::Bytes::from(f)
    };
    let (up, down) = (frame(true), frame(false));
    let chunk = bytes::Bytes::from(vec![0x5a; CHUNK]);
    if load == Load::Stream {
        let mut head = vec![0x82, 0x7f];
        head.extend(((CHUNKS * CHUNK) as u64).to_be_bytes());
        data(&mut w, Dir::Up, head.into());
    }
    let packets0 = stats.packets_written.load(std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    let payload = match load {
        Load::Echo => {
            for _ in 0..MESSAGES {
                data(&mut w, Dir::Up, up.clone());
                data(&mut w, Dir::Down, down.clone());
            }
            2 * MESSAGES * MESSAGE
        }
        Load::Stream => {
            for _ in 0..CHUNKS {
                data(&mut w, Dir::Up, chunk.clone());
            }
            CHUNKS * CHUNK
        }
    };
    w.get_mut().unwrap().flush().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let packets = stats.packets_written.load(std::sync::atomic::Ordering::Relaxed) - packets0;
    (payload as f64 / secs, packets as f64 / secs)
}

fn main() {
    println!("capture path alone, into /dev/null, best of {RUNS}:");
    for (segment, load, what) in [
        (Segmentation::Mss, Load::Echo, "64 KiB messages echoed, segment = mss"),
        (Segmentation::Gro, Load::Echo, "64 KiB messages echoed, segment = gro"),
        (Segmentation::Mss, Load::Stream, "16 KiB chunks one way, mss"),
    ] {
        let (mut best_bps, mut best_pps) = (0.0f64, 0.0f64);
        for _ in 0..RUNS {
            let (bps, pps) = run(segment, load);
            (best_bps, best_pps) = (best_bps.max(bps), best_pps.max(pps));
        }
        println!("  {what:<40} {:>6.2} GB/s of payload  {:>5.2} M packets/s", best_bps / 1e9, best_pps / 1e6);
    }
}
