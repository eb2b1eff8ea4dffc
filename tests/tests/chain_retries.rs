//! Retries: a route with `NumRetries: 2` and `RetryOnStatusCodes: [503]` hides an app
//! that fails once and then succeeds (the client sees 200; the app saw two requests),
//! and gives up after three attempts in all; a route without retries hands the 503 to
//! the client after one attempt.

use std::sync::atomic::{AtomicUsize, Ordering};

use ferrule_tests::backends::FAIL_HEADER;
use ferrule_tests::chain::{ChainMesh, InstanceSpec, SETUP, get, target_id};
use ferrule_tests::metrics::Selector;
use ferrule_tests::names::UPSTREAM_RETRIES;
use ferrule_tests::wait::eventually;
use serde_json::json;

const API: &str = "api";
const APP: &str = "api-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_retries_hides_one_503_and_a_route_without_does_not() {
    let mut mesh = ChainMesh::start().await;
    mesh.http_services(&[API]).await;
    mesh.write(&json!({
        "Kind": "service-router",
        "Name": API,
        "Routes": [{
            "Match": {"HTTP": {"PathPrefix": "/retry"}},
            "Destination": {"NumRetries": 2, "RetryOnStatusCodes": [503]},
        }],
    }))
    .await;
    mesh.add(InstanceSpec::http(API, APP)).await;
    mesh.start_web(&[API]).await;
    let addr = mesh.upstream(API);
    let attempt = AtomicUsize::new(0);
    let retried = eventually("a 503 on /retry is retried", SETUP, || async {
        let key = format!("warm-{}:1", attempt.fetch_add(1, Ordering::SeqCst));
        let reply = get(addr, "/retry/warm-up", &[(FAIL_HEADER, &key)]).await?;
        anyhow::ensure!(reply.status == 200, "{reply:?}");
        Ok(())
    })
    .await;
    mesh.expect(retried, "the route's retries").await;
    let app = mesh.instance(APP).http();
    let target = target_id(None, API);
    let labels = [
        ("upstream", API),
        ("target", target.as_str()),
        ("reason", "retriable-status-codes"),
    ];
    let retries = Selector {
        name: UPSTREAM_RETRIES,
        labels: &labels,
    };
    let admin = mesh.web_proxy().admin();
    let counted = admin.metric(retries.name, retries.labels).await;
    let mut counted = mesh.expect(counted, "scrape web's sidecar").await;
    assert!(counted >= 1.0, "the warm-up's retries were not counted");

    let once = get(addr, "/retry/once", &[(FAIL_HEADER, "once:1")])
        .await
        .expect("GET /retry/once");
    assert_eq!(
        (once.status, once.backend.as_deref()),
        (200, Some(APP)),
        "one 503, then 200, with two retries allowed: {once:?}"
    );
    assert_eq!(app.count_path("/retry/once"), 2, "attempts the app saw");
    counted += 1.0;
    let metric = admin
        .wait_for_metric(retries, |v| v == counted, SETUP)
        .await;
    mesh.expect(metric, "the retry counted").await;

    let plain = get(addr, "/plain", &[(FAIL_HEADER, "plain:1")])
        .await
        .expect("GET /plain");
    assert_eq!(
        (plain.status, plain.backend.as_deref()),
        (503, Some(APP)),
        "without retries the app's 503 reaches the client: {plain:?}"
    );
    assert_eq!(app.count_path("/plain"), 1, "attempts the app saw");

    let always = get(addr, "/retry/always", &[(FAIL_HEADER, "always:5")])
        .await
        .expect("GET /retry/always");
    assert_eq!(
        always.status, 503,
        "three 503s in a row exhaust two retries: {always:?}"
    );
    assert_eq!(
        app.count_path("/retry/always"),
        3,
        "one attempt and two retries"
    );
    counted += 2.0;
    let metric = admin
        .wait_for_metric(retries, |v| v == counted, SETUP)
        .await;
    mesh.expect(metric, "two more retries counted (none for /plain)")
        .await;
}
