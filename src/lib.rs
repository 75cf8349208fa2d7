//! wstap: a reverse proxy for HTTP/1.1 and WebSocket that records the sessions it carries
//! as pcapng files Wireshark decodes. This crate is the daemon (its library and the
//! `wstap` binary); the codecs and the reader are crates of their own that it uses.
//!
//! # Layout
//!
//! ```text
//! crates/wstap-wire/    pure codecs: Dir and Leg, Timestamp, TCP/IP synthesis, pcapng,
//!                       WebSocket frames, permessage-deflate, HTTP/1.1 heads
//! crates/wstap-replay/  any capture file → sessions and messages → a player against a peer
//! src/
//!   config/    the TOML file → validated, typed Settings (errors name the key and the file)
//!   capture/   the tee under each socket → event queue → writer thread → pcapng files
//!   proxy/     one client connection: TLS, hyper on both legs, routing, headers, the splice
//!   service/   the daemon: listeners, run and drain, reload, signals, systemd, metrics
//!   ship/      finished files stored in object storage and handed to `on_finish`;
//!              captures read back from the store
//!   bin/wstap/ the command line, apart from the library
//! ```
//!
//! Dependencies point one way, down these layers: `service` → `proxy` → `capture` →
//! `config` → `wstap_wire`; `service` → `ship` → `capture`, `config`, `wstap_replay`; `wstap_replay` → `wstap_wire`; `sync` is a leaf everyone uses.
//!
//! # The path of a byte
//!
//! Client to upstream (and the same way back):
//!
//! ```text
//! socket ─▶ service::listeners (accept, limit) ─▶ proxy::conn (hyper: head, route, headers)
//!        ─▶ proxy::upstream (hyper's client on an upstream socket it opened) ─▶ upstream
//! after `101 Switching Protocols`, proxy::session runs the relay:
//! client socket ◀─▶ proxy::splice (both directions, half-close kept) ◀─▶ upstream socket
//! ```
//!
//! Its copy, for capture (both sockets are wrapped before hyper sees them):
//!
//! ```text
//! proxy threads: capture::taps::tee (every read and write) ─▶ taps::tap (probe, begin,
//!   offsets; taps::track drops whole frames when the queue is full) ─▶ capture::queue
//! writer thread: capture::write::thread ─▶ write::sink (files, rotation, errors)
//!   ─▶ write::writer (the dispatcher: events → packets with wstap_wire::tcp), its parts
//!      write::rewrite (what is written: HTTP framed, redacted, frames by the rules),
//!      acks, rotation, repeat, section, statistics
//!   ─▶ wstap_wire::pcapng (blocks) ─▶ write::files (`.part`, then its final name)
//!   and, with `[live]`, write::live ─▶ capture::live (each subscriber's queue)
//!   ─▶ service::live (its socket)
//! ```
//!
//! `docs/architecture.md` has the whole tree, where each job of the capture lives, and
//! the glossary.
//!
//! # The API
//!
//! - Run the daemon: [`Settings`] (from a file or a string), then [`Daemon::bind`] and
//!   [`Daemon::run`], fed [`Action`]s; or [`run`], which is the `wstap run` command.
//! - Record your own connections without the proxy: a [`Capture`], and each socket in a
//!   [`Tee`] with its [`Tap`] (`examples/record.rs`); or drive the [`capture`] writer with
//!   events of your own.
//! - Read captures and replay them: the `wstap-replay` crate, which needs none of this
//!   one.
//!
//! Errors are typed: [`ConfigError`] for a config, [`DaemonError`] for the daemon.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod capture;
pub mod config;
mod proxy;
mod service;
pub mod ship;
mod sync;

pub use capture::{Capture, Opening, Tap, Tee};
pub use config::{CaptureSettings, ConfigError, Settings};
pub use service::daemon::{Daemon, State};
pub use service::error::DaemonError;
pub use service::runtime::{init_logging, runtime};
pub use service::signals::{listen as signals, Action};
pub use wstap_wire::{Dir, Leg, PerDir, PerLeg};

/// Runs the daemon as `wstap run` does: logs as `settings` say, turns Unix signals into
/// [`Action`]s, builds the runtime (`workers`), binds, and serves until a SIGTERM has been
/// drained.
pub fn run(settings: Settings) -> Result<(), DaemonError> {
    init_logging(&settings.log_level);
    let actions = signals().map_err(DaemonError::Signals)?;
    runtime(settings.workers).map_err(DaemonError::Runtime)?.block_on(async {
        let daemon = Daemon::bind(settings).await?;
        daemon.run(actions).await
    })
}
