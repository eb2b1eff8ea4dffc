//! Every metric ferrule exports, in one list: its name, type, unit, labels and meaning.
//!
//! The list is what `/metrics` says in `# HELP` (described to the recorder at start-up,
//! before the first scrape), what the README's metrics table is checked against (a unit
//! test fails when one names a metric the other does not), and where the label values
//! known in advance are registered at zero, so that a fresh process already shows the
//! series a dashboard or an alert divides by.
//!
//! Labels stay low-cardinality: each takes values from a fixed list, from the
//! configuration (upstream, cluster, target and listener names, the local service) or
//! from the mesh's own service and datacenter names; never a peer address, a path or
//! anything else a caller chooses.

use metrics::{KeyName, SharedString, Unit};

use super::{
    ACTIVE_CONNECTIONS, AUTHZ_DECISIONS, AUTHZ_TERMINATIONS, BYTES, CONNECTIONS_LIMITED, Direction,
    GATEWAY_ACTIVE, GATEWAY_BYTES, GATEWAY_CONNECTIONS, GATEWAY_ROUTED, GatewayOutcome,
    HTTP_REQUEST_DURATION, HTTP_REQUESTS, INBOUND_CONNECTIONS, InboundOutcome, LEAF_EXPIRY,
    OUTBOUND_CONNECTIONS, TLS_HANDSHAKE_DURATION, TLS_HANDSHAKES, UPSTREAM_ACTIVE_TARGET,
    UPSTREAM_REQUESTS, UPSTREAM_RETRIES,
};
use ferrule_control::telemetry::{CONTROL_LAST_UPDATE, CONTROL_UPDATES};

/// A metric's Prometheus type, as `# TYPE` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Rendered as buckets (`_bucket`, `_sum`, `_count`): `metrics::install` gives every
    /// `_duration_seconds` metric its buckets, so `histogram_quantile` works on them.
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Which process exports a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exporter {
    Sidecar,
    Gateway,
    Both,
}

/// One metric family.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    pub labels: &'static [&'static str],
    pub exporter: Exporter,
    /// What `# HELP` says: the meaning, and the unit when there is one.
    pub help: &'static str,
}

const fn family(
    name: &'static str,
    kind: Kind,
    unit: Option<Unit>,
    labels: &'static [&'static str],
    exporter: Exporter,
    help: &'static str,
) -> Family {
    Family {
        name,
        kind,
        unit,
        labels,
        exporter,
        help,
    }
}

use Exporter::{Both, Gateway, Sidecar};
use Kind::{Counter, Gauge, Histogram};

