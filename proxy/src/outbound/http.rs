//! The outbound direction's L7 side: an HTTP-family upstream listener routes each of
//! the app's requests as the upstream's routing says and carries it over pooled mTLS
//! connections (`pool`) to an instance of the chosen target.
//!
//! The app may speak HTTP/1.1 or HTTP/2 with prior knowledge (`http`), or only HTTP/2
//! (`http2`, `grpc`). Each request gets a normalized path and loses the headers that
//! only describe its hop and any client-certificate header the app made up. Then, per
//! request and on the routing the request started with (a routing change applies to
//! the requests that come after it): the first matching route, a split drawn by weight,
//! the split's cluster and its active target (the first with an instance), the
//! route's rewrite and header changes, and an instance picked by the cluster's policy.
//! A dial that fails, or a pooled connection that closed before the request went out,
//! moves the request on to the next instance, and, when no instance of the target can
//! be dialled, to the cluster's next target. A request that went out is sent again
//! only as the route's retry policy says (`retry`), with its body replayed (`body`),
//! preferably to another instance, all within the request timeout.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use ferrule_control::model::{Protocol, UpstreamConfig};
use ferrule_control::routing::{Cluster, LbPolicy, Route, Routing, Split, Target};
use http::header;
use http::request::Parts;
use http::{Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Shared;
use super::affinity::{self, Peer};
use super::body::{Activity, MeshBody, OutBody, Recorder};
use super::dial::DialTo;
use super::retry::{self, Failure};
use super::route;
use crate::State;
use crate::balance::Pick;
use crate::balance::least::Started;
use crate::http::{
    BodyFault, CallerBody, Measured, RequestError, RequestGuard, XFCC, bad_body, is_grpc,
    local_reply, rebuild_uri, requested_authority, strip_hop_by_hop, within,
};
use crate::limits::Watched;
use crate::metrics::{self, Attempt, Direction};
use crate::tls::TlsState;
use crate::trace::{RequestSpan, attr};

/// Serves one app connection until the app closes it, or until a drain or `idle` has
/// let its requests in flight finish.
pub(super) async fn serve_connection(
    app: Watched<TcpStream>,
    peer: Peer,
    protocol: Protocol,
    shared: Arc<Shared>,
    state: State,
    idle: impl Future<Output = ()>,
) {
    let draining = state.draining.clone();
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(req, &shared, peer, &state).await) }
    });
    let builder = crate::http::server(protocol.is_http2_only());
    let connection = builder.serve_connection(TokioIo::new(app), service);
    crate::http::serve_to_end(connection, &draining, idle, Direction::Outbound).await;
}

/// One request from the app: rebuilt for the mesh, routed, and sent.
async fn handle(
    mut req: Request<Incoming>,
    shared: &Shared,
    peer: Peer,
    state: &State,
) -> Response<Measured<OutBody>> {
    let mut guard = RequestGuard::new(Direction::Outbound, shared.name.clone(), &req);
    let grpc = is_grpc(&req);
    let snapshot = state.snapshots.borrow().clone();
    guard.log(&snapshot, &req);
    if let Some(record) = guard.record() {
        record.downstream_remote = Some(peer.remote);
        record.downstream_local = Some(peer.local);
    }
    let Some(upstream) = snapshot.upstream(&shared.name) else {
        return guard.respond(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream",
            grpc,
        ));
    };
    if let Err(e) = for_the_mesh(&mut req, &upstream.name) {
        tracing::debug!(upstream = %upstream.name, error = %e, "request from the app refused");
        return guard.respond(reply(StatusCode::BAD_REQUEST, "bad request path", grpc));
    }
    let tls = state.tls.borrow().clone();
    let ctx = Ctx {
        upstream,
        routing: &upstream.routing,
        shared,
        tls: &tls,
        grpc,
        via: guard.record().is_some() || guard.span().is_recording(),
    };
    if guard.span().is_recording() {
        guard.span().set(attr::UPSTREAM, upstream.name.clone());
    }
    let response = route_and_send(req, &ctx, peer, guard.span()).await;
    if let Some(via) = response.extensions().get::<Via>() {
        if let Some(record) = guard.record() {
            record.upstream_host = Some(via.host.clone());
            record.upstream_cluster = Some(via.cluster.clone());
            record.upstream_peer_uri_san = Some(via.peer.clone());
        }
        via.describe(guard.span());
    }
    guard.respond(response)
}

