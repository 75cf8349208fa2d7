//! Redaction against what servers decode: raw requests through the daemon, then every
//! secret looked for in the raw capture file, its comments, the log and `/sessions`.
//! Each secret is spelled `SECRET-…`, so one search of the file's bytes finds any.

use std::net::SocketAddr;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::capture::{assert_clean, capture_dir, capture_toml, fields, follow, stream_of, the_files};
use crate::support::*;

/// How many times `needle` occurs in the raw bytes of `file`.
fn occurrences(file: &Path, needle: &str) -> usize {
    let bytes = std::fs::read(file).unwrap();
    bytes.windows(needle.len()).filter(|w| *w == needle.as_bytes()).count()
}

/// `text` with each `SECRET-…` run (up to a byte that cannot be in a token) replaced by as
/// many `*`, and the userinfo spelled `ann:SECRET-…` likewise: what the file must show.
fn starred(text: &str, userinfo: &[&str]) -> String {
    let mut out = text.to_owned();
    for u in userinfo {
        out = out.replace(u, &"*".repeat(u.len()));
    }
    while let Some(at) = out.find("SECRET-") {
        let len = out[at..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).unwrap_or(out.len() - at);
        out.replace_range(at..at + len, &"*".repeat(len));
    }
    out
}

/// Every comment in `file`, one a line.
fn comments(file: &Path) -> String {
    fields(file, "frame.comment", &["frame.comment"]).into_iter().map(|r| r.join(" ")).collect::<Vec<_>>().join("\n")
}

/// An upstream that answers each Upgrade with a 101 choosing the Kubernetes bearer
/// protocol the client offered (as the API server does), then waits for the client to
/// leave; it reports each request head it saw.
async fn k8s_like_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = serve(move |s| {
        let tx = tx.clone();
        async move {
            let mut r = BufReader::new(s);
            let head = read_head(&mut r).await;
            let offered = head.lines().find(|l| l.to_ascii_lowercase().starts_with("sec-websocket-protocol:"));
            let chosen = offered.and_then(|l| l.split_once(", ")).map_or("", |(_, p)| p).to_owned();
            let _ = tx.send(head);
            let reply = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: {chosen}\r\n\r\n"
            );
            r.get_mut().write_all(reply.as_bytes()).await.unwrap();
            let mut rest = Vec::new();
            let _ = r.read_to_end(&mut rest).await;
        }
    })
    .await;
    (addr, rx)
}

/// The Upgrade request of the first test: a token under three spellings of its name, a
/// bearer subprotocol, a `Referer` with a token, an `Origin` with userinfo, API keys.
const UPGRADE_WITH_SECRETS: &str =
    "GET /chat?%74oken=SECRET-A&%74%6f%6b%65%6e=SECRET-B&TOKEN=SECRET-C&room=7 HTTP/1.1\r\n\
Host: app.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Protocol: v4.channel.k8s.io, base64url.bearer.authorization.k8s.io.SECRET-K8S\r\n\
Referer: https://app.example/page?x=1&access_token=SECRET-REF\r\n\
Origin: https://bob:SECRET-ORIGIN@app.example\r\n\
X-Api-Key: SECRET-XAPI\r\nX-Auth-Token: SECRET-XAUTH\r\n\r\n";

#[tokio::test]
async fn encoded_names_urls_in_fields_api_keys_and_subprotocol_tokens_never_reach_the_file() {
    within(async {
        let dir = capture_dir("redact-upgrade");
        let (upstream, mut seen) = k8s_like_upstream().await;
        let proxy = Proxy::start(&config(upstream, &capture_toml(&dir, ""))).await;
        let mut r = BufReader::new(TcpStream::connect(proxy.addr()).await.unwrap());
        r.get_mut().write_all(UPGRADE_WITH_SECRETS.as_bytes()).await.unwrap();
        let head = read_head(&mut r).await;
        assert_eq!(status_of(&head), 101, "{head}");
        let chosen = "base64url.bearer.authorization.k8s.io.SECRET-K8S";
        assert!(has_header(&head, "sec-websocket-protocol", chosen), "the client gets the chosen protocol: {head}");
        let upgrade = seen.recv().await.unwrap();
        for secret in ["%74oken=SECRET-A", "SECRET-K8S", "access_token=SECRET-REF", "bob:SECRET-ORIGIN", "SECRET-XAUTH"]
        {
            assert!(upgrade.contains(secret), "the upstream got {secret:?}: {upgrade}");
        }
        drop(r);
        proxy.begin_shutdown().await;
        proxy.stopped().await;

        let files = the_files(&dir);
        assert_eq!(files.len(), 1);
        let file = &files[0];
        assert_eq!(occurrences(file, "SECRET"), 0, "no secret, in any block of the file");
        assert_clean(file, 2);
        // The client leg holds the request byte for byte, its secrets starred (lengths
        // kept); the 101 keeps the chosen protocol's prefix.
        let (up, down) = follow(file, &stream_of(file, 0));
        assert_eq!(String::from_utf8_lossy(&up), starred(UPGRADE_WITH_SECRETS, &["bob:SECRET-ORIGIN"]));
        let down = String::from_utf8_lossy(&down);
        let chosen_starred = "base64url.bearer.authorization.k8s.io.**********";
        assert!(down.contains(&format!("Sec-WebSocket-Protocol: {chosen_starred}\r\n")), "{down}");
        let all = comments(file);
        for what in [
            "redacted query token",
            "redacted a bearer token in sec-websocket-protocol",
            "redacted query access_token",
            "redacted URL userinfo",
            "redacted header x-api-key",
            "redacted header x-auth-token",
        ] {
            assert!(all.contains(what), "a comment says {what:?}:\n{all}");
        }
        assert!(all.contains(&starred("GET /chat?%74oken=SECRET-A&", &[])), "the session comment too:\n{all}");
    })
    .await;
}

