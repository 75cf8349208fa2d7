//! Capture under trouble: a SIGKILLed daemon, a capture directory deleted under it, a
//! full filesystem. Traffic must never notice, every file left must open in tshark, and
//! capture must come back by itself with a file that decodes on its own.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::capture::*;
use crate::support::*;
use wstap_wire::wsframe::Opcode;

/// Every file in `dir`, finished or `.part`.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    files.sort();
    files
}

fn has_part(dir: &Path) -> bool {
    all_files(dir).iter().any(|f| f.to_string_lossy().ends_with(".part"))
}

/// A numbered message, so its presence can be checked in a capture.
fn numbered(i: u32) -> Vec<u8> {
    let mut m = format!("message {i:06} ").into_bytes();
    m.resize(1024, b'.');
    m
}

#[tokio::test]
async fn after_kill_9_every_file_opens_and_only_the_last_flush_interval_is_missing() {
    within(async {
        let dir = capture_dir("kill9");
        let captures = dir.join("captures");
        std::fs::create_dir_all(&*dir).unwrap();
        let config = dir.join("wstap.toml");
        let extra = "flush_interval = \"200ms\"\n[capture.rotate]\nsize = \"4MiB\"\ninterval = \"0s\"\nfiles = 0";
        std::fs::write(&config, config_toml(echo_upstream().await, &capture_toml(&captures, extra))).unwrap();
        let (mut child, addr) = spawn_daemon(&config).await;

        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/load")).await.unwrap();
        let start = Instant::now();
        let mut echoed = Vec::new();
        for i in 0.. {
            ws.send(Message::binary(numbered(i))).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(numbered(i)));
            echoed.push((i, Instant::now()));
            // Long enough for a flush interval to matter, and for a rotation (however
            // slowly a loaded machine moves the bytes).
            if start.elapsed() > Duration::from_millis(1500) && all_files(&captures).len() >= 2 {
                break;
            }
        }
        let status = std::process::Command::new("kill").args(["-KILL", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let killed = Instant::now();
        child.wait().unwrap();

        let files = all_files(&captures);
        assert!(files.len() >= 2, "{files:?}");
        let mut seen = std::collections::HashSet::new();
        let mut per_file = Vec::new();
        for file in &files {
            // Every file opens (the only defect allowed is a final block cut short), and
            // its first TCP stream, the client leg, holds whole messages up to the cut.
            let out = std::process::Command::new("tshark")
                .arg("-r")
                .arg(file)
                .args(["-q", "-z", "follow,tcp,raw,0"])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr: Vec<&str> =
                stderr.lines().filter(|l| !l.contains("Running as user") && !l.trim().is_empty()).collect();
            assert!(
                out.status.success() || stderr.iter().all(|l| l.contains("cut short")),
                "{}: {stderr:?}",
                file.display()
            );
            let (up, _) = parse_follow(&String::from_utf8_lossy(&out.stdout));
            let messages = if up.is_empty() { Vec::new() } else { ws_messages_until(&up, false) };
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let numbers = |m: &Vec<u8>| String::from_utf8_lossy(&m[8..14.min(m.len())]).into_owned();
            let span = (messages.first().map(|(_, m)| numbers(m)), messages.last().map(|(_, m)| numbers(m)));
            per_file.push((name, std::fs::metadata(file).unwrap().len(), messages.len(), span, stderr.join(" ")));
            seen.extend(messages.into_iter().map(|(_, m)| m));
        }
        // What crossed the proxy more than a flush interval (plus scheduling slack)
        // before the kill is on disk.
        let slack = Duration::from_millis(200 + 400);
        let required: Vec<u32> = echoed.iter().filter(|(_, t)| killed - *t > slack).map(|(i, _)| *i).collect();
        assert!(required.len() > 10, "the load ran long enough: {} messages", echoed.len());
        let missing: Vec<&u32> = required.iter().filter(|i| !seen.contains(&numbered(**i))).collect();
        assert!(
            missing.is_empty(),
            "{} of {} messages older than {slack:?} missing after kill -9, first {:?}; files (name, bytes, \
             messages, first and last, tshark): {per_file:?}",
            missing.len(),
            required.len(),
            &missing[..missing.len().min(5)]
        );
    })
    .await;
}

#[tokio::test]
async fn a_deleted_capture_directory_is_recreated_and_the_next_file_stands_alone() {
    within(async {
        let dir = capture_dir("deleted");
        let proxy =
            Proxy::start(&config(echo_upstream().await, &capture_toml(&dir, "flush_interval = \"100ms\""))).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(proxy.ws_url("/deleted")).await.unwrap();
        let mut round_trip = async |text: &str| {
            ws.send(Message::text(text)).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
        };
        round_trip("before").await;
        eventually("the capture file exists", || has_part(&dir)).await;
        std::fs::remove_dir_all(&*dir).unwrap();
        round_trip("while the directory is gone").await;
        proxy.rotate().await;
        eventually("the directory is back with a new file", || has_part(&dir)).await;
        round_trip("after").await;
        close_and_stop(ws, proxy).await;

        // The directory is back, and its newest file decodes on its own (it starts with the
        // Upgrade exchange) and holds what was sent after.
        let files = the_files(&dir);
        let last = files.last().expect("a file in the recreated directory");
        let (up, _) = &decode_each(std::slice::from_ref(last), 2)[0];
        assert!(up.contains(&(Opcode::Text, b"after".to_vec())), "{up:?}");
    })
    .await;
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Mounts a `size` tmpfs at `at`, or says why it cannot.
    fn mount(at: &Path, size: &str) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(SmallDisk(at.to_owned()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl SmallDisk {
    /// Mounts a small ext4 of `kib` KiB at `at` (a loop device): a filesystem that takes
    /// `O_DIRECT`, as tmpfs does not, so that capture files are written around the page
    /// cache.
    fn ext4(at: &Path, kib: u32) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let image = at.with_extension("img");
        let run = |cmd: &mut std::process::Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| e.to_string())?;
            out.status.success().then_some(()).ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
        };
        std::fs::File::create(&image).and_then(|f| f.set_len(u64::from(kib) << 10)).map_err(|e| e.to_string())?;
        run(std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "1024", "-N", "64", "-m", "0", "-O", "^has_journal,^resize_inode"])
            .arg(&image))?;
        run(std::process::Command::new("mount").args(["-o", "loop"]).arg(&image).arg(at))?;
        Ok(SmallDisk(at.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_file(self.0.with_extension("img"));
    }
}

#[ignore = "needs root: mounts a small tmpfs"]
#[tokio::test]
async fn a_full_filesystem_never_hurts_traffic_and_capture_resumes_when_there_is_room() {
    let scratch = capture_dir("fulldisk");
    let disk = SmallDisk::mount(&scratch, "160k").expect("mounting a small tmpfs (this test needs root)");
    full_filesystem(&scratch).await;
    drop(disk);
}

/// The same on a filesystem that takes `O_DIRECT` (`capture.direct_io`, the default):
/// the direct writes meet the full disk.
#[ignore = "needs root: mounts a small ext4 on a loop device"]
#[tokio::test]
async fn a_full_filesystem_written_around_the_page_cache_never_hurts_traffic_either() {
    let scratch = capture_dir("fulldisk-direct");
    let disk = SmallDisk::ext4(&scratch, 200).expect("mounting a small ext4 (this test needs root)");
    full_filesystem(&scratch).await;
    drop(disk);
}

/// About 500 KB of capture into a small filesystem mounted at `scratch`: every echo
/// exact, the errors in `/metrics`, and capture resumed once there is room.
async fn full_filesystem(scratch: &Path) {
    within(async {
        let dir = scratch.join("captures");
        let extra = "flush_interval = \"100ms\"\n[capture.rotate]\nsize = \"64KiB\"\ninterval = \"0s\"\nfiles = 0";
        let admin = "[admin]\nlisten = \"127.0.0.1:0\"\n";
        let proxy =
            Proxy::start(&config(echo_upstream().await, &format!("{admin}{}", capture_toml(&dir, extra)))).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(proxy.ws_url("/full")).await.unwrap();
        // About 500 KB of capture for a 160–200 KiB disk: every echo must still be exact.
        for i in 0..120 {
            let m = Message::binary(numbered(i));
            ws.send(m.clone()).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), m, "traffic is unaffected by the full disk");
        }
        // The operator sees it: write errors and unwritten bytes move in /metrics, once the
        // writer thread has got to the bytes that do not fit (it runs behind the traffic).
        let value = |metrics: &str, name: &str| -> u64 {
            metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0)
        };
        let mut metrics = String::new();
        for _ in 0..500 {
            metrics =
                raw_exchange(proxy.admin.unwrap(), b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await;
            if value(&metrics, "wstap_capture_unwritten_bytes_total ") > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(value(&metrics, "wstap_capture_write_errors_total ") > 0, "{metrics}");
        assert!(value(&metrics, "wstap_capture_unwritten_bytes_total ") > 0, "{metrics}");
        // Make room; capture resumes by itself with a new file.
        let before: Vec<PathBuf> = all_files(&dir);
        for f in &before {
            std::fs::remove_file(f).unwrap();
        }
        let mut i = 1000;
        eventually("capture resumes with a new file", || has_part(&dir)).await;
        for _ in 0..3 {
            let m = Message::binary(numbered(i));
            ws.send(m.clone()).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), m);
            i += 1;
        }
        close_and_stop(ws, proxy).await;

        let files = the_files(&dir);
        let last = files.last().expect("a file after resumption");
        let per_file = decode_each(std::slice::from_ref(last), 2);
        let ups: Vec<&Vec<u8>> = per_file[0].0.iter().map(|m| &m.1).collect();
        for n in 1000..1003 {
            assert!(ups.contains(&&numbered(n)), "message {n} captured after resumption");
        }
        let comments = fields(last, "frame.comment", &["frame.comment"]);
        assert!(
            comments.iter().any(|c| c[0].contains("capture was interrupted")),
            "the new file says capture was interrupted: {comments:?}"
        );
    })
    .await;
}

