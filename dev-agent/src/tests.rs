//! The dev agent seen from outside: a hyper client against an agent bound on
//! 127.0.0.1:0, asserting what a Consul client would observe.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};
use x509_parser::extensions::GeneralName;

use super::{DevAgent, DevAgentConfig};
use ferrule_control::api::agent::AgentService;
use ferrule_control::api::agent_self::AgentSelf;
use ferrule_control::api::ca::{IndexedCARoots, IssuedCert};
use ferrule_control::api::health::ServiceEntry;
use ferrule_control::api::intentions::{IntentionMatchResponse, ServiceIntentionsEntry};
use ferrule_control::intentions::Action;

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }

    fn value(&self) -> Value {
        self.json()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn index(&self) -> u64 {
        self.header("x-consul-index").unwrap().parse().unwrap()
    }
}

struct Agent {
    agent: DevAgent,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Agent {
    async fn start() -> Agent {
        Agent::with(DevAgentConfig::default()).await
    }

    async fn with(config: DevAgentConfig) -> Agent {
        let default_addr = DevAgentConfig::default().addr;
        let config = DevAgentConfig {
            // A free port unless the test asks for one (to restart on the same port).
            addr: if config.addr == default_addr {
                SocketAddr::from(([127, 0, 0, 1], 0))
            } else {
                config.addr
            },
            check_interval: Duration::from_millis(100),
            ..config
        };
        let agent = DevAgent::start(config).await.unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http();
        Agent { agent, client }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.call_with(method, path, body, &[]).await
    }

    async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.agent.url()));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self
            .client
            .request(request.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    async fn put(&self, path: &str, body: Value) -> Answer {
        self.call(Method::PUT, path, Some(body)).await
    }

    async fn register(&self, body: Value) {
        let answer = self.put("/v1/agent/service/register", body).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    }
}

fn certs(pem_text: &str) -> Vec<CertificateDer<'static>> {
    ferrule_control::model::parse_certificates(pem_text.as_bytes()).unwrap()
}

fn verify(chain: &[CertificateDer<'static>], root_pem: &str) -> Result<(), webpki::Error> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let root = certs(root_pem).remove(0);
    let anchors = [anchor_from_trusted_cert(&root).unwrap()];
    let leaf = EndEntityCert::try_from(&chain[0]).unwrap();
    for usage in [KeyUsage::client_auth(), KeyUsage::server_auth()] {
        leaf.verify_for_usage(
            provider.signature_verification_algorithms.all,
            &anchors,
            &chain[1..],
            UnixTime::now(),
            usage,
            None,
            None,
        )?;
    }
    Ok(())
}

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
        let rotated = agent
            .put(
                "/v1/connect/ca/configuration",
                json!({ "Provider": "consul", "Config": {} }),
            )
            .await;
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

#[tokio::test]
async fn leaves_have_consuls_profile_and_blocking_readers_get_the_renewal() {
    let agent = Agent::with(DevAgentConfig {
        leaf_ttl: Duration::from_secs(3),
        ..DevAgentConfig::default()
    })
    .await;
    let answer = agent.get("/v1/agent/connect/ca/leaf/web").await;
    assert_eq!(answer.status, StatusCode::OK);
    let leaf: IssuedCert = answer.json();
    assert_eq!(answer.index(), leaf.modify_index);
    let td = agent.agent.trust_domain().to_owned();
    let uri = format!("spiffe://{td}/ns/default/dc/dc1/svc/web");
    assert_eq!(leaf.service_uri, uri);
    assert_eq!(leaf.service, "web");
    assert!(
        leaf.private_key_pem
            .starts_with("-----BEGIN EC PRIVATE KEY-----")
    );
    assert!(
        answer.value().get("Namespace").is_none(),
        "CE has no Namespace"
    );

    let chain = certs(&leaf.cert_pem);
    assert_eq!(chain.len(), 1, "no intermediates before any rotation");
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    assert_eq!(cert.subject().iter().count(), 0, "empty subject");
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical);
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => *u,
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect();
    assert_eq!(uris, [uri.as_str()]);
    assert_eq!(leaf.serial_number, cert.raw_serial_as_string());

    // A non-blocking read of a fresh leaf gets the same one.
    let again: IssuedCert = agent.get("/v1/agent/connect/ca/leaf/web").await.json();
    assert_eq!(again.serial_number, leaf.serial_number);

    // Renewed between 60 % and 90 % of the 3 s lifetime.
    let started = Instant::now();
    let renewed = agent
        .get(&format!(
            "/v1/agent/connect/ca/leaf/web?index={}&wait=20s",
            leaf.modify_index
        ))
        .await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    let new: IssuedCert = renewed.json();
    assert_ne!(new.serial_number, leaf.serial_number);
    assert!(renewed.index() > leaf.modify_index);
    assert_eq!(renewed.index(), new.modify_index);
}

