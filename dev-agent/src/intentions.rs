//! Intentions, stored as `service-intentions` config entries: the config entry
//! endpoints, the legacy `exact` endpoints that edit one source of an entry, `match`, the
//! list, `check` and `/v1/agent/connect/authorize` (`docs/consul-semantics.md#intentions`,
//! https://developer.hashicorp.com/consul/api-docs/connect/intentions).
//!
//! What intentions mean is not decided here: writes are validated with the code the proxy
//! builds its model with, precedence and order come from `ferrule_control::intentions`,
//! and `check` and `authorize` call the proxy's own `decide`, then put its decision in
//! Consul's words. Writes are normalized as Consul's server does it: `Type` defaulted,
//! `Precedence` computed, HTTP methods upper-cased, sources re-sorted by precedence
//! (stable). An unchanged write is a no-op, as in Consul, so it wakes nobody. Every
//! intention read is answered with the config-entry table's index.

#[cfg(test)]
mod agreement;

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use ferrule_control::api::intentions::{
    Intention, IntentionMatchResponse, KIND, ServiceIntentionsEntry, SourceIntention,
};
use ferrule_control::identity::{DEFAULT, IdError, ServiceId};
use ferrule_control::intentions::{
    Action, Decision, Destination, Intentions, OrderKey, Peer, Reason, decide, precedence_of,
    validate_config_entries,
};

use super::blocking::{self, DEFAULT_WAIT};
use super::filter;
use super::http::{ApiError, Call, Reply, decode_strict};
use super::selectors;
use super::state::{Shared, State};
use super::{chain, defaults};

const WILDCARD: &str = "*";
/// Keys a `GET` answer carries that a `PUT` of the same document may send back.
const READ_ONLY_KEYS: [&str; 3] = ["CreateIndex", "ModifyIndex", "Hash"];

fn or_default(s: &str) -> &str {
    if s.is_empty() { DEFAULT } else { s }
}

/// Where an entry is kept: by destination name, as Consul CE addresses it. An entry with
/// an Enterprise namespace or partition (only a state file or a test can hold one: the
/// HTTP API refuses those keys) is kept under its full name, so it never replaces the
/// entry of the same name in the default namespace.
fn entry_key(entry: &ServiceIntentionsEntry) -> String {
    let partition = or_default(&entry.partition);
    let namespace = or_default(&entry.namespace);
    if partition == DEFAULT && namespace == DEFAULT {
        entry.name.clone()
    } else {
        format!("{partition}/{namespace}/{}", entry.name)
    }
}

/// Consul's `ServiceIntentionsConfigEntry.normalize`.
fn normalize(entry: &mut ServiceIntentionsEntry) {
    entry.kind = KIND.to_owned();
    for src in &mut entry.sources {
        if src.source_type.is_empty() {
            src.source_type = "consul".to_owned();
        }
        src.action = src.action.to_ascii_lowercase();
        // 1..=9: always fits.
        src.precedence = precedence_of(&entry.namespace, &entry.name, &src.namespace, &src.name)
            .try_into()
            .unwrap_or(i32::MAX);
        for perm in &mut src.permissions {
            perm.action = perm.action.to_ascii_lowercase();
            if let Some(http) = &mut perm.http {
                for method in &mut http.methods {
                    *method = method.to_ascii_uppercase();
                }
            }
        }
    }
    entry
        .sources
        .sort_by_key(|s| std::cmp::Reverse(s.precedence));
}

