//! Consul's intention wire types: the `service-intentions` config entry (`PUT /v1/config`,
//! `GET /v1/config/service-intentions/<name>`) and the intention objects of
//! `/v1/connect/intentions/match` and `/v1/connect/intentions/exact`.
//!
//! These are transport shapes only. Real agents differ from the documented examples in
//! what they omit and where they send `null`, so every field has a default, `null` reads as
//! empty and unknown fields are ignored. On output, the fields Consul marks `omitempty`
//! are skipped when empty, so a development agent can serve these types as Consul would.
//! Nothing is validated here: `crate::intentions` checks and converts once, when it builds
//! the model the proxy decides with.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{is_false, is_zero, nullable};

/// The `Kind` of a `service-intentions` config entry.
pub const KIND: &str = "service-intentions";

/// A `service-intentions` config entry: every source allowed or denied to reach one
/// destination (`Name`, possibly `*`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceIntentionsEntry {
    #[serde(deserialize_with = "nullable")]
    pub kind: String,
    /// Destination service name, or `*`.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
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
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub meta: BTreeMap<String, String>,
    /// Entry-wide JWT requirement. Kept opaque: only Envoy can enforce it, and the model
    /// only needs to know whether one is there.
    #[serde(rename = "JWT", skip_serializing_if = "Option::is_none")]
    pub jwt: Option<serde_json::Value>,
    #[serde(deserialize_with = "nullable")]
    pub sources: Vec<SourceIntention>,
    /// Read-only (GET output); ignored on writes.
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_zero")]
    pub create_index: u64,
    /// Read-only (GET output); ignored on writes.
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_zero")]
    pub modify_index: u64,
}

/// One element of `Sources`: a caller pattern and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SourceIntention {
    /// Source service name, or `*`.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Enterprise only; defaults to the destination's.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    /// Enterprise only; defaults to the destination's.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub partition: String,
    /// Cluster-peer name of the source, for peered callers.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub peer: String,
    /// Enterprise only.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub sameness_group: String,
    /// `allow` or `deny`; empty for L7 sources, which carry `Permissions` instead.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub action: String,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<IntentionPermission>,
    /// Computed by the server on every write; never trusted by the model.
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_zero")]
    pub precedence: i32,
    /// `consul`, the only source type; the server fills it in.
    #[serde(
        rename = "Type",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub source_type: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub description: String,
    /// Read-only legacy fields (intentions created through the pre-1.9 ID API).
    #[serde(
        rename = "LegacyID",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub legacy_id: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub legacy_meta: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legacy_create_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legacy_update_time: Option<String>,
}

/// One L7 rule of an intention (`Permissions[]`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IntentionPermission {
    /// `allow` or `deny`; Consul always writes it.
    #[serde(deserialize_with = "nullable")]
    pub action: String,
    /// Required by the server; `None` only in documents it would reject.
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<IntentionHttpPermission>,
    /// Per-permission JWT requirement, kept opaque like the entry's.
    #[serde(rename = "JWT", skip_serializing_if = "Option::is_none")]
    pub jwt: Option<serde_json::Value>,
}

/// The HTTP criteria of one permission; all set criteria must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IntentionHttpPermission {
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub path_exact: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub path_prefix: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub path_regex: String,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub header: Vec<IntentionHttpHeaderPermission>,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// One header test (`HTTP.Header[]`). An empty string means "not set", as in Consul,
/// which is why the string tests are not `Option`s.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IntentionHttpHeaderPermission {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_false")]
    pub present: bool,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub exact: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub prefix: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub suffix: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub contains: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub regex: String,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_false")]
    pub invert: bool,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_false")]
    pub ignore_case: bool,
}

/// An intention as the intentions API emits it: one source of one config entry, with the
/// entry's destination folded in.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Intention {
    /// Only intentions created through the legacy ID API have one.
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
    pub description: String,
    #[serde(rename = "SourceNS", deserialize_with = "nullable")]
    pub source_ns: String,
    #[serde(deserialize_with = "nullable")]
    pub source_name: String,
    #[serde(rename = "DestinationNS", deserialize_with = "nullable")]
    pub destination_ns: String,
    #[serde(deserialize_with = "nullable")]
    pub destination_name: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub source_partition: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub destination_partition: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub source_peer: String,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub source_sameness_group: String,
    #[serde(deserialize_with = "nullable")]
    pub source_type: String,
    /// Absent for L7 intentions.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub action: String,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<IntentionPermission>,
    /// The config entry's JWT requirement, copied onto each of its intentions.
    #[serde(rename = "JWT", skip_serializing_if = "Option::is_none")]
    pub jwt: Option<serde_json::Value>,
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub meta: BTreeMap<String, String>,
    /// Always sent by real agents, even though the docs' match example omits it.
    #[serde(deserialize_with = "nullable")]
    pub precedence: i32,
    /// RFC 3339; legacy intentions only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub create_index: u64,
    #[serde(deserialize_with = "nullable")]
    pub modify_index: u64,
}

