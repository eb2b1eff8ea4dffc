//! The discovery chain end to end: a `ferrule dev` agent holding `service-resolver`,
//! `service-splitter` and `service-router` entries (written through `/v1/config` as an
//! operator writes them to Consul), instances of the destinations each with its own
//! sidecar and a named backend, and a caller `web` whose sidecar follows the chain of
//! each upstream. Also the clients that tell which instance answered, the steady
//! request loop a chain change happens under, and the waits for a change to apply.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentOptions, DevAgent, ServiceRegistration};
use crate::backends::{NAME_HEADER, NamedHttp, NamedTcp};
use crate::consul::ConsulSidecar;
use crate::wait::free_port;

/// The caller.
pub const WEB: &str = "web";
/// Processes starting, first health checks passing, first request through.
pub const SETUP: Duration = Duration::from_secs(30);
/// The contract: a change made at the agent applies within this long.
pub const APPLIES_WITHIN: Duration = Duration::from_secs(2);
/// How long one request through the mesh may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The dev agent's datacenter.
pub const DC: &str = "dc1";

/// `service-defaults` making `service` speak HTTP: routers and splitters need it.
pub fn http_defaults(service: &str) -> Value {
    json!({"Kind": "service-defaults", "Name": service, "Protocol": "http"})
}

/// A `service-resolver` for `service` with one subset per version, selected by
/// `Service.Meta.version`, and an optional default subset.
pub fn subset_resolver(service: &str, default: Option<&str>, versions: &[&str]) -> Value {
    let subsets: serde_json::Map<String, Value> = versions
        .iter()
        .map(|v| {
            let filter = format!("Service.Meta.version == {v}");
            ((*v).to_owned(), json!({ "Filter": filter }))
        })
        .collect();
    let mut entry = json!({"Kind": "service-resolver", "Name": service, "Subsets": subsets});
    if let Some(default) = default {
        entry["DefaultSubset"] = json!(default);
    }
    entry
}

/// A `service-splitter` for `service`: `(weight, subset)` pairs.
pub fn subset_splitter(service: &str, splits: &[(f64, &str)]) -> Value {
    let splits: Vec<Value> = splits
        .iter()
        .map(|(weight, subset)| json!({"Weight": weight, "ServiceSubset": subset}))
        .collect();
    json!({"Kind": "service-splitter", "Name": service, "Splits": splits})
}

/// A chain target's ID as Consul names it: `[<subset>.]<service>.<ns>.<partition>.<dc>`.
pub fn target_id(subset: Option<&str>, service: &str) -> String {
    match subset {
        Some(subset) => format!("{subset}.{service}.default.default.{DC}"),
        None => format!("{service}.default.default.{DC}"),
    }
}

/// The local app behind an instance's sidecar.
pub enum App {
    Http(NamedHttp),
    Tcp(NamedTcp),
}

/// One registered instance: its registration, its app and its sidecar.
pub struct Instance {
    pub reg: ServiceRegistration,
    pub app: App,
    pub proxy: ConsulSidecar,
}

impl Instance {
    /// The HTTP app; panics for a TCP instance.
    pub fn http(&self) -> &NamedHttp {
        match &self.app {
            App::Http(app) => app,
            App::Tcp(_) => panic!("{} has a TCP app", self.reg.id),
        }
    }

    /// The TCP app; panics for an HTTP instance.
    pub fn tcp(&self) -> &NamedTcp {
        match &self.app {
            App::Tcp(app) => app,
            App::Http(_) => panic!("{} has an HTTP app", self.reg.id),
        }
    }
}

/// What to register: an instance `id` of `service`; its backend is named `id`.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    service: String,
    id: String,
    version: Option<String>,
    ttl_check: bool,
    http_check: bool,
    tcp: bool,
}

impl InstanceSpec {
    /// An instance whose app is a [`NamedHttp`].
    pub fn http(service: &str, id: &str) -> InstanceSpec {
        InstanceSpec {
            service: service.to_owned(),
            id: id.to_owned(),
            version: None,
            ttl_check: false,
            http_check: false,
            tcp: false,
        }
    }

    /// An instance whose app is a [`NamedTcp`].
    pub fn tcp(service: &str, id: &str) -> InstanceSpec {
        InstanceSpec {
            tcp: true,
            ..InstanceSpec::http(service, id)
        }
    }