/// Validates, normalizes and stores `entry` at a new index, unless it equals what is
/// stored. `cas`: `Some(0)` only creates, `Some(n)` only replaces ModifyIndex `n`.
pub(super) fn store(
    state: &mut State,
    mut entry: ServiceIntentionsEntry,
    cas: Option<u64>,
) -> Result<bool, ApiError> {
    validate_config_entries(std::slice::from_ref(&entry))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    for (i, src) in entry.sources.iter().enumerate() {
        if !src.legacy_id.is_empty()
            || !src.legacy_meta.is_empty()
            || src.legacy_create_time.is_some()
            || src.legacy_update_time.is_some()
        {
            return Err(ApiError::internal(format!(
                "Sources[{i}]: Legacy fields (LegacyID, LegacyMeta, LegacyCreateTime, LegacyUpdateTime) must be omitted"
            )));
        }
    }
    if entry.sources.iter().any(|s| !s.permissions.is_empty()) {
        defaults::check_l7_allowed(state, &entry.name)?;
    }
    normalize(&mut entry);
    let key = entry_key(&entry);
    let existing = state.intentions.get(&key);
    if !cas_allows(cas, existing.map(|e| e.modify_index)) {
        return Ok(false);
    }
    if let Some(old) = existing {
        let mut unchanged = old.clone();
        unchanged.create_index = 0;
        unchanged.modify_index = 0;
        if unchanged == entry {
            return Ok(true);
        }
        entry.create_index = old.create_index;
    }
    let index = state.bump();
    if entry.create_index == 0 {
        entry.create_index = index;
    }
    entry.modify_index = index;
    state.intentions.insert(key, entry);
    state.intentions_index = index;
    Ok(true)
}

/// One source of an entry as the intentions API shows it. A local source without a
/// namespace or partition has its destination's (Consul's normalization); on CE both are
/// always the defaults.
fn to_intention(entry: &ServiceIntentionsEntry, src: &SourceIntention) -> Intention {
    let local = src.peer.is_empty() && src.sameness_group.is_empty();
    let inherited_ns = match entry.namespace.as_str() {
        ns if local && ns != WILDCARD => ns,
        _ => "",
    };
    let source_partition = if local && src.partition.is_empty() {
        &entry.partition
    } else {
        &src.partition
    };
    Intention {
        id: src.legacy_id.clone(),
        description: src.description.clone(),
        source_ns: or_default(if src.namespace.is_empty() {
            inherited_ns
        } else {
            &src.namespace
        })
        .to_owned(),
        source_name: src.name.clone(),
        source_partition: source_partition.clone(),
        destination_ns: or_default(&entry.namespace).to_owned(),
        destination_name: entry.name.clone(),
        destination_partition: entry.partition.clone(),
        source_peer: src.peer.clone(),
        source_sameness_group: src.sameness_group.clone(),
        source_type: src.source_type.clone(),
        action: src.action.clone(),
        permissions: src.permissions.clone(),
        jwt: entry.jwt.clone(),
        meta: src.legacy_meta.clone(),
        precedence: src.precedence,
        created_at: src.legacy_create_time.clone(),
        updated_at: src.legacy_update_time.clone(),
        create_index: entry.create_index,
        modify_index: entry.modify_index,
    }
}

/// Consul's `IntentionPrecedenceSorter`, as the model sorts its rules.
fn sort_for_evaluation(list: &mut [Intention]) {
    list.sort_by(|a, b| OrderKey::of_wire(a).cmp(&OrderKey::of_wire(b)));
}

impl State {
    fn all_intentions(&self) -> Vec<Intention> {
        let mut all: Vec<Intention> = self
            .intentions
            .values()
            .flat_map(|e| e.sources.iter().map(move |s| to_intention(e, s)))
            .collect();
        sort_for_evaluation(&mut all);
        all
    }

    /// `by=destination`: intentions of entries for `name` or `*`; `by=source`: those
    /// whose source is `name` or `*` (local sources only).
    fn matching(&self, by_source: bool, name: &str) -> Vec<Intention> {
        let mut out: Vec<Intention> = self
            .all_intentions()
            .into_iter()
            .filter(|i| {
                if by_source {
                    i.source_peer.is_empty()
                        && i.source_sameness_group.is_empty()
                        && (i.source_name == name || i.source_name == WILDCARD)
                } else {
                    i.destination_name == name || i.destination_name == WILDCARD
                }
            })
            .collect();
        sort_for_evaluation(&mut out);
        out
    }

