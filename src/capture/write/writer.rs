//! Turns queued events into pcapng packets, section after section: one synthesized
//! [`Flow`] per captured leg, its bytes rewritten by the rules, its comments. This is
//! the dispatcher; each job is a part of its own: the section and its statistics
//! (`section`, `statistics`), ACK scheduling and the packet held back for a close
//! comment (`acks`), when a section may end (`rotation`), what a new section repeats
//! (`repeat`), a live subscriber's first section (`snapshot`), and the words (the
//! notes). Pure apart from writing to `W`; the caller decides when rotation is due and
//! supplies each new `W`.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use wstap_wire::deflate::Allowance;
use wstap_wire::pcapng::SectionInfo;
use wstap_wire::tcp::{Flow, Packet};
use wstap_wire::{Dir, Leg, PerDir, Timestamp};

use super::acks::{Acks, LastPacket};
use super::encrypted::{Encrypted, RecordBudget};
use super::leg::{Final, FinalKind, LegState};
use super::repeat::{repeat_all, Beginning};
use super::rewrite::{Rewritten, Rules, Run};
use super::rotation::Rotation;
use super::section::{Comments, Section};
use super::{ports, redact};
use crate::capture::event::{Event, Gap, Opening, What};
use crate::capture::ids::LegId;
use crate::capture::note::{comment, Audience, Ending, Forgotten, Note};
use crate::capture::stats::Stats;
use crate::config::PureAcks;
use crate::config::{DisplayPort, Legs, Redact, Segmentation};

/// How packets are synthesized.
#[derive(Debug, Clone)]
pub struct Synthesis {
    /// Largest synthesized segment over IPv4.
    pub mss_ipv4: u16,
    /// Largest synthesized segment over IPv6.
    pub mss_ipv6: u16,
    /// Segments of the MSS, or as large as the proxy relayed them.
    pub segment: Segmentation,
    /// Whether the receivers' pure ACKs are written.
    pub acks: PureAcks,
    /// Which port the server side of each leg is written with.
    pub display_port: DisplayPort,
    /// What is redacted before it is written.
    pub redact: Arc<Redact>,
    /// Seed of the ISN generator (xorshift; ISNs need to look random, not be secret).
    pub isn_seed: u64,
    /// Longest a due rotation waits for every session to reach a frame boundary (in
    /// event time); then it cuts and says so in a comment.
    pub rotate_wait: Duration,
    /// What it shares with the other writers of its sink.
    pub budgets: Budgets,
}

/// What every writer of one sink shares (and a reload's writers take over): how much
/// they may inflate to follow deflate windows, and how much of their encrypted legs'
/// records they may keep.
#[derive(Debug, Clone, Default)]
pub struct Budgets {
    /// The inflating allowance, per second.
    pub inflate: Arc<Mutex<Allowance>>,
    /// The bytes of TLS records kept for repeats.
    pub records: RecordBudget,
}

impl Synthesis {
    /// As `settings` say, with ISNs from `seed`, within `budgets`.
    pub fn new(settings: &crate::config::CaptureSettings, seed: u64, budgets: Budgets) -> Synthesis {
        Synthesis {
            mss_ipv4: settings.mss_ipv4,
            mss_ipv6: settings.mss_ipv6,
            segment: settings.segment,
            acks: settings.acks,
            display_port: settings.display_port,
            redact: Arc::new(settings.redact.clone()),
            isn_seed: seed,
            rotate_wait: settings.rotate.max_wait,
            budgets,
        }
    }
}

/// What the caller does after [`CaptureWriter::process`].
#[derive(Debug)]
pub enum Processed {
    /// The event is written.
    Done,
    /// Rotate now ([`CaptureWriter::rotate`]), then process `then` (the event, or the rest
    /// of it after a frame boundary).
    RotateFirst {
        /// What to process after rotating.
        then: Option<Event>,
    },
}

/// Turns events into pcapng packets, section after section.
pub struct CaptureWriter<W: Write> {
    /// The section being written (none while no file can be: events still move the
    /// flows on, so that the next file starts in step).
    pub(super) section: Section<W>,
    pub(super) info: SectionInfo,
    /// The legs the sections have interfaces for.
    pub(super) wanted: Legs,
    /// Ordered by leg id, so that repeats come out in a stable order.
    pub(super) legs: BTreeMap<LegId, Box<LegState>>,
    synth: Synthesis,
    isns: Isns,
    /// The time of the last event: timestamps stay in file order even when two legs'
    /// events race by a few µs.
    pub(super) clock: Timestamp,
    acks: Acks,
    pub(super) rotation: Rotation,
}

