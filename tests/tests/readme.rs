//! The README's walk-throughs run as written. Every ```sh block that follows a
//! `<!-- readme-test: NAME -->` line belongs to walk-through NAME; its blocks run in
//! order as one bash script (`set -euo pipefail`), in a fresh directory, with the
//! `ferrule` under test first on `PATH`. The only edits: each port the README names is
//! replaced by a free one, and `ferrule dev` is given that port for the agent's default
//! address (the proxies find it through `CONSUL_HTTP_ADDR`). The script must finish,
//! with status 0, within the time limit; everything it started is stopped with its
//! process group. Each walk-through names what its output must show.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ferrule_tests::binary::ferrule_bin;
use ferrule_tests::wait::free_port;
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// A whole walk-through, checks turning critical and sidecars starting included.
const LIMIT: Duration = Duration::from_secs(300);

/// The ports the README's walk-throughs name; each gets a free one.
const PORTS: &[u16] = &[
    8500, 8501, 8080, 8081, 8082, 8083, 8090, 8443, 8444, 9191, 19100, 19101, 19102, 19103, 19104,
    19105, 19106, 21000, 21001, 21002, 21003, 21004,
];

/// The blocks of walk-through `name`, in order, joined.
fn walkthrough(readme: &str, name: &str) -> String {
    let marker = format!("<!-- readme-test: {name} -->");
    let mut script = String::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != marker {
            continue;
        }
        assert_eq!(
            lines.next().map(str::trim),
            Some("```sh"),
            "{marker} must be followed by a ```sh block"
        );
        for line in lines.by_ref().take_while(|l| l.trim() != "```") {
            script.push_str(line);
            script.push('\n');
        }
    }
    script
}

/// `script` with every README port replaced by its free port.
fn with_ports(script: &str, ports: &BTreeMap<u16, u16>) -> String {
    let pattern = PORTS
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join("|");
    let re = regex::Regex::new(&format!(r"\b({pattern})\b")).expect("a valid pattern");
    re.replace_all(script, |caps: &regex::Captures<'_>| {
        let port: u16 = caps[1].parse().expect("a listed port");
        ports[&port].to_string()
    })
    .into_owned()
}

async fn run(name: &str, expected: &[&str]) {
    for tool in ["bash", "curl", "python3"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(found, "`{tool}` is needed to run the README's walk-through");
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md is readable");
    let script = walkthrough(&readme, name);
    assert!(!script.is_empty(), "no blocks marked readme-test: {name}");
    let ports: BTreeMap<u16, u16> = PORTS.iter().map(|p| (*p, free_port().port())).collect();
    let agent_port = ports[&8500];
    let script = with_ports(&script, &ports).replace(
        "ferrule dev ",
        &format!("ferrule dev --addr 127.0.0.1:{agent_port} "),
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bin_dir = ferrule_bin().parent().expect("the binary's directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("bash")
        .args(["-c", &format!("set -euo pipefail\n{script}")])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("CONSUL_HTTP_ADDR", format!("http://127.0.0.1:{agent_port}"))
        .env_remove("CONSUL_HTTP_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("bash starts");
    let pid = child.id().and_then(|id| Pid::from_raw(id as i32));
    let out = tokio::spawn(read_all(child.stdout.take()));
    let err = tokio::spawn(read_all(child.stderr.take()));
    let outcome = tokio::time::timeout(LIMIT, child.wait()).await;
    // The walk-through's background processes (agent, apps, sidecars) share its group,
    // and hold its output open until they are gone.
    if let Some(pid) = pid {
        let _ = kill_process_group(pid, Signal::TERM);
        if tokio::time::timeout(Duration::from_secs(10), async {
            while !out.is_finished() || !err.is_finished() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .is_err()
        {
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }
    let _ = child.kill().await;
    let (out, err) = (out.await.unwrap_or_default(), err.await.unwrap_or_default());
    let out = String::from_utf8_lossy(&out).into_owned();
    let err = String::from_utf8_lossy(&err);
    let tail: String = {
        let lines: Vec<&str> = err.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    };
    match outcome {
        Ok(Ok(status)) => assert!(
            status.success(),
            "walk-through {name} failed ({status})\n--- stdout\n{out}\n--- stderr (end)\n{tail}"
        ),
        Ok(Err(e)) => panic!("walk-through {name}: {e}"),
        Err(_) => panic!(
            "walk-through {name} did not finish within {LIMIT:?}\n--- stdout\n{out}\n--- stderr (end)\n{tail}"
        ),
    }
    assert!(
        !err.contains("addr=0.0.0.0"),
        "walk-through {name}: a listener bound beyond loopback\n--- stderr (end)\n{tail}"
    );
    for expected in expected {
        assert!(
            out.contains(expected),
            "walk-through {name}: {expected:?} not printed\n--- stdout\n{out}"
        );
    }
}

/// Everything a pipe carries until it closes.
async fn read_all(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut bytes).await;
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_consul_and_traffic_management() {
    run(
        "consul",
        &[
            "hello from api",
            "api answered 200",
            "api v1",
            "api v2",
            "the admin service",
        ],
    )
    .await;
}

/// Two datacenters, a mesh gateway in each, web in dc1 calling api in dc2 by failover,
/// then api in dc1 taking the traffic back, and failing over again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_datacenters() {
    run(
        "datacenters",
        &[
            "hello from api in dc2",
            "ferrule_gateway_routed_total{datacenter=\"dc2\"",
            "hello from api in dc1",
            "api.default.default.dc2",
        ],
    )
    .await;
}

/// `ferrule certs`, two static sidecars, a call, then the intention flipped to deny.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_tour() {
    run(
        "static",
        &[
            "wrote certs/ca.pem",
            "web: spiffe://",
            "ready",
            "hello from api",
            "decision=\"allow\"",
            "refused: web may no longer call api",
        ],
    )
    .await;
}

/// `ferrule dev`'s Workload API sockets, and two static sidecars taking their SVIDs
/// from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_spire() {
    run("spire", &["ready", "hello from api"]).await;
}

#[test]
fn ports_are_replaced_whole() {
    let ports: BTreeMap<u16, u16> = PORTS.iter().map(|p| (*p, p + 1)).collect();
    assert_eq!(
        with_ports("curl 127.0.0.1:8500/ :19100 seq 200 185000 8080x", &ports),
        "curl 127.0.0.1:8501/ :19101 seq 200 185000 8080x"
    );
}
