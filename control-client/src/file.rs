//! Static mode: the TOML config file, and the files it names, as a snapshot source.
//!
//! The config file itself is read once, at start-up; a mistake in it is fatal and
//! named by file, line and key. The certificate, key, bundle and intentions files it
//! points at are polled: a change is picked up within a poll interval however it was
//! written (in place, atomic rename, symlink swap), and a change that does not parse is
//! logged once and ignored, so the last good state stays in force.
//!
//! With `--workload-api` the leaf and bundles come from the SPIFFE Workload API instead
//! (`FileSource::with_identity`); `identity.cert`, `key` and `bundle` may then be left
//! out, and are ignored if given.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use crate::api::intentions::ServiceIntentionsEntry;
use crate::identity::ServiceId;
use crate::intentions::{Action, Destination, Intentions, validate_config_entries};
use crate::model::{
    self, DefaultAction, Endpoint, InboundConfig, Leaf, Protocol, Snapshot, TrustBundle,
    UpstreamConfig,
};
use crate::telemetry::record_update;
use crate::workload::{Identity, IdentityFeed};

/// How often the watched files are read. Reading four small files twice a second
/// costs nothing and, unlike inotify, sees every way a file can be replaced.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_LOCAL_CONNECT_TIMEOUT_MS: u64 = 1_000;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    admin_addr: Option<SocketAddr>,
    #[serde(default)]
    default_action: Option<Action>,
    #[serde(default)]
    identity: Option<toml::Spanned<RawIdentity>>,
    inbound: Option<RawInbound>,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    bundle: Option<PathBuf>,
    trust_domain: Option<String>,
    partition: Option<String>,
    namespace: Option<String>,
    datacenter: Option<String>,
    service: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    bind: SocketAddr,
    local_app: toml::Spanned<String>,
    #[serde(default = "tcp")]
    protocol: Protocol,
    intentions: Option<PathBuf>,
    handshake_timeout_ms: Option<u64>,
    local_connect_timeout_ms: Option<u64>,
    local_request_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: toml::Spanned<String>,
    bind: SocketAddr,
    endpoints: Vec<toml::Spanned<String>>,
    #[serde(default = "tcp")]
    protocol: Protocol,
    datacenter: Option<String>,
    namespace: Option<String>,
    connect_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections: Option<u64>,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

/// A config file error, spelled `file:line:column: key: message`.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {key}: {message}")]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

/// The identity this proxy claims, as far as the config file pins it down.
#[derive(Debug, Clone, Default)]
struct IdentityPins {
    trust_domain: Option<String>,
    partition: Option<String>,
    namespace: Option<String>,
    datacenter: Option<String>,
    service: Option<String>,
}

impl IdentityPins {
    fn mismatch(&self, id: &ServiceId) -> Option<String> {
        let checks = [
            ("trust_domain", &self.trust_domain, &id.trust_domain),
            ("partition", &self.partition, &id.partition),
            ("namespace", &self.namespace, &id.namespace),
            ("datacenter", &self.datacenter, &id.datacenter),
            ("service", &self.service, &id.service),
        ];
        checks.iter().find_map(|(key, want, got)| match want {
            Some(want) if want != *got => Some(format!(
                "leaf is {id}, but identity.{key} is {want:?} in the config"
            )),
            _ => None,
        })
    }
}

#[derive(Debug, Clone)]
struct UpstreamSpec {
    name: String,
    bind: SocketAddr,
    protocol: Protocol,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    max_connections: usize,
    endpoints: Vec<String>,
    datacenter: Option<String>,
    namespace: Option<String>,
}

/// The certificate, key and bundle files of `[identity]`.
#[derive(Debug, Clone)]
struct IdentityFiles {
    cert: PathBuf,
    key: PathBuf,
    bundle: PathBuf,
}