/// Which instance answered a request, for its access-log record and its span (a
/// response extension: it never leaves the process).
#[derive(Clone)]
struct Via {
    host: String,
    /// The target's server name: the cluster's name in Consul's Envoy configuration.
    cluster: String,
    peer: String,
}

impl Via {
    /// The CLIENT span's view of the instance: where it is, who it proved to be.
    fn describe(&self, span: &mut RequestSpan) {
        if !span.is_recording() {
            return;
        }
        span.set(attr::CLUSTER, self.cluster.clone());
        span.set(attr::PEER_SPIFFE_ID, self.peer.clone());
        if let Ok(addr) = self.host.parse::<std::net::SocketAddr>() {
            span.set(attr::PEER_ADDRESS, addr.ip().to_string());
            span.set(attr::PEER_PORT, i64::from(addr.port()));
        } else {
            span.set(attr::PEER_ADDRESS, self.host.clone());
        }
    }
}

/// What every step of one request reads.
struct Ctx<'a> {
    upstream: &'a UpstreamConfig,
    /// The routing the request started with, kept to its end.
    routing: &'a Routing,
    shared: &'a Shared,
    tls: &'a TlsState,
    grpc: bool,
    /// The request has an access-log record or a recording span: say which instance
    /// answered.
    via: bool,
}

/// What the route decided for one request.
struct Plan<'a> {
    cluster: &'a Cluster,
    hash: Option<u64>,
    retry: retry::Policy,
    /// The route's idle timeout, and the activity it watches.
    idle: Option<(Duration, Arc<Activity>)>,
}

/// Routes `req`, sends it with our span's context, and gives the answer the route's
/// response header changes; the span learns the target.
async fn route_and_send(
    mut req: Request<Incoming>,
    ctx: &Ctx<'_>,
    peer: Peer,
    span: &mut RequestSpan,
) -> Response<OutBody> {
    let name = &ctx.upstream.name;
    let Some((route, split, cluster)) = destination(ctx.routing, &req, &ctx.shared.rolls) else {
        metrics::upstream_request(name, "", StatusCode::NOT_FOUND.as_u16());
        return reply(StatusCode::NOT_FOUND, "route not found", ctx.grpc);
    };
    let affinity = affinity::of(&cluster.load_balancer, &req, peer);
    route::change_both(
        &split.request_headers,
        &route.request_headers,
        req.headers_mut(),
    );
    if let Some(rewrite) = &route.prefix_rewrite {
        route::rewrite_path(&route.matcher, rewrite, &mut req);
    }
    // Routed on the app's headers; what goes on names our span as the parent.
    span.propagate(req.headers_mut());
    let plan = Plan {
        cluster,
        hash: affinity.hash,
        retry: retry::Policy::new(&route.retry),
        idle: route.idle_timeout.map(|limit| (limit, Activity::new())),
    };
    let timeout = route
        .request_timeout
        .or(cluster.request_timeout)
        .or(ctx.upstream.request_timeout);
    let mut target = None;
    let mut response = match within(timeout, forward(req, ctx, &plan, &mut target)).await {
        Some(response) => response,
        None => reply(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream request timeout",
            ctx.grpc,
        ),
    };
    let headers = response.headers_mut();
    route::change_both(&split.response_headers, &route.response_headers, headers);
    if let Some(cookie) = affinity.set_cookie {
        headers.append(header::SET_COOKIE, cookie);
    }
    let status = response.status().as_u16();
    metrics::upstream_request(name, target.unwrap_or(""), status);
    if let Some(target) = target
        && span.is_recording()
    {
        span.set(attr::TARGET, target.to_owned());
    }
    response
}

/// The route `req` takes, the split drawn, and that split's cluster.
fn destination<'r, B>(
    routing: &'r Routing,
    req: &Request<B>,
    rolls: &route::Rolls,
) -> Option<(&'r Route, &'r Split, &'r Cluster)> {
    let route = route::choose(routing, req)?;
    let split = route::split(route, rolls.next())?;
    let cluster = routing.clusters.get(split.cluster)?;
    Some((route, split, cluster))
}