/// Every metric, sidecar's first, then the control plane's, then the gateway's.
pub const FAMILIES: &[Family] = &[
    family(
        INBOUND_CONNECTIONS,
        Counter,
        Some(Unit::Count),
        &["result"],
        Sidecar,
        "Connections accepted on the public mTLS listener, by what they came to.",
    ),
    family(
        OUTBOUND_CONNECTIONS,
        Counter,
        Some(Unit::Count),
        &["upstream", "target", "result"],
        Sidecar,
        "Dial attempts toward an upstream's instances (one per instance tried), by result.",
    ),
    family(
        ACTIVE_CONNECTIONS,
        Gauge,
        Some(Unit::Count),
        &["direction"],
        Sidecar,
        "Connections open now.",
    ),
    family(
        BYTES,
        Counter,
        Some(Unit::Bytes),
        &["direction", "flow"],
        Sidecar,
        "Bytes from (rx) and to (tx) the mesh peer, in bytes.",
    ),
    family(
        AUTHZ_DECISIONS,
        Counter,
        Some(Unit::Count),
        &["layer", "decision", "source"],
        Sidecar,
        "Intentions decisions on callers: per connection (l4) or per request (l7), by calling service.",
    ),
    family(
        AUTHZ_TERMINATIONS,
        Counter,
        Some(Unit::Count),
        &["source"],
        Sidecar,
        "Open connections closed because an intentions change now denies their caller, by calling service.",
    ),
    family(
        CONNECTIONS_LIMITED,
        Counter,
        Some(Unit::Count),
        &["listener"],
        Both,
        "Times a listener was at its connection limit and the next connection had to wait.",
    ),
    family(
        HTTP_REQUESTS,
        Counter,
        Some(Unit::Count),
        &["direction", "upstream", "status"],
        Sidecar,
        "HTTP requests finished, by status class (0xx: no response), including the proxy's own answers.",
    ),
    family(
        HTTP_REQUEST_DURATION,
        Histogram,
        Some(Unit::Seconds),
        &["direction", "upstream"],
        Sidecar,
        "HTTP request duration until the response body is done, in seconds.",
    ),
    family(
        crate::metrics::HTTP_CLIENT_ERRORS,
        Counter,
        Some(Unit::Count),
        &["direction", "reason"],
        Sidecar,
        "Requests the proxy refused for the caller's mistake: bad_body, bad_path, escaped_slash, underscore_header.",
    ),
    family(
        UPSTREAM_REQUESTS,
        Counter,
        Some(Unit::Count),
        &["upstream", "target", "status"],
        Sidecar,
        "The app's requests on an HTTP upstream, by the target of the last try and status class.",
    ),
    family(
        UPSTREAM_RETRIES,
        Counter,
        Some(Unit::Count),
        &["upstream", "target", "reason"],
        Sidecar,
        "Requests tried again, by the target of the failed try and the retry_on condition it met.",
    ),
    family(
        UPSTREAM_ACTIVE_TARGET,
        Gauge,
        None,
        &["upstream", "cluster", "target"],
        Sidecar,
        "1 for the target each cluster of an upstream sends its traffic to now, 0 for its others.",
    ),
    family(
        TLS_HANDSHAKE_DURATION,
        Histogram,
        Some(Unit::Seconds),
        &["direction"],
        Sidecar,
        "mTLS handshake duration, in seconds.",
    ),
    family(
        TLS_HANDSHAKES,
        Counter,
        Some(Unit::Count),
        &["direction", "kind", "version", "alpn"],
        Sidecar,
        "Completed mTLS handshakes: full or resumed, and the TLS version and ALPN protocol negotiated.",
    ),
    family(
        LEAF_EXPIRY,
        Gauge,
        Some(Unit::Seconds),
        &[],
        Sidecar,
        "When the leaf certificate in force expires, in seconds since the Unix epoch.",
    ),
    family(
        crate::access_log::DROPPED,
        Counter,
        Some(Unit::Count),
        &[],
        Sidecar,
        "Access-log records dropped because the writer's queue was full.",
    ),
    family(
        crate::metrics::TRACE_SPANS_DROPPED,
        Counter,
        Some(Unit::Count),
        &["reason"],
        Sidecar,
        "Spans not exported: queue_full (spans end faster than the collector takes them) or export_failed (a batch the collector refused or did not answer in time).",
    ),
    family(
        crate::metrics::TRACE_SPANS_EXPORTED,
        Counter,
        Some(Unit::Count),
        &[],
        Sidecar,
        "Spans the OTLP collector accepted.",
    ),
    family(
        CONTROL_UPDATES,
        Counter,
        Some(Unit::Count),
        &["resource", "result"],
        Both,
        "Answers from the control plane (agent, files, Workload API), by resource and result.",
    ),
    family(
        CONTROL_LAST_UPDATE,
        Gauge,
        Some(Unit::Seconds),
        &["resource"],
        Both,
        "When the last good answer for a resource arrived, changed or not, in seconds since the Unix epoch.",
    ),
    family(
        GATEWAY_CONNECTIONS,
        Counter,
        Some(Unit::Count),
        &["listener", "result"],
        Gateway,
        "Mesh gateway connections, by listener (lan, wan) and what they came to.",
    ),
    family(
        GATEWAY_ROUTED,
        Counter,
        Some(Unit::Count),
        &["datacenter", "service"],
        Gateway,
        "Mesh gateway connections routed, by datacenter and service (empty for another datacenter's gateways).",
    ),
    family(
        GATEWAY_ACTIVE,
        Gauge,
        Some(Unit::Count),
        &["listener"],
        Gateway,
        "Mesh gateway connections open now.",
    ),
    family(
        GATEWAY_BYTES,
        Counter,
        Some(Unit::Bytes),
        &["flow"],
        Gateway,
        "Mesh gateway bytes from (rx) and back to (tx) the callers, in bytes.",
    ),
];

