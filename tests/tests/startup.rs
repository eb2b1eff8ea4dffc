//! Start-up in static mode: a bad config file stops the process with exit code 2 and a
//! message naming file, line and key; so does any watched file that makes the first
//! configuration impossible (naming the file and why), and a leaf outside its validity
//! period. A listener that cannot bind exits 1 naming the address. After the first good
//! state, a file going bad keeps it and warns; a leaf that expires while running turns
//! `/ready` to 503 saying when it expired. (Consul mode's start-up: `startup_consul.rs`.)

use std::time::Duration;

use ferrule_tests::backends::TcpEcho;
use ferrule_tests::mesh::{API, WEB, intentions_json, svid};
use ferrule_tests::sidecar::{
    BUNDLE_FILE, CERT_FILE, CONFIG_FILE, INTENTIONS_FILE, KEY_FILE, Sidecar, SidecarConfig,
    ferrule_proxy_command,
};
use ferrule_tests::wait::{eventually, free_port};
use ferrule_tests::{DevCa, IssuedLeaf, LeafSpec};
use time::OffsetDateTime;

/// How long a process that must exit at start-up gets to do so.
const EXIT_WITHIN: Duration = Duration::from_secs(20);

/// Config files with one wrong-typed key each: (text, line, key as reported).
const BAD_CONFIGS: &[(&str, usize, &str)] = &[
    (
        r#"[identity]
cert = "cert.pem"
key = "key.pem"
bundle = "bundle.pem"

[inbound]
bind = "127.0.0.1:1"
local_app = "127.0.0.1:2"
handshake_timeout_ms = "soon"
"#,
        9,
        "inbound.handshake_timeout_ms",
    ),
    (
        r#"[identity]
cert = "cert.pem"
key = "key.pem"
bundle = "bundle.pem"

[[upstreams]]
name = "api"
bind = 9191
endpoints = ["127.0.0.1:3"]
"#,
        8,
        "upstreams[0].bind",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_exits_2_naming_file_line_and_key() {
    for (text, line, key) in BAD_CONFIGS {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = dir.path().join("ferrule.toml");
        std::fs::write(&config, text).expect("write the config");

        let mut command =
            tokio::process::Command::from(ferrule_proxy_command(&config, free_port()));
        command.kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(20), command.output())
            .await
            .expect("ferrule exits on a bad config instead of running")
            .expect("run ferrule");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{key}: exit status; stderr:\n{stderr}"
        );
        let location = format!("{}:{line}:", config.display());
        assert!(
            stderr.contains(&location),
            "{key}: stderr does not name {location}\n{stderr}"
        );
        assert!(
            stderr.contains(key),
            "{key}: stderr does not name the key\n{stderr}"
        );
    }
}

/// A leaf for `api` valid from `not_before` for `ttl`.
fn leaf_valid(ca: &DevCa, not_before: OffsetDateTime, ttl: time::Duration) -> IssuedLeaf {
    let spec = LeafSpec {
        not_before: Some(not_before),
        ttl,
        ..LeafSpec::service(API)
    };
    ca.issue(&spec).expect("issue a leaf")
}

