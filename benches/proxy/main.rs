//! `make bench`: wstap against direct connections and nginx, on this machine, in one run.
//!
//! Targets, all in front of the same echo backend (this binary re-run with `--echo`):
//! direct (no proxy), nginx (Debian's, 1 worker, `proxy_buffering off`), nginx-64k (the
//! same with 64 KiB proxy buffers), nginx-64k+dumpcap (the same again, on a port of its
//! own that dumpcap captures on `lo`: what a user would run instead of wstap), wstap
//! (`workers = 1`, as nginx's one worker) with capture off, with the default capture
//! (the client leg), and with both legs. Every
//! scenario runs the targets interleaved (A B C D E, A B C D E, …) for `ROUNDS` rounds and
//! reports medians with the ratio to direct. The load generator is closed-loop and checks
//! every echoed byte. Capture completeness is read back from wstap's own files with
//! `wstap_replay`, after wstap has stopped.
//!
//! Environment: `WSTAP_BENCH_SECS` (measured seconds per run, default 3),
//! `WSTAP_BENCH_ROUNDS` (default 3), `WSTAP_BENCH_IDLE` (idle sessions, default 5000),
//! `WSTAP_BENCH_ONLY` (some of `1kib,64kib,latency,connect,idle,keepalive,live`; all by
//! default), `WSTAP_BENCH_KEEPALIVE` (idle keep-alive connections, default 1000),
//! `WSTAP_BENCH_TARGETS` (some of `direct,nginx,nginx-64k,wstap-off,wstap-on`, to
//! profile one; all by default), `WSTAP_BENCH_LOG` (wstap's `log.level`, default
//! `warn`, as the goals are measured: neither logs connections; at `info`, as shipped, both
//! do: wstap its session lines, nginx its access log), `WSTAP_BENCH_BIN` (the wstap
//! binary to measure, to compare two builds in turn; this build's by default),
//! `WSTAP_BENCH_CAPTURE` (more `[capture]` lines for the capturing wstaps, e.g.
//! `segment = "gro"`, to measure a setting).

mod keepalive;
mod wire;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use wstap_wire::wsframe::Opcode;

const TARGETS: [&str; 7] = ["direct", "nginx", "nginx-64k", "nginx-64k+dumpcap", "wstap-off", "wstap-on", "wstap-both"];

/// The targets whose capture is read back for completeness, and the legs each captures
/// (wstap-both writes every message twice).
const CAPTURING: [(&str, u64); 3] = [("nginx-64k+dumpcap", 1), ("wstap-on", 1), ("wstap-both", 2)];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--echo") {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind(&args[i + 1]).await.unwrap();
            println!("{}", l.local_addr().unwrap());
            wire::serve_echo(l).await.unwrap();
        });
        return;
    }
    let bench = Bench::start();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let results = rt.block_on(bench.run());
    let live = bench.wants("live").then(|| rt.block_on(live_cost(&bench)));
    drop(rt);
    bench.report(results);
    if let Some(live) = live {
        println!("{live}");
    }
}

/// Subscribers in the live-stream scenario.
const SUBSCRIBERS: usize = 10;

/// The live stream's cost: a wstap with capture on and `[live]`, under the 50 × 1 KiB load
/// with no subscriber and then with ten (threads here that read and discard), rounds
/// interleaved; CPU per message of wstap's process, the cost per subscriber, whether any
/// was cut off, and the files' completeness.
async fn live_cost(bench: &Bench) -> String {
    let dir = bench.dir.join("live");
    let captures = dir.join("captures");
    std::fs::create_dir_all(&captures).unwrap();
    let (port, live, admin) = (free_port(), format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let toml = format!(
        "listen = [\"127.0.0.1:{port}\"]\nworkers = 1\n[[route]]\nupstream = \"ws://{}\"\n[limits]\nmax_connections = 20000\n\
         [log]\nlevel = \"warn\"\n[capture]\ndir = {:?}\n[capture.rotate]\nfiles = 0\n[live]\nlisten = \"{live}\"\n\
         max_clients = {SUBSCRIBERS}\n[admin]\nlisten = \"{admin}\"\n",
        bench.echo.addr,
        captures.display().to_string()
    );
    let path = dir.join("wstap-live.toml");
    std::fs::write(&path, toml).unwrap();
    let mut wstap = Command::new(wstap_bin())
        .args(["run", "-c", path.to_str().unwrap()])
        .stderr(std::fs::File::create(dir.join("wstap-live.log")).unwrap())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    for a in [&addr, &live, &admin] {
        wait_ready(a);
    }
    let runs = live_rounds(bench, &addr, &live, wstap.id()).await;
    let metrics = http_get(&admin, "/metrics");
    let metric = |name: &str| {
        metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<u64>().ok()).unwrap_or(0)
    };
    let (cut_off, dropped) = (metric("wstap_live_cut_off_total"), metric("wstap_capture_dropped_bytes_total"));
    terminate(wstap.id());
    let _ = wstap.wait();
    let captured = captured_payload(&captures);
    let _ = std::fs::remove_dir_all(&captures);
    let median = |subs: usize, pick: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = runs.rows[&subs].iter().map(pick).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (rate0, cpu0) = (median(0, |r| r.0), median(0, |r| r.1));
    let (rate10, cpu10) = (median(SUBSCRIBERS, |r| r.0), median(SUBSCRIBERS, |r| r.1));
    format!(
        "live stream (wstap, capture on, [live]; 50 × 1 KiB, medians of {} rounds):\n\
         | subscribers | msg/s | CPU µs/msg (wstap) |\n|---:|---:|---:|\n| 0 | {rate0:.0} | {cpu0:.2} |\n\
         | {SUBSCRIBERS} | {rate10:.0} ({:.2}) | {cpu10:.2} |\n\
         cost per subscriber: {:.3} µs CPU per message ({:.1}% of a message's cost with none); \
         subscribers received {:.1} MB; cut off: {cut_off}; capture dropped {dropped} bytes; \
         completeness (read back ÷ proxied, client leg): {:.4}",
        bench.rounds,
        rate10 / rate0,
        (cpu10 - cpu0) / SUBSCRIBERS as f64,
        (cpu10 - cpu0) / SUBSCRIBERS as f64 / cpu0 * 100.0,
        runs.received as f64 / 1e6,
        captured as f64 / runs.proxied as f64,
    )
}

