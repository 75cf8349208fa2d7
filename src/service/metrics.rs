//! The daemon's counters and its list of live sessions, and their renderings: Prometheus
//! text for `/metrics`, JSON for `/sessions`. Counters are plain atomics bumped where the
//! events happen (the `Tee` counts bytes per leg and direction); rendering reads them.
//! No I/O here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::capture::stats::Stats;

/// Index of a leg in [`Metrics::bytes`].
pub const CLIENT_LEG: usize = 0;
pub const UPSTREAM_LEG: usize = 1;
/// Index of a direction in [`Metrics::bytes`]: read by wstap, written by wstap.
pub const IN: usize = 0;
pub const OUT: usize = 1;

/// Bytes in and out of one connection or session, shared with whoever counts them.
pub type ByteCounts = Arc<[AtomicU64; 2]>;

/// Counters of one daemon.
#[derive(Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub connections_active: AtomicU64,
    pub sessions_total: AtomicU64,
    /// Bytes per leg (client, upstream) and direction (in, out), all traffic.
    pub bytes: [[AtomicU64; 2]; 2],
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Failed requests by (side, kind).
    errors: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    sessions: Mutex<BTreeMap<u64, LiveSession>>,
}

/// A WebSocket session being relayed.
struct LiveSession {
    started: Instant,
    client: SocketAddr,
    path: String,
    upstream: String,
    /// Bytes client → upstream, upstream → client (shared with the relay).
    bytes: Arc<[AtomicU64; 2]>,
}

/// Removes a session from the live list when dropped.
pub struct SessionGuard {
    metrics: Arc<Metrics>,
    id: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        lock(&self.metrics.sessions).remove(&self.id);
    }
}

