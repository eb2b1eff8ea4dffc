//! Turns the runs into the tables of BENCHMARKS.md: medians over rounds, each as a
//! ratio to Envoy's pair (with the same resumption setting), to HAProxy's and to
//! direct, the pair's CPU (per request where there are requests), peak RSS and PSS, and
//! the targets, each a ratio to Envoy, met or missed, from the same run.

use std::fmt::Write as _;

use super::peers::Peer;
use super::scenarios::{Sample, Scenario};

/// A load generator this busy over a run may have been the bottleneck, not the proxies.
const SATURATED: f64 = 0.90;

pub(crate) struct Record {
    pub(crate) scenario: Scenario,
    pub(crate) peer: Peer,
    pub(crate) round: usize,
    pub(crate) sample: Sample,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

struct Table<'a> {
    records: &'a [Record],
}

impl Table<'_> {
    fn samples(&self, s: Scenario, p: Peer) -> impl Iterator<Item = &Sample> {
        self.records
            .iter()
            .filter(move |r| r.scenario == s && r.peer == p)
            .map(|r| &r.sample)
    }

    fn med(&self, s: Scenario, p: Peer, f: impl Fn(&Sample) -> f64) -> Option<f64> {
        median(self.samples(s, p).map(f).collect())
    }

    fn value(&self, s: Scenario, p: Peer) -> Option<f64> {
        self.med(s, p, |x| x.value)
    }

    /// p99 added over direct, per round, then the median.
    fn added_p99(&self, p: Peer) -> Option<f64> {
        let s = Scenario::Latency;
        let per_round: Vec<f64> = self
            .records
            .iter()
            .filter(|r| r.scenario == s && r.peer == p)
            .filter_map(|r| {
                self.records
                    .iter()
                    .find(|d| d.scenario == s && d.peer == Peer::Direct && d.round == r.round)
                    .map(|d| r.sample.value - d.sample.value)
            })
            .collect();
        median(per_round)
    }
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

fn peers_of(records: &[Record], s: Scenario) -> Vec<Peer> {
    let mut peers: Vec<Peer> = Vec::new();
    for r in records.iter().filter(|r| r.scenario == s) {
        if !peers.contains(&r.peer) {
            peers.push(r.peer);
        }
    }
    peers
}

