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

/// The catalog reads in Consul's shapes, with `?filter=` and blocking.
#[tokio::test]
async fn the_catalog_answers_in_consuls_shapes() {
    let agent = Agent::start().await;
    agent
        .register(
            json!({ "Name": "web", "Port": 8080, "Tags": ["v1"], "Meta": { "env": "prod" },
            "Connect": { "SidecarService": {} } }),
        )
        .await;
    agent
        .register(json!({ "Name": "db", "Port": 5432, "Tags": ["primary"] }))
        .await;

    let services = agent.get("/v1/catalog/services").await;
    assert_eq!(services.status, StatusCode::OK);
    assert_eq!(
        services.value(),
        json!({ "consul": [], "db": ["primary"], "web": ["v1"], "web-sidecar-proxy": ["v1"] })
    );
    // The server's own `consul` service: in the catalog, not among the agent's services.
    let consul = agent.get("/v1/catalog/service/consul").await.value();
    assert_eq!(consul[0]["ServiceID"], "consul");
    assert_eq!(consul[0]["ServicePort"], 8300);
    assert!(consul[0]["ServiceMeta"]["version"].is_string());
    let health = agent.get("/v1/health/service/consul").await.value();
    assert_eq!(health[0]["Checks"][0]["CheckID"], "serfHealth");
    let local = agent.get("/v1/agent/services").await.value();
    assert!(local.get("consul").is_none(), "{local}");
    let filtered = agent
        .get("/v1/catalog/services?filter=ServiceMeta.env%20%3D%3D%20prod")
        .await;
    assert_eq!(
        filtered.value(),
        json!({ "web": ["v1"], "web-sidecar-proxy": ["v1"] })
    );

    let web = agent.get("/v1/catalog/service/web").await.value();
    let node = &web[0];
    for key in [
        "ID",
        "Node",
        "Address",
        "Datacenter",
        "TaggedAddresses",
        "NodeMeta",
        "ServiceKind",
        "ServiceID",
        "ServiceName",
        "ServiceTags",
        "ServiceAddress",
        "ServiceWeights",
        "ServiceMeta",
        "ServicePort",
        "ServiceEnableTagOverride",
        "ServiceProxy",
        "ServiceConnect",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(node.get(key).is_some(), "{key} in {node}");
    }
    assert_eq!(node["ServiceID"], "web");
    assert_eq!(node["ServicePort"], 8080);
    assert_eq!(node["Datacenter"], "dc1");
    let connect = agent.get("/v1/catalog/connect/web").await.value();
    assert_eq!(connect[0]["ServiceKind"], "connect-proxy");
    assert_eq!(connect[0]["ServiceProxy"]["DestinationServiceName"], "web");
    assert_eq!(
        agent.get("/v1/catalog/service/web?tag=v2").await.value(),
        json!([])
    );

    let nodes = agent.get("/v1/catalog/nodes").await.value();
    let name = nodes[0]["Node"].as_str().unwrap().to_owned();
    let one = agent.get(&format!("/v1/catalog/node/{name}")).await.value();
    assert_eq!(one["Node"]["Node"], name);
    let ids: Vec<&String> = one["Services"].as_object().unwrap().keys().collect();
    assert_eq!(ids, ["consul", "db", "web", "web-sidecar-proxy"]);
    assert_eq!(
        agent.get("/v1/catalog/node/nope").await.text().trim(),
        "null"
    );

    // A blocked read of the services is woken by a deregistration.
    let index = agent.get("/v1/catalog/services").await.index();
    let path = format!("/v1/catalog/services?index={index}&wait=10s");
    let blocked = agent.get(&path);
    let write = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let gone = agent
            .put("/v1/agent/service/deregister/db", json!({}))
            .await;
        assert_eq!(gone.status, StatusCode::OK);
    };
    let (after, ()) = tokio::join!(blocked, write);
    assert!(after.index() > index);
    assert!(after.value().get("db").is_none());

    let invalid = agent
        .get("/v1/catalog/services?filter=ServiceName%20%3D%3D")
        .await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    assert!(
        invalid
            .text()
            .starts_with("Failed to create boolean expression evaluator")
    );
}

