//! Micro-benchmark of the capture path alone: 64 KiB WebSocket messages, echoed (one
//! event each way, as the proxy reads them), through
//! `CaptureWriter` (framing, segmentation, headers, checksums, ACKs, pcapng blocks) into a
//! buffered sink that discards (`/dev/null`), on one core, as the writer thread does.
//! Prints message payload per second and synthesized packets per second, best of several
//! runs, for `capture.segment = "mss"` (1460-byte segments) and `"gro"`; then one
//! message streamed one way as 16 KiB chunks, 1460-byte segments.
//! `cargo bench --bench capture` (or `make bench-capture`).

use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use wstap::capture::{CaptureWriter, ConnId, Event, LegId, Opening, Processed, PureAcks, Scope};
use wstap::capture::{SectionInfo, Stats, Synthesis, What};
use wstap::config::{Legs, Segmentation};
use wstap::{Dir, Leg, PerDir};
use wstap_wire::wsframe::{encode_frame, first_byte, FrameHeader, Opcode};
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

/// A writer into `/dev/null` (buffered, as the writer thread's file is), as shipped
/// (credentials in the Upgrade request redacted), with a client leg whose session is open.
fn writer(segment: Segmentation, stats: &Stats) -> CaptureWriter<BufWriter<std::fs::File>> {
    let sink = std::fs::File::create("/dev/null").expect("/dev/null");
    let info =
        SectionInfo { application: "bench".into(), os: "bench".into(), hostname: "bench".into(), ..Default::default() };
    let synth = Synthesis {
        mss_ipv4: 1460,
        mss_ipv6: 1440,
        segment,
        acks: PureAcks::Written,
        display_port: wstap::config::DisplayPort::Real,
        redact: std::sync::Arc::new(wstap::config::Redact::defaults()),
        isn_seed: 1,
        rotate_wait: Duration::from_secs(5),
        budgets: Default::default(),
    };
    let legs = Legs { client: true, upstream: false };
    let mut w = CaptureWriter::new(BufWriter::with_capacity(256 * 1024, sink), &info, legs, synth).unwrap();
    let open = Opening {
        scope: Scope::Session,
        conn: ConnId(1),
        ..Opening::new(Leg::Client, "127.0.0.1:8080".parse().unwrap(), "127.0.0.1:40000".parse().unwrap(), "bench")
    };
    let ev = Event { time: Timestamp::from_nanos(1), leg: LegId(1), what: What::Open(Box::new(open)) };
    assert!(matches!(w.process(ev, stats).unwrap(), Processed::Done));
    w
}

/// One leg's events, in order: times and offsets each way.
struct Feed {
    time: Timestamp,
    offset: PerDir<u64>,
}

impl Feed {
    /// `bytes` going `dir`, the next event.
    fn data(&mut self, w: &mut CaptureWriter<BufWriter<std::fs::File>>, stats: &Stats, dir: Dir, bytes: bytes::Bytes) {
        self.time = self.time.after(Duration::from_nanos(1));
        let at = &mut self.offset[dir];
        let what = What::Data { dir, offset: *at, bytes: bytes.clone() };
        *at += bytes.len() as u64;
        let ev = Event { time: self.time, leg: LegId(1), what };
        assert!(matches!(w.process(ev, stats).unwrap(), Processed::Done));
    }
}

/// A frame of a `MESSAGE`-byte binary message, masked as a client sends it or not.
fn message_frame(mask: bool) -> bytes::Bytes {
    let payload: Vec<u8> = (0..MESSAGE).map(|i| (i * 7) as u8).collect();
    let first = first_byte(true, false, Opcode::Binary);
    bytes::Bytes::from(encode_frame(first, &payload, mask.then_some([0x11, 0x22, 0x33, 0x44])))
}

/// Payload bytes and packets written per second.
fn run(segment: Segmentation, load: Load) -> (f64, f64) {
    let stats = Stats::default();
    let mut w = writer(segment, &stats);
    let mut feed = Feed { time: Timestamp::from_nanos(1), offset: PerDir::default() };
    let upgrade = "GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let accept = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    feed.data(&mut w, &stats, Dir::Up, upgrade.as_bytes().to_vec().into());
    feed.data(&mut w, &stats, Dir::Down, accept.as_bytes().to_vec().into());
    // A masked binary message up (as a client sends it), the same unmasked down.
    let (up, down) = (message_frame(true), message_frame(false));
    let chunk = bytes::Bytes::from(vec![0x5a; CHUNK]);
    if load == Load::Stream {
        let head = FrameHeader::encode(first_byte(true, false, Opcode::Binary), (CHUNKS * CHUNK) as u64, None);
        feed.data(&mut w, &stats, Dir::Up, head.into());
    }
    let packets0 = stats.packets_written.load(std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    let payload = match load {
        Load::Echo => {
            for _ in 0..MESSAGES {
                feed.data(&mut w, &stats, Dir::Up, up.clone());
                feed.data(&mut w, &stats, Dir::Down, down.clone());
            }
            2 * MESSAGES * MESSAGE
        }
        Load::Stream => {
            for _ in 0..CHUNKS {
                feed.data(&mut w, &stats, Dir::Up, chunk.clone());
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
