//! The key log file (`capture.tls_keylog`) through the real binary: `check` and `run`
//! refuse, at once and saying why, a FIFO, a symlink, a file others can read and a file
//! someone else owns; `check` warns of a directory anyone can write; a reload onto a bad
//! key log fails at once, keeps the old config, and SIGTERM still stops the daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::support::*;

const WSTAP: &str = env!("CARGO_BIN_EXE_wstap");

/// A config in `dir` whose key log is `keys`, routed to `upstream`.
fn config_with_keylog(dir: &Path, keys: &Path, upstream: std::net::SocketAddr) -> std::path::PathBuf {
    let config = dir.join("wstap.toml");
    let toml = format!(
        "listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"ws://{upstream}\"\n[capture]\ndir = {:?}\ntls_keylog = {:?}\n",
        dir.join("captures"),
        keys
    );
    std::fs::write(&config, toml).unwrap();
    config
}

/// `wstap <command> -c <config>`, run to its end; a command that hangs fails the test.
async fn wstap(command: &str, config: &Path) -> Output {
    let mut child = tokio::process::Command::new(WSTAP);
    child.args([command, "-c"]).arg(config).current_dir(config.parent().unwrap()).kill_on_drop(true);
    let output = tokio::time::timeout(HANG / 2, child.output()).await;
    output.unwrap_or_else(|_| panic!("`wstap {command}` hung")).unwrap()
}

/// Both `check` and `run` fail, and say `wants` on stderr.
async fn both_refuse(config: &Path, wants: &[&str]) {
    for command in ["check", "run"] {
        let out = wstap(command, config).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "`wstap {command}` refuses: {stderr}");
        for want in wants {
            assert!(stderr.contains(want), "`wstap {command}`: {want:?} missing from: {stderr}");
        }
    }
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

#[tokio::test]
async fn a_fifo_or_a_symlink_where_the_key_log_goes_is_refused_at_once() {
    within(async {
        let dir = scratch_dir("keylog-fifo");
        let keys = dir.join("keys.log");
        mkfifo(&keys);
        let config = config_with_keylog(&dir, &keys, closed_port().await);
        both_refuse(&config, &["capture.tls_keylog", keys.to_str().unwrap(), "a FIFO"]).await;

        // A symlink, even to a file of wstap's own user with the right mode.
        let target = dir.join("target.log");
        std::fs::write(&target, "").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(&keys).unwrap();
        std::os::unix::fs::symlink(&target, &keys).unwrap();
        both_refuse(&config, &["capture.tls_keylog", keys.to_str().unwrap(), "symbolic link"]).await;
    })
    .await;
}

#[tokio::test]
async fn a_key_log_others_can_read_is_refused_and_left_alone_and_a_shared_directory_is_warned_of() {
    within(async {
        let dir = scratch_dir("keylog-mode");
        let keys = dir.join("keys.log");
        std::fs::write(&keys, "").unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
        let config = config_with_keylog(&dir, &keys, closed_port().await);
        both_refuse(&config, &["capture.tls_keylog", keys.to_str().unwrap(), "mode 0644", "remove it"]).await;
        let mode = std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "not chmod'ed: an earlier reader would keep receiving keys");

        // Gone, in a directory anyone can write: `check` accepts, warns, creates nothing.
        std::fs::remove_file(&keys).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let out = wstap("check", &config).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("warning: capture.tls_keylog") && stderr.contains("can be written by anyone"),
            "{stderr}"
        );
        assert!(!keys.exists(), "check creates nothing");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    })
    .await;
}

#[tokio::test]
#[ignore = "needs root: gives a file to another user"]
async fn a_key_log_someone_else_owns_is_refused() {
    within(async {
        let dir = scratch_dir("keylog-owner");
        let keys = dir.join("keys.log");
        std::fs::write(&keys, "").unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&keys, Some(65534), None).expect("chown (this test needs root)");
        let config = config_with_keylog(&dir, &keys, closed_port().await);
        both_refuse(&config, &["capture.tls_keylog", keys.to_str().unwrap(), "owned by uid 65534"]).await;
    })
    .await;
}

/// A reload onto a FIFO key log fails at once (it used to hang in `open`, and with it
/// the daemon's signal handling), names the key and the file, and changes nothing.
#[tokio::test]
async fn a_reload_onto_a_fifo_key_log_fails_at_once_and_sigterm_still_stops_the_daemon() {
    within(async {
        let dir = scratch_dir("keylog-reload");
        let keys = dir.join("keys.log");
        let upstream = fixed_upstream("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nold").await;
        let config = config_with_keylog(&dir, &keys, upstream);
        let mut command = Command::new(WSTAP);
        command.args(["run", "-c"]).arg(&config);
        let (mut daemon, addr, log) = spawn_daemon_command(command, &config).await;
        assert_eq!(std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777, 0o600, "created 0600");

        std::fs::remove_file(&keys).unwrap();
        mkfifo(&keys);
        assert!(Command::new("kill").args(["-HUP", &daemon.id().to_string()]).status().unwrap().success());
        let (failed, _log) = tokio::task::spawn_blocking(move || {
            let line = log.iter().find(|l| l.contains("reload failed")).expect("the reload fails");
            (line, log)
        })
        .await
        .unwrap();
        for want in ["capture.tls_keylog", keys.to_str().unwrap(), "a FIFO"] {
            assert!(failed.contains(want), "{want:?} missing from: {failed}");
        }
        let request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        assert!(raw_exchange(addr, request).await.ends_with("old"), "still serving on the old config");

        assert!(Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status().unwrap().success());
        let exit = tokio::task::spawn_blocking(move || daemon.wait().unwrap()).await.unwrap();
        assert_eq!(exit.code(), Some(0), "SIGTERM stops it");
    })
    .await;
}
