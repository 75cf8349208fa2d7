//! The capture policy, read back from the files: what is redacted, which routes and
//! sessions are recorded, and how much of each message is kept.

use std::collections::BTreeSet;
use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

use crate::capture::{assert_clean, capture_dir, capture_toml, fields, follow, stream_of, the_files, ws_messages};
use crate::support::*;
use wstap_wire::wsframe::Opcode;

/// An echo upstream that reports each Upgrade request it saw (target and headers) and
/// sets a cookie in its 101.
#[allow(clippy::result_large_err)] // the callback's type is tungstenite's
async fn cookie_echo_upstream() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = serve(move |stream| {
        let tx = tx.clone();
        async move {
            let callback = |req: &Request, mut resp: Response| {
                let mut seen = format!("{}\n", req.uri());
                for (name, value) in req.headers() {
                    seen.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
                }
                let _ = tx.send(seen);
                resp.headers_mut().insert("set-cookie", "sid=SECRET-SETCOOKIE; Path=/".parse().unwrap());
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
        }
    })
    .await;
    (addr, rx)
}

/// How many times `needle` occurs in the raw bytes of `file`.
fn occurrences(file: &Path, needle: &str) -> usize {
    let bytes = std::fs::read(file).unwrap();
    bytes.windows(needle.len()).filter(|w| *w == needle.as_bytes()).count()
}

#[tokio::test]
async fn credentials_are_masked_in_the_file_and_reach_the_upstream_intact() {
    within(async {
        let dir = capture_dir("redact");
        let (upstream, mut seen) = cookie_echo_upstream().await;
        let redact = "[capture.redact]\npayload = ['\"password\":\"[^\"]*\"']\n";
        let proxy = Proxy::start(&config(upstream, &capture_toml(&dir, redact))).await;

        let mut req = proxy.ws_url("/chat?room=7&token=SECRET-TOKEN").into_client_request().unwrap();
        req.headers_mut().insert("authorization", "Bearer SECRET-AUTH".parse().unwrap());
        req.headers_mut().insert("cookie", "sid=SECRET-COOKIE".parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(resp.headers()["set-cookie"], "sid=SECRET-SETCOOKIE; Path=/", "the client gets its cookie");
        let login = r#"{"user":"ann","password":"SECRET-PASSWORD"}"#;
        let chat = "nothing secret here";
        for m in [login, chat] {
            ws.send(Message::text(m)).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(m), "echoed unchanged");
        }
        let upgrade = seen.recv().await.unwrap();
        for secret in ["token=SECRET-TOKEN", "Bearer SECRET-AUTH", "sid=SECRET-COOKIE"] {
            assert!(upgrade.contains(secret), "the upstream got {secret:?}: {upgrade}");
        }
        close_and_stop(ws, proxy).await;

        let files = the_files(&dir);
        assert_eq!(files.len(), 1);
        let file = &files[0];
        assert_eq!(occurrences(file, "SECRET"), 0, "no secret, in any block of the file");
        assert_clean(file, 2);

        // Both legs: the heads keep their shape, with values masked to the same length;
        // the login message is redacted where the pattern matched, the chat is whole.
        for interface in [0, 1] {
            let (up, down) = follow(file, &stream_of(file, interface));
            let up_text = String::from_utf8_lossy(&up);
            assert!(up_text.contains("?room=7&token=************ HTTP/1.1\r\n"), "{up_text}");
            let stars = |n: usize| "*".repeat(n);
            assert!(up_text.contains(&format!(": {}\r\n", stars("Bearer SECRET-AUTH".len()))), "{up_text}");
            assert!(up_text.contains(&format!(": {}\r\n", stars("sid=SECRET-COOKIE".len()))), "{up_text}");
            let down_text = String::from_utf8_lossy(&down);
            let set_cookie = format!(": {}\r\n", stars("sid=SECRET-SETCOOKIE; Path=/".len()));
            assert!(down_text.contains(&set_cookie), "{down_text}");
            let secret = r#""password":"SECRET-PASSWORD""#;
            let masked = login.replace(secret, &stars(secret.len()));
            let want = [(Opcode::Text, masked.into_bytes()), (Opcode::Text, chat.as_bytes().to_vec())];
            assert_eq!(ws_messages(&up)[..2], want, "interface {interface}, from the client");
            assert_eq!(ws_messages(&down)[..2], want, "interface {interface}, to the client");
        }
        let texts = fields(file, "websocket.payload.text", &["websocket.payload.text"]);
        assert_eq!(texts.iter().filter(|r| r[0] == chat).count(), 4, "Wireshark decodes every message: {texts:?}");

        // Comments name what was masked, never the values.
        let comments: Vec<String> =
            fields(file, "frame.comment", &["frame.comment"]).into_iter().map(|r| r.join(" ")).collect();
        let all = comments.join("\n");
        for what in [
            "redacted query token",
            "redacted header authorization",
            "redacted header cookie",
            "redacted header set-cookie",
            "redacted payload pattern 0",
        ] {
            assert!(all.contains(what), "a comment says {what:?}:\n{all}");
        }
        assert!(all.contains("GET /chat?room=7&token=************ from"), "the session comment too:\n{all}");
    })
    .await;
}

