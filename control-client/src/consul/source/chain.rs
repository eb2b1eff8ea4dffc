//! The upstreams' discovery chains (`/v1/discovery-chain/<service>`), followed with
//! blocking queries and translated into each upstream's [`Routing`] (`translate`); see
//! `docs/consul-semantics.md#upstream-discovery`.
//!
//! A chain is asked for the way Consul's own proxy configuration asks: compiled in the
//! upstream's datacenter (else the agent's), with the upstream's overrides (mesh gateway
//! mode, protocol, connect timeout) posted as the body. Upstreams that ask the same
//! share one watch. Until a chain arrives, an upstream goes straight to its destination's
//! instances, as Consul's default chain would; so it does when the agent has no chain
//! endpoint (an older agent or another implementation of the API answers 404 or 400),
//! which is asked again after a while. A chain that cannot be translated keeps the last
//! good one. Prepared-query upstreams have no chain: their routing comes from `query`.

mod translate;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use tokio_util::task::AbortOnDropHandle;

use super::agent::{Agent, Event};
use super::endpoints::{HealthKey, TargetHealth};
use super::gateways::{GatewayMode, MeshGateways};
use super::query::{Queries, QueryFill, QueryKey};
use super::registration::{Registration, UpstreamKind, UpstreamSpec};
use crate::api::chain::{CompiledDiscoveryChain, DiscoveryChainRequest};
use crate::consul::http::{AgentError, path_segment};
use crate::consul::watch::{Blocking, WatchSpec, Watcher};
use crate::model::{Protocol, UpstreamConfig};
use crate::routing::Routing;
use translate::{Fill, Plan, translate};

/// One chain watch: the service, where it is compiled (`""`: the agent's datacenter)
/// and the overrides posted with it (JSON; `None`: a plain `GET`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct ChainKey {
    pub(super) name: String,
    pub(super) compile_dc: String,
    pub(super) body: Option<String>,
}

impl ChainKey {
    /// The chain `up` follows; `local_dc` is the agent's datacenter (`""`: unknown).
    pub(super) fn of(up: &UpstreamSpec, local_dc: &str) -> ChainKey {
        let compile_dc = if up.key.datacenter.is_empty() {
            local_dc
        } else {
            &up.key.datacenter
        };
        ChainKey {
            name: up.key.name.clone(),
            compile_dc: compile_dc.to_owned(),
            body: body(&up.chain),
        }
    }

    /// How it is named in logs and in `/ready`.
    pub(super) fn what(&self) -> String {
        match self.compile_dc.as_str() {
            "" => format!("the discovery chain of {}", self.name),
            dc => format!("the discovery chain of {} in {dc}", self.name),
        }
    }

    fn spec(&self) -> WatchSpec {
        let mut query = Vec::new();
        if !self.compile_dc.is_empty() {
            query.push(("compile-dc".to_owned(), self.compile_dc.clone()));
        }
        WatchSpec {
            path: format!("/v1/discovery-chain/{}", path_segment(&self.name)),
            query,
            blocking: Blocking::Index,
            body: self.body.clone().map(Bytes::from),
        }
    }
}

/// The overrides as the body of the request, when there are any.
fn body(request: &DiscoveryChainRequest) -> Option<String> {
    if request.is_empty() {
        return None;
    }
    serde_json::to_string(request).ok()
}

/// Whether the agent answered that it has no chain endpoint (or refuses the request as
/// one it does not understand): asking again at once will not help.
pub(super) fn is_unsupported(error: &AgentError) -> bool {
    matches!(error, AgentError::Status { status, .. } if status.as_u16() == 404 || status.as_u16() == 400)
}

/// One followed chain.
#[derive(Default)]
struct Followed {
    watcher: Option<Watcher>,
    /// While the agent has no chain endpoint: the task that asks again later.
    retry: Option<AbortOnDropHandle<()>>,
    /// The last chain translated, to tell a new answer from the same chain.
    chain: Option<CompiledDiscoveryChain>,
    /// The last good translation.
    plan: Option<Arc<Plan>>,
}

/// Every chain the registration's upstreams follow.
#[derive(Default)]
pub(super) struct Chains {
    followed: HashMap<ChainKey, Followed>,
    /// An agent without the chain endpoint is reported at warn once, then at debug.
    warned_unsupported: bool,
}

/// What the upstreams are built with at publish time.
pub(super) struct Context<'a> {
    pub(super) trust_domain: Option<&'a str>,
    /// The agent's datacenter (`""`: unknown).
    pub(super) local_dc: &'a str,
    pub(super) health: &'a TargetHealth,
    pub(super) gateways: &'a MeshGateways,
    /// The prepared-query upstreams' answers.
    pub(super) queries: &'a Queries,
    /// The upstreams published last: an unchanged routing keeps its `Arc`.
    pub(super) previous: &'a [UpstreamConfig],
}

impl Chains {
    /// Watches exactly the chains in `wanted`; returns the ones no longer followed.
    pub(super) fn follow(&mut self, agent: &Agent, wanted: &BTreeSet<ChainKey>) -> Vec<ChainKey> {
        let gone: Vec<ChainKey> = self
            .followed
            .keys()
            .filter(|key| !wanted.contains(*key))
            .cloned()
            .collect();
        for key in &gone {
            self.followed.remove(key);
        }
        for key in wanted {
            if !self.followed.contains_key(key) {
                let watcher = watch(agent, key);
                self.followed.insert(
                    key.clone(),
                    Followed {
                        watcher: Some(watcher),
                        ..Followed::default()
                    },
                );
            }
        }
        gone
    }

    /// Whether `key` is followed and watched now (a late answer is ignored otherwise).
    pub(super) fn follows(&self, key: &ChainKey) -> bool {
        self.followed.get(key).is_some_and(|f| f.watcher.is_some())
    }

