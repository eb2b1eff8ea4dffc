//! Compiles one service's discovery chain from the stored entries, the way Consul's
//! servers do (`docs/consul-semantics.md#discovery-chain`): the service's router (with a
//! catch-all route appended), splitters (nested ones flattened into effective weights),
//! and resolvers (redirects, `DefaultSubset`, subsets, failover, timeouts, load
//! balancing), ending in targets with their SNI and mesh gateway mode; the protocol
//! shared by every service the chain reaches, and the request's overrides.
//!
//! Errors are Consul's texts (`detected circular resolver redirect: [...]`, `discovery
//! chain "web" uses a protocol "tcp" that does not permit advanced routing or splitting
//! behavior`, ...): a write that would make any chain fail to compile is refused with
//! them. Community Edition only: every namespace and partition is `default`.

use std::collections::{BTreeMap, BTreeSet};

use ferrule_control::api::agent::MeshGatewayConfig;
use ferrule_control::api::chain::{
    CompiledDiscoveryChain, DiscoveryChainRequest, DiscoveryFailover, DiscoveryGraphNode,
    DiscoveryResolver, DiscoveryRoute, DiscoverySplit, DiscoveryTarget, GoDuration, NODE_RESOLVER,
    NODE_ROUTER, NODE_SPLITTER, ServiceResolverEntry, ServiceResolverFailover,
    ServiceResolverFailoverTarget, ServiceResolverRedirect, ServiceRoute, ServiceRouteDestination,
    ServiceRouteHttpMatch, ServiceRouteMatch, ServiceSplit, target_id,
};
use ferrule_control::identity::{DEFAULT, ServiceId};
use ferrule_control::model::service_sni;

use super::Config;
use super::graph;

/// A resolver's connect timeout when it sets none.
const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 5;

/// What to compile: the chain of `service`, as seen from `datacenter`.
pub(crate) struct Request<'a> {
    pub(crate) service: &'a str,
    pub(crate) datacenter: &'a str,
    pub(crate) trust_domain: &'a str,
    pub(crate) overrides: &'a DiscoveryChainRequest,
}

/// A compiled chain and the services whose entries it read (for blocking queries).
pub(crate) struct Compiled {
    pub(crate) chain: CompiledDiscoveryChain,
    pub(crate) read: BTreeSet<String>,
}

/// Compiles the chain; the error is Consul's message.
pub(crate) fn compile(config: &Config<'_>, request: &Request<'_>) -> Result<Compiled, String> {
    let mut compiler = Compiler::new(config, request);
    compiler.assemble()?;
    compiler.finish()
}

/// The six parts of a target before Consul fills in the defaults.
#[derive(Debug, Clone, Default)]
struct TargetOpts {
    service: String,
    subset: String,
    namespace: String,
    partition: String,
    datacenter: String,
    peer: String,
}

impl TargetOpts {
    fn redirect(r: &ServiceResolverRedirect) -> TargetOpts {
        TargetOpts {
            service: r.service.clone(),
            subset: r.service_subset.clone(),
            namespace: r.namespace.clone(),
            partition: r.partition.clone(),
            datacenter: r.datacenter.clone(),
            peer: r.peer.clone(),
        }
    }

    /// What a failover section names, in order: one target per datacenter, the
    /// listed targets, or the one `Service`/`ServiceSubset` names.
    fn failover(f: &ServiceResolverFailover) -> Vec<TargetOpts> {
        let base = TargetOpts {
            service: f.service.clone(),
            subset: f.service_subset.clone(),
            namespace: f.namespace.clone(),
            ..TargetOpts::default()
        };
        if !f.datacenters.is_empty() {
            let with_dc = |dc: &String| TargetOpts {
                datacenter: dc.clone(),
                ..base.clone()
            };
            return f.datacenters.iter().map(with_dc).collect();
        }
        if f.targets.is_empty() {
            return vec![base];
        }
        let target = |t: &ServiceResolverFailoverTarget| TargetOpts {
            service: t.service.clone(),
            subset: t.service_subset.clone(),
            namespace: t.namespace.clone(),
            partition: t.partition.clone(),
            datacenter: t.datacenter.clone(),
            peer: t.peer.clone(),
        };
        f.targets.iter().map(target).collect()
    }
}

