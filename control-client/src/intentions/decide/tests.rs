//! decide's tables: the shared L4 rows (Consul's precedence table, origins, wildcards,
//! defaults), L7 matching, and order independence.

use super::*;
use crate::api::intentions as wire;
use crate::intentions::{Action, Destination, cases};
use http::HeaderValue;
use serde_json::{Value, json};

const ALLOW: Action = Action::Allow;
const DENY: Action = Action::Deny;

/// The proxy's own trust domain in these tests.
const LOCAL_TD: &str = "11111111-2222-3333-4444-555555555555.consul";

fn dest(name: &str) -> Destination {
    Destination::new("", "", name)
}

fn entries(v: Value) -> Vec<wire::ServiceIntentionsEntry> {
    serde_json::from_value(v).unwrap()
}

/// Intentions protecting `default/default/<name>`, from a JSON array of config entries.
fn ixns_for(name: &str, default: Action, v: Value) -> Intentions {
    Intentions::from_config_entries(&entries(v), dest(name), default).unwrap()
}

fn ixns(default: Action, v: Value) -> Intentions {
    ixns_for("api", default, v)
}

/// One entry for `api` with the given sources.
fn api_entry(default: Action, sources: Value) -> Intentions {
    ixns(
        default,
        json!([{ "Kind": "service-intentions", "Name": "api", "Sources": sources }]),
    )
}

fn local(namespace: &str, service: &str) -> Peer {
    in_partition("default", namespace, service)
}

fn in_partition(partition: &str, namespace: &str, service: &str) -> Peer {
    Peer {
        peer: String::new(),
        partition: partition.into(),
        namespace: namespace.into(),
        service: service.into(),
    }
}

