//! Bad input and bad upstreams get the right status, and a good session running on the
//! same daemon at the same time is unharmed by any of them.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn each_error_gets_its_status_and_a_live_session_is_unharmed() {
    within(async {
        let echo = echo_upstream().await;
        let by_host = fixed_upstream("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nby host").await;
        let refused = closed_port().await;
        // Accepts, reads, never answers.
        let silent = serve(|mut s| async move {
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        })
        .await;
        let toml = format!(
            "listen = [\"127.0.0.1:0\"]\n\
             [[route]]\npath_prefix = \"/ws\"\nupstream = \"ws://{echo}\"\n\
             [[route]]\npath_prefix = \"/refused\"\nupstream = \"ws://{refused}\"\n\
             [[route]]\npath_prefix = \"/silent\"\nupstream = \"ws://{silent}\"\n\
             [[route]]\nhost = \"ws.example\"\nupstream = \"ws://{by_host}\"\n\
             [limits]\nupstream_timeout = \"300ms\"\nhandshake_timeout = \"300ms\"\nmax_header_size = \"4KiB\"\n"
        );
        let proxy = Proxy::start(&toml).await;
        let addr = proxy.addr();
        let mut witness = Witness::open(&proxy.ws_url("/ws")).await;

        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let big_head = format!("GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(8 * 1024));
        let cases: Vec<(&str, String, u16)> = vec![
            ("no route", get("/nowhere"), 404),
            ("upstream refused", get("/refused/x"), 502),
            ("upstream silent", get("/silent"), 504),
            ("malformed request", "GARBAGE\r\n\r\n".to_owned(), 400),
            ("oversized head", big_head, 431),
            ("CONNECT", "CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n".to_owned(), 405),
        ];
        for (what, request, want) in cases {
            let response = raw_exchange(addr, request.as_bytes()).await;
            assert_eq!(status_of(&response), want, "{what}: {response}");
            witness.check(what).await;
        }

        // Host routing: the host-only route matches any path for its host.
        let response =
            raw_exchange(addr, b"GET /nowhere HTTP/1.1\r\nHost: WS.example:8080\r\nConnection: close\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n") && response.ends_with("by host"), "{response}");

        // An unfinished head is closed after handshake_timeout (hyper closes without a 408).
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let mut rest = Vec::new();
        slow.read_to_end(&mut rest).await.unwrap();
        let rest = String::from_utf8_lossy(&rest);
        assert!(rest.is_empty() || status_of(&rest) == 408, "slow head: {rest}");
        witness.check("slow head").await;

        witness.close().await;
    })
    .await;
}

#[tokio::test]
async fn over_max_connections_new_clients_get_503_and_the_others_go_on() {
    within(async {
        let echo = echo_upstream().await;
        let proxy = Proxy::start(&config(echo, "[limits]\nmax_connections = 2")).await;
        let mut first = Witness::open(&proxy.ws_url("/")).await;
        let mut second = Witness::open(&proxy.ws_url("/")).await;
        for _ in 0..3 {
            let response = raw_exchange(proxy.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert_eq!(status_of(&response), 503, "{response}");
        }
        first.check("refusals").await;
        second.check("refusals").await;
    })
    .await;
}

#[tokio::test]
async fn each_failure_is_logged_once_with_its_connection_and_side() {
    let (logs, _capturing) = Logs::capture();
    within(async {
        let refused = closed_port().await;
        let proxy = Proxy::start(&format!(
            "listen = [\"127.0.0.1:0\"]\n[[route]]\npath_prefix = \"/refused\"\nupstream = \"ws://{refused}\"\n"
        ))
        .await;
        for request in [
            "GET /refused HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "GARBAGE\r\n\r\n",
        ] {
            raw_exchange(proxy.addr(), request.as_bytes()).await;
        }
        proxy.begin_shutdown().await;
        proxy.stopped().await;
    })
    .await;
    // Each connection's open and close are logged, the close with byte counts and duration.
    assert_eq!(logs.lines_with(&["connection open", "conn{id="]).len(), 3);
    let closed = logs.lines_with(&["connection closed", "bytes_in=", "bytes_out=", "secs="]);
    assert_eq!(closed.len(), 3, "{closed:#?}");
    for (status, side) in
        [("status=502", "side=upstream"), ("status=404", "side=client"), ("status=400", "side=client")]
    {
        let lines = logs.lines_with(&[status]);
        let all = logs.lines_with(&[]).join("\n");
        assert_eq!(lines.len(), 1, "{status} logged once; the log:\n{all}");
        assert!(
            lines[0].contains(side) && lines[0].contains("conn{id="),
            "{status} with its side and connection span; the log:\n{all}"
        );
    }
}

#[tokio::test]
async fn a_reload_that_lowers_max_connections_holds_for_every_new_connection() {
    let (logs, _capturing) = Logs::capture();
    within(async {
        let dir = scratch_dir("limit-reload");
        let config_file = dir.join("wstap.toml");
        let echo = echo_upstream().await;
        // No capture: a daemon started from a file writes captures relative to the cwd.
        let write = |max: u32| {
            let toml = config(echo, &format!("[limits]\nmax_connections = {max}\n[capture]\nmode = \"off\""));
            std::fs::write(&config_file, toml).unwrap();
        };
        write(10);
        let proxy = Proxy::start_file(&config_file).await;
        let mut live = Vec::new();
        for _ in 0..3 {
            live.push(Witness::open(&proxy.ws_url("/")).await);
        }
        write(1);
        proxy.reload().await;
        eventually("the reload is applied", || !logs.lines_with(&["config reloaded"]).is_empty()).await;
        for _ in 0..3 {
            let response = raw_exchange(proxy.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert_eq!(status_of(&response), 503, "3 open, the limit is 1 now: {response}");
        }
        for w in &mut live {
            w.check("the live connections run on").await;
        }
        // Once they are gone, the new limit is the limit: one connection, not three.
        for w in live {
            w.close().await;
        }
        let (_one, _) = loop {
            // Their places come back as the daemon finishes each connection.
            match tokio_tungstenite::connect_async(proxy.ws_url("/")).await {
                Ok(admitted) => break admitted,
                Err(_) => tokio::task::yield_now().await,
            }
        };
        let response = raw_exchange(proxy.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status_of(&response), 503, "1 open, the limit is 1: {response}");
    })
    .await;
}

#[tokio::test]
async fn over_the_per_client_limit_a_client_gets_429_and_others_are_not_affected() {
    within(async {
        let echo = echo_upstream().await;
        let proxy = Proxy::start(&config(echo, "[limits]\nmax_connections_per_client = 2")).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(Witness::open(&proxy.ws_url("/")).await);
        }
        let response = raw_exchange(proxy.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status_of(&response), 429, "{response}");
        // The same proxy, from another loopback address: admitted.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        let mut other = socket.connect(proxy.addr()).await.unwrap();
        other.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut response = String::new();
        other.read_to_string(&mut response).await.unwrap();
        assert_ne!(status_of(&response), 429, "{response}");
        for w in &mut held {
            w.check("the admitted connections run on").await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_request_body_that_stalls_gets_408() {
    within(async {
        // Reads the whole request (it never ends), never answers.
        let patient = serve(|mut s| async move {
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        })
        .await;
        let proxy = Proxy::start(&config(patient, "[limits]\nbody_timeout = \"300ms\"")).await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc").await.unwrap();
        // Nothing more: the deadline answers (a hang here fails the test).
        let mut response = String::new();
        s.read_to_string(&mut response).await.unwrap();
        assert_eq!(status_of(&response), 408, "{response}");
    })
    .await;
}
