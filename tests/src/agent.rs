//! A `ferrule dev` agent as a child process, and the calls a test makes to it — the
//! same HTTP API a real Consul agent serves, so these helpers are what an operator's
//! `curl` against Consul would do.
//!
//! The agent listens on a free 127.0.0.1 port, keeps its CA in a temporary data dir,
//! and can be killed (SIGKILL) and restarted on the same port and data dir: it comes
//! back with the same CA, nothing else, and lower indexes. A second datacenter's agent
//! ([`DevAgent::start_secondary`]) listens on 127.0.0.2 and joins the first one's.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use hyper::Method;
use serde_json::{Value, json};

use crate::binary::ferrule_bin;
use crate::http::{self, Answer};
use crate::wait::{eventually, free_port, free_port_on};

/// How long the agent gets to answer `/v1/agent/self`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How the agent is started.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `--leaf-ttl`, e.g. `"72h"` or `"6s"`.
    pub leaf_ttl: String,
    /// `--check-interval` of the sidecars' TCP health checks.
    pub check_interval: String,
    /// More flags for `ferrule dev` (e.g. `--workload-api-socket`).
    pub extra_args: Vec<String>,
    /// The loopback address the agent listens on (127.0.0.1; a second datacenter's
    /// 127.0.0.2).
    pub ip: Ipv4Addr,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            leaf_ttl: "72h".to_owned(),
            check_interval: "500ms".to_owned(),
            extra_args: Vec::new(),
            ip: Ipv4Addr::LOCALHOST,
        }
    }
}

/// A running `ferrule dev`.
pub struct DevAgent {
    addr: SocketAddr,
    options: AgentOptions,
    child: Option<Child>,
    /// Earlier runs' logs, kept across restarts.
    logs: String,
    // Dropped after the process is gone.
    dir: tempfile::TempDir,
}

impl DevAgent {
    pub async fn start(options: AgentOptions) -> DevAgent {
        let dir = tempfile::Builder::new()
            .prefix("ferrule-dev-agent-")
            .tempdir()
            .expect("create the dev agent's data dir");
        let mut agent = DevAgent {
            addr: free_port_on(options.ip),
            options,
            child: None,
            logs: String::new(),
            dir,
        };
        agent.spawn_and_wait().await;
        agent
    }

    /// The agent of datacenter `datacenter` on 127.0.0.2, a secondary of `primary`'s
    /// datacenter (`--primary-datacenter`, `--join-wan`), returned once the primary
    /// signed its CA and lists it among the datacenters.
    pub async fn start_secondary(
        primary: &DevAgent,
        datacenter: &str,
        mut options: AgentOptions,
    ) -> DevAgent {
        let primary_dc = primary
            .get_json("/v1/agent/self")
            .await
            .ok()
            .and_then(|me| me["Config"]["Datacenter"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("the primary agent at {} has no datacenter", primary.addr));
        options.ip = Ipv4Addr::new(127, 0, 0, 2);
        let flags = [
            "--datacenter",
            datacenter,
            "--primary-datacenter",
            &primary_dc,
            "--join-wan",
            &primary.addr.to_string(),
        ];
        options.extra_args.extend(flags.map(str::to_owned));
        let agent = DevAgent::start(options).await;
        agent.wait_federated(primary, datacenter).await;
        agent
    }

    /// Waits until this secondary's roots are the primary's and the primary lists
    /// `datacenter`.
    async fn wait_federated(&self, primary: &DevAgent, datacenter: &str) {
        let trust_domain = primary
            .get_json("/v1/agent/connect/ca/roots")
            .await
            .ok()
            .and_then(|r| r["TrustDomain"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("the primary agent at {} has no roots", primary.addr));
        eventually(
            &format!("{datacenter} joins the primary and follows its CA"),
            START_TIMEOUT,
            || async {
                let roots = self.get_json("/v1/agent/connect/ca/roots").await?;
                anyhow::ensure!(
                    roots["TrustDomain"] == trust_domain.as_str(),
                    "roots: {roots}"
                );
                let known = primary.get_json("/v1/catalog/datacenters").await?;
                anyhow::ensure!(
                    known
                        .as_array()
                        .is_some_and(|dcs| dcs.iter().any(|d| d == datacenter)),
                    "the primary knows {known}"
                );
                Ok(())
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}; log:\n{}", self.current_log()));
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The agent as `--consul-addr` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL, as a crash or an OOM kill would end it; waits until the port refuses.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.logs.push_str(&self.current_log());
            self.logs.push_str("----- killed -----\n");
        }
    }

    /// Starts the agent again on the same port with the same data dir (the same CA).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn_and_wait().await;
    }

    async fn spawn_and_wait(&mut self) {
        let log = std::fs::File::create(self.log_path()).expect("create the dev agent's log");
        let child = Command::new(ferrule_bin())
            .arg("dev")
            .arg("--addr")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["--leaf-ttl", &self.options.leaf_ttl])
            .args(["--check-interval", &self.options.check_interval])
            .args(&self.options.extra_args)
            .args(["--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ferrule dev");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "ferrule dev exited with {status}; log:\n{}",
                    self.current_log()
                );
            }
            let last = match http::get(self.addr, "/v1/agent/self").await {
                Ok(answer) if answer.status == 200 => return,
                Ok(answer) => format!("{} {}", answer.status, answer.body),
                Err(e) => format!("{e:#}"),
            };
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "ferrule dev did not answer within {START_TIMEOUT:?} (last: {last}); log:\n{}",
                    self.current_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The data dir: `ca.pem` and `ca-key.pem` there are the agent's active CA.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The agent's active CA (from its data dir), to mint SVIDs its sidecars trust. A
    /// secondary datacenter's agent keeps none there (its CA is the primary's).
    pub fn ca(&self) -> ferrule_dev::ca::DevCa {
        let read = |name: &str| {
            std::fs::read_to_string(self.dir.path().join(name))
                .unwrap_or_else(|e| panic!("read the agent's {name}: {e}"))
        };
        ferrule_dev::ca::DevCa::from_pem(&read("ca.pem"), &read("ca-key.pem"))
            .unwrap_or_else(|e| panic!("the agent's CA does not load: {e}"))
    }

