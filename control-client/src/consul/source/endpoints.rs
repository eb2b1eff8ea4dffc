//! The healthy instances of each upstream (`/v1/health/connect/<service>`), and where
//! to dial each and who must answer there; see
//! `docs/consul-semantics.md#upstream-discovery`.

use std::collections::{BTreeSet, HashMap};

use super::agent::{Agent, Event};
use super::registration::{Registration, UpstreamKey, host_port};
use crate::api::health::ServiceEntry;
use crate::consul::http::path_segment;
use crate::consul::watch::{Blocking, WatchSpec, Watcher};
use crate::identity::{DEFAULT, ServiceId};
use crate::model::{Endpoint, UpstreamConfig};

/// One watch per upstream the registration names, and the last good answer of each.
#[derive(Default)]
pub(super) struct Endpoints {
    watches: HashMap<UpstreamKey, Watcher>,
    entries: HashMap<UpstreamKey, Vec<ServiceEntry>>,
}

impl Endpoints {
    /// Watches exactly the upstreams in `wanted`: new ones start, gone ones stop.
    pub(super) fn follow(&mut self, agent: &Agent, wanted: BTreeSet<UpstreamKey>) {
        self.watches.retain(|key, _| wanted.contains(key));
        self.entries.retain(|key, _| wanted.contains(key));
        for key in wanted {
            if self.watches.contains_key(&key) {
                continue;
            }
            let mut query = vec![("passing".to_owned(), "1".to_owned())];
            if !key.datacenter.is_empty() {
                query.push(("dc".into(), key.datacenter.clone()));
            }
            let k = key.clone();
            let watcher = agent.watch(
                WatchSpec {
                    path: format!("/v1/health/connect/{}", path_segment(&key.name)),
                    query,
                    blocking: Blocking::Index,
                },
                move |u| Event::Endpoints(k.clone(), u),
            );
            self.watches.insert(key, watcher);
        }
    }

    /// Whether `key` is still followed (a late answer for a dropped one is ignored).
    pub(super) fn follows(&self, key: &UpstreamKey) -> bool {
        self.watches.contains_key(key)
    }

    pub(super) fn on_answer(&mut self, key: UpstreamKey, entries: Vec<ServiceEntry>) {
        self.entries.insert(key, entries);
    }

    /// The registration's upstreams with their endpoints pinned in `trust_domain`.
    /// Without the trust domain no identity can be pinned: no endpoints.
    pub(super) fn upstreams(
        &self,
        reg: &Registration,
        trust_domain: Option<&str>,
        agent_datacenter: &str,
    ) -> Vec<UpstreamConfig> {
        let local_dc = if reg.datacenter.is_empty() {
            agent_datacenter
        } else {
            &reg.datacenter
        };
        reg.upstreams
            .iter()
            .map(|up| {
                let endpoints = match (trust_domain, self.entries.get(&up.key)) {
                    (Some(td), Some(entries)) => entries
                        .iter()
                        .filter_map(|e| endpoint(e, &up.key.datacenter, local_dc, td))
                        .collect(),
                    _ => Vec::new(),
                };
                let dc = if up.key.datacenter.is_empty() {
                    local_dc
                } else {
                    &up.key.datacenter
                };
                let identity =
                    ServiceId::new(trust_domain.unwrap_or_default(), DEFAULT, dc, &up.key.name);
                up.listener.direct(identity, endpoints)
            })
            .collect()
    }
}

/// Where to dial an instance and who must answer there. Instances without a port (e.g.
/// unix sockets) cannot be dialled and are left out.
fn endpoint(
    entry: &ServiceEntry,
    upstream_dc: &str,
    local_dc: &str,
    trust_domain: &str,
) -> Option<Endpoint> {
    let svc = &entry.service;
    let node = &entry.node;
    let remote = !upstream_dc.is_empty() && !local_dc.is_empty() && upstream_dc != local_dc;
    let (address, port) = if remote {
        wan_address(entry)
    } else {
        let address = if svc.address.is_empty() {
            &node.address
        } else {
            &svc.address
        };
        (address.as_str(), svc.port)
    };
    if address.is_empty() || port == 0 {
        return None;
    }
    let datacenter = [node.datacenter.as_str(), upstream_dc, local_dc]
        .into_iter()
        .find(|dc| !dc.is_empty())
        .unwrap_or_default();
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

/// An instance in another datacenter: the service's WAN address, else its own, else
/// the node's WAN address, else the node's.
fn wan_address(entry: &ServiceEntry) -> (&str, u16) {
    let svc = &entry.service;
    let node = &entry.node;
    let wan = svc
        .tagged_addresses
        .get("wan")
        .filter(|a| !a.address.is_empty());
    let address = wan
        .map(|a| a.address.as_str())
        .or_else(|| Some(svc.address.as_str()).filter(|a| !a.is_empty()))
        .or_else(|| {
            node.tagged_addresses
                .get("wan")
                .map(String::as_str)
                .filter(|a| !a.is_empty())
        })
        .unwrap_or(&node.address);
    let port = wan.map(|a| a.port).filter(|p| *p != 0).unwrap_or(svc.port);
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
        let local = endpoint(&entry, "", "dc1", "td.consul").unwrap();
        assert_eq!(
            local.addr, "10.0.0.1:21001",
            "never the app's LocalServicePort"
        );
        assert_eq!(
            local.identity,
            ServiceId::new("td.consul", "default", "dc2", "db")
        );
        let remote = endpoint(&entry, "dc2", "dc1", "td.consul").unwrap();
        assert_eq!(remote.addr, "203.0.113.9:8443");

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
}
