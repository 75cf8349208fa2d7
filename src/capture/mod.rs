//! Capture: the tee under each socket, the event queue, the writer thread and its files.

pub mod chunk;
pub mod event;
pub mod files;
pub mod leg;
pub mod recorder;
pub mod sink;
pub mod stats;
pub mod tap;
pub mod tee;
pub mod writer;
