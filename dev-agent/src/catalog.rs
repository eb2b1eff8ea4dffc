//! The catalog reads (https://developer.hashicorp.com/consul/api-docs/catalog):
//! `/v1/catalog/services`, `/service/:name`, `/connect/:name`, `/nodes` and
//! `/node/:node`, in Consul's JSON shapes, with blocking queries (each answer carries
//! the index of what went into it), `?tag=` where Consul takes it, and `?filter=`
//! evaluated on each item (`filter`). The dev agent is its one node, and, as a server,
//! its catalog holds the `consul` service that every Consul server registers (RPC port
//! 8300, the server's metadata, only the node's `serfHealth` check) beside the services
//! registered with it; the agent's own `/v1/agent/services` does not list it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use ferrule_control::api::agent::AgentWeights as Weights;
use ferrule_control::api::agent::{
    AgentServiceConnect, AgentServiceConnectProxyConfig, AgentWeights, ServiceAddress,
};
use ferrule_control::api::health::{NodeService, ServiceEntry};

use super::blocking::{self, DEFAULT_WAIT};
use super::filter;
use super::http::{ApiError, Call, Reply};
use super::selectors::{self, Shape};
use super::state::{Shared, State};

/// One instance as `/v1/catalog/service/:name` answers it (`structs.ServiceNode`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceNode {
    #[serde(rename = "ID")]
    id: String,
    node: String,
    address: String,
    datacenter: String,
    tagged_addresses: BTreeMap<String, String>,
    node_meta: BTreeMap<String, String>,
    service_kind: String,
    #[serde(rename = "ServiceID")]
    service_id: String,
    service_name: String,
    service_tags: Vec<String>,
    service_address: String,
    service_tagged_addresses: BTreeMap<String, ServiceAddress>,
    service_weights: AgentWeights,
    service_meta: BTreeMap<String, String>,
    service_port: u16,
    service_socket_path: String,
    service_enable_tag_override: bool,
    service_proxy: AgentServiceConnectProxyConfig,
    service_connect: AgentServiceConnect,
    create_index: u64,
    modify_index: u64,
}

impl ServiceNode {
    fn of(entry: ServiceEntry) -> ServiceNode {
        let (node, svc) = (entry.node, entry.service);
        ServiceNode {
            id: node.id,
            node: node.node,
            address: node.address,
            datacenter: node.datacenter,
            tagged_addresses: node.tagged_addresses,
            node_meta: node.meta,
            service_kind: svc.kind,
            service_id: svc.id,
            service_name: svc.service,
            service_tags: svc.tags,
            service_address: svc.address,
            service_tagged_addresses: svc.tagged_addresses,
            service_weights: svc.weights.unwrap_or_default(),
            service_meta: svc.meta,
            service_port: svc.port,
            service_socket_path: svc.socket_path,
            service_enable_tag_override: svc.enable_tag_override,
            service_proxy: svc.proxy,
            service_connect: svc.connect,
            create_index: svc.create_index,
            modify_index: svc.modify_index,
        }
    }
}

/// Answers a catalog read: blocking on `read`'s index, then filtered (the filter naming
/// fields of `items`).
async fn answer<T: Serialize>(
    shared: &Shared,
    call: &Call,
    items: Shape,
    read: impl FnMut(&mut State) -> (Vec<T>, u64),
    finish: impl FnOnce(Vec<T>) -> Result<Reply, ApiError>,
) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let filter = filter::checked(call, items)?;
    let consistency = call.consistency()?;
    let opts = call.blocking()?;
    if call.foreign_datacenter(&shared.config.datacenter) {
        return Err(ApiError::internal("No path to datacenter"));
    }
    let mut read = read;
    let mut found =
        blocking::by_index(shared, &opts, DEFAULT_WAIT, |state, _| Ok(read(state))).await?;
    filter::retain(filter.as_ref(), &mut found.value);
    Ok(finish(found.value)?
        .index(found.index)
        .leader_meta(consistency))
}

