//! The scenarios, each run against one started pair: what load it applies and the one
//! figure it records, with the pair's CPU seconds and peak RSS over the run.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::load;
use super::peers::{self, Mode, Observe, Peer, Running};

/// Keep-alive connections of the closed-loop runs.
const KEEPALIVE_CONNS: usize = 50;
/// Workers of the connection-per-request runs, each with one connection at a time.
const CLOSE_CONNS: usize = 64;
/// The paced run's rate and the connections it spreads over.
pub(crate) const PACED_RATE: u32 = 2_000;
const PACED_CONNS: usize = 32;
/// How long the idle run waits for the pair's memory to come back after closing.
const SETTLE_WITHIN: Duration = Duration::from_secs(60);
/// How many idle connections are opened at once.
const IDLE_PARALLEL: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    KeepAlive,
    Latency,
    Close,
    CloseL7,
    Bulk,
    BulkL7,
    L7,
    Idle,
    Intentions,
    IntentionsL7,
    Observe,
}

impl Scenario {
    pub(crate) const ALL: [Scenario; 11] = [
        Scenario::KeepAlive,
        Scenario::Latency,
        Scenario::Close,
        Scenario::CloseL7,
        Scenario::Bulk,
        Scenario::BulkL7,
        Scenario::L7,
        Scenario::Idle,
        Scenario::Intentions,
        Scenario::IntentionsL7,
        Scenario::Observe,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::KeepAlive => "keepalive",
            Scenario::Latency => "latency",
            Scenario::Close => "close",
            Scenario::CloseL7 => "close-l7",
            Scenario::Bulk => "bulk",
            Scenario::BulkL7 => "bulk-l7",
            Scenario::L7 => "l7",
            Scenario::Idle => "idle",
            Scenario::Intentions => "intentions",
            Scenario::IntentionsL7 => "intentions-l7",
            Scenario::Observe => "observe",
        }
    }

    pub(crate) fn title(self) -> String {
        match self {
            Scenario::KeepAlive => {
                format!("(1) keep-alive HTTP/1.1, {KEEPALIVE_CONNS} connections, L4: requests/s")
            }
            Scenario::Latency => format!(
                "(1b) paced {PACED_RATE} req/s over {PACED_CONNS} keep-alive connections, L4: p99 latency"
            ),
            Scenario::Close => format!(
                "(2) new connection per request (Connection: close), {CLOSE_CONNS} workers, L4: requests/s"
            ),
            Scenario::CloseL7 => format!(
                "(2b) new connection per request, {CLOSE_CONNS} workers, L7 (HTTP mode): requests/s"
            ),
            Scenario::Bulk => "(3) bulk download through the pair, L4: Gbit/s".to_owned(),
            Scenario::BulkL7 => {
                "(3b) bulk download through the pair, L7 (one HTTP response): Gbit/s".to_owned()
            }
            Scenario::L7 => format!(
                "(4) L7, intention with {} permissions, {KEEPALIVE_CONNS} keep-alive connections: requests/s",
                peers::PERMISSIONS
            ),
            Scenario::Idle => {
                "(5) idle established connections, L4: memory per connection per proxy".to_owned()
            }
            Scenario::Intentions => {
                "(6) intention change (allow -> deny) to enforcement, L4, ferrule only".to_owned()
            }
            Scenario::IntentionsL7 => {
                "(6b) intention change (allow -> deny) to enforcement, L7, ferrule only".to_owned()
            }
            Scenario::Observe => {
                "(7) access logs and tracing on vs off, scenario (4)'s L7 load, ferrule only: requests/s"
                    .to_owned()
            }
        }
    }

    pub(crate) fn mode(self) -> Mode {
        match self {
            Scenario::CloseL7
            | Scenario::BulkL7
            | Scenario::L7
            | Scenario::IntentionsL7
            | Scenario::Observe => Mode::L7,
            _ => Mode::L4,
        }
    }

    /// The peers this scenario compares, direct first.
    /// `resumption`: the settings each proxy runs with (on, off, or both).
    pub(crate) fn peers(self, resumption: &[bool]) -> Vec<Peer> {
        let proxies = resumption.iter().flat_map(|&r| Peer::proxies(r));
        match self {
            Scenario::Intentions | Scenario::IntentionsL7 => vec![Peer::Ferrule {
                resumption: resumption.first().copied().unwrap_or(true),
            }],
            Scenario::Idle => proxies.collect(),
            Scenario::Observe => std::iter::once(Peer::Ferrule { resumption: true })
                .chain(Observe::ALL.map(Peer::FerruleObserved))
                .collect(),
            _ => std::iter::once(Peer::Direct).chain(proxies).collect(),
        }
    }
}

/// How long and how much.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub(crate) duration: Duration,
    pub(crate) bulk_bytes: u64,
    pub(crate) idle_conns: usize,
}

/// One run's result.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    /// The scenario's figure: req/s, p99 µs, Gbit/s, KiB per connection per proxy, or ms.
    pub(crate) value: f64,
    /// A second figure where there is one: p50 µs (latency), live-connection ms
    /// (intentions), proxies' RSS growth in MiB (idle), records and spans dropped
    /// (observe).
    pub(crate) extra: Option<f64>,
    pub(crate) errors: u64,
    /// The pair's CPU seconds over the measured part of the run.
    pub(crate) cpu_secs: f64,
    /// The pair's peak RSS (VmHWM of both processes, summed), KiB.
    pub(crate) peak_kib: u64,
    /// The pair's anonymous RSS at the end of the run, KiB.
    pub(crate) anon_kib: u64,
    /// The pair's proportional set size at the end of the run (shared pages split
    /// between the processes that map them), KiB.
    pub(crate) pss_kib: u64,
    /// Requests completed (closed-loop runs), for CPU per request.
    pub(crate) requests: u64,
    /// Idle: the pair's RSS after the connections closed, as a multiple of its RSS
    /// before they opened, and the seconds it took to come within 1.5× (or the 60 s
    /// the run waits).
    pub(crate) settled: Option<(f64, f64)>,
    /// Share of one core the load generator and backend used over the run.
    pub(crate) generator_busy: f64,
}

