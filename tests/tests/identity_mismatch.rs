//! An upstream endpoint that presents a valid certificate of the wrong service: web's
//! sidecar refuses it (`identity_mismatch`), tries the next endpoint, and closes the
//! app's connection when none is left.

use std::time::Duration;

use ferrule_tests::backends::{GET_BODY, HttpEcho};
use ferrule_tests::clients::curl;
use ferrule_tests::mesh::{API, Mesh, WEB, intentions_json};
use ferrule_tests::metrics::Selector;
use ferrule_tests::names::OUTBOUND;
use ferrule_tests::sidecar::{Sidecar, SidecarConfig};

/// A mesh member that is not `api`, but is reachable where `api` is expected.
const IMPOSTER: &str = "billing";

const MISMATCH: Selector = Selector {
    name: OUTBOUND,
    labels: &[("upstream", API), ("result", "identity_mismatch")],
};
const OK: Selector = Selector {
    name: OUTBOUND,
    labels: &[("upstream", API), ("result", "ok")],
};

/// A `billing` sidecar in front of its own backend, which would let `web` in.
async fn imposter(mesh: &Mesh, backend: &HttpEcho) -> Sidecar {
    let config = SidecarConfig::new(&mesh.ca, &mesh.svid(IMPOSTER))
        .inbound(backend.addr(), intentions_json(IMPOSTER, &[(WEB, "allow")]));
    Sidecar::start(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_service_is_refused_and_the_next_endpoint_is_tried() {
    let api_backend = HttpEcho::start().await;
    let imposter_backend = HttpEcho::start().await;
    let mesh = Mesh::builder(api_backend.addr()).allow(WEB).start().await;
    let billing = imposter(&mesh, &imposter_backend).await;
    let within = Duration::from_secs(5);

    // Only the imposter: the app's connection is closed without an answer.
    let web = mesh.caller_sidecar(WEB, &[billing.inbound_addr()]).await;
    let url = format!("http://{}/", web.upstream_addr(API));
    let refused = curl(&url, &[]).await.expect("run curl");
    assert!(
        !refused.is_ok() && refused.http_code == 0,
        "curl got an answer through an imposter: {refused:?}"
    );
    web.wait_for_metric(MISMATCH, |v| v >= 1.0, within)
        .await
        .expect("the refusal is counted as identity_mismatch");
    assert_eq!(web.metric(OK.name, OK.labels).await.expect("scrape"), 0.0);
    assert_eq!(
        imposter_backend.requests(),
        0,
        "a request reached the imposter's app"
    );

    // Imposter first, api second: every request still gets api's answer, whichever
    // endpoint round robin starts from.
    drop(web);
    let web = mesh
        .caller_sidecar(WEB, &[billing.inbound_addr(), mesh.api.inbound_addr()])
        .await;
    let url = format!("http://{}/", web.upstream_addr(API));
    const REQUESTS: usize = 4;
    for i in 1..=REQUESTS {
        let response = curl(&url, &[]).await.expect("run curl");
        assert!(response.is_ok(), "request {i} failed: {response:?}");
        assert_eq!(String::from_utf8_lossy(&response.body), GET_BODY);
    }
    assert_eq!(
        api_backend.requests(),
        REQUESTS,
        "requests that reached api's app"
    );
    assert_eq!(
        imposter_backend.requests(),
        0,
        "a request reached the imposter's app"
    );
    web.wait_for_metric(MISMATCH, |v| v >= 1.0, within)
        .await
        .expect("the imposter was dialed and refused");
    web.wait_for_metric(OK, |v| v == REQUESTS as f64, within)
        .await
        .expect("one successful dial per request");
}
