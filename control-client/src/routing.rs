//! Where an upstream's traffic goes: Consul's compiled discovery chain, reduced to what
//! the data plane acts on, with the healthy instances of every target filled in.
//!
//! The chain is a graph of routers, splitters and resolvers (see
//! `docs/consul-semantics.md#discovery-chain`). The proxy never walks it: a source
//! flattens it into [`Routing`], whose shape is what a request needs:
//!
//! ```text
//! Routing
//!   routes[]    first match wins; the last one matches everything (the chain's
//!               implicit catch-all, or the only route of a tcp upstream)
//!     splits[]  weighted, total 10,000 (hundredths of a percent); each names a cluster
//!   clusters[]  one per resolver node: connect timeout, load balancing, and its targets,
//!               the primary first and then the failover targets in order
//!     targets[] the chain's targets: SNI, the SPIFFE ID the server must present, the
//!               healthy instances
//! ```
//!
//! An L4 (`tcp`) upstream uses `routes[0]` alone. A static-mode upstream is a routing
//! with one route, one cluster and one target ([`Routing::direct`]).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use regex::Regex;
use serde::Serialize;

use crate::identity::ServiceId;
use crate::model::Endpoint;

/// One upstream's routes, splits, clusters and targets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Routing {
    /// First match wins. Never empty: the last route matches every request.
    pub routes: Vec<Route>,
    /// Indexed by [`Split::cluster`].
    pub clusters: Vec<Cluster>,
}

impl Routing {
    /// The routing of an upstream that is not shaped by a chain: every request and
    /// connection to `target`, dialled within `connect_timeout`, round robin.
    pub fn direct(target: Target, connect_timeout: Duration) -> Routing {
        Routing {
            routes: vec![Route::to_cluster(0)],
            clusters: vec![Cluster {
                name: target.id.clone(),
                connect_timeout,
                request_timeout: None,
                load_balancer: LoadBalancer::default(),
                targets: vec![target],
            }],
        }
    }

    /// The route an L4 connection takes: the last one, which matches everything.
    pub fn catch_all(&self) -> Option<&Route> {
        self.routes.last()
    }

    /// Every target of every cluster, each once (a target may serve several clusters).
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        let mut seen = std::collections::HashSet::new();
        self.clusters
            .iter()
            .flat_map(|c| c.targets.iter())
            .filter(move |t| seen.insert(t.id.as_str()))
    }

    /// Whether any target has an instance to dial.
    pub fn has_endpoints(&self) -> bool {
        self.targets().any(|t| !t.endpoints.is_empty())
    }
}

/// One route: which requests it takes, and what happens to them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// Never empty; weights total [`TOTAL_WEIGHT`]. A route to one destination has one
    /// split of the whole weight.
    pub splits: Vec<Split>,
    /// Replaces the matched path prefix (or the whole path of an exact match).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// How long the response headers may take, per try; `None`: the cluster's, else the
    /// upstream listener's; `Some(ZERO)`: no limit at all (Consul's negative
    /// `RequestTimeout`, which Envoy gets as a zero route timeout).
    #[serde(
        serialize_with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_timeout: Option<Duration>,
    /// A stream with no activity this long is reset; `None`: no per-route limit;
    /// `Some(ZERO)`: none at all, not even the listener's (Consul's negative
    /// `IdleTimeout`).
    #[serde(
        serialize_with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub request_headers: HeaderChanges,
    pub response_headers: HeaderChanges,
}

impl Route {
    /// A route that takes every request to cluster `cluster`, unchanged.
    pub fn to_cluster(cluster: usize) -> Route {
        Route {
            matcher: RouteMatch::default(),
            splits: vec![Split {
                weight: TOTAL_WEIGHT,
                cluster,
                request_headers: HeaderChanges::default(),
                response_headers: HeaderChanges::default(),
            }],
            prefix_rewrite: None,
            request_timeout: None,
            idle_timeout: None,
            retry: RetryPolicy::default(),
            request_headers: HeaderChanges::default(),
            response_headers: HeaderChanges::default(),
        }
    }
}

/// Split weights are hundredths of a percent: Consul's 0.01 granularity, as Envoy's
/// weighted clusters get them.
pub const TOTAL_WEIGHT: u32 = 10_000;

/// Which requests a route takes: every condition must hold. The default matches all.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// Path conditions ignore ASCII case.
    pub case_insensitive: bool,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    /// Upper case; empty: any method.
    pub methods: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum PathMatch {
    #[default]
    Any,
    Exact(String),
    Prefix(String),
    /// Matches the whole path (RE2 semantics: anchored at both ends).
    Regex(#[serde(serialize_with = "regex_text")] Regex),
}

/// A condition on one request header. Several values of the header are matched as
/// one, joined by `,`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeaderMatch {
    /// Lower case.
    pub name: String,
    pub value: ValueMatch,
    /// The condition holds when the match does not.
    pub invert: bool,
}

