//! The one dial of the outbound direction, for L4 connections and L7 pools alike: TCP
//! connect and mTLS handshake within the upstream's connect timeout, the server's SVID
//! exactly the endpoint's expected identity, and everything a dial records: the
//! handshake metric, the endpoint's standing with the balancer, and a failed attempt
//! on the connection's guard.

use std::time::Instant;

use ferrule_control::model::{Endpoint, UpstreamConfig};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::balance::Balancer;
use crate::metrics::{self, Attempt, ConnGuard, DialError, Direction};
use crate::tls::{TlsState, is_identity_mismatch, resumed_with_expired_peer};

/// Dials `endpoint` and records the outcome. A failure is counted on `guard` as a
/// failed attempt and the endpoint goes to the back of the balancer's order; a success
/// is left for the caller to count with `connected`, once the connection is usable.
pub(crate) async fn dial(
    endpoint: &Endpoint,
    tls: &TlsState,
    upstream: &UpstreamConfig,
    balancer: &Balancer,
    guard: &mut ConnGuard,
) -> Option<TlsStream<TcpStream>> {
    let started = Instant::now();
    match connect(endpoint, tls, upstream).await {
        Ok(stream) => {
            balancer.succeeded(&endpoint.addr);
            metrics::handshake(Direction::Outbound, stream.get_ref().1, started);
            Some(stream)
        }
        Err(e) => {
            tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.addr, result = e.label(), "dial failed");
            guard.attempt(Attempt::Failed(e));
            balancer.failed(&endpoint.addr);
            None
        }
    }
}

/// Counts a dialed connection that is ready to carry the app's bytes, as `endpoint`.
pub(crate) fn connected(guard: &mut ConnGuard, endpoint: &Endpoint) {
    guard.attempt(Attempt::Ok);
    guard.set_identity(endpoint.identity.to_uri());
}

/// TCP connect and mTLS handshake, both within the upstream's connect timeout.
async fn connect(
    endpoint: &Endpoint,
    tls: &TlsState,
    upstream: &UpstreamConfig,
) -> Result<TlsStream<TcpStream>, DialError> {
    let Some(config) = tls.client_for(&endpoint.identity, upstream.protocol) else {
        // No leaf or bundle yet: fail closed.
        return Err(DialError::TlsError);
    };
    let attempt = async {
        let tcp = TcpStream::connect(&endpoint.addr)
            .await
            .map_err(|_| DialError::ConnectError)?;
        let _ = tcp.set_nodelay(true);
        let ip = tcp.peer_addr().map_err(|_| DialError::ConnectError)?.ip();
        let tls = TlsConnector::from(config)
            .connect(ServerName::IpAddress(ip.into()), tcp)
            .await
            .map_err(|e| {
                if is_identity_mismatch(&e) {
                    tracing::warn!(endpoint = %endpoint.addr, error = %e, "upstream presented another service's identity");
                    DialError::IdentityMismatch
                } else {
                    DialError::TlsError
                }
            })?;
        if resumed_with_expired_peer(tls.get_ref().1) {
            tracing::debug!(endpoint = %endpoint.addr, "resumed session of an expired certificate");
            return Err(DialError::TlsError);
        }
        Ok(tls)
    };
    tokio::time::timeout(upstream.connect_timeout, attempt)
        .await
        .unwrap_or(Err(DialError::ConnectError))
}
