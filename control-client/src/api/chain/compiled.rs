//! The compiled discovery chain (Consul's `CompiledDiscoveryChain`): a graph of
//! router, splitter and resolver nodes keyed `"<type>:<name>"`, walked from
//! `StartNode`, and the targets the resolvers end in, keyed by target ID
//! (`[<subset>.]<service>.<namespace>.<partition>.<datacenter>`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    GoDuration, LoadBalancer, ServiceResolverFailoverPolicy, ServiceResolverSubset, ServiceRoute,
    ServiceSplit, deserialize_weight, serialize_weight,
};
use crate::api::agent::{MeshGatewayConfig, TransparentProxyConfig};
use crate::api::{is_false, nullable};

pub const NODE_ROUTER: &str = "router";
pub const NODE_SPLITTER: &str = "splitter";
pub const NODE_RESOLVER: &str = "resolver";

/// One service's chain as compiled in one datacenter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CompiledDiscoveryChain {
    #[serde(deserialize_with = "nullable")]
    pub service_name: String,
    #[serde(deserialize_with = "nullable")]
    pub namespace: String,
    #[serde(deserialize_with = "nullable")]
    pub partition: String,
    /// The datacenter the chain was compiled in (`compile-dc`).
    #[serde(deserialize_with = "nullable")]
    pub datacenter: String,
    /// Set when a request override changed the result.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub customization_hash: String,
    /// No resolver, splitter or router entry shaped this chain.
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_false")]
    pub default: bool,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub protocol: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub service_meta: BTreeMap<String, String>,
    /// Envoy-specific; kept opaque.
    #[serde(deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub envoy_extensions: Vec<serde_json::Value>,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub start_node: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub nodes: BTreeMap<String, DiscoveryGraphNode>,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub targets: BTreeMap<String, DiscoveryTarget>,
    #[serde(
        rename = "AutoVirtualIPs",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub auto_virtual_ips: Vec<String>,
    #[serde(
        rename = "ManualVirtualIPs",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub manual_virtual_ips: Vec<String>,
}

impl CompiledDiscoveryChain {
    /// The node `StartNode` names.
    pub fn start(&self) -> Option<&DiscoveryGraphNode> {
        self.nodes.get(&self.start_node)
    }
}

/// A node: `Type` says which of `Routes`, `Splits`, `Resolver` it carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DiscoveryGraphNode {
    #[serde(rename = "Type", deserialize_with = "nullable")]
    pub node_type: String,
    /// Not necessarily a service name.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<DiscoveryRoute>,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub splits: Vec<DiscoverySplit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolver: Option<DiscoveryResolver>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
}

impl DiscoveryGraphNode {
    /// Consul's `MapKey`: the key of this node in `Nodes`.
    pub fn map_key(&self) -> String {
        format!("{}:{}", self.node_type, self.name)
    }
}

/// A compiled route: the route as configured, and the node it leads to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DiscoveryRoute {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub definition: Option<ServiceRoute>,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub next_node: String,
}

/// A compiled split. `Weight` is the effective share after nested splitters were
/// flattened and is the one to use; the definition's own weight may differ.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DiscoverySplit {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub definition: Option<ServiceSplit>,
    #[serde(
        serialize_with = "serialize_weight",
        deserialize_with = "deserialize_weight",
        skip_serializing_if = "weight_is_zero"
    )]
    pub weight: f32,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub next_node: String,
}

fn weight_is_zero(weight: &f32) -> bool {
    *weight == 0.0
}

/// A compiled resolver. Consul writes `ConnectTimeout` as a duration string but
/// `RequestTimeout` as integer nanoseconds; both forms are read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DiscoveryResolver {
    /// No service-resolver entry exists for this service.
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_false")]
    pub default: bool,
    #[serde(skip_serializing_if = "GoDuration::is_zero")]
    pub connect_timeout: GoDuration,
    #[serde(
        serialize_with = "GoDuration::serialize_nanos",
        skip_serializing_if = "GoDuration::is_zero"
    )]
    pub request_timeout: GoDuration,
    /// The target ID this resolver resolves to.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover: Option<DiscoveryFailover>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prioritize_by_locality: Option<super::PrioritizeByLocality>,
}

/// The target IDs to try, in order, when the resolver's own target has no healthy
/// instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DiscoveryFailover {
    #[serde(deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<ServiceResolverFailoverPolicy>,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
}

/// A set of instances a chain can end in: one service (and subset) in one namespace,
/// partition and datacenter (or peer), with how to reach it. Go always writes the
/// struct-valued `MeshGateway`, `Subset` and `TransparentProxy`, `{}` when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DiscoveryTarget {
    #[serde(
        rename = "ID",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub id: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub service: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub service_subset: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub partition: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub datacenter: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub peer: String,
    /// Region and zone; kept opaque.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality: Option<serde_json::Value>,
    #[serde(deserialize_with = "nullable")]
    pub mesh_gateway: MeshGatewayConfig,
    #[serde(deserialize_with = "nullable")]
    pub subset: ServiceResolverSubset,
    #[serde(deserialize_with = "nullable")]
    pub transparent_proxy: TransparentProxyConfig,
    #[serde(skip_serializing_if = "GoDuration::is_zero")]
    pub connect_timeout: GoDuration,
    /// Outside this Consul cluster (`ExternalSNI`).
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_false")]
    pub external: bool,
    /// The TLS server name to dial this target with.
    #[serde(
        rename = "SNI",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub sni: String,
    /// A unique name for load balancer objects; SNI-shaped but never customized.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub name: String,
}

/// Consul's chain ID of a target: `<svc>.<ns>.<ap>.<dc>`, with a `<subset>.` prefix
/// when there is a subset, or `<svc>.<ns>.default.external.<peer>` for a peer.
pub fn target_id(
    service: &str,
    subset: &str,
    namespace: &str,
    partition: &str,
    datacenter: &str,
    peer: &str,
) -> String {
    if !peer.is_empty() {
        return format!("{service}.{namespace}.default.external.{peer}");
    }
    if subset.is_empty() {
        format!("{service}.{namespace}.{partition}.{datacenter}")
    } else {
        format!("{subset}.{service}.{namespace}.{partition}.{datacenter}")
    }
}
