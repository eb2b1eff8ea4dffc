//! The inbound direction: where a connection from the mesh is authenticated,
//! authorized and handed to the local application.
//!
//! `handle` is the pipeline, one named step each: handshake (bounded by the handshake
//! timeout; a peer that sends nothing is a probe) -> identity (the caller's SPIFFE ID)
//! -> either L7 serving (`http`: every request decided on its own), or the L4 decision
//! -> dial the local app -> splice until the bytes end, the connection idles, or an
//! intentions update revokes it. `authorize` is where the intentions are asked and a
//! denial says why. The accept loop that feeds `handle` is `crate::listeners`'.

mod authorize;
mod http;
mod xfcc;

pub use self::http::LocalApp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrule_control::identity::ServiceId;
use ferrule_control::intentions::{Intentions, Peer};
use ferrule_control::model::{InboundConfig, Snapshot};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::State;
use crate::access_log::{self, Kind};
use crate::limits::{self, Watched};
use crate::metrics::{self, ConnGuard, Direction, InboundOutcome, Layer, Metered};
use crate::splice::{Spliced, splice};
use crate::tls::{peer_identity, resumed_with_expired_peer};

/// The caller's side of an established mTLS connection.
type Mesh = TlsStream<Watched<TcpStream>>;

/// Serves one connection accepted on the public listener, from handshake to close.
pub(crate) async fn handle(tcp: TcpStream, peer: SocketAddr, mut state: State, app: Arc<LocalApp>) {
    let mut guard = ConnGuard::new(Direction::Inbound, None, peer);
    let snapshot = state.snapshots.borrow_and_update().clone();
    let Some(inbound) = snapshot.inbound.clone() else {
        return;
    };
    let mut log = access_log::Pending::start(&snapshot, Kind::Listener);
    let local = tcp.local_addr().ok();
    if let Some(record) = log.record() {
        record.downstream_remote = Some(peer);
        record.downstream_local = local;
        record.downstream_local_uri_san = Some(our_uri(&snapshot));
    }
    let _ = tcp.set_nodelay(true);
    let tcp = Watched::new(tcp);
    let idle = limits::idle(tcp.activity(), inbound.idle_timeout);
    let tls = match handshake(tcp, peer, &state, &inbound).await {
        Ok(tls) => tls,
        Err(outcome) => return refused_early(guard, log, outcome),
    };
    let Some(id) = identity(&tls) else {
        return refused_early(guard, log, InboundOutcome::TlsError);
    };
    guard.set_identity(id.to_uri());
    let sni = tls.get_ref().1.server_name().map(str::to_owned);
    if let Some(record) = log.record() {
        record.downstream_peer_uri_san = Some(id.to_uri());
        record.requested_server_name = sni.clone();
    }
    let caller = Peer::of_caller(&id, local_trust_domain(&snapshot));

    if inbound.protocol.is_http() {
        // Every request is decided on its own, and has its own record; the connection
        // itself is let in.
        log.set_kind(Kind::Quiet);
        guard.set_result(InboundOutcome::Accepted);
        let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
        let mut caller = http::Caller::new(caller, &our_uri(&snapshot), chain);
        caller.conn = http::ConnFacts {
            remote: peer,
            local,
            sni,
            peer_uri: id.to_uri(),
            our_uri: our_uri(&snapshot),
        };
        // A caller that stops reading fails its writes (and so its connection) once
        // they have waited `WRITE_STALL`: see `docs/architecture.md#http2-limits`.
        let tls = limits::WriteStall::new(Metered::new(tls, guard.bytes()), limits::WRITE_STALL);
        // Boxed, so that the tasks of L4 connections are not sized for this branch.
        let serve = http::serve_connection(tls, caller, state, app, idle);
        return Box::pin(serve).await;
    }

    let intentions = snapshot.intentions.clone();
    if !decide(intentions.as_deref(), &caller, peer, &id) {
        guard.set_result(InboundOutcome::Denied);
        if let Some(record) = log.record() {
            record.decision = Some("deny");
            record.termination_details = Some("rbac_access_denied");
        }
        return refuse(tls).await;
    }
    log.set_kind(Kind::L4);
    if let Some(record) = log.record() {
        record.decision = Some("allow");
        record.upstream_cluster = Some(LOCAL_APP.to_owned());
        record.upstream_host = Some(inbound.local_app.clone());
    }
    let Some(app) = dial_app(&inbound).await else {
        if let Some(record) = log.record() {
            record.response_flags = Some("UF");
        }
        return guard.set_result(InboundOutcome::AppUnreachable);
    };
    guard.set_result(InboundOutcome::Accepted);
    if let Some(record) = log.record() {
        record.upstream_local_address = app.local_addr().ok();
    }
    log.count_bytes(&guard.bytes());
    let tls = Metered::new(tls, guard.bytes());
    let revoked = revoked(state.snapshots.clone(), caller, intentions);
    let ended = splice_until_revoked(tls, app, revoked, idle, peer, &id).await;
    if let Some(record) = log.record() {
        record.termination_details = match ended {
            Spliced::Revoked => Some("rbac_access_denied"),
            Spliced::Idle => Some("idle_timeout"),
            Spliced::Done => None,
        };
    }
}

/// The name Consul's Envoy gives the local app's cluster, for the access log.
const LOCAL_APP: &str = "local_app";

