//! The other datacenters and their mesh gateways: the datacenters from
//! `/v1/catalog/datacenters` (read again every so often: Consul answers it without
//! blocking), in each the mesh gateways' service names
//! (`/v1/catalog/services?dc=X&filter=ServiceKind == "mesh-gateway"`) and each name's
//! instances (`/v1/health/service/<name>?dc=X`), with blocking queries.
//!
//! A remote gateway is dialled on its WAN address, as Consul's `BestAddress` picks it,
//! and takes traffic unless a check of it is critical (the rule instances have).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use super::{Agent, Event};
use crate::api::agent::KIND_MESH_GATEWAY;
use crate::api::health::ServiceEntry;
use crate::consul::http::path_segment;
use crate::consul::source::endpoints::healthy;
use crate::consul::source::registration::host_port;
use crate::consul::watch::{Blocking, WatchSpec, Watcher};
use crate::gateway::RemoteDatacenter;

/// The catalog filter that lists a datacenter's mesh gateways.
const MESH_GATEWAYS: &str = "ServiceKind == \"mesh-gateway\"";

/// One gateway service in one datacenter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct RemoteKey {
    pub(super) datacenter: String,
    pub(super) name: String,
}

impl RemoteKey {
    pub(super) fn what(&self) -> String {
        format!("the mesh gateways {} in {}", self.name, self.datacenter)
    }

    fn spec(&self) -> WatchSpec {
        WatchSpec::get(
            format!("/v1/health/service/{}", path_segment(&self.name)),
            vec![("dc".to_owned(), self.datacenter.clone())],
            Blocking::Index,
        )
    }
}

/// How the names watch of a datacenter is named in logs and in `/ready`.
pub(super) fn names_what(datacenter: &str) -> String {
    format!("the mesh gateways of {datacenter}")
}

/// The other datacenters as far as the agent answered.
#[derive(Default)]
pub(super) struct RemoteDatacenters {
    /// All datacenters, the gateway's own included; `None` until the agent answered.
    datacenters: Option<BTreeSet<String>>,
    names: HashMap<String, Watcher>,
    /// Each datacenter's gateway service names, once answered.
    answered_names: HashMap<String, BTreeSet<String>>,
    health: HashMap<RemoteKey, Watcher>,
    entries: HashMap<RemoteKey, Vec<ServiceEntry>>,
}

/// Reads the datacenters now and then every `every`, reporting each answer.
pub(super) async fn poll_datacenters(agent: Agent, every: Duration) {
    loop {
        let answer = agent
            .get_json::<Vec<String>>("/v1/catalog/datacenters")
            .await;
        let failed = answer.is_err();
        if agent.events.send(Event::Datacenters(answer)).await.is_err() {
            return;
        }
        // A failure is retried sooner: routing to other datacenters waits on it.
        let pause = if failed {
            every.min(Duration::from_secs(2))
        } else {
            every
        };
        tokio::time::sleep(pause).await;
    }
}

impl RemoteDatacenters {
    pub(super) fn on_datacenters(&mut self, datacenters: Vec<String>) {
        self.datacenters = Some(datacenters.into_iter().collect());
    }

    pub(super) fn on_names(&mut self, datacenter: String, names: BTreeMap<String, Vec<String>>) {
        self.answered_names
            .insert(datacenter, names.into_keys().collect());
    }

    pub(super) fn follows_names(&self, datacenter: &str) -> bool {
        self.names.contains_key(datacenter)
    }

    pub(super) fn follows(&self, key: &RemoteKey) -> bool {
        self.health.contains_key(key)
    }

    pub(super) fn on_gateways(&mut self, key: RemoteKey, entries: Vec<ServiceEntry>) {
        self.entries.insert(key, entries);
    }

