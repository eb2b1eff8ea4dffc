//! SVID verification: who a peer is, and whether its certificate proves it.
//!
//! A peer is accepted when its leaf carries exactly one URI SAN, that SAN is a Consul
//! service SPIFFE ID, and its chain verifies (rustls-webpki: valid now, end-entity not
//! CA, right extended key usage) against the bundle of the trust domain that ID names:
//! ours, or one we federate with (from the Workload API). The ID is read first only to
//! pick those anchors; a peer is never checked against another domain's roots, so a
//! domain's CA cannot vouch for names of another. When we dial, the server must also be
//! exactly the identity we expect (a `PeerIdentityMismatch` otherwise). Host names are
//! never checked: Consul leaves carry none. See `docs/consul-semantics.md#identity`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use ferrule_control::identity::ServiceId;
use ferrule_control::model::TrustBundle;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

/// Why a peer's certificate was refused.
#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    #[error("certificate chain: {0}")]
    Chain(webpki::Error),
    #[error("not an X.509-SVID: {0}")]
    NotSvid(String),
    #[error("SPIFFE ID {got} is neither of trust domain {want} nor of one we federate with")]
    ForeignTrustDomain { want: String, got: String },
}

/// The server is a valid mesh member, but not the one we dialed for.
#[derive(Debug, thiserror::Error)]
#[error("peer identity mismatch: expected {expected}, got {got}")]
pub struct PeerIdentityMismatch {
    pub expected: String,
    pub got: String,
}

/// What the verifiers need: the anchors of our bundle and of the federated ones, and
/// the crypto to check with.
pub(super) struct Anchors {
    trust_domain: String,
    own: DomainRoots,
    /// By trust domain name.
    federated: HashMap<String, DomainRoots>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// One trust domain's roots: every root is an anchor (active or not), and the bundle's
/// intermediates are candidates for the path, after those the peer sent.
struct DomainRoots {
    anchors: Vec<TrustAnchor<'static>>,
    intermediates: Vec<CertificateDer<'static>>,
}

impl DomainRoots {
    fn of(bundle: &TrustBundle) -> DomainRoots {
        DomainRoots {
            anchors: trust_anchors(&bundle.roots),
            intermediates: bundle.intermediates.clone(),
        }
    }
}

fn trust_anchors(roots: &[CertificateDer<'static>]) -> Vec<TrustAnchor<'static>> {
    roots
        .iter()
        .filter_map(|der| match webpki::anchor_from_trusted_cert(der) {
            Ok(anchor) => Some(anchor.to_owned()),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a root that is not a usable trust anchor");
                None
            }
        })
        .collect()
}

impl Anchors {
    pub(super) fn new(bundle: &TrustBundle, provider: &CryptoProvider) -> Anchors {
        Anchors {
            trust_domain: bundle.trust_domain.clone(),
            own: DomainRoots::of(bundle),
            federated: bundle
                .federated
                .iter()
                .map(|(td, b)| (td.clone(), DomainRoots::of(b)))
                .collect(),
            algorithms: provider.signature_verification_algorithms,
        }
    }

    /// The roots of `trust_domain`, if we trust it at all.
    fn of(&self, trust_domain: &str) -> Option<&DomainRoots> {
        if trust_domain == self.trust_domain {
            Some(&self.own)
        } else {
            self.federated.get(trust_domain)
        }
    }

    /// Verifies a presented chain and returns the peer's service identity.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<ServiceId, SvidError> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(SvidError::Chain)?;
        // Unverified until the chain is: only used to choose whose roots must vouch.
        let id = peer_identity(end_entity)?;
        let roots = self
            .of(&id.trust_domain)
            .ok_or_else(|| SvidError::ForeignTrustDomain {
                want: self.trust_domain.clone(),
                got: id.to_uri(),
            })?;
        // What the peer sent first, then the bundle's own intermediates.
        let candidates: Vec<CertificateDer<'_>>;
        let intermediates = if roots.intermediates.is_empty() {
            intermediates
        } else {
            candidates = intermediates
                .iter()
                .chain(&roots.intermediates)
                .map(|c| CertificateDer::from(c.as_ref()))
                .collect();
            &candidates
        };
        cert.verify_for_usage(
            self.algorithms.all,
            &roots.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(SvidError::Chain)?;
        Ok(id)
    }
}

/// The service identity in an (already verified) leaf: exactly one URI SAN, a SPIFFE
/// ID, a Consul service path.
pub fn peer_identity(end_entity: &CertificateDer<'_>) -> Result<ServiceId, SvidError> {
    let id = spiffe::cert::spiffe_id_from_der(end_entity)
        .map_err(|e| SvidError::NotSvid(e.to_string()))?;
    ServiceId::from_spiffe(&id).map_err(|e| SvidError::NotSvid(e.to_string()))
}

fn to_rustls(e: SvidError) -> rustls::Error {
    let cert_error = match e {
        SvidError::Chain(webpki::Error::CertExpired { .. }) => CertificateError::Expired,
        SvidError::Chain(webpki::Error::CertNotValidYet { .. }) => CertificateError::NotValidYet,
        SvidError::Chain(webpki::Error::UnknownIssuer) => CertificateError::UnknownIssuer,
        SvidError::Chain(webpki::Error::InvalidSignatureForPublicKey) => {
            CertificateError::BadSignature
        }
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(cert_error)
}

/// Verifies callers on the inbound listener.
pub(super) struct ClientSvidVerifier(pub(super) Arc<Anchors>);

impl fmt::Debug for ClientSvidVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientSvidVerifier({})", self.0.trust_domain)
    }
}

impl ClientCertVerifier for ClientSvidVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .verify(
                end_entity,
                intermediates,
                now,
                webpki::KeyUsage::client_auth(),
            )
            .map(|_| ClientCertVerified::assertion())
            .map_err(to_rustls)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms.supported_schemes()
    }
}

