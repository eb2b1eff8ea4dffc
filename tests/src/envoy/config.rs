//! Envoy's static bootstrap, shaped as Consul's agent configures a sidecar over xDS
//! (`docs/consul-semantics.md#on-the-wire`): the public listener, the upstream
//! listeners with their clusters, and the `local_app` cluster. Consul delivers these by
//! ADS and EDS; here they are static resources with the same fields, which is all the
//! wire can tell apart.

use std::net::SocketAddr;

use serde_json::{Value, json};

use super::rbac;

const TLS_DOWNSTREAM: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const TLS_UPSTREAM: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The protocol of a listener or an upstream, as in Consul's `protocol` config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Http,
    Http2,
    Grpc,
}

impl Protocol {
    /// The name ferrule's config and Consul use.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
        }
    }

    fn is_http(self) -> bool {
        self != Protocol::Tcp
    }

    /// `http2` and `grpc` clusters get explicit HTTP/2 options; `http` keeps Envoy's
    /// default HTTP/1.1.
    fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }

    /// What Consul's public listener advertises (`getAlpnProtocols`).
    fn public_alpn(self) -> Vec<&'static str> {
        match self {
            Protocol::Tcp => Vec::new(),
            Protocol::Http => vec!["http/1.1"],
            Protocol::Http2 | Protocol::Grpc => vec!["h2", "http/1.1"],
        }
    }
}

/// The certificate, key and roots one Envoy sidecar uses in both directions.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The leaf followed by its intermediates, as the agent's `CertPEM`.
    pub cert_pem: String,
    pub key_pem: String,
    /// Every root's `RootCert`, concatenated (Consul's `TrustedCa`).
    pub roots_pem: String,
    pub trust_domain: String,
}

/// The public listener: mTLS with a required client certificate, then RBAC from
/// intentions, then `local_app`.
#[derive(Debug, Clone)]
pub struct PublicListener {
    pub protocol: Protocol,
    pub local_app: SocketAddr,
    /// A `service-intentions` config entry, as ferrule's intentions file holds it.
    pub intentions: Value,
}

/// An upstream: a plaintext listener for the app, and a cluster dialing the
/// destination with SNI and an exact URI SAN check.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub service: String,
    pub protocol: Protocol,
    pub datacenter: String,
    pub endpoints: Vec<SocketAddr>,
}

/// A mesh gateway's route: on listener `listener` (with `tls_inspector` in front), a
/// filter chain that matches only `server_name` and passes the TLS bytes, untouched, to
/// `endpoint`. Routes naming the same listener are its filter chains, in order; a
/// server name may be a wildcard (`*.dc2.internal.<trust domain>`), as Consul's
/// gateways route a whole datacenter.
#[derive(Debug, Clone)]
pub struct SniRoute {
    pub listener: String,
    pub server_name: String,
    pub endpoint: SocketAddr,
}

/// The whole static configuration of one Envoy.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    pub service: String,
    pub identity: Identity,
    pub public: Option<PublicListener>,
    pub upstreams: Vec<Upstream>,
    pub sni_routes: Vec<SniRoute>,
    /// Listeners (by name) bound to a fixed address instead of 127.0.0.1:0, and the
    /// admin listener's (`"admin"`): for a benchmark's fixed topology.
    pub binds: Vec<(String, SocketAddr)>,
    /// TLS session resumption (Envoy's default: on, tickets downstream and one cached
    /// session per upstream host); off disables both.
    pub resumption: bool,
}

/// The listener name of the public listener.
pub const PUBLIC_LISTENER: &str = "public_listener";

/// Consul's `ServiceSNI` in the default partition:
/// `<service>.<namespace>.<datacenter>.internal.<trust domain>`.
pub fn service_sni(service: &str, namespace: &str, datacenter: &str, trust_domain: &str) -> String {
    format!("{service}.{namespace}.{datacenter}.internal.{trust_domain}")
}

/// A service's SPIFFE ID in the default partition.
pub fn service_uri(trust_domain: &str, namespace: &str, datacenter: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/dc/{datacenter}/svc/{service}")
}

impl EnvoyConfig {
    pub fn new(service: &str, identity: Identity) -> EnvoyConfig {
        EnvoyConfig {
            service: service.to_owned(),
            identity,
            public: None,
            upstreams: Vec::new(),
            sni_routes: Vec::new(),
            binds: Vec::new(),
            resumption: true,
        }
    }

    /// Binds listener `name` (or `"admin"`) to `addr`.
    pub fn bind(mut self, name: &str, addr: SocketAddr) -> EnvoyConfig {
        self.binds.push((name.to_owned(), addr));
        self
    }

