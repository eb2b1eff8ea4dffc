//! Consul's mesh CA wire types: the trust roots of `/v1/agent/connect/ca/roots`
//! and the service leaf of `/v1/agent/connect/ca/leaf/:service`
//! (docs/consul-semantics.md#agent-api, #identity).
//!
//! Two spellings differ on purpose, as in Consul: a root's `SerialNumber` is a JSON number,
//! a leaf's is a colon-hex string. Certificate times stay RFC 3339 strings here; whoever
//! needs them as times parses them.

use serde::{Deserialize, Serialize};

use super::{empty_as_null, nullable};

/// The body of `/v1/agent/connect/ca/roots` (and `/v1/connect/ca/roots`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IndexedCARoots {
    /// `ID` of the root with `Active: true`.
    #[serde(rename = "ActiveRootID", deserialize_with = "nullable")]
    pub active_root_id: String,
    /// `<cluster-uuid>.consul`. Real agents send it; the agent endpoint's doc example
    /// omits it, so an absent value reads as `""` (see [`IndexedCARoots::trust_domain`]).
    #[serde(deserialize_with = "nullable")]
    pub trust_domain: String,
    /// Every currently trusted root: the active one and those rotated out.
    #[serde(deserialize_with = "nullable")]
    pub roots: Vec<CARoot>,
}

impl IndexedCARoots {
    /// The trust domain: `TrustDomain` when present, else the active root's
    /// `ExternalTrustDomain` + `.consul`, which is what Consul derives it from.
    pub fn trust_domain(&self) -> Option<String> {
        if !self.trust_domain.is_empty() {
            return Some(self.trust_domain.to_ascii_lowercase());
        }
        self.roots
            .iter()
            .find(|r| r.active)
            .or_else(|| self.roots.first())
            .filter(|r| !r.external_trust_domain.is_empty())
            .map(|r| format!("{}.consul", r.external_trust_domain.to_ascii_lowercase()))
    }
}

/// One CA root (`structs.CARoot`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CARoot {
    /// Colon-hex SHA-1 of the root's DER.
    #[serde(rename = "ID", deserialize_with = "nullable")]
    pub id: String,
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// A JSON number here (a colon-hex string in leaf responses).
    #[serde(deserialize_with = "nullable")]
    pub serial_number: u64,
    #[serde(rename = "SigningKeyID", deserialize_with = "nullable")]
    pub signing_key_id: String,
    /// The cluster ID (a UUID), without `.consul`.
    #[serde(deserialize_with = "nullable")]
    pub external_trust_domain: String,
    /// RFC 3339.
    #[serde(deserialize_with = "nullable")]
    pub not_before: String,
    /// RFC 3339.
    #[serde(deserialize_with = "nullable")]
    pub not_after: String,
    /// PEM; a trust anchor.
    #[serde(deserialize_with = "nullable")]
    pub root_cert: String,
    /// Intermediates and rotation cross-signs: never anchors. Go's nil slice, so `null`
    /// when there are none.
    #[serde(deserialize_with = "nullable", serialize_with = "empty_as_null")]
    pub intermediate_certs: Vec<String>,
    /// Internal; not expected in API output.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub signing_cert: String,
    /// Internal; not expected in API output.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub signing_key: String,
    #[serde(deserialize_with = "nullable")]
    pub active: bool,
    /// `ec` or `rsa`.
    #[serde(deserialize_with = "nullable")]
    pub private_key_type: String,
    #[serde(deserialize_with = "nullable")]
    pub private_key_bits: u32,
    #[serde(deserialize_with = "nullable")]
    pub create_index: u64,
    #[serde(deserialize_with = "nullable")]
    pub modify_index: u64,
}

/// The body of `/v1/agent/connect/ca/leaf/:service` (`structs.IssuedCert`).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IssuedCert {
    /// Colon-separated lowercase hex of the serial bytes (`"08"`).
    #[serde(deserialize_with = "nullable")]
    pub serial_number: String,
    /// The leaf, followed by every intermediate of the signing root.
    #[serde(rename = "CertPEM", deserialize_with = "nullable")]
    pub cert_pem: String,
    /// SEC1 `EC PRIVATE KEY`.
    #[serde(
        rename = "PrivateKeyPEM",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub private_key_pem: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub service: String,
    #[serde(
        rename = "ServiceURI",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub service_uri: String,
    /// Only for non-service certificate kinds.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub agent: String,
    #[serde(
        rename = "AgentURI",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub agent_uri: String,
    #[serde(
        rename = "ServerURI",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub server_uri: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub kind: String,
    #[serde(
        rename = "KindURI",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub kind_uri: String,
    /// RFC 3339; the certificate's NotBefore (backdated a minute).
    #[serde(deserialize_with = "nullable")]
    pub valid_after: String,
    /// RFC 3339; the certificate's NotAfter.
    #[serde(deserialize_with = "nullable")]
    pub valid_before: String,
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
    #[serde(deserialize_with = "nullable")]
    pub create_index: u64,
    #[serde(deserialize_with = "nullable")]
    pub modify_index: u64,
}

