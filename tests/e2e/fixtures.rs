//! From a day of captures to a fixture: filters that pick sessions across rotated files,
//! export as HAR (checked against the HAR 1.2 schema) and JSON lines, and replays that CI
//! reads (several sessions at once, a JUnit report, JSON values that may differ).

use std::path::{Path, PathBuf};
use std::process::Command;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::capture::{capture_dir, capture_toml, the_files};
use crate::replay::wstap;
use crate::support::*;

/// What a session of the recording was: its path, its client's port, when it began.
struct Recorded {
    path: &'static str,
    port: u16,
}

/// Opens a session on `path` (with `host` as its Host field, if given), sends `texts`
/// and reads their echoes; leaves it open.
async fn session(proxy: &Proxy, path: &str, host: Option<&str>, texts: &[&str]) -> (WsClient, u16) {
    let mut request = proxy.ws_url(path).into_client_request().unwrap();
    if let Some(host) = host {
        request.headers_mut().insert("host", host.parse().unwrap());
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let port = match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.local_addr().unwrap().port(),
        _ => unreachable!(),
    };
    for t in texts {
        ws.send(Message::text(*t)).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(*t));
    }
    (ws, port)
}

async fn close(mut ws: WsClient) {
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
}

/// `wstap sessions --json FILES ARGS…`: the paths of the sessions listed, in id order.
async fn listed(files: &[PathBuf], args: &[&str]) -> Vec<(String, u16)> {
    let mut all: Vec<String> = vec!["sessions".into(), "--json".into()];
    all.extend(files.iter().map(|f| f.display().to_string()));
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = wstap(&all).await;
    assert_eq!(code, 0, "{args:?}: {stderr}");
    let mut rows: Vec<(usize, String, u16)> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            let client: std::net::SocketAddr = v["client"].as_str().unwrap().parse().unwrap();
            (v["id"].as_u64().unwrap() as usize, v["path"].as_str().unwrap().to_string(), client.port())
        })
        .collect();
    rows.sort();
    rows.into_iter().map(|(_, p, c)| (p, c)).collect()
}

/// Records four sessions through the daemon, the files rotated in the middle of one:
/// returns the files, what each session was, and a time between the second and third.
async fn recording(name: &str) -> (Scratch, Vec<PathBuf>, Vec<Recorded>, String) {
    let dir = capture_dir(name);
    let proxy = Proxy::start(&config(echo_upstream().await, &capture_toml(&dir, ""))).await;
    let mut recorded = Vec::new();
    let (a, port) = session(&proxy, "/chat?room=1", None, &["hello", "buy 100 at 7"]).await;
    recorded.push(Recorded { path: "/chat?room=1", port });
    close(a).await;
    let (mut feed, port) = session(&proxy, "/feed", None, &["tick 1", "tick 2", "tick 3"]).await;
    recorded.push(Recorded { path: "/feed", port });
    proxy.rotate().await; // SIGUSR1, mid-session
    for t in ["tick 4", "tick 5", "tick 6"] {
        feed.send(Message::text(t)).await.unwrap();
        feed.next().await.unwrap().unwrap();
    }
    close(feed).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await; // the clock moves on: a boundary
    let between = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (c, port) = session(&proxy, "/chat?room=2", Some("App.Example:8443"), &["hello again"]).await;
    recorded.push(Recorded { path: "/chat?room=2", port });
    close(c).await;
    let (d, port) = session(&proxy, "/feed?quiet=1", None, &[]).await;
    recorded.push(Recorded { path: "/feed?quiet=1", port });
    close(d).await;
    proxy.begin_shutdown().await;
    proxy.stopped().await;
    let files = the_files(&dir);
    assert!(files.len() >= 2, "rotated: {files:?}");
    (dir, files, recorded, between)
}

