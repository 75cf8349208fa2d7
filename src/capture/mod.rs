//! Capture: every byte that crosses a proxied connection, copied on the way and written
//! as TCP/IP packets into pcapng files, without ever holding up the traffic.
//!
//! ```text
//! proxy threads (taps/)                      │ writer thread (write/)
//! tee ─▶ tap ─▶ chunk (copy into a slab)     │
//!             ─▶ queue (bounded) ════════════╪═▶ thread ─▶ sink (files, rotation, errors)
//!                                            │     ─▶ writer (events → packets) ─▶ files
//!                                            │     ─▶ live writer ─▶ live (each subscriber)
//! ```
//!
//! - `event`, `ids`, `note`, `stats`: what a tap tells the writer, the ids it names,
//!   what capture says in comments, and what it did and lost: leaves both sides import.
//! - `queue`: the bounded queue between them ([`Recorder`] is its producers' end).
//! - `taps/`: the proxy threads' side ([`Tee`], [`Tap`]); `write/`: the writer thread's
//!   side ([`Capture`], [`CaptureWriter`], [`FileSink`]). Neither imports the other.
//! - `live`: where live-stream subscribers join ([`live::Hub`]) and wait for bytes.
//! - `url`: URLs with their credentials redacted: for heads and comments on the writer's
//!   side, and for the proxy's log lines (a leaf, so that both redact alike).
//! - `host`: who writes the files (the section header's application and host).
//! - `outbox`: where finished files are handed on, to be uploaded or given to a command
//!   (the `ship` subsystem takes them), and held from the ring until then.
//!
//! What a library user drives: a [`Capture`] (the queue and its writer thread), each
//! socket in a [`Tee`] with its [`Tap`]; or, with events of one's own, a
//! [`CaptureWriter`] over any `Write` or a [`FileSink`] over a directory.

pub(crate) mod event;
pub(crate) mod host;
pub(crate) mod ids;
pub mod live;
pub(crate) mod note;
pub mod outbox;
pub(crate) mod queue;
pub(crate) mod stats;
pub(crate) mod taps;
pub(crate) mod url;
pub(crate) mod write;

pub use event::{Event, Gap, Opening, Scope, What};
pub use host::section_info;
pub use ids::{ConnId, LegId};
pub use note::{
    Audience, Cut, Ending, Forgotten, Heading, Note, Redaction, Repeats, SessionEnd, Stop, TlsHeld, TlsLeg,
};
pub use outbox::{Arrivals, Outbox};
pub use queue::Recorder;
pub use stats::Stats;
pub use taps::{Decision, Layer, Mark, Start, Tap, Tee};
pub use write::ports::{display as display_port, table as undecodable_ports};
pub use write::{
    redact_head, redact_payload, Budgets, Capture, CaptureWriter, FileSink, Heartbeat, Processed, PureAcks,
    RecordBudget, Synthesis,
};
pub use wstap_wire::pcapng::SectionInfo;
