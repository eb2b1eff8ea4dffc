//! What a restarted agent gets back from `--data-dir`: the registrations made through
//! its API, the config entries (the discovery chain's included), the prepared queries
//! and the last status of every check. (A secondary datacenter's CA and config entries
//! come from its primary again.)
//!
//! A real Consul agent restores its local services from its data dir, and the servers
//! keep the catalog, the intentions and the CA; so a restart changes the indexes (they
//! start low again) but not the content. The dev agent imitates that with one JSON file,
//! rewritten whole after every write. Without a data dir everything stays in memory.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use ferrule_control::api::chain::{ServiceResolverEntry, ServiceRouterEntry, ServiceSplitterEntry};
use ferrule_control::api::defaults::{MeshEntry, ProxyDefaultsEntry, ServiceDefaultsEntry};
use ferrule_control::api::intentions::ServiceIntentionsEntry;

use super::http::{Call, Query};
use super::query::PreparedQuery;
use super::services;
use super::state::{Shared, State};

const STATE_FILE: &str = "state.json";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct Persisted {
    /// The request bodies of `PUT /v1/agent/service/register`, by service ID, in the
    /// order they are replayed.
    registrations: BTreeMap<String, Value>,
    intentions: Vec<ServiceIntentionsEntry>,
    service_defaults: Vec<ServiceDefaultsEntry>,
    proxy_defaults: Option<ProxyDefaultsEntry>,
    mesh: Option<MeshEntry>,
    resolvers: Vec<ServiceResolverEntry>,
    splitters: Vec<ServiceSplitterEntry>,
    routers: Vec<ServiceRouterEntry>,
    /// Prepared queries, with their IDs.
    queries: Vec<PreparedQuery>,
    /// Check ID → status.
    check_status: BTreeMap<String, String>,
}

impl State {
    fn persisted(&self) -> Persisted {
        Persisted {
            registrations: self.registrations.clone(),
            intentions: self.intentions.values().cloned().collect(),
            service_defaults: self.service_defaults.values().cloned().collect(),
            proxy_defaults: self.proxy_defaults.clone(),
            mesh: self.mesh.clone(),
            resolvers: self.chain.resolvers.values().cloned().collect(),
            splitters: self.chain.splitters.values().cloned().collect(),
            routers: self.chain.routers.values().cloned().collect(),
            queries: self.queries.values().cloned().collect(),
            check_status: self
                .checks
                .iter()
                .map(|(id, c)| (id.clone(), c.health.status.clone()))
                .collect(),
        }
    }
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Replays what `dir` holds: registrations first, then the defaults entries and the
/// intentions, then check statuses
/// (a check that was passing does not flap to critical just because the agent
/// restarted). A piece that no longer applies is logged and skipped.
pub(super) async fn restore(shared: &Arc<Shared>, dir: &Path) {
    let path = state_path(dir);
    let text = match tokio::fs::read(&path).await {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "dev agent: cannot read the saved state; starting empty");
            return;
        }
    };
    let saved: Persisted = match serde_json::from_slice(&text) {
        Ok(saved) => saved,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "dev agent: the saved state does not parse; starting empty");
            return;
        }
    };
    for (id, registration) in &saved.registrations {
        let call = Call {
            method: http::Method::PUT,
            query: Query::default(),
            headers: http::HeaderMap::new(),
            body: registration.to_string().into(),
        };
        if let Err(e) = services::register(shared, &call).await {
            tracing::warn!(service = %id, error = %e.message, "dev agent: a saved registration no longer applies");
        }
    }
    // The defaults before the intentions: L7 intentions need an HTTP-like protocol.
    shared.with(|state| {
        let index = state.bump();
        for mut entry in saved.service_defaults {
            (entry.create_index, entry.modify_index) = (index, index);
            state.service_defaults.insert(entry.name.clone(), entry);
        }
        state.proxy_defaults = saved.proxy_defaults.map(|mut entry| {
            (entry.create_index, entry.modify_index) = (index, index);
            entry
        });
        state.mesh = saved.mesh.map(|mut entry| {
            (entry.create_index, entry.modify_index) = (index, index);
            entry
        });
        restore_chain(
            state,
            saved.resolvers,
            saved.splitters,
            saved.routers,
            index,
        );
        state.intentions_index = index;
    });
    for entry in saved.intentions {
        let name = entry.name.clone();
        if let Err(e) = shared.with(|state| super::intentions::store(state, entry, None)) {
            tracing::warn!(destination = %name, error = %e.message, "dev agent: saved intentions no longer apply");
        }
    }
    for query in saved.queries {
        let id = query.id.clone();
        if let Err(e) = shared.with(|state| state.store_query(query, None)) {
            tracing::warn!(query = %id, error = %e.message, "dev agent: a saved prepared query no longer applies");
        }
    }
    shared.with(|state| {
        for (id, status) in &saved.check_status {
            state.set_check(id, status, "restored from the data dir".to_owned());
        }
    });
    let services = saved.registrations.len();
    tracing::info!(path = %path.display(), services, "dev agent: state restored");
}

/// The discovery chain entries as saved, all at `index`; they were checked when they
/// were written, against the defaults restored with them.
fn restore_chain(
    state: &mut State,
    resolvers: Vec<ServiceResolverEntry>,
    splitters: Vec<ServiceSplitterEntry>,
    routers: Vec<ServiceRouterEntry>,
    index: u64,
) {
    for mut e in resolvers {
        (e.create_index, e.modify_index) = (index, index);
        state.chain.resolvers.insert(e.name.clone(), e);
    }
    for mut e in splitters {
        (e.create_index, e.modify_index) = (index, index);
        state.chain.splitters.insert(e.name.clone(), e);
    }
    for mut e in routers {
        (e.create_index, e.modify_index) = (index, index);
        state.chain.routers.insert(e.name.clone(), e);
    }
}

/// Rewrites the state file after every write until the agent stops, and once more then.
pub(super) async fn keep_saved(shared: Arc<Shared>, dir: PathBuf) {
    let mut changes = shared.subscribe();
    let path = state_path(&dir);
    loop {
        let stopping = tokio::select! {
            () = shared.shutdown.cancelled() => true,
            changed = changes.changed() => changed.is_err(),
        };
        let state = shared.with(|state| state.persisted());
        match serde_json::to_vec_pretty(&state) {
            Ok(bytes) => {
                if let Err(e) = save(&path, &bytes).await {
                    tracing::warn!(path = %path.display(), error = %e, "dev agent: cannot save the state");
                }
            }
            Err(e) => tracing::warn!(error = %e, "dev agent: cannot serialize the state"),
        }
        if stopping {
            return;
        }
    }
}

/// Replaced whole: a crash leaves the old file or the new one, never half of one.
async fn save(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}
