//! One connection read as the capture streams: its HTTP exchanges walked as they arrive
//! until its WebSocket handshake is found (or it is known to be no session), then its
//! frames decoded as they arrive, each message handed out when complete and the bytes
//! behind it released. So a session's memory is what is still to be read of it — a frame
//! or fragmented message in progress, bounded by the reader's largest message — not what
//! it carried. Pure.

use flate2::Decompress;

use crate::reassembly::{Readable, Reassembled};
use crate::session::{self, Decoded, Decoder, Found, InflateBudget, Inflater, Look, Session, SessionId, Walk};
use crate::stream::Stream;
use crate::Message;
use wstap_wire::deflate;
use wstap_wire::dir::{Dir, PerDir};

/// Bytes a connection whose HTTP cannot be followed may hold while its frames do not say
/// it is a session (the first look at them comes at [`LOOK_FRAMES`]); past them it is no
/// session.
const GIVE_UP: usize = 1 << 20;
/// Bytes any connection may hold before its handshake is found (an HTTP exchange whose
/// answer lags behind many requests); past them it is no session.
const LOOK_LIMIT: usize = 16 << 20;
/// Held bytes at which frames without a handshake are first looked for; then each time
/// what is held doubles.
const LOOK_FRAMES: usize = 64 << 10;
/// Messages held back, in bytes, while one direction waits to resynchronise (so that the
/// messages come out in the order they arrived); past it they go out as they are.
const HOLD_BACK: usize = 16 << 20;

/// What a connection is, as far as the capture has shown it.
enum Phase {
    /// No WebSocket handshake seen yet: its HTTP exchanges are walked.
    Looking(Box<Walk>),
    /// A WebSocket session: frames decoded as they come.
    Frames(Box<Frames>),
    /// No session: its bytes are dropped as they come.
    Other,
}

/// A session being decoded.
struct Frames {
    /// Everything but its messages (handed out as they complete).
    session: Session,
    /// Which way on the connection the client's bytes go.
    client: Dir,
    /// Per message direction (`Up`: the client's): its decoder, and where it goes on
    /// (`None`: the rest cannot be read).
    decoders: PerDir<Decoder>,
    at: PerDir<Option<u64>>,
    /// Messages held back while one direction waits to resynchronise, and their bytes.
    held: Vec<Decoded>,
    held_bytes: usize,
    /// Messages the capture repeated (a rotated file's priming), not handed out.
    repeated: usize,
}

/// What a connection handed out.
#[derive(Default)]
pub(crate) struct Fed {
    /// Its session's id, once it has one.
    pub(crate) id: Option<SessionId>,
    /// Its session, when this step found it: everything but the messages.
    pub(crate) opened: Option<Session>,
    /// Messages completed, in the order their last bytes arrived.
    pub(crate) messages: Vec<Message>,
}

/// A connection being read.
pub(crate) struct Conn {
    /// Its facts as last reported by reassembly (its deliveries are fed, not kept).
    facts: Reassembled,
    /// Per connection direction (`Up`: what `a` sent).
    streams: PerDir<Stream>,
    delivered: usize,
    phase: Phase,
    /// Held bytes at which to look for frames without a handshake again.
    look_at: usize,
    /// Its first bytes from the opener are a TLS ClientHello.
    tls: bool,
    /// It was looked at: its client side is settled.
    looked: bool,
}

impl Conn {
    pub(crate) fn new(first: &Reassembled) -> Conn {
        let facts = first.facts();
        let phase = Phase::Looking(Box::new(Walk::new(Dir::Up)));
        let (streams, look_at) = (PerDir::default(), LOOK_FRAMES);
        Conn { facts, streams, delivered: 0, phase, look_at, tls: false, looked: false }
    }

    /// Whether its opener began with a TLS handshake (then it is no session).
    pub(crate) fn is_tls(&self) -> bool {
        self.tls
    }

    /// What reassembly made readable since the last step. `next_id` numbers a session
    /// found now.
    pub(crate) fn feed(&mut self, news: Reassembled, budget: &mut InflateBudget, next_id: &mut usize) -> Fed {
        let spoke = self.take(news);
        let mut fed = Fed::default();
        if matches!(self.phase, Phase::Looking(_)) {
            let held = self.held();
            // Frames without a handshake cost a look at all that is held: now and then.
            let frames_too = held >= self.look_at;
            if frames_too {
                self.look_at = held.saturating_mul(2);
            }
            if spoke || frames_too {
                self.look(false, frames_too, next_id, &mut fed);
            }
        }
        self.decode(false, budget, &mut fed);
        fed
    }

