//! The outbound direction's L7 side: an HTTP-family upstream listener carries the app's
//! requests to the destination's sidecars over a pool of mTLS HTTP/2 connections.
//!
//! The app may speak HTTP/1.1 or HTTP/2 with prior knowledge (`http`), or only HTTP/2
//! (`http2`, `grpc`). Each request gets a normalized path, loses the headers that only
//! describe its hop and any client-certificate header the app made up, and goes to the
//! next endpoint round robin (recently failed ones last), over that endpoint's one
//! multiplexed connection: many app connections, even `Connection: close` ones, share
//! few TLS handshakes. A dial (`super::dial`, the same as L4's) that fails, or a pooled
//! connection that closed before the request went out, moves the request on to the
//! next endpoint; a request that was sent is never replayed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferrule_control::identity::ServiceId;
use ferrule_control::model::{Endpoint, Protocol, UpstreamConfig};
use http::header;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpStream;

use super::dial;
use crate::State;
use crate::balance::Balancer;
use crate::http::{
    RequestError, RequestGuard, ResponseBody, XFCC, is_grpc, local_reply, rebuild_uri,
    requested_authority, strip_hop_by_hop, within,
};
use crate::limits::Watched;
use crate::metrics::{self, Attempt, ConnGuard, DialError, Direction, Metered};
use crate::tls::TlsState;

/// A pooled connection that has been silent this long is pinged, and closed if the
/// ping goes unanswered for `KEEPALIVE_TIMEOUT`: a black-holed endpoint is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

type Sender = http2::SendRequest<Incoming>;

#[derive(Clone, PartialEq, Eq, Hash)]
struct SlotKey {
    addr: String,
    identity: ServiceId,
}

/// The connection to one endpoint, if open. The async lock makes concurrent requests
/// wait for one dial instead of each dialing its own.
type Slot = Arc<tokio::sync::Mutex<Option<Sender>>>;

/// The mesh connections of one upstream listener, one per endpoint.
pub(super) struct MeshPool {
    upstream: String,
    balancer: Arc<Balancer>,
    slots: Mutex<HashMap<SlotKey, Slot>>,
}

impl MeshPool {
    pub(super) fn new(upstream: String, balancer: Arc<Balancer>) -> MeshPool {
        MeshPool {
            upstream,
            balancer,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, endpoint: &Endpoint) -> Slot {
        let key = SlotKey {
            addr: endpoint.addr.clone(),
            identity: endpoint.identity.clone(),
        };
        self.slots.lock().entry(key).or_default().clone()
    }

    /// The open connection to `endpoint`, dialed now if there is none.
    async fn sender(
        &self,
        endpoint: &Endpoint,
        upstream: &UpstreamConfig,
        tls: &TlsState,
    ) -> Option<Sender> {
        let slot = self.slot(endpoint);
        let mut open = slot.lock().await;
        if let Some(sender) = open.as_ref().filter(|s| !s.is_closed()) {
            return Some(sender.clone());
        }
        *open = None;
        self.forget_departed(upstream);
        let peer = endpoint
            .addr
            .parse()
            .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let mut guard = ConnGuard::new(Direction::Outbound, Some(self.upstream.clone()), peer);
        let stream = dial::dial(endpoint, tls, upstream, &self.balancer, &mut guard).await?;
        let io = TokioIo::new(Metered::new(stream, guard.bytes()));
        let handshake = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .handshake(io)
            .await;
        let (sender, connection) = match handshake {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(upstream = %self.upstream, endpoint = %endpoint.addr, error = %e, "HTTP/2 handshake failed");
                guard.attempt(Attempt::Failed(DialError::ConnectError));
                return None;
            }
        };
        dial::connected(&mut guard, endpoint);
        tokio::spawn(async move {
            // The guard lives as long as the connection: its gauge, bytes and log line.
            let _guard = guard;
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "mesh HTTP/2 connection ended with an error");
            }
        });
        *open = Some(sender.clone());
        Some(sender)
    }

    /// Endpoints that left the upstream lose their connections (they close once their
    /// last request is done).
    fn forget_departed(&self, upstream: &UpstreamConfig) {
        self.slots.lock().retain(|key, _| {
            upstream
                .endpoints
                .iter()
                .any(|e| e.addr == key.addr && e.identity == key.identity)
        });
    }

    /// Drops a connection that turned out to be closed.
    async fn forget(&self, endpoint: &Endpoint) {
        let slot = self.slot(endpoint);
        let mut open = slot.lock().await;
        if open.as_ref().is_some_and(|s| s.is_closed()) {
            *open = None;
        }
    }
}

