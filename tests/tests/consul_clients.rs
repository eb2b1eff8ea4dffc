//! `ferrule dev` through real third-party clients, as a mesh user drives Consul:
//! PyPI `py-consul` and npm `consul` (register with a sidecar, read back, catalog and
//! health reads, config entries with CAS, intentions, CA roots and leaf, a blocking query
//! woken by a change, deregister, each answer checked against Consul's documented shape)
//! and PyPI `spiffe` (gRPC C-core) fetching an X.509-SVID from `--workload-api-socket`.
//!
//! The scripts live in `tests/clients/`. `.ci/run` installs the clients into
//! `target/ci-venv` (Python) and `target/ci-npm` (node). Without them these tests fail
//! under CI (`CI=true`) and are skipped with a note elsewhere.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ferrule_tests::agent::{AgentOptions, DevAgent};

/// A script gets this long; each of its blocking reads wakes well within it.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The interpreter and the arguments that run `script`, when the client `module` is
/// installed; otherwise why not.
fn runner(language: &str) -> Result<(PathBuf, Vec<(String, PathBuf)>), String> {
    let root = workspace();
    match language {
        "python" => {
            let python = root.join("target/ci-venv/bin/python");
            if python.is_file() {
                Ok((python, Vec::new()))
            } else {
                Err(format!(
                    "no {} (run .ci/run, or python3 -m venv target/ci-venv && target/ci-venv/bin/pip install py-consul spiffe)",
                    python.display()
                ))
            }
        }
        _ => {
            let modules = root.join("target/ci-npm/node_modules");
            let node_ok = std::process::Command::new("node")
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if node_ok && modules.join("consul").is_dir() {
                Ok((
                    PathBuf::from("node"),
                    vec![("NODE_PATH".to_owned(), modules)],
                ))
            } else {
                Err(format!(
                    "no node or no {} (run .ci/run, or npm install --prefix target/ci-npm consul)",
                    modules.join("consul").display()
                ))
            }
        }
    }
}

/// Runs a client script; `None` when the client is not installed outside CI.
async fn run_script(language: &str, script: &str, args: &[String]) -> Option<String> {
    let (program, env) = match runner(language) {
        Ok(found) => found,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("the {language} client is missing under CI: {why}")
        }
        Err(why) => {
            eprintln!("skipped: the {language} client is not installed: {why}");
            return None;
        }
    };
    let path = workspace()
        .join("tests/clients")
        .join(language)
        .join(script);
    let mut command = tokio::process::Command::new(&program);
    command
        .arg(&path)
        .args(args)
        .envs(env)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {SCRIPT_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("running {} {}: {e}", program.display(), path.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    Some(stdout)
}

fn host_port(agent: &DevAgent) -> Vec<String> {
    vec![
        agent.addr().ip().to_string(),
        agent.addr().port().to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_consul_does_what_a_mesh_user_does() {
    let agent = DevAgent::start(AgentOptions::default()).await;
    let Some(out) = run_script("python", "mesh_user.py", &host_port(&agent)).await else {
        return;
    };
    for step in [
        "register with a sidecar",
        "catalog and health",
        "config entries with CAS",
        "CA roots, leaf",
        "intentions and authorize",
        "a blocking query woken",
        "deregister",
    ] {
        assert!(out.contains(&format!("ok: {step}")), "{step}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_consul_does_what_a_mesh_user_does() {
    let agent = DevAgent::start(AgentOptions::default()).await;
    let Some(out) = run_script("js", "mesh_user.js", &host_port(&agent)).await else {
        return;
    };
    assert!(out.contains("ok: deregister"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypi_spiffe_fetches_an_svid_from_the_workload_api() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = dir.path().join("web.sock");
    let agent = DevAgent::start(AgentOptions {
        extra_args: vec![
            "--workload-api-socket".to_owned(),
            format!("web={}", socket.display()),
        ],
        ..AgentOptions::default()
    })
    .await;
    let roots = agent
        .get_json("/v1/connect/ca/roots")
        .await
        .expect("the CA roots");
    let trust_domain = roots["TrustDomain"].as_str().unwrap_or_default();
    let expected = format!("spiffe://{trust_domain}/ns/default/dc/dc1/svc/web");
    let args = vec![socket.display().to_string(), expected.clone()];
    let Some(out) = run_script("python", "spiffe_svid.py", &args).await else {
        return;
    };
    assert!(out.contains(&expected), "{out}");
}
