//! L7, what both directions share: listeners whose protocol is `http`, `http2` or
//! `grpc` are served request by request instead of spliced, the inbound side by
//! `crate::inbound`'s `http` and the outbound side by `crate::outbound`'s. This module
//! depends on neither; it holds the server both use, the local replies (Envoy's, so
//! callers cannot tell the proxies apart), hop-by-hop header handling, the URI rebuilt
//! with `normalize`'s one form of a path (the form rules are matched against), and the
//! per-request guard that owns a request's metrics, its access-log record and its span.

pub mod h2;
pub mod normalize;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::access_log::{self, RequestFacts};
use crate::metrics::{self, Direction};
use crate::trace::RequestSpan;
use ferrule_control::model::Snapshot;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio_util::sync::CancellationToken;

/// What a proxied response carries: the peer's body, or one of ours.
pub type ResponseBody = Measured<Either<Incoming, Full<Bytes>>>;

/// The body Envoy's RBAC filter answers a denied request with.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// `X-Forwarded-Client-Cert`, in Envoy's format; replaced on every request, never
/// passed through.
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// A gRPC call: answered in gRPC's terms (status in trailers) rather than HTTP's.
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The most a request's headers may take, and how many there may be: Envoy's defaults
/// (60 KiB, 100). Beyond them HTTP/1.1 gets 431 and the connection closes; HTTP/2
/// refuses the stream.
pub const MAX_HEADER_BYTES: usize = 60 * 1024;
pub const MAX_HEADERS: usize = 100;

/// How long a client may take to send a request's headers on HTTP/1.1.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The server side of an HTTP-family listener, in either direction: HTTP/1.1 or
/// HTTP/2 told apart by the connection preface, or HTTP/2 only when `http2_only`.
/// The mesh side always takes both (Consul's Envoy serves HTTP/1.1 callers on `http2`
/// and `grpc` listeners too); an app's `http2`/`grpc` upstream listener takes only
/// HTTP/2. Served with `serve_connection`, and on drain told to `graceful_shutdown`:
/// HTTP/1.1 closes after the response in flight, HTTP/2 sends GOAWAY and finishes its
/// streams.
pub fn server(http2_only: bool) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if http2_only {
        builder = builder.http2_only();
    }
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    h2::server(&mut builder.http2());
    builder
}

/// Drives one server connection to its end. Once draining, or once `idle` fires, it
/// is told to shut down gracefully: requests in flight finish, then it closes.
pub async fn serve_to_end<I, S, B>(
    connection: auto::Connection<'_, I, S, TokioExecutor>,
    draining: &CancellationToken,
    idle: impl Future<Output = ()>,
    direction: Direction,
) where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: auto::HttpServerConnExec<S::Future, B>,
{
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = draining.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = idle => {
            tracing::debug!(direction = direction.as_str(), "closing idle HTTP connection");
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(direction = direction.as_str(), error = %e, "HTTP connection ended with an error");
    }
}

/// Waits for `answer`, at most `limit` when there is one; `None` when it ran out.
pub async fn within<T>(
    limit: Option<std::time::Duration>,
    answer: impl Future<Output = T>,
) -> Option<T> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, answer).await.ok(),
        None => Some(answer.await),
    }
}

/// Envoy's mapping of an HTTP status it generates to the gRPC status it sends instead.
fn grpc_status(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502 | 503 => 14, // UNAVAILABLE
        504 => 4,              // DEADLINE_EXCEEDED
        _ => 2,                // UNKNOWN
    }
}

/// A response generated by the proxy itself. For gRPC it is "trailers-only": HTTP 200
/// with the status and message in the only header block, as Envoy sends it.
pub fn local_reply(
    status: StatusCode,
    message: &'static str,
    grpc: bool,
) -> Response<Either<Incoming, Full<Bytes>>> {
    let mut response = local_reply_only(status, message, grpc);
    response.extensions_mut().insert(LocalReply::of(message));
    response
}

/// Marks one of the proxy's own answers, for its access-log record: Envoy's response
/// flag and response code details for the same answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalReply {
    pub flags: Option<&'static str>,
    pub details: &'static str,
}

impl LocalReply {
    fn of(message: &'static str) -> LocalReply {
        let (flags, details) = match message {
            "no healthy upstream" => (Some("UH"), "no_healthy_upstream"),
            "upstream connect error" => (
                Some("UF"),
                "upstream_reset_before_response_started{connection_failure}",
            ),
            "upstream reset before response" => (
                Some("UR"),
                "upstream_reset_before_response_started{remote_reset}",
            ),
            "upstream request timeout" => (Some("UT"), "upstream_response_timeout"),
            "route not found" => (Some("NR"), "route_not_found"),
            "stream timeout" => (Some("SI"), "stream_idle_timeout"),
            DENIED_BODY => (None, "rbac_access_denied_matched_policy[none]"),
            _ => (None, "local_reply"),
        };
        LocalReply { flags, details }
    }
}

