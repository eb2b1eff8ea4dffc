//! The discovery chain (`docs/consul-semantics.md#discovery-chain`): the
//! `service-resolver`, `service-splitter` and `service-router` config entries, stored
//! through `/v1/config` like the other kinds (`?cas`, blocking, `?filter` on lists, the
//! data dir), and `/v1/discovery-chain/:service`, which compiles them (`endpoint`,
//! `compile`).
//!
//! A write is checked as Consul's servers check it: the entry alone (`validate`), then
//! every chain that could change, compiled with the entry in place; a delete, and a
//! `service-defaults` or `proxy-defaults` write (a protocol change), are checked the
//! same way. Decoding errors are 400s (`Request decoding failed: ...`); what Consul's
//! server refuses is a 500 with its message, as Consul answers it.

pub(super) mod compile;
pub(super) mod endpoint;
mod graph;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde_json::{Value, json};

use ferrule_control::api::chain::{
    DiscoveryChainRequest, SERVICE_RESOLVER, SERVICE_ROUTER, SERVICE_SPLITTER,
    ServiceResolverEntry, ServiceRouterEntry, ServiceSplitterEntry,
};
use ferrule_control::api::defaults::{ProxyDefaultsEntry, ServiceDefaultsEntry};

use super::blocking::{self, DEFAULT_WAIT};
use super::filter;
use super::http::{ApiError, Call, Reply};
use super::intentions::{cas_allows, enterprise_keys, multierror};
use super::state::{Shared, State};

/// Keys a `GET` answer carries that a `PUT` of the same document may send back.
const READ_ONLY_KEYS: [&str; 3] = ["CreateIndex", "ModifyIndex", "Hash"];

pub(super) fn is_chain_kind(kind: &str) -> bool {
    matches!(kind, SERVICE_RESOLVER | SERVICE_SPLITTER | SERVICE_ROUTER)
}

/// The stored chain entries, each kind by service name.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct ChainEntries {
    pub(super) resolvers: BTreeMap<String, ServiceResolverEntry>,
    pub(super) splitters: BTreeMap<String, ServiceSplitterEntry>,
    pub(super) routers: BTreeMap<String, ServiceRouterEntry>,
}

impl ChainEntries {
    /// Every service with an entry of its own: the chains a change may break.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .resolvers
            .keys()
            .chain(self.splitters.keys())
            .chain(self.routers.keys())
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The ModifyIndex of the `kind` entry named `name`.
    fn modify_index(&self, kind: &str, name: &str) -> Option<u64> {
        match kind {
            SERVICE_RESOLVER => self.resolvers.get(name).map(|e| e.modify_index),
            SERVICE_SPLITTER => self.splitters.get(name).map(|e| e.modify_index),
            _ => self.routers.get(name).map(|e| e.modify_index),
        }
    }

    fn remove(&mut self, kind: &str, name: &str) {
        match kind {
            SERVICE_RESOLVER => self.resolvers.remove(name).map(drop),
            SERVICE_SPLITTER => self.splitters.remove(name).map(drop),
            _ => self.routers.remove(name).map(drop),
        };
    }

    /// One entry as `GET /v1/config/:kind/:name` answers it, or `null`; or the list.
    fn json(&self, kind: &str, name: Option<&str>) -> Value {
        fn pick<T: serde::Serialize>(map: &BTreeMap<String, T>, name: Option<&str>) -> Value {
            match name {
                Some(name) => map.get(name).map_or(Value::Null, |e| json!(e)),
                None => json!(map.values().collect::<Vec<_>>()),
            }
        }
        match kind {
            SERVICE_RESOLVER => pick(&self.resolvers, name),
            SERVICE_SPLITTER => pick(&self.splitters, name),
            _ => pick(&self.routers, name),
        }
    }
}

/// What the compiler reads: the chain entries and the defaults entries.
pub(super) struct Config<'a> {
    pub(super) chain: &'a ChainEntries,
    pub(super) service_defaults: &'a BTreeMap<String, ServiceDefaultsEntry>,
    pub(super) proxy_defaults: Option<&'a ProxyDefaultsEntry>,
}

