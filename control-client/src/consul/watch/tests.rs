//! Tests of `watch`.

use super::*;
use crate::consul::http::{AgentAddr, AgentClientConfig};
use crate::consul::testing::{Reply, ScriptedAgent};
use std::sync::Arc;

#[derive(Debug, serde::Deserialize, PartialEq)]
struct Thing {
    #[serde(rename = "V")]
    v: u32,
}

fn fast() -> Tuning {
    Tuning {
        wait: Duration::from_secs(1),
        timeout_margin: Duration::from_millis(300),
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(20),
        burst: 100,
        refill: Duration::from_millis(1),
        force_retry: Duration::from_secs(60),
        unsupported_retry: Duration::from_secs(60),
        poll: Duration::from_millis(200),
    }
}

fn client(addr: std::net::SocketAddr) -> AgentClient {
    let addr: AgentAddr = addr.to_string().parse().unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    AgentClient::new(&AgentClientConfig::new(addr), provider).unwrap()
}

fn spec(blocking: Blocking) -> WatchSpec {
    WatchSpec {
        path: "/v1/thing".into(),
        query: vec![("passing".into(), "1".into())],
        blocking,
        body: None,
    }
}

fn start(
    agent: &ScriptedAgent,
    blocking: Blocking,
    tuning: Tuning,
) -> (Watcher, mpsc::Receiver<Update<Thing>>) {
    let (tx, rx) = mpsc::channel(16);
    let w = Watcher::spawn(client(agent.addr()), spec(blocking), tuning, tx, |u| u);
    (w, rx)
}

async fn next(rx: &mut mpsc::Receiver<Update<Thing>>) -> Update<Thing> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an update within 5 s")
        .expect("the watcher is running")
}

fn changed(u: Update<Thing>) -> u32 {
    match u {
        Update::Changed { value, .. } => value.v,
        other => panic!("expected a change, got {other:?}"),
    }
}

