//! `wstap extcap`: Wireshark's extcap protocol, so that a running daemon's live stream
//! (`[live]`) shows in Wireshark's interface list. Wireshark runs the program in its
//! extcap folder (`make install-extcap` links this binary there) with `--extcap-interfaces`,
//! `--extcap-dlts`, `--extcap-config`, then `--capture --fifo PATH`, and stops it with
//! SIGTERM; the capture copies the stream into the fifo as it comes.
//!
//! The stream's address, `host:port` or `unix:/path` (the unix socket's): the interface
//! option Wireshark shows (`--address`), else `WSTAP_LIVE`, else `[live] listen` of the
//! config file (`WSTAP_CONFIG`, else `/etc/wstap/wstap.toml`), else `127.0.0.1:9412`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// The interface's name in Wireshark.
const INTERFACE: &str = "wstap";
const DEFAULT_ADDRESS: &str = "127.0.0.1:9412";

/// Runs the extcap protocol with `args` (everything after the program name, with or
/// without a leading `extcap`).
pub fn run(args: &[String]) -> ExitCode {
    let flag = |name: &str| args.iter().any(|a| a == name);
    let value = |name: &str| {
        let prefix = format!("{name}=");
        args.iter().enumerate().find_map(|(i, a)| match a.strip_prefix(&prefix) {
            Some(v) => Some(v.to_owned()),
            None if a == name => args.get(i + 1).cloned(),
            None => None,
        })
    };
    let mut out = std::io::stdout().lock();
    let interface = value("--extcap-interface");
    if flag("--extcap-interfaces") {
        let _ = writeln!(out, "extcap {{version={}}}", env!("CARGO_PKG_VERSION"));
        let _ = writeln!(
            out,
            "interface {{value={INTERFACE}}}{{display=wstap live capture (WebSocket sessions through wstap)}}"
        );
        return ExitCode::SUCCESS;
    }
    if interface.as_deref().is_some_and(|i| i != INTERFACE) {
        eprintln!("wstap extcap: no interface {:?} (there is {INTERFACE:?})", interface.unwrap_or_default());
        return ExitCode::FAILURE;
    }
    if flag("--extcap-dlts") {
        let _ = writeln!(out, "dlt {{number=101}}{{name=RAW}}{{display=Raw IP (pcapng from wstap)}}");
        return ExitCode::SUCCESS;
    }
    if flag("--extcap-config") {
        let _ = writeln!(
            out,
            "arg {{number=0}}{{call=--address}}{{display=Live stream address}}{{type=string}}{{default={}}}\
             {{tooltip=host:port or unix:/path of the daemon's [live] listen}}{{required=true}}",
            default_address()
        );
        return ExitCode::SUCCESS;
    }
    if flag("--capture") {
        let Some(fifo) = value("--fifo") else {
            eprintln!("wstap extcap: --capture needs --fifo PATH");
            return ExitCode::FAILURE;
        };
        let address = value("--address").unwrap_or_else(default_address);
        return capture(&address, &PathBuf::from(fifo));
    }
    eprintln!("wstap extcap: expected --extcap-interfaces, --extcap-dlts, --extcap-config or --capture");
    ExitCode::FAILURE
}

/// Whether the program was started by Wireshark as an extcap (its flags, no subcommand).
pub fn called_by_wireshark(args: &[String]) -> bool {
    args.first().is_some_and(|a| a.starts_with("--extcap") || a == "--capture")
}

/// Where the stream is when no `--address` is given.
fn default_address() -> String {
    if let Ok(a) = std::env::var("WSTAP_LIVE") {
        return a;
    }
    let config = std::env::var_os("WSTAP_CONFIG").map_or_else(|| PathBuf::from("/etc/wstap/wstap.toml"), PathBuf::from);
    wstap::Settings::load(&config)
        .ok()
        .and_then(|s| s.live)
        .map_or_else(|| DEFAULT_ADDRESS.to_owned(), |l| l.listen.to_string())
}

/// Copies the stream at `address` into `fifo` until either end closes (Wireshark stops
/// the capture with SIGTERM, which ends the process).
fn capture(address: &str, fifo: &PathBuf) -> ExitCode {
    let connected: std::io::Result<Box<dyn Read>> = match address.strip_prefix("unix:") {
        Some(path) => std::os::unix::net::UnixStream::connect(path).map(|s| Box::new(s) as Box<dyn Read>),
        None => std::net::TcpStream::connect(address).map(|s| Box::new(s) as Box<dyn Read>),
    };
    let mut stream = match connected {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "wstap extcap: cannot connect to the live stream at {address}: {e} (is [live] set in wstap's config?)"
            );
            return ExitCode::FAILURE;
        }
    };
    let mut out = match std::fs::OpenOptions::new().write(true).open(fifo) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("wstap extcap: cannot open {}: {e}", fifo.display());
            return ExitCode::FAILURE;
        }
    };
    match std::io::copy(&mut stream, &mut out) {
        Ok(0) => {
            eprintln!(
                "wstap extcap: {address} closed the stream at once (refused: this user not in live.users, not \
                 loopback or in live.allow, live.max_clients reached, or the sessions in progress more than \
                 live.buffer: see wstap's log)"
            );
            ExitCode::FAILURE
        }
        Ok(_) => ExitCode::SUCCESS,
        // Wireshark closed the fifo: the capture was stopped.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wstap extcap: the live stream at {address}: {e}");
            ExitCode::FAILURE
        }
    }
}
