//! The SPIFFE Workload API (SPIRE, or `ferrule dev --workload-api-socket`) as the source
//! of this proxy's identity: its X.509-SVID, its trust domain's bundle and the bundles of
//! the trust domains it federates with.
//!
//! Only identity comes from here. Intentions, listeners and upstreams still come from the
//! config file or the Consul agent: those sources take the [`IdentityFeed`] this module
//! publishes (`FileSource::with_identity`, `ConsulSource::with_identity`), and their
//! shared publisher (`publish`) puts its leaf and bundle into their snapshots, so the
//! proxy sees one `Snapshot` as before. Every
//! message on the stream is a rotation like a Consul leaf rotation: the proxy rebuilds
//! its TLS configs, new handshakes use the new SVID, open connections stay.
//!
//! Failures are handled as `docs/consul-semantics.md#workload-api` describes. The stream is reopened with backoff
//! after any transient failure (agent unreachable, `UNAVAILABLE`, the stream ending),
//! and the last good SVID stays in force while it is valid; when it expires the feed
//! goes empty and the proxy fails closed. `PERMISSION_DENIED` is different: the server
//! says this workload is entitled to no identity any more (its SPIRE entry was
//! deleted), and the specification's advice is to stop using what it had. After the
//! withdrawal grace period ([`WorkloadSource::with_withdrawal_grace`], 0 by default)
//! the identity is marked [`Identity::withdrawn`]: the leaf is taken out of service
//! (handshakes fail closed, `/ready` says why) while the stream is retried, and the
//! next SVID the server sends puts it back. `INVALID_ARGUMENT` (the
//! server says the request itself is wrong, e.g. without the `workload.spiffe.io`
//! header) and `UNIMPLEMENTED` (no X.509-SVID profile there) cannot be cured by
//! retrying: they are fatal, reported through [`Fatal`] once no valid SVID is left.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::transport::{Endpoint, EndpointError, GrpcStatusCode, TransportError};
use spiffe::{WorkloadApiClient, WorkloadApiError, X509Context};
use tokio::sync::{oneshot, watch};
use tokio_stream::StreamExt as _;

use crate::consul::backoff;
use crate::model::{self, Leaf, PemError, TrustBundle};
use crate::telemetry::{Resource, record_update};

/// The environment variable SPIFFE defines for the Workload API's address.
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// What the Workload API says this proxy is.
#[derive(Debug)]
pub struct Identity {
    pub leaf: Arc<Leaf>,
    /// The SVID's own trust domain, with the federated bundles inside.
    pub bundle: Arc<TrustBundle>,
    /// Why the leaf must no longer be served, once the server withdrew it
    /// (`PERMISSION_DENIED`); the bundle stays trusted.
    pub withdrawn: Option<String>,
}

/// The current identity; `None` until the first SVID, and again once the last one
/// expired without a successor.
pub type IdentityFeed = watch::Receiver<Option<Arc<Identity>>>;

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("--workload-api {addr:?}: {source} (want unix:///path/to/agent.sock or tcp://IP:PORT)")]
    Endpoint { addr: String, source: EndpointError },
    /// The server refuses our requests for good (SPIFFE: do not retry).
    #[error(
        "the Workload API at {endpoint} answered {code}: {message}; this is fatal (retrying \
         cannot help), check that it is a SPIFFE Workload API and that nothing between us strips \
         the workload.spiffe.io header"
    )]
    Fatal {
        endpoint: String,
        code: GrpcStatusCode,
        message: String,
    },
}

/// Why one Workload API message was not used.
#[derive(Debug, thiserror::Error)]
enum SvidError {
    #[error("the response has no SVID")]
    NoSvid,
    #[error("SVID {id}: {source}")]
    Leaf { id: String, source: PemError },
    #[error("no bundle for the SVID's own trust domain {0}")]
    NoBundle(String),
    #[error("bundle of {trust_domain}: {source}")]
    Bundle {
        trust_domain: String,
        source: PemError,
    },
}

