//! How a tap follows one direction of a session it records: where its heads end and its
//! frames begin and end (headers only, never a payload, so it costs a few comparisons
//! per chunk), and what to do when the queue has no room. Capture never resumes inside
//! a frame: a direction that loses bytes skips to the next frame boundary and resumes
//! there, telling the writer how many bytes and frames it lost ([`What::Gap`]), so that
//! every frame after a loss still decodes. A whole control frame (close, ping, pong) is
//! kept whenever there is any room at all.

use wstap_wire::http::HeadEnd;
use wstap_wire::wsframe::{FrameHeader, FrameTracker, Until};
use wstap_wire::{Dir, Timestamp};

use super::chunk::{Keep, Piece};
use crate::capture::event::{Gap, What};
use crate::capture::ids::LegId;
use crate::capture::queue::{Bound, Recorder};

/// One direction of a session, as its tap follows it.
pub(crate) struct Track {
    stage: Stage,
    /// The current data message is compressed (its first frame had RSV1).
    message_compressed: bool,
    /// The frame being read belongs to a compressed message.
    frame_compressed: bool,
    /// Bytes are being dropped, since this loss began.
    loss: Option<Dropping>,
}

/// Where a direction is.
enum Stage {
    /// In the HTTP heads before the session's frames (interim responses come before the `101`).
    Heads(HeadEnd),
    /// In the frames.
    Frames(FrameTracker),
}

/// A loss in progress.
struct Dropping {
    /// Frames that ended inside it (the first may have begun before it).
    frames: u64,
    compressed: bool,
}

/// Where a piece goes: the recorder, the leg, the direction and the time.
pub(crate) struct To<'a> {
    pub(crate) recorder: &'a Recorder,
    pub(crate) leg: LegId,
    pub(crate) dir: Dir,
    /// When the bytes crossed the socket; `None`: now.
    pub(crate) time: Option<Timestamp>,
}

impl Track {
    /// A direction whose captured stream starts with an HTTP head.
    pub(crate) fn new() -> Track {
        let stage = Stage::Heads(HeadEnd::new());
        Track { stage, message_compressed: false, frame_compressed: false, loss: None }
    }

    /// Sends `piece`, which starts at `at` in the captured stream, or as much of it as
    /// the queue takes without cutting a frame.
    pub(crate) fn pass(&mut self, to: &To<'_>, at: u64, piece: Piece<'_>) {
        let len = piece.len();
        let whole_tried = self.loss.is_none();
        if whole_tried {
            let data = What::Data { dir: to.dir, offset: at, bytes: piece.bytes(0, len, Keep::Briefly) };
            if to.recorder.push(to.time, to.leg, data) {
                self.follow(&piece, 0);
                return;
            }
            self.loss = Some(Dropping { frames: 0, compressed: false });
        }
        let mut pos = 0;
        while pos < len {
            if self.between_frames() {
                // Resume here if the queue takes the rest; else keep a control frame.
                if !(pos == 0 && whole_tried) && self.resume(to, at, &piece, pos, len, Bound::Data) {
                    self.follow(&piece, pos);
                    return;
                }
                if let Some(end) =
                    control_frame_at(&piece, pos).filter(|&end| self.resume(to, at, &piece, pos, end, Bound::Control))
                {
                    self.follow_range(&piece, pos, end);
                    self.loss = Some(Dropping { frames: 0, compressed: false });
                    pos = end;
                    continue;
                }
            }
            let in_frames = matches!(self.stage, Stage::Frames(_));
            pos = self.skip_to_boundary(&piece, pos);
            if in_frames && self.between_frames() {
                if let Some(loss) = self.loss.as_mut() {
                    loss.frames += 1;
                    loss.compressed |= self.frame_compressed;
                }
            }
        }
    }

    /// The stream ends (a FIN) at `end`: a loss in progress is reported first.
    pub(crate) fn end(&mut self, to: &To<'_>, end: u64) {
        if let Some(loss) = self.loss.take() {
            let gap = Gap { dir: to.dir, until: end, frames: loss.frames, compressed: loss.compressed };
            to.recorder.push(to.time, to.leg, What::Gap(gap));
        }
    }

