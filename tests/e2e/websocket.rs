//! WebSocket sessions through the proxy: messages byte for byte, early data, rejected
//! upgrades passed back unchanged, half-close both ways, IPv4 and IPv6 listeners.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn every_kind_of_message_crosses_byte_for_byte() {
    within(async {
        let proxy = Proxy::start(&config(echo_upstream().await, "")).await;
        let (mut ws, resp) = tokio_tungstenite::connect_async(proxy.ws_url("/chat?room=1")).await.unwrap();
        assert_eq!(resp.status(), 101);

        let text = "héllo, wörld ✓";
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));

        let all_bytes: Vec<u8> = (0..=255).collect();
        ws.send(Message::binary(all_bytes.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(all_bytes));

        // A text message in three fragments; the echo server reassembles it.
        fragmented_round_trip(&mut ws).await;

        ws.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Pong(b"are you there".to_vec().into()));

        let big = noise(1 << 20);
        ws.send(Message::binary(big.clone())).await.unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(got) => assert!(got[..] == big[..], "1 MiB message differs after the proxy"),
            other => panic!("expected the 1 MiB binary echo, got {other:?}"),
        }

        let bye = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
        ws.close(Some(bye.clone())).await.unwrap();
        let mut echoed_close = None;
        while let Some(msg) = ws.next().await {
            if let Message::Close(c) = msg.unwrap() {
                echoed_close = c;
            }
        }
        assert_eq!(echoed_close, Some(bye), "the upstream's close frame reaches the client");
    })
    .await;
}

#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_not_lost() {
    within(async {
        let proxy = Proxy::start(&config(echo_upstream().await, "")).await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut first_write = UPGRADE.as_bytes().to_vec();
        first_write.extend(masked_text_frame(b"early bird"));
        s.write_all(&first_write).await.unwrap();

        let mut r = BufReader::new(s);
        let head = read_head(&mut r).await;
        assert_eq!(status_of(&head), 101, "{head}");
        let mut frame = [0u8; 12];
        r.read_exact(&mut frame).await.unwrap();
        assert_eq!(&frame[..2], &[0x81, 10], "an unmasked text frame of 10 bytes");
        assert_eq!(&frame[2..], b"early bird");
    })
    .await;
}

#[tokio::test]
async fn a_refused_upgrade_is_passed_back_unchanged() {
    within(async {
        let upstream = serve(|s| async move {
            let mut r = BufReader::new(s);
            read_head(&mut r).await;
            let answer = "HTTP/1.1 403 Forbidden\r\nX-Reason: Missing-Token\r\nContent-Length: 10\r\n\r\nno token\r\n";
            r.get_mut().write_all(answer.as_bytes()).await.unwrap();
        })
        .await;
        let proxy = Proxy::start(&config(upstream, "")).await;
        let mut r = BufReader::new(TcpStream::connect(proxy.addr()).await.unwrap());
        r.get_mut().write_all(UPGRADE.as_bytes()).await.unwrap();
        let head = read_head(&mut r).await;
        assert_eq!(status_of(&head), 403, "{head}");
        assert!(head.contains("X-Reason: Missing-Token\r\n"), "header and its case kept: {head}");
        let mut body = [0u8; 10];
        r.read_exact(&mut body).await.unwrap();
        assert_eq!(&body, b"no token\r\n");
    })
    .await;
}

#[tokio::test]
async fn client_half_close_still_gets_the_upstreams_remaining_data() {
    within(async {
        // The upstream reads until the client's FIN, then answers and closes.
        let upstream = switching_upstream(|mut s, _| async move {
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(format!("after your FIN I got {:?}", String::from_utf8_lossy(&got)).as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
        })
        .await;
        let proxy = Proxy::start(&config(upstream, "")).await;
        let (mut s, _) = raw_session(&proxy).await;
        s.write_all(b"last words").await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = String::new();
        s.read_to_string(&mut back).await.unwrap();
        assert_eq!(back, "after your FIN I got \"last words\"");
    })
    .await;
}

#[tokio::test]
async fn upstream_half_close_leaves_the_client_direction_open() {
    within(async {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let upstream = switching_upstream(move |mut s, _| {
            let tx = tx.clone();
            async move {
                s.write_all(b"server done").await.unwrap();
                s.shutdown().await.unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                tx.send(got).unwrap();
            }
        })
        .await;
        let proxy = Proxy::start(&config(upstream, "")).await;
        let (mut s, mut first) = raw_session(&proxy).await;
        s.read_to_end(&mut first).await.unwrap();
        assert_eq!(first, b"server done", "then EOF from the upstream's FIN");
        s.write_all(b"client still talking").await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), b"client still talking");
    })
    .await;
}

#[tokio::test]
async fn the_upstream_sees_a_clean_handshake() {
    within(async {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let upstream = switching_upstream(move |_, head| {
            let tx = tx.clone();
            async move { tx.send(head).unwrap() }
        })
        .await;
        let proxy = Proxy::start(&config(upstream, "")).await;
        let _session = raw_session(&proxy).await;
        let head = rx.recv().await.unwrap();
        assert!(head.starts_with("GET /chat HTTP/1.1\r\n"), "{head}");
        for want in ["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "Sec-WebSocket-Version: 13\r\n"] {
            assert!(head.contains(want), "missing {want:?} (exact case) in\n{head}");
        }
        for (name, value) in [
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-host", "app.example"),
            ("x-forwarded-proto", "http"),
            ("host", &upstream.to_string()),
        ] {
            assert!(has_header(&head, name, value), "missing {name}: {value} in\n{head}");
        }
        let connection_fields = head.lines().filter(|l| l.to_ascii_lowercase().starts_with("connection:")).count();
        assert_eq!(connection_fields, 1, "{head}");
    })
    .await;
}

#[tokio::test]
async fn ipv4_and_ipv6_listeners_both_proxy() {
    within(async {
        let up = echo_upstream().await;
        let toml = format!("listen = [\"127.0.0.1:0\", \"[::1]:0\"]\n[[route]]\nupstream = \"ws://{up}\"\n");
        let proxy = Proxy::start(&toml).await;
        assert!(proxy.addrs[1].is_ipv6());
        for addr in &proxy.addrs {
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await.unwrap();
            ws.send(Message::text(addr.to_string())).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(addr.to_string()));
        }
    })
    .await;
}