fn web() -> Peer {
    local("default", "web")
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn l4(ixns: &Intentions, peer: &Peer) -> Decision {
    decide(ixns, peer, None)
}

fn l7(ixns: &Intentions, peer: &Peer, method: &str, path: &str, hdrs: &[(&str, &str)]) -> Decision {
    let headers = headers(hdrs);
    decide(
        ixns,
        peer,
        Some(&Request {
            method,
            path,
            headers: &headers,
        }),
    )
}

fn matched_precedence(ixns: &Intentions, d: &Decision) -> Option<u32> {
    d.matched.map(|i| ixns.rules()[i].precedence())
}

/// The L4 rows (Consul's precedence table row by row, origins, wildcards, namespaces,
/// defaults, L7 intentions on a connection), shared with the dev agent's authorize test:
/// `control-client/tests/data/intentions-l4.json`. Precedence rows install every row from
/// 1 up to `p`, all matching `default/web` calling `default/api`: row `p` has the action
/// and every lower row the opposite (the default too), so the decision shows that the
/// highest row governs and sorts first.
#[test]
fn l4_table() {
    let cases = cases::l4().unwrap();
    assert!(!cases.is_empty());
    for case in &cases {
        let name = &case.name;
        let ixns = case.intentions().unwrap_or_else(|e| panic!("{name}: {e}"));
        let d = l4(&ixns, &case.caller.peer(LOCAL_TD));
        let want = &case.want;
        let reason = match want.reason.as_str() {
            "matched_l4" => Reason::MatchedL4 {
                allow: want.allowed,
            },
            "l7_intention_on_l4" => Reason::L7IntentionOnL4,
            "default" => Reason::Default,
            other => panic!("{name}: {other:?} is not a connection-level reason"),
        };
        assert_eq!(
            (d.allowed, d.reason),
            (want.allowed, reason),
            "{name}: {d:?}"
        );
        assert_eq!(
            d.matched.is_none(),
            reason == Reason::Default,
            "{name}: {d:?}"
        );
        if let Some(p) = want.precedence {
            assert_eq!(matched_precedence(&ixns, &d), Some(p), "{name}");
        }
        if let Some(i) = want.matched {
            assert_eq!(
                d.matched,
                Some(i),
                "{name}: the governing rule sorts at {i}"
            );
        }
    }
}

#[test]
fn an_l7_intention_denies_a_connection_even_if_it_would_allow_every_request() {
    let ixns = api_entry(
        ALLOW,
        json!([{ "Name": "web", "Permissions": [{ "Action": "allow", "HTTP": { "PathPrefix": "/" } }] },
               { "Name": "*", "Action": "allow" }]),
    );
    let d = l4(&ixns, &web());
    assert_eq!(
        (d.allowed, d.reason, d.matched),
        (false, Reason::L7IntentionOnL4, Some(0))
    );
    assert!(l7(&ixns, &web(), "GET", "/x", &[]).allowed);
}

#[test]
fn first_match_divergence_from_envoy_rbac() {
    // Consul evaluates intentions first match wins, where Envoy's RBAC would let any allow
    // policy admit (docs/consul-semantics.md#intentions): `* -> db` deny (8) governs `web` before `web -> *` allow (6).
    let ixns = ixns_for(
        "db",
        DENY,
        json!([
            { "Kind": "service-intentions", "Name": "db", "Sources": [{ "Name": "*", "Action": "deny" }] },
            { "Kind": "service-intentions", "Name": "*", "Sources": [{ "Name": "web", "Action": "allow" }] }
        ]),
    );
    let d = l4(&ixns, &web());
    assert!(!d.allowed);
    assert_eq!(matched_precedence(&ixns, &d), Some(8));
    let d = l7(&ixns, &web(), "GET", "/", &[]);
    assert_eq!(
        (d.allowed, d.reason),
        (false, Reason::MatchedL4 { allow: false })
    );
}

#[test]
fn permissions_below_a_higher_precedence_l4_deny_never_apply_to_its_source() {
    // `web -> api` deny (9) outranks `* -> api` with permissions (8).
    let ixns = api_entry(
        ALLOW,
        json!([{ "Name": "web", "Action": "deny" },
               { "Name": "*", "Permissions": [{ "Action": "allow", "HTTP": { "PathPrefix": "/public" } }] }]),
    );
    let d = l7(&ixns, &web(), "GET", "/public/x", &[]);
    assert_eq!(
        (d.allowed, d.reason),
        (false, Reason::MatchedL4 { allow: false })
    );
    assert_eq!(matched_precedence(&ixns, &d), Some(9));
    let d = l7(&ixns, &local("default", "billing"), "GET", "/public/x", &[]);
    assert_eq!(
        (d.allowed, d.reason),
        (true, Reason::MatchedPermission { index: 0 })
    );
    assert_eq!(matched_precedence(&ixns, &d), Some(8));
}

#[test]
fn an_l4_intention_decides_every_request() {
    let ixns = api_entry(DENY, json!([{ "Name": "web", "Action": "allow" }]));
    let d = l7(&ixns, &web(), "DELETE", "/anything", &[("x", "y")]);
    assert_eq!(
        (d.allowed, d.reason),
        (true, Reason::MatchedL4 { allow: true })
    );
}

#[test]
fn rules_for_other_destinations_never_apply() {
    let list: Vec<wire::Intention> = serde_json::from_value(json!([
        { "SourceNS": "default", "SourceName": "web", "DestinationNS": "default",
          "DestinationName": "billing", "SourceType": "consul", "Action": "allow" },
        { "SourceNS": "default", "SourceName": "web", "DestinationNS": "default",
          "DestinationName": "api", "DestinationPartition": "retail", "SourceType": "consul", "Action": "allow" },
        { "SourceNS": "default", "SourceName": "web", "DestinationNS": "other",
          "DestinationName": "*", "SourceType": "consul", "Action": "allow" }
    ]))
    .unwrap();
    let ixns = Intentions::from_match(list, dest("api"), DENY).unwrap();
    assert_eq!(ixns.rules().len(), 3);
    assert_eq!(l4(&ixns, &web()).reason, Reason::Default);
}

// L7: one permission per case, on `web -> api` under default deny.

fn one_permission(http: Value) -> Intentions {
    api_entry(
        DENY,
        json!([{ "Name": "web", "Permissions": [{ "Action": "allow", "HTTP": http }] }]),
    )
}

macro_rules! l7_cases {
    ($($name:ident: $http:expr, $method:expr, $path:expr, $headers:expr => $allowed:expr;)*) => {$(
        #[test]
        fn $name() {
            let ixns = one_permission($http);
            let d = l7(&ixns, &web(), $method, $path, $headers);
            let want = if $allowed { Reason::MatchedPermission { index: 0 } } else { Reason::NoPermissionMatched };
            assert_eq!((d.allowed, d.reason), ($allowed, want), "{d:?}");
        }
    )*};
}

l7_cases! {
    path_exact_matches: json!({ "PathExact": "/v1/items" }), "GET", "/v1/items", &[] => true;
    path_exact_is_exact: json!({ "PathExact": "/v1/items" }), "GET", "/v1/items/", &[] => false;
    path_exact_is_case_sensitive: json!({ "PathExact": "/v1/items" }), "GET", "/V1/items", &[] => false;
    path_prefix_matches: json!({ "PathPrefix": "/v1/" }), "GET", "/v1/items", &[] => true;
    path_prefix_is_not_segment_aware: json!({ "PathPrefix": "/v1" }), "GET", "/v10", &[] => true;
    path_prefix_misses: json!({ "PathPrefix": "/v1/" }), "GET", "/v2/items", &[] => false;
    path_regex_full_match: json!({ "PathRegex": "/a.*" }), "GET", "/a/b", &[] => true;
    path_regex_is_anchored_at_start: json!({ "PathRegex": "/a.*" }), "GET", "/b/a", &[] => false;
    path_regex_is_anchored_at_end: json!({ "PathRegex": "/a" }), "GET", "/a/b", &[] => false;
    path_regex_alternation_is_anchored: json!({ "PathRegex": "/a|/b" }), "GET", "/b/c", &[] => false;
    method_listed: json!({ "Methods": ["GET", "HEAD"] }), "HEAD", "/", &[] => true;
    method_not_listed: json!({ "Methods": ["GET", "HEAD"] }), "POST", "/", &[] => false;
    method_config_is_upper_cased: json!({ "Methods": ["post"] }), "POST", "/", &[] => true;
    method_request_is_case_sensitive: json!({ "Methods": ["POST"] }), "post", "/", &[] => false;
    criteria_are_anded: json!({ "PathPrefix": "/v1/", "Methods": ["GET"] }), "POST", "/v1/x", &[] => false;

    header_present: json!({ "Header": [{ "Name": "X-Auth", "Present": true }] }), "GET", "/", &[("x-auth", "")] => true;
    header_present_missing: json!({ "Header": [{ "Name": "X-Auth", "Present": true }] }), "GET", "/", &[] => false;
    header_present_inverted_missing: json!({ "Header": [{ "Name": "X-Auth", "Present": true, "Invert": true }] }),
        "GET", "/", &[] => true;
    header_present_inverted_there: json!({ "Header": [{ "Name": "X-Auth", "Present": true, "Invert": true }] }),
        "GET", "/", &[("x-auth", "t")] => false;
    header_name_is_case_insensitive: json!({ "Header": [{ "Name": "x-tenant", "Exact": "acme" }] }),
        "GET", "/", &[("X-Tenant", "acme")] => true;

    header_exact: json!({ "Header": [{ "Name": "x-tenant", "Exact": "acme" }] }), "GET", "/", &[("x-tenant", "acme")] => true;
    header_exact_case_sensitive: json!({ "Header": [{ "Name": "x-tenant", "Exact": "acme" }] }),
        "GET", "/", &[("x-tenant", "ACME")] => false;
    header_exact_ignore_case: json!({ "Header": [{ "Name": "x-tenant", "Exact": "AcMe", "IgnoreCase": true }] }),
        "GET", "/", &[("x-tenant", "aCmE")] => true;
    header_exact_inverted: json!({ "Header": [{ "Name": "x-tenant", "Exact": "acme", "Invert": true }] }),
        "GET", "/", &[("x-tenant", "other")] => true;
    header_exact_inverted_same: json!({ "Header": [{ "Name": "x-tenant", "Exact": "acme", "Invert": true }] }),
        "GET", "/", &[("x-tenant", "acme")] => false;
    header_exact_inverted_ignore_case: json!({ "Header": [{ "Name": "x-tenant", "Exact": "acme", "Invert": true, "IgnoreCase": true }] }),
        "GET", "/", &[("x-tenant", "ACME")] => false;
    header_exact_inverted_missing: json!({ "Header": [{ "Name": "x-tenant", "Exact": "acme", "Invert": true }] }),
        "GET", "/", &[] => false;

    header_prefix: json!({ "Header": [{ "Name": "x-v", "Prefix": "ab" }] }), "GET", "/", &[("x-v", "abc")] => true;
    header_prefix_misses: json!({ "Header": [{ "Name": "x-v", "Prefix": "ab" }] }), "GET", "/", &[("x-v", "cab")] => false;
    header_prefix_ignore_case: json!({ "Header": [{ "Name": "x-v", "Prefix": "AB", "IgnoreCase": true }] }),
        "GET", "/", &[("x-v", "aBc")] => true;
    header_prefix_inverted: json!({ "Header": [{ "Name": "x-v", "Prefix": "ab", "Invert": true }] }),
        "GET", "/", &[("x-v", "cab")] => true;

    header_suffix: json!({ "Header": [{ "Name": "x-v", "Suffix": "bc" }] }), "GET", "/", &[("x-v", "abc")] => true;
    header_suffix_misses: json!({ "Header": [{ "Name": "x-v", "Suffix": "bc" }] }), "GET", "/", &[("x-v", "bca")] => false;
    header_suffix_ignore_case: json!({ "Header": [{ "Name": "x-v", "Suffix": "BC", "IgnoreCase": true }] }),
        "GET", "/", &[("x-v", "abC")] => true;
    header_suffix_inverted: json!({ "Header": [{ "Name": "x-v", "Suffix": "bc", "Invert": true }] }),
        "GET", "/", &[("x-v", "abc")] => false;

    header_contains: json!({ "Header": [{ "Name": "x-v", "Contains": "mid" }] }), "GET", "/", &[("x-v", "amidst")] => true;
    header_contains_misses: json!({ "Header": [{ "Name": "x-v", "Contains": "mid" }] }), "GET", "/", &[("x-v", "m-i-d")] => false;
    header_contains_ignore_case: json!({ "Header": [{ "Name": "x-v", "Contains": "MID", "IgnoreCase": true }] }),
        "GET", "/", &[("x-v", "aMiDst")] => true;
    header_contains_inverted: json!({ "Header": [{ "Name": "x-v", "Contains": "mid", "Invert": true }] }),
        "GET", "/", &[("x-v", "none")] => true;

    header_regex_full_match: json!({ "Header": [{ "Name": "x-v", "Regex": "[0-9]+" }] }), "GET", "/", &[("x-v", "123")] => true;
    header_regex_is_anchored: json!({ "Header": [{ "Name": "x-v", "Regex": "[0-9]+" }] }), "GET", "/", &[("x-v", "a123")] => false;
    header_regex_inverted: json!({ "Header": [{ "Name": "x-v", "Regex": "[0-9]+", "Invert": true }] }),
        "GET", "/", &[("x-v", "a123")] => true;

    header_values_are_joined_with_commas: json!({ "Header": [{ "Name": "x-v", "Exact": "a,b" }] }),
        "GET", "/", &[("x-v", "a"), ("x-v", "b")] => true;
    header_joined_values_do_not_match_one: json!({ "Header": [{ "Name": "x-v", "Exact": "a" }] }),
        "GET", "/", &[("x-v", "a"), ("x-v", "b")] => false;
    pseudo_header_method: json!({ "Header": [{ "Name": ":method", "Exact": "GET" }] }), "GET", "/", &[] => true;
    pseudo_header_authority_reads_host: json!({ "Header": [{ "Name": ":authority", "Suffix": ".internal" }] }),
        "GET", "/", &[("host", "api.internal")] => true;
    all_headers_must_match: json!({ "Header": [{ "Name": "a", "Present": true }, { "Name": "b", "Present": true }] }),
        "GET", "/", &[("a", "1")] => false;
}

#[test]
fn permissions_are_evaluated_in_order() {
    // The shape of Consul's gRPC example: deny one method, then allow the service.
    let ixns = ixns_for(
        "billing",
        DENY,
        json!([{ "Kind": "service-intentions", "Name": "billing", "Sources": [
            { "Name": "storefront", "Permissions": [
                { "Action": "deny", "HTTP": { "PathExact": "/shop.Billing/Refund" } },
                { "Action": "allow", "HTTP": { "PathPrefix": "/shop.Billing/" } } ] },
            { "Name": "helpdesk", "Permissions": [
                { "Action": "allow", "HTTP": { "PathPrefix": "/shop.Billing/" } } ] } ] }]),
    );
    let storefront = local("default", "storefront");
    let d = l7(&ixns, &storefront, "POST", "/shop.Billing/Refund", &[]);
    assert_eq!(
        (d.allowed, d.reason),
        (false, Reason::MatchedPermission { index: 0 })
    );
    let d = l7(&ixns, &storefront, "POST", "/shop.Billing/Charge", &[]);
    assert_eq!(
        (d.allowed, d.reason),
        (true, Reason::MatchedPermission { index: 1 })
    );
    let d = l7(&ixns, &storefront, "POST", "/shop.Other/Charge", &[]);
    assert_eq!((d.allowed, d.reason), (false, Reason::NoPermissionMatched));
    let d = l7(
        &ixns,
        &local("default", "helpdesk"),
        "POST",
        "/shop.Billing/Refund",
        &[],
    );
    assert_eq!(
        (d.allowed, d.reason),
        (true, Reason::MatchedPermission { index: 0 })
    );
}

#[test]
fn no_permission_matched_takes_the_default_not_a_lower_intention() {
    let ixns = ixns(
        DENY,
        json!([
            { "Kind": "service-intentions", "Name": "api", "Sources": [
                { "Name": "web", "Permissions": [{ "Action": "allow", "HTTP": { "PathPrefix": "/public/" } }] },
                { "Name": "*", "Action": "allow" } ] },
            { "Kind": "service-intentions", "Name": "*", "Sources": [{ "Name": "web", "Action": "allow" }] }
        ]),
    );
    let d = l7(&ixns, &web(), "GET", "/private", &[]);
    assert_eq!(
        (d.allowed, d.reason, d.matched),
        (false, Reason::NoPermissionMatched, Some(0))
    );
    // The same `* -> api` allow admits everyone else.
    let d = l7(&ixns, &local("default", "billing"), "GET", "/private", &[]);
    assert_eq!(
        (d.allowed, d.reason),
        (true, Reason::MatchedL4 { allow: true })
    );

    // Under default allow, an unmatched request is allowed.
    let open = api_entry(
        ALLOW,
        json!([{ "Name": "web", "Permissions": [{ "Action": "deny", "HTTP": { "PathPrefix": "/admin" } }] }]),
    );
    assert!(l7(&open, &web(), "GET", "/public", &[]).allowed);
    assert!(!l7(&open, &web(), "GET", "/admin/x", &[]).allowed);
}

#[test]
fn jwt_permission_never_allows() {
    let ixns = api_entry(
        DENY,
        json!([{ "Name": "web", "Permissions": [
            { "Action": "allow", "HTTP": { "PathPrefix": "/a" }, "JWT": { "Providers": [{ "Name": "okta" }] } },
            { "Action": "allow", "HTTP": { "PathPrefix": "/" } } ] }]),
    );
    let d = l7(&ixns, &web(), "GET", "/a/x", &[]);
    assert_eq!(
        (d.allowed, d.reason),
        (false, Reason::MatchedPermission { index: 0 })
    );
    assert!(l7(&ixns, &web(), "GET", "/b", &[]).allowed);
}

#[test]
fn worked_example_from_consuls_intentions_docs() {
    let ixns = api_entry(
        DENY,
        json!([
            { "Name": "hackathon-project", "Action": "deny" },
            { "Name": "web", "Action": "allow" },
            { "Name": "nightly-reconciler", "Permissions": [
                { "Action": "allow", "HTTP": { "PathExact": "/v1/reconcile-data", "Methods": ["POST"] } } ] }
        ]),
    );
    // web: any request allowed, precedence 9.
    let d = l7(&ixns, &web(), "DELETE", "/anything", &[]);
    assert_eq!(
        (d.allowed, d.reason),
        (true, Reason::MatchedL4 { allow: true })
    );
    assert_eq!(matched_precedence(&ixns, &d), Some(9));
    assert!(l4(&ixns, &web()).allowed);
    // nightly-reconciler: POST allowed, GET falls to the default, L4 is denied.
    let reconciler = local("default", "nightly-reconciler");
    let d = l7(&ixns, &reconciler, "POST", "/v1/reconcile-data", &[]);
    assert_eq!(
        (d.allowed, d.reason),
        (true, Reason::MatchedPermission { index: 0 })
    );
    let d = l7(&ixns, &reconciler, "GET", "/v1/reconcile-data", &[]);
    assert_eq!((d.allowed, d.reason), (false, Reason::NoPermissionMatched));
    let d = l4(&ixns, &reconciler);
    assert_eq!((d.allowed, d.reason), (false, Reason::L7IntentionOnL4));
    assert_eq!(
        ixns.rules()[d.matched.unwrap()].to_string(),
        "default/nightly-reconciler => default/api (Precedence: 9, Permissions: 1)"
    );
    // hackathon-project: denied. billing: no intention, default deny.
    assert!(!l4(&ixns, &local("default", "hackathon-project")).allowed);
    let d = l4(&ixns, &local("default", "billing"));
    assert_eq!(
        (d.allowed, d.reason, d.matched),
        (false, Reason::Default, None)
    );
}

mod order_independence {
    use super::*;
    use proptest::prelude::*;

    /// (peer, partition, namespace, name, rule) of one source; valid by construction.
    type Src = (String, String, String, String, Value);

    fn rule(l7_allowed: bool) -> BoxedStrategy<Value> {
        let action = prop_oneof![Just("allow"), Just("deny")];
        let l4 = action.clone().prop_map(|a| json!({ "Action": a }));
        if !l7_allowed {
            return l4.boxed();
        }
        let criteria = prop_oneof![
            Just(json!({ "PathPrefix": "/a" })),
            Just(json!({ "PathExact": "/a/b" })),
            Just(json!({ "Methods": ["GET"] })),
            Just(json!({ "Header": [{ "Name": "x-k", "Exact": "v" }] })),
            Just(json!({ "Header": [{ "Name": "x-k", "Present": true, "Invert": true }] })),
        ];
        let perm = (action, criteria).prop_map(|(a, http)| json!({ "Action": a, "HTTP": http }));
        let l7 =
            prop::collection::vec(perm, 1..4).prop_map(|perms| json!({ "Permissions": perms }));
        prop_oneof![l4, l7].boxed()
    }

    fn source(l7_allowed: bool) -> impl Strategy<Value = Src> {
        let origin = prop_oneof![
            Just((String::new(), String::new())),
            Just((String::new(), "p2".to_owned())),
            Just(("east".to_owned(), String::new())),
        ];
        let ns_name = prop_oneof![
            Just(("", "web")),
            Just(("default", "web")),
            Just(("default", "db")),
            Just(("other", "web")),
            Just(("", "*")),
            Just(("other", "*")),
            Just(("*", "*")),
        ];
        (origin, ns_name, rule(l7_allowed)).prop_map(|((peer, partition), (ns, name), rule)| {
            (peer, partition, ns.to_owned(), name.to_owned(), rule)
        })
    }

    /// Drops sources that would be duplicates once `""` reads as `default`.
    fn unique(srcs: Vec<Src>) -> Vec<Src> {
        let mut seen = std::collections::HashSet::new();
        srcs.into_iter()
            .filter(|(peer, partition, ns, name, _)| {
                let ns = if ns.is_empty() { "default" } else { ns };
                seen.insert((peer.clone(), partition.clone(), ns.to_owned(), name.clone()))
            })
            .collect()
    }

    fn entry(ns: &str, name: &str, srcs: &[Src]) -> Value {
        let sources: Vec<Value> = srcs
            .iter()
            .map(|(peer, partition, src_ns, src_name, rule)| {
                let mut v = rule.clone();
                v["Name"] = json!(src_name);
                for (key, value) in [
                    ("Peer", peer),
                    ("Partition", partition),
                    ("Namespace", src_ns),
                ] {
                    if !value.is_empty() {
                        v[key] = json!(value);
                    }
                }
                v
            })
            .collect();
        json!({ "Kind": "service-intentions", "Name": name, "Namespace": ns, "Sources": sources })
    }

    fn all_entries() -> impl Strategy<Value = Vec<Value>> {
        let exact = prop::collection::vec(source(true), 0..6).prop_map(unique);
        let any_name = prop::collection::vec(source(false), 0..4).prop_map(unique);
        let any_ns = prop::collection::vec(source(false), 0..3).prop_map(unique);
        (exact, any_name, any_ns).prop_map(|(exact, any_name, any_ns)| {
            [
                ("default", "api", exact),
                ("default", "*", any_name),
                ("*", "*", any_ns),
            ]
            .into_iter()
            .filter(|(_, _, srcs)| !srcs.is_empty())
            .map(|(ns, name, srcs)| entry(ns, name, &srcs))
            .collect()
        })
    }

    fn caller() -> impl Strategy<Value = Peer> {
        (
            prop_oneof![4 => Just(""), 1 => Just("east"), 1 => Just("west")],
            prop_oneof![3 => Just("default"), 1 => Just("p2")],
            prop_oneof![3 => Just("default"), 1 => Just("other")],
            prop_oneof![3 => Just("web"), 1 => Just("db"), 1 => Just("x")],
        )
            .prop_map(|(peer, partition, namespace, service)| Peer {
                peer: peer.into(),
                partition: partition.into(),
                namespace: namespace.into(),
                service: service.into(),
            })
    }

    type Req = Option<(&'static str, &'static str, Option<&'static str>)>;

    fn request() -> impl Strategy<Value = Req> {
        let req = (
            prop_oneof![Just("GET"), Just("POST")],
            prop_oneof![Just("/a"), Just("/a/b"), Just("/c")],
            prop_oneof![Just(None), Just(Some("v")), Just(Some("w"))],
        );
        prop::option::of(req)
    }

    fn shuffle<T>(items: &mut [T], seed: &mut u64) {
        for i in (1..items.len()).rev() {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            items.swap(i, (*seed % (i as u64 + 1)) as usize);
        }
    }

    /// The same intentions as the match API would list them for `api`.
    fn match_list(entries: &[Value]) -> Vec<wire::Intention> {
        let mut out = Vec::new();
        for e in entries {
            let entry: wire::ServiceIntentionsEntry = serde_json::from_value(e.clone()).unwrap();
            for src in &entry.sources {
                let remote = !src.peer.is_empty();
                let inherited = if entry.namespace == "*" {
                    "default"
                } else {
                    &entry.namespace
                };
                out.push(wire::Intention {
                    source_ns: if src.namespace.is_empty() && !remote {
                        inherited.into()
                    } else {
                        src.namespace.clone()
                    },
                    source_name: src.name.clone(),
                    source_partition: src.partition.clone(),
                    source_peer: src.peer.clone(),
                    source_type: "consul".into(),
                    destination_ns: entry.namespace.clone(),
                    destination_name: entry.name.clone(),
                    action: src.action.clone(),
                    permissions: src.permissions.clone(),
                    ..Default::default()
                });
            }
        }
        out
    }

    fn decide_with(ixns: &Intentions, peer: &Peer, req: Req) -> (bool, Reason, Option<String>) {
        let d = match req {
            None => decide(ixns, peer, None),
            Some((method, path, header)) => {
                let hdrs: Vec<(&str, &str)> = header.map(|v| ("x-k", v)).into_iter().collect();
                l7(ixns, peer, method, path, &hdrs)
            }
        };
        (
            d.allowed,
            d.reason,
            d.matched.map(|i| ixns.rules()[i].to_string()),
        )
    }

    proptest! {
        #[test]
        fn decision_does_not_depend_on_input_order(
            docs in all_entries(),
            seed in any::<u64>(),
            default_allow in any::<bool>(),
            callers in prop::collection::vec((caller(), request()), 1..8),
        ) {
            let default = if default_allow { ALLOW } else { DENY };
            let reference = Intentions::from_config_entries(&entries(Value::Array(docs.clone())), dest("api"), default).unwrap();

            let mut seed = seed | 1;
            let mut shuffled = docs.clone();
            shuffle(&mut shuffled, &mut seed);
            for e in &mut shuffled {
                if let Some(Value::Array(srcs)) = e.get_mut("Sources") {
                    shuffle(srcs, &mut seed);
                }
            }
            let permuted = Intentions::from_config_entries(&entries(Value::Array(shuffled)), dest("api"), default).unwrap();

            let mut list = match_list(&docs);
            shuffle(&mut list, &mut seed);
            let matched = Intentions::from_match(list, dest("api"), default).unwrap();

            for (peer, req) in &callers {
                let want = decide_with(&reference, peer, *req);
                prop_assert_eq!(&decide_with(&permuted, peer, *req), &want, "permuted entries, {:?} {:?}", peer, req);
                prop_assert_eq!(&decide_with(&matched, peer, *req), &want, "match list, {:?} {:?}", peer, req);
            }
        }
    }
}
