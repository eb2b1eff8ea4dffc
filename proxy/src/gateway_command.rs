//! `ferrule gateway --proxy-id <ID>`: a Consul mesh gateway served from its registration
//! on the local agent (`ferrule::gateway`, fed by `ferrule_control::consul::gateway`).
//! The agent and run flags are `ferrule proxy`'s. Exit codes as for the proxy; a
//! registration that is no mesh gateway is bad input (exit 2, naming why).

use std::net::SocketAddr;
use std::process::ExitCode;

use ferrule::gateway::GatewayError;
use ferrule_control::consul::{GatewaySource, GatewaySourceConfig};
use tokio_util::sync::CancellationToken;

use crate::{
    AgentFlags, DEFAULT_ADMIN_ADDR, Fail, RunFlags, exit_code, init_logging, runtime_with,
};

#[derive(clap::Args)]
pub(crate) struct GatewayArgs {
    /// The mesh gateway's service ID on the local agent (Kind "mesh-gateway").
    #[arg(long, value_name = "SERVICE_ID", env = "CONNECT_PROXY_ID")]
    proxy_id: String,
    #[command(flatten)]
    agent: AgentFlags,
    #[command(flatten)]
    run: RunFlags,
}

pub(crate) fn run(args: GatewayArgs) -> ExitCode {
    if let Err(code) = init_logging(args.run.log_level.as_deref(), "info", args.run.log_format) {
        return code;
    }
    let runtime = match runtime_with(args.run.worker_threads) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    exit_code(runtime.block_on(serve(args)))
}

async fn serve(args: GatewayArgs) -> Result<(), Fail> {
    let agent = args.agent.client_config()?;
    let config = GatewaySourceConfig::new(agent, args.proxy_id);
    let source = GatewaySource::new(config, ferrule::tls::provider())
        .map_err(|e| Fail::Usage(e.to_string()))?;
    let admin_addr = args
        .run
        .admin_addr
        .unwrap_or_else(|| SocketAddr::from(DEFAULT_ADMIN_ADDR));
    let metrics =
        ferrule::metrics::install(ferrule::metrics::Exporter::Gateway).map_err(Fail::Runtime)?;
    let admin = ferrule::bind_admin(admin_addr)
        .await
        .map_err(Fail::Runtime)?;
    let stop = CancellationToken::new();
    let views = source.spawn(stop.clone());
    let result = ferrule::gateway::serve(
        admin,
        views,
        metrics,
        ferrule::shutdown_signal(),
        args.run.drain_timeout,
    )
    .await;
    stop.cancel();
    result.map_err(|e| match e {
        GatewayError::Refused(why) => Fail::Usage(why),
        GatewayError::Bind(e) => Fail::Runtime(e.into()),
    })
}