/// Describes every family to the installed recorder, for `# HELP`.
pub fn describe() {
    metrics::with_recorder(|recorder| {
        for family in FAMILIES {
            let name = KeyName::from_const_str(family.name);
            let help = SharedString::const_str(family.help);
            match family.kind {
                Counter => recorder.describe_counter(name, family.unit, help),
                Gauge => recorder.describe_gauge(name, family.unit, help),
                Histogram => recorder.describe_histogram(name, family.unit, help),
            }
        }
    });
}

/// The `version` values a handshake is registered at zero with (`other` is not: it
/// should never show).
const TLS_VERSIONS: [&str; 2] = ["TLSv1_3", "TLSv1_2"];
const ALPNS: [&str; 3] = ["h2", "http/1.1", "none"];
const HANDSHAKE_KINDS: [&str; 2] = ["full", "resumed"];

/// Registers a sidecar's counters and gauges whose label values are all known before
/// any traffic at zero: inbound results, handshakes, bytes, open connections.
pub fn register_sidecar() {
    for outcome in InboundOutcome::ALL {
        metrics::counter!(INBOUND_CONNECTIONS, "result" => outcome.label()).increment(0);
    }
    for direction in [Direction::Inbound, Direction::Outbound] {
        let direction = direction.as_str();
        metrics::gauge!(ACTIVE_CONNECTIONS, "direction" => direction).increment(0.0);
        for flow in ["rx", "tx"] {
            metrics::counter!(BYTES, "direction" => direction, "flow" => flow).increment(0);
        }
        for kind in HANDSHAKE_KINDS {
            for version in TLS_VERSIONS {
                for alpn in ALPNS {
                    metrics::counter!(
                        TLS_HANDSHAKES,
                        "direction" => direction,
                        "kind" => kind,
                        "version" => version,
                        "alpn" => alpn
                    )
                    .increment(0);
                }
            }
        }
    }
    metrics::counter!(crate::access_log::DROPPED).increment(0);
}

/// Registers every result of a dial toward each target of each upstream of `snapshot`
/// at zero, and `no_endpoints` (which has no target) per upstream. Repeated for each
/// snapshot: registering a series that exists changes nothing.
pub fn register_upstreams(snapshot: &ferrule_control::model::Snapshot) {
    use super::{Attempt, DialError};
    const DIALS: [Attempt; 4] = [
        Attempt::Ok,
        Attempt::Failed(DialError::ConnectError),
        Attempt::Failed(DialError::TlsError),
        Attempt::Failed(DialError::IdentityMismatch),
    ];
    for upstream in &snapshot.upstreams {
        let name = upstream.name.as_str();
        metrics::counter!(
            OUTBOUND_CONNECTIONS,
            "upstream" => name.to_owned(),
            "target" => "",
            "result" => Attempt::NoEndpoints.label()
        )
        .increment(0);
        for cluster in &upstream.routing.clusters {
            for target in &cluster.targets {
                for attempt in DIALS {
                    metrics::counter!(
                        OUTBOUND_CONNECTIONS,
                        "upstream" => name.to_owned(),
                        "target" => target.id.clone(),
                        "result" => attempt.label()
                    )
                    .increment(0);
                }
            }
        }
    }
}

/// Registers a mesh gateway's counters and gauges at zero: every result on both
/// listeners, open connections, bytes.
pub fn register_gateway() {
    for listener in ["lan", "wan"] {
        metrics::gauge!(GATEWAY_ACTIVE, "listener" => listener).increment(0.0);
        for outcome in GatewayOutcome::ALL {
            metrics::counter!(GATEWAY_CONNECTIONS, "listener" => listener, "result" => outcome.label())
                .increment(0);
        }
    }
    for flow in ["rx", "tx"] {
        metrics::counter!(GATEWAY_BYTES, "flow" => flow).increment(0);
    }
}

