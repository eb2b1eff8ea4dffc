//! Mesh gateways registered with the agent (`docs/consul-semantics.md#datacenters`):
//! services of `Kind: "mesh-gateway"`, with a LAN `Address`/`Port` and usually `lan`
//! and `wan` tagged addresses, and an opaque `Proxy.Config`. They are checked as
//! Consul's agent checks gateways (a port; no sidecar, destination, local service or
//! upstreams), shown with their `Proxy` in the agent's and the catalog's views, listed
//! by `/v1/health/service/<name>` but never by `/v1/health/connect/<service>`.
//!
//! A gateway registered without checks gets the TCP check on its LAN address that
//! `consul connect envoy -gateway=mesh -register` gives it ("mesh-gateway listening"),
//! so a gateway that does not listen is critical, as a sidecar is.

use std::net::IpAddr;
use std::time::Duration;

use ferrule_control::api::agent::{AgentService, AgentServiceRegistration};

use super::checks::{CheckDef, CheckKind};
use super::http::ApiError;

/// The kind of a mesh gateway's registration.
pub(super) const KIND_MESH_GATEWAY: &str = "mesh-gateway";

/// Consul's refusals for a gateway registration (`NodeService.ValidateForAgent`).
pub(super) fn validate(reg: &AgentServiceRegistration) -> Result<(), ApiError> {
    let kind = &reg.kind;
    let invalid = |what: &str| {
        Err(ApiError::bad_request(format!(
            "Validation failed: The {what} configuration is invalid for a {kind}"
        )))
    };
    if reg.port == 0 {
        return Err(ApiError::bad_request(format!(
            "Validation failed: Port must be non-zero for a {kind}"
        )));
    }
    if reg
        .connect
        .as_ref()
        .is_some_and(|c| c.sidecar_service.is_some())
    {
        return Err(ApiError::bad_request(format!(
            "Validation failed: A {kind} cannot have a sidecar service defined"
        )));
    }
    let Some(proxy) = &reg.proxy else {
        return Ok(());
    };
    if !proxy.destination_service_name.is_empty() {
        return invalid("Proxy.DestinationServiceName");
    }
    if !proxy.destination_service_id.is_empty() {
        return invalid("Proxy.DestinationServiceID");
    }
    if !proxy.local_service_address.is_empty() {
        return invalid("Proxy.LocalServiceAddress");
    }
    if proxy.local_service_port != 0 {
        return invalid("Proxy.LocalServicePort");
    }
    if !proxy.local_service_socket_path.is_empty() {
        return invalid("Proxy.LocalServiceSocketPath");
    }
    if !proxy.upstreams.is_empty() {
        return invalid("Proxy.Upstreams");
    }
    Ok(())
}

/// The check a gateway registered without any gets: TCP on its LAN address (loopback
/// when it has none), every `interval`.
pub(super) fn default_checks(gateway: &AgentService, interval: Duration) -> Vec<CheckDef> {
    let host = if gateway.address.is_empty() {
        "127.0.0.1"
    } else {
        gateway.address.as_str()
    };
    let addr = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", gateway.port),
        _ => format!("{host}:{}", gateway.port),
    };
    vec![CheckDef {
        id: format!("service:{}", gateway.id),
        name: format!("{} listening", gateway.kind),
        notes: String::new(),
        initial_status: String::new(),
        kind: CheckKind::Tcp {
            addr,
            interval,
            timeout: None,
        },
    }]
}
