//! wstap-replay: captures as test fixtures. Read any pcap or pcapng file — wstap's own,
//! or one made by tcpdump, dumpcap or Wireshark — rebuild the WebSocket sessions in it,
//! and replay a session's client against a server ([`replay()`]) or act as its server
//! ([`mock`]). It needs none of the wstap daemon: a project adds it to its
//! `[dev-dependencies]` alone (see `docs/replay.md`).
//!
//! # Layout
//!
//! The reading path, every stage pure but the first:
//!
//! ```text
//! input (files, stdin, gzip/zstd/lz4) ─▶ capfile (pcap/pcapng records) ─▶ dissect (link,
//!   tunnels, IP, TCP) ─▶ reassembly (byte streams, gaps) ─▶ conn (handshake found, frames
//!   decoded as they arrive) ─▶ session (HTTP exchanges, Upgrade, frames, inflate)
//!   ─▶ Events { Opened, Message, Closed } ─▶ Sessions ─▶ Recording { sessions }
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
//! - [`input`]: files, standard input, and compressed captures, as bytes.
//! - [`capfile`]: pcap and pcapng records from any reader, errors with file offsets.
//! - [`dissect`]: link layer → IP → TCP segment.
//! - [`reassembly`]: per-connection byte streams in the order their bytes became
//!   readable, with explicit gaps.
//! - [`decode_within`]: HTTP exchanges, the Upgrade, frames, inflating: a [`Session`]
//!   of [`Message`]s, from one connection in memory.
//! - [`stream`] and [`stream_from`]: any number of captures of any size as [`Sessions`],
//!   each handed out when its connection ends, or as [`Events`], each message handed
//!   out when complete and none kept.
//! - [`replay()`] and [`mock`]: one side of a session against a live peer.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// The guide, `docs/replay.md`: its Rust examples run as this crate's doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/replay.md")]
pub struct Guide;

/// The fixture walk-through, `docs/fixtures.md`: its Rust example compiles as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/fixtures.md")]
pub struct FixtureGuide;

pub mod capfile;
mod conn;
pub mod dissect;
mod filter;
pub mod input;
pub mod jsonpath;
pub mod over_h2;
mod player;
pub mod reassembly;
mod session;
mod stream;

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};

use wstap_wire::Timestamp;

pub use capfile::FormatError;
pub use conn::decode_within;
pub use filter::{Endpoint, Filter, FilterTally};
pub use player::{mock, preview, replay, BadTarget, Content, Options, PlayError, Report, Step};
pub use session::{InflateBudget, Kind, Message, Session, SessionId, Tally};
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

/// Opens a capture's bytes from their start, each time it is called: a capture that is
/// not a file (an object in a store, say), opened when its turn comes.
pub type Opener = Box<dyn Fn() -> std::io::Result<Box<dyn Read + Send>> + Send + Sync>;

/// Streams captures as [`stream`] does files, each named for problems and opened by its
/// [`Opener`] (compression undone as for files).
pub fn stream_opened(inputs: Vec<(PathBuf, Opener)>) -> Result<Sessions<'static>, Error> {
    Sessions::new(inputs.into_iter().map(|(path, open)| Input::Opened(path, std::sync::Arc::new(open))).collect())
}

/// A capture to read.
enum Input<'a> {
    /// A file, opened when its turn comes.
    File(PathBuf),
    /// Bytes in memory, and their name.
    Memory(PathBuf, &'a [u8]),
    /// Bytes read once, as they come (standard input, a pipe), decompressed.
    Once(PathBuf, Box<dyn Read + Send + 'a>),
    /// Bytes its opener gives, from the start each time.
    Opened(PathBuf, std::sync::Arc<Opener>),
}

/// A capture being read: its name and its packets.
struct Packets<'a> {
    path: PathBuf,
    reader: capfile::Reader<Box<dyn Read + Send + 'a>>,
}

impl<'a> Input<'a> {
    fn path(&self) -> &Path {
        match self {
            Input::File(p) | Input::Memory(p, _) | Input::Once(p, _) | Input::Opened(p, _) => p,
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
            Input::Opened(path, open) => {
                match open().and_then(|src| input::decompressed(std::io::BufReader::with_capacity(64 << 10, src))) {
                    Ok(src) => (path, src),
                    Err(source) => return Err(Error::Io { path, source }),
                }
            }
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
            Input::Opened(p, open) => Input::Opened(p.clone(), open.clone()),
            Input::Once(..) => return Ok(None),
        };
        let mut packets = again.packets()?;
        Ok(packets.reader.next().and_then(Result::ok).map(|p| p.time))
    }
}

/// What a capture shows as it streams ([`Events`]).
#[derive(Debug, Clone)]
pub enum Event {
    /// A session was found (its handshake, or frames that say it is one): everything
    /// but its messages, which follow.
    Opened(Session),
    /// A message of a session, complete.
    Message(SessionId, Message),
    /// A session's connection ended: the session with its problems and notes complete,
    /// and no messages (they were handed out before).
    Closed(Session),
}

