//! The instances of every target the upstreams' discovery chains end in
//! (`/v1/health/connect/<service>?dc=<dc>&filter=<subset filter>`), which of them are
//! healthy, where to dial each and who must answer there; see
//! `docs/consul-semantics.md#upstream-discovery`.
//!
//! One watch per distinct health query: targets that ask the same (the same service,
//! datacenter and subset filter, in one chain or several) share it. A subset's
//! `OnlyPassing` is applied here, to the entries' checks, as Consul's Envoy does: the
//! agent is not asked for `?passing`.

use std::collections::{BTreeSet, HashMap};

use super::agent::{Agent, Event};
use super::registration::host_port;
use crate::api::health::{PASSING, ServiceEntry};
use crate::consul::http::path_segment;
use crate::consul::watch::{Blocking, WatchSpec, Watcher};
use crate::identity::{DEFAULT, ServiceId};
use crate::model::Endpoint;

/// Check status of an instance in maintenance (some agents report it so).
const MAINTENANCE: &str = "maintenance";
/// Check status that takes an instance out of every target.
const CRITICAL: &str = "critical";

/// One health query: a service's connect-capable instances in a datacenter (`""`: the
/// agent's), narrowed by a subset's filter (`""`: all).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct HealthKey {
    pub(super) service: String,
    pub(super) datacenter: String,
    pub(super) filter: String,
}

impl HealthKey {
    /// How it is named in logs and in `/ready`.
    pub(super) fn what(&self) -> String {
        let mut what = format!("the instances of {}", self.service);
        if !self.datacenter.is_empty() {
            what.push_str(&format!(" in {}", self.datacenter));
        }
        if !self.filter.is_empty() {
            what.push_str(&format!(" ({})", self.filter));
        }
        what
    }

