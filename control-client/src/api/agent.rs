//! Consul's agent service wire types: `/v1/agent/service/:id` and `/v1/agent/services`
//! (`api.AgentService`; docs/consul-semantics.md#sidecar-registration), and the body of `PUT /v1/agent/service/register`
//! (`api.AgentServiceRegistration`, with `Connect.SidecarService`).
//!
//! Output is PascalCase with Consul's `omitempty` rules (real agents always emit
//! `Proxy.MeshGateway` and `Proxy.Expose` as objects, `Tags` as `[]`, `Meta` as `{}`).
//! Registration input is decoded by Consul case-insensitively and with snake_case
//! translations (`local_service_port`, `sidecar_service`, …), so every field that a
//! registration can carry also takes its snake_case spelling as an alias. The documented
//! examples' lowercase `address`/`port` in `TaggedAddresses` are accepted too.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Deserializer, Serialize};

use super::{is_false, is_zero, nullable};

/// `Kind` of a sidecar or other connect proxy.
pub const KIND_CONNECT_PROXY: &str = "connect-proxy";
/// `Kind` of a mesh gateway.
pub const KIND_MESH_GATEWAY: &str = "mesh-gateway";
/// `DestinationType` of an upstream that names a service (the default).
pub const DESTINATION_SERVICE: &str = "service";
/// `DestinationType` of an upstream that names a prepared query.
pub const DESTINATION_PREPARED_QUERY: &str = "prepared_query";

/// The body of `/v1/agent/services`: service ID → service.
pub type AgentServices = HashMap<String, AgentService>;

/// One locally registered service instance, as the agent reports it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentService {
    /// `connect-proxy` for sidecars; absent for plain services.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub kind: String,
    #[serde(rename = "ID", deserialize_with = "nullable")]
    pub id: String,
    /// The service name.
    #[serde(deserialize_with = "nullable")]
    pub service: String,
    #[serde(deserialize_with = "nullable")]
    pub tags: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub meta: BTreeMap<String, String>,
    /// For a proxy: its public mTLS listener port.
    #[serde(deserialize_with = "nullable")]
    pub port: u16,
    /// `""` means "the node's address".
    #[serde(deserialize_with = "nullable")]
    pub address: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub socket_path: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    #[serde(deserialize_with = "nullable")]
    pub weights: AgentWeights,
    #[serde(deserialize_with = "nullable")]
    pub enable_tag_override: bool,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_zero")]
    pub create_index: u64,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_zero")]
    pub modify_index: u64,
    /// Only on `/v1/agent/service/:id`; equals the `X-Consul-ContentHash` header.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub content_hash: String,
    /// Present for connect proxies and gateways, with central config merged in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<AgentServiceConnectProxyConfig>,
    /// Only for Connect-native services (`{"Native": true}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<AgentServiceConnect>,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub peer_name: String,
    /// Enterprise only; absent on CE.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    /// Enterprise only; absent on CE.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub partition: String,
    /// The agent's datacenter (output only).
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub datacenter: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality: Option<serde_json::Value>,
}

impl AgentService {
    pub fn is_connect_proxy(&self) -> bool {
        self.kind == KIND_CONNECT_PROXY
    }
}

/// An entry of `TaggedAddresses` on a service: `{"Address": …, "Port": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceAddress {
    #[serde(alias = "address", deserialize_with = "nullable")]
    pub address: String,
    #[serde(alias = "port", deserialize_with = "nullable")]
    pub port: u16,
}

/// DNS SRV weights; Consul's defaults are 1/1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentWeights {
    #[serde(alias = "passing", deserialize_with = "nullable")]
    pub passing: i32,
    #[serde(alias = "warning", deserialize_with = "nullable")]
    pub warning: i32,
}

impl Default for AgentWeights {
    fn default() -> Self {
        AgentWeights {
            passing: 1,
            warning: 1,
        }
    }
}

/// `Connect` of a service: native, or (on registration only) a sidecar to create.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentServiceConnect {
    #[serde(
        alias = "native",
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub native: bool,
    /// Registration only: `{}` asks for a sidecar with every default.
    #[serde(alias = "sidecar_service", skip_serializing_if = "Option::is_none")]
    pub sidecar_service: Option<Box<AgentServiceRegistration>>,
}

