//! Consul mode's snapshot source: the agent's answers, turned into the `Snapshot` the
//! proxy reads, kept current with blocking queries (the Consul-mode twin of
//! `file::FileSource`).
//!
//! One task owns all state. Watchers (`watch`) feed it typed updates for the proxy's
//! registration (`/v1/agent/service/<id>`, spec 6.2), the CA roots, the leaf of the
//! destination service, the intentions that protect it, and the healthy instances of each
//! upstream; it also learns the default intention action (spec 5.3). Every answer is
//! counted; a change is applied and published at once; an error keeps the last good value.
//! Unchanged pieces keep their `Arc`, so the proxy can tell by pointer what changed (a new
//! `Arc<Intentions>` re-checks live connections, a new leaf or bundle rebuilds TLS).
//!
//! No request carries `ns` or `partition`: Community Edition agents reject them.
//!
//! With `--workload-api` ([`ConsulSource::with_identity`]) the leaf and the bundles come
//! from the SPIFFE Workload API instead: the agent's roots and leaf are not watched, the
//! SVID must be for the registration's destination service, and upstream identities are
//! pinned in the SVID's trust domain.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::http::{
    AgentClient, AgentClientConfig, AgentError, ClientConfigError, DEFAULT_ACL_POLICY_HEADER,
    header_str, path_segment,
};
use super::watch::{Blocking, Meta, Tuning, Update, WatchSpec, Watcher, backoff};
use crate::api::agent::{
    AgentService, AgentServices, DESTINATION_PREPARED_QUERY, DESTINATION_SERVICE,
};
use crate::api::agent_self::AgentSelf;
use crate::api::ca::{IndexedCARoots, IssuedCert};
use crate::api::health::ServiceEntry;
use crate::api::intentions::{Intention as WireIntention, IntentionMatchResponse};
use crate::identity::{DEFAULT, ServiceId};
use crate::intentions::{Action, Destination, Intentions};
use crate::model::{
    self, DefaultAction, Endpoint, InboundConfig, Leaf, Protocol, Snapshot, TrustBundle,
    UpstreamConfig,
};
use crate::telemetry::{CONFIG, ENDPOINTS, INTENTIONS, LEAF, ROOTS, record_update};
use crate::workload::{Identity, IdentityFeed};

/// Consul's default blocking wait (`default_query_time`).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// Defaults of the built-in proxy for what `Proxy.Config` may set (spec 6.2), and of
/// Envoy for the upstream connect timeout (spec 7).
const DEFAULT_LOCAL_CONNECT_TIMEOUT_MS: u64 = 1_000;
const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// `/v1/agent/self` changes only when the agent's config is reloaded: re-read it now and
/// then, not with a blocking query (it has none).
const SELF_REFRESH: Duration = Duration::from_secs(300);
/// How long a one-shot request (`/v1/agent/self`, `/v1/agent/services`) may take.
const ONE_SHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which registration this proxy serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxySelector {
    /// `--sidecar-for <SERVICE_ID>`: the one `connect-proxy` whose
    /// `Proxy.DestinationServiceID` is this instance ID.
    SidecarFor(String),
    /// `--proxy-id <PROXY_SERVICE_ID>`: a registered `connect-proxy` service.
    ProxyId(String),
}

/// Everything Consul mode needs from the command line.
#[derive(Debug, Clone)]
pub struct ConsulConfig {
    pub agent: AgentClientConfig,
    pub selector: ProxySelector,
    /// `--default-action`: overrides what the agent says (spec 5.3).
    pub default_action: Option<Action>,
    /// The `wait` of every blocking query.
    pub wait: Duration,
}

impl ConsulConfig {
    pub fn new(agent: AgentClientConfig, selector: ProxySelector) -> Self {
        ConsulConfig {
            agent,
            selector,
            default_action: None,
            wait: DEFAULT_WAIT,
        }
    }
}

/// Follows a Consul agent and publishes snapshots.
pub struct ConsulSource {
    client: AgentClient,
    selector: ProxySelector,
    default_override: Option<Action>,
    provider: Arc<CryptoProvider>,
    tuning: Tuning,
    identity: Option<IdentityFeed>,
}

impl ConsulSource {
    /// Builds the agent client now, so a bad token file or CA file is a start-up error.
    pub fn new(
        config: ConsulConfig,
        provider: Arc<CryptoProvider>,
    ) -> Result<ConsulSource, ClientConfigError> {
        let client = AgentClient::new(&config.agent, provider.clone())?;
        Ok(ConsulSource {
            client,
            selector: config.selector,
            default_override: config.default_action,
            provider,
            tuning: Tuning {
                wait: config.wait,
                ..Tuning::default()
            },
            identity: None,
        })
    }

    /// Takes the leaf and bundles from the Workload API instead of the agent.
    pub fn with_identity(mut self, feed: IdentityFeed) -> Self {
        self.identity = Some(feed);
        self
    }

    #[cfg(test)]
    fn with_tuning(mut self, tuning: Tuning) -> Self {
        self.tuning = tuning;
        self
    }

    /// Returns at once with an empty snapshot (the proxy fails closed until it fills in)
    /// and follows the agent in the background for as long as anyone holds the receiver.
    pub fn spawn(self) -> watch::Receiver<Arc<Snapshot>> {
        self.spawn_until(CancellationToken::new())
    }

