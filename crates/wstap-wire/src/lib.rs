//! wstap-wire: the pure codecs of WebSocket capture, shared by the wstap daemon and the
//! replay library. Functions over buffers: no I/O, no clock, no async runtime, nothing
//! imported from the crates that use them.
//!
//! # Layout
//!
//! - [`dir`]: the vocabulary: [`Dir`] (`Up`: client → server, `Down` back), [`Leg`]
//!   (client, upstream), and a pair of values indexed by each ([`PerDir`], [`PerLeg`]).
//! - [`tcp`]: TCP/IP synthesis: handshake, segments, ACKs, FIN, RST, checksums.
//! - [`pcapng`]: section header, interfaces, packet, statistics and secrets blocks.
//! - [`wsframe`]: WebSocket frame headers and opcodes, masking, frame boundaries in a
//!   stream.
//! - [`deflate`]: permessage-deflate: negotiation, the bounded inflating loop, the window
//!   a new capture file restores.
//! - [`repeat`]: how a capture marks what it repeats of a session's past (comments in
//!   pcapng, Ethernet addresses in classic pcap).
//! - [`http`]: HTTP/1.1 heads, where a head ends, and the one message framer (bodies by
//!   length, chunks, or to the close; HEAD, 1xx, 204, 304; the switch after a `101`).
//! - [`time`]: [`Timestamp`], the one time type of capture and replay.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod deflate;
pub mod dir;
pub mod http;
pub mod pcapng;
pub mod repeat;
pub mod tcp;
pub mod time;
pub mod wsframe;

pub use dir::{Dir, Leg, PerDir, PerLeg};
pub use time::Timestamp;
