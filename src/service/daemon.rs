//! The daemon: binds the listeners, serves (the accept loops hand connections to
//! [`crate::proxy`]) and reacts to operator [`Action`]s until a shutdown, which it runs as
//! a drain bounded by `shutdown.grace`: *detect* the signal, *tell* every task, *wait* for
//! them, then finish the capture files.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::capture::Capture;
use crate::config::{keylog, Settings};
use crate::proxy::context::ProxyContext;
use crate::proxy::shutdown::Coordinator;
use crate::service::error::DaemonError;
use crate::service::metrics::Metrics;
use crate::service::shared::Shared;
use crate::service::signals::Action;
use crate::service::systemd::{self, Notifier};
use crate::service::{admin, listeners, live, reload};
use crate::ship::Shipper;
use crate::sync::lock;

/// A daemon with its listeners bound, ready to run.
pub struct Daemon {
    settings: Arc<Settings>,
    listeners: Vec<TcpListener>,
    state: watch::Sender<State>,
    /// The bound addresses, after start and after each reload.
    listening: watch::Sender<Vec<SocketAddr>>,
    /// Serves `/metrics`, `/sessions`, `/healthz` (`admin.listen`).
    admin: Option<TcpListener>,
    metrics: Arc<Metrics>,
}

/// What the daemon is doing, as published to [`Daemon::state`] watchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Listeners are bound and accepting.
    Serving,
    /// Listeners are closed; live requests and sessions are finishing.
    Draining,
    /// Every task has ended or been cut; `run` is returning.
    Stopped,
}

impl Daemon {
    /// Binds every `listen` address. Port 0 binds a free port (see [`Daemon::local_addrs`]).
    pub async fn bind(settings: Settings) -> Result<Daemon, DaemonError> {
        let mut bound = Vec::with_capacity(settings.listen.len());
        for addr in &settings.listen {
            bound.push(listeners::bind(*addr, "listen", &settings.source).await?);
        }
        let admin = match settings.admin {
            Some(addr) => Some(listeners::bind(addr, "admin.listen", &settings.source).await?),
            None => None,
        };
        Ok(Daemon {
            settings: Arc::new(settings),
            listeners: bound,
            state: watch::Sender::new(State::Serving),
            listening: watch::Sender::new(Vec::new()),
            admin,
            metrics: Arc::default(),
        })
    }

    /// Follows the daemon's [`State`] (taken before `run`, which consumes the daemon).
    pub fn state(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    /// Where the admin endpoints are served, if anywhere.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Follows the bound addresses: set when `run` starts, replaced after each reload.
    pub fn listening(&self) -> watch::Receiver<Vec<SocketAddr>> {
        self.listening.subscribe()
    }

    /// The addresses actually bound, in `listen` order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// Serves until a [`Action::Shutdown`] arrives (or `actions` closes), then drains.
    pub async fn run(self, mut actions: mpsc::Receiver<Action>) -> Result<(), DaemonError> {
        let admin = self.admin;
        let mut running = Running::start(self.settings, self.listeners, self.state, self.listening, self.metrics)?;
        let pulse = tokio::spawn(systemd::pulse(running.notifier, running.shared.clone()));
        let admin = admin.map(|l| tokio::spawn(admin::serve(l, running.shared.clone())));
        let mut next = Next::Serve;
        loop {
            next = match next {
                Next::Stop => break,
                Next::Reload => running.reload(&mut actions).await,
                Next::Serve => match actions.recv().await {
                    Some(Action::Shutdown) | None => Next::Stop,
                    Some(Action::Reload) => Next::Reload,
                    Some(Action::Rotate) => {
                        running.rotate();
                        Next::Serve
                    }
                },
            };
        }
        pulse.abort();
        if let Some(admin) = admin {
            admin.abort();
        }
        running.drain(actions).await;
        Ok(())
    }
}

/// What the action loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Waits for the next action.
    Serve,
    /// Reloads (a SIGHUP came while the previous reload was reading its files).
    Reload,
    /// Drains and stops.
    Stop,
}

/// A daemon that serves: what its action loop and its drain work on.
struct Running {
    settings: Arc<Settings>,
    shared: Arc<Shared>,
    capture: Option<Capture>,
    /// Stores finished files and runs `on_finish` for them.
    shipper: Shipper,
    coordinator: Coordinator,
    notifier: Notifier,
    state: watch::Sender<State>,
    listening: watch::Sender<Vec<SocketAddr>>,
}

/// What exposes secrets (`insecure_skip_verify`, TLS keys in captures or a key log) is
/// said out loud each time a config with it is applied.
fn warn_insecure(settings: &Settings) {
    let c = &settings.capture;
    if c.on() && c.tls == crate::config::TlsCapture::Encrypted {
        warn!(
            "capture.tls = \"encrypted\": TLS legs are recorded with their keys; whoever reads the files reads \
             everything on them, credentials included (redaction cannot apply to records)"
        );
    }
    if let Some(path) = &c.tls_keylog {
        warn!(file = %path.display(), "capture.tls_keylog: every TLS connection's keys are written to this file");
        if let Some(shared) = keylog::shared_directory(path) {
            warn!(file = %path.display(), "capture.tls_keylog: {shared}");
        }
    }
    for r in settings.routes.iter().filter(|r| r.tls.as_ref().is_some_and(|t| t.insecure_skip_verify)) {
        warn!(
            route = %r.path_prefix,
            upstream = %r.upstream,
            "insecure_skip_verify: this upstream's certificate is NOT checked; anyone on the way can pose as it"
        );
    }
}