#[ignore = "needs root: mounts a small tmpfs"]
#[test]
fn a_write_error_episode_is_reported_once_and_ends_when_a_file_opens() {
    use wstap::capture::FileSink;
    use wstap::capture::SectionInfo;
    use wstap::capture::Stats;
    let scratch = capture_dir("episodes");
    let disk = SmallDisk::mount(&scratch, "96k").expect("mounting a small tmpfs (this test needs root)");
    let dir = scratch.join("captures");
    let mut s = sink_settings(&dir);
    (s.rotate.size, s.rotate.interval, s.rotate.files) = (0, None, 0);
    // Flushed every 50 ms of the injected clock, as the events cross it (a direct file's
    // buffer goes out when flushed, or when its 1 MiB fills).
    s.flush_interval = std::time::Duration::from_millis(50);
    let info = SectionInfo { application: "t".into(), os: "t".into(), hostname: "t".into(), ..Default::default() };
    let stats = Stats::default();
    let mut sink = FileSink::new(s, info, 1);
    let sec = 1_000_000_000u64;
    let t0 = 1_764_000_000 * sec;
    // One session, fed with the injected clock, an event a millisecond; 200 messages of
    // 2 KiB overflow 96 KiB.
    let messages: Vec<Vec<u8>> = (0..200).map(|i| noise(2048 + i)).collect();
    let events = crate::capture::synthetic_session(1, (1, 2), &messages, t0, 1_000_000);
    let (first, rest) = events.split_at(events.len() / 2);
    for ev in first.iter().cloned() {
        let now = ev.time;
        sink.process(ev, &stats);
        sink.tick(now, &stats);
    }
    let episodes = |s: &Stats| s.error_episodes.load(std::sync::atomic::Ordering::Relaxed);
    let errors = stats.write_errors.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(episodes(&stats), 1, "one episode, logged once, for {errors} failed writes");
    assert!(stats.bytes_unwritten.load(std::sync::atomic::Ordering::Relaxed) > 0, "what was not written is counted");

    // Room again: after the retry delay the next file opens and the episode ends.
    for f in all_files(&dir) {
        std::fs::remove_file(f).unwrap();
    }
    sink.tick(wstap_wire::Timestamp::from_nanos(t0 + 2 * sec), &stats);
    assert!(has_part(&dir), "capture resumed with a new file");
    // Filling the disk again is a second episode.
    for mut ev in rest.iter().cloned() {
        ev.time = ev.time.after(std::time::Duration::from_nanos(2 * sec));
        let now = ev.time;
        sink.process(ev, &stats);
        sink.tick(now, &stats);
    }
    assert_eq!(episodes(&stats), 2);
    sink.finish(&stats);
    drop(disk);
}

