//! Access logs with the real binary, in static mode (`[access_logs]`): an L4 record at
//! each end of a connection through two sidecars, L7 records for a request in both
//! directions, listener records for a denied caller and a failed handshake (and none
//! once `disable_listener_logs` is set), custom text and JSON formats, the file
//! reopened on SIGUSR1, and a sink that never drains: traffic goes on, drops counted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrule_dev::ca::DevCa;
use ferrule_tests::backends::{HttpEcho, TcpEcho};
use ferrule_tests::clients::curl;
use ferrule_tests::mesh::{API, WEB, intentions_json, svid};
use ferrule_tests::metrics::Selector;
use ferrule_tests::sidecar::{Sidecar, SidecarConfig};
use ferrule_tests::wait::eventually;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BILLING: &str = "billing";
const LOG: &str = "access.log";
const WITHIN: Duration = Duration::from_secs(10);

fn file_table(extra: &str) -> String {
    format!("[access_logs]\ntype = \"file\"\npath = {LOG:?}\n{extra}")
}

/// The JSON records in `path` so far (none while it does not exist).
fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Waits until a record in `path` satisfies `pick`, and returns it.
async fn record_where(path: &Path, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
    eventually(what, WITHIN, || {
        let found = records(path).into_iter().find(|r| pick(r));
        async move { found.ok_or_else(|| anyhow::anyhow!("no such record yet")) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}; records: {:?}", records(path)))
}

/// The `api` sidecar (tcp or http) allowing web and denying billing, and web's sidecar
/// with an upstream `api`, both logging to a file with `extra` lines in the table.
async fn pair(
    ca: &DevCa,
    protocol: &'static str,
    local_app: std::net::SocketAddr,
    api_table: &str,
    web_table: &str,
) -> (Sidecar, Sidecar) {
    let intentions = intentions_json(API, &[(WEB, "allow"), (BILLING, "deny")]);
    let api = Sidecar::start(
        SidecarConfig::new(ca, &svid(ca, API))
            .inbound(local_app, intentions)
            .inbound_protocol(protocol)
            .table(api_table),
    )
    .await;
    let web = Sidecar::start(
        SidecarConfig::new(ca, &svid(ca, WEB))
            .upstream_of(API, protocol, &[api.inbound_addr()])
            .table(web_table),
    )
    .await;
    (api, web)
}

async fn echo_through(addr: std::net::SocketAddr, payload: &[u8]) {
    try_echo_through(addr, payload)
        .await
        .expect("the echo comes back");
}

/// One connection through the upstream, echoed; an error while the path is not there
/// yet (a sidecar still waiting for its endpoints closes the connection), for polls.
async fn try_echo_through(addr: std::net::SocketAddr, payload: &[u8]) -> anyhow::Result<()> {
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(payload).await?;
    let mut back = vec![0u8; payload.len()];
    conn.read_exact(&mut back).await?;
    anyhow::ensure!(back == payload, "echoed {back:?}");
    conn.shutdown().await?;
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest).await;
    Ok(())
}

fn log_of(sidecar: &Sidecar) -> PathBuf {
    sidecar.dir().join(LOG)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_connections_are_logged_at_both_ends_and_refusals_by_the_listener() {
    let backend = TcpEcho::start().await;
    let ca = DevCa::generate(None).expect("CA");
    let table = file_table("");
    let (api, web) = pair(&ca, "tcp", backend.addr(), &table, &table).await;

    echo_through(web.upstream_addr(API), b"hello api").await;

    let inbound = record_where(&log_of(&api), "api's L4 record", |r| {
        r["intention_decision"] == "allow"
    })
    .await;
    assert_eq!(inbound["response_code"], 0, "{inbound}");
    assert_eq!(inbound["response_flags"], "-", "{inbound}");
    assert_eq!(inbound["bytes_received"], 9, "{inbound}");
    assert_eq!(inbound["bytes_sent"], 9, "{inbound}");
    assert!(inbound["duration"].is_u64(), "{inbound}");
    assert_eq!(inbound["protocol"], Value::Null, "{inbound}");
    assert_eq!(inbound["method"], Value::Null, "{inbound}");
    assert_eq!(inbound["upstream_cluster"], "local_app", "{inbound}");
    assert_eq!(inbound["upstream_host"], backend.addr().to_string());
    assert_eq!(
        inbound["downstream_local_address"],
        api.inbound_addr().to_string()
    );
    let caller = inbound["downstream_peer_uri_san"]
        .as_str()
        .unwrap_or_default();
    assert!(caller.ends_with("/svc/web"), "{inbound}");
    assert!(
        inbound["requested_server_name"]
            .as_str()
            .is_some_and(|s| s.starts_with("api.default.")),
        "{inbound}"
    );
    let start = inbound["start_time"].as_str().unwrap_or_default();
    assert!(start.len() == 24 && start.ends_with('Z'), "{inbound}");

    let outbound = record_where(&log_of(&web), "web's L4 record", |r| {
        r["upstream_host"] == api.inbound_addr().to_string()
    })
    .await;
    assert_eq!(outbound["bytes_received"], 9, "{outbound}");
    assert_eq!(outbound["bytes_sent"], 9, "{outbound}");
    assert_eq!(outbound["response_flags"], "-", "{outbound}");
    assert_eq!(outbound["intention_decision"], Value::Null, "{outbound}");
    let server = outbound["upstream_peer_uri_san"]
        .as_str()
        .unwrap_or_default();
    assert!(server.ends_with("/svc/api"), "{outbound}");
    assert_eq!(
        outbound["downstream_local_address"],
        web.upstream_addr(API).to_string()
    );

    // A denied caller and a handshake that fails: listener records.
    let mut denied = ferrule_tests::clients::TlsCaller::new(Some(&svid(&ca, BILLING)))
        .connect(api.inbound_addr())
        .await
        .expect("billing's handshake succeeds");
    let _ = denied.closed_within(Duration::from_secs(2)).await;
    let refused = record_where(&log_of(&api), "the denial's listener record", |r| {
        r["intention_decision"] == "deny"
    })
    .await;
    assert!(
        refused["downstream_peer_uri_san"]
            .as_str()
            .is_some_and(|s| s.ends_with("/svc/billing")),
        "{refused}"
    );
    assert_eq!(
        refused["connection_termination_details"],
        "rbac_access_denied"
    );
    assert_eq!(refused["bytes_received"], 0, "{refused}");

    let mut garbage = TcpStream::connect(api.inbound_addr())
        .await
        .expect("connect");
    garbage
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let _ = garbage.read_to_end(&mut Vec::new()).await;
    let tls = record_where(
        &log_of(&api),
        "the failed handshake's listener record",
        |r| r["connection_termination_details"] == "tls_error",
    )
    .await;
    assert_eq!(tls["downstream_peer_uri_san"], Value::Null, "{tls}");
    // Shown with --nocapture: one record of each kind, for the curious.
    println!("L4 (inbound): {inbound}\nL4 (outbound): {outbound}");
    println!("listener (denied): {refused}\nlistener (TLS): {tls}");
    assert_eq!(
        backend.accepted(),
        1,
        "only the allowed connection reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_listener_logs_leave_refusals_out() {
    let backend = TcpEcho::start().await;
    let ca = DevCa::generate(None).expect("CA");
    let table = file_table("disable_listener_logs = true");
    let (api, _web) = pair(&ca, "tcp", backend.addr(), &table, &table).await;

    let mut denied = ferrule_tests::clients::TlsCaller::new(Some(&svid(&ca, BILLING)))
        .connect(api.inbound_addr())
        .await
        .expect("billing's handshake succeeds");
    let _ = denied.closed_within(Duration::from_secs(2)).await;
    let mut garbage = TcpStream::connect(api.inbound_addr())
        .await
        .expect("connect");
    garbage.write_all(b"not tls\r\n\r\n").await.expect("write");
    let _ = garbage.read_to_end(&mut Vec::new()).await;
    let denials = Selector {
        name: ferrule_tests::names::INBOUND,
        labels: &[("result", "denied")],
    };
    api.wait_for_metric(denials, |v| v == 1.0, WITHIN)
        .await
        .expect("the denial happened");
    // Records are written in order: once a later connection's record is there, the
    // refusals' would be too.
    let mut allowed = ferrule_tests::clients::TlsCaller::new(Some(&svid(&ca, WEB)))
        .connect(api.inbound_addr())
        .await
        .expect("web connects");
    allowed.round_trip(b"ping").await.expect("echo");
    drop(allowed);
    record_where(&log_of(&api), "the allowed connection's record", |r| {
        r["intention_decision"] == "allow"
    })
    .await;
    let all = records(&log_of(&api));
    assert_eq!(
        all.len(),
        1,
        "only the allowed connection is logged: {all:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_requests_are_logged_in_both_directions() {
    let backend = HttpEcho::start().await;
    let ca = DevCa::generate(None).expect("CA");
    let table = file_table("");
    let (api, web) = pair(&ca, "http", backend.addr(), &table, &table).await;

    let url = format!("http://{}/hello?x=1", web.upstream_addr(API));
    let answer = curl(
        &url,
        &[
            "-A",
            "probe/1.0",
            "-H",
            "x-request-id: req-42",
            "-H",
            "x-forwarded-for: 10.1.2.3",
        ],
    )
    .await
    .expect("curl");
    assert!(answer.is_ok(), "{answer:?}");
    let body_len = answer.body.len() as u64;

    for (side, log) in [("api", log_of(&api)), ("web", log_of(&web))] {
        let r = record_where(&log, "the request's record", |r| {
            r["request_id"] == "req-42"
        })
        .await;
        assert_eq!(r["method"], "GET", "{side}: {r}");
        assert_eq!(r["path"], "/hello?x=1", "{side}: {r}");
        assert_eq!(r["response_code"], 200, "{side}: {r}");
        assert_eq!(r["response_code_details"], "via_upstream", "{side}: {r}");
        assert_eq!(r["response_flags"], "-", "{side}: {r}");
        assert_eq!(r["user_agent"], "probe/1.0", "{side}: {r}");
        assert_eq!(r["x_forwarded_for"], "10.1.2.3", "{side}: {r}");
        assert_eq!(r["bytes_sent"], body_len, "{side}: {r}");
        assert!(r["duration"].is_u64(), "{side}: {r}");
        assert!(
            r["protocol"]
                .as_str()
                .is_some_and(|p| p.starts_with("HTTP/")),
            "{side}: {r}"
        );
    }
    let inbound = record_where(&log_of(&api), "api's record", |r| {
        r["request_id"] == "req-42"
    })
    .await;
    assert_eq!(inbound["intention_decision"], "allow");
    assert!(
        inbound["downstream_peer_uri_san"]
            .as_str()
            .is_some_and(|s| s.ends_with("/svc/web"))
    );
    assert_eq!(inbound["upstream_cluster"], "local_app");
    let outbound = record_where(&log_of(&web), "web's record", |r| {
        r["request_id"] == "req-42"
    })
    .await;
    assert_eq!(outbound["upstream_host"], api.inbound_addr().to_string());
    assert!(
        outbound["upstream_peer_uri_san"]
            .as_str()
            .is_some_and(|s| s.ends_with("/svc/api"))
    );
    assert!(
        outbound["upstream_cluster"]
            .as_str()
            .is_some_and(|s| s.starts_with("api.default."))
    );
    assert_eq!(
        outbound["downstream_local_address"],
        web.upstream_addr(API).to_string()
    );
    println!("L7 (inbound): {inbound}\nL7 (outbound): {outbound}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_text_and_json_formats() {
    let backend = HttpEcho::start().await;
    let ca = DevCa::generate(None).expect("CA");
    let api_table = file_table(
        r#"text_format = "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% %INTENTION_DECISION% %DOWNSTREAM_PEER_URI_SAN% %REQ(X-MISSING)% %START_TIME(%Y)%""#,
    );
    let web_table = file_table(
        r#"json_format = '{"code": "%RESPONSE_CODE%", "line": "%REQ(:METHOD)% %REQ(:PATH)%", "up": {"host": "%UPSTREAM_HOST%", "san": "%UPSTREAM_PEER_URI_SAN%"}, "agent": "%REQ(USER-AGENT):3%"}'"#,
    );
    let (api, web) = pair(&ca, "http", backend.addr(), &api_table, &web_table).await;
    let answer = curl(
        &format!("http://{}/custom", web.upstream_addr(API)),
        &["-A", "abcdef"],
    )
    .await
    .expect("curl");
    assert!(answer.is_ok(), "{answer:?}");

    let text = eventually("api's text record", WITHIN, || {
        let text = std::fs::read_to_string(log_of(&api)).unwrap_or_default();
        async move {
            if text.ends_with('\n') {
                Ok(text)
            } else {
                anyhow::bail!("nothing yet")
            }
        }
    })
    .await
    .expect("a text line");
    let year = time::OffsetDateTime::now_utc().year();
    let web_uri = text.split(' ').nth(4).unwrap_or_default().to_owned();
    assert!(web_uri.ends_with("/svc/web"), "{text}");
    assert_eq!(text, format!("GET /custom 200 allow {web_uri} - {year}\n"));

    let json = record_where(&log_of(&web), "web's JSON record", |r| r["code"] == 200).await;
    let keys: Vec<&String> = json.as_object().expect("an object").keys().collect();
    assert_eq!(keys.len(), 4, "{json}");
    assert_eq!(json["line"], "GET /custom");
    assert_eq!(json["agent"], "abc");
    assert_eq!(json["up"]["host"], api.inbound_addr().to_string());
    assert!(
        json["up"]["san"]
            .as_str()
            .is_some_and(|s| s.ends_with("/svc/api"))
    );
    let raw = std::fs::read_to_string(log_of(&web)).expect("web's log");
    assert!(
        raw.starts_with("{\"code\":200,\"line\":"),
        "configured key order: {raw}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_operator_is_a_start_up_error_naming_it() {
    let backend = TcpEcho::start().await;
    let ca = DevCa::generate(None).expect("CA");
    let mut api = Sidecar::spawn(
        SidecarConfig::new(&ca, &svid(&ca, API))
            .inbound(backend.addr(), intentions_json(API, &[]))
            .table(&file_table(
                r#"text_format = "%DURATION% %NOT_AN_OPERATOR%""#,
            )),
    );
    let code = api
        .wait_exit(WITHIN)
        .await
        .expect("wait for exit")
        .expect("the process exits");
    assert_eq!(code, 2, "{}", api.stderr());
    let stderr = api.stderr();
    assert!(
        stderr.contains("access_logs.text_format") && stderr.contains("%NOT_AN_OPERATOR%"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_file_after_a_rotation() {
    let backend = TcpEcho::start().await;
    let ca = DevCa::generate(None).expect("CA");
    let table = file_table("");
    let (api, web) = pair(&ca, "tcp", backend.addr(), &table, &table).await;
    let log = log_of(&api);
    let rotated = api.dir().join("access.log.1");

    echo_through(web.upstream_addr(API), b"first").await;
    record_where(&log, "the first record", |r| r["bytes_received"] == 5).await;
    std::fs::rename(&log, &rotated).expect("rotate");
    api.user1();
    // The writer reopens before its next record: the signal must have been handled
    // first, so keep connecting until a record lands in a new file.
    eventually("a record in the new file", WITHIN, || async {
        echo_through(web.upstream_addr(API), b"second").await;
        if records(&log).iter().any(|r| r["bytes_received"] == 6) {
            Ok(())
        } else {
            anyhow::bail!("no record in the new file yet")
        }
    })
    .await
    .expect("records go to the new file after SIGUSR1");
    let old = records(&rotated);
    assert!(old.iter().any(|r| r["bytes_received"] == 5), "{old:?}");
}

/// Records are written in batches (every 100 ms): the ones still queued when the
/// process is told to stop are written before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_queued_at_shutdown_are_written_before_the_exit() {
    let backend = TcpEcho::start().await;
    let ca = DevCa::generate(None).expect("CA");
    let table = file_table("");
    let (mut api, web) = pair(&ca, "tcp", backend.addr(), &table, &table).await;
    let log = log_of(&api);
    echo_through(web.upstream_addr(API), b"last words").await;
    api.terminate();
    let code = api.wait_exit(WITHIN).await.expect("wait for the exit");
    assert_eq!(code, Some(0), "{}", api.stderr());
    let written = records(&log);
    assert!(
        written.iter().any(|r| r["bytes_received"] == 10),
        "{written:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_never_drains_drops_records_not_traffic() {
    let backend = TcpEcho::start().await;
    let ca = DevCa::generate(None).expect("CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("nobody-reads");
    // coreutils' mkfifo: the tests' syscall crate is built without its file-system part.
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo (coreutils)");
    assert!(made.success());
    let table = format!(
        "[access_logs]\ntype = \"file\"\npath = {:?}",
        fifo.display().to_string()
    );
    let intentions = intentions_json(API, &[(WEB, "allow")]);
    let api = Sidecar::start(
        SidecarConfig::new(&ca, &svid(&ca, API))
            .inbound(backend.addr(), intentions)
            .table(&table)
            .env("FERRULE_ACCESS_LOG_QUEUE", "4"),
    )
    .await;
    let web = Sidecar::start(
        SidecarConfig::new(&ca, &svid(&ca, WEB)).upstream(API, &[api.inbound_addr()]),
    )
    .await;
    let burst = 40;
    for i in 0..burst {
        tokio::time::timeout(
            WITHIN,
            echo_through(web.upstream_addr(API), format!("msg {i}").as_bytes()),
        )
        .await
        .unwrap_or_else(|_| panic!("connection {i} held up by the access log"));
    }
    assert_eq!(backend.accepted(), burst);
    // The writer is stuck opening the FIFO: a batch in its hands (at most the four the
    // queue held), four queued.
    let dropped = Selector {
        name: "ferrule_access_log_dropped_total",
        labels: &[],
    };
    let least = (burst - 8) as f64;
    api.wait_for_metric(dropped, |v| v >= least, WITHIN)
        .await
        .expect("the records that did not fit are counted");
}

/// Consul mode: `AccessLogs` from the `proxy-defaults` entry, followed live: a change
/// that does not compile keeps the last good configuration, a good one applies to the
/// next records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_mode_follows_proxy_defaults() {
    use ferrule_tests::agent::{AgentOptions, DevAgent, ServiceRegistration};
    use ferrule_tests::consul::ConsulSidecar;
    use ferrule_tests::wait::free_port;

    let setup = Duration::from_secs(20);
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, second) = (dir.path().join("first.log"), dir.path().join("second.log"));
    let agent = DevAgent::start(AgentOptions::default()).await;
    let write = |access_logs: Value| {
        let entry = serde_json::json!({
            "Kind": "proxy-defaults", "Name": "global", "AccessLogs": access_logs
        });
        let agent = &agent;
        async move {
            agent
                .put("/v1/config", &entry)
                .await
                .unwrap_or_else(|e| panic!("write proxy-defaults: {e:#}"));
        }
    };
    write(serde_json::json!({
        "Enabled": true, "Type": "file", "Path": first.display().to_string(),
        "TextFormat": "L4 %RESPONSE_CODE% %INTENTION_DECISION% %DOWNSTREAM_PEER_URI_SAN%"
    }))
    .await;
    let backend = TcpEcho::start().await;
    let api = ServiceRegistration::new(API, backend.addr().port());
    let web = ServiceRegistration::new(WEB, free_port().port()).with_upstream(API);
    agent.register(&api).await;
    agent.register(&web).await;
    agent.set_intentions(API, &[(WEB, "allow")]).await;
    let api_proxy = ConsulSidecar::start(&agent, &api.id).await;
    let _web_proxy = ConsulSidecar::start(&agent, &web.id).await;
    agent.wait_passing(API, &[api.sidecar_port], setup).await;

    let upstream = web.upstream_addr(API);
    let allowed_lines = |path: &Path| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("L4 0 allow ") && l.ends_with("/svc/web"))
            .count()
    };
    eventually(
        "a text record from the proxy-defaults format",
        setup,
        || async {
            try_echo_through(upstream, b"one").await?;
            anyhow::ensure!(allowed_lines(&first) > 0, "no record yet");
            Ok(())
        },
    )
    .await
    .expect("records as proxy-defaults says");

    // A format that does not compile: refused with a warning, the last good one stays.
    write(serde_json::json!({
        "Enabled": true, "Type": "file", "Path": second.display().to_string(),
        "TextFormat": "%NOT_AN_OPERATOR%"
    }))
    .await;
    eventually("the refusal is logged", WITHIN, || async {
        let stderr = api_proxy.stderr();
        anyhow::ensure!(stderr.contains("AccessLogs refused"), "not yet");
        anyhow::ensure!(
            stderr.contains("%NOT_AN_OPERATOR%"),
            "the operator is named"
        );
        Ok(())
    })
    .await
    .expect("a warning naming the operator");
    let before = allowed_lines(&first);
    echo_through(upstream, b"two").await;
    eventually(
        "the next record in the last good format",
        WITHIN,
        || async {
            anyhow::ensure!(allowed_lines(&first) > before, "not yet");
            Ok(())
        },
    )
    .await
    .expect("the last good configuration stays in force");
    assert!(
        !second.exists(),
        "nothing goes where the refused entry says"
    );

    // A good change applies to the next records: the default JSON record, elsewhere.
    write(serde_json::json!({
        "Enabled": true, "Type": "file", "Path": second.display().to_string()
    }))
    .await;
    eventually("a JSON record in the new file", WITHIN, || async {
        try_echo_through(upstream, b"three").await?;
        anyhow::ensure!(
            records(&second)
                .iter()
                .any(|r| r["intention_decision"] == "allow" && r["bytes_received"] == 5),
            "not yet"
        );
        Ok(())
    })
    .await
    .expect("the new configuration applies");
}
