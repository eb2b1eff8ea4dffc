//! `ferrule demo`: the whole mesh in one process, narrated.
//!
//! A dev agent, an `api` app, two sidecars found through the agent exactly as
//! `ferrule proxy --sidecar-for` finds them, and a `web` client calling `api` through
//! its upstream port. Everything the demo changes it changes through the agent's HTTP
//! API, as a user would with `consul` or `curl`. Everything binds 127.0.0.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use ferrule_control::consul::{
    AgentAddr, AgentClient, AgentClientConfig, ConsulConfig, ConsulSource, ProxySelector,
};
use ferrule_dev::{DevAgent, DevAgentConfig};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const TIMEOUT: Duration = Duration::from_secs(10);
const GREETING: &str = "hello from api";
/// The demo stops its callers before its sidecars: nothing is left to drain for long.
const DEMO_DRAIN: Duration = Duration::from_secs(2);

/// Runs the demo until `duration` has passed (or forever) or Ctrl-C.
pub async fn run(duration: Option<Duration>, metrics: PrometheusHandle) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let sidecars = TaskTracker::new();
    let traffic = Traffic::default();
    let agent = DevAgent::start(DevAgentConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        check_interval: Duration::from_secs(2),
        ..DevAgentConfig::default()
    })
    .await
    .context("starting the dev agent")?;
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = demo(&agent, metrics, &sidecars, &traffic, stop.clone()) => result,
        () = deadline => Ok(()),
        () = crate::shutdown_signal() => Ok(()),
    };
    // In order: the callers, so no call is cut mid-way; the sidecars, so none of them
    // sees its agent go away; then the agent.
    traffic.stop.cancel();
    traffic.tasks.close();
    traffic.tasks.wait().await;
    stop.cancel();
    sidecars.close();
    sidecars.wait().await;
    if let Err(e) = agent.shutdown().await {
        eprintln!("ferrule demo: stopping the dev agent: {e}");
    }
    println!("\nferrule demo: stopped.");
    result
}

async fn demo(
    agent: &DevAgent,
    metrics: PrometheusHandle,
    sidecars: &TaskTracker,
    traffic: &Traffic,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    println!("ferrule demo: a service mesh in one process\n");
    let scene = Scene::set_up(agent, &metrics, sidecars, &stop).await?;
    scene.describe(agent);
    scene.calls_flow().await?;
    scene.allow_again().await?;
    let counts = scene.rotate_root(traffic).await?;
    println!("\nTraffic keeps flowing; a line every 5 s (Ctrl-C to stop).");
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tick.tick().await;
        let (ok, failed) = counts.counts();
        println!("    requests so far: {ok} ok, {failed} failed");
    }
}

/// What the demo set up: the agent's client, the `api` app, both sidecars' admin
/// listeners and web's caller on its upstream port.
struct Scene {
    consul: AgentClient,
    trust_domain: String,
    api_app: SocketAddr,
    upstream_port: u16,
    api_admin: SocketAddr,
    web_admin: SocketAddr,
    client: Client,
}

impl Scene {
    /// Registers both services, allows web => api, starts both sidecars and waits
    /// until web's calls reach api.
    async fn set_up(
        agent: &DevAgent,
        metrics: &PrometheusHandle,
        sidecars: &TaskTracker,
        stop: &CancellationToken,
    ) -> anyhow::Result<Scene> {
        let consul = AgentClient::new(
            &AgentClientConfig::new(agent.url().parse::<AgentAddr>()?),
            crate::tls::provider(),
        )?;
        let api_app = start_api_app(stop.clone()).await?;
        let upstream_port = free_port().await?;
        register(&consul, api_app, upstream_port).await?;
        set_intention(&consul, "allow").await?;

        let api_admin = start_sidecar(agent, "api", metrics, sidecars, stop).await?;
        let web_admin = start_sidecar(agent, "web", metrics, sidecars, stop).await?;
        let client = Client::new(SocketAddr::from(([127, 0, 0, 1], upstream_port)));
        wait_ready(&client, &[api_admin, web_admin]).await?;
        // web's sidecar learns of api's only once the agent's health check has seen it.
        client.eventually_ok(TIMEOUT * 3).await;
        Ok(Scene {
            consul,
            trust_domain: agent.trust_domain().to_owned(),
            api_app,
            upstream_port,
            api_admin,
            web_admin,
            client,
        })
    }

    fn describe(&self, agent: &DevAgent) {
        let Scene {
            api_app,
            upstream_port,
            api_admin,
            web_admin,
            ..
        } = self;
        println!(
            "  dev agent       {} (trust domain {})",
            agent.url(),
            agent.trust_domain()
        );
        println!("  api app         {api_app}, behind api's sidecar (mTLS)");
        println!("  web calls       127.0.0.1:{upstream_port}, web's sidecar upstream \"api\"");
        println!(
            "  metrics         http://{api_admin}/metrics  (both sidecars run in this process and share it)"
        );
        println!(
            "  api's sidecar   http://{api_admin}/config   web's sidecar http://{web_admin}/config\n"
        );
    }

