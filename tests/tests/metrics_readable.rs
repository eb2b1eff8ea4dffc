//! Metrics people and scrapers can read, and the log level changed at run time:
//!
//! - a fresh sidecar's `/metrics`, read by PyPI `prometheus_client`'s text parser (as a
//!   Prometheus client library reads it), has `# HELP` and `# TYPE` for every family,
//!   and its known counters at 0 before any traffic;
//! - `/stats/prometheus` (Envoy's path) answers as `/metrics` does, on the admin
//!   listener and on the public Prometheus listener, which answers nothing else;
//! - that listener comes from the static config's `prometheus_bind_addr` (a taken
//!   address exits 1 at start-up, as any listener) and from `Proxy.Config`'s
//!   `envoy_prometheus_bind_addr` in Consul mode (followed when it moves; a taken
//!   address is named by `/ready`, never an exit), for a sidecar and a mesh gateway;
//! - every metric `dashboards/ferrule.json` queries is exported by a live mesh's
//!   sidecars, and its percentiles read histogram buckets;
//! - `POST /logging?level=debug` turns debug lines on in a running sidecar, `GET
//!   /logging` says so, and a level that is not one is a 400 that changes nothing.
//!
//! `.ci/run` installs `prometheus_client` into `target/ci-venv`; without it the parser
//! check fails under CI (`CI=true`) and is skipped with a note elsewhere.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use ferrule_tests::DevCa;
use ferrule_tests::agent::{AgentOptions, DevAgent, ServiceRegistration};
use ferrule_tests::backends::TcpEcho;
use ferrule_tests::consul::ConsulSidecar;
use ferrule_tests::http;
use ferrule_tests::mesh::{API, intentions_json, svid};
use ferrule_tests::sidecar::{Sidecar, SidecarConfig};
use ferrule_tests::wait::{eventually, free_port};
use hyper::Method;
use serde_json::{Value, json};

/// A registration change reaching the sidecar, and a bind retried (every 2 s).
const APPLIES_WITHIN: Duration = Duration::from_secs(15);
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `url` scraped and parsed by `prometheus_client` (see
/// `tests/clients/python/prometheus_text.py`): its families by the parser's name.
/// `None` when the client is not installed, outside CI.
async fn parsed_by_prometheus_client(url: &str) -> Option<serde_json::Map<String, Value>> {
    let python = workspace().join("target/ci-venv/bin/python");
    if !python.is_file() {
        let why = format!(
            "no {} (run .ci/run, or python3 -m venv target/ci-venv && target/ci-venv/bin/pip install prometheus-client)",
            python.display()
        );
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "prometheus_client is missing under CI: {why}"
        );
        eprintln!("skipped: prometheus_client is not installed: {why}");
        return None;
    }
    let script = workspace().join("tests/clients/python/prometheus_text.py");
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(&script)
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, command.output())
        .await
        .expect("the parser finishes")
        .expect("run the parser");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "prometheus_client refused {url}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    match serde_json::from_str(&stdout) {
        Ok(Value::Object(families)) => Some(families),
        other => panic!("the parser printed {other:?}"),
    }
}

/// Every family has a HELP and a TYPE line.
fn assert_help_and_type(families: &serde_json::Map<String, Value>) {
    assert!(!families.is_empty());
    for (name, family) in families {
        assert_ne!(family["type"], "unknown", "{name} has no TYPE: {family}");
        let help = family["help"].as_str().unwrap_or_default();
        assert!(!help.is_empty(), "{name} has no HELP: {family}");
    }
}

/// The value of the sample `name{labels}` in the parser's families, if it is there.
fn sample(families: &serde_json::Map<String, Value>, name: &str, labels: &Value) -> Option<f64> {
    families
        .values()
        .flat_map(|f| f["samples"].as_array().cloned().unwrap_or_default())
        .find(|s| s["name"] == name && &s["labels"] == labels)
        .and_then(|s| s["value"].as_f64())
}

