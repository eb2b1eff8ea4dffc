//! The discovery chain over HTTP: the three entry kinds through `/v1/config`, their
//! refusals as Consul answers them, `/v1/discovery-chain/:service` with its overrides
//! and blocking, subset filters on the health endpoints, and the data dir.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::Agent;
use crate::DevAgentConfig;
use ferrule_control::api::chain::{DiscoveryChainResponse, ServiceResolverEntry};

fn q(expr: &str) -> String {
    form_urlencoded::byte_serialize(expr.as_bytes()).collect()
}

async fn write(agent: &Agent, entry: Value) {
    let answer = agent.put("/v1/config", entry.clone()).await;
    assert_eq!(answer.status, StatusCode::OK, "{entry}: {}", answer.text());
    assert_eq!(answer.value(), json!(true));
}

/// web (http) splits 90/10 between its subsets v1 and v2.
async fn canary(agent: &Agent) {
    for entry in [
        json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}),
        json!({"Kind": "service-resolver", "Name": "web", "ConnectTimeout": "3s", "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"},
            "v2": {"Filter": "Service.Meta.version == v2", "OnlyPassing": true}}}),
        json!({"Kind": "service-splitter", "Name": "web", "Splits": [
            {"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]}),
    ] {
        write(agent, entry).await;
    }
}

#[tokio::test]
async fn entries_are_stored_listed_and_compiled() {
    let agent = Agent::start().await;
    canary(&agent).await;
    let read = agent.get("/v1/config/service-resolver/web").await;
    assert_eq!(read.status, StatusCode::OK);
    let resolver: ServiceResolverEntry = read.json();
    assert_eq!(resolver.kind, "service-resolver");
    assert!(resolver.modify_index > 0 && resolver.create_index == resolver.modify_index);
    assert_eq!(read.value()["ConnectTimeout"], "3s");
    let list = agent.get("/v1/config/service-splitter").await;
    assert_eq!(list.value().as_array().map(Vec::len), Some(1));
    let filtered = agent
        .get(&format!(
            "/v1/config/service-resolver?filter={}",
            q(r#"Name == "api""#)
        ))
        .await;
    assert_eq!(filtered.value(), json!([]));

    let answer = agent.get("/v1/discovery-chain/web").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.index(), read.index().max(list.index()));
    assert_eq!(answer.header("x-consul-knownleader"), Some("true"));
    let chain = answer.json::<DiscoveryChainResponse>().chain;
    assert_eq!(chain.protocol, "http");
    assert_eq!(chain.start_node, "splitter:web.default.default");
    let start = chain.start().expect("start node");
    let weights: Vec<(f32, &str)> = start
        .splits
        .iter()
        .map(|s| (s.weight, s.next_node.as_str()))
        .collect();
    assert_eq!(
        weights,
        [
            (90.0, "resolver:v1.web.default.default.dc1"),
            (10.0, "resolver:v2.web.default.default.dc1")
        ]
    );
    let v2 = &chain.targets["v2.web.default.default.dc1"];
    assert!(v2.subset.only_passing);
    assert_eq!(v2.connect_timeout.to_string(), "3s");
    let td = agent.agent.trust_domain();
    assert_eq!(v2.sni, format!("v2.web.default.dc1.internal.{td}"));

    let deleted = agent
        .call(Method::DELETE, "/v1/config/service-splitter/web", None)
        .await;
    assert_eq!(deleted.value(), json!({}));
    let missing = agent.get("/v1/config/service-splitter/web").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.text(),
        "Config entry not found for \"service-splitter\" / \"web\""
    );
}

#[tokio::test]
async fn refusals_are_consul_s() {
    let agent = Agent::start().await;
    canary(&agent).await;
    // What Consul's servers refuse comes back as a 500 with their message.
    let tcp_router = agent
        .put(
            "/v1/config",
            json!({"Kind": "service-router", "Name": "db", "Routes": [{}]}),
        )
        .await;
    assert_eq!(tcp_router.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        tcp_router.text(),
        "discovery chain \"db\" uses a protocol \"tcp\" that does not permit advanced routing or splitting behavior"
    );
    let protocol_change = agent
        .put(
            "/v1/config",
            json!({"Kind": "service-defaults", "Name": "web", "Protocol": "tcp"}),
        )
        .await;
    assert_eq!(protocol_change.status, StatusCode::INTERNAL_SERVER_ERROR);
    let subset_in_use = agent
        .call(Method::DELETE, "/v1/config/service-resolver/web", None)
        .await;
    assert_eq!(subset_in_use.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        subset_in_use.text(),
        "service \"web\" does not have a subset named \"v1\""
    );
    // What its decoder refuses is a 400.
    let unknown = agent
        .put(
            "/v1/config",
            json!({"Kind": "service-resolver", "Name": "web", "Subset": {}}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        unknown.text(),
        "Request decoding failed: 1 error occurred:\n\t* invalid config key \"Subset\"\n\n"
    );
    let still = agent.get("/v1/discovery-chain/web").await;
    assert_eq!(
        still.json::<DiscoveryChainResponse>().chain.protocol,
        "http",
        "nothing refused was stored"
    );
    // ?cas: 0 only creates.
    let cas = agent
        .put(
            "/v1/config?cas=0",
            json!({"Kind": "service-resolver", "Name": "web"}),
        )
        .await;
    assert_eq!(cas.value(), json!(false));
}

#[tokio::test]
async fn the_endpoint_takes_overrides_and_refuses_bad_requests() {
    let agent = Agent::start().await;
    canary(&agent).await;
    let post = |body: &str| {
        let body: Option<Value> = serde_json::from_str(body).ok();
        agent.call(Method::POST, "/v1/discovery-chain/web?compile-dc=dc2", body)
    };
    let overridden = post(
        r#"{"OverrideProtocol": "tcp", "override_connect_timeout": "9s",
        "OverrideMeshGateway": {"Mode": "remote"}}"#,
    )
    .await;
    assert_eq!(overridden.status, StatusCode::OK, "{}", overridden.text());
    let chain = overridden.json::<DiscoveryChainResponse>().chain;
    assert_eq!(chain.datacenter, "dc2");
    assert_eq!(chain.protocol, "tcp");
    assert_eq!(chain.start_node, "resolver:web.default.default.dc2");
    assert_eq!(chain.customization_hash.len(), 8);
    let target = &chain.targets["web.default.default.dc2"];
    assert_eq!(target.mesh_gateway.mode, "remote");
    assert_eq!(target.connect_timeout.to_string(), "9s");

    for (body, message) in [
        ("", "Request decoding failed: EOF"),
        (
            r#"{"OverrideMeshGateway": {"Mode": "sideways"}}"#,
            "Invalid OverrideMeshGateway.Mode parameter",
        ),
        (
            r#"{"OverrideConnectTimeout": "later"}"#,
            "Request decoding failed: time: invalid duration \"later\"",
        ),
    ] {
        let answer = post(body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.text(), message, "{body}");
    }
    let nameless = agent.get("/v1/discovery-chain/").await;
    assert_eq!(
        (nameless.status, nameless.text().as_str()),
        (StatusCode::BAD_REQUEST, "Missing chain name")
    );
    let elsewhere = agent.get("/v1/discovery-chain/web?dc=dc9").await;
    assert_eq!(elsewhere.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(elsewhere.text(), "No path to datacenter");
    let put = agent.put("/v1/discovery-chain/web", json!({})).await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(put.header("allow"), Some("GET, POST"));
}

#[tokio::test]
async fn a_blocked_chain_read_wakes_on_its_entries_only() {
    let agent = Agent::start().await;
    canary(&agent).await;
    let first = agent.get("/v1/discovery-chain/web").await;
    let index = first.index();

    // A write to an entry the chain does not read moves the index but wakes nobody.
    let path = format!("/v1/discovery-chain/web?index={index}&wait=1s");
    let blocked = agent.get(&path);
    let unrelated = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        write(&agent, json!({"Kind": "service-resolver", "Name": "other"})).await;
    };
    let started = Instant::now();
    let (answer, ()) = tokio::join!(blocked, unrelated);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        answer.index() > index,
        "the answer carries the table's new index"
    );

    // A write to the resolver the chain reads wakes it at once.
    let index = answer.index();
    let path = format!("/v1/discovery-chain/web?index={index}&wait=30s");
    let blocked = agent.get(&path);
    let relevant = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        write(
            &agent,
            json!({"Kind": "service-resolver", "Name": "web", "ConnectTimeout": "4s", "Subsets": {
                "v1": {"Filter": "Service.Meta.version == v1"}, "v2": {}}}),
        )
        .await;
    };
    let started = Instant::now();
    let (woken, ()) = tokio::join!(blocked, relevant);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(woken.index() > index);
    let chain = woken.json::<DiscoveryChainResponse>().chain;
    let v1 = &chain.targets["v1.web.default.default.dc1"];
    assert_eq!(v1.connect_timeout.to_string(), "4s");
}

