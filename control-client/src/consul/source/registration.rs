//! The proxy's registration (`/v1/agent/service/<id>`), validated and turned into the
//! listeners it asks for; see `docs/consul-semantics.md#sidecar-registration`. Values a
//! registration gets wrong but that have a sane default are warned about and defaulted;
//! only what makes the proxy meaningless is refused.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::api::agent::{
    AgentService, AgentServiceConnectProxyConfig, DESTINATION_PREPARED_QUERY, DESTINATION_SERVICE,
    MeshGatewayConfig, Upstream,
};
use crate::api::chain::{DiscoveryChainRequest, GoDuration};
use crate::identity::DEFAULT;
use crate::model::{InboundConfig, PrometheusListener, Protocol};
use crate::publish::{self, InboundLimits, UpstreamLimits, UpstreamListener};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// One discovery watch: a service (or a prepared query) in a datacenter (`""` = local).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct UpstreamKey {
    pub(super) name: String,
    pub(super) datacenter: String,
    pub(super) kind: UpstreamKind,
}

/// What an upstream's `DestinationName` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum UpstreamKind {
    /// A service, reached through its discovery chain.
    Service,
    /// A prepared query, executed by the agent (`docs/consul-semantics.md#prepared-queries`).
    PreparedQuery,
}

/// One upstream of the registration: what to discover, and the listener in front of it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct UpstreamSpec {
    pub(super) key: UpstreamKey,
    pub(super) listener: UpstreamListener,
    /// What the upstream overrides in its discovery chain, as Consul's proxy
    /// configuration asks for it: the upstream's `MeshGateway` over the proxy's own, and
    /// its `protocol` and `connect_timeout_ms` when its `Config` sets them.
    pub(super) chain: DiscoveryChainRequest,
}

/// What the proxy's registration says, validated.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Registration {
    /// `Proxy.DestinationServiceName`: the identity of leaf, intentions and peers.
    pub(super) destination: String,
    /// The agent's datacenter, as the registration reports it (`""` if it does not).
    pub(super) datacenter: String,
    pub(super) inbound: Option<InboundConfig>,
    pub(super) upstreams: Vec<UpstreamSpec>,
    /// `envoy_prometheus_bind_addr` (or `prometheus_bind_addr`) of `Proxy.Config`.
    pub(super) prometheus: Option<PrometheusListener>,
}

/// Validates a registration and derives the proxy's configuration from it.
pub(super) fn registration(svc: &AgentService) -> Result<Registration, String> {
    if !svc.is_connect_proxy() {
        return Err(format!(
            "service {:?} is not a connect-proxy (Kind {:?})",
            svc.id, svc.kind
        ));
    }
    let Some(proxy) = &svc.proxy else {
        return Err(format!("connect-proxy {:?} has no Proxy block", svc.id));
    };
    if proxy.destination_service_name.is_empty() {
        return Err(format!(
            "connect-proxy {:?} has no Proxy.DestinationServiceName",
            svc.id
        ));
    }
    let inbound = inbound_of(svc, proxy);
    let mut upstreams = Vec::new();
    let mut binds = HashSet::new();
    for up in &proxy.upstreams {
        match upstream_of(up, &proxy.mesh_gateway, &mut binds) {
            Ok(Some(spec)) => upstreams.push(spec),
            Ok(None) => {}
            Err(why) => {
                tracing::warn!(upstream = %up.destination_name, "upstream skipped: {why}");
            }
        }
    }
    Ok(Registration {
        destination: proxy.destination_service_name.clone(),
        datacenter: svc.datacenter.clone(),
        inbound,
        upstreams,
        prometheus: prometheus_of(&proxy.config),
    })
}

