//! The listeners a source describes, with the defaults for what it leaves unset. Both
//! sources read the same keys (Consul's `Proxy.Config` and upstream `Config` names, which
//! the config file reuses), so one place applies the same defaults to both; see
//! `docs/consul-semantics.md#sidecar-registration`.

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use crate::gateway::GatewayLimits;
use crate::identity::ServiceId;
use crate::model::{Endpoint, InboundConfig, Protocol, UpstreamConfig};
use crate::routing::{Routing, Target};

/// How long a peer's TLS handshake on the public listener may take: the default of
/// Consul's built-in proxy.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long dialling the local application may take: the default Consul gives Envoy
/// (its built-in proxy's is 1 s), the sidecar ferrule stands in for. A busy sidecar or
/// app may take more than a second to complete a connect that the kernel already
/// accepted; failing it there would be a 503 for a request that would have succeeded.
const DEFAULT_LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long dialling an upstream instance may take: Envoy's default, which Consul's
/// `connect_timeout_ms` inherits.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an L7 request may wait for its response headers when nothing says
/// otherwise: Envoy's route timeout, which Consul's `local_request_timeout_ms` inherits.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a connection may carry no byte either way before it is closed, when
/// nothing says otherwise: Envoy's TCP proxy and HTTP connection manager default.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// How many connections one listener serves at once when nothing says otherwise.
/// Beyond it new connections wait in the kernel's backlog.
const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

/// A duration in milliseconds, or the default.
fn millis_or(ms: Option<u64>, default: Duration) -> Duration {
    ms.map_or(default, Duration::from_millis)
}

/// A timeout in milliseconds where `0` means none, as Consul's keys have it.
fn timeout_ms(ms: Option<u64>, default: Duration) -> Option<Duration> {
    match ms {
        None => Some(default),
        Some(0) => None,
        Some(ms) => Some(Duration::from_millis(ms)),
    }
}

/// `request_timeout_ms` / `local_request_timeout_ms`.
fn request_timeout_ms(ms: Option<u64>) -> Option<Duration> {
    timeout_ms(ms, DEFAULT_REQUEST_TIMEOUT)
}

/// `idle_timeout_ms`.
fn idle_timeout_ms(ms: Option<u64>) -> Option<Duration> {
    timeout_ms(ms, DEFAULT_IDLE_TIMEOUT)
}

/// `max_connections` / `max_inbound_connections`: at least one.
fn max_connections(n: Option<u64>) -> usize {
    n.map_or(DEFAULT_MAX_CONNECTIONS, |n| {
        usize::try_from(n).unwrap_or(usize::MAX).max(1)
    })
}

/// The public listener's timeouts and limit as a source states them; `None` takes the
/// default. Milliseconds, as Consul's keys have them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct InboundLimits {
    pub(crate) handshake_timeout_ms: Option<u64>,
    pub(crate) local_connect_timeout_ms: Option<u64>,
    pub(crate) local_request_timeout_ms: Option<u64>,
    pub(crate) idle_timeout_ms: Option<u64>,
    pub(crate) max_connections: Option<u64>,
}

/// The public listener in front of the local application at `local_app` (`host:port`).
pub(crate) fn inbound(
    bind: SocketAddr,
    local_app: String,
    protocol: Protocol,
    limits: &InboundLimits,
) -> InboundConfig {
    InboundConfig {
        bind,
        local_app,
        protocol,
        handshake_timeout: millis_or(limits.handshake_timeout_ms, DEFAULT_HANDSHAKE_TIMEOUT),
        local_connect_timeout: millis_or(
            limits.local_connect_timeout_ms,
            DEFAULT_LOCAL_CONNECT_TIMEOUT,
        ),
        local_request_timeout: request_timeout_ms(limits.local_request_timeout_ms),
        idle_timeout: idle_timeout_ms(limits.idle_timeout_ms),
        max_connections: max_connections(limits.max_connections),
    }
}

/// An upstream listener's timeouts and limit as a source states them; `None` takes the
/// default.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UpstreamLimits {
    pub(crate) connect_timeout_ms: Option<u64>,
    pub(crate) request_timeout_ms: Option<u64>,
    pub(crate) idle_timeout_ms: Option<u64>,
    pub(crate) max_connections: Option<u64>,
}

