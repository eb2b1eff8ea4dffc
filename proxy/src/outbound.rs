//! Upstream listeners: the application's plaintext calls, carried over mTLS to an
//! instance of the destination that proves it is that destination.
//!
//! accept -> pick endpoints round robin (recently failed ones last, see `balance`) ->
//! for each until one works: TCP connect and
//! handshake within the connect timeout, server SVID must be exactly the endpoint's
//! expected identity -> splice. No endpoint left: the app's connection is closed.
//! An HTTP-family upstream hands each app connection to `http::outbound` instead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrule_control::model::{Endpoint, Protocol, UpstreamConfig};
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::State;
use crate::balance::Balancer;
use crate::http::{self, outbound::MeshPool};
use crate::limits::{self, ConnectionLimit, Watched};
use crate::metrics::{self, ConnGuard, Direction, Metered};
use crate::splice::{Spliced, splice};
use crate::tls::{TlsState, is_identity_mismatch, resumed_with_expired_peer};

/// Accepts for the upstream `name` until cancelled, at most `limit` connections at a
/// time.
pub async fn serve(
    listener: TcpListener,
    name: String,
    state: State,
    limit: ConnectionLimit,
    cancel: CancellationToken,
) {
    let balancer = Arc::new(Balancer::default());
    let pool = Arc::new(MeshPool::new(name.clone(), balancer.clone()));
    loop {
        let room = tokio::select! {
            () = cancel.cancelled() => return,
            room = limit.acquire() => room,
        };
        let Some(room) = room else { return };
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((app, peer)) => {
                let _ = app.set_nodelay(true);
                let app = Watched::new(app);
                let (protocol, idle_timeout) = state
                    .snapshots
                    .borrow()
                    .upstream(&name)
                    .map_or((Protocol::Tcp, None), |u| (u.protocol, u.idle_timeout));
                let idle = limits::idle(app.activity(), idle_timeout);
                // Boxed: an L4 connection's task is then sized to the L4 path alone,
                // not to the larger HTTP state machine beside it.
                let served = if protocol.is_http() {
                    Either::Left(Box::pin(http::outbound::serve_connection(
                        app,
                        protocol,
                        pool.clone(),
                        state.clone(),
                        idle,
                    )))
                } else {
                    Either::Right(handle(
                        app,
                        peer,
                        name.clone(),
                        state.clone(),
                        balancer.clone(),
                        idle,
                    ))
                };
                state.connections.spawn(async move {
                    let _room = room;
                    served.await;
                });
            }
            Err(e) => {
                tracing::warn!(upstream = %name, error = %e, "upstream accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(
    mut app: Watched<TcpStream>,
    peer: SocketAddr,
    name: String,
    state: State,
    balancer: Arc<Balancer>,
    idle: impl Future<Output = ()>,
) {
    let mut guard = ConnGuard::new(Direction::Outbound, Some(name.clone()), peer);
    let snapshot = state.snapshots.borrow().clone();
    let tls = state.tls.borrow().clone();
    let Some(upstream) = snapshot.upstream(&name) else {
        return guard.attempt("no_endpoints");
    };
    let endpoints = &upstream.endpoints;
    if endpoints.is_empty() {
        return guard.attempt("no_endpoints");
    }
    for i in balancer.order(endpoints) {
        let endpoint = &endpoints[i];
        let started = Instant::now();
        match dial(endpoint, &tls, upstream).await {
            Ok(stream) => {
                balancer.succeeded(&endpoint.addr);
                metrics::handshake(Direction::Outbound, stream.get_ref().1, started);
                guard.attempt("ok");
                guard.set_identity(endpoint.identity.to_uri());
                let mut mesh = Metered::new(stream, guard.bytes());
                let stop = async {
                    idle.await;
                    Spliced::Idle
                };
                if splice(&mut app, &mut mesh, stop).await == Spliced::Idle {
                    tracing::debug!(upstream = %name, "closing idle connection");
                }
                return;
            }
            Err(result) => {
                tracing::debug!(upstream = %name, endpoint = %endpoint.addr, result, "dial failed");
                guard.attempt(result);
                balancer.failed(&endpoint.addr);
            }
        }
    }
    tracing::warn!(upstream = %name, "no endpoint could be reached; closing the app's connection");
}

/// TCP connect and mTLS handshake, both within the upstream's connect timeout.
/// Errors are the metric label.
pub(crate) async fn dial(
    endpoint: &Endpoint,
    tls: &TlsState,
    upstream: &UpstreamConfig,
) -> Result<TlsStream<TcpStream>, &'static str> {
    let Some(config) = tls.client_for(&endpoint.identity, upstream.protocol) else {
        // No leaf or bundle yet: fail closed.
        return Err("tls_error");
    };
    let attempt = async {
        let tcp = TcpStream::connect(&endpoint.addr)
            .await
            .map_err(|_| "connect_error")?;
        let _ = tcp.set_nodelay(true);
        let ip = tcp.peer_addr().map_err(|_| "connect_error")?.ip();
        let tls = TlsConnector::from(config)
            .connect(ServerName::IpAddress(ip.into()), tcp)
            .await
            .map_err(|e| {
                if is_identity_mismatch(&e) {
                    tracing::warn!(endpoint = %endpoint.addr, error = %e, "upstream presented another service's identity");
                    "identity_mismatch"
                } else {
                    "tls_error"
                }
            })?;
        if resumed_with_expired_peer(tls.get_ref().1) {
            tracing::debug!(endpoint = %endpoint.addr, "resumed session of an expired certificate");
            return Err("tls_error");
        }
        Ok(tls)
    };
    tokio::time::timeout(upstream.connect_timeout, attempt)
        .await
        .unwrap_or(Err("connect_error"))
}
