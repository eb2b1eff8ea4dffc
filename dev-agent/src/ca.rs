//! The development certificate authority: a root and the service leaves it signs, shaped
//! like the certificates of Consul's built-in CA (`docs/consul-semantics.md#identity`).
//!
//! `cargo xtask certs` writes its output to disk, the end-to-end tests mint good and
//! deliberately bad leaves with it (the `LeafSpec` knobs), and the embedded dev agent
//! serves its leaves from `/v1/agent/connect/ca/leaf`. Keys and PEM come out in the same
//! formats Consul's agent returns (SEC1 `EC PRIVATE KEY`, colon-hex serials and key IDs),
//! so code that reads them cannot tell the dev CA from a real cluster.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use aws_lc_rs::{digest, rand};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
    SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use ferrule_control::identity::{DEFAULT, ServiceId};

/// Consul's default `root_cert_ttl` (87600h).
pub const ROOT_TTL: Duration = Duration::hours(87_600);
/// Consul's default `leaf_cert_ttl`.
pub const LEAF_TTL: Duration = Duration::hours(72);
/// Consul backdates NotBefore by a minute so a peer whose clock lags a little accepts a
/// brand-new certificate.
const BACKDATE: Duration = Duration::minutes(1);

const CERT_TAG: &str = "CERTIFICATE";
const SEC1_TAG: &str = "EC PRIVATE KEY";
const PKCS8_TAG: &str = "PRIVATE KEY";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cluster id {0:?} is not a UUID")]
    ClusterId(String),
    #[error("{what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("CA certificate: {0}")]
    CaCert(String),
    #[error("the CA key does not belong to the CA certificate")]
    KeyMismatch,
    #[error("leaf for service {service:?}: {reason}")]
    Leaf { service: String, reason: String },
    #[error("CA serial numbers exhausted")]
    SerialExhausted,
    #[error("key handling failed: {0}")]
    Crypto(&'static str),
    #[error("building certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// How to make a new root. `Default` is Consul's: valid from a minute ago for 10 years,
/// in a new cluster.
#[derive(Debug, Clone)]
pub struct RootSpec {
    /// The cluster UUID; `None` draws a random one. Reusing an existing cluster id gives
    /// a second, independent root for the same trust domain.
    pub cluster_id: Option<String>,
    /// `None` = now − 1 min.
    pub not_before: Option<OffsetDateTime>,
    pub ttl: Duration,
}

impl Default for RootSpec {
    fn default() -> Self {
        RootSpec {
            cluster_id: None,
            not_before: None,
            ttl: ROOT_TTL,
        }
    }
}

/// What to put in a leaf. [`LeafSpec::service`] gives a certificate exactly like the one
/// Consul's agent would return for that service; the remaining public fields are knobs
/// for minting deliberately wrong certificates in tests.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub service: String,
    pub namespace: String,
    pub partition: String,
    pub datacenter: String,
    pub ttl: Duration,
    /// `None` = now − 1 min, as Consul backdates.
    pub not_before: Option<OffsetDateTime>,
    /// Further URI SANs after the first one.
    pub extra_uri_sans: Vec<String>,
    /// Replaces the service's SPIFFE ID as the first URI SAN.
    pub uri_override: Option<String>,
    /// Marks the leaf as a CA (basicConstraints CA=true); verifiers must refuse it as an
    /// end entity.
    pub is_ca: bool,
    /// Consul never puts DNS SANs in service leaves; this adds some anyway.
    pub dns_sans: Vec<String>,
}

impl LeafSpec {
    /// A leaf for `name` in the default namespace and partition of `dc1`, valid 72h.
    pub fn service(name: &str) -> Self {
        LeafSpec {
            service: name.to_owned(),
            namespace: DEFAULT.to_owned(),
            partition: DEFAULT.to_owned(),
            datacenter: "dc1".to_owned(),
            ttl: LEAF_TTL,
            not_before: None,
            extra_uri_sans: Vec::new(),
            uri_override: None,
            is_ca: false,
            dns_sans: Vec::new(),
        }
    }
}

/// A signed leaf and its key, with the fields of Consul's `IssuedCert` (the leaf
/// endpoint's answer, `docs/consul-semantics.md#agent-api`).
#[derive(Clone)]
pub struct IssuedLeaf {
    /// The leaf, followed by intermediates (none: the dev CA signs with its root).
    pub cert_pem: String,
    /// SEC1 (`-----BEGIN EC PRIVATE KEY-----`), as Consul's agent returns it.
    pub key_pem: String,
    /// Colon-separated lowercase hex of the big-endian serial (serial 8 → `08`).
    pub serial_hex: String,
    /// The first URI SAN of the certificate.
    pub service_uri: String,
    pub valid_after: OffsetDateTime,
    pub valid_before: OffsetDateTime,
    pub service: String,
    key_pkcs8_pem: String,
}

impl IssuedLeaf {
    /// The same key as PKCS#8 (`-----BEGIN PRIVATE KEY-----`).
    pub fn key_pkcs8_pem(&self) -> &str {
        &self.key_pkcs8_pem
    }
}

