//! Who may open a connection: at most `limits.max_connections` at once, and at most
//! `limits.max_connections_per_client` from one client address. The limits are read at
//! each admission, so a reload that lowers them holds for every connection after it
//! (the live ones run on; new ones wait for the count to fall below the new limit).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::proxy::traffic::{ConnectionGuard, Traffic};
use crate::sync::lock;

/// The counts of open client connections.
#[derive(Default)]
pub struct Admission {
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    /// Only addresses with a connection open: the map is as large as the connections.
    per_client: HashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `limits.max_connections` connections are open.
    Total,
    /// This client has `limits.max_connections_per_client` open.
    PerClient,
}

/// Held for as long as an admitted connection lives; its drop frees the place.
pub struct Permit {
    admission: Arc<Admission>,
    client: IpAddr,
    /// Counts the connection in `wstap_connections_active`, from its admission on.
    _open: Option<ConnectionGuard>,
}

impl Admission {
    /// Admits a connection from `client` if both limits allow it (`per_client` 0: none).
    pub fn admit(self: &Arc<Self>, client: IpAddr, max: usize, per_client: usize) -> Result<Permit, Refused> {
        let mut open = lock(&self.open);
        if open.total >= max {
            return Err(Refused::Total);
        }
        let mine = open.per_client.get(&client).copied().unwrap_or(0);
        if per_client != 0 && mine >= per_client {
            return Err(Refused::PerClient);
        }
        open.total += 1;
        open.per_client.insert(client, mine + 1);
        Ok(Permit { admission: self.clone(), client, _open: None })
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        lock(&self.open).total
    }
}

impl Permit {
    /// The permit, counting its connection as open in `traffic` for as long as it lives:
    /// from the accept, so that a TLS handshake in progress, which holds a place, counts.
    pub fn counted_in(mut self, traffic: &Arc<Traffic>) -> Permit {
        self._open = Some(traffic.connection_opened());
        self
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = lock(&self.admission.open);
        open.total -= 1;
        if let Some(n) = open.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.per_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_read_at_each_admission_and_places_come_back() {
        let a = Arc::new(Admission::default());
        let (x, y): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let held: Vec<Permit> = (0..3).map(|_| a.admit(x, 10, 0).unwrap()).collect();
        assert_eq!(a.admit(x, 10, 3).err(), Some(Refused::PerClient));
        assert!(a.admit(y, 10, 3).is_ok(), "another client is not affected");
        // A lower limit (a reload to 1) refuses every new connection while 3 are open.
        assert_eq!(a.admit(y, 1, 0).err(), Some(Refused::Total));
        drop(held);
        assert_eq!(a.open(), 0);
        assert!(a.admit(y, 1, 0).is_ok());
        assert!(lock(&a.open).per_client.is_empty(), "no state is left for clients that left");
    }
}
