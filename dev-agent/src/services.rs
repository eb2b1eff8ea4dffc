//! Locally registered services: registration (with Consul's sidecar defaults,
//! `docs/consul-semantics.md#sidecar-registration`), deregistration, the agent's views
//! (`/v1/agent/services`, `/v1/agent/service/:id` with hash blocking) and the catalog's
//! health view (`/v1/health/service/:name`, `/v1/health/connect/:name`,
//! `docs/consul-semantics.md#upstream-discovery`).
//!
//! A sidecar registered through `Connect.SidecarService` becomes a `connect-proxy`
//! service `<id>-sidecar-proxy` with the defaults of `agent/sidecar_service.go`: the
//! first port of the sidecar range no local service uses (kept on re-registration), the
//! parent's address, tags and meta, `Proxy.LocalServiceAddress` 127.0.0.1 and
//! `LocalServicePort` = the parent's port, and two checks: a TCP check of its listener and
//! an alias of the parent. Deregistering the parent deregisters that sidecar too.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use ferrule_control::api::agent::{
    AgentService, AgentServiceCheck, AgentServiceConnect, AgentServiceConnectProxyConfig,
    AgentServiceRegistration, DESTINATION_SERVICE, KIND_CONNECT_PROXY, KIND_MESH_GATEWAY,
    ServiceAddress,
};
use ferrule_control::api::health::{HealthCheck, NodeService, PASSING, ServiceEntry};

use super::DevAgentConfig;
use super::blocking::{self, DEFAULT_WAIT};
use super::catalog;
use super::checks::{self, CheckDef, CheckKind, LocalCheck};
use super::defaults;
use super::filter;
use super::http::{ApiError, Call, Reply, decode_strict};
use super::selectors;
use super::state::{Shared, State};

const SIDECAR_SUFFIX: &str = "-sidecar-proxy";

/// One service registered with this agent.
pub(super) struct LocalService {
    /// As the agent reports it, without `ContentHash` and `Datacenter` (added per answer).
    pub(super) service: AgentService,
    pub(super) create_index: u64,
    pub(super) modify_index: u64,
    /// The parent's ID when the agent created this service from `Connect.SidecarService`.
    pub(super) sidecar_of: Option<String>,
    pub(super) check_ids: Vec<String>,
}

/// A check task to start once the state lock is released.
pub(super) struct NewCheck {
    id: String,
    kind: CheckKind,
    cancel: CancellationToken,
}

/// `PUT /v1/agent/service/register`.
pub(super) async fn register(shared: &Arc<Shared>, call: &Call) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let (reg, raw) =
        decode_strict::<AgentServiceRegistration>(&call.body, "Request decode failed")?;
    reject_enterprise_keys(&raw)?;
    if let Some(sidecar) = raw.pointer("/Connect/SidecarService") {
        reject_enterprise_keys(sidecar)?;
    }
    let service = to_service(&reg)?;
    let defs = check_defs(&reg, &service)?;
    let sidecar = match reg
        .connect
        .as_ref()
        .and_then(|c| c.sidecar_service.as_deref())
    {
        None => None,
        Some(def) => {
            if def
                .connect
                .as_ref()
                .is_some_and(|c| c.sidecar_service.is_some())
            {
                return Err(ApiError::bad_request(
                    "Validation failed: A SidecarService cannot have a nested SidecarService",
                ));
            }
            Some(def)
        }
    };
    let started = shared.with(|state| {
        // Everything that can fail comes before the write.
        let sidecar = match sidecar {
            Some(def) => Some(state.sidecar_for(&service, def, &shared.config)?),
            None => None,
        };
        let index = state.bump();
        let parent_id = service.id.clone();
        state.registrations.insert(parent_id.clone(), raw.clone());
        let mut started = state.put_service(service, None, defs, index);
        if let Some((sidecar, defs)) = sidecar {
            started.extend(state.put_service(sidecar, Some(parent_id), defs, index));
        }
        state.refresh_aliases(index);
        Ok::<_, ApiError>(started)
    })?;
    for check in started {
        checks::spawn(shared, check.id, check.kind, check.cancel);
    }
    Ok(Reply::empty())
}

