//! The source against a fake agent that serves canned JSON with real blocking semantics.

use std::time::Duration;

use serde_json::json;
use time::format_description::well_known::Rfc3339;

use super::agent_self::{
    SOURCE_ACL_POLICY, SOURCE_ACLS_OFF, SOURCE_FLAG, SOURCE_HEADER, SOURCE_INTENTION_POLICY,
    default_from_self,
};
use super::*;
use crate::api::agent::AgentService;
use crate::api::agent::{AgentServiceConnectProxyConfig, Upstream};
use crate::api::agent_self::AgentSelf;
use crate::api::ca::CARoot;
use crate::api::ca::{IndexedCARoots, IssuedCert};
use crate::consul::http::AgentAddr;
use crate::consul::http::AgentClientConfig;
use crate::consul::testing::FakeAgent;
use crate::identity::ServiceId;
use crate::model::{self, Protocol};
use crate::publish::same_arc;
use ferrule_dev::ca::{DevCa, LeafSpec};
use serde_json::Value;

const REGISTRATION: &str = "/v1/agent/service/web-sidecar-proxy";
const LEAF_PATH: &str = "/v1/agent/connect/ca/leaf/web";
const ROOTS_PATH: &str = "/v1/agent/connect/ca/roots";
const MATCH_PATH: &str = "/v1/connect/intentions/match";

fn tuning() -> Tuning {
    Tuning {
        wait: Duration::from_secs(5),
        timeout_margin: Duration::from_secs(2),
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(100),
        burst: 100,
        refill: Duration::from_millis(1),
        force_retry: Duration::from_secs(60),
        unsupported_retry: Duration::from_millis(300),
        poll: Duration::from_millis(50),
    }
}

fn roots_of(cas: &[&DevCa]) -> IndexedCARoots {
    IndexedCARoots {
        active_root_id: cas[0].id(),
        trust_domain: cas[0].trust_domain(),
        roots: cas
            .iter()
            .enumerate()
            .map(|(i, ca)| CARoot {
                id: ca.id(),
                name: "Consul CA Primary Cert".into(),
                serial_number: ca.serial_number(),
                signing_key_id: ca.signing_key_id(),
                external_trust_domain: ca.cluster_id().into(),
                root_cert: ca.cert_pem().into(),
                active: i == 0,
                private_key_type: "ec".into(),
                private_key_bits: 256,
                ..Default::default()
            })
            .collect(),
    }
}

fn leaf_of(ca: &DevCa, service: &str) -> IssuedCert {
    let leaf = ca.issue(&LeafSpec::service(service)).unwrap();
    IssuedCert {
        serial_number: leaf.serial_hex.clone(),
        cert_pem: leaf.cert_pem.clone(),
        private_key_pem: leaf.key_pem.clone(),
        service: service.into(),
        service_uri: leaf.service_uri.clone(),
        valid_after: leaf.valid_after.format(&Rfc3339).unwrap(),
        valid_before: leaf.valid_before.format(&Rfc3339).unwrap(),
        create_index: 1,
        modify_index: 1,
        ..Default::default()
    }
}

pub(super) fn upstream(name: &str, port: u16) -> Upstream {
    Upstream {
        destination_type: "service".into(),
        destination_name: name.into(),
        local_bind_port: port,
        ..Default::default()
    }
}

