//! Subsets: `api` runs as v1 and v2 (`Meta.version`), each instance with its own
//! sidecar and app. Before any resolver, web's calls reach both. A `service-resolver`
//! with `DefaultSubset: "v1"` and subsets selected by `Service.Meta.version` then sends
//! every call to v1: requests of an L7 (http) upstream and connections of an L4 (tcp)
//! upstream alike.

use ferrule_tests::chain::{
    ChainMesh, InstanceSpec, SETUP, spread_http, spread_tcp, subset_resolver, tcp_who, wait_seen,
    wait_streak, who,
};

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
    eprintln!("the resolver applied {took:?} after it was written");

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
    eprintln!("the resolver applied {took:?} after it was written");

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
