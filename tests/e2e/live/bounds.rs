//! The live stream's bounds: a subscriber that closes gives its slot back at once, even on
//! an idle proxy; a slot cannot leak when its task is aborted by a reload that moves the
//! stream; a joiner's first section counts against `live.buffer`; a reload that narrows
//! who may subscribe disconnects those it no longer allows.

use super::*;

#[tokio::test]
async fn subscribers_that_close_on_an_idle_proxy_give_their_slots_back_at_once() {
    let (logs, _capturing) = Logs::capture();
    within(async {
        let d = LiveDaemon::start("live-cycles", "listen = \"127.0.0.1:0\"\nmax_clients = 2\n", &logs).await;
        let (live, admin) = (d.live(&logs, 0), d.admin());
        // Starting and stopping a reader (Wireshark's extcap, say) eight times, with no
        // traffic: nothing is written to a subscriber after its section.
        for i in 0..8 {
            let mut sub = TcpStream::connect(live).await.unwrap();
            if i % 2 == 0 {
                // All of its section read (on an idle proxy: the headers), then closed
                // with nothing unread: a plain FIN, no reset, as a reader that exits.
                let blocks = read_blocks(&mut sub, 3).await;
                assert_eq!(blocks, [0x0a0d_0d0a, 1, 1], "the section header, the two interfaces");
                drop(sub);
            } else {
                assert_pcapng(&mut sub).await;
                // Its sending side shut (`ncat` at the end of its input): gone as well.
                sub.shutdown().await.unwrap();
                let mut rest = Vec::new();
                sub.read_to_end(&mut rest).await.unwrap();
            }
            until_metric(admin, "wstap_live_subscribers ", 0).await;
        }
        assert_eq!(logs.lines_with(&["live stream: subscriber gone", "it left"]).len(), 8);
        // Both slots are there to take.
        let mut a = TcpStream::connect(live).await.unwrap();
        let mut b = TcpStream::connect(live).await.unwrap();
        assert_pcapng(&mut a).await;
        assert_pcapng(&mut b).await;
        assert_eq!(metric(admin, "wstap_live_refused_total{reason=\"max_clients\"}").await, 0);
        drop((a, b));
        d.stop().await;
    })
    .await;
}

/// Reads `n` whole pcapng blocks (little-endian, as wstap writes them); returns their types.
async fn read_blocks(sub: &mut TcpStream, n: usize) -> Vec<u32> {
    let mut types = Vec::new();
    for _ in 0..n {
        let mut head = [0u8; 8];
        sub.read_exact(&mut head).await.unwrap();
        let len = u32::from_le_bytes(head[4..8].try_into().unwrap()) as usize;
        let mut rest = vec![0u8; len - 8];
        sub.read_exact(&mut rest).await.unwrap();
        types.push(u32::from_le_bytes(head[..4].try_into().unwrap()));
    }
    types
}

#[tokio::test]
async fn a_reload_that_moves_the_stream_gives_back_the_slot_of_a_subscriber_stuck_in_a_write() {
    let (logs, _capturing) = Logs::capture();
    within(async {
        let live_toml = "max_clients = 1\nbuffer = \"256MiB\"\n";
        let d = LiveDaemon::start("live-stuck", &format!("listen = \"127.0.0.1:0\"\n{live_toml}"), &logs).await;
        let (live, admin) = (d.live(&logs, 0), d.admin());
        // A subscriber that stops reading after its first bytes, under its buffer.
        let mut stuck = TcpStream::connect(live).await.unwrap();
        assert_pcapng(&mut stuck).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(d.proxy.ws_url("/flood")).await.unwrap();
        let count = 16;
        for i in 0..count {
            let m = Message::binary(noise(512 * 1024 + i));
            ws.send(m.clone()).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), m);
        }
        // 32 MiB of packets for it (both legs, both ways): more than its socket holds, so
        // its task is in a write once the writer has caught up.
        let payload: u64 = (0..count as u64).map(|i| 2 * (512 * 1024 + i)).sum();
        for _ in 0..2000 {
            if metric(admin, "wstap_capture_bytes_total").await >= payload {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(metric(admin, "wstap_live_cut_off_total").await, 0, "under its buffer");
        d.reload(&format!("listen = \"127.0.0.2:0\"\n{live_toml}"), &logs).await;
        eventually("moved", || logs.lines_with(&["live stream: listening"]).len() == 2).await;
        until_metric(admin, "wstap_live_subscribers ", 0).await;
        // max_clients = 1: the one slot is free again.
        let mut sub = TcpStream::connect(d.live(&logs, 1)).await.unwrap();
        assert_pcapng(&mut sub).await;
        assert_eq!(metric(admin, "wstap_live_refused_total{reason=\"max_clients\"}").await, 0);
        drop((stuck, sub));
        close_ws(ws).await;
        d.stop().await;
    })
    .await;
}

