//! The services of the gateway's own datacenter: their names from the catalog
//! (`/v1/catalog/services`, typical services only), every `service-resolver` entry (for
//! the subsets), and one health watch per service and per distinct subset filter
//! (`/v1/health/connect/<service>[?filter=]`), as Consul's mesh gateway watches them.
//!
//! Instances are judged healthy by the sidecar's rule (`consul::source::endpoints`): no
//! critical check, and every check passing for an `OnlyPassing` subset. They are dialled
//! on their LAN address: the gateway is in their datacenter. A name without a subset
//! gets the resolver's `DefaultSubset` when it has one, as Consul's gateway does.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{Agent, Event};
use crate::api::chain::ServiceResolverEntry;
use crate::api::health::ServiceEntry;
use crate::consul::http::path_segment;
use crate::consul::source::endpoints::healthy;
use crate::consul::source::registration::host_port;
use crate::consul::watch::{Blocking, WatchSpec, Watcher};
use crate::gateway::LocalService;

/// The catalog's typical services: what a connect-capable instance can belong to (not
/// proxies, not gateways).
const TYPICAL_SERVICES: &str = "ServiceKind == \"\"";

/// One health query: a service's connect-capable instances, narrowed by a subset's
/// filter (`""`: all).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct LocalKey {
    pub(super) service: String,
    pub(super) filter: String,
}

impl LocalKey {
    /// How it is named in logs and in `/ready`.
    pub(super) fn what(&self) -> String {
        match self.filter.as_str() {
            "" => format!("the instances of {}", self.service),
            filter => format!("the instances of {} ({filter})", self.service),
        }
    }

    fn spec(&self) -> WatchSpec {
        let mut query = Vec::new();
        if !self.filter.is_empty() {
            query.push(("filter".to_owned(), self.filter.clone()));
        }
        WatchSpec::get(
            format!("/v1/health/connect/{}", path_segment(&self.service)),
            query,
            Blocking::Index,
        )
    }
}

/// The local datacenter's services as far as the agent answered.
#[derive(Default)]
pub(super) struct LocalServices {
    watches: Vec<Watcher>,
    /// Service names; `None` until the catalog answered.
    names: Option<BTreeSet<String>>,
    /// Resolver entries by service name; `None` until the agent answered.
    resolvers: Option<BTreeMap<String, ServiceResolverEntry>>,
    health: HashMap<LocalKey, Watcher>,
    entries: HashMap<LocalKey, Vec<ServiceEntry>>,
}

impl LocalServices {
    /// Starts watching the catalog's service names and the resolver entries.
    pub(super) fn start(&mut self, agent: &Agent) {
        let names = WatchSpec::get(
            "/v1/catalog/services".to_owned(),
            vec![("filter".to_owned(), TYPICAL_SERVICES.to_owned())],
            Blocking::Index,
        );
        let resolvers = WatchSpec::get(
            "/v1/config/service-resolver".to_owned(),
            Vec::new(),
            Blocking::Index,
        );
        self.watches = vec![
            agent.watch(names, Event::Services),
            agent.watch(resolvers, Event::Resolvers),
        ];
    }

    pub(super) fn on_names(&mut self, names: BTreeMap<String, Vec<String>>) {
        self.names = Some(names.into_keys().collect());
    }

    pub(super) fn on_resolvers(&mut self, entries: Vec<ServiceResolverEntry>) {
        let by_name = entries.into_iter().map(|e| (e.name.clone(), e)).collect();
        self.resolvers = Some(by_name);
    }

    pub(super) fn follows(&self, key: &LocalKey) -> bool {
        self.health.contains_key(key)
    }

    pub(super) fn on_health(&mut self, key: LocalKey, entries: Vec<ServiceEntry>) {
        self.entries.insert(key, entries);
    }

    /// The health queries the names and resolvers call for: one per service, one per
    /// distinct subset filter.
    fn wanted(&self) -> BTreeSet<LocalKey> {
        let Some(names) = &self.names else {
            return BTreeSet::new();
        };
        let mut wanted = BTreeSet::new();
        for service in names {
            wanted.insert(LocalKey {
                service: service.clone(),
                filter: String::new(),
            });
            let subsets = self
                .resolvers
                .as_ref()
                .and_then(|r| r.get(service))
                .map(|r| r.subsets.values());
            for subset in subsets.into_iter().flatten() {
                wanted.insert(LocalKey {
                    service: service.clone(),
                    filter: subset.filter.clone(),
                });
            }
        }
        wanted
    }

    /// Watches exactly the health queries wanted now; returns the ones dropped.
    pub(super) fn follow(&mut self, agent: &Agent) -> Vec<LocalKey> {
        let wanted = self.wanted();
        let gone: Vec<LocalKey> = self
            .health
            .keys()
            .filter(|key| !wanted.contains(*key))
            .cloned()
            .collect();
        for key in &gone {
            self.health.remove(key);
            self.entries.remove(key);
        }
        for key in wanted {
            if let Entry::Vacant(slot) = self.health.entry(key) {
                let (spec, k) = (slot.key().spec(), slot.key().clone());
                slot.insert(agent.watch(spec, move |u| Event::Health(k.clone(), u)));
            }
        }
        gone
    }

    /// Every service with its instances and subsets, keyed by lower-case name; `None`
    /// until both the catalog and the resolver entries answered.
    pub(super) fn view(&self) -> Option<BTreeMap<String, LocalService>> {
        let names = self.names.as_ref()?;
        let resolvers = self.resolvers.as_ref()?;
        let services = names
            .iter()
            .map(|name| {
                (
                    name.to_ascii_lowercase(),
                    self.service(name, resolvers.get(name)),
                )
            })
            .collect();
        Some(services)
    }