    /// Whether `caller` may connect to `target`, and why in Consul's words: the proxy's
    /// own decision over the intentions this agent's `match` endpoint lists for `target`
    /// (what a proxy in front of `target` builds its model from). The default action is
    /// `default_intention_policy` when configured, else allow (ACLs are off here).
    fn authorize_caller(
        &self,
        default: Option<Action>,
        caller: &Peer,
        target: &str,
    ) -> Result<(bool, String), ApiError> {
        let default_action = default.unwrap_or(Action::Allow);
        let list = self.matching(false, target);
        let ixns = Intentions::from_match(list, Destination::new("", "", target), default_action)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let decision = decide(&ixns, caller, None);
        Ok((decision.allowed, consul_reason(&ixns, &decision, default)))
    }
}

/// The `Reason` `/v1/agent/connect/authorize` answers with for a connection-level
/// decision (`docs/consul-semantics.md#intentions`): the governing intention in Consul's
/// `Intention.String()` form, or which default applied.
fn consul_reason(ixns: &Intentions, decision: &Decision, default: Option<Action>) -> String {
    let governing = decision.matched.and_then(|i| ixns.rules().get(i));
    match (decision.reason, governing) {
        (Reason::MatchedL4 { .. }, Some(rule)) => format!("Matched L4 intention: {rule}"),
        // Only `L7IntentionOnL4` can come from a check without a request; the others are
        // named for completeness.
        (
            Reason::L7IntentionOnL4
            | Reason::MatchedPermission { .. }
            | Reason::NoPermissionMatched,
            Some(rule),
        ) => format!("Matched L7 intention: {rule}"),
        _ if default.is_some() => "Default intention policy".to_owned(),
        _ => "Default behavior configured by ACLs".to_owned(),
    }
}

/// `name`, `default/name` (or `default/default/name`): the CE spellings of a name in the
/// intentions API. `None` for another namespace or partition, which matches nothing.
fn parse_name(input: &str) -> Result<Option<String>, String> {
    if input.starts_with("peer:") {
        return Err("peer qualifiers are not supported here".to_owned());
    }
    let parts: Vec<&str> = input.split('/').collect();
    let (scopes, name) = match parts.as_slice() {
        [name] => (vec![], *name),
        [ns, name] => (vec![*ns], *name),
        [ap, ns, name] => (vec![*ap, *ns], *name),
        _ => return Err("input can contain at most two '/'".to_owned()),
    };
    if scopes.iter().all(|s| s.is_empty() || *s == DEFAULT) {
        Ok(Some(name.to_owned()))
    } else {
        Ok(None)
    }
}

/// `?source=` of the exact endpoints: a local name or `peer:<peer>/<name>`.
fn parse_source(input: &str) -> Result<(String, String), ApiError> {
    if let Some(rest) = input.strip_prefix("peer:") {
        let (peer, name) = rest
            .split_once('/')
            .ok_or_else(|| ApiError::bad_request(format!("Invalid source {input:?}")))?;
        return Ok((peer.to_owned(), name.to_owned()));
    }
    match parse_name(input) {
        Ok(Some(name)) => Ok((String::new(), name)),
        _ => Err(ApiError::bad_request(format!(
            "Invalid source {input:?}: namespaces and partitions are a Consul Enterprise feature"
        ))),
    }
}

fn required<'a>(call: &'a Call, key: &str) -> Result<&'a str, ApiError> {
    call.query
        .get(key)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("required query parameter '{key}' not set")))
}

fn check_kind(kind: &str) -> Result<(), ApiError> {
    if kind == KIND {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "the dev agent stores {KIND}, service-defaults, proxy-defaults, mesh, service-resolver, service-splitter and service-router config entries only, not {kind:?}"
        )))
    }
}

/// `?cas=<index>` of a config entry write or delete.
fn cas_of(call: &Call) -> Result<Option<u64>, ApiError> {
    match call.query.get("cas").filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(text) => text.parse::<u64>().map(Some).map_err(|_| {
            ApiError::internal(format!(
                "strconv.ParseUint: parsing {text:?}: invalid syntax"
            ))
        }),
    }
}