/// `GET path` on `addr`: status and body.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let answer = http::get(addr, path).await?;
    Ok((answer.status, answer.body))
}

fn api_config(ca: &DevCa, local_app: SocketAddr) -> SidecarConfig {
    SidecarConfig::new(ca, &svid(ca, API))
        .inbound(local_app, intentions_json(API, &[("web", "allow")]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_sidecar_exports_readable_metrics_on_every_path() {
    let ca = DevCa::generate(None).expect("CA");
    let app = TcpEcho::start().await;
    let prometheus = free_port();
    let sidecar = Sidecar::start(
        api_config(&ca, app.addr()).key("prometheus_bind_addr", &format!("\"{prometheus}\"")),
    )
    .await;
    let admin = sidecar.admin_addr();

    let url = format!("http://{admin}/metrics");
    if let Some(families) = parsed_by_prometheus_client(&url).await {
        assert_help_and_type(&families);
        for result in [
            "accepted",
            "probe",
            "tls_error",
            "denied",
            "app_unreachable",
        ] {
            let labels = json!({ "result": result });
            let value = sample(&families, "ferrule_inbound_connections_total", &labels);
            assert_eq!(value, Some(0.0), "inbound {result} before any traffic");
        }
        let labels = json!({ "direction": "inbound", "kind": "resumed",
                             "version": "TLSv1_3", "alpn": "none" });
        let value = sample(&families, "ferrule_tls_handshakes_total", &labels);
        assert_eq!(value, Some(0.0), "resumed handshakes before any traffic");
        let via_envoys_path = format!("http://{admin}/stats/prometheus");
        let again = parsed_by_prometheus_client(&via_envoys_path)
            .await
            .expect("the parser is there");
        let names = |f: &serde_json::Map<String, Value>| f.keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            names(&again),
            names(&families),
            "/stats/prometheus is /metrics"
        );
        let public = format!("http://{prometheus}/stats/prometheus");
        let public = parsed_by_prometheus_client(&public).await.expect("parser");
        assert_help_and_type(&public);
    }

    for path in ["/metrics", "/stats/prometheus"] {
        let (status, body) = get(admin, path).await.expect("admin");
        assert_eq!(status, 200, "admin {path}");
        assert!(
            body.contains("# HELP ferrule_inbound_connections_total "),
            "{body}"
        );
        let (status, body) = get(prometheus, path).await.expect("prometheus listener");
        assert_eq!(status, 200, "prometheus listener {path}");
        assert!(
            body.contains("ferrule_leaf_cert_expiry_timestamp_seconds "),
            "{body}"
        );
    }
    for path in ["/ready", "/config", "/logging", "/"] {
        let (status, _) = get(prometheus, path).await.expect("prometheus listener");
        assert_eq!(status, 404, "the prometheus listener serves {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_prometheus_address_stops_a_static_sidecar_at_start_up() {
    let ca = DevCa::generate(None).expect("CA");
    let app = TcpEcho::start().await;
    let holder = TcpListener::bind("127.0.0.1:0").expect("take a port");
    let taken = holder.local_addr().expect("its address");
    let mut sidecar = Sidecar::spawn(
        api_config(&ca, app.addr()).key("prometheus_bind_addr", &format!("\"{taken}\"")),
    );
    let code = sidecar
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the sidecar exits");
    assert_eq!(code, Some(1), "{}", sidecar.stderr());
    let named = format!("cannot listen on {taken} (prometheus)");
    assert!(sidecar.stderr().contains(&named), "{}", sidecar.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_listener_follows_proxy_config_from_the_agent() {
    let agent = DevAgent::start(AgentOptions::default()).await;
    let app = TcpEcho::start().await;
    let first = free_port();
    let api = ServiceRegistration::new(API, app.addr().port())
        .with_proxy_config("envoy_prometheus_bind_addr", json!(first.to_string()));
    agent.register(&api).await;
    let sidecar = ConsulSidecar::start(&agent, &api.id).await;
    eventually(
        "the prometheus listener answers",
        APPLIES_WITHIN,
        || async {
            let (status, body) = get(first, "/metrics").await?;
            anyhow::ensure!(status == 200 && body.contains("# TYPE "), "{status} {body}");
            Ok(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", sidecar.stderr()));
    let (status, _) = get(first, "/stats/prometheus").await.expect("scrape");
    assert_eq!(status, 200);

    // The address moves: the new one answers, the old one is closed.
    let second = free_port();
    let moved = ServiceRegistration {
        proxy_config: vec![(
            "envoy_prometheus_bind_addr".into(),
            json!(second.to_string()),
        )],
        ..api.clone()
    };
    agent.register(&moved).await;
    eventually("the listener moves", APPLIES_WITHIN, || async {
        let (status, _) = get(second, "/metrics").await?;
        anyhow::ensure!(status == 200, "{status}");
        anyhow::ensure!(
            get(first, "/metrics").await.is_err(),
            "{first} still answers"
        );
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", sidecar.stderr()));

    // Onto a taken address (Consul's other key this time): named by /ready, no exit.
    let holder = TcpListener::bind("127.0.0.1:0").expect("take a port");
    let taken = holder.local_addr().expect("its address");
    let onto_taken = ServiceRegistration {
        proxy_config: vec![("prometheus_bind_addr".into(), json!(taken.to_string()))],
        ..api.clone()
    };
    agent.register(&onto_taken).await;
    let named = format!("cannot listen on {taken} (prometheus)");
    eventually("/ready names the taken address", APPLIES_WITHIN, || async {
        let (code, body) = sidecar.admin().ready().await?;
        anyhow::ensure!(code == 503 && body.contains(&named), "{code} {body}");
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", sidecar.stderr()));
    let (status, _) = get(sidecar.admin().addr, "/metrics").await.expect("admin");
    assert_eq!(status, 200, "the admin listener still serves");
    drop(holder);
    eventually("bound once the address is free", APPLIES_WITHIN, || async {
        let (status, _) = get(taken, "/metrics").await?;
        anyhow::ensure!(status == 200, "{status}");
        let (code, body) = sidecar.admin().ready().await?;
        anyhow::ensure!(code == 200, "{code} {body}");
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", sidecar.stderr()));
}

/// `POST /logging` on the admin listener: the status and body.
async fn post_logging(admin: SocketAddr, query: &str) -> (u16, String) {
    let path = format!("/logging?{query}");
    let answer = http::request(admin, Method::POST, &path, Bytes::new())
        .await
        .expect("POST /logging");
    (answer.status, answer.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_logging_changes_the_level_of_a_running_sidecar() {
    let agent = DevAgent::start(AgentOptions::default()).await;
    let app = TcpEcho::start().await;
    let api = ServiceRegistration::new(API, app.addr().port());
    agent.register(&api).await;
    let sidecar = ConsulSidecar::start_with_args(&agent, &api.id, &["--log-level", "info"]).await;
    let admin = sidecar.admin().addr;
    let (status, body) = get(admin, "/logging").await.expect("GET /logging");
    assert_eq!((status, body.as_str()), (200, "active filter: info\n"));

    // A probe (connect, close) is recorded at debug: nothing at info.
    let probes = |n: f64| move |v: f64| v >= n;
    let probe = || async {
        drop(tokio::net::TcpStream::connect(api.sidecar_addr()).await);
    };
    let inbound = ferrule_tests::metrics::Selector {
        name: "ferrule_inbound_connections_total",
        labels: &[("result", "probe")],
    };
    probe().await;
    sidecar
        .admin()
        .wait_for_metric(inbound, probes(1.0), APPLIES_WITHIN)
        .await
        .expect("the probe is counted");
    assert!(!sidecar.stderr().contains("DEBUG"), "{}", sidecar.stderr());

    let (status, body) = post_logging(admin, "level=debug").await;
    assert_eq!((status, body.as_str()), (200, "active filter: debug\n"));
    probe().await;
    eventually("a debug line", APPLIES_WITHIN, || async {
        let log = sidecar.stderr();
        anyhow::ensure!(
            log.contains("DEBUG") && log.contains("connection closed"),
            "{log}"
        );
        Ok(())
    })
    .await
    .expect("debug lines after POST /logging?level=debug");
    let (_, body) = get(admin, "/logging").await.expect("GET /logging");
    assert_eq!(body, "active filter: debug\n");

    // Envoy's names, and a bad one that changes nothing.
    let (status, body) = post_logging(admin, "level=verbose").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"verbose\" is not a log level"), "{body}");
    let (_, body) = get(admin, "/logging").await.expect("GET /logging");
    assert_eq!(
        body, "active filter: debug\n",
        "a refused level changes nothing"
    );
    let (status, body) = post_logging(admin, "level=warning").await;
    assert_eq!((status, body.as_str()), (200, "active filter: warn\n"));
    let (status, body) = post_logging(admin, "level=info%2Cferrule%3Ddebug").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "active filter: ferrule=debug,info\n")
    );
}

/// The metric names a PromQL expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let name = regex::Regex::new(r"\bferrule_[a-z0-9_]+").expect("regex");
    name.find_iter(expr)
        .map(|m| m.as_str().to_owned())
        .collect()
}

/// Every expression of the dashboard: each panel's queries and each variable's.
fn dashboard_queries() -> Vec<String> {
    let path = workspace().join("dashboards/ferrule.json");
    let text = std::fs::read_to_string(&path).expect("read dashboards/ferrule.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(
        dashboard["schemaVersion"].as_u64() >= Some(39),
        "schemaVersion"
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let datasource = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(datasource["query"], "prometheus");
    for name in ["service", "instance"] {
        assert!(
            variables.iter().any(|v| v["name"] == name),
            "no ${name} variable"
        );
    }
    let mut queries: Vec<String> = variables
        .iter()
        .filter_map(|v| v["definition"].as_str().map(str::to_owned))
        .collect();
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "{} queries nothing", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            assert!(
                expr.contains("$service") && expr.contains("$instance"),
                "{expr}"
            );
            queries.push(expr.to_owned());
        }
    }
    queries
}

/// The sample names of one scrape, and the families `# TYPE` calls histograms.
fn sample_names(text: &str) -> (std::collections::BTreeSet<String>, Vec<String>) {
    let mut names = std::collections::BTreeSet::new();
    let mut histograms = Vec::new();
    for line in text.lines() {
        if let Some(family) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" histogram"))
        {
            histograms.push(family.to_owned());
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    (names, histograms)
}

/// A mesh with traffic of every kind the dashboard shows: web calls api over HTTP and
/// db over TCP; web's connection to db is then cut by a deny. Every metric the
/// dashboard queries is in the sidecars' `/metrics`, and every `histogram_quantile`
/// reads the buckets of a family exported as a histogram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() {
    use ferrule_tests::backends::HttpEcho;
    use ferrule_tests::clients::curl;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SETUP: Duration = Duration::from_secs(30);

    let queries = dashboard_queries();
    let agent = DevAgent::start(AgentOptions::default()).await;
    let api_app = HttpEcho::start().await;
    let db_app = TcpEcho::start().await;
    let api = ServiceRegistration::new("api", api_app.addr().port());
    let db = ServiceRegistration::new("db", db_app.addr().port());
    let web = ServiceRegistration::new("web", free_port().port())
        .with_upstream("api")
        .with_upstream("db");
    let http = json!({ "Kind": "service-defaults", "Name": "api", "Protocol": "http" });
    agent
        .put("/v1/config", &http)
        .await
        .expect("api speaks http");
    for service in [&api, &db, &web] {
        agent.register(service).await;
    }
    agent.set_intentions("api", &[("web", "allow")]).await;
    agent.set_intentions("db", &[("web", "allow")]).await;
    let sidecars = [
        ConsulSidecar::start(&agent, &api.id).await,
        ConsulSidecar::start(&agent, &db.id).await,
        ConsulSidecar::start(&agent, &web.id).await,
    ];
    agent.wait_passing("api", &[api.sidecar_port], SETUP).await;
    agent.wait_passing("db", &[db.sidecar_port], SETUP).await;
    let url = format!("http://{}/", web.upstream_addr("api"));
    eventually("web calls api", SETUP, || async {
        let got = curl(&url, &["--max-time", "5"]).await?;
        anyhow::ensure!(got.http_code == 200, "{got:?}");
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", sidecars[2].stderr()));

    let mut conn = eventually("web reaches db", SETUP, || async {
        let mut conn = tokio::net::TcpStream::connect(web.upstream_addr("db")).await?;
        conn.write_all(b"ping").await?;
        let mut echoed = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut echoed)).await??;
        anyhow::ensure!(&echoed == b"ping", "{echoed:?}");
        Ok(conn)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", sidecars[1].stderr()));
    agent.set_intentions("db", &[("web", "deny")]).await;
    let terminated = ferrule_tests::metrics::Selector {
        name: "ferrule_authz_terminations_total",
        labels: &[("source", "web")],
    };
    sidecars[1]
        .admin()
        .wait_for_metric(terminated, |v| v >= 1.0, APPLIES_WITHIN)
        .await
        .expect("the deny closes web's open connection to db");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest)).await;

    let mut exported = std::collections::BTreeSet::new();
    let mut histograms = Vec::new();
    for sidecar in &sidecars {
        let (status, text) = get(sidecar.admin().addr, "/metrics").await.expect("scrape");
        assert_eq!(status, 200);
        let (names, families) = sample_names(&text);
        exported.extend(names);
        histograms.extend(families);
    }
    for expr in &queries {
        for name in metric_names(expr) {
            assert!(
                exported.contains(&name),
                "the dashboard queries {name}, which no sidecar exports: {expr}\nexported: {exported:?}"
            );
        }
        if expr.contains("histogram_quantile") {
            for name in metric_names(expr) {
                let family = name.strip_suffix("_bucket").unwrap_or_else(|| {
                    panic!("histogram_quantile over {name}, not a _bucket series")
                });
                assert!(
                    histograms.iter().any(|h| h == family),
                    "{family} is not exported as a histogram"
                );
            }
        }
    }
}

/// A mesh gateway: its `/metrics` read by the parser, every result of its connections
/// at 0 before any, and its Prometheus listener from `Proxy.Config`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_gateway_exports_readable_metrics_and_its_prometheus_listener() {
    use ferrule_tests::gateway::{FerruleGateway, MeshGatewayRegistration};
    let agent = DevAgent::start(AgentOptions::default()).await;
    let registration = MeshGatewayRegistration::new("mesh-gateway");
    let prometheus = free_port();
    let mut body = registration.to_json();
    body["Proxy"] = json!({ "Config": { "envoy_prometheus_bind_addr": prometheus.to_string() } });
    agent
        .put("/v1/agent/service/register", &body)
        .await
        .expect("register the gateway");
    let gateway = FerruleGateway::start(&agent.url(), &registration.id).await;
    eventually(
        "the gateway's prometheus listener",
        APPLIES_WITHIN,
        || async {
            let (status, body) = get(prometheus, "/stats/prometheus").await?;
            anyhow::ensure!(status == 200, "{status} {body}");
            let zero =
                "ferrule_gateway_connections_total{listener=\"wan\",result=\"unknown_sni\"} 0";
            anyhow::ensure!(body.contains(zero), "{body}");
            Ok(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", gateway.stderr()));
    let url = format!("http://{}/metrics", gateway.admin().addr);
    if let Some(families) = parsed_by_prometheus_client(&url).await {
        assert_help_and_type(&families);
        let labels = json!({ "listener": "lan", "result": "routed" });
        let routed = sample(&families, "ferrule_gateway_connections_total", &labels);
        assert_eq!(routed, Some(0.0));
    }
}
