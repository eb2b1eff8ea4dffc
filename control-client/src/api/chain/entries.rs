//! The `service-resolver`, `service-splitter` and `service-router` config entries as
//! current Consul reads and writes them through `/v1/config`, Enterprise-only fields
//! (`Namespace`, `Partition`, `SamenessGroup`) included so that nothing a real agent
//! sends is lost. The compiled chain embeds the route and split types defined here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{GoDuration, deserialize_weight, serialize_weight};
use crate::api::{empty_as_null, is_false, is_zero, nullable};

type Meta = BTreeMap<String, String>;

/// `service-resolver`: which instances satisfy a request for a service (subsets, a
/// redirect, failover), and how to connect to them (timeouts, load balancing).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceResolverEntry {
    #[serde(alias = "kind", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(alias = "name", deserialize_with = "nullable")]
    pub name: String,
    #[serde(
        alias = "namespace",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    #[serde(
        alias = "partition",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub partition: String,
    #[serde(
        alias = "default_subset",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub default_subset: String,
    #[serde(
        alias = "subsets",
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub subsets: BTreeMap<String, ServiceResolverSubset>,
    #[serde(alias = "redirect", skip_serializing_if = "Option::is_none")]
    pub redirect: Option<ServiceResolverRedirect>,
    /// Keyed by the subset it applies to, `"*"` for any other.
    #[serde(
        alias = "failover",
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub failover: BTreeMap<String, ServiceResolverFailover>,
    #[serde(alias = "connect_timeout", skip_serializing_if = "GoDuration::is_zero")]
    pub connect_timeout: GoDuration,
    #[serde(alias = "request_timeout", skip_serializing_if = "GoDuration::is_zero")]
    pub request_timeout: GoDuration,
    #[serde(
        alias = "prioritize_by_locality",
        skip_serializing_if = "Option::is_none"
    )]
    pub prioritize_by_locality: Option<PrioritizeByLocality>,
    #[serde(alias = "load_balancer", skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(
        alias = "meta",
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub meta: Meta,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_zero")]
    pub create_index: u64,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_zero")]
    pub modify_index: u64,
}

impl ServiceResolverEntry {
    /// Consul's `IsDefault`: a resolver that changes nothing about resolution.
    pub fn is_default(&self) -> bool {
        self.default_subset.is_empty()
            && self.subsets.is_empty()
            && self.redirect.is_none()
            && self.failover.is_empty()
            && self.connect_timeout.is_zero()
            && self.request_timeout.is_zero()
            && self.load_balancer.is_none()
    }
}

/// A named subset: a filter over the health entries of the service's instances.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceResolverSubset {
    #[serde(
        alias = "filter",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub filter: String,
    #[serde(
        alias = "only_passing",
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub only_passing: bool,
}

/// Where to resolve instead: another service, subset, namespace, partition,
/// datacenter, peer or sameness group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceResolverRedirect {
    #[serde(
        alias = "service",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub service: String,
    #[serde(
        alias = "service_subset",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub service_subset: String,
    #[serde(
        alias = "namespace",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    #[serde(
        alias = "partition",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub partition: String,
    #[serde(
        alias = "sameness_group",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub sameness_group: String,
    #[serde(
        alias = "datacenter",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub datacenter: String,
    #[serde(
        alias = "peer",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub peer: String,
}

/// Where to go when the primary target has no healthy instance: either
/// `Service`/`ServiceSubset`/`Namespace`/`Datacenters`, or a list of `Targets`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceResolverFailover {
    #[serde(
        alias = "service",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub service: String,
    #[serde(
        alias = "service_subset",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub service_subset: String,
    #[serde(
        alias = "namespace",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    #[serde(
        alias = "sameness_group",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub sameness_group: String,
    #[serde(
        alias = "datacenters",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub datacenters: Vec<String>,
    #[serde(
        alias = "targets",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub targets: Vec<ServiceResolverFailoverTarget>,
    #[serde(alias = "policy", skip_serializing_if = "Option::is_none")]
    pub policy: Option<ServiceResolverFailoverPolicy>,
}

/// One failover destination of `Failover[...].Targets`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceResolverFailoverTarget {
    #[serde(
        alias = "service",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub service: String,
    #[serde(
        alias = "service_subset",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub service_subset: String,
    #[serde(
        alias = "partition",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub partition: String,
    #[serde(
        alias = "namespace",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    #[serde(
        alias = "datacenter",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub datacenter: String,
    #[serde(
        alias = "peer",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub peer: String,
}

/// `Failover[...].Policy`: `Mode` is `""`, `default` or `order-by-locality`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceResolverFailoverPolicy {
    #[serde(
        alias = "mode",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub mode: String,
    #[serde(
        alias = "regions",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub regions: Vec<String>,
}

