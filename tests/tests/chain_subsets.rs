//! Subsets: `api` runs as v1 and v2 (`Meta.version`), each instance with its own
//! sidecar and app. Before any resolver, web's calls reach both. A `service-resolver`
//! with `DefaultSubset: "v1"` and subsets selected by `Service.Meta.version` then sends
//! every call to v1: requests of an L7 (http) upstream and connections of an L4 (tcp)
//! upstream alike. An instance whose checks warn still serves its subset, unless the
//! subset says `OnlyPassing`.

use anyhow::Context as _;
use ferrule_tests::agent::TtlStatus;
use ferrule_tests::chain::{
    ChainMesh, InstanceSpec, SETUP, spread_http, spread_tcp, subset_resolver, tcp_who, wait_seen,
    wait_streak, who,
};
use ferrule_tests::names::CONTROL_UPDATES;
use ferrule_tests::wait::eventually;
use serde_json::json;

const API: &str = "api";
const V1: &str = "api-v1";
const V2: &str = "api-v2";

/// `api` as v1 and v2, and web with an upstream to it; `http` makes api an HTTP service.
async fn two_versions(http: bool) -> ChainMesh {
    let mut mesh = ChainMesh::start().await;
    if http {
        mesh.http_services(&[API]).await;
    }
    for (id, version) in [(V1, "v1"), (V2, "v2")] {
        let spec = if http {
            InstanceSpec::http(API, id)
        } else {
            InstanceSpec::tcp(API, id)
        };
        mesh.add(spec.version(version)).await;
    }
    mesh.start_web(&[API]).await;
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_upstream_goes_only_to_the_default_subset() {
    let mesh = two_versions(true).await;
    let addr = mesh.upstream(API);
    let before = wait_seen(
        "without a resolver, web's calls reach both versions",
        SETUP,
        &[V1, V2],
        || who(addr, "/before"),
    )
    .await;
    mesh.expect(before, "the mesh before the resolver").await;

    mesh.write(&subset_resolver(API, Some("v1"), &["v1", "v2"]))
        .await;
    let took = wait_streak("the resolver applies", SETUP, V1, 20, || {
        who(addr, "/converging")
    })
    .await;
    let took = mesh.expect(took, "the default subset v1").await;
    eprintln!("20 calls in a row on v1 from +{took:?} after the resolver was written");

    let v2_before = mesh.instance(V2).http().count();
    let spread = spread_http(addr, "/after", &[], 100, 2).await;
    assert!(
        spread.on(V1) == 100 && spread.failed.is_empty(),
        "every request lands on v1: {spread:?}\n{}",
        mesh.diagnose().await
    );
    assert_eq!(
        mesh.instance(V2).http().count(),
        v2_before,
        "v2's app was reached after the resolver applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_upstream_goes_only_to_the_default_subset() {
    let mesh = two_versions(false).await;
    let addr = mesh.upstream(API);
    let before = wait_seen(
        "without a resolver, web's connections reach both versions",
        SETUP,
        &[V1, V2],
        || tcp_who(addr),
    )
    .await;
    mesh.expect(before, "the mesh before the resolver").await;

    mesh.write(&subset_resolver(API, Some("v1"), &["v1", "v2"]))
        .await;
    let took = wait_streak("the resolver applies", SETUP, V1, 20, || tcp_who(addr)).await;
    let took = mesh.expect(took, "the default subset v1").await;
    eprintln!("20 calls in a row on v1 from +{took:?} after the resolver was written");

    let v2_before = mesh.instance(V2).tcp().accepted();
    let spread = spread_tcp(addr, 40).await;
    assert!(
        spread.on(V1) == 40 && spread.failed.is_empty(),
        "every connection lands on v1: {spread:?}\n{}",
        mesh.diagnose().await
    );
    assert_eq!(
        mesh.instance(V2).tcp().accepted(),
        v2_before,
        "v2's app got a connection after the resolver applied"
    );
}

/// Waits until the agent lists `instance`'s sidecar with a check in `status`.
async fn agent_shows(mesh: &ChainMesh, instance: &str, status: &str) {
    let sidecar = format!("{instance}-sidecar-proxy");
    let shown = eventually(
        &format!("the agent shows {sidecar} {status}"),
        SETUP,
        || async {
            let entries = mesh.agent.get_json("/v1/health/connect/api").await?;
            let entry = entries
                .as_array()
                .context("not a list")?
                .iter()
                .find(|e| e["Service"]["ID"] == sidecar.as_str())
                .context("not listed")?;
            let checks = entry["Checks"].as_array().context("no Checks")?;
            anyhow::ensure!(
                checks.iter().any(|c| c["Status"] == status),
                "checks: {checks:?}"
            );
            Ok(())
        },
    )
    .await;
    mesh.expect(shown, "the agent's health view").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warning_instance_serves_unless_the_subset_wants_only_passing_ones() {
    const A: &str = "api-v1a";
    const B: &str = "api-v1b";
    let mut mesh = ChainMesh::start().await;
    mesh.http_services(&[API]).await;
    mesh.write(&subset_resolver(API, Some("v1"), &["v1"])).await;
    mesh.add(InstanceSpec::http(API, A).version("v1").ttl_check())
        .await;
    mesh.add(InstanceSpec::http(API, B).version("v1").ttl_check())
        .await;
    mesh.start_web(&[API]).await;
    let addr = mesh.upstream(API);
    let both = wait_seen("calls reach both instances", SETUP, &[A, B], || {
        who(addr, "/")
    })
    .await;
    mesh.expect(both, "two passing instances").await;

    // B warns. Its sidecar's health entry changes, and web's sidecar hears of it.
    let admin = mesh.web_proxy().admin();
    let endpoints = [("resource", "endpoints"), ("result", "ok")];
    let updates = admin.metric(CONTROL_UPDATES, &endpoints).await;
    let updates = mesh.expect(updates, "scrape web's sidecar").await;
    let check = mesh.instance(B).reg.ttl_check_id();
    mesh.agent.set_ttl_check(&check, TtlStatus::Warn).await;
    agent_shows(&mesh, B, "warning").await;
    let heard = eventually("web's sidecar reads the new health", SETUP, || async {
        let now = admin.metric(CONTROL_UPDATES, &endpoints).await?;
        anyhow::ensure!(now > updates, "no endpoints update since the warning");
        Ok(())
    })
    .await;
    mesh.expect(heard, "the warning reaching web's sidecar")
        .await;
    let spread = spread_http(addr, "/warning", &[], 40, 2).await;
    assert!(
        spread.on(B) >= 8 && spread.failed.is_empty(),
        "a warning instance is healthy unless OnlyPassing: {spread:?}\n{}",
        mesh.diagnose().await
    );

    let mut only_passing = subset_resolver(API, Some("v1"), &["v1"]);
    only_passing["Subsets"]["v1"]["OnlyPassing"] = json!(true);
    mesh.write(&only_passing).await;
    let applied = wait_streak("OnlyPassing leaves B out", SETUP, A, 20, || who(addr, "/")).await;
    mesh.expect(applied, "OnlyPassing").await;
    let spread = spread_http(addr, "/only-passing", &[], 40, 2).await;
    assert!(
        spread.on(A) == 40,
        "with OnlyPassing every call lands on the passing instance: {spread:?}"
    );

    mesh.agent.set_ttl_check(&check, TtlStatus::Pass).await;
    let back = wait_seen("B serves again once passing", SETUP, &[A, B], || {
        who(addr, "/")
    })
    .await;
    mesh.expect(back, "B passing again").await;
}