/// A parsed, validated static config with every path made absolute.
#[derive(Debug, Clone)]
pub struct StaticConfig {
    pub path: PathBuf,
    pub admin_addr: Option<SocketAddr>,
    /// `None` only when the Workload API gives the identity.
    files: Option<IdentityFiles>,
    intentions: Option<PathBuf>,
    pins: IdentityPins,
    default_action: DefaultAction,
    inbound: Option<InboundConfig>,
    upstreams: Vec<UpstreamSpec>,
}

impl StaticConfig {
    /// Reads and validates the config file. Every error names file, line and key.
    pub fn load(path: &Path) -> Result<StaticConfig, ConfigError> {
        Self::read(path, false)
    }

    /// As [`StaticConfig::load`], for `--workload-api`: the identity files may be left out.
    pub fn load_for_workload_api(path: &Path) -> Result<StaticConfig, ConfigError> {
        Self::read(path, true)
    }

    fn read(path: &Path, workload_api: bool) -> Result<StaticConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            key: "-".into(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse_with(path, &text, workload_api)
    }

    #[cfg(test)]
    fn parse(path: &Path, text: &str) -> Result<StaticConfig, ConfigError> {
        Self::parse_with(path, text, false)
    }

    fn parse_with(
        path: &Path,
        text: &str,
        workload_api: bool,
    ) -> Result<StaticConfig, ConfigError> {
        let err_at = |span: Option<std::ops::Range<usize>>, key: &str, message: String| {
            let (line, column) = span.map_or((0, 0), |s| line_col(text, s.start));
            ConfigError {
                file: path.to_owned(),
                line,
                column,
                key: key.to_owned(),
                message,
            }
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| err_at(e.span(), "-", e.message().to_owned()))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            err_at(inner.span(), &key, inner.message().to_owned())
        })?;

        let dir = path.parent().unwrap_or(Path::new("."));
        let (identity_span, identity) = match raw.identity {
            Some(spanned) => (Some(spanned.span()), spanned.into_inner()),
            None => (None, RawIdentity::default()),
        };
        let files = match (identity.cert, identity.key, identity.bundle) {
            (Some(cert), Some(key), Some(bundle)) => Some(IdentityFiles {
                cert: dir.join(cert),
                key: dir.join(key),
                bundle: dir.join(bundle),
            }),
            (None, None, None) if workload_api => None,
            (cert, key, _) => {
                let missing = if cert.is_none() {
                    "cert"
                } else if key.is_none() {
                    "key"
                } else {
                    "bundle"
                };
                let why = if workload_api {
                    "give all of cert, key and bundle, or none of them (--workload-api gives the identity)"
                } else {
                    "required: the leaf certificate, its key and the trust bundle (or take them from SPIFFE with --workload-api)"
                };
                return Err(err_at(
                    identity_span.clone(),
                    &format!("identity.{missing}"),
                    why.to_owned(),
                ));
            }
        };
        let inbound = match raw.inbound {
            Some(ib) => {
                check_host_port(ib.local_app.get_ref())
                    .map_err(|m| err_at(Some(ib.local_app.span()), "inbound.local_app", m))?;
                Some((
                    InboundConfig {
                        bind: ib.bind,
                        local_app: ib.local_app.into_inner(),
                        protocol: ib.protocol,
                        handshake_timeout: Duration::from_millis(
                            ib.handshake_timeout_ms
                                .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT_MS),
                        ),
                        local_connect_timeout: Duration::from_millis(
                            ib.local_connect_timeout_ms
                                .unwrap_or(DEFAULT_LOCAL_CONNECT_TIMEOUT_MS),
                        ),
                        local_request_timeout: model::request_timeout_ms(
                            ib.local_request_timeout_ms,
                        ),
                        idle_timeout: model::idle_timeout_ms(ib.idle_timeout_ms),
                        max_connections: model::max_connections(ib.max_connections),
                    },
                    ib.intentions.map(|p| dir.join(p)),
                ))
            }
            None => None,
        };

        let mut upstreams = Vec::with_capacity(raw.upstreams.len());
        for (i, up) in raw.upstreams.into_iter().enumerate() {
            let key = |k: &str| format!("upstreams[{i}].{k}");
            if up.name.get_ref().is_empty() {
                return Err(err_at(
                    Some(up.name.span()),
                    &key("name"),
                    "must not be empty".into(),
                ));
            }
            if up.endpoints.is_empty() {
                return Err(err_at(
                    Some(up.name.span()),
                    &key("endpoints"),
                    "at least one endpoint is required".into(),
                ));
            }
            for (j, ep) in up.endpoints.iter().enumerate() {
                check_host_port(ep.get_ref())
                    .map_err(|m| err_at(Some(ep.span()), &key(&format!("endpoints[{j}]")), m))?;
            }
            upstreams.push(UpstreamSpec {
                name: up.name.into_inner(),
                bind: up.bind,
                protocol: up.protocol,
                connect_timeout: Duration::from_millis(
                    up.connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
                ),
                request_timeout: model::request_timeout_ms(up.request_timeout_ms),
                idle_timeout: model::idle_timeout_ms(up.idle_timeout_ms),
                max_connections: model::max_connections(up.max_connections),
                endpoints: up.endpoints.into_iter().map(|e| e.into_inner()).collect(),
                datacenter: up.datacenter,
                namespace: up.namespace,
            });
        }

        let (inbound, intentions) = match inbound {
            Some((ib, ixn)) => (Some(ib), ixn),
            None => (None, None),
        };
        let default_action = match raw.default_action {
            Some(action) => DefaultAction {
                action,
                source: "config file default_action",
            },
            None => DefaultAction {
                action: Action::Deny,
                source: "built-in default (deny)",
            },
        };
        Ok(StaticConfig {
            path: path.to_owned(),
            admin_addr: raw.admin_addr,
            files,
            intentions,
            pins: IdentityPins {
                trust_domain: identity.trust_domain,
                partition: identity.partition,
                namespace: identity.namespace,
                datacenter: identity.datacenter,
                service: identity.service,
            },
            default_action,
            inbound,
            upstreams,
        })
    }
}

