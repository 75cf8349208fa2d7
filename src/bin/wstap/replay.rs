//! The `sessions`, `replay` and `mock` commands: reading files, choosing a session,
//! printing listings, progress and summaries. Exit codes: 0 matched (or listed cleanly),
//! 1 mismatch (or the files had problems), 2 error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use wstap::config::tls::ServerCheck;

use wstap_replay::{self as player, preview, Options, Report, Step};
use wstap_replay::{Dir, Message, Recording, Session, SessionId};

pub const MATCHED: u8 = 0;
pub const MISMATCH: u8 = 1;
pub const ERROR: u8 = 2;

fn utc(t: wstap_wire::Timestamp) -> String {
    humantime::format_rfc3339_micros(t.to_system_time()).to_string()
}

fn close_codes(s: &Session) -> String {
    let code = |who| s.close_code(who).map_or("-".to_string(), |c| c.to_string());
    format!("{}/{}", code(Dir::Up), code(Dir::Down))
}

fn message_json(s: &Session, index: usize, m: &Message) -> serde_json::Value {
    let mut v = serde_json::json!({
        "type": "message",
        "session": s.id,
        "index": index,
        "time": utc(m.time),
        "sender": m.dir.sender(),
        "kind": m.kind,
        "size": m.data.len(),
        "frames": m.frames,
        "compressed": m.compressed,
        "incomplete": m.incomplete,
    });
    if m.kind == wstap_replay::Kind::Gap {
        v["lost"] = m.lost.into();
        return v;
    }
    match std::str::from_utf8(&m.data) {
        Ok(t) if m.kind != wstap_replay::Kind::Binary => v["text"] = t.into(),
        _ => v["hex"] = m.data.iter().map(|b| format!("{b:02x}")).collect::<String>().into(),
    }
    v
}

fn session_json(s: &Session) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    v["type"] = "session".into();
    v["time"] = utc(s.start).into();
    v["messages_client"] = s.count(Dir::Up).into();
    v["messages_server"] = s.count(Dir::Down).into();
    v["close_client"] = s.close_code(Dir::Up).into();
    v["close_server"] = s.close_code(Dir::Down).into();
    v
}

/// What `wstap sessions` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// One line per session.
    Sessions,
    /// Each session, then each of its messages (`--messages`).
    Messages,
}

/// How `wstap sessions` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An aligned table for people.
    Table,
    /// JSON lines (`--json`).
    Json,
}

/// `wstap sessions`.
pub fn sessions(files: &[PathBuf], listing: Listing, format: Format) -> ExitCode {
    let rec = match wstap_replay::open_all(files) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let mut out = std::io::stdout().lock();
    let mut print = |line: String| writeln!(out, "{line}").is_ok();
    if format == Format::Table {
        print(format!(
            "{:<4} {:<27} {:<47} {:<24} {:>5} {:>5}  CLOSE(C/S)",
            "ID", "START (UTC)", "CLIENT → SERVER", "PATH", "C→S", "S→C"
        ));
    }
    for s in &rec.sessions {
        let ok = if format == Format::Json {
            print(session_json(s).to_string())
        } else {
            print(format!(
                "{:<4} {:<27} {:<47} {:<24} {:>5} {:>5}  {}{}",
                s.id,
                utc(s.start),
                format!("{} → {}", s.client, s.server),
                s.path,
                s.count(Dir::Up),
                s.count(Dir::Down),
                close_codes(s),
                if s.problems.is_empty() { "" } else { "  (damaged)" }
            ))
        };
        if !ok {
            return ExitCode::from(MATCHED); // stdout closed (a pager quit): nothing more to say
        }
        for (i, m) in s.messages.iter().enumerate().filter(|_| listing == Listing::Messages) {
            let line = if format == Format::Json {
                message_json(s, i + 1, m).to_string()
            } else if m.kind == wstap_replay::Kind::Gap {
                let when = m.time.since(s.start).as_secs_f64();
                format!("     #{:<5} +{when:.6}s  {}  gap    {:>8} B  not captured", i + 1, m.dir.arrow(), m.lost)
            } else {
                format!(
                    "     #{:<5} +{:.6}s  {}  {:<6} {:>8} B  {}{}",
                    i + 1,
                    m.time.since(s.start).as_secs_f64(),
                    m.dir.arrow(),
                    m.kind.name(),
                    m.data.len(),
                    preview(m.kind, &m.data, 60),
                    if m.incomplete { "  (incomplete)" } else { "" }
                )
            };
            if !print(line) {
                return ExitCode::from(MATCHED);
            }
        }
    }
    report_problems(&rec);
    ExitCode::from(if rec.problems.is_empty() { MATCHED } else { MISMATCH })
}