impl fmt::Debug for IssuedLeaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedLeaf")
            .field("service", &self.service)
            .field("service_uri", &self.service_uri)
            .field("serial_hex", &self.serial_hex)
            .field("valid_after", &self.valid_after)
            .field("valid_before", &self.valid_before)
            .field("key_pem", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// A self-signed root that signs leaves directly, as a primary datacenter's built-in CA.
pub struct DevCa {
    cluster_id: String,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    key_id: Vec<u8>,
    serial: u64,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    last_serial: AtomicU64,
    /// What follows every leaf in `IssuedLeaf::cert_pem`: nothing for a root, the
    /// intermediate itself for [`DevCa::intermediate`].
    chain_pem: String,
}

impl fmt::Debug for DevCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCa")
            .field("trust_domain", &self.trust_domain())
            .field("id", &self.id())
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new root, for a new cluster (`None`) or as another root of an existing one.
    pub fn generate(cluster_id: Option<&str>) -> Result<DevCa, CaError> {
        Self::generate_with(&RootSpec {
            cluster_id: cluster_id.map(str::to_owned),
            ..RootSpec::default()
        })
    }

    pub fn generate_with(spec: &RootSpec) -> Result<DevCa, CaError> {
        let cluster_id = match &spec.cluster_id {
            Some(id) => normalize_cluster_id(id)?,
            None => random_uuid()?,
        };
        let not_before = spec
            .not_before
            .unwrap_or_else(|| OffsetDateTime::now_utc() - BACKDATE)
            .truncate_to_second();
        let not_after = validity_end(not_before, spec.ttl)
            .ok_or_else(|| CaError::CaCert(format!("ttl {} is not usable", spec.ttl)))?;
        let serial = clock_serial();

        let key = EcKey::generate()?;
        let key_id = sha256(&key.pair.subject_public_key_info());
        let mut params = CertificateParams::default();
        params.distinguished_name = root_name(&cluster_id)?;
        params.subject_alt_names = vec![uri_san(&format!("spiffe://{cluster_id}.consul"))?];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        // rcgen's own Sha256 method truncates to 20 bytes; Consul's key IDs are the whole
        // SHA-256, and `SigningKeyID` in the roots response must match the leaves' AKI.
        params.key_identifier_method = KeyIdMethod::PreSpecified(key_id.clone());
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = not_before;
        params.not_after = not_after;

        let cert = params.self_signed(&key.pair)?;
        Ok(DevCa {
            cert_pem: encode_pem(CERT_TAG, cert.der()),
            cert_der: cert.der().clone(),
            key_pem: encode_pem(SEC1_TAG, &key.sec1_der),
            issuer: Issuer::new(params, key.pair),
            cluster_id,
            key_id,
            serial,
            not_before,
            not_after,
            last_serial: AtomicU64::new(serial),
            chain_pem: String::new(),
        })
    }

    /// Reloads a CA written earlier (`cert_pem()`, `key_pem()`); the key may be SEC1 or
    /// PKCS#8.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<DevCa, CaError> {
        let cert_der = CertificateDer::from(decode_pem(cert_pem, &[CERT_TAG], "CA certificate")?);
        let key = EcKey::from_der(&decode_pem(key_pem, &[SEC1_TAG, PKCS8_TAG], "CA key")?)?;

        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| CaError::CaCert(format!("not X.509: {e}")))?;
        let bad = |reason: &str| CaError::CaCert(reason.to_owned());
        let is_ca = x509
            .basic_constraints()
            .map_err(|e| CaError::CaCert(e.to_string()))?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(bad("not a CA certificate (basicConstraints CA=false)"));
        }
        if x509.public_key().raw != key.pair.subject_public_key_info().as_slice() {
            return Err(CaError::KeyMismatch);
        }
        let cluster_id = root_cluster_id(&x509)?;
        let serial = serial_to_u64(x509.raw_serial())
            .ok_or_else(|| bad("serial number does not fit in 64 bits"))?;
        let key_id = x509
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .ok_or_else(|| bad("no SubjectKeyIdentifier"))?;
        let not_before = x509.validity().not_before.to_datetime();
        let not_after = x509.validity().not_after.to_datetime();

        let issuer = Issuer::from_ca_cert_der(&cert_der, key.pair)?;
        Ok(DevCa {
            cert_pem: encode_pem(CERT_TAG, &cert_der),
            cert_der,
            key_pem: encode_pem(SEC1_TAG, &key.sec1_der),
            issuer,
            cluster_id,
            key_id,
            serial,
            not_before,
            not_after,
            last_serial: AtomicU64::new(serial),
            chain_pem: String::new(),
        })
    }

    /// `<cluster-uuid>.consul`.
    pub fn trust_domain(&self) -> String {
        format!("{}.consul", self.cluster_id)
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// PEM with a trailing newline, as `Roots[].RootCert`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA's private key, SEC1 like every key Consul writes.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// `Roots[].ID`: colon-hex SHA-1 of the root DER.
    pub fn id(&self) -> String {
        colon_hex(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &self.cert_der).as_ref())
    }

    /// `Roots[].SigningKeyID`: colon-hex SubjectKeyId of the root, which signs the leaves.
    pub fn signing_key_id(&self) -> String {
        colon_hex(&self.key_id)
    }

    pub fn serial_number(&self) -> u64 {
        self.serial
    }

    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Signs a fresh P-256 key for `spec`. Callable from many threads at once (the dev
    /// agent shares one `DevCa`); serials still strictly increase.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedLeaf, CaError> {
        let leaf_err = |reason: String| CaError::Leaf {
            service: spec.service.clone(),
            reason,
        };
        let not_before = spec
            .not_before
            .unwrap_or_else(|| OffsetDateTime::now_utc() - BACKDATE)
            .truncate_to_second();
        let not_after = validity_end(not_before, spec.ttl)
            .ok_or_else(|| leaf_err(format!("ttl {} is not usable", spec.ttl)))?;

        let service_uri = self.leaf_uri(spec).map_err(leaf_err)?;
        let mut sans = vec![uri_san(&service_uri)?];
        for uri in &spec.extra_uri_sans {
            sans.push(uri_san(uri)?);
        }
        for name in &spec.dns_sans {
            sans.push(SanType::DnsName(Ia5String::try_from(name.as_str())?));
        }

        let key = EcKey::generate()?;
        let serial = self.next_serial()?;

        let mut params = leaf_profile(spec.is_ca);
        params.subject_alt_names = sans;
        params.key_identifier_method =
            KeyIdMethod::PreSpecified(sha256(&key.pair.subject_public_key_info()));
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = not_before;
        params.not_after = not_after;

        let cert = params.signed_by(&key.pair, &self.issuer)?;
        Ok(IssuedLeaf {
            cert_pem: encode_pem(CERT_TAG, cert.der()) + &self.chain_pem,
            key_pem: encode_pem(SEC1_TAG, &key.sec1_der),
            key_pkcs8_pem: encode_pem(PKCS8_TAG, key.pair.serialized_der()),
            serial_hex: serial_hex(serial),
            service_uri,
            valid_after: not_before,
            valid_before: not_after,
            service: spec.service.clone(),
        })
    }

    /// The leaf's SPIFFE ID: the service's in this trust domain, or the spec's override.
    fn leaf_uri(&self, spec: &LeafSpec) -> Result<String, String> {
        if let Some(uri) = &spec.uri_override {
            return Ok(uri.clone());
        }
        let mut id = ServiceId::new(
            &self.trust_domain(),
            &spec.namespace,
            &spec.datacenter,
            &spec.service,
        );
        id.partition = spec.partition.clone();
        let uri = id.to_uri();
        // Without a knob asking for it, never mint an identity no verifier accepts.
        ServiceId::parse(&uri).map_err(|e| e.to_string())?;
        Ok(uri)
    }

    /// Cross-signs `newer` (another root of this cluster) with this root's key, as
    /// Consul's built-in CA does when its root is rotated: the result has `newer`'s
    /// subject, public key and key ID, and this root as issuer. A leaf signed by `newer`
    /// and presented with this certificate verifies against this (older) root, so peers
    /// that have not yet learned the new root keep accepting it during the overlap.
    /// PEM with a trailing newline, as `Roots[].IntermediateCerts` holds it.
    pub fn cross_sign(&self, newer: &DevCa) -> Result<String, CaError> {
        let bad = |reason: String| CaError::CaCert(format!("cross-signing: {reason}"));
        let (_, x509) = x509_parser::parse_x509_certificate(newer.cert_der())
            .map_err(|e| bad(format!("not X.509: {e}")))?;
        let mut subject = DistinguishedName::new();
        for cn in x509.subject().iter_common_name() {
            let cn = cn.as_str().map_err(|e| bad(format!("subject CN: {e}")))?;
            subject.push(DnType::CommonName, cn);
        }
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(x509.public_key().raw)?;

        let mut params = CertificateParams::default();
        params.distinguished_name = subject;
        params.subject_alt_names = vec![uri_san(&format!("spiffe://{}", newer.trust_domain()))?];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.key_identifier_method = KeyIdMethod::PreSpecified(newer.key_id.clone());
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from(self.next_serial()?));
        params.not_before = (OffsetDateTime::now_utc() - BACKDATE).truncate_to_second();
        // Never outlive the root that vouches for it.
        params.not_after = newer.not_after.min(self.not_after);
        let cert = params.signed_by(&public_key, &self.issuer)?;
        Ok(encode_pem(CERT_TAG, cert.der()))
    }

    /// A secondary datacenter's signing CA under this root, shaped as Consul's built-in
    /// provider signs it: an empty subject, the URI SAN `spiffe://<trust domain>`, CA
    /// with path length 0, and the root as issuer. Its leaves carry it after themselves
    /// in `cert_pem`, as the agent's `CertPEM` does there; peers still trust only the
    /// root (`cert_pem()` of the returned CA is the intermediate, not a trust anchor).
    pub fn intermediate(&self) -> Result<DevCa, CaError> {
        let key = EcKey::generate()?;
        let key_id = sha256(&key.pair.subject_public_key_info());
        let serial = self.next_serial()?;
        let not_before = (OffsetDateTime::now_utc() - BACKDATE).truncate_to_second();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri_san(&format!("spiffe://{}", self.trust_domain()))?];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.key_identifier_method = KeyIdMethod::PreSpecified(key_id.clone());
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = not_before;
        params.not_after = self.not_after;
        let cert = params.signed_by(&key.pair, &self.issuer)?;
        let cert_pem = encode_pem(CERT_TAG, cert.der());
        Ok(DevCa {
            chain_pem: cert_pem.clone(),
            cert_pem,
            cert_der: cert.der().clone(),
            key_pem: encode_pem(SEC1_TAG, &key.sec1_der),
            issuer: Issuer::new(params, key.pair),
            cluster_id: self.cluster_id.clone(),
            key_id,
            serial,
            not_before,
            not_after: self.not_after,
            last_serial: AtomicU64::new(serial),
        })
    }

    fn next_serial(&self) -> Result<u64, CaError> {
        let now = clock_serial();
        let next = |last: u64| last.checked_add(1).map(|n| n.max(now));
        self.last_serial
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, next)
            .ok()
            .and_then(next)
            .ok_or(CaError::SerialExhausted)
    }
}