    fn service(&self, name: &str, resolver: Option<&ServiceResolverEntry>) -> LocalService {
        let key = |filter: &str| LocalKey {
            service: name.to_owned(),
            filter: filter.to_owned(),
        };
        let mut instances = self.instances(&key(""), false);
        let mut subsets = BTreeMap::new();
        if let Some(resolver) = resolver {
            for (subset, def) in &resolver.subsets {
                let found = self.instances(&key(&def.filter), def.only_passing);
                subsets.insert(subset.to_ascii_lowercase(), found);
            }
            if let Some(default) = subsets.get(&resolver.default_subset.to_ascii_lowercase())
                && !resolver.default_subset.is_empty()
            {
                instances = default.clone();
            }
        }
        LocalService {
            name: name.to_owned(),
            instances,
            subsets,
        }
    }

    /// Where the healthy instances `key` answered with listen; `None` before an answer.
    fn instances(&self, key: &LocalKey, only_passing: bool) -> Option<Vec<String>> {
        let entries = self.entries.get(key)?;
        let addrs = entries
            .iter()
            .filter(|e| healthy(e, only_passing))
            .filter_map(lan_address)
            .collect();
        Some(addrs)
    }
}

/// An instance in the gateway's datacenter: the service's address, else the node's, and
/// the service's port. Instances without a port (unix sockets) cannot be dialled.
fn lan_address(entry: &ServiceEntry) -> Option<String> {
    let svc = &entry.service;
    let address = if svc.address.is_empty() {
        &entry.node.address
    } else {
        &svc.address
    };
    (!address.is_empty() && svc.port != 0).then(|| host_port(address, svc.port))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry(address: &str, port: u16, meta: &str, status: &str) -> ServiceEntry {
        serde_json::from_value(json!({
            "Node": {"Node": "n", "Address": "10.0.0.9", "Datacenter": "dc1"},
            "Service": {"Kind": "connect-proxy", "Service": "api-sidecar-proxy",
                        "Address": address, "Port": port, "Meta": {"version": meta},
                        "Proxy": {"DestinationServiceName": "api"}},
            "Checks": [{"Status": status}]
        }))
        .unwrap()
    }

    fn resolver(value: serde_json::Value) -> ServiceResolverEntry {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn services_get_their_healthy_instances_and_their_subsets() {
        let mut local = LocalServices::default();
        assert_eq!(local.view(), None, "nothing before the catalog answers");
        local.on_names(BTreeMap::from([("API".to_owned(), Vec::new())]));
        assert_eq!(local.view(), None, "nor before the resolvers answer");
        local.on_resolvers(vec![resolver(json!({
            "Kind": "service-resolver", "Name": "API", "DefaultSubset": "v1",
            "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"},
                        "v2": {"Filter": "Service.Meta.version == v2", "OnlyPassing": true}}
        }))]);
        let wanted: Vec<String> = local.wanted().iter().map(|k| k.filter.clone()).collect();
        assert_eq!(
            wanted,
            [
                "",
                "Service.Meta.version == v1",
                "Service.Meta.version == v2"
            ]
        );
        let key = |filter: &str| LocalKey {
            service: "API".into(),
            filter: filter.into(),
        };
        local.on_health(
            key(""),
            vec![
                entry("", 21000, "v1", "passing"),
                entry("10.0.0.2", 21001, "v2", "warning"),
                entry("10.0.0.3", 21002, "v2", "critical"),
                entry("10.0.0.4", 0, "v1", "passing"),
            ],
        );
        local.on_health(
            key("Service.Meta.version == v2"),
            vec![
                entry("10.0.0.2", 21001, "v2", "warning"),
                entry("10.0.0.5", 21003, "v2", "passing"),
            ],
        );
        let view = local.view().unwrap();
        let api = &view["api"];
        assert_eq!(api.name, "API");
        assert_eq!(api.subsets["v1"], None, "v1 has not answered yet");
        assert_eq!(
            api.subsets["v2"].as_deref(),
            Some(&["10.0.0.5:21003".to_owned()][..]),
            "OnlyPassing leaves the warning instance out"
        );
        assert_eq!(
            api.instances, None,
            "the default subset v1 has not answered"
        );
        local.on_health(
            key("Service.Meta.version == v1"),
            vec![entry("", 21000, "v1", "passing")],
        );
        let view = local.view().unwrap();
        assert_eq!(
            view["api"].instances.as_deref(),
            Some(&["10.0.0.9:21000".to_owned()][..]),
            "the default subset, on the node's address"
        );
    }

    #[test]
    fn without_a_default_subset_a_bare_name_gets_every_healthy_instance() {
        let mut local = LocalServices::default();
        local.on_names(BTreeMap::from([("web".to_owned(), Vec::new())]));
        local.on_resolvers(Vec::new());
        local.on_health(
            LocalKey {
                service: "web".into(),
                filter: String::new(),
            },
            vec![
                entry("fd00::1", 21000, "v1", "passing"),
                entry("10.0.0.2", 21001, "v2", "warning"),
                entry("10.0.0.3", 21002, "v2", "critical"),
            ],
        );
        let view = local.view().unwrap();
        assert_eq!(
            view["web"].instances.as_deref(),
            Some(&["[fd00::1]:21000".to_owned(), "10.0.0.2:21001".to_owned()][..]),
        );
        assert!(view["web"].subsets.is_empty());
    }
}
