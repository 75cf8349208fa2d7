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
//! - [`config`]: the TOML file model and its validation into typed [`config::Settings`].
//! - [`route`]: which upstream a request goes to and the target it gets there.
//! - [`headers`]: hop-by-hop fields, the upgrade pair, `X-Forwarded-*` (pure).
//! - [`error`]: why a request failed, whose fault it was, which status it gets.
//! - [`daemon`]: listeners, accept loops, the connection limit, the run/drain cycle.
//! - [`proxy`]: one client connection: hyper on both legs, forwarding, upgrades.
//! - [`splice`]: the byte relay of an upgraded session.
//! - [`shutdown`]: Running → Draining → Closing, and waiting for every task.
//! - [`signals`]: Unix signals mapped to daemon [`signals::Action`]s.
#![forbid(unsafe_code)]

pub mod config;
pub mod daemon;
pub mod deflate;
pub mod error;
pub mod files;
pub mod headers;
pub mod packet;
pub mod pcapng;
pub mod proxy;
pub mod recorder;
pub mod route;
pub mod shutdown;
pub mod signals;
pub mod splice;
pub mod tap;
pub mod writer;
pub mod wsframe;

pub use config::Settings;
pub use daemon::Daemon;
pub use signals::Action;