/// Sends `req` and tries again as the retry policy says; `target` is kept up to date
/// with the target of the latest try (read even when the timeout cut this short).
async fn forward<'a>(
    req: Request<Incoming>,
    ctx: &'a Ctx<'_>,
    plan: &'a Plan<'_>,
    target: &mut Option<&'a str>,
) -> Response<OutBody> {
    let activity = plan.idle.as_ref().map(|(_, a)| a.clone());
    let (head, body) = req.into_parts();
    let (body, fault) = CallerBody::new(body, Direction::Outbound);
    if !plan.retry.may_retry() {
        let req = Request::from_parts(head, MeshBody::stream(body, activity));
        let outcome = try_once(req, ctx, plan, &[], target).await;
        return outcome.respond_or_blame(ctx, plan, &fault);
    }
    let (mut body, recorder) = MeshBody::recorded(body, activity);
    let mut tried: Vec<String> = Vec::new();
    let mut retries = 0;
    loop {
        let outcome = try_once(same_request(&head, body), ctx, plan, &tried, target).await;
        let Some((condition, next)) = again(&outcome, plan, retries, &recorder) else {
            return outcome.respond_or_blame(ctx, plan, &fault);
        };
        metrics::upstream_retry(&ctx.upstream.name, target.unwrap_or(""), condition.label());
        tracing::debug!(upstream = %ctx.upstream.name, reason = condition.label(), retry = retries + 1, "retrying request");
        tried.extend(outcome.addr().map(str::to_owned));
        drop(outcome);
        retries += 1;
        tokio::time::sleep(retry::backoff(retries)).await;
        body = next;
    }
}

/// Whether the request goes again after `outcome`: the condition met and the body of
/// the next try, if retries are left and the body can be replayed.
fn again(
    outcome: &Outcome,
    plan: &Plan<'_>,
    retries: u32,
    recorder: &Recorder,
) -> Option<(retry::Condition, MeshBody)> {
    if retries >= plan.retry.num_retries {
        return None;
    }
    let condition = match outcome {
        Outcome::Answered { response, .. } => plan
            .retry
            .on_response(response.status(), response.headers()),
        Outcome::Failed { failure, .. } => plan.retry.on_failure(*failure),
        Outcome::NoInstance | Outcome::Idle | Outcome::Invalid => None,
    }?;
    let activity = plan.idle.as_ref().map(|(_, a)| a.clone());
    Some((condition, recorder.again(activity)?))
}

/// Another try's request: the same head, the next body.
fn same_request(head: &Parts, body: MeshBody) -> Request<MeshBody> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req
}

/// How one try ended.
enum Outcome {
    Answered {
        response: Response<Incoming>,
        addr: String,
        started: Option<Started>,
        /// Boxed: only a logged request has one.
        via: Option<Box<Via>>,
    },
    Failed {
        failure: Failure,
        addr: Option<String>,
    },
    /// The cluster has no instance at all: nothing was tried, and nothing is retried
    /// (as Envoy answers "no healthy upstream" before any try).
    NoInstance,
    /// Nothing moved for the route's idle timeout before the response came.
    Idle,
    /// Not expressible in the hop's HTTP version.
    Invalid,
}

impl Outcome {
    fn addr(&self) -> Option<&str> {
        match self {
            Outcome::Answered { addr, .. } => Some(addr),
            Outcome::Failed { addr, .. } => addr.as_deref(),
            Outcome::NoInstance | Outcome::Idle | Outcome::Invalid => None,
        }
    }

    /// The answer to the app, unless the try failed because the app's own request body
    /// broke: that is the app's mistake (400), not the upstream's.
    fn respond_or_blame(
        self,
        ctx: &Ctx<'_>,
        plan: &Plan<'_>,
        fault: &BodyFault,
    ) -> Response<OutBody> {
        let failed = !matches!(self, Outcome::Answered { .. });
        if failed && fault.broke() {
            tracing::debug!(upstream = %ctx.upstream.name, "request refused: the app's request body broke off or was malformed");
            return bad_body(ctx.grpc).map(OutBody::new);
        }
        self.respond(ctx, plan)
    }

    /// The answer to the app.
    fn respond(self, ctx: &Ctx<'_>, plan: &Plan<'_>) -> Response<OutBody> {
        let grpc = ctx.grpc;
        match self {
            Outcome::Answered {
                mut response,
                started,
                via,
                ..
            } => {
                strip_hop_by_hop(response.headers_mut());
                if let Some(via) = via {
                    response.extensions_mut().insert(*via);
                }
                response.map(|body| {
                    let body = OutBody::new(Either::Left(body)).in_flight(started);
                    match &plan.idle {
                        Some((limit, activity)) => body.idle(*limit, activity.clone()),
                        None => body,
                    }
                })
            }
            Outcome::Failed {
                failure: Failure::Reset { .. },
                ..
            } => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream reset before response",
                grpc,
            ),
            Outcome::Failed {
                failure: Failure::ConnectFailure,
                ..
            } => {
                tracing::warn!(upstream = %ctx.upstream.name, "no endpoint could be reached");
                reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream", grpc)
            }
            Outcome::NoInstance => {
                metrics::outbound_attempt(&ctx.upstream.name, "", Attempt::NoEndpoints);
                reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream", grpc)
            }
            Outcome::Idle => reply(StatusCode::REQUEST_TIMEOUT, "stream timeout", grpc),
            Outcome::Invalid => reply(StatusCode::BAD_REQUEST, "bad request", grpc),
        }
    }
}

