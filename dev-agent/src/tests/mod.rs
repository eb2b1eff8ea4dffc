//! The dev agent seen from outside: a hyper client against an agent bound on
//! 127.0.0.1:0, asserting what a Consul client would observe. This module holds the
//! client ([`Agent`], [`Answer`]) and certificate helpers; the tests are grouped by the
//! part of the agent they exercise, one file per module of the agent (`blocking`,
//! `chain`, `checks`, `connect_ca`, `defaults`, `gateway`, `intentions`, `persist`,
//! `query`, `services`), plus `agent_api` for Consul's HTTP conventions,
//! `consul_source` for ferrule's own client against it, and `wan` and `replication`
//! for two agents in two datacenters (dc2 on 127.0.0.2).

mod agent_api;
mod blocking;
mod chain;
mod checks;
mod connect_ca;
mod consul_source;
mod defaults;
mod gateway;
mod intentions;
mod persist;
mod query;
mod replication;
mod services;
mod wan;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::Value;
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};

use super::{DevAgent, DevAgentConfig};

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

    /// Rotates the CA to a new root, as a real rotation does: with new key material.
    async fn rotate_ca(&self) -> Answer {
        let body = crate::ca_rotation_body(self.agent.trust_domain()).unwrap();
        self.put("/v1/connect/ca/configuration", body).await
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

/// Two agents: dc1, the primary, on 127.0.0.1, and dc2 on 127.0.0.2 joined to it,
/// returned once dc2's CA is signed by dc1's root and dc1 knows dc2.
async fn two_datacenters() -> (Agent, Agent) {
    let dc1 = Agent::start().await;
    let dc2 = Agent::with(DevAgentConfig {
        addr: SocketAddr::from(([127, 0, 0, 2], 0)),
        datacenter: "dc2".into(),
        primary_datacenter: Some("dc1".into()),
        join_wan: Some(dc1.agent.addr()),
        ..DevAgentConfig::default()
    })
    .await;
    let td = dc1.agent.trust_domain().to_owned();
    eventually(
        "dc2 joined dc1 and follows its CA",
        Duration::from_secs(10),
        || async {
            let roots = dc2.get("/v1/agent/connect/ca/roots").await.value();
            let known = dc1.get("/v1/catalog/datacenters").await.value();
            (roots["TrustDomain"] == td.as_str() && known == serde_json::json!(["dc1", "dc2"]))
                .then_some(())
        },
    )
    .await;
    (dc1, dc2)
}

/// Polls `check` every 20 ms until it gives `Some`, for at most `within`.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
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
