//! The source follows each upstream's discovery chain, against the fake agent.

use super::*;
use crate::api::agent::MeshGatewayConfig;

const CHAIN_DB: &str = "/v1/discovery-chain/db";
const HEALTH_DB: &str = "/v1/health/connect/db";
const DEFAULT_CHAIN: &str = include_str!("../chain/testdata/default.json");
const DEFAULT_SUBSET: &str = include_str!("../chain/testdata/default_subset.json");

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// An instance of `db` at `addr` whose own check is `status`.
fn db_instance(addr: &str, port: u16, status: &str) -> Value {
    let mut entry = health_entry("db", addr, "", port);
    entry["Checks"] = json!([{ "Status": "passing" }, { "Status": status }]);
    entry
}

/// The ID of the first target of `db`'s first cluster.
fn db_target(s: &Snapshot) -> Option<String> {
    let db = s.upstream("db")?;
    Some(db.routing.clusters.first()?.targets.first()?.id.clone())
}

fn db_addrs(s: &Snapshot) -> Vec<String> {
    s.upstream("db").map_or_else(Vec::new, |u| {
        u.all_endpoints().iter().map(|e| e.addr.clone()).collect()
    })
}

/// Waits (at most 5 s) until `path` has been asked for more than `before` times: the
/// answer to the request before has been handed to the source.
async fn asked_more(agent: &FakeAgent, path: &str, before: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let count = || {
        agent
            .requests()
            .iter()
            .filter(|r| r.starts_with(path))
            .count()
    };
    while count() <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} not asked again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_upstream_follows_its_chain_and_the_targets_health() {
    let world = World::new().await;
    world.agent.set(CHAIN_DB, json_of(DEFAULT_SUBSET));
    world.agent.set(
        HEALTH_DB,
        json!([
            db_instance("10.0.0.1", 21001, "passing"),
            db_instance("10.0.0.2", 21002, "warning"),
            db_instance("10.0.0.3", 21003, "critical"),
        ]),
    );
    let mut rx = world.sidecar_for_web();
    let snap = until(&mut rx, "db by its chain", |s| {
        s.is_complete()
            && db_target(s).as_deref() == Some("v2.db.default.default.dc1")
            && !db_addrs(s).is_empty()
    })
    .await;
    assert_eq!(
        db_addrs(&snap),
        ["10.0.0.1:21001"],
        "the subset is OnlyPassing"
    );
    let db = snap.upstream("db").unwrap();
    assert_eq!(
        db.routing.routes[0].request_timeout,
        Some(Duration::from_secs(20))
    );
    let cache = snap.upstream("cache").unwrap();
    assert_eq!(
        cache.routing.clusters[0].targets[0].id, "cache.default.default.dc1",
        "no chain for cache (404): straight to its instances"
    );
    assert!(!cache.all_endpoints().is_empty());
    let requests = world.agent.requests();
    let filter = "filter=Service.Meta.version%20%3D%3D%20%222%22";
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with(&format!("{HEALTH_DB}?dc=dc1&{filter}"))),
        "the subset's filter goes to the agent: {requests:#?}"
    );
    assert!(
        !requests.iter().any(|r| r.contains("passing")),
        "health is judged from the checks"
    );

    // The chain changes: a new routing, the new target's instances (warning ones too).
    world.agent.set(CHAIN_DB, json_of(DEFAULT_CHAIN));
    let snap = until(&mut rx, "db by the default chain", |s| {
        db_target(s).as_deref() == Some("db.default.default.dc1") && db_addrs(s).len() == 2
    })
    .await;
    assert_eq!(db_addrs(&snap), ["10.0.0.1:21001", "10.0.0.2:21002"]);
}

