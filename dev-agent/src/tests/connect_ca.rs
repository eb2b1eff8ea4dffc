//! The Connect CA endpoints: leaves with Consul's certificate profile and their renewal,
//! cross-signed root rotation, and the pruning of a rotated-out root.

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{Value, json};
use x509_parser::extensions::GeneralName;

use super::{Agent, certs, verify};
use crate::DevAgentConfig;
use ferrule_control::api::ca::{IndexedCARoots, IssuedCert};

#[tokio::test]
async fn leaves_have_consuls_profile_and_blocking_readers_get_the_renewal() {
    let agent = Agent::with(DevAgentConfig {
        leaf_ttl: Duration::from_secs(3),
        ..DevAgentConfig::default()
    })
    .await;
    let answer = agent.get("/v1/agent/connect/ca/leaf/web").await;
    assert_eq!(answer.status, StatusCode::OK);
    let leaf: IssuedCert = answer.json();
    assert_eq!(answer.index(), leaf.modify_index);
    let td = agent.agent.trust_domain().to_owned();
    let uri = format!("spiffe://{td}/ns/default/dc/dc1/svc/web");
    assert_eq!(leaf.service_uri, uri);
    assert_eq!(leaf.service, "web");
    assert!(
        leaf.private_key_pem
            .starts_with("-----BEGIN EC PRIVATE KEY-----")
    );
    assert!(
        answer.value().get("Namespace").is_none(),
        "CE has no Namespace"
    );

    let chain = certs(&leaf.cert_pem);
    assert_eq!(chain.len(), 1, "no intermediates before any rotation");
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    assert_eq!(cert.subject().iter().count(), 0, "empty subject");
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical);
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => *u,
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect();
    assert_eq!(uris, [uri.as_str()]);
    assert_eq!(leaf.serial_number, cert.raw_serial_as_string());

    // A non-blocking read of a fresh leaf gets the same one.
    let again: IssuedCert = agent.get("/v1/agent/connect/ca/leaf/web").await.json();
    assert_eq!(again.serial_number, leaf.serial_number);

    // Renewed between 60 % and 90 % of the 3 s lifetime.
    let started = Instant::now();
    let renewed = agent
        .get(&format!(
            "/v1/agent/connect/ca/leaf/web?index={}&wait=20s",
            leaf.modify_index
        ))
        .await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    let new: IssuedCert = renewed.json();
    assert_ne!(new.serial_number, leaf.serial_number);
    assert!(renewed.index() > leaf.modify_index);
    assert_eq!(renewed.index(), new.modify_index);
}

#[tokio::test]
async fn a_root_rotation_is_cross_signed_and_both_roots_are_published() {
    let agent = Agent::start().await;
    let before: IndexedCARoots = agent.get("/v1/agent/connect/ca/roots").await.json();
    assert_eq!(before.roots.len(), 1);
    assert_eq!(before.trust_domain, agent.agent.trust_domain());
    let old_root = before.roots[0].clone();
    assert!(old_root.active && old_root.intermediate_certs.is_empty());
    assert_eq!(old_root.id, before.active_root_id);
    assert_eq!(old_root.name, "Consul CA Primary Cert");
    let old_leaf: IssuedCert = agent.get("/v1/agent/connect/ca/leaf/web").await.json();

    // Only the leaf TTL: the root stays (Consul rotates with new key material only).
    let ttl_only = agent
        .put(
            "/v1/connect/ca/configuration",
            json!({ "Provider": "consul", "Config": { "LeafCertTTL": "72h" } }),
        )
        .await;
    assert_eq!(ttl_only.status, StatusCode::OK, "{}", ttl_only.text());
    let same: IndexedCARoots = agent.get("/v1/agent/connect/ca/roots").await.json();
    assert_eq!(same.roots.len(), 1, "a TTL change keeps the root");
    assert_eq!(same.active_root_id, before.active_root_id);
    let same_leaf: IssuedCert = agent.get("/v1/agent/connect/ca/leaf/web").await.json();
    assert_eq!(same_leaf.serial_number, old_leaf.serial_number);

    let rotated = agent.rotate_ca().await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text());

    let after: IndexedCARoots = agent.get("/v1/agent/connect/ca/roots").await.json();
    assert_eq!(after.roots.len(), 2, "both roots during the overlap");
    assert_eq!(after.trust_domain, before.trust_domain);
    let new_root = after.roots.iter().find(|r| r.active).unwrap();
    let kept = after.roots.iter().find(|r| !r.active).unwrap();
    assert_eq!(kept.id, old_root.id);
    assert_eq!(after.active_root_id, new_root.id);
    assert_ne!(new_root.id, old_root.id);
    assert_eq!(
        new_root.external_trust_domain,
        old_root.external_trust_domain
    );
    assert_eq!(new_root.intermediate_certs.len(), 1);

    let leaf: IssuedCert = agent.get("/v1/agent/connect/ca/leaf/web").await.json();
    assert_ne!(leaf.serial_number, old_leaf.serial_number, "re-issued");
    assert!(leaf.modify_index > old_leaf.modify_index);
    let chain = certs(&leaf.cert_pem);
    assert_eq!(chain.len(), 2, "leaf + cross-signed intermediate");
    assert_eq!(
        certs(&new_root.intermediate_certs[0])[0],
        chain[1],
        "the intermediate is the one the roots list"
    );
    verify(&chain, &new_root.root_cert).expect("verifies against the new root");
    verify(&chain, &old_root.root_cert).expect("verifies against the old root");
    assert!(
        verify(&chain[..1], &old_root.root_cert).is_err(),
        "only through the cross-signed certificate"
    );

    let config = agent.get("/v1/connect/ca/configuration").await.value();
    assert_eq!(config["Provider"], "consul");
    // The rotation's body named no TTL: the default again, as shown at start.
    assert_eq!(config["Config"]["LeafCertTTL"], "72h0m0s");
    assert_eq!(
        format!("{}.consul", config["ClusterID"].as_str().unwrap()),
        agent.agent.trust_domain()
    );
}

