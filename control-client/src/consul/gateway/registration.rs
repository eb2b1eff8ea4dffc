//! The mesh gateway's registration (`/v1/agent/service/<id>`), validated and turned into
//! its listeners and limits; see `docs/consul-semantics.md#mesh-gateways`.
//!
//! The LAN listener is the service's `Address` (else `TaggedAddresses.lan`'s, else every
//! interface) and `Port` (else the `lan` port); the WAN listener is
//! `TaggedAddresses.wan`, when that is another socket than the LAN one. A registration
//! of another kind is refused outright: serving it would make no sense.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::api::agent::{AgentService, KIND_MESH_GATEWAY, ServiceAddress};
use crate::consul::source::registration::{config_u64, prometheus_of};
use crate::gateway::GatewayConfig;
use crate::publish::{GatewayLimitsMs, gateway_limits};

/// Why a registration cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Problem {
    /// Not a mesh gateway at all: a start-up error.
    NotAGateway(String),
    /// A mesh gateway, but one we cannot listen for (no port): the last good one stays.
    Unusable(String),
}

/// What a mesh gateway registration says: its listeners, its limits and its datacenter
/// (`""` when the agent does not report it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Registration {
    pub(super) config: GatewayConfig,
    pub(super) datacenter: String,
}

/// Validates a registration and derives the gateway's configuration from it.
pub(super) fn registration(svc: &AgentService) -> Result<Registration, Problem> {
    if svc.kind != KIND_MESH_GATEWAY {
        let kind = if svc.kind.is_empty() {
            "a plain service (no Kind)".to_owned()
        } else {
            format!("Kind {:?}", svc.kind)
        };
        return Err(Problem::NotAGateway(format!(
            "service {:?} is not a mesh gateway ({kind}; `ferrule gateway` serves Kind \"{KIND_MESH_GATEWAY}\")",
            svc.id
        )));
    }
    let lan = lan_listener(svc)?;
    let wan = wan_listener(svc, lan);
    let config = svc
        .proxy
        .as_ref()
        .map(|p| p.config.clone())
        .unwrap_or_default();
    let limits = GatewayLimitsMs {
        handshake_timeout_ms: config_u64(&config, "handshake_timeout_ms"),
        connect_timeout_ms: config_u64(&config, "connect_timeout_ms"),
        idle_timeout_ms: config_u64(&config, "idle_timeout_ms"),
        max_connections: config_u64(&config, "max_inbound_connections"),
    };
    Ok(Registration {
        config: GatewayConfig {
            id: svc.id.clone(),
            service: svc.service.clone(),
            lan,
            wan,
            limits: gateway_limits(&limits),
            prometheus: prometheus_of(&config).map(|p| p.bind),
        },
        datacenter: svc.datacenter.clone(),
    })
}

fn tagged<'a>(svc: &'a AgentService, name: &str) -> Option<&'a ServiceAddress> {
    svc.tagged_addresses.get(name)
}

/// The LAN socket: the service's address and port, each falling back to the `lan`
/// tagged address's; an address that is not an IP (or none) binds every interface.
fn lan_listener(svc: &AgentService) -> Result<SocketAddr, Problem> {
    let lan = tagged(svc, "lan");
    let address = Some(svc.address.as_str())
        .filter(|a| !a.is_empty())
        .or_else(|| lan.map(|a| a.address.as_str()).filter(|a| !a.is_empty()))
        .unwrap_or_default();
    let ip = match address {
        "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        a => a.parse().unwrap_or_else(|_| {
            tracing::warn!(address = %a, "the gateway's LAN address is not an IP address; binding 0.0.0.0");
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }),
    };
    let port = Some(svc.port)
        .filter(|p| *p != 0)
        .or_else(|| lan.map(|a| a.port).filter(|p| *p != 0))
        .ok_or_else(|| {
            Problem::Unusable(format!(
                "mesh gateway {:?} has no Port (nor a lan tagged address with one)",
                svc.id
            ))
        })?;
    Ok(SocketAddr::new(ip, port))
}

