//! permessage-deflate (RFC 7692) as far as capture files need it. With context takeover,
//! a compressed message may refer back to anything in the last 32 KiB its sender
//! compressed, so a file that starts mid-session cannot be decompressed on its own. The
//! writer keeps, per direction, that 32 KiB window (by inflating the messages) and begins
//! each new file with one synthetic message whose decompression is exactly the window:
//! Wireshark's inflater is then in the state the real one was. [`inflate`] is the one
//! inflating loop, which the reader (`wstap-replay`) uses for whole messages too. Pure.

use flate2::{Decompress, DecompressError, FlushDecompress};

use crate::dir::PerDir;
use crate::http::Head;
use crate::time::Timestamp;
use crate::wsframe::{first_byte, FrameHeader, Opcode};

/// The deflate window: how far back a compressed message may refer.
const WINDOW: usize = 32 * 1024;
/// The most one message is inflated to follow its window; past it, the direction is no
/// longer followed (a small message can inflate to gigabytes).
pub const MAX_FOLLOWED_MESSAGE: usize = 8 << 20;

/// The bytes every compressed message had removed from its end (RFC 7692 §7.2.1): an
/// empty stored block, which an inflater is given back at each message's end.
pub const MESSAGE_TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// Why a direction's window is unknown from some point on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Loss {
    /// The capture dropped compressed bytes, which the window holds.
    #[error("window lost at drop")]
    AtDrop,
    /// wstap stopped following it (a message inflated too far, or the allowance was
    /// spent), and a new file began.
    #[error("wstap stopped following this direction's compression")]
    NotFollowed,
    /// Bytes that do not inflate.
    #[error("not deflate data")]
    NotDeflate,
}

/// How much inflating the writer allows itself, over every session: a token bucket of
/// `per_second` bytes of output, so that no client can make the one writer thread spend
/// its time inflating. Past it, the session whose message ran out is no longer followed.
#[derive(Debug)]
pub struct Allowance {
    per_second: u64,
    tokens: u64,
    at: Timestamp,
}

impl Default for Allowance {
    /// 64 MiB of inflated output per second: a fifth or so of one core.
    fn default() -> Allowance {
        Allowance::new(64 << 20)
    }
}

impl Allowance {
    /// `per_second` bytes of inflated output per second, a second's worth to start with.
    pub fn new(per_second: u64) -> Allowance {
        Allowance { per_second, tokens: per_second, at: Timestamp::EPOCH }
    }

    /// Adds what the time since the last refill earned, up to a second's worth.
    pub fn refill(&mut self, now: Timestamp) {
        let earned = (now.since(self.at).as_nanos() * u128::from(self.per_second) / 1_000_000_000)
            .min(u128::from(self.per_second)) as u64;
        if earned > 0 {
            self.tokens = self.tokens.saturating_add(earned).min(self.per_second);
            self.at = now;
        }
    }
}

/// One direction of a session, its compression followed: the inflater and the window a
/// new file is primed with.
pub struct Follower {
    z: Decompress,
    /// The last (up to) 32 KiB of decompressed data, with some slack before trimming.
    window: Vec<u8>,
    /// The current message is compressed (its first frame had RSV1).
    compressed: bool,
    /// Inflated bytes of the current message.
    message_out: usize,
    /// Whether the window is still known.
    state: Following,
}

/// How far a [`Follower`] still follows its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Following {
    /// Every message is inflated and the window kept.
    Yes,
    /// It stopped, in the file being written: that file holds every byte, so it decodes;
    /// the next one cannot be primed.
    StoppedInThisFile,
    /// The window is unknown, for this reason: nothing is inflated from here on, and no
    /// file is primed.
    Lost(Loss),
}

/// Which directions keep their compression context, from the `101` response head that
/// accepted permessage-deflate. `None` when the extension was not negotiated.
pub fn takeover(response: &Head) -> Option<PerDir<bool>> {
    let ext = response
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-extensions"))
        .map(|(_, value)| value.to_ascii_lowercase())
        .find(|v| v.contains("permessage-deflate"))?;
    Some(PerDir::new(!ext.contains("client_no_context_takeover"), !ext.contains("server_no_context_takeover")))
}

impl Default for Follower {
    fn default() -> Self {
        Follower::new()
    }
}

impl Follower {
    /// A direction whose compression is followed from its first message.
    pub fn new() -> Follower {
        let window = Vec::new();
        Follower { z: Decompress::new(false), window, compressed: false, message_out: 0, state: Following::Yes }
    }

    /// The window is unknown from here on, for `why` (unless it already was).
    pub fn lose_window(&mut self, why: Loss) {
        if !matches!(self.state, Following::Lost(_)) {
            self.state = Following::Lost(why);
        }
        self.window = Vec::new();
    }

    /// Why the window is lost, if it is (every later compressed message is undecodable).
    pub fn window_lost(&self) -> Option<Loss> {
        match self.state {
            Following::Lost(why) => Some(why),
            _ => None,
        }
    }

