//! SVID verification, as the inbound listener does it for every full handshake: chain
//! to the bundle's root with rustls-webpki, then the SPIFFE ID out of the URI SAN.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ferrule::tls::{SvidVerifier, peer_identity, provider};
use ferrule_control::model::{parse_bundle, parse_certificates};
use ferrule_dev::ca::{DevCa, LeafSpec};

fn svid(c: &mut Criterion) {
    let ca = DevCa::generate(None).expect("dev CA");
    let bundle =
        parse_bundle(ca.cert_pem().as_bytes(), &ca.trust_domain()).expect("the CA's bundle");
    let leaf = ca.issue(&LeafSpec::service("web")).expect("a leaf");
    let chain = parse_certificates(leaf.cert_pem.as_bytes()).expect("the leaf's chain");
    let verifier = SvidVerifier::new(&bundle, &provider());
    assert!(verifier.verify_client(&chain).is_ok());
    c.bench_function("svid verification (chain + SPIFFE ID)", |b| {
        b.iter(|| verifier.verify_client(black_box(&chain)))
    });
    c.bench_function("spiffe id from a verified leaf", |b| {
        b.iter(|| peer_identity(black_box(&chain[0])))
    });
}

criterion_group!(benches, svid);
criterion_main!(benches);
