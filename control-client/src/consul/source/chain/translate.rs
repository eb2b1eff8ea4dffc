//! A compiled discovery chain translated into the [`Routing`] the proxy follows, the way
//! Consul renders a chain for its Envoy sidecars (see
//! `docs/consul-semantics.md#upstream-discovery`): the router's routes in order (or one
//! catch-all route when the chain starts at a splitter or a resolver), weighted splits
//! of 10,000, and one cluster per resolver with its primary target and then its
//! failover targets.
//!
//! The result is a [`Plan`]: the routing with every target's instances left out, and
//! for each target where its instances come from (which health query, whether only
//! passing instances count). Instances change far more often than the chain, so a
//! chain is translated once per answer and its plan filled in at every publish
//! ([`Plan::routing`]).
//!
//! What Consul would refuse to render (a graph that does not hold together) fails the
//! whole chain; a route whose regex does not compile is left out with a warning and the
//! rest of the chain still applies. Peered targets are left out (no cluster peering).
//!
//! A target in another datacenter is filled in as its mesh gateway mode says
//! (`gateways`): its instances on their WAN address, or the mesh gateways that lead to
//! it, with the target's own server name and identity.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use regex::Regex;

use super::super::endpoints::{HealthKey, TargetHealth};
use super::super::gateways::{GatewayMode, MeshGateways};
use crate::api::chain::{
    CompiledDiscoveryChain, DiscoveryGraphNode, DiscoverySplit, DiscoveryTarget, GoDuration,
    HttpHeaderModifiers, LoadBalancer as ChainLoadBalancer, NODE_RESOLVER, NODE_ROUTER,
    NODE_SPLITTER, ServiceRouteDestination, ServiceRouteHttpMatch, ServiceRouteHttpMatchHeader,
    ServiceRouteHttpMatchQueryParam,
};
use crate::identity::{DEFAULT, ServiceId};
use crate::model::service_sni;
use crate::routing::{
    Cluster, HashOn, HashPolicy, HeaderChanges, HeaderMatch, LbPolicy, LoadBalancer, PathMatch,
    QueryMatch, RetryPolicy, Route, RouteMatch, Routing, Split, TOTAL_WEIGHT, Target, ValueMatch,
    target_id,
};

/// Envoy's `num_retries` when a retry policy leaves it unset, as Consul's does for a
/// destination with retry conditions and no `NumRetries`.
const ENVOY_DEFAULT_RETRIES: u32 = 1;
/// Envoy's defaults for what a resolver's load balancer leaves at zero.
const LEAST_REQUEST_CHOICES: u32 = 2;
const MIN_RING_SIZE: u64 = 1024;
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

/// An upstream's routing before its instances are known.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::consul::source) struct Plan {
    /// Targets without endpoints and with an empty trust domain; a cluster's connect
    /// timeout of zero means the chain set none.
    routing: Routing,
    /// By target ID.
    sources: HashMap<String, TargetSource>,
}

/// Where a target's instances come from.
#[derive(Debug, Clone, PartialEq)]
struct TargetSource {
    health: HealthKey,
    only_passing: bool,
    /// For an SNI made here when the chain gives none.
    subset: String,
    /// How it is reached should it be in another datacenter.
    mode: GatewayMode,
}

/// What a plan is filled in with at publish time.
pub(in crate::consul::source) struct Fill<'a> {
    /// An L4 upstream: only the catch-all route and its clusters.
    pub(in crate::consul::source) tcp: bool,
    /// For clusters whose resolver sets none: the upstream listener's.
    pub(in crate::consul::source) connect_timeout: Duration,
    /// Without it no identity can be pinned: no endpoints.
    pub(in crate::consul::source) trust_domain: Option<&'a str>,
    /// The agent's datacenter (`""`: unknown); instances elsewhere are dialled on their
    /// WAN address.
    pub(in crate::consul::source) local_dc: &'a str,
    pub(in crate::consul::source) health: &'a TargetHealth,
    pub(in crate::consul::source) gateways: &'a MeshGateways,
}

