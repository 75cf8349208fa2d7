//! The `[live]` table: a live capture stream (PCAP-over-IP) subscribers connect to, in
//! pcapng or classic pcap, on a TCP address or a unix socket, and who may subscribe: the
//! users listed in `users` (checked by the kernel's word on whose socket connects), from
//! loopback or the unix socket, and whoever is in a network listed in `allow`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use super::units::ByteSize;
use super::users::{self, Db};

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

/// Where the stream listens: `"127.0.0.1:9412"`, or `"unix:/run/wstap/live.sock"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveListen {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A unix socket at this (absolute) path.
    Unix(PathBuf),
}

impl fmt::Display for LiveListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LiveListen::Tcp(addr) => write!(f, "{addr}"),
            LiveListen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl LiveListen {
    /// `"host:port"` or `"unix:/absolute/path"`.
    pub fn parse(s: &str) -> Result<LiveListen, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() || path.file_name().is_none() {
                return Err(format!(
                    "{s:?}: a unix socket needs an absolute path to a file, e.g. \"unix:/run/wstap/live.sock\""
                ));
            }
            return Ok(LiveListen::Unix(path));
        }
        s.parse().map(LiveListen::Tcp).map_err(|_| format!("{s:?} is neither host:port nor unix:/path"))
    }
}

/// A user or group as written: a name, or a number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum NameOrId {
    Id(u32),
    Name(String),
}

impl fmt::Display for NameOrId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameOrId::Id(id) => write!(f, "{id}"),
            NameOrId::Name(name) => write!(f, "{name:?}"),
        }
    }
}

impl NameOrId {
    fn resolve(&self, db: Db) -> Option<u32> {
        match self {
            NameOrId::Id(id) => Some(*id),
            NameOrId::Name(name) => users::id_of(db, name),
        }
    }
}

/// `[live]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLive {
    pub(super) listen: Option<String>,
    #[serde(default)]
    pub(super) format: LiveFormat,
    #[serde(default = "default_max_clients")]
    pub(super) max_clients: usize,
    #[serde(default)]
    pub(super) allow: Vec<String>,
    #[serde(default = "default_buffer")]
    pub(super) buffer: ByteSize,
    /// Absent: wstap's own user and root.
    pub(super) users: Option<Vec<NameOrId>>,
    /// The unix socket's permissions, in octal.
    pub(super) mode: Option<String>,
    /// The unix socket's group.
    pub(super) group: Option<NameOrId>,
}

fn default_max_clients() -> usize {
    8
}

fn default_buffer() -> ByteSize {
    ByteSize(16 << 20)
}

/// The unix socket's mode when `live.mode` is not set: its owner only.
const DEFAULT_MODE: u32 = 0o600;

/// A user allowed to subscribe, as `live.users` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveUser {
    /// Its user id.
    pub uid: u32,
    /// Its name as written, if it was written as a name.
    pub name: Option<String>,
}

/// The unix socket's file: its permissions and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketAccess {
    /// Permission bits (`live.mode`).
    pub mode: u32,
    /// Group id (`live.group`), if one is set.
    pub group: Option<u32>,
}

/// The live stream's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSettings {
    /// Where subscribers connect.
    pub listen: LiveListen,
    /// What they are sent.
    pub format: LiveFormat,
    /// Subscribers at once; past it, a new one is closed at once.
    pub max_clients: usize,
    /// Networks (address, prefix length) non-loopback subscribers must be in.
    pub allow: Vec<(IpAddr, u8)>,
    /// Bytes a subscriber may have waiting (its first section included); past it, it is
    /// disconnected.
    pub buffer: usize,
    /// The users whose sockets may subscribe from this host (loopback, the unix socket).
    pub users: Vec<LiveUser>,
    /// With a unix `listen`: its file's mode and group.
    pub socket: Option<SocketAccess>,
    /// The group as written, for `wstap check`.
    pub(super) group_written: Option<String>,
}

impl LiveSettings {
    /// Whether a subscriber from `ip` may connect: loopback, or in an `allow` network.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_loopback() || self.allow.iter().any(|(net, len)| within(ip, *net, *len))
    }

    /// Whether user `uid`'s sockets may subscribe.
    pub fn admits(&self, uid: u32) -> bool {
        self.users.iter().any(|u| u.uid == uid)
    }
}

/// `ip`, a v4-mapped IPv6 address as its IPv4 one.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
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

/// A failed check: the key under `live.`, and what is wrong.
type Invalid = (String, String);

