//! Static mode: the TOML config file, and the files it names, as a snapshot source.
//!
//! The config file itself (`config`) is read once, at start-up; a mistake in it is fatal
//! and named by file, line and key. The certificate, key, bundle and intentions files it
//! points at are polled: a change is picked up within a poll interval however it was
//! written (in place, atomic rename, symlink swap), and a change that does not parse is
//! logged once and ignored, so the last good state stays in force. Listener defaults and
//! publishing are the shared kit's (`publish`).
//!
//! Before the first snapshot, `first` checks every file strictly: with no good state to
//! keep yet, a bad file is a start-up error naming it.
//!
//! With `--workload-api` the leaf and bundles come from the SPIFFE Workload API instead
//! (`FileSource::with_identity`); `identity.cert`, `key` and `bundle` may then be left
//! out, and are ignored if given.

mod config;
mod first;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use tokio::sync::{mpsc, watch};

pub use config::{ConfigError, Located, StaticConfig, TracingTable};
use config::{IdentityFiles, IdentityPins};
pub use first::StartupError;

use crate::api::intentions::ServiceIntentionsEntry;
use crate::identity::ServiceId;
use crate::intentions::{Destination, Intentions, validate_config_entries};
use crate::model::{
    self, Endpoint, Leaf, PrometheusListener, Snapshot, TrustBundle, UpstreamConfig,
};
use crate::publish::{Admit, Publisher, Wake};
use crate::telemetry::{Resource, record_update};
use crate::workload::{Identity, IdentityFeed};

/// How often the watched files are read. Reading four small files twice a second
/// costs nothing and, unlike inotify, sees every way a file can be replaced.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Watches the files a static config names and publishes snapshots.
pub struct FileSource {
    config: StaticConfig,
    provider: Arc<CryptoProvider>,
    /// `--workload-api`: leaf and bundles come from here, not from files.
    identity: Option<IdentityFeed>,
    /// New versions of the config file, read on SIGHUP.
    reloads: Option<mpsc::Receiver<StaticConfig>>,
}

impl FileSource {
    pub fn new(config: StaticConfig, provider: Arc<CryptoProvider>) -> FileSource {
        FileSource {
            config,
            provider,
            identity: None,
            reloads: None,
        }
    }

    /// Each config sent here replaces the one in force (the binary reads the file again
    /// on SIGHUP): listeners, upstreams, the default action and the files to watch. The
    /// identity cannot change this way, and `admin_addr` only with a restart.
    pub fn with_reloads(mut self, reloads: mpsc::Receiver<StaticConfig>) -> FileSource {
        self.reloads = Some(reloads);
        self
    }

    /// Reads every file the config names as the first configuration needs it (the
    /// identity files only without `workload_api`): a file that is missing, unreadable
    /// or wrong, or a leaf outside its validity period, is an error naming the file.
    pub fn check(&self, workload_api: bool) -> Result<(), StartupError> {
        if workload_api {
            let mut config = self.config.clone();
            config.files = None;
            return first::check(&config, &self.provider);
        }
        first::check(&self.config, &self.provider)
    }

    /// Takes the leaf and bundles from the Workload API; the identity files, if the
    /// config names any, are not read.
    pub fn with_identity(mut self, feed: IdentityFeed) -> FileSource {
        if self.config.files.take().is_some() {
            tracing::warn!(config = %self.config.path.display(), "identity.cert, key and bundle are ignored: the Workload API gives the identity");
        }
        self.identity = Some(feed);
        self
    }

    /// Loads what it can now, then polls in the background for as long as anyone
    /// holds the receiver.
    pub fn spawn(self) -> watch::Receiver<Arc<Snapshot>> {
        record_update(Resource::Config, true);
        let mut files = Files {
            config: self.config,
            provider: self.provider,
            seen: HashMap::new(),
            leaf: None,
            bundle_pem: None,
            entries: None,
            publisher: Publisher::new(self.identity),
        };
        files.refresh();
        let current = files.publisher.current_identity();
        files.apply_identity(current);
        files
            .publisher
            .publish(files.snapshot(None, Changes::default()));
        let rx = files.publisher.subscribe();
        tokio::spawn(files.run(self.reloads));
        rx
    }
}