    /// Whether it stopped following, in the file being written.
    pub fn stopped(&self) -> bool {
        self.state == Following::StoppedInThisFile
    }

    /// A new file begins: a window no longer followed cannot be given to it, so it is
    /// lost from here on.
    pub fn new_file(&mut self) {
        if self.stopped() {
            self.lose_window(Loss::NotFollowed);
        }
    }

    /// A piece of a frame's payload (unmasked); `frame_end` on its last piece. Inflates
    /// within `allowance` and [`MAX_FOLLOWED_MESSAGE`]; past either, stops following.
    pub fn feed(&mut self, h: &FrameHeader, payload: &[u8], frame_end: bool, allowance: &mut Allowance) {
        if self.state != Following::Yes || h.opcode.is_control() {
            return;
        }
        if h.opcode.starts_message() {
            // A message's first frame says whether the message is compressed.
            self.compressed = h.rsv1;
            self.message_out = 0;
        }
        if !self.compressed {
            return;
        }
        self.inflate(payload, allowance);
        if frame_end && h.fin {
            self.inflate(&MESSAGE_TAIL, allowance);
        }
    }

    fn inflate(&mut self, input: &[u8], allowance: &mut Allowance) {
        if self.state != Following::Yes {
            return;
        }
        let limit = (MAX_FOLLOWED_MESSAGE - self.message_out).min(allowance.tokens as usize);
        let window = &mut self.window;
        let keep = |piece: &[u8]| {
            window.extend_from_slice(piece);
            if window.len() > 2 * WINDOW {
                window.drain(..window.len() - WINDOW);
            }
        };
        match inflate(&mut self.z, input, limit, keep) {
            Ok(done) => {
                self.message_out += done.made;
                allowance.tokens -= done.made as u64;
                if done.cut {
                    self.state = Following::StoppedInThisFile;
                    self.window = Vec::new();
                }
            }
            Err(_) => self.lose_window(Loss::NotDeflate),
        }
    }

    /// A complete WebSocket frame (binary, RSV1, masked with a zero key if `masked`)
    /// whose decompression is the current window: one uncompressed deflate block, without
    /// the final empty block's `00 00 ff ff`. `None` when there is nothing to restore.
    pub fn priming_frame(&self, masked: bool) -> Option<Vec<u8>> {
        if self.state != Following::Yes || self.window.is_empty() {
            return None;
        }
        let window = &self.window[self.window.len().saturating_sub(WINDOW)..];
        let len = window.len() as u16;
        let mut payload = vec![0x00];
        payload.extend(len.to_le_bytes());
        payload.extend((!len).to_le_bytes());
        payload.extend_from_slice(window);
        payload.push(0x00);
        // A zero key masks nothing, so the payload goes out as it is.
        let mut frame =
            FrameHeader::encode(first_byte(true, true, Opcode::Binary), payload.len() as u64, masked.then_some([0; 4]));
        frame.extend(payload);
        Some(frame)
    }
}

/// What [`inflate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inflated {
    /// Bytes it produced.
    pub made: usize,
    /// It stopped at its limit with input (or output) left.
    pub cut: bool,
}

/// Inflates `input` with `z` (raw deflate, as permessage-deflate compresses), handing the
/// output to `sink` piece by piece, and stops once `limit` bytes have been produced.
pub fn inflate(
    z: &mut Decompress,
    mut input: &[u8],
    limit: usize,
    mut sink: impl FnMut(&[u8]),
) -> Result<Inflated, DecompressError> {
    let mut buf = [0u8; 16 * 1024];
    let mut made = 0;
    loop {
        let room = buf.len().min(limit - made);
        if room == 0 {
            return Ok(Inflated { made, cut: more_out(z, input)? });
        }
        let (in0, out0) = (z.total_in(), z.total_out());
        z.decompress(input, &mut buf[..room], FlushDecompress::Sync)?;
        let (used, got) = ((z.total_in() - in0) as usize, (z.total_out() - out0) as usize);
        sink(&buf[..got]);
        made += got;
        input = &input[used..];
        if (input.is_empty() && got < room) || (used == 0 && got == 0) {
            return Ok(Inflated { made, cut: false });
        }
    }
}