/// `Proxy` of a connect-proxy registration (`api.AgentServiceConnectProxyConfig`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentServiceConnectProxyConfig {
    /// Envoy-specific; kept opaque.
    #[serde(
        alias = "envoy_extensions",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub envoy_extensions: Vec<serde_json::Value>,
    /// The service identity this proxy represents: the leaf, intentions and
    /// discovery all use it.
    #[serde(
        alias = "destination_service_name",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub destination_service_name: String,
    /// The parent instance ID (for sidecars).
    #[serde(
        rename = "DestinationServiceID",
        alias = "destination_service_id",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub destination_service_id: String,
    #[serde(
        alias = "local_service_address",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub local_service_address: String,
    #[serde(
        alias = "local_service_port",
        deserialize_with = "nullable",
        skip_serializing_if = "is_zero"
    )]
    pub local_service_port: u16,
    #[serde(
        alias = "local_service_socket_path",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub local_service_socket_path: String,
    /// `""`/`direct` or `transparent`.
    #[serde(
        alias = "mode",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub mode: String,
    #[serde(alias = "transparent_proxy", skip_serializing_if = "Option::is_none")]
    pub transparent_proxy: Option<TransparentProxyConfig>,
    /// Opaque, with keys merged from proxy-defaults/service-defaults (`protocol`,
    /// `bind_address`, `local_connect_timeout_ms`, …). Keys are never translated.
    #[serde(
        alias = "config",
        deserialize_with = "nullable",
        skip_serializing_if = "serde_json::Map::is_empty"
    )]
    pub config: serde_json::Map<String, serde_json::Value>,
    #[serde(
        alias = "upstreams",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub upstreams: Vec<Upstream>,
    /// Always emitted, `{}` when unset.
    #[serde(alias = "mesh_gateway", deserialize_with = "nullable")]
    pub mesh_gateway: MeshGatewayConfig,
    /// Always emitted, `{}` when unset.
    #[serde(alias = "expose", deserialize_with = "nullable")]
    pub expose: ExposeConfig,
    /// Envoy-specific; kept opaque.
    #[serde(alias = "access_logs", skip_serializing_if = "Option::is_none")]
    pub access_logs: Option<serde_json::Value>,
}

/// One element of `Proxy.Upstreams` (`api.Upstream`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Upstream {
    /// `service` (the agent fills it in on registration) or `prepared_query`.
    #[serde(
        alias = "destination_type",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub destination_type: String,
    #[serde(
        alias = "destination_partition",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub destination_partition: String,
    #[serde(
        alias = "destination_namespace",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub destination_namespace: String,
    #[serde(
        alias = "destination_peer",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub destination_peer: String,
    /// Always emitted.
    #[serde(alias = "destination_name", deserialize_with = "nullable")]
    pub destination_name: String,
    /// Empty means the local datacenter.
    #[serde(
        alias = "datacenter",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub datacenter: String,
    /// Empty means `127.0.0.1`.
    #[serde(
        alias = "local_bind_address",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub local_bind_address: String,
    #[serde(
        alias = "local_bind_port",
        deserialize_with = "nullable",
        skip_serializing_if = "is_zero"
    )]
    pub local_bind_port: u16,
    #[serde(
        alias = "local_bind_socket_path",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub local_bind_socket_path: String,
    /// Octal, as a string.
    #[serde(
        alias = "local_bind_socket_mode",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub local_bind_socket_mode: String,
    /// Opaque (`connect_timeout_ms`, `protocol`, …). Keys are never translated.
    #[serde(
        alias = "config",
        deserialize_with = "nullable",
        skip_serializing_if = "serde_json::Map::is_empty"
    )]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Always emitted, `{}` when unset.
    #[serde(alias = "mesh_gateway", deserialize_with = "nullable")]
    pub mesh_gateway: MeshGatewayConfig,
    /// Synthesized from service-defaults; such entries usually have no bind port.
    #[serde(
        alias = "centrally_configured",
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub centrally_configured: bool,
}

/// `MeshGateway`: `{}` or `{"Mode": "local"|"remote"|"none"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct MeshGatewayConfig {
    #[serde(
        alias = "mode",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub mode: String,
}

impl MeshGatewayConfig {
    /// No mode: the default, which a more general setting may fill in.
    pub fn is_empty(&self) -> bool {
        self.mode.is_empty()
    }
}

/// `Expose`: paths exposed without mTLS (health checks).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExposeConfig {
    #[serde(
        alias = "checks",
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub checks: bool,
    #[serde(
        alias = "paths",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub paths: Vec<ExposePath>,
}

/// One element of `Expose.Paths`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExposePath {
    #[serde(
        alias = "listener_port",
        deserialize_with = "nullable",
        skip_serializing_if = "is_zero"
    )]
    pub listener_port: u16,
    #[serde(
        alias = "path",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub path: String,
    #[serde(
        alias = "local_path_port",
        deserialize_with = "nullable",
        skip_serializing_if = "is_zero"
    )]
    pub local_path_port: u16,
    /// `http` or `http2`.
    #[serde(
        alias = "protocol",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub protocol: String,
    #[serde(
        alias = "parsed_from_check",
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub parsed_from_check: bool,
}

/// `TransparentProxy` of a proxy in transparent mode.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TransparentProxyConfig {
    #[serde(
        alias = "outbound_listener_port",
        deserialize_with = "nullable",
        skip_serializing_if = "is_zero"
    )]
    pub outbound_listener_port: u16,
    #[serde(
        alias = "dialed_directly",
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub dialed_directly: bool,
}

