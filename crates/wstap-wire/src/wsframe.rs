//! WebSocket frames (RFC 6455 §5.2): the one header parser and encoder wstap has, the
//! opcodes, the masking, and [`FrameTracker`], which finds where frames begin and end in
//! one direction of a session's byte stream: frame headers, whose lengths say how many
//! payload bytes to skip. Only headers are read, never payloads, so tracking costs a few
//! comparisons per chunk. Capture uses it to cut files between frames and to drop whole
//! frames, the reader (`wstap-replay`) to read the frames of a recorded session. Pure.

/// Tracks frame boundaries in one direction.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    state: State,
}

/// Between or inside frames.
#[derive(Debug, Clone)]
struct State {
    /// The bytes of a header being read, and how many there are.
    header: [u8; 14],
    have: u8,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// The frame whose payload is being read, and how much of it has been.
    current: Option<(FrameHeader, u64)>,
}

/// A frame's opcode (RFC 6455 §5.2): what its payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// 0: the next fragment of the data message in progress.
    Continuation,
    /// 1: the first frame of a text message.
    Text,
    /// 2: the first frame of a binary message.
    Binary,
    /// 8: a close, with a status code and a reason if any.
    Close,
    /// 9: a ping.
    Ping,
    /// 10: a pong.
    Pong,
    /// 3-7 and 11-15: reserved for extensions no one has defined.
    Reserved(u8),
}

impl Opcode {
    /// The opcode of a frame's low four bits.
    pub fn from_bits(bits: u8) -> Opcode {
        match bits & 0x0f {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            other => Opcode::Reserved(other),
        }
    }

    /// Its four bits, as a frame's first byte carries them.
    pub const fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0,
            Opcode::Text => 1,
            Opcode::Binary => 2,
            Opcode::Close => 8,
            Opcode::Ping => 9,
            Opcode::Pong => 10,
            Opcode::Reserved(bits) => bits & 0x0f,
        }
    }

    /// A control frame (close, ping, pong, or a reserved control opcode): it stands
    /// alone, between the fragments of a data message if need be.
    pub fn is_control(self) -> bool {
        self.bits() >= 8
    }

    /// The first frame of a data message (text or binary).
    pub fn starts_message(self) -> bool {
        matches!(self, Opcode::Text | Opcode::Binary)
    }

    /// One RFC 6455 defines (not reserved).
    pub fn is_known(self) -> bool {
        !matches!(self, Opcode::Reserved(_))
    }
}

/// Facts about a frame, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message's last frame.
    pub fin: bool,
    /// RSV1: under permessage-deflate, the message is compressed.
    pub rsv1: bool,
    /// RSV2 or RSV3: no extension wstap knows sets them.
    pub rsv23: bool,
    /// What the payload is.
    pub opcode: Opcode,
    /// The masking key (every client frame has one).
    pub mask: Option<[u8; 4]>,
    /// Payload bytes.
    pub len: u64,
    /// Bytes of the header itself.
    pub header_len: usize,
}

impl FrameHeader {
    /// How many bytes a header has whose second byte is `b1` (its mask bit and length
    /// code): for a reader that takes a header off a stream.
    pub fn size(b1: u8) -> usize {
        let length = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + length + if b1 & 0x80 != 0 { 4 } else { 0 }
    }

