//! Who a live-stream subscriber is. PCAP-over-IP readers cannot send a password, so the
//! kernel is asked instead: on the unix socket, the peer's credentials (`SO_PEERCRED`);
//! over TCP, the owner of the connecting socket, found in this host's socket tables
//! (`/proc/net/tcp`, `/proc/net/tcp6`: the row whose local end is the peer's address and
//! whose remote end is ours). A connection whose socket is in no table comes from another
//! host (or another network namespace), and only `live.allow` can let it in.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{canonical, users, LiveSettings};
use crate::service::metrics::LiveRefusal;

/// Past this much of a socket table (about 100,000 sockets), a peer is not looked for
/// further: it stays unidentified.
const MAX_TABLE_BYTES: u64 = 16 << 20;

/// A connection to the live stream's listener.
pub(super) enum Conn {
    /// Over TCP, from this address.
    Tcp(TcpStream, SocketAddr),
    /// On the unix socket.
    Unix(UnixStream),
}

impl From<(TcpStream, SocketAddr)> for Conn {
    fn from((s, addr): (TcpStream, SocketAddr)) -> Conn {
        Conn::Tcp(s, addr)
    }
}

impl From<(UnixStream, tokio::net::unix::SocketAddr)> for Conn {
    fn from((s, _): (UnixStream, tokio::net::unix::SocketAddr)) -> Conn {
        Conn::Unix(s)
    }
}

/// A subscriber's socket, as the halves its task reads and writes.
pub(super) type Halves = (Box<dyn AsyncRead + Send + Unpin>, Box<dyn AsyncWrite + Send + Unpin>);

impl Conn {
    /// Who is connecting, as far as the kernel says; a TCP peer's owner is looked for
    /// only when its address may connect at all.
    pub(super) async fn identify(&self, live: &LiveSettings) -> Peer {
        match self {
            Conn::Tcp(_, addr) if !live.allows(addr.ip()) => Peer::Remote { addr: *addr },
            Conn::Tcp(s, addr) => {
                let (addr, ours) = (*addr, s.local_addr());
                let owner = match ours {
                    Ok(ours) => tokio::task::spawn_blocking(move || socket_owner(addr, ours)).await.ok().flatten(),
                    Err(_) => None,
                };
                match owner {
                    Some(uid) => Peer::Local { addr, uid },
                    None if canonical(addr.ip()).is_loopback() => Peer::Unidentified { addr: Some(addr) },
                    None => Peer::Remote { addr },
                }
            }
            Conn::Unix(s) => match s.peer_cred() {
                Ok(cred) => Peer::Unix { uid: cred.uid(), pid: cred.pid() },
                Err(_) => Peer::Unidentified { addr: None },
            },
        }
    }

    /// Its read and write halves.
    pub(super) fn split(self) -> Halves {
        match self {
            Conn::Tcp(s, _) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Conn::Unix(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
        }
    }
}

/// Who a subscriber is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Peer {
    /// Over TCP from a socket of this host, which user `uid` owns.
    Local { addr: SocketAddr, uid: u32 },
    /// Over TCP from a socket this host does not have: another host.
    Remote { addr: SocketAddr },
    /// From loopback (or the unix socket) but no one vouches for it: its socket is gone
    /// from the tables already, or the table was too long to search.
    Unidentified { addr: Option<SocketAddr> },
    /// On the unix socket, by user `uid` (process `pid`).
    Unix { uid: u32, pid: Option<i32> },
}

impl Peer {
    /// Why `live` does not let it subscribe, if it does not: the address rule
    /// (`live.allow`) for TCP, and the user rule (`live.users`) for every connection from
    /// this host.
    pub(super) fn refusal(&self, live: &LiveSettings) -> Option<LiveRefusal> {
        match self {
            Peer::Local { addr, .. } | Peer::Remote { addr } if !live.allows(addr.ip()) => Some(LiveRefusal::Address),
            Peer::Local { uid, .. } | Peer::Unix { uid, .. } if !live.admits(*uid) => Some(LiveRefusal::User),
            Peer::Unidentified { .. } => Some(LiveRefusal::Unidentified),
            _ => None,
        }
    }

    /// The user it connects as, if known.
    pub(super) fn uid(&self) -> Option<u32> {
        match self {
            Peer::Local { uid, .. } | Peer::Unix { uid, .. } => Some(*uid),
            _ => None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = |f: &mut fmt::Formatter<'_>, uid: u32| match users::user_name(uid) {
            Some(name) => write!(f, "uid {uid} ({name})"),
            None => write!(f, "uid {uid}"),
        };
        match self {
            Peer::Local { addr, uid } => {
                write!(f, "{addr}, ")?;
                user(f, *uid)
            }
            Peer::Remote { addr } => write!(f, "{addr}"),
            Peer::Unidentified { addr: Some(addr) } => write!(f, "{addr}, its owner unknown"),
            Peer::Unidentified { addr: None } => write!(f, "the unix socket, its owner unknown"),
            Peer::Unix { uid, pid } => {
                write!(f, "the unix socket, ")?;
                user(f, *uid)?;
                pid.map_or(Ok(()), |pid| write!(f, ", pid {pid}"))
            }
        }
    }
}

/// The user owning this host's socket whose local end is `peer` and remote end `ours`.
fn socket_owner(peer: SocketAddr, ours: SocketAddr) -> Option<u32> {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|table| {
        let file = std::fs::File::open(table).ok()?;
        owner_in(BufReader::new(file.take(MAX_TABLE_BYTES)), peer, ours)
    })
}