    /// As [`ConsulSource::spawn`], and stops following the agent once `stop` is
    /// cancelled (receivers keep the last snapshot).
    pub fn spawn_until(self, stop: CancellationToken) -> watch::Receiver<Arc<Snapshot>> {
        let first = Snapshot {
            default_action: self.default_override.map(|action| DefaultAction {
                action,
                source: SOURCE_FLAG,
            }),
            ..Snapshot::default()
        };
        let (tx, rx) = watch::channel(Arc::new(first));
        let (events, events_rx) = mpsc::channel(64);
        let run = Run::new(self, tx, events);
        tokio::spawn(async move {
            tokio::select! {
                () = run.run(events_rx) => {}
                () = stop.cancelled() => {}
            }
        });
        rx
    }
}

const SOURCE_FLAG: &str = "--default-action";
const SOURCE_INTENTION_POLICY: &str = "agent default_intention_policy";
const SOURCE_ACL_POLICY: &str = "agent acl.default_policy (ACLs enabled)";
const SOURCE_ACLS_OFF: &str = "agent has ACLs disabled (allow)";
const SOURCE_HEADER: &str =
    "X-Consul-Default-ACL-Policy (no agent:read; default_intention_policy unknown)";

enum Event {
    ProxyId(String),
    SelfAnswer(SelfAnswer),
    Service(Update<Box<AgentService>>),
    Roots(Update<IndexedCARoots>),
    Leaf(String, Update<Box<IssuedCert>>),
    Intentions(String, Update<IntentionMatchResponse>),
    Endpoints(UpstreamKey, Update<Vec<ServiceEntry>>),
    Identity(Option<Arc<Identity>>),
}

enum SelfAnswer {
    Ok(Box<AgentSelf>),
    /// 4xx, typically 403 without `agent:read`; with the header policy if it came along.
    Refused(AgentError, Option<Action>),
    Failed(AgentError),
}

/// One discovery watch: a service in a datacenter (`""` = local).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct UpstreamKey {
    name: String,
    datacenter: String,
}

#[derive(Debug, Clone, PartialEq)]
struct UpstreamSpec {
    key: UpstreamKey,
    bind: SocketAddr,
    protocol: Protocol,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    max_connections: usize,
}

/// What the proxy's registration says, validated.
#[derive(Debug, Clone, PartialEq)]
struct Registration {
    /// `Proxy.DestinationServiceName`: the identity of leaf, intentions and peers.
    destination: String,
    /// The agent's datacenter, as the registration reports it (`""` if it does not).
    datacenter: String,
    inbound: Option<InboundConfig>,
    upstreams: Vec<UpstreamSpec>,
}

struct Run {
    client: AgentClient,
    provider: Arc<CryptoProvider>,
    tuning: Tuning,
    selector: ProxySelector,
    default_override: Option<Action>,
    tx: watch::Sender<Arc<Snapshot>>,
    events: mpsc::Sender<Event>,
    /// `--workload-api`: the feed, until `run` starts forwarding it.
    identity_feed: Option<IdentityFeed>,
    /// The Workload API's latest identity; `Some(None)` before its first SVID.
    external: Option<Option<Arc<Identity>>>,

    tasks: Vec<AbortOnDropHandle<()>>,
    roots_watch: Option<Watcher>,
    service_watch: Option<Watcher>,
    leaf_watch: Option<Watcher>,
    leaf_deadline: watch::Sender<Option<Instant>>,
    intentions_watch: Option<Watcher>,
    upstream_watches: HashMap<UpstreamKey, Watcher>,

    registration: Option<Registration>,
    roots: Option<IndexedCARoots>,
    bundle: Option<Arc<TrustBundle>>,
    leaf: Option<Arc<Leaf>>,
    intention_list: Option<Vec<WireIntention>>,
    intentions: Option<Arc<Intentions>>,
    endpoints: HashMap<UpstreamKey, Vec<ServiceEntry>>,
    agent_datacenter: String,
    default_from_self: Option<DefaultAction>,
    self_refused: bool,
    header_policy: Option<Action>,
    default_action: Option<DefaultAction>,
    failing: HashSet<String>,
}

impl Run {
    fn new(
        source: ConsulSource,
        tx: watch::Sender<Arc<Snapshot>>,
        events: mpsc::Sender<Event>,
    ) -> Run {
        let default_action = tx.borrow().default_action.clone();
        let external = source.identity.as_ref().map(|_| None);
        Run {
            identity_feed: source.identity,
            external,
            client: source.client,
            provider: source.provider,
            tuning: source.tuning,
            selector: source.selector,
            default_override: source.default_override,
            tx,
            events,
            tasks: Vec::new(),
            roots_watch: None,
            service_watch: None,
            leaf_watch: None,
            leaf_deadline: watch::channel(None).0,
            intentions_watch: None,
            upstream_watches: HashMap::new(),
            registration: None,
            roots: None,
            bundle: None,
            leaf: None,
            intention_list: None,
            intentions: None,
            endpoints: HashMap::new(),
            agent_datacenter: String::new(),
            default_from_self: None,
            self_refused: false,
            header_policy: None,
            default_action,
            failing: HashSet::new(),
        }
    }

