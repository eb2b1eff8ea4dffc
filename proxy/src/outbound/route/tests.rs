use super::*;
use ferrule_control::routing::RetryPolicy;
use http::{HeaderValue, Method};

fn req(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap()
}

fn get(uri: &str) -> Request<()> {
    req(Method::GET, uri, &[])
}

fn path(m: PathMatch) -> RouteMatch {
    RouteMatch {
        path: m,
        ..RouteMatch::default()
    }
}

fn re(s: &str) -> Regex {
    Regex::new(s).unwrap()
}

fn header(name: &str, value: ValueMatch, invert: bool) -> RouteMatch {
    RouteMatch {
        headers: vec![HeaderMatch {
            name: name.to_owned(),
            value,
            invert,
        }],
        ..RouteMatch::default()
    }
}

#[test]
fn paths_match_exactly_by_prefix_or_by_a_whole_regex() {
    let base = "https://api";
    let cases: &[(PathMatch, bool, &str, bool)] = &[
        (PathMatch::Any, false, "/anything", true),
        (PathMatch::Exact("/a/b".into()), false, "/a/b", true),
        (PathMatch::Exact("/a/b".into()), false, "/a/b/", false),
        (PathMatch::Exact("/a/b".into()), false, "/A/b", false),
        (PathMatch::Exact("/a/b".into()), true, "/A/B", true),
        (PathMatch::Exact("/a".into()), false, "/a?x=1", true),
        (PathMatch::Prefix("/api".into()), false, "/api/v1", true),
        (PathMatch::Prefix("/api".into()), false, "/apiv1", true),
        (PathMatch::Prefix("/api".into()), false, "/ap", false),
        (PathMatch::Prefix("/api".into()), false, "/API/v1", false),
        (PathMatch::Prefix("/api".into()), true, "/API/v1", true),
        (PathMatch::Regex(re("/v[0-9]+/.*")), false, "/v12/x", true),
        (PathMatch::Regex(re("/v[0-9]+")), false, "/v12/x", false),
        (PathMatch::Regex(re("/v[0-9]+")), false, "/x/v12", false),
        // Leftmost-first would stop at "/a"; a full match takes the longer branch.
        (PathMatch::Regex(re("/a|/ab")), false, "/ab", true),
        (PathMatch::Regex(re("^(?:/V)$")), false, "/V", true),
        // Case-insensitivity is not for regexes.
        (PathMatch::Regex(re("/v")), true, "/V", false),
    ];
    for (m, ci, p, want) in cases {
        let matcher = RouteMatch {
            case_insensitive: *ci,
            ..path(m.clone())
        };
        let got = matches(&matcher, &get(&format!("{base}{p}")));
        assert_eq!(got, *want, "{m:?} (case-insensitive {ci}) on {p}");
    }
}

#[test]
fn headers_match_by_value_with_invert_and_the_missing_header_rule() {
    let present = ValueMatch::Present;
    let exact = || ValueMatch::Exact("v1".into());
    let with = req(Method::GET, "/", &[("x-version", "v1")]);
    let other = req(Method::GET, "/", &[("x-version", "v2")]);
    let without = get("/");
    let cases = [
        (header("x-version", exact(), false), [true, false, false]),
        (header("x-version", exact(), true), [false, true, false]),
        (
            header("x-version", present.clone(), false),
            [true, true, false],
        ),
        (header("x-version", present, true), [false, false, true]),
        (
            header("x-version", ValueMatch::Prefix("v".into()), false),
            [true, true, false],
        ),
        (
            header("x-version", ValueMatch::Suffix("2".into()), false),
            [false, true, false],
        ),
        (
            header("x-version", ValueMatch::Regex(re("v[0-1]")), false),
            [true, false, false],
        ),
    ];
    for (m, want) in cases {
        let got = [&with, &other, &without].map(|r| matches(&m, r));
        assert_eq!(got, want, "{:?}", m.headers[0]);
    }
}

#[test]
fn several_values_of_a_header_are_matched_as_one_joined_by_commas() {
    let r = req(Method::GET, "/", &[("x-tag", "a"), ("x-tag", "b")]);
    assert!(matches(
        &header("x-tag", ValueMatch::Exact("a,b".into()), false),
        &r
    ));
    assert!(!matches(
        &header("x-tag", ValueMatch::Exact("a".into()), false),
        &r
    ));
    let authority = header(":authority", ValueMatch::Exact("api:8080".into()), false);
    assert!(matches(&authority, &get("https://api:8080/")));
}

