//! The public mTLS listener: where a connection is authenticated, authorized and
//! handed to the local application.
//!
//! accept -> (handshake, bounded by the handshake timeout) -> the caller's SPIFFE ID ->
//! L4 intention decision -> dial the local app -> splice. While the bytes flow, every
//! intentions update re-decides the connection and closes it if it is now denied.
//! An HTTP-family listener hands the authenticated connection to `http::inbound`
//! instead, which decides request by request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrule_control::intentions::{Intentions, Peer};
use ferrule_control::model::Snapshot;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::State;
use crate::authz;
use crate::http::{self, inbound::LocalApp};
use crate::limits::{self, ConnectionLimit, Watched};
use crate::metrics::{self, ConnGuard, Direction, Layer, Metered};
use crate::splice::{Spliced, splice};
use crate::tls::peer_identity;

/// Accepts until cancelled, at most `limit` connections at a time. Established
/// connections are not tied to the listener and outlive it.
pub async fn serve(
    listener: TcpListener,
    state: State,
    limit: ConnectionLimit,
    cancel: CancellationToken,
) {
    let app = Arc::new(LocalApp::default());
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
            Ok((tcp, peer)) => {
                let connection = handle(tcp, peer, state.clone(), app.clone());
                state.connections.spawn(async move {
                    let _room = room;
                    connection.await;
                });
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning on the error.
                tracing::warn!(error = %e, "inbound accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(tcp: TcpStream, peer: SocketAddr, mut state: State, app: Arc<LocalApp>) {
    let mut guard = ConnGuard::new(Direction::Inbound, None, peer);
    let snapshot = state.snapshots.borrow_and_update().clone();
    let Some(inbound) = snapshot.inbound.clone() else {
        return;
    };
    let _ = tcp.set_nodelay(true);
    let tcp = Watched::new(tcp);
    let activity = tcp.activity();

    let started = Instant::now();
    let server_config = state.tls.borrow().server.clone();
    let handshake = async {
        // A peer that closes without sending a byte is a probe (a TCP health check).
        let mut first = [0u8; 1];
        if tcp.get_ref().peek(&mut first).await? == 0 {
            return Ok(None);
        }
        let Some(config) = server_config else {
            return Err(std::io::Error::other("no leaf or bundle loaded yet"));
        };
        TlsAcceptor::from(config).accept(tcp).await.map(Some)
    };
    let mut tls = match tokio::time::timeout(inbound.handshake_timeout, handshake).await {
        Ok(Ok(Some(tls))) => tls,
        Ok(Ok(None)) => return guard.set_result("probe"),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "inbound handshake failed");
            return guard.set_result("tls_error");
        }
        Err(_) => {
            tracing::debug!(%peer, "inbound handshake timed out");
            return guard.set_result("tls_error");
        }
    };
    metrics::handshake(Direction::Inbound, tls.get_ref().1, started);
    if crate::tls::resumed_with_expired_peer(tls.get_ref().1) {
        tracing::debug!(%peer, "resumed session of an expired certificate");
        return guard.set_result("tls_error");
    }

    // The verifier already proved this; parse it again to know who it is.
    let Some(cert) = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
    else {
        return guard.set_result("tls_error");
    };
    let Ok(id) = peer_identity(&cert) else {
        return guard.set_result("tls_error");
    };
    guard.set_identity(id.to_uri());
    let local_td = snapshot
        .bundle
        .as_ref()
        .map_or("", |b| b.trust_domain.as_str());
    let caller = Peer::of_caller(&id, local_td);

    if inbound.protocol.is_http() {
        // Every request is decided on its own; the connection itself is let in.
        guard.set_result("accepted");
        let ours = snapshot
            .leaf
            .as_ref()
            .map(|leaf| leaf.id.to_uri())
            .unwrap_or_default();
        let caller = http::inbound::Caller::new(caller, &id.to_uri(), &ours, &cert);
        let tls = Metered::new(tls, guard.bytes());
        let snapshots = state.snapshots.clone();
        let draining = state.draining.clone();
        let idle = limits::idle(activity, inbound.idle_timeout);
        // Boxed, so that the tasks of L4 connections are not sized for this branch.
        Box::pin(http::inbound::serve_connection(
            tls,
            inbound.protocol,
            caller,
            snapshots,
            app,
            draining,
            idle,
        ))
        .await;
        return;
    }

    let intentions = snapshot.intentions.clone();
    let allowed = is_allowed(intentions.as_deref(), &caller);
    metrics::authz_decision(Layer::L4, allowed, &caller.service);
    if !allowed {
        tracing::debug!(%peer, caller = %id, "denied by intentions");
        guard.set_result("denied");
        // close_notify, so the caller sees a clean close rather than a reset.
        let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
        return;
    }

    let app = tokio::time::timeout(
        inbound.local_connect_timeout,
        TcpStream::connect(&inbound.local_app),
    )
    .await;
    let mut app = match app {
        Ok(Ok(app)) => app,
        Ok(Err(e)) => {
            tracing::warn!(app = %inbound.local_app, error = %e, "local app unreachable");
            return guard.set_result("app_unreachable");
        }
        Err(_) => {
            tracing::warn!(app = %inbound.local_app, "local app connect timed out");
            return guard.set_result("app_unreachable");
        }
    };
    let _ = app.set_nodelay(true);
    guard.set_result("accepted");

    let mut tls = Metered::new(tls, guard.bytes());
    let revoked = revoked(state.snapshots.clone(), caller, intentions);
    let idle = limits::idle(activity, inbound.idle_timeout);
    let stop = async {
        tokio::select! {
            () = revoked => Spliced::Revoked,
            () = idle => Spliced::Idle,
        }
    };
    match splice(&mut tls, &mut app, stop).await {
        Spliced::Revoked => {
            tracing::info!(%peer, caller = %id, "closing connection: intentions now deny it");
            metrics::authz_termination(&id.service);
        }
        Spliced::Idle => tracing::debug!(%peer, caller = %id, "closing idle connection"),
        Spliced::Done => {}
    }
}

fn is_allowed(intentions: Option<&Intentions>, caller: &Peer) -> bool {
    // No intentions loaded yet: fail closed.
    intentions.is_some_and(|ixns| authz::decide(ixns, caller, None).allowed)
}

/// Resolves when an intentions update denies a connection that was allowed.
async fn revoked(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    caller: Peer,
    mut current: Option<Arc<Intentions>>,
) {
    loop {
        if snapshots.changed().await.is_err() {
            // The source is gone; nothing can change any more.
            return std::future::pending().await;
        }
        let latest = snapshots.borrow_and_update().intentions.clone();
        let same = match (&latest, &current) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            continue;
        }
        current = latest;
        if !is_allowed(current.as_deref(), &caller) {
            return;
        }
    }
}
