//! HTTP/1.1 heads (httparse) and how long the body after one is: what replay needs to
//! walk the exchanges before an Upgrade, and capture to find the values it masks. Pure.

/// A parsed HTTP head: its length, the start line's parts and the fields.
#[derive(Debug, Clone)]
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

    /// The head as text again, its fields only (enough for the extension negotiation).
    pub fn fields_text(&self) -> Vec<u8> {
        self.headers.iter().flat_map(|(n, v)| format!("{n}: {v}\r\n").into_bytes()).collect()
    }
}

fn fields(h: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    h.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect()
}

/// The request head at the start of `b`; `None` if it is not complete yet.
pub fn request(b: &[u8]) -> Result<Option<Head>, String> {
    let mut h = [httparse::EMPTY_HEADER; 100];
    let mut r = httparse::Request::new(&mut h);
    match r.parse(b).map_err(|e| format!("bad HTTP request: {e}"))? {
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
pub fn response(b: &[u8]) -> Result<Option<Head>, String> {
    let mut h = [httparse::EMPTY_HEADER; 100];
    let mut r = httparse::Response::new(&mut h);
    match r.parse(b).map_err(|e| format!("bad HTTP response: {e}"))? {
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

/// How many body bytes follow `head` at the start of `b`: `None` when the body runs to
/// the end of the stream (or `b` ends first). Chunk offsets in errors count from `base`.
pub fn body_len(head: &Head, b: &[u8], no_body: bool, base: u64) -> Result<Option<usize>, String> {
    if no_body {
        return Ok(Some(0));
    }
    if head.has_token("transfer-encoding", "chunked") {
        return chunked_len(b, base);
    }
    match head.field("content-length") {
        Some(v) => v.trim().parse().map(Some).map_err(|_| format!("bad Content-Length {v:?}")),
        None if head.status == 0 => Ok(Some(0)),
        None => Ok(None),
    }
}

/// The length of the chunked body at the start of `b`, trailers included.
fn chunked_len(b: &[u8], base: u64) -> Result<Option<usize>, String> {
    let line_end = |from: usize| b[from.min(b.len())..].windows(2).position(|w| w == b"\r\n").map(|i| from + i);
    let mut p = 0;
    loop {
        let Some(end) = line_end(p) else { return Ok(None) };
        let size = std::str::from_utf8(&b[p..end]).ok().and_then(|l| {
            let hex = l.split(';').next()?.trim();
            usize::from_str_radix(hex, 16).ok()
        });
        let size = size.ok_or_else(|| format!("bad chunk size line at stream offset {}", base + p as u64))?;
        p = end + 2;
        if size == 0 {
            // Trailer fields, then the blank line.
            let mut q = p;
            while let Some(e) = line_end(q) {
                if e == q {
                    return Ok(Some(q + 2));
                }
                q = e + 2;
            }
            return Ok(None);
        }
        p = p.saturating_add(size).saturating_add(2);
    }
}