/// Whether a check-and-set against an entry whose ModifyIndex is `current` (`None`:
/// no such entry) may go ahead: `0` only creates, `n` only replaces index `n`.
pub(super) fn cas_allows(cas: Option<u64>, current: Option<u64>) -> bool {
    match (cas, current) {
        (None, _) | (Some(0), None) => true,
        (Some(n), Some(m)) => n != 0 && n == m,
        (Some(_), None) => false,
    }
}

/// `PUT /v1/config`.
pub(super) async fn put_config(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    let raw: Value = serde_json::from_slice(&call.body)
        .map_err(|e| ApiError::bad_request(format!("Request decoding failed: {e}")))?;
    let kind = raw
        .as_object()
        .and_then(|m| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("kind"))
                .map(|(_, v)| v)
        })
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::bad_request(
                "Request decoding failed: Payload does not contain a kind/Kind key at the top level",
            )
        })?;
    if defaults::is_defaults_kind(kind) {
        let kind = kind.to_owned();
        return defaults::put(shared, call, raw, &kind, cas_of(call)?);
    }
    if chain::is_chain_kind(kind) {
        let kind = kind.to_owned();
        return chain::put(shared, call, raw, &kind, cas_of(call)?);
    }
    check_kind(kind)?;
    call.reject_enterprise()?;
    let mut unknown = Vec::new();
    if let Value::Object(top) = &raw {
        enterprise_keys(top, "", &mut unknown);
        if let Some(Value::Array(sources)) = top.get("Sources") {
            for (i, src) in sources.iter().enumerate() {
                if let Value::Object(src) = src {
                    enterprise_keys(src, &format!("Sources[{i}]."), &mut unknown);
                }
            }
        }
    }
    let mut entry: Option<ServiceIntentionsEntry> = None;
    let mut ignored = Vec::new();
    match serde_ignored::deserialize(raw.clone(), |path| ignored.push(path.to_string())) {
        Ok(e) => entry = Some(e),
        Err(e) => unknown.push(e.to_string()),
    }
    for path in ignored {
        if !READ_ONLY_KEYS.contains(&path.as_str()) {
            unknown.push(format!("invalid config key {path:?}"));
        }
    }
    let entry = match (entry, unknown.is_empty()) {
        (Some(entry), true) => entry,
        _ => {
            return Err(ApiError::bad_request(multierror(
                "Request decoding failed",
                &unknown,
            )));
        }
    };
    let cas = cas_of(call)?;
    let written = shared.with(|state| store(state, entry, cas))?;
    Reply::json(&written)
}

/// Consul CE has no namespace or partition fields: its decoder reports them as unused.
pub(super) fn enterprise_keys(
    map: &serde_json::Map<String, Value>,
    prefix: &str,
    out: &mut Vec<String>,
) {
    for key in map.keys() {
        let lower = key.to_ascii_lowercase();
        if lower.ends_with("namespace") {
            out.push(format!(
                "invalid config key \"{prefix}{key}\", namespaces are a consul enterprise feature"
            ));
        } else if lower == "partition" {
            out.push(format!("invalid config key \"{prefix}{key}\""));
        }
    }
}

/// Go's `multierror` rendering, which Consul's config decoding errors come in.
pub(super) fn multierror(prefix: &str, errors: &[String]) -> String {
    let noun = if errors.len() == 1 { "error" } else { "errors" };
    let list: String = errors.iter().map(|e| format!("\t* {e}\n")).collect();
    format!("{prefix}: {} {noun} occurred:\n{list}\n", errors.len())
}

