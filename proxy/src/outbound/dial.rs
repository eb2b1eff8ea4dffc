//! The one dial of the outbound direction, for L4 connections and L7 pools alike: TCP
//! connect and mTLS handshake within the cluster's connect timeout, sending the
//! target's server name (SNI: Consul's name for the service, or its subset) and the
//! ALPN the upstream's protocol allows, the server's SVID exactly the endpoint's
//! expected identity (the target's), and everything a dial records: the handshake
//! metric, the endpoint's standing with the target's balancer, a failed attempt on the
//! connection's guard, and why it failed, in a rate-limited warning (`crate::warnings`).

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrule_control::model::{Endpoint, Protocol};
use ferrule_control::routing::Target;
use rustls::{AlertDescription, CertificateError};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::balance::Balancer;
use crate::metrics::{self, Attempt, ConnGuard, DialError, Direction};
use crate::tls::{PeerIdentityMismatch, TlsState, resumed_with_expired_peer};
use crate::warnings;

/// What a dial is for: which upstream listener, which target of which cluster, and
/// that cluster's connect timeout.
pub(crate) struct DialTo<'a> {
    pub(crate) upstream: &'a str,
    pub(crate) protocol: Protocol,
    pub(crate) target: &'a Target,
    pub(crate) connect_timeout: Duration,
}

/// Dials `endpoint` and records the outcome. A failure is counted on `guard` as a
/// failed attempt and the endpoint goes to the back of the balancer's order; a success
/// is left for the caller to count with `connected`, once the connection is usable.
pub(crate) async fn dial(
    to: &DialTo<'_>,
    endpoint: &Endpoint,
    tls: &TlsState,
    balancer: &Balancer,
    guard: &mut ConnGuard,
) -> Option<TlsStream<TcpStream>> {
    let started = Instant::now();
    guard.set_target(&to.target.id);
    match connect(to, endpoint, tls).await {
        Ok(stream) => {
            balancer.succeeded(&endpoint.addr);
            metrics::handshake(Direction::Outbound, stream.get_ref().1, started);
            Some(stream)
        }
        Err(failure) => {
            tracing::debug!(upstream = %to.upstream, target = %to.target.id, endpoint = %endpoint.addr, result = failure.error.label(), why = %failure.why, "dial failed");
            if let Some(suppressed) = WARNINGS.admit(to.upstream) {
                tracing::warn!(
                    upstream = %to.upstream,
                    target = %to.target.id,
                    endpoint = %endpoint.addr,
                    result = failure.error.label(),
                    suppressed,
                    "dial failed: {}{}",
                    failure.why,
                    warnings::suppressed(suppressed)
                );
            }
            guard.attempt(Attempt::Failed(failure.error));
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

/// The server name sent to an instance of `target`: Consul's name for the target (its
/// subset included), or, should that not be a valid DNS name, the address dialed (which
/// rustls never sends as SNI).
fn server_name(target: &Target, ip: IpAddr) -> ServerName<'static> {
    ServerName::try_from(target.sni.clone()).unwrap_or_else(|_| ServerName::IpAddress(ip.into()))
}

/// A failed dial: its metric label and, for the log, why.
struct Failure {
    error: DialError,
    why: Why,
}

/// Why a dial failed, in the terms an operator acts on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Why {
    NoConfig,
    Refused,
    Connect(std::io::ErrorKind),
    Timeout,
    UnknownCa,
    Expired,
    IdentityMismatch {
        expected: String,
        got: String,
    },
    NoAlpnOverlap,
    /// The server's alert about our certificate (unknown CA, bad, expired...).
    RefusedOurs(AlertDescription),
    ResumedExpired,
    Tls(String),
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::NoConfig => f.write_str("no leaf or trust bundle loaded yet"),
            Why::Refused => f.write_str("connection refused"),
            Why::Connect(kind) => write!(f, "TCP connect failed: {kind}"),
            Why::Timeout => f.write_str("connect or handshake timed out"),
            Why::UnknownCa => f.write_str("the server's certificate is not signed by a trusted CA"),
            Why::Expired => f.write_str("the server's certificate has expired"),
            Why::IdentityMismatch { expected, got } => {
                write!(
                    f,
                    "identity mismatch: expected {expected}, the server presented {got}"
                )
            }
            Why::NoAlpnOverlap => {
                f.write_str("no ALPN overlap: the server speaks none of the protocols offered")
            }
            Why::RefusedOurs(alert) => {
                write!(f, "the server refused our certificate (alert {alert:?})")
            }
            Why::ResumedExpired => f.write_str("resumed a session of an expired certificate"),
            Why::Tls(e) => write!(f, "TLS handshake failed: {e}"),
        }
    }
}

