//! The `ferrule` command line. Exit codes: 0 clean shutdown, 1 runtime failure,
//! 2 bad flags or bad config.

mod certs;
mod gateway_command;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ferrule::logging::{self, Format as LogFormat};
use ferrule_control::consul::{
    AgentAddr, AgentClientConfig, ConsulConfig, ConsulSource, ProxySelector,
};
use ferrule_control::duration;
use ferrule_control::file::{ConfigError, FileSource, StaticConfig, TracingTable};
use ferrule_control::intentions::Action;
use ferrule_control::model::Snapshot;
use ferrule_control::publish::Source;
use ferrule_control::workload::{Fatal, WorkloadSource};
use ferrule_dev::DevAgentConfig;
use ferrule_dev::workload::{Federation, WorkloadSocket};
use rustls::crypto::CryptoProvider;
use tokio::sync::watch;

/// jemalloc, whose background threads (switched on first thing in `main`) return freed
/// memory to the kernel, where glibc's malloc kept a burst's peak resident for good
/// (`tests/tests/memory.rs`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const DEFAULT_ADMIN_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 19100);

#[derive(Parser)]
#[command(
    name = "ferrule",
    version,
    about = "A sidecar data plane for a Consul service mesh",
    // A flag given twice takes its last value, so wrappers can append overrides.
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar proxy.
    Proxy(Box<ProxyArgs>),
    /// Run a Consul mesh gateway: routes connections on their TLS server name, without
    /// terminating TLS, to this datacenter's services and to other datacenters' gateways.
    Gateway(Box<gateway_command::GatewayArgs>),
    /// Run an embedded development agent that speaks Consul's agent API (like
    /// `consul agent -dev`): for trying ferrule and for tests, not for production.
    Dev(DevArgs),
    /// The whole mesh in one process: dev agent, two services, their sidecars.
    Demo(DemoArgs),
    /// Write a development CA and SVIDs for static mode (--config): the examples'
    /// certificates, shaped like Consul's. Not for production.
    Certs(certs::CertsArgs),
}

#[derive(clap::Args)]
struct DevArgs {
    /// Where the agent's HTTP API listens (`localhost:PORT` and `:PORT` mean
    /// 127.0.0.1:PORT; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8500", value_parser = addr_flag)]
    addr: SocketAddr,
    /// The datacenter the agent is in: part of every SPIFFE ID it signs.
    #[arg(long, default_value = "dc1")]
    datacenter: String,
    /// The primary datacenter [default: this one]. Another one makes this a secondary
    /// datacenter: its CA is an intermediate the primary signs, its config entries and
    /// intentions are the primary's. Needs --join-wan.
    #[arg(long, value_name = "DC")]
    primary_datacenter: Option<String>,
    /// The HTTP address of the primary datacenter's `ferrule dev` (IP:PORT or
    /// http://IP:PORT), to join the WAN with.
    #[arg(long, value_name = "ADDR", value_parser = join_wan_flag)]
    join_wan: Option<SocketAddr>,
    /// Lifetime of service leaf certificates, in Go's duration syntax (72h, 90s).
    #[arg(long, default_value = "72h", value_parser = duration::flag)]
    leaf_ttl: Duration,
    /// How often the sidecars' TCP health checks run.
    #[arg(long, default_value = "10s", value_parser = duration::flag)]
    check_interval: Duration,
    /// The agent's default_intention_policy [default: unset, i.e. allow with ACLs off].
    #[arg(long, value_enum)]
    default_intention_policy: Option<DefaultActionArg>,
    /// Keep the CA, registrations, intentions and check statuses here across restarts.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Serve the SPIFFE Workload API on this unix socket, with the SVID of SERVICE
    /// (default: the socket's file name without extension, web.sock → web). Repeatable:
    /// one socket per workload.
    #[arg(long, value_name = "[SERVICE=]PATH")]
    workload_api_socket: Vec<WorkloadSocket>,
    /// Send this trust domain's bundle (PEM file, re-read when it changes) as a federated
    /// bundle on the Workload API. Repeatable.
    #[arg(long, value_name = "TRUST_DOMAIN=FILE")]
    federate_with: Vec<Federation>,
    /// First port given to sidecars registered without one (Consul's
    /// ports.sidecar_min_port).
    #[arg(long, default_value_t = 21000, value_name = "PORT")]
    sidecar_min_port: u16,
    /// Last port given to sidecars registered without one (ports.sidecar_max_port).
    #[arg(long, default_value_t = 21255, value_name = "PORT")]
    sidecar_max_port: u16,
    /// Log filter: a level (trace, debug, info, warn, error, off) or tracing's filter
    /// syntax (`info,ferrule=debug`) [default: RUST_LOG, else info].
    #[arg(long, env = "FERRULE_LOG", value_name = "FILTER")]
    log_level: Option<String>,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Stop after this long, in Go's duration syntax (90s, 2m) or a bare number of
    /// seconds [default: run until Ctrl-C].
    #[arg(long, value_name = "DURATION", value_parser = duration::flag_or_seconds)]
    duration: Option<Duration>,
    /// Log filter: a level (trace, debug, info, warn, error, off) or tracing's filter
    /// syntax (`info,ferrule=debug`) [default: RUST_LOG, else warn].
    #[arg(long, env = "FERRULE_LOG", value_name = "FILTER")]
    log_level: Option<String>,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["config", "sidecar_for", "proxy_id"])))]
