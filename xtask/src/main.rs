//! Project chores, run as `cargo xtask <command>`: `certs`, which writes a development
//! CA and service leaves for the examples and for manual testing (the same as `ferrule
//! certs`, through `ferrule_dev::ca::CertsDir`), and `bench`, the benchmark against
//! HAProxy and nginx (see `bench`).

mod bench;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ferrule_dev::ca::{CertsDir, leaf_ttl_flag};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "ferrule project chores"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a development CA and one Consul-shaped leaf per service into DIR.
    ///
    /// Files: ca.pem, ca-key.pem, <svc>.pem, <svc>-key.pem (keys SEC1, mode 0600).
    /// An existing ca.pem + ca-key.pem in DIR is reused, so running it again renews the
    /// leaves without changing the trust bundle.
    Certs {
        /// Output directory, created if missing.
        dir: PathBuf,
        /// Comma-separated service names.
        #[arg(long, value_delimiter = ',', default_value = "web,api")]
        services: Vec<String>,
        /// Leaf lifetime: a Go duration such as `72h`, or a number of hours (Consul allows
        /// 1h..8760h).
        #[arg(long, default_value = "72h", value_parser = leaf_ttl_flag)]
        ttl: Duration,
        /// Cluster UUID for a new CA (trust domain `<UUID>.consul`); random by default.
        #[arg(long)]
        cluster_id: Option<String>,
    },
    /// Benchmark ferrule against HAProxy and nginx pairs: ratios from one run.
    ///
    /// Needs two cores, root (apt-get for missing peers) and the ports 18001, 18002,
    /// 18080, 19201, 19202 on 127.0.0.1. Writes target/bench/report.md.
    Bench(bench::BenchArgs),
    /// Write proxy/link-order.txt: the functions a running sidecar executes (seen by
    /// callgrind under bench load), which the release link places together so less of
    /// the binary stays resident. Needs valgrind and the bench's ports.
    LinkOrder,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Certs {
            dir,
            services,
            ttl,
            cluster_id,
        } => CertsDir {
            dir,
            services,
            ttl,
            cluster_id,
        }
        .write()
        .map(|report| print!("{report}"))
        .map_err(anyhow::Error::from),
        Command::Bench(args) => bench::run(args),
        Command::LinkOrder => bench::link_order(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
