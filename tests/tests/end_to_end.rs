//! curl -> web's upstream port -> mTLS -> api's sidecar -> HTTP echo backend.

use std::time::Duration;

use ferrule_tests::backends::{GET_BODY, HttpEcho};
use ferrule_tests::clients::{at_file, curl};
use ferrule_tests::mesh::{API, Mesh, WEB};
use ferrule_tests::metrics::Selector;
use ferrule_tests::names::{BYTES, INBOUND, OUTBOUND, TLS_HANDSHAKES};

const BODY_LEN: usize = 10 * 1024 * 1024 + 17;

/// Not compressible and not periodic, so a dropped or reordered chunk cannot go unseen.
fn pseudo_random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        // xorshift64
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        bytes.extend_from_slice(&seed.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mebibytes_cross_the_mesh_both_ways_and_are_counted() {
    let backend = HttpEcho::start().await;
    let mesh = Mesh::builder(backend.addr()).allow(WEB).start().await;
    let web = mesh.caller_sidecar(WEB, &[mesh.api.inbound_addr()]).await;
    let url = format!("http://{}/echo", web.upstream_addr(API));

    let body = pseudo_random_bytes(BODY_LEN, 0x5eed_f00d_cafe_d00d);
    let dir = tempfile::tempdir().expect("temporary directory for the request body");
    let body_file = dir.path().join("request.bin");
    std::fs::write(&body_file, &body).expect("write the request body");

    let post = curl(&url, &["--data-binary", &at_file(&body_file)])
        .await
        .expect("run curl");
    assert!(post.is_ok(), "POST through the mesh failed: {post:?}");
    assert_eq!(post.body.len(), body.len(), "echoed body length");
    assert!(
        post.body == body,
        "the echoed body differs from the one sent"
    );

    let get = curl(&url, &[]).await.expect("run curl");
    assert!(
        get.is_ok(),
        "second request through the mesh failed: {get:?}"
    );
    assert_eq!(String::from_utf8_lossy(&get.body), GET_BODY);
    assert_eq!(backend.requests(), 2, "requests that reached the backend");

    let within = Duration::from_secs(5);
    let at_least_body = |v: f64| v >= BODY_LEN as f64;
    let at_least_one = |v: f64| v >= 1.0;
    for (sidecar, direction) in [(&web, "outbound"), (&mesh.api, "inbound")] {
        for flow in ["rx", "tx"] {
            let labels = [("direction", direction), ("flow", flow)];
            let metric = Selector {
                name: BYTES,
                labels: &labels,
            };
            sidecar
                .wait_for_metric(metric, at_least_body, within)
                .await
                .expect("the body's bytes are counted");
        }
    }
    let ok = Selector {
        name: OUTBOUND,
        labels: &[("upstream", API), ("result", "ok")],
    };
    web.wait_for_metric(ok, at_least_one, within)
        .await
        .expect("web counts its successful dials");
    let accepted = Selector {
        name: INBOUND,
        labels: &[("result", "accepted")],
    };
    mesh.api
        .wait_for_metric(accepted, at_least_one, within)
        .await
        .expect("api counts the accepted connections");
}

/// Every app connection is a new mesh connection on the L4 path; after the first, each
/// resumes the session (a TLS 1.3 ticket from api's sidecar): no certificate is signed
/// or verified again, and the caller's identity comes back with the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_mesh_connections_resume_the_tls_session() {
    let backend = HttpEcho::start().await;
    let mesh = Mesh::builder(backend.addr()).allow(WEB).start().await;
    let web = mesh.caller_sidecar(WEB, &[mesh.api.inbound_addr()]).await;
    let url = format!("http://{}/", web.upstream_addr(API));
    const CALLS: usize = 12;
    for _ in 0..CALLS {
        let get = curl(&url, &[]).await.expect("run curl");
        assert!(get.is_ok(), "request through the mesh failed: {get:?}");
    }
    assert_eq!(backend.requests(), CALLS);

    let within = Duration::from_secs(5);
    for (sidecar, direction) in [(&web, "outbound"), (&mesh.api, "inbound")] {
        let resumed = [("direction", direction), ("kind", "resumed")];
        let all_but_first = |v: f64| v >= (CALLS - 1) as f64;
        sidecar
            .wait_for_metric(
                Selector {
                    name: TLS_HANDSHAKES,
                    labels: &resumed,
                },
                all_but_first,
                within,
            )
            .await
            .expect("every handshake after the first resumes");
        let full = sidecar
            .metric(
                TLS_HANDSHAKES,
                &[("direction", direction), ("kind", "full")],
            )
            .await
            .expect("scrape the full handshakes");
        assert_eq!(full, 1.0, "{direction}: one full handshake");
    }
    // The resumed connections were decided on the caller's identity like the first.
    let allowed = mesh
        .api
        .metric(
            "ferrule_authz_decisions_total",
            &[("layer", "l4"), ("decision", "allow"), ("source", WEB)],
        )
        .await
        .expect("scrape api's decisions");
    assert_eq!(allowed, CALLS as f64);
}