/// How quickly a failed stream is reopened.
#[derive(Debug, Clone)]
struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        // A restarting SPIRE agent is back within seconds; a proxy should be too.
        Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
        }
    }
}

/// Follows a Workload API endpoint.
pub struct WorkloadSource {
    endpoint: Endpoint,
    shown: String,
    provider: Arc<CryptoProvider>,
    backoff: Backoff,
    /// How long `PERMISSION_DENIED` may last before the SVID is withdrawn.
    grace: Duration,
}

/// Resolves with the fatal error, if the Workload API ever gives one while no valid SVID
/// is held; never resolves otherwise.
pub struct Fatal(oneshot::Receiver<WorkloadError>);

impl Fatal {
    pub async fn wait(self) -> WorkloadError {
        match self.0.await {
            Ok(e) => e,
            // The source stopped without a fatal error (nobody follows it any more).
            Err(_) => std::future::pending().await,
        }
    }
}

impl WorkloadSource {
    /// Parses the address (`unix:///path`, `unix:/path`, `tcp://IP:PORT`) now, so a bad
    /// one is a start-up error.
    pub fn new(addr: &str, provider: Arc<CryptoProvider>) -> Result<WorkloadSource, WorkloadError> {
        let endpoint = Endpoint::parse(addr).map_err(|source| WorkloadError::Endpoint {
            addr: addr.to_owned(),
            source,
        })?;
        Ok(WorkloadSource {
            endpoint,
            shown: addr.to_owned(),
            provider,
            backoff: Backoff::default(),
            grace: Duration::ZERO,
        })
    }

    /// `--workload-api-withdrawal-grace`: how long the server may answer
    /// `PERMISSION_DENIED` before the SVID is taken out of service (a SPIRE entry
    /// deleted and re-created within it goes unnoticed).
    pub fn with_withdrawal_grace(mut self, grace: Duration) -> WorkloadSource {
        self.grace = grace;
        self
    }

    /// Returns at once with an empty feed and follows the Workload API in the background
    /// for as long as anyone holds the feed.
    pub fn spawn(self) -> (IdentityFeed, Fatal) {
        let (tx, rx) = watch::channel(None);
        let (fatal_tx, fatal_rx) = oneshot::channel();
        tokio::spawn(async move {
            tokio::select! {
                () = self.follow(&tx, fatal_tx) => {}
                () = expire(&tx) => {}
                () = tx.closed() => {}
            }
        });
        (rx, Fatal(fatal_rx))
    }

