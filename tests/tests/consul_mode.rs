//! Consul mode end to end: a `ferrule dev` agent, `ferrule proxy --sidecar-for` for
//! `web` and `api`, curl calling `api` through web's upstream port. Every change is
//! made at the agent through its HTTP API, as an operator would make it against Consul.

use std::time::Duration;

use ferrule_tests::agent::{AgentOptions, DevAgent, ServiceRegistration};
use ferrule_tests::backends::{GET_BODY, HttpEcho};
use ferrule_tests::clients::{KeepAlive, TlsCaller, curl};
use ferrule_tests::consul::ConsulSidecar;
use ferrule_tests::faulty_agent::{Fault, FaultyAgent};
use ferrule_tests::metrics::Selector;
use ferrule_tests::names::{AUTHZ_DECISIONS, AUTHZ_TERMINATIONS, INBOUND};
use ferrule_tests::traffic::CurlLoop;
use ferrule_tests::wait::{eventually, free_port};
use tokio::time::Instant;

const API: &str = "api";
const WEB: &str = "web";
/// The contract: a change made at the agent applies within this long.
const APPLIES_WITHIN: Duration = Duration::from_secs(2);
/// Set-up steps (processes starting, first health check) get this long.
const SETUP: Duration = Duration::from_secs(20);

const LAST_UPDATE: &str = "ferrule_control_last_update_timestamp_seconds";

/// The agent, api's app and the two sidecars.
struct Mesh {
    agent: DevAgent,
    backend: HttpEcho,
    api: ServiceRegistration,
    web: ServiceRegistration,
    api_proxy: ConsulSidecar,
    web_proxy: ConsulSidecar,
    /// Between the sidecars and the agent, when the mesh was started with one.
    faults: Option<FaultyAgent>,
}

impl Mesh {
    /// Registers `api` (with its app) and `web` (with an upstream to `api`), allows
    /// web → api, starts both sidecars and waits until a call gets through.
    async fn start(options: AgentOptions) -> Mesh {
        Mesh::start_with(options, false).await
    }

