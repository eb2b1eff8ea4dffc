//! The gateway source against a fake agent that serves canned JSON with real blocking
//! semantics, one datacenter's reads and another's (`?dc=dc2`).

use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::consul::http::AgentAddr;
use crate::consul::testing::FakeAgent;

const REGISTRATION: &str = "/v1/agent/service/gw";

fn tuning() -> Tuning {
    Tuning {
        wait: Duration::from_secs(5),
        timeout_margin: Duration::from_secs(2),
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(100),
        burst: 100,
        refill: Duration::from_millis(1),
        force_retry: Duration::from_secs(60),
        unsupported_retry: Duration::from_millis(300),
        poll: Duration::from_millis(50),
    }
}

fn spawn(agent: &FakeAgent) -> (watch::Receiver<Arc<GatewayView>>, CancellationToken) {
    let addr = AgentAddr::Http {
        authority: agent.addr().to_string(),
        prefix: String::new(),
    };
    let config = GatewaySourceConfig::new(AgentClientConfig::new(addr), "gw".into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let source = GatewaySource::new(config, provider)
        .unwrap()
        .with_timing(tuning(), Duration::from_millis(50));
    let stop = CancellationToken::new();
    (source.spawn(stop.clone()), stop)
}

/// Waits (5 s at most) for a view that `ok` accepts.
async fn view_where(
    rx: &mut watch::Receiver<Arc<GatewayView>>,
    what: &str,
    ok: impl FnMut(&Arc<GatewayView>) -> bool,
) -> Arc<GatewayView> {
    let found = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(ok))
        .await
        .ok()
        .and_then(Result::ok)
        .map(|view| view.clone());
    match found {
        Some(view) => view,
        None => panic!("no view with {what}; last: {:#?}", rx.borrow()),
    }
}

fn gateway_registration() -> Value {
    json!({
        "Kind": "mesh-gateway", "ID": "gw", "Service": "mesh-gateway",
        "Address": "127.0.0.1", "Port": 8443, "Datacenter": "dc1",
        "TaggedAddresses": {"lan": {"Address": "127.0.0.1", "Port": 8443},
                            "wan": {"Address": "127.0.0.1", "Port": 9443}}
    })
}

fn instance(kind: &str, service: &str, address: &str, port: u16, status: &str) -> Value {
    json!({
        "Node": {"Node": "n1", "Address": "127.0.0.1", "Datacenter": "dc1"},
        "Service": {"Kind": kind, "Service": service, "Address": address, "Port": port,
                    "TaggedAddresses": {"wan": {"Address": address, "Port": port + 1}},
                    "Proxy": {"DestinationServiceName": "api"}},
        "Checks": [{"Status": status}]
    })
}

fn set_one_datacenter(agent: &FakeAgent) {
    agent.set(REGISTRATION, gateway_registration());
    agent.set(
        "/v1/agent/connect/ca/roots",
        json!({"ActiveRootID": "r", "TrustDomain": "11111111-2222.consul", "Roots": []}),
    );
    agent.set("/v1/catalog/services", json!({"api": [], "consul": []}));
    agent.set("/v1/config/service-resolver", json!([]));
    agent.set(
        "/v1/health/connect/api",
        json!([instance(
            "connect-proxy",
            "api-sidecar-proxy",
            "127.0.0.1",
            21000,
            "passing"
        )]),
    );
    agent.set("/v1/health/connect/consul", json!([]));
    agent.set("/v1/catalog/datacenters", json!(["dc1"]));
}

#[tokio::test]
async fn the_view_holds_the_listeners_the_trust_domain_and_the_local_instances() {
    let agent = FakeAgent::start().await;
    set_one_datacenter(&agent);
    let (mut rx, _stop) = spawn(&agent);
    let view = view_where(&mut rx, "api's instance", |v| {
        v.services
            .as_ref()
            .is_some_and(|s| s.get("api").is_some_and(|a| a.instances.is_some()))
    })
    .await;
    assert!(view.missing().is_empty(), "{view:#?}");
    let gateway = view.gateway.as_ref().unwrap();
    assert_eq!(gateway.lan, "127.0.0.1:8443".parse().unwrap());
    assert_eq!(gateway.wan, Some("127.0.0.1:9443".parse().unwrap()));
    assert_eq!(view.datacenter.as_deref(), Some("dc1"));
    assert_eq!(view.trust_domain.as_deref(), Some("11111111-2222.consul"));
    let api = &view.services.as_ref().unwrap()["api"];
    assert_eq!(
        api.instances.as_deref(),
        Some(&["127.0.0.1:21000".to_owned()][..])
    );
    assert_eq!(
        view.remote,
        Some(Default::default()),
        "one datacenter: {view:#?}"
    );
    let requests = agent.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("/v1/catalog/services?filter=ServiceKind%20%3D%3D%20%22%22")),
        "the catalog is asked for typical services only: {requests:?}"
    );

    // The instance turns critical: it leaves at once.
    agent.set(
        "/v1/health/connect/api",
        json!([instance(
            "connect-proxy",
            "api-sidecar-proxy",
            "127.0.0.1",
            21000,
            "critical"
        )]),
    );
    view_where(&mut rx, "no api instance", |v| {
        v.services.as_ref().is_some_and(|s| {
            s.get("api")
                .and_then(|a| a.instances.as_ref())
                .is_some_and(Vec::is_empty)
        })
    })
    .await;
}