    /// A new answer for `key`. Returns whether it could be followed (a chain that
    /// cannot keeps the last good one).
    pub(super) fn on_chain(&mut self, key: &ChainKey, chain: CompiledDiscoveryChain) -> bool {
        let Some(followed) = self.followed.get_mut(key) else {
            return true;
        };
        if followed.chain.as_ref() == Some(&chain) {
            return true;
        }
        match translate(&chain) {
            Ok(plan) => {
                tracing::info!(upstream = %key.name, start = %chain.start_node, protocol = %chain.protocol, "following {}", key.what());
                followed.plan = Some(Arc::new(plan));
                followed.chain = Some(chain);
                true
            }
            Err(why) => {
                tracing::warn!(upstream = %key.name, "{} cannot be followed: {why}; keeping the last good routing", key.what());
                false
            }
        }
    }

    /// The agent has no chain endpoint: `key` goes straight to its destination, and is
    /// asked for again after the tuning's `unsupported_retry`.
    pub(super) fn unsupported(&mut self, agent: &Agent, key: &ChainKey, error: &AgentError) {
        let Some(followed) = self.followed.get_mut(key) else {
            return;
        };
        if !self.warned_unsupported {
            self.warned_unsupported = true;
            tracing::warn!(error = %error, "the agent serves no discovery chain; upstreams go straight to their destination's instances");
        } else {
            tracing::debug!(error = %error, "still no discovery chain for {}", key.name);
        }
        followed.watcher = None;
        followed.chain = None;
        followed.plan = None;
        let (events, delay, key) = (
            agent.events.clone(),
            agent.tuning.unsupported_retry,
            key.clone(),
        );
        followed.retry = Some(agent.spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::ChainRetry(key)).await;
        }));
    }

    /// Time to ask the agent again for a chain it did not serve.
    pub(super) fn retry(&mut self, agent: &Agent, key: &ChainKey) {
        if let Some(followed) = self.followed.get_mut(key)
            && followed.watcher.is_none()
        {
            followed.retry = None;
            followed.watcher = Some(watch(agent, key));
        }
    }

    /// The plan `up` follows: its chain's, else straight to its destination (reached
    /// as the upstream's own mesh gateway mode says).
    fn plan(&self, up: &UpstreamSpec, local_dc: &str) -> Arc<Plan> {
        let key = ChainKey::of(up, local_dc);
        match self.followed.get(&key).and_then(|f| f.plan.clone()) {
            Some(plan) => plan,
            None => {
                let mode = GatewayMode::parse(&up.chain.override_mesh_gateway.mode);
                Arc::new(Plan::direct(&key.name, &key.compile_dc, mode))
            }
        }
    }

    /// The health queries the service upstreams' targets need.
    pub(super) fn health_keys(&self, reg: &Registration, local_dc: &str) -> BTreeSet<HealthKey> {
        let mut keys = BTreeSet::new();
        for up in services(reg) {
            let plan = self.plan(up, local_dc);
            let tcp = up.listener.protocol == Protocol::Tcp;
            keys.extend(plan.health_keys(tcp).cloned());
        }
        keys
    }

    /// The datacenters whose mesh gateways the service upstreams' targets need.
    pub(super) fn gateway_dcs(&self, reg: &Registration, local_dc: &str) -> BTreeSet<String> {
        let mut dcs = BTreeSet::new();
        for up in services(reg) {
            let tcp = up.listener.protocol == Protocol::Tcp;
            dcs.extend(self.plan(up, local_dc).gateway_dcs(tcp, local_dc));
        }
        dcs
    }

    /// The registration's upstreams, each routed by its chain (or its prepared query)
    /// with the instances known.
    pub(super) fn upstreams(&self, reg: &Registration, ctx: &Context<'_>) -> Vec<UpstreamConfig> {
        reg.upstreams
            .iter()
            .map(|up| {
                let routing = match up.key.kind {
                    UpstreamKind::Service => self.routing(up, ctx),
                    UpstreamKind::PreparedQuery => ctx.queries.routing(
                        &QueryKey::of(up),
                        &QueryFill {
                            connect_timeout: up.listener.connect_timeout,
                            trust_domain: ctx.trust_domain,
                            local_dc: ctx.local_dc,
                        },
                    ),
                };
                up.listener.with_routing(reuse(ctx.previous, up, routing))
            })
            .collect()
    }

    fn routing(&self, up: &UpstreamSpec, ctx: &Context<'_>) -> Routing {
        let fill = Fill {
            tcp: up.listener.protocol == Protocol::Tcp,
            connect_timeout: up.listener.connect_timeout,
            trust_domain: ctx.trust_domain,
            local_dc: ctx.local_dc,
            health: ctx.health,
            gateways: ctx.gateways,
        };
        self.plan(up, ctx.local_dc).routing(&fill)
    }
}

/// The upstreams that name a service (and follow its chain).
pub(super) fn services(reg: &Registration) -> impl Iterator<Item = &UpstreamSpec> {
    reg.upstreams
        .iter()
        .filter(|up| up.key.kind == UpstreamKind::Service)
}

fn watch(agent: &Agent, key: &ChainKey) -> Watcher {
    let k = key.clone();
    agent.watch(key.spec(), move |u| Event::Chain(k.clone(), u))
}

/// The `Arc` published last for the same upstream when its routing is unchanged.
fn reuse(previous: &[UpstreamConfig], up: &UpstreamSpec, routing: Routing) -> Arc<Routing> {
    previous
        .iter()
        .find(|p| p.name == up.listener.name && p.bind == up.listener.bind)
        .filter(|p| *p.routing == routing)
        .map_or_else(|| Arc::new(routing), |p| p.routing.clone())
}
