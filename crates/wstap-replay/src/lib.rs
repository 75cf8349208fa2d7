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
pub mod input;
mod player;
pub mod reassembly;
mod session;
mod stream;

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};

use wstap_wire::Timestamp;

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

/// Reads one capture file (`-`: standard input), compressed or not.
pub fn open(path: impl AsRef<Path>) -> Result<Recording, Error> {
    open_all(&[path])
}

/// Reads several capture files as one capture (a rotated set, say), in time order: see
/// [`stream`]. A connection that runs on from one file into the next is one session,
/// whatever each file repeated of it so that it opens on its own.
pub fn open_all<P: AsRef<Path>>(paths: &[P]) -> Result<Recording, Error> {
    Ok(stream(paths)?.into_recording())
}

/// Reads captures already in memory, each named for its messages, in time order.
pub fn read(files: &[(&Path, &[u8])]) -> Result<Recording, Error> {
    let inputs = files.iter().map(|&(path, bytes)| Input::Memory(path.to_path_buf(), bytes)).collect();
    Ok(Sessions::new(inputs)?.into_recording())
}

/// Streams captures (`-`: standard input; gzip, zstd and lz4 files undone) as sessions,
/// each handed out when its connection ends (the rest at the end of the capture).
/// Memory is the connections open at once, not the files. Files are read in the order
/// of their first packets (rotated files given out of order, say), the order given kept
/// for files that start together and when standard input is one of them; a note says
/// when that was not the order given. A file that cannot be opened, or is no capture,
/// fails here; damage further on is a problem of the [`Recording`] at the end.
pub fn stream<P: AsRef<Path>>(paths: &[P]) -> Result<Sessions<'static>, Error> {
    let inputs = paths.iter().map(|p| {
        let path = p.as_ref().to_path_buf();
        match path.as_os_str() == input::STDIN {
            true => match input::open(&path) {
                Ok(src) => Ok(Input::Once(path, src)),
                Err(source) => Err(Error::Io { path, source }),
            },
            false => Ok(Input::File(path)),
        }
    });
    Sessions::new(inputs.collect::<Result<_, Error>>()?)
}

/// Streams one capture from `src` (a pipe, a socket, a decoder of your own), named
/// `name` in problems; compressed captures are undone as for files.
pub fn stream_from<'a>(name: impl Into<PathBuf>, src: impl Read + Send + 'a) -> Result<Sessions<'a>, Error> {
    let name = name.into();
    match input::decompressed(std::io::BufReader::new(src)) {
        Ok(src) => Sessions::new(vec![Input::Once(name, src)]),
        Err(source) => Err(Error::Io { path: name, source }),
    }
}

/// A capture to read.
enum Input<'a> {
    /// A file, opened when its turn comes.
    File(PathBuf),
    /// Bytes in memory, and their name.
    Memory(PathBuf, &'a [u8]),
    /// Bytes read once, as they come (standard input, a pipe), decompressed.
    Once(PathBuf, Box<dyn Read + Send + 'a>),
}

/// A capture being read: its name and its packets.
struct Packets<'a> {
    path: PathBuf,
    reader: capfile::Reader<Box<dyn Read + Send + 'a>>,
}

impl<'a> Input<'a> {
    fn path(&self) -> &Path {
        match self {
            Input::File(p) | Input::Memory(p, _) | Input::Once(p, _) => p,
        }
    }

    /// Its packets, from the start: the capture format checked.
    fn packets(self) -> Result<Packets<'a>, Error> {
        let (path, src): (PathBuf, Box<dyn Read + Send + 'a>) = match self {
            Input::File(path) => match input::open(&path) {
                Ok(src) => (path, src),
                Err(source) => return Err(Error::Io { path, source }),
            },
            Input::Memory(path, bytes) => match input::decompressed(std::io::BufReader::new(bytes)) {
                Ok(src) => (path, src),
                Err(source) => return Err(Error::Io { path, source }),
            },
            Input::Once(path, src) => (path, src),
        };
        match capfile::Reader::new(src) {
            Ok(reader) => Ok(Packets { path, reader }),
            Err(source) => Err(Error::Format { path, source }),
        }
    }

    /// When its first packet was captured, read on a copy of its own: `None` for
    /// standard input (it can be read once only), and for a capture with no packet.
    fn first_time(&self) -> Result<Option<Timestamp>, Error> {
        let again = match self {
            Input::File(p) => Input::File(p.clone()),
            Input::Memory(p, b) => Input::Memory(p.clone(), b),
            Input::Once(..) => return Ok(None),
        };
        let mut packets = again.packets()?;
        Ok(packets.reader.next().and_then(Result::ok).map(|p| p.time))
    }
}

/// Sessions as the captures stream: an iterator that hands each session out when its
/// connection ends; [`Sessions::into_recording`] gives what was counted, noted and found
/// wrong on the way (and the sessions not taken).
pub struct Sessions<'a> {
    /// The captures still to read, in the order they are read.
    inputs: std::vec::IntoIter<Input<'a>>,
    current: Option<Packets<'a>>,
    tcp: reassembly::Reassembler,
    /// Sessions decoded and not yet handed out.
    ready: VecDeque<Session>,
    /// The totals, problems and notes so far (its `sessions` stay empty).
    rec: Recording,
    budget: InflateBudget,
    /// Sessions decoded so far.
    sessions: usize,
    done: bool,
}