/// A file that cannot be created when a rotation is due (the directory replaced by a
/// file here; a full inode table or a lost permission alike) ends the rotation: the
/// writer drops capture, counts it, and goes on; it once asked for the rotation again
/// at every event, for ever.
#[test]
fn a_file_that_cannot_be_created_at_a_rotation_drops_capture_and_goes_on() {
    use wstap::capture::{FileSink, SectionInfo, Stats};
    let scratch = capture_dir("cannot-create");
    let dir = scratch.join("captures");
    let mut s = sink_settings(&dir);
    (s.rotate.size, s.rotate.interval, s.rotate.files) = (16 << 10, None, 0);
    let info = SectionInfo { application: "t".into(), os: "t".into(), hostname: "t".into(), ..Default::default() };
    let sec = 1_000_000_000u64;
    let t0 = 1_764_000_000 * sec;
    let messages: Vec<Vec<u8>> = (0..60).map(|i| noise(2048 + i)).collect();
    let events = crate::capture::synthetic_session(1, (1, 2), &messages, t0, 1000);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let path = dir.clone();
    std::thread::spawn(move || {
        let stats = Stats::default();
        let mut sink = FileSink::new(s, info, 1);
        let (first, rest) = events.split_at(4);
        for ev in first.iter().cloned() {
            sink.process(ev, &stats);
        }
        std::fs::remove_dir_all(&path).unwrap();
        std::fs::write(&path, b"not a directory").unwrap();
        for ev in rest.iter().cloned() {
            let now = ev.time;
            sink.process(ev, &stats);
            sink.tick(now, &stats);
        }
        let _ = done_tx.send(stats);
    });
    let stats = done_rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the writer went on");
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&stats.error_episodes), 1);
    assert!(load(&stats.bytes_unwritten) > 0, "what was not written is counted");
}