    fn address(&self, name: &str) -> Value {
        match self.binds.iter().find(|(n, _)| n == name) {
            Some((_, addr)) => socket_address(*addr),
            None => loopback_any(),
        }
    }

    /// The bootstrap document; the admin listener and every listener bind
    /// 127.0.0.1:0 (the harness reads the ports back from the admin API).
    pub fn bootstrap(&self) -> Value {
        let mut listeners = Vec::new();
        let mut clusters = Vec::new();
        if let Some(public) = &self.public {
            listeners.push(self.public_listener(public));
            clusters.push(local_app_cluster(public));
        }
        for upstream in &self.upstreams {
            listeners.push(self.upstream_listener(upstream));
            clusters.push(self.upstream_cluster(upstream));
        }
        let mut gateway_listeners: Vec<&str> = Vec::new();
        for route in &self.sni_routes {
            if !gateway_listeners.contains(&route.listener.as_str()) {
                gateway_listeners.push(&route.listener);
            }
            clusters.push(plain_cluster(&route_cluster(route), route.endpoint, false));
        }
        for name in gateway_listeners {
            let routes: Vec<&SniRoute> = self
                .sni_routes
                .iter()
                .filter(|r| r.listener == name)
                .collect();
            listeners.push(sni_listener(name, &routes));
        }
        json!({
            "node": { "id": format!("{}-sidecar-proxy", self.service), "cluster": self.service },
            "admin": { "address": self.address("admin") },
            "static_resources": { "listeners": listeners, "clusters": clusters },
        })
    }

    fn common_tls(&self, alpn: &[&str], san: Option<&str>) -> Value {
        let mut validation = json!({ "trusted_ca": { "inline_string": self.identity.roots_pem } });
        if let Some(uri) = san {
            validation["match_subject_alt_names"] = json!([{ "exact": uri }]);
        }
        let mut common = json!({
            "tls_params": {},
            "tls_certificates": [{
                "certificate_chain": { "inline_string": self.identity.cert_pem },
                "private_key": { "inline_string": self.identity.key_pem },
            }],
            "validation_context": validation,
        });
        if !alpn.is_empty() {
            common["alpn_protocols"] = json!(alpn);
        }
        common
    }

    fn public_listener(&self, public: &PublicListener) -> Value {
        let td = &self.identity.trust_domain;
        let filters = if public.protocol.is_http() {
            let rules = rbac::rules(&public.intentions, td, true);
            vec![public_hcm(public.protocol, rules)]
        } else {
            let rules = rbac::rules(&public.intentions, td, false);
            vec![
                json!({
                    "name": "envoy.filters.network.rbac",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
                        "rules": rules,
                        "stat_prefix": "connect_authz",
                    },
                }),
                tcp_proxy("public_listener", "local_app"),
            ]
        };
        let mut downstream = json!({
            "@type": TLS_DOWNSTREAM,
            "common_tls_context": self.common_tls(&public.protocol.public_alpn(), None),
            "require_client_certificate": true,
        });
        if !self.resumption {
            downstream["disable_stateless_session_resumption"] = json!(true);
            downstream["disable_stateful_session_resumption"] = json!(true);
        }
        json!({
            "name": PUBLIC_LISTENER,
            "address": self.address(PUBLIC_LISTENER),
            "filter_chains": [{
                "filters": filters,
                "transport_socket": { "name": "tls", "typed_config": downstream },
            }],
            "traffic_direction": "INBOUND",
        })
    }

    fn sni(&self, upstream: &Upstream) -> String {
        service_sni(
            &upstream.service,
            "default",
            &upstream.datacenter,
            &self.identity.trust_domain,
        )
    }

    fn upstream_listener(&self, upstream: &Upstream) -> Value {
        let cluster = self.sni(upstream);
        let stat_prefix = format!(
            "upstream.{}.default.default.{}",
            upstream.service, upstream.datacenter
        );
        let filter = if upstream.protocol.is_http() {
            let mut hcm = json!({
                "@type": HCM,
                "stat_prefix": stat_prefix,
                "route_config": route_to(&upstream.service, &cluster),
                "http_filters": [router()],
                "tracing": { "random_sampling": {} },
                "upgrade_configs": [{ "upgrade_type": "websocket" }],
            });
            if upstream.protocol.is_http2() {
                hcm["http2_protocol_options"] = json!({});
            }
            json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm })
        } else {
            tcp_proxy(&stat_prefix, &cluster)
        };
        json!({
            "name": upstream.service,
            "address": self.address(&upstream.service),
            "filter_chains": [{ "filters": [filter] }],
            "traffic_direction": "OUTBOUND",
        })
    }

    /// Consul's upstream cluster: the target SNI as name and `sni`, the leaf chain, all
    /// roots, an exact URI SAN of the target's datacenter, no ALPN (Envoy derives it
    /// from the HTTP protocol options).
    fn upstream_cluster(&self, upstream: &Upstream) -> Value {
        let name = self.sni(upstream);
        let uri = service_uri(
            &self.identity.trust_domain,
            "default",
            &upstream.datacenter,
            &upstream.service,
        );
        let mut cluster = endpoints_cluster(&name, &upstream.endpoints);
        cluster["transport_socket"] = json!({
            "name": "tls",
            "typed_config": {
                "@type": TLS_UPSTREAM,
                "common_tls_context": self.common_tls(&[], Some(&uri)),
                "sni": name,
            },
        });
        if !self.resumption {
            cluster["transport_socket"]["typed_config"]["max_session_keys"] = json!(0);
        }
        if upstream.protocol.is_http2() {
            cluster["typed_extension_protocol_options"] = http2_options();
        }
        cluster
    }
}