/// What the live stream's rounds measured: (msg/s, CPU µs per message) per number of
/// subscribers, the bytes proxied, and the bytes the subscribers received.
struct LiveRuns {
    rows: BTreeMap<usize, Vec<(f64, f64)>>,
    proxied: u64,
    received: u64,
}

/// The 50 × 1 KiB load through `addr` (wstap's process `pid`), with no subscriber to
/// `live` and then with ten, each round.
async fn live_rounds(bench: &Bench, addr: &str, live: &str, pid: u32) -> LiveRuns {
    let (pid, secs) = ([pid], Duration::from_secs(bench.secs));
    let mut runs = LiveRuns { rows: BTreeMap::new(), proxied: 0, received: 0 };
    let received = Arc::new(AtomicU64::new(0));
    for round in 0..bench.rounds {
        eprintln!("live stream, round {} of {}", round + 1, bench.rounds);
        for subs in [0, SUBSCRIBERS] {
            let stop = Arc::new(AtomicBool::new(false));
            let readers: Vec<_> =
                (0..subs).map(|_| subscriber(live.to_owned(), stop.clone(), received.clone())).collect();
            let cpu = cpu_secs(&pid);
            let x = throughput(addr, 50, 1024, secs).await;
            let per_msg = (cpu_secs(&pid) - cpu) * 1e6 / (x.proxied as f64 / 2048.0);
            runs.rows.entry(subs).or_default().push((x.msgs_per_s, per_msg));
            runs.proxied += x.proxied;
            stop.store(true, Relaxed);
            for r in readers {
                r.join().unwrap();
            }
        }
    }
    runs.received = received.load(Relaxed);
    runs
}

/// A live-stream subscriber on a thread of its own: reads and discards until `stop`,
/// counting what it received.
fn subscriber(live: String, stop: Arc<AtomicBool>, received: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(&live).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        while !stop.load(Relaxed) {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => drop(received.fetch_add(n as u64, Relaxed)),
                Err(_) => {}
            }
        }
    })
}

/// The wstap binary measured: `WSTAP_BENCH_BIN`, or this build's.
fn wstap_bin() -> String {
    std::env::var("WSTAP_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_wstap").to_owned())
}

/// A free loopback port (bound, then released: the bench is alone on this machine).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    /// SIGTERM and wait: nginx's master then stops its worker (SIGKILL would orphan it).
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        terminate(self.child.id());
        let _ = self.child.wait();
    }
}

struct Bench {
    dir: PathBuf,
    echo: Server,
    nginx: Server,
    nginx64: String,
    /// nginx-64k again, on the port dumpcap captures.
    nginx_dumpcap: String,
    dumpcap: Server,
    wstap_off: Server,
    wstap_on: Server,
    wstap_both: Server,
    admin: String,
    admin_both: String,
    secs: u64,
    rounds: u64,
    idle: u64,
    only: Option<String>,
    /// `WSTAP_BENCH_TARGETS`: some of the targets, for profiling one (all by default).
    targets: Option<String>,
}

