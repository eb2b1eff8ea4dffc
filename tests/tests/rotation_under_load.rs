//! Rotation under load, in Consul mode: leaves renewed every few seconds and one CA
//! root rotation while a few thousand requests per second flow through web and api,
//! on keep-alive connections that are replaced every 20 requests (so new handshakes
//! meet each new certificate). Figures: requests per second, rotations seen, requests
//! failed (must be 0).

use std::collections::BTreeSet;
use std::time::Duration;

use ferrule_tests::agent::{AgentOptions, DevAgent, ServiceRegistration};
use ferrule_tests::backends::{GET_BODY, HttpEcho};
use ferrule_tests::clients::curl;
use ferrule_tests::consul::ConsulSidecar;
use ferrule_tests::traffic::Load;
use ferrule_tests::wait::{eventually, free_port};
use tokio::time::Instant;

const API: &str = "api";
const WEB: &str = "web";
const SETUP: Duration = Duration::from_secs(20);
const RUN: Duration = Duration::from_secs(16);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_rotations_and_a_root_rotation_under_load_lose_no_request() {
    // Renewed at 60–90 % of the lifetime: a new leaf every 2.4–3.6 s.
    let agent = DevAgent::start(AgentOptions {
        leaf_ttl: "4s".to_owned(),
        ..AgentOptions::default()
    })
    .await;
    let backend = HttpEcho::start().await;
    let api = ServiceRegistration::new(API, backend.addr().port());
    let web = ServiceRegistration::new(WEB, free_port().port()).with_upstream(API);
    agent.register(&api).await;
    agent.register(&web).await;
    agent.set_intentions(API, &[(WEB, "allow")]).await;
    let _api_proxy = ConsulSidecar::start(&agent, &api.id).await;
    let _web_proxy = ConsulSidecar::start(&agent, &web.id).await;
    agent.wait_passing(API, &[api.sidecar_port], SETUP).await;
    let url = format!("http://{}/", web.upstream_addr(API));
    eventually("a first request gets through", SETUP, || async {
        let got = curl(&url, &[]).await?;
        anyhow::ensure!(got.is_ok(), "{got:?}");
        Ok(())
    })
    .await
    .expect("web reaches api");

    let load = Load::start(web.upstream_addr(API), 8, 20, GET_BODY.as_bytes());
    let started = Instant::now();
    let mut serials = BTreeSet::new();
    let mut rotated_root = false;
    while started.elapsed() < RUN {
        if let Ok(serial) = agent.leaf_serial(API).await {
            serials.insert(serial);
        }
        if !rotated_root && started.elapsed() >= RUN / 2 {
            agent.rotate_ca().await;
            rotated_root = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (tally, rate) = load.stop().await;
    println!(
        "rotation under load: {} requests ok at {rate:.0}/s, {} failed, api leaves seen {}, 1 root rotation",
        tally.ok,
        tally.failures.len(),
        serials.len()
    );
    assert!(
        serials.len() >= 4,
        "only {} leaves in {RUN:?}",
        serials.len()
    );
    tally.assert_none_failed("rotation under load");
    assert!(
        tally.ok > 1_000,
        "too little traffic to mean anything: {}",
        tally.ok
    );
}
