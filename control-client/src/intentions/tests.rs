//! The model's tests: building, validating, precedence and order.

use super::build::ns_and_name;
use super::order::precedence;
use super::*;
use crate::api::intentions as wire;
use serde_json::{Value, json};

fn api() -> Destination {
    Destination::new("", "", "api")
}

fn entries(v: Value) -> Vec<wire::ServiceIntentionsEntry> {
    serde_json::from_value(v).unwrap()
}

fn build_entries(v: Value) -> Result<Intentions, IntentionsError> {
    Intentions::from_config_entries(&entries(v), api(), Action::Deny)
}

/// The problem reported for the first source of a one-entry document for `api`.
fn source_problem(src: Value) -> Invalid {
    match build_entries(json!([{ "Kind": "service-intentions", "Name": "api", "Sources": [src] }]))
    {
        Err(IntentionsError::Source { problem, .. }) => problem,
        other => panic!("expected a source error, got {other:?}"),
    }
}

fn permission_problem(perm: Value) -> PermissionInvalid {
    match source_problem(json!({ "Name": "web", "Permissions": [perm] })) {
        Invalid::Permission { index: 0, problem } => problem,
        other => panic!("expected a permission error, got {other:?}"),
    }
}

fn displays(ixns: &Intentions) -> Vec<String> {
    ixns.rules().iter().map(ToString::to_string).collect()
}

#[test]
fn candidates_are_every_rule_that_can_name_the_caller_in_evaluation_order() {
    let ixns = build_entries(
        json!([{ "Kind": "service-intentions", "Name": "api", "Sources": [
            { "Name": "web", "Action": "allow" },
            { "Name": "*", "Namespace": "ops", "Action": "deny" },
            { "Name": "web", "Namespace": "ops", "Action": "deny" },
            { "Name": "db", "Action": "allow" },
            { "Name": "*", "Action": "deny" }
        ]}]),
    )
    .unwrap();
    for service in ["web", "db", "stranger"] {
        let scanned: Vec<usize> = ixns
            .rules()
            .iter()
            .enumerate()
            .filter(|(_, r)| r.source().name.matches(service))
            .map(|(i, _)| i)
            .collect();
        let indexed: Vec<usize> = ixns.candidates(service).collect();
        assert_eq!(indexed, scanned, "{service}");
    }
}

#[test]
fn action_parses_case_insensitively_and_names_bad_values() {
    assert_eq!("allow".parse(), Ok(Action::Allow));
    assert_eq!("DENY".parse(), Ok(Action::Deny));
    assert_eq!("Allow".parse(), Ok(Action::Allow));
    let err = "permit".parse::<Action>().unwrap_err();
    assert_eq!(err, UnknownAction("permit".into()));
    assert!(err.to_string().contains("\"permit\""));
    assert_eq!(
        serde_json::from_value::<Action>(json!("ALLOW")).unwrap(),
        Action::Allow
    );
    assert!(serde_json::from_value::<Action>(json!("maybe")).is_err());
    assert_eq!(serde_json::to_value(Action::Deny).unwrap(), json!("deny"));
}

#[test]
fn peer_and_destination_from_service_id() {
    let mut id = ServiceId::new("td.consul", "shop", "dc1", "web");
    id.partition = "retail".into();
    let peer = Peer::from(&id);
    assert_eq!(
        peer,
        Peer {
            peer: String::new(),
            partition: "retail".into(),
            namespace: "shop".into(),
            service: "web".into()
        }
    );
    assert_eq!(peer.to_string(), "retail/shop/web");

    // Local callers are local; a federated trust domain is a peer named after it.
    assert_eq!(Peer::of_caller(&id, &id.trust_domain), peer);
    let federated = Peer::of_caller(&id, "other.consul");
    assert_eq!(federated.peer, id.trust_domain);
    assert_eq!(
        federated.to_string(),
        format!("peer({})/shop/web", id.trust_domain)
    );
    assert_eq!(
        Destination::from(&id),
        Destination::new("retail", "shop", "web")
    );
}

fn shape(ns: &str, name: &str) -> (NamePattern, NamePattern) {
    ns_and_name(ns, name).unwrap()
}

