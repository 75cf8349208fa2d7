//! Soak and faults, against the real daemon binary: many concurrent sessions with steady
//! traffic, then churned short sessions; RSS and open file descriptors must come back to
//! their baseline, every message must come back exact, every capture file must open.
//! Then faults under load: resets mid-frame on either side, peers that stop reading, and
//! SIGHUP every 200 ms; an unrelated session must not notice any of them.
//!
//! The short version runs with the tests; `make soak` sets `WSTAP_SOAK=long`
//! (1,000 sessions for 10 minutes, 100,000 churned) and prints the figures.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::capture::{capture_dir, run};
use crate::support::*;

/// (concurrent sessions, seconds of steady traffic, churned sessions): `WSTAP_SOAK=long`
/// for `make soak`, `WSTAP_SOAK=sessions,seconds,churned` for any other size.
fn scale() -> (usize, u64, usize) {
    let custom = |s: &str| {
        let mut n = s.split(',').map(|n| n.trim().parse::<usize>().expect("WSTAP_SOAK=sessions,seconds,churned"));
        (n.next().unwrap(), n.next().unwrap() as u64, n.next().unwrap())
    };
    match std::env::var("WSTAP_SOAK").as_deref() {
        Ok("long") => (1000, 600, 100_000),
        Ok(s) => custom(s),
        Err(_) => (100, 3, 2000),
    }
}

/// (RSS in KiB, open file descriptors) of process `pid`.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let rss = rss.split_whitespace().nth(1).unwrap().parse().unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    (rss, fds)
}

/// A daemon in `dir` with capture on (client leg, the default) and an echo upstream.
async fn soak_daemon(dir: &Path, upstream: std::net::SocketAddr) -> (DaemonProcess, std::net::SocketAddr) {
    let config = dir.join("wstap.toml");
    let toml = format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\n[[route]]\nupstream = \"ws://{upstream}\"\n\
         [limits]\nmax_connections = 20000\n[capture]\ndir = \"captures\"\n[capture.rotate]\n\
         size = \"8MiB\"\ninterval = \"0s\"\nfiles = 0\n[log]\nlevel = \"warn,wstap::service::listeners=info\"\n"
    );
    std::fs::write(&config, toml).unwrap();
    spawn_daemon(&config).await
}

