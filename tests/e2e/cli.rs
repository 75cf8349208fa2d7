//! The `wstap` binary itself: shipped configs, `check`, `--version`, and SIGTERM on a
//! real daemon process.

use std::path::Path;
use std::process::Command;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

const WSTAP: &str = env!("CARGO_BIN_EXE_wstap");

/// A fresh, existing scratch directory for one test.
fn scratch(name: &str) -> Scratch {
    let dir = Scratch::new(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_shipped_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            wstap::Settings::load(&path).unwrap_or_else(|e| panic!("{e}"));
            let out = Command::new(WSTAP).arg("check").arg("-c").arg(&path).output().unwrap();
            assert!(out.status.success(), "wstap check {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
            checked += 1;
        }
    }
    assert!(checked > 0, "no configs found in {}", dir.display());
}

#[test]
fn check_prints_effective_settings_or_names_the_bad_key() {
    let dir = scratch("check");
    let good = dir.join("good.toml");
    std::fs::write(&good, "listen = [\"127.0.0.1:8080\"]\n[[route]]\nupstream = \"ws://127.0.0.1:9000\"\n").unwrap();
    let out = Command::new(WSTAP).args(["check", "--config"]).arg(&good).output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("grace = \"30s\""), "defaults are shown: {stdout}");

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "listen = [\"127.0.0.1:8080\"]\n[[route]]\nupstream = \"ws://127.0.0.1:9000\"\n[limits]\nidle_timeout = \"soon\"\n").unwrap();
    let out = Command::new(WSTAP).args(["check", "-c"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [bad.to_str().unwrap(), ":5:", "limits.idle_timeout"] {
        assert!(stderr.contains(want), "{want:?} missing from: {stderr}");
    }

    let out = Command::new(WSTAP).args(["run", "-c"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "run refuses a bad config too");
}

#[test]
fn version_is_printed() {
    let out = Command::new(WSTAP).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("wstap {}", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn sigusr1_rotates_and_sigterm_drains_a_live_session_and_exits_zero() {
    within(async {
        let echo = echo_upstream().await;
        let dir = scratch("signals");
        let (config, captures) = (dir.join("wstap.toml"), dir.join("captures"));
        let capture =
            format!("[capture]\ndir = {:?}\n[capture.rotate]\ninterval = \"0s\"", captures.display().to_string());
        std::fs::write(&config, super::support::config(echo, &capture)).unwrap();
        let (mut child, addr) = spawn_daemon(&config).await;
        let pid = child.id().to_string();
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await.unwrap();
        let mut round_trip = async |text: &str| {
            ws.send(Message::text(text)).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
        };
        round_trip("before SIGUSR1").await;
        assert!(Command::new("kill").args(["-USR1", &pid]).status().unwrap().success());
        let files = || std::fs::read_dir(&captures).map(|d| d.count()).unwrap_or(0);
        eventually("SIGUSR1 finishes the first file and starts a second", || files() == 2).await;
        round_trip("after SIGUSR1").await;

        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        round_trip("still served while draining").await;
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        drop(ws); // closes the client socket; the session then ends and the drain completes

        let exit = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
        assert_eq!(exit.code(), Some(0), "exit status after SIGTERM");
        let mut names: Vec<String> = std::fs::read_dir(&captures)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names[0].starts_with("wstap_00001_") && names[1].starts_with("wstap_00002_"), "{names:?}");
        assert!(names.iter().all(|n| n.ends_with(".pcapng")), "both finished (renamed) on exit: {names:?}");
    })
    .await;
}

/// `workers = 1` runs every connection on the main thread (no tokio worker threads);
/// `workers = 3` starts three. Either way sessions are served.
#[tokio::test]
async fn workers_sets_the_threads_that_run_connections() {
    within(async {
        let echo = echo_upstream().await;
        for (workers, expected) in [(1, 0), (3, 3)] {
            let dir = scratch(&format!("workers-{workers}"));
            let config = dir.join("wstap.toml");
            std::fs::write(&config, format!("workers = {workers}\n{}", super::support::config(echo, ""))).unwrap();
            let (child, addr) = spawn_daemon(&config).await;
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await.unwrap();
            ws.send(Message::text("hello")).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
            let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|c| c.trim().to_owned())
                .collect();
            let runtime_workers = threads.iter().filter(|c| c.as_str() == "tokio-rt-worker").count();
            assert_eq!(runtime_workers, expected, "workers = {workers}: threads {threads:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn systemd_hears_ready_watchdog_reloading_ready_and_stopping_in_order() {
    within(async {
        let dir = scratch("notify");
        let socket_path = dir.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
        socket.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let config = dir.join("wstap.toml");
        let capture = format!("[capture]\ndir = {:?}", dir.join("captures").display().to_string());
        std::fs::write(&config, super::support::config(echo_upstream().await, &capture)).unwrap();
        let env = [("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", "200000")];
        let (mut child, _addr) = spawn_daemon_with_env(&config, &env).await;

        // Read what the daemon tells "systemd", until `until` has been seen.
        let receive = |socket: std::os::unix::net::UnixDatagram, until: &'static str| {
            tokio::task::spawn_blocking(move || {
                let (mut seen, mut buf) = (Vec::new(), [0u8; 4096]);
                while !seen.iter().any(|m: &String| m.contains(until)) {
                    let n = socket.recv(&mut buf).expect("a notification within 10 s");
                    seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
                (socket, seen)
            })
        };
        let (socket, mut seen) = receive(socket, "WATCHDOG=1").await.unwrap();
        let (socket, more) = receive(socket, "WATCHDOG=1").await.unwrap();
        seen.extend(more);
        assert!(Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap().success());
        let (socket, more) = receive(socket, "STATUS=reloaded").await.unwrap();
        seen.extend(more);
        // An invalid config: systemd hears why, and the daemon goes on.
        let good = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, "listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"ftp://x\"\n").unwrap();
        assert!(Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap().success());
        let (socket, more) = receive(socket, "STATUS=reload failed").await.unwrap();
        let failed = more.last().unwrap().clone();
        seen.extend(more);
        assert!(failed.contains("route[0].upstream") && failed.contains("wstap.toml:3:"), "{failed}");
        std::fs::write(&config, good).unwrap();
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
        let (_socket, more) = receive(socket, "STOPPING=1").await.unwrap();
        seen.extend(more);
        let exit = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
        assert_eq!(exit.code(), Some(0));

        let first =
            |what: &str| seen.iter().position(|m| m.contains(what)).unwrap_or_else(|| panic!("{what} in {seen:?}"));
        let (ready, watchdog, stopping) = (first("READY=1"), first("WATCHDOG=1"), first("STOPPING=1"));
        let reloading = first("RELOADING=1");
        let ready_again =
            reloading + seen[reloading..].iter().position(|m| m.contains("READY=1")).expect("READY after RELOADING");
        assert!(
            ready < watchdog && watchdog < reloading && reloading < ready_again && ready_again < stopping,
            "READY, WATCHDOG, RELOADING, READY, STOPPING in order: {seen:?}"
        );
        assert!(seen[reloading].contains("MONOTONIC_USEC="), "{seen:?}");
        assert!(seen[ready].contains("STATUS=listening on 127.0.0.1:"), "{seen:?}");
        assert!(
            seen.iter().any(|m| m.contains("STATUS=0 connections, 0 WebSocket sessions; 0 bytes in, 0 bytes out")),
            "STATUS carries connections, sessions and bytes: {seen:?}"
        );
        assert!(seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2, "{seen:?}");
        assert!(!seen[stopping..].iter().any(|m| m.contains("WATCHDOG=1")), "no ping after STOPPING: {seen:?}");
    })
    .await;
}

/// The shipped unit with its paths pointed at this build and this repository's config.
fn unit_for_this_build() -> String {
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/wstap.service")).unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/wstap.toml");
    unit.replace("/usr/local/bin/wstap", WSTAP).replace("/etc/wstap/wstap.toml", config.to_str().unwrap())
}

#[test]
fn the_shipped_unit_is_hardened_and_passes_systemd_analyze_verify() {
    let unit = unit_for_this_build();
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=",
        "Restart=on-failure",
        "DynamicUser=yes",
        "StateDirectory=wstap",
        "UMask=0027",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
    ] {
        assert!(unit.contains(line), "the unit has {line:?}");
    }
    // `make test` installs it (scripts/deps.sh).
    assert!(
        Command::new("systemd-analyze").arg("--version").output().is_ok(),
        "systemd-analyze is not installed: `make deps` installs Debian's systemd"
    );
    let dir = scratch("unit");
    let path = dir.join("wstap.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
}

#[test]
fn make_install_honours_prefix_and_destdir_and_keeps_an_edited_config() {
    let dest = scratch("install");
    let install = || {
        let out = Command::new("make")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["install-files", "PREFIX=/usr", &format!("BIN={WSTAP}"), &format!("DESTDIR={}", dest.display())])
            .output()
            .unwrap();
        assert!(out.status.success(), "make install-files: {}", String::from_utf8_lossy(&out.stderr));
    };
    install();
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(dest.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("usr/bin/wstap"), 0o755);
    assert_eq!(mode("etc/systemd/system/wstap.service"), 0o644);
    let unit = std::fs::read_to_string(dest.join("etc/systemd/system/wstap.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/wstap run -c /etc/wstap/wstap.toml"), "{unit}");
    let config = dest.join("etc/wstap/wstap.toml");
    wstap::Settings::load(&config).unwrap();
    std::fs::write(&config, "# edited by the operator\n").unwrap();
    install();
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# edited by the operator\n", "an existing config is kept");
}