    /// `Meta.version` of the instance (and so of its sidecar), also one of its tags.
    pub fn version(mut self, version: &str) -> InstanceSpec {
        self.version = Some(version.to_owned());
        self
    }

    /// A passing TTL check the test can turn critical (see
    /// [`ServiceRegistration::with_ttl_check`]).
    pub fn ttl_check(mut self) -> InstanceSpec {
        self.ttl_check = true;
        self
    }

    /// An HTTP check of the app (see [`ServiceRegistration::with_http_check`]): the
    /// instance turns critical when the test stops its app. HTTP apps only.
    pub fn http_check(mut self) -> InstanceSpec {
        self.http_check = true;
        self
    }
}

/// The caller and its sidecar.
struct Caller {
    reg: ServiceRegistration,
    proxy: ConsulSidecar,
}

/// The agent, the destinations' instances and the caller `web`.
pub struct ChainMesh {
    instances: Vec<Instance>,
    web: Option<Caller>,
    // Last: the sidecars stop before their agent.
    pub agent: DevAgent,
}

impl ChainMesh {
    /// A dev agent with nothing registered yet.
    pub async fn start() -> ChainMesh {
        ChainMesh {
            instances: Vec::new(),
            web: None,
            agent: DevAgent::start(AgentOptions::default()).await,
        }
    }

    /// Writes a config entry (`PUT /v1/config`); panics with the agent's answer.
    pub async fn write(&self, entry: &Value) {
        if let Err(e) = self.agent.put("/v1/config", entry).await {
            panic!("the agent refused the config entry {entry}: {e:#}");
        }
    }

    /// `service-defaults` with `Protocol: http` for each of `services`.
    pub async fn http_services(&self, services: &[&str]) {
        for service in services {
            self.write(&http_defaults(service)).await;
        }
    }

    /// Registers an instance, starts its app and its sidecar (until ready).
    pub async fn add(&mut self, spec: InstanceSpec) -> &Instance {
        let app = if spec.tcp {
            App::Tcp(NamedTcp::start(&spec.id).await)
        } else {
            App::Http(NamedHttp::start(&spec.id).await)
        };
        let port = match &app {
            App::Http(app) => app.addr().port(),
            App::Tcp(app) => app.addr().port(),
        };
        let mut reg = ServiceRegistration::new(&spec.service, port).with_id(&spec.id);
        if let Some(version) = &spec.version {
            reg = reg.with_meta("version", version).with_tag(version);
        }
        if spec.ttl_check {
            reg = reg.with_ttl_check();
        }
        if spec.http_check {
            assert!(!spec.tcp, "an HTTP check of a TCP app: {}", spec.id);
            reg = reg.with_http_check(&format!("http://127.0.0.1:{port}/health"));
        }
        let proxy = self.register_and_start(&mut reg).await;
        self.instances.push(Instance { reg, app, proxy });
        self.instances.last().expect("just pushed")
    }

    /// Waits until every instance added so far is passing, then registers `web` with
    /// an upstream to each of `upstreams` and starts its sidecar (until ready).
    pub async fn start_web(&mut self, upstreams: &[&str]) {
        self.wait_all_passing().await;
        let mut reg = ServiceRegistration::new(WEB, free_port().port());
        for upstream in upstreams {
            reg = reg.with_upstream(upstream);
        }
        let proxy = self.register_and_start(&mut reg).await;
        self.web = Some(Caller { reg, proxy });
    }