#[tokio::test]
async fn many_sessions_then_churn_leave_memory_and_descriptors_where_they_were() {
    let (sessions, secs, churn) = scale();
    let dir = capture_dir("soak");
    std::fs::create_dir_all(&*dir).unwrap();
    let (mut daemon, addr) = soak_daemon(&dir, echo_upstream().await).await;
    let pid = daemon.id();
    // Warm up (thread pools, the writer's first file), then the baseline.
    for _ in 0..20 {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/warm")).await.unwrap();
        ws.send(Message::text("warm")).await.unwrap();
        ws.next().await.unwrap().unwrap();
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    let (rss0, fds0) = usage(pid);

    // Phase 1: concurrent sessions, each a message every 100 ms, each echo exact.
    let until = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..sessions)
        .map(|s| {
            tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/s/{s}")).await.unwrap();
                let mut n = 0u64;
                while Instant::now() < until {
                    let m = Message::binary(format!("session {s} message {n}").into_bytes());
                    ws.send(m.clone()).await.unwrap();
                    assert_eq!(ws.next().await.unwrap().unwrap(), m, "exact echo");
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await; // the load's pace
                }
                ws.close(None).await.unwrap();
                while let Some(Ok(_)) = ws.next().await {}
                n
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs) / 2).await; // mid-load, for the figures
    let (rss_busy, fds_busy) = usage(pid);
    let mut messages = 0;
    for t in tasks {
        messages += t.await.unwrap();
    }

    // Phase 2: short sessions, 50 at a time.
    let started = Instant::now();
    let per_worker = churn / 50;
    let workers: Vec<_> = (0..50)
        .map(|w| {
            tokio::spawn(async move {
                for i in 0..per_worker {
                    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/c/{w}/{i}")).await.unwrap();
                    ws.send(Message::text("short")).await.unwrap();
                    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("short"));
                    ws.close(None).await.unwrap();
                    while let Some(Ok(_)) = ws.next().await {}
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let churn_secs = started.elapsed().as_secs_f64();

    // Back to the baseline: descriptors exactly (the daemon closes every socket; the
    // capture file may have rotated), RSS within 16 MiB, both within 10 s.
    let mut after = usage(pid);
    for _ in 0..100 {
        after = usage(pid);
        if after.1 <= fds0 + 1 && after.0 <= rss0 + 16 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "soak: {sessions} sessions x {secs} s ({messages} messages), {churn} churned in {churn_secs:.1} s; \
         RSS {rss0} KiB idle, {rss_busy} KiB busy, {} KiB after; fds {fds0} idle, {fds_busy} busy, {} after",
        after.0, after.1
    );
    assert!(after.1 <= fds0 + 1, "descriptors back to {fds0}: {}", after.1);
    assert!(after.0 <= rss0 + 16 * 1024, "RSS back within 16 MiB of {rss0} KiB: {} KiB", after.0);

    // Every capture file opens (the daemon finishes them on SIGTERM).
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    assert!(daemon.wait().unwrap().success());
    let captures = dir.join("captures");
    let mut files: Vec<_> = std::fs::read_dir(&captures).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty());
    for f in &files {
        let info = run("capinfos", &["-c", "-M", f.to_str().unwrap()]);
        assert!(info.contains("Number of packets"), "{}: {info}", f.display());
    }
}

#[tokio::test]
async fn faults_under_load_leave_other_sessions_untouched() {
    within(async {
        let dir = capture_dir("faults");
        std::fs::create_dir_all(&*dir).unwrap();
        // An upstream that resets mid-frame (`/reset`), stops reading (`/deaf`), or floods a
        // client that does not read (`/flood`).
        let upstream = serve(|mut s| async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&head).into_owned();
            if ["GET /reset", "GET /deaf", "GET /flood"].iter().any(|p| text.starts_with(p)) {
                let key = text.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")).unwrap_or("x").trim().to_owned();
                let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                let _ = s.write_all(resp.as_bytes()).await;
                if text.starts_with("GET /reset") {
                    // Half a frame, then a reset.
                    let _ = s.write_all(&[0x82, 0x7e, 0x10, 0x00, 1, 2, 3]).await;
                    #[allow(deprecated)] // an abortive close is the point here
                    let _ = s.set_linger(Some(Duration::ZERO));
                    return;
                }
                if text.starts_with("GET /flood") {
                    // 64 KiB binary frames for as long as the proxy takes them.
                    let mut frame = vec![0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0];
                    frame.resize(10 + 64 * 1024, 7);
                    while s.write_all(&frame).await.is_ok() {}
                    return;
                }
                // Deaf: never reads again, holds the socket.
                std::future::pending::<()>().await;
            }
        })
        .await;
        let echo = echo_upstream().await;
        let config = dir.join("wstap.toml");
        let toml = format!(
            "listen = [\"127.0.0.1:0\"]\n[[route]]\npath_prefix = \"/reset\"\nupstream = \"ws://{upstream}\"\n\
             [[route]]\npath_prefix = \"/deaf\"\nupstream = \"ws://{upstream}\"\n\
             [[route]]\npath_prefix = \"/flood\"\nupstream = \"ws://{upstream}\"\n\
             [[route]]\nupstream = \"ws://{echo}\"\n[capture]\ndir = \"captures\"\n[log]\nlevel = \"warn,wstap::service::listeners=info\"\n"
        );
        std::fs::write(&config, toml).unwrap();
        let (daemon, addr) = spawn_daemon(&config).await;
        let pid = daemon.id();

        // The witness: a session that must see every echo exact throughout.
        let (mut witness, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/witness")).await.unwrap();

        // Faults, each while the witness talks; SIGHUP every round.
        let mut deaf_clients = Vec::new();
        for round in 0..10u32 {
            // Upstream resets mid-frame.
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/reset")).await.unwrap();
            assert!(ws.next().await.is_none_or(|r| r.is_err()), "the client sees the session end");
            // Client resets mid-frame.
            let mut raw = TcpStream::connect(addr).await.unwrap();
            raw.write_all(UPGRADE.as_bytes()).await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = raw.read(&mut buf).await;
            raw.write_all(&[0x82, 0xfe, 0x10, 0x00, 0, 0, 0, 0, 1, 2]).await.unwrap();
            #[allow(deprecated)] // an abortive close is the point here
            raw.set_linger(Some(Duration::ZERO)).unwrap();
            drop(raw);
            // A deaf upstream: the client writes until the proxy stops reading from it.
            let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/deaf")).await.unwrap();
            let (mut sink, _stream) = ws.split();
            let flood = async {
                loop {
                    sink.send(Message::binary(vec![0u8; 64 * 1024])).await?;
                }
                #[allow(unreachable_code)]
                Ok::<(), tokio_tungstenite::tungstenite::Error>(())
            };
            let _ = tokio::time::timeout(Duration::from_millis(200), flood).await; // backpressure holds it
            // A client that stops reading while its upstream floods it (kept to the end).
            let mut deaf_client = TcpStream::connect(addr).await.unwrap();
            deaf_client.write_all(UPGRADE.replace("GET /chat ", "GET /flood ").as_bytes()).await.unwrap();
            deaf_clients.push(deaf_client);
            // SIGHUP.
            let status = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
            assert!(status.success());
            let m = Message::binary(format!("witness {round}").into_bytes());
            witness.send(m.clone()).await.unwrap();
            assert_eq!(witness.next().await.unwrap().unwrap(), m, "round {round}: the witness is untouched");
        }
        let (rss, _) = usage(pid);
        assert!(
            rss < 200 * 1024,
            "ten deaf upstreams and ten deaf clients flooded with 64 KiB messages hold {rss} KiB"
        );
        drop(deaf_clients);
        witness.close(None).await.unwrap();
        while let Some(Ok(_)) = witness.next().await {}
        drop(daemon);
    })
    .await;
}

/// kill -9 and start again, over and over, on one capture directory: every session's
/// echoes are exact while it runs, and every file left (each killed run's `.part` is
/// finished by the next start) opens and holds packets.
#[tokio::test]
async fn a_kill_9_restart_loop_loses_no_traffic_and_leaves_every_file_readable() {
    let rounds = if std::env::var("WSTAP_SOAK").is_ok() { 20 } else { 4 };
    let dir = capture_dir("kill-loop");
    std::fs::create_dir_all(&*dir).unwrap();
    let upstream = echo_upstream().await;
    for round in 0..=rounds {
        let (mut daemon, addr) = soak_daemon(&dir, upstream).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/round/{round}")).await.unwrap();
        for i in 0..50 {
            let m = Message::binary(format!("round {round} message {i}").into_bytes());
            ws.send(m.clone()).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), m, "exact echo");
        }
        // The last run stops cleanly (its session closed first); the others are killed.
        let signal = if round == rounds { "-TERM" } else { "-KILL" };
        if round == rounds {
            ws.close(None).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
            drop(ws);
        }
        let status = std::process::Command::new("kill").args([signal, &daemon.id().to_string()]).status().unwrap();
        assert!(status.success());
        daemon.wait().unwrap();
    }
    let mut files: Vec<_> = std::fs::read_dir(dir.join("captures")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= rounds, "a file per run: {files:?}");
    for f in &files {
        assert!(f.extension().is_some_and(|e| e == "pcapng"), "every killed run's file finished: {}", f.display());
        let info = run("capinfos", &["-c", "-M", f.to_str().unwrap()]);
        let packets = info.lines().find(|l| l.contains("Number of packets")).unwrap_or_else(|| panic!("{info}"));
        assert!(!packets.trim_end().ends_with(" 0"), "{}: {packets}", f.display());
    }
}