struct ProxyArgs {
    /// Static mode: certificates, bundle, intentions and upstreams from this TOML file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Consul mode: serve the sidecar registered for this service instance ID.
    #[arg(long, value_name = "SERVICE_ID", env = "CONNECT_SIDECAR_FOR")]
    sidecar_for: Option<String>,
    /// Consul mode: serve this registered connect-proxy service.
    #[arg(long, value_name = "PROXY_SERVICE_ID", env = "CONNECT_PROXY_ID")]
    proxy_id: Option<String>,
    #[command(flatten)]
    agent: AgentFlags,
    /// Take leaf, key and trust bundles from this SPIFFE Workload API (a SPIRE agent):
    /// unix:///path/to/agent.sock or tcp://IP:PORT. Intentions, listeners and upstreams
    /// still come from --config or the Consul agent.
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET", value_name = "ADDR")]
    workload_api: Option<String>,
    /// With --workload-api: how long the Workload API may answer PERMISSION_DENIED (the
    /// workload's identity withdrawn, e.g. its SPIRE entry deleted) before the SVID is
    /// no longer used (handshakes fail, /ready says why), in Go's duration syntax
    /// [default: 0s, at once].
    #[arg(
        long,
        env = "FERRULE_WORKLOAD_API_WITHDRAWAL_GRACE",
        value_parser = duration::flag,
        value_name = "DUR"
    )]
    workload_api_withdrawal_grace: Option<Duration>,
    /// What applies when no intention matches [default: learned from the agent].
    #[arg(long, value_enum)]
    default_action: Option<DefaultActionArg>,
    #[command(flatten)]
    run: RunFlags,
    /// TLS session resumption between sidecars (tickets on the inbound side, a session
    /// cache per upstream identity on the outbound side).
    #[arg(long, env = "FERRULE_TLS_RESUMPTION", value_enum, default_value_t = Switch::On)]
    tls_resumption: Switch,
    /// Export a span per L7 request with OTLP to this collector: an http:// URL (for
    /// http/protobuf, one without a path gets /v1/traces) [default:
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT; neither: no
    /// tracing]. OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER[_ARG] and OTEL_BSP_* apply.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// How spans are sent: grpc or http/protobuf [default:
    /// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL, else
    /// http/protobuf].
    #[arg(long, value_name = "PROTOCOL")]
    otlp_protocol: Option<String>,
}

/// How to reach the local Consul agent: `ferrule proxy`'s and `ferrule gateway`'s.
#[derive(clap::Args)]
struct AgentFlags {
    /// The local Consul agent: host:port (`:PORT` is 127.0.0.1:PORT), http://, https://
    /// or unix:///path.
    #[arg(
        long,
        env = "CONSUL_HTTP_ADDR",
        default_value = "http://127.0.0.1:8500"
    )]
    consul_addr: String,
    /// ACL token, sent as X-Consul-Token.
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the ACL token (wins over --token).
    #[arg(long, env = "CONSUL_HTTP_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// CA certificates to verify an https agent with.
    #[arg(long, env = "CONSUL_CACERT", value_name = "PATH")]
    ca_file: Option<PathBuf>,
}

