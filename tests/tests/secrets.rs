//! Secrets stay secret: the ACL token and the private key never appear in `/config`,
//! and the token appears in no log line, even at trace level.

use ferrule_tests::agent::{AgentOptions, DevAgent, ServiceRegistration};
use ferrule_tests::backends::TcpEcho;
use ferrule_tests::consul::ConsulSidecar;
use ferrule_tests::mesh::{API, Mesh, WEB};

const TOKEN: &str = "4f1c9a7e-secret-token-b2d8e6a0";

fn assert_no_key_material(text: &str, what: &str) {
    for needle in ["PRIVATE KEY", "BEGIN EC", "MIG", "MHc"] {
        assert!(
            !text.contains(needle),
            "{what} contains {needle:?}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_and_the_key_appear_nowhere_even_at_trace_level() {
    let agent = DevAgent::start(AgentOptions::default()).await;
    let backend = TcpEcho::start().await;
    let api = ServiceRegistration::new(API, backend.addr().port());
    agent.register(&api).await;
    agent.set_intentions(API, &[(WEB, "allow")]).await;
    let mut sidecar = ConsulSidecar::spawn_with_args(
        &agent.url(),
        &api.id,
        &["--token", TOKEN, "--log-level", "trace"],
    );
    sidecar
        .wait_ready()
        .await
        .expect("the sidecar becomes ready");
    let config = sidecar.admin().config().await.expect("/config").to_string();
    assert!(config.contains("\"leaf\""), "{config}");
    assert!(
        !config.contains(TOKEN),
        "/config shows the token:\n{config}"
    );
    assert_no_key_material(&config, "/config");
    // Ready means the roots, the leaf and the intentions came back over requests that
    // carried the token.
    let log = sidecar.stderr();
    assert!(log.contains("TRACE"), "not a trace-level log:\n{log}");
    assert!(!log.contains(TOKEN), "the token is in the log");
    assert_no_key_material(&log, "the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_mode_config_shows_no_key() {
    let backend = TcpEcho::start().await;
    let mesh = Mesh::builder(backend.addr()).allow(WEB).start().await;
    let config = mesh
        .api
        .admin()
        .config()
        .await
        .expect("/config")
        .to_string();
    assert!(config.contains(&mesh.api_leaf.serial_hex), "{config}");
    assert_no_key_material(&config, "/config");
}