fn check_host_port(s: &str) -> Result<(), String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("{s:?} is not host:port")),
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    (line, column)
}

/// Watches the files a static config names and publishes snapshots.
pub struct FileSource {
    config: StaticConfig,
    provider: Arc<CryptoProvider>,
    /// Bytes last read from each file, so each change is parsed (and logged) once.
    seen: HashMap<PathBuf, Option<Vec<u8>>>,
    leaf: Option<Arc<Leaf>>,
    bundle_pem: Option<Vec<u8>>,
    entries: Option<Vec<ServiceIntentionsEntry>>,
    /// `--workload-api`: leaf and bundles come from here, not from files.
    identity: Option<IdentityFeed>,
    workload_bundle: Option<Arc<TrustBundle>>,
    /// New versions of the config file, read on SIGHUP.
    reloads: Option<mpsc::Receiver<StaticConfig>>,
}

impl FileSource {
    pub fn new(config: StaticConfig, provider: Arc<CryptoProvider>) -> FileSource {
        FileSource {
            config,
            provider,
            seen: HashMap::new(),
            leaf: None,
            bundle_pem: None,
            entries: None,
            identity: None,
            workload_bundle: None,
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
    pub fn spawn(mut self) -> watch::Receiver<Arc<Snapshot>> {
        record_update("config", true);
        let mut first = self.refresh();
        let mut feed = self.identity.take();
        if let Some(feed) = feed.as_mut() {
            let current = feed.borrow_and_update().clone();
            first = first.and(self.apply_identity(current));
        }
        let (tx, rx) = watch::channel(Arc::new(self.snapshot(None, first)));
        let mut reloads = self.reloads.take();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let changes = tokio::select! {
                    _ = tx.closed() => return,
                    _ = tick.tick() => self.refresh(),
                    identity = next_identity(&mut feed) => self.apply_identity(identity),
                    config = next_reload(&mut reloads) => self.reload_config(config, feed.is_some()),
                };
                if changes.any() {
                    let prev = tx.borrow().clone();
                    let _ = tx.send(Arc::new(self.snapshot(Some(&prev), changes)));
                }
            }
        });
        rx
    }

    /// Puts a reloaded config in force, unless it names another identity than the
    /// leaf in force; then every watched file is read again, as its path may have
    /// changed.
    fn reload_config(&mut self, mut config: StaticConfig, workload_api: bool) -> Changes {
        if let Some(mismatch) = self.leaf.as_ref().and_then(|l| config.pins.mismatch(&l.id)) {
            tracing::error!(config = %config.path.display(), "config not reloaded: {mismatch}");
            record_update("config", false);
            return Changes::default();
        }
        if config.admin_addr != self.config.admin_addr {
            tracing::warn!(config = %config.path.display(), "admin_addr changes only with a restart");
        }
        if workload_api {
            config.files = None;
        }
        tracing::info!(config = %config.path.display(), "config reloaded");
        record_update("config", true);
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

    /// The identity checks every new leaf passes: the config's pins, and the identity of
    /// the leaf before it.
    fn check_leaf(&self, leaf: &Leaf) -> Result<(), model::PemError> {
        let pinned = self.leaf.as_ref().map(|l| &l.id);
        match (self.config.pins.mismatch(&leaf.id), pinned) {
            (Some(m), _) => Err(model::PemError::Identity(m)),
            (None, Some(old)) if *old != leaf.id => Err(model::PemError::Identity(format!(
                "new leaf is {}, but this proxy is {old}",
                leaf.id
            ))),
            _ => Ok(()),
        }
    }

    /// A new identity from the Workload API (`None`: the last one expired).
    fn apply_identity(&mut self, identity: Option<Arc<Identity>>) -> Changes {
        let Some(identity) = identity else {
            let had = self.leaf.is_some() || self.workload_bundle.is_some();
            self.leaf = None;
            self.workload_bundle = None;
            return Changes {
                leaf: had,
                bundle: had,
                intentions: false,
            };
        };
        if let Err(e) = self.check_leaf(&identity.leaf) {
            tracing::warn!(error = %e, "SVID from the Workload API refused; keeping the last good one");
            return Changes::default();
        }
        let changes = Changes {
            leaf: !same_arc(&self.leaf, &identity.leaf),
            bundle: !same_arc(&self.workload_bundle, &identity.bundle),
            intentions: false,
        };
        self.leaf = Some(identity.leaf.clone());
        self.workload_bundle = Some(identity.bundle.clone());
        changes
    }

    fn reload_leaf(&mut self, files: &IdentityFiles) -> bool {
        let (Some(Some(cert)), Some(Some(key))) =
            (self.seen.get(&files.cert), self.seen.get(&files.key))
        else {
            return false;
        };
        let result = model::parse_leaf(cert, key, &self.provider)
            .and_then(|leaf| self.check_leaf(&leaf).map(|()| leaf));
        match result {
            Ok(leaf) => {
                tracing::info!(id = %leaf.id, serial = %leaf.serial, "leaf certificate loaded");
                self.leaf = Some(Arc::new(leaf));
                record_update("leaf", true);
                true
            }
            Err(e) => {
                tracing::warn!(cert = %files.cert.display(), key = %files.key.display(), error = %e, "leaf not loaded; keeping the last good one");
                record_update("leaf", false);
                false
            }
        }
    }

    fn reload_bundle(&mut self, files: &IdentityFiles, bytes: Vec<u8>) -> bool {
        match model::parse_certificates(&bytes) {
            Ok(roots) => {
                tracing::info!(file = %files.bundle.display(), roots = roots.len(), "trust bundle loaded");
                self.bundle_pem = Some(bytes);
                record_update("roots", true);
                true
            }
            Err(e) => {
                tracing::warn!(file = %files.bundle.display(), error = %e, "trust bundle not loaded; keeping the last good one");
                record_update("roots", false);
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
                record_update("intentions", true);
                true
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "intentions not loaded; keeping the last good ones");
                record_update("intentions", false);
                false
            }
        }
    }

    /// Assembles the snapshot from the last good pieces. What did not change is taken
    /// from `prev` as the same `Arc`, so readers can tell by pointer that it is the same
    /// (TLS configs and their session caches survive an intentions edit, and live
    /// connections are re-checked only when intentions really changed).
    fn snapshot(&self, prev: Option<&Snapshot>, changes: Changes) -> Snapshot {
        let pins = &self.config.pins;
        let me = self.leaf.as_ref().map(|l| l.id.clone());
        let trust_domain = pins
            .trust_domain
            .clone()
            .or_else(|| me.as_ref().map(|id| id.trust_domain.clone()));
        let bundle = match prev {
            _ if self.workload_bundle.is_some() => self.workload_bundle.clone(),
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
        let upstreams = match &me {
            Some(me) => self.upstreams_for(me, bundle.as_deref()),
            None => Vec::new(),
        };
        Snapshot {
            bundle,
            leaf: self.leaf.clone(),
            intentions,
            inbound: self.config.inbound.clone(),
            upstreams,
            default_action: Some(self.config.default_action.clone()),
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
                    service: up.name.clone(),
                };
                UpstreamConfig {
                    name: up.name.clone(),
                    bind: up.bind,
                    protocol: up.protocol,
                    connect_timeout: up.connect_timeout,
                    request_timeout: up.request_timeout,
                    idle_timeout: up.idle_timeout,
                    max_connections: up.max_connections,
                    endpoints: up
                        .endpoints
                        .iter()
                        .map(|addr| Endpoint {
                            addr: addr.clone(),
                            identity: identity.clone(),
                        })
                        .collect(),
                }
            })
            .collect()
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

    fn and(self, other: Changes) -> Changes {
        Changes {
            leaf: self.leaf || other.leaf,
            bundle: self.bundle || other.bundle,
            intentions: self.intentions || other.intentions,
        }
    }
}

