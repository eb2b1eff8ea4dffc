//! The mesh gateways that carry an upstream's traffic into another datacenter, and
//! which of them to dial for a target there; see
//! `docs/consul-semantics.md#mesh-gateways`.
//!
//! A chain target in another datacenter is reached as its mesh gateway mode says:
//! `none` (or no mode) dials its instances on their WAN address, `local` dials this
//! datacenter's mesh gateways on their LAN address, `remote` the target datacenter's
//! gateways on their WAN address. The server name sent and the identity required stay
//! the target's: a gateway routes on the name and never terminates the TLS.
//!
//! The gateways of a datacenter are its services of kind `mesh-gateway`: their names
//! are watched (`/v1/catalog/services?dc=<dc>&filter=ServiceKind == "mesh-gateway"`),
//! and the instances of each name (`/v1/health/service/<name>?dc=<dc>`), all with
//! blocking queries; a gateway is dialled while all its checks pass. As Consul's Envoy
//! does, gateways stand in for a target only while the target has a healthy instance.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::agent::{Agent, Event};
use super::endpoints::{best_address, entry_dc, healthy, is_remote};
use super::registration::host_port;
use crate::api::health::ServiceEntry;
use crate::consul::http::path_segment;
use crate::consul::watch::{Blocking, WatchSpec, Watcher};
use crate::identity::ServiceId;
use crate::model::Endpoint;

/// `Kind` of a mesh gateway's registration.
pub(super) const KIND_MESH_GATEWAY: &str = "mesh-gateway";

/// How a target in another datacenter is reached: a chain target's `MeshGateway.Mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum GatewayMode {
    /// `none`, or no mode: straight to the target's instances.
    #[default]
    None,
    /// Through this datacenter's mesh gateways.
    Local,
    /// Through the target datacenter's mesh gateways.
    Remote,
}

impl GatewayMode {
    /// Consul's spelling; anything else (Consul refuses it) counts as no mode.
    pub(super) fn parse(mode: &str) -> GatewayMode {
        match mode {
            "local" => GatewayMode::Local,
            "remote" => GatewayMode::Remote,
            _ => GatewayMode::None,
        }
    }

    /// The datacenter whose gateways carry traffic to a target in `target_dc`, seen
    /// from `local_dc`; `None`: the target's instances are dialled (a target in this
    /// datacenter always is, and so is one where either datacenter is unknown).
    pub(super) fn gateway_dc<'a>(self, target_dc: &'a str, local_dc: &'a str) -> Option<&'a str> {
        if !is_remote(target_dc, local_dc) {
            return None;
        }
        match self {
            GatewayMode::None => None,
            GatewayMode::Local => Some(local_dc),
            GatewayMode::Remote => Some(target_dc),
        }
    }
}

/// One gateway service of a datacenter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct GatewayKey {
    pub(super) datacenter: String,
    pub(super) name: String,
}

impl GatewayKey {
    /// How it is named in logs and in `/ready`.
    pub(super) fn what(&self) -> String {
        format!("the mesh gateway {} in {}", self.name, self.datacenter)
    }

    fn spec(&self) -> WatchSpec {
        WatchSpec::get(
            format!("/v1/health/service/{}", path_segment(&self.name)),
            vec![("dc".to_owned(), self.datacenter.clone())],
            Blocking::Index,
        )
    }
}

/// How the gateway names of `datacenter` are named in logs and in `/ready`.
pub(super) fn names_what(datacenter: &str) -> String {
    format!("the mesh gateways of {datacenter}")
}

fn names_spec(datacenter: &str) -> WatchSpec {
    WatchSpec::get(
        "/v1/catalog/services".to_owned(),
        vec![
            ("dc".to_owned(), datacenter.to_owned()),
            (
                "filter".to_owned(),
                format!("ServiceKind == \"{KIND_MESH_GATEWAY}\""),
            ),
        ],
        Blocking::Index,
    )
}

/// The gateways of one datacenter.
struct Datacenter {
    /// `None` only in tests.
    _names: Option<Watcher>,
    /// By service name: its watch and its last answer.
    services: BTreeMap<String, Service>,
}

struct Service {
    /// `None` only in tests.
    _watch: Option<Watcher>,
    entries: Vec<ServiceEntry>,
}

/// The mesh gateways of every datacenter the upstreams need, watched.
#[derive(Default)]
pub(super) struct MeshGateways {
    datacenters: HashMap<String, Datacenter>,
}

impl MeshGateways {
    /// Watches the gateways of exactly the datacenters in `wanted`; returns what is no
    /// longer watched, as named in logs.
    pub(super) fn follow(&mut self, agent: &Agent, wanted: &BTreeSet<String>) -> Vec<String> {
        let gone: Vec<String> = self
            .datacenters
            .keys()
            .filter(|dc| !wanted.contains(*dc))
            .cloned()
            .collect();
        let mut forgotten = Vec::new();
        for dc in gone {
            if let Some(old) = self.datacenters.remove(&dc) {
                forgotten.extend(old.services.keys().map(|name| key(&dc, name).what()));
            }
            forgotten.push(names_what(&dc));
        }
        for dc in wanted {
            if !self.datacenters.contains_key(dc) {
                let d = dc.clone();
                let names = agent.watch(names_spec(dc), move |u| Event::GatewayNames(d.clone(), u));
                let services = BTreeMap::new();
                self.datacenters.insert(
                    dc.clone(),
                    Datacenter {
                        _names: Some(names),
                        services,
                    },
                );
            }
        }
        forgotten
    }

