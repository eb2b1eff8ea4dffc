//! Several datacenters, as Consul's WAN federation looks to a client
//! (`docs/consul-semantics.md#datacenters`): each datacenter is one dev agent, one of
//! them the primary. A secondary is started with `--primary-datacenter` and
//! `--join-wan <primary's HTTP address>`; it announces itself to the primary and keeps
//! doing so, so a restarted primary learns it again, and learns the other datacenters
//! from the primary's answer. Then:
//!
//! - `?dc=<other>` on the catalog, health, discovery-chain, config and prepared-query
//!   endpoints is answered by that datacenter's agent (`forward`);
//! - a secondary's writes of config entries and intentions go to the primary, and the
//!   primary's config entries are replicated into the secondary's store (`replicate`);
//! - a secondary's leaves are signed by its own intermediate CA, which the primary's
//!   active root signs, and which is replaced when the primary's root rotates (`ca`).
//!
//! Modules: `client` the HTTP client to other agents, `join` the membership, `forward`,
//! `replicate`, `ca`.

pub(crate) mod ca;
mod client;
pub(crate) mod forward;
pub(crate) mod join;
mod replicate;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinHandle;

use super::DevAgentConfig;
use super::state::Shared;

pub(crate) use self::client::WanClient;

/// How long a secondary's loops wait after a failed exchange with the primary.
const RETRY: Duration = Duration::from_millis(500);
/// The `wait` of a secondary's blocking queries on the primary: a restarted primary
/// (whose index went back) is noticed within it.
const WATCH_WAIT: &str = "10s";
/// The client's bound on one such blocking query.
const WATCH_TIMEOUT: Duration = Duration::from_secs(20);

/// This agent's place among the datacenters.
pub(crate) struct Wan {
    datacenter: String,
    primary: String,
    /// Where other datacenters reach this agent: its HTTP listener.
    advertise: SocketAddr,
    /// `--join-wan`.
    join: Option<SocketAddr>,
    /// Every other datacenter known, by name: its agent's HTTP address.
    members: Mutex<BTreeMap<String, SocketAddr>>,
    pub(crate) client: WanClient,
}

impl Wan {
    /// `listening` is the agent's bound HTTP address; a wildcard is advertised as
    /// loopback, as the node's address is.
    pub(crate) fn new(config: &DevAgentConfig, listening: SocketAddr) -> Wan {
        let mut advertise = listening;
        if advertise.ip().is_unspecified() {
            advertise.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        Wan {
            datacenter: config.datacenter.clone(),
            primary: config.primary().to_owned(),
            advertise,
            join: config.join_wan,
            members: Mutex::new(BTreeMap::new()),
            client: WanClient::new(),
        }
    }

    pub(crate) fn datacenter(&self) -> &str {
        &self.datacenter
    }

    pub(crate) fn primary(&self) -> &str {
        &self.primary
    }

    pub(crate) fn is_secondary(&self) -> bool {
        self.primary != self.datacenter
    }

    /// `GET /v1/catalog/datacenters`: ours first (Consul sorts by round-trip time, and
    /// ours is the nearest), then the others by name.
    pub(crate) fn datacenters(&self) -> Vec<String> {
        let mut all = vec![self.datacenter.clone()];
        all.extend(self.members.lock().keys().cloned());
        all
    }

    /// The other datacenters, by name: the order a prepared query's `NearestN` takes
    /// them in, there being no network coordinates between dev agents.
    pub(crate) fn others(&self) -> Vec<String> {
        self.members.lock().keys().cloned().collect()
    }

    /// The agent of datacenter `dc`, when known (never our own).
    pub(crate) fn address(&self, dc: &str) -> Option<SocketAddr> {
        self.members.lock().get(dc).copied()
    }

    /// Where the primary is reached: as learned, else `--join-wan`.
    pub(crate) fn primary_address(&self) -> Option<SocketAddr> {
        self.address(&self.primary).or(self.join)
    }

    /// Records `dc` at `addr`; whether that is news.
    fn learn(&self, dc: &str, addr: SocketAddr) -> bool {
        if dc == self.datacenter {
            return false;
        }
        self.members.lock().insert(dc.to_owned(), addr) != Some(addr)
    }
}

/// Starts what a secondary keeps doing in the background: announcing itself, keeping
/// its CA signed by the primary's root, replicating the primary's config entries. A
/// primary has nothing to start. The tasks end when the agent shuts down.
pub(crate) fn spawn(shared: &Arc<Shared>) -> Vec<JoinHandle<()>> {
    if !shared.wan.is_secondary() {
        return Vec::new();
    }
    vec![
        tokio::spawn(join::keep_announcing(Arc::clone(shared))),
        tokio::spawn(ca::keep_federated(Arc::clone(shared))),
        tokio::spawn(replicate::keep_replicating(Arc::clone(shared))),
    ]
}

/// Sleeps `after`, or less when the agent shuts down; whether it is shutting down.
async fn pause(shared: &Shared, after: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(after) => false,
        () = shared.shutdown.cancelled() => true,
    }
}

/// A loop's view of whether the primary answers, to log each change once instead of
/// every retry.
#[derive(Default)]
struct Reachability {
    failing: bool,
}

impl Reachability {
    fn failed(&mut self, what: &str, error: &str) {
        if !self.failing {
            tracing::warn!(%error, "dev agent: {what} failed; retrying until the primary datacenter answers");
        }
        self.failing = true;
    }

    fn succeeded(&mut self, what: &str) {
        if self.failing {
            tracing::info!("dev agent: {what} works again");
        }
        self.failing = false;
    }
}

/// The index to send next: a lower one than we hold means the primary restarted, so
/// start again from 0 (as Consul's clients reset a blocking index that went back).
fn next_index(held: u64, answered: u64) -> u64 {
    if answered < held { 0 } else { answered }
}
