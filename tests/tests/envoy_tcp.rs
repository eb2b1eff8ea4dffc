//! `tcp` between neighbours, both ways (ferrule → Envoy, Envoy → ferrule): a mebibyte
//! each way with a half-close, an L4 deny that reaches nothing, and a callee that
//! presents another service's SVID, refused by the caller.

use ferrule_tests::backends::TcpEcho;
use ferrule_tests::envoy::app::{payload, tcp_exchange};
use ferrule_tests::envoy::hop::{Hop, HopSpec, Kind, intentions};
use ferrule_tests::envoy::{self, Protocol};
use ferrule_tests::mesh::WEB;

const MIB: usize = 1 << 20;

async fn a_mebibyte_each_way_then_a_half_close(caller: Kind, callee: Kind) {
    if !envoy::available() {
        return;
    }
    let case = format!("tcp {caller:?} -> {callee:?}");
    let app = TcpEcho::start().await;
    let hop = Hop::start(HopSpec::new(caller, callee, Protocol::Tcp), app.addr()).await;
    // The echo answers only up to our half-close; its own close comes back as EOF.
    let data = payload(MIB + 4321);
    let back = tcp_exchange(hop.upstream(), &data)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e:#}"));
    assert_eq!(back.len(), data.len(), "{case}: echoed length");
    assert!(back == data, "{case}: the echo differs from what was sent");
    assert_eq!(app.bytes_received(), data.len() as u64, "{case}");
    hop.assert_tls_version(&case).await;
    hop.report(&case).await;
}

/// Not a byte reached the app. Envoy's `tcp_proxy` opens its connection to the app as
/// soon as a caller connects, before RBAC has seen the caller or the handshake is
/// over, and closes it unused; ferrule dials the app only for an allowed caller.
fn nothing_reached(app: &TcpEcho, callee: Kind, case: &str) {
    assert_eq!(app.bytes_received(), 0, "{case}: bytes reached the app");
    if callee == Kind::Ferrule {
        assert_eq!(app.accepted(), 0, "{case}: ferrule connected to the app");
    }
}

async fn an_l4_deny_reaches_nothing(caller: Kind, callee: Kind) {
    if !envoy::available() {
        return;
    }
    let case = format!("tcp deny {caller:?} -> {callee:?}");
    let app = TcpEcho::start().await;
    let mut spec = HopSpec::new(caller, callee, Protocol::Tcp);
    spec.intentions = intentions(&[(WEB, "deny"), ("*", "allow")]);
    let hop = Hop::start(spec, app.addr()).await;
    let back = tcp_exchange(hop.upstream(), b"let me in")
        .await
        .unwrap_or_else(|e| panic!("{case}: {e:#}"));
    assert!(back.is_empty(), "{case}: {} bytes came back", back.len());
    nothing_reached(&app, callee, &case);
}

async fn a_callee_with_another_svid_is_refused(caller: Kind, callee: Kind) {
    if !envoy::available() {
        return;
    }
    let case = format!("tcp wrong callee {caller:?} -> {callee:?}");
    let app = TcpEcho::start().await;
    let mut spec = HopSpec::new(caller, callee, Protocol::Tcp);
    spec.callee_service = "billing".into();
    let hop = Hop::start(spec, app.addr()).await;
    let back = tcp_exchange(hop.upstream(), b"secret")
        .await
        .unwrap_or_else(|e| panic!("{case}: {e:#}"));
    assert!(back.is_empty(), "{case}: {} bytes came back", back.len());
    nothing_reached(&app, callee, &case);
    hop.assert_caller_refused_identity(&case).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferrule_to_envoy_carries_a_mebibyte_each_way_and_a_half_close() {
    a_mebibyte_each_way_then_a_half_close(Kind::Ferrule, Kind::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_to_ferrule_carries_a_mebibyte_each_way_and_a_half_close() {
    a_mebibyte_each_way_then_a_half_close(Kind::Envoy, Kind::Ferrule).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferrule_to_envoy_l4_deny_reaches_nothing() {
    an_l4_deny_reaches_nothing(Kind::Ferrule, Kind::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_to_ferrule_l4_deny_reaches_nothing() {
    an_l4_deny_reaches_nothing(Kind::Envoy, Kind::Ferrule).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferrule_refuses_an_envoy_callee_with_another_svid() {
    a_callee_with_another_svid_is_refused(Kind::Ferrule, Kind::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_refuses_a_ferrule_callee_with_another_svid() {
    a_callee_with_another_svid_is_refused(Kind::Envoy, Kind::Ferrule).await;
}
