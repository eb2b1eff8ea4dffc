//! Redirects: `api`'s resolver redirects to another service, `api-new`; web's calls to
//! `api` land on api-new's instance (its sidecar proving api-new's identity), for an
//! HTTP upstream and for a TCP upstream, and never on api's.

use ferrule_tests::chain::{
    ChainMesh, InstanceSpec, SETUP, spread_http, spread_tcp, tcp_who, wait_streak, who,
};
use serde_json::json;

const API: &str = "api";
const NEW: &str = "api-new";
const OLD_APP: &str = "api-1";
const NEW_APP: &str = "api-new-1";

async fn redirected(http: bool) -> ChainMesh {
    let mut mesh = ChainMesh::start().await;
    if http {
        mesh.http_services(&[API, NEW]).await;
    }
    mesh.write(&json!({"Kind": "service-resolver", "Name": API, "Redirect": {"Service": NEW}}))
        .await;
    let spec = |service, id| {
        if http {
            InstanceSpec::http(service, id)
        } else {
            InstanceSpec::tcp(service, id)
        }
    };
    mesh.add(spec(API, OLD_APP)).await;
    mesh.add(spec(NEW, NEW_APP)).await;
    mesh.start_web(&[API]).await;
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_upstream_follows_a_redirect_to_another_service() {
    let mesh = redirected(true).await;
    let addr = mesh.upstream(API);
    let applied = wait_streak("calls go to api-new", SETUP, NEW_APP, 5, || who(addr, "/")).await;
    mesh.expect(applied, "the redirect").await;
    let spread = spread_http(addr, "/redirected", &[], 40, 2).await;
    assert!(
        spread.on(NEW_APP) == 40,
        "every call lands on api-new: {spread:?}\n{}",
        mesh.diagnose().await
    );
    assert_eq!(
        mesh.instance(OLD_APP).http().count(),
        0,
        "api's own app was called"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_upstream_follows_a_redirect_to_another_service() {
    let mesh = redirected(false).await;
    let addr = mesh.upstream(API);
    let applied = wait_streak("connections go to api-new", SETUP, NEW_APP, 5, || {
        tcp_who(addr)
    })
    .await;
    mesh.expect(applied, "the redirect").await;
    let spread = spread_tcp(addr, 20).await;
    assert!(
        spread.on(NEW_APP) == 20,
        "every connection lands on api-new: {spread:?}\n{}",
        mesh.diagnose().await
    );
    assert_eq!(
        mesh.instance(OLD_APP).tcp().accepted(),
        0,
        "api's own app got a connection"
    );
}
