//! What capture says in words: every packet comment (and statistics-block comment) it
//! writes is a [`Note`], and each note's text lives here, in its `Display`, and nowhere
//! else. Code and tests speak of the variants; the golden test in this file holds the
//! wording. A leaf: the proxy threads' side (a tap) and the writer's both use it.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use wstap_wire::deflate::Loss;
use wstap_wire::http::FramingError;
use wstap_wire::{Dir, Leg, PerDir, PerLeg, Timestamp};

use crate::capture::ids::ConnId;

/// Something a capture file says about a packet, in a comment on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A leg's heading, as the proxy said it ([`Heading`]: `wstap session 3: GET /chat
    /// …`), on its first packet.
    Heading(String),
    /// The server's port is written as another (`capture.display_port`), so that
    /// Wireshark decodes the session.
    DisplayPort {
        /// The real port.
        real: u16,
        /// The port written.
        written: u16,
    },
    /// The queue had no room: bytes of this stream were not captured.
    QueueLoss {
        /// Bytes not captured.
        bytes: u64,
    },
    /// The queue had no room: whole frames of this stream were not captured, and capture
    /// resumes at a frame boundary.
    FramesLost {
        /// Bytes not captured.
        bytes: u64,
        /// WebSocket frames among them, whole or in part.
        frames: u64,
    },
    /// The TLS records after a loss cannot be decrypted.
    TlsAfterLoss,
    /// The client's bytes right behind its Upgrade request, shown after the `101`.
    HeldBehindUpgrade {
        /// How many bytes were held.
        bytes: usize,
        /// When they really arrived.
        arrived: Timestamp,
    },
    /// The TLS peer ended its stream without `close_notify`.
    TlsCutWithoutCloseNotify,
    /// Something matched a redaction rule and was blanked out, keeping its length.
    Redacted(Redaction),
    /// A head cut by a capture gap: what was held of it is blanked out.
    HeadCutByGap,
    /// A head too long to hold: blanked out whole.
    HeadTooLong {
        /// The longest head held.
        limit: usize,
    },
    /// The stream's HTTP framing could not be followed: the rest of it is blanked out.
    Unframed(FramingError),
    /// Bytes were lost where no frame boundary was known: nothing more of the stream is
    /// written.
    Unreadable,
    /// A direction's compression is no longer followed: this file still decodes it, the
    /// next ones will not.
    DeflateUnfollowed {
        /// The most one message is inflated to follow it, in MiB.
        limit_mib: usize,
    },
    /// An HTTP body (its content and trailers; its chunks' framing kept) written with
    /// every byte blanked, since payload patterns could not search it.
    BodyBlanked {
        /// The body's length, framing included.
        len: u64,
        /// Why it could not be searched.
        why: Cut,
    },
    /// A frame written with part of its payload, or none.
    FrameCut {
        /// Payload bytes written.
        kept: u64,
        /// Payload bytes it had.
        len: u64,
        /// Why the rest was not written.
        why: Cut,
    },
    /// The leg closed: how, and how much each end sent.
    Closed {
        /// Which leg.
        leg: Leg,
        /// How it ended.
        reason: Ending,
        /// Bytes each way, captured or not.
        bytes: PerDir<u64>,
        /// Of them, bytes not captured.
        lost: PerDir<u64>,
    },
    /// The packets a new section repeats of a live leg, each commented with this.
    Repeat(Audience),
    /// What a new section repeats of a live leg, and why, on its first packet.
    Repeated {
        /// For whom the section is made.
        audience: Audience,
        /// The leg's heading (its first comment).
        heading: String,
        /// What is repeated.
        what: Repeats,
        /// Bytes a write-error episode could not write before this section.
        unwritten: u64,
    },
    /// The section starts inside a frame: a due rotation (or a subscriber's join) waited
    /// as long as it may for a frame boundary.
    StartsInsideFrame {
        /// For whom the section is made.
        audience: Audience,
        /// How long it waited.
        waited: Duration,
    },
    /// An interface's statistics block: bytes of its connections lost in this file.
    SectionLoss {
        /// Bytes not captured.
        bytes: u64,
        /// WebSocket frames among them, where they could be told.
        frames: u64,
    },
}