impl<'a> Sessions<'a> {
    fn new(inputs: Vec<Input<'a>>) -> Result<Sessions<'a>, Error> {
        let mut rec = Recording::default();
        let inputs = if inputs.iter().any(|i| matches!(i, Input::Once(..))) {
            // Standard input is read once: its first packet cannot be looked at before
            // its turn, so the order given is kept.
            for i in &inputs {
                i.first_time()?;
            }
            inputs
        } else {
            in_time_order(inputs, &mut rec.notes)?
        };
        let mut inputs = inputs.into_iter();
        // The first capture is opened now, so that one read once is checked here too.
        let current = inputs.next().map(Input::packets).transpose()?;
        Ok(Sessions {
            inputs,
            current,
            tcp: reassembly::Reassembler::new(),
            ready: VecDeque::new(),
            rec,
            budget: InflateBudget::for_input(0),
            sessions: 0,
            done: false,
        })
    }

    /// Everything the captures hold: the sessions not taken yet (all of them, when none
    /// was), with the totals, problems and notes of the whole read.
    pub fn into_recording(mut self) -> Recording {
        let sessions: Vec<Session> = self.by_ref().collect();
        Recording { sessions, ..self.rec }
    }

    /// Reads on until a connection ends or the captures do.
    fn read_on(&mut self) {
        loop {
            let Some(packets) = &mut self.current else {
                match self.inputs.next().map(Input::packets) {
                    Some(Ok(p)) => self.current = Some(p),
                    Some(Err(e)) => self.rec.problems.push(format!("{e}; not read")),
                    None => return self.finish(),
                }
                continue;
            };
            match packets.reader.next() {
                Some(Ok(packet)) => {
                    self.rec.packets += 1;
                    self.budget.grant(packet.data.len());
                    match dissect::segment(packet.link, packet.data) {
                        Ok(s) if packet.comment.is_some_and(wstap_wire::pcapng::is_repeat) => {
                            self.tcp.push_repeat(packet.time, &s)
                        }
                        Ok(s) => self.tcp.push(packet.time, &s),
                        Err(_) => self.rec.skipped += 1,
                    }
                }
                Some(Err(e)) => {
                    self.rec.problems.push(format!("{}: {e}; nothing after it was read", packets.path.display()));
                    self.current = None;
                }
                None => self.current = None,
            }
            let ended: Vec<_> = self.tcp.take_ended().collect();
            if !ended.is_empty() {
                ended.iter().for_each(|c| self.decode(c));
                return;
            }
        }
    }

    /// The end of the captures: every connection still open ends.
    fn finish(&mut self) {
        self.done = true;
        for conn in std::mem::take(&mut self.tcp).finish() {
            self.decode(&conn);
        }
        if self.rec.tls_connections > 0 {
            self.rec.notes.push(format!(
                "{} TLS connection(s) in the capture are encrypted and were not read: Wireshark and \
                 tshark decrypt them with their keys (a key log file, or the decryption secrets a \
                 capture may carry)",
                self.rec.tls_connections
            ));
        }
    }

    fn decode(&mut self, conn: &reassembly::Reassembled) {
        match session::decode_within(conn, SessionId(self.sessions + 1), &mut self.budget) {
            Some(s) => {
                self.sessions += 1;
                self.rec.problems.extend(s.problems.iter().map(|p| format!("session {}: {p}", s.id)));
                self.rec.notes.extend(s.notes.iter().map(|n| format!("session {}: {n}", s.id)));
                self.ready.push_back(s);
            }
            None if tls(conn) => self.rec.tls_connections += 1,
            None => self.rec.other_connections += 1,
        }
    }
}

impl Iterator for Sessions<'_> {
    type Item = Session;

    fn next(&mut self) -> Option<Session> {
        loop {
            if let Some(s) = self.ready.pop_front() {
                return Some(s);
            }
            if self.done {
                return None;
            }
            self.read_on();
        }
    }
}

/// `inputs` in the order of their first packets, the order given kept between files
/// that start together; a note says when that was not the order given.
fn in_time_order<'a>(inputs: Vec<Input<'a>>, notes: &mut Vec<String>) -> Result<Vec<Input<'a>>, Error> {
    let mut ordered = Vec::with_capacity(inputs.len());
    for (given, i) in inputs.into_iter().enumerate() {
        ordered.push((i.first_time()?, given, i));
    }
    ordered.sort_by_key(|(t, given, _)| (*t, *given));
    if ordered.iter().enumerate().any(|(at, (_, given, _))| at != *given) {
        let names: Vec<String> = ordered.iter().map(|(_, _, i)| i.path().display().to_string()).collect();
        notes.push(format!("the files were not given in time order; read in it: {}", names.join(", ")));
    }
    Ok(ordered.into_iter().map(|(_, _, i)| i).collect())
}

/// Whether the opener's first bytes are a TLS handshake record (a ClientHello).
fn tls(conn: &reassembly::Reassembled) -> bool {
    let first = conn.deliveries.iter().find_map(|e| match (&e.what, e.from) {
        (reassembly::Readable::Data(d), Dir::Up) => Some(d),
        _ => None,
    });
    first.is_some_and(|d| d.len() >= 6 && d[0] == 0x16 && d[1] == 3 && d[5] == 1)
}