/// The public Prometheus listener `Proxy.Config` asks for: Consul's
/// `envoy_prometheus_bind_addr` (what its Envoy bootstrap turns into a listener that
/// serves only the metrics), else `prometheus_bind_addr`. An address that is not one
/// is warned about and no listener is bound; a bind failure never stops the sidecar
/// (`docs/consul-semantics.md#prometheus`).
pub(in crate::consul) fn prometheus_of(config: &Map<String, Value>) -> Option<PrometheusListener> {
    let (key, text) = ["envoy_prometheus_bind_addr", "prometheus_bind_addr"]
        .into_iter()
        .find_map(|key| config_str(config, key).map(|text| (key, text)))?;
    match crate::addr::parse(text) {
        Ok(bind) => Some(PrometheusListener {
            bind,
            required: false,
        }),
        Err(e) => {
            tracing::warn!("Proxy.Config {key}: {e}; no Prometheus listener");
            None
        }
    }
}

/// The public listener, unless the registration leaves it without a port or the
/// application without one.
fn inbound_of(svc: &AgentService, proxy: &AgentServiceConnectProxyConfig) -> Option<InboundConfig> {
    let config = &proxy.config;
    let address = config_str(config, "bind_address").unwrap_or(&svc.address);
    let ip = match address {
        "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        a => a.parse().unwrap_or_else(|_| {
            tracing::warn!(address = %a, "the public listener address is not an IP address; binding 0.0.0.0");
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }),
    };
    let port = config_u64(config, "bind_port")
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(svc.port);
    if port == 0 {
        tracing::warn!(proxy_id = %svc.id, "no public listener port: inbound disabled");
        return None;
    }
    if proxy.local_service_port == 0 {
        tracing::warn!(proxy_id = %svc.id, "no Proxy.LocalServicePort (unix-socket applications are not supported): inbound disabled");
        return None;
    }
    let local = match proxy.local_service_address.as_str() {
        "" => LOCALHOST.to_string(),
        a => a.to_owned(),
    };
    let protocol = protocol(config, "Proxy.Config");
    let limits = InboundLimits {
        handshake_timeout_ms: config_u64(config, "handshake_timeout_ms"),
        local_connect_timeout_ms: config_u64(config, "local_connect_timeout_ms"),
        local_request_timeout_ms: config_u64(config, "local_request_timeout_ms"),
        idle_timeout_ms: config_u64(config, "idle_timeout_ms"),
        // Envoy's key for the public listener's connection limit.
        max_connections: config_u64(config, "max_inbound_connections"),
    };
    Some(publish::inbound(
        SocketAddr::new(ip, port),
        host_port(&local, proxy.local_service_port),
        protocol,
        &limits,
    ))
}

/// One upstream: `Ok(None)` if it is quietly not ours (centrally configured without a
/// port), `Err` with the reason it is skipped. `binds` holds the listeners taken so far;
/// `proxy_gateway` is the proxy's own `MeshGateway`, which the upstream's overrides.
fn upstream_of(
    up: &Upstream,
    proxy_gateway: &MeshGatewayConfig,
    binds: &mut HashSet<SocketAddr>,
) -> Result<Option<UpstreamSpec>, String> {
    let name = &up.destination_name;
    let kind = match up.destination_type.as_str() {
        "" | DESTINATION_SERVICE => UpstreamKind::Service,
        DESTINATION_PREPARED_QUERY => UpstreamKind::PreparedQuery,
        other => return Err(format!("unknown DestinationType {other:?}")),
    };
    if up.local_bind_port == 0 {
        return if !up.local_bind_socket_path.is_empty() {
            Err("unix-socket upstream listeners are not supported".into())
        } else if !up.centrally_configured {
            Err("no LocalBindPort".into())
        } else {
            Ok(None)
        };
    }
    if name.is_empty() || name == "*" {
        return Err("no DestinationName".into());
    }
    if !up.destination_peer.is_empty() {
        return Err("cluster-peering upstreams are not supported".into());
    }
    let ent = |v: &str| !v.is_empty() && v != DEFAULT;
    if ent(&up.destination_namespace) || ent(&up.destination_partition) {
        return Err("namespaces and partitions other than default need Consul Enterprise".into());
    }
    let ip = match up.local_bind_address.as_str() {
        "" | "localhost" => LOCALHOST,
        a => a
            .parse()
            .map_err(|_| format!("LocalBindAddress {a:?} is not an IP address"))?,
    };
    let bind = SocketAddr::new(ip, up.local_bind_port);
    if !binds.insert(bind) {
        return Err(format!("{bind} is already used by another upstream"));
    }
    let mut spec = upstream_spec(up, bind);
    spec.key.kind = kind;
    if spec.chain.override_mesh_gateway.is_empty() {
        // Consul overlays the upstream's mode on the proxy's.
        spec.chain.override_mesh_gateway = proxy_gateway.clone();
    }
    Ok(Some(spec))
}

