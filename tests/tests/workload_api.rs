//! Identity from the SPIFFE Workload API, end to end: `ferrule dev --workload-api-socket`
//! serves each sidecar's SVID on a unix socket, `ferrule proxy --workload-api … --config`
//! (or `--sidecar-for`) takes leaf, key and bundles from it, curl and a rustls caller go
//! through. A rotation pushed on the stream reaches new handshakes while open connections
//! carry on; a request without the security header is refused by the server; a peer of a
//! federated trust domain gets in only with its domain's bundle and an intention.

use std::time::Duration;

use ferrule_dev::workload::SECURITY_HEADER;
use ferrule_dev::workload::pb::X509svidRequest;
use ferrule_tests::agent::ServiceRegistration;
use ferrule_tests::backends::{GET_BODY, HttpEcho, TcpEcho};
use ferrule_tests::binary::ferrule_bin;
use ferrule_tests::clients::{KeepAlive, TlsCaller, curl};
use ferrule_tests::consul::ConsulSidecar;
use ferrule_tests::mesh::{intentions_json, svid};
use ferrule_tests::metrics::Selector;
use ferrule_tests::names::{CONTROL_UPDATES, INBOUND};
use ferrule_tests::sidecar::{Sidecar, SidecarConfig};
use ferrule_tests::wait::{eventually, free_port};
use ferrule_tests::workload::WorkloadAgent;
use ferrule_tests::{DevCa, LeafSpec};

const API: &str = "api";
const WEB: &str = "web";
/// A pushed change applies within this long.
const APPLIES_WITHIN: Duration = Duration::from_secs(5);
/// Processes starting, first health checks.
const SETUP: Duration = Duration::from_secs(20);

const TLS_ERRORS: Selector = Selector {
    name: INBOUND,
    labels: &[("result", "tls_error")],
};
const DENIED: Selector = Selector {
    name: INBOUND,
    labels: &[("result", "denied")],
};
const ACCEPTED: Selector = Selector {
    name: INBOUND,
    labels: &[("result", "accepted")],
};

