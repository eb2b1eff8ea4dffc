//! Prepared queries over HTTP: create, read, list, update, delete with Consul's answers
//! and refusals; execute with its health rules, `?connect`, and failover to another
//! datacenter; kept in the data dir.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::{Agent, eventually, two_datacenters};
use crate::DevAgentConfig;

async fn create(agent: &Agent, query: Value) -> String {
    let answer = agent.call(Method::POST, "/v1/query", Some(query)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    answer.value()["ID"].as_str().unwrap().to_owned()
}

/// `api` with a TTL check `<id>-ttl` in `status`, and a sidecar whose one check is an
/// alias of it (no listener to check here).
async fn api(agent: &Agent, id: &str, status: &str, tags: &[&str]) {
    agent
        .register(json!({
            "ID": id, "Name": "api", "Port": 9090, "Tags": tags,
            "Check": {"CheckID": format!("{id}-ttl"), "TTL": "1h", "Status": status},
            "Connect": {"SidecarService": {"Checks": [{"AliasService": id}]}},
        }))
        .await;
}

async fn execute(agent: &Agent, path: &str) -> Value {
    let answer = agent.get(path).await;
    assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.text());
    answer.value()
}

fn ids(answer: &Value) -> Vec<String> {
    let mut ids: Vec<String> = answer["Nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Service"]["ID"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn queries_are_created_read_listed_updated_and_deleted() {
    let agent = Agent::start().await;
    let id = create(
        &agent,
        json!({"Name": "api", "Service": {"Service": "api", "Failover": {"NearestN": 2}},
               "DNS": {"TTL": "10s"}}),
    )
    .await;
    let read = agent.get(&format!("/v1/query/{id}")).await;
    assert_eq!(read.status, StatusCode::OK);
    let stored = &read.value()[0];
    assert_eq!(stored["ID"], id.as_str());
    assert_eq!(stored["Service"]["Failover"]["NearestN"], 2);
    assert_eq!(stored["DNS"]["TTL"], "10s");
    assert_eq!(stored["CreateIndex"], stored["ModifyIndex"]);
    assert_eq!(read.index(), stored["ModifyIndex"].as_u64().unwrap());
    assert_eq!(
        agent
            .get("/v1/query")
            .await
            .value()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let update = agent
        .put(
            &format!("/v1/query/{id}"),
            json!({"Name": "api", "Service": {"Service": "api", "OnlyPassing": true}}),
        )
        .await;
    assert_eq!(update.status, StatusCode::OK, "{}", update.text());
    let updated = agent.get(&format!("/v1/query/{id}")).await.value();
    assert_eq!(updated[0]["Service"]["OnlyPassing"], true);
    assert_eq!(updated[0]["CreateIndex"], stored["CreateIndex"]);
    assert_ne!(updated[0]["ModifyIndex"], stored["ModifyIndex"]);

    let refusals = [
        (
            json!({"Name": "x", "Service": {}}),
            "Invalid prepared query: Must provide a Service name to query",
        ),
        (
            json!({"Service": {"Service": "api"}}),
            "Invalid prepared query: Must be bound to a session",
        ),
        (
            json!({"Name": "y", "Service": {"Service": "api", "Failover": {"NearestN": -1}}}),
            "Invalid prepared query: Bad NearestN '-1', must be >= 0",
        ),
        (
            json!({"Name": "api", "Service": {"Service": "db"}}),
            "Name 'api' aliases an existing query name",
        ),
        (
            json!({"ID": "x", "Name": "z", "Service": {"Service": "db"}}),
            "ID must be empty when creating a new prepared query",
        ),
    ];
    for (body, message) in refusals {
        let answer = agent.call(Method::POST, "/v1/query", Some(body)).await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(answer.text(), message);
    }
    let missing = agent
        .get("/v1/query/00000000-0000-4000-8000-000000000000")
        .await;
    assert_eq!(
        (missing.status, missing.text()),
        (StatusCode::NOT_FOUND, "Query not found".into())
    );
    let gone = agent.call(Method::DELETE, "/v1/query/nope", None).await;
    assert_eq!(gone.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        gone.text(),
        "Cannot modify non-existent prepared query: 'nope'"
    );

    let deleted = agent
        .call(Method::DELETE, &format!("/v1/query/{id}"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(agent.get("/v1/query").await.value(), json!([]));
}

#[tokio::test]
async fn execute_skips_the_unhealthy_and_filters_as_asked() {
    let agent = Agent::start().await;
    api(&agent, "api-1", "passing", &["v1"]).await;
    api(&agent, "api-2", "warning", &["v2"]).await;
    api(&agent, "api-3", "critical", &["v1"]).await;
    create(
        &agent,
        json!({"Name": "api", "Service": {"Service": "api"}}),
    )
    .await;
    create(
        &agent,
        json!({"Name": "strict", "Service": {"Service": "api", "OnlyPassing": true}}),
    )
    .await;
    create(
        &agent,
        json!({"Name": "v1", "Service": {"Service": "api", "Tags": ["V1"]}}),
    )
    .await;
    create(
        &agent,
        json!({"Name": "ignoring", "Service": {"Service": "api",
        "IgnoreCheckIDs": ["api-3-ttl"], "Tags": ["!v2"]}}),
    )
    .await;

    let all = execute(&agent, "/v1/query/api/execute").await;
    assert_eq!(ids(&all), ["api-1", "api-2"], "critical never");
    assert_eq!(all["Service"], "api");
    assert_eq!(all["Datacenter"], "dc1");
    assert_eq!(all["Failovers"], 0);
    assert_eq!(
        ids(&execute(&agent, "/v1/query/strict/execute").await),
        ["api-1"]
    );
    assert_eq!(
        ids(&execute(&agent, "/v1/query/v1/execute").await),
        ["api-1"]
    );
    assert_eq!(
        ids(&execute(&agent, "/v1/query/ignoring/execute").await),
        ["api-1", "api-3"]
    );
    let limited = execute(&agent, "/v1/query/api/execute?limit=1").await;
    assert_eq!(limited["Nodes"].as_array().unwrap().len(), 1);

    // Connect-capable instances: the sidecars, whose alias checks follow their service.
    let connect = execute(&agent, "/v1/query/api/execute?connect=true").await;
    assert_eq!(
        ids(&connect),
        ["api-1-sidecar-proxy", "api-2-sidecar-proxy"]
    );
    assert_eq!(connect["Nodes"][0]["Service"]["Kind"], "connect-proxy");
    let missing = agent.get("/v1/query/nope/execute").await;
    assert_eq!(
        (missing.status, missing.text()),
        (StatusCode::NOT_FOUND, "Query not found".into())
    );
}

#[tokio::test]
async fn a_query_fails_over_to_the_other_datacenter_and_back() {
    let (dc1, dc2) = two_datacenters().await;
    api(&dc1, "api", "passing", &[]).await;
    api(&dc2, "api", "passing", &[]).await;
    let id = create(
        &dc1,
        json!({"Name": "api", "Service": {"Service": "api", "Failover": {"NearestN": 1}}}),
    )
    .await;
    create(
        &dc1,
        json!({"Name": "listed", "Service": {"Service": "api",
               "Failover": {"Datacenters": ["dc9", "dc2"]}}}),
    )
    .await;
    let here = execute(&dc1, "/v1/query/api/execute?connect=true").await;
    assert_eq!(
        (here["Datacenter"].clone(), here["Failovers"].clone()),
        (json!("dc1"), json!(0))
    );

    dc1.call(Method::PUT, "/v1/agent/check/fail/api-ttl", None)
        .await;
    for query in [id.as_str(), "listed"] {
        let there = execute(&dc1, &format!("/v1/query/{query}/execute?connect=true")).await;
        assert_eq!(there["Datacenter"], "dc2", "{there}");
        assert_eq!(there["Failovers"], 1);
        assert_eq!(there["Nodes"][0]["Node"]["Datacenter"], "dc2");
        assert_eq!(
            there["Nodes"][0]["Service"]["Proxy"]["DestinationServiceName"],
            "api"
        );
    }
    dc2.call(Method::PUT, "/v1/agent/check/fail/api-ttl", None)
        .await;
    let nowhere = execute(&dc1, "/v1/query/api/execute").await;
    assert_eq!(nowhere["Nodes"], json!([]));
    assert_eq!(
        (nowhere["Datacenter"].clone(), nowhere["Failovers"].clone()),
        (json!("dc2"), json!(1))
    );

    dc1.call(Method::PUT, "/v1/agent/check/pass/api-ttl", None)
        .await;
    let back = execute(&dc1, "/v1/query/api/execute").await;
    assert_eq!(back["Datacenter"], "dc1");

    // ?dc= runs dc2's own queries there (queries are not replicated).
    let elsewhere = dc1.get("/v1/query/api/execute?dc=dc2").await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    create(&dc2, json!({"Name": "api", "Service": {"Service": "api"}})).await;
    dc2.call(Method::PUT, "/v1/agent/check/pass/api-ttl", None)
        .await;
    let from_dc2 = execute(&dc1, "/v1/query/api/execute?dc=dc2").await;
    assert_eq!(from_dc2["Datacenter"], "dc2");
    assert_eq!(ids(&from_dc2), ["api"]);
}

#[tokio::test]
async fn queries_survive_a_restart_with_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let config = DevAgentConfig {
        data_dir: Some(dir.path().to_owned()),
        ..DevAgentConfig::default()
    };
    let first = Agent::with(config.clone()).await;
    let addr = first.agent.addr();
    let id = create(
        &first,
        json!({"Name": "api", "Service": {"Service": "api"}}),
    )
    .await;
    let state = dir.path().join("state.json");
    eventually("the query is saved", Duration::from_secs(5), || async {
        let text = tokio::fs::read_to_string(&state).await.ok()?;
        text.contains(&id).then_some(())
    })
    .await;
    first.agent.shutdown().await.unwrap();
    let second = Agent::with(DevAgentConfig { addr, ..config }).await;
    let read = second.get(&format!("/v1/query/{id}")).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text());
    assert_eq!(read.value()[0]["Name"], "api");
}
