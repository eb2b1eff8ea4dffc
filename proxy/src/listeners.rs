//! The listeners: keeps the bound ones equal to what the current snapshot asks for,
//! runs the one accept loop every listener uses (inbound, upstreams and admin), and
//! publishes what is bound for `/ready`.
//!
//! A listener that appears is bound, one that moves is rebound, one that disappears is
//! closed; connections it already accepted carry on. A bind that fails before the first
//! complete snapshot is a start-up error (the binary exits 1 naming the address); after
//! it, the failure is warned about once, retried, and named by `/ready` until it binds.
//! The public Prometheus listener is one of them, except that in Consul mode its
//! failure is never a start-up error (`PrometheusListener::required`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrule_control::model::{Snapshot, UpstreamConfig};
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::State;
use crate::limits::ConnectionLimit;
use crate::{inbound, metrics, outbound, warnings};

const RETRY_BIND: Duration = Duration::from_secs(2);

/// How long a listener waits after a failed accept before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How one listener's accepted connections are admitted and run.
pub struct Accepting {
    /// At most this many connections at a time, acquired before each accept; `None`:
    /// no limit (the admin listener).
    pub limit: Option<ConnectionLimit>,
    /// Stops accepting. Established connections are not tied to the listener and
    /// outlive it.
    pub cancel: CancellationToken,
    /// Where the connections' tasks are tracked, so a drain can wait for them; `None`:
    /// spawned untracked (the admin listener).
    pub tasks: Option<TaskTracker>,
}

impl Accepting {
    /// A mesh-facing listener's: limited, its connections tracked for a drain.
    fn tracked(limit: ConnectionLimit, cancel: CancellationToken, state: &State) -> Accepting {
        Accepting {
            limit: Some(limit),
            cancel,
            tasks: Some(state.connections.clone()),
        }
    }
}

