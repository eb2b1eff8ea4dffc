//! L7 in Consul mode, set up as with Consul: a `service-defaults` entry makes `api`
//! speak HTTP (the agent merges its protocol into api's sidecar and into web's
//! upstream), a `service-intentions` entry with `Permissions` decides each request, and
//! a change to that entry applies to the next request on connections already open.

use std::time::Duration;

use ferrule_tests::agent::{AgentOptions, DevAgent, ServiceRegistration};
use ferrule_tests::backends::HttpRecorder;
use ferrule_tests::clients::{KeepAlive, curl};
use ferrule_tests::consul::ConsulSidecar;
use ferrule_tests::wait::{eventually, free_port};
use serde_json::json;

const API: &str = "api";
const WEB: &str = "web";
const SETUP: Duration = Duration::from_secs(20);
const APPLIES_WITHIN: Duration = Duration::from_secs(2);

fn entry(denied_prefix: &str) -> serde_json::Value {
    json!({
        "Kind": "service-intentions",
        "Name": API,
        "Sources": [ { "Name": WEB, "Permissions": [
            { "Action": "deny", "HTTP": { "PathPrefix": denied_prefix } },
            { "Action": "allow", "HTTP": { "PathPrefix": "/" , "Methods": ["GET"] } }
        ] } ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_intentions_from_the_agent_apply_to_open_connections() {
    let agent = DevAgent::start(AgentOptions::default()).await;
    let backend = HttpRecorder::start().await;
    let api = ServiceRegistration::new(API, backend.addr().port());
    let web = ServiceRegistration::new(WEB, free_port().port()).with_upstream(API);
    agent.register(&api).await;
    agent.register(&web).await;
    // Consul refuses L7 intentions for a service that is not HTTP-like.
    let refused = agent.put("/v1/config", &entry("/admin")).await;
    assert!(refused.is_err(), "Permissions accepted for a tcp service");
    agent
        .put(
            "/v1/config",
            &json!({ "Kind": "service-defaults", "Name": API, "Protocol": "http" }),
        )
        .await
        .expect("make api an http service");
    agent
        .put("/v1/config", &entry("/admin"))
        .await
        .expect("write the L7 intentions");
    let api_proxy = ConsulSidecar::start(&agent, &api.id).await;
    let web_proxy = ConsulSidecar::start(&agent, &web.id).await;
    agent.wait_passing(API, &[api.sidecar_port], SETUP).await;
    let base = format!("http://{}", web.upstream_addr(API));
    eventually("a first request gets through", SETUP, || async {
        let got = curl(&format!("{base}/hello"), &[]).await?;
        anyhow::ensure!(got.http_code == 200, "{got:?}");
        Ok(())
    })
    .await
    .expect("web reaches api");

    let config = api_proxy.admin().config().await.expect("api's /config");
    assert_eq!(config["inbound"]["protocol"], "http", "{config}");
    let config = web_proxy.admin().config().await.expect("web's /config");
    assert_eq!(config["upstreams"][0]["protocol"], "http", "{config}");

    let before = backend.count();
    let got = curl(&format!("{base}/admin/x"), &[]).await.expect("curl");
    assert_eq!(
        (got.http_code, got.body.as_slice()),
        (403, &b"RBAC: access denied"[..])
    );
    assert_eq!(backend.count(), before, "a denied request reached the app");
    // No permission matches a POST: the agent's default decides, and with ACLs off
    // and no default_intention_policy that is allow (never a lower intention).
    let got = curl(&format!("{base}/hello"), &["-X", "POST"])
        .await
        .expect("curl");
    assert_eq!(got.http_code, 200, "{got:?}");
    assert_eq!(backend.count(), before + 1);

    // One open connection from the app; the entry changes at the agent; the very
    // connection sees the new rules.
    let mut open = KeepAlive::open(web.upstream_addr(API))
        .await
        .expect("open a keep-alive connection");
    assert_eq!(open.get("/hello").await.expect("GET").0, 200);
    agent
        .put("/v1/config", &entry("/hello"))
        .await
        .expect("change the L7 intentions");
    let deadline = tokio::time::Instant::now() + APPLIES_WITHIN;
    loop {
        let (status, body) = open
            .get("/hello")
            .await
            .expect("GET on the open connection");
        if status == 403 {
            assert_eq!(body, b"RBAC: access denied");
            break;
        }
        assert_eq!(status, 200);
        assert!(
            tokio::time::Instant::now() < deadline,
            "still allowed {APPLIES_WITHIN:?} after the change"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open.get("/admin/x").await.expect("GET").0, 200);
    drop(web_proxy);
    drop(api_proxy);
}