impl AgentFlags {
    /// The agent client's configuration; a bad address is a usage error.
    fn client_config(&self) -> Result<AgentClientConfig, Fail> {
        let addr: AgentAddr = self
            .consul_addr
            .parse()
            .map_err(|e| Fail::Usage(format!("--consul-addr: {e}")))?;
        let mut agent = AgentClientConfig::new(addr);
        agent.token = self.token.clone();
        agent.token_file = self.token_file.clone();
        agent.ca_file = self.ca_file.clone();
        Ok(agent)
    }
}

/// How the process runs and shows itself: `ferrule proxy`'s and `ferrule gateway`'s.
#[derive(clap::Args)]
struct RunFlags {
    /// Address of the admin listener (/metrics, /ready, /config); `localhost:PORT` and
    /// `:PORT` mean 127.0.0.1:PORT [default: admin_addr from the config file, else
    /// 127.0.0.1:19100].
    #[arg(long, value_name = "ADDR", value_parser = addr_flag)]
    admin_addr: Option<SocketAddr>,
    /// On SIGTERM or SIGINT, how long connections and requests in flight get to finish
    /// once the listeners are closed, in Go's duration syntax.
    #[arg(long, default_value = "15s", value_parser = duration::flag)]
    drain_timeout: Duration,
    /// Log filter: a level (trace, debug, info, warn, error, off) or tracing's filter
    /// syntax (`info,ferrule=debug`) [default: RUST_LOG, else info].
    #[arg(long, env = "FERRULE_LOG", value_name = "FILTER")]
    log_level: Option<String>,
    /// How log lines are written: text for people, json for log pipelines.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Runtime worker threads [default: one per CPU]. One is enough for a sidecar
    /// beside a small service, and is how `cargo xtask bench` runs every peer.
    #[arg(long, env = "FERRULE_WORKER_THREADS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum DefaultActionArg {
    Allow,
    Deny,
}

impl From<DefaultActionArg> for Action {
    fn from(a: DefaultActionArg) -> Action {
        match a {
            DefaultActionArg::Allow => Action::Allow,
            DefaultActionArg::Deny => Action::Deny,
        }
    }
}

fn main() -> ExitCode {
    // jemalloc purges freed pages from background threads; without them it purges only
    // when the process allocates again, which an idle sidecar after a burst does not.
    // Failing to start them only delays that, so it is not an error worth stopping for.
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    let cli = Cli::parse();
    match cli.command {
        Command::Proxy(args) => proxy(*args),
        Command::Gateway(args) => gateway_command::run(*args),
        Command::Dev(args) => dev(args),
        Command::Demo(args) => demo(args),
        Command::Certs(args) => certs::run(args),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    runtime_with(None)
}

fn runtime_with(worker_threads: Option<u16>) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(usize::from(n));
    }
    builder.enable_all().build().map_err(|e| {
        eprintln!("ferrule: cannot start the runtime: {e}");
        ExitCode::from(1)
    })
}

