//! Config entry replication into a secondary datacenter
//! (`docs/consul-semantics.md#datacenters`): Consul's secondaries copy the primary's
//! config entries (intentions are `service-intentions` entries) into their own store,
//! and send every write of them to the primary (`forward`). Here a secondary blocks on
//! the primary's config-entry index (one for every kind, as in Consul's table), then
//! reads every kind it stores and makes its own store equal: entries that changed get
//! this agent's next index, so its own blocking readers (intention matches, chains,
//! defaults) wake as they would for a local write; unchanged ones are left alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use ferrule_control::api::chain::{ServiceResolverEntry, ServiceRouterEntry, ServiceSplitterEntry};
use ferrule_control::api::defaults::{ProxyDefaultsEntry, ServiceDefaultsEntry};
use ferrule_control::api::intentions::ServiceIntentionsEntry;

use super::{RETRY, Reachability, WATCH_TIMEOUT, WATCH_WAIT, next_index, pause};
use crate::state::{Shared, State};

/// Every config entry the dev agent stores, as the primary has them.
#[derive(Debug, Default)]
pub(crate) struct ConfigEntries {
    intentions: Vec<ServiceIntentionsEntry>,
    service_defaults: Vec<ServiceDefaultsEntry>,
    proxy_defaults: Vec<ProxyDefaultsEntry>,
    resolvers: Vec<ServiceResolverEntry>,
    splitters: Vec<ServiceSplitterEntry>,
    routers: Vec<ServiceRouterEntry>,
}

/// A secondary's loop: wait for the primary's config entries to change, copy them.
pub(crate) async fn keep_replicating(shared: Arc<Shared>) {
    let mut index = 0;
    let mut reach = Reachability::default();
    loop {
        match round(&shared, index).await {
            Ok(answered) => {
                reach.succeeded("replicating config entries from the primary");
                index = next_index(index, answered);
                continue;
            }
            Err(e) => reach.failed("replicating config entries from the primary", &e),
        }
        if pause(&shared, RETRY).await {
            return;
        }
    }
}

/// Waits until the primary's config-entry index passes `index`, then copies every
/// entry. Returns the index the wait answered with.
async fn round(shared: &Shared, index: u64) -> Result<u64, String> {
    let addr = shared
        .wan
        .primary_address()
        .ok_or_else(|| "no address for the primary datacenter".to_owned())?;
    let path = format!("/v1/config/proxy-defaults?index={index}&wait={WATCH_WAIT}");
    let waited = tokio::select! {
        waited = shared.wan.client.get(addr, &path, WATCH_TIMEOUT) => waited,
        () = shared.shutdown.cancelled() => return Ok(index),
    }
    .map_err(|e| format!("{addr}: {e}"))?;
    waited
        .json::<serde_json::Value>()
        .map_err(|e| format!("{addr}: {e}"))?;
    let entries = ConfigEntries {
        intentions: list(shared, "service-intentions").await?,
        service_defaults: list(shared, "service-defaults").await?,
        proxy_defaults: list(shared, "proxy-defaults").await?,
        resolvers: list(shared, "service-resolver").await?,
        splitters: list(shared, "service-splitter").await?,
        routers: list(shared, "service-router").await?,
    };
    if shared.with(|state| state.replicate(entries)) {
        tracing::debug!("dev agent: config entries replicated from the primary");
    }
    Ok(waited.index())
}

/// `GET /v1/config/<kind>` on the primary.
async fn list<T: DeserializeOwned>(shared: &Shared, kind: &str) -> Result<Vec<T>, String> {
    let addr = shared
        .wan
        .primary_address()
        .ok_or_else(|| "no address for the primary datacenter".to_owned())?;
    let path = format!("/v1/config/{kind}");
    shared
        .wan
        .client
        .get(addr, &path, WATCH_TIMEOUT)
        .await
        .and_then(|fetched| fetched.json())
        .map_err(|e| format!("{addr}{path}: {e}"))
}

/// An entry's name and raft indexes.
trait Entry: Clone + PartialEq {
    fn key(&self) -> String;
    fn indexes(&mut self) -> (&mut u64, &mut u64);
}

