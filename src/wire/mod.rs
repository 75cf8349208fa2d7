//! Pure codecs shared by capture and replay.

pub mod deflate;
pub mod pcapng;
pub mod tcp;
pub mod wsframe;