    /// The connection ended with `news`: everything left is decoded. Its session, if it
    /// carried one (the messages handed out, its problems and notes complete).
    pub(crate) fn end(
        mut self,
        news: Reassembled,
        budget: &mut InflateBudget,
        next_id: &mut usize,
    ) -> (Fed, Option<Session>) {
        self.take(news);
        let mut fed = Fed::default();
        if matches!(self.phase, Phase::Looking(_)) {
            self.look(true, true, next_id, &mut fed);
        }
        self.decode(true, budget, &mut fed);
        let Phase::Frames(mut f) = self.phase else { return (fed, None) };
        for dir in Dir::BOTH {
            f.session.problems.extend(f.decoders[dir].take_problems());
        }
        if self.facts.repeated.iter().any(|(_, &r)| r > 0) {
            f.session.notes.push(format!(
                "the session began before this capture: its handshake{} repeated by the capture so that it \
                 decodes, and not listed",
                match f.repeated {
                    0 => " was".to_string(),
                    n => format!(" and {n} message(s) restoring the compression context were"),
                }
            ));
        }
        (f.session.duplicate_bytes, f.session.out_of_order) = (self.facts.duplicate_bytes, self.facts.out_of_order);
        (fed, Some(f.session))
    }

    /// Adds `news`'s deliveries to the streams (dropped when the connection is no
    /// session); whether the server (`b`) made bytes readable, or the connection's first.
    fn take(&mut self, news: Reassembled) -> bool {
        let mut spoke = false;
        for e in &news.deliveries {
            let order = self.delivered;
            self.delivered += 1;
            if matches!(self.phase, Phase::Other) {
                continue;
            }
            match &e.what {
                Readable::Data(d) => {
                    let first = self.streams[Dir::Up].len() == 0 && self.streams[Dir::Down].len() == 0;
                    if first && e.from == Dir::Up && looks_tls(d) {
                        self.tls = true;
                        self.other();
                        continue;
                    }
                    spoke |= e.from == Dir::Down;
                    self.streams[e.from].push_data(d, e.time, order);
                }
                Readable::Gap(n) => self.streams[e.from].push_hole(*n, e.time, order),
                Readable::Fin | Readable::Rst => {}
            }
        }
        self.facts = news.facts();
        spoke
    }

    fn held(&self) -> usize {
        self.streams[Dir::Up].held() + self.streams[Dir::Down].held()
    }

    /// No session: what it holds is dropped, and what comes is not kept.
    fn other(&mut self) {
        self.phase = Phase::Other;
        self.streams = PerDir::default();
    }

    /// Looks for the session: its handshake, or (with `frames_too`) frames that say it
    /// is one without it. The exchanges walked are released; too much held without a
    /// session, or the end without one: no session.
    fn look(&mut self, last: bool, frames_too: bool, next_id: &mut usize, fed: &mut Fed) {
        let Phase::Looking(walk) = &mut self.phase else { return };
        if !std::mem::replace(&mut self.looked, true) {
            // The first look: which side is the client.
            **walk = Walk::new(session::client_side(&self.streams, self.facts.midstream));
        }
        match session::detect(&self.streams, walk, self.facts.midstream, frames_too, last) {
            Look::Found(found) => {
                *next_id += 1;
                self.phase = Phase::Frames(Box::new(frames(&self.facts, SessionId(*next_id), *found)));
                if let Phase::Frames(f) = &self.phase {
                    fed.opened = Some(f.session.clone());
                }
            }
            Look::Never => self.other(),
            Look::NotYet => {
                for stream in Dir::BOTH {
                    if let Some(at) = walk.walked(stream) {
                        self.streams[stream].release(at);
                    }
                }
                let failed = walk.walked(Dir::Up).is_none();
                let held = self.held();
                if held > LOOK_LIMIT || (failed && frames_too && held > GIVE_UP) {
                    self.other();
                }
            }
        }
    }

    /// Decodes what the streams hold (all of it when `last`), hands out the messages
    /// completed in the order they arrived, and releases the bytes behind them.
    fn decode(&mut self, last: bool, budget: &mut InflateBudget, fed: &mut Fed) {
        let Phase::Frames(f) = &mut self.phase else { return };
        for dir in Dir::BOTH {
            // The client's stream is `client` on the connection, and its messages go `Up`.
            let stream = if dir == Dir::Up { f.client } else { f.client.reverse() };
            let st = &mut self.streams[stream];
            let d = &mut f.decoders[dir];
            if let Some(at) = f.at[dir] {
                f.at[dir] = d.run(st, at, last, budget);
            }
            if last {
                d.finish(st);
            }
            // What the capture repeated of the session's past primed the inflater; it was
            // not sent now, so it is no message.
            let repeated = self.facts.repeated[stream];
            for m in d.out.drain(..) {
                match m.arrived.end <= repeated {
                    true => f.repeated += 1,
                    false => {
                        f.held_bytes += m.message.data.len();
                        f.held.push(m);
                    }
                }
            }
            st.release(f.at[dir].unwrap_or(st.len()));
        }
        // While a direction waits after a hole, its next messages may have arrived before
        // the other direction's latest: those wait too (within a bound).
        let waiting = Dir::BOTH.iter().filter_map(|&d| f.decoders[d].waiting_since()).min();
        let until = match waiting {
            Some(since) if !last && f.held_bytes <= HOLD_BACK => since,
            _ => usize::MAX,
        };
        f.held.sort_by_key(|d| (d.arrived.order, d.message.dir == Dir::Down, d.arrived.end));
        let ready = f.held.partition_point(|d| d.arrived.order < until);
        for d in f.held.drain(..ready) {
            f.held_bytes -= d.message.data.len();
            fed.messages.push(d.message);
        }
        fed.id = Some(f.session.id);
    }
}

