//! Routes and upstream addresses: which upstream a request goes to, and the request
//! target it gets there. Pure matching and string work; no I/O.

use std::fmt;

use serde::Deserialize;

use super::Policy;

/// One `[[route]]`: requests whose host (if set) and path prefix match go to `upstream`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Lower-case host name to match against the request's `Host` (port ignored).
    pub host: Option<String>,
    /// Plain string prefix of the request path (as nginx `location /prefix`).
    pub path_prefix: String,
    /// Remove `path_prefix` from the path before forwarding.
    pub strip_prefix: bool,
    /// Where matching requests go.
    pub upstream: Upstream,
    /// What is recorded of its sessions.
    pub policy: Policy,
    /// TLS to the upstream (`wss://`, `https://`).
    pub tls: Option<super::tls::UpstreamTls>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// An upstream URL's scheme.
pub enum Scheme {
    /// `ws://`.
    Ws,
    /// `http://`.
    Http,
    /// `wss://`: TLS.
    Wss,
    /// `https://`: TLS.
    Https,
}

/// A parsed `ws://`, `http://`, `wss://` or `https://` upstream URL. The first two mean
/// plain TCP, the others TLS; any of them carries plain HTTP and WebSocket upgrades alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The scheme it was written with.
    pub scheme: Scheme,
    /// Host as written in the URL (IPv6 literals keep their brackets).
    pub host: String,
    /// The port (80, or 443 for TLS, when the URL has none).
    pub port: u16,
    /// Base path prepended to forwarded targets; empty for `/`.
    pub base_path: String,
}

impl Upstream {
    /// Parses `ws://host:port[/base]`, `http://…`, `wss://…` or `https://…`; the error says
    /// what is wrong.
    pub fn parse(s: &str) -> Result<Upstream, String> {
        let bad = |why: &str| format!("invalid upstream {s:?}: {why}");
        let uri: http::Uri = s.parse().map_err(|e| bad(&format!("{e}")))?;
        let scheme = match uri.scheme_str() {
            Some("ws") => Scheme::Ws,
            Some("http") => Scheme::Http,
            Some("wss") => Scheme::Wss,
            Some("https") => Scheme::Https,
            _ => return Err(bad("the URL must start with ws://, http://, wss:// or https://")),
        };
        let auth = uri.authority().ok_or_else(|| bad("no host"))?;
        if auth.as_str().contains('@') {
            return Err(bad("user info is not allowed"));
        }
        if uri.query().is_some() {
            return Err(bad("a query string is not allowed"));
        }
        let host = auth.host().to_owned();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let default_port = if matches!(scheme, Scheme::Wss | Scheme::Https) { 443 } else { 80 };
        Ok(Upstream { scheme, host, port: auth.port_u16().unwrap_or(default_port), base_path })
    }

    /// Reached over TLS?
    pub fn tls(&self) -> bool {
        matches!(self.scheme, Scheme::Wss | Scheme::Https)
    }

    /// `host:port` as used to connect and as the default `Host` header.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Host for DNS / address parsing (IPv6 brackets removed).
    pub fn connect_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Ws => "ws",
            Scheme::Http => "http",
            Scheme::Wss => "wss",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}{}", self.authority(), self.base_path)
    }
}

impl<'de> Deserialize<'de> for Upstream {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Upstream::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Route {
    /// Does this route take a request for `host` (the `Host` header, maybe with a port)
    /// and `path`?
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(want) = &self.host {
            match host.map(strip_port) {
                Some(h) if h.eq_ignore_ascii_case(want) => {}
                _ => return false,
            }
        }
        path.starts_with(&self.path_prefix)
    }

    /// The request target to send upstream for the client's `path_and_query`.
    pub fn upstream_target(&self, path_and_query: &str) -> String {
        let mut rest = path_and_query;
        if self.strip_prefix {
            rest = rest.strip_prefix(self.path_prefix.trim_end_matches('/')).unwrap_or(rest);
        }
        let base = &self.upstream.base_path;
        match (base.is_empty(), rest.starts_with('/')) {
            (_, true) => format!("{base}{rest}"),
            (true, false) => format!("/{rest}"),
            (false, false) if rest.is_empty() || rest.starts_with('?') => format!("{base}{rest}"),
            (false, false) => format!("{base}/{rest}"),
        }
    }
}

/// First route that matches, in config order.
pub fn find<'a>(routes: &'a [Route], host: Option<&str>, path: &str) -> Option<&'a Route> {
    routes.iter().find(|r| r.matches(host, path))
}

/// `example.org:8080` → `example.org`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: &str, strip: bool, upstream: &str) -> Route {
        Route {
            host: host.map(str::to_owned),
            path_prefix: prefix.to_owned(),
            strip_prefix: strip,
            upstream: Upstream::parse(upstream).unwrap(),
            policy: Policy::default(),
            tls: None,
        }
    }

    #[test]
    fn upstream_urls() {
        let u = Upstream::parse("ws://127.0.0.1:9000").unwrap();
        assert_eq!((u.scheme, u.port, u.authority()), (Scheme::Ws, 9000, "127.0.0.1:9000".into()));
        let u = Upstream::parse("http://[::1]/base/").unwrap();
        assert_eq!((u.connect_host(), u.port, u.base_path.as_str()), ("::1", 80, "/base"));
        assert_eq!(u.to_string(), "http://[::1]:80/base");
        let u = Upstream::parse("wss://app.internal").unwrap();
        assert_eq!((u.scheme, u.port, u.tls()), (Scheme::Wss, 443, true));
        assert_eq!(Upstream::parse("https://a:8443/x").unwrap().to_string(), "https://a:8443/x");
        for bad in ["ftp://a:1", "ws://u@a:1", "ws://a:1/?q=1", "a:1", "ws://"] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn first_match_wins_with_host_and_prefix() {
        let routes = [
            route(Some("chat.example"), "/ws", false, "ws://a:1"),
            route(None, "/api", true, "http://b:2/v1"),
            route(None, "/", false, "ws://c:3"),
        ];
        let pick = |h, p| find(&routes, h, p).map(|r| r.upstream.port);
        assert_eq!(pick(Some("Chat.Example:8080"), "/ws/room"), Some(1));
        assert_eq!(pick(Some("other"), "/ws/room"), Some(3));
        assert_eq!(pick(None, "/ws"), Some(3));
        assert_eq!(pick(None, "/api/x"), Some(2));
        let only_api = [route(None, "/api", false, "ws://a:1")];
        assert!(find(&only_api, None, "/nope").is_none());
    }

    #[test]
    fn targets() {
        assert_eq!(route(None, "/", false, "ws://a:1").upstream_target("/x?y=1"), "/x?y=1");
        assert_eq!(route(None, "/api", true, "ws://a:1").upstream_target("/api/x?y"), "/x?y");
        assert_eq!(route(None, "/api/", true, "ws://a:1").upstream_target("/api"), "/");
        assert_eq!(route(None, "/api", true, "ws://a:1/v1").upstream_target("/api/x"), "/v1/x");
        assert_eq!(route(None, "/api", true, "ws://a:1/v1").upstream_target("/api?q"), "/v1?q");
        assert_eq!(route(None, "/", false, "ws://a:1/v1").upstream_target("/x"), "/v1/x");
    }

    #[test]
    fn ports_stripped_from_host() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("a.b"), "a.b");
    }
}