#[tokio::test]
async fn follows_the_index_and_resets_when_it_goes_backwards() {
    let agent = ScriptedAgent::start(vec![
        Reply::json(10, r#"{"V":1}"#),
        Reply::json(12, r#"{"V":2}"#),
        // The agent restarted: a lower index, same data.
        Reply::json(3, r#"{"V":2}"#),
        Reply::json(4, r#"{"V":3}"#),
    ])
    .await;
    let (_w, mut rx) = start(&agent, Blocking::Index, fast());
    assert_eq!(changed(next(&mut rx).await), 1);
    assert_eq!(changed(next(&mut rx).await), 2);
    assert!(matches!(next(&mut rx).await, Update::Unchanged { .. }));
    assert_eq!(changed(next(&mut rx).await), 3);
    let queries = agent.wait_queries(5).await;
    assert_eq!(queries[0], "passing=1");
    assert_eq!(queries[1], "passing=1&index=10&wait=1s");
    assert_eq!(queries[2], "passing=1&index=12&wait=1s");
    assert_eq!(queries[3], "passing=1", "went backwards: a fresh read");
    assert_eq!(queries[4], "passing=1&index=4&wait=1s");
}

#[tokio::test]
async fn a_polled_endpoint_is_read_again_after_the_period_and_never_blocks() {
    let agent = ScriptedAgent::start(vec![
        Reply::json(10, r#"{"V":1}"#),
        Reply::json(10, r#"{"V":1}"#),
        Reply::json(11, r#"{"V":2}"#),
    ])
    .await;
    let started = tokio::time::Instant::now();
    let (_w, mut rx) = start(&agent, Blocking::Poll, fast());
    assert_eq!(changed(next(&mut rx).await), 1);
    assert!(matches!(next(&mut rx).await, Update::Unchanged { .. }));
    assert_eq!(changed(next(&mut rx).await), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "two periods between three reads"
    );
    let queries = agent.wait_queries(3).await;
    assert_eq!(queries, ["passing=1"; 3], "no index, no wait");
}

#[tokio::test]
async fn a_zero_or_missing_index_is_clamped_to_one() {
    let agent = ScriptedAgent::start(vec![
        Reply::json(0, r#"{"V":1}"#),
        Reply::json(0, r#"{"V":1}"#).without_index(),
        Reply::json(7, r#"{"V":2}"#),
    ])
    .await;
    let (_w, mut rx) = start(&agent, Blocking::Index, fast());
    assert_eq!(changed(next(&mut rx).await), 1);
    assert!(matches!(next(&mut rx).await, Update::Unchanged { .. }));
    assert_eq!(changed(next(&mut rx).await), 2);
    let queries = agent.wait_queries(4).await;
    assert_eq!(queries[0], "passing=1");
    assert_eq!(queries[1], "passing=1&index=1&wait=1s", "0 is clamped to 1");
    assert_eq!(
        queries[2], "passing=1",
        "a missing index reads as 0, which is lower: a fresh read"
    );
    assert_eq!(queries[3], "passing=1&index=7&wait=1s");
}

#[tokio::test]
async fn server_errors_reset_the_index_and_back_off() {
    let agent = ScriptedAgent::start(vec![
        Reply::json(20, r#"{"V":1}"#),
        Reply::status(500, "rpc error: No cluster leader"),
        Reply::status(503, "unavailable"),
        Reply::json(21, r#"{"V":1}"#),
        Reply::json(22, r#"{"V":2}"#),
    ])
    .await;
    let (_w, mut rx) = start(&agent, Blocking::Index, fast());
    assert_eq!(changed(next(&mut rx).await), 1);
    match next(&mut rx).await {
        Update::Failed(AgentError::Status { status, text, .. }) => {
            assert_eq!(status, 500);
            assert_eq!(text, "rpc error: No cluster leader");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(next(&mut rx).await, Update::Failed(_)));
    assert!(
        matches!(next(&mut rx).await, Update::Unchanged { .. }),
        "the value after recovery is the one already delivered"
    );
    assert_eq!(changed(next(&mut rx).await), 2);
    let queries = agent.wait_queries(5).await;
    assert_eq!(queries[1], "passing=1&index=20&wait=1s");
    assert_eq!(queries[2], "passing=1", "reset to 0 after the 500");
    assert_eq!(queries[3], "passing=1", "and after the 503");
    assert_eq!(queries[4], "passing=1&index=21&wait=1s");
}

#[tokio::test]
async fn malformed_json_is_an_error_and_the_last_good_value_stays() {
    let agent = ScriptedAgent::start(vec![
        Reply::json(5, r#"{"V":1}"#),
        Reply::json(6, r#"{"V": "one"}"#),
        Reply::json(7, r#"{"V":1"#),
        Reply::json(8, r#"{"V":1}"#),
    ])
    .await;
    let (_w, mut rx) = start(&agent, Blocking::Index, fast());
    assert_eq!(changed(next(&mut rx).await), 1);
    match next(&mut rx).await {
        Update::Failed(AgentError::Decode { at, path, .. }) => {
            assert_eq!(at, "V");
            assert_eq!(path, "/v1/thing");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        next(&mut rx).await,
        Update::Failed(AgentError::Decode { .. })
    ));
    assert!(matches!(next(&mut rx).await, Update::Unchanged { .. }));
    let queries = agent.wait_queries(4).await;
    assert_eq!(queries[2], "passing=1", "a bad body resets the index");
    assert_eq!(queries[3], "passing=1");
}

#[tokio::test]
async fn a_response_slower_than_the_timeout_is_abandoned() {
    let mut tuning = fast();
    tuning.wait = Duration::from_millis(200);
    tuning.timeout_margin = Duration::from_millis(200);
    let agent = ScriptedAgent::start(vec![
        Reply::json(5, r#"{"V":1}"#),
        // Timeout of this blocking call: 200 + 12 + 200 ms.
        Reply::json(6, r#"{"V":2}"#).after(Duration::from_secs(3)),
        Reply::json(9, r#"{"V":3}"#),
    ])
    .await;
    let (_w, mut rx) = start(&agent, Blocking::Index, tuning);
    assert_eq!(changed(next(&mut rx).await), 1);
    let started = std::time::Instant::now();
    assert!(matches!(
        next(&mut rx).await,
        Update::Failed(AgentError::Timeout { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(changed(next(&mut rx).await), 3);
    assert_eq!(agent.queries()[2], "passing=1");
}

#[tokio::test]
async fn survives_the_agent_going_away_and_coming_back() {
    let agent = ScriptedAgent::start(vec![Reply::json(40, r#"{"V":1}"#)]).await;
    let addr = agent.addr();
    let (tx, mut rx) = mpsc::channel(16);
    let _w = Watcher::spawn::<Thing, _, _>(client(addr), spec(Blocking::Index), fast(), tx, |u| u);
    assert_eq!(changed(next(&mut rx).await), 1);
    // The blocking call in flight dies with the agent; later dials are refused.
    agent.stop().await;
    match next(&mut rx).await {
        Update::Failed(AgentError::Transport { .. }) => {}
        other => panic!("{other:?}"),
    }
    match next(&mut rx).await {
        Update::Failed(AgentError::Transport { message, .. }) => {
            assert!(message.to_lowercase().contains("refused"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Back, with lower indexes.
    let again = ScriptedAgent::start_on(addr, vec![Reply::json(2, r#"{"V":5}"#)]).await;
    loop {
        match next(&mut rx).await {
            Update::Failed(_) => continue,
            Update::Changed { value, .. } => {
                assert_eq!(value.v, 5);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        again.queries()[0],
        "passing=1",
        "first call to the new agent is fresh"
    );
}

#[tokio::test]
async fn a_blocking_call_is_abandoned_when_another_request_cannot_reach_the_agent() {
    let agent = ScriptedAgent::start(vec![
        Reply::json(5, r#"{"V":1}"#),
        // The blocking call: a restarted agent holds an index from before.
        Reply::json(5, r#"{"V":1}"#).after(Duration::from_secs(30)),
        // Another request through the same client, which times out.
        Reply::json(9, "{}").after(Duration::from_secs(30)),
        Reply::json(2, r#"{"V":2}"#),
    ])
    .await;
    let shared = client(agent.addr());
    let (tx, mut rx) = mpsc::channel(16);
    let _w = Watcher::spawn(shared.clone(), spec(Blocking::Index), fast(), tx, |u| u);
    assert_eq!(changed(next(&mut rx).await), 1);
    agent.wait_queries(2).await;
    let probe = shared
        .get("/v1/other", &[], Duration::from_millis(50))
        .await;
    assert!(
        matches!(probe, Err(AgentError::Timeout { .. })),
        "{probe:?}"
    );
    assert_eq!(changed(next(&mut rx).await), 2);
    let queries = agent.queries();
    assert_eq!(queries[1], "passing=1&index=5&wait=1s");
    assert_eq!(
        queries[3], "passing=1",
        "a fresh read, without the old index"
    );
}

#[tokio::test]
async fn hash_blocking_sends_the_content_hash_and_no_index() {
    let agent = ScriptedAgent::start(vec![
        Reply::json(0, r#"{"V":1}"#).without_index().hash("aaa"),
        Reply::json(0, r#"{"V":2}"#).without_index().hash("bbb"),
        Reply::status(404, "unknown service ID: x"),
        Reply::json(0, r#"{"V":2}"#).without_index().hash("bbb"),
    ])
    .await;
    let (_w, mut rx) = start(&agent, Blocking::Hash, fast());
    assert_eq!(changed(next(&mut rx).await), 1);
    assert_eq!(changed(next(&mut rx).await), 2);
    assert!(matches!(
        next(&mut rx).await,
        Update::Failed(AgentError::Status { .. })
    ));
    assert!(matches!(next(&mut rx).await, Update::Unchanged { .. }));
    let queries = agent.wait_queries(4).await;
    assert_eq!(queries[0], "passing=1");
    assert_eq!(queries[1], "passing=1&hash=aaa&wait=1s");
    assert_eq!(queries[2], "passing=1&hash=bbb&wait=1s");
    assert_eq!(
        queries[3], "passing=1",
        "restart without hash after an error"
    );
}

#[tokio::test]
async fn a_forced_deadline_abandons_the_blocking_call_for_a_fresh_read() {
    let mut tuning = fast();
    tuning.wait = Duration::from_secs(30);
    let agent = ScriptedAgent::start(vec![
        Reply::json(5, r#"{"V":1}"#),
        Reply::json(6, r#"{"V":1}"#).after(Duration::from_secs(20)),
        Reply::json(6, r#"{"V":2}"#),
    ])
    .await;
    let (force_tx, force_rx) = watch::channel(None);
    let (tx, mut rx) = mpsc::channel(16);
    let _w = Watcher::spawn_forced::<Thing, _, _>(
        client(agent.addr()),
        spec(Blocking::Index),
        tuning,
        Some(force_rx),
        tx,
        |u| u,
    );
    assert_eq!(changed(next(&mut rx).await), 1);
    force_tx.send_replace(Some(Instant::now() + Duration::from_millis(200)));
    assert_eq!(changed(next(&mut rx).await), 2);
    let queries = agent.wait_queries(3).await;
    assert_eq!(queries[1], "passing=1&index=5&wait=30s");
    assert_eq!(queries[2], "passing=1", "the forced read is non-blocking");
}

#[tokio::test]
async fn stops_when_the_receiver_is_dropped() {
    let agent = ScriptedAgent::start(vec![Reply::json(5, r#"{"V":1}"#)]).await;
    let (w, mut rx) = start(&agent, Blocking::Index, fast());
    assert_eq!(changed(next(&mut rx).await), 1);
    drop(rx);
    let started = std::time::Instant::now();
    // The task notices the closed channel even mid-request.
    while !w._task.is_finished() {
        assert!(started.elapsed() < Duration::from_secs(3));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn backoff_grows_to_the_cap_and_never_reaches_zero() {
    let base = Duration::from_millis(100);
    let cap = Duration::from_secs(10);
    for _ in 0..100 {
        let first = backoff(1, base, cap);
        assert!(
            first >= Duration::from_millis(50) && first <= base,
            "{first:?}"
        );
        let fourth = backoff(4, base, cap);
        assert!(fourth >= Duration::from_millis(400) && fourth <= Duration::from_millis(800));
        let late = backoff(1000, base, cap);
        assert!(late >= cap / 2 && late <= cap, "{late:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_bucket_lets_a_burst_through_then_paces() {
    let mut bucket = TokenBucket::new(2, Duration::from_secs(1));
    let t0 = Instant::now();
    bucket.take().await;
    bucket.take().await;
    assert_eq!(t0.elapsed(), Duration::ZERO, "a burst of two is immediate");
    bucket.take().await;
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    bucket.take().await;
    assert_eq!(t0.elapsed(), Duration::from_secs(2));
    // A quiet period refills it, so the next change is not delayed.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let t1 = Instant::now();
    bucket.take().await;
    bucket.take().await;
    assert_eq!(t1.elapsed(), Duration::ZERO);
}

#[tokio::test]
async fn a_flapping_resource_is_paced_by_the_bucket() {
    let mut tuning = fast();
    tuning.burst = 2;
    tuning.refill = Duration::from_millis(100);
    // Every answer changes, immediately: the loop must not spin.
    let agent = ScriptedAgent::flapping().await;
    let (_w, mut rx) = start(&agent, Blocking::Index, tuning);
    let t0 = Instant::now();
    for _ in 0..5 {
        let _ = next(&mut rx).await;
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "5 requests with a burst of 2 take at least 3 refills, took {:?}",
        t0.elapsed()
    );
    assert!(agent.queries().len() <= 6);
}

#[tokio::test]
async fn a_spec_with_a_body_posts_it_with_every_blocking_call() {
    let agent = ScriptedAgent::start(vec![
        Reply::json(10, r#"{"V":1}"#),
        Reply::json(11, r#"{"V":2}"#),
    ])
    .await;
    let (tx, mut rx) = mpsc::channel(16);
    let spec = WatchSpec {
        body: Some(bytes::Bytes::from_static(br#"{"OverrideProtocol":"http"}"#)),
        ..spec(Blocking::Index)
    };
    let _w = Watcher::spawn(client(agent.addr()), spec, fast(), tx, |u: Update<Thing>| u);
    assert_eq!(changed(next(&mut rx).await), 1);
    assert_eq!(changed(next(&mut rx).await), 2);
    let queries = agent.wait_queries(3).await;
    assert_eq!(queries[1], "passing=1&index=10&wait=1s", "still blocking");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while agent.bodies().len() < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let bodies = agent.bodies();
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    for (method, body) in bodies {
        assert_eq!(method, "POST");
        assert_eq!(body, r#"{"OverrideProtocol":"http"}"#);
    }
}