/// The private key never reaches a log line.
impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial_number", &self.serial_number)
            .field("service_uri", &self.service_uri)
            .field("valid_after", &self.valid_after)
            .field("valid_before", &self.valid_before)
            .field("modify_index", &self.modify_index)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Shaped like the agent endpoint's doc example: no `TrustDomain`, `null`
    /// intermediates, numeric serial.
    const ROOTS_WITHOUT_TD: &str = r#"{
      "ActiveRootID": "aa:bb:cc",
      "Roots": [
        {
          "ID": "aa:bb:cc",
          "Name": "Consul CA Root Cert",
          "SerialNumber": 7,
          "SigningKeyID": "01:02",
          "ExternalTrustDomain": "0F1E2D3C-aaaa-bbbb-cccc-000000000001",
          "NotBefore": "2024-01-01T00:00:00Z",
          "NotAfter": "2034-01-01T00:00:00Z",
          "RootCert": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
          "IntermediateCerts": null,
          "Active": true,
          "PrivateKeyType": "ec",
          "PrivateKeyBits": 256,
          "CreateIndex": 8,
          "ModifyIndex": 8
        }
      ]
    }"#;

    #[test]
    fn roots_without_trust_domain_derive_it_from_the_active_root() {
        let roots: IndexedCARoots = serde_json::from_str(ROOTS_WITHOUT_TD).unwrap();
        assert_eq!(roots.trust_domain, "");
        assert_eq!(roots.roots[0].serial_number, 7);
        assert!(roots.roots[0].intermediate_certs.is_empty());
        assert_eq!(
            roots.trust_domain().as_deref(),
            Some("0f1e2d3c-aaaa-bbbb-cccc-000000000001.consul")
        );
    }

    #[test]
    fn roots_with_trust_domain_and_a_rotation_in_progress() {
        let roots: IndexedCARoots = serde_json::from_value(json!({
            "ActiveRootID": "new",
            "TrustDomain": "1234.consul",
            "Roots": [
                { "ID": "old", "SerialNumber": 1, "RootCert": "old-pem", "Active": false,
                  "IntermediateCerts": null, "ExternalTrustDomain": "1234" },
                { "ID": "new", "SerialNumber": 2, "RootCert": "new-pem", "Active": true,
                  "IntermediateCerts": ["cross-signed-pem"], "ExternalTrustDomain": "1234",
                  "SomethingNew": {"x": 1} }
            ]
        }))
        .unwrap();
        assert_eq!(roots.trust_domain().as_deref(), Some("1234.consul"));
        assert_eq!(roots.roots.len(), 2);
        assert_eq!(roots.roots[1].intermediate_certs, ["cross-signed-pem"]);
    }

    #[test]
    fn roots_serialize_like_consul() {
        let roots: IndexedCARoots = serde_json::from_str(ROOTS_WITHOUT_TD).unwrap();
        let out = serde_json::to_value(&roots).unwrap();
        assert_eq!(out["TrustDomain"], "");
        assert_eq!(out["Roots"][0]["SerialNumber"], 7);
        assert_eq!(
            out["Roots"][0]["IntermediateCerts"],
            serde_json::Value::Null
        );
        assert!(out["Roots"][0].get("SigningKey").is_none());
        assert_eq!(out["Roots"][0]["ID"], "aa:bb:cc");
        assert_eq!(out["ActiveRootID"], "aa:bb:cc");
        let back: IndexedCARoots = serde_json::from_value(out).unwrap();
        assert_eq!(back, roots);
    }

    #[test]
    fn a_leaf_parses_with_and_without_enterprise_fields() {
        let ce: IssuedCert = serde_json::from_value(json!({
            "SerialNumber": "08",
            "CertPEM": "leaf-pem\nintermediate-pem\n",
            "PrivateKeyPEM": "key-pem",
            "Service": "web",
            "ServiceURI": "spiffe://1234.consul/ns/default/dc/dc1/svc/web",
            "ValidAfter": "2024-05-21T16:32:28Z",
            "ValidBefore": "2024-05-24T16:33:28Z",
            "CreateIndex": 5,
            "ModifyIndex": 5
        }))
        .unwrap();
        assert_eq!(ce.serial_number, "08");
        assert_eq!(ce.namespace, "");
        let ent: IssuedCert = serde_json::from_value(json!({
            "SerialNumber": "0a:1b", "CertPEM": "x", "PrivateKeyPEM": "y",
            "Service": "web", "Namespace": "default", "ModifyIndex": 9
        }))
        .unwrap();
        assert_eq!(ent.namespace, "default");
        assert_eq!(ent.modify_index, 9);

        let out = serde_json::to_value(&ce).unwrap();
        assert_eq!(out["SerialNumber"], "08");
        assert_eq!(out["CertPEM"], "leaf-pem\nintermediate-pem\n");
        assert!(out.get("Namespace").is_none() && out.get("Agent").is_none());
        assert!(
            !format!("{ce:?}").contains("key-pem"),
            "Debug must not show the key"
        );
    }

    #[test]
    fn a_numeric_leaf_serial_is_refused() {
        assert!(serde_json::from_str::<IssuedCert>(r#"{"SerialNumber": 8}"#).is_err());
    }
}
