//! The live stream's listener (`[live]`): PCAP-over-IP subscribers (`tshark -i
//! TCP@host:port`, Wireshark through `wstap extcap`, Arkime) connect, are checked against
//! the access rule (loopback, or a network in `live.allow`) and `live.max_clients`, and
//! join the capture's [`Hub`]; each then has a task writing its queue to its socket. A
//! subscriber that falls more than `live.buffer` behind is disconnected with a log line;
//! one that closes leaves. Nothing here ever waits on the capture writer, nor it on us.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::capture::live::{Hub, Next, Subscriber};
use crate::config::{LiveSettings, Settings};
use crate::service::accepting::Accepting;
use crate::service::error::DaemonError;
use crate::service::metrics::Metrics;

/// The live listener, its settings (a reload may change them under it) and its loop.
pub(crate) struct LiveListener {
    /// As written in the config.
    pub(crate) configured: SocketAddr,
    /// Where it listens (the port a `:0` got).
    pub(crate) bound: SocketAddr,
    settings: watch::Sender<LiveSettings>,
    task: tokio::task::JoinHandle<()>,
    /// Its subscribers' tasks, for the end.
    serving: Serving,
}

type Serving = Arc<tokio::sync::Mutex<JoinSet<()>>>;

impl Drop for LiveListener {
    fn drop(&mut self) {
        // Its subscribers see the sender gone and leave.
        self.task.abort();
    }
}

/// How long the end waits for subscribers to take what is queued for them.
const LAST_WORDS: Duration = Duration::from_secs(2);

impl LiveListener {
    /// Stops listening; each subscriber gets what is queued for it (within a bound), and
    /// its connection is closed.
    pub(crate) async fn close(self) {
        let serving = self.serving.clone();
        drop(self);
        let mut serving = serving.lock().await;
        let all = async { while serving.join_next().await.is_some() {} };
        if tokio::time::timeout(LAST_WORDS, all).await.is_err() {
            serving.abort_all();
        }
    }
}

/// Binds the stream `settings` describe (key `live.listen` in `source`'s file).
pub(crate) fn bind(settings: &Settings) -> Result<Option<TcpListener>, DaemonError> {
    let Some(live) = &settings.live else { return Ok(None) };
    let bind = || {
        let l = std::net::TcpListener::bind(live.listen)?;
        l.set_nonblocking(true)?;
        TcpListener::from_std(l)
    };
    let file = settings.source.clone();
    let listener =
        bind().map_err(|error| DaemonError::Listen { addr: live.listen, key: "live.listen", file, error })?;
    Ok(Some(listener))
}

/// Applies `settings`' `[live]` to the running stream `current`: unchanged address, new
/// settings for the same listener and its subscribers; a new address (bound already, as
/// `bound`), a new listener; none, no stream. Returns the stream now running.
pub(crate) fn apply(
    current: Option<LiveListener>,
    settings: &Settings,
    bound: Option<TcpListener>,
    hub: Option<&Arc<Hub>>,
    metrics: &Arc<Metrics>,
) -> Option<LiveListener> {
    let live = settings.live.clone()?;
    let Some(hub) = hub.filter(|_| settings.capture.on()) else {
        warn!("[live] is set but capture is off (no route records anything): the stream is not served");
        return None;
    };
    if let Some(current) = current.filter(|c| c.configured == live.listen) {
        current.settings.send_replace(live);
        return Some(current);
    }
    let listener = bound?;
    let bound = listener.local_addr().ok()?;
    info!(addr = %bound, format = ?live.format, "live stream: listening");
    if !live.listen.ip().is_loopback() && live.allow.is_empty() {
        warn!(addr = %bound, "live stream: listening beyond loopback, but live.allow is empty: only loopback clients get in");
    }
    let configured = live.listen;
    let (tx, rx) = watch::channel(live);
    let serving = Serving::default();
    let task = tokio::spawn(accept_loop(listener, rx, hub.clone(), metrics.clone(), serving.clone()));
    Some(LiveListener { configured, bound, settings: tx, task, serving })
}

async fn accept_loop(
    listener: TcpListener,
    settings: watch::Receiver<LiveSettings>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    serving: Serving,
) {
    let mut accepting = Accepting::new(listener);
    loop {
        let (socket, client) = accepting.next().await;
        let live = settings.borrow().clone();
        if !live.allows(client.ip()) {
            info!(%client, "live stream: refused: not loopback and not in live.allow");
            metrics.live_refused.fetch_add(1, Relaxed);
            continue;
        }
        if hub.subscribers() >= live.max_clients {
            info!(%client, max_clients = live.max_clients, "live stream: refused: live.max_clients subscribers already");
            metrics.live_refused.fetch_add(1, Relaxed);
            continue;
        }
        let sub = Subscriber::new(live.buffer);
        hub.join(sub.clone());
        metrics.live_joined.fetch_add(1, Relaxed);
        info!(%client, "live stream: subscriber connected");
        let mut serving = serving.lock().await;
        while serving.try_join_next().is_some() {}
        serving.spawn(serve(socket, client, sub, hub.clone(), settings.clone(), metrics.clone()));
    }
}

/// Writes a subscriber's queue to its socket until it leaves, falls behind, or the
/// stream is removed.
async fn serve(
    socket: TcpStream,
    client: SocketAddr,
    sub: Arc<Subscriber>,
    hub: Arc<Hub>,
    mut settings: watch::Receiver<LiveSettings>,
    metrics: Arc<Metrics>,
) {
    let (mut read, mut write) = socket.into_split();
    let mut scratch = [0u8; 64];
    let (mut joined, mut reading) = (false, true);
    let why = loop {
        let next = tokio::select! {
            // What is queued goes out before any ending.
            biased;
            next = sub.next() => next,
            // A subscriber sends nothing; the end of what it sends (`nc … < /dev/null`)
            // is not its leaving: a write that fails is.
            r = read.read(&mut scratch), if reading => match r {
                Ok(0) => { reading = false; continue }
                Ok(_) => continue,
                Err(_) => break "left",
            },
            changed = settings.changed() => match changed {
                Ok(()) => continue,
                Err(_) => break "the stream ended",
            },
        };
        let chunks = match next {
            Next::Bytes(chunks) => chunks,
            Next::Overflowed => break "cut off",
            Next::Closed => break "the stream's format changed (a reload): connect again",
        };
        let mut written = true;
        for chunk in chunks {
            // A subscriber that stops reading must not hold this task in a write forever
            // (cut off there, its stream ends inside a block).
            tokio::select! {
                r = write.write_all(&chunk) => written = r.is_ok(),
                () = sub.cut_off() => break,
            }
            if !written {
                break;
            }
            sub.written(chunk.len());
        }
        if !written {
            break "left";
        }
        if !std::mem::replace(&mut joined, true) {
            // Its first bytes are its section: the headers and every live session.
            info!(%client, "live stream: subscriber joined");
        }
        if sub.is_cut_off() {
            break "cut off";
        }
    };
    sub.leave();
    hub.left();
    metrics.live_gone.fetch_add(1, Relaxed);
    if why == "cut off" {
        metrics.live_cut_off.fetch_add(1, Relaxed);
        let buffer = settings.borrow().buffer;
        warn!(%client, buffer, "live stream: subscriber disconnected: it fell more than live.buffer bytes behind");
    } else {
        info!(%client, why, "live stream: subscriber gone");
    }
    let _ = write.shutdown().await;
}