impl Running {
    /// Starts the capture writer and the accept loops, and tells systemd it is ready.
    fn start(
        settings: Arc<Settings>,
        bound: Vec<TcpListener>,
        state: watch::Sender<State>,
        listening: watch::Sender<Vec<SocketAddr>>,
        metrics: Arc<Metrics>,
    ) -> Result<Running, DaemonError> {
        let coordinator = Coordinator::default();
        let keylog = reload::open_keylog(&settings)?;
        reload::check_upload(&settings)?;
        let shipper = Shipper::start(&settings.capture, metrics.shipping.clone()).map_err(DaemonError::ShipThread)?;
        let capture = match settings.capture.on() {
            false => None,
            true => Some(
                Capture::start_shipping(settings.capture.clone(), Some(shipper.outbox()))
                    .map_err(DaemonError::CaptureWriter)?,
            ),
        };
        let ctx = ProxyContext::new(
            settings.clone(),
            capture.as_ref().map(|c| c.recorder().clone()),
            metrics.traffic.clone(),
            keylog,
        );
        let shared = Shared::new(ctx, capture.as_ref().map(Capture::heartbeat), metrics);
        for (configured, listener) in settings.listen.iter().zip(bound) {
            listeners::listen(&shared, *configured, listener, &coordinator)?;
        }
        let live_socket = live::bind(&settings)?;
        *lock(&shared.live) =
            live::apply(None, &settings, live_socket, capture.as_ref().map(Capture::hub), &shared.metrics);
        warn_insecure(&settings);
        let notifier = Notifier::from_env();
        listening.send_replace(shared.bound());
        notifier.ready(&format!("listening on {}", shared.bound_list()));
        Ok(Running { settings, shared, capture, shipper, coordinator, notifier, state, listening })
    }

    /// SIGHUP: applies the config file again, or says why it could not. Its files are read
    /// off this loop, which meanwhile goes on obeying: a shutdown abandons the reload at
    /// once (a FIFO or a hung mount in place of a file cannot keep the daemon from
    /// stopping), and another SIGHUP makes a second reload follow this one.
    async fn reload(&mut self, actions: &mut mpsc::Receiver<Action>) -> Next {
        self.notifier.reloading();
        let source = self.settings.source.clone();
        let read = reload::read(&source);
        tokio::pin!(read);
        let mut next = Next::Serve;
        let read = loop {
            tokio::select! {
                read = &mut read => break read,
                action = actions.recv() => match action {
                    Some(Action::Shutdown) | None => {
                        warn!(config = %source.display(), "shutdown while the config was being read: reload abandoned");
                        return Next::Stop;
                    }
                    Some(Action::Reload) => next = Next::Reload,
                    Some(Action::Rotate) => self.rotate(),
                },
            }
        };
        let result = match read {
            Ok(read) => reload::apply(read, &self.shared, &mut self.capture, &self.shipper, &self.coordinator).await,
            Err(e) => Err(e),
        };
        self.reloaded(result);
        next
    }

    /// Says how a reload went (log, metrics, systemd) and keeps the settings it applied.
    fn reloaded(&mut self, result: Result<Arc<Settings>, DaemonError>) {
        self.listening.send_replace(self.shared.bound());
        let metrics = &self.shared.metrics;
        match result {
            Ok(new) => {
                metrics.reloads_ok.fetch_add(1, Relaxed);
                let listening = self.shared.bound_list();
                info!(config = %new.source.display(), %listening, "config reloaded");
                warn_insecure(&new);
                self.notifier.ready(&format!("reloaded; listening on {listening}"));
                self.settings = new;
            }
            Err(e) => {
                metrics.reloads_failed.fetch_add(1, Relaxed);
                error!(error = %e, "reload failed; still running on the previous config");
                self.notifier.ready(&format!("reload failed, still running on the previous config: {e}"));
            }
        }
    }

    /// SIGUSR1: the capture files rotate.
    fn rotate(&self) {
        match &self.capture {
            Some(c) => {
                info!("SIGUSR1: rotating capture files");
                c.rotate();
            }
            None => info!("SIGUSR1: capture is off; nothing to rotate"),
        }
    }

    /// Stops accepting, lets what is live finish within the grace period (a second
    /// shutdown action cuts it short), closes the rest, then finishes the capture.
    async fn drain(mut self, mut actions: mpsc::Receiver<Action>) {
        let accepting: Vec<_> = lock(&self.shared.listeners).drain(..).map(|l| l.task).collect();
        let grace = self.settings.shutdown.grace;
        info!(grace = %humantime::format_duration(grace), live = self.coordinator.live(), "draining");
        let open = self.shared.open_connections();
        self.notifier.stopping(&format!("draining {open} connections (grace {})", humantime::format_duration(grace)));
        let second_signal = async {
            while let Some(action) = actions.recv().await {
                if action == Action::Shutdown {
                    info!("second shutdown signal: cutting the grace period short");
                    return;
                }
            }
            std::future::pending().await
        };
        self.coordinator.start_drain();
        for task in accepting {
            let _ = task.await;
        }
        // Every listener is closed: from here on, connects are refused.
        self.state.send_replace(State::Draining);
        let drained = self.coordinator.drain(grace, second_signal).await;
        if drained.cut > 0 {
            warn!(
                cut = drained.cut,
                stuck = drained.stuck,
                "closed connections still open at the end of the grace period"
            );
        }
        // The capture writer stops last: every session's final packets are queued by now.
        // It flushes, syncs and renames every file (a blocking join, at the very end).
        if let Some(c) = self.capture.take() {
            c.finish();
        }
        // Then the files it finished last are stored and handed to `on_finish`.
        self.shipper.finish().await;
        // After the capture: subscribers get the sessions' last packets, then the end.
        let live = lock(&self.shared.live).take();
        if let Some(live) = live {
            let addr = live.bound.clone();
            live.close().await;
            info!(%addr, "live stream: closed");
        }
        info!("stopped");
        self.state.send_replace(State::Stopped);
    }
}
