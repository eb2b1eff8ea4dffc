//! The client side's store of TLS 1.3 session tickets.
//!
//! rustls' own store keeps at most 8 tickets per server. A sidecar opens connections to
//! an upstream in bursts (every connection its app opens is a new mesh connection), so
//! a burst of more than 8 would find the store empty and pay full handshakes, while the
//! tickets that arrive as those connections finish overflow it. This store keeps more
//! per server, with a bound on the whole, and hands out the newest first. Each ticket is
//! used once (RFC 8446, section C.4). TLS 1.2 sessions and key-exchange hints go to the
//! rustls store unchanged.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use parking_lot::Mutex;
use rustls::NamedGroup;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls_pki_types::ServerName;

/// Tickets kept per server: enough for a burst of new connections to one endpoint.
pub(super) const PER_SERVER: usize = 64;
/// Tickets kept in all, per client config (one config per upstream identity). A ticket
/// is about 1.5 KiB (the ticket, the secret and the server's chain).
pub(super) const TOTAL: usize = 512;

pub(super) struct Tickets {
    tls13: Mutex<Tls13>,
    others: ClientSessionMemoryCache,
}

#[derive(Default)]
struct Tls13 {
    by_server: HashMap<ServerName<'static>, VecDeque<Tls13ClientSessionValue>>,
    total: usize,
}

impl Tickets {
    pub(super) fn new() -> Tickets {
        Tickets {
            tls13: Mutex::new(Tls13::default()),
            others: ClientSessionMemoryCache::new(32),
        }
    }
}

#[cfg(test)]
impl Tickets {
    /// Tickets held in all (checked against the per-server counts), and the most held
    /// for one server.
    pub(super) fn held(&self) -> (usize, usize) {
        let store = self.tls13.lock();
        let sum: usize = store.by_server.values().map(VecDeque::len).sum();
        assert_eq!(sum, store.total);
        let most = store.by_server.values().map(VecDeque::len).max();
        (store.total, most.unwrap_or(0))
    }
}

impl fmt::Debug for Tickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tickets")
            .field("tls13", &self.tls13.lock().total)
            .finish()
    }
}

impl ClientSessionStore for Tickets {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.others.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.others.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.others.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.others.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.others.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let mut store = self.tls13.lock();
        let store = &mut *store;
        let held = store.by_server.get(&server_name).map_or(0, VecDeque::len);
        // Full for this server: its oldest goes. Full in all: the oldest of the server
        // holding most goes, so a server new to the store can still build up its own.
        let from = if held >= PER_SERVER {
            store.by_server.get_mut(&server_name)
        } else if store.total >= TOTAL {
            store.by_server.values_mut().max_by_key(|q| q.len())
        } else {
            None
        };
        if from.and_then(VecDeque::pop_front).is_some() {
            store.total -= 1;
            store.by_server.retain(|_, q| !q.is_empty());
        }
        store
            .by_server
            .entry(server_name)
            .or_default()
            .push_back(value);
        store.total += 1;
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let mut store = self.tls13.lock();
        let queue = store.by_server.get_mut(server_name)?;
        let value = queue.pop_back();
        if queue.is_empty() {
            store.by_server.remove(server_name);
        }
        if value.is_some() {
            store.total -= 1;
        }
        value
    }
}
