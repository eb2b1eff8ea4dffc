//! The snapshot: everything the data plane needs at one instant, as plain data.
//!
//! Sources build a new `Snapshot` whenever anything changes and publish it as an
//! `Arc` on a `tokio::sync::watch` channel. Readers clone the `Arc` and never hold a
//! lock; a snapshot is never mutated once published.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

use crate::identity::ServiceId;
use crate::intentions::{Action, Intentions};
use crate::routing::Routing;

/// The roots this proxy trusts, and the trust domain they speak for.
#[derive(Clone, Serialize)]
pub struct TrustBundle {
    pub trust_domain: String,
    #[serde(skip)]
    pub roots: Vec<CertificateDer<'static>>,
    /// Colon-hex serial numbers of the roots, for `/config` and logs.
    pub root_serials: Vec<String>,
    /// Certificates a peer's chain may pass through, never anchors: the roots'
    /// `IntermediateCerts` (a secondary datacenter's signing CA, a rotation's
    /// cross-signed root). A peer should send its own; these cover one that does not.
    #[serde(skip)]
    pub intermediates: Vec<CertificateDer<'static>>,
    /// The bundles of other trust domains this proxy federates with (from the Workload
    /// API), by trust domain name. A peer is verified against the bundle of the trust
    /// domain its own SPIFFE ID names, never against another's.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub federated: BTreeMap<String, Arc<TrustBundle>>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("root_serials", &self.root_serials)
            .field("federated", &self.federated.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// This proxy's own certificate chain and key, ready for rustls.
#[derive(Clone, Serialize)]
pub struct Leaf {
    pub id: ServiceId,
    /// Colon-hex serial, as Consul writes it (`SerialNumber` of the leaf endpoint).
    pub serial: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
    #[serde(skip)]
    pub key: Arc<CertifiedKey>,
}

impl Leaf {
    /// Why this leaf cannot be served at `now` (seconds since the Unix epoch): it has
    /// expired, or is not valid yet. Peers refuse it either way.
    pub fn validity_problem(&self, now: i64) -> Option<String> {
        if now > self.not_after {
            Some(format!("leaf expired at {}", rfc3339(self.not_after)))
        } else if now < self.not_before {
            Some(format!(
                "leaf not valid before {}",
                rfc3339(self.not_before)
            ))
        } else {
            None
        }
    }
}

impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leaf")
            .field("id", &self.id.to_uri())
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The application protocol of a listener: `tcp` is spliced byte for byte (L4), the
/// others are served request by request (L7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    /// HTTP/1.1 or HTTP/2, whichever the client speaks.
    Http,
    Http2,
    Grpc,
}

impl Protocol {
    /// Requests are understood, authorized one by one and measured.
    pub fn is_http(self) -> bool {
        self != Protocol::Tcp
    }

    /// Only HTTP/2 is spoken, on both sides of the proxy.
    pub fn is_http2_only(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

/// The public mTLS listener and the application behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InboundConfig {
    pub bind: SocketAddr,
    /// `host:port` of the local application.
    pub local_app: String,
    pub protocol: Protocol,
    #[serde(serialize_with = "millis")]
    pub handshake_timeout: Duration,
    #[serde(serialize_with = "millis")]
    pub local_connect_timeout: Duration,
    /// L7 only: how long the local app may take to send response headers; `None`: no
    /// limit.
    #[serde(serialize_with = "optional_millis")]
    pub local_request_timeout: Option<Duration>,
    /// No byte either way for this long closes a connection; `None`: never.
    #[serde(serialize_with = "optional_millis")]
    pub idle_timeout: Option<Duration>,
    pub max_connections: usize,
}

/// One instance of an upstream service: where to dial and who must answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// `host:port` of the remote sidecar's mTLS listener.
    pub addr: String,
    /// The SPIFFE ID the remote sidecar's certificate must carry, exactly.
    pub identity: ServiceId,
}

impl Endpoint {
    /// The TLS server name a dial to this endpoint sends: Consul's name for the
    /// destination, computed from the identity it must prove (no service subset).
    pub fn sni(&self) -> String {
        service_sni(&self.identity, None)
    }
}

/// The server name Consul's Envoy sidecars send when they dial a service, and that mesh
/// gateways route on: `[<subset>.]<svc>.<ns>.<dc>.internal.<trust-domain>`, or
/// `[<subset>.]<svc>.<ns>.<partition>.<dc>.internal-v1.<trust-domain>` outside the
/// default partition. An empty namespace or partition is `default`. See
/// `docs/consul-semantics.md#on-the-wire`.
pub fn service_sni(id: &ServiceId, subset: Option<&str>) -> String {
    let or_default = |s: &str| {
        if s.is_empty() {
            crate::identity::DEFAULT.to_owned()
        } else {
            s.to_owned()
        }
    };
    let (namespace, partition) = (or_default(&id.namespace), or_default(&id.partition));
    let (svc, dc, td) = (&id.service, &id.datacenter, &id.trust_domain);
    let name = if partition == crate::identity::DEFAULT {
        format!("{svc}.{namespace}.{dc}.internal.{td}")
    } else {
        format!("{svc}.{namespace}.{partition}.{dc}.internal-v1.{td}")
    };
    match subset.filter(|s| !s.is_empty()) {
        Some(subset) => format!("{subset}.{name}"),
        None => name,
    }
}

/// The server name Consul's Envoy sidecars send to the instances a prepared query
/// selects: `<query>.default.<dc>.query.<trust-domain>`, `dc` being the upstream's
/// datacenter (else the local one) whichever datacenter answers the query. See
/// `docs/consul-semantics.md#prepared-queries`.
pub fn query_sni(query: &str, dc: &str, trust_domain: &str) -> String {
    format!("{query}.default.{dc}.query.{trust_domain}")
}

/// A local plaintext listener that carries the application's calls to a destination.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamConfig {
    /// The destination service name; also the `upstream` metric label.
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: Protocol,
    #[serde(serialize_with = "millis")]
    pub connect_timeout: Duration,
    /// L7 only: how long the destination may take to send response headers; `None`: no
    /// limit.
    #[serde(serialize_with = "optional_millis")]
    pub request_timeout: Option<Duration>,
    #[serde(serialize_with = "optional_millis")]
    pub idle_timeout: Option<Duration>,
    pub max_connections: usize,
    /// Where its traffic goes: routes, splits, clusters and their targets' instances.
    pub routing: Arc<Routing>,
}