/// `PrioritizeByLocality`: `Mode` is `""`, `none` or `failover`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PrioritizeByLocality {
    #[serde(
        alias = "mode",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub mode: String,
}

/// How callers spread requests over the instances: Envoy's policy names
/// (`round_robin`, `least_request`, `ring_hash`, `maglev`, `random`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LoadBalancer {
    #[serde(
        alias = "policy",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub policy: String,
    #[serde(alias = "ring_hash_config", skip_serializing_if = "Option::is_none")]
    pub ring_hash_config: Option<RingHashConfig>,
    #[serde(
        alias = "least_request_config",
        skip_serializing_if = "Option::is_none"
    )]
    pub least_request_config: Option<LeastRequestConfig>,
    #[serde(
        alias = "hash_policies",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub hash_policies: Vec<HashPolicy>,
}

impl LoadBalancer {
    /// `ring_hash` and `maglev` hash requests onto instances.
    pub fn is_hash_based(&self) -> bool {
        matches!(self.policy.as_str(), "ring_hash" | "maglev")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RingHashConfig {
    #[serde(
        alias = "minimum_ring_size",
        deserialize_with = "nullable",
        skip_serializing_if = "is_zero"
    )]
    pub minimum_ring_size: u64,
    #[serde(
        alias = "maximum_ring_size",
        deserialize_with = "nullable",
        skip_serializing_if = "is_zero"
    )]
    pub maximum_ring_size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LeastRequestConfig {
    #[serde(
        alias = "choice_count",
        deserialize_with = "nullable",
        skip_serializing_if = "is_zero"
    )]
    pub choice_count: u32,
}

/// What a hash-based policy hashes: a `header`, `cookie` or `query_parameter` named
/// by `FieldValue`, or the source address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HashPolicy {
    #[serde(
        alias = "field",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub field: String,
    #[serde(
        alias = "field_value",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub field_value: String,
    #[serde(alias = "cookie_config", skip_serializing_if = "Option::is_none")]
    pub cookie_config: Option<CookieConfig>,
    #[serde(
        rename = "SourceIP",
        alias = "source_ip",
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub source_ip: bool,
    #[serde(
        alias = "terminal",
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub terminal: bool,
}

/// The cookie a `cookie` hash policy has the proxy generate. Consul has no string
/// marshaller for `TTL`: it goes out as integer nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CookieConfig {
    #[serde(
        alias = "session",
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub session: bool,
    #[serde(
        rename = "TTL",
        alias = "ttl",
        serialize_with = "GoDuration::serialize_nanos",
        skip_serializing_if = "GoDuration::is_zero"
    )]
    pub ttl: GoDuration,
    #[serde(
        alias = "path",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub path: String,
}

/// `service-splitter`: shares of a service's traffic sent to other services or subsets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceSplitterEntry {
    #[serde(alias = "kind", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(alias = "name", deserialize_with = "nullable")]
    pub name: String,
    #[serde(
        alias = "namespace",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    #[serde(
        alias = "partition",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub partition: String,
    /// Go leaves an unset list `null`.
    #[serde(
        alias = "splits",
        deserialize_with = "nullable",
        serialize_with = "empty_as_null"
    )]
    pub splits: Vec<ServiceSplit>,
    #[serde(
        alias = "meta",
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub meta: Meta,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_zero")]
    pub create_index: u64,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_zero")]
    pub modify_index: u64,
}

/// One share: a weight from 0 to 100 in steps of 0.01, and where it goes (empty
/// fields mean the splitter's own service, the default subset, the same namespace).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceSplit {
    #[serde(
        alias = "weight",
        serialize_with = "serialize_weight",
        deserialize_with = "deserialize_weight"
    )]
    pub weight: f32,
    #[serde(
        alias = "service",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub service: String,
    #[serde(
        alias = "service_subset",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub service_subset: String,
    #[serde(
        alias = "namespace",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    #[serde(
        alias = "partition",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub partition: String,
    #[serde(alias = "request_headers", skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HttpHeaderModifiers>,
    #[serde(alias = "response_headers", skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HttpHeaderModifiers>,
}

/// Header changes on the way through: `Add` appends, `Set` replaces, `Remove` strips.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HttpHeaderModifiers {
    #[serde(
        alias = "add",
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub add: BTreeMap<String, String>,
    #[serde(
        alias = "set",
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub set: BTreeMap<String, String>,
    #[serde(
        alias = "remove",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub remove: Vec<String>,
}

impl HttpHeaderModifiers {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }
}