    /// Registers `reg` and starts its sidecar until ready. A port another process took
    /// between picking and binding (other tests on the host pick from the same range)
    /// gets the registration new ports and the sidecar another start.
    async fn register_and_start(&self, reg: &mut ServiceRegistration) -> ConsulSidecar {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            self.agent.register(reg).await;
            let mut proxy = ConsulSidecar::spawn(&self.agent, &reg.id);
            let error = match proxy.wait_ready().await {
                Ok(()) => return proxy,
                Err(e) => e,
            };
            if attempt == ATTEMPTS || !proxy.stderr().contains("Address already in use") {
                panic!("the sidecar for {} did not become ready: {error:#}", reg.id);
            }
            eprintln!(
                "the sidecar for {} lost a port race, retrying: {error:#}",
                reg.id
            );
            reg.sidecar_port = free_port().port();
            for upstream in &mut reg.upstreams {
                upstream.local_bind_port = free_port().port();
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// Waits until `/v1/health/connect/<service>?passing` lists the sidecar of every
    /// instance of every service added so far.
    pub async fn wait_all_passing(&self) {
        let mut by_service: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
        for instance in &self.instances {
            by_service
                .entry(&instance.reg.name)
                .or_default()
                .push(instance.reg.sidecar_port);
        }
        for (service, ports) in by_service {
            self.agent.wait_passing(service, &ports, SETUP).await;
        }
    }

    /// The instance registered as `id`.
    pub fn instance(&self, id: &str) -> &Instance {
        self.instances
            .iter()
            .find(|i| i.reg.id == id)
            .unwrap_or_else(|| panic!("no instance {id} in the mesh"))
    }

    fn caller(&self) -> &Caller {
        self.web
            .as_ref()
            .expect("web is not started: call start_web first")
    }

    /// web's local listener for `upstream`.
    pub fn upstream(&self, upstream: &str) -> SocketAddr {
        self.caller().reg.upstream_addr(upstream)
    }

    /// web's sidecar.
    pub fn web_proxy(&self) -> &ConsulSidecar {
        &self.caller().proxy
    }

    /// What the agent and web's sidecar hold, for a failure message: each upstream's
    /// compiled chain and health entries, and the sidecar's `/config`.
    pub async fn diagnose(&self) -> String {
        let mut out = String::new();
        let upstreams: Vec<String> = self.web.as_ref().map_or_else(Vec::new, |web| {
            web.reg
                .upstreams
                .iter()
                .map(|u| u.destination.clone())
                .collect()
        });
        for service in upstreams {
            for path in [
                format!("/v1/discovery-chain/{service}"),
                format!("/v1/health/connect/{service}?passing=1"),
            ] {
                let answer = match self.agent.get(&path).await {
                    Ok(a) => format!("{} {}", a.status, a.body),
                    Err(e) => format!("{e:#}"),
                };
                out.push_str(&format!("--- GET {path}: {answer}\n"));
            }
        }
        if let Some(web) = &self.web {
            let config = match web.proxy.admin().config().await {
                Ok(config) => config.to_string(),
                Err(e) => format!("{e:#}"),
            };
            out.push_str(&format!("--- web's sidecar /config: {config}\n"));
        }
        out
    }

    /// The value, or a panic naming `what` went wrong, with [`ChainMesh::diagnose`].
    pub async fn expect<T>(&self, result: anyhow::Result<T>, what: &str) -> T {
        match result {
            Ok(value) => value,
            Err(e) => panic!("{what}: {e:#}\n{}", self.diagnose().await),
        }
    }
}

/// An answer through the mesh: its status, which backend named itself, its body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// [`NAME_HEADER`], absent when the answer did not come from a backend.
    pub backend: Option<String>,
    pub body: String,
    pub elapsed: Duration,
}

impl Reply {
    /// The backend that answered 200, or an error describing the answer.
    pub fn landed(&self) -> anyhow::Result<String> {
        match (&self.backend, self.status) {
            (Some(name), 200) => Ok(name.clone()),
            _ => anyhow::bail!(
                "HTTP {} from {} after {:?}: {:?}",
                self.status,
                self.backend.as_deref().unwrap_or("no backend"),
                self.elapsed,
                self.body
            ),
        }
    }
}

/// One HTTP/1.1 `GET path` with `headers` on a new connection to `addr` (an upstream
/// listener of web's sidecar), bounded in time.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
    send(addr, "GET", path, headers).await
}

/// One HTTP/1.1 request without a body, as [`get`] with another method.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    let started = Instant::now();
    let what = format!("{method} {path} via {addr}");
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        exchange(addr, method, path, headers, started),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{what}: no answer within {REQUEST_TIMEOUT:?}"))?
    .with_context(|| what)
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    started: Instant,
) -> anyhow::Result<Reply> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new())?)
        .await?;
    let status = response.status().as_u16();
    let backend = response
        .headers()
        .get(NAME_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        backend,
        body: String::from_utf8_lossy(&body).into_owned(),
        elapsed: started.elapsed(),
    })
}

/// `GET path` and the backend that answered it with 200.
pub async fn who(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    get(addr, path, &[]).await?.landed()
}