    /// Whether the gateway names of `datacenter` are still watched.
    pub(super) fn follows_dc(&self, datacenter: &str) -> bool {
        self.datacenters.contains_key(datacenter)
    }

    /// Whether `key` is still watched (a late answer for a dropped one is ignored).
    pub(super) fn follows(&self, key: &GatewayKey) -> bool {
        self.datacenters
            .get(&key.datacenter)
            .is_some_and(|d| d.services.contains_key(&key.name))
    }

    /// The gateway names of `datacenter` (the catalog's name → tags): each one's
    /// instances are watched from now on, gone ones no longer (and are returned, as
    /// named in logs).
    pub(super) fn on_names(
        &mut self,
        agent: &Agent,
        datacenter: &str,
        names: &BTreeMap<String, Value>,
    ) -> Vec<String> {
        let Some(dc) = self.datacenters.get_mut(datacenter) else {
            return Vec::new();
        };
        let gone: Vec<String> = dc
            .services
            .keys()
            .filter(|name| !names.contains_key(*name))
            .cloned()
            .collect();
        for name in &gone {
            dc.services.remove(name);
        }
        for name in names.keys() {
            if dc.services.contains_key(name) {
                continue;
            }
            let k = key(datacenter, name);
            let watch = agent.watch(k.spec(), move |u| Event::Gateways(k.clone(), u));
            let entries = Vec::new();
            dc.services.insert(
                name.clone(),
                Service {
                    _watch: Some(watch),
                    entries,
                },
            );
        }
        gone.iter()
            .map(|name| key(datacenter, name).what())
            .collect()
    }

    /// Gateways known without watching them, for tests.
    #[cfg(test)]
    pub(super) fn known(answers: Vec<(GatewayKey, Vec<ServiceEntry>)>) -> MeshGateways {
        let mut gateways = MeshGateways::default();
        for (key, entries) in answers {
            let dc = gateways
                .datacenters
                .entry(key.datacenter)
                .or_insert_with(|| Datacenter {
                    _names: None,
                    services: BTreeMap::new(),
                });
            let service = Service {
                _watch: None,
                entries,
            };
            dc.services.insert(key.name, service);
        }
        gateways
    }

    pub(super) fn on_entries(&mut self, key: &GatewayKey, entries: Vec<ServiceEntry>) {
        if let Some(service) = self
            .datacenters
            .get_mut(&key.datacenter)
            .and_then(|d| d.services.get_mut(&key.name))
        {
            service.entries = entries;
        }
    }

    /// The gateways of `datacenter` to dial for a target that must prove `identity`:
    /// those whose checks all pass, on their LAN address from `local_dc` and on their
    /// WAN address from another datacenter, each address once.
    pub(super) fn endpoints(
        &self,
        datacenter: &str,
        local_dc: &str,
        identity: &ServiceId,
    ) -> Vec<Endpoint> {
        let Some(dc) = self.datacenters.get(datacenter) else {
            return Vec::new();
        };
        let mut endpoints: Vec<Endpoint> = Vec::new();
        let entries = dc.services.values().flat_map(|s| s.entries.iter());
        for entry in entries.filter(|e| healthy(e, true)) {
            let wan = is_remote(entry_dc(entry, datacenter, local_dc), local_dc);
            let (address, port) = best_address(entry, wan);
            if address.is_empty() || port == 0 {
                continue;
            }
            let addr = host_port(address, port);
            if !endpoints.iter().any(|e| e.addr == addr) {
                endpoints.push(Endpoint {
                    addr,
                    identity: identity.clone(),
                });
            }
        }
        endpoints
    }
}

pub(super) fn key(datacenter: &str, name: &str) -> GatewayKey {
    GatewayKey {
        datacenter: datacenter.to_owned(),
        name: name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_is_used_only_for_a_target_in_another_known_datacenter() {
        let (local, remote, none) = (GatewayMode::Local, GatewayMode::Remote, GatewayMode::None);
        assert_eq!(GatewayMode::parse("local"), local);
        assert_eq!(GatewayMode::parse("remote"), remote);
        for mode in ["", "none", "bogus"] {
            assert_eq!(GatewayMode::parse(mode), none);
        }
        assert_eq!(local.gateway_dc("dc2", "dc1"), Some("dc1"));
        assert_eq!(remote.gateway_dc("dc2", "dc1"), Some("dc2"));
        assert_eq!(none.gateway_dc("dc2", "dc1"), None);
        for mode in [local, remote, none] {
            assert_eq!(mode.gateway_dc("dc1", "dc1"), None, "a local target");
            assert_eq!(mode.gateway_dc("dc2", ""), None, "unknown local dc");
            assert_eq!(mode.gateway_dc("", "dc1"), None, "unknown target dc");
        }
    }

    #[test]
    fn the_names_and_instances_of_gateways_are_asked_for_in_their_datacenter() {
        let names = names_spec("dc2");
        assert_eq!(names.path, "/v1/catalog/services");
        assert_eq!(
            names.query,
            [
                ("dc".to_owned(), "dc2".to_owned()),
                (
                    "filter".to_owned(),
                    "ServiceKind == \"mesh-gateway\"".to_owned()
                )
            ]
        );
        let gateway = key("dc2", "mesh gw").spec();
        assert_eq!(gateway.path, "/v1/health/service/mesh%20gw");
        assert_eq!(gateway.query, [("dc".to_owned(), "dc2".to_owned())]);
        assert_eq!(names_what("dc2"), "the mesh gateways of dc2");
        assert_eq!(key("dc2", "gw").what(), "the mesh gateway gw in dc2");
    }
}