/// Verifies the server we dialed: a valid SVID of exactly the expected identity.
pub(super) struct ServerSvidVerifier {
    pub(super) anchors: Arc<Anchors>,
    pub(super) expected: ServiceId,
}

impl fmt::Debug for ServerSvidVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerSvidVerifier({})", self.expected)
    }
}

impl ServerCertVerifier for ServerSvidVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = self
            .anchors
            .verify(
                end_entity,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
            )
            .map_err(to_rustls)?;
        if got == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            let mismatch = PeerIdentityMismatch {
                expected: self.expected.to_uri(),
                got: got.to_uri(),
            };
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(mismatch)),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.anchors.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.anchors.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.anchors.algorithms.supported_schemes()
    }
}

/// The inbound listener's SVID check, outside a handshake: what the microbenchmarks
/// (`cargo bench -p ferrule`) time, and what a tool can use to check a certificate.
pub struct SvidVerifier(Anchors);

impl SvidVerifier {
    pub fn new(bundle: &TrustBundle, provider: &CryptoProvider) -> SvidVerifier {
        SvidVerifier(Anchors::new(bundle, provider))
    }

    /// Verifies a caller's chain (leaf first) now, as a client certificate.
    pub fn verify_client(&self, chain: &[CertificateDer<'_>]) -> Result<ServiceId, SvidError> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(SvidError::NotSvid("empty certificate chain".into()));
        };
        self.0.verify(
            leaf,
            intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
        )
    }
}