    async fn follow(
        &self,
        tx: &watch::Sender<Option<Arc<Identity>>>,
        fatal: oneshot::Sender<WorkloadError>,
    ) {
        tracing::info!(endpoint = %self.shown, "following the SPIFFE Workload API for this proxy's identity");
        let mut failures = 0u32;
        // Since when the server has been denying us, while it does.
        let mut denied_since: Option<tokio::time::Instant> = None;
        loop {
            let error = self.session(tx, &mut failures, &mut denied_since).await;
            if let Some(fatal_error) = self.fatal(&error) {
                record_update(Resource::Leaf, false);
                match tx.borrow().as_ref() {
                    Some(held) => tracing::error!(
                        error = %fatal_error,
                        serial = %held.leaf.serial,
                        "Workload API failed for good; serving the last SVID until it expires, then exiting"
                    ),
                    None => {
                        tracing::error!(error = %fatal_error, "Workload API failed for good and no valid SVID is held")
                    }
                }
                // Exit only once nothing valid is left to serve with.
                let _ = tx.subscribe().wait_for(Option::is_none).await;
                let _ = fatal.send(fatal_error);
                return;
            }
            failures = failures.saturating_add(1);
            record_update(Resource::Leaf, false);
            record_update(Resource::Roots, false);
            let mut pause = backoff(failures, self.backoff.base, self.backoff.cap);
            if let Some(message) = permission_denied(&error) {
                let since = *denied_since.get_or_insert_with(tokio::time::Instant::now);
                let left = self.grace.saturating_sub(since.elapsed());
                if left.is_zero() {
                    withdraw(tx, &self.shown, message);
                } else {
                    if failures == 1 {
                        tracing::warn!(endpoint = %self.shown, %error, grace_left = ?left, "the Workload API denies this workload an identity; the SVID is withdrawn if that lasts through the grace period");
                    }
                    // Back in time to withdraw when the grace period ends.
                    pause = pause.min(left);
                }
                tokio::time::sleep(pause).await;
                continue;
            }
            let held = tx
                .borrow()
                .as_ref()
                .map(|id| (id.leaf.serial.clone(), id.leaf.not_after));
            if failures == 1 {
                match held {
                    Some((serial, not_after)) => tracing::warn!(
                        endpoint = %self.shown, %error, %serial, not_after,
                        "Workload API stream failed; keeping the last SVID while it is valid and reconnecting"
                    ),
                    None => tracing::warn!(
                        endpoint = %self.shown, %error,
                        "cannot get an SVID from the Workload API yet; retrying"
                    ),
                }
            } else {
                tracing::debug!(endpoint = %self.shown, %error, failures, "Workload API still failing");
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// One connection and its stream, until it fails. Every good message resets
    /// `failures`.
    async fn session(
        &self,
        tx: &watch::Sender<Option<Arc<Identity>>>,
        failures: &mut u32,
        denied_since: &mut Option<tokio::time::Instant>,
    ) -> WorkloadApiError {
        let client = match WorkloadApiClient::connect(self.endpoint.clone()).await {
            Ok(client) => client,
            Err(e) => return e,
        };
        let mut stream = match client.stream_x509_contexts().await {
            Ok(stream) => stream,
            Err(e) => return e,
        };
        while let Some(item) = stream.next().await {
            let context = match item {
                Ok(context) => context,
                Err(e) if is_bad_message(&e) => {
                    // The stream itself is fine; this message is not.
                    record_update(Resource::Leaf, false);
                    tracing::warn!(error = %e, "the Workload API sent an unusable X.509-SVID response; keeping the last good SVID");
                    continue;
                }
                Err(e) => return e,
            };
            let previous = tx.borrow().clone();
            match identity_from(&context, previous.as_deref(), &self.provider) {
                Ok(identity) => {
                    if *failures > 0 {
                        tracing::info!(endpoint = %self.shown, "the Workload API answers again");
                    }
                    *failures = 0;
                    *denied_since = None;
                    record_update(Resource::Leaf, true);
                    record_update(Resource::Roots, true);
                    let unchanged = previous.as_ref().is_some_and(|p| {
                        Arc::ptr_eq(&p.leaf, &identity.leaf)
                            && Arc::ptr_eq(&p.bundle, &identity.bundle)
                            && p.withdrawn.is_none()
                    });
                    if !unchanged {
                        tracing::info!(
                            id = %identity.leaf.id,
                            serial = %identity.leaf.serial,
                            not_after = identity.leaf.not_after,
                            roots = identity.bundle.roots.len(),
                            federated = ?identity.bundle.federated.keys().collect::<Vec<_>>(),
                            "SVID from the Workload API"
                        );
                        tx.send_replace(Some(Arc::new(identity)));
                    }
                }
                Err(e) => {
                    record_update(Resource::Leaf, false);
                    tracing::warn!(error = %e, "SVID from the Workload API not used; keeping the last good one");
                }
            }
        }
        // A clean end of stream is the server going away (a SPIRE agent restarting).
        WorkloadApiError::Transport(TransportError::status(
            GrpcStatusCode::Unavailable,
            "the Workload API closed the stream",
        ))
    }

    fn fatal(&self, error: &WorkloadApiError) -> Option<WorkloadError> {
        let WorkloadApiError::Transport(TransportError::Status(status)) = error else {
            return None;
        };
        matches!(
            status.code(),
            GrpcStatusCode::InvalidArgument | GrpcStatusCode::Unimplemented
        )
        .then(|| WorkloadError::Fatal {
            endpoint: self.shown.clone(),
            code: status.code(),
            message: status.message().to_owned(),
        })
    }
}

/// The server's message when it answered `PERMISSION_DENIED` (the client library names
/// SPIRE's "no identity issued" apart).
fn permission_denied(error: &WorkloadApiError) -> Option<&str> {
    match error {
        WorkloadApiError::NoIdentityIssued => Some("no identity issued"),
        WorkloadApiError::PermissionDenied(message) => Some(message),
        WorkloadApiError::Transport(TransportError::Status(status))
            if status.code() == GrpcStatusCode::PermissionDenied =>
        {
            Some(status.message())
        }
        _ => None,
    }
}

/// Takes the held SVID out of service, keeping its bundle; nothing to do when none is
/// held or it is withdrawn already.
fn withdraw(tx: &watch::Sender<Option<Arc<Identity>>>, endpoint: &str, message: &str) {
    tx.send_if_modified(|held| {
        let Some(current) = held.as_ref().filter(|h| h.withdrawn.is_none()) else {
            return false;
        };
        let why = format!(
            "the Workload API withdrew this proxy's identity (PERMISSION_DENIED: {message}); \
             handshakes fail until it issues an SVID again"
        );
        tracing::warn!(endpoint, serial = %current.leaf.serial, id = %current.leaf.id, "{why}");
        *held = Some(Arc::new(Identity {
            leaf: current.leaf.clone(),
            bundle: current.bundle.clone(),
            withdrawn: Some(why),
        }));
        true
    });
}

/// A message that did not parse, on a stream that may well go on.
fn is_bad_message(e: &WorkloadApiError) -> bool {
    matches!(
        e,
        WorkloadApiError::MissingRequiredField { .. }
            | WorkloadApiError::InvalidResponseField { .. }
            | WorkloadApiError::X509Svid(_)
            | WorkloadApiError::X509Bundle(_)
            | WorkloadApiError::SpiffeId(_)
    )
}

/// Empties the feed when the SVID in it expires without a successor.
async fn expire(tx: &watch::Sender<Option<Arc<Identity>>>) {
    let mut rx = tx.subscribe();
    loop {
        let current = rx.borrow_and_update().clone();
        let Some(current) = current else {
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            () = tokio::time::sleep(until_unix(current.leaf.not_after)) => {
                let expired = tx.send_if_modified(|held| match held {
                    Some(h) if Arc::ptr_eq(h, &current) => {
                        *held = None;
                        true
                    }
                    _ => false,
                });
                if expired {
                    tracing::warn!(serial = %current.leaf.serial, "the SVID expired and the Workload API sent no new one: failing closed");
                }
            }
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

fn until_unix(at: i64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Duration::from_secs(u64::try_from(at).unwrap_or(0).saturating_sub(now))
}

/// The default SVID of a message and its bundles, as the model has them. Pieces equal
/// to `previous`'s are `previous`'s `Arc`s, so the proxy rebuilds TLS only on a change.
fn identity_from(
    context: &X509Context,
    previous: Option<&Identity>,
    provider: &CryptoProvider,
) -> Result<Identity, SvidError> {
    let svid = context.default_svid().ok_or(SvidError::NoSvid)?;
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let own_td = svid.spiffe_id().trust_domain().clone();
    let leaf = match previous {
        Some(p) if same_chain(&p.leaf, &chain) => p.leaf.clone(),
        _ => {
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                svid.private_key().as_bytes().to_vec(),
            ));
            let leaf =
                model::leaf_from_der(chain, key, provider).map_err(|source| SvidError::Leaf {
                    id: svid.spiffe_id().to_string(),
                    source,
                })?;
            Arc::new(leaf)
        }
    };

    let roots_of = |bundle: &spiffe::X509Bundle| -> Vec<CertificateDer<'static>> {
        bundle
            .authorities()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect()
    };
    let own = context
        .bundle_set()
        .get(&own_td)
        .ok_or_else(|| SvidError::NoBundle(own_td.to_string()))?;
    let mut bundle = model::bundle_from_der(roots_of(&own), own_td.as_str()).map_err(|source| {
        SvidError::Bundle {
            trust_domain: own_td.to_string(),
            source,
        }
    })?;
    let mut federated = BTreeMap::new();
    for (td, fed) in context.bundle_set().iter() {
        if *td == own_td {
            continue;
        }
        match model::bundle_from_der(roots_of(fed), td.as_str()) {
            Ok(b) => {
                federated.insert(td.as_str().to_owned(), Arc::new(b));
            }
            // An empty bundle trusts nobody of that domain; leaving it out says the same.
            Err(e) => tracing::debug!(trust_domain = %td, error = %e, "federated bundle left out"),
        }
    }
    bundle.federated = federated;
    let bundle = match previous {
        Some(p) if same_bundle(&p.bundle, &bundle) => p.bundle.clone(),
        _ => Arc::new(bundle),
    };
    Ok(Identity {
        leaf,
        bundle,
        withdrawn: None,
    })
}

fn same_chain(leaf: &Leaf, chain: &[CertificateDer<'static>]) -> bool {
    leaf.key.cert.as_slice() == chain
}

fn same_bundle(a: &TrustBundle, b: &TrustBundle) -> bool {
    a.trust_domain == b.trust_domain
        && a.roots == b.roots
        && a.federated.len() == b.federated.len()
        && a.federated
            .iter()
            .zip(&b.federated)
            .all(|((ta, ba), (tb, bb))| ta == tb && ba.roots == bb.roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_dev::ca::{DevCa, LeafSpec};
    use spiffe::{X509Bundle, X509BundleSet, X509Svid};

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    fn der(pem_text: &str) -> Vec<u8> {
        pem::parse_many(pem_text)
            .unwrap()
            .into_iter()
            .flat_map(|p| p.into_contents())
            .collect()
    }

    /// A Workload API message for `service` from `ca`, with `federated` bundles.
    fn context(ca: &DevCa, service: &str, federated: &[&DevCa]) -> X509Context {
        let leaf = ca.issue(&LeafSpec::service(service)).unwrap();
        let svid =
            X509Svid::parse_from_der(&der(&leaf.cert_pem), &der(leaf.key_pkcs8_pem())).unwrap();
        let mut set = X509BundleSet::new();
        for ca in std::iter::once(ca).chain(federated.iter().copied()) {
            let td = spiffe::TrustDomain::new(ca.trust_domain()).unwrap();
            set.add_bundle(X509Bundle::parse_from_der(td, ca.cert_der()).unwrap());
        }
        X509Context::new([Arc::new(svid)], set)
    }

    #[test]
    fn a_message_becomes_a_leaf_a_bundle_and_federated_bundles() {
        let ca = DevCa::generate(None).unwrap();
        let other = DevCa::generate(None).unwrap();
        let id = identity_from(&context(&ca, "api", &[&other]), None, &provider()).unwrap();
        assert_eq!(id.leaf.id.service, "api");
        assert_eq!(id.bundle.trust_domain, ca.trust_domain());
        assert_eq!(id.bundle.roots, vec![ca.cert_der().clone()]);
        let fed: Vec<&String> = id.bundle.federated.keys().collect();
        assert_eq!(fed, vec![&other.trust_domain()]);
        assert_eq!(
            id.bundle.federated[&other.trust_domain()].roots,
            vec![other.cert_der().clone()]
        );
    }

    #[test]
    fn unchanged_pieces_keep_their_arc() {
        let ca = DevCa::generate(None).unwrap();
        let other = DevCa::generate(None).unwrap();
        let first_msg = context(&ca, "api", &[]);
        let first = identity_from(&first_msg, None, &provider()).unwrap();
        let again = identity_from(&first_msg, Some(&first), &provider()).unwrap();
        assert!(Arc::ptr_eq(&first.leaf, &again.leaf));
        assert!(Arc::ptr_eq(&first.bundle, &again.bundle));

        // A rotation: new leaf, same bundle.
        let rotated = identity_from(&context(&ca, "api", &[]), Some(&first), &provider()).unwrap();
        assert!(!Arc::ptr_eq(&first.leaf, &rotated.leaf));
        assert_ne!(first.leaf.serial, rotated.leaf.serial);
        assert!(Arc::ptr_eq(&first.bundle, &rotated.bundle));

        // A federated bundle arrives: a new bundle.
        let federated =
            identity_from(&context(&ca, "api", &[&other]), Some(&rotated), &provider()).unwrap();
        assert!(!Arc::ptr_eq(&rotated.bundle, &federated.bundle));
    }

    #[test]
    fn an_svid_that_is_not_a_consul_service_is_refused() {
        let ca = DevCa::generate(None).unwrap();
        let spec = LeafSpec {
            uri_override: Some(format!("spiffe://{}/workload/web", ca.trust_domain())),
            ..LeafSpec::service("web")
        };
        let leaf = ca.issue(&spec).unwrap();
        let svid =
            X509Svid::parse_from_der(&der(&leaf.cert_pem), &der(leaf.key_pkcs8_pem())).unwrap();
        let mut set = X509BundleSet::new();
        let td = spiffe::TrustDomain::new(ca.trust_domain()).unwrap();
        set.add_bundle(X509Bundle::parse_from_der(td, ca.cert_der()).unwrap());
        let err =
            identity_from(&X509Context::new([Arc::new(svid)], set), None, &provider()).unwrap_err();
        assert!(matches!(err, SvidError::Leaf { .. }), "{err}");
    }

    #[test]
    fn only_invalid_argument_and_unimplemented_are_fatal() {
        let source = WorkloadSource::new("unix:///tmp/none.sock", provider()).unwrap();
        let status = |code| WorkloadApiError::Transport(TransportError::status(code, "x"));
        assert!(
            source
                .fatal(&status(GrpcStatusCode::InvalidArgument))
                .is_some()
        );
        assert!(
            source
                .fatal(&status(GrpcStatusCode::Unimplemented))
                .is_some()
        );
        for transient in [
            GrpcStatusCode::Unavailable,
            GrpcStatusCode::PermissionDenied,
            GrpcStatusCode::Internal,
            GrpcStatusCode::Unknown,
        ] {
            assert!(source.fatal(&status(transient)).is_none(), "{transient}");
        }
        assert!(source.fatal(&WorkloadApiError::NoIdentityIssued).is_none());
        assert!(source.fatal(&WorkloadApiError::EmptyResponse).is_none());
    }

    #[test]
    fn bad_addresses_are_refused_at_start() {
        for bad in [
            "/tmp/agent.sock",
            "http://127.0.0.1:1",
            "tcp://localhost:80",
            "unix://",
        ] {
            assert!(
                matches!(
                    WorkloadSource::new(bad, provider()),
                    Err(WorkloadError::Endpoint { .. })
                ),
                "{bad}"
            );
        }
        WorkloadSource::new("unix:/run/spire/agent.sock", provider()).unwrap();
        WorkloadSource::new("tcp://127.0.0.1:8081", provider()).unwrap();
    }

    #[tokio::test]
    async fn an_expired_svid_leaves_the_feed() {
        let (tx, mut rx) = watch::channel(None);
        let ca = DevCa::generate(None).unwrap();
        let mut identity = identity_from(&context(&ca, "api", &[]), None, &provider()).unwrap();
        // Pretend it expires in a second.
        let mut leaf = (*identity.leaf).clone();
        leaf.not_after = i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap()
            + 1;
        identity.leaf = Arc::new(leaf);
        tx.send_replace(Some(Arc::new(identity)));
        rx.borrow_and_update();
        let expiring = tokio::spawn(async move { expire(&tx).await });
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(Option::is_none))
            .await
            .expect("the feed empties once the SVID expired")
            .unwrap();
        expiring.abort();
    }
}
