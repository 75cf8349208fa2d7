//! What the daemon publishes about itself: the proxy's [`Traffic`], the reloads, the
//! capture's [`Stats`] and its health, rendered as Prometheus text for `/metrics`, and the
//! live sessions as JSON for `/sessions`. No I/O here.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crate::capture::stats::Stats;
use crate::proxy::traffic::SessionCapture;
use crate::proxy::traffic::Traffic;
use crate::ship::{Failure, Ran, ShipStats};
use wstap_wire::dir::{Dir, Leg};

/// The daemon's counters: the proxy's, and its own.
#[derive(Default)]
pub struct Metrics {
    /// What the proxy counts (shared with every connection).
    pub traffic: Arc<Traffic>,
    /// Config reloads that applied.
    pub reloads_ok: AtomicU64,
    /// Config reloads that were refused (the old config stays).
    pub reloads_failed: AtomicU64,
    /// Live-stream subscribers that joined.
    pub live_joined: AtomicU64,
    /// Live-stream subscribers gone, any way.
    pub live_gone: AtomicU64,
    /// Live-stream subscribers cut off for falling more than `live.buffer` behind.
    pub live_cut_off: AtomicU64,
    /// Live-stream connections refused, by why.
    pub live_refused: [AtomicU64; LiveRefusal::ALL.len()],
    /// Live-stream subscribers a reload disconnected (`live.allow`, `live.users` narrowed).
    pub live_revoked: AtomicU64,
    /// What `[capture.upload]` and `capture.on_finish` did.
    pub shipping: Arc<ShipStats>,
}

/// Why the live stream refused a subscriber: the `reason` of `wstap_live_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveRefusal {
    /// Neither loopback nor in a network of `live.allow`.
    Address,
    /// Its socket's owner is not in `live.users`.
    User,
    /// From loopback, but its socket is in no table of this host (closed already): no one
    /// vouches for it.
    Unidentified,
    /// `live.max_clients` subscribers already.
    MaxClients,
    /// Its first section (the sessions in progress) is more than `live.buffer`.
    FirstSection,
}

impl LiveRefusal {
    /// Every reason, in the order they are counted.
    pub const ALL: [LiveRefusal; 5] = [
        LiveRefusal::Address,
        LiveRefusal::User,
        LiveRefusal::Unidentified,
        LiveRefusal::MaxClients,
        LiveRefusal::FirstSection,
    ];

    /// Its label value.
    pub fn label(self) -> &'static str {
        match self {
            LiveRefusal::Address => "address",
            LiveRefusal::User => "user",
            LiveRefusal::Unidentified => "unidentified",
            LiveRefusal::MaxClients => "max_clients",
            LiveRefusal::FirstSection => "first_section",
        }
    }
}

impl Metrics {
    /// Counts a live-stream connection refused for `why`.
    pub fn count_refused(&self, why: LiveRefusal) {
        self.live_refused[why as usize].fetch_add(1, Relaxed);
    }
}

/// One metric family: name, type, help, and its rows (labels, value).
struct Family {
    name: &'static str,
    kind: MetricType,
    help: &'static str,
    rows: Vec<(String, u64)>,
}

/// A metric family's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetricType {
    /// Only goes up (until a restart).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl MetricType {
    /// Its name in a `# TYPE` line.
    fn name(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
        }
    }
}

/// A counter family of one row.
fn counter(name: &'static str, help: &'static str, value: u64) -> Family {
    Family { name, kind: MetricType::Counter, help, rows: vec![(String::new(), value)] }
}

/// A counter family of a row per value of one label.
fn by_label<'a>(
    name: &'static str,
    help: &'static str,
    label: &str,
    rows: impl Iterator<Item = (&'a str, u64)>,
) -> Family {
    let rows = rows.map(|(value, n)| (format!("{{{label}=\"{value}\"}}"), n)).collect();
    Family { name, kind: MetricType::Counter, help, rows }
}

/// A gauge family of one row.
fn gauge(name: &'static str, help: &'static str, value: u64) -> Family {
    Family { name, kind: MetricType::Gauge, help, rows: vec![(String::new(), value)] }
}

