//! The admin listener: every metric moves when its event happens, `/sessions` lists live
//! sessions, `/healthz` answers.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::capture::*;
use crate::support::*;

/// `/metrics` as (name with labels → value).
pub(crate) async fn scrape(admin: SocketAddr) -> BTreeMap<String, u64> {
    let response = raw_exchange(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// Scrapes until `done` holds (the capture writer and the reload run on their own time),
/// for up to five seconds; returns the last scrape.
async fn scrape_until(
    admin: SocketAddr,
    what: &str,
    done: impl Fn(&BTreeMap<String, u64>) -> bool,
) -> BTreeMap<String, u64> {
    for _ in 0..500 {
        let m = scrape(admin).await;
        if done(&m) {
            return m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 5 s: {:?}", scrape(admin).await);
}

async fn get(admin: SocketAddr, path: &str) -> String {
    raw_exchange(admin, format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await
}

#[tokio::test]
async fn every_metric_moves_when_its_event_happens() {
    within(async {
        let dir = scratch_dir("admin");
        let (config, captures) = (dir.join("wstap.toml"), dir.join("captures"));
        let (echo, refused) = (echo_upstream().await, closed_port().await);
        let toml = format!(
            "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[route]]\npath_prefix = \"/refused\"\nupstream = \"ws://{refused}\"\n\
             [[route]]\nupstream = \"ws://{echo}\"\n{}",
            capture_toml(&captures, "")
        );
        std::fs::write(&config, &toml).unwrap();
        let proxy = Proxy::start_file(&config).await;
        let admin = proxy.admin.expect("admin listener");
        let m = scrape(admin).await;
        for (name, want) in [("wstap_up", 1), ("wstap_connections_active", 0), ("wstap_sessions_active", 0)] {
            assert_eq!(m[name], want, "{name}");
        }
        assert_eq!(m["wstap_capture_write_errors_total"], 0, "capture counters are there");

        // A session: connections, sessions, bytes on both legs both ways, captured bytes.
        let mut w = Witness::open(&proxy.ws_url("/chat")).await;
        w.check("open").await;
        let m1 = scrape(admin).await;
        assert_eq!((m1["wstap_sessions_active"], m1["wstap_sessions_total"]), (1, 1));
        assert!(m1["wstap_connections_active"] >= 1 && m1["wstap_connections_total"] >= 1);
        for leg in ["client", "upstream"] {
            for dir in ["in", "out"] {
                let key = format!("wstap_bytes_total{{leg=\"{leg}\",direction=\"{dir}\"}}");
                assert!(m1[&key] > m[&key], "{key} moves");
            }
        }
        let sessions: serde_json::Value = {
            let r = get(admin, "/sessions").await;
            serde_json::from_str(&r[r.find("\r\n\r\n").unwrap() + 4..]).unwrap()
        };
        assert_eq!(sessions.as_array().unwrap().len(), 1, "{sessions}");
        assert!(sessions[0]["bytes_from_client"].as_u64().unwrap() > 0, "{sessions}");
        assert!(sessions[0]["age_seconds"].as_f64().is_some(), "{sessions}");
        // Its effective capture policy.
        let capture = &sessions[0]["capture"];
        assert_eq!(capture["captured"], true, "{sessions}");
        assert_eq!(capture["mode"], "websocket", "{sessions}");
        assert_eq!(capture["legs"], serde_json::json!(["client", "upstream"]), "{sessions}");
        assert_eq!(capture["sample"], 1.0, "{sessions}");
        w.close().await;
        let after = scrape_until(admin, "the session ends and its bytes are captured", |m| {
            m["wstap_sessions_active"] == 0 && m["wstap_capture_bytes_total"] > 0
        })
        .await;
        assert!(after["wstap_capture_packets_total"] > 0);
        assert_eq!(get(admin, "/sessions").await.split("\r\n\r\n").nth(1), Some("[]"));

        // Failed requests, by side and kind.
        raw_exchange(proxy.addr(), b"GET /refused HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        raw_exchange(proxy.addr(), b"GARBAGE\r\n\r\n").await;
        let m2 = scrape(admin).await;
        assert_eq!(m2["wstap_request_errors_total{side=\"upstream\",kind=\"connect\"}"], 1);
        assert_eq!(m2["wstap_request_errors_total{side=\"client\",kind=\"malformed\"}"], 1);

        // Reloads, by result; files finished on rotation.
        proxy.reload().await;
        scrape_until(admin, "a valid reload is counted", |m| m["wstap_reloads_total{result=\"ok\"}"] == 1).await;
        std::fs::write(&config, "listen = [").unwrap();
        proxy.reload().await;
        proxy.rotate().await;
        scrape_until(admin, "a failed reload and a finished file are counted", |m| {
            m["wstap_reloads_total{result=\"failed\"}"] == 1 && m["wstap_capture_files_finished_total"] >= 1
        })
        .await;

        assert!(get(admin, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(admin, "/nope").await.starts_with("HTTP/1.1 404"));
        let post =
            raw_exchange(admin, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        proxy.begin_shutdown().await;
        proxy.stopped().await;
    })
    .await;
}

/// Admin connections are timed by the admin's own head timeout: a proxy that gives its
/// clients an hour to send a request head does not give it to idle admin connections.
#[tokio::test]
async fn idle_admin_connections_are_timed_out_apart_from_the_proxy() {
    use tokio::io::AsyncReadExt;
    within(async {
        let extra = "[limits]\nhandshake_timeout = \"1h\"\n[admin]\nlisten = \"127.0.0.1:0\"";
        let proxy = Proxy::start(&config(echo_upstream().await, extra)).await;
        let admin = proxy.admin.unwrap();
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(tokio::net::TcpStream::connect(admin).await.unwrap());
        }
        // Each is closed without a request (a hang here, until `HANG`, fails the test).
        for s in &mut idle {
            let mut buf = [0u8; 64];
            assert_eq!(s.read(&mut buf).await.unwrap_or(0), 0, "closed without a request");
        }
        let response = raw_exchange(admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    })
    .await;
}

/// At the admin connection limit, a new connection closes the oldest instead of being
/// turned away: idle connections, however many, never keep `/healthz` from answering.
#[tokio::test]
async fn at_the_admin_connection_limit_the_oldest_makes_room_and_healthz_answers() {
    use tokio::io::AsyncReadExt;
    within(async {
        let extra = "[limits]\nhandshake_timeout = \"1h\"\n[admin]\nlisten = \"127.0.0.1:0\"";
        let proxy = Proxy::start(&config(echo_upstream().await, extra)).await;
        let admin = proxy.admin.unwrap();
        let mut idle = Vec::new();
        for _ in 0..16 {
            idle.push(tokio::net::TcpStream::connect(admin).await.unwrap());
        }
        // A probe gets its answer (within `HANG`, far less than the proxy's hour).
        let response = raw_exchange(admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "/healthz answers while 16 idle connections are open: {response:?}"
        );
        // The oldest idle connection was the one closed.
        let mut buf = [0u8; 64];
        assert_eq!(idle[0].read(&mut buf).await.unwrap_or(0), 0, "the oldest is closed");
        // And again, with the limit still full of idle connections.
        idle.push(tokio::net::TcpStream::connect(admin).await.unwrap());
        let response = raw_exchange(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    })
    .await;
}

/// CPU time (user + system) of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn when_descriptors_run_out_the_accept_loops_wait_instead_of_spinning() {
    within(async {
        let dir = capture_dir("nofile");
        std::fs::create_dir_all(&*dir).unwrap();
        let path = dir.join("wstap.toml");
        let extra = "[admin]\nlisten = \"127.0.0.1:0\"\n[capture]\nmode = \"off\"\n[log]\nlevel = \"info\"";
        std::fs::write(&path, config(echo_upstream().await, extra)).unwrap();
        // The daemon with 48 descriptors (a shell sets the limit, then becomes it).
        let mut command = std::process::Command::new("sh");
        command.args(["-c", "ulimit -n 48 && exec \"$0\" run -c \"$1\"", env!("CARGO_BIN_EXE_wstap")]).arg(&path);
        let (daemon, addr, log) = spawn_daemon_command(command, &path).await;
        let admin = tokio::task::spawn_blocking(move || {
            let line = log.iter().find(|l| l.contains("admin endpoints served")).expect("the admin address");
            (addr_in(&line), log)
        });
        let (admin, log) = admin.await.unwrap();
        // Connections that send nothing take every descriptor left (each accepted one
        // holds one until the handshake timeout); the rest wait in the backlogs.
        let mut hogs = Vec::new();
        for _ in 0..64 {
            hogs.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        for _ in 0..4 {
            hogs.push(tokio::net::TcpStream::connect(admin).await.unwrap());
        }
        let failing = tokio::task::spawn_blocking(move || {
            let line = log.iter().find(|l| l.contains("accept failed")).expect("accept fails");
            (line, log)
        });
        let (line, log) = failing.await.unwrap();
        assert!(line.contains("Too many open files"), "{line}");
        // While accepts fail, the loops wait: a second of it costs next to no CPU (a
        // spinning loop takes a whole core) and logs a few lines, not thousands.
        let before = cpu_ticks(daemon.id());
        tokio::time::sleep(std::time::Duration::from_secs(1)).await; // the window measured
        let ticks = cpu_ticks(daemon.id()) - before;
        let lines = log.try_iter().filter(|l| l.contains("accept failed")).count();
        assert!(ticks < 30, "{ticks} ticks of CPU in one second (100 a second is a whole core)");
        assert!(lines < 50, "{lines} accept failures logged in one second");
        // Descriptors back: the admin endpoints answer again.
        drop(hogs);
        let mut response = String::new();
        for _ in 0..300 {
            response = raw_exchange(admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
            if response.starts_with("HTTP/1.1 200") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await; // the next back-off step
        }
        assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
    })
    .await;
}