/// What was redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redaction {
    /// A header's value (the name, lower-case).
    Header(String),
    /// A query parameter's value (the name, lower-case).
    Query(String),
    /// Matches of a payload pattern (its place in `capture.redact.payload`).
    Payload {
        /// The pattern's index.
        pattern: usize,
        /// How many matches.
        matches: usize,
    },
    /// A head without its start line: which line is what is unknown, so all of it.
    WholeHead,
    /// The userinfo of a URL (`scheme://user:pass@host`).
    Userinfo,
    /// A bearer token carried as a WebSocket subprotocol (`Sec-WebSocket-Protocol`).
    ProtocolToken,
}

/// Why a frame is written with less of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// `max_message_bytes`.
    MaxMessage,
    /// `max_session_bytes`.
    MaxSession,
    /// A compressed message whose deflate window is unknown.
    Undecodable(Loss),
    /// A compressed message while payload patterns are set: compressed payloads are not
    /// searched.
    CompressedUnsearched,
    /// A message that began before a capture gap: it cannot be searched whole.
    BeganBeforeGap,
    /// A message longer than is held to search it.
    TooLargeToSearch {
        /// The longest held, in MiB.
        limit_mib: usize,
    },
}

/// For whom a section repeats the live legs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// A new capture file.
    File,
    /// A live-stream subscriber that has just joined.
    Subscriber,
}

/// What a new section repeats of a live leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeats {
    /// Its synthetic handshake alone (a connection without a session).
    Handshake,
    /// The handshake and the original Upgrade exchange (and, `deflate`, a synthetic
    /// message restoring the permessage-deflate context).
    Upgrade {
        /// The deflate context is restored.
        deflate: bool,
    },
    /// The handshake, then every TLS record since the connection's first, with its keys.
    TlsRecords,
    /// The handshake alone: the TLS records could not be kept, for this reason.
    TlsNotKept(Forgotten),
}

/// Why an encrypted leg's records are no longer kept for new files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgotten {
    /// More than one leg may keep crossed.
    LegBound {
        /// The bound, in KiB.
        kib: usize,
    },
    /// What all legs may keep together was spent.
    CaptureBound {
        /// The bound, in MiB.
        mib: usize,
    },
    /// The capture lost some of them.
    Lost,
}

/// How a leg's connection ended: the start of the comment on its last packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// It closed, and nothing more is known (a connection that carried no session).
    Closed,
    /// The relay of the WebSocket session it carried ended.
    Session {
        /// The client connection of the session.
        conn: ConnId,
        /// How the relay ended.
        end: SessionEnd,
    },
    /// In the words of the program that recorded the connection (a library user's).
    Said(String),
    /// Its capture stopped while the connection went on.
    Stopped(Stop),
}

/// Why a connection's capture stopped while the connection went on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Its next request's route does not record it (`capture = "off"`, not this leg, or
    /// not sampled): nothing of that request, or of what follows, is written until a
    /// request of a route that records starts a new capture.
    RouteNotRecorded,
    /// The client's HTTP could no longer be followed, for this reason: what follows could
    /// hide a request of any route.
    Unfollowed(FramingError),
    /// More client bytes waited for their route than are held.
    TooMuchUndecided {
        /// The bound, in KiB.
        kib: usize,
    },
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::RouteNotRecorded => f.write_str("the next request's route is not recorded"),
            Stop::Unfollowed(why) => write!(f, "the client's HTTP could not be followed ({why})"),
            Stop::TooMuchUndecided { kib } => write!(f, "more than {kib} KiB waited for a route"),
        }
    }
}