impl Metrics {
    /// `/metrics`: the Prometheus text exposition format; `instance` is
    /// `capture.instance`.
    pub fn render(&self, capture: Option<&Stats>, healthy: bool, instance: &str) -> String {
        let mut families = vec![Family {
            name: "wstap_info",
            kind: MetricType::Gauge,
            help: "Always 1: the instance's name (capture.instance) and wstap's version.",
            rows: vec![(format!("{{instance=\"{instance}\",version=\"{}\"}}", env!("CARGO_PKG_VERSION")), 1)],
        }];
        families.extend(self.proxy_families(healthy));
        families.push(Family {
            name: "wstap_reloads_total",
            kind: MetricType::Counter,
            help: "Config reloads (SIGHUP), by result.",
            rows: vec![
                ("{result=\"ok\"}".to_owned(), self.reloads_ok.load(Relaxed)),
                ("{result=\"failed\"}".to_owned(), self.reloads_failed.load(Relaxed)),
            ],
        });
        families.extend(capture.map(capture_families).into_iter().flatten());
        families.extend(ship_families(&self.shipping));
        let joined = self.live_joined.load(Relaxed);
        families.extend([
            gauge(
                "wstap_live_subscribers",
                "Live-stream subscribers connected now.",
                joined.saturating_sub(self.live_gone.load(Relaxed)),
            ),
            counter("wstap_live_subscribers_total", "Live-stream subscribers that joined.", joined),
            counter(
                "wstap_live_cut_off_total",
                "Live-stream subscribers disconnected for falling more than live.buffer behind.",
                self.live_cut_off.load(Relaxed),
            ),
            by_label(
                "wstap_live_refused_total",
                "Live-stream connections refused, by reason.",
                "reason",
                LiveRefusal::ALL.iter().map(|r| (r.label(), self.live_refused[*r as usize].load(Relaxed))),
            ),
            counter(
                "wstap_live_revoked_total",
                "Live-stream subscribers disconnected by a reload that no longer allows them.",
                self.live_revoked.load(Relaxed),
            ),
        ]);
        let mut out = String::new();
        for f in families {
            let _ = writeln!(out, "# HELP {} {}\n# TYPE {} {}", f.name, f.help, f.name, f.kind.name());
            for (labels, value) in f.rows {
                let _ = writeln!(out, "{}{labels} {value}", f.name);
            }
        }
        out
    }

    fn proxy_families(&self, healthy: bool) -> Vec<Family> {
        let t = &self.traffic;
        let bytes = Leg::BOTH
            .into_iter()
            .flat_map(|leg| [(leg, leg.inbound(), "in"), (leg, leg.inbound().reverse(), "out")])
            .map(|(leg, dir, name)| (format!("{{leg=\"{}\",direction=\"{name}\"}}", leg.name()), t.bytes(leg, dir)))
            .collect();
        let errors = t
            .errors()
            .into_iter()
            .map(|((leg, kind), n)| (format!("{{side=\"{}\",kind=\"{}\"}}", leg.name(), kind.label()), n))
            .collect();
        vec![
            gauge("wstap_up", "1 while every listener accepts and the capture writer is not stuck.", healthy.into()),
            gauge(
                "wstap_connections_active",
                "Client connections open now, TLS handshakes in progress included.",
                t.connections_active.load(Relaxed),
            ),
            gauge(
                "wstap_connections_idle",
                "Client connections waiting for their next request, parked outside the HTTP server: they hold no buffers.",
                t.connections_idle.load(Relaxed),
            ),
            counter("wstap_connections_total", "Client connections accepted.", t.connections_total.load(Relaxed)),
            gauge("wstap_sessions_active", "WebSocket sessions being relayed now.", t.sessions_active() as u64),
            counter("wstap_sessions_total", "WebSocket sessions started.", t.sessions_total.load(Relaxed)),
            Family {
                name: "wstap_bytes_total",
                kind: MetricType::Counter,
                help: "Bytes read (in) and written (out) by wstap, per connection leg.",
                rows: bytes,
            },
            Family {
                name: "wstap_request_errors_total",
                kind: MetricType::Counter,
                help: "Requests wstap could not forward, by side at fault and kind.",
                rows: errors,
            },
            Family {
                name: "wstap_tls_handshake_failures_total",
                kind: MetricType::Counter,
                help: "TLS handshakes on the listeners that failed, by reason.",
                rows: t.tls_failures().into_iter().map(|(r, n)| (format!("{{reason=\"{}\"}}", r.label()), n)).collect(),
            },
        ]
    }

    /// `/sessions`: the live sessions as a JSON array, each naming the `instance`.
    pub fn sessions_json(&self, instance: &str) -> String {
        let now = Instant::now();
        let list: Vec<serde_json::Value> = self
            .traffic
            .sessions()
            .into_iter()
            .map(|(id, s)| {
                serde_json::json!({
                    "id": id.0,
                    "instance": instance,
                    "client": s.client.to_string(),
                    "path": s.path,
                    "upstream": s.upstream,
                    "age_seconds": (now - s.started).as_secs_f64(),
                    "bytes_from_client": s.bytes[Dir::Up].load(Relaxed),
                    "bytes_from_upstream": s.bytes[Dir::Down].load(Relaxed),
                    "capture": {
                        "captured": s.captured == SessionCapture::Captured,
                        "mode": s.policy.mode.name(),
                        "legs": Leg::BOTH.iter().filter(|l| s.policy.legs.has(**l)).map(|l| l.name()).collect::<Vec<_>>(),
                        "sample": s.policy.sample,
                        "max_session_bytes": s.policy.snap.session,
                        "max_message_bytes": s.policy.snap.message,
                    },
                })
            })
            .collect();
        serde_json::Value::Array(list).to_string()
    }
}

