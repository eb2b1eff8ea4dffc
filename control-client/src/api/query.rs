//! Consul's prepared-query wire types: the answer of `GET /v1/query/<id or
//! name>/execute` (`structs.PreparedQueryExecuteResponse`); see
//! docs/consul-semantics.md#prepared-queries.

use serde::{Deserialize, Serialize};

use super::health::ServiceEntry;
use super::nullable;

/// One execution of a prepared query: the instances it selected, and where they came
/// from.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PreparedQueryExecuteResponse {
    /// The service the query selected.
    #[serde(deserialize_with = "nullable")]
    pub service: String,
    /// Enterprise only.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    /// The selected instances (with `?connect=true`, their sidecars and Connect-native
    /// instances); never one with a critical check.
    #[serde(deserialize_with = "nullable")]
    pub nodes: Vec<ServiceEntry>,
    #[serde(rename = "DNS", deserialize_with = "nullable")]
    pub dns: QueryDns,
    /// The datacenter that answered: another one than asked after a failover.
    #[serde(deserialize_with = "nullable")]
    pub datacenter: String,
    /// How many other datacenters were tried.
    #[serde(deserialize_with = "nullable")]
    pub failovers: u32,
}

/// `DNS` of an execution's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct QueryDns {
    /// A duration (`"10s"`); `""` when the query sets none.
    #[serde(rename = "TTL", deserialize_with = "nullable")]
    pub ttl: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_execution_reads_as_consul_writes_it() {
        let answer: PreparedQueryExecuteResponse = serde_json::from_str(
            r#"{"Service":"db","Nodes":[{"Node":{"Node":"n2","Datacenter":"dc2"},
                "Service":{"Service":"db-sidecar-proxy","Port":21000},"Checks":null}],
                "DNS":{"TTL":"10s"},"Datacenter":"dc2","Failovers":1,"Index":7}"#,
        )
        .unwrap();
        assert_eq!(answer.service, "db");
        assert_eq!(answer.datacenter, "dc2");
        assert_eq!(answer.failovers, 1);
        assert_eq!(answer.dns.ttl, "10s");
        assert_eq!(answer.nodes[0].node.datacenter, "dc2");
        let empty: PreparedQueryExecuteResponse =
            serde_json::from_str(r#"{"Nodes":null,"DNS":null}"#).unwrap();
        assert!(empty.nodes.is_empty());
    }
}