/// The Markdown report: one table per scenario, saturation warnings, the targets.
pub(crate) fn render(records: &[Record]) -> String {
    let t = Table { records };
    let mut out = String::new();
    let mut warnings = Vec::new();
    let mut scenarios: Vec<Scenario> = Vec::new();
    for r in records {
        if !scenarios.contains(&r.scenario) {
            scenarios.push(r.scenario);
        }
    }
    for &s in &scenarios {
        let peers = peers_of(records, s);
        let rounds = records
            .iter()
            .filter(|r| r.scenario == s)
            .map(|r| r.round)
            .max();
        let _ = writeln!(
            out,
            "\n#### {} — median of {} round(s)\n",
            s.title(),
            rounds.map_or(0, |r| r + 1)
        );
        let envoy = |p: Peer| t.value(s, p.envoy_like());
        let hap = |p: Peer| {
            t.value(
                s,
                Peer::Haproxy {
                    resumption: p.envoy_like().resumption(),
                },
            )
        };
        let direct = t.value(s, Peer::Direct);
        let cpu = |p| fmt(t.med(s, p, |x| x.cpu_secs), 2);
        let rss = |p| {
            format!(
                "{} / {}",
                fmt(t.med(s, p, |x| x.peak_kib as f64 / 1024.0), 1),
                fmt(t.med(s, p, |x| x.pss_kib as f64 / 1024.0), 1)
            )
        };
        // The pair's CPU µs per request, where the run counted requests.
        let cpu_per_request = |p| {
            t.med(s, p, |x| {
                if x.requests == 0 {
                    f64::NAN
                } else {
                    x.cpu_secs * 1e6 / x.requests as f64
                }
            })
            .filter(|v| v.is_finite())
        };
        let per_request = |p| fmt(cpu_per_request(p), 1);
        let errors = |p| t.samples(s, p).map(|x| x.errors).sum::<u64>();
        match s {
            Scenario::KeepAlive
            | Scenario::Close
            | Scenario::CloseL7
            | Scenario::Bulk
            | Scenario::BulkL7
            | Scenario::L7 => {
                let bulk = matches!(s, Scenario::Bulk | Scenario::BulkL7);
                let unit = if bulk { "Gbit/s" } else { "req/s" };
                let _ = writeln!(
                    out,
                    "| peer | {unit} | × Envoy | × HAProxy | × direct | pair CPU s | pair CPU µs/request | pair peak RSS / PSS at end, MiB | errors |\n|---|---|---|---|---|---|---|---|---|"
                );
                for &p in &peers {
                    let v = t.value(s, p);
                    let digits = if bulk { 2 } else { 0 };
                    let (cpu, per_req, rss) = if p == Peer::Direct {
                        ("-".to_owned(), "-".to_owned(), "-".to_owned())
                    } else {
                        (cpu(p), per_request(p), rss(p))
                    };
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} | {} | {cpu} | {per_req} | {rss} | {} |",
                        p.name(),
                        fmt(v, digits),
                        fmt(ratio(v, envoy(p)), 2),
                        fmt(ratio(v, hap(p)), 2),
                        fmt(ratio(v, direct), 2),
                        errors(p)
                    );
                }
                let best_proxied = peers
                    .iter()
                    .filter(|&&p| p != Peer::Direct)
                    .filter_map(|&p| t.value(s, p))
                    .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
                if let (Some(d), Some(b)) = (direct, best_proxied)
                    && d < 1.2 * b
                {
                    warnings.push(format!(
                        "{}: direct ({d:.0}) is less than 1.2 × the best proxied figure ({b:.0}): \
                         the load generator may be what limits this scenario",
                        s.name()
                    ));
                }
            }
            Scenario::Latency => {
                let _ = writeln!(
                    out,
                    "| peer | p50 µs | p99 µs | p99 added over direct µs | × Envoy's added | pair CPU s | pair peak RSS / PSS at end, MiB | errors |\n|---|---|---|---|---|---|---|---|"
                );
                for &p in &peers {
                    let added = if p == Peer::Direct {
                        None
                    } else {
                        t.added_p99(p)
                    };
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} | {} | {} | {} | {} |",
                        p.name(),
                        fmt(t.med(s, p, |x| x.extra.unwrap_or(0.0)), 0),
                        fmt(t.value(s, p), 0),
                        fmt(added, 0),
                        fmt(ratio(added, t.added_p99(p.envoy_like())), 2),
                        if p == Peer::Direct {
                            "-".into()
                        } else {
                            cpu(p)
                        },
                        if p == Peer::Direct {
                            "-".into()
                        } else {
                            rss(p)
                        },
                        errors(p)
                    );
                }
            }
            Scenario::Idle => {
                let _ = writeln!(
                    out,
                    "| peer | KiB per connection per proxy | × Envoy | pair RSS growth MiB | pair peak RSS / PSS at end, MiB | RSS after closing ÷ before (s waited, ≤ 60) | failed to open |\n|---|---|---|---|---|---|---|"
                );
                for &p in &peers {
                    let v = t.value(s, p);
                    let settled = format!(
                        "{} ({})",
                        fmt(t.med(s, p, |x| x.settled.map_or(f64::NAN, |(r, _)| r)), 2),
                        fmt(t.med(s, p, |x| x.settled.map_or(f64::NAN, |(_, s)| s)), 0)
                    );
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} | {} | {settled} | {} |",
                        p.name(),
                        fmt(v, 1),
                        fmt(ratio(v, envoy(p)), 2),
                        fmt(t.med(s, p, |x| x.extra.unwrap_or(0.0)), 1),
                        rss(p),
                        errors(p)
                    );
                }
            }
            Scenario::Observe => {
                let off = Peer::Ferrule { resumption: true };
                let _ = writeln!(
                    out,
                    "| peer | req/s | × off | pair CPU µs/request | added µs/request | pair peak RSS / PSS at end, MiB | records and spans dropped | errors |\n|---|---|---|---|---|---|---|---|"
                );
                for &p in &peers {
                    let v = t.value(s, p);
                    let added = match (cpu_per_request(p), cpu_per_request(off)) {
                        (Some(a), Some(b)) if p != off => Some(a - b),
                        _ => None,
                    };
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} | {} | {} | {} | {} |",
                        p.name(),
                        fmt(v, 0),
                        fmt(ratio(v, t.value(s, off)), 2),
                        per_request(p),
                        fmt(added, 1),
                        rss(p),
                        fmt(t.med(s, p, |x| x.extra.unwrap_or(0.0)), 0),
                        errors(p)
                    );
                }
                out.push_str("\nlogs: the default JSON record to a file on both sides; traces: every request sampled, a span per sidecar, exported over OTLP/HTTP to a sink on the generator's core.\n");
            }
            Scenario::Intentions | Scenario::IntentionsL7 => {
                let _ = writeln!(
                    out,
                    "| peer | new connection refused after ms | live connection refused after ms |\n|---|---|---|"
                );
                for &p in &peers {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} |",
                        p.name(),
                        fmt(t.value(s, p), 0),
                        fmt(t.med(s, p, |x| x.extra.unwrap_or(f64::INFINITY)), 0)
                    );
                }
                out.push_str("\nEnvoy, HAProxy and nginx: n/a here (their static configs have no live intentions; a policy change is an xDS push or a reload).\n");
            }
        }
        for r in records.iter().filter(|r| r.scenario == s) {
            if r.peer != Peer::Direct && r.sample.generator_busy >= SATURATED {
                warnings.push(format!(
                    "{} {} round {}: the load generator's core was {:.0}% busy: this run may measure the generator, not the proxies",
                    s.name(),
                    r.peer.name(),
                    r.round + 1,
                    r.sample.generator_busy * 100.0
                ));
            }
        }
    }
    if !warnings.is_empty() {
        out.push_str("\n#### Warnings\n\n");
        for w in &warnings {
            let _ = writeln!(out, "- {w}");
        }
    }
    out.push_str(&targets(&t));
    out
}