fn dev(args: DevArgs) -> ExitCode {
    if let Err(code) = init_logging(args.log_level.as_deref(), "info", LogFormat::Text) {
        return code;
    }
    let config = DevAgentConfig {
        addr: args.addr,
        datacenter: args.datacenter,
        primary_datacenter: args.primary_datacenter,
        join_wan: args.join_wan,
        leaf_ttl: args.leaf_ttl,
        check_interval: args.check_interval,
        default_intention_policy: args.default_intention_policy.map(Action::from),
        data_dir: args.data_dir,
        workload_api: args.workload_api_socket,
        federate_with: args.federate_with,
        sidecar_ports: args.sidecar_min_port..=args.sidecar_max_port,
        ..DevAgentConfig::default()
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    tracing::info!(addr = %config.addr, "dev agent starting; production uses a real Consul cluster");
    match runtime.block_on(ferrule_dev::run(config, ferrule::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrule: {e}");
            let bad_flags = matches!(e, ferrule_dev::DevError::Config(_));
            ExitCode::from(if bad_flags { 2 } else { 1 })
        }
    }
}

fn demo(args: DemoArgs) -> ExitCode {
    if let Err(code) = init_logging(args.log_level.as_deref(), "warn", LogFormat::Text) {
        return code;
    }
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let metrics = ferrule::metrics::install(ferrule::metrics::Exporter::Sidecar)?;
        ferrule::demo::run(args.duration, metrics).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrule demo: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A start-up failure: bad input (exit 2) or a runtime failure (exit 1).
enum Fail {
    Usage(String),
    Runtime(anyhow::Error),
}

fn proxy(args: ProxyArgs) -> ExitCode {
    if let Err(code) = init_logging(args.run.log_level.as_deref(), "info", args.run.log_format) {
        return code;
    }
    ferrule::tls::set_session_resumption(args.tls_resumption == Switch::On);
    let runtime = match runtime_with(args.run.worker_threads) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    exit_code(runtime.block_on(run_proxy(args)))
}

/// The exit code of a run: 0, 2 for bad input (said on stderr), 1 for a runtime failure
/// (logged and said on stderr).
fn exit_code(result: Result<(), Fail>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Usage(message)) => {
            eprintln!("ferrule: {message}");
            ExitCode::from(2)
        }
        Err(Fail::Runtime(e)) => {
            tracing::error!("{e:#}");
            eprintln!("ferrule: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run_proxy(args: ProxyArgs) -> Result<(), Fail> {
    let provider = ferrule::tls::provider();
    let workload = match args.workload_api.as_deref() {
        Some(addr) => Some(
            WorkloadSource::new(addr, provider.clone())
                .map_err(|e| Fail::Usage(e.to_string()))?
                .with_withdrawal_grace(args.workload_api_withdrawal_grace.unwrap_or_default()),
        ),
        None => None,
    };
    let (source, file) = source(&args, workload.is_some(), &provider)?;
    let config_admin_addr = file.admin_addr;
    let admin_addr = args
        .run
        .admin_addr
        .or(config_admin_addr)
        .unwrap_or_else(|| SocketAddr::from(DEFAULT_ADMIN_ADDR));
    let metrics =
        ferrule::metrics::install(ferrule::metrics::Exporter::Sidecar).map_err(Fail::Runtime)?;
    start_tracing(&args, file.tracing)?;
    let admin = ferrule::bind_admin(admin_addr)
        .await
        .map_err(Fail::Runtime)?;
    let (feed, fatal) = workload.map(WorkloadSource::spawn).unzip();
    let snapshots = source.spawn(feed);
    let served = serve(
        admin,
        snapshots,
        metrics,
        provider,
        fatal,
        args.run.drain_timeout,
    )
    .await;
    // The requests are done: their records and spans go out before the process does.
    ferrule::access_log::flush(ACCESS_LOG_FLUSH_TIMEOUT).await;
    ferrule::trace::flush(TRACE_FLUSH_TIMEOUT).await;
    served
}

/// How long the access-log records still queued at shutdown get to be written.
const ACCESS_LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the spans still queued at shutdown get to reach the collector.
const TRACE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Tracing as the flags and `OTEL_*` say (off without an endpoint); a value that cannot
/// be used is a usage error naming its flag or variable.
fn start_tracing(args: &ProxyArgs, file: Option<TracingTable>) -> Result<(), Fail> {
    let flags = ferrule::trace::Flags {
        endpoint: args.otlp_endpoint.clone(),
        protocol: args.otlp_protocol.clone(),
        file,
        // Without OTEL_SERVICE_NAME: the service instance or proxy we serve.
        default_service_name: args
            .sidecar_for
            .clone()
            .or_else(|| args.proxy_id.clone())
            .unwrap_or_else(|| "ferrule".to_owned()),
    };
    let settings = ferrule::trace::resolve(&flags, |name| std::env::var(name).ok())
        .map_err(|e| Fail::Usage(format!("tracing: {e}")))?;
    if let Some(settings) = settings {
        ferrule::trace::install(&settings).map_err(|e| Fail::Usage(format!("tracing: {e}")))?;
    }
    Ok(())
}

/// What the static config file says for the whole process, read at start-up only.
#[derive(Default)]
struct ProcessSettings {
    admin_addr: Option<SocketAddr>,
    tracing: Option<TracingTable>,
}

/// The snapshot source the flags ask for, not yet started, and the config file's
/// process-wide settings in static mode. Bad flags or a bad config file are usage errors.
fn source(
    args: &ProxyArgs,
    workload_api: bool,
    provider: &Arc<CryptoProvider>,
) -> Result<(Source, ProcessSettings), Fail> {
    if let Some(path) = &args.config {
        let config =
            load_config(path, workload_api).map_err(|e| Fail::Usage(format!("bad config: {e}")))?;
        let settings = ProcessSettings {
            admin_addr: config.admin_addr,
            tracing: config.tracing.clone(),
        };
        let source = FileSource::new(config, provider.clone());
        // No last good state to keep yet: a bad file stops the start.
        source
            .check(workload_api)
            .map_err(|e| Fail::Usage(e.to_string()))?;
        let source = source.with_reloads(reload_on_sighup(path.clone(), workload_api));
        return Ok((source.into(), settings));
    }
    let selector = match (&args.sidecar_for, &args.proxy_id) {
        (_, Some(id)) => ProxySelector::ProxyId(id.clone()),
        (Some(id), None) => ProxySelector::SidecarFor(id.clone()),
        (None, None) => {
            return Err(Fail::Usage(
                "one of --config, --sidecar-for, --proxy-id is required".into(),
            ));
        }
    };
    let agent = args.agent.client_config()?;
    let mut config = ConsulConfig::new(agent, selector);
    config.default_action = args.default_action.map(Action::from);
    let source =
        ConsulSource::new(config, provider.clone()).map_err(|e| Fail::Usage(e.to_string()))?;
    Ok((source.into(), ProcessSettings::default()))
}

/// Reads the static config; with `--workload-api` the identity files may be left out.
fn load_config(path: &Path, workload_api: bool) -> Result<StaticConfig, ConfigError> {
    if workload_api {
        StaticConfig::load_for_workload_api(path)
    } else {
        StaticConfig::load(path)
    }
}

/// The config file read again on each SIGHUP; one that does not parse is logged and
/// the one in force stays.
fn reload_on_sighup(
    path: PathBuf,
    workload_api: bool,
) -> tokio::sync::mpsc::Receiver<StaticConfig> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hangups = match signal(SignalKind::hangup()) {
                Ok(hangups) => hangups,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; the config will not be reloaded");
                    return;
                }
            };
            while hangups.recv().await.is_some() {
                match load_config(&path, workload_api) {
                    Ok(config) => {
                        if tx.send(config).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::error!("SIGHUP: config not reloaded, the one in force stays: {e}")
                    }
                }
            }
        }
        #[cfg(not(unix))]
        let _ = (path, workload_api, tx);
    });
    rx
}

