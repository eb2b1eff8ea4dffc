//! Tests of `chain`: the entries and the compiled chain read what Consul writes and
//! write what Consul reads.

use super::*;
use serde_json::{Value, json};

/// Shaped like a real agent's answer for a router over a 90/10 splitter with subsets
/// and a resolver with failover: `{}` for empty struct values, `"5s"` connect
/// timeouts, a resolver `RequestTimeout` in nanoseconds, `null` meta, and keys this
/// crate does not model (`Locality`, `EnvoyExtensions`, `SomethingNew`).
const REAL_SHAPED: &str = r#"{
  "Chain": {
    "ServiceName": "web",
    "Namespace": "default",
    "Partition": "default",
    "Datacenter": "dc1",
    "Protocol": "http",
    "ServiceMeta": null,
    "StartNode": "router:web.default.default",
    "SomethingNew": {"x": 1},
    "Nodes": {
      "router:web.default.default": {
        "Type": "router",
        "Name": "web.default.default",
        "Routes": [
          {
            "Definition": {
              "Match": {"HTTP": {"PathPrefix": "/admin", "Header": [{"Name": "x-debug", "Present": true}], "Methods": ["GET"]}},
              "Destination": {"Service": "admin", "RequestTimeout": "2s", "NumRetries": 3, "RetryOnStatusCodes": [503]}
            },
            "NextNode": "resolver:admin.default.default.dc1"
          },
          {
            "Definition": {
              "Match": {"HTTP": {"PathPrefix": "/"}},
              "Destination": {"Service": "web", "Namespace": "default", "Partition": "default"}
            },
            "NextNode": "splitter:web.default.default"
          }
        ]
      },
      "splitter:web.default.default": {
        "Type": "splitter",
        "Name": "web.default.default",
        "Splits": [
          {"Definition": {"Weight": 90, "ServiceSubset": "v1"}, "Weight": 90, "NextNode": "resolver:v1.web.default.default.dc1"},
          {"Definition": {"Weight": 10, "ServiceSubset": "v2"}, "Weight": 10, "NextNode": "resolver:v2.web.default.default.dc1"}
        ]
      },
      "resolver:v1.web.default.default.dc1": {
        "Type": "resolver",
        "Name": "v1.web.default.default.dc1",
        "Resolver": {
          "ConnectTimeout": "5s",
          "RequestTimeout": 15000000000,
          "Target": "v1.web.default.default.dc1",
          "Failover": {"Targets": ["v1.web.default.default.dc2"]}
        },
        "LoadBalancer": {"Policy": "ring_hash", "RingHashConfig": {"MinimumRingSize": 1024},
          "HashPolicies": [{"Field": "cookie", "FieldValue": "s", "CookieConfig": {"TTL": 60000000000}}]}
      },
      "resolver:v2.web.default.default.dc1": {
        "Type": "resolver",
        "Name": "v2.web.default.default.dc1",
        "Resolver": {"ConnectTimeout": "5s", "Target": "v2.web.default.default.dc1"}
      },
      "resolver:admin.default.default.dc1": {
        "Type": "resolver",
        "Name": "admin.default.default.dc1",
        "Resolver": {"Default": true, "ConnectTimeout": "5s", "Target": "admin.default.default.dc1"}
      }
    },
    "Targets": {
      "v1.web.default.default.dc1": {
        "ID": "v1.web.default.default.dc1",
        "Service": "web",
        "ServiceSubset": "v1",
        "Namespace": "default",
        "Partition": "default",
        "Datacenter": "dc1",
        "Locality": null,
        "MeshGateway": {},
        "Subset": {"Filter": "Service.Meta.version == v1", "OnlyPassing": true},
        "TransparentProxy": {},
        "ConnectTimeout": "5s",
        "SNI": "v1.web.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul",
        "Name": "v1.web.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"
      },
      "v1.web.default.default.dc2": {
        "ID": "v1.web.default.default.dc2",
        "Service": "web",
        "ServiceSubset": "v1",
        "Namespace": "default",
        "Partition": "default",
        "Datacenter": "dc2",
        "MeshGateway": {"Mode": "remote"},
        "Subset": {"Filter": "Service.Meta.version == v1"},
        "TransparentProxy": null,
        "SNI": "v1.web.default.dc2.internal.11111111-2222-3333-4444-555555555555.consul",
        "Name": "v1.web.default.dc2.internal.11111111-2222-3333-4444-555555555555.consul"
      },
      "v2.web.default.default.dc1": {"ID": "v2.web.default.default.dc1", "Service": "web", "ServiceSubset": "v2", "Datacenter": "dc1", "MeshGateway": {}, "Subset": {}},
      "admin.default.default.dc1": {"ID": "admin.default.default.dc1", "Service": "admin", "Datacenter": "dc1"}
    }
  }
}"#;

