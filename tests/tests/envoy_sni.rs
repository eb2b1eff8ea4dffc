//! ferrule through a mesh gateway's shape: an Envoy listener whose only filter chain
//! matches one server name, Consul's `ServiceSNI` of `api`, and passes the TLS bytes
//! on to `api`'s sidecar untouched. ferrule's dial must name that SNI to get through;
//! `openssl s_client` shows that the right name passes and a wrong one does not.

use ferrule_tests::DevCa;
use ferrule_tests::backends::TcpEcho;
use ferrule_tests::clients::{LeafFiles, s_client_sni};
use ferrule_tests::envoy::app::{payload, tcp_exchange};
use ferrule_tests::envoy::hop::{Callee, Caller, Kind, Svid, intentions};
use ferrule_tests::envoy::{self, Envoy, EnvoyConfig, Protocol, SniRoute, service_sni};
use ferrule_tests::mesh::{API, WEB};

const GATEWAY: &str = "mesh_gateway";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferrule_reaches_api_through_a_listener_that_matches_only_its_sni() {
    if !envoy::available() {
        return;
    }
    let ca = DevCa::generate(None).expect("a CA");
    let td = ca.trust_domain();
    let app = TcpEcho::start().await;
    let api = Callee {
        kind: Kind::Ferrule,
        protocol: Protocol::Tcp,
        local_app: app.addr(),
        intentions: intentions(&[(WEB, "allow")]),
        svid: Svid::issue(&ca, API),
    }
    .start()
    .await;
    let right = service_sni(API, "default", "dc1", &td);
    let mut gateway = EnvoyConfig::new("mesh-gateway", Svid::issue(&ca, "mesh-gateway").identity());
    gateway.sni_routes.push(SniRoute {
        listener: GATEWAY.to_owned(),
        server_name: right.clone(),
        endpoint: api.public_addr(),
    });
    let gateway = Envoy::start(&gateway).await;
    let web_svid = Svid::issue(&ca, WEB);

    // The negative first: a wrong name finds no filter chain, the right one passes.
    let files = LeafFiles::write(&web_svid.leaf);
    let wrong = format!("web.default.dc1.internal.{td}");
    let refused = s_client_sni(gateway.listener(GATEWAY), Some(&files), &wrong, b"ping\n")
        .await
        .expect("run openssl s_client");
    assert!(
        !refused.succeeded(),
        "a wrong SNI got through:\n{}",
        refused.transcript()
    );
    let no_match = gateway.counters("no_filter_chain_match$").await;
    assert!(
        no_match.values().sum::<u64>() > 0,
        "Envoy counted no unmatched SNI: {no_match:?}\n{}",
        refused.transcript()
    );
    let passed = s_client_sni(gateway.listener(GATEWAY), Some(&files), &right, b"ping\n")
        .await
        .expect("run openssl s_client");
    assert!(
        passed.succeeded(),
        "the right SNI failed:\n{}",
        passed.transcript()
    );

    let web = Caller {
        kind: Kind::Ferrule,
        service: WEB.to_owned(),
        protocol: Protocol::Tcp,
        destination: API.to_owned(),
        datacenter: "dc1".to_owned(),
        endpoint: gateway.listener(GATEWAY),
        svid: web_svid,
    }
    .start()
    .await;
    let data = payload(64 * 1024);
    let back = tcp_exchange(web.upstream_addr(API), &data)
        .await
        .expect("an exchange through the gateway");
    let unmatched = gateway.counters("no_filter_chain_match$").await;
    assert!(
        back == data,
        "ferrule's dial did not get through the SNI-matching listener ({} of {} bytes back; \
         Envoy's unmatched-SNI counters {unmatched:?})\n{}",
        back.len(),
        data.len(),
        gateway.log()
    );
}