#[tokio::test]
async fn a_rotated_out_root_is_pruned_after_twice_the_leaf_ttl() {
    let agent = Agent::with(DevAgentConfig {
        leaf_ttl: Duration::from_secs(1),
        ..DevAgentConfig::default()
    })
    .await;
    let rotated = agent.rotate_ca().await;
    assert_eq!(rotated.status, StatusCode::OK);
    let during = agent.get("/v1/agent/connect/ca/roots").await;
    let roots: IndexedCARoots = during.json();
    assert_eq!(roots.roots.len(), 2);
    let started = Instant::now();
    let path = format!(
        "/v1/agent/connect/ca/roots?index={}&wait=10s",
        during.index()
    );
    let after = agent.get(&path).await;
    let waited = started.elapsed();
    let roots: IndexedCARoots = after.json();
    assert_eq!(roots.roots.len(), 1, "pruned after {waited:?}");
    assert!(roots.roots[0].active);
    assert!(waited > Duration::from_millis(1500) && waited < Duration::from_secs(4));
}

#[tokio::test]
async fn the_key_type_of_the_configuration_makes_the_root_and_signs_the_leaves() {
    let agent = Agent::start().await;
    let before: IndexedCARoots = agent.get("/v1/agent/connect/ca/roots").await.json();
    assert_eq!(
        (
            before.roots[0].private_key_type.as_str(),
            before.roots[0].private_key_bits
        ),
        ("ec", 256)
    );
    let put_key = |kind: &'static str, bits: Value| json!({ "Provider": "consul", "Config": { "PrivateKeyType": kind, "PrivateKeyBits": bits } });
    // Refused as Consul's provider refuses them (a 500 with its message), or, for the
    // curves Consul takes and the dev CA cannot make, a 400.
    for (kind, bits, status, message) in [
        (
            "ec",
            json!(2048),
            500,
            "error configuring provider: EC key length must be one of (224, 256, 384, 521) bits",
        ),
        (
            "rsa",
            json!(3072),
            500,
            "error configuring provider: RSA key length must be 2048 or 4096 bits",
        ),
        (
            "dsa",
            json!(1024),
            500,
            "error configuring provider: private key type must be either 'ec' or 'rsa'",
        ),
        (
            "ec",
            json!(521),
            400,
            "the dev agent's CA cannot make EC P-521 keys",
        ),
    ] {
        let refused = agent
            .put("/v1/connect/ca/configuration", put_key(kind, bits))
            .await;
        assert_eq!(
            refused.status.as_u16(),
            status,
            "{kind}: {}",
            refused.text()
        );
        assert!(refused.text().starts_with(message), "{}", refused.text());
    }
    let same: IndexedCARoots = agent.get("/v1/agent/connect/ca/roots").await.json();
    assert_eq!(
        same.active_root_id, before.active_root_id,
        "refusals keep the root"
    );

    // RSA (bits as a string, as Go's weak decoding takes them): a new root, cross-signed.
    let rsa = agent
        .put(
            "/v1/connect/ca/configuration",
            put_key("rsa", json!("2048")),
        )
        .await;
    assert_eq!(rsa.status, StatusCode::OK, "{}", rsa.text());
    let roots: IndexedCARoots = agent.get("/v1/agent/connect/ca/roots").await.json();
    let active = roots.roots.iter().find(|r| r.active).unwrap();
    assert_ne!(active.id, before.active_root_id);
    assert_eq!(
        (active.private_key_type.as_str(), active.private_key_bits),
        ("rsa", 2048)
    );
    let leaf: IssuedCert = agent.get("/v1/agent/connect/ca/leaf/web").await.json();
    assert!(
        leaf.private_key_pem
            .starts_with("-----BEGIN EC PRIVATE KEY-----")
    );
    let chain = certs(&leaf.cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    assert_eq!(
        cert.signature_algorithm.algorithm.to_id_string(),
        "1.2.840.113549.1.1.11",
        "sha256WithRSAEncryption"
    );
    verify(&chain, &active.root_cert).expect("verifies against the RSA root");
    verify(&chain, &before.roots[0].root_cert).expect("and, cross-signed, the EC one");
    let config = agent.get("/v1/connect/ca/configuration").await.value();
    assert_eq!(config["Config"]["PrivateKeyType"], "rsa");

    // Another setting with the same key keeps the RSA root; the body replaces the
    // configuration (as Consul's does), so a key type left out is the default, EC P-256,
    // and rotates; P-384 rotates again.
    let ttl = agent
        .put(
            "/v1/connect/ca/configuration",
            json!({ "Config": { "LeafCertTTL": "24h", "PrivateKeyType": "rsa", "PrivateKeyBits": 2048 } }),
        )
        .await;
    assert_eq!(ttl.status, StatusCode::OK, "{}", ttl.text());
    let kept: IndexedCARoots = agent.get("/v1/agent/connect/ca/roots").await.json();
    assert_eq!(kept.active_root_id, roots.active_root_id);
    let config = agent.get("/v1/connect/ca/configuration").await.value();
    assert_eq!(config["Config"]["LeafCertTTL"], "24h");
    let default_key = agent
        .put(
            "/v1/connect/ca/configuration",
            json!({ "Config": { "LeafCertTTL": "24h" } }),
        )
        .await;
    assert_eq!(default_key.status, StatusCode::OK, "{}", default_key.text());
    let reverted: IndexedCARoots = agent.get("/v1/agent/connect/ca/roots").await.json();
    let active = reverted.roots.iter().find(|r| r.active).unwrap();
    assert_ne!(active.id, roots.active_root_id);
    assert_eq!(
        (active.private_key_type.as_str(), active.private_key_bits),
        ("ec", 256)
    );
    let p384 = agent
        .put("/v1/connect/ca/configuration", put_key("ec", json!(384)))
        .await;
    assert_eq!(p384.status, StatusCode::OK, "{}", p384.text());
    let roots: IndexedCARoots = agent.get("/v1/agent/connect/ca/roots").await.json();
    let active = roots.roots.iter().find(|r| r.active).unwrap();
    assert_eq!(
        (active.private_key_type.as_str(), active.private_key_bits),
        ("ec", 384)
    );
    let leaf: IssuedCert = agent.get("/v1/agent/connect/ca/leaf/web").await.json();
    verify(&certs(&leaf.cert_pem), &active.root_cert).expect("verifies against the P-384 root");

    // ?pem=true: every root, then its intermediates.
    let pem = agent.get("/v1/connect/ca/roots?pem=true").await.text();
    let published: usize = roots
        .roots
        .iter()
        .map(|r| 1 + r.intermediate_certs.len())
        .sum();
    assert_eq!(certs(&pem).len(), published);
    let bad = agent.get("/v1/connect/ca/roots?pem=maybe").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        bad.text(),
        "The 'pem' query parameter must be a boolean value"
    );
}
