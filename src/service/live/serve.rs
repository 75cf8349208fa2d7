//! One subscriber's task: it writes the subscriber's queue to its socket and watches the
//! socket's read side all the while, so a subscriber that closes (a read gives its end,
//! or an error) is gone at once, even when nothing is being written. It ends when the
//! subscriber leaves, falls behind, cannot take its first section, is no longer allowed
//! by a reload, or the stream ends; its [`Membership`] (and the slot in it) goes with the
//! task however it ends, aborted included.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{info, warn};

use super::peer::{Halves, Peer};
use crate::capture::live::{Next, Slot, Subscriber};
use crate::config::LiveSettings;
use crate::service::metrics::{LiveRefusal, Metrics};

/// A subscriber's slot, counted in the metrics while it is held.
pub(super) struct Membership {
    slot: Slot,
    metrics: Arc<Metrics>,
}

impl Membership {
    pub(super) fn new(slot: Slot, metrics: Arc<Metrics>) -> Membership {
        metrics.live_joined.fetch_add(1, Relaxed);
        Membership { slot, metrics }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.metrics.live_gone.fetch_add(1, Relaxed);
    }
}

/// Why a subscriber's task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// It closed its socket (or shut its sending side), or a write failed.
    Left,
    /// It fell more than `live.buffer` behind.
    CutOff,
    /// Its first section (this many bytes) is more than `live.buffer`.
    SectionTooLarge(usize),
    /// A reload no longer allows it.
    Revoked(LiveRefusal),
    /// The stream ended (the daemon stops, or the listener moved).
    StreamEnded,
    /// The stream's format changed (a reload).
    FormatChanged,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Why::Left => "it left (closed its socket or its sending side, or a write failed)",
            Why::CutOff => "it fell more than live.buffer bytes behind",
            Why::SectionTooLarge(_) => "its first section is more than live.buffer",
            Why::Revoked(_) => "the reloaded config no longer allows it",
            Why::StreamEnded => "the stream ended",
            Why::FormatChanged => "the stream's format changed (a reload): connect again",
        })
    }
}

/// What ends a subscriber other than its queue: its socket's read side, its falling
/// behind, and the settings (a reload that no longer allows it, or the stream's end).
struct Stops {
    read: Box<dyn AsyncRead + Send + Unpin>,
    scratch: [u8; 512],
    sub: Arc<Subscriber>,
    peer: Peer,
    settings: watch::Receiver<LiveSettings>,
    /// The stream ended: what is queued goes out, then the subscriber is let go.
    over: bool,
}

impl Stops {
    /// Resolves when the subscriber must stop at once (cancel-safe).
    async fn any(&mut self) -> Why {
        loop {
            tokio::select! {
                r = self.read.read(&mut self.scratch) => match r {
                    // What a subscriber sends is not read; its end is its leaving.
                    Ok(0) | Err(_) => return Why::Left,
                    Ok(_) => {}
                },
                () = self.sub.cut_off() => return Why::CutOff,
                changed = self.settings.changed(), if !self.over => match changed {
                    Ok(()) => {
                        if let Some(why) = self.peer.refusal(&self.settings.borrow_and_update()) {
                            return Why::Revoked(why);
                        }
                    }
                    Err(_) => {
                        self.over = true;
                        self.sub.close();
                    }
                },
            }
        }
    }
}

/// Serves a subscriber until it ends, and says why.
pub(super) async fn serve(member: Membership, peer: Peer, socket: Halves, settings: watch::Receiver<LiveSettings>) {
    let (read, mut write) = socket;
    let sub = member.slot.subscriber().clone();
    let mut stops = Stops { read, scratch: [0; 512], sub: sub.clone(), peer: peer.clone(), settings, over: false };
    let why = pump(&mut write, &sub, &mut stops, &peer).await;
    let metrics = &member.metrics;
    let buffer = stops.settings.borrow().buffer;
    match why {
        Why::CutOff => {
            metrics.live_cut_off.fetch_add(1, Relaxed);
            warn!(client = %peer, buffer, "live stream: subscriber disconnected: it fell more than live.buffer bytes behind");
        }
        Why::SectionTooLarge(section) => {
            metrics.count_refused(LiveRefusal::FirstSection);
            warn!(
                client = %peer, section, buffer, reason = LiveRefusal::FirstSection.label(),
                "live stream: refused: its first section (the sessions in progress) is more than live.buffer"
            );
        }
        Why::Revoked(reason) => {
            metrics.live_revoked.fetch_add(1, Relaxed);
            warn!(client = %peer, uid = peer.uid(), reason = reason.label(), "live stream: subscriber disconnected: the reloaded config no longer allows it");
        }
        why => info!(client = %peer, %why, "live stream: subscriber gone"),
    }
    drop(member);
    let _ = write.shutdown().await;
}

/// Writes the subscriber's queue to its socket until something ends it.
async fn pump(write: &mut (dyn AsyncWrite + Send + Unpin), sub: &Subscriber, stops: &mut Stops, peer: &Peer) -> Why {
    let mut joined = false;
    loop {
        let next = tokio::select! {
            biased;
            why = stops.any() => return why,
            next = sub.next() => next,
        };
        let chunks = match next {
            Next::Bytes(chunks) => chunks,
            Next::Overflowed => return Why::CutOff,
            Next::Refused(section) => return Why::SectionTooLarge(section),
            Next::Closed if stops.over => return Why::StreamEnded,
            Next::Closed => return Why::FormatChanged,
        };
        for chunk in chunks {
            // A subscriber that stops reading must not hold this task in a write forever
            // (cut off there, its stream ends inside a block).
            tokio::select! {
                biased;
                why = stops.any() => return why,
                r = write.write_all(&chunk) => if r.is_err() { return Why::Left },
            }
            sub.written(chunk.len());
        }
        if !std::mem::replace(&mut joined, true) {
            // Its first bytes are its section: the headers and every live session.
            info!(client = %peer, "live stream: subscriber joined");
        }
    }
}