    /// Parses a frame header from the start of `b`, if complete.
    pub fn parse(b: &[u8]) -> Option<FrameHeader> {
        let (&b0, &b1) = (b.first()?, b.get(1)?);
        let (len, at) = match b1 & 0x7f {
            126 => (u64::from(u16::from_be_bytes(b.get(2..4)?.try_into().ok()?)), 4),
            127 => (u64::from_be_bytes(b.get(2..10)?.try_into().ok()?), 10),
            n => (u64::from(n), 2),
        };
        let mask = match b1 & 0x80 {
            0 => None,
            _ => Some(b.get(at..at + 4)?.try_into().ok()?),
        };
        Some(FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv1: b0 & 0x40 != 0,
            rsv23: b0 & 0x30 != 0,
            opcode: Opcode::from_bits(b0),
            mask,
            len,
            header_len: at + if mask.is_some() { 4 } else { 0 },
        })
    }

    /// Whether the frame is masked (sent by a client).
    pub fn masked(&self) -> bool {
        self.mask.is_some()
    }

    /// Whether the header could begin a real frame: a known opcode, no RSV2 or RSV3 (no
    /// extension wstap knows sets them), and a control frame's payload within 125 bytes.
    /// Where a stream resumes after a loss, this tells a frame header from payload bytes.
    pub fn is_sound(&self) -> bool {
        self.opcode.is_known() && !self.rsv23 && (!self.opcode.is_control() || self.len <= 125)
    }

    /// The header of a frame whose first byte (FIN, RSV bits, opcode) is `first`, with
    /// `len` payload bytes, masked with `mask` if given: the shortest length encoding.
    pub fn encode(first: u8, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut h = Vec::with_capacity(14);
        h.push(first);
        let m = if mask.is_some() { 0x80 } else { 0 };
        match len {
            n if n < 126 => h.push(m | n as u8),
            n if n < 65536 => {
                h.push(m | 126);
                h.extend((n as u16).to_be_bytes());
            }
            n => {
                h.push(m | 127);
                h.extend(n.to_be_bytes());
            }
        }
        if let Some(key) = mask {
            h.extend(key);
        }
        h
    }
}

/// A frame's first byte: FIN, RSV1 (a compressed message's first frame) and the opcode.
pub const fn first_byte(fin: bool, rsv1: bool, opcode: Opcode) -> u8 {
    (fin as u8) << 7 | (rsv1 as u8) << 6 | opcode.bits()
}

/// A whole frame whose first byte is `first` ([`first_byte`]), carrying `payload`, masked
/// with `mask` if given (as a client sends it).
pub fn encode_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = FrameHeader::encode(first, payload.len() as u64, mask);
    let at = f.len();
    f.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut f[at..], key, 0);
    }
    f
}

/// Masks or unmasks `data` (the same operation) with `key`, where `data` starts `pos`
/// bytes into its frame's payload.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], pos: u64) {
    let start = (pos % 4) as usize;
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key[(start + i) % 4];
    }
}

impl Default for FrameTracker {
    fn default() -> Self {
        FrameTracker::new()
    }
}

/// Where a [`FrameTracker`] stops consuming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// At the first frame boundary reached after at least one byte.
    Boundary,
    /// At the end of the data.
    End,
}

impl FrameTracker {
    /// A tracker between two frames: where a session's frames begin, past its HTTP heads,
    /// or where a stream resumes after a gap that ended on a frame boundary.
    pub fn new() -> FrameTracker {
        FrameTracker { state: State { header: [0; 14], have: 0, payload_left: 0, current: None } }
    }

    /// Between two frames?
    pub fn at_boundary(&self) -> bool {
        self.state.have == 0 && self.state.payload_left == 0
    }

    /// Consumes `data` until `until`. Returns the bytes consumed, and the header of each
    /// frame whose header was completed on the way (through `on_header`).
    pub fn advance(&mut self, data: &[u8], until: Until, mut on_header: impl FnMut(FrameHeader)) -> usize {
        self.walk(data, until, |w| {
            if let Walk::Header { header, .. } = w {
                on_header(header);
            }
        })
    }

