//! Mesh gateways and sidecars of either kind across two datacenters (dc1 on 127.0.0.1,
//! dc2 on 127.0.0.2, `ferrule dev` agents), `web` in dc1 calling `api` in dc2:
//!
//! - a ferrule sidecar through Envoy mesh gateways configured as Consul configures one
//!   (the TLS inspector reads the SNI; dc1's gateway sends `*.dc2.internal.<td>` to
//!   dc2's gateway, dc2's sends api's server name to api's sidecar), in mode `local`
//!   (both gateways) and `remote` (dc2's alone);
//! - an Envoy sidecar calling through `ferrule gateway`s an Envoy sidecar in dc2 that
//!   presents dc2's leaf and intermediate, as Consul's Envoy sidecars would.

use std::net::{Ipv4Addr, SocketAddr};

use ferrule_tests::backends::NamedHttp;
use ferrule_tests::chain::{wait_streak, who};
use ferrule_tests::envoy::hop::intentions;
use ferrule_tests::envoy::{
    self, Envoy, EnvoyConfig, Identity, Protocol, PublicListener, SniRoute, Upstream,
};
use ferrule_tests::gateway::MeshGatewayRegistration;
use ferrule_tests::multi_dc::{
    DC1, DC2, Datacenter, Hops, MeshService, SETUP, TwoDcs, service_defaults, wait_dials,
};
use ferrule_tests::wait::free_port;
use serde_json::json;

const API: &str = "api";
const WEB: &str = "web";
const API_DC2: &str = "api-dc2";
/// The listeners of an Envoy mesh gateway.
const LISTENERS: [&str; 2] = ["lan", "wan"];

/// `service`'s leaf from `dc`'s agent and the roots it trusts, for an Envoy.
async fn identity(trust_domain: &str, dc: &Datacenter, service: &str) -> Identity {
    let leaf = dc.agent.leaf(service).await.expect("a leaf from the agent");
    let roots = dc
        .agent
        .get_json("/v1/agent/connect/ca/roots")
        .await
        .expect("the agent's roots");
    let roots_pem: String = roots["Roots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["RootCert"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    Identity {
        cert_pem: leaf["CertPEM"].as_str().expect("CertPEM").to_owned(),
        key_pem: leaf["PrivateKeyPEM"]
            .as_str()
            .expect("PrivateKeyPEM")
            .to_owned(),
        roots_pem,
        trust_domain: trust_domain.to_owned(),
    }
}

/// An Envoy mesh gateway of `dc` with a LAN and a WAN listener, each routing every
/// `(server name, endpoint)` of `routes`; registered with `dc`'s agent once bound.
async fn envoy_gateway(
    trust_domain: &str,
    dc: &mut Datacenter,
    routes: &[(String, SocketAddr)],
) -> Envoy {
    let mut config = EnvoyConfig::new(
        &format!("mesh-gateway-{}", dc.name),
        identity(trust_domain, dc, "mesh-gateway").await,
    );
    for listener in LISTENERS {
        for (server_name, endpoint) in routes {
            config.sni_routes.push(SniRoute {
                listener: listener.to_owned(),
                server_name: server_name.clone(),
                endpoint: *endpoint,
            });
        }
    }
    let envoy = Envoy::start(&config).await;
    dc.register_gateway(MeshGatewayRegistration {
        id: format!("mesh-gateway-{}", dc.name),
        lan: envoy.listener("lan"),
        wan: envoy.listener("wan"),
    })
    .await;
    envoy
}

