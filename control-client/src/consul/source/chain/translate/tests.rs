//! Compiled chains as Consul returns them (`../testdata/*.json`) and health entries, and
//! the routing each must become.

use std::time::Duration;

use serde_json::json;

use super::super::super::gateways::key as gateway_key;
use super::*;
use crate::api::chain::DiscoveryChainResponse;
use crate::api::health::ServiceEntry;
use crate::model::Endpoint;
use crate::routing::Routing;

const TD: &str = "11111111-2222-3333-4444-555555555555.consul";
const DEFAULT_CHAIN: &str = include_str!("../testdata/default.json");
const DEFAULT_SUBSET: &str = include_str!("../testdata/default_subset.json");
const SPLITTER: &str = include_str!("../testdata/splitter.json");
const ROUTER: &str = include_str!("../testdata/router.json");
const FAILOVER: &str = include_str!("../testdata/failover.json");

fn chain(json: &str) -> CompiledDiscoveryChain {
    serde_json::from_str::<DiscoveryChainResponse>(json)
        .expect("a chain")
        .chain
}

fn plan(json: &str) -> Plan {
    translate(&chain(json)).expect("translates")
}

fn routed(plan: &Plan, tcp: bool, health: &TargetHealth) -> Routing {
    routed_through(plan, tcp, health, &MeshGateways::default())
}

fn routed_through(
    plan: &Plan,
    tcp: bool,
    health: &TargetHealth,
    gateways: &MeshGateways,
) -> Routing {
    plan.routing(&Fill {
        tcp,
        connect_timeout: Duration::from_secs(9),
        trust_domain: Some(TD),
        local_dc: "dc1",
        health,
        gateways,
    })
}

/// A sidecar of `service` at `addr` in `dc` whose checks have `statuses`.
fn entry(service: &str, addr: &str, dc: &str, statuses: &[&str]) -> ServiceEntry {
    let checks: Vec<_> = statuses.iter().map(|s| json!({ "Status": s })).collect();
    serde_json::from_value(json!({
        "Node": { "Node": "n", "Address": addr, "Datacenter": dc,
                  "TaggedAddresses": { "wan": format!("198.51.100.{}", &addr[addr.len() - 1..]) } },
        "Service": { "Kind": "connect-proxy", "Service": format!("{service}-sidecar-proxy"),
                     "Port": 21000, "Proxy": { "DestinationServiceName": service } },
        "Checks": checks
    }))
    .expect("an entry")
}

fn key(service: &str, dc: &str, filter: &str) -> HealthKey {
    HealthKey {
        service: service.into(),
        datacenter: dc.into(),
        filter: filter.into(),
    }
}

fn health(answers: Vec<(HealthKey, Vec<ServiceEntry>)>) -> TargetHealth {
    let mut health = TargetHealth::default();
    for (key, entries) in answers {
        health.on_answer(key, entries);
    }
    health
}

fn id(dc: &str, service: &str) -> ServiceId {
    ServiceId::new(TD, "default", dc, service)
}

fn endpoint(addr: &str, dc: &str, service: &str) -> Endpoint {
    Endpoint {
        addr: addr.into(),
        identity: id(dc, service),
    }
}

fn addrs(target: &Target) -> Vec<&str> {
    target.endpoints.iter().map(|e| e.addr.as_str()).collect()
}

#[test]
fn a_default_chain_is_a_direct_routing_and_so_is_the_fallback() {
    let health = health(vec![(
        key("db", "dc1", ""),
        vec![entry("db", "10.0.0.1", "dc1", &["passing"])],
    )]);
    let routing = routed(&plan(DEFAULT_CHAIN), false, &health);
    let target = Target {
        id: "db.default.default.dc1".into(),
        sni: format!("db.default.dc1.internal.{TD}"),
        identity: id("dc1", "db"),
        endpoints: vec![endpoint("10.0.0.1:21000", "dc1", "db")],
    };
    assert_eq!(
        routing,
        Routing::direct(target, Duration::from_secs(5)),
        "{routing:#?}"
    );
    let fallback = routed(
        &Plan::direct("db", "dc1", GatewayMode::Remote),
        false,
        &health,
    );
    assert_eq!(fallback.routes, routing.routes);
    assert_eq!(fallback.clusters[0].targets, routing.clusters[0].targets);
    assert_eq!(
        fallback.clusters[0].connect_timeout,
        Duration::from_secs(9),
        "no chain: the listener's connect timeout"
    );
}

