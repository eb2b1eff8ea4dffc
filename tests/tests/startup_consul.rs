//! Start-up in Consul mode: while the first configuration cannot be had, the sidecar
//! keeps trying, `/ready` answers 503 listing the true causes (the agent's error, no
//! such registration), and a warning repeats on a schedule saying why. A listener that
//! cannot bind at start-up exits 1 naming the address, as in static mode.

use std::time::Duration;

use ferrule_tests::agent::{AgentOptions, DevAgent, ServiceRegistration};
use ferrule_tests::consul::ConsulSidecar;
use ferrule_tests::wait::{eventually, free_port};

/// The hidden test knob for the not-ready reminder's period.
const REMINDER_ENV: &str = "FERRULE_TEST_NOT_READY_REMINDER_MS";

/// Polls `/ready` until it is 503 with a body containing every one of `wanted`.
async fn ready_says(sidecar: &ConsulSidecar, wanted: &[&str]) -> String {
    let result = eventually(
        "/ready names the cause",
        Duration::from_secs(20),
        || async {
            let (code, body) = sidecar.admin().ready().await?;
            anyhow::ensure!(code == 503, "/ready is {code}: {body}");
            for w in wanted {
                anyhow::ensure!(body.contains(w), "/ready does not say {w:?}: {body}");
            }
            Ok(body)
        },
    )
    .await;
    result.unwrap_or_else(|e| panic!("{e:#}\nstderr:\n{}", sidecar.stderr()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_agent_is_named_by_ready_and_by_a_periodic_warning() {
    // Nothing listens there.
    let nowhere = free_port();
    let url = format!("http://{nowhere}");
    let sidecar = ConsulSidecar::spawn_with_env(&url, "web", &[], &[(REMINDER_ENV, "300")]);

    let body = ready_says(
        &sidecar,
        &["cannot reach the Consul agent", &nowhere.to_string()],
    )
    .await;
    assert!(
        !body.contains("intentions"),
        "intentions are not what is missing: {body}"
    );
    let reminders = eventually(
        "two not-ready warnings",
        Duration::from_secs(20),
        || async {
            let count = sidecar
                .stderr()
                .lines()
                .filter(|l| {
                    l.contains("WARN")
                        && l.contains("not ready")
                        && l.contains("cannot reach the Consul agent")
                })
                .count();
            anyhow::ensure!(count >= 2, "{count} reminders so far");
            Ok(count)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nstderr:\n{}", sidecar.stderr()));
    assert!(reminders >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_names_a_service_with_no_sidecar_registration() {
    let agent = DevAgent::start(AgentOptions::default()).await;
    let sidecar = ConsulSidecar::spawn(&agent, "ghost");
    let body = ready_says(&sidecar, &["no connect-proxy registered", "\"ghost\""]).await;
    assert!(
        !body.contains("intentions"),
        "intentions are not what is missing: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_port_taken_at_start_up_exits_1_naming_the_address() {
    let agent = DevAgent::start(AgentOptions::default()).await;
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("take a port");
    let taken = holder.local_addr().expect("its address");
    let mut api = ServiceRegistration::new("api", free_port().port());
    api.sidecar_port = taken.port();
    agent.register(&api).await;

    let mut sidecar = ConsulSidecar::spawn(&agent, "api");
    let code = sidecar
        .wait_exit(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nstderr:\n{}", sidecar.stderr()));
    let stderr = sidecar.stderr();
    assert_eq!(code, Some(1), "exit code; stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {taken}")),
        "stderr does not name {taken}\n{stderr}"
    );
}
