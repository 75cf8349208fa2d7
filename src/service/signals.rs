//! Unix signals, mapped to one enum of daemon actions. A plain thread owns the
//! signal-hook iterator and forwards actions over a channel, so the daemon (and tests,
//! which send actions directly) never touch signal handling.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use tokio::sync::mpsc;

/// What the operator asked the daemon to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SIGTERM / SIGINT: drain and exit. A second one cuts the grace period short.
    Shutdown,
    /// SIGHUP: re-read the config.
    Reload,
    /// SIGUSR1: rotate capture files now.
    Rotate,
}

impl Action {
    fn from_signal(sig: i32) -> Option<Action> {
        match sig {
            SIGTERM | SIGINT => Some(Action::Shutdown),
            SIGHUP => Some(Action::Reload),
            SIGUSR1 => Some(Action::Rotate),
            _ => None,
        }
    }
}

/// Installs the handlers and returns the stream of actions they produce.
pub fn listen() -> std::io::Result<mpsc::Receiver<Action>> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    let (tx, rx) = mpsc::channel(8);
    std::thread::Builder::new().name("wstap-signals".into()).spawn(move || {
        for action in signals.forever().filter_map(Action::from_signal) {
            if tx.blocking_send(action).is_err() {
                break;
            }
        }
    })?;
    Ok(rx)
}