/// The accept loop: until cancelled, waits for room under the limit, accepts, and
/// spawns `connection(tcp, peer)` holding that room until it ends. A failed accept
/// (typically EMFILE) is reported to `failed` and followed by a short back-off instead
/// of spinning on the error.
pub async fn accept<C, F>(
    listener: TcpListener,
    accepting: Accepting,
    failed: impl Fn(&std::io::Error),
    mut connection: C,
) where
    C: FnMut(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let Accepting {
        limit,
        cancel,
        tasks,
    } = accepting;
    loop {
        let room = match &limit {
            Some(limit) => {
                let room = tokio::select! {
                    () = cancel.cancelled() => return,
                    room = limit.acquire() => room,
                };
                let Some(room) = room else { return };
                Some(room)
            }
            None => None,
        };
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let served = connection(tcp, peer);
                let task = async move {
                    let _room = room;
                    served.await;
                };
                match &tasks {
                    Some(tasks) => drop(tasks.spawn(task)),
                    None => drop(tokio::spawn(task)),
                }
            }
            Err(e) => {
                failed(&e);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Accept failures' warnings, one kind per listener: at the descriptor limit every
/// accept fails, as often as the back-off lets it.
static ACCEPT_WARNINGS: warnings::Limiter = warnings::Limiter::new(warnings::EVERY);

/// Warns that `listener` could not accept, rate-limited (`crate::warnings`); every
/// failure is logged at debug.
pub fn accept_failed(listener: &str, e: &std::io::Error) {
    tracing::debug!(listener, error = %e, "accept failed");
    if let Some(suppressed) = ACCEPT_WARNINGS.admit(listener) {
        tracing::warn!(
            listener,
            error = %e,
            suppressed,
            "accept failed{}",
            warnings::suppressed(suppressed)
        );
    }
}

/// The last snapshot the listeners were reconciled to, and the listeners it asks for
/// that are not bound (why, one line each). Readiness is judged on this, not on the newest snapshot, so it
/// never runs ahead of the listeners (and never flaps while they catch up).
/// Once draining, it stays not ready for good.
#[derive(Clone, Default)]
pub struct Listening(Arc<Mutex<ListeningState>>);

#[derive(Clone, Default)]
pub struct ListeningState {
    pub snapshot: Arc<Snapshot>,
    pub unbound: Vec<String>,
    pub draining: bool,
}

impl Listening {
    pub fn set(&self, snapshot: Arc<Snapshot>, unbound: Vec<String>) {
        let mut state = self.0.lock();
        state.snapshot = snapshot;
        state.unbound = unbound;
    }

    /// The process is shutting down: load balancers and health checks must look away.
    pub fn drain(&self) {
        self.0.lock().draining = true;
    }

    pub fn get(&self) -> ListeningState {
        self.0.lock().clone()
    }
}

struct Bound {
    addr: SocketAddr,
    cancel: CancellationToken,
}

impl Drop for Bound {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[derive(Default)]
struct Listeners {
    inbound: Option<Bound>,
    upstreams: HashMap<String, Bound>,
    prometheus: PrometheusSlot,
}

/// The public Prometheus listener (a sidecar's or a mesh gateway's), kept at the
/// address its configuration asks for.
#[derive(Default)]
pub(crate) struct PrometheusSlot(Option<Bound>);

impl PrometheusSlot {
    /// Binds, moves or closes the listener as `wanted` says; it renders `metrics`.
    pub(crate) async fn reconcile(
        &mut self,
        wanted: Option<SocketAddr>,
        metrics: &PrometheusHandle,
    ) -> Result<(), BindError> {
        let Some(wanted) = wanted else {
            self.0 = None;
            return Ok(());
        };
        if self.0.as_ref().is_some_and(|b| b.addr == wanted) {
            return Ok(());
        }
        self.0 = None;
        let listener = bind(wanted, || "prometheus".into()).await?;
        tracing::info!(addr = %wanted, "prometheus listener bound");
        let cancel = CancellationToken::new();
        tokio::spawn(crate::admin::serve_prometheus(
            listener,
            metrics.clone(),
            cancel.clone(),
        ));
        self.0 = Some(Bound {
            addr: wanted,
            cancel,
        });
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    addr: SocketAddr,
    what: String,
    source: std::io::Error,
}

impl BindError {
    /// The address is not one of this host's (e.g. a public address NAT maps to us).
    pub fn is_not_local(&self) -> bool {
        self.source.kind() == std::io::ErrorKind::AddrNotAvailable
    }
}

impl Listeners {
    async fn reconcile(&mut self, snapshot: &Snapshot, state: &State) -> Vec<BindError> {
        let mut errors = Vec::new();
        if let Err(e) = self.reconcile_inbound(snapshot, state).await {
            errors.push(e);
        }
        self.upstreams
            .retain(|name, _| snapshot.upstream(name).is_some());
        for up in &snapshot.upstreams {
            if let Err(e) = self.reconcile_upstream(up, state).await {
                errors.push(e);
            }
        }
        errors
    }

    async fn reconcile_inbound(
        &mut self,
        snapshot: &Snapshot,
        state: &State,
    ) -> Result<(), BindError> {
        let Some(ib) = &snapshot.inbound else {
            self.inbound = None;
            return Ok(());
        };
        if self.inbound.as_ref().is_some_and(|b| b.addr == ib.bind) {
            return Ok(());
        }
        self.inbound = None;
        let listener = bind(ib.bind, || "inbound".into()).await?;
        tracing::info!(addr = %ib.bind, protocol = ?ib.protocol, "inbound listener bound");
        let cancel = CancellationToken::new();
        let limit = ConnectionLimit::new("inbound".into(), ib.max_connections);
        spawn_inbound(listener, state, limit, cancel.clone());
        self.inbound = Some(Bound {
            addr: ib.bind,
            cancel,
        });
        Ok(())
    }

    async fn reconcile_upstream(
        &mut self,
        up: &UpstreamConfig,
        state: &State,
    ) -> Result<(), BindError> {
        if self
            .upstreams
            .get(&up.name)
            .is_some_and(|b| b.addr == up.bind)
        {
            return Ok(());
        }
        self.upstreams.remove(&up.name);
        let listener = bind(up.bind, || format!("upstream {}", up.name)).await?;
        tracing::info!(upstream = %up.name, addr = %up.bind, "upstream listener bound");
        let cancel = CancellationToken::new();
        let limit = ConnectionLimit::new(format!("upstream {}", up.name), up.max_connections);
        spawn_upstream(listener, up.name.clone(), state, limit, cancel.clone());
        let bound = Bound {
            addr: up.bind,
            cancel,
        };
        self.upstreams.insert(up.name.clone(), bound);
        Ok(())
    }
}

/// Binds `addr`; an error names it and `what` listens there.
pub(crate) async fn bind(
    addr: SocketAddr,
    what: impl FnOnce() -> String,
) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        addr,
        what: what(),
        source,
    })
}

/// Accepts on the public mTLS listener until `cancel`, at most `limit` connections at
/// a time.
fn spawn_inbound(
    listener: TcpListener,
    state: &State,
    limit: ConnectionLimit,
    cancel: CancellationToken,
) {
    let accepting = Accepting::tracked(limit, cancel, state);
    let failed = |e: &std::io::Error| accept_failed("inbound", e);
    let app = Arc::new(inbound::LocalApp::default());
    let state = state.clone();
    let connection = move |tcp, peer| inbound::handle(tcp, peer, state.clone(), app.clone());
    tokio::spawn(accept(listener, accepting, failed, connection));
}

/// Accepts for the upstream `name` until `cancel`, at most `limit` connections at a
/// time.
fn spawn_upstream(
    listener: TcpListener,
    name: String,
    state: &State,
    limit: ConnectionLimit,
    cancel: CancellationToken,
) {
    let accepting = Accepting::tracked(limit, cancel, state);
    let upstream = outbound::Upstream::new(name.clone());
    let listener_name = format!("upstream {name}");
    let failed = move |e: &std::io::Error| accept_failed(&listener_name, e);
    let state = state.clone();
    let connection = move |app, peer| upstream.connection(app, peer, &state);
    tokio::spawn(accept(listener, accepting, failed, connection));
}

/// Reconciles listeners with every new snapshot. Until a complete snapshot has been
/// served, a bind error is returned (a port taken at start-up is a fatal
/// misconfiguration, in both modes; the Prometheus listener's only when it is
/// `required`); after that, a new one is warned about once and retried every few
/// seconds, and `/ready` names it. `metrics` is what the Prometheus listener renders.
pub async fn run(
    mut state: State,
    listening: Listening,
    metrics: PrometheusHandle,
) -> Result<(), BindError> {
    let mut listeners = Listeners::default();
    let mut started = false;
    let mut failing: Vec<String> = Vec::new();
    let mut active_targets = metrics::ActiveTargets::default();
    loop {
        let snapshot: Arc<Snapshot> = state.snapshots.borrow_and_update().clone();
        let mut errors = listeners.reconcile(&snapshot, &state).await;
        if !started && !errors.is_empty() {
            return Err(errors.remove(0));
        }
        let wanted = snapshot.prometheus.as_ref();
        let prometheus = listeners
            .prometheus
            .reconcile(wanted.map(|p| p.bind), &metrics);
        if let Err(e) = prometheus.await {
            if !started && wanted.is_some_and(|p| p.required) {
                return Err(e);
            }
            errors.push(e);
        }
        started |= snapshot.is_complete();
        let now: Vec<String> = errors.iter().map(ToString::to_string).collect();
        for e in now.iter().filter(|e| !failing.contains(e)) {
            tracing::warn!(error = %e, "listener not bound; keeping the others and retrying");
        }
        failing.clone_from(&now);
        if let Some(leaf) = &snapshot.leaf {
            ::metrics::gauge!(metrics::LEAF_EXPIRY).set(leaf.not_after as f64);
        }
        active_targets.update(&snapshot);
        metrics::catalog::register_upstreams(&snapshot);
        listening.set(snapshot.clone(), now);

        let retry = async {
            if errors.is_empty() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(RETRY_BIND).await;
        };
        tokio::select! {
            changed = state.snapshots.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            () = retry => {}
        }
    }
}
