//! URLs with their credentials redacted, keeping every length: the userinfo of each
//! authority (`scheme://user:pass@host`), and the values of the query (and fragment)
//! parameters `capture.redact.query` names, their names compared as servers decode them.
//! Wherever a URL is shown — a request target, `Referer`, `Location`, a leg's heading, a
//! log line — it is redacted here, so the rules are the same everywhere. Pure; a leaf:
//! the writer redacts heads and comments with it, the proxy its log lines.

use crate::capture::note::Redaction;
use crate::config::Redact;

/// What a redacted byte becomes.
pub(crate) const BLANK: u8 = b'*';

/// Redacts, in `url` (a request target in any form, or a URL in a header value), the
/// userinfo of every authority and the values of the parameters `rules` names, from the
/// first `?` or `#` on. Pushes what it redacted each time it does (callers that name
/// each once, as comments do, keep the first).
pub(crate) fn redact(url: &mut [u8], rules: &Redact, found: &mut Vec<Redaction>) {
    if rules.is_off() {
        return;
    }
    userinfo(url, found);
    if let Some(at) = url.iter().position(|b| *b == b'?' || *b == b'#') {
        parameters(&mut url[at + 1..], rules, found);
    }
}

/// `text` with each whitespace-separated word redacted as a URL: for comments quoting a
/// request line, and log lines.
pub(crate) fn redacted(text: &str, rules: &Redact) -> String {
    if rules.is_off() {
        return text.to_owned();
    }
    let mut bytes = text.as_bytes().to_vec();
    for word in bytes.split_mut(u8::is_ascii_whitespace) {
        redact(word, rules, &mut Vec::new());
    }
    // Redaction replaces whole values by ASCII, so the text stays UTF-8 unless a redacted
    // value held a multi-byte character only in part; then that character is replaced.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A URL (or any text) shown redacted by `rules`: formatted, and redacted, only when it
/// is shown, so a log line below the level costs nothing.
pub(crate) struct Redacted<'r, T> {
    /// What is shown.
    pub(crate) url: T,
    /// How.
    pub(crate) rules: &'r Redact,
}

impl<T: std::fmt::Display> std::fmt::Display for Redacted<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redacted(&self.url.to_string(), self.rules))
    }
}

/// Redacts the userinfo of every authority in `url`: what follows `//` (at the start, as
/// in `//user@host/`, or after a `:`) up to its last `@` before the authority ends (at
/// `/`, `?`, `#`, `\`, or whitespace, as browsers end it).
fn userinfo(url: &mut [u8], found: &mut Vec<Redaction>) {
    let mut at = 0;
    while let Some(i) = url[at..].windows(2).position(|w| w == b"//") {
        let slashes = at + i;
        let start = slashes + 2;
        let end = url[start..]
            .iter()
            .position(|b| matches!(b, b'/' | b'?' | b'#' | b'\\') || b.is_ascii_whitespace())
            .map_or(url.len(), |n| start + n);
        let authority = slashes == 0 || url[slashes - 1] == b':';
        if let Some(last_at) = url[start..end].iter().rposition(|b| *b == b'@').filter(|n| authority && *n > 0) {
            url[start..start + last_at].fill(BLANK);
            found.push(Redaction::Userinfo);
        }
        at = end.max(start);
    }
}

/// Redacts the values of the named parameters in `params` (what follows a URL's first `?`
/// or `#`). Pairs end at `&`, `;`, `#` and `?`: more places than a server splits at, so
/// that a fragment (`#access_token=…`, as OAuth's implicit flow sends it) and a query
/// inside one (`#/cb?token=…`) are searched too.
fn parameters(params: &mut [u8], rules: &Redact, found: &mut Vec<Redaction>) {
    if rules.query.is_empty() {
        return;
    }
    for pair in params.split_mut(|b| matches!(b, b'&' | b';' | b'#' | b'?')) {
        let Some(eq) = pair.iter().position(|b| *b == b'=') else { continue };
        if let Some(name) = listed(&pair[..eq], rules) {
            pair[eq + 1..].fill(BLANK);
            found.push(Redaction::Query(name.to_ascii_lowercase()));
        }
    }
}

/// The listed name a raw parameter name stands for, as servers decode it: percent-decoded
/// (`%74oken`, and IIS's `%u0074oken`), `+` as a space, ASCII case ignored. Also the
/// names servers make of it: cut at a NUL (where C strings end), cut at a `[` (PHP's and
/// Rack's `token[]`), spaces around trimmed, and (as PHP does) `.` and space read as `_`.
/// Each of these only widens what matches. A name that decodes to bytes that are not
/// UTF-8 is compared as bytes: it equals no listed name unless one of its cuts does.
fn listed<'r>(raw: &[u8], rules: &'r Redact) -> Option<&'r str> {
    let decoded = percent_decoded(raw);
    let cut = decoded.iter().position(|b| *b == 0 || *b == b'[').unwrap_or(decoded.len());
    let trimmed = decoded[..cut].trim_ascii();
    let php: Vec<u8> = trimmed.iter().map(|b| if matches!(b, b'.' | b' ') { b'_' } else { *b }).collect();
    rules.query.iter().map(String::as_str).find(|n| {
        [&decoded[..], trimmed, &php[..]].iter().any(|candidate| candidate.eq_ignore_ascii_case(n.as_bytes()))
    })
}