impl Plan {
    /// The routing of an upstream no chain shapes (yet): everything to `service`'s
    /// instances in `datacenter` (`""`: the agent's), reached as `mode` says, as
    /// Consul's default chain has it.
    pub(in crate::consul::source) fn direct(
        service: &str,
        datacenter: &str,
        mode: GatewayMode,
    ) -> Plan {
        let identity = ServiceId::new("", DEFAULT, datacenter, service);
        let target = Target {
            id: target_id(&identity, None),
            sni: String::new(),
            identity,
            endpoints: Vec::new(),
        };
        let source = TargetSource {
            health: HealthKey {
                service: service.to_owned(),
                datacenter: datacenter.to_owned(),
                filter: String::new(),
            },
            only_passing: false,
            subset: String::new(),
            mode,
        };
        Plan {
            sources: HashMap::from([(target.id.clone(), source)]),
            routing: Routing::direct(target, Duration::ZERO),
        }
    }

    /// The health queries this plan's targets need (for `tcp`, only those of the
    /// catch-all route's clusters).
    pub(in crate::consul::source) fn health_keys(
        &self,
        tcp: bool,
    ) -> impl Iterator<Item = &HealthKey> + '_ {
        self.used_sources(tcp).map(|(_, s)| &s.health)
    }

    /// The datacenters whose mesh gateways this plan's targets are reached through,
    /// seen from `local_dc`.
    pub(in crate::consul::source) fn gateway_dcs(&self, tcp: bool, local_dc: &str) -> Vec<String> {
        self.used_sources(tcp)
            .filter_map(|(target, s)| {
                let dc = s.mode.gateway_dc(&target.identity.datacenter, local_dc);
                dc.map(str::to_owned)
            })
            .collect()
    }

    /// The targets used (for `tcp`, only those of the catch-all route's clusters), each
    /// with where its instances come from.
    fn used_sources(&self, tcp: bool) -> impl Iterator<Item = (Target, &TargetSource)> + '_ {
        let routing = if tcp {
            catch_all_only(&self.routing)
        } else {
            self.routing.clone()
        };
        let targets: Vec<Target> = routing.targets().cloned().collect();
        targets
            .into_iter()
            .filter_map(|t| self.sources.get(&t.id).map(|s| (t, s)))
    }

    /// The routing with every target's identity pinned and its healthy instances.
    pub(in crate::consul::source) fn routing(&self, fill: &Fill<'_>) -> Routing {
        let mut routing = if fill.tcp {
            catch_all_only(&self.routing)
        } else {
            self.routing.clone()
        };
        for cluster in &mut routing.clusters {
            if cluster.connect_timeout.is_zero() {
                cluster.connect_timeout = fill.connect_timeout;
            }
            for target in &mut cluster.targets {
                self.fill_target(target, fill);
            }
        }
        routing
    }

    fn fill_target(&self, target: &mut Target, fill: &Fill<'_>) {
        let td = fill.trust_domain.unwrap_or_default();
        target.identity.trust_domain = td.to_owned();
        let Some(source) = self.sources.get(&target.id) else {
            return;
        };
        if target.sni.is_empty() {
            target.sni = service_sni(&target.identity, Some(&source.subset));
        }
        let Some(td) = fill.trust_domain else {
            return;
        };
        let dc = &target.identity.datacenter;
        target.endpoints = match source.mode.gateway_dc(dc, fill.local_dc) {
            None => {
                fill.health
                    .endpoints(&source.health, source.only_passing, dc, fill.local_dc, td)
            }
            // The gateways stand in for the target while it has a healthy instance.
            Some(gateway_dc) if fill.health.any_healthy(&source.health, source.only_passing) => {
                fill.gateways
                    .endpoints(gateway_dc, fill.local_dc, &target.identity)
            }
            Some(_) => Vec::new(),
        };
    }
}

/// `routing` reduced to its catch-all route and the clusters that route uses.
fn catch_all_only(routing: &Routing) -> Routing {
    let Some(route) = routing.catch_all() else {
        return routing.clone();
    };
    let mut route = route.clone();
    let mut clusters: Vec<Cluster> = Vec::new();
    let mut renumbered = BTreeMap::new();
    for split in &mut route.splits {
        let next = renumbered.len();
        let index = *renumbered.entry(split.cluster).or_insert(next);
        if index == next
            && let Some(cluster) = routing.clusters.get(split.cluster)
        {
            clusters.push(cluster.clone());
        }
        split.cluster = index;
    }
    Routing {
        routes: vec![route],
        clusters,
    }
}