    /// Consumes `data` as [`FrameTracker::advance`] does, reporting each frame header
    /// when it is complete and each piece of payload where it lies in `data`.
    pub fn walk(&mut self, data: &[u8], until: Until, mut f: impl FnMut(Walk<'_>)) -> usize {
        let mut at = 0;
        let State { header, have, payload_left, current } = &mut self.state;
        // Bytes of a header begun in an earlier call: that header is not all in `data`.
        let mut carried = *have;
        while at < data.len() {
            match current {
                Some((h, pos)) if *payload_left > 0 => {
                    let take = (*payload_left).min((data.len() - at) as u64);
                    *payload_left -= take;
                    f(Walk::Payload { header: *h, range: at..at + take as usize, pos: *pos, last: *payload_left == 0 });
                    *pos += take;
                    at += take as usize;
                    if *payload_left == 0 && until == Until::Boundary {
                        return at;
                    }
                }
                _ => {
                    header[usize::from(*have)] = data[at];
                    *have += 1;
                    at += 1;
                    if let Some(h) = FrameHeader::parse(&header[..usize::from(*have)]) {
                        let n = usize::from(std::mem::take(have));
                        *payload_left = h.len;
                        *current = Some((h, 0));
                        let in_data = (std::mem::take(&mut carried) == 0).then(|| at - n..at);
                        f(Walk::Header { header: h, bytes: &header[..n], in_data });
                        if h.len == 0 {
                            f(Walk::Payload { header: h, range: at..at, pos: 0, last: true });
                            if until == Until::Boundary {
                                return at;
                            }
                        }
                    }
                }
            }
        }
        at
    }
}

/// One step of [`FrameTracker::walk`], in stream order.
#[derive(Debug)]
pub enum Walk<'h> {
    /// A frame's header is complete.
    Header {
        /// The header.
        header: FrameHeader,
        /// All its bytes (some of them may have come in earlier calls).
        bytes: &'h [u8],
        /// Where it lies in this call's data, when it lies there whole.
        in_data: Option<std::ops::Range<usize>>,
    },
    /// A piece of a frame's payload (a frame without payload has one empty piece).
    Payload {
        /// The frame's header.
        header: FrameHeader,
        /// Where the piece lies in this call's data.
        range: std::ops::Range<usize>,
        /// How far into the frame's payload it starts.
        pos: u64,
        /// Whether it is the frame's last piece.
        last: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: Opcode, payload: &[u8], masked: bool) -> Vec<u8> {
        frame_with(first_byte(true, false, opcode), payload, masked)
    }

    /// A frame whose first byte (FIN, RSV bits, opcode) is `first`, masked or not.
    fn frame_with(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        encode_frame(first, payload, masked.then_some([1, 2, 3, 4]))
    }

