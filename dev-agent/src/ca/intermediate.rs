//! A secondary datacenter's signing CA, made the way Consul's built-in provider makes
//! one: the secondary draws its own key and asks the primary, with a certificate signing
//! request, to sign it; the primary's active root signs it with the intermediate profile
//! (empty subject, the URI SAN `spiffe://<trust domain>`, CA with path length 0, the
//! key usages of a CA); the secondary then signs its leaves with it
//! (`docs/consul-semantics.md#datacenters`). The private key never leaves the
//! secondary.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, IsCa,
    SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

use super::format::{CERT_TAG, decode_pem, encode_pem, sha256};
use super::key::CaKey;
use super::profile::{ca_profile, uri_san};
use super::{BACKDATE, CaError, DevCa, KeyType};

const CSR_TAG: &str = "CERTIFICATE REQUEST";

/// A secondary datacenter's new signing key and its request, waiting for the primary's
/// signature.
pub struct IntermediateRequest {
    key: CaKey,
    csr_pem: String,
}

impl std::fmt::Debug for IntermediateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntermediateRequest")
            .field("key_type", &self.key.key_type())
            .finish_non_exhaustive()
    }
}

impl IntermediateRequest {
    /// A new key and a request for an intermediate of `trust_domain`: an empty
    /// subject, the URI SAN `spiffe://<trust domain>`, CA with path length 0, as
    /// Consul's secondaries ask for. The key is EC P-256, a secondary's default
    /// `PrivateKeyType` (its own, whatever the primary root's type).
    pub fn new(trust_domain: &str) -> Result<IntermediateRequest, CaError> {
        let key = CaKey::generate(KeyType::default())?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri_san(&format!("spiffe://{trust_domain}"))?];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let csr = params.serialize_request(&key)?;
        Ok(IntermediateRequest {
            csr_pem: encode_pem(CSR_TAG, csr.der()),
            key,
        })
    }

    /// The request, PEM (`CERTIFICATE REQUEST`), for the primary.
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// The signing CA made of this key and the certificate the primary signed for it
    /// (PEM). Refused when the certificate is not a CA or is for another key. Its
    /// leaves carry the intermediate after themselves in `cert_pem`.
    pub fn finish(self, cert_pem: &str) -> Result<DevCa, CaError> {
        let der = decode_pem(cert_pem, &[CERT_TAG], "intermediate certificate")?;
        let mut ca = DevCa::from_parts(CertificateDer::from(der), self.key)?;
        ca.chain_pem = ca.cert_pem.clone();
        Ok(ca)
    }
}

impl DevCa {
    /// Signs a secondary datacenter's request ([`IntermediateRequest::csr_pem`]) with
    /// this root, as Consul's provider signs an intermediate: the request's signature
    /// must verify; of the request only the public key is taken, the rest is the
    /// intermediate profile (empty subject, `spiffe://<this trust domain>`, CA with path
    /// length 0, valid until this root expires). PEM with a trailing newline.
    pub fn sign_intermediate(&self, csr_pem: &str) -> Result<String, CaError> {
        let bad = |reason: String| CaError::Pem {
            what: "intermediate request",
            reason,
        };
        let der = decode_pem(csr_pem, &[CSR_TAG], "intermediate request")?;
        // Parses and verifies the request's self-signature: proof the secondary holds
        // the key it asks a certificate for.
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
            der.as_slice(),
        ))
        .map_err(|e| bad(e.to_string()))?;
        let (_, request) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der)
                .map_err(|e| bad(e.to_string()))?;
        let spki = request.certification_request_info.subject_pki.raw;
        let public_key = SubjectPublicKeyInfo::from_der(spki)?;
        let mut params = ca_profile(
            DistinguishedName::new(),
            &format!("spiffe://{}", self.trust_domain()),
            BasicConstraints::Constrained(0),
            sha256(spki),
        )?;
        params.serial_number = Some(SerialNumber::from(self.next_serial()?));
        params.not_before = (OffsetDateTime::now_utc() - BACKDATE).truncate_to_second();
        params.not_after = self.not_after;
        let cert = params.signed_by(&public_key, &self.issuer)?;
        Ok(encode_pem(CERT_TAG, cert.der()))
    }

    /// What follows every leaf this CA signs in its `cert_pem`: nothing for a root,
    /// the intermediate itself for a secondary's signing CA.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }
}
