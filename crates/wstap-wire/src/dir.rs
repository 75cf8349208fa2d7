//! The two ideas every part of wstap shares, named once: which way bytes travel through
//! a session ([`Dir`]) and which of its two connections carries them ([`Leg`]), with a
//! pair of values indexed by each ([`PerDir`], [`PerLeg`]).
//!
//! ```text
//!            Leg::Client                      Leg::Upstream
//!   client ────────────────▶ wstap ────────────────────────▶ upstream     Dir::Up
//!   client ◀──────────────── wstap ◀──────────────────────── upstream     Dir::Down
//! ```
//!
//! `Up` is the way the client's bytes go, toward the upstream (the server); `Down` is the
//! way back. The end that sends `Up` is also the end that opened the TCP connection: the
//! client on the client leg, wstap on the upstream leg. So wstap reads `Up` bytes on the
//! client leg and `Down` bytes on the upstream leg ([`Leg::inbound`]).

use std::ops::{Index, IndexMut};

/// Which way bytes travel: `Up` from the client toward the server, `Down` back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    /// Client → server: the client's requests and messages; on a TCP connection, what its
    /// opener sends.
    Up,
    /// Server → client: responses and the server's messages.
    Down,
}

impl Dir {
    /// Both directions, `Up` first.
    pub const BOTH: [Dir; 2] = [Dir::Up, Dir::Down];

    /// The other direction.
    pub fn reverse(self) -> Dir {
        match self {
            Dir::Up => Dir::Down,
            Dir::Down => Dir::Up,
        }
    }

    /// Who sends this way: `"client"` or `"server"`.
    pub fn sender(self) -> &'static str {
        match self {
            Dir::Up => "client",
            Dir::Down => "server",
        }
    }

    /// `C→S` or `S→C`, as listings show a message's direction.
    pub fn arrow(self) -> &'static str {
        match self {
            Dir::Up => "C→S",
            Dir::Down => "S→C",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The two connections of a proxied session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Leg {
    /// Client ↔ wstap's listener. The client opened it.
    Client,
    /// wstap ↔ upstream. wstap opened it.
    Upstream,
}

impl Leg {
    /// Both legs, `Client` first.
    pub const BOTH: [Leg; 2] = [Leg::Client, Leg::Upstream];

    /// `"client"` or `"upstream"`: the capture interface's name, the metrics labels `leg`
    /// and `side` (whose fault a failure was), and the log field `side`.
    pub fn name(self) -> &'static str {
        match self {
            Leg::Client => "client",
            Leg::Upstream => "upstream",
        }
    }

    /// The other leg.
    pub fn other(self) -> Leg {
        match self {
            Leg::Client => Leg::Upstream,
            Leg::Upstream => Leg::Client,
        }
    }

    /// The direction of the bytes wstap reads on this leg (`Up` from the client, `Down`
    /// from the upstream); it writes the other.
    pub fn inbound(self) -> Dir {
        match self {
            Leg::Client => Dir::Up,
            Leg::Upstream => Dir::Down,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Defines a pair of `T`, one for each value of a two-valued key.
macro_rules! pair {
    ($(#[$doc:meta])* $name:ident, $key:ident, $first:ident, $second:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct $name<T>([T; 2]);

        impl<T> $name<T> {
            #[doc = concat!("A pair from its `", stringify!($first), "` and `", stringify!($second), "` values.")]
            pub const fn new($first: T, $second: T) -> Self {
                $name([$first, $second])
            }

            /// Each value, paired with its key.
            pub fn iter(&self) -> impl Iterator<Item = ($key, &T)> {
                $key::BOTH.into_iter().zip(&self.0)
            }

            /// Each value, to change.
            pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
                self.0.iter_mut()
            }

            /// The pair with `f` applied to each value.
            pub fn map<U>(self, mut f: impl FnMut($key, T) -> U) -> $name<U> {
                let [a, b] = self.0;
                $name([f($key::BOTH[0], a), f($key::BOTH[1], b)])
            }

            /// A pair of references to the values.
            pub fn by_ref(&self) -> $name<&T> {
                let [a, b] = &self.0;
                $name([a, b])
            }
        }

        impl<T> Index<$key> for $name<T> {
            type Output = T;
            fn index(&self, key: $key) -> &T {
                &self.0[key.index()]
            }
        }

        impl<T> IndexMut<$key> for $name<T> {
            fn index_mut(&mut self, key: $key) -> &mut T {
                &mut self.0[key.index()]
            }
        }
    };
}

pair!(
    /// One value for each direction, indexed by [`Dir`].
    PerDir,
    Dir,
    up,
    down
);

pair!(
    /// One value for each leg, indexed by [`Leg`].
    PerLeg,
    Leg,
    client,
    upstream
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_index_by_key_and_legs_know_what_wstap_reads() {
        let mut bytes = PerDir::new(1, 2);
        bytes[Dir::Down] += 10;
        assert_eq!((bytes[Dir::Up], bytes[Dir::Down]), (1, 12));
        assert_eq!(bytes.map(|d, n| (d, n * 2)), PerDir::new((Dir::Up, 2), (Dir::Down, 24)));
        assert_eq!(bytes.iter().map(|(d, n)| (d.sender(), *n)).collect::<Vec<_>>(), [("client", 1), ("server", 12)]);
        assert_eq!(Leg::Client.inbound(), Dir::Up);
        assert_eq!(Leg::Upstream.inbound().reverse(), Dir::Up, "wstap writes Up on the upstream leg");
        let legs = PerLeg::new("a", "b");
        assert_eq!((legs[Leg::Client], legs[Leg::Upstream]), ("a", "b"));
    }
}
