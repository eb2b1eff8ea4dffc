//! How the run loop hears from the agent: the events every watch and one-shot task
//! sends it, and the handle that starts them.

use std::collections::BTreeMap;

use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::agent_self::SelfAnswer;
use super::chain::ChainKey;
use super::endpoints::HealthKey;
use super::gateways::GatewayKey;
use super::query::QueryKey;
use crate::api::agent::AgentService;
use crate::api::ca::{IndexedCARoots, IssuedCert};
use crate::api::chain::DiscoveryChainResponse;
use crate::api::defaults::{MeshEntry, ProxyDefaultsEntry};
use crate::api::health::ServiceEntry;
use crate::api::intentions::IntentionMatchResponse;
use crate::api::query::PreparedQueryExecuteResponse;
use crate::consul::http::AgentClient;
use crate::consul::watch::{Tuning, Update, WatchSpec, Watcher};

/// What reaches the run loop. Answers about a destination or an upstream carry it, so
/// that a late answer for one no longer followed is dropped.
pub(super) enum Event {
    /// `--sidecar-for`: the registration to follow was found.
    ProxyId(String),
    /// `--sidecar-for`: why it is not found yet (the agent's error, or no such
    /// registration).
    SidecarMissing(String),
    SelfAnswer(SelfAnswer),
    Service(Update<Box<AgentService>>),
    Roots(Update<IndexedCARoots>),
    Leaf(String, Update<Box<IssuedCert>>),
    Intentions(String, Update<IntentionMatchResponse>),
    /// Boxed: a compiled chain is large, and most events are small.
    Chain(ChainKey, Update<Box<DiscoveryChainResponse>>),
    /// Time to ask again for a chain the agent did not serve.
    ChainRetry(ChainKey),
    Health(HealthKey, Update<Vec<ServiceEntry>>),
    /// The names of a datacenter's mesh gateways (the catalog's name → tags).
    GatewayNames(String, Update<BTreeMap<String, serde_json::Value>>),
    /// The instances of one mesh gateway service.
    Gateways(GatewayKey, Update<Vec<ServiceEntry>>),
    /// Boxed, as chains are: a prepared query's execution.
    Query(QueryKey, Update<Box<PreparedQueryExecuteResponse>>),
    /// The `proxy-defaults` entries, for their `AccessLogs`.
    ProxyDefaults(Update<Vec<ProxyDefaultsEntry>>),
    /// The `mesh` entries (none or one), for their request normalization.
    Mesh(Update<Vec<MeshEntry>>),
}

/// The agent client, the tuning of its watches, and the channel they all report into.
#[derive(Clone)]
pub(super) struct Agent {
    pub(super) client: AgentClient,
    pub(super) tuning: Tuning,
    pub(super) events: mpsc::Sender<Event>,
}

impl Agent {
    /// Watches `spec` with blocking queries, each update wrapped into an [`Event`].
    pub(super) fn watch<T, F>(&self, spec: WatchSpec, wrap: F) -> Watcher
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

    /// Runs `task` until the returned handle is dropped.
    pub(super) fn spawn<F>(&self, task: F) -> AbortOnDropHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        AbortOnDropHandle::new(tokio::spawn(task))
    }
}
