//! Splitting: a `service-splitter` sends 90 % of web's requests to `api`'s v1 subset
//! and 10 % to v2, per request; over 1,000 requests the shares land within 3 points of
//! that. web's sidecar counts each request (and each dial) under the chain target that
//! served it, labelled with the target's ID (`v1.api.default.default.dc1`).

use ferrule_tests::chain::{
    ChainMesh, InstanceSpec, SETUP, spread_http, subset_resolver, subset_splitter, target_id,
    wait_seen, who,
};
use ferrule_tests::names::{OUTBOUND, UPSTREAM_REQUESTS};
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
    let admin = mesh.web_proxy().admin();
    let before = admin.metrics().await.expect("scrape web's sidecar");
    let spread = spread_http(mesh.upstream(API), "/counted", &[], 100, 2).await;
    assert!(spread.failed.is_empty(), "requests failed: {spread:?}");
    let targets = [
        (target_id(Some("v1"), API), spread.on(V1)),
        (target_id(Some("v2"), API), spread.on(V2)),
    ];
    // Each request is counted once, under the target that answered it.
    let counted = eventually(
        "web counts each request under its target",
        SETUP,
        || async {
            let after = admin.metrics().await?;
            for (target, landed) in &targets {
                let labels = [
                    ("upstream", API),
                    ("target", target.as_str()),
                    ("status", "2xx"),
                ];
                let delta =
                    after.get(UPSTREAM_REQUESTS, &labels) - before.get(UPSTREAM_REQUESTS, &labels);
                anyhow::ensure!(
                    delta == *landed as f64,
                    "{target}: counted {delta}, {landed} landed there; all samples:\n{}",
                    after.show(UPSTREAM_REQUESTS)
                );
            }
            Ok(after)
        },
    )
    .await;
    let after = mesh.expect(counted, "per-target request counts").await;
    // The dials are counted by target too.
    for (target, _) in &targets {
        let families = after.families_with("target", target);
        eprintln!("target {target}: {families:?}");
        assert!(
            after.get(OUTBOUND, &[("target", target.as_str()), ("result", "ok")]) >= 1.0,
            "no dial of {target} counted: {}",
            after.show(OUTBOUND)
        );
    }
}