/// `GET /v1/config/service-intentions/:name`.
pub(super) async fn get_config(
    shared: &Shared,
    call: &Call,
    kind: &str,
    name: &str,
) -> Result<Reply, ApiError> {
    if defaults::is_defaults_kind(kind) {
        return defaults::get(shared, call, kind, Some(name)).await;
    }
    if chain::is_chain_kind(kind) {
        return chain::get(shared, call, kind, Some(name)).await;
    }
    check_kind(kind)?;
    call.reject_enterprise()?;
    let consistency = call.consistency()?;
    let opts = call.blocking()?;
    let answer = blocking::by_index(shared, &opts, DEFAULT_WAIT, |state, _| {
        Ok((state.intentions.get(name).cloned(), state.intentions_index))
    })
    .await?;
    let Some(entry) = answer.value else {
        return Err(
            ApiError::not_found(format!("Config entry not found for {kind:?} / {name:?}"))
                .with_index(answer.index),
        );
    };
    Ok(Reply::json(&entry)?
        .index(answer.index)
        .leader_meta(consistency))
}

/// `GET /v1/config/service-intentions`.
pub(super) async fn list_config(
    shared: &Shared,
    call: &Call,
    kind: &str,
) -> Result<Reply, ApiError> {
    // Every kind's list checks its filter's selectors here, before the kind's own
    // module reads it.
    if let Some(items) = selectors::config_entry(kind) {
        filter::checked(call, items)?;
    }
    if defaults::is_defaults_kind(kind) {
        return defaults::get(shared, call, kind, None).await;
    }
    if chain::is_chain_kind(kind) {
        return chain::get(shared, call, kind, None).await;
    }
    check_kind(kind)?;
    call.reject_enterprise()?;
    let filter = filter::of(call)?;
    let consistency = call.consistency()?;
    let opts = call.blocking()?;
    let mut answer = blocking::by_index(shared, &opts, DEFAULT_WAIT, |state, _| {
        let entries: Vec<ServiceIntentionsEntry> = state.intentions.values().cloned().collect();
        Ok((entries, state.intentions_index))
    })
    .await?;
    filter::retain(filter.as_ref(), &mut answer.value);
    Ok(Reply::json(&answer.value)?
        .index(answer.index)
        .leader_meta(consistency))
}

/// `DELETE /v1/config/service-intentions/:name` (`?cas=` answers `true`/`false`).
pub(super) async fn delete_config(
    shared: &Shared,
    call: &Call,
    kind: &str,
    name: &str,
) -> Result<Reply, ApiError> {
    if defaults::is_defaults_kind(kind) {
        return defaults::delete(shared, call, kind, name, cas_of(call)?);
    }
    if chain::is_chain_kind(kind) {
        return chain::delete(shared, call, kind, name, cas_of(call)?);
    }
    check_kind(kind)?;
    call.reject_enterprise()?;
    let cas = cas_of(call)?;
    let deleted = shared.with(|state| {
        let current = state.intentions.get(name).map(|e| e.modify_index);
        if let Some(n) = cas
            && current != Some(n)
        {
            return false;
        }
        if current.is_some() {
            let index = state.bump();
            state.intentions.remove(name);
            state.intentions_index = index;
        }
        true
    });
    match cas {
        Some(_) => Reply::json(&deleted),
        None => Reply::json(&json!({})),
    }
}

/// `GET /v1/connect/intentions/match?by=source|destination&name=…` (errors are plain
/// 500s, as in Consul).
pub(super) async fn matches(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let consistency = call.consistency()?;
    let opts = call.blocking()?;
    let by: Vec<&str> = call.query.all("by").collect();
    let by_source = match by.as_slice() {
        [] | [_, _, ..] => {
            return Err(ApiError::internal("required query parameter 'by' not set"));
        }
        ["source"] => true,
        ["destination"] => false,
        [_] => {
            return Err(ApiError::internal(
                "'by' parameter must be one of 'source' or 'destination'",
            ));
        }
    };
    let names: Vec<String> = call.query.all("name").map(str::to_owned).collect();
    if names.is_empty() {
        return Err(ApiError::internal(
            "required query parameter 'name' not set",
        ));
    }
    let mut parsed = Vec::with_capacity(names.len());
    for name in &names {
        let local = parse_name(name)
            .map_err(|e| ApiError::internal(format!("name {name:?} is invalid: {e}")))?;
        parsed.push(local);
    }
    let answer = blocking::by_index(shared, &opts, DEFAULT_WAIT, |state, _| {
        let body: IntentionMatchResponse = names
            .iter()
            .zip(&parsed)
            .map(|(name, local)| {
                let list = match local {
                    Some(local) => state.matching(by_source, local),
                    None => Vec::new(),
                };
                (name.clone(), Some(list))
            })
            .collect();
        Ok((body, state.intentions_index))
    })
    .await?;
    Ok(Reply::json(&answer.value)?
        .index(answer.index)
        .leader_meta(consistency))
}

