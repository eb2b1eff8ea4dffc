//! The embedded development agent (`ferrule dev`, like `consul agent -dev`): the part of
//! the Consul agent HTTP API a mesh needs, served from memory with the same wire types
//! the client parses (`ferrule_control::api`), so a proxy cannot tell it from a real agent.
//!
//! It is for trying ferrule and for tests; production uses a real Consul cluster. One
//! node per datacenter, ACLs off, Community Edition behaviour; several dev agents
//! joined over the WAN make several datacenters (`wan`). Blocking queries have real
//! index semantics: one raft-like index bumped by every write, each resource answering
//! with its own index. With a data dir a restart keeps the CA (same trust domain and
//! root), the registrations, the intentions and the checks' last statuses, but starts
//! the indexes low again: what a restarted Consul agent looks like to its proxies.
//!
//! What it emulates, and how, is described in `docs/consul-semantics.md#dev-agent`.
//!
//! Modules:
//! - `state`: the whole state in memory and its one lock;
//! - `blocking`: blocking queries, index and hash waits;
//! - `http`: routing and Consul's HTTP conventions (headers, errors, refusals);
//! - `services`: registration, deregistration, the agent and health views;
//! - `checks`: health checks that really run (TCP, HTTP, TTL, alias);
//! - `defaults`: `service-defaults` and `proxy-defaults`, merged into sidecars;
//! - `filter`: `?filter=` expressions on list answers;
//! - `catalog`: the catalog reads (services, nodes, connect-capable instances);
//! - `intentions`: `service-intentions` config entries, the intentions API and authorize;
//! - `ca`: the development certificate authority, a root and the leaves it signs (also
//!   used by `cargo xtask certs` and the tests);
//! - `connect_ca`: the CA endpoints: roots, leaves, renewal, rotation, CA configuration;
//! - `persist`: the data dir's state file;
//! - `wan`: several datacenters: joining, `?dc=` forwarding, replication from the
//!   primary, a secondary's CA;
//! - `query`: prepared queries;
//! - `gateway`: mesh gateway registrations;
//! - `workload`: the SPIFFE Workload API on unix sockets, for proxies that take their
//!   identity from SPIFFE;
//! - `authority`: lets the Workload API accept any `:authority` (gRPC C-core and Java
//!   send the socket path);
//! - `tests`: the agent seen from outside over HTTP, one file per topic.
//!
//! Durations (`wait`, check intervals and TTLs, the leaf TTL) are Go durations read and
//! written by `ferrule_control::duration`, the same code as the proxy's flags.

mod authority;
mod blocking;
pub mod ca;
mod catalog;
mod chain;
mod checks;
mod connect_ca;
mod defaults;
mod filter;
mod gateway;
mod http;
mod intentions;
mod persist;
mod query;
mod selectors;
mod services;
mod state;
mod wan;
pub mod workload;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::ca::{CaError, DevCa};
use ferrule_control::api::health::{HealthCheck, Node, PASSING};
use ferrule_control::intentions::Action;

use self::state::{NodeInfo, Shared, State};
use self::workload::{Federation, WorkloadApi, WorkloadSocket};

/// The file names `cargo xtask certs` uses, so a data dir and a certs dir are alike.
const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";

/// How to run a dev agent.
#[derive(Debug, Clone)]
pub struct DevAgentConfig {
    /// Where [`DevAgent::start`] and [`run`] listen (`--addr`).
    pub addr: SocketAddr,
    /// `--datacenter`.
    pub datacenter: String,
    /// `--primary-datacenter`: the datacenter whose CA signs every other datacenter's
    /// intermediate and whose config entries and intentions every datacenter replicates.
    /// `None` (or our own name): this datacenter is the primary.
    pub primary_datacenter: Option<String>,
    /// `--join-wan`: the HTTP address of the primary datacenter's agent; required in a
    /// secondary datacenter (`docs/consul-semantics.md#datacenters`).
    pub join_wan: Option<SocketAddr>,
    pub node_name: String,
    /// TTL of the service leaves (`--leaf-ttl`). Consul's minimum is an hour; shorter
    /// ones are allowed for tests.
    pub leaf_ttl: Duration,
    /// Interval of the TCP check given to every sidecar (Consul: 10 s).
    pub check_interval: Duration,
    /// `--default-intention-policy`: unset answers as a `consul agent -dev` with ACLs
    /// off does (allow).
    pub default_intention_policy: Option<Action>,
    /// `--data-dir`: keeps the CA (`ca.pem`, `ca-key.pem`) and the state (`state.json`:
    /// registrations, intentions, check statuses) across restarts.
    pub data_dir: Option<PathBuf>,
    /// Where sidecar ports are allocated (Consul: 21000–21255).
    pub sidecar_ports: RangeInclusive<u16>,
    /// `--workload-api-socket`: the SPIFFE Workload API, one unix socket per workload.
    pub workload_api: Vec<WorkloadSocket>,
    /// `--federate-with`: other trust domains' bundles, sent on the Workload API.
    pub federate_with: Vec<Federation>,
}

