//! Pure codecs, shared by capture and replay: functions over buffers, no I/O, no clock,
//! nothing imported from the subsystems that use them.
//!
//! - [`tcp`]: TCP/IP synthesis: handshake, segments, ACKs, FIN, RST, checksums.
//! - [`http`]: HTTP/1.1 heads and the length of the body after one.
//! - [`pcapng`]: section header, interfaces, packet blocks.
//! - [`wsframe`]: WebSocket frame headers, masking, frame boundaries in a stream.
//! - [`deflate`]: permessage-deflate: negotiation, the inflating loop, the window a new
//!   file restores.

pub mod deflate;
pub mod http;
pub mod pcapng;
pub mod tcp;
pub mod wsframe;
