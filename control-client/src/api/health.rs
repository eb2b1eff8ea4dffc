//! Consul's health wire types: the entries of `/v1/health/connect/:service` (and
//! `/v1/health/service/:service`); docs/consul-semantics.md#upstream-discovery.
//!
//! The server-side shapes differ from the agent endpoint's in small ways that a faithful
//! dev agent must reproduce: `Node.TaggedAddresses` maps to plain strings, `Service.Proxy`
//! and `Service.Connect` are always emitted (`Proxy.Mode` too, even when empty), and
//! `Service.PeerName` is always present.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};

use super::agent::{AgentServiceConnect, AgentServiceConnectProxyConfig, ServiceAddress};
use super::nullable;

/// Check status that `?passing` keeps.
pub const PASSING: &str = "passing";

/// One instance of a service with its node and checks (`structs.CheckServiceNode`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceEntry {
    pub node: Node,
    pub service: NodeService,
    #[serde(deserialize_with = "nullable")]
    pub checks: Vec<HealthCheck>,
}

impl ServiceEntry {
    /// The service identity the instance's certificate carries: the proxied service for
    /// a connect proxy, the service itself for a Connect-native instance.
    pub fn mesh_service_name(&self) -> &str {
        let native = self.service.connect.native;
        match &self.service.proxy.destination_service_name {
            name if !native && !name.is_empty() => name,
            _ => &self.service.service,
        }
    }

    /// Where Consul would have a peer dial the instance (`CheckServiceNode.BestAddress`):
    /// from another datacenter (`wan`), the service's `wan` tagged address (with its port
    /// when it has one), else the service's address; from the same one, the service's
    /// address. Either way an empty address falls back to the node's (its `wan` tagged
    /// address first, from another datacenter).
    pub fn best_address(&self, wan: bool) -> (&str, u16) {
        let svc = &self.service;
        let (mut address, mut port) = (svc.address.as_str(), svc.port);
        if wan && let Some(tagged) = svc.tagged_addresses.get("wan") {
            address = &tagged.address;
            if tagged.port != 0 {
                port = tagged.port;
            }
        }
        if address.is_empty() {
            let node = &self.node;
            address = node
                .tagged_addresses
                .get("wan")
                .filter(|a| wan && !a.is_empty())
                .unwrap_or(&node.address);
        }
        (address, port)
    }
}

/// A catalog node (`structs.Node`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    #[serde(rename = "ID", deserialize_with = "nullable")]
    pub id: String,
    #[serde(deserialize_with = "nullable")]
    pub node: String,
    #[serde(deserialize_with = "nullable")]
    pub address: String,
    #[serde(deserialize_with = "nullable")]
    pub datacenter: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub partition: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub peer_name: String,
    /// Name → address as a plain string (`lan`, `lan_ipv4`, `wan`, `wan_ipv4`).
    #[serde(deserialize_with = "nullable")]
    pub tagged_addresses: BTreeMap<String, String>,
    #[serde(deserialize_with = "nullable")]
    pub meta: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality: Option<serde_json::Value>,
    #[serde(deserialize_with = "nullable")]
    pub create_index: u64,
    #[serde(deserialize_with = "nullable")]
    pub modify_index: u64,
}

/// A service instance as the catalog holds it (`structs.NodeService`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeService {
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub kind: String,
    #[serde(rename = "ID", deserialize_with = "nullable")]
    pub id: String,
    #[serde(deserialize_with = "nullable")]
    pub service: String,
    #[serde(deserialize_with = "nullable")]
    pub tags: Vec<String>,
    /// `""` means the node's address.
    #[serde(deserialize_with = "nullable")]
    pub address: String,
    /// Name → `{"Address", "Port"}` (lowercase keys in the docs' examples).
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    #[serde(deserialize_with = "nullable")]
    pub meta: BTreeMap<String, String>,
    /// For a connect proxy: its public mTLS port, the one to dial.
    #[serde(deserialize_with = "nullable")]
    pub port: u16,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub socket_path: String,
    /// A Go pointer: `null` when unset.
    pub weights: Option<super::agent::AgentWeights>,
    #[serde(deserialize_with = "nullable")]
    pub enable_tag_override: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality: Option<serde_json::Value>,
    /// Always emitted; near-empty for services that are not proxies.
    #[serde(deserialize_with = "nullable", serialize_with = "proxy_with_mode")]
    pub proxy: AgentServiceConnectProxyConfig,
    /// Always emitted; `{}` unless the instance is Connect-native.
    #[serde(deserialize_with = "nullable")]
    pub connect: AgentServiceConnect,
    /// Always emitted; `""` for services of the local cluster.
    #[serde(deserialize_with = "nullable")]
    pub peer_name: String,
    /// Enterprise only.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    /// Enterprise only.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub partition: String,
    #[serde(deserialize_with = "nullable")]
    pub create_index: u64,
    #[serde(deserialize_with = "nullable")]
    pub modify_index: u64,
}

