//! The `ferrule` command line. Exit codes: 0 clean shutdown, 1 runtime failure,
//! 2 bad flags or bad config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use ferrule_control::file::StaticConfig;

const DEFAULT_ADMIN_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 19100);

#[derive(Parser)]
#[command(
    name = "ferrule",
    version,
    about = "A sidecar data plane for a Consul service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar proxy.
    Proxy(ProxyArgs),
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// Static mode: certificates, bundle, intentions and upstreams from this TOML file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Address of the admin listener (/metrics, /ready, /config) [default: admin_addr
    /// from the config file, else 127.0.0.1:19100].
    #[arg(long, value_name = "ADDR")]
    admin_addr: Option<SocketAddr>,
    /// Log filter, in tracing's filter syntax (e.g. `info`, `ferrule=debug`).
    #[arg(long, env = "FERRULE_LOG", default_value = "info")]
    log_level: String,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Proxy(args) => proxy(args),
    }
}

fn proxy(args: ProxyArgs) -> ExitCode {
    if let Err(e) = init_logging(&args.log_level, args.log_format) {
        eprintln!("ferrule: --log-level: {e}");
        return ExitCode::from(2);
    }
    let config = match StaticConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ferrule: bad config: {e}");
            return ExitCode::from(2);
        }
    };
    let admin_addr = args
        .admin_addr
        .or(config.admin_addr)
        .unwrap_or_else(|| SocketAddr::from(DEFAULT_ADMIN_ADDR));

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferrule: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let metrics = ferrule::metrics::install()?;
        ferrule::run_static(config, admin_addr, metrics).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ferrule: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(filter: &str, format: LogFormat) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
