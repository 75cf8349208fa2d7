//! wstap: a reverse proxy for HTTP/1.1 and WebSocket that records the sessions it carries.
//!
//! # Layout
//!
//! The path of a byte, client to upstream:
//!
//! ```text
//! socket ─▶ daemon (accept, limit) ─▶ proxy (hyper server: head, route, headers)
//!        ─▶ proxy (hyper client on an upstream socket it opened) ─▶ upstream
//! after `101 Switching Protocols`:
//! client socket ◀─▶ splice (both directions, half-close kept) ◀─▶ upstream socket
//! ```
//!
//! And of its copy, for capture (both sockets are wrapped before hyper sees them):
//!
//! ```text
//! tap::Tee (every read/write) ─▶ tap::Tap ─▶ recorder (bounded queue) ═▶ writer thread:
//!   files::FileSink ─▶ writer::CaptureWriter (packet::Flow, wsframe, deflate) ─▶ pcapng ─▶ file
//! ```
//!
//! - [`config`]: the TOML file model and its validation into typed [`config::Settings`].
//! - [`route`]: which upstream a request goes to and the target it gets there.
//! - [`headers`]: hop-by-hop fields, the upgrade pair, `X-Forwarded-*` (pure).
//! - [`error`]: why a request failed, whose fault it was, which status it gets.
//! - [`daemon`]: listeners, accept loops, the connection limit, the run/drain cycle.
//! - [`proxy`]: one client connection: hyper on both legs, forwarding, upgrades.
//! - [`splice`]: the byte relay of an upgraded session.
//! - [`shutdown`]: Running → Draining → Closing, and waiting for every task.
//! - [`signals`]: Unix signals mapped to daemon [`signals::Action`]s.
//! - [`metrics`]: counters and live sessions, rendered for `/metrics` and `/sessions`.
//! - [`service`]: systemd notifications (READY, STOPPING, STATUS, WATCHDOG) and health.
//! - [`tap`]: the capture point: `Tee` under hyper and a leg's `Tap` (probe, start, close).
//! - [`recorder`]: capture events, the bounded queue and the writer thread.
//! - [`files`]: capture files on disk: names, `.part`, rotation, retention, write errors.
//! - [`writer`]: events → packets → pcapng sections, replays, frame-boundary rotation.
//! - [`packet`]: TCP/IP synthesis: handshake, segments, ACKs, FIN, RST, replays (pure).
//! - [`pcapng`]: section header, interfaces and packet blocks over any `Write` (pure).
//! - [`wsframe`]: WebSocket frame boundaries in a byte stream (pure).
//! - [`deflate`]: permessage-deflate windows and the messages that restore them (pure).
//!
//! And back, from any capture file to sessions and messages, for `wstap sessions`,
//! `replay` and `mock` ([`replay`] has its own map):
//!
//! ```text
//! replay::capfile ─▶ replay::dissect ─▶ replay::reassembly ─▶ replay::session ─▶ replay::player
//! ```
#![forbid(unsafe_code)]

pub mod capture;
pub mod config;
pub mod dir;
pub mod proxy;
pub mod replay;
pub mod service;
pub mod sync;
pub mod wire;

pub use config::Settings;
pub use service::daemon::Daemon;
pub use service::signals::Action;
