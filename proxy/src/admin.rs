//! The admin listener: `/metrics` (Prometheus text; also at Envoy's
//! `/stats/prometheus`, so scrape configs written for Envoy keep working), `/ready`,
//! `/config`, and `/logging` (Envoy's verb: `GET` says the log filter in force,
//! `POST /logging?level=debug` changes it); and the public Prometheus listener, which
//! answers the two metrics paths only.
//!
//! It is bound before anything else, so `/ready` answers 503 from the first moment. What
//! it reports on is a [`Report`]: a sidecar's ([`Sidecar`]: ready only when the snapshot
//! is complete, every listener is bound (as `listeners::Listening` reports), the leaf is
//! valid now and the TLS configs are built) or a mesh gateway's (`gateway`); a 503 lists
//! every reason, one per line (`readiness`). It accepts through the same loop as the
//! other listeners, without their limit or drain tracking.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use ferrule_control::model::Snapshot;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::listeners::{Accepting, Listening, accept};
use crate::readiness::Readiness;

/// What `/ready` and `/config` answer from.
pub trait Report: Send + Sync + 'static {
    /// Ready or not now, and every reason why not.
    fn readiness(&self) -> Readiness;
    /// The configuration in force, as pretty JSON (no secrets).
    fn config(&self) -> serde_json::Result<String>;
}

#[derive(Clone)]
pub struct Admin {
    pub metrics: PrometheusHandle,
    pub report: Arc<dyn Report>,
}

/// A sidecar's state: its snapshot, its listeners and its TLS configs.
pub struct Sidecar {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub listening: Listening,
    /// The configs handshakes use: built from the snapshot by a task of their own, so
    /// a snapshot with a leaf can be there a moment before they are.
    pub tls: watch::Receiver<Arc<crate::tls::TlsState>>,
}

impl Report for Sidecar {
    fn readiness(&self) -> Readiness {
        Readiness::now(&self.listening, &self.tls)
    }

    fn config(&self) -> serde_json::Result<String> {
        let snapshot = self.snapshots.borrow().clone();
        serde_json::to_string_pretty(&*snapshot)
    }
}

/// Serves until the process ends (the caller aborts it), any number of connections at
/// once, none of them tracked for a drain: `/ready` must answer while draining.
pub async fn serve(listener: TcpListener, admin: Admin) {
    let accepting = Accepting {
        limit: None,
        cancel: CancellationToken::new(),
        tasks: None,
    };
    let failed = |e: &std::io::Error| tracing::warn!(error = %e, "admin accept failed");
    accept(listener, accepting, failed, |tcp, _| {
        serve_connection(tcp, admin.clone())
    })
    .await;
}

/// Serves `/metrics` and `/stats/prometheus`, and nothing else, until `cancel`: the
/// listener Consul's `envoy_prometheus_bind_addr` asks for, which may face the network.
pub async fn serve_prometheus(
    listener: TcpListener,
    metrics: PrometheusHandle,
    cancel: CancellationToken,
) {
    let accepting = Accepting {
        limit: None,
        cancel,
        tasks: None,
    };
    let failed = |e: &std::io::Error| tracing::warn!(error = %e, "prometheus accept failed");
    accept(listener, accepting, failed, move |tcp, _| {
        let metrics = metrics.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let metrics = metrics.clone();
            async move { Ok::<_, Infallible>(route_prometheus(&metrics, &req)) }
        });
        serve_http1(tcp, service)
    })
    .await;
}

async fn serve_connection(tcp: TcpStream, admin: Admin) {
    let service = service_fn(move |req| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(route(&admin, &req)) }
    });
    serve_http1(tcp, service).await;
}

async fn serve_http1<S>(tcp: TcpStream, service: S)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Full<Bytes>>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
{
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), service)
        .await
    {
        tracing::debug!(error = %e, "admin connection ended");
    }
}

/// The paths Prometheus scrapes: ours, and Envoy's.
const METRICS_PATHS: [&str; 2] = ["/metrics", "/stats/prometheus"];

fn route_prometheus(metrics: &PrometheusHandle, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    if METRICS_PATHS.contains(&req.uri().path()) {
        prometheus_text(metrics)
    } else {
        text(
            StatusCode::NOT_FOUND,
            "try /metrics or /stats/prometheus\n".into(),
        )
    }
}

fn prometheus_text(metrics: &PrometheusHandle) -> Response<Full<Bytes>> {
    let mut resp = text(StatusCode::OK, metrics.render());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

fn route(admin: &Admin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/logging" {
        return logging(req.method(), req.uri().query());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        path if METRICS_PATHS.contains(&path) => prometheus_text(&admin.metrics),
        "/ready" => match admin.report.readiness() {
            Readiness::Ready => text(StatusCode::OK, "ready\n".into()),
            Readiness::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into()),
            Readiness::NotReady(causes) => {
                let mut body = String::from("not ready:\n");
                for cause in causes {
                    body.push_str("- ");
                    body.push_str(&cause);
                    body.push('\n');
                }
                text(StatusCode::SERVICE_UNAVAILABLE, body)
            }
        },
        "/config" => match admin.report.config() {
            Ok(json) => {
                let mut resp = text(StatusCode::OK, json + "\n");
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                resp
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "try /metrics, /stats/prometheus, /ready, /config or /logging\n".into(),
        ),
    }
}

/// `/logging`, as Envoy's admin answers it: `GET` (or a `POST` without parameters)
/// says the filter in force; `POST ?level=<LEVEL>` puts a level (Envoy's names: trace,
/// debug, info, warning or warn, error, critical, off) or a whole filter
/// (`info,ferrule=debug`) in force. A level that is not one is a 400 naming it, and
/// the filter in force stays.
fn logging(method: &Method, query: Option<&str>) -> Response<Full<Bytes>> {
    let params: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = method == Method::GET || method == Method::HEAD;
    if !get && method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET or POST only\n".into());
    }
    if params.is_empty() {
        return match crate::logging::current() {
            Some(filter) => text(StatusCode::OK, format!("active filter: {filter}\n")),
            None => text(StatusCode::NOT_FOUND, "no log installed\n".into()),
        };
    }
    if get {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST /logging?level=<LEVEL> changes the level\n".into(),
        );
    }
    let level = match params.as_slice() {
        [(key, level)] if key == "level" => level,
        _ => {
            let names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown parameters {names:?}: POST /logging?level=<LEVEL> (trace, debug, info, warning, error, critical, off)\n"
                ),
            );
        }
    };
    match crate::logging::set(level) {
        Ok(filter) => {
            tracing::info!(filter = %filter, "log filter changed through the admin listener");
            text(StatusCode::OK, format!("active filter: {filter}\n"))
        }
        Err(e @ crate::logging::SetError::Filter(_)) => {
            text(StatusCode::BAD_REQUEST, format!("{e}\n"))
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body(resp: Response<Full<Bytes>>) -> (StatusCode, String) {
        let status = resp.status();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let bytes = runtime
            .block_on(resp.into_body().collect())
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[test]
    fn a_level_that_is_not_one_is_named_in_a_400() {
        let (status, text) = body(logging(&Method::POST, Some("level=verbose")));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("\"verbose\" is not a log level"), "{text}");
        let (status, text) = body(logging(&Method::POST, Some("levle=debug")));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("levle"), "{text}");
    }

    #[test]
    fn a_change_takes_a_post() {
        let (status, _) = body(logging(&Method::GET, Some("level=debug")));
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        let (status, _) = body(logging(&Method::DELETE, None));
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }
}