    /// `data` cut at random points into pieces of at most `max` bytes.
    fn pieces<'a>(rng: &mut fastrand::Rng, data: &'a [u8], max: usize) -> Vec<&'a [u8]> {
        let (mut out, mut rest) = (Vec::new(), data);
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(1 + rng.usize(..max.min(rest.len())));
            out.push(piece);
            rest = tail;
        }
        out
    }

    /// Boundaries found when `stream` is fed in pieces of `piece` bytes.
    fn boundaries(stream: &[u8], piece: usize) -> Vec<usize> {
        let mut t = FrameTracker::new();
        let (mut pos, mut found) = (0, Vec::new());
        for chunk in stream.chunks(piece) {
            let mut off = 0;
            while off < chunk.len() {
                off += t.advance(&chunk[off..], Until::Boundary, |_| {});
                if t.at_boundary() {
                    found.push(pos + off);
                }
            }
            pos += chunk.len();
        }
        found
    }

    #[test]
    fn boundaries_are_found_whatever_the_chunking() {
        let f1 = frame(Opcode::Text, b"hello", true);
        let f2 = frame(Opcode::Binary, &vec![7u8; 300], true);
        let f3 = frame(Opcode::Ping, b"", false);
        let f4 = frame(Opcode::Binary, &vec![1u8; 70_000], false);
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for f in [&f1, &f2, &f3, &f4] {
            stream.extend_from_slice(f);
            want.push(stream.len());
        }
        for piece in [1, 2, 3, 7, 64, 1000, stream.len()] {
            assert_eq!(boundaries(&stream, piece), want, "piece size {piece}");
        }
    }

    /// Property: for random frames (lengths around the 7/16/64-bit encodings, masked or
    /// not) split at random points, the tracker finds exactly the frame boundaries and
    /// headers it finds in one piece.
    #[test]
    fn boundaries_and_headers_do_not_depend_on_the_split() {
        let lens = [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000];
        for seed in 0..200 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let (mut stream, mut want) = (Vec::new(), Vec::new());
            for _ in 0..1 + rng.usize(..6) {
                let len = if rng.bool() { lens[rng.usize(..lens.len())] } else { rng.usize(..3000) };
                let first = [0x81, 0x82, 0x01, 0x00, 0x80, 0x89, 0x8a, 0x88, 0xc1][rng.usize(..9)];
                let (payload, masked) =
                    (std::iter::repeat_with(|| rng.u8(..)).take(len).collect::<Vec<u8>>(), rng.bool());
                stream.extend(frame_with(first, &payload, masked));
                want.push(stream.len());
            }
            let max = 1 + rng.usize(..5000);
            let pieces = pieces(&mut rng, &stream, max);
            let (mut t, mut pos, mut found, mut headers) = (FrameTracker::new(), 0, Vec::new(), Vec::new());
            for piece in pieces {
                let mut off = 0;
                while off < piece.len() {
                    off += t.advance(&piece[off..], Until::Boundary, |h| headers.push(h));
                    if t.at_boundary() {
                        found.push(pos + off);
                    }
                }
                pos += piece.len();
            }
            assert_eq!(found, want, "seed {seed}");
            let mut whole = Vec::new();
            FrameTracker::new().advance(&stream, Until::End, |h| whole.push(h));
            assert_eq!(headers, whole, "seed {seed}");
        }
    }

    #[test]
    fn mid_frame_is_not_a_boundary_and_headers_are_reported() {
        let mut t = FrameTracker::new();
        assert!(t.at_boundary(), "nothing seen yet");
        let f = frame(Opcode::Text, b"abcdef", false);
        let mut headers = Vec::new();
        t.advance(&f[..4], Until::End, |h| headers.push(h));
        assert!(!t.at_boundary());
        assert_eq!(
            headers,
            vec![FrameHeader {
                fin: true,
                rsv1: false,
                rsv23: false,
                opcode: Opcode::Text,
                mask: None,
                len: 6,
                header_len: 2
            }]
        );
        t.advance(&f[4..], Until::End, |_| {});
        assert!(t.at_boundary());
    }

    #[test]
    fn a_header_says_where_it_lies_in_the_data_when_it_lies_there_whole() {
        let stream = [
            frame(Opcode::Text, b"hi", true),
            frame(Opcode::Binary, &[7; 300], false),
            frame(Opcode::Ping, b"", false),
        ]
        .concat();
        let mut where_ = Vec::new();
        let mut t = FrameTracker::new();
        let record = |w: Walk<'_>, out: &mut Vec<_>| {
            if let Walk::Header { bytes, in_data, .. } = w {
                out.push((bytes.len(), in_data));
            }
        };
        t.walk(&stream, Until::End, |w| record(w, &mut where_));
        assert_eq!(where_, [(6, Some(0..6)), (4, Some(8..12)), (2, Some(312..314))]);
        // The second header split across two calls: its bytes come from the tracker; the
        // third, whole in the second call, lies there.
        let (mut where_, mut t) = (Vec::new(), FrameTracker::new());
        t.walk(&stream[..10], Until::End, |w| record(w, &mut where_));
        t.walk(&stream[10..], Until::End, |w| record(w, &mut where_));
        assert_eq!(where_, [(6, Some(0..6)), (4, None), (2, Some(302..304))]);
    }

    #[test]
    fn a_sound_header_has_a_known_opcode_no_rsv2_or_rsv3_and_a_short_control_payload() {
        let header = |first: u8, len: usize| FrameHeader::parse(&encode_frame(first, &vec![0; len], None)).unwrap();
        assert!(header(first_byte(true, false, Opcode::Text), 70_000).is_sound());
        assert!(header(first_byte(true, true, Opcode::Text), 5).is_sound(), "RSV1: permessage-deflate");
        assert!(header(first_byte(true, false, Opcode::Ping), 125).is_sound());
        assert!(!header(first_byte(true, false, Opcode::Ping), 126).is_sound(), "a control payload over 125");
        assert!(!header(first_byte(true, false, Opcode::Reserved(3)), 5).is_sound(), "a reserved opcode");
        assert!(!header(first_byte(true, false, Opcode::Text) | 0x20, 5).is_sound(), "RSV2");
        assert!(!header(first_byte(true, false, Opcode::Text) | 0x10, 5).is_sound(), "RSV3");
    }

    #[test]
    fn a_header_s_size_is_known_from_its_second_byte() {
        for (len, masked) in [(5, false), (5, true), (300, false), (300, true), (70_000, false), (70_000, true)] {
            let f = frame(Opcode::Binary, &vec![0; len], masked);
            assert_eq!(FrameHeader::size(f[1]), FrameHeader::parse(&f).unwrap().header_len, "{len} {masked}");
        }
    }

    #[test]
    fn payloads_come_unmasked_whatever_the_chunking() {
        let mut stream = frame(Opcode::Text, b"hello world", true);
        stream.extend(frame(Opcode::Binary, b"", true));
        stream.extend(frame(Opcode::Text, b"plain", false));
        for piece in [1, 3, 5, stream.len()] {
            let mut t = FrameTracker::new();
            let mut got: Vec<(Opcode, Vec<u8>, bool)> = Vec::new();
            for chunk in stream.chunks(piece) {
                t.walk(chunk, Until::End, |w| {
                    let Walk::Payload { header: h, range, pos, last: end } = w else { return };
                    let mut p = chunk[range].to_vec();
                    if let Some(key) = h.mask {
                        apply_mask(&mut p, key, pos);
                    }
                    match got.last_mut() {
                        Some(last) if !last.2 => {
                            last.1.extend_from_slice(&p);
                            last.2 = end;
                        }
                        _ => got.push((h.opcode, p, end)),
                    }
                });
            }
            let want = vec![
                (Opcode::Text, b"hello world".to_vec(), true),
                (Opcode::Binary, vec![], true),
                (Opcode::Text, b"plain".to_vec(), true),
            ];
            assert_eq!(got, want, "piece {piece}");
        }
    }

    #[test]
    fn opcodes_round_trip_and_say_what_they_are() {
        for bits in 0..16 {
            let op = Opcode::from_bits(bits);
            assert_eq!(op.bits(), bits);
            assert_eq!(op.is_control(), bits >= 8, "{op:?}");
            assert_eq!(op.is_known(), matches!(bits, 0..=2 | 8..=10), "{op:?}");
        }
        assert!(Opcode::Text.starts_message() && !Opcode::Continuation.starts_message());
        assert_eq!(first_byte(true, true, Opcode::Binary), 0xc2);
    }

    #[test]
    fn header_parsing() {
        assert_eq!(FrameHeader::parse(&[0x81]), None);
        assert_eq!(FrameHeader::parse(&[0x81, 0xfe, 0x01]), None);
        let h = FrameHeader::parse(&[0x41, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 9, 8, 7, 6]).unwrap();
        assert_eq!(
            (h.fin, h.rsv1, h.opcode, h.mask, h.len, h.header_len),
            (false, true, Opcode::Text, Some([9, 8, 7, 6]), 1 << 32, 14)
        );
        assert_eq!(FrameHeader::parse(&[0x41, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 9, 8, 7]), None, "the key is cut short");
        for (len, mask) in [(5, None), (125, Some([1, 2, 3, 4])), (126, None), (65535, Some([0; 4])), (65536, None)] {
            let encoded = FrameHeader::encode(0x82, len, mask);
            let h = FrameHeader::parse(&encoded).unwrap();
            assert_eq!((h.opcode, h.len, h.mask, h.header_len), (Opcode::Binary, len, mask, encoded.len()), "{len}");
        }
    }
}