/// One try: the cluster's targets in order from the active one (the next only when no
/// instance of this one could be dialled).
async fn try_once<'a>(
    mut req: Request<MeshBody>,
    ctx: &'a Ctx<'_>,
    plan: &'a Plan<'_>,
    tried: &[String],
    last_target: &mut Option<&'a str>,
) -> Outcome {
    if plan.cluster.active_target().is_none() {
        return Outcome::NoInstance;
    }
    let live = plan
        .cluster
        .targets
        .iter()
        .filter(|t| !t.endpoints.is_empty());
    for target in live {
        *last_target = Some(target.id.as_str());
        match try_target(req, ctx, plan, target, tried).await {
            Ok(outcome) => return outcome,
            Err(unsent) => req = unsent,
        }
    }
    Outcome::Failed {
        failure: Failure::ConnectFailure,
        addr: None,
    }
}

/// The instances of `target` in its balancer's order until one takes the request; the
/// request back if none could be dialled.
async fn try_target(
    mut req: Request<MeshBody>,
    ctx: &Ctx<'_>,
    plan: &Plan<'_>,
    target: &Target,
    tried: &[String],
) -> Result<Outcome, Request<MeshBody>> {
    let balancer = ctx.shared.balancers.target(ctx.routing, &target.id);
    let to = DialTo {
        upstream: &ctx.upstream.name,
        protocol: ctx.upstream.protocol,
        target,
        connect_timeout: plan.cluster.connect_timeout,
    };
    let pick = Pick {
        lb: &plan.cluster.load_balancer,
        hash: plan.hash,
        tried,
    };
    let least = matches!(
        plan.cluster.load_balancer.policy,
        LbPolicy::LeastRequest { .. }
    );
    let pool = &ctx.shared.pool;
    for i in balancer.order(&target.endpoints, &pick) {
        let endpoint = &target.endpoints[i];
        let ejections = &balancer.ejections;
        let Some(sender) = pool
            .sender(&to, endpoint, ejections, ctx.routing, ctx.tls)
            .await
        else {
            continue;
        };
        let started = least.then(|| balancer.start(&endpoint.addr));
        let exchange = pool.exchange(endpoint, &target.sni, sender, req);
        let answered = match &plan.idle {
            Some((limit, activity)) => tokio::select! {
                answered = exchange => answered,
                () = activity.idle_for(*limit) => return Ok(Outcome::Idle),
            },
            None => exchange.await,
        };
        let addr = endpoint.addr.clone();
        let mut e = match answered {
            Ok(Ok(response)) => {
                let via = ctx.via.then(|| {
                    Box::new(Via {
                        host: addr.clone(),
                        cluster: target.sni.clone(),
                        peer: endpoint.identity.to_uri(),
                    })
                });
                return Ok(Outcome::Answered {
                    response,
                    addr,
                    started,
                    via,
                });
            }
            Ok(Err(e)) => e,
            Err(e) => {
                tracing::debug!(upstream = %ctx.upstream.name, error = %e, "request not expressible in the hop's HTTP version");
                return Ok(Outcome::Invalid);
            }
        };
        let Some(unsent) = e.take_message() else {
            tracing::debug!(upstream = %ctx.upstream.name, endpoint = %addr, error = %e.error(), "request failed");
            let refused = refused_stream(e.error());
            let failure = Failure::Reset { refused };
            let addr = Some(addr);
            return Ok(Outcome::Failed { failure, addr });
        };
        // Never sent: the pooled connection had just closed. Try the next one.
        req = unsent;
        pool.forget(endpoint, &target.sni).await;
    }
    Err(req)
}

/// Whether the server refused the stream (HTTP/2 `REFUSED_STREAM`): it did not
/// process the request.
fn refused_stream(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = cause.source();
    }
    false
}

/// One of the proxy's own answers.
fn reply(status: StatusCode, message: &'static str, grpc: bool) -> Response<OutBody> {
    local_reply(status, message, grpc).map(OutBody::new)
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