/// Sorts a failed handshake into the metric label it belongs to.
pub fn is_identity_mismatch(e: &std::io::Error) -> bool {
    let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return false;
    };
    other.0.downcast_ref::<PeerIdentityMismatch>().is_some()
}
#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_control::model::{parse_bundle, parse_certificates};
    use ferrule_dev::ca::{DevCa, LeafSpec};

    fn provider() -> Arc<CryptoProvider> {
        super::super::provider()
    }

    struct Fixture {
        ca: DevCa,
        anchors: Anchors,
    }

    fn fixture() -> Fixture {
        let ca = DevCa::generate(None).unwrap();
        let bundle = parse_bundle(ca.cert_pem().as_bytes(), &ca.trust_domain()).unwrap();
        let anchors = Anchors::new(&bundle, &provider());
        Fixture { ca, anchors }
    }

    fn chain(ca: &DevCa, spec: &LeafSpec) -> Vec<CertificateDer<'static>> {
        parse_certificates(ca.issue(spec).unwrap().cert_pem.as_bytes()).unwrap()
    }

    fn verify(
        anchors: &Anchors,
        chain: &[CertificateDer<'static>],
    ) -> Result<ServiceId, SvidError> {
        anchors.verify(
            &chain[0],
            &chain[1..],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
        )
    }

    #[test]
    fn a_good_svid_yields_its_service_identity() {
        let f = fixture();
        let id = verify(&f.anchors, &chain(&f.ca, &LeafSpec::service("web"))).unwrap();
        assert_eq!(id.service, "web");
        assert_eq!(id.trust_domain, f.ca.trust_domain());
        // The same certificate serves as a server certificate too (Consul's EKU has both).
        let c = chain(&f.ca, &LeafSpec::service("api"));
        f.anchors
            .verify(&c[0], &[], UnixTime::now(), webpki::KeyUsage::server_auth())
            .unwrap();
    }

    #[test]
    fn every_bad_certificate_is_refused() {
        let f = fixture();
        let other_ca = DevCa::generate(None).unwrap();
        let same_td_other_root = DevCa::generate(Some(f.ca.cluster_id())).unwrap();
        let expired = LeafSpec {
            not_before: Some(time::OffsetDateTime::now_utc() - time::Duration::days(10)),
            ttl: time::Duration::hours(1),
            ..LeafSpec::service("web")
        };
        let future = LeafSpec {
            not_before: Some(time::OffsetDateTime::now_utc() + time::Duration::days(1)),
            ..LeafSpec::service("web")
        };
        let ca_leaf = LeafSpec {
            is_ca: true,
            ..LeafSpec::service("web")
        };
        let two_uris = LeafSpec {
            extra_uri_sans: vec![format!(
                "spiffe://{}/ns/default/dc/dc1/svc/admin",
                f.ca.trust_domain()
            )],
            ..LeafSpec::service("web")
        };
        let not_spiffe = LeafSpec {
            uri_override: Some("https://example.com/web".into()),
            ..LeafSpec::service("web")
        };
        let not_a_service = LeafSpec {
            uri_override: Some(format!(
                "spiffe://{}/agent/client/dc/dc1/id/node1",
                f.ca.trust_domain()
            )),
            ..LeafSpec::service("web")
        };
        let cases: Vec<(&str, Vec<CertificateDer<'static>>)> = vec![
            ("other CA", chain(&other_ca, &LeafSpec::service("web"))),
            (
                "same trust domain, other root",
                chain(&same_td_other_root, &LeafSpec::service("web")),
            ),
            ("expired", chain(&f.ca, &expired)),
            ("not yet valid", chain(&f.ca, &future)),
            ("CA certificate as leaf", chain(&f.ca, &ca_leaf)),
            ("two URI SANs", chain(&f.ca, &two_uris)),
            ("non-spiffe URI", chain(&f.ca, &not_spiffe)),
            ("agent identity", chain(&f.ca, &not_a_service)),
            ("the root itself", vec![f.ca.cert_der().clone()]),
        ];
        for (what, chain) in cases {
            assert!(verify(&f.anchors, &chain).is_err(), "{what} was accepted");
        }
    }

    #[test]
    fn a_foreign_trust_domain_is_refused_even_when_signed_by_our_root() {
        let f = fixture();
        let foreign = LeafSpec {
            uri_override: Some("spiffe://other.consul/ns/default/dc/dc1/svc/web".into()),
            ..LeafSpec::service("web")
        };
        let err = verify(&f.anchors, &chain(&f.ca, &foreign)).unwrap_err();
        assert!(matches!(err, SvidError::ForeignTrustDomain { .. }), "{err}");
    }

    /// Our anchors with `federated` CAs' bundles beside our own.
    fn federated_anchors(ours: &DevCa, federated: &[&DevCa]) -> Anchors {
        let mut bundle = parse_bundle(ours.cert_pem().as_bytes(), &ours.trust_domain()).unwrap();
        for ca in federated {
            let fed = parse_bundle(ca.cert_pem().as_bytes(), &ca.trust_domain()).unwrap();
            bundle.federated.insert(ca.trust_domain(), Arc::new(fed));
        }
        Anchors::new(&bundle, &provider())
    }

    fn claiming(ca_of_uri: &DevCa, service: &str) -> LeafSpec {
        LeafSpec {
            uri_override: Some(format!(
                "spiffe://{}/ns/default/dc/dc1/svc/{service}",
                ca_of_uri.trust_domain()
            )),
            ..LeafSpec::service(service)
        }
    }

    #[test]
    fn a_federated_peer_is_verified_against_its_own_domains_bundle_only() {
        let ours = DevCa::generate(None).unwrap();
        let theirs = DevCa::generate(None).unwrap();
        let stranger = DevCa::generate(None).unwrap();
        let anchors = federated_anchors(&ours, &[&theirs]);

        let id = verify(&anchors, &chain(&theirs, &LeafSpec::service("web"))).unwrap();
        assert_eq!(id.trust_domain, theirs.trust_domain());
        assert_eq!(id.service, "web");
        verify(&anchors, &chain(&ours, &LeafSpec::service("web"))).unwrap();

        // A name of our domain signed by theirs, and theirs signed by ours: both refused,
        // though each CA is trusted for its own domain.
        let err = verify(&anchors, &chain(&theirs, &claiming(&ours, "web"))).unwrap_err();
        assert!(
            matches!(err, SvidError::Chain(webpki::Error::UnknownIssuer)),
            "{err}"
        );
        let err = verify(&anchors, &chain(&ours, &claiming(&theirs, "web"))).unwrap_err();
        assert!(
            matches!(err, SvidError::Chain(webpki::Error::UnknownIssuer)),
            "{err}"
        );

        // A domain we do not federate with, even one signed by a CA we trust.
        let err = verify(&anchors, &chain(&stranger, &LeafSpec::service("web"))).unwrap_err();
        assert!(matches!(err, SvidError::ForeignTrustDomain { .. }), "{err}");
        let err = verify(&anchors, &chain(&theirs, &claiming(&stranger, "web"))).unwrap_err();
        assert!(matches!(err, SvidError::ForeignTrustDomain { .. }), "{err}");

        // Without their bundle, their peers are foreign.
        let alone = federated_anchors(&ours, &[]);
        let err = verify(&alone, &chain(&theirs, &LeafSpec::service("web"))).unwrap_err();
        assert!(matches!(err, SvidError::ForeignTrustDomain { .. }), "{err}");
    }

    #[test]
    fn an_upstream_in_a_federated_domain_is_dialed_by_its_exact_identity() {
        let ours = DevCa::generate(None).unwrap();
        let theirs = DevCa::generate(None).unwrap();
        let expected = ServiceId::new(&theirs.trust_domain(), "default", "dc1", "api");
        let verifier = ServerSvidVerifier {
            anchors: Arc::new(federated_anchors(&ours, &[&theirs])),
            expected,
        };
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let check = |ca: &DevCa, spec: &LeafSpec| {
            let c = chain(ca, spec);
            verifier.verify_server_cert(&c[0], &c[1..], &name, &[], UnixTime::now())
        };
        assert!(check(&theirs, &LeafSpec::service("api")).is_ok());
        assert!(check(&theirs, &LeafSpec::service("db")).is_err());
        assert!(check(&ours, &claiming(&theirs, "api")).is_err());
        assert!(check(&ours, &LeafSpec::service("api")).is_err());
    }

    #[test]
    fn the_server_must_be_exactly_the_expected_identity() {
        let f = fixture();
        let anchors = Arc::new(f.anchors);
        let expected = ServiceId::new(&f.ca.trust_domain(), "default", "dc1", "api");
        let verifier = ServerSvidVerifier {
            anchors,
            expected: expected.clone(),
        };
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let check = |spec: &LeafSpec| {
            let c = chain(&f.ca, spec);
            verifier.verify_server_cert(&c[0], &c[1..], &name, &[], UnixTime::now())
        };
        assert!(check(&LeafSpec::service("api")).is_ok());
        for wrong in [
            LeafSpec::service("db"),
            LeafSpec {
                datacenter: "dc2".into(),
                ..LeafSpec::service("api")
            },
            LeafSpec {
                namespace: "billing".into(),
                ..LeafSpec::service("api")
            },
        ] {
            let err = check(&wrong).unwrap_err();
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
            assert!(is_identity_mismatch(&io), "{io}");
        }
        // A chain failure is a TLS error, not an identity mismatch.
        let other = DevCa::generate(None).unwrap();
        let c = chain(&other, &LeafSpec::service("api"));
        let err = verifier
            .verify_server_cert(&c[0], &[], &name, &[], UnixTime::now())
            .unwrap_err();
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
        assert!(!is_identity_mismatch(&io));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Flipped bytes anywhere in a good SVID, or bytes of no certificate at all:
        /// never a panic, and nothing but the original's identity ever comes out.
        #[test]
        fn svid_verification_on_arbitrary_der_never_panics_or_admits_a_forgery(
            flips in proptest::collection::vec((0usize..4096, 1u8..=255), 1..4),
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        ) {
            let f = fixture_once();
            let mut der = f.leaf[0].to_vec();
            for (at, xor) in &flips {
                let at = at % der.len();
                der[at] ^= xor;
            }
            let mutated = CertificateDer::from(der);
            if let Ok(id) = verify(&f.anchors, std::slice::from_ref(&mutated)) {
                proptest::prop_assert_eq!(id.service.as_str(), "web");
            }
            let _ = peer_identity(&mutated);
            let junk = CertificateDer::from(noise);
            proptest::prop_assert!(verify(&f.anchors, std::slice::from_ref(&junk)).is_err());
            let _ = peer_identity(&junk);
        }
    }

    struct Once {
        anchors: Anchors,
        leaf: Vec<CertificateDer<'static>>,
    }

    fn fixture_once() -> &'static Once {
        static ONCE: std::sync::OnceLock<Once> = std::sync::OnceLock::new();
        ONCE.get_or_init(|| {
            let f = fixture();
            let leaf = chain(&f.ca, &LeafSpec::service("web"));
            Once {
                anchors: f.anchors,
                leaf,
            }
        })
    }
}