/// A whole config: one listener on port 0, one route, then `extra`.
fn config_toml(upstream: std::net::SocketAddr, extra: &str) -> String {
    config(upstream, extra)
}

/// Packets in a capture file, as capinfos counts them (fails if it does not open).
fn packets_in(file: &Path) -> u64 {
    let info = run("capinfos", &["-c", "-M", file.to_str().unwrap()]);
    let line = info.lines().find(|l| l.contains("Number of packets")).unwrap_or_else(|| panic!("{info}"));
    line.rsplit(' ').next().unwrap().trim().parse().unwrap()
}

#[ignore = "needs root: mounts a small tmpfs"]
#[test]
fn a_write_error_episode_never_gives_a_final_name_to_an_empty_file_nor_pushes_captures_out() {
    use wstap::capture::FileSink;
    use wstap::capture::SectionInfo;
    use wstap::capture::Stats;
    let scratch = capture_dir("episode-ring");
    let disk = SmallDisk::mount(&scratch, "256k").expect("mounting a small tmpfs (this test needs root)");
    let dir = scratch.join("captures");
    let mut s = sink_settings(&dir);
    (s.rotate.size, s.rotate.interval, s.rotate.files) = (0, None, 3);
    let info = SectionInfo { application: "t".into(), os: "t".into(), hostname: "t".into(), ..Default::default() };
    let (stats, sec) = (Stats::default(), 1_000_000_000u64);
    let mut sink = FileSink::new(s, info, 1);
    let mut now = 1_764_000_000 * sec;
    let run_session = |sink: &mut FileSink, id: u64, now: &mut u64| {
        let messages: Vec<Vec<u8>> = (0..4).map(|i| noise(500 + i)).collect();
        for ev in crate::capture::synthetic_session(id, (2 * id, 2 * id + 1), &messages, *now, 1000) {
            *now = ev.time.as_nanos();
            sink.process(ev, &stats);
        }
        sink.rotate_soon(wstap_wire::Timestamp::from_nanos(*now));
        sink.tick(wstap_wire::Timestamp::from_nanos(*now), &stats);
        sink.settle(&stats); // files end on their own thread
    };
    for id in 1..=3 {
        run_session(&mut sink, id, &mut now);
    }
    let real = all_files(&dir);
    assert_eq!(real.len(), 3, "three real captures: {real:?}");

    // The disk fills up (another program's file), and six retries fail over 12 s.
    let filler = scratch.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    while std::io::Write::write_all(&mut f, &[0u8; 4096]).is_ok() {}
    drop(f);
    for id in 4..=9 {
        now += 2 * sec;
        run_session(&mut sink, id, &mut now);
    }
    assert!(stats.write_errors.load(std::sync::atomic::Ordering::Relaxed) > 0, "the writes failed");
    let after: Vec<PathBuf> = all_files(&dir);
    for file in &after {
        assert!(file.extension().is_some_and(|e| e == "pcapng") || file.to_string_lossy().ends_with(".part"));
        if file.extension().is_some_and(|e| e == "pcapng") {
            assert!(packets_in(file) > 0, "{}: a final name holds packets", file.display());
        }
    }
    for file in &real {
        assert!(after.contains(file), "{} was pushed out of the ring by failed files: {after:?}", file.display());
    }
    std::fs::remove_file(&filler).unwrap();
    sink.finish(&stats);
    drop(disk);
}

