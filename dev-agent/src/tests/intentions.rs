//! Intentions through the HTTP API: service-intentions config entries and their
//! normalization, the legacy exact endpoints, match order by precedence, authorize and
//! check, L7 intentions against the service's protocol, and the default policy.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::Agent;
use crate::DevAgentConfig;
use ferrule_control::api::agent_self::AgentSelf;
use ferrule_control::api::intentions::{IntentionMatchResponse, ServiceIntentionsEntry};
use ferrule_control::intentions::Action;

#[tokio::test]
async fn config_entries_are_normalized_like_consul() {
    let agent = Agent::start().await;
    let http = json!({ "Kind": "service-defaults", "Name": "api", "Protocol": "http" });
    assert_eq!(agent.put("/v1/config", http).await.status, StatusCode::OK);
    let written = agent
        .put(
            "/v1/config",
            json!({
                "Kind": "service-intentions", "Name": "api",
                "Sources": [
                    { "Name": "*", "Action": "deny" },
                    { "Name": "hackathon-project", "Action": "deny" },
                    { "Name": "nightly-reconciler", "Permissions": [
                        { "Action": "allow", "HTTP": { "PathExact": "/v1/reconcile-data",
                                                       "Methods": ["post", "Get"] } } ] }
                ]
            }),
        )
        .await;
    assert_eq!(written.status, StatusCode::OK, "{}", written.text());
    assert_eq!(written.text().trim(), "true");

    let answer = agent.get("/v1/config/service-intentions/api").await;
    let entry: ServiceIntentionsEntry = answer.json();
    let names: Vec<&str> = entry.sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["hackathon-project", "nightly-reconciler", "*"]);
    let precedences: Vec<i32> = entry.sources.iter().map(|s| s.precedence).collect();
    assert_eq!(precedences, [9, 9, 8]);
    assert!(entry.sources.iter().all(|s| s.source_type == "consul"));
    let methods = &entry.sources[1].permissions[0]
        .http
        .as_ref()
        .unwrap()
        .methods;
    assert_eq!(methods, &["POST", "GET"]);
    assert!(entry.create_index > 0 && entry.modify_index == answer.index());
    assert!(answer.value().get("Namespace").is_none());

    // An identical write changes nothing; `cas` guards replacement.
    let body = json!({ "Kind": "service-intentions", "Name": "api",
                       "Sources": [ { "Name": "web", "Action": "allow" } ] });
    let stale = agent.put("/v1/config?cas=1", body.clone()).await;
    assert_eq!(stale.text().trim(), "false");
    let cas = format!("/v1/config?cas={}", entry.modify_index);
    assert_eq!(agent.put(&cas, body).await.text().trim(), "true");

    let missing = agent.get("/v1/config/service-intentions/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.text(),
        "Config entry not found for \"service-intentions\" / \"nope\""
    );
    let list: Vec<ServiceIntentionsEntry> = agent.get("/v1/config/service-intentions").await.json();
    assert_eq!(list.len(), 1);

    let unknown = agent
        .put(
            "/v1/config",
            json!({ "Kind": "service-intentions", "Name": "x", "Bogus": 1,
                    "Sources": [ { "Name": "web", "Action": "allow" } ] }),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(
        unknown.text().contains("invalid config key \"Bogus\""),
        "{}",
        unknown.text()
    );
    let namespaced = agent
        .put(
            "/v1/config",
            json!({ "Kind": "service-intentions", "Name": "x", "Namespace": "default",
                    "Sources": [ { "Name": "web", "Action": "allow" } ] }),
        )
        .await;
    assert_eq!(namespaced.status, StatusCode::BAD_REQUEST);
    assert!(
        namespaced
            .text()
            .contains("namespaces are a consul enterprise feature")
    );
    let invalid = agent
        .put(
            "/v1/config",
            json!({ "Kind": "service-intentions", "Name": "x",
                    "Sources": [ { "Name": "web", "Action": "maybe" } ] }),
        )
        .await;
    assert_eq!(invalid.status, StatusCode::INTERNAL_SERVER_ERROR);

    let deleted = agent
        .call(Method::DELETE, "/v1/config/service-intentions/api", None)
        .await;
    assert_eq!(deleted.value(), json!({}));
    let gone = agent.get("/v1/config/service-intentions/api").await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn exact_put_upserts_into_the_destinations_entry() {
    let agent = Agent::start().await;
    let path = "/v1/connect/intentions/exact?source=web&destination=db";
    let put = agent
        .put(path, json!({ "Action": "allow", "Description": "front" }))
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text());
    assert_eq!(put.text().trim(), "true");
    agent
        .put(
            "/v1/connect/intentions/exact?source=batch&destination=db",
            json!({ "Action": "deny" }),
        )
        .await;
    // Updating a source replaces it in place.
    agent.put(path, json!({ "Action": "deny" })).await;

    let entry: ServiceIntentionsEntry = agent.get("/v1/config/service-intentions/db").await.json();
    let sources: Vec<(&str, &str)> = entry
        .sources
        .iter()
        .map(|s| (s.name.as_str(), s.action.as_str()))
        .collect();
    assert_eq!(sources, [("web", "deny"), ("batch", "deny")]);

    let exact = agent.get(path).await.value();
    assert_eq!(exact["SourceName"], "web");
    assert_eq!(exact["DestinationName"], "db");
    assert_eq!(exact["Action"], "deny");
    assert_eq!(exact["Precedence"], 9);
    assert_eq!(exact["SourceNS"], "default");
    assert!(exact.get("ID").is_none());

    let meta = agent
        .put(path, json!({ "Action": "allow", "Meta": { "a": "b" } }))
        .await;
    assert_eq!(meta.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(meta.text(), "Meta must not be specified");
    let unknown = agent
        .put(path, json!({ "Action": "allow", "Nope": 1 }))
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);

    let deleted = agent.call(Method::DELETE, path, None).await;
    assert_eq!(deleted.text().trim(), "true");
    assert_eq!(agent.get(path).await.status, StatusCode::NOT_FOUND);
    let check = agent
        .get("/v1/connect/intentions/check?source=batch&destination=db")
        .await;
    assert_eq!(check.value(), json!({ "Allowed": false }));
}

