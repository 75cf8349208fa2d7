//! The keep-alive scenario: what an idle keep-alive client connection costs after a
//! 300 KB response, the client's side and the pooled upstream connection apart (issue
//! 27's lever 1). Each measurement has fresh processes: an allocator that has served load
//! reuses what it freed, and would hide the growth. nginx runs as a reverse proxy with
//! keep-alive to its upstream is configured (one worker, an `upstream` block with
//! `keepalive`, `Connection ""`); wstap with capture off and with the default capture.
//! With the upstream keeping its connections alive, a client connection costs its own
//! side and its pooled upstream connection; with the upstream closing after each answer
//! (`/close/…`), its own side alone.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{children, free_port, nginx_bin, rss_kib, start_wstap, wait_ready, Results, Server};

/// The response each connection reads before it idles.
const RESPONSE: usize = 300_000;

/// Adds the scenario's rows to `r`: `n` idle connections per target and variant.
pub async fn measure(dir: &Path, upstream: &str, log: &str, n: usize, r: &mut Results) {
    for (variant, prefix) in [("pooled upstream", ""), ("client side alone", "/close")] {
        let scenario = format!("{n} idle keep-alive connections after a 300 KB response, {variant}");
        for target in ["nginx", "wstap-off", "wstap-on"] {
            let (server, pids) = start(dir, target, upstream, log);
            let before = rss_kib(&pids);
            let open = open(&server.addr, &format!("{prefix}/bytes/{RESPONSE}"), n).await;
            let per_conn = |now: u64| now.saturating_sub(before) as f64 / n as f64;
            tokio::time::sleep(Duration::from_secs(1)).await;
            r.add(&scenario, "KiB RSS/conn after 1 s", target, per_conn(rss_kib(&pids)), 0);
            // jemalloc gives freed pages back within its decay time (10 s).
            tokio::time::sleep(Duration::from_secs(10)).await;
            r.add(&scenario, "KiB RSS/conn after 11 s", target, per_conn(rss_kib(&pids)), 0);
            drop(open);
            drop(server);
        }
    }
}

/// A fresh `target` in front of `upstream`, listening, and its processes.
fn start(dir: &Path, target: &str, upstream: &str, log: &str) -> (Server, Vec<u32>) {
    let server = match target {
        "nginx" => start_nginx(dir, upstream),
        "wstap-off" => start_wstap(dir, "keepalive-off", upstream, log, "[capture]\nmode = \"off\""),
        _ => {
            let captures = dir.join("keepalive-captures");
            std::fs::create_dir_all(&captures).unwrap();
            let capture = format!("[capture]\ndir = {:?}\n[capture.rotate]\nfiles = 0", captures.display().to_string());
            start_wstap(dir, "keepalive-on", upstream, log, &capture)
        }
    };
    wait_ready(&server.addr);
    let id = server.child.id();
    let mut pids = vec![id];
    pids.extend(children(id));
    (server, pids)
}

/// nginx with keep-alive to its upstream, as its documentation configures it.
fn start_nginx(dir: &Path, upstream: &str) -> Server {
    let port = free_port();
    let conf = dir.join("nginx-keepalive.conf");
    let text = format!(
        "worker_processes 1;\nworker_rlimit_nofile 20000;\ndaemon off;\npid {pid};\nerror_log stderr;\n\
         events {{ worker_connections 20000; }}\nhttp {{ access_log off; client_body_temp_path {tmp};\n\
         proxy_temp_path {tmp};\nupstream backend {{ server {upstream}; keepalive 4096; }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://backend;\n\
         proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host; }} }} }}\n",
        pid = dir.join("nginx-keepalive.pid").display(),
        tmp = dir.display(),
    );
    std::fs::write(&conf, text).unwrap();
    let child = Command::new(nginx_bin())
        .args(["-c", conf.to_str().unwrap(), "-p", dir.to_str().unwrap(), "-e", "stderr"])
        .stderr(std::fs::File::create(dir.join("nginx-keepalive.log")).unwrap())
        .spawn()
        .expect("nginx (make bench installs it)");
    let server = Server { child, addr: format!("127.0.0.1:{port}") };
    // Its worker, which holds the connections, is up once it accepts.
    wait_ready(&server.addr);
    server
}

/// `n` connections to `addr` (100 at a time), each having read the answer to one GET of
/// `path` whole, left open.
async fn open(addr: &str, path: &str, n: usize) -> Vec<BufReader<TcpStream>> {
    let mut open = Vec::with_capacity(n);
    for start in (0..n).step_by(100) {
        let batch = (start..(start + 100).min(n)).map(|_| get(addr, path));
        open.extend(futures_util::future::join_all(batch).await);
    }
    open
}

/// One GET of `path` on a new connection to `addr`, its answer read whole.
async fn get(addr: &str, path: &str) -> BufReader<TcpStream> {
    let mut s = BufReader::new(TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{addr}: {e}")));
    s.get_mut().write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes()).await.unwrap();
    let (mut line, mut length) = (String::new(), 0);
    loop {
        line.clear();
        s.read_line(&mut line).await.unwrap();
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).await.unwrap();
    assert_eq!(length, RESPONSE, "{addr}{path}: the whole response");
    s
}
