//! Helpers for the end-to-end tests: the daemon in-process on port 0, a WebSocket echo
//! upstream, raw TCP upstreams for exact-byte checks, and small HTTP/1.1 helpers.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use wstap::{Action, Daemon, Settings};

/// A scratch directory for one test, deleted when the test passes (kept for a look when
/// it fails).
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("wstap-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// A fresh, existing scratch directory.
pub fn scratch_dir(name: &str) -> Scratch {
    let dir = Scratch::new(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Upper bound for any one test: a safety net against hangs, never a speed assertion.
pub const HANG: Duration = Duration::from_secs(60);

pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG, f).await.expect("test hung")
}

/// A daemon running in this process.
pub struct Proxy {
    pub addrs: Vec<SocketAddr>,
    pub listening: tokio::sync::watch::Receiver<Vec<SocketAddr>>,
    /// Where `/metrics`, `/sessions` and `/healthz` are served, if configured.
    pub admin: Option<SocketAddr>,
    pub state: tokio::sync::watch::Receiver<wstap::State>,
    actions: mpsc::Sender<Action>,
    task: JoinHandle<Result<(), wstap::DaemonError>>,
}

impl Proxy {
    /// Starts a daemon on `toml`; capture is off unless the config has a `[capture]` table.
    pub async fn start(toml: &str) -> Proxy {
        let toml =
            if toml.contains("[capture]") { toml.to_owned() } else { format!("{toml}\n[capture]\nmode = \"off\"\n") };
        let settings = Settings::parse(&toml, "test.toml".as_ref()).expect("test config is valid");
        Proxy::start_with(settings).await
    }

    /// Starts a daemon on a config file (which a reload re-reads).
    pub async fn start_file(path: &std::path::Path) -> Proxy {
        Proxy::start_with(Settings::load(path).expect("test config is valid")).await
    }

    async fn start_with(settings: Settings) -> Proxy {
        let daemon = Daemon::bind(settings).await.expect("bind");
        let addrs = daemon.local_addrs();
        let state = daemon.state();
        let listening = daemon.listening();
        let admin = daemon.admin_addr();
        let (actions, rx) = mpsc::channel(4);
        let task = tokio::spawn(daemon.run(rx));
        Proxy { addrs, listening, admin, state, actions, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr())
    }

    /// Asks for a shutdown (as SIGTERM would) without waiting for it.
    pub async fn begin_shutdown(&self) {
        self.actions.send(Action::Shutdown).await.unwrap();
    }

    /// Asks for a config reload (as SIGHUP would).
    pub async fn reload(&self) {
        self.actions.send(Action::Reload).await.unwrap();
    }

    /// Asks for a capture rotation (as SIGUSR1 would).
    pub async fn rotate(&self) {
        self.actions.send(Action::Rotate).await.unwrap();
    }

    /// Waits until the daemon's `run` has returned.
    pub async fn stopped(self) {
        self.task.await.unwrap().unwrap();
    }
}

/// A config with one listener on port 0, one route to `upstream`, and `extra` appended.
pub fn config(upstream: SocketAddr, extra: &str) -> String {
    format!("listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"ws://{upstream}\"\n{extra}\n")
}

/// A WebSocket echo server (tungstenite): echoes text and binary messages, answers pings.
pub async fn echo_upstream() -> SocketAddr {
    serve(|stream| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    })
    .await
}

/// Accepts on a fresh port and runs `handler` on each connection.
pub async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(handler(s));
        }
    });
    addr
}

/// Accepts one connection on a fresh port and runs `handler` on it.
pub async fn serve_once<F, Fut>(handler: F) -> SocketAddr
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((s, _)) = listener.accept().await {
            handler(s).await;
        }
    });
    addr
}

/// A WebSocket client connection.
pub type WsClient = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Ends a client's session (close handshake, then its socket) and stops the daemon,
/// which finishes its capture files.
pub async fn close_and_stop(mut ws: WsClient, proxy: Proxy) {
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    proxy.begin_shutdown().await;
    proxy.stopped().await;
}

/// Sends "fragmented" as a text message in three frames and checks the (reassembled) echo.
pub async fn fragmented_round_trip(ws: &mut WsClient) {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    for (part, opcode, fin) in [
        ("frag", OpCode::Data(Data::Text), false),
        ("ment", OpCode::Data(Data::Continue), false),
        ("ed", OpCode::Data(Data::Continue), true),
    ] {
        ws.send(Message::Frame(Frame::message(part.as_bytes().to_vec(), opcode, fin))).await.unwrap();
    }
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("fragmented"));
}

/// An address nothing listens on: a port freed on 127.0.0.2, where no test listens (on
/// 127.0.0.1 another test could be handed the freed port).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.2:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Reads an HTTP/1.1 head (through the blank line) from `r`.
pub async fn read_head<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> String {
    let mut head = String::new();
    loop {
        let n = r.read_line(&mut head).await.unwrap();
        if n == 0 || head.ends_with("\r\n\r\n") {
            return head;
        }
    }
}

/// Whether `head` has a field `name` (any case) whose value is exactly `value`.
pub fn has_header(head: &str, name: &str, value: &str) -> bool {
    head.lines().any(|l| l.split_once(':').is_some_and(|(n, v)| n.eq_ignore_ascii_case(name) && v.trim() == value))
}

/// An upstream that answers every connection's first request with `response`, verbatim,
/// and reports each request head it saw.
pub async fn recording_upstream(response: &'static str) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = serve(move |s| {
        let tx = tx.clone();
        async move {
            let mut r = BufReader::new(s);
            let _ = tx.send(read_head(&mut r).await);
            let _ = r.get_mut().write_all(response.as_bytes()).await;
        }
    })
    .await;
    (addr, rx)
}

