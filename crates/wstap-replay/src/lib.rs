//! wstap-replay: captures as test fixtures. Read any pcap or pcapng file — wstap's own,
//! or one made by tcpdump, dumpcap or Wireshark — rebuild the WebSocket sessions in it,
//! and replay a session's client against a server ([`replay()`]) or act as its server
//! ([`mock`]). It needs none of the wstap daemon: a project adds it to its
//! `[dev-dependencies]` alone (see `docs/replay.md`).
//!
//! # Layout
//!
//! The reading path, every stage pure:
//!
//! ```text
//! capfile (pcap/pcapng records) ─▶ dissect (link, IP, TCP) ─▶ reassembly (byte streams,
//!   gaps) ─▶ session (HTTP exchanges, Upgrade, frames, inflate) ─▶ Session { messages }
//! ```
//!
//! Loading a fixture in a Rust test:
//!
//! ```
//! use wstap_replay::{Dir, Kind};
//!
//! # let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/dumpcap-lo.pcapng");
//! let recording = wstap_replay::open(fixture)?;
//! assert!(recording.problems.is_empty(), "{:?}", recording.problems);
//! let session = &recording.sessions[0];
//! assert_eq!(session.request_header("x-fixture"), Some("wstap"));
//! for m in session.messages.iter().filter(|m| m.kind == Kind::Text) {
//!     let who = if m.dir == Dir::Up { "client" } else { "server" };
//!     println!("{who}: {}", String::from_utf8_lossy(&m.data));
//! }
//! # Ok::<(), wstap_replay::Error>(())
//! ```
//!
//! The stages, for a reader that wants one alone (a fuzz target, a tool of its own):
//!
//! - [`capfile`]: pcap and pcapng records from a byte slice, errors with file offsets.
//! - [`dissect`]: link layer → IP → TCP segment.
//! - [`reassembly`]: per-connection byte streams in the order their bytes became
//!   readable, with explicit gaps.
//! - [`decode_within`]: HTTP exchanges, the Upgrade, frames, inflating: a [`Session`]
//!   of [`Message`]s.
//! - [`replay()`] and [`mock`]: one side of a session against a live peer.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// The guide, `docs/replay.md`: its Rust examples run as this crate's doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/replay.md")]
pub struct Guide;

pub mod capfile;
pub mod dissect;
mod player;
pub mod reassembly;
mod session;
mod stream;

use std::path::{Path, PathBuf};

pub use capfile::FormatError;
pub use player::{mock, preview, replay, BadTarget, Content, Options, PlayError, Report, Step};
pub use session::{decode_within, InflateBudget, Kind, Message, Session, SessionId};
pub use wstap_wire::Dir;

/// Everything read from one or more capture files.
#[derive(Debug, Default)]
pub struct Recording {
    /// The WebSocket sessions, in the order their connections were first seen.
    pub sessions: Vec<Session>,
    /// What could not be read: damaged files (with the offset) and damaged sessions.
    /// The sessions above are still everything that could be.
    pub problems: Vec<String>,
    /// Packets read.
    pub packets: u64,
    /// Packets that were not TCP segments (or not understood).
    pub skipped: u64,
    /// TCP connections that carried no WebSocket session.
    pub other_connections: usize,
    /// TCP connections that carried TLS: not decrypted, so their sessions are not read
    /// (a note says so).
    pub tls_connections: usize,
    /// What is worth knowing and is no damage: TLS connections not read, sessions whose
    /// capture began after their connection opened.
    pub notes: Vec<String>,
}

impl Recording {
    /// The session with this id.
    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.sessions.iter().find(|s| s.id == id)
    }
}

/// A file that could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file is not a capture wstap can read.
    #[error("{}: {source}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// Where it stops making sense, and why.
        source: FormatError,
    },
}

/// Reads one capture file.
pub fn open(path: impl AsRef<Path>) -> Result<Recording, Error> {
    open_all(&[path])
}