/// The family `name` belongs to, if any: `name` itself, or a histogram's `_bucket`,
/// `_sum` or `_count` series.
pub fn family_of(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| {
        f.name == name
            || (f.kind == Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(f.name)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    #[test]
    fn names_are_unique_and_typed_by_their_suffix() {
        let mut seen = std::collections::HashSet::new();
        for f in FAMILIES {
            assert!(seen.insert(f.name), "{} twice", f.name);
            assert!(f.name.starts_with("ferrule_"), "{}", f.name);
            assert_eq!(f.name.ends_with("_total"), f.kind == Counter, "{}", f.name);
            if f.kind == Histogram {
                assert!(f.name.ends_with("_seconds"), "{}", f.name);
            }
            assert!(f.help.ends_with('.'), "{}", f.name);
        }
    }

    #[test]
    fn a_fresh_sidecar_shows_help_type_and_zero_counters() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            register_sidecar();
        });
        let text = handle.render();
        for result in [
            "accepted",
            "probe",
            "tls_error",
            "denied",
            "app_unreachable",
        ] {
            let line = format!("{INBOUND_CONNECTIONS}{{result=\"{result}\"}} 0");
            assert!(text.contains(&line), "{line} in:\n{text}");
        }
        let help = format!("# HELP {INBOUND_CONNECTIONS} Connections accepted");
        assert!(text.contains(&help), "{text}");
        assert!(text.contains(&format!("# TYPE {TLS_HANDSHAKES} counter")));
        assert!(!text.contains("ferrule_gateway_"), "{text}");
    }

    #[test]
    fn a_fresh_gateway_shows_every_result_on_both_listeners() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, register_gateway);
        let text = handle.render();
        for listener in ["lan", "wan"] {
            for outcome in GatewayOutcome::ALL {
                let series = format!(
                    "{GATEWAY_CONNECTIONS}{{listener=\"{listener}\",result=\"{}\"}} 0",
                    outcome.label()
                );
                assert!(text.contains(&series), "{series} in:\n{text}");
            }
        }
    }

    #[test]
    fn histogram_series_belong_to_their_family() {
        let bucket = format!("{HTTP_REQUEST_DURATION}_bucket");
        assert_eq!(
            family_of(&bucket).map(|f| f.name),
            Some(HTTP_REQUEST_DURATION)
        );
        assert!(family_of("ferrule_inbound_connections_total_bucket").is_none());
        assert!(family_of("ferrule_nonsense").is_none());
    }
}

/// The README's metrics table against the catalogue: the same names, in either
/// direction, with the same type and exactly the catalogue's labels.
#[cfg(test)]
mod readme {
    use super::*;

    const README: &str = include_str!("../../../README.md");

    /// `(name, type, labels named)` of each row of the table under `### Metrics`.
    fn rows() -> Vec<(String, String, Vec<String>)> {
        let section = README
            .split("\n### Metrics\n")
            .nth(1)
            .and_then(|rest| rest.split("\n### ").next())
            .expect("a ### Metrics section in README.md");
        section
            .lines()
            .filter(|line| line.starts_with("| `ferrule_"))
            .map(|line| {
                let cells: Vec<&str> = line.split(" | ").map(str::trim).collect();
                let name = cells[0].trim_start_matches("| ").trim_matches('`');
                let labels = cells
                    .get(2)
                    .map(|cell| {
                        cell.split('`')
                            .skip(1)
                            .step_by(2)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                (name.to_owned(), cells[1].to_owned(), labels)
            })
            .collect()
    }

    #[test]
    fn every_metric_is_in_the_readme_table_and_nothing_else() {
        let rows = rows();
        for family in FAMILIES {
            let row = rows.iter().find(|(name, _, _)| name == family.name);
            let Some((_, kind, labels)) = row else {
                panic!("{} is described but not in README.md's table", family.name);
            };
            assert_eq!(kind, family.kind.as_str(), "{}", family.name);
            let mut want: Vec<&str> = family.labels.to_vec();
            let mut got: Vec<&str> = labels.iter().map(String::as_str).collect();
            want.sort_unstable();
            got.sort_unstable();
            // Label values are written plainly; only label names are in backticks.
            assert_eq!(got, want, "labels of {} in README.md", family.name);
        }
        for (name, _, _) in &rows {
            assert!(
                FAMILIES.iter().any(|f| f.name == name),
                "README.md's table lists {name}, which is not described"
            );
        }
    }
}