/// Translates `chain`; `Err` says why it cannot be followed at all.
pub(in crate::consul::source) fn translate(chain: &CompiledDiscoveryChain) -> Result<Plan, String> {
    let start = chain
        .start()
        .ok_or_else(|| format!("the start node {:?} is not in the chain", chain.start_node))?;
    let mut builder = Builder {
        chain,
        clusters: Vec::new(),
        by_node: HashMap::new(),
        sources: HashMap::new(),
    };
    let routes = match start.node_type.as_str() {
        NODE_ROUTER => builder.router_routes(start)?,
        NODE_SPLITTER => vec![route(RouteMatch::default(), builder.splits(start)?)],
        NODE_RESOLVER => {
            let splits = builder.splits_to(&chain.start_node)?;
            let mut route = route(RouteMatch::default(), splits);
            // A resolver's request timeout applies only where the chain starts at it.
            route.request_timeout = start
                .resolver
                .as_ref()
                .and_then(|r| timeout(r.request_timeout));
            vec![route]
        }
        other => return Err(format!("the start node has an unknown type {other:?}")),
    };
    if routes.is_empty() {
        return Err("no route is left".into());
    }
    Ok(Plan {
        routing: Routing {
            routes,
            clusters: builder.clusters,
        },
        sources: builder.sources,
    })
}

/// A route taking what `matcher` matches to `splits`, unchanged.
fn route(matcher: RouteMatch, splits: Vec<Split>) -> Route {
    Route {
        matcher,
        splits,
        ..Route::to_cluster(0)
    }
}

/// The chain being translated and what is built so far.
struct Builder<'a> {
    chain: &'a CompiledDiscoveryChain,
    clusters: Vec<Cluster>,
    /// Resolver node key → index in `clusters`.
    by_node: HashMap<String, usize>,
    sources: HashMap<String, TargetSource>,
}

