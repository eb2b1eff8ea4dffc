//! Two `ferrule dev` agents as two datacenters, real processes: dc1 (the primary) on
//! 127.0.0.1 and dc2 on 127.0.0.2, joined with `--primary-datacenter dc1 --join-wan`.
//! dc2's leaves chain through its own intermediate to dc1's root (checked with the
//! proxy's verifier), an intention written in dc1 is seen in dc2 (and wakes a reader
//! blocked there), `?dc=dc2` is answered from dc1 by dc2, and a prepared query fails
//! over to dc2 while dc1's instance is critical.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{Value, json};
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};

use ferrule_tests::agent::{AgentOptions, DevAgent, TtlStatus};
use ferrule_tests::http;
use ferrule_tests::wait::eventually;

/// What the issue asks of replication: an intention applies everywhere within 2 s.
const REPLICATED_WITHIN: Duration = Duration::from_secs(2);

fn pem_certs(text: &str) -> Vec<CertificateDer<'static>> {
    ferrule_control::model::parse_certificates(text.as_bytes()).expect("PEM certificates")
}

/// Verifies a presented chain (leaf first) against `root_pem`, as the proxy does, for
/// both directions of a mesh connection.
fn verify(chain: &[CertificateDer<'static>], root_pem: &str) -> Result<(), webpki::Error> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let root = pem_certs(root_pem).remove(0);
    let anchors = [anchor_from_trusted_cert(&root).expect("a trust anchor")];
    let leaf = EndEntityCert::try_from(&chain[0])?;
    for usage in [KeyUsage::client_auth(), KeyUsage::server_auth()] {
        leaf.verify_for_usage(
            provider.signature_verification_algorithms.all,
            &anchors,
            &chain[1..],
            UnixTime::now(),
            usage,
            None,
            None,
        )?;
    }
    Ok(())
}

/// `api` at `ip`, with a TTL check `api-ttl` and a sidecar whose check follows it.
fn api(ip: &str, port: u16) -> Value {
    json!({
        "ID": "api", "Name": "api", "Address": ip, "Port": port,
        "Check": {"CheckID": "api-ttl", "TTL": "1h", "Status": "passing"},
        "Connect": {"SidecarService": {
            "Address": ip, "Port": port + 1,
            "Checks": [{"Name": "api alive", "AliasService": "api"}],
        }},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_datacenters_share_a_root_and_intentions_and_answer_for_each_other() {
    let dc1 = DevAgent::start(AgentOptions::default()).await;
    let dc2 = DevAgent::start_secondary(&dc1, "dc2", AgentOptions::default()).await;
    assert_eq!(
        dc1.get_json("/v1/catalog/datacenters").await.unwrap(),
        json!(["dc1", "dc2"])
    );
    assert_eq!(
        dc2.get_json("/v1/catalog/datacenters").await.unwrap(),
        json!(["dc2", "dc1"])
    );

    // dc2's leaf: leaf + dc2's intermediate, accepted against dc1's root alone.
    let roots = dc1.get_json("/v1/connect/ca/roots").await.unwrap();
    let trust_domain = roots["TrustDomain"].as_str().unwrap().to_owned();
    let root_pem = roots["Roots"][0]["RootCert"].as_str().unwrap().to_owned();
    let leaf = dc2.leaf("api").await.unwrap();
    assert_eq!(
        leaf["ServiceURI"],
        format!("spiffe://{trust_domain}/ns/default/dc/dc2/svc/api")
    );
    let chain = pem_certs(leaf["CertPEM"].as_str().unwrap());
    assert_eq!(chain.len(), 2, "the leaf, then dc2's intermediate");
    verify(&chain, &root_pem).expect("dc2's leaf verifies against dc1's root");
    let dc2_roots = dc2.get_json("/v1/agent/connect/ca/roots").await.unwrap();
    assert_eq!(dc2_roots["Roots"][0]["RootCert"], root_pem.as_str());
    assert_eq!(
        pem_certs(
            dc2_roots["Roots"][0]["IntermediateCerts"][0]
                .as_str()
                .unwrap()
        )[0],
        chain[1]
    );

    // An intention written in dc1 reaches dc2, waking a reader blocked there.
    let path = "/v1/connect/intentions/match?by=destination&name=api";
    let index = dc2.get(path).await.unwrap().consul_index.unwrap();
    let blocked_path = format!("{path}&index={index}&wait=30s");
    let dc2_addr = dc2.addr();
    let blocked = tokio::spawn(async move {
        http::get_within(dc2_addr, &blocked_path, Duration::from_secs(40)).await
    });
    dc1.set_intentions("api", &[("web", "deny")]).await;
    let written = Instant::now();
    let woken = blocked.await.unwrap().unwrap();
    assert!(
        written.elapsed() < REPLICATED_WITHIN,
        "the blocked read answered {:?} after the write",
        written.elapsed()
    );
    assert!(woken.consul_index.unwrap() > index);
    let matched = woken.json().unwrap();
    assert_eq!(matched["api"][0]["SourceName"], "web");
    assert_eq!(matched["api"][0]["Action"], "deny");
    dc1.set_intentions("api", &[("web", "allow")]).await;
    eventually("dc2 sees the allow", REPLICATED_WITHIN, || async {
        let matched = dc2.get_json(path).await?;
        anyhow::ensure!(matched["api"][0]["Action"] == "allow", "{matched}");
        Ok(())
    })
    .await
    .unwrap();

    // dc1 answers ?dc=dc2 with dc2's catalog; an unknown datacenter has no path.
    dc2.put("/v1/agent/service/register", &api("127.0.0.2", 9090))
        .await
        .unwrap();
    let there = dc1.get_json("/v1/health/connect/api?dc=dc2").await.unwrap();
    assert_eq!(there[0]["Node"]["Datacenter"], "dc2");
    assert_eq!(there[0]["Service"]["Address"], "127.0.0.2");
    let nowhere = dc1.get("/v1/health/connect/api?dc=dc3").await.unwrap();
    assert_eq!(
        (nowhere.status, nowhere.body.as_str()),
        (500, "No path to datacenter")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_query_fails_over_to_dc2_while_dc1s_instance_is_critical() {
    let dc1 = DevAgent::start(AgentOptions::default()).await;
    let dc2 = DevAgent::start_secondary(&dc1, "dc2", AgentOptions::default()).await;
    dc1.put("/v1/agent/service/register", &api("127.0.0.1", 9090))
        .await
        .unwrap();
    dc2.put("/v1/agent/service/register", &api("127.0.0.2", 9090))
        .await
        .unwrap();
    let created = http::request(
        dc1.addr(),
        hyper::Method::POST,
        "/v1/query",
        json!({"Name": "api", "Service": {"Service": "api", "Failover": {"NearestN": 1}}})
            .to_string()
            .into(),
    )
    .await
    .unwrap();
    assert_eq!(created.status, 200, "{}", created.body);

    let answered_by = |expected: &'static str| {
        let dc1 = &dc1;
        async move {
            let answer = dc1
                .get_json("/v1/query/api/execute?connect=true")
                .await
                .context("execute")?;
            let node_dc = &answer["Nodes"][0]["Node"]["Datacenter"];
            anyhow::ensure!(
                answer["Datacenter"] == expected && node_dc == expected,
                "{answer}"
            );
            anyhow::ensure!(answer["Nodes"][0]["Service"]["Kind"] == "connect-proxy");
            Ok(answer)
        }
    };
    let here = answered_by("dc1").await.unwrap();
    assert_eq!(here["Failovers"], 0);

    dc1.set_ttl_check("api-ttl", TtlStatus::Fail).await;
    let there = eventually("the query answers from dc2", Duration::from_secs(2), || {
        answered_by("dc2")
    })
    .await
    .unwrap();
    assert_eq!(there["Failovers"], 1);
    assert_eq!(there["Nodes"][0]["Service"]["Address"], "127.0.0.2");

    dc1.set_ttl_check("api-ttl", TtlStatus::Pass).await;
    eventually("back to dc1", Duration::from_secs(2), || answered_by("dc1"))
        .await
        .unwrap();
}
