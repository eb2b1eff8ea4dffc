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
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::dial;
use crate::State;
use crate::balance::Balancer;
use crate::http::{
    MAX_HEADER_BYTES, RequestError, RequestGuard, ResponseBody, XFCC, is_grpc, local_reply,
    rebuild_uri, requested_authority, strip_hop_by_hop, within,
};
use crate::limits::Watched;
use crate::metrics::{self, Attempt, ConnGuard, DialError, Direction, Metered};
use crate::tls::{H2, TlsState};

/// A pooled connection that has been silent this long is pinged, and closed if the
/// ping goes unanswered for `KEEPALIVE_TIMEOUT`: a black-holed endpoint is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A request's way to one endpoint: the endpoint's one multiplexed HTTP/2 connection,
/// or one of its pooled HTTP/1.1 connections, taken for this request alone.
enum Sender {
    H2(http2::SendRequest<Incoming>),
    H1(http1::SendRequest<Incoming>),
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct SlotKey {
    addr: String,
    identity: ServiceId,
}

/// The connections to one endpoint: an HTTP/2 one if the endpoint speaks HTTP/2, idle
/// HTTP/1.1 ones otherwise.
#[derive(Default)]
struct Open {
    h2: Option<http2::SendRequest<Incoming>>,
    idle_h1: Vec<http1::SendRequest<Incoming>>,
}

/// How many idle HTTP/1.1 connections one endpoint keeps; beyond them a connection
/// closes once its response is done.
const MAX_IDLE_H1: usize = 64;

/// The connections to one endpoint. The async lock makes concurrent requests wait for
/// one dial instead of each dialing its own.
type Slot = Arc<tokio::sync::Mutex<Open>>;

/// The mesh connections of one upstream listener, per endpoint.
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

    /// A connection to `endpoint` ready for one request: the open HTTP/2 one, an idle
    /// HTTP/1.1 one, or one dialed now.
    async fn sender(
        &self,
        endpoint: &Endpoint,
        upstream: &UpstreamConfig,
        tls: &TlsState,
    ) -> Option<Sender> {
        let slot = self.slot(endpoint);
        let mut open = slot.lock().await;
        if let Some(sender) = open.h2.as_ref().filter(|s| !s.is_closed()) {
            return Some(Sender::H2(sender.clone()));
        }
        open.h2 = None;
        open.idle_h1.retain(|s| !s.is_closed());
        if let Some(i) = open.idle_h1.iter().position(http1::SendRequest::is_ready) {
            return Some(Sender::H1(open.idle_h1.swap_remove(i)));
        }
        self.forget_departed(upstream);
        let sender = self.connect(endpoint, upstream, tls).await?;
        if let Sender::H2(h2) = &sender {
            open.h2 = Some(h2.clone());
        }
        Some(sender)
    }

    /// Dials `endpoint` and speaks the HTTP version the handshake chose: HTTP/2 when
    /// ALPN said `h2`, HTTP/1.1 when it said `http/1.1`; when it said nothing (the
    /// callee's listener is TCP, or not ALPN-aware), HTTP/1.1 for `http`, so the app
    /// behind it gets what its clients send, and HTTP/2 with prior knowledge for
    /// `http2` and `grpc`. See `docs/consul-semantics.md#on-the-wire`.
    async fn connect(
        &self,
        endpoint: &Endpoint,
        upstream: &UpstreamConfig,
        tls: &TlsState,
    ) -> Option<Sender> {
        let peer = endpoint
            .addr
            .parse()
            .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let mut guard = ConnGuard::new(Direction::Outbound, Some(self.upstream.clone()), peer);
        let stream = dial::dial(endpoint, tls, upstream, &self.balancer, &mut guard).await?;
        let http2 = match stream.get_ref().1.alpn_protocol() {
            Some(alpn) => alpn == H2,
            None => upstream.protocol.is_http2_only(),
        };
        let io = TokioIo::new(Metered::new(stream, guard.bytes()));
        let handshake = if http2 {
            http2_handshake(io).await
        } else {
            http1_handshake(io).await
        };
        let (sender, connection) = match handshake {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(upstream = %self.upstream, endpoint = %endpoint.addr, error = %e, "HTTP handshake failed");
                guard.attempt(Attempt::Failed(DialError::ConnectError));
                return None;
            }
        };
        dial::connected(&mut guard, endpoint);
        tokio::spawn(async move {
            // The guard lives as long as the connection: its gauge, bytes and log line.
            let _guard = guard;
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "mesh HTTP connection ended with an error");
            }
        });
        Some(sender)
    }

    /// Puts an HTTP/1.1 connection whose response has arrived back in the pool; it takes
    /// a new request once that response's body is done.
    async fn give_back(&self, endpoint: &Endpoint, sender: http1::SendRequest<Incoming>) {
        let slot = self.slot(endpoint);
        let mut open = slot.lock().await;
        if open.idle_h1.len() < MAX_IDLE_H1 && !sender.is_closed() {
            open.idle_h1.push(sender);
        }
    }

    /// Endpoints that left the upstream lose their connections (they close once their
    /// last request is done).
    fn forget_departed(&self, upstream: &UpstreamConfig) {
        self.slots.lock().retain(|key, _| {
            upstream
                .routing
                .targets()
                .flat_map(|t| &t.endpoints)
                .any(|e| e.addr == key.addr && e.identity == key.identity)
        });
    }

    /// Drops an HTTP/2 connection that turned out to be closed.
    async fn forget(&self, endpoint: &Endpoint) {
        let slot = self.slot(endpoint);
        let mut open = slot.lock().await;
        if open.h2.as_ref().is_some_and(|s| s.is_closed()) {
            open.h2 = None;
        }
    }
}

