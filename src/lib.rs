//! wstap: a reverse proxy for HTTP/1.1 and WebSocket that records the sessions it carries
//! as pcapng files Wireshark decodes, and reads any capture back as sessions to replay.
//!
//! # Layout
//!
//! ```text
//! src/
//!   dir.rs     Dir (Up: client → server, Down back), Leg (client, upstream), PerDir, PerLeg
//!   config/    the TOML file → validated, typed Settings (errors name the key and the file)
//!   wire/      pure codecs shared by capture and replay: tcp (TCP/IP synthesis), pcapng,
//!              wsframe (frame headers, masking, boundaries), deflate (windows, inflating)
//!   capture/   the tee under each socket → event queue → writer thread → pcapng files
//!   proxy/     one client connection: TLS, hyper on both legs, routing, headers, the splice
//!   service/   the daemon: listeners, run and drain, reload, signals, systemd, metrics
//!   replay/    any capture file → sessions and messages → a player against a live peer
//!   bin/wstap/ the command line, apart from the library
//! ```
//!
//! Dependencies point one way, down these layers: `service` → `proxy` → `capture` →
//! `config` → `wire`, and `replay` → `wire`; `dir` and `sync` are leaves everyone uses.
//!
//! # The path of a byte
//!
//! Client to upstream (and the same way back):
//!
//! ```text
//! socket ─▶ service::listeners (accept, limit) ─▶ proxy::conn (hyper: head, route, headers)
//!        ─▶ proxy::conn (hyper client on an upstream socket it opened) ─▶ upstream
//! after `101 Switching Protocols`:
//! client socket ◀─▶ proxy::splice (both directions, half-close kept) ◀─▶ upstream socket
//! ```
//!
//! Its copy, for capture (both sockets are wrapped before hyper sees them):
//!
//! ```text
//! capture::tee (every read and write) ─▶ capture::tap (probe, start, offsets;
//!   capture::track drops whole frames when the queue is full)
//!   ─▶ capture::recorder (bounded queue) ═▶ writer thread ─▶ capture::sink (files, rotation)
//!   ─▶ capture::writer (events → packets: wire::tcp) ◀─ capture::rewrite (what is
//!      written: HTTP heads and frames followed, capture::redact masks, snaps)
//!   ─▶ wire::pcapng (blocks) ─▶ capture::files (`.part`, then its final name)
//!   and, with `[live]`, a second writer ─▶ capture::live (each subscriber's queue)
//!   ─▶ service::live (its socket)
//! ```
//!
//! And back, from a file to a live peer ([`replay`]):
//!
//! ```text
//! replay::capfile (records) ─▶ replay::dissect (TCP segments) ─▶ replay::reassembly
//!   (byte streams, gaps) ─▶ replay::session (HTTP, Upgrade, frames, inflate) ─▶ replay::player
//! ```
//!
//! # The API
//!
//! - Run the daemon: [`Settings`] (from a file or a string), then [`Daemon::bind`] and
//!   [`Daemon::run`], fed [`Action`]s; or [`run`], which is the `wstap run` command.
//! - Record your own connections without the proxy: a [`Capture`], and each socket in a
//!   [`Tee`] with its [`Tap`] (`examples/record.rs`).
//! - Read captures and replay them: [`replay`].
//! - [`internals`]: the capture writer on its own, for wstap's benches and golden tests.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod capture;
pub mod config;
mod dir;
mod proxy;
pub mod replay;
mod service;
mod sync;
#[cfg(test)]
mod testing;
mod wire;

pub use capture::event::Opening;
pub use capture::recorder::Capture;
pub use capture::tap::Tap;
pub use capture::tee::Tee;
pub use config::{CaptureSettings, ConfigError, Settings};
pub use dir::{Dir, Leg, PerDir, PerLeg};
pub use service::daemon::{Daemon, State};
pub use service::runtime::{init_logging, runtime};
pub use service::signals::{listen as signals, Action};

/// Runs the daemon as `wstap run` does: logs as `settings` say, turns Unix signals into
/// [`Action`]s, builds the runtime (`workers`), binds, and serves until a SIGTERM has been
/// drained.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    init_logging(&settings.log_level);
    let actions = signals()?;
    runtime(settings.workers)?.block_on(async {
        let daemon = Daemon::bind(settings).await?;
        daemon.run(actions).await
    })
}

/// The capture writer and its parts, and the capture-file reader, usable on their own:
/// what wstap's benchmarks and its own tests drive directly. Not a stable API;
/// applications use [`Capture`] and [`replay`].
pub mod internals {
    pub use crate::capture::event::{Event, LegId, What};
    pub use crate::capture::ports::table as undecodable_ports;
    pub use crate::capture::sink::FileSink;
    pub use crate::capture::stats::Stats;
    pub use crate::capture::writer::{CaptureWriter, Step, Synthesis};
    pub use crate::replay::capfile::{RawPacket, Reader};
    pub use crate::replay::dissect::{segment, Segment};
    pub use crate::replay::reassembly::{Conn, Reassembler};
    pub use crate::replay::session::{decode_within, InflateBudget};
    pub use crate::wire::pcapng::SectionInfo;
    pub use crate::wire::wsframe::{apply_mask, FrameHeader};
}