/// A root's subject, as Consul's built-in CA names its roots:
/// `pri-<random>.consul.ca.<first 8 of the cluster ID>.consul`.
fn root_name(cluster_id: &str) -> Result<DistinguishedName, CaError> {
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        format!(
            "pri-{}.consul.ca.{}.consul",
            hex(&random_bytes::<4>()?),
            &cluster_id[..8]
        ),
    );
    Ok(name)
}

/// The cluster ID of a root, from its `spiffe://<cluster-id>.consul` URI SAN.
fn root_cluster_id(x509: &X509Certificate<'_>) -> Result<String, CaError> {
    let bad = |reason: &str| CaError::CaCert(reason.to_owned());
    let trust_domain = x509
        .subject_alternative_name()
        .map_err(|e| CaError::CaCert(e.to_string()))?
        .into_iter()
        .flat_map(|san| san.value.general_names.iter())
        .find_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix("spiffe://"),
            _ => None,
        })
        .ok_or_else(|| bad("no spiffe://<cluster-id>.consul URI SAN"))?;
    let cluster_id = trust_domain
        .strip_suffix(".consul")
        .ok_or_else(|| bad("trust domain does not end in .consul"))?;
    normalize_cluster_id(cluster_id)
}

/// Consul's leaf profile: an empty subject (since Consul 1.11; rcgen then marks the SAN
/// extension critical, as RFC 5280 4.2.1.6 requires and Consul does), CA=false unless
/// asked, and the key usages and both EKUs of Consul's leaves.
fn leaf_profile(is_ca: bool) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = if is_ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        // ExplicitNoCa writes basicConstraints CA=false (and the SKI), as Go does.
        IsCa::ExplicitNoCa
    };
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::DataEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    params
}