/// A plain request in absolute form, with userinfo in its target and a token in its
/// `Referer`; the answer a redirect carrying secrets in `Location` and `Content-Location`.
const ABSOLUTE_WITH_SECRETS: &str = "GET http://ann:SECRET-PW@app.example/page?Access%5FToken=SECRET-Q HTTP/1.1\r\n\
Host: app.example\r\nReferer: https://app.example/?token=SECRET-REF\r\nConnection: close\r\n\r\n";

const REDIRECT_WITH_SECRETS: &str = "HTTP/1.1 302 Found\r\n\
Location: https://carl:SECRET-LOC@app.example/cb#access_token=SECRET-FRAG&state=1\r\n\
Content-Location: /r?secret=SECRET-CL\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn userinfo_and_tokens_in_targets_and_redirects_never_reach_the_file() {
    within(async {
        let dir = capture_dir("redact-redirect");
        let (upstream, mut seen) = recording_upstream(REDIRECT_WITH_SECRETS).await;
        let proxy = Proxy::start(&config(upstream, &capture_toml(&dir, "mode = \"all\""))).await;
        let response = raw_exchange(proxy.addr(), ABSOLUTE_WITH_SECRETS.as_bytes()).await;
        assert_eq!(status_of(&response), 302, "{response}");
        assert!(response.contains("carl:SECRET-LOC@") && response.contains("SECRET-FRAG"), "{response}");
        let request = seen.recv().await.unwrap();
        assert!(request.contains("Access%5FToken=SECRET-Q") && request.contains("token=SECRET-REF"), "{request}");
        proxy.begin_shutdown().await;
        proxy.stopped().await;

        let files = the_files(&dir);
        assert_eq!(files.len(), 1);
        let file = &files[0];
        assert_eq!(occurrences(file, "SECRET"), 0, "no secret, in any block of the file");
        // The client's request on the client leg, the upstream's answer on the upstream
        // leg (hyper writes it anew to the client), each byte for byte, secrets starred.
        let (up, _) = follow(file, &stream_of(file, 0));
        assert_eq!(String::from_utf8_lossy(&up), starred(ABSOLUTE_WITH_SECRETS, &["ann:SECRET-PW"]));
        let (_, down) = follow(file, &stream_of(file, 1));
        assert_eq!(String::from_utf8_lossy(&down), starred(REDIRECT_WITH_SECRETS, &["carl:SECRET-LOC"]));
        let all = comments(file);
        for what in
            ["redacted URL userinfo", "redacted query access_token", "redacted query token", "redacted query secret"]
        {
            assert!(all.contains(what), "a comment says {what:?}:\n{all}");
        }
    })
    .await;
}

/// Log lines at every level, written while a test runs (as [`Logs::capture`], but with
/// debug lines too), until the second value drops.
fn capture_debug_logs() -> (Logs, (tracing::subscriber::DefaultGuard, tracing::Dispatch)) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    // With one dispatcher registered, tracing takes it for the global one and asks only
    // the thread that first meets a callsite whether it is wanted: a line another test's
    // thread logged first would never reach this one. A second dispatcher, kept alive
    // and registered, makes it ask each thread's own.
    let spare = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    drop(tracing::dispatcher::set_default(&spare));
    (logs, (guard, spare))
}

#[tokio::test]
async fn query_tokens_and_userinfo_never_reach_the_log_or_sessions() {
    let (logs, _capturing) = capture_debug_logs();
    within(async {
        let echo = echo_upstream().await;
        let refused = closed_port().await;
        // Capture is off: the log redacts by the same rules all the same.
        let proxy = Proxy::start(&format!(
            "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[route]]\npath_prefix = \"/down\"\nupstream = \"ws://{refused}\"\n\
             [[route]]\npath_prefix = \"/chat\"\nupstream = \"ws://{echo}\"\n"
        ))
        .await;
        let mut w = Witness::open(&proxy.ws_url("/chat?%74oken=SECRET-WS&room=7")).await;
        w.check("open").await;
        for (request, status) in [
            ("GET /nowhere?token=SECRET-404&x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
            ("GET /down?Access_Token=SECRET-502 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 502),
            ("GET http://ann:SECRET-PW@x/nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
        ] {
            assert_eq!(status_of(&raw_exchange(proxy.addr(), request.as_bytes()).await), status, "{request}");
        }
        let admin = proxy.admin.expect("admin listener");
        let sessions = raw_exchange(admin, b"GET /sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(sessions.contains("\"path\":\"/chat\""), "the session is listed: {sessions}");
        assert!(!sessions.contains("SECRET"), "{sessions}");
        w.close().await;
        proxy.begin_shutdown().await;
        proxy.stopped().await;
    })
    .await;
    for (what, want) in [
        ("forwarded", "target=/chat?%74oken=*********&room=7"),
        ("request refused", "target=/nowhere?token=**********&x=1"),
        ("request failed", "target=/down?Access_Token=**********"),
        ("request refused", "target=http://*************@x/nowhere"),
    ] {
        assert_eq!(logs.lines_with(&[what, want]).len(), 1, "a {what:?} line with {want:?}");
    }
    assert_eq!(logs.lines_with(&["SECRET"]), Vec::<String>::new(), "no secret in any log line");
}
