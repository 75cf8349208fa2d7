//! HTTP/2 listeners (`http2 = true`): an `h2` client speaking extended CONNECT (RFC
//! 8441) straight to the daemon, the capture of such a WebSocket read back by tshark as
//! an HTTP/1.1 session, a refused route, many streams at once, a peer resetting streams
//! in a loop, and curl over HTTP/2 on cleartext (prior knowledge) and TLS (ALPN).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};

use crate::capture::{assert_clean, capture_dir, capture_toml, fields, the_files, tshark};
use crate::support::*;
use crate::tls::Pki;

/// A daemon with one cleartext HTTP/2 listener, routing `/chat` to `upstream`,
/// capturing into `caps` (if given).
async fn h2_proxy(upstream: SocketAddr, caps: Option<&Path>) -> Proxy {
    let capture = caps.map_or(String::new(), |d| capture_toml(d, "legs = [\"client\"]"));
    let toml = format!(
        "listen = []\n[[listener]]\naddr = \"127.0.0.1:0\"\nhttp2 = true\n[[route]]\npath_prefix = \"/chat\"\n\
         upstream = \"ws://{upstream}\"\n{capture}"
    );
    Proxy::start(&toml).await
}

/// An HTTP/2 connection to `addr`, prior knowledge; its connection task runs apart.
async fn h2_client(addr: SocketAddr) -> SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

/// An extended CONNECT for a WebSocket at `path`: its status, and the stream.
async fn connect_websocket(
    send: &mut SendRequest<Bytes>,
    path: &str,
) -> (StatusCode, Option<(h2::SendStream<Bytes>, h2::RecvStream)>) {
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://wstap.test{path}"))
        .extension(h2::ext::Protocol::from("websocket"))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-extensions", "permessage-deflate; client_max_window_bits")
        .body(())
        .unwrap();
    let (response, stream) = send.clone().ready().await.unwrap().send_request(req, false).unwrap();
    let response = within(response).await.unwrap();
    let status = response.status();
    (status, (status == StatusCode::OK).then(|| (stream, response.into_body())))
}

/// Reads from `body` until a whole server frame is there; returns its payload and the
/// bytes after it.
async fn next_frame(body: &mut h2::RecvStream, buf: &mut Vec<u8>) -> (u8, Vec<u8>) {
    loop {
        if let Some((first, payload, used)) = parse_frame(buf) {
            buf.drain(..used);
            return (first, payload);
        }
        let data = within(body.data()).await.expect("the stream goes on").unwrap();
        let _ = body.flow_control().release_capacity(data.len());
        buf.extend_from_slice(&data);
    }
}

/// An unmasked frame at the start of `buf`: its first byte, payload and length.
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (first, len7) = (*buf.first()?, *buf.get(1)? & 0x7f);
    let (len, at) = match len7 {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    Some((first, payload, at + len))
}

/// A masked binary frame.
fn masked_binary_frame(payload: &[u8]) -> Vec<u8> {
    use wstap_wire::wsframe::{encode_frame, first_byte, Opcode};
    encode_frame(first_byte(true, false, Opcode::Binary), payload, Some([0x11, 0x22, 0x33, 0x44]))
}

/// One echo round over a WebSocket stream.
async fn echo(
    send: &mut h2::SendStream<Bytes>,
    body: &mut h2::RecvStream,
    buf: &mut Vec<u8>,
    frame: Vec<u8>,
) -> Vec<u8> {
    send.send_data(Bytes::from(frame), false).unwrap();
    next_frame(body, buf).await.1
}