/// The session ids (in `wstap session N` comments) a capture file holds, by path.
fn captured_paths(files: &[std::path::PathBuf]) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for file in files {
        for row in fields(file, "tcp.flags.syn == 1 && frame.comment", &["frame.comment"]) {
            if let Some(rest) = row[0].split_once("GET ").map(|(_, r)| r) {
                paths.insert(rest.split(' ').next().unwrap().to_owned());
            }
        }
    }
    paths
}

/// Three routes with their own policies ahead of the catch-all.
fn policy_toml(upstream: std::net::SocketAddr, dir: &Path) -> String {
    let route = |prefix: &str, extra: &str| {
        format!("[[route]]\npath_prefix = \"{prefix}\"\nupstream = \"ws://{upstream}\"\n{extra}\n")
    };
    format!(
        "listen = [\"127.0.0.1:0\"]\n{}{}{}{}{}{}",
        route("/off", "capture = \"off\""),
        route("/sampled", "sample = 0.5"),
        route("/snapped", "max_message_bytes = \"16B\""),
        route("/capped", "max_session_bytes = \"100B\""),
        route("/", ""),
        capture_toml(dir, "sample_seed = 42")
    )
}

/// Runs the same sessions through a daemon on `policy_toml`; returns the captured paths,
/// the capture directory and its file.
async fn run_policy_sessions(name: &str) -> (BTreeSet<String>, Scratch, std::path::PathBuf) {
    let dir = capture_dir(name);
    let proxy = Proxy::start(&policy_toml(echo_upstream().await, &dir)).await;
    let mut paths = vec!["/off/1".to_owned(), "/whole".to_owned()];
    paths.extend((0..24).map(|i| format!("/sampled/{i}")));
    for path in &paths {
        let (mut ws, _) = tokio_tungstenite::connect_async(proxy.ws_url(path)).await.unwrap();
        ws.send(Message::text(path.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(path.clone()));
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(proxy.ws_url("/capped")).await.unwrap();
    for _ in 0..3 {
        let m = Message::binary(noise(80));
        ws.send(m.clone()).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), m, "the traffic is never cut");
    }
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    let (mut ws, _) = tokio_tungstenite::connect_async(proxy.ws_url("/snapped")).await.unwrap();
    for m in [Message::binary(noise(1000)), Message::text("short")] {
        ws.send(m.clone()).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), m, "the traffic is never cut");
    }
    close_and_stop(ws, proxy).await;
    let files = the_files(&dir);
    (captured_paths(&files), dir, files[0].clone())
}