    fn spec(&self) -> WatchSpec {
        let mut query = Vec::new();
        if !self.datacenter.is_empty() {
            query.push(("dc".to_owned(), self.datacenter.clone()));
        }
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

/// One watch per health query the chains need, and the last good answer of each.
#[derive(Default)]
pub(super) struct TargetHealth {
    watches: HashMap<HealthKey, Watcher>,
    entries: HashMap<HealthKey, Vec<ServiceEntry>>,
}

impl TargetHealth {
    /// Watches exactly the queries in `wanted`: new ones start, gone ones stop (and are
    /// returned).
    pub(super) fn follow(&mut self, agent: &Agent, wanted: BTreeSet<HealthKey>) -> Vec<HealthKey> {
        let gone: Vec<HealthKey> = self
            .watches
            .keys()
            .filter(|key| !wanted.contains(*key))
            .cloned()
            .collect();
        for key in &gone {
            self.watches.remove(key);
            self.entries.remove(key);
        }
        for key in wanted {
            if self.watches.contains_key(&key) {
                continue;
            }
            let k = key.clone();
            let watcher = agent.watch(key.spec(), move |u| Event::Health(k.clone(), u));
            self.watches.insert(key, watcher);
        }
        gone
    }

    /// Whether `key` is still followed (a late answer for a dropped one is ignored).
    pub(super) fn follows(&self, key: &HealthKey) -> bool {
        self.watches.contains_key(key)
    }

    pub(super) fn on_answer(&mut self, key: HealthKey, entries: Vec<ServiceEntry>) {
        self.entries.insert(key, entries);
    }

    /// Whether `key` answered with at least one healthy instance: what makes a target
    /// reached through mesh gateways usable (Consul gives the gateways the health of the
    /// target's instances).
    pub(super) fn any_healthy(&self, key: &HealthKey, only_passing: bool) -> bool {
        self.entries
            .get(key)
            .is_some_and(|entries| entries.iter().any(|e| healthy(e, only_passing)))
    }

    /// The healthy instances `key` answered with, pinned in `trust_domain`: critical
    /// ones never, warning ones unless `only_passing`. `target_dc` is the target's
    /// datacenter, `local_dc` the agent's (either may be `""`: unknown); instances in
    /// another datacenter than the agent's are dialled on their WAN address.
    pub(super) fn endpoints(
        &self,
        key: &HealthKey,
        only_passing: bool,
        target_dc: &str,
        local_dc: &str,
        trust_domain: &str,
    ) -> Vec<Endpoint> {
        let Some(entries) = self.entries.get(key) else {
            return Vec::new();
        };
        entries
            .iter()
            .filter(|e| healthy(e, only_passing))
            .filter_map(|e| endpoint(e, target_dc, local_dc, trust_domain))
            .collect()
    }
}

/// Whether Consul's Envoy would send traffic to the instance: no check of the node or
/// the service is critical (an instance in maintenance has a critical check), and with
/// `only_passing` every check passes.
pub(in crate::consul) fn healthy(entry: &ServiceEntry, only_passing: bool) -> bool {
    entry.checks.iter().all(|check| {
        let status = check.status.as_str();
        if only_passing {
            status == PASSING
        } else {
            !status.eq_ignore_ascii_case(CRITICAL) && !status.eq_ignore_ascii_case(MAINTENANCE)
        }
    })
}

/// Where to dial an instance and who must answer there. `fallback_dc` is the
/// datacenter asked (the target's, or the one that answered a query) for an entry that
/// does not name its node's; the instance is dialled on its WAN address when that
/// datacenter is not `local_dc`, as Consul's Envoy does. Instances without a port (e.g.
/// unix sockets) cannot be dialled and are left out.
pub(super) fn endpoint(
    entry: &ServiceEntry,
    fallback_dc: &str,
    local_dc: &str,
    trust_domain: &str,
) -> Option<Endpoint> {
    let svc = &entry.service;
    let datacenter = entry_dc(entry, fallback_dc, local_dc);
    let (address, port) = best_address(entry, is_remote(datacenter, local_dc));
    if address.is_empty() || port == 0 {
        return None;
    }
    let namespace = if svc.namespace.is_empty() {
        DEFAULT
    } else {
        &svc.namespace
    };
    let mut identity = ServiceId::new(
        trust_domain,
        namespace,
        datacenter,
        entry.mesh_service_name(),
    );
    if !svc.partition.is_empty() {
        identity.partition = svc.partition.clone();
    }
    Some(Endpoint {
        addr: host_port(address, port),
        identity,
    })
}

/// The datacenter an entry lives in: its node's, else `fallback`, else `local_dc`.
pub(super) fn entry_dc<'a>(
    entry: &'a ServiceEntry,
    fallback: &'a str,
    local_dc: &'a str,
) -> &'a str {
    [entry.node.datacenter.as_str(), fallback, local_dc]
        .into_iter()
        .find(|dc| !dc.is_empty())
        .unwrap_or_default()
}

/// Whether `datacenter` is another than the local one (both known).
pub(super) fn is_remote(datacenter: &str, local_dc: &str) -> bool {
    !datacenter.is_empty() && !local_dc.is_empty() && datacenter != local_dc
}

