//! The gateway source's run loop: one task owns the state, takes every event the
//! watches send, applies it, and publishes the view when it changed. An error keeps
//! the last good value of what failed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::task::AbortOnDropHandle;

use super::local::LocalServices;
use super::registration::{Problem, Registration, registration};
use super::remote::{RemoteDatacenters, names_what, poll_datacenters};
use super::{Agent, Event};
use crate::api::agent::AgentService;
use crate::api::agent_self::AgentSelf;
use crate::consul::http::path_segment;
use crate::consul::source::failures::Failures;
use crate::consul::watch::{Blocking, Update, WatchSpec, Watcher, backoff};
use crate::gateway::GatewayView;
use crate::telemetry::{Resource, record_update};

const DATACENTERS: &str = "the datacenters";
const SELF: &str = "the agent's datacenter";

/// The gateway source's state, owned by the run loop.
pub(super) struct Follower {
    agent: Agent,
    proxy_id: String,
    datacenters_every: Duration,
    tx: watch::Sender<Arc<GatewayView>>,
    /// The registration and the roots.
    watches: Vec<Watcher>,
    /// The datacenters' poll and, when needed, the agent's datacenter.
    tasks: Vec<AbortOnDropHandle<()>>,
    registration: Option<Registration>,
    /// Set when the first registration read is not a mesh gateway.
    refused: Option<String>,
    /// Why the current registration cannot be served (the last good one is).
    problem: Option<String>,
    self_dc: Option<String>,
    asked_self: bool,
    trust_domain: Option<String>,
    local: LocalServices,
    remote: RemoteDatacenters,
    failures: Failures,
}

impl Follower {
    pub(super) fn new(
        agent: Agent,
        proxy_id: String,
        datacenters_every: Duration,
        tx: watch::Sender<Arc<GatewayView>>,
    ) -> Follower {
        Follower {
            agent,
            proxy_id,
            datacenters_every,
            tx,
            watches: Vec::new(),
            tasks: Vec::new(),
            registration: None,
            refused: None,
            problem: None,
            self_dc: None,
            asked_self: false,
            trust_domain: None,
            local: LocalServices::default(),
            remote: RemoteDatacenters::default(),
            failures: Failures::default(),
        }
    }

    pub(super) async fn run(mut self, mut events_rx: mpsc::Receiver<Event>) {
        tracing::info!(agent = %self.agent.client.addr(), proxy_id = %self.proxy_id, "following the Consul agent for a mesh gateway");
        self.start();
        self.publish();
        loop {
            tokio::select! {
                event = events_rx.recv() => {
                    // `self.agent` keeps the channel open, so `None` cannot happen.
                    let Some(event) = event else { return };
                    self.handle(event);
                }
                () = self.tx.closed() => return,
            }
            self.publish();
        }
    }

