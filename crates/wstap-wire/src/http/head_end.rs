//! Where an HTTP/1.1 head ends, found as its bytes arrive in pieces of any size: at its
//! blank line, whose line ends may be bare LFs as hyper allows. The [`super::Framer`] finds the end of every head it holds this way, and
//! capture's frame tracking skips a session's heads with it without holding them.

/// A line end then an empty line, as the last bytes seen: `\n\r\n` (which `\r\n\r\n`
/// ends with) or, with bare LF line ends (which httparse, and so hyper, accept), `\n\n`.
const BLANK_LINE: u32 = u32::from_be_bytes(*b"\0\n\r\n");
const BARE_BLANK_LINE: u32 = u32::from_be_bytes(*b"\0\0\n\n");

/// `HTTP/1.1 101`: enough of a status line to tell an interim response.
const STATUS_LINE: usize = 12;

/// The search for the end of one head.
#[derive(Debug, Clone, Default)]
pub struct HeadEnd {
    /// The last four bytes seen.
    tail: u32,
    /// Bytes of the head seen so far.
    seen: u64,
    /// Its first bytes, to tell an interim response's status line.
    start: [u8; STATUS_LINE],
}

impl HeadEnd {
    /// The search at a head's first byte.
    pub fn new() -> HeadEnd {
        HeadEnd::default()
    }

    /// Takes bytes of the head from the start of `data`: `Some(n)` when the head ends
    /// after `n` of them (the blank line included), `None` when all are the head's and it
    /// goes on.
    pub fn scan(&mut self, data: &[u8]) -> Option<usize> {
        for (i, &b) in data.iter().enumerate() {
            if let Some(slot) = self.start.get_mut(self.seen as usize) {
                *slot = b;
            }
            self.seen += 1;
            self.tail = (self.tail << 8) | u32::from(b);
            if self.tail & 0xff_ffff == BLANK_LINE || self.tail & 0xffff == BARE_BLANK_LINE {
                return Some(i + 1);
            }
        }
        None
    }

    /// Whether any byte of the head was seen.
    pub fn started(&self) -> bool {
        self.seen > 0
    }

    /// Whether the head's status line is an interim response's (`1xx`, but not `101`):
    /// another head follows it in the same exchange.
    pub fn is_interim(&self) -> bool {
        let line = &self.start;
        self.seen >= STATUS_LINE as u64
            && line.starts_with(b"HTTP/1.")
            && line[9] == b'1'
            && line[10..].iter().all(u8::is_ascii_digit)
            && &line[9..] != b"101"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_is_found_whatever_the_pieces_and_interim_heads_are_told() {
        let head = b"HTTP/1.1 100 Continue\r\nX: y\r\n\r\nafter";
        for piece in [1, 2, 3, 5, head.len()] {
            let mut h = HeadEnd::new();
            let mut at = 0;
            let end = head.chunks(piece).find_map(|c| {
                let found = h.scan(c).map(|n| at + n);
                at += c.len();
                found
            });
            assert_eq!(end, Some(head.len() - 5), "piece {piece}");
            assert!(h.is_interim() && h.started());
        }
        let mut switching = HeadEnd::new();
        assert_eq!(switching.scan(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"), Some(36));
        assert!(!switching.is_interim(), "a 101 is the last head");
        let mut request = HeadEnd::new();
        assert_eq!(request.scan(b"GET / HTTP/1.1\r\n"), None);
        assert!(!request.is_interim() && request.started());
    }

    #[test]
    fn bare_line_feeds_end_a_head_as_hyper_reads_them() {
        for (head, end) in [(&b"GET / HTTP/1.1\nHost: a\n\nX"[..], 24), (b"GET / HTTP/1.1\r\nA: b\n\r\nX", 23)] {
            for piece in 1..head.len() {
                let mut h = HeadEnd::new();
                let mut at = 0;
                let found = head.chunks(piece).find_map(|c| {
                    let found = h.scan(c).map(|n| at + n);
                    at += c.len();
                    found
                });
                assert_eq!(found, Some(end), "piece {piece}");
            }
        }
        assert_eq!(HeadEnd::new().scan(b"GET / HTTP/1.1\r\nA: b\rc\r\n"), None, "a lone CR ends nothing");
    }
}
