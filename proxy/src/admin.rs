//! The admin listener: `/metrics` (Prometheus text), `/ready`, `/config`.
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

async fn serve_connection(tcp: TcpStream, admin: Admin) {
    let service = service_fn(move |req| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(route(&admin, &req)) }
    });
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), service)
        .await
    {
        tracing::debug!(error = %e, "admin connection ended");
    }
}

fn route(admin: &Admin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut resp = text(StatusCode::OK, admin.metrics.render());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
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
            "try /metrics, /ready or /config\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}