/// A condition on one query parameter (its first occurrence, percent-decoded).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryMatch {
    pub name: String,
    pub value: ValueMatch,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum ValueMatch {
    Present,
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// Matches the whole value.
    Regex(#[serde(serialize_with = "regex_text")] Regex),
}

/// One weighted destination of a route.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Split {
    /// Of [`TOTAL_WEIGHT`]; may be 0.
    pub weight: u32,
    /// Index into [`Routing::clusters`].
    pub cluster: usize,
    pub request_headers: HeaderChanges,
    pub response_headers: HeaderChanges,
}

/// Header changes, applied in the order remove, set, add (as Envoy applies Consul's).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HeaderChanges {
    /// Appended, keeping any value already there.
    #[serde(serialize_with = "header_pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Replacing any value already there.
    #[serde(serialize_with = "header_pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "header_names")]
    pub remove: Vec<HeaderName>,
}

impl HeaderChanges {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }
}

/// When a request is tried again, and how often. The default never retries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Tries after the first; 0: none.
    pub num_retries: u32,
    /// Envoy's `retry_on` conditions (`5xx`, `gateway-error`, `reset`,
    /// `connect-failure`, `retriable-4xx`, `refused-stream`, `cancelled`,
    /// `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`), with
    /// `connect-failure` included when Consul's `RetryOnConnectFailure` is set and
    /// `retriable-status-codes` when `on_status_codes` is not empty.
    pub on: Vec<String>,
    pub on_status_codes: Vec<u16>,
}

/// One resolver node: a set of targets tried in order, the way instances are chosen
/// among a target's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    /// The resolver's name in the chain (its primary target's ID).
    pub name: String,
    #[serde(serialize_with = "duration")]
    pub connect_timeout: Duration,
    /// The resolver's `RequestTimeout`, for routes that set none. The Consul source
    /// leaves it `None`: Consul's Envoy applies a resolver's timeout only when the chain
    /// starts at that resolver, and then it is on the one route.
    #[serde(
        serialize_with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_timeout: Option<Duration>,
    pub load_balancer: LoadBalancer,
    /// The primary target first, then the failover targets in order. Traffic goes to
    /// the first one with a healthy instance.
    pub targets: Vec<Target>,
}

impl Cluster {
    /// The target traffic goes to now: the first with an instance to dial.
    pub fn active_target(&self) -> Option<&Target> {
        self.targets.iter().find(|t| !t.endpoints.is_empty())
    }
}

/// One target of the chain: a service (or a subset of it) in a datacenter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// The chain's target ID, `[<subset>.]<svc>.<ns>.<partition>.<dc>`; the `target`
    /// metric label (bounded by configuration, not by traffic).
    pub id: String,
    /// The TLS server name sent to its instances (and to the mesh gateways that lead
    /// to them, which route on it).
    pub sni: String,
    /// The SPIFFE ID its instances' certificates must carry, exactly. A dial checks
    /// each endpoint's own `identity`, which is this one for a chain target (also
    /// behind a gateway) and the instance's own for a prepared query's.
    pub identity: ServiceId,
    /// Its healthy instances (critical never; warning unless the subset says
    /// `OnlyPassing`), or the mesh gateways that stand in for them.
    pub endpoints: Vec<Endpoint>,
}

/// How one instance of a target is chosen, Consul's `LoadBalancer`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LoadBalancer {
    pub policy: LbPolicy,
    /// For `ring_hash` and `maglev`: what a request's hash is made of. No policy that
    /// yields a value: a random instance.
    pub hash_policies: Vec<HashPolicy>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    /// The instance with fewer requests in flight among `choice_count` random ones.
    LeastRequest {
        choice_count: u32,
    },
    Random,
    RingHash {
        minimum_ring_size: u64,
        maximum_ring_size: u64,
    },
    Maglev,
}

/// One input of a request's hash. Policies are evaluated in order and their hashes
/// combined; a `terminal` one that yields a value ends the evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HashPolicy {
    pub on: HashOn,
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    /// A request header's value (lower-case name).
    Header(String),
    /// A cookie's value. With a `ttl`, a request without the cookie gets one generated
    /// and set on the response (Envoy's cookie affinity).
    Cookie {
        name: String,
        #[serde(
            serialize_with = "optional_duration",
            skip_serializing_if = "Option::is_none"
        )]
        ttl: Option<Duration>,
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<String>,
    },
    QueryParameter(String),
    /// The application's address as the upstream listener saw it.
    SourceIp,
}