pub(super) fn sidecar(upstreams: Vec<Upstream>) -> AgentService {
    AgentService {
        kind: "connect-proxy".into(),
        id: "web-sidecar-proxy".into(),
        service: "web-sidecar-proxy".into(),
        port: 21000,
        datacenter: "dc1".into(),
        content_hash: "h".into(),
        proxy: Some(AgentServiceConnectProxyConfig {
            destination_service_name: "web".into(),
            destination_service_id: "web".into(),
            local_service_address: "127.0.0.1".into(),
            local_service_port: 8080,
            upstreams,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn health_entry(service: &str, node_addr: &str, svc_addr: &str, port: u16) -> Value {
    json!({
        "Node": { "ID": "n1", "Node": "box", "Address": node_addr, "Datacenter": "dc1",
                  "TaggedAddresses": { "lan": node_addr, "wan": node_addr }, "Meta": {} },
        "Service": { "Kind": "connect-proxy", "ID": format!("{service}-sidecar-proxy"),
                     "Service": format!("{service}-sidecar-proxy"), "Tags": [], "Meta": {},
                     "Address": svc_addr, "Port": port,
                     "Proxy": { "DestinationServiceName": service, "Mode": "",
                                "MeshGateway": {}, "Expose": {} },
                     "Connect": {}, "PeerName": "" },
        "Checks": [ { "Status": "passing" } ]
    })
}

fn allow(source: &str) -> Value {
    json!({ "web": [ {
        "SourceNS": "default", "SourceName": source, "DestinationNS": "default",
        "DestinationName": "web", "SourceType": "consul", "Action": "allow",
        "Precedence": 9, "CreateIndex": 5, "ModifyIndex": 5
    } ] })
}

/// An agent with `web`'s sidecar (upstreams `db` and `cache`), its leaf, the roots, an
/// intention and healthy instances of both upstreams.
struct World {
    agent: FakeAgent,
    ca: DevCa,
}

impl World {
    async fn new() -> World {
        let agent = FakeAgent::start().await;
        let ca = DevCa::generate(None).unwrap();
        let reg = sidecar(vec![upstream("db", 9191), upstream("cache", 9292)]);
        agent.set(
            "/v1/agent/services",
            json!({ "web": { "ID": "web", "Service": "web", "Port": 8080 },
                    "web-sidecar-proxy": reg.clone() }),
        );
        agent.set(REGISTRATION, &reg);
        agent.set(ROOTS_PATH, roots_of(&[&ca]));
        agent.set(LEAF_PATH, leaf_of(&ca, "web"));
        agent.set(MATCH_PATH, allow("api"));
        agent.set(
            "/v1/agent/self",
            json!({ "Config": { "Datacenter": "dc1", "NodeName": "box" },
                    "DebugConfig": AgentSelf::debug_config_for("deny", false, "allow") }),
        );
        agent.set(
            "/v1/health/connect/db",
            json!([health_entry("db", "10.0.0.1", "", 21001)]),
        );
        agent.set(
            "/v1/health/connect/cache",
            json!([health_entry("cache", "10.0.0.2", "10.0.0.3", 21002)]),
        );
        World { agent, ca }
    }

    fn source(
        &self,
        selector: ProxySelector,
        default: Option<Action>,
    ) -> watch::Receiver<Arc<Snapshot>> {
        let addr: AgentAddr = self.agent.addr().to_string().parse().unwrap();
        let mut config = ConsulConfig::new(AgentClientConfig::new(addr), selector);
        config.default_action = default;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        ConsulSource::new(config, provider)
            .unwrap()
            .with_tuning(tuning())
            .spawn()
    }

    fn sidecar_for_web(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.source(ProxySelector::SidecarFor("web".into()), None)
    }
}

/// Waits (at most 5 s) for a snapshot that satisfies `pred`.
async fn until(
    rx: &mut watch::Receiver<Arc<Snapshot>>,
    what: &str,
    pred: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let snap = rx.borrow_and_update().clone();
        if pred(&snap) {
            return snap;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => panic!("no snapshot with {what} within 5 s; last: {snap:#?}"),
        }
    }
}

fn ready(s: &Snapshot) -> bool {
    s.is_complete()
        && s.upstreams.len() == 2
        && s.upstreams.iter().all(|u| !u.all_endpoints().is_empty())
}

#[tokio::test]
async fn sidecar_for_fills_the_whole_snapshot_from_the_agent() {
    let world = World::new().await;
    let mut rx = world.sidecar_for_web();
    let snap = until(&mut rx, "everything", ready).await;

    let inbound = snap.inbound.as_ref().unwrap();
    assert_eq!(inbound.bind, "0.0.0.0:21000".parse().unwrap());
    assert_eq!(inbound.local_app, "127.0.0.1:8080");
    assert_eq!(inbound.protocol, Protocol::Tcp);
    assert_eq!(inbound.local_connect_timeout, Duration::from_millis(5000));
    assert_eq!(inbound.handshake_timeout, Duration::from_millis(10_000));

    let td = world.ca.trust_domain();
    assert_eq!(snap.bundle.as_ref().unwrap().trust_domain, td);
    assert_eq!(snap.leaf.as_ref().unwrap().id.service, "web");

    let db = &snap.upstreams[0];
    assert_eq!(
        (db.name.as_str(), db.bind),
        ("db", "127.0.0.1:9191".parse().unwrap())
    );
    assert_eq!(db.connect_timeout, Duration::from_millis(5000));
    assert_eq!(
        db.all_endpoints()[0].addr,
        "10.0.0.1:21001",
        "Service.Address empty: the node's"
    );
    assert_eq!(
        db.all_endpoints()[0].identity,
        ServiceId::new(&td, "default", "dc1", "db")
    );
    let cache = &snap.upstreams[1];
    assert_eq!(cache.all_endpoints()[0].addr, "10.0.0.3:21002");
    assert_eq!(cache.all_endpoints()[0].identity.service, "cache");

    let default = snap.default_action.as_ref().unwrap();
    assert_eq!(
        (default.action, default.source),
        (Action::Deny, SOURCE_INTENTION_POLICY)
    );
    let ixns = snap.intentions.as_ref().unwrap();
    assert_eq!(ixns.default_action(), Action::Deny);
    assert!(
        ixns.rules()[0].to_string().contains("api"),
        "{}",
        ixns.rules()[0]
    );

    let requests = world.agent.requests();
    let asked = |prefix: &str| requests.iter().any(|r| r.starts_with(prefix));
    assert!(asked("/v1/agent/services"));
    assert!(asked("/v1/agent/connect/ca/leaf/web"));
    assert!(asked(
        "/v1/connect/intentions/match?by=destination&name=web"
    ));
    assert!(
        asked("/v1/discovery-chain/db?compile-dc=dc1"),
        "{requests:#?}"
    );
    assert!(
        asked("/v1/health/connect/db?dc=dc1"),
        "no chain (404): straight to the destination's instances"
    );
    assert!(
        asked("/v1/agent/service/web-sidecar-proxy?hash="),
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| !r.contains("ns=") && !r.contains("partition=")),
        "Community Edition rejects ns/partition: {requests:#?}"
    );
}

#[tokio::test]
async fn upstreams_follow_the_registration() {
    let world = World::new().await;
    let mut rx = world.sidecar_for_web();
    let first = until(&mut rx, "everything", ready).await;

    world
        .agent
        .set(REGISTRATION, sidecar(vec![upstream("cache", 9393)]));
    let snap = until(&mut rx, "db gone", |s| s.upstreams.len() == 1).await;
    assert_eq!(snap.upstreams[0].name, "cache");
    assert_eq!(snap.upstreams[0].bind, "127.0.0.1:9393".parse().unwrap());
    assert!(!snap.upstreams[0].all_endpoints().is_empty());
    assert!(Arc::ptr_eq(
        first.leaf.as_ref().unwrap(),
        snap.leaf.as_ref().unwrap()
    ));
    assert!(Arc::ptr_eq(
        first.intentions.as_ref().unwrap(),
        snap.intentions.as_ref().unwrap()
    ));

    world.agent.set(
        REGISTRATION,
        sidecar(vec![upstream("cache", 9393), upstream("db", 9191)]),
    );
    let snap = until(&mut rx, "db back with endpoints", |s| {
        s.upstreams.len() == 2 && s.upstreams.iter().all(|u| !u.all_endpoints().is_empty())
    })
    .await;
    assert_eq!(snap.upstreams[1].name, "db");
}

#[tokio::test]
async fn endpoints_follow_health() {
    let world = World::new().await;
    let mut rx = world.sidecar_for_web();
    until(&mut rx, "everything", ready).await;
    world.agent.set(
        "/v1/health/connect/db",
        json!([
            health_entry("db", "10.0.0.1", "", 21001),
            health_entry("db", "10.0.0.9", "", 21009)
        ]),
    );
    until(&mut rx, "two db instances", |s| {
        s.upstreams[0].all_endpoints().len() == 2
    })
    .await;
    world.agent.set("/v1/health/connect/db", json!([]));
    let snap = until(&mut rx, "no db instance", |s| {
        s.upstreams[0].all_endpoints().is_empty()
    })
    .await;
    assert_eq!(
        snap.upstreams[1].all_endpoints().len(),
        1,
        "cache untouched"
    );
}

#[tokio::test]
async fn an_intentions_change_is_a_new_intentions_arc_and_nothing_else() {
    let world = World::new().await;
    let mut rx = world.sidecar_for_web();
    let first = until(&mut rx, "everything", ready).await;
    world.agent.set(MATCH_PATH, allow("billing"));
    let snap = until(&mut rx, "new intentions", |s| {
        !same_arc(&s.intentions, &first.intentions)
    })
    .await;
    assert!(
        snap.intentions.as_ref().unwrap().rules()[0]
            .to_string()
            .contains("billing")
    );
    assert!(Arc::ptr_eq(
        first.leaf.as_ref().unwrap(),
        snap.leaf.as_ref().unwrap()
    ));
    assert!(Arc::ptr_eq(
        first.bundle.as_ref().unwrap(),
        snap.bundle.as_ref().unwrap()
    ));
    assert_eq!(first.upstreams, snap.upstreams);
    assert!(
        Arc::ptr_eq(&first.upstreams[0].routing, &snap.upstreams[0].routing),
        "an unchanged routing keeps its Arc"
    );
}

#[tokio::test]
async fn a_leaf_change_is_a_new_leaf_and_the_same_intentions() {
    let world = World::new().await;
    let mut rx = world.sidecar_for_web();
    let first = until(&mut rx, "everything", ready).await;
    let next = leaf_of(&world.ca, "web");
    world.agent.set(LEAF_PATH, &next);
    let snap = until(&mut rx, "the new leaf", |s| {
        s.leaf
            .as_ref()
            .is_some_and(|l| l.serial == next.serial_number)
    })
    .await;
    assert!(Arc::ptr_eq(
        first.intentions.as_ref().unwrap(),
        snap.intentions.as_ref().unwrap()
    ));
    assert!(Arc::ptr_eq(
        first.bundle.as_ref().unwrap(),
        snap.bundle.as_ref().unwrap()
    ));
}

#[tokio::test]
async fn a_root_rotation_trusts_both_roots() {
    let world = World::new().await;
    let mut rx = world.sidecar_for_web();
    until(&mut rx, "everything", ready).await;
    let new_root = DevCa::generate(Some(world.ca.cluster_id())).unwrap();
    world
        .agent
        .set(ROOTS_PATH, roots_of(&[&new_root, &world.ca]));
    let snap = until(&mut rx, "two roots", |s| {
        s.bundle.as_ref().is_some_and(|b| b.roots.len() == 2)
    })
    .await;
    assert_eq!(
        snap.bundle.as_ref().unwrap().trust_domain,
        world.ca.trust_domain()
    );
}

#[tokio::test]
async fn agent_errors_and_garbage_keep_the_last_good_snapshot() {
    let world = World::new().await;
    let mut rx = world.sidecar_for_web();
    let good = until(&mut rx, "everything", ready).await;

    world
        .agent
        .set_status(MATCH_PATH, 500, "rpc error: No cluster leader".into());
    world.agent.set_status(ROOTS_PATH, 200, "{ not json".into());
    world.agent.set(
        LEAF_PATH,
        json!({ "SerialNumber": "01", "CertPEM": "garbage" }),
    );
    world
        .agent
        .set("/v1/health/connect/db", json!({ "not": "a list" }));
    world.agent.remove(REGISTRATION);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        Arc::ptr_eq(&rx.borrow(), &good),
        "errors must not change the snapshot"
    );

    // The agent recovers: changes flow again.
    world.agent.set(MATCH_PATH, allow("billing"));
    world.agent.set(ROOTS_PATH, roots_of(&[&world.ca]));
    world
        .agent
        .set(REGISTRATION, sidecar(vec![upstream("db", 9191)]));
    let snap = until(&mut rx, "recovery", |s| {
        s.upstreams.len() == 1 && !same_arc(&s.intentions, &good.intentions)
    })
    .await;
    assert!(Arc::ptr_eq(
        good.leaf.as_ref().unwrap(),
        snap.leaf.as_ref().unwrap()
    ));
}

#[tokio::test]
async fn without_agent_read_the_default_comes_from_the_acl_header() {
    let world = World::new().await;
    world.agent.set_status(
        "/v1/agent/self",
        403,
        "Permission denied: token lacks agent:read".into(),
    );
    world.agent.set_acl_default(Some("deny"));
    let mut rx = world.source(ProxySelector::ProxyId("web-sidecar-proxy".into()), None);
    let snap = until(&mut rx, "intentions", |s| s.intentions.is_some()).await;
    let default = snap.default_action.as_ref().unwrap();
    assert_eq!(
        (default.action, default.source),
        (Action::Deny, SOURCE_HEADER)
    );
    assert_eq!(
        snap.intentions.as_ref().unwrap().default_action(),
        Action::Deny
    );
    assert!(
        !world
            .agent
            .requests()
            .iter()
            .any(|r| r.starts_with("/v1/agent/services")),
        "--proxy-id needs no lookup"
    );
}

#[tokio::test]
async fn acls_enabled_without_an_intention_policy_use_the_acl_default() {
    let world = World::new().await;
    world.agent.set(
        "/v1/agent/self",
        json!({ "Config": { "Datacenter": "dc1" },
                "DebugConfig": AgentSelf::debug_config_for("", true, "deny") }),
    );
    let mut rx = world.sidecar_for_web();
    let snap = until(&mut rx, "intentions", |s| s.intentions.is_some()).await;
    let default = snap.default_action.as_ref().unwrap();
    assert_eq!(
        (default.action, default.source),
        (Action::Deny, SOURCE_ACL_POLICY)
    );

    let off = AgentSelf {
        debug_config: AgentSelf::debug_config_for("", false, "deny"),
        ..Default::default()
    };
    let d = default_from_self(&off).unwrap();
    assert_eq!((d.action, d.source), (Action::Allow, SOURCE_ACLS_OFF));
}

#[tokio::test]
async fn the_flag_overrides_the_agent() {
    let world = World::new().await;
    let mut rx = world.sidecar_for_web_with(Some(Action::Allow));
    assert_eq!(
        rx.borrow()
            .default_action
            .as_ref()
            .map(|d| (d.action, d.source)),
        Some((Action::Allow, SOURCE_FLAG)),
        "known before the agent answers"
    );
    let snap = until(&mut rx, "intentions", |s| s.intentions.is_some()).await;
    assert_eq!(
        snap.intentions.as_ref().unwrap().default_action(),
        Action::Allow
    );
    assert!(
        !world
            .agent
            .requests()
            .iter()
            .any(|r| r.starts_with("/v1/agent/self"))
    );
}

impl World {
    fn sidecar_for_web_with(&self, default: Option<Action>) -> watch::Receiver<Arc<Snapshot>> {
        self.source(ProxySelector::SidecarFor("web".into()), default)
    }
}

#[tokio::test]
async fn a_sidecar_registered_later_is_found() {
    let world = World::new().await;
    world.agent.set(
        "/v1/agent/services",
        json!({ "web": { "ID": "web", "Service": "web", "Port": 8080 } }),
    );
    let mut rx = world.sidecar_for_web();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.borrow().inbound.is_none());
    world.agent.set(
        "/v1/agent/services",
        json!({ "web-sidecar-proxy": sidecar(vec![]) }),
    );
    until(&mut rx, "the inbound side", |s| {
        s.inbound.is_some() && s.is_complete()
    })
    .await;
}