/// How a WebSocket session's relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// Both sides closed their write direction (each FIN was passed on).
    BothClosed,
    /// No byte moved either way for this long.
    Idle(Duration),
    /// The daemon's shutdown grace period ran out.
    Shutdown,
    /// A read or a write failed on a leg.
    Aborted {
        /// The leg whose socket failed.
        leg: Leg,
        /// The error, as the socket gave it.
        error: String,
    },
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Closed => f.write_str("connection closed"),
            Ending::Session { conn, end } => write!(f, "WebSocket session {conn} {end}"),
            Ending::Said(words) => f.write_str(words),
            Ending::Stopped(why) => write!(f, "capture stops here, the connection goes on: {why}"),
        }
    }
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionEnd::BothClosed => f.write_str("closed by both sides"),
            SessionEnd::Idle(d) => write!(f, "closed after {} idle", humantime::format_duration(*d)),
            SessionEnd::Shutdown => f.write_str("closed at the end of the shutdown grace period"),
            SessionEnd::Aborted { leg, error } => write!(f, "aborted: {} error: {error}", leg.name()),
        }
    }
}

/// What a leg's capture is, in words: its first comment, and what a new section's
/// repeat of it says (the proxy writes it; the writer redacts it like any other text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heading {
    /// A WebSocket session, on either of its legs.
    Session {
        /// The client connection that carries it.
        conn: ConnId,
        /// The Upgrade request's first line, without its `HTTP/1.1`.
        request: String,
        /// The client's address.
        client: SocketAddr,
        /// The route's path prefix.
        route: String,
        /// The route's upstream.
        upstream: String,
        /// The legs over TLS.
        tls: PerLeg<Option<TlsLeg>>,
        /// What really carried the client leg, when it is written as an HTTP/1.1
        /// connection it was not (a WebSocket over HTTP/2).
        carried: Option<String>,
    },
    /// A client connection recorded whole (mode `"all"`).
    Connection {
        /// The connection.
        conn: ConnId,
        /// The client's address.
        client: SocketAddr,
        /// What really carried it, when it is written as an HTTP/1.1 connection it was
        /// not (a stream of an HTTP/2 connection).
        carried: Option<String>,
    },
    /// The upstream connection of a client connection recorded whole.
    UpstreamConnection {
        /// The client connection it serves.
        conn: ConnId,
        /// The route's upstream.
        upstream: String,
    },
}

/// A leg over TLS: what its handshake agreed (`TLS 1.3, TLS13_AES_128_GCM_SHA256, …`),
/// and what its capture holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsLeg {
    /// The version, suite, SNI and ALPN agreed.
    pub agreed: String,
    /// What the capture holds of it.
    pub held: TlsHeld,
}

/// What the capture of a TLS leg holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsHeld {
    /// Its TLS records, and the keys that decrypt them (`capture.tls = "encrypted"`).
    Records,
    /// Its plaintext.
    Decrypted,
}

impl fmt::Display for Heading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Heading::Session { conn, request, client, route, upstream, tls, carried } => {
                write!(f, "wstap session {conn}: {request} from {client} via route {route:?} to {upstream}")?;
                if let Some(carried) = carried {
                    write!(f, "; client leg {carried}")?;
                }
                for leg in Leg::BOTH {
                    if let Some(TlsLeg { agreed, held }) = &tls[leg] {
                        let held = match held {
                            TlsHeld::Records => "captured as TLS records; the keys that decrypt them are in this file",
                            TlsHeld::Decrypted => "captured decrypted",
                        };
                        write!(f, "; {} leg over {agreed} ({held})", leg.name())?;
                    }
                }
                Ok(())
            }
            Heading::Connection { conn, client, carried } => {
                write!(f, "wstap connection {conn} from {client}")?;
                match carried {
                    Some(carried) => write!(f, "; it {carried}"),
                    None => Ok(()),
                }
            }
            Heading::UpstreamConnection { conn, upstream } => {
                write!(f, "wstap upstream connection of connection {conn} to {upstream}")
            }
        }
    }
}

