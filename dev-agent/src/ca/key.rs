//! The CA's keys and the leaves' keys. A CA key has one of the types Consul's CA
//! configuration allows (`PrivateKeyType`/`PrivateKeyBits`: EC P-256 by default, P-384,
//! RSA 2048 or 4096 here) and signs as Consul's Go code does: SHA-256 with every key
//! type (ECDSA-with-SHA256 even on P-384, PKCS#1 v1.5 with SHA-256 for RSA). A leaf key is
//! EC P-256 whatever the CA's type, as Consul's agent makes it
//! (`docs/consul-semantics.md#identity`).

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, KeyPair as _, RSA_PKCS1_SHA256,
};
use rcgen::{
    KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, PublicKeyData, SignatureAlgorithm, SigningKey,
};

use super::CaError;
use super::format::{PKCS1_TAG, PKCS8_TAG, SEC1_TAG, encode_pem};

/// A CA key type, as `PrivateKeyType` and `PrivateKeyBits` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    /// Consul's default.
    #[default]
    Ec256,
    Ec384,
    Rsa2048,
    Rsa4096,
}

/// Why a `PrivateKeyType`/`PrivateKeyBits` pair is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyTypeError {
    /// What Consul's CA configuration check answers, word for word.
    #[error("{0}")]
    Invalid(&'static str),
    /// Valid for Consul, but not a key the dev CA can make.
    #[error(
        "the dev agent's CA cannot make EC P-{0} keys (Consul can); use PrivateKeyBits 256 or 384"
    )]
    Unsupported(u64),
}

impl KeyType {
    /// The type Consul's configuration names, refused as Consul refuses it; EC P-224 and
    /// P-521, valid for Consul, are refused too (no TLS stack ferrule uses verifies
    /// P-224, and P-521 certificates need a signer the dev CA does not build with).
    pub fn from_config(kind: &str, bits: u64) -> Result<KeyType, KeyTypeError> {
        match (kind, bits) {
            ("ec", 256) => Ok(KeyType::Ec256),
            ("ec", 384) => Ok(KeyType::Ec384),
            ("ec", 224 | 521) => Err(KeyTypeError::Unsupported(bits)),
            ("ec", _) => Err(KeyTypeError::Invalid(
                "EC key length must be one of (224, 256, 384, 521) bits",
            )),
            ("rsa", 2048) => Ok(KeyType::Rsa2048),
            ("rsa", 4096) => Ok(KeyType::Rsa4096),
            ("rsa", _) => Err(KeyTypeError::Invalid(
                "RSA key length must be 2048 or 4096 bits",
            )),
            _ => Err(KeyTypeError::Invalid(
                "private key type must be either 'ec' or 'rsa'",
            )),
        }
    }

    /// `PrivateKeyType`: `ec` or `rsa`.
    pub fn kind(self) -> &'static str {
        match self {
            KeyType::Ec256 | KeyType::Ec384 => "ec",
            KeyType::Rsa2048 | KeyType::Rsa4096 => "rsa",
        }
    }

    /// `PrivateKeyBits`.
    pub fn bits(self) -> u32 {
        match self {
            KeyType::Ec256 => 256,
            KeyType::Ec384 => 384,
            KeyType::Rsa2048 => 2048,
            KeyType::Rsa4096 => 4096,
        }
    }
}

/// A CA's private key: it signs certificates (rcgen's [`SigningKey`]) and knows its
/// public key as a SubjectPublicKeyInfo.
pub(super) struct CaKey {
    kind: KeyType,
    signer: Signer,
    spki_der: Vec<u8>,
    /// The public key inside the SPKI, which rcgen asks for.
    public_key: Vec<u8>,
    private_pem: String,
}