/// An upstream listener with its defaults applied. Its endpoints are not part of it: they
/// change on their own (health, a new trust domain) while the listener stays.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UpstreamListener {
    /// The destination service name.
    pub(crate) name: String,
    pub(crate) bind: SocketAddr,
    pub(crate) protocol: Protocol,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_connections: usize,
}

impl UpstreamListener {
    pub(crate) fn new(
        name: String,
        bind: SocketAddr,
        protocol: Protocol,
        limits: &UpstreamLimits,
    ) -> UpstreamListener {
        UpstreamListener {
            name,
            bind,
            protocol,
            connect_timeout: millis_or(limits.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT),
            request_timeout: request_timeout_ms(limits.request_timeout_ms),
            idle_timeout: idle_timeout_ms(limits.idle_timeout_ms),
            max_connections: max_connections(limits.max_connections),
        }
    }

    /// The upstream as the proxy serves it when no chain shapes it: everything to
    /// `identity`'s service, dialling `endpoints`.
    pub(crate) fn direct(&self, identity: ServiceId, endpoints: Vec<Endpoint>) -> UpstreamConfig {
        let target = Target::new(identity, None, endpoints);
        self.with_routing(Arc::new(Routing::direct(target, self.connect_timeout)))
    }

    /// The upstream as the proxy serves it, routed by `routing`.
    pub(crate) fn with_routing(&self, routing: Arc<Routing>) -> UpstreamConfig {
        UpstreamConfig {
            name: self.name.clone(),
            bind: self.bind,
            protocol: self.protocol,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            routing,
        }
    }
}

/// A mesh gateway listener's limits as its registration states them (`Proxy.Config`, in
/// milliseconds); `None` takes the default the sidecar has for the same key.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GatewayLimitsMs {
    pub(crate) handshake_timeout_ms: Option<u64>,
    pub(crate) connect_timeout_ms: Option<u64>,
    pub(crate) idle_timeout_ms: Option<u64>,
    pub(crate) max_connections: Option<u64>,
}

/// A mesh gateway listener's limits with the defaults applied: the TLS handshake's
/// timeout bounds the wait for a ClientHello, the upstream connect timeout each dial.
pub(crate) fn gateway_limits(limits: &GatewayLimitsMs) -> GatewayLimits {
    GatewayLimits {
        hello_timeout: millis_or(limits.handshake_timeout_ms, DEFAULT_HANDSHAKE_TIMEOUT),
        connect_timeout: millis_or(
            limits.connect_timeout_ms.filter(|ms| *ms > 0),
            DEFAULT_CONNECT_TIMEOUT,
        ),
        idle_timeout: idle_timeout_ms(limits.idle_timeout_ms),
        max_connections: max_connections(limits.max_connections),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_limits_take_the_defaults_and_zero_timeouts_mean_none() {
        let bind: SocketAddr = "127.0.0.1:21000".parse().unwrap();
        let ib = inbound(
            bind,
            "127.0.0.1:8080".into(),
            Protocol::Http,
            &Default::default(),
        );
        assert_eq!(ib.handshake_timeout, Duration::from_secs(10));
        assert_eq!(ib.local_connect_timeout, Duration::from_secs(5));
        assert_eq!(ib.local_request_timeout, Some(DEFAULT_REQUEST_TIMEOUT));
        assert_eq!(ib.max_connections, DEFAULT_MAX_CONNECTIONS);

        let limits = UpstreamLimits {
            request_timeout_ms: Some(0),
            max_connections: Some(0),
            ..Default::default()
        };
        let up = UpstreamListener::new("db".into(), bind, Protocol::Http, &limits).direct(
            ServiceId::new("td.consul", "default", "dc1", "db"),
            Vec::new(),
        );
        assert_eq!(up.connect_timeout, Duration::from_secs(5));
        assert_eq!(up.request_timeout, None);
        assert_eq!(up.idle_timeout, Some(DEFAULT_IDLE_TIMEOUT));
        assert_eq!(up.max_connections, 1);
    }
}
