//! `service-defaults` and `proxy-defaults` config entries, for what they mean to a
//! sidecar: its protocol, timeouts, connection limit, mesh gateway mode and upstream
//! settings.
//!
//! As Consul's agent does, the dev agent merges them into what `/v1/agent/service/:id`
//! answers for a sidecar (`docs/consul-semantics.md#sidecar-registration`): the
//! registration's own `Proxy.Config` first, then the destination's service-defaults
//! (`Protocol`, `MaxInboundConnections`, `LocalConnectTimeoutMs`,
//! `LocalRequestTimeoutMs` as `Config` keys, `MeshGateway`), then proxy-defaults
//! (`Config`, `MeshGateway`); each upstream's `Config` gets its protocol and the
//! downstream's `UpstreamConfig` (defaults, then the override naming it). And as
//! Consul's servers do, it refuses L7 intentions (`Permissions`) for a service whose
//! protocol is not HTTP-like, and a protocol change that would leave such intentions
//! behind. Writes and deletes honour `?cas=`. Keys that never reach a sidecar are
//! refused, naming them.
//!
//! The `mesh` entry is stored here too, for its `HTTP.Incoming.RequestNormalization`
//! (which a proxy reads itself, as it reads proxy-defaults' `AccessLogs`): its name is
//! always `mesh`, and its actions are checked as Consul's server checks them
//! (`docs/consul-semantics.md#request-normalization`).

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use serde_json::Map;

use ferrule_control::api::agent::{AgentService, MeshGatewayConfig};
use ferrule_control::api::defaults::{
    AccessLogsConfig, GLOBAL, MESH, MeshEntry, PROXY_DEFAULTS, ProxyDefaultsEntry,
    SERVICE_DEFAULTS, ServiceDefaultsEntry,
};
use ferrule_control::normalization::RequestNormalization;

use super::blocking::{self, DEFAULT_WAIT};
use super::http::{ApiError, Call, Reply};
use super::state::{Shared, State};
use super::{filter, intentions};

const PROTOCOL: &str = "protocol";
/// Keys a `GET` answer carries that a `PUT` of the same document may send back.
const READ_ONLY_KEYS: [&str; 3] = ["CreateIndex", "ModifyIndex", "Hash"];

pub(super) fn is_defaults_kind(kind: &str) -> bool {
    kind == SERVICE_DEFAULTS || kind == PROXY_DEFAULTS || kind == MESH
}

fn is_http_like(protocol: &str) -> bool {
    matches!(protocol, "http" | "http2" | "grpc")
}