#[test]
fn precedence_of_every_wildcard_shape() {
    // (source ns, source name, destination ns, destination name, precedence): Consul's
    // precedence table (docs/consul-semantics.md#intentions).
    let table = [
        ("default", "web", "default", "api", 9),
        ("default", "*", "default", "api", 8),
        ("*", "*", "default", "api", 7),
        ("default", "web", "default", "*", 6),
        ("default", "*", "default", "*", 5),
        ("*", "*", "default", "*", 4),
        ("default", "web", "*", "*", 3),
        ("default", "*", "*", "*", 2),
        ("*", "*", "*", "*", 1),
    ];
    for (src_ns, src_name, dst_ns, dst_name, want) in table {
        let (namespace, name) = shape(src_ns, src_name);
        let source = Source {
            peer: String::new(),
            sameness_group: String::new(),
            partition: DEFAULT.into(),
            namespace,
            name,
        };
        let (namespace, name) = shape(dst_ns, dst_name);
        let target = Target {
            partition: DEFAULT.into(),
            namespace,
            name,
        };
        assert_eq!(
            precedence(&source, &target),
            want,
            "{src_ns}/{src_name} => {dst_ns}/{dst_name}"
        );
    }
}

#[test]
fn precedence_is_computed_not_trusted() {
    let ixns = Intentions::from_match(
        serde_json::from_value(json!([
            { "SourceNS": "default", "SourceName": "web", "DestinationNS": "default",
              "DestinationName": "api", "SourceType": "consul", "Action": "allow", "Precedence": 1 },
            { "SourceNS": "default", "SourceName": "*", "DestinationNS": "default",
              "DestinationName": "*", "SourceType": "consul", "Action": "deny", "Precedence": 99 }
        ]))
        .unwrap(),
        api(),
        Action::Deny,
    )
    .unwrap();
    let precedences: Vec<u32> = ixns.rules().iter().map(Intention::precedence).collect();
    assert_eq!(precedences, [9, 5]);
}

#[test]
fn display_follows_consuls_intention_string() {
    let ixns = build_entries(json!([
        { "Kind": "service-intentions", "Name": "api", "Sources": [
            { "Name": "web", "Action": "allow" },
            { "Name": "batch", "Permissions": [
                { "Action": "allow", "HTTP": { "PathPrefix": "/" } },
                { "Action": "deny", "HTTP": { "Methods": ["DELETE"] } } ] },
            { "Name": "web", "Peer": "east", "Action": "deny" },
            { "Name": "web", "Partition": "retail", "Action": "deny" } ] },
        { "Kind": "service-intentions", "Name": "*", "JWT": { "Providers": [{ "Name": "okta" }] },
          "Sources": [ { "Name": "*", "Action": "allow" } ] }
    ]))
    .unwrap();
    assert_eq!(
        displays(&ixns),
        [
            "default/batch => default/api (Precedence: 9, Permissions: 2)",
            "default/web => default/api (Precedence: 9, Action: ALLOW)",
            "retail/default/web => default/api (Precedence: 9, Action: DENY)",
            "peer(east)/default/web => default/api (Precedence: 9, Action: DENY)",
            "default/* => default/* (Precedence: 5, Action: ALLOW, JWT not enforced: allow => deny)",
        ]
    );
    let legacy = Intentions::from_match(
        serde_json::from_value(
            json!([{ "ID": "abc", "SourceNS": "default", "SourceName": "web",
            "DestinationNS": "default", "DestinationName": "api", "SourceType": "consul",
            "Action": "allow" }]),
        )
        .unwrap(),
        api(),
        Action::Deny,
    )
    .unwrap();
    assert_eq!(
        displays(&legacy),
        ["default/web => default/api (ID: abc, Precedence: 9, Action: ALLOW)"]
    );
}

#[test]
fn jwt_requirements_never_allow() {
    let ixns = build_entries(json!([{ "Kind": "service-intentions", "Name": "api", "Sources": [
        { "Name": "web", "Permissions": [
            { "Action": "allow", "HTTP": { "PathPrefix": "/a" }, "JWT": { "Providers": [{ "Name": "okta" }] } },
            { "Action": "allow", "HTTP": { "PathPrefix": "/b" } } ] },
        { "Name": "db", "Permissions": [
            { "Action": "allow", "HTTP": { "PathPrefix": "/" }, "JWT": { "Providers": [] } } ] } ] }]))
    .unwrap();
    let actions = |ixn: &Intention| match ixn.rule() {
        Rule::Permissions(perms) => perms.iter().map(|p| p.action).collect::<Vec<_>>(),
        Rule::Action(_) => panic!("expected L7"),
    };
    // An empty provider list requires nothing.
    assert_eq!(ixns.rules()[0].unenforced(), None);
    assert_eq!(actions(&ixns.rules()[0]), [Action::Allow]);
    assert_eq!(ixns.rules()[1].unenforced(), Some(Unenforced::Jwt));
    assert_eq!(actions(&ixns.rules()[1]), [Action::Deny, Action::Allow]);

    let entry_wide = build_entries(json!([{ "Kind": "service-intentions", "Name": "api",
        "JWT": { "Providers": [{ "Name": "okta" }] },
        "Sources": [ { "Name": "web", "Action": "allow" } ] }]))
    .unwrap();
    assert!(matches!(
        entry_wide.rules()[0].rule(),
        Rule::Action(Action::Deny)
    ));
}