impl Config<'_> {
    /// proxy-defaults' `Config.protocol`, read as Consul's weak decoding reads it.
    pub(super) fn proxy_protocol(&self) -> String {
        match self.proxy_defaults.and_then(|p| p.config.get("protocol")) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            _ => String::new(),
        }
    }

    /// Compiles every chain that has an entry of its own, plus `also`; the first
    /// failure is Consul's refusal of the change that led here.
    fn check(&self, datacenter: &str, trust_domain: &str, also: &str) -> Result<(), ApiError> {
        let mut names = self.chain.names();
        names.push(also.to_owned());
        let overrides = DiscoveryChainRequest::default();
        for service in names.iter().filter(|n| !n.is_empty()) {
            let request = compile::Request {
                service,
                datacenter,
                trust_domain,
                overrides: &overrides,
            };
            compile::compile(self, &request).map_err(ApiError::internal)?;
        }
        Ok(())
    }
}

impl State {
    pub(super) fn chain_config(&self) -> Config<'_> {
        Config {
            chain: &self.chain,
            service_defaults: &self.service_defaults,
            proxy_defaults: self.proxy_defaults.as_ref(),
        }
    }

    /// Every chain still compiles: checked after a defaults write, which may change
    /// a protocol under a router or splitter.
    pub(super) fn check_chains(&self) -> Result<(), ApiError> {
        self.chain_config()
            .check(&self.node.node.datacenter, &self.ca.trust_domain(), "")
    }
}

/// A decoded entry of one of the three kinds.
enum Entry {
    Resolver(Box<ServiceResolverEntry>),
    Splitter(ServiceSplitterEntry),
    Router(ServiceRouterEntry),
}

impl Entry {
    /// Decodes `raw` as Consul's config decoder would, refusing unknown keys and the
    /// Enterprise `Namespace`/`Partition` of the entry (400s).
    fn decode(raw: Value, kind: &str) -> Result<Entry, ApiError> {
        let mut problems = Vec::new();
        if let Value::Object(top) = &raw {
            enterprise_keys(top, "", &mut problems);
        }
        let mut ignored = Vec::new();
        let decoded = match kind {
            SERVICE_RESOLVER => serde_ignored::deserialize(raw, |p| ignored.push(p.to_string()))
                .map(|e| Entry::Resolver(Box::new(e))),
            SERVICE_SPLITTER => serde_ignored::deserialize(raw, |p| ignored.push(p.to_string()))
                .map(Entry::Splitter),
            _ => {
                serde_ignored::deserialize(raw, |p| ignored.push(p.to_string())).map(Entry::Router)
            }
        };
        let entry =
            decoded.map_err(|e| ApiError::bad_request(format!("Request decoding failed: {e}")))?;
        for path in ignored {
            if !READ_ONLY_KEYS.contains(&path.as_str()) {
                problems.push(format!("invalid config key {path:?}"));
            }
        }
        if !problems.is_empty() {
            return Err(ApiError::bad_request(multierror(
                "Request decoding failed",
                &problems,
            )));
        }
        Ok(entry)
    }

    /// Consul's `Normalize` and `Validate` of the entry alone; the kind is set.
    fn validate(&mut self) -> Result<(), ApiError> {
        match self {
            Entry::Resolver(e) => {
                e.kind = SERVICE_RESOLVER.to_owned();
                validate::resolver(e)
            }
            Entry::Splitter(e) => {
                e.kind = SERVICE_SPLITTER.to_owned();
                validate::splitter(e)
            }
            Entry::Router(e) => {
                e.kind = SERVICE_ROUTER.to_owned();
                validate::router(e)
            }
        }
        .map_err(ApiError::internal)
    }

    fn name(&self) -> &str {
        match self {
            Entry::Resolver(e) => &e.name,
            Entry::Splitter(e) => &e.name,
            Entry::Router(e) => &e.name,
        }
    }

    /// Puts the entry in `chain` with the indexes of the one it replaces; returns
    /// whether it differs from that one.
    fn place(self, chain: &mut ChainEntries) -> bool {
        match self {
            Entry::Resolver(e) => place(&mut chain.resolvers, *e),
            Entry::Splitter(e) => place(&mut chain.splitters, e),
            Entry::Router(e) => place(&mut chain.routers, e),
        }
    }
}

/// The three kinds' name and raft indexes.
trait Stored: Clone + PartialEq {
    fn name(&self) -> &str;
    fn indexes(&mut self) -> (&mut u64, &mut u64);
}

macro_rules! stored {
    ($($t:ty),*) => {$(
        impl Stored for $t {
            fn name(&self) -> &str {
                &self.name
            }
            fn indexes(&mut self) -> (&mut u64, &mut u64) {
                (&mut self.create_index, &mut self.modify_index)
            }
        }
    )*};
}
stored!(
    ServiceResolverEntry,
    ServiceSplitterEntry,
    ServiceRouterEntry
);

