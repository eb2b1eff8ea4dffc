//! A mesh gateway's view of the mesh: what `ferrule gateway` routes on, as plain data
//! (the gateway's twin of `model::Snapshot`); see `docs/consul-semantics.md#mesh-gateways`.
//!
//! The source (`consul::gateway`) publishes a new `Arc<GatewayView>` whenever something
//! changes: the gateway's own registration (its LAN and WAN listeners and their
//! limits), its datacenter and the mesh's trust domain, the healthy instances of every
//! service of its datacenter (and of each resolver subset), and the healthy mesh
//! gateways of every other datacenter. The proxy reads it per connection and never
//! holds a lock. `None` marks what the agent has not answered yet, as opposed to an
//! empty answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::model::{millis, optional_millis};

/// Everything a mesh gateway routes on, at one instant.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GatewayView {
    /// The gateway's registration, validated; `None` until one is read.
    pub gateway: Option<GatewayConfig>,
    /// The gateway's datacenter: SNI names ending in it are routed to local services.
    pub datacenter: Option<String>,
    /// The mesh's trust domain (`TrustDomain` of the CA roots), lower case.
    pub trust_domain: Option<String>,
    /// The services of this datacenter, keyed by their name in lower case; `None` until
    /// the catalog answered.
    pub services: Option<BTreeMap<String, LocalService>>,
    /// The other datacenters, by name, and their mesh gateways; `None` until the agent
    /// listed the datacenters.
    pub remote: Option<BTreeMap<String, RemoteDatacenter>>,
    /// Why the registration cannot be served at all (it is not a mesh gateway): set only
    /// before a good registration was read, and then the process exits 2 saying so.
    pub refused: Option<String>,
    /// What the agent does not answer now, one line each (`/ready` names them).
    pub blocked: Vec<String>,
}

impl GatewayView {
    /// What `/ready` waits for, named: the registration, the datacenter and the trust
    /// domain. Services and other datacenters may come later: a connection for one not
    /// known yet waits for it (within bounds).
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.gateway.is_none() {
            missing.push("the gateway's registration");
        }
        if self.datacenter.is_none() {
            missing.push("the datacenter");
        }
        if self.trust_domain.is_none() {
            missing.push("the trust domain");
        }
        missing
    }
}

/// The gateway's registration: where it listens and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayConfig {
    /// The registration's service ID and name.
    pub id: String,
    pub service: String,
    /// The LAN listener: the service's `Address` (or `TaggedAddresses.lan`) and `Port`.
    pub lan: SocketAddr,
    /// The WAN listener (`TaggedAddresses.wan`), when it is another address than the
    /// LAN one.
    pub wan: Option<SocketAddr>,
    pub limits: GatewayLimits,
    /// The public Prometheus listener `Proxy.Config` asks for
    /// (`envoy_prometheus_bind_addr`); its bind failure never stops the gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<SocketAddr>,
}

/// One listener's limits and timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GatewayLimits {
    /// How long a connection may take to send its whole TLS ClientHello.
    #[serde(serialize_with = "millis")]
    pub hello_timeout: Duration,
    /// How long dialling one instance or gateway may take before the next is tried.
    #[serde(serialize_with = "millis")]
    pub connect_timeout: Duration,
    /// No byte either way for this long closes a connection; `None`: never.
    #[serde(serialize_with = "optional_millis")]
    pub idle_timeout: Option<Duration>,
    /// Connections one listener serves at once.
    pub max_connections: usize,
}

/// A service of the gateway's datacenter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LocalService {
    /// The name as registered (the map key is its lower-case form).
    pub name: String,
    /// Where its healthy connect-capable instances listen (`host:port`, LAN), for a
    /// name without a subset: all of them, or the resolver's `DefaultSubset`'s. `None`
    /// until the agent answered.
    pub instances: Option<Vec<String>>,
    /// Its resolver's subsets, by name, with their healthy instances (`None`: not
    /// answered yet).
    pub subsets: BTreeMap<String, Option<Vec<String>>>,
}

/// Another datacenter, as its mesh gateways are reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RemoteDatacenter {
    /// Where its healthy mesh gateways listen (`host:port`, their WAN addresses); `None`
    /// until the agent answered.
    pub gateways: Option<Vec<String>>,
}