/// Reads several capture files as one capture, in the order given (a rotated set, say).
/// A connection that runs on from one file into the next is one session; in wstap's own
/// files each file instead begins its part of a session with the repeated Upgrade (so
/// that it opens on its own), and each part is a session of its own (but for parts with
/// no bytes between them, whose repeated handshakes are the same).
pub fn open_all<P: AsRef<Path>>(paths: &[P]) -> Result<Recording, Error> {
    let files = paths
        .iter()
        .map(|p| {
            std::fs::read(p)
                .map(|b| (p.as_ref().to_path_buf(), b))
                .map_err(|source| Error::Io { path: p.as_ref().into(), source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let borrowed: Vec<_> = files.iter().map(|(p, b)| (p.as_path(), b.as_slice())).collect();
    read(&borrowed)
}

/// Reads captures already in memory, each named for its messages.
pub fn read(files: &[(&Path, &[u8])]) -> Result<Recording, Error> {
    let mut rec = Recording::default();
    let mut tcp = reassembly::Reassembler::new();
    for &(path, bytes) in in_time_order(files, &mut rec.notes) {
        let reader =
            capfile::Reader::new(bytes).map_err(|source| Error::Format { path: path.to_path_buf(), source })?;
        for packet in reader {
            let packet = match packet {
                Ok(p) => p,
                Err(e) => {
                    rec.problems.push(format!("{}: {e}; nothing after it was read", path.display()));
                    break;
                }
            };
            rec.packets += 1;
            match dissect::segment(packet.link, packet.data) {
                Ok(s) => tcp.push(packet.time, &s),
                Err(_) => rec.skipped += 1,
            }
        }
    }
    let mut budget = session::InflateBudget::for_input(files.iter().map(|(_, b)| b.len()).sum());
    for conn in tcp.finish() {
        match session::decode_within(&conn, SessionId(rec.sessions.len() + 1), &mut budget) {
            Some(s) => {
                rec.problems.extend(s.problems.iter().map(|p| format!("session {}: {p}", s.id)));
                rec.notes.extend(s.notes.iter().map(|n| format!("session {}: {n}", s.id)));
                rec.sessions.push(s);
            }
            None if tls(&conn) => rec.tls_connections += 1,
            None => rec.other_connections += 1,
        }
    }
    if rec.tls_connections > 0 {
        rec.notes.push(format!(
            "{} TLS connection(s) in the capture are encrypted and were not read: Wireshark and \
             tshark decrypt them with their keys (a key log file, or the decryption secrets a \
             capture may carry)",
            rec.tls_connections
        ));
    }
    Ok(rec)
}

/// A capture in memory, and its name.
type File<'a> = (&'a Path, &'a [u8]);

/// `files` in the order of their first packets (rotated files given out of order, say),
/// the order given kept between files that start together; a note says when that was not
/// the order given.
fn in_time_order<'f, 'a>(files: &'f [File<'a>], notes: &mut Vec<String>) -> Vec<&'f File<'a>> {
    let first = |b: &[u8]| capfile::Reader::new(b).ok()?.next()?.ok().map(|p| p.time);
    let mut ordered: Vec<(Option<wstap_wire::Timestamp>, &File)> = files.iter().map(|f| (first(f.1), f)).collect();
    ordered.sort_by_key(|(t, _)| *t);
    let moved = ordered.iter().zip(files).any(|((_, f), given)| f.0 != given.0);
    if moved {
        let names: Vec<String> = ordered.iter().map(|(_, f)| f.0.display().to_string()).collect();
        notes.push(format!("the files were not given in time order; read in it: {}", names.join(", ")));
    }
    ordered.into_iter().map(|(_, f)| f).collect()
}

/// Whether the opener's first bytes are a TLS handshake record (a ClientHello).
fn tls(conn: &reassembly::Reassembled) -> bool {
    let first = conn.deliveries.iter().find_map(|e| match (&e.what, e.from) {
        (reassembly::Readable::Data(d), Dir::Up) => Some(d),
        _ => None,
    });
    first.is_some_and(|d| d.len() >= 6 && d[0] == 0x16 && d[1] == 3 && d[5] == 1)
}