    async fn run(mut self, mut events_rx: mpsc::Receiver<Event>) {
        tracing::info!(agent = %self.client.addr(), selector = ?self.selector, "following the Consul agent");
        match self.identity_feed.take() {
            Some(feed) => {
                let task = tokio::spawn(forward_identity(feed, self.events.clone()));
                self.tasks.push(AbortOnDropHandle::new(task));
            }
            None => {
                self.roots_watch = Some(self.watch(
                    WatchSpec {
                        path: "/v1/agent/connect/ca/roots".into(),
                        query: Vec::new(),
                        blocking: Blocking::Index,
                    },
                    Event::Roots,
                ));
            }
        }
        if self.default_override.is_none() {
            let task = tokio::spawn(self_loop(
                self.client.clone(),
                self.tuning.clone(),
                self.events.clone(),
            ));
            self.tasks.push(AbortOnDropHandle::new(task));
        }
        match self.selector.clone() {
            ProxySelector::ProxyId(id) => self.follow_proxy(id),
            ProxySelector::SidecarFor(service_id) => {
                let task = tokio::spawn(resolve_sidecar(
                    self.client.clone(),
                    service_id,
                    self.tuning.clone(),
                    self.events.clone(),
                ));
                self.tasks.push(AbortOnDropHandle::new(task));
            }
        }
        loop {
            tokio::select! {
                event = events_rx.recv() => {
                    // `self.events` keeps the channel open, so `None` cannot happen.
                    let Some(event) = event else { return };
                    self.handle(event);
                    self.publish();
                }
                () = self.tx.closed() => return,
            }
        }
    }

    fn watch<T, F>(&self, spec: WatchSpec, wrap: F) -> Watcher
    where
        T: serde::de::DeserializeOwned + Send + 'static,
        F: Fn(Update<T>) -> Event + Send + 'static,
    {
        Watcher::spawn(
            self.client.clone(),
            spec,
            self.tuning.clone(),
            self.events.clone(),
            wrap,
        )
    }

