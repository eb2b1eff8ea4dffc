//! Consul's HTTP conventions as a client meets them: Community Edition refusing
//! Enterprise parameters and headers, strict JSON bodies, and `405` with `Allow`.

use http::{Method, StatusCode};
use serde_json::json;

use super::Agent;

#[tokio::test]
async fn community_edition_refuses_enterprise_parameters_and_unknown_fields() {
    let agent = Agent::start().await;
    let ns = agent.get("/v1/agent/services?ns=default").await;
    assert_eq!(ns.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        ns.text(),
        "Invalid query parameter: \"ns\" - Namespaces are a Consul Enterprise feature"
    );
    let header = agent
        .call_with(
            Method::GET,
            "/v1/health/connect/web",
            None,
            &[("X-Consul-Partition", "default")],
        )
        .await;
    assert_eq!(header.status, StatusCode::BAD_REQUEST);
    assert!(
        header
            .text()
            .contains("Partitions are a Consul Enterprise feature")
    );

    let unknown = agent
        .put(
            "/v1/agent/service/register",
            json!({ "Name": "web", "Port": 1, "Frobnicate": true }),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        unknown.text(),
        "Request decode failed: json: unknown field \"Frobnicate\""
    );
    let namespaced = agent
        .put(
            "/v1/agent/service/register",
            json!({ "Name": "web", "Port": 1, "Namespace": "default" }),
        )
        .await;
    assert_eq!(namespaced.status, StatusCode::BAD_REQUEST);
    let authorize = agent
        .call(
            Method::POST,
            "/v1/agent/connect/authorize",
            Some(json!({ "Target": "db", "ClientCertURI": "x", "Namespace": "default" })),
        )
        .await;
    assert_eq!(authorize.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        authorize.text(),
        "Request decode failed: json: unknown field \"Namespace\""
    );
    let wrong_method = agent.call(Method::DELETE, "/v1/agent/services", None).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.header("allow"), Some("GET"));
}

/// Consul's method table: the authorize endpoint is POST only and `/v1/config` PUT
/// only, so a tool that uses the other method fails here as it would against Consul.
#[tokio::test]
async fn methods_are_checked_as_consul_checks_them() {
    let agent = Agent::start().await;
    let body =
        json!({ "Target": "db", "ClientCertURI": "spiffe://x.consul/ns/default/dc/dc1/svc/web" });
    let put = agent
        .call(Method::PUT, "/v1/agent/connect/authorize", Some(body))
        .await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(put.header("allow"), Some("POST"));
    let entry = json!({ "Kind": "service-defaults", "Name": "web", "Protocol": "http" });
    let post = agent
        .call(Method::POST, "/v1/config", Some(entry.clone()))
        .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.header("allow"), Some("PUT"));
    assert_eq!(agent.put("/v1/config", entry).await.status, StatusCode::OK);
    for (method, path, allow) in [
        (Method::POST, "/v1/catalog/services", "GET"),
        (Method::PUT, "/v1/catalog/nodes", "GET"),
        (Method::DELETE, "/v1/health/service/web", "GET"),
        (Method::GET, "/v1/agent/service/register", "PUT"),
        (Method::POST, "/v1/connect/ca/configuration", "GET, PUT"),
    ] {
        let answer = agent.call(method.clone(), path, None).await;
        assert_eq!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(answer.header("allow"), Some(allow), "{method} {path}");
    }
}