#[tokio::test]
async fn match_orders_by_precedence_including_wildcard_entries() {
    let agent = Agent::start().await;
    for body in [
        json!({ "Kind": "service-intentions", "Name": "*",
                "Sources": [ { "Name": "web", "Action": "deny" } ] }),
        json!({ "Kind": "service-intentions", "Name": "db",
                "Sources": [ { "Name": "*", "Action": "deny" },
                             { "Name": "web", "Action": "allow" } ] }),
        json!({ "Kind": "service-intentions", "Name": "cache",
                "Sources": [ { "Name": "api", "Action": "allow" } ] }),
    ] {
        let answer = agent.put("/v1/config", body).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    }
    let answer = agent
        .get("/v1/connect/intentions/match?by=destination&name=db&name=default/cache")
        .await;
    let body: IntentionMatchResponse = answer.json();
    let db: Vec<(String, String, i32)> = body["db"]
        .as_ref()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i.source_name.clone(),
                i.destination_name.clone(),
                i.precedence,
            )
        })
        .collect();
    assert_eq!(
        db,
        [
            ("web".to_owned(), "db".to_owned(), 9),
            ("*".to_owned(), "db".to_owned(), 8),
            ("web".to_owned(), "*".to_owned(), 6),
        ]
    );
    let cache: Vec<&str> = body["default/cache"]
        .as_ref()
        .unwrap()
        .iter()
        .map(|i| i.source_name.as_str())
        .collect();
    assert_eq!(
        cache,
        ["api", "web"],
        "keyed as sent; the `*` entry covers it"
    );

    let by_source: IntentionMatchResponse = agent
        .get("/v1/connect/intentions/match?by=source&name=web")
        .await
        .json();
    let web: Vec<(String, String)> = by_source["web"]
        .as_ref()
        .unwrap()
        .iter()
        .map(|i| (i.source_name.clone(), i.destination_name.clone()))
        .collect();
    assert_eq!(
        web,
        [
            ("web".to_owned(), "db".to_owned()),
            ("*".to_owned(), "db".to_owned()),
            ("web".to_owned(), "*".to_owned()),
        ]
    );

    let no_by = agent.get("/v1/connect/intentions/match?name=db").await;
    assert_eq!(no_by.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(no_by.text(), "required query parameter 'by' not set");
    let no_name = agent.get("/v1/connect/intentions/match?by=source").await;
    assert_eq!(no_name.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(no_name.text(), "required query parameter 'name' not set");

    let all: Vec<Value> = agent.get("/v1/connect/intentions").await.json();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0]["Precedence"], 9);

    // Authorize decides on the first match (L4).
    let td = agent.agent.trust_domain().to_owned();
    let authorize = |svc: &str| {
        json!({ "Target": "db", "ClientCertURI": format!("spiffe://{td}/ns/default/dc/dc1/svc/{svc}"),
                "ClientCertSerial": "01" })
    };
    let web = agent
        .call(
            Method::POST,
            "/v1/agent/connect/authorize",
            Some(authorize("web")),
        )
        .await
        .value();
    assert_eq!(web["Authorized"], true);
    assert_eq!(
        web["Reason"],
        "Matched L4 intention: default/web => default/db (Precedence: 9, Action: ALLOW)"
    );
    let other = agent
        .call(
            Method::POST,
            "/v1/agent/connect/authorize",
            Some(authorize("billing")),
        )
        .await
        .value();
    assert_eq!(other["Authorized"], false);
}

