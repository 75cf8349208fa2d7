//! The service: the daemon's run and drain, signals, systemd, metrics.

pub mod daemon;
pub mod metrics;
pub mod signals;
pub mod systemd;
