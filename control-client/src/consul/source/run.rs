//! The run loop: one task owns all of Consul mode's state, takes every event the
//! watches send, applies it, and hands the result to the publisher. An error keeps the
//! last good value of what failed; a new destination service drops everything tied to
//! the old one (leaf, intentions) and watches the new one's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::access_logs::AccessLogsWatch;
use super::agent::{Agent, Event};
use super::agent_self::{AgentSettings, self_loop};
use super::certs::Certs;
use super::chain::{ChainKey, Chains, Context, is_unsupported, services};
use super::endpoints::{HealthKey, TargetHealth};
use super::failures::Failures;
use super::gateways::{GatewayKey, MeshGateways, names_what};
use super::intentions::IntentionsWatch;
use super::mesh::MeshWatch;
use super::query::{Queries, QueryKey};
use super::registration::{Registration, UpstreamKind, registration};
use super::sidecar::resolve_sidecar;
use super::{ConsulSource, ProxySelector};
use crate::api::agent::AgentService;
use crate::api::ca::IssuedCert;
use crate::api::chain::DiscoveryChainResponse;
use crate::api::health::ServiceEntry;
use crate::api::intentions::IntentionMatchResponse;
use crate::api::query::PreparedQueryExecuteResponse;
use crate::consul::http::path_segment;
use crate::consul::watch::{Blocking, Update, WatchSpec, Watcher};
use crate::model::{Leaf, Snapshot};
use crate::publish::{Admit, Publisher, Wake};
use crate::telemetry::{Resource, record_update};
use crate::workload::Identity;

/// Consul mode's state, owned by the run loop.
pub(super) struct Follower {
    agent: Agent,
    selector: ProxySelector,
    publisher: Publisher,
    /// One-shot tasks that report into the loop: `/v1/agent/self`, the sidecar lookup.
    tasks: Vec<AbortOnDropHandle<()>>,
    service_watch: Option<Watcher>,
    registration: Option<Registration>,
    /// Roots and leaf, when they come from the agent.
    certs: Certs,
    intentions: IntentionsWatch,
    chains: Chains,
    health: TargetHealth,
    gateways: MeshGateways,
    queries: Queries,
    settings: AgentSettings,
    access_logs: AccessLogsWatch,
    mesh: MeshWatch,
    failures: Failures,
    /// Why the sidecar registration is not found yet, or the registration is unusable.
    registration_problem: Option<String>,
}

impl Follower {
    pub(super) fn new(
        source: ConsulSource,
        publisher: Publisher,
        settings: AgentSettings,
        events: mpsc::Sender<Event>,
    ) -> Follower {
        Follower {
            agent: Agent {
                client: source.client,
                tuning: source.tuning,
                events,
            },
            selector: source.selector,
            publisher,
            tasks: Vec::new(),
            service_watch: None,
            registration: None,
            certs: Certs::new(source.provider),
            intentions: IntentionsWatch::default(),
            chains: Chains::default(),
            health: TargetHealth::default(),
            gateways: MeshGateways::default(),
            queries: Queries::default(),
            settings,
            access_logs: AccessLogsWatch::default(),
            mesh: MeshWatch::default(),
            failures: Failures::default(),
            registration_problem: None,
        }
    }

    pub(super) async fn run(mut self, mut events_rx: mpsc::Receiver<Event>) {
        tracing::info!(agent = %self.agent.client.addr(), selector = ?self.selector, "following the Consul agent");
        self.start();
        self.publish();
        loop {
            tokio::select! {
                event = events_rx.recv() => {
                    // `self.agent` keeps the channel open, so `None` cannot happen.
                    let Some(event) = event else { return };
                    self.handle(event);
                }
                wake = self.publisher.wait() => match wake {
                    Wake::Closed => return,
                    Wake::Identity(identity) => self.on_identity(identity),
                },
            }
            self.publish();
        }
    }

