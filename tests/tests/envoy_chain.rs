//! Secondary-datacenter chains between neighbours: every sidecar of `dc2` presents its
//! leaf followed by the datacenter's intermediate (empty subject, URI SAN
//! `spiffe://<trust domain>`, path length 0) and trusts only the primary's root, as in
//! a WAN-federated secondary DC. ferrule is accepted by Envoy and by another ferrule,
//! and accepts both, each verifying the chain the peer sends.

use ferrule_tests::backends::TcpEcho;
use ferrule_tests::envoy::app::{payload, tcp_exchange};
use ferrule_tests::envoy::hop::{Callee, Caller, Kind, Svid, intentions};
use ferrule_tests::envoy::{self, Protocol};
use ferrule_tests::mesh::{API, WEB};
use ferrule_tests::{DevCa, LeafSpec};

const DC2: &str = "dc2";

fn dc2_svid(root: &DevCa, intermediate: &DevCa, service: &str) -> Svid {
    let mut spec = LeafSpec::service(service);
    spec.datacenter = DC2.to_owned();
    let svid = Svid::under(root, intermediate, &spec);
    assert_eq!(
        svid.leaf.cert_pem.matches("BEGIN CERTIFICATE").count(),
        2,
        "the leaf is followed by its intermediate"
    );
    svid
}

async fn chained_both_ways(caller: Kind, callee: Kind) {
    let needs_envoy = caller == Kind::Envoy || callee == Kind::Envoy;
    if needs_envoy && !envoy::available() {
        return;
    }
    let case = format!("dc2 chains {caller:?} -> {callee:?}");
    let root = DevCa::generate(None).expect("the primary's root");
    let dc2 = root.intermediate().expect("dc2's intermediate");
    let app = TcpEcho::start().await;
    let api = Callee {
        kind: callee,
        protocol: Protocol::Tcp,
        local_app: app.addr(),
        intentions: intentions(&[(WEB, "allow")]),
        svid: dc2_svid(&root, &dc2, API),
    }
    .start()
    .await;
    let web = Caller {
        kind: caller,
        service: WEB.to_owned(),
        protocol: Protocol::Tcp,
        destination: API.to_owned(),
        datacenter: DC2.to_owned(),
        endpoint: api.public_addr(),
        svid: dc2_svid(&root, &dc2, WEB),
    }
    .start()
    .await;
    let data = payload(100_000);
    let back = tcp_exchange(web.upstream_addr(API), &data)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e:#}"));
    if back != data {
        panic!(
            "{case}: {} of {} bytes came back\n caller:\n{} callee:\n{}",
            back.len(),
            data.len(),
            web.handshakes().await,
            api.handshakes().await
        );
    }
    println!(
        "NEGOTIATED {case}\n caller ({caller:?}):\n{} callee ({callee:?}):\n{}",
        web.handshakes().await,
        api.handshakes().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_accepts_ferrules_chain_and_ferrule_accepts_envoys() {
    chained_both_ways(Kind::Envoy, Kind::Ferrule).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferrule_accepts_envoys_chain_and_envoy_accepts_ferrules() {
    chained_both_ways(Kind::Ferrule, Kind::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ferrules_accept_each_others_chains() {
    chained_both_ways(Kind::Ferrule, Kind::Ferrule).await;
}