#[tokio::test]
async fn a_root_rotation_is_cross_signed_and_both_roots_are_published() {
    let agent = Agent::start().await;
    let before: IndexedCARoots = agent.get("/v1/agent/connect/ca/roots").await.json();
    assert_eq!(before.roots.len(), 1);
    assert_eq!(before.trust_domain, agent.agent.trust_domain());
    let old_root = before.roots[0].clone();
    assert!(old_root.active && old_root.intermediate_certs.is_empty());
    assert_eq!(old_root.id, before.active_root_id);
    assert_eq!(old_root.name, "Consul CA Primary Cert");
    let old_leaf: IssuedCert = agent.get("/v1/agent/connect/ca/leaf/web").await.json();

    let rotated = agent
        .put(
            "/v1/connect/ca/configuration",
            json!({ "Provider": "consul", "Config": { "LeafCertTTL": "72h" } }),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text());

    let after: IndexedCARoots = agent.get("/v1/agent/connect/ca/roots").await.json();
    assert_eq!(after.roots.len(), 2, "both roots during the overlap");
    assert_eq!(after.trust_domain, before.trust_domain);
    let new_root = after.roots.iter().find(|r| r.active).unwrap();
    let kept = after.roots.iter().find(|r| !r.active).unwrap();
    assert_eq!(kept.id, old_root.id);
    assert_eq!(after.active_root_id, new_root.id);
    assert_ne!(new_root.id, old_root.id);
    assert_eq!(
        new_root.external_trust_domain,
        old_root.external_trust_domain
    );
    assert_eq!(new_root.intermediate_certs.len(), 1);

    let leaf: IssuedCert = agent.get("/v1/agent/connect/ca/leaf/web").await.json();
    assert_ne!(leaf.serial_number, old_leaf.serial_number, "re-issued");
    assert!(leaf.modify_index > old_leaf.modify_index);
    let chain = certs(&leaf.cert_pem);
    assert_eq!(chain.len(), 2, "leaf + cross-signed intermediate");
    assert_eq!(
        certs(&new_root.intermediate_certs[0])[0],
        chain[1],
        "the intermediate is the one the roots list"
    );
    verify(&chain, &new_root.root_cert).expect("verifies against the new root");
    verify(&chain, &old_root.root_cert).expect("verifies against the old root");
    assert!(
        verify(&chain[..1], &old_root.root_cert).is_err(),
        "only through the cross-signed certificate"
    );

    let config = agent.get("/v1/connect/ca/configuration").await.value();
    assert_eq!(config["Provider"], "consul");
    assert_eq!(config["Config"]["LeafCertTTL"], "72h");
    assert_eq!(
        format!("{}.consul", config["ClusterID"].as_str().unwrap()),
        agent.agent.trust_domain()
    );
}

#[tokio::test]
async fn a_rotated_out_root_is_pruned_after_twice_the_leaf_ttl() {
    let agent = Agent::with(DevAgentConfig {
        leaf_ttl: Duration::from_secs(1),
        ..DevAgentConfig::default()
    })
    .await;
    let rotated = agent
        .put("/v1/connect/ca/configuration", json!({ "Config": {} }))
        .await;
    assert_eq!(rotated.status, StatusCode::OK);
    let during = agent.get("/v1/agent/connect/ca/roots").await;
    let roots: IndexedCARoots = during.json();
    assert_eq!(roots.roots.len(), 2);
    let started = Instant::now();
    let path = format!(
        "/v1/agent/connect/ca/roots?index={}&wait=10s",
        during.index()
    );
    let after = agent.get(&path).await;
    let waited = started.elapsed();
    let roots: IndexedCARoots = after.json();
    assert_eq!(roots.roots.len(), 1, "pruned after {waited:?}");
    assert!(roots.roots[0].active);
    assert!(waited > Duration::from_millis(1500) && waited < Duration::from_secs(4));
}

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

