//! Plain HTTP/1.1 through the proxy: header rules, keep-alive mapping, and bodies that
//! stream both ways instead of being buffered whole.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::support::*;

/// Reads a response with a `Content-Length` body.
async fn read_response(r: &mut BufReader<TcpStream>) -> (String, String) {
    let head = read_head(r).await;
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn get_keeps_end_to_end_headers_and_their_case_and_drops_hop_by_hop_ones() {
    within(async {
        let (upstream, mut rx) = recording_upstream(
            "HTTP/1.1 200 OK\r\nX-Upstream-Case: Yes\r\nConnection: keep-alive, X-Hop\r\n\
             X-Hop: secret\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
        )
        .await;
        let proxy = Proxy::start(&config(upstream, "")).await;
        let request = "GET /items?page=2 HTTP/1.1\r\nHost: shop.example\r\nX-Custom-Case: v\r\n\
            Connection: close, X-Drop\r\nX-Drop: 1\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
            X-Forwarded-For: 203.0.113.9\r\n\r\n";
        let response = raw_exchange(proxy.addr(), request.as_bytes()).await;

        let seen = rx.recv().await.unwrap();
        assert!(seen.starts_with("GET /items?page=2 HTTP/1.1\r\n"), "{seen}");
        assert!(seen.contains("X-Custom-Case: v\r\n"), "case kept: {seen}");
        assert!(has_header(&seen, "x-forwarded-for", "203.0.113.9, 127.0.0.1"), "{seen}");
        assert!(has_header(&seen, "x-forwarded-host", "shop.example"), "{seen}");
        assert!(has_header(&seen, "x-forwarded-proto", "http"), "{seen}");
        assert!(has_header(&seen, "host", &upstream.to_string()), "the upstream's Host by default: {seen}");
        let seen_lower = seen.to_ascii_lowercase();
        for gone in ["x-drop", "proxy-connection", "te:", "connection: close"] {
            assert!(!seen_lower.contains(gone), "{gone} must not reach the upstream: {seen}");
        }

        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("X-Upstream-Case: Yes\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\nok"), "{response}");
        let response_lower = response.to_ascii_lowercase();
        for gone in ["x-hop", "keep-alive"] {
            assert!(!response_lower.contains(gone), "{gone} must not reach the client: {response}");
        }
    })
    .await;
}

#[tokio::test]
async fn preserve_host_and_x_forwarded_are_configurable() {
    within(async {
        let (upstream, mut rx) = recording_upstream("HTTP/1.1 204 No Content\r\n\r\n").await;
        let proxy = Proxy::start(&config(upstream, "[proxy]\npreserve_host = true\nx_forwarded = false")).await;
        raw_exchange(proxy.addr(), b"GET / HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n").await;
        let seen = rx.recv().await.unwrap();
        assert!(seen.contains("Host: shop.example\r\n"), "{seen}");
        assert!(!seen.to_ascii_lowercase().contains("x-forwarded"), "{seen}");
    })
    .await;
}

/// An upstream answering each request with `conn N PATH` (N: the connection's number,
/// from 1, counted in `connections`): every request on a connection, or with `once` the
/// first alone, after which it closes the connection, saying so in its answer on the
/// second connection only.
async fn numbered_upstream(connections: Arc<AtomicUsize>, once: bool) -> std::net::SocketAddr {
    serve(move |s| {
        let n = connections.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let mut r = BufReader::new(s);
            loop {
                let head = read_head(&mut r).await;
                if head.is_empty() {
                    return;
                }
                let path = head.split(' ').nth(1).unwrap().to_owned();
                let body = format!("conn {n} {path}");
                let close = if once && n == 2 { "Connection: close\r\n" } else { "" };
                let answer = format!("HTTP/1.1 200 OK\r\n{close}Content-Length: {}\r\n\r\n{body}", body.len());
                r.get_mut().write_all(answer.as_bytes()).await.unwrap();
                if once {
                    return;
                }
            }
        }
    })
    .await
}

/// GETs each of `paths` in turn on one connection to `proxy`: the bodies.
async fn get_each(proxy: &Proxy, paths: &[&str]) -> Vec<String> {
    let mut r = BufReader::new(TcpStream::connect(proxy.addr()).await.unwrap());
    let mut bodies = Vec::new();
    for path in paths {
        r.get_mut().write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut r).await;
        assert_eq!(status_of(&head), 200);
        bodies.push(body);
    }
    bodies
}