/// Connections an Envoy gateway's `listener` passed on so far.
async fn passed_on(gateway: &Envoy, listener: &str) -> u64 {
    gateway
        .counter(&format!("tcp.mesh_gateway.{listener}.downstream_cx_total"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ferrule_sidecar_crosses_to_dc2_through_envoy_mesh_gateways() {
    if !envoy::available() {
        return;
    }
    let mut dcs = TwoDcs::start().await;
    dcs.write(&service_defaults(API, "http", None)).await;
    let app = NamedHttp::start(API_DC2).await;
    let mut api = MeshService::new(API, dcs.dc2.ip, app.addr().port()).with_wan();
    let _api_proxy = dcs.dc2.start_service(&mut api).await;
    dcs.dc2.wait_passing(&[&api]).await;

    let td = dcs.trust_domain.clone();
    let to_api = [(dcs.sni(API, DC2), api.sidecar_addr())];
    let gw2 = envoy_gateway(&td, &mut dcs.dc2, &to_api).await;
    let to_dc2 = [(format!("*.{DC2}.internal.{td}"), gw2.listener("wan"))];
    let gw1 = envoy_gateway(&td, &mut dcs.dc1, &to_dc2).await;

    let mut web = MeshService::new(WEB, dcs.dc1.ip, free_port().port()).with_upstream(json!({
        "DestinationName": API, "Datacenter": DC2, "MeshGateway": {"Mode": "local"},
    }));
    let web_proxy = dcs.dc1.start_service(&mut web).await;
    let upstream = web.upstream_addr(API);
    for (mode, dialled) in [
        ("local", gw1.listener("lan")),
        ("remote", gw2.listener("wan")),
    ] {
        web.set_upstream(API, "MeshGateway", json!({"Mode": mode}));
        dcs.dc1.register(&web).await;
        wait_dials(&web_proxy, dialled, &[api.sidecar_addr()], SETUP).await;
        let before = (passed_on(&gw1, "lan").await, passed_on(&gw2, "wan").await);
        let path = format!("/{mode}");
        let reached = wait_streak(
            &format!("{mode}: web reaches api"),
            SETUP,
            API_DC2,
            3,
            || who(upstream, &path),
        )
        .await;
        if let Err(e) = reached {
            panic!("{e:#}\n{}\n{}", gw1.log(), gw2.log());
        }
        let after = (passed_on(&gw1, "lan").await, passed_on(&gw2, "wan").await);
        eprintln!("{mode}: Envoy gateways passed on {before:?} -> {after:?}");
        assert!(
            after.1 > before.1,
            "{mode}: nothing through dc2's Envoy gateway"
        );
        match mode {
            "local" => assert!(
                after.0 > before.0,
                "local: nothing through dc1's Envoy gateway"
            ),
            _ => assert_eq!(after.0, before.0, "remote: dc1's Envoy gateway carried it"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sidecars_on_both_sides_cross_through_ferrule_gateways() {
    if !envoy::available() {
        return;
    }
    let dcs = TwoDcs::with_ferrule_gateways().await;
    dcs.write(&service_defaults(API, "http", None)).await;
    let app = NamedHttp::start(API_DC2).await;

    // api's sidecar in dc2 is Envoy with dc2's leaf (and intermediate), registered as
    // api's sidecar so that dc2's gateway sends api's server name there.
    let mut callee = EnvoyConfig::new(API, identity(&dcs.trust_domain, &dcs.dc2, API).await);
    callee.public = Some(PublicListener {
        protocol: Protocol::Http,
        local_app: app.addr(),
        intentions: intentions(&[(WEB, "allow")]),
    });
    let callee = Envoy::start(&callee).await;
    let mut api = MeshService::new(API, Ipv4Addr::LOCALHOST, app.addr().port());
    api.reg.sidecar_port = callee.public_addr().port();
    dcs.dc2.register(&api).await;
    dcs.dc2.wait_passing(&[&api]).await;

    // web's sidecar in dc1 is Envoy, its api cluster as Consul renders mode `local`:
    // dc1's gateway for endpoint, dc2's api for server name and identity.
    let mut caller = EnvoyConfig::new(WEB, identity(&dcs.trust_domain, &dcs.dc1, WEB).await);
    caller.upstreams.push(Upstream {
        service: API.to_owned(),
        protocol: Protocol::Http,
        datacenter: DC2.to_owned(),
        endpoints: vec![dcs.dc1.gateway().lan],
    });
    let caller = Envoy::start(&caller).await;

    let before = Hops::read(&dcs, API, None).await;
    let upstream = caller.upstream_addr(API);
    let reached = wait_streak("Envoy web reaches Envoy api", SETUP, API_DC2, 3, || {
        who(upstream, "/")
    })
    .await;
    if let Err(e) = reached {
        panic!(
            "{e:#}\n{}\n{}\n{}",
            caller.log(),
            callee.log(),
            dcs.dc1.ferrule_gateway().stderr()
        );
    }
    let moved = Hops::read(&dcs, API, None).await.since(before);
    assert!(
        moved.through_dc1_gateway() && moved.through_dc2_gateway(),
        "not through both ferrule gateways: {moved:?}"
    );
    let web_id = dcs.spiffe_id(WEB, DC1);
    for request in app.seen() {
        let xfcc = request
            .headers
            .get("x-forwarded-client-cert")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            xfcc.contains(&format!("URI={web_id}")),
            "api's app saw {xfcc:?}"
        );
    }
}