    fn follow_proxy(&mut self, proxy_id: String) {
        tracing::info!(proxy_id = %proxy_id, "watching the proxy's registration");
        self.service_watch = Some(self.watch(
            WatchSpec {
                path: format!("/v1/agent/service/{}", path_segment(&proxy_id)),
                query: Vec::new(),
                blocking: Blocking::Hash,
            },
            Event::Service,
        ));
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::ProxyId(id) => self.follow_proxy(id),
            Event::SelfAnswer(answer) => self.on_self(answer),
            Event::Service(update) => {
                if let Some(svc) = self.answered(CONFIG, "registration", update) {
                    self.on_registration(&svc);
                }
            }
            Event::Roots(update) => {
                if let Some(roots) = self.answered(ROOTS, "roots", update) {
                    self.roots = Some(roots);
                    let ok = self.rebuild_bundle();
                    record_update(ROOTS, ok);
                }
            }
            Event::Leaf(dest, update) => {
                if self.destination() != Some(dest.as_str()) {
                    return;
                }
                if let Some(cert) = self.answered(LEAF, "leaf", update) {
                    let ok = self.on_leaf(&dest, &cert);
                    record_update(LEAF, ok);
                }
            }
            Event::Intentions(dest, update) => {
                if self.destination() != Some(dest.as_str()) {
                    return;
                }
                if let Some(mut answer) = self.answered(INTENTIONS, "intentions", update) {
                    // The answer is keyed by the name exactly as sent; `null` is empty.
                    let ok = match answer.remove(&dest) {
                        Some(list) => {
                            self.intention_list = Some(list.unwrap_or_default());
                            self.rebuild_intentions()
                        }
                        None => {
                            tracing::warn!(destination = %dest, "intentions answer has no entry for this service; keeping the last good intentions");
                            false
                        }
                    };
                    record_update(INTENTIONS, ok);
                }
            }
            Event::Endpoints(key, update) => {
                if !self.upstream_watches.contains_key(&key) {
                    return;
                }
                let what = format!("endpoints of {}", key.name);
                if let Some(entries) = self.answered(ENDPOINTS, &what, update) {
                    self.endpoints.insert(key, entries);
                    record_update(ENDPOINTS, true);
                }
            }
            Event::Identity(identity) => {
                self.external = Some(identity);
                self.apply_identity();
            }
        }
    }

    /// Puts the Workload API's identity in force: its bundle at once, its leaf only when
    /// it is for the service this proxy represents.
    fn apply_identity(&mut self) {
        let Some(external) = &self.external else {
            return;
        };
        let Some(identity) = external.clone() else {
            self.leaf = None;
            self.bundle = None;
            return;
        };
        self.bundle = Some(identity.bundle.clone());
        self.leaf = match self.destination() {
            Some(dest) if identity.leaf.id.service.eq_ignore_ascii_case(dest) => {
                Some(identity.leaf.clone())
            }
            Some(dest) => {
                tracing::warn!(got = %identity.leaf.id, want = %dest, "the Workload API's SVID is for another service than the registration's destination; not serving with it");
                None
            }
            None => None,
        };
    }

    /// Counts and logs a watch update; returns the new value if there is one. A failure
    /// is logged at warn when it starts and at debug while it lasts.
    fn answered<T>(&mut self, resource: &'static str, what: &str, update: Update<T>) -> Option<T> {
        match update {
            Update::Changed { value, meta } => {
                self.recovered(what);
                self.on_meta(&meta);
                Some(value)
            }
            Update::Unchanged { meta } => {
                self.recovered(what);
                self.on_meta(&meta);
                record_update(resource, true);
                None
            }
            Update::Failed(e) => {
                record_update(resource, false);
                if self.failing.insert(what.to_owned()) {
                    tracing::warn!(error = %e, "cannot get {what} from the agent; keeping the last good state and retrying");
                } else {
                    tracing::debug!(error = %e, "still cannot get {what}");
                }
                None
            }
        }
    }

    fn recovered(&mut self, what: &str) {
        if self.failing.remove(what) {
            tracing::info!("{what}: the agent answers again");
        }
    }

    fn on_meta(&mut self, meta: &Meta) {
        if let Some(policy) = meta
            .default_acl_policy
            .as_deref()
            .and_then(|p| p.parse().ok())
            && self.header_policy != Some(policy)
        {
            self.header_policy = Some(policy);
            self.resolve_default();
        }
    }

    fn destination(&self) -> Option<&str> {
        self.registration.as_ref().map(|r| r.destination.as_str())
    }

    fn on_self(&mut self, answer: SelfAnswer) {
        match answer {
            SelfAnswer::Ok(me) => {
                record_update(CONFIG, true);
                self.recovered("agent self");
                self.agent_datacenter = me.config.datacenter.clone();
                self.default_from_self = default_from_self(&me);
                let unreadable = self.default_from_self.is_none();
                if unreadable && !self.self_refused {
                    tracing::warn!(
                        "the agent's /v1/agent/self does not say its ACL default policy; using X-Consul-Default-ACL-Policy"
                    );
                }
                // Unreadable settings fall back to the header, like a refusal.
                self.self_refused = unreadable;
            }
            SelfAnswer::Refused(e, header) => {
                record_update(CONFIG, false);
                if !self.self_refused {
                    tracing::warn!(error = %e, "cannot read /v1/agent/self (the token needs agent:read): the default intention action falls back to the agent's ACL default policy from X-Consul-Default-ACL-Policy, which ignores default_intention_policy; pass --default-action to pin it");
                }
                self.self_refused = true;
                self.default_from_self = None;
                if let Some(policy) = header {
                    self.header_policy = Some(policy);
                }
            }
            SelfAnswer::Failed(e) => {
                record_update(CONFIG, false);
                if self.failing.insert("agent self".into()) {
                    tracing::warn!(error = %e, "cannot read /v1/agent/self; retrying");
                }
            }
        }
        self.resolve_default();
    }

    /// Spec 5.3: the flag, else what the agent's config says, else (when that cannot be
    /// read) the ACL default policy header.
    fn resolve_default(&mut self) {
        let resolved = match (self.default_override, &self.default_from_self) {
            (Some(action), _) => Some(DefaultAction {
                action,
                source: SOURCE_FLAG,
            }),
            (None, Some(from_self)) => Some(from_self.clone()),
            (None, None) if self.self_refused => self.header_policy.map(|action| DefaultAction {
                action,
                source: SOURCE_HEADER,
            }),
            (None, None) => None,
        };
        let same = match (&resolved, &self.default_action) {
            (Some(a), Some(b)) => a.action == b.action && a.source == b.source,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        if let Some(d) = &resolved {
            tracing::info!(action = %d.action, source = d.source, "default intention action");
        }
        let action_changed =
            resolved.as_ref().map(|d| d.action) != self.default_action.as_ref().map(|d| d.action);
        self.default_action = resolved;
        if action_changed && self.intention_list.is_some() {
            // The model carries the default: a new one means new intentions.
            let ok = self.rebuild_intentions();
            if !ok {
                record_update(INTENTIONS, false);
            }
        }
    }

    fn on_registration(&mut self, svc: &AgentService) {
        let reg = match registration(svc) {
            Ok(reg) => reg,
            Err(problem) => {
                record_update(CONFIG, false);
                tracing::warn!(proxy_id = %svc.id, "{problem}; keeping the last good configuration");
                return;
            }
        };
        record_update(CONFIG, true);
        if self.registration.as_ref() == Some(&reg) {
            return;
        }
        let old_dest = self.destination().map(str::to_owned);
        if old_dest.as_deref() != Some(reg.destination.as_str()) {
            if let Some(old) = &old_dest {
                tracing::warn!(from = %old, to = %reg.destination, "the proxy now represents another service: dropping the old identity");
            }
            self.leaf = None;
            self.intention_list = None;
            self.intentions = None;
            self.leaf_deadline.send_replace(None);
            let dest = reg.destination.clone();
            let (d1, d2) = (dest.clone(), dest.clone());
            if self.external.is_none() {
                self.leaf_watch = Some(Watcher::spawn_forced(
                    self.client.clone(),
                    WatchSpec {
                        path: format!("/v1/agent/connect/ca/leaf/{}", path_segment(&dest)),
                        query: Vec::new(),
                        blocking: Blocking::Index,
                    },
                    self.tuning.clone(),
                    Some(self.leaf_deadline.subscribe()),
                    self.events.clone(),
                    move |u| Event::Leaf(d1.clone(), u),
                ));
            }
            self.intentions_watch = Some(self.watch(
                WatchSpec {
                    path: "/v1/connect/intentions/match".into(),
                    query: vec![
                        ("by".into(), "destination".into()),
                        ("name".into(), dest.clone()),
                    ],
                    blocking: Blocking::Index,
                },
                move |u| Event::Intentions(d2.clone(), u),
            ));
        }

        let wanted: BTreeSet<UpstreamKey> = reg.upstreams.iter().map(|u| u.key.clone()).collect();
        self.upstream_watches.retain(|key, _| wanted.contains(key));
        self.endpoints.retain(|key, _| wanted.contains(key));
        for key in wanted {
            if self.upstream_watches.contains_key(&key) {
                continue;
            }
            let mut query = vec![("passing".to_owned(), "1".to_owned())];
            if !key.datacenter.is_empty() {
                query.push(("dc".into(), key.datacenter.clone()));
            }
            let k = key.clone();
            let watcher = self.watch(
                WatchSpec {
                    path: format!("/v1/health/connect/{}", path_segment(&key.name)),
                    query,
                    blocking: Blocking::Index,
                },
                move |u| Event::Endpoints(k.clone(), u),
            );
            self.upstream_watches.insert(key, watcher);
        }
        tracing::info!(
            destination = %reg.destination,
            inbound = ?reg.inbound.as_ref().map(|i| i.bind),
            upstreams = reg.upstreams.len(),
            "proxy configuration"
        );
        self.registration = Some(reg);
        self.apply_identity();
    }

    fn on_leaf(&mut self, dest: &str, cert: &IssuedCert) -> bool {
        let leaf = model::parse_leaf(
            cert.cert_pem.as_bytes(),
            cert.private_key_pem.as_bytes(),
            &self.provider,
        );
        let leaf = match leaf {
            Ok(leaf) if leaf.id.service.eq_ignore_ascii_case(dest) => leaf,
            Ok(leaf) => {
                tracing::warn!(got = %leaf.id, want = %dest, "the agent's leaf is for another service; keeping the last good one");
                return false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the agent's leaf does not load; keeping the last good one");
                return false;
            }
        };
        tracing::info!(id = %leaf.id, serial = %leaf.serial, "leaf certificate loaded");
        self.leaf_deadline
            .send_replace(refresh_deadline(cert, leaf.not_after));
        self.leaf = Some(Arc::new(leaf));
        if self.bundle.is_none() {
            self.rebuild_bundle();
        }
        true
    }

    /// Every root is an anchor (spec 3.1): rotated-out roots stay trusted for their overlap.
    fn rebuild_bundle(&mut self) -> bool {
        let Some(roots) = &self.roots else {
            return false;
        };
        let trust_domain = roots
            .trust_domain()
            .or_else(|| self.leaf.as_ref().map(|l| l.id.trust_domain.clone()));
        let Some(trust_domain) = trust_domain else {
            tracing::debug!("roots without a trust domain: waiting for the leaf to name it");
            return true;
        };
        let pem: String = roots
            .roots
            .iter()
            .map(|r| format!("{}\n", r.root_cert.trim_end()))
            .collect();
        match model::parse_bundle(pem.as_bytes(), &trust_domain) {
            Ok(bundle) => {
                let same = self.bundle.as_ref().is_some_and(|b| {
                    b.roots == bundle.roots && b.trust_domain == bundle.trust_domain
                });
                if !same {
                    tracing::info!(trust_domain = %bundle.trust_domain, roots = bundle.roots.len(), "trust bundle loaded");
                    self.bundle = Some(Arc::new(bundle));
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the agent's CA roots do not load; keeping the last good ones");
                false
            }
        }
    }

    fn rebuild_intentions(&mut self) -> bool {
        let (Some(dest), Some(list), Some(default)) = (
            self.destination(),
            &self.intention_list,
            &self.default_action,
        ) else {
            return true;
        };
        match Intentions::from_match(
            list.clone(),
            Destination::new(DEFAULT, DEFAULT, dest),
            default.action,
        ) {
            Ok(ixns) => {
                tracing::info!(rules = ixns.rules().len(), default = %default.action, "intentions loaded");
                self.intentions = Some(Arc::new(ixns));
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the agent's intentions do not load; keeping the last good ones");
                false
            }
        }
    }

    fn upstreams(&self) -> Vec<UpstreamConfig> {
        let Some(reg) = &self.registration else {
            return Vec::new();
        };
        let trust_domain = self.bundle.as_ref().map(|b| b.trust_domain.as_str());
        let local_dc = if reg.datacenter.is_empty() {
            &self.agent_datacenter
        } else {
            &reg.datacenter
        };
        reg.upstreams
            .iter()
            .map(|up| {
                let endpoints = match (trust_domain, self.endpoints.get(&up.key)) {
                    (Some(td), Some(entries)) => entries
                        .iter()
                        .filter_map(|e| endpoint(e, &up.key.datacenter, local_dc, td))
                        .collect(),
                    // Without the trust domain no identity can be pinned: no endpoints.
                    _ => Vec::new(),
                };
                UpstreamConfig {
                    name: up.key.name.clone(),
                    bind: up.bind,
                    protocol: up.protocol,
                    connect_timeout: up.connect_timeout,
                    request_timeout: up.request_timeout,
                    idle_timeout: up.idle_timeout,
                    max_connections: up.max_connections,
                    endpoints,
                }
            })
            .collect()
    }

    /// Publishes a new snapshot if anything differs from the last one; unchanged pieces
    /// are the same `Arc`s.
    fn publish(&mut self) {
        let prev = self.tx.borrow().clone();
        let next = Snapshot {
            bundle: self.bundle.clone(),
            leaf: self.leaf.clone(),
            intentions: self.intentions.clone(),
            inbound: self.registration.as_ref().and_then(|r| r.inbound.clone()),
            upstreams: self.upstreams(),
            default_action: self.default_action.clone(),
        };
        let same_default = match (&prev.default_action, &next.default_action) {
            (Some(a), Some(b)) => a.action == b.action && a.source == b.source,
            (None, None) => true,
            _ => false,
        };
        let same = same_arc(&prev.bundle, &next.bundle)
            && same_arc(&prev.leaf, &next.leaf)
            && same_arc(&prev.intentions, &next.intentions)
            && prev.inbound == next.inbound
            && prev.upstreams == next.upstreams
            && same_default;
        if !same {
            self.tx.send_replace(Arc::new(next));
        }
    }
}

fn same_arc<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

fn default_from_self(me: &AgentSelf) -> Option<DefaultAction> {
    if let Some(policy) = me.default_intention_policy() {
        return match policy.parse() {
            Ok(action) => Some(DefaultAction {
                action,
                source: SOURCE_INTENTION_POLICY,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "the agent's default_intention_policy is not allow or deny");
                None
            }
        };
    }
    match me.acls_enabled() {
        Some(true) => me
            .acl_default_policy()
            .and_then(|p| p.parse().ok())
            .map(|action| DefaultAction {
                action,
                source: SOURCE_ACL_POLICY,
            }),
        Some(false) => Some(DefaultAction {
            action: Action::Allow,
            source: SOURCE_ACLS_OFF,
        }),
        None => None,
    }
}

/// Reads `/v1/agent/self` now and then (it has no blocking query).
async fn self_loop(client: AgentClient, tuning: Tuning, events: mpsc::Sender<Event>) {
    let mut failures = 0;
    loop {
        let result = client
            .send(
                http::Method::GET,
                "/v1/agent/self",
                &[],
                bytes::Bytes::new(),
                ONE_SHOT_TIMEOUT,
            )
            .await;
        let answer = match result {
            Ok((status, answer)) if status.is_success() => {
                match super::http::decode::<AgentSelf>("/v1/agent/self", &answer.body) {
                    Ok(me) => SelfAnswer::Ok(Box::new(me)),
                    Err(e) => SelfAnswer::Failed(e),
                }
            }
            Ok((status, answer)) => {
                let header = header_str(&answer.headers, DEFAULT_ACL_POLICY_HEADER)
                    .and_then(|p| p.trim().parse().ok());
                let text = String::from_utf8_lossy(&answer.body).trim().to_owned();
                let e = AgentError::Status {
                    path: "/v1/agent/self".into(),
                    status,
                    text,
                };
                if status.is_client_error() {
                    SelfAnswer::Refused(e, header)
                } else {
                    SelfAnswer::Failed(e)
                }
            }
            Err(e) => SelfAnswer::Failed(e),
        };
        let delay = match &answer {
            SelfAnswer::Ok(_) | SelfAnswer::Refused(..) => {
                failures = 0;
                SELF_REFRESH
            }
            SelfAnswer::Failed(_) => {
                failures += 1;
                backoff(failures, tuning.backoff_base, tuning.backoff_cap)
            }
        };
        if events.send(Event::SelfAnswer(answer)).await.is_err() {
            return;
        }
        tokio::time::sleep(delay).await;
    }
}

/// Hands every identity the Workload API source publishes to the run loop.
async fn forward_identity(mut feed: IdentityFeed, events: mpsc::Sender<Event>) {
    loop {
        let current = feed.borrow_and_update().clone();
        if events.send(Event::Identity(current)).await.is_err() || feed.changed().await.is_err() {
            return;
        }
    }
}

/// `--sidecar-for`: finds the one connect-proxy for the instance (spec 3.5), retrying
/// until it exists, since the registration may come after the proxy starts.
async fn resolve_sidecar(
    client: AgentClient,
    service_id: String,
    tuning: Tuning,
    events: mpsc::Sender<Event>,
) {
    let mut failures = 0;
    let mut warned = false;
    loop {
        let problem = match client
            .get_json::<AgentServices>("/v1/agent/services", &[], ONE_SHOT_TIMEOUT)
            .await
        {
            Ok(services) => {
                record_update(CONFIG, true);
                let mut found: Vec<&AgentService> = services
                    .values()
                    .filter(|s| {
                        s.is_connect_proxy()
                            && s.proxy.as_ref().is_some_and(|p| {
                                p.destination_service_id.eq_ignore_ascii_case(&service_id)
                            })
                    })
                    .collect();
                found.sort_by(|a, b| a.id.cmp(&b.id));
                match found.as_slice() {
                    [one] => {
                        tracing::info!(service_id = %service_id, proxy_id = %one.id, "found the sidecar registration");
                        let _ = events.send(Event::ProxyId(one.id.clone())).await;
                        return;
                    }
                    [] => format!(
                        "no connect-proxy registered on the agent for service instance {service_id:?} (register it with a sidecar_service)"
                    ),
                    several => format!(
                        "several connect-proxies registered for service instance {service_id:?}: {}; use --proxy-id",
                        several
                            .iter()
                            .map(|s| s.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            }
            Err(e) => {
                record_update(CONFIG, false);
                format!("cannot list the agent's services: {e}")
            }
        };
        if !warned {
            tracing::warn!("{problem}; retrying");
            warned = true;
        } else {
            tracing::debug!("{problem}");
        }
        failures += 1;
        tokio::time::sleep(backoff(failures, tuning.backoff_base, tuning.backoff_cap)).await;
    }
}

/// Validates a registration and derives the proxy's configuration from it (spec 6.2).
/// Values the registration gets wrong but that have a sane default are warned about and
/// defaulted; only what makes the proxy meaningless is refused.
fn registration(svc: &AgentService) -> Result<Registration, String> {
    if !svc.is_connect_proxy() {
        return Err(format!(
            "service {:?} is not a connect-proxy (Kind {:?})",
            svc.id, svc.kind
        ));
    }
    let Some(proxy) = &svc.proxy else {
        return Err(format!("connect-proxy {:?} has no Proxy block", svc.id));
    };
    if proxy.destination_service_name.is_empty() {
        return Err(format!(
            "connect-proxy {:?} has no Proxy.DestinationServiceName",
            svc.id
        ));
    }
    let config = &proxy.config;
    let inbound = {
        let address = config_str(config, "bind_address").unwrap_or(&svc.address);
        let ip = match address {
            "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            a => a.parse().unwrap_or_else(|_| {
                tracing::warn!(address = %a, "the public listener address is not an IP address; binding 0.0.0.0");
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            }),
        };
        let port = config_u64(config, "bind_port")
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(svc.port);
        if port == 0 {
            tracing::warn!(proxy_id = %svc.id, "no public listener port: inbound disabled");
            None
        } else if proxy.local_service_port == 0 {
            tracing::warn!(proxy_id = %svc.id, "no Proxy.LocalServicePort (unix-socket applications are not supported): inbound disabled");
            None
        } else {
            let local = match proxy.local_service_address.as_str() {
                "" => LOCALHOST.to_string(),
                a => a.to_owned(),
            };
            Some(InboundConfig {
                bind: SocketAddr::new(ip, port),
                local_app: host_port(&local, proxy.local_service_port),
                protocol: protocol(config, "Proxy.Config"),
                handshake_timeout: millis(
                    config,
                    "handshake_timeout_ms",
                    DEFAULT_HANDSHAKE_TIMEOUT_MS,
                ),
                local_connect_timeout: millis(
                    config,
                    "local_connect_timeout_ms",
                    DEFAULT_LOCAL_CONNECT_TIMEOUT_MS,
                ),
                local_request_timeout: model::request_timeout_ms(config_u64(
                    config,
                    "local_request_timeout_ms",
                )),
                idle_timeout: model::idle_timeout_ms(config_u64(config, "idle_timeout_ms")),
                // Envoy's key for the public listener's connection limit.
                max_connections: model::max_connections(config_u64(
                    config,
                    "max_inbound_connections",
                )),
            })
        }
    };

    let mut upstreams = Vec::new();
    let mut binds = HashSet::new();
    for up in &proxy.upstreams {
        let name = &up.destination_name;
        let skip = |why: &str| tracing::warn!(upstream = %name, "upstream skipped: {why}");
        match up.destination_type.as_str() {
            "" | DESTINATION_SERVICE => {}
            DESTINATION_PREPARED_QUERY => {
                skip("prepared-query upstreams are not supported");
                continue;
            }
            other => {
                skip(&format!("unknown DestinationType {other:?}"));
                continue;
            }
        }
        if up.local_bind_port == 0 {
            if up.local_bind_socket_path.is_empty() && !up.centrally_configured {
                skip("no LocalBindPort");
            } else if !up.local_bind_socket_path.is_empty() {
                skip("unix-socket upstream listeners are not supported");
            }
            continue;
        }
        if name.is_empty() || name == "*" {
            skip("no DestinationName");
            continue;
        }
        if !up.destination_peer.is_empty() {
            skip("cluster-peering upstreams are not supported");
            continue;
        }
        let ent = |v: &str| !v.is_empty() && v != DEFAULT;
        if ent(&up.destination_namespace) || ent(&up.destination_partition) {
            skip("namespaces and partitions other than default need Consul Enterprise");
            continue;
        }
        let ip = match up.local_bind_address.as_str() {
            "" | "localhost" => LOCALHOST,
            a => match a.parse() {
                Ok(ip) => ip,
                Err(_) => {
                    skip(&format!("LocalBindAddress {a:?} is not an IP address"));
                    continue;
                }
            },
        };
        let bind = SocketAddr::new(ip, up.local_bind_port);
        if !binds.insert(bind) {
            skip(&format!("{bind} is already used by another upstream"));
            continue;
        }
        upstreams.push(UpstreamSpec {
            key: UpstreamKey {
                name: name.clone(),
                datacenter: up.datacenter.clone(),
            },
            bind,
            protocol: protocol(&up.config, name),
            connect_timeout: millis(&up.config, "connect_timeout_ms", DEFAULT_CONNECT_TIMEOUT_MS),
            request_timeout: model::request_timeout_ms(config_u64(
                &up.config,
                "request_timeout_ms",
            )),
            idle_timeout: model::idle_timeout_ms(config_u64(&up.config, "idle_timeout_ms")),
            max_connections: model::max_connections(config_u64(&up.config, "max_connections")),
        });
    }

    Ok(Registration {
        destination: proxy.destination_service_name.clone(),
        datacenter: svc.datacenter.clone(),
        inbound,
        upstreams,
    })
}

fn config_str<'a>(config: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    config
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A non-negative integer given as a JSON number or a numeric string (both appear in
/// real registrations: HCL and JSON write them differently).
fn config_u64(config: &Map<String, Value>, key: &str) -> Option<u64> {
    let value = config.get(key)?;
    let parsed = match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.is_finite())
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse::<u64>().ok().or_else(|| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| *f >= 0.0 && f.is_finite())
                .map(|f| f as u64)
        }),
        Value::Null => return None,
        _ => None,
    };
    if parsed.is_none() {
        tracing::warn!(key, value = %value, "not a non-negative number; using the default");
    }
    parsed
}