    /// Starts what does not depend on the registration, and the search for it.
    fn start(&mut self) {
        if self.publisher.workload_api() {
            let current = self.publisher.current_identity();
            self.on_identity(current);
        } else {
            self.certs.watch_roots(&self.agent);
        }
        self.access_logs.start(&self.agent);
        self.mesh.start(&self.agent);
        if self.settings.needs_self() {
            let task = self.agent.spawn(self_loop(self.agent.clone()));
            self.tasks.push(task);
        }
        match self.selector.clone() {
            ProxySelector::ProxyId(id) => self.follow_proxy(id),
            ProxySelector::SidecarFor(service_id) => {
                let task = self
                    .agent
                    .spawn(resolve_sidecar(self.agent.clone(), service_id));
                self.tasks.push(task);
            }
        }
    }

    fn follow_proxy(&mut self, proxy_id: String) {
        tracing::info!(proxy_id = %proxy_id, "watching the proxy's registration");
        self.service_watch = Some(self.agent.watch(
            WatchSpec {
                path: format!("/v1/agent/service/{}", path_segment(&proxy_id)),
                query: Vec::new(),
                blocking: Blocking::Hash,
                body: None,
            },
            Event::Service,
        ));
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::ProxyId(id) => {
                self.registration_problem = None;
                self.follow_proxy(id);
            }
            Event::SidecarMissing(problem) => self.registration_problem = Some(problem),
            Event::SelfAnswer(answer) => {
                if self.settings.on_self(answer, &mut self.failures) {
                    self.default_changed();
                }
                // The agent's datacenter may be news: chains are compiled there.
                self.follow_upstreams();
            }
            Event::Service(update) => {
                if let Some(svc) = self.answered(Resource::Config, "registration", update) {
                    self.on_registration(&svc);
                }
            }
            Event::Roots(update) => {
                if let Some(roots) = self.answered(Resource::Roots, "roots", update) {
                    let ok = self.certs.on_roots(roots);
                    record_update(Resource::Roots, ok);
                }
            }
            Event::Leaf(dest, update) => self.on_leaf(&dest, update),
            Event::Intentions(dest, update) => self.on_intentions(&dest, update),
            Event::Chain(key, update) => self.on_chain(&key, update),
            Event::ChainRetry(key) => self.chains.retry(&self.agent, &key),
            Event::Health(key, update) => self.on_health(key, update),
            Event::GatewayNames(dc, update) => self.on_gateway_names(&dc, update),
            Event::Gateways(key, update) => self.on_gateways(&key, update),
            Event::Query(key, update) => self.on_query(&key, update),
            Event::ProxyDefaults(update) => {
                if let Some(entries) = self.answered(Resource::Config, "proxy-defaults", update) {
                    let ok = self.access_logs.on_entries(&entries);
                    record_update(Resource::Config, ok);
                }
            }
            Event::Mesh(update) => {
                if let Some(entries) = self.answered(Resource::Config, "mesh", update) {
                    let ok = self.mesh.on_entries(&entries);
                    record_update(Resource::Config, ok);
                }
            }
        }
    }

    /// Counts and logs a watch update, and takes the facts its headers carry; returns
    /// the new value if there is one.
    fn answered<T>(&mut self, resource: Resource, what: &str, update: Update<T>) -> Option<T> {
        let (value, meta) = self.failures.answered(resource, what, update)?;
        if self.settings.on_meta(&meta) {
            self.default_changed();
        }
        value
    }

    /// The model carries the default action: a new one means new intentions.
    fn default_changed(&mut self) {
        if !self.intentions.has_list() {
            return;
        }
        let dest = self.registration.as_ref().map(|r| r.destination.as_str());
        let ok = self
            .intentions
            .rebuild(dest, self.settings.default_action.as_ref());
        if !ok {
            record_update(Resource::Intentions, false);
        }
    }

    fn destination(&self) -> Option<&str> {
        self.registration.as_ref().map(|r| r.destination.as_str())
    }

    fn on_leaf(&mut self, dest: &str, update: Update<Box<IssuedCert>>) {
        if self.destination() != Some(dest) {
            return;
        }
        if let Some(cert) = self.answered(Resource::Leaf, "leaf", update) {
            let ok = self.certs.on_leaf(dest, &cert);
            record_update(Resource::Leaf, ok);
        }
    }

    fn on_intentions(&mut self, dest: &str, update: Update<IntentionMatchResponse>) {
        if self.destination() != Some(dest) {
            return;
        }
        if let Some(answer) = self.answered(Resource::Intentions, "intentions", update) {
            let default = self.settings.default_action.as_ref();
            let ok = self.intentions.on_answer(dest, answer, default);
            record_update(Resource::Intentions, ok);
        }
    }

    fn on_chain(&mut self, key: &ChainKey, update: Update<Box<DiscoveryChainResponse>>) {
        if !self.chains.follows(key) {
            return;
        }
        if let Update::Failed(error) = &update
            && is_unsupported(error)
        {
            record_update(Resource::Chain, false);
            self.failures.forget(&key.what());
            self.chains.unsupported(&self.agent, key, error);
            self.follow_targets();
            return;
        }
        if let Some(answer) = self.answered(Resource::Chain, &key.what(), update) {
            let ok = self.chains.on_chain(key, answer.chain);
            record_update(Resource::Chain, ok);
            self.follow_targets();
        }
    }

    fn on_health(&mut self, key: HealthKey, update: Update<Vec<ServiceEntry>>) {
        if !self.health.follows(&key) {
            return;
        }
        if let Some(entries) = self.answered(Resource::Endpoints, &key.what(), update) {
            self.health.on_answer(key, entries);
            record_update(Resource::Endpoints, true);
        }
    }

    fn on_gateway_names(&mut self, dc: &str, update: Update<BTreeMap<String, Value>>) {
        if !self.gateways.follows_dc(dc) {
            return;
        }
        if let Some(names) = self.answered(Resource::Endpoints, &names_what(dc), update) {
            for gone in self.gateways.on_names(&self.agent, dc, &names) {
                self.failures.forget(&gone);
            }
            record_update(Resource::Endpoints, true);
        }
    }

    fn on_gateways(&mut self, key: &GatewayKey, update: Update<Vec<ServiceEntry>>) {
        if !self.gateways.follows(key) {
            return;
        }
        if let Some(entries) = self.answered(Resource::Endpoints, &key.what(), update) {
            self.gateways.on_entries(key, entries);
            record_update(Resource::Endpoints, true);
        }
    }

    fn on_query(&mut self, key: &QueryKey, update: Update<Box<PreparedQueryExecuteResponse>>) {
        if !self.queries.follows(key) {
            return;
        }
        if let Some(answer) = self.answered(Resource::Endpoints, &key.what(), update) {
            self.queries.on_answer(key, *answer);
            record_update(Resource::Endpoints, true);
        }
    }

    /// The agent's datacenter: the registration's, else what `/v1/agent/self` said.
    fn local_dc(&self) -> String {
        match &self.registration {
            Some(reg) if !reg.datacenter.is_empty() => reg.datacenter.clone(),
            _ => self.settings.datacenter.clone(),
        }
    }

    /// Follows the chain of every service upstream of the registration, and their
    /// targets, and executes every prepared query it names.
    fn follow_upstreams(&mut self) {
        let Some(reg) = &self.registration else {
            return;
        };
        let local_dc = self.local_dc();
        let wanted: BTreeSet<ChainKey> = services(reg)
            .map(|up| ChainKey::of(up, &local_dc))
            .collect();
        let queries: BTreeSet<QueryKey> = reg
            .upstreams
            .iter()
            .filter(|up| up.key.kind == UpstreamKind::PreparedQuery)
            .map(QueryKey::of)
            .collect();
        for gone in self.chains.follow(&self.agent, &wanted) {
            self.failures.forget(&gone.what());
        }
        for gone in self.queries.follow(&self.agent, &queries) {
            self.failures.forget(&gone.what());
        }
        self.follow_targets();
    }

    /// Watches the instances of exactly the targets the upstreams' routings name, and
    /// the mesh gateways of exactly the datacenters they are reached through.
    fn follow_targets(&mut self) {
        let Some(reg) = &self.registration else {
            return;
        };
        let local_dc = self.local_dc();
        let wanted = self.chains.health_keys(reg, &local_dc);
        let gateway_dcs = self.chains.gateway_dcs(reg, &local_dc);
        for gone in self.health.follow(&self.agent, wanted) {
            self.failures.forget(&gone.what());
        }
        for gone in self.gateways.follow(&self.agent, &gateway_dcs) {
            self.failures.forget(&gone);
        }
    }

    fn on_registration(&mut self, svc: &AgentService) {
        let reg = match registration(svc) {
            Ok(reg) => reg,
            Err(problem) => {
                record_update(Resource::Config, false);
                tracing::warn!(proxy_id = %svc.id, "{problem}; keeping the last good configuration");
                self.registration_problem = Some(format!("registration {}: {problem}", svc.id));
                return;
            }
        };
        record_update(Resource::Config, true);
        self.registration_problem = None;
        if self.registration.as_ref() == Some(&reg) {
            return;
        }
        let old_dest = self.destination().map(str::to_owned);
        if old_dest.as_deref() != Some(reg.destination.as_str()) {
            if let Some(old) = &old_dest {
                tracing::warn!(from = %old, to = %reg.destination, "the proxy now represents another service: dropping the old identity");
            }
            self.follow_destination(&reg.destination);
        }
        tracing::info!(
            destination = %reg.destination,
            inbound = ?reg.inbound.as_ref().map(|i| i.bind),
            upstreams = reg.upstreams.len(),
            "proxy configuration"
        );
        self.registration = Some(reg);
        self.follow_upstreams();
        // The Workload API's SVID may be for the new destination, or no longer.
        let dest = self.registration.as_ref().map(|r| r.destination.clone());
        self.publisher.readmit(|leaf| admit(dest.as_deref(), leaf));
    }

    /// Watches what belongs to `destination`: its leaf (unless the Workload API gives
    /// it) and its intentions.
    fn follow_destination(&mut self, destination: &str) {
        self.certs.forget_leaf();
        if !self.publisher.workload_api() {
            self.certs.watch_leaf(&self.agent, destination);
        }
        self.intentions.follow(&self.agent, destination);
    }

    /// A new identity from the Workload API: its bundle at once, its leaf only when it
    /// is for the service this proxy represents.
    fn on_identity(&mut self, identity: Option<Arc<Identity>>) {
        let dest = self.destination().map(str::to_owned);
        self.publisher
            .identity(identity, |leaf| admit(dest.as_deref(), leaf));
    }

    /// Publishes what is known; the publisher drops it if nothing changed.
    fn publish(&self) {
        let bundle = self.publisher.bundle(self.certs.bundle.as_ref());
        let trust_domain = bundle.map(|b| b.trust_domain.as_str());
        let previous = self.publisher.current();
        let upstreams = match &self.registration {
            Some(reg) => self.chains.upstreams(
                reg,
                &Context {
                    trust_domain,
                    local_dc: &self.local_dc(),
                    health: &self.health,
                    gateways: &self.gateways,
                    queries: &self.queries,
                    previous: &previous.upstreams,
                },
            ),
            None => Vec::new(),
        };
        self.publisher.publish(Snapshot {
            bundle: self.certs.bundle.clone(),
            leaf: self.certs.leaf.clone(),
            intentions: self.intentions.current.clone(),
            inbound: self.registration.as_ref().and_then(|r| r.inbound.clone()),
            upstreams,
            default_action: self.settings.default_action.clone(),
            blocked: self.blocked(),
            access_logs: self.access_logs.current.clone(),
            prometheus: self.registration.as_ref().and_then(|r| r.prometheus),
            request_normalization: self.mesh.current,
        });
    }

    /// What keeps the snapshot from completing, as far as the agent is concerned.
    fn blocked(&self) -> Vec<String> {
        let mut blocked: Vec<String> = self.registration_problem.iter().cloned().collect();
        blocked.extend(self.failures.blocked());
        blocked
    }
}

/// An SVID is served only for the registration's destination; before the registration
/// is known, and for another service, only its bundle is trusted.
fn admit(destination: Option<&str>, leaf: &Leaf) -> Admit {
    match destination {
        Some(dest) if leaf.id.service.eq_ignore_ascii_case(dest) => Admit::Serve,
        Some(dest) => {
            tracing::warn!(got = %leaf.id, want = %dest, "the Workload API's SVID is for another service than the registration's destination; not serving with it");
            Admit::BundleOnly
        }
        None => Admit::BundleOnly,
    }
}
