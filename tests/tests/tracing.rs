//! Distributed tracing with the real binary: web's app calls `api` through web's
//! sidecar (outbound, L7) and api's sidecar (inbound, L7) to api's app, with both
//! sidecars exporting to a real OTLP receiver (`ferrule_tests::otlp`, the official
//! protos, over gRPC and over HTTP/protobuf). A request that carries a `traceparent`
//! yields a CLIENT span on web and a SERVER span on api in the caller's trace, linked
//! parent to child, and the app sees the SERVER span as its parent; B3 in is W3C out;
//! the sampler is honoured; a collector that is down or never answers costs the
//! traffic nothing, and its drops are counted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferrule_dev::ca::DevCa;
use ferrule_tests::backends::{HttpRecorder, accept_loop};
use ferrule_tests::mesh::{API, WEB, svid};
use ferrule_tests::metrics::Selector;
use ferrule_tests::otlp::{Protocol, Receiver};
use ferrule_tests::sidecar::{Sidecar, SidecarConfig};
use ferrule_tests::wait::{free_port, refused_port};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WITHIN: Duration = Duration::from_secs(20);
const DROPPED: &str = "ferrule_trace_spans_dropped_total";

/// web may call api, except under /admin (an L7 denial, to see it on the span).
fn intentions() -> String {
    serde_json::json!({
        "Kind": "service-intentions",
        "Name": API,
        "Sources": [{
            "Name": WEB,
            "Permissions": [
                {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
                {"Action": "allow", "HTTP": {"PathPrefix": "/"}}
            ]
        }]
    })
    .to_string()
}

struct Pair {
    app: HttpRecorder,
    api: Sidecar,
    web: Sidecar,
}

/// api's app behind api's http sidecar, and web's sidecar with the upstream `api`; each
/// sidecar's config passed through `tracing` (given its service name) first.
async fn start_pair(tracing: impl Fn(SidecarConfig, &str) -> SidecarConfig) -> Pair {
    let ca = DevCa::generate(None).expect("CA");
    let app = HttpRecorder::start().await;
    let api = Sidecar::start(tracing(
        SidecarConfig::new(&ca, &svid(&ca, API))
            .inbound(app.addr(), intentions())
            .inbound_protocol("http"),
        API,
    ))
    .await;
    let web = Sidecar::start(tracing(
        SidecarConfig::new(&ca, &svid(&ca, WEB)).upstream_of(API, "http", &[api.inbound_addr()]),
        WEB,
    ))
    .await;
    Pair { app, api, web }
}

/// Exports to `receiver` through the `OTEL_*` variables, in small, quick batches.
fn otel_env(receiver: &Receiver) -> impl Fn(SidecarConfig, &str) -> SidecarConfig + '_ {
    move |config, service| {
        config
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", receiver.protocol().name())
            .env("OTEL_SERVICE_NAME", service)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
    }
}

/// `GET path` over HTTP/1.1 to `addr` with these extra headers: the status.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut conn = TcpStream::connect(addr)
        .await
        .expect("connect to web's upstream");
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: api\r\nUser-Agent: tracing-test/1\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    conn.write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("an answer within 10 s")
        .expect("read the answer");
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

fn hex_id(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", fastrand::u8(1..)))
        .collect()
}

/// The header `name` of the request the app saw at `path`.
fn seen_header(app: &HttpRecorder, path: &str, name: &str) -> Option<String> {
    app.seen()
        .into_iter()
        .find(|s| s.path == path)
        .unwrap_or_else(|| panic!("the app saw no request for {path}"))
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn of_kind<'a>(spans: &'a [Value], kind: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} span in {spans:#?}"))
}

fn ends_with(value: &Value, suffix: &str) -> bool {
    value.as_str().is_some_and(|s| s.ends_with(suffix))
}

