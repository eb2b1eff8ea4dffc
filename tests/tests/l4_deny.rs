//! A caller with a valid SVID whose intention denies it: the handshake succeeds, then
//! the connection is closed before a byte reaches the app, and the decision is counted.

use std::time::Duration;

use ferrule_tests::backends::TcpEcho;
use ferrule_tests::mesh::{Mesh, WEB};
use ferrule_tests::metrics::Selector;
use ferrule_tests::names::{AUTHZ_DECISIONS, INBOUND};

const BILLING: &str = "billing";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_caller_is_closed_after_the_handshake_and_nothing_is_forwarded() {
    let backend = TcpEcho::start().await;
    let mesh = Mesh::builder(backend.addr())
        .allow(WEB)
        .deny(BILLING)
        .start()
        .await;

    let mut denied = mesh
        .call_as(BILLING)
        .await
        .expect("the handshake itself succeeds: the SVID is valid");
    // Whether this write lands before the close or fails, nothing may be forwarded.
    let _ = denied.send(b"must not reach the app").await;
    denied
        .closed_within(Duration::from_secs(2))
        .await
        .expect("the proxy closes a denied connection right after the handshake");
    assert_eq!(backend.accepted(), 0, "a denied connection reached the app");
    assert_eq!(
        backend.bytes_received(),
        0,
        "a denied caller's bytes reached the app"
    );

    let within = Duration::from_secs(5);
    let deny = Selector {
        name: AUTHZ_DECISIONS,
        labels: &[("layer", "l4"), ("decision", "deny"), ("source", BILLING)],
    };
    mesh.api
        .wait_for_metric(deny, |v| v == 1.0, within)
        .await
        .expect("the deny decision is counted once, under the caller's name");
    let denied_connections = Selector {
        name: INBOUND,
        labels: &[("result", "denied")],
    };
    mesh.api
        .wait_for_metric(denied_connections, |v| v == 1.0, within)
        .await
        .expect("the connection is counted as denied");

    // The control: an allowed caller on the same listener reaches the app.
    let mut allowed = mesh.call_as(WEB).await.expect("connect as web");
    allowed
        .round_trip(b"hello api")
        .await
        .expect("an allowed caller's bytes are echoed by the app");
    assert_eq!(backend.accepted(), 1, "connections that reached the app");
    let allow = Selector {
        name: AUTHZ_DECISIONS,
        labels: &[("layer", "l4"), ("decision", "allow"), ("source", WEB)],
    };
    mesh.api
        .wait_for_metric(allow, |v| v == 1.0, within)
        .await
        .expect("the allow decision is counted");
}
