//! Secondary-datacenter chains through the real configs, with rustls on both ends: a
//! leaf signed by an intermediate whose subject is empty (URI SAN `spiffe://<td>`, path
//! length 0), itself signed by the root the bundle holds. Presented in full, it is
//! accepted as server and as client; presented bare, only the bundle's intermediates
//! (the roots' `IntermediateCerts`) can complete the path.

use super::tests::complete;
use super::*;
use ferrule_control::model::{self, parse_bundle};
use ferrule_dev::ca::{DevCa, LeafSpec};
use rustls::CertificateError;
use rustls_pki_types::ServerName;

fn leaf(ca: &DevCa, name: &str, with_chain: bool) -> Leaf {
    let issued = ca.issue(&LeafSpec::service(name)).expect("issue");
    let pem = if with_chain {
        issued.cert_pem.clone()
    } else {
        // The leaf alone, without the intermediate after it.
        let end = "-----END CERTIFICATE-----\n";
        let first = issued.cert_pem.find(end).expect("a PEM block") + end.len();
        issued.cert_pem[..first].to_owned()
    };
    model::parse_leaf(pem.as_bytes(), issued.key_pem.as_bytes(), &provider()).expect("leaf")
}

/// `server` serving, `client` dialing it, with `bundle`: the handshake's outcome, and
/// how many certificates each side received.
fn handshake(
    bundle: &TrustBundle,
    server: &Leaf,
    client: &Leaf,
) -> Result<(usize, usize), rustls::Error> {
    let anchors = Arc::new(Anchors::new(bundle, &provider()));
    let server_cfg = server_config(
        &anchors,
        Arc::new(OurLeaf(server.key.clone())),
        &provider(),
        &[],
        server,
    )
    .expect("server config");
    let key = ClientKey {
        addr: "127.0.0.1:1".to_owned(),
        expected: server.id.clone(),
        offer: Offer::Nothing,
    };
    let client_cfg = client_config(
        &anchors,
        &key,
        Arc::new(OurLeaf(client.key.clone())),
        &provider(),
    )
    .expect("client config");
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut c = rustls::ClientConnection::new(client_cfg, name).expect("client");
    let mut s = rustls::ServerConnection::new(server_cfg).expect("server");
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        }
        s.read_tls(&mut buf.as_slice())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        s.process_new_packets()?;
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        }
        c.read_tls(&mut buf.as_slice())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            complete(&mut c, &mut s);
            let seen_by_server = s.peer_certificates().map_or(0, <[_]>::len);
            let seen_by_client = c.peer_certificates().map_or(0, <[_]>::len);
            return Ok((seen_by_server, seen_by_client));
        }
    }
    Err(rustls::Error::General("handshake did not finish".into()))
}

#[test]
fn the_intermediate_is_shaped_as_a_secondary_dcs() {
    let root = DevCa::generate(None).unwrap();
    let dc2 = root.intermediate().unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(dc2.cert_der()).unwrap();
    assert_eq!(cert.subject().iter().count(), 0, "empty subject DN");
    let (_, root_cert) = x509_parser::parse_x509_certificate(root.cert_der()).unwrap();
    assert_eq!(cert.issuer(), root_cert.subject(), "signed by the root");
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let uri = format!("spiffe://{}", root.trust_domain());
    assert!(matches!(
        san.value.general_names.as_slice(),
        [x509_parser::extensions::GeneralName::URI(u)] if *u == uri
    ));
}

#[test]
fn a_secondary_dc_chain_is_accepted_as_server_and_as_client() {
    let root = DevCa::generate(None).unwrap();
    let dc2 = root.intermediate().unwrap();
    let bundle = parse_bundle(root.cert_pem().as_bytes(), &root.trust_domain()).unwrap();
    let (api2, web2) = (leaf(&dc2, "api", true), leaf(&dc2, "web", true));
    let (api1, web1) = (leaf(&root, "api", true), leaf(&root, "web", true));
    // Both sides in the secondary DC: each receives leaf and intermediate.
    assert_eq!(handshake(&bundle, &api2, &web2), Ok((2, 2)));
    // Across the datacenters, both ways.
    assert_eq!(handshake(&bundle, &api2, &web1), Ok((1, 2)));
    assert_eq!(handshake(&bundle, &api1, &web2), Ok((2, 1)));
}

