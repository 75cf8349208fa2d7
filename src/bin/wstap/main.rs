//! The `wstap` command: parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wstap::config::tls::ServerCheck;

mod carve;
mod export;
mod extcap;
mod junit;
mod merge;
mod pick;
mod replay;
mod sessions;

use pick::Pick;

/// jemalloc, with its background thread: memory freed after a peak of sessions goes back
/// to the system within its decay time (10 s). glibc's malloc kept it in the heap (a soak
/// of 1,000 sessions left 30 MB resident against 7 MB before; docs/testing.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(version, about = "A reverse proxy that records every WebSocket session it carries")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// The TOML config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file and print the effective settings (exit 0 if valid, 1 if not).
    Check {
        /// The TOML config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// List the WebSocket sessions in capture files (pcap or pcapng, from any tool), those
    /// the filters take.
    Sessions {
        #[command(flatten)]
        pick: Pick,
        /// Also list each message: time, direction, kind, size, a preview.
        #[arg(long)]
        messages: bool,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Replay the recorded clients of the sessions the filters take (every one, by default)
    /// against a server and compare its answers with the recording (exit 0 all matched, 1
    /// a mismatch, 2 error).
    Replay {
        #[command(flatten)]
        pick: Pick,
        /// Also write a JUnit XML report here: a test suite per session, a test case per
        /// message compared.
        #[arg(long, value_name = "REPORT.xml")]
        junit: Option<PathBuf>,
        /// The server: ws:// or wss://HOST:PORT, optionally with a path that replaces the
        /// recorded one.
        #[arg(long)]
        target: String,
        /// wss://: CA certificates (PEM) to verify the server with, instead of the system's.
        #[arg(long, value_name = "PEM")]
        ca_file: Option<PathBuf>,
        /// wss://: do not verify the server's certificate at all.
        #[arg(long)]
        insecure: bool,
        #[command(flatten)]
        play: Play,
    },
    /// Wireshark's extcap protocol for the daemon's live stream (`make install-extcap`
    /// puts this program in Wireshark's extcap folder; docs/live.md).
    Extcap {
        /// The extcap flags Wireshark passes (--extcap-interfaces, --capture --fifo …).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Write the sessions the filters take as HAR (Chrome DevTools' WebSocket entries) or
    /// JSON lines (one message a line).
    Export {
        #[command(flatten)]
        pick: Pick,
        /// `har` or `jsonl`.
        #[arg(long, value_parser = ["har", "jsonl"])]
        format: String,
        /// Where to write (`-`: standard output).
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
        /// Redact with this config file's `[capture.redact]` rules instead of the defaults
        /// (credential headers, token-like query parameters).
        #[arg(long, value_name = "CONFIG")]
        redact: Option<PathBuf>,
    },
    /// Write the sessions the filters take as a small pcapng of their own, synthesized as
    /// the daemon writes (deflate sessions compressed again), redacted as captures are.
    Carve {
        #[command(flatten)]
        pick: Pick,
        /// The pcapng to write.
        #[arg(short, long, value_name = "OUT.pcapng")]
        output: PathBuf,
        /// Redact with this config file's `[capture.redact]` rules instead of the defaults.
        #[arg(long, value_name = "CONFIG")]
        redact: Option<PathBuf>,
    },
    /// Join wstap's rotated files into one pcapng in which every session is whole and
    /// decodes (what each file repeated of an earlier one left out).
    Merge {
        /// wstap's capture files (read in time order).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The pcapng to write.
        #[arg(short, long, value_name = "OUT.pcapng")]
        output: PathBuf,
    },
    /// Act as the recorded server (of the one session the filters take) for a client,
    /// reporting where it diverges.
    Mock {
        #[command(flatten)]
        pick: Pick,
        /// Where to listen, e.g. 127.0.0.1:9000 (port 0 picks one; the address is printed).
        #[arg(long)]
        listen: String,
        /// Serve one client, then exit with its verdict.
        #[arg(long)]
        once: bool,
        /// Serve wss://: the certificate chain (PEM); needs --tls-key.
        #[arg(long, value_name = "PEM", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// Serve wss://: the certificate's private key (PEM); needs --tls-cert.
        #[arg(long, value_name = "PEM", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        #[command(flatten)]
        play: Play,
    },
}

#[derive(clap::Args)]
struct Play {
    /// Pace messages by the recorded timing scaled by this factor, or `max` to send each as
    /// soon as the peer's earlier messages are in.
    #[arg(long, default_value = "1.0", value_parser = parse_speed)]
    speed: Speed,
    /// A regex over payload bytes that may differ (timestamps, ids); matches are erased from
    /// both sides before comparing. Repeatable.
    #[arg(long, value_name = "REGEX")]
    ignore: Vec<regex::bytes::Regex>,
    /// A path to values in JSON messages that may differ (timestamps, ids): a JSON pointer
    /// (/order/id) or a dotted path (order.id, items.*.ts), erased from both sides, JSON
    /// compared as JSON. Repeatable.
    #[arg(long, value_name = "PATH")]
    ignore_json: Vec<wstap_replay::jsonpath::JsonPath>,
    /// Compare the peer's messages with the recorded ones in any order.
    #[arg(long)]
    unordered: bool,
    /// How long to wait for each message from the peer.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    wait: std::time::Duration,
    /// WebSocket over HTTP/2 (RFC 8441): replay sends an extended CONNECT (HTTP/2 with
    /// prior knowledge on ws://, ALPN h2 on wss://); mock takes one.
    #[arg(long)]
    http2: bool,
}

#[derive(Clone, Copy)]
struct Speed(Option<f64>);

fn parse_speed(s: &str) -> Result<Speed, String> {
    if s == "max" {
        return Ok(Speed(None));
    }
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f.is_finite() => Ok(Speed(Some(f))),
        _ => Err(format!("{s:?} is neither a positive number nor `max`")),
    }
}

impl Play {
    fn options(self) -> wstap_replay::Options {
        wstap_replay::Options {
            speed: self.speed.0,
            ignore: self.ignore,
            ignore_json: self.ignore_json,
            unordered: self.unordered,
            wait: self.wait,
            client_tls: None,
            server_tls: None,
            http2: self.http2,
        }
    }
}

fn main() -> ExitCode {
    use replay as cli;
    // Wireshark runs the program in its extcap folder with extcap flags, no subcommand.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if extcap::called_by_wireshark(&args) {
        return extcap::run(&args);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config } => check(&config),
        Command::Sessions { pick, messages, json } => {
            let listing = if messages { sessions::Listing::Messages } else { sessions::Listing::Sessions };
            let format = if json { sessions::Format::Json } else { sessions::Format::Table };
            return sessions::sessions(&pick, listing, format);
        }
        Command::Merge { files, output } => return merge::merge(&files, &output),
        Command::Carve { pick, output, redact } => return carve::carve(&pick, &output, redact.as_deref()),
        Command::Export { pick, format, output, redact } => {
            return export::export(&pick, &format, &output, redact.as_deref())
        }
        Command::Extcap { args } => return extcap::run(&args),
        Command::Replay { pick, junit, target, ca_file, insecure, play } => {
            let check = if insecure { ServerCheck::Skipped } else { ServerCheck::Verified };
            let tls = cli::Trust { ca_file, check };
            return cli::replay(&pick, &target, tls, play.options(), junit.as_deref());
        }
        Command::Mock { pick, listen, once, tls_cert, tls_key, play } => {
            let clients = if once { cli::Clients::One } else { cli::Clients::Each };
            return cli::mock(&pick, &listen, clients, tls_cert.zip(tls_key), play.options());
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wstap: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `wstap check`: the effective settings on stdout; what is valid but unwise on stderr.
fn check(config: &std::path::Path) -> anyhow::Result<()> {
    let settings = wstap::Settings::load(config)?;
    println!("{settings}");
    if let Some(path) = &settings.capture.tls_keylog {
        if let Some(shared) = wstap::config::keylog::shared_directory(path) {
            eprintln!("wstap: warning: capture.tls_keylog {}: {shared}", path.display());
        }
    }
    Ok(())
}

fn run(config: &std::path::Path) -> anyhow::Result<()> {
    Ok(wstap::run(wstap::Settings::load(config)?)?)
}