/// At the limit: whether `input` still inflates to anything (one byte is tried; it is
/// only ever made when the message is cut anyway).
fn more_out(z: &mut Decompress, mut input: &[u8]) -> Result<bool, DecompressError> {
    let mut probe = [0u8; 1];
    loop {
        let (in0, out0) = (z.total_in(), z.total_out());
        z.decompress(input, &mut probe, FlushDecompress::Sync)?;
        if z.total_out() > out0 {
            return Ok(true);
        }
        let used = (z.total_in() - in0) as usize;
        input = &input[used..];
        if input.is_empty() || used == 0 {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http;
    use flate2::{Compress, Compression, FlushCompress};

    fn compressed(z: &mut Compress, text: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len() + 64);
        z.compress_vec(text, &mut out, FlushCompress::Sync).unwrap();
        out.truncate(out.len() - 4);
        out
    }

    fn header(len: usize) -> FrameHeader {
        FrameHeader {
            fin: true,
            rsv1: true,
            rsv23: false,
            opcode: Opcode::Text,
            mask: None,
            len: len as u64,
            header_len: 2,
        }
    }

    #[test]
    fn a_primed_inflater_decodes_what_follows() {
        let mut z = Compress::new(Compression::default(), false);
        let mut ctx = Follower::new();
        let texts: Vec<String> = (0..50).map(|i| format!("the same words again and again, number {i}")).collect();
        for t in &texts[..40] {
            let c = compressed(&mut z, t.as_bytes());
            ctx.feed(&header(c.len()), &c, true, &mut Allowance::new(u64::MAX));
        }
        // A fresh inflater (a new file) fed the priming frame's payload, then the rest.
        let frame = ctx.priming_frame(false).unwrap();
        let h = FrameHeader::parse(&frame).unwrap();
        assert!(h.rsv1 && h.fin && h.opcode == Opcode::Binary);
        let mut fresh = Decompress::new(false);
        let mut sink = vec![0u8; 1 << 20];
        let mut inflate = |fresh: &mut Decompress, data: &[u8]| {
            let before = fresh.total_out();
            let mut input = data.to_vec();
            input.extend(MESSAGE_TAIL);
            fresh.decompress(&input, &mut sink, FlushDecompress::Sync).unwrap();
            String::from_utf8_lossy(&sink[..(fresh.total_out() - before) as usize]).into_owned()
        };
        let primed = inflate(&mut fresh, &frame[h.header_len..]);
        assert!(primed.ends_with(&texts[39]), "the window is restored");
        for t in &texts[40..] {
            let c = compressed(&mut z, t.as_bytes());
            assert_eq!(&inflate(&mut fresh, &c), t, "a message after the priming decompresses");
        }
    }

    #[test]
    fn a_message_exactly_at_the_limit_is_whole_and_one_byte_more_is_cut() {
        for size in [1usize, 1000, 16 * 1024, 40_000] {
            let text: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let mut input = compressed(&mut Compress::new(Compression::default(), false), &text);
            input.extend(MESSAGE_TAIL);
            let mut out = Vec::new();
            let whole = inflate(&mut Decompress::new(false), &input, size, |p| out.extend_from_slice(p)).unwrap();
            assert_eq!((whole.made, whole.cut, &out), (size, false, &text), "{size} bytes, limit {size}");
            let short = inflate(&mut Decompress::new(false), &input, size - 1, |_| {}).unwrap();
            assert_eq!((short.made, short.cut), (size - 1, true), "{size} bytes, limit {}", size - 1);
        }
    }

    #[test]
    fn inflating_is_bounded_per_message_and_per_second() {
        // A bomb: 64 MiB of zeros in ~64 KB. Followed up to 8 MiB, then no longer.
        let mut z = Compress::new(Compression::default(), false);
        let bomb = compressed(&mut z, &vec![0u8; 64 << 20]);
        let mut ctx = Follower::new();
        let mut plenty = Allowance::new(u64::MAX);
        ctx.feed(&header(bomb.len()), &bomb, true, &mut plenty);
        assert!(ctx.stopped());
        assert!(ctx.priming_frame(false).is_none() && ctx.window_lost().is_none(), "this file still decodes");
        ctx.new_file();
        assert_eq!(ctx.window_lost(), Some(Loss::NotFollowed), "the next file cannot be primed");

        // One writer-wide allowance of 1 MiB/s: two 600 KiB messages in the same second
        // spend it (the second context stops being followed); a second later it is back.
        let mut allowance = Allowance::new(1 << 20);
        allowance.refill(Timestamp::from_nanos(1_000_000_000));
        let text = vec![b'x'; 600 << 10];
        let (mut a, mut b) = (Follower::new(), Follower::new());
        for ctx in [&mut a, &mut b] {
            let c = compressed(&mut Compress::new(Compression::default(), false), &text);
            ctx.feed(&header(c.len()), &c, true, &mut allowance);
        }
        assert_eq!((a.stopped(), b.stopped()), (false, true));
        allowance.refill(Timestamp::from_nanos(2_000_000_000));
        let c = compressed(&mut z, &text);
        let mut fresh = Follower::new();
        fresh.feed(&header(c.len()), &c, true, &mut allowance);
        assert!(!fresh.stopped(), "refilled");
    }

    #[test]
    fn negotiation_is_read_from_the_101() {
        let head = |text: &[u8]| http::response(text).unwrap().unwrap();
        let both = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n";
        assert_eq!(takeover(&head(both)), Some(PerDir::new(true, true)));
        let none = b"HTTP/1.1 101 x\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n";
        assert_eq!(takeover(&head(none)), Some(PerDir::new(false, false)));
        assert_eq!(takeover(&head(b"HTTP/1.1 101 x\r\nUpgrade: websocket\r\n\r\n")), None);
    }
}