impl<W: Write> CaptureWriter<W> {
    /// A writer with its first section begun in `w`.
    pub fn new(w: W, info: &SectionInfo, legs: Legs, synth: Synthesis) -> io::Result<Self> {
        let mut writer = CaptureWriter::detached(info, legs, synth);
        writer.section.begin(w, info, legs)?;
        Ok(writer)
    }

    /// A writer with no output yet: [`CaptureWriter::rotate`] gives it one.
    pub fn detached(info: &SectionInfo, legs: Legs, synth: Synthesis) -> Self {
        CaptureWriter {
            section: Section::none(),
            info: info.clone(),
            wanted: legs,
            legs: BTreeMap::new(),
            isns: Isns(synth.isn_seed | 1),
            acks: Acks::new(synth.acks),
            rotation: Rotation::new(synth.rotate_wait),
            synth,
            clock: Timestamp::EPOCH,
        }
    }

    /// The output being written, if any.
    pub fn get_mut(&mut self) -> Option<&mut W> {
        self.section.output()
    }

    /// Ends the current section: writes what is held back and owed, and each interface's
    /// statistics, and hands back its output.
    pub fn finish(&mut self, stats: &Stats) -> io::Result<Option<W>> {
        if let Some(last) = self.acks.take_held() {
            self.write_final(last, stats)?;
        }
        self.idle(stats)?;
        self.section.end(self.clock)
    }

    /// The current output failed: go on without one (flows keep moving) until
    /// [`CaptureWriter::rotate`] gives a new one.
    pub fn lose_output(&mut self) -> Option<W> {
        self.acks.drop_held();
        self.section.abandon()
    }

    /// New settings for the next section and for legs opened from now on (live legs
    /// keep the segment size and ports they started with).
    pub fn reconfigure(&mut self, legs: Legs, synth: Synthesis) {
        self.wanted = legs;
        self.acks.set_policy(synth.acks);
        self.rotation.set_wait(synth.rotate_wait);
        self.synth = Synthesis { isn_seed: self.synth.isn_seed, ..synth };
    }

    /// Asks for a rotation as soon as every live session is between frames.
    pub fn rotation_due(&mut self, time: Timestamp) {
        self.rotation.due(time);
    }

    /// The due rotation is taken care of (the file was finished with nothing live).
    pub fn rotation_done(&mut self) {
        self.rotation.done();
    }

    /// A due rotation can happen now, between events: every session is between frames,
    /// or it has waited as long as it may.
    pub fn ready_to_rotate(&self, now: Timestamp) -> bool {
        self.rotation.ready(now)
    }

    /// Live legs.
    pub fn live(&self) -> usize {
        self.legs.len()
    }