#[tokio::test]
async fn each_route_records_by_its_policy_and_sampling_repeats_with_its_seed() {
    within(async {
        let (first, _dir, file) = run_policy_sessions("policy-a").await;
        assert!(first.contains("/whole") && first.contains("/snapped"), "{first:?}");
        assert!(!first.contains("/off/1"), "capture = \"off\" writes nothing: {first:?}");
        let sampled = first.iter().filter(|p| p.starts_with("/sampled/")).count();
        assert!((4..=20).contains(&sampled), "about half of 24 sessions are sampled: {sampled}");
        let (second, _, _) = run_policy_sessions("policy-b").await;
        assert_eq!(first, second, "the same seed picks the same sessions");

        // max_message_bytes: each message keeps its first 16 bytes, with a comment giving
        // its real length; shorter messages and the close frames are whole.
        assert_clean(&file, 2);
        let snapped = fields(&file, "frame.comment contains \"/snapped\"", &["tcp.stream"]);
        let stream = &snapped[0][0];
        let (up, down) = follow(&file, stream);
        for messages in [ws_messages(&up), ws_messages(&down)] {
            let lens: Vec<(Opcode, usize)> = messages.iter().map(|(op, p)| (*op, p.len())).collect();
            assert_eq!(lens[..2], [(Opcode::Binary, 16), (Opcode::Text, 5)], "{lens:?}");
            assert_eq!(lens.last().unwrap().0, Opcode::Close, "the close frame is there: {lens:?}");
        }
        let filter = format!("tcp.stream == {stream} && frame.comment");
        let comments = fields(&file, &filter, &["frame.comment"]);
        let cut = "a WebSocket frame written with 16 of its 1000 payload bytes (max_message_bytes)";
        assert_eq!(comments.iter().filter(|r| r[0].contains(cut)).count(), 2, "{comments:?}");

        // max_session_bytes: 100 bytes per direction, then frame headers, control frames
        // and the close only.
        let stream = &fields(&file, "frame.comment contains \"/capped\"", &["tcp.stream"])[0][0];
        let (up, down) = follow(&file, stream);
        for messages in [ws_messages(&up), ws_messages(&down)] {
            let lens: Vec<(Opcode, usize)> = messages.iter().map(|(op, p)| (*op, p.len())).collect();
            assert_eq!(lens[..3], [(Opcode::Binary, 80), (Opcode::Binary, 20), (Opcode::Binary, 0)], "{lens:?}");
            assert_eq!(lens.last().unwrap().0, Opcode::Close, "the close frame is there: {lens:?}");
        }
        let filter = format!("tcp.stream == {stream} && frame.comment contains \"(max_session_bytes)\"");
        assert_eq!(fields(&file, &filter, &["frame.comment"]).len(), 4, "one comment per cut frame");
    })
    .await;
}

#[tokio::test]
async fn a_reload_gives_new_sessions_the_new_policy_and_leaves_live_ones_alone() {
    let (logs, _capturing) = Logs::capture();
    within(async {
        let dir = scratch_dir("policy-reload");
        let (config, captures) = (dir.join("wstap.toml"), dir.join("captures"));
        let echo = echo_upstream().await;
        let write = |route: &str| {
            let toml = format!(
                "listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"ws://{echo}\"\n{route}\n{}",
                capture_toml(&captures, "")
            );
            std::fs::write(&config, toml).unwrap();
        };
        write("capture = \"off\"");
        let proxy = Proxy::start_file(&config).await;
        let (mut before, _) = tokio_tungstenite::connect_async(proxy.ws_url("/before")).await.unwrap();
        round_trip(&mut before, "one").await;

        write("max_message_bytes = \"2B\"");
        proxy.reload().await;
        eventually("the reload is applied", || !logs.lines_with(&["config reloaded"]).is_empty()).await;
        let (mut after, _) = tokio_tungstenite::connect_async(proxy.ws_url("/after")).await.unwrap();
        round_trip(&mut after, "three").await;
        round_trip(&mut before, "two").await;
        after.close(None).await.unwrap();
        while let Some(Ok(_)) = after.next().await {}
        drop(after);
        close_and_stop(before, proxy).await;

        let files = the_files(&captures);
        let paths = captured_paths(&files);
        assert_eq!(paths, BTreeSet::from(["/after".to_owned()]), "the live session keeps its policy (off)");
        let (up, _) = follow(&files[0], &stream_of(&files[0], 0));
        assert_eq!(ws_messages(&up)[0], (Opcode::Text, b"th".to_vec()), "the new session has the new snap");
    })
    .await;
}

/// Sends `text` and checks its echo.
async fn round_trip(ws: &mut WsClient, text: &'static str) {
    let m = Message::text(text);
    ws.send(m.clone()).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), m);
}