impl<'a> Builder<'a> {
    fn node(&self, key: &str) -> Result<&'a DiscoveryGraphNode, String> {
        self.chain
            .nodes
            .get(key)
            .ok_or_else(|| format!("node {key:?} is not in the chain"))
    }

    /// The router's routes in order; Consul's compiler always ends them with a
    /// catch-all to the router's own service.
    fn router_routes(&mut self, router: &DiscoveryGraphNode) -> Result<Vec<Route>, String> {
        let mut routes = Vec::with_capacity(router.routes.len());
        for (i, discovery_route) in router.routes.iter().enumerate() {
            let definition = discovery_route.definition.clone().unwrap_or_default();
            let http = definition
                .route_match
                .as_ref()
                .and_then(|m| m.http.as_ref());
            let matcher = match route_match(http) {
                Ok(matcher) => matcher,
                Err(why) => {
                    tracing::warn!(
                        router = %router.name,
                        route = i + 1,
                        "{why}: the route is left out, the rest of the chain applies"
                    );
                    continue;
                }
            };
            let mut route = route(matcher, self.splits_to(&discovery_route.next_node)?);
            if let Some(destination) = &definition.destination {
                apply_destination(&mut route, destination);
            }
            routes.push(route);
        }
        Ok(routes)
    }

    /// The splits of a route to node `key`: a resolver's cluster, whole, or a
    /// splitter's splits.
    fn splits_to(&mut self, key: &str) -> Result<Vec<Split>, String> {
        let node = self.node(key)?;
        match node.node_type.as_str() {
            NODE_RESOLVER => Ok(vec![Split {
                weight: TOTAL_WEIGHT,
                cluster: self.cluster(key)?,
                request_headers: HeaderChanges::default(),
                response_headers: HeaderChanges::default(),
            }]),
            NODE_SPLITTER => self.splits(node),
            other => Err(format!("a route leads to a node of type {other:?}")),
        }
    }

    /// A splitter's splits (already flattened by Consul: each ends at a resolver),
    /// weighed as Envoy gets them: the share × 100.
    fn splits(&mut self, splitter: &DiscoveryGraphNode) -> Result<Vec<Split>, String> {
        let mut splits = Vec::with_capacity(splitter.splits.len());
        for split in &splitter.splits {
            let next = self.node(&split.next_node)?;
            if next.node_type != NODE_RESOLVER {
                return Err(format!(
                    "a split of {} leads to a {} node",
                    splitter.name, next.node_type
                ));
            }
            splits.push(self.split(split)?);
        }
        balance(&mut splits)?;
        Ok(splits)
    }

    fn split(&mut self, split: &DiscoverySplit) -> Result<Split, String> {
        let definition = split.definition.clone().unwrap_or_default();
        Ok(Split {
            // Go's float32 arithmetic, truncated, as Consul computes it.
            weight: (split.weight * 100.0) as u32,
            cluster: self.cluster(&split.next_node)?,
            request_headers: header_changes(definition.request_headers.as_ref()),
            response_headers: header_changes(definition.response_headers.as_ref()),
        })
    }

    /// The cluster of resolver node `key`, built on first use.
    fn cluster(&mut self, key: &str) -> Result<usize, String> {
        if let Some(index) = self.by_node.get(key) {
            return Ok(*index);
        }
        let node = self.node(key)?;
        let resolver = node
            .resolver
            .clone()
            .ok_or_else(|| format!("resolver node {key:?} has no resolver"))?;
        let load_balancer = node
            .load_balancer
            .as_ref()
            .map(load_balancer)
            .unwrap_or_default();
        let name = if node.name.is_empty() {
            resolver.target.clone()
        } else {
            node.name.clone()
        };
        let failover = resolver.failover.iter().flat_map(|f| f.targets.iter());
        let mut targets: Vec<Target> = Vec::new();
        for (i, id) in std::iter::once(&resolver.target)
            .chain(failover)
            .enumerate()
        {
            let found = self.chain.targets.get(id);
            if i == 0 && found.is_none() {
                return Err(format!("target {id:?} of {key:?} is not in the chain"));
            }
            let Some(target) = found.and_then(|t| self.target(id, t)) else {
                continue;
            };
            if !targets.iter().any(|t| t.id == target.id) {
                targets.push(target);
            }
        }
        self.clusters.push(Cluster {
            name,
            connect_timeout: resolver.connect_timeout.positive().unwrap_or_default(),
            request_timeout: None,
            load_balancer,
            targets,
        });
        let index = self.clusters.len() - 1;
        self.by_node.insert(key.to_owned(), index);
        Ok(index)
    }

    /// A target of the chain, its instances to come; `None` for one we cannot reach.
    fn target(&mut self, id: &str, target: &DiscoveryTarget) -> Option<Target> {
        if !target.peer.is_empty() {
            tracing::warn!(target = %id, peer = %target.peer, "cluster peering is not supported: the target is left out");
            return None;
        }
        let or_default = |s: &str| if s.is_empty() { DEFAULT } else { s }.to_owned();
        let identity = ServiceId {
            trust_domain: String::new(),
            partition: or_default(&target.partition),
            namespace: or_default(&target.namespace),
            datacenter: target.datacenter.clone(),
            service: target.service.clone(),
        };
        let id = if target.id.is_empty() { id } else { &target.id };
        self.sources.insert(
            id.to_owned(),
            TargetSource {
                health: HealthKey {
                    service: target.service.clone(),
                    datacenter: target.datacenter.clone(),
                    filter: target.subset.filter.clone(),
                },
                only_passing: target.subset.only_passing,
                subset: target.service_subset.clone(),
                mode: GatewayMode::parse(&target.mesh_gateway.mode),
            },
        );
        Some(Target {
            id: id.to_owned(),
            sni: target.sni.clone(),
            identity,
            endpoints: Vec::new(),
        })
    }
}

/// Weights that total a little off 10,000 (each share truncated) are evened out on the
/// largest split, so that they total exactly what the model promises.
fn balance(splits: &mut [Split]) -> Result<(), String> {
    let total: u64 = splits.iter().map(|s| u64::from(s.weight)).sum();
    if total == 0 {
        return Err("a splitter's splits weigh nothing".into());
    }
    let target = u64::from(TOTAL_WEIGHT);
    let drift = total.abs_diff(target);
    if drift == 0 || drift > splits.len() as u64 {
        return Ok(());
    }
    if let Some(largest) = splits.iter_mut().max_by_key(|s| s.weight) {
        let drift = u32::try_from(drift).unwrap_or(0);
        largest.weight = if total < target {
            largest.weight.saturating_add(drift)
        } else {
            largest.weight.saturating_sub(drift)
        };
    }
    Ok(())
}

