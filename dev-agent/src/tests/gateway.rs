//! Mesh gateways registered with the agent: Consul's shape in the agent, catalog and
//! health views, the catalog's kind filter, never a connect instance, a TCP check on
//! the LAN port, and Consul's refusals.

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

use super::{Agent, eventually};

fn gateway(port: u16) -> Value {
    json!({
        "Kind": "mesh-gateway", "ID": "mesh-gateway", "Name": "mesh-gateway",
        "Address": "127.0.0.1", "Port": port,
        "TaggedAddresses": {
            "lan": {"Address": "127.0.0.1", "Port": port},
            "wan": {"Address": "127.0.0.2", "Port": 8443},
        },
        "Proxy": {"Config": {"connect_timeout_ms": 5000}},
    })
}

fn q(expr: &str) -> String {
    form_urlencoded::byte_serialize(expr.as_bytes()).collect()
}

#[tokio::test]
async fn a_mesh_gateway_is_shown_as_consul_shows_it() {
    let agent = Agent::start().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    agent.register(gateway(port)).await;
    agent
        .register(json!({"Name": "api", "Port": 9090, "Connect": {"SidecarService": {}}}))
        .await;

    let own = agent.get("/v1/agent/service/mesh-gateway").await.value();
    assert_eq!(own["Kind"], "mesh-gateway");
    assert_eq!(own["Port"], port);
    assert_eq!(own["Proxy"]["Config"], json!({"connect_timeout_ms": 5000}));
    let tagged = &own["TaggedAddresses"];
    assert_eq!(tagged["wan"], json!({"Address": "127.0.0.2", "Port": 8443}));
    assert_eq!(tagged["lan"], json!({"Address": "127.0.0.1", "Port": port}));
    assert_eq!(
        tagged["lan_ipv4"],
        json!({"Address": "127.0.0.1", "Port": port})
    );

    let health = agent.get("/v1/health/service/mesh-gateway").await.value();
    assert_eq!(health[0]["Service"]["Kind"], "mesh-gateway");
    assert_eq!(
        health[0]["Service"]["TaggedAddresses"]["wan"]["Address"],
        "127.0.0.2"
    );
    let check = &health[0]["Checks"][1];
    assert_eq!(check["CheckID"], "service:mesh-gateway");
    assert_eq!(check["Name"], "mesh-gateway listening");
    assert_eq!(check["Type"], "tcp");
    eventually(
        "the gateway's TCP check passes",
        Duration::from_secs(5),
        || async {
            let health = agent
                .get("/v1/health/service/mesh-gateway?passing=1")
                .await
                .value();
            (health.as_array().map(Vec::len) == Some(1)).then_some(())
        },
    )
    .await;
    drop(listener);

    let kinds = agent
        .get(&format!(
            "/v1/catalog/services?filter={}",
            q(r#"ServiceKind == "mesh-gateway""#)
        ))
        .await;
    assert_eq!(kinds.status, StatusCode::OK, "{}", kinds.text());
    assert_eq!(kinds.value(), json!({"mesh-gateway": []}));
    let catalog = agent.get("/v1/catalog/service/mesh-gateway").await.value();
    assert_eq!(catalog[0]["ServiceKind"], "mesh-gateway");
    assert_eq!(catalog[0]["ServiceTaggedAddresses"]["wan"]["Port"], 8443);

    // Gateways are never connect instances of anything.
    for name in ["mesh-gateway", "api"] {
        let connect = agent
            .get(&format!("/v1/health/connect/{name}"))
            .await
            .value();
        assert!(
            connect
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["Service"]["Kind"] != "mesh-gateway"),
            "{name}: {connect}"
        );
    }
}

#[tokio::test]
async fn a_gateways_own_checks_replace_the_default_one() {
    let agent = Agent::start().await;
    let mut body = gateway(8443);
    body["Check"] = json!({"CheckID": "gw-ttl", "TTL": "1h", "Status": "passing"});
    agent.register(body).await;
    let health = agent.get("/v1/health/service/mesh-gateway").await.value();
    let ids: Vec<&str> = health[0]["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["CheckID"].as_str())
        .collect();
    assert_eq!(ids, ["serfHealth", "gw-ttl"]);
}

#[tokio::test]
async fn gateway_registrations_are_refused_as_consul_refuses_them() {
    let agent = Agent::start().await;
    let cases = [
        (
            json!({"Port": 0}),
            "Validation failed: Port must be non-zero for a mesh-gateway",
        ),
        (
            json!({"Connect": {"SidecarService": {}}}),
            "Validation failed: A mesh-gateway cannot have a sidecar service defined",
        ),
        (
            json!({"Proxy": {"DestinationServiceName": "api"}}),
            "Validation failed: The Proxy.DestinationServiceName configuration is invalid for a mesh-gateway",
        ),
        (
            json!({"Proxy": {"Upstreams": [{"DestinationName": "db", "LocalBindPort": 1}]}}),
            "Validation failed: The Proxy.Upstreams configuration is invalid for a mesh-gateway",
        ),
    ];
    for (change, message) in cases {
        let mut body = gateway(8443);
        for (key, value) in change.as_object().unwrap() {
            body[key] = value.clone();
        }
        let answer = agent.put("/v1/agent/service/register", body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{change}");
        assert_eq!(answer.text(), message);
    }
    let ingress = agent
        .put(
            "/v1/agent/service/register",
            json!({"Kind": "ingress-gateway", "Name": "in", "Port": 1}),
        )
        .await;
    assert_eq!(ingress.status, StatusCode::BAD_REQUEST);
}