/// The captures as they stream, event by event: each message is handed out when it is
/// complete and nothing of it is kept, so memory is what is still to be read of the
/// connections open (a frame or fragmented message in progress, bounded by the reader's
/// largest message; a connection's bytes until its handshake is found), whatever a
/// session carries. [`Events::into_recording`] reads on to the end and gives what was
/// counted, noted and found wrong.
pub struct Events<'a> {
    /// The captures still to read, in the order they are read.
    inputs: std::vec::IntoIter<Input<'a>>,
    current: Option<Packets<'a>>,
    tcp: reassembly::Reassembler,
    /// The connections being read, by their number.
    conns: HashMap<u64, conn::Conn>,
    /// Events not yet handed out.
    ready: VecDeque<Event>,
    /// The totals, problems and notes so far (its `sessions` stay empty).
    rec: Recording,
    budget: InflateBudget,
    /// Sessions found so far.
    sessions: usize,
    done: bool,
}

impl<'a> Events<'a> {
    fn new(inputs: Vec<Input<'a>>) -> Result<Events<'a>, Error> {
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
        Ok(Events {
            inputs,
            current,
            tcp: reassembly::Reassembler::new(),
            conns: HashMap::new(),
            ready: VecDeque::new(),
            rec,
            budget: InflateBudget::for_input(0),
            sessions: 0,
            done: false,
        })
    }

    /// Reads to the end: the totals, problems and notes of the whole read (no sessions:
    /// they were handed out, or are dropped now).
    pub fn into_recording(mut self) -> Recording {
        self.by_ref().for_each(drop);
        self.rec
    }

    /// Reads on until something happens or the captures end.
    fn read_on(&mut self) {
        while self.ready.is_empty() {
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
                        Ok(s) if repeated(&packet) => self.tcp.push_repeat(packet.time, &s),
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
            for news in self.tcp.take_news() {
                self.news(news);
            }
        }
    }

    /// The end of the captures: every connection still open ends.
    fn finish(&mut self) {
        self.done = true;
        for news in std::mem::take(&mut self.tcp).finish_news() {
            self.news(news);
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

    /// What a connection made readable: to its reader, and what that finds to the queue.
    fn news(&mut self, news: reassembly::News) {
        let budget = &mut self.budget;
        let conn = self.conns.entry(news.conn).or_insert_with(|| conn::Conn::new(&news.facts));
        let (fed, closed) = match news.ended {
            false => (conn.feed(news.facts, budget, &mut self.sessions), None),
            true => {
                let Some(conn) = self.conns.remove(&news.conn) else { return };
                let tls = conn.is_tls();
                let (fed, session) = conn.end(news.facts, budget, &mut self.sessions);
                match session {
                    Some(_) => {}
                    None if tls => self.rec.tls_connections += 1,
                    None => self.rec.other_connections += 1,
                }
                (fed, session)
            }
        };
        if let Some(s) = fed.opened {
            self.ready.push_back(Event::Opened(s));
        }
        if let Some(id) = fed.id {
            self.ready.extend(fed.messages.into_iter().map(|m| Event::Message(id, m)));
        }
        if let Some(s) = closed {
            self.rec.problems.extend(s.problems.iter().map(|p| format!("session {}: {p}", s.id)));
            self.rec.notes.extend(s.notes.iter().map(|n| format!("session {}: {n}", s.id)));
            self.ready.push_back(Event::Closed(s));
        }
    }
}

impl Iterator for Events<'_> {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if self.ready.is_empty() && !self.done {
            self.read_on();
        }
        self.ready.pop_front()
    }
}

/// Sessions as the captures stream: each handed out whole when its connection ends
/// (its messages held until then). [`Sessions::into_recording`] gives what was counted,
/// noted and found wrong on the way, and the sessions not taken.
pub struct Sessions<'a> {
    events: Events<'a>,
    /// Sessions whose connections are open, with their messages so far.
    open: HashMap<SessionId, Session>,
}

impl<'a> Sessions<'a> {
    fn new(inputs: Vec<Input<'a>>) -> Result<Sessions<'a>, Error> {
        Ok(Sessions { events: Events::new(inputs)?, open: HashMap::new() })
    }

    /// The same captures event by event, messages handed out as they complete (and
    /// none kept).
    pub fn into_events(self) -> Events<'a> {
        self.events
    }

    /// Everything the captures hold: the sessions not taken yet (all of them, when none
    /// was), by id, with the totals, problems and notes of the whole read.
    pub fn into_recording(mut self) -> Recording {
        let mut sessions: Vec<Session> = self.by_ref().collect();
        sessions.sort_by_key(|s| s.id);
        Recording { sessions, ..self.events.into_recording() }
    }
}

impl Iterator for Sessions<'_> {
    type Item = Session;

    fn next(&mut self) -> Option<Session> {
        loop {
            match self.events.next()? {
                Event::Opened(s) => {
                    self.open.insert(s.id, s);
                }
                Event::Message(id, m) => {
                    if let Some(s) = self.open.get_mut(&id) {
                        s.messages.push(m);
                    }
                }
                Event::Closed(s) => {
                    let messages = self.open.remove(&s.id).map(|o| o.messages).unwrap_or_default();
                    return Some(Session { messages, ..s });
                }
            }
        }
    }
}

/// Whether the capture marks `packet` as repeated of a session's past
/// ([`wstap_wire::repeat`]).
fn repeated(packet: &capfile::RawPacket<'_>) -> bool {
    packet.comment.is_some_and(wstap_wire::repeat::is_repeat)
        || (packet.link == dissect::LinkType::Ethernet && wstap_wire::repeat::is_repeat_frame(packet.data))
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
