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

/// The service-defaults keys that reach a sidecar are stored and merged as Consul's
/// agent merges them: the registration first, then service-defaults, then
/// proxy-defaults; per upstream, its own config, then the override naming it, then
/// the downstream's upstream defaults.
#[tokio::test]
async fn service_defaults_fields_reach_the_sidecar_in_consuls_order() {
    let agent = Agent::start().await;
    agent
        .register(
            json!({ "Name": "web", "Port": 8080, "Connect": { "SidecarService": {
            "Proxy": { "Config": { "max_inbound_connections": 7 }, "Upstreams": [
                { "DestinationName": "api", "LocalBindPort": 9191 },
                { "DestinationName": "db", "LocalBindPort": 9192,
                  "Config": { "connect_timeout_ms": 1 } } ] }
        } } }),
        )
        .await;
    let proxy_defaults = json!({ "Kind": "proxy-defaults", "Name": "global",
        "Config": { "local_connect_timeout_ms": 9999, "protocol": "tcp" },
        "MeshGateway": { "Mode": "remote" } });
    assert_eq!(
        agent.put("/v1/config", proxy_defaults).await.status,
        StatusCode::OK
    );
    let web = json!({ "Kind": "service-defaults", "Name": "web", "Protocol": "http",
        "MeshGateway": { "Mode": "local" }, "LocalConnectTimeoutMs": 250,
        "LocalRequestTimeoutMs": 3000, "MaxInboundConnections": 100,
        "UpstreamConfig": {
            "Defaults": { "ConnectTimeoutMs": 4000, "Limits": { "MaxConnections": 10 } },
            "Overrides": [ { "Name": "api", "ConnectTimeoutMs": 1500, "Protocol": "http2" } ] } });
    let written = agent.put("/v1/config", web).await;
    assert_eq!(written.status, StatusCode::OK, "{}", written.text());

    let stored = agent.get("/v1/config/service-defaults/web").await.value();
    assert_eq!(stored["LocalConnectTimeoutMs"], 250);
    assert_eq!(stored["MaxInboundConnections"], 100);
    assert_eq!(stored["MeshGateway"], json!({ "Mode": "local" }));
    assert_eq!(stored["UpstreamConfig"]["Overrides"][0]["Name"], "api");

    let proxy = agent
        .get("/v1/agent/service/web-sidecar-proxy")
        .await
        .value()["Proxy"]
        .clone();
    assert_eq!(
        proxy["Config"],
        json!({ "protocol": "http", "local_connect_timeout_ms": 250,
                "local_request_timeout_ms": 3000, "max_inbound_connections": 7 }),
        "the registration's own value wins; service-defaults beat proxy-defaults"
    );
    assert_eq!(proxy["MeshGateway"], json!({ "Mode": "local" }));
    let api = &proxy["Upstreams"][0];
    assert_eq!(api["Config"]["connect_timeout_ms"], 1500, "the override");
    assert_eq!(api["Config"]["protocol"], "http2");
    assert_eq!(api["Config"]["limits"], json!({ "MaxConnections": 10 }));
    assert_eq!(api["MeshGateway"], json!({ "Mode": "local" }));
    let db = &proxy["Upstreams"][1];
    assert_eq!(
        db["Config"]["connect_timeout_ms"], 1,
        "the upstream's own value"
    );
    assert_eq!(db["Config"]["protocol"], "tcp", "proxy-defaults' protocol");

    let bad = json!({ "Kind": "service-defaults", "Name": "x", "MeshGateway": { "Mode": "far" } });
    assert_eq!(
        agent.put("/v1/config", bad).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

/// `?cas=` on writes and deletes of every kind: `false` and nothing changed when the
/// ModifyIndex differs, as Consul answers.
#[tokio::test]
async fn check_and_set_guards_config_entry_writes_and_deletes() {
    let agent = Agent::start().await;
    for (kind, name, body) in [
        (
            "service-defaults",
            "web",
            json!({ "Kind": "service-defaults", "Name": "web", "Protocol": "http" }),
        ),
        (
            "proxy-defaults",
            "global",
            json!({ "Kind": "proxy-defaults", "Name": "global", "Config": { "protocol": "http" } }),
        ),
        (
            "service-intentions",
            "web",
            json!({ "Kind": "service-intentions", "Name": "web",
            "Sources": [ { "Name": "api", "Action": "allow" } ] }),
        ),
    ] {
        let created = agent.put("/v1/config?cas=0", body.clone()).await;
        assert_eq!(created.text().trim(), "true", "{kind}: cas=0 creates");
        let again = agent.put("/v1/config?cas=0", body.clone()).await;
        assert_eq!(again.text().trim(), "false", "{kind}: cas=0 only creates");
        let path = format!("/v1/config/{kind}/{name}");
        let index = agent.get(&path).await.value()["ModifyIndex"]
            .as_u64()
            .unwrap();
        let stale = agent
            .put(&format!("/v1/config?cas={}", index + 100), body.clone())
            .await;
        assert_eq!(stale.text().trim(), "false", "{kind}: stale index");
        let stale_delete = agent
            .call(Method::DELETE, &format!("{path}?cas={}", index + 100), None)
            .await;
        assert_eq!(stale_delete.text().trim(), "false", "{kind}");
        assert_eq!(
            agent.get(&path).await.status,
            StatusCode::OK,
            "{kind}: still there"
        );
        let deleted = agent
            .call(Method::DELETE, &format!("{path}?cas={index}"), None)
            .await;
        assert_eq!(deleted.text().trim(), "true", "{kind}");
        assert_eq!(
            agent.get(&path).await.status,
            StatusCode::NOT_FOUND,
            "{kind}: gone"
        );
        let plain = agent.call(Method::DELETE, &path, None).await;
        assert_eq!(plain.text().trim(), "{}", "{kind}: without cas");
    }
}

#[tokio::test]
async fn proxy_defaults_keep_access_logs_and_refuse_what_consul_refuses() {
    let agent = Agent::start().await;
    let logs = json!({ "Enabled": true, "Type": "file", "Path": "/tmp/a.log",
                       "DisableListenerLogs": true, "JSONFormat": "{\"c\": \"%RESPONSE_CODE%\"}" });
    let entry = json!({ "Kind": "proxy-defaults", "Name": "global", "AccessLogs": logs });
    assert_eq!(agent.put("/v1/config", entry).await.status, StatusCode::OK);
    let read = agent.get("/v1/config/proxy-defaults/global").await;
    assert_eq!(read.value()["AccessLogs"], logs, "kept as written");
    // Consul does not merge AccessLogs into registrations; a proxy reads the entry.
    let listed = agent.get("/v1/config/proxy-defaults").await;
    assert_eq!(listed.value()[0]["AccessLogs"]["Type"], "file");

    for bad in [
        json!({ "Enabled": true, "JSONFormat": "{}", "TextFormat": "x" }),
        json!({ "Enabled": true, "Type": "file" }),
        json!({ "Enabled": true, "Type": "stdout", "Path": "/tmp/a.log" }),
        json!({ "Enabled": true, "Type": "syslog" }),
    ] {
        let entry = json!({ "Kind": "proxy-defaults", "Name": "global", "AccessLogs": bad });
        let answer = agent.put("/v1/config", entry).await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR, "{bad}");
    }
    let read = agent.get("/v1/config/proxy-defaults/global").await;
    assert_eq!(
        read.value()["AccessLogs"],
        logs,
        "refused writes change nothing"
    );
}

/// `envoy_prometheus_bind_addr` is one of the keys Consul passes through untouched:
/// from the registration's own `Proxy.Config`, or from proxy-defaults' `Config` when
/// the registration does not set it.
#[tokio::test]
async fn the_prometheus_bind_address_is_kept_in_proxy_config() {
    let agent = Agent::start().await;
    agent
        .register(
            json!({ "Name": "web", "Port": 8080, "Connect": { "SidecarService": {
            "Proxy": { "Config": { "envoy_prometheus_bind_addr": "127.0.0.1:9102" } } } } }),
        )
        .await;
    agent
        .register(json!({ "Name": "api", "Port": 8081, "Connect": { "SidecarService": {} } }))
        .await;
    let defaults = json!({ "Kind": "proxy-defaults", "Name": "global",
        "Config": { "envoy_prometheus_bind_addr": "0.0.0.0:9102" } });
    assert_eq!(
        agent.put("/v1/config", defaults).await.status,
        StatusCode::OK
    );
    for (id, want) in [
        ("web-sidecar-proxy", "127.0.0.1:9102"),
        ("api-sidecar-proxy", "0.0.0.0:9102"),
    ] {
        let proxy = agent.get(&format!("/v1/agent/service/{id}")).await.value()["Proxy"].clone();
        assert_eq!(
            proxy["Config"]["envoy_prometheus_bind_addr"], want,
            "{id}: {proxy}"
        );
    }
}

#[tokio::test]
async fn the_mesh_entry_is_stored_with_consuls_checks_and_wakes_its_watchers() {
    let agent = Agent::start().await;
    let empty = agent.get("/v1/config/mesh").await;
    assert_eq!(empty.value(), json!([]));
    assert_eq!(
        agent.get("/v1/config/mesh/mesh").await.status,
        StatusCode::NOT_FOUND
    );

    let path = format!("/v1/config/mesh?index={}&wait=10s", empty.index());
    let blocked = agent.get(&path);
    let write = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let entry = json!({ "Kind": "mesh", "HTTP": { "Incoming": { "RequestNormalization": {
            "MergeSlashes": true, "PathWithEscapedSlashesAction": "REJECT_REQUEST" } } } });
        assert_eq!(agent.put("/v1/config", entry).await.status, StatusCode::OK);
    };
    let (changed, ()) = tokio::join!(blocked, write);
    let listed = changed.value();
    assert_eq!(listed[0]["Kind"], "mesh");
    let normalization = &listed[0]["HTTP"]["Incoming"]["RequestNormalization"];
    assert_eq!(normalization["MergeSlashes"], true);
    assert_eq!(
        normalization["PathWithEscapedSlashesAction"],
        "REJECT_REQUEST"
    );
    assert_eq!(normalization["HeadersWithUnderscoresAction"], "");
    let one = agent.get("/v1/config/mesh/mesh").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.value()["HTTP"], listed[0]["HTTP"]);

    for (bad, says) in [
        (
            json!({ "Kind": "mesh", "HTTP": { "Incoming": { "RequestNormalization": {
                "HeadersWithUnderscoresAction": "drop" } } } }),
            "no matching HeadersWithUnderscoresAction value found for drop",
        ),
        (
            json!({ "Kind": "mesh", "HTTP": { "Incoming": { "RequestNormalization": {
                "PathWithEscapedSlashesAction": "DECODE" } } } }),
            "no matching PathWithEscapedSlashesAction value found for DECODE",
        ),
        (
            json!({ "Kind": "mesh", "Name": "other" }),
            "only \"mesh\" is supported",
        ),
        (
            json!({ "Kind": "mesh", "HTTP": { "SanitizeXForwardedClientCert": true } }),
            "SanitizeXForwardedClientCert",
        ),
    ] {
        let answer = agent.put("/v1/config", bad).await;
        assert_ne!(answer.status, StatusCode::OK);
        assert!(answer.text().contains(says), "{}", answer.text());
    }

    let deleted = agent
        .call(Method::DELETE, "/v1/config/mesh/mesh", None)
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(agent.get("/v1/config/mesh").await.value(), json!([]));
}
