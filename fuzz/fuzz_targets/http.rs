//! The proxy's HTTP path and the capture's view of it, side by side: a client byte stream
//! built from the input (requests in every form hyper takes, with bodies of every
//! framing, pipelined and split anywhere, with raw bytes between them) is served by
//! hyper, configured as the proxy configures it, over the real client-leg `Tee` and
//! `Tap`; each request hyper hands over is routed as the proxy does (`/all…` recorded
//! whole, `/off…` not recorded, anything else as it is; an Upgrade to `/ws…` switches)
//! and its decision told to the tap. The events are written by the real capture writer
//! with the default redaction. Asserted: no credential hyper read in a header the
//! defaults redact, and no byte that marks a request hyper routed to `/off`, is anywhere
//! in the file.
#![no_main]
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wstap::capture::{CaptureWriter, Decision, Layer, Processed, Scope, SectionInfo, Start, Stats, Synthesis};
use wstap::capture::{PureAcks, Recorder};
use wstap::config::{DisplayPort, Legs, Redact, Segmentation, Snap};
use wstap::{Leg, Opening, Tap, Tee};

/// Secrets and the marks of `/off` requests (`~Q7secret~`): `~` never appears in the raw
/// bytes the input adds, so a mark in the file came from where the harness put it. A mark
/// is long enough that a file's binary fields never form one (`~Q7~` once did: the low
/// bytes of a timestamp and a captured length of 126).
const MARK: u8 = b'~';

/// What hyper handed over that must not reach the file.
#[derive(Default)]
struct Seen {
    forbidden: Vec<Vec<u8>>,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
}

/// The client's bytes, and where the input splits them into writes.
fn client_stream(data: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let (mut out, mut cuts) = (Vec::new(), Vec::new());
    let mut it = data.iter().copied();
    let mut n = 0u32;
    while let Some(op) = it.next() {
        n += 1;
        let eol: &[u8] = if op & 1 == 0 { b"\r\n" } else { b"\n" };
        if op & 2 != 0 {
            out.extend_from_slice(eol);
        }
        let method = ["GET", "get", "POST", "PUT", "HEAD"][usize::from(op >> 2 & 3) + usize::from(op & 0x80 != 0)];
        let path = ["/all", "/off", "/ws", "/other"][usize::from(op >> 4 & 3)];
        let absolute = if op & 0x40 != 0 { "http://h" } else { "" };
        out.extend_from_slice(format!("{method} {absolute}{path}/~P{n}secret~?token=~Q{n}secret~ HTTP/1.1").as_bytes());
        out.extend_from_slice(eol);
        let mut field = |name: &str, value: &str| {
            out.extend_from_slice(format!("{name}: {value}").as_bytes());
            out.extend_from_slice(eol);
        };
        field("Host", "h");
        field("Authorization", &format!("Bearer ~A{n}secret~"));
        field("Cookie", &format!("sid=~C{n}secret~"));
        let framing = it.next().unwrap_or(0);
        if path == "/ws" && framing & 1 == 0 {
            field("Upgrade", "websocket");
            field("Connection", "Upgrade");
        }
        let body = format!("~B{n}secret~");
        match framing >> 1 & 3 {
            1 => field("Content-Length", &body.len().to_string()),
            2 => field("Transfer-Encoding", "chunked"),
            _ => {}
        }
        out.extend_from_slice(eol);
        match framing >> 1 & 3 {
            1 => out.extend_from_slice(body.as_bytes()),
            2 => {
                // Chunks whose lines end as the request's do (a bare LF is hyper's to
                // refuse), and raw bytes in a size line's extension and in the trailers.
                let eol = String::from_utf8_lossy(eol).into_owned();
                let mut raw = |n: usize| -> String {
                    let take = usize::from(it.next().unwrap_or(0)) % (n + 1);
                    it.by_ref().take(take).map(|b| if b == MARK { '.' } else { char::from(b) }).collect()
                };
                let (ext, trailer) = (raw(4), raw(12));
                let (head, tail) = body.split_at(3);
                let chunked = format!("3{ext}{eol}{head}{eol}{:x}{eol}{tail}{eol}0{eol}{trailer}{eol}", tail.len());
                out.extend(chunked.chars().map(|c| u8::try_from(u32::from(c)).unwrap_or(b'.')));
            }
            _ => {}
        }
        // Raw bytes behind it (frames, garbage, another request's start), never a mark.
        let raw = usize::from(framing >> 3);
        out.extend(it.by_ref().take(raw).map(|b| if b == MARK { b'.' } else { b }));
        cuts.push(out.len().saturating_sub(usize::from(it.next().unwrap_or(0))));
    }
    (out, cuts)
}

