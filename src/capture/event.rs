//! What taps tell the capture writer: one [`Event`] per thing that happened on a leg
//! (its start, bytes each way, an end of stream, a reset, a comment, its close), stamped
//! with the time it happened. Both sides of the queue import these types; they import
//! nothing of either side.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::config::Snap;
use wstap_wire::dir::{Dir, Leg, PerDir};

/// Identifies one leg of one connection in the event stream.
pub type LegId = u64;

/// Something that happened on one leg, at `time` (ns since the Unix epoch).
#[derive(Debug, Clone)]
pub struct Event {
    /// When it happened, in nanoseconds since the Unix epoch.
    pub time: u64,
    /// The leg it happened on.
    pub leg: LegId,
    /// What happened.
    pub what: What,
}

/// What happened on a leg.
#[derive(Debug, Clone)]
pub enum What {
    /// The leg's capture starts: synthesize its handshake. Its comment goes on the SYN.
    Open(Box<Opening>),
    /// Bytes crossed the socket.
    Data {
        /// Which way they went.
        dir: Dir,
        /// Their position in that direction's captured stream (a jump means bytes were lost).
        offset: u64,
        /// The bytes.
        bytes: Bytes,
    },
    /// End of a stream: the peer's FIN was read, or wstap shut its write side.
    Fin {
        /// The stream that ended.
        dir: Dir,
        /// Its length (bytes lost just before it still count).
        offset: u64,
    },
    /// The queue had no room: the stream going `dir` lost everything up to `until`, a
    /// frame boundary, where its capture resumes.
    Gap {
        /// The stream that lost bytes.
        dir: Dir,
        /// Where the loss ends and capture resumes.
        until: u64,
        /// WebSocket frames lost, whole or in part.
        frames: u64,
        /// Some of them belonged to compressed (permessage-deflate) messages.
        compressed: bool,
    },
    /// The peer reset the connection (seen while reading or writing).
    Reset,
    /// A comment for the leg's next packet.
    Note(String),
    /// A WebSocket session starts on a leg recorded from its first byte (`mode = "all"`;
    /// the writer, which follows the leg's HTTP, has seen its Upgrade exchange).
    Session {
        /// For the leg's next packet.
        comment: String,
        /// How much of the session's payload is kept.
        snap: Snap,
    },
    /// The socket was closed.
    Close {
        /// How it ended: goes on the leg's last packet.
        reason: String,
        /// The captured streams' lengths.
        offsets: PerDir<u64>,
    },
}

#[derive(Debug, Clone)]
/// How a leg's capture starts: which leg, its addresses, and what to say about it.
pub struct Opening {
    /// Which connection of its session this is.
    pub leg: Leg,
    /// wstap's end of the connection.
    pub local: SocketAddr,
    /// The client (client leg) or the upstream (upstream leg).
    pub remote: SocketAddr,
    /// Goes on the leg's first packet.
    pub comment: String,
    /// The capture starts at an Upgrade exchange (a WebSocket session), not at the
    /// connection's first byte.
    pub session: bool,
    /// The client connection both legs of a session belong to.
    pub session_id: u64,
    /// For per-session file names: client address and route.
    pub label: String,
    /// How much of its payload is kept.
    pub snap: Snap,
    /// The leg's bytes are TLS records (`capture.tls = "encrypted"`), and these are the
    /// connection's keys (NSS key log lines), for the file's Decryption Secrets Block.
    pub tls_secrets: Option<String>,
}

impl Opening {
    /// A connection of its own (not a proxied session's), recorded from its first byte
    /// and kept whole: what an application recording its own sockets opens.
    pub fn new(leg: Leg, local: SocketAddr, remote: SocketAddr, comment: impl Into<String>) -> Opening {
        Opening {
            leg,
            local,
            remote,
            comment: comment.into(),
            session: false,
            session_id: 0,
            label: String::new(),
            snap: Snap::default(),
            tls_secrets: None,
        }
    }
}

/// Now, in nanoseconds since the Unix epoch: the time base of every event.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}