    /// [1] and [2]: calls flow over mTLS; a deny closes the open connection and
    /// refuses new ones.
    async fn calls_flow(&self) -> anyhow::Result<()> {
        let ok = self.client.burst(10).await;
        println!("[1] web calls api over mutual TLS: {ok} of 10 requests answered {GREETING:?}");

        let mut live = self.client.keep_alive().await?;
        let live_ok = live.call().await.is_ok();
        println!("    a keep-alive connection is open too (first request ok: {live_ok})");

        set_intention(&self.consul, "deny").await?;
        let changed = Instant::now();
        println!("\n[2] intention web => api set to deny (PUT /v1/config)");
        match live.until_closed(TIMEOUT).await {
            Some(()) => println!(
                "    the open connection was closed by api's sidecar {} ms after the change",
                changed.elapsed().as_millis()
            ),
            None => println!("    unexpected: the open connection is still up"),
        }
        let refused = 10 - self.client.burst(10).await;
        println!("    new connections: {refused} of 10 refused");
        Ok(())
    }

    /// [3]: back to allow; calls flow again.
    async fn allow_again(&self) -> anyhow::Result<()> {
        set_intention(&self.consul, "allow").await?;
        println!("\n[3] intention back to allow");
        let ok = self.client.eventually_ok(TIMEOUT).await;
        println!(
            "    calls flow again after {} ms: {} of 10 answered",
            ok.as_millis(),
            self.client.burst(10).await
        );
        Ok(())
    }

    /// [4]: the CA root rotates under steady traffic; every leaf is re-issued and no
    /// request fails. Returns the background traffic's counts.
    async fn rotate_root(&self, traffic: &Traffic) -> anyhow::Result<Counts> {
        let before = leaf_serial(&self.client, self.api_admin).await;
        let counts = self.client.background(traffic);
        // New key material is what rotates the root, as with Consul's built-in CA.
        let body = ferrule_dev::ca_rotation_body(&self.trust_domain)?;
        self.consul
            .put_json("/v1/connect/ca/configuration", &[], &body, TIMEOUT)
            .await
            .context("rotating the CA root")?;
        println!(
            "\n[4] CA root rotated (PUT /v1/connect/ca/configuration): every leaf is re-issued"
        );
        let rotated = Instant::now();
        let mut after = before.clone();
        while after == before && rotated.elapsed() < TIMEOUT * 3 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            after = leaf_serial(&self.client, self.api_admin).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (ok, failed) = counts.counts();
        println!(
            "    api's sidecar leaf {} -> {} after {} ms",
            before.as_deref().unwrap_or("?"),
            after.as_deref().unwrap_or("?"),
            rotated.elapsed().as_millis()
        );
        println!("    requests meanwhile: {ok} ok, {failed} failed");
        Ok(counts)
    }
}

/// The demo's background callers, stopped before anything else.
#[derive(Default)]
struct Traffic {
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// The `api` application: plain HTTP on loopback, answering every request.
async fn start_api_app(stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(_) => continue,
                },
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(GREETING))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Registers both services with sidecars, as `consul services register` would.
async fn register(
    consul: &AgentClient,
    api_app: SocketAddr,
    upstream_port: u16,
) -> anyhow::Result<()> {
    let loopback = json!({"bind_address": "127.0.0.1"});
    let api = json!({
        "ID": "api", "Name": "api", "Address": "127.0.0.1", "Port": api_app.port(),
        "Connect": {"SidecarService": {"Address": "127.0.0.1", "Proxy": {"Config": loopback}}}
    });
    let web = json!({
        "ID": "web", "Name": "web", "Address": "127.0.0.1", "Port": 1,
        "Connect": {"SidecarService": {"Address": "127.0.0.1", "Proxy": {
            "Config": loopback,
            "Upstreams": [{"DestinationName": "api", "LocalBindAddress": "127.0.0.1", "LocalBindPort": upstream_port}]
        }}}
    });
    for service in [api, web] {
        consul
            .put_json("/v1/agent/service/register", &[], &service, TIMEOUT)
            .await
            .context("registering a service")?;
    }
    Ok(())
}

async fn set_intention(consul: &AgentClient, action: &str) -> anyhow::Result<()> {
    let entry = json!({
        "Kind": "service-intentions", "Name": "api",
        "Sources": [{"Name": "web", "Action": action}]
    });
    consul
        .put_json("/v1/config", &[], &entry, TIMEOUT)
        .await
        .context("writing the intention")?;
    Ok(())
}