impl UpstreamConfig {
    /// Every instance of every target, each once, in the routing's order.
    pub fn all_endpoints(&self) -> Vec<&Endpoint> {
        self.routing.targets().flat_map(|t| &t.endpoints).collect()
    }
}

/// Where the default intention action came from, shown at `/config`.
#[derive(Debug, Clone, Serialize)]
pub struct DefaultAction {
    pub action: Action,
    pub source: &'static str,
}

/// Everything the proxy acts on. `None` means "not loaded yet": the proxy fails closed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub bundle: Option<Arc<TrustBundle>>,
    pub leaf: Option<Arc<Leaf>>,
    #[serde(serialize_with = "intentions_as_text")]
    pub intentions: Option<Arc<Intentions>>,
    pub inbound: Option<InboundConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub default_action: Option<DefaultAction>,
    /// Why the source cannot complete this snapshot yet, as `/ready` says it: the agent
    /// does not answer (and its error), no such registration, no SVID from the Workload
    /// API yet. Empty when the source knows of nothing in the way.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<String>,
    /// Access logging, while enabled (`docs/consul-semantics.md#access-logs`); a
    /// change applies to the records that come after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_logs: Option<Arc<crate::access_log::AccessLogs>>,
    /// How the inbound L7 side normalizes a request before intentions see it
    /// (`docs/consul-semantics.md#request-normalization`).
    pub request_normalization: crate::normalization::RequestNormalization,
    /// The public Prometheus listener, when one is configured
    /// (`docs/consul-semantics.md#prometheus`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusListener>,
}

/// A listener that answers `/metrics` and `/stats/prometheus` and nothing else: what
/// Consul's `envoy_prometheus_bind_addr` asks of an Envoy sidecar, or static mode's
/// `prometheus_bind_addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PrometheusListener {
    pub bind: SocketAddr,
    /// Whether a bind failure before the first complete snapshot stops the process, as
    /// for every other listener (static mode: the address is this proxy's own file's);
    /// otherwise (Consul mode, where `proxy-defaults` may give every sidecar of a host
    /// the same address) it is warned about, retried, and named by `/ready`.
    pub required: bool,
}

impl Snapshot {
    /// Identity and bundle are loaded, and intentions too if there is an inbound side.
    pub fn is_complete(&self) -> bool {
        self.bundle.is_some()
            && self.leaf.is_some()
            && (self.inbound.is_none() || self.intentions.is_some())
    }

    /// The upstream listener named `name`, if this snapshot still has one.
    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("no certificate found")]
    NoCertificate,
    #[error("bad PEM: {0}")]
    Pem(String),
    #[error("no private key found")]
    NoKey,
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("private key does not match the certificate: {0}")]
    KeyMismatch(rustls::Error),
    #[error("leaf identity: {0}")]
    Identity(String),
}

/// Every certificate in a PEM text, in order.
pub fn parse_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(certs)
}

/// A trust bundle from PEM roots. The trust domain is the caller's: roots from some
/// providers carry no SPIFFE URI.
pub fn parse_bundle(pem: &[u8], trust_domain: &str) -> Result<TrustBundle, PemError> {
    bundle_from_der(parse_certificates(pem)?, trust_domain)
}

/// A trust bundle from DER roots, as the Workload API sends them; without federated
/// bundles.
pub fn bundle_from_der(
    roots: Vec<CertificateDer<'static>>,
    trust_domain: &str,
) -> Result<TrustBundle, PemError> {
    if roots.is_empty() {
        return Err(PemError::NoCertificate);
    }
    let root_serials = roots
        .iter()
        .map(|c| cert_facts(c).map(|f| f.serial))
        .collect::<Result<_, _>>()?;
    Ok(TrustBundle {
        trust_domain: trust_domain.to_owned(),
        roots,
        root_serials,
        intermediates: Vec::new(),
        federated: BTreeMap::new(),
    })
}

