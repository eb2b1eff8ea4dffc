//! The soak, run by hand (not in CI):
//!
//!     FERRULE_SOAK_SECS=1800 cargo test --release -p ferrule-tests --test soak -- --ignored --nocapture
//!
//! Mixed traffic for the whole time: L4 through a Consul-mode pair whose leaves the
//! agent renews every 12-18 s and whose CA root rotates every 5 minutes, and L7 through
//! a static pair whose leaf file is replaced every minute. Every 30 s it prints the
//! resident memory and open file descriptors of the four sidecars; at the end RSS and
//! descriptors must be flat (the last third no higher than the first third, within a
//! margin) and no request may have failed.

use std::time::Duration;

use ferrule_tests::agent::{AgentOptions, DevAgent, ServiceRegistration};
use ferrule_tests::backends::{GET_BODY, HttpEcho};
use ferrule_tests::consul::ConsulSidecar;
use ferrule_tests::mesh::{API, L7Pair, WEB, svid};
use ferrule_tests::sidecar::{CERT_FILE, KEY_FILE, Replace};
use ferrule_tests::traffic::Load;
use ferrule_tests::wait::free_port;
use serde_json::json;
use tokio::time::Instant;

const SAMPLE_EVERY: Duration = Duration::from_secs(30);

/// (RSS in KiB, open file descriptors) of a process.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 30-minute soak, run by hand"]
async fn thirty_minutes_of_mixed_traffic_and_rotations_keep_memory_and_descriptors_flat() {
    let run = Duration::from_secs(
        std::env::var("FERRULE_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1800),
    );

    let agent = DevAgent::start(AgentOptions {
        leaf_ttl: "20s".to_owned(),
        ..AgentOptions::default()
    })
    .await;
    let l4_app = HttpEcho::start().await;
    let api = ServiceRegistration::new(API, l4_app.addr().port());
    let web = ServiceRegistration::new(WEB, free_port().port()).with_upstream(API);
    agent.register(&api).await;
    agent.register(&web).await;
    agent.set_intentions(API, &[(WEB, "allow")]).await;
    let l4_api = ConsulSidecar::start(&agent, &api.id).await;
    let l4_web = ConsulSidecar::start(&agent, &web.id).await;
    agent
        .wait_passing(API, &[api.sidecar_port], Duration::from_secs(20))
        .await;

    let l7_app = HttpEcho::start().await;
    let allow = json!({ "Kind": "service-intentions", "Name": API,
        "Sources": [ { "Name": WEB, "Action": "allow" } ] });
    let l7 = L7Pair::start("http", l7_app.addr(), &allow).await;

    let processes = [
        ("l4 api", l4_api.pid()),
        ("l4 web", l4_web.pid()),
        ("l7 api", l7.api.pid()),
        ("l7 web", l7.web.pid()),
    ];
    let l4_load = Load::start(web.upstream_addr(API), 4, 50, GET_BODY.as_bytes());
    let l7_load = Load::start(l7.web.upstream_addr(API), 4, 50, GET_BODY.as_bytes());

    let started = Instant::now();
    let mut samples: Vec<Vec<(u64, usize)>> = Vec::new();
    let mut next_root = Duration::from_secs(300);
    let mut next_leaf = Duration::from_secs(60);
    let mut root_rotations = 0;
    let mut leaf_replacements = 0;
    println!(
        "elapsed  {}",
        processes.map(|(n, _)| format!("{n:>22}")).join("")
    );
    while started.elapsed() < run {
        tokio::time::sleep(SAMPLE_EVERY.min(run.saturating_sub(started.elapsed()))).await;
        let elapsed = started.elapsed();
        if elapsed >= next_root {
            agent.rotate_ca().await;
            root_rotations += 1;
            next_root += Duration::from_secs(300);
        }
        if elapsed >= next_leaf {
            let leaf = svid(&l7.ca, API);
            l7.api
                .replace_file(KEY_FILE, &leaf.key_pem, Replace::AtomicRename);
            l7.api
                .replace_file(CERT_FILE, &leaf.cert_pem, Replace::AtomicRename);
            leaf_replacements += 1;
            next_leaf += Duration::from_secs(60);
        }
        let sample: Vec<(u64, usize)> = processes.iter().map(|(_, pid)| usage(*pid)).collect();
        println!(
            "{:>6}s  {}",
            elapsed.as_secs(),
            sample
                .iter()
                .map(|(rss, fds)| format!("{:>12} KiB {fds:>4} fd", rss))
                .collect::<String>()
        );
        samples.push(sample);
    }
    let (l4, l4_rate) = l4_load.stop().await;
    let (l7_tally, l7_rate) = l7_load.stop().await;
    println!(
        "soak {:?}: L4 {} ok ({l4_rate:.0}/s), L7 {} ok ({l7_rate:.0}/s), {root_rotations} root rotations, {leaf_replacements} L7 leaf replacements, L4 leaves renewed by the agent every 12-18 s",
        started.elapsed(),
        l4.ok,
        l7_tally.ok
    );
    l4.assert_none_failed("soak L4");
    l7_tally.assert_none_failed("soak L7");

    let third = (samples.len() / 3).max(1);
    for (i, (name, _)) in processes.iter().enumerate() {
        let first_rss = samples[..third].iter().map(|s| s[i].0).max().unwrap_or(0);
        let last_rss = samples[samples.len() - third..]
            .iter()
            .map(|s| s[i].0)
            .max()
            .unwrap_or(0);
        let first_fds = samples[..third].iter().map(|s| s[i].1).max().unwrap_or(0);
        let last_fds = samples[samples.len() - third..]
            .iter()
            .map(|s| s[i].1)
            .max()
            .unwrap_or(0);
        println!(
            "{name}: RSS max {first_rss} KiB (first third) -> {last_rss} KiB (last third); fds {first_fds} -> {last_fds}"
        );
        assert!(
            last_rss <= first_rss + first_rss / 4 + 4096,
            "{name}: RSS grew"
        );
        assert!(last_fds <= first_fds + 8, "{name}: descriptors grew");
    }
}
