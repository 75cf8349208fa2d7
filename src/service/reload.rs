//! SIGHUP: the config is read again (off the action loop, within [`READ_TIMEOUT`]) and
//! applied to what comes next. New listen addresses are bound first, so a failure changes
//! nothing; then new connections get the new routes, limits and capture settings (the
//! capture writer takes its own from the next file), and removed addresses stop listening. Live connections and sessions keep the
//! settings they started with and are never disturbed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
use crate::ship::Shipper;
use crate::sync::lock;

/// How long reading a reload's files may take: the config, the TLS files it names, the
/// system's roots and the key log. A FIFO or a hung mount in place of one fails the
/// reload after this instead of holding it.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What a reload read from the file system: the new settings and the key log they name,
/// opened.
pub(crate) struct Read {
    settings: Settings,
    keylog: Option<Arc<KeyLogFile>>,
}

/// Reads the config at `source` and opens the key log it names, on a thread of its own,
/// for at most [`READ_TIMEOUT`]: file system calls can block (opening a FIFO, a hung
/// mount), and the daemon's action loop must go on hearing signals meanwhile. A plain
/// thread, not `spawn_blocking`: the runtime waits for its blocking tasks when it shuts
/// down, and a thread stuck for good must not hold up the exit.
pub(crate) async fn read(source: &Path) -> Result<Read, DaemonError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let path = source.to_owned();
    let work = move || {
        let read = Settings::load(&path).map_err(DaemonError::from).and_then(|settings| {
            let keylog = open_keylog(&settings)?;
            Ok(Read { settings, keylog })
        });
        let _ = tx.send(read);
    };
    std::thread::Builder::new().name("wstap-reload".into()).spawn(work).map_err(DaemonError::ReadThread)?;
    let timed_out = || DaemonError::ReadTimeout { file: PathBuf::from(source), limit: READ_TIMEOUT };
    match tokio::time::timeout(READ_TIMEOUT, rx).await {
        Ok(Ok(read)) => read,
        // The thread panicked (its sender dropped), or is still stuck: it stays so alone.
        Ok(Err(_)) | Err(_) => Err(timed_out()),
    }
}

/// Applies what [`read`] read; returns the new settings. On an error nothing has changed.
pub(crate) async fn apply(
    read: Read,
    shared: &Arc<Shared>,
    capture: &mut Option<Capture>,
    shipper: &Shipper,
    coordinator: &Coordinator,
) -> Result<Arc<Settings>, DaemonError> {
    let Read { settings, keylog } = read;
    check_upload(&settings)?;
    let new = Arc::new(settings);
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
    let recorder = reconfigure_capture(&new, shared, capture, shipper)?;
    shipper.reconfigure(&new.capture);
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

/// Refuses `[capture.upload]` settings the store's client cannot be built from.
pub(crate) fn check_upload(settings: &Settings) -> Result<(), DaemonError> {
    crate::ship::check(&settings.capture).map_err(|error| DaemonError::Upload { file: settings.source.clone(), error })
}

/// The key log file the settings name (`capture.tls_keylog`), opened for appending. It
/// cannot block: see [`KeyLogFile::open`].
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
    shipper: &Shipper,
) -> Result<Option<Recorder>, DaemonError> {
    Ok(match (new.capture.on(), capture.as_ref()) {
        (false, _) => None,
        (true, Some(c)) => {
            c.reconfigure(new.capture.clone());
            Some(c.recorder().clone())
        }
        (true, None) => {
            let c = Capture::start_shipping(new.capture.clone(), Some(shipper.outbox()))
                .map_err(DaemonError::CaptureWriter)?;
            *lock(&shared.writer) = Some(c.heartbeat());
            let r = c.recorder().clone();
            *capture = Some(c);
            Some(r)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_read_that_hangs_fails_after_its_time_and_names_the_file() {
        let dir = std::env::temp_dir().join(format!("wstap-reload-read-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A FIFO no one writes to: opening it to read blocks for good.
        let config = dir.join("wstap.toml");
        assert!(std::process::Command::new("mkfifo").arg(&config).status().unwrap().success());
        let Err(e) = read(&config).await else { panic!("a FIFO's read cannot succeed") };
        assert!(matches!(e, DaemonError::ReadTimeout { .. }), "{e}");
        let said = e.to_string();
        assert!(said.contains(config.to_str().unwrap()) && said.contains("took longer than 10s"), "{said}");
        // The thread stays stuck alone; removing the FIFO keeps a later one from finding it.
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
