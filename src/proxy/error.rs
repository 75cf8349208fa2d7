//! Why a proxied request failed, and whose fault it was. The proxy picks the status code
//! from the kind and logs the leg at fault as its side (`client`, `upstream`), so an
//! operator can tell a broken client from a broken upstream at a glance. No I/O here.

use std::fmt;
use std::time::Duration;

use hyper::StatusCode;

use wstap_wire::dir::Leg;

/// Why a request could not be forwarded.
#[derive(Debug)]
pub enum ProxyError {
    /// No route matches the request's host and path.
    NoRoute,
    /// The client stopped sending its request body for this long.
    BodyTimeout(Duration),
    /// The request's path is refused before routing.
    BadPath(crate::proxy::path::BadPath),
    /// The request is well-formed HTTP but not something a reverse proxy forwards.
    MethodNotAllowed,
    /// The upstream address could not be resolved or refused the connection.
    Connect(std::io::Error),
    /// The TLS handshake with the upstream failed (its certificate, most often).
    UpstreamTls(std::io::Error),
    /// The upstream did not accept the TCP connection in time.
    ConnectTimeout(Duration),
    /// The upstream did not send a response head in time.
    ResponseTimeout(Duration),
    /// The upstream connection failed while sending the request or reading the response.
    Upstream(hyper::Error),
    /// The upstream answered `101` to a request that asked for no upgrade.
    UnexpectedUpgrade,
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Connect(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::Upstream(_)
            | ProxyError::UnexpectedUpgrade => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout(_) | ProxyError::ResponseTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Which failure this is, for the metrics.
    pub fn failure(&self) -> Failure {
        match self {
            ProxyError::NoRoute => Failure::NoRoute,
            ProxyError::BadPath(_) => Failure::BadPath,
            ProxyError::BodyTimeout(_) => Failure::BodyTimeout,
            ProxyError::MethodNotAllowed => Failure::MethodNotAllowed,
            ProxyError::Connect(_) => Failure::Connect,
            ProxyError::UpstreamTls(_) => Failure::Tls,
            ProxyError::ConnectTimeout(_) => Failure::ConnectTimeout,
            ProxyError::ResponseTimeout(_) => Failure::ResponseTimeout,
            ProxyError::Upstream(_) => Failure::UpstreamProtocol,
            ProxyError::UnexpectedUpgrade => Failure::UnexpectedUpgrade,
        }
    }

    /// The leg at fault: the client (it asked for something wstap does not forward) or
    /// the upstream.
    pub fn leg(&self) -> Leg {
        match self {
            ProxyError::NoRoute
            | ProxyError::BadPath(_)
            | ProxyError::BodyTimeout(_)
            | ProxyError::MethodNotAllowed => Leg::Client,
            _ => Leg::Upstream,
        }
    }
}

/// The kinds of failure counted by `wstap_request_errors_total`: every [`ProxyError`],
/// and the ways hyper gives up on a client connection before a request is whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// [`ProxyError::NoRoute`].
    NoRoute,
    /// [`ProxyError::BadPath`].
    BadPath,
    /// [`ProxyError::BodyTimeout`].
    BodyTimeout,
    /// [`ProxyError::MethodNotAllowed`].
    MethodNotAllowed,
    /// [`ProxyError::Connect`].
    Connect,
    /// [`ProxyError::UpstreamTls`].
    Tls,
    /// [`ProxyError::ConnectTimeout`].
    ConnectTimeout,
    /// [`ProxyError::ResponseTimeout`].
    ResponseTimeout,
    /// [`ProxyError::Upstream`].
    UpstreamProtocol,
    /// [`ProxyError::UnexpectedUpgrade`].
    UnexpectedUpgrade,
    /// The request head was larger than hyper's limit (answered 431).
    HeadTooLarge,
    /// The request head did not parse (answered 400).
    Malformed,
    /// The request head did not arrive in time.
    HeadTimeout,
    /// Any other connection error.
    Connection,
}

impl Failure {
    /// The metrics label `kind`.
    pub fn label(self) -> &'static str {
        match self {
            Failure::NoRoute => "no_route",
            Failure::BadPath => "bad_path",
            Failure::BodyTimeout => "body_timeout",
            Failure::MethodNotAllowed => "method_not_allowed",
            Failure::Connect => "connect",
            Failure::Tls => "tls",
            Failure::ConnectTimeout => "connect_timeout",
            Failure::ResponseTimeout => "response_timeout",
            Failure::UpstreamProtocol => "upstream_protocol",
            Failure::UnexpectedUpgrade => "unexpected_upgrade",
            Failure::HeadTooLarge => "head_too_large",
            Failure::Malformed => "malformed",
            Failure::HeadTimeout => "head_timeout",
            Failure::Connection => "connection",
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::NoRoute => f.write_str("no route matches the request"),
            ProxyError::BadPath(why) => write!(f, "bad request path: {why}"),
            ProxyError::BodyTimeout(d) => {
                write!(f, "the client sent no request body bytes for {}", humantime::format_duration(*d))
            }
            ProxyError::MethodNotAllowed => f.write_str("method not allowed through a reverse proxy"),
            ProxyError::Connect(e) => write!(f, "cannot connect to upstream: {e}"),
            ProxyError::UpstreamTls(e) => write!(f, "TLS with the upstream failed: {e}"),
            ProxyError::ConnectTimeout(d) => {
                write!(f, "upstream did not accept the connection within {}", humantime::format_duration(*d))
            }
            ProxyError::ResponseTimeout(d) => {
                write!(f, "upstream sent no response within {}", humantime::format_duration(*d))
            }
            ProxyError::Upstream(e) => write!(f, "upstream connection failed: {e}"),
            ProxyError::UnexpectedUpgrade => f.write_str("upstream switched protocols without being asked"),
        }
    }
}

impl std::error::Error for ProxyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_status_and_side() {
        let d = Duration::from_secs(1);
        let cases = [
            (ProxyError::NoRoute, 404, Leg::Client),
            (ProxyError::MethodNotAllowed, 405, Leg::Client),
            (ProxyError::Connect(std::io::ErrorKind::ConnectionRefused.into()), 502, Leg::Upstream),
            (ProxyError::ConnectTimeout(d), 504, Leg::Upstream),
            (ProxyError::ResponseTimeout(d), 504, Leg::Upstream),
            (ProxyError::UnexpectedUpgrade, 502, Leg::Upstream),
        ];
        for (e, status, side) in cases {
            assert_eq!((e.status().as_u16(), e.leg()), (status, side), "{e}");
        }
    }
}
