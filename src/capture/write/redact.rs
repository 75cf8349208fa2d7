//! Redaction: what must not reach a capture file is blanked out in place, keeping every
//! length (so that framing, `Content-Length` and sequence numbers stay what they were):
//! header values, query parameter values, and payload patterns, each byte replaced by
//! `*`. The result names what was redacted ([`Redaction`]), never the values. Pure.

use crate::capture::note::Redaction;
use crate::config::Redact;

/// What a redacted byte becomes.
pub(super) const BLANK: u8 = b'*';

/// Redacts, in a complete HTTP head (request or response, up to its blank line), the
/// values of the headers and query parameters `rules` names. Returns what was redacted,
/// once each.
pub(super) fn head(head: &mut [u8], rules: &Redact) -> Vec<Redaction> {
    let mut redacted = Vec::new();
    if rules.is_off() {
        return redacted;
    }
    // Empty lines before a request line are allowed (RFC 9112 §2.2) and skipped.
    let start = head.iter().position(|b| *b != b'\r' && *b != b'\n').unwrap_or(head.len());
    let spans: Vec<(usize, usize)> = LineSpans::new(head, start).collect();
    let first = spans.first().map(|&(s, e)| &head[s..e]);
    if !first.is_some_and(is_start_line) {
        // Not a whole head (capture began inside one): which line is what is unknown.
        head.iter_mut().filter(|b| **b != b'\r' && **b != b'\n').for_each(|b| *b = BLANK);
        redacted.push(Redaction::WholeHead);
        return redacted;
    }
    if let Some((start, end)) = spans.first() {
        target(&mut head[*start..*end], rules, &mut redacted);
    }
    let mut previous_redacted = false;
    for &(start, end) in spans.iter().skip(1) {
        let line = &mut head[start..end];
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            // An obsolete folded continuation of the previous field's value.
            if previous_redacted {
                let first = line.iter().position(|b| *b != b' ' && *b != b'\t').unwrap_or(line.len());
                blank(&mut line[first..]);
            }
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            previous_redacted = false;
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon]).trim().to_ascii_lowercase();
        previous_redacted = rules.headers.contains(&name);
        if previous_redacted {
            let value = &mut line[colon + 1..];
            let first = value.iter().position(|b| *b != b' ' && *b != b'\t').unwrap_or(value.len());
            blank(&mut value[first..]);
            once(&mut redacted, Redaction::Header(name));
        }
    }
    redacted
}

/// Redacts the values of the named query parameters in a request line's target.
fn target(line: &mut [u8], rules: &Redact, redacted: &mut Vec<Redaction>) {
    // METHOD SP target SP version: the target is between the first two spaces.
    let Some(sp1) = line.iter().position(|b| *b == b' ') else { return };
    let end = line[sp1 + 1..].iter().position(|b| *b == b' ').map_or(line.len(), |i| sp1 + 1 + i);
    let target = &mut line[sp1 + 1..end];
    if let Some(q) = target.iter().position(|b| *b == b'?') {
        query(&mut target[q + 1..], rules, redacted);
    }
}

/// Redacts the named query parameters' values in free text (a comment quoting a request
/// line): in each run after a `?` up to the next whitespace.
pub(super) fn text(text: &str, rules: &Redact) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let mut redacted = Vec::new();
    let mut at = 0;
    while let Some(q) = bytes[at..].iter().position(|b| *b == b'?') {
        let start = at + q + 1;
        let end = bytes[start..].iter().position(u8::is_ascii_whitespace).map_or(bytes.len(), |i| start + i);
        query(&mut bytes[start..end], rules, &mut redacted);
        at = end;
    }
    // Redaction replaces ASCII bytes of whole values with '*', so the text stays UTF-8
    // unless a redacted value held a multi-byte character; then it is replaced whole.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Redacts the named parameters' values in a query (what follows the `?`, to the end of
/// `q`; a `#fragment` is left alone).
fn query(q: &mut [u8], rules: &Redact, redacted: &mut Vec<Redaction>) {
    if rules.query.is_empty() {
        return;
    }
    let query_end = q.iter().position(|b| *b == b'#').unwrap_or(q.len());
    let mut at = 0;
    while at < query_end {
        let pair_end = q[at..query_end].iter().position(|b| *b == b'&' || *b == b';').map_or(query_end, |i| at + i);
        if let Some(eq) = q[at..pair_end].iter().position(|b| *b == b'=') {
            let name = String::from_utf8_lossy(&q[at..at + eq]).to_ascii_lowercase();
            if rules.query.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
                blank(&mut q[at + eq + 1..pair_end]);
                once(redacted, Redaction::Query(name));
            }
        }
        at = pair_end + 1;
    }
}

/// Redacts every match of the payload patterns in `payload` (a whole message, as the
/// application sees it). Returns what matched, and how often.
pub(super) fn payload(payload: &mut [u8], rules: &Redact) -> Vec<Redaction> {
    let mut redacted = Vec::new();
    for (pattern, re) in rules.payload.iter().enumerate() {
        let spans: Vec<std::ops::Range<usize>> = re.find_iter(payload).map(|m| m.range()).collect();
        for span in &spans {
            blank(&mut payload[span.clone()]);
        }
        if !spans.is_empty() {
            redacted.push(Redaction::Payload { pattern, matches: spans.len() });
        }
    }
    redacted
}

