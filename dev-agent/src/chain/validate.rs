//! What Consul's servers check in one `service-resolver`, `service-splitter` or
//! `service-router` entry before they store it (each kind's `Normalize` then
//! `Validate`), with Consul's error texts, and the Community Edition refusals of
//! Enterprise-only fields (`Setting Namespace requires Consul Enterprise`). What only
//! shows when the entries are put together (protocols, subsets that do not exist,
//! redirect loops) is found by compiling the chains (`compile`).

use std::collections::BTreeMap;

use regex::Regex;

use ferrule_control::api::chain::{
    GoDuration, LoadBalancer, ServiceResolverEntry, ServiceResolverFailover,
    ServiceResolverRedirect, ServiceRouterEntry, ServiceSplit, ServiceSplitterEntry,
};

use super::graph::{normalize_weight, scale_weight};
use crate::filter;

const META_MAX_PAIRS: usize = 64;
const META_KEY_MAX: usize = 128;
const META_VALUE_MAX: usize = 512;
const SUBSET_MAX: usize = 63;
const HTTP_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
];
const RETRY_CONDITIONS: [&str; 12] = [
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// `validateConfigEntryMeta`: Go's multierror of every problem.
fn meta(meta: &BTreeMap<String, String>) -> Result<(), String> {
    let mut errors = Vec::new();
    if meta.len() > META_MAX_PAIRS {
        errors.push(format!(
            "Meta exceeds maximum element count {META_MAX_PAIRS}"
        ));
    }
    for (key, value) in meta {
        if key.len() > META_KEY_MAX {
            errors.push(format!(
                "Meta key {key:?} exceeds maximum length {META_KEY_MAX}"
            ));
        }
        if value.len() > META_VALUE_MAX {
            errors.push(format!(
                "Meta value for key {key:?} exceeds maximum length {META_VALUE_MAX}"
            ));
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    let noun = if errors.len() == 1 { "error" } else { "errors" };
    let list: String = errors.iter().map(|e| format!("\t* {e}\n")).collect();
    Err(format!("{} {noun} occurred:\n{list}\n", errors.len()))
}

/// A subset name goes into SNI: a DNS label.
fn subset_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > SUBSET_MAX {
        return Err("must be non-empty and 63 characters or fewer".to_owned());
    }
    let valid = Regex::new("^[a-z0-9]([a-z0-9-]*[a-z0-9])?$").is_ok_and(|re| re.is_match(name));
    if !valid {
        return Err("must be 63 characters or fewer, begin or end with lower case alphanumeric characters, and contain lower case alphanumeric characters or '-' in between".to_owned());
    }
    Ok(())
}

/// `service-resolver`: subsets, the default subset, the redirect, failover, timeouts
/// and the load balancer.
pub(super) fn resolver(entry: &ServiceResolverEntry) -> Result<(), String> {
    if entry.name.is_empty() {
        return Err("Name is required".to_owned());
    }
    meta(&entry.meta)?;
    if entry
        .prioritize_by_locality
        .as_ref()
        .is_some_and(|p| !p.mode.is_empty())
    {
        return Err("Prioritize-by-locality requires Consul Enterprise ".to_owned());
    }
    for (name, subset) in &entry.subsets {
        if name.is_empty() {
            return Err("Subset defined with empty name".to_owned());
        }
        subset_name(name).map_err(|e| format!("Subset {name:?} is invalid: {e}"))?;
        if !subset.filter.is_empty() {
            filter::parse(&subset.filter).map_err(|e| {
                format!("Filter for subset {name:?} is not a valid expression: {e}")
            })?;
        }
    }
    if !entry.default_subset.is_empty() && !entry.subsets.contains_key(&entry.default_subset) {
        return Err(format!(
            "DefaultSubset {:?} is not a valid subset",
            entry.default_subset
        ));
    }
    if let Some(redirect) = &entry.redirect {
        self::redirect(entry, redirect)?;
    }
    for (subset, failover) in &entry.failover {
        self::failover(entry, subset, failover)?;
    }
    for (name, timeout) in [
        ("ConnectTimeout", entry.connect_timeout),
        ("RequestTimeout", entry.request_timeout),
    ] {
        if timeout < GoDuration::ZERO {
            return Err(format!("Bad {name} '{timeout}', must be >= 0"));
        }
    }
    if let Some(lb) = &entry.load_balancer {
        load_balancer(lb)?;
    }
    Ok(())
}

fn redirect(entry: &ServiceResolverEntry, r: &ServiceResolverRedirect) -> Result<(), String> {
    if !r.partition.is_empty() {
        return Err("Redirect: Setting Partition requires Consul Enterprise".to_owned());
    }
    if !r.namespace.is_empty() {
        return Err("Redirect: Setting Namespace requires Consul Enterprise".to_owned());
    }
    if !r.sameness_group.is_empty() {
        return Err("Redirect: Setting SamenessGroup requires Consul Enterprise".to_owned());
    }
    if !entry.failover.is_empty() {
        return Err("Redirect and Failover cannot both be set".to_owned());
    }
    if *r == ServiceResolverRedirect::default() {
        return Err("Redirect is empty".to_owned());
    }
    let to_self = r.service.is_empty() || r.service == entry.name;
    let error = if !r.peer.is_empty() && !r.service_subset.is_empty() {
        "Redirect.Peer cannot be set with Redirect.ServiceSubset"
    } else if !r.peer.is_empty() && !r.datacenter.is_empty() {
        "Redirect.Peer cannot be set with Redirect.Datacenter"
    } else if r.service.is_empty() && !r.service_subset.is_empty() {
        "Redirect.ServiceSubset defined without Redirect.Service"
    } else if r.service.is_empty() && !r.peer.is_empty() {
        "Redirect.Peer defined without Redirect.Service"
    } else if !r.service_subset.is_empty()
        && to_self
        && !entry.subsets.contains_key(&r.service_subset)
    {
        return Err(format!(
            "Redirect.ServiceSubset {:?} is not a valid subset of {:?}",
            r.service_subset, entry.name
        ));
    } else {
        return Ok(());
    };
    Err(error.to_owned())
}

fn failover(
    entry: &ServiceResolverEntry,
    subset: &str,
    f: &ServiceResolverFailover,
) -> Result<(), String> {
    let prefix = format!("Bad Failover[{subset:?}]: ");
    if !f.namespace.is_empty() {
        return Err(format!(
            "{prefix}Setting Namespace requires Consul Enterprise"
        ));
    }
    if !f.sameness_group.is_empty() {
        return Err(format!(
            "{prefix}Setting SamenessGroup requires Consul Enterprise"
        ));
    }
    if subset != "*" && !entry.subsets.contains_key(subset) {
        return Err(format!("{prefix}not a valid subset subset"));
    }
    if f.service.is_empty()
        && f.service_subset.is_empty()
        && f.datacenters.is_empty()
        && f.targets.is_empty()
    {
        return Err(format!(
            "{prefix}one of Service, ServiceSubset, Namespace, Targets, or Datacenters is required"
        ));
    }
    if f.policy.as_ref().is_some_and(|p| !p.mode.is_empty()) {
        return Err(format!(
            "{prefix}Setting failover policies requires Consul Enterprise"
        ));
    }
    if !f.service_subset.is_empty()
        && (f.service.is_empty() || f.service == entry.name)
        && !entry.subsets.contains_key(&f.service_subset)
    {
        return Err(format!(
            "{prefix}ServiceSubset {:?} is not a valid subset of {:?}",
            f.service_subset, f.service
        ));
    }
    let with_targets = [
        (!f.datacenters.is_empty(), "Datacenters"),
        (!f.service_subset.is_empty(), "ServiceSubset"),
        (!f.service.is_empty(), "Service"),
    ];
    for (set, field) in with_targets {
        if set && !f.targets.is_empty() {
            return Err(format!("{prefix}Targets cannot be set with {field}"));
        }
    }
    failover_targets(entry, subset, f)?;
    if f.datacenters.iter().any(String::is_empty) {
        return Err(format!(
            "Bad Failover[{subset:?}].Datacenters: found empty datacenter"
        ));
    }
    Ok(())
}

fn failover_targets(
    entry: &ServiceResolverEntry,
    subset: &str,
    f: &ServiceResolverFailover,
) -> Result<(), String> {
    for (i, t) in f.targets.iter().enumerate() {
        let prefix = format!("Bad Failover[{subset:?}].Targets[{i}]: ");
        let problem = if !t.partition.is_empty() {
            "Setting Partition requires Consul Enterprise"
        } else if !t.namespace.is_empty() {
            "Setting Namespace requires Consul Enterprise"
        } else if !t.peer.is_empty() && !t.service_subset.is_empty() {
            "Peer cannot be set with ServiceSubset"
        } else if !t.peer.is_empty() && !t.datacenter.is_empty() {
            "Peer cannot be set with Datacenter"
        } else if !t.service_subset.is_empty()
            && (t.service.is_empty() || t.service == entry.name)
            && !entry.subsets.contains_key(&t.service_subset)
        {
            return Err(format!(
                "{prefix}ServiceSubset {:?} is not a valid subset of {:?}",
                t.service_subset, entry.name
            ));
        } else {
            continue;
        };
        return Err(format!("{prefix}{problem}"));
    }
    Ok(())
}

fn load_balancer(lb: &LoadBalancer) -> Result<(), String> {
    let policy = lb.policy.as_str();
    if !matches!(
        policy,
        "" | "random" | "round_robin" | "least_request" | "ring_hash" | "maglev"
    ) {
        return Err(format!(
            "Bad LoadBalancer policy: {policy:?} is not supported"
        ));
    }
    if policy != "ring_hash" && lb.ring_hash_config.is_some() {
        return Err(format!(
            "Bad LoadBalancer configuration. RingHashConfig specified for incompatible load balancing policy {policy:?}"
        ));
    }
    if policy != "least_request" && lb.least_request_config.is_some() {
        return Err(format!(
            "Bad LoadBalancer configuration. LeastRequestConfig specified for incompatible load balancing policy {policy:?}"
        ));
    }
    if !lb.is_hash_based() && !lb.hash_policies.is_empty() {
        return Err(format!(
            "Bad LoadBalancer configuration: HashPolicies specified for non-hash-based Policy: {policy:?}"
        ));
    }
    for (i, hp) in lb.hash_policies.iter().enumerate() {
        let prefix = format!("Bad LoadBalancer HashPolicy[{i}]: ");
        let field = hp.field.as_str();
        let problem = if !matches!(field, "" | "header" | "cookie" | "query_parameter") {
            format!("{field:?} is not a supported field")
        } else if hp.source_ip && !field.is_empty() {
            format!("A single hash policy cannot hash both a source address and a {field:?}")
        } else if hp.source_ip && !hp.field_value.is_empty() {
            "A FieldValue cannot be specified when hashing SourceIP".to_owned()
        } else if !field.is_empty() && hp.field_value.is_empty() {
            format!("Field {field:?} was specified without a FieldValue")
        } else if !hp.field_value.is_empty() && field.is_empty() {
            "FieldValue requires a Field to apply to".to_owned()
        } else if hp.cookie_config.is_some() && field != "cookie" {
            format!("cookie_config provided for {field:?}")
        } else if hp
            .cookie_config
            .as_ref()
            .is_some_and(|c| c.session && !c.ttl.is_zero())
        {
            "a session cookie cannot have an associated TTL".to_owned()
        } else {
            continue;
        };
        return Err(format!("{prefix}{problem}"));
    }
    Ok(())
}

/// `service-splitter`: weights rounded to 0.01 first, then at least one split, no
/// destination twice, and a sum of 100.
pub(super) fn splitter(entry: &mut ServiceSplitterEntry) -> Result<(), String> {
    for split in &mut entry.splits {
        split.weight = normalize_weight(split.weight);
    }
    if entry.name.is_empty() {
        return Err("Name is required".to_owned());
    }
    if entry.splits.is_empty() {
        return Err("no splits configured".to_owned());
    }
    meta(&entry.meta)?;
    // Consul compares whole splits but for the weight; splits that change headers
    // never compare equal there (they hold distinct pointers).
    let key = |s: &ServiceSplit| {
        let service = if s.service.is_empty() {
            entry.name.clone()
        } else {
            s.service.clone()
        };
        (
            service,
            s.service_subset.clone(),
            s.namespace.clone(),
            s.partition.clone(),
        )
    };
    let plain = |s: &&ServiceSplit| s.request_headers.is_none() && s.response_headers.is_none();
    let plain_splits: Vec<&ServiceSplit> = entry.splits.iter().filter(plain).collect();
    for (i, a) in plain_splits.iter().enumerate() {
        if plain_splits[..i].iter().any(|b| key(a) == key(b)) {
            let (service, subset, namespace, partition) = key(a);
            return Err(format!(
                "split destination occurs more than once: service={service:?}, subset={subset:?}, namespace={namespace:?}, partition={partition:?}"
            ));
        }
    }
    let sum: i64 = entry.splits.iter().map(|s| scale_weight(s.weight)).sum();
    if sum != 100 * 100 {
        let shown = sum as f32 / 100.0;
        return Err(format!(
            "the sum of all split weights must be 100, not {shown:.6}"
        ));
    }
    Ok(())
}

/// `service-router`: methods upper-cased first, then each route's match criteria and
/// destination.
pub(super) fn router(entry: &mut ServiceRouterEntry) -> Result<(), String> {
    for route in &mut entry.routes {
        if let Some(http) = route.route_match.as_mut().and_then(|m| m.http.as_mut()) {
            for method in &mut http.methods {
                *method = method.to_ascii_uppercase();
            }
        }
    }
    if entry.name.is_empty() {
        return Err("Name is required".to_owned());
    }
    meta(&entry.meta)?;
    for (i, route) in entry.routes.iter().enumerate() {
        let http = route.route_match.as_ref().and_then(|m| m.http.as_ref());
        let mut rewritable = false;
        if let Some(http) = http {
            rewritable = !http.path_exact.is_empty() || !http.path_prefix.is_empty();
            route_match(i, http)?;
        }
        if let Some(destination) = &route.destination {
            if !destination.prefix_rewrite.is_empty() && !rewritable {
                return Err(format!(
                    "Route[{i}] cannot make use of PrefixRewrite without configuring either PathExact or PathPrefix"
                ));
            }
            if let Some(bad) = destination
                .retry_on
                .iter()
                .find(|r| !RETRY_CONDITIONS.contains(&r.as_str()))
            {
                return Err(format!(
                    "Route[{i}] contains an invalid retry condition: {bad:?}"
                ));
            }
        }
    }
    Ok(())
}

fn route_match(
    i: usize,
    http: &ferrule_control::api::chain::ServiceRouteHttpMatch,
) -> Result<(), String> {
    for (path, field) in [
        (&http.path_exact, "PathExact"),
        (&http.path_prefix, "PathPrefix"),
    ] {
        if !path.is_empty() && !path.starts_with('/') {
            return Err(format!(
                "Route[{i}] {field} doesn't start with '/': {path:?}"
            ));
        }
    }
    let paths = [&http.path_exact, &http.path_prefix, &http.path_regex];
    if paths.iter().filter(|p| !p.is_empty()).count() > 1 {
        return Err(format!(
            "Route[{i}] should only contain at most one of PathExact, PathPrefix, or PathRegex"
        ));
    }
    for (j, h) in http.header.iter().enumerate() {
        if h.name.is_empty() {
            return Err(format!(
                "Route[{i}] Header[{j}] missing required Name field"
            ));
        }
        let parts = [
            !h.exact.is_empty(),
            !h.regex.is_empty(),
            !h.prefix.is_empty(),
            !h.suffix.is_empty(),
            h.present,
        ];
        if parts.iter().filter(|p| **p).count() != 1 {
            return Err(format!(
                "Route[{i}] Header[{j}] should only contain one of Present, Exact, Prefix, Suffix, or Regex"
            ));
        }
    }
    for (j, q) in http.query_param.iter().enumerate() {
        if q.name.is_empty() {
            return Err(format!(
                "Route[{i}] QueryParam[{j}] missing required Name field"
            ));
        }
        let parts = [q.present, !q.exact.is_empty(), !q.regex.is_empty()];
        if parts.iter().filter(|p| **p).count() != 1 {
            return Err(format!(
                "Route[{i}] QueryParam[{j}] should only contain one of Present, Exact, or Regex"
            ));
        }
    }
    let mut seen = Vec::new();
    for method in &http.methods {
        if !HTTP_METHODS.contains(&method.as_str()) {
            return Err(format!(
                "Route[{i}] Methods contains an invalid method {method:?}"
            ));
        }
        if seen.contains(&method) {
            return Err(format!(
                "Route[{i}] Methods contains {method:?} more than once"
            ));
        }
        seen.push(method);
    }
    Ok(())
}
