//! A running `ferrule proxy --sidecar-for ID` process that takes everything from a
//! (dev) agent: roots, leaf, registration, intentions and upstream endpoints.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::admin::Admin;
use crate::agent::DevAgent;
use crate::binary::ferrule_bin;
use crate::wait::free_port;

/// How long a sidecar gets to answer `/ready` with 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ConsulSidecar {
    service_id: String,
    child: Child,
    admin: Admin,
    dir: tempfile::TempDir,
}

impl ConsulSidecar {
    /// Starts `ferrule proxy --sidecar-for service_id` against `agent` and waits until
    /// `/ready` says 200.
    pub async fn start(agent: &DevAgent, service_id: &str) -> ConsulSidecar {
        ConsulSidecar::start_at(&agent.url(), service_id).await
    }

    /// As [`ConsulSidecar::start`], against the agent at `agent_url` (e.g. a fault
    /// injector in front of one).
    pub async fn start_at(agent_url: &str, service_id: &str) -> ConsulSidecar {
        let mut sidecar = ConsulSidecar::spawn_at(agent_url, service_id);
        if let Err(e) = sidecar.wait_ready().await {
            panic!("the sidecar for {service_id} did not become ready: {e:#}");
        }
        sidecar
    }

    pub fn spawn(agent: &DevAgent, service_id: &str) -> ConsulSidecar {
        ConsulSidecar::spawn_at(&agent.url(), service_id)
    }

    /// As [`ConsulSidecar::start`], with more `ferrule proxy` flags (e.g. `--workload-api`).
    pub async fn start_with_args(
        agent: &DevAgent,
        service_id: &str,
        extra_args: &[&str],
    ) -> ConsulSidecar {
        let mut sidecar = ConsulSidecar::spawn_with_args(&agent.url(), service_id, extra_args);
        if let Err(e) = sidecar.wait_ready().await {
            panic!("the sidecar for {service_id} did not become ready: {e:#}");
        }
        sidecar
    }

    pub fn spawn_at(agent_url: &str, service_id: &str) -> ConsulSidecar {
        ConsulSidecar::spawn_with_args(agent_url, service_id, &[])
    }

    /// As [`ConsulSidecar::spawn_at`], with more arguments for `ferrule proxy` (later
    /// ones win over the defaults, e.g. `--log-level trace`).
    pub fn spawn_with_args(
        agent_url: &str,
        service_id: &str,
        extra_args: &[&str],
    ) -> ConsulSidecar {
        ConsulSidecar::spawn_with_env(agent_url, service_id, extra_args, &[])
    }

    /// As [`ConsulSidecar::spawn_with_args`], with more environment variables.
    pub fn spawn_with_env(
        agent_url: &str,
        service_id: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> ConsulSidecar {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ferrule-sidecar-for-{service_id}-"))
            .tempdir()
            .expect("create a temporary directory for a sidecar");
        let log_path = dir.path().join("stderr.log");
        let log = std::fs::File::create(&log_path).expect("create the sidecar's log");
        let admin = free_port();
        let child = Command::new(ferrule_bin())
            .arg("proxy")
            .args(["--sidecar-for", service_id])
            .args(["--consul-addr", agent_url])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--log-level", "info,ferrule=debug,ferrule_control=debug"])
            .args(extra_args)
            .env_remove("CONSUL_HTTP_TOKEN")
            .env_remove("CONSUL_HTTP_TOKEN_FILE")
            .env_remove("CONSUL_HTTP_ADDR")
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ferrule proxy --sidecar-for");
        ConsulSidecar {
            service_id: service_id.to_owned(),
            child,
            admin: Admin {
                addr: admin,
                name: format!("sidecar for {service_id}"),
            },
            dir,
        }
    }

    /// The process ID, to read its resource use from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn admin(&self) -> &Admin {
        &self.admin
    }

    /// What the process wrote to stderr so far (its log).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    /// Polls `/ready` until 200; fails early, with the log, if the process exits.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let log_path = self.log_path();
        let log = move || std::fs::read_to_string(&log_path).unwrap_or_default();
        self.admin
            .wait_ready(&mut self.child, READY_TIMEOUT, log)
            .await
    }

    /// Waits for the process to exit, for at most `within`: its exit code (`None` if
    /// killed by a signal), or an error if it is still running.
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<Option<i32>> {
        crate::wait::exit_within(&mut self.child, within).await
    }

    /// The serial of the leaf in force, from `/config`.
    pub async fn leaf_serial(&self) -> anyhow::Result<String> {
        let config = self.admin.config().await?;
        config["leaf"]["serial"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no leaf.serial in /config: {config}"))
    }
}

impl Drop for ConsulSidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!(
            "----- stderr of ferrule (sidecar for {}, admin {}) -----\n{}----- end of stderr -----",
            self.service_id,
            self.admin.addr,
            self.stderr()
        );
    }
}
