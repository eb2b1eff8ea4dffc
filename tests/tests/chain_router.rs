//! Routing: a `service-router` for `api` sends web's requests by path prefix to another
//! service (`admin`, whose sidecar must prove admin's own SPIFFE ID), by a header or a
//! query parameter to a subset, rewrites a path prefix on the way, and answers 504 when
//! a route's (or a lone resolver's) `RequestTimeout` passes before a slow app answers.
//! Every other kind of match Consul documents (exact path, path regex, header prefix,
//! presence and inverted match, query parameter presence, methods) picks the route
//! Envoy would pick.

use std::time::Duration;

use ferrule_tests::backends::{DELAY_HEADER, NamedHttp};
use ferrule_tests::chain::{
    ChainMesh, InstanceSpec, SETUP, get, send, spread_http, subset_resolver, wait_streak, who,
};
use ferrule_tests::mesh::{intentions_json, svid};
use ferrule_tests::names::OUTBOUND;
use ferrule_tests::sidecar::{Sidecar, SidecarConfig};
use ferrule_tests::wait::eventually;
use serde_json::{Value, json};

const API: &str = "api";
const ADMIN: &str = "admin";

/// A request (path, headers) and the instance it should land on.
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

fn router(routes: Value) -> Value {
    json!({"Kind": "service-router", "Name": API, "Routes": routes})
}