/// A leaf from PEM: chain (leaf first, then intermediates) and key (PKCS#8, SEC1 or
/// RSA). Refuses a key that does not belong to the certificate, so a half-written
/// rotation is never served.
pub fn parse_leaf(
    chain_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<Leaf, PemError> {
    let chain = parse_certificates(chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PemError::NoKey,
        other => PemError::Pem(other.to_string()),
    })?;
    leaf_from_der(chain, key, provider)
}

/// A leaf from DER, as the Workload API sends it: the chain (leaf first) and its key.
/// The same checks as [`parse_leaf`].
pub fn leaf_from_der(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<Leaf, PemError> {
    if chain.is_empty() {
        return Err(PemError::NoCertificate);
    }
    let facts = cert_facts(&chain[0])?;
    let spiffe = spiffe::cert::spiffe_id_from_der(&chain[0])
        .map_err(|e| PemError::Identity(e.to_string()))?;
    let id = ServiceId::from_spiffe(&spiffe).map_err(|e| PemError::Identity(e.to_string()))?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(PemError::KeyMismatch)?;
    Ok(Leaf {
        id,
        serial: facts.serial,
        not_before: facts.not_before,
        not_after: facts.not_after,
        key: Arc::new(key),
    })
}

struct CertFacts {
    serial: String,
    not_before: i64,
    not_after: i64,
}

fn cert_facts(der: &CertificateDer<'_>) -> Result<CertFacts, PemError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PemError::Certificate(e.to_string()))?;
    Ok(CertFacts {
        serial: colon_hex(cert.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Consul's serial spelling: lowercase hex bytes joined by colons, leading zero bytes
/// dropped but at least one byte kept.
pub fn colon_hex(bytes: &[u8]) -> String {
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    bytes[first..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`2025-01-02T03:04:05Z`), for messages.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{unix} (Unix time)"))
}

/// Seconds since the Unix epoch, now.
pub fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Seconds since the Unix epoch, for metrics.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Intentions at `/config`: one line per rule, in evaluation order.
fn intentions_as_text<S: serde::Serializer>(
    ixns: &Option<Arc<Intentions>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let rules: Option<Vec<String>> = ixns
        .as_ref()
        .map(|ixns| ixns.rules().iter().map(|r| r.to_string()).collect());
    rules.serialize(s)
}

pub(crate) fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `0` for no limit, as in the config keys.
pub(crate) fn optional_millis<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    millis(&d.unwrap_or(Duration::ZERO), s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_is_consuls_service_name() {
        let id = |ap: &str, ns: &str| ServiceId {
            trust_domain: "11111111-2222-3333-4444-555555555555.consul".to_owned(),
            partition: ap.to_owned(),
            namespace: ns.to_owned(),
            datacenter: "dc2".to_owned(),
            service: "api".to_owned(),
        };
        let td = "11111111-2222-3333-4444-555555555555.consul";
        let cases = [
            (
                id("default", "default"),
                None,
                format!("api.default.dc2.internal.{td}"),
            ),
            (id("", ""), None, format!("api.default.dc2.internal.{td}")),
            (
                id("", "team"),
                Some("v2"),
                format!("v2.api.team.dc2.internal.{td}"),
            ),
            (
                id("default", "default"),
                Some(""),
                format!("api.default.dc2.internal.{td}"),
            ),
            (
                id("part1", ""),
                None,
                format!("api.default.part1.dc2.internal-v1.{td}"),
            ),
            (
                id("part1", "ns1"),
                Some("v1"),
                format!("v1.api.ns1.part1.dc2.internal-v1.{td}"),
            ),
        ];
        for (id, subset, want) in cases {
            assert_eq!(service_sni(&id, subset), want, "{id:?} {subset:?}");
        }
        let endpoint = Endpoint {
            addr: "127.0.0.1:1".to_owned(),
            identity: id("default", "default"),
        };
        assert_eq!(endpoint.sni(), format!("api.default.dc2.internal.{td}"));
        assert_eq!(
            query_sni("geo-db", "dc1", td),
            format!("geo-db.default.dc1.query.{td}")
        );
    }

    #[test]
    fn colon_hex_matches_consul() {
        assert_eq!(colon_hex(&[8]), "08");
        assert_eq!(colon_hex(&[0, 0x1a, 0x2b]), "1a:2b");
        assert_eq!(colon_hex(&[0]), "00");
        assert_eq!(colon_hex(&[]), "");
    }

    #[test]
    fn garbage_pem_is_refused() {
        assert!(matches!(
            parse_certificates(b"not a pem"),
            Err(PemError::NoCertificate)
        ));
        let bad = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(parse_bundle(bad, "td").is_err());
    }
}