/// The body of `/v1/connect/intentions/match`: each queried name → its intentions in
/// evaluation order. An empty list may come as `[]` or as `null`.
pub type IntentionMatchResponse = HashMap<String, Option<Vec<Intention>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A write payload, as an operator would `PUT /v1/config`.
    const WRITTEN_ENTRY: &str = r#"{
      "Kind": "service-intentions",
      "Name": "orders",
      "Sources": [
        { "Name": "scraper", "Action": "deny" },
        { "Name": "storefront", "Action": "allow", "Description": "checkout path" },
        {
          "Name": "ledger-sync",
          "Permissions": [
            { "Action": "allow", "HTTP": { "PathPrefix": "/orders/export", "Methods": ["get", "HEAD"] } }
          ]
        }
      ]
    }"#;

    /// The same kind of entry as `GET /v1/config/service-intentions/<name>` answers it:
    /// normalized sources, read-only fields, Enterprise keys and Go's `null`s.
    const READ_ENTRY: &str = r#"{
      "Kind": "service-intentions",
      "Name": "orders",
      "Namespace": "shop",
      "Partition": "retail",
      "Meta": null,
      "Sources": [
        {
          "Name": "storefront",
          "Namespace": "shop",
          "Partition": "retail",
          "Action": "allow",
          "Precedence": 9,
          "Type": "consul",
          "LegacyMeta": null,
          "SomeFutureField": {"x": 1}
        },
        {
          "Name": "*",
          "Peer": "eu-west",
          "Namespace": "default",
          "Permissions": [
            {
              "Action": "deny",
              "HTTP": {
                "PathRegex": "/orders/[0-9]+/refund",
                "Header": [
                  { "Name": "X-Debug", "Present": true, "Invert": true },
                  { "Name": "X-Tenant", "Prefix": "acme-", "IgnoreCase": true }
                ],
                "Methods": null
              },
              "JWT": null
            }
          ],
          "Precedence": 8,
          "Type": "consul"
        }
      ],
      "JWT": { "Providers": [ { "Name": "okta", "VerifyClaims": [ { "Path": ["aud"], "Value": "orders" } ] } ] },
      "Hash": 1234567890123,
      "CreateIndex": 41,
      "ModifyIndex": 57
    }"#;

    /// `?by=destination&name=orders&name=idle&name=gone`: one L4 intention, one L7
    /// intention without `Action`, and both spellings of an empty list.
    const MATCH_RESPONSE: &str = r#"{
      "orders": [
        {
          "SourceNS": "default",
          "SourceName": "storefront",
          "DestinationNS": "default",
          "DestinationName": "orders",
          "SourceType": "consul",
          "Action": "allow",
          "Precedence": 9,
          "CreateIndex": 20,
          "ModifyIndex": 20
        },
        {
          "SourceNS": "default",
          "SourceName": "ledger-sync",
          "DestinationNS": "default",
          "DestinationName": "orders",
          "SourceType": "consul",
          "Permissions": [
            { "Action": "allow", "HTTP": { "PathExact": "/orders/export", "Methods": ["GET"] } }
          ],
          "Precedence": 9,
          "CreateIndex": 20,
          "ModifyIndex": 21
        },
        {
          "ID": "0d9f7c5e-6a43-4b1e-9a55-1f0b7c2d3e4f",
          "Description": "",
          "SourceNS": "default",
          "SourceName": "*",
          "DestinationNS": "default",
          "DestinationName": "*",
          "SourceType": "consul",
          "Action": "deny",
          "Meta": {},
          "Precedence": 5,
          "CreatedAt": "2024-03-01T10:00:00Z",
          "UpdatedAt": "2024-03-02T10:00:00Z",
          "Hash": "c2VjcmV0",
          "CreateIndex": 3,
          "ModifyIndex": 4
        }
      ],
      "idle": [],
      "gone": null
    }"#;

    #[test]
    fn parses_a_written_entry() {
        let entry: ServiceIntentionsEntry = serde_json::from_str(WRITTEN_ENTRY).unwrap();
        assert_eq!(entry.kind, KIND);
        assert_eq!(entry.name, "orders");
        assert_eq!(entry.sources.len(), 3);
        assert_eq!(entry.sources[0].action, "deny");
        assert_eq!(entry.sources[1].description, "checkout path");
        let l7 = &entry.sources[2];
        assert_eq!(l7.action, "");
        assert_eq!(l7.precedence, 0);
        let http = l7.permissions[0].http.as_ref().unwrap();
        assert_eq!(http.path_prefix, "/orders/export");
        assert_eq!(http.methods, ["get", "HEAD"]);
    }

    #[test]
    fn parses_a_read_entry_with_nulls_and_unknown_fields() {
        let entry: ServiceIntentionsEntry = serde_json::from_str(READ_ENTRY).unwrap();
        assert_eq!(entry.namespace, "shop");
        assert_eq!(entry.partition, "retail");
        assert!(entry.meta.is_empty());
        assert!(entry.jwt.is_some());
        assert_eq!((entry.create_index, entry.modify_index), (41, 57));
        assert_eq!(entry.sources[0].precedence, 9);
        assert_eq!(entry.sources[0].source_type, "consul");
        let peered = &entry.sources[1];
        assert_eq!(peered.peer, "eu-west");
        let perm = &peered.permissions[0];
        assert_eq!(perm.jwt, None);
        let http = perm.http.as_ref().unwrap();
        assert!(http.methods.is_empty());
        assert_eq!(http.header.len(), 2);
        assert!(http.header[0].present && http.header[0].invert);
        assert!(http.header[1].ignore_case);
        assert_eq!(http.header[1].prefix, "acme-");
    }

    #[test]
    fn parses_a_match_response_with_empty_and_null_lists() {
        let resp: IntentionMatchResponse = serde_json::from_str(MATCH_RESPONSE).unwrap();
        assert_eq!(resp["idle"], Some(vec![]));
        assert_eq!(resp["gone"], None);
        let orders = resp["orders"].as_ref().unwrap();
        assert_eq!(orders.len(), 3);
        assert_eq!(orders[0].source_ns, "default");
        assert_eq!(orders[0].destination_ns, "default");
        assert_eq!(orders[1].action, "", "L7 intentions carry no Action");
        assert_eq!(orders[1].permissions.len(), 1);
        assert_eq!(orders[2].id, "0d9f7c5e-6a43-4b1e-9a55-1f0b7c2d3e4f");
        assert_eq!(
            orders[2].created_at.as_deref(),
            Some("2024-03-01T10:00:00Z")
        );
    }

    #[test]
    fn parses_an_intention_without_precedence_like_the_docs_example() {
        let ixn: Intention = serde_json::from_value(json!({
            "Description": "", "SourceNS": "default", "SourceName": "storefront",
            "DestinationNS": "default", "DestinationName": "orders", "SourceType": "consul",
            "Action": "deny", "Meta": {}, "CreateIndex": 12, "ModifyIndex": 12
        }))
        .unwrap();
        assert_eq!(ixn.precedence, 0);
        assert_eq!(ixn.action, "deny");
    }

    #[test]
    fn serializes_consul_keys_and_omits_empty_fields() {
        let entry: ServiceIntentionsEntry = serde_json::from_str(WRITTEN_ENTRY).unwrap();
        let out = serde_json::to_value(&entry).unwrap();
        assert_eq!(
            out,
            json!({
              "Kind": "service-intentions",
              "Name": "orders",
              "Sources": [
                { "Name": "scraper", "Action": "deny" },
                { "Name": "storefront", "Action": "allow", "Description": "checkout path" },
                {
                  "Name": "ledger-sync",
                  "Permissions": [
                    { "Action": "allow", "HTTP": { "PathPrefix": "/orders/export", "Methods": ["get", "HEAD"] } }
                  ]
                }
              ]
            })
        );

        let read: ServiceIntentionsEntry = serde_json::from_str(READ_ENTRY).unwrap();
        let out = serde_json::to_value(&read).unwrap();
        assert_eq!(out["CreateIndex"], 41);
        assert_eq!(out["Sources"][0]["Type"], "consul");
        assert_eq!(out["Sources"][0]["Precedence"], 9);
        assert_eq!(
            out["Sources"][1]["Permissions"][0]["HTTP"]["Header"][0],
            json!({ "Name": "X-Debug", "Present": true, "Invert": true })
        );
        assert_eq!(
            serde_json::from_value::<ServiceIntentionsEntry>(out).unwrap(),
            read
        );
    }

    #[test]
    fn serializes_intentions_with_consul_spellings() {
        let resp: IntentionMatchResponse = serde_json::from_str(MATCH_RESPONSE).unwrap();
        let orders = resp["orders"].as_ref().unwrap();
        let l4 = serde_json::to_value(&orders[0]).unwrap();
        assert_eq!(
            l4,
            json!({
              "SourceNS": "default", "SourceName": "storefront",
              "DestinationNS": "default", "DestinationName": "orders",
              "SourceType": "consul", "Action": "allow", "Precedence": 9,
              "CreateIndex": 20, "ModifyIndex": 20
            })
        );
        let legacy = serde_json::to_value(&orders[2]).unwrap();
        assert_eq!(legacy["ID"], "0d9f7c5e-6a43-4b1e-9a55-1f0b7c2d3e4f");
        assert!(legacy.get("Meta").is_none() && legacy.get("Description").is_none());
        let l7 = serde_json::to_value(&orders[1]).unwrap();
        assert!(l7.get("Action").is_none());
        assert_eq!(l7["Permissions"][0]["HTTP"]["PathExact"], "/orders/export");
    }
}
