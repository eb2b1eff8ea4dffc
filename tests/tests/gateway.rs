//! `ferrule gateway` as a Consul mesh gateway in one datacenter, with the real binary
//! and `ferrule dev`: a caller presenting web's leaf names `api` (or one of its
//! resolver's subsets) in SNI and reaches api's app through api's own sidecar, with
//! mutual TLS end to end (the caller checks api's SPIFFE ID, api's sidecar authorizes
//! web); what the gateway cannot route (an unknown name, no name, plaintext) is
//! closed and counted while good connections keep flowing; SIGTERM drains.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use ferrule_tests::agent::{AgentOptions, DevAgent, ServiceRegistration};
use ferrule_tests::backends::NamedTcp;
use ferrule_tests::clients::{CallerConn, TlsCaller};
use ferrule_tests::consul::ConsulSidecar;
use ferrule_tests::gateway::{FerruleGateway, MeshGatewayRegistration, SniCaller};
use ferrule_tests::metrics::Selector;
use ferrule_tests::names::{AUTHZ_DECISIONS, GATEWAY_CONNECTIONS, GATEWAY_ROUTED};
use ferrule_tests::wait::{closed_within, eventually};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const API: &str = "api";
const WEB: &str = "web";
/// Set-up steps (processes starting, first health checks) get this long.
const SETUP: Duration = Duration::from_secs(30);
/// What the gateway refuses is closed within this long.
const CLOSED_WITHIN: Duration = Duration::from_secs(5);

/// Asks the named backend behind `conn` who it is.
async fn who(conn: &mut CallerConn) -> anyhow::Result<String> {
    conn.send(b"who\n").await?;
    let mut reader = BufReader::new(conn.stream_mut());
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .context("no answer within 5 s")??;
    anyhow::ensure!(line.ends_with('\n'), "the connection closed: {line:?}");
    Ok(line.trim().to_owned())
}

/// The dev agent, two instances of api (subsets v1 and v2) with their sidecars, and a
/// mesh gateway with `ferrule gateway` serving it.
struct Mesh {
    agent: DevAgent,
    _apps: [NamedTcp; 2],
    api_sidecars: [ConsulSidecar; 2],
    registration: MeshGatewayRegistration,
    gateway: FerruleGateway,
    trust_domain: String,
}

