//! Redaction: what must not reach a capture file is blanked out in place, keeping every
//! length (so that framing, `Content-Length` and sequence numbers stay what they were):
//! the values of the listed headers; in the request target and the URLs of `Referer`,
//! `Location`, `Content-Location` and `Origin`, userinfo and the listed query parameters'
//! values (the URL rules are [`crate::capture::url`]'s, which log lines share); bearer
//! tokens among the WebSocket subprotocols; and payload patterns. Each byte becomes `*`.
//! The result names what was redacted ([`Redaction`]), never the values. Pure.

use crate::capture::note::Redaction;
use crate::capture::url;
pub(super) use crate::capture::url::BLANK;
use crate::config::Redact;

/// Header fields whose values are URLs (or, for `Origin`, should be): their userinfo and
/// listed query parameters are redacted.
const URL_FIELDS: [&str; 4] = ["referer", "location", "content-location", "origin"];

/// The Kubernetes convention for a bearer token where a browser cannot send headers: a
/// subprotocol of this prefix and the token, base64url-encoded.
const K8S_BEARER: &[u8] = b"base64url.bearer.authorization.k8s.io.";

/// Redacts, in a complete HTTP head (request or response, up to its blank line), what
/// `rules` names. Returns what was redacted, once each, in the order it was met.
pub fn head(head: &mut [u8], rules: &Redact) -> Vec<Redaction> {
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
        return vec![Redaction::WholeHead];
    }
    if let Some((start, end)) = spans.first() {
        target(&mut head[*start..*end], rules, &mut redacted);
    }
    let mut previous = Field::Kept;
    for &(start, end) in spans.iter().skip(1) {
        let line = &mut head[start..end];
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            // An obsolete folded continuation of the previous field's value.
            previous.redact(line, &mut redacted);
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            previous = Field::Kept;
            continue;
        };
        previous = Field::named(&String::from_utf8_lossy(&line[..colon]), rules);
        previous.redact(&mut line[colon + 1..], &mut redacted);
    }
    let mut once = Vec::with_capacity(redacted.len());
    for what in redacted {
        if !once.contains(&what) {
            once.push(what);
        }
    }
    once
}

/// What a header field's value is, for redaction.
enum Field<'r> {
    /// Listed in `headers`: its whole value (the lower-case name).
    Listed(String),
    /// A URL: userinfo and listed query values.
    Url(&'r Redact),
    /// WebSocket subprotocols: the bearer tokens among them.
    Protocols,
    /// Anything else: kept.
    Kept,
}