#[test]
fn sameness_group_sources_never_allow() {
    let ixns = build_entries(
        json!([{ "Kind": "service-intentions", "Name": "api", "Sources": [
        { "Name": "web", "SamenessGroup": "mirror", "Action": "allow" } ] }]),
    )
    .unwrap();
    let rule = &ixns.rules()[0];
    assert_eq!(rule.unenforced(), Some(Unenforced::SamenessGroup));
    assert!(matches!(rule.rule(), Rule::Action(Action::Deny)));
    assert_eq!(rule.source().partition, "");
    assert_eq!(
        rule.to_string(),
        "sameness-group(mirror)/default/web => default/api (Precedence: 9, Action: ALLOW, sameness group not enforced: allow => deny)"
    );
}

#[test]
fn sources_inherit_the_destination_namespace_and_partition() {
    let dest = Destination::new("retail", "shop", "api");
    let ixns = Intentions::from_config_entries(
        &entries(json!([
            { "Kind": "service-intentions", "Name": "api", "Namespace": "shop", "Partition": "retail",
              "Sources": [ { "Name": "web", "Action": "allow" },
                           { "Name": "web", "Peer": "east", "Action": "allow" } ] },
            { "Kind": "service-intentions", "Name": "*", "Namespace": "*", "Partition": "retail",
              "Sources": [ { "Name": "ops", "Action": "allow" } ] },
            // Other destinations: validated, then ignored.
            { "Kind": "service-intentions", "Name": "api", "Namespace": "other",
              "Sources": [ { "Name": "x", "Action": "allow" } ] },
            { "Kind": "service-intentions", "Name": "api", "Sources": [ { "Name": "x", "Action": "deny" } ] },
            { "Kind": "service-intentions", "Name": "db", "Namespace": "shop", "Partition": "retail",
              "Sources": [ { "Name": "x", "Action": "allow" } ] }
        ])),
        dest,
        Action::Deny,
    )
    .unwrap();
    let sources: Vec<(String, String, String)> = ixns
        .rules()
        .iter()
        .map(|r| {
            let s = r.source();
            (
                s.partition.clone(),
                s.namespace.to_string(),
                r.target().to_string(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        [
            ("retail".into(), "shop".into(), "retail/shop/api".into()),
            (String::new(), "default".into(), "retail/shop/api".into()),
            ("retail".into(), "default".into(), "retail/*/*".into()),
        ]
    );
}

#[test]
fn rules_sorted_in_a_total_order_whatever_the_input_order() {
    let sources = [
        json!({ "Name": "web", "Action": "allow" }),
        json!({ "Name": "web", "Peer": "east", "Action": "deny" }),
        json!({ "Name": "*", "Action": "deny" }),
        json!({ "Name": "admin", "Permissions": [{ "Action": "allow", "HTTP": { "PathPrefix": "/" } }] }),
        json!({ "Name": "web", "Partition": "aaa", "Action": "deny" }),
    ];
    let want = [
        "aaa/default/web => default/api (Precedence: 9, Action: DENY)",
        "default/admin => default/api (Precedence: 9, Permissions: 1)",
        "default/web => default/api (Precedence: 9, Action: ALLOW)",
        "peer(east)/default/web => default/api (Precedence: 9, Action: DENY)",
        "default/* => default/api (Precedence: 8, Action: DENY)",
    ];
    // Every permutation, by Heap's algorithm.
    let mut order: Vec<usize> = (0..sources.len()).collect();
    let mut c = vec![0; order.len()];
    let check = |order: &[usize]| {
        let srcs: Vec<&Value> = order.iter().map(|&i| &sources[i]).collect();
        let ixns = build_entries(
            json!([{ "Kind": "service-intentions", "Name": "api", "Sources": srcs }]),
        )
        .unwrap();
        assert_eq!(displays(&ixns), want, "input order {order:?}");
    };
    check(&order);
    let mut i = 0;
    while i < order.len() {
        if c[i] < i {
            order.swap(if i % 2 == 0 { 0 } else { c[i] }, i);
            check(&order);
            c[i] += 1;
            i = 0;
        } else {
            c[i] = 0;
            i += 1;
        }
    }
}

#[test]
fn converts_l7_permissions() {
    let ixns = build_entries(
        json!([{ "Kind": "service-intentions", "Name": "api", "Sources": [
        { "Name": "web", "Permissions": [ { "Action": "deny", "HTTP": {
            "PathRegex": "/v[0-9]+/.*",
            "Methods": ["get", "Post"],
            "Header": [
                { "Name": "X-Tenant", "Exact": "ACME", "IgnoreCase": true },
                { "Name": "X-Trace", "Regex": "[a-f0-9]{8}", "Invert": true } ] } } ] } ] }]),
    )
    .unwrap();
    let Rule::Permissions(perms) = ixns.rules()[0].rule() else {
        panic!("expected L7");
    };
    let http = &perms[0].http;
    assert_eq!(perms[0].action, Action::Deny);
    assert_eq!(http.methods, ["GET", "POST"]);
    let Some(PathMatch::Regex(re)) = &http.path else {
        panic!("expected a regex");
    };
    assert!(re.is_match("/v1/x") && !re.is_match("/x/v1/x"));
    assert_eq!(http.headers[0].name, "x-tenant");
    assert!(matches!(&http.headers[0].test, HeaderTest::Exact(s) if s == "acme"));
    assert!(http.headers[0].ignore_case);
    assert!(matches!(&http.headers[1].test, HeaderTest::Regex(re) if !re.is_match("abcdef012")));
    assert!(http.headers[1].invert);
}

#[test]
fn converts_the_match_api_answer() {
    let resp: wire::IntentionMatchResponse = serde_json::from_value(json!({
        "api": [
            { "SourceNS": "default", "SourceName": "web", "DestinationNS": "default",
              "DestinationName": "api", "SourceType": "consul", "Action": "allow",
              "Precedence": 9, "CreateIndex": 5, "ModifyIndex": 5 },
            { "SourceNS": "default", "SourceName": "reports", "DestinationNS": "default",
              "DestinationName": "api", "SourceType": "consul", "Precedence": 9,
              "Permissions": [ { "Action": "allow", "HTTP": { "PathExact": "/summary" } } ],
              "CreateIndex": 5, "ModifyIndex": 6 },
            { "SourceNS": "default", "SourceName": "web", "SourcePeer": "east", "DestinationNS": "default",
              "DestinationName": "*", "SourceType": "consul", "Action": "deny", "Precedence": 6 }
        ],
        "empty": [],
        "null": null
    }))
    .unwrap();
    let list = |name: &str| resp.get(name).cloned().flatten().unwrap_or_default();
    let ixns = Intentions::from_match(list("api"), api(), Action::Deny).unwrap();
    assert_eq!(
        displays(&ixns),
        [
            "default/reports => default/api (Precedence: 9, Permissions: 1)",
            "default/web => default/api (Precedence: 9, Action: ALLOW)",
            "peer(east)/default/web => default/* (Precedence: 6, Action: DENY)",
        ]
    );
    assert!(ixns.rules()[0].is_l7());
    for name in ["empty", "null", "absent"] {
        let ixns = Intentions::from_match(list(name), api(), Action::Allow).unwrap();
        assert!(ixns.rules().is_empty());
        assert_eq!(ixns.default_action(), Action::Allow);
    }
}

// One test per validation rule.

#[test]
fn an_invalid_entry_for_another_service_refuses_the_document() {
    let doc = entries(json!([
        { "Kind": "service-intentions", "Name": "api", "Sources": [{ "Name": "web", "Action": "allow" }] },
        { "Kind": "service-intentions", "Name": "db", "Sources": [{ "Name": "web" }] }
    ]));
    let err = Intentions::from_config_entries(&doc, api(), Action::Deny).unwrap_err();
    assert_eq!(
        err.to_string(),
        "service-intentions default/db: Sources[0] (web): Action must be set to 'allow' or 'deny'"
    );
    assert_eq!(validate_config_entries(&doc), Err(err));
    assert_eq!(validate_config_entries(&doc[..1]), Ok(()));
}

#[test]
fn rejects_a_bad_destination() {
    for dest in [
        Destination::new("", "", ""),
        Destination::new("", "", "*"),
        Destination::new("", "*", "api"),
    ] {
        assert!(matches!(
            Intentions::from_config_entries(&[], dest, Action::Deny),
            Err(IntentionsError::Destination(_))
        ));
    }
}

#[test]
fn rejects_an_entry_without_name() {
    let err = build_entries(json!([{ "Kind": "service-intentions", "Sources": [] }])).unwrap_err();
    assert!(matches!(
        err,
        IntentionsError::Entry {
            problem: Invalid::Missing("Name"),
            ..
        }
    ));
}

#[test]
fn rejects_another_kind() {
    let err = build_entries(json!([{ "Kind": "service-defaults", "Name": "api", "Sources": [] }]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "service-intentions default/api: Kind is \"service-defaults\", want \"service-intentions\""
    );
}

#[test]
fn rejects_an_entry_without_sources() {
    let err =
        build_entries(json!([{ "Kind": "service-intentions", "Name": "api", "Sources": null }]))
            .unwrap_err();
    assert!(matches!(
        err,
        IntentionsError::Entry {
            problem: Invalid::NoSources,
            ..
        }
    ));
}

#[test]
fn rejects_two_entries_for_one_destination() {
    let entry = json!({ "Kind": "service-intentions", "Name": "api", "Sources": [{ "Name": "a", "Action": "allow" }] });
    let mut explicit = entry.clone();
    explicit["Namespace"] = json!("default");
    let err = build_entries(json!([entry, explicit])).unwrap_err();
    assert!(matches!(
        err,
        IntentionsError::Entry {
            problem: Invalid::DuplicateEntry,
            ..
        }
    ));
}

#[test]
fn rejects_a_source_without_name() {
    assert_eq!(
        source_problem(json!({ "Action": "allow" })),
        Invalid::Missing("Name")
    );
}

#[test]
fn errors_name_the_source() {
    let err = build_entries(json!([{ "Kind": "service-intentions", "Name": "api", "Sources": [
        { "Name": "a", "Action": "allow" }, { "Name": "b", "Action": "deny" }, { "Name": "web", "Action": "permit" } ] }]))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "service-intentions default/api: Sources[2] (web): Action: invalid action \"permit\" (want \"allow\" or \"deny\")"
    );
}

#[test]
fn requires_action_without_permissions() {
    assert_eq!(
        source_problem(json!({ "Name": "web" })),
        Invalid::MissingAction
    );
    assert_eq!(
        source_problem(json!({ "Name": "web", "Action": "maybe" })),
        Invalid::Action(UnknownAction("maybe".into()))
    );
}

#[test]
fn rejects_action_with_permissions() {
    let src = json!({ "Name": "web", "Action": "allow",
        "Permissions": [{ "Action": "allow", "HTTP": { "PathPrefix": "/" } }] });
    assert_eq!(source_problem(src), Invalid::ActionWithPermissions);
}

#[test]
fn rejects_permissions_on_a_wildcard_destination() {
    for (ns, name) in [("default", "*"), ("*", "*")] {
        let err = build_entries(json!([{ "Kind": "service-intentions", "Name": name, "Namespace": ns,
            "Sources": [{ "Name": "web", "Permissions": [{ "Action": "allow", "HTTP": { "PathPrefix": "/" } }] }] }]))
        .unwrap_err();
        assert!(
            matches!(
                err,
                IntentionsError::Source {
                    problem: Invalid::PermissionsOnWildcardDestination,
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[test]
fn rejects_a_permission_without_action() {
    assert_eq!(
        permission_problem(json!({ "HTTP": { "PathPrefix": "/" } })),
        PermissionInvalid::MissingAction
    );
    assert_eq!(
        permission_problem(json!({ "Action": "nope", "HTTP": { "PathPrefix": "/" } })),
        PermissionInvalid::Action(UnknownAction("nope".into()))
    );
}

#[test]
fn rejects_a_permission_without_http() {
    assert_eq!(
        permission_problem(json!({ "Action": "allow" })),
        PermissionInvalid::MissingHttp
    );
}

#[test]
fn rejects_an_empty_http_block() {
    assert_eq!(
        permission_problem(json!({ "Action": "allow", "HTTP": {} })),
        PermissionInvalid::EmptyHttp
    );
    assert_eq!(
        permission_problem(
            json!({ "Action": "allow", "HTTP": { "PathExact": "", "Methods": [], "Header": null } })
        ),
        PermissionInvalid::EmptyHttp
    );
}

#[test]
fn rejects_more_than_one_path_matcher() {
    let perm = json!({ "Action": "allow", "HTTP": { "PathExact": "/a", "PathRegex": "/b" } });
    assert_eq!(permission_problem(perm), PermissionInvalid::MultiplePaths);
}

#[test]
fn rejects_paths_not_starting_with_a_slash() {
    assert_eq!(
        permission_problem(json!({ "Action": "allow", "HTTP": { "PathExact": "a" } })),
        PermissionInvalid::RelativePath {
            field: "PathExact",
            value: "a".into()
        }
    );
    assert_eq!(
        permission_problem(json!({ "Action": "allow", "HTTP": { "PathPrefix": "api/" } })),
        PermissionInvalid::RelativePath {
            field: "PathPrefix",
            value: "api/".into()
        }
    );
}

#[test]
fn rejects_bad_and_oversized_regexes() {
    for pattern in ["(", "/a)|(.*", "x{100000}"] {
        let problem =
            permission_problem(json!({ "Action": "allow", "HTTP": { "PathRegex": pattern } }));
        assert!(
            matches!(&problem, PermissionInvalid::Regex { field, .. } if field == "PathRegex"),
            "{pattern}: {problem}"
        );
    }
    let problem = permission_problem(json!({ "Action": "allow",
        "HTTP": { "Header": [{ "Name": "x", "Regex": "[" }] } }));
    assert!(
        matches!(&problem, PermissionInvalid::Regex { field, .. } if field == "Header[0].Regex")
    );
}

#[test]
fn rejects_a_header_without_name() {
    let perm = json!({ "Action": "allow", "HTTP": { "Header": [{ "Exact": "v" }] } });
    assert_eq!(permission_problem(perm), PermissionInvalid::HeaderName(0));
}

#[test]
fn requires_exactly_one_header_test() {
    for hdr in [
        json!({ "Name": "x" }),
        json!({ "Name": "x", "Present": true, "Exact": "v" }),
        json!({ "Name": "x", "Prefix": "a", "Suffix": "b" }),
        json!({ "Name": "x", "Invert": true }),
    ] {
        let perm = json!({ "Action": "allow", "HTTP": { "Header": [hdr] } });
        assert_eq!(
            permission_problem(perm),
            PermissionInvalid::HeaderTests {
                index: 0,
                name: "x".into()
            }
        );
    }
}

#[test]
fn rejects_ignore_case_with_present_or_regex() {
    for hdr in [
        json!({ "Name": "x", "Present": true, "IgnoreCase": true }),
        json!({ "Name": "x", "Regex": "a", "IgnoreCase": true }),
    ] {
        let perm = json!({ "Action": "allow", "HTTP": { "Header": [hdr] } });
        assert_eq!(
            permission_problem(perm),
            PermissionInvalid::HeaderIgnoreCase {
                index: 0,
                name: "x".into()
            }
        );
    }
}

#[test]
fn rejects_bad_and_repeated_methods() {
    assert_eq!(
        permission_problem(json!({ "Action": "allow", "HTTP": { "Methods": ["FETCH"] } })),
        PermissionInvalid::Method("FETCH".into())
    );
    assert_eq!(
        permission_problem(json!({ "Action": "allow", "HTTP": { "Methods": ["get", "GET"] } })),
        PermissionInvalid::DuplicateMethod("GET".into())
    );
}

#[test]
fn rejects_partial_wildcards() {
    assert_eq!(
        source_problem(json!({ "Name": "web*", "Action": "allow" })),
        Invalid::PartialWildcard {
            field: "Name",
            value: "web*".into()
        }
    );
    assert_eq!(
        source_problem(json!({ "Name": "*", "Namespace": "team-*", "Action": "allow" })),
        Invalid::PartialWildcard {
            field: "Namespace",
            value: "team-*".into()
        }
    );
    let err = build_entries(
        json!([{ "Kind": "service-intentions", "Name": "*", "Namespace": "*",
        "Sources": [{ "Name": "*", "Partition": "p*", "Action": "allow" }] }]),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        IntentionsError::Source {
            problem: Invalid::WildcardNotAllowed("Partition"),
            ..
        }
    ));
}

#[test]
fn rejects_an_exact_name_after_a_wildcard_namespace() {
    assert_eq!(
        source_problem(json!({ "Name": "web", "Namespace": "*", "Action": "allow" })),
        Invalid::ExactAfterWildcardNamespace("web".into())
    );
    let err = build_entries(
        json!([{ "Kind": "service-intentions", "Name": "api", "Namespace": "*",
        "Sources": [{ "Name": "web", "Action": "allow" }] }]),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        IntentionsError::Entry {
            problem: Invalid::ExactAfterWildcardNamespace(_),
            ..
        }
    ));
}

#[test]
fn rejects_wildcard_partitions_peers_and_sameness_groups() {
    assert_eq!(
        source_problem(json!({ "Name": "web", "Partition": "*", "Action": "allow" })),
        Invalid::WildcardNotAllowed("Partition")
    );
    assert_eq!(
        source_problem(json!({ "Name": "web", "Peer": "*", "Action": "allow" })),
        Invalid::WildcardNotAllowed("Peer")
    );
    assert_eq!(
        source_problem(json!({ "Name": "web", "SamenessGroup": "g*", "Action": "allow" })),
        Invalid::WildcardNotAllowed("SamenessGroup")
    );
}

#[test]
fn rejects_peer_partition_and_sameness_group_together() {
    assert_eq!(
        source_problem(
            json!({ "Name": "web", "Peer": "east", "Partition": "p", "Action": "allow" })
        ),
        Invalid::Exclusive("Peer", "Partition")
    );
    assert_eq!(
        source_problem(
            json!({ "Name": "web", "SamenessGroup": "g", "Partition": "p", "Action": "allow" })
        ),
        Invalid::Exclusive("SamenessGroup", "Partition")
    );
    assert_eq!(
        source_problem(
            json!({ "Name": "web", "SamenessGroup": "g", "Peer": "east", "Action": "allow" })
        ),
        Invalid::Exclusive("SamenessGroup", "Peer")
    );
}

#[test]
fn rejects_another_source_type() {
    assert_eq!(
        source_problem(json!({ "Name": "web", "Type": "external", "Action": "allow" })),
        Invalid::Type("external".into())
    );
}

#[test]
fn rejects_duplicate_sources() {
    // Duplicates after normalization: "" and "default" are the same namespace.
    let err = build_entries(
        json!([{ "Kind": "service-intentions", "Name": "api", "Sources": [
        { "Name": "web", "Action": "allow" },
        { "Name": "web", "Peer": "east", "Action": "allow" },
        { "Name": "web", "Namespace": "default", "Action": "deny" } ] }]),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "service-intentions default/api: Sources[2] (web): defined more than once"
    );

    let dup = json!({ "SourceNS": "default", "SourceName": "web", "DestinationNS": "default",
        "DestinationName": "api", "SourceType": "consul", "Action": "allow" });
    let err = Intentions::from_match(
        serde_json::from_value(json!([dup, dup])).unwrap(),
        api(),
        Action::Deny,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        IntentionsError::Match {
            index: 1,
            problem: Invalid::DuplicateSource,
            ..
        }
    ));
}

#[test]
fn validates_match_intentions_too() {
    let err = Intentions::from_match(
        serde_json::from_value(json!([{ "SourceNS": "default", "SourceName": "web",
            "DestinationNS": "default", "DestinationName": "api", "SourceType": "consul" }]))
        .unwrap(),
        api(),
        Action::Deny,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "intentions match[0] (default/web => default/api): Action must be set to 'allow' or 'deny'"
    );
}

/// Moved from the dev agent, which stores this as `Precedence` on every write.
#[test]
fn precedence_of_wire_names_follows_the_table() {
    assert_eq!(precedence_of("default", "db", "default", "web"), 9);
    assert_eq!(precedence_of("default", "db", "default", "*"), 8);
    assert_eq!(precedence_of("default", "db", "*", "*"), 7);
    assert_eq!(precedence_of("default", "*", "default", "web"), 6);
    assert_eq!(precedence_of("default", "*", "default", "*"), 5);
    assert_eq!(precedence_of("*", "*", "*", "*"), 1);
    // An empty namespace is `default`: exact.
    assert_eq!(precedence_of("", "db", "", "*"), 8);
}
