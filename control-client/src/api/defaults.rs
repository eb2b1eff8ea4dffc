//! The `service-defaults` and `proxy-defaults` config entries, as far as a sidecar's
//! protocol goes: Consul merges their `Protocol` (and proxy-defaults' `Config`) into a
//! sidecar's `Proxy.Config` and into each upstream's `Config`, which is where ferrule
//! reads the protocol from. Only these keys are modelled.

use serde::{Deserialize, Serialize};

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
    #[serde(default, skip_serializing_if = "is_zero")]
    pub create_index: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub modify_index: u64,
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
    #[serde(default, skip_serializing_if = "is_zero")]
    pub create_index: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub modify_index: u64,
}
