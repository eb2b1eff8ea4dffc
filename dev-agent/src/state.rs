//! The dev agent's whole state, in memory, behind one lock: the raft-like index, the
//! node, the locally registered services and their checks, the config entries
//! (`service-intentions`, `service-defaults`, `proxy-defaults`, and the discovery
//! chain's resolvers, splitters and routers), the prepared queries and the CA.
//!
//! Every write goes through [`Shared::with`], which bumps nothing by itself but publishes
//! the index whenever a write bumped it, so blocked readers (`blocking`) wake up. The
//! lock is a `parking_lot` mutex held only for in-memory work (a certificate signature
//! at most), never across an `.await`.

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use ferrule_control::api::defaults::{MeshEntry, ProxyDefaultsEntry, ServiceDefaultsEntry};
use ferrule_control::api::health::{HealthCheck, Node};
use ferrule_control::api::intentions::ServiceIntentionsEntry;

use super::DevAgentConfig;
use super::chain::ChainEntries;
use super::checks::LocalCheck;
use super::connect_ca::CaState;
use super::query::PreparedQuery;
use super::services::LocalService;
use super::wan::Wan;

/// What every request handler and background task of one dev agent shares.
pub(super) struct Shared {
    pub(super) config: DevAgentConfig,
    /// The other datacenters and how to reach them.
    pub(super) wan: Wan,
    /// Cancelled when the agent stops: blocked readers answer, background tasks end.
    pub(super) shutdown: CancellationToken,
    state: Mutex<State>,
    changes: watch::Sender<u64>,
}

impl Shared {
    pub(super) fn new(
        config: DevAgentConfig,
        wan: Wan,
        state: State,
        shutdown: CancellationToken,
    ) -> Shared {
        let (changes, _) = watch::channel(state.index);
        Shared {
            config,
            wan,
            shutdown,
            state: Mutex::new(state),
            changes,
        }
    }

    /// Runs `f` on the state; if it wrote (bumped the index), wakes every blocked reader.
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.state.lock();
        let before = state.index;
        let out = f(&mut state);
        let after = state.index;
        drop(state);
        if after != before {
            self.changes.send_replace(after);
        }
        out
    }

    /// A receiver that sees every later write.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// The agent's node, as the catalog reports it.
pub(super) struct NodeInfo {
    pub(super) node: Node,
    /// `serfHealth`, always passing: the dev agent is its own, healthy, cluster.
    pub(super) serf_check: HealthCheck,
}

pub(super) struct State {
    /// The raft index: bumped once per write, never reused.
    index: u64,
    pub(super) node: NodeInfo,
    /// By service ID.
    pub(super) services: BTreeMap<String, LocalService>,
    /// By check ID.
    pub(super) checks: BTreeMap<String, LocalCheck>,
    /// For health queries: the index at which the last instance of a name went away,
    /// keyed `service:<name>` and `connect:<name>`, so a reader blocked on a name whose
    /// instances were all deregistered still sees its index move.
    pub(super) tombstones: HashMap<String, u64>,
    /// The bodies of the registrations made through the API, by service ID, kept for
    /// `--data-dir` (`persist`).
    pub(super) registrations: BTreeMap<String, serde_json::Value>,
    /// `service-intentions` config entries by destination name.
    pub(super) intentions: BTreeMap<String, ServiceIntentionsEntry>,
    /// `service-defaults` entries by service name, and the `proxy-defaults` entry.
    pub(super) service_defaults: BTreeMap<String, ServiceDefaultsEntry>,
    pub(super) proxy_defaults: Option<ProxyDefaultsEntry>,
    /// The `mesh` entry.
    pub(super) mesh: Option<MeshEntry>,
    /// Services whose Workload API identity was withdrawn
    /// (`DELETE /v1/internal/ferrule/workload-api/:service`): their streams answer
    /// `PERMISSION_DENIED`, as SPIRE's do once a workload's entry is deleted.
    pub(super) withdrawn_workloads: std::collections::BTreeSet<String>,
    /// `service-resolver`, `service-splitter` and `service-router` entries.
    pub(super) chain: ChainEntries,
    /// Max index of the config-entries table (writes and deletes, every kind).
    pub(super) intentions_index: u64,
    /// Prepared queries by ID, and the index of their table.
    pub(super) queries: BTreeMap<String, PreparedQuery>,
    pub(super) queries_index: u64,
    pub(super) ca: CaState,
    /// The agent's shutdown token; every check task runs under a child of it.
    shutdown: CancellationToken,
}

impl State {
    pub(super) fn new(
        node: NodeInfo,
        ca: CaState,
        index: u64,
        shutdown: CancellationToken,
    ) -> State {
        State {
            index,
            node,
            services: BTreeMap::new(),
            checks: BTreeMap::new(),
            tombstones: HashMap::new(),
            registrations: BTreeMap::new(),
            intentions: BTreeMap::new(),
            service_defaults: BTreeMap::new(),
            proxy_defaults: None,
            mesh: None,
            withdrawn_workloads: std::collections::BTreeSet::new(),
            chain: ChainEntries::default(),
            // No config entry yet: Consul's empty table answers index 0 (sent as 1).
            intentions_index: 0,
            queries: BTreeMap::new(),
            queries_index: 0,
            ca,
            shutdown,
        }
    }

    /// A token that stops one check task, and stops with the agent.
    pub(super) fn shutdown_child(&self) -> CancellationToken {
        self.shutdown.child_token()
    }

    /// The index the next write will carry.
    pub(super) fn peek_next_index(&self) -> u64 {
        self.index + 1
    }

    /// Starts a write: the index every record changed by it carries.
    pub(super) fn bump(&mut self) -> u64 {
        self.index += 1;
        self.index
    }
}
