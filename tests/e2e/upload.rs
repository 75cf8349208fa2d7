//! `[capture.upload]`, `capture.on_finish` and `capture.instance`, end to end: the real
//! binary, real WebSocket traffic, a real S3 server (SeaweedFS, `store.rs`) that is
//! killed and brought back, and the objects read back and decoded with tshark.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::admin::scrape;
use crate::capture::{assert_clean, tshark};
use crate::store::{S3Server, KEY, SECRET};
use crate::support::*;

/// A daemon process of its own directory, with its admin address and its log.
struct Instance {
    daemon: DaemonProcess,
    addr: SocketAddr,
    admin: SocketAddr,
    log: Receiver<String>,
    dir: PathBuf,
}

/// The config of an instance named `name`, recording into `caps/`, rotating at 64 KiB,
/// `on_finish` appending each file's name to `finished.log`, and `upload` (a
/// `[capture.upload]` table) appended.
fn config_of(name: &str, echo: SocketAddr, upload: &str) -> String {
    format!(
        r#"listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
[[route]]
upstream = "ws://{echo}"
[capture]
dir = "caps"
instance = "{name}"
prefix = "ws-{{instance}}"
flush_interval = "50ms"
on_finish = ["/bin/sh", "-c", "echo \"$WSTAP_NAME\" >> finished.log"]
[capture.rotate]
size = "64KiB"
max_wait = "1s"
{upload}"#
    )
}

impl Instance {
    /// Starts the binary on `config`, written into `dir`.
    async fn start(dir: &Path, config: &str) -> Instance {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("wstap.toml");
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_wstap"));
        command.args(["run", "-c"]).arg(&path);
        let (daemon, addr, log) = spawn_daemon_command(command, &path).await;
        let line = log.iter().find(|l| l.contains("admin endpoints")).expect("the admin address is logged");
        Instance { daemon, addr, admin: addr_in(&line), log, dir: dir.to_owned() }
    }

    /// A metric's value (0 when absent).
    async fn metric(&self, name: &str) -> u64 {
        scrape(self.admin).await.get(name).copied().unwrap_or(0)
    }

    /// Waits (up to 60 s) until the metric `name` reaches `at_least`.
    async fn metric_reaches(&self, name: &str, at_least: u64) {
        for _ in 0..600 {
            if self.metric(name).await >= at_least {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{name} did not reach {at_least}: {:?}", scrape(self.admin).await);
    }

    /// Sends `signal` (`TERM`, `USR1`, `HUP`).
    fn signal(&self, signal: &str) {
        let pid = self.daemon.id().to_string();
        assert!(Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap().success());
    }

    /// SIGTERM, and its exit status 0.
    fn stop(mut self) -> (PathBuf, Vec<String>) {
        self.signal("TERM");
        let status = self.daemon.wait().unwrap();
        assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
        let log: Vec<String> = self.log.try_iter().collect();
        (self.dir.clone(), log)
    }

    /// Log lines so far that hold every one of `needles`, waiting up to 60 s for one.
    fn logged(&self, needles: &[&str]) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) if needles.iter().all(|n| line.contains(n)) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no log line with {needles:?} within 60 s");
    }
}

/// The finished capture files of a directory, in name order.
fn finished_in(caps: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(caps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcapng"))
        .collect();
    files.sort();
    files
}

/// One WebSocket session through `addr`: `count` binary messages of `size` bytes, each
/// echoed back exactly; then a close.
async fn traffic(addr: SocketAddr, count: usize, size: usize) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/feed")).await.unwrap();
    for i in 0..count {
        let payload: Vec<u8> = (0..size).map(|j| (i * 31 + j * 7) as u8).collect();
        ws.send(Message::binary(payload.clone())).await.unwrap();
        let echo = within(ws.next()).await.unwrap().unwrap();
        assert_eq!(echo.into_data().as_ref(), &payload[..], "message {i} echoed exactly");
    }
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = within(ws.next()).await {}
}

/// The object key a file of `instance` gets under `prefix`: `prefix/instance/Y/M/D/name`.
fn key_of(prefix: &str, instance: &str, file: &Path) -> String {
    let name = file.file_name().unwrap().to_str().unwrap();
    let stamp = name.split('_').nth(2).unwrap();
    let day = format!("{instance}/{}/{}/{}/{name}", &stamp[0..4], &stamp[4..6], &stamp[6..8]);
    if prefix.is_empty() {
        day
    } else {
        format!("{prefix}/{day}")
    }
}