/// Counts an open client connection until dropped.
pub struct ConnectionGuard(Arc<Metrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    pub fn connection_opened(self: &Arc<Self>) -> ConnectionGuard {
        self.connections_total.fetch_add(1, Relaxed);
        self.connections_active.fetch_add(1, Relaxed);
        ConnectionGuard(self.clone())
    }

    /// A session starts: it is listed until the guard drops; `bytes` are its live counts.
    pub fn session_started(
        self: &Arc<Self>,
        id: u64,
        client: SocketAddr,
        path: String,
        upstream: String,
        bytes: Arc<[AtomicU64; 2]>,
    ) -> SessionGuard {
        self.sessions_total.fetch_add(1, Relaxed);
        lock(&self.sessions).insert(id, LiveSession { started: Instant::now(), client, path, upstream, bytes });
        SessionGuard { metrics: self.clone(), id }
    }

    pub fn request_failed(&self, side: &'static str, kind: &'static str) {
        *lock(&self.errors).entry((side, kind)).or_default() += 1;
    }

    pub fn sessions_active(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// `/metrics`: Prometheus text exposition format.
    pub fn render(&self, capture: Option<&Stats>, healthy: bool) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, rows: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |v: u64| vec![(String::new(), v)];
        let get = |a: &AtomicU64| a.load(Relaxed);
        metric(
            "wstap_up",
            "gauge",
            "1 while every listener accepts and the capture writer is not stuck.",
            &one(u64::from(healthy)),
        );
        metric(
            "wstap_connections_active",
            "gauge",
            "Client connections open now.",
            &one(get(&self.connections_active)),
        );
        metric(
            "wstap_connections_total",
            "counter",
            "Client connections accepted.",
            &one(get(&self.connections_total)),
        );
        metric(
            "wstap_sessions_active",
            "gauge",
            "WebSocket sessions being relayed now.",
            &one(self.sessions_active() as u64),
        );
        metric("wstap_sessions_total", "counter", "WebSocket sessions started.", &one(get(&self.sessions_total)));
        let mut bytes = Vec::new();
        for (leg, leg_name) in [(CLIENT_LEG, "client"), (UPSTREAM_LEG, "upstream")] {
            for (dir, dir_name) in [(IN, "in"), (OUT, "out")] {
                bytes.push((format!("{{leg=\"{leg_name}\",direction=\"{dir_name}\"}}"), get(&self.bytes[leg][dir])));
            }
        }
        metric(
            "wstap_bytes_total",
            "counter",
            "Bytes read (in) and written (out) by wstap, per connection leg.",
            &bytes,
        );
        let errors: Vec<(String, u64)> = lock(&self.errors)
            .iter()
            .map(|((side, kind), n)| (format!("{{side=\"{side}\",kind=\"{kind}\"}}"), *n))
            .collect();
        metric(
            "wstap_request_errors_total",
            "counter",
            "Requests wstap could not forward, by side at fault and kind.",
            &errors,
        );
        let reloads = vec![
            ("{result=\"ok\"}".to_owned(), get(&self.reloads_ok)),
            ("{result=\"failed\"}".to_owned(), get(&self.reloads_failed)),
        ];
        metric("wstap_reloads_total", "counter", "Config reloads (SIGHUP), by result.", &reloads);
        if let Some(s) = capture {
            metric(
                "wstap_capture_bytes_total",
                "counter",
                "Payload bytes written to capture files.",
                &one(get(&s.bytes_captured)),
            );
            metric(
                "wstap_capture_packets_total",
                "counter",
                "Packets written to capture files.",
                &one(get(&s.packets_written)),
            );
            metric(
                "wstap_capture_dropped_events_total",
                "counter",
                "Capture events dropped (queue full or no file).",
                &one(get(&s.events_dropped)),
            );
            metric(
                "wstap_capture_dropped_bytes_total",
                "counter",
                "Captured payload bytes dropped because the queue was full.",
                &one(get(&s.bytes_dropped)),
            );
            metric(
                "wstap_capture_unwritten_bytes_total",
                "counter",
                "Packet bytes not written because no file could be.",
                &one(get(&s.bytes_unwritten)),
            );
            metric("wstap_capture_write_errors_total", "counter", "Capture write errors.", &one(get(&s.write_errors)));
            metric(
                "wstap_capture_files_finished_total",
                "counter",
                "Capture files finished (synced and renamed).",
                &one(get(&s.files_finished)),
            );
        }
        out
    }

    /// `/sessions`: the live sessions as a JSON array.
    pub fn sessions_json(&self) -> String {
        let now = Instant::now();
        let list: Vec<serde_json::Value> = lock(&self.sessions)
            .iter()
            .map(|(id, s)| {
                serde_json::json!({
                    "id": id,
                    "client": s.client.to_string(),
                    "path": s.path,
                    "upstream": s.upstream,
                    "age_seconds": (now - s.started).as_secs_f64(),
                    "bytes_from_client": s.bytes[0].load(Relaxed),
                    "bytes_from_upstream": s.bytes[1].load(Relaxed),
                })
            })
            .collect();
        serde_json::Value::Array(list).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_and_sessions_list_while_live() {
        let m = Arc::new(Metrics::default());
        let conn = m.connection_opened();
        m.bytes[CLIENT_LEG][IN].fetch_add(10, Relaxed);
        m.request_failed("upstream", "connect");
        let counts = Arc::new([AtomicU64::new(5), AtomicU64::new(7)]);
        let session =
            m.session_started(3, "127.0.0.1:4000".parse().unwrap(), "/chat".into(), "ws://u:1".into(), counts);
        let text = m.render(None, true);
        for line in [
            "wstap_up 1",
            "wstap_connections_active 1",
            "wstap_sessions_active 1",
            "wstap_bytes_total{leg=\"client\",direction=\"in\"} 10",
            "wstap_request_errors_total{side=\"upstream\",kind=\"connect\"} 1",
            "# TYPE wstap_sessions_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        let json: serde_json::Value = serde_json::from_str(&m.sessions_json()).unwrap();
        assert_eq!(json[0]["id"], 3);
        assert_eq!(
            (json[0]["bytes_from_client"].as_u64(), json[0]["bytes_from_upstream"].as_u64()),
            (Some(5), Some(7))
        );
        drop((conn, session));
        assert!(m.render(None, false).contains("wstap_connections_active 0\n"));
        assert_eq!(m.sessions_json(), "[]");
    }
}