/// A session found on a connection, ready to decode its frames.
fn frames(facts: &Reassembled, id: SessionId, found: Found) -> Frames {
    let session = session::header(facts, id, &found);
    let takeover = deflate::takeover(&found.up.response);
    let decoders = PerDir::new((), ()).map(|dir, ()| {
        let inflate = takeover.map(|t| Inflater { z: Decompress::new(false), takeover: t[dir] });
        Decoder::new(dir, inflate)
    });
    let at = found.up.at.map(|_, at| Some(at));
    Frames { session, client: found.client, decoders, at, held: Vec::new(), held_bytes: 0, repeated: 0 }
}

/// Whether a connection's first bytes are a TLS handshake record (a ClientHello).
fn looks_tls(d: &[u8]) -> bool {
    d.len() >= 6 && d[0] == 0x16 && d[1] == 3 && d[5] == 1
}

/// The WebSocket session on a whole connection, if it carries one, inflating within
/// `budget`: what [`crate::Sessions`] does as a capture streams, on one connection in
/// memory (a fuzz target, a tool of its own).
pub fn decode_within(conn: &Reassembled, id: SessionId, budget: &mut InflateBudget) -> Option<Session> {
    let mut next_id = id.0.saturating_sub(1);
    let (fed, session) = Conn::new(conn).end(conn.clone(), budget, &mut next_id);
    session.map(|s| Session { messages: fed.messages, ..s })
}

