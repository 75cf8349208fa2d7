//! The proxy threads' side of capture: what crosses each socket, turned into events on
//! the queue without ever holding up the traffic. Nothing here imports the writer's side.
//!
//! - `tee`: [`Tee`], the stream wrapper under hyper: reports reads, writes, ends, resets.
//! - `tap`: [`Tap`], a leg's capture state, and the proxy's API to it (begin, forgo,
//!   the close reason); `probe`: what a probing tap keeps of a connection that may start
//!   a session.
//! - `track`: a recorded session direction's frames, and drops that never cut one.
//! - `chunk`: what crossed a socket, and the slab its copies are cut from.

pub(crate) mod chunk;
mod probe;
mod requests;
pub(crate) mod tap;
pub(crate) mod tee;
pub(crate) mod track;

pub use tap::{Decision, Layer, Mark, Start, Tap};
pub use tee::Tee;