fn wait_ready(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The echo backend: this binary again, with `--echo`.
fn start_echo() -> Server {
    let mut echo = Command::new(std::env::current_exe().unwrap())
        .args(["--echo", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(echo.stdout.take().unwrap()), &mut line).unwrap();
    let addr = line.trim().to_string();
    wait_ready(&addr);
    Server { child: echo, addr }
}

/// nginx in front of `upstream` on three ports (as shipped, with 64 KiB buffers, and that
/// again under dumpcap), and dumpcap capturing the third on loopback, started.
fn start_yardsticks(dir: &Path, upstream: &str, log: &str) -> (Server, [String; 2], Server) {
    let (n1, n2, n3) = (free_port(), free_port(), free_port());
    let conf = dir.join("nginx.conf");
    // Both log each connection as shipped (nginx: its access log), or neither does.
    let access_log = log.contains("info") || log.contains("debug") || log.contains("trace");
    std::fs::write(&conf, nginx_conf(dir, upstream, [n1, n2, n3], access_log)).unwrap();
    // dumpcap on nginx's client side, as a user would run it: a ring of 256 MB files
    // (kept, to be read back), its own buffer size, on loopback.
    std::fs::create_dir_all(dir.join("dumpcap")).unwrap();
    let dumpcap = Command::new("dumpcap")
        .args(["-i", "lo", "-f", &format!("tcp port {n3}"), "-b", "filesize:262144", "-w"])
        .arg(dir.join("dumpcap/nginx.pcapng"))
        .stderr(std::fs::File::create(dir.join("dumpcap.log")).unwrap())
        .spawn()
        .expect("dumpcap (make bench installs it)");
    let dumpcap = Server { child: dumpcap, addr: String::new() };
    let nginx = Command::new(nginx_bin())
        .args(["-c", conf.to_str().unwrap(), "-p", dir.to_str().unwrap(), "-e", "stderr"])
        .stderr(std::fs::File::create(dir.join("nginx.log")).unwrap())
        .spawn()
        .expect("nginx (make bench installs it)");
    let nginx = Server { child: nginx, addr: format!("127.0.0.1:{n1}") };
    // dumpcap has begun its first file: it captures.
    let first = dir.join("dumpcap");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&first).map_or(0, |d| d.count()) == 0 {
        assert!(Instant::now() < deadline, "dumpcap did not start (it needs root or CAP_NET_RAW): see dumpcap.log");
        std::thread::sleep(Duration::from_millis(20));
    }
    (nginx, [format!("127.0.0.1:{n2}"), format!("127.0.0.1:{n3}")], dumpcap)
}

/// A wstap in front of `upstream` (`workers = 1`, as nginx's one worker, logging at
/// `log`) with `capture`'s tables.
fn start_wstap(dir: &Path, name: &str, upstream: &str, log: &str, capture: &str) -> Server {
    let port = free_port();
    let toml = format!(
        "listen = [\"127.0.0.1:{port}\"]\nworkers = 1\n[[route]]\nupstream = \"ws://{upstream}\"\n[limits]\nmax_connections = 20000\n[log]\nlevel = \"{log}\"\n{capture}\n"
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    let child = Command::new(wstap_bin())
        .args(["run", "-c", path.to_str().unwrap()])
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .spawn()
        .unwrap();
    Server { child, addr: format!("127.0.0.1:{port}") }
}

impl Bench {
    fn start() -> Bench {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("captures")).unwrap();
        let echo = start_echo();
        let upstream = echo.addr.clone();
        let log = std::env::var("WSTAP_BENCH_LOG").unwrap_or_else(|_| "warn".into());
        let (nginx, [nginx64, nginx_dumpcap], dumpcap) = start_yardsticks(&dir, &upstream, &log);
        let wstap = |name: &str, capture: String| start_wstap(&dir, name, &upstream, &log, &capture);
        let wstap_off = wstap("wstap-off", "[capture]\nmode = \"off\"".into());
        // A lever under measurement: more `[capture]` keys for every capturing wstap.
        let extra = std::env::var("WSTAP_BENCH_CAPTURE").map(|c| format!("{c}\n")).unwrap_or_default();
        let capturing = |name: &str, legs: &str, admin: &str| {
            let captures = dir.join(name);
            std::fs::create_dir_all(&captures).unwrap();
            let c = format!(
                "[capture]\ndir = {:?}\n{legs}{extra}[capture.rotate]\nfiles = 0\n[admin]\nlisten = \"{admin}\"",
                captures.display().to_string()
            );
            wstap(name, c)
        };
        // As shipped: the default capture (the client leg).
        let admin = format!("127.0.0.1:{}", free_port());
        let wstap_on = capturing("wstap-on", "", &admin);
        let admin_both = format!("127.0.0.1:{}", free_port());
        let wstap_both = capturing("wstap-both", "legs = [\"client\", \"upstream\"]\n", &admin_both);
        for s in [&nginx.addr, &nginx64, &nginx_dumpcap, &wstap_off.addr, &wstap_on.addr, &admin] {
            wait_ready(s);
        }
        for s in [&wstap_both.addr, &admin_both] {
            wait_ready(s);
        }
        Bench {
            dir,
            echo,
            nginx,
            nginx64,
            nginx_dumpcap,
            dumpcap,
            wstap_off,
            wstap_on,
            wstap_both,
            admin,
            admin_both,
            secs: env_or("WSTAP_BENCH_SECS", 3),
            rounds: env_or("WSTAP_BENCH_ROUNDS", 3),
            idle: env_or("WSTAP_BENCH_IDLE", 5000),
            only: std::env::var("WSTAP_BENCH_ONLY").ok(),
            targets: std::env::var("WSTAP_BENCH_TARGETS").ok(),
        }
    }

    fn addr(&self, target: &str) -> &str {
        match target {
            "direct" => &self.echo.addr,
            "nginx" => &self.nginx.addr,
            "nginx-64k" => &self.nginx64,
            "nginx-64k+dumpcap" => &self.nginx_dumpcap,
            "wstap-off" => &self.wstap_off.addr,
            "wstap-both" => &self.wstap_both.addr,
            _ => &self.wstap_on.addr,
        }
    }

    /// The processes whose memory a target's sessions cost.
    fn pids(&self, target: &str) -> Vec<u32> {
        match target {
            "direct" => vec![self.echo.child.id()],
            "nginx" | "nginx-64k" | "nginx-64k+dumpcap" => {
                let master = self.nginx.child.id();
                let mut p = vec![master];
                p.extend(children(master));
                // What the user pays for the capture: dumpcap's CPU and memory too.
                if target == "nginx-64k+dumpcap" {
                    p.push(self.dumpcap.child.id());
                }
                p
            }
            "wstap-off" => vec![self.wstap_off.child.id()],
            "wstap-both" => vec![self.wstap_both.child.id()],
            _ => vec![self.wstap_on.child.id()],
        }
    }

    /// Before each run: lets wstap-on's capture writer finish what earlier runs queued,
    /// then has the kernel write back every dirty page, so that neither lands on the run
    /// that follows. (The writer's own CPU, its writes into the page cache included, is
    /// measured in the run that caused it; the kernel's writeback to disk is not.)
    fn settle(&self) {
        let written = || {
            let packets = |admin: &str| {
                let m = http_get(admin, "/metrics");
                m.lines().find(|l| l.starts_with("wstap_capture_packets_total")).map(str::to_owned)
            };
            (packets(&self.admin), packets(&self.admin_both))
        };
        // Quiet for a whole second: a pause of the writer (a file's fsync at rotation)
        // is not mistaken for the end of its backlog.
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut last, mut quiet) = (written(), 0);
        while quiet < 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            let now = written();
            quiet = if now == last { quiet + 1 } else { 0 };
            last = now;
        }
        let _ = Command::new("sync").status();
    }

    /// CPU time of wstap-on's capture writer thread so far (`None` for other targets).
    fn writer_cpu_secs(&self, target: &str) -> Option<f64> {
        let pid = match target {
            "wstap-on" => self.wstap_on.child.id(),
            "wstap-both" => self.wstap_both.child.id(),
            _ => return None,
        };
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let writer = tasks
            .flatten()
            .find(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "wstap-capture"))?;
        Some(cpu_secs_of(&[writer.path().join("stat")]))
    }

    /// Whether `WSTAP_BENCH_ONLY` (a comma-separated list of 1kib, 64kib, latency,
    /// connect, idle; all when unset) asks for this scenario.
    fn wants(&self, scenario: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.split(',').any(|o| o.trim() == scenario))
    }

    async fn run(&self) -> Results {
        let mut r = Results::default();
        let secs = Duration::from_secs(self.secs);
        // Memory first, while every process is fresh: once a process has served load, its
        // allocator keeps the freed memory and new sessions reuse it without growing RSS,
        // so only this first, single measurement is honest.
        if self.wants("idle") {
            for t in TARGETS {
                let (kib, left, proxied) = idle_rss(self.addr(t), &self.pids(t), self.idle as usize).await;
                let scenario = format!("{} idle sessions (fresh processes, 1 run)", self.idle);
                r.add(&scenario, "KiB RSS/session", t, kib, proxied);
                r.add(&scenario, "MiB RSS left 10 s after closing", t, left, 0);
            }
        }
        // Fresh processes of their own (keepalive.rs).
        if self.wants("keepalive") {
            let log = std::env::var("WSTAP_BENCH_LOG").unwrap_or_else(|_| "warn".into());
            let n = env_or("WSTAP_BENCH_KEEPALIVE", 1000) as usize;
            keepalive::measure(&self.dir, &self.echo.addr, &log, n, &mut r).await;
        }
        // Each run starts settled (see `settle`).
        let wants = |scenario: &str| {
            let wanted = self.wants(scenario);
            if wanted {
                self.settle();
            }
            wanted
        };
        let targets: Vec<&'static str> = TARGETS
            .into_iter()
            .filter(|t| self.targets.as_ref().is_none_or(|o| o.split(',').any(|o| o.trim() == *t)))
            .collect();
        // Each target's resident memory before its first burst (goal 6).
        let rss_before: Vec<(&str, u64)> = targets.iter().map(|t| (*t, rss_kib(&self.pids(t)))).collect();
        for round in 0..self.rounds {
            eprintln!("round {} of {}", round + 1, self.rounds);
            for &t in &targets {
                self.round(&mut r, t, &wants, secs).await;
            }
        }
        if ["1kib", "64kib", "latency", "connect"].iter().any(|s| self.wants(s)) {
            tokio::time::sleep(AFTER).await;
            for (t, before) in rss_before {
                let left = (rss_kib(&self.pids(t)) as f64 - before as f64) / 1024.0;
                r.add("after the bursts above, 10 s later", "MiB RSS above before them", t, left, 0);
            }
        }
        r
    }

    /// One round of the load scenarios `wants` asks for, against target `t`.
    async fn round(&self, r: &mut Results, t: &'static str, wants: &impl Fn(&str) -> bool, secs: Duration) {
        let a = self.addr(t);
        if wants("1kib") {
            let (cpu, writer) = (cpu_secs(&self.pids(t)), self.writer_cpu_secs(t));
            let x = throughput(a, 50, 1024, secs).await;
            r.add(K1, "msg/s", t, x.msgs_per_s, x.proxied);
            // Less noisy than a rate on shared cores: what the target spent per echo.
            let msgs = x.proxied as f64 / 2048.0;
            let per_msg = (cpu_secs(&self.pids(t)) - cpu) * 1e6 / msgs;
            r.add(K1, "CPU µs/msg", t, per_msg, 0);
            if let (Some(before), Some(after)) = (writer, self.writer_cpu_secs(t)) {
                r.add(K1, "… of it capture writer", t, (after - before) * 1e6 / msgs, 0);
            }
        }
        if wants("64kib") {
            // The target's resident memory sampled through the burst: its peak.
            let (pids, stop) = (self.pids(t), Arc::new(AtomicBool::new(false)));
            let sampling = stop.clone();
            let sampler = std::thread::spawn(move || {
                let mut peak = 0;
                while !sampling.load(Relaxed) {
                    peak = peak.max(rss_kib(&pids));
                    std::thread::sleep(Duration::from_millis(20));
                }
                peak
            });
            let x = throughput(a, 4, 64 * 1024, secs).await;
            stop.store(true, Relaxed);
            r.add(K64, "MB/s", t, x.bytes_per_s / 1e6, x.proxied);
            r.add(K64, "peak MiB RSS", t, sampler.join().unwrap_or(0) as f64 / 1024.0, 0);
        }
        if wants("latency") {
            let (p50, p99, proxied) = latency(a, secs).await;
            r.add("1 × 64 B", "p50 µs", t, p50, proxied);
            r.add("1 × 64 B", "p99 µs", t, p99, 0);
        }
        if wants("connect") {
            let cpu = cpu_secs(&self.pids(t));
            let (rate, proxied, sessions) = connect_rate(a, 8, secs).await;
            r.add(CONNECT, "conn/s", t, rate, proxied);
            let per_session = (cpu_secs(&self.pids(t)) - cpu) * 1e6 / sessions as f64;
            r.add(CONNECT, "CPU µs/session", t, per_session, 0);
        }
    }

    fn report(mut self, results: Results) {
        println!("{}", results.table());
        // Completeness: the payload found in each target's capture ÷ the payload proxied
        // through it (per leg), read back after the capturing process has stopped.
        let mut completeness = BTreeMap::new();
        for (target, legs) in CAPTURING {
            let proxied = results.proxied.get(target).copied().unwrap_or(0);
            let (server, dir, dropped) = match target {
                "nginx-64k+dumpcap" => {
                    terminate(self.dumpcap.child.id());
                    let _ = self.dumpcap.child.wait();
                    (None, self.dir.join("dumpcap"), dumpcap_drops(&self.dir.join("dumpcap.log")))
                }
                _ => {
                    let (server, admin) = match target {
                        "wstap-both" => (&mut self.wstap_both, &self.admin_both),
                        _ => (&mut self.wstap_on, &self.admin),
                    };
                    let metrics = http_get(admin, "/metrics");
                    let metric = |name: &str| {
                        metrics
                            .lines()
                            .filter(|l| l.starts_with(name))
                            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                            .sum::<u64>()
                    };
                    let dropped = format!(
                        "{} events, {} bytes",
                        metric("wstap_capture_dropped_events_total"),
                        metric("wstap_capture_dropped_bytes_total")
                    );
                    (Some(server), self.dir.join(target), dropped)
                }
            };
            if let Some(server) = server {
                terminate(server.child.id());
                let _ = server.child.wait();
            }
            if proxied == 0 {
                continue;
            }
            let captured = captured_payload(&dir);
            // Gigabytes, once counted: not worth keeping.
            let _ = std::fs::remove_dir_all(&dir);
            let ratio = captured as f64 / (legs * proxied) as f64;
            println!(
                "capture ({target}, all scenarios): {:.1} MB proxied payload, {:.1} MB read back per leg ({ratio:.4}, completeness); dropped: {dropped}",
                proxied as f64 / 1e6,
                captured as f64 / legs as f64 / 1e6,
            );
            completeness.insert(target, ratio);
        }
        println!("{}", results.goals(&completeness));
    }
}

