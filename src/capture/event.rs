//! What taps tell the capture writer: one [`Event`] per thing that happened on a leg
//! (its start, bytes each way, an end of stream, a reset, a comment, its close), stamped
//! with the time it happened, and the ids and kinds those events name. Both sides of the
//! queue import these types; they import nothing of either side.

use std::net::SocketAddr;
use std::time::SystemTime;

use bytes::Bytes;
use wstap_wire::{Dir, Leg, PerDir, Timestamp};

use crate::capture::ids::{ConnId, LegId};
use crate::capture::note::{Ending, Note};
use crate::config::Snap;

/// What a leg's capture covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The whole connection, from its first byte (mode `"all"`, or an application
    /// recording its own sockets): its HTTP is followed, and any session on it.
    Connection,
    /// A WebSocket session, from the first byte of its Upgrade request.
    Session,
}

/// Something that happened on one leg, at `time`.
#[derive(Debug, Clone)]
pub struct Event {
    /// When it happened.
    pub time: Timestamp,
    /// The leg it happened on.
    pub leg: LegId,
    /// What happened.
    pub what: What,
}

/// What happened on a leg.
#[derive(Debug, Clone)]
pub enum What {
    /// The leg's capture starts: synthesize its handshake. Its heading goes on the SYN.
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
    Gap(Gap),
    /// The peer reset the connection (seen while reading or writing).
    Reset,
    /// A comment for the leg's next packet.
    Note(Note),
    /// A WebSocket session starts on a leg recorded from its first byte (mode `"all"`;
    /// the writer, which follows the leg's HTTP, has seen its Upgrade exchange).
    Session {
        /// The session's heading (a [`Heading`](crate::capture::Heading), said), for the
        /// leg's next packet.
        heading: String,
        /// How much of the session's payload is kept.
        snap: Snap,
    },
    /// The socket was closed.
    Close {
        /// How it ended: goes on the leg's last packet.
        reason: Ending,
        /// The captured streams' lengths.
        offsets: PerDir<u64>,
    },
}

/// Bytes a session's direction lost while the queue was full, ending at a frame boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The stream that lost bytes.
    pub dir: Dir,
    /// Where the loss ends and capture resumes.
    pub until: u64,
    /// WebSocket frames lost, whole or in part.
    pub frames: u64,
    /// Some of them belonged to compressed (permessage-deflate) messages: the shared
    /// deflate window is lost with them.
    pub compressed: bool,
}

/// How a leg's capture starts: which leg, its addresses, and what to say about it.
#[derive(Debug, Clone)]
pub struct Opening {
    /// Which connection of its session this is.
    pub leg: Leg,
    /// wstap's end of the connection.
    pub local: SocketAddr,
    /// The client (client leg) or the upstream (upstream leg).
    pub remote: SocketAddr,
    /// What the leg is (a [`Heading`](crate::capture::Heading), said, or a library user's
    /// words): its first packet's comment, and what a new section's repeat quotes.
    pub heading: String,
    /// What the capture covers: from the connection's first byte, or from an Upgrade
    /// exchange (a WebSocket session).
    pub scope: Scope,
    /// The client connection both legs of a session belong to.
    pub conn: ConnId,
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
    pub fn new(leg: Leg, local: SocketAddr, remote: SocketAddr, heading: impl Into<String>) -> Opening {
        Opening {
            leg,
            local,
            remote,
            heading: heading.into(),
            scope: Scope::Connection,
            conn: ConnId::default(),
            label: String::new(),
            snap: Snap::default(),
            tls_secrets: None,
        }
    }
}

/// Now: the time base of every event.
pub fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}