/// The protocol Consul would resolve for `service`: its service-defaults, else
/// proxy-defaults, else none (which proxies read as `tcp`).
pub(super) fn protocol_of(state: &State, service: &str) -> String {
    if let Some(entry) = state.service_defaults.get(service)
        && !entry.protocol.is_empty()
    {
        return entry.protocol.clone();
    }
    state
        .proxy_defaults
        .as_ref()
        .and_then(|p| p.config.get(PROTOCOL))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// L7 intentions need an HTTP-like destination (Consul's server refuses them otherwise).
pub(super) fn check_l7_allowed(state: &State, destination: &str) -> Result<(), ApiError> {
    let protocol = protocol_of(state, destination);
    if is_http_like(&protocol) {
        return Ok(());
    }
    let shown = if protocol.is_empty() {
        "tcp"
    } else {
        protocol.as_str()
    };
    Err(ApiError::internal(format!(
        "service {destination:?} has protocol {shown:?}, which is incompatible with L7 intentions permissions"
    )))
}

/// The agent's view of a sidecar, with the central defaults merged in as Consul's
/// agent merges them: the registration's own values first, then the destination's
/// service-defaults, then proxy-defaults; per upstream, the upstream's own `Config`
/// first, then what [`upstream_config`] resolves.
pub(super) fn merge(state: &State, service: &mut AgentService) {
    if !service.is_connect_proxy() {
        return;
    }
    let Some(proxy) = service.proxy.as_mut() else {
        return;
    };
    let own = state.service_defaults.get(&proxy.destination_service_name);
    let (resolved, mesh_gateway) = proxy_config(state, own);
    // The registration's own mesh gateway, before the central one fills it in.
    let registered_gateway = proxy.mesh_gateway.clone();
    for (key, value) in resolved {
        proxy.config.entry(key).or_insert(value);
    }
    if proxy.mesh_gateway.is_empty() {
        proxy.mesh_gateway = mesh_gateway.clone();
    }
    for upstream in &mut proxy.upstreams {
        let resolved = upstream_config(
            state,
            own,
            &mesh_gateway,
            &registered_gateway,
            &upstream.destination_name,
        );
        if upstream.mesh_gateway.is_empty()
            && let Some(mode) = resolved.get("mesh_gateway").and_then(|m| m.get("Mode"))
        {
            upstream.mesh_gateway.mode = mode.as_str().unwrap_or_default().to_owned();
        }
        for (key, value) in resolved {
            upstream.config.entry(key).or_insert(value);
        }
    }
}

/// The central part of a sidecar's `Proxy.Config` and its mesh gateway: proxy-defaults'
/// `Config` and `MeshGateway`, overridden by what the service's service-defaults set.
fn proxy_config(
    state: &State,
    own: Option<&ServiceDefaultsEntry>,
) -> (Map<String, Value>, MeshGatewayConfig) {
    let mut config = Map::new();
    let mut gateway = MeshGatewayConfig::default();
    if let Some(defaults) = &state.proxy_defaults {
        config = defaults.config.clone();
        gateway = defaults.mesh_gateway.clone();
    }
    let Some(entry) = own else {
        return (config, gateway);
    };
    if !entry.protocol.is_empty() {
        config.insert(PROTOCOL.to_owned(), json!(entry.protocol));
    }
    for (key, value) in [
        ("max_inbound_connections", entry.max_inbound_connections),
        ("local_connect_timeout_ms", entry.local_connect_timeout_ms),
        ("local_request_timeout_ms", entry.local_request_timeout_ms),
    ] {
        if value > 0 {
            config.insert(key.to_owned(), json!(value));
        }
    }
    if !entry.mesh_gateway.is_empty() {
        gateway = entry.mesh_gateway.clone();
    }
    (config, gateway)
}

/// One upstream's central `Config`, in Consul's order: the protocol (proxy-defaults',
/// else the upstream's own service-defaults'), then the downstream's
/// `UpstreamConfig.Defaults` (its mesh gateway defaulting to the sidecar's), then the
/// registration's own mesh gateway, then the downstream's override for that upstream.
fn upstream_config(
    state: &State,
    own: Option<&ServiceDefaultsEntry>,
    gateway: &MeshGatewayConfig,
    registered_gateway: &MeshGatewayConfig,
    upstream: &str,
) -> Map<String, Value> {
    let mut config = Map::new();
    let protocol = protocol_of(state, upstream);
    if !protocol.is_empty() {
        config.insert(PROTOCOL.to_owned(), json!(protocol));
    }
    let central = own.and_then(|e| e.upstream_config.as_ref());
    if let Some(defaults) = central.and_then(|c| c.defaults.as_ref()) {
        let mut defaults = defaults.clone();
        if defaults.mesh_gateway.is_empty() {
            defaults.mesh_gateway = gateway.clone();
        }
        defaults.merge_into(&mut config);
    }
    if !registered_gateway.is_empty() {
        config.insert("mesh_gateway".to_owned(), json!(registered_gateway));
    }
    if let Some(over) = central.and_then(|c| c.overrides.iter().find(|o| o.name == upstream)) {
        over.merge_into(&mut config);
    }
    config
}

impl State {
    /// Every L7 intention still has an HTTP-like destination.
    fn check_l7_intentions(&self) -> Result<(), ApiError> {
        for (name, entry) in &self.intentions {
            if entry.sources.iter().any(|s| !s.permissions.is_empty()) {
                check_l7_allowed(self, name)?;
            }
        }
        Ok(())
    }
}

/// Decodes an entry, refusing keys the dev agent does not model.
fn decode<T: DeserializeOwned>(raw: Value, kind: &str) -> Result<T, ApiError> {
    let mut ignored = Vec::new();
    let entry: T = serde_ignored::deserialize(raw, |path| ignored.push(path.to_string()))
        .map_err(|e| ApiError::bad_request(format!("Request decoding failed: {e}")))?;
    let unknown: Vec<String> = ignored
        .into_iter()
        .filter(|p| !READ_ONLY_KEYS.contains(&p.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Request decoding failed: the dev agent keeps only the keys that reach a sidecar of {kind} entries (Protocol, MeshGateway, LocalConnectTimeoutMs, LocalRequestTimeoutMs, MaxInboundConnections, UpstreamConfig; Config, MeshGateway, AccessLogs; HTTP.Incoming.RequestNormalization), not {unknown:?}"
        )));
    }
    Ok(entry)
}

