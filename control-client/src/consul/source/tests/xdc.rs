//! Upstreams in other datacenters, against the fake agent answering for two: chain
//! targets reached as their mesh gateway mode says, and prepared queries that fail over.

use super::*;
use crate::api::agent::MeshGatewayConfig;

const CHAIN_API: &str = "/v1/discovery-chain/api";
const API_DC2: &str = "/v1/health/connect/api?dc=dc2";
const QUERY: &str = "/v1/query/geo-db/execute";

/// `api`'s chain compiled in dc2: one target there, in gateway `mode`.
fn chain_to_dc2(td: &str, mode: &str) -> Value {
    let target = "api.default.default.dc2";
    json!({ "Chain": {
        "ServiceName": "api", "Namespace": "default", "Partition": "default",
        "Datacenter": "dc2", "Protocol": "tcp",
        "StartNode": format!("resolver:{target}"),
        "Nodes": { format!("resolver:{target}"): {
            "Type": "resolver", "Name": target,
            "Resolver": { "ConnectTimeout": "5s", "Target": target } } },
        "Targets": { target: {
            "ID": target, "Service": "api", "Namespace": "default", "Partition": "default",
            "Datacenter": "dc2", "MeshGateway": { "Mode": mode }, "Subset": {},
            "SNI": format!("api.default.dc2.internal.{td}") } }
    } })
}

/// An instance of `service` (a sidecar) in `dc`: LAN `lan`, WAN `wan`, port 21000.
fn instance(service: &str, dc: &str, lan: &str, wan: &str, status: &str) -> Value {
    let mut entry = health_entry(service, lan, "", 21000);
    entry["Node"]["Datacenter"] = json!(dc);
    entry["Service"]["TaggedAddresses"] = json!({
        "lan": { "Address": lan, "Port": 21000 },
        "wan": { "Address": wan, "Port": 21000 } });
    entry["Checks"] = json!([{ "Status": status }]);
    entry
}

/// The mesh gateway of `dc`: LAN `lan`, WAN `wan`, both on port 8443.
fn mesh_gateway(dc: &str, lan: &str, wan: &str, status: &str) -> Value {
    json!({
        "Node": { "Node": format!("gw-{dc}"), "Address": lan, "Datacenter": dc },
        "Service": { "Kind": "mesh-gateway", "ID": "mesh-gateway", "Service": "mesh-gateway",
                     "Address": lan, "Port": 8443,
                     "TaggedAddresses": { "lan": { "Address": lan, "Port": 8443 },
                                          "wan": { "Address": wan, "Port": 8443 } } },
        "Checks": [{ "Status": status }]
    })
}

/// A world whose `web` has one upstream, `up`, with gateways in dc1 and dc2.
async fn two_dcs(up: Upstream) -> World {
    let world = World::new().await;
    world.agent.set(REGISTRATION, sidecar(vec![up]));
    for (dc, lan, wan) in [
        ("dc1", "10.1.9.1", "203.0.113.1"),
        ("dc2", "10.2.9.1", "203.0.113.2"),
    ] {
        world.agent.set(
            &format!("/v1/catalog/services?dc={dc}"),
            json!({ "mesh-gateway": [] }),
        );
        world.agent.set(
            &format!("/v1/health/service/mesh-gateway?dc={dc}"),
            json!([
                mesh_gateway(dc, lan, wan, "passing"),
                mesh_gateway(dc, "10.9.9.9", "198.51.100.9", "critical"),
            ]),
        );
    }
    world
}

fn api_addrs(s: &Snapshot) -> Vec<String> {
    s.upstream("api").map_or_else(Vec::new, |u| {
        u.all_endpoints().iter().map(|e| e.addr.clone()).collect()
    })
}

#[tokio::test]
async fn a_target_in_another_datacenter_is_reached_as_its_gateway_mode_says() {
    let world = two_dcs(Upstream {
        datacenter: "dc2".into(),
        mesh_gateway: MeshGatewayConfig {
            mode: "local".into(),
        },
        ..upstream("api", 9191)
    })
    .await;
    let td = world.ca.trust_domain();
    world.agent.set(
        API_DC2,
        json!([instance(
            "api",
            "dc2",
            "10.2.0.1",
            "198.51.100.2",
            "passing"
        )]),
    );
    world.agent.set(CHAIN_API, chain_to_dc2(&td, "local"));
    let mut rx = world.source(ProxySelector::ProxyId("web-sidecar-proxy".into()), None);
    let cases = [
        ("local", "10.1.9.1:8443", "dc1's passing gateway, LAN"),
        ("remote", "203.0.113.2:8443", "dc2's passing gateway, WAN"),
        ("none", "198.51.100.2:21000", "the instance itself, WAN"),
        ("", "198.51.100.2:21000", "no mode is none"),
    ];
    for (mode, addr, what) in cases {
        world.agent.set(CHAIN_API, chain_to_dc2(&td, mode));
        let snap = until(&mut rx, what, |s| api_addrs(s) == [addr]).await;
        let target = &snap.upstream("api").unwrap().routing.clusters[0].targets[0];
        assert_eq!(
            target.sni,
            format!("api.default.dc2.internal.{td}"),
            "{what}"
        );
        let want = ServiceId::new(&td, "default", "dc2", "api");
        assert_eq!(target.endpoints[0].identity, want, "{what}");
    }

    // Gateways stand in for the target only while it has a healthy instance.
    world.agent.set(CHAIN_API, chain_to_dc2(&td, "remote"));
    until(&mut rx, "through dc2's gateway", |s| {
        api_addrs(s) == ["203.0.113.2:8443"]
    })
    .await;
    let critical = instance("api", "dc2", "10.2.0.1", "198.51.100.2", "critical");
    world.agent.set(API_DC2, json!([critical]));
    until(&mut rx, "no usable gateway", |s| api_addrs(s).is_empty()).await;
    let passing = instance("api", "dc2", "10.2.0.1", "198.51.100.2", "passing");
    world.agent.set(API_DC2, json!([passing]));
    until(&mut rx, "the gateway again", |s| {
        api_addrs(s) == ["203.0.113.2:8443"]
    })
    .await;

    let requests = world.agent.requests();
    let filter = "filter=ServiceKind%20%3D%3D%20%22mesh-gateway%22";
    for dc in ["dc1", "dc2"] {
        let names = format!("/v1/catalog/services?dc={dc}&{filter}");
        assert!(
            requests.iter().any(|r| r.starts_with(&names)),
            "{names} not in {requests:#?}"
        );
    }
    let post = world.agent.posts();
    let chain_post = post.iter().find(|(p, _)| p == CHAIN_API).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&chain_post.1).unwrap(),
        json!({ "OverrideMeshGateway": { "Mode": "local" } }),
        "the upstream's mode is posted"
    );
}