/// A connection that ended before any request: counted, and a listener record unless
/// it was a probe.
fn refused_early(mut guard: ConnGuard, mut log: access_log::Pending, outcome: InboundOutcome) {
    guard.set_result(outcome);
    match outcome {
        InboundOutcome::Probe => log.set_kind(Kind::Quiet),
        _ => {
            if let Some(record) = log.record() {
                record.termination_details = Some("tls_error");
            }
        }
    }
}

/// The mTLS handshake, within the handshake timeout. A peer that closes without
/// sending a byte is a probe (a TCP health check), not a TLS error.
async fn handshake(
    tcp: Watched<TcpStream>,
    peer: SocketAddr,
    state: &State,
    inbound: &InboundConfig,
) -> Result<Mesh, InboundOutcome> {
    let started = Instant::now();
    let server_config = state.tls.borrow().server.clone();
    let handshake = async {
        let mut first = [0u8; 1];
        if tcp.get_ref().peek(&mut first).await? == 0 {
            return Ok(None);
        }
        let Some(config) = server_config else {
            return Err(std::io::Error::other("no leaf or bundle loaded yet"));
        };
        TlsAcceptor::from(config).accept(tcp).await.map(Some)
    };
    let tls = match tokio::time::timeout(inbound.handshake_timeout, handshake).await {
        Ok(Ok(Some(tls))) => tls,
        Ok(Ok(None)) => return Err(InboundOutcome::Probe),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "inbound handshake failed");
            return Err(InboundOutcome::TlsError);
        }
        Err(_) => {
            tracing::debug!(%peer, "inbound handshake timed out");
            return Err(InboundOutcome::TlsError);
        }
    };
    metrics::handshake(Direction::Inbound, tls.get_ref().1, started);
    if resumed_with_expired_peer(tls.get_ref().1) {
        tracing::debug!(%peer, "resumed session of an expired certificate");
        return Err(InboundOutcome::TlsError);
    }
    Ok(tls)
}

/// Who is calling. The verifier already proved it; the leaf is parsed again to know
/// who it is.
fn identity(tls: &Mesh) -> Option<ServiceId> {
    let cert = tls.get_ref().1.peer_certificates()?.first()?;
    peer_identity(cert).ok()
}

fn local_trust_domain(snapshot: &Snapshot) -> &str {
    snapshot
        .bundle
        .as_ref()
        .map_or("", |b| b.trust_domain.as_str())
}

fn our_uri(snapshot: &Snapshot) -> String {
    snapshot
        .leaf
        .as_ref()
        .map(|leaf| leaf.id.to_uri())
        .unwrap_or_default()
}

/// The L4 decision: may this caller's connection reach the app at all.
fn decide(
    intentions: Option<&Intentions>,
    caller: &Peer,
    peer: SocketAddr,
    id: &ServiceId,
) -> bool {
    let verdict = authorize::authorize(Layer::L4, intentions, caller, None);
    if !verdict.allowed() {
        tracing::debug!(
            %peer,
            caller = %id,
            reason = verdict.reason(),
            intention = %verdict.governed_by(),
            "denied by intentions"
        );
    }
    verdict.allowed()
}

/// Closes a denied connection with close_notify, so the caller sees a clean close
/// rather than a reset.
async fn refuse(mut tls: Mesh) {
    let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
}

/// Connects to the local app within the local connect timeout.
async fn dial_app(inbound: &InboundConfig) -> Option<TcpStream> {
    let connect = TcpStream::connect(&inbound.local_app);
    match tokio::time::timeout(inbound.local_connect_timeout, connect).await {
        Ok(Ok(app)) => {
            let _ = app.set_nodelay(true);
            Some(app)
        }
        Ok(Err(e)) => {
            tracing::warn!(app = %inbound.local_app, error = %e, "local app unreachable");
            None
        }
        Err(_) => {
            tracing::warn!(app = %inbound.local_app, "local app connect timed out");
            None
        }
    }
}

/// Moves bytes between the caller and the app until either side is done, the
/// connection idles, or the intentions no longer allow the caller.
async fn splice_until_revoked(
    mut tls: Metered<Mesh>,
    mut app: TcpStream,
    revoked: impl Future<Output = Revoked>,
    idle: impl Future<Output = ()>,
    peer: SocketAddr,
    id: &ServiceId,
) -> Spliced {
    let mut why = None;
    let stop = async {
        tokio::select! {
            revoked = revoked => {
                why = Some(revoked);
                Spliced::Revoked
            }
            () = idle => Spliced::Idle,
        }
    };
    let ended = splice(&mut tls, &mut app, stop).await;
    match ended {
        Spliced::Revoked => {
            let (reason, intention) = why.map_or(("", String::new()), |r| (r.reason, r.intention));
            tracing::info!(%peer, caller = %id, reason, intention, "closing connection: intentions now deny it");
            metrics::authz_termination(&id.service);
        }
        Spliced::Idle => tracing::debug!(%peer, caller = %id, "closing idle connection"),
        Spliced::Done => {}
    }
    ended
}

/// Why a live connection was revoked, for its log line.
struct Revoked {
    reason: &'static str,
    intention: String,
}

/// Resolves when an intentions update denies a connection that was allowed.
async fn revoked(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    caller: Peer,
    mut current: Option<Arc<Intentions>>,
) -> Revoked {
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
        let verdict = authorize::decide(current.as_deref(), &caller, None);
        if !verdict.allowed() {
            return Revoked {
                reason: verdict.reason(),
                intention: verdict.governed_by().to_string(),
            };
        }
    }
}