/// Every local file of `caps` is in the bucket under its key, byte for byte, and the
/// bucket holds nothing else under the instance's prefix.
async fn all_stored(
    store: &S3Server,
    bucket: &str,
    prefix: &str,
    instance: &str,
    caps: &Path,
) -> Vec<(String, Vec<u8>)> {
    let objects = store.objects(bucket, &format!("{prefix}/{instance}")).await;
    let local = finished_in(caps);
    let keys: Vec<String> = local.iter().map(|f| key_of(prefix, instance, f)).collect();
    let stored: Vec<&String> = objects.iter().map(|(k, _)| k).collect();
    assert_eq!(stored, keys.iter().collect::<Vec<_>>(), "one object per local file, under its key");
    for ((key, bytes), file) in objects.iter().zip(&local) {
        assert!(bytes == &std::fs::read(file).unwrap(), "{key} holds {} as it is on disk", file.display());
    }
    objects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_store_their_files_under_their_own_keys_and_the_last_one_at_sigterm() {
    let scratch = Scratch::new("upload-two");
    let store = S3Server::start(&scratch.join("s3")).await;
    store.create_bucket("fleet").await;
    let echo = echo_upstream().await;
    let mut instances = Vec::new();
    for name in ["eu-1", "eu-2"] {
        let dir = scratch.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let upload = store.upload_table("s3://fleet/caps/", &dir, "");
        instances.push(Instance::start(&dir, &config_of(name, echo, &upload)).await);
    }
    for i in &instances {
        traffic(i.addr, 24, 10_000).await;
    }
    // Files rotated while the session ran are stored while the daemon runs.
    for i in &instances {
        i.metric_reaches("wstap_upload_stored_files_total", 1).await;
        let info = scrape(i.admin).await;
        assert!(info.keys().any(|k| k.starts_with("wstap_info{instance=\"eu-")), "{info:?}");
    }
    let mut dirs = Vec::new();
    for (name, i) in ["eu-1", "eu-2"].into_iter().zip(instances) {
        let (dir, log) = i.stop();
        assert!(!log.iter().any(|l| l.contains("not stored")), "no upload failed: {log:?}");
        dirs.push((name, dir));
    }
    for (name, dir) in &dirs {
        let caps = dir.join("caps");
        let files = finished_in(&caps);
        assert!(files.len() >= 3, "{name} rotated: {files:?}");
        let objects = all_stored(&store, "fleet", "caps", name, &caps).await;
        // on_finish ran for every file, the last one (finished at SIGTERM) too.
        let ran = std::fs::read_to_string(dir.join("finished.log")).unwrap();
        let mut ran: Vec<&str> = ran.lines().collect();
        ran.sort();
        let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_str().unwrap().to_owned()).collect();
        assert_eq!(ran, names, "on_finish ran once for each file of {name}");
        // Each object decodes on its own, names its instance, and carries messages.
        for (key, bytes) in &objects {
            let copy = scratch.join(key.replace('/', "_"));
            std::fs::write(&copy, bytes).unwrap();
            assert_clean(&copy, 1);
            let shb = tshark(&copy, &["-q", "-z", "io,phs"]);
            assert!(shb.contains("websocket"), "{key} decodes as WebSocket:\n{shb}");
            let info = crate::capture::run("capinfos", &[copy.to_str().unwrap()]);
            assert!(info.contains(&format!("instance {name}")), "{key}'s section names its instance:\n{info}");
        }
        // The stored files read back from the bucket as one capture.
        let config = dir.join("wstap.toml");
        let out = Command::new(env!("CARGO_BIN_EXE_wstap"))
            .current_dir(dir)
            .args(["sessions", "--store-config"])
            .arg(&config)
            .arg(format!("s3://fleet/caps/{name}/"))
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{listing}\n{}", String::from_utf8_lossy(&out.stderr));
        let sessions: Vec<&str> = listing.lines().skip(1).collect();
        assert_eq!(sessions.len(), 1, "one session, whole across the rotated objects:\n{listing}");
        // 24 messages and the close, each way.
        assert!(sessions[0].contains("/feed") && sessions[0].contains("   25    25 "), "every message:\n{listing}");
        // Carved and replayed straight from the bucket.
        let carved = scratch.join(format!("{name}-carved.pcapng"));
        let wstap = |args: &[&str]| {
            let out = Command::new(env!("CARGO_BIN_EXE_wstap"))
                .current_dir(dir)
                .args(args)
                .args(["--store-config", config.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(out.status.success(), "wstap {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let url = format!("s3://fleet/caps/{name}/");
        wstap(&["carve", &url, "-o", carved.to_str().unwrap()]);
        let frames = tshark(&carved, &["-Y", "websocket.opcode == 2", "-T", "fields", "-e", "frame.number"]);
        assert_eq!(frames.lines().count(), 48, "the carved session holds every message");
        wstap(&["replay", &url, "--target", &format!("ws://{echo}"), "--speed", "max"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_goes_away_grows_the_backlog_and_a_killed_daemon_loses_nothing() {
    let scratch = Scratch::new("upload-outage");
    let mut store = S3Server::start(&scratch.join("s3")).await;
    store.create_bucket("fleet").await;
    let echo = echo_upstream().await;
    let dir = scratch.join("eu-3");
    std::fs::create_dir_all(&dir).unwrap();
    let config = config_of("eu-3", echo, &store.upload_table("s3://fleet/", &dir, "shutdown_wait = \"2s\""));
    let first = Instance::start(&dir, &config).await;
    traffic(first.addr, 12, 10_000).await;
    first.metric_reaches("wstap_upload_stored_files_total", 1).await;
    // The store goes away: traffic is untouched, files wait, the metrics say so.
    store.kill();
    traffic(first.addr, 12, 10_000).await;
    first.signal("USR1");
    first.logged(&["not stored", "reason=\"unreachable\""]);
    first.metric_reaches("wstap_upload_backlog_files", 2).await;
    first.metric_reaches("wstap_upload_failures_total{reason=\"unreachable\"}", 1).await;
    assert!(first.metric("wstap_upload_oldest_waiting_seconds").await < 3600);
    assert_eq!(first.metric("wstap_up").await, 1, "a store down is not the daemon down");
    // Killed with uploads pending, the store back, started again: all goes up.
    let Instance { mut daemon, .. } = first;
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    store.restart().await;
    let second = Instance::start(&dir, &config).await;
    // (A file left `.part` by the kill is finished when the next one starts.)
    traffic(second.addr, 4, 10_000).await;
    second.signal("USR1");
    for _ in 0..600 {
        let backlog = second.metric("wstap_upload_backlog_files").await;
        let parts = std::fs::read_dir(dir.join("caps"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".part"));
        if backlog == 0 && parts.count() <= 1 && second.metric("wstap_upload_stored_files_total").await >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (dir, _) = second.stop();
    let objects = all_stored(&store, "fleet", "", "eu-3", &dir.join("caps")).await;
    assert!(objects.len() >= 4, "{} objects", objects.len());
}

/// The upload table of a store that cannot take files, and why.
struct Refusal {
    why: &'static str,
    table: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_a_missing_bucket_and_no_store_are_named_counted_and_never_touch_traffic() {
    let scratch = Scratch::new("upload-refused");
    let store = S3Server::start(&scratch.join("s3")).await;
    store.create_bucket("fleet").await;
    let echo = echo_upstream().await;
    let closed = closed_port().await;
    let dir = scratch.join("eu-4");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("good-key"), KEY).unwrap();
    std::fs::write(dir.join("bad-secret"), format!("{SECRET}-not")).unwrap();
    std::fs::write(dir.join("good-secret"), SECRET).unwrap();
    let table = |url: &str, endpoint: &str, secret: &str| {
        format!(
            "[capture.upload]\nurl = \"{url}\"\nendpoint = \"{endpoint}\"\naccess_key_id_file = \"good-key\"\nsecret_access_key_file = \"{secret}\"\nshutdown_wait = \"1s\"\n"
        )
    };
    let refusals = [
        Refusal { why: "credentials", table: table("s3://fleet/", &store.endpoint(), "bad-secret") },
        Refusal { why: "no_bucket", table: table("s3://no-such-bucket/", &store.endpoint(), "good-secret") },
        Refusal { why: "unreachable", table: table("s3://fleet/", &format!("http://{closed}"), "good-secret") },
    ];
    for r in refusals {
        let i = Instance::start(&dir, &config_of("eu-4", echo, &r.table)).await;
        traffic(i.addr, 8, 10_000).await;
        i.signal("USR1");
        let line = i.logged(&["not stored", &format!("reason=\"{}\"", r.why)]);
        assert!(!line.contains(SECRET), "no secret in the log: {line}");
        i.metric_reaches(&format!("wstap_upload_failures_total{{reason=\"{}\"}}", r.why), 1).await;
        let health = raw_exchange(i.admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(health.starts_with("HTTP/1.1 200"), "the store does not make the daemon unhealthy: {health}");
        traffic(i.addr, 2, 1000).await;
        // A bad upload setting in a reload is refused, naming the key; the daemon goes on.
        let path = dir.join("wstap.toml");
        let good = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, good.replace("[capture.upload]\n", "[capture.upload]\nconcurrency = 0\n")).unwrap();
        i.signal("HUP");
        i.logged(&["reload failed", "capture.upload.concurrency"]);
        std::fs::write(&path, &good).unwrap();
        if r.why == "credentials" {
            // A reload with the right secret: the files waiting go up.
            assert_eq!(i.metric("wstap_upload_stored_files_total").await, 0);
            std::fs::write(&path, good.replace("bad-secret", "good-secret")).unwrap();
            i.signal("HUP");
            i.metric_reaches("wstap_upload_stored_files_total", 1).await;
            i.metric_reaches("wstap_reloads_total{result=\"ok\"}", 1).await;
        }
        let (_, log) = i.stop();
        assert!(!log.iter().any(|l| l.contains(SECRET)), "no secret in the log");
    }
    let stored = store.objects("fleet", "").await;
    assert!(!stored.is_empty() && stored.iter().all(|(k, _)| k.starts_with("eu-4/")), "only after the fix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_backlog_the_oldest_file_is_dropped_logged_and_counted() {
    let scratch = Scratch::new("upload-backlog");
    let echo = echo_upstream().await;
    let closed = closed_port().await;
    let dir = scratch.join("eu-5");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("k"), KEY).unwrap();
    std::fs::write(dir.join("s"), SECRET).unwrap();
    let table = format!(
        "[capture.upload]\nurl = \"s3://fleet/\"\nendpoint = \"http://{closed}\"\naccess_key_id_file = \"k\"\nsecret_access_key_file = \"s\"\nmax_backlog = \"1MiB\"\nconcurrency = 1\nshutdown_wait = \"1s\"\n"
    );
    let i = Instance::start(&dir, &config_of("eu-5", echo, &table)).await;
    traffic(i.addr, 80, 16_000).await;
    i.signal("USR1");
    let line = i.logged(&["backlog past max_backlog", "dropped"]);
    i.metric_reaches("wstap_upload_dropped_files_total", 1).await;
    let waiting = i.metric("wstap_upload_backlog_bytes").await;
    assert!(waiting <= (1 << 20) + 200_000, "the backlog stays within max_backlog and one file in flight: {waiting}");
    let (dir, _) = i.stop();
    // The oldest files went, in order; only the one being tried (the very oldest) may
    // have been passed over.
    let journal = std::fs::read_to_string(dir.join("caps/.wstap-uploads")).unwrap();
    let seq = |name: &str| name.split('_').nth(1).unwrap().parse::<u32>().unwrap();
    let dropped: Vec<&str> = journal.lines().filter_map(|l| l.strip_prefix("dropped ")).collect();
    let seqs: Vec<u32> = dropped.iter().map(|n| seq(n)).collect();
    assert!(seqs[0] <= 2, "the first dropped is the oldest waiting:\n{journal}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "dropped oldest first:\n{journal}");
    let newest = finished_in(&dir.join("caps")).last().map(|f| seq(f.file_name().unwrap().to_str().unwrap())).unwrap();
    assert!(seqs.last().unwrap() < &newest, "the newest files wait, within the bound");
    assert!(line.contains(dropped[0]), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_larger_than_a_part_is_stored_in_parts_then_deleted_here() {
    let scratch = Scratch::new("upload-parts");
    let store = S3Server::start(&scratch.join("s3")).await;
    store.create_bucket("fleet").await;
    let echo = echo_upstream().await;
    let dir = scratch.join("eu-6");
    std::fs::create_dir_all(&dir).unwrap();
    let upload = store.upload_table("s3://fleet/big/", &dir, "delete_after = true");
    // One file for the whole run: no rotation by size.
    let config = config_of("eu-6", echo, &upload).replace("size = \"64KiB\"", "size = 0");
    let i = Instance::start(&dir, &config).await;
    traffic(i.addr, 80, 64 * 1024).await;
    // A live session names the instance that carries it.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/live", i.addr)).await.unwrap();
    // (Listed once the session's task has both sides: just after the client's 101.)
    let mut sessions = String::new();
    for _ in 0..500 {
        sessions = raw_exchange(i.admin, b"GET /sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        if !sessions.ends_with("[]") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(sessions.contains("\"instance\":\"eu-6\""), "{sessions}");
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = within(ws.next()).await {}
    drop(ws);
    let (dir, log) = i.stop();
    assert!(finished_in(&dir.join("caps")).is_empty(), "delete_after: the stored file is gone from here");
    assert!(log.iter().any(|l| l.contains("local file deleted")), "{log:?}");
    let objects = store.objects("fleet", "big/eu-6").await;
    assert_eq!(objects.len(), 1, "{:?}", objects.iter().map(|o| &o.0).collect::<Vec<_>>());
    let (key, bytes) = &objects[0];
    assert!(bytes.len() > 10 << 20, "{key}: {} bytes", bytes.len());
    // on_finish ran for it before it was deleted.
    let ran = std::fs::read_to_string(dir.join("finished.log")).unwrap();
    assert_eq!(ran.trim(), key.rsplit('/').next().unwrap(), "on_finish ran, then the file went");
    // S3's multipart ETag: the MD5 of the parts' MD5s, a dash, their count.
    let out = Command::new("curl")
        .args(["-sI", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", &format!("{KEY}:{SECRET}")])
        .arg(format!("{}/fleet/{key}", store.endpoint()))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.lines().any(|l| l.starts_with("etag:") && l.trim_end().ends_with("-2\"")), "{head}");
    let copy = scratch.join("big.pcapng");
    std::fs::write(&copy, bytes).unwrap();
    assert_clean(&copy, 1);
    let frames =
        tshark(&copy, &["-Y", "websocket.opcode == 2", "-T", "fields", "-e", "websocket.payload_length_ext_64"]);
    assert_eq!(frames.lines().count(), 160, "80 messages each way decode from the stored object");
    assert!(frames.lines().all(|l| l == "65536"), "each whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_finish_alone_gets_every_file_whole_before_the_ring_deletes_it() {
    let scratch = Scratch::new("on-finish-ring");
    let echo = echo_upstream().await;
    let dir = scratch.join("eu-7");
    std::fs::create_dir_all(dir.join("copies")).unwrap();
    // A slow command, and a ring of one file: the ring must wait for each run.
    let config = config_of("eu-7", echo, "")
        .replace(
            "on_finish = [\"/bin/sh\", \"-c\", \"echo \\\"$WSTAP_NAME\\\" >> finished.log\"]",
            "on_finish = [\"/bin/sh\", \"-c\", \"sleep 0.2; cp \\\"$1\\\" copies/\", \"hook\", \"{path}\"]\non_finish_concurrency = 1",
        )
        .replace("max_wait = \"1s\"", "max_wait = \"1s\"\nfiles = 1");
    assert!(config.contains("files = 1") && config.contains("copies/"), "{config}");
    let i = Instance::start(&dir, &config).await;
    traffic(i.addr, 30, 10_000).await;
    let (dir, _) = i.stop();
    let copies = finished_in(&dir.join("copies"));
    // (The ring deletes what was let go at its next trim, when a file ends: files the
    // last runs let go are still here.)
    assert!(copies.len() >= 4, "every rotated file was run: {copies:?}");
    for copy in &copies {
        assert_clean(copy, 1);
    }
    let seqs: Vec<u32> = copies
        .iter()
        .map(|c| c.file_name().unwrap().to_str().unwrap().split('_').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u32).collect::<Vec<_>>(), "none missed");
}
