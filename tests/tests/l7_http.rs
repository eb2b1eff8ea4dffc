//! L7 through two sidecars: curl -> web's `http` upstream -> mTLS HTTP/2 -> api's `http`
//! listener -> a recording backend. Every request is decided on its own by `api`'s
//! L7 intentions; what was denied never reaches the backend.

use std::time::Duration;

use ferrule_tests::backends::{HttpRecorder, Seen};
use ferrule_tests::clients::{LeafFiles, curl};
use ferrule_tests::mesh::{API, L7Pair, WEB, svid};
use ferrule_tests::metrics::Selector;
use ferrule_tests::names::AUTHZ_DECISIONS;
use ferrule_tests::sidecar::{INTENTIONS_FILE, Replace, Sidecar, SidecarConfig};
use ferrule_tests::wait::refused_port;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::json;

const HTTP_REQUESTS: &str = "ferrule_http_requests_total";
const HANDSHAKES: &str = "ferrule_tls_handshake_duration_seconds_count";
const DENIED: &str = "RBAC: access denied";

/// `web` may use the public pages, read `/api/items`, use the rest of `/api/` as team
/// blue, and never `/admin`; `ops` has an L4 allow; everyone else falls to the default
/// (deny).
fn intentions() -> serde_json::Value {
    json!({
        "Kind": "service-intentions",
        "Name": API,
        "Sources": [
            { "Name": WEB, "Permissions": [
                { "Action": "deny", "HTTP": { "PathPrefix": "/admin" } },
                { "Action": "allow", "HTTP": { "PathExact": "/api/items", "Methods": ["GET", "HEAD"] } },
                { "Action": "allow", "HTTP": { "PathPrefix": "/api/",
                    "Header": [ { "Name": "x-team", "Exact": "blue" } ] } },
                { "Action": "allow", "HTTP": { "PathRegex": "/public/[a-z]+" } },
                { "Action": "allow", "HTTP": { "PathPrefix": "/v2/",
                    "Header": [ { "Name": "x-debug", "Present": true, "Invert": true } ] } }
            ] },
            { "Name": "ops", "Action": "allow" }
        ]
    })
}