/// Which request overrides changed the result (`CustomizationHash`).
#[derive(Debug, Default)]
struct Customized {
    mesh_gateway: bool,
    protocol: bool,
    connect_timeout: bool,
}

struct Compiler<'a> {
    config: &'a Config<'a>,
    request: &'a Request<'a>,
    /// An L4 `OverrideProtocol`: routers and splitters are skipped.
    disable_advanced: bool,
    uses_advanced: bool,
    customized: Customized,
    protocol: Option<String>,
    service_meta: BTreeMap<String, String>,
    start_node: String,
    nodes: BTreeMap<String, DiscoveryGraphNode>,
    /// Splitter name → node key, and resolved target ID → node key.
    splitter_nodes: BTreeMap<String, String>,
    resolve_nodes: BTreeMap<String, String>,
    targets: BTreeMap<String, DiscoveryTarget>,
    retained: BTreeSet<String>,
    read: BTreeSet<String>,
}

impl<'a> Compiler<'a> {
    fn new(config: &'a Config<'a>, request: &'a Request<'a>) -> Self {
        let override_protocol = &request.overrides.override_protocol;
        Compiler {
            config,
            request,
            disable_advanced: !override_protocol.is_empty() && !is_http_like(override_protocol),
            uses_advanced: false,
            customized: Customized::default(),
            protocol: None,
            service_meta: BTreeMap::new(),
            start_node: String::new(),
            nodes: BTreeMap::new(),
            splitter_nodes: BTreeMap::new(),
            resolve_nodes: BTreeMap::new(),
            targets: BTreeMap::new(),
            retained: BTreeSet::new(),
            read: BTreeSet::new(),
        }
    }

    /// Builds the graph from the top: the router, else a splitter, else a resolver.
    fn assemble(&mut self) -> Result<(), String> {
        let service = self.request.service;
        self.read.insert(service.to_owned());
        if let Some(defaults) = self.config.service_defaults.get(service) {
            self.service_meta = defaults.meta.clone();
        }
        let mut router = self.config.chain.routers.get(service);
        if router.is_some() && self.disable_advanced {
            router = None;
            self.customized.protocol = true;
        }
        let Some(router) = router else {
            let target = self.new_target(TargetOpts {
                service: service.to_owned(),
                ..TargetOpts::default()
            });
            self.start_node = self.splitter_or_resolver(&target)?;
            return Ok(());
        };
        self.uses_advanced = true;
        self.record_service_protocol(&router.name)?;
        let mut routes = Vec::with_capacity(router.routes.len() + 1);
        for route in &router.routes {
            let next_node = self.route_destination(route.destination.as_ref())?;
            routes.push(DiscoveryRoute {
                definition: Some(route.clone()),
                next_node,
            });
        }
        let catch_all = catch_all_route(&router.name);
        let next_node = self.route_destination(catch_all.destination.as_ref())?;
        routes.push(DiscoveryRoute {
            definition: Some(catch_all),
            next_node,
        });
        let node = DiscoveryGraphNode {
            node_type: NODE_ROUTER.to_owned(),
            name: service_node_name(&router.name),
            routes,
            ..DiscoveryGraphNode::default()
        };
        self.start_node = node.map_key();
        self.nodes.insert(node.map_key(), node);
        Ok(())
    }

    /// The node a route leads to: a destination with a subset goes straight to its
    /// resolver; otherwise to the service's splitter, or its resolver.
    fn route_destination(
        &mut self,
        destination: Option<&ServiceRouteDestination>,
    ) -> Result<String, String> {
        let destination = destination.cloned().unwrap_or_default();
        let opts = TargetOpts {
            service: or(&destination.service, self.request.service),
            subset: destination.service_subset.clone(),
            namespace: or(&destination.namespace, DEFAULT),
            partition: or(&destination.partition, DEFAULT),
            ..TargetOpts::default()
        };
        let target = self.new_target(opts);
        if destination.service_subset.is_empty() {
            self.splitter_or_resolver(&target)
        } else {
            self.resolver_node(&target, false)
                .map(|id| resolver_key(&id))
        }
    }

