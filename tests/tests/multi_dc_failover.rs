//! Failover across datacenters under steady traffic: `api` runs in dc1 and in dc2, `web`
//! in dc1 calls it.
//!
//! - A `service-resolver` failing over to dc2 (`Failover {"*": {"Datacenters":
//!   ["dc2"]}}`) with `api`'s mesh gateway mode `local`: when dc1's api turns critical,
//!   web's calls reach dc2's api through both `ferrule gateway`s within 2 s, and come
//!   back to dc1 within 2 s of it passing again.
//! - A prepared-query upstream whose query fails over to dc2 does the same (straight to
//!   dc2's instance at its WAN address: queries have no gateway mode).
//!
//! No call may fail but those in flight at a switch; the switch times and the calls
//! lost are printed for the closing note.

use std::time::Duration;

use ferrule_tests::agent::TtlStatus;
use ferrule_tests::backends::NamedHttp;
use ferrule_tests::chain::{Outcome, RequestLoop, Switch, wait_streak, who};
use ferrule_tests::consul::ConsulSidecar;
use ferrule_tests::http;
use ferrule_tests::metrics::Selector;
use ferrule_tests::multi_dc::{
    APPLIES_WITHIN, DC1, DC2, Hops, MeshService, SETUP, TwoDcs, service_defaults,
};
use ferrule_tests::names::UPSTREAM_ACTIVE_TARGET;
use ferrule_tests::wait::free_port;
use serde_json::{Value, json};
use tokio::time::Instant;

const API: &str = "api";
const WEB: &str = "web";
const API_DC1: &str = "api-dc1";
const API_DC2: &str = "api-dc2";
const QUERY: &str = "api-q";
/// One call every 10 ms, each on a new connection to web's upstream listener.
const PACE: Duration = Duration::from_millis(10);
/// Calls sent after a switch should have applied, to prove it held.
const AFTER: usize = 20;

/// api in both datacenters (dc1's with a TTL check the test fails and passes; dc2's
/// with a `wan` address), their apps naming their datacenter, and their sidecars.
struct Apis {
    _dc1_proxy: ConsulSidecar,
    dc2_proxy: ConsulSidecar,
    dc1: MeshService,
    _apps: (NamedHttp, NamedHttp),
}

impl Apis {
    async fn start(dcs: &TwoDcs) -> Apis {
        let (app1, app2) = (
            NamedHttp::start(API_DC1).await,
            NamedHttp::start(API_DC2).await,
        );
        let mut dc1 = MeshService::new(API, dcs.dc1.ip, app1.addr().port()).with_ttl_check();
        let mut dc2 = MeshService::new(API, dcs.dc2.ip, app2.addr().port()).with_wan();
        let dc1_proxy = dcs.dc1.start_service(&mut dc1).await;
        let dc2_proxy = dcs.dc2.start_service(&mut dc2).await;
        dcs.dc1.wait_passing(&[&dc1]).await;
        dcs.dc2.wait_passing(&[&dc2]).await;
        Apis {
            _dc1_proxy: dc1_proxy,
            dc2_proxy,
            dc1,
            _apps: (app1, app2),
        }
    }

    /// Sets dc1's api's TTL check; the instant just before.
    async fn set_dc1(&self, dcs: &TwoDcs, status: TtlStatus) -> Instant {
        let changed = Instant::now();
        dcs.dc1
            .agent
            .set_ttl_check(&self.dc1.reg.ttl_check_id(), status)
            .await;
        changed
    }
}

/// Waits until `AFTER` calls were sent `APPLIES_WITHIN` after `changed`.
async fn traffic_after(traffic: &RequestLoop, changed: Instant, what: &str, web: &ConsulSidecar) {
    let held = traffic
        .wait_until(what, SETUP, |o| {
            o.iter()
                .filter(|o| o.sent >= changed + APPLIES_WITHIN)
                .count()
                >= AFTER
        })
        .await;
    if let Err(e) = held {
        panic!("{e:#}\n{}", web.stderr());
    }
}

/// The switch to `to` after `from`, among the calls sent before `until`.
fn switch(outcomes: &[Outcome], from: Instant, until: Instant, to: &str) -> Switch {
    let window: Vec<Outcome> = outcomes
        .iter()
        .filter(|o| o.sent < until)
        .cloned()
        .collect();
    Switch::of(&window, from, &[to], APPLIES_WITHIN)
}

/// Calls sent before `at` that failed: in flight when the change was made.
fn in_flight_failures(outcomes: &[Outcome], at: Instant) -> usize {
    outcomes
        .iter()
        .filter(|o| o.sent < at && o.sent + Duration::from_secs(10) > at && o.result.is_err())
        .count()
}

/// Every call sent since the change either landed or was in flight; every one sent
/// `APPLIES_WITHIN` after it landed where it should.
fn assert_switched(what: &str, switch: &Switch) {
    assert!(
        switch.failures.is_empty(),
        "{what}: calls failed: {:?}",
        switch.failures.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        switch.late.is_empty() && switch.after_deadline >= AFTER,
        "{what}: calls sent {APPLIES_WITHIN:?} after the change went elsewhere: {:?}",
        switch.late.iter().take(5).collect::<Vec<_>>()
    );
}