#[tokio::test]
async fn community_edition_refuses_enterprise_parameters_and_unknown_fields() {
    let agent = Agent::start().await;
    let ns = agent.get("/v1/agent/services?ns=default").await;
    assert_eq!(ns.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        ns.text(),
        "Invalid query parameter: \"ns\" - Namespaces are a Consul Enterprise feature"
    );
    let header = agent
        .call_with(
            Method::GET,
            "/v1/health/connect/web",
            None,
            &[("X-Consul-Partition", "default")],
        )
        .await;
    assert_eq!(header.status, StatusCode::BAD_REQUEST);
    assert!(
        header
            .text()
            .contains("Partitions are a Consul Enterprise feature")
    );

    let unknown = agent
        .put(
            "/v1/agent/service/register",
            json!({ "Name": "web", "Port": 1, "Frobnicate": true }),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        unknown.text(),
        "Request decode failed: json: unknown field \"Frobnicate\""
    );
    let namespaced = agent
        .put(
            "/v1/agent/service/register",
            json!({ "Name": "web", "Port": 1, "Namespace": "default" }),
        )
        .await;
    assert_eq!(namespaced.status, StatusCode::BAD_REQUEST);
    let authorize = agent
        .call(
            Method::POST,
            "/v1/agent/connect/authorize",
            Some(json!({ "Target": "db", "ClientCertURI": "x", "Namespace": "default" })),
        )
        .await;
    assert_eq!(authorize.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        authorize.text(),
        "Request decode failed: json: unknown field \"Namespace\""
    );
    let wrong_method = agent.call(Method::DELETE, "/v1/agent/services", None).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.header("allow"), Some("GET"));
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

async fn wait_for(
    snapshots: &mut tokio::sync::watch::Receiver<std::sync::Arc<ferrule_control::model::Snapshot>>,
    check: impl Fn(&ferrule_control::model::Snapshot) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if check(&snapshots.borrow_and_update()) {
                return;
            }
            snapshots.changed().await.unwrap();
        }
    })
    .await
    .expect("the snapshot never got there");
}

/// The other side of the contract: ferrule's own Consul client follows the dev agent to a
/// complete snapshot, and sees a root rotation.
#[tokio::test]
async fn the_consul_source_follows_the_dev_agent() {
    use std::sync::Arc;

    use ferrule_control::consul::{AgentClientConfig, ConsulConfig, ConsulSource, ProxySelector};
    use ferrule_control::identity::ServiceId;

    let agent = Agent::start().await;
    let db_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let db_port = db_listener.local_addr().unwrap().port();
    agent
        .register(json!({ "Name": "db", "Port": 5432,
                          "Connect": { "SidecarService": { "Port": db_port } } }))
        .await;
    agent
        .register(
            json!({ "Name": "web", "Port": 8080, "Connect": { "SidecarService": {
            "Proxy": { "Upstreams": [ { "DestinationName": "db", "LocalBindPort": 19191 } ] }
        } } }),
        )
        .await;
    let written = agent
        .put(
            "/v1/config",
            json!({ "Kind": "service-intentions", "Name": "web",
                    "Sources": [ { "Name": "api", "Action": "allow" } ] }),
        )
        .await;
    assert_eq!(written.status, StatusCode::OK);

    let mut config = ConsulConfig::new(
        AgentClientConfig::new(agent.agent.url().parse().unwrap()),
        ProxySelector::SidecarFor("web".to_owned()),
    );
    config.wait = Duration::from_secs(5);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut snapshots = ConsulSource::new(config, provider).unwrap().spawn();

    let td = agent.agent.trust_domain().to_owned();
    wait_for(&mut snapshots, |s| {
        s.is_complete() && s.upstreams.first().is_some_and(|u| !u.endpoints.is_empty())
    })
    .await;
    let snapshot = snapshots.borrow_and_update().clone();
    let leaf = snapshot.leaf.as_ref().unwrap();
    assert_eq!(leaf.id, ServiceId::new(&td, "default", "dc1", "web"));
    assert_eq!(snapshot.bundle.as_ref().unwrap().trust_domain, td);
    let upstream = &snapshot.upstreams[0];
    assert_eq!(upstream.name, "db");
    assert_eq!(upstream.endpoints[0].addr, format!("127.0.0.1:{db_port}"));
    assert_eq!(upstream.endpoints[0].identity.service, "db");
    assert_eq!(snapshot.inbound.as_ref().unwrap().bind.port(), 21000);

    let old_serial = leaf.serial.clone();
    let rotated = agent
        .put("/v1/connect/ca/configuration", json!({ "Config": {} }))
        .await;
    assert_eq!(rotated.status, StatusCode::OK);
    wait_for(&mut snapshots, |s| {
        s.bundle.as_ref().is_some_and(|b| b.roots.len() == 2)
            && s.leaf.as_ref().is_some_and(|l| l.serial != old_serial)
    })
    .await;
    drop(db_listener);
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
        "MeshGateway": { "Mode": "local" } });
    let refused = agent.put("/v1/config", extra).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.text().contains("MeshGateway"), "{}", refused.text());
    let bad_name = json!({ "Kind": "proxy-defaults", "Name": "mine" });
    assert_eq!(
        agent.put("/v1/config", bad_name).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

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