#[tokio::test]
async fn subset_filters_select_instances_on_the_health_endpoints() {
    let agent = Agent::start().await;
    for (id, version) in [("web-1", "v1"), ("web-2", "v2")] {
        agent
            .register(json!({"ID": id, "Name": "web", "Port": 8080,
                "Meta": {"version": version}, "Tags": [version],
                "Connect": {"SidecarService": {}}}))
            .await;
    }
    for (endpoint, filter, want) in [
        (
            "connect",
            "Service.Meta.version == v1",
            vec!["web-1-sidecar-proxy"],
        ),
        (
            "connect",
            r#""v2" in Service.Tags"#,
            vec!["web-2-sidecar-proxy"],
        ),
        (
            "service",
            "Service.ID == web-2 or Service.ID == web-1",
            vec!["web-1", "web-2"],
        ),
        (
            "service",
            "not Service.Meta.version == v1 and Node.Node is not empty",
            vec!["web-2"],
        ),
    ] {
        let path = format!("/v1/health/{endpoint}/web?filter={}", q(filter));
        let answer = agent.get(&path).await;
        assert_eq!(answer.status, StatusCode::OK, "{filter}: {}", answer.text());
        let ids: Vec<String> = answer
            .value()
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["Service"]["ID"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(ids, want, "{filter}");
    }
    let typo = agent
        .get(&format!(
            "/v1/health/connect/web?filter={}",
            q("Service.Metas.v == x")
        ))
        .await;
    assert_eq!(typo.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        typo.text(),
        "Failed to create boolean expression evaluator: Selector \"Service.Metas.v\" is not valid"
    );
}

#[tokio::test]
async fn chain_entries_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = DevAgentConfig {
        data_dir: Some(dir.path().to_owned()),
        ..DevAgentConfig::default()
    };
    let first = Agent::with(config.clone()).await;
    canary(&first).await;
    let before = first.get("/v1/discovery-chain/web").await;
    let before = before.json::<DiscoveryChainResponse>().chain;
    let addr = first.agent.addr();
    first.agent.shutdown().await.unwrap();

    let second = Agent::with(DevAgentConfig { addr, ..config }).await;
    let after = second.get("/v1/discovery-chain/web").await;
    assert_eq!(after.json::<DiscoveryChainResponse>().chain, before);
}
