//! The writer thread's side of capture: events taken off the queue become packets in
//! pcapng files (and, with `[live]`, in the live stream). Nothing here imports the proxy
//! threads' side.
//!
//! - `thread`: [`Capture`], the writer thread and its heartbeat.
//! - `sink`: [`FileSink`]: outputs (one, or one per session), rotation by size, age and
//!   signal, write errors; `files`: names, `.part`, the ring of finished files;
//!   `direct`: a file written around the page cache.
//! - `writer`: [`CaptureWriter`], the dispatcher from events to packets, over its parts:
//!   `section` and `statistics` (the pcapng section and what each interface saw),
//!   `acks` (when the synthesized receivers acknowledge, and the packet held back for a
//!   close comment), `rotation` (when a section may end), `repeat` (what a new section
//!   repeats of each live leg), `snapshot` (a live subscriber's first section).
//! - `leg`: one leg as the writer keeps it; `encrypted`: a leg of TLS records.
//! - `rewrite/`: what of a leg's bytes is written (HTTP followed with the framer, heads
//!   redacted by `redact`), and `rewrite/frames`: the rules frame by frame.
//! - `ports`: the ports Wireshark would not decode a session on, and the ones written.
//! - `live`: the live stream's writer, each subscriber's first section and chunks.

mod acks;
mod direct;
mod encrypted;
pub(crate) mod files;
mod leg;
mod live;
pub(crate) mod ports;
mod redact;
pub use redact::{head as redact_head, payload as redact_payload};
mod repeat;
mod rewrite;
mod rotation;
mod section;
pub(crate) mod sink;
mod snapshot;
mod statistics;
pub(crate) mod thread;
pub(crate) mod writer;

pub use crate::config::PureAcks;
pub use encrypted::RecordBudget;
pub use sink::FileSink;
pub use thread::{Capture, Heartbeat};
pub use writer::{Budgets, CaptureWriter, Processed, Synthesis};
