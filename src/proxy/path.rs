//! The request path as routes see it, normalised as nginx's `location` matching does:
//! percent-escapes of unreserved characters decoded (`%41` is `A`, `%2e` is `.`), other
//! escapes kept (hex in upper case), repeated slashes merged, and dot-segments removed
//! (RFC 3986 §5.2.4). Without this, a route for `/ws` took `/ws/../admin` and
//! `/ws/%2e%2e/admin` and sent them on verbatim, while `/admin` itself got 404. Pure.

use std::fmt;

use crate::config::EncodedSlash;

/// Why a path is refused (`400`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    /// Not an absolute path (`/…`).
    NotAbsolute,
    /// An encoded `/` or `\` (`%2F`, `%5C`): what it means depends on who decodes it.
    EncodedSlash,
    /// A `..` that climbs above the root.
    AboveRoot,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// Dot-segments that lead out of the route the path names (`/ws/../admin`).
    OutOfRoute,
}

impl fmt::Display for BadPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadPath::NotAbsolute => "the path does not start with '/'",
            BadPath::EncodedSlash => "the path has an encoded '/' or '\\' (proxy.allow_encoded_slash is off)",
            BadPath::AboveRoot => "the path's dot-segments climb above the root",
            BadPath::BadEscape => "the path has a '%' that is not followed by two hex digits",
            BadPath::OutOfRoute => "the path's dot-segments lead out of the route it names",
        })
    }
}

/// The normalised form of `path` (no query); escaped slashes as `slash` says.
pub fn normalize(path: &str, slash: EncodedSlash) -> Result<String, BadPath> {
    if !path.starts_with('/') {
        return Err(BadPath::NotAbsolute);
    }
    let decoded = decode_unreserved(path.as_bytes(), slash)?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/').skip(1) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(BadPath::AboveRoot)?;
            }
            s => segments.push(s),
        }
    }
    // A trailing slash (or a final dot-segment) keeps the path a directory, as it was.
    let ends_open = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if ends_open || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Whether `path` has a `..` segment, escaped or not: it may climb.
pub fn climbs(path: &str) -> bool {
    let lower = path.to_ascii_lowercase().replace("%2e", ".");
    lower.split('/').any(|s| s == "..")
}

/// Decodes escapes of unreserved characters; keeps other escapes, upper-cased.
fn decode_unreserved(path: &[u8], slash: EncodedSlash) -> Result<String, BadPath> {
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b != b'%' {
            if b.is_ascii() {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
            i += 1;
            continue;
        }
        let hex = |c: u8| (c as char).to_digit(16);
        let (Some(hi), Some(lo)) = (path.get(i + 1).and_then(|c| hex(*c)), path.get(i + 2).and_then(|c| hex(*c)))
        else {
            return Err(BadPath::BadEscape);
        };
        let c = (hi * 16 + lo) as u8;
        match c {
            b'/' | b'\\' if slash == EncodedSlash::Refused => return Err(BadPath::EncodedSlash),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(c as char),
            _ => out.push_str(&format!("%{c:02X}")),
        }
        i += 3;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_as_nginx_matches_them() {
        for (raw, want) in [
            ("/ws", "/ws"),
            ("/ws/", "/ws/"),
            ("/", "/"),
            ("//ws//chat", "/ws/chat"),
            ("/ws/./chat", "/ws/chat"),
            ("/ws/../admin", "/admin"),
            ("/ws/%2e%2e/admin", "/admin"),
            ("/ws/%2E%2E/admin", "/admin"),
            ("/%77s/chat", "/ws/chat"),
            ("/ws/a%20b", "/ws/a%20b"),
            ("/ws/a%3fb", "/ws/a%3Fb"),
            ("/ws/chat/..", "/ws/"),
            ("/ws/\u{e9}", "/ws/%C3%A9"),
        ] {
            assert_eq!(normalize(raw, EncodedSlash::Refused).as_deref(), Ok(want), "{raw}");
        }
        assert_eq!(normalize("/ws%2f..%2fadmin", EncodedSlash::Refused), Err(BadPath::EncodedSlash));
        assert_eq!(normalize("/ws%2F..%2Fadmin", EncodedSlash::Kept).as_deref(), Ok("/ws%2F..%2Fadmin"), "kept opaque");
        assert_eq!(normalize("/ws%5cx", EncodedSlash::Refused), Err(BadPath::EncodedSlash));
        assert_eq!(normalize("/../etc", EncodedSlash::Refused), Err(BadPath::AboveRoot));
        assert_eq!(normalize("/a/%2e%2e/%2e%2e/b", EncodedSlash::Refused), Err(BadPath::AboveRoot));
        assert_eq!(normalize("/ws%zz", EncodedSlash::Refused), Err(BadPath::BadEscape));
        assert_eq!(normalize("/ws%2", EncodedSlash::Refused), Err(BadPath::BadEscape));
        assert_eq!(normalize("*", EncodedSlash::Refused), Err(BadPath::NotAbsolute));
    }
}