/// What dumpcap says it dropped, from its log (its statistics when it stops).
fn dumpcap_drops(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .find(|l| l.contains("received/dropped"))
        .map_or_else(|| format!("(dumpcap reported no statistics: {})", text.trim()), |l| l.trim().to_owned())
}

/// SIGTERM, the way systemd stops the daemon.
fn terminate(pid: u32) {
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
}

fn nginx_bin() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// With `access_log`, nginx logs each request to a file, as its shipped config does.
/// Ports: the plain server, the 64 KiB one, and the 64 KiB one dumpcap watches.
fn nginx_conf(dir: &Path, upstream: &str, [plain, big, watched]: [u16; 3], access_log: bool) -> String {
    let server = |port: u16, extra: &str| {
        format!(
            "server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://{upstream}; proxy_http_version 1.1;
               proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\";
               proxy_set_header Host $host; proxy_buffering off; proxy_read_timeout 1h; {extra} }} }}\n"
        )
    };
    format!(
        "worker_processes 1;\nworker_rlimit_nofile 20000;\ndaemon off;\npid {pid};\nerror_log stderr;\n\
         events {{ worker_connections 20000; }}\nhttp {{ access_log {access}; client_body_temp_path {tmp};\n\
         proxy_temp_path {tmp};\n{a}{b}{c}}}\n",
        pid = dir.join("nginx.pid").display(),
        tmp = dir.display(),
        access = if access_log { format!("{}", dir.join("nginx-access.log").display()) } else { "off".into() },
        a = server(plain, ""),
        b = server(big, "proxy_buffer_size 64k; proxy_buffers 8 64k; proxy_busy_buffers_size 128k;"),
        c = server(watched, "proxy_buffer_size 64k; proxy_buffers 8 64k; proxy_busy_buffers_size 128k;"),
    )
}