#[tokio::test]
async fn requests_on_one_client_connection_share_one_upstream_connection() {
    within(async {
        let connections = Arc::new(AtomicUsize::new(0));
        let proxy = Proxy::start(&config(numbered_upstream(connections.clone(), false).await, "")).await;
        assert_eq!(get_each(&proxy, &["/a", "/b", "/c"]).await, ["conn 1 /a", "conn 1 /b", "conn 1 /c"]);
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    })
    .await;
}

/// Between requests a kept-alive connection waits parked outside the HTTP server, holding
/// no buffer (`wstap_connections_idle`), and what a client sends ahead of an answer
/// waits for its turn: pipelined requests, large POSTs among them, are answered in order
/// on one connection, as are an HTTP/1.0 client's that asks to be kept alive.
#[tokio::test]
async fn kept_alive_connections_park_between_requests_and_pipelined_requests_keep_their_order() {
    within(async {
        // It reads each body by its length: a body cut or run together shifts the paths.
        let upstream = keep_alive_upstream().await;
        let proxy = Proxy::start(&config(upstream, "[admin]\nlisten = \"127.0.0.1:0\"")).await;
        let admin = proxy.admin.unwrap();
        let mut r = BufReader::new(TcpStream::connect(proxy.addr()).await.unwrap());
        let big = vec![b'x'; 200_000];
        let mut pipelined =
            format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", big.len()).into_bytes();
        pipelined.extend_from_slice(&big);
        pipelined
            .extend_from_slice(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
        r.get_mut().write_all(&pipelined).await.unwrap();
        for said in ["/a", "/b", "/c"] {
            let (head, body) = read_response(&mut r).await;
            assert_eq!((status_of(&head), body.as_str()), (200, said));
        }
        let parked = || async { crate::tls::metric(admin, "wstap_connections_idle ").await == 1 };
        let mut waited = 0;
        while !parked().await {
            assert!(waited < 500, "the connection parks once its answer is written");
            waited += 1;
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for path in ["/d", "/e"] {
            let request = format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
            r.get_mut().write_all(request.as_bytes()).await.unwrap();
            let (head, body) = read_response(&mut r).await;
            assert_eq!((status_of(&head), body.as_str()), (200, path));
        }
    })
    .await;
}

/// A kept upstream connection waits parked between requests: when the upstream closes it
/// meanwhile (the first answer keeps the connection alive by its words, and the upstream
/// closes it), or its answer did not keep it alive (the second says it closes), the next
/// request goes over a new one.
#[tokio::test]
async fn an_upstream_connection_closed_while_parked_is_replaced() {
    within(async {
        let connections = Arc::new(AtomicUsize::new(0));
        let proxy = Proxy::start(&config(numbered_upstream(connections.clone(), true).await, "")).await;
        assert_eq!(get_each(&proxy, &["/a", "/b", "/c"]).await, ["conn 1 /a", "conn 2 /b", "conn 3 /c"]);
    })
    .await;
}

#[tokio::test]
async fn a_post_body_streams_to_the_upstream_before_it_is_complete() {
    within(async {
        let (tx, first_seen) = oneshot::channel::<()>();
        let upstream = serve_once(move |s| {
            async move {
                let mut r = BufReader::new(s);
                let head = read_head(&mut r).await;
                assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
                // Read the chunked body as raw lines; tell the test once the first chunk is in.
                let (mut body, mut tx) = (String::new(), Some(tx));
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).await.unwrap();
                    body.push_str(&line);
                    if body.contains("first part") {
                        if let Some(tx) = tx.take() {
                            tx.send(()).unwrap();
                        }
                    }
                    if body.ends_with("\r\n0\r\n\r\n") || line.is_empty() {
                        break;
                    }
                }
                let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                r.get_mut().write_all(answer.as_bytes()).await.unwrap();
            }
        })
        .await;
        let proxy = Proxy::start(&config(upstream, "")).await;
        let mut r = BufReader::new(TcpStream::connect(proxy.addr()).await.unwrap());
        r.get_mut()
            .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\na\r\nfirst part\r\n")
            .await
            .unwrap();
        first_seen.await.expect("the upstream got the first chunk while the body was still open");
        r.get_mut().write_all(b"b\r\nsecond part\r\n0\r\n\r\n").await.unwrap();
        let (head, body) = read_response(&mut r).await;
        assert_eq!(status_of(&head), 200);
        let first = body.find("first part").unwrap();
        assert!(body[first..].contains("second part"), "{body}");
    })
    .await;
}

