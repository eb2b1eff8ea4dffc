//! Two datacenters: the WAN membership, a secondary's CA (an intermediate of the
//! primary's root, following its rotations) and `?dc=` answered by the other
//! datacenter.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{Value, json};
use x509_parser::extensions::GeneralName;

use super::{Agent, certs, eventually, two_datacenters, verify};
use crate::DevAgentConfig;
use ferrule_control::api::ca::{IndexedCARoots, IssuedCert};

#[tokio::test]
async fn datacenters_know_each_other_and_an_unknown_one_has_no_path() {
    let (dc1, dc2) = two_datacenters().await;
    assert_eq!(
        dc2.get("/v1/catalog/datacenters").await.value(),
        json!(["dc2", "dc1"])
    );
    let me = dc2.get("/v1/agent/self").await.value();
    assert_eq!(me["Config"]["Datacenter"], "dc2");
    assert_eq!(me["Config"]["PrimaryDatacenter"], "dc1");
    assert_eq!(
        dc1.get("/v1/agent/self").await.value()["Config"]["PrimaryDatacenter"],
        "dc1"
    );
    for path in [
        "/v1/health/service/api?dc=dc9",
        "/v1/catalog/services?dc=dc9",
        "/v1/discovery-chain/api?dc=dc9",
        "/v1/query/q/execute?dc=dc9",
    ] {
        let answer = dc1.get(path).await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        assert_eq!(answer.text(), "No path to datacenter", "{path}");
    }
    // Our own name is ours, whatever the path.
    assert_eq!(
        dc1.get("/v1/catalog/services?dc=dc1").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_secondary_without_a_reachable_primary_serves_but_signs_nothing() {
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = nowhere.local_addr().unwrap();
    drop(nowhere);
    let dc2 = Agent::with(DevAgentConfig {
        addr: std::net::SocketAddr::from(([127, 0, 0, 2], 0)),
        datacenter: "dc2".into(),
        primary_datacenter: Some("dc1".into()),
        join_wan: Some(addr),
        ..DevAgentConfig::default()
    })
    .await;
    let roots: IndexedCARoots = dc2.get("/v1/agent/connect/ca/roots").await.json();
    assert_eq!(roots, IndexedCARoots::default());
    let leaf = dc2.get("/v1/agent/connect/ca/leaf/api").await;
    assert_eq!(leaf.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        leaf.text().contains("not initialized yet"),
        "{}",
        leaf.text()
    );
    let config = dc2
        .put(
            "/v1/connect/ca/configuration",
            json!({"Provider": "consul", "Config": {}}),
        )
        .await;
    assert_eq!(config.status, StatusCode::BAD_REQUEST);
    assert!(
        config.text().contains("primary datacenter"),
        "{}",
        config.text()
    );
}

#[test]
fn a_secondary_needs_the_primarys_address_and_only_a_secondary_joins() {
    let secondary = DevAgentConfig {
        datacenter: "dc2".into(),
        primary_datacenter: Some("dc1".into()),
        ..DevAgentConfig::default()
    };
    assert!(secondary.validate().is_err(), "no --join-wan");
    let primary_joining = DevAgentConfig {
        join_wan: Some("127.0.0.1:8500".parse().unwrap()),
        ..DevAgentConfig::default()
    };
    assert!(primary_joining.validate().is_err());
    let own_primary = DevAgentConfig {
        primary_datacenter: Some("dc1".into()),
        ..DevAgentConfig::default()
    };
    assert!(own_primary.validate().is_ok());
    assert!(!own_primary.is_secondary());
}

/// The URI SANs of a certificate.
fn uris(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_secondarys_leaves_chain_through_its_intermediate_to_the_primarys_root() {
    let (dc1, dc2) = two_datacenters().await;
    let td = dc1.agent.trust_domain().to_owned();
    let primary: IndexedCARoots = dc1.get("/v1/connect/ca/roots").await.json();
    let secondary: IndexedCARoots = dc2.get("/v1/agent/connect/ca/roots").await.json();
    assert_eq!(secondary.trust_domain, td);
    assert_eq!(secondary.active_root_id, primary.active_root_id);
    assert_eq!(secondary.roots.len(), 1);
    let (root, ours) = (&primary.roots[0], &secondary.roots[0]);
    assert_eq!(ours.root_cert, root.root_cert, "the primary's root");
    assert_eq!(ours.intermediate_certs.len(), 1, "dc2's intermediate");
    assert_ne!(ours.signing_key_id, root.signing_key_id);

    let intermediate = certs(&ours.intermediate_certs[0]).remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(&intermediate).unwrap();
    assert_eq!(parsed.subject().iter().count(), 0, "empty subject");
    let bc = parsed.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    assert_eq!(uris(&intermediate), [format!("spiffe://{td}")]);
    let usage = parsed.key_usage().unwrap().unwrap().value;
    assert!(usage.key_cert_sign() && usage.crl_sign() && usage.digital_signature());

    let leaf: IssuedCert = dc2.get("/v1/agent/connect/ca/leaf/api").await.json();
    assert_eq!(
        leaf.service_uri,
        format!("spiffe://{td}/ns/default/dc/dc2/svc/api")
    );
    let chain = certs(&leaf.cert_pem);
    assert_eq!(chain.len(), 2, "the leaf, then dc2's intermediate");
    assert_eq!(chain[1], intermediate);
    verify(&chain, &root.root_cert).expect("a dc2 leaf verifies against dc1's root");
    verify(&chain[..1], &root.root_cert).expect_err("not without the intermediate");

    // dc1 keeps signing its own leaves with its root.
    let own: IssuedCert = dc1.get("/v1/agent/connect/ca/leaf/web").await.json();
    assert_eq!(certs(&own.cert_pem).len(), 1);
}

#[tokio::test]
async fn a_rotation_in_the_primary_reaches_the_secondary_and_wakes_its_readers() {
    let (dc1, dc2) = two_datacenters().await;
    let first = dc2.get("/v1/agent/connect/ca/leaf/api").await;
    let leaf: IssuedCert = first.json();
    let roots = dc2.get("/v1/agent/connect/ca/roots").await;
    let (leaf_index, roots_index) = (first.index(), roots.index());
    let old_root: IndexedCARoots = roots.json();

    let leaf_path = format!("/v1/agent/connect/ca/leaf/api?index={leaf_index}&wait=20s");
    let roots_path = format!("/v1/agent/connect/ca/roots?index={roots_index}&wait=20s");
    let blocked_leaf = dc2.get(&leaf_path);
    let blocked_roots = dc2.get(&roots_path);
    let started = Instant::now();
    let rotate = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(dc1.rotate_ca().await.status, StatusCode::OK);
    };
    let (new_leaf, new_roots, ()) = tokio::join!(blocked_leaf, blocked_roots, rotate);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken, not timed out"
    );

    let new_leaf: IssuedCert = new_leaf.json();
    assert_ne!(new_leaf.serial_number, leaf.serial_number);
    let roots: IndexedCARoots = new_roots.json();
    let primary: IndexedCARoots = dc1.get("/v1/connect/ca/roots").await.json();
    assert_eq!(roots.active_root_id, primary.active_root_id);
    assert_ne!(roots.active_root_id, old_root.active_root_id);
    assert_eq!(roots.roots.len(), 2, "the old root stays published");
    let active = roots.roots.iter().find(|r| r.active).unwrap();
    assert_eq!(
        active.intermediate_certs.len(),
        2,
        "the primary's cross-signed root, then dc2's new intermediate"
    );
    let chain = certs(&new_leaf.cert_pem);
    assert_eq!(
        chain.len(),
        3,
        "leaf, cross-signed root, dc2's intermediate"
    );
    verify(&chain, &active.root_cert).expect("verifies against the new root");
    let old = roots.roots.iter().find(|r| !r.active).unwrap();
    verify(&chain, &old.root_cert).expect("and, through the cross-signed root, the old one");
}

#[tokio::test]
async fn the_other_datacenter_answers_dc_reads_with_its_headers_and_blocking() {
    let (dc1, dc2) = two_datacenters().await;
    dc2.register(json!({
        "Name": "api", "Port": 9090,
        "TaggedAddresses": {"wan": {"Address": "198.51.100.7", "Port": 443}},
        "Connect": {"SidecarService": {}},
    }))
    .await;
    let here = dc1.get("/v1/health/connect/api").await.value();
    assert_eq!(here, json!([]));
    let there = dc1.get("/v1/health/connect/api?dc=dc2").await;
    assert_eq!(there.status, StatusCode::OK);
    assert_eq!(
        there.header("X-Consul-Query-Backend"),
        Some("blocking-query")
    );
    let entries = there.value();
    assert_eq!(entries.as_array().unwrap().len(), 1);
    assert_eq!(entries[0]["Node"]["Datacenter"], "dc2");
    assert_eq!(entries[0]["Service"]["Service"], "api-sidecar-proxy");
    let plain = dc1.get("/v1/health/service/api?dc=dc2").await.value();
    assert_eq!(
        plain[0]["Service"]["TaggedAddresses"]["wan"],
        json!({"Address": "198.51.100.7", "Port": 443})
    );
    let names = dc1.get("/v1/catalog/services?dc=dc2").await.value();
    assert!(names.get("api").is_some(), "{names}");

    // A blocking read over there answers when dc2 changes.
    let index = there.index();
    let path = format!("/v1/health/service/db?dc=dc2&index={index}&wait=20s");
    let blocked = dc1.get(&path);
    let register = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        dc2.register(json!({"Name": "db", "Port": 5432})).await;
    };
    let started = Instant::now();
    let (answer, ()) = tokio::join!(blocked, register);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(answer.index() > index);
    assert_eq!(answer.value()[0]["Service"]["Service"], "db");

    // Errors come back as the other agent gave them; the token travels.
    let missing = dc1
        .call_with(
            Method::GET,
            "/v1/config/service-defaults/nope?dc=dc2",
            None,
            &[("X-Consul-Token", "secret")],
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.text().starts_with("Config entry not found"));
    assert!(missing.header("x-consul-index").is_some());
    let chain = dc2
        .call(
            Method::POST,
            "/v1/discovery-chain/api?dc=dc1&compile-dc=dc2",
            Some(json!({})),
        )
        .await;
    assert_eq!(chain.status, StatusCode::OK, "{}", chain.text());
    assert_eq!(chain.value()["Chain"]["Datacenter"], "dc2");
}

