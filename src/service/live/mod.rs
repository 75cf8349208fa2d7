//! The live stream's listener (`[live]`): PCAP-over-IP subscribers (`tshark -i
//! TCP@host:port`, Wireshark through `wstap extcap`, `socat` on the unix socket, Arkime)
//! connect; each is identified (`peer`), checked against the access rules (the address:
//! loopback, or a network in `live.allow`; the user, for a connection from this host:
//! `live.users`) and `live.max_clients`, and joins the capture's [`Hub`]; each then has a
//! task (`serve`) writing its queue to its socket. Refusals are logged with their reason
//! and counted. Nothing here ever waits on the capture writer, nor it on us.

mod peer;
mod serve;
mod socket;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::capture::live::{Hub, Subscriber};
use crate::config::{LiveListen, LiveSettings, Settings, TlsCapture};
use crate::service::accepting::{Accepting, Listener};
use crate::service::metrics::{LiveRefusal, Metrics};
use peer::{Conn, Peer};
use serve::Membership;
pub(crate) use socket::{bind, LiveSocket};

/// The live listener, its settings (a reload may change them under it) and its loop.
pub(crate) struct LiveListener {
    /// As written in the config.
    pub(crate) configured: LiveListen,
    /// Where it listens (the port a `:0` got).
    pub(crate) bound: LiveListen,
    settings: watch::Sender<LiveSettings>,
    task: tokio::task::JoinHandle<()>,
    /// Its subscribers' tasks, for the end.
    serving: Serving,
    /// A unix socket's file, removed when the listener goes.
    _file: Option<socket::SocketFile>,
}

type Serving = Arc<tokio::sync::Mutex<JoinSet<()>>>;

impl Drop for LiveListener {
    fn drop(&mut self) {
        // Its subscribers see the sender gone and leave; a subscriber's task still
        // stuck when the last handle on them goes is aborted, and its slot given back.
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

/// Applies `settings`' `[live]` to the running stream `current`: unchanged address, new
/// settings for the same listener and its subscribers (those they no longer allow are
/// let go); a new address (bound already, as `bound`), a new listener; none, no stream.
/// Returns the stream now running.
pub(crate) fn apply(
    current: Option<LiveListener>,
    settings: &Settings,
    bound: Option<LiveSocket>,
    hub: Option<&Arc<Hub>>,
    metrics: &Arc<Metrics>,
) -> Option<LiveListener> {
    let live = settings.live.clone()?;
    let Some(hub) = hub.filter(|_| settings.capture.on()) else {
        warn!("[live] is set but capture is off (no route records anything): the stream is not served");
        return None;
    };
    if settings.capture.tls == TlsCapture::Encrypted {
        warn!(
            "capture.tls = \"encrypted\" with [live]: every subscriber of the live stream receives the TLS keys, \
             and with them everything on the encrypted legs"
        );
    }
    if let Some(current) = current.filter(|c| c.configured == live.listen) {
        if let (LiveListen::Unix(path), Some(access)) = (&live.listen, live.socket) {
            if let Err(e) = socket::set_access(path, access) {
                warn!(path = %path.display(), error = %e, "live stream: cannot apply live.mode or live.group");
            }
        }
        current.settings.send_replace(live);
        return Some(current);
    }
    let configured = live.listen.clone();
    let (tx, rx) = watch::channel(live);
    let serving = Serving::default();
    let stream = Stream { settings: rx, hub: hub.clone(), metrics: metrics.clone(), serving: serving.clone() };
    let (bound, task, file) = match bound? {
        LiveSocket::Tcp(listener) => {
            let addr = listener.local_addr().ok()?;
            if !addr.ip().is_loopback() && stream.settings.borrow().allow.is_empty() {
                warn!(%addr, "live stream: listening beyond loopback, but live.allow is empty: only this host's users get in");
            }
            (LiveListen::Tcp(addr), tokio::spawn(accept_loop(listener, stream)), None)
        }
        LiveSocket::Unix(listener, file) => {
            (configured.clone(), tokio::spawn(accept_loop(listener, stream)), Some(file))
        }
    };
    info!(addr = %bound, format = ?tx.borrow().format, "live stream: listening");
    Some(LiveListener { configured, bound, settings: tx, task, serving, _file: file })
}

/// What the accept loop hands each subscriber.
struct Stream {
    settings: watch::Receiver<LiveSettings>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    serving: Serving,
}

async fn accept_loop<L: Listener>(listener: L, stream: Stream)
where
    L::Conn: Into<Conn>,
{
    let mut accepting = Accepting::new(listener);
    loop {
        let conn: Conn = accepting.next().await.into();
        let live = stream.settings.borrow().clone();
        let peer = conn.identify(&live).await;
        if let Some(why) = peer.refusal(&live) {
            refused(&peer, why, &live, &stream.metrics);
            continue;
        }
        let Some(slot) = stream.hub.try_join(Subscriber::new(live.buffer), live.max_clients) else {
            refused(&peer, LiveRefusal::MaxClients, &live, &stream.metrics);
            continue;
        };
        let member = Membership::new(slot, stream.metrics.clone());
        info!(client = %peer, "live stream: subscriber connected");
        let mut serving = stream.serving.lock().await;
        while serving.try_join_next().is_some() {}
        serving.spawn(serve::serve(member, peer, conn.split(), stream.settings.clone()));
    }
}

/// Logs and counts a refusal; the connection is closed as it is dropped.
fn refused(peer: &Peer, why: LiveRefusal, live: &LiveSettings, metrics: &Metrics) {
    metrics.count_refused(why);
    let reason = why.label();
    match why {
        LiveRefusal::Address => {
            info!(client = %peer, reason, "live stream: refused: not loopback and not in live.allow")
        }
        LiveRefusal::User => {
            warn!(client = %peer, uid = peer.uid(), reason, "live stream: refused: its user is not in live.users")
        }
        LiveRefusal::Unidentified => {
            warn!(client = %peer, reason, "live stream: refused: no socket of this host's is its, so no user vouches for it")
        }
        LiveRefusal::MaxClients => {
            info!(client = %peer, max_clients = live.max_clients, reason, "live stream: refused: live.max_clients subscribers already")
        }
        LiveRefusal::FirstSection => {}
    }
}