#[test]
fn a_real_shaped_answer_parses() {
    let response: DiscoveryChainResponse = serde_json::from_str(REAL_SHAPED).expect("parses");
    let chain = &response.chain;
    assert_eq!(chain.service_name, "web");
    assert_eq!(chain.protocol, "http");
    assert!(chain.service_meta.is_empty());
    let start = chain.start().expect("start node");
    assert_eq!(start.node_type, NODE_ROUTER);
    assert_eq!(start.routes.len(), 2);
    let first = start.routes[0].definition.as_ref().expect("definition");
    let http = first
        .route_match
        .as_ref()
        .and_then(|m| m.http.as_ref())
        .expect("http match");
    assert_eq!(http.path_prefix, "/admin");
    assert!(http.header[0].present);
    let destination = first.destination.as_ref().expect("destination");
    assert_eq!(
        destination.request_timeout.positive(),
        Some(std::time::Duration::from_secs(2))
    );
    assert_eq!(destination.retry_on_status_codes, vec![503]);

    let splitter = &chain.nodes["splitter:web.default.default"];
    let weights: Vec<f32> = splitter.splits.iter().map(|s| s.weight).collect();
    assert_eq!(weights, vec![90.0, 10.0]);

    let v1 = &chain.nodes["resolver:v1.web.default.default.dc1"];
    let resolver = v1.resolver.as_ref().expect("resolver");
    assert_eq!(resolver.connect_timeout, GoDuration::from_secs(5));
    assert_eq!(resolver.request_timeout, GoDuration::from_secs(15));
    let failover = resolver.failover.as_ref().expect("failover");
    assert_eq!(failover.targets, vec!["v1.web.default.default.dc2"]);
    let lb = v1.load_balancer.as_ref().expect("lb");
    assert!(lb.is_hash_based());
    let cookie = lb.hash_policies[0].cookie_config.as_ref().expect("cookie");
    assert_eq!(cookie.ttl, GoDuration::from_secs(60));

    let target = &chain.targets["v1.web.default.default.dc1"];
    assert_eq!(target.subset.filter, "Service.Meta.version == v1");
    assert!(target.subset.only_passing);
    assert!(target.sni.starts_with("v1.web.default.dc1.internal."));
    assert_eq!(
        chain.targets["v1.web.default.default.dc2"]
            .mesh_gateway
            .mode,
        "remote"
    );
    assert!(
        chain.targets["admin.default.default.dc1"]
            .connect_timeout
            .is_zero()
    );
}