/// Consul's `EncodeSerialNumber`: the minimal big-endian bytes, colon-separated.
pub fn serial_hex(serial: u64) -> String {
    let bytes = serial.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    colon_hex(&bytes[first..])
}

/// An EC P-256 key in both forms we need: rcgen's (signing, PKCS#8 inside) and SEC1.
struct EcKey {
    pair: KeyPair,
    sec1_der: Vec<u8>,
}

impl EcKey {
    fn generate() -> Result<Self, CaError> {
        let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let sec1_der = sec1_from_der(pair.serialized_der())?;
        Ok(EcKey { pair, sec1_der })
    }

    /// Accepts SEC1 or PKCS#8: rcgen's backend only reads PKCS#8, Consul writes SEC1.
    fn from_der(der: &[u8]) -> Result<Self, CaError> {
        let key = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, der)
            .map_err(|_| CaError::Crypto("the CA key is not an EC P-256 private key"))?;
        let pkcs8 = key
            .to_pkcs8v1()
            .map_err(|_| CaError::Crypto("re-encoding the CA key as PKCS#8"))?;
        let pair = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(pkcs8.as_ref()),
            &PKCS_ECDSA_P256_SHA256,
        )?;
        Ok(EcKey {
            pair,
            sec1_der: sec1_of(&key)?,
        })
    }
}

fn sec1_from_der(der: &[u8]) -> Result<Vec<u8>, CaError> {
    let key = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, der)
        .map_err(|_| CaError::Crypto("reading a generated P-256 key"))?;
    sec1_of(&key)
}

/// RFC 5915 with the curve OID and public key included, like Go's `MarshalECPrivateKey`
/// (Go refuses a SEC1 key without the curve).
fn sec1_of(key: &EcdsaKeyPair) -> Result<Vec<u8>, CaError> {
    let der = key
        .private_key()
        .as_der()
        .map_err(|_| CaError::Crypto("encoding a key as SEC1"))?;
    Ok(der.as_ref().to_vec())
}

fn uri_san(uri: &str) -> Result<SanType, CaError> {
    Ok(SanType::URI(Ia5String::try_from(uri)?))
}

fn validity_end(not_before: OffsetDateTime, ttl: Duration) -> Option<OffsetDateTime> {
    if ttl < Duration::seconds(1) {
        return None;
    }
    not_before.checked_add(ttl)
}