#[test]
fn query_parameters_match_their_first_decoded_value() {
    let m = |name: &str, value: ValueMatch| RouteMatch {
        query: vec![QueryMatch {
            name: name.to_owned(),
            value,
        }],
        ..RouteMatch::default()
    };
    let r = get("/p?debug=a%20b&debug=x&flag&na%6De=v");
    assert!(matches(&m("debug", ValueMatch::Exact("a b".into())), &r));
    assert!(!matches(&m("debug", ValueMatch::Exact("x".into())), &r));
    assert!(matches(&m("flag", ValueMatch::Present), &r));
    assert!(matches(&m("flag", ValueMatch::Exact(String::new())), &r));
    assert!(matches(&m("name", ValueMatch::Exact("v".into())), &r));
    assert!(matches(&m("debug", ValueMatch::Regex(re("a.b"))), &r));
    assert!(!matches(&m("missing", ValueMatch::Present), &r));
    assert!(!matches(&m("debug", ValueMatch::Present), &get("/p")));
}

#[test]
fn methods_and_every_condition_must_hold() {
    let m = RouteMatch {
        path: PathMatch::Prefix("/admin".into()),
        methods: vec!["POST".into(), "PUT".into()],
        ..header("x-admin", ValueMatch::Present, false)
    };
    let admin = [("x-admin", "1")];
    assert!(matches(&m, &req(Method::POST, "/admin/x", &admin)));
    assert!(matches(&m, &req(Method::PUT, "/admin", &admin)));
    assert!(!matches(&m, &req(Method::GET, "/admin", &admin)));
    assert!(!matches(&m, &req(Method::POST, "/other", &admin)));
    assert!(!matches(&m, &req(Method::POST, "/admin", &[])));
}

fn route(m: RouteMatch, splits: &[(u32, usize)]) -> Route {
    Route {
        matcher: m,
        splits: splits
            .iter()
            .map(|(weight, cluster)| Split {
                weight: *weight,
                cluster: *cluster,
                request_headers: HeaderChanges::default(),
                response_headers: HeaderChanges::default(),
            })
            .collect(),
        prefix_rewrite: None,
        request_timeout: None,
        idle_timeout: None,
        retry: RetryPolicy::default(),
        request_headers: HeaderChanges::default(),
        response_headers: HeaderChanges::default(),
    }
}

#[test]
fn the_first_matching_route_wins() {
    let routing = Routing {
        routes: vec![
            route(path(PathMatch::Prefix("/v2".into())), &[(TOTAL_WEIGHT, 1)]),
            route(path(PathMatch::Exact("/v2/x".into())), &[(TOTAL_WEIGHT, 2)]),
            route(RouteMatch::default(), &[(TOTAL_WEIGHT, 0)]),
        ],
        clusters: Vec::new(),
    };
    let cluster = |uri: &str| choose(&routing, &get(uri)).unwrap().splits[0].cluster;
    assert_eq!(cluster("/v2/x"), 1, "the prefix route comes first");
    assert_eq!(cluster("/v1"), 0);
    let only = Routing {
        routes: vec![route(path(PathMatch::Exact("/x".into())), &[(1, 0)])],
        clusters: Vec::new(),
    };
    assert!(choose(&only, &get("/y")).is_none());
}

#[test]
fn splits_take_ranges_as_wide_as_their_weights() {
    let r = route(RouteMatch::default(), &[(2500, 0), (0, 1), (7500, 2)]);
    let at = |roll| split(&r, roll).unwrap().cluster;
    assert_eq!(at(0), 0);
    assert_eq!(at(2499), 0);
    assert_eq!(at(2500), 2, "the weight-0 split is never taken");
    assert_eq!(at(TOTAL_WEIGHT - 1), 2);
    // Weights that do not add up to the total are scaled to their sum.
    let r = route(RouteMatch::default(), &[(1, 0), (1, 1)]);
    assert_eq!(split(&r, 0).unwrap().cluster, 0);
    assert_eq!(split(&r, TOTAL_WEIGHT - 1).unwrap().cluster, 1);
    let zero = route(RouteMatch::default(), &[(0, 3), (0, 4)]);
    assert_eq!(split(&zero, 5000).unwrap().cluster, 3);
}