/// A new TCP connection to `addr` (an L4 upstream listener): sends a line, returns the
/// name the [`NamedTcp`] at the other end answered with.
pub async fn tcp_who(addr: SocketAddr) -> anyhow::Result<String> {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(b"who\n").await?;
        let mut line = String::new();
        let n = BufReader::new(&mut tcp).read_line(&mut line).await?;
        anyhow::ensure!(n > 0, "the connection closed without an answer");
        Ok(line.trim_end().to_owned())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer via {addr} within {REQUEST_TIMEOUT:?}"))?
        .with_context(|| format!("TCP via {addr}"))
}

/// Where requests landed: a count per backend, and every failure.
#[derive(Debug, Default, Clone)]
pub struct Spread {
    pub landed: BTreeMap<String, usize>,
    pub failed: Vec<String>,
}

impl Spread {
    pub fn total(&self) -> usize {
        self.landed.values().sum::<usize>() + self.failed.len()
    }

    /// Requests that landed on `backend`.
    pub fn on(&self, backend: &str) -> usize {
        self.landed.get(backend).copied().unwrap_or(0)
    }

    /// The percentage of all requests that landed on `backend`.
    pub fn percent(&self, backend: &str) -> f64 {
        100.0 * self.on(backend) as f64 / self.total().max(1) as f64
    }

    fn record(&mut self, outcome: anyhow::Result<String>) {
        match outcome {
            Ok(name) => *self.landed.entry(name).or_insert(0) += 1,
            Err(e) => self.failed.push(format!("{e:#}")),
        }
    }
}

/// `n` GETs of `path` with `headers`, from `workers` concurrent clients, each on a new
/// connection: where they landed.
pub async fn spread_http(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
    workers: usize,
) -> Spread {
    let headers: Arc<Vec<(String, String)>> = Arc::new(
        headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    let mut tasks = JoinSet::new();
    for worker in 0..workers {
        let (path, headers) = (path.to_owned(), headers.clone());
        let count = n / workers + usize::from(worker < n % workers);
        tasks.spawn(async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut spread = Spread::default();
            for _ in 0..count {
                spread.record(async { get(addr, &path, &headers).await?.landed() }.await);
            }
            spread
        });
    }
    let mut total = Spread::default();
    while let Some(joined) = tasks.join_next().await {
        let part = joined.unwrap_or_else(|e| panic!("a client task failed: {e}"));
        for (name, count) in part.landed {
            *total.landed.entry(name).or_insert(0) += count;
        }
        total.failed.extend(part.failed);
    }
    total
}

/// `n` TCP connections through `addr`, one after the other: where they landed.
pub async fn spread_tcp(addr: SocketAddr, n: usize) -> Spread {
    let mut spread = Spread::default();
    for _ in 0..n {
        spread.record(tcp_who(addr).await);
    }
    spread
}