    /// What the agent logged so far in this run.
    pub fn log(&self) -> String {
        self.current_log()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    fn current_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        http::get(self.addr, path).await
    }

    /// `GET path`, expecting 200 and JSON.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        self.get(path).await?.json()
    }

    /// `PUT path` with a JSON body, expecting 200.
    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Answer> {
        let answer = http::put_json(self.addr, path, body).await?;
        anyhow::ensure!(
            answer.status == 200,
            "PUT {path} answered {}: {}",
            answer.status,
            answer.body
        );
        Ok(answer)
    }

    /// `PUT /v1/agent/service/register`.
    pub async fn register(&self, service: &ServiceRegistration) {
        self.put("/v1/agent/service/register", &service.to_json())
            .await
            .unwrap_or_else(|e| panic!("register {}: {e:#}", service.id));
    }

    /// `PUT /v1/agent/service/deregister/:id` (the sidecar goes with it).
    pub async fn deregister(&self, id: &str) {
        let path = format!("/v1/agent/service/deregister/{id}");
        let answer = http::request(self.addr, Method::PUT, &path, Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("deregister {id}: {e:#}"));
        assert_eq!(answer.status, 200, "deregister {id}: {}", answer.body);
    }

    /// `PUT /v1/agent/check/<pass|warn|fail>/:check_id`: sets a TTL check's status, as
    /// the app's own health reporting would.
    pub async fn set_ttl_check(&self, check_id: &str, status: TtlStatus) {
        let verb = match status {
            TtlStatus::Pass => "pass",
            TtlStatus::Warn => "warn",
            TtlStatus::Fail => "fail",
        };
        let path = format!("/v1/agent/check/{verb}/{check_id}");
        let answer = http::request(self.addr, Method::PUT, &path, Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("PUT {path}: {e:#}"));
        assert_eq!(answer.status, 200, "PUT {path}: {}", answer.body);
    }

    /// `DELETE /v1/config/:kind/:name`.
    pub async fn delete_config(&self, kind: &str, name: &str) -> anyhow::Result<()> {
        let path = format!("/v1/config/{kind}/{name}");
        let answer = http::request(self.addr, Method::DELETE, &path, Bytes::new()).await?;
        anyhow::ensure!(
            answer.status == 200,
            "DELETE {path} answered {}: {}",
            answer.status,
            answer.body
        );
        Ok(())
    }

    /// Replaces the `service-intentions` config entry of `destination`, as
    /// `consul config write` does: one source per `(name, "allow"|"deny")`.
    pub async fn set_intentions(&self, destination: &str, sources: &[(&str, &str)]) {
        let sources: Vec<Value> = sources
            .iter()
            .map(|(name, action)| json!({"Name": name, "Action": action}))
            .collect();
        let entry = json!({"Kind": "service-intentions", "Name": destination, "Sources": sources});
        self.put("/v1/config", &entry)
            .await
            .unwrap_or_else(|e| panic!("write intentions for {destination}: {e:#}"));
    }

    /// A new CA root (`PUT /v1/connect/ca/configuration`): the old root is kept, cross-
    /// signed, during the overlap, and every leaf is re-issued.
    /// New key material is what rotates a Consul CA's root (a `LeafCertTTL` alone does not).
    pub async fn rotate_ca(&self) {
        let current = self
            .get_json("/v1/connect/ca/configuration")
            .await
            .unwrap_or_else(|e| panic!("read the CA configuration: {e:#}"));
        let cluster = current["ClusterID"].as_str().unwrap_or_default();
        let config = ferrule_dev::ca_rotation_body(cluster)
            .unwrap_or_else(|e| panic!("make a new root: {e}"));
        self.put("/v1/connect/ca/configuration", &config)
            .await
            .unwrap_or_else(|e| panic!("rotate the CA: {e:#}"));
    }

    /// The ID of the active root.
    pub async fn active_root_id(&self) -> anyhow::Result<String> {
        let roots = self.get_json("/v1/agent/connect/ca/roots").await?;
        roots["ActiveRootID"]
            .as_str()
            .map(str::to_owned)
            .context("no ActiveRootID in the roots")
    }

    /// The leaf the agent currently hands out for `service` (`SerialNumber`, `CertPEM`,
    /// `PrivateKeyPEM`, ...).
    pub async fn leaf(&self, service: &str) -> anyhow::Result<Value> {
        self.get_json(&format!("/v1/agent/connect/ca/leaf/{service}"))
            .await
    }

    /// The current leaf's serial, colon-hex as the agent writes it.
    pub async fn leaf_serial(&self, service: &str) -> anyhow::Result<String> {
        let leaf = self.leaf(service).await?;
        leaf["SerialNumber"]
            .as_str()
            .map(str::to_owned)
            .context("the leaf has no SerialNumber")
    }

    /// Waits until `/v1/health/connect/:service?passing` lists exactly `expected`
    /// sidecar ports, in any order.
    pub async fn wait_passing(&self, service: &str, expected: &[u16], within: Duration) {
        let mut expected = expected.to_vec();
        expected.sort_unstable();
        let path = format!("/v1/health/connect/{service}?passing=1");
        eventually(
            &format!("{service}'s passing sidecars are {expected:?}"),
            within,
            || async {
                let entries = self.get_json(&path).await?;
                let mut ports: Vec<u16> = entries
                    .as_array()
                    .context("not a list")?
                    .iter()
                    .filter_map(|e| e["Service"]["Port"].as_u64())
                    .filter_map(|p| u16::try_from(p).ok())
                    .collect();
                ports.sort_unstable();
                anyhow::ensure!(ports == expected, "passing: {ports:?}");
                Ok(())
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

impl Drop for DevAgent {
    fn drop(&mut self) {
        self.kill();
        eprintln!(
            "----- log of ferrule dev ({}) -----\n{}----- end of the dev agent's log -----",
            self.addr, self.logs
        );
    }
}

/// What a TTL check update reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlStatus {
    Pass,
    Warn,
    Fail,
}

/// One upstream of a sidecar registration.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub destination: String,
    pub local_bind_port: u16,
}

/// A service instance with a sidecar, as `consul services register` takes it. Every
/// address is 127.0.0.1 and every port explicit, so parallel tests never collide.
#[derive(Debug, Clone)]
pub struct ServiceRegistration {
    pub id: String,
    pub name: String,
    /// The application's port.
    pub port: u16,
    /// The sidecar's public (mTLS) port.
    pub sidecar_port: u16,
    pub upstreams: Vec<Upstream>,
    /// `Meta` of the service (the sidecar inherits it, as Consul's sidecars do).
    pub meta: Vec<(String, String)>,
    /// `Tags` of the service (inherited by the sidecar too).
    pub tags: Vec<String>,
    /// `Checks` of the service, as JSON.
    pub checks: Vec<Value>,
    /// More keys of the sidecar's `Proxy.Config` (beside `bind_address`).
    pub proxy_config: Vec<(String, Value)>,
}

impl ServiceRegistration {
    /// `name` registered under ID `name`, its app on `app_port`, its sidecar on a free
    /// port.
    pub fn new(name: &str, app_port: u16) -> ServiceRegistration {
        ServiceRegistration {
            id: name.to_owned(),
            name: name.to_owned(),
            port: app_port,
            sidecar_port: free_port().port(),
            upstreams: Vec::new(),
            meta: Vec::new(),
            tags: Vec::new(),
            checks: Vec::new(),
            proxy_config: Vec::new(),
        }
    }

    /// One more key of the sidecar's `Proxy.Config`, e.g.
    /// `("envoy_prometheus_bind_addr", "127.0.0.1:9102")`.
    pub fn with_proxy_config(mut self, key: &str, value: Value) -> ServiceRegistration {
        self.proxy_config.push((key.to_owned(), value));
        self
    }

    /// One `Meta` key of the service, e.g. `("version", "v1")`.
    pub fn with_meta(mut self, key: &str, value: &str) -> ServiceRegistration {
        self.meta.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn with_tag(mut self, tag: &str) -> ServiceRegistration {
        self.tags.push(tag.to_owned());
        self
    }

    /// A TTL check `<id>-ttl` on the service, passing from the start and good for an
    /// hour: the test turns it critical and back with `/v1/agent/check/fail|pass`.
    /// The sidecar's alias check follows it, so the instance leaves (and rejoins)
    /// `/v1/health/connect/<name>?passing`.
    pub fn with_ttl_check(mut self) -> ServiceRegistration {
        self.checks.push(json!({
            "CheckID": self.ttl_check_id(),
            "Name": "ttl",
            "TTL": "1h",
            "Status": "passing",
        }));
        self
    }

    /// An HTTP check `<id>-http` of `url` every second (the agent's shortest interval):
    /// the instance turns critical within about a second of its app going away.
    pub fn with_http_check(mut self, url: &str) -> ServiceRegistration {
        self.checks.push(json!({
            "CheckID": format!("{}-http", self.id),
            "Name": "http",
            "HTTP": url,
            "Interval": "1s",
            "Timeout": "1s",
        }));
        self
    }

    /// The ID of the check [`ServiceRegistration::with_ttl_check`] adds.
    pub fn ttl_check_id(&self) -> String {
        format!("{}-ttl", self.id)
    }

    pub fn with_id(mut self, id: &str) -> ServiceRegistration {
        self.id = id.to_owned();
        self
    }

    /// Adds an upstream bound on a free port of 127.0.0.1.
    pub fn with_upstream(mut self, destination: &str) -> ServiceRegistration {
        self.upstreams.push(Upstream {
            destination: destination.to_owned(),
            local_bind_port: free_port().port(),
        });
        self
    }

    /// The local address of the upstream for `destination`.
    pub fn upstream_addr(&self, destination: &str) -> SocketAddr {
        let up = self
            .upstreams
            .iter()
            .find(|u| u.destination == destination)
            .unwrap_or_else(|| panic!("{} has no upstream {destination}", self.id));
        SocketAddr::from(([127, 0, 0, 1], up.local_bind_port))
    }

    pub fn sidecar_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sidecar_port))
    }

    /// The sidecar's service ID, as Consul names it.
    pub fn sidecar_id(&self) -> String {
        format!("{}-sidecar-proxy", self.id)
    }

    pub fn to_json(&self) -> Value {
        let upstreams: Vec<Value> = self
            .upstreams
            .iter()
            .map(|u| {
                json!({
                    "DestinationName": u.destination,
                    "LocalBindAddress": "127.0.0.1",
                    "LocalBindPort": u.local_bind_port,
                })
            })
            .collect();
        let mut service = json!({
            "ID": self.id,
            "Name": self.name,
            "Address": "127.0.0.1",
            "Port": self.port,
            "Connect": {"SidecarService": {
                "Address": "127.0.0.1",
                "Port": self.sidecar_port,
                "Proxy": {
                    "Config": {"bind_address": "127.0.0.1"},
                    "Upstreams": upstreams,
                },
            }},
        });
        for (key, value) in &self.proxy_config {
            service["Connect"]["SidecarService"]["Proxy"]["Config"][key] = value.clone();
        }
        if !self.meta.is_empty() {
            let meta: serde_json::Map<String, Value> = self
                .meta
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect();
            service["Meta"] = Value::Object(meta);
        }
        if !self.tags.is_empty() {
            service["Tags"] = json!(self.tags);
        }
        if !self.checks.is_empty() {
            service["Checks"] = Value::Array(self.checks.clone());
        }
        service
    }
}
