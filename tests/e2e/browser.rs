//! A real browser through wstap: Debian's Chromium, headless, driven over the DevTools
//! protocol, loads a page over HTTP/2 (TLS, ALPN h2) and opens a `wss://` WebSocket to
//! the same origin, which Chromium carries over that HTTP/2 connection (RFC 8441) to a
//! permessage-deflate echo server; tshark then decodes every message from wstap's file.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use crate::capture::{assert_clean, capture_dir, capture_toml, fields, the_files, tshark};
use crate::support::*;
use crate::tls::Pki;

/// The page: it opens a WebSocket to its own origin, sends text and binary messages,
/// small and of 1 MiB, and checks each echo.
const PAGE: &str = r#"<!doctype html><title>wstap over HTTP/2</title><script>
async function run() {
  const ws = new WebSocket(`wss://${location.host}/echo`);
  ws.binaryType = "arraybuffer";
  await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = () => fail("error"); });
  const big = new Uint8Array(1 << 20);
  for (let i = 0; i < big.length; i++) big[i] = (i * 31 + (i >> 9)) & 255;
  const sent = ["hello over h2", new Uint8Array([1, 2, 3, 250]).buffer, "abc ".repeat(1 << 18), big.buffer];
  const got = [];
  ws.onmessage = (e) => got.push(e.data);
  for (const m of sent) ws.send(m);
  for (let t = 0; got.length < sent.length && t < 3000; t++) await new Promise((r) => setTimeout(r, 10));
  const same = (a, b) => {
    if (typeof a === "string") return a === b;
    const x = new Uint8Array(a), y = new Uint8Array(b);
    return x.length === y.length && x.every((v, i) => v === y[i]);
  };
  const ok = got.length === sent.length && sent.every((m, i) => same(m, got[i]));
  const extensions = ws.extensions;
  await new Promise((r) => { ws.onclose = r; ws.close(1000, "done"); });
  return JSON.stringify({ ok, echoed: got.length, extensions });
}
</script>"#;

/// Chromium, headless, with its DevTools endpoint.
struct Chromium {
    _child: tokio::process::Child,
    devtools: String,
}

impl Chromium {
    /// Starts Chromium with a fresh profile in `dir`, `wstap.test` resolving to
    /// loopback; waits for its DevTools endpoint.
    async fn start(dir: &Path) -> Chromium {
        let mut child = tokio::process::Command::new("/usr/bin/chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--ignore-certificate-errors",
                "--remote-debugging-port=0",
                "--host-resolver-rules=MAP wstap.test 127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", dir.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium runs (scripts/deps.sh installs it)");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let devtools = loop {
            let line = lines.next_line().await.unwrap().expect("chromium says where DevTools listens");
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                break url.trim().to_owned();
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Chromium { _child: child, devtools }
    }
}

/// A DevTools connection, commands sent to one page (flattened session).
struct DevTools {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next: u64,
    session: Option<String>,
}

impl DevTools {
    async fn connect(url: &str) -> DevTools {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        DevTools { ws, next: 0, session: None }
    }

    /// Sends a command and waits for its answer (events meanwhile are passed over).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let mut command = json!({ "id": self.next, "method": method, "params": params });
        if let Some(s) = &self.session {
            command["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(command.to_string())).await.unwrap();
        loop {
            let msg = self.ws.next().await.expect("DevTools answers").unwrap();
            let Ok(v) = serde_json::from_str::<Value>(msg.to_text().unwrap_or("{}")) else { continue };
            if v["id"] == json!(self.next) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Opens `url` in a new page and talks to it from now on.
    async fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({ "url": url })).await;
        let attached =
            self.call("Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true })).await;
        self.session = attached["sessionId"].as_str().map(str::to_owned);
    }

    /// Evaluates `expression` in the page (a promise awaited); its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let params = json!({ "expression": expression, "awaitPromise": true, "returnByValue": true });
        let result = self.call("Runtime.evaluate", params).await;
        assert!(result.get("exceptionDetails").is_none(), "{expression}: {result}");
        result["result"]["value"].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_loads_a_page_over_http2_and_its_websocket_rides_the_same_connection() {
    let scratch = scratch_dir("browser-h2");
    let pki = Pki::new(&scratch);
    let site = pki.site("wstap.test", "site");
    // The page's server, and a permessage-deflate echo server (python's websockets).
    let page: &'static str = Box::leak(
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{PAGE}", PAGE.len())
            .into_boxed_str(),
    );
    let pages = fixed_upstream(page).await;
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/peers/deflate.py");
    let mut echo = tokio::process::Command::new("/usr/bin/python3")
        .args([peers.to_str().unwrap(), "server", scratch.join("received.jsonl").to_str().unwrap()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(echo.stdout.take().unwrap()).lines();
    let echo_port: u16 = lines.next_line().await.unwrap().unwrap().parse().unwrap();
    let caps = capture_dir("browser-h2-caps");
    let toml = format!(
        "listen = []\n[[listener]]\naddr = \"127.0.0.1:0\"\nhttp2 = true\ntls = {{ cert = {:?}, key = {:?} }}\n\
         [[route]]\npath_prefix = \"/echo\"\nupstream = \"ws://127.0.0.1:{echo_port}\"\n\
         [[route]]\nupstream = \"http://{pages}\"\n{}",
        site.cert,
        site.key,
        capture_toml(&caps, "legs = [\"client\"]")
    );
    let proxy = Proxy::start(&toml).await;
    let browser = Chromium::start(&scratch.join("profile")).await;
    let mut tools = DevTools::connect(&browser.devtools).await;
    tools.open(&format!("https://wstap.test:{}/", proxy.addr().port())).await;
    for _ in 0..600 {
        if tools.eval("document.readyState === 'complete' && typeof run === 'function'").await == json!(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let protocol = tools.eval("performance.getEntriesByType('navigation')[0].nextHopProtocol").await;
    assert_eq!(protocol, json!("h2"), "the page came over HTTP/2");
    let outcome: Value = serde_json::from_str(tools.eval("run()").await.as_str().unwrap()).unwrap();
    assert_eq!(outcome["ok"], json!(true), "every message echoed exactly: {outcome}");
    assert!(outcome["extensions"].as_str().unwrap().contains("permessage-deflate"), "{outcome}");
    drop((tools, browser));
    proxy.begin_shutdown().await;
    proxy.stopped().await;
    let file = the_files(&caps).remove(0);
    assert_clean(&file, 1);
    let comments = tshark(&file, &["-T", "fields", "-e", "frame.comment"]);
    assert!(comments.contains("WebSocket over HTTP/2 (RFC 8441)"), "Chromium used HTTP/2 for it:\n{comments}");
    let texts = fields(&file, "websocket.opcode == 1", &["websocket.payload.text"]);
    assert_eq!(texts.len(), 4, "2 text messages each way");
    assert_eq!(texts[0], ["hello over h2"], "inflated by tshark with no options");
    let binary = fields(&file, "websocket.opcode == 2", &["frame.number"]);
    assert_eq!(binary.len(), 4, "2 binary messages each way");
}
