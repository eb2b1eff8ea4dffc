//! The development certificate authority: a root and the service leaves it signs, shaped
//! like the certificates of Consul's built-in CA (`docs/consul-semantics.md#identity`).
//!
//! `ferrule certs` and `cargo xtask certs` write its output to disk (`dir`), the
//! end-to-end tests mint good and deliberately bad leaves with it (the `LeafSpec` knobs),
//! and the embedded dev agent serves its leaves from `/v1/agent/connect/ca/leaf`. Keys
//! and PEM come out in the same formats Consul's agent returns (SEC1 `EC PRIVATE KEY`,
//! colon-hex serials and key IDs), so code that reads them cannot tell the dev CA from a
//! real cluster.
//!
//! Modules: `key` the CA's key types and signing, and the leaves' keys; `profile` what
//! goes into each certificate; `format` PEM, serials and identifiers; `intermediate` a
//! secondary datacenter's signing CA (its request, and the root's signature over it);
//! `dir` a directory of PEM files for the examples.

mod dir;
mod format;
mod intermediate;
mod key;
mod profile;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::digest;
use rcgen::{
    BasicConstraints, DistinguishedName, DnType, Issuer, KeyIdMethod, PublicKeyData, SerialNumber,
    SubjectPublicKeyInfo,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use ferrule_control::identity::{DEFAULT, ServiceId};

pub use self::dir::{CertsDir, CertsError, CertsReport, leaf_ttl_flag};
pub use self::format::serial_hex;
pub use self::intermediate::IntermediateRequest;
pub use self::key::{KeyType, KeyTypeError};

use self::format::{
    CERT_TAG, clock_serial, colon_hex, decode_pem, encode_pem, normalize_cluster_id, random_uuid,
    serial_to_u64, sha256,
};
use self::key::{CA_KEY_TAGS, CaKey, LeafKey};
use self::profile::{
    ca_profile, leaf_profile, root_cluster_id, root_name, subject_key_id, validity_end,
};

/// Consul's default `root_cert_ttl` (87600h).
pub const ROOT_TTL: Duration = Duration::hours(87_600);
/// Consul's default `leaf_cert_ttl`.
pub const LEAF_TTL: Duration = Duration::hours(72);
/// Consul backdates NotBefore by a minute so a peer whose clock lags a little accepts a
/// brand-new certificate.
const BACKDATE: Duration = Duration::minutes(1);

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
    /// The key's type (Consul's `PrivateKeyType`/`PrivateKeyBits`); leaves are EC P-256
    /// whatever it is.
    pub key: KeyType,
}

impl Default for RootSpec {
    fn default() -> Self {
        RootSpec {
            cluster_id: None,
            not_before: None,
            ttl: ROOT_TTL,
            key: KeyType::default(),
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
    key_type: KeyType,
    issuer: Issuer<'static, CaKey>,
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
        let key = CaKey::generate(spec.key)?;
        let key_id = sha256(key.spki_der());
        let mut params = ca_profile(
            root_name(&cluster_id)?,
            &format!("spiffe://{cluster_id}.consul"),
            BasicConstraints::Unconstrained,
            key_id.clone(),
        )?;
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = not_before;
        params.not_after = not_after;
        // Self-signed: this key is the issuer, and its public key the subject's.
        let subject = SubjectPublicKeyInfo::from_der(key.spki_der())?;
        let cert = params.signed_by(&subject, &Issuer::from_params(&params, &key))?;
        Ok(DevCa {
            cert_pem: encode_pem(CERT_TAG, cert.der()),
            cert_der: cert.der().clone(),
            key_pem: key.private_pem().to_owned(),
            key_type: key.key_type(),
            issuer: Issuer::new(params, key),
            cluster_id,
            key_id,
            serial,
            not_before,
            not_after,
            last_serial: AtomicU64::new(serial),
            chain_pem: String::new(),
        })
    }

    /// Reloads a CA written earlier (`cert_pem()`, `key_pem()`); an EC key may be SEC1
    /// or PKCS#8, an RSA key PKCS#1 or PKCS#8.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<DevCa, CaError> {
        let cert_der = CertificateDer::from(decode_pem(cert_pem, &[CERT_TAG], "CA certificate")?);
        let key = CaKey::from_der(&decode_pem(key_pem, CA_KEY_TAGS, "CA key")?)?;
        DevCa::from_parts(cert_der, key)
    }