/// `PUT /v1/config` for a defaults kind.
pub(super) fn put(
    shared: &Shared,
    call: &Call,
    raw: Value,
    kind: &str,
    cas: Option<u64>,
) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let written = if kind == SERVICE_DEFAULTS {
        let mut entry: ServiceDefaultsEntry = decode(raw, kind)?;
        if entry.name.is_empty() || entry.name == "*" {
            return Err(ApiError::internal(format!(
                "Name is required and must not be a wildcard for {kind}"
            )));
        }
        entry.kind = SERVICE_DEFAULTS.to_owned();
        entry.protocol = entry.protocol.to_ascii_lowercase();
        validate_gateway(&entry.mesh_gateway)?;
        shared.with(|state| {
            let current = state
                .service_defaults
                .get(&entry.name)
                .map(|e| e.modify_index);
            if !intentions::cas_allows(cas, current) {
                return Ok(false);
            }
            let old = state
                .service_defaults
                .insert(entry.name.clone(), entry.clone());
            let name = entry.name.clone();
            commit(
                state,
                old,
                &entry,
                |state| state.service_defaults.get_mut(&name),
                |state, old| restore(&mut state.service_defaults, &entry.name, old),
            )
        })?
    } else if kind == MESH {
        let mut entry: MeshEntry = decode(raw, kind)?;
        if !entry.name.is_empty() && entry.name != MESH {
            return Err(ApiError::internal(format!(
                "invalid name ({:?}), only \"{MESH}\" is supported",
                entry.name
            )));
        }
        entry.kind = MESH.to_owned();
        entry.name = String::new();
        if let Some(config) = entry.request_normalization() {
            RequestNormalization::from_config(config).map_err(|e| {
                ApiError::internal(format!(
                    "error in HTTP incoming request normalization configuration: {e}"
                ))
            })?;
        }
        shared.with(|state| {
            let current = state.mesh.as_ref().map(|e| e.modify_index);
            if !intentions::cas_allows(cas, current) {
                return Ok(false);
            }
            let old = state.mesh.replace(entry.clone());
            commit(
                state,
                old,
                &entry,
                |state| state.mesh.as_mut(),
                |state, old| state.mesh = old,
            )
        })?
    } else {
        let mut entry: ProxyDefaultsEntry = decode(raw, kind)?;
        if entry.name != GLOBAL {
            return Err(ApiError::internal(format!(
                "invalid name ({:?}), only \"global\" is supported",
                entry.name
            )));
        }
        entry.kind = PROXY_DEFAULTS.to_owned();
        validate_gateway(&entry.mesh_gateway)?;
        if let Some(logs) = &entry.access_logs {
            validate_access_logs(logs)?;
        }
        shared.with(|state| {
            let current = state.proxy_defaults.as_ref().map(|e| e.modify_index);
            if !intentions::cas_allows(cas, current) {
                return Ok(false);
            }
            let old = state.proxy_defaults.replace(entry.clone());
            commit(
                state,
                old,
                &entry,
                |state| state.proxy_defaults.as_mut(),
                |state, old| state.proxy_defaults = old,
            )
        })?
    };
    Reply::json(&written)
}

