//! The daemon: binds the listeners, accepts client connections within the connection
//! limit, hands each to [`crate::proxy`], and reacts to operator [`Action`]s until a
//! shutdown, which it runs as a drain bounded by `shutdown.grace`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{error, info, info_span, warn, Instrument};

use crate::capture::recorder::{Capture, Heartbeat};
use crate::config::{CaptureMode, Settings};
use crate::dir::Leg;
use crate::proxy::conn::{self as proxy, Context};
use crate::proxy::shutdown::{Coordinator, Phase, Shutdown};
use crate::service::metrics::Metrics;
use crate::service::signals::Action;
use crate::service::systemd::{self as service, Notifier};

/// Sent, raw, to a connection over `limits.max_connections`; then it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
/// How long a refused client gets to take its 503 before the socket closes.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Longest pause after a failed `accept` (e.g. out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

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

/// What every accept loop shares.
struct Shared {
    /// Swapped on reload: new connections take the current one, live ones keep theirs.
    ctx: RwLock<Arc<Context>>,
    limit: Arc<Semaphore>,
    /// The permits `limit` stands for (`limits.max_connections`).
    max_connections: AtomicUsize,
    next_id: AtomicU64,
    /// The capture writer's heartbeat, while there is one.
    writer: Mutex<Option<Heartbeat>>,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn ctx(&self) -> Arc<Context> {
        self.ctx.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn open_connections(&self) -> usize {
        self.max_connections.load(Relaxed).saturating_sub(self.limit.available_permits())
    }
}

/// A bound listener and its accept loop.
struct Listening {
    /// As written in the config (`127.0.0.1:0` stays that, whatever port it got).
    configured: SocketAddr,
    bound: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

type Listeners = Arc<Mutex<Vec<Listening>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Daemon {
    /// Binds every `listen` address. Port 0 binds a free port (see [`Daemon::local_addrs`]).
    pub async fn bind(settings: Settings) -> anyhow::Result<Daemon> {
        let mut listeners = Vec::with_capacity(settings.listen.len());
        for addr in &settings.listen {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (key `listen` in {})", settings.source.display()))?;
            listeners.push(l);
        }
        let admin = match settings.admin {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} (key `admin.listen` in {})", settings.source.display())
            })?),
            None => None,
        };
        Ok(Daemon {
            settings: Arc::new(settings),
            listeners,
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
    pub async fn run(self, mut actions: mpsc::Receiver<Action>) -> anyhow::Result<()> {
        let coordinator = Coordinator::default();
        let mut capture = match self.settings.capture.mode {
            CaptureMode::Off => None,
            _ => Some(Capture::start(self.settings.capture.clone()).context("cannot start the capture writer")?),
        };
        let shared = Arc::new(Shared {
            limit: Arc::new(Semaphore::new(self.settings.limits.max_connections)),
            max_connections: AtomicUsize::new(self.settings.limits.max_connections),
            ctx: RwLock::new(Arc::new(Context {
                settings: self.settings.clone(),
                capture: capture.as_ref().map(|c| c.recorder().clone()),
                traffic: self.metrics.traffic.clone(),
            })),
            next_id: AtomicU64::new(1),
            metrics: self.metrics.clone(),
            writer: Mutex::new(capture.as_ref().map(Capture::heartbeat)),
        });
        let listeners: Listeners = Arc::new(Mutex::new(Vec::new()));
        for (configured, listener) in self.settings.listen.iter().zip(self.listeners) {
            listen(&listeners, *configured, listener, &shared, &coordinator)?;
        }
        let notifier = Notifier::from_env();
        self.listening.send_replace(lock(&listeners).iter().map(|l| l.bound).collect());
        notifier.ready(&format!("listening on {}", bound_list(&listeners)));
        let pulse = tokio::spawn(pulse(notifier, listeners.clone(), shared.clone()));
        let admin = self.admin.map(|l| tokio::spawn(admin_loop(l, listeners.clone(), shared.clone())));
        let mut settings = self.settings.clone();
        loop {
            match actions.recv().await {
                Some(Action::Shutdown) | None => break,
                Some(Action::Reload) => {
                    notifier.reloading();
                    let result = reload(&settings.source, &shared, &listeners, &mut capture, &coordinator).await;
                    self.listening.send_replace(lock(&listeners).iter().map(|l| l.bound).collect());
                    match result {
                        Ok(new) => {
                            self.metrics.reloads_ok.fetch_add(1, Relaxed);
                            info!(config = %new.source.display(), listening = %bound_list(&listeners), "config reloaded");
                            notifier.ready(&format!("reloaded; listening on {}", bound_list(&listeners)));
                            settings = new;
                        }
                        Err(e) => {
                            self.metrics.reloads_failed.fetch_add(1, Relaxed);
                            error!(error = format!("{e:#}"), "reload failed; still running on the previous config");
                            notifier.ready(&format!("reload failed, still running on the previous config: {e:#}"));
                        }
                    }
                }
                Some(Action::Rotate) => match &capture {
                    Some(c) => {
                        info!("SIGUSR1: rotating capture files");
                        c.rotate();
                    }
                    None => info!("SIGUSR1: capture is off; nothing to rotate"),
                },
            }
        }
        let accepting: Vec<_> = lock(&listeners).drain(..).map(|l| l.task).collect();
        let grace = settings.shutdown.grace;
        info!(grace = %humantime::format_duration(grace), live = coordinator.live(), "draining");
        pulse.abort();
        if let Some(admin) = admin {
            admin.abort();
        }
        let open = shared.open_connections();
        notifier.stopping(&format!("draining {open} connections (grace {})", humantime::format_duration(grace)));
        let second_signal = async {
            while let Some(action) = actions.recv().await {
                if action == Action::Shutdown {
                    info!("second shutdown signal: cutting the grace period short");
                    return;
                }
            }
            std::future::pending().await
        };
        coordinator.start_drain();
        for task in accepting {
            let _ = task.await;
        }
        // Every listener is closed: from here on, connects are refused.
        self.state.send_replace(State::Draining);
        let drained = coordinator.drain(grace, second_signal).await;
        if drained.cut > 0 {
            warn!(
                cut = drained.cut,
                stuck = drained.stuck,
                "closed connections still open at the end of the grace period"
            );
        }
        // The capture writer stops last: every session's final packets are queued by now.
        // It flushes, syncs and renames every file (a blocking join, at the very end).
        if let Some(c) = capture.take() {
            c.finish();
        }
        info!("stopped");
        self.state.send_replace(State::Stopped);
        Ok(())
    }
}

/// While serving: STATUS lines and, when systemd asked for them, WATCHDOG pings, sent
/// only while every accept loop runs and the capture writer is not stuck.
async fn pulse(notifier: Notifier, listeners: Listeners, shared: Arc<Shared>) {
    let watchdog = notifier.watchdog_interval();
    let mut tick = tokio::time::interval(watchdog.unwrap_or(STATUS_EVERY).min(STATUS_EVERY));
    let mut was_healthy = true;
    loop {
        tick.tick().await;
        let healthy = healthy(&listeners, &shared);
        service::report_health(was_healthy, healthy);
        was_healthy = healthy;
        if healthy && watchdog.is_some() {
            notifier.watchdog();
        }
        let (open, traffic) = (shared.open_connections(), &shared.metrics.traffic);
        // In: what wstap read on either leg; out: what it wrote.
        let total = |read: bool| -> u64 {
            Leg::BOTH
                .into_iter()
                .map(|leg| traffic.bytes(leg, if read { leg.inbound() } else { leg.inbound().reverse() }))
                .sum()
        };
        notifier.status(&format!(
            "{open} connections, {} WebSocket sessions; {} bytes in, {} bytes out{}",
            traffic.sessions_active(),
            total(true),
            total(false),
            if healthy { "" } else { "; UNHEALTHY (see the log)" }
        ));
    }
}

/// Every accept loop runs and the capture writer is not stuck (the watchdog's rule, and
/// `/healthz`'s).
fn healthy(listeners: &Listeners, shared: &Shared) -> bool {
    let alive = lock(listeners).iter().all(|l| !l.task.is_finished());
    let writer_idle = lock(&shared.writer).as_ref().map(Heartbeat::idle);
    service::healthy(alive, writer_idle, shared.ctx().settings.capture.flush_interval)
}

/// Serves the admin endpoints: `/metrics` (Prometheus text), `/sessions` (JSON),
/// `/healthz` (200 or 503). GET only; one small response per request.
async fn admin_loop(listener: TcpListener, listeners: Listeners, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (listeners, shared) = (listeners.clone(), shared.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let response = admin_response(req.method(), req.uri().path(), &listeners, &shared);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn admin_response(
    method: &hyper::Method,
    path: &str,
    listeners: &Listeners,
    shared: &Shared,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, content_type, body) = match (method, path) {
        (&hyper::Method::GET, "/metrics") => {
            let ctx = shared.ctx();
            let body = shared.metrics.render(ctx.capture.as_ref().map(|r| r.stats()), healthy(listeners, shared));
            (200, "text/plain; version=0.0.4; charset=utf-8", body)
        }
        (&hyper::Method::GET, "/sessions") => (200, "application/json", shared.metrics.sessions_json()),
        (&hyper::Method::GET, "/healthz") => match healthy(listeners, shared) {
            true => (200, "text/plain", "ok\n".to_owned()),
            false => (503, "text/plain", "unhealthy: an accept loop ended or the capture writer is stuck\n".to_owned()),
        },
        (&hyper::Method::GET, _) => (404, "text/plain", "not found: try /metrics, /sessions or /healthz\n".to_owned()),
        _ => (405, "text/plain", "GET only\n".to_owned()),
    };
    let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}

/// Starts accepting on a bound listener.
fn listen(
    listeners: &Listeners,
    configured: SocketAddr,
    listener: TcpListener,
    shared: &Arc<Shared>,
    coordinator: &Coordinator,
) -> anyhow::Result<()> {
    let bound = listener.local_addr()?;
    info!(addr = %bound, "listening");
    let task = tokio::spawn(accept_loop(listener, shared.clone(), coordinator.handle()));
    lock(listeners).push(Listening { configured, bound, task });
    Ok(())
}

fn bound_list(listeners: &Listeners) -> String {
    lock(listeners).iter().map(|l| l.bound.to_string()).collect::<Vec<_>>().join(", ")
}

/// The event loop for `workers` threads (0: one per CPU, or `TOKIO_WORKER_THREADS`).
/// With one, every task runs on the calling thread (tokio's current-thread scheduler):
/// no task is ever handed to another thread and woken there, which on a small or busy
/// machine is the fastest way to run; it is what nginx's `worker_processes 1` does.
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    use tokio::runtime::Builder;
    match workers {
        1 => Builder::new_current_thread().enable_all().build(),
        0 => Builder::new_multi_thread().enable_all().build(),
        n => Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    }
}

/// SIGHUP: re-reads the config and applies it for what comes next. New listen addresses
/// are bound first, so a failure changes nothing; then new connections get the new
/// routes, limits and capture settings (the capture writer takes its from the next
/// file), and removed addresses stop listening. Live connections and sessions keep the
/// settings they started with and are never disturbed.
async fn reload(
    source: &std::path::Path,
    shared: &Arc<Shared>,
    listeners: &Listeners,
    capture: &mut Option<Capture>,
    coordinator: &Coordinator,
) -> anyhow::Result<Arc<Settings>> {
    let new = Arc::new(Settings::load(source)?);
    let current: Vec<SocketAddr> = lock(listeners).iter().map(|l| l.configured).collect();
    let mut added = Vec::new();
    for addr in new.listen.iter().filter(|a| !current.contains(a)) {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (key `listen` in {})", new.source.display()))?;
        added.push((*addr, l));
    }
    let recorder = match (new.capture.mode, capture.as_ref()) {
        (CaptureMode::Off, _) => None,
        (_, Some(c)) => {
            c.reconfigure(new.capture.clone());
            Some(c.recorder().clone())
        }
        (_, None) => {
            let c = Capture::start(new.capture.clone()).context("cannot start the capture writer")?;
            *lock(&shared.writer) = Some(c.heartbeat());
            let r = c.recorder().clone();
            *capture = Some(c);
            Some(r)
        }
    };
    let traffic = shared.metrics.traffic.clone();
    let workers = shared.ctx().settings.workers;
    if new.workers != workers {
        warn!(workers, configured = new.workers, "`workers` takes effect at the next restart");
    }
    *shared.ctx.write().unwrap_or_else(|p| p.into_inner()) =
        Arc::new(Context { settings: new.clone(), capture: recorder, traffic });
    let (old_max, new_max) =
        (shared.max_connections.swap(new.limits.max_connections, Relaxed), new.limits.max_connections);
    if new_max > old_max {
        shared.limit.add_permits(new_max - old_max);
    } else {
        // Permits held by live connections come back and are then forgotten too.
        shared.limit.forget_permits(old_max - new_max);
    }
    for (configured, l) in added {
        listen(listeners, configured, l, shared, coordinator)?;
    }
    lock(listeners).retain(|l| {
        let keep = new.listen.contains(&l.configured);
        if !keep {
            l.task.abort();
            info!(addr = %l.bound, "stopped listening (removed from the config)");
        }
        keep
    });
    Ok(new)
}

/// How often STATUS is refreshed when no watchdog asks for more.
const STATUS_EVERY: Duration = Duration::from_secs(5);

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut shutdown: Shutdown) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            () = shutdown.reached(Phase::Draining) => return,
            r = listener.accept() => r,
        };
        let (stream, client) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                warn!(error = %e, backoff = ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(5);
        let _ = stream.set_nodelay(true);
        let id = shared.next_id.fetch_add(1, Relaxed);
        let span = info_span!("conn", id, %client);
        match shared.limit.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(proxy::serve(shared.ctx(), id, stream, shutdown.clone(), permit).instrument(span));
            }
            Err(_) => {
                tokio::spawn(refuse(stream).instrument(span));
            }
        }
    }
}

/// Answers `503` to a connection over the limit and closes it. The request is drained
/// briefly so the close does not turn into a reset that would eat the answer.
async fn refuse(mut stream: TcpStream) {
    warn!(side = "downstream", status = 503, "connection limit reached; refused");
    let linger = async {
        stream.write_all(REFUSAL).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
}

/// Logs to stderr via tracing: level from `RUST_LOG` if set, else `level` (the config's
/// `log.level`); no ANSI colour unless stderr is a terminal.
pub fn init_logging(level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