/// What a request's route says, as the proxy decides it.
fn decision(path: &str) -> Decision {
    let start = || Start {
        heading: "fuzz connection".into(),
        label: String::new(),
        request_line: String::new(),
        snap: Snap::default(),
        tls_secrets: None,
    };
    match path {
        p if p.contains("/all") => Decision::Record(start()),
        p if p.contains("/off") => Decision::Skip,
        _ => Decision::AsIs,
    }
}

async fn handle(
    tap: Arc<Tap>,
    seen: Arc<Mutex<Seen>>,
    mut req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().to_string();
    {
        let mut seen = seen.lock().unwrap();
        for name in ["authorization", "cookie"] {
            for v in req.headers().get_all(name) {
                seen.forbidden.extend(marks(v.as_bytes()));
            }
        }
        if path.contains("/off") {
            seen.forbidden.extend(marks(path.as_bytes()));
        }
        seen.forbidden.extend(marks(req.uri().query().unwrap_or("").as_bytes()).filter(|m| m.starts_with(b"~Q")));
    }
    if std::env::var_os("WSTAP_FUZZ_DEBUG").is_some() {
        eprintln!("decide {} {path}", req.method());
    }
    tap.decide(req.method().as_str(), tap.mark(), decision(&path));
    let upgrade = req.headers().get("upgrade").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if upgrade && path.contains("/ws") {
        let start = Start {
            heading: "fuzz session".into(),
            label: String::new(),
            request_line: String::new(),
            snap: Snap::default(),
            tls_secrets: None,
        };
        tap.begin(Scope::Session, tap.mark(), start);
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut up = TokioIo::new(up);
                let mut sink = Vec::new();
                let _ = up.read_to_end(&mut sink).await;
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert("upgrade", "websocket".parse().unwrap());
        resp.headers_mut().insert("connection", "upgrade".parse().unwrap());
        return resp;
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if path.contains("/off") {
        seen.lock().unwrap().forbidden.extend(marks(&body));
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
    if upgrade {
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
    }
    resp
}

/// The `~…~` marks in `bytes`.
fn marks(bytes: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut parts = bytes.split(|b| *b == MARK).enumerate();
    std::iter::from_fn(move || loop {
        let (i, part) = parts.next()?;
        if i % 2 == 1 && !part.is_empty() {
            return Some([&[MARK][..], part, &[MARK]].concat());
        }
    })
}

/// Serves `stream` as the proxy does, over a tap; returns the events and what was forbidden.
async fn serve(stream: Vec<u8>, cuts: Vec<usize>) -> (Recorder, Seen) {
    let recorder = Recorder::new(64 << 20);
    let opening = Opening::new(Leg::Client, "127.0.0.1:80".parse().unwrap(), "127.0.0.1:4000".parse().unwrap(), "");
    let tap = Tap::probing(recorder.clone(), opening, 64 * 1024 + 64 * 1024, Layer::Http);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (client, server) = tokio::io::duplex(1 << 20);
    let svc_tap = tap.clone();
    let svc_seen = seen.clone();
    let service = hyper::service::service_fn(move |req| {
        let (tap, seen) = (svc_tap.clone(), svc_seen.clone());
        async move { Ok::<_, Infallible>(handle(tap, seen, req).await) }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .max_header_size(64 * 1024)
        .preserve_header_case(true)
        .serve_connection(TokioIo::new(Tee::new(server, Some(tap))), service)
        .with_upgrades();
    let (mut read, mut write) = tokio::io::split(client);
    let writer = async move {
        let mut at = 0;
        for cut in cuts.into_iter().chain([stream.len()]) {
            let cut = cut.clamp(at, stream.len());
            if write.write_all(&stream[at..cut]).await.is_err() {
                return;
            }
            at = cut;
            tokio::task::yield_now().await;
        }
        let _ = write.shutdown().await;
    };
    let reader = async move {
        let mut sink = Vec::new();
        let _ = read.read_to_end(&mut sink).await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(http, writer, reader) }).await;
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (recorder, seen)
}

fuzz_target!(|data: &[u8]| {
    let (stream, cuts) = client_stream(data);
    let stream_copy = stream.clone();
    if std::env::var_os("WSTAP_FUZZ_DEBUG").is_some() {
        eprintln!("stream {:?} cuts {cuts:?}", String::from_utf8_lossy(&stream));
    }
    let (recorder, seen) = runtime().block_on(serve(stream, cuts));
    let synth = Synthesis {
        mss_ipv4: 1460,
        mss_ipv6: 1440,
        segment: Segmentation::Mss,
        acks: PureAcks::Omitted,
        display_port: DisplayPort::Auto,
        redact: Arc::new(Redact::defaults()),
        isn_seed: 7,
        rotate_wait: Duration::from_millis(5),
        budgets: Default::default(),
    };
    let info =
        SectionInfo { application: "fuzz".into(), os: "fuzz".into(), hostname: "fuzz".into(), ..Default::default() };
    let legs = Legs { client: true, upstream: false };
    let mut w = CaptureWriter::new(Vec::new(), &info, legs, synth).expect("a writer");
    let stats = Stats::default();
    let mut files = Vec::new();
    let events = recorder.take_events();
    // What a failure leaves for the post-mortem: the client's stream, hyper's requests
    // and the tap's events (a failure may depend on how hyper's reads fell).
    let story = || {
        let mut story = format!("stream {:?}\n", String::from_utf8_lossy(&stream_copy));
        for e in &events {
            story.push_str(&format!("event {:?}\n", e.what));
        }
        story
    };
    for event in events.iter().cloned() {
        if std::env::var_os("WSTAP_FUZZ_DEBUG").is_some() {
            let text = format!("{:?}", event.what);
            eprintln!("event {}", &text[..text.len().min(300)]);
        }
        let mut ev = Some(event);
        while let Some(e) = ev.take() {
            match w.process(e, &stats).expect("in memory") {
                Processed::Done => {}
                Processed::RotateFirst { then } => {
                    files.extend(w.rotate(Vec::new(), &stats).expect("in memory"));
                    ev = then;
                }
            }
        }
    }
    files.extend(w.finish(&stats).expect("in memory"));
    let forbidden: std::collections::HashSet<&[u8]> = seen.forbidden.iter().map(|m| &m[..]).collect();
    for file in &files {
        // Every `~…~` in the file (a mark has no `~` inside), each looked up once.
        let tildes: Vec<usize> = file.iter().enumerate().filter(|(_, b)| **b == MARK).map(|(i, _)| i).collect();
        for pair in tildes.windows(2) {
            let candidate = &file[pair[0]..=pair[1]];
            if forbidden.contains(candidate) {
                let dump = format!("/tmp/fz-http-story-{}.txt", std::process::id());
                let _ = std::fs::write(&dump, format!("{}file {:?}\n", story(), String::from_utf8_lossy(file)));
                panic!("{} in the file (story in {dump})", String::from_utf8_lossy(candidate));
            }
        }
    }
});
