//! Project chores, run as `cargo xtask <command>`: `certs`, which writes a development
//! CA and service leaves for the examples and for manual testing, and `bench`, the
//! benchmark against HAProxy and nginx (see `bench`).

mod bench;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use ferrule_dev::ca::{DevCa, LeafSpec};
use time::Duration;

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
        #[arg(long, default_value = "72h", value_parser = parse_ttl)]
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
        } => certs(&dir, &services, ttl, cluster_id.as_deref()),
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

fn certs(dir: &Path, services: &[String], ttl: Duration, cluster_id: Option<&str>) -> Result<()> {
    for svc in services {
        check_service_name(svc)?;
    }
    let ca_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");

    let ca = match (ca_path.exists(), ca_key_path.exists()) {
        (true, true) => {
            let ca = load_ca(&ca_path, &ca_key_path)?;
            if let Some(wanted) = cluster_id
                && !wanted.eq_ignore_ascii_case(ca.cluster_id())
            {
                bail!(
                    "--cluster-id {wanted} differs from the existing CA's {} in {}; \
                     remove ca.pem and ca-key.pem to start a new CA",
                    ca.cluster_id(),
                    dir.display()
                );
            }
            println!(
                "reusing the CA in {} (ca.pem, ca-key.pem): leaves are renewed, the trust \
                 bundle is unchanged",
                dir.display()
            );
            ca
        }
        (false, false) => {
            let ca = DevCa::generate(cluster_id).context("generating the CA")?;
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            write_file(&ca_path, ca.cert_pem(), false)?;
            write_file(&ca_key_path, ca.key_pem(), true)?;
            ca
        }
        // Regenerating would silently replace half of a CA someone may still rely on.
        (has_cert, _) => bail!(
            "{} exists but {} does not; restore it or remove both",
            if has_cert { &ca_path } else { &ca_key_path }.display(),
            if has_cert { &ca_key_path } else { &ca_path }.display(),
        ),
    };

    println!("trust domain: {}", ca.trust_domain());
    for svc in services {
        let mut spec = LeafSpec::service(svc);
        spec.ttl = ttl;
        let leaf = ca
            .issue(&spec)
            .with_context(|| format!("issuing the leaf for {svc}"))?;
        write_file(&dir.join(format!("{svc}.pem")), &leaf.cert_pem, false)?;
        write_file(&dir.join(format!("{svc}-key.pem")), &leaf.key_pem, true)?;
        println!("{svc}: {}", leaf.service_uri);
    }
    Ok(())
}

fn load_ca(cert: &Path, key: &Path) -> Result<DevCa> {
    let read = |p: &Path| fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    DevCa::from_pem(&read(cert)?, &read(key)?).with_context(|| {
        format!(
            "loading the CA from {} and {}",
            cert.display(),
            key.display()
        )
    })
}

/// Names become file names next to `ca.pem`, so keep them to what Consul accepts in a
/// DNS label and keep `ca` for the CA itself.
fn check_service_name(name: &str) -> Result<()> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if name.is_empty() || !ok_chars {
        bail!("service name {name:?}: use letters, digits, '-' and '_' only");
    }
    if name == "ca" {
        bail!("service name \"ca\" would overwrite ca.pem and ca-key.pem");
    }
    Ok(())
}

/// A Go duration (`72h`, `90m`), or a bare number of hours as before; Consul's range.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = match s.parse::<u64>() {
        Ok(hours) => std::time::Duration::from_secs(hours.saturating_mul(3600)),
        Err(_) => ferrule_control::duration::flag(s).map_err(|e| e.to_string())?,
    };
    let (min, max) = (3600, 8760 * 3600);
    if !(min..=max).contains(&ttl.as_secs()) {
        return Err(format!("{s:?}: Consul allows 1h to 8760h"));
    }
    Duration::try_from(ttl).map_err(|e| format!("{s:?}: {e}"))
}

/// Writes through a temporary file and a rename, so a proxy watching DIR never loads
/// half a PEM; keys are created 0600 so they are never readable by others, even briefly.
fn write_file(path: &Path, contents: &str, secret: bool) -> Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let write = || -> std::io::Result<()> {
        let mut file = options.open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
