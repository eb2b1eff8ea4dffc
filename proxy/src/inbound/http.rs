//! The inbound direction's L7 side: after the mTLS handshake, each HTTP request from
//! the caller is authorized on its own and forwarded to the local app.
//!
//! Per request: headers with underscores and the path as the mesh's request
//! normalization says (`crate::http::normalize`) -> set `X-Forwarded-Client-Cert` ->
//! decide with the newest intentions (so an update applies to the next request on
//! every open connection) -> 403 / gRPC PERMISSION_DENIED, or forward over the pooled
//! client to the app (a request body the caller breaks on the way is its `400`). The connection stays up after a denial. What both directions share (local
//! replies, hop-by-hop headers, the request guard) is `crate::http`'s.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferrule_control::intentions::Peer;
use ferrule_control::model::{InboundConfig, Snapshot};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::authorize::authorize;
use crate::State;
use crate::http::normalize::{self, PathError};
use crate::http::{
    CallerBody, DENIED_BODY, Rebuilt, RequestError, RequestGuard, ResponseBody, XFCC, bad_body,
    is_grpc, local_reply, rebuild_uri_with, requested_authority, strip_hop_by_hop, within,
};
use crate::metrics::{self, ClientError, Direction, Layer};
use crate::trace::RequestSpan;

/// How long an idle pooled connection to the app is kept.
const APP_POOL_IDLE: Duration = Duration::from_secs(60);

/// Who is calling on one mTLS connection, worked out once at the handshake.
pub(super) struct Caller {
    pub(super) peer: Peer,
    /// The `x-forwarded-client-cert` value the app gets (see `super::xfcc`).
    pub(super) xfcc: HeaderValue,
    /// What every request's access-log record says of the connection.
    pub(super) conn: ConnFacts,
}

/// The connection's side of a request's access-log record.
pub(super) struct ConnFacts {
    pub(super) remote: SocketAddr,
    pub(super) local: Option<SocketAddr>,
    pub(super) sni: Option<String>,
    pub(super) peer_uri: String,
    pub(super) our_uri: String,
}

impl ConnFacts {
    fn fill(&self, record: &mut crate::access_log::Record, inbound: &InboundConfig) {
        record.downstream_remote = Some(self.remote);
        record.downstream_local = self.local;
        record.requested_server_name = self.sni.clone();
        record.downstream_peer_uri_san = Some(self.peer_uri.clone());
        record.downstream_local_uri_san = Some(self.our_uri.clone());
        record.upstream_cluster = Some(super::LOCAL_APP.to_owned());
        record.upstream_host = Some(inbound.local_app.clone());
    }

    /// What a request's SERVER span says of the connection and of the decision.
    fn describe(&self, span: &mut RequestSpan, decision: &'static str) {
        use crate::trace::attr;
        span.set(attr::PEER_SPIFFE_ID, self.peer_uri.clone());
        span.set(attr::INTENTION, decision);
        let ip = self.remote.ip().to_string();
        span.set(attr::CLIENT_ADDRESS, ip.clone());
        span.set(attr::CLIENT_PORT, i64::from(self.remote.port()));
        span.set(attr::PEER_ADDRESS, ip);
        span.set(attr::PEER_PORT, i64::from(self.remote.port()));
    }
}

impl Caller {
    pub(super) fn new(peer: Peer, our_uri: &str, chain: &[CertificateDer<'_>]) -> Caller {
        let value = super::xfcc::value(our_uri, chain);
        // Every byte outside printable ASCII is escaped: the value is always valid.
        let xfcc = HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""));
        let conn = ConnFacts {
            remote: SocketAddr::from(([0, 0, 0, 0], 0)),
            local: None,
            sni: None,
            peer_uri: String::new(),
            our_uri: our_uri.to_owned(),
        };
        Caller { peer, xfcc, conn }
    }
}

type AppClient = Client<HttpConnector, CallerBody>;

#[derive(Clone, Copy, PartialEq, Eq)]
struct AppKey {
    http2: bool,
    connect_timeout: Duration,
}

