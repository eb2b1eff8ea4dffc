//! gRPC through two sidecars: a tonic client -> web's `grpc` upstream (h2c) -> mTLS
//! HTTP/2 -> api's `grpc` listener -> a tonic service. Each call is authorized by its
//! method's path; a denied one fails with PERMISSION_DENIED, as Envoy answers it.

use std::time::Duration;

use ferrule_tests::clients::{LeafFiles, curl};
use ferrule_tests::grpc::GrpcEcho;
use ferrule_tests::grpc::proto::echo_client::EchoClient;
use ferrule_tests::grpc::proto::{CountRequest, Message};
use ferrule_tests::mesh::{API, L7Pair, WEB};
use ferrule_tests::metrics::Selector;
use ferrule_tests::names::AUTHZ_DECISIONS;
use serde_json::json;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// Consul's documented shape for gRPC: deny one method, then allow the service.
fn intentions() -> serde_json::Value {
    json!({
        "Kind": "service-intentions",
        "Name": API,
        "Sources": [ { "Name": WEB, "Permissions": [
            { "Action": "deny", "HTTP": { "PathExact": "/ferrule.test.Echo/Secret" } },
            { "Action": "allow", "HTTP": { "PathPrefix": "/ferrule.test.Echo/" } }
        ] } ]
    })
}

fn message(text: &str) -> Message {
    Message { text: text.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_methods_and_streams_work_and_a_denied_method_is_permission_denied() {
    let backend = GrpcEcho::start().await;
    let mesh = L7Pair::start("grpc", backend.addr(), &intentions()).await;
    let mut client = EchoClient::connect(mesh.url(""))
        .await
        .expect("connect a gRPC client to web's upstream port");

    let reply = client.say(message("hello")).await.expect("Say is allowed");
    assert_eq!(reply.into_inner().text, "hello");

    let before = backend.calls();
    let denied = client
        .secret(message("let me in"))
        .await
        .expect_err("Secret is denied");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert_eq!(denied.message(), "RBAC: access denied");
    assert_eq!(
        backend.calls(),
        before,
        "the denied call reached the service"
    );

    // Server streaming.
    let numbers: Vec<String> = client
        .count(CountRequest { count: 50 })
        .await
        .expect("Count is allowed")
        .into_inner()
        .map(|m| m.expect("a streamed message").text)
        .collect()
        .await;
    let want: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    assert_eq!(numbers, want);

    // Bidirectional streaming, one message at a time: each reply comes back before the
    // next message is sent, so nothing is buffered up to the end of the call.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = client
        .chat(ReceiverStream::new(rx))
        .await
        .expect("Chat is allowed")
        .into_inner();
    for i in 0..5 {
        tx.send(message(&format!("line {i}")))
            .await
            .expect("send on the stream");
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
            .await
            .expect("a reply within 5 s")
            .expect("the stream is open")
            .expect("a reply, not an error");
        assert_eq!(reply.text, format!("echo: line {i}"));
    }
    drop(tx);
    assert!(
        replies.next().await.is_none(),
        "the call ends when the client is done"
    );

    // The same client connection still works after the denial.
    assert_eq!(
        client
            .say(message("again"))
            .await
            .expect("Say")
            .into_inner()
            .text,
        "again"
    );

    let labels = [("layer", "l7"), ("decision", "deny"), ("source", WEB)];
    let deny = Selector {
        name: AUTHZ_DECISIONS,
        labels: &labels,
    };
    mesh.api
        .wait_for_metric(deny, |v| v == 1.0, Duration::from_secs(5))
        .await
        .expect("one L7 denial counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_listener_serves_http2_and_http11_callers() {
    // Consul's Envoy advertises `h2, http/1.1` on a `grpc` listener and serves both;
    // so does ferrule, forwarding either to the app over HTTP/2.
    let backend = GrpcEcho::start().await;
    let mesh = L7Pair::start("grpc", backend.addr(), &intentions()).await;
    let web = LeafFiles::write(&mesh.web_leaf);
    let url = format!("https://{}/ferrule.test.Echo/Say", mesh.api.inbound_addr());
    let cert = web.cert.display().to_string();
    let key = web.key.display().to_string();
    let tls = ["-k", "--cert", cert.as_str(), "--key", key.as_str()];
    // An empty POST is not a valid gRPC call, but it is served, in either version.
    let grpc = ["-X", "POST", "-H", "content-type: application/grpc"];
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let reply = curl(&url, &[&[flag][..], &grpc, &tls].concat())
            .await
            .expect("run curl");
        assert_eq!(reply.http_version, version, "{flag}: {reply:?}");
        assert_eq!(reply.http_code, 200, "{flag}: {reply:?}");
    }
}