/// Consul numbers roots and leaves from one cluster-wide counter kept in Raft. The dev CA
/// keeps nothing on disk, so serials never fall behind the clock (microseconds since the
/// epoch): a new root for the same cluster, or a CA reloaded by a later run, then stays
/// above every serial handed out before. The values also stay below 2^53, so the roots'
/// numeric `SerialNumber` survives JSON readers that use doubles.
fn clock_serial() -> u64 {
    let us = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000;
    u64::try_from(us).unwrap_or(1).max(1)
}

fn serial_to_u64(raw: &[u8]) -> Option<u64> {
    let first = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let digits = &raw[first..];
    if digits.len() > 8 {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)))
}

fn normalize_cluster_id(id: &str) -> Result<String, CaError> {
    let lower = id.to_ascii_lowercase();
    let shape_ok = lower.len() == 36
        && lower.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if shape_ok {
        Ok(lower)
    } else {
        Err(CaError::ClusterId(id.to_owned()))
    }
}

fn random_uuid() -> Result<String, CaError> {
    let mut b = random_bytes::<16>()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(format!(
        "{}-{}-{}-{}-{}",
        hex(&b[0..4]),
        hex(&b[4..6]),
        hex(&b[6..8]),
        hex(&b[8..10]),
        hex(&b[10..16])
    ))
}

fn random_bytes<const N: usize>() -> Result<[u8; N], CaError> {
    let mut buf = [0u8; N];
    rand::fill(&mut buf).map_err(|_| CaError::Crypto("the system random number generator"))?;
    Ok(buf)
}

fn sha256(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn encode_pem(tag: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(tag, der), config)
}

fn decode_pem(text: &str, tags: &[&str], what: &'static str) -> Result<Vec<u8>, CaError> {
    let block = pem::parse(text).map_err(|e| CaError::Pem {
        what,
        reason: e.to_string(),
    })?;
    if !tags.contains(&block.tag()) {
        return Err(CaError::Pem {
            what,
            reason: format!("unexpected PEM block {:?}", block.tag()),
        });
    }
    Ok(block.into_contents())
}

#[cfg(test)]
mod tests {
    use super::*;