/// What Consul checks of `AccessLogs` when the entry is written (the operators are
/// not: the proxy finds those out; see `docs/consul-semantics.md#access-logs`).
fn validate_access_logs(logs: &AccessLogsConfig) -> Result<(), ApiError> {
    let invalid = |why: &str| Err(ApiError::internal(format!("invalid AccessLogs: {why}")));
    if !logs.json_format.is_empty() && !logs.text_format.is_empty() {
        return invalid("JSONFormat and TextFormat cannot both be set");
    }
    match logs.kind.as_str() {
        "file" if logs.path.is_empty() => invalid("Type file needs a Path"),
        "file" => Ok(()),
        "" | "stdout" | "stderr" if !logs.path.is_empty() => invalid("Path is only for Type file"),
        "" | "stdout" | "stderr" => Ok(()),
        other => invalid(&format!("unknown Type {other:?}")),
    }
}

/// Consul's mesh gateway modes (empty: the default).
fn validate_gateway(gateway: &MeshGatewayConfig) -> Result<(), ApiError> {
    match gateway.mode.as_str() {
        "" | "local" | "remote" | "none" => Ok(()),
        other => Err(ApiError::internal(format!(
            "Invalid Mode for MeshGatewayConfig: {other}"
        ))),
    }
}

fn restore(
    map: &mut std::collections::BTreeMap<String, ServiceDefaultsEntry>,
    name: &str,
    old: Option<ServiceDefaultsEntry>,
) {
    match old {
        Some(old) => {
            map.insert(name.to_owned(), old);
        }
        None => {
            map.remove(name);
        }
    }
}

/// Equal but for the indexes: an unchanged write is a no-op and wakes nobody.
trait Indexed: Clone + PartialEq {
    fn indexes(&mut self) -> (&mut u64, &mut u64);

    fn same_as(&self, other: &Self) -> bool {
        let (mut a, mut b) = (self.clone(), other.clone());
        for e in [&mut a, &mut b] {
            let (create, modify) = e.indexes();
            (*create, *modify) = (0, 0);
        }
        a == b
    }
}

impl Indexed for ServiceDefaultsEntry {
    fn indexes(&mut self) -> (&mut u64, &mut u64) {
        (&mut self.create_index, &mut self.modify_index)
    }
}

impl Indexed for ProxyDefaultsEntry {
    fn indexes(&mut self) -> (&mut u64, &mut u64) {
        (&mut self.create_index, &mut self.modify_index)
    }
}

impl Indexed for MeshEntry {
    fn indexes(&mut self) -> (&mut u64, &mut u64) {
        (&mut self.create_index, &mut self.modify_index)
    }
}

/// Finishes a write whose new entry is already in place: undone if it would strand an
/// L7 intention; otherwise stamped with a new index, unless nothing changed.
fn commit<T: Indexed>(
    state: &mut State,
    old: Option<T>,
    new: &T,
    stored: impl FnOnce(&mut State) -> Option<&mut T>,
    undo: impl FnOnce(&mut State, Option<T>),
) -> Result<bool, ApiError> {
    if let Err(e) = state
        .check_l7_intentions()
        .and_then(|()| state.check_chains())
    {
        undo(state, old);
        return Err(e);
    }
    let unchanged = old.as_ref().is_some_and(|o| o.same_as(new));
    let index = if unchanged { None } else { Some(state.bump()) };
    let Some(stored) = stored(state) else {
        return Ok(true);
    };
    let (create, modify) = stored.indexes();
    match (index, old) {
        (Some(index), Some(mut old)) => (*create, *modify) = (*old.indexes().0, index),
        (Some(index), None) => (*create, *modify) = (index, index),
        (None, Some(mut old)) => {
            let (c, m) = old.indexes();
            (*create, *modify) = (*c, *m);
        }
        (None, None) => {}
    }
    if let Some(index) = index {
        state.intentions_index = index;
    }
    Ok(true)
}

