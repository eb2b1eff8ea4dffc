//! service-defaults and proxy-defaults merged into sidecar registrations, waking the
//! watchers of those registrations.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::json;

use super::Agent;

#[tokio::test]
async fn defaults_are_merged_into_sidecar_registrations_and_wake_their_watchers() {
    let agent = Agent::start().await;
    agent
        .register(json!({ "Name": "web", "Port": 8080, "Connect": { "SidecarService": {
            "Proxy": { "Upstreams": [
                { "DestinationName": "api", "LocalBindPort": 9191 },
                { "DestinationName": "db", "LocalBindPort": 9192 },
                { "DestinationName": "cache", "LocalBindPort": 9193, "Config": { "protocol": "tcp" } } ] }
        } } }))
        .await;
    let first = agent.get("/v1/agent/service/web-sidecar-proxy").await;
    let hash = first.header("x-consul-contenthash").unwrap().to_owned();
    assert!(
        first.value()["Proxy"].get("Config").is_none(),
        "nothing central yet"
    );

    let path = format!("/v1/agent/service/web-sidecar-proxy?hash={hash}&wait=10s");
    let blocked = agent.get(&path);
    let write = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let api = json!({ "Kind": "service-defaults", "Name": "api", "Protocol": "http" });
        assert_eq!(agent.put("/v1/config", api).await.status, StatusCode::OK);
    };
    let started = Instant::now();
    let (changed, ()) = tokio::join!(blocked, write);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the write woke the watcher"
    );
    let proxy = changed.value()["Proxy"].clone();
    assert_eq!(
        proxy["Upstreams"][0]["Config"],
        json!({ "protocol": "http" })
    );
    assert!(proxy["Upstreams"][1].get("Config").is_none(), "{proxy}");

    for entry in [
        json!({ "Kind": "service-defaults", "Name": "web", "Protocol": "grpc" }),
        json!({ "Kind": "proxy-defaults", "Name": "global",
                "Config": { "protocol": "http2", "local_connect_timeout_ms": 250 } }),
    ] {
        assert_eq!(agent.put("/v1/config", entry).await.status, StatusCode::OK);
    }
    let proxy = agent
        .get("/v1/agent/service/web-sidecar-proxy")
        .await
        .value()["Proxy"]
        .clone();
    // The destination's service-defaults beat proxy-defaults; proxy-defaults fill in
    // the rest; an upstream's own setting wins.
    assert_eq!(
        proxy["Config"],
        json!({ "protocol": "grpc", "local_connect_timeout_ms": 250 })
    );
    assert_eq!(proxy["Upstreams"][0]["Config"]["protocol"], "http");
    assert_eq!(proxy["Upstreams"][1]["Config"]["protocol"], "http2");
    assert_eq!(proxy["Upstreams"][2]["Config"]["protocol"], "tcp");

    let deleted = agent
        .call(Method::DELETE, "/v1/config/service-defaults/web", None)
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    let proxy = agent
        .get("/v1/agent/service/web-sidecar-proxy")
        .await
        .value()["Proxy"]
        .clone();
    assert_eq!(proxy["Config"]["protocol"], "http2");
    let listed = agent.get("/v1/config/service-defaults").await.value();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
}
