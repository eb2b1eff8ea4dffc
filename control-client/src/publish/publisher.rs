//! The sending end of the snapshot channel, shared by both sources.
//!
//! A source builds the snapshot it knows of and hands it here after every change. With
//! `--workload-api` the leaf and the bundle in force are the SPIFFE Workload API's (see
//! `docs/consul-semantics.md#workload-api`): the publisher holds the identity feed, asks
//! the source whether each SVID is for this proxy, and puts the admitted leaf and bundle
//! over whatever the source built. A snapshot is published only when it differs from the
//! last one; unchanged pieces are compared by `Arc` pointer, which is also how the proxy
//! tells what changed (a new `Arc<Intentions>` re-checks live connections, a new leaf or
//! bundle rebuilds TLS).

use std::sync::Arc;

use tokio::sync::watch;

use crate::model::{DefaultAction, Leaf, Snapshot, TrustBundle};
use crate::workload::{Identity, IdentityFeed};

/// What `/ready` says while the Workload API has not sent an SVID yet.
pub(crate) const WAITING_FOR_SVID: &str = "waiting for the first SVID from the Workload API";

/// What a source makes of an SVID from the Workload API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Serve with its leaf and trust its bundle.
    Serve,
    /// Trust its bundle but do not serve with its leaf (it is for another service, or the
    /// source does not know yet which service it represents).
    BundleOnly,
    /// Ignore it: the leaf and bundle in force stay.
    Refuse,
}

/// What [`Publisher::wait`] woke up for.
pub(crate) enum Wake {
    /// Nobody reads the snapshots any more: the source stops.
    Closed,
    /// The Workload API's next identity, to pass to [`Publisher::identity`].
    Identity(Option<Arc<Identity>>),
}

/// The Workload API's identity, and what of it is in force.
struct Overlay {
    feed: IdentityFeed,
    /// The feed's last value, kept to be admitted again when the source's idea of
    /// itself changes.
    latest: Option<Arc<Identity>>,
    leaf: Option<Arc<Leaf>>,
    bundle: Option<Arc<TrustBundle>>,
}

/// Owns the snapshot sender and, with `--workload-api`, the identity feed.
pub(crate) struct Publisher {
    tx: watch::Sender<Arc<Snapshot>>,
    overlay: Option<Overlay>,
}

impl Publisher {
    /// A publisher whose identity comes from `feed`, if given, instead of the source.
    /// Nothing is published until the source's first [`Publisher::publish`].
    pub(crate) fn new(feed: Option<IdentityFeed>) -> Publisher {
        Publisher {
            tx: watch::Sender::new(Arc::new(Snapshot::default())),
            overlay: feed.map(|feed| Overlay {
                feed,
                latest: None,
                leaf: None,
                bundle: None,
            }),
        }
    }