/// Runs `attempt` (a request, answering which backend it landed on) until `streak`
/// answers in a row come from `expected`, for at most `within`. Returns how long after
/// the start the streak began: the time the change took to apply.
pub async fn wait_streak<F, Fut>(
    what: &str,
    within: Duration,
    expected: &str,
    streak: usize,
    mut attempt: F,
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<String>>,
{
    let start = Instant::now();
    let deadline = start + within;
    let (mut run, mut run_start) = (0, start);
    let mut others: BTreeMap<String, usize> = BTreeMap::new();
    let (mut failed, mut last) = (0, String::from("no answer"));
    loop {
        let sent = Instant::now();
        match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(name)) if name == expected => {
                if run == 0 {
                    run_start = sent;
                }
                run += 1;
                if run >= streak {
                    return Ok(run_start - start);
                }
                continue;
            }
            Ok(Ok(name)) => {
                *others.entry(name.clone()).or_insert(0) += 1;
                last = format!("landed on {name}");
            }
            Ok(Err(e)) => {
                failed += 1;
                last = format!("{e:#}");
            }
            // The deadline passed during a request: `last` is still the last answer.
            Err(_) => {}
        }
        run = 0;
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not {streak} answers in a row from {expected} within {within:?} \
             (elsewhere: {others:?}; {failed} failed; the last: {last})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `attempt` until every one of `names` has answered at least once, for at most
/// `within`: proof that the caller knows all of those instances.
pub async fn wait_seen<F, Fut>(
    what: &str,
    within: Duration,
    names: &[&str],
    mut attempt: F,
) -> anyhow::Result<Spread>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<String>>,
{
    let deadline = Instant::now() + within;
    let mut spread = Spread::default();
    loop {
        if names.iter().all(|n| spread.on(n) > 0) {
            return Ok(spread);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not every one of {names:?} answered within {within:?}; so far {:?}, \
             failures {:?}",
            spread.landed,
            spread.failed.iter().rev().take(3).collect::<Vec<_>>()
        );
        match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(outcome) => {
                let failed = outcome.is_err();
                spread.record(outcome);
                if failed {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Err(_) => spread
                .failed
                .push("still running at the deadline".to_owned()),
        }
    }
}

/// One request of a [`RequestLoop`]: when it was sent, and the backend that answered
/// 200 (or what went wrong).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub sent: Instant,
    pub result: Result<String, String>,
}

/// Steady traffic: `GET path` every `pace` (or as soon as the previous answer came, if
/// later), each on a new connection, every outcome kept in order.
pub struct RequestLoop {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl RequestLoop {
    pub fn start(addr: SocketAddr, path: &str, pace: Duration) -> RequestLoop {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (outcomes, stop, path) = (outcomes.clone(), stop.clone(), path.to_owned());
            async move {
                while !stop.is_cancelled() {
                    let sent = Instant::now();
                    let result = match get(addr, &path, &[]).await {
                        Ok(reply) => reply.landed().map_err(|e| format!("{e:#}")),
                        Err(e) => Err(format!("{e:#}")),
                    };
                    outcomes.lock().push(Outcome { sent, result });
                    tokio::time::sleep_until(sent + pace).await;
                }
            }
        });
        RequestLoop {
            outcomes,
            stop,
            task,
        }
    }

    /// Every outcome so far.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().clone()
    }

    /// Waits until `done` holds of the outcomes so far, for at most `within`.
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[Outcome]) -> bool,
    ) -> anyhow::Result<()> {
        crate::wait::eventually(what, within, || async {
            let outcomes = self.outcomes();
            anyhow::ensure!(
                done(&outcomes),
                "{} requests so far, the last: {:?}",
                outcomes.len(),
                outcomes.last().map(|o| &o.result)
            );
            Ok(())
        })
        .await
    }

    /// Stops after the request in flight; every outcome.
    pub async fn stop(mut self) -> Vec<Outcome> {
        self.stop.cancel();
        let _ = (&mut self.task).await;
        self.outcomes()
    }
}

impl Drop for RequestLoop {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How steady traffic moved to other backends after a change made at `from`.
#[derive(Debug, Clone, Default)]
pub struct Switch {
    /// Requests sent at or after the change.
    pub requests: usize,
    /// When the first request that landed on a new backend was sent.
    pub first: Option<Duration>,
    /// When the first request of the final run on the new backends was sent: from then
    /// on, every request landed there. `None` if the last request did not.
    pub settled: Option<Duration>,
    /// Every request since the change that failed, with when it was sent.
    pub failures: Vec<String>,
    /// Requests sent once the change should have applied.
    pub after_deadline: usize,
    /// Of those, the ones that did not land on a new backend.
    pub late: Vec<String>,
}

impl Switch {
    /// Reads `outcomes` after a change made at `from` that should send everything to
    /// `to` (any of those backends) within `within`.
    pub fn of(outcomes: &[Outcome], from: Instant, to: &[&str], within: Duration) -> Switch {
        let mut switch = Switch::default();
        let mut run_start = None;
        for outcome in outcomes.iter().filter(|o| o.sent >= from) {
            let at = outcome.sent - from;
            switch.requests += 1;
            let landed = outcome
                .result
                .as_deref()
                .is_ok_and(|name| to.contains(&name));
            if landed {
                switch.first.get_or_insert(at);
                run_start.get_or_insert(at);
            } else {
                run_start = None;
            }
            if let Err(e) = &outcome.result {
                switch.failures.push(format!("sent at +{at:?}: {e}"));
            }
            if at >= within {
                switch.after_deadline += 1;
                if !landed {
                    switch
                        .late
                        .push(format!("sent at +{at:?}: {:?}", outcome.result));
                }
            }
        }
        switch.settled = run_start;
        switch
    }
}
