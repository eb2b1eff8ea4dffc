//! Health checks that really run: a sidecar's TCP check follows whether something
//! listens, and TTL checks follow their updates.

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use super::Agent;
use ferrule_control::api::health::ServiceEntry;

#[tokio::test]
async fn a_sidecar_passes_its_tcp_check_only_while_something_listens() {
    let agent = Agent::start().await;
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        probe.local_addr().unwrap().port()
    };
    agent
        .register(json!({ "Name": "web", "Port": 8080,
                          "Connect": { "SidecarService": { "Port": port } } }))
        .await;

    let all = agent.get("/v1/health/connect/web").await;
    assert_eq!(all.header("x-consul-query-backend"), Some("blocking-query"));
    let entries: Vec<ServiceEntry> = all.json();
    assert_eq!(entries.len(), 1);
    let checks: Vec<(&str, &str)> = entries[0]
        .checks
        .iter()
        .map(|c| (c.check_id.as_str(), c.status.as_str()))
        .collect();
    assert_eq!(
        checks,
        [
            ("serfHealth", "passing"),
            ("service:web-sidecar-proxy:1", "critical"),
            ("service:web-sidecar-proxy:2", "passing"),
        ]
    );
    assert_eq!(entries[0].checks[1].name, "Connect Sidecar Listening");
    assert_eq!(entries[0].checks[1].r#type, "tcp");
    assert_eq!(entries[0].checks[2].name, "Connect Sidecar Aliasing web");
    let passing: Vec<ServiceEntry> = agent.get("/v1/health/connect/web?passing").await.json();
    assert!(passing.is_empty(), "critical sidecars are filtered out");
    let plain: Vec<ServiceEntry> = agent.get("/v1/health/service/web?passing=1").await.json();
    assert_eq!(plain.len(), 1, "the parent has no checks of its own");
    let bad = agent.get("/v1/health/connect/web?passing=maybe").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let other_dc = agent.get("/v1/health/connect/web?dc=dc2").await;
    assert_eq!(other_dc.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(other_dc.text(), "No path to datacenter");

    // Start listening: a blocked `?passing` reader sees the sidecar appear.
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let index = agent.get("/v1/health/connect/web?passing").await.index();
    let mut now_passing: Vec<ServiceEntry> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut index = index;
    while now_passing.is_empty() && Instant::now() < deadline {
        let answer = agent
            .get(&format!(
                "/v1/health/connect/web?passing&index={index}&wait=2s"
            ))
            .await;
        index = answer.index();
        now_passing = answer.json();
    }
    assert_eq!(now_passing.len(), 1);
    assert_eq!(now_passing[0].service.port, port);
    assert!(
        now_passing[0].checks[1]
            .output
            .starts_with("TCP connect 127.0.0.1:")
    );

    // The probe connects and closes without a byte.
    let (mut probe, _) = listener.accept().await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), probe.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, 0);

    // Stop listening: it goes critical again.
    drop(listener);
    drop(probe);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let entries: Vec<ServiceEntry> = agent.get("/v1/health/connect/web?passing").await.json();
        if entries.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never went critical");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ttl_checks_follow_updates() {
    let agent = Agent::start().await;
    agent
        .register(json!({ "Name": "web", "Port": 8080,
                          "Check": { "CheckID": "web-ttl", "TTL": "30s" } }))
        .await;
    let critical: Vec<ServiceEntry> = agent.get("/v1/health/service/web?passing").await.json();
    assert!(critical.is_empty());
    let pass = agent
        .put("/v1/agent/check/pass/web-ttl?note=alive", json!(null))
        .await;
    assert_eq!(pass.status, StatusCode::OK);
    let entries: Vec<ServiceEntry> = agent.get("/v1/health/service/web?passing").await.json();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].checks[1].output, "alive");
    let unknown = agent.put("/v1/agent/check/pass/nope", json!(null)).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // Not refreshed within its TTL, it goes critical; a blocked reader sees it.
    agent
        .register(json!({ "Name": "batch", "Port": 1,
                          "Check": { "CheckID": "batch-ttl", "TTL": "1s", "Status": "passing" } }))
        .await;
    let index = agent.get("/v1/health/service/batch").await.index();
    let started = Instant::now();
    let path = format!("/v1/health/service/batch?index={index}&wait=10s");
    let entries: Vec<ServiceEntry> = agent.get(&path).await.json();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(entries[0].checks[1].status, "critical");
    assert_eq!(entries[0].checks[1].output, "TTL expired");
}
