//! `http` and `http2` between neighbours, both ways (ferrule → Envoy, Envoy → ferrule):
//! 50 requests on one keep-alive connection and a mebibyte each way; an L7 deny and an
//! L4 deny, both `403 RBAC: access denied` from the callee with nothing reaching the
//! app; a callee presenting another service's SVID, refused by the caller.

use bytes::Bytes;
use ferrule_tests::envoy::app::{AppClient, EchoApp, payload};
use ferrule_tests::envoy::hop::{Hop, HopSpec, Kind};
use ferrule_tests::envoy::{self, Protocol};
use ferrule_tests::mesh::{API, WEB};
use serde_json::json;

use Kind::{Envoy, Ferrule};
use Protocol::{Http, Http2};

const MIB: usize = 1 << 20;
const DENIED: &str = "RBAC: access denied";

/// The HTTP version the app behind a listener of `protocol` is spoken to with.
fn app_version(protocol: Protocol) -> hyper::Version {
    match protocol {
        Protocol::Http2 | Protocol::Grpc => hyper::Version::HTTP_2,
        Protocol::Http | Protocol::Tcp => hyper::Version::HTTP_11,
    }
}

async fn keep_alive_and_a_mebibyte(protocol: Protocol, caller: Kind, callee: Kind) {
    if !envoy::available() {
        return;
    }
    let case = format!("{} {caller:?} -> {callee:?}", protocol.name());
    let app = EchoApp::start().await;
    let hop = Hop::start(HopSpec::new(caller, callee, protocol), app.addr()).await;
    let mut client = AppClient::connect(hop.upstream(), protocol == Http2)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e:#}"));
    for i in 0..50 {
        let path = format!("/keep-alive/{i}");
        let answer = client
            .get(&path)
            .await
            .unwrap_or_else(|e| panic!("{case}: request {i}: {e:#}"));
        assert_eq!(answer.status, 200, "{case}: request {i}: {answer:?}");
        assert_eq!(answer.body, path.as_bytes(), "{case}: request {i}");
    }
    let data = Bytes::from(payload(MIB + 999));
    let answer = client
        .post("/echo", data.clone())
        .await
        .unwrap_or_else(|e| panic!("{case}: POST: {e:#}"));
    assert_eq!(answer.status, 200, "{case}: POST");
    assert_eq!(answer.body.len(), data.len(), "{case}: echoed length");
    assert!(answer.body == data, "{case}: the echo differs");

    let seen = app.seen();
    assert_eq!(seen.len(), 51, "{case}: requests at the app");
    for request in &seen {
        assert_eq!(
            request.version,
            app_version(protocol),
            "{case}: {request:?}"
        );
    }
    // The caller kept its mesh connection too: one handshake for all 51 requests.
    assert_eq!(
        hop.callee.inbound_handshakes().await,
        1,
        "{case}: mesh handshakes for one keep-alive connection\n{}",
        hop.report(&case).await
    );
    hop.assert_tls_version(&case).await;
    hop.report(&case).await;
}

async fn l7_and_l4_denies_are_403_and_reach_nothing(
    protocol: Protocol,
    caller: Kind,
    callee: Kind,
) {
    if !envoy::available() {
        return;
    }
    let case = format!("{} deny {caller:?} -> {callee:?}", protocol.name());
    let app = EchoApp::start().await;
    let mut spec = HopSpec::new(caller, callee, protocol);
    spec.intentions = json!({ "Kind": "service-intentions", "Name": API, "Sources": [
        { "Name": WEB, "Permissions": [
            { "Action": "deny", "HTTP": { "PathPrefix": "/admin" } },
            { "Action": "allow", "HTTP": { "PathPrefix": "/" } },
        ] },
        { "Name": "mallory", "Action": "deny" },
    ] });
    let hop = Hop::start(spec, app.addr()).await;
    let mallory = hop.another_caller(caller, "mallory", protocol).await;
    let http2 = protocol == Http2;

    let mut web = AppClient::connect(hop.upstream(), http2)
        .await
        .expect("connect");
    let allowed = web.get("/ok").await.expect("GET /ok");
    assert_eq!(allowed.status, 200, "{case}: an allowed path: {allowed:?}");
    let denied = web.get("/admin/keys").await.expect("GET /admin/keys");
    assert_eq!(denied.status, 403, "{case}: L7 deny: {denied:?}");
    assert_eq!(denied.body, DENIED, "{case}: L7 deny body");

    let mut intruder = AppClient::connect(mallory.upstream_addr(API), http2)
        .await
        .expect("connect");
    let denied = intruder.get("/ok").await.expect("mallory's GET /ok");
    assert_eq!(denied.status, 403, "{case}: L4 deny: {denied:?}");
    assert_eq!(denied.body, DENIED, "{case}: L4 deny body");

    let paths: Vec<String> = app.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths,
        ["/ok"],
        "{case}: only the allowed request reaches the app"
    );
}

async fn a_callee_with_another_svid_is_refused(protocol: Protocol, caller: Kind, callee: Kind) {
    if !envoy::available() {
        return;
    }
    let case = format!("{} wrong callee {caller:?} -> {callee:?}", protocol.name());
    let app = EchoApp::start().await;
    let mut spec = HopSpec::new(caller, callee, protocol);
    spec.callee_service = "billing".into();
    let hop = Hop::start(spec, app.addr()).await;
    let mut client = AppClient::connect(hop.upstream(), protocol == Http2)
        .await
        .expect("connect");
    let answer = client
        .get("/secret")
        .await
        .expect("an answer from the caller");
    assert!(
        matches!(answer.status, 502 | 503),
        "{case}: want 502 or 503, got {answer:?}"
    );
    assert_eq!(app.count(), 0, "{case}: the app got a request");
    hop.assert_caller_refused_identity(&case).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ferrule_to_envoy_keep_alive_and_a_mebibyte() {
    keep_alive_and_a_mebibyte(Http, Ferrule, Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_envoy_to_ferrule_keep_alive_and_a_mebibyte() {
    keep_alive_and_a_mebibyte(Http, Envoy, Ferrule).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_ferrule_to_envoy_keep_alive_and_a_mebibyte() {
    keep_alive_and_a_mebibyte(Http2, Ferrule, Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_envoy_to_ferrule_keep_alive_and_a_mebibyte() {
    keep_alive_and_a_mebibyte(Http2, Envoy, Ferrule).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ferrule_to_envoy_denies() {
    l7_and_l4_denies_are_403_and_reach_nothing(Http, Ferrule, Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_envoy_to_ferrule_denies() {
    l7_and_l4_denies_are_403_and_reach_nothing(Http, Envoy, Ferrule).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_ferrule_to_envoy_denies() {
    l7_and_l4_denies_are_403_and_reach_nothing(Http2, Ferrule, Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_envoy_to_ferrule_denies() {
    l7_and_l4_denies_are_403_and_reach_nothing(Http2, Envoy, Ferrule).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ferrule_refuses_an_envoy_callee_with_another_svid() {
    a_callee_with_another_svid_is_refused(Http, Ferrule, Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_envoy_refuses_a_ferrule_callee_with_another_svid() {
    a_callee_with_another_svid_is_refused(Http, Envoy, Ferrule).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_ferrule_refuses_an_envoy_callee_with_another_svid() {
    a_callee_with_another_svid_is_refused(Http2, Ferrule, Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_envoy_refuses_a_ferrule_callee_with_another_svid() {
    a_callee_with_another_svid_is_refused(Http2, Envoy, Ferrule).await;
}