impl Mesh {
    async fn start() -> Mesh {
        let agent = DevAgent::start(AgentOptions::default()).await;
        let apps = [NamedTcp::start("v1").await, NamedTcp::start("v2").await];
        let mut ports = Vec::new();
        for app in &apps {
            let api = ServiceRegistration::new(API, app.addr().port())
                .with_id(&format!("api-{}", app.name()))
                .with_meta("version", app.name());
            agent.register(&api).await;
            ports.push(api.sidecar_port);
        }
        agent.set_intentions(API, &[(WEB, "allow")]).await;
        let resolver = json!({"Kind": "service-resolver", "Name": API, "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"},
            "v2": {"Filter": "Service.Meta.version == v2"}}});
        agent
            .put("/v1/config", &resolver)
            .await
            .expect("write the resolver");
        let api_sidecars = [
            ConsulSidecar::start(&agent, "api-v1").await,
            ConsulSidecar::start(&agent, "api-v2").await,
        ];
        agent.wait_passing(API, &ports, SETUP).await;
        let registration = MeshGatewayRegistration::new("mesh-gateway");
        agent
            .put("/v1/agent/service/register", &registration.to_json())
            .await
            .expect("register the mesh gateway");
        let gateway = FerruleGateway::start(&agent.url(), &registration.id).await;
        let roots = agent
            .get_json("/v1/agent/connect/ca/roots")
            .await
            .expect("roots");
        let trust_domain = roots["TrustDomain"]
            .as_str()
            .expect("TrustDomain")
            .to_owned();
        Mesh {
            agent,
            _apps: apps,
            api_sidecars,
            registration,
            gateway,
            trust_domain,
        }
    }

    /// Consul's server name of api (or one of its subsets) in dc1.
    fn sni(&self, prefix: &str) -> String {
        format!("{prefix}.default.dc1.internal.{}", self.trust_domain)
    }

    /// A caller presenting web's current leaf from the agent, trusting the agent's roots
    /// and accepting only `service`'s SPIFFE ID in dc1.
    async fn caller(&self, service: &str) -> SniCaller {
        let leaf = self.agent.leaf(WEB).await.expect("web's leaf");
        let roots = self
            .agent
            .get_json("/v1/agent/connect/ca/roots")
            .await
            .expect("roots");
        let roots: Vec<String> = roots["Roots"]
            .as_array()
            .expect("Roots")
            .iter()
            .filter_map(|r| r["RootCert"].as_str().map(str::to_owned))
            .collect();
        let expected = format!(
            "spiffe://{}/ns/default/dc/dc1/svc/{service}",
            self.trust_domain
        );
        SniCaller::new(
            leaf["CertPEM"].as_str().expect("CertPEM"),
            leaf["PrivateKeyPEM"].as_str().expect("PrivateKeyPEM"),
            &roots,
            &expected,
        )
    }

    /// Which api instance a connection through `listener` naming `prefix` reaches.
    async fn reach(&self, listener: SocketAddr, prefix: &str) -> anyhow::Result<String> {
        let mut conn = self
            .caller(API)
            .await
            .connect(listener, &self.sni(prefix))
            .await?;
        who(&mut conn).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_gateway_routes_on_sni_with_mtls_end_to_end_and_closes_what_it_cannot_route() {
    let mesh = Mesh::start().await;
    let lan = mesh.registration.lan;
    let wan = mesh.registration.wan;
    eventually("a first connection through the gateway", SETUP, || {
        mesh.reach(lan, API)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));

    // A bare name takes turns over both instances; a subset's name reaches only its own.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(
            mesh.reach(lan, API)
                .await
                .expect("api through the LAN listener"),
        );
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["v1", "v2"]);
    for _ in 0..3 {
        assert_eq!(mesh.reach(lan, "v1.api").await.expect("v1"), "v1");
        assert_eq!(mesh.reach(wan, "v2.api").await.expect("v2 via WAN"), "v2");
    }
    // api's sidecar authorized web: the mTLS session ran from the caller to it.
    mesh.api_sidecars[0]
        .admin()
        .wait_for_metric(
            Selector {
                name: AUTHZ_DECISIONS,
                labels: &[("source", WEB), ("decision", "allow")],
            },
            |v| v >= 1.0,
            Duration::from_secs(5),
        )
        .await
        .expect("api's sidecar saw web");
    // The caller checks the SPIFFE ID: expecting web where api answers fails.
    let wrong = mesh.caller(WEB).await;
    let mismatch = wrong.connect(lan, &mesh.sni(API)).await;
    assert!(mismatch.is_err(), "a caller accepted api as web");

    let mut kept = mesh
        .caller(API)
        .await
        .connect(lan, &mesh.sni(API))
        .await
        .expect("a connection kept open");
    refusals_are_closed(&mesh).await;
    assert!(
        ["v1", "v2"].contains(&who(&mut kept).await.expect("the kept connection").as_str()),
        "the kept connection still reaches api"
    );
    assert_eq!(mesh.reach(lan, "v1.api").await.expect("a new one"), "v1");
    refusals_are_counted(&mesh).await;
    view_shows_the_mesh(&mesh).await;
    drains_on_sigterm(mesh, kept).await;
}

/// An unknown name, a name of another trust domain, no name, plaintext and garbage are
/// each closed by the gateway.
async fn refusals_are_closed(mesh: &Mesh) {
    let lan = mesh.registration.lan;
    let caller = mesh.caller(API).await;
    for name in [
        mesh.sni("web"),
        mesh.sni("v3.api"),
        "api.default.dc1.internal.other.consul".to_owned(),
    ] {
        let refused = caller.connect(lan, &name).await;
        assert!(refused.is_err(), "{name} got through");
    }
    let leaf = mesh.agent.leaf(WEB).await.expect("web's leaf");
    let no_sni = TlsCaller::from_pem(
        leaf["CertPEM"].as_str().expect("CertPEM"),
        leaf["PrivateKeyPEM"].as_str().expect("PrivateKeyPEM"),
    );
    // An IP address as the server name: rustls sends no SNI.
    assert!(
        no_sni.connect(lan).await.is_err(),
        "a hello without SNI got through"
    );
    let mut plain = TcpStream::connect(lan).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        .await
        .expect("write plaintext");
    closed_within(&mut plain, CLOSED_WITHIN)
        .await
        .expect("plaintext is closed");
}

