//! HTTP/1.1 as far as WebSocket capture needs it: heads parsed into a [`Head`]
//! (httparse), the end of a head found as bytes arrive ([`HeadEnd`]), and the one
//! message framer ([`Framer`]) that capture's rewriter and the replay reader both follow
//! a connection's exchanges with. Pure.

mod framer;
mod head_end;

pub use framer::{Advance, BodyKind, Framer, FramingError, Part};
pub use head_end::HeadEnd;

/// Why bytes are not an HTTP/1.1 head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad HTTP {what}: {source}")]
pub struct HeadError {
    /// Which head it was meant to be.
    pub what: HeadKind,
    /// What httparse found wrong.
    pub source: httparse::Error,
}

/// Which of the two HTTP heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// A request's head.
    Request,
    /// A response's head.
    Response,
}

impl std::fmt::Display for HeadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeadKind::Request => "request",
            HeadKind::Response => "response",
        })
    }
}

/// A parsed HTTP head: its length, the start line's parts and the fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head, its blank line included.
    pub len: usize,
    /// The request's method (empty in a response).
    pub method: String,
    /// The request's target (empty in a response).
    pub path: String,
    /// The response's status (0 in a request).
    pub status: u16,
    /// The fields, in order.
    pub headers: Vec<(String, String)>,
}

/// The first value of field `name` (case-insensitive) in `headers`.
pub fn field<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

impl Head {
    /// An empty head: a session seen without its handshake.
    pub fn none() -> Head {
        Head { len: 0, method: String::new(), path: String::new(), status: 0, headers: Vec::new() }
    }

    /// Field `name`'s first value.
    pub fn field(&self, name: &str) -> Option<&str> {
        field(&self.headers, name)
    }

    /// Whether a field `name` lists `token` (comma-separated, any case).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    /// A response that another head follows in the same exchange: `1xx`, but not the
    /// `101` that switches protocols.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// A request to switch to WebSocket (`Upgrade: websocket`).
    pub fn asks_websocket(&self) -> bool {
        self.has_token("upgrade", "websocket")
    }
}

fn fields(h: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    h.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect()
}

/// The request head at the start of `b`; `None` if it is not complete yet.
pub fn request(b: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut h = [httparse::EMPTY_HEADER; 100];
    let mut r = httparse::Request::new(&mut h);
    match r.parse(b).map_err(|source| HeadError { what: HeadKind::Request, source })? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(len) => Ok(Some(Head {
            len,
            method: r.method.unwrap_or_default().to_string(),
            path: r.path.unwrap_or_default().to_string(),
            status: 0,
            headers: fields(r.headers),
        })),
    }
}

/// The response head at the start of `b`; `None` if it is not complete yet.
pub fn response(b: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut h = [httparse::EMPTY_HEADER; 100];
    let mut r = httparse::Response::new(&mut h);
    match r.parse(b).map_err(|source| HeadError { what: HeadKind::Response, source })? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(len) => Ok(Some(Head {
            len,
            method: String::new(),
            path: String::new(),
            status: r.code.unwrap_or_default(),
            headers: fields(r.headers),
        })),
    }
}