    fn start(&mut self) {
        let service = WatchSpec::get(
            format!("/v1/agent/service/{}", path_segment(&self.proxy_id)),
            Vec::new(),
            Blocking::Hash,
        );
        let roots = WatchSpec::get(
            "/v1/agent/connect/ca/roots".to_owned(),
            Vec::new(),
            Blocking::Index,
        );
        self.watches = vec![
            self.agent.watch(service, Event::Registration),
            self.agent.watch(roots, Event::Roots),
        ];
        self.local.start(&self.agent);
        let poll = poll_datacenters(self.agent.clone(), self.datacenters_every);
        self.tasks.push(self.agent.spawn(poll));
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Registration(update) => {
                if let Some(svc) = self.answered(Resource::Config, "registration", update) {
                    self.on_registration(&svc);
                }
            }
            Event::Roots(update) => {
                if let Some(roots) = self.answered(Resource::Roots, "roots", update) {
                    let trust_domain = roots.trust_domain();
                    record_update(Resource::Roots, trust_domain.is_some());
                    if trust_domain.is_some() {
                        self.trust_domain = trust_domain;
                    }
                }
            }
            Event::SelfDatacenter(answer) => self.on_self(answer),
            Event::Services(update) => {
                let what = "the services of this datacenter";
                if let Some(names) = self.answered(Resource::Catalog, what, update) {
                    self.local.on_names(names);
                    record_update(Resource::Catalog, true);
                }
                self.follow_local();
            }
            Event::Resolvers(update) => {
                if let Some(entries) = self.answered(Resource::Chain, "resolvers", update) {
                    self.local.on_resolvers(entries);
                    record_update(Resource::Chain, true);
                }
                self.follow_local();
            }
            Event::Health(key, update) => {
                if self.local.follows(&key)
                    && let Some(entries) = self.answered(Resource::Endpoints, &key.what(), update)
                {
                    self.local.on_health(key, entries);
                    record_update(Resource::Endpoints, true);
                }
            }
            Event::Datacenters(answer) => self.on_datacenters(answer),
            Event::GatewayNames(dc, update) => {
                if self.remote.follows_names(&dc)
                    && let Some(names) = self.answered(Resource::Catalog, &names_what(&dc), update)
                {
                    self.remote.on_names(dc, names);
                    record_update(Resource::Catalog, true);
                    self.follow_remote();
                }
            }
            Event::Gateways(key, update) => {
                if self.remote.follows(&key)
                    && let Some(entries) = self.answered(Resource::Endpoints, &key.what(), update)
                {
                    self.remote.on_gateways(key, entries);
                    record_update(Resource::Endpoints, true);
                }
            }
        }
    }

    /// Counts and logs a watch update; returns the new value if there is one.
    fn answered<T>(&mut self, resource: Resource, what: &str, update: Update<T>) -> Option<T> {
        self.failures.answered(resource, what, update)?.0
    }

    fn on_registration(&mut self, svc: &AgentService) {
        match registration(svc) {
            Ok(reg) => {
                record_update(Resource::Config, true);
                self.refused = None;
                self.problem = None;
                if self.registration.as_ref() != Some(&reg) {
                    let config = &reg.config;
                    tracing::info!(lan = %config.lan, wan = ?config.wan, datacenter = %reg.datacenter, "mesh gateway configuration");
                }
                if reg.datacenter.is_empty() && !self.asked_self {
                    self.asked_self = true;
                    let task = self.agent.spawn(self_datacenter(self.agent.clone()));
                    self.tasks.push(task);
                }
                self.registration = Some(reg);
                self.follow_remote();
            }
            Err(Problem::NotAGateway(why)) if self.registration.is_none() => {
                record_update(Resource::Config, false);
                self.refused = Some(why);
            }
            Err(Problem::NotAGateway(why) | Problem::Unusable(why)) => {
                record_update(Resource::Config, false);
                tracing::warn!(proxy_id = %self.proxy_id, "{why}; keeping the last good configuration");
                self.problem = Some(why);
            }
        }
    }

    fn on_self(&mut self, answer: Result<String, crate::consul::http::AgentError>) {
        match answer {
            Ok(dc) => {
                self.failures.recovered(SELF);
                record_update(Resource::Config, true);
                self.self_dc = Some(dc).filter(|dc| !dc.is_empty());
                self.follow_remote();
            }
            Err(e) => {
                record_update(Resource::Config, false);
                if self.failures.started(SELF, &e.to_string()) {
                    tracing::warn!(error = %e, "cannot get {SELF} from the agent; retrying");
                }
            }
        }
    }

    fn on_datacenters(&mut self, answer: Result<Vec<String>, crate::consul::http::AgentError>) {
        match answer {
            Ok(datacenters) => {
                self.failures.recovered(DATACENTERS);
                record_update(Resource::Catalog, true);
                self.remote.on_datacenters(datacenters);
                self.follow_remote();
            }
            Err(e) => {
                record_update(Resource::Catalog, false);
                if self.failures.started(DATACENTERS, &e.to_string()) {
                    tracing::warn!(error = %e, "cannot get {DATACENTERS} from the agent; keeping the last good list and retrying");
                }
            }
        }
    }

    /// The gateway's datacenter: the registration's, else the agent's.
    fn datacenter(&self) -> Option<&str> {
        let registered = self.registration.as_ref().map(|r| r.datacenter.as_str());
        registered
            .filter(|dc| !dc.is_empty())
            .or(self.self_dc.as_deref())
    }

    fn follow_local(&mut self) {
        for gone in self.local.follow(&self.agent) {
            self.failures.forget(&gone.what());
        }
    }

    fn follow_remote(&mut self) {
        let own = self.datacenter().map(str::to_owned);
        for gone in self.remote.follow(&self.agent, own.as_deref()) {
            self.failures.forget(&gone);
        }
    }

    /// Publishes the view when it differs from the last one.
    fn publish(&self) {
        let datacenter = self.datacenter().map(str::to_owned);
        let view = GatewayView {
            gateway: self.registration.as_ref().map(|r| r.config.clone()),
            remote: self.remote.view(datacenter.as_deref()),
            datacenter,
            trust_domain: self.trust_domain.clone(),
            services: self.local.view(),
            refused: self.refused.clone(),
            blocked: self
                .problem
                .iter()
                .cloned()
                .chain(self.failures.blocked())
                .collect(),
        };
        self.tx.send_if_modified(|current| {
            if **current == view {
                return false;
            }
            *current = Arc::new(view);
            true
        });
    }
}

/// Asks `/v1/agent/self` for the agent's datacenter until it answers.
async fn self_datacenter(agent: Agent) {
    let mut failures = 0;
    loop {
        let answer = agent.get_json::<AgentSelf>("/v1/agent/self").await;
        let done = answer.is_ok();
        let event = Event::SelfDatacenter(answer.map(|a| a.config.datacenter));
        if agent.events.send(event).await.is_err() || done {
            return;
        }
        failures += 1;
        let tuning = &agent.tuning;
        tokio::time::sleep(backoff(failures, tuning.backoff_base, tuning.backoff_cap)).await;
    }
}