    use rustls_pki_types::UnixTime;
    use rustls_pki_types::pem::PemObject;
    use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};
    use x509_parser::certificate::X509Certificate;

    fn der_of(pem_text: &str) -> CertificateDer<'static> {
        CertificateDer::from(decode_pem(pem_text, &[CERT_TAG], "test").unwrap())
    }

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        x509_parser::parse_x509_certificate(der).unwrap().1
    }

    fn serial_of(leaf: &IssuedLeaf) -> u64 {
        let der = der_of(&leaf.cert_pem);
        serial_to_u64(parse(&der).raw_serial()).unwrap()
    }

    fn ski(cert: &X509Certificate<'_>) -> Vec<u8> {
        cert.iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .unwrap()
    }

    fn aki(cert: &X509Certificate<'_>) -> Vec<u8> {
        cert.iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                }
                _ => None,
            })
            .unwrap()
    }

    fn uris(cert: &X509Certificate<'_>) -> Vec<String> {
        let san = cert.subject_alternative_name().unwrap().unwrap();
        san.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
            .collect()
    }

    fn verify(ca: &DevCa, leaf: &IssuedLeaf, at: UnixTime) -> Result<(), webpki::Error> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let root = ca.cert_der().clone();
        let anchors = [anchor_from_trusted_cert(&root).unwrap()];
        let leaf_der = der_of(&leaf.cert_pem);
        let ee = EndEntityCert::try_from(&leaf_der)?;
        for usage in [KeyUsage::client_auth(), KeyUsage::server_auth()] {
            ee.verify_for_usage(
                provider.signature_verification_algorithms.all,
                &anchors,
                &[],
                at,
                usage,
                None,
                None,
            )?;
        }
        Ok(())
    }

    #[test]
    fn dev_ca_can_be_shared_across_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<DevCa>();
    }

    #[test]
    fn root_has_consul_profile() {
        let ca = DevCa::generate(None).unwrap();
        let cluster = ca.cluster_id().to_owned();
        assert!(normalize_cluster_id(&cluster).is_ok(), "{cluster}");
        assert_eq!(&cluster[14..15], "4", "UUID v4");
        assert_eq!(ca.trust_domain(), format!("{cluster}.consul"));
        assert!(ca.cert_pem().ends_with("-----END CERTIFICATE-----\n"));
        assert!(ca.key_pem().starts_with("-----BEGIN EC PRIVATE KEY-----\n"));

        let der = ca.cert_der().clone();
        let cert = parse(&der);
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        let rest = cn.strip_prefix("pri-").unwrap();
        assert_eq!(
            rest.len(),
            8 + ".consul.ca.".len() + 8 + ".consul".len(),
            "{cn}"
        );
        assert!(rest.ends_with(&format!(".consul.ca.{}.consul", &cluster[..8])));
        assert_eq!(cert.subject(), cert.issuer());
        assert_eq!(uris(&cert), vec![format!("spiffe://{cluster}.consul")]);

        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
        assert!(!ku.key_encipherment());
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && bc.value.ca && bc.value.path_len_constraint.is_none());

        assert_eq!(ski(&cert), sha256(cert.public_key().raw));
        assert_eq!(ski(&cert).len(), 32);
        assert_eq!(aki(&cert), ski(&cert));
        assert_eq!(ca.signing_key_id(), colon_hex(&ski(&cert)));
        let id = ca.id();
        assert_eq!(id.len(), 20 * 3 - 1);
        assert_eq!(id, id.to_lowercase());
        assert_eq!(serial_to_u64(cert.raw_serial()), Some(ca.serial_number()));

        let now = OffsetDateTime::now_utc();
        let nb = cert.validity().not_before.to_datetime();
        let na = cert.validity().not_after.to_datetime();
        assert_eq!((nb, na), (ca.not_before(), ca.not_after()));
        assert!(now - nb >= Duration::seconds(59) && now - nb < Duration::seconds(70));
        assert_eq!(na - nb, ROOT_TTL);
    }

    #[test]
    fn leaf_has_consul_profile() {
        let ca = DevCa::generate(Some("11111111-2222-4333-8444-555555555555")).unwrap();
        let leaf = ca.issue(&LeafSpec::service("web")).unwrap();
        let expected_uri =
            "spiffe://11111111-2222-4333-8444-555555555555.consul/ns/default/dc/dc1/svc/web";
        assert_eq!(leaf.service_uri, expected_uri);
        assert_eq!(leaf.service, "web");

        let der = der_of(&leaf.cert_pem);
        let cert = parse(&der);
        assert!(cert.subject().as_raw() == [0x30, 0x00], "empty subject");
        assert_eq!(cert.subject().iter().count(), 0);
        assert_eq!(cert.issuer(), parse(ca.cert_der()).subject());

        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical, "SAN must be critical with an empty subject");
        assert_eq!(san.value.general_names.len(), 1);
        assert_eq!(uris(&cert), vec![expected_uri.to_owned()]);

        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature());
        assert!(ku.key_encipherment());
        assert!(ku.data_encipherment());
        assert!(ku.key_agreement());
        assert!(!ku.key_cert_sign() && !ku.crl_sign() && !ku.non_repudiation());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && eku.server_auth);
        assert!(!eku.any && eku.other.is_empty());
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(!bc.ca);

        assert_eq!(aki(&cert), ski(&parse(ca.cert_der())));
        assert_eq!(ski(&cert), sha256(cert.public_key().raw));
        assert_eq!(ski(&cert).len(), 32);

        let nb = cert.validity().not_before.to_datetime();
        let na = cert.validity().not_after.to_datetime();
        assert_eq!((nb, na), (leaf.valid_after, leaf.valid_before));
        let backdate = OffsetDateTime::now_utc() - nb;
        assert!(backdate >= Duration::seconds(59) && backdate < Duration::seconds(70));
        assert_eq!(na - nb, Duration::hours(72));

        let serial = serial_to_u64(cert.raw_serial()).unwrap();
        assert!(serial > ca.serial_number());
        assert_eq!(leaf.serial_hex, serial_hex(serial));
        assert_eq!(leaf.serial_hex, cert.raw_serial_as_string());

        verify(&ca, &leaf, UnixTime::now()).unwrap();
    }

    #[test]
    fn leaf_key_is_sec1_and_matches_the_cert() {
        let ca = DevCa::generate(None).unwrap();
        let leaf = ca.issue(&LeafSpec::service("api")).unwrap();
        assert!(leaf.key_pem.starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
        assert!(leaf.key_pem.ends_with("-----END EC PRIVATE KEY-----\n"));
        assert!(
            leaf.key_pkcs8_pem()
                .starts_with("-----BEGIN PRIVATE KEY-----\n")
        );

        let der = der_of(&leaf.cert_pem);
        let spki = parse(&der).public_key().raw.to_vec();
        for (pem_text, tag) in [
            (&leaf.key_pem[..], SEC1_TAG),
            (leaf.key_pkcs8_pem(), PKCS8_TAG),
        ] {
            let key = EcKey::from_der(&decode_pem(pem_text, &[tag], "test").unwrap()).unwrap();
            assert_eq!(key.pair.subject_public_key_info(), spki);
        }
        // rustls must accept the SEC1 form, since that is what the proxy loads.
        let key = rustls_pki_types::PrivateKeyDer::Sec1(
            decode_pem(&leaf.key_pem, &[SEC1_TAG], "test")
                .unwrap()
                .into(),
        );
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let signing = provider.key_provider.load_private_key(key).unwrap();
        let certified = rustls::sign::CertifiedKey::new(vec![der], signing);
        certified.keys_match().unwrap();
    }

    #[test]
    fn serials_increase_and_format_like_consul() {
        assert_eq!(serial_hex(8), "08");
        assert_eq!(serial_hex(255), "ff");
        assert_eq!(serial_hex(256), "01:00");
        assert_eq!(serial_hex(0x01_0203_0405), "01:02:03:04:05");
        assert_eq!(serial_hex(u64::MAX), "ff:ff:ff:ff:ff:ff:ff:ff");
        assert_eq!(serial_to_u64(&[0, 0x80, 1]), Some(0x8001));
        assert_eq!(serial_to_u64(&[1; 9]), None);

        let ca = DevCa::generate(None).unwrap();
        let mut last = ca.serial_number();
        for _ in 0..5 {
            let serial = serial_of(&ca.issue(&LeafSpec::service("web")).unwrap());
            assert!(serial > last, "{serial} <= {last}");
            last = serial;
        }
    }

    #[test]
    fn partition_namespace_and_datacenter_reach_the_uri() {
        let ca = DevCa::generate(None).unwrap();
        let mut spec = LeafSpec::service("db");
        spec.partition = "team".into();
        spec.namespace = "billing".into();
        spec.datacenter = "dc2".into();
        let leaf = ca.issue(&spec).unwrap();
        let td = ca.trust_domain();
        assert_eq!(
            leaf.service_uri,
            format!("spiffe://{td}/ap/team/ns/billing/dc/dc2/svc/db")
        );
        let der = der_of(&leaf.cert_pem);
        assert_eq!(uris(&parse(&der)), vec![leaf.service_uri.clone()]);

        let err = ca.issue(&LeafSpec::service("")).unwrap_err();
        assert!(matches!(err, CaError::Leaf { .. }), "{err}");
    }

    #[test]
    fn reloaded_ca_keeps_identity_and_signs_verifiable_leaves() {
        let ca = DevCa::generate(None).unwrap();
        let old_leaf = ca.issue(&LeafSpec::service("web")).unwrap();
        let again = DevCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.cluster_id(), ca.cluster_id());
        assert_eq!(again.cert_pem(), ca.cert_pem());
        assert_eq!(again.key_pem(), ca.key_pem());
        assert_eq!(again.id(), ca.id());
        assert_eq!(again.signing_key_id(), ca.signing_key_id());
        assert_eq!(again.serial_number(), ca.serial_number());
        assert_eq!(again.not_after(), ca.not_after());

        let leaf = again.issue(&LeafSpec::service("web")).unwrap();
        verify(&ca, &leaf, UnixTime::now()).unwrap();
        verify(&again, &old_leaf, UnixTime::now()).unwrap();
        assert!(
            serial_of(&leaf) > serial_of(&old_leaf),
            "a reloaded CA must not reuse serials"
        );

        // The PKCS#8 form of the CA key loads too.
        let pkcs8 = {
            let key =
                EcKey::from_der(&decode_pem(ca.key_pem(), &[SEC1_TAG], "t").unwrap()).unwrap();
            encode_pem(PKCS8_TAG, key.pair.serialized_der())
        };
        assert_eq!(
            DevCa::from_pem(ca.cert_pem(), &pkcs8).unwrap().key_pem(),
            ca.key_pem()
        );
    }

    #[test]
    fn from_pem_rejects_what_is_not_our_ca() {
        let ca = DevCa::generate(None).unwrap();
        let other = DevCa::generate(None).unwrap();
        let leaf = ca.issue(&LeafSpec::service("web")).unwrap();
        assert!(matches!(
            DevCa::from_pem(ca.cert_pem(), other.key_pem()),
            Err(CaError::KeyMismatch)
        ));
        assert!(matches!(
            DevCa::from_pem(&leaf.cert_pem, &leaf.key_pem),
            Err(CaError::CaCert(_))
        ));
        assert!(matches!(
            DevCa::from_pem(ca.key_pem(), ca.key_pem()),
            Err(CaError::Pem { .. })
        ));
        assert!(matches!(
            DevCa::generate(Some("not-a-uuid")),
            Err(CaError::ClusterId(_))
        ));
    }

    #[test]
    fn second_root_for_the_same_cluster_is_independent() {
        let first = DevCa::generate(None).unwrap();
        let second = DevCa::generate(Some(&first.cluster_id().to_uppercase())).unwrap();
        assert_eq!(second.trust_domain(), first.trust_domain());
        assert_ne!(second.id(), first.id());
        assert_ne!(second.signing_key_id(), first.signing_key_id());

        let leaf = second.issue(&LeafSpec::service("web")).unwrap();
        let first_leaf = first.issue(&LeafSpec::service("web")).unwrap();
        assert_eq!(leaf.service_uri, first_leaf.service_uri);
        verify(&second, &leaf, UnixTime::now()).unwrap();
        assert!(verify(&first, &leaf, UnixTime::now()).is_err());
    }

    #[test]
    fn an_intermediate_has_an_empty_subject_and_its_leaves_chain_to_the_root() {
        let root = DevCa::generate(None).unwrap();
        let dc2 = root.intermediate().unwrap();
        let parsed = parse(dc2.cert_der());
        assert_eq!(parsed.subject().iter().count(), 0, "empty subject");
        assert_eq!(parsed.issuer(), parse(root.cert_der()).subject());
        assert_eq!(aki(&parsed), ski(&parse(root.cert_der())));
        let bc = parsed.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        assert_eq!(
            uris(&parsed),
            vec![format!("spiffe://{}", root.trust_domain())]
        );

        let mut spec = LeafSpec::service("api");
        spec.datacenter = "dc2".into();
        let leaf = dc2.issue(&spec).unwrap();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        assert_eq!(chain.len(), 2, "the leaf, then the intermediate");
        assert_eq!(&chain[1], dc2.cert_der());
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let anchors = [anchor_from_trusted_cert(root.cert_der()).unwrap()];
        let ee = EndEntityCert::try_from(&chain[0]).unwrap();
        for usage in [KeyUsage::client_auth(), KeyUsage::server_auth()] {
            ee.verify_for_usage(
                provider.signature_verification_algorithms.all,
                &anchors,
                &chain[1..],
                UnixTime::now(),
                usage,
                None,
                None,
            )
            .unwrap();
        }
    }

    #[test]
    fn a_cross_signed_root_chains_new_leaves_to_the_old_root() {
        let old = DevCa::generate(None).unwrap();
        let new = DevCa::generate(Some(old.cluster_id())).unwrap();
        let cross_pem = old.cross_sign(&new).unwrap();
        let cross = der_of(&cross_pem);
        let parsed = parse(&cross);
        assert_eq!(parsed.subject(), parse(new.cert_der()).subject());
        assert_eq!(parsed.issuer(), parse(old.cert_der()).subject());
        assert_eq!(ski(&parsed), ski(&parse(new.cert_der())));
        assert_eq!(aki(&parsed), ski(&parse(old.cert_der())));
        assert!(parsed.basic_constraints().unwrap().unwrap().value.ca);
        assert_eq!(
            uris(&parsed),
            vec![format!("spiffe://{}", new.trust_domain())]
        );

        let leaf = new.issue(&LeafSpec::service("web")).unwrap();
        let leaf_der = der_of(&leaf.cert_pem);
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let anchors = [anchor_from_trusted_cert(old.cert_der()).unwrap()];
        let ee = EndEntityCert::try_from(&leaf_der).unwrap();
        let verify_via = |intermediates: &[CertificateDer<'_>]| {
            ee.verify_for_usage(
                provider.signature_verification_algorithms.all,
                &anchors,
                intermediates,
                UnixTime::now(),
                KeyUsage::server_auth(),
                None,
                None,
            )
            .map(|_| ())
        };
        verify_via(std::slice::from_ref(&cross)).unwrap();
        assert!(
            verify_via(&[]).is_err(),
            "not without the cross-signed certificate"
        );
        verify(&new, &leaf, UnixTime::now()).unwrap();
    }

    #[test]
    fn knobs_mint_the_bad_certificates_asked_for() {
        let ca = DevCa::generate(None).unwrap();
        let td = ca.trust_domain();

        let mut spec = LeafSpec::service("web");
        spec.extra_uri_sans = vec![format!("spiffe://{td}/ns/default/dc/dc1/svc/admin")];
        let two = ca.issue(&spec).unwrap();
        let der = der_of(&two.cert_pem);
        assert_eq!(uris(&parse(&der)).len(), 2);

        let mut spec = LeafSpec::service("web");
        spec.uri_override = Some(format!("spiffe://{td}/ns/default/dc/dc1/svc/db"));
        let swapped = ca.issue(&spec).unwrap();
        assert!(swapped.service_uri.ends_with("/svc/db"));
        let der = der_of(&swapped.cert_pem);
        assert_eq!(uris(&parse(&der)), vec![swapped.service_uri.clone()]);

        let mut spec = LeafSpec::service("web");
        spec.dns_sans = vec!["web.example".into()];
        let dns = ca.issue(&spec).unwrap();
        let der = der_of(&dns.cert_pem);
        let cert = parse(&der);
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(
            san.value
                .general_names
                .iter()
                .any(|n| matches!(n, GeneralName::DNSName("web.example")))
        );

        let mut spec = LeafSpec::service("web");
        spec.is_ca = true;
        let ca_leaf = ca.issue(&spec).unwrap();
        let der = der_of(&ca_leaf.cert_pem);
        assert!(parse(&der).basic_constraints().unwrap().unwrap().value.ca);
        assert_eq!(
            verify(&ca, &ca_leaf, UnixTime::now()),
            Err(webpki::Error::CaUsedAsEndEntity)
        );

        let mut spec = LeafSpec::service("web");
        spec.not_before = Some(OffsetDateTime::now_utc() - Duration::days(100));
        spec.ttl = Duration::hours(1);
        let expired = ca.issue(&spec).unwrap();
        assert_eq!(
            expired.valid_before - expired.valid_after,
            Duration::hours(1)
        );
        let err = verify(&ca, &expired, UnixTime::now()).unwrap_err();
        assert!(matches!(err, webpki::Error::CertExpired { .. }), "{err:?}");

        let mut spec = LeafSpec::service("web");
        spec.ttl = Duration::ZERO;
        assert!(matches!(ca.issue(&spec), Err(CaError::Leaf { .. })));
    }

    #[test]
    fn sec1_key_carries_the_curve() {
        // Go's ParseECPrivateKey rejects SEC1 without the namedCurve parameter.
        let ca = DevCa::generate(None).unwrap();
        let der = decode_pem(ca.key_pem(), &[SEC1_TAG], "t").unwrap();
        let prime256v1_oid = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        assert!(
            der.windows(prime256v1_oid.len())
                .any(|w| w == prime256v1_oid)
        );
    }
}