fn place<T: Stored>(map: &mut BTreeMap<String, T>, mut entry: T) -> bool {
    let name = entry.name().to_owned();
    let old = map.get(&name).cloned().map(|mut old| {
        let (create, modify) = old.indexes();
        (*create, *modify)
    });
    let (create, modify) = entry.indexes();
    (*create, *modify) = old.unwrap_or((0, 0));
    let changed = map.get(&name) != Some(&entry);
    map.insert(name, entry);
    changed
}

/// Stamps the entry `kind`/`name` of `chain` as written at `index`.
fn stamp(chain: &mut ChainEntries, kind: &str, name: &str, index: u64) {
    fn at<T: Stored>(map: &mut BTreeMap<String, T>, name: &str, index: u64) {
        if let Some(entry) = map.get_mut(name) {
            let (create, modify) = entry.indexes();
            if *create == 0 {
                *create = index;
            }
            *modify = index;
        }
    }
    match kind {
        SERVICE_RESOLVER => at(&mut chain.resolvers, name, index),
        SERVICE_SPLITTER => at(&mut chain.splitters, name, index),
        _ => at(&mut chain.routers, name, index),
    }
}

/// `PUT /v1/config` for a chain kind: `true`, or `false` when `?cas` does not match.
pub(super) fn put(
    shared: &Shared,
    call: &Call,
    raw: Value,
    kind: &str,
    cas: Option<u64>,
) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let mut entry = Entry::decode(raw, kind)?;
    entry.validate()?;
    let name = entry.name().to_owned();
    let datacenter = shared.config.datacenter.clone();
    let written = shared.with(|state| {
        if !cas_allows(cas, state.chain.modify_index(kind, &name)) {
            return Ok(false);
        }
        let mut proposed = state.chain.clone();
        if !entry.place(&mut proposed) {
            return Ok(true);
        }
        let config = Config {
            chain: &proposed,
            ..state.chain_config()
        };
        config.check(&datacenter, &state.ca.trust_domain(), &name)?;
        let index = state.bump();
        stamp(&mut proposed, kind, &name, index);
        state.chain = proposed;
        state.intentions_index = index;
        Ok(true)
    })?;
    Reply::json(&written)
}

/// `GET /v1/config/:kind/:name` and `GET /v1/config/:kind` for a chain kind.
pub(super) async fn get(
    shared: &Shared,
    call: &Call,
    kind: &str,
    name: Option<&str>,
) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let filter = filter::of(call)?;
    let consistency = call.consistency()?;
    let opts = call.blocking()?;
    let mut answer = blocking::by_index(shared, &opts, DEFAULT_WAIT, |state, _| {
        Ok((state.chain.json(kind, name), state.intentions_index))
    })
    .await?;
    if let (None, Value::Array(items)) = (name, &mut answer.value) {
        filter::retain(filter.as_ref(), items);
    }
    if let (Some(name), Value::Null) = (name, &answer.value) {
        return Err(
            ApiError::not_found(format!("Config entry not found for {kind:?} / {name:?}"))
                .with_index(answer.index),
        );
    }
    Ok(Reply::json(&answer.value)?
        .index(answer.index)
        .leader_meta(consistency))
}

/// `DELETE /v1/config/:kind/:name` for a chain kind: `{}`, or with `?cas` whether it
/// was deleted. Refused when a chain would no longer compile without it.
pub(super) fn delete(
    shared: &Shared,
    call: &Call,
    kind: &str,
    name: &str,
    cas: Option<u64>,
) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let datacenter = shared.config.datacenter.clone();
    let deleted = shared.with(|state| {
        let current = state.chain.modify_index(kind, name);
        if !cas_allows(cas, current) || cas == Some(0) {
            return Ok(false);
        }
        if current.is_none() {
            return Ok(true);
        }
        let mut proposed = state.chain.clone();
        proposed.remove(kind, name);
        let config = Config {
            chain: &proposed,
            ..state.chain_config()
        };
        config.check(&datacenter, &state.ca.trust_domain(), name)?;
        state.chain = proposed;
        let index = state.bump();
        state.intentions_index = index;
        Ok(true)
    })?;
    match cas {
        Some(_) => Reply::json(&deleted),
        None => Reply::json(&json!({})),
    }
}