/// A traced request and a denied one through the pair, and every span checked.
async fn two_hops(receiver: &Receiver, pair: &Pair) {
    let trace = hex_id(16);
    let caller_span = hex_id(8);
    let traceparent = format!("00-{trace}-{caller_span}-01");
    let status = get(
        pair.web.upstream_addr(API),
        "/hello?x=1",
        &[("traceparent", &traceparent), ("tracestate", "vendor=abc")],
    )
    .await;
    assert_eq!(status, 200);

    let spans = receiver.wait_for_trace(&trace, 2, WITHIN).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = of_kind(&spans, "SPAN_KIND_CLIENT");
    let server = of_kind(&spans, "SPAN_KIND_SERVER");
    // Shown with --nocapture: the trace as the receiver got it.
    println!("CLIENT span: {client}\nSERVER span: {server}");

    // The caller's span -> web's CLIENT span -> api's SERVER span -> the app.
    assert_eq!(client["parent_span_id"], caller_span, "{client}");
    assert_eq!(server["parent_span_id"], client["span_id"], "{server}");
    let server_id = server["span_id"].as_str().unwrap_or_default();
    assert_eq!(
        seen_header(&pair.app, "/hello?x=1", "traceparent").as_deref(),
        Some(format!("00-{trace}-{server_id}-01").as_str()),
    );
    assert_eq!(
        seen_header(&pair.app, "/hello?x=1", "tracestate").as_deref(),
        Some("vendor=abc")
    );

    assert_eq!(client["service"], WEB, "{client}");
    assert_eq!(client["scope"], "ferrule", "{client}");
    assert_eq!(client["name"], "GET", "{client}");
    let c = &client["attributes"];
    assert_eq!(c["http.request.method"], "GET", "{client}");
    assert_eq!(c["url.path"], "/hello", "{client}");
    assert_eq!(c["url.full"], "https://api/hello", "{client}");
    assert_eq!(c["http.response.status_code"], 200, "{client}");
    assert_eq!(c["server.address"], "api", "{client}");
    assert_eq!(c["network.protocol.version"], "1.1", "{client}");
    assert_eq!(c["user_agent.original"], "tracing-test/1", "{client}");
    assert_eq!(c["ferrule.upstream.name"], API, "{client}");
    assert!(
        c["ferrule.upstream.target"]
            .as_str()
            .is_some_and(|t| t.starts_with("api.")),
        "{client}"
    );
    assert!(
        ends_with(&c["ferrule.upstream.cluster"], ".consul"),
        "{client}"
    );
    assert!(
        ends_with(&c["ferrule.peer.spiffe_id"], "/svc/api"),
        "{client}"
    );
    assert_eq!(c["network.peer.address"], "127.0.0.1", "{client}");
    assert_eq!(
        c["network.peer.port"],
        i64::from(pair.api.inbound_addr().port()),
        "{client}"
    );
    assert_eq!(client["status"], "STATUS_CODE_UNSET", "{client}");

    assert_eq!(server["service"], API, "{server}");
    let s = &server["attributes"];
    assert_eq!(s["http.request.method"], "GET", "{server}");
    assert_eq!(s["url.path"], "/hello", "{server}");
    assert_eq!(s["url.scheme"], "https", "{server}");
    assert_eq!(s["http.response.status_code"], 200, "{server}");
    assert_eq!(s["server.address"], "api", "{server}");
    // Two ferrule sidecars speak HTTP/2 on the mesh hop.
    assert_eq!(s["network.protocol.version"], "2", "{server}");
    assert!(
        ends_with(&s["ferrule.peer.spiffe_id"], "/svc/web"),
        "{server}"
    );
    assert_eq!(s["ferrule.intention.decision"], "allow", "{server}");
    assert_eq!(s["client.address"], "127.0.0.1", "{server}");
    // What causality orders: the CLIENT span starts before the request is sent, so before
    // the SERVER span starts; and it cannot end before the SERVER span started. (Which of
    // the two ends first is a race: api's span ends when its side has sent the last
    // frame, web's when its side has read it, each process on its own schedule.)
    let time = |span: &Value, key: &str| span[key].as_u64().unwrap_or_default();
    assert!(time(client, "start_time_unix_nano") <= time(server, "start_time_unix_nano"));
    assert!(time(server, "start_time_unix_nano") <= time(client, "end_time_unix_nano"));

    // Denied by the intentions: the SERVER span says so, the app sees nothing.
    let denied = hex_id(16);
    let status = get(
        pair.web.upstream_addr(API),
        "/admin/users",
        &[("traceparent", &format!("00-{denied}-{}-01", hex_id(8)))],
    )
    .await;
    assert_eq!(status, 403);
    let spans = receiver.wait_for_trace(&denied, 2, WITHIN).await;
    let server = of_kind(&spans, "SPAN_KIND_SERVER");
    assert_eq!(
        server["attributes"]["ferrule.intention.decision"], "deny",
        "{server}"
    );
    assert_eq!(
        server["attributes"]["http.response.status_code"], 403,
        "{server}"
    );
    // A 4xx is the client's error, not the server's (OpenTelemetry's conventions).
    assert_eq!(server["status"], "STATUS_CODE_UNSET", "{server}");
    let client = of_kind(&spans, "SPAN_KIND_CLIENT");
    assert_eq!(client["status"], "STATUS_CODE_ERROR", "{client}");
    assert_eq!(client["attributes"]["error.type"], "403", "{client}");
    assert!(
        pair.app
            .seen()
            .iter()
            .all(|s| !s.path.starts_with("/admin"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_through_two_sidecars_over_otlp_grpc() {
    let Some(receiver) = Receiver::start(Protocol::Grpc).await else {
        return;
    };
    let pair = start_pair(otel_env(&receiver)).await;
    two_hops(&receiver, &pair).await;
    let exported = pair
        .web
        .metric("ferrule_trace_spans_exported_total", &[])
        .await
        .expect("web's metrics");
    assert!(exported >= 2.0, "web exported {exported} spans");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_through_two_sidecars_over_otlp_http_set_by_flags_and_by_the_config_file() {
    let Some(receiver) = Receiver::start(Protocol::HttpProtobuf).await else {
        return;
    };
    let endpoint = receiver.endpoint();
    let pair = start_pair(|config, service| {
        let config = config.env("OTEL_BSP_SCHEDULE_DELAY", "100");
        if service == WEB {
            config
                .arg("--otlp-endpoint")
                .arg(&endpoint)
                .arg("--otlp-protocol")
                .arg("http/protobuf")
                .env("OTEL_SERVICE_NAME", service)
        } else {
            config.table(&format!(
                "[tracing]\nendpoint = {endpoint:?}\nprotocol = \"http/protobuf\"\nservice_name = {service:?}\n"
            ))
        }
    })
    .await;
    two_hops(&receiver, &pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_in_is_w3c_out() {
    let Some(receiver) = Receiver::start(Protocol::HttpProtobuf).await else {
        return;
    };
    let pair = start_pair(otel_env(&receiver)).await;
    let upstream = pair.web.upstream_addr(API);

    // Multi-header B3.
    let trace = hex_id(16);
    let caller_span = hex_id(8);
    let headers = [
        ("X-B3-TraceId", trace.as_str()),
        ("X-B3-SpanId", caller_span.as_str()),
        ("X-B3-Sampled", "1"),
    ];
    assert_eq!(get(upstream, "/multi", &headers).await, 200);
    let spans = receiver.wait_for_trace(&trace, 2, WITHIN).await;
    let client = of_kind(&spans, "SPAN_KIND_CLIENT");
    let server = of_kind(&spans, "SPAN_KIND_SERVER");
    assert_eq!(client["parent_span_id"], caller_span, "{client}");
    assert_eq!(server["parent_span_id"], client["span_id"], "{server}");
    let server_id = server["span_id"].as_str().unwrap_or_default();
    let client_id = client["span_id"].as_str().unwrap_or_default();
    let seen = |name| seen_header(&pair.app, "/multi", name);
    assert_eq!(
        seen("traceparent"),
        Some(format!("00-{trace}-{server_id}-01"))
    );
    assert_eq!(seen("x-b3-traceid").as_deref(), Some(trace.as_str()));
    assert_eq!(seen("x-b3-spanid").as_deref(), Some(server_id));
    assert_eq!(seen("x-b3-parentspanid").as_deref(), Some(client_id));
    assert_eq!(seen("x-b3-sampled").as_deref(), Some("1"));

    // Single-header B3, with a 64-bit trace ID.
    let short = hex_id(8);
    let caller_span = hex_id(8);
    let b3 = format!("{short}-{caller_span}-1");
    assert_eq!(get(upstream, "/single", &[("b3", &b3)]).await, 200);
    let trace = format!("{}{short}", "0".repeat(16));
    let spans = receiver.wait_for_trace(&trace, 2, WITHIN).await;
    let client = of_kind(&spans, "SPAN_KIND_CLIENT");
    let server = of_kind(&spans, "SPAN_KIND_SERVER");
    assert_eq!(client["parent_span_id"], caller_span, "{client}");
    let server_id = server["span_id"].as_str().unwrap_or_default();
    let seen = |name| seen_header(&pair.app, "/single", name);
    assert_eq!(
        seen("traceparent"),
        Some(format!("00-{trace}-{server_id}-01"))
    );
    assert_eq!(seen("b3"), Some(format!("{trace}-{server_id}-1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampler_is_honoured() {
    let Some(receiver) = Receiver::start(Protocol::Grpc).await else {
        return;
    };
    // Roots are never sampled; a parent's decision is followed either way.
    let ratio = otel_env(&receiver);
    let pair = start_pair(|config, service| {
        ratio(config, service)
            .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
            .env("OTEL_TRACES_SAMPLER_ARG", "0")
    })
    .await;
    let upstream = pair.web.upstream_addr(API);

    let unsampled = hex_id(16);
    let parent = format!("00-{unsampled}-{}-00", hex_id(8));
    assert_eq!(
        get(upstream, "/unsampled", &[("traceparent", &parent)]).await,
        200
    );
    let seen = seen_header(&pair.app, "/unsampled", "traceparent").unwrap_or_default();
    assert!(
        seen.starts_with(&format!("00-{unsampled}-")) && seen.ends_with("-00"),
        "the app sees the trace, unsampled: {seen}"
    );
    assert_eq!(get(upstream, "/root", &[]).await, 200);
    let root = seen_header(&pair.app, "/root", "traceparent").unwrap_or_default();
    assert!(root.ends_with("-00"), "a new trace, not sampled: {root}");

    let sampled = hex_id(16);
    let parent = format!("00-{sampled}-{}-01", hex_id(8));
    assert_eq!(
        get(upstream, "/sampled", &[("traceparent", &parent)]).await,
        200
    );
    receiver.wait_for_trace(&sampled, 2, WITHIN).await;
    // Spans leave in the order they end: the two earlier requests' would be here by now.
    let others: Vec<Value> = receiver
        .spans()
        .into_iter()
        .filter(|s| s["trace_id"] != sampled.as_str())
        .collect();
    assert!(others.is_empty(), "unsampled spans exported: {others:#?}");

    // always_off: nothing, even for a sampled parent; the next hop is told so.
    let off = otel_env(&receiver);
    let mut quiet =
        start_pair(|config, service| off(config, service).env("OTEL_TRACES_SAMPLER", "always_off"))
            .await;
    let trace = hex_id(16);
    let parent = format!("00-{trace}-{}-01", hex_id(8));
    assert_eq!(
        get(
            quiet.web.upstream_addr(API),
            "/off",
            &[("traceparent", &parent)]
        )
        .await,
        200
    );
    let seen = seen_header(&quiet.app, "/off", "traceparent").unwrap_or_default();
    assert!(
        seen.starts_with(&format!("00-{trace}-")) && seen.ends_with("-00"),
        "{seen}"
    );
    // A sidecar sends what it holds on shutdown: after both exited, nothing came.
    for sidecar in [&mut quiet.web, &mut quiet.api] {
        sidecar.terminate();
        let code = sidecar.wait_exit(WITHIN).await.expect("exits on SIGTERM");
        assert_eq!(code, Some(0));
    }
    assert!(
        receiver.trace(&trace).is_empty(),
        "{:#?}",
        receiver.trace(&trace)
    );
}

/// Accepts connections and never answers on them: a collector that hangs.
async fn black_hole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the black hole");
    let addr = listener.local_addr().expect("its address");
    let task = tokio::spawn(accept_loop(listener, |conn| async move {
        // Held open, never read: the collector hangs.
        std::future::pending::<()>().await;
        drop(conn);
    }));
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_or_hanging_costs_the_traffic_nothing() {
    // web's collector accepts and never answers (gRPC), with room for 2 spans; api's
    // has nothing listening (HTTP).
    let (hanging, hole) = black_hole().await;
    let (nobody, _held) = refused_port();
    let pair = start_pair(|config, service| {
        let config = config
            .env("OTEL_SERVICE_NAME", service)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100");
        if service == WEB {
            config
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{hanging}"))
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
                .env("OTEL_BSP_MAX_QUEUE_SIZE", "2")
                .env("OTEL_BSP_EXPORT_TIMEOUT", "5000")
        } else {
            config
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{nobody}"))
                .env("OTEL_BSP_EXPORT_TIMEOUT", "5000")
        }
    })
    .await;

    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..40 {
        let parent = format!("00-{}-{}-01", hex_id(16), hex_id(8));
        let one = Instant::now();
        let status = get(
            pair.web.upstream_addr(API),
            &format!("/r/{i}"),
            &[("traceparent", &parent)],
        )
        .await;
        assert_eq!(status, 200, "request {i}");
        slowest = slowest.max(one.elapsed());
    }
    println!(
        "40 traced requests with the collectors down: {:?} in all, the slowest {slowest:?}",
        started.elapsed()
    );
    // Far below the exports' own timeout (5 s): nobody waited on them, even with both
    // cores busy.
    assert!(
        slowest < Duration::from_millis(2500),
        "slowest request: {slowest:?}"
    );
    assert_eq!(pair.app.count(), 40);

    let full = Selector {
        name: DROPPED,
        labels: &[("reason", "queue_full")],
    };
    pair.web
        .wait_for_metric(full, |n| n >= 1.0, WITHIN)
        .await
        .expect("web's full queue drops spans, counted");
    let failed = Selector {
        name: DROPPED,
        labels: &[("reason", "export_failed")],
    };
    pair.api
        .wait_for_metric(failed, |n| n >= 1.0, WITHIN)
        .await
        .expect("api's failed exports are counted");
    pair.web
        .wait_for_metric(failed, |n| n >= 1.0, WITHIN)
        .await
        .expect("web's exports that got no answer are counted");
    hole.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tracing_settings_exit_2_naming_them() {
    let ca = DevCa::generate(None).expect("CA");
    for (key, value, named) in [
        ("OTEL_TRACES_SAMPLER", "sometimes", "OTEL_TRACES_SAMPLER"),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/json",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ] {
        let mut sidecar = Sidecar::spawn(
            SidecarConfig::new(&ca, &svid(&ca, WEB))
                .upstream_of(API, "http", &[free_port()])
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
                .env(key, value),
        );
        let code = sidecar.wait_exit(WITHIN).await.expect("exits");
        assert_eq!(code, Some(2), "{}", sidecar.stderr());
        assert!(sidecar.stderr().contains(named), "{}", sidecar.stderr());
    }
}
