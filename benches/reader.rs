//! `make bench`, the reader: `wstap sessions` on captures of closed WebSocket sessions
//! generated at run time (never committed), against `tshark -r F -Y websocket` on the
//! same file. Wall time and peak RSS of each process, from GNU time; medians of
//! `WSTAP_BENCH_ROUNDS` runs (default 3).
//!
//! Files: `WSTAP_BENCH_READER_MB` (default 192: the goal is ≥ 180 MB) with tshark beside
//! it, then `WSTAP_BENCH_READER_BIG_MB` (default 1024; 0 skips it) with wstap alone.
//! Sessions of 1.5 MB each, 8 open at a time, 1 KiB messages each way (the shape of the
//! 183 MB capture of 120 closed sessions the goal was set on). `WSTAP_BENCH_BIN`: the
//! wstap binary to measure (this build's by default).

#[path = "../tests/e2e/synth.rs"]
#[allow(dead_code)]
mod synth;

use std::path::Path;
use std::process::Command;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One measured run: wall seconds and peak RSS in KiB.
#[derive(Debug, Clone, Copy)]
struct Run {
    secs: f64,
    rss_kib: u64,
}

/// Runs `cmd` under GNU time, its output discarded; fails the bench if it fails.
fn measure(cmd: &[&str]) -> Run {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e %M"])
        .args(cmd)
        .stdout(std::process::Stdio::null())
        .output()
        .expect("GNU time (Debian's package time; scripts/deps.sh bench installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    let mut fields = last.split_whitespace();
    let (Some(secs), Some(rss)) = (fields.next(), fields.next()) else { panic!("{cmd:?}: {stderr}") };
    // `wstap sessions` exits 1 when the capture has problems: there must be none here.
    assert!(out.status.success(), "{cmd:?} failed: {stderr}");
    Run { secs: secs.parse().unwrap(), rss_kib: rss.parse().unwrap() }
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    let secs = runs[runs.len() / 2].secs;
    runs.sort_by_key(|r| r.rss_kib);
    Run { secs, rss_kib: runs[runs.len() / 2].rss_kib }
}

/// A capture of about `mb` MB of closed sessions; the number of sessions.
fn generate(path: &Path, mb: u64) -> u32 {
    let per_session = 1_500_000u64;
    let sessions = (mb * 1_000_000).div_ceil(per_session) as u32;
    let messages = (per_session / 2 / 1024) as u32;
    let out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    synth::closed_sessions(out, sessions, 8, messages, 1024).unwrap().into_inner().unwrap().sync_all().unwrap();
    sessions
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list
    }
    let rounds = env_or("WSTAP_BENCH_ROUNDS", 3).max(1) as usize;
    let bin = std::env::var("WSTAP_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_wstap").to_owned());
    let dir = std::env::temp_dir().join(format!("wstap-bench-reader-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("\n== the reader: `wstap sessions F` against `tshark -r F -Y websocket`, medians of {rounds}");
    println!(
        "{:<28} {:>9} {:>10} {:>10} {:>12} {:>9}",
        "file", "sessions", "wstap s", "wstap RSS", "MB/s", "vs tshark"
    );
    for (mb, with_tshark) in
        [(env_or("WSTAP_BENCH_READER_MB", 192), true), (env_or("WSTAP_BENCH_READER_BIG_MB", 1024), false)]
    {
        if mb == 0 {
            continue;
        }
        let file = dir.join(format!("closed-{mb}MB.pcap"));
        let sessions = generate(&file, mb);
        let size = std::fs::metadata(&file).unwrap().len();
        let f = file.to_str().unwrap();
        let wstap = median((0..rounds).map(|_| measure(&[&bin, "sessions", f])).collect());
        let tshark = with_tshark
            .then(|| median((0..rounds).map(|_| measure(&["tshark", "-r", f, "-Y", "websocket"])).collect()));
        let vs = tshark.map_or("-".to_string(), |t| format!("{:.1}×", t.secs / wstap.secs));
        println!(
            "{:<28} {:>9} {:>10.2} {:>7.1} MiB {:>12.0} {:>9}",
            format!("{:.0} MB", size as f64 / 1e6),
            sessions,
            wstap.secs,
            wstap.rss_kib as f64 / 1024.0,
            size as f64 / 1e6 / wstap.secs,
            vs
        );
        if let Some(t) = tshark {
            println!("{:<28} {:>9} {:>10.2} {:>7.1} MiB   (tshark)", "", "", t.secs, t.rss_kib as f64 / 1024.0);
        }
        let goal = wstap.rss_kib <= 48 * 1024 && tshark.is_none_or(|t| t.secs >= 4.0 * wstap.secs);
        println!(
            "{:<28} goal (≤ 48 MiB{}): {}",
            "",
            if with_tshark { ", ≥ 4× tshark" } else { "" },
            if goal { "met" } else { "NOT met" }
        );
        std::fs::remove_file(&file).unwrap();
    }
    std::fs::remove_dir_all(&dir).ok();
}
