//! The outbound direction: the application's plaintext calls on an upstream listener,
//! carried over mTLS to an instance of the destination that proves it is that
//! destination.
//!
//! Per app connection: pick endpoints round robin (recently failed ones last, see
//! `balance`) -> for each until one works, `dial` (TCP connect and handshake within the
//! connect timeout; the server's SVID must be exactly the endpoint's expected identity)
//! -> splice. No endpoint left: the app's connection is closed. An HTTP-family upstream
//! serves the app connection request by request instead (`http`), over pooled mesh
//! connections made by the same `dial`. The accept loop is `crate::listeners`'.

mod dial;
mod http;

use std::net::SocketAddr;
use std::sync::Arc;

use ferrule_control::model::{Endpoint, Protocol, UpstreamConfig};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use self::http::MeshPool;
use crate::State;
use crate::balance::Balancer;
use crate::limits::{self, Watched};
use crate::metrics::{Attempt, ConnGuard, Direction, Metered};
use crate::splice::{Spliced, splice};

/// What the connections of one upstream listener share: the balancer's memory of
/// failed endpoints and, for HTTP, the pool of mesh connections.
pub struct Upstream {
    name: String,
    balancer: Arc<Balancer>,
    pool: Arc<MeshPool>,
}

impl Upstream {
    pub fn new(name: String) -> Upstream {
        let balancer = Arc::new(Balancer::default());
        let pool = Arc::new(MeshPool::new(name.clone(), balancer.clone()));
        Upstream {
            name,
            balancer,
            pool,
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
        let app = Watched::new(app);
        let (protocol, idle_timeout) = state
            .snapshots
            .borrow()
            .upstream(&self.name)
            .map_or((Protocol::Tcp, None), |u| (u.protocol, u.idle_timeout));
        let idle = limits::idle(app.activity(), idle_timeout);
        // Boxed: an L4 connection's task is then sized to the L4 path alone, not to the
        // larger HTTP state machine beside it.
        if protocol.is_http() {
            let pool = self.pool.clone();
            let served = http::serve_connection(app, protocol, pool, state.clone(), idle);
            Either::Left(Box::pin(served))
        } else {
            let (name, balancer) = (self.name.clone(), self.balancer.clone());
            Either::Right(handle(app, peer, name, state.clone(), balancer, idle))
        }
    }
}

/// The instances a connection or request goes to: the active target of the cluster
/// the catch-all route's first split names.
pub(crate) fn endpoints(upstream: &UpstreamConfig) -> &[Endpoint] {
    upstream
        .routing
        .catch_all()
        .and_then(|route| route.splits.first())
        .and_then(|split| upstream.routing.clusters.get(split.cluster))
        .and_then(|cluster| cluster.active_target())
        .map_or(&[], |target| target.endpoints.as_slice())
}

/// One L4 app connection: the first endpoint that can be dialed gets its bytes.
async fn handle(
    mut app: Watched<TcpStream>,
    peer: SocketAddr,
    name: String,
    state: State,
    balancer: Arc<Balancer>,
    idle: impl Future<Output = ()>,
) {
    let mut guard = ConnGuard::new(Direction::Outbound, Some(name.clone()), peer);
    let snapshot = state.snapshots.borrow().clone();
    let tls = state.tls.borrow().clone();
    let Some(upstream) = snapshot.upstream(&name) else {
        return guard.attempt(Attempt::NoEndpoints);
    };
    let endpoints = endpoints(upstream);
    if endpoints.is_empty() {
        return guard.attempt(Attempt::NoEndpoints);
    }
    for i in balancer.order(endpoints) {
        let endpoint = &endpoints[i];
        let Some(stream) = dial::dial(endpoint, &tls, upstream, &balancer, &mut guard).await else {
            continue;
        };
        dial::connected(&mut guard, endpoint);
        let mut mesh = Metered::new(stream, guard.bytes());
        let stop = async {
            idle.await;
            Spliced::Idle
        };
        if splice(&mut app, &mut mesh, stop).await == Spliced::Idle {
            tracing::debug!(upstream = %name, "closing idle connection");
        }
        return;
    }
    tracing::warn!(upstream = %name, "no endpoint could be reached; closing the app's connection");
}
