//! The ids capture gives things: a client connection (and so the session it may carry)
//! and a captured leg. A leaf: events, notes and both sides of the queue name them.

use std::fmt;

/// One leg of one connection, as the event stream names it (a capture numbers its legs
/// from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LegId(pub u64);

/// One client connection accepted by the proxy, and so the WebSocket session it may
/// carry (numbered from 1, as the logs and `/sessions` number them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
