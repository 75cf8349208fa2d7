//! How the process runs: its event loop and its log output.

/// The event loop for `workers` threads (0: one per CPU, or `TOKIO_WORKER_THREADS`).
/// With one, every task runs on the calling thread (tokio's current-thread scheduler):
/// no task is ever handed to another thread and woken there, which on a small or busy
/// machine is the fastest way to run; it is what nginx's `worker_processes 1` does.
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    use tokio::runtime::Builder;
    match workers {
        1 => Builder::new_current_thread().enable_all().build(),
        0 => Builder::new_multi_thread().enable_all().build(),
        n => Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    }
}

/// Logs to stderr via tracing: level from `RUST_LOG` if set, else `level` (the config's
/// `log.level`); no ANSI colour unless stderr is a terminal.
pub fn init_logging(level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
