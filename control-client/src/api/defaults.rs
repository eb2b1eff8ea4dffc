//! The `service-defaults` and `proxy-defaults` config entries, as far as a sidecar goes:
//! Consul merges them into a sidecar's `Proxy.Config`, `Proxy.MeshGateway` and each
//! upstream's `Config` (`docs/consul-semantics.md#sidecar-registration`), which is where
//! ferrule reads its protocol and timeouts from. Only the keys that reach a sidecar
//! are modelled: `Protocol`, `MeshGateway`, `LocalConnectTimeoutMs`,
//! `LocalRequestTimeoutMs`, `MaxInboundConnections`, `UpstreamConfig`, and
//! proxy-defaults' `Config`, `MeshGateway` and `AccessLogs`.

use serde::{Deserialize, Serialize};

use super::agent::MeshGatewayConfig;
use super::{is_zero, nullable};

pub const SERVICE_DEFAULTS: &str = "service-defaults";
pub const PROXY_DEFAULTS: &str = "proxy-defaults";
/// The only name a `proxy-defaults` entry may have.
pub const GLOBAL: &str = "global";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceDefaultsEntry {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub meta: std::collections::BTreeMap<String, String>,
    #[serde(
        default,
        alias = "mesh_gateway",
        deserialize_with = "nullable",
        skip_serializing_if = "MeshGatewayConfig::is_empty"
    )]
    pub mesh_gateway: MeshGatewayConfig,
    #[serde(
        default,
        alias = "local_connect_timeout_ms",
        skip_serializing_if = "is_zero"
    )]
    pub local_connect_timeout_ms: u64,
    #[serde(
        default,
        alias = "local_request_timeout_ms",
        skip_serializing_if = "is_zero"
    )]
    pub local_request_timeout_ms: u64,
    #[serde(
        default,
        alias = "max_inbound_connections",
        skip_serializing_if = "is_zero"
    )]
    pub max_inbound_connections: u64,
    #[serde(
        default,
        alias = "upstream_config",
        skip_serializing_if = "Option::is_none"
    )]
    pub upstream_config: Option<UpstreamConfiguration>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub create_index: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub modify_index: u64,
}

/// `UpstreamConfig` of a service-defaults entry: what its sidecar applies to every
/// upstream (`Defaults`) and to named ones (`Overrides`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct UpstreamConfiguration {
    #[serde(
        alias = "overrides",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub overrides: Vec<UpstreamConfig>,
    #[serde(alias = "defaults", skip_serializing_if = "Option::is_none")]
    pub defaults: Option<UpstreamConfig>,
}

/// One upstream's settings (Consul's `UpstreamConfig`); `Name` only in overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct UpstreamConfig {
    #[serde(alias = "name", skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(alias = "protocol", skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(alias = "connect_timeout_ms", skip_serializing_if = "is_zero")]
    pub connect_timeout_ms: u64,
    #[serde(alias = "limits", skip_serializing_if = "Option::is_none")]
    pub limits: Option<serde_json::Value>,
    #[serde(
        alias = "passive_health_check",
        skip_serializing_if = "Option::is_none"
    )]
    pub passive_health_check: Option<serde_json::Value>,
    #[serde(
        alias = "mesh_gateway",
        deserialize_with = "nullable",
        skip_serializing_if = "MeshGatewayConfig::is_empty"
    )]
    pub mesh_gateway: MeshGatewayConfig,
    #[serde(
        alias = "balance_outbound_connections",
        skip_serializing_if = "String::is_empty"
    )]
    pub balance_outbound_connections: String,
}