/// Child processes of `pid` (nginx's worker).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let after = stat.rsplit(')').next().unwrap_or("");
        let ppid: Option<u32> = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(pid) {
            out.extend(e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()));
        }
    }
    out
}

/// CPU time (user + system) the processes have used so far, in seconds.
fn cpu_secs(pids: &[u32]) -> f64 {
    cpu_secs_of(&pids.iter().map(|p| PathBuf::from(format!("/proc/{p}/stat"))).collect::<Vec<_>>())
}

/// CPU time (user + system) in seconds from `/proc/…/stat` files (processes or threads).
fn cpu_secs_of(stats: &[PathBuf]) -> f64 {
    static TICK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let hz = *TICK.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().map(|o| o.stdout).unwrap_or_default();
        String::from_utf8_lossy(&out).trim().parse().unwrap_or(100.0)
    });
    let ticks: u64 = stats
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|stat| {
            // After the command name: state is field 3, utime 14 and stime 15.
            let after = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect::<Vec<_>>();
            after.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
                + after.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
        })
        .sum();
    ticks as f64 / hz
}

/// A goal: what it says, the value measured, the goal, and whether it is a floor.
type Goal = (&'static str, f64, f64, bool);

/// Scenario and target names: the rounds record them, the goals look them up.
const K1: &str = "50 × 1 KiB";
const K64: &str = "4 × 64 KiB";
const CONNECT: &str = "connect+upgrade+close, 8 workers";
const DUMPCAP: &str = "nginx-64k+dumpcap";

fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Payload bytes of every text and binary message in the capture files of `dir`.
fn captured_payload(dir: &Path) -> u64 {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    let (mut total, mut problems) = (0, Vec::new());
    for f in files {
        let rec = wstap_replay::open(&f).unwrap_or_else(|e| panic!("{e}"));
        problems.extend(rec.problems.iter().map(|p| format!("{}: {p}", f.display())));
        total += rec
            .sessions
            .iter()
            .flat_map(|s| &s.messages)
            .filter(|m| matches!(m.kind, wstap_replay::Kind::Text | wstap_replay::Kind::Binary))
            .map(|m| m.data.len() as u64)
            .sum::<u64>();
    }
    // A ring of small files cut mid-connection (dumpcap's) has a few per file: the first says it.
    if let Some(first) = problems.first() {
        eprintln!("{}: {} problems reading the capture back, the first: {first}", dir.display(), problems.len());
    }
    total
}

struct Throughput {
    msgs_per_s: f64,
    bytes_per_s: f64,
    /// Payload bytes both ways, every message of the run (warm-up included).
    proxied: u64,
}

/// `conns` closed-loop connections echoing `size`-byte binary messages; measured for
/// `secs` after half a second of warm-up. Every echoed byte is checked.
async fn throughput(addr: &str, conns: usize, size: usize, secs: Duration) -> Throughput {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let payload: Rc<Vec<u8>> = Rc::new((0..size).map(|i| (i * 7 + i / 251) as u8).collect());
    let local = tokio::task::LocalSet::new();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (count, stop, payload, addr) = (count.clone(), stop.clone(), payload.clone(), addr.to_string());
        tasks.push(local.spawn_local(async move {
            let mut s = wire::connect(&addr, "/bench").await.unwrap_or_else(|e| panic!("{addr}: {e}"));
            let frame = wire::client_frame(Opcode::Binary, &payload, [c as u8, 0x5a, 0xa5, 0x3c]);
            let mut got = Vec::with_capacity(size);
            while !stop.load(Relaxed) {
                s.get_mut().write_all(&frame).await.unwrap();
                let op = wire::read_frame(&mut s, &mut got).await.unwrap();
                assert!(op == Opcode::Binary && got == *payload, "{addr}: a wrong echo");
                count.fetch_add(1, Relaxed);
            }
            close(&mut s).await;
        }));
    }
    let counted = measure(&local, &count, &stop, tasks, secs).await;
    Throughput {
        msgs_per_s: counted,
        bytes_per_s: counted * size as f64,
        proxied: count.load(Relaxed) * 2 * size as u64,
    }
}