#[test]
fn the_compiled_chain_round_trips_and_writes_go_s_shapes() {
    let response: DiscoveryChainResponse = serde_json::from_str(REAL_SHAPED).expect("parses");
    let written = serde_json::to_value(&response).expect("serializes");
    let again: DiscoveryChainResponse = serde_json::from_value(written.clone()).expect("reads");
    assert_eq!(again, response);

    let node = &written["Chain"]["Nodes"]["resolver:v1.web.default.default.dc1"];
    assert_eq!(node["Resolver"]["ConnectTimeout"], json!("5s"));
    assert_eq!(node["Resolver"]["RequestTimeout"], json!(15_000_000_000i64));
    assert_eq!(
        node["LoadBalancer"]["HashPolicies"][0]["CookieConfig"]["TTL"],
        json!(60_000_000_000i64)
    );
    let split = &written["Chain"]["Nodes"]["splitter:web.default.default"]["Splits"][0];
    assert_eq!(
        split["Weight"].to_string(),
        "90",
        "Go writes a whole float32 bare"
    );
    let target = &written["Chain"]["Targets"]["admin.default.default.dc1"];
    assert_eq!(target["MeshGateway"], json!({}));
    assert_eq!(target["Subset"], json!({}));
    assert_eq!(target["TransparentProxy"], json!({}));
    assert!(target.get("ConnectTimeout").is_none(), "zero is omitted");
    assert!(written["Chain"].get("Default").is_none());
    assert!(written["Chain"].get("SomethingNew").is_none());
}

fn resolver_json() -> Value {
    json!({
        "Kind": "service-resolver",
        "Name": "web",
        "DefaultSubset": "v1",
        "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1", "OnlyPassing": true},
            "v2": {"Filter": "\"canary\" in Service.Tags"}
        },
        "Failover": {
            "v1": {"Datacenters": ["dc2", "dc3"]},
            "*": {"Targets": [{"Service": "web-backup", "Datacenter": "dc2"}, {"Peer": "other"}],
                  "Policy": {"Mode": "order-by-locality", "Regions": ["us-east-1"]}}
        },
        "ConnectTimeout": "15s",
        "RequestTimeout": "1m30s",
        "LoadBalancer": {
            "Policy": "maglev",
            "HashPolicies": [
                {"Field": "header", "FieldValue": "x-user", "Terminal": true},
                {"SourceIP": true}
            ]
        },
        "Meta": {"team": "shop"},
        "CreateIndex": 7,
        "ModifyIndex": 9
    })
}

#[test]
fn a_resolver_round_trips() {
    let entry: ServiceResolverEntry = serde_json::from_value(resolver_json()).expect("reads");
    assert_eq!(entry.default_subset, "v1");
    assert!(entry.subsets["v1"].only_passing);
    assert_eq!(entry.failover["v1"].datacenters, vec!["dc2", "dc3"]);
    assert_eq!(entry.failover["*"].targets[1].peer, "other");
    assert_eq!(entry.connect_timeout, GoDuration::from_secs(15));
    assert_eq!(entry.request_timeout, GoDuration::from_secs(90));
    assert!(
        entry
            .load_balancer
            .as_ref()
            .is_some_and(LoadBalancer::is_hash_based)
    );
    assert!(!entry.is_default());
    assert_eq!(
        serde_json::to_value(&entry).expect("writes"),
        resolver_json()
    );
}

#[test]
fn writes_take_snake_case_nulls_and_nanoseconds() {
    let entry: ServiceResolverEntry = serde_json::from_value(json!({
        "kind": "service-resolver",
        "name": "web",
        "default_subset": "v1",
        "subsets": {"v1": {"filter": "Service.Meta.v == \"1\"", "only_passing": true}},
        "redirect": null,
        "failover": null,
        "connect_timeout": 2_000_000_000u64,
        "request_timeout": null,
        "load_balancer": {"policy": "ring_hash", "ring_hash_config": {"minimum_ring_size": 8},
            "hash_policies": [{"field": "cookie", "field_value": "c",
                "cookie_config": {"session": true, "path": "/"}, "source_ip": false}]},
        "meta": null
    }))
    .expect("reads");
    assert_eq!(entry.default_subset, "v1");
    assert!(entry.subsets["v1"].only_passing);
    assert_eq!(entry.connect_timeout, GoDuration::from_secs(2));
    assert!(entry.request_timeout.is_zero());
    let lb = entry.load_balancer.expect("lb");
    assert_eq!(lb.ring_hash_config.map(|c| c.minimum_ring_size), Some(8));
    assert!(
        lb.hash_policies[0]
            .cookie_config
            .as_ref()
            .is_some_and(|c| c.session)
    );

    let redirect: ServiceResolverEntry = serde_json::from_value(json!({
        "Kind": "service-resolver", "Name": "old",
        "Redirect": {"service": "new", "service_subset": "v2", "datacenter": "dc2", "sameness_group": "g"}
    }))
    .expect("reads");
    let redirect = redirect.redirect.expect("redirect");
    assert_eq!(redirect.service_subset, "v2");
    assert_eq!(redirect.sameness_group, "g");
    assert!(
        serde_json::from_value::<ServiceResolverEntry>(json!({"ConnectTimeout": "5 seconds"}))
            .is_err()
    );
}