/// In a socket table (`/proc/net/tcp`'s format), the owner of the socket from `local` to
/// `remote` (v4-mapped addresses as their v4 ones). A socket no process holds (inode 0:
/// closed, in `TIME_WAIT`) names no one.
fn owner_in(table: impl BufRead, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    let canon = |a: SocketAddr| SocketAddr::new(canonical(a.ip()), a.port());
    let (local, remote) = (canon(local), canon(remote));
    table.lines().skip(1).map_while(Result::ok).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (l, r, uid, inode) = (fields.get(1)?, fields.get(2)?, fields.get(7)?, fields.get(9)?);
        let found = table_addr(l).map(canon) == Some(local) && table_addr(r).map(canon) == Some(remote);
        if !found || *inode == "0" {
            return None;
        }
        uid.parse().ok()
    })
}

/// An address as a socket table writes it: `0100007F:1F90`, the address's bytes as
/// native-endian 32-bit words in hex (one for IPv4, four for IPv6), then the port.
fn table_addr(s: &str) -> Option<SocketAddr> {
    let (hex, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for word in hex.as_bytes().chunks(8) {
        if word.len() != 8 {
            return None;
        }
        let word = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table as a little-endian host writes it: a listener, wstap's accepted socket, the
    /// subscriber's (uid 1000), and a closed one in TIME_WAIT (uid 0, inode 0).
    const TABLE: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:24C4 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0
   1: 0100007F:24C4 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0 20 4 30 10 -1
   2: 0100007F:D431 0100007F:24C4 01 00000000:00000000 00:00000000 00000000  1000        0 1003 1 0 20 4 30 10 -1
   3: 0100007F:D432 0100007F:24C4 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0
";

    #[test]
    #[cfg(target_endian = "little")]
    fn the_owner_of_the_connecting_socket_is_found_and_a_closed_one_names_no_one() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let ours = at("127.0.0.1:9412");
        assert_eq!(owner_in(TABLE.as_bytes(), at("127.0.0.1:54321"), ours), Some(1000));
        assert_eq!(
            owner_in(TABLE.as_bytes(), at("[::ffff:127.0.0.1]:54321"), at("[::ffff:127.0.0.1]:9412")),
            Some(1000)
        );
        assert_eq!(owner_in(TABLE.as_bytes(), at("127.0.0.1:54322"), ours), None, "TIME_WAIT: no one");
        assert_eq!(owner_in(TABLE.as_bytes(), at("127.0.0.1:1"), ours), None);
        assert_eq!(table_addr("00000000000000000000000001000000:0016"), Some(at("[::1]:22")));
        assert_eq!(table_addr("0000000000000000FFFF00000100007F:0016"), Some(at("[::ffff:127.0.0.1]:22")));
        assert_eq!(table_addr("0100007F"), None);
        assert_eq!(table_addr("01007F:0016"), None);
    }

    #[tokio::test]
    async fn this_hosts_tables_name_the_owner_of_a_real_connection() {
        for host in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = tokio::net::TcpListener::bind(host).await else { continue };
            let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (_accepted, peer) = listener.accept().await.unwrap();
            assert_eq!(peer, client.local_addr().unwrap());
            let ours = listener.local_addr().unwrap();
            let owner = tokio::task::spawn_blocking(move || socket_owner(peer, ours)).await.unwrap();
            assert_eq!(owner, Some(users::own_uid()), "{host}");
        }
    }

    #[test]
    fn the_rules_say_who_may_subscribe() {
        let settings = |users: &str, allow: &str| {
            let toml = format!(
                "listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"ws://127.0.0.1:9\"\n\
                 [live]\nlisten = \"0.0.0.0:9412\"\nusers = [{users}]\nallow = [{allow}]\n"
            );
            crate::config::Settings::parse(&toml, "t.toml".as_ref()).unwrap().live.unwrap()
        };
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let live = settings("0, 1000", "\"10.1.0.0/16\"");
        let local = |uid| Peer::Local { addr: at("127.0.0.1:5000"), uid };
        assert_eq!(local(1000).refusal(&live), None);
        assert_eq!(local(65534).refusal(&live), Some(LiveRefusal::User));
        assert_eq!(Peer::Unix { uid: 65534, pid: None }.refusal(&live), Some(LiveRefusal::User));
        assert_eq!(
            Peer::Unidentified { addr: Some(at("127.0.0.1:5000")) }.refusal(&live),
            Some(LiveRefusal::Unidentified)
        );
        assert_eq!(Peer::Remote { addr: at("10.1.2.3:5000") }.refusal(&live), None);
        assert_eq!(Peer::Remote { addr: at("10.2.2.3:5000") }.refusal(&live), Some(LiveRefusal::Address));
        let from_here = Peer::Local { addr: at("10.1.2.3:5000"), uid: 65534 };
        assert_eq!(from_here.refusal(&live), Some(LiveRefusal::User), "this host's users, whatever address");
        // Narrowed: those who no longer qualify are told so.
        let narrowed = settings("0", "");
        assert_eq!(local(1000).refusal(&narrowed), Some(LiveRefusal::User));
        assert_eq!(Peer::Remote { addr: at("10.1.2.3:5000") }.refusal(&narrowed), Some(LiveRefusal::Address));
    }
}
