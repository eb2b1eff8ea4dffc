//! Consul mode's snapshot source: the agent's answers, turned into the `Snapshot` the
//! proxy reads, kept current with blocking queries (the Consul-mode twin of
//! `file::FileSource`; both use the shared kit in `publish`).
//!
//! One task (`run`) owns all state. Watchers feed it typed updates (`agent`) for the
//! proxy's registration (`registration`, found by `sidecar` with `--sidecar-for`), the CA
//! roots and the leaf of the destination service (`certs`), the intentions that protect
//! it (`intentions`), each upstream's discovery chain, translated into its routing
//! (`chain`), the instances of every target those chains end in (`endpoints`) and the
//! mesh gateways that lead to targets in other datacenters (`gateways`), and the
//! answers of prepared-query upstreams (`query`); it also learns the agent's datacenter
//! and the default intention action (`agent_self`), and reads access logging from the
//! `proxy-defaults` entry (`access_logs`) and request normalization from the `mesh`
//! entry (`mesh`). Every
//! answer is counted and a failure keeps the last good value (`failures`); a change is
//! applied and published at once. Unchanged pieces keep their `Arc`, so the proxy can
//! tell by pointer what changed (a new `Arc<Intentions>` re-checks live connections, a
//! new leaf or bundle rebuilds TLS). How we read the agent's API is in
//! `docs/consul-semantics.md#agent-api` and `#blocking-queries`.
//!
//! No request carries `ns` or `partition`: Community Edition agents reject them.
//!
//! With `--workload-api` ([`ConsulSource::with_identity`]) the leaf and the bundles come
//! from the SPIFFE Workload API instead: the agent's roots and leaf are not watched, the
//! SVID must be for the registration's destination service, and upstream identities are
//! pinned in the SVID's trust domain.

mod access_logs;
mod agent;
mod agent_self;
mod certs;
mod chain;
pub(super) mod endpoints;
pub(super) mod failures;
mod gateways;
mod intentions;
mod mesh;
mod query;
pub(super) mod registration;
mod run;
mod sidecar;

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::http::{AgentClient, AgentClientConfig, ClientConfigError};
use super::watch::Tuning;
use crate::intentions::Action;
use crate::model::Snapshot;
use crate::publish::Publisher;
use crate::workload::IdentityFeed;
use agent_self::AgentSettings;
use run::Follower;

/// Consul's default blocking wait (`default_query_time`).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

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
    /// `--default-action`: overrides what the agent says.
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
    pub fn spawn_until(mut self, stop: CancellationToken) -> watch::Receiver<Arc<Snapshot>> {
        let publisher = Publisher::new(self.identity.take());
        let settings = AgentSettings::new(self.default_override);
        publisher.publish(Snapshot {
            default_action: settings.default_action.clone(),
            ..Snapshot::default()
        });
        let rx = publisher.subscribe();
        let (events, events_rx) = mpsc::channel(64);
        let follower = Follower::new(self, publisher, settings, events);
        tokio::spawn(async move {
            tokio::select! {
                () = follower.run(events_rx) => {}
                () = stop.cancelled() => {}
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests;