    /// A CA from its certificate and its key: a root, or an intermediate whose
    /// certificate names the trust domain as roots do.
    fn from_parts(cert_der: CertificateDer<'static>, key: CaKey) -> Result<DevCa, CaError> {
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
        if x509.public_key().raw != key.spki_der() {
            return Err(CaError::KeyMismatch);
        }
        let serial = serial_to_u64(x509.raw_serial())
            .ok_or_else(|| bad("serial number does not fit in 64 bits"))?;
        let key_id = subject_key_id(&x509).ok_or_else(|| bad("no SubjectKeyIdentifier"))?;
        Ok(DevCa {
            cluster_id: root_cluster_id(&x509)?,
            cert_pem: encode_pem(CERT_TAG, &cert_der),
            key_pem: key.private_pem().to_owned(),
            key_type: key.key_type(),
            issuer: Issuer::from_ca_cert_der(&cert_der, key)?,
            key_id,
            serial,
            not_before: x509.validity().not_before.to_datetime(),
            not_after: x509.validity().not_after.to_datetime(),
            last_serial: AtomicU64::new(serial),
            chain_pem: String::new(),
            cert_der,
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

    /// The CA's private key: SEC1 for an EC key, like every EC key Consul writes;
    /// PKCS#8 for an RSA key.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The type of the CA's key (`Roots[].PrivateKeyType`, `PrivateKeyBits`).
    pub fn key_type(&self) -> KeyType {
        self.key_type
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
        let key = LeafKey::generate()?;
        let serial = self.next_serial()?;
        let mut params = leaf_profile(spec, &service_uri)?;
        params.key_identifier_method =
            KeyIdMethod::PreSpecified(sha256(&key.pair.subject_public_key_info()));
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key.pair, &self.issuer)?;
        Ok(IssuedLeaf {
            cert_pem: encode_pem(CERT_TAG, cert.der()) + &self.chain_pem,
            key_pem: key.sec1_pem,
            key_pkcs8_pem: key.pkcs8_pem,
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
        let public_key = SubjectPublicKeyInfo::from_der(x509.public_key().raw)?;
        let mut params = ca_profile(
            subject,
            &format!("spiffe://{}", newer.trust_domain()),
            BasicConstraints::Unconstrained,
            newer.key_id.clone(),
        )?;
        params.serial_number = Some(SerialNumber::from(self.next_serial()?));
        params.not_before = (OffsetDateTime::now_utc() - BACKDATE).truncate_to_second();
        // Never outlive the root that vouches for it.
        params.not_after = newer.not_after.min(self.not_after);
        let cert = params.signed_by(&public_key, &self.issuer)?;
        Ok(encode_pem(CERT_TAG, cert.der()))
    }

    /// A secondary datacenter's signing CA under this root, made as a secondary gets
    /// one: its own key (EC P-256), a request ([`IntermediateRequest`]), and
    /// this root's signature over it ([`DevCa::sign_intermediate`]). Its leaves carry it
    /// after themselves in `cert_pem`, as the agent's `CertPEM` does there; peers still
    /// trust only the root (`cert_pem()` of the returned CA is the intermediate, not a
    /// trust anchor).
    pub fn intermediate(&self) -> Result<DevCa, CaError> {
        let request = IntermediateRequest::new(&self.trust_domain())?;
        let cert_pem = self.sign_intermediate(request.csr_pem())?;
        request.finish(&cert_pem)
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