fn ship_families(s: &ShipStats) -> Vec<Family> {
    let get = |a: &AtomicU64| a.load(Relaxed);
    let oldest = match get(&s.oldest_waiting) {
        0 => 0,
        t => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |now| now.as_secs().saturating_sub(t)),
    };
    vec![
        counter(
            "wstap_upload_stored_files_total",
            "Capture files stored in object storage and verified.",
            get(&s.stored_files),
        ),
        counter("wstap_upload_stored_bytes_total", "Bytes of the capture files stored.", get(&s.stored_bytes)),
        by_label(
            "wstap_upload_failures_total",
            "Uploads that failed (each is tried again), by reason.",
            "reason",
            Failure::ALL.iter().map(|f| (f.label(), get(&s.failures[*f as usize]))),
        ),
        counter(
            "wstap_upload_conflicts_total",
            "Capture files not stored because their key holds a different object.",
            get(&s.conflicts),
        ),
        counter(
            "wstap_upload_dropped_files_total",
            "Capture files dropped from the upload backlog (max_backlog): never stored.",
            get(&s.dropped_files),
        ),
        counter("wstap_upload_dropped_bytes_total", "Bytes of the capture files dropped.", get(&s.dropped_bytes)),
        gauge("wstap_upload_backlog_files", "Finished capture files waiting to be stored.", get(&s.backlog_files)),
        gauge("wstap_upload_backlog_bytes", "Bytes of the capture files waiting to be stored.", get(&s.backlog_bytes)),
        gauge(
            "wstap_upload_oldest_waiting_seconds",
            "Age of the oldest capture file waiting to be stored (0: none waits).",
            oldest,
        ),
        by_label(
            "wstap_on_finish_total",
            "capture.on_finish runs, by result.",
            "result",
            Ran::ALL.iter().map(|r| (r.label(), get(&s.runs[*r as usize]))),
        ),
    ]
}

fn capture_families(s: &Stats) -> Vec<Family> {
    let get = |a: &AtomicU64| a.load(Relaxed);
    vec![
        counter("wstap_capture_bytes_total", "Payload bytes written to capture files.", get(&s.bytes_captured)),
        counter("wstap_capture_packets_total", "Packets written to capture files.", get(&s.packets_written)),
        counter(
            "wstap_capture_dropped_events_total",
            "Capture events dropped (queue full or no file).",
            get(&s.events_dropped),
        ),
        counter(
            "wstap_capture_dropped_bytes_total",
            "Captured payload bytes dropped because the queue was full.",
            get(&s.bytes_dropped),
        ),
        counter(
            "wstap_capture_unwritten_bytes_total",
            "Packet bytes not written because no file could be.",
            get(&s.bytes_unwritten),
        ),
        counter("wstap_capture_write_errors_total", "Capture write errors.", get(&s.write_errors)),
        counter(
            "wstap_capture_files_finished_total",
            "Capture files finished (synced and renamed).",
            get(&s.files_finished),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::traffic::LiveSession;
    use wstap_wire::dir::PerDir;

    #[test]
    fn counters_render_and_sessions_list_while_live() {
        let m = Metrics::default();
        let conn = m.traffic.connection_opened();
        m.traffic.bytes[Leg::Client][Dir::Up].fetch_add(10, Relaxed);
        m.traffic.request_failed(Leg::Upstream, crate::proxy::error::Failure::Connect);
        let live = LiveSession {
            started: Instant::now(),
            client: "127.0.0.1:4000".parse().unwrap(),
            path: "/chat".into(),
            upstream: "ws://u:1".into(),
            bytes: Arc::new(PerDir::new(AtomicU64::new(5), AtomicU64::new(7))),
            policy: crate::config::Policy::default(),
            captured: SessionCapture::Captured,
        };
        let session = m.traffic.session_started(crate::capture::ConnId(3), live);
        let text = m.render(None, true, "i");
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
        let json: serde_json::Value = serde_json::from_str(&m.sessions_json("i")).unwrap();
        assert_eq!(json[0]["id"], 3);
        assert_eq!(
            (json[0]["bytes_from_client"].as_u64(), json[0]["bytes_from_upstream"].as_u64()),
            (Some(5), Some(7))
        );
        drop((conn, session));
        assert!(m.render(None, false, "i").contains("wstap_connections_active 0\n"));
        assert_eq!(m.sessions_json("i"), "[]");
    }

    #[test]
    fn capture_drops_show_in_the_metrics() {
        let (m, stats) = (Metrics::default(), Stats::default());
        let before = m.render(Some(&stats), true, "i");
        assert!(before.contains("wstap_capture_dropped_events_total 0\n"), "{before}");
        stats.events_dropped.fetch_add(1, Relaxed);
        stats.bytes_dropped.fetch_add(800, Relaxed);
        let after = m.render(Some(&stats), true, "i");
        assert!(after.contains("wstap_capture_dropped_events_total 1\n"), "{after}");
        assert!(after.contains("wstap_capture_dropped_bytes_total 800\n"), "{after}");
    }
}
