//! SIGHUP: a reload applies the new config to what comes next (routes, listeners,
//! capture files) without disturbing a live session or losing its captured bytes; an
//! invalid config changes nothing and says why.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use crate::capture::*;
use crate::support::*;

#[tokio::test]
async fn a_reload_under_load_changes_what_comes_next_and_disturbs_nothing_live() {
    let (logs, _capturing) = Logs::capture();
    within(async {
        let dir = scratch_dir("reload");
        let (config, captures, moved) = (dir.join("wstap.toml"), dir.join("captures"), dir.join("moved"));
        let echo = echo_upstream().await;
        let plain = fixed_upstream("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnew route").await;
        let write = |listen: &str, upstream: std::net::SocketAddr, capture_dir: &std::path::Path| {
            let toml = format!(
                "listen = [{listen}]\n[[route]]\npath_prefix = \"/ws\"\nupstream = \"ws://{echo}\"\n\
                 [[route]]\nupstream = \"ws://{upstream}\"\n{}",
                capture_toml(capture_dir, "")
            );
            std::fs::write(&config, toml).unwrap();
        };
        // Each listener on its own loopback address, so a closed one can be proven closed.
        write("\"127.0.0.5:0\"", echo, &captures);
        let proxy = Proxy::start_file(&config).await;
        let first = proxy.addr();
        let mut listening = proxy.listening.clone();

        // A live session, busy for the whole test.
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{first}/ws")).await.unwrap();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let load = tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0u32.. {
                let m = Message::binary(format!("live {i}").into_bytes());
                ws.send(m.clone()).await.unwrap();
                assert_eq!(ws.next().await.unwrap().unwrap(), m, "the live session is undisturbed");
                sent.push(format!("live {i}").into_bytes());
                if stopped.try_recv().is_ok() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            (ws, sent)
        });

        // Reload: a second listener, "/" now goes to another upstream, and capture files
        // go to another directory from the next file on.
        write("\"127.0.0.5:0\", \"127.0.0.6:0\"", plain, &moved);
        proxy.reload().await;
        listening.wait_for(|l| l.len() == 2).await.unwrap();
        let second = listening.borrow()[1];
        assert_eq!(listening.borrow()[0], first, "an unchanged listener is kept, port and all");
        for addr in [first, second] {
            let response = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
            assert!(response.ends_with("new route"), "{addr}: new connections get the new routes: {response}");
        }

        // An invalid config changes nothing, and the log names the file and the key.
        std::fs::write(&config, "listen = [\"127.0.0.5:0\"]\n[[route]]\nupstream = \"ftp://nope\"\n").unwrap();
        proxy.reload().await;
        eventually("the invalid reload is reported", || !logs.lines_with(&["reload failed"]).is_empty()).await;
        let after_invalid = raw_exchange(first, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(after_invalid.ends_with("new route"), "still on the previous config: {after_invalid}");
        // Then drop the first listener.
        write("\"127.0.0.6:0\"", plain, &moved);
        proxy.reload().await;
        listening.wait_for(|l| l.len() == 1).await.unwrap();
        assert_eq!(listening.borrow()[0], second);
        let failed = logs.lines_with(&["reload failed"]);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].contains("wstap.toml:3:") && failed[0].contains("route[0].upstream"), "{}", failed[0]);
        drop(TcpListener::bind(first).await.expect("the removed listener is closed"));

        stop.send(()).unwrap();
        let (ws, sent) = load.await.unwrap();
        assert!(sent.len() > 10, "the session ran through the reloads: {} messages", sent.len());
        close_and_stop(ws, proxy).await;

        // Not one captured byte of the live session was lost across the reloads (each
        // of which starts a new file).
        let (before, after) = (the_files(&captures), the_files(&moved));
        assert!(
            !before.is_empty() && !after.is_empty(),
            "the next file went to the new directory: {before:?} {after:?}"
        );
        let files: Vec<_> = before.into_iter().chain(after).collect();
        let captured: Vec<Vec<u8>> = decode_each(&files, 2)
            .into_iter()
            .flat_map(|(up, _)| up)
            .filter(|m| m.0 == wstap_wire::wsframe::Opcode::Binary)
            .map(|m| m.1)
            .collect();
        assert!(captured == sent, "every message of the live session is captured, once, in order");
    })
    .await;
}

/// A reload whose files cannot be read (here the config itself is a FIFO whose writer
/// says nothing) is read off the daemon's action loop: the daemon goes on serving, and
/// SIGTERM stops it at once, abandoning the reload rather than waiting for it.
#[tokio::test]
async fn a_reload_stuck_reading_its_config_does_not_keep_sigterm_from_stopping_the_daemon() {
    use std::os::unix::fs::OpenOptionsExt;
    use std::process::Command;
    within(async {
        let dir = scratch_dir("reload-stuck");
        let config = dir.join("wstap.toml");
        let upstream = fixed_upstream("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nold").await;
        std::fs::write(&config, crate::support::config(upstream, "[capture]\nmode = \"off\"")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_wstap"));
        command.args(["run", "-c"]).arg(&config);
        let (mut daemon, addr, log) = spawn_daemon_command(command, &config).await;

        std::fs::remove_file(&config).unwrap();
        assert!(Command::new("mkfifo").arg(&config).status().unwrap().success());
        assert!(Command::new("kill").args(["-HUP", &daemon.id().to_string()]).status().unwrap().success());
        // Once the reload has the FIFO open for reading, a writer can open it (without a
        // reader, it could not): held open and silent, it keeps the read from finishing.
        let mut writer = None;
        eventually("the reload reads the config", || {
            let opened = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&config);
            writer = opened.ok();
            writer.is_some()
        })
        .await;
        let request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        assert!(raw_exchange(addr, request).await.ends_with("old"), "still serving meanwhile");

        assert!(Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status().unwrap().success());
        let exit = tokio::task::spawn_blocking(move || daemon.wait().unwrap()).await.unwrap();
        assert_eq!(exit.code(), Some(0), "SIGTERM stops it");
        let log: Vec<String> = log.try_iter().collect();
        assert!(log.iter().any(|l| l.contains("reload abandoned")), "stopped during the reload: {log:?}");
        assert!(!log.iter().any(|l| l.contains("reload failed")), "not after it had timed out: {log:?}");
        drop(writer);
    })
    .await;
}
