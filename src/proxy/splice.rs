//! Relays bytes both ways between two connected streams once a WebSocket upgrade has
//! succeeded. Each direction runs on its own until its reader ends; an end of stream
//! is passed on as a half-close (FIN) and the other direction keeps flowing. The relay
//! ends when both directions have ended, on an error (the whole session is then torn
//! down), on idle timeout, or when told to stop. It moves bytes; it never looks at them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use wstap_wire::dir::{Dir, Leg, PerDir};

use crate::capture::SessionEnd;

/// Bytes read per call: 64 KiB, like nginx's large proxy buffers, keeps system calls per
/// large message low (16 KiB took four reads and four writes per 64 KiB message). The
/// buffer is one per thread, not one per session.
const CHUNK: usize = 64 * 1024;

/// What a finished relay did.
#[derive(Debug)]
pub struct Spliced {
    /// Bytes relayed each way.
    pub bytes: PerDir<u64>,
    /// Why it ended.
    pub end: End,
}

/// Why a relay ended.
#[derive(Debug)]
pub enum End {
    /// Both sides closed their write direction (each FIN was passed on).
    Closed,
    /// No byte moved either way for this long.
    Idle(Duration),
    /// The daemon's grace period ran out.
    Shutdown,
    /// A read or write failed on leg `leg`.
    Error { leg: Leg, error: io::Error },
}

impl End {
    /// The end as a capture comment and the log say it.
    pub fn said(&self) -> SessionEnd {
        match self {
            End::Closed => SessionEnd::BothClosed,
            End::Idle(d) => SessionEnd::Idle(*d),
            End::Shutdown => SessionEnd::Shutdown,
            End::Error { leg, error } => SessionEnd::Aborted { leg: *leg, error: error.to_string() },
        }
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.said().fmt(f)
    }
}

/// Relays between `client` and `upstream` until both directions end, one fails, the
/// connection is idle for `idle`, or `stop` resolves.
/// `counts` are the bytes relayed each way, kept up to date as the relay runs (for
/// `/sessions`).
pub async fn splice<C, U>(
    client: C,
    upstream: U,
    counts: &PerDir<AtomicU64>,
    idle: Option<Duration>,
    stop: impl Future<Output = ()>,
) -> Spliced
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut upstream_rd, mut upstream_wr) = tokio::io::split(upstream);
    let start = Instant::now();
    let activity = Activity { start, last_ms: AtomicU64::new(0) };
    let both = async {
        tokio::try_join!(
            pump(&mut client_rd, &mut upstream_wr, Leg::Client, &counts[Dir::Up], &activity),
            pump(&mut upstream_rd, &mut client_wr, Leg::Upstream, &counts[Dir::Down], &activity),
        )
    };
    let end = tokio::select! {
        r = both => r.err().unwrap_or(End::Closed),
        d = activity.idle(idle) => End::Idle(d),
        () = stop => End::Shutdown,
    };
    Spliced { bytes: PerDir::new(counts[Dir::Up].load(Relaxed), counts[Dir::Down].load(Relaxed)), end }
}