/// The next identity from the Workload API; never resolves without a feed, or once the
/// feed's source is gone (the last identity then stays).
async fn next_identity(feed: &mut Option<IdentityFeed>) -> Option<Arc<Identity>> {
    if let Some(rx) = feed
        && rx.changed().await.is_ok()
    {
        return rx.borrow_and_update().clone();
    }
    std::future::pending().await
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

fn same_arc<T>(held: &Option<Arc<T>>, new: &Arc<T>) -> bool {
    held.as_ref().is_some_and(|held| Arc::ptr_eq(held, new))
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
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StaticConfig, ConfigError> {
        StaticConfig::parse(Path::new("/etc/ferrule/ferrule.toml"), text)
    }

    const GOOD: &str = r#"
admin_addr = "127.0.0.1:19100"
[identity]
cert = "api.pem"
key = "api-key.pem"
bundle = "ca.pem"
[inbound]
bind = "127.0.0.1:21000"
local_app = "127.0.0.1:8080"
protocol = "tcp"
intentions = "intentions.json"
[[upstreams]]
name = "db"
bind = "127.0.0.1:9191"
endpoints = ["127.0.0.1:21001"]
"#;

    #[test]
    fn the_documented_example_parses_with_defaults() {
        let cfg = parse(GOOD).unwrap();
        let files = cfg.files.as_ref().unwrap();
        assert_eq!(files.cert, Path::new("/etc/ferrule/api.pem"));
        assert_eq!(
            cfg.intentions.as_deref(),
            Some(Path::new("/etc/ferrule/intentions.json"))
        );
        let ib = cfg.inbound.unwrap();
        assert_eq!(ib.handshake_timeout, Duration::from_secs(10));
        assert_eq!(cfg.upstreams[0].connect_timeout, Duration::from_secs(5));
        assert_eq!(cfg.default_action.action, Action::Deny);
        assert_eq!(ib.local_request_timeout, Some(Duration::from_secs(15)));
    }

    #[test]
    fn http_listeners_take_request_timeouts_where_zero_is_none() {
        let text = GOOD
            .replace(
                "protocol = \"tcp\"",
                "protocol = \"grpc\"\nlocal_request_timeout_ms = 0",
            )
            .replace(
                "endpoints = [",
                "protocol = \"http\"\nrequest_timeout_ms = 2500\nendpoints = [",
            );
        let cfg = parse(&text).unwrap();
        let ib = cfg.inbound.unwrap();
        assert_eq!(ib.protocol, Protocol::Grpc);
        assert_eq!(ib.local_request_timeout, None);
        assert_eq!(cfg.upstreams[0].protocol, Protocol::Http);
        assert_eq!(
            cfg.upstreams[0].request_timeout,
            Some(Duration::from_millis(2500))
        );
    }

    #[test]
    fn errors_name_line_and_key() {
        let bad = GOOD.replace("bind = \"127.0.0.1:9191\"", "bind = 9191");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.key, "upstreams[0].bind");
        assert_eq!(e.line, 14, "{e}");
        assert!(
            e.to_string().starts_with("/etc/ferrule/ferrule.toml:14:"),
            "{e}"
        );

        let e = parse(&GOOD.replace("protocol = \"tcp\"", "protocl = \"tcp\"")).unwrap_err();
        assert!(e.key.starts_with("inbound"), "{e}");
        assert!(e.message.contains("protocl"), "{e}");
        assert_eq!(e.line, 10, "{e}");

        let e = parse(&GOOD.replace("protocol = \"tcp\"", "protocol = \"thrift\"")).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("inbound.protocol", 10), "{e}");

        let e = parse(&GOOD.replace("[\"127.0.0.1:21001\"]", "[\"nope\"]")).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.line),
            ("upstreams[0].endpoints[0]", 15),
            "{e}"
        );

        let e = parse("admin_addr = [").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
    }

    /// A directory with a CA, a leaf for `api`, a bundle, intentions and a config.
    struct Files {
        dir: tempfile::TempDir,
        ca: ferrule_dev::ca::DevCa,
    }

    impl Files {
        fn new() -> Files {
            let dir = tempfile::tempdir().unwrap();
            let ca = ferrule_dev::ca::DevCa::generate(None).unwrap();
            let files = Files { dir, ca };
            files.write("ca.pem", files.ca.cert_pem());
            files.new_leaf(true, true);
            files.write("intentions.json", &allow("web"));
            files.write("ferrule.toml", GOOD);
            files
        }

        fn write(&self, name: &str, text: &str) {
            // Atomic rename, as most tools that replace certificates do.
            let tmp = self.dir.path().join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(tmp, self.dir.path().join(name)).unwrap();
        }

        fn new_leaf(&self, cert: bool, key: bool) -> String {
            let leaf = self
                .ca
                .issue(&ferrule_dev::ca::LeafSpec::service("api"))
                .unwrap();
            if cert {
                self.write("api.pem", &leaf.cert_pem);
            }
            if key {
                self.write("api-key.pem", &leaf.key_pem);
            }
            leaf.serial_hex
        }

        fn source(&self) -> watch::Receiver<Arc<Snapshot>> {
            let config = StaticConfig::load(&self.dir.path().join("ferrule.toml")).unwrap();
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            FileSource::new(config, provider).spawn()
        }
    }

    fn allow(source: &str) -> String {
        format!(
            r#"{{"Kind":"service-intentions","Name":"api","Sources":[{{"Name":"{source}","Action":"allow"}}]}}"#
        )
    }

    async fn next(rx: &mut watch::Receiver<Arc<Snapshot>>) -> Arc<Snapshot> {
        tokio::time::timeout(Duration::from_secs(3), rx.changed())
            .await
            .expect("a new snapshot within 3 s")
            .unwrap();
        rx.borrow_and_update().clone()
    }

    #[tokio::test]
    async fn changes_are_published_and_unchanged_pieces_keep_their_arc() {
        let files = Files::new();
        let mut rx = files.source();
        let first = rx.borrow_and_update().clone();
        assert!(first.is_complete());
        assert_eq!(first.upstreams[0].endpoints[0].identity.service, "db");

        files.write("intentions.json", &allow("billing"));
        let second = next(&mut rx).await;
        let (old, new) = (
            first.intentions.as_ref().unwrap(),
            second.intentions.as_ref().unwrap(),
        );
        assert!(!Arc::ptr_eq(old, new));
        assert!(
            new.rules()[0].to_string().contains("billing"),
            "{}",
            new.rules()[0]
        );
        assert!(Arc::ptr_eq(
            first.bundle.as_ref().unwrap(),
            second.bundle.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(
            first.leaf.as_ref().unwrap(),
            second.leaf.as_ref().unwrap()
        ));

        // A new certificate without its key is not used; the pair is, once complete.
        let old_serial = second.leaf.as_ref().unwrap().serial.clone();
        files.new_leaf(true, false);
        tokio::time::sleep(POLL_INTERVAL * 3).await;
        assert_eq!(rx.borrow().leaf.as_ref().unwrap().serial, old_serial);
        let serial = files.new_leaf(true, true);
        let third = next(&mut rx).await;
        assert_eq!(third.leaf.as_ref().unwrap().serial, serial);
        assert!(Arc::ptr_eq(
            second.intentions.as_ref().unwrap(),
            third.intentions.as_ref().unwrap()
        ));

        // Garbage keeps the last good state.
        files.write("ca.pem", "garbage");
        files.write("intentions.json", "{ not json");
        tokio::time::sleep(POLL_INTERVAL * 3).await;
        let now = rx.borrow().clone();
        assert!(
            Arc::ptr_eq(&now, &third),
            "a bad file must not change the snapshot"
        );
    }

    #[tokio::test]
    async fn a_leaf_for_another_service_is_refused_after_the_first() {
        let files = Files::new();
        let mut rx = files.source();
        let first = rx.borrow_and_update().clone();
        let web = files
            .ca
            .issue(&ferrule_dev::ca::LeafSpec::service("web"))
            .unwrap();
        files.write("api.pem", &web.cert_pem);
        files.write("api-key.pem", &web.key_pem);
        tokio::time::sleep(POLL_INTERVAL * 3).await;
        assert!(Arc::ptr_eq(&rx.borrow(), &first));
        assert_eq!(rx.borrow().leaf.as_ref().unwrap().id.service, "api");
    }

    #[test]
    fn identity_pins_refuse_a_foreign_leaf() {
        let pins = IdentityPins {
            service: Some("api".into()),
            ..Default::default()
        };
        let web = ServiceId::new("td.consul", "default", "dc1", "web");
        assert!(pins.mismatch(&web).unwrap().contains("identity.service"));
        let api = ServiceId::new("td.consul", "default", "dc1", "api");
        assert_eq!(pins.mismatch(&api), None);
    }
}