#[tokio::test]
async fn a_websocket_over_http2_is_bridged_and_written_as_an_http1_session() {
    within(async {
        let caps = capture_dir("h2-ws");
        let proxy = h2_proxy(echo_upstream().await, Some(&caps)).await;
        let mut send = h2_client(proxy.addr()).await;
        let (status, stream) = connect_websocket(&mut send, "/chat?room=1").await;
        assert_eq!(status, StatusCode::OK);
        assert!(send.is_extended_connect_protocol_enabled(), "SETTINGS_ENABLE_CONNECT_PROTOCOL is advertised");
        let (mut out, mut body) = stream.unwrap();
        let mut buf = Vec::new();
        assert_eq!(echo(&mut out, &mut body, &mut buf, masked_text_frame(b"hello over h2")).await, b"hello over h2");
        // A rotation in the middle of the session: the next file repeats it, as for any.
        proxy.rotate().await;
        let big = noise(200_000);
        assert_eq!(echo(&mut out, &mut body, &mut buf, masked_binary_frame(&big)).await, big, "200 KB, flow control");
        out.send_data(Bytes::from(wstap_wire::wsframe::encode_frame(0x88, &[3, 232], Some([1, 2, 3, 4]))), true)
            .unwrap();
        let (first, _) = next_frame(&mut body, &mut buf).await;
        assert_eq!(first, 0x88, "the close echoed");
        drop((out, body, send));
        proxy.begin_shutdown().await;
        proxy.stopped().await;
        let files = the_files(&caps);
        assert_eq!(files.len(), 2, "rotated: {files:?}");
        // The reader (sessions, replay, carve) takes it as one session across the files.
        let rec = wstap_replay::open_all(&files).unwrap();
        assert!(rec.problems.is_empty(), "{:?}", rec.problems);
        assert_eq!(rec.sessions.len(), 1);
        let kinds: Vec<&str> = rec.sessions[0].messages.iter().map(|m| m.kind.name()).collect();
        assert_eq!(kinds, ["text", "text", "binary", "binary", "close", "close"]);
        let file = files[0].clone();
        assert_clean(&file, 1);
        assert_clean(&files[1], 1);
        let request = fields(&file, "http.request", &["http.request.method", "http.request.uri", "http.upgrade"]);
        assert_eq!(
            request,
            [["GET", "/chat?room=1", "websocket"]],
            "the extended CONNECT, as the Upgrade it stands for"
        );
        let response = fields(&file, "http.response", &["http.response.code"]);
        assert_eq!(response, [["101"]]);
        let text = fields(&file, "websocket.opcode == 1", &["websocket.payload.text"]);
        assert_eq!(text, [vec!["hello over h2".to_owned()], vec!["hello over h2".to_owned()]], "both ways");
        // (The rotation comes once the writer has the request: the binary messages may be
        // in either file.)
        let binary: usize = files.iter().map(|f| fields(f, "websocket.opcode == 2", &["frame.number"]).len()).sum();
        assert_eq!(binary, 2);
        let comments = tshark(&file, &["-T", "fields", "-e", "frame.comment"]);
        assert!(comments.contains("WebSocket over HTTP/2 (RFC 8441), stream 1 of the connection"), "{comments}");
    })
    .await;
}

#[tokio::test]
async fn a_refused_route_is_a_404_on_its_stream_and_the_connection_lives_on() {
    within(async {
        let proxy = h2_proxy(echo_upstream().await, None).await;
        let mut send = h2_client(proxy.addr()).await;
        let (status, _) = connect_websocket(&mut send, "/nowhere").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, stream) = connect_websocket(&mut send, "/chat").await;
        assert_eq!(status, StatusCode::OK, "the same connection goes on");
        let (mut out, mut body) = stream.unwrap();
        let mut buf = Vec::new();
        assert_eq!(echo(&mut out, &mut body, &mut buf, masked_text_frame(b"still here")).await, b"still here");
        // An upstream that answers the Upgrade with a 200 does not open a tunnel: 502.
        let plain = fixed_upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let proxy = h2_proxy(plain, None).await;
        let mut send = h2_client(proxy.addr()).await;
        let (status, _) = connect_websocket(&mut send, "/chat").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    })
    .await;
}