/// `PUT /v1/agent/service/deregister/:id`; the service's agent-made sidecar goes too.
pub(super) async fn deregister(shared: &Shared, call: &Call, id: &str) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    shared.with(|state| {
        if !state.services.contains_key(id) {
            return Err(ApiError::not_found(format!(
                "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
            )));
        }
        let index = state.bump();
        let sidecars: Vec<String> = state
            .services
            .iter()
            .filter(|(_, s)| s.sidecar_of.as_deref() == Some(id))
            .map(|(sid, _)| sid.clone())
            .collect();
        // A sidecar deregistered on its own stays gone after a restart too.
        let parent = state.services.get(id).and_then(|s| s.sidecar_of.clone());
        if let Some(Value::Object(connect)) = parent
            .and_then(|p| state.registrations.get_mut(&p))
            .and_then(|r| r.get_mut("Connect"))
        {
            connect.remove("SidecarService");
        }
        state.registrations.remove(id);
        state.remove_service(id, index);
        for sidecar in sidecars {
            state.remove_service(&sidecar, index);
        }
        state.refresh_aliases(index);
        Ok(())
    })?;
    Ok(Reply::empty())
}

/// `GET /v1/agent/services`.
pub(super) async fn list(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let filter = filter::checked(call, selectors::AGENT_SERVICE)?;
    let datacenter = &shared.config.datacenter;
    let mut services: BTreeMap<String, AgentService> = shared.with(|state| {
        state
            .services
            .iter()
            .map(|(id, s)| {
                let mut view = agent_view(s, datacenter);
                defaults::merge(state, &mut view);
                (id.clone(), view)
            })
            .collect()
    });
    filter::retain_values(filter.as_ref(), &mut services);
    Reply::json(&services)
}

/// `GET /v1/agent/service/:id`, with hash-based blocking.
pub(super) async fn get(shared: &Shared, call: &Call, id: &str) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let opts = call.blocking()?;
    let datacenter = &shared.config.datacenter;
    let (service, hash) = blocking::by_hash(shared, &opts, |state| {
        let local = state
            .services
            .get(id)
            .ok_or_else(|| ApiError::not_found(format!("unknown service ID: {id}")))?;
        let mut view = agent_view(local, datacenter);
        defaults::merge(state, &mut view);
        let hash = content_hash(&view);
        view.content_hash = hash.clone();
        Ok((view, hash))
    })
    .await?;
    Ok(Reply::json(&service)?.header("X-Consul-ContentHash", &hash))
}

/// `GET /v1/agent/checks`.
pub(super) async fn checks(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let filter = filter::checked(call, selectors::HEALTH_CHECK)?;
    let mut checks: BTreeMap<String, HealthCheck> = shared.with(|state| {
        state
            .checks
            .iter()
            .map(|(id, c)| (id.clone(), c.health.clone()))
            .collect()
    });
    filter::retain_values(filter.as_ref(), &mut checks);
    Reply::json(&checks)
}