/// An upstream that keeps its connections alive: a `200 ok` for every request (its body
/// read by its length), and for an Upgrade a `101`, then a text frame, then what the
/// client sends until it leaves.
async fn keep_alive_upstream() -> std::net::SocketAddr {
    keep_alive_upstream_refusing(false).await
}

/// [`keep_alive_upstream`], or one that refuses every Upgrade with a `401`.
async fn keep_alive_upstream_refusing(refuse: bool) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    serve(move |s| async move {
        let mut r = tokio::io::BufReader::new(s);
        loop {
            let head = read_head(&mut r).await;
            if head.is_empty() {
                return;
            }
            let len =
                head.lines().find_map(|l| l.strip_prefix("content-length: ").or(l.strip_prefix("Content-Length: ")));
            let mut body = vec![0; len.map_or(0, |n| n.trim().parse().unwrap())];
            r.read_exact(&mut body).await.unwrap();
            if has_header(&head, "transfer-encoding", "chunked") {
                // To the last chunk and the trailers' empty line.
                let mut line = String::new();
                let mut last = false;
                while {
                    line.clear();
                    tokio::io::AsyncBufReadExt::read_line(&mut r, &mut line).await.unwrap() > 0
                } {
                    if last && line == "\r\n" {
                        break;
                    }
                    last |= line == "0\r\n";
                }
            }
            if !has_header(&head, "upgrade", "websocket") {
                r.get_mut().write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
                continue;
            }
            if refuse {
                r.get_mut().write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\nno").await.unwrap();
                continue;
            }
            r.get_mut().write_all(SWITCHED.as_bytes()).await.unwrap();
            r.get_mut().write_all(b"\x81\x0dPRIVATE-REPLY").await.unwrap();
            let mut rest = Vec::new();
            let _ = r.read_to_end(&mut rest).await;
            return;
        }
    })
    .await
}

/// Reads a `200` and its two-byte body.
async fn read_ok(r: &mut tokio::io::BufReader<tokio::net::TcpStream>) {
    read_status(r, 200).await;
}

/// Reads an answer of `status` and its two-byte body.
async fn read_status(r: &mut tokio::io::BufReader<tokio::net::TcpStream>, status: u16) {
    use tokio::io::AsyncReadExt;
    assert_eq!(status_of(&read_head(r).await), status);
    let mut body = [0; 2];
    r.read_exact(&mut body).await.unwrap();
}

/// `/public` recorded whole, `/private` not at all, on one upstream.
fn public_private_toml(upstream: std::net::SocketAddr, dir: &Path, admin: bool) -> String {
    let route = |prefix: &str, mode: &str| {
        format!("[[route]]\npath_prefix = \"{prefix}\"\nupstream = \"ws://{upstream}\"\ncapture = \"{mode}\"\n")
    };
    let admin = if admin { "[admin]\nlisten = \"127.0.0.1:0\"\n" } else { "" };
    format!(
        "listen = [\"127.0.0.1:0\"]\n{}{}{admin}{}",
        route("/public", "all"),
        route("/private", "off"),
        capture_toml(dir, "")
    )
}

