//! The `replay` and `mock` commands: playing a recorded side of sessions against a live
//! peer, with progress, summaries and a JUnit report.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use wstap::config::tls::ServerCheck;
use wstap_replay::{self as player, Dir, Options, Report, SessionId, Step};

use crate::junit;
use crate::pick::{chosen, fail, one, Pick, ERROR, MATCHED, MISMATCH};

fn print_step(step: &Step) {
    println!("  {step}");
}

/// One session's play-through, said: its failures and summary, or why it could not play.
fn said(result: &Result<Report, player::PlayError>, id: SessionId) {
    match result {
        Ok(report) => {
            for step in report.steps.iter().filter(|s| s.is_failure()) {
                println!("  {step}");
            }
            println!("{}", report.summary());
        }
        Err(e) => eprintln!("wstap: session {id}: {e:#}"),
    }
}

/// The exit code of play-throughs: an error if any could not play, else a mismatch if
/// any differed.
fn verdict<'a>(results: impl IntoIterator<Item = &'a Result<Report, player::PlayError>>) -> ExitCode {
    let mut code = MATCHED;
    for r in results {
        code = code.max(match r {
            Ok(report) if report.matched() => MATCHED,
            Ok(_) => MISMATCH,
            Err(_) => ERROR,
        });
    }
    ExitCode::from(code)
}

/// How a `wss://` target is trusted: by `--ca-file` or the system's roots, unless its
/// check is skipped (`--insecure`).
pub struct Trust {
    pub ca_file: Option<PathBuf>,
    pub check: ServerCheck,
}

/// `wstap replay`: each session the filters take, one after the other, against
/// `target`; with `junit`, a JUnit XML report of them all.
pub fn replay(pick: &Pick, target: &str, trust: Trust, mut opts: Options, junit: Option<&Path>) -> ExitCode {
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
    let sessions = match chosen(pick) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let rt = match wstap::runtime(1) {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    let mut played = Vec::new();
    for session in &sessions {
        println!(
            "replaying session {} ({} {}, {} client and {} server messages) against {target}",
            session.id,
            session.method,
            session.path,
            session.count(Dir::Up),
            session.count(Dir::Down)
        );
        let started = Instant::now();
        let result = rt.block_on(player::replay(session, target, &opts, print_step));
        said(&result, session.id);
        played.push(junit::Played { session, result, took: started.elapsed() });
    }
    if sessions.len() > 1 {
        let ok = played.iter().filter(|p| p.result.as_ref().is_ok_and(Report::matched)).count();
        println!("{} sessions: {ok} matched, {} did not", sessions.len(), sessions.len() - ok);
    }
    if let Some(path) = junit {
        if let Err(e) = std::fs::write(path, junit::report(&played, target)) {
            return fail(format!("--junit {}: {e}", path.display()));
        }
    }
    verdict(played.iter().map(|p| &p.result))
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
    pick: &Pick,
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
    let session = match one(pick) {
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
            said(&result, session.id);
            if clients == Clients::One {
                return verdict([&result]);
            }
        }
    })
}