#[test]
fn a_default_subset_is_the_one_target_with_its_filter_and_only_passing() {
    let plan = plan(DEFAULT_SUBSET);
    let filter = r#"Service.Meta.version == "2""#;
    let wanted: Vec<_> = plan.health_keys(false).cloned().collect();
    assert_eq!(
        wanted,
        vec![key("db", "dc1", filter)],
        "the filter goes to the agent"
    );
    let health = health(vec![(
        key("db", "dc1", filter),
        vec![
            entry("db", "10.0.0.1", "dc1", &["passing", "passing"]),
            entry("db", "10.0.0.2", "dc1", &["passing", "warning"]),
            entry("db", "10.0.0.3", "dc1", &["critical"]),
        ],
    )]);
    let routing = routed(&plan, false, &health);
    assert_eq!(routing.routes.len(), 1);
    let route = &routing.routes[0];
    assert_eq!(route.matcher, RouteMatch::default());
    assert_eq!(
        route.request_timeout,
        Some(Duration::from_secs(20)),
        "the resolver's, the chain starting there"
    );
    let cluster = &routing.clusters[0];
    assert_eq!(cluster.name, "v2.db.default.default.dc1");
    assert_eq!(cluster.connect_timeout, Duration::from_secs(3));
    assert_eq!(
        cluster.load_balancer.policy,
        LbPolicy::LeastRequest { choice_count: 3 }
    );
    let target = &cluster.targets[0];
    assert_eq!(target.id, "v2.db.default.default.dc1");
    assert_eq!(target.sni, format!("v2.db.default.dc1.internal.{TD}"));
    assert_eq!(target.identity, id("dc1", "db"));
    assert_eq!(addrs(target), ["10.0.0.1:21000"], "OnlyPassing: no warning");
}

#[test]
fn health_excludes_critical_and_maintenance_and_warning_only_when_only_passing() {
    let passing = entry("db", "10.0.0.1", "dc1", &["passing"]);
    let warning = entry("db", "10.0.0.2", "dc1", &["passing", "warning"]);
    let critical = entry("db", "10.0.0.3", "dc1", &["warning", "critical"]);
    let maintenance = entry("db", "10.0.0.4", "dc1", &["maintenance"]);
    let unchecked = entry("db", "10.0.0.5", "dc1", &[]);
    let healthy = |e: &ServiceEntry, only| crate::consul::source::endpoints::healthy(e, only);
    assert!(healthy(&passing, false) && healthy(&passing, true));
    assert!(healthy(&warning, false) && !healthy(&warning, true));
    assert!(!healthy(&critical, false) && !healthy(&critical, true));
    assert!(!healthy(&maintenance, false));
    assert!(healthy(&unchecked, true));

    let health = health(vec![(
        key("db", "dc1", ""),
        vec![passing, warning, critical, maintenance],
    )]);
    let routing = routed(&plan(DEFAULT_CHAIN), false, &health);
    assert_eq!(
        addrs(&routing.clusters[0].targets[0]),
        ["10.0.0.1:21000", "10.0.0.2:21000"],
        "warning instances still take traffic"
    );
}

#[test]
fn a_splitter_start_is_one_catch_all_route_of_weighted_splits() {
    let routing = routed(&plan(SPLITTER), false, &TargetHealth::default());
    assert_eq!(routing.routes.len(), 1);
    let route = &routing.routes[0];
    assert_eq!(route.matcher, RouteMatch::default());
    assert_eq!(
        route.request_timeout, None,
        "a resolver's timeout does not apply behind a splitter"
    );
    let weights: Vec<u32> = route.splits.iter().map(|s| s.weight).collect();
    assert_eq!(weights, [3333, 3333, 3334]);
    let names: Vec<&str> = route
        .splits
        .iter()
        .map(|s| routing.clusters[s.cluster].name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "v1.web.default.default.dc1",
            "v2.web.default.default.dc1",
            "web-next.default.default.dc1"
        ]
    );
    let v1 = &route.splits[0];
    assert_eq!(v1.request_headers.set.len(), 1);
    assert_eq!(v1.request_headers.set[0].0, "x-web-version");
    assert_eq!(v1.response_headers.remove, ["x-internal"]);
    let v2 = &route.splits[1];
    assert_eq!(v2.request_headers.add[0].1, "2");
    assert!(route.splits[2].request_headers.is_empty());
    let subset = &routing.clusters[0].targets[0];
    assert_eq!(subset.sni, format!("v1.web.default.dc1.internal.{TD}"));
}