#[cfg(test)]
mod workload_tests {
    use super::*;
    use ferrule_dev::ca::{DevCa, LeafSpec};

    const NO_FILES: &str = r#"
[identity]
service = "api"
[inbound]
bind = "127.0.0.1:21000"
local_app = "127.0.0.1:8080"
[[upstreams]]
name = "db"
bind = "127.0.0.1:9191"
endpoints = ["127.0.0.1:21001"]
"#;

    fn parse(text: &str, workload_api: bool) -> Result<StaticConfig, ConfigError> {
        StaticConfig::parse_with(Path::new("/etc/ferrule/ferrule.toml"), text, workload_api)
    }

    #[test]
    fn identity_files_are_optional_only_with_the_workload_api() {
        let cfg = parse(NO_FILES, true).unwrap();
        assert!(cfg.files.is_none());
        assert!(parse("", true).unwrap().files.is_none());

        let e = parse(NO_FILES, false).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("identity.cert", 2), "{e}");
        assert!(e.message.contains("--workload-api"), "{e}");
        let e = parse("", false).unwrap_err();
        assert_eq!(e.key, "identity.cert", "{e}");

        // Half the files is a mistake either way.
        let half = NO_FILES.replace("service = \"api\"", "cert = \"a.pem\"\nbundle = \"ca.pem\"");
        for workload_api in [true, false] {
            let e = parse(&half, workload_api).unwrap_err();
            assert_eq!((e.key.as_str(), e.line), ("identity.key", 2), "{e}");
        }
    }

    fn identity(ca: &DevCa, service: &str, federated: &[&DevCa]) -> Arc<Identity> {
        let leaf = ca.issue(&LeafSpec::service(service)).unwrap();
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let leaf = model::parse_leaf(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), &provider)
            .unwrap();
        let mut bundle = model::parse_bundle(ca.cert_pem().as_bytes(), &ca.trust_domain()).unwrap();
        for fed in federated {
            let b = model::parse_bundle(fed.cert_pem().as_bytes(), &fed.trust_domain()).unwrap();
            bundle.federated.insert(fed.trust_domain(), Arc::new(b));
        }
        Arc::new(Identity {
            leaf: Arc::new(leaf),
            bundle: Arc::new(bundle),
        })
    }

    async fn next(rx: &mut watch::Receiver<Arc<Snapshot>>) -> Arc<Snapshot> {
        tokio::time::timeout(Duration::from_secs(3), rx.changed())
            .await
            .expect("a new snapshot within 3 s")
            .unwrap();
        rx.borrow_and_update().clone()
    }

    #[tokio::test]
    async fn the_workload_identity_fills_the_snapshot_and_follows_rotations() {
        let ca = DevCa::generate(None).unwrap();
        let other = DevCa::generate(None).unwrap();
        let (tx, feed) = watch::channel(None);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let source = FileSource::new(parse(NO_FILES, true).unwrap(), provider);
        let mut rx = source.with_identity(feed).spawn();

        // Nothing yet: fail closed, no upstream identities to pin.
        let first = rx.borrow_and_update().clone();
        assert!(!first.is_complete());
        assert!(first.upstreams.is_empty());

        let id = identity(&ca, "api", &[&other]);
        tx.send_replace(Some(id.clone()));
        let snap = next(&mut rx).await;
        assert!(snap.is_complete());
        assert!(Arc::ptr_eq(snap.leaf.as_ref().unwrap(), &id.leaf));
        assert!(Arc::ptr_eq(snap.bundle.as_ref().unwrap(), &id.bundle));
        let db = &snap.upstreams[0].endpoints[0].identity;
        assert_eq!(
            (db.service.as_str(), db.trust_domain.as_str()),
            ("db", ca.trust_domain().as_str())
        );

        // A rotation: new leaf, same bundle and intentions.
        let rotated = Arc::new(Identity {
            leaf: identity(&ca, "api", &[]).leaf.clone(),
            bundle: id.bundle.clone(),
        });
        tx.send_replace(Some(rotated.clone()));
        let snap2 = next(&mut rx).await;
        assert!(Arc::ptr_eq(snap2.leaf.as_ref().unwrap(), &rotated.leaf));
        assert!(Arc::ptr_eq(snap2.bundle.as_ref().unwrap(), &id.bundle));
        assert!(Arc::ptr_eq(
            snap.intentions.as_ref().unwrap(),
            snap2.intentions.as_ref().unwrap()
        ));

        // An SVID for another service than the pinned one is refused.
        tx.send_replace(Some(identity(&ca, "web", &[])));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(Arc::ptr_eq(&rx.borrow(), &snap2));

        // Expired without a successor: no leaf, fail closed.
        tx.send_replace(None);
        let snap3 = next(&mut rx).await;
        assert!(snap3.leaf.is_none() && snap3.bundle.is_none());
        assert!(!snap3.is_complete());
    }
}
