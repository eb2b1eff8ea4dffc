//! Caller and callee protocols that differ the way Consul allows (the upstream's own
//! `protocol` set apart from the destination's), both ways between ferrule and Envoy:
//! `http` → `http2`, `http2` → `http`, and `http` → a `tcp` callee, whose app must
//! receive plain HTTP/1.1 (it is given whatever bytes the mesh hop carries).

use ferrule_tests::envoy::app::{AppClient, EchoApp};
use ferrule_tests::envoy::hop::{Hop, HopSpec, Kind};
use ferrule_tests::envoy::{self, Protocol};

use Kind::{Envoy, Ferrule};
use Protocol::{Http, Http2, Tcp};

async fn requests_cross(upstream: Protocol, listener: Protocol, caller: Kind, callee: Kind) {
    if !envoy::available() {
        return;
    }
    let case = format!(
        "{} -> {} listener, {caller:?} -> {callee:?}",
        upstream.name(),
        listener.name()
    );
    let app = EchoApp::start().await;
    let mut spec = HopSpec::new(caller, callee, upstream);
    spec.listener = listener;
    let hop = Hop::start(spec, app.addr()).await;
    let mut client = AppClient::connect(hop.upstream(), upstream == Http2)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e:#}"));
    for i in 0..5 {
        let path = format!("/mixed/{i}");
        let answer = client
            .get(&path)
            .await
            .unwrap_or_else(|e| panic!("{case}: request {i}: {e:#}"));
        assert_eq!(answer.status, 200, "{case}: request {i}: {answer:?}");
        assert_eq!(answer.body, path.as_bytes(), "{case}: request {i}");
    }
    // The callee's listener decides what its app speaks: h2c behind `http2`, HTTP/1.1
    // behind `http`, and behind `tcp` the mesh hop's own bytes, which must be HTTP/1.1
    // for an `http` upstream, as Envoy sends them.
    let want = match listener {
        Http2 => hyper::Version::HTTP_2,
        _ => hyper::Version::HTTP_11,
    };
    let seen = app.seen();
    assert_eq!(seen.len(), 5, "{case}: requests at the app");
    for request in &seen {
        assert_eq!(request.version, want, "{case}: {request:?}");
    }
    hop.assert_tls_version(&case).await;
    hop.report(&case).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_upstream_to_http2_listener_ferrule_to_envoy() {
    requests_cross(Http, Http2, Ferrule, Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_upstream_to_http2_listener_envoy_to_ferrule() {
    requests_cross(Http, Http2, Envoy, Ferrule).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstream_to_http_listener_ferrule_to_envoy() {
    requests_cross(Http2, Http, Ferrule, Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstream_to_http_listener_envoy_to_ferrule() {
    requests_cross(Http2, Http, Envoy, Ferrule).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_upstream_to_tcp_listener_ferrule_to_envoy() {
    requests_cross(Http, Tcp, Ferrule, Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_upstream_to_tcp_listener_envoy_to_ferrule() {
    requests_cross(Http, Tcp, Envoy, Ferrule).await;
}
