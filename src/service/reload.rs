//! SIGHUP: the config is read again and applied to what comes next. New listen addresses
//! are bound first, so a failure changes nothing; then new connections get the new
//! routes, limits and capture settings (the capture writer takes its own from the next
//! file), and removed addresses stop listening. Live connections and sessions keep the
//! settings they started with and are never disturbed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tracing::{info, warn};

use crate::capture::{Capture, Recorder};
use crate::config::Settings;
use crate::proxy::context::ProxyContext;
use crate::proxy::shutdown::Coordinator;
use crate::proxy::tls::KeyLogFile;
use crate::service::error::DaemonError;
use crate::service::listeners;
use crate::service::live::{self, LiveListener};
use crate::service::shared::Shared;
use crate::sync::lock;

/// Reads the config at `source` again and applies it; returns the new settings. On an
/// error nothing has changed.
pub(crate) async fn reload(
    source: &Path,
    shared: &Arc<Shared>,
    capture: &mut Option<Capture>,
    coordinator: &Coordinator,
) -> Result<Arc<Settings>, DaemonError> {
    let new = Arc::new(Settings::load(source)?);
    let current: Vec<SocketAddr> = lock(&shared.listeners).iter().map(|l| l.configured).collect();
    let mut added = Vec::new();
    for addr in new.listen.iter().filter(|a| !current.contains(a)) {
        added.push((*addr, listeners::bind(*addr, "listen", &new.source).await?));
    }
    let moved = |l: &LiveListener| new.live.as_ref().is_none_or(|n| n.listen != l.configured);
    let live_socket = match lock(&shared.live).as_ref() {
        Some(current) if !moved(current) => None,
        _ => live::bind(&new)?,
    };
    let keylog = open_keylog(&new)?;
    let recorder = reconfigure_capture(&new, shared, capture)?;
    let workers = shared.ctx().settings.workers;
    if new.workers != workers {
        warn!(workers, configured = new.workers, "`workers` takes effect at the next restart");
    }
    shared.set_ctx(Arc::new(ProxyContext::new(new.clone(), recorder, shared.metrics.traffic.clone(), keylog)));
    for (configured, l) in added {
        listeners::listen(shared, configured, l, coordinator)?;
    }
    let current = lock(&shared.live).take();
    let hub = capture.as_ref().map(Capture::hub);
    *lock(&shared.live) = live::apply(current, &new, live_socket, hub, &shared.metrics);
    lock(&shared.listeners).retain(|l| {
        let keep = new.listen.contains(&l.configured);
        if !keep {
            l.task.abort();
            info!(addr = %l.bound, "stopped listening (removed from the config)");
        }
        keep
    });
    Ok(new)
}

/// The key log file the settings name (`capture.tls_keylog`), opened for appending.
pub(crate) fn open_keylog(settings: &Settings) -> Result<Option<Arc<KeyLogFile>>, DaemonError> {
    let Some(path) = &settings.capture.tls_keylog else { return Ok(None) };
    let file = KeyLogFile::open(path).map_err(|error| DaemonError::KeyLog {
        file: settings.source.clone(),
        path: path.clone(),
        error,
    })?;
    Ok(Some(file))
}

/// Hands the new capture settings to the writer (starting it if capture was off); returns
/// where new connections send their capture events, if anywhere.
fn reconfigure_capture(
    new: &Settings,
    shared: &Shared,
    capture: &mut Option<Capture>,
) -> Result<Option<Recorder>, DaemonError> {
    Ok(match (new.capture.on(), capture.as_ref()) {
        (false, _) => None,
        (true, Some(c)) => {
            c.reconfigure(new.capture.clone());
            Some(c.recorder().clone())
        }
        (true, None) => {
            let c = Capture::start(new.capture.clone()).map_err(DaemonError::CaptureWriter)?;
            *lock(&shared.writer) = Some(c.heartbeat());
            let r = c.recorder().clone();
            *capture = Some(c);
            Some(r)
        }
    })
}