/// Steady calls while dc1's api fails and recovers; prints and checks both switches.
async fn fail_over_and_back(
    case: &str,
    dcs: &TwoDcs,
    apis: &Apis,
    web: &MeshService,
    proxy: &ConsulSidecar,
    upstream: &str,
) -> (Switch, Switch) {
    let addr = web.upstream_addr(upstream);
    let home = wait_streak("web reaches api in dc1", SETUP, API_DC1, 5, || {
        who(addr, "/")
    })
    .await;
    if let Err(e) = home {
        panic!("{e:#}\n{}", proxy.stderr());
    }
    let traffic = RequestLoop::start(addr, "/steady", PACE);
    let failed = apis.set_dc1(dcs, TtlStatus::Fail).await;
    traffic_after(&traffic, failed, "calls after dc1's api failed", proxy).await;
    let recovered = apis.set_dc1(dcs, TtlStatus::Pass).await;
    traffic_after(
        &traffic,
        recovered,
        "calls after dc1's api recovered",
        proxy,
    )
    .await;
    let outcomes = traffic.stop().await;

    let over = switch(&outcomes, failed, recovered, API_DC2);
    let back = switch(&outcomes, recovered, Instant::now(), API_DC1);
    eprintln!(
        "FIGURES {case}: every call on dc2 from +{:?} after dc1's api failed ({} calls, {} \
         failed, {} in flight failed); back on dc1 from +{:?} after it passed ({} calls, {} \
         failed, {} in flight failed)",
        over.settled,
        over.requests,
        over.failures.len(),
        in_flight_failures(&outcomes, failed),
        back.settled,
        back.requests,
        back.failures.len(),
        in_flight_failures(&outcomes, recovered),
    );
    assert_switched(&format!("{case}: failing over"), &over);
    assert_switched(&format!("{case}: coming back"), &back);
    (over, back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_fails_over_to_dc2_through_the_gateways_and_back() {
    let dcs = TwoDcs::with_ferrule_gateways().await;
    dcs.write(&service_defaults(API, "http", Some("local")))
        .await;
    dcs.write(&json!({
        "Kind": "service-resolver",
        "Name": API,
        "Failover": {"*": {"Datacenters": [DC2]}},
    }))
    .await;
    let apis = Apis::start(&dcs).await;
    let mut web = MeshService::new(WEB, dcs.dc1.ip, free_port().port())
        .with_upstream(json!({"DestinationName": API}));
    let proxy = dcs.dc1.start_service(&mut web).await;

    let before = Hops::read(&dcs, API, Some(&apis.dc2_proxy)).await;
    fail_over_and_back(
        "resolver failover dc1 -> dc2 (mesh gateways local)",
        &dcs,
        &apis,
        &web,
        &proxy,
        API,
    )
    .await;
    let moved = Hops::read(&dcs, API, Some(&apis.dc2_proxy))
        .await
        .since(before);
    assert!(
        moved.through_dc1_gateway() && moved.through_dc2_gateway(),
        "the calls to dc2 did not cross both gateways: {moved:?}"
    );
    // The active target is dc1's again, and dc2's was the one in between.
    let admin = proxy.admin();
    for (dc, active) in [(DC1, 1.0), (DC2, 0.0)] {
        let target = format!("{API}.default.default.{dc}");
        let labels = [("upstream", API), ("target", target.as_str())];
        let gauge = Selector {
            name: UPSTREAM_ACTIVE_TARGET,
            labels: &labels,
        };
        admin
            .wait_for_metric(gauge, |v| v == active, SETUP)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// `POST /v1/query` in dc1: `api`, failing over to dc2.
async fn create_query(dcs: &TwoDcs) {
    let query = json!({
        "Name": QUERY,
        "Service": {"Service": API, "Failover": {"Datacenters": [DC2]}},
    });
    let created = http::request(
        dcs.dc1.agent.addr(),
        hyper::Method::POST,
        "/v1/query",
        query.to_string().into(),
    )
    .await
    .expect("POST /v1/query");
    assert_eq!(created.status, 200, "POST /v1/query: {}", created.body);
    let id: Value = created.json().expect("the query's ID");
    assert!(id["ID"].is_string(), "POST /v1/query answered {id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_query_upstream_fails_over_to_dc2_and_back() {
    let dcs = TwoDcs::start().await;
    dcs.write(&service_defaults(API, "http", None)).await;
    create_query(&dcs).await;
    let apis = Apis::start(&dcs).await;
    let mut web = MeshService::new(WEB, dcs.dc1.ip, free_port().port()).with_upstream(json!({
        "DestinationType": "prepared_query",
        "DestinationName": QUERY,
        "Config": {"protocol": "http"},
    }));
    let proxy = dcs.dc1.start_service(&mut web).await;

    fail_over_and_back(
        "prepared query failover dc1 -> dc2",
        &dcs,
        &apis,
        &web,
        &proxy,
        QUERY,
    )
    .await;
    let label = format!("{QUERY}.{DC1}");
    let labels = [("upstream", QUERY), ("target", label.as_str())];
    let requests = proxy
        .admin()
        .metric(ferrule_tests::names::UPSTREAM_REQUESTS, &labels)
        .await
        .unwrap_or_default();
    assert!(requests > 0.0, "no requests counted under target {label}");
}