enum Signer {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl CaKey {
    pub(super) fn generate(kind: KeyType) -> Result<CaKey, CaError> {
        let failed = |_| CaError::Crypto("generating a CA key");
        let signer = match kind {
            KeyType::Ec256 | KeyType::Ec384 => {
                Signer::Ec(EcdsaKeyPair::generate(ec_algorithm(kind)).map_err(failed)?)
            }
            KeyType::Rsa2048 => {
                Signer::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).map_err(failed)?)
            }
            KeyType::Rsa4096 => {
                Signer::Rsa(RsaKeyPair::generate(KeySize::Rsa4096).map_err(failed)?)
            }
        };
        CaKey::of(kind, signer)
    }

    /// A key written earlier: EC (SEC1 or PKCS#8, P-256 or P-384) or RSA (PKCS#1 or
    /// PKCS#8, 2048 or 4096 bits).
    pub(super) fn from_der(der: &[u8]) -> Result<CaKey, CaError> {
        for kind in [KeyType::Ec256, KeyType::Ec384] {
            if let Ok(pair) = EcdsaKeyPair::from_private_key_der(ec_algorithm(kind), der) {
                return CaKey::of(kind, Signer::Ec(pair));
            }
        }
        let rsa = RsaKeyPair::from_pkcs8(der)
            .or_else(|_| RsaKeyPair::from_der(der))
            .map_err(|_| CaError::Crypto("the CA key is not an EC P-256, P-384 or RSA key"))?;
        let kind = match rsa.public_modulus_len() * 8 {
            2048 => KeyType::Rsa2048,
            4096 => KeyType::Rsa4096,
            _ => return Err(CaError::Crypto("an RSA CA key must have 2048 or 4096 bits")),
        };
        CaKey::of(kind, Signer::Rsa(rsa))
    }

    fn of(kind: KeyType, signer: Signer) -> Result<CaKey, CaError> {
        let encoding = |_| CaError::Crypto("encoding a CA key");
        let (spki_der, private_pem) = match &signer {
            Signer::Ec(pair) => (
                pair.public_key()
                    .as_der()
                    .map_err(encoding)?
                    .as_ref()
                    .to_vec(),
                encode_pem(SEC1_TAG, &sec1_of(pair)?),
            ),
            Signer::Rsa(pair) => (
                pair.public_key()
                    .as_der()
                    .map_err(encoding)?
                    .as_ref()
                    .to_vec(),
                encode_pem(PKCS8_TAG, pair.as_der().map_err(encoding)?.as_ref()),
            ),
        };
        let public_key = spki_public_key(&spki_der)?;
        Ok(CaKey {
            kind,
            signer,
            spki_der,
            public_key,
            private_pem,
        })
    }

    pub(super) fn key_type(&self) -> KeyType {
        self.kind
    }

    /// The DER SubjectPublicKeyInfo.
    pub(super) fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// SEC1 (`EC PRIVATE KEY`) for EC keys, as Consul writes them; PKCS#8 for RSA.
    pub(super) fn private_pem(&self) -> &str {
        &self.private_pem
    }
}

fn ec_algorithm(kind: KeyType) -> &'static EcdsaSigningAlgorithm {
    if kind == KeyType::Ec384 {
        &ECDSA_P384_SHA384_ASN1_SIGNING
    } else {
        &ECDSA_P256_SHA256_ASN1_SIGNING
    }
}

/// The BIT STRING of a SubjectPublicKeyInfo.
fn spki_public_key(spki: &[u8]) -> Result<Vec<u8>, CaError> {
    use x509_parser::prelude::FromDer;
    let (_, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki)
        .map_err(|_| CaError::Crypto("reading a CA public key"))?;
    Ok(parsed.subject_public_key.data.to_vec())
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }

    /// The algorithm this key signs with, which is what rcgen writes as a certificate's
    /// signature algorithm. (Its SubjectPublicKeyInfo goes through
    /// `rcgen::SubjectPublicKeyInfo`, which names the curve right.)
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self.signer {
            Signer::Ec(_) => &PKCS_ECDSA_P256_SHA256,
            Signer::Rsa(_) => &PKCS_RSA_SHA256,
        }
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Ec(pair) if self.kind == KeyType::Ec384 => {
                // ECDSA signs the leftmost bits of the digest, as many as the curve's
                // order has (FIPS 186-4, 6.4): a SHA-256 digest zero-extended on the
                // left to SHA-384's length is the same number, so this is ECDSA P-384
                // with SHA-256, the signature Go makes and `ecdsa-with-SHA256` names.
                let mut wide = [0u8; 48];
                wide[16..].copy_from_slice(digest::digest(&digest::SHA256, msg).as_ref());
                let digest = digest::Digest::import_less_safe(&wide, &digest::SHA384)
                    .map_err(|_| rcgen::Error::RingUnspecified)?;
                let sig = pair
                    .sign_digest(&digest)
                    .map_err(|_| rcgen::Error::RingUnspecified)?;
                Ok(sig.as_ref().to_vec())
            }
            Signer::Ec(pair) => {
                let sig = pair
                    .sign(&rng, msg)
                    .map_err(|_| rcgen::Error::RingUnspecified)?;
                Ok(sig.as_ref().to_vec())
            }
            Signer::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, msg, &mut sig)
                    .map_err(|_| rcgen::Error::RingUnspecified)?;
                Ok(sig)
            }
        }
    }
}