type MeshIo = TokioIo<Metered<TlsStream<TcpStream>>>;
type Driven = std::pin::Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

async fn http2_handshake(io: MeshIo) -> hyper::Result<(Sender, Driven)> {
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .adaptive_window(true)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .handshake(io)
        .await?;
    Ok((Sender::H2(sender), Box::pin(connection)))
}

async fn http1_handshake(io: MeshIo) -> hyper::Result<(Sender, Driven)> {
    let (sender, connection) = http1::Builder::new()
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        .handshake(io)
        .await?;
    Ok((Sender::H1(sender), Box::pin(connection)))
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
    let builder = crate::http::server(protocol.is_http2_only());
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
    if super::endpoints(upstream).is_empty() {
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
    let endpoints = super::endpoints(upstream);
    for i in pool.balancer.order(endpoints) {
        let endpoint = &endpoints[i];
        let Some(sender) = pool.sender(endpoint, upstream, tls).await else {
            continue;
        };
        let answered = match exchange(pool, endpoint, sender, req, upstream.request_timeout).await {
            Ok(answered) => answered,
            Err(e) => {
                tracing::debug!(upstream = %upstream.name, error = %e, "request not expressible in the hop's HTTP version");
                return local_reply(StatusCode::BAD_REQUEST, "bad request", grpc);
            }
        };
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

type Answered =
    Option<Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Incoming>>>>;

/// Sends `req` on `sender` in the connection's HTTP version, within `timeout`; an
/// HTTP/1.1 connection goes back to the pool once its response has arrived.
async fn exchange(
    pool: &MeshPool,
    endpoint: &Endpoint,
    sender: Sender,
    mut req: Request<Incoming>,
    timeout: Option<Duration>,
) -> Result<Answered, http::Error> {
    match sender {
        Sender::H2(mut h2) => {
            back_to_http2(&mut req)?;
            Ok(within(timeout, h2.try_send_request(req)).await)
        }
        Sender::H1(mut h1) => {
            for_http1(&mut req)?;
            let ready = h1.ready().await.is_ok();
            let answer = within(timeout, h1.try_send_request(req)).await;
            if ready && matches!(answer, Some(Ok(_))) {
                pool.give_back(endpoint, h1).await;
            }
            Ok(answer)
        }
    }
}

/// An HTTP/2-shaped request (absolute URI, no `Host`) as HTTP/1.1 wants it: the path and
/// query as the target, the authority as `Host`.
fn for_http1(req: &mut Request<Incoming>) -> Result<(), http::Error> {
    let uri = req.uri().clone();
    if let Some(authority) = uri.authority() {
        let host = HeaderValue::from_str(authority.as_str())?;
        req.headers_mut().insert(header::HOST, host);
    }
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    *req.uri_mut() = Uri::builder().path_and_query(target).build()?;
    *req.version_mut() = Version::HTTP_11;
    Ok(())
}

/// Undoes `for_http1` for a request that came back unsent from an HTTP/1.1 connection
/// and goes on to an HTTP/2 one: the authority back in the URI, no `Host`.
fn back_to_http2(req: &mut Request<Incoming>) -> Result<(), http::Error> {
    if req.uri().authority().is_none() {
        let host = req.headers_mut().remove(header::HOST);
        let authority = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        *req.uri_mut() = Uri::builder()
            .scheme("https")
            .authority(authority)
            .path_and_query(target)
            .build()?;
    }
    *req.version_mut() = Version::HTTP_2;
    Ok(())
}
