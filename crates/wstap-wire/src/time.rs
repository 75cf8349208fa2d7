//! The one time type of capture and replay: a [`Timestamp`], nanoseconds since the Unix
//! epoch. Capture stamps each event with one when its bytes cross a socket; a pcapng
//! packet block carries one; the reader gives one to every message it rebuilds. Pure:
//! nothing here reads a clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A moment, in nanoseconds since the Unix epoch (1970 to 2554).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch itself: what a capture that records no time (a simple packet
    /// block) says.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// The moment `ns` nanoseconds after the epoch.
    pub const fn from_nanos(ns: u64) -> Timestamp {
        Timestamp(ns)
    }

    /// The moment `ns` nanoseconds after the epoch, held to the range a `Timestamp`
    /// covers (a capture file may claim any 64-bit time with any offset).
    pub fn saturating_from_nanos(ns: i128) -> Timestamp {
        Timestamp(ns.clamp(0, i128::from(u64::MAX)) as u64)
    }

    /// A wall-clock time (the epoch, for one before it).
    pub fn from_system_time(t: SystemTime) -> Timestamp {
        Timestamp(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64))
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The time since the epoch.
    pub fn since_epoch(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// As a wall-clock time.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + self.since_epoch()
    }

    /// How long after `earlier` this is (zero if it is not after it).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `d` later (the latest time a `Timestamp` holds, past it).
    pub fn after(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(d.as_nanos().min(u128::from(u64::MAX)) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_convert_and_hold_their_range() {
        let t = Timestamp::from_nanos(1_764_000_000_123_456_789);
        assert_eq!(Timestamp::from_system_time(t.to_system_time()), t);
        assert_eq!(t.after(Duration::from_nanos(11)).since(t), Duration::from_nanos(11));
        assert_eq!(t.since(t.after(Duration::from_secs(1))), Duration::ZERO, "never negative");
        assert_eq!(Timestamp::saturating_from_nanos(-5), Timestamp::EPOCH);
        assert_eq!(Timestamp::saturating_from_nanos(i128::MAX).as_nanos(), u64::MAX);
        assert_eq!(Timestamp::from_system_time(UNIX_EPOCH - Duration::from_secs(1)), Timestamp::EPOCH);
    }
}
