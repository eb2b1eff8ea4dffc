//! What goes into the certificates: the root's and intermediates' profile, Consul's leaf
//! profile, and the fields read back from a CA certificate.

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyIdMethod, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::format::{hex, normalize_cluster_id, random_bytes};
use super::{CaError, LeafSpec};

/// A CA certificate of Consul's built-in provider: `name`, the URI SAN `uri`, CA with
/// `constraints`, the key usages of a CA, and `key_id` as both SKI and (for a root) AKI.
/// rcgen's own SHA-256 key ID method truncates to 20 bytes; Consul's key IDs are the
/// whole SHA-256, and `SigningKeyID` in the roots response must match the leaves' AKI.
pub(super) fn ca_profile(
    name: DistinguishedName,
    uri: &str,
    constraints: BasicConstraints,
    key_id: Vec<u8>,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name;
    params.subject_alt_names = vec![uri_san(uri)?];
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_id);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Consul's leaf profile: an empty subject (since Consul 1.11; rcgen then marks the SAN
/// extension critical, as RFC 5280 4.2.1.6 requires and Consul does), the service's URI
/// SAN (and the spec's extra SANs), CA=false unless asked, the key usages and both EKUs
/// of Consul's leaves, and the issuer's key ID as AKI.
pub(super) fn leaf_profile(spec: &LeafSpec, uri: &str) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let mut sans = vec![uri_san(uri)?];
    for uri in &spec.extra_uri_sans {
        sans.push(uri_san(uri)?);
    }
    for name in &spec.dns_sans {
        sans.push(SanType::DnsName(Ia5String::try_from(name.as_str())?));
    }
    params.subject_alt_names = sans;
    params.is_ca = if spec.is_ca {
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
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A root's subject, as Consul's built-in CA names its roots:
/// `pri-<random>.consul.ca.<first 8 of the cluster ID>.consul`.
pub(super) fn root_name(cluster_id: &str) -> Result<DistinguishedName, CaError> {
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
pub(super) fn root_cluster_id(x509: &X509Certificate<'_>) -> Result<String, CaError> {
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

/// The SubjectKeyIdentifier of a certificate.
pub(super) fn subject_key_id(x509: &X509Certificate<'_>) -> Option<Vec<u8>> {
    x509.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

pub(super) fn uri_san(uri: &str) -> Result<SanType, CaError> {
    Ok(SanType::URI(Ia5String::try_from(uri)?))
}

pub(super) fn validity_end(not_before: OffsetDateTime, ttl: Duration) -> Option<OffsetDateTime> {
    if ttl < Duration::seconds(1) {
        return None;
    }
    not_before.checked_add(ttl)
}
