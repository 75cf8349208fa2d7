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
    /// Per direction (`Up`: `a`'s), the stream offset up to which its bytes came from
    /// [`Reassembler::push_repeat`]: what a capture repeated of the connection's past
    /// (wstap's rotated files and live streams), not what was sent at that time.
    pub repeated: PerDir<u64>,
}

impl Reassembled {
    /// Everything but the deliveries.
    pub fn facts(&self) -> Reassembled {
        let Reassembled { a, b, first_seen, midstream, duplicate_bytes, out_of_order, repeated, .. } = *self;
        Reassembled { a, b, first_seen, midstream, deliveries: Vec::new(), duplicate_bytes, out_of_order, repeated }
    }
}

/// Bytes waiting for a hole to fill, per direction, beyond which the hole is given up on.
const MAX_PENDING: usize = 8 << 20;

/// How long, in capture time, a connection's tuple is remembered after it ended: its
/// stray packets then (a last ACK, a retransmitted FIN) are no new connection.
const REMEMBER_ENDED_NS: u64 = 120_000_000_000;

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
    /// Its place among the connections, by when each was first seen.
    seen: u64,
    /// Only repeated packets so far: further repeats continue it. Once the connection
    /// is live, repeats of it (a later file's, read together) are dropped.
    repeats_only: bool,
}

type Key = (SocketAddr, SocketAddr);

/// What a connection made readable since it was last asked ([`Reassembler::take_news`]).
#[derive(Debug)]
pub struct News {
    /// The connection: its number by when it was first seen, from 1.
    pub conn: u64,
    /// Its facts, with the deliveries made since.
    pub facts: Reassembled,
    /// It ended: nothing more will come of it.
    pub ended: bool,
}

/// Feeds segments in capture order; connections are handed out whole as they end
/// ([`Reassembler::take_ended`], then [`Reassembler::finish`]), or what each made
/// readable as it goes ([`Reassembler::take_news`], then [`Reassembler::finish_news`]).
/// Memory is the connections open at once, and (taken as news) only what waits for a
/// hole in them.
#[derive(Default)]
pub struct Reassembler {
    live: HashMap<Key, Live>,
    seen: u64,
    ended: Vec<(u64, Reassembled)>,
    /// Connections with deliveries since the last news.
    touched: Vec<Key>,
    /// Tuples of connections that ended, and when.
    gone: HashMap<Key, Timestamp>,
    /// `gone`'s size at which it is next pruned.
    prune_at: usize,
}