/// `GET /v1/health/service/:name` (`connect` false) and `/v1/health/connect/:name`.
pub(super) async fn health(
    shared: &Shared,
    call: &Call,
    name: &str,
    connect: bool,
) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let filter = filter::checked(call, selectors::HEALTH_ENTRY)?;
    let consistency = call.consistency()?;
    let opts = call.blocking()?;
    let passing = call
        .query
        .flag("passing")
        .map_err(|_| ApiError::bad_request("Invalid value for ?passing"))?;
    let connect = connect
        || call
            .query
            .flag("connect")
            .map_err(|_| ApiError::bad_request("Invalid value for ?connect"))?;
    let tags: Vec<String> = call.query.all("tag").map(str::to_owned).collect();
    let foreign_dc = call.foreign_datacenter(&shared.config.datacenter);
    let answer = blocking::by_index(shared, &opts, DEFAULT_WAIT, |state, _| {
        if foreign_dc {
            return Err(ApiError::internal("No path to datacenter"));
        }
        Ok(state.health_entries(name, connect))
    })
    .await?;
    let mut entries: Vec<ServiceEntry> = answer
        .value
        .into_iter()
        .filter(|e| tags.iter().all(|t| e.service.tags.contains(t)))
        .filter(|e| !passing || e.checks.iter().all(|c| c.status == PASSING))
        .collect();
    filter::retain(filter.as_ref(), &mut entries);
    let reply = Reply::json(&entries)?.index(answer.index);
    // With an index Consul answers from its streaming backend, which sends no leader
    // headers (`X-Consul-KnownLeader`, `X-Consul-LastContact`) but says it streamed.
    Ok(if opts.index > 0 {
        reply
            .header("X-Consul-Query-Backend", "streaming")
            .header("X-Consul-Effective-Consistency", consistency)
    } else {
        reply
            .header("X-Consul-Query-Backend", "blocking-query")
            .leader_meta(consistency)
    })
}

/// On Community Edition these body fields do not exist, so Go's strict decoder refuses
/// them, whatever their value.
fn reject_enterprise_keys(raw: &Value) -> Result<(), ApiError> {
    if let Value::Object(map) = raw {
        for key in map.keys() {
            if key.eq_ignore_ascii_case("namespace") || key.eq_ignore_ascii_case("partition") {
                return Err(ApiError::bad_request(format!(
                    "Request decode failed: json: unknown field {key:?}"
                )));
            }
        }
    }
    Ok(())
}

/// The stored service of a registration, validated as Consul's `NodeService.Validate`.
fn to_service(reg: &AgentServiceRegistration) -> Result<AgentService, ApiError> {
    if reg.name.is_empty() {
        return Err(ApiError::bad_request("Missing service name"));
    }
    let native = reg.connect.as_ref().is_some_and(|c| c.native);
    let proxy = match reg.kind.as_str() {
        "" => None,
        KIND_CONNECT_PROXY => Some(proxy_config(reg, native)?),
        KIND_MESH_GATEWAY => Some(gateway_config(reg, native)?),
        other => {
            return Err(ApiError::bad_request(format!(
                "the dev agent registers plain services, connect-proxy services and mesh gateways, not {other:?}"
            )));
        }
    };
    let id = if reg.id.is_empty() {
        reg.name.clone()
    } else {
        reg.id.clone()
    };
    Ok(AgentService {
        kind: reg.kind.clone(),
        id,
        service: reg.name.clone(),
        tags: reg.tags.clone(),
        meta: reg.meta.clone(),
        port: reg.port,
        address: reg.address.clone(),
        socket_path: reg.socket_path.clone(),
        tagged_addresses: tagged_addresses(reg.tagged_addresses.clone(), &reg.address, reg.port),
        weights: reg.weights.unwrap_or_default(),
        enable_tag_override: reg.enable_tag_override,
        proxy,
        connect: native.then_some(AgentServiceConnect {
            native: true,
            sidecar_service: None,
        }),
        ..AgentService::default()
    })
}

/// The `Proxy` of a connect-proxy registration, validated as Consul validates it and
/// with its upstreams' defaults filled in.
fn proxy_config(
    reg: &AgentServiceRegistration,
    native: bool,
) -> Result<AgentServiceConnectProxyConfig, ApiError> {
    let invalid = |reason: &str| ApiError::bad_request(format!("Validation failed: {reason}"));
    let mut proxy = reg.proxy.clone().unwrap_or_default();
    if proxy.destination_service_name.is_empty() {
        return Err(invalid(
            "Proxy.DestinationServiceName must be non-empty for Connect proxy services",
        ));
    }
    if reg.port == 0 && reg.socket_path.is_empty() {
        return Err(invalid(
            "Port or SocketPath must be set for a Connect proxy",
        ));
    }
    if native {
        return Err(invalid("A Proxy cannot also be Connect Native"));
    }
    if reg
        .connect
        .as_ref()
        .is_some_and(|c| c.sidecar_service.is_some())
    {
        return Err(invalid("A Proxy cannot have SidecarService set"));
    }
    fill_upstream_defaults(&mut proxy).map_err(|e| invalid(&e))?;
    Ok(proxy)
}