/// `?filter=` on the agent's lists, the health view and intentions.
#[tokio::test]
async fn filters_apply_to_every_list() {
    let agent = Agent::start().await;
    agent
        .register(json!({ "Name": "web", "Port": 8080, "Connect": { "SidecarService": {} } }))
        .await;
    let q = |expr: &str| form_urlencoded::byte_serialize(expr.as_bytes()).collect::<String>();
    let proxies = agent
        .get(&format!(
            "/v1/agent/services?filter={}",
            q(r#"Kind == "connect-proxy""#)
        ))
        .await
        .value();
    let ids: Vec<&String> = proxies.as_object().unwrap().keys().collect();
    assert_eq!(ids, ["web-sidecar-proxy"]);
    let checks = agent
        .get(&format!(
            "/v1/agent/checks?filter={}",
            q(r#"ServiceID == "web""#)
        ))
        .await
        .value();
    assert!(
        checks.as_object().unwrap().is_empty(),
        "web has no checks: {checks}"
    );
    let health = agent
        .get(&format!(
            "/v1/health/connect/web?filter={}",
            q(r#"Service.Port == 21000"#)
        ))
        .await
        .value();
    assert_eq!(health.as_array().unwrap().len(), 1);
    let none = agent
        .get(&format!(
            "/v1/health/service/web?filter={}",
            q(r#""x" in Service.Tags"#)
        ))
        .await
        .value();
    assert_eq!(none, json!([]));
    let entry = json!({ "Kind": "service-intentions", "Name": "web",
        "Sources": [ { "Name": "api", "Action": "allow" }, { "Name": "bad", "Action": "deny" } ] });
    assert_eq!(agent.put("/v1/config", entry).await.status, StatusCode::OK);
    let denies = agent
        .get(&format!(
            "/v1/connect/intentions?filter={}",
            q(r#"Action == deny"#)
        ))
        .await
        .value();
    assert_eq!(denies.as_array().unwrap().len(), 1);
    assert_eq!(denies[0]["SourceName"], "bad");
    let invalid = agent
        .get(&format!("/v1/agent/services?filter={}", q("Kind =")))
        .await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
}

/// A filter naming a field its list's items do not have is a 400 naming the selector,
/// on every list Consul filters, even an empty one; the same selector on the list
/// whose items have it is taken.
#[tokio::test]
async fn unknown_selectors_are_refused_on_every_list() {
    let agent = Agent::start().await;
    let q = |expr: &str| form_urlencoded::byte_serialize(expr.as_bytes()).collect::<String>();
    for (path, good, bad) in [
        ("/v1/agent/services", "Service == web", "ServiceName == web"),
        (
            "/v1/agent/checks",
            "ServiceName == web",
            "Service.Name == web",
        ),
        (
            "/v1/catalog/services",
            "ServiceName == web",
            "Service == web",
        ),
        (
            "/v1/catalog/service/web",
            "ServiceMeta.v == x",
            "Service.Meta.v == x",
        ),
        (
            "/v1/catalog/connect/web",
            "ServiceProxy.Mode == x",
            "Proxy.Mode == x",
        ),
        (
            "/v1/catalog/nodes",
            "Meta.rack == r1",
            "NodeMeta.rack == r1",
        ),
        (
            "/v1/catalog/node/ferrule-dev",
            "Service == web",
            "ServiceName == web",
        ),
        (
            "/v1/health/service/web",
            "Service.Tags is empty",
            "ServiceTags is empty",
        ),
        (
            "/v1/health/connect/web",
            "Checks.Status == passing",
            "Check.Status == passing",
        ),
        (
            "/v1/connect/intentions",
            "SourceName == web",
            "Source == web",
        ),
        (
            "/v1/config/service-intentions",
            "Sources.Name == web",
            "Source == web",
        ),
        (
            "/v1/config/service-defaults",
            "Protocol == http",
            "Protocols == http",
        ),
        (
            "/v1/config/proxy-defaults",
            "Config.protocol == http",
            "Protocol == http",
        ),
        (
            "/v1/config/service-resolver",
            "DefaultSubset == v1",
            "Subset == v1",
        ),
        (
            "/v1/config/service-splitter",
            "Splits is empty",
            "Routes is empty",
        ),
        (
            "/v1/config/service-router",
            "Routes is empty",
            "Splits is empty",
        ),
    ] {
        let ok = agent.get(&format!("{path}?filter={}", q(good))).await;
        assert_eq!(ok.status, StatusCode::OK, "{path} {good}: {}", ok.text());
        let refused = agent.get(&format!("{path}?filter={}", q(bad))).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{path} {bad}");
        let selector = bad.split(' ').next().unwrap_or_default();
        assert_eq!(
            refused.text(),
            format!(
                "Failed to create boolean expression evaluator: Selector {selector:?} is not valid"
            ),
            "{path}"
        );
    }
}

/// The sidecar port range is the agent's to set (`--sidecar-min-port`/`-max-port`).
#[tokio::test]
async fn sidecar_ports_come_from_the_configured_range() {
    let agent = Agent::with(crate::DevAgentConfig {
        sidecar_ports: 30000..=30001,
        ..crate::DevAgentConfig::default()
    })
    .await;
    for (name, port) in [("a", 30000), ("b", 30001)] {
        agent
            .register(json!({ "Name": name, "Port": 1, "Connect": { "SidecarService": {} } }))
            .await;
        let sidecar = agent
            .get(&format!("/v1/agent/service/{name}-sidecar-proxy"))
            .await
            .value();
        assert_eq!(sidecar["Port"], port);
    }
    let full = agent
        .put(
            "/v1/agent/service/register",
            json!({ "Name": "c", "Port": 1, "Connect": { "SidecarService": {} } }),
        )
        .await;
    assert_eq!(
        full.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        full.text()
    );
}