/// Starts a sidecar that must exit at start-up: its exit code and its stderr.
async fn exit_of(config: SidecarConfig) -> (Option<i32>, String, std::path::PathBuf) {
    let mut sidecar = Sidecar::spawn(config);
    let code = sidecar.wait_exit(EXIT_WITHIN).await.unwrap_or_else(|e| {
        panic!(
            "ferrule should exit at start-up: {e:#}\n{}",
            sidecar.stderr()
        )
    });
    (code, sidecar.stderr(), sidecar.dir().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_makes_the_first_configuration_impossible_exits_2_naming_it() {
    let backend = TcpEcho::start().await;
    let ca = DevCa::generate(None).expect("generate a CA");
    let leaf = svid(&ca, API);
    let other = svid(&ca, API);
    let now = OffsetDateTime::now_utc();
    let expired = leaf_valid(
        &ca,
        now - time::Duration::hours(2),
        time::Duration::hours(1),
    );
    let early = leaf_valid(
        &ca,
        now + time::Duration::hours(1),
        time::Duration::hours(1),
    );
    let base = |leaf: &IssuedLeaf| {
        SidecarConfig::new(&ca, leaf)
            .inbound(backend.addr(), intentions_json(API, &[(WEB, "allow")]))
    };
    let cases: Vec<(&str, SidecarConfig, &str, &str)> = vec![
        (
            "missing key",
            base(&leaf).file(KEY_FILE, None),
            KEY_FILE,
            "cannot read the private key",
        ),
        (
            "missing certificate",
            base(&leaf).file(CERT_FILE, None),
            CERT_FILE,
            "cannot read the certificate",
        ),
        (
            "garbage certificate",
            base(&leaf).file(CERT_FILE, Some("garbage\n")),
            CERT_FILE,
            "no certificate",
        ),
        (
            "key of another leaf",
            base(&leaf).file(KEY_FILE, Some(&other.key_pem)),
            KEY_FILE,
            "does not match the certificate",
        ),
        (
            "garbage bundle",
            base(&leaf).file(BUNDLE_FILE, Some("garbage\n")),
            BUNDLE_FILE,
            "trust bundle",
        ),
        (
            "intentions not JSON",
            base(&leaf).file(INTENTIONS_FILE, Some("{not json")),
            INTENTIONS_FILE,
            "intentions",
        ),
        (
            "expired leaf",
            base(&expired),
            CERT_FILE,
            "leaf expired at ",
        ),
        (
            "leaf not valid yet",
            base(&early),
            CERT_FILE,
            "leaf not valid before ",
        ),
    ];
    for (case, config, file, reason) in cases {
        let (code, stderr, dir) = exit_of(config).await;
        assert_eq!(code, Some(2), "{case}: exit code; stderr:\n{stderr}");
        let path = dir.join(file);
        assert!(
            stderr.contains(&format!("{}: ", path.display())),
            "{case}: stderr does not name {}\n{stderr}",
            path.display()
        );
        assert!(
            stderr.contains(reason),
            "{case}: stderr does not say {reason:?}\n{stderr}"
        );
        assert!(
            !stderr.contains("last good"),
            "{case}: there was no good state to keep\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_first_good_state_a_missing_key_keeps_it_and_warns() {
    let backend = TcpEcho::start().await;
    let ca = DevCa::generate(None).expect("generate a CA");
    let leaf = svid(&ca, API);
    let config = SidecarConfig::new(&ca, &leaf)
        .inbound(backend.addr(), intentions_json(API, &[(WEB, "allow")]));
    let api = Sidecar::start(config).await;

    std::fs::remove_file(api.dir().join(KEY_FILE)).expect("remove the key");
    let key = api.dir().join(KEY_FILE);
    eventually(
        "a warning about the key",
        Duration::from_secs(10),
        || async {
            let log = api.stderr();
            let warned = log.lines().any(|l| {
                l.contains("WARN")
                    && l.contains(&key.display().to_string())
                    && l.contains("last good")
            });
            anyhow::ensure!(warned, "no warning yet");
            Ok(())
        },
    )
    .await
    .expect("the sidecar warns that it keeps the last good state");
    let (code, body) = api.ready().await.expect("/ready answers");
    assert_eq!(code, 200, "the last good state stays in force: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_that_expires_while_running_turns_ready_to_503_saying_when() {
    let backend = TcpEcho::start().await;
    let ca = DevCa::generate(None).expect("generate a CA");
    let now = OffsetDateTime::now_utc();
    // Valid for 12 s more: enough to start, short enough to wait for.
    let leaf = leaf_valid(
        &ca,
        now - time::Duration::minutes(1),
        time::Duration::seconds(72),
    );
    let config = SidecarConfig::new(&ca, &leaf)
        .inbound(backend.addr(), intentions_json(API, &[(WEB, "allow")]))
        .env("FERRULE_TEST_NOT_READY_REMINDER_MS", "200");
    let api = Sidecar::start(config).await;

    let body = eventually(
        "/ready says the leaf expired",
        Duration::from_secs(30),
        || async {
            let (code, body) = api.ready().await?;
            anyhow::ensure!(
                code == 503 && body.contains("leaf expired at "),
                "/ready is {code}: {body}"
            );
            Ok(body)
        },
    )
    .await
    .expect("/ready turns 503 once the leaf has expired");
    assert!(
        body.contains("leaf expired at 20"),
        "the time is RFC 3339: {body}"
    );
    eventually(
        "a not-ready warning naming the expiry",
        Duration::from_secs(10),
        || async {
            let warned = api.stderr().lines().any(|l| {
                l.contains("WARN") && l.contains("not ready") && l.contains("leaf expired at")
            });
            anyhow::ensure!(warned, "no warning yet");
            Ok(())
        },
    )
    .await
    .expect("the sidecar warns while not ready");
}

/// A config whose first upstream binds `taken`.
fn config_binding(taken: std::net::SocketAddr) -> String {
    format!(
        "[identity]\ncert = {CERT_FILE:?}\nkey = {KEY_FILE:?}\nbundle = {BUNDLE_FILE:?}\n\n\
         [[upstreams]]\nname = \"db\"\nbind = \"{taken}\"\nendpoints = [\"127.0.0.1:9\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_bind_at_start_up_exits_1_naming_the_address() {
    let ca = DevCa::generate(None).expect("generate a CA");
    let leaf = svid(&ca, API);
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("take a port");
    let taken = holder.local_addr().expect("its address");
    let config = SidecarConfig::new(&ca, &leaf).file(CONFIG_FILE, Some(&config_binding(taken)));
    let (code, stderr, _) = exit_of(config).await;
    assert_eq!(code, Some(1), "exit code; stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {taken}")),
        "stderr does not name {taken}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_workload_api_waiting_for_the_first_svid_is_not_an_exit_and_ready_says_so() {
    let dir = tempfile::tempdir().expect("temporary directory");
    // Nothing serves there (yet): the proxy keeps trying.
    let socket = format!("unix://{}", dir.path().join("agent.sock").display());
    let api = Sidecar::spawn(SidecarConfig::from_workload_api(API, &socket));
    let body = eventually(
        "/ready names the Workload API",
        Duration::from_secs(20),
        || async {
            let (code, body) = api.ready().await?;
            anyhow::ensure!(code == 503, "/ready is {code}: {body}");
            anyhow::ensure!(
                body.contains("waiting for the first SVID from the Workload API"),
                "{body}"
            );
            Ok(body)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nstderr:\n{}", api.stderr()));
    assert!(!body.contains("intentions"), "{body}");
}