/// The WAN socket, when it is one the LAN listener does not already cover. A WAN
/// address that is a host name (a load balancer's, say) is for peers to dial, not for
/// us to bind.
fn wan_listener(svc: &AgentService, lan: SocketAddr) -> Option<SocketAddr> {
    let wan = tagged(svc, "wan")?;
    let port = if wan.port == 0 { lan.port() } else { wan.port };
    let ip: IpAddr = match wan.address.as_str() {
        "" => lan.ip(),
        a => match a.parse() {
            Ok(ip) => ip,
            Err(_) => {
                tracing::info!(address = %a, "the gateway's WAN address is a name, not an IP: not listening on it");
                return None;
            }
        },
    };
    let wan = SocketAddr::new(ip, port);
    let covered = wan == lan || (lan.ip().is_unspecified() && lan.port() == port);
    (!covered).then_some(wan)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn service(value: serde_json::Value) -> AgentService {
        serde_json::from_value(value).expect("an agent service")
    }

    #[test]
    fn a_gateway_listens_on_its_lan_and_its_distinct_wan_address() {
        let svc = service(json!({
            "Kind": "mesh-gateway", "ID": "gw", "Service": "mesh-gateway",
            "Address": "127.0.0.1", "Port": 8443, "Datacenter": "dc1",
            "TaggedAddresses": {
                "lan": {"Address": "127.0.0.1", "Port": 8443},
                "wan": {"Address": "127.0.0.2", "Port": 9443},
                "wan_ipv4": {"Address": "127.0.0.1", "Port": 8443}
            },
            "Proxy": {"Config": {"connect_timeout_ms": 250, "idle_timeout_ms": "0"}}
        }));
        let reg = registration(&svc).unwrap();
        assert_eq!(reg.datacenter, "dc1");
        assert_eq!(reg.config.lan, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(reg.config.wan, Some("127.0.0.2:9443".parse().unwrap()));
        let limits = reg.config.limits;
        assert_eq!(limits.connect_timeout, Duration::from_millis(250));
        assert_eq!(limits.idle_timeout, None, "0 means no idle timeout");
        assert_eq!(limits.hello_timeout, Duration::from_secs(10));
    }

    #[test]
    fn the_wan_listener_is_left_out_when_the_lan_one_covers_it() {
        let same = service(json!({
            "Kind": "mesh-gateway", "ID": "gw", "Address": "10.0.0.1", "Port": 443,
            "TaggedAddresses": {"wan": {"Address": "10.0.0.1", "Port": 443}}
        }));
        assert_eq!(registration(&same).unwrap().config.wan, None);
        let wildcard = service(json!({
            "Kind": "mesh-gateway", "ID": "gw", "Port": 443,
            "TaggedAddresses": {"wan": {"Address": "198.51.100.1", "Port": 443}}
        }));
        let config = registration(&wildcard).unwrap().config;
        assert_eq!(config.lan, "0.0.0.0:443".parse().unwrap());
        assert_eq!(config.wan, None);
        let named = service(json!({
            "Kind": "mesh-gateway", "ID": "gw", "Address": "10.0.0.1", "Port": 443,
            "TaggedAddresses": {"wan": {"Address": "gw.example.com", "Port": 443}}
        }));
        assert_eq!(registration(&named).unwrap().config.wan, None);
    }

    #[test]
    fn the_lan_tagged_address_fills_in_what_the_service_leaves_out() {
        let svc = service(json!({
            "Kind": "mesh-gateway", "ID": "gw",
            "TaggedAddresses": {"lan": {"Address": "127.0.0.3", "Port": 7000}}
        }));
        let config = registration(&svc).unwrap().config;
        assert_eq!(config.lan, "127.0.0.3:7000".parse().unwrap());
    }

    #[test]
    fn another_kind_is_refused_and_a_portless_gateway_is_unusable() {
        let sidecar = service(json!({"Kind": "connect-proxy", "ID": "web-sidecar-proxy"}));
        match registration(&sidecar) {
            Err(Problem::NotAGateway(why)) => {
                assert!(why.contains("\"connect-proxy\""), "{why}");
                assert!(why.contains("mesh-gateway"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let plain = service(json!({"ID": "web"}));
        assert!(
            matches!(registration(&plain), Err(Problem::NotAGateway(why)) if why.contains("plain service"))
        );
        let portless = service(json!({"Kind": "mesh-gateway", "ID": "gw"}));
        assert!(matches!(registration(&portless), Err(Problem::Unusable(_))));
    }
}