impl Why {
    /// Sorts a failed handshake's error.
    fn of_handshake(e: &std::io::Error) -> Why {
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
            return Why::Tls(e.to_string());
        };
        match tls {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => Why::UnknownCa,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => Why::Expired,
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                match other.0.downcast_ref::<PeerIdentityMismatch>() {
                    Some(m) => Why::IdentityMismatch {
                        expected: m.expected.clone(),
                        got: m.got.clone(),
                    },
                    None => Why::Tls(tls.to_string()),
                }
            }
            rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol)
            | rustls::Error::NoApplicationProtocol => Why::NoAlpnOverlap,
            rustls::Error::AlertReceived(
                alert @ (AlertDescription::UnknownCA
                | AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRequired
                | AlertDescription::AccessDenied),
            ) => Why::RefusedOurs(*alert),
            other => Why::Tls(other.to_string()),
        }
    }

    fn error(&self) -> DialError {
        match self {
            Why::Refused | Why::Connect(_) | Why::Timeout => DialError::ConnectError,
            Why::IdentityMismatch { .. } => DialError::IdentityMismatch,
            _ => DialError::TlsError,
        }
    }

    fn failure(self) -> Failure {
        Failure {
            error: self.error(),
            why: self,
        }
    }
}

/// TCP connect and mTLS handshake, both within the cluster's connect timeout.
async fn connect(
    to: &DialTo<'_>,
    endpoint: &Endpoint,
    tls: &TlsState,
) -> Result<TlsStream<TcpStream>, Failure> {
    let Some(config) = tls.client_for(endpoint, to.protocol) else {
        // No leaf or bundle yet: fail closed.
        return Err(Why::NoConfig.failure());
    };
    let attempt = async {
        let tcp = TcpStream::connect(&endpoint.addr).await.map_err(|e| {
            match e.kind() {
                std::io::ErrorKind::ConnectionRefused => Why::Refused,
                kind => Why::Connect(kind),
            }
            .failure()
        })?;
        let _ = tcp.set_nodelay(true);
        let ip = tcp
            .peer_addr()
            .map_err(|e| Why::Connect(e.kind()).failure())?
            .ip();
        let tls = TlsConnector::from(config)
            .connect(server_name(to.target, ip), tcp)
            .await
            .map_err(|e| Why::of_handshake(&e).failure())?;
        if resumed_with_expired_peer(tls.get_ref().1) {
            return Err(Why::ResumedExpired.failure());
        }
        Ok(tls)
    };
    tokio::time::timeout(to.connect_timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(Why::Timeout.failure()))
}

/// Dial failures' warnings, one kind per upstream, every 10 s (as the README says): a
/// black-holed upstream under load fails thousands of dials a second.
static WARNINGS: warnings::Limiter = warnings::Limiter::new(Duration::from_secs(10));

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_control::identity::ServiceId;

    #[test]
    fn the_server_name_is_the_targets_and_never_the_address() {
        let identity = ServiceId::new("abc.consul", "default", "dc1", "api");
        let ip = IpAddr::from([127, 0, 0, 1]);
        let whole = Target::new(identity.clone(), None, Vec::new());
        assert_eq!(
            server_name(&whole, ip).to_str(),
            "api.default.dc1.internal.abc.consul"
        );
        let subset = Target::new(identity, Some("v2"), Vec::new());
        assert_eq!(
            server_name(&subset, ip).to_str(),
            "v2.api.default.dc1.internal.abc.consul"
        );
    }

    #[test]
    fn failures_say_why() {
        let io = |e: rustls::Error| std::io::Error::other(e);
        let cases = [
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                Why::UnknownCa,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                Why::Expired,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol),
                Why::NoAlpnOverlap,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::UnknownCA),
                Why::RefusedOurs(AlertDescription::UnknownCA),
            ),
        ];
        for (error, want) in cases {
            assert_eq!(Why::of_handshake(&io(error)), want);
        }
        let mismatch = PeerIdentityMismatch {
            expected: "spiffe://td/ns/default/dc/dc1/svc/api".to_owned(),
            got: "spiffe://td/ns/default/dc/dc1/svc/web".to_owned(),
        };
        let other = rustls::OtherError(std::sync::Arc::new(mismatch));
        let why = Why::of_handshake(&io(rustls::Error::InvalidCertificate(
            CertificateError::Other(other),
        )));
        assert_eq!(why.error(), DialError::IdentityMismatch);
        let line = why.to_string();
        assert!(
            line.contains("svc/api") && line.contains("svc/web"),
            "{line}"
        );
        assert_eq!(Why::Timeout.error(), DialError::ConnectError);
        assert_eq!(Why::Refused.error(), DialError::ConnectError);
    }
}
