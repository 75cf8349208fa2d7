//! Turns recorder events into pcapng packets: one synthesized [`Flow`] per connection
//! leg, the session comments, held-back final packets, and rotation. Rotation happens
//! only where every live WebSocket session is between frames (or when waiting any longer
//! would be unbounded), and a new section begins with each live leg's replayed handshake
//! and Upgrade exchange, so every file decodes on its own. Pure apart from writing to `W`;
//! the caller decides when rotation is due and supplies each new `W`.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::capture::encrypted::{Budget, Encrypted};
use crate::capture::event::{Event, LegId, Opening, What};
use crate::capture::leg::{add_note, Final, LegState, Pending};
use crate::capture::rewrite::{Fed, Rules, Run};
use crate::capture::stats::Stats;
use crate::capture::{ports, redact};
use crate::config::{DisplayPort, Legs, Redact, Segmentation};
use crate::sync::lock;
use wstap_wire::deflate::Allowance;
use wstap_wire::dir::{Dir, Leg, PerDir, PerLeg};
use wstap_wire::pcapng::{InterfaceStats, PcapngWriter, SectionInfo};
use wstap_wire::tcp::{Flow, Packet};
use wstap_wire::Timestamp;

/// How packets are synthesized.
#[derive(Debug, Clone)]
pub struct Synthesis {
    /// Largest synthesized segment over IPv4.
    pub mss_ipv4: u16,
    /// Largest synthesized segment over IPv6.
    pub mss_ipv6: u16,
    /// Segments of the MSS, or as large as the proxy relayed them.
    pub segment: Segmentation,
    /// The receiver acknowledges each chunk of data: on its own next data when that
    /// comes first, else with a pure ACK.
    pub acks: bool,
    /// Which port the server side of each leg is written with.
    pub display_port: DisplayPort,
    /// What is masked before it is written.
    pub redact: Arc<Redact>,
    /// How much the writer (every writer of a sink) may inflate to follow deflate windows.
    pub inflate: Arc<Mutex<Allowance>>,
    /// Seed of the ISN generator (xorshift; ISNs need to look random, not be secret).
    pub isn_seed: u64,
    /// Longest a due rotation waits for every session to reach a frame boundary (in
    /// event time); then it cuts and says so in a comment.
    pub rotate_wait: Duration,
    /// What every writer of a sink's encrypted legs keep of their records, together.
    pub history: Budget,
}

impl Synthesis {
    /// As `settings` say, with ISNs from `seed`, and an inflate allowance and a record
    /// budget of its own.
    pub fn new(settings: &crate::config::CaptureSettings, seed: u64) -> Synthesis {
        Synthesis {
            mss_ipv4: settings.mss_ipv4,
            mss_ipv6: settings.mss_ipv6,
            segment: settings.segment,
            acks: settings.acks,
            display_port: settings.display_port,
            redact: Arc::new(settings.redact.clone()),
            inflate: Arc::default(),
            isn_seed: seed,
            rotate_wait: settings.rotate.max_wait,
            history: Budget::default(),
        }
    }
}

/// Whom live legs are replayed for at the start of a section.
#[derive(Debug, Clone, Copy)]
enum Replay {
    /// A new file.
    File,
    /// A live stream's new subscriber.
    Stream,
}

/// What the caller should do after [`CaptureWriter::process`].
#[derive(Debug)]
pub enum Step {
    /// The event is written.
    Done,
    /// Rotate now ([`CaptureWriter::rotate`]), then process `then` (the event, or the rest
    /// of it after a frame boundary).
    Rotate {
        /// What to process after rotating.
        then: Option<Event>,
    },
}

/// Turns events into pcapng packets, section after section.
pub struct CaptureWriter<W: Write> {
    /// `None` while no file can be written: events still move the flows on, so that the
    /// next file starts in step.
    out: Option<PcapngWriter<W>>,
    info: SectionInfo,
    wanted: Legs,
    interfaces: PerLeg<Option<u32>>,
    /// Ordered by leg id, so replays come out in a stable order.
    legs: BTreeMap<LegId, LegState>,
    synth: Synthesis,
    isn_state: u64,
    last_time: u64,
    pending: Option<Pending>,
    /// Event time at which rotation became due.
    rotation_due: Option<u64>,
    /// Bytes dropped while no file could be written, to report in the next file.
    unwritten: u64,
    /// Live legs inside a frame (kept where that changes, so a due rotation does not
    /// scan every leg per event).
    mid_frame: usize,
    /// Legs that came to owe an ACK since the writer last caught up (some may have
    /// settled it since), so that [`CaptureWriter::idle`] does not scan every leg.
    acks_owed: Vec<LegId>,
    /// What each interface saw in the current section, for its statistics block.
    section: PerLeg<SectionCount>,
}

/// What one interface saw in the current section (file).
#[derive(Debug, Clone, Copy, Default)]
struct SectionCount {
    /// The time of its first packet, and of its last.
    first: Option<u64>,
    last: u64,
    packets: u64,
    /// Packets the lost bytes would have made, and the bytes.
    dropped: u64,
    lost_bytes: u64,
    /// WebSocket frames lost, whole or in part, when the tap could tell.
    lost_frames: u64,
}