async fn datacenters(agent: &Agent) -> Value {
    agent.get("/v1/catalog/datacenters").await.value()
}

#[tokio::test]
async fn a_restarted_primary_learns_the_secondary_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = DevAgentConfig {
        data_dir: Some(dir.path().to_owned()),
        ..DevAgentConfig::default()
    };
    let dc1 = Agent::with(config.clone()).await;
    let addr = dc1.agent.addr();
    let dc2 = Agent::with(DevAgentConfig {
        addr: std::net::SocketAddr::from(([127, 0, 0, 2], 0)),
        datacenter: "dc2".into(),
        primary_datacenter: Some("dc1".into()),
        join_wan: Some(addr),
        ..DevAgentConfig::default()
    })
    .await;
    eventually("dc1 knows dc2", Duration::from_secs(10), || async {
        (datacenters(&dc1).await == json!(["dc1", "dc2"])).then_some(())
    })
    .await;
    dc1.agent.shutdown().await.unwrap();
    let dc1 = Agent::with(DevAgentConfig { addr, ..config }).await;
    eventually(
        "the restarted dc1 knows dc2 again",
        Duration::from_secs(10),
        || async { (datacenters(&dc1).await == json!(["dc1", "dc2"])).then_some(()) },
    )
    .await;
    let leaf: IssuedCert = eventually("dc2 signs leaves", Duration::from_secs(10), || async {
        let answer = dc2.get("/v1/agent/connect/ca/leaf/api").await;
        (answer.status == StatusCode::OK).then(|| answer.json())
    })
    .await;
    let root: Value = dc1.get("/v1/connect/ca/roots").await.value();
    let root_pem = root["Roots"][0]["RootCert"].as_str().unwrap().to_owned();
    verify(&certs(&leaf.cert_pem), &root_pem).unwrap();
}