fn upstream_spec(up: &Upstream, bind: SocketAddr) -> UpstreamSpec {
    let name = &up.destination_name;
    let config = &up.config;
    let protocol = protocol(config, name);
    let limits = UpstreamLimits {
        connect_timeout_ms: config_u64(config, "connect_timeout_ms"),
        request_timeout_ms: config_u64(config, "request_timeout_ms"),
        idle_timeout_ms: config_u64(config, "idle_timeout_ms"),
        max_connections: config_u64(config, "max_connections"),
    };
    let chain = DiscoveryChainRequest {
        override_mesh_gateway: up.mesh_gateway.clone(),
        // The protocol the listener speaks, so that chain and listener agree.
        override_protocol: config_str(config, "protocol")
            .map(|_| protocol_name(protocol).to_owned())
            .unwrap_or_default(),
        override_connect_timeout: limits
            .connect_timeout_ms
            .filter(|ms| *ms > 0)
            .map(|ms| GoDuration::from_std(Duration::from_millis(ms)))
            .unwrap_or_default(),
    };
    UpstreamSpec {
        key: UpstreamKey {
            name: name.clone(),
            datacenter: up.datacenter.clone(),
            kind: UpstreamKind::Service,
        },
        listener: UpstreamListener::new(name.clone(), bind, protocol, &limits),
        chain,
    }
}

/// Consul's name of a protocol.
fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Http => "http",
        Protocol::Http2 => "http2",
        Protocol::Grpc => "grpc",
    }
}

fn config_str<'a>(config: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    config
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A non-negative integer given as a JSON number or a numeric string (both appear in
/// real registrations: HCL and JSON write them differently).
pub(in crate::consul) fn config_u64(config: &Map<String, Value>, key: &str) -> Option<u64> {
    let value = config.get(key)?;
    let parsed = match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.is_finite())
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse::<u64>().ok().or_else(|| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| *f >= 0.0 && f.is_finite())
                .map(|f| f as u64)
        }),
        Value::Null => return None,
        _ => None,
    };
    if parsed.is_none() {
        tracing::warn!(key, value = %value, "not a non-negative number; using the default");
    }
    parsed
}

fn protocol(config: &Map<String, Value>, whose: &str) -> Protocol {
    match config_str(config, "protocol")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("tcp") => Protocol::Tcp,
        Some("http") => Protocol::Http,
        Some("http2") => Protocol::Http2,
        Some("grpc") => Protocol::Grpc,
        Some(other) => {
            tracing::warn!(protocol = %other, "{whose}: unknown protocol; using tcp");
            Protocol::Tcp
        }
    }
}

