//! The data dir: a restarted agent keeps its CA, registrations, intentions and check
//! statuses, and starts its indexes low again.

use http::StatusCode;
use serde_json::{Value, json};

use super::Agent;
use crate::DevAgentConfig;
use ferrule_control::api::ca::IndexedCARoots;

#[tokio::test]
async fn a_restart_with_a_data_dir_keeps_the_state_and_starts_low() {
    let dir = tempfile::tempdir().unwrap();
    let config = DevAgentConfig {
        data_dir: Some(dir.path().to_owned()),
        ..DevAgentConfig::default()
    };
    let first = Agent::with(config.clone()).await;
    let addr = first.agent.addr();
    let trust_domain = first.agent.trust_domain().to_owned();
    let roots: IndexedCARoots = first.get("/v1/agent/connect/ca/roots").await.json();
    for i in 0..5 {
        first
            .register(json!({ "Name": format!("svc{i}"), "Port": 1000 + i }))
            .await;
    }
    first
        .register(json!({ "Name": "web", "Port": 8080,
            "Connect": { "SidecarService": { "Port": 21555 } } }))
        .await;
    first
        .register(json!({ "Name": "api", "Port": 8081,
            "Connect": { "SidecarService": { "Port": 21556 } } }))
        .await;
    first
        .put("/v1/agent/service/deregister/svc3", Value::Null)
        .await;
    first
        .put(
            "/v1/agent/service/deregister/api-sidecar-proxy",
            Value::Null,
        )
        .await;
    first
        .put(
            "/v1/config",
            json!({ "Kind": "service-intentions", "Name": "web",
                "Sources": [{ "Name": "api", "Action": "deny" }] }),
        )
        .await;
    // An L7 intention that only stands because of its service-defaults: both come back.
    for entry in [
        json!({ "Kind": "service-defaults", "Name": "db", "Protocol": "http" }),
        json!({ "Kind": "service-intentions", "Name": "db", "Sources": [ { "Name": "web",
            "Permissions": [ { "Action": "allow", "HTTP": { "PathPrefix": "/" } } ] } ] }),
    ] {
        let written = first.put("/v1/config", entry).await;
        assert_eq!(written.status, StatusCode::OK, "{}", written.text());
    }
    let leaf = first.get("/v1/agent/connect/ca/leaf/web").await;
    let high = leaf.index();
    assert!(dir.path().join("ca.pem").exists() && dir.path().join("ca-key.pem").exists());
    let before: std::collections::BTreeMap<String, Value> =
        first.get("/v1/agent/services").await.json();
    first.agent.shutdown().await.unwrap();

    let second = Agent::with(DevAgentConfig { addr, ..config }).await;
    assert_eq!(second.agent.addr(), addr);
    assert_eq!(second.agent.trust_domain(), trust_domain);
    let again: IndexedCARoots = second.get("/v1/agent/connect/ca/roots").await.json();
    assert_eq!(again.active_root_id, roots.active_root_id);
    let leaf = second.get("/v1/agent/connect/ca/leaf/web").await;
    assert!(
        leaf.index() < high,
        "indexes start low again: {} < {high}",
        leaf.index()
    );
    let after: std::collections::BTreeMap<String, Value> =
        second.get("/v1/agent/services").await.json();
    let ids = |m: &std::collections::BTreeMap<String, Value>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before), "the same services come back");
    assert!(!after.contains_key("svc3") && !after.contains_key("api-sidecar-proxy"));
    assert_eq!(after["web-sidecar-proxy"]["Port"], json!(21555));
    let entry = second
        .get("/v1/config/service-intentions/web")
        .await
        .value();
    assert_eq!(entry["Sources"][0]["Name"], json!("api"));
    assert_eq!(entry["Sources"][0]["Action"], json!("deny"));
    let defaults = second.get("/v1/config/service-defaults/db").await.value();
    assert_eq!(defaults["Protocol"], "http");
    let l7 = second.get("/v1/config/service-intentions/db").await;
    assert_eq!(l7.status, StatusCode::OK, "{}", l7.text());
}
