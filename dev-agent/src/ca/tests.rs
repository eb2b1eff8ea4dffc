//! The CA's tests: each certificate's profile as Consul's built-in CA makes it, serials,
//! reloading, cross-signing, intermediates, the knobs for bad certificates, and every key
//! type signing verifiable leaves.

use super::format::{PKCS8_TAG, SEC1_TAG};
use super::*;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use rustls_pki_types::UnixTime;
use rustls_pki_types::pem::PemObject;
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

/// The SubjectPublicKeyInfo of a P-256 key in `der` (SEC1 or PKCS#8).
fn p256_spki(der: &[u8]) -> Vec<u8> {
    let key = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, der).unwrap();
    key.public_key().as_der().unwrap().as_ref().to_vec()
}

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
        assert_eq!(
            p256_spki(&decode_pem(pem_text, &[tag], "test").unwrap()),
            spki
        );
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
        let der = decode_pem(ca.key_pem(), &[SEC1_TAG], "t").unwrap();
        let key =
            EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, &der).unwrap();
        encode_pem(PKCS8_TAG, key.to_pkcs8v1().unwrap().as_ref())
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
fn the_root_signs_only_a_request_whose_key_signed_it() {
    let root = DevCa::generate(None).unwrap();
    let request = IntermediateRequest::new(&root.trust_domain()).unwrap();
    let pem = request.csr_pem().to_owned();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"));

    // The request's signature covers its key: a flipped bit in it is refused.
    let mut der = decode_pem(&pem, &["CERTIFICATE REQUEST"], "t").unwrap();
    let last = der.len() - 1;
    der[last] ^= 1;
    let tampered = super::format::encode_pem("CERTIFICATE REQUEST", &der);
    assert!(matches!(
        root.sign_intermediate(&tampered),
        Err(CaError::Pem { .. })
    ));
    assert!(root.sign_intermediate("not PEM").is_err());

    // A certificate for another key does not finish the request.
    let other = IntermediateRequest::new(&root.trust_domain()).unwrap();
    let for_other = root.sign_intermediate(other.csr_pem()).unwrap();
    assert!(matches!(
        request.finish(&for_other),
        Err(CaError::KeyMismatch)
    ));
    // Its own certificate does, and its leaves chain through it to the root.
    let dc2 = other.finish(&for_other).unwrap();
    let mut spec = LeafSpec::service("api");
    spec.datacenter = "dc2".into();
    let leaf = dc2.issue(&spec).unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    assert_eq!(dc2.chain_pem(), dc2.cert_pem());
    verify_via(&root, &leaf, &chain[1..]).unwrap();
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

#[test]
fn every_key_type_signs_leaves_with_sha256_and_p256_keys_as_consul_does() {
    // ecdsa-with-SHA256, sha256WithRSAEncryption (Go's choice for every key size).
    const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
    const RSA_SHA256: &str = "1.2.840.113549.1.1.11";
    for (key, sig_oid, spki_len) in [
        (KeyType::Ec384, ECDSA_SHA256, 120),
        (KeyType::Rsa2048, RSA_SHA256, 294),
    ] {
        let ca = DevCa::generate_with(&RootSpec {
            key,
            ..RootSpec::default()
        })
        .unwrap();
        assert_eq!(ca.key_type(), key);
        let root = ca.cert_der().clone();
        let root = parse(&root);
        assert_eq!(root.public_key().raw.len(), spki_len, "{key:?}");
        assert_eq!(root.signature_algorithm.algorithm.to_id_string(), sig_oid);
        assert_eq!(ski(&root), sha256(root.public_key().raw));

        let leaf = ca.issue(&LeafSpec::service("web")).unwrap();
        let der = der_of(&leaf.cert_pem);
        let cert = parse(&der);
        assert_eq!(cert.signature_algorithm.algorithm.to_id_string(), sig_oid);
        assert_eq!(aki(&cert), ski(&root), "the leaf names the root's key");
        assert!(leaf.key_pem.starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
        assert_eq!(
            p256_spki(&decode_pem(&leaf.key_pem, &[SEC1_TAG], "t").unwrap()),
            cert.public_key().raw,
            "the leaf's key is P-256 whatever the CA's"
        );
        verify(&ca, &leaf, UnixTime::now()).unwrap();

        // Reloaded from its PEM, it keeps its type and signs verifiable leaves.
        let again = DevCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.key_type(), key);
        let reissued = again.issue(&LeafSpec::service("api")).unwrap();
        verify(&ca, &reissued, UnixTime::now()).unwrap();
        let reissued_der = der_of(&reissued.cert_pem);
        assert_eq!(aki(&parse(&reissued_der)), ski(&root));

        // Rotating between key types: the old root vouches for the new one.
        let ec = DevCa::generate(Some(ca.cluster_id())).unwrap();
        let cross = der_of(&ca.cross_sign(&ec).unwrap());
        assert_eq!(
            parse(&cross).signature_algorithm.algorithm.to_id_string(),
            sig_oid
        );
        let ec_leaf = ec.issue(&LeafSpec::service("web")).unwrap();
        verify_via(&ca, &ec_leaf, &[cross]).unwrap();

        let dc2 = ca.intermediate().unwrap();
        assert_eq!(
            dc2.key_type(),
            KeyType::default(),
            "a secondary's own key type"
        );
        let signed = der_of(dc2.cert_pem());
        assert_eq!(
            parse(&signed).signature_algorithm.algorithm.to_id_string(),
            sig_oid
        );
        let leaf = dc2.issue(&LeafSpec::service("api")).unwrap();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        verify_via(&ca, &leaf, &chain[1..]).unwrap();
    }
}

/// Verifies `leaf` (its first certificate) against `ca`'s root through `intermediates`.
fn verify_via(
    ca: &DevCa,
    leaf: &IssuedLeaf,
    intermediates: &[CertificateDer<'_>],
) -> Result<(), webpki::Error> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let anchors = [anchor_from_trusted_cert(ca.cert_der()).unwrap()];
    let leaf_der = der_of(&leaf.cert_pem);
    let ee = EndEntityCert::try_from(&leaf_der)?;
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
}
