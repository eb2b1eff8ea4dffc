//! ferrule, the data plane: a sidecar that terminates and originates mutual TLS for
//! one service, proves who is on the other end by SPIFFE ID, and enforces Consul's
//! intentions.
//!
//! Where things live, by direction first:
//! - `inbound/`: the public mTLS listener's connections: `mod.rs` the pipeline
//!   (handshake -> identity -> L7 serving, or decide -> dial the app -> splice until
//!   revoked), `authorize.rs` where a caller is authorized and a denial says why,
//!   `http.rs` request-by-request serving to the local app.
//! - `outbound/`: the upstream listeners' connections, routed as the upstream's
//!   routing says: `mod.rs` L4 (the catch-all's cluster, failover, dial, splice),
//!   `dial.rs` the one dial-and-record both layers use, `http.rs` the app's requests
//!   (route, split, target, retries) over `pool.rs`'s mesh connections, with `route.rs`
//!   (matching, splits, rewrites, header changes), `retry.rs`, `affinity.rs` (a
//!   request's hash) and `body.rs` (replayable request bodies) beside it.
//! - beneath both: `http/` (what both directions' HTTP shares: local replies,
//!   hop-by-hop headers, path normalization, the request guard), `tls/` (configs and
//!   sessions; `verify.rs` the SVID verifiers; what intentions decide is
//!   `ferrule_control::intentions`),
//!   `balance/` (which instance of a target to dial: round robin, random, least
//!   request, ring hash, Maglev), `limits` (connection limits, idle timeouts),
//!   `splice` (moving bytes), `metrics` (names, typed outcomes and their labels, the
//!   per-connection guard).
//! - above them: `listeners` (binding what the snapshot asks for, the one accept loop),
//!   `admin` (`/metrics`, `/ready`, `/config`), `readiness` (ready or not, and every
//!   reason why not, for `/ready` and the periodic not-ready warning).
//! - beside them all: `access_log` (a record per L4 connection, per L7 request and per
//!   refused connection, rendered as configured and written off the data path) and
//!   `trace` (a span per L7 request, the trace context carried from hop to hop,
//!   exported with OTLP off the data path).
//! - beside the sidecar: `gateway/`, `ferrule gateway` (a mesh gateway routing on the
//!   TLS server name without terminating TLS), on the same accept loop, limits, splice,
//!   admin listener and drain.

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod demo;
pub mod gateway;
pub mod http;
pub mod inbound;
pub mod limits;
pub mod listeners;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod readiness;
pub mod splice;
pub mod tls;
pub mod trace;
pub mod warnings;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrule_control::model::Snapshot;
use metrics_exporter_prometheus::PrometheusHandle;
use rustls::crypto::CryptoProvider;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::tls::TlsState;

/// What every connection task reads: the newest snapshot and the TLS configs built
/// from it (both `Arc`s behind watch channels; nobody holds a lock), and what a drain
/// needs: every connection task is tracked, and told when draining starts.
#[derive(Clone)]
pub struct State {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub tls: watch::Receiver<Arc<TlsState>>,
    pub connections: TaskTracker,
    pub draining: CancellationToken,
}

/// Rebuilds the TLS configs whenever the snapshot changes what they depend on, until
/// the returned handle is dropped.
fn spawn_tls(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    provider: Arc<CryptoProvider>,
) -> (watch::Receiver<Arc<TlsState>>, AbortOnDropHandle<()>) {
    let first = TlsState::for_snapshot(
        &snapshots.borrow_and_update(),
        &Arc::new(TlsState::default()),
        &provider,
    );
    let (tx, rx) = watch::channel(first);
    let task = tokio::spawn(async move {
        while snapshots.changed().await.is_ok() {
            let snapshot = snapshots.borrow_and_update().clone();
            let prev = tx.borrow().clone();
            let next = TlsState::for_snapshot(&snapshot, &prev, &provider);
            if !Arc::ptr_eq(&prev, &next) {
                tx.send_replace(next);
            }
        }
    });
    (rx, AbortOnDropHandle::new(task))
}

/// Runs the data plane on whatever a source publishes, until `shutdown` resolves; then
/// drains: `/ready` turns 503, the listeners close, HTTP connections finish their
/// requests and close, and every connection gets up to `drain_timeout` to end before
/// this returns.
///
/// The admin listener is bound by the caller before the source starts, so `/ready`
/// answers 503 from the first moment.
pub async fn serve(
    admin_listener: TcpListener,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: PrometheusHandle,
    provider: Arc<CryptoProvider>,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) -> anyhow::Result<()> {
    let listening = listeners::Listening::default();
    // Everything spawned here stops when this returns, so nothing keeps following the
    // source: a process running several sidecars (`ferrule demo`) can stop one cleanly.
    let (tls, _tls_task) = spawn_tls(snapshots.clone(), provider);
    let report = Arc::new(admin::Sidecar {
        snapshots: snapshots.clone(),
        listening: listening.clone(),
        tls: tls.clone(),
    });
    let _admin = AbortOnDropHandle::new(tokio::spawn(admin::serve(
        admin_listener,
        admin::Admin {
            metrics: metrics.clone(),
            report: report.clone(),
        },
    )));
    let _reopen = AbortOnDropHandle::new(tokio::spawn(access_log::reopen_on_sigusr1()));
    let _remind = AbortOnDropHandle::new(tokio::spawn(readiness::remind(move || {
        admin::Report::readiness(&*report)
    })));
    let state = State {
        snapshots,
        tls,
        connections: TaskTracker::new(),
        draining: CancellationToken::new(),
    };
    tokio::select! {
        result = listeners::run(state.clone(), listening.clone(), metrics) => {
            return result.map_err(anyhow::Error::from);
        }
        () = shutdown => {}
    }
    // The listeners went with `listeners::run`: nothing new is accepted from here on.
    listening.drain();
    drain(&state.connections, &state.draining, drain_timeout).await;
    Ok(())
}

/// Tells every tracked connection that draining started, and gives them up to
/// `timeout` to end; the ones still open are then left to be dropped with the runtime.
pub(crate) async fn drain(
    connections: &TaskTracker,
    draining: &CancellationToken,
    timeout: Duration,
) {
    let open = connections.len();
    tracing::info!(open, timeout = ?timeout, "draining");
    draining.cancel();
    connections.close();
    if tokio::time::timeout(timeout, connections.wait())
        .await
        .is_err()
    {
        let left = connections.len();
        tracing::warn!(left, "drain timeout: closing the connections still open");
    } else {
        tracing::info!(open, "drained");
    }
}

/// Binds the admin address; failing here is fatal, before anything else starts.
pub async fn bind_admin(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on admin address {addr}: {e}"))?;
    tracing::info!(addr = %addr, "admin listener bound");
    Ok(listener)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
