//! The dev agent's `/v1/agent/connect/authorize` and the proxy's decision agree on every
//! L4 row of the intentions tables (`ferrule_control::intentions::cases`, the rows
//! `decide`'s own test reads): sameness groups, peers, wildcards, namespaces, default
//! actions, L7 intentions on a connection.
//!
//! Each row's config entries go through the agent's write path: `PUT /v1/config` when
//! the entry is one Consul CE accepts, else `store` (the validation, normalization and
//! storage behind that endpoint), since the CE API refuses Enterprise keys (namespaces,
//! partitions) before it gets there. The question goes through the HTTP API, and the
//! answer is compared with `decide` over the same entries as the proxy's file source
//! builds them: `Authorized` must be the proxy's `allowed` and `Reason` the proxy's
//! reason in Consul's words.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use ferrule_control::api::intentions::ServiceIntentionsEntry;
use ferrule_control::intentions::cases::{self, Case};
use ferrule_control::intentions::{Action, Reason, decide};

use super::store;
use crate::{DevAgent, DevAgentConfig};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What a proxy decides for the row, in the words the agent must use.
fn proxy_answer(case: &Case, trust_domain: &str, policy: Option<Action>) -> (bool, String) {
    let ixns = case
        .intentions()
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let d = decide(&ixns, &case.caller.peer(trust_domain), None);
    assert_eq!(
        d.allowed, case.want.allowed,
        "{}: the table itself",
        case.name
    );
    assert_eq!(
        d.reason.label(),
        case.want.reason,
        "{}: the table itself",
        case.name
    );
    let rule = d.matched.map(|i| ixns.rules()[i].to_string());
    let reason = match (d.reason, rule) {
        (Reason::MatchedL4 { .. }, Some(rule)) => format!("Matched L4 intention: {rule}"),
        (Reason::L7IntentionOnL4, Some(rule)) => format!("Matched L7 intention: {rule}"),
        (Reason::Default, None) if policy.is_some() => "Default intention policy".to_owned(),
        (Reason::Default, None) => "Default behavior configured by ACLs".to_owned(),
        other => panic!("{}: {other:?} is not a connection-level answer", case.name),
    };
    (d.allowed, reason)
}

async fn call(
    client: &HttpClient,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

/// Whether Consul CE (and so the dev agent's HTTP API) accepts this entry's keys.
fn is_ce(entry: &ServiceIntentionsEntry) -> bool {
    entry.namespace.is_empty()
        && entry.partition.is_empty()
        && entry
            .sources
            .iter()
            .all(|s| s.namespace.is_empty() && s.partition.is_empty())
}

/// A fresh agent holding exactly the row's intentions (and, for destinations with L7
/// permissions, the `service-defaults` that lets the agent accept them).
async fn agent_for(case: &Case, client: &HttpClient, policy: Option<Action>) -> DevAgent {
    let agent = DevAgent::start(DevAgentConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        default_intention_policy: policy,
        ..DevAgentConfig::default()
    })
    .await
    .unwrap();
    for entry in case
        .entries
        .iter()
        .filter(|e| e.sources.iter().any(|s| !s.permissions.is_empty()))
    {
        let defaults =
            json!({ "Kind": "service-defaults", "Name": entry.name, "Protocol": "http" });
        let (status, body) = call(client, agent.addr(), Method::PUT, "/v1/config", &defaults).await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", case.name);
    }
    for entry in &case.entries {
        if is_ce(entry) {
            let body = serde_json::to_value(entry).unwrap();
            let answer = call(client, agent.addr(), Method::PUT, "/v1/config", &body).await;
            assert_eq!(answer, (StatusCode::OK, json!(true)), "{}", case.name);
            continue;
        }
        let written = agent.shared.with(|state| store(state, entry.clone(), None));
        assert!(
            matches!(written, Ok(true)),
            "{}: {:?}",
            case.name,
            written.map_err(|e| e.message)
        );
    }
    let stored = agent.shared.with(|state| state.intentions.len());
    assert_eq!(
        stored,
        case.entries.len(),
        "{}: every entry kept",
        case.name
    );
    agent
}

#[tokio::test]
async fn authorize_agrees_with_the_proxy_on_every_row() {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let rows = cases::l4().unwrap();
    assert!(!rows.is_empty());
    for case in &rows {
        // The row's default as configured, and, where it is allow, ACLs off (no policy).
        let mut policies = vec![Some(case.default)];
        if case.default == Action::Allow {
            policies.push(None);
        }
        for policy in policies {
            let agent = agent_for(case, &client, policy).await;
            let trust_domain = agent.trust_domain().to_owned();
            let uri = case.caller.service_id(&trust_domain).to_uri();
            let body = json!({ "Target": case.destination, "ClientCertURI": uri, "ClientCertSerial": "01" });
            let (status, answer) = call(
                &client,
                agent.addr(),
                Method::POST,
                "/v1/agent/connect/authorize",
                &body,
            )
            .await;
            agent.shutdown().await.unwrap();
            if case.caller.outside_the_default_partition() {
                // Consul CE refuses to authorize a caller of another partition at all.
                assert_eq!(status, StatusCode::BAD_REQUEST, "{}: {answer}", case.name);
                continue;
            }
            assert_eq!(status, StatusCode::OK, "{}: {answer}", case.name);
            let (allowed, reason) = proxy_answer(case, &trust_domain, policy);
            assert_eq!(
                answer["Authorized"], allowed,
                "{} ({policy:?}): {answer}",
                case.name
            );
            assert_eq!(
                answer["Reason"],
                reason.as_str(),
                "{} ({policy:?})",
                case.name
            );
        }
    }
}
