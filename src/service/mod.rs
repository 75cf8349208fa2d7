//! The service around the proxy: the daemon's run and drain, and everything an operator
//! talks to it through.
//!
//! - [`daemon`]: bind, run (react to actions), drain; [`error`]: why it could not.
//! - [`shared`]: what its tasks share, and the health rule.
//! - [`listeners`]: bound sockets and accept loops, the connection limit; [`accepting`]:
//!   an accept that backs off when it fails.
//! - [`reload`]: SIGHUP, applied to what comes next.
//! - [`live`]: the live capture stream's listener and its subscribers' sockets.
//! - [`signals`]: Unix signals → [`signals::Action`]s.
//! - [`systemd`]: READY, STOPPING, STATUS and WATCHDOG.
//! - [`admin`]: `/metrics`, `/sessions`, `/healthz`; [`metrics`]: their rendering.
//! - [`runtime`]: the event loop and the log output.

pub mod accepting;
pub mod admin;
pub mod daemon;
pub mod error;
pub mod listeners;
pub mod live;
pub mod metrics;
pub mod reload;
pub mod runtime;
pub mod shared;
pub mod signals;
pub mod systemd;
