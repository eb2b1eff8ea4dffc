//! The Consul-mode source of a mesh gateway (`ferrule gateway --proxy-id <id>`): the
//! agent's answers turned into the `GatewayView` the gateway routes on, kept current with
//! blocking queries; see `docs/consul-semantics.md#mesh-gateways`.
//!
//! One task (`run`) owns all state and takes every event the watches send: the
//! gateway's registration (`registration`), the CA roots (for the trust domain only:
//! the gateway never terminates TLS, so it has no leaf), every service of the local
//! datacenter with its healthy instances and its resolver's subsets (`local`), and the
//! other datacenters with their healthy mesh gateways (`remote`). What the gateway
//! watches is what Consul's own mesh gateways watch: every service of its datacenter,
//! so that the first connection to any of them finds its instances already known.
//! Failures keep the last good state and are counted and named as the sidecar's source
//! does (`consul::source::failures`). No request carries `ns` or `partition`.

mod local;
mod registration;
mod remote;
mod run;

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::http::{AgentClient, AgentClientConfig, AgentError, ClientConfigError};
use super::source::DEFAULT_WAIT;
use super::watch::{Tuning, Update, WatchSpec, Watcher};
use crate::api::agent::AgentService;
use crate::api::ca::IndexedCARoots;
use crate::api::chain::ServiceResolverEntry;
use crate::api::health::ServiceEntry;
use crate::gateway::GatewayView;
use local::LocalKey;
use remote::RemoteKey;

/// How often the list of datacenters is read again: Consul answers it without blocking.
const DATACENTERS_EVERY: Duration = Duration::from_secs(30);

/// Everything the gateway's source needs from the command line.
#[derive(Debug, Clone)]
pub struct GatewaySourceConfig {
    pub agent: AgentClientConfig,
    /// `--proxy-id`: the mesh gateway's service ID.
    pub proxy_id: String,
    /// The `wait` of every blocking query.
    pub wait: Duration,
}

impl GatewaySourceConfig {
    pub fn new(agent: AgentClientConfig, proxy_id: String) -> Self {
        GatewaySourceConfig {
            agent,
            proxy_id,
            wait: DEFAULT_WAIT,
        }
    }
}

/// Follows a Consul agent for one mesh gateway and publishes its view.
pub struct GatewaySource {
    client: AgentClient,
    proxy_id: String,
    tuning: Tuning,
    datacenters_every: Duration,
}

impl GatewaySource {
    /// Builds the agent client now, so a bad token file or CA file is a start-up error.
    pub fn new(
        config: GatewaySourceConfig,
        provider: Arc<CryptoProvider>,
    ) -> Result<GatewaySource, ClientConfigError> {
        Ok(GatewaySource {
            client: AgentClient::new(&config.agent, provider)?,
            proxy_id: config.proxy_id,
            tuning: Tuning {
                wait: config.wait,
                ..Tuning::default()
            },
            datacenters_every: DATACENTERS_EVERY,
        })
    }

    #[cfg(test)]
    fn with_timing(mut self, tuning: Tuning, datacenters_every: Duration) -> Self {
        self.tuning = tuning;
        self.datacenters_every = datacenters_every;
        self
    }

    /// Returns at once with an empty view (nothing is routed until it fills in) and
    /// follows the agent in the background until `stop` is cancelled or every receiver
    /// is gone.
    pub fn spawn(self, stop: CancellationToken) -> watch::Receiver<Arc<GatewayView>> {
        let (tx, rx) = watch::channel(Arc::new(GatewayView::default()));
        let (events, events_rx) = mpsc::channel(64);
        let agent = Agent {
            client: self.client,
            tuning: self.tuning,
            events,
        };
        let follower = run::Follower::new(agent, self.proxy_id, self.datacenters_every, tx);
        tokio::spawn(async move {
            tokio::select! {
                () = follower.run(events_rx) => {}
                () = stop.cancelled() => {}
            }
        });
        rx
    }
}

/// What reaches the run loop. Answers about a service or a datacenter carry its key, so
/// that a late answer for one no longer followed is dropped.
enum Event {
    Registration(Update<Box<AgentService>>),
    Roots(Update<IndexedCARoots>),
    /// The agent's datacenter, from `/v1/agent/self`, for a registration without one.
    SelfDatacenter(Result<String, AgentError>),
    /// The local datacenter's service names (`/v1/catalog/services`).
    Services(Update<std::collections::BTreeMap<String, Vec<String>>>),
    /// Every `service-resolver` config entry.
    Resolvers(Update<Vec<ServiceResolverEntry>>),
    /// The connect-capable instances of a local service (or of a subset of it).
    Health(LocalKey, Update<Vec<ServiceEntry>>),
    /// `/v1/catalog/datacenters`.
    Datacenters(Result<Vec<String>, AgentError>),
    /// The mesh gateways' service names in a datacenter.
    GatewayNames(
        String,
        Update<std::collections::BTreeMap<String, Vec<String>>>,
    ),
    /// The instances of a mesh gateway service in a datacenter.
    Gateways(RemoteKey, Update<Vec<ServiceEntry>>),
}

/// The agent client, the tuning of its watches, and the channel they all report into.
#[derive(Clone)]
struct Agent {
    client: AgentClient,
    tuning: Tuning,
    events: mpsc::Sender<Event>,
}

impl Agent {
    /// Watches `spec` with blocking queries, each update wrapped into an [`Event`].
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

    /// Runs `task` until the returned handle is dropped.
    fn spawn<F>(&self, task: F) -> AbortOnDropHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        AbortOnDropHandle::new(tokio::spawn(task))
    }

    /// A non-blocking read, within the watches' timeout for one.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, AgentError> {
        self.client
            .get_json(path, &[], self.tuning.timeout_margin)
            .await
    }
}

#[cfg(test)]
mod tests;
