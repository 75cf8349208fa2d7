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
//! - `event`: what a tap tells the writer (a leaf both sides import).
//! - `stats`: what capture did and lost (a leaf too).
//! - `tee`: the stream wrapper under hyper; `tap`: a leg's capture state (probe ring,
//!   offsets, the start of a session); `track`: a recorded direction's frames, and
//!   drops that never cut one; `chunk`: what crossed a socket, and the slab copies.
//! - `recorder`: the bounded queue, the writer thread and its heartbeat.
//! - `sink`: the writer thread's side: outputs, rotation, write errors.
//! - `writer`: events → packets → pcapng sections, replays in each new file;
//!   `leg`: one leg as the writer keeps it; `encrypted`: a leg of TLS records, its
//!   keys and what a new file repeats of it.
//! - `rewrite`: what of a leg's bytes is written (heads masked by `redact`, payloads
//!   cut to the policy's limits, messages a lost deflate window makes undecodable).
//! - `files`: names, `.part`, the ring of finished files.
//! - `live`: the live stream: a writer of its own, each subscriber's section and
//!   bounded queue.
//! - `ports`: the ports Wireshark would not decode a session on, and the ones written.
//!
//! What a library user drives: a [`Capture`] (the queue and its writer thread), each
//! socket in a [`Tee`] with its [`Tap`]; or, with events of one's own, a
//! [`CaptureWriter`] over any `Write` or a [`FileSink`] over a directory.

pub(crate) mod chunk;
pub(crate) mod encrypted;
pub(crate) mod event;
pub(crate) mod files;
pub(crate) mod host;
pub(crate) mod leg;
pub(crate) mod live;
pub(crate) mod ports;
pub(crate) mod recorder;
pub(crate) mod redact;
pub(crate) mod rewrite;
pub(crate) mod sink;
pub(crate) mod stats;
pub(crate) mod tap;
pub(crate) mod tee;
pub(crate) mod track;
pub(crate) mod writer;

pub use event::{Event, LegId, Opening, What};
pub use host::section_info;
pub use ports::table as undecodable_ports;
pub use recorder::Capture;
pub use sink::FileSink;
pub use stats::Stats;
pub use tap::Tap;
pub use tee::Tee;
pub use writer::{CaptureWriter, Step, Synthesis};
pub use wstap_wire::pcapng::SectionInfo;