/// `host:port`, with an IPv6 host in brackets.
pub(in crate::consul) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::agent::Upstream;
    use crate::consul::source::tests::{sidecar, upstream};

    #[test]
    fn the_prometheus_listener_comes_from_envoys_key_first() {
        let config = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        let addr = |a: &str| a.parse::<std::net::SocketAddr>().ok();
        let bind = |v| prometheus_of(&config(v)).map(|p| p.bind);
        assert_eq!(
            bind(json!({ "envoy_prometheus_bind_addr": "0.0.0.0:9102" })),
            addr("0.0.0.0:9102")
        );
        assert_eq!(
            bind(json!({ "prometheus_bind_addr": "127.0.0.1:9103" })),
            addr("127.0.0.1:9103")
        );
        assert_eq!(
            bind(json!({ "prometheus_bind_addr": "127.0.0.1:9103",
                         "envoy_prometheus_bind_addr": ":9102" })),
            addr("127.0.0.1:9102")
        );
        assert_eq!(
            bind(json!({ "envoy_prometheus_bind_addr": "nonsense" })),
            None
        );
        assert_eq!(bind(json!({ "envoy_prometheus_bind_addr": "" })), None);
        assert_eq!(bind(json!({})), None);
        let listener = prometheus_of(&config(json!({ "envoy_prometheus_bind_addr": ":1" })));
        assert!(
            !listener.is_some_and(|p| p.required),
            "never fatal in Consul mode"
        );
    }

    #[test]
    fn registration_reads_proxy_config() {
        let mut svc = sidecar(vec![
            Upstream {
                datacenter: "dc2".into(),
                local_bind_address: "127.0.0.5".into(),
                mesh_gateway: crate::api::agent::MeshGatewayConfig {
                    mode: "local".into(),
                },
                config: json!({ "connect_timeout_ms": "2500", "protocol": "HTTP" })
                    .as_object()
                    .cloned()
                    .unwrap(),
                ..upstream("db", 9191)
            },
            Upstream {
                destination_type: "prepared_query".into(),
                ..upstream("geo-db", 9292)
            },
            Upstream {
                centrally_configured: true,
                ..upstream("audit", 0)
            },
            Upstream {
                local_bind_address: "127.0.0.5".into(),
                ..upstream("dup", 9191)
            },
        ]);
        svc.address = "10.1.1.1".into();
        let proxy = svc.proxy.as_mut().unwrap();
        proxy.config = json!({
            "bind_port": 21500, "protocol": "http", "local_connect_timeout_ms": 250.0,
            "handshake_timeout_ms": "3000"
        })
        .as_object()
        .cloned()
        .unwrap();
        proxy.local_service_address = "::1".into();
        proxy.mesh_gateway.mode = "remote".into();
        let reg = registration(&svc).unwrap();
        let inbound = reg.inbound.unwrap();
        assert_eq!(inbound.bind, "10.1.1.1:21500".parse().unwrap());
        assert_eq!(inbound.local_app, "[::1]:8080");
        assert_eq!(inbound.protocol, Protocol::Http);
        assert_eq!(inbound.local_connect_timeout, Duration::from_millis(250));
        assert_eq!(inbound.handshake_timeout, Duration::from_millis(3000));
        assert_eq!(reg.upstreams.len(), 2, "{:?}", reg.upstreams);
        let db = &reg.upstreams[0];
        assert_eq!(db.key.kind, UpstreamKind::Service);
        let query = &reg.upstreams[1];
        assert_eq!(query.key.kind, UpstreamKind::PreparedQuery);
        assert_eq!(query.key.name, "geo-db");
        assert_eq!(
            query.chain.override_mesh_gateway.mode, "remote",
            "the proxy's mode when the upstream sets none"
        );
        assert_eq!(db.key.datacenter, "dc2");
        assert_eq!(db.listener.bind, "127.0.0.5:9191".parse().unwrap());
        assert_eq!(db.listener.protocol, Protocol::Http);
        assert_eq!(db.listener.connect_timeout, Duration::from_millis(2500));
        assert_eq!(db.chain.override_protocol, "http", "Consul's spelling");
        assert_eq!(
            db.chain.override_connect_timeout,
            GoDuration::from_std(Duration::from_millis(2500))
        );
        assert_eq!(db.chain.override_mesh_gateway.mode, "local");

        let mut plain = sidecar(vec![]);
        plain.kind = String::new();
        assert!(
            registration(&plain)
                .unwrap_err()
                .contains("not a connect-proxy")
        );
        let mut nameless = sidecar(vec![]);
        nameless
            .proxy
            .as_mut()
            .unwrap()
            .destination_service_name
            .clear();
        assert!(registration(&nameless).is_err());
        let mut portless = sidecar(vec![]);
        portless.port = 0;
        assert!(registration(&portless).unwrap().inbound.is_none());
    }
}
