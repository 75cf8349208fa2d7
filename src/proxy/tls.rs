//! The TLS handshake on a listener that terminates TLS: bounded by
//! `limits.handshake_timeout`, and a failure named in words a log reader and `/metrics`
//! can use (no shared cipher, not TLS at all, closed mid-handshake, a bad client
//! certificate). What was agreed is described for the session's capture comment.

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Why a handshake failed: the `reason` label of `wstap_tls_handshake_failures_total`.
pub fn reason(e: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "closed",
            std::io::ErrorKind::TimedOut => "timeout",
            _ => "io",
        };
    };
    match tls {
        E::InvalidMessage(_) => "not_tls",
        E::PeerIncompatible(_) => "incompatible",
        E::NoCertificatesPresented => "no_client_certificate",
        E::InvalidCertificate(_) => "bad_client_certificate",
        E::AlertReceived(_) => "alert",
        _ => "other",
    }
}

/// Runs the server side of a handshake on `stream`, within `limit`.
pub async fn accept(
    config: Arc<ServerConfig>,
    stream: TcpStream,
    limit: Duration,
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    match tokio::time::timeout(limit, TlsAcceptor::from(config).accept(stream)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no TLS handshake within handshake_timeout")),
    }
}

/// What a finished handshake agreed: `TLS 1.3, TLS13_AES_128_GCM_SHA256, SNI a.example,
/// ALPN http/1.1`. `sni`: the name the client asked for.
pub fn describe(tls: &rustls::CommonState, sni: Option<&str>) -> String {
    let version = match tls.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_owned(),
        v => format!("{v:?}"),
    };
    let suite = tls.negotiated_cipher_suite().map_or_else(|| "no suite".to_owned(), |s| format!("{:?}", s.suite()));
    let sni = sni.map_or_else(|| "no SNI".to_owned(), |n| format!("SNI {n}"));
    let alpn =
        tls.alpn_protocol().map_or_else(|| "no ALPN".to_owned(), |a| format!("ALPN {}", String::from_utf8_lossy(a)));
    format!("{version}, {suite}, {sni}, {alpn}")
}