/// A mesh gateway's `Proxy` block, checked as Consul's `NodeService.Validate` checks a
/// gateway: a port, no sidecar, not native, nothing of a sidecar's proxy settings.
fn gateway_config(
    reg: &AgentServiceRegistration,
    native: bool,
) -> Result<AgentServiceConnectProxyConfig, ApiError> {
    let invalid = |reason: &str| ApiError::bad_request(format!("Validation failed: {reason}"));
    if reg.port == 0 {
        return Err(invalid("Port must be non-zero for a mesh-gateway"));
    }
    if native
        || reg
            .connect
            .as_ref()
            .is_some_and(|c| c.sidecar_service.is_some())
    {
        return Err(invalid(
            "A mesh-gateway cannot be Connect native or have a sidecar",
        ));
    }
    let proxy = reg.proxy.clone().unwrap_or_default();
    if !proxy.destination_service_name.is_empty()
        || proxy.local_service_port != 0
        || !proxy.upstreams.is_empty()
    {
        return Err(invalid(
            "a mesh-gateway takes no destination service, local service or upstreams",
        ));
    }
    Ok(proxy)
}

/// The agent fills in `DestinationType` and checks each upstream can be bound.
fn fill_upstream_defaults(proxy: &mut AgentServiceConnectProxyConfig) -> Result<(), String> {
    for upstream in &mut proxy.upstreams {
        if upstream.destination_type.is_empty() {
            upstream.destination_type = DESTINATION_SERVICE.to_owned();
        }
        if upstream.destination_name.is_empty() {
            return Err("Upstream destination name cannot be empty".to_owned());
        }
        if !upstream.centrally_configured
            && upstream.local_bind_port == 0
            && upstream.local_bind_socket_path.is_empty()
        {
            return Err(format!(
                "Upstream {:?} must set LocalBindPort or LocalBindSocketPath",
                upstream.destination_name
            ));
        }
    }
    Ok(())
}

/// Consul adds `lan_ipv4`/`wan_ipv4` (or `_ipv6`) when the address is an IP.
fn tagged_addresses(
    mut tagged: BTreeMap<String, ServiceAddress>,
    address: &str,
    port: u16,
) -> BTreeMap<String, ServiceAddress> {
    let family = match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => "ipv4",
        Ok(IpAddr::V6(_)) => "ipv6",
        Err(_) => return tagged,
    };
    for scope in ["lan", "wan"] {
        tagged
            .entry(format!("{scope}_{family}"))
            .or_insert_with(|| ServiceAddress {
                address: address.to_owned(),
                port,
            });
    }
    tagged
}

/// The checks of a registration, with Consul's default IDs (`service:<id>`, numbered
/// when there are several) and names.
fn check_defs(
    reg: &AgentServiceRegistration,
    service: &AgentService,
) -> Result<Vec<CheckDef>, ApiError> {
    let all: Vec<&AgentServiceCheck> = reg.check.iter().chain(reg.checks.iter()).collect();
    let many = all.len() > 1;
    all.into_iter()
        .enumerate()
        .map(|(i, check)| {
            let id = if many {
                format!("service:{}:{}", service.id, i + 1)
            } else {
                format!("service:{}", service.id)
            };
            CheckDef::from_wire(check, id, format!("Service '{}' check", service.service))
        })
        .collect()
}

/// The agent's answer for one service.
fn agent_view(local: &LocalService, datacenter: &str) -> AgentService {
    AgentService {
        datacenter: datacenter.to_owned(),
        ..local.service.clone()
    }
}

