//! Graceful shutdown in three steps (as in mini-redis): *detect* (the daemon gets an
//! action), *tell* every task (a watch channel moves Running → Draining → Closing), and
//! *wait* until every task has dropped its [`Shutdown`] handle. Hyper's own graceful
//! shutdown forgets a connection once it upgrades, so WebSocket sessions hold a handle
//! of their own here.

use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    /// Stop accepting; let in-flight requests and sessions finish.
    Draining,
    /// The grace period is over: close whatever is left, now.
    Closing,
}

/// Held by every task that must finish before the daemon exits.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<Phase>,
}

impl Shutdown {
    /// Resolves once the daemon has at least reached `phase`.
    pub async fn reached(&mut self, phase: Phase) {
        // Not `wait_for`, whose future is twice the size: every connection and session
        // holds one while it lives. An Err means the coordinator is gone, which only
        // happens once everything ends.
        while *self.rx.borrow_and_update() < phase {
            if self.rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Whether the daemon has started to drain.
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow() >= Phase::Draining
    }
}

/// Owned by the daemon: hands out [`Shutdown`] handles and runs the drain.
#[derive(Debug)]
pub struct Coordinator {
    tx: watch::Sender<Phase>,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Tasks still running when the grace period ended (they were told to close).
    pub cut: usize,
    /// Tasks that had not ended even after being told to close.
    pub stuck: usize,
}

/// How long closing tasks get after the grace period before the daemon stops waiting.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

impl Default for Coordinator {
    fn default() -> Self {
        Coordinator { tx: watch::Sender::new(Phase::Running) }
    }
}

impl Coordinator {
    pub fn handle(&self) -> Shutdown {
        Shutdown { rx: self.tx.subscribe() }
    }

    /// Live tasks holding a handle.
    pub fn live(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Tells every task to drain (stop accepting, finish what is in flight).
    pub fn start_drain(&self) {
        self.tx.send_if_modified(|p| {
            let was_running = *p == Phase::Running;
            if was_running {
                *p = Phase::Draining;
            }
            was_running
        });
    }

    /// Drains: tells every task (if not done yet) and waits up to `grace` for them to
    /// finish, or until `cut_short` resolves (a second SIGTERM); then tells the rest to
    /// close.
    pub async fn drain(&self, grace: Duration, cut_short: impl std::future::Future<Output = ()>) -> Drained {
        self.start_drain();
        tokio::select! {
            _ = self.tx.closed() => return Drained { cut: 0, stuck: 0 },
            _ = tokio::time::sleep(grace) => {}
            _ = cut_short => {}
        }
        let cut = self.live();
        self.tx.send_replace(Phase::Closing);
        let _ = tokio::time::timeout(CLOSE_WAIT, self.tx.closed()).await;
        Drained { cut, stuck: self.live() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tasks_that_finish_in_time() {
        let c = Coordinator::default();
        let mut h = c.handle();
        let task = tokio::spawn(async move {
            h.reached(Phase::Draining).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(h);
        });
        let d = c.drain(Duration::from_secs(30), std::future::pending()).await;
        assert_eq!(d, Drained { cut: 0, stuck: 0 });
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn drain_closes_tasks_still_running_at_grace_end() {
        let c = Coordinator::default();
        let mut h = c.handle();
        let task = tokio::spawn(async move {
            h.reached(Phase::Closing).await;
            assert_eq!(*h.rx.borrow(), Phase::Closing);
        });
        let d = c.drain(Duration::from_secs(2), std::future::pending()).await;
        assert_eq!(d, Drained { cut: 1, stuck: 0 });
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_closing_is_reported_stuck() {
        let c = Coordinator::default();
        let h = c.handle();
        let d = c.drain(Duration::from_secs(1), std::future::ready(())).await;
        assert_eq!(d, Drained { cut: 1, stuck: 1 });
        drop(h);
    }
}
