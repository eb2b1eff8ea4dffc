//! Reading Prometheus text, as scraped from a sidecar's `/metrics`.

use std::collections::BTreeMap;
use std::fmt;

/// One scrape: every sample line, parsed.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Metrics {
    /// Parses the text exposition format. Lines that are not samples are skipped.
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(parse_sample)
            .collect();
        Metrics { samples }
    }

    /// The sum of every sample named `name` whose labels include all of `labels`
    /// (other labels may be present). 0 when there is none: a counter that never
    /// moved is not rendered at all.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
        })
    }

    /// The samples of `name` matching `labels`, summed per value of `label`.
    pub fn by_label(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        label: &str,
    ) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for sample in self.matching(name, labels) {
            if let Some(key) = sample.labels.get(label) {
                *out.entry(key.clone()).or_insert(0.0) += sample.value;
            }
        }
        out
    }

    /// Every metric that has a sample with `label` = `value`, and the sum of those
    /// samples: where a value shows up when the metric names are not known.
    pub fn families_with(&self, label: &str, value: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for sample in &self.samples {
            if sample.labels.get(label).is_some_and(|v| v == value) {
                *out.entry(sample.name.clone()).or_insert(0.0) += sample.value;
            }
        }
        out
    }

    /// Every value `label` takes, over all metrics.
    pub fn label_values(&self, label: &str) -> std::collections::BTreeSet<String> {
        self.samples
            .iter()
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    }

    /// The labels of every sample of `name` whose value is below `threshold`.
    pub fn samples_below(&self, name: &str, threshold: f64) -> Vec<BTreeMap<String, String>> {
        self.matching(name, &[])
            .filter(|s| s.value < threshold)
            .map(|s| s.labels.clone())
            .collect()
    }

    /// Every sample of one metric, one per line, for error messages.
    pub fn show(&self, name: &str) -> String {
        let lines: Vec<String> = self
            .matching(name, &[])
            .map(|s| format!("  {}{:?} {}", s.name, s.labels, s.value))
            .collect();
        if lines.is_empty() {
            format!("  (no {name} samples)")
        } else {
            lines.join("\n")
        }
    }
}

/// A metric name and the labels to select, e.g. `("ferrule_inbound_connections_total",
/// &[("result", "accepted")])`, printable for messages.
#[derive(Debug, Clone, Copy)]
pub struct Selector<'a> {
    pub name: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
}

impl fmt::Display for Selector<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        write!(f, "{}{{{}}}", self.name, labels.join(","))
    }
}

/// `name{k="v",...} value [timestamp]`
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, after_key) = s.split_once('=')?;
        let mut chars = after_key.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        s = &after_key[1 + end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"
# TYPE ferrule_inbound_connections_total counter
ferrule_inbound_connections_total{result="accepted"} 3
ferrule_inbound_connections_total{result="tls_error"} 2
ferrule_authz_decisions_total{layer="l4",decision="deny",source="we\"b"} 1
ferrule_tls_handshake_duration_seconds_bucket{direction="inbound",le="+Inf"} 5
ferrule_leaf_cert_expiry_timestamp_seconds 1.7e9
"#;

    #[test]
    fn selects_by_name_and_a_subset_of_labels() {
        let m = Metrics::parse(SCRAPE);
        let inbound = "ferrule_inbound_connections_total";
        assert_eq!(m.get(inbound, &[("result", "accepted")]), 3.0);
        assert_eq!(m.get(inbound, &[]), 5.0);
        assert_eq!(m.get(inbound, &[("result", "denied")]), 0.0);
        let decisions = "ferrule_authz_decisions_total";
        assert_eq!(
            m.get(decisions, &[("source", "we\"b"), ("decision", "deny")]),
            1.0
        );
        assert_eq!(
            m.get("ferrule_leaf_cert_expiry_timestamp_seconds", &[]),
            1.7e9
        );
        let bucket = "ferrule_tls_handshake_duration_seconds_bucket";
        assert_eq!(m.get(bucket, &[("le", "+Inf")]), 5.0);
    }
}
