//! An encrypted leg (`capture.tls = "encrypted"`) as the writer keeps it: the
//! connection's keys, which every file the leg appears in carries in a Decryption Secrets
//! Block before its first packet, and its TLS records since the connection's first byte,
//! which a new file repeats after the synthetic handshake. The keys alone do not decrypt
//! a file that starts mid-connection: each record's nonce (TLS 1.3) or authenticated data
//! (TLS 1.2) holds its sequence number counted from the handshake, so Wireshark has to see
//! every record from there. What is kept is bounded per leg and, through a [`RecordBudget`]
//! every writer of the capture shares, in all; past a bound the new file says the leg
//! cannot be decrypted from it alone.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use wstap_wire::tcp::Sent;
use wstap_wire::Dir;

use crate::capture::note::Forgotten;

/// The most of one leg's records a new file repeats.
pub(super) const MAX_LEG_HISTORY: usize = 1 << 20;

/// The most all legs' kept records may take together.
pub(super) const MAX_HISTORY: usize = 64 << 20;

/// What a change of direction costs in the accounting: its entry in the run index.
const RUN_COST: usize = std::mem::size_of::<Run>();

/// Bytes of records kept by every encrypted leg of a capture (all its writers).
pub type RecordBudget = Arc<AtomicUsize>;

/// One encrypted leg.
pub(super) struct Encrypted {
    /// The connection's keys (NSS key log lines).
    pub(super) secrets: String,
    /// The records since the connection's first byte, in the order they crossed: one
    /// buffer, and where each direction's run of it ends.
    data: Vec<u8>,
    runs: Vec<Run>,
    /// What this leg holds of the budget.
    charged: usize,
    budget: RecordBudget,
    /// Why a new file can no longer repeat the records.
    lost: Option<Forgotten>,
}

/// A run of records that went one way: where it ends in the buffer.
#[derive(Debug, Clone, Copy)]
struct Run {
    dir: Dir,
    end: usize,
}

impl Encrypted {
    /// A leg whose keys are `secrets`, keeping records within `budget` (shared by every
    /// encrypted leg of the capture).
    pub(super) fn new(secrets: String, budget: RecordBudget) -> Encrypted {
        Encrypted { secrets, data: Vec::new(), runs: Vec::new(), charged: 0, budget, lost: None }
    }

    /// `bytes` went `dir`: kept for the next file while the bounds allow.
    pub(super) fn record(&mut self, dir: Dir, bytes: &[u8]) {
        if self.lost.is_some() || bytes.is_empty() {
            return;
        }
        let new_run = self.runs.last().is_none_or(|run| run.dir != dir);
        let cost = bytes.len() + if new_run { RUN_COST } else { 0 };
        if self.charged + cost > MAX_LEG_HISTORY {
            return self.forget(Forgotten::LegBound { kib: MAX_LEG_HISTORY >> 10 });
        }
        if self.budget.fetch_add(cost, Relaxed) + cost > MAX_HISTORY {
            self.budget.fetch_sub(cost, Relaxed);
            return self.forget(Forgotten::CaptureBound { mib: MAX_HISTORY >> 20 });
        }
        self.charged += cost;
        self.data.extend_from_slice(bytes);
        match self.runs.last_mut() {
            Some(last) if !new_run => last.end = self.data.len(),
            _ => self.runs.push(Run { dir, end: self.data.len() }),
        }
    }

    /// Stops keeping records, for `why`.
    pub(super) fn forget(&mut self, why: Forgotten) {
        self.lost.get_or_insert(why);
        (self.data, self.runs) = (Vec::new(), Vec::new());
        self.budget.fetch_sub(std::mem::take(&mut self.charged), Relaxed);
    }

    /// What a new file repeats after the handshake: every record since the first, or why
    /// it cannot.
    pub(super) fn repeated(&self) -> Result<Vec<Sent<'_>>, Forgotten> {
        if let Some(why) = self.lost {
            return Err(why);
        }
        let mut start = 0;
        Ok(self
            .runs
            .iter()
            .map(|run| {
                let sent = Sent { dir: run.dir, bytes: &self.data[start..run.end] };
                start = run.end;
                sent
            })
            .collect())
    }
}

impl Drop for Encrypted {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.charged, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_kept_in_order_within_both_bounds_and_given_back() {
        let budget = RecordBudget::default();
        let mut e = Encrypted::new(String::new(), budget.clone());
        e.record(Dir::Up, b"hello");
        e.record(Dir::Up, b" more");
        e.record(Dir::Down, b"hi");
        let sent = [Sent { dir: Dir::Up, bytes: b"hello more" }, Sent { dir: Dir::Down, bytes: b"hi" }];
        assert_eq!(e.repeated().unwrap(), sent);
        assert_eq!(budget.load(Relaxed), 12 + 2 * RUN_COST, "bytes and runs are charged");
        drop(e);
        assert_eq!(budget.load(Relaxed), 0, "a leg that ends gives its share back");

        let mut e = Encrypted::new(String::new(), budget.clone());
        budget.store(MAX_HISTORY, Relaxed);
        e.record(Dir::Up, b"x");
        assert_eq!(e.repeated().unwrap_err(), Forgotten::CaptureBound { mib: 64 });
        budget.store(0, Relaxed);

        let mut e = Encrypted::new(String::new(), budget.clone());
        e.record(Dir::Up, &vec![0; MAX_LEG_HISTORY - RUN_COST]);
        e.record(Dir::Down, b"1");
        assert_eq!(e.repeated().unwrap_err(), Forgotten::LegBound { kib: 1024 });
        assert_eq!(budget.load(Relaxed), 0, "forgetting gives back");
        e.record(Dir::Down, b"1");
        assert_eq!(budget.load(Relaxed), 0, "once lost, lost");
    }
}
