//! An identity the Workload API withdraws (`PERMISSION_DENIED`, as SPIRE answers once the
//! workload's entry is deleted) stops being used: with no grace period the sidecar's
//! handshakes fail closed and `/ready` says why, within a bounded poll; issued again, it
//! serves again. With a grace period, a withdrawal shorter than it goes unnoticed.

use std::time::Duration;

use bytes::Bytes;
use ferrule_tests::backends::HttpEcho;
use ferrule_tests::clients::TlsCaller;
use ferrule_tests::mesh::{intentions_json, svid};
use ferrule_tests::sidecar::{Sidecar, SidecarConfig};
use ferrule_tests::wait::eventually;
use ferrule_tests::workload::WorkloadAgent;
use hyper::Method;

const API: &str = "api";
const WEB: &str = "web";
const APPLIES_WITHIN: Duration = Duration::from_secs(10);

/// Withdraws (`DELETE`) or issues again (`PUT`) `service`'s identity at the dev agent.
async fn entry(spire: &WorkloadAgent, service: &str, method: Method) {
    let path = format!("/v1/internal/ferrule/workload-api/{service}");
    let answer = ferrule_tests::http::request(spire.agent.addr(), method, &path, Bytes::new())
        .await
        .expect("the dev agent answers");
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_identity_fails_closed_and_comes_back_when_issued_again() {
    let spire = WorkloadAgent::start(&[API], &[]).await;
    let app = HttpEcho::start().await;
    let api = Sidecar::start(
        SidecarConfig::from_workload_api(API, &spire.endpoint(API))
            .inbound(app.addr(), intentions_json(API, &[(WEB, "allow")])),
    )
    .await;
    let caller = TlsCaller::new(Some(&svid(&spire.ca(), WEB)));
    caller
        .connect(api.inbound_addr())
        .await
        .expect("a handshake with the issued SVID");

    entry(&spire, API, Method::DELETE).await;
    eventually(
        "handshakes fail and /ready says why",
        APPLIES_WITHIN,
        || async {
            anyhow::ensure!(
                caller.connect(api.inbound_addr()).await.is_err(),
                "a handshake still succeeds"
            );
            let (status, body) = api.ready().await?;
            anyhow::ensure!(
                status == 503 && body.contains("withdrew"),
                "{status}: {body}"
            );
            anyhow::ensure!(body.contains("PERMISSION_DENIED"), "{body}");
            Ok(())
        },
    )
    .await
    .expect("the withdrawn identity is no longer used");

    entry(&spire, API, Method::PUT).await;
    eventually("served again", APPLIES_WITHIN, || async {
        caller.connect(api.inbound_addr()).await?;
        let (status, body) = api.ready().await?;
        anyhow::ensure!(status == 200, "{status}: {body}");
        Ok(())
    })
    .await
    .expect("the identity issued again is used again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_within_the_grace_period_goes_unnoticed() {
    let spire = WorkloadAgent::start(&[API], &[]).await;
    let app = HttpEcho::start().await;
    let api = Sidecar::start(
        SidecarConfig::from_workload_api(API, &spire.endpoint(API))
            .inbound(app.addr(), intentions_json(API, &[(WEB, "allow")]))
            .env("FERRULE_WORKLOAD_API_WITHDRAWAL_GRACE", "1h"),
    )
    .await;
    let caller = TlsCaller::new(Some(&svid(&spire.ca(), WEB)));
    entry(&spire, API, Method::DELETE).await;
    // Once the proxy has heard the denial, it keeps its SVID for the grace period.
    eventually("the denial is heard", APPLIES_WITHIN, || async {
        anyhow::ensure!(api.stderr().contains("denies this workload an identity"));
        Ok(())
    })
    .await
    .expect("the proxy hears PERMISSION_DENIED");
    caller
        .connect(api.inbound_addr())
        .await
        .expect("still served within the grace period");
    assert_eq!(api.ready().await.expect("/ready").0, 200);
    entry(&spire, API, Method::PUT).await;
}