fn local_reply_only(
    status: StatusCode,
    message: &'static str,
    grpc: bool,
) -> Response<Either<Incoming, Full<Bytes>>> {
    if grpc {
        let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(
            "grpc-status",
            HeaderValue::from(u16::from(grpc_status(status))),
        );
        headers.insert("grpc-message", HeaderValue::from_static(message));
        return response;
    }
    let body = Full::new(Bytes::from_static(message.as_bytes()));
    let mut response = Response::new(Either::Right(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// Removes the headers that describe one hop's connection (RFC 9110 §7.6.1), including
/// those the `Connection` header names, before a message crosses to the next hop,
/// which may speak another HTTP version. `te: trailers` stays: gRPC needs it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    let keep_te = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !keep_te {
        headers.remove(header::TE);
    }
}

/// Why a request's URI could not be rebuilt for the next hop.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("bad request path: {0}")]
    Path(#[from] normalize::PathError),
    #[error("cannot rebuild the request URI: {0}")]
    Uri(#[from] http::Error),
}

/// `scheme://authority` + the normalized path + the query, unchanged.
pub fn rebuild_uri(uri: &Uri, scheme: &str, authority: &str) -> Result<Uri, RequestError> {
    let path = normalize::normalize(uri.path())?;
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.into_owned(),
    };
    Ok(Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path_and_query)
        .build()?)
}

/// What the inbound side makes of a request's URI under the mesh's request
/// normalization.
#[derive(Debug)]
pub enum Rebuilt {
    /// Match and forward with this URI.
    Uri(Uri),
    /// Answer 307 with this `Location` (path and query).
    Redirect(String),
}

/// As [`rebuild_uri`], with the path normalized as `settings` say
/// (`normalize::normalize_with`).
pub fn rebuild_uri_with(
    uri: &Uri,
    scheme: &str,
    authority: &str,
    settings: &ferrule_control::normalization::RequestNormalization,
) -> Result<Rebuilt, RequestError> {
    let with_query = |path: &str| match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let path = match normalize::normalize_with(uri.path(), settings)? {
        normalize::Normalized::Path(path) => path,
        normalize::Normalized::Redirect(path) => return Ok(Rebuilt::Redirect(with_query(&path))),
    };
    Ok(Rebuilt::Uri(
        Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(with_query(&path))
            .build()?,
    ))
}

/// A request body as the caller sends it, which remembers whether it broke off or was
/// malformed (a bad chunk size, fewer bytes than `Content-Length`, a reset stream) and
/// counts that as the caller's mistake (`ferrule_http_client_errors_total{reason=
/// "bad_body"}`) the moment it happens: the request's handler may be gone by then (an
/// HTTP/2 caller that resets the stream cancels it). When a request fails while its
/// body is being passed on, this tells the caller's mistake (400) from the peer's
/// (503): whatever the hop's HTTP version, the error the client returns need not name
/// the body.
pub struct CallerBody {
    inner: Incoming,
    broke: Arc<AtomicBool>,
    direction: Direction,
}

/// Whether a [`CallerBody`] broke; kept by whoever answers the request.
#[derive(Clone)]
pub struct BodyFault(Arc<AtomicBool>);

impl BodyFault {
    pub fn broke(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl CallerBody {
    pub fn new(inner: Incoming, direction: Direction) -> (CallerBody, BodyFault) {
        let broke = Arc::new(AtomicBool::new(false));
        let fault = BodyFault(broke.clone());
        let body = CallerBody {
            inner,
            broke,
            direction,
        };
        (body, fault)
    }
}

impl Body for CallerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled
            && !self.broke.swap(true, Ordering::Relaxed)
        {
            tracing::debug!(direction = self.direction.as_str(), error = %e, "the caller's request body broke");
            metrics::http_client_error(self.direction, metrics::ClientError::BadBody);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The answer to a request whose body the caller broke (already counted by its
/// [`CallerBody`]), if anyone is still there to read it.
pub fn bad_body(grpc: bool) -> Response<Either<Incoming, Full<Bytes>>> {
    local_reply(StatusCode::BAD_REQUEST, "bad request body", grpc)
}

/// The authority the client asked for: the URI's (HTTP/2, absolute form) or `Host`.
pub fn requested_authority<B>(req: &Request<B>) -> Option<String> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.as_str().to_owned());
    }
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    // Only a well-formed authority is carried on; anything else is dropped.
    host.parse::<http::uri::Authority>()
        .ok()
        .map(|a| a.as_str().to_owned())
}

/// Owns one request's metrics, its access-log record and its span: when dropped, with
/// the response fully sent or the exchange abandoned, it counts the request under its
/// status class, records how long it took, writes the request's debug line, and lets
/// the record (if logging is on) be written and the span (if tracing is on) end.
pub struct RequestGuard {
    direction: Direction,
    /// The `upstream` label of the request's metrics (`metrics::http_request`).
    upstream: String,
    started: Instant,
    method: http::Method,
    path: String,
    status: Option<StatusCode>,
    log: access_log::Pending,
    span: RequestSpan,
    /// Response body bytes sent so far.
    sent: u64,
}

impl RequestGuard {
    pub fn new<B>(direction: Direction, upstream: String, req: &Request<B>) -> RequestGuard {
        RequestGuard {
            direction,
            upstream,
            started: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            status: None,
            log: access_log::Pending::off(),
            span: RequestSpan::start(direction, req),
            sent: 0,
        }
    }