/// Consul's best address of an instance. From the same datacenter (`wan` false): the
/// service's address, else the node's, with the service's port. From another: the
/// service's WAN address, else its own, else the node's WAN address, else the node's;
/// the WAN port when it has one, else the service's.
pub(super) fn best_address(entry: &ServiceEntry, wan: bool) -> (&str, u16) {
    let svc = &entry.service;
    let node = &entry.node;
    let own = Some(svc.address.as_str()).filter(|a| !a.is_empty());
    if !wan {
        return (own.unwrap_or(&node.address), svc.port);
    }
    let tagged = svc
        .tagged_addresses
        .get("wan")
        .filter(|a| !a.address.is_empty());
    let address = tagged
        .map(|a| a.address.as_str())
        .or(own)
        .or_else(|| {
            node.tagged_addresses
                .get("wan")
                .map(String::as_str)
                .filter(|a| !a.is_empty())
        })
        .unwrap_or(&node.address);
    let port = tagged
        .map(|a| a.port)
        .filter(|p| *p != 0)
        .unwrap_or(svc.port);
    (address, port)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn endpoints_are_the_remote_sidecars_by_the_documented_rules() {
        let entry: ServiceEntry = serde_json::from_value(json!({
            "Node": { "Node": "box", "Address": "10.0.0.1", "Datacenter": "dc2",
                      "TaggedAddresses": { "wan": "198.51.100.1" } },
            "Service": { "Service": "db-sidecar-proxy", "Address": "", "Port": 21001,
                         "TaggedAddresses": { "wan": { "Address": "203.0.113.9", "Port": 8443 } },
                         "Proxy": { "DestinationServiceName": "db", "LocalServicePort": 5432 } }
        }))
        .unwrap();
        // Seen from its own datacenter: the LAN address.
        let local = endpoint(&entry, "", "dc2", "td.consul").unwrap();
        assert_eq!(
            local.addr, "10.0.0.1:21001",
            "never the app's LocalServicePort"
        );
        assert_eq!(
            local.identity,
            ServiceId::new("td.consul", "default", "dc2", "db")
        );
        // From dc1: the node's datacenter decides, whatever was asked.
        for asked in ["dc2", "", "dc1"] {
            let remote = endpoint(&entry, asked, "dc1", "td.consul").unwrap();
            assert_eq!(remote.addr, "203.0.113.9:8443", "asked {asked:?}");
            assert_eq!(remote.identity.datacenter, "dc2");
        }
        // A node that does not say: the datacenter asked; unknown ones are local.
        let mut unsaid = entry.clone();
        unsaid.node.datacenter.clear();
        let via_asked = endpoint(&unsaid, "dc2", "dc1", "td.consul").unwrap();
        assert_eq!(via_asked.addr, "203.0.113.9:8443");
        assert_eq!(via_asked.identity.datacenter, "dc2");
        assert_eq!(
            endpoint(&unsaid, "", "dc1", "td.consul").unwrap().addr,
            "10.0.0.1:21001"
        );
        assert_eq!(
            endpoint(&unsaid, "", "", "td.consul").unwrap().addr,
            "10.0.0.1:21001"
        );

        let mut wan_port_unset = entry.clone();
        wan_port_unset
            .service
            .tagged_addresses
            .get_mut("wan")
            .unwrap()
            .port = 0;
        assert_eq!(
            endpoint(&wan_port_unset, "dc2", "dc1", "td.consul")
                .unwrap()
                .addr,
            "203.0.113.9:21001",
            "the WAN address with the service's port"
        );
        let mut own_address = entry.clone();
        own_address.service.tagged_addresses.clear();
        own_address.service.address = "10.0.0.7".into();
        assert_eq!(
            endpoint(&own_address, "dc2", "dc1", "td.consul")
                .unwrap()
                .addr,
            "10.0.0.7:21001",
            "the service's own address before the node's WAN address"
        );

        let mut no_svc_wan = entry.clone();
        no_svc_wan.service.tagged_addresses.clear();
        assert_eq!(
            endpoint(&no_svc_wan, "dc2", "dc1", "td.consul")
                .unwrap()
                .addr,
            "198.51.100.1:21001"
        );

        let native: ServiceEntry = serde_json::from_value(json!({
            "Node": { "Address": "10.0.0.2", "Datacenter": "dc1" },
            "Service": { "Service": "db", "Address": "fd00::2", "Port": 6000,
                         "Connect": { "Native": true } }
        }))
        .unwrap();
        let ep = endpoint(&native, "", "dc1", "td.consul").unwrap();
        assert_eq!(ep.addr, "[fd00::2]:6000");
        assert_eq!(ep.identity.service, "db");

        let mut portless = native;
        portless.service.port = 0;
        assert!(endpoint(&portless, "", "dc1", "td.consul").is_none());
    }

    #[test]
    fn a_health_query_names_the_datacenter_and_the_subset_filter_and_never_passing() {
        let key = HealthKey {
            service: "db v2".into(),
            datacenter: "dc2".into(),
            filter: "Service.Meta.version == v2".into(),
        };
        let spec = key.spec();
        assert_eq!(spec.path, "/v1/health/connect/db%20v2");
        assert_eq!(
            spec.query,
            [
                ("dc".to_owned(), "dc2".to_owned()),
                ("filter".to_owned(), "Service.Meta.version == v2".to_owned())
            ]
        );
        assert!(spec.body.is_none());
        assert_eq!(
            key.what(),
            "the instances of db v2 in dc2 (Service.Meta.version == v2)"
        );
        let local = HealthKey {
            service: "db".into(),
            datacenter: String::new(),
            filter: String::new(),
        };
        assert!(local.spec().query.is_empty());
    }
}