impl Audience {
    /// What the comment on each repeated packet says.
    fn origin(self) -> &'static str {
        match self {
            Audience::File => wstap_wire::repeat::REPEATED_IN_FILE,
            Audience::Subscriber => wstap_wire::repeat::REPEATED_IN_STREAM,
        }
    }

    fn whole(self) -> &'static str {
        match self {
            Audience::File => "so this file decodes on its own",
            Audience::Subscriber => "so the stream decodes from here",
        }
    }

    fn alone(self) -> &'static str {
        match self {
            Audience::File => "this file",
            Audience::Subscriber => "this stream",
        }
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::Heading(text) => f.write_str(text),
            Note::DisplayPort { real, written } => write!(
                f,
                "the server port {real} is written as {written} (capture.display_port), so that Wireshark decodes \
                 the session"
            ),
            Note::QueueLoss { bytes } => {
                write!(f, "capture gap: {bytes} bytes of this stream were not captured (capture queue full)")
            }
            Note::FramesLost { bytes, frames } => write!(
                f,
                "capture gap: {bytes} bytes ({frames} WebSocket frame{}) of this stream were not captured (capture \
                 queue full); capture resumes at a frame boundary",
                if *frames == 1 { "" } else { "s" }
            ),
            Note::TlsAfterLoss => {
                f.write_str("the TLS records after this gap cannot be decrypted: each depends on the records before it")
            }
            Note::HeldBehindUpgrade { bytes, arrived } => write!(
                f,
                "the client sent these {bytes} bytes right behind its Upgrade request, before the 101 (they arrived \
                 at {}); wstap shows them after the 101 so that Wireshark decodes them",
                humantime::format_rfc3339_nanos(arrived.to_system_time())
            ),
            Note::TlsCutWithoutCloseNotify => {
                f.write_str("the TLS peer closed without close_notify: its stream ended here (or was cut)")
            }
            Note::Redacted(what) => write!(f, "redacted {what}"),
            Note::HeadCutByGap => f.write_str("an HTTP head cut by a capture gap: redacted whole"),
            Note::HeadTooLong { limit } => write!(f, "an HTTP head of more than {limit} bytes: redacted whole"),
            Note::Unframed(why) => {
                write!(f, "wstap could not follow this stream's HTTP framing ({why}): the rest of it is redacted")
            }
            Note::Unreadable => {
                f.write_str("bytes lost where no frame boundary was known: the rest of this stream is not written")
            }
            Note::DeflateUnfollowed { limit_mib } => write!(
                f,
                "{}: a message inflated past {limit_mib} MiB, or the writer's inflating allowance was spent; this \
                 file decodes, the next ones will not decode its compressed messages",
                Loss::NotFollowed
            ),
            Note::BodyBlanked { len, why } => write!(f, "an HTTP body of {len} bytes written blanked ({why})"),
            Note::FrameCut { kept, len, why } => {
                write!(f, "a WebSocket frame written with {kept} of its {len} payload bytes ({why})")
            }
            Note::Closed { leg, reason, bytes, lost } => closed(f, *leg, reason, bytes, lost),
            Note::Repeat(audience) => f.write_str(audience.origin()),
            Note::Repeated { audience, heading, what, unwritten } => repeated(f, *audience, heading, what, *unwritten),
            Note::StartsInsideFrame { audience: Audience::File, waited } => {
                let waited = humantime::format_duration(*waited);
                write!(f, "this file starts inside a WebSocket frame: rotation waited {waited} for a frame boundary")
            }
            Note::StartsInsideFrame { audience: Audience::Subscriber, waited } => {
                let waited = humantime::format_duration(*waited);
                write!(f, "this stream starts inside a WebSocket frame: it waited {waited} for a frame boundary")
            }
            Note::SectionLoss { bytes, frames } => write!(
                f,
                "wstap: {bytes} bytes ({frames} WebSocket frames, where wstap could follow them) of this interface's \
                 connections were not captured in this file (capture queue full); dropped packets count the \
                 segments they would have made"
            ),
        }
    }
}