fn blank(bytes: &mut [u8]) {
    bytes.fill(BLANK);
}

fn once(redacted: &mut Vec<Redaction>, what: Redaction) {
    if !redacted.contains(&what) {
        redacted.push(what);
    }
}

/// The lines of a head, without their line ends, up to the blank line.
struct LineSpans<'a> {
    head: &'a [u8],
    at: usize,
}

impl<'a> LineSpans<'a> {
    fn new(head: &'a [u8], at: usize) -> LineSpans<'a> {
        LineSpans { head, at }
    }
}

/// `METHOD SP target SP HTTP/x` or `HTTP/x SP status`.
fn is_start_line(line: &[u8]) -> bool {
    if line.starts_with(b"HTTP/") {
        return true;
    }
    let mut parts = line.split(|b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let _target = parts.next();
    let version = parts.next().unwrap_or_default();
    // A method is any token (hyper takes `get`, and forwards it as it came).
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    !method.is_empty() && method.iter().all(token) && version.starts_with(b"HTTP/")
}

impl Iterator for LineSpans<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        let rest = self.head.get(self.at..)?;
        let nl = rest.iter().position(|b| *b == b'\n')?;
        let start = self.at;
        let end = if nl > 0 && rest[nl - 1] == b'\r' { start + nl - 1 } else { start + nl };
        self.at = start + nl + 1;
        (end > start).then_some((start, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_query_values_are_redacted_and_lengths_kept() {
        let rules = Redact::defaults();
        let mut req = b"GET /chat?room=1&token=s3cr3t&Access_Token=abc#x HTTP/1.1\r\n\
            Host: app\r\nAuthorization: Bearer xyz\r\nCookie: a=1;\r\n b=2\r\nX-Other: keep\r\n\r\n"
            .to_vec();
        let len = req.len();
        let redacted = head(&mut req, &rules);
        assert_eq!(req.len(), len);
        let text = String::from_utf8(req).unwrap();
        assert!(text.starts_with("GET /chat?room=1&token=******&Access_Token=***#x HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("Authorization: **********\r\n") && text.contains("Cookie: ****\r\n ***\r\n"), "{text}");
        assert!(text.contains("X-Other: keep\r\n") && text.contains("Host: app\r\n"), "{text}");
        let q = |n: &str| Redaction::Query(n.into());
        let h = |n: &str| Redaction::Header(n.into());
        assert_eq!(redacted, [q("token"), q("access_token"), h("authorization"), h("cookie")]);
        let mut resp = b"HTTP/1.1 101 Switching Protocols\r\nSet-Cookie: sid=42; Path=/\r\n\r\n".to_vec();
        assert_eq!(head(&mut resp, &rules), [Redaction::Header("set-cookie".into())]);
        assert!(!String::from_utf8_lossy(&resp).contains("sid=42"));
        let mut plain = b"GET /?token=1 HTTP/1.1\r\nCookie: x\r\n\r\n".to_vec();
        assert!(head(&mut plain, &Redact::default()).is_empty(), "nothing, when redaction is off");
        assert_eq!(
            super::text(
                "wstap session 1: GET /c?token=abc&x=1 from 1.2.3.4:5 via route \"/\" to ws://u?auth=z",
                &rules
            ),
            "wstap session 1: GET /c?token=***&x=1 from 1.2.3.4:5 via route \"/\" to ws://u?auth=*"
        );
    }

    #[test]
    fn a_head_after_empty_lines_is_redacted_and_one_without_a_start_line_is_redacted_whole() {
        let rules = Redact::defaults();
        let mut req = b"\r\nGET /?token=abc HTTP/1.1\r\nCookie: sid=1\r\n\r\n".to_vec();
        assert_eq!(head(&mut req, &rules), [Redaction::Query("token".into()), Redaction::Header("cookie".into())]);
        assert!(!String::from_utf8_lossy(&req).contains("abc") && !String::from_utf8_lossy(&req).contains("sid"));
        let mut tail = b"Authorization: Bearer xyz\r\nHost: a\r\n\r\n".to_vec();
        assert_eq!(head(&mut tail, &rules), [Redaction::WholeHead]);
        assert_eq!(&tail[..], b"*************************\r\n*******\r\n\r\n");
    }

    #[test]
    fn payload_patterns_are_redacted_and_counted() {
        let rules =
            Redact { payload: vec![regex::bytes::Regex::new(r#""password":"[^"]*""#).unwrap()], ..Redact::default() };
        let mut m = br#"{"user":"a","password":"hunter2"} {"password":"x"}"#.to_vec();
        assert_eq!(payload(&mut m, &rules), [Redaction::Payload { pattern: 0, matches: 2 }]);
        assert_eq!(&m[..12], br#"{"user":"a","#);
        assert!(!String::from_utf8_lossy(&m).contains("hunter2"));
    }
}