impl Default for DevAgentConfig {
    fn default() -> Self {
        DevAgentConfig {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 8500)),
            datacenter: "dc1".to_owned(),
            primary_datacenter: None,
            join_wan: None,
            node_name: "ferrule-dev".to_owned(),
            leaf_ttl: Duration::from_secs(72 * 3600),
            check_interval: Duration::from_secs(10),
            default_intention_policy: None,
            data_dir: None,
            sidecar_ports: 21000..=21255,
            workload_api: Vec::new(),
            federate_with: Vec::new(),
        }
    }
}

impl DevAgentConfig {
    fn validate(&self) -> Result<(), DevError> {
        let bad = |what: &str| Err(DevError::Config(what.to_owned()));
        if self.datacenter.is_empty() || self.datacenter.contains('/') {
            return bad("the datacenter must be a non-empty name");
        }
        self.validate_wan()?;
        if self.node_name.is_empty() {
            return bad("the node name must not be empty");
        }
        if self.leaf_ttl < Duration::from_secs(1) || self.leaf_ttl > connect_ca::MAX_LEAF_TTL {
            return bad("the leaf TTL must be from 1s to 8760h");
        }
        if self.check_interval.is_zero() {
            return bad("the check interval must be positive");
        }
        if self.sidecar_ports.is_empty() || *self.sidecar_ports.start() == 0 {
            return bad("the sidecar port range must be a non-empty range of ports above 0");
        }
        let mut paths = std::collections::HashSet::new();
        for socket in &self.workload_api {
            if !paths.insert(&socket.path) {
                return bad(&format!(
                    "--workload-api-socket {} is given twice",
                    socket.path.display()
                ));
            }
        }
        if !self.federate_with.is_empty() && self.workload_api.is_empty() {
            return bad("--federate-with needs a --workload-api-socket to send the bundles on");
        }
        Ok(())
    }

    /// The primary datacenter: `--primary-datacenter`, else this one.
    pub fn primary(&self) -> &str {
        self.primary_datacenter
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or(&self.datacenter)
    }

    /// Whether this agent's datacenter is a secondary one.
    pub fn is_secondary(&self) -> bool {
        self.primary() != self.datacenter
    }

