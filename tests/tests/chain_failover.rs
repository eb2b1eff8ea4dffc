//! Failover: `api`'s resolver fails over to another service, `api-backup`. While one
//! instance of `api` is still passing, calls stay on `api`; when every instance of
//! `api` is critical (their TTL checks failed at the agent; each sidecar's alias check
//! follows), web's calls reach `api-backup` within 2 s, and come back to `api` within
//! 2 s of it passing again, without a failed call. Measured under steady traffic and
//! printed; a TCP upstream fails over too. A subset fails over to another subset when
//! its app stops and the agent's HTTP check of it turns critical.

use std::time::Duration;

use ferrule_tests::agent::TtlStatus;
use ferrule_tests::chain::{
    APPLIES_WITHIN, ChainMesh, InstanceSpec, Outcome, RequestLoop, SETUP, Switch, spread_tcp,
    subset_resolver, target_id, tcp_who, wait_seen, wait_streak, who,
};
use ferrule_tests::metrics::Selector;
use ferrule_tests::names::UPSTREAM_ACTIVE_TARGET;
use serde_json::{Value, json};
use tokio::time::Instant;

const API: &str = "api";
const BACKUP: &str = "api-backup";
const PRIMARY_1: &str = "api-1";
const PRIMARY_2: &str = "api-2";
const BACKUP_APP: &str = "api-backup-1";
const PACE: Duration = Duration::from_millis(10);
/// Calls sent after a change should have applied, to prove it held.
const AFTER: usize = 20;

fn failover_resolver() -> Value {
    json!({
        "Kind": "service-resolver",
        "Name": API,
        "Failover": {"*": {"Targets": [{"Service": BACKUP}]}},
    })
}

/// `api` (its instances with TTL checks) failing over to `api-backup`, and web.
async fn failover_mesh(http: bool, primaries: &[&str]) -> ChainMesh {
    let mut mesh = ChainMesh::start().await;
    if http {
        mesh.http_services(&[API, BACKUP]).await;
    }
    mesh.write(&failover_resolver()).await;
    let spec = |service, id| {
        if http {
            InstanceSpec::http(service, id)
        } else {
            InstanceSpec::tcp(service, id)
        }
    };
    for id in primaries {
        mesh.add(spec(API, id).ttl_check()).await;
    }
    mesh.add(spec(BACKUP, BACKUP_APP)).await;
    mesh.start_web(&[API]).await;
    mesh
}

/// Sets the TTL checks of `instances`; the instant just before.
async fn set_checks(mesh: &ChainMesh, instances: &[&str], status: TtlStatus) -> Instant {
    let changed = Instant::now();
    for id in instances {
        let check = mesh.instance(id).reg.ttl_check_id();
        mesh.agent.set_ttl_check(&check, status).await;
    }
    changed
}

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

/// web's sidecar shows `service`'s target as the one api's cluster sends to, and the
/// other as idle.
async fn active_target_is(mesh: &ChainMesh, service: &str) {
    let admin = mesh.web_proxy().admin();
    for (target_service, expected) in [(API, API == service), (BACKUP, BACKUP == service)] {
        let target = target_id(None, target_service);
        let labels = [("upstream", API), ("target", target.as_str())];
        let gauge = Selector {
            name: UPSTREAM_ACTIVE_TARGET,
            labels: &labels,
        };
        let value = if expected { 1.0 } else { 0.0 };
        let shown = admin.wait_for_metric(gauge, |v| v == value, SETUP).await;
        mesh.expect(shown, &format!("the active target with {service} serving"))
            .await;
    }
}

/// The switch to `to` after `from`, among the calls sent before `until`.
fn switch(outcomes: &[Outcome], from: Instant, until: Instant, to: &[&str]) -> Switch {
    let window: Vec<Outcome> = outcomes
        .iter()
        .filter(|o| o.sent < until)
        .cloned()
        .collect();
    Switch::of(&window, from, to, APPLIES_WITHIN)
}