#[test]
fn every_run_of_rolls_fills_the_weights_to_within_a_few_requests() {
    let r = route(
        RouteMatch::default(),
        &[(1000, 0), (0, 1), (6000, 2), (3000, 3)],
    );
    let ninety_ten = route(RouteMatch::default(), &[(9000, 0), (1000, 1)]);
    for _ in 0..50 {
        // A fresh sequence from a random start, as each upstream listener has.
        let rolls = Rolls::new();
        let mut counts = [0i64; 4];
        for _ in 0..1000 {
            counts[split(&r, rolls.next()).unwrap().cluster] += 1;
        }
        assert_eq!(counts[1], 0, "a weight-0 split is never taken");
        for (i, want) in [(0, 100), (2, 600), (3, 300)] {
            assert!((counts[i] - want).abs() <= 3, "{counts:?}");
        }
        let mut canary = 0;
        for _ in 0..1000 {
            canary += i64::from(split(&ninety_ten, rolls.next()).unwrap().cluster == 1);
        }
        assert!(
            (canary - 100).abs() <= 3,
            "{canary} of 1,000 to the 10 % split"
        );
    }
}

#[test]
fn prefix_rewrite_replaces_what_matched_and_keeps_the_query() {
    let cases = [
        (
            PathMatch::Prefix("/api/".into()),
            "/",
            "/api/users?id=1",
            "/users?id=1",
        ),
        (
            PathMatch::Prefix("/api".into()),
            "/v2",
            "/api/users",
            "/v2/users",
        ),
        (PathMatch::Prefix("/API".into()), "/x", "/api/y", "/x/y"),
        (PathMatch::Exact("/old".into()), "/new", "/old?q", "/new?q"),
        (PathMatch::Regex(re("/o.d")), "/new", "/old", "/new"),
        (PathMatch::Any, "/base/", "/x/y", "/base/x/y"),
        (PathMatch::Prefix("/api".into()), "", "/api", "/"),
    ];
    for (m, rewrite, from, want) in cases {
        let mut r = get(&format!("https://api{from}"));
        rewrite_path(&path(m.clone()), rewrite, &mut r);
        assert_eq!(r.uri().path_and_query().unwrap().as_str(), want, "{m:?}");
        assert_eq!(r.uri().authority().unwrap().as_str(), "api");
    }
}

fn changes(add: &[(&str, &str)], set: &[(&str, &str)], remove: &[&str]) -> HeaderChanges {
    let pairs = |list: &[(&str, &str)]| {
        list.iter()
            .map(|(n, v)| {
                (
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    };
    HeaderChanges {
        add: pairs(add),
        set: pairs(set),
        remove: remove
            .iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
            .collect(),
    }
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[test]
fn header_changes_remove_then_add_then_set_split_before_route() {
    let mut h = HeaderMap::new();
    h.insert("x-old", HeaderValue::from_static("1"));
    h.insert("x-multi", HeaderValue::from_static("a"));
    h.insert("x-set", HeaderValue::from_static("app"));
    let split = changes(
        &[("x-multi", "b"), ("x-both", "split")],
        &[("x-set", "split"), ("host", "evil")],
        &["x-old"],
    );
    let route = changes(&[], &[("x-both", "route")], &["x-gone"]);
    change_both(&split, &route, &mut h);
    assert!(h.get("x-old").is_none());
    assert_eq!(values(&h, "x-multi"), ["a", "b"], "add appends");
    assert_eq!(values(&h, "x-set"), ["split"], "set replaces");
    assert_eq!(
        values(&h, "x-both"),
        ["route"],
        "the route's set comes last"
    );
    assert!(h.get(header::HOST).is_none(), "Host is never changed");
    // Within a level, a header both added and set ends with the set value alone.
    let mut h = HeaderMap::new();
    change_headers(
        &changes(&[("x-a", "added")], &[("x-a", "set")], &[]),
        &mut h,
    );
    assert_eq!(values(&h, "x-a"), ["set"]);
}