fn loopback_any() -> Value {
    json!({ "socket_address": { "address": "127.0.0.1", "port_value": 0 } })
}

fn socket_address(addr: SocketAddr) -> Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Value {
    json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": { "@type": TCP_PROXY, "stat_prefix": stat_prefix, "cluster": cluster },
    })
}

fn router() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
    })
}

fn route_to(name: &str, cluster: &str) -> Value {
    json!({
        "name": name,
        "virtual_hosts": [{
            "name": name,
            "domains": ["*"],
            "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster } }],
        }],
    })
}

/// The public listener's HCM: HTTP RBAC first; for gRPC the bridge and stats filters;
/// for the others XFCC `APPEND_FORWARD` with every current-client field.
fn public_hcm(protocol: Protocol, rules: Value) -> Value {
    let mut filters = vec![json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": rules,
        },
    })];
    if protocol == Protocol::Grpc {
        filters.push(json!({
            "name": "envoy.filters.http.grpc_http1_bridge",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_http1_bridge.v3.Config" },
        }));
        filters.push(json!({
            "name": "envoy.filters.http.grpc_stats",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
                "stats_for_all_methods": true,
            },
        }));
    }
    filters.push(router());
    let mut hcm = json!({
        "@type": HCM,
        "stat_prefix": PUBLIC_LISTENER,
        "route_config": route_to(PUBLIC_LISTENER, "local_app"),
        "http_filters": filters,
        "tracing": { "random_sampling": {} },
    });
    if protocol != Protocol::Grpc {
        hcm["forward_client_cert_details"] = json!("APPEND_FORWARD");
        hcm["set_current_client_cert_details"] =
            json!({ "subject": true, "cert": true, "chain": true, "dns": true, "uri": true });
    }
    if protocol.is_http2() {
        hcm["http2_protocol_options"] = json!({});
    }
    json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm })
}

/// `local_app`: plaintext to the app, h2c for `http2` and `grpc` (`makeAppCluster`).
fn local_app_cluster(public: &PublicListener) -> Value {
    plain_cluster("local_app", public.local_app, public.protocol.is_http2())
}

fn plain_cluster(name: &str, endpoint: SocketAddr, http2: bool) -> Value {
    let mut cluster = endpoints_cluster(name, &[endpoint]);
    if http2 {
        cluster["typed_extension_protocol_options"] = http2_options();
    }
    cluster
}

fn endpoints_cluster(name: &str, endpoints: &[SocketAddr]) -> Value {
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|addr| {
            json!({ "endpoint": { "address": { "socket_address": {
                "address": addr.ip().to_string(), "port_value": addr.port(),
            } } } })
        })
        .collect();
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": lb_endpoints }] },
    })
}

fn http2_options() -> Value {
    json!({ HTTP_OPTIONS: {
        "@type": format!("type.googleapis.com/{HTTP_OPTIONS}"),
        "explicit_http_config": { "http2_protocol_options": {} },
    } })
}

/// A mesh gateway's shape (`makeMeshGatewayListener`): the TLS inspector reads the
/// client's SNI, and each filter chain matches one server name (exact or wildcard).
/// Every chain counts under the listener's `tcp.mesh_gateway.<listener>.*` stats.
fn sni_listener(name: &str, routes: &[&SniRoute]) -> Value {
    let chains: Vec<Value> = routes
        .iter()
        .map(|route| {
            json!({
                "filter_chain_match": { "server_names": [route.server_name] },
                "filters": [tcp_proxy(&format!("mesh_gateway.{name}"), &route_cluster(route))],
            })
        })
        .collect();
    json!({
        "name": name,
        "address": loopback_any(),
        "listener_filters": [{
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" },
        }],
        "filter_chains": chains,
    })
}

/// The cluster of one gateway route: its listener and server name.
fn route_cluster(route: &SniRoute) -> String {
    format!("{}/{}", route.listener, route.server_name)
}