fn targets(t: &Table<'_>) -> String {
    let f = Peer::Ferrule { resumption: true };
    let e = Peer::Envoy { resumption: true };
    let f_off = Peer::Ferrule { resumption: false };
    let e_off = Peer::Envoy { resumption: false };
    let mut rows: Vec<(String, String, Option<f64>, bool)> = Vec::new();
    let mut add = |what: &str, target: &str, got: Option<f64>, ok: fn(f64) -> bool| {
        let met = got.is_some_and(ok);
        rows.push((what.to_owned(), target.to_owned(), got, met));
    };
    let r = |s, a, b| ratio(t.value(s, a), t.value(s, b));
    add(
        "keep-alive L4, requests/s",
        "≥ 2 × Envoy",
        r(Scenario::KeepAlive, f, e),
        |v| v >= 2.0,
    );
    add(
        "keep-alive L7 (20 permissions), requests/s",
        "≥ 3 × Envoy",
        r(Scenario::L7, f, e),
        |v| v >= 3.0,
    );
    add(
        "new connection per request L4, requests/s",
        "≥ 1.5 × Envoy",
        r(Scenario::Close, f, e),
        |v| v >= 1.5,
    );
    add(
        "new connection per request L4, resumption off on both, requests/s",
        "(reported)",
        r(Scenario::Close, f_off, e_off),
        |_| true,
    );
    add(
        "connection per request L7 (both pooled), requests/s",
        "≥ 2 × Envoy",
        r(Scenario::CloseL7, f, e),
        |v| v >= 2.0,
    );
    add(
        "bulk L4, Gbit/s",
        "≥ 1.5 × Envoy",
        r(Scenario::Bulk, f, e),
        |v| v >= 1.5,
    );
    add(
        "bulk L7, Gbit/s",
        "≥ 1.5 × Envoy",
        r(Scenario::BulkL7, f, e),
        |v| v >= 1.5,
    );
    add(
        "p99 added over direct at 2,000 req/s",
        "≤ 0.3 × Envoy's",
        ratio(t.added_p99(f), t.added_p99(e)),
        |v| v <= 0.3,
    );
    add(
        "pair PSS at the end of the keep-alive run",
        "≤ 0.25 × Envoy's",
        ratio(
            t.med(Scenario::KeepAlive, f, |x| x.pss_kib as f64),
            t.med(Scenario::KeepAlive, e, |x| x.pss_kib as f64),
        ),
        |v| v <= 0.25,
    );
    add(
        "memory per idle connection, KiB per proxy",
        "≤ 24",
        t.value(Scenario::Idle, f),
        |v| v <= 24.0,
    );
    add(
        "RSS after the idle connections closed, ÷ before (within 60 s)",
        "≤ 1.5",
        t.med(Scenario::Idle, f, |x| {
            x.settled.map_or(f64::INFINITY, |(r, _)| r)
        }),
        |v| v <= 1.5,
    );
    add(
        "intention change → new connections refused, ms (L4)",
        "≤ 1000",
        t.value(Scenario::Intentions, f),
        |v| v <= 1000.0,
    );
    add(
        "intention change → live connections closed, ms (L4)",
        "≤ 1000",
        t.med(Scenario::Intentions, f, |x| {
            x.extra.unwrap_or(f64::INFINITY)
        }),
        |v| v <= 1000.0,
    );
    add(
        "intention change → new requests refused, ms (L7)",
        "≤ 1000",
        t.value(Scenario::IntentionsL7, f),
        |v| v <= 1000.0,
    );
    add(
        "intention change → live connection's requests refused, ms (L7)",
        "≤ 1000",
        t.med(Scenario::IntentionsL7, f, |x| {
            x.extra.unwrap_or(f64::INFINITY)
        }),
        |v| v <= 1000.0,
    );
    let mut out = String::from(
        "\n#### Targets (ferrule, from this run)\n\n| target | wanted | got | |\n|---|---|---|---|\n",
    );
    for (what, target, got, met) in rows {
        let Some(got) = got else { continue };
        let _ = writeln!(
            out,
            "| {what} | {target} | {got:.2} | {} |",
            if target == "(reported)" {
                ""
            } else if met {
                "met"
            } else {
                "**missed**"
            }
        );
    }
    out
}