/// `GET /v1/catalog/service/:name` (`connect` false) and `/v1/catalog/connect/:name`.
pub(super) async fn service(
    shared: &Shared,
    call: &Call,
    name: &str,
    connect: bool,
) -> Result<Reply, ApiError> {
    let tags: Vec<String> = call.query.all("tag").map(str::to_owned).collect();
    answer(
        shared,
        call,
        selectors::SERVICE_NODE,
        |state| {
            let (entries, index) = state.health_entries(name, connect);
            let nodes = entries
                .into_iter()
                .filter(|e| tags.iter().all(|t| e.service.tags.contains(t)))
                .map(ServiceNode::of)
                .collect();
            (nodes, index)
        },
        |nodes| Reply::json(&nodes),
    )
    .await
}

/// `GET /v1/catalog/services`: each service name with the union of its instances' tags.
/// The filter sees instances (`ServiceName`, `ServiceTags`, ...), as Consul's does.
pub(super) async fn services(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    answer(
        shared,
        call,
        selectors::SERVICE_NODE,
        |state| {
            let index = state.services_index();
            let nodes = catalog_names(state)
                .iter()
                .flat_map(|name| state.health_entries(name, false).0)
                .map(ServiceNode::of)
                .collect();
            (nodes, index)
        },
        |nodes| {
            let mut tags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for node in nodes {
                tags.entry(node.service_name)
                    .or_default()
                    .extend(node.service_tags);
            }
            Reply::json(&tags)
        },
    )
    .await
}

/// `GET /v1/catalog/nodes`.
pub(super) async fn nodes(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    answer(
        shared,
        call,
        selectors::CATALOG_NODE,
        |state| (vec![state.node.node.clone()], state.node.node.modify_index),
        |nodes| Reply::json(&nodes),
    )
    .await
}

/// `GET /v1/catalog/node/:node`: the node and its services by ID; `null` for a node
/// the catalog does not know. The filter applies to the services.
pub(super) async fn node(shared: &Shared, call: &Call, name: &str) -> Result<Reply, ApiError> {
    let known = shared.with(|state| state.node.node.node == name);
    let node = shared.with(|state| state.node.node.clone());
    answer(
        shared,
        call,
        selectors::NODE_SERVICE,
        |state| {
            if !known {
                return (Vec::new(), state.services_index());
            }
            let services = catalog_names(state)
                .iter()
                .flat_map(|name| state.health_entries(name, false).0)
                .map(|e| e.service)
                .collect();
            (services, state.services_index())
        },
        |services| {
            if !known {
                return Reply::json(&Value::Null);
            }
            let by_id: BTreeMap<String, _> =
                services.into_iter().map(|s| (s.id.clone(), s)).collect();
            Reply::json(&serde_json::json!({ "Node": node, "Services": by_id }))
        },
    )
    .await
}

/// Every service name in the catalog: `consul`, and those registered with the agent.
fn catalog_names(state: &State) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = state
        .services
        .values()
        .map(|s| s.service.service.clone())
        .collect();
    names.insert(CONSUL.to_owned());
    names
}

/// The name of the service every Consul server registers for itself.
pub(super) const CONSUL: &str = "consul";

/// The `consul` service of the dev agent's node, as a server registers it: port 8300,
/// the server's metadata, no checks of its own.
pub(super) fn consul_service(state: &State) -> NodeService {
    let meta = [
        ("grpc_port", "8502"),
        ("grpc_tls_port", "8503"),
        ("non_voter", "false"),
        ("raft_version", "3"),
        ("read_replica", "false"),
        ("serf_protocol_current", "2"),
        ("serf_protocol_max", "5"),
        ("serf_protocol_min", "1"),
        ("version", super::http::VERSION),
    ];
    NodeService {
        id: CONSUL.to_owned(),
        service: CONSUL.to_owned(),
        meta: meta
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        port: 8300,
        weights: Some(Weights {
            passing: 1,
            warning: 1,
        }),
        create_index: state.node.node.create_index,
        modify_index: state.node.node.modify_index,
        ..NodeService::default()
    }
}