/// Validates `[live]`. `None`: no stream.
pub(super) fn live(f: Option<FileLive>) -> Result<Option<LiveSettings>, Invalid> {
    let Some(f) = f else { return Ok(None) };
    let Some(listen) = &f.listen else { return Ok(None) };
    let listen = LiveListen::parse(listen).map_err(|msg| ("listen".to_owned(), msg))?;
    if !(1..=1024).contains(&f.max_clients) {
        return Err(("max_clients".into(), format!("must be between 1 and 1024, not {}", f.max_clients)));
    }
    if f.buffer.0 < 64 * 1024 || f.buffer.0 > 1 << 30 {
        return Err(("buffer".into(), "must be between 64KiB and 1GiB".into()));
    }
    let socket = socket_access(&listen, &f)?;
    if matches!(listen, LiveListen::Unix(_)) && !f.allow.is_empty() {
        return Err(("allow".into(), "a unix: listen has no networks: who connects is told by live.users".into()));
    }
    let allow = f.allow.iter().enumerate().map(|(i, a)| network(i, a)).collect::<Result<_, _>>()?;
    Ok(Some(LiveSettings {
        listen,
        format: f.format,
        max_clients: f.max_clients,
        allow,
        buffer: f.buffer.0 as usize,
        users: users(f.users.as_deref())?,
        socket,
        group_written: f.group.as_ref().map(|g| match g {
            NameOrId::Id(id) => id.to_string(),
            NameOrId::Name(n) => n.clone(),
        }),
    }))
}

/// `live.mode` and `live.group`, which only a unix socket has.
fn socket_access(listen: &LiveListen, f: &FileLive) -> Result<Option<SocketAccess>, Invalid> {
    if let LiveListen::Tcp(_) = listen {
        if let Some(key) = [("mode", f.mode.is_some()), ("group", f.group.is_some())].iter().find(|(_, set)| *set) {
            return Err((key.0.into(), "applies to a unix: listen only".into()));
        }
        return Ok(None);
    }
    let mode = match &f.mode {
        None => DEFAULT_MODE,
        Some(m) => u32::from_str_radix(m, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| ("mode".to_owned(), format!("{m:?} is not a mode in octal, e.g. \"0660\"")))?,
    };
    let group = match &f.group {
        None => None,
        Some(g) => {
            Some(g.resolve(Db::Group).ok_or_else(|| ("group".to_owned(), format!("no group {g} on this host")))?)
        }
    };
    Ok(Some(SocketAccess { mode, group }))
}

/// `live.users`, or wstap's own user and root.
fn users(written: Option<&[NameOrId]>) -> Result<Vec<LiveUser>, Invalid> {
    let Some(written) = written else {
        let own = users::own_uid();
        let ids = if own == 0 { vec![0] } else { vec![own, 0] };
        return Ok(ids.into_iter().map(|uid| LiveUser { uid, name: None }).collect());
    };
    let mut out = Vec::new();
    for (i, u) in written.iter().enumerate() {
        let uid = u.resolve(Db::Passwd).ok_or_else(|| (format!("users[{i}]"), format!("no user {u} on this host")))?;
        let name = match u {
            NameOrId::Name(n) if n.parse::<u32>().is_err() => Some(n.clone()),
            _ => None,
        };
        out.push(LiveUser { uid, name });
    }
    Ok(out)
}

