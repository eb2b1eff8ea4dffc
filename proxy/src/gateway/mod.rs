//! `ferrule gateway`: a Consul mesh gateway. It routes each connection on the server
//! name of its TLS ClientHello without terminating TLS, so mutual TLS stays end to end
//! between the sidecars: a name in its own datacenter goes to a healthy instance of the
//! service (or of its subset), a name in another datacenter to that datacenter's mesh
//! gateways; see `docs/consul-semantics.md#mesh-gateways`.
//!
//! `sni` reads the ClientHello (bounded in size and time), `route` maps the name to
//! addresses over the view the source publishes (`ferrule_control::gateway`) and turns
//! the round robin, `conn` serves one connection, `listen` keeps the LAN and WAN
//! listeners bound. This module runs them: the admin listener (`/metrics`, `/ready`,
//! `/config` with the gateway's view), the listeners following the registration, and
//! the drain on shutdown. The accept loop, connection limits, idle timeouts and splice
//! are the sidecar's (`listeners`, `limits`, `splice`).

mod conn;
mod listen;
pub mod route;
pub mod sni;

use std::sync::Arc;
use std::time::Duration;

use ferrule_control::gateway::GatewayView;
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::admin::{self, Report};
use crate::listeners::BindError;
use crate::readiness::{self, Readiness};

/// How long a listener that could not be bound waits before the next try.
const RETRY_BIND: Duration = Duration::from_secs(2);

/// Why the gateway stopped before a shutdown asked it to.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The registration is no mesh gateway: a start-up error (exit 2).
    #[error("{0}")]
    Refused(String),
    /// A listener could not be bound before the gateway was first ready (exit 1).
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// What every connection task reads.
#[derive(Clone)]
struct Shared {
    views: watch::Receiver<Arc<GatewayView>>,
    rotation: Arc<route::Rotation>,
    connections: TaskTracker,
}

/// The view the listeners were last reconciled to, the listeners that are not bound,
/// and whether the gateway is draining: what `/ready` and `/config` answer from.
#[derive(Default)]
struct Status {
    view: Arc<GatewayView>,
    unbound: Vec<String>,
    draining: bool,
}

#[derive(Clone, Default)]
struct StatusReport(Arc<Mutex<Status>>);

impl Report for StatusReport {
    fn readiness(&self) -> Readiness {
        let status = self.0.lock();
        readiness_of(&status)
    }

    fn config(&self) -> serde_json::Result<String> {
        let view = self.0.lock().view.clone();
        serde_json::to_string_pretty(&*view)
    }
}

/// Ready once the registration is read, its listeners are bound and the datacenter and
/// trust domain are known; not ready with every reason why not.
fn readiness_of(status: &Status) -> Readiness {
    if status.draining {
        return Readiness::Draining;
    }
    let view = &status.view;
    let mut causes = status.unbound.clone();
    let missing = view.missing();
    if !missing.is_empty() {
        if view.blocked.is_empty() {
            causes.push(format!("waiting for {}", missing.join(", ")));
        } else {
            causes.extend(view.blocked.iter().cloned());
        }
    }
    if causes.is_empty() {
        Readiness::Ready
    } else {
        Readiness::NotReady(causes)
    }
}

/// Runs the gateway on the views a source publishes until `shutdown` resolves; then
/// drains: `/ready` turns 503, the listeners close, and open connections get up to
/// `drain_timeout` to end. The admin listener is bound by the caller, so `/ready`
/// answers 503 from the first moment.
pub async fn serve(
    admin_listener: TcpListener,
    views: watch::Receiver<Arc<GatewayView>>,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) -> Result<(), GatewayError> {
    let report = StatusReport::default();
    let _admin = AbortOnDropHandle::new(tokio::spawn(admin::serve(
        admin_listener,
        admin::Admin {
            metrics: metrics.clone(),
            report: Arc::new(report.clone()),
        },
    )));
    let reminder = report.clone();
    let _remind = AbortOnDropHandle::new(tokio::spawn(readiness::remind(move || {
        reminder.readiness()
    })));
    let shared = Shared {
        views,
        rotation: Arc::default(),
        connections: TaskTracker::new(),
    };
    tokio::select! {
        result = run(shared.clone(), report.clone(), metrics) => return result,
        () = shutdown => {}
    }
    // The listeners went with `run`: nothing new is accepted from here on.
    report.0.lock().draining = true;
    // Gateway connections are spliced bytes: nothing to tell them, they may finish.
    crate::drain(
        &shared.connections,
        &CancellationToken::new(),
        drain_timeout,
    )
    .await;
    Ok(())
}

/// Keeps the listeners equal to what each new view asks for. Until the gateway was
/// first ready, a listener that cannot be bound (or a registration that is no mesh
/// gateway) ends the run; after that, a bind failure is warned about once, retried,
/// and named by `/ready`. The public Prometheus listener's failure never ends it
/// (`docs/consul-semantics.md#prometheus`).
async fn run(
    mut shared: Shared,
    report: StatusReport,
    metrics: PrometheusHandle,
) -> Result<(), GatewayError> {
    let mut listeners = listen::Listeners::default();
    let mut prometheus = crate::listeners::PrometheusSlot::default();
    let mut started = false;
    let mut failing: Vec<String> = Vec::new();
    loop {
        let view = shared.views.borrow_and_update().clone();
        if let Some(why) = &view.refused {
            return Err(GatewayError::Refused(why.clone()));
        }
        let mut errors = listeners.reconcile(view.gateway.as_ref(), &shared).await;
        if !started && !errors.is_empty() {
            return Err(errors.remove(0).into());
        }
        let wanted = view.gateway.as_ref().and_then(|g| g.prometheus);
        if let Err(e) = prometheus.reconcile(wanted, &metrics).await {
            errors.push(e);
        }
        started |= view.missing().is_empty();
        let now: Vec<String> = errors.iter().map(ToString::to_string).collect();
        for e in now.iter().filter(|e| !failing.contains(e)) {
            tracing::warn!(error = %e, "gateway listener not bound; retrying");
        }
        failing.clone_from(&now);
        {
            let mut status = report.0.lock();
            status.view = view;
            status.unbound = now;
        }
        let retry = async {
            if errors.is_empty() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(RETRY_BIND).await;
        };
        tokio::select! {
            changed = shared.views.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            () = retry => {}
        }
    }
}

#[cfg(test)]
mod tests;