async fn refusals_are_counted(mesh: &Mesh) {
    let admin = mesh.gateway.admin();
    for (result, at_least) in [("unknown_sni", 3.0), ("no_sni", 1.0), ("not_tls", 1.0)] {
        let labels = [("listener", "lan"), ("result", result)];
        admin
            .wait_for_metric(
                Selector {
                    name: GATEWAY_CONNECTIONS,
                    labels: &labels,
                },
                |v| v >= at_least,
                Duration::from_secs(5),
            )
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let metrics = admin.metrics().await.expect("metrics");
    let routed = metrics.get(GATEWAY_ROUTED, &[("datacenter", "dc1"), ("service", API)]);
    assert!(routed >= 12.0, "{}", metrics.show(GATEWAY_ROUTED));
    let wan_routed = metrics.get(
        GATEWAY_CONNECTIONS,
        &[("listener", "wan"), ("result", "routed")],
    );
    assert!(wan_routed >= 3.0, "{}", metrics.show(GATEWAY_CONNECTIONS));
}

/// `/config` shows the gateway's view: its listeners and api's instances and subsets.
async fn view_shows_the_mesh(mesh: &Mesh) {
    let config = mesh.gateway.admin().config().await.expect("/config");
    assert_eq!(config["datacenter"], "dc1", "{config:#}");
    assert_eq!(config["gateway"]["lan"], mesh.registration.lan.to_string());
    assert_eq!(config["gateway"]["wan"], mesh.registration.wan.to_string());
    let api = &config["services"]["api"];
    assert_eq!(
        api["instances"].as_array().map(Vec::len),
        Some(2),
        "{config:#}"
    );
    assert_eq!(api["subsets"]["v1"].as_array().map(Vec::len), Some(1));
    assert_eq!(config["remote"], json!({}), "one datacenter");
}

/// SIGTERM: `/ready` turns 503, the open connection keeps working until it ends, and
/// the process exits 0.
async fn drains_on_sigterm(mut mesh: Mesh, mut kept: CallerConn) {
    mesh.gateway.terminate();
    eventually("/ready says draining", Duration::from_secs(5), || async {
        let (status, body) = mesh.gateway.admin().ready().await?;
        anyhow::ensure!(
            status == 503 && body.contains("draining"),
            "{status} {body}"
        );
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let name = who(&mut kept)
        .await
        .expect("the open connection during the drain");
    assert!(["v1", "v2"].contains(&name.as_str()));
    drop(kept);
    let code = mesh.gateway.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code.ok(), Some(Some(0)), "{}", mesh.gateway.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_that_is_no_mesh_gateway_exits_2_and_a_missing_one_is_waited_for() {
    let agent = DevAgent::start(AgentOptions::default()).await;
    let api = ServiceRegistration::new(API, 1);
    agent.register(&api).await;
    let mut wrong = FerruleGateway::spawn(&agent.url(), &api.sidecar_id());
    let code = wrong.wait_exit(SETUP).await.expect("the gateway exits");
    let stderr = wrong.stderr();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("not a mesh gateway") && stderr.contains("connect-proxy"),
        "{stderr}"
    );

    let registration = MeshGatewayRegistration::new("late-gateway");
    let mut late = FerruleGateway::spawn(&agent.url(), &registration.id);
    eventually("/ready names the missing registration", SETUP, || async {
        let (status, body) = late.admin().ready().await?;
        anyhow::ensure!(
            status == 503 && body.contains("registration"),
            "{status} {body}"
        );
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    agent
        .put("/v1/agent/service/register", &registration.to_json())
        .await
        .expect("register the mesh gateway");
    late.wait_ready().await.unwrap_or_else(|e| panic!("{e:#}"));
}
