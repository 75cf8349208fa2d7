//! Which sessions to take from a capture: by id, endpoints, path, host, time, content and
//! size, every criterion given holding. What a session's opening tells (all but its
//! content and size) is judged as soon as it opens, so that a stream of sessions can pass
//! the others by without keeping their messages. Pure.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use regex::bytes::Regex;

use crate::session::{Kind, Message, Session, SessionId};
use wstap_wire::Timestamp;

/// Which sessions to take: every criterion given must hold; none given takes them all.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// This session alone.
    pub session: Option<SessionId>,
    /// Its client: an address, and a port if given.
    pub client: Option<Endpoint>,
    /// Its server: an address, and a port if given.
    pub server: Option<Endpoint>,
    /// Its request path (the target, query included) starts with this.
    pub path: Option<String>,
    /// Its `Host` field names this host (any case; a port in the field is ignored).
    pub host: Option<String>,
    /// It was open at or after this time (its last message, or its start, is not before).
    pub since: Option<Timestamp>,
    /// It began before this time.
    pub until: Option<Timestamp>,
    /// A message's payload (as the application saw it: unmasked, inflated) matches this.
    pub grep: Option<Regex>,
    /// It has at least this many messages (both ways, gaps not counted).
    pub min_messages: usize,
}

/// An address, and optionally a port: `10.0.0.1`, `10.0.0.1:443`, `::1`, `[::1]:443`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The address.
    pub ip: IpAddr,
    /// The port, if it must match too.
    pub port: Option<u16>,
}

impl Endpoint {
    /// Whether `addr` is this endpoint (IPv4-mapped IPv6 addresses compare as IPv4).
    pub fn matches(&self, addr: SocketAddr) -> bool {
        let plain = |ip: IpAddr| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        plain(self.ip) == plain(addr.ip()) && self.port.is_none_or(|p| p == addr.port())
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Endpoint, String> {
        let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Endpoint { ip, port: None });
        }
        match s.parse::<SocketAddr>() {
            Ok(a) => Ok(Endpoint { ip: a.ip(), port: Some(a.port()) }),
            Err(_) => Err(format!("{s:?} is not ADDR or ADDR:PORT (an IPv6 address with a port: [ADDR]:PORT)")),
        }
    }
}

/// A `Host` field's name: its port and an IPv6 literal's brackets taken off.
fn host_name(h: &str) -> &str {
    let h = h.trim();
    if let Some(v6) = h.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match h.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() && !name.contains(':') => name,
        _ => h,
    }
}

impl Filter {
    /// Whether every criterion its opening can tell holds for `s` (all but `grep`,
    /// `min_messages` and `since`, which need its messages).
    pub fn admits_opening(&self, s: &Session) -> bool {
        let host =
            |want: &str| s.request_header("host").is_some_and(|h| host_name(h).eq_ignore_ascii_case(host_name(want)));
        self.session.is_none_or(|id| id == s.id)
            && self.client.is_none_or(|e| e.matches(s.client))
            && self.server.is_none_or(|e| e.matches(s.server))
            && self.path.as_ref().is_none_or(|p| s.path.starts_with(p.as_str()))
            && self.host.as_deref().is_none_or(host)
            && self.until.is_none_or(|t| s.start < t)
    }

    /// Whether every criterion holds for the whole session `s`, messages included.
    pub fn admits(&self, s: &Session) -> bool {
        let mut tally = self.tally();
        s.messages.iter().for_each(|m| tally.add(m));
        self.admits_opening(s) && tally.admits(s.start)
    }

    /// What the criteria on a session's messages count, message by message (for sessions
    /// read as a stream of events).
    pub fn tally(&self) -> FilterTally<'_> {
        FilterTally { filter: self, messages: 0, matched: self.grep.is_none(), last: None }
    }
}

/// What a session's messages so far say to a [`Filter`].
#[derive(Debug, Clone)]
pub struct FilterTally<'f> {
    filter: &'f Filter,
    messages: usize,
    matched: bool,
    last: Option<Timestamp>,
}