/// `GET /v1/connect/intentions`.
pub(super) async fn list(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let filter = filter::checked(call, selectors::INTENTION)?;
    let consistency = call.consistency()?;
    let opts = call.blocking()?;
    let mut answer = blocking::by_index(shared, &opts, DEFAULT_WAIT, |state, _| {
        Ok((state.all_intentions(), state.intentions_index))
    })
    .await?;
    filter::retain(filter.as_ref(), &mut answer.value);
    Ok(Reply::json(&answer.value)?
        .index(answer.index)
        .leader_meta(consistency))
}

/// `GET /v1/connect/intentions/exact?source=&destination=`.
pub(super) async fn exact_get(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let consistency = call.consistency()?;
    let (peer, source) = parse_source(required(call, "source")?)?;
    let destination = exact_destination(call)?;
    let opts = call.blocking()?;
    let answer = blocking::by_index(shared, &opts, DEFAULT_WAIT, |state, _| {
        let found = state.intentions.get(&destination).and_then(|entry| {
            entry
                .sources
                .iter()
                .find(|s| s.name == source && s.peer == peer)
                .map(|s| to_intention(entry, s))
        });
        Ok((found, state.intentions_index))
    })
    .await?;
    match answer.value {
        Some(ixn) => Ok(Reply::json(&ixn)?
            .index(answer.index)
            .leader_meta(consistency)),
        None => Err(ApiError::not_found("Intention not found").with_index(answer.index)),
    }
}

fn exact_destination(call: &Call) -> Result<String, ApiError> {
    let input = required(call, "destination")?;
    match parse_name(input) {
        Ok(Some(name)) => Ok(name),
        _ => Err(ApiError::bad_request(format!(
            "Invalid destination {input:?}: namespaces and partitions are a Consul Enterprise feature"
        ))),
    }
}

/// `PUT /v1/connect/intentions/exact?source=&destination=`: upserts that source in the
/// destination's config entry. Body: `SourceType`, `Action`, `Permissions`,
/// `Description`; source and destination come from the URL.
pub(super) async fn exact_put(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let (peer, source) = parse_source(required(call, "source")?)?;
    let destination = exact_destination(call)?;
    let (body, _) = decode_strict::<Intention>(&call.body, "Request decode failed")?;
    if !body.meta.is_empty() {
        return Err(ApiError::internal("Meta must not be specified"));
    }
    let src = SourceIntention {
        name: source,
        peer,
        action: body.action,
        permissions: body.permissions,
        source_type: body.source_type,
        description: body.description,
        ..SourceIntention::default()
    };
    shared.with(|state| {
        let mut entry = state
            .intentions
            .get(&destination)
            .cloned()
            .unwrap_or_else(|| ServiceIntentionsEntry {
                kind: KIND.to_owned(),
                name: destination.clone(),
                ..ServiceIntentionsEntry::default()
            });
        match entry
            .sources
            .iter_mut()
            .find(|s| s.name == src.name && s.peer == src.peer)
        {
            Some(existing) => *existing = src,
            None => entry.sources.push(src),
        }
        store(state, entry, None)
    })?;
    Reply::json(&true)
}

/// `DELETE /v1/connect/intentions/exact?source=&destination=`.
pub(super) async fn exact_delete(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let (peer, source) = parse_source(required(call, "source")?)?;
    let destination = exact_destination(call)?;
    shared.with(|state| {
        let Some(mut entry) = state.intentions.get(&destination).cloned() else {
            return Ok(());
        };
        let before = entry.sources.len();
        entry
            .sources
            .retain(|s| !(s.name == source && s.peer == peer));
        if entry.sources.len() == before {
            return Ok(());
        }
        if entry.sources.is_empty() {
            let index = state.bump();
            state.intentions.remove(&destination);
            state.intentions_index = index;
            Ok(())
        } else {
            store(state, entry, None).map(|_| ())
        }
    })?;
    Reply::json(&true)
}