#[test]
fn a_bare_leaf_needs_the_roots_intermediate_certs() {
    let root = DevCa::generate(None).unwrap();
    let dc2 = root.intermediate().unwrap();
    let mut bundle = parse_bundle(root.cert_pem().as_bytes(), &root.trust_domain()).unwrap();
    let (api, web) = (leaf(&root, "api", true), leaf(&dc2, "web", false));
    let (api_bare, web_full) = (leaf(&dc2, "api", false), leaf(&root, "web", true));
    let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
    // The client sends no intermediate: the server cannot build its path...
    assert_eq!(handshake(&bundle, &api, &web), Err(unknown.clone()));
    // ...nor can the client for a server that does not.
    assert_eq!(handshake(&bundle, &api_bare, &web_full), Err(unknown));
    // With the roots' IntermediateCerts as candidates, both verify.
    bundle.intermediates = vec![dc2.cert_der().clone()];
    assert_eq!(handshake(&bundle, &api, &web), Ok((1, 1)));
    assert_eq!(handshake(&bundle, &api_bare, &web_full), Ok((1, 1)));
}

/// A secondary datacenter's chain built from scratch with rcgen, shaped as Consul's
/// (`docs/consul-semantics.md#on-the-wire`), so that the dev CA's own making of it is
/// not what is tested: a root, an intermediate with an empty subject and the URI SAN
/// `spiffe://<td>` (CA, path length 0) that the root signed, and a leaf with an empty
/// subject that the intermediate signed. Returns the root's PEM and the chain.
fn rcgen_secondary_chain(td: &str, leaf_uri: &str) -> (String, Vec<CertificateDer<'static>>) {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    let uri = |u: &str| SanType::URI(u.try_into().expect("a URI"));
    let ca_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let root_key = KeyPair::generate().expect("key");
    let mut root = CertificateParams::default();
    root.distinguished_name = DistinguishedName::new();
    root.distinguished_name
        .push(DnType::CommonName, format!("pri-1.consul.ca.{td}"));
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = ca_usages.clone();
    root.subject_alt_names = vec![uri(&format!("spiffe://{td}"))];
    let root_cert = root.self_signed(&root_key).expect("root");
    let root = Issuer::new(root, root_key);

    let dc2_key = KeyPair::generate().expect("key");
    let mut dc2 = CertificateParams::default();
    dc2.distinguished_name = DistinguishedName::new();
    dc2.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    dc2.key_usages = ca_usages;
    dc2.subject_alt_names = vec![uri(&format!("spiffe://{td}"))];
    let dc2_cert = dc2.signed_by(&dc2_key, &root).expect("intermediate");
    let dc2 = Issuer::new(dc2, dc2_key);

    let leaf_key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = DistinguishedName::new();
    leaf.subject_alt_names = vec![uri(leaf_uri)];
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
        KeyUsagePurpose::DataEncipherment,
    ];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let leaf_cert = leaf.signed_by(&leaf_key, &dc2).expect("leaf");
    let (_, parsed) = x509_parser::parse_x509_certificate(dc2_cert.der()).expect("parses");
    assert_eq!(parsed.subject().iter().count(), 0, "an empty subject DN");
    let chain = vec![leaf_cert.der().clone(), dc2_cert.der().clone()];
    (root_cert.pem(), chain)
}

#[test]
fn a_peer_chain_through_an_empty_subject_intermediate_is_accepted() {
    use rustls::client::danger::ServerCertVerifier;
    let td = "11111111-2222-3333-4444-555555555555.consul";
    let web_dc2 = ServiceId::new(td, "default", "dc2", "web");
    let (root_pem, chain) = rcgen_secondary_chain(td, &web_dc2.to_uri());
    let bundle = parse_bundle(root_pem.as_bytes(), td).expect("bundle");
    // As a caller on the public listener: its dc2 identity, with its datacenter.
    let inbound = SvidVerifier::new(&bundle, &provider());
    assert_eq!(inbound.verify_client(&chain).ok(), Some(web_dc2.clone()));
    assert!(
        inbound.verify_client(&chain[..1]).is_err(),
        "the leaf alone: no path to the root"
    );
    // As an upstream in dc2, which must be exactly the dc2 identity.
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let server = |expected: &ServiceId| {
        let verifier = ServerSvidVerifier {
            anchors: Arc::new(Anchors::new(&bundle, &provider())),
            expected: expected.clone(),
        };
        verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
    };
    assert!(server(&web_dc2).is_ok());
    let web_dc1 = ServiceId::new(td, "default", "dc1", "web");
    assert!(server(&web_dc1).is_err(), "the datacenter is part of it");
}