#[tokio::test]
async fn filters_pick_exactly_the_expected_sessions_across_rotated_files() {
    within(async {
        let (_dir, files, rec, between) = recording("filters").await;
        // The client legs (the upstream legs are listed too: they go to the echo server).
        let front: Vec<(String, u16)> = rec.iter().map(|r| (r.path.to_string(), r.port)).collect();
        let want = |which: &[usize]| which.iter().map(|&i| front[i].clone()).collect::<Vec<_>>();
        let client_legs = |got: Vec<(String, u16)>| -> Vec<(String, u16)> {
            got.into_iter().filter(|(_, port)| front.iter().any(|(_, p)| p == port)).collect()
        };
        assert_eq!(client_legs(listed(&files, &[]).await), want(&[0, 1, 2, 3]), "one session each, across files");
        assert_eq!(client_legs(listed(&files, &["--path", "/chat"]).await), want(&[0, 2]));
        assert_eq!(client_legs(listed(&files, &["--host", "app.example"]).await), want(&[2]));
        assert_eq!(client_legs(listed(&files, &["--grep", r"buy \d+"]).await), want(&[0]));
        assert_eq!(client_legs(listed(&files, &["--min-messages", "12"]).await), want(&[1]), "6 each way");
        assert_eq!(client_legs(listed(&files, &["--since", &between]).await), want(&[2, 3]));
        assert_eq!(client_legs(listed(&files, &["--until", &between]).await), want(&[0, 1]));
        let client = format!("127.0.0.1:{}", rec[3].port);
        assert_eq!(listed(&files, &["--client", &client]).await, want(&[3]));
        assert_eq!(client_legs(listed(&files, &["--path", "/feed", "--min-messages", "3"]).await), want(&[1]));
        let combined = listed(&files, &["--path", "/chat", "--grep", "again", "--until", &between]).await;
        assert!(combined.is_empty(), "every filter must hold: {combined:?}");
        // The same filters choose what is exported: one JSON line per message.
        let mut args = vec!["export".to_string(), "--format".into(), "jsonl".into(), "-o".into(), "-".into()];
        args.extend(files.iter().map(|f| f.display().to_string()));
        args.extend(["--client".into(), format!("127.0.0.1:{}", rec[1].port)]);
        let (code, stdout, stderr) = wstap(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert_eq!(code, 0, "{stderr}");
        let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let texts: Vec<&str> =
            lines.iter().filter(|l| l["sender"] == "client").filter_map(|l| l["text"].as_str()).collect();
        assert_eq!(texts, ["tick 1", "tick 2", "tick 3", "tick 4", "tick 5", "tick 6"]);
    })
    .await;
}

/// `wstap merge FILES -o out`: the merged file.
pub(crate) async fn merged(files: &[PathBuf], out: &Path) -> PathBuf {
    let mut args = vec!["merge".to_string(), "-o".into(), out.display().to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let (code, _, stderr) = wstap(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(code, 0, "{stderr}");
    out.to_path_buf()
}

#[tokio::test]
async fn merged_rotated_files_decode_every_message_once() {
    within(async {
        let (dir, files, rec, _) = recording("merge").await;
        let merged = merged(&files, &dir.join("merged.pcapng")).await;
        crate::capture::assert_clean(&merged, 2);
        // Every message once on each leg each way in tshark: the feed, cut by the
        // rotation, whole.
        let texts = crate::capture::fields(&merged, "websocket.opcode == 1", &["websocket.payload.text"]).concat();
        for t in ["hello", "buy 100 at 7", "hello again", "tick 1", "tick 3", "tick 4", "tick 6"] {
            assert_eq!(texts.iter().filter(|x| *x == t).count(), 4, "{t:?}: {texts:?}");
        }
        // And the reader sees in it what it sees in the files read together.
        let together = wstap_replay::open_all(&files).unwrap();
        let one = wstap_replay::open(&merged).unwrap();
        assert!(one.problems.is_empty(), "{:?}", one.problems);
        let brief = |r: &wstap_replay::Recording| -> Vec<_> {
            r.sessions.iter().map(|s| (s.client, s.path.clone(), s.messages.clone())).collect()
        };
        if brief(&one) != brief(&together) {
            let short = |r: &wstap_replay::Recording| -> Vec<_> {
                r.sessions
                    .iter()
                    .map(|s| (s.id, s.client, s.path.clone(), s.messages.len(), s.problems.clone()))
                    .collect()
            };
            panic!("merged {:?}\ntogether {:?}", short(&one), short(&together));
        }
        assert_eq!(one.sessions.iter().filter(|s| s.path == rec[1].path).count(), 2, "the feed: one per leg");
        // An input given twice, the output among the inputs, standard input: refused,
        // and no input harmed.
        let size = std::fs::metadata(&files[0]).unwrap().len();
        let f0 = files[0].to_str().unwrap();
        for (args, why) in [
            (vec!["merge", "-o", "x.pcapng", f0, f0], "given twice"),
            (vec!["merge", "-o", f0, f0], "the output is one of the inputs"),
            (vec!["merge", "-o", "x.pcapng", "-"], "standard input"),
        ] {
            let (code, _, err) = wstap(&args).await;
            assert!(code == 2 && err.contains(why), "{args:?}: {err}");
        }
        assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), size);
    })
    .await;
}

/// Checks `har` against the HAR 1.2 schema (with Chrome's WebSocket extension) with
/// python's jsonschema; the validator's complaint, if any.
fn har_complaint(har: &Path) -> Option<String> {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/har-1.2.schema.json");
    let check = "import json, sys, jsonschema\n\
                 schema, doc = (json.load(open(p)) for p in sys.argv[1:3])\n\
                 jsonschema.validate(doc, schema, format_checker=jsonschema.FormatChecker())";
    let out = Command::new("/usr/bin/python3").args(["-c", check]).arg(&schema).arg(har).output().unwrap();
    (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn the_har_export_passes_the_har_schema_and_holds_the_sessions_messages() {
    within(async {
        let (dir, files, rec, _) = recording("har").await;
        let har = dir.join("out.har");
        let mut args =
            vec!["export".to_string(), "--format".into(), "har".into(), "-o".into(), har.display().to_string()];
        args.extend(files.iter().map(|f| f.display().to_string()));
        args.extend(["--path".into(), "/".into()]);
        let (code, _, stderr) = wstap(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(har_complaint(&har), None);
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&har).unwrap()).unwrap();
        let whole = wstap_replay::open_all(&files).unwrap();
        let entries = doc["log"]["entries"].as_array().unwrap();
        assert_eq!(entries.len(), whole.sessions.len());
        for s in &whole.sessions {
            let e = entries.iter().find(|e| e["connection"].as_str() == Some(&s.client.port().to_string())).unwrap();
            assert_eq!(e["response"]["status"], 101);
            let msgs = e["_webSocketMessages"].as_array().unwrap();
            let all: Vec<_> = whole
                .sessions
                .iter()
                .map(|s| (s.id, s.client, s.path.clone(), s.messages.len(), s.notes.clone()))
                .collect();
            assert_eq!(msgs.len(), s.messages.len(), "{}: {all:?}", s.path);
            for (m, h) in s.messages.iter().zip(msgs) {
                assert_eq!(h["type"], if m.dir == wstap_replay::Dir::Up { "send" } else { "receive" });
                match m.kind {
                    wstap_replay::Kind::Text => assert_eq!(h["data"].as_str().unwrap().as_bytes(), &m.data[..]),
                    _ => assert_eq!(h["_encoding"], "base64"),
                }
            }
        }
        let feed = entries.iter().find(|e| e["connection"].as_str() == Some(&rec[1].port.to_string())).unwrap();
        assert!(feed["request"]["url"].as_str().unwrap().ends_with("/feed"));
        // A broken document fails the check: the check checks.
        let mut bad = doc.clone();
        bad["log"]["entries"][0]["_webSocketMessages"][0]["type"] = "sent".into();
        let bad_path = dir.join("bad.har");
        std::fs::write(&bad_path, bad.to_string()).unwrap();
        assert!(har_complaint(&bad_path).is_some());
    })
    .await;
}

/// An upstream that answers each text message with JSON carrying it, a fresh timestamp
/// and a counter; `shout`: the text upper-cased (a build that changed).
async fn json_upstream(shout: bool) -> std::net::SocketAddr {
    serve(move |stream| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
        let mut n = 0;
        while let Some(Ok(Message::Text(t))) = ws.next().await {
            n += 1;
            let text = if shout { t.to_uppercase() } else { t.to_string() };
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            let reply = serde_json::json!({ "echo": text, "n": n, "meta": { "ts": now.to_string() } });
            if ws.send(Message::text(reply.to_string())).await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn replays_of_every_session_chosen_report_to_junit_and_ignore_json_values() {
    within(async {
        let dir = capture_dir("junit");
        let proxy = Proxy::start(&config(json_upstream(false).await, &capture_toml(&dir, ""))).await;
        // The client legs only: the upstream legs' server is the upstream.
        let front = format!("--server={}", proxy.addr());
        for path in ["/json?a", "/json?b"] {
            let (mut ws, _) = tokio_tungstenite::connect_async(proxy.ws_url(path)).await.unwrap();
            for t in ["alpha", "BETA", "gamma"] {
                ws.send(Message::text(t)).await.unwrap();
                ws.next().await.unwrap().unwrap();
            }
            close(ws).await;
        }
        proxy.begin_shutdown().await;
        proxy.stopped().await;
        let files = the_files(&dir);
        let play = |target: std::net::SocketAddr, extra: &[&str], junit: Option<&Path>| {
            let mut args: Vec<String> = vec!["replay".into()];
            args.extend(files.iter().map(|f| f.display().to_string()));
            args.extend(["--target".into(), format!("ws://{target}"), "--speed".into(), "max".into()]);
            args.extend(["--path".into(), "/json".into(), "--wait".into(), "2s".into()]);
            args.extend(extra.iter().map(|a| a.to_string()));
            if let Some(j) = junit {
                args.extend(["--junit".into(), j.display().to_string()]);
            }
            async move { wstap(&args.iter().map(String::as_str).collect::<Vec<_>>()).await }
        };
        let same = json_upstream(false).await;
        let (code, out, _) = play(same, &[&front], None).await;
        assert_eq!(code, 1, "fresh timestamps differ: {out}");
        let (code, out, err) = play(same, &[&front, "--ignore-json", "meta.ts"], None).await;
        assert_eq!(code, 0, "timestamps ignored, both sessions replayed: {out}{err}");
        assert!(out.contains("2 sessions: 2 matched"), "{out}");
        let junit = dir.join("report.xml");
        let changed = json_upstream(true).await;
        let (code, out, _) = play(changed, &[&front, "--ignore-json", "/meta/ts"], Some(&junit)).await;
        assert_eq!(code, 1, "content changed: {out}");
        // JUnit: two suites, a case for the handshake and each answer; "alpha" and "gamma"
        // differ in each, "BETA" does not.
        let count = "import sys, xml.etree.ElementTree as ET\n\
                     root = ET.parse(sys.argv[1]).getroot()\n\
                     suites = root.findall('testsuite')\n\
                     cases = [c for s in suites for c in s.findall('testcase')]\n\
                     failed = [c for c in cases if c.find('failure') is not None]\n\
                     print(root.tag, len(suites), len(cases), len(failed), root.get('tests'), root.get('failures'))";
        let out = Command::new("/usr/bin/python3").args(["-c", count]).arg(&junit).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "testsuites 2 8 4 8 4");
        let xml = std::fs::read_to_string(&junit).unwrap();
        assert!(xml.contains("DIFFERENT") && xml.contains("ALPHA"), "the failure holds the difference");
    })
    .await;
}

#[tokio::test]
async fn a_carved_deflate_session_is_small_clean_and_reads_back_the_same() {
    use tokio::io::AsyncBufReadExt;
    within(async {
        let scratch = scratch_dir("carve");
        let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/peers/deflate.py");
        let log = scratch.join("received.jsonl");
        let mut server = tokio::process::Command::new("/usr/bin/python3")
            .args([peers.to_str().unwrap(), "server", log.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(server.stdout.take().unwrap()).lines();
        let port: u16 = lines.next_line().await.unwrap().unwrap().parse().unwrap();
        let dir = capture_dir("carve");
        let proxy = Proxy::start(&config(([127, 0, 0, 1], port).into(), &capture_toml(&dir, ""))).await;
        let front = proxy.addr();
        let status = tokio::process::Command::new("/usr/bin/python3")
            .args([peers.to_str().unwrap(), "clients", &proxy.ws_url("/feed"), "30"])
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(status.success());
        proxy.begin_shutdown().await;
        proxy.stopped().await;
        drop(server.kill().await);
        let files = the_files(&dir);
        let whole: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
        let carved = scratch.join("session17.pcapng");
        let mut args: Vec<String> = vec!["carve".into(), "-o".into(), carved.display().to_string()];
        args.extend(files.iter().map(|f| f.display().to_string()));
        args.extend(["--path".into(), "/feed?n=17&".into(), format!("--server={front}")]);
        let (code, _, stderr) = wstap(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert_eq!(code, 0, "{stderr}");
        let size = std::fs::metadata(&carved).unwrap().len();
        assert!(size * 10 < whole, "{size} bytes carved out of {whole}");
        crate::capture::assert_clean(&carved, 1);
        // The same messages as the session in the capture, and tshark inflates them.
        let original = wstap_replay::open_all(&files).unwrap();
        let original = original.sessions.iter().find(|s| s.path == "/feed?n=17&" && s.server == front).unwrap();
        let back = wstap_replay::open(&carved).unwrap();
        assert!(back.problems.is_empty(), "{:?}", back.problems);
        assert_eq!(back.sessions.len(), 1);
        let s = &back.sessions[0];
        assert!(s.deflate && s.path == "/feed?n=17&");
        let brief = |s: &wstap_replay::Session| -> Vec<(wstap_replay::Dir, wstap_replay::Kind, Vec<u8>)> {
            s.messages.iter().map(|m| (m.dir, m.kind, m.data.clone())).collect()
        };
        assert!(brief(s) == brief(original), "the carved session reads back as the original");
        assert!(s.messages.iter().filter(|m| m.kind == wstap_replay::Kind::Text).all(|m| m.compressed));
        let texts = crate::capture::fields(&carved, "websocket.opcode == 1", &["websocket.payload.text"]).concat();
        assert_eq!(texts.len(), 2 * 9, "nine text messages each way, inflated by tshark");
        let comments = crate::capture::fields(&carved, "frame.comment", &["frame.comment"]).concat();
        assert!(comments[0].contains("carved by wstap from") && comments[0].contains("session"), "{comments:?}");
        // A session the capture lost bytes of carves with them still lost.
        let cut = scratch.join("cut.pcapng");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dumpcap-lo.pcapng");
        crate::capture::run("editcap", &["-r", fixture.to_str().unwrap(), cut.to_str().unwrap(), "1-12"]);
        let out = scratch.join("cut-carved.pcapng");
        let (code, _, err) = wstap(&["carve", cut.to_str().unwrap(), "-o", out.to_str().unwrap()]).await;
        assert_eq!(code, 1, "the source has problems: {err}");
        let source = wstap_replay::open(&cut).unwrap();
        let back = wstap_replay::open(&out).unwrap();
        let incomplete = |r: &wstap_replay::Recording| r.sessions[0].messages.iter().filter(|m| m.incomplete).count();
        assert!(incomplete(&source) > 0 && incomplete(&back) == incomplete(&source));
        assert!(!back.problems.is_empty(), "the carved file says what is missing");
    })
    .await;
}

/// A port free now (for a program that cannot be told to pick one).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn mqtt_over_websocket_decodes_as_mqtt_with_the_wireshark_plugin() {
    within(async {
        let scratch = scratch_dir("mqtt");
        // Debian's mosquitto with a websockets listener (it wants a plain one beside it).
        let (ws_port, tcp_port) = (free_port(), free_port());
        let conf = scratch.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {ws_port} 127.0.0.1\nprotocol websockets\nlistener {tcp_port} 127.0.0.1\nallow_anonymous true\n"
            ),
        )
        .unwrap();
        let _broker = tokio::process::Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut ready = false;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", ws_port)).await.is_ok() {
                ready = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert!(ready, "mosquitto listens");
        let dir = capture_dir("mqtt");
        let proxy = Proxy::start(&config(([127, 0, 0, 1], ws_port).into(), &capture_toml(&dir, ""))).await;
        let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/peers/mqtt.py");
        let status = tokio::process::Command::new("/usr/bin/python3")
            .arg(&client)
            .arg(proxy.addr().port().to_string())
            .status()
            .await
            .unwrap();
        assert!(status.success(), "the MQTT client published and got its message back through wstap");
        proxy.begin_shutdown().await;
        proxy.stopped().await;
        let file = the_files(&dir).remove(0);
        let plugin = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/wireshark/wstap-subprotocols.lua");
        let script = format!("lua_script:{}", plugin.display());
        let mqtt = |with_plugin: bool| {
            let mut args = vec![];
            if with_plugin {
                args.extend(["-X", script.as_str()]);
            }
            args.extend(["-Y", "mqtt", "-T", "fields", "-e", "mqtt.msgtype", "-e", "mqtt.topic", "-e", "mqtt.msg"]);
            crate::capture::tshark(&file, &args)
        };
        assert_eq!(mqtt(false).lines().count(), 0, "Wireshark alone shows no MQTT on a WebSocket");
        let decoded = mqtt(true);
        // Several MQTT packets in one frame or segment come as one line, comma-separated.
        let types: Vec<&str> = decoded.lines().flat_map(|l| l.split('\t').next().unwrap_or_default().split(',')).collect();
        // (paho may close without its DISCONNECT: not asked for.)
        for t in ["1", "2", "8", "9", "3"] {
            assert!(types.contains(&t), "MQTT message type {t} (connect, connack, subscribe, suback, publish): {decoded}");
        }
        assert!(decoded.contains("wstap/test"), "{decoded}");
        let expert = crate::capture::tshark(&file, &["-X", &script, "-q", "-z", "expert"]);
        assert!(!expert.contains("Warnings (") && !expert.contains("Errors ("), "{expert}");
        // wstap's own listing says what rides on the messages.
        let (code, out, _) = wstap(&["sessions", "--messages", file.to_str().unwrap()]).await;
        assert_eq!(code, 0);
        assert!(out.lines().filter(|l| l.contains(" binary ")).all(|l| l.contains("[mqtt]")), "{out}");
    })
    .await;
}