impl SectionCount {
    fn packet(&mut self, time: u64) {
        self.first.get_or_insert(time);
        self.last = time;
        self.packets += 1;
    }

    fn lost(&mut self, bytes: u64, mss: usize) {
        self.lost_bytes += bytes;
        self.dropped += bytes.div_ceil(mss.max(1) as u64);
    }
}

impl<W: Write> CaptureWriter<W> {
    /// A writer with its first section begun in `w`.
    pub fn new(w: W, info: &SectionInfo, legs: Legs, synth: Synthesis) -> io::Result<Self> {
        let mut writer = CaptureWriter::detached(info, legs, synth);
        writer.begin_section(w)?;
        Ok(writer)
    }

    /// A writer with no output yet: [`CaptureWriter::rotate`] gives it one.
    pub fn detached(info: &SectionInfo, legs: Legs, synth: Synthesis) -> Self {
        let isn_state = synth.isn_seed | 1;
        CaptureWriter {
            out: None,
            info: info.clone(),
            wanted: legs,
            interfaces: PerLeg::default(),
            legs: BTreeMap::new(),
            synth,
            isn_state,
            last_time: 0,
            pending: None,
            rotation_due: None,
            unwritten: 0,
            mid_frame: 0,
            acks_owed: Vec::new(),
            section: PerLeg::default(),
        }
    }

    /// Section header and interfaces at the start of `w`.
    fn begin_section(&mut self, w: W) -> io::Result<()> {
        let mut out = PcapngWriter::new(w, &self.info).map_err(io::Error::other)?;
        self.interfaces = PerLeg::default();
        self.section = PerLeg::default();
        for (leg, description) in [(Leg::Client, "client <-> wstap listener"), (Leg::Upstream, "wstap <-> upstream")] {
            if self.wanted.has(leg) {
                let id = out.add_interface(leg.name(), description, leg.inbound()).map_err(io::Error::other)?;
                self.interfaces[leg] = Some(id);
            }
        }
        self.out = Some(out);
        Ok(())
    }

    /// The output being written, if any.
    pub fn get_mut(&mut self) -> Option<&mut W> {
        self.out.as_mut().map(PcapngWriter::get_mut)
    }

    /// Ends the current section: writes what is held back and hands back its writer.
    pub fn finish(&mut self, stats: &Stats) -> io::Result<Option<W>> {
        self.write_pending(stats)?;
        self.idle(stats)?;
        self.write_statistics()?;
        Ok(self.out.take().map(PcapngWriter::into_inner))
    }

    /// One Interface Statistics Block per interface, at the end of the section: what it
    /// received and what the capture lost of it (Wireshark: Capture File Properties).
    fn write_statistics(&mut self) -> io::Result<()> {
        let Some(out) = self.out.as_mut() else { return Ok(()) };
        for (leg, interface) in self.interfaces.iter() {
            let Some(interface) = interface else { continue };
            let c = self.section[leg];
            let ns = Timestamp::from_nanos;
            let stats = InterfaceStats {
                start: ns(c.first.unwrap_or(self.last_time)),
                end: ns(c.last.max(c.first.unwrap_or(self.last_time))),
                received: c.packets + c.dropped,
                dropped: c.dropped,
            };
            let comment = (c.lost_bytes > 0).then(|| {
                format!(
                    "wstap: {} bytes ({} WebSocket frames, where wstap could follow them) of this interface's \
                     connections were not captured in this file (capture queue full); dropped packets count the \
                     segments they would have made",
                    c.lost_bytes, c.lost_frames
                )
            });
            out.statistics(*interface, &stats, comment.as_deref())?;
        }
        Ok(())
    }

    /// Brings leg `id`'s stream going `dir` up to `offset`, counting what was lost. Bytes
    /// lost here were lost at no known frame boundary: the rewriter is told (what it held
    /// is written first, then the stream's framing is given up).
    fn catch_up(&mut self, id: LegId, time: u64, dir: Dir, offset: u64, stats: &Stats) -> io::Result<()> {
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        if offset <= leg.real[dir] {
            return Ok(());
        }
        let held = leg.rewrite.lose(dir);
        if let Some(enc) = leg.encrypted.as_mut() {
            enc.forget("the capture lost some of its records".to_owned());
            let note = "the TLS records after this gap cannot be decrypted: each depends on the records before it";
            add_note(&mut leg.note, note.to_owned());
        }
        self.write_fed(id, time, dir, &held, &[], stats)?;
        self.count_lost(id, dir, offset);
        Ok(())
    }

    /// Moves leg `id`'s stream going `dir` on to `offset`, counting the bytes between as
    /// lost (in the leg's next comment and the file's statistics).
    fn count_lost(&mut self, id: LegId, dir: Dir, offset: u64) {
        let Some(leg) = self.legs.get_mut(&id) else { return };
        let lost = leg.catch_up(dir, offset);
        if lost > 0 {
            self.section[leg.leg].lost(lost, leg.flow.segment());
        }
    }

    /// The current output failed: go on without one (flows keep moving) until
    /// [`CaptureWriter::rotate`] gives a new one.
    pub fn lose_output(&mut self) -> Option<W> {
        self.pending = None;
        self.out.take().map(PcapngWriter::into_inner)
    }