/// An opaque hash of the agent's view of a service, as `X-Consul-ContentHash`.
fn content_hash(view: &AgentService) -> String {
    let bytes = serde_json::to_vec(view).unwrap_or_default();
    let digest = digest::digest(&digest::SHA256, &bytes);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The health-query keys a service instance answers to.
fn health_keys(service: &AgentService) -> Vec<String> {
    let mut keys = vec![format!("service:{}", service.service)];
    match &service.proxy {
        Some(proxy) if service.kind == KIND_CONNECT_PROXY => {
            keys.push(format!("connect:{}", proxy.destination_service_name));
        }
        _ => {}
    }
    if service.connect.as_ref().is_some_and(|c| c.native) {
        keys.push(format!("connect:{}", service.service));
    }
    keys
}

/// A `Connect.SidecarService` with what Consul's agent fills in from the parent
/// (`agent/sidecar_service.go`): ID, kind, name, address, meta, tags and the proxy's
/// destination and local service. The port is left to the caller.
fn sidecar_registration(
    parent: &AgentService,
    def: &AgentServiceRegistration,
) -> AgentServiceRegistration {
    let mut def = def.clone();
    // Always `<parent-id>-sidecar-proxy`: the agent relies on it to find the
    // sidecar of a parent again.
    def.id = format!("{}{SIDECAR_SUFFIX}", parent.id);
    if def.kind.is_empty() {
        def.kind = KIND_CONNECT_PROXY.to_owned();
    }
    if def.name.is_empty() {
        def.name = format!("{}{SIDECAR_SUFFIX}", parent.service);
    }
    if def.address.is_empty() {
        def.address = parent.address.clone();
    }
    if def.meta.is_empty() {
        def.meta = parent.meta.clone();
    }
    if def.tags.is_empty() {
        def.tags = parent.tags.clone();
    }
    let mut proxy = def.proxy.take().unwrap_or_default();
    sidecar_proxy_defaults(parent, &mut proxy);
    def.proxy = Some(proxy);
    def
}

/// The sidecar proxy's destination is its parent, and its local service the parent's
/// socket, else the parent's port on loopback.
fn sidecar_proxy_defaults(parent: &AgentService, proxy: &mut AgentServiceConnectProxyConfig) {
    if proxy.destination_service_name.is_empty() {
        proxy.destination_service_name = parent.service.clone();
    }
    if proxy.destination_service_id.is_empty() {
        proxy.destination_service_id = parent.id.clone();
    }
    if proxy.local_service_socket_path.is_empty()
        && (proxy.local_service_address.is_empty() || proxy.local_service_port == 0)
    {
        if !parent.socket_path.is_empty() {
            proxy.local_service_socket_path = parent.socket_path.clone();
        } else {
            if proxy.local_service_address.is_empty() {
                proxy.local_service_address = "127.0.0.1".to_owned();
            }
            if proxy.local_service_port == 0 {
                proxy.local_service_port = parent.port;
            }
        }
    }
}

/// The two checks Consul gives a sidecar registered without checks: a TCP check on its
/// listener and an alias of its parent, so a sidecar that does not listen, or whose
/// service is unhealthy, is never discovered.
fn sidecar_checks(
    parent: &AgentService,
    sidecar: &AgentService,
    interval: Duration,
) -> Vec<CheckDef> {
    let check_host = if sidecar.address.is_empty() {
        sidecar
            .proxy
            .as_ref()
            .map(|p| p.local_service_address.clone())
            .unwrap_or_default()
    } else {
        sidecar.address.clone()
    };
    let addr = match check_host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", sidecar.port),
        _ => format!("{check_host}:{}", sidecar.port),
    };
    vec![
        CheckDef {
            id: format!("service:{}:1", sidecar.id),
            name: "Connect Sidecar Listening".to_owned(),
            notes: String::new(),
            initial_status: String::new(),
            kind: CheckKind::Tcp {
                addr,
                interval,
                timeout: None,
            },
        },
        CheckDef {
            id: format!("service:{}:2", sidecar.id),
            name: format!("Connect Sidecar Aliasing {}", parent.id),
            notes: String::new(),
            initial_status: String::new(),
            kind: CheckKind::Alias {
                service_id: parent.id.clone(),
            },
        },
    ]
}

