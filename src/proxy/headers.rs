//! Header rules of a reverse proxy: hop-by-hop fields (RFC 9110 §7.6.1), the WebSocket
//! upgrade pair, and `X-Forwarded-*`. Pure functions over a `HeaderMap`.

use std::net::IpAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Fields that are hop-by-hop by definition (RFC 9110 §7.6.1), besides those named in
/// `Connection`.
const HOP_BY_HOP: [&str; 6] = ["connection", "proxy-connection", "keep-alive", "te", "transfer-encoding", "upgrade"];

/// The protocol a request asks to upgrade to: `Upgrade`'s value when `Connection` lists
/// the `upgrade` option.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    connection_lists(headers, "upgrade").then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

/// Removes the hop-by-hop fields and every field `Connection` names. When `upgrade` is
/// given, puts back `Connection: upgrade` and `Upgrade: <upgrade>` for the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<&HeaderValue>) {
    let named: Vec<HeaderName> =
        connection_options(headers).filter_map(|o| HeaderName::from_bytes(o.as_bytes()).ok()).collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(proto) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto.clone());
    }
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` (the latter two are overwritten: wstap is the edge that knows).
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, host: Option<&HeaderValue>) {
    const XFF: &str = "x-forwarded-for";
    let prior: Vec<&str> = headers.get_all(XFF).iter().filter_map(|v| v.to_str().ok()).collect();
    let mut chain = prior.join(", ");
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&client.to_string());
    if let Ok(v) = HeaderValue::from_str(&chain) {
        headers.insert(XFF, v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    match host {
        Some(h) => headers.insert("x-forwarded-host", h.clone()),
        None => headers.remove("x-forwarded-host"),
    };
}

/// Whether a `Connection` field lists `option` (any case).
pub fn connection_lists(headers: &HeaderMap, option: &str) -> bool {
    connection_options(headers).any(|o| o.eq_ignore_ascii_case(option))
}

/// Whether a message of `version` with `headers` keeps its connection alive (RFC 9112
/// §9.3): HTTP/1.1 unless `Connection` lists `close`, HTTP/1.0 only if it lists
/// `keep-alive`.
pub fn keeps_alive(headers: &HeaderMap, version: hyper::Version) -> bool {
    match version {
        hyper::Version::HTTP_11 => !connection_lists(headers, "close"),
        hyper::Version::HTTP_10 => connection_lists(headers, "keep-alive"),
        _ => false,
    }
}

/// The comma-separated options of every `Connection` field, trimmed.
fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|o| !o.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h, None);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-keep"]);
    }

    #[test]
    fn websocket_upgrade_survives_as_a_fresh_pair() {
        let mut h = map(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", "k")]);
        let proto = upgrade_protocol(&h).unwrap();
        assert_eq!(proto, "websocket");
        strip_hop_by_hop(&mut h, Some(&proto));
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    #[test]
    fn upgrade_needs_both_fields() {
        assert!(upgrade_protocol(&map(&[("upgrade", "websocket")])).is_none());
        assert!(upgrade_protocol(&map(&[("connection", "upgrade")])).is_none());
        assert!(upgrade_protocol(&map(&[
            ("connection", "close"),
            ("connection", "UPGRADE"),
            ("upgrade", "websocket")
        ]))
        .is_some());
    }

    #[test]
    fn forwarded_headers_append_and_overwrite() {
        let mut h =
            map(&[("x-forwarded-for", "10.0.0.1"), ("x-forwarded-for", "10.0.0.2"), ("x-forwarded-proto", "https")]);
        add_forwarded(&mut h, "192.0.2.7".parse().unwrap(), Some(&HeaderValue::from_static("app.example")));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }
}