    /// The request's span, to add what is learnt and to pass its context on.
    pub fn span(&mut self) -> &mut RequestSpan {
        &mut self.span
    }

    /// Starts the request's access-log record (when the snapshot has logging on) with
    /// what the request says.
    pub fn log<B>(&mut self, snapshot: &Snapshot, req: &Request<B>) {
        self.log = access_log::Pending::start(snapshot, access_log::Kind::Request);
        if let Some(record) = self.log.record() {
            record.request = Some(RequestFacts {
                method: req.method().to_string(),
                path: req
                    .uri()
                    .path_and_query()
                    .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned()),
                authority: requested_authority(req),
                scheme: req.uri().scheme_str().and_then(|s| match s {
                    "https" => Some("https"),
                    "http" => Some("http"),
                    _ => None,
                }),
                headers: req.headers().clone(),
            });
            record.protocol = Some(match req.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            });
            record.bytes_received = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }

    /// The access-log record, to fill in; `None` when logging is off.
    pub fn record(&mut self) -> Option<&mut access_log::Record> {
        self.log.record()
    }

    /// Wraps the response body so that the guard lives until the body is done.
    pub fn respond<B>(mut self, response: Response<B>) -> Response<Measured<B>> {
        self.status = Some(response.status());
        let local = response.extensions().get::<LocalReply>();
        self.span
            .respond(response.status(), local.and_then(|l| l.flags));
        if let Some(record) = self.log.record() {
            record.response_code = response.status().as_u16();
            record.response_headers = Some(response.headers().clone());
            match response.extensions().get::<LocalReply>() {
                Some(local) => {
                    record.response_flags = local.flags;
                    record.response_code_details = Some(local.details);
                }
                None => record.response_code_details = Some("via_upstream"),
            }
        }
        response.map(|body| Measured {
            inner: body,
            guard: self,
        })
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let status = self.status.map_or(0, |s| s.as_u16());
        metrics::http_request(self.direction, &self.upstream, status, self.started);
        tracing::debug!(
            target: "ferrule::access",
            direction = self.direction.as_str(),
            method = %self.method,
            path = %self.path,
            status,
            duration_ms = self.started.elapsed().as_millis() as u64,
            "request done"
        );
        let sent = self.sent;
        if let Some(record) = self.log.record() {
            record.bytes_sent = sent;
            if status == 0 {
                // Envoy's flag for a downstream that went away before the response.
                record.response_flags = Some("DC");
            }
        }
    }
}

/// A response body that holds its request's guard.
pub struct Measured<B> {
    inner: B,
    guard: RequestGuard,
}

impl<B: Body + Unpin> Body for Measured<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let Some(data) = frame.data_ref()
        {
            self.guard.sent += bytes::Buf::remaining(data) as u64;
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_do_not_cross() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-end-to-end"], "kept");

        let mut grpc = HeaderMap::new();
        grpc.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut grpc);
        assert_eq!(grpc[header::TE], "trailers");
    }

    #[test]
    fn uris_are_rebuilt_with_the_normalized_path_and_the_query_untouched() {
        let uri: Uri = "/a/../%61dmin?x=%2e%2e&y".parse().unwrap();
        let got = rebuild_uri(&uri, "http", "127.0.0.1:8080").unwrap();
        assert_eq!(got.to_string(), "http://127.0.0.1:8080/admin?x=%2e%2e&y");
        let above: Uri = "/../etc/passwd".parse().unwrap();
        assert!(matches!(
            rebuild_uri(&above, "http", "app"),
            Err(RequestError::Path(normalize::PathError::AboveRoot))
        ));
    }

    #[test]
    fn denials_look_like_envoys() {
        let http = local_reply(StatusCode::FORBIDDEN, DENIED_BODY, false);
        assert_eq!(http.status(), 403);
        let grpc = local_reply(StatusCode::FORBIDDEN, DENIED_BODY, true);
        assert_eq!(grpc.status(), 200);
        assert_eq!(grpc.headers()["grpc-status"], "7");
        assert_eq!(grpc.headers()["grpc-message"], DENIED_BODY);
        let unavailable = local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream", true);
        assert_eq!(unavailable.headers()["grpc-status"], "14");
    }
}