impl PartialEq for PathMatch {
    fn eq(&self, other: &PathMatch) -> bool {
        match (self, other) {
            (PathMatch::Any, PathMatch::Any) => true,
            (PathMatch::Exact(a), PathMatch::Exact(b))
            | (PathMatch::Prefix(a), PathMatch::Prefix(b)) => a == b,
            (PathMatch::Regex(a), PathMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl PartialEq for ValueMatch {
    fn eq(&self, other: &ValueMatch) -> bool {
        match (self, other) {
            (ValueMatch::Present, ValueMatch::Present) => true,
            (ValueMatch::Exact(a), ValueMatch::Exact(b))
            | (ValueMatch::Prefix(a), ValueMatch::Prefix(b))
            | (ValueMatch::Suffix(a), ValueMatch::Suffix(b)) => a == b,
            (ValueMatch::Regex(a), ValueMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

/// The chain's ID of a target: `[<subset>.]<svc>.<ns>.<partition>.<dc>`, an empty
/// namespace or partition spelled `default`.
pub fn target_id(id: &ServiceId, subset: Option<&str>) -> String {
    let or_default = |s: &str| {
        if s.is_empty() {
            crate::identity::DEFAULT.to_owned()
        } else {
            s.to_owned()
        }
    };
    let name = format!(
        "{}.{}.{}.{}",
        id.service,
        or_default(&id.namespace),
        or_default(&id.partition),
        id.datacenter
    );
    match subset.filter(|s| !s.is_empty()) {
        Some(subset) => format!("{subset}.{name}"),
        None => name,
    }
}

impl Target {
    /// The target of `identity`'s service (or its `subset`), dialling `endpoints`:
    /// Consul's target ID and SNI for it.
    pub fn new(identity: ServiceId, subset: Option<&str>, endpoints: Vec<Endpoint>) -> Target {
        Target {
            id: target_id(&identity, subset),
            sni: crate::model::service_sni(&identity, subset),
            identity,
            endpoints,
        }
    }
}

/// A shared, cheaply cloned routing, as `UpstreamConfig` holds it.
pub type SharedRouting = Arc<Routing>;

fn duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::duration::format(*d))
}

fn optional_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration(d, s),
        None => s.serialize_none(),
    }
}

fn regex_text<S: serde::Serializer>(r: &Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

fn header_pairs<S: serde::Serializer>(
    pairs: &[(HeaderName, HeaderValue)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(pairs.iter().map(|(name, value)| {
        (
            name.as_str(),
            value.to_str().unwrap_or("<not text>").to_owned(),
        )
    }))
}

fn header_names<S: serde::Serializer>(names: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(names.iter().map(HeaderName::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: &str, endpoints: usize) -> Target {
        let identity = ServiceId::new("td.consul", "default", "dc1", "api");
        Target {
            id: id.to_owned(),
            sni: crate::model::service_sni(&identity, None),
            endpoints: (0..endpoints)
                .map(|i| Endpoint {
                    addr: format!("127.0.0.1:{}", 21000 + i),
                    identity: identity.clone(),
                })
                .collect(),
            identity,
        }
    }

    #[test]
    fn a_direct_routing_sends_everything_to_its_one_target() {
        let routing = Routing::direct(target("api", 2), Duration::from_secs(5));
        let route = routing.catch_all().unwrap();
        assert_eq!(route.splits.len(), 1);
        assert_eq!(route.splits[0].weight, TOTAL_WEIGHT);
        let cluster = &routing.clusters[route.splits[0].cluster];
        assert_eq!(cluster.active_target().unwrap().id, "api");
        assert!(routing.has_endpoints());
        let json = serde_json::to_value(&routing).unwrap();
        assert_eq!(json["clusters"][0]["connect_timeout"], "5s");
        assert_eq!(json["routes"][0]["match"]["path"]["kind"], "any");
    }

    #[test]
    fn the_active_target_is_the_first_with_an_instance() {
        let cluster = Cluster {
            name: "api.default.default.dc1".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: None,
            load_balancer: LoadBalancer::default(),
            targets: vec![target("primary", 0), target("backup", 1), target("last", 1)],
        };
        assert_eq!(cluster.active_target().unwrap().id, "backup");
        let routing = Routing {
            routes: vec![Route::to_cluster(0), Route::to_cluster(0)],
            clusters: vec![cluster.clone(), cluster],
        };
        assert_eq!(routing.targets().count(), 3, "each target once");
    }
}