fn router_json() -> Value {
    json!({
        "Kind": "service-router",
        "Name": "web",
        "Routes": [
            {
                "Match": {"HTTP": {
                    "PathRegex": "/api/v[0-9]+",
                    "CaseInsensitive": true,
                    "Header": [
                        {"Name": "x-a", "Exact": "1"},
                        {"Name": "x-b", "Prefix": "p", "Invert": true},
                        {"Name": "x-c", "Suffix": "s"},
                        {"Name": "x-d", "Regex": "d+"}
                    ],
                    "QueryParam": [{"Name": "q", "Present": true}, {"Name": "r", "Exact": "1"}],
                    "Methods": ["GET", "POST"]
                }},
                "Destination": {
                    "Service": "api",
                    "ServiceSubset": "v2",
                    "RequestTimeout": "3s",
                    "IdleTimeout": "1m0s",
                    "NumRetries": 2,
                    "RetryOnConnectFailure": true,
                    "RetryOn": ["5xx", "reset"],
                    "RetryOnStatusCodes": [502, 503],
                    "RequestHeaders": {"Add": {"x-via": "r"}, "Set": {"x-s": "1"}, "Remove": ["x-r"]},
                    "ResponseHeaders": {"Remove": ["server"]}
                }
            },
            {"Match": {"HTTP": {"PathPrefix": "/old"}}, "Destination": {"PrefixRewrite": "/new"}}
        ],
        "CreateIndex": 3,
        "ModifyIndex": 3
    })
}

#[test]
fn a_router_round_trips() {
    let entry: ServiceRouterEntry = serde_json::from_value(router_json()).expect("reads");
    let http = entry.routes[0]
        .route_match
        .as_ref()
        .and_then(|m| m.http.clone())
        .expect("http");
    assert!(http.case_insensitive);
    assert!(http.header[1].invert);
    assert_eq!(http.query_param.len(), 2);
    let destination = entry.routes[0].destination.as_ref().expect("destination");
    assert_eq!(destination.idle_timeout, GoDuration::from_secs(60));
    assert_eq!(
        destination
            .request_headers
            .as_ref()
            .map(|h| h.remove.clone()),
        Some(vec!["x-r".to_owned()])
    );
    assert_eq!(serde_json::to_value(&entry).expect("writes"), router_json());

    let snake: ServiceRouterEntry = serde_json::from_value(json!({
        "kind": "service-router", "name": "web",
        "routes": [{"match": {"http": {"path_exact": "/x", "query_param": [{"name": "a", "regex": "b"}]}},
                    "destination": {"service_subset": "v1", "prefix_rewrite": "/y",
                        "retry_on_status_codes": [500], "request_timeout": "1s"}}]
    }))
    .expect("reads");
    let route = &snake.routes[0];
    let http = route
        .route_match
        .as_ref()
        .and_then(|m| m.http.as_ref())
        .expect("http");
    assert_eq!(http.path_exact, "/x");
    assert_eq!(http.query_param[0].regex, "b");
    assert_eq!(
        route.destination.as_ref().map(|d| d.request_timeout),
        Some(GoDuration::from_secs(1))
    );
    let empty: ServiceRouterEntry =
        serde_json::from_value(json!({"Kind": "service-router", "Name": "web", "Routes": null}))
            .expect("reads");
    assert_eq!(
        serde_json::to_value(&empty).expect("writes")["Routes"],
        Value::Null
    );
}

