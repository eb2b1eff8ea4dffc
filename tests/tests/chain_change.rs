//! A chain edited at the agent under steady traffic: `api`'s splitter goes from 100/0
//! (all to v1) to 0/100 (all to v2) while web's app calls it back to back, each call
//! on a new connection. Every call sent 2 s after the write lands on v2, and no call
//! fails, before, during or after the change.

use ferrule_tests::chain::{
    APPLIES_WITHIN, ChainMesh, InstanceSpec, RequestLoop, SETUP, Switch, subset_resolver,
    subset_splitter, wait_streak, who,
};
use std::time::Duration;
use tokio::time::Instant;

const API: &str = "api";
const V1: &str = "api-v1";
const V2: &str = "api-v2";
/// Between two calls of the steady traffic.
const PACE: Duration = Duration::from_millis(10);
/// Calls sent after the change should have applied, to prove it held.
const AFTER: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_splitter_edited_at_the_agent_applies_under_traffic_without_losing_a_request() {
    let mut mesh = ChainMesh::start().await;
    mesh.http_services(&[API]).await;
    mesh.write(&subset_resolver(API, Some("v1"), &["v1", "v2"]))
        .await;
    mesh.write(&subset_splitter(API, &[(100.0, "v1"), (0.0, "v2")]))
        .await;
    mesh.add(InstanceSpec::http(API, V1).version("v1")).await;
    mesh.add(InstanceSpec::http(API, V2).version("v2")).await;
    mesh.start_web(&[API]).await;
    let addr = mesh.upstream(API);
    let steady = wait_streak("all calls go to v1", SETUP, V1, 20, || who(addr, "/")).await;
    mesh.expect(steady, "the 100/0 split").await;

    let traffic = RequestLoop::start(addr, "/steady", PACE);
    let flowing = traffic
        .wait_until("traffic flows", SETUP, |o| {
            o.iter().filter(|o| o.result.is_ok()).count() >= 50
        })
        .await;
    mesh.expect(flowing, "steady traffic before the change")
        .await;
    let changed = Instant::now();
    mesh.write(&subset_splitter(API, &[(0.0, "v1"), (100.0, "v2")]))
        .await;
    let held = traffic
        .wait_until("calls sent after the change applied", SETUP, |o| {
            o.iter()
                .filter(|o| o.sent >= changed + APPLIES_WITHIN)
                .count()
                >= AFTER
        })
        .await;
    mesh.expect(held, "traffic after the change").await;
    let outcomes = traffic.stop().await;

    let switch = Switch::of(&outcomes, changed, &[V2], APPLIES_WITHIN);
    let lost: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err().cloned())
        .collect();
    eprintln!(
        "chain change 100/0 -> 0/100: first call on v2 sent at +{:?}, every call on v2 \
         from +{:?}; {} calls in all, {} since the change, {} lost",
        switch.first,
        switch.settled,
        outcomes.len(),
        switch.requests,
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} calls failed: {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        switch.late.is_empty() && switch.after_deadline >= AFTER,
        "calls sent {APPLIES_WITHIN:?} after the change still went elsewhere: {:?}\n{}",
        switch.late.iter().take(5).collect::<Vec<_>>(),
        mesh.diagnose().await
    );
}
