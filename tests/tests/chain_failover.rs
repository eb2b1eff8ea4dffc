//! Failover: `api`'s resolver fails over to another service, `api-backup`. When every
//! instance of `api` turns critical (its TTL check failed at the agent; the sidecar's
//! alias check follows), web's calls reach `api-backup` within 2 s, and go back to
//! `api` within 2 s of it passing again, without a failed call. The times are measured
//! under steady traffic and printed.

use std::time::Duration;

use ferrule_tests::agent::TtlStatus;
use ferrule_tests::chain::{
    APPLIES_WITHIN, ChainMesh, InstanceSpec, Outcome, RequestLoop, SETUP, Switch, wait_streak, who,
};
use serde_json::json;
use tokio::time::Instant;

const API: &str = "api";
const BACKUP: &str = "api-backup";
const PRIMARY_APP: &str = "api-1";
const BACKUP_APP: &str = "api-backup-1";
const PACE: Duration = Duration::from_millis(10);
/// Calls sent after a change should have applied, to prove it held.
const AFTER: usize = 20;

/// Waits until `AFTER` calls were sent `APPLIES_WITHIN` after `changed`.
async fn traffic_after(mesh: &ChainMesh, traffic: &RequestLoop, changed: Instant, what: &str) {
    let held = traffic
        .wait_until(what, SETUP, |o| {
            o.iter()
                .filter(|o| o.sent >= changed + APPLIES_WITHIN)
                .count()
                >= AFTER
        })
        .await;
    mesh.expect(held, what).await;
}

/// The switch to `to` after `from`, among the calls sent before `until`.
fn switch(outcomes: &[Outcome], from: Instant, until: Instant, to: &str) -> Switch {
    let window: Vec<Outcome> = outcomes
        .iter()
        .filter(|o| o.sent < until)
        .cloned()
        .collect();
    Switch::of(&window, from, to, APPLIES_WITHIN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_over_to_another_service_and_come_back() {
    let mut mesh = ChainMesh::start().await;
    mesh.http_services(&[API, BACKUP]).await;
    mesh.write(&json!({
        "Kind": "service-resolver",
        "Name": API,
        "Failover": {"*": {"Targets": [{"Service": BACKUP}]}},
    }))
    .await;
    mesh.add(InstanceSpec::http(API, PRIMARY_APP).ttl_check())
        .await;
    mesh.add(InstanceSpec::http(BACKUP, BACKUP_APP)).await;
    mesh.start_web(&[API]).await;
    let addr = mesh.upstream(API);
    let primary = wait_streak("calls go to the primary", SETUP, PRIMARY_APP, 10, || {
        who(addr, "/")
    })
    .await;
    mesh.expect(primary, "the healthy primary").await;

    let traffic = RequestLoop::start(addr, "/steady", PACE);
    let check = mesh.instance(PRIMARY_APP).reg.ttl_check_id();
    let failed = Instant::now();
    mesh.agent.set_ttl_check(&check, TtlStatus::Fail).await;
    traffic_after(&mesh, &traffic, failed, "calls after the primary failed").await;
    let recovered = Instant::now();
    mesh.agent.set_ttl_check(&check, TtlStatus::Pass).await;
    traffic_after(
        &mesh,
        &traffic,
        recovered,
        "calls after the primary recovered",
    )
    .await;
    let outcomes = traffic.stop().await;

    let over = switch(&outcomes, failed, recovered, BACKUP_APP);
    let back = switch(&outcomes, recovered, Instant::now(), PRIMARY_APP);
    eprintln!(
        "failover: every call on {BACKUP} from +{:?} after the check failed ({} calls, {} \
         failed); back on {API} from +{:?} after it passed ({} calls, {} failed)",
        over.settled,
        over.requests,
        over.failures.len(),
        back.settled,
        back.requests,
        back.failures.len()
    );
    for (what, s) in [("failing over", &over), ("coming back", &back)] {
        assert!(
            s.failures.is_empty(),
            "{what}: calls failed: {:?}",
            s.failures.iter().take(5).collect::<Vec<_>>()
        );
        assert!(
            s.late.is_empty() && s.after_deadline >= AFTER,
            "{what}: calls sent {APPLIES_WITHIN:?} after the change went elsewhere: {:?}\n{}",
            s.late.iter().take(5).collect::<Vec<_>>(),
            mesh.diagnose().await
        );
    }
}