#[test]
fn a_splitter_round_trips() {
    let doc = json!({
        "Kind": "service-splitter",
        "Name": "web",
        "Splits": [
            {"Weight": 33.33, "ServiceSubset": "v1",
             "RequestHeaders": {"Set": {"x-split": "v1"}}},
            {"Weight": 66.67, "Service": "web-next", "Namespace": "ns", "Partition": "ap",
             "ResponseHeaders": {"Add": {"x-from": "next"}}}
        ],
        "Meta": {"owner": "me"}
    });
    let entry: ServiceSplitterEntry = serde_json::from_value(doc.clone()).expect("reads");
    assert_eq!(entry.splits[0].weight, 33.33);
    assert_eq!(entry.splits[1].service, "web-next");
    let text = serde_json::to_string(&entry).expect("writes");
    assert!(text.contains(r#""Weight":33.33"#), "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).expect("json"), doc);

    let snake: ServiceSplitterEntry = serde_json::from_value(json!({
        "kind": "service-splitter", "name": "web",
        "splits": [{"weight": 100, "service_subset": "v1", "request_headers": {"remove": ["a"]}}]
    }))
    .expect("reads");
    assert_eq!(snake.splits[0].weight, 100.0);
    assert_eq!(snake.splits[0].service_subset, "v1");
}

#[test]
fn the_request_body_takes_both_spellings() {
    let pascal: DiscoveryChainRequest = serde_json::from_value(json!({
        "OverrideMeshGateway": {"Mode": "local"},
        "OverrideProtocol": "grpc",
        "OverrideConnectTimeout": "7s"
    }))
    .expect("reads");
    let snake: DiscoveryChainRequest = serde_json::from_value(json!({
        "override_mesh_gateway": {"mode": "local"},
        "override_protocol": "grpc",
        "override_connect_timeout": 7_000_000_000u64
    }))
    .expect("reads");
    assert_eq!(pascal, snake);
    assert_eq!(pascal.override_mesh_gateway.mode, "local");
    assert_eq!(pascal.override_connect_timeout, GoDuration::from_secs(7));
    assert!(!pascal.is_empty());
    assert_eq!(
        serde_json::to_value(&pascal).expect("writes"),
        json!({"OverrideMeshGateway": {"Mode": "local"}, "OverrideProtocol": "grpc",
               "OverrideConnectTimeout": "7s"})
    );
    let empty: DiscoveryChainRequest = serde_json::from_str("{}").expect("reads");
    assert!(empty.is_empty());
    assert_eq!(serde_json::to_string(&empty).expect("writes"), "{}");
}

#[test]
fn go_durations_read_and_write_like_go() {
    let read = |v: Value| {
        serde_json::from_value::<GoDuration>(v)
            .map(GoDuration::nanos)
            .ok()
    };
    assert_eq!(read(json!("1m30s")), Some(90_000_000_000));
    assert_eq!(read(json!(1500)), Some(1500));
    assert_eq!(read(json!(2.9)), Some(2), "a float is truncated as Go does");
    assert_eq!(read(json!("")), Some(0));
    assert_eq!(read(Value::Null), Some(0));
    assert_eq!(read(json!("-2s")), Some(-2_000_000_000));
    assert_eq!(read(json!("soon")), None);
    assert_eq!(read(json!(u64::MAX)), None);
    assert_eq!(read(json!(true)), None);
    assert_eq!(GoDuration(-1_500_000_000).to_string(), "-1.5s");
    assert_eq!(GoDuration::from_secs(3600).to_string(), "1h0m0s");
    assert_eq!(GoDuration(i64::MIN).to_string().chars().next(), Some('-'));
    assert_eq!(GoDuration(-1).positive(), None);
}

#[test]
fn target_ids_are_consul_s() {
    assert_eq!(
        target_id("web", "", "default", "default", "dc1", ""),
        "web.default.default.dc1"
    );
    assert_eq!(
        target_id("web", "v1", "default", "default", "dc2", ""),
        "v1.web.default.default.dc2"
    );
    assert_eq!(
        target_id("web", "", "default", "default", "dc1", "peer1"),
        "web.default.default.external.peer1"
    );
}