/// The polling task's state: the config in force and the last good content of each
/// file it names.
struct Files {
    config: StaticConfig,
    provider: Arc<CryptoProvider>,
    /// Bytes last read from each file, so each change is parsed (and logged) once.
    seen: HashMap<PathBuf, Option<Vec<u8>>>,
    /// The leaf from the identity files (never set with the Workload API).
    leaf: Option<Arc<Leaf>>,
    bundle_pem: Option<Vec<u8>>,
    entries: Option<Vec<ServiceIntentionsEntry>>,
    publisher: Publisher,
}

impl Files {
    async fn run(mut self, mut reloads: Option<mpsc::Receiver<StaticConfig>>) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let changes = tokio::select! {
                wake = self.publisher.wait() => match wake {
                    Wake::Closed => return,
                    Wake::Identity(identity) => self.apply_identity(identity),
                },
                _ = tick.tick() => self.refresh(),
                config = next_reload(&mut reloads) => self.reload_config(config),
            };
            if changes.any() {
                let prev = self.publisher.current();
                self.publisher.publish(self.snapshot(Some(&prev), changes));
            }
        }
    }

    /// The leaf in force: the files', or the Workload API's.
    fn leaf(&self) -> Option<&Arc<Leaf>> {
        self.publisher.leaf(self.leaf.as_ref())
    }

    /// Puts a reloaded config in force, unless it names another identity than the
    /// leaf in force; then every watched file is read again, as its path may have
    /// changed.
    fn reload_config(&mut self, mut config: StaticConfig) -> Changes {
        if let Some(mismatch) = self.leaf().and_then(|l| config.pins.mismatch(&l.id)) {
            tracing::error!(config = %config.path.display(), "config not reloaded: {mismatch}");
            record_update(Resource::Config, false);
            return Changes::default();
        }
        if config.admin_addr != self.config.admin_addr {
            tracing::warn!(config = %config.path.display(), "admin_addr changes only with a restart");
        }
        if self.publisher.workload_api() {
            config.files = None;
        }
        tracing::info!(config = %config.path.display(), "config reloaded");
        record_update(Resource::Config, true);
        self.config = config;
        self.seen.clear();
        let changes = self.refresh();
        // Listeners, upstreams and the default action are in the snapshot as well.
        Changes {
            intentions: true,
            ..changes
        }
    }

    /// Reads every watched file; says which good state changed.
    fn refresh(&mut self) -> Changes {
        let mut changes = Changes::default();
        if let Some(files) = self.config.files.clone() {
            let cert = self.read_changed(&files.cert);
            let key = self.read_changed(&files.key);
            let bundle = self.read_changed(&files.bundle);
            if cert.is_yes() || key.is_yes() {
                changes.leaf = self.reload_leaf(&files);
            }
            if let Changed::Yes(Some(bytes)) = bundle {
                changes.bundle = self.reload_bundle(&files, bytes);
            }
        }
        let intentions = match self.config.intentions.clone() {
            Some(p) => self.read_changed(&p),
            None => Changed::No,
        };
        if let Changed::Yes(Some(bytes)) = intentions {
            changes.intentions = self.reload_intentions(&bytes);
        }
        changes
    }

    fn read_changed(&mut self, path: &Path) -> Changed {
        let now = std::fs::read(path).ok();
        match self.seen.get(path) {
            Some(prev) if *prev == now => Changed::No,
            _ => {
                if now.is_none() {
                    tracing::warn!(file = %path.display(), "cannot read watched file; keeping the last good state");
                }
                self.seen.insert(path.to_owned(), now.clone());
                Changed::Yes(now)
            }
        }
    }

    /// A new identity from the Workload API (`None`: the last one expired).
    fn apply_identity(&mut self, identity: Option<Arc<Identity>>) -> Changes {
        let held = self.leaf().map(|l| l.id.clone());
        let pins = &self.config.pins;
        let changed = self.publisher.identity(identity, |leaf| {
            match check_leaf(pins, held.as_ref(), leaf) {
                Ok(()) => Admit::Serve,
                Err(e) => {
                    tracing::warn!(error = %e, "SVID from the Workload API refused; keeping the last good one");
                    Admit::Refuse
                }
            }
        });
        Changes {
            leaf: changed,
            bundle: changed,
            intentions: false,
        }
    }

    fn reload_leaf(&mut self, files: &IdentityFiles) -> bool {
        let (Some(Some(cert)), Some(Some(key))) =
            (self.seen.get(&files.cert), self.seen.get(&files.key))
        else {
            return false;
        };
        let held = self.leaf.as_ref().map(|l| &l.id);
        let result = model::parse_leaf(cert, key, &self.provider)
            .and_then(|leaf| check_leaf(&self.config.pins, held, &leaf).map(|()| leaf));
        match result {
            Ok(leaf) => {
                tracing::info!(id = %leaf.id, serial = %leaf.serial, "leaf certificate loaded");
                self.leaf = Some(Arc::new(leaf));
                record_update(Resource::Leaf, true);
                true
            }
            Err(e) => {
                tracing::warn!(cert = %files.cert.display(), key = %files.key.display(), error = %e, "leaf not loaded; keeping the last good one");
                record_update(Resource::Leaf, false);
                false
            }
        }
    }

    fn reload_bundle(&mut self, files: &IdentityFiles, bytes: Vec<u8>) -> bool {
        match model::parse_certificates(&bytes) {
            Ok(roots) => {
                tracing::info!(file = %files.bundle.display(), roots = roots.len(), "trust bundle loaded");
                self.bundle_pem = Some(bytes);
                record_update(Resource::Roots, true);
                true
            }
            Err(e) => {
                tracing::warn!(file = %files.bundle.display(), error = %e, "trust bundle not loaded; keeping the last good one");
                record_update(Resource::Roots, false);
                false
            }
        }
    }

    fn reload_intentions(&mut self, bytes: &[u8]) -> bool {
        let path = self.config.intentions.clone().unwrap_or_default();
        let parsed = parse_entries(bytes).and_then(|entries| {
            validate_config_entries(&entries)
                .map(|()| entries)
                .map_err(|e| e.to_string())
        });
        match parsed {
            Ok(entries) => {
                tracing::info!(file = %path.display(), "intentions loaded");
                self.entries = Some(entries);
                record_update(Resource::Intentions, true);
                true
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "intentions not loaded; keeping the last good ones");
                record_update(Resource::Intentions, false);
                false
            }
        }
    }

    /// Assembles the snapshot from the last good pieces. What did not change is taken
    /// from `prev` as the same `Arc`, so readers can tell by pointer that it is the same
    /// (TLS configs and their session caches survive an intentions edit, and live
    /// connections are re-checked only when intentions really changed).
    fn snapshot(&self, prev: Option<&Snapshot>, changes: Changes) -> Snapshot {
        let me = self.leaf().map(|l| l.id.clone());
        let trust_domain = self
            .config
            .pins
            .trust_domain
            .clone()
            .or_else(|| me.as_ref().map(|id| id.trust_domain.clone()));
        let bundle = match prev {
            Some(prev) if !changes.bundle && prev.bundle.is_some() => prev.bundle.clone(),
            _ => match (&self.bundle_pem, &trust_domain) {
                (Some(pem), Some(td)) => model::parse_bundle(pem, td).ok().map(Arc::new),
                _ => None,
            },
        };
        let intentions = match (prev, &me, self.config.inbound.is_some()) {
            (Some(prev), _, _) if !changes.intentions && prev.intentions.is_some() => {
                prev.intentions.clone()
            }
            (_, Some(me), true) => self.intentions_for(me),
            _ => None,
        };
        let in_force = self.publisher.bundle(bundle.as_ref());
        let upstreams = match &me {
            Some(me) => self.upstreams_for(me, in_force.map(|b| &**b)),
            None => Vec::new(),
        };
        Snapshot {
            bundle,
            leaf: self.leaf.clone(),
            intentions,
            inbound: self.config.inbound.clone(),
            upstreams,
            default_action: Some(self.config.default_action.clone()),
            blocked: Vec::new(),
            access_logs: self.config.access_logs.clone(),
            prometheus: self
                .config
                .prometheus_bind_addr
                .map(|bind| PrometheusListener {
                    bind,
                    required: true,
                }),
            request_normalization: self.config.request_normalization,
        }
    }

    fn intentions_for(&self, me: &ServiceId) -> Option<Arc<Intentions>> {
        let destination = Destination::from(me);
        let empty = Vec::new();
        // No intentions file means no intentions: the default action decides.
        let entries = match &self.config.intentions {
            Some(_) => self.entries.as_ref()?,
            None => &empty,
        };
        match Intentions::from_config_entries(
            entries,
            destination,
            self.config.default_action.action,
        ) {
            Ok(ixns) => Some(Arc::new(ixns)),
            Err(e) => {
                tracing::warn!(error = %e, "intentions do not apply to this service");
                None
            }
        }
    }

    /// The fixed endpoints of each upstream, pinned to the upstream's identity in this
    /// proxy's trust domain (the bundle's, else the leaf's).
    fn upstreams_for(&self, me: &ServiceId, bundle: Option<&TrustBundle>) -> Vec<UpstreamConfig> {
        let trust_domain = bundle.map_or(me.trust_domain.as_str(), |b| b.trust_domain.as_str());
        self.config
            .upstreams
            .iter()
            .map(|up| {
                let identity = ServiceId {
                    trust_domain: trust_domain.to_owned(),
                    partition: me.partition.clone(),
                    namespace: up.namespace.clone().unwrap_or_else(|| me.namespace.clone()),
                    datacenter: up
                        .datacenter
                        .clone()
                        .unwrap_or_else(|| me.datacenter.clone()),
                    service: up.listener.name.clone(),
                };
                let endpoints = up
                    .endpoints
                    .iter()
                    .map(|addr| Endpoint {
                        addr: addr.clone(),
                        identity: identity.clone(),
                    })
                    .collect();
                up.listener.direct(identity, endpoints)
            })
            .collect()
    }
}