    fn splitter_or_resolver(&mut self, target: &str) -> Result<String, String> {
        let service = self.target(target).service.clone();
        match self.splitter_node(&service)? {
            Some(key) => Ok(key),
            None => self
                .resolver_node(target, false)
                .map(|id| resolver_key(&id)),
        }
    }

    /// The splitter node of `service`, built on first use; `None` when it has none.
    fn splitter_node(&mut self, service: &str) -> Result<Option<String>, String> {
        let name = service_node_name(service);
        if let Some(key) = self.splitter_nodes.get(&name) {
            return Ok(Some(key.clone()));
        }
        self.read.insert(service.to_owned());
        let Some(splitter) = self.config.chain.splitters.get(service) else {
            return Ok(None);
        };
        if self.disable_advanced {
            self.customized.protocol = true;
            return Ok(None);
        }
        let key = format!("{NODE_SPLITTER}:{name}");
        // Recorded before its splits are followed, so that a loop ends here (and is
        // reported by the circular reference check).
        self.splitter_nodes.insert(name.clone(), key.clone());
        let mut node = DiscoveryGraphNode {
            node_type: NODE_SPLITTER.to_owned(),
            name,
            ..DiscoveryGraphNode::default()
        };
        self.nodes.insert(key.clone(), node.clone());
        for split in &splitter.splits {
            let next_node = self.split_destination(service, split, &mut node)?;
            node.splits.push(DiscoverySplit {
                definition: Some(split.clone()),
                weight: split.weight,
                next_node,
            });
        }
        self.nodes.insert(key.clone(), node);
        self.uses_advanced = true;
        Ok(Some(key))
    }

    /// Where one split leads: another service's splitter, else a resolver. The first
    /// hash-based load balancer among the resolvers is the splitter's.
    fn split_destination(
        &mut self,
        service: &str,
        split: &ServiceSplit,
        node: &mut DiscoveryGraphNode,
    ) -> Result<String, String> {
        let split_service = or(&split.service, service);
        if split_service != service
            && split.service_subset.is_empty()
            && let Some(key) = self.splitter_node(&split_service)?
        {
            return Ok(key);
        }
        let target = self.new_target(TargetOpts {
            service: split_service,
            subset: split.service_subset.clone(),
            ..TargetOpts::default()
        });
        let key = resolver_key(&self.resolver_node(&target, false)?);
        if node.load_balancer.is_none()
            && let Some(lb) = self.nodes.get(&key).and_then(|n| n.load_balancer.as_ref())
            && lb.is_hash_based()
        {
            node.load_balancer = Some(lb.clone());
        }
        Ok(key)
    }

    /// Resolves `target` through redirects and the default subset, builds its resolver
    /// node (recorded unless it is a failover target) and returns the target it ends in.
    fn resolver_node(&mut self, target: &str, for_failover: bool) -> Result<String, String> {
        let mut target = target.to_owned();
        let mut history: Vec<String> = Vec::new();
        let resolver = loop {
            if self.resolve_nodes.contains_key(&target) {
                return Ok(target);
            }
            let current = self.target(&target).clone();
            if current.peer.is_empty() {
                self.record_service_protocol(&current.service)?;
            }
            let resolver = self.resolver_of(&current.service);
            if history.contains(&target) {
                history.push(target);
                return Err(format!(
                    "detected circular resolver redirect: [{}]",
                    history.join(" -> ")
                ));
            }
            history.push(target.clone());
            if let Some(redirect) = &resolver.redirect {
                let redirected = self.rewrite_target(&target, TargetOpts::redirect(redirect));
                if redirected != target {
                    target = redirected;
                    continue;
                }
            }
            if current.service_subset.is_empty() && !resolver.default_subset.is_empty() {
                let subset = TargetOpts {
                    subset: resolver.default_subset.clone(),
                    ..TargetOpts::default()
                };
                target = self.rewrite_target(&target, subset);
                continue;
            }
            break resolver;
        };
        self.finish_resolver(target, &resolver, for_failover)
    }

