//! The parts of `/v1/agent/self` a sidecar needs (docs/consul-semantics.md#intentions, the default action): the agent's
//! datacenter and node name, and what decides the default intention action.
//!
//! `DebugConfig` is the agent's full runtime configuration and its format is not stable
//! across versions, so it stays an untyped JSON value read by the accessors below, which
//! know the places the settings have lived.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::nullable;

/// The body of `GET /v1/agent/self`, reduced to what ferrule reads.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentSelf {
    #[serde(deserialize_with = "nullable")]
    pub config: AgentSelfConfig,
    /// Full runtime config, format unstable: read through the accessors.
    #[serde(deserialize_with = "nullable")]
    pub debug_config: Value,
    /// `Coord`, `Member`, `Stats`, `Meta`, `xDS`: kept opaque.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coord: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
    #[serde(rename = "xDS", skip_serializing_if = "Option::is_none")]
    pub xds: Option<Value>,
}

/// `Config` of `/v1/agent/self`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentSelfConfig {
    #[serde(deserialize_with = "nullable")]
    pub datacenter: String,
    #[serde(deserialize_with = "nullable")]
    pub primary_datacenter: String,
    #[serde(deserialize_with = "nullable")]
    pub node_name: String,
    #[serde(rename = "NodeID", deserialize_with = "nullable")]
    pub node_id: String,
    /// Enterprise only.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub partition: String,
    #[serde(deserialize_with = "nullable")]
    pub revision: String,
    #[serde(deserialize_with = "nullable")]
    pub server: bool,
    #[serde(deserialize_with = "nullable")]
    pub version: String,
    #[serde(deserialize_with = "nullable")]
    pub build_date: String,
}

impl AgentSelf {
    /// `default_intention_policy` (Consul 1.18+), when set.
    pub fn default_intention_policy(&self) -> Option<&str> {
        non_empty_str(self.debug_config.get("DefaultIntentionPolicy"))
    }

    /// Whether ACLs are enabled: `ACLResolverSettings.ACLsEnabled` since 1.11, a top-level
    /// `ACLsEnabled` before.
    pub fn acls_enabled(&self) -> Option<bool> {
        self.debug_config
            .pointer("/ACLResolverSettings/ACLsEnabled")
            .or_else(|| self.debug_config.get("ACLsEnabled"))
            .and_then(Value::as_bool)
    }

    /// `acl.default_policy`: `ACLResolverSettings.ACLDefaultPolicy` since 1.11, a
    /// top-level `ACLDefaultPolicy` before.
    pub fn acl_default_policy(&self) -> Option<&str> {
        non_empty_str(
            self.debug_config
                .pointer("/ACLResolverSettings/ACLDefaultPolicy"),
        )
        .or_else(|| non_empty_str(self.debug_config.get("ACLDefaultPolicy")))
    }

    /// The `DebugConfig` a current agent would report for these settings, for the dev
    /// agent to serve.
    pub fn debug_config_for(
        default_intention_policy: &str,
        acls_enabled: bool,
        acl_default_policy: &str,
    ) -> Value {
        json!({
            "DefaultIntentionPolicy": default_intention_policy,
            "ACLResolverSettings": {
                "ACLsEnabled": acls_enabled,
                "ACLDefaultPolicy": acl_default_policy,
                "ACLDownPolicy": "extend-cache",
            },
        })
    }
}

fn non_empty_str(value: Option<&Value>) -> Option<&str> {
    value.and_then(Value::as_str).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_current_agent() {
        let me: AgentSelf = serde_json::from_value(json!({
            "Config": {
                "Datacenter": "east", "PrimaryDatacenter": "east", "NodeName": "box-1",
                "NodeID": "6f0c1a2b-0000-4000-8000-000000000001", "Revision": "abc",
                "Server": false, "Version": "1.21.0", "BuildDate": "2025-05-01T00:00:00Z"
            },
            "DebugConfig": {
                "DefaultIntentionPolicy": "",
                "ACLResolverSettings": { "ACLsEnabled": true, "ACLDefaultPolicy": "deny",
                                         "ACLDownPolicy": "extend-cache", "ACLPolicyTTL": "30s" },
                "SomethingElse": [1, 2, 3]
            },
            "Coord": null, "Member": { "Name": "box-1" }, "Stats": {}, "Meta": {},
            "xDS": { "SupportedProxies": { "envoy": ["1.33.0"] }, "Port": 8502 }
        }))
        .unwrap();
        assert_eq!(me.config.datacenter, "east");
        assert_eq!(me.config.node_name, "box-1");
        assert_eq!(me.default_intention_policy(), None);
        assert_eq!(me.acls_enabled(), Some(true));
        assert_eq!(me.acl_default_policy(), Some("deny"));
    }

    #[test]
    fn reads_default_intention_policy_and_older_layouts() {
        let me: AgentSelf = serde_json::from_value(json!({
            "Config": { "Datacenter": "dc1", "NodeName": "n" },
            "DebugConfig": { "DefaultIntentionPolicy": "allow", "ACLsEnabled": false,
                             "ACLDefaultPolicy": "deny" }
        }))
        .unwrap();
        assert_eq!(me.default_intention_policy(), Some("allow"));
        assert_eq!(me.acls_enabled(), Some(false));
        assert_eq!(me.acl_default_policy(), Some("deny"));

        let bare: AgentSelf =
            serde_json::from_value(json!({ "Config": {}, "DebugConfig": null })).unwrap();
        assert_eq!(bare.acls_enabled(), None);
        assert_eq!(bare.acl_default_policy(), None);
    }

    #[test]
    fn the_dev_agent_shape_reads_back() {
        let me = AgentSelf {
            debug_config: AgentSelf::debug_config_for("deny", false, "allow"),
            ..Default::default()
        };
        let back: AgentSelf = serde_json::from_value(serde_json::to_value(&me).unwrap()).unwrap();
        assert_eq!(back.default_intention_policy(), Some("deny"));
        assert_eq!(back.acls_enabled(), Some(false));
        assert_eq!(back.acl_default_policy(), Some("allow"));
    }
}