impl FilterTally<'_> {
    /// Counts `m`.
    pub fn add(&mut self, m: &Message) {
        if m.kind == Kind::Gap {
            return;
        }
        self.messages += 1;
        self.last = Some(self.last.map_or(m.time, |t| t.max(m.time)));
        if !self.matched {
            self.matched = self.filter.grep.as_ref().is_some_and(|re| re.is_match(&m.data));
        }
    }

    /// Whether the criteria on messages hold, for a session that began at `start`.
    pub fn admits(&self, start: Timestamp) -> bool {
        let last = self.last.unwrap_or(start).max(start);
        self.matched && self.messages >= self.filter.min_messages && self.filter.since.is_none_or(|t| last >= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: usize, client: &str, path: &str, host: &str, start: u64) -> Session {
        let mut s = Session::new(SessionId(id), client.parse().unwrap(), "10.0.0.9:443".parse().unwrap());
        s.path = path.into();
        s.request_headers = vec![("Host".into(), host.into())];
        s.start = Timestamp::from_nanos(start);
        s
    }

    fn text(t: &str, at: u64) -> Message {
        Message {
            dir: wstap_wire::Dir::Up,
            time: Timestamp::from_nanos(at),
            kind: Kind::Text,
            data: t.as_bytes().to_vec(),
            frames: 1,
            compressed: false,
            incomplete: false,
            lost: 0,
        }
    }

    #[test]
    fn every_criterion_given_must_hold() {
        let mut a = session(1, "10.0.0.1:5000", "/chat?room=1", "App.Example:8443", 100);
        a.messages = vec![text("hello", 150), text("{\"op\":\"buy\"}", 400)];
        let b = session(2, "[::ffff:10.0.0.2]:6000", "/feed", "other.example", 300);
        let take = |f: &Filter| [&a, &b].iter().filter(|s| f.admits(s)).map(|s| s.id.0).collect::<Vec<_>>();
        assert_eq!(take(&Filter::default()), [1, 2]);
        let ep = |s: &str| Some(s.parse::<Endpoint>().unwrap());
        assert_eq!(take(&Filter { client: ep("10.0.0.2"), ..Filter::default() }), [2], "v4-mapped is v4");
        assert_eq!(take(&Filter { client: ep("10.0.0.1:5001"), ..Filter::default() }), Vec::<usize>::new());
        assert_eq!(take(&Filter { server: ep("10.0.0.9:443"), ..Filter::default() }), [1, 2]);
        assert_eq!(take(&Filter { path: Some("/chat".into()), ..Filter::default() }), [1]);
        assert_eq!(take(&Filter { host: Some("app.example".into()), ..Filter::default() }), [1], "any case, no port");
        let at = |n| Some(Timestamp::from_nanos(n));
        assert_eq!(take(&Filter { since: at(350), ..Filter::default() }), [1], "open at 350: its last message at 400");
        assert_eq!(take(&Filter { until: at(300), ..Filter::default() }), [1], "began before 300");
        let grep = Some(Regex::new(r#""op":"buy""#).unwrap());
        assert_eq!(take(&Filter { grep, ..Filter::default() }), [1]);
        assert_eq!(take(&Filter { min_messages: 1, ..Filter::default() }), [1]);
        let both = Filter { path: Some("/chat".into()), session: Some(SessionId(2)), ..Filter::default() };
        assert_eq!(take(&both), Vec::<usize>::new(), "combined: all must hold");
        assert!("[::1]:443".parse::<Endpoint>().is_ok() && "::1".parse::<Endpoint>().is_ok());
        assert_eq!("[::1]".parse::<Endpoint>(), "::1".parse::<Endpoint>());
        for (field, want) in [("[::1]:8080", "[::1]:8080"), ("[::1]:8080", "::1"), ("a.example:80", "A.EXAMPLE")] {
            assert_eq!(host_name(field).to_ascii_lowercase(), host_name(want).to_ascii_lowercase(), "{field} {want}");
        }
        assert!("example.com".parse::<Endpoint>().unwrap_err().contains("ADDR:PORT"));
    }
}