/// A route's criteria as Envoy gets them from Consul; `Err` when a regex does not
/// compile.
fn route_match(http: Option<&ServiceRouteHttpMatch>) -> Result<RouteMatch, String> {
    let Some(http) = http.filter(|h| !h.is_empty()) else {
        return Ok(RouteMatch::default());
    };
    let path = path_match(http)?;
    // Envoy ignores `case_sensitive` for a regex path.
    let case_insensitive =
        http.case_insensitive && matches!(path, PathMatch::Exact(_) | PathMatch::Prefix(_));
    Ok(RouteMatch {
        path,
        case_insensitive,
        headers: header_matches(&http.header)?,
        query: query_matches(&http.query_param)?,
        methods: http
            .methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect(),
    })
}

/// The one path criterion, in Consul's order of precedence.
fn path_match(http: &ServiceRouteHttpMatch) -> Result<PathMatch, String> {
    Ok(if !http.path_exact.is_empty() {
        PathMatch::Exact(http.path_exact.clone())
    } else if !http.path_prefix.is_empty() && http.path_prefix != "/" {
        PathMatch::Prefix(http.path_prefix.clone())
    } else if !http.path_regex.is_empty() {
        PathMatch::Regex(full_regex("path", &http.path_regex)?)
    } else {
        // No path criterion, or the prefix `/`: every path.
        PathMatch::Any
    })
}

/// Header criteria in Consul's order of precedence (exact, regex, prefix, suffix,
/// present); one that says nothing gets no matcher, as Consul renders none.
fn header_matches(headers: &[ServiceRouteHttpMatchHeader]) -> Result<Vec<HeaderMatch>, String> {
    let mut matches = Vec::with_capacity(headers.len());
    for header in headers {
        let value = if !header.exact.is_empty() {
            ValueMatch::Exact(header.exact.clone())
        } else if !header.regex.is_empty() {
            let what = format!("header {}", header.name);
            ValueMatch::Regex(full_regex(&what, &header.regex)?)
        } else if !header.prefix.is_empty() {
            ValueMatch::Prefix(header.prefix.clone())
        } else if !header.suffix.is_empty() {
            ValueMatch::Suffix(header.suffix.clone())
        } else if header.present {
            ValueMatch::Present
        } else {
            continue;
        };
        matches.push(HeaderMatch {
            name: header.name.to_ascii_lowercase(),
            value,
            invert: header.invert,
        });
    }
    Ok(matches)
}

/// Query parameter criteria: exact, regex or present, in that order of precedence.
fn query_matches(params: &[ServiceRouteHttpMatchQueryParam]) -> Result<Vec<QueryMatch>, String> {
    let mut matches = Vec::with_capacity(params.len());
    for param in params {
        let value = if !param.exact.is_empty() {
            ValueMatch::Exact(param.exact.clone())
        } else if !param.regex.is_empty() {
            let what = format!("query {}", param.name);
            ValueMatch::Regex(full_regex(&what, &param.regex)?)
        } else if param.present {
            ValueMatch::Present
        } else {
            continue;
        };
        matches.push(QueryMatch {
            name: param.name.clone(),
            value,
        });
    }
    Ok(matches)
}

/// A regex that must match a whole value, as Envoy's `safe_regex` does.
fn full_regex(what: &str, pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("the {what} regex {pattern:?} does not compile: {e}"))
}

/// What a router's destination does to the requests of its route.
fn apply_destination(route: &mut Route, destination: &ServiceRouteDestination) {
    if !destination.prefix_rewrite.is_empty() {
        route.prefix_rewrite = Some(destination.prefix_rewrite.clone());
    }
    route.request_timeout = timeout(destination.request_timeout);
    route.idle_timeout = timeout(destination.idle_timeout);
    route.retry = retry_policy(destination);
    route.request_headers = header_changes(destination.request_headers.as_ref());
    route.response_headers = header_changes(destination.response_headers.as_ref());
}

/// A Consul timeout on a route: zero leaves it unset, a negative one disables it
/// (`Some(ZERO)`, as Envoy reads a zero timeout).
fn timeout(value: GoDuration) -> Option<Duration> {
    match value.nanos() {
        0 => None,
        n if n < 0 => Some(Duration::ZERO),
        _ => value.positive(),
    }
}