/// `service-router`: L7 routes, the first match wins; what matches none goes to the
/// router's own service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRouterEntry {
    #[serde(alias = "kind", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(alias = "name", deserialize_with = "nullable")]
    pub name: String,
    #[serde(
        alias = "namespace",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    #[serde(
        alias = "partition",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub partition: String,
    /// Go leaves an unset list `null`.
    #[serde(
        alias = "routes",
        deserialize_with = "nullable",
        serialize_with = "empty_as_null"
    )]
    pub routes: Vec<ServiceRoute>,
    #[serde(
        alias = "meta",
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub meta: Meta,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_zero")]
    pub create_index: u64,
    #[serde(deserialize_with = "nullable", skip_serializing_if = "is_zero")]
    pub modify_index: u64,
}

/// One route: what it matches (nothing: everything) and where it sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRoute {
    #[serde(
        rename = "Match",
        alias = "match",
        skip_serializing_if = "Option::is_none"
    )]
    pub route_match: Option<ServiceRouteMatch>,
    #[serde(alias = "destination", skip_serializing_if = "Option::is_none")]
    pub destination: Option<ServiceRouteDestination>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRouteMatch {
    #[serde(
        rename = "HTTP",
        alias = "http",
        skip_serializing_if = "Option::is_none"
    )]
    pub http: Option<ServiceRouteHttpMatch>,
}

/// HTTP criteria; all that are set must match. At most one of the path criteria.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRouteHttpMatch {
    #[serde(
        alias = "path_exact",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub path_exact: String,
    #[serde(
        alias = "path_prefix",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub path_prefix: String,
    #[serde(
        alias = "path_regex",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub path_regex: String,
    #[serde(
        alias = "case_insensitive",
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub case_insensitive: bool,
    #[serde(
        alias = "header",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub header: Vec<ServiceRouteHttpMatchHeader>,
    #[serde(
        alias = "query_param",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub query_param: Vec<ServiceRouteHttpMatchQueryParam>,
    #[serde(
        alias = "methods",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub methods: Vec<String>,
}

impl ServiceRouteHttpMatch {
    /// No criterion at all: matches every request.
    pub fn is_empty(&self) -> bool {
        self.path_exact.is_empty()
            && self.path_prefix.is_empty()
            && self.path_regex.is_empty()
            && self.header.is_empty()
            && self.query_param.is_empty()
            && self.methods.is_empty()
    }
}

/// A header criterion: exactly one of `Present`, `Exact`, `Prefix`, `Suffix`, `Regex`;
/// `Invert` negates it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRouteHttpMatchHeader {
    #[serde(alias = "name", deserialize_with = "nullable")]
    pub name: String,
    #[serde(
        alias = "present",
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub present: bool,
    #[serde(
        alias = "exact",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub exact: String,
    #[serde(
        alias = "prefix",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub prefix: String,
    #[serde(
        alias = "suffix",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub suffix: String,
    #[serde(
        alias = "regex",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub regex: String,
    #[serde(
        alias = "invert",
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub invert: bool,
}

/// A query parameter criterion: exactly one of `Present`, `Exact`, `Regex`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRouteHttpMatchQueryParam {
    #[serde(alias = "name", deserialize_with = "nullable")]
    pub name: String,
    #[serde(
        alias = "present",
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub present: bool,
    #[serde(
        alias = "exact",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub exact: String,
    #[serde(
        alias = "regex",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub regex: String,
}

/// Where a matching request goes and how it is proxied there. Consul marshals both
/// timeouts as Go duration strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRouteDestination {
    #[serde(
        alias = "service",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub service: String,
    #[serde(
        alias = "service_subset",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub service_subset: String,
    #[serde(
        alias = "namespace",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    #[serde(
        alias = "partition",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub partition: String,
    #[serde(
        alias = "prefix_rewrite",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub prefix_rewrite: String,
    #[serde(alias = "request_timeout", skip_serializing_if = "GoDuration::is_zero")]
    pub request_timeout: GoDuration,
    #[serde(alias = "idle_timeout", skip_serializing_if = "GoDuration::is_zero")]
    pub idle_timeout: GoDuration,
    #[serde(
        alias = "num_retries",
        deserialize_with = "nullable",
        skip_serializing_if = "is_zero"
    )]
    pub num_retries: u32,
    #[serde(
        alias = "retry_on_connect_failure",
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub retry_on_connect_failure: bool,
    #[serde(
        alias = "retry_on",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub retry_on: Vec<String>,
    #[serde(
        alias = "retry_on_status_codes",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub retry_on_status_codes: Vec<u32>,
    #[serde(alias = "request_headers", skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HttpHeaderModifiers>,
    #[serde(alias = "response_headers", skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HttpHeaderModifiers>,
}