#[test]
fn split_weights_are_evened_out_to_the_whole() {
    let split = |weight| Split {
        weight,
        cluster: 0,
        request_headers: HeaderChanges::default(),
        response_headers: HeaderChanges::default(),
    };
    let mut splits = vec![split(3333), split(3333), split(3333)];
    balance(&mut splits).unwrap();
    let total: u32 = splits.iter().map(|s| s.weight).sum();
    assert_eq!(total, TOTAL_WEIGHT);
    let mut nothing = vec![split(0), split(0)];
    assert!(balance(&mut nothing).is_err());
}

#[test]
fn a_router_keeps_its_routes_in_order_with_every_match_kind() {
    let routing = routed(&plan(ROUTER), false, &TargetHealth::default());
    assert_eq!(
        routing.routes.len(),
        4,
        "the route whose regex does not compile is left out"
    );
    let login = &routing.routes[0].matcher;
    assert_eq!(login.path, PathMatch::Exact("/Login".into()));
    assert!(login.case_insensitive);
    assert_eq!(login.methods, ["POST", "PUT"]);

    let admin = &routing.routes[1].matcher;
    assert_eq!(admin.path, PathMatch::Prefix("/admin".into()));
    assert!(!admin.case_insensitive);
    let headers: Vec<(&str, &ValueMatch, bool)> = admin
        .headers
        .iter()
        .map(|h| (h.name.as_str(), &h.value, h.invert))
        .collect();
    assert_eq!(
        headers.len(),
        5,
        "a header criterion saying nothing is left out"
    );
    assert_eq!(headers[0], ("x-debug", &ValueMatch::Present, false));
    assert_eq!(
        headers[1],
        ("x-env", &ValueMatch::Exact("prod".into()), true)
    );
    assert_eq!(
        headers[2],
        ("x-user", &ValueMatch::Prefix("ops-".into()), false)
    );
    assert_eq!(headers[3].1, &ValueMatch::Suffix(".internal".into()));
    let ValueMatch::Regex(trace) = headers[4].1 else {
        panic!("{:?}", headers[4]);
    };
    assert!(trace.is_match("0123456789abcdef"));
    assert!(
        !trace.is_match("0123456789abcdef0"),
        "anchored: the whole value"
    );

    let users = &routing.routes[2].matcher;
    let PathMatch::Regex(path) = &users.path else {
        panic!("{users:?}");
    };
    assert!(path.is_match("/users/42") && !path.is_match("/users/42/x"));
    assert!(
        !users.case_insensitive,
        "Envoy ignores CaseInsensitive for a regex"
    );
    let query: Vec<(&str, &ValueMatch)> = users
        .query
        .iter()
        .map(|q| (q.name.as_str(), &q.value))
        .collect();
    assert_eq!(query.len(), 3);
    assert_eq!(query[0], ("debug", &ValueMatch::Present));
    assert_eq!(query[1], ("page", &ValueMatch::Exact("1".into())));
    assert!(
        matches!(query[2].1, ValueMatch::Regex(r) if r.is_match("desc") && !r.is_match("descending"))
    );

    let catch_all = routing.catch_all().unwrap();
    assert_eq!(catch_all.matcher, RouteMatch::default(), "the prefix `/`");
    assert_eq!(
        catch_all.request_timeout, None,
        "a resolver's timeout does not apply behind a router"
    );
    let cluster = &routing.clusters[catch_all.splits[0].cluster];
    assert_eq!(cluster.name, "api.default.default.dc1");
    assert_eq!(cluster.connect_timeout, Duration::from_secs(1));
    let json = serde_json::to_value(&routing).expect("serializes for /config");
    assert_eq!(
        json["routes"][2]["match"]["path"]["value"],
        "^(?:/users/[0-9]+)$"
    );
}

