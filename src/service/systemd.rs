//! Talking to systemd (`Type=notify`) via sd-notify: READY once every listener is bound,
//! STOPPING when the drain begins, STATUS lines, and WATCHDOG pings at half of
//! `WATCHDOG_USEC`, sent only while the accept loops and the capture writer are both
//! alive (a stuck writer stops the pings, so systemd restarts the service). Without
//! `NOTIFY_SOCKET` every call does nothing.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, warn};

use crate::service::shared::Shared;

/// How often STATUS is refreshed when no watchdog asks for more.
const STATUS_EVERY: Duration = Duration::from_secs(5);

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

/// While serving: STATUS lines and, when systemd asked for them, WATCHDOG pings, sent
/// only while every accept loop runs and the capture writer is not stuck.
pub(crate) async fn pulse(notifier: Notifier, shared: Arc<Shared>) {
    let watchdog = notifier.watchdog_interval();
    let mut tick = tokio::time::interval(watchdog.unwrap_or(STATUS_EVERY).min(STATUS_EVERY));
    let mut was_healthy = true;
    loop {
        tick.tick().await;
        let healthy = shared.healthy();
        report_health(was_healthy, healthy);
        was_healthy = healthy;
        if healthy && watchdog.is_some() {
            notifier.watchdog();
        }
        let (open, traffic) = (shared.open_connections(), &shared.metrics.traffic);
        notifier.status(&format!(
            "{open} connections, {} WebSocket sessions; {} bytes in, {} bytes out{}",
            traffic.sessions_active(),
            traffic.bytes_read(),
            traffic.bytes_written(),
            if healthy { "" } else { "; UNHEALTHY (see the log)" }
        ));
    }
}

/// Logs a change of health once, not at every tick.
pub fn report_health(was: bool, now: bool) {
    match (was, now) {
        (true, false) => warn!("unhealthy (an accept loop ended or the capture writer is stuck): watchdog pings stop"),
        (false, true) => warn!("healthy again: watchdog pings resume"),
        _ => {}
    }
}