/// A leaf's key: EC P-256, as rcgen's key pair (the certificate's subject key) and as
/// SEC1 and PKCS#8 PEM.
pub(super) struct LeafKey {
    pub(super) pair: KeyPair,
    pub(super) sec1_pem: String,
    pub(super) pkcs8_pem: String,
}

impl LeafKey {
    pub(super) fn generate() -> Result<LeafKey, CaError> {
        let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let ec = EcdsaKeyPair::from_private_key_der(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            pair.serialized_der(),
        )
        .map_err(|_| CaError::Crypto("reading a generated P-256 key"))?;
        Ok(LeafKey {
            sec1_pem: encode_pem(SEC1_TAG, &sec1_of(&ec)?),
            pkcs8_pem: encode_pem(PKCS8_TAG, pair.serialized_der()),
            pair,
        })
    }
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

/// The PEM tags a CA key may come in.
pub(super) const CA_KEY_TAGS: &[&str] = &[SEC1_TAG, PKCS8_TAG, PKCS1_TAG];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_types_are_checked_as_consul_checks_them() {
        assert_eq!(KeyType::from_config("ec", 256), Ok(KeyType::Ec256));
        assert_eq!(KeyType::from_config("ec", 384), Ok(KeyType::Ec384));
        assert_eq!(KeyType::from_config("rsa", 2048), Ok(KeyType::Rsa2048));
        assert_eq!(KeyType::from_config("rsa", 4096), Ok(KeyType::Rsa4096));
        for (kind, bits, message) in [
            (
                "ec",
                2048,
                "EC key length must be one of (224, 256, 384, 521) bits",
            ),
            ("rsa", 256, "RSA key length must be 2048 or 4096 bits"),
            ("rsa", 3072, "RSA key length must be 2048 or 4096 bits"),
            ("dsa", 1024, "private key type must be either 'ec' or 'rsa'"),
            ("EC", 256, "private key type must be either 'ec' or 'rsa'"),
        ] {
            let err = KeyType::from_config(kind, bits).unwrap_err();
            assert_eq!(err, KeyTypeError::Invalid(message), "{kind}/{bits}");
        }
        assert_eq!(
            KeyType::from_config("ec", 521),
            Err(KeyTypeError::Unsupported(521))
        );
        for kind in [
            KeyType::Ec256,
            KeyType::Ec384,
            KeyType::Rsa2048,
            KeyType::Rsa4096,
        ] {
            assert_eq!(
                KeyType::from_config(kind.kind(), kind.bits().into()),
                Ok(kind)
            );
        }
    }

    #[test]
    fn ca_keys_reload_from_their_pem() {
        for kind in [KeyType::Ec256, KeyType::Ec384, KeyType::Rsa2048] {
            let key = CaKey::generate(kind).unwrap();
            let block = pem::parse(key.private_pem()).unwrap();
            let expected = if kind.kind() == "ec" {
                SEC1_TAG
            } else {
                PKCS8_TAG
            };
            assert_eq!(block.tag(), expected);
            let again = CaKey::from_der(block.contents()).unwrap();
            assert_eq!(again.key_type(), kind);
            assert_eq!(again.spki_der(), key.spki_der());
        }
        assert!(CaKey::from_der(b"not a key").is_err());
    }
}