#[tokio::test]
async fn many_websockets_share_one_connection() {
    within(async {
        let proxy = h2_proxy(echo_upstream().await, None).await;
        let send = h2_client(proxy.addr()).await;
        let mut tasks = Vec::new();
        // As many as a connection may have open at once (32).
        for i in 0..32 {
            let mut send = send.clone();
            tasks.push(tokio::spawn(async move {
                let (status, stream) = connect_websocket(&mut send, "/chat").await;
                assert_eq!(status, StatusCode::OK);
                let (mut out, mut body) = stream.unwrap();
                let mut buf = Vec::new();
                for round in 0..5 {
                    let text = format!("stream {i} round {round}");
                    assert_eq!(
                        echo(&mut out, &mut body, &mut buf, masked_text_frame(text.as_bytes())).await,
                        text.as_bytes()
                    );
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn a_peer_resetting_streams_in_a_loop_is_cut_off_and_others_are_served() {
    within(async {
        let (logs, _guard) = Logs::capture();
        let upstream = echo_upstream().await;
        let proxy = h2_proxy(upstream, None).await;
        let mut send = h2_client(proxy.addr()).await;
        let mut refused = false;
        for _ in 0..5_000 {
            let req = Request::builder().method(Method::GET).uri("http://wstap.test/chat").body(()).unwrap();
            let Ok(mut ready) = send.clone().ready().await else {
                refused = true;
                break;
            };
            let Ok((_, mut stream)) = ready.send_request(req, false) else {
                refused = true;
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
            tokio::task::yield_now().await;
        }
        let _ = &mut send;
        // Whatever the flood got, another client is served at once.
        let mut other = h2_client(proxy.addr()).await;
        let (status, _) = connect_websocket(&mut other, "/chat").await;
        assert_eq!(status, StatusCode::OK, "a flood on one connection (cut off: {refused}) holds no other up");
        assert!(refused, "the flooding connection was cut off");
        let said = logs.lines_with(&["HTTP/2 connection error", "excessive load"]);
        assert_eq!(said.len(), 1, "logged once, with why");
    })
    .await;
}

/// curl's answer over `args`: its body and the HTTP version it spoke.
fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl").args(["-s", "-w", "\n%{http_version}"]).args(args).output().unwrap();
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, version) = text.rsplit_once('\n').unwrap();
    (body.to_owned(), version.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_its_answers_over_http2_with_prior_knowledge_and_over_tls_and_http1_still_works() {
    let upstream = fixed_upstream("HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Up: yes\r\n\r\nfrom the up").await;
    let scratch = Scratch::new("h2-curl");
    std::fs::create_dir_all(&*scratch).unwrap();
    let pki = Pki::new(&scratch);
    let site = pki.site("localhost", "site");
    let toml = format!(
        "listen = []\n[[listener]]\naddr = \"127.0.0.1:0\"\nhttp2 = true\n[[listener]]\naddr = \"127.0.0.2:0\"\n\
         http2 = true\ntls = {{ cert = {:?}, key = {:?} }}\n[[route]]\nupstream = \"http://{upstream}\"\n",
        site.cert, site.key
    );
    let proxy = Proxy::start(&toml).await;
    let (plain, tls) = (proxy.addrs[0], proxy.addrs[1]);
    let answers = tokio::task::spawn_blocking(move || {
        let plain_url = format!("http://{plain}/x");
        let tls_url = format!("https://localhost:{}/x", tls.port());
        let resolve = format!("localhost:{}:127.0.0.2", tls.port());
        [
            curl(&["--http2-prior-knowledge", &plain_url]),
            curl(&["--http1.1", &plain_url]),
            curl(&["--http2", "-k", "--resolve", &resolve, &tls_url]),
            curl(&["--http1.1", "-k", "--resolve", &resolve, &tls_url]),
        ]
    })
    .await
    .unwrap();
    let versions: Vec<&str> = answers.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(versions, ["2", "1.1", "2", "1.1"]);
    assert!(answers.iter().all(|(body, _)| body == "from the up"), "{answers:?}");
}

#[tokio::test]
async fn in_mode_all_each_http2_request_is_written_as_an_http1_exchange() {
    within(async {
        let upstream = recording_upstream("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").await.0;
        let chunked = serve(|mut s| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = vec![0u8; 65536];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
                .await;
        })
        .await;
        let caps = capture_dir("h2-all");
        let toml = format!(
            "listen = []\n[[listener]]\naddr = \"127.0.0.1:0\"\nhttp2 = true\n[[route]]\npath_prefix = \"/chunked\"\n\
             upstream = \"http://{chunked}\"\n[[route]]\nupstream = \"http://{}\"\n{}",
            upstream,
            capture_toml(&caps, "mode = \"all\"\nlegs = [\"client\"]")
        );
        let proxy = Proxy::start(&toml).await;
        let mut send = h2_client(proxy.addr()).await;
        // A GET, a POST whose body has no length (chunked, restated), and a chunked answer.
        let get = Request::get("http://wstap.test/a?token=secret").body(()).unwrap();
        let (resp, _) = send.send_request(get, true).unwrap();
        let mut body = within(resp).await.unwrap().into_body();
        assert_eq!(within(body.data()).await.unwrap().unwrap(), "hello");
        let post = Request::post("http://wstap.test/b").body(()).unwrap();
        let (resp, mut out) = send.clone().ready().await.unwrap().send_request(post, false).unwrap();
        out.send_data(Bytes::from_static(b"{\"op\":"), false).unwrap();
        out.send_data(Bytes::from_static(b"\"buy\"}"), true).unwrap();
        assert_eq!(within(resp).await.unwrap().status(), StatusCode::OK);
        let get = Request::get("http://wstap.test/chunked").body(()).unwrap();
        let (resp, _) = send.clone().ready().await.unwrap().send_request(get, true).unwrap();
        let mut body = within(resp).await.unwrap().into_body();
        let mut got = Vec::new();
        while let Some(d) = within(body.data()).await {
            got.extend_from_slice(&d.unwrap());
        }
        assert_eq!(got, b"abcdefg");
        drop(send);
        proxy.begin_shutdown().await;
        proxy.stopped().await;
        let file = the_files(&caps).remove(0);
        assert_clean(&file, 1);
        let requests = fields(&file, "http.request", &["http.request.method", "http.request.uri", "http.file_data"]);
        let uris: Vec<&str> = requests.iter().map(|r| r[1].as_str()).collect();
        assert!(uris.contains(&"/b") && uris.contains(&"/chunked"), "{requests:?}");
        assert!(uris.iter().any(|u| u.starts_with("/a?token=") && !u.contains("secret")), "redacted: {requests:?}");
        let post = requests.iter().find(|r| r[1] == "/b").unwrap();
        assert_eq!(post[2], "{\"op\":\"buy\"}", "the body, chunked and joined by tshark");
        let answers = fields(&file, "http.response", &["http.response.code", "http.file_data"]);
        let bodies: Vec<&str> = answers.iter().map(|r| r[1].as_str()).collect();
        assert_eq!(answers.len(), 3, "{answers:?}");
        assert!(bodies.contains(&"hello") && bodies.contains(&"abcdefg"), "{answers:?}");
        let comments = tshark(&file, &["-T", "fields", "-e", "frame.comment"]);
        assert!(comments.contains("is an HTTP/2 request, stream 1 of the connection"), "{comments}");
    })
    .await;
}

#[test]
fn tls_listeners_offer_h2_first_unless_tls_legs_are_captured_as_records() {
    let scratch = Scratch::new("h2-alpn");
    std::fs::create_dir_all(&*scratch).unwrap();
    let site = Pki::new(&scratch).site("localhost", "site");
    let alpn = |capture: &str| {
        let toml = format!(
            "listen = []\n[[listener]]\naddr = \"127.0.0.1:0\"\nhttp2 = true\ntls = {{ cert = {:?}, key = {:?} }}\n\
             [[route]]\nupstream = \"ws://127.0.0.1:1\"\n[capture]\n{capture}\n",
            site.cert, site.key
        );
        let s = wstap::Settings::parse(&toml, "h2.toml".as_ref()).unwrap();
        let shown = s.to_string();
        (s.tls[0].1.config.alpn_protocols.clone(), shown)
    };
    let (offered, _) = alpn("tls = \"plaintext\"");
    assert_eq!(offered, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    let (offered, shown) = alpn("tls = \"encrypted\"");
    assert_eq!(offered, [b"http/1.1".to_vec()], "records are captured whole: no HTTP/2 over TLS");
    assert!(shown.contains("offers HTTP/1.1 only"), "{shown}");
}

#[tokio::test]
async fn replay_and_mock_speak_websocket_over_http2() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    within(async {
        // A session recorded through an HTTP/2 listener (its HTTP/1.1 still served).
        let caps = capture_dir("h2-replay");
        let proxy = h2_proxy(echo_upstream().await, Some(&caps)).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", proxy.addr())).await.unwrap();
        for text in ["one", "two", "three"] {
            ws.send(Message::text(text)).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
        }
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        drop(ws);
        proxy.begin_shutdown().await;
        proxy.stopped().await;
        let session = wstap_replay::open(the_files(&caps).remove(0)).unwrap().sessions.remove(0);
        let opts = wstap_replay::Options { speed: None, http2: true, ..Default::default() };
        // Replayed over HTTP/2 through a daemon's HTTP/2 listener: every echo matches.
        let proxy = h2_proxy(echo_upstream().await, None).await;
        let report = wstap_replay::replay(&session, &format!("ws://{}/chat", proxy.addr()), &opts, |_| {}).await;
        assert!(report.as_ref().is_ok_and(|r| r.matched()), "{report:?}");
        // The mock's recorded server, and the replay's recorded client, over HTTP/2.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = format!("ws://{}/chat", listener.local_addr().unwrap());
        let (mocked, replayed) = tokio::join!(
            wstap_replay::mock(&session, &listener, &opts, |_| {}),
            wstap_replay::replay(&session, &target, &opts, |_| {})
        );
        assert!(mocked.as_ref().is_ok_and(|r| r.matched()), "{mocked:?}");
        assert!(replayed.as_ref().is_ok_and(|r| r.matched()), "{replayed:?}");
        // Without --http2, an HTTP/1.1 client's Upgrade is not what the mock waits for.
        let plain =
            wstap_replay::Options { speed: None, wait: std::time::Duration::from_secs(1), ..Default::default() };
        let (mocked, _) = tokio::join!(
            wstap_replay::mock(&session, &listener, &opts, |_| {}),
            wstap_replay::replay(&session, &target, &plain, |_| {})
        );
        assert!(mocked.is_err(), "an HTTP/1.1 Upgrade is refused by an HTTP/2 mock");
    })
    .await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_with_a_goaway_after_the_keep_alive_time() {
    within(async {
        let upstream = fixed_upstream("HTTP/1.1 204 No Content\r\n\r\n").await;
        let toml = format!(
            "listen = []\n[[listener]]\naddr = \"127.0.0.1:0\"\nhttp2 = true\n[[route]]\nupstream = \"http://{upstream}\"\n\
             [limits]\nhandshake_timeout = \"1s\"\n"
        );
        let proxy = Proxy::start(&toml).await;
        let tcp = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
        let (send, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut send = send.ready().await.unwrap();
        let (resp, _) = send.send_request(Request::get("http://wstap.test/").body(()).unwrap(), true).unwrap();
        assert_eq!(within(resp).await.unwrap().status(), StatusCode::NO_CONTENT);
        let started = tokio::time::Instant::now();
        // Nothing more is asked: the daemon ends the connection (the client's task ends).
        let ended = within(conn).await.unwrap();
        assert!(ended.is_ok(), "a graceful end, not an error: {ended:?}");
        assert!(started.elapsed() >= std::time::Duration::from_millis(900), "not before the keep-alive time");
    })
    .await;
}

/// An HTTP/2 frame: its header and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off_at_the_header_list_limit_and_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(async {
        let (logs, _guard) = Logs::capture();
        let proxy = h2_proxy(echo_upstream().await, None).await;
        let mut tcp = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        tcp.write_all(&frame(4, 0, 0, &[])).await.unwrap();
        // HEADERS without END_HEADERS, then CONTINUATION frames of literal fields, never
        // ending: 200 frames of 16 KiB, far past any header list limit.
        tcp.write_all(&frame(1, 0, 1, &[0x82, 0x86, 0x84])).await.unwrap();
        let field: Vec<u8> = [&[0x00, 0x03][..], b"x-a", &[100], &[b'v'; 100]].concat();
        let block: Vec<u8> = field.iter().copied().cycle().take(16_384).collect();
        let mut sent = 0;
        for _ in 0..200 {
            if tcp.write_all(&frame(9, 0, 1, &block)).await.is_err() {
                break;
            }
            sent += 1;
        }
        // The daemon closes the connection (a GOAWAY, then the end).
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await;
        let (mut at, mut goaway) = (0, false);
        while at + 9 <= rest.len() {
            goaway |= rest[at + 3] == 7;
            at += 9 + u32::from_be_bytes([0, rest[at], rest[at + 1], rest[at + 2]]) as usize;
        }
        assert!(goaway || sent < 200, "a GOAWAY, or the connection closed under the flood ({sent} frames sent)");
        // Another client is served at once.
        let mut other = h2_client(proxy.addr()).await;
        let (status, _) = connect_websocket(&mut other, "/chat").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(logs.lines_with(&["HTTP/2 connection error"]).len(), 1, "logged once");
    })
    .await;
}

#[tokio::test]
async fn a_drain_sends_goaway_and_lets_the_live_websocket_finish() {
    within(async {
        let proxy = h2_proxy(echo_upstream().await, None).await;
        let mut send = h2_client(proxy.addr()).await;
        let (status, stream) = connect_websocket(&mut send, "/chat").await;
        assert_eq!(status, StatusCode::OK);
        let (mut out, mut body) = stream.unwrap();
        let mut buf = Vec::new();
        proxy.begin_shutdown().await;
        // No new stream is taken on the connection: GOAWAY came.
        let mut refused = false;
        for _ in 0..100 {
            let req = Request::get("http://wstap.test/chat").body(()).unwrap();
            let attempt = async { send.clone().ready().await?.send_request(req, true)?.0.await };
            if attempt.await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(refused, "a new stream after the drain began is refused");
        // The live session goes on within the grace period.
        assert_eq!(echo(&mut out, &mut body, &mut buf, masked_text_frame(b"still on")).await, b"still on");
        out.send_data(Bytes::from(wstap_wire::wsframe::encode_frame(0x88, &[3, 232], Some([1, 2, 3, 4]))), true)
            .unwrap();
        assert_eq!(next_frame(&mut body, &mut buf).await.0, 0x88);
        drop((out, body, send));
        proxy.stopped().await;
    })
    .await;
}

#[tokio::test]
async fn connect_protocol_false_advertises_no_websocket_over_http2() {
    within(async {
        let upstream = fixed_upstream("HTTP/1.1 204 No Content\r\n\r\n").await;
        let toml = format!(
            "listen = []\n[[listener]]\naddr = \"127.0.0.1:0\"\nhttp2 = true\nconnect_protocol = false\n\
             [[route]]\nupstream = \"http://{upstream}\"\n"
        );
        let proxy = Proxy::start(&toml).await;
        let mut send = h2_client(proxy.addr()).await;
        let (resp, _) = send.send_request(Request::get("http://wstap.test/").body(()).unwrap(), true).unwrap();
        assert_eq!(within(resp).await.unwrap().status(), StatusCode::NO_CONTENT);
        assert!(!send.is_extended_connect_protocol_enabled());
    })
    .await;
}