impl State {
    /// Builds the sidecar service of `parent` from its `Connect.SidecarService`.
    fn sidecar_for(
        &self,
        parent: &AgentService,
        def: &AgentServiceRegistration,
        config: &DevAgentConfig,
    ) -> Result<(AgentService, Vec<CheckDef>), ApiError> {
        let mut def = sidecar_registration(parent, def);
        if def.port == 0 {
            def.port = self.sidecar_port(&def.id, config)?;
        }
        let sidecar = to_service(&def)?;
        let mut defs = check_defs(&def, &sidecar)?;
        if defs.is_empty() {
            defs = sidecar_checks(parent, &sidecar, config.check_interval);
        }
        Ok((sidecar, defs))
    }

    /// The lowest port of the sidecar range no local service uses; a sidecar being
    /// re-registered keeps its port (`sidecarPortFromServiceIDLocked`).
    fn sidecar_port(&self, sidecar_id: &str, config: &DevAgentConfig) -> Result<u16, ApiError> {
        let range = &config.sidecar_ports;
        let mut used = std::collections::HashSet::new();
        for (id, local) in &self.services {
            let port = local.service.port;
            if range.contains(&port) {
                if id == sidecar_id {
                    return Ok(port);
                }
                used.insert(port);
            }
        }
        range.clone().find(|p| !used.contains(p)).ok_or_else(|| {
            ApiError::internal(format!(
                "no port provided for sidecar_service and none left in the configured range [{}, {}]",
                range.start(),
                range.end()
            ))
        })
    }

    /// Adds or replaces a service and its checks at `index`. Checks that keep their
    /// ID and definition keep their status and task; the others start anew.
    fn put_service(
        &mut self,
        service: AgentService,
        sidecar_of: Option<String>,
        defs: Vec<CheckDef>,
        index: u64,
    ) -> Vec<NewCheck> {
        let id = service.id.clone();
        let previous = self.services.get(&id).map(|old| {
            let unchanged = old.service == service;
            (
                old.create_index,
                if unchanged { old.modify_index } else { index },
                old.check_ids.clone(),
                sidecar_of.clone().or_else(|| old.sidecar_of.clone()),
                (!unchanged).then(|| old.service.clone()),
            )
        });
        let (create_index, modify_index, old_checks, sidecar_of) = match previous {
            Some((create, modify, checks, parent, replaced)) => {
                if let Some(replaced) = replaced {
                    self.tombstone(&replaced, index);
                }
                (create, modify, checks, parent)
            }
            None => (index, index, Vec::new(), sidecar_of),
        };
        for old in &old_checks {
            if !defs.iter().any(|d| d.id == *old) {
                self.remove_check(old, index);
            }
        }
        let (check_ids, started) = self.put_checks(&service, defs, index);
        self.services.insert(
            id,
            LocalService {
                service,
                create_index,
                modify_index,
                sidecar_of,
                check_ids,
            },
        );
        started
    }

    /// Adds or replaces the checks of `service` at `index`: their IDs in order, and the
    /// checks that need a task started (new or changed ones).
    fn put_checks(
        &mut self,
        service: &AgentService,
        defs: Vec<CheckDef>,
        index: u64,
    ) -> (Vec<String>, Vec<NewCheck>) {
        let id = &service.id;
        let mut started = Vec::new();
        let mut check_ids = Vec::with_capacity(defs.len());
        for def in defs {
            check_ids.push(def.id.clone());
            let keep = self.checks.get(&def.id).is_some_and(|c| {
                c.def == def
                    && c.health.service_id == *id
                    && c.health.service_name == service.service
                    && c.health.service_tags == service.tags
            });
            if keep {
                continue;
            }
            self.remove_check(&def.id, index);
            let cancel = self.shutdown_child();
            let check = LocalCheck::new(
                def.clone(),
                &self.node.node.node,
                id,
                &service.service,
                &service.tags,
                index,
                cancel.clone(),
            );
            self.checks.insert(def.id.clone(), check);
            started.push(NewCheck {
                id: def.id,
                kind: def.kind,
                cancel,
            });
        }
        (check_ids, started)
    }

