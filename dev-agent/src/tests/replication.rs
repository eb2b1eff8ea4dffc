//! Config entries across datacenters: what the primary holds is replicated into the
//! secondary (waking its blocked readers), writes sent to the secondary land in the
//! primary, and chains compiled for another datacenter name its targets there.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::{Agent, eventually, two_datacenters};
use ferrule_control::api::chain::DiscoveryChainResponse;

async fn write(agent: &Agent, entry: Value) {
    let answer = agent.put("/v1/config", entry.clone()).await;
    assert_eq!(answer.status, StatusCode::OK, "{entry}: {}", answer.text());
    assert_eq!(answer.value(), json!(true));
}

/// The names of the intentions a `match` by destination lists for `name`.
async fn sources_of(agent: &Agent, name: &str) -> Vec<(String, String)> {
    let answer = agent
        .get(&format!(
            "/v1/connect/intentions/match?by=destination&name={name}"
        ))
        .await
        .value();
    answer[name]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|i| {
                    let field = |k: &str| i[k].as_str().unwrap_or_default().to_owned();
                    (field("SourceName"), field("Action"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_primarys_intentions_reach_the_secondary_and_wake_its_readers() {
    let (dc1, dc2) = two_datacenters().await;
    let before = dc2
        .get("/v1/connect/intentions/match?by=destination&name=api")
        .await;
    let index = before.index();
    let path =
        format!("/v1/connect/intentions/match?by=destination&name=api&index={index}&wait=20s");
    let blocked = dc2.get(&path);
    let started = Instant::now();
    let written = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        write(
            &dc1,
            json!({"Kind": "service-intentions", "Name": "api",
                   "Sources": [{"Name": "web", "Action": "deny"}]}),
        )
        .await;
    };
    let (woken, ()) = tokio::join!(blocked, written);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by the replication"
    );
    assert!(woken.index() > index);
    assert_eq!(woken.value()["api"][0]["SourceName"], "web");
    assert_eq!(woken.value()["api"][0]["Action"], "deny");

    // What authorizes in dc2 is dc1's intention, whatever the caller's datacenter.
    let td = dc1.agent.trust_domain().to_owned();
    let authorize = dc2
        .call(
            Method::POST,
            "/v1/agent/connect/authorize",
            Some(json!({"Target": "api",
                        "ClientCertURI": format!("spiffe://{td}/ns/default/dc/dc1/svc/web")})),
        )
        .await
        .value();
    assert_eq!(authorize["Authorized"], false);

    // A delete in dc1 leaves dc2 too.
    assert_eq!(
        dc1.call(Method::DELETE, "/v1/config/service-intentions/api", None)
            .await
            .status,
        StatusCode::OK
    );
    eventually(
        "dc2 drops the intention",
        Duration::from_secs(5),
        || async { sources_of(&dc2, "api").await.is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn writes_to_the_secondary_land_in_the_primary_and_come_back() {
    let (dc1, dc2) = two_datacenters().await;
    write(
        &dc2,
        json!({"Kind": "service-intentions", "Name": "db",
               "Sources": [{"Name": "api", "Action": "allow"}]}),
    )
    .await;
    let expected = vec![("api".to_owned(), "allow".to_owned())];
    assert_eq!(
        sources_of(&dc1, "db").await,
        expected,
        "written in the primary"
    );
    eventually(
        "replicated back into dc2",
        Duration::from_secs(5),
        || async { (sources_of(&dc2, "db").await == expected).then_some(()) },
    )
    .await;

    let exact = dc2
        .call(
            Method::PUT,
            "/v1/connect/intentions/exact?source=web&destination=db",
            Some(json!({"Action": "deny"})),
        )
        .await;
    assert_eq!(exact.status, StatusCode::OK, "{}", exact.text());
    assert_eq!(sources_of(&dc1, "db").await.len(), 2);

    write(
        &dc2,
        json!({"Kind": "service-defaults", "Name": "db", "Protocol": "http"}),
    )
    .await;
    assert_eq!(
        dc1.get("/v1/config/service-defaults/db").await.value()["Protocol"],
        "http"
    );
    let deleted = dc2
        .call(
            Method::DELETE,
            "/v1/config/service-defaults/db?dc=dc2",
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text());
    assert_eq!(
        dc1.get("/v1/config/service-defaults/db").await.status,
        StatusCode::NOT_FOUND
    );
    eventually("the delete reaches dc2", Duration::from_secs(5), || async {
        let read = dc2.get("/v1/config/service-defaults/db").await;
        (read.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    // A refused write is refused as the primary refuses it.
    let bad = dc2
        .put(
            "/v1/config",
            json!({"Kind": "service-defaults", "Name": "x", "Bogus": 1}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text());
}

fn target<'a>(chain: &'a Value, id: &str) -> &'a Value {
    &chain["Chain"]["Targets"][id]
}

#[tokio::test]
async fn chains_compiled_for_another_datacenter_and_failing_over_to_one() {
    let (dc1, dc2) = two_datacenters().await;
    let td = dc1.agent.trust_domain().to_owned();
    write(
        &dc1,
        json!({"Kind": "service-resolver", "Name": "api",
               "Failover": {"*": {"Datacenters": ["dc2"]}}}),
    )
    .await;
    write(
        &dc1,
        json!({"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "local"}}),
    )
    .await;
    let chain = dc1.get("/v1/discovery-chain/api").await.value();
    let failover =
        &chain["Chain"]["Nodes"]["resolver:api.default.default.dc1"]["Resolver"]["Failover"];
    assert_eq!(failover["Targets"], json!(["api.default.default.dc2"]));
    let remote = target(&chain, "api.default.default.dc2");
    assert_eq!(remote["Datacenter"], "dc2");
    assert_eq!(remote["SNI"], format!("api.default.dc2.internal.{td}"));
    assert_eq!(
        remote["MeshGateway"],
        json!({"Mode": "local"}),
        "proxy-defaults'"
    );

    write(
        &dc1,
        json!({"Kind": "service-defaults", "Name": "api", "MeshGateway": {"Mode": "remote"}}),
    )
    .await;
    let chain = dc1.get("/v1/discovery-chain/api").await.value();
    assert_eq!(
        target(&chain, "api.default.default.dc2")["MeshGateway"],
        json!({"Mode": "remote"}),
        "service-defaults' over proxy-defaults'"
    );
    let overridden = dc1
        .call(
            Method::POST,
            "/v1/discovery-chain/api",
            Some(json!({"OverrideMeshGateway": {"Mode": "none"}})),
        )
        .await
        .value();
    assert_eq!(
        target(&overridden, "api.default.default.dc2")["MeshGateway"],
        json!({"Mode": "none"}),
        "the request's override over both"
    );

    // Compiled for dc2, in dc1 and (from the replicated entries) in dc2: the start
    // target is in dc2, and its failover names dc2 itself, which is dropped.
    for agent in [&dc1, &dc2] {
        let answer = eventually("the entries are in dc2", Duration::from_secs(5), || async {
            let chain = agent
                .get("/v1/discovery-chain/api?compile-dc=dc2")
                .await
                .value();
            let remote = target(&chain, "api.default.default.dc2").clone();
            (remote["MeshGateway"] == json!({"Mode": "remote"})).then_some(chain)
        })
        .await;
        let chain: DiscoveryChainResponse = serde_json::from_value(answer).unwrap();
        let chain = chain.chain;
        assert_eq!(chain.datacenter, "dc2");
        let only = &chain.targets["api.default.default.dc2"];
        assert_eq!(only.sni, format!("api.default.dc2.internal.{td}"));
        assert_eq!(chain.targets.len(), 1);
    }
}
