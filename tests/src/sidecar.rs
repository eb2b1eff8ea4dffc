//! A running `ferrule proxy --config` process, its files, and its admin endpoints.
//!
//! Each sidecar lives in its own temporary directory: `ferrule.toml`, `cert.pem`,
//! `key.pem`, `bundle.pem`, `intentions.json` and `stderr.log`. Every port it binds is
//! on 127.0.0.1 and picked free just before it starts. The process is killed and reaped
//! when the `Sidecar` is dropped, and its stderr is printed then: the test harness
//! shows that output only for a test that failed.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferrule_dev::ca::{DevCa, IssuedLeaf};

use crate::admin::Admin;
use crate::binary::ferrule_bin;
use crate::metrics::{Metrics, Selector};
use crate::wait::free_port;

/// How long a sidecar gets to answer `/ready` with 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The files of a sidecar's directory, by the name its config uses for them.
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
pub const BUNDLE_FILE: &str = "bundle.pem";
pub const INTENTIONS_FILE: &str = "intentions.json";
pub const CONFIG_FILE: &str = "ferrule.toml";
const STDERR_FILE: &str = "stderr.log";

/// How a watched file is replaced while the sidecar runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Truncate and rewrite the same file (what an editor or `echo >` does).
    InPlace,
    /// Write a temporary file beside it, then rename it over the old one (what
    /// Kubernetes secrets, `mv` and careful tools do).
    AtomicRename,
}