/// One health check of a node or service (`structs.HealthCheck`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthCheck {
    #[serde(deserialize_with = "nullable")]
    pub node: String,
    #[serde(rename = "CheckID", deserialize_with = "nullable")]
    pub check_id: String,
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// `passing`, `warning`, `critical` or `maintenance`.
    #[serde(deserialize_with = "nullable")]
    pub status: String,
    #[serde(deserialize_with = "nullable")]
    pub notes: String,
    #[serde(deserialize_with = "nullable")]
    pub output: String,
    /// `""` for node checks.
    #[serde(rename = "ServiceID", deserialize_with = "nullable")]
    pub service_id: String,
    #[serde(deserialize_with = "nullable")]
    pub service_name: String,
    #[serde(deserialize_with = "nullable")]
    pub service_tags: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub r#type: String,
    #[serde(deserialize_with = "nullable")]
    pub interval: String,
    #[serde(deserialize_with = "nullable")]
    pub timeout: String,
    #[serde(deserialize_with = "nullable")]
    pub exposed_port: u16,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub peer_name: String,
    /// The check's definition; every field of it is `omitempty`, so `{}` for most.
    #[serde(deserialize_with = "nullable")]
    pub definition: serde_json::Map<String, serde_json::Value>,
    /// Enterprise only.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    #[serde(deserialize_with = "nullable")]
    pub create_index: u64,
    #[serde(deserialize_with = "nullable")]
    pub modify_index: u64,
}