/// `raw` with `%XX` and `%uXXXX` (below 0x80) decoded and `+` as a space; a `%` that
/// starts neither is kept, as most servers keep it.
fn percent_decoded(raw: &[u8]) -> Vec<u8> {
    // Hex digits only: `from_str_radix` would also take a sign.
    let hex = |b: &[u8]| {
        let digits = b.iter().all(u8::is_ascii_hexdigit).then(|| std::str::from_utf8(b).ok());
        digits.flatten().and_then(|s| u32::from_str_radix(s, 16).ok())
    };
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let wide = raw.get(i + 1).is_some_and(|b| b.eq_ignore_ascii_case(&b'u'));
        let decoded = match raw[i] {
            b'%' if wide => raw.get(i + 2..i + 6).and_then(hex).filter(|c| *c < 0x80).map(|c| (c as u8, 6)),
            b'%' => raw.get(i + 1..i + 3).and_then(hex).map(|c| (c as u8, 3)),
            b'+' => Some((b' ', 1)),
            _ => None,
        };
        let (byte, len) = decoded.unwrap_or((raw[i], 1));
        out.push(byte);
        i += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redacted_bytes(url: &str) -> (String, Vec<Redaction>) {
        let mut bytes = url.as_bytes().to_vec();
        let mut found = Vec::new();
        redact(&mut bytes, &Redact::defaults(), &mut found);
        assert_eq!(bytes.len(), url.len(), "lengths are kept");
        (String::from_utf8(bytes).unwrap(), found)
    }

    #[test]
    fn names_are_compared_as_servers_decode_them() {
        let token = || Redaction::Query("token".into());
        for (url, want) in [
            ("/c?%74oken=S", "/c?%74oken=*"),
            ("/c?%74%6f%6b%65%6e=S", "/c?%74%6f%6b%65%6e=*"),
            ("/c?%74%6F%6B%65%6E=S", "/c?%74%6F%6B%65%6E=*"),
            ("/c?TOKEN=S&x=1", "/c?TOKEN=*&x=1"),
            ("/c?%u0074oken=S", "/c?%u0074oken=*"),
            ("/c?token%00x=S", "/c?token%00x=*"),
            ("/c?token[]=S&token%5Bx%5D=T", "/c?token[]=*&token%5Bx%5D=*"),
            ("/c?+token=S", "/c?+token=*"),
            ("/c?a=1;token=S", "/c?a=1;token=*"),
        ] {
            assert_eq!(redacted_bytes(url), (want.to_owned(), vec![token(); want.matches('*').count()]), "{url}");
        }
        let access = || Redaction::Query("access_token".into());
        for php in ["/c?access+token=S", "/c?access.token=S", "/c?access%5ftoken=S"] {
            assert_eq!(redacted_bytes(php).1, [access()], "{php}");
        }
        for kept in [
            "/c?tok%FFen=S",
            "/c?%FF%FE=S",
            "/c?tok%zzen=S",
            "/c?%u+074oken=S",
            "/c?%74oke=S",
            "/c?xtoken=S",
            "/c/token=S",
            "/c?token",
        ] {
            assert_eq!(redacted_bytes(kept), (kept.to_owned(), vec![]), "{kept}");
        }
    }

    #[test]
    fn userinfo_and_fragments_are_redacted() {
        let (url, found) = redacted_bytes("http://ann:pw@h.example:8080/cb?code=1#access_token=S&state=2");
        assert_eq!(url, "http://******@h.example:8080/cb?code=1#access_token=*&state=2");
        assert_eq!(found, [Redaction::Userinfo, Redaction::Query("access_token".into())]);
        assert_eq!(redacted_bytes("//a@b@h/x").0, "//***@h/x", "up to the last @, as browsers read it");
        assert_eq!(redacted_bytes("https://app/#/cb?token=S").0, "https://app/#/cb?token=*");
        assert_eq!(redacted_bytes("https://h/p@q").0, "https://h/p@q", "an @ in the path is not userinfo");
        assert_eq!(redacted_bytes("/x?next=https://u:p@h/").0, "/x?next=https://***@h/", "nor in a query");
        assert_eq!(redacted_bytes("/a//b@c").0, "/a//b@c", "a path's // starts no authority");
        assert_eq!(redacted_bytes("http://@h/").1, [], "empty userinfo");
    }

    #[test]
    fn text_is_redacted_word_by_word_and_not_at_all_when_off() {
        let heading =
            "wstap session 1: GET http://u:p@h/c?token=abc&x=1 from 1.2.3.4:5 via route \"/\" to ws://u?auth=z";
        let want = "wstap session 1: GET http://***@h/c?token=***&x=1 from 1.2.3.4:5 via route \"/\" to ws://u?auth=*";
        assert_eq!(redacted(heading, &Redact::defaults()), want);
        assert_eq!(redacted(heading, &Redact::default()), heading);
        assert_eq!(redacted("/x?token=é", &Redact::defaults()), "/x?token=**");
        let uri: http::Uri = "http://u:p@h/c?token=abc".parse().unwrap();
        assert_eq!(Redacted { url: uri, rules: &Redact::defaults() }.to_string(), "http://***@h/c?token=***");
    }
}