/// One sidecar in this process, found through the agent like `--sidecar-for`.
async fn start_sidecar(
    agent: &DevAgent,
    service: &str,
    metrics: &PrometheusHandle,
    sidecars: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let provider = crate::tls::provider();
    let config = ConsulConfig::new(
        AgentClientConfig::new(agent.url().parse::<AgentAddr>()?),
        ProxySelector::SidecarFor(service.to_owned()),
    );
    let snapshots = ConsulSource::new(config, provider.clone())?.spawn_until(stop.child_token());
    let admin = TcpListener::bind(("127.0.0.1", 0)).await?;
    let admin_addr = admin.local_addr()?;
    let metrics = metrics.clone();
    let stop = stop.clone();
    sidecars.spawn(async move {
        let shutdown = async move { stop.cancelled().await };
        if let Err(e) =
            crate::serve(admin, snapshots, metrics, provider, shutdown, DEMO_DRAIN).await
        {
            eprintln!("ferrule demo: a sidecar stopped: {e:#}");
        }
    });
    Ok(admin_addr)
}

async fn wait_ready(client: &Client, admins: &[SocketAddr]) -> anyhow::Result<()> {
    let started = Instant::now();
    for admin in admins {
        while client.get_status(*admin, "/ready").await != Some(200) {
            if started.elapsed() > TIMEOUT * 3 {
                bail!("the sidecars did not become ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn leaf_serial(client: &Client, admin: SocketAddr) -> Option<String> {
    let body = client.get_body(admin, "/config").await?;
    let config: serde_json::Value = serde_json::from_slice(&body).ok()?;
    config["leaf"]["serial"].as_str().map(str::to_owned)
}

async fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))
        .await?
        .local_addr()?
        .port())
}

/// The `web` application: plain HTTP to its sidecar's upstream port.
struct Client {
    upstream: SocketAddr,
}

impl Client {
    fn new(upstream: SocketAddr) -> Self {
        Client { upstream }
    }

    /// One request on a new connection: a fresh L4 decision every time.
    async fn call(&self) -> bool {
        let attempt = async {
            let mut conn = KeepAlive::open(self.upstream).await.ok()?;
            conn.call().await.ok()
        };
        matches!(tokio::time::timeout(TIMEOUT, attempt).await, Ok(Some(())))
    }

    async fn burst(&self, n: usize) -> usize {
        let mut ok = 0;
        for _ in 0..n {
            ok += usize::from(self.call().await);
        }
        ok
    }

    async fn eventually_ok(&self, within: Duration) -> Duration {
        let started = Instant::now();
        while !self.call().await && started.elapsed() < within {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    }

    async fn keep_alive(&self) -> anyhow::Result<KeepAlive> {
        KeepAlive::open(self.upstream).await
    }

    /// Calls in a loop until `traffic.stop`, counting outcomes.
    fn background(&self, traffic: &Traffic) -> Counts {
        let stop = traffic.stop.clone();
        let counts = Counts::default();
        let (ok, failed) = (counts.ok.clone(), counts.failed.clone());
        let client = Client::new(self.upstream);
        traffic.tasks.spawn(async move {
            while !stop.is_cancelled() {
                let counter = if client.call().await { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        counts
    }

    async fn get_status(&self, addr: SocketAddr, path: &str) -> Option<u16> {
        let mut conn = KeepAlive::open(addr).await.ok()?;
        conn.get(path).await.ok().map(|(status, _)| status)
    }

    async fn get_body(&self, addr: SocketAddr, path: &str) -> Option<Bytes> {
        let mut conn = KeepAlive::open(addr).await.ok()?;
        conn.get(path).await.ok().map(|(_, body)| body)
    }
}

#[derive(Default, Clone)]
struct Counts {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Counts {
    fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// One HTTP/1.1 connection, kept open between requests.
struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl KeepAlive {
    async fn open(addr: SocketAddr) -> anyhow::Result<KeepAlive> {
        let tcp = TcpStream::connect(addr).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(KeepAlive { sender })
    }

    async fn get(&mut self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        let req = Request::get(path)
            .header(hyper::header::HOST, "localhost")
            .body(Empty::new())?;
        let resp = tokio::time::timeout(TIMEOUT, self.sender.send_request(req)).await??;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// A request to `api` that must come back with its greeting.
    async fn call(&mut self) -> anyhow::Result<()> {
        let (status, body) = self.get("/").await?;
        if status != 200 || body != GREETING.as_bytes() {
            bail!("answer {status}");
        }
        Ok(())
    }

    /// Keeps calling on this connection until it fails; `None` if it outlives `within`.
    async fn until_closed(&mut self, within: Duration) -> Option<()> {
        let started = Instant::now();
        while started.elapsed() < within {
            if self.call().await.is_err() {
                return Some(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}