#[tokio::test]
async fn agent_self_reports_the_configured_default_intention_policy() {
    let agent = Agent::with(DevAgentConfig {
        default_intention_policy: Some(Action::Deny),
        datacenter: "east".to_owned(),
        ..DevAgentConfig::default()
    })
    .await;
    let me: AgentSelf = agent.get("/v1/agent/self").await.json();
    assert_eq!(me.config.datacenter, "east");
    assert_eq!(me.config.node_name, "ferrule-dev");
    assert_eq!(me.default_intention_policy(), Some("deny"));
    assert_eq!(me.acls_enabled(), Some(false));
    let dcs = agent.get("/v1/catalog/datacenters").await.value();
    assert_eq!(dcs, json!(["east"]));
    let leader = agent.get("/v1/status/leader").await;
    assert_eq!(leader.status, StatusCode::OK);

    let unset = Agent::start().await;
    let me: AgentSelf = unset.get("/v1/agent/self").await.json();
    assert_eq!(me.default_intention_policy(), None);
    let check = unset
        .get("/v1/connect/intentions/check?source=a&destination=b")
        .await;
    assert_eq!(check.value(), json!({ "Allowed": true }), "ACLs off: allow");
}

#[tokio::test]
async fn l7_intentions_need_an_http_like_protocol_as_consuls_servers_require() {
    let agent = Agent::start().await;
    let l7 = json!({ "Kind": "service-intentions", "Name": "api", "Sources": [
        { "Name": "web", "Permissions": [ { "Action": "allow", "HTTP": { "PathPrefix": "/" } } ] } ] });
    let refused = agent.put("/v1/config", l7.clone()).await;
    assert_eq!(refused.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        refused
            .text()
            .contains(r#"service "api" has protocol "tcp", which is incompatible with L7 intentions permissions"#),
        "{}",
        refused.text()
    );
    // proxy-defaults can make every service HTTP; then the entry is accepted.
    let global =
        json!({ "Kind": "proxy-defaults", "Name": "global", "Config": { "protocol": "http" } });
    assert_eq!(agent.put("/v1/config", global).await.status, StatusCode::OK);
    assert_eq!(agent.put("/v1/config", l7).await.status, StatusCode::OK);
    // A downgrade that would strand the L7 intention is refused, and changes nothing.
    let tcp = json!({ "Kind": "service-defaults", "Name": "api", "Protocol": "tcp" });
    let downgrade = agent.put("/v1/config", tcp).await;
    assert_eq!(
        downgrade.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        downgrade.text()
    );
    assert_eq!(
        agent.get("/v1/config/service-defaults/api").await.status,
        StatusCode::NOT_FOUND
    );
    let grpc = json!({ "Kind": "service-defaults", "Name": "api", "Protocol": "GRPC" });
    assert_eq!(agent.put("/v1/config", grpc).await.status, StatusCode::OK);
    let stored = agent.get("/v1/config/service-defaults/api").await.value();
    assert_eq!(stored["Protocol"], "grpc", "lower-cased: {stored}");
    assert!(stored["ModifyIndex"].as_u64().unwrap_or(0) > 0, "{stored}");
    // What the dev agent does not model is refused by name, not silently dropped.
    let extra = json!({ "Kind": "service-defaults", "Name": "db", "Protocol": "tcp",
        "Destination": { "Addresses": ["example.com"] } });
    let refused = agent.put("/v1/config", extra).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.text().contains("Destination"), "{}", refused.text());
    let bad_name = json!({ "Kind": "proxy-defaults", "Name": "mine" });
    assert_eq!(
        agent.put("/v1/config", bad_name).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}