    /// The datacenters other than `own`, once both are known.
    fn others<'a>(&'a self, own: Option<&'a str>) -> impl Iterator<Item = &'a String> + 'a {
        let all = own.and(self.datacenters.as_ref());
        all.into_iter()
            .flatten()
            .filter(move |dc| Some(dc.as_str()) != own)
    }

    /// Watches the gateway names of every other datacenter and the instances of every
    /// name; returns what is no longer followed, named as in logs.
    pub(super) fn follow(&mut self, agent: &Agent, own: Option<&str>) -> Vec<String> {
        let wanted_dcs: BTreeSet<String> = self.others(own).cloned().collect();
        let mut gone = Vec::new();
        self.names.retain(|dc, _| {
            let keep = wanted_dcs.contains(dc);
            if !keep {
                gone.push(names_what(dc));
            }
            keep
        });
        self.answered_names.retain(|dc, _| wanted_dcs.contains(dc));
        for dc in &wanted_dcs {
            if !self.names.contains_key(dc) {
                let spec = WatchSpec::get(
                    "/v1/catalog/services".to_owned(),
                    vec![
                        ("dc".to_owned(), dc.clone()),
                        ("filter".to_owned(), MESH_GATEWAYS.to_owned()),
                    ],
                    Blocking::Index,
                );
                let d = dc.clone();
                let watcher = agent.watch(spec, move |u| Event::GatewayNames(d.clone(), u));
                self.names.insert(dc.clone(), watcher);
            }
        }
        let wanted: BTreeSet<RemoteKey> = self
            .answered_names
            .iter()
            .flat_map(|(dc, names)| {
                names.iter().map(|name| RemoteKey {
                    datacenter: dc.clone(),
                    name: name.clone(),
                })
            })
            .collect();
        self.health.retain(|key, _| {
            let keep = wanted.contains(key);
            if !keep {
                gone.push(key.what());
            }
            keep
        });
        self.entries.retain(|key, _| wanted.contains(key));
        for key in wanted {
            if let Entry::Vacant(slot) = self.health.entry(key) {
                let (spec, k) = (slot.key().spec(), slot.key().clone());
                slot.insert(agent.watch(spec, move |u| Event::Gateways(k.clone(), u)));
            }
        }
        gone
    }

    /// Every other datacenter with its healthy gateways' WAN addresses; `None` until
    /// both the datacenters and the gateway's own are known.
    pub(super) fn view(&self, own: Option<&str>) -> Option<BTreeMap<String, RemoteDatacenter>> {
        own.and(self.datacenters.as_ref())?;
        let view = self
            .others(own)
            .map(|dc| (dc.clone(), self.datacenter(dc)))
            .collect();
        Some(view)
    }

    fn datacenter(&self, dc: &str) -> RemoteDatacenter {
        let Some(names) = self.answered_names.get(dc) else {
            return RemoteDatacenter::default();
        };
        let mut answered = false;
        let mut gateways = Vec::new();
        for name in names {
            let key = RemoteKey {
                datacenter: dc.to_owned(),
                name: name.clone(),
            };
            if let Some(entries) = self.entries.get(&key) {
                answered = true;
                gateways.extend(entries.iter().filter_map(wan_address));
            }
        }
        RemoteDatacenter {
            gateways: (answered || names.is_empty()).then_some(gateways),
        }
    }
}

/// A healthy remote mesh gateway's WAN address.
fn wan_address(entry: &ServiceEntry) -> Option<String> {
    if entry.service.kind != KIND_MESH_GATEWAY || !healthy(entry, false) {
        return None;
    }
    let (address, port) = entry.best_address(true);
    (!address.is_empty() && port != 0).then(|| host_port(address, port))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn gateway(wan: serde_json::Value, status: &str) -> ServiceEntry {
        serde_json::from_value(json!({
            "Node": {"Node": "n", "Address": "10.2.0.1", "Datacenter": "dc2",
                     "TaggedAddresses": {"wan": "198.51.100.7"}},
            "Service": {"Kind": "mesh-gateway", "Service": "mesh-gateway",
                        "Address": "10.2.0.5", "Port": 8443, "TaggedAddresses": wan},
            "Checks": [{"Status": status}]
        }))
        .unwrap()
    }

    #[test]
    fn remote_gateways_are_dialled_on_their_wan_address_when_healthy() {
        let tagged = gateway(
            json!({"wan": {"Address": "203.0.113.5", "Port": 443}}),
            "passing",
        );
        assert_eq!(wan_address(&tagged).as_deref(), Some("203.0.113.5:443"));
        let portless = gateway(json!({"wan": {"Address": "203.0.113.5"}}), "warning");
        assert_eq!(wan_address(&portless).as_deref(), Some("203.0.113.5:8443"));
        let untagged = gateway(json!({}), "passing");
        assert_eq!(wan_address(&untagged).as_deref(), Some("10.2.0.5:8443"));
        let mut nodes_wan = gateway(json!({}), "passing");
        nodes_wan.service.address.clear();
        assert_eq!(
            wan_address(&nodes_wan).as_deref(),
            Some("198.51.100.7:8443")
        );
        let critical = gateway(json!({}), "critical");
        assert_eq!(wan_address(&critical), None);
        let mut sidecar = gateway(json!({}), "passing");
        sidecar.service.kind = "connect-proxy".into();
        assert_eq!(
            wan_address(&sidecar),
            None,
            "only mesh gateways carry traffic"
        );
    }

    #[test]
    fn only_other_datacenters_are_followed_and_unanswered_ones_have_no_gateways_yet() {
        let mut remote = RemoteDatacenters::default();
        remote.on_datacenters(vec!["dc1".into(), "dc2".into(), "dc3".into()]);
        assert_eq!(remote.view(None), None, "the own datacenter must be known");
        let view = remote.view(Some("dc1")).unwrap();
        assert_eq!(view.keys().collect::<Vec<_>>(), ["dc2", "dc3"]);
        assert_eq!(view["dc2"].gateways, None);
        remote.on_names(
            "dc2".into(),
            BTreeMap::from([("mesh-gateway".into(), Vec::new())]),
        );
        remote.on_names("dc3".into(), BTreeMap::new());
        let key = RemoteKey {
            datacenter: "dc2".into(),
            name: "mesh-gateway".into(),
        };
        assert_eq!(remote.view(Some("dc1")).unwrap()["dc2"].gateways, None);
        remote.on_gateways(
            key,
            vec![gateway(
                json!({"wan": {"Address": "127.0.0.2", "Port": 9443}}),
                "passing",
            )],
        );
        let view = remote.view(Some("dc1")).unwrap();
        assert_eq!(
            view["dc2"].gateways.as_deref(),
            Some(&["127.0.0.2:9443".to_owned()][..])
        );
        assert_eq!(
            view["dc3"].gateways.as_deref(),
            Some(&[][..]),
            "answered: none"
        );
    }
}