/// Consul's retry policy for a destination: its conditions in order, then
/// `connect-failure` (unless listed) and `retriable-status-codes`. A destination with
/// conditions but no `NumRetries` leaves Envoy's default of one retry.
fn retry_policy(destination: &ServiceRouteDestination) -> RetryPolicy {
    let codes = &destination.retry_on_status_codes;
    let has_features = destination.num_retries > 0
        || destination.retry_on_connect_failure
        || !destination.retry_on.is_empty()
        || !codes.is_empty();
    if !has_features {
        return RetryPolicy::default();
    }
    let mut on = destination.retry_on.clone();
    if destination.retry_on_connect_failure && !on.iter().any(|c| c == "connect-failure") {
        on.push("connect-failure".into());
    }
    if !codes.is_empty() {
        on.push("retriable-status-codes".into());
    }
    RetryPolicy {
        num_retries: if destination.num_retries > 0 {
            destination.num_retries
        } else {
            ENVOY_DEFAULT_RETRIES
        },
        on,
        on_status_codes: codes
            .iter()
            .filter_map(|c| u16::try_from(*c).ok())
            .collect(),
    }
}

/// Header changes; a name or value that cannot be an HTTP header is left out.
fn header_changes(modifiers: Option<&HttpHeaderModifiers>) -> HeaderChanges {
    let Some(modifiers) = modifiers else {
        return HeaderChanges::default();
    };
    let pairs = |map: &BTreeMap<String, String>| -> Vec<(HeaderName, HeaderValue)> {
        map.iter()
            .filter_map(|(name, value)| {
                let parsed = HeaderName::from_bytes(name.as_bytes())
                    .ok()
                    .zip(HeaderValue::from_str(value).ok());
                if parsed.is_none() {
                    tracing::warn!(header = %name, "not a valid HTTP header: the change is left out");
                }
                parsed
            })
            .collect()
    };
    HeaderChanges {
        add: pairs(&modifiers.add),
        set: pairs(&modifiers.set),
        remove: modifiers
            .remove
            .iter()
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect(),
    }
}

/// A resolver's load balancer: Envoy's policy, with Envoy's defaults for sizes left at
/// zero, and hash policies only for the policies that hash.
fn load_balancer(lb: &ChainLoadBalancer) -> LoadBalancer {
    let policy = match lb.policy.as_str() {
        "" | "round_robin" => LbPolicy::RoundRobin,
        "least_request" => LbPolicy::LeastRequest {
            choice_count: lb
                .least_request_config
                .as_ref()
                .map(|c| c.choice_count)
                .filter(|n| *n > 0)
                .unwrap_or(LEAST_REQUEST_CHOICES),
        },
        "random" => LbPolicy::Random,
        "ring_hash" => {
            let ring = lb.ring_hash_config.clone().unwrap_or_default();
            let or = |n: u64, default: u64| if n > 0 { n } else { default };
            LbPolicy::RingHash {
                minimum_ring_size: or(ring.minimum_ring_size, MIN_RING_SIZE),
                maximum_ring_size: or(ring.maximum_ring_size, MAX_RING_SIZE),
            }
        }
        "maglev" => LbPolicy::Maglev,
        other => {
            tracing::warn!(policy = %other, "unknown load balancing policy: round robin instead");
            LbPolicy::RoundRobin
        }
    };
    let hash_policies = if lb.is_hash_based() {
        lb.hash_policies.iter().filter_map(hash_policy).collect()
    } else {
        Vec::new()
    };
    LoadBalancer {
        policy,
        hash_policies,
    }
}

fn hash_policy(policy: &crate::api::chain::HashPolicy) -> Option<HashPolicy> {
    let value = policy.field_value.clone();
    let on = if policy.source_ip {
        HashOn::SourceIp
    } else {
        match policy.field.as_str() {
            "header" => HashOn::Header(value.to_ascii_lowercase()),
            "query_parameter" => HashOn::QueryParameter(value),
            "cookie" => {
                let config = policy.cookie_config.as_ref();
                HashOn::Cookie {
                    name: value,
                    // A session cookie is generated with a zero TTL, as Envoy has it.
                    ttl: config.and_then(|c| {
                        if c.session {
                            Some(Duration::ZERO)
                        } else {
                            c.ttl.positive()
                        }
                    }),
                    path: config.map(|c| c.path.clone()).filter(|p| !p.is_empty()),
                }
            }
            other => {
                tracing::warn!(field = %other, "unknown hash policy field: the policy is left out");
                return None;
            }
        }
    };
    Some(HashPolicy {
        on,
        terminal: policy.terminal,
    })
}

#[cfg(test)]
mod tests;
