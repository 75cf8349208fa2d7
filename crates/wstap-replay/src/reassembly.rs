//! TCP reassembly: segments, in capture order, become each connection's two byte streams,
//! interleaved in the order their bytes became readable. Out-of-order segments wait for
//! the bytes before them; retransmitted and overlapping bytes are dropped, the first copy
//! captured winning; a connection seen without its SYN is picked up at its first segment;
//! bytes the capture missed become explicit [`Readable::Gap`]s — never glued over. Pure.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use crate::dissect::Segment;
use wstap_wire::dir::{Dir, PerDir};
use wstap_wire::Timestamp;

/// What became readable in one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readable {
    /// Bytes, in stream order.
    Data(Vec<u8>),
    /// This many bytes were on the wire but not in the capture.
    Gap(u64),
    /// The sender's end of stream.
    Fin,
    /// The sender reset the connection.
    Rst,
}

/// One step of a connection's conversation: `from` is `Up` for what `Reassembled::a` sent, `Down`
/// for what `Reassembled::b` sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Who sent it: `Up` for `a`, `Down` for `b`.
    pub from: Dir,
    /// When it became readable: the capture time of the segment that completed it.
    pub time: Timestamp,
    /// What became readable.
    pub what: Readable,
}

/// A reassembled TCP connection. `a` sent the SYN when the capture saw one; otherwise it
/// is the sender of the first segment seen.
#[derive(Debug, Clone)]
pub struct Reassembled {
    /// The opener (see above).
    pub a: SocketAddr,
    /// The other end.
    pub b: SocketAddr,
    /// When the capture first saw it.
    pub first_seen: Timestamp,
    /// The capture began after the connection did (no SYN from `a`).
    pub midstream: bool,
    /// What each end sent, in capture order.
    pub deliveries: Vec<Delivery>,
    /// Bytes seen again (retransmissions and overlaps) and dropped.
    pub duplicate_bytes: u64,
    /// Segments that arrived ahead of a hole and waited.
    pub out_of_order: u64,
}

/// Bytes waiting for a hole to fill, per direction, beyond which the hole is given up on.
const MAX_PENDING: usize = 8 << 20;

#[derive(Default)]
struct Half {
    isn: Option<u32>,
    started: bool,
    /// The next byte expected, as a sequence number and as a stream offset.
    next_seq: u32,
    next: u64,
    pending: BTreeMap<u64, (Timestamp, Vec<u8>)>,
    pending_bytes: usize,
    fin_at: Option<u64>,
    done: bool,
    /// The furthest stream offset the other end acknowledged: bytes before it that
    /// never showed were lost by the capture, even with nothing after them.
    acked_to: u64,
}

impl Half {
    /// The stream offset of sequence number `seq`, taken as the nearest one to `next`.
    fn offset(&self, seq: u32) -> i64 {
        self.next as i64 + i64::from(seq.wrapping_sub(self.next_seq) as i32)
    }
}

struct Live {
    conn: Reassembled,
    halves: PerDir<Half>,
}

/// Feeds segments in capture order; [`Reassembler::finish`] returns the connections.
#[derive(Default)]
pub struct Reassembler {
    by_key: HashMap<(SocketAddr, SocketAddr), usize>,
    live: Vec<Live>,
}