/// No call failed, and every call sent `APPLIES_WITHIN` after the change landed where
/// it should.
async fn assert_switched(mesh: &ChainMesh, what: &str, switch: &Switch) {
    assert!(
        switch.failures.is_empty(),
        "{what}: calls failed: {:?}",
        switch.failures.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        switch.late.is_empty() && switch.after_deadline >= AFTER,
        "{what}: calls sent {APPLIES_WITHIN:?} after the change went elsewhere: {:?}\n{}",
        switch.late.iter().take(5).collect::<Vec<_>>(),
        mesh.diagnose().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_calls_fail_over_when_every_instance_is_critical_and_come_back() {
    let mesh = failover_mesh(true, &[PRIMARY_1, PRIMARY_2]).await;
    let addr = mesh.upstream(API);
    let both = wait_seen(
        "calls reach both primaries",
        SETUP,
        &[PRIMARY_1, PRIMARY_2],
        || who(addr, "/"),
    )
    .await;
    mesh.expect(both, "the healthy primaries").await;

    let traffic = RequestLoop::start(addr, "/steady", PACE);
    let one_down = set_checks(&mesh, &[PRIMARY_1], TtlStatus::Fail).await;
    traffic_after(&mesh, &traffic, one_down, "calls after api-1 failed").await;
    let all_down = set_checks(&mesh, &[PRIMARY_2], TtlStatus::Fail).await;
    traffic_after(&mesh, &traffic, all_down, "calls after api-2 failed").await;
    active_target_is(&mesh, BACKUP).await;
    let recovered = set_checks(&mesh, &[PRIMARY_1, PRIMARY_2], TtlStatus::Pass).await;
    traffic_after(&mesh, &traffic, recovered, "calls after api passed again").await;
    active_target_is(&mesh, API).await;
    let outcomes = traffic.stop().await;

    let stayed = switch(&outcomes, one_down, all_down, &[PRIMARY_2]);
    let over = switch(&outcomes, all_down, recovered, &[BACKUP_APP]);
    let back = switch(
        &outcomes,
        recovered,
        Instant::now(),
        &[PRIMARY_1, PRIMARY_2],
    );
    eprintln!(
        "failover: every call on {BACKUP} from +{:?} after the last instance failed ({} \
         calls, {} failed); back on {API} from +{:?} after it passed ({} calls, {} failed); \
         with one instance left, every call on it from +{:?}",
        over.settled,
        over.requests,
        over.failures.len(),
        back.settled,
        back.requests,
        back.failures.len(),
        stayed.settled
    );
    let early: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.sent >= one_down && o.sent < all_down)
        .filter(|o| o.result.as_deref() == Ok(BACKUP_APP))
        .collect();
    assert!(
        early.is_empty(),
        "{} calls failed over while api-2 was still passing",
        early.len()
    );
    assert_switched(&mesh, "one instance left", &stayed).await;
    assert_switched(&mesh, "failing over", &over).await;
    assert_switched(&mesh, "coming back", &back).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_fail_over_and_come_back() {
    let mesh = failover_mesh(false, &[PRIMARY_1]).await;
    let addr = mesh.upstream(API);
    let primary = wait_streak("connections reach the primary", SETUP, PRIMARY_1, 5, || {
        tcp_who(addr)
    })
    .await;
    mesh.expect(primary, "the healthy primary").await;

    let failed = set_checks(&mesh, &[PRIMARY_1], TtlStatus::Fail).await;
    let put = failed.elapsed();
    let over = wait_streak("connections fail over", SETUP, BACKUP_APP, 5, || {
        tcp_who(addr)
    })
    .await;
    let over = put + mesh.expect(over, "failing over").await;
    let spread = spread_tcp(addr, 10).await;
    let recovered = set_checks(&mesh, &[PRIMARY_1], TtlStatus::Pass).await;
    let put = recovered.elapsed();
    let back = wait_streak("connections come back", SETUP, PRIMARY_1, 5, || {
        tcp_who(addr)
    })
    .await;
    let back = put + mesh.expect(back, "coming back").await;
    eprintln!(
        "tcp failover: on {BACKUP} {over:?} after the check failed, back on {API} \
         {back:?} after it passed"
    );
    assert_eq!(spread.on(BACKUP_APP), 10, "after failing over: {spread:?}");
    assert!(
        over <= APPLIES_WITHIN && back <= APPLIES_WITHIN,
        "failover took {over:?}, coming back {back:?}; the bound is {APPLIES_WITHIN:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subset_fails_over_to_another_subset_when_its_app_stops() {
    // The HTTP check runs every second: the instance is critical within about a second
    // of its app stopping, and the chain has the usual 2 s from then.
    const BOUND: Duration = Duration::from_secs(3);
    let mut mesh = ChainMesh::start().await;
    mesh.http_services(&[API]).await;
    let mut resolver = subset_resolver(API, Some("v1"), &["v1", "v2"]);
    resolver["Failover"] = json!({"v1": {"Targets": [{"ServiceSubset": "v2"}]}});
    mesh.write(&resolver).await;
    mesh.add(InstanceSpec::http(API, "api-v1").version("v1").http_check())
        .await;
    mesh.add(InstanceSpec::http(API, "api-v2").version("v2"))
        .await;
    mesh.start_web(&[API]).await;
    let addr = mesh.upstream(API);
    let primary = wait_streak("calls go to v1", SETUP, "api-v1", 10, || who(addr, "/")).await;
    mesh.expect(primary, "the default subset").await;

    let traffic = RequestLoop::start(addr, "/steady", PACE);
    let stopped = Instant::now();
    mesh.instance("api-v1").http().stop();
    let held = traffic
        .wait_until("calls after v1's app stopped", SETUP, |o| {
            o.iter().filter(|o| o.sent >= stopped + BOUND).count() >= AFTER
        })
        .await;
    mesh.expect(held, "calls after v1's app stopped").await;
    let outcomes = traffic.stop().await;
    let over = Switch::of(&outcomes, stopped, &["api-v2"], BOUND);
    eprintln!(
        "subset failover: every call on v2 from +{:?} after v1's app stopped ({} calls, {} \
         failed while v1 was still listed)",
        over.settled,
        over.requests,
        over.failures.len()
    );
    assert!(
        over.late.is_empty() && over.after_deadline >= AFTER,
        "calls sent {BOUND:?} after v1's app stopped did not land on v2: {:?}\n{}",
        over.late.iter().take(5).collect::<Vec<_>>(),
        mesh.diagnose().await
    );
}
