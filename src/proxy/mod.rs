//! The proxy: one client connection at a time, HTTP/1.1 and WebSocket, forwarded over an
//! upstream connection it opens itself, and the relay of each upgraded session.
//!
//! - [`context`]: what every connection of one configuration shares.
//! - [`accept`]: an accepted connection's TLS handshake, then HTTP/1.1 or HTTP/2.
//! - [`admission`]: the connection limits, total and per client.
//! - [`conn`]: a client connection served: hyper's server on the (teed) socket, routing,
//!   each request forwarded; [`client`]: the connection's state; [`upstream`]: its
//!   upstream connection (hyper's client on a socket it opened); [`session`]: a
//!   WebSocket session's task.
//! - [`h2`]: HTTP/2 on a client connection (`http2 = true`): each stream answered as an
//!   HTTP/1.1 request, a WebSocket over HTTP/2 bridged to an HTTP/1.1 Upgrade and
//!   written as an HTTP/1.1 connection of its own.
//!   [`as_http1`]: such a stream restated as HTTP/1.1 for its capture.
//! - [`gate`]: the client socket as each request's hyper connection sees it; between
//!   requests the socket is parked outside hyper, holding no buffer.
//! - [`recording`]: the connection's capture as the proxy drives it: its taps, and
//!   what each route records.
//! - [`headers`]: hop-by-hop fields, the upgrade pair, `X-Forwarded-*` (pure).
//! - [`error`]: why a request failed, whose fault it was, its status code (pure).
//! - [`splice`]: the byte relay of an upgraded session, half-close kept.
//! - [`paced`]: the request body deadline (`limits.body_timeout`).
//! - [`path`]: the request path routes see (normalised as nginx's `location` does).
//! - [`policy`]: which sessions of a route are sampled.
//! - [`metered`]: byte counting beside each stream; [`traffic`]: the counters.
//! - [`shutdown`]: the phases a drain goes through, and the handle every task holds.
//! - [`tls`]: the handshake on a listener that terminates TLS.

pub mod accept;
pub mod admission;
pub mod as_http1;
pub mod client;
pub mod conn;
pub mod context;
pub mod error;
pub mod gate;
pub mod h2;
pub mod headers;
pub mod metered;
pub mod paced;
pub mod path;
pub mod policy;
pub mod recording;
pub mod session;
pub mod shutdown;
pub mod splice;
pub mod tls;
pub mod traffic;
pub mod upstream;