/// A browser's way: one kept-alive connection carries a request of a route recorded
/// whole, then a POST and an Upgrade of a route that records nothing (in the forms hyper
/// takes: empty lines first, a lowercase method, bare LF line ends). Nothing of the
/// private requests, their bodies or the session's messages is in the file, `/sessions`
/// says the session is not captured, and a public request between them is recorded.
#[tokio::test]
async fn a_route_that_records_nothing_is_not_recorded_on_a_connection_recorded_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(async {
        let dir = capture_dir("per-request");
        let proxy = Proxy::start(&public_private_toml(keep_alive_upstream().await, &dir, true)).await;
        let mut r = tokio::io::BufReader::new(tokio::net::TcpStream::connect(proxy.addr()).await.unwrap());
        r.get_mut().write_all(b"GET /public/page HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        read_ok(&mut r).await;
        let post = b"\r\npost /private/form?PRIVATE-QUERY=1 HTTP/1.1\nHost: a\nContent-Length: 12\n\nPRIVATE-BODY";
        r.get_mut().write_all(post).await.unwrap();
        read_ok(&mut r).await;
        r.get_mut().write_all(b"GET /public/again HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        read_ok(&mut r).await;
        let upgrade =
            UPGRADE.replace("GET /chat", "GET /private/ws").replace("Host: app.example", "X-Private: PRIVATE-HEAD");
        r.get_mut().write_all(upgrade.as_bytes()).await.unwrap();
        assert_eq!(status_of(&read_head(&mut r).await), 101);
        let mut reply = [0; 15];
        r.read_exact(&mut reply).await.unwrap();
        r.get_mut().write_all(&masked_text_frame(b"PRIVATE-MESSAGE")).await.unwrap();
        let admin = proxy.admin.expect("admin listener");
        let sessions = raw_exchange(admin, b"GET /sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        let sessions: serde_json::Value = serde_json::from_str(sessions.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(sessions[0]["capture"]["captured"], false, "{sessions}");
        drop(r);
        proxy.begin_shutdown().await;
        proxy.stopped().await;
        let files = the_files(&dir);
        for file in &files {
            let bytes = std::fs::read(file).unwrap();
            for secret in ["PRIVATE", "private"] {
                assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} in {file:?}");
            }
            assert_clean(file, 2);
        }
        let all: Vec<_> = files.iter().flat_map(|f| fields(f, "http.request", &["http.request.uri"])).collect();
        let want = [["/public/page"], ["/public/page"], ["/public/again"], ["/public/again"]];
        assert_eq!(all, want, "the public requests are recorded on both legs, and only they");
        let stops =
            files.iter().flat_map(|f| fields(f, "frame.comment contains \"capture stops here\"", &["frame.comment"]));
        assert_eq!(stops.count(), 4, "each leg says, each time, why its capture stopped");
    })
    .await;
}

/// A connection recorded whole whose client goes on after refused Upgrades in every form
/// hyper takes (empty lines first, a lowercase method, bare LF line ends, an Upgrade with
/// a body): every later head is found and redacted, never written as if it were frames.
#[tokio::test]
async fn after_a_refused_upgrade_every_form_hyper_takes_is_followed_and_redacted() {
    use tokio::io::AsyncWriteExt;
    within(async {
        let dir = capture_dir("desync");
        let upstream = keep_alive_upstream_refusing(true).await;
        let toml = format!(
            "listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"ws://{upstream}\"\ncapture = \"all\"\n{}",
            capture_toml(&dir, "")
        );
        let proxy = Proxy::start(&toml).await;
        let mut r = tokio::io::BufReader::new(tokio::net::TcpStream::connect(proxy.addr()).await.unwrap());
        r.get_mut().write_all(UPGRADE.as_bytes()).await.unwrap();
        read_status(&mut r, 401).await;
        let requests: [&[u8]; 2] = [
            b"\r\nget /x HTTP/1.1\r\nAuthorization: Bearer SECRET-A\r\n\r\n",
            b"GET /y HTTP/1.1\nCookie: SECRET-B\n\n",
        ];
        for request in requests {
            r.get_mut().write_all(request).await.unwrap();
            read_ok(&mut r).await;
        }
        let with_body = UPGRADE.replace("\r\n\r\n", "\r\nContent-Length: 7\r\n\r\n{\"a\":1}");
        r.get_mut().write_all(with_body.as_bytes()).await.unwrap();
        read_status(&mut r, 401).await;
        r.get_mut().write_all(b"GET /z HTTP/1.1\r\nAuthorization: Bearer SECRET-C\r\n\r\n").await.unwrap();
        read_ok(&mut r).await;
        drop(r);
        proxy.begin_shutdown().await;
        proxy.stopped().await;
        let file = &the_files(&dir)[0];
        assert_eq!(occurrences(file, "SECRET-"), 0, "every head found and redacted");
        // Wireshark calls the empty line before a request malformed, which it is not
        // (RFC 9112 §2.2): the file holds what the client sent, and nothing else is said.
        let expert = crate::capture::tshark(file, &["-q", "-z", "expert"]);
        assert!(!expert.contains("Warnings (") && expert.contains("Errors (1)"), "{expert}");
        assert!(expert.contains("Leading CRLF"), "{expert}");
        let (from_client, _) = follow(file, &stream_of(file, 0));
        let text = String::from_utf8_lossy(&from_client).into_owned();
        for line in ["get /x HTTP/1.1", "GET /y HTTP/1.1", "GET /z HTTP/1.1", "{\"a\":1}"] {
            assert!(text.contains(line), "{line:?} in what the client sent: {text}");
        }
    })
    .await;
}

/// Payload patterns reach request bodies: a secret split across the chunks of a POST and
/// one in its trailers are blanked in the file, and reach the upstream intact.
#[tokio::test]
async fn payload_patterns_are_applied_to_http_bodies_and_trailers() {
    use tokio::io::AsyncWriteExt;
    within(async {
        let dir = capture_dir("bodies");
        let upstream = keep_alive_upstream().await;
        let redact = "[capture.redact]\npayload = ['hunter2', 'SIG-[0-9]+']\n";
        let toml = format!(
            "listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"ws://{upstream}\"\ncapture = \"all\"\n{}",
            capture_toml(&dir, redact)
        );
        let proxy = Proxy::start(&toml).await;
        let mut r = tokio::io::BufReader::new(tokio::net::TcpStream::connect(proxy.addr()).await.unwrap());
        let post = b"POST /login HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
            9\r\npassword=\r\n4\r\nhunt\r\n3\r\ner2\r\n0\r\nX-Sig: SIG-12345\r\n\r\n";
        r.get_mut().write_all(post).await.unwrap();
        read_ok(&mut r).await;
        r.get_mut()
            .write_all(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 16\r\n\r\n{\"pw\":\"hunter2\"}")
            .await
            .unwrap();
        read_ok(&mut r).await;
        drop(r);
        proxy.begin_shutdown().await;
        proxy.stopped().await;
        let file = &the_files(&dir)[0];
        for secret in ["hunt", "er2", "SIG-12345"] {
            assert_eq!(occurrences(file, secret), 0, "{secret}");
        }
        assert_clean(file, 2);
        let (from_client, _) = follow(file, &stream_of(file, 0));
        let text = String::from_utf8_lossy(&from_client).into_owned();
        assert!(text.contains("9\r\npassword=\r\n4\r\n****\r\n3\r\n***\r\n0\r\nX-Sig: *********"), "{text}");
        let comments = fields(file, "frame.comment contains \"payload pattern\"", &["frame.comment"]);
        assert!(!comments.is_empty(), "the packets say what was redacted");
    })
    .await;
}

/// Sessions in the default mode whose Upgrade request a text search of the kept bytes
/// used to miss: pipelined behind a request in the same write, in absolute form, with
/// bare LF line ends. Each session is captured from its Upgrade request (redacted), and
/// both halves of the client leg decode.
#[tokio::test]
async fn upgrades_pipelined_absolute_or_with_bare_line_feeds_start_their_sessions() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(async {
        let dir = capture_dir("upgrade-forms");
        let upstream = keep_alive_upstream().await;
        let proxy = Proxy::start(&config(upstream, &capture_toml(&dir, ""))).await;
        let upgrade = UPGRADE.replace("\r\n\r\n", "\r\nAuthorization: Bearer SECRET-AUTH\r\n\r\n");
        let forms = [
            (format!("GET /a HTTP/1.1\r\nHost: a\r\n\r\n{}", upgrade.replace("/chat", "/chat?token=SECRET-1")), true),
            (upgrade.replace("GET /chat", "GET http://app.example/chat?token=SECRET-2"), false),
            (upgrade.replace("/chat", "/chat?token=SECRET-3").replace("\r\n", "\n"), false),
        ];
        for (i, (request, pipelined)) in forms.iter().enumerate() {
            let mut r = tokio::io::BufReader::new(tokio::net::TcpStream::connect(proxy.addr()).await.unwrap());
            r.get_mut().write_all(request.as_bytes()).await.unwrap();
            if *pipelined {
                read_ok(&mut r).await;
            }
            assert_eq!(status_of(&read_head(&mut r).await), 101);
            let mut reply = [0; 15];
            r.read_exact(&mut reply).await.unwrap();
            r.get_mut().write_all(&masked_text_frame(format!("hello {i}").as_bytes())).await.unwrap();
            r.get_mut().shutdown().await.unwrap();
            let mut rest = Vec::new();
            let _ = r.read_to_end(&mut rest).await;
        }
        proxy.begin_shutdown().await;
        proxy.stopped().await;
        let file = &the_files(&dir)[0];
        assert_eq!(occurrences(file, "SECRET"), 0, "every Upgrade request found, and redacted");
        assert_clean(file, 2);
        let texts = fields(file, "frame.interface_id == 0 && websocket.payload.text", &["websocket.payload.text"]);
        let texts: Vec<&str> = texts.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(texts, ["PRIVATE-REPLY", "hello 0", "PRIVATE-REPLY", "hello 1", "PRIVATE-REPLY", "hello 2"]);
    })
    .await;
}

/// A bare LF in a chunked body's trailers, which hyper reads as a trailer byte: a framer
/// that took it for the body's end would read the requests behind it as a body and write
/// them, credentials and a `capture = "off"` request included. The capture stops there.
#[tokio::test]
async fn a_bare_line_feed_in_chunked_trailers_never_lets_later_requests_through() {
    use tokio::io::AsyncWriteExt;
    within(async {
        let dir = capture_dir("trailer-lf");
        let proxy = Proxy::start(&public_private_toml(keep_alive_upstream().await, &dir, false)).await;
        let mut r = tokio::io::BufReader::new(tokio::net::TcpStream::connect(proxy.addr()).await.unwrap());
        r.get_mut().write_all(b"GET /public/0 HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
        read_ok(&mut r).await;
        let trap = b"POST /public/1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n\
            GET /public/x HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
        r.get_mut().write_all(trap).await.unwrap();
        read_ok(&mut r).await;
        r.get_mut()
            .write_all(b"GET /public/2 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer PRIVATE-AUTH\r\n\r\n")
            .await
            .unwrap();
        read_ok(&mut r).await;
        let off = b"POST /private/PRIVATE-PATH HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\nPRIVATE-BODY";
        r.get_mut().write_all(off).await.unwrap();
        read_ok(&mut r).await;
        drop(r);
        proxy.begin_shutdown().await;
        proxy.stopped().await;
        for file in the_files(&dir) {
            assert_eq!(occurrences(&file, "PRIVATE"), 0, "{file:?}");
            let stops = fields(&file, "frame.comment contains \"could not be followed\"", &["frame.comment"]);
            assert!(!stops.is_empty(), "the file says why its capture stopped");
        }
    })
    .await;
}

/// Legs follow each request's route: on a connection recorded whole, a request of a
/// route recording the client leg alone is on the client leg and not on the upstream's,
/// whose capture stops before it and starts again with the next request that records it.
#[tokio::test]
async fn each_request_is_recorded_on_the_legs_its_own_route_lists() {
    use tokio::io::AsyncWriteExt;
    within(async {
        let dir = capture_dir("per-request-legs");
        let upstream = keep_alive_upstream().await;
        let route = |prefix: &str, legs: &str| {
            format!("[[route]]\npath_prefix = \"{prefix}\"\nupstream = \"ws://{upstream}\"\ncapture = \"all\"\nlegs = {legs}\n")
        };
        let toml = format!(
            "listen = [\"127.0.0.1:0\"]\n{}{}{}",
            route("/both", "[\"client\", \"upstream\"]"),
            route("/client", "[\"client\"]"),
            capture_toml(&dir, "")
        );
        let proxy = Proxy::start(&toml).await;
        let mut r = tokio::io::BufReader::new(tokio::net::TcpStream::connect(proxy.addr()).await.unwrap());
        for path in ["/both/1", "/client/2", "/both/3"] {
            r.get_mut().write_all(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes()).await.unwrap();
            read_ok(&mut r).await;
        }
        drop(r);
        proxy.begin_shutdown().await;
        proxy.stopped().await;
        let file = &the_files(&dir)[0];
        assert_clean(file, 2);
        let seen = fields(file, "http.request", &["frame.interface_id", "http.request.uri"]);
        let on = |leg: &str| seen.iter().filter(|r| r[0] == leg).map(|r| r[1].clone()).collect::<Vec<_>>();
        assert_eq!(on("0"), ["/both/1", "/client/2", "/both/3"], "the client leg: every request");
        assert_eq!(on("1"), ["/both/1", "/both/3"], "the upstream leg: its routes' requests only");
    })
    .await;
}