    fn remove_service(&mut self, id: &str, index: u64) {
        if let Some(old) = self.services.remove(id) {
            self.tombstone(&old.service, index);
            for check in &old.check_ids {
                self.remove_check(check, index);
            }
        }
    }

    fn remove_check(&mut self, id: &str, index: u64) {
        if let Some(check) = self.checks.remove(id) {
            check.cancel.cancel();
            if let Some(service) = self.services.get(&check.health.service_id) {
                let service = service.service.clone();
                self.tombstone(&service, index);
            }
        }
    }

    /// The index of the catalog's services: the last write to any service, its
    /// checks, or the node (deregistrations included).
    pub(super) fn services_index(&self) -> u64 {
        let services = self.services.values().map(|s| s.modify_index);
        let checks = self.checks.values().map(|c| c.health.modify_index);
        let gone = self.tombstones.values().copied();
        services
            .chain(checks)
            .chain(gone)
            .fold(self.node.node.modify_index, u64::max)
    }

    fn tombstone(&mut self, service: &AgentService, index: u64) {
        for key in health_keys(service) {
            self.tombstones.insert(key, index);
        }
    }

    /// Every instance a health query for `name` answers with (before `?passing`), and
    /// the query's index: the highest index of anything that went into the answer, or
    /// of the last instance that left it.
    pub(super) fn health_entries(&self, name: &str, connect: bool) -> (Vec<ServiceEntry>, u64) {
        let key = if connect {
            format!("connect:{name}")
        } else {
            format!("service:{name}")
        };
        let mut index = self
            .node
            .node
            .modify_index
            .max(self.node.serf_check.modify_index)
            .max(self.tombstones.get(&key).copied().unwrap_or(0));
        let mut entries = Vec::new();
        if !connect && name == catalog::CONSUL {
            entries.push(ServiceEntry {
                node: self.node.node.clone(),
                service: catalog::consul_service(self),
                checks: vec![self.node.serf_check.clone()],
            });
        }
        for local in self.services.values() {
            if !health_keys(&local.service).contains(&key) {
                continue;
            }
            let mut checks = vec![self.node.serf_check.clone()];
            checks.extend(
                local
                    .check_ids
                    .iter()
                    .filter_map(|id| self.checks.get(id))
                    .map(|c| c.health.clone()),
            );
            index = checks
                .iter()
                .map(|c| c.modify_index)
                .fold(index.max(local.modify_index), u64::max);
            entries.push(ServiceEntry {
                node: self.node.node.clone(),
                service: catalog_view(local),
                checks,
            });
        }
        (entries, index)
    }
}

/// A local service as the catalog's health view shows it.
fn catalog_view(local: &LocalService) -> NodeService {
    let svc = &local.service;
    NodeService {
        kind: svc.kind.clone(),
        id: svc.id.clone(),
        service: svc.service.clone(),
        tags: svc.tags.clone(),
        address: svc.address.clone(),
        tagged_addresses: svc.tagged_addresses.clone(),
        meta: svc.meta.clone(),
        port: svc.port,
        socket_path: svc.socket_path.clone(),
        weights: Some(svc.weights),
        enable_tag_override: svc.enable_tag_override,
        locality: None,
        proxy: svc.proxy.clone().unwrap_or_default(),
        connect: svc.connect.clone().unwrap_or_default(),
        peer_name: String::new(),
        namespace: String::new(),
        partition: String::new(),
        create_index: local.create_index,
        modify_index: local.modify_index,
    }
}