/// `GET /v1/connect/intentions/check?source=&destination=` → `{"Allowed": bool}`; an L7
/// intention counts as not allowed.
pub(super) async fn check(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let (peer, source) = parse_source(required(call, "source")?)?;
    let destination = exact_destination(call)?;
    let default = shared.config.default_intention_policy;
    let datacenter = shared.config.datacenter.clone();
    let allowed = shared.with(|state| {
        if !peer.is_empty() {
            // A peered caller only matches intentions naming its peer; none are
            // modelled as callers here, so the default applies.
            return Ok(default.unwrap_or(Action::Allow).is_allow());
        }
        let trust_domain = state.ca.trust_domain();
        let client = ServiceId::new(&trust_domain, DEFAULT, &datacenter, &source);
        state
            .authorize_caller(
                default,
                &Peer::of_caller(&client, &trust_domain),
                &destination,
            )
            .map(|(allowed, _)| allowed)
    })?;
    Reply::json(&json!({ "Allowed": allowed }))
}

/// The body of `POST /v1/agent/connect/authorize` (CE: exactly these keys).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct AuthorizeRequest {
    target: String,
    #[serde(rename = "ClientCertURI")]
    client_cert_uri: String,
    client_cert_serial: String,
}

/// `POST /v1/agent/connect/authorize`: L4 only; a governing L7 intention denies. The
/// caller is who the proxy would see after the handshake: a certificate of another trust
/// domain is a cluster peer named after it (`Peer::of_caller`).
pub(super) async fn authorize(shared: &Arc<Shared>, call: &Call) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let (req, _) = decode_strict::<AuthorizeRequest>(&call.body, "Request decode failed")?;
    let _unused_by_consul_too = &req.client_cert_serial;
    if req.target.is_empty() {
        return Err(ApiError::bad_request("Target service must be specified"));
    }
    let client = ServiceId::parse(&req.client_cert_uri).map_err(|e| match e {
        IdError::NotSpiffe(_) => {
            ApiError::bad_request("ClientCertURI not a valid Connect identifier")
        }
        IdError::NotService(_) => {
            ApiError::bad_request("ClientCertURI not a valid Service identifier")
        }
    })?;
    if client.partition != DEFAULT {
        return Err(ApiError::bad_request(format!(
            "Mismatched partitions: {:?} != \"default\"",
            client.partition
        )));
    }
    let default = shared.config.default_intention_policy;
    let (authorized, reason) = shared.with(|state| {
        let caller = Peer::of_caller(&client, &state.ca.trust_domain());
        state.authorize_caller(default, &caller, &req.target)
    })?;
    Ok(Reply::json(&json!({ "Authorized": authorized, "Reason": reason }))?.cache(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_the_ce_spellings() {
        assert_eq!(parse_name("web"), Ok(Some("web".to_owned())));
        assert_eq!(parse_name("default/web"), Ok(Some("web".to_owned())));
        assert_eq!(
            parse_name("default/default/web"),
            Ok(Some("web".to_owned()))
        );
        assert_eq!(parse_name("team/web"), Ok(None));
        assert!(parse_name("a/b/c/d").is_err());
        assert!(parse_name("peer:east/web").is_err());
        assert_eq!(
            parse_source("peer:east/web").unwrap(),
            ("east".to_owned(), "web".to_owned())
        );
    }

    #[test]
    fn multierror_reads_like_go() {
        assert_eq!(
            multierror(
                "Request decoding failed",
                &["invalid config key \"Foo\"".to_owned()]
            ),
            "Request decoding failed: 1 error occurred:\n\t* invalid config key \"Foo\"\n\n"
        );
    }
}