/// Copies `from` (on leg `from_leg`) → `to` (on the other leg) until `from` ends, then
/// shuts `to`'s write side.
///
/// An idle pump holds no buffer: bytes are read into the thread's scratch buffer and
/// written straight on in the same poll; only what the writer does not take at once is
/// copied to the heap, and that copy is freed as soon as it is written. So a session
/// costs memory only while its bytes are in flight.
async fn pump<R, W>(from: &mut R, to: &mut W, from_leg: Leg, count: &AtomicU64, activity: &Activity) -> Result<(), End>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let to_leg = from_leg.other();
    let fail = |leg| move |error| End::Error { leg, error };
    let mut backlog: Vec<u8> = Vec::new();
    let mut at = 0;
    std::future::poll_fn(|cx| loop {
        // First whatever the writer did not take last time.
        while at < backlog.len() {
            match Pin::new(&mut *to).poll_write(cx, &backlog[at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(fail(to_leg)(io::ErrorKind::WriteZero.into()))),
                Poll::Ready(Ok(n)) => {
                    at += n;
                    count.fetch_add(n as u64, Relaxed);
                    activity.touch();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(fail(to_leg)(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        if at > 0 {
            (backlog, at) = (Vec::new(), 0);
        }
        let step = SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = ReadBuf::new(scratch);
            match Pin::new(&mut *from).poll_read(cx, &mut buf) {
                Poll::Pending => Step::Wait,
                // A TLS peer that closed without close_notify (many do, after a WebSocket
                // close handshake): the end of its stream, as TCP's FIN would be. A cut
                // stream looks the same; WebSocket's own Close frames tell them apart, and
                // the capture's comment on that FIN says so.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Step::Ended,
                Poll::Ready(Err(e)) => Step::Failed(fail(from_leg)(e)),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => Step::Ended,
                Poll::Ready(Ok(())) => {
                    let data = buf.filled();
                    let mut written = 0;
                    while written < data.len() {
                        match Pin::new(&mut *to).poll_write(cx, &data[written..]) {
                            Poll::Ready(Ok(0)) => return Step::Failed(fail(to_leg)(io::ErrorKind::WriteZero.into())),
                            Poll::Ready(Ok(n)) => written += n,
                            Poll::Ready(Err(e)) => return Step::Failed(fail(to_leg)(e)),
                            Poll::Pending => break,
                        }
                    }
                    if written > 0 {
                        count.fetch_add(written as u64, Relaxed);
                        activity.touch();
                    }
                    Step::Left(data[written..].to_vec())
                }
            }
        });
        match step {
            Step::Wait => return Poll::Pending,
            Step::Failed(e) => return Poll::Ready(Err(e)),
            Step::Ended => return Poll::Ready(Ok(())),
            Step::Left(rest) => backlog = rest,
        }
    })
    .await?;
    to.shutdown().await.map_err(fail(to_leg))
}

/// What one read-and-forward did.
enum Step {
    Wait,
    Failed(End),
    Ended,
    /// Bytes read but not yet written (empty if all were).
    Left(Vec<u8>),
}

thread_local! {
    /// Where every pump on this thread reads to: borrowed only within one poll.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; CHUNK].into_boxed_slice());
}

/// When a byte last moved, in ms since the relay started (shared by both directions).
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Relaxed);
    }

    /// Resolves once nothing has moved for `idle`; never when `idle` is `None`.
    async fn idle(&self, idle: Option<Duration>) -> Duration {
        let Some(idle) = idle else {
            return std::future::pending().await;
        };
        loop {
            let deadline = self.start + Duration::from_millis(self.last_ms.load(Relaxed)) + idle;
            if Instant::now() >= deadline {
                return idle;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{duplex, AsyncReadExt};

    /// Through 64-byte pipes, writes are always partial: every byte still arrives, in order.
    #[tokio::test]
    async fn bytes_a_slow_writer_did_not_take_are_kept_until_it_does() {
        let (mut client, proxy_client) = duplex(64);
        let (proxy_upstream, mut upstream) = duplex(64);
        let counts: Arc<PerDir<AtomicU64>> = Arc::default();
        let c = counts.clone();
        let relay =
            tokio::spawn(async move { splice(proxy_client, proxy_upstream, &c, None, std::future::pending()).await });
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "{} of {} bytes, in order", got.len(), data.len());
        drop((writer.await.unwrap(), upstream));
        let done = relay.await.unwrap();
        assert_eq!(done.bytes[Dir::Up], 200_000);
    }

    #[tokio::test]
    async fn half_close_keeps_the_other_direction_open() {
        let (mut client, proxy_client) = duplex(64);
        let (proxy_upstream, mut upstream) = duplex(64);
        let relay = tokio::spawn(async move {
            splice(proxy_client, proxy_upstream, &Default::default(), None, std::future::pending()).await
        });

        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello", "upstream sees the data, then EOF");

        upstream.write_all(b"still here").await.unwrap();
        upstream.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"still here");

        let done = relay.await.unwrap();
        assert!(matches!(done.end, End::Closed), "{:?}", done.end);
        assert_eq!(done.bytes, PerDir::new(5, 10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_counts_both_directions() {
        let (mut client, proxy_client) = duplex(64);
        let (proxy_upstream, mut upstream) = duplex(64);
        let relay = tokio::spawn(async move {
            splice(
                proxy_client,
                proxy_upstream,
                &Default::default(),
                Some(Duration::from_secs(10)),
                std::future::pending(),
            )
            .await
        });
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            upstream.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            client.read_exact(&mut one).await.unwrap();
        }
        let quiet_since = Instant::now();
        let done = relay.await.unwrap();
        assert!(matches!(done.end, End::Idle(_)), "{:?}", done.end);
        assert_eq!(done.bytes[Dir::Down], 3);
        // Paused clock: the relay lived 18s thanks to traffic and ended 10s after the last byte.
        assert_eq!(quiet_since.elapsed().as_secs(), 10);
    }

    #[tokio::test]
    async fn stop_ends_the_relay() {
        let (_client, proxy_client) = duplex(64);
        let (proxy_upstream, _upstream) = duplex(64);
        let done = splice(proxy_client, proxy_upstream, &Default::default(), None, std::future::ready(())).await;
        assert!(matches!(done.end, End::Shutdown));
    }
}
