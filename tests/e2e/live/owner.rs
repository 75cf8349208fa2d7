//! Who may subscribe: from loopback and on the unix socket, the users `live.users` lists
//! (by default wstap's own and root), as the kernel tells them; another local user is
//! refused, logged and counted, and gets not a byte. The tests that read as another user
//! run the reader as `nobody` (`runuser`, Python's sockets), so they need root.

use super::*;

use tokio::net::UnixStream;

/// Reads the stream at `target` (`host:port`, or a unix socket's path) as `user`: the
/// bytes it got (up to four) before the stream closed, or `None` if it could not connect.
async fn read_as(user: &str, target: &str) -> Option<usize> {
    let script = r#"
import socket, sys
t = sys.argv[1]
try:
    if t.startswith("/"):
        s = socket.socket(socket.AF_UNIX)
        s.connect(t)
    else:
        host, port = t.rsplit(":", 1)
        s = socket.create_connection((host, int(port)))
except OSError as e:
    print("cannot connect:", e, file=sys.stderr)
    sys.exit(3)
s.settimeout(20)
n = 0
while n < 4:
    b = s.recv(4 - n)
    if not b:
        break
    n += len(b)
print(n)
"#;
    let out = tokio::process::Command::new("runuser")
        .args(["-u", user, "--", "/usr/bin/python3", "-c", script, target])
        .output()
        .await
        .unwrap();
    if out.status.code() == Some(3) {
        return None;
    }
    assert!(out.status.success(), "the reader: {}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
}

/// nobody's user id.
const NOBODY: u32 = 65534;

#[tokio::test]
#[ignore = "needs root: runs the reader as another user"]
async fn on_loopback_another_local_user_is_refused_and_this_one_is_served() {
    let (logs, _capturing) = Logs::capture();
    within(async {
        let d = LiveDaemon::start("live-nobody-tcp", "listen = \"127.0.0.1:0\"\n", &logs).await;
        let (live, admin) = (d.live(&logs, 0), d.admin());
        assert_eq!(read_as("nobody", &live.to_string()).await, Some(0), "not a byte for nobody");
        let said = logs.lines_with(&["live stream: refused", "its user is not in live.users"]);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains(&format!("uid={NOBODY}")) && said[0].contains("reason=\"user\""), "{}", said[0]);
        assert_eq!(metric(admin, "wstap_live_refused_total{reason=\"user\"}").await, 1);
        // The daemon's own user (root, here) is served.
        let mut mine = TcpStream::connect(live).await.unwrap();
        assert_pcapng(&mut mine).await;
        // It is the user that decides: listed, nobody is served too.
        d.reload("listen = \"127.0.0.1:0\"\nusers = [0, \"nobody\"]\n", &logs).await;
        assert_eq!(read_as("nobody", &live.to_string()).await, Some(4));
        drop(mine);
        d.stop().await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs root: runs the reader as another user"]
async fn on_the_unix_socket_another_user_is_refused_by_its_credentials() {
    let (logs, _capturing) = Logs::capture();
    within(async {
        let dir = scratch_dir("live-nobody-unix");
        let path = dir.join("live.sock");
        let listen = format!("listen = \"unix:{}\"\n", path.display());
        let d = LiveDaemon::start("live-nobody-unix-d", &listen, &logs).await;
        let admin = d.admin();
        let target = path.to_str().unwrap();
        // Mode 0600 (the default): nobody cannot even connect.
        assert_eq!(read_as("nobody", target).await, None);
        // Mode 0666: it connects, and its credentials refuse it.
        d.reload(&format!("{listen}mode = \"0666\"\n"), &logs).await;
        assert_eq!(read_as("nobody", target).await, Some(0), "not a byte for nobody");
        let said = logs.lines_with(&["live stream: refused", "its user is not in live.users", "unix socket"]);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains(&format!("uid={NOBODY}")), "{}", said[0]);
        assert_eq!(metric(admin, "wstap_live_refused_total{reason=\"user\"}").await, 1);
        let mut mine = UnixStream::connect(&path).await.unwrap();
        assert_pcapng(&mut mine).await;
        d.reload(&format!("{listen}mode = \"0666\"\nusers = [\"nobody\"]\n"), &logs).await;
        assert_eq!(read_as("nobody", target).await, Some(4), "listed: served");
        drop(mine);
        d.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_unix_socket_serves_this_user_moves_to_tcp_and_back_and_goes_at_the_end() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let (logs, _capturing) = Logs::capture();
    within(async {
        let dir = scratch_dir("live-unix");
        let path = dir.join("live.sock");
        // A socket left behind by a daemon that did not stop cleanly.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let gid = std::fs::metadata("/proc/self").unwrap().gid();
        let unix = format!("listen = \"unix:{}\"\ngroup = {gid}\n", path.display());
        let d = LiveDaemon::start_with("live-unix-d", "tls = \"encrypted\"\n", &unix, &logs).await;
        assert_eq!(logs.lines_with(&["every subscriber of the live stream receives the TLS keys"]).len(), 1);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o600, gid), "live.mode's default, live.group");
        let mut sub = UnixStream::connect(&path).await.unwrap();
        assert_pcapng(&mut sub).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(d.proxy.ws_url("/u")).await.unwrap();
        ws.send(Message::text("over the unix socket")).await.unwrap();
        ws.next().await.unwrap().unwrap();
        until_seen(&mut sub, b"over the unix socket").await;
        extcap_reads(&format!("unix:{}", path.display()), &d).await;

        // To TCP: the unix subscriber is let go, the file goes, the TCP listener serves.
        d.reload("listen = \"127.0.0.1:0\"\n", &logs).await;
        let mut rest = Vec::new();
        sub.read_to_end(&mut rest).await.unwrap();
        assert!(!path.exists(), "the socket file is removed with its listener");
        let mut tcp = TcpStream::connect(d.live(&logs, 1)).await.unwrap();
        assert_pcapng(&mut tcp).await;
        // And back.
        d.reload(&unix, &logs).await;
        let mut rest = Vec::new();
        tcp.read_to_end(&mut rest).await.unwrap();
        let mut sub = UnixStream::connect(&path).await.unwrap();
        assert_pcapng(&mut sub).await;
        drop(sub);
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        d.stop().await;
        assert!(!path.exists(), "the socket file is removed at the end");
    })
    .await;
}

/// `wstap extcap --capture` (as Wireshark runs it) copies the stream at `address` into
/// its fifo (a plain file here), and says where the stream is by default.
async fn extcap_reads(address: &str, d: &LiveDaemon) {
    let config = wstap_extcap(&["--extcap-config", "--extcap-interface", "wstap"], address);
    assert!(config.contains(&format!("{{default={address}}}")), "{config}");
    let fifo = d.dir.join("extcap.out");
    std::fs::write(&fifo, b"").unwrap();
    let mut extcap = tokio::process::Command::new(env!("CARGO_BIN_EXE_wstap"))
        .args(["extcap", "--capture", "--extcap-interface", "wstap", "--fifo"])
        .arg(&fifo)
        .args(["--address", address])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually("extcap wrote the stream", || std::fs::read(&fifo).unwrap().len() >= 4).await;
    assert_eq!(std::fs::read(&fifo).unwrap()[..4], PCAPNG);
    extcap.kill().await.unwrap();
}

/// `wstap extcap ARGS` with `WSTAP_LIVE=address`: what it prints.
fn wstap_extcap(args: &[&str], address: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wstap"))
        .arg("extcap")
        .args(args)
        .env("WSTAP_LIVE", address)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
