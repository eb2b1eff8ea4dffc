//! `openssl s_client -tls1_2` with every kind of bad client certificate the design
//! lists: each is refused in the handshake, nothing reaches the app, and each refusal
//! is counted as `tls_error`. A good SVID through the same client gets through.

use std::time::Duration;

use ferrule_tests::backends::TcpEcho;
use ferrule_tests::clients::{LeafFiles, SClientOutput, s_client_tls12};
use ferrule_tests::mesh::{Mesh, WEB, svid};
use ferrule_tests::metrics::Selector;
use ferrule_tests::names::INBOUND;
use ferrule_tests::wait::eventually;
use ferrule_tests::{DevCa, IssuedLeaf, LeafSpec};

const PING: &[u8] = b"ping\n";

const TLS_ERROR: Selector = Selector {
    name: INBOUND,
    labels: &[("result", "tls_error")],
};

/// The client certificates that must be refused, by what is wrong with them.
fn bad_identities(mesh: &Mesh) -> Vec<(&'static str, Option<IssuedLeaf>)> {
    // Same trust domain, different key: only the chain check can tell it apart.
    let other_ca = DevCa::generate(Some(mesh.ca.cluster_id())).expect("generate a second CA");
    let issue = |spec: LeafSpec| mesh.ca.issue(&spec).expect("issue a test leaf");
    let second_uri = format!(
        "spiffe://{}/ns/default/dc/dc1/svc/admin",
        mesh.ca.trust_domain()
    );
    vec![
        ("no client certificate", None),
        (
            "an SVID from another CA of the trust domain",
            Some(svid(&other_ca, WEB)),
        ),
        (
            "an expired SVID",
            Some(issue(LeafSpec {
                not_before: Some(time::OffsetDateTime::now_utc() - time::Duration::days(2)),
                ttl: time::Duration::days(1),
                ..LeafSpec::service(WEB)
            })),
        ),
        (
            "a CA certificate as leaf",
            Some(issue(LeafSpec {
                is_ca: true,
                ..LeafSpec::service(WEB)
            })),
        ),
        (
            "a leaf with two URI SANs",
            Some(issue(LeafSpec {
                extra_uri_sans: vec![second_uri],
                ..LeafSpec::service(WEB)
            })),
        ),
    ]
}

async fn s_client_as(mesh: &Mesh, identity: Option<&IssuedLeaf>) -> SClientOutput {
    let files = identity.map(LeafFiles::write);
    s_client_tls12(mesh.api.inbound_addr(), files.as_ref(), PING)
        .await
        .expect("run openssl s_client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_certificates_are_refused_in_the_handshake() {
    let backend = TcpEcho::start().await;
    let mesh = Mesh::builder(backend.addr()).allow(WEB).start().await;

    for (i, (what, identity)) in bad_identities(&mesh).iter().enumerate() {
        let out = s_client_as(&mesh, identity.as_ref()).await;
        let transcript = out.transcript();
        assert_ne!(
            out.0.exit_code,
            Some(0),
            "{what}: s_client succeeded\n{transcript}"
        );
        assert!(
            out.alert_received().is_some(),
            "{what}: s_client received no alert during the handshake\n{transcript}"
        );
        let refusals = (i + 1) as f64;
        mesh.api
            .wait_for_metric(TLS_ERROR, |v| v == refusals, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{what}: not counted as one more tls_error: {e:#}"));
        assert_eq!(
            backend.accepted(),
            0,
            "{what}: a connection reached the app"
        );
    }

    // The control: the same client with a good SVID gets its bytes to the app, so the
    // refusals above are not the proxy refusing everyone.
    let good = svid(&mesh.ca, WEB);
    let out = s_client_as(&mesh, Some(&good)).await;
    assert!(
        out.succeeded(),
        "a good SVID was refused\n{}",
        out.transcript()
    );
    eventually(
        "the good caller's bytes reach the app",
        Duration::from_secs(5),
        || async {
            anyhow::ensure!(backend.bytes_received() == PING.len() as u64);
            Ok(())
        },
    )
    .await
    .expect("the app receives what a good caller sent");
    assert_eq!(backend.accepted(), 1, "connections that reached the app");
    let tls_errors = mesh.api.metric(TLS_ERROR.name, TLS_ERROR.labels).await;
    assert_eq!(
        tls_errors.expect("scrape /metrics"),
        5.0,
        "tls_error after the good caller"
    );
}