    /// The writer has caught up with its queue: the ACKs still owed are written now
    /// (no data is coming that they could ride on).
    pub fn idle(&mut self, stats: &Stats) -> io::Result<()> {
        let owed = self.acks.take_owed();
        for (i, id) in owed.iter().enumerate() {
            let Some(due) = self.legs.get_mut(id).and_then(|leg| Acks::due(leg, None)) else { continue };
            if let Err(e) = self.emit(*id, self.clock, |f, e| f.ack(due, e), stats) {
                self.acks.still_owed(&owed[i + 1..]);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes the packets one event stands for, or says it is time to rotate first.
    pub fn process(&mut self, ev: Event, stats: &Stats) -> io::Result<Processed> {
        if self.rotation.is_due() {
            if self.rotation.ready(ev.time) {
                return Ok(Processed::RotateFirst { then: Some(ev) });
            }
            // Cut a chunk at its leg's next frame boundary if that is the last one missing.
            if let Some((now, rest)) = self.legs.get(&ev.leg).and_then(|leg| self.rotation.split(leg, &ev)) {
                self.apply(now, stats)?;
                return Ok(Processed::RotateFirst { then: Some(rest) });
            }
        }
        self.apply(ev, stats)?;
        Ok(Processed::Done)
    }

    /// Starts a new section in `w` and returns the previous output (to be finished by
    /// the caller), if there was one. Every live leg is repeated at its start.
    pub fn rotate(&mut self, w: W, stats: &Stats) -> io::Result<Option<W>> {
        let boundary = self.rotation.happen();
        // ACKs owed for this file's data belong in it, before what is held back.
        self.idle(stats)?;
        let old = self.finish(stats)?;
        self.section.begin(w, &self.info, self.wanted)?;
        let unwritten = self.section.take_unwritten();
        let at = Beginning { audience: Audience::File, time: self.clock, unwritten, boundary };
        repeat_all(&mut self.legs, &mut self.section, at, stats)?;
        Ok(old)
    }

    fn apply(&mut self, ev: Event, stats: &Stats) -> io::Result<()> {
        let time = ev.time.max(self.clock);
        self.clock = time;
        let (held, ack) = self.acks.before(&ev, time, self.legs.get_mut(&ev.leg).map(|l| &mut **l));
        if let Some(last) = held {
            self.write_final(last, stats)?;
        }
        if let Some(dir) = ack {
            self.emit(ev.leg, time, |f, e| f.ack(dir, e), stats)?;
        }
        let id = ev.leg;
        match ev.what {
            What::Open(o) => self.open(id, time, *o, stats),
            What::Data { dir, offset, bytes } => self.data(id, time, dir, offset, &bytes, stats),
            What::Fin { dir, offset } => self.fin(id, time, dir, offset, stats),
            What::Gap(gap) => self.gap(id, time, gap, stats),
            What::Reset => {
                if let Some(leg) = self.legs.get_mut(&id) {
                    Acks::reset(id, leg, time);
                }
                Ok(())
            }
            What::Note(note) => {
                if let Some(leg) = self.legs.get_mut(&id) {
                    leg.note(note);
                }
                Ok(())
            }
            What::Session { heading, snap } => {
                if let Some(leg) = self.legs.get_mut(&id) {
                    leg.note(Note::Heading(redact::text(&heading, &self.synth.redact)));
                    let was = leg.at_boundary();
                    leg.begin_session(Rules { redact: self.synth.redact.clone(), snap });
                    self.rotation.moved(was, leg.at_boundary());
                }
                Ok(())
            }
            What::Close { reason, offsets } => self.close(id, time, reason, offsets, stats),
        }
    }

    /// A leg's capture starts: its flow (the server side perhaps written with the display
    /// port), its heading, its keys if it is TLS, and its handshake.
    fn open(&mut self, id: LegId, time: Timestamp, o: Opening, stats: &Stats) -> io::Result<()> {
        if !self.wanted.has(o.leg) {
            return Ok(());
        }
        // The opener sends `Up`: the client on the client leg, wstap on the upstream leg.
        let (opener, acceptor) = match o.leg {
            Leg::Client => (o.remote, o.local),
            Leg::Upstream => (o.local, o.remote),
        };
        let (mut opener, mut acceptor) = (opener, acceptor);
        let real = acceptor.port();
        acceptor.set_port(match o.tls_secrets {
            Some(_) => ports::display_encrypted(acceptor, self.synth.display_port),
            None => ports::display(opener, acceptor, self.synth.display_port),
        });
        let real_port = (acceptor.port() != real).then_some(real);
        // The heading quotes the request line: its query is redacted as the head's is.
        let mut notes = vec![Note::Heading(redact::text(&o.heading, &self.synth.redact))];
        notes.extend(real_port.map(|real| Note::DisplayPort { real, written: acceptor.port() }));
        if opener == acceptor {
            opener.set_port(opener.port().wrapping_add(1));
        }
        let mss = if acceptor.is_ipv4() { self.synth.mss_ipv4 } else { self.synth.mss_ipv6 };
        let isn = PerDir::new(self.isns.next(), self.isns.next());
        let flow = match self.synth.segment {
            Segmentation::Mss => Flow::new(opener, acceptor, isn, mss),
            Segmentation::Gro => Flow::new(opener, acceptor, isn, mss).coalesced(),
        };
        let rules = Rules { redact: self.synth.redact.clone(), snap: o.snap };
        // What a new section's repeat quotes: the heading and the port it is written with.
        let heading = comment(&notes).unwrap_or_default();
        let mut leg = LegState::new(o.leg, flow, heading, o.scope, rules);
        leg.encrypted = o.tls_secrets.clone().map(|keys| Encrypted::new(keys, self.synth.budgets.records.clone()));
        // The leg is in before its keys are written: it keeps its state whatever that gives.
        self.legs.insert(id, Box::new(leg));
        if let Some(keys) = o.tls_secrets {
            self.section.secrets(o.leg, &keys)?;
        }
        self.emit(id, time, |f, e| f.handshake(e), stats)
    }

    /// Bytes that went `dir`, from `offset` in that direction's stream.
    fn data(
        &mut self,
        id: LegId,
        time: Timestamp,
        dir: Dir,
        offset: u64,
        bytes: &Bytes,
        stats: &Stats,
    ) -> io::Result<()> {
        self.catch_up(id, time, dir, offset, stats)?;
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        let real = leg.real[dir];
        let payload = &bytes[((real - offset.min(real)) as usize).min(bytes.len())..];
        if payload.is_empty() {
            return Ok(());
        }
        let was = leg.at_boundary();
        let out = match leg.encrypted.as_mut() {
            Some(enc) => {
                // TLS records: written as they crossed, and kept for the next file.
                enc.record(dir, payload);
                Rewritten { runs: vec![Run::Input(0..payload.len())], notes: Vec::new() }
            }
            None => {
                let mut allowance = crate::sync::lock(&self.synth.budgets.inflate);
                allowance.refill(time);
                leg.rewrite.feed(dir, payload, &mut allowance)
            }
        };
        leg.real[dir] += payload.len() as u64;
        self.rotation.moved(was, leg.at_boundary());
        self.write_rewritten(id, time, dir, &out, payload, stats)
    }

    /// Writes what the rewriter made of `input` going `dir`, with its notes; the receiver
    /// owes an ACK for it.
    fn write_rewritten(
        &mut self,
        id: LegId,
        time: Timestamp,
        dir: Dir,
        out: &Rewritten,
        input: &[u8],
        stats: &Stats,
    ) -> io::Result<()> {
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        for note in &out.notes {
            leg.note(note.clone());
        }
        let bytes = out.bytes(input);
        if bytes.is_empty() {
            return Ok(());
        }
        stats.bytes_captured.fetch_add(bytes.len() as u64, Relaxed);
        self.emit(id, time, |f, e| f.data(dir, &bytes, e), stats)?;
        if let Some(leg) = self.legs.get_mut(&id).filter(|_| self.acks.written()) {
            self.acks.owe(id, leg, dir);
        }
        Ok(())
    }

    /// Brings leg `id`'s stream going `dir` up to `offset`, counting what was lost. Bytes
    /// lost here were lost at no known frame boundary: the rewriter is told (what it held
    /// is written first).
    fn catch_up(&mut self, id: LegId, time: Timestamp, dir: Dir, offset: u64, stats: &Stats) -> io::Result<()> {
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        if offset <= leg.real[dir] {
            return Ok(());
        }
        let out = leg.rewrite.lose(dir, offset - leg.real[dir]);
        if let Some(enc) = leg.encrypted.as_mut() {
            enc.forget(Forgotten::Lost);
            leg.note(Note::TlsAfterLoss);
        }
        self.write_rewritten(id, time, dir, &out, &[], stats)?;
        self.count_lost(id, dir, offset);
        Ok(())
    }

    /// Moves leg `id`'s stream going `dir` on to `offset`, counting the bytes between as
    /// lost (in the leg's next comment and the section's statistics).
    fn count_lost(&mut self, id: LegId, dir: Dir, offset: u64) {
        let Some(leg) = self.legs.get_mut(&id) else { return };
        let lost = leg.catch_up(dir, offset);
        if lost > 0 {
            self.section.counts(leg.which).lost(lost, leg.flow.segment());
        }
    }

    /// The stream going `gap.dir` lost its bytes up to a frame boundary; what the rewriter
    /// held (a message searched for payload patterns) is written first.
    fn gap(&mut self, id: LegId, time: Timestamp, gap: Gap, stats: &Stats) -> io::Result<()> {
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        let held = leg.rewrite.gap(&gap);
        self.write_rewritten(id, time, gap.dir, &held, &[], stats)?;
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        let was = leg.at_boundary();
        let lost = leg.gap(gap.dir, gap.until, gap.frames);
        self.rotation.moved(was, leg.at_boundary());
        if lost > 0 {
            let counts = self.section.counts(leg.which);
            counts.lost(lost, leg.flow.segment());
            counts.lost_frames(gap.frames);
            // The receiver got those bytes: its ACK (with the gap's comment) shows the
            // loss in this file, as in a real capture, even if nothing follows here.
            self.acks.owe(id, leg, gap.dir);
        }
        Ok(())
    }

    /// The end that sends `dir` half-closed, its stream `offset` bytes long.
    fn fin(&mut self, id: LegId, time: Timestamp, dir: Dir, offset: u64, stats: &Stats) -> io::Result<()> {
        self.flush(id, time, dir, stats)?;
        self.catch_up(id, time, dir, offset, stats)?;
        if self.legs.get(&id).is_none_or(|leg| leg.flow.fin_sent(dir)) {
            return Ok(());
        }
        self.emit(id, time, |f, e| f.fin(dir, e), stats)?;
        if let Some(leg) = self.legs.get_mut(&id) {
            self.acks.fin(id, leg, time, dir);
        }
        Ok(())
    }

    /// Writes what leg `id` holds going `dir` (a message held for the payload patterns)
    /// as it stands: its stream ends.
    fn flush(&mut self, id: LegId, time: Timestamp, dir: Dir, stats: &Stats) -> io::Result<()> {
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        let held = leg.rewrite.flush(dir);
        self.write_rewritten(id, time, dir, &held, &[], stats)
    }

    /// The leg's socket closed: what it held, what it lost at the very end, its last
    /// packet with the close comment, and it is gone.
    fn close(
        &mut self,
        id: LegId,
        time: Timestamp,
        reason: Ending,
        offsets: PerDir<u64>,
        stats: &Stats,
    ) -> io::Result<()> {
        let Some(which) = self.legs.get(&id).map(|l| l.which) else { return Ok(()) };
        // What the remote end sent (wstap read it), and what wstap sent.
        let (remote, local) = (which.inbound(), which.inbound().reverse());
        for dir in [remote, local] {
            self.flush(id, time, dir, stats)?;
        }
        // Bytes lost at the very end: nothing follows them to be written differently.
        self.count_lost(id, remote, offsets[remote]);
        self.count_lost(id, local, offsets[local]);
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        leg.note(Note::Closed { leg: which, reason, bytes: leg.real, lost: leg.lost });
        match self.acks.last_packet(id, leg, time) {
            LastPacket::Held(last) => self.write_final(last, stats)?,
            LastPacket::Fin(dir) => self.emit(id, time, |f, e| f.fin(dir, e), stats)?,
            LastPacket::Ack(dir) => self.emit(id, time, |f, e| f.ack(dir, e), stats)?,
        }
        if let Some(leg) = self.legs.remove(&id) {
            self.rotation.ended(leg.at_boundary());
        }
        Ok(())
    }

    /// Writes a leg's last packet, held back until now.
    fn write_final(&mut self, last: Final, stats: &Stats) -> io::Result<()> {
        match last.kind {
            FinalKind::Ack => self.emit(last.leg, last.time, |f, e| f.ack(last.dir, e), stats),
            FinalKind::Rst => self.emit(last.leg, last.time, |f, e| f.rst(last.dir, e), stats),
        }
    }

    /// Runs `make` on the leg's flow and writes every packet it produces; the leg's notes,
    /// if any, go on the first one.
    fn emit(
        &mut self,
        id: LegId,
        time: Timestamp,
        make: impl FnOnce(&mut Flow, &mut dyn FnMut(Dir, Packet<'_>)),
        stats: &Stats,
    ) -> io::Result<()> {
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        let comments = Comments { first: leg.comment(), each: None };
        if self.section.write(leg.which, &mut leg.flow, time, comments, make, stats)? {
            leg.noted();
        }
        Ok(())
    }
}

/// The synthesized connections' initial sequence numbers (xorshift).
struct Isns(u64);

impl Isns {
    fn next(&mut self) -> u32 {
        let x = &mut self.0;
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        (*x >> 16) as u32
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::event::Scope;
    use crate::capture::ids::ConnId;
    use crate::capture::note::{Forgotten as F, Repeats};
    use crate::config::Snap;
    use bytes::Bytes;
    use etherparse::{SlicedPacket, TransportSlice};
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
    use pcap_file::pcapng::{Block, PcapNgReader};
    use wstap_wire::wsframe::{first_byte, FrameHeader, Opcode};

    fn data(dir: Dir, offset: u64, bytes: &[u8]) -> What {
        What::Data { dir, offset, bytes: Bytes::copy_from_slice(bytes) }
    }

    /// An HTTP request head whose body runs on, and a response head whose body runs to the
    /// close: a plain leg's bytes after these are passed through as they come.
    const UP_HEAD: &[u8] = b"POST / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n";
    const DOWN_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";
    const HEADS: PerDir<u64> = PerDir::new(UP_HEAD.len() as u64, DOWN_HEAD.len() as u64);

    /// The two heads, then `body` with its offsets after them.
    fn after_heads(body: Vec<What>) -> Vec<What> {
        let shift = |w: What| match w {
            What::Data { dir, offset, bytes } => What::Data { dir, offset: offset + HEADS[dir], bytes },
            What::Fin { dir, offset } => What::Fin { dir, offset: offset + HEADS[dir] },
            What::Close { reason, offsets } => What::Close { reason, offsets: offsets.map(|d, o| o + HEADS[d]) },
            other => other,
        };
        let mut out = vec![data(Dir::Up, 0, UP_HEAD), data(Dir::Down, 0, DOWN_HEAD)];
        out.extend(body.into_iter().map(shift));
        out
    }

    /// A writer into memory: no pure ACKs, a 5 s rotation wait.
    fn test_writer() -> CaptureWriter<Vec<u8>> {
        test_writer_acks(PureAcks::Omitted)
    }

    fn test_writer_acks(acks: PureAcks) -> CaptureWriter<Vec<u8>> {
        let info = SectionInfo { application: "t".into(), os: "t".into(), hostname: "t".into(), ..Default::default() };
        let synth = Synthesis {
            mss_ipv4: 1460,
            mss_ipv6: 1440,
            segment: Default::default(),
            acks,
            display_port: DisplayPort::Real,
            redact: Default::default(),
            isn_seed: 7,
            rotate_wait: Duration::from_secs(5),
            budgets: Default::default(),
        };
        CaptureWriter::new(Vec::new(), &info, Legs { client: true, upstream: true }, synth).unwrap()
    }

    /// A client leg from 127.0.0.1:40000 to wstap's 127.0.0.1:8080.
    fn client_leg(comment: &str, scope: Scope) -> Opening {
        Opening {
            leg: Leg::Client,
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: "127.0.0.1:40000".parse().unwrap(),
            heading: comment.into(),
            scope,
            conn: ConnId(1),
            label: String::new(),
            snap: Snap::default(),
            tls_secrets: None,
        }
    }

    /// (seq, payload length, comment) of each packet in a pcapng written by `events`.
    fn written(events: Vec<What>) -> Vec<(u32, usize, Option<String>)> {
        written_by(test_writer(), events.into_iter().map(Some).collect())
            .into_iter()
            .map(|(seq, len, comment, _)| (seq, len, comment))
            .collect()
    }

    /// (seq, payload length, comment, flags) of each packet `w` writes for `events`;
    /// `None` stands for the writer catching up with its queue ([`CaptureWriter::idle`]).
    fn written_by(
        mut w: CaptureWriter<Vec<u8>>,
        events: Vec<Option<What>>,
    ) -> Vec<(u32, usize, Option<String>, String)> {
        let stats = Stats::default();
        for (i, what) in events.into_iter().enumerate() {
            match what {
                Some(what) => {
                    let ev = Event { time: Timestamp::from_nanos(1_000 + i as u64), leg: LegId(1), what };
                    assert!(matches!(w.process(ev, &stats).unwrap(), Processed::Done));
                }
                None => w.idle(&stats).unwrap(),
            }
        }
        let bytes = w.finish(&stats).unwrap().unwrap();
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut out = Vec::new();
        while let Some(b) = r.next_block() {
            if let Block::EnhancedPacket(p) = b.unwrap() {
                let sliced = SlicedPacket::from_ip(&p.data).unwrap();
                let Some(TransportSlice::Tcp(tcp)) = sliced.transport else { panic!() };
                let comment = p.options.iter().find_map(|o| match o {
                    EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                    _ => None,
                });
                let flags = [(tcp.syn(), 'S'), (tcp.fin(), 'F'), (tcp.rst(), 'R'), (tcp.psh(), 'P')];
                let flags = flags.iter().filter(|f| f.0).map(|f| f.1).collect();
                out.push((tcp.sequence_number(), tcp.payload().len(), comment, flags));
            }
        }
        out
    }

    #[test]
    fn an_endless_frame_delays_rotation_only_up_to_the_limit_and_is_commented() {
        let mut w = test_writer();
        let stats = Stats::default();
        let sec = 1_000_000_000u64;
        let t = Timestamp::from_nanos;
        let opening = client_leg("s", Scope::Session);
        let head = b"GET / HTTP/1.1\r\n\r\n";
        // A 1 TiB frame that never ends.
        let frame_start = FrameHeader::encode(first_byte(true, false, Opcode::Binary), 1 << 40, None);
        let step = |w: &mut CaptureWriter<Vec<u8>>, time, what| {
            w.process(Event { time: t(time), leg: LegId(1), what }, &stats).unwrap()
        };
        assert!(matches!(step(&mut w, 0, What::Open(Box::new(opening))), Processed::Done));
        assert!(matches!(step(&mut w, 1, data(Dir::Up, 0, head)), Processed::Done));
        assert!(matches!(step(&mut w, 2, data(Dir::Up, head.len() as u64, &frame_start)), Processed::Done));
        w.rotation_due(t(3));
        let mut off = (head.len() + frame_start.len()) as u64;
        for t in [sec, 2 * sec, 4 * sec] {
            assert!(
                matches!(step(&mut w, t, data(Dir::Up, off, &[0; 100])), Processed::Done),
                "mid-frame: rotation waits"
            );
            off += 100;
        }
        assert!(!w.ready_to_rotate(t(4 * sec)));
        assert!(w.ready_to_rotate(t(5 * sec + 3)), "but not longer than rotate_wait");
        let Processed::RotateFirst { then: Some(next) } = step(&mut w, 6 * sec, data(Dir::Up, off, &[0; 100])) else {
            panic!("rotation is forced")
        };
        w.rotate(Vec::new(), &stats).unwrap();
        w.process(next, &stats).unwrap();
        let second = w.finish(&stats).unwrap().unwrap();
        let comments = packet_comments(&second);
        let inside = Note::StartsInsideFrame { audience: Audience::File, waited: Duration::from_secs(5) };
        assert!(comments[0].contains(&inside.to_string()), "{comments:?}");
    }

    /// Pure ACKs come only where no data of the receiver's can carry the acknowledgement,
    /// as with a real stack's delayed ACKs: an echo exchange has none between messages.
    #[test]
    fn a_pure_ack_is_written_only_when_no_data_carries_it() {
        let opening = client_leg("c", Scope::Connection);
        let packets = written_by(
            test_writer_acks(PureAcks::Written),
            [What::Open(Box::new(opening.clone()))]
                .into_iter()
                .chain(after_heads(vec![
                    data(Dir::Up, 0, b"ping"),
                    data(Dir::Down, 0, b"pong"), // carries wstap's ACK of "ping"
                    data(Dir::Up, 4, b"ping"),   // carries the client's ACK of "pong"
                    data(Dir::Up, 8, b"more"),   // wstap's pure ACK first: nothing carried it
                ]))
                .map(Some)
                .chain([
                    None, // caught up: the ACK owed for "more"
                    Some(What::Close {
                        reason: Ending::Said("done".into()),
                        offsets: PerDir::new(12, 4).map(|d, o| o + HEADS[d]),
                    }),
                ])
                .collect(),
        );
        // SYN, SYN-ACK, ACK and the two heads, then the exchange.
        let shape: Vec<(usize, &str)> = packets.iter().skip(5).map(|p| (p.1, p.3.as_str())).collect();
        assert_eq!(shape, [(4, "P"), (4, "P"), (4, "P"), (0, ""), (4, "P"), (0, ""), (0, "F")]);

        // An ACK still owed when the leg closes is its last packet, with the close comment.
        let packets = written_by(
            test_writer_acks(PureAcks::Written),
            [What::Open(Box::new(opening))]
                .into_iter()
                .chain(after_heads(vec![
                    data(Dir::Up, 0, b"ping"),
                    What::Close { reason: Ending::Said("done".into()), offsets: PerDir::new(4, 0) },
                ]))
                .map(Some)
                .collect(),
        );
        let last = packets.last().unwrap();
        assert_eq!((last.1, last.3.as_str()), (0, ""), "{packets:?}");
        let closed = Note::Closed {
            leg: Leg::Client,
            reason: Ending::Said("done".into()),
            bytes: PerDir::new(4, 0).map(|d, o| o + HEADS[d]),
            lost: PerDir::default(),
        };
        assert_eq!(last.2.as_deref(), Some(closed.to_string().as_str()), "{packets:?}");
    }

    #[test]
    fn lost_bytes_show_as_a_sequence_jump_with_a_comment() {
        let opening = client_leg("first", Scope::Connection);
        let mut events = vec![What::Open(Box::new(opening))];
        events.extend(after_heads(vec![
            data(Dir::Up, 0, b"abc"),
            data(Dir::Up, 503, b"def"),               // 500 bytes were dropped in between
            What::Fin { dir: Dir::Down, offset: 10 }, // and all 10 bytes wstap sent
            What::Close { reason: Ending::Said("done".into()), offsets: PerDir::new(506, 10) },
        ]));
        let packets = written(events);
        assert_eq!(packets[0].2.as_deref(), Some("first"), "the session comment is on the SYN");
        let (seq_abc, seq_def) = (packets[5].0, packets[6].0);
        assert_eq!(seq_def.wrapping_sub(seq_abc), 503);
        assert_eq!(packets[6].2, Some(Note::QueueLoss { bytes: 500 }.to_string()));
        let closed = Note::Closed {
            leg: Leg::Client,
            reason: Ending::Said("done".into()),
            bytes: PerDir::new(506, 10).map(|d, o| o + HEADS[d]),
            lost: PerDir::new(500, 10),
        };
        assert_eq!(packets.last().unwrap().2, Some(closed.to_string()));
        let fin = &packets[7];
        assert_eq!(fin.2, Some(Note::QueueLoss { bytes: 10 }.to_string()), "{fin:?}");
    }

    #[test]
    fn each_file_ends_with_the_statistics_of_each_interface() {
        use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption as Isb;
        let mut w = test_writer();
        let stats = Stats::default();
        let mut events = vec![What::Open(Box::new(client_leg("c", Scope::Connection)))];
        events.extend(after_heads(vec![
            data(Dir::Up, 0, b"abc"),
            data(Dir::Up, 3003, b"def"), // 3000 bytes lost: three 1460-byte segments' worth
        ]));
        for (i, what) in events.into_iter().enumerate() {
            w.process(Event { time: Timestamp::from_nanos(1_000 + i as u64), leg: LegId(1), what }, &stats).unwrap();
        }
        let bytes = w.finish(&stats).unwrap().unwrap();
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut isbs = Vec::new();
        while let Some(b) = r.next_block() {
            if let Block::InterfaceStatistics(s) = b.unwrap() {
                isbs.push(s.into_owned());
            }
        }
        assert_eq!(isbs.len(), 2, "one per interface");
        let client = &isbs[0].options;
        assert!(client.contains(&Isb::IsbIfDrop(3)) && client.contains(&Isb::IsbIfRecv(5 + 3 + 2)), "{client:?}");
        let loss = Note::SectionLoss { bytes: 3000, frames: 0 }.to_string();
        assert!(client.iter().any(|o| matches!(o, Isb::Comment(c) if *c == loss)), "{client:?}");
        assert!(isbs[1].options.contains(&Isb::IsbIfDrop(0)), "{:?}", isbs[1].options);
    }

    /// Every packet comment in `file`, in order.
    fn packet_comments(file: &[u8]) -> Vec<String> {
        let mut r = PcapNgReader::new(file).unwrap();
        let mut comments = Vec::new();
        while let Some(b) = r.next_block() {
            if let Block::EnhancedPacket(p) = b.unwrap() {
                comments.extend(p.options.iter().filter_map(|o| match o {
                    EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                    _ => None,
                }));
            }
        }
        comments
    }

    /// (type, body) of each pcapng block in `file` (little-endian, as written).
    fn blocks(file: &[u8]) -> Vec<(u32, &[u8])> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 12 <= file.len() {
            let kind = u32::from_le_bytes(file[at..at + 4].try_into().unwrap());
            let len = u32::from_le_bytes(file[at + 4..at + 8].try_into().unwrap()) as usize;
            out.push((kind, &file[at + 8..at + len - 4]));
            at += len;
        }
        out
    }

    #[test]
    fn an_encrypted_leg_is_written_as_it_came_with_its_keys_and_repeated_whole_within_its_bound() {
        let mut w = test_writer();
        let stats = Stats::default();
        let mut opening = client_leg("tls", Scope::Session);
        opening.tls_secrets = Some("CLIENT_RANDOM aa bb\n".into());
        let (hello, answer) = (b"\x16\x03\x01\x00\x05hello", b"\x16\x03\x03\x00\x06answer");
        let one = Timestamp::from_nanos(1);
        let step =
            |w: &mut CaptureWriter<Vec<u8>>, what| w.process(Event { time: one, leg: LegId(1), what }, &stats).unwrap();
        step(&mut w, What::Open(Box::new(opening)));
        step(&mut w, data(Dir::Up, 0, hello));
        step(&mut w, data(Dir::Down, 0, answer));
        let stats = Stats::default();
        let first = w.rotate(Vec::new(), &stats).unwrap().unwrap();
        let second = w.rotate(Vec::new(), &stats).unwrap().unwrap();
        for file in [&first, &second] {
            let blocks = blocks(file);
            let dsb = blocks.iter().position(|b| b.0 == 0x0A).expect("a Decryption Secrets Block");
            assert!(dsb < blocks.iter().position(|b| b.0 == 6).unwrap(), "before the first packet");
            assert_eq!(&blocks[dsb].1[..8], &[0x4b, 0x53, 0x4c, 0x54, 20, 0, 0, 0], "TLSK, 20 bytes");
            assert_eq!(&blocks[dsb].1[8..28], b"CLIENT_RANDOM aa bb\n");
            // The records, untouched, in the order they crossed (repeated in the second).
            let packets: Vec<&[u8]> = blocks.iter().filter(|b| b.0 == 6).map(|b| b.1).collect();
            let carrying = |record: &[u8]| {
                let at: Vec<usize> =
                    (0..packets.len()).filter(|i| packets[*i].windows(record.len()).any(|w| w == record)).collect();
                assert_eq!(at.len(), 1, "one packet carries {record:?}");
                at[0]
            };
            assert!(carrying(hello) < carrying(answer));
        }
        // Past the bound, a new file no longer repeats the records, and says why.
        let big = vec![0x17; super::super::encrypted::MAX_LEG_HISTORY];
        let ev = Event { time: Timestamp::from_nanos(2), leg: LegId(1), what: data(Dir::Up, hello.len() as u64, &big) };
        w.process(ev, &stats).unwrap();
        w.rotate(Vec::new(), &stats).unwrap();
        let third = w.finish(&stats).unwrap().unwrap();
        let comments = packet_comments(&third);
        let not_kept = Note::Repeated {
            audience: Audience::File,
            heading: "tls".into(),
            what: Repeats::TlsNotKept(F::LegBound { kib: 1024 }),
            unwritten: 0,
        };
        assert!(comments[0].ends_with(&not_kept.to_string()), "{comments:?}");
        assert_eq!(w.synth.budgets.records.load(Relaxed), 0, "the leg's share of the budget is given back");
    }
}