/// `allow[i]`, a network: `"10.1.0.0/16"`, `"2001:db8::/32"` or an address.
fn network(i: usize, a: &str) -> Result<(IpAddr, u8), Invalid> {
    let (addr, len) = a.split_once('/').unwrap_or((a, ""));
    let net: IpAddr =
        addr.parse().map_err(|_| (format!("allow[{i}]"), format!("{a:?} is not an address or network")))?;
    let max = if net.is_ipv4() { 32 } else { 128 };
    let len =
        match len {
            "" => max,
            l => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
                (format!("allow[{i}]"), format!("{a:?}: the prefix length must be between 0 and {max}"))
            })?,
        };
    // A v4-mapped network is the v4 one (clients' addresses are compared as v4 too).
    Ok(match net {
        IpAddr::V6(v6) if len >= 96 => v6.to_ipv4_mapped().map_or((net, len), |v4| (IpAddr::V4(v4), len - 96)),
        _ => (net, len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(listen: &str) -> FileLive {
        FileLive {
            listen: Some(listen.into()),
            format: LiveFormat::Pcapng,
            max_clients: 1,
            allow: Vec::new(),
            buffer: ByteSize(1 << 20),
            users: None,
            mode: None,
            group: None,
        }
    }

    #[test]
    fn loopback_and_the_allowed_networks_only() {
        let f = FileLive {
            format: LiveFormat::Pcap,
            max_clients: 2,
            allow: vec![
                "10.1.0.0/16".into(),
                "2001:db8::/32".into(),
                "192.0.2.7".into(),
                "::ffff:198.51.100.0/120".into(),
            ],
            ..file("0.0.0.0:9412")
        };
        let s = live(Some(f)).unwrap().unwrap();
        let ok = |ip: &str| s.allows(ip.parse().unwrap());
        assert!(ok("127.0.0.1") && ok("::1") && ok("::ffff:127.0.0.1"));
        assert!(ok("10.1.200.3") && !ok("10.2.0.1"));
        assert!(ok("2001:db8:1::5") && !ok("2001:db9::1"));
        assert!(ok("192.0.2.7") && !ok("192.0.2.8"));
        assert!(ok("::ffff:10.1.0.9"), "a v4-mapped address is its v4 one");
        assert!(ok("198.51.100.77") && !ok("198.51.101.1"), "and so is a v4-mapped network");
        let bad = |allow: &str| live(Some(FileLive { allow: vec![allow.into()], ..file("127.0.0.1:1") })).unwrap_err();
        assert_eq!(bad("10.0.0.0/33").0, "allow[0]");
        assert_eq!(bad("example.com").0, "allow[0]");
        let everyone = FileLive { allow: vec!["0.0.0.0/0".into()], ..file("127.0.0.1:1") };
        assert!(live(Some(everyone)).unwrap().unwrap().allows("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn by_default_only_wstaps_own_user_and_root_may_subscribe() {
        let s = live(Some(file("127.0.0.1:9412"))).unwrap().unwrap();
        assert!(s.admits(0) && s.admits(users::own_uid()));
        assert!(!s.admits(65534) || users::own_uid() == 65534, "nobody is not admitted");
        let named = FileLive {
            users: Some(vec![NameOrId::Name("root".into()), NameOrId::Id(4321), NameOrId::Name("77".into())]),
            ..file("127.0.0.1:9412")
        };
        let s = live(Some(named)).unwrap().unwrap();
        assert!(s.admits(0) && s.admits(4321) && s.admits(77) && !s.admits(users::own_uid().max(1)));
        assert_eq!(s.users[0].name.as_deref(), Some("root"));
        assert_eq!(s.users[2].name, None, "a number written as a string is a number");
        let unknown = FileLive {
            users: Some(vec![NameOrId::Id(0), NameOrId::Name("no-such-user-here".into())]),
            ..file("127.0.0.1:9412")
        };
        let (key, msg) = live(Some(unknown)).unwrap_err();
        assert_eq!(key, "users[1]");
        assert!(msg.contains("no-such-user-here"), "{msg}");
    }

    #[test]
    fn a_unix_socket_has_a_mode_and_a_group_and_no_networks() {
        let s = live(Some(file("unix:/run/wstap/live.sock"))).unwrap().unwrap();
        assert_eq!(s.listen, LiveListen::Unix("/run/wstap/live.sock".into()));
        assert_eq!(s.listen.to_string(), "unix:/run/wstap/live.sock");
        assert_eq!(s.socket, Some(SocketAccess { mode: 0o600, group: None }));
        let f = FileLive {
            mode: Some("0660".into()),
            group: Some(NameOrId::Name("root".into())),
            ..file("unix:/run/wstap/live.sock")
        };
        assert_eq!(live(Some(f)).unwrap().unwrap().socket, Some(SocketAccess { mode: 0o660, group: Some(0) }));
        let err = |f: FileLive| live(Some(f)).unwrap_err().0;
        assert_eq!(err(file("unix:live.sock")), "listen", "a relative path");
        assert_eq!(err(file("localhost")), "listen");
        assert_eq!(err(FileLive { mode: Some("0999".into()), ..file("unix:/x.sock") }), "mode");
        assert_eq!(err(FileLive { mode: Some("01777".into()), ..file("unix:/x.sock") }), "mode");
        assert_eq!(
            err(FileLive { group: Some(NameOrId::Name("no-such-group-here".into())), ..file("unix:/x.sock") }),
            "group"
        );
        assert_eq!(err(FileLive { allow: vec!["10.0.0.0/8".into()], ..file("unix:/x.sock") }), "allow");
        assert_eq!(err(FileLive { mode: Some("0660".into()), ..file("127.0.0.1:9412") }), "mode", "TCP has no mode");
        assert_eq!(err(FileLive { group: Some(NameOrId::Id(0)), ..file("127.0.0.1:9412") }), "group");
    }

    #[test]
    fn check_names_a_bad_user_and_its_file_and_warns_that_subscribers_get_the_keys() {
        use crate::config::Settings;
        let toml = |live: &str, capture: &str| {
            format!(
                "listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"ws://127.0.0.1:9\"\n[capture]\n{capture}\n[live]\n{live}\n"
            )
        };
        let bad = toml("listen = \"127.0.0.1:9412\"\nusers = [\"root\", \"no-such-user-here\"]", "");
        let err = Settings::parse(&bad, "w.toml".as_ref()).unwrap_err().to_string();
        assert!(err.contains("w.toml") && err.contains("live.users[1]") && err.contains("no-such-user-here"), "{err}");
        let unix = "listen = \"unix:/run/wstap/live.sock\"\nmode = \"0660\"\ngroup = 0\nusers = [\"root\", 1234]";
        let s = Settings::parse(&toml(unix, "tls = \"encrypted\""), "w.toml".as_ref()).unwrap();
        let shown = s.to_string();
        assert!(shown.contains("# WARNING: capture.tls = \"encrypted\": every subscriber"), "{shown}");
        for want in
            ["listen = \"unix:/run/wstap/live.sock\"", "mode = \"0660\"", "group = \"0\"", "users = [\"root\", 1234]"]
        {
            assert!(shown.contains(want), "{want}: {shown}");
        }
        assert_eq!(Settings::parse(&shown, "w.toml".as_ref()).unwrap().live, s.live, "what check prints parses back");
        let plain = Settings::parse(&toml(unix, ""), "w.toml".as_ref()).unwrap().to_string();
        assert!(!plain.contains("every subscriber"), "{plain}");
    }
}
