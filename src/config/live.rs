//! The `[live]` table: a live capture stream (PCAP-over-IP) subscribers connect to, in
//! pcapng or classic pcap, and who may connect: loopback clients, and the networks
//! listed in `allow`.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use super::units::ByteSize;

/// The stream's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LiveFormat {
    /// pcapng, as the files: comments, both interfaces, Decryption Secrets Blocks.
    #[default]
    Pcapng,
    /// Classic pcap with Ethernet II frames (fixed MAC addresses), for readers that take
    /// nothing else (Arkime's PCAP-over-IP reader). No comments, no keys.
    Pcap,
}

/// `[live]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLive {
    pub(super) listen: Option<SocketAddr>,
    #[serde(default)]
    pub(super) format: LiveFormat,
    #[serde(default = "default_max_clients")]
    pub(super) max_clients: usize,
    #[serde(default)]
    pub(super) allow: Vec<String>,
    #[serde(default = "default_buffer")]
    pub(super) buffer: ByteSize,
}

fn default_max_clients() -> usize {
    8
}

fn default_buffer() -> ByteSize {
    ByteSize(16 << 20)
}

/// The live stream's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSettings {
    /// Where subscribers connect.
    pub listen: SocketAddr,
    /// What they are sent.
    pub format: LiveFormat,
    /// Subscribers at once; past it, a new one is closed at once.
    pub max_clients: usize,
    /// Networks (address, prefix length) non-loopback subscribers must be in.
    pub allow: Vec<(IpAddr, u8)>,
    /// Bytes a subscriber may have waiting; past it, it is disconnected.
    pub buffer: usize,
}

impl LiveSettings {
    /// Whether a subscriber from `ip` may connect: loopback, or in an `allow` network.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_loopback() || self.allow.iter().any(|(net, len)| within(ip, *net, *len))
    }
}

/// Whether `ip` is in the network `net`/`len`.
fn within(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    // Both in the top bits of a u128, so a prefix is the top `len` bits either way.
    let bits = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, true),
        IpAddr::V6(v6) => (u128::from(v6), false),
    };
    let ((a, a4), (b, b4)) = (bits(ip), bits(net));
    let prefix = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
    a4 == b4 && a & prefix == b & prefix
}

/// Validates `[live]`; the error is (key under `live.`, what is wrong). `None`: no stream.
pub(super) fn live(f: Option<FileLive>) -> Result<Option<LiveSettings>, (String, String)> {
    let Some(f) = f else { return Ok(None) };
    let Some(listen) = f.listen else { return Ok(None) };
    if !(1..=1024).contains(&f.max_clients) {
        return Err(("max_clients".into(), format!("must be between 1 and 1024, not {}", f.max_clients)));
    }
    if f.buffer.0 < 64 * 1024 || f.buffer.0 > 1 << 30 {
        return Err(("buffer".into(), "must be between 64KiB and 1GiB".into()));
    }
    let mut allow = Vec::new();
    for (i, a) in f.allow.iter().enumerate() {
        let (addr, len) = a.split_once('/').unwrap_or((a, ""));
        let net: IpAddr =
            addr.parse().map_err(|_| (format!("allow[{i}]"), format!("{a:?} is not an address or network")))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            "" => max,
            l => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
                (format!("allow[{i}]"), format!("{a:?}: the prefix length must be between 0 and {max}"))
            })?,
        };
        // A v4-mapped network is the v4 one (clients' addresses are compared as v4 too).
        let (net, len) = match net {
            IpAddr::V6(v6) if len >= 96 => v6.to_ipv4_mapped().map_or((net, len), |v4| (IpAddr::V4(v4), len - 96)),
            _ => (net, len),
        };
        allow.push((net, len));
    }
    Ok(Some(LiveSettings { listen, format: f.format, max_clients: f.max_clients, allow, buffer: f.buffer.0 as usize }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_the_allowed_networks_only() {
        let f = FileLive {
            listen: Some("0.0.0.0:57012".parse().unwrap()),
            format: LiveFormat::Pcap,
            max_clients: 2,
            allow: vec![
                "10.1.0.0/16".into(),
                "2001:db8::/32".into(),
                "192.0.2.7".into(),
                "::ffff:198.51.100.0/120".into(),
            ],
            buffer: ByteSize(1 << 20),
        };
        let s = live(Some(f)).unwrap().unwrap();
        let ok = |ip: &str| s.allows(ip.parse().unwrap());
        assert!(ok("127.0.0.1") && ok("::1") && ok("::ffff:127.0.0.1"));
        assert!(ok("10.1.200.3") && !ok("10.2.0.1"));
        assert!(ok("2001:db8:1::5") && !ok("2001:db9::1"));
        assert!(ok("192.0.2.7") && !ok("192.0.2.8"));
        assert!(ok("::ffff:10.1.0.9"), "a v4-mapped address is its v4 one");
        assert!(ok("198.51.100.77") && !ok("198.51.101.1"), "and so is a v4-mapped network");
        let bad = |allow: &str| {
            let f = FileLive {
                listen: Some("127.0.0.1:1".parse().unwrap()),
                format: LiveFormat::Pcapng,
                max_clients: 1,
                allow: vec![allow.into()],
                buffer: ByteSize(1 << 20),
            };
            live(Some(f)).unwrap_err()
        };
        assert_eq!(bad("10.0.0.0/33").0, "allow[0]");
        assert_eq!(bad("example.com").0, "allow[0]");
        let everyone = FileLive {
            listen: Some("127.0.0.1:1".parse().unwrap()),
            format: LiveFormat::Pcapng,
            max_clients: 1,
            allow: vec!["0.0.0.0/0".into()],
            buffer: ByteSize(1 << 20),
        };
        assert!(live(Some(everyone)).unwrap().unwrap().allows("203.0.113.9".parse().unwrap()));
    }
}