impl<'r> Field<'r> {
    fn named(name: &str, rules: &'r Redact) -> Field<'r> {
        let name = name.trim().to_ascii_lowercase();
        if rules.headers.contains(&name) {
            Field::Listed(name)
        } else if URL_FIELDS.contains(&name.as_str()) {
            Field::Url(rules)
        } else if name == "sec-websocket-protocol" {
            Field::Protocols
        } else {
            Field::Kept
        }
    }

    /// Redacts `value` (a field's value after its colon, or a continuation line of it).
    fn redact(&self, value: &mut [u8], redacted: &mut Vec<Redaction>) {
        let first = value.iter().position(|b| *b != b' ' && *b != b'\t').unwrap_or(value.len());
        let value = &mut value[first..];
        match self {
            Field::Listed(name) => {
                value.fill(BLANK);
                redacted.push(Redaction::Header(name.clone()));
            }
            Field::Url(rules) => url::redact(value, rules, redacted),
            Field::Protocols => protocols(value, redacted),
            Field::Kept => {}
        }
    }
}

/// Redacts the userinfo and the named query parameters' values in a request line's
/// target, in any of its forms (`/p?q`, `http://user@host/p?q`).
fn target(line: &mut [u8], rules: &Redact, redacted: &mut Vec<Redaction>) {
    // METHOD SP target SP version: the target is between the first two spaces.
    let Some(sp1) = line.iter().position(|b| *b == b' ') else { return };
    let end = line[sp1 + 1..].iter().position(|b| *b == b' ').map_or(line.len(), |i| sp1 + 1 + i);
    url::redact(&mut line[sp1 + 1..end], rules, redacted);
}

/// Redacts the bearer tokens in a `Sec-WebSocket-Protocol` value (a request's offer, or
/// the one protocol a 101 chose): the token of a Kubernetes bearer protocol
/// (`base64url.bearer.authorization.k8s.io.<token>`, its prefix kept), and a JSON Web
/// Token making up the end of a protocol (`eyJ…` in three dot-separated base64url parts,
/// with or without a prefix). Other protocols stay readable: an opaque token sent as a
/// protocol of its own is not recognised (list the header to redact the whole value).
fn protocols(value: &mut [u8], redacted: &mut Vec<Redaction>) {
    for entry in value.split_mut(|b| *b == b',') {
        let start = entry.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(entry.len());
        let end = entry.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
        let entry = &mut entry[start..end];
        let token = if entry.len() > K8S_BEARER.len() && entry[..K8S_BEARER.len()].eq_ignore_ascii_case(K8S_BEARER) {
            Some(K8S_BEARER.len())
        } else {
            jwt_at(entry)
        };
        if let Some(at) = token {
            entry[at..].fill(BLANK);
            redacted.push(Redaction::ProtocolToken);
        }
    }
}

/// Where a JSON Web Token that runs to the end of `entry` starts: `eyJ` (a JSON object's
/// `{"`, base64url-encoded) at the start or after a non-alphanumeric byte, then base64url
/// bytes and at least two dots.
fn jwt_at(entry: &[u8]) -> Option<usize> {
    let base64url = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    (0..entry.len()).find(|&at| {
        entry[at..].starts_with(b"eyJ")
            && (at == 0 || !entry[at - 1].is_ascii_alphanumeric())
            && entry[at..].iter().all(base64url)
            && entry[at..].iter().filter(|b| **b == b'.').count() >= 2
    })
}

/// Redacts the named query parameters' values and URL userinfo in free text (a comment
/// quoting a request line), word by word.
pub(super) fn text(text: &str, rules: &Redact) -> String {
    url::redacted(text, rules)
}

/// Redacts every match of the payload patterns in `payload` (a whole message, as the
/// application sees it). Returns what matched, and how often.
pub fn payload(payload: &mut [u8], rules: &Redact) -> Vec<Redaction> {
    let mut redacted = Vec::new();
    for (pattern, re) in rules.payload.iter().enumerate() {
        let spans: Vec<std::ops::Range<usize>> = re.find_iter(payload).map(|m| m.range()).collect();
        for span in &spans {
            payload[span.clone()].fill(BLANK);
        }
        if !spans.is_empty() {
            redacted.push(Redaction::Payload { pattern, matches: spans.len() });
        }
    }
    redacted
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

    /// `head` over `text`: the head as redacted (its length kept) and what was redacted.
    fn redacted(text: &str) -> (String, Vec<Redaction>) {
        let mut bytes = text.as_bytes().to_vec();
        let found = head(&mut bytes, &Redact::defaults());
        assert_eq!(bytes.len(), text.len(), "lengths are kept");
        (String::from_utf8(bytes).unwrap(), found)
    }

    #[test]
    fn encoded_and_cased_query_names_are_redacted_in_the_request_line() {
        let (text, found) =
            redacted("GET /c?%74oken=S1&%74%6f%6b%65%6e=S2&TOKEN=S3&Api_Key=S4&x=keep HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(
            text.starts_with("GET /c?%74oken=**&%74%6f%6b%65%6e=**&TOKEN=**&Api_Key=**&x=keep HTTP/1.1\r\n"),
            "{text}"
        );
        assert_eq!(found, [Redaction::Query("token".into()), Redaction::Query("api_key".into())]);
    }

    #[test]
    fn urls_in_the_target_and_in_url_fields_lose_their_userinfo_and_tokens() {
        let (text, found) = redacted(
            "GET http://ann:PW@app.example/c?token=S1 HTTP/1.1\r\n\
             Referer: https://app.example/login?next=%2F&access_token=S2\r\n\
             Origin: https://bob:PW2@app.example\r\n\
             X-Api-Key: S3\r\nX-Auth-Token: S4\r\n\r\n",
        );
        for want in [
            "GET http://******@app.example/c?token=** HTTP/1.1\r\n",
            "Referer: https://app.example/login?next=%2F&access_token=**\r\n",
            "Origin: https://*******@app.example\r\n",
            "X-Api-Key: **\r\nX-Auth-Token: **\r\n",
        ] {
            assert!(text.contains(want), "{want:?} in {text}");
        }
        let q = |n: &str| Redaction::Query(n.into());
        let h = |n: &str| Redaction::Header(n.into());
        assert_eq!(found, [Redaction::Userinfo, q("token"), q("access_token"), h("x-api-key"), h("x-auth-token")]);
        let (text, found) = redacted(
            "HTTP/1.1 302 Found\r\nLocation: https://u:p@app/cb#access_token=S1&state=x\r\n\
             Content-Location: /r?secret=S2\r\n\r\n",
        );
        assert!(text.contains("Location: https://***@app/cb#access_token=**&state=x\r\n"), "{text}");
        assert!(text.contains("Content-Location: /r?secret=**\r\n"), "{text}");
        assert_eq!(found, [Redaction::Userinfo, q("access_token"), q("secret")]);
    }

    #[test]
    fn bearer_tokens_among_subprotocols_are_redacted_and_the_others_kept() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbm4ifQ.c2ln";
        let (text, found) = redacted(&format!(
            "GET /api HTTP/1.1\r\nSec-WebSocket-Protocol: v4.channel.k8s.io, \
             base64url.bearer.authorization.k8s.io.U0VDUkVU ,access_token.{jwt}, graphql-ws\r\n\r\n"
        ));
        let want = format!(
            "Sec-WebSocket-Protocol: v4.channel.k8s.io, base64url.bearer.authorization.k8s.io.******** \
             ,access_token.{}, graphql-ws\r\n",
            "*".repeat(jwt.len())
        );
        assert!(text.contains(&want), "{text}");
        assert_eq!(found, [Redaction::ProtocolToken]);
        let (text, _) = redacted(
            "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.U0VD\r\n\r\n",
        );
        assert!(text.contains("Sec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.****\r\n"), "{text}");
        let kept =
            "GET / HTTP/1.1\r\nSec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io., eyJnot.a-jwt\r\n\r\n";
        assert_eq!(redacted(kept), (kept.to_owned(), vec![]), "no token, and nothing JWT-shaped");
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