pub(crate) async fn run(scenario: Scenario, pair: &mut Running, sizes: Sizes) -> Result<Sample> {
    let me = std::process::id();
    let (gen0, pair0, t0) = (peers::usage(me), pair.usage(), Instant::now());
    let entry = pair.entry;
    let mut sample = Sample::default();
    match scenario {
        Scenario::KeepAlive | Scenario::L7 | Scenario::Observe => {
            let t = load::keepalive(entry, KEEPALIVE_CONNS, sizes.duration).await;
            sample.value = t.per_second();
            sample.errors = t.errors;
            sample.requests = t.ok;
            if scenario == Scenario::Observe {
                sample.extra = Some(peers::observe_drops().await as f64);
            }
        }
        Scenario::Close | Scenario::CloseL7 => {
            let t = load::per_connection(entry, CLOSE_CONNS, sizes.duration).await;
            sample.value = t.per_second();
            sample.errors = t.errors;
            sample.requests = t.ok;
        }
        Scenario::Latency => {
            let (t, lat) = load::paced(entry, PACED_RATE, sizes.duration, PACED_CONNS).await;
            sample.value = load::quantile(&lat, 0.99) as f64;
            sample.extra = Some(load::quantile(&lat, 0.50) as f64);
            sample.errors = t.errors;
        }
        Scenario::Bulk | Scenario::BulkL7 => {
            let (got, took) = load::bulk(entry, sizes.bulk_bytes, scenario == Scenario::BulkL7)
                .await
                .context("bulk transfer")?;
            if got != sizes.bulk_bytes {
                sample.errors = 1;
            }
            sample.value = got as f64 * 8.0 / took.as_secs_f64().max(1e-9) / 1e9;
        }
        Scenario::Idle => {
            let before = pair.usage().rss_kib;
            let (conns, failed) = load::idle(entry, sizes.idle_conns, IDLE_PARALLEL).await;
            // Let allocator and kernel settle before reading RSS.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let after = pair.usage().rss_kib;
            let grown = after.saturating_sub(before) as f64;
            let per_proxy = grown / 2.0 / conns.len().max(1) as f64;
            sample.value = per_proxy;
            sample.extra = Some(grown / 1024.0);
            sample.errors = failed;
            drop(conns);
            // Memory that comes back: wait (bounded) for the pair to shrink to 1.5×
            // where it started.
            let closed = Instant::now();
            let target = before.max(1) as f64 * 1.5;
            let mut now = pair.usage().rss_kib;
            while (now as f64) > target && closed.elapsed() < SETTLE_WITHIN {
                tokio::time::sleep(Duration::from_millis(500)).await;
                now = pair.usage().rss_kib;
            }
            sample.settled = Some((
                now as f64 / before.max(1) as f64,
                closed.elapsed().as_secs_f64(),
            ));
        }
        Scenario::Intentions | Scenario::IntentionsL7 => {
            let (new_ms, live_ms) = intention_change(pair).await?;
            sample.value = new_ms;
            sample.extra = Some(live_ms);
        }
    }
    let (gen1, pair1, elapsed) = (peers::usage(me), pair.usage(), t0.elapsed());
    sample.cpu_secs = pair1.cpu_secs - pair0.cpu_secs;
    sample.peak_kib = pair1.peak_kib;
    sample.anon_kib = pair1.anon_kib;
    sample.pss_kib = pair1.pss_kib;
    sample.generator_busy = (gen1.cpu_secs - gen0.cpu_secs) / elapsed.as_secs_f64().max(1e-9);
    Ok(sample)
}

/// Rewrites the intentions file from allow to deny and measures, from the write, how
/// long until a new connection is refused and until a live one is (closed at L4, 403
/// at L7). Static mode polls the file every 500 ms, so that is the floor.
async fn intention_change(pair: &Running) -> Result<(f64, f64)> {
    let Some(path) = pair.intentions.clone() else {
        bail!("this peer has no intentions file");
    };
    let mode = if fs::read_to_string(&path)?.contains("Permissions") {
        Mode::L7
    } else {
        Mode::L4
    };
    let entry = pair.entry;
    let mut live = load::Conn::open(entry).await?;
    if !live.probe().await {
        bail!("the live connection was refused before the change");
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, peers::intentions_json(mode, false))?;
    let written = Instant::now();
    fs::rename(&tmp, &path)?;
    let limit = Duration::from_secs(5);
    let new_conn = async {
        while written.elapsed() < limit {
            if matches!(load::probe(entry).await, Ok(false) | Err(_)) {
                return Some(written.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    };
    let live_conn = async {
        while written.elapsed() < limit {
            if !live.probe().await {
                return Some(written.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    };
    let (new, live) = tokio::join!(new_conn, live_conn);
    let ms = |d: Option<Duration>| d.map_or(f64::INFINITY, |d| d.as_secs_f64() * 1000.0);
    // Restore, for whoever uses the pair next.
    fs::write(&path, peers::intentions_json(mode, true))?;
    Ok((ms(new), ms(live)))
}
