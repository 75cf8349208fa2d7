//! Masking what must not reach a capture file, in place and keeping every length (so that
//! framing, `Content-Length` and sequence numbers stay what they were): header values,
//! query parameter values, and payload patterns, each byte replaced by `*`. The result
//! names what was masked, never the values. Pure.

use crate::config::Redact;

/// The mask byte.
const MASK: u8 = b'*';

/// Masks, in a complete HTTP head (request or response, up to its blank line), the values
/// of the headers and query parameters `rules` names. Returns what was masked, as
/// `header cookie` or `query token`, once each.
pub(crate) fn head(head: &mut [u8], rules: &Redact) -> Vec<String> {
    let mut masked = Vec::new();
    if rules.is_off() {
        return masked;
    }
    // Empty lines before a request line are allowed (RFC 9112 §2.2) and skipped.
    let start = head.iter().position(|b| *b != b'\r' && *b != b'\n').unwrap_or(head.len());
    let spans: Vec<(usize, usize)> = LineSpans::new(head, start).collect();
    let first = spans.first().map(|&(s, e)| &head[s..e]);
    if !first.is_some_and(is_start_line) {
        // Not a whole head (capture began inside one): which line is what is unknown.
        head.iter_mut().filter(|b| **b != b'\r' && **b != b'\n').for_each(|b| *b = MASK);
        masked.push("a head without its start line, masked whole".to_owned());
        return masked;
    }
    if let Some((start, end)) = spans.first() {
        target(&mut head[*start..*end], rules, &mut masked);
    }
    let mut previous_masked = false;
    for &(start, end) in spans.iter().skip(1) {
        let line = &mut head[start..end];
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            // An obsolete folded continuation of the previous field's value.
            if previous_masked {
                let first = line.iter().position(|b| *b != b' ' && *b != b'\t').unwrap_or(line.len());
                mask(&mut line[first..]);
            }
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            previous_masked = false;
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon]).trim().to_ascii_lowercase();
        previous_masked = rules.headers.contains(&name);
        if previous_masked {
            let value = &mut line[colon + 1..];
            let first = value.iter().position(|b| *b != b' ' && *b != b'\t').unwrap_or(value.len());
            mask(&mut value[first..]);
            note(&mut masked, format!("header {name}"));
        }
    }
    masked
}

/// Masks the values of the named query parameters in a request line's target.
fn target(line: &mut [u8], rules: &Redact, masked: &mut Vec<String>) {
    // METHOD SP target SP version: the target is between the first two spaces.
    let Some(sp1) = line.iter().position(|b| *b == b' ') else { return };
    let end = line[sp1 + 1..].iter().position(|b| *b == b' ').map_or(line.len(), |i| sp1 + 1 + i);
    let target = &mut line[sp1 + 1..end];
    if let Some(q) = target.iter().position(|b| *b == b'?') {
        query(&mut target[q + 1..], rules, masked);
    }
}

/// Masks the named query parameters' values in free text (a comment quoting a request
/// line): in each run after a `?` up to the next whitespace.
pub(crate) fn text(text: &str, rules: &Redact) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let mut masked = Vec::new();
    let mut at = 0;
    while let Some(q) = bytes[at..].iter().position(|b| *b == b'?') {
        let start = at + q + 1;
        let end = bytes[start..].iter().position(u8::is_ascii_whitespace).map_or(bytes.len(), |i| start + i);
        query(&mut bytes[start..end], rules, &mut masked);
        at = end;
    }
    // Masking replaces ASCII bytes of whole values with '*', so the text stays UTF-8
    // unless a masked value held a multi-byte character; then it is replaced whole.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Masks the named parameters' values in a query (what follows the `?`, to the end of
/// `q`; a `#fragment` is left alone).
fn query(q: &mut [u8], rules: &Redact, masked: &mut Vec<String>) {
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
                mask(&mut q[at + eq + 1..pair_end]);
                note(masked, format!("query {name}"));
            }
        }
        at = pair_end + 1;
    }
}

/// Masks every match of the payload patterns in `payload` (a whole message, as the
/// application sees it). Returns what matched, as `payload pattern 0 (2 matches)`.
pub(crate) fn payload(payload: &mut [u8], rules: &Redact) -> Vec<String> {
    let mut masked = Vec::new();
    for (i, re) in rules.payload.iter().enumerate() {
        let spans: Vec<(usize, usize)> = re.find_iter(payload).map(|m| (m.start(), m.end())).collect();
        for (start, end) in &spans {
            mask(&mut payload[*start..*end]);
        }
        match spans.len() {
            0 => {}
            1 => masked.push(format!("payload pattern {i}")),
            n => masked.push(format!("payload pattern {i} ({n} matches)")),
        }
    }
    masked
}

fn mask(bytes: &mut [u8]) {
    bytes.fill(MASK);
}

fn note(masked: &mut Vec<String>, what: String) {
    if !masked.contains(&what) {
        masked.push(what);
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
    !method.is_empty() && method.iter().all(u8::is_ascii_uppercase) && version.starts_with(b"HTTP/")
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
    fn header_and_query_values_are_masked_and_lengths_kept() {
        let rules = Redact::defaults();
        let mut req = b"GET /chat?room=1&token=s3cr3t&Access_Token=abc#x HTTP/1.1\r\n\
            Host: app\r\nAuthorization: Bearer xyz\r\nCookie: a=1;\r\n b=2\r\nX-Other: keep\r\n\r\n"
            .to_vec();
        let len = req.len();
        let masked = head(&mut req, &rules);
        assert_eq!(req.len(), len);
        let text = String::from_utf8(req).unwrap();
        assert!(text.starts_with("GET /chat?room=1&token=******&Access_Token=***#x HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("Authorization: **********\r\n") && text.contains("Cookie: ****\r\n ***\r\n"), "{text}");
        assert!(text.contains("X-Other: keep\r\n") && text.contains("Host: app\r\n"), "{text}");
        assert_eq!(masked, ["query token", "query access_token", "header authorization", "header cookie"]);
        let mut resp = b"HTTP/1.1 101 Switching Protocols\r\nSet-Cookie: sid=42; Path=/\r\n\r\n".to_vec();
        assert_eq!(head(&mut resp, &rules), ["header set-cookie"]);
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
    fn a_head_after_empty_lines_is_masked_and_one_without_a_start_line_is_masked_whole() {
        let rules = Redact::defaults();
        let mut req = b"\r\nGET /?token=abc HTTP/1.1\r\nCookie: sid=1\r\n\r\n".to_vec();
        assert_eq!(head(&mut req, &rules), ["query token", "header cookie"]);
        assert!(!String::from_utf8_lossy(&req).contains("abc") && !String::from_utf8_lossy(&req).contains("sid"));
        let mut tail = b"Authorization: Bearer xyz\r\nHost: a\r\n\r\n".to_vec();
        assert_eq!(head(&mut tail, &rules), ["a head without its start line, masked whole"]);
        assert_eq!(&tail[..], b"*************************\r\n*******\r\n\r\n");
    }

    #[test]
    fn payload_patterns_are_masked_and_counted() {
        let rules =
            Redact { payload: vec![regex::bytes::Regex::new(r#""password":"[^"]*""#).unwrap()], ..Redact::default() };
        let mut m = br#"{"user":"a","password":"hunter2"} {"password":"x"}"#.to_vec();
        assert_eq!(payload(&mut m, &rules), ["payload pattern 0 (2 matches)"]);
        assert_eq!(&m[..12], br#"{"user":"a","#);
        assert!(!String::from_utf8_lossy(&m).contains("hunter2"));
    }
}