#[tokio::test]
async fn the_snapshot_is_empty_but_published_while_the_agent_is_away() {
    let world = World::new().await;
    // An address nobody listens on.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = ConsulConfig::new(
        AgentClientConfig::new(addr.to_string().parse().unwrap()),
        ProxySelector::SidecarFor("web".into()),
    );
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let rx = ConsulSource::new(config, provider)
        .unwrap()
        .with_tuning(tuning())
        .spawn();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!rx.borrow().is_complete());
    drop(world);
}

/// The Workload API's identity for `service`, from `ca`.
fn workload_identity(ca: &DevCa, service: &str) -> Arc<crate::workload::Identity> {
    let leaf = ca.issue(&LeafSpec::service(service)).unwrap();
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let leaf =
        model::parse_leaf(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), &provider).unwrap();
    let bundle = model::parse_bundle(ca.cert_pem().as_bytes(), &ca.trust_domain()).unwrap();
    Arc::new(crate::workload::Identity {
        leaf: Arc::new(leaf),
        bundle: Arc::new(bundle),
        withdrawn: None,
    })
}

#[tokio::test]
async fn with_the_workload_api_identity_comes_from_it_and_the_rest_from_the_agent() {
    let world = World::new().await;
    let spire = DevCa::generate(None).unwrap();
    let (tx, feed) = watch::channel(None);
    let addr: AgentAddr = world.agent.addr().to_string().parse().unwrap();
    let config = ConsulConfig::new(
        AgentClientConfig::new(addr),
        ProxySelector::SidecarFor("web".into()),
    );
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut rx = ConsulSource::new(config, provider)
        .unwrap()
        .with_tuning(tuning())
        .with_identity(feed)
        .spawn();

    // Registration, intentions and endpoints arrive; without an SVID nothing is served.
    let snap = until(&mut rx, "intentions and endpoints", |s| {
        s.intentions.is_some() && s.upstreams.len() == 2
    })
    .await;
    assert!(snap.leaf.is_none() && snap.bundle.is_none());
    assert!(snap.upstreams.iter().all(|u| u.all_endpoints().is_empty()));

    let id = workload_identity(&spire, "web");
    tx.send_replace(Some(id.clone()));
    let snap = until(&mut rx, "the workload identity", ready).await;
    assert!(Arc::ptr_eq(snap.leaf.as_ref().unwrap(), &id.leaf));
    assert!(Arc::ptr_eq(snap.bundle.as_ref().unwrap(), &id.bundle));
    // Upstreams are pinned in the SVID's trust domain, not the agent's.
    let db = &snap.upstreams[0].all_endpoints()[0].identity;
    assert_eq!(db.trust_domain, spire.trust_domain());
    let requests = world.agent.requests();
    assert!(
        !requests
            .iter()
            .any(|r| r.contains(LEAF_PATH) || r.contains(ROOTS_PATH)),
        "the agent's leaf and roots are not used: {requests:?}"
    );

    // An SVID of another service than the registration's destination is not served.
    tx.send_replace(Some(workload_identity(&spire, "api")));
    let snap = until(&mut rx, "no leaf", |s| s.leaf.is_none()).await;
    assert!(snap.bundle.is_some());

    tx.send_replace(Some(id.clone()));
    until(&mut rx, "the web leaf again", |s| {
        s.leaf.as_ref().is_some_and(|l| Arc::ptr_eq(l, &id.leaf))
    })
    .await;
}

mod chain;
mod xdc;
