//! Blocking queries over HTTP: hash and index waits, their parameters, the wait with its
//! jitter, and readers of roots, intention matches and health woken by a write.

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;

use super::Agent;
use ferrule_control::api::agent::AgentService;
use ferrule_control::api::ca::IndexedCARoots;
use ferrule_control::api::health::ServiceEntry;
use ferrule_control::api::intentions::IntentionMatchResponse;

#[tokio::test]
async fn hash_blocking_returns_on_change_and_not_before() {
    let agent = Agent::start().await;
    agent
        .register(json!({ "Name": "web", "Port": 8080, "Connect": { "SidecarService": {} } }))
        .await;
    let first = agent.get("/v1/agent/service/web-sidecar-proxy").await;
    let hash = first.header("x-consul-contenthash").unwrap().to_owned();

    let started = Instant::now();
    let same = agent
        .get(&format!(
            "/v1/agent/service/web-sidecar-proxy?hash={hash}&wait=300ms"
        ))
        .await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(
        waited < Duration::from_millis(300 * 17 / 16 + 1000),
        "{waited:?}"
    );
    assert_eq!(same.header("x-consul-contenthash"), Some(hash.as_str()));

    // An unrelated write does not end the wait early.
    let path = format!("/v1/agent/service/web-sidecar-proxy?hash={hash}&wait=10s");
    let blocked = agent.get(&path);
    let change = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        agent
            .register(json!({ "Name": "other", "Port": 1234 }))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        agent
            .register(
                json!({ "Name": "web", "Port": 8080, "Connect": { "SidecarService": {
                "Proxy": { "Upstreams": [ { "DestinationName": "db", "LocalBindPort": 9000 } ] }
            } } }),
            )
            .await;
    };
    let started = Instant::now();
    let (changed, ()) = tokio::join!(blocked, change);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    let new_hash = changed.header("x-consul-contenthash").unwrap();
    assert_ne!(new_hash, hash);
    let svc: AgentService = changed.json();
    assert_eq!(svc.proxy.unwrap().upstreams[0].local_bind_port, 9000);
}

#[tokio::test]
async fn blocking_parameters_are_checked_and_the_index_is_never_zero() {
    let agent = Agent::start().await;
    let bad_wait = agent.get("/v1/agent/connect/ca/roots?wait=soon").await;
    assert_eq!(bad_wait.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_wait.text(), "Invalid wait time");
    let bad_index = agent.get("/v1/agent/connect/ca/roots?index=-1").await;
    assert_eq!(bad_index.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_index.text(), "Invalid index");

    let none = agent
        .get("/v1/connect/intentions/match?by=destination&name=web")
        .await;
    assert_eq!(none.index(), 1, "an empty table answers index 1, never 0");
    assert_eq!(none.value(), json!({ "web": [] }));
    assert_eq!(none.header("x-consul-knownleader"), Some("true"));
    assert_eq!(none.header("x-consul-default-acl-policy"), Some("allow"));
    assert_eq!(
        none.header("x-consul-effective-consistency"),
        Some("leader")
    );
}

#[tokio::test]
async fn index_blocking_times_out_with_the_same_index_within_the_jitter() {
    let agent = Agent::start().await;
    let first = agent.get("/v1/agent/connect/ca/roots").await;
    let index = first.index();
    assert_eq!(first.header("x-cache"), Some("HIT"));
    for path in [
        format!("/v1/agent/connect/ca/roots?index={index}&wait=400ms"),
        "/v1/connect/intentions/match?by=destination&name=web&index=1&wait=400ms".to_owned(),
    ] {
        let started = Instant::now();
        let answer = agent.get(&path).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(400), "{path}: {waited:?}");
        // 400ms + at most 1/16 of jitter, plus scheduling slack.
        assert!(
            waited < Duration::from_millis(425 + 1000),
            "{path}: {waited:?}"
        );
        assert!(answer.index() <= index.max(1), "{path}");
    }
}

#[tokio::test]
async fn blocked_readers_of_roots_match_and_health_wake_on_change() {
    let agent = Agent::start().await;
    let roots = agent.get("/v1/agent/connect/ca/roots").await.index();
    let matches = agent
        .get("/v1/connect/intentions/match?by=destination&name=db")
        .await
        .index();
    let health = agent.get("/v1/health/connect/db").await.index();

    let roots_path = format!("/v1/agent/connect/ca/roots?index={roots}&wait=20s");
    let match_path =
        format!("/v1/connect/intentions/match?by=destination&name=db&index={matches}&wait=20s");
    let health_path = format!("/v1/health/connect/db?index={health}&wait=20s");
    let blocked_roots = agent.get(&roots_path);
    let blocked_match = agent.get(&match_path);
    let blocked_health = agent.get(&health_path);
    let writes = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rotated = agent.rotate_ca().await;
        assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text());
        let written = agent
            .put(
                "/v1/config",
                json!({ "Kind": "service-intentions", "Name": "db",
                        "Sources": [ { "Name": "web", "Action": "allow" } ] }),
            )
            .await;
        assert_eq!(written.text().trim(), "true");
        agent
            .register(json!({ "Name": "db", "Port": 5432, "Connect": { "SidecarService": {} } }))
            .await;
    };
    let started = Instant::now();
    let (r, m, h, ()) = tokio::join!(blocked_roots, blocked_match, blocked_health, writes);
    assert!(started.elapsed() < Duration::from_secs(5));

    assert!(r.index() > roots);
    assert_eq!(r.header("x-cache"), Some("MISS"));
    let body: IndexedCARoots = r.json();
    assert_eq!(body.roots.len(), 2);

    assert!(m.index() > matches);
    let body: IntentionMatchResponse = m.json();
    assert_eq!(body["db"].as_ref().unwrap()[0].source_name, "web");

    assert!(h.index() > health);
    assert_eq!(h.header("x-consul-query-backend"), Some("streaming"));
    let entries: Vec<ServiceEntry> = h.json();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].service.id, "db-sidecar-proxy");
    assert_eq!(entries[0].mesh_service_name(), "db");
}