/// Runs `tasks` for half a second of warm-up, then `secs` measured: `count`'s rate over
/// the measured part. Then stops them and waits for each to finish its last round.
async fn measure(
    local: &tokio::task::LocalSet,
    count: &AtomicU64,
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    secs: Duration,
) -> f64 {
    local
        .run_until(async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (c0, t0) = (count.load(Relaxed), Instant::now());
            tokio::time::sleep(secs).await;
            let (c1, t1) = (count.load(Relaxed), Instant::now());
            stop.store(true, Relaxed);
            for t in tasks {
                t.await.unwrap();
            }
            (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
        })
        .await
}

async fn close(s: &mut tokio::io::BufReader<tokio::net::TcpStream>) {
    let frame = wire::client_frame(Opcode::Close, &1000u16.to_be_bytes(), [1, 2, 3, 4]);
    if s.get_mut().write_all(&frame).await.is_ok() {
        let mut got = Vec::new();
        while let Ok(op) = wire::read_frame(s, &mut got).await {
            if op == Opcode::Close {
                break;
            }
        }
    }
}

/// One connection, 64-byte messages back and forth: (p50 µs, p99 µs, proxied bytes).
async fn latency(addr: &str, secs: Duration) -> (f64, f64, u64) {
    let mut s = wire::connect(addr, "/bench").await.unwrap();
    let payload = vec![0x42u8; 64];
    let frame = wire::client_frame(Opcode::Binary, &payload, [9, 8, 7, 6]);
    let mut got = Vec::new();
    let mut samples = Vec::new();
    let (warm, end) = (Instant::now() + Duration::from_millis(500), Instant::now() + Duration::from_millis(500) + secs);
    let mut n = 0u64;
    loop {
        let t = Instant::now();
        if t >= end {
            break;
        }
        s.get_mut().write_all(&frame).await.unwrap();
        wire::read_frame(&mut s, &mut got).await.unwrap();
        assert!(got == payload);
        n += 1;
        if t >= warm {
            samples.push(t.elapsed().as_nanos() as u64);
        }
    }
    close(&mut s).await;
    samples.sort_unstable();
    let q = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    (q(0.50), q(0.99), n * 128)
}