#[tokio::test]
async fn a_response_body_streams_to_the_client_before_it_is_complete() {
    within(async {
        let (go_tx, go) = oneshot::channel::<()>();
        let upstream = serve_once(move |s| async move {
            let mut r = BufReader::new(s);
            read_head(&mut r).await;
            let w = r.get_mut();
            w.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nearly\r\n").await.unwrap();
            go.await.unwrap();
            w.write_all(b"4\r\nlate\r\n0\r\n\r\n").await.unwrap();
        })
        .await;
        let proxy = Proxy::start(&config(upstream, "")).await;
        let mut r = BufReader::new(TcpStream::connect(proxy.addr()).await.unwrap());
        r.get_mut().write_all(b"GET /feed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let head = read_head(&mut r).await;
        assert_eq!(status_of(&head), 200);
        let mut seen = String::new();
        while !seen.contains("early") {
            assert!(r.read_line(&mut seen).await.unwrap() > 0, "body ended early: {seen}");
        }
        go_tx.send(()).unwrap();
        r.read_to_string(&mut seen).await.unwrap();
        assert!(seen.contains("late"), "{seen}");
    })
    .await;
}

#[tokio::test]
async fn routes_match_the_normalised_path_and_paths_that_climb_out_get_400() {
    within(async {
        let (upstream, mut seen) = recording_upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let routes = |extra: &str| {
            format!(
                "listen = [\"127.0.0.1:0\"]\n[[route]]\npath_prefix = \"/ws\"\nupstream = \"ws://{upstream}\"\n{extra}"
            )
        };
        let proxy = Proxy::start(&routes("")).await;
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        for (path, status) in [
            ("/ws/../admin", 400),
            ("/ws/%2e%2e/admin", 400),
            ("/ws%2f..%2fadmin", 400),
            ("/ws/%2E%2E%2F..%2Fadmin", 400),
            ("/admin", 404),
            ("/../ws", 400),
        ] {
            let response = raw_exchange(proxy.addr(), get(path).as_bytes()).await;
            assert_eq!(status_of(&response), status, "{path}: {response}");
        }
        // What is routed is what is forwarded: the normalised path, the query as it came.
        for (path, forwarded) in [("/ws/./chat//room?a=%2e", "/ws/chat/room?a=%2e"), ("/%77s/x", "/ws/x")] {
            let response = raw_exchange(proxy.addr(), get(path).as_bytes()).await;
            assert_eq!(status_of(&response), 200, "{path}: {response}");
            let head = seen.recv().await.unwrap();
            assert!(head.starts_with(&format!("GET {forwarded} HTTP/1.1\r\n")), "{path}: {head}");
        }
        // The opt-out, for apps that need encoded slashes: kept encoded, and forwarded.
        let proxy = Proxy::start(&routes("[proxy]\nallow_encoded_slash = true")).await;
        let response = raw_exchange(proxy.addr(), get("/ws/a%2Fb").as_bytes()).await;
        assert_eq!(status_of(&response), 200, "{response}");
        assert!(seen.recv().await.unwrap().starts_with("GET /ws/a%2Fb HTTP/1.1\r\n"));
        // With a catch-all `/`, dot-segments that stay under it are fine (as in nginx): the
        // normalised path picks its route. Climbing out of `/ws` is still refused.
        let (other, mut other_seen) = recording_upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let proxy =
            Proxy::start(&routes(&format!("[[route]]\npath_prefix = \"/\"\nupstream = \"ws://{other}\""))).await;
        let response = raw_exchange(proxy.addr(), get("/static/../ws/x").as_bytes()).await;
        assert_eq!(status_of(&response), 200, "{response}");
        assert!(seen.recv().await.unwrap().starts_with("GET /ws/x HTTP/1.1\r\n"), "routed to /ws");
        let response = raw_exchange(proxy.addr(), get("/ws/../static").as_bytes()).await;
        assert_eq!(status_of(&response), 400, "{response}");
        let response = raw_exchange(proxy.addr(), get("/a/./b/../c").as_bytes()).await;
        assert_eq!(status_of(&response), 200, "{response}");
        assert!(other_seen.recv().await.unwrap().starts_with("GET /a/c HTTP/1.1\r\n"));
    })
    .await;
}

/// An upstream that answers every request on a connection (read by its length) with
/// `200` and the request's path, keeping the connection alive.
async fn keep_alive_upstream() -> std::net::SocketAddr {
    serve(|s| async move {
        let mut r = BufReader::new(s);
        loop {
            let head = read_head(&mut r).await;
            if head.is_empty() {
                return;
            }
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .map_or(0, |v| v.parse::<usize>().unwrap());
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).await.unwrap();
            if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
                // Sizes of one line each here: to the last chunk, and the empty trailers.
                let mut line = String::new();
                while line != "0\r\n" {
                    line.clear();
                    r.read_line(&mut line).await.unwrap();
                }
                r.read_line(&mut line).await.unwrap();
            }
            let path = head.split(' ').nth(1).unwrap().to_owned();
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}", path.len());
            r.get_mut().write_all(answer.as_bytes()).await.unwrap();
        }
    })
    .await
}

