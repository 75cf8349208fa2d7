//! Talking to systemd (`Type=notify`) via sd-notify: READY once every listener is bound,
//! STOPPING when the drain begins, STATUS lines, and WATCHDOG pings at half of
//! `WATCHDOG_USEC`, sent only while the accept loops and the capture writer are both
//! alive (a stuck writer stops the pings, so systemd restarts the service). Without
//! `NOTIFY_SOCKET` every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// Sends notifications to the service manager, if there is one.
#[derive(Debug, Clone, Copy)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    /// From the environment: enabled when `NOTIFY_SOCKET` is set.
    pub fn from_env() -> Notifier {
        Notifier { enabled: std::env::var_os("NOTIFY_SOCKET").is_some() }
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(false, states) {
            debug!(error = %e, "sd_notify failed");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// RELOADING=1 with the monotonic timestamp newer systemd wants for `Type=notify-reload`.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now, NotifyState::Status("reloading the config")]),
            Err(_) => self.send(&[NotifyState::Reloading, NotifyState::Status("reloading the config")]),
        }
    }

    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// How often to ping: half of `WATCHDOG_USEC`, when systemd asked for pings. As
    /// `sd_watchdog_enabled(3)`: `WATCHDOG_PID`, if set, must be this process (sd-notify's
    /// helper also requires it to be set, which libsystemd does not).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        let var = |name| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        let usec = var("WATCHDOG_USEC").filter(|u| *u > 0)?;
        let ours = var("WATCHDOG_PID").is_none_or(|pid| pid == u64::from(std::process::id()));
        (self.enabled && ours).then(|| Duration::from_micros(usec / 2))
    }
}

/// Whether the daemon is well enough to ping the watchdog: every accept loop still runs,
/// and the capture writer (if any) went round its loop recently. It goes round at least
/// every flush interval, so a writer silent for three of them is stuck.
pub fn healthy(accepting: bool, writer_idle: Option<Duration>, flush_interval: Duration) -> bool {
    accepting && writer_idle.is_none_or(|idle| idle <= flush_interval * 3)
}

/// Logs a change of health once, not at every tick.
pub fn report_health(was: bool, now: bool) {
    match (was, now) {
        (true, false) => warn!("unhealthy (an accept loop ended or the capture writer is stuck): watchdog pings stop"),
        (false, true) => warn!("healthy again: watchdog pings resume"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_writer_or_a_dead_accept_loop_stops_the_pings() {
        let flush = Duration::from_secs(1);
        assert!(healthy(true, None, flush), "no capture");
        assert!(healthy(true, Some(Duration::from_millis(1500)), flush));
        assert!(!healthy(true, Some(Duration::from_secs(4)), flush), "writer stuck");
        assert!(!healthy(false, Some(Duration::ZERO), flush), "accept loop gone");
    }
}