fn report_problems(rec: &Recording) {
    for p in &rec.problems {
        eprintln!("wstap: warning: {p}");
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("wstap: {e}");
    ExitCode::from(ERROR)
}

/// Loads the files and picks the session to play: the one asked for, or the only one.
fn choose(files: &[PathBuf], id: Option<SessionId>) -> Result<Session, String> {
    let rec = wstap_replay::open_all(files).map_err(|e| e.to_string())?;
    report_problems(&rec);
    let s = match id {
        Some(id) => rec
            .session(id)
            .ok_or_else(|| format!("no session {id}: the capture has {} (see `wstap sessions`)", rec.sessions.len()))?,
        None if rec.sessions.len() == 1 => &rec.sessions[0],
        None if rec.sessions.is_empty() => return Err("the capture holds no WebSocket session".into()),
        None => {
            return Err(format!(
                "the capture holds {} sessions: choose one with --session (see `wstap sessions`)",
                rec.sessions.len()
            ))
        }
    };
    if let Some(m) = s.messages.iter().position(|m| m.kind == wstap_replay::Kind::Gap) {
        let lost = s.messages[m].lost;
        return Err(format!(
            "session {}: the capture lost {lost} bytes at #{} (a gap), so it cannot be played",
            s.id,
            m + 1
        ));
    }
    if let Some(m) = s.messages.iter().position(|m| m.incomplete) {
        return Err(format!(
            "session {}: message #{} is incomplete in the capture, so it cannot be played",
            s.id,
            m + 1
        ));
    }
    Ok(s.clone())
}

fn print_step(step: &Step) {
    println!("  {step}");
}

fn finish(result: Result<Report, player::PlayError>) -> ExitCode {
    match result {
        Ok(report) => {
            for step in report.steps.iter().filter(|s| s.is_failure()) {
                println!("  {step}");
            }
            println!("{}", report.summary());
            ExitCode::from(if report.matched() { MATCHED } else { MISMATCH })
        }
        Err(e) => fail(format!("{e:#}")),
    }
}

/// How a `wss://` target is trusted: by `--ca-file` or the system's roots, unless its
/// check is skipped (`--insecure`).
pub struct Trust {
    pub ca_file: Option<PathBuf>,
    pub check: ServerCheck,
}

/// `wstap replay`.
pub fn replay(files: &[PathBuf], id: Option<SessionId>, target: &str, trust: Trust, mut opts: Options) -> ExitCode {
    if let Some(rest) = target.strip_prefix("wss://") {
        let host = rest.split(['/', ':']).next().unwrap_or_default();
        let host = match rest.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host,
        };
        match wstap::config::tls::client(host, trust.ca_file, trust.check) {
            Ok(tls) => opts.client_tls = Some(tls.config),
            Err(e) => return fail(e),
        }
        if trust.check == ServerCheck::Skipped {
            eprintln!("wstap: warning: --insecure: the server's certificate is not verified");
        }
    } else if trust.ca_file.is_some() || trust.check == ServerCheck::Skipped {
        return fail("--ca-file and --insecure are for a wss:// target");
    }
    let session = match choose(files, id) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    println!(
        "replaying session {} ({} {}, {} client and {} server messages) against {target}",
        session.id,
        session.method,
        session.path,
        session.count(Dir::Up),
        session.count(Dir::Down)
    );
    match wstap::runtime(1) {
        Ok(rt) => finish(rt.block_on(player::replay(&session, target, &opts, print_step))),
        Err(e) => fail(e),
    }
}

/// Whom `wstap mock` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clients {
    /// One client after another, until stopped.
    Each,
    /// One client, then exit with its verdict (`--once`).
    One,
}

/// `wstap mock`: serves the recorded server to `clients`; over TLS with `tls`
/// (certificate chain, key).
pub fn mock(
    files: &[PathBuf],
    id: Option<SessionId>,
    listen: &str,
    clients: Clients,
    tls: Option<(PathBuf, PathBuf)>,
    mut opts: Options,
) -> ExitCode {
    if let Some((cert, key)) = tls {
        match wstap::config::tls::server(cert, key) {
            Ok(tls) => opts.server_tls = Some(tls.config),
            Err(e) => return fail(e),
        }
    }
    let scheme = if opts.server_tls.is_some() { "wss" } else { "ws" };
    let session = match choose(files, id) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let rt = match wstap::runtime(1) {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    rt.block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => return fail(format!("--listen {listen}: {e}")),
        };
        let addr = listener.local_addr().map_or_else(|_| listen.to_string(), |a| a.to_string());
        println!("mocking session {} ({}) on {scheme}://{addr}{}", session.id, session.path, session.path);
        loop {
            let result = player::mock(&session, &listener, &opts, print_step).await;
            let code = finish(result);
            if clients == Clients::One {
                return code;
            }
        }
    })
}