/// Every service of `instances` made HTTP, `entries` written, the instances started,
/// then web with an upstream to `api`.
async fn routed_mesh(instances: Vec<InstanceSpec>, entries: &[Value]) -> ChainMesh {
    let mut mesh = ChainMesh::start().await;
    mesh.http_services(&[API, ADMIN]).await;
    for entry in entries {
        mesh.write(entry).await;
    }
    for spec in instances {
        mesh.add(spec).await;
    }
    mesh.start_web(&[API]).await;
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_prefix_routes_to_another_service() {
    let routes = json!([{"Match": {"HTTP": {"PathPrefix": "/admin"}},
                         "Destination": {"Service": ADMIN}}]);
    let mesh = routed_mesh(
        vec![
            InstanceSpec::http(API, "api-1"),
            InstanceSpec::http(ADMIN, "admin-1"),
        ],
        &[router(routes)],
    )
    .await;
    let addr = mesh.upstream(API);
    let routed = wait_streak("/admin goes to admin", SETUP, "admin-1", 5, || {
        who(addr, "/admin/warm-up")
    })
    .await;
    mesh.expect(routed, "the route to admin").await;

    let admin_paths = spread_http(addr, "/admin/panel?x=1", &[], 20, 2).await;
    let other_paths = spread_http(addr, "/home", &[], 20, 2).await;
    assert!(
        admin_paths.on("admin-1") == 20 && other_paths.on("api-1") == 20,
        "/admin/panel: {admin_paths:?}; /home: {other_paths:?}\n{}",
        mesh.diagnose().await
    );
    let seen = mesh.instance("admin-1").http().seen();
    let last = seen.last().expect("admin's app saw requests");
    assert_eq!(
        last.path, "/admin/panel?x=1",
        "the path reached admin unchanged"
    );
    assert_eq!(
        mesh.instance("api-1").http().count_path("/admin"),
        0,
        "api's app got an /admin request after the route applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_to_a_service_whose_sidecar_is_an_impostor_is_refused() {
    let routes = json!([{"Match": {"HTTP": {"PathPrefix": "/admin"}},
                         "Destination": {"Service": ADMIN}}]);
    let mesh = routed_mesh(vec![InstanceSpec::http(API, "api-1")], &[router(routes)]).await;
    // `admin` is registered, but what listens on its sidecar port presents api's SVID
    // (a valid member of the mesh, the wrong service) and would let web through.
    let impostor_app = NamedHttp::start("impostor").await;
    let ca = mesh.agent.ca();
    let impostor = Sidecar::start(
        SidecarConfig::new(&ca, &svid(&ca, API))
            .inbound(
                impostor_app.addr(),
                intentions_json(API, &[("web", "allow")]),
            )
            .inbound_protocol("http"),
    )
    .await;
    let mut admin =
        ferrule_tests::agent::ServiceRegistration::new(ADMIN, impostor_app.addr().port());
    admin.sidecar_port = impostor.inbound_addr().port();
    mesh.agent.register(&admin).await;
    mesh.agent
        .wait_passing(ADMIN, &[admin.sidecar_port], SETUP)
        .await;
    let addr = mesh.upstream(API);

    let admin_proxy = mesh.web_proxy().admin().clone();
    let mismatched = eventually(
        "web's sidecar dials admin's endpoint and refuses the identity it presents",
        SETUP,
        || async {
            let reply = get(addr, "/admin/x", &[]).await?;
            assert_ne!(
                reply.backend.as_deref(),
                Some("impostor"),
                "a request routed to admin reached the impostor's app"
            );
            anyhow::ensure!(
                reply.status != 200 && reply.backend.is_none(),
                "/admin/x was answered by {:?}: {reply:?}",
                reply.backend
            );
            let mismatches = admin_proxy
                .metric(OUTBOUND, &[("result", "identity_mismatch")])
                .await?;
            anyhow::ensure!(mismatches >= 1.0, "no identity mismatch counted yet");
            Ok(reply)
        },
    )
    .await;
    let reply = mesh.expect(mismatched, "the impostor of admin").await;
    eprintln!(
        "a request routed to the impostor: HTTP {} {:?}",
        reply.status, reply.body
    );
    assert_eq!(impostor_app.count(), 0, "the impostor's app was reached");
    let home = mesh
        .expect(who(addr, "/home").await, "a request to api")
        .await;
    assert_eq!(home, "api-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_or_a_query_parameter_routes_to_a_subset() {
    let routes = json!([
        {"Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}},
         "Destination": {"ServiceSubset": "v2"}},
        {"Match": {"HTTP": {"QueryParam": [{"Name": "beta", "Exact": "1"}]}},
         "Destination": {"ServiceSubset": "v2"}},
    ]);
    let mesh = routed_mesh(
        vec![
            InstanceSpec::http(API, "api-v1").version("v1"),
            InstanceSpec::http(API, "api-v2").version("v2"),
        ],
        &[
            subset_resolver(API, Some("v1"), &["v1", "v2"]),
            router(routes),
        ],
    )
    .await;
    let addr = mesh.upstream(API);
    let canary = [("x-canary", "1")];
    let routed = wait_streak("x-canary: 1 goes to v2", SETUP, "api-v2", 5, || async {
        get(addr, "/warm-up", &canary).await?.landed()
    })
    .await;
    mesh.expect(routed, "the header route").await;

    let cases: [Case; 6] = [
        ("/", &[], "api-v1"),
        ("/", &[("x-canary", "1")], "api-v2"),
        ("/", &[("x-canary", "0")], "api-v1"),
        ("/page?beta=1", &[], "api-v2"),
        ("/page?beta=2", &[], "api-v1"),
        ("/page?alpha=1", &[], "api-v1"),
    ];
    for (path, headers, expected) in cases {
        let spread = spread_http(addr, path, headers, 10, 2).await;
        assert!(
            spread.on(expected) == 10,
            "GET {path} with {headers:?} should land on {expected} every time: {spread:?}\n{}",
            mesh.diagnose().await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_rewrite_is_what_the_app_sees() {
    let routes = json!([{"Match": {"HTTP": {"PathPrefix": "/old/"}},
                         "Destination": {"PrefixRewrite": "/new/"}}]);
    let mesh = routed_mesh(vec![InstanceSpec::http(API, "api-1")], &[router(routes)]).await;
    let addr = mesh.upstream(API);
    let rewritten = eventually("/old/ is rewritten to /new/", SETUP, || async {
        let reply = get(addr, "/old/page?q=1", &[]).await?;
        anyhow::ensure!(
            reply.status == 200 && reply.body == "api-1 /new/page?q=1",
            "{reply:?}"
        );
        Ok(())
    })
    .await;
    mesh.expect(rewritten, "the prefix rewrite").await;
    let other = get(addr, "/older/page", &[])
        .await
        .expect("GET /older/page");
    assert_eq!(
        (other.status, other.body.as_str()),
        (200, "api-1 /older/page"),
        "a path outside the prefix is left alone"
    );
    let app = mesh.instance("api-1").http();
    assert_eq!(
        app.count_path("/old/"),
        0,
        "the app saw an unrewritten path"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_request_timeout_answers_504_for_a_slow_app() {
    let routes = json!([{"Match": {"HTTP": {"PathPrefix": "/slow"}},
                         "Destination": {"RequestTimeout": "500ms"}}]);
    let mesh = routed_mesh(vec![InstanceSpec::http(API, "api-1")], &[router(routes)]).await;
    let addr = mesh.upstream(API);
    let late = [(DELAY_HEADER, "5000")];
    let timed_out = eventually("/slow times out after 500 ms", SETUP, || async {
        let reply = get(addr, "/slow/x", &late).await?;
        anyhow::ensure!(reply.status == 504, "{reply:?}");
        Ok(reply)
    })
    .await;
    let reply = mesh.expect(timed_out, "the route's RequestTimeout").await;
    eprintln!("504 after {:?}: {:?}", reply.elapsed, reply.body);
    assert!(
        reply.elapsed >= Duration::from_millis(450) && reply.elapsed < Duration::from_secs(4),
        "504 after {:?}, the timeout is 500 ms",
        reply.elapsed
    );
    assert!(
        reply.backend.is_none(),
        "the 504 came from the app: {reply:?}"
    );
    // In time on that route, and slower than 500 ms on a route without a timeout.
    let quick = get(addr, "/slow/y", &[(DELAY_HEADER, "10")])
        .await
        .expect("GET");
    assert_eq!(quick.landed().ok().as_deref(), Some("api-1"), "{quick:?}");
    let patient = get(addr, "/other", &[(DELAY_HEADER, "1500")])
        .await
        .expect("GET");
    assert_eq!(
        patient.landed().ok().as_deref(),
        Some("api-1"),
        "{patient:?}"
    );
}

/// A request (method, path, headers) and the instance it should land on.
type MethodCase = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_match_picks_the_route_envoy_would() {
    let to_v2 = json!({"ServiceSubset": "v2"});
    let routes = json!([
        {"Match": {"HTTP": {"PathExact": "/exact"}}, "Destination": to_v2},
        {"Match": {"HTTP": {"PathRegex": "/re/[0-9]+"}}, "Destination": to_v2},
        {"Match": {"HTTP": {"Header": [{"Name": "x-prefix", "Prefix": "can"}]}},
         "Destination": to_v2},
        {"Match": {"HTTP": {"Header": [{"Name": "x-present", "Present": true}]}},
         "Destination": to_v2},
        {"Match": {"HTTP": {"PathPrefix": "/inv",
                            "Header": [{"Name": "x-inv", "Exact": "keep", "Invert": true}]}},
         "Destination": to_v2},
        {"Match": {"HTTP": {"QueryParam": [{"Name": "flag", "Present": true}]}},
         "Destination": to_v2},
        {"Match": {"HTTP": {"PathPrefix": "/m", "Methods": ["DELETE"]}}, "Destination": to_v2},
    ]);
    let mesh = routed_mesh(
        vec![
            InstanceSpec::http(API, "api-v1").version("v1"),
            InstanceSpec::http(API, "api-v2").version("v2"),
        ],
        &[
            subset_resolver(API, Some("v1"), &["v1", "v2"]),
            router(routes),
        ],
    )
    .await;
    let addr = mesh.upstream(API);
    let routed = wait_streak("/exact goes to v2", SETUP, "api-v2", 5, || {
        who(addr, "/exact")
    })
    .await;
    mesh.expect(routed, "the exact path route").await;

    let cases: [MethodCase; 17] = [
        ("GET", "/exact", &[], "api-v2"),
        ("GET", "/exact?x=1", &[], "api-v2"),
        ("GET", "/exact/more", &[], "api-v1"),
        ("GET", "/re/123", &[], "api-v2"),
        ("GET", "/re/12a", &[], "api-v1"),
        ("GET", "/re/123/x", &[], "api-v1"),
        ("GET", "/", &[("x-prefix", "canary")], "api-v2"),
        ("GET", "/", &[("x-prefix", "acan")], "api-v1"),
        ("GET", "/", &[("x-present", "anything")], "api-v2"),
        ("GET", "/inv", &[("x-inv", "other")], "api-v2"),
        ("GET", "/inv", &[("x-inv", "keep")], "api-v1"),
        ("GET", "/q?flag=1", &[], "api-v2"),
        ("GET", "/q?a=1&flag", &[], "api-v2"),
        ("GET", "/q?flagged=1", &[], "api-v1"),
        ("DELETE", "/m/x", &[], "api-v2"),
        ("GET", "/m/x", &[], "api-v1"),
        ("GET", "/other", &[], "api-v1"),
    ];
    let mut wrong = Vec::new();
    for (method, path, headers, expected) in cases {
        for _ in 0..3 {
            let landed = match send(addr, method, path, headers).await {
                Ok(reply) => reply.landed().map_err(|e| format!("{e:#}")),
                Err(e) => Err(format!("{e:#}")),
            };
            if landed.as_deref() != Ok(expected) {
                wrong.push(format!(
                    "{method} {path} {headers:?}: {landed:?}, not {expected}"
                ));
                break;
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "requests that took the wrong route:\n{}\n{}",
        wrong.join("\n"),
        mesh.diagnose().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_request_timeout_applies_without_a_router() {
    let resolver = json!({"Kind": "service-resolver", "Name": API, "RequestTimeout": "500ms"});
    let mesh = routed_mesh(vec![InstanceSpec::http(API, "api-1")], &[resolver]).await;
    let addr = mesh.upstream(API);
    let late = [(DELAY_HEADER, "5000")];
    let timed_out = eventually("calls time out after 500 ms", SETUP, || async {
        let reply = get(addr, "/x", &late).await?;
        anyhow::ensure!(reply.status == 504, "{reply:?}");
        Ok(reply)
    })
    .await;
    let reply = mesh
        .expect(timed_out, "the resolver's RequestTimeout")
        .await;
    assert!(
        reply.elapsed >= Duration::from_millis(450) && reply.elapsed < Duration::from_secs(4),
        "504 after {:?}, the timeout is 500 ms",
        reply.elapsed
    );
    let quick = get(addr, "/y", &[(DELAY_HEADER, "10")]).await.expect("GET");
    assert_eq!(quick.landed().ok().as_deref(), Some("api-1"), "{quick:?}");
}