#[tokio::test]
async fn without_chains_upstreams_go_straight_to_their_destination_until_one_appears() {
    let world = World::new().await;
    let mut rx = world.sidecar_for_web();
    let snap = until(&mut rx, "everything", ready).await;
    assert_eq!(db_target(&snap).as_deref(), Some("db.default.default.dc1"));
    let db = snap.upstream("db").unwrap();
    assert_eq!(db.routing.routes.len(), 1);
    assert_eq!(
        db.routing.clusters[0].targets[0].sni,
        format!("db.default.dc1.internal.{}", world.ca.trust_domain())
    );

    // The agent is asked again after a while and the chain is followed.
    world.agent.set(CHAIN_DB, json_of(DEFAULT_SUBSET));
    until(&mut rx, "db by its chain", |s| {
        db_target(s).as_deref() == Some("v2.db.default.default.dc1")
    })
    .await;
}

#[tokio::test]
async fn a_failing_or_broken_chain_keeps_the_last_good_routing() {
    let world = World::new().await;
    world.agent.set(CHAIN_DB, json_of(DEFAULT_SUBSET));
    let mut rx = world.sidecar_for_web();
    until(&mut rx, "db by its chain", |s| {
        db_target(s).as_deref() == Some("v2.db.default.default.dc1") && !db_addrs(s).is_empty()
    })
    .await;

    let mut broken = json_of(DEFAULT_SUBSET);
    broken["Chain"]["StartNode"] = json!("resolver:nowhere");
    let before = world.agent.requests().len();
    world.agent.set(CHAIN_DB, broken);
    asked_more(
        &world.agent,
        CHAIN_DB,
        count_of(&world.agent, CHAIN_DB, before),
    )
    .await;
    let before = world.agent.requests().len();
    world
        .agent
        .set_status(CHAIN_DB, 500, "rpc error: No cluster leader".into());
    asked_more(
        &world.agent,
        CHAIN_DB,
        count_of(&world.agent, CHAIN_DB, before),
    )
    .await;

    // Something else changes: the snapshot still routes db by the last good chain.
    world.agent.set(
        HEALTH_DB,
        json!([
            db_instance("10.0.0.1", 21001, "passing"),
            db_instance("10.0.0.4", 21004, "passing"),
        ]),
    );
    let snap = until(&mut rx, "two db instances", |s| db_addrs(s).len() == 2).await;
    assert_eq!(
        db_target(&snap).as_deref(),
        Some("v2.db.default.default.dc1")
    );
}

/// How many requests for `path` were among the first `first` requests.
fn count_of(agent: &FakeAgent, path: &str, first: usize) -> usize {
    agent
        .requests()
        .iter()
        .take(first)
        .filter(|r| r.starts_with(path))
        .count()
}

#[tokio::test]
async fn an_upstream_s_overrides_are_posted_with_its_chain_request() {
    let world = World::new().await;
    let db = Upstream {
        datacenter: "dc2".into(),
        mesh_gateway: MeshGatewayConfig {
            mode: "local".into(),
        },
        config: json!({ "protocol": "http", "connect_timeout_ms": 2500 })
            .as_object()
            .cloned()
            .unwrap(),
        ..upstream("db", 9191)
    };
    world.agent.set(REGISTRATION, sidecar(vec![db]));
    let mut rx = world.source(ProxySelector::ProxyId("web-sidecar-proxy".into()), None);
    let snap = until(&mut rx, "db", |s| s.upstream("db").is_some()).await;
    assert_eq!(db_target(&snap).as_deref(), Some("db.default.default.dc2"));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let post = loop {
        if let Some(post) = world.agent.posts().into_iter().find(|(p, _)| p == CHAIN_DB) {
            break post;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no POST of the chain"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        json_of(&post.1),
        json!({
            "OverrideMeshGateway": { "Mode": "local" },
            "OverrideProtocol": "http",
            "OverrideConnectTimeout": "2.5s"
        })
    );
    let requests = world.agent.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with(&format!("{CHAIN_DB}?compile-dc=dc2"))),
        "compiled in the upstream's datacenter: {requests:#?}"
    );
}
