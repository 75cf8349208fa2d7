//! `capture.on_finish`: the command run for a finished file, its argv's `{path}`,
//! `{name}` and `{instance}` replaced (and in its environment as `WSTAP_PATH`,
//! `WSTAP_NAME`, `WSTAP_INSTANCE`), killed past its timeout. Never through a shell: a
//! file name is never read as shell syntax.

use std::path::Path;
use std::process::Stdio;

use tracing::{info, warn};

use crate::config::OnFinish;

/// How a run ended: the `result` of `wstap_on_finish_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ran {
    /// Exit status 0.
    Ok,
    /// Another exit status, or killed by a signal.
    Failed,
    /// Killed at its timeout.
    TimedOut,
    /// It could not be started.
    NotStarted,
    /// Never run: more files waited for the command than it keeps up with.
    Skipped,
}

impl Ran {
    /// Every result, in the order they are counted.
    pub const ALL: [Ran; 5] = [Ran::Ok, Ran::Failed, Ran::TimedOut, Ran::NotStarted, Ran::Skipped];

    /// Its label value.
    pub fn label(self) -> &'static str {
        match self {
            Ran::Ok => "ok",
            Ran::Failed => "failed",
            Ran::TimedOut => "timeout",
            Ran::NotStarted => "not_started",
            Ran::Skipped => "skipped",
        }
    }
}

/// `arg` with the placeholders replaced.
pub(super) fn expand(arg: &str, path: &str, name: &str, instance: &str) -> String {
    arg.replace("{path}", path).replace("{name}", name).replace("{instance}", instance)
}

/// Runs `hook` for the file at `path`; says how it went in the log.
pub(super) async fn run(hook: &OnFinish, path: &Path, instance: &str) -> Ran {
    let shown = path.display().to_string();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let argv: Vec<String> = hook.command.iter().map(|a| expand(a, &shown, &name, instance)).collect();
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env("WSTAP_PATH", path)
        .env("WSTAP_NAME", &name)
        .env("WSTAP_INSTANCE", instance)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            warn!(program = %argv[0], file = %shown, error = %e, "capture.on_finish: cannot start the command");
            return Ran::NotStarted;
        }
    };
    match tokio::time::timeout(hook.timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => {
            info!(program = %argv[0], file = %shown, "capture.on_finish: done");
            Ran::Ok
        }
        Ok(Ok(status)) => {
            warn!(program = %argv[0], file = %shown, %status, "capture.on_finish: the command failed");
            Ran::Failed
        }
        Ok(Err(e)) => {
            warn!(program = %argv[0], file = %shown, error = %e, "capture.on_finish: cannot wait for the command");
            Ran::Failed
        }
        Err(_) => {
            let _ = child.kill().await;
            let limit = humantime::format_duration(hook.timeout);
            warn!(program = %argv[0], file = %shown, %limit, "capture.on_finish: killed at its timeout");
            Ran::TimedOut
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn placeholders_are_replaced_in_every_argument() {
        assert_eq!(expand("--in={path}", "/c/a.pcapng", "a.pcapng", "eu"), "--in=/c/a.pcapng");
        assert_eq!(expand("s3://b/{instance}/{name}", "/c/a.pcapng", "a.pcapng", "eu"), "s3://b/eu/a.pcapng");
    }

    #[tokio::test]
    async fn a_command_is_run_with_the_file_and_killed_at_its_timeout() {
        let dir = std::env::temp_dir().join(format!("wstap-hook-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cap_00001_x.pcapng");
        std::fs::write(&file, b"x").unwrap();
        let copy = |to: &str| OnFinish {
            command: vec!["cp".into(), "{path}".into(), dir.join(to).display().to_string()],
            timeout: Duration::from_secs(10),
            concurrency: 1,
        };
        assert_eq!(run(&copy("{instance}-{name}"), &file, "eu").await, Ran::Ok);
        assert!(dir.join("eu-cap_00001_x.pcapng").exists());
        let env = OnFinish {
            command: vec!["sh".into(), "-c".into(), "test \"$WSTAP_NAME\" = cap_00001_x.pcapng".into()],
            ..copy("")
        };
        assert_eq!(run(&env, &file, "eu").await, Ran::Ok);
        let fails = OnFinish { command: vec!["false".into()], ..copy("") };
        assert_eq!(run(&fails, &file, "eu").await, Ran::Failed);
        let missing = OnFinish { command: vec![dir.join("no-such-program").display().to_string()], ..copy("") };
        assert_eq!(run(&missing, &file, "eu").await, Ran::NotStarted);
        let slow =
            OnFinish { command: vec!["sleep".into(), "30".into()], timeout: Duration::from_millis(200), ..copy("") };
        assert_eq!(run(&slow, &file, "eu").await, Ran::TimedOut);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