    /// A receiver that has seen the snapshot published so far.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// The snapshot last published.
    pub(crate) fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Whether the leaf and bundle come from the Workload API (the source must not load
    /// its own).
    pub(crate) fn workload_api(&self) -> bool {
        self.overlay.is_some()
    }

    /// The leaf in force: the Workload API's if it gives the identity, else `own`.
    pub(crate) fn leaf<'a>(&'a self, own: Option<&'a Arc<Leaf>>) -> Option<&'a Arc<Leaf>> {
        match &self.overlay {
            Some(overlay) => overlay.leaf.as_ref(),
            None => own,
        }
    }

    /// The bundle in force: the Workload API's if it gives the identity, else `own`.
    pub(crate) fn bundle<'a>(
        &'a self,
        own: Option<&'a Arc<TrustBundle>>,
    ) -> Option<&'a Arc<TrustBundle>> {
        match &self.overlay {
            Some(overlay) => overlay.bundle.as_ref(),
            None => own,
        }
    }

    /// The feed's current identity, to take at start-up; `None` without a feed.
    pub(crate) fn current_identity(&mut self) -> Option<Arc<Identity>> {
        let overlay = self.overlay.as_mut()?;
        overlay.feed.borrow_and_update().clone()
    }

    /// What the source's loop waits for here: every receiver gone, or a new identity
    /// from the Workload API (`None`: the last one expired). Once the feed's source is
    /// gone the last identity stays, and only `Closed` can come.
    pub(crate) async fn wait(&mut self) -> Wake {
        let Publisher { tx, overlay } = self;
        let identity = async {
            if let Some(overlay) = overlay
                && overlay.feed.changed().await.is_ok()
            {
                return overlay.feed.borrow_and_update().clone();
            }
            std::future::pending().await
        };
        tokio::select! {
            () = tx.closed() => Wake::Closed,
            identity = identity => Wake::Identity(identity),
        }
    }

    /// Puts a new identity from the Workload API in force, as far as `admit` lets it;
    /// `None` (expired) takes the leaf and bundle away. Says whether the leaf or bundle
    /// in force changed.
    pub(crate) fn identity(
        &mut self,
        identity: Option<Arc<Identity>>,
        admit: impl FnOnce(&Leaf) -> Admit,
    ) -> bool {
        let Some(overlay) = &mut self.overlay else {
            return false;
        };
        overlay.latest = identity;
        self.readmit(admit)
    }

    /// Admits the latest identity again: the source's idea of itself changed.
    pub(crate) fn readmit(&mut self, admit: impl FnOnce(&Leaf) -> Admit) -> bool {
        let Some(overlay) = &mut self.overlay else {
            return false;
        };
        let (leaf, bundle) = match &overlay.latest {
            None => (None, None),
            // Withdrawn by the server: not served, whoever it is for.
            Some(identity) if identity.withdrawn.is_some() => (None, Some(identity.bundle.clone())),
            Some(identity) => match admit(&identity.leaf) {
                Admit::Serve => (Some(identity.leaf.clone()), Some(identity.bundle.clone())),
                Admit::BundleOnly => (None, Some(identity.bundle.clone())),
                Admit::Refuse => return false,
            },
        };
        let changed = !same_arc(&overlay.leaf, &leaf) || !same_arc(&overlay.bundle, &bundle);
        overlay.leaf = leaf;
        overlay.bundle = bundle;
        changed
    }

    /// Publishes `next`, with the Workload API's leaf and bundle if it gives the
    /// identity, unless it is the snapshot already published. Says whether it published.
    /// `next.blocked` is kept only while the snapshot is incomplete.
    pub(crate) fn publish(&self, mut next: Snapshot) -> bool {
        if let Some(overlay) = &self.overlay {
            next.leaf = overlay.leaf.clone();
            next.bundle = overlay.bundle.clone();
            match overlay.latest.as_ref() {
                None if overlay.leaf.is_none() => next.blocked.push(WAITING_FOR_SVID.to_owned()),
                Some(identity) => next.blocked.extend(identity.withdrawn.iter().cloned()),
                None => {}
            }
        }
        // What blocks the source matters only until the snapshot is complete; after
        // that, a failure keeps the last good state without publishing anything new.
        if next.is_complete() {
            next.blocked.clear();
        }
        if same_snapshot(&self.tx.borrow(), &next) {
            return false;
        }
        self.tx.send_replace(Arc::new(next));
        true
    }
}

/// The same pieces: shared state by pointer, plain configuration by value.
fn same_snapshot(a: &Snapshot, b: &Snapshot) -> bool {
    same_arc(&a.bundle, &b.bundle)
        && same_arc(&a.leaf, &b.leaf)
        && same_arc(&a.intentions, &b.intentions)
        && a.inbound == b.inbound
        && a.upstreams == b.upstreams
        && same_default(&a.default_action, &b.default_action)
        && a.blocked == b.blocked
        && same_arc(&a.access_logs, &b.access_logs)
        && a.prometheus == b.prometheus
        && a.request_normalization == b.request_normalization
}

/// Two defaults are the same when both the action and where it came from are.
pub(crate) fn same_default(a: &Option<DefaultAction>, b: &Option<DefaultAction>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.action == b.action && a.source == b.source,
        (None, None) => true,
        _ => false,
    }
}

/// Both absent, or both the same allocation.
pub(crate) fn same_arc<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}
