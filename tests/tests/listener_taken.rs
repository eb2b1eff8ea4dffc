//! A listener added after the first good state, onto a port something else holds, in
//! Consul mode: the sidecar keeps serving what it already serves, warns, names the
//! address in `/ready`, and binds the port once it is free, without a restart.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use ferrule_tests::agent::{AgentOptions, DevAgent, ServiceRegistration};
use ferrule_tests::backends::{GET_BODY, HttpEcho};
use ferrule_tests::clients::curl;
use ferrule_tests::consul::ConsulSidecar;
use ferrule_tests::wait::{eventually, free_port};

/// Processes starting and the first health check.
const SETUP: Duration = Duration::from_secs(30);
/// A registration change reaching the sidecar, and a bind retried (every 2 s).
const APPLIES_WITHIN: Duration = Duration::from_secs(15);

async fn call_succeeds(url: &str) -> anyhow::Result<()> {
    let response = curl(url, &["--max-time", "5"]).await?;
    anyhow::ensure!(
        response.is_ok() && response.body == GET_BODY.as_bytes(),
        "curl exit {:?}, HTTP {}: {}",
        response.exit_code,
        response.http_code,
        response.stderr.trim()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_added_on_a_taken_port_waits_for_it_and_the_rest_keeps_serving() {
    let agent = DevAgent::start(AgentOptions::default()).await;
    let backend = HttpEcho::start().await;
    let api = ServiceRegistration::new("api", backend.addr().port());
    let web = ServiceRegistration::new("web", free_port().port()).with_upstream("api");
    agent.register(&api).await;
    agent.register(&web).await;
    agent.set_intentions("api", &[("web", "allow")]).await;
    let _api_proxy = ConsulSidecar::start(&agent, &api.id).await;
    let web_proxy = ConsulSidecar::start(&agent, &web.id).await;
    agent.wait_passing("api", &[api.sidecar_port], SETUP).await;
    let url = format!("http://{}/", web.upstream_addr("api"));
    eventually("a first call through web's upstream", SETUP, || {
        call_succeeds(&url)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nweb:\n{}", web_proxy.stderr()));

    // web gains an upstream on a port something else holds.
    let holder = TcpListener::bind("127.0.0.1:0").expect("take a port");
    let taken = holder.local_addr().expect("its address");
    let mut grown = web.clone().with_upstream("db");
    if let Some(db) = grown.upstreams.iter_mut().find(|u| u.destination == "db") {
        db.local_bind_port = taken.port();
    }
    agent.register(&grown).await;

    let named = format!("cannot listen on {taken}");
    eventually("/ready names the taken port", APPLIES_WITHIN, || async {
        let (code, body) = web_proxy.admin().ready().await?;
        anyhow::ensure!(code == 503, "/ready is {code}: {body}");
        anyhow::ensure!(
            body.contains(&named),
            "/ready does not say {named:?}: {body}"
        );
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nweb:\n{}", web_proxy.stderr()));
    let stderr = web_proxy.stderr();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("WARN") && l.contains(&named)),
        "no warning naming {taken}:\n{stderr}"
    );
    // What it served before still works, and the process is still there.
    call_succeeds(&url)
        .await
        .unwrap_or_else(|e| panic!("the first upstream stopped serving: {e:#}"));

    drop(holder);
    eventually(
        "the freed port is bound and /ready is 200",
        APPLIES_WITHIN,
        || async {
            let (code, body) = web_proxy.admin().ready().await?;
            anyhow::ensure!(code == 200, "/ready is {code}: {body}");
            anyhow::ensure!(accepts(taken).await, "nothing listens on {taken} yet");
            Ok(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nweb:\n{}", web_proxy.stderr()));
    call_succeeds(&url)
        .await
        .unwrap_or_else(|e| panic!("the first upstream stopped serving: {e:#}"));
}

/// Whether something accepts TCP connections on `addr`.
async fn accepts(addr: SocketAddr) -> bool {
    let connect = tokio::net::TcpStream::connect(addr);
    matches!(
        tokio::time::timeout(Duration::from_secs(1), connect).await,
        Ok(Ok(_))
    )
}