impl UpstreamConfig {
    /// Writes what is set into an upstream's resolved `Config`, over what is there
    /// (Consul's `UpstreamConfig.MergeInto`: unset values never override).
    pub fn merge_into(&self, config: &mut serde_json::Map<String, serde_json::Value>) {
        use serde_json::json;
        if !self.protocol.is_empty() {
            config.insert("protocol".into(), json!(self.protocol));
        }
        if self.connect_timeout_ms != 0 {
            config.insert("connect_timeout_ms".into(), json!(self.connect_timeout_ms));
        }
        if let Some(limits) = &self.limits {
            config.insert("limits".into(), limits.clone());
        }
        if let Some(check) = &self.passive_health_check {
            config.insert("passive_health_check".into(), check.clone());
        }
        if !self.mesh_gateway.is_empty() {
            config.insert("mesh_gateway".into(), json!(self.mesh_gateway));
        }
        if !self.balance_outbound_connections.is_empty() {
            config.insert(
                "balance_outbound_connections".into(),
                json!(self.balance_outbound_connections),
            );
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProxyDefaultsEntry {
    pub kind: String,
    pub name: String,
    /// Opaque proxy config (`protocol`, `local_connect_timeout_ms`, ...), merged under
    /// every sidecar's own `Proxy.Config`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "serde_json::Map::is_empty"
    )]
    pub config: serde_json::Map<String, serde_json::Value>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub meta: std::collections::BTreeMap<String, String>,
    #[serde(
        default,
        alias = "mesh_gateway",
        deserialize_with = "nullable",
        skip_serializing_if = "MeshGatewayConfig::is_empty"
    )]
    pub mesh_gateway: MeshGatewayConfig,
    /// Access logging for every proxy (Consul does not merge it into registrations: a
    /// proxy reads it from this entry).
    #[serde(
        default,
        alias = "access_logs",
        skip_serializing_if = "Option::is_none"
    )]
    pub access_logs: Option<AccessLogsConfig>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub create_index: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub modify_index: u64,
}

/// proxy-defaults' `AccessLogs` (Consul's `AccessLogsConfig`), as written; compiled by
/// `crate::access_log`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AccessLogsConfig {
    #[serde(alias = "enabled", skip_serializing_if = "std::ops::Not::not")]
    pub enabled: bool,
    #[serde(
        alias = "disable_listener_logs",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub disable_listener_logs: bool,
    /// `stdout` (also when empty), `stderr` or `file`.
    #[serde(
        rename = "Type",
        alias = "type",
        skip_serializing_if = "String::is_empty"
    )]
    pub kind: String,
    #[serde(alias = "path", skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(
        rename = "JSONFormat",
        alias = "json_format",
        skip_serializing_if = "String::is_empty"
    )]
    pub json_format: String,
    #[serde(alias = "text_format", skip_serializing_if = "String::is_empty")]
    pub text_format: String,
}

pub const MESH: &str = "mesh";

/// The `mesh` config entry, as far as a sidecar's inbound side goes: its
/// `HTTP.Incoming.RequestNormalization` (checked and applied by `crate::normalization`).
/// Consul's entry has no name of its own (it is always `mesh`); one sent is kept only to
/// be checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MeshEntry {
    pub kind: String,
    #[serde(default, skip_serializing)]
    pub name: String,
    #[serde(
        default,
        rename = "HTTP",
        alias = "http",
        skip_serializing_if = "Option::is_none"
    )]
    pub http: Option<MeshHttpConfig>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub meta: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub create_index: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub modify_index: u64,
}

impl MeshEntry {
    /// `HTTP.Incoming.RequestNormalization`, when set.
    pub fn request_normalization(&self) -> Option<&RequestNormalizationConfig> {
        self.http
            .as_ref()?
            .incoming
            .as_ref()?
            .request_normalization
            .as_ref()
    }
}

/// The mesh entry's `HTTP`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MeshHttpConfig {
    #[serde(default, alias = "incoming", skip_serializing_if = "Option::is_none")]
    pub incoming: Option<MeshDirectionalHttpConfig>,
}

/// The mesh entry's `HTTP.Incoming`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MeshDirectionalHttpConfig {
    #[serde(
        default,
        alias = "request_normalization",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_normalization: Option<RequestNormalizationConfig>,
}

/// `RequestNormalization`, as written: the two actions are Consul's enum names, empty
/// for the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestNormalizationConfig {
    #[serde(alias = "insecure_disable_path_normalization")]
    pub insecure_disable_path_normalization: bool,
    #[serde(alias = "merge_slashes")]
    pub merge_slashes: bool,
    #[serde(alias = "path_with_escaped_slashes_action")]
    pub path_with_escaped_slashes_action: String,
    #[serde(alias = "headers_with_underscores_action")]
    pub headers_with_underscores_action: String,
}