/// The pooled client to the local app, shared by every connection of one listener.
/// Rebuilt only when the protocol or the connect timeout changes; a new app address
/// needs nothing, as each request names it.
#[derive(Default)]
pub struct LocalApp {
    cached: Mutex<Option<(AppKey, AppClient)>>,
}

impl LocalApp {
    fn client(&self, inbound: &InboundConfig) -> AppClient {
        let key = AppKey {
            http2: inbound.protocol.is_http2_only(),
            connect_timeout: inbound.local_connect_timeout,
        };
        let mut cached = self.cached.lock();
        match &*cached {
            Some((k, client)) if *k == key => client.clone(),
            _ => {
                let client = app_client(key);
                *cached = Some((key, client.clone()));
                client
            }
        }
    }
}

fn app_client(key: AppKey) -> AppClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(key.connect_timeout));
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(APP_POOL_IDLE)
        // Bounds what a stream holds for a caller that reads nothing (`crate::http::h2`).
        .http1_max_buf_size(crate::http::h2::APP_READ_BUF)
        .http2_only(key.http2);
    builder.build(connector)
}

struct Connection {
    caller: Caller,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    app: Arc<LocalApp>,
}

/// Serves HTTP on one authenticated connection until the caller closes it, or until
/// a drain or `idle` has let its requests in flight finish. Whatever the protocol, the
/// caller may speak HTTP/1.1 or HTTP/2 (as ALPN chose, or told by the preface).
pub(super) async fn serve_connection<S>(
    stream: S,
    caller: Caller,
    state: State,
    app: Arc<LocalApp>,
    idle: impl Future<Output = ()>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let draining = state.draining;
    let conn = Arc::new(Connection {
        caller,
        snapshots: state.snapshots,
        app,
    });
    let service = service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(req, &conn).await) }
    });
    // The mesh side serves HTTP/1.1 and HTTP/2 callers whatever the protocol, as
    // Consul's Envoy does on `http2` and `grpc` listeners.
    let builder = crate::http::server(false);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    crate::http::serve_to_end(connection, &draining, idle, Direction::Inbound).await;
}

/// One request: rebuilt for the app, decided, then forwarded or refused.
async fn handle(mut req: Request<Incoming>, conn: &Connection) -> Response<ResponseBody> {
    let snapshot = conn.snapshots.borrow().clone();
    let mut guard = RequestGuard::new(Direction::Inbound, metrics::local_service(&snapshot), &req);
    let grpc = is_grpc(&req);
    guard.log(&snapshot, &req);
    let Some(inbound) = snapshot.inbound.as_ref() else {
        return guard.respond(local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no inbound configuration",
            grpc,
        ));
    };
    let settings = &snapshot.request_normalization;
    if normalize::underscores(req.headers_mut(), settings.headers_with_underscores_action) {
        tracing::debug!("inbound request refused: a header name holds an underscore");
        metrics::http_client_error(Direction::Inbound, ClientError::UnderscoreHeader);
        let reply = local_reply(
            StatusCode::BAD_REQUEST,
            "header name with underscores",
            grpc,
        );
        return guard.respond(close_after(reply, req.version()));
    }
    let uri = match rebuild_uri_with(req.uri(), "http", &inbound.local_app, settings) {
        Ok(Rebuilt::Uri(uri)) => uri,
        Ok(Rebuilt::Redirect(location)) => return guard.respond(redirect(&location, grpc)),
        Err(e) => {
            tracing::debug!(error = %e, "inbound request refused");
            let reason = match e {
                RequestError::Path(PathError::EscapedSlash) => ClientError::EscapedSlash,
                _ => ClientError::BadPath,
            };
            metrics::http_client_error(Direction::Inbound, reason);
            return guard.respond(local_reply(
                StatusCode::BAD_REQUEST,
                "bad request path",
                grpc,
            ));
        }
    };
    present_caller(&mut req, &conn.caller);
    let allowed = permitted(&req, uri.path(), &snapshot, &conn.caller);
    let decision = if allowed { "allow" } else { "deny" };
    if let Some(record) = guard.record() {
        conn.caller.conn.fill(record, inbound);
        record.decision = Some(decision);
    }
    if guard.span().is_recording() {
        conn.caller.conn.describe(guard.span(), decision);
    }
    if !allowed {
        return guard.respond(local_reply(StatusCode::FORBIDDEN, DENIED_BODY, grpc));
    }
    *req.uri_mut() = uri;
    // After the decision: the rules saw the headers as the caller sent them.
    guard.span().propagate(req.headers_mut());
    guard.respond(forward(req, inbound, &conn.app, grpc).await)
}

