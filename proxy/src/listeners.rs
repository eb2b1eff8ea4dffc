//! Keeps the bound listeners equal to what the current snapshot asks for.
//!
//! A listener that appears is bound, one that moves is rebound, one that disappears is
//! closed; connections it already accepted carry on. A bind that fails is retried, and
//! readiness stays off until every listener is bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrule_control::model::Snapshot;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::State;
use crate::admin::Listening;
use crate::limits::ConnectionLimit;
use crate::{inbound, metrics, outbound};

const RETRY_BIND: Duration = Duration::from_secs(2);

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
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    addr: SocketAddr,
    what: String,
    source: std::io::Error,
}

impl Listeners {
    async fn reconcile(&mut self, snapshot: &Snapshot, state: &State) -> Vec<BindError> {
        let mut errors = Vec::new();
        match &snapshot.inbound {
            Some(ib) if self.inbound.as_ref().is_some_and(|b| b.addr == ib.bind) => {}
            Some(ib) => {
                self.inbound = None;
                match TcpListener::bind(ib.bind).await {
                    Ok(listener) => {
                        tracing::info!(addr = %ib.bind, protocol = ?ib.protocol, "inbound listener bound");
                        let cancel = CancellationToken::new();
                        let limit = ConnectionLimit::new("inbound".into(), ib.max_connections);
                        tokio::spawn(inbound::serve(
                            listener,
                            state.clone(),
                            limit,
                            cancel.clone(),
                        ));
                        self.inbound = Some(Bound {
                            addr: ib.bind,
                            cancel,
                        });
                    }
                    Err(source) => errors.push(BindError {
                        addr: ib.bind,
                        what: "inbound".into(),
                        source,
                    }),
                }
            }
            None => self.inbound = None,
        }

        self.upstreams
            .retain(|name, _| snapshot.upstream(name).is_some());
        for up in &snapshot.upstreams {
            if self
                .upstreams
                .get(&up.name)
                .is_some_and(|b| b.addr == up.bind)
            {
                continue;
            }
            self.upstreams.remove(&up.name);
            match TcpListener::bind(up.bind).await {
                Ok(listener) => {
                    tracing::info!(upstream = %up.name, addr = %up.bind, "upstream listener bound");
                    let cancel = CancellationToken::new();
                    let limit =
                        ConnectionLimit::new(format!("upstream {}", up.name), up.max_connections);
                    tokio::spawn(outbound::serve(
                        listener,
                        up.name.clone(),
                        state.clone(),
                        limit,
                        cancel.clone(),
                    ));
                    self.upstreams.insert(
                        up.name.clone(),
                        Bound {
                            addr: up.bind,
                            cancel,
                        },
                    );
                }
                Err(source) => errors.push(BindError {
                    addr: up.bind,
                    what: format!("upstream {}", up.name),
                    source,
                }),
            }
        }
        errors
    }
}

/// Reconciles listeners with every new snapshot. The first reconciliation's bind
/// errors are returned (a port taken at start-up is a fatal misconfiguration); later
/// ones are logged and retried.
pub async fn run(mut state: State, listening: Listening) -> Result<(), BindError> {
    let mut listeners = Listeners::default();
    let mut first = true;
    loop {
        let snapshot: Arc<Snapshot> = state.snapshots.borrow_and_update().clone();
        let mut errors = listeners.reconcile(&snapshot, &state).await;
        if first && !errors.is_empty() {
            return Err(errors.remove(0));
        }
        first = false;
        for e in &errors {
            tracing::error!(error = %e, "listener not bound; retrying");
        }
        if let Some(leaf) = &snapshot.leaf {
            ::metrics::gauge!(metrics::LEAF_EXPIRY).set(leaf.not_after as f64);
        }
        listening.set(snapshot.clone(), errors.is_empty());

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
