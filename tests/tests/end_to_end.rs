//! curl -> web's upstream port -> mTLS -> api's sidecar -> HTTP echo backend.

use std::time::Duration;

use ferrule_tests::backends::{GET_BODY, HttpEcho};
use ferrule_tests::clients::{at_file, curl};
use ferrule_tests::mesh::{API, Mesh, WEB};
use ferrule_tests::metrics::Selector;
use ferrule_tests::names::{BYTES, INBOUND, OUTBOUND};

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
