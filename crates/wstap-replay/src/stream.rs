//! One direction of a reassembled connection as the session reader sees it: the bytes the
//! capture holds, the holes where it missed some, and when each byte arrived. Positions
//! are stream offsets (holes included); memory is only what was captured and not yet
//! released, however large a hole claims to be or however long the stream runs.

use wstap_wire::Timestamp;

/// A direction's captured bytes and the holes between them.
#[derive(Debug, Default)]
pub(crate) struct Stream {
    /// The captured bytes not released, holes left out.
    data: Vec<u8>,
    /// Captured bytes released before `data`.
    released: usize,
    /// Where released bytes end: a stream offset, and the captured bytes before it.
    base: (u64, usize),
    /// The holes after `base`, in order.
    holes: Vec<Hole>,
    /// Its length in stream offsets: captured bytes and holes.
    len: u64,
    /// When each piece arrived.
    arrivals: Vec<Arrival>,
}

/// When bytes of a stream became readable, and their place in the conversation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Arrival {
    /// The stream offset just past them.
    pub(crate) end: u64,
    /// When they became readable.
    pub(crate) time: Timestamp,
    /// The place, in both directions' deliveries together, of the one that made them readable.
    pub(crate) order: usize,
}

/// Bytes the capture missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hole {
    /// Where it starts and ends, in stream offsets.
    pub(crate) at: u64,
    pub(crate) end: u64,
    /// How many captured bytes come before it (released ones included).
    data_at: usize,
}

impl Stream {
    /// Bytes that became readable at `ts`, `order`th in the conversation.
    pub(crate) fn push_data(&mut self, bytes: &[u8], time: Timestamp, order: usize) {
        if self.data.is_empty() {
            self.data.reserve_exact(bytes.len());
        }
        self.data.extend_from_slice(bytes);
        self.len += bytes.len() as u64;
        self.arrivals.push(Arrival { end: self.len, time, order });
    }

    /// `n` bytes the capture missed.
    pub(crate) fn push_hole(&mut self, n: u64, time: Timestamp, order: usize) {
        let at = self.len;
        self.len = at.saturating_add(n);
        self.holes.push(Hole { at, end: self.len, data_at: self.released + self.data.len() });
        self.arrivals.push(Arrival { end: self.len, time, order });
    }

    /// Its length in stream offsets.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Whether any byte in `from..to` is missing.
    pub(crate) fn has_gap(&self, from: u64, to: u64) -> bool {
        self.hole_from(from).is_some_and(|h| h.at < to)
    }

    /// The hole that contains `pos` or comes after it.
    pub(crate) fn hole_from(&self, pos: u64) -> Option<Hole> {
        let i = self.holes.partition_point(|h| h.end <= pos);
        self.holes.get(i).copied()
    }

    /// The captured bytes from `from` up to the next hole or the end; empty when `from`
    /// is in a hole, past the end, or released.
    pub(crate) fn contiguous(&self, from: u64) -> &[u8] {
        let i = self.holes.partition_point(|h| h.end <= from);
        if self.holes.get(i).is_some_and(|h| h.at <= from) || from >= self.len || from < self.base.0 {
            return &[];
        }
        let start = self.captured_before(from, i) - self.released;
        let end = self.holes.get(i).map_or(self.data.len(), |h| h.data_at - self.released);
        &self.data[start..end]
    }

    /// The captured bytes before `pos` (not in a hole), `i` being the first hole that
    /// ends after it: those before the last hole that ends by then, or the base.
    fn captured_before(&self, pos: u64, i: usize) -> usize {
        match i.checked_sub(1).map(|j| self.holes[j]) {
            Some(h) => h.data_at + (pos - h.end) as usize,
            None => self.base.1 + (pos - self.base.0) as usize,
        }
    }

    /// Forgets everything before `upto` (or before the hole it falls in): the bytes, the
    /// holes and the arrivals. What is read later is read from `upto` on.
    pub(crate) fn release(&mut self, upto: u64) {
        let upto = upto.min(self.len);
        let i = self.holes.partition_point(|h| h.end <= upto);
        let upto = match self.holes.get(i) {
            Some(h) if h.at <= upto => h.at,
            _ => upto,
        };
        if upto <= self.base.0 {
            return;
        }
        let captured = self.captured_before(upto, i);
        self.data.drain(..captured - self.released);
        self.released = captured;
        self.base = (upto, captured);
        self.holes.drain(..i);
        let done = self.arrivals.partition_point(|a| a.end < upto);
        self.arrivals.drain(..done);
        // A stream read slowly should not keep a buffer sized for its busiest moment.
        if self.data.capacity() > 4 * self.data.len().max(64 << 10) {
            self.data.shrink_to(self.data.len().max(64 << 10));
        }
    }