/// The WebSocket session on `conn`, if it carries one (inflating at most 64 MiB).
#[cfg(test)]
pub(crate) fn decode(conn: &Reassembled, id: SessionId) -> Option<Session> {
    decode_within(conn, id, &mut InflateBudget::for_input(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reassembly::Delivery;
    use wstap_wire::wsframe::{encode_frame, first_byte, Opcode};
    use wstap_wire::Timestamp;

    const UPGRADE: &[u8] = b"GET /s HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    const SWITCH: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

    fn connection(deliveries: Vec<Delivery>, midstream: bool) -> Reassembled {
        Reassembled {
            a: "10.0.0.1:5000".parse().unwrap(),
            b: "10.0.0.2:80".parse().unwrap(),
            first_seen: Timestamp::EPOCH,
            midstream,
            deliveries,
            duplicate_bytes: 0,
            out_of_order: 0,
            repeated: PerDir::default(),
        }
    }

    /// A random conversation: frames each way (some fragmented, some large), cut into
    /// random pieces, some pieces lost (gaps), the handshake there or not.
    fn conversation(rng: &mut fastrand::Rng) -> Reassembled {
        let mut bytes: PerDir<Vec<u8>> = PerDir::default();
        let mut order = Vec::new();
        let handshake = rng.u8(..4) != 0;
        if handshake {
            bytes[Dir::Up].extend_from_slice(UPGRADE);
            bytes[Dir::Down].extend_from_slice(SWITCH);
        }
        for _ in 0..rng.usize(1..30) {
            let dir = if rng.bool() { Dir::Up } else { Dir::Down };
            let mask = (dir == Dir::Up).then(|| [rng.u8(..), rng.u8(..), rng.u8(..), rng.u8(..)]);
            let len = if rng.u8(..10) == 0 { rng.usize(..70_000) } else { rng.usize(..300) };
            let payload: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let pieces = if rng.u8(..5) == 0 { 3 } else { 1 };
            let chunk = len.div_ceil(pieces).max(1);
            for (i, part) in payload.chunks(chunk).enumerate().chain((len == 0).then_some((0, &[][..]))) {
                let fin = (i + 1) * chunk >= len;
                let op = if i == 0 { Opcode::Binary } else { Opcode::Continuation };
                bytes[dir].extend(encode_frame(first_byte(fin, false, op), part, mask));
            }
            order.push((dir, bytes[dir].len()));
        }
        // Deliver each direction's bytes in random pieces, interleaved in frame order.
        let mut sent = PerDir::new(0usize, 0usize);
        let mut deliveries = Vec::new();
        let mut t = 0;
        for (dir, upto) in
            order.into_iter().chain([(Dir::Up, bytes[Dir::Up].len()), (Dir::Down, bytes[Dir::Down].len())])
        {
            while sent[dir] < upto {
                let n = rng.usize(1..=2000).min(upto - sent[dir]);
                let what = match rng.u8(..40) == 0 && sent[dir] > UPGRADE.len() {
                    true => Readable::Gap(n as u64),
                    false => Readable::Data(bytes[dir][sent[dir]..sent[dir] + n].to_vec()),
                };
                t += 1;
                deliveries.push(Delivery { from: dir, time: Timestamp::from_nanos(t), what });
                sent[dir] += n;
            }
        }
        connection(deliveries, !handshake)
    }

    /// `s` with the messages the capture's end left unfinished (a direction's last, when
    /// the capture ends inside a fragmented message) moved to the end.
    fn unfinished_last(s: &Session) -> Session {
        let ends_inside = |dir: Dir| {
            s.problems.iter().any(|p| p == &format!("{}: the capture ends inside a fragmented message", dir.arrow()))
        };
        let last: Vec<usize> = Dir::BOTH
            .into_iter()
            .filter(|&d| ends_inside(d))
            .filter_map(|d| s.messages.iter().rposition(|m| m.dir == d))
            .collect();
        let (mut kept, mut moved) = (Vec::new(), Vec::new());
        for (i, m) in s.messages.iter().enumerate() {
            if last.contains(&i) {
                moved.push(m.clone())
            } else {
                kept.push(m.clone())
            }
        }
        kept.extend(moved);
        Session { messages: kept, ..s.clone() }
    }

    /// Property: fed one delivery at a time, as a capture streams, a connection gives the
    /// session a read of it whole gives: the same messages in the same order, the same
    /// problems.
    #[test]
    fn streaming_reads_what_a_whole_read_does() {
        let mut sessions = 0;
        for seed in 0..400 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let conn = conversation(&mut rng);
            let whole = decode(&conn, SessionId(1));
            let mut budget = InflateBudget::for_input(0);
            let (mut c, mut next_id) = (Conn::new(&conn), 0);
            let mut messages = Vec::new();
            for d in &conn.deliveries {
                let news = Reassembled { deliveries: vec![d.clone()], ..conn.facts() };
                messages.extend(c.feed(news, &mut budget, &mut next_id).messages);
            }
            let (fed, streamed) = c.end(conn.facts(), &mut budget, &mut next_id);
            messages.extend(fed.messages);
            let streamed = streamed.map(|s| Session { messages, ..s });
            match (&whole, &streamed) {
                (Some(w), Some(s)) => {
                    sessions += 1;
                    // A fragmented message the capture's end left unfinished is known to be
                    // so only at the end: streamed, it comes last.
                    let (s, w) = (unfinished_last(s), unfinished_last(w));
                    let brief = |s: &[Message]| -> Vec<_> {
                        s.iter().map(|m| (m.dir, m.kind, m.data.len(), m.incomplete, m.time.as_nanos())).collect()
                    };
                    assert_eq!(brief(&s.messages), brief(&w.messages), "seed {seed}");
                    assert!(s.messages == w.messages, "seed {seed}: payloads differ");
                    assert_eq!(s.problems, w.problems, "seed {seed}");
                }
                (None, None) => {}
                _ => panic!("seed {seed}: whole {:?}, streamed {:?}", whole.is_some(), streamed.is_some()),
            }
        }
        assert!(sessions > 300, "{sessions} sessions");
    }

    #[test]
    fn a_fragmented_message_is_held_up_to_the_largest_message_and_no_further() {
        let mut server = SWITCH.to_vec();
        let chunk = vec![7u8; 1 << 20];
        server.extend(encode_frame(first_byte(false, false, Opcode::Binary), &chunk, None));
        for i in 0..70 {
            server.extend(encode_frame(first_byte(i == 69, false, Opcode::Continuation), &chunk, None));
        }
        let d = |from, b: &[u8]| Delivery { from, time: Timestamp::EPOCH, what: Readable::Data(b.to_vec()) };
        let s = decode(&connection(vec![d(Dir::Up, UPGRADE), d(Dir::Down, &server)], false), SessionId(1)).unwrap();
        assert_eq!(s.messages.len(), 1);
        let m = &s.messages[0];
        assert!(m.incomplete && m.data.len() == session::MAX_MESSAGE && m.data.capacity() == session::MAX_MESSAGE);
        assert_eq!(m.frames, 71);
        assert!(s.problems.iter().any(|p| p.contains("runs past 67108864 bytes")), "{:?}", s.problems);
    }
}
