//! `service-defaults` and `proxy-defaults` config entries, for what they mean to a
//! sidecar: its protocol.
//!
//! As Consul does, the agent merges them into what `/v1/agent/service/:id` answers for
//! a sidecar: proxy-defaults' `Config` under the registration's own `Proxy.Config`, and
//! the protocol (the registration's own, else the destination's service-defaults, else
//! proxy-defaults) into `Proxy.Config` and into each upstream's `Config` (from the
//! upstream's destination). And as Consul's servers do, it refuses L7 intentions
//! (`Permissions`) for a service whose protocol is not HTTP-like, and a protocol change
//! that would leave such intentions behind. Only `Protocol`, `Config` and `Meta` are
//! kept; any other key of these entries is refused, naming it.

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use ferrule_control::api::agent::AgentService;
use ferrule_control::api::defaults::{
    GLOBAL, PROXY_DEFAULTS, ProxyDefaultsEntry, SERVICE_DEFAULTS, ServiceDefaultsEntry,
};

use super::blocking::{self, DEFAULT_WAIT};
use super::http::{ApiError, Call, Reply};
use super::state::{Shared, State};

const PROTOCOL: &str = "protocol";
/// Keys a `GET` answer carries that a `PUT` of the same document may send back.
const READ_ONLY_KEYS: [&str; 3] = ["CreateIndex", "ModifyIndex", "Hash"];

pub(super) fn is_defaults_kind(kind: &str) -> bool {
    kind == SERVICE_DEFAULTS || kind == PROXY_DEFAULTS
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

/// The agent's view of a sidecar, with the central defaults merged in.
pub(super) fn merge(state: &State, service: &mut AgentService) {
    if !service.is_connect_proxy() {
        return;
    }
    let Some(proxy) = service.proxy.as_mut() else {
        return;
    };
    let registered = proxy.config.contains_key(PROTOCOL);
    if let Some(defaults) = &state.proxy_defaults {
        for (key, value) in &defaults.config {
            proxy
                .config
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
    }
    // The registration's own protocol wins; the destination's service-defaults beat
    // proxy-defaults.
    if !registered
        && let Some(entry) = state.service_defaults.get(&proxy.destination_service_name)
        && !entry.protocol.is_empty()
    {
        proxy
            .config
            .insert(PROTOCOL.to_owned(), json!(entry.protocol));
    }
    for upstream in &mut proxy.upstreams {
        if upstream.config.contains_key(PROTOCOL) {
            continue;
        }
        let protocol = protocol_of(state, &upstream.destination_name);
        if !protocol.is_empty() {
            upstream.config.insert(PROTOCOL.to_owned(), json!(protocol));
        }
    }
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
            "Request decoding failed: the dev agent keeps only Protocol, Config and Meta of {kind} entries, not {unknown:?}"
        )));
    }
    Ok(entry)
}

/// `PUT /v1/config` for a defaults kind.
pub(super) fn put(shared: &Shared, call: &Call, raw: Value, kind: &str) -> Result<Reply, ApiError> {
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
        shared.with(|state| {
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
    } else {
        let mut entry: ProxyDefaultsEntry = decode(raw, kind)?;
        if entry.name != GLOBAL {
            return Err(ApiError::internal(format!(
                "invalid name ({:?}), only \"global\" is supported",
                entry.name
            )));
        }
        entry.kind = PROXY_DEFAULTS.to_owned();
        shared.with(|state| {
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

/// Finishes a write whose new entry is already in place: undone if it would strand an
/// L7 intention; otherwise stamped with a new index, unless nothing changed.
fn commit<T: Indexed>(
    state: &mut State,
    old: Option<T>,
    new: &T,
    stored: impl FnOnce(&mut State) -> Option<&mut T>,
    undo: impl FnOnce(&mut State, Option<T>),
) -> Result<bool, ApiError> {
    if let Err(e) = state.check_l7_intentions() {
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
    let consistency = call.consistency()?;
    let opts = call.blocking()?;
    let answer = blocking::by_index(shared, &opts, DEFAULT_WAIT, |state, _| {
        Ok((defaults_of(state, kind, name), state.intentions_index))
    })
    .await?;
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

/// `DELETE /v1/config/:kind/:name` for a defaults kind.
pub(super) fn delete(
    shared: &Shared,
    call: &Call,
    kind: &str,
    name: &str,
) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    shared.with(|state| {
        if kind == SERVICE_DEFAULTS {
            let Some(old) = state.service_defaults.remove(name) else {
                return Ok(());
            };
            if let Err(e) = state.check_l7_intentions() {
                state.service_defaults.insert(name.to_owned(), old);
                return Err(e);
            }
        } else {
            if name != GLOBAL {
                return Ok(());
            }
            let Some(old) = state.proxy_defaults.take() else {
                return Ok(());
            };
            if let Err(e) = state.check_l7_intentions() {
                state.proxy_defaults = Some(old);
                return Err(e);
            }
        }
        let index = state.bump();
        state.intentions_index = index;
        Ok(())
    })?;
    Reply::json(&json!({}))
}
