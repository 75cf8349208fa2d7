//! Capture: the tee under each socket, the event queue, the writer thread and its files.

pub mod files;
pub mod recorder;
pub mod tap;
pub mod writer;