    fn validate_wan(&self) -> Result<(), DevError> {
        let bad = |what: &str| Err(DevError::Config(what.to_owned()));
        if self.primary().contains('/') {
            return bad("the primary datacenter must be a datacenter name");
        }
        match (self.is_secondary(), self.join_wan) {
            (true, None) => bad(&format!(
                "--primary-datacenter {} is another datacenter: --join-wan must give its agent's address",
                self.primary()
            )),
            (false, Some(_)) => bad(
                "--join-wan joins a secondary datacenter to its primary: give --primary-datacenter too",
            ),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("binding the dev agent to {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("the dev agent's listener: {0}")]
    Listener(io::Error),
    #[error("dev agent data dir {path}: {reason}")]
    DataDir { path: PathBuf, reason: String },
    #[error("dev agent CA: {0}")]
    Ca(#[from] CaError),
    #[error("dev agent config: {0}")]
    Config(String),
    #[error("dev agent Workload API socket {path}: {source}")]
    WorkloadApi { path: PathBuf, source: io::Error },
    #[error("the dev agent stopped abnormally: {0}")]
    Task(String),
}

/// A `PUT /v1/connect/ca/configuration` body that rotates the CA of `trust_domain`
/// (`<cluster-id>.consul`) to a new root: new key material, which is what makes Consul's
/// built-in CA rotate (`LeafCertTTL` and other settings alone keep the root).
pub fn ca_rotation_body(trust_domain: &str) -> Result<serde_json::Value, CaError> {
    let cluster_id = trust_domain.strip_suffix(".consul").unwrap_or(trust_domain);
    let root = DevCa::generate(Some(cluster_id))?;
    Ok(serde_json::json!({
        "Provider": "consul",
        "Config": { "PrivateKey": root.key_pem(), "RootCert": root.cert_pem() },
    }))
}

/// Binds `config.addr` and serves until `shutdown` completes: what `ferrule dev` runs.
pub async fn run(
    config: DevAgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DevError> {
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| DevError::Bind {
            addr: config.addr,
            source,
        })?;
    serve_until(listener, config, shutdown).await
}

/// Serves the agent API on `listener` until the process ends.
pub async fn serve(listener: TcpListener, config: DevAgentConfig) -> Result<(), DevError> {
    serve_until(listener, config, std::future::pending()).await
}

/// Serves the agent API on `listener` until `shutdown` completes; then open connections
/// are closed, blocked queries included.
pub async fn serve_until(
    listener: TcpListener,
    config: DevAgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DevError> {
    let shared = Arc::new(prepare(&listener, config)?);
    let workload = WorkloadApi::bind(&shared.config.workload_api, &shared.config.federate_with)?;
    accept_loop(listener, shared, workload, shutdown).await;
    Ok(())
}

/// A dev agent running in this process, for tests and `ferrule demo`. Dropping it stops
/// the agent; [`DevAgent::shutdown`] also waits until the port is free again.
pub struct DevAgent {
    addr: SocketAddr,
    trust_domain: String,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl DevAgent {
    /// Binds `config.addr` (port 0 picks a free one) and starts serving.
    pub async fn start(config: DevAgentConfig) -> Result<DevAgent, DevError> {
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| DevError::Bind {
                addr: config.addr,
                source,
            })?;
        DevAgent::start_on(listener, config)
    }

    /// Starts serving on an already bound listener. Must be called within a Tokio
    /// runtime.
    pub fn start_on(listener: TcpListener, config: DevAgentConfig) -> Result<DevAgent, DevError> {
        let addr = listener.local_addr().map_err(DevError::Listener)?;
        let shared = Arc::new(prepare(&listener, config)?);
        let workload =
            WorkloadApi::bind(&shared.config.workload_api, &shared.config.federate_with)?;
        let trust_domain = shared.with(|state| state.ca.trust_domain());
        let task = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&shared),
            workload,
            std::future::pending(),
        ));
        Ok(DevAgent {
            addr,
            trust_domain,
            shared,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, for `--consul-addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `<cluster-uuid>.consul`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Stops the agent and waits until its listener is closed.
    pub async fn shutdown(mut self) -> Result<(), DevError> {
        self.shared.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await.map_err(|e| DevError::Task(e.to_string())),
            None => Ok(()),
        }
    }
}

impl Drop for DevAgent {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

/// Everything that can fail before the first request: the config, the CA, the state.
fn prepare(listener: &TcpListener, config: DevAgentConfig) -> Result<Shared, DevError> {
    config.validate()?;
    let local = listener.local_addr().map_err(DevError::Listener)?;
    // A secondary's CA is an intermediate the primary signs once joined (`wan::ca`).
    let ca = match &config.data_dir {
        _ if config.is_secondary() => None,
        Some(dir) => Some(load_or_create_ca(dir)?),
        None => Some(DevCa::generate(None)?),
    };
    // Sidecars registered without an address are dialed at the node's address: the one
    // we listen on, unless that is a wildcard.
    let node_address = match local.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    }
    .to_string();
    // Index 1: the node joined; 2: the CA was initialised. A restarted agent starts
    // here again, far below where the last run left off.
    let node = node_info(&config, &node_address, 1);
    let ca_state = match ca {
        Some(ca) => connect_ca::CaState::new(ca, &config.datacenter, config.leaf_ttl, 2),
        None => connect_ca::CaState::secondary(&config.datacenter, config.leaf_ttl, 2),
    };
    let shutdown = CancellationToken::new();
    let state = State::new(node, ca_state, 2, shutdown.clone());
    tracing::info!(
        addr = %local,
        datacenter = %config.datacenter,
        primary_datacenter = %config.primary(),
        trust_domain = %state.ca.trust_domain(),
        "dev agent: serving the Consul agent API (for trying ferrule and tests; production uses a real Consul cluster)"
    );
    let wan = wan::Wan::new(&config, local);
    Ok(Shared::new(config, wan, state, shutdown))
}

fn node_info(config: &DevAgentConfig, address: &str, index: u64) -> NodeInfo {
    let tagged: BTreeMap<String, String> = ["lan", "lan_ipv4", "wan", "wan_ipv4"]
        .into_iter()
        .map(|k| (k.to_owned(), address.to_owned()))
        .collect();
    let meta: BTreeMap<String, String> = [
        ("consul-network-segment", ""),
        ("consul-version", http::VERSION),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let node = Node {
        id: random_uuid(),
        node: config.node_name.clone(),
        address: address.to_owned(),
        datacenter: config.datacenter.clone(),
        tagged_addresses: tagged,
        meta,
        create_index: index,
        modify_index: index,
        ..Node::default()
    };
    let serf_check = HealthCheck {
        node: config.node_name.clone(),
        check_id: "serfHealth".to_owned(),
        name: "Serf Health Status".to_owned(),
        status: PASSING.to_owned(),
        output: "Agent alive and reachable".to_owned(),
        create_index: index,
        modify_index: index,
        ..HealthCheck::default()
    };
    NodeInfo { node, serf_check }
}

/// A version-4 UUID for the node ID; it only needs to be unique, not secret.
fn random_uuid() -> String {
    let mut b: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex =
        |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "{}-{}-{}-{}-{}",
        hex(0..4),
        hex(4..6),
        hex(6..8),
        hex(8..10),
        hex(10..16)
    )
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    workload: WorkloadApi,
    shutdown: impl Future<Output = ()>,
) {
    let saver = restore_and_keep_saved(&shared).await;
    let maintenance = tokio::spawn(maintain_ca(Arc::clone(&shared)));
    let federation = wan::spawn(&shared);
    // Stops by itself once `shared.shutdown` is cancelled, and removes its sockets.
    let workload = tokio::spawn(workload.serve(Arc::clone(&shared)));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                Err(e) => {
                    // Per-connection failures and descriptor exhaustion pass; keep
                    // serving the others.
                    tracing::warn!(error = %e, "dev agent: accept failed");
                    sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
            () = shared.shutdown.cancelled() => break,
        }
    }
    shared.shutdown.cancel();
    drop(listener);
    connections.shutdown().await;
    maintenance.abort();
    for task in federation {
        task.abort();
    }
    // Graceful, but a client that keeps its connection open must not hold the agent up.
    if tokio::time::timeout(Duration::from_secs(2), workload)
        .await
        .is_err()
    {
        tracing::debug!("dev agent: Workload API connections still open at shutdown");
    }
    // The last save is done before the agent counts as stopped.
    if let Some(saver) = saver {
        let _ = saver.await;
    }
}

/// With a data dir, restores the state kept there and starts the task that keeps it
/// saved. Called before the first accept: no client ever sees a half-restored agent.
async fn restore_and_keep_saved(shared: &Arc<Shared>) -> Option<JoinHandle<()>> {
    let dir = shared.config.data_dir.clone()?;
    persist::restore(shared, &dir).await;
    Some(tokio::spawn(persist::keep_saved(Arc::clone(shared), dir)))
}

/// Serves the agent API on one accepted connection until the client closes it.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let service = service_fn(move |request| http::handle(Arc::clone(&shared), request));
    // The timer enables hyper's header read timeout, so a client that never finishes its
    // request headers is let go.
    if let Err(e) = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "dev agent: connection ended");
    }
}

/// Renews leaves and prunes rotated-out roots when they are due, and re-plans after
/// every write (a new leaf or a rotation changes the schedule).
async fn maintain_ca(shared: Arc<Shared>) {
    let mut changes = shared.subscribe();
    loop {
        changes.borrow_and_update();
        let next = shared.with(|state| state.ca_maintenance());
        let due = async {
            match next {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = due => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}

/// Loads the CA kept in `dir`, or makes one and keeps it there.
fn load_or_create_ca(dir: &Path) -> Result<DevCa, DevError> {
    let fail = |reason: String| DevError::DataDir {
        path: dir.to_owned(),
        reason,
    };
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let read = |p: &Path| {
                std::fs::read_to_string(p)
                    .map_err(|e| fail(format!("reading {}: {e}", p.display())))
            };
            Ok(DevCa::from_pem(&read(&cert_path)?, &read(&key_path)?)?)
        }
        (false, false) => {
            let ca = DevCa::generate(None)?;
            persist_ca(dir, &ca).map_err(|e| fail(e.to_string()))?;
            Ok(ca)
        }
        (has_cert, _) => Err(fail(format!(
            "{} exists but {} does not; restore it or remove both",
            if has_cert { CA_CERT_FILE } else { CA_KEY_FILE },
            if has_cert { CA_KEY_FILE } else { CA_CERT_FILE },
        ))),
    }
}

/// Writes the active CA to `dir` (the key readable by its owner only), each file
/// replaced whole so a crash never leaves half a key.
fn persist_ca(dir: &Path, ca: &DevCa) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_replace(&dir.join(CA_CERT_FILE), ca.cert_pem(), false)?;
    write_replace(&dir.join(CA_KEY_FILE), ca.key_pem(), true)
}

fn write_replace(path: &Path, contents: &str, private: bool) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("pem.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
