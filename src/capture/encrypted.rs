//! An encrypted leg (`capture.tls = "encrypted"`) as the writer keeps it: the
//! connection's keys, which every file the leg appears in carries in a Decryption Secrets
//! Block before its first packet, and its TLS records since the connection's first byte,
//! which a new file repeats after the synthetic handshake. The keys alone do not decrypt
//! a file that starts mid-connection: each record's nonce (TLS 1.3) or authenticated data
//! (TLS 1.2) holds its sequence number counted from the handshake, so Wireshark has to see
//! every record from there. What is repeated is bounded, per leg and for the writer;
//! past the bound the new file says the leg cannot be decrypted from it alone.

use crate::dir::Dir;

/// The most of one leg's records a new file repeats.
pub(crate) const MAX_LEG_HISTORY: usize = 1 << 20;

/// The most all legs' kept records may take together.
pub(crate) const MAX_HISTORY: usize = 64 << 20;

/// One encrypted leg.
pub(crate) struct Encrypted {
    /// The connection's keys (NSS key log lines).
    pub(crate) secrets: String,
    /// The records since the connection's first byte, in the order they crossed.
    history: Vec<(Dir, Vec<u8>)>,
    bytes: usize,
    /// Why a new file can no longer repeat the records.
    lost: Option<String>,
}

impl Encrypted {
    pub(crate) fn new(secrets: String) -> Encrypted {
        Encrypted { secrets, history: Vec::new(), bytes: 0, lost: None }
    }

    /// Bytes kept.
    pub(crate) fn kept(&self) -> usize {
        self.bytes
    }

    /// `bytes` went `dir`: kept for the next file if the bounds allow (`budget`: what
    /// all legs may still add).
    pub(crate) fn record(&mut self, dir: Dir, bytes: &[u8], budget: usize) {
        if self.lost.is_some() {
            return;
        }
        if self.bytes + bytes.len() > MAX_LEG_HISTORY {
            return self.forget(format!("more than {} KiB of its records crossed", MAX_LEG_HISTORY >> 10));
        }
        if bytes.len() > budget {
            return self.forget(format!("the writer's {} MiB for repeated records was spent", MAX_HISTORY >> 20));
        }
        match self.history.last_mut() {
            Some((d, last)) if *d == dir => last.extend_from_slice(bytes),
            _ => self.history.push((dir, bytes.to_vec())),
        }
        self.bytes += bytes.len();
    }

    /// Stops keeping records, for `why`.
    pub(crate) fn forget(&mut self, why: String) {
        self.lost.get_or_insert(why);
        self.history = Vec::new();
        self.bytes = 0;
    }

    /// What a new file repeats after the handshake: every record since the first, or why
    /// it cannot.
    pub(crate) fn replay_parts(&self) -> Result<Vec<(Dir, &[u8])>, &str> {
        match &self.lost {
            Some(why) => Err(why),
            None => Ok(self.history.iter().map(|(d, b)| (*d, &b[..])).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_kept_in_order_within_both_bounds() {
        let mut e = Encrypted::new(String::new());
        e.record(Dir::Up, b"hello", usize::MAX);
        assert_eq!(e.kept(), 5);
        e.record(Dir::Up, b" more", usize::MAX);
        e.record(Dir::Down, b"hi", usize::MAX);
        assert_eq!(e.replay_parts().unwrap(), vec![(Dir::Up, &b"hello more"[..]), (Dir::Down, &b"hi"[..])]);
        e.record(Dir::Up, b"x", 0);
        assert!(e.replay_parts().unwrap_err().contains("MiB"));
        assert_eq!(e.kept(), 0, "everything is given back");

        let mut e = Encrypted::new(String::new());
        e.record(Dir::Up, &vec![0; MAX_LEG_HISTORY], usize::MAX);
        e.record(Dir::Down, b"1", usize::MAX);
        assert!(e.replay_parts().unwrap_err().contains("KiB of its records"));
        e.record(Dir::Down, b"1", usize::MAX);
        assert_eq!(e.kept(), 0, "once lost, lost");
    }
}