/// The server-side proxy config always carries `Mode`, even empty; the agent endpoint's
/// omits it. One Rust type serves both, so the difference is made here.
fn proxy_with_mode<S: Serializer>(
    proxy: &AgentServiceConnectProxyConfig,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut value = serde_json::to_value(proxy).map_err(serde::ser::Error::custom)?;
    if let serde_json::Value::Object(map) = &mut value {
        map.entry("Mode")
            .or_insert_with(|| serde_json::Value::String(String::new()));
    }
    value.serialize(serializer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Shaped like the docs' `/v1/health/service` example: lowercase tagged-address
    /// keys, no `Proxy`/`Connect`, Enterprise namespaces.
    const DOC_SHAPED: &str = r#"[
      {
        "Node": {
          "ID": "6f0c1a2b-0000-4000-8000-000000000001",
          "Node": "box-1",
          "Address": "10.2.0.5",
          "Datacenter": "east",
          "TaggedAddresses": { "lan": "10.2.0.5", "wan": "198.51.100.5" },
          "Meta": { "rack": "r1" }
        },
        "Service": {
          "ID": "ledger",
          "Service": "ledger",
          "Tags": ["v2"],
          "Address": "10.2.0.5",
          "TaggedAddresses": {
            "lan": { "address": "10.2.0.5", "port": 6000 },
            "wan": { "address": "198.51.100.5", "port": 443 }
          },
          "Meta": { "version": "2" },
          "Port": 6000,
          "Weights": { "Passing": 10, "Warning": 1 },
          "Namespace": "default"
        },
        "Checks": [
          { "Node": "box-1", "CheckID": "service:ledger", "Name": "Service 'ledger' check",
            "Status": "passing", "Notes": "", "Output": "", "ServiceID": "ledger",
            "ServiceName": "ledger", "ServiceTags": ["v2"], "Namespace": "default" },
          { "Node": "box-1", "CheckID": "serfHealth", "Name": "Serf Health Status",
            "Status": "passing", "Notes": "", "Output": "", "ServiceID": "",
            "ServiceName": "", "ServiceTags": [], "Namespace": "default" }
        ]
      }
    ]"#;

    /// Shaped like a real `/v1/health/connect/ledger` answer: a sidecar entry.
    fn real_shaped() -> serde_json::Value {
        json!([
          {
            "Node": {
              "ID": "6f0c1a2b-0000-4000-8000-000000000001", "Node": "box-1",
              "Address": "10.2.0.5", "Datacenter": "east",
              "TaggedAddresses": { "lan": "10.2.0.5", "lan_ipv4": "10.2.0.5",
                                   "wan": "10.2.0.5", "wan_ipv4": "10.2.0.5" },
              "Meta": { "consul-network-segment": "" },
              "CreateIndex": 13, "ModifyIndex": 14
            },
            "Service": {
              "Kind": "connect-proxy", "ID": "ledger-1-sidecar-proxy",
              "Service": "ledger-sidecar-proxy", "Tags": [], "Address": "",
              "Meta": {}, "Port": 21001,
              "Weights": { "Passing": 1, "Warning": 1 }, "EnableTagOverride": false,
              "Proxy": {
                "DestinationServiceName": "ledger", "DestinationServiceID": "ledger-1",
                "LocalServiceAddress": "127.0.0.1", "LocalServicePort": 6000,
                "Mode": "", "MeshGateway": {}, "Expose": {}
              },
              "Connect": {}, "PeerName": "", "CreateIndex": 20, "ModifyIndex": 20
            },
            "Checks": [
              { "Node": "box-1", "CheckID": "serfHealth", "Name": "Serf Health Status",
                "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
                "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Type": "",
                "Interval": "", "Timeout": "", "ExposedPort": 0, "Definition": {},
                "CreateIndex": 13, "ModifyIndex": 13 }
            ]
          }
        ])
    }

    #[test]
    fn parses_the_documented_shape() {
        let entries: Vec<ServiceEntry> = serde_json::from_str(DOC_SHAPED).unwrap();
        let e = &entries[0];
        assert_eq!(e.node.tagged_addresses["wan"], "198.51.100.5");
        assert_eq!(e.service.tagged_addresses["wan"].port, 443);
        assert_eq!(e.service.weights.unwrap().passing, 10);
        assert_eq!(e.checks.len(), 2);
        assert_eq!(e.mesh_service_name(), "ledger");
    }

    #[test]
    fn parses_the_real_shape_and_serializes_it_back() {
        let entries: Vec<ServiceEntry> = serde_json::from_value(real_shaped()).unwrap();
        let e = &entries[0];
        assert_eq!(e.service.port, 21001);
        assert_eq!(e.service.address, "");
        assert_eq!(e.node.address, "10.2.0.5");
        assert_eq!(e.mesh_service_name(), "ledger");
        assert_eq!(serde_json::to_value(&entries).unwrap(), real_shaped());
    }

    #[test]
    fn a_native_instance_is_its_own_identity() {
        let entry: ServiceEntry = serde_json::from_value(json!({
            "Node": { "Node": "n", "Datacenter": "east" },
            "Service": { "ID": "ledger-native", "Service": "ledger", "Port": 6001,
                         "Connect": { "Native": true },
                         "Proxy": { "Mode": "", "MeshGateway": {}, "Expose": {} } },
            "Checks": null
        }))
        .unwrap();
        assert!(entry.checks.is_empty());
        assert_eq!(entry.mesh_service_name(), "ledger");
        let out = serde_json::to_value(&entry).unwrap();
        assert_eq!(out["Service"]["Connect"], json!({ "Native": true }));
        assert_eq!(
            out["Service"]["Proxy"],
            json!({ "Mode": "", "MeshGateway": {}, "Expose": {} })
        );
    }

    #[test]
    fn an_empty_answer_is_an_empty_list() {
        let entries: Vec<ServiceEntry> = serde_json::from_str("[]").unwrap();
        assert!(entries.is_empty());
    }
}