/// An upstream that answers every connection's first request with `response`, verbatim.
pub async fn fixed_upstream(response: &'static str) -> SocketAddr {
    recording_upstream(response).await.0
}

/// The status code of a response head.
pub fn status_of(head: &str) -> u16 {
    head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Sends raw request bytes on a new connection and returns the whole response (read to EOF
/// or until the server closes), or an empty string if the server closed without a word.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A WebSocket client session through the proxy used as a witness: it must keep working
/// while other tests of the same daemon misbehave.
pub struct Witness {
    ws: WsClient,
    n: u32,
}

impl Witness {
    pub async fn open(url: &str) -> Witness {
        let (ws, resp) = tokio_tungstenite::connect_async(url).await.expect("witness connects");
        assert_eq!(resp.status(), 101);
        Witness { ws, n: 0 }
    }

    /// Sends a message and checks the echo.
    pub async fn check(&mut self, when: &str) {
        self.n += 1;
        let text = format!("witness {} after {when}", self.n);
        self.ws.send(Message::text(text.clone())).await.unwrap_or_else(|e| panic!("witness send after {when}: {e}"));
        let got = self.ws.next().await.expect("witness echo").unwrap_or_else(|e| panic!("witness after {when}: {e}"));
        assert_eq!(got, Message::text(text), "witness echo after {when}");
    }

    pub async fn close(mut self) {
        self.ws.close(None).await.unwrap();
        while let Some(Ok(_)) = self.ws.next().await {}
    }
}

pub const UPGRADE: &str = "GET /chat HTTP/1.1\r\nHost: app.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

pub const SWITCHED: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// A masked client text frame carrying `text` (any length).
pub fn masked_text_frame(text: &[u8]) -> Vec<u8> {
    use wstap_wire::wsframe::{encode_frame, first_byte, Opcode};
    encode_frame(first_byte(true, false, Opcode::Text), text, Some([0x37, 0xfa, 0x21, 0x3d]))
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Raw upstream for half-close tests: answers 101, then runs `after` on the socket.
pub async fn switching_upstream<F, Fut>(after: F) -> std::net::SocketAddr
where
    F: Fn(TcpStream, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let after = std::sync::Arc::new(after);
    serve(move |s| {
        let after = after.clone();
        async move {
            let mut r = BufReader::new(s);
            let head = read_head(&mut r).await;
            r.get_mut().write_all(SWITCHED.as_bytes()).await.unwrap();
            assert!(r.buffer().is_empty());
            after(r.into_inner(), head).await;
        }
    })
    .await
}

/// Connects through the proxy and completes a raw upgrade; returns the socket and any
/// bytes that arrived right behind the 101.
pub async fn raw_session(proxy: &Proxy) -> (TcpStream, Vec<u8>) {
    let mut r = BufReader::new(TcpStream::connect(proxy.addr()).await.unwrap());
    r.get_mut().write_all(UPGRADE.as_bytes()).await.unwrap();
    let head = read_head(&mut r).await;
    assert_eq!(status_of(&head), 101, "{head}");
    let early = r.buffer().to_vec();
    (r.into_inner(), early)
}

/// Starts the real `wstap` binary on `config`, in the config's directory, and waits for
/// its `listening addr=…` log line (the readiness signal); its stderr keeps being drained.
pub async fn spawn_daemon(config: &std::path::Path) -> (DaemonProcess, SocketAddr) {
    spawn_daemon_with_env(config, &[]).await
}

/// A daemon process, killed when dropped (a failing test leaves none behind).
pub struct DaemonProcess(std::process::Child);

impl std::ops::Deref for DaemonProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for DaemonProcess {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// As [`spawn_daemon`], with extra environment variables.
pub async fn spawn_daemon_with_env(config: &std::path::Path, env: &[(&str, &str)]) -> (DaemonProcess, SocketAddr) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wstap"));
    command.args(["run", "-c"]).arg(config).envs(env.iter().copied());
    let (daemon, addr, _log) = spawn_daemon_command(command, config).await;
    (daemon, addr)
}

/// Starts `command` (the daemon, run directly or through a wrapper) in the config's
/// directory, waits for its `listening addr=…` line, and hands back the rest of its log.
pub async fn spawn_daemon_command(
    mut command: std::process::Command,
    config: &std::path::Path,
) -> (DaemonProcess, SocketAddr, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    // In the config's own (scratch) directory: relative paths, such as the default
    // capture directory, must never land in the source tree.
    let mut child = command
        .current_dir(config.parent().expect("the config is in a scratch directory"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (addr, rx) = tokio::task::spawn_blocking(move || {
        let line = rx.iter().find(|l| l.contains("listening")).expect("daemon logged its address");
        assert!(!line.contains('\u{1b}'), "no ANSI colour when stderr is not a terminal: {line:?}");
        (addr_in(&line), rx)
    })
    .await
    .unwrap();
    (DaemonProcess(child), addr, rx)
}

/// The `addr=` of a log line.
pub fn addr_in(line: &str) -> SocketAddr {
    line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

/// Polls `done` (a state another thread or process reaches, with no channel to say so)
/// up to five seconds.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 5 s");
}

/// Log lines written while a test runs (a thread-local subscriber: `#[tokio::test]` runs
/// every task of the in-process daemon on the test's thread).
#[derive(Clone, Default)]
pub struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures this thread's log lines (the in-process daemon's, on a current-thread
    /// runtime) until the guard drops.
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(str::to_owned).collect()
    }
}