/// A reload re-reads the capture directory only for what a crash left: the daemon's own
/// open `.part` files (one per live session here) are not "finished" by it.
#[test]
fn a_reload_leaves_the_daemon_s_own_part_files_alone() {
    use wstap::capture::FileSink;
    use wstap::capture::SectionInfo;
    use wstap::capture::Stats;
    let scratch = capture_dir("reload-part");
    let dir = scratch.join("captures");
    let mut s = sink_settings(&dir);
    s.files = wstap::config::FilesPer::Session;
    let info = SectionInfo { application: "t".into(), os: "t".into(), hostname: "t".into(), ..Default::default() };
    let stats = Stats::default();
    let mut sink = FileSink::new(s.clone(), info, 1);
    let t0 = 1_764_000_000 * 1_000_000_000u64;
    let mut now = t0;
    // Two live sessions: everything but their closes.
    for id in 1..=2 {
        let events = crate::capture::synthetic_session(id, (2 * id, 2 * id + 1), &[noise(300)], now, 1000);
        for ev in events.into_iter().filter(|e| !matches!(e.what, wstap::capture::What::Close { .. })) {
            now = ev.time.as_nanos();
            sink.process(ev, &stats);
        }
    }
    sink.tick(wstap_wire::Timestamp::from_nanos(now), &stats);
    assert_eq!(all_files(&dir).iter().filter(|f| f.to_string_lossy().ends_with(".part")).count(), 2);
    // The reload: each session's file rotates, one after the other.
    sink.reconfigure(s, wstap_wire::Timestamp::from_nanos(now));
    sink.tick(wstap_wire::Timestamp::from_nanos(now + 1), &stats);
    sink.settle(&stats); // files end on their own thread
    let files = all_files(&dir);
    let parts = files.iter().filter(|f| f.to_string_lossy().ends_with(".part")).count();
    assert_eq!((files.len() - parts, parts), (2, 2), "two finished, two open: {files:?}");
    assert_eq!(stats.files_finished.load(std::sync::atomic::Ordering::Relaxed), 2, "each finished by its own rotation");
    sink.finish(&stats);
}