/// `UNESCAPE_AND_REDIRECT`: 307 to the unescaped, normalized path, as Envoy answers;
/// a gRPC client cannot follow a redirect, so it is refused instead.
fn redirect(location: &str, grpc: bool) -> Response<Either<Incoming, Full<Bytes>>> {
    let value = HeaderValue::from_str(location).ok().filter(|_| !grpc);
    let Some(value) = value else {
        metrics::http_client_error(Direction::Inbound, ClientError::EscapedSlash);
        return local_reply(StatusCode::BAD_REQUEST, "bad request path", grpc);
    };
    let mut response = local_reply(StatusCode::TEMPORARY_REDIRECT, "", false);
    response.headers_mut().insert(header::LOCATION, value);
    response
}

/// An HTTP/1.x connection is closed after this reply (Envoy closes it after a request
/// its codec refused); HTTP/2 has no such header and keeps its other streams.
fn close_after(
    mut response: Response<Either<Incoming, Full<Bytes>>>,
    version: Version,
) -> Response<Either<Incoming, Full<Bytes>>> {
    if version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// What the rules see is what the app will get: our client certificate header, and
/// the authority as `Host` whichever HTTP version carried it.
fn present_caller(req: &mut Request<Incoming>, caller: &Caller) {
    let authority = requested_authority(req);
    let headers = req.headers_mut();
    headers.insert(XFCC, caller.xfcc.clone());
    if let Some(host) = authority
        .as_deref()
        .and_then(|a| HeaderValue::from_str(a).ok())
    {
        headers.insert(header::HOST, host);
    }
}

/// Whether the newest intentions let `caller` make this request (`path` normalized).
fn permitted(req: &Request<Incoming>, path: &str, snapshot: &Snapshot, caller: &Caller) -> bool {
    let request = ferrule_control::intentions::Request {
        method: req.method().as_str(),
        path,
        headers: req.headers(),
    };
    let intentions = snapshot.intentions.as_deref();
    let verdict = authorize(Layer::L7, intentions, &caller.peer, Some(&request));
    if !verdict.allowed() {
        tracing::debug!(
            caller = %caller.peer.service,
            path,
            reason = verdict.reason(),
            intention = %verdict.governed_by(),
            permission = verdict.permission(),
            "request denied by intentions"
        );
    }
    verdict.allowed()
}

/// Sends an allowed request to the app over the pooled client, within the local
/// request timeout; the app's failures become Envoy's local replies.
async fn forward(
    mut req: Request<Incoming>,
    inbound: &InboundConfig,
    app: &LocalApp,
    grpc: bool,
) -> Response<Either<Incoming, Full<Bytes>>> {
    strip_hop_by_hop(req.headers_mut());
    if inbound.protocol.is_http2_only() {
        // `:authority` names the app; a `Host` that differed would break HTTP/2's rule.
        req.headers_mut().remove(header::HOST);
        *req.version_mut() = Version::HTTP_2;
    } else {
        *req.version_mut() = Version::HTTP_11;
    }
    let (head, body) = req.into_parts();
    let (body, fault) = CallerBody::new(body, Direction::Inbound);
    let sent = app.client(inbound).request(Request::from_parts(head, body));
    let answered = within(inbound.local_request_timeout, sent).await;
    match answered {
        Some(Ok(mut response)) => {
            strip_hop_by_hop(response.headers_mut());
            response.map(Either::Left)
        }
        // The caller's body broke on the way: its mistake, not the app's.
        Some(Err(_)) if fault.broke() => bad_body(grpc),
        Some(Err(e)) => {
            tracing::warn!(app = %inbound.local_app, error = %e, "local app request failed");
            local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error",
                grpc,
            )
        }
        None => {
            tracing::warn!(app = %inbound.local_app, "local app did not answer in time");
            local_reply(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout",
                grpc,
            )
        }
    }
}