/// How a leg closed, and what each end sent.
fn closed(
    f: &mut fmt::Formatter<'_>,
    leg: Leg,
    reason: &Ending,
    bytes: &PerDir<u64>,
    lost: &PerDir<u64>,
) -> fmt::Result {
    let count = |dir: Dir| match lost[dir] {
        0 => format!("{} bytes", bytes[dir]),
        n => format!("{} bytes ({n} not captured)", bytes[dir]),
    };
    let name = leg.name();
    // What the remote end sent (wstap read it), and what wstap sent.
    let (remote, local) = (leg.inbound(), leg.inbound().reverse());
    write!(f, "{name} leg closed: {reason}; {} from {name}, {} from wstap", count(remote), count(local))
}

/// What a new section repeats of a leg, for whom, and why.
fn repeated(
    f: &mut fmt::Formatter<'_>,
    audience: Audience,
    heading: &str,
    what: &Repeats,
    unwritten: u64,
) -> fmt::Result {
    write!(f, "{}: {heading}", audience.origin())?;
    match what {
        Repeats::Handshake => {}
        Repeats::Upgrade { deflate } => {
            write!(f, " (synthetic handshake and the original Upgrade exchange, {})", audience.whole())?;
            if *deflate {
                f.write_str("; a synthetic message restores the permessage-deflate context")?;
            }
        }
        Repeats::TlsRecords => write!(
            f,
            " (synthetic handshake, then the TLS records since the connection's first, with its keys, {})",
            audience.whole()
        )?,
        Repeats::TlsNotKept(why) => write!(
            f,
            "; its TLS records cannot be decrypted from {} alone ({why}): open it together with the files \
             before it (wstap merge)",
            audience.alone()
        )?,
    }
    if unwritten > 0 {
        write!(f, "; capture was interrupted: {unwritten} bytes could not be written")?;
    }
    Ok(())
}

impl fmt::Display for Redaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Redaction::Header(name) => write!(f, "header {name}"),
            Redaction::Query(name) => write!(f, "query {name}"),
            Redaction::Payload { pattern, matches: 1 } => write!(f, "payload pattern {pattern}"),
            Redaction::Payload { pattern, matches } => write!(f, "payload pattern {pattern} ({matches} matches)"),
            Redaction::WholeHead => f.write_str("a head without its start line, whole"),
            Redaction::Userinfo => f.write_str("URL userinfo"),
            Redaction::ProtocolToken => f.write_str("a bearer token in sec-websocket-protocol"),
        }
    }
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cut::MaxMessage => f.write_str("max_message_bytes"),
            Cut::MaxSession => f.write_str("max_session_bytes"),
            Cut::Undecodable(loss) => write!(f, "not decodable ({loss})"),
            Cut::CompressedUnsearched => {
                f.write_str("compressed, and capture.redact.payload is set: wstap does not search compressed payloads")
            }
            Cut::BeganBeforeGap => f.write_str("its message began before a capture gap, so it cannot be searched"),
            Cut::TooLargeToSearch { limit_mib } => {
                write!(f, "too large to search for payload patterns (more than {limit_mib} MiB)")
            }
        }
    }
}

impl fmt::Display for Forgotten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Forgotten::LegBound { kib } => write!(f, "more than {kib} KiB of its records crossed"),
            Forgotten::CaptureBound { mib } => write!(f, "the capture's {mib} MiB for repeated records was spent"),
            Forgotten::Lost => f.write_str("the capture lost some of its records"),
        }
    }
}

