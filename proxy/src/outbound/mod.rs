//! The outbound direction: the application's plaintext calls on an upstream listener,
//! carried over mTLS to an instance of the destination that proves it is that
//! destination, where the upstream's routing (Consul's discovery chain) says.
//!
//! Per L4 app connection: the catch-all route, a split drawn by weight, its cluster,
//! and the cluster's targets in order from the active one (the first with an
//! instance); the target's instances in its balancer's order -> for each until one
//! works, `dial` (TCP connect and handshake within the cluster's connect timeout, the
//! target's server name; the server's SVID must be exactly the instance's expected
//! identity) -> splice. No instance left: the app's connection is closed. The
//! connection keeps the instance it got: a routing change never cuts it. An
//! HTTP-family upstream serves the app connection request by request instead
//! (`http`), over pooled mesh connections (`pool`) made by the same `dial`, routed by
//! `route`, hashed by `affinity`, retried by `retry`, with the bodies of `body`. The
//! accept loop is `crate::listeners`'.

mod affinity;
mod body;
mod dial;
mod http;
mod pool;
mod retry;
mod route;

use std::net::SocketAddr;
use std::sync::Arc;

use ferrule_control::model::Protocol;
use ferrule_control::routing::{Cluster, Routing};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use self::affinity::Peer;
use self::dial::DialTo;
use self::pool::MeshPool;
use crate::State;
use crate::access_log::{self, Kind};
use crate::balance::{Balancers, Pick};
use crate::limits::{self, Watched};
use crate::metrics::{Attempt, ConnGuard, Direction, Metered};
use crate::splice::{Spliced, splice};

/// What the connections of one upstream listener share: each target's balancing state
/// and, for HTTP, the pool of mesh connections.
pub struct Upstream {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    balancers: Balancers,
    pool: MeshPool,
    /// Which split each connection or request takes.
    rolls: route::Rolls,
}

impl Upstream {
    pub fn new(name: String) -> Upstream {
        let shared = Shared {
            pool: MeshPool::new(name.clone()),
            balancers: Balancers::default(),
            rolls: route::Rolls::new(),
            name,
        };
        Upstream {
            shared: Arc::new(shared),
        }
    }

    /// Serves one app connection accepted on this listener, as the upstream's protocol
    /// says (read now, when the connection arrives).
    pub fn connection(
        &self,
        app: TcpStream,
        peer: SocketAddr,
        state: &State,
    ) -> impl Future<Output = ()> + Send + use<> {
        let _ = app.set_nodelay(true);
        let local = app.local_addr().unwrap_or(peer);
        let app = Watched::new(app);
        let (protocol, idle_timeout) = state
            .snapshots
            .borrow()
            .upstream(&self.shared.name)
            .map_or((Protocol::Tcp, None), |u| (u.protocol, u.idle_timeout));
        let idle = limits::idle(app.activity(), idle_timeout);
        let shared = self.shared.clone();
        // Boxed: an L4 connection's task is then sized to the L4 path alone, not to the
        // larger HTTP state machine beside it.
        if protocol.is_http() {
            let peer = Peer {
                remote: peer,
                local,
            };
            let served = http::serve_connection(app, peer, protocol, shared, state.clone(), idle);
            Either::Left(Box::pin(served))
        } else {
            Either::Right(handle(app, peer, shared, state.clone(), idle))
        }
    }
}

/// The cluster an L4 connection goes to: the catch-all route's, by a split drawn by
/// weight (a `tcp` chain has one split; a splitter's weights hold all the same).
fn l4_cluster<'r>(routing: &'r Routing, rolls: &route::Rolls) -> Option<&'r Cluster> {
    let route = routing.catch_all()?;
    let split = route::split(route, rolls.next())?;
    routing.clusters.get(split.cluster)
}

/// One L4 app connection: the first instance that can be dialed gets its bytes.
async fn handle(
    mut app: Watched<TcpStream>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    state: State,
    idle: impl Future<Output = ()>,
) {
    let name = &shared.name;
    let mut guard = ConnGuard::new(Direction::Outbound, Some(name.clone()), peer);
    let snapshot = state.snapshots.borrow().clone();
    let tls = state.tls.borrow().clone();
    let mut log = access_log::Pending::start(&snapshot, Kind::L4);
    if let Some(record) = log.record() {
        record.downstream_remote = Some(peer);
        record.downstream_local = app.get_ref().local_addr().ok();
        record.response_flags = Some("UH");
    }
    let Some(upstream) = snapshot.upstream(name) else {
        return guard.attempt(Attempt::NoEndpoints);
    };
    let routing = &upstream.routing;
    let Some(cluster) = l4_cluster(routing, &shared.rolls).filter(|c| c.active_target().is_some())
    else {
        return guard.attempt(Attempt::NoEndpoints);
    };
    if let Some(record) = log.record() {
        record.response_flags = Some("UF");
    }
    // The active target first. Should none of its instances take the connection, the
    // cluster's next targets in order: the failover the chain names, for instances that
    // are registered healthy but cannot be reached.
    for target in cluster.targets.iter().filter(|t| !t.endpoints.is_empty()) {
        let balancer = shared.balancers.target(routing, &target.id);
        let to = DialTo {
            upstream: name,
            protocol: upstream.protocol,
            target,
            connect_timeout: cluster.connect_timeout,
        };
        if let Some(record) = log.record() {
            record.upstream_cluster = Some(target.sni.clone());
        }
        for i in balancer.order(&target.endpoints, &Pick::new(&cluster.load_balancer)) {
            let endpoint = &target.endpoints[i];
            let dialed = dial::dial(&to, endpoint, &tls, &balancer.ejections, &mut guard).await;
            let Some(stream) = dialed else {
                continue;
            };
            dial::connected(&mut guard, endpoint);
            if let Some(record) = log.record() {
                record.response_flags = None;
                record.upstream_host = Some(endpoint.addr.clone());
                record.upstream_peer_uri_san = Some(endpoint.identity.to_uri());
                record.upstream_local_address = stream.get_ref().0.local_addr().ok();
            }
            log.count_upstream_bytes(&guard.bytes());
            let mut mesh = Metered::new(stream, guard.bytes());
            let stop = async {
                idle.await;
                Spliced::Idle
            };
            if splice(&mut app, &mut mesh, stop).await == Spliced::Idle {
                tracing::debug!(upstream = %name, "closing idle connection");
                if let Some(record) = log.record() {
                    record.termination_details = Some("idle_timeout");
                }
            }
            return;
        }
    }
    tracing::warn!(upstream = %name, "no endpoint could be reached; closing the app's connection");
}

#[cfg(test)]
mod tests;
