//! Splitting: a `service-splitter` sends 90 % of web's requests to `api`'s v1 subset
//! and 10 % to v2, per request; over 1,000 requests the shares land within 3 points of
//! that. web's sidecar counts traffic per chain target in `/metrics`, labelled with the
//! target's ID (`v1.api.default.default.dc1`).

use ferrule_tests::chain::{
    ChainMesh, InstanceSpec, SETUP, spread_http, subset_resolver, subset_splitter, target_id,
    wait_seen, who,
};
use ferrule_tests::wait::eventually;

const API: &str = "api";
const V1: &str = "api-v1";
const V2: &str = "api-v2";
const REQUESTS: usize = 1000;
/// Percentage points the measured share may differ from the weight. With independent
/// weighted picks, one standard deviation over 1,000 requests is about 0.95 points.
const TOLERANCE: f64 = 3.0;

/// `api` as v1 and v2 behind a resolver with both subsets and a splitter with `splits`,
/// all written before web starts; then web, until it has reached both subsets.
async fn split_mesh(splits: &[(f64, &str)]) -> ChainMesh {
    let mut mesh = ChainMesh::start().await;
    mesh.http_services(&[API]).await;
    mesh.write(&subset_resolver(API, Some("v1"), &["v1", "v2"]))
        .await;
    mesh.write(&subset_splitter(API, splits)).await;
    mesh.add(InstanceSpec::http(API, V1).version("v1")).await;
    mesh.add(InstanceSpec::http(API, V2).version("v2")).await;
    mesh.start_web(&[API]).await;
    let addr = mesh.upstream(API);
    let warm = wait_seen("web reaches both subsets", SETUP, &[V1, V2], || {
        who(addr, "/warm-up")
    })
    .await;
    mesh.expect(warm, "the split mesh").await;
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_holds_over_1000_requests() {
    let mesh = split_mesh(&[(90.0, "v1"), (10.0, "v2")]).await;
    let spread = spread_http(mesh.upstream(API), "/split", &[], REQUESTS, 4).await;
    let (v1, v2) = (spread.percent(V1), spread.percent(V2));
    eprintln!(
        "split over {} requests: v1 {v1:.1} % ({}), v2 {v2:.1} % ({}), failed {}",
        spread.total(),
        spread.on(V1),
        spread.on(V2),
        spread.failed.len()
    );
    assert!(
        spread.failed.is_empty(),
        "{} of {REQUESTS} requests failed: {:?}",
        spread.failed.len(),
        spread.failed.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(
        spread.on(V1) + spread.on(V2),
        REQUESTS,
        "requests landed elsewhere: {spread:?}"
    );
    assert!(
        (v1 - 90.0).abs() <= TOLERANCE,
        "v1 got {v1:.1} % of the requests, v2 {v2:.1} %: not within {TOLERANCE} points of \
         90/10\n{}",
        mesh.diagnose().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_count_traffic_per_chain_target() {
    let mesh = split_mesh(&[(50.0, "v1"), (50.0, "v2")]).await;
    let spread = spread_http(mesh.upstream(API), "/counted", &[], 100, 2).await;
    assert!(spread.failed.is_empty(), "requests failed: {spread:?}");
    let admin = mesh.web_proxy().admin();
    for (subset, backend) in [("v1", V1), ("v2", V2)] {
        let target = target_id(Some(subset), API);
        let families = eventually(
            &format!("web's /metrics has samples labelled target={target:?}"),
            SETUP,
            || async {
                let metrics = admin.metrics().await?;
                let families = metrics.families_with("target", &target);
                anyhow::ensure!(
                    families.values().any(|v| *v > 0.0),
                    "families with that target: {families:?}; every target label: {:?}",
                    metrics.label_values("target")
                );
                Ok(families)
            },
        )
        .await;
        let families = mesh.expect(families, "per-target metrics").await;
        eprintln!(
            "target {target} ({} requests landed on {backend}): {families:?}",
            spread.on(backend)
        );
    }
}
