//! The intentions file changes from allow to deny while the proxy runs: within 2 s the
//! open connection from the now-denied source is closed (and counted), new ones from it
//! are refused, and a source that is still allowed keeps its connection.

use std::time::Duration;

use ferrule_tests::backends::TcpEcho;
use ferrule_tests::mesh::{API, Mesh, WEB, intentions_json};
use ferrule_tests::metrics::Selector;
use ferrule_tests::names::AUTHZ_TERMINATIONS;
use ferrule_tests::sidecar::{INTENTIONS_FILE, Replace};
use ferrule_tests::wait::eventually;
use tokio::time::Instant;

/// A caller that stays allowed throughout.
const ADMIN: &str = "admin";
/// The contract: a change applies within this long.
const APPLIES_WITHIN: Duration = Duration::from_secs(2);

async fn revoking_an_intention_closes_its_connections(how: Replace) {
    let backend = TcpEcho::start().await;
    let mesh = Mesh::builder(backend.addr())
        .allow(WEB)
        .allow(ADMIN)
        .start()
        .await;
    let mut web = mesh.call_as(WEB).await.expect("connect as web");
    web.round_trip(b"web, before")
        .await
        .expect("web is allowed at first");
    let mut admin = mesh.call_as(ADMIN).await.expect("connect as admin");
    admin
        .round_trip(b"admin, before")
        .await
        .expect("admin is allowed");

    let denied_web = intentions_json(API, &[(WEB, "deny"), (ADMIN, "allow")]);
    let changed_at = Instant::now();
    mesh.api.replace_file(INTENTIONS_FILE, &denied_web, how);
    let deadline = changed_at + APPLIES_WITHIN;

    web.closed_within(deadline.saturating_duration_since(Instant::now()))
        .await
        .expect("web's open connection is closed within 2 s of the change");
    eventually(
        "a new connection from web is refused",
        deadline.saturating_duration_since(Instant::now()),
        || async {
            let mut attempt = mesh.call_as(WEB).await?;
            // An allowed connection would stay open; a denied one closes at once.
            attempt.closed_within(Duration::from_millis(300)).await
        },
    )
    .await
    .expect("new connections from web are denied within 2 s of the change");

    let reached_app = backend.accepted();
    let mut refused = mesh.call_as(WEB).await.expect("connect as web again");
    let _ = refused.send(b"must not reach the app").await;
    refused
        .closed_within(Duration::from_secs(2))
        .await
        .expect("web stays denied");
    assert_eq!(
        backend.accepted(),
        reached_app,
        "a denied connection reached the app"
    );

    let terminations = Selector {
        name: AUTHZ_TERMINATIONS,
        labels: &[("source", WEB)],
    };
    mesh.api
        .wait_for_metric(terminations, |v| v == 1.0, Duration::from_secs(5))
        .await
        .expect("the closed connection is counted as a termination of web");
    let admin_terminations = mesh
        .api
        .metric(AUTHZ_TERMINATIONS, &[("source", ADMIN)])
        .await;
    assert_eq!(
        admin_terminations.expect("scrape"),
        0.0,
        "admin was terminated"
    );

    admin
        .round_trip(b"admin, after")
        .await
        .expect("admin's connection, still allowed, keeps working after the change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_edit_to_deny_closes_open_and_refuses_new_connections() {
    revoking_an_intention_closes_its_connections(Replace::InPlace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_rename_to_deny_closes_open_and_refuses_new_connections() {
    revoking_an_intention_closes_its_connections(Replace::AtomicRename).await;
}
