//! Ports Wireshark gives to another dissector: the table wstap keeps is checked against
//! tshark itself, and sessions through listeners on such ports decode with the default
//! config (`display_port = "auto"`).

use std::path::Path;

use crate::capture::*;
use crate::support::*;

/// A WebSocket session's first bytes on one leg per port: SYN, Upgrade, 101, one frame;
/// written with wstap's writer at the real ports. Client `i` is 10.0.x.y:40000.
fn one_session_per_port(ports: &[u16], file: &Path) {
    use wstap::capture::{CaptureWriter, Event, LegId, PureAcks, SectionInfo, Stats, Synthesis, What};
    use wstap::config::{DisplayPort, Legs};
    use wstap::{Dir, Leg, Opening};
    let info =
        SectionInfo { application: "ports".into(), os: "test".into(), hostname: "test".into(), ..Default::default() };
    let synth = Synthesis {
        mss_ipv4: 1460,
        mss_ipv6: 1440,
        segment: Default::default(),
        acks: PureAcks::Omitted,
        display_port: DisplayPort::Real,
        redact: Default::default(),
        isn_seed: 1,
        rotate_wait: std::time::Duration::from_secs(5),
        budgets: Default::default(),
    };
    let legs = Legs { client: true, upstream: false };
    let mut w = CaptureWriter::new(Vec::new(), &info, legs, synth).unwrap();
    let stats = Stats::default();
    let frame = masked_text_frame(b"decoded");
    let mut time = wstap_wire::Timestamp::from_nanos(1_764_000_000_000_000_000);
    for (i, port) in ports.iter().enumerate() {
        let leg = LegId(i as u64 + 1);
        let client = format!("10.0.{}.{}:40000", i >> 8, i & 255).parse().unwrap();
        let server = format!("10.1.0.1:{port}").parse().unwrap();
        let data =
            |dir, offset: usize, bytes: &[u8]| What::Data { dir, offset: offset as u64, bytes: bytes.to_vec().into() };
        for what in [
            What::Open(Box::new(Opening::new(Leg::Client, server, client, format!("port {port}")))),
            data(Dir::Up, 0, UPGRADE.as_bytes()),
            data(Dir::Down, 0, SWITCHED.as_bytes()),
            data(Dir::Up, UPGRADE.len(), &frame),
        ] {
            time = time.after(std::time::Duration::from_micros(1));
            w.process(Event { time, leg, what }, &stats).unwrap();
        }
    }
    std::fs::write(file, w.finish(&stats).unwrap().unwrap()).unwrap();
}

/// Every port tshark says a dissector claims on TCP, and those in wstap's table: a
/// session on each, written at its real port; each that does not decode as WebSocket must
/// be in the table, or `display_port = "auto"` would leave it undecoded.
#[test]
fn the_table_of_undecodable_ports_covers_every_port_tshark_will_not_decode() {
    let decodes = run("tshark", &["-G", "decodes"]);
    let mut ports: Vec<u16> = decodes
        .lines()
        .filter_map(|l| l.strip_prefix("tcp.port\t"))
        .filter_map(|l| l.split('\t').next()?.parse().ok())
        .collect();
    let table = wstap::capture::undecodable_ports();
    assert!(ports.len() > 100, "tshark lists the ports dissectors claim: {}", ports.len());
    ports.extend(&table);
    ports.sort_unstable();
    ports.dedup();
    let dir = scratch_dir("ports-table");
    let file = dir.join("ports.pcapng");
    one_session_per_port(&ports, &file);
    let decoded: std::collections::BTreeSet<u16> =
        fields(&file, "websocket", &["tcp.dstport"]).iter().filter_map(|r| r[0].parse().ok()).collect();
    let missing: Vec<u16> = ports.iter().filter(|p| !decoded.contains(p) && !table.contains(p)).copied().collect();
    assert!(missing.is_empty(), "ports tshark does not decode WebSocket on, missing from the table: {missing:?}");
    assert!(decoded.contains(&80) && decoded.contains(&8080), "the test itself decodes: {decoded:?}");
    let stale: Vec<&u16> = table.iter().filter(|p| decoded.contains(p)).collect();
    assert!(stale.is_empty(), "ports in the table that tshark decodes after all: {stale:?}");
}

/// Listeners on ports other dissectors claim (the first of them free on this machine),
/// default capture settings: every message of every session decodes as WebSocket, and the
/// leg's first comment names the real port.
#[tokio::test]
async fn sessions_on_claimed_ports_decode_with_the_default_config() {
    within(async {
        let wanted = [6379u16, 5432, 1883, 3306, 5672, 27017, 11211, 2181];
        let free: Vec<u16> =
            wanted.into_iter().filter(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()).take(4).collect();
        assert!(free.len() >= 2, "claimed ports free on this machine: {free:?}");
        let echo = echo_upstream().await;
        let dir = capture_dir("claimed-ports");
        let listen: Vec<String> = free.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let toml = format!(
            "listen = [{}]\n[[route]]\nupstream = \"ws://{echo}\"\n[capture]\ndir = {:?}\n[capture.rotate]\ninterval = \"0s\"\n",
            listen.join(", "),
            dir.display().to_string()
        );
        let proxy = Proxy::start(&toml).await;
        for addr in &proxy.addrs {
            let mut w = Witness::open(&format!("ws://{addr}/claimed")).await;
            w.check("open").await;
            w.check("again").await;
            w.close().await;
        }
        proxy.begin_shutdown().await;
        proxy.stopped().await;
        let file = the_files(&dir).pop().unwrap();
        assert_clean(&file, 1);
        let texts = fields(&file, "websocket.opcode == 1", &["websocket.payload.text"]);
        assert_eq!(texts.len(), 4 * free.len(), "two messages each way per session: {texts:?}");
        let comments = fields(&file, "frame.comment", &["frame.comment"]);
        for port in &free {
            assert!(
                comments.iter().any(|c| c[0].contains(&format!("server port {port} is written as 80"))),
                "{port}: {comments:?}"
            );
        }
    })
    .await;
}