macro_rules! entry {
    ($($t:ty),*) => {$(
        impl Entry for $t {
            fn key(&self) -> String {
                self.name.clone()
            }
            fn indexes(&mut self) -> (&mut u64, &mut u64) {
                (&mut self.create_index, &mut self.modify_index)
            }
        }
    )*};
}
entry!(
    ServiceIntentionsEntry,
    ServiceDefaultsEntry,
    ProxyDefaultsEntry,
    ServiceResolverEntry,
    ServiceSplitterEntry,
    ServiceRouterEntry
);

/// Whether `a` and `b` are the same entry, indexes aside.
fn same<T: Entry>(a: &T, b: &T) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    for entry in [&mut a, &mut b] {
        let (create, modify) = entry.indexes();
        (*create, *modify) = (0, 0);
    }
    a == b
}

/// Makes `local` hold exactly `wanted`; changed and new entries get `index` (an entry
/// keeps its CreateIndex). Returns whether anything changed.
fn mirror<T: Entry>(local: &mut BTreeMap<String, T>, wanted: Vec<T>, index: u64) -> bool {
    let wanted: BTreeMap<String, T> = wanted.into_iter().map(|e| (e.key(), e)).collect();
    let before = local.len();
    local.retain(|key, _| wanted.contains_key(key));
    let mut changed = local.len() != before;
    for (key, mut entry) in wanted {
        let create = match local.get(&key) {
            Some(old) if same(old, &entry) => continue,
            Some(old) => *old.clone().indexes().0,
            None => index,
        };
        let (c, m) = entry.indexes();
        (*c, *m) = (create, index);
        local.insert(key, entry);
        changed = true;
    }
    changed
}

impl State {
    /// Makes this secondary's config entries the primary's, in one write when anything
    /// differs; whether anything did.
    pub(crate) fn replicate(&mut self, entries: ConfigEntries) -> bool {
        // Compared on copies first: an unchanged round must not move the index.
        let index = self.peek_next_index();
        let mut intentions = self.intentions.clone();
        let mut service_defaults = self.service_defaults.clone();
        let mut proxy: BTreeMap<String, ProxyDefaultsEntry> = self
            .proxy_defaults
            .clone()
            .map(|e| (e.key(), e))
            .into_iter()
            .collect();
        let mut chain = self.chain.clone();
        let changed = [
            mirror(&mut intentions, entries.intentions, index),
            mirror(&mut service_defaults, entries.service_defaults, index),
            mirror(&mut proxy, entries.proxy_defaults, index),
            mirror(&mut chain.resolvers, entries.resolvers, index),
            mirror(&mut chain.splitters, entries.splitters, index),
            mirror(&mut chain.routers, entries.routers, index),
        ]
        .contains(&true);
        if !changed {
            return false;
        }
        let index = self.bump();
        self.intentions = intentions;
        self.service_defaults = service_defaults;
        self.proxy_defaults = proxy.into_values().next();
        self.chain = chain;
        self.intentions_index = index;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(name: &str, protocol: &str, at: u64) -> ServiceDefaultsEntry {
        ServiceDefaultsEntry {
            name: name.to_owned(),
            protocol: protocol.to_owned(),
            create_index: at,
            modify_index: at,
            ..ServiceDefaultsEntry::default()
        }
    }

    #[test]
    fn mirroring_keeps_unchanged_entries_and_stamps_the_rest() {
        let mut local: BTreeMap<String, ServiceDefaultsEntry> = [
            ("api".to_owned(), defaults("api", "http", 5)),
            ("db".to_owned(), defaults("db", "tcp", 6)),
            ("old".to_owned(), defaults("old", "tcp", 7)),
        ]
        .into();
        let wanted = vec![
            defaults("api", "http", 40),
            defaults("db", "grpc", 41),
            defaults("new", "http", 42),
        ];
        assert!(mirror(&mut local, wanted.clone(), 9));
        assert_eq!(local["api"], defaults("api", "http", 5), "unchanged");
        assert_eq!((local["db"].create_index, local["db"].modify_index), (6, 9));
        assert_eq!(local["db"].protocol, "grpc");
        assert_eq!(
            (local["new"].create_index, local["new"].modify_index),
            (9, 9)
        );
        assert!(!local.contains_key("old"));
        assert!(!mirror(&mut local, wanted, 10), "the same again: no change");
    }
}
