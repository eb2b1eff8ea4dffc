//! Service registration as the agent and catalog views show it: a sidecar registered
//! with its service has the shape Consul gives it.

use http::StatusCode;
use serde_json::json;

use super::Agent;
use ferrule_control::api::agent::AgentService;

#[tokio::test]
async fn a_sidecar_registration_has_consuls_shape() {
    let agent = Agent::start().await;
    agent
        .register(json!({
            "Name": "web", "Port": 8080, "Tags": ["v1"],
            "Connect": { "SidecarService": {
                "Proxy": { "Upstreams": [ { "DestinationName": "db", "LocalBindPort": 9191 } ],
                           "Config": { "protocol": "http" } }
            } }
        }))
        .await;

    let answer = agent.get("/v1/agent/service/web-sidecar-proxy").await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.value();
    assert_eq!(body["Kind"], "connect-proxy");
    assert_eq!(body["ID"], "web-sidecar-proxy");
    assert_eq!(body["Service"], "web-sidecar-proxy");
    assert_eq!(body["Port"], 21000, "first port of the sidecar range");
    assert_eq!(body["Tags"], json!(["v1"]), "tags copied from the parent");
    assert_eq!(body["Meta"], json!({}));
    assert_eq!(body["Datacenter"], "dc1");
    assert_eq!(
        body["Proxy"],
        json!({
            "DestinationServiceName": "web", "DestinationServiceID": "web",
            "LocalServiceAddress": "127.0.0.1", "LocalServicePort": 8080,
            "Config": { "protocol": "http" },
            "Upstreams": [ { "DestinationType": "service", "DestinationName": "db",
                             "LocalBindPort": 9191, "MeshGateway": {} } ],
            "MeshGateway": {}, "Expose": {}
        })
    );
    let hash = answer.header("x-consul-contenthash").unwrap();
    assert_eq!(body["ContentHash"], hash);
    let parsed: AgentService = answer.json();
    assert!(parsed.is_connect_proxy());

    let all: std::collections::HashMap<String, AgentService> =
        agent.get("/v1/agent/services").await.json();
    assert_eq!(all.len(), 2);
    assert!(all["web"].proxy.is_none() && all["web"].kind.is_empty());
    assert_eq!(
        all["web-sidecar-proxy"].content_hash, "",
        "no hash in the list"
    );

    // snake_case works too, and the next sidecar takes the next free port.
    agent
        .register(json!({
            "name": "api", "port": 9090,
            "connect": { "sidecar_service": { "proxy": { "upstreams": [
                { "destination_name": "db", "local_bind_port": 9292 } ] } } }
        }))
        .await;
    let api: AgentService = agent
        .get("/v1/agent/service/api-sidecar-proxy")
        .await
        .json();
    assert_eq!(api.port, 21001);
    assert_eq!(api.proxy.unwrap().upstreams[0].local_bind_port, 9292);

    // Re-registering keeps the sidecar's port; deregistering the parent removes it.
    agent
        .register(json!({ "Name": "web", "Port": 8080, "Connect": { "SidecarService": {} } }))
        .await;
    let again: AgentService = agent
        .get("/v1/agent/service/web-sidecar-proxy")
        .await
        .json();
    assert_eq!(again.port, 21000);
    let gone = agent
        .put("/v1/agent/service/deregister/web", json!(null))
        .await;
    assert_eq!(gone.status, StatusCode::OK);
    let missing = agent.get("/v1/agent/service/web-sidecar-proxy").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.text(), "unknown service ID: web-sidecar-proxy");

    // A plain connect-proxy, as `--proxy-id` uses.
    agent
        .register(json!({
            "Kind": "connect-proxy", "Name": "db-proxy", "ID": "db-proxy-1", "Port": 21500,
            "Proxy": { "DestinationServiceName": "db", "LocalServicePort": 5432 }
        }))
        .await;
    let proxy: AgentService = agent.get("/v1/agent/service/db-proxy-1").await.json();
    assert_eq!(proxy.proxy.unwrap().destination_service_name, "db");
    let bad = agent
        .put(
            "/v1/agent/service/register",
            json!({ "Kind": "connect-proxy", "Name": "x", "Port": 1 }),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}
