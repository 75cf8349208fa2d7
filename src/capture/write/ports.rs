//! Which TCP ports Wireshark will not decode a WebSocket session on, and the ports a leg
//! is written with (`capture.display_port`). The table is data
//! (`undecodable-ports.txt`), measured with tshark and checked by a test that asks it.

use std::net::SocketAddr;
use std::sync::LazyLock;

use crate::config::DisplayPort;

/// One bit per port: set when another dissector claims it and wins over HTTP.
static UNDECODABLE: LazyLock<Box<[u64; 1024]>> = LazyLock::new(|| {
    let mut bits = Box::new([0u64; 1024]);
    let table = include_str!("undecodable-ports.txt");
    for port in table.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.trim().parse::<u16>().ok()) {
        bits[usize::from(port / 64)] |= 1 << (port % 64);
    }
    bits
});

/// Whether Wireshark hands a connection using `port` to a dissector other than HTTP's.
pub fn undecodable(port: u16) -> bool {
    UNDECODABLE[usize::from(port / 64)] & (1 << (port % 64)) != 0
}

/// Ports Wireshark's HTTP dissector takes for encrypted ones (its `http.tls.port`): plain
/// HTTP there decodes, with a Warning ("Unencrypted HTTP protocol detected over encrypted
/// port"), so a clean capture (what a TLS listener or upstream on 443 gives when captured
/// decrypted) is written with another port.
const TLS_PORTS: [u16; 1] = [443];

/// The port every leg's server side is written with when Wireshark would not decode the
/// real ones: HTTP's own, and lower than any client's (Wireshark tries the lower port of a
/// connection first).
pub const SAFE_PORT: u16 = 80;

/// The port the server of a connection from `client` to `server` is written with.
pub fn display(client: SocketAddr, server: SocketAddr, how: DisplayPort) -> u16 {
    match how {
        DisplayPort::Real => server.port(),
        DisplayPort::Fixed(port) => port,
        DisplayPort::Auto if undecodable(server.port()) || undecodable(client.port()) => SAFE_PORT,
        DisplayPort::Auto if TLS_PORTS.contains(&server.port()) => SAFE_PORT,
        DisplayPort::Auto => server.port(),
    }
}

/// The port the server of an encrypted leg (TLS records, `capture.tls = "encrypted"`)
/// is written with: 443, which Wireshark's TLS dissector takes (and, past it, HTTP's),
/// unless the real ports are asked for.
pub fn display_encrypted(server: SocketAddr, how: DisplayPort) -> u16 {
    match how {
        DisplayPort::Real => server.port(),
        _ => TLS_PORTS[0],
    }
}

/// The ports in the table, in order (for the test that checks it against tshark).
pub fn table() -> Vec<u16> {
    (0..=u16::MAX).filter(|p| undecodable(*p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_ports_on_either_side_move_the_server_to_80() {
        assert!(undecodable(6379) && undecodable(5432) && undecodable(1883) && undecodable(44321));
        assert!(!undecodable(80) && !undecodable(8080) && !undecodable(443) && !undecodable(9000));
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let (client, redis) = (a("10.0.0.1:40000"), a("10.0.0.2:6379"));
        assert_eq!(display(client, redis, DisplayPort::Auto), 80);
        assert_eq!(display(a("10.0.0.1:44321"), a("10.0.0.2:8123"), DisplayPort::Auto), 80, "a claimed client port");
        assert_eq!(display(client, a("10.0.0.2:8123"), DisplayPort::Auto), 8123);
        assert_eq!(display(client, redis, DisplayPort::Real), 6379);
        assert_eq!(display(client, redis, DisplayPort::Fixed(8080)), 8080);
        assert_eq!(table().len(), 271);
        assert_eq!(display(client, a("10.0.0.2:443"), DisplayPort::Auto), 80, "decrypted TLS is not written as 443");
        let tls = a("10.0.0.2:8443");
        assert_eq!(display_encrypted(tls, DisplayPort::Auto), 443, "TLS records go where Wireshark reads TLS");
        assert_eq!(display_encrypted(tls, DisplayPort::Real), 8443);
    }
}