    /// Sends `piece[from..end]` after the gap that ends there, both or neither, within
    /// `bound`.
    fn resume(&mut self, to: &To<'_>, at: u64, piece: &Piece<'_>, from: usize, end: usize, bound: Bound) -> bool {
        let Some(loss) = &self.loss else { return false };
        let until = at + from as u64;
        let gap = What::Gap(Gap { dir: to.dir, until, frames: loss.frames, compressed: loss.compressed });
        let data = What::Data { dir: to.dir, offset: until, bytes: piece.bytes(from, end, Keep::Briefly) };
        let resumed = to.recorder.push_pair(to.time, to.leg, [gap, data], bound);
        if resumed {
            self.loss = None;
        }
        resumed
    }

    /// Follows the frames of `piece` from `from` to its end.
    fn follow(&mut self, piece: &Piece<'_>, from: usize) {
        self.follow_range(piece, from, piece.len());
    }

    fn follow_range(&mut self, piece: &Piece<'_>, from: usize, to: usize) {
        let mut left = to - from;
        for part in piece.parts_from(from) {
            let part = &part[..part.len().min(left)];
            left -= part.len();
            self.advance(part, Until::End);
            if left == 0 {
                break;
            }
        }
    }

    /// Consumes `piece` from `from` up to the first frame boundary after at least one
    /// byte, or its end; returns the position reached.
    fn skip_to_boundary(&mut self, piece: &Piece<'_>, from: usize) -> usize {
        let mut pos = from;
        for part in piece.parts_from(from) {
            let n = self.advance(part, Until::Boundary);
            pos += n;
            if n < part.len() || self.between_frames() {
                break;
            }
        }
        pos
    }

    /// Between frames, past the heads: where capture may resume.
    fn between_frames(&self) -> bool {
        matches!(&self.stage, Stage::Frames(t) if t.at_boundary())
    }

    /// Consumes `data` until `until` (a boundary is also the end of the heads); returns
    /// the bytes consumed.
    fn advance(&mut self, data: &[u8], until: Until) -> usize {
        let mut used = 0;
        while let Stage::Heads(end) = &mut self.stage {
            let Some(n) = end.scan(&data[used..]) else { return data.len() };
            used += n;
            // An interim response (`100 Continue`) is followed by another head, still
            // inside the exchange: not a boundary.
            self.stage = match end.is_interim() {
                true => Stage::Heads(HeadEnd::new()),
                false => Stage::Frames(FrameTracker::new()),
            };
            if used == data.len() || (until == Until::Boundary && matches!(self.stage, Stage::Frames(_))) {
                return used;
            }
        }
        let Stage::Frames(frames) = &mut self.stage else { return used };
        let (message, frame) = (&mut self.message_compressed, &mut self.frame_compressed);
        used + frames.advance(&data[used..], until, |h| {
            if !h.opcode.is_control() {
                if h.opcode.starts_message() {
                    *message = h.rsv1;
                }
                *frame = *message;
            } else {
                *frame = false;
            }
        })
    }
}