/// An execution of `geo-db` answered by `dc` with `nodes`.
fn executed(dc: &str, failovers: u32, nodes: Vec<Value>) -> Value {
    json!({ "Service": "db", "Nodes": nodes, "DNS": { "TTL": "" },
            "Datacenter": dc, "Failovers": failovers })
}

#[tokio::test]
async fn a_prepared_query_upstream_follows_the_query_to_another_datacenter() {
    let world = two_dcs(Upstream {
        destination_type: "prepared_query".into(),
        ..upstream("geo-db", 9191)
    })
    .await;
    let td = world.ca.trust_domain();
    world.agent.set(
        QUERY,
        executed(
            "dc1",
            0,
            vec![instance("db", "dc1", "10.1.0.1", "198.51.100.1", "passing")],
        ),
    );
    let mut rx = world.source(ProxySelector::ProxyId("web-sidecar-proxy".into()), None);
    let addrs = |s: &Snapshot| -> Vec<String> {
        s.upstream("geo-db").map_or_else(Vec::new, |u| {
            u.all_endpoints().iter().map(|e| e.addr.clone()).collect()
        })
    };
    let snap = until(&mut rx, "dc1's db", |s| addrs(s) == ["10.1.0.1:21000"]).await;
    let target = &snap.upstream("geo-db").unwrap().routing.clusters[0].targets[0];
    assert_eq!(target.id, "geo-db.dc1", "the target label: name and dc");
    assert_eq!(target.sni, format!("geo-db.default.dc1.query.{td}"));
    let db1 = ServiceId::new(&td, "default", "dc1", "db");
    assert_eq!(target.endpoints[0].identity, db1);

    // dc1 has no healthy db any more: the query fails over to dc2, whose instances are
    // dialled on their WAN address and must prove their own identities.
    let mut native = instance("db-native", "dc2", "10.2.0.2", "198.51.100.3", "passing");
    native["Service"]["Connect"] = json!({ "Native": true });
    native["Service"]["Service"] = json!("db-native");
    let mut unsaid = instance("db", "", "10.2.0.4", "198.51.100.4", "passing");
    unsaid["Node"]["Datacenter"] = json!("");
    world.agent.set(
        QUERY,
        executed(
            "dc2",
            1,
            vec![
                instance("db", "dc2", "10.2.0.1", "198.51.100.2", "passing"),
                native,
                unsaid,
                instance("db", "dc2", "10.2.0.5", "198.51.100.5", "critical"),
            ],
        ),
    );
    let snap = until(&mut rx, "dc2's db", |s| addrs(s).len() == 3).await;
    let target = &snap.upstream("geo-db").unwrap().routing.clusters[0].targets[0];
    assert_eq!(target.id, "geo-db.dc1", "the label stays");
    assert_eq!(target.sni, format!("geo-db.default.dc1.query.{td}"));
    let got: Vec<(&str, String)> = target
        .endpoints
        .iter()
        .map(|e| (e.addr.as_str(), e.identity.to_uri()))
        .collect();
    let uri = |svc: &str| ServiceId::new(&td, "default", "dc2", svc).to_uri();
    assert_eq!(
        got,
        [
            ("198.51.100.2:21000", uri("db")),
            ("198.51.100.3:21000", uri("db-native")),
            ("198.51.100.4:21000", uri("db")),
        ],
        "each its own identity; a node without a datacenter is the answer's"
    );

    // And back.
    world.agent.set(
        QUERY,
        executed(
            "dc1",
            0,
            vec![instance("db", "dc1", "10.1.0.1", "198.51.100.1", "passing")],
        ),
    );
    until(&mut rx, "dc1's db again", |s| {
        addrs(s) == ["10.1.0.1:21000"]
    })
    .await;
    let requests = world.agent.requests();
    let executions: Vec<&String> = requests.iter().filter(|r| r.starts_with(QUERY)).collect();
    assert!(executions.len() >= 3, "executed again and again");
    assert!(
        executions
            .iter()
            .all(|r| *r == &format!("{QUERY}?connect=true")),
        "no index, no wait, no dc: {executions:#?}"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.starts_with("/v1/discovery-chain/geo-db")),
        "a query has no chain"
    );
}