/// `workers` loops of connect, upgrade, one close handshake: completed sessions per second.
/// Also the bytes proxied (none) and the sessions completed, warm-up included.
async fn connect_rate(addr: &str, workers: usize, secs: Duration) -> (f64, u64, u64) {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let local = tokio::task::LocalSet::new();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (count, stop, addr) = (count.clone(), stop.clone(), addr.to_string());
        tasks.push(local.spawn_local(async move {
            while !stop.load(Relaxed) {
                let mut s = wire::connect(&addr, "/bench").await.unwrap_or_else(|e| panic!("{addr}: {e}"));
                close(&mut s).await;
                count.fetch_add(1, Relaxed);
            }
        }));
    }
    let rate = measure(&local, &count, &stop, tasks, secs).await;
    (rate, 0, count.load(Relaxed))
}

/// Opens `n` sessions, one 64-byte round trip on each, then leaves them idle: the growth
/// of the target's resident memory per session, in KiB; then closes them all: how far
/// above where it began its resident memory is 10 s later, in MiB (goal 6).
async fn idle_rss(addr: &str, pids: &[u32], n: usize) -> (f64, f64, u64) {
    let before = rss_kib(pids);
    let payload = vec![0x17u8; 64];
    let frame = wire::client_frame(Opcode::Text, &payload, [3, 1, 4, 1]);
    let mut open = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(100) {
        let batch = (chunk * 100..(chunk * 100 + 100).min(n)).map(|_| {
            let (addr, frame, payload) = (addr.to_string(), frame.clone(), payload.clone());
            async move {
                let mut s = wire::connect(&addr, "/idle").await.unwrap_or_else(|e| panic!("{addr}: {e}"));
                s.get_mut().write_all(&frame).await.unwrap();
                let mut got = Vec::new();
                wire::read_frame(&mut s, &mut got).await.unwrap();
                assert!(got == payload);
                s
            }
        });
        open.extend(futures_util::future::join_all(batch).await);
    }
    // Let the target settle (allocator trims, deferred frees) before reading its RSS.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pids);
    for s in &mut open {
        close(s).await;
    }
    drop(open);
    tokio::time::sleep(AFTER).await;
    let left = rss_kib(pids) as f64 - before as f64;
    ((after.saturating_sub(before)) as f64 / n as f64, left / 1024.0, (n * 128) as u64)
}

/// How long after sessions close (or a burst ends) memory is given to return (goal 6).
const AFTER: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Results {
    /// (scenario, metric) → target → values per round.
    values: BTreeMap<(usize, String, String), BTreeMap<&'static str, Vec<f64>>>,
    order: Vec<(String, String)>,
    /// Payload bytes proxied through each target, every scenario.
    proxied: BTreeMap<&'static str, u64>,
}

impl Results {
    fn add(&mut self, scenario: &str, metric: &str, target: &'static str, v: f64, proxied: u64) {
        let key = (scenario.to_string(), metric.to_string());
        let i = self.order.iter().position(|k| *k == key).unwrap_or_else(|| {
            self.order.push(key.clone());
            self.order.len() - 1
        });
        self.values.entry((i, key.0, key.1)).or_default().entry(target).or_default().push(v);
        *self.proxied.entry(target).or_default() += proxied;
    }

    fn median(&self, scenario: &str, metric: &str, target: &str) -> f64 {
        let Some((_, row)) = self.values.iter().find(|((_, s, m), _)| s == scenario && m == metric) else {
            return f64::NAN;
        };
        let mut v = row.get(target).cloned().unwrap_or_default();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }

    fn table(&self) -> String {
        let mut out =
            format!("| scenario | metric | {} |\n|---|---|{}\n", TARGETS.join(" | "), "---:|".repeat(TARGETS.len()));
        for (_, scenario, metric) in self.values.keys() {
            let direct = self.median(scenario, metric, "direct");
            let cells: Vec<String> = TARGETS
                .iter()
                .map(|t| {
                    let v = self.median(scenario, metric, t);
                    let shown = if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") };
                    if *t == "direct" {
                        shown
                    } else {
                        format!("{shown} ({:.2})", v / direct)
                    }
                })
                .collect();
            out += &format!("| {scenario} | {metric} | {} |\n", cells.join(" | "));
        }
        out
    }