fn defaults_of(state: &State, kind: &str, name: Option<&str>) -> Value {
    if kind == SERVICE_DEFAULTS {
        match name {
            Some(name) => state
                .service_defaults
                .get(name)
                .map_or(Value::Null, |e| json!(e)),
            None => json!(state.service_defaults.values().collect::<Vec<_>>()),
        }
    } else if kind == MESH {
        let entry = state.mesh.as_ref();
        match name {
            Some(name) => entry
                .filter(|_| name == MESH)
                .map_or(Value::Null, |e| json!(e)),
            None => json!(entry.into_iter().collect::<Vec<_>>()),
        }
    } else {
        let entry = state.proxy_defaults.as_ref();
        match name {
            Some(name) => entry
                .filter(|_| name == GLOBAL)
                .map_or(Value::Null, |e| json!(e)),
            None => json!(entry.into_iter().collect::<Vec<_>>()),
        }
    }
}

/// `GET /v1/config/:kind/:name` and `GET /v1/config/:kind` for a defaults kind.
pub(super) async fn get(
    shared: &Shared,
    call: &Call,
    kind: &str,
    name: Option<&str>,
) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let filter = filter::of(call)?;
    let consistency = call.consistency()?;
    let opts = call.blocking()?;
    let mut answer = blocking::by_index(shared, &opts, DEFAULT_WAIT, |state, _| {
        Ok((defaults_of(state, kind, name), state.intentions_index))
    })
    .await?;
    if let (None, Value::Array(items)) = (name, &mut answer.value) {
        filter::retain(filter.as_ref(), items);
    }
    if let (Some(name), Value::Null) = (name, &answer.value) {
        return Err(
            ApiError::not_found(format!("Config entry not found for {kind:?} / {name:?}"))
                .with_index(answer.index),
        );
    }
    Ok(Reply::json(&answer.value)?
        .index(answer.index)
        .leader_meta(consistency))
}

/// `DELETE /v1/config/:kind/:name` for a defaults kind: `{}`, or with `?cas=` whether
/// the entry was deleted.
pub(super) fn delete(
    shared: &Shared,
    call: &Call,
    kind: &str,
    name: &str,
    cas: Option<u64>,
) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let deleted = shared.with(|state| {
        let current = if kind == SERVICE_DEFAULTS {
            state.service_defaults.get(name).map(|e| e.modify_index)
        } else if kind == MESH {
            state
                .mesh
                .as_ref()
                .filter(|_| name == MESH)
                .map(|e| e.modify_index)
        } else {
            state
                .proxy_defaults
                .as_ref()
                .filter(|_| name == GLOBAL)
                .map(|e| e.modify_index)
        };
        if !intentions::cas_allows(cas, current) || (cas == Some(0)) {
            return Ok(false);
        }
        if current.is_none() {
            return Ok(true);
        }
        remove(state, kind, name)?;
        let index = state.bump();
        state.intentions_index = index;
        Ok(true)
    })?;
    match cas {
        Some(_) => Reply::json(&deleted),
        None => Reply::json(&json!({})),
    }
}

/// Removes a stored entry, unless that would strand an L7 intention.
fn remove(state: &mut State, kind: &str, name: &str) -> Result<(), ApiError> {
    if kind == SERVICE_DEFAULTS {
        if let Some(old) = state.service_defaults.remove(name)
            && let Err(e) = state
                .check_l7_intentions()
                .and_then(|()| state.check_chains())
        {
            state.service_defaults.insert(name.to_owned(), old);
            return Err(e);
        }
    } else if kind == MESH {
        // Nothing else depends on the mesh entry.
        state.mesh = None;
    } else if let Some(old) = state.proxy_defaults.take()
        && let Err(e) = state
            .check_l7_intentions()
            .and_then(|()| state.check_chains())
    {
        state.proxy_defaults = Some(old);
        return Err(e);
    }
    Ok(())
}