async fn close_ws(mut ws: WsClient) {
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
}

/// Opens a session whose Upgrade request carries `pad` bytes of padding, and leaves it open.
async fn padded_session(proxy: &Proxy, pad: usize) -> TcpStream {
    let mut r = BufReader::new(TcpStream::connect(proxy.addr()).await.unwrap());
    let upgrade = UPGRADE.replace("\r\n\r\n", &format!("\r\nX-Padding: {}\r\n\r\n", "p".repeat(pad)));
    r.get_mut().write_all(upgrade.as_bytes()).await.unwrap();
    assert_eq!(status_of(&read_head(&mut r).await), 101);
    r.into_inner()
}

#[tokio::test]
async fn a_joiner_whose_first_section_is_more_than_live_buffer_is_refused_with_its_reason() {
    let (logs, _capturing) = Logs::capture();
    within(async {
        let d = LiveDaemon::start("live-section", "listen = \"127.0.0.1:0\"\nbuffer = \"64KiB\"\n", &logs).await;
        let (live, admin) = (d.live(&logs, 0), d.admin());
        // Three sessions in progress whose Upgrade requests (repeated for a joiner) are
        // 30 KB each: about 90 KB, on each of two legs.
        let mut sessions = Vec::new();
        for _ in 0..3 {
            sessions.push(padded_session(&d.proxy, 30_000).await);
        }
        let mut sub = TcpStream::connect(live).await.unwrap();
        let mut got = Vec::new();
        sub.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty(), "nothing of its section: {} bytes", got.len());
        let said = logs.lines_with(&["live stream: refused", "first section", "more than live.buffer"]);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("buffer=65536") && said[0].contains("section="), "{}", said[0]);
        assert_eq!(metric(admin, "wstap_live_refused_total{reason=\"first_section\"}").await, 1);
        until_metric(admin, "wstap_live_subscribers ", 0).await;
        // A buffer it fits in: served.
        d.reload("listen = \"127.0.0.1:0\"\nbuffer = \"1MiB\"\n", &logs).await;
        let mut sub = TcpStream::connect(live).await.unwrap();
        assert_pcapng(&mut sub).await;
        drop((sub, sessions));
        d.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_reload_that_narrows_live_users_disconnects_those_it_no_longer_allows() {
    let (logs, _capturing) = Logs::capture();
    within(async {
        let d = LiveDaemon::start("live-narrowed", "listen = \"127.0.0.1:0\"\n", &logs).await;
        let (live, admin) = (d.live(&logs, 0), d.admin());
        let mut sub = TcpStream::connect(live).await.unwrap();
        assert_pcapng(&mut sub).await;
        // Still allowed: it stays.
        d.reload("listen = \"127.0.0.1:0\"\nmax_clients = 4\n", &logs).await;
        assert_eq!(metric(admin, "wstap_live_subscribers ").await, 1);
        // This user (the tests' own) is no longer listed: let go at once.
        d.reload("listen = \"127.0.0.1:0\"\nusers = [\"nobody\"]\n", &logs).await;
        let mut rest = Vec::new();
        sub.read_to_end(&mut rest).await.unwrap();
        let said = logs.lines_with(&["live stream: subscriber disconnected", "no longer allows it", "reason=\"user\""]);
        assert_eq!(said.len(), 1, "{said:?}");
        assert_eq!(metric(admin, "wstap_live_revoked_total").await, 1);
        until_metric(admin, "wstap_live_subscribers ", 0).await;
        // And a new connection of this user is refused.
        let mut again = TcpStream::connect(live).await.unwrap();
        assert_eq!(again.read(&mut [0u8; 16]).await.unwrap(), 0, "closed at once");
        assert_eq!(metric(admin, "wstap_live_refused_total{reason=\"user\"}").await, 1);
        d.stop().await;
    })
    .await;
}