/// What to put in a sidecar's directory and config file. Ports are not part of it: the
/// sidecar picks them when it starts.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    service: String,
    cert_pem: String,
    key_pem: Option<String>,
    bundle_pem: String,
    inbound: Option<Inbound>,
    upstreams: Vec<Upstream>,
    drain_timeout: Option<&'static str>,
    /// `--workload-api`: identity from there, no identity files.
    workload_api: Option<String>,
    /// Files written (`Some`) or left out (`None`) after the usual ones.
    overrides: Vec<(&'static str, Option<String>)>,
    /// More environment variables for the process.
    env: Vec<(&'static str, String)>,
    /// More command-line arguments for `ferrule proxy`.
    args: Vec<String>,
    /// Further tables of the config file, as written (`[access_logs]`, say).
    tables: Vec<String>,
    /// Top-level `key = value` lines, written before any table.
    keys: Vec<String>,
}

#[derive(Debug, Clone)]
struct Inbound {
    local_app: SocketAddr,
    intentions_json: String,
    protocol: &'static str,
    handshake_timeout_ms: Option<u64>,
    local_request_timeout_ms: Option<u64>,
    /// Further `key = value` lines of the `[inbound]` table.
    extra: Vec<String>,
}

#[derive(Debug, Clone)]
struct Upstream {
    name: String,
    endpoints: Vec<SocketAddr>,
    protocol: &'static str,
    request_timeout_ms: Option<u64>,
    extra: Vec<String>,
}

impl SidecarConfig {
    /// A sidecar presenting `leaf` and trusting `ca`, with no listeners yet.
    pub fn new(ca: &DevCa, leaf: &IssuedLeaf) -> SidecarConfig {
        SidecarConfig::with_bundle(leaf, ca.cert_pem())
    }

    /// A sidecar presenting `leaf` (followed by its intermediates, if any) and trusting
    /// `roots_pem`, every root's certificate concatenated.
    pub fn with_bundle(leaf: &IssuedLeaf, roots_pem: &str) -> SidecarConfig {
        SidecarConfig {
            service: leaf.service.clone(),
            cert_pem: leaf.cert_pem.clone(),
            key_pem: Some(leaf.key_pem.clone()),
            bundle_pem: roots_pem.to_owned(),
            inbound: None,
            upstreams: Vec::new(),
            drain_timeout: None,
            workload_api: None,
            overrides: Vec::new(),
            tables: Vec::new(),
            keys: Vec::new(),
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    /// A sidecar of `service` that takes its identity from the Workload API at `addr`
    /// (`--workload-api`); its config pins the service and names no identity files.
    pub fn from_workload_api(service: &str, addr: &str) -> SidecarConfig {
        SidecarConfig {
            service: service.to_owned(),
            cert_pem: String::new(),
            key_pem: None,
            bundle_pem: String::new(),
            inbound: None,
            upstreams: Vec::new(),
            workload_api: Some(addr.to_owned()),
            drain_timeout: None,
            overrides: Vec::new(),
            tables: Vec::new(),
            keys: Vec::new(),
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    /// An inbound mTLS listener in front of `local_app`, authorized by the given
    /// `service-intentions` entry (JSON).
    pub fn inbound(mut self, local_app: SocketAddr, intentions_json: String) -> SidecarConfig {
        self.inbound = Some(Inbound {
            local_app,
            intentions_json,
            protocol: "tcp",
            handshake_timeout_ms: None,
            local_request_timeout_ms: None,
            extra: Vec::new(),
        });
        self
    }

    /// `inbound.protocol` (`tcp` unless set): `http`, `http2` or `grpc` for L7.
    pub fn inbound_protocol(mut self, protocol: &'static str) -> SidecarConfig {
        let inbound = self
            .inbound
            .as_mut()
            .expect("inbound_protocol needs an inbound listener: call .inbound() first");
        inbound.protocol = protocol;
        self
    }

    /// `inbound.handshake_timeout_ms`; only meaningful with an inbound listener.
    pub fn handshake_timeout_ms(mut self, ms: u64) -> SidecarConfig {
        let inbound = self
            .inbound
            .as_mut()
            .expect("handshake_timeout_ms needs an inbound listener: call .inbound() first");
        inbound.handshake_timeout_ms = Some(ms);
        self
    }

    /// A plaintext listener for the app that carries its calls to `name` at `endpoints`.
    pub fn upstream(self, name: &str, endpoints: &[SocketAddr]) -> SidecarConfig {
        self.upstream_of(name, "tcp", endpoints)
    }

    /// An upstream of the given protocol (`tcp`, `http`, `http2`, `grpc`).
    pub fn upstream_of(
        mut self,
        name: &str,
        protocol: &'static str,
        endpoints: &[SocketAddr],
    ) -> SidecarConfig {
        self.upstreams.push(Upstream {
            name: name.to_owned(),
            endpoints: endpoints.to_vec(),
            protocol,
            request_timeout_ms: None,
            extra: Vec::new(),
        });
        self
    }

    /// `inbound.local_request_timeout_ms` (L7).
    pub fn local_request_timeout_ms(mut self, ms: u64) -> SidecarConfig {
        let inbound = self
            .inbound
            .as_mut()
            .expect("local_request_timeout_ms needs an inbound listener: call .inbound() first");
        inbound.local_request_timeout_ms = Some(ms);
        self
    }

    /// Any other key of the `[inbound]` table, e.g. `("idle_timeout_ms", "500")`.
    pub fn inbound_key(mut self, key: &str, value: &str) -> SidecarConfig {
        let inbound = self
            .inbound
            .as_mut()
            .expect("inbound_key needs an inbound listener: call .inbound() first");
        inbound.extra.push(format!("{key} = {value}"));
        self
    }

    /// Any other key of the upstream added last, e.g. `("max_connections", "2")`.
    pub fn upstream_key(mut self, key: &str, value: &str) -> SidecarConfig {
        let upstream = self
            .upstreams
            .last_mut()
            .expect("upstream_key needs an upstream: call .upstream_of() first");
        upstream.extra.push(format!("{key} = {value}"));
        self
    }

    /// `request_timeout_ms` of the upstream added last (L7).
    pub fn request_timeout_ms(mut self, ms: u64) -> SidecarConfig {
        let upstream = self
            .upstreams
            .last_mut()
            .expect("request_timeout_ms needs an upstream: call .upstream_of() first");
        upstream.request_timeout_ms = Some(ms);
        self
    }

    /// `--drain-timeout` (Go duration syntax, e.g. `"2s"`).
    pub fn drain_timeout(mut self, timeout: &'static str) -> SidecarConfig {
        self.drain_timeout = Some(timeout);
        self
    }

    /// Writes `contents` as the file `name` (`CERT_FILE`, `INTENTIONS_FILE`...) instead
    /// of what it would hold; `None` leaves it out.
    pub fn file(mut self, name: &'static str, contents: Option<&str>) -> SidecarConfig {
        self.overrides.push((name, contents.map(str::to_owned)));
        self
    }

    /// Adds a table to the config file, written as given after the others.
    pub fn table(mut self, toml: &str) -> SidecarConfig {
        self.tables.push(toml.to_owned());
        self
    }

    /// A top-level key of the config file (`prometheus_bind_addr`, say), its value
    /// written as given (quote strings).
    pub fn key(mut self, key: &str, value: &str) -> SidecarConfig {
        self.keys.push(format!("{key} = {value}"));
        self
    }

    /// Sets an environment variable of the process.
    pub fn env(mut self, key: &'static str, value: &str) -> SidecarConfig {
        self.env.push((key, value.to_owned()));
        self
    }

    /// Adds a command-line argument (`--otlp-endpoint`, say).
    pub fn arg(mut self, arg: &str) -> SidecarConfig {
        self.args.push(arg.to_owned());
        self
    }

    fn render_toml(&self, ports: &Ports) -> String {
        let mut toml = String::new();
        for line in &self.keys {
            let _ = writeln!(toml, "{line}");
        }
        let _ = writeln!(toml, "[identity]");
        if self.workload_api.is_some() {
            let _ = writeln!(toml, "service = {:?}", self.service);
        } else {
            let _ = writeln!(toml, "cert = {CERT_FILE:?}");
            let _ = writeln!(toml, "key = {KEY_FILE:?}");
            let _ = writeln!(toml, "bundle = {BUNDLE_FILE:?}");
        }
        if let (Some(inbound), Some(bind)) = (&self.inbound, ports.inbound) {
            let _ = writeln!(toml, "\n[inbound]");
            let _ = writeln!(toml, "bind = \"{bind}\"");
            let _ = writeln!(toml, "local_app = \"{}\"", inbound.local_app);
            let _ = writeln!(toml, "protocol = {:?}", inbound.protocol);
            let _ = writeln!(toml, "intentions = {INTENTIONS_FILE:?}");
            if let Some(ms) = inbound.handshake_timeout_ms {
                let _ = writeln!(toml, "handshake_timeout_ms = {ms}");
            }
            if let Some(ms) = inbound.local_request_timeout_ms {
                let _ = writeln!(toml, "local_request_timeout_ms = {ms}");
            }
            for line in &inbound.extra {
                let _ = writeln!(toml, "{line}");
            }
        }
        for (upstream, (_, bind)) in self.upstreams.iter().zip(&ports.upstreams) {
            let endpoints: Vec<String> = upstream
                .endpoints
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect();
            let _ = writeln!(toml, "\n[[upstreams]]");
            let _ = writeln!(toml, "name = {:?}", upstream.name);
            let _ = writeln!(toml, "bind = \"{bind}\"");
            let _ = writeln!(toml, "protocol = {:?}", upstream.protocol);
            if let Some(ms) = upstream.request_timeout_ms {
                let _ = writeln!(toml, "request_timeout_ms = {ms}");
            }
            for line in &upstream.extra {
                let _ = writeln!(toml, "{line}");
            }
            let _ = writeln!(toml, "endpoints = [{}]", endpoints.join(", "));
        }
        for table in &self.tables {
            let _ = writeln!(toml, "\n{table}");
        }
        toml
    }
}

/// The addresses a sidecar was started with.
struct Ports {
    admin: SocketAddr,
    inbound: Option<SocketAddr>,
    upstreams: Vec<(String, SocketAddr)>,
}

impl Ports {
    fn pick(config: &SidecarConfig) -> Ports {
        Ports {
            admin: free_port(),
            inbound: config.inbound.as_ref().map(|_| free_port()),
            upstreams: config
                .upstreams
                .iter()
                .map(|u| (u.name.clone(), free_port()))
                .collect(),
        }
    }
}

/// A running `ferrule proxy` process.
pub struct Sidecar {
    service: String,
    child: Child,
    ports: Ports,
    // Declared last: dropped after the process is gone.
    dir: tempfile::TempDir,
}

impl Sidecar {
    /// Starts a sidecar and waits until `/ready` says 200. A port that another process
    /// took between picking and binding gets the sidecar restarted on new ports.
    pub async fn start(config: SidecarConfig) -> Sidecar {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let mut sidecar = Sidecar::spawn(config.clone());
            match sidecar.wait_ready().await {
                Ok(()) => return sidecar,
                Err(e) if attempt < ATTEMPTS && sidecar.lost_a_port_race() => {
                    eprintln!(
                        "ferrule ({}) could not bind a port, retrying: {e:#}",
                        config.service
                    );
                }
                Err(e) => panic!("ferrule ({}) did not become ready: {e:#}", config.service),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// Writes the sidecar's files and starts the process without waiting for it.
    pub fn spawn(config: SidecarConfig) -> Sidecar {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ferrule-{}-", config.service))
            .tempdir()
            .expect("create a temporary directory for a sidecar");
        let ports = Ports::pick(&config);
        let write = |name: &str, contents: &str| {
            std::fs::write(dir.path().join(name), contents)
                .unwrap_or_else(|e| panic!("write {name} for a sidecar: {e}"));
        };
        if config.workload_api.is_none() {
            write(CERT_FILE, &config.cert_pem);
            if let Some(key) = &config.key_pem {
                write(KEY_FILE, key);
            }
            write(BUNDLE_FILE, &config.bundle_pem);
        }
        if let Some(inbound) = &config.inbound {
            write(INTENTIONS_FILE, &inbound.intentions_json);
        }
        write(CONFIG_FILE, &config.render_toml(&ports));
        for (name, contents) in &config.overrides {
            match contents {
                Some(contents) => write(name, contents),
                None => {
                    let _ = std::fs::remove_file(dir.path().join(name));
                }
            }
        }

        let mut command = ferrule_proxy_command(&dir.path().join(CONFIG_FILE), ports.admin);
        if let Some(timeout) = config.drain_timeout {
            command.args(["--drain-timeout", timeout]);
        }
        match &config.workload_api {
            Some(addr) => command.args(["--workload-api", addr]),
            None => command.env_remove("SPIFFE_ENDPOINT_SOCKET"),
        };
        command.envs(config.env.iter().map(|(k, v)| (k, v)));
        command.args(&config.args);
        let child = command
            .stdout(Stdio::null())
            .stderr(stderr_file(dir.path()))
            .spawn()
            .expect("spawn the ferrule binary");
        Sidecar {
            service: config.service,
            child,
            ports,
            dir,
        }
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// The public mTLS listener. Panics if the sidecar has none.
    pub fn inbound_addr(&self) -> SocketAddr {
        self.ports
            .inbound
            .unwrap_or_else(|| panic!("sidecar {} has no inbound listener", self.service))
    }

    /// The app-facing plaintext listener of upstream `name`.
    pub fn upstream_addr(&self, name: &str) -> SocketAddr {
        self.ports
            .upstreams
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, addr)| *addr)
            .unwrap_or_else(|| panic!("sidecar {} has no upstream {name:?}", self.service))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.ports.admin
    }

    /// The sidecar's directory, where its config and watched files are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces one of the watched files (`CERT_FILE`, `KEY_FILE`, `INTENTIONS_FILE`...).
    pub fn replace_file(&self, name: &str, contents: &str, how: Replace) {
        let path = self.dir.path().join(name);
        let result = match how {
            Replace::InPlace => std::fs::write(&path, contents),
            Replace::AtomicRename => {
                let temp = self.dir.path().join(format!(".{name}.new"));
                std::fs::write(&temp, contents).and_then(|()| std::fs::rename(&temp, &path))
            }
        };
        result.unwrap_or_else(|e| panic!("replace {} ({how:?}): {e}", path.display()));
    }

    /// What the process wrote to stderr so far (its log).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(STDERR_FILE)).unwrap_or_default()
    }

    /// The admin endpoints.
    pub fn admin(&self) -> Admin {
        Admin {
            addr: self.ports.admin,
            name: self.service.clone(),
        }
    }

    /// `GET /ready`: the status code and body.
    pub async fn ready(&self) -> anyhow::Result<(u16, String)> {
        self.admin().ready().await
    }

    /// Polls `/ready` until it is 200, for at most `READY_TIMEOUT`; fails early, with
    /// the process's stderr, if the process exits.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let admin = self.admin();
        let dir = self.dir.path().to_owned();
        let log = move || std::fs::read_to_string(dir.join(STDERR_FILE)).unwrap_or_default();
        admin.wait_ready(&mut self.child, READY_TIMEOUT, log).await
    }

    /// One scrape of `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        self.admin().metrics().await
    }

    /// The current value of one metric (see `Metrics::get`).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        self.admin().metric(name, labels).await
    }

    /// Scrapes until the metric's value satisfies `expected`, for at most `within`.
    pub async fn wait_for_metric(
        &self,
        metric: Selector<'_>,
        expected: impl Fn(f64) -> bool,
        within: Duration,
    ) -> anyhow::Result<f64> {
        self.admin().wait_for_metric(metric, expected, within).await
    }

    /// Sends SIGTERM, as an orchestrator stopping the sidecar would.
    pub fn terminate(&self) {
        self.signal(rustix::process::Signal::TERM);
    }

    /// Sends SIGHUP: read the config file again.
    pub fn hangup(&self) {
        self.signal(rustix::process::Signal::HUP);
    }

    /// Sends SIGUSR1: reopen the access-log file.
    pub fn user1(&self) {
        self.signal(rustix::process::Signal::USR1);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal)
            .unwrap_or_else(|e| panic!("{signal:?} to ferrule ({}): {e}", self.service));
    }

    /// The process ID, to read its resource use from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit, for at most `within`: its exit code (`None` if
    /// killed by a signal), or an error if it is still running.
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<Option<i32>> {
        crate::wait::exit_within(&mut self.child, within).await
    }

    /// The process exited because one of its listener ports was taken meanwhile.
    fn lost_a_port_race(&self) -> bool {
        self.stderr().contains("Address already in use")
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Captured by the test harness and shown only if the test failed.
        eprintln!(
            "----- stderr of ferrule ({}, admin {}) -----\n{}----- end of stderr ({}) -----",
            self.service,
            self.ports.admin,
            self.stderr(),
            self.service
        );
    }
}

/// `ferrule proxy --config FILE --admin-addr ADDR` with debug logs for ferrule itself.
pub fn ferrule_proxy_command(config: &Path, admin: SocketAddr) -> Command {
    let mut command = Command::new(ferrule_bin());
    command
        .arg("proxy")
        .arg("--config")
        .arg(config)
        .arg("--admin-addr")
        .arg(admin.to_string())
        .args(["--log-level", "info,ferrule=debug"])
        .stdin(Stdio::null());
    command
}

fn stderr_file(dir: &Path) -> std::fs::File {
    let path: PathBuf = dir.join(STDERR_FILE);
    std::fs::File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}