async fn curl_ok(url: &str) -> anyhow::Result<()> {
    let answer = curl(url, &[]).await?;
    anyhow::ensure!(
        answer.is_ok() && answer.body == GET_BODY.as_bytes(),
        "curl {url}: exit {:?}, HTTP {}, {}",
        answer.exit_code,
        answer.http_code,
        answer.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_carry_traffic_and_a_pushed_rotation_reaches_new_handshakes_only() {
    let spire = WorkloadAgent::start(&[WEB, API], &[]).await;
    let backend = HttpEcho::start().await;
    let api = Sidecar::start(
        SidecarConfig::from_workload_api(API, &spire.endpoint(API))
            .inbound(backend.addr(), intentions_json(API, &[(WEB, "allow")])),
    )
    .await;
    let web = Sidecar::start(
        SidecarConfig::from_workload_api(WEB, &spire.endpoint(WEB))
            .upstream(API, &[api.inbound_addr()]),
    )
    .await;
    let url = format!("http://{}/", web.upstream_addr(API));
    curl_ok(&url)
        .await
        .expect("curl → web's sidecar → mTLS → api's sidecar → app");

    // api presents exactly the SVID the agent issued for it.
    let caller = TlsCaller::new(Some(&svid(&spire.ca(), WEB)));
    let first = spire.agent.leaf_serial(API).await.expect("api's leaf");
    let presented = caller
        .connect(api.inbound_addr())
        .await
        .expect("handshake")
        .peer_serial()
        .expect("serial");
    assert_eq!(presented, first);

    let mut open = KeepAlive::open(web.upstream_addr(API))
        .await
        .expect("an app connection through both sidecars");
    let (status, body) = open.get("/").await.expect("a request on it");
    assert_eq!((status, body.as_slice()), (200, GET_BODY.as_bytes()));

    // A new root: the agent re-issues every leaf and pushes it on the stream.
    spire.agent.rotate_ca().await;
    let rotated = spire.agent.leaf_serial(API).await.expect("api's new leaf");
    assert_ne!(rotated, first);
    eventually(
        &format!("api presents the pushed serial {rotated}"),
        APPLIES_WITHIN,
        || async {
            let serial = caller.connect(api.inbound_addr()).await?.peer_serial()?;
            anyhow::ensure!(serial == rotated, "api presents {serial}");
            Ok(())
        },
    )
    .await
    .expect("new handshakes use the pushed SVID");

    let (status, body) = open
        .get("/")
        .await
        .expect("the connection opened before the rotation keeps working");
    assert_eq!((status, body.as_slice()), (200, GET_BODY.as_bytes()));
    curl_ok(&url)
        .await
        .expect("new connections through both rotated sidecars");
    // Both SVIDs came as Workload API updates, counted as leaf updates.
    for sidecar in [&api, &web] {
        let updates = sidecar
            .metric(CONTROL_UPDATES, &[("resource", "leaf"), ("result", "ok")])
            .await
            .expect("metrics");
        assert!(
            updates >= 2.0,
            "{}: {updates} leaf updates",
            sidecar.service()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_the_security_header_is_refused() {
    let spire = WorkloadAgent::start(&[WEB], &[]).await;
    let mut client = spire.raw_client(WEB).await;
    let status = client
        .fetch_x509svid(tonic::Request::new(X509svidRequest {}))
        .await
        .expect_err("no header, no SVID");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");

    // The same request with the header gets web's SVID: the header was the difference.
    let mut request = tonic::Request::new(X509svidRequest {});
    request
        .metadata_mut()
        .insert(SECURITY_HEADER, "true".parse().expect("ascii"));
    let mut stream = client
        .fetch_x509svid(request)
        .await
        .expect("with the header")
        .into_inner();
    let first = tokio::time::timeout(APPLIES_WITHIN, stream.message())
        .await
        .expect("a first message")
        .expect("a good stream")
        .expect("one message");
    let want = format!(
        "spiffe://{}/ns/default/dc/dc1/svc/{WEB}",
        spire.trust_domain()
    );
    assert_eq!(first.svids[0].spiffe_id, want);
}

/// api's intentions: only `web` of the federated trust domain `peer` may call.
fn allow_peer(peer: &str) -> String {
    serde_json::json!({
        "Kind": "service-intentions",
        "Name": API,
        "Sources": [{ "Name": WEB, "Peer": peer, "Action": "allow" }],
    })
    .to_string()
}

/// An SVID of `service` whose URI names `td_of`'s trust domain, signed by `signer`.
fn claiming(signer: &DevCa, td_of: &DevCa, service: &str) -> ferrule_tests::IssuedLeaf {
    let spec = LeafSpec {
        uri_override: Some(format!(
            "spiffe://{}/ns/default/dc/dc1/svc/{service}",
            td_of.trust_domain()
        )),
        ..LeafSpec::service(service)
    };
    signer.issue(&spec).expect("issue a leaf")
}

async fn api_with_peer_intention(spire: &WorkloadAgent, peer: &DevCa) -> (TcpEcho, Sidecar) {
    let backend = TcpEcho::start().await;
    let api = Sidecar::start(
        SidecarConfig::from_workload_api(API, &spire.endpoint(API))
            .inbound(backend.addr(), allow_peer(&peer.trust_domain())),
    )
    .await;
    (backend, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_peer_is_accepted_only_with_its_domains_bundle_and_an_intention() {
    let other = DevCa::generate(None).expect("the federated domain's CA");
    let spire = WorkloadAgent::start(&[API], &[&other]).await;
    let ours = spire.ca();
    let (backend, api) = api_with_peer_intention(&spire, &other).await;

    // web of the federated domain: its bundle is there and the intention allows it.
    let mut conn = TlsCaller::new(Some(&svid(&other, WEB)))
        .connect(api.inbound_addr())
        .await
        .expect("handshake as the federated web");
    conn.round_trip(b"from the federated domain")
        .await
        .expect("a federated caller allowed by an intention gets through");
    assert_eq!(backend.accepted(), 1);
    api.wait_for_metric(ACCEPTED, |v| v >= 1.0, APPLIES_WITHIN)
        .await
        .expect("counted as accepted");

    // Authenticated but not allowed: db of that domain, and our own web (the
    // intention names the peer, not local callers).
    for (what, leaf) in [
        ("the federated db", svid(&other, "db")),
        ("our own web", svid(&ours, WEB)),
    ] {
        let mut conn = TlsCaller::new(Some(&leaf))
            .connect(api.inbound_addr())
            .await
            .unwrap_or_else(|e| panic!("handshake as {what}: {e:#}"));
        conn.closed_within(APPLIES_WITHIN)
            .await
            .unwrap_or_else(|e| panic!("{what} must be closed after the handshake: {e:#}"));
    }
    api.wait_for_metric(DENIED, |v| v >= 2.0, APPLIES_WITHIN)
        .await
        .expect("both denied by intentions");

    // One domain's CA never vouches for the other's names.
    for (what, leaf) in [
        (
            "our trust domain's web signed by the federated CA",
            claiming(&other, &ours, WEB),
        ),
        (
            "the federated web signed by our CA",
            claiming(&ours, &other, WEB),
        ),
    ] {
        let refused = match TlsCaller::new(Some(&leaf))
            .connect(api.inbound_addr())
            .await
        {
            Err(_) => true,
            Ok(mut conn) => conn.round_trip(b"must not arrive").await.is_err(),
        };
        assert!(refused, "{what} was accepted");
    }
    api.wait_for_metric(TLS_ERRORS, |v| v >= 2.0, APPLIES_WITHIN)
        .await
        .expect("both refused in the handshake");
    assert_eq!(backend.accepted(), 1, "nothing else reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_bundle_a_federated_peer_is_refused_though_an_intention_allows_it() {
    let other = DevCa::generate(None).expect("the other domain's CA");
    let spire = WorkloadAgent::start(&[API], &[]).await;
    let (backend, api) = api_with_peer_intention(&spire, &other).await;
    let refused = match TlsCaller::new(Some(&svid(&other, WEB)))
        .connect(api.inbound_addr())
        .await
    {
        Err(_) => true,
        Ok(mut conn) => conn.round_trip(b"must not arrive").await.is_err(),
    };
    assert!(refused, "a peer of a domain we do not federate with got in");
    api.wait_for_metric(TLS_ERRORS, |v| v >= 1.0, APPLIES_WITHIN)
        .await
        .expect("refused in the handshake");
    assert_eq!(backend.accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_mode_takes_its_identity_from_the_workload_api() {
    let spire = WorkloadAgent::start(&[WEB, API], &[]).await;
    let agent = &spire.agent;
    let backend = HttpEcho::start().await;
    let api = ServiceRegistration::new(API, backend.addr().port());
    let web = ServiceRegistration::new(WEB, free_port().port()).with_upstream(API);
    agent.register(&api).await;
    agent.register(&web).await;
    agent.set_intentions(API, &[(WEB, "allow")]).await;
    let api_endpoint = spire.endpoint(API);
    let web_endpoint = spire.endpoint(WEB);
    let api_proxy =
        ConsulSidecar::start_with_args(agent, &api.id, &["--workload-api", &api_endpoint]).await;
    let _web_proxy =
        ConsulSidecar::start_with_args(agent, &web.id, &["--workload-api", &web_endpoint]).await;
    agent.wait_passing(API, &[api.sidecar_port], SETUP).await;
    let url = format!("http://{}/", web.upstream_addr(API));
    eventually("a call gets through the mesh", SETUP, || curl_ok(&url))
        .await
        .expect("Consul config and endpoints with Workload API identity carry traffic");
    assert_eq!(
        api_proxy.leaf_serial().await.expect("/config"),
        agent.leaf_serial(API).await.expect("the agent's leaf")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_workload_api_flags_and_missing_identity_exit_2_naming_the_problem() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("ferrule.toml");
    std::fs::write(&config, "[identity]\nservice = \"api\"\n").expect("write a config");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(ferrule_bin())
            .arg("proxy")
            .args(args)
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .output()
            .expect("run ferrule");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let config = config.to_str().expect("utf-8 path");

    let (code, stderr) = run(&["--config", config]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("ferrule.toml:1:") && stderr.contains("identity.cert"),
        "{stderr}"
    );

    let (code, stderr) = run(&["--config", config, "--workload-api", "/no/scheme.sock"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--workload-api"), "{stderr}");
}
