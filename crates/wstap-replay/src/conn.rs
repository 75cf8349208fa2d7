//! One connection read as the capture streams: its bytes kept only until its WebSocket
//! handshake is found (or it is known to be no session), then its frames decoded as they
//! arrive, each message handed out when complete and the bytes behind it released. So a
//! session's memory is what is still to be read of it — a frame or a fragmented message
//! in progress, bounded by the reader's largest message — not what it carried. Pure.

use flate2::Decompress;

use crate::reassembly::{Readable, Reassembled};
use crate::session::{self, Decoded, Decoder, InflateBudget, Inflater, Session, SessionId, Upgrade};
use crate::stream::Stream;
use crate::Message;
use wstap_wire::deflate;
use wstap_wire::dir::{Dir, PerDir};

/// Bytes a connection may hold before its handshake is found; past them it is no session
/// (an HTTP connection that never upgrades, or a protocol that is not WebSocket).
const LOOK_LIMIT: usize = 64 << 20;
/// Below this many bytes held, the handshake is looked for whenever the server speaks;
/// above, each time what is held doubles. Frames without a handshake are looked for from
/// here on too.
const LOOK_OFTEN: usize = 64 << 10;

/// What a connection is, as far as the capture has shown it.
enum Phase {
    /// No WebSocket handshake seen yet: its bytes are kept to look for one.
    Looking,
    /// A WebSocket session: frames decoded as they come.
    Frames(Box<Frames>),
    /// No session: its bytes are dropped as they come.
    Other,
}

/// A session being decoded.
struct Frames {
    /// Everything but its messages (handed out as they complete) and its final counts.
    session: Session,
    /// Which way on the connection the client's bytes go.
    client: Dir,
    /// Per message direction (`Up`: the client's): its decoder, and where it goes on
    /// (`None`: the rest cannot be read).
    decoders: PerDir<Decoder>,
    at: PerDir<Option<u64>>,
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
    /// Held bytes at which to look for the handshake again.
    look_at: usize,
    /// Its first bytes from the opener are a TLS ClientHello.
    tls: bool,
}

impl Conn {
    pub(crate) fn new(first: &Reassembled) -> Conn {
        let facts = first.facts();
        let (streams, delivered, phase, look_at, tls) = (PerDir::default(), 0, Phase::Looking, 0, false);
        Conn { facts, streams, delivered, phase, look_at, tls }
    }

    /// Whether its opener began with a TLS handshake (then it is no session).
    pub(crate) fn is_tls(&self) -> bool {
        self.tls
    }

    /// What reassembly made readable since the last step. `next_id` numbers a session
    /// found now.
    pub(crate) fn feed(&mut self, news: Reassembled, budget: &mut InflateBudget, next_id: &mut usize) -> Fed {
        let server_spoke = self.take(news);
        let mut fed = Fed::default();
        if matches!(self.phase, Phase::Looking) && self.time_to_look(server_spoke) {
            self.look(false, next_id, &mut fed);
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
        if matches!(self.phase, Phase::Looking) {
            self.look(true, next_id, &mut fed);
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
    /// session); whether the server (`b`) made any bytes readable.
    fn take(&mut self, news: Reassembled) -> bool {
        let mut server_spoke = false;
        for e in &news.deliveries {
            let order = self.delivered;
            self.delivered += 1;
            if matches!(self.phase, Phase::Other) {
                continue;
            }
            match &e.what {
                Readable::Data(d) => {
                    if self.delivered_first(e.from) && e.from == Dir::Up && looks_tls(d) {
                        self.tls = true;
                        self.phase = Phase::Other;
                        self.streams = PerDir::default();
                        continue;
                    }
                    server_spoke |= e.from == Dir::Down;
                    self.streams[e.from].push_data(d, e.time, order);
                }
                Readable::Gap(n) => self.streams[e.from].push_hole(*n, e.time, order),
                Readable::Fin | Readable::Rst => {}
            }
        }
        self.facts = news.facts();
        server_spoke
    }

    /// Whether nothing came `from` this way before.
    fn delivered_first(&self, from: Dir) -> bool {
        self.streams[from].len() == 0
    }

    fn held(&self) -> usize {
        self.streams[Dir::Up].held() + self.streams[Dir::Down].held()
    }

    /// Whether to look for the handshake now: while little is held, whenever the server
    /// spoke; then each time what is held doubles.
    fn time_to_look(&mut self, server_spoke: bool) -> bool {
        let held = self.held();
        if held < LOOK_OFTEN {
            return server_spoke;
        }
        if held < self.look_at {
            return false;
        }
        self.look_at = held.saturating_mul(2);
        true
    }

    /// Looks for the session: its handshake, or (`last`, or enough held) the frames that
    /// say it is one without it. Too much held without one, or the end without one: no
    /// session.
    fn look(&mut self, last: bool, next_id: &mut usize, fed: &mut Fed) {
        let enough = last || self.held() >= LOOK_OFTEN;
        match session::detect(&self.streams, self.facts.midstream, enough, last) {
            Some(found) => {
                *next_id += 1;
                let session = session::header(&self.facts, SessionId(*next_id), &found);
                fed.opened = Some(session.clone());
                let takeover = deflate::takeover(&found.up.response);
                let decoders = PerDir::new((), ()).map(|dir, ()| {
                    let inflate = takeover.map(|t| Inflater { z: Decompress::new(false), takeover: t[dir] });
                    Decoder::new(dir, inflate)
                });
                let Upgrade { at, .. } = found.up;
                let at = PerDir::new(Some(at[Dir::Up]), Some(at[Dir::Down]));
                self.phase =
                    Phase::Frames(Box::new(Frames { session, client: found.client, decoders, at, repeated: 0 }));
            }
            None if last || self.held() > LOOK_LIMIT => {
                self.phase = Phase::Other;
                self.streams = PerDir::default();
            }
            None => {}
        }
    }

    /// Decodes what the streams hold (all of it when `last`), hands out the messages
    /// completed and releases the bytes behind them.
    fn decode(&mut self, last: bool, budget: &mut InflateBudget, fed: &mut Fed) {
        let Phase::Frames(f) = &mut self.phase else { return };
        let mut out: Vec<Decoded> = Vec::new();
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
                    false => out.push(m),
                }
            }
            st.release(f.at[dir].unwrap_or(st.len()));
        }
        out.sort_by_key(|d| (d.arrived.order, d.message.dir == Dir::Down, d.arrived.end));
        fed.messages.extend(out.into_iter().map(|d| d.message));
        fed.id = Some(f.session.id);
    }
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