    /// The resolver node of a target that needs no more rewriting.
    fn finish_resolver(
        &mut self,
        target: String,
        resolver: &ServiceResolverEntry,
        for_failover: bool,
    ) -> Result<String, String> {
        let current = self.target(&target).clone();
        let subset = current.service_subset.clone();
        if !subset.is_empty() && !resolver.subsets.contains_key(&subset) {
            return Err(format!(
                "service {:?} does not have a subset named {subset:?}",
                current.service
            ));
        }
        let connect_timeout = self.connect_timeout(resolver);
        let mesh_gateway = self.mesh_gateway(&current.service);
        if let Some(t) = self.targets.get_mut(&target) {
            t.connect_timeout = connect_timeout;
            t.subset = resolver.subsets.get(&subset).cloned().unwrap_or_default();
            t.mesh_gateway = mesh_gateway;
        }
        self.retained.insert(target.clone());
        if for_failover {
            return Ok(target);
        }
        let key = resolver_key(&target);
        let mut node = DiscoveryGraphNode {
            node_type: NODE_RESOLVER.to_owned(),
            name: target.clone(),
            resolver: Some(DiscoveryResolver {
                default: resolver.is_default(),
                connect_timeout,
                request_timeout: resolver.request_timeout,
                target: target.clone(),
                ..DiscoveryResolver::default()
            }),
            load_balancer: resolver.load_balancer.clone(),
            ..DiscoveryGraphNode::default()
        };
        self.resolve_nodes.insert(target.clone(), key.clone());
        self.nodes.insert(key.clone(), node.clone());
        if let Some(failover) = self.failover(&target, &subset, resolver)? {
            if let Some(resolved) = node.resolver.as_mut() {
                resolved.failover = Some(failover);
            }
            self.nodes.insert(key, node);
        }
        Ok(target)
    }

    /// The resolver's failover for this subset (or `"*"`): its targets, each resolved
    /// through redirects, never the target itself.
    fn failover(
        &mut self,
        target: &str,
        subset: &str,
        resolver: &ServiceResolverEntry,
    ) -> Result<Option<DiscoveryFailover>, String> {
        let Some(failover) = resolver
            .failover
            .get(subset)
            .or_else(|| resolver.failover.get("*"))
        else {
            return Ok(None);
        };
        let rewritten: Vec<String> = TargetOpts::failover(failover)
            .into_iter()
            .map(|opts| self.rewrite_target(target, opts))
            .filter(|id| id != target)
            .collect();
        if rewritten.is_empty() {
            return Ok(None);
        }
        let mut out = DiscoveryFailover {
            policy: failover.policy.clone().filter(|p| !p.mode.is_empty()),
            ..DiscoveryFailover::default()
        };
        for id in rewritten {
            out.targets.push(self.resolver_node(&id, true)?);
        }
        Ok(Some(out))
    }

    /// The resolver's connect timeout: 5 s when unset, unless the request overrides it.
    fn connect_timeout(&mut self, resolver: &ServiceResolverEntry) -> GoDuration {
        let mut timeout = resolver.connect_timeout;
        if timeout.nanos() < 1 {
            timeout = GoDuration::from_secs(DEFAULT_CONNECT_TIMEOUT_SECS);
        }
        let wanted = self.request.overrides.override_connect_timeout;
        if wanted.nanos() > 0 && wanted != timeout {
            self.customized.connect_timeout = true;
            timeout = wanted;
        }
        timeout
    }

    /// The target's mesh gateway mode: its service-defaults', else proxy-defaults', and
    /// the request's override over both.
    fn mesh_gateway(&mut self, service: &str) -> MeshGatewayConfig {
        let mut gateway = self
            .config
            .service_defaults
            .get(service)
            .map(|d| d.mesh_gateway.clone())
            .unwrap_or_default();
        if gateway.is_empty()
            && let Some(proxy) = self.config.proxy_defaults
        {
            gateway = proxy.mesh_gateway.clone();
        }
        let wanted = &self.request.overrides.override_mesh_gateway;
        if !wanted.is_empty() && *wanted != gateway {
            self.customized.mesh_gateway = true;
            gateway = wanted.clone();
        }
        gateway
    }

