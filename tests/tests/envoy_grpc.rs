//! `grpc` between neighbours, both ways (ferrule → Envoy, Envoy → ferrule): a unary
//! call and a server stream; a denied method (L7) and a denied caller (L4), each
//! `PERMISSION_DENIED` with `RBAC: access denied`, as Envoy answers gRPC, and neither
//! reaching the service.

use ferrule_tests::envoy::hop::{Hop, HopSpec, Kind};
use ferrule_tests::envoy::{self, Protocol};
use ferrule_tests::grpc::GrpcEcho;
use ferrule_tests::grpc::proto::echo_client::EchoClient;
use ferrule_tests::grpc::proto::{CountRequest, Message};
use ferrule_tests::mesh::{API, WEB};
use serde_json::json;
use tokio_stream::StreamExt;

fn message(text: &str) -> Message {
    Message { text: text.into() }
}

async fn client(addr: std::net::SocketAddr) -> EchoClient<tonic::transport::Channel> {
    EchoClient::connect(format!("http://{addr}"))
        .await
        .unwrap_or_else(|e| panic!("connect a gRPC client to {addr}: {e}"))
}

async fn unary_stream_and_denies(caller: Kind, callee: Kind) {
    if !envoy::available() {
        return;
    }
    let case = format!("grpc {caller:?} -> {callee:?}");
    let service = GrpcEcho::start().await;
    let mut spec = HopSpec::new(caller, callee, Protocol::Grpc);
    spec.intentions = json!({ "Kind": "service-intentions", "Name": API, "Sources": [
        { "Name": WEB, "Permissions": [
            { "Action": "deny", "HTTP": { "PathExact": "/ferrule.test.Echo/Secret" } },
            { "Action": "allow", "HTTP": { "PathPrefix": "/ferrule.test.Echo/" } },
        ] },
        { "Name": "mallory", "Action": "deny" },
    ] });
    let hop = Hop::start(spec, service.addr()).await;
    let mut web = client(hop.upstream()).await;

    let reply = web.say(message("hello")).await;
    let reply = reply.unwrap_or_else(|e| panic!("{case}: Say: {e:?}"));
    assert_eq!(reply.into_inner().text, "hello", "{case}");
    let numbers: Vec<String> = web
        .count(CountRequest { count: 100 })
        .await
        .unwrap_or_else(|e| panic!("{case}: Count: {e:?}"))
        .into_inner()
        .map(|m| {
            m.map(|m| m.text)
                .unwrap_or_else(|e| format!("error: {e:?}"))
        })
        .collect()
        .await;
    let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(numbers, want, "{case}: the server stream");
    let calls = service.calls();
    assert_eq!(calls, 2, "{case}: calls at the service");

    let denied = web.secret(message("let me in")).await;
    let denied = denied.expect_err("Secret is denied");
    assert_eq!(
        denied.code(),
        tonic::Code::PermissionDenied,
        "{case}: {denied:?}"
    );
    assert_eq!(denied.message(), "RBAC: access denied", "{case}");

    let mallory = hop.another_caller(caller, "mallory", Protocol::Grpc).await;
    let mut intruder = client(mallory.upstream_addr(API)).await;
    let denied = intruder
        .say(message("hi"))
        .await
        .expect_err("mallory is denied");
    assert_eq!(
        denied.code(),
        tonic::Code::PermissionDenied,
        "{case}: {denied:?}"
    );
    assert_eq!(denied.message(), "RBAC: access denied", "{case}");
    assert_eq!(
        service.calls(),
        calls,
        "{case}: a denied call reached the service"
    );

    hop.assert_tls_version(&case).await;
    hop.report(&case).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_ferrule_to_envoy_unary_stream_and_denies() {
    unary_stream_and_denies(Kind::Ferrule, Kind::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_envoy_to_ferrule_unary_stream_and_denies() {
    unary_stream_and_denies(Kind::Envoy, Kind::Ferrule).await;
}