/// The body of `PUT /v1/agent/service/register` (`api.AgentServiceRegistration`), and of
/// `Connect.SidecarService` inside it. Everything is optional: a sidecar registration of
/// `{}` takes every default from its parent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentServiceRegistration {
    #[serde(
        alias = "kind",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub kind: String,
    #[serde(
        rename = "ID",
        alias = "id",
        alias = "Id",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub id: String,
    #[serde(
        alias = "name",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub name: String,
    #[serde(
        alias = "tags",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tags: Vec<String>,
    #[serde(
        alias = "port",
        deserialize_with = "nullable",
        skip_serializing_if = "is_zero"
    )]
    pub port: u16,
    #[serde(
        alias = "address",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub address: String,
    #[serde(
        alias = "socket_path",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub socket_path: String,
    #[serde(
        alias = "tagged_addresses",
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    #[serde(
        alias = "enable_tag_override",
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub enable_tag_override: bool,
    #[serde(
        alias = "meta",
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub meta: BTreeMap<String, String>,
    #[serde(alias = "weights", skip_serializing_if = "Option::is_none")]
    pub weights: Option<AgentWeights>,
    #[serde(alias = "check", skip_serializing_if = "Option::is_none")]
    pub check: Option<AgentServiceCheck>,
    #[serde(
        alias = "checks",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub checks: Vec<AgentServiceCheck>,
    #[serde(alias = "proxy", skip_serializing_if = "Option::is_none")]
    pub proxy: Option<AgentServiceConnectProxyConfig>,
    #[serde(alias = "connect", skip_serializing_if = "Option::is_none")]
    pub connect: Option<AgentServiceConnect>,
    /// Enterprise only: a CE agent rejects it.
    #[serde(
        alias = "namespace",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    /// Enterprise only: a CE agent rejects it.
    #[serde(
        alias = "partition",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub partition: String,
    #[serde(alias = "locality", skip_serializing_if = "Option::is_none")]
    pub locality: Option<serde_json::Value>,
}

/// A health check attached to a registration (`api.AgentServiceCheck`). Durations are
/// Go duration strings (`"10s"`); a bare number is Go's nanoseconds and is kept as
/// `"<n>ns"`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentServiceCheck {
    #[serde(
        rename = "CheckID",
        alias = "check_id",
        alias = "id",
        alias = "ID",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub check_id: String,
    #[serde(
        alias = "name",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub name: String,
    #[serde(
        alias = "script_args",
        alias = "Args",
        alias = "args",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub script_args: Vec<String>,
    #[serde(
        alias = "interval",
        deserialize_with = "go_duration",
        skip_serializing_if = "String::is_empty"
    )]
    pub interval: String,
    #[serde(
        alias = "timeout",
        deserialize_with = "go_duration",
        skip_serializing_if = "String::is_empty"
    )]
    pub timeout: String,
    #[serde(
        rename = "TTL",
        alias = "ttl",
        deserialize_with = "go_duration",
        skip_serializing_if = "String::is_empty"
    )]
    pub ttl: String,
    #[serde(
        rename = "HTTP",
        alias = "http",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub http: String,
    #[serde(
        alias = "header",
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub header: BTreeMap<String, Vec<String>>,
    #[serde(
        alias = "method",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub method: String,
    #[serde(
        alias = "body",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub body: String,
    #[serde(
        rename = "TCP",
        alias = "tcp",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub tcp: String,
    #[serde(
        rename = "TCPUseTLS",
        alias = "tcp_use_tls",
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub tcp_use_tls: bool,
    #[serde(
        rename = "UDP",
        alias = "udp",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub udp: String,
    #[serde(
        rename = "GRPC",
        alias = "grpc",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub grpc: String,
    #[serde(
        rename = "GRPCUseTLS",
        alias = "grpc_use_tls",
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub grpc_use_tls: bool,
    #[serde(
        rename = "H2PING",
        alias = "h2ping",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub h2ping: String,
    #[serde(
        rename = "TLSServerName",
        alias = "tls_server_name",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub tls_server_name: String,
    #[serde(
        rename = "TLSSkipVerify",
        alias = "tls_skip_verify",
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub tls_skip_verify: bool,
    #[serde(
        alias = "alias_node",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub alias_node: String,
    #[serde(
        alias = "alias_service",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub alias_service: String,
    /// `passing`, `warning` or `critical`: the initial status.
    #[serde(
        alias = "status",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub status: String,
    #[serde(
        alias = "notes",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub notes: String,
    #[serde(
        alias = "success_before_passing",
        deserialize_with = "nullable",
        skip_serializing_if = "is_zero"
    )]
    pub success_before_passing: u32,
    #[serde(
        alias = "failures_before_warning",
        deserialize_with = "nullable",
        skip_serializing_if = "is_zero"
    )]
    pub failures_before_warning: u32,
    #[serde(
        alias = "failures_before_critical",
        deserialize_with = "nullable",
        skip_serializing_if = "is_zero"
    )]
    pub failures_before_critical: u32,
    #[serde(
        alias = "deregister_critical_service_after",
        deserialize_with = "go_duration",
        skip_serializing_if = "String::is_empty"
    )]
    pub deregister_critical_service_after: String,
}

/// A Go duration as Consul's decoder takes it: a string (`"10s"`) or a number of
/// nanoseconds.
fn go_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Nanos(u64),
    }
    Ok(match Option::<Raw>::deserialize(deserializer)? {
        None => String::new(),
        Some(Raw::Text(s)) => s,
        Some(Raw::Nanos(n)) => format!("{n}ns"),
    })
}

#[cfg(test)]
mod tests;