    fn resolver_of(&mut self, service: &str) -> ServiceResolverEntry {
        self.read.insert(service.to_owned());
        self.config
            .chain
            .resolvers
            .get(service)
            .cloned()
            .unwrap_or_else(|| ServiceResolverEntry {
                kind: ferrule_control::api::chain::SERVICE_RESOLVER.to_owned(),
                name: service.to_owned(),
                ..ServiceResolverEntry::default()
            })
    }

    /// Every service the chain reaches must speak the same protocol: its
    /// service-defaults' (an entry without one means tcp), else proxy-defaults', else tcp.
    fn record_service_protocol(&mut self, service: &str) -> Result<(), String> {
        self.read.insert(service.to_owned());
        let protocol = match self.config.service_defaults.get(service) {
            Some(defaults) => defaults.protocol.clone(),
            None => self.config.proxy_protocol(),
        };
        let protocol = if protocol.is_empty() {
            "tcp".to_owned()
        } else {
            protocol.to_ascii_lowercase()
        };
        match &self.protocol {
            None => self.protocol = Some(protocol),
            Some(chain) if *chain != protocol => {
                return Err(format!(
                    "discovery chain {:?} uses inconsistent protocols; service {service:?} has {protocol:?} which is not {chain:?}",
                    self.request.service
                ));
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn target(&self, id: &str) -> &DiscoveryTarget {
        static EMPTY: std::sync::OnceLock<DiscoveryTarget> = std::sync::OnceLock::new();
        self.targets
            .get(id)
            .unwrap_or_else(|| EMPTY.get_or_init(DiscoveryTarget::default))
    }

    /// The target these parts name, with Consul's defaults filled in; made once per ID.
    fn new_target(&mut self, mut opts: TargetOpts) -> String {
        if opts.peer.is_empty() {
            opts.datacenter = or(&opts.datacenter, self.request.datacenter);
            opts.namespace = or(&opts.namespace, DEFAULT);
            opts.partition = or(&opts.partition, DEFAULT);
        } else {
            opts.datacenter.clear();
            opts.partition = DEFAULT.to_owned();
            opts.namespace = or(&opts.namespace, DEFAULT);
        }
        let id = target_id(
            &opts.service,
            &opts.subset,
            &opts.namespace,
            &opts.partition,
            &opts.datacenter,
            &opts.peer,
        );
        if self.targets.contains_key(&id) {
            return id;
        }
        let mut target = DiscoveryTarget {
            id: id.clone(),
            service: opts.service.clone(),
            service_subset: opts.subset.clone(),
            namespace: opts.namespace.clone(),
            partition: opts.partition.clone(),
            datacenter: opts.datacenter.clone(),
            peer: opts.peer.clone(),
            ..DiscoveryTarget::default()
        };
        // A peer's server name comes from the peer, which the dev agent has none of.
        if opts.peer.is_empty() {
            let service_id = ServiceId {
                trust_domain: self.request.trust_domain.to_owned(),
                partition: opts.partition,
                namespace: opts.namespace,
                datacenter: opts.datacenter,
                service: opts.service,
            };
            target.sni = service_sni(&service_id, Some(&opts.subset));
            target.name = target.sni.clone();
        }
        self.targets.insert(id.clone(), target);
        id
    }

    /// `target` with what `opts` sets replaced; another service resets the subset.
    fn rewrite_target(&mut self, target: &str, opts: TargetOpts) -> String {
        let t = self.target(target);
        let mut merged = TargetOpts {
            service: t.service.clone(),
            subset: t.service_subset.clone(),
            namespace: t.namespace.clone(),
            partition: t.partition.clone(),
            datacenter: t.datacenter.clone(),
            peer: t.peer.clone(),
        };
        if !opts.service.is_empty() && opts.service != merged.service {
            merged.service = opts.service;
            merged.subset.clear();
        }
        if !opts.subset.is_empty() {
            merged.subset = opts.subset;
        }
        if !opts.partition.is_empty() {
            merged.partition = opts.partition;
        }
        if !opts.namespace.is_empty() || !opts.peer.is_empty() {
            merged.namespace = opts.namespace;
        }
        if !opts.datacenter.is_empty() {
            merged.datacenter = opts.datacenter;
        }
        merged.peer = opts.peer;
        self.new_target(merged)
    }

    /// The checks and clean-ups after assembly, and the chain itself.
    fn finish(mut self) -> Result<Compiled, String> {
        graph::detect_circular_references(&self.nodes, &self.start_node, &mut Vec::new())?;
        graph::flatten_splitters(&mut self.nodes);
        graph::remove_unused_nodes(&mut self.nodes, &self.start_node);
        let retained = std::mem::take(&mut self.retained);
        self.targets.retain(|id, _| retained.contains(id));
        let mut protocol = self.protocol.clone().unwrap_or_else(|| "tcp".to_owned());
        if !is_http_like(&protocol) && self.uses_advanced {
            return Err(format!(
                "discovery chain {:?} uses a protocol {protocol:?} that does not permit advanced routing or splitting behavior",
                self.request.service
            ));
        }
        let wanted = &self.request.overrides.override_protocol;
        if !wanted.is_empty() && *wanted != protocol {
            protocol = wanted.clone();
            self.customized.protocol = true;
        }
        let chain = CompiledDiscoveryChain {
            service_name: self.request.service.to_owned(),
            namespace: DEFAULT.to_owned(),
            partition: DEFAULT.to_owned(),
            datacenter: self.request.datacenter.to_owned(),
            customization_hash: self.customization_hash(),
            default: self.is_default_chain(),
            protocol,
            service_meta: std::mem::take(&mut self.service_meta),
            start_node: self.start_node.clone(),
            nodes: std::mem::take(&mut self.nodes),
            targets: std::mem::take(&mut self.targets),
            ..CompiledDiscoveryChain::default()
        };
        Ok(Compiled {
            chain,
            read: self.read,
        })
    }

    /// No router, no splitter, and only the default resolution of the service itself.
    fn is_default_chain(&self) -> bool {
        let Some(node) = self.nodes.get(&self.start_node) else {
            return true;
        };
        let Some(resolver) = node.resolver.as_ref().filter(|r| r.default) else {
            return false;
        };
        self.targets.get(&resolver.target).is_some_and(|t| {
            t.service == self.request.service && t.namespace == DEFAULT && t.partition == DEFAULT
        })
    }

    /// Eight hex digits that change with the overrides that changed the chain; empty
    /// when none did. Opaque, as Consul's is (its digits differ).
    fn customization_hash(&self) -> String {
        let c = &self.customized;
        if !(c.mesh_gateway || c.protocol || c.connect_timeout) {
            return String::new();
        }
        let o = self.request.overrides;
        let text = format!(
            "{}|{}|{}",
            if c.mesh_gateway {
                o.override_mesh_gateway.mode.as_str()
            } else {
                ""
            },
            if c.protocol {
                o.override_protocol.as_str()
            } else {
                ""
            },
            if c.connect_timeout {
                o.override_connect_timeout.nanos()
            } else {
                0
            },
        );
        // FNV-1a, 64 bits.
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{hash:016x}")[..8].to_owned()
    }
}

/// The catch-all route every router ends with: everything else to the router's service.
fn catch_all_route(service: &str) -> ServiceRoute {
    ServiceRoute {
        route_match: Some(ServiceRouteMatch {
            http: Some(ServiceRouteHttpMatch {
                path_prefix: "/".to_owned(),
                ..ServiceRouteHttpMatch::default()
            }),
        }),
        destination: Some(ServiceRouteDestination {
            service: service.to_owned(),
            namespace: DEFAULT.to_owned(),
            partition: DEFAULT.to_owned(),
            ..ServiceRouteDestination::default()
        }),
    }
}

/// Router and splitter nodes are named `<service>.<namespace>.<partition>`.
fn service_node_name(service: &str) -> String {
    format!("{service}.{DEFAULT}.{DEFAULT}")
}

fn resolver_key(target: &str) -> String {
    format!("{NODE_RESOLVER}:{target}")
}

pub(crate) fn is_http_like(protocol: &str) -> bool {
    matches!(protocol, "http" | "http2" | "grpc")
}

fn or(value: &str, default: &str) -> String {
    if value.is_empty() { default } else { value }.to_owned()
}