    /// The goals, each met or not; `completeness`: per capturing target. 1–7 were set
    /// with the speed work, 8–12 with the memory work.
    fn goals(&self, completeness: &BTreeMap<&str, f64>) -> String {
        let mut rows = self.speed_goals(completeness);
        rows.extend(self.memory_goals(completeness));
        let mut out = String::from("goals (3. is make bench-capture's):\n");
        for (name, v, goal, at_least) in rows {
            let met = if at_least { v >= goal } else { v <= goal };
            let verdict = if v.is_nan() {
                "not measured"
            } else if met {
                "MET"
            } else {
                "not met"
            };
            out += &format!("  {name}: {v:.2} {verdict}\n");
        }
        out
    }

    /// A scenario's full name among the results, by the words it contains.
    fn scenario(&self, words: &[&str]) -> String {
        let has = |s: &str| words.iter().all(|w| s.contains(w));
        self.values.keys().find(|(_, s, _)| has(s)).map(|k| k.1.clone()).unwrap_or_default()
    }

    /// The throughput, connect and latency goals, and the first memory ones.
    fn speed_goals(&self, completeness: &BTreeMap<&str, f64>) -> Vec<Goal> {
        let m = |s: &str, k: &str, t: &str| self.median(s, k, t);
        let (idle, kept) = (self.scenario(&["idle sessions"]), self.scenario(&["keep-alive connections", "pooled"]));
        let lat = "1 × 64 B";
        let ratio = |s: &str, k: &str, a: &str, b: &str| m(s, k, a) / m(s, k, b);
        let c = |t: &str| completeness.get(t).copied().unwrap_or(f64::NAN);
        vec![
            ("1. 50×1KiB: wstap-on ÷ nginx-64k+dumpcap ≥ 1.15", ratio(K1, "msg/s", "wstap-on", DUMPCAP), 1.15, true),
            ("1. 50×1KiB: wstap-on ÷ nginx ≥ 1.00", ratio(K1, "msg/s", "wstap-on", "nginx"), 1.0, true),
            ("1. 50×1KiB: wstap-on ÷ wstap-off ≥ 0.95", ratio(K1, "msg/s", "wstap-on", "wstap-off"), 0.95, true),
            ("1. 50×1KiB: wstap-both ÷ nginx ≥ 0.90", ratio(K1, "msg/s", "wstap-both", "nginx"), 0.9, true),
            ("2. 4×64KiB: wstap-on ÷ nginx-64k+dumpcap ≥ 1.50", ratio(K64, "MB/s", "wstap-on", DUMPCAP), 1.5, true),
            ("2. completeness: wstap-on − dumpcap's ≥ 0", c("wstap-on") - c(DUMPCAP), 0.0, true),
            ("4. connect: wstap-on ÷ nginx ≥ 1.00", ratio(CONNECT, "conn/s", "wstap-on", "nginx"), 1.0, true),
            (
                "4. CPU/session: wstap-on ÷ nginx ≤ 1.00",
                ratio(CONNECT, "CPU µs/session", "wstap-on", "nginx"),
                1.0,
                false,
            ),
            ("5. 64B p50: wstap-on ÷ nginx ≤ 1.00", ratio(lat, "p50 µs", "wstap-on", "nginx"), 1.0, false),
            ("5. 64B p99: wstap-on ÷ nginx ≤ 1.00", ratio(lat, "p99 µs", "wstap-on", "nginx"), 1.0, false),
            ("6. idle KiB/session, wstap-on ≤ 4", m(&idle, "KiB RSS/session", "wstap-on"), 4.0, false),
            (
                "7. idle keep-alive KiB/conn after a 300 KB response (11 s), wstap-on ≤ 2",
                m(&kept, "KiB RSS/conn after 11 s", "wstap-on"),
                2.0,
                false,
            ),
            (
                "6. MiB RSS left 10 s after 5000 sessions closed, wstap-on ≤ 16",
                m(&idle, "MiB RSS left 10 s after closing", "wstap-on"),
                16.0,
                false,
            ),
            (
                "6. MiB RSS left 10 s after the bursts, wstap-on ≤ 16",
                m("after the bursts above, 10 s later", "MiB RSS above before them", "wstap-on"),
                16.0,
                false,
            ),
        ]
    }

    /// What capture may cost per session and per byte, and in memory.
    fn memory_goals(&self, completeness: &BTreeMap<&str, f64>) -> Vec<Goal> {
        let m = |s: &str, k: &str, t: &str| self.median(s, k, t);
        let ratio = |s: &str, k: &str, a: &str, b: &str| m(s, k, a) / m(s, k, b);
        let idle = self.scenario(&["idle sessions"]);
        vec![
            ("8. 4×64KiB: wstap-on ÷ nginx-64k+dumpcap ≥ 1.00", ratio(K64, "MB/s", "wstap-on", DUMPCAP), 1.0, true),
            (
                "9. completeness: wstap-on = 1.0000",
                completeness.get("wstap-on").copied().unwrap_or(f64::NAN),
                0.99995,
                true,
            ),
            (
                "10. CPU/session: wstap-on ÷ wstap-off ≤ 1.10",
                ratio(CONNECT, "CPU µs/session", "wstap-on", "wstap-off"),
                1.1,
                false,
            ),
            ("11. idle KiB/session, wstap-both ≤ 6", m(&idle, "KiB RSS/session", "wstap-both"), 6.0, false),
            (
                "12. 64 KiB burst: peak MiB RSS, wstap-both ≤ queue_size (64) + 32",
                m(K64, "peak MiB RSS", "wstap-both"),
                96.0,
                false,
            ),
        ]
    }
}