#[test]
fn a_router_destination_sets_rewrite_timeouts_retries_and_headers() {
    let routing = routed(&plan(ROUTER), false, &TargetHealth::default());
    let login = &routing.routes[0];
    assert_eq!(login.prefix_rewrite.as_deref(), Some("/v2/login"));
    assert_eq!(login.request_timeout, Some(Duration::from_secs(2)));
    assert_eq!(
        login.idle_timeout,
        Some(Duration::ZERO),
        "a negative timeout disables it"
    );
    assert_eq!(
        login.retry,
        RetryPolicy::default(),
        "no retry features: none"
    );

    let admin = &routing.routes[1];
    assert_eq!(
        admin.retry,
        RetryPolicy {
            num_retries: 3,
            on: vec![
                "reset".into(),
                "connect-failure".into(),
                "retriable-status-codes".into()
            ],
            on_status_codes: vec![503, 429],
        },
        "connect-failure once, though listed and flagged"
    );
    let request = &admin.request_headers;
    assert_eq!(request.add[0].0, "x-via");
    assert_eq!(request.add[0].1, "ferrule");
    assert_eq!(request.set[0].0, "x-env");
    assert_eq!(request.remove, ["cookie"]);
    assert_eq!(admin.response_headers.set[0].0, "cache-control");

    let users = &routing.routes[2];
    assert_eq!(
        users.retry,
        RetryPolicy {
            num_retries: 1,
            on: vec!["5xx".into()],
            on_status_codes: Vec::new(),
        },
        "conditions without NumRetries: Envoy's one retry"
    );
}

#[test]
fn a_tcp_upstream_keeps_only_the_catch_all_route_and_its_targets() {
    let plan = plan(ROUTER);
    let routing = routed(&plan, true, &TargetHealth::default());
    assert_eq!(routing.routes.len(), 1);
    assert_eq!(routing.routes[0].splits[0].cluster, 0);
    assert_eq!(routing.clusters.len(), 1);
    assert_eq!(routing.clusters[0].name, "api.default.default.dc1");
    let wanted: Vec<_> = plan.health_keys(true).cloned().collect();
    assert_eq!(
        wanted,
        [key("api", "dc1", "")],
        "only its instances are watched"
    );
    assert_eq!(plan.health_keys(false).count(), 4);
}

#[test]
fn failover_targets_follow_the_primary_in_order() {
    let health = health(vec![
        (key("db", "dc1", ""), vec![]),
        (
            key("db", "dc3", ""),
            vec![entry("db", "10.3.0.1", "dc3", &["critical"])],
        ),
        (
            key("db", "dc2", ""),
            vec![entry("db", "10.2.0.1", "dc2", &["passing"])],
        ),
    ]);
    let routing = routed(&plan(FAILOVER), true, &health);
    let cluster = &routing.clusters[0];
    let ids: Vec<&str> = cluster.targets.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "db.default.default.dc1",
            "db.default.default.dc3",
            "db-backup.default.default.dc1",
            "db.default.default.dc2"
        ],
        "the peered target is left out"
    );
    assert!(
        cluster.active_target().is_none(),
        "dc2 is reached through its gateways, and it has none"
    );
    assert_eq!(
        plan(FAILOVER).gateway_dcs(true, "dc1"),
        ["dc2"],
        "dc2's mode is remote, dc3 has none"
    );
}

/// `db`'s mesh gateway in `dc`: LAN `lan`, WAN `wan`, port 8443 on both.
fn gateway(dc: &str, lan: &str, wan: &str, status: &str) -> ServiceEntry {
    serde_json::from_value(json!({
        "Node": { "Node": "gw", "Address": lan, "Datacenter": dc },
        "Service": { "Kind": "mesh-gateway", "Service": "mesh-gateway", "Port": 8443,
                     "Address": lan,
                     "TaggedAddresses": { "lan": { "Address": lan, "Port": 8443 },
                                          "wan": { "Address": wan, "Port": 8443 } } },
        "Checks": [{ "Status": status }]
    }))
    .expect("a gateway")
}

/// The failover chain with every target in `mode`, `db` in dc1 down, healthy in dc3.
fn across(mode: &str, dc3_status: &str) -> Routing {
    let mut chain = chain(FAILOVER);
    for target in chain.targets.values_mut() {
        target.mesh_gateway.mode = mode.into();
    }
    let plan = translate(&chain).expect("translates");
    let health = health(vec![
        (key("db", "dc1", ""), vec![]),
        (
            key("db", "dc3", ""),
            vec![entry("db", "10.3.0.1", "dc3", &[dc3_status])],
        ),
    ]);
    let gateways = MeshGateways::known(vec![
        (
            gateway_key("dc1", "mesh-gateway"),
            vec![
                gateway("dc1", "10.1.9.1", "203.0.113.1", "passing"),
                gateway("dc1", "10.1.9.2", "203.0.113.2", "warning"),
            ],
        ),
        (
            gateway_key("dc3", "mesh-gateway"),
            vec![gateway("dc3", "10.3.9.1", "203.0.113.3", "passing")],
        ),
    ]);
    routed_through(&plan, true, &health, &gateways)
}