fn key(a: SocketAddr, b: SocketAddr) -> Key {
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
        self.take(time, s, false);
    }

    /// One segment a capture repeated of a connection's past (a wstap file's repeated
    /// handshake and Upgrade exchange): it starts the connection when the capture holds
    /// nothing of it yet, its bytes marked [`Reassembled::repeated`]; it is dropped when
    /// the connection is already live (the file before it was read too).
    pub fn push_repeat(&mut self, time: Timestamp, s: &Segment<'_>) {
        self.take(time, s, true);
    }

    fn take(&mut self, time: Timestamp, s: &Segment<'_>, repeat: bool) {
        let k = key(s.src, s.dst);
        let fresh_syn = s.syn && s.ack.is_none();
        let live = self.live.get(&k);
        // A repeat of a connection the capture holds (live, or ended since: a writer
        // behind its clock may repeat a leg whose FINs it has just written) is dropped.
        if repeat && (live.is_some_and(|l| !l.repeats_only) || (live.is_none() && self.gone.contains_key(&k))) {
            return;
        }
        if live.is_none() && !fresh_syn && self.gone.contains_key(&k) {
            return; // a stray packet of a connection that ended
        }
        let reuse = live.is_some_and(|l| {
            let h = &l.halves[l.from(s)];
            // A fresh SYN on a finished tuple, or with another ISN, is a new connection.
            let closed = l.halves.iter().all(|(_, h)| h.done) || l.halves.iter().any(|(_, h)| h.fin_at.is_some());
            !(fresh_syn && (closed || h.isn.is_some_and(|isn| isn != s.seq)))
        });
        if !reuse {
            if let Some(mut old) = self.live.remove(&k) {
                old.flush(Some(time));
                self.ended.push((old.seen, old.conn));
            }
            self.gone.remove(&k);
            let (a, b) = if s.syn && s.ack.is_some() { (s.dst, s.src) } else { (s.src, s.dst) };
            let conn = Reassembled {
                a,
                b,
                first_seen: time,
                midstream: false,
                deliveries: Vec::new(),
                duplicate_bytes: 0,
                out_of_order: 0,
                repeated: PerDir::default(),
            };
            self.seen += 1;
            self.live.insert(k, Live { conn, halves: Default::default(), seen: self.seen, repeats_only: repeat });
        }
        let Some(l) = self.live.get_mut(&k) else { return };
        l.repeats_only &= repeat;
        l.segment(time, s, repeat);
        if !l.conn.deliveries.is_empty() && self.touched.last() != Some(&k) {
            self.touched.push(k);
        }
        if l.halves.iter().all(|(_, h)| h.done) {
            if let Some(l) = self.live.remove(&k) {
                self.ended.push((l.seen, l.conn));
            }
            self.forget_before(time);
            self.gone.insert(k, time);
        }
    }

    /// Forgets ended tuples older than [`REMEMBER_ENDED_NS`], now and then.
    fn forget_before(&mut self, now: Timestamp) {
        if self.gone.len() < self.prune_at {
            return;
        }
        self.gone.retain(|_, t| t.as_nanos().saturating_add(REMEMBER_ENDED_NS) > now.as_nanos());
        self.prune_at = (self.gone.len() * 2).max(1024);
    }

    /// The connections that ended since the last call, in the order they ended.
    pub fn take_ended(&mut self) -> impl Iterator<Item = Reassembled> + '_ {
        self.ended.drain(..).map(|(_, c)| c)
    }

    /// What each connection made readable since the last call, and the connections that
    /// ended (with what they made readable last).
    pub fn take_news(&mut self) -> Vec<News> {
        let mut news = Vec::new();
        for k in self.touched.drain(..) {
            let Some(l) = self.live.get_mut(&k) else { continue };
            if !l.conn.deliveries.is_empty() {
                let deliveries = std::mem::take(&mut l.conn.deliveries);
                news.push(News { conn: l.seen, facts: Reassembled { deliveries, ..l.conn.facts() }, ended: false });
            }
        }
        news.extend(self.ended.drain(..).map(|(conn, facts)| News { conn, facts, ended: true }));
        news
    }

    /// The end of the capture, as news: every connection ends.
    pub fn finish_news(mut self) -> Vec<News> {
        let mut news = self.take_news();
        let mut rest: Vec<Live> = self.live.into_values().collect();
        rest.sort_by_key(|l| l.seen);
        for mut l in rest {
            l.flush(None);
            news.push(News { conn: l.seen, facts: l.conn, ended: true });
        }
        news
    }

    /// Ends every stream: what still waits for a hole is delivered after a gap. The
    /// connections not yet taken: those that ended, then the rest, each in the order it
    /// was first seen.
    pub fn finish(mut self) -> Vec<Reassembled> {
        let mut rest: Vec<(u64, Reassembled)> = self
            .live
            .into_values()
            .map(|mut l| {
                l.flush(None);
                (l.seen, l.conn)
            })
            .collect();
        rest.sort_by_key(|(seen, _)| *seen);
        self.ended.sort_by_key(|(seen, _)| *seen);
        self.ended.into_iter().chain(rest).map(|(_, c)| c).collect()
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

    fn segment(&mut self, ts: Timestamp, s: &Segment<'_>, repeat: bool) {
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
            if repeat {
                let end = (start + s.payload.len() as i64).max(0) as u64;
                let r = &mut self.conn.repeated[from];
                *r = (*r).max(end);
            }
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

    #[test]
    fn ended_connections_are_handed_out_at_once_and_their_stray_packets_start_nothing() {
        let mut r = Reassembler::new();
        let t = Timestamp::from_nanos;
        let mut ack = seg(C, 5, "", b"");
        ack.ack = Some(501);
        for (i, s) in
            [seg(C, 0, "S", b""), seg(C, 1, "", b"hi"), seg(C, 3, "F", b""), seg(S, 500, "F", b"")].iter().enumerate()
        {
            r.push(t(i as u64), s);
        }
        let ended: Vec<_> = r.take_ended().collect();
        assert_eq!(ended.len(), 1, "both FINs: ended, before the capture does");
        assert_eq!(stream(&ended[0], Dir::Up), [Readable::Data(b"hi".to_vec()), Readable::Fin]);
        r.push(t(10), &ack); // the last ACK, after the end
        r.push(t(11), &seg(C, 3, "F", b"")); // a retransmitted FIN
        assert_eq!(r.take_ended().count(), 0);
        r.push(t(12), &seg(C, 9000, "S", b"")); // the tuple reused: a new connection
        let rest = r.finish();
        assert_eq!(rest.len(), 1, "{rest:?}");
        assert!(!rest[0].midstream);
        // Long after the end, a packet on the tuple is a connection picked up mid-way.
        let mut r = Reassembler::new();
        r.push(t(0), &seg(C, 0, "S", b""));
        r.push(t(1), &seg(C, 1, "R", b""));
        assert_eq!(r.take_ended().count(), 1, "a reset ends it");
        r.push(t(REMEMBER_ENDED_NS + 10), &seg(C, 77, "", b"late"));
        for k in 0..2000u16 {
            // Other connections end, so that the ended tuples are pruned.
            let (a, b) = (format!("10.0.9.9:{k}").parse().unwrap(), S.parse().unwrap());
            let rst = Segment { src: a, dst: b, seq: 1, ack: None, syn: false, fin: false, rst: true, payload: b"" };
            r.push(t(2 * REMEMBER_ENDED_NS + u64::from(k) * 1_000_000_000), &rst);
            // one a second
        }
        assert!(r.gone.len() < 1100, "ended tuples are forgotten: {}", r.gone.len());
    }

    #[test]
    fn repeats_start_a_connection_the_capture_holds_nothing_of_and_are_dropped_for_a_live_one() {
        let t = Timestamp::from_nanos;
        // Read alone: the repeated handshake and Upgrade start the connection, marked.
        let mut r = Reassembler::new();
        r.push_repeat(t(0), &seg(C, 100, "S", b""));
        r.push_repeat(t(0), &seg(C, 101, "", b"GET / HTTP/1.1\r\n\r\n"));
        r.push(t(1), &seg(C, 119, "", b"live"));
        r.push_repeat(t(2), &seg(C, 50, "S", b"")); // a later file's repeat: dropped
        let c = r.finish();
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].repeated[Dir::Up], 18);
        assert_eq!(c[0].repeated[Dir::Down], 0);
        assert!(!c[0].midstream);
        // Read after the file before it: the repeats of a live connection are dropped.
        let mut r = Reassembler::new();
        r.push(t(0), &seg(C, 0, "S", b""));
        r.push(t(0), &seg(C, 1, "", b"GET / HTTP/1.1\r\n\r\n"));
        r.push_repeat(t(1), &seg(C, 100, "S", b""));
        r.push_repeat(t(1), &seg(C, 101, "", b"GET / HTTP/1.1\r\n\r\n"));
        r.push(t(2), &seg(C, 19, "", b"live"));
        let c = r.finish();
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].repeated[Dir::Up], 0);
        assert_eq!(stream(&c[0], Dir::Up).len(), 2, "the request, then the live bytes: no gap, no new SYN");
        // A repeat of a connection that ended just before the next file began (the
        // writer repeats a leg until it has written its close): dropped too.
        let mut r = Reassembler::new();
        r.push(t(0), &seg(C, 0, "S", b""));
        r.push(t(0), &seg(S, 500, "S", b""));
        r.push(t(1), &seg(C, 1, "F", b""));
        r.push(t(1), &seg(S, 501, "F", b""));
        assert_eq!(r.take_ended().count(), 1);
        r.push_repeat(t(2), &seg(C, 100, "S", b""));
        r.push_repeat(t(2), &seg(C, 101, "", b"GET / HTTP/1.1\r\n\r\n"));
        r.push_repeat(t(2), &seg(C, 119, "F", b""));
        assert!(r.finish().is_empty(), "no connection made of repeats alone");
    }
}
