//! The other side of the contract: ferrule's own Consul client against the dev agent.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use tokio::net::TcpListener;

use super::Agent;

async fn wait_for(
    snapshots: &mut tokio::sync::watch::Receiver<std::sync::Arc<ferrule_control::model::Snapshot>>,
    check: impl Fn(&ferrule_control::model::Snapshot) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if check(&snapshots.borrow_and_update()) {
                return;
            }
            snapshots.changed().await.unwrap();
        }
    })
    .await
    .expect("the snapshot never got there");
}

/// The other side of the contract: ferrule's own Consul client follows the dev agent to a
/// complete snapshot, and sees a root rotation.
#[tokio::test]
async fn the_consul_source_follows_the_dev_agent() {
    use std::sync::Arc;

    use ferrule_control::consul::{AgentClientConfig, ConsulConfig, ConsulSource, ProxySelector};
    use ferrule_control::identity::ServiceId;

    let agent = Agent::start().await;
    let db_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let db_port = db_listener.local_addr().unwrap().port();
    agent
        .register(json!({ "Name": "db", "Port": 5432,
                          "Connect": { "SidecarService": { "Port": db_port } } }))
        .await;
    agent
        .register(
            json!({ "Name": "web", "Port": 8080, "Connect": { "SidecarService": {
            "Proxy": { "Upstreams": [ { "DestinationName": "db", "LocalBindPort": 19191 } ] }
        } } }),
        )
        .await;
    let written = agent
        .put(
            "/v1/config",
            json!({ "Kind": "service-intentions", "Name": "web",
                    "Sources": [ { "Name": "api", "Action": "allow" } ] }),
        )
        .await;
    assert_eq!(written.status, StatusCode::OK);

    let mut config = ConsulConfig::new(
        AgentClientConfig::new(agent.agent.url().parse().unwrap()),
        ProxySelector::SidecarFor("web".to_owned()),
    );
    config.wait = Duration::from_secs(5);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut snapshots = ConsulSource::new(config, provider).unwrap().spawn();

    let td = agent.agent.trust_domain().to_owned();
    wait_for(&mut snapshots, |s| {
        s.is_complete()
            && s.upstreams
                .first()
                .is_some_and(|u| u.routing.has_endpoints())
    })
    .await;
    let snapshot = snapshots.borrow_and_update().clone();
    let leaf = snapshot.leaf.as_ref().unwrap();
    assert_eq!(leaf.id, ServiceId::new(&td, "default", "dc1", "web"));
    assert_eq!(snapshot.bundle.as_ref().unwrap().trust_domain, td);
    let upstream = &snapshot.upstreams[0];
    assert_eq!(upstream.name, "db");
    let endpoints = &upstream.routing.clusters[0].targets[0].endpoints;
    assert_eq!(endpoints[0].addr, format!("127.0.0.1:{db_port}"));
    assert_eq!(endpoints[0].identity.service, "db");
    assert_eq!(snapshot.inbound.as_ref().unwrap().bind.port(), 21000);

    let old_serial = leaf.serial.clone();
    let rotated = agent.rotate_ca().await;
    assert_eq!(rotated.status, StatusCode::OK);
    wait_for(&mut snapshots, |s| {
        s.bundle.as_ref().is_some_and(|b| b.roots.len() == 2)
            && s.leaf.as_ref().is_some_and(|l| l.serial != old_serial)
    })
    .await;
    drop(db_listener);
}

/// A `service-resolver` with a default subset reaches ferrule's Consul client as a
/// routing to that subset: its server name, and only the instances its filter selects.
#[tokio::test]
async fn a_default_subset_arrives_as_the_upstream_s_routing() {
    use std::sync::Arc;

    use ferrule_control::consul::{AgentClientConfig, ConsulConfig, ConsulSource, ProxySelector};

    let agent = Agent::start().await;
    let v1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let v2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    for (id, version, listener) in [("db-1", "v1", &v1), ("db-2", "v2", &v2)] {
        let port = listener.local_addr().unwrap().port();
        agent
            .register(json!({ "ID": id, "Name": "db", "Port": 5432,
                              "Meta": { "version": version },
                              "Connect": { "SidecarService": { "Port": port } } }))
            .await;
    }
    agent
        .register(
            json!({ "Name": "web", "Port": 8080, "Connect": { "SidecarService": {
            "Proxy": { "Upstreams": [ { "DestinationName": "db", "LocalBindPort": 19191 } ] }
        } } }),
        )
        .await;
    let written = agent
        .put(
            "/v1/config",
            json!({ "Kind": "service-resolver", "Name": "db", "DefaultSubset": "v2",
                    "Subsets": { "v1": { "Filter": "Service.Meta.version == v1" },
                                 "v2": { "Filter": "Service.Meta.version == v2" } } }),
        )
        .await;
    assert_eq!(written.status, StatusCode::OK, "{}", written.text());

    let mut config = ConsulConfig::new(
        AgentClientConfig::new(agent.agent.url().parse().unwrap()),
        ProxySelector::SidecarFor("web".to_owned()),
    );
    config.wait = Duration::from_secs(5);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut snapshots = ConsulSource::new(config, provider).unwrap().spawn();

    let v2_addr = format!("127.0.0.1:{}", v2.local_addr().unwrap().port());
    wait_for(&mut snapshots, |s| {
        s.upstream("db").is_some_and(|u| {
            let target = &u.routing.clusters[0].targets[0];
            target.id == "v2.db.default.default.dc1"
                && target.endpoints.iter().map(|e| &e.addr).eq([&v2_addr])
        })
    })
    .await;
    let snapshot = snapshots.borrow_and_update().clone();
    let routing = &snapshot.upstream("db").unwrap().routing;
    assert_eq!(routing.routes.len(), 1);
    assert_eq!(routing.clusters.len(), 1);
    let target = &routing.clusters[0].targets[0];
    let td = agent.agent.trust_domain().to_owned();
    assert_eq!(target.sni, format!("v2.db.default.dc1.internal.{td}"));
    assert_eq!(target.identity.service, "db");
    drop((v1, v2));
}