/// The identity checks every new leaf passes: the config's pins, and the identity of
/// the leaf before it (`held`).
fn check_leaf(
    pins: &IdentityPins,
    held: Option<&ServiceId>,
    leaf: &Leaf,
) -> Result<(), model::PemError> {
    match (pins.mismatch(&leaf.id), held) {
        (Some(m), _) => Err(model::PemError::Identity(m)),
        (None, Some(old)) if *old != leaf.id => Err(model::PemError::Identity(format!(
            "new leaf is {}, but this proxy is {old}",
            leaf.id
        ))),
        _ => Ok(()),
    }
}

/// Which pieces of good state a poll changed.
#[derive(Clone, Copy, Default)]
struct Changes {
    leaf: bool,
    bundle: bool,
    intentions: bool,
}

impl Changes {
    fn any(self) -> bool {
        self.leaf || self.bundle || self.intentions
    }
}

/// The next reloaded config; never resolves without a sender, or once it is gone.
async fn next_reload(reloads: &mut Option<mpsc::Receiver<StaticConfig>>) -> StaticConfig {
    if let Some(rx) = reloads
        && let Some(config) = rx.recv().await
    {
        return config;
    }
    *reloads = None;
    std::future::pending().await
}

enum Changed {
    No,
    Yes(Option<Vec<u8>>),
}

impl Changed {
    fn is_yes(&self) -> bool {
        matches!(self, Changed::Yes(_))
    }
}

/// One `service-intentions` entry as Consul's `/v1/config` takes it, or a list of them
/// (a `*` entry beside the service's own).
fn parse_entries(bytes: &[u8]) -> Result<Vec<ServiceIntentionsEntry>, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let result = if value.is_array() {
        serde_json::from_value(value)
    } else {
        serde_json::from_value(value).map(|e| vec![e])
    };
    result.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