#[tokio::test]
async fn another_datacenter_is_reached_through_its_healthy_gateways_wan_addresses() {
    let agent = FakeAgent::start().await;
    set_one_datacenter(&agent);
    agent.set("/v1/catalog/datacenters", json!(["dc1", "dc2"]));
    agent.set("/v1/catalog/services?dc=dc2", json!({"mesh-gateway": []}));
    let gateways = |status: &str| {
        json!([
            instance("mesh-gateway", "mesh-gateway", "127.0.0.2", 8443, status),
            instance("mesh-gateway", "mesh-gateway", "127.0.0.3", 8443, "passing"),
        ])
    };
    agent.set(
        "/v1/health/service/mesh-gateway?dc=dc2",
        gateways("passing"),
    );
    let (mut rx, _stop) = spawn(&agent);
    let dc2 = |v: &GatewayView| v.remote.as_ref().and_then(|r| r.get("dc2")).cloned();
    let view = view_where(&mut rx, "dc2's gateways", |v| {
        dc2(v).is_some_and(|d| d.gateways.is_some())
    })
    .await;
    let remote = view.remote.as_ref().unwrap();
    assert_eq!(
        remote["dc2"].gateways.as_deref(),
        Some(&["127.0.0.2:8444".to_owned(), "127.0.0.3:8444".to_owned()][..]),
        "the WAN tagged addresses"
    );
    assert!(!remote.contains_key("dc1"), "never its own datacenter");
    let requests = agent.requests();
    assert!(
        requests.iter().any(|r| r.starts_with(
            "/v1/catalog/services?dc=dc2&filter=ServiceKind%20%3D%3D%20%22mesh-gateway%22"
        )),
        "{requests:?}"
    );
    agent.set(
        "/v1/health/service/mesh-gateway?dc=dc2",
        gateways("critical"),
    );
    view_where(&mut rx, "dc2's critical gateway gone", |v| {
        dc2(v).and_then(|d| d.gateways).map(|g| g.len()) == Some(1)
    })
    .await;
    // The datacenter leaves the federation: it leaves the view.
    agent.set("/v1/catalog/datacenters", json!(["dc1"]));
    view_where(&mut rx, "dc2 gone", |v| dc2(v).is_none()).await;
}

#[tokio::test]
async fn a_registration_of_another_kind_is_refused_and_a_later_one_is_kept_out() {
    let agent = FakeAgent::start().await;
    set_one_datacenter(&agent);
    agent.set(
        REGISTRATION,
        json!({"Kind": "connect-proxy", "ID": "gw", "Service": "web-sidecar-proxy", "Port": 21000}),
    );
    let (mut rx, stop) = spawn(&agent);
    let view = view_where(&mut rx, "a refusal", |v| v.refused.is_some()).await;
    let why = view.refused.as_deref().unwrap();
    assert!(why.contains("not a mesh gateway"), "{why}");
    stop.cancel();

    // Once a good registration was served, a bad one keeps it and is named.
    agent.set(REGISTRATION, gateway_registration());
    let (mut rx, _stop) = spawn(&agent);
    view_where(&mut rx, "the gateway", |v| v.gateway.is_some()).await;
    agent.set(REGISTRATION, json!({"ID": "gw", "Service": "web"}));
    let view = view_where(&mut rx, "a problem", |v| !v.blocked.is_empty()).await;
    assert!(view.refused.is_none());
    assert!(view.gateway.is_some(), "the last good registration stays");
    assert!(
        view.blocked[0].contains("plain service"),
        "{:?}",
        view.blocked
    );
}

#[tokio::test]
async fn a_missing_registration_is_named_until_it_appears() {
    let agent = FakeAgent::start().await;
    set_one_datacenter(&agent);
    agent.remove(REGISTRATION);
    let (mut rx, _stop) = spawn(&agent);
    let view = view_where(&mut rx, "a blocked registration", |v| {
        v.blocked.iter().any(|b| b.starts_with("registration:"))
    })
    .await;
    assert!(
        view.missing().contains(&"the gateway's registration"),
        "{view:#?}"
    );
    agent.set(REGISTRATION, gateway_registration());
    view_where(&mut rx, "the gateway", |v| {
        v.gateway.is_some() && v.blocked.is_empty()
    })
    .await;
}
