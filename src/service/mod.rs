//! The service: the daemon's run and drain, signals, systemd, metrics.

pub mod admin;
pub mod daemon;
pub mod listeners;
pub mod metrics;
pub mod reload;
pub mod runtime;
pub mod shared;
pub mod signals;
pub mod systemd;