/// Where the control frame starting at `pos` in `piece` ends, if one does and it is whole.
fn control_frame_at(piece: &Piece<'_>, pos: usize) -> Option<usize> {
    let mut head = [0u8; 14];
    let mut n = 0;
    for part in piece.parts_from(pos) {
        let take = (head.len() - n).min(part.len());
        head[n..n + take].copy_from_slice(&part[..take]);
        n += take;
        if n == head.len() {
            break;
        }
    }
    let h = FrameHeader::parse(&head[..n])?;
    let end = pos + h.header_len + h.len as usize;
    (h.opcode.is_control() && h.len <= 125 && end <= piece.len()).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wstap_wire::wsframe::{encode_frame, first_byte, Opcode};

    fn frame(opcode: Opcode, len: usize) -> Vec<u8> {
        encode_frame(first_byte(true, false, opcode), &vec![b'x'; len], None)
    }

    /// The queued events, as the tests compare them.
    fn shape(events: &[crate::capture::event::Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match &e.what {
                What::Data { offset, bytes, .. } => format!("data {offset}+{}", bytes.len()),
                What::Gap(Gap { until, frames, .. }) => format!("gap to {until}, {frames} frames"),
                _ => "other".into(),
            })
            .collect()
    }

    #[test]
    fn interim_responses_before_the_101_are_heads_not_frames() {
        let rec = Recorder::new(1 << 20);
        let to = To { recorder: &rec, leg: LegId(1), dir: Dir::Down, time: None };
        let heads = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n";
        for piece in [1, 7, heads.len()] {
            let mut t = Track::new();
            for (i, chunk) in heads.chunks(piece).enumerate() {
                t.pass(&to, (i * piece) as u64, Piece::Slice(chunk));
                let past_101 = (i + 1) * piece >= heads.len();
                assert_eq!(t.between_frames(), past_101, "piece {piece}: frames begin after the 101 only");
            }
            t.pass(&to, heads.len() as u64, Piece::Slice(&frame(Opcode::Text, 5)[..3]));
            assert!(!t.between_frames(), "inside the first frame");
        }
        // A loss inside the heads resumes at the first frame after the 101, not after the 100.
        let rec = Recorder::new(70 * 1024);
        let to = To { recorder: &rec, leg: LegId(1), dir: Dir::Down, time: None };
        let mut t = Track::new();
        rec.fill();
        t.pass(&to, 0, Piece::Slice(&heads[..30]));
        rec.unfill();
        let first = frame(Opcode::Text, 5);
        t.pass(&to, 30, Piece::Slice(&[&heads[30..], &first[..]].concat()));
        let got = shape(&rec.take_events());
        let end = heads.len();
        assert_eq!(got, [format!("gap to {end}, 0 frames"), format!("data {end}+{}", first.len())]);
    }

    #[test]
    fn a_full_queue_drops_to_the_next_frame_boundary_and_keeps_control_frames() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        let (a, b, c) = (frame(Opcode::Binary, 1000), frame(Opcode::Binary, 3000), frame(Opcode::Text, 500));
        let (ping, d) = (frame(Opcode::Ping, 4), frame(Opcode::Text, 10));
        let rec = Recorder::new(70 * 1024);
        let mut t = Track::new();
        let to = To { recorder: &rec, leg: LegId(1), dir: Dir::Down, time: Some(Timestamp::from_nanos(1)) };
        let mut at = 0u64;
        let mut send = |t: &mut Track, bytes: &[u8]| {
            t.pass(&to, at, Piece::Slice(bytes));
            at += bytes.len() as u64;
        };
        send(&mut t, &[head.clone(), a[..600].to_vec()].concat());
        rec.fill(); // the queue is full from here
        send(&mut t, &[a[600..].to_vec(), b[..2000].to_vec()].concat());
        send(&mut t, &[b[2000..].to_vec(), c.clone(), ping.clone(), d[..5].to_vec()].concat());
        rec.unfill();
        send(&mut t, &d[5..]); // mid-frame: still dropping
        let e = frame(Opcode::Text, 7);
        send(&mut t, &e); // a boundary, and room: resumes
        let shape = shape(&rec.take_events());
        let ping_at = (head.len() + a.len() + b.len() + c.len()) as u64;
        let e_at = ping_at + (ping.len() + d.len()) as u64;
        assert_eq!(
            shape,
            [
                format!("data 0+{}", head.len() + 600),
                format!("gap to {ping_at}, 3 frames"),
                format!("data {ping_at}+{}", ping.len()),
                format!("gap to {e_at}, 1 frames"),
                format!("data {e_at}+{}", e.len()),
            ],
            "the rest of A, B and C lost; the ping kept though the queue was full; D lost; E whole"
        );
    }
}