#[test]
fn a_target_in_another_datacenter_is_dialled_as_its_mesh_gateway_mode_says() {
    let sni = format!("db.default.dc3.internal.{TD}");
    // none: the instance itself, on its WAN address.
    let none = across("", "passing");
    let active = none.clusters[0]
        .active_target()
        .expect("dc3 has an instance");
    assert_eq!(active.id, "db.default.default.dc3");
    assert_eq!(
        active.endpoints,
        [endpoint("198.51.100.1:21000", "dc3", "db")],
        "another datacenter: the WAN address"
    );
    // local: dc1's passing gateways, on their LAN address.
    let local = across("local", "passing");
    let active = local.clusters[0].active_target().expect("dc3 through dc1");
    assert_eq!(active.endpoints, [endpoint("10.1.9.1:8443", "dc3", "db")]);
    // remote: dc3's gateways, on their WAN address.
    let remote = across("remote", "passing");
    let active = remote.clusters[0].active_target().expect("dc3 through dc3");
    assert_eq!(
        active.endpoints,
        [endpoint("203.0.113.3:8443", "dc3", "db")]
    );
    for routing in [&none, &local, &remote] {
        let active = routing.clusters[0].active_target().expect("dc3");
        assert_eq!(active.sni, sni, "always the target's server name");
        assert_eq!(active.identity, id("dc3", "db"), "and identity");
    }
    // The gateways take the health of the target's instances.
    for mode in ["local", "remote"] {
        let down = across(mode, "critical");
        assert!(down.clusters[0].active_target().is_none(), "{mode}");
    }
    // The target in this datacenter is dialled directly whatever the mode.
    assert_eq!(
        across("remote", "passing").clusters[0].targets[2].id,
        "db-backup.default.default.dc1"
    );
}

#[test]
fn a_resolver_load_balancer_becomes_the_cluster_s() {
    let routing = routed(&plan(FAILOVER), true, &TargetHealth::default());
    let lb = &routing.clusters[0].load_balancer;
    assert_eq!(
        lb.policy,
        LbPolicy::RingHash {
            minimum_ring_size: 1024,
            maximum_ring_size: 4096
        }
    );
    let on: Vec<(&HashOn, bool)> = lb
        .hash_policies
        .iter()
        .map(|p| (&p.on, p.terminal))
        .collect();
    assert_eq!(on[0], (&HashOn::Header("x-user".into()), false));
    assert_eq!(
        on[1],
        (
            &HashOn::Cookie {
                name: "session".into(),
                ttl: Some(Duration::from_secs(60)),
                path: Some("/".into())
            },
            true
        )
    );
    assert!(
        matches!(on[2].0, HashOn::Cookie { ttl: Some(t), .. } if t.is_zero()),
        "a session cookie"
    );
    assert_eq!(on[3].0, &HashOn::QueryParameter("id".into()));
    assert_eq!(on[4].0, &HashOn::SourceIp);

    let round_robin = load_balancer(&ChainLoadBalancer {
        policy: "round_robin".into(),
        hash_policies: vec![crate::api::chain::HashPolicy {
            source_ip: true,
            ..Default::default()
        }],
        ..Default::default()
    });
    assert!(
        round_robin.hash_policies.is_empty(),
        "only hashing policies hash"
    );
}

#[test]
fn a_chain_that_does_not_hold_together_is_refused() {
    let mut broken = chain(DEFAULT_CHAIN);
    broken.start_node = "resolver:nowhere".into();
    assert!(translate(&broken).unwrap_err().contains("start node"));

    let mut no_target = chain(DEFAULT_CHAIN);
    no_target.targets.clear();
    assert!(
        translate(&no_target)
            .unwrap_err()
            .contains("not in the chain")
    );

    let mut loop_back = chain(SPLITTER);
    let splitter = loop_back.start_node.clone();
    if let Some(node) = loop_back.nodes.get_mut(&splitter) {
        node.splits[0].next_node = splitter.clone();
    }
    assert!(translate(&loop_back).unwrap_err().contains("splitter node"));
}