fn millis(config: &Map<String, Value>, key: &str, default: u64) -> Duration {
    Duration::from_millis(config_u64(config, key).unwrap_or(default))
}

fn protocol(config: &Map<String, Value>, whose: &str) -> Protocol {
    match config_str(config, "protocol")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("tcp") => Protocol::Tcp,
        Some("http") => Protocol::Http,
        Some("http2") => Protocol::Http2,
        Some("grpc") => Protocol::Grpc,
        Some(other) => {
            tracing::warn!(protocol = %other, "{whose}: unknown protocol; using tcp");
            Protocol::Tcp
        }
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Where to dial an instance and who must answer there (spec 3.6). Instances without a
/// port (e.g. unix sockets) cannot be dialled and are left out.
fn endpoint(
    entry: &ServiceEntry,
    upstream_dc: &str,
    local_dc: &str,
    trust_domain: &str,
) -> Option<Endpoint> {
    let svc = &entry.service;
    let node = &entry.node;
    let remote = !upstream_dc.is_empty() && !local_dc.is_empty() && upstream_dc != local_dc;
    let (address, port) = if remote {
        let wan = svc
            .tagged_addresses
            .get("wan")
            .filter(|a| !a.address.is_empty());
        let address = wan
            .map(|a| a.address.as_str())
            .or_else(|| Some(svc.address.as_str()).filter(|a| !a.is_empty()))
            .or_else(|| {
                node.tagged_addresses
                    .get("wan")
                    .map(String::as_str)
                    .filter(|a| !a.is_empty())
            })
            .unwrap_or(&node.address);
        let port = wan.map(|a| a.port).filter(|p| *p != 0).unwrap_or(svc.port);
        (address, port)
    } else {
        let address = if svc.address.is_empty() {
            &node.address
        } else {
            &svc.address
        };
        (address.as_str(), svc.port)
    };
    if address.is_empty() || port == 0 {
        return None;
    }
    let datacenter = [node.datacenter.as_str(), upstream_dc, local_dc]
        .into_iter()
        .find(|dc| !dc.is_empty())
        .unwrap_or_default();
    let mut identity = ServiceId::new(
        trust_domain,
        if svc.namespace.is_empty() {
            DEFAULT
        } else {
            &svc.namespace
        },
        datacenter,
        entry.mesh_service_name(),
    );
    if !svc.partition.is_empty() {
        identity.partition = svc.partition.clone();
    }
    Some(Endpoint {
        addr: host_port(address, port),
        identity,
    })
}

/// Spec 4.5's defensive rule: once 90 % of the leaf's life has passed without a new one,
/// the watcher forces a fresh read. `None` if the validity cannot be read.
fn refresh_deadline(cert: &IssuedCert, not_after_unix: i64) -> Option<Instant> {
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;
    let before = OffsetDateTime::parse(&cert.valid_before, &Rfc3339)
        .ok()
        .or_else(|| OffsetDateTime::from_unix_timestamp(not_after_unix).ok())?;
    let after = OffsetDateTime::parse(&cert.valid_after, &Rfc3339).ok()?;
    let life = before - after;
    if !life.is_positive() {
        return None;
    }
    let at = before - life / 10;
    let now = OffsetDateTime::from(SystemTime::now());
    let ahead = Duration::try_from(at - now).unwrap_or(Duration::ZERO);
    Some(Instant::now() + ahead)
}

#[cfg(test)]
mod tests;