/// Lowercase hex SHA-256 of the first certificate in a PEM chain.
fn cert_sha256(pem: &str) -> String {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("the certificate parses");
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `x-forwarded-client-cert` Consul's Envoy gives an HTTP app for a caller that
/// presented `pem` (a dev CA leaf: empty subject, one URI SAN, no DNS SAN): By, Hash,
/// Cert and Chain as URL-encoded PEM, quoted empty Subject, URI.
fn expected_xfcc(by: &str, pem: &str, caller_uri: &str) -> String {
    let end = "-----END CERTIFICATE-----\n";
    let blocks: Vec<String> = pem
        .split_inclusive(end)
        .map(|b| b.trim_start().to_owned())
        .filter(|b| b.starts_with("-----BEGIN CERTIFICATE-----\n"))
        .collect();
    let encode = |b: &String| {
        b.replace('\n', "%0A")
            .replace(' ', "%20")
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    };
    format!(
        "By={by};Hash={};Cert=\"{}\";Chain=\"{}\";Subject=\"\";URI={caller_uri}",
        cert_sha256(pem),
        encode(&blocks[0]),
        blocks.iter().map(encode).collect::<String>(),
    )
}

fn spiffe(ca: &ferrule_tests::DevCa, service: &str) -> String {
    format!(
        "spiffe://{}/ns/default/dc/dc1/svc/{service}",
        ca.trust_domain()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_decided_by_its_path_method_and_headers_over_both_http_versions() {
    let backend = HttpRecorder::start().await;
    let mesh = L7Pair::start("http", backend.addr(), &intentions()).await;

    // (method, path as sent, extra curl args, status, path the app must see)
    type Case = (
        &'static str,
        &'static str,
        &'static [&'static str],
        u16,
        Option<&'static str>,
    );
    let cases: &[Case] = &[
        ("GET", "/public/readme", &[], 200, Some("/public/readme")),
        (
            "GET",
            "/public/readme?x=1&y=%2e",
            &[],
            200,
            Some("/public/readme?x=1&y=%2e"),
        ),
        // PathRegex is anchored: a longer path does not match.
        ("GET", "/public/readme/more", &[], 403, None),
        ("GET", "/public/README", &[], 403, None),
        ("GET", "/admin/users", &[], 403, None),
        // Spellings of /admin that a naive matcher would let through.
        ("GET", "/public/../admin/users", &[], 403, None),
        ("GET", "/%61dmin/users", &[], 403, None),
        ("GET", "/./admin", &[], 403, None),
        // ... and of an allowed path: forwarded in its normalized form.
        ("GET", "/public/x/../%61bc", &[], 200, Some("/public/abc")),
        ("GET", "/api/items", &[], 200, Some("/api/items")),
        ("POST", "/api/items", &[], 403, None),
        // Method names are case-sensitive tokens: a lower-case one is not GET.
        ("get", "/api/items", &[], 403, None),
        (
            "DELETE",
            "/api/other",
            &["-H", "x-team: blue"],
            200,
            Some("/api/other"),
        ),
        ("DELETE", "/api/other", &["-H", "x-team: red"], 403, None),
        ("DELETE", "/api/other", &[], 403, None),
        ("GET", "/v2/thing", &[], 200, Some("/v2/thing")),
        ("GET", "/v2/thing", &["-H", "x-debug: 1"], 403, None),
        // Above the root: refused before any rule is looked at.
        ("GET", "/../etc/passwd", &[], 400, None),
        ("GET", "/public/%zz", &[], 400, None),
    ];

    let xfcc = expected_xfcc(
        &spiffe(&mesh.ca, API),
        &mesh.web_leaf.cert_pem,
        &spiffe(&mesh.ca, WEB),
    );
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        for (method, path, extra, want, forwarded) in cases {
            let before = backend.count();
            let mut args = vec![version, "--path-as-is", "-X", method];
            args.extend_from_slice(extra);
            // A forged client-certificate header from the app must never get through.
            args.extend_from_slice(&[
                "-H",
                "X-Forwarded-Client-Cert: By=spiffe://evil;URI=spiffe://evil/svc/admin",
            ]);
            let got = curl(&mesh.url(path), &args).await.expect("run curl");
            let what = format!("{method} {path} {extra:?} with {version}");
            assert_eq!(got.http_code, *want, "{what}: {got:?}");
            let expected_version = if version == "--http1.1" { "1.1" } else { "2" };
            assert_eq!(got.http_version, expected_version, "{what}");
            match forwarded {
                Some(app_path) => {
                    assert_eq!(backend.count(), before + 1, "{what}: reached the app once");
                    let seen: Seen = backend.seen().pop().expect("a recorded request");
                    assert_eq!(seen.path, *app_path, "{what}: path the app saw");
                    assert_eq!(seen.method, *method, "{what}");
                    let forwarded_xfcc: Vec<_> = seen
                        .headers
                        .get_all("x-forwarded-client-cert")
                        .iter()
                        .collect();
                    assert_eq!(forwarded_xfcc, [xfcc.as_str()], "{what}: XFCC");
                    assert_eq!(
                        seen.headers
                            .get("host")
                            .map(|h| h.to_str().unwrap_or_default()),
                        Some(mesh.web.upstream_addr(API).to_string().as_str()),
                        "{what}: the app sees the authority the client asked for"
                    );
                    assert_eq!(String::from_utf8_lossy(&got.body), *app_path);
                }
                None => {
                    assert_eq!(backend.count(), before, "{what}: the app was reached");
                    if *want == 403 {
                        assert_eq!(String::from_utf8_lossy(&got.body), DENIED, "{what}");
                    }
                }
            }
        }
    }

    let allowed = cases.iter().filter(|c| c.3 == 200).count() as f64 * 2.0;
    let denied = cases.iter().filter(|c| c.3 == 403).count() as f64 * 2.0;
    let within = Duration::from_secs(5);
    for (decision, count) in [("allow", allowed), ("deny", denied)] {
        let labels = [("layer", "l7"), ("decision", decision), ("source", WEB)];
        let metric = Selector {
            name: AUTHZ_DECISIONS,
            labels: &labels,
        };
        mesh.api
            .wait_for_metric(metric, |v| v == count, within)
            .await
            .unwrap_or_else(|e| panic!("api counts its L7 {decision} decisions: {e:#}"));
    }
    let requests = |sidecar: &Sidecar, direction: &'static str, status: &'static str| {
        let labels = [("direction", direction), ("status", status)];
        let admin = sidecar.admin();
        async move { admin.metric(HTTP_REQUESTS, &labels).await.expect("scrape") }
    };
    assert_eq!(requests(&mesh.web, "outbound", "2xx").await, allowed);
    assert_eq!(requests(&mesh.api, "inbound", "4xx").await, denied);
    // The 400s never left web.
    let refused = cases.iter().filter(|c| c.3 == 400).count() as f64 * 2.0;
    assert_eq!(
        requests(&mesh.web, "outbound", "4xx").await,
        denied + refused
    );
    assert!(
        mesh.api
            .metric(
                "ferrule_http_request_duration_seconds_count",
                &[("direction", "inbound")]
            )
            .await
            .expect("scrape")
            >= allowed + denied
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mtls_listener_speaks_the_http_version_alpn_chose_and_l4_allows_admit_every_request() {
    let backend = HttpRecorder::start().await;
    let mesh = L7Pair::start("http", backend.addr(), &intentions()).await;
    let url = format!("https://{}/admin/anything", mesh.api.inbound_addr());
    let ops = LeafFiles::write(&svid(&mesh.ca, "ops"));
    let billing = LeafFiles::write(&svid(&mesh.ca, "billing"));
    for (version, alpn_version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let as_caller = |files: &LeafFiles| {
            vec![
                version.to_owned(),
                "-k".to_owned(),
                "--cert".to_owned(),
                files.cert.display().to_string(),
                "--key".to_owned(),
                files.key.display().to_string(),
                "-H".to_owned(),
                "X-Forwarded-Client-Cert: URI=spiffe://forged/ns/default/dc/dc1/svc/web".to_owned(),
            ]
        };
        let args = as_caller(&ops);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let got = curl(&url, &args).await.expect("run curl");
        assert_eq!(got.http_code, 200, "ops (L4 allow) {version}: {got:?}");
        assert_eq!(got.http_version, alpn_version);
        let seen = backend.seen().pop().expect("ops reached the app");
        let xfcc: Vec<_> = seen
            .headers
            .get_all("x-forwarded-client-cert")
            .iter()
            .collect();
        let ours = expected_xfcc(
            &spiffe(&mesh.ca, API),
            &std::fs::read_to_string(&ops.cert).expect("read ops's cert"),
            &spiffe(&mesh.ca, "ops"),
        );
        assert_eq!(xfcc, [ours.as_str()], "the caller's own header is replaced");

        let args = as_caller(&billing);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let before = backend.count();
        let got = curl(&url, &args).await.expect("run curl");
        assert_eq!(
            got.http_code, 403,
            "billing (no intention) {version}: {got:?}"
        );
        assert_eq!(String::from_utf8_lossy(&got.body), DENIED);
        assert_eq!(backend.count(), before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intentions_change_applies_to_the_next_request_on_open_connections() {
    use http_body_util::{BodyExt, Empty};
    use hyper::Request;
    use hyper_util::rt::TokioIo;

    let backend = HttpRecorder::start().await;
    let mesh = L7Pair::start("http", backend.addr(), &intentions()).await;
    let upstream = mesh.web.upstream_addr(API);
    let tcp = tokio::net::TcpStream::connect(upstream)
        .await
        .expect("connect to web");
    let (mut app, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("HTTP/1.1 handshake with web's upstream port");
    tokio::spawn(connection);
    let mut get = async |path: &str| {
        let req = Request::get(path)
            .header("host", upstream.to_string())
            .body(Empty::<bytes::Bytes>::new())
            .expect("a request");
        // The previous exchange must be wound up before the next request goes out.
        app.ready()
            .await
            .expect("the open connection is still usable");
        let response = app
            .send_request(req)
            .await
            .expect("a response on the open connection");
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("the body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    assert_eq!(get("/public/page").await.0, 200);

    // Now web may not see the public pages either.
    let mut changed = intentions();
    changed["Sources"][0]["Permissions"]
        .as_array_mut()
        .expect("permissions")
        .insert(
            0,
            json!({ "Action": "deny", "HTTP": { "PathPrefix": "/public" } }),
        );
    mesh.api
        .replace_file(INTENTIONS_FILE, &changed.to_string(), Replace::AtomicRename);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut statuses = Vec::new();
    loop {
        let (status, body) = get("/public/page").await;
        statuses.push(status);
        if status == 403 {
            assert_eq!(body, DENIED);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still allowed 10 s after the change: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 403),
        "{statuses:?}"
    );
    // Both hops kept their connections: one app connection (ours), one mesh connection.
    assert_eq!(
        mesh.web
            .metric(HANDSHAKES, &[("direction", "outbound")])
            .await
            .expect("scrape"),
        1.0,
        "the mesh connection was reused across the change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connection_close_requests_share_a_few_mesh_connections() {
    use http_body_util::{BodyExt, Empty};
    use hyper::Request;
    use hyper_util::rt::TokioIo;

    const REQUESTS: usize = 1000;
    let backend = HttpRecorder::start().await;
    let mesh = L7Pair::start("http", backend.addr(), &intentions()).await;
    let upstream = mesh.web.upstream_addr(API);
    for i in 0..REQUESTS {
        let tcp = tokio::net::TcpStream::connect(upstream)
            .await
            .expect("connect to web");
        let (mut app, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("HTTP/1.1 handshake");
        let connection = tokio::spawn(connection);
        let req = Request::get(format!("/public/r{}", char::from(b'a' + (i % 26) as u8)))
            .header("host", "api")
            .header("connection", "close")
            .body(Empty::<bytes::Bytes>::new())
            .expect("a request");
        let response = app.send_request(req).await.expect("a response");
        assert_eq!(response.status(), 200, "request {i}");
        response.into_body().collect().await.expect("the body");
        // The proxy closes the app's connection after the response, as asked.
        connection
            .await
            .expect("join")
            .expect("the connection closed cleanly");
    }
    assert_eq!(backend.count(), REQUESTS);
    let handshakes = mesh
        .web
        .metric(HANDSHAKES, &[("direction", "outbound")])
        .await
        .expect("scrape");
    let accepted = mesh
        .api
        .metric(
            "ferrule_inbound_connections_total",
            &[("result", "accepted")],
        )
        .await
        .expect("scrape");
    println!(
        "{REQUESTS} Connection: close requests: {handshakes} mesh handshakes, {accepted} accepted at api"
    );
    assert!(
        (1.0..=3.0).contains(&handshakes),
        "{handshakes} mesh TLS handshakes for {REQUESTS} requests"
    );
    assert!(
        (1.0..=3.0).contains(&accepted),
        "{accepted} mesh connections at api"
    );
    assert_eq!(
        mesh.web
            .metric(
                HTTP_REQUESTS,
                &[("direction", "outbound"), ("status", "2xx")]
            )
            .await
            .expect("scrape"),
        REQUESTS as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_app_is_a_503_for_that_request_and_the_next_one_still_works() {
    // api's app port has nothing listening: each request is a 503, counted, and the
    // sidecar carries on.
    let (dead, _held) = refused_port();
    let ca = ferrule_tests::DevCa::generate(None).expect("a CA");
    let api = Sidecar::start(
        SidecarConfig::new(&ca, &svid(&ca, API))
            .inbound(dead, intentions().to_string())
            .inbound_protocol("http"),
    )
    .await;
    let web = Sidecar::start(SidecarConfig::new(&ca, &svid(&ca, WEB)).upstream_of(
        API,
        "http",
        &[api.inbound_addr()],
    ))
    .await;
    let url = format!("http://{}/public/page", web.upstream_addr(API));
    for _ in 0..3 {
        let got = curl(&url, &[]).await.expect("run curl");
        assert_eq!(got.http_code, 503, "{got:?}");
    }
    assert_eq!(
        api.metric(
            HTTP_REQUESTS,
            &[("direction", "inbound"), ("status", "5xx")]
        )
        .await
        .expect("scrape"),
        3.0
    );
    let (status, _) = api.ready().await.expect("api still answers /ready");
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_is_a_504_from_whichever_side_times_out_first() {
    let backend = HttpRecorder::start().await;
    let ca = ferrule_tests::DevCa::generate(None).expect("a CA");
    let sleepy = json!({ "Kind": "service-intentions", "Name": API,
        "Sources": [ { "Name": WEB, "Action": "allow" } ] });
    let api = Sidecar::start(
        SidecarConfig::new(&ca, &svid(&ca, API))
            .inbound(backend.addr(), sleepy.to_string())
            .inbound_protocol("http")
            .local_request_timeout_ms(300),
    )
    .await;
    let web = Sidecar::start(
        SidecarConfig::new(&ca, &svid(&ca, WEB))
            .upstream_of(API, "http", &[api.inbound_addr()])
            .request_timeout_ms(1500),
    )
    .await;
    let url = |path: &str| format!("http://{}{path}", web.upstream_addr(API));
    assert_eq!(
        curl(&url("/sleep/50"), &[]).await.expect("curl").http_code,
        200
    );
    // api waits 300 ms for its app, then answers 504 itself.
    let got = curl(&url("/sleep/1000"), &[]).await.expect("curl");
    assert_eq!(got.http_code, 504, "{got:?}");
    assert_eq!(
        api.metric(
            HTTP_REQUESTS,
            &[("direction", "inbound"), ("status", "5xx")]
        )
        .await
        .expect("scrape"),
        1.0
    );
    // With the app's limit lifted, web's own 1.5 s limit is the one that fires.
    let api_unlimited = Sidecar::start(
        SidecarConfig::new(&ca, &svid(&ca, API))
            .inbound(backend.addr(), sleepy.to_string())
            .inbound_protocol("http")
            .local_request_timeout_ms(0),
    )
    .await;
    let web2 = Sidecar::start(
        SidecarConfig::new(&ca, &svid(&ca, WEB))
            .upstream_of(API, "http", &[api_unlimited.inbound_addr()])
            .request_timeout_ms(1500),
    )
    .await;
    let started = std::time::Instant::now();
    let got = curl(
        &format!("http://{}/sleep/4000", web2.upstream_addr(API)),
        &[],
    )
    .await
    .expect("curl");
    assert_eq!(got.http_code, 504, "{got:?}");
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        web2.metric(
            HTTP_REQUESTS,
            &[("direction", "outbound"), ("status", "5xx")]
        )
        .await
        .expect("scrape"),
        1.0
    );
}

/// A memory figure of a process from /proc (`VmHWM:` the peak, `VmRSS:` now), in KiB.
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_through_both_sidecars_without_being_buffered_whole() {
    const BODY: usize = 96 * 1024 * 1024;
    let backend = ferrule_tests::backends::HttpEcho::start().await;
    let allow = json!({ "Kind": "service-intentions", "Name": API,
        "Sources": [ { "Name": WEB, "Action": "allow" } ] });
    let mesh = L7Pair::start("http", backend.addr(), &allow).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let body_file = dir.path().join("body");
    let body: Vec<u8> = (0..BODY).map(|i| (i % 251) as u8).collect();
    std::fs::write(&body_file, &body).expect("write the body");
    let before: Vec<u64> = [&mesh.web, &mesh.api]
        .iter()
        .map(|s| status_kib(s.pid(), "VmRSS:"))
        .collect();
    let got = curl(
        &mesh.url("/echo"),
        &[
            "--data-binary",
            &ferrule_tests::clients::at_file(&body_file),
        ],
    )
    .await
    .expect("run curl");
    assert_eq!(got.http_code, 200, "{got:?}");
    assert!(
        got.body == body,
        "{} bytes came back of {BODY}",
        got.body.len()
    );
    // A sidecar that held the whole 96 MiB request or response would grow by more than
    // it. What may legitimately be in flight is bounded by the HTTP/2 windows (adaptive,
    // up to 16 MiB per connection and direction) and the allocator's slack, which on a
    // loaded machine took one sidecar 45 MiB above its level before the request.
    for (sidecar, before) in [&mesh.web, &mesh.api].into_iter().zip(before) {
        let peak = status_kib(sidecar.pid(), "VmHWM:");
        let grown = peak.saturating_sub(before);
        println!(
            "{}: RSS {before} KiB before, peak {peak} KiB after a {BODY}-byte POST and its echo",
            sidecar.service()
        );
        assert!(
            grown < (BODY as u64 / 1024) * 3 / 4,
            "{} grew by {grown} KiB (peak {peak} KiB)",
            sidecar.service()
        );
    }
}