    /// As [`Mesh::start`]; with `faulty`, the sidecars talk to the agent through a
    /// fault injector.
    async fn start_with(options: AgentOptions, faulty: bool) -> Mesh {
        let agent = DevAgent::start(options).await;
        let faults = if faulty {
            Some(FaultyAgent::start(agent.addr()).await)
        } else {
            None
        };
        let agent_url = faults
            .as_ref()
            .map_or_else(|| agent.url(), FaultyAgent::url);
        let backend = HttpEcho::start().await;
        let api = ServiceRegistration::new(API, backend.addr().port());
        let web = ServiceRegistration::new(WEB, free_port().port()).with_upstream(API);
        agent.register(&api).await;
        agent.register(&web).await;
        agent.set_intentions(API, &[(WEB, "allow")]).await;
        let api_proxy = ConsulSidecar::start_at(&agent_url, &api.id).await;
        let web_proxy = ConsulSidecar::start_at(&agent_url, &web.id).await;
        let mesh = Mesh {
            agent,
            backend,
            api,
            web,
            api_proxy,
            web_proxy,
            faults,
        };
        // web's sidecar learns of api's once the agent's health check has passed.
        mesh.agent
            .wait_passing(API, &[mesh.api.sidecar_port], SETUP)
            .await;
        eventually("a first call gets through the mesh", SETUP, || {
            mesh.call_succeeds()
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        mesh
    }

    /// web's upstream port for api, as a URL.
    fn url(&self) -> String {
        format!("http://{}/", self.web.upstream_addr(API))
    }

    async fn call_succeeds(&self) -> anyhow::Result<()> {
        let response = curl(&self.url(), &["--max-time", "5"]).await?;
        anyhow::ensure!(
            response.is_ok() && response.body == GET_BODY.as_bytes(),
            "curl exit {:?}, HTTP {}: {}",
            response.exit_code,
            response.http_code,
            response.stderr.trim()
        );
        Ok(())
    }

    async fn call_fails(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.call_succeeds().await.is_err(),
            "the call still succeeds"
        );
        Ok(())
    }

    /// A mesh caller presenting web's current leaf, fetched from the agent as a sidecar
    /// would fetch it.
    async fn caller_as_web(&self) -> TlsCaller {
        let leaf = self
            .agent
            .leaf(WEB)
            .await
            .expect("web's leaf from the agent");
        let cert = leaf["CertPEM"].as_str().expect("CertPEM");
        let key = leaf["PrivateKeyPEM"].as_str().expect("PrivateKeyPEM");
        TlsCaller::from_pem(cert, key)
    }

    /// Waits until a new handshake with api's sidecar presents the leaf the agent now
    /// hands out for api; returns that serial.
    async fn api_presents_the_agents_leaf(&self, within: Duration) -> anyhow::Result<String> {
        let caller = self.caller_as_web().await;
        eventually(
            "api's sidecar presents the agent's current leaf",
            within,
            || async {
                let expected = self.agent.leaf_serial(API).await?;
                let conn = caller.connect(self.api.sidecar_addr()).await?;
                let presented = conn.peer_serial()?;
                anyhow::ensure!(
                    presented == expected,
                    "presented {presented}, the agent's is {expected}"
                );
                Ok(presented)
            },
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denying_intention_closes_the_open_connection_and_refuses_new_ones() {
    let mesh = Mesh::start(AgentOptions::default()).await;
    // What applies when no intention matches is learned from the agent, and shown.
    let config = mesh.api_proxy.admin().config().await.expect("/config");
    assert_eq!(config["default_action"]["action"], "allow", "{config}");
    assert!(
        config["default_action"]["source"]
            .as_str()
            .is_some_and(|s| s.contains("agent")),
        "{config}"
    );
    // The agent's TCP health check connects and closes without a byte: a probe, not a
    // TLS error.
    let admin = mesh.api_proxy.admin();
    admin
        .wait_for_metric(
            Selector {
                name: INBOUND,
                labels: &[("result", "probe")],
            },
            |v| v >= 1.0,
            SETUP,
        )
        .await
        .expect("the agent's health checks are counted as probes");
    let tls_errors = admin
        .metric(INBOUND, &[("result", "tls_error")])
        .await
        .expect("scrape api's sidecar");
    assert_eq!(tls_errors, 0.0, "health checks counted as TLS errors");
    let mut live = KeepAlive::open(mesh.web.upstream_addr(API))
        .await
        .expect("open a keep-alive connection through web's upstream");
    let (status, body) = live.get("/").await.expect("a request on it");
    assert_eq!((status, body.as_slice()), (200, GET_BODY.as_bytes()));

    mesh.agent.set_intentions(API, &[(WEB, "deny")]).await;
    let changed = Instant::now();
    let deadline = changed + APPLIES_WITHIN;
    live.closed_within(deadline.saturating_duration_since(Instant::now()))
        .await
        .expect("the open connection from web is closed within 2 s of the change");
    eventually(
        "new calls are refused",
        deadline.saturating_duration_since(Instant::now()),
        || mesh.call_fails(),
    )
    .await
    .expect("new connections from web are refused within 2 s of the change");
    let reached = mesh.backend.requests();
    for _ in 0..5 {
        mesh.call_fails().await.expect("every new call is refused");
    }
    assert_eq!(
        mesh.backend.requests(),
        reached,
        "a denied call reached api's app"
    );
    let terminations = admin
        .metric(AUTHZ_TERMINATIONS, &[])
        .await
        .expect("scrape api's sidecar");
    assert!(
        terminations >= 1.0,
        "{AUTHZ_TERMINATIONS} is {terminations}"
    );
    let denials = admin
        .metric(AUTHZ_DECISIONS, &[("layer", "l4"), ("decision", "deny")])
        .await
        .expect("scrape api's sidecar");
    assert!(denials >= 5.0, "L4 denials counted: {denials}");

    mesh.agent.set_intentions(API, &[(WEB, "allow")]).await;
    eventually("calls flow again", APPLIES_WITHIN, || mesh.call_succeeds())
        .await
        .expect("allowed again within 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_rotation_under_steady_traffic_loses_no_request() {
    // Renewed at 60–90 % of the lifetime: a new leaf every 5–8 s.
    let mesh = Mesh::start(AgentOptions {
        leaf_ttl: "8s".to_owned(),
        ..AgentOptions::default()
    })
    .await;
    let first = mesh
        .api_presents_the_agents_leaf(APPLIES_WITHIN)
        .await
        .expect("api's sidecar serves the agent's leaf");
    let traffic = CurlLoop::start(mesh.url(), GET_BODY);
    traffic
        .wait_for_more(5, SETUP)
        .await
        .expect("traffic flows before the rotation");

    eventually(
        "the agent renews api's leaf",
        Duration::from_secs(15),
        || async {
            let now = mesh.agent.leaf_serial(API).await?;
            anyhow::ensure!(now != first, "still {first}");
            Ok(())
        },
    )
    .await
    .expect("the agent renews the leaf before it expires");
    let renewed = mesh
        .api_presents_the_agents_leaf(APPLIES_WITHIN)
        .await
        .expect("new handshakes present the renewed leaf within 2 s");
    assert_ne!(renewed, first);
    traffic
        .wait_for_more(5, SETUP)
        .await
        .expect("traffic flows after the rotation");

    traffic.stop().await.assert_none_failed("leaf rotation");
    // The 8 s leaf keeps renewing: compare within one poll, and poll until they agree.
    eventually(
        "web's sidecar follows its renewals too",
        APPLIES_WITHIN,
        || async {
            let presented = mesh.web_proxy.leaf_serial().await?;
            let issued = mesh.agent.leaf_serial(WEB).await?;
            anyhow::ensure!(
                presented == issued,
                "web serves {presented}, the agent issued {issued}"
            );
            Ok(())
        },
    )
    .await
    .expect("web's sidecar serves the agent's newest leaf");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_root_rotation_loses_no_request() {
    let mesh = Mesh::start(AgentOptions::default()).await;
    let old_root = mesh.agent.active_root_id().await.expect("the roots");
    let old_leaf = mesh
        .api_presents_the_agents_leaf(APPLIES_WITHIN)
        .await
        .expect("api's sidecar serves the agent's leaf");
    let traffic = CurlLoop::start(mesh.url(), GET_BODY);
    traffic
        .wait_for_more(5, SETUP)
        .await
        .expect("traffic flows before the rotation");

    mesh.agent.rotate_ca().await;
    let new_root = mesh.agent.active_root_id().await.expect("the roots");
    assert_ne!(new_root, old_root, "the agent has a new active root");
    let new_leaf = mesh
        .api_presents_the_agents_leaf(APPLIES_WITHIN)
        .await
        .expect("new handshakes present a leaf of the new root within 2 s");
    assert_ne!(new_leaf, old_leaf);
    eventually("web's sidecar has its new leaf", APPLIES_WITHIN, || async {
        let presented = mesh.web_proxy.leaf_serial().await?;
        let expected = mesh.agent.leaf_serial(WEB).await?;
        anyhow::ensure!(presented == expected, "{presented} vs {expected}");
        Ok(())
    })
    .await
    .expect("web's sidecar follows the rotation");
    traffic
        .wait_for_more(30, SETUP)
        .await
        .expect("traffic flows after the rotation");

    traffic.stop().await.assert_none_failed("CA root rotation");
}

/// The index of the intentions api's sidecar blocks on.
async fn intentions_index(agent: &DevAgent) -> u64 {
    agent
        .get("/v1/connect/intentions/match?by=destination&name=api")
        .await
        .expect("match api's intentions")
        .consul_index
        .expect("X-Consul-Index")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_killed_and_restarted_changes_nothing_for_traffic() {
    let mut mesh = Mesh::start(AgentOptions::default()).await;
    // Writes (to another destination's entry, so traffic is unaffected) move the
    // intentions index well past where a restarted agent begins: it replays only the
    // last version of each entry.
    for action in ["deny", "allow"].repeat(15) {
        mesh.agent.set_intentions("billing", &[(WEB, action)]).await;
    }
    let index_before = intentions_index(&mesh.agent).await;
    let traffic = CurlLoop::start(mesh.url(), GET_BODY);
    traffic
        .wait_for_more(5, SETUP)
        .await
        .expect("traffic flows before the agent dies");

    mesh.agent.kill();
    traffic
        .wait_for_more(20, SETUP)
        .await
        .expect("traffic flows while the agent is gone");
    for proxy in [&mesh.api_proxy, &mesh.web_proxy] {
        let (status, body) = proxy.admin().ready().await.expect("/ready");
        assert_eq!(status, 200, "/ready stays green without the agent: {body}");
    }

    let restarted = Instant::now();
    let restarted_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64();
    mesh.agent.restart().await;
    let index_after = intentions_index(&mesh.agent).await;
    assert!(
        index_after < index_before,
        "the restarted agent's indexes are lower ({index_after} < {index_before})"
    );

    // In sync again: every resource of both sidecars answered after the restart, and
    // the leaves the restarted agent issued are the ones in force.
    for proxy in [&mesh.api_proxy, &mesh.web_proxy] {
        proxy
            .admin()
            .wait_for_metric(
                Selector {
                    name: LAST_UPDATE,
                    labels: &[],
                },
                |_| true,
                Duration::from_secs(5),
            )
            .await
            .expect("the staleness metric is exported");
        eventually(
            "every watch has heard from the restarted agent",
            Duration::from_secs(30),
            || async {
                let metrics = proxy.admin().metrics().await?;
                let stale = metrics.samples_below(LAST_UPDATE, restarted_at);
                anyhow::ensure!(stale.is_empty(), "not yet updated: {stale:?}");
                Ok(())
            },
        )
        .await
        .expect("the sidecars resync within 30 s");
    }
    let resynced = restarted.elapsed();
    mesh.api_presents_the_agents_leaf(APPLIES_WITHIN)
        .await
        .expect("api's sidecar uses the leaf of the restarted agent");
    traffic
        .wait_for_more(10, SETUP)
        .await
        .expect("traffic flows after the restart");
    traffic
        .stop()
        .await
        .assert_none_failed("agent kill and restart");
    eprintln!("the sidecars resynced {resynced:?} after the agent restarted");

    // And they follow the new agent: a change made there applies.
    mesh.agent.set_intentions(API, &[(WEB, "deny")]).await;
    eventually("the restarted agent's deny applies", APPLIES_WITHIN, || {
        mesh.call_fails()
    })
    .await
    .expect("an intention written to the restarted agent applies within 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_added_and_removed_at_the_agent_get_and_lose_their_listeners() {
    let mesh = Mesh::start(AgentOptions::default()).await;
    let mut web = mesh.web.clone();
    let old = web.upstream_addr(API);

    // Moved: the same upstream on another port (remove one listener, add another).
    web.upstreams[0].local_bind_port = free_port().port();
    let moved = web.upstream_addr(API);
    let mut live = KeepAlive::open(old)
        .await
        .expect("a keep-alive connection through the old port");
    let (status, _) = live.get("/").await.expect("a request on it");
    assert_eq!(status, 200);
    mesh.agent.register(&web).await;
    let url = format!("http://{moved}/");
    eventually("the new upstream port serves", APPLIES_WITHIN, || async {
        let response = curl(&url, &["--max-time", "5"]).await?;
        anyhow::ensure!(response.is_ok(), "{response:?}");
        Ok(())
    })
    .await
    .expect("the added listener carries calls within 2 s");
    eventually(
        "the old upstream port is closed",
        APPLIES_WITHIN,
        || async {
            anyhow::ensure!(
                tokio::net::TcpStream::connect(old).await.is_err(),
                "{old} still accepts"
            );
            Ok(())
        },
    )
    .await
    .expect("the removed listener is closed within 2 s");
    let (status, body) = live
        .get("/")
        .await
        .expect("a connection through a removed upstream is not cut");
    assert_eq!((status, body.as_slice()), (200, GET_BODY.as_bytes()));

    // Removed for good: no upstreams at all.
    web.upstreams.clear();
    mesh.agent.register(&web).await;
    eventually("the upstream port is closed", APPLIES_WITHIN, || async {
        anyhow::ensure!(
            tokio::net::TcpStream::connect(moved).await.is_err(),
            "{moved} still accepts"
        );
        Ok(())
    })
    .await
    .expect("the removed listener is closed within 2 s");
    let (status, _) = live.get("/").await.expect("the old connection still works");
    assert_eq!(status, 200);
    let (ready, body) = mesh.web_proxy.admin().ready().await.expect("/ready");
    assert_eq!(ready, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deregistered_instance_stops_receiving_new_connections() {
    let mesh = Mesh::start(AgentOptions::default()).await;
    // A second instance of api, with its own app and sidecar.
    let backend2 = HttpEcho::start().await;
    let api2 = ServiceRegistration::new(API, backend2.addr().port()).with_id("api-2");
    mesh.agent.register(&api2).await;
    let _api2_proxy = ConsulSidecar::start(&mesh.agent, &api2.id).await;
    mesh.agent
        .wait_passing(API, &[mesh.api.sidecar_port, api2.sidecar_port], SETUP)
        .await;
    eventually("calls reach both instances", SETUP, || async {
        mesh.call_succeeds().await?;
        anyhow::ensure!(
            mesh.backend.requests() > 0 && backend2.requests() > 0,
            "api: {}, api-2: {}",
            mesh.backend.requests(),
            backend2.requests()
        );
        Ok(())
    })
    .await
    .expect("web's sidecar balances over both instances");

    mesh.agent.deregister(&api2.id).await;
    let deregistered = Instant::now();
    mesh.agent
        .wait_passing(API, &[mesh.api.sidecar_port], APPLIES_WITHIN)
        .await;
    // From when the agent answers without api-2: ten calls in a row all land on api.
    eventually(
        "new connections go to the remaining instance only",
        APPLIES_WITHIN,
        || async {
            let before = backend2.requests();
            for _ in 0..10 {
                mesh.call_succeeds().await?;
            }
            anyhow::ensure!(
                backend2.requests() == before,
                "api-2 still got {} of 10",
                backend2.requests() - before
            );
            Ok(())
        },
    )
    .await
    .expect("a deregistered instance gets no new connections within 2 s");
    eprintln!(
        "api-2 out of rotation {:?} after its deregistration",
        deregistered.elapsed()
    );
}

/// `ferrule_control_updates_total{result="error"}` per resource.
async fn control_errors(proxy: &ConsulSidecar) -> std::collections::BTreeMap<String, f64> {
    proxy
        .admin()
        .metrics()
        .await
        .expect("scrape a sidecar")
        .by_label(
            "ferrule_control_updates_total",
            &[("result", "error")],
            "resource",
        )
}

/// Seconds since the Unix epoch, as the staleness gauge reports time.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_errors_and_truncated_answers_cost_no_request() {
    let mesh = Mesh::start_with(AgentOptions::default(), true).await;
    let faults = mesh.faults.as_ref().expect("started with a fault injector");
    let traffic = CurlLoop::start(mesh.url(), GET_BODY);
    traffic
        .wait_for_more(5, SETUP)
        .await
        .expect("traffic flows before the faults");

    for fault in [Fault::ServerError, Fault::TruncatedJson] {
        let injected = faults.injected();
        let errors_before = [
            control_errors(&mesh.api_proxy).await,
            control_errors(&mesh.web_proxy).await,
        ];
        faults.set(fault);
        // Changes at the agent wake the blocked queries into the fault: intentions for
        // api (a source that does not matter to web), and a CA root rotation for the
        // roots and both leaves.
        mesh.agent
            .set_intentions(API, &[(WEB, "allow"), ("billing", "deny")])
            .await;
        mesh.agent.rotate_ca().await;
        eventually(
            "the sidecars' queries are answered with faults",
            SETUP,
            || async {
                anyhow::ensure!(
                    faults.injected() >= injected + 3,
                    "{} injected",
                    faults.injected()
                );
                Ok(())
            },
        )
        .await
        .expect("the fault reaches the sidecars");
        traffic
            .wait_for_more(20, SETUP)
            .await
            .expect("traffic flows while the agent answers badly");
        for proxy in [&mesh.api_proxy, &mesh.web_proxy] {
            let (status, body) = proxy.admin().ready().await.expect("/ready");
            assert_eq!(status, 200, "{fault:?}: /ready stays green: {body}");
        }

        // Recovery: every watch has a good answer again.
        let healed_at = unix_now();
        let healed = Instant::now();
        faults.set(Fault::None);
        mesh.agent.set_intentions(API, &[(WEB, "allow")]).await;
        let mut faulted = Vec::new();
        for (proxy, before) in [&mesh.api_proxy, &mesh.web_proxy]
            .into_iter()
            .zip(&errors_before)
        {
            // The watches that got a fault (others may still hold a good blocking call).
            let hit: Vec<String> = control_errors(proxy)
                .await
                .into_iter()
                .filter(|(resource, n)| before.get(resource).is_none_or(|b| n > b))
                .map(|(resource, _)| resource)
                .collect();
            eventually(
                "every faulted watch answered since the fault ended",
                Duration::from_secs(30),
                || async {
                    let metrics = proxy.admin().metrics().await?;
                    let stale: Vec<_> = metrics
                        .samples_below(LAST_UPDATE, healed_at)
                        .into_iter()
                        .filter(|labels| labels.get("resource").is_some_and(|r| hit.contains(r)))
                        .collect();
                    anyhow::ensure!(stale.is_empty(), "not yet updated: {stale:?}");
                    Ok(())
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: the sidecars resync within 30 s: {e:#}"));
            faulted.extend(hit);
        }
        assert!(
            faulted.iter().any(|r| r == "intentions") && faulted.iter().any(|r| r == "leaf"),
            "{fault:?}: the fault reached the intentions and leaf watches: {faulted:?}"
        );
        eprintln!(
            "{fault:?}: every watch in sync {:?} after the fault ended",
            healed.elapsed()
        );
        mesh.api_presents_the_agents_leaf(SETUP)
            .await
            .expect("the leaf issued during the fault is in force");
    }
    traffic.stop().await.assert_none_failed("agent faults");

    mesh.agent.set_intentions(API, &[(WEB, "deny")]).await;
    eventually("a deny applies after the faults", APPLIES_WITHIN, || {
        mesh.call_fails()
    })
    .await
    .expect("the sidecars follow the agent again");
}