/// The data plane until a signal, or until the Workload API fails for good (exit 1).
async fn serve(
    admin: tokio::net::TcpListener,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    provider: Arc<CryptoProvider>,
    fatal: Option<Fatal>,
    drain_timeout: Duration,
) -> Result<(), Fail> {
    let fatal = async {
        match fatal {
            Some(fatal) => fatal.wait().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = ferrule::serve(admin, snapshots, metrics, provider, ferrule::shutdown_signal(), drain_timeout) => {
            result.map_err(Fail::Runtime)
        }
        error = fatal => Err(Fail::Runtime(anyhow::Error::from(error))),
    }
}

/// Installs the log: the flag's filter, else `RUST_LOG`'s, else `default`. A filter that
/// is not one exits 2 with the reason.
fn init_logging(flag: Option<&str>, default: &str, format: LogFormat) -> Result<(), ExitCode> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let text = logging::choose(flag, rust_log.as_deref(), default);
    match logging::filter(text) {
        Ok(filter) => {
            logging::init(filter, format);
            Ok(())
        }
        Err(e) => {
            let source = if flag.is_some() {
                "--log-level"
            } else {
                "RUST_LOG"
            };
            eprintln!("ferrule: {source}: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// An address flag: `IP:PORT`, `localhost:PORT` or `:PORT`.
fn addr_flag(text: &str) -> Result<SocketAddr, ferrule_control::addr::AddrError> {
    ferrule_control::addr::parse(text)
}

/// `--join-wan`: an address as `--addr` takes one, optionally as an `http://` URL.
fn join_wan_flag(text: &str) -> Result<SocketAddr, ferrule_control::addr::AddrError> {
    let bare = text.strip_prefix("http://").unwrap_or(text);
    ferrule_control::addr::parse(bare.strip_suffix('/').unwrap_or(bare))
}