    /// Where what is held starts: the offset up to which the stream was released.
    pub(crate) fn start(&self) -> u64 {
        self.base.0
    }

    /// Captured bytes held (not released).
    pub(crate) fn held(&self) -> usize {
        self.data.len()
    }

    /// The bytes `from..to` when none is missing.
    pub(crate) fn slice(&self, from: u64, to: u64) -> Option<&[u8]> {
        (!self.has_gap(from, to)).then(|| self.contiguous(from)).and_then(|b| b.get(..(to - from) as usize))
    }

    /// Whatever the capture holds of `from..to`: each run of bytes with its offset.
    pub(crate) fn runs(&self, from: u64, to: u64) -> Vec<(u64, &[u8])> {
        let mut out = Vec::new();
        let mut at = from;
        while at < to.min(self.len) {
            match self.hole_from(at).filter(|h| h.at <= at) {
                Some(h) => at = h.end,
                None => {
                    let run = self.contiguous(at);
                    let run = &run[..run.len().min((to - at) as usize)];
                    out.push((at, run));
                    at += run.len().max(1) as u64;
                }
            }
        }
        out
    }

    /// When the byte before `end` arrived, and its place in the conversation: the
    /// arrival of the piece that holds it, with `end` as its end.
    pub(crate) fn arrival(&self, end: u64) -> Arrival {
        let i = self.arrivals.partition_point(|a| a.end < end);
        let piece = self.arrivals.get(i).or(self.arrivals.last()).copied().unwrap_or_default();
        Arrival { end, ..piece }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_count_holes_but_memory_holds_only_what_was_captured() {
        let mut s = Stream::default();
        let t = Timestamp::from_nanos;
        s.push_data(b"abc", t(1), 0);
        s.push_hole(1 << 40, t(2), 1); // a hole of a terabyte costs nothing
        s.push_data(b"defg", t(3), 2);
        let after = 3 + (1 << 40);
        assert_eq!(s.len(), after + 4);
        assert_eq!(s.contiguous(0), b"abc");
        assert_eq!(s.contiguous(1), b"bc");
        assert_eq!(s.contiguous(3), b"", "in the hole");
        assert_eq!(s.contiguous(after + 1), b"efg");
        assert!(s.has_gap(2, 4) && !s.has_gap(0, 3) && !s.has_gap(after, after + 4));
        assert_eq!(s.slice(after, after + 2), Some(&b"de"[..]));
        assert_eq!(s.slice(2, after + 1), None);
        assert_eq!(s.runs(1, after + 2), [(1, &b"bc"[..]), (after, &b"de"[..])]);
        assert_eq!(s.hole_from(0).map(|h| (h.at, h.end)), Some((3, after)));
        assert_eq!(s.arrival(after + 1), Arrival { end: after + 1, time: t(3), order: 2 });
    }

    #[test]
    fn released_bytes_are_gone_and_offsets_still_hold() {
        let mut s = Stream::default();
        let t = Timestamp::from_nanos;
        s.push_data(b"abcdef", t(1), 0);
        s.push_hole(10, t(2), 1);
        s.push_data(b"ghij", t(3), 2);
        s.release(4);
        assert_eq!((s.held(), s.contiguous(4), s.contiguous(2)), (6, &b"ef"[..], &b""[..]));
        assert_eq!(s.slice(16, 18), Some(&b"gh"[..]));
        s.release(9); // inside the hole: released up to its start
        assert_eq!((s.held(), s.contiguous(16)), (4, &b"ghij"[..]));
        assert!(s.has_gap(6, 17));
        s.release(18);
        assert_eq!((s.held(), s.contiguous(18), s.len()), (2, &b"ij"[..], 20));
        assert_eq!(s.arrival(20).time, t(3));
        s.push_data(b"kl", t(4), 3);
        assert_eq!(s.runs(18, 22), [(18, &b"ijkl"[..])]);
    }
}