/// hyper prepares an upgrade for every HTTP/1.1 request with an `Upgrade` field (and
/// every CONNECT), whatever its answer, and hands the socket to it when the turn ends:
/// after a keep-alive answer that did not switch (no `Connection: upgrade`, an upstream
/// that is down, a CONNECT refused), the connection is taken back and the client's next
/// request is answered on it.
#[tokio::test]
async fn requests_hyper_prepares_an_upgrade_for_keep_their_connection() {
    within(async {
        let live = keep_alive_upstream().await;
        let down = closed_port().await;
        let toml = format!(
            "listen = [\"127.0.0.1:0\"]\n\
             [[route]]\npath_prefix = \"/down\"\nupstream = \"ws://{down}\"\n\
             [[route]]\nupstream = \"ws://{live}\"\n"
        );
        let proxy = Proxy::start(&toml).await;
        let cases = [
            ("Upgrade without Connection: upgrade", "GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n", 200),
            (
                "WebSocket Upgrade to an upstream that is down",
                "GET /down HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                502,
            ),
            ("CONNECT", "CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n", 405),
        ];
        let mut lost = Vec::new();
        for (what, first, want) in cases {
            let mut r = BufReader::new(TcpStream::connect(proxy.addr()).await.unwrap());
            r.get_mut().write_all(first.as_bytes()).await.unwrap();
            let (head, _) = read_response(&mut r).await;
            assert_eq!(status_of(&head), want, "{what}: {head}");
            assert!(!head.to_ascii_lowercase().contains("connection: close"), "{what}: kept alive by its words");
            let _ = r.get_mut().write_all(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let mut line = String::new();
            let _ = r.read_line(&mut line).await;
            if !line.starts_with("HTTP/1.1 200") {
                lost.push(format!("{what}: next request got {line:?}"));
            }
        }
        assert!(lost.is_empty(), "the connection was dropped after a keep-alive answer: {lost:#?}");
    })
    .await;
}

/// A request with both `Transfer-Encoding` and `Content-Length` closes its connection
/// after the answer (RFC 9112 §6.3: the server MUST, against smuggling): hyper says so in
/// the answer's head, and the gate does not park a connection hyper closes.
#[tokio::test]
async fn a_request_with_both_transfer_encoding_and_content_length_closes_its_connection() {
    within(async {
        let upstream = keep_alive_upstream().await;
        let proxy = Proxy::start(&config(upstream, "")).await;
        let mut r = BufReader::new(TcpStream::connect(proxy.addr()).await.unwrap());
        let smuggle = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
                        3\r\nabc\r\n0\r\n\r\n";
        r.get_mut().write_all(smuggle).await.unwrap();
        let (head, body) = read_response(&mut r).await;
        assert_eq!((status_of(&head), body.as_str()), (200, "/a"));
        let _ = r.get_mut().write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest).await;
        let rest = String::from_utf8_lossy(&rest);
        assert!(rest.is_empty(), "the connection must close after the answer, got: {rest:?}");
    })
    .await;
}