fn key(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

impl Reassembler {
    /// No connections yet.
    pub fn new() -> Reassembler {
        Reassembler::default()
    }

    /// One segment, in capture order.
    pub fn push(&mut self, time: Timestamp, s: &Segment<'_>) {
        let k = key(s.src, s.dst);
        let reuse = self.by_key.get(&k).copied().filter(|&i| {
            let l = &self.live[i];
            let h = &l.halves[l.from(s)];
            // A fresh SYN on a finished tuple, or with another ISN, is a new connection.
            let closed = l.halves.iter().all(|(_, h)| h.done) || l.halves.iter().any(|(_, h)| h.fin_at.is_some());
            !(s.syn && s.ack.is_none() && (closed || h.isn.is_some_and(|isn| isn != s.seq)))
        });
        let i = reuse.unwrap_or_else(|| {
            let (a, b) = if s.syn && s.ack.is_some() { (s.dst, s.src) } else { (s.src, s.dst) };
            let conn = Reassembled {
                a,
                b,
                first_seen: time,
                midstream: false,
                deliveries: Vec::new(),
                duplicate_bytes: 0,
                out_of_order: 0,
            };
            if let Some(old) = self.by_key.insert(k, self.live.len()) {
                self.live[old].flush(Some(time));
            }
            self.live.push(Live { conn, halves: Default::default() });
            self.live.len() - 1
        });
        self.live[i].segment(time, s);
    }

    /// Ends every stream: what still waits for a hole is delivered after a gap.
    pub fn finish(mut self) -> Vec<Reassembled> {
        for l in &mut self.live {
            l.flush(None);
        }
        self.live.into_iter().map(|l| l.conn).collect()
    }
}

impl Live {
    /// Which way `s` goes: `Up` if `a` sent it.
    fn from(&self, s: &Segment<'_>) -> Dir {
        if self.conn.a == s.src {
            Dir::Up
        } else {
            Dir::Down
        }
    }

    fn segment(&mut self, ts: Timestamp, s: &Segment<'_>) {
        let from = self.from(s);
        let h = &mut self.halves[from];
        if h.done {
            return;
        }
        let mut seq = s.seq;
        if s.syn {
            h.isn.get_or_insert(s.seq);
            seq = seq.wrapping_add(1);
        }
        if !h.started {
            h.started = true;
            h.next_seq = seq;
            if from == Dir::Up && !s.syn {
                self.conn.midstream = true;
            }
        }
        let start = h.offset(seq);
        if !s.payload.is_empty() {
            self.insert(from, ts, start, s.payload);
        }
        if s.fin {
            let h = &mut self.halves[from];
            let at = (start + s.payload.len() as i64).max(h.next as i64) as u64;
            h.fin_at.get_or_insert(at);
        }
        if let Some(ack) = s.ack {
            self.acked(from.reverse(), ts, ack);
        }
        self.drain(from, ts);
        if s.rst {
            self.flush(Some(ts));
            self.conn.deliveries.push(Delivery { from, time: ts, what: Readable::Rst });
        }
    }

    /// Queues `data` at stream offset `start`, keeping only bytes not seen before.
    fn insert(&mut self, from: Dir, ts: Timestamp, start: i64, data: &[u8]) {
        let h = &mut self.halves[from];
        let end = start + data.len() as i64;
        let mut at = start.max(h.next as i64);
        self.conn.duplicate_bytes += (at.min(end) - start).max(0) as u64;
        // Cut around what already waits: earlier copies win.
        let mut pieces = Vec::new();
        while at < end {
            let covering = h.pending.range(..=at as u64).next_back().map(|(&o, (_, d))| o + d.len() as u64);
            if let Some(covered_to) = covering.filter(|&c| c > at as u64) {
                let skip = (covered_to as i64).min(end);
                self.conn.duplicate_bytes += (skip - at) as u64;
                at = skip;
                continue;
            }
            let next_start = h.pending.range(at as u64 + 1..).next().map_or(end, |(&o, _)| (o as i64).min(end));
            pieces.push((at as u64, data[(at - start) as usize..(next_start - start) as usize].to_vec()));
            at = next_start;
        }
        if pieces.first().is_some_and(|(o, _)| *o > h.next) {
            self.conn.out_of_order += 1;
        }
        for (o, d) in pieces {
            h.pending_bytes += d.len();
            h.pending.insert(o, (ts, d));
        }
        while self.halves[from].pending_bytes > MAX_PENDING {
            self.gap_to_pending(from, ts);
            self.drain(from, ts);
        }
    }

    /// The other end acknowledged up to `ack`: bytes before it that the capture never
    /// showed, while later ones wait, were lost by the capture, not the network.
    fn acked(&mut self, from: Dir, ts: Timestamp, ack: u32) {
        let h = &mut self.halves[from];
        if !h.started {
            return;
        }
        // Nearest to `next` (a 31-bit window either way), so never an absurd jump.
        h.acked_to = h.acked_to.max(h.offset(ack).max(0) as u64);
        if h.pending.is_empty() {
            return;
        }
        if h.offset(ack) > h.next as i64 {
            self.gap_to_pending(from, ts);
            self.drain(from, ts);
        }
    }

    fn gap_to_pending(&mut self, from: Dir, ts: Timestamp) {
        let h = &mut self.halves[from];
        let Some((&first, _)) = h.pending.first_key_value() else { return };
        let n = first - h.next;
        if n > 0 {
            h.next = first;
            h.next_seq = h.next_seq.wrapping_add(n as u32);
            self.conn.deliveries.push(Delivery { from, time: ts, what: Readable::Gap(n) });
        }
    }

    /// Delivers whatever is now contiguous, then the FIN if its turn has come.
    fn drain(&mut self, from: Dir, ts: Timestamp) {
        let h = &mut self.halves[from];
        while let Some(entry) = h.pending.first_entry() {
            if *entry.key() > h.next {
                break;
            }
            let (o, (_, d)) = entry.remove_entry();
            h.pending_bytes -= d.len();
            let skip = (h.next - o) as usize;
            if skip < d.len() {
                let d = d[skip..].to_vec();
                h.next += d.len() as u64;
                h.next_seq = h.next_seq.wrapping_add(d.len() as u32);
                self.conn.deliveries.push(Delivery { from, time: ts, what: Readable::Data(d) });
            }
        }
        if h.fin_at.is_some_and(|f| f <= h.next) && !h.done {
            h.done = true;
            self.conn.deliveries.push(Delivery { from, time: ts, what: Readable::Fin });
        }
    }

    /// Gives up on every hole: pending bytes follow gaps; a FIN beyond them too.
    /// `now`: when the flush happens, if it happens at a segment (else at the end of
    /// the capture, when each pending piece's own time is used).
    fn flush(&mut self, now: Option<Timestamp>) {
        let ts = now.unwrap_or(Timestamp::EPOCH);
        for from in Dir::BOTH {
            let at = |h: &Half| now.unwrap_or_else(|| h.pending.values().map(|(t, _)| *t).max().unwrap_or_default());
            while !self.halves[from].pending.is_empty() {
                let t = at(&self.halves[from]);
                self.gap_to_pending(from, t);
                self.drain(from, t);
            }
            let h = &mut self.halves[from];
            // Acknowledged one past the last byte shown, and nothing after: that one is
            // the FIN the capture missed (a FIN takes a sequence number), not a byte.
            if h.fin_at.is_none() && !h.done && h.acked_to == h.next + 1 {
                h.fin_at = Some(h.next);
            }
            // Acknowledged, never shown, and nothing after: a gap at the end.
            if h.fin_at.is_none() && !h.done && h.acked_to > h.next {
                let t = self.conn.deliveries.last().map_or(self.conn.first_seen, |e| e.time).max(ts);
                self.conn.deliveries.push(Delivery { from, time: t, what: Readable::Gap(h.acked_to - h.next) });
                h.next = h.acked_to;
            }
            if let (Some(f), false) = (h.fin_at, h.done) {
                let t = self.conn.deliveries.last().map_or(self.conn.first_seen, |e| e.time).max(ts);
                if f > h.next {
                    self.conn.deliveries.push(Delivery { from, time: t, what: Readable::Gap(f - h.next) });
                }
                h.next = f;
                h.done = true;
                self.conn.deliveries.push(Delivery { from, time: t, what: Readable::Fin });
            }
            self.halves[from].done = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "10.0.0.1:4000";
    const S: &str = "10.0.0.2:80";

    fn seg(src: &str, seq: u32, flags: &str, payload: &'static [u8]) -> Segment<'static> {
        let (src, dst): (SocketAddr, SocketAddr) =
            if src == C { (C.parse().unwrap(), S.parse().unwrap()) } else { (S.parse().unwrap(), C.parse().unwrap()) };
        Segment {
            src,
            dst,
            seq,
            ack: None,
            syn: flags.contains('S'),
            fin: flags.contains('F'),
            rst: flags.contains('R'),
            payload,
        }
    }

    fn run(segs: &[Segment<'static>]) -> Vec<Reassembled> {
        let mut r = Reassembler::new();
        for (t, s) in segs.iter().enumerate() {
            r.push(Timestamp::from_nanos(t as u64), s);
        }
        r.finish()
    }

    fn stream(c: &Reassembled, from: Dir) -> Vec<Readable> {
        c.deliveries.iter().filter(|e| e.from == from).map(|e| e.what.clone()).collect()
    }

    /// Property: however a stream is cut into segments, reordered, duplicated and
    /// overlapped (retransmissions carry the same bytes), reassembly gives it back whole,
    /// with no gap.
    #[test]
    fn any_order_duplication_and_overlap_give_the_same_stream() {
        for seed in 0..300 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let len = rng.usize(..6000);
            let data: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(len).collect();
            let isn = rng.u32(..); // sequence numbers may wrap
            let mut ranges: Vec<(usize, usize)> = Vec::new();
            let max = 1 + rng.usize(..1500);
            let mut at = 0;
            while at < data.len() {
                let end = at + 1 + rng.usize(..max.min(data.len() - at));
                ranges.push((at, end));
                at = end;
            }
            for _ in 0..rng.usize(..=ranges.len()) {
                // A retransmission: a random span of what was sent.
                let a = rng.usize(..data.len());
                let b = a + 1 + rng.usize(..data.len() - a);
                ranges.push((a, b));
            }
            rng.shuffle(&mut ranges);
            let client: SocketAddr = C.parse().unwrap();
            let server: SocketAddr = S.parse().unwrap();
            let syn = Segment {
                src: client,
                dst: server,
                seq: isn,
                ack: None,
                syn: true,
                fin: false,
                rst: false,
                payload: b"",
            };
            let mut r = Reassembler::new();
            r.push(Timestamp::EPOCH, &syn);
            for (t, (a, b)) in ranges.iter().enumerate() {
                let seq = isn.wrapping_add(1).wrapping_add(*a as u32);
                let s = Segment {
                    src: client,
                    dst: server,
                    seq,
                    ack: None,
                    syn: false,
                    fin: false,
                    rst: false,
                    payload: &data[*a..*b],
                };
                r.push(Timestamp::from_nanos(1 + t as u64), &s);
            }
            let conns = r.finish();
            let mut got = Vec::new();
            for e in conns.iter().flat_map(|c| &c.deliveries) {
                match &e.what {
                    Readable::Data(d) => got.extend_from_slice(d),
                    other => panic!("seed {seed}: {other:?}"),
                }
            }
            assert!(got == data, "seed {seed}: {} bytes back of {}", got.len(), data.len());
        }
    }

    #[test]
    fn out_of_order_retransmitted_and_overlapping_segments() {
        let c = run(&[
            seg(C, 99, "S", b""),
            seg(S, 499, "S", b""),
            seg(C, 106, "", b"world"), // early
            seg(C, 100, "", b"hello "),
            seg(C, 100, "", b"HELLO "), // retransmission: dropped
            seg(C, 109, "", b"LD!!"),   // overlaps "ld" then adds "!!"
            seg(C, 114, "", b"?"),      // ahead again
            seg(C, 114, "", b"X"),      // same start: the first copy wins
            seg(C, 113, "", b"#"),      // fills the hole exactly
            seg(C, 115, "F", b""),
        ]);
        assert_eq!(c.len(), 1);
        let text: Vec<u8> = stream(&c[0], Dir::Up)
            .into_iter()
            .filter_map(|p| if let Readable::Data(d) = p { Some(d) } else { None })
            .flatten()
            .collect();
        assert_eq!(text, b"hello world!!#?");
        assert_eq!(stream(&c[0], Dir::Up).last(), Some(&Readable::Fin));
        assert!(!c[0].midstream);
        assert_eq!(c[0].out_of_order, 2);
        assert_eq!(c[0].duplicate_bytes, 6 + 2 + 1);
    }

    #[test]
    fn a_lost_segment_is_a_gap_not_glue() {
        let c = run(&[seg(C, 0, "S", b""), seg(C, 1, "", b"abc"), seg(C, 7, "F", b"ghi")]);
        assert_eq!(
            stream(&c[0], Dir::Up),
            [Readable::Data(b"abc".to_vec()), Readable::Gap(3), Readable::Data(b"ghi".to_vec()), Readable::Fin]
        );
        // The receiver acknowledging past the hole declares it at once.
        let mut ack = seg(S, 50, "", b"");
        ack.ack = Some(10);
        let c = run(&[seg(C, 0, "S", b""), seg(C, 1, "", b"abc"), seg(C, 7, "", b"ghi"), ack]);
        assert_eq!(
            c[0].deliveries[1],
            Delivery { from: Dir::Up, time: Timestamp::from_nanos(3), what: Readable::Gap(3) }
        );
    }

    #[test]
    fn an_acknowledged_fin_the_capture_missed_is_an_end_not_a_gap() {
        let mut ack = seg(S, 50, "", b"");
        ack.ack = Some(5); // "abc" (1..=3) and the FIN (4)
        let c = run(&[seg(C, 0, "S", b""), seg(C, 1, "", b"abc"), ack]);
        assert_eq!(stream(&c[0], Dir::Up), [Readable::Data(b"abc".to_vec()), Readable::Fin]);
        // Two past: a byte is missing as well.
        ack.ack = Some(6);
        let c = run(&[seg(C, 0, "S", b""), seg(C, 1, "", b"abc"), ack]);
        assert_eq!(stream(&c[0], Dir::Up), [Readable::Data(b"abc".to_vec()), Readable::Gap(2)]);
    }

    #[test]
    fn midstream_pickup_wraparound_and_new_connections_on_one_tuple() {
        let c = run(&[
            seg(C, u32::MAX - 1, "", b"ab"),
            seg(C, 0, "", b"cd"),
            seg(S, 7, "R", b""),
            seg(C, 1000, "S", b""),
            seg(C, 1001, "", b"new"),
        ]);
        assert_eq!(c.len(), 2);
        assert!(c[0].midstream && !c[1].midstream);
        assert_eq!(stream(&c[0], Dir::Up), [Readable::Data(b"ab".to_vec()), Readable::Data(b"cd".to_vec())]);
        assert_eq!(c[0].deliveries.last().unwrap().what, Readable::Rst);
        assert_eq!(stream(&c[1], Dir::Up), [Readable::Data(b"new".to_vec())]);
    }

    #[test]
    fn syn_ack_first_makes_its_receiver_the_client() {
        let mut synack = seg(S, 10, "S", b"");
        synack.ack = Some(1);
        let c = run(&[synack, seg(C, 1, "", b"GET")]);
        assert_eq!(c[0].a, C.parse().unwrap());
        assert_eq!(stream(&c[0], Dir::Up), [Readable::Data(b"GET".to_vec())]);
    }
}