    /// New settings for the next section and for legs opened from now on (live legs
    /// keep the segment size and ports they started with).
    pub fn reconfigure(&mut self, legs: Legs, synth: Synthesis) {
        self.wanted = legs;
        self.synth = Synthesis { isn_seed: self.synth.isn_seed, ..synth };
    }

    /// Asks for a rotation as soon as every live session is between frames.
    pub fn rotation_due(&mut self, time: u64) {
        self.rotation_due.get_or_insert(time);
    }

    /// The due rotation is taken care of (the file was finished with nothing live).
    pub fn rotation_done(&mut self) {
        self.rotation_due = None;
    }

    /// A due rotation can happen now, between events: every session is between frames,
    /// or it has waited as long as it may.
    pub fn ready_to_rotate(&self, now: u64) -> bool {
        self.rotation_due
            .is_some_and(|due| self.mid_frame == 0 || now >= due + self.synth.rotate_wait.as_nanos() as u64)
    }

    /// The writer has caught up with its queue: the ACKs still owed are written now
    /// (no data is coming that they could ride on).
    pub fn idle(&mut self, stats: &Stats) -> io::Result<()> {
        let owed = std::mem::take(&mut self.acks_owed);
        for (i, id) in owed.iter().enumerate() {
            if let Err(e) = self.settle_ack(*id, None, stats) {
                self.acks_owed.extend_from_slice(&owed[i + 1..]);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes the pure ACK leg `id` owes, unless the leg is about to send data or a FIN
    /// `next` the way the ACK goes (which carries the acknowledgement).
    fn settle_ack(&mut self, id: LegId, next: Option<Dir>, stats: &Stats) -> io::Result<()> {
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        let Some(due) = leg.ack_due.take() else { return Ok(()) };
        if next == Some(due) {
            return Ok(());
        }
        self.emit(id, self.last_time, |f, e| f.ack(due, e), stats)
    }

    /// Live legs.
    pub fn live(&self) -> usize {
        self.legs.len()
    }

    fn next_isn(&mut self) -> u32 {
        let x = &mut self.isn_state;
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        (*x >> 16) as u32
    }

    /// Writes the packets one event stands for, or says it is time to rotate first.
    pub fn process(&mut self, mut ev: Event, stats: &Stats) -> io::Result<Step> {
        if let Some(due) = self.rotation_due {
            if self.mid_frame == 0 || ev.time >= due + self.synth.rotate_wait.as_nanos() as u64 {
                return Ok(Step::Rotate { then: Some(ev) });
            }
            // Cut a chunk at its leg's next frame boundary if that is the last one missing.
            if let What::Data { dir, offset, bytes } = &ev.what {
                let Some(leg) = self.legs.get(&ev.leg) else { return self.apply(ev, stats).map(|()| Step::Done) };
                // This leg is the only one inside a frame, and only in this direction.
                let others_ready =
                    self.mid_frame == 1 && !leg.at_boundary() && leg.rewrite.side_at_boundary(dir.reverse());
                let skip = leg.real[*dir].saturating_sub(*offset).min(bytes.len() as u64) as usize;
                let cut = leg.rewrite.boundary_in(*dir, &bytes[skip..]).map(|n| skip + n);
                if let Some(cut) = cut.filter(|cut| others_ready && leg.session && *cut < bytes.len()) {
                    let (offset, dir, rest) = (*offset, *dir, bytes.slice(cut..));
                    let rest = Event {
                        time: ev.time,
                        leg: ev.leg,
                        what: What::Data { dir, offset: offset + cut as u64, bytes: rest },
                    };
                    if let What::Data { bytes, .. } = &mut ev.what {
                        bytes.truncate(cut);
                    }
                    self.apply(ev, stats)?;
                    return Ok(Step::Rotate { then: Some(rest) });
                }
            }
        }
        self.apply(ev, stats)?;
        Ok(Step::Done)
    }

    fn apply(&mut self, ev: Event, stats: &Stats) -> io::Result<()> {
        // Timestamps stay in file order even when two legs' events race by a few µs.
        let time = ev.time.max(self.last_time);
        self.last_time = time;
        self.settle_before(&ev, time, stats)?;
        let id = ev.leg;
        match ev.what {
            What::Open(o) => self.open(id, time, *o, stats),
            What::Data { dir, offset, bytes } => self.on_data(id, time, dir, offset, &bytes, stats),
            What::Fin { dir, offset } => self.on_fin(id, time, dir, offset, stats),
            What::Gap { dir, until, frames, compressed } => {
                self.on_gap(id, time, (dir, until, frames, compressed), stats)
            }
            What::Reset => {
                if let Some(leg) = self.legs.get_mut(&id) {
                    // The remote end aborted: its RST is the leg's last packet.
                    let dir = leg.leg.inbound();
                    leg.last.get_or_insert(Pending { leg: id, time, dir, kind: Final::Rst });
                }
                Ok(())
            }
            What::Note(text) => {
                if let Some(leg) = self.legs.get_mut(&id) {
                    add_note(&mut leg.note, text);
                }
                Ok(())
            }
            What::Session { comment, snap } => {
                if let Some(leg) = self.legs.get_mut(&id) {
                    add_note(&mut leg.note, redact::text(&comment, &self.synth.redact));
                    leg.begin_session(Rules { redact: self.synth.redact.clone(), snap });
                    self.mid_frame += usize::from(!leg.at_boundary());
                }
                Ok(())
            }
            What::Close { reason, offsets } => self.close(id, time, &reason, offsets, stats),
        }
    }

    /// Before an event: the packet held back goes out (unless the event closes its leg,
    /// whose comment it waits for), and so does an ACK the leg owes, unless the event
    /// carries it.
    fn settle_before(&mut self, ev: &Event, time: u64, stats: &Stats) -> io::Result<()> {
        let closing_this_leg =
            matches!(ev.what, What::Close { .. }) && self.pending.as_ref().is_some_and(|p| p.leg == ev.leg);
        if !closing_this_leg {
            self.write_pending(stats)?;
        }
        match &ev.what {
            // The leg's last packet, unless it already has one: held for the close comment.
            What::Close { .. } if self.legs.get(&ev.leg).is_some_and(|l| l.last.is_none() && l.ack_due.is_some()) => {
                if let Some(dir) = self.legs.get_mut(&ev.leg).and_then(|l| l.ack_due.take()) {
                    self.write_pending(stats)?;
                    self.pending = Some(Pending { leg: ev.leg, time, dir, kind: Final::Ack });
                }
                Ok(())
            }
            What::Note(_) | What::Open(_) => Ok(()),
            What::Data { dir, .. } | What::Fin { dir, .. } => self.settle_ack(ev.leg, Some(*dir), stats),
            _ => self.settle_ack(ev.leg, None, stats),
        }
    }

    /// Bytes that went `dir`, from `offset` in that direction's stream.
    fn on_data(&mut self, id: LegId, time: u64, dir: Dir, offset: u64, bytes: &Bytes, stats: &Stats) -> io::Result<()> {
        self.catch_up(id, time, dir, offset, stats)?;
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        let real = leg.real[dir];
        let payload = &bytes[((real - offset.min(real)) as usize).min(bytes.len())..];
        if payload.is_empty() {
            return Ok(());
        }
        let was = leg.at_boundary();
        let fed = if let Some(enc) = leg.encrypted.as_mut() {
            // TLS records: written as they crossed, and kept for the next file.
            enc.record(dir, payload);
            Fed { runs: vec![Run::Kept(0..payload.len())], notes: Vec::new() }
        } else {
            let mut allowance = lock(&self.synth.inflate);
            allowance.refill(Timestamp::from_nanos(time));
            leg.rewrite.feed(dir, payload, &mut allowance)
        };
        leg.real[dir] += payload.len() as u64;
        self.mid_frame =
            self.mid_frame + usize::from(was && !leg.at_boundary()) - usize::from(!was && leg.at_boundary());
        self.write_fed(id, time, dir, &fed, payload, stats)
    }

    /// Writes what the rewriter made of `input` going `dir`, with its comments.
    fn write_fed(&mut self, id: LegId, time: u64, dir: Dir, fed: &Fed, input: &[u8], stats: &Stats) -> io::Result<()> {
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        for note in &fed.notes {
            add_note(&mut leg.note, note.clone());
        }
        let out = fed.bytes(input);
        if out.is_empty() {
            return Ok(());
        }
        stats.bytes_captured.fetch_add(out.len() as u64, Relaxed);
        self.emit(id, time, |f, e| f.data(dir, &out, e), stats)?;
        if self.synth.acks {
            if let Some(leg) = self.legs.get_mut(&id) {
                if leg.ack_due.replace(dir.reverse()).is_none() {
                    self.acks_owed.push(id);
                }
            }
        }
        Ok(())
    }

    /// The stream going `dir` lost its bytes up to `until`, where a frame begins; what
    /// the rewriter held (a message searched for payload patterns) is written first.
    fn on_gap(&mut self, id: LegId, time: u64, gap: (Dir, u64, u64, bool), stats: &Stats) -> io::Result<()> {
        let (dir, until, frames, compressed) = gap;
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        let held = leg.rewrite.gap(dir, compressed);
        self.write_fed(id, time, dir, &held, &[], stats)?;
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        let was = leg.at_boundary();
        let lost = leg.gap(dir, until, frames);
        self.mid_frame =
            self.mid_frame + usize::from(was && !leg.at_boundary()) - usize::from(!was && leg.at_boundary());
        if lost > 0 {
            self.section[leg.leg].lost(lost, leg.flow.segment());
            self.section[leg.leg].lost_frames += frames;
            // The receiver got those bytes: its ACK (with the gap's comment) shows the
            // loss in this file, as in a real capture, even if nothing follows here.
            if self.synth.acks && leg.ack_due.replace(dir.reverse()).is_none() {
                self.acks_owed.push(id);
            }
        }
        Ok(())
    }

    /// The end that sends `dir` half-closed, its stream `offset` bytes long.
    fn on_fin(&mut self, id: LegId, time: u64, dir: Dir, offset: u64, stats: &Stats) -> io::Result<()> {
        self.flush(id, time, dir, stats)?;
        self.catch_up(id, time, dir, offset, stats)?;
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        if leg.flow.fin_sent(dir) {
            return Ok(());
        }
        self.emit(id, time, |f, e| f.fin(dir, e), stats)?;
        let ack = Pending { leg: id, time, dir: dir.reverse(), kind: Final::Ack };
        match self.legs.get_mut(&id) {
            Some(leg) if leg.flow.fin_sent(dir.reverse()) => leg.last = Some(ack),
            _ => self.pending = Some(ack),
        }
        Ok(())
    }

    /// Writes what leg `id` holds going `dir` (a message held for the payload patterns)
    /// as it stands: its stream ends.
    fn flush(&mut self, id: LegId, time: u64, dir: Dir, stats: &Stats) -> io::Result<()> {
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        let held = leg.rewrite.flush(dir);
        self.write_fed(id, time, dir, &held, &[], stats)
    }

    fn open(&mut self, id: LegId, time: u64, o: Opening, stats: &Stats) -> io::Result<()> {
        if !self.wanted.has(o.leg) {
            return Ok(());
        }
        // The opener sends `Up`: the client on the client leg, wstap on the upstream leg.
        // The server side may be shown with the display port.
        let (opener, acceptor) = match o.leg {
            Leg::Client => (o.remote, o.local),
            Leg::Upstream => (o.local, o.remote),
        };
        let (mut opener, acceptor, real_port) = match o.tls_secrets {
            Some(_) => ports::display_encrypted(opener, acceptor, self.synth.display_port),
            None => ports::display(opener, acceptor, self.synth.display_port),
        };
        // The comment quotes the request line: its query is masked as the head's is.
        let mut comment = redact::text(&o.comment, &self.synth.redact);
        if let Some(real) = real_port {
            comment.push_str(&format!(
                "; the server port {real} is written as {} (capture.display_port), so that Wireshark decodes the session",
                acceptor.port()
            ));
        }
        if opener == acceptor {
            opener.set_port(opener.port().wrapping_add(1));
        }
        let mss = if acceptor.is_ipv4() { self.synth.mss_ipv4 } else { self.synth.mss_ipv6 };
        let isn = PerDir::new(self.next_isn(), self.next_isn());
        let flow = match self.synth.segment {
            Segmentation::Mss => Flow::new(opener, acceptor, isn, mss),
            Segmentation::Gro => Flow::new(opener, acceptor, isn, mss).coalesced(),
        };
        let rules = Rules { redact: self.synth.redact.clone(), snap: o.snap };
        let mut leg = LegState::new(o.leg, flow, comment, o.session, rules);
        let (which, secrets) = (o.leg, o.tls_secrets.clone());
        leg.encrypted = o.tls_secrets.map(|s| Encrypted::new(s, self.synth.history.clone()));
        self.legs.insert(id, leg);
        if let Some(secrets) = secrets {
            self.write_secrets(which, &secrets)?;
        }
        self.emit(id, time, |f, e| f.handshake(e), stats)
    }

    /// An encrypted leg's keys, in a Decryption Secrets Block before its first packet in
    /// the file.
    fn write_secrets(&mut self, leg: Leg, secrets: &str) -> io::Result<()> {
        match self.out.as_mut() {
            // (No interface: a reload took the leg's out of the files; nothing to decrypt.)
            Some(out) if !secrets.is_empty() && self.interfaces[leg].is_some() => out.tls_secrets(secrets.as_bytes()),
            _ => Ok(()),
        }
    }

    fn close(&mut self, id: LegId, time: u64, reason: &str, offsets: PerDir<u64>, stats: &Stats) -> io::Result<()> {
        let Some(which) = self.legs.get(&id).map(|l| l.leg) else { return Ok(()) };
        // What the remote end sent (wstap read it), and what wstap sent.
        let (remote, local) = (which.inbound(), which.inbound().reverse());
        for dir in [remote, local] {
            self.flush(id, time, dir, stats)?;
        }
        // Bytes lost at the very end: nothing follows them to be written differently.
        self.count_lost(id, remote, offsets[remote]);
        self.count_lost(id, local, offsets[local]);
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        let count = |dir: Dir| match leg.lost[dir] {
            0 => format!("{} bytes", leg.real[dir]),
            lost => format!("{} bytes ({lost} not captured)", leg.real[dir]),
        };
        let name = leg.leg.name();
        let comment =
            format!("{name} leg closed: {reason}; {} from {name}, {} from wstap", count(remote), count(local));
        add_note(&mut leg.note, comment);
        if let Some(mut last) = leg.last.take() {
            last.time = time;
            self.pending = Some(last);
            self.write_pending(stats)?;
        } else if self.pending.as_ref().is_some_and(|p| p.leg == id) {
            self.write_pending(stats)?;
        } else if !leg.flow.fin_sent(local) {
            // The socket was closed without a shutdown first: the kernel sends a FIN.
            self.emit(id, time, |f, e| f.fin(local, e), stats)?;
        } else {
            self.emit(id, time, |f, e| f.ack(local, e), stats)?;
        }
        if self.legs.remove(&id).is_some_and(|leg| !leg.at_boundary()) {
            self.mid_frame -= 1;
        }
        Ok(())
    }

    /// Starts a new section in `w` and returns the previous writer (to be finished by
    /// the caller), if there was one. Every live leg is replayed at its start: handshake,
    /// Upgrade exchange, each packet commented as repeated from an earlier file.
    pub fn rotate(&mut self, w: W, stats: &Stats) -> io::Result<Option<W>> {
        let forced = self.rotation_due.take().is_some() && self.mid_frame > 0;
        // ACKs owed for this file's data belong in it.
        self.idle(stats)?;
        let old = self.finish(stats)?;
        self.begin_section(w)?;
        let unwritten = std::mem::take(&mut self.unwritten);
        self.replay_legs(Replay::File, unwritten, forced, stats)?;
        Ok(old)
    }

    /// Writes every live leg at the start of the current section: handshake, Upgrade
    /// exchange, deflate windows or TLS records, each packet commented.
    fn replay_legs(&mut self, how: Replay, unwritten: u64, forced: bool, stats: &Stats) -> io::Result<()> {
        let (origin, whole, alone) = match how {
            Replay::File => ("repeated from an earlier file", "so this file decodes on its own", "this file"),
            Replay::Stream => ("in progress when this stream began", "so the stream decodes from here", "this stream"),
        };
        let time = self.last_time;
        let ids: Vec<LegId> = self.legs.keys().copied().collect();
        for id in ids {
            let Some(leg) = self.legs.get_mut(&id) else { continue };
            let mut repeated = format!("{origin}: {}", leg.comment);
            let interrupted = match unwritten {
                0 => String::new(),
                n => format!("; capture was interrupted: {n} bytes could not be written"),
            };
            if let Some(enc) = leg.encrypted.take() {
                // TLS records are repeated whole: the leg is never inside one for rotation.
                match enc.replay_parts() {
                    Ok(_) => repeated.push_str(&format!(
                        " (synthetic handshake, then the TLS records since the connection's first, with its keys, \
                         {whole})"
                    )),
                    Err(why) => repeated.push_str(&format!(
                        "; its TLS records cannot be decrypted from {alone} alone ({why}): open it together \
                         with the files before it (mergecap)"
                    )),
                }
                repeated.push_str(&interrupted);
                // Up to a MiB of records: the whole comment on the first packet only.
                add_note(&mut leg.note, repeated);
                let parts = enc.replay_parts().unwrap_or_default();
                // The leg keeps its state whatever the writing gives.
                let which = leg.leg;
                let written = self
                    .write_secrets(which, &enc.secrets)
                    .and_then(|()| self.emit_each(id, time, origin, |f, e| f.replay(&parts, e), stats));
                drop(parts);
                if let Some(leg) = self.legs.get_mut(&id) {
                    leg.encrypted = Some(enc);
                }
                written?;
                continue;
            }
            if leg.session {
                repeated.push_str(&format!(" (synthetic handshake and the original Upgrade exchange, {whole})"));
            }
            repeated.push_str(&interrupted);
            if forced && !leg.at_boundary() {
                let wait = humantime::format_duration(self.synth.rotate_wait);
                let text = match how {
                    Replay::File => format!(
                        "this file starts inside a WebSocket frame: rotation waited {wait} for a frame boundary"
                    ),
                    Replay::Stream => {
                        format!("this stream starts inside a WebSocket frame: it waited {wait} for a frame boundary")
                    }
                };
                add_note(&mut leg.note, text);
            }
            let parts = leg.replay_parts(matches!(how, Replay::File));
            if parts.len() > 2 {
                repeated.push_str("; a synthetic message restores the permessage-deflate context");
            }
            let parts: Vec<(Dir, &[u8])> = parts.iter().map(|(d, b)| (*d, &b[..])).collect();
            self.emit_each(id, time, &repeated, |f, e| f.replay(&parts, e), stats)?;
        }
        Ok(())
    }

    fn write_pending(&mut self, stats: &Stats) -> io::Result<()> {
        let Some(p) = self.pending.take() else { return Ok(()) };
        match p.kind {
            Final::Ack => self.emit(p.leg, p.time, |f, e| f.ack(p.dir, e), stats),
            Final::Rst => self.emit(p.leg, p.time, |f, e| f.rst(p.dir, e), stats),
        }
    }

    /// Runs `make` on the leg's flow and writes every packet it produces; the leg's note,
    /// if any, goes on the first one.
    fn emit(
        &mut self,
        id: LegId,
        time: u64,
        make: impl FnOnce(&mut Flow, &mut dyn FnMut(Dir, Packet<'_>)),
        stats: &Stats,
    ) -> io::Result<()> {
        self.write_packets(id, time, None, make, stats)
    }

    /// As [`CaptureWriter::emit`], with `comment` on every packet.
    fn emit_each(
        &mut self,
        id: LegId,
        time: u64,
        comment: &str,
        make: impl FnOnce(&mut Flow, &mut dyn FnMut(Dir, Packet<'_>)),
        stats: &Stats,
    ) -> io::Result<()> {
        self.write_packets(id, time, Some(comment), make, stats)
    }

    fn write_packets(
        &mut self,
        id: LegId,
        time: u64,
        each: Option<&str>,
        make: impl FnOnce(&mut Flow, &mut dyn FnMut(Dir, Packet<'_>)),
        stats: &Stats,
    ) -> io::Result<()> {
        let Some(leg) = self.legs.get_mut(&id) else { return Ok(()) };
        let Some(out) = self.out.as_mut() else {
            // No file: the flow still moves on, so the next file starts in step.
            let mut dropped = 0;
            make(&mut leg.flow, &mut |_, packet| dropped += packet.size() as u64);
            self.unwritten += dropped;
            stats.bytes_unwritten.fetch_add(dropped, Relaxed);
            return Ok(());
        };
        let Some(interface) = self.interfaces[leg.leg] else { return Ok(()) };
        let count = &mut self.section[leg.leg];
        let mut note = leg.note.take();
        let (mut result, mut written) = (Ok(()), 0);
        let ts = Timestamp::from_nanos(time);
        make(&mut leg.flow, &mut |dir, packet| {
            if result.is_err() {
                return;
            }
            let comment = match (note.take(), each) {
                (Some(n), Some(e)) => Some(format!("{e}; {n}")),
                (n, e) => n.or(e.map(str::to_owned)),
            };
            result = out.packet(interface, ts, dir, &[packet.headers, packet.payload], comment.as_deref());
            count.packet(time);
            written += 1;
        });
        stats.packets_written.fetch_add(written, Relaxed);
        result
    }
}

impl CaptureWriter<Vec<u8>> {
    /// A section of its own that shows every live leg as it stands (handshake, Upgrade
    /// exchange, deflate windows, TLS records), for a reader that starts now: a live
    /// stream's new subscriber, which then gets the packets this writer writes next. The
    /// writer's own output, comments and counts are untouched; call it where
    /// [`CaptureWriter::ready_to_rotate`] says a new section may start (or on
    /// [`Step::Rotate`]).
    pub fn snapshot(&mut self, stats: &Stats) -> io::Result<Vec<u8>> {
        let forced = self.rotation_due.take().is_some() && self.mid_frame > 0;
        let main = self.out.take();
        let (interfaces, section) = (self.interfaces, self.section);
        let notes: Vec<(LegId, Option<String>)> = self.legs.iter_mut().map(|(id, l)| (*id, l.note.take())).collect();
        let result = self.begin_section(Vec::new()).and_then(|()| self.replay_legs(Replay::Stream, 0, forced, stats));
        let snapshot = self.out.take().map(PcapngWriter::into_inner);
        (self.out, self.interfaces, self.section) = (main, interfaces, section);
        for (id, note) in notes {
            if let Some(leg) = self.legs.get_mut(&id) {
                leg.note = note;
            }
        }
        result.map(|()| snapshot.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Snap;
    use bytes::Bytes;
    use etherparse::{SlicedPacket, TransportSlice};
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
    use pcap_file::pcapng::{Block, PcapNgReader};

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
        test_writer_acks(false)
    }

    fn test_writer_acks(acks: bool) -> CaptureWriter<Vec<u8>> {
        let info = SectionInfo { application: "t".into(), os: "t".into(), hostname: "t".into() };
        let synth = Synthesis {
            mss_ipv4: 1460,
            mss_ipv6: 1440,
            segment: Default::default(),
            acks,
            display_port: DisplayPort::Real,
            redact: Default::default(),
            inflate: Default::default(),
            isn_seed: 7,
            rotate_wait: Duration::from_secs(5),
            history: Default::default(),
        };
        CaptureWriter::new(Vec::new(), &info, Legs { client: true, upstream: true }, synth).unwrap()
    }

    /// A client leg from 127.0.0.1:40000 to wstap's 127.0.0.1:8080.
    fn client_leg(comment: &str, session: bool) -> Opening {
        Opening {
            leg: Leg::Client,
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: "127.0.0.1:40000".parse().unwrap(),
            comment: comment.into(),
            session,
            session_id: 1,
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
                    let ev = Event { time: 1_000 + i as u64, leg: 1, what };
                    assert!(matches!(w.process(ev, &stats).unwrap(), Step::Done));
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
        let opening = client_leg("s", true);
        let head = b"GET / HTTP/1.1\r\n\r\n";
        let mut frame_start = vec![0x82, 0x7f];
        frame_start.extend((1u64 << 40).to_be_bytes()); // a 1 TiB frame that never ends
        let step =
            |w: &mut CaptureWriter<Vec<u8>>, time, what| w.process(Event { time, leg: 1, what }, &stats).unwrap();
        assert!(matches!(step(&mut w, 0, What::Open(Box::new(opening))), Step::Done));
        assert!(matches!(step(&mut w, 1, data(Dir::Up, 0, head)), Step::Done));
        assert!(matches!(step(&mut w, 2, data(Dir::Up, head.len() as u64, &frame_start)), Step::Done));
        w.rotation_due(3);
        let mut off = (head.len() + frame_start.len()) as u64;
        for t in [sec, 2 * sec, 4 * sec] {
            assert!(matches!(step(&mut w, t, data(Dir::Up, off, &[0; 100])), Step::Done), "mid-frame: rotation waits");
            off += 100;
        }
        assert!(!w.ready_to_rotate(4 * sec));
        assert!(w.ready_to_rotate(5 * sec + 3), "but not longer than rotate_wait");
        let Step::Rotate { then: Some(next) } = step(&mut w, 6 * sec, data(Dir::Up, off, &[0; 100])) else {
            panic!("rotation is forced")
        };
        w.rotate(Vec::new(), &stats).unwrap();
        w.process(next, &stats).unwrap();
        let second = w.finish(&stats).unwrap().unwrap();
        let comments = packet_comments(&second);
        assert!(comments[0].contains("starts inside a WebSocket frame: rotation waited 5s"), "{comments:?}");
    }

    /// Pure ACKs come only where no data of the receiver's can carry the acknowledgement,
    /// as with a real stack's delayed ACKs: an echo exchange has none between messages.
    #[test]
    fn a_pure_ack_is_written_only_when_no_data_carries_it() {
        let opening = client_leg("c", false);
        let packets = written_by(
            test_writer_acks(true),
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
                    Some(What::Close { reason: "done".into(), offsets: PerDir::new(12, 4).map(|d, o| o + HEADS[d]) }),
                ])
                .collect(),
        );
        // SYN, SYN-ACK, ACK and the two heads, then the exchange.
        let shape: Vec<(usize, &str)> = packets.iter().skip(5).map(|p| (p.1, p.3.as_str())).collect();
        assert_eq!(shape, [(4, "P"), (4, "P"), (4, "P"), (0, ""), (4, "P"), (0, ""), (0, "F")]);

        // An ACK still owed when the leg closes is its last packet, with the close comment.
        let packets = written_by(
            test_writer_acks(true),
            [What::Open(Box::new(opening))]
                .into_iter()
                .chain(after_heads(vec![
                    data(Dir::Up, 0, b"ping"),
                    What::Close { reason: "done".into(), offsets: PerDir::new(4, 0) },
                ]))
                .map(Some)
                .collect(),
        );
        let last = packets.last().unwrap();
        assert_eq!((last.1, last.3.as_str()), (0, ""), "{packets:?}");
        assert!(last.2.as_deref().is_some_and(|c| c.contains("closed: done")), "{packets:?}");
    }

    #[test]
    fn lost_bytes_show_as_a_sequence_jump_with_a_comment() {
        let opening = client_leg("first", false);
        let mut events = vec![What::Open(Box::new(opening))];
        events.extend(after_heads(vec![
            data(Dir::Up, 0, b"abc"),
            data(Dir::Up, 503, b"def"),               // 500 bytes were dropped in between
            What::Fin { dir: Dir::Down, offset: 10 }, // and all 10 bytes wstap sent
            What::Close { reason: "done".into(), offsets: PerDir::new(506, 10) },
        ]));
        let packets = written(events);
        assert_eq!(packets[0].2.as_deref(), Some("first"), "the session comment is on the SYN");
        let (seq_abc, seq_def) = (packets[5].0, packets[6].0);
        assert_eq!(seq_def.wrapping_sub(seq_abc), 503);
        let gap = packets[6].2.as_deref().unwrap();
        assert!(gap.contains("500 bytes") && gap.contains("capture queue full"), "{gap}");
        let last = packets.last().unwrap().2.as_deref().unwrap();
        assert_eq!(
            last,
            format!(
                "client leg closed: done; {} bytes (500 not captured) from client, {} bytes (10 not captured) from wstap",
                506 + HEADS[Dir::Up],
                10 + HEADS[Dir::Down]
            )
        );
        let fin = &packets[7];
        assert_eq!(fin.2.as_deref().map(|c| c.contains("10 bytes")), Some(true), "{fin:?}");
    }

    #[test]
    fn each_file_ends_with_the_statistics_of_each_interface() {
        use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption as Isb;
        let mut w = test_writer();
        let stats = Stats::default();
        let mut events = vec![What::Open(Box::new(client_leg("c", false)))];
        events.extend(after_heads(vec![
            data(Dir::Up, 0, b"abc"),
            data(Dir::Up, 3003, b"def"), // 3000 bytes lost: three 1460-byte segments' worth
        ]));
        for (i, what) in events.into_iter().enumerate() {
            w.process(Event { time: 1_000 + i as u64, leg: 1, what }, &stats).unwrap();
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
        assert!(client.iter().any(|o| matches!(o, Isb::Comment(c) if c.contains("3000 bytes"))), "{client:?}");
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
        let mut opening = client_leg("tls", true);
        opening.tls_secrets = Some("CLIENT_RANDOM aa bb\n".into());
        let (hello, answer) = (b"\x16\x03\x01\x00\x05hello", b"\x16\x03\x03\x00\x06answer");
        let step = |w: &mut CaptureWriter<Vec<u8>>, what| w.process(Event { time: 1, leg: 1, what }, &stats).unwrap();
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
        let big = vec![0x17; crate::capture::encrypted::MAX_LEG_HISTORY];
        w.process(Event { time: 2, leg: 1, what: data(Dir::Up, hello.len() as u64, &big) }, &stats).unwrap();
        w.rotate(Vec::new(), &stats).unwrap();
        let third = w.finish(&stats).unwrap().unwrap();
        let comments = packet_comments(&third);
        assert!(comments[0].contains("cannot be decrypted from this file alone (more than 1024 KiB"), "{comments:?}");
        assert_eq!(w.synth.history.load(Relaxed), 0, "the leg's share of the budget is given back");
    }
}