/// The comment for notes on one packet: each note's text, in order, joined by `; `.
pub fn comment(notes: &[Note]) -> Option<String> {
    let (first, rest) = notes.split_first()?;
    let mut text = first.to_string();
    for note in rest {
        text.push_str("; ");
        text.push_str(&note.to_string());
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each note, and its text: the wording capture files carry, checked here and
    /// nowhere else. `WSTAP_BLESS=1` rewrites the golden file after a deliberate change.
    #[test]
    fn golden_every_note_reads_as_the_golden_file_says() {
        let t = Timestamp::from_nanos(1_764_000_000_123_456_789);
        let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let tls = |held| Some(TlsLeg { agreed: "TLS 1.3, TLS13_AES_128_GCM_SHA256, SNI a.example".into(), held });
        let session = |tls| Heading::Session {
            conn: ConnId(3),
            request: "GET /chat".into(),
            client,
            route: "/chat".into(),
            upstream: "127.0.0.1:9000".into(),
            tls,
            carried: None,
        };
        let headings = [
            session(PerLeg::new(None, None)),
            session(PerLeg::new(tls(TlsHeld::Decrypted), tls(TlsHeld::Records))),
            Heading::Connection { conn: ConnId(4), client, carried: None },
            Heading::UpstreamConnection { conn: ConnId(4), upstream: "127.0.0.1:9000".into() },
        ];
        let notes = [
            Note::Heading("wstap session 3: GET /chat from 127.0.0.1:40000".into()),
            Note::DisplayPort { real: 6379, written: 80 },
            Note::QueueLoss { bytes: 500 },
            Note::FramesLost { bytes: 3000, frames: 1 },
            Note::FramesLost { bytes: 3000, frames: 2 },
            Note::TlsAfterLoss,
            Note::HeldBehindUpgrade { bytes: 11, arrived: t },
            Note::TlsCutWithoutCloseNotify,
            Note::Redacted(Redaction::Header("cookie".into())),
            Note::Redacted(Redaction::Query("token".into())),
            Note::Redacted(Redaction::Payload { pattern: 0, matches: 1 }),
            Note::Redacted(Redaction::Payload { pattern: 1, matches: 3 }),
            Note::Redacted(Redaction::WholeHead),
            Note::Redacted(Redaction::Userinfo),
            Note::Redacted(Redaction::ProtocolToken),
            Note::HeadCutByGap,
            Note::HeadTooLong { limit: 131_072 },
            Note::Unframed(FramingError::BadChunkSize),
            Note::Unreadable,
            Note::DeflateUnfollowed { limit_mib: 8 },
            Note::FrameCut { kept: 4, len: 20, why: Cut::MaxMessage },
            Note::FrameCut { kept: 0, len: 5, why: Cut::MaxSession },
            Note::FrameCut { kept: 0, len: 5, why: Cut::Undecodable(Loss::AtDrop) },
            Note::FrameCut { kept: 0, len: 5, why: Cut::Undecodable(Loss::NotFollowed) },
            Note::FrameCut { kept: 0, len: 5, why: Cut::Undecodable(Loss::NotDeflate) },
            Note::FrameCut { kept: 0, len: 5, why: Cut::CompressedUnsearched },
            Note::FrameCut { kept: 0, len: 5, why: Cut::BeganBeforeGap },
            Note::FrameCut { kept: 0, len: 5, why: Cut::TooLargeToSearch { limit_mib: 1 } },
            Note::BodyBlanked { len: 2_000_000, why: Cut::TooLargeToSearch { limit_mib: 1 } },
            Note::BodyBlanked { len: 300, why: Cut::CompressedUnsearched },
            Note::Closed {
                leg: Leg::Client,
                reason: Ending::Said("done".into()),
                bytes: PerDir::new(506, 10),
                lost: PerDir::new(500, 0),
            },
            Note::Closed {
                leg: Leg::Upstream,
                reason: Ending::Said("done".into()),
                bytes: PerDir::new(7, 9),
                lost: PerDir::new(0, 0),
            },
            Note::Closed {
                leg: Leg::Client,
                reason: Ending::Closed,
                bytes: PerDir::new(1, 2),
                lost: PerDir::new(0, 0),
            },
            Note::Closed {
                leg: Leg::Upstream,
                reason: Ending::Session { conn: ConnId(3), end: SessionEnd::BothClosed },
                bytes: PerDir::new(1, 2),
                lost: PerDir::new(0, 0),
            },
            Note::Closed {
                leg: Leg::Client,
                reason: Ending::Session { conn: ConnId(3), end: SessionEnd::Idle(Duration::from_secs(300)) },
                bytes: PerDir::new(1, 2),
                lost: PerDir::new(0, 0),
            },
            Note::Closed {
                leg: Leg::Client,
                reason: Ending::Session { conn: ConnId(3), end: SessionEnd::Shutdown },
                bytes: PerDir::new(1, 2),
                lost: PerDir::new(0, 0),
            },
            Note::Closed {
                leg: Leg::Client,
                reason: Ending::Session {
                    conn: ConnId(3),
                    end: SessionEnd::Aborted { leg: Leg::Upstream, error: "connection reset by peer".into() },
                },
                bytes: PerDir::new(1, 2),
                lost: PerDir::new(0, 0),
            },
            Note::Closed {
                leg: Leg::Client,
                reason: Ending::Stopped(Stop::RouteNotRecorded),
                bytes: PerDir::new(1, 2),
                lost: PerDir::new(0, 0),
            },
            Note::Closed {
                leg: Leg::Client,
                reason: Ending::Stopped(Stop::Unfollowed(FramingError::BytesLost)),
                bytes: PerDir::new(1, 2),
                lost: PerDir::new(0, 0),
            },
            Note::Closed {
                leg: Leg::Client,
                reason: Ending::Stopped(Stop::TooMuchUndecided { kib: 512 }),
                bytes: PerDir::new(1, 2),
                lost: PerDir::new(0, 0),
            },
            Note::Repeat(Audience::File),
            Note::Repeat(Audience::Subscriber),
            Note::Repeated {
                audience: Audience::File,
                heading: "wstap connection 1".into(),
                what: Repeats::Handshake,
                unwritten: 0,
            },
            Note::Repeated {
                audience: Audience::File,
                heading: "s".into(),
                what: Repeats::Upgrade { deflate: true },
                unwritten: 77,
            },
            Note::Repeated {
                audience: Audience::Subscriber,
                heading: "s".into(),
                what: Repeats::Upgrade { deflate: false },
                unwritten: 0,
            },
            Note::Repeated { audience: Audience::File, heading: "tls".into(), what: Repeats::TlsRecords, unwritten: 0 },
            Note::Repeated {
                audience: Audience::File,
                heading: "tls".into(),
                what: Repeats::TlsNotKept(Forgotten::LegBound { kib: 1024 }),
                unwritten: 0,
            },
            Note::Repeated {
                audience: Audience::Subscriber,
                heading: "tls".into(),
                what: Repeats::TlsNotKept(Forgotten::CaptureBound { mib: 64 }),
                unwritten: 0,
            },
            Note::Repeated {
                audience: Audience::File,
                heading: "tls".into(),
                what: Repeats::TlsNotKept(Forgotten::Lost),
                unwritten: 0,
            },
            Note::StartsInsideFrame { audience: Audience::File, waited: Duration::from_secs(5) },
            Note::StartsInsideFrame { audience: Audience::Subscriber, waited: Duration::from_millis(1500) },
            Note::SectionLoss { bytes: 3000, frames: 2 },
        ];
        let headings = headings.iter().map(|h| format!("{h}\n"));
        let text: String = headings.chain(notes.iter().map(|n| format!("{n}\n"))).collect();
        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/notes.txt");
        if std::env::var_os("WSTAP_BLESS").is_some() {
            std::fs::write(&golden, &text).unwrap();
        }
        let want = std::fs::read_to_string(&golden).expect("the golden file exists (WSTAP_BLESS=1 writes it)");
        assert!(text == want, "the notes' wording changed; if that is deliberate, bless it:\n{text}");
        assert_eq!(comment(&notes[..2]).unwrap(), format!("{}; {}", notes[0], notes[1]));
        assert_eq!(comment(&[]), None);
    }
}