/// Serves one app connection until the app closes it, or until a drain or `idle` has
/// let its requests in flight finish.
pub(super) async fn serve_connection(
    app: Watched<TcpStream>,
    protocol: Protocol,
    pool: Arc<MeshPool>,
    state: State,
    idle: impl Future<Output = ()>,
) {
    let draining = state.draining.clone();
    let service = service_fn(move |req| {
        let pool = pool.clone();
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(req, &pool, &state).await) }
    });
    let builder = crate::http::server(protocol);
    let connection = builder.serve_connection(TokioIo::new(app), service);
    crate::http::serve_to_end(connection, &draining, idle, Direction::Outbound).await;
}

/// One request from the app: rebuilt for the mesh, then sent to the first endpoint
/// that takes it.
async fn handle(
    mut req: Request<Incoming>,
    pool: &MeshPool,
    state: &State,
) -> Response<ResponseBody> {
    let guard = RequestGuard::new(Direction::Outbound, &req);
    let grpc = is_grpc(&req);
    let snapshot = state.snapshots.borrow().clone();
    let Some(upstream) = snapshot.upstream(&pool.upstream) else {
        return guard.respond(unavailable("no healthy upstream", grpc));
    };
    if upstream.endpoints.is_empty() {
        metrics::outbound_attempt(&upstream.name, Attempt::NoEndpoints);
        return guard.respond(unavailable("no healthy upstream", grpc));
    }
    if let Err(e) = for_the_mesh(&mut req, &upstream.name) {
        tracing::debug!(upstream = %upstream.name, error = %e, "request from the app refused");
        return guard.respond(local_reply(
            StatusCode::BAD_REQUEST,
            "bad request path",
            grpc,
        ));
    }
    let tls = state.tls.borrow().clone();
    guard.respond(send(req, upstream, pool, &tls, grpc).await)
}

fn unavailable(message: &'static str, grpc: bool) -> Response<Either<Incoming, Full<Bytes>>> {
    local_reply(StatusCode::SERVICE_UNAVAILABLE, message, grpc)
}

/// Rewrites an app's request for the next hop: a normalized path under the authority
/// it asked for (the upstream's name if none), no hop-by-hop headers, HTTP/2.
fn for_the_mesh(req: &mut Request<Incoming>, upstream: &str) -> Result<(), RequestError> {
    let authority = requested_authority(req).unwrap_or_else(|| upstream.to_owned());
    *req.uri_mut() = rebuild_uri(req.uri(), "https", &authority)?;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    // The authority travels as `:authority`; who the app is, the destination learns
    // from our certificate, never from a header the app wrote.
    headers.remove(header::HOST);
    headers.remove(XFCC);
    *req.version_mut() = Version::HTTP_2;
    Ok(())
}

/// Tries the endpoints in the balancer's order until one answers; a request that went
/// out is never sent again.
async fn send(
    mut req: Request<Incoming>,
    upstream: &UpstreamConfig,
    pool: &MeshPool,
    tls: &TlsState,
    grpc: bool,
) -> Response<Either<Incoming, Full<Bytes>>> {
    let endpoints = &upstream.endpoints;
    for i in pool.balancer.order(endpoints) {
        let endpoint = &endpoints[i];
        let Some(mut sender) = pool.sender(endpoint, upstream, tls).await else {
            continue;
        };
        let sent = sender.try_send_request(req);
        let answered = within(upstream.request_timeout, sent).await;
        match answered {
            Some(Ok(mut response)) => {
                strip_hop_by_hop(response.headers_mut());
                return response.map(Either::Left);
            }
            Some(Err(mut e)) => match e.take_message() {
                // Never sent: the pooled connection had just closed. Try the next one.
                Some(unsent) => {
                    req = unsent;
                    pool.forget(endpoint).await;
                }
                None => {
                    tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.addr, error = %e.error(), "request failed");
                    return unavailable("upstream reset before response", grpc);
                }
            },
            None => {
                return local_reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                    grpc,
                );
            }
        }
    }
    tracing::warn!(upstream = %upstream.name, "no endpoint could be reached");
    unavailable("no healthy upstream", grpc)
}
