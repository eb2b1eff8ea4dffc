//! The agent's CA roots and this proxy's leaf certificate, when they come from the agent
//! (not with `--workload-api`); see `docs/consul-semantics.md#identity`. Every root is a
//! trust anchor, so rotated-out roots stay trusted for their overlap. The leaf must be
//! for the registration's destination service, and it is read again, whatever the
//! blocking query says, once 90 % of its life has passed without a new one.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use tokio::sync::watch;
use tokio::time::Instant;

use super::agent::{Agent, Event};
use crate::api::ca::{IndexedCARoots, IssuedCert};
use crate::consul::http::path_segment;
use crate::consul::watch::{Blocking, WatchSpec, Watcher};
use crate::model::{self, Leaf, TrustBundle};

/// The roots and the leaf from the agent, with the watches that keep them current.
pub(super) struct Certs {
    provider: Arc<CryptoProvider>,
    roots_watch: Option<Watcher>,
    leaf_watch: Option<Watcher>,
    /// When the leaf watch must force a fresh read.
    leaf_deadline: watch::Sender<Option<Instant>>,
    roots: Option<IndexedCARoots>,
    pub(super) bundle: Option<Arc<TrustBundle>>,
    pub(super) leaf: Option<Arc<Leaf>>,
}

impl Certs {
    pub(super) fn new(provider: Arc<CryptoProvider>) -> Certs {
        Certs {
            provider,
            roots_watch: None,
            leaf_watch: None,
            leaf_deadline: watch::channel(None).0,
            roots: None,
            bundle: None,
            leaf: None,
        }
    }

    pub(super) fn watch_roots(&mut self, agent: &Agent) {
        self.roots_watch = Some(agent.watch(
            WatchSpec {
                path: "/v1/agent/connect/ca/roots".into(),
                query: Vec::new(),
                blocking: Blocking::Index,
                body: None,
            },
            Event::Roots,
        ));
    }

    /// The proxy represents another service: the leaf in force is not its own any more.
    pub(super) fn forget_leaf(&mut self) {
        self.leaf = None;
        self.leaf_deadline.send_replace(None);
    }

    /// Follows the leaf of `destination` (after [`Certs::forget_leaf`]).
    pub(super) fn watch_leaf(&mut self, agent: &Agent, destination: &str) {
        let dest = destination.to_owned();
        self.leaf_watch = Some(Watcher::spawn_forced(
            agent.client.clone(),
            WatchSpec {
                path: format!("/v1/agent/connect/ca/leaf/{}", path_segment(&dest)),
                query: Vec::new(),
                blocking: Blocking::Index,
                body: None,
            },
            agent.tuning.clone(),
            Some(self.leaf_deadline.subscribe()),
            agent.events.clone(),
            move |u| Event::Leaf(dest.clone(), u),
        ));
    }

    /// New roots; says whether they are good.
    pub(super) fn on_roots(&mut self, roots: IndexedCARoots) -> bool {
        self.roots = Some(roots);
        self.rebuild_bundle()
    }

    /// A new leaf for `dest`; says whether it is good (else the last good one stays).
    pub(super) fn on_leaf(&mut self, dest: &str, cert: &IssuedCert) -> bool {
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

    /// The bundle of every root, in the roots' trust domain (or, if they do not name
    /// it, the leaf's). Unchanged roots keep the bundle's `Arc`.
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
            Ok(mut bundle) => {
                bundle.intermediates = intermediates(roots);
                let same = self.bundle.as_ref().is_some_and(|b| {
                    b.roots == bundle.roots
                        && b.trust_domain == bundle.trust_domain
                        && b.intermediates == bundle.intermediates
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
}

/// Every root's `IntermediateCerts`, as path-building candidates; one that does not
/// parse is skipped (peers normally send their intermediates themselves).
fn intermediates(roots: &IndexedCARoots) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    let mut out = Vec::new();
    for pem in roots.roots.iter().flat_map(|r| &r.intermediate_certs) {
        match model::parse_certificates(pem.as_bytes()) {
            Ok(certs) => out.extend(certs),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an intermediate certificate of the CA roots")
            }
        }
    }
    out
}

/// Once 90 % of the leaf's life has passed without a new one, the watcher forces a
/// fresh read (a defence against a blocking query that never returns). `None` if the
/// validity cannot be read.
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
mod tests {
    use time::format_description::well_known::Rfc3339;

    use super::*;

    #[test]
    fn the_leaf_is_refreshed_at_ninety_percent_of_its_life() {
        let now = time::OffsetDateTime::now_utc();
        let cert = IssuedCert {
            valid_after: (now - time::Duration::hours(1)).format(&Rfc3339).unwrap(),
            valid_before: (now + time::Duration::hours(9)).format(&Rfc3339).unwrap(),
            ..Default::default()
        };
        let at = refresh_deadline(&cert, 0).unwrap();
        let ahead = at - Instant::now();
        // 10 h of life: refresh 1 h before the end, i.e. 8 h from now.
        assert!(
            ahead > Duration::from_secs(8 * 3600 - 60) && ahead <= Duration::from_secs(8 * 3600),
            "{ahead:?}"
        );
        let late = IssuedCert {
            valid_after: (now - time::Duration::hours(10)).format(&Rfc3339).unwrap(),
            valid_before: (now + time::Duration::minutes(1)).format(&Rfc3339).unwrap(),
            ..Default::default()
        };
        assert!(refresh_deadline(&late, 0).unwrap() <= Instant::now());
        assert!(refresh_deadline(&IssuedCert::default(), 0).is_none());
    }

    #[test]
    fn every_roots_intermediate_certs_are_path_candidates() {
        let root = ferrule_dev::ca::DevCa::generate(None).unwrap();
        let dc2 = root.intermediate().unwrap();
        let roots = IndexedCARoots {
            roots: vec![
                crate::api::ca::CARoot {
                    root_cert: root.cert_pem().to_owned(),
                    intermediate_certs: vec![dc2.cert_pem().to_owned(), "not PEM".to_owned()],
                    ..Default::default()
                },
                crate::api::ca::CARoot {
                    root_cert: root.cert_pem().to_owned(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(intermediates(&roots), [dc2.cert_der().clone()]);
    }
}
