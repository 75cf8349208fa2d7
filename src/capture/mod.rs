//! Capture: every byte that crosses a proxied connection, copied on the way and written
//! as TCP/IP packets into pcapng files, without ever holding up the traffic.
//!
//! ```text
//! proxy thread                              │ writer thread (wstap-capture)
//! tee ─▶ tap ─▶ chunk (copy into a slab)    │
//!             ─▶ recorder (bounded queue) ══╪═▶ sink (files, rotation, errors)
//!                                           │     ─▶ writer (events → packets; leg)
//!                                           │     ─▶ files (`.part` → final, the ring)
//! ```
//!
//! - [`event`]: what a tap tells the writer (a leaf both sides import).
//! - [`stats`]: what capture did and lost (a leaf too).
//! - [`tee`]: the stream wrapper under hyper; [`tap`]: a leg's capture state (probe ring,
//!   offsets, the start of a session); [`track`]: a recorded direction's frames, and
//!   drops that never cut one; [`chunk`]: what crossed a socket, and the slab copies.
//! - [`recorder`]: the bounded queue, the writer thread and its heartbeat.
//! - [`sink`]: the writer thread's side: outputs, rotation, write errors.
//! - [`writer`]: events → packets → pcapng sections, replays in each new file;
//!   [`leg`]: one leg as the writer keeps it; [`encrypted`]: a leg of TLS records, its
//!   keys and what a new file repeats of it.
//! - [`rewrite`]: what of a leg's bytes is written (heads masked by [`redact`], payloads
//!   cut to the policy's limits, messages a lost deflate window makes undecodable).
//! - [`files`]: names, `.part`, the ring of finished files.
//! - [`live`]: the live stream: a writer of its own, each subscriber's section and
//!   bounded queue.
//! - [`ports`]: the ports Wireshark would not decode a session on, and the ones written.

pub mod chunk;
pub mod encrypted;
pub mod event;
pub mod files;
pub mod leg;
pub mod live;
pub mod ports;
pub mod recorder;
pub mod redact;
pub mod rewrite;
pub mod sink;
pub mod stats;
pub mod tap;
pub mod tee;
pub mod track;
pub mod writer;
